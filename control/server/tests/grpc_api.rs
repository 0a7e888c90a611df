//! The real gRPC server on a loopback port, driven by tonic clients, programming a fake
//! engine.

mod support;

use std::time::Duration;

use earshot_control::proto;
use earshot_engine_api::EngineEvent;
use support::*;
use tokio_stream::StreamExt;
use tonic::Code;

async fn next_event(stream: &mut tonic::Streaming<proto::Event>) -> proto::Event {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("event within 5 s")
        .expect("stream open")
        .expect("event, not error")
}

fn local_of(p: &proto::Participant) -> String {
    p.leg.as_ref().expect("leg").local.clone()
}

#[tokio::test]
async fn monitor_then_coach_is_refused_until_stopped_and_barge_escalation_keeps_the_leg() {
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine::new(30000);
    let server = TestServer::start(dir.path(), engine.clone()).await;
    add_supervisor(&server, "sup-user").await;
    let created = server
        .interactions()
        .create_interaction(create_call("call-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!created.existing);
    let inter = created.interaction.unwrap();
    let locals: Vec<String> = inter.participants.iter().map(local_of).collect();
    assert_eq!(locals.len(), 2);
    assert_ne!(locals[0], locals[1], "each participant has its own port");
    assert!(engine.hears("call-1", "c", "a") && engine.hears("call-1", "a", "c"));

    let mut sup = server.supervision();
    let monitor = sup
        .start_monitor(supervise("call-1", "s1", "sup-user", "sup", "a", 21000))
        .await
        .unwrap()
        .into_inner()
        .supervision
        .unwrap();
    assert_eq!(monitor.mode, proto::SupervisionMode::Monitor as i32);
    let monitor_local = monitor.leg.as_ref().unwrap().local.clone();
    assert!(engine.hears("call-1", "sup", "c") && engine.hears("call-1", "sup", "a"));
    assert!(!engine.hears("call-1", "a", "sup") && !engine.hears("call-1", "c", "sup"));
    let sup_leg = engine.leg("call-1", "sup").unwrap().leg;
    assert_eq!(
        engine.plan("call-1").unwrap().no_dtmf,
        vec![sup_leg],
        "monitors get no DTMF"
    );

    let refused = sup
        .start_coach(supervise("call-1", "s2", "sup-user", "sup-2", "a", 21002))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&refused).0, "STOP_CURRENT_FIRST");

    sup.stop_supervision(proto::StopSupervisionRequest {
        supervision_id: "s1".into(),
        actor: String::new(),
    })
    .await
    .unwrap();
    assert!(
        engine.leg("call-1", "sup").is_none(),
        "a stopped supervisor's leg is removed"
    );

    let coach = sup
        .start_coach(supervise("call-1", "s2", "sup-user", "sup-2", "a", 21002))
        .await
        .unwrap()
        .into_inner()
        .supervision
        .unwrap();
    let coach_local = coach.leg.as_ref().unwrap().local.clone();
    assert!(engine.hears("call-1", "a", "sup-2") && !engine.hears("call-1", "c", "sup-2"));
    assert_ne!(coach_local, monitor_local);

    let barge = sup
        .start_barge(supervise("call-1", "s3", "sup-user", "sup-3", "a", 21004))
        .await
        .unwrap()
        .into_inner()
        .supervision
        .unwrap();
    assert_eq!(
        barge.supervision_id, "s2",
        "escalation keeps the supervision"
    );
    assert_eq!(barge.mode, proto::SupervisionMode::Barge as i32);
    assert_eq!(
        barge.leg.unwrap().local,
        coach_local,
        "escalation keeps the leg and port"
    );
    assert!(engine.hears("call-1", "c", "sup-2") && engine.hears("call-1", "sup-2", "c"));
    assert!(engine.leg("call-1", "sup-3").is_none());
    server.stop().await;
}

#[tokio::test]
async fn malformed_fields_are_invalid_argument_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), FakeEngine::new(30000)).await;
    let mut api = server.interactions();

    let err = api
        .create_interaction(create_call("bad id!"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        reason_of(&err),
        ("INVALID_ID".into(), Some("interaction_id".into()))
    );

    let mut req = create_call("call-2");
    req.participants[1].media.as_mut().unwrap().ptime_ms = 25;
    let err = api.create_interaction(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        reason_of(&err).1.as_deref(),
        Some("participants[1].media.ptime_ms")
    );

    let mut req = create_call("call-2");
    req.participants[0].media.as_mut().unwrap().remote = "300.1.1.1:5".into();
    let err = api.create_interaction(req).await.unwrap_err();
    assert_eq!(
        reason_of(&err).1.as_deref(),
        Some("participants[0].media.remote")
    );

    let mut req = create_call("call-2");
    req.participants[0].kind = 0;
    let err = api.create_interaction(req).await.unwrap_err();
    assert_eq!(reason_of(&err).1.as_deref(), Some("participants[0].kind"));

    let err = api
        .get_interaction(proto::GetInteractionRequest {
            interaction_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err).1.as_deref(), Some("interaction_id"));

    let err = api
        .get_interaction(proto::GetInteractionRequest {
            interaction_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(reason_of(&err).0, "INTERACTION_NOT_FOUND");

    let mut req = supervise("call-2", "s1", "u", "sup", "a", 21000);
    req.media.as_mut().unwrap().remote = "nowhere".into();
    let err = server.supervision().start_monitor(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason_of(&err).1.as_deref(), Some("media.remote"));
    server.stop().await;
}

#[tokio::test]
async fn identical_retries_return_the_existing_object_and_different_content_is_already_exists() {
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine::new(30000);
    let server = TestServer::start(dir.path(), engine.clone()).await;
    let mut api = server.interactions();
    let first = api
        .create_interaction(create_call("call-3"))
        .await
        .unwrap()
        .into_inner();
    let again = api
        .create_interaction(create_call("call-3"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.existing);
    assert_eq!(
        first.interaction, again.interaction,
        "same legs, same ports"
    );

    let mut different = create_call("call-3");
    different.participants.pop();
    let err = api.create_interaction(different).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    let mut other_media = create_call("call-3");
    other_media.participants[0].media.as_mut().unwrap().ptime_ms = 30;
    let err = api.create_interaction(other_media).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(reason_of(&err).0, "MEDIA_MISMATCH");

    for _ in 0..2 {
        let held = api
            .hold(proto::HoldRequest {
                interaction_id: "call-3".into(),
                participant_id: "c".into(),
                actor: "controller".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            held.participants
                .iter()
                .any(|p| p.participant_id == "c" && p.on_hold)
        );
    }
    assert!(!engine.hears("call-3", "a", "c"));
    let timeline = api
        .get_timeline(proto::GetTimelineRequest {
            interaction_id: "call-3".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let holds = timeline
        .iter()
        .filter(|e| e.kind == proto::EventKind::HoldStarted as i32)
        .count();
    assert_eq!(holds, 1, "a retried hold records one event");
    assert_eq!(
        timeline[0].kind,
        proto::EventKind::InteractionCreated as i32
    );
    assert!(timeline.windows(2).all(|w| w[0].sequence < w[1].sequence));
    let hold = timeline
        .iter()
        .find(|e| e.kind == proto::EventKind::HoldStarted as i32)
        .unwrap();
    assert_eq!(hold.actor, "controller");
    server.stop().await;
}

#[tokio::test]
async fn watch_events_resumes_after_a_sequence_and_refuses_expired_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), FakeEngine::new(30000), |c| {
        c.event_retention = 4
    })
    .await;
    let mut api = server.interactions();
    api.create_interaction(create_call("call-4")).await.unwrap();
    for verb in 0..3 {
        let p = proto::HoldRequest {
            interaction_id: "call-4".into(),
            participant_id: "c".into(),
            actor: String::new(),
        };
        if verb % 2 == 0 {
            api.hold(p).await.unwrap();
        } else {
            api.resume(proto::ResumeRequest {
                interaction_id: p.interaction_id,
                participant_id: p.participant_id,
                actor: String::new(),
            })
            .await
            .unwrap();
        }
    }
    let all = api
        .get_timeline(proto::GetTimelineRequest {
            interaction_id: "call-4".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(all.len() > 4, "more events than retained: {}", all.len());
    let last = all.last().unwrap().sequence;

    let resume_from = last - 2;
    let mut stream = api
        .watch_events(proto::WatchEventsRequest {
            after_sequence: resume_from,
            interaction_id: String::new(),
            live_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    let a = next_event(&mut stream).await;
    let b = next_event(&mut stream).await;
    assert_eq!((a.sequence, b.sequence), (resume_from + 1, resume_from + 2));
    // A live event follows the backlog on the same stream.
    api.end_interaction(proto::EndInteractionRequest {
        interaction_id: "call-4".into(),
        actor: String::new(),
    })
    .await
    .unwrap();
    let live = next_event(&mut stream).await;
    assert_eq!(live.sequence, last + 1);

    let err = api
        .watch_events(proto::WatchEventsRequest {
            after_sequence: 1,
            interaction_id: String::new(),
            live_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(reason_of(&err).0, "EVENTS_EXPIRED");
    server.stop().await;
}

#[tokio::test]
async fn reflection_lists_every_service_and_health_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), FakeEngine::new(30000)).await;
    let mut health = HealthClient::new(server.channel.clone());
    for service in ["", "earshot.v1.Interactions", "earshot.v1.Supervision"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(server.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in [
        "earshot.v1.Interactions",
        "earshot.v1.Supervision",
        "earshot.v1.Directory",
        "earshot.v1.Engine",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing from {names:?}"
        );
    }
    let stats = server
        .engine()
        .get_stats(proto::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.backend, "memory");
    server.stop().await;
}

#[tokio::test]
async fn state_survives_a_restart_and_a_restarted_engine_gets_its_legs_back_on_the_same_ports() {
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine::new(30000);
    let server = TestServer::start(dir.path(), engine.clone()).await;
    add_supervisor(&server, "sup-user").await;
    let before = server
        .interactions()
        .create_interaction(create_call("call-5"))
        .await
        .unwrap()
        .into_inner()
        .interaction
        .unwrap();
    server
        .supervision()
        .start_monitor(supervise("call-5", "s1", "sup-user", "sup", "c", 21000))
        .await
        .unwrap();
    let sup_port = engine.leg("call-5", "sup").unwrap().local.port();
    let timeline_before = server
        .interactions()
        .get_timeline(proto::GetTimelineRequest {
            interaction_id: "call-5".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    server.stop().await;

    // Both processes restart: a fresh engine that would hand out other ports.
    let engine2 = FakeEngine::new(40000);
    let server = TestServer::start(dir.path(), engine2.clone()).await;
    let after = server
        .interactions()
        .get_interaction(proto::GetInteractionRequest {
            interaction_id: "call-5".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let c_before = before
        .participants
        .iter()
        .find(|p| p.participant_id == "c")
        .unwrap();
    let c_after = after
        .participants
        .iter()
        .find(|p| p.participant_id == "c")
        .unwrap();
    assert_eq!(
        local_of(c_before),
        local_of(c_after),
        "the customer keeps its port"
    );
    assert_eq!(engine2.leg("call-5", "sup").unwrap().local.port(), sup_port);
    assert!(engine2.hears("call-5", "sup", "c") && engine2.hears("call-5", "c", "a"));
    assert!(!engine2.hears("call-5", "c", "sup"));
    let supervision = server
        .supervision()
        .get_supervision(proto::GetSupervisionRequest {
            supervision_id: "s1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(supervision.state, proto::SupervisionState::Active as i32);
    let timeline_after = server
        .interactions()
        .get_timeline(proto::GetTimelineRequest {
            interaction_id: "call-5".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(timeline_before, timeline_after);
    let user = server
        .directory()
        .get_user(proto::GetUserRequest {
            user_id: "sup-user".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(user.presence, proto::Presence::Available as i32);
    server.stop().await;
}

#[tokio::test]
async fn engine_down_is_unavailable_and_the_reconciler_programs_it_when_back() {
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine::new(30000);
    let server = TestServer::start(dir.path(), engine.clone()).await;
    engine.set_down(true);
    let err = server
        .interactions()
        .create_interaction(create_call("call-6"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(reason_of(&err).0, "ENGINE_UNAVAILABLE");
    engine.set_down(false);
    // The intent was stored; the reconciler allocates the legs without any retry.
    let mut programmed = false;
    for _ in 0..100 {
        if engine.hears("call-6", "c", "a") {
            programmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(programmed, "reconciler programmed the engine");
    let retry = server
        .interactions()
        .create_interaction(create_call("call-6"))
        .await
        .unwrap()
        .into_inner();
    assert!(retry.existing);
    assert!(
        retry
            .interaction
            .unwrap()
            .participants
            .iter()
            .all(|p| p.leg.is_some())
    );
    server.stop().await;
}

#[tokio::test]
async fn a_ringing_supervisor_becomes_active_on_its_first_packet() {
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine::new(30000);
    let server = TestServer::start(dir.path(), engine.clone()).await;
    add_supervisor(&server, "sup-user").await;
    server
        .interactions()
        .create_interaction(create_call("call-7"))
        .await
        .unwrap();
    let mut req = supervise("call-7", "s1", "sup-user", "sup", "a", 21000);
    req.media.as_mut().unwrap().auto_answer = Some(false);
    let started = server
        .supervision()
        .start_monitor(req)
        .await
        .unwrap()
        .into_inner()
        .supervision
        .unwrap();
    assert_eq!(started.state, proto::SupervisionState::Connecting as i32);
    let leg = engine.leg("call-7", "sup").unwrap();
    assert!(leg.media.as_ref().unwrap().report_first_packet);
    assert!(
        !engine.hears("call-7", "sup", "a"),
        "no audio before answer"
    );

    engine.emit(EngineEvent::FirstPacket {
        leg: leg.leg,
        session: "call-7".into(),
        leg_key: "sup".into(),
    });
    let mut active = false;
    for _ in 0..100 {
        let s = server
            .supervision()
            .get_supervision(proto::GetSupervisionRequest {
                supervision_id: "s1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if s.state == proto::SupervisionState::Active as i32 {
            active = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(active);
    assert!(engine.hears("call-7", "sup", "a"));
    server.stop().await;
}
