//! `Interactions.UpdateMedia` (a SIP re-INVITE on a live leg) with the fake engine: the
//! new media is programmed on the same leg, stored (it survives a restart), recorded as
//! `MEDIA_UPDATED` naming what changed; our SRTP key is kept unless the request names
//! one or the suite changes; refused updates (validation, engine) leave the old media
//! in force and no event; an update accepted while the engine is down is programmed by
//! reconciliation; supervisors' legs update the same way. No key ever appears in a
//! response's `remote_key`, an event or an error.

mod support;

use std::time::Duration;

use earshot_control::proto;
use earshot_engine_api::{EngineError, Request};
use support::*;
use tokio_stream::StreamExt;
use tonic::Code;

const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";
const OLD_REMOTE_KEY: &str = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
const NEW_REMOTE_KEY: &str = "inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj";
/// A caller-chosen key of ours (30 octets, AES-CM).
const NAMED_LOCAL_KEY: &str = "inline:MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkw";
/// Fragments of every key used here: none may appear in a reply, event or error.
const KEY_FRAGMENTS: [&str; 4] = ["WVNfX19z", "d0RmdmcmV", "MTIzNDU2Nzg5", "R0NNa2V5"];
/// A remote key of AEAD_AES_128_GCM (28 octets).
const GCM_REMOTE_KEY: &str = "inline:R0NNa2V5LTAxMjM0NTY3ODlhYmNkZWZnaGlqaw==";

fn srtp(suite: &str, remote_key: &str, local_key: &str) -> proto::Srtp {
    proto::Srtp {
        suite: suite.into(),
        remote_key: remote_key.into(),
        local_key: local_key.into(),
    }
}

/// customer `c` (SRTP, our key generated) + plain agent `a`.
fn srtp_call(id: &str) -> proto::CreateInteractionRequest {
    let mut req = create_call(id);
    req.participants[0].media.as_mut().unwrap().srtp = Some(srtp(SUITE, OLD_REMOTE_KEY, ""));
    req
}

fn update(id: &str, participant: &str, media: proto::Media) -> proto::UpdateMediaRequest {
    proto::UpdateMediaRequest {
        interaction_id: id.into(),
        participant_id: participant.into(),
        media: Some(media),
        actor: "sbc-reinvite".into(),
    }
}

/// The customer's media after a re-INVITE: another address, 30 ms, the new remote key.
fn reinvite_media() -> proto::Media {
    let mut m = media(21000);
    m.ptime_ms = 30;
    m.srtp = Some(srtp(SUITE, NEW_REMOTE_KEY, ""));
    m
}

fn assert_no_key(what: &str, text: &str) {
    for fragment in KEY_FRAGMENTS {
        assert!(
            !text.contains(fragment),
            "{what} shows key material: {text}"
        );
    }
}

fn participant<'a>(i: &'a proto::Interaction, id: &str) -> &'a proto::Participant {
    i.participants
        .iter()
        .find(|p| p.participant_id == id)
        .expect("participant")
}

fn leg_media(i: &proto::Interaction, id: &str) -> proto::Media {
    participant(i, id)
        .leg
        .as_ref()
        .and_then(|l| l.media.clone())
        .expect("a leg with media")
}

fn configure_calls(engine: &FakeEngine) -> usize {
    let st = engine.state.lock().unwrap();
    st.calls
        .iter()
        .filter(|r| matches!(r, Request::ConfigureLeg { .. }))
        .count()
}

async fn get(server: &TestServer, id: &str) -> proto::Interaction {
    server
        .interactions()
        .get_interaction(proto::GetInteractionRequest {
            interaction_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn timeline(server: &TestServer, id: &str) -> Vec<proto::Event> {
    server
        .interactions()
        .get_timeline(proto::GetTimelineRequest {
            interaction_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .events
}

fn media_updated(events: &[proto::Event]) -> Vec<&proto::Event> {
    events
        .iter()
        .filter(|e| e.kind == proto::EventKind::MediaUpdated as i32)
        .collect()
}

#[tokio::test]
async fn an_update_is_programmed_on_the_same_leg_recorded_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine::new(30000);
    let server = TestServer::start(dir.path(), engine.clone()).await;
    let mut api = server.interactions();
    let created = api
        .create_interaction(srtp_call("call-u"))
        .await
        .unwrap()
        .into_inner()
        .interaction
        .unwrap();
    let before = participant(&created, "c").leg.clone().unwrap();
    let ours = before
        .media
        .as_ref()
        .unwrap()
        .srtp
        .clone()
        .unwrap()
        .local_key;
    let leg_id = engine.leg("call-u", "c").unwrap().leg;
    let mut watch = api
        .watch_events(proto::WatchEventsRequest {
            after_sequence: 0,
            interaction_id: "call-u".into(),
            live_only: true,
        })
        .await
        .unwrap()
        .into_inner();

    // The re-INVITE: new address, new ptime, new remote key, our key left to us.
    let reply = api
        .update_media(update("call-u", "c", reinvite_media()))
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.existing);
    assert_eq!(reply.changed, ["ptime_ms", "remote", "srtp_remote_key"]);
    let leg = reply.leg.clone().unwrap();
    assert_eq!(
        (leg.local.as_str(), leg.local_rtcp.as_str()),
        (before.local.as_str(), before.local_rtcp.as_str()),
        "the same leg, the same local port"
    );
    let m = leg.media.clone().unwrap();
    assert_eq!((m.remote.as_str(), m.ptime_ms), ("127.0.0.1:21000", 30));
    let s = m.srtp.unwrap();
    assert_eq!(s.local_key, ours, "our key is kept (RFC 4568 7.1.4)");
    assert!(s.remote_key.is_empty(), "the remote's key is never echoed");
    assert_no_key("the reply", &format!("{reply:?}").replace(&ours, "OURS"));

    // Programmed on the same engine leg with the new keys.
    assert_eq!(engine.leg("call-u", "c").unwrap().leg, leg_id);
    let config = engine.programmed("call-u", "c");
    assert_eq!(config.remote, Some("127.0.0.1:21000".parse().unwrap()));
    assert_eq!(config.ptime_ms, 30);
    let keys = config.srtp.expect("SRTP programmed");
    assert_eq!(keys.remote_key().to_sdes().as_str(), NEW_REMOTE_KEY);
    assert_eq!(keys.local_key().to_sdes().as_str(), ours);

    // One event, on the timeline and on WatchEvents, naming what changed, no key.
    let events = timeline(&server, "call-u").await;
    let updated = media_updated(&events);
    assert_eq!(updated.len(), 1, "{events:?}");
    let e = updated[0];
    assert_eq!(e.actor, "sbc-reinvite");
    assert_eq!(e.details["participant_id"], "c");
    assert_eq!(e.details["changed"], "ptime_ms,remote,srtp_remote_key");
    assert_eq!(e.details["remote"], "127.0.0.1:21000");
    assert_eq!(e.details["ptime_ms"], "30");
    assert!(!e.details.contains_key("srtp_remote_key"));
    assert_no_key("the timeline", &format!("{events:?}"));
    assert!(!format!("{events:?}").contains(&ours[7..20]));
    let live = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap();
    assert_eq!(live.kind, proto::EventKind::MediaUpdated as i32);
    assert_eq!(live.sequence, e.sequence);

    // An identical retry (our key again left empty) changes nothing: no event.
    let configured = configure_calls(&engine);
    let again = api
        .update_media(update("call-u", "c", reinvite_media()))
        .await
        .unwrap()
        .into_inner();
    assert!(again.existing && again.changed.is_empty(), "{again:?}");
    assert_eq!(again.leg, reply.leg);
    assert_eq!(
        configure_calls(&engine),
        configured,
        "nothing re-programmed"
    );
    assert_eq!(media_updated(&timeline(&server, "call-u").await).len(), 1);

    // A named key of ours replaces ours.
    let mut named = reinvite_media();
    named.srtp = Some(srtp(SUITE, NEW_REMOTE_KEY, NAMED_LOCAL_KEY));
    let reply = api
        .update_media(update("call-u", "c", named))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.changed, ["srtp_local_key"]);
    let got = reply.leg.unwrap().media.unwrap().srtp.unwrap();
    assert_eq!(got.local_key, NAMED_LOCAL_KEY);
    let keys = engine.programmed("call-u", "c").srtp.unwrap();
    assert_eq!(keys.local_key().to_sdes().as_str(), NAMED_LOCAL_KEY);

    // Another suite with our key left to us: a new key of that suite.
    let mut gcm = reinvite_media();
    gcm.srtp = Some(srtp("AEAD_AES_128_GCM", GCM_REMOTE_KEY, ""));
    let reply = api
        .update_media(update("call-u", "c", gcm))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.changed,
        ["srtp_local_key", "srtp_remote_key", "srtp_suite"]
    );
    let got = reply.leg.unwrap().media.unwrap().srtp.unwrap();
    assert_eq!(got.suite, "AEAD_AES_128_GCM");
    assert!(got.local_key.starts_with("inline:") && got.local_key != NAMED_LOCAL_KEY);
    let gcm_ours = got.local_key;
    let events = timeline(&server, "call-u").await;
    assert_eq!(
        media_updated(&events).last().unwrap().details["srtp_suite"],
        "AEAD_AES_128_GCM"
    );
    assert_no_key("the timeline", &format!("{events:?}"));
    assert!(!format!("{events:?}").contains(&gcm_ours[7..20]));
    server.stop().await;

    // Both processes restart: the store has the last media, the fresh engine gets it.
    let engine2 = FakeEngine::new(40000);
    let server = TestServer::start(dir.path(), engine2.clone()).await;
    let after = get(&server, "call-u").await;
    let m = leg_media(&after, "c");
    assert_eq!((m.remote.as_str(), m.ptime_ms), ("127.0.0.1:21000", 30));
    assert_eq!(m.srtp.unwrap().local_key, gcm_ours);
    let config = engine2.programmed("call-u", "c");
    assert_eq!(config.remote, Some("127.0.0.1:21000".parse().unwrap()));
    assert_eq!(config.ptime_ms, 30);
    assert_eq!(
        config.srtp.unwrap().local_key().to_sdes().as_str(),
        gcm_ours
    );
    assert_eq!(
        participant(&after, "c").leg.as_ref().unwrap().local,
        before.local,
        "the restarted engine's leg is on the recorded port"
    );
    server.stop().await;
}

#[tokio::test]
async fn refused_updates_leave_the_old_media_in_force_and_no_event() {
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine::new(30000);
    let server = TestServer::start(dir.path(), engine.clone()).await;
    let mut api = server.interactions();
    api.create_interaction(srtp_call("call-r")).await.unwrap();
    let before = get(&server, "call-r").await;
    let old_media = leg_media(&before, "c");
    let old_config = engine.programmed("call-r", "c");
    let events_before = timeline(&server, "call-r").await.len();

    // Validation: the shared validator, the leg's allocation; the field named, no key.
    let mut cases: Vec<(proto::UpdateMediaRequest, &str)> = Vec::new();
    let mut m = reinvite_media();
    m.srtp = Some(srtp(SUITE, &NEW_REMOTE_KEY[..30], ""));
    cases.push((update("call-r", "c", m), "media.srtp.remote_key"));
    let mut m = reinvite_media();
    m.srtp = Some(srtp(SUITE, NEW_REMOTE_KEY, &NAMED_LOCAL_KEY[..35]));
    cases.push((update("call-r", "c", m), "media.srtp.local_key"));
    let mut m = reinvite_media();
    m.srtp = Some(srtp("AES_CM_128_NOPE", NEW_REMOTE_KEY, ""));
    cases.push((update("call-r", "c", m), "media.srtp.suite"));
    let mut m = reinvite_media();
    m.ptime_ms = 25;
    cases.push((update("call-r", "c", m), "media.ptime_ms"));
    let mut m = reinvite_media();
    m.payload_type = 72;
    cases.push((update("call-r", "c", m), "media.payload_type"));
    let mut m = reinvite_media();
    m.rtcp_mux = false;
    cases.push((update("call-r", "c", m), "media.rtcp_mux"));
    let mut m = reinvite_media();
    m.remote = "[::1]:21000".into();
    cases.push((update("call-r", "c", m), "media.remote"));
    let mut missing = update("call-r", "c", reinvite_media());
    missing.media = None;
    cases.push((missing, "media"));
    for (k, (req, field)) in cases.into_iter().enumerate() {
        let err = api.update_media(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "case {k}: {err:?}");
        assert_eq!(
            reason_of(&err).1.as_deref(),
            Some(field),
            "case {k}: {err:?}"
        );
        assert_no_key(&format!("case {k}'s error"), &format!("{err:?}"));
    }

    // Unknown ids, a participant that left, an ended call.
    let err = api
        .update_media(update("no-such-call", "c", reinvite_media()))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason_of(&err).0.as_str()),
        (Code::NotFound, "INTERACTION_NOT_FOUND")
    );
    let err = api
        .update_media(update("call-r", "nobody", reinvite_media()))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason_of(&err).0.as_str()),
        (Code::NotFound, "PARTICIPANT_NOT_FOUND")
    );
    api.add_participant(proto::AddParticipantRequest {
        interaction_id: "call-r".into(),
        participant: Some(spec(
            "x",
            proto::ParticipantKind::External,
            proto::Role::Other,
            20010,
        )),
        actor: String::new(),
        join_group_of: "c".into(),
    })
    .await
    .unwrap();
    api.remove_participant(proto::RemoveParticipantRequest {
        interaction_id: "call-r".into(),
        participant_id: "x".into(),
        actor: String::new(),
    })
    .await
    .unwrap();
    let err = api
        .update_media(update("call-r", "x", media(20011)))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason_of(&err).0.as_str()),
        (Code::FailedPrecondition, "PARTICIPANT_NOT_CONNECTED")
    );
    api.create_interaction(srtp_call("call-ended"))
        .await
        .unwrap();
    api.end_interaction(proto::EndInteractionRequest {
        interaction_id: "call-ended".into(),
        actor: String::new(),
    })
    .await
    .unwrap();
    let err = api
        .update_media(update("call-ended", "c", reinvite_media()))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason_of(&err).0.as_str()),
        (Code::FailedPrecondition, "INTERACTION_ENDED")
    );
    let events_after_setup = timeline(&server, "call-r").await.len();
    assert_eq!(
        events_after_setup,
        events_before + 2,
        "only x's join and leave"
    );

    // An engine refusal: undone, nothing stored, no event, the field named.
    engine.state.lock().unwrap().refuse_configure = Some(EngineError::InvalidArgument {
        field: "payload_type".into(),
        message: "refused by the test engine".into(),
    });
    let err = api
        .update_media(update("call-r", "c", reinvite_media()))
        .await
        .unwrap_err();
    engine.state.lock().unwrap().refuse_configure = None;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(reason_of(&err).1.as_deref(), Some("media.payload_type"));
    assert_no_key("the engine refusal", &format!("{err:?}"));

    // The old media is in force everywhere: API, engine, timeline.
    let after = get(&server, "call-r").await;
    assert_eq!(leg_media(&after, "c"), old_media);
    assert_eq!(
        engine.leg("call-r", "c").unwrap().media,
        Some(old_config),
        "the engine holds the old configuration"
    );
    let events = timeline(&server, "call-r").await;
    assert_eq!(events.len(), events_after_setup);
    assert!(media_updated(&events).is_empty());
    server.stop().await;

    // And in the store.
    let server = TestServer::start(dir.path(), FakeEngine::new(40000)).await;
    assert_eq!(leg_media(&get(&server, "call-r").await, "c"), old_media);
    assert!(media_updated(&timeline(&server, "call-r").await).is_empty());
    // A corrected retry succeeds.
    let reply = server
        .interactions()
        .update_media(update("call-r", "c", reinvite_media()))
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.existing);
    server.stop().await;
}

#[tokio::test]
async fn an_update_accepted_while_the_engine_is_down_is_programmed_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine::new(30000);
    let server = TestServer::start(dir.path(), engine.clone()).await;
    let mut api = server.interactions();
    api.create_interaction(srtp_call("call-d")).await.unwrap();
    engine.set_down(true);
    let err = api
        .update_media(update("call-d", "c", reinvite_media()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // The intent is stored and recorded.
    let got = get(&server, "call-d").await;
    assert_eq!(leg_media(&got, "c").remote, "127.0.0.1:21000");
    assert_eq!(media_updated(&timeline(&server, "call-d").await).len(), 1);
    assert_eq!(
        engine.leg("call-d", "c").unwrap().media.unwrap().ptime_ms,
        20,
        "the engine still has the old media"
    );
    engine.set_down(false);
    // Reconciliation compares the engine's configuration with the stored media.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let media = engine.leg("call-d", "c").unwrap().media.unwrap();
        if media.ptime_ms == 30 {
            assert_eq!(media.remote, Some("127.0.0.1:21000".parse().unwrap()));
            let keys = media.srtp.unwrap();
            assert_eq!(keys.remote_key().to_sdes().as_str(), NEW_REMOTE_KEY);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reconciliation did not program the stored media"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The retry the client makes after UNAVAILABLE is an identical one.
    let retry = api
        .update_media(update("call-d", "c", reinvite_media()))
        .await
        .unwrap()
        .into_inner();
    assert!(retry.existing);
    assert_eq!(media_updated(&timeline(&server, "call-d").await).len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_supervisors_leg_is_updated_like_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine::new(30000);
    let server = TestServer::start(dir.path(), engine.clone()).await;
    add_supervisor(&server, "sup-1").await;
    server
        .interactions()
        .create_interaction(create_call("call-s"))
        .await
        .unwrap();
    let mut ringing = supervise("call-s", "sv-1", "sup-1", "sup-leg", "a", 22000);
    ringing.media.as_mut().unwrap().auto_answer = Some(false);
    server.supervision().start_monitor(ringing).await.unwrap();
    // The ringing phone's SBC moves it: auto_answer in the update is ignored.
    let mut m = media(22100);
    m.auto_answer = Some(true);
    m.srtp = Some(srtp(SUITE, NEW_REMOTE_KEY, ""));
    let reply = server
        .interactions()
        .update_media(update("call-s", "sup-leg", m))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.changed,
        [
            "remote",
            "srtp",
            "srtp_local_key",
            "srtp_remote_key",
            "srtp_suite"
        ]
    );
    let leg_media = reply.leg.unwrap().media.unwrap();
    assert_eq!(leg_media.auto_answer, Some(false));
    assert!(
        !leg_media.srtp.unwrap().local_key.is_empty(),
        "ours generated"
    );
    let config = engine.programmed("call-s", "sup-leg");
    assert_eq!(config.remote, Some("127.0.0.1:22100".parse().unwrap()));
    assert!(
        config.report_first_packet,
        "still ringing: first packet wanted"
    );
    assert!(config.srtp.is_some());
    let sv = server
        .supervision()
        .get_supervision(proto::GetSupervisionRequest {
            supervision_id: "sv-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sv.state, proto::SupervisionState::Connecting as i32);
    assert_eq!(
        sv.leg.unwrap().media.unwrap().remote,
        "127.0.0.1:22100",
        "the supervision shows the new media"
    );
    let events = timeline(&server, "call-s").await;
    let e = media_updated(&events);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].details["participant_id"], "sup-leg");
    assert_eq!(e[0].details["srtp"], "on");
    assert_no_key("the timeline", &format!("{events:?}"));
    server.stop().await;
}

#[tokio::test]
async fn update_media_is_visible_through_reflection() {
    use prost::Message;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), FakeEngine::new(30000)).await;
    let mut reflection = ServerReflectionClient::new(server.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "earshot.v1.Interactions.UpdateMedia".into(),
        )),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let mut found = None;
    for bytes in &files.file_descriptor_proto {
        let file = prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap();
        for service in file.service.iter().filter(|s| s.name() == "Interactions") {
            found = service
                .method
                .iter()
                .find(|m| m.name() == "UpdateMedia")
                .map(|m| (m.input_type().to_owned(), m.output_type().to_owned()));
        }
    }
    assert_eq!(
        found,
        Some((
            ".earshot.v1.UpdateMediaRequest".to_owned(),
            ".earshot.v1.UpdateMediaResponse".to_owned()
        ))
    );
    server.stop().await;
}
