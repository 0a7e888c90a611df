//! The fault suite (issue 9): every fault a carrier meets in the first week, each with
//! what must hold afterwards. The sidecar runs in-process against the real engine
//! (`earshot-engine` on its in-memory backend, so its refusals are its own), except
//! where the fault needs real processes (kill -9, a second engine client, the sidecar
//! away while a phone answers), which use the two binaries.
//!
//! | fault | test |
//! |---|---|
//! | refused creates and supervisions (zero or 17 participants, IPv6 on a v4 engine, payload types 72..95, telephone-event 13) | `refused_*` |
//! | a stored interaction the engine refuses (poisoned store) | `a_poisoned_interaction_*` |
//! | an engine restart that cannot give a leg its port back | `ports_are_sacred_*` |
//! | an empty, foreign, truncated or damaged store | `an_empty_or_foreign_store_*`, `damaged_store_files_*` |
//! | long invalid input | `errors_quote_at_most_64_characters_*` |
//! | kill -9 of the engine, then of the sidecar, while calls are being created | `kill_9_of_either_process_under_load_*` |
//! | a second programming client on the engine socket | `a_second_programming_client_*` |
//! | the sidecar away while a ringing supervisor's phone answers | `a_phone_that_answers_while_*` |
//! | foreign sockets in the port range | `refused_for_lack_of_ports_*`, and `engine/dataplane/tests/ports_held_by_others_are_skipped.rs` |
//!
//! Long variants: none yet; every test here runs in a few seconds.

// The control crate's test support (fake engine, test server, request builders),
// shared rather than copied.
#[path = "../../control/server/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use earshot_control::proto;
use earshot_engine_api::Request;
use support::*;

mod real_engine;
use real_engine::*;
use tonic::Code;

fn call_with(
    id: &str,
    f: impl FnOnce(&mut proto::CreateInteractionRequest),
) -> proto::CreateInteractionRequest {
    let mut req = create_call(id);
    f(&mut req);
    req
}

/// What a refused request must leave: no interaction, no leg, no event.
async fn assert_no_trace(server: &TestServer, engine: &RealEngine, id: &str, events_before: u64) {
    let get = server
        .interactions()
        .get_interaction(proto::GetInteractionRequest {
            interaction_id: id.into(),
        })
        .await;
    assert_eq!(
        get.map(|_| ()).unwrap_err().code(),
        Code::NotFound,
        "{id} was stored"
    );
    let snap = engine.snapshot();
    assert!(
        snap.legs.iter().all(|l| l.session != id),
        "{id} holds engine legs: {:?}",
        snap.legs
    );
    assert_eq!(
        events_after(server, 0).await.len() as u64,
        events_before,
        "{id} emitted events"
    );
}

/// Every retained event (the backlog of WatchEvents from 0).
async fn events_after(server: &TestServer, after: u64) -> Vec<proto::Event> {
    use tokio_stream::StreamExt;
    let mut stream = server
        .interactions()
        .watch_events(proto::WatchEventsRequest {
            after_sequence: after,
            interaction_id: String::new(),
            live_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Ok(Some(Ok(e))) =
        tokio::time::timeout(Duration::from_millis(200), stream.next()).await
    {
        out.push(e);
    }
    out
}

async fn timeline_kinds(server: &TestServer, id: &str) -> Vec<proto::EventKind> {
    server
        .interactions()
        .get_timeline(proto::GetTimelineRequest {
            interaction_id: id.into(),
        })
        .await
        .map(|r| {
            r.into_inner()
                .events
                .iter()
                .map(|e| {
                    proto::EventKind::try_from(e.kind).unwrap_or(proto::EventKind::Unspecified)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (up to 5 s) for `check` to hold.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..250 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within 5 s");
}

#[tokio::test]
async fn refused_creates_leave_no_trace_and_a_corrected_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let engine = RealEngine::start(&mem_config(1, 40960, 1024));
    let server = TestServer::start_on(dir.path(), engine.clone(), |_| {}).await;

    // (request, expected code, expected field)
    let many: Vec<proto::ParticipantSpec> = (0..17)
        .map(|i| {
            spec(
                &format!("p{i}"),
                proto::ParticipantKind::External,
                proto::Role::Customer,
                20000 + i,
            )
        })
        .collect();
    let cases: Vec<(&str, proto::CreateInteractionRequest, Code, Option<&str>)> = vec![
        (
            "zero participants",
            call_with("call-0", |r| r.participants.clear()),
            Code::InvalidArgument,
            Some("participants"),
        ),
        (
            "17 participants",
            call_with("call-17", |r| r.participants = many.clone()),
            Code::ResourceExhausted,
            None,
        ),
        (
            "an IPv6 remote on an IPv4-only engine",
            call_with("call-v6", |r| {
                r.participants[1].media.as_mut().unwrap().remote = "[::1]:4000".into();
            }),
            Code::InvalidArgument,
            Some("participants[1].media.remote"),
        ),
        (
            "payload type 72 (RTCP range)",
            call_with("call-pt72", |r| {
                r.participants[0].media.as_mut().unwrap().payload_type = 72;
            }),
            Code::InvalidArgument,
            Some("participants[0].media.payload_type"),
        ),
        (
            "payload type 95 (RTCP range)",
            call_with("call-pt95", |r| {
                r.participants[1].media.as_mut().unwrap().payload_type = 95;
            }),
            Code::InvalidArgument,
            Some("participants[1].media.payload_type"),
        ),
        (
            "telephone-event payload type 13",
            call_with("call-te13", |r| {
                r.participants[0].media.as_mut().unwrap().telephone_event_pt = Some(13);
            }),
            Code::InvalidArgument,
            Some("participants[0].media.telephone_event_pt"),
        ),
    ];
    let mut failures = Vec::new();
    for (what, req, code, field) in cases {
        let id = req.interaction_id.clone();
        let events = events_after(&server, 0).await.len() as u64;
        match server.interactions().create_interaction(req).await {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(status) => {
                let (_, got_field) = reason_of(&status);
                if status.code() != code || got_field.as_deref() != field {
                    failures.push(format!(
                        "{what}: {:?} field {got_field:?}, expected {code:?} field {field:?} ({})",
                        status.code(),
                        status.message()
                    ));
                }
            }
        }
        assert_no_trace(&server, &engine, &id, events).await;
        // The corrected request under the same id is accepted.
        let fixed = server
            .interactions()
            .create_interaction(create_call(&id))
            .await;
        match fixed {
            Ok(r) if !r.get_ref().existing => {}
            other => failures.push(format!("{what}: corrected retry gave {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "failures:\n  {}",
        failures.join("\n  ")
    );
    server.stop().await;
}

#[tokio::test]
async fn refused_supervisions_and_joins_leave_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let engine = RealEngine::start(&mem_config(1, 40960, 1024));
    let server = TestServer::start_on(dir.path(), engine.clone(), |_| {}).await;
    add_supervisor(&server, "sup-1").await;
    server
        .interactions()
        .create_interaction(create_call("call-1"))
        .await
        .unwrap();
    let legs_before = engine.snapshot().legs.len();
    let events = events_after(&server, 0).await.len();

    let mut req = supervise("call-1", "mon-1", "sup-1", "s1", "a", 21000);
    req.media.as_mut().unwrap().remote = "[::1]:21000".into();
    let err = server.supervision().start_monitor(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(reason_of(&err).1.as_deref(), Some("media.remote"));
    let get = server
        .supervision()
        .get_supervision(proto::GetSupervisionRequest {
            supervision_id: "mon-1".into(),
        })
        .await;
    assert_eq!(
        get.unwrap_err().code(),
        Code::NotFound,
        "the refused supervision was stored"
    );
    assert_eq!(
        engine.snapshot().legs.len(),
        legs_before,
        "a leg was left behind"
    );
    assert_eq!(
        events_after(&server, 0).await.len(),
        events,
        "events were emitted"
    );
    let inter = server
        .interactions()
        .get_interaction(proto::GetInteractionRequest {
            interaction_id: "call-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        inter.participants.len(),
        2,
        "the supervisor leg was recorded: {inter:?}"
    );
    // The corrected retry (same ids) succeeds.
    server
        .supervision()
        .start_monitor(supervise("call-1", "mon-1", "sup-1", "s1", "a", 21000))
        .await
        .expect("corrected monitor");

    // A refused AddParticipant: the same.
    let mut p = spec(
        "x",
        proto::ParticipantKind::External,
        proto::Role::Other,
        22000,
    );
    p.media.as_mut().unwrap().remote = "[::1]:22000".into();
    let err = server
        .interactions()
        .add_participant(proto::AddParticipantRequest {
            interaction_id: "call-1".into(),
            participant: Some(p),
            join_group_of: "c".into(),
            actor: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        reason_of(&err).1.as_deref(),
        Some("participant.media.remote")
    );
    assert!(engine.port_of("call-1", "x").is_none());
    server
        .interactions()
        .add_participant(proto::AddParticipantRequest {
            interaction_id: "call-1".into(),
            participant: Some(spec(
                "x",
                proto::ParticipantKind::External,
                proto::Role::Other,
                22000,
            )),
            join_group_of: "c".into(),
            actor: String::new(),
        })
        .await
        .expect("corrected add");
    server.stop().await;
}

#[tokio::test]
async fn refused_for_lack_of_ports_holds_nothing_and_succeeds_once_ports_free() {
    let dir = tempfile::tempdir().unwrap();
    // Four ports: two calls of two rtcp-mux legs.
    let engine = RealEngine::start(&mem_config(1, 40960, 4));
    let server = TestServer::start_on(dir.path(), engine.clone(), |_| {}).await;
    for id in ["call-1", "call-2"] {
        server
            .interactions()
            .create_interaction(create_call(id))
            .await
            .unwrap();
    }
    let events = events_after(&server, 0).await.len() as u64;
    let err = server
        .interactions()
        .create_interaction(create_call("call-3"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_no_trace(&server, &engine, "call-3", events).await;
    server
        .interactions()
        .end_interaction(proto::EndInteractionRequest {
            interaction_id: "call-1".into(),
            actor: String::new(),
        })
        .await
        .unwrap();
    server
        .interactions()
        .create_interaction(create_call("call-3"))
        .await
        .expect("the retry once ports are free");
    server.stop().await;
}

#[tokio::test]
async fn a_poisoned_interaction_never_blocks_the_others_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = mem_config(1, 40960, 1024);
    let engine = RealEngine::start(&cfg);
    let server = TestServer::start_on(dir.path(), engine.clone(), |_| {}).await;
    // Accepted while the engine is down: the intent is stored, the engine will refuse
    // it (IPv6 on an IPv4-only engine). It sorts first.
    engine.set_down(true);
    let poisoned = call_with("a-poisoned", |r| {
        r.participants[0].media.as_mut().unwrap().remote = "[::1]:4000".into();
    });
    let err = server
        .interactions()
        .create_interaction(poisoned)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    engine.set_down(false);
    for id in ["b-call", "c-call"] {
        server
            .interactions()
            .create_interaction(create_call(id))
            .await
            .unwrap();
    }
    let ports: Vec<Option<u16>> = ["b-call", "c-call"]
        .iter()
        .flat_map(|id| [engine.port_of(id, "c"), engine.port_of(id, "a")])
        .collect();
    assert!(ports.iter().all(Option::is_some), "{ports:?}");
    // The engine restarts: every call must come back, the poisoned one reported.
    engine.restart(&cfg);
    eventually("b-call and c-call back on the engine", async || {
        let now: Vec<Option<u16>> = ["b-call", "c-call"]
            .iter()
            .flat_map(|id| [engine.port_of(id, "c"), engine.port_of(id, "a")])
            .collect();
        now == ports
    })
    .await;
    eventually("PROGRAMMING_FAILED on the poisoned call", async || {
        timeline_kinds(&server, "a-poisoned")
            .await
            .contains(&proto::EventKind::ProgrammingFailed)
    })
    .await;
    assert_eq!(
        server.metric("earshot_interactions_out_of_sync").await,
        Some(1.0),
        "the gauge counts the poisoned call"
    );
    // Reported once, not at every reconciliation pass.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failed = timeline_kinds(&server, "a-poisoned")
        .await
        .iter()
        .filter(|k| **k == proto::EventKind::ProgrammingFailed)
        .count();
    assert_eq!(failed, 1, "one PROGRAMMING_FAILED event");
    // Ending it clears the gauge.
    server
        .interactions()
        .end_interaction(proto::EndInteractionRequest {
            interaction_id: "a-poisoned".into(),
            actor: String::new(),
        })
        .await
        .unwrap();
    eventually("gauge back to 0", async || {
        server.metric("earshot_interactions_out_of_sync").await == Some(0.0)
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn ports_are_sacred_across_an_engine_restart_and_a_lost_port_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    // Two shards of 32 ports: calls alternate between 40960.. and 40992..
    let engine = RealEngine::start(&mem_config(2, 40960, 32));
    let server = TestServer::start_on(dir.path(), engine.clone(), |_| {}).await;
    let ids = ["c1", "c2", "c3", "c4"];
    for id in ids {
        server
            .interactions()
            .create_interaction(create_call(id))
            .await
            .unwrap();
    }
    let recorded: Vec<(&str, &str, u16)> = ids
        .iter()
        .flat_map(|id| ["c", "a"].map(|p| (*id, p, engine.port_of(id, p).unwrap())))
        .collect();
    let low: Vec<_> = recorded.iter().filter(|r| r.2 < 40992).cloned().collect();
    let high: Vec<_> = recorded.iter().filter(|r| r.2 >= 40992).cloned().collect();
    assert!(
        !low.is_empty() && !high.is_empty(),
        "calls on both shards: {recorded:?}"
    );
    // The engine comes back with only the low range: the high ports are truly gone.
    engine.restart(&mem_config(1, 40960, 32));
    eventually("every leg back", async || {
        recorded
            .iter()
            .all(|(id, p, _)| engine.port_of(id, p).is_some())
    })
    .await;
    let mut failures = Vec::new();
    for (id, p, port) in &low {
        let now = engine.port_of(id, p);
        if now != Some(*port) {
            failures.push(format!("{id}/{p} was on {port}, now {now:?}"));
        }
    }
    let low_ports: Vec<u16> = low.iter().map(|r| r.2).collect();
    for (id, p, port) in &high {
        let now = engine.port_of(id, p).unwrap();
        if low_ports.contains(&now) {
            failures.push(format!(
                "{id}/{p} (was {port}) took {now}, another leg's recorded port"
            ));
        }
        let lost_events: Vec<proto::Event> = server
            .interactions()
            .get_timeline(proto::GetTimelineRequest {
                interaction_id: (*id).into(),
            })
            .await
            .unwrap()
            .into_inner()
            .events
            .into_iter()
            .filter(|e| e.kind == proto::EventKind::LegPortLost as i32)
            .filter(|e| e.details.get("participant_id").map(String::as_str) == Some(*p))
            .collect();
        let expected_new = format!("127.0.0.1:{now}");
        if lost_events.len() != 1
            || lost_events[0].details.get("new_local") != Some(&expected_new)
            || lost_events[0].details.get("old_local") != Some(&format!("127.0.0.1:{port}"))
        {
            failures.push(format!("{id}/{p}: LEG_PORT_LOST events {lost_events:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "failures:\n  {}",
        failures.join("\n  ")
    );
    // The API shows the new addresses.
    let inter = server
        .interactions()
        .get_interaction(proto::GetInteractionRequest {
            interaction_id: high[0].0.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let shown = inter
        .participants
        .iter()
        .find(|p| p.participant_id == high[0].1)
        .and_then(|p| p.leg.as_ref())
        .map(|l| l.local.clone());
    assert_eq!(
        shown,
        engine
            .port_of(high[0].0, high[0].1)
            .map(|p| format!("127.0.0.1:{p}"))
    );
    server.stop().await;
}

#[tokio::test]
async fn an_empty_or_foreign_store_never_removes_a_live_engines_legs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = RealEngine::start(&mem_config(1, 40960, 1024));
    let first = dir.path().join("first");
    let server = TestServer::start_on(&first, engine.clone(), |_| {}).await;
    for id in ["call-1", "call-2"] {
        server
            .interactions()
            .create_interaction(create_call(id))
            .await
            .unwrap();
    }
    server.stop().await;
    let legs = engine.snapshot().legs.len();
    assert_eq!(legs, 4);

    // A new, empty data directory: refused at start, legs untouched.
    let empty = dir.path().join("empty");
    let err = try_serve(&empty, engine.clone(), false).await;
    assert!(
        err.contains("--adopt-engine-state") && err.contains("--data-dir"),
        "{err}"
    );
    assert_eq!(
        engine.snapshot().legs.len(),
        legs,
        "an empty store removed live legs"
    );

    // A zero-length database file: a clear error, legs untouched.
    let zero = dir.path().join("zero");
    std::fs::create_dir_all(&zero).unwrap();
    std::fs::write(zero.join(earshot_control::store::DB_FILE), b"").unwrap();
    let err = try_serve(&zero, engine.clone(), false).await;
    assert!(err.contains("empty"), "{err}");
    assert_eq!(
        engine.snapshot().legs.len(),
        legs,
        "a zero-length store removed live legs"
    );

    // The right store: accepted, every leg kept.
    let server = TestServer::start_on(&first, engine.clone(), |_| {}).await;
    assert_eq!(engine.snapshot().legs.len(), legs);
    server.stop().await;

    // The operator takes the engine over from a new store: the unknown legs go.
    let adopt = dir.path().join("adopt");
    let server =
        TestServer::start_on(&adopt, engine.clone(), |c| c.adopt_engine_state = true).await;
    eventually("adopted: the strays are removed", async || {
        engine.snapshot().legs.is_empty()
    })
    .await;
    assert_eq!(
        engine
            .snapshot()
            .owner
            .as_deref()
            .map(|o| o.starts_with("store-")),
        Some(true)
    );
    server.stop().await;
}

/// Starts a sidecar and expects it to refuse; returns its error text.
async fn try_serve(
    data_dir: &std::path::Path,
    engine: std::sync::Arc<RealEngine>,
    adopt: bool,
) -> String {
    let mut config = earshot_control::ServerConfig::new(data_dir);
    config.adopt_engine_state = adopt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::spawn(earshot_control::serve_with_listener(
            config,
            listener,
            engine,
            std::future::pending(),
        )),
    )
    .await
    .expect("the sidecar refuses at start instead of serving");
    match served {
        Ok(Ok(())) => panic!("the sidecar started"),
        Ok(Err(e)) => format!("{e:#}"),
        Err(join) => panic!("the sidecar panicked: {join}"),
    }
}

#[tokio::test]
async fn damaged_store_files_are_a_clear_error_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    {
        let engine = RealEngine::start(&mem_config(1, 40960, 1024));
        let server = TestServer::start_on(&good, engine.clone(), |_| {}).await;
        for i in 0..20 {
            server
                .interactions()
                .create_interaction(create_call(&format!("call-{i}")))
                .await
                .unwrap();
        }
        server.stop().await;
    }
    let bytes = std::fs::read(good.join(earshot_control::store::DB_FILE)).unwrap();
    let seed: u64 = std::env::var("EARSHOT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0009);
    println!("damaged store seed {seed} (EARSHOT_TEST_SEED replays it)");
    let mut rng = seed;
    let mut next = move || {
        // xorshift64*: enough to scribble.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut random = vec![0u8; 64 * 1024];
    random.iter_mut().for_each(|b| *b = next() as u8);
    let mut scribbled = bytes.clone();
    for _ in 0..64 {
        let at = (next() as usize) % scribbled.len();
        scribbled[at] ^= 0xff;
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("zero-length", Vec::new()),
        ("truncated to half", bytes[..bytes.len() / 2].to_vec()),
        ("truncated to 100 bytes", bytes[..100].to_vec()),
        ("random bytes", random),
        (
            "another program's file",
            b"SQLite format 3\0"
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0, 4096))
                .collect(),
        ),
        ("scribbled", scribbled),
    ];
    for (what, content) in cases {
        let d = dir.path().join(what.replace(' ', "-"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(earshot_control::store::DB_FILE), &content).unwrap();
        // On a thread of its own with its own runtime (this test runs on one), so that
        // a panic anywhere in opening or loading shows as a failed join.
        let opened = std::thread::spawn(move || {
            earshot_control::store::Store::open(&d, 100).and_then(|s| {
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("a runtime")
                    .block_on(earshot_control::Core::load(&s))
                    .map(|_| ())
            })
        })
        .join();
        match opened {
            Err(_) => panic!("{what}: the store panicked"),
            Ok(Ok(())) if what == "scribbled" => {
                // Flipped bytes may all land in free pages; then the store is intact.
                println!("{what}: the scribbles missed every live page");
            }
            Ok(Ok(())) => panic!("{what}: accepted as a store"),
            Ok(Err(e)) => {
                let text = e.to_string();
                println!("{what}: {text}");
                assert!(text.len() < 1000, "{what}: a clear, short error: {text}");
            }
        }
    }
}

#[tokio::test]
async fn errors_quote_at_most_64_characters_of_any_input() {
    let dir = tempfile::tempdir().unwrap();
    let engine = RealEngine::start(&mem_config(1, 40960, 1024));
    let server = TestServer::start_on(dir.path(), engine.clone(), |_| {}).await;
    for len in [3_000, 100 * 1024] {
        let id = "x".repeat(len - 1) + "!";
        // A client with gRPC's default metadata limits (tonic's defaults).
        let err = server
            .interactions()
            .get_interaction(proto::GetInteractionRequest {
                interaction_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{len}: {:?}", err.code());
        assert!(
            err.message().len() < 300,
            "{len}: message of {} bytes",
            err.message().len()
        );
        assert!(
            err.details().len() < 1024,
            "{len}: details of {} bytes",
            err.details().len()
        );
        let err = server
            .interactions()
            .create_interaction(call_with(&id, |_| {}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "create {len}: {err:?}");
        assert!(err.message().len() < 300);
        let mut bad_remote = create_call("call-r");
        bad_remote.participants[0].media.as_mut().unwrap().remote = id.clone();
        let err = server
            .interactions()
            .create_interaction(bad_remote)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "remote {len}");
        assert!(
            err.message().len() < 300,
            "remote {len}: {}",
            err.message().len()
        );
    }
    let _ = engine.request(Request::Snapshot);
    server.stop().await;
}

// ----------------------------------------------------------------------------------
// Faults that need real processes: the engine binary and the sidecar binary.

mod e2e;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use e2e::{ChildGuard, Who};
use earshot_engine_api::protocol::{ClientFrame, Hello, ServerFrame, read_frame, write_frame};

/// An engine process and (optionally) a sidecar process on one socket.
struct Procs {
    dir: PathBuf,
    socket: PathBuf,
    engine_program: PathBuf,
    engine_args: Vec<String>,
    engine: Option<ChildGuard>,
    sidecar: Option<ChildGuard>,
}

impl Procs {
    /// Starts an engine (socket backend, loopback) in a fresh directory; `None` with
    /// the reason printed when the engine binary cannot be had.
    fn engine(dir: &Path) -> Option<Procs> {
        let engine_program = e2e::engine_binary()?;
        let socket = dir.join("engine.sock");
        let engine_args: Vec<String> = vec![
            "--socket".into(),
            socket.display().to_string(),
            "--no-pin".into(),
            "--backend".into(),
            "socket".into(),
            "--port-base".into(),
            e2e::free_port_base().to_string(),
            "--ports-per-shard".into(),
            "1024".into(),
            "--bind-v4".into(),
            "127.0.0.1".into(),
        ];
        let mut procs = Procs {
            dir: dir.to_path_buf(),
            socket,
            engine_program,
            engine_args,
            engine: None,
            sidecar: None,
        };
        procs.start_engine();
        Some(procs)
    }

    // Waits for a real process on the real clock.
    #[allow(clippy::disallowed_methods)]
    fn start_engine(&mut self) {
        let mut engine = ChildGuard::spawn(
            "earshot-engine",
            &self.engine_program,
            &self.engine_args,
            &self.dir.join("engine.log"),
        );
        e2e::wait_until_accepting(&mut engine, &self.socket);
        self.engine = Some(engine);
    }

    async fn start_sidecar(&mut self) -> e2e::Api {
        let grpc: SocketAddr = ([127, 0, 0, 1], e2e::free_tcp_port()).into();
        let args = vec![
            "--engine-socket".to_string(),
            self.socket.display().to_string(),
            "--grpc".into(),
            grpc.to_string(),
            "--data-dir".into(),
            self.dir.join("data").display().to_string(),
            "--metrics".into(),
            "off".into(),
        ];
        let mut sidecar = ChildGuard::spawn(
            "earshot-control",
            &e2e::control_binary(),
            &args,
            &self.dir.join("control.log"),
        );
        let channel = e2e::connect_when_serving(grpc, &mut sidecar).await;
        self.sidecar = Some(sidecar);
        e2e::Api { channel }
    }

    fn sidecar_log(&self) -> String {
        self.sidecar
            .as_ref()
            .map(ChildGuard::log_tail)
            .unwrap_or_default()
    }
}

/// A raw client of the engine socket: its hello's answer.
fn engine_hello(
    socket: &Path,
    hello: &Hello,
) -> std::io::Result<(std::os::unix::net::UnixStream, Hello)> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write_frame(&mut s, hello)?;
    let answer: Hello = read_frame(&mut s)?.ok_or_else(|| std::io::Error::other("closed"))?;
    Ok((s, answer))
}

async fn create_tone_call(api: &e2e::Api, pump: &e2e::Pump, id: &str) -> proto::Interaction {
    use proto::{ParticipantKind as K, Role as R};
    api.interactions()
        .create_interaction(proto::CreateInteractionRequest {
            interaction_id: id.into(),
            participants: vec![
                e2e::spec("c", K::External, R::Customer, "", pump.addr(Who::Customer)),
                e2e::spec("a", K::Internal, R::Agent, "agent-1", pump.addr(Who::Agent)),
            ],
            actor: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e:?}"))
        .into_inner()
        .interaction
        .expect("interaction")
}

async fn supervision_state(api: &e2e::Api, id: &str) -> i32 {
    api.supervision()
        .get_supervision(proto::GetSupervisionRequest {
            supervision_id: id.into(),
        })
        .await
        .map(|r| r.into_inner().state)
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_answers_while_the_sidecar_is_away_is_connected_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut procs) = Procs::engine(tmp.path()) else {
        return;
    };
    let api = procs.start_sidecar().await;
    let pump = e2e::Pump::start();
    api.user("sup-1", &e2e::ALL_PERMISSIONS, proto::Presence::Available)
        .await;
    let call = create_tone_call(&api, &pump, "call-r").await;
    pump.send_to(Who::Customer, Some(e2e::local_of(&call, "c")));
    pump.send_to(Who::Agent, Some(e2e::local_of(&call, "a")));
    // The supervisor's phone rings (auto_answer=false) and sends nothing yet.
    let mut req = e2e::supervise(
        "call-r",
        "mon-r",
        "sup-1",
        "s1",
        "a",
        pump.addr(Who::Supervisor),
    );
    req.media.as_mut().unwrap().auto_answer = Some(false);
    let mon = api
        .start(proto::SupervisionMode::Monitor, req)
        .await
        .expect("ringing monitor");
    assert_eq!(mon.state, proto::SupervisionState::Connecting as i32);

    // The sidecar dies; meanwhile the phone answers (its first packet reaches the
    // engine, which reports it to nobody).
    procs.sidecar.as_mut().unwrap().kill9();
    pump.send_to(Who::Supervisor, Some(e2e::leg_local(mon.leg.as_ref())));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let api = procs.start_sidecar().await;
    eventually(
        "the supervision becomes ACTIVE after the sidecar returns",
        async || supervision_state(&api, "mon-r").await == proto::SupervisionState::Active as i32,
    )
    .await;
    let kinds = timeline_kinds_of(&api, "call-r").await;
    assert!(
        kinds.contains(&proto::EventKind::SupervisorConnected),
        "{kinds:?}\n{}",
        procs.sidecar_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_programming_client_is_refused_and_the_first_keeps_the_events() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut procs) = Procs::engine(tmp.path()) else {
        return;
    };
    let api = procs.start_sidecar().await;
    // Another program connects as a programming client: refused at the handshake.
    let refused = engine_hello(&procs.socket, &Hello::current());
    match refused {
        Ok((_, hello)) => {
            let why = hello.refused.unwrap_or_default();
            assert!(why.contains("another programming client"), "{why:?}");
        }
        Err(e) => panic!("no refusal hello: {e}"),
    }
    // An observer is welcome, and may only read.
    let (mut observer, hello) = engine_hello(&procs.socket, &Hello::observer()).expect("observer");
    assert_eq!(hello.refused, None);
    write_frame(
        &mut observer,
        &ClientFrame::Call {
            id: 1,
            request: Request::RemoveSession {
                session: "call-x".into(),
            },
        },
    )
    .unwrap();
    let reply: Option<ServerFrame> = read_frame(&mut observer).unwrap();
    assert!(
        matches!(reply, Some(ServerFrame::Reply { result: Err(_), .. })),
        "an observer cannot program: {reply:?}"
    );
    // A node agent is welcome too (no programming slot taken), may mute and resume,
    // may not program, and (kept connected below) takes none of the sidecar's events.
    let (mut agent, hello) = engine_hello(&procs.socket, &Hello::agent()).expect("agent");
    assert_eq!(hello.refused, None, "an agent takes no programming slot");
    for (id, request, allowed) in [
        (
            1,
            Request::Mute {
                muted: false,
                for_ms: None,
            },
            true,
        ),
        (
            2,
            Request::RemoveSession {
                session: "call-x".into(),
            },
            false,
        ),
    ] {
        write_frame(&mut agent, &ClientFrame::Call { id, request }).unwrap();
        let reply: Option<ServerFrame> = read_frame(&mut agent).unwrap();
        match reply {
            Some(ServerFrame::Reply { id: got, result }) => {
                assert_eq!(got, id);
                assert_eq!(result.is_ok(), allowed, "agent request {id}: {result:?}");
            }
            other => panic!("agent request {id}: {other:?}"),
        }
    }
    // The sidecar still programs the engine and still gets its events (a ringing
    // supervisor's first packet).
    let pump = e2e::Pump::start();
    api.user("sup-1", &e2e::ALL_PERMISSIONS, proto::Presence::Available)
        .await;
    create_tone_call(&api, &pump, "call-2").await;
    let mut req = e2e::supervise(
        "call-2",
        "mon-2",
        "sup-1",
        "s1",
        "a",
        pump.addr(Who::Supervisor),
    );
    req.media.as_mut().unwrap().auto_answer = Some(false);
    let mon = api
        .start(proto::SupervisionMode::Monitor, req)
        .await
        .expect("monitor");
    pump.send_to(Who::Supervisor, Some(e2e::leg_local(mon.leg.as_ref())));
    eventually("the sidecar still gets the engine's events", async || {
        supervision_state(&api, "mon-2").await == proto::SupervisionState::Active as i32
    })
    .await;
    drop(procs.engine.take());
}

async fn timeline_kinds_of(api: &e2e::Api, id: &str) -> Vec<proto::EventKind> {
    api.interactions()
        .get_timeline(proto::GetTimelineRequest {
            interaction_id: id.into(),
        })
        .await
        .map(|r| {
            r.into_inner()
                .events
                .iter()
                .map(|e| {
                    proto::EventKind::try_from(e.kind).unwrap_or(proto::EventKind::Unspecified)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_socket_is_private_unique_and_never_deletes_other_files() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let Some(program) = e2e::engine_binary() else {
        return;
    };
    let dir = tmp.path();
    let args = |socket: &Path| -> Vec<String> {
        vec![
            "--socket".into(),
            socket.display().to_string(),
            "--no-pin".into(),
            "--backend".into(),
            "socket".into(),
            "--port-base".into(),
            e2e::free_port_base().to_string(),
            "--ports-per-shard".into(),
            "64".into(),
        ]
    };
    let quoted = |v: &[String]| {
        v.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    // Under umask 000 the socket is still 0600.
    let socket = dir.join("engine.sock");
    let script = format!(
        "umask 000; exec '{}' {}",
        program.display(),
        quoted(&args(&socket))
    );
    let mut first = ChildGuard::spawn(
        "engine-1",
        Path::new("/bin/sh"),
        &["-c".into(), script],
        &dir.join("e1.log"),
    );
    eventually("the first engine serves", async || {
        first.assert_running();
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o} under umask 000");

    // A second engine on the live socket refuses to start; the first keeps it.
    let out = std::process::Command::new(&program)
        .args(args(&socket))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a second engine started on a live socket"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("running engine"), "{err}");
    let (_, hello) =
        engine_hello(&socket, &Hello::observer()).expect("the first engine still answers");
    assert_eq!(hello.refused, None);
    first.assert_running();

    // A path that is not a socket is never deleted.
    let file = dir.join("precious.txt");
    std::fs::write(&file, b"keep me").unwrap();
    let out = std::process::Command::new(&program)
        .args(args(&file))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an engine started over a regular file"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"keep me",
        "the file was touched"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));

    // A stale socket (its engine was killed) is replaced.
    first.kill9();
    assert!(socket.exists(), "kill -9 leaves the socket file");
    let mut second = ChildGuard::spawn("engine-2", &program, &args(&socket), &dir.join("e2.log"));
    eventually("an engine starts over a stale socket", async || {
        second.assert_running();
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;

    // With --socket-group the socket is 0660 and owned by that group.
    let grouped = dir.join("grouped.sock");
    let mut a = args(&grouped);
    a.extend(["--socket-group".into(), "0".into()]);
    let mut third = ChildGuard::spawn("engine-3", &program, &a, &dir.join("e3.log"));
    eventually("the grouped engine serves", async || {
        third.assert_running();
        std::os::unix::net::UnixStream::connect(&grouped).is_ok()
    })
    .await;
    let mode = std::fs::metadata(&grouped).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_bound_never_take_the_api_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED: prlimit (util-linux) is not installed");
        return;
    }
    let grpc: SocketAddr = ([127, 0, 0, 1], e2e::free_tcp_port()).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], e2e::free_tcp_port()).into();
    let engine_toml = dir.join("engine.toml");
    std::fs::write(
        &engine_toml,
        format!(
            "port_base = {}\nports_per_shard = 64\npin = false\nbackend = \"socket\"\n",
            e2e::free_port_base()
        ),
    )
    .unwrap();
    // The common server default: 1,024 open files, soft and hard, so the server cannot
    // raise it; the bound is then a quarter of it (256).
    let args: Vec<String> = [
        "--nofile=1024:1024",
        env!("CARGO_BIN_EXE_earshot"),
        "--grpc",
        &grpc.to_string(),
        "--metrics",
        &metrics.to_string(),
        "--data-dir",
        &dir.join("data").display().to_string(),
        "--engine-config",
        &engine_toml.display().to_string(),
        "--no-pin",
        "--handshake-timeout",
        "2s",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    let mut server = ChildGuard::spawn(
        "earshot",
        Path::new("prlimit"),
        &args,
        &dir.join("earshot.log"),
    );
    let channel = e2e::connect_when_serving(grpc, &mut server).await;
    let api = e2e::Api { channel };
    // 1,140 idle connections (what took the API down): more than the open-file limit.
    let mut idle = Vec::new();
    for _ in 0..1_140 {
        match tokio::net::TcpStream::connect(grpc).await {
            Ok(s) => idle.push(s),
            Err(e) => {
                println!("client side stopped at {} connections: {e}", idle.len());
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.assert_running();
    // The bound is enforced: refusals are counted.
    let scrape = http_get(metrics, "/metrics").await;
    let refused = metric_value(&scrape, "earshot_grpc_connections_refused_total").unwrap_or(0.0);
    let open = metric_value(&scrape, "earshot_grpc_connections_open").unwrap_or(f64::MAX);
    println!(
        "idle connections: {}, refused {refused}, open {open}",
        idle.len()
    );
    assert!(refused > 0.0, "no connection was refused:\n{scrape}");
    assert!(open <= 256.0, "{open} connections open beyond the bound");
    // The idle ones are closed after the handshake timeout; a new client is served
    // while the idle clients still hold their sockets.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let fresh = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .expect("a new client connects");
    let user = proto::directory_client::DirectoryClient::new(fresh)
        .upsert_user(proto::UpsertUserRequest {
            user_id: "after".into(),
            display_name: "After".into(),
            permissions: vec![],
        })
        .await;
    assert!(
        user.is_ok(),
        "the API answers a new client: {user:?}\n{}",
        server.log_tail()
    );
    let log = server.log_tail();
    assert!(
        log.contains("connection limit reached"),
        "a WARN names the refusal:\n{log}"
    );
    drop(idle);
    let _ = api;
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

fn metric_value(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn a_first_packet_missed_by_the_sidecar_is_recovered_from_the_engines_state() {
    // The engine reports per-leg activity in its snapshot; the sidecar, which never got
    // the FirstPacket event, connects the ringing supervisor at reconciliation.
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine::new(30000);
    let server = TestServer::start_with(dir.path(), engine.clone(), |c| {
        c.reconcile_interval = Duration::from_millis(100);
    })
    .await;
    add_supervisor(&server, "sup-1").await;
    server
        .interactions()
        .create_interaction(create_call("call-1"))
        .await
        .unwrap();
    let mut req = supervise("call-1", "mon-1", "sup-1", "s1", "a", 21000);
    req.media.as_mut().unwrap().auto_answer = Some(false);
    server.supervision().start_monitor(req).await.unwrap();
    let leg = engine.leg("call-1", "s1").unwrap().leg;
    engine
        .state
        .lock()
        .unwrap()
        .activity
        .push(earshot_engine_api::LegActivity {
            leg,
            first_packet_seen: true,
            packets_in: 3,
            stream: None,
        });
    eventually("ACTIVE from the engine's state", async || {
        server
            .supervision()
            .get_supervision(proto::GetSupervisionRequest {
                supervision_id: "mon-1".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .state
            == proto::SupervisionState::Active as i32
    })
    .await;
    assert!(
        engine.hears("call-1", "s1", "a"),
        "the supervisor hears the call"
    );
    assert_eq!(
        server.metric("earshot_events_recovered_total").await,
        Some(1.0)
    );
    server.stop().await;
}

/// The same through the real engine: the shard reports `EngineSnapshot::activity`
/// (`first_packet_seen`, `packets_in` per leg), so a first packet the sidecar missed is
/// recovered from the engine's state.
#[tokio::test]
async fn the_real_engine_reports_first_packets_in_its_snapshot() {
    let engine = RealEngine::start(&mem_config(1, 40960, 64));
    let Ok(earshot_engine_api::Response::Leg(info)) = engine.request(Request::AllocateLeg {
        session: "s".into(),
        leg_key: "k".into(),
        family: earshot_engine_api::IpFamily::V4,
        requested_port: None,
        rtcp_mux: true,
        resume: None,
    }) else {
        panic!("allocate")
    };
    let snap = engine.snapshot();
    assert!(
        snap.activity_of(info.leg).is_some(),
        "the engine reports activity for every leg"
    );
}

#[tokio::test]
async fn ended_calls_leave_memory_at_once_and_the_store_after_the_retention_period() {
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine::new(30000);
    let clock = std::sync::Arc::new(earshot_control::ManualClock::new(1_700_000_000_000));
    let server = TestServer::start_with(dir.path(), engine.clone(), {
        let clock = clock.clone();
        move |c| {
            c.clock = clock;
            c.ended_retention = Duration::from_secs(1);
        }
    })
    .await;
    add_supervisor(&server, "sup-1").await;
    server
        .interactions()
        .create_interaction(create_call("call-1"))
        .await
        .unwrap();
    server
        .supervision()
        .start_monitor(supervise("call-1", "mon-1", "sup-1", "s1", "a", 21000))
        .await
        .unwrap();
    let live = server
        .interactions()
        .get_interaction(proto::GetInteractionRequest {
            interaction_id: "call-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    server
        .interactions()
        .end_interaction(proto::EndInteractionRequest {
            interaction_id: "call-1".into(),
            actor: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        server.metric("earshot_interactions_in_memory").await,
        Some(0.0),
        "the ended call left memory"
    );
    // Still readable from the store, as it ended.
    let ended = server
        .interactions()
        .get_interaction(proto::GetInteractionRequest {
            interaction_id: "call-1".into(),
        })
        .await
        .expect("an ended call is readable until the retention period passes")
        .into_inner();
    assert!(ended.ended && ended.participants.len() == live.participants.len());
    let sup = server
        .supervision()
        .get_supervision(proto::GetSupervisionRequest {
            supervision_id: "mon-1".into(),
        })
        .await
        .expect("its supervision too")
        .into_inner();
    assert_eq!(sup.state, proto::SupervisionState::Ended as i32);
    assert!(
        timeline_kinds(&server, "call-1")
            .await
            .contains(&proto::EventKind::InteractionEnded)
    );
    let listed = server
        .interactions()
        .list_interactions(proto::ListInteractionsRequest {
            include_ended: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.interactions.len(), 1);
    // Retries of what ended it are existing; other verbs are refused as on an ended call.
    let retry = server
        .interactions()
        .create_interaction(create_call("call-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(retry.existing && retry.interaction.unwrap().ended);
    server
        .interactions()
        .end_interaction(proto::EndInteractionRequest {
            interaction_id: "call-1".into(),
            actor: String::new(),
        })
        .await
        .expect("an identical end is accepted");
    let hold = server
        .interactions()
        .hold(proto::HoldRequest {
            interaction_id: "call-1".into(),
            participant_id: "c".into(),
            actor: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason_of(&hold).0, "INTERACTION_ENDED");
    // After the retention period the store forgets it.
    clock.advance_ms(1_001);
    eventually("pruned after the retention period", async || {
        server
            .interactions()
            .get_interaction(proto::GetInteractionRequest {
                interaction_id: "call-1".into(),
            })
            .await
            .is_err_and(|e| e.code() == Code::NotFound)
    })
    .await;
    assert!(timeline_kinds(&server, "call-1").await.is_empty());
    server.stop().await;
}

/// Creates `load-{from}..load-{to}` one after another (a bounded load), returning
/// each acknowledged call's legs as (id, participant, port); refusals are counted, and
/// `acks` counts acknowledged calls as they come (for the test to time its kills).
async fn create_load(
    api: e2e::Api,
    pump_addr: SocketAddr,
    from: usize,
    to: usize,
    acks: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> (Vec<(String, String, u16)>, usize) {
    use proto::{ParticipantKind as K, Role as R};
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in from..to {
        let id = format!("load-{i}");
        let created = api
            .interactions()
            .create_interaction(proto::CreateInteractionRequest {
                interaction_id: id.clone(),
                participants: vec![
                    e2e::spec("c", K::External, R::Customer, "", pump_addr),
                    e2e::spec("a", K::Internal, R::Agent, "agent-1", pump_addr),
                ],
                actor: String::new(),
            })
            .await;
        match created {
            Ok(r) => {
                let inter = r.into_inner().interaction.expect("interaction");
                for p in ["c", "a"] {
                    acked.push((id.clone(), p.to_string(), e2e::local_of(&inter, p).port()));
                }
                acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(_) => refused += 1,
        }
    }
    (acked, refused)
}

/// Every interaction the sidecar stores, as (id, participant, port) of its legs.
async fn stored_legs(
    api: &e2e::Api,
    ids: &[String],
) -> std::collections::BTreeSet<(String, String, u16)> {
    let mut out = std::collections::BTreeSet::new();
    for id in ids {
        let Ok(r) = api
            .interactions()
            .get_interaction(proto::GetInteractionRequest {
                interaction_id: id.clone(),
            })
            .await
        else {
            continue;
        };
        for p in r.into_inner().participants {
            let port = e2e::leg_local(p.leg.as_ref()).port();
            out.insert((id.clone(), p.participant_id, port));
        }
    }
    out
}

/// kill -9 of either process while calls are being created: afterwards the engine
/// holds exactly the legs the sidecar stores (no call stranded without legs, no leg
/// left without its call), and every acknowledged call is on its acknowledged ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_either_process_under_load_strands_no_call() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut procs) = Procs::engine(tmp.path()) else {
        return;
    };
    let api = procs.start_sidecar().await;
    let pump = e2e::Pump::start();
    let target = pump.addr(Who::Customer);
    let ids: Vec<String> = (0..240).map(|i| format!("load-{i}")).collect();

    // Each kill comes once 20 calls of its batch were acknowledged (not after a fixed
    // time: on a loaded machine a fixed delay may leave nothing acknowledged to check).
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let after_acks = |n: usize| {
        let acks = acks.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while acks.load(std::sync::atomic::Ordering::Relaxed) < n
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    // The engine dies and comes back while calls 0..120 are being created.
    let load = tokio::spawn(create_load(api.clone(), target, 0, 120, acks.clone()));
    after_acks(20).await;
    if let Some(mut engine) = procs.engine.take() {
        engine.kill9();
    }
    procs.start_engine();
    let (mut acked, refused_1) = load.await.unwrap();

    // The sidecar dies and comes back while calls 120..240 are being created.
    let before = acks.load(std::sync::atomic::Ordering::Relaxed);
    let load = tokio::spawn(create_load(api.clone(), target, 120, 240, acks.clone()));
    after_acks(before + 20).await;
    procs.sidecar.as_mut().unwrap().kill9();
    let (acked_2, refused_2) = load.await.unwrap();
    acked.extend(acked_2);
    let api = procs.start_sidecar().await;
    eprintln!(
        "load: {} calls acknowledged, {refused_1} refused around the engine's kill, \
         {refused_2} around the sidecar's",
        acked.len() / 2
    );
    assert!(
        acked.len() >= 2 * 40,
        "at least 40 calls were acknowledged (got {} legs; {refused_1} + {refused_2} refused)",
        acked.len()
    );

    let mut stored = std::collections::BTreeSet::new();
    let mut in_engine = std::collections::BTreeSet::new();
    for _ in 0..75 {
        stored = stored_legs(&api, &ids).await;
        in_engine = e2e::engine_legs(&procs.socket).into_iter().collect();
        if stored == in_engine {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let missing: Vec<_> = stored.difference(&in_engine).take(5).collect();
    let orphans: Vec<_> = in_engine.difference(&stored).take(5).collect();
    assert!(
        missing.is_empty() && orphans.is_empty(),
        "within 15 s the engine holds exactly the stored legs: {} stored, {} in the engine; \
         stored but missing {missing:?}; in the engine but not stored {orphans:?}\n{}",
        stored.len(),
        in_engine.len(),
        procs.sidecar_log()
    );
    let moved: Vec<_> = acked
        .iter()
        .filter(|(id, p, port)| !stored.contains(&(id.clone(), p.clone(), *port)))
        .take(5)
        .collect();
    assert!(
        moved.is_empty(),
        "acknowledged legs kept their ports: {moved:?}"
    );
}
