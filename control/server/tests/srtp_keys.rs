//! SRTP keys through the gRPC API: our key generated when the request leaves it out,
//! returned, programmed into the engine, the same on a retry, after re-programming and
//! after a restart; the remote's key never echoed; refusals name the field and never
//! quote key material; timelines carry no key.

mod support;

use earshot_control::proto;
use earshot_engine_api::Request;
use support::*;
use tonic::Code;

const REMOTE_KEY: &str = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";

fn srtp_call(id: &str, remote_key: &str, local_key: &str) -> proto::CreateInteractionRequest {
    let mut req = create_call(id);
    req.participants[0].media.as_mut().unwrap().srtp = Some(proto::Srtp {
        suite: SUITE.into(),
        remote_key: remote_key.into(),
        local_key: local_key.into(),
    });
    req
}

fn customer_srtp(i: &proto::Interaction) -> proto::Srtp {
    i.participants
        .iter()
        .find(|p| p.participant_id == "c")
        .and_then(|p| p.leg.as_ref())
        .and_then(|l| l.media.as_ref())
        .and_then(|m| m.srtp.clone())
        .expect("the customer's leg has SRTP")
}

#[tokio::test]
async fn our_key_is_generated_returned_programmed_and_stable_across_retries_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine::new(30000);
    let server = TestServer::start(dir.path(), engine.clone()).await;
    let mut api = server.interactions();
    let first = api
        .create_interaction(srtp_call("call-s", REMOTE_KEY, ""))
        .await
        .unwrap()
        .into_inner()
        .interaction
        .unwrap();
    let ours = customer_srtp(&first);
    assert_eq!(ours.suite, SUITE);
    assert!(
        ours.remote_key.is_empty(),
        "the remote's key is never echoed"
    );
    assert!(ours.local_key.starts_with("inline:") && ours.local_key.len() == 47);
    assert_ne!(ours.local_key, REMOTE_KEY);
    let media = engine.programmed("call-s", "c");
    let keys = media.srtp.as_ref().expect("the engine got SRTP");
    assert_eq!(keys.local_key().to_sdes().as_str(), ours.local_key);
    assert_eq!(keys.remote_key().to_sdes().as_str(), REMOTE_KEY);
    // The agent's leg stays plain.
    let agent = engine.leg("call-s", "a").unwrap().leg;
    assert!(engine.state.lock().unwrap().calls.iter().any(|r| matches!(
        r,
        Request::ConfigureLeg { leg, media } if *leg == agent && media.srtp.is_none()
    )));

    // An identical retry (our key again left to us) returns the same key.
    let again = api
        .create_interaction(srtp_call("call-s", REMOTE_KEY, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(again.existing);
    assert_eq!(customer_srtp(&again.interaction.unwrap()), ours);
    // A retry naming the key we returned is the same request too.
    let named = api
        .create_interaction(srtp_call("call-s", REMOTE_KEY, &ours.local_key))
        .await
        .unwrap()
        .into_inner();
    assert!(named.existing);
    // Another remote key is other content.
    let other = "inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj";
    let err = api
        .create_interaction(srtp_call("call-s", other, ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(!err.message().contains("WVNf") && !err.message().contains("d0Rm"));

    // Re-programming (a hold changes the plan) keeps the key.
    api.hold(proto::HoldRequest {
        interaction_id: "call-s".into(),
        participant_id: "c".into(),
        actor: String::new(),
    })
    .await
    .unwrap();
    let got = api
        .get_interaction(proto::GetInteractionRequest {
            interaction_id: "call-s".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(customer_srtp(&got), ours);

    // No key in the timeline.
    let timeline = api
        .get_timeline(proto::GetTimelineRequest {
            interaction_id: "call-s".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let text = format!("{timeline:?}");
    assert!(
        !text.contains("WVNf") && !text.contains(&ours.local_key[7..20]),
        "{text}"
    );
    server.stop().await;

    // Both processes restart: the fresh engine is programmed with the same keys and the
    // API returns the same key.
    let engine2 = FakeEngine::new(40000);
    let server = TestServer::start(dir.path(), engine2.clone()).await;
    let after = server
        .interactions()
        .get_interaction(proto::GetInteractionRequest {
            interaction_id: "call-s".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(customer_srtp(&after), ours);
    let media = engine2.programmed("call-s", "c");
    let keys = media.srtp.as_ref().expect("the restarted engine got SRTP");
    assert_eq!(keys.local_key().to_sdes().as_str(), ours.local_key);
    assert_eq!(keys.remote_key().to_sdes().as_str(), REMOTE_KEY);
    server.stop().await;
}

#[tokio::test]
async fn bad_suites_and_keys_are_invalid_argument_naming_the_field_without_quoting_keys() {
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine::new(30000);
    let server = TestServer::start(dir.path(), engine.clone()).await;
    let mut api = server.interactions();
    let short = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7";
    let cases = [
        (
            "AES_CM_128_NOPE",
            REMOTE_KEY,
            "",
            "participants[0].media.srtp.suite",
        ),
        (SUITE, short, "", "participants[0].media.srtp.remote_key"),
        (SUITE, "", "", "participants[0].media.srtp.remote_key"),
        (
            SUITE,
            REMOTE_KEY,
            short,
            "participants[0].media.srtp.local_key",
        ),
        (
            SUITE,
            "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
            "",
            "participants[0].media.srtp.remote_key",
        ),
        (
            "AEAD_AES_256_GCM",
            REMOTE_KEY,
            "",
            "participants[0].media.srtp.remote_key",
        ),
    ];
    for (k, (suite, remote, local, field)) in cases.into_iter().enumerate() {
        let mut req = srtp_call(&format!("bad-{k}"), remote, local);
        req.participants[0]
            .media
            .as_mut()
            .unwrap()
            .srtp
            .as_mut()
            .unwrap()
            .suite = suite.into();
        let err = api.create_interaction(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "case {k}: {err:?}");
        assert_eq!(
            reason_of(&err).1.as_deref(),
            Some(field),
            "case {k}: {err:?}"
        );
        assert!(
            !format!("{err:?}").contains("WVNf"),
            "case {k} quotes key material: {err:?}"
        );
    }
    assert!(
        engine.leg("bad-0", "c").is_none(),
        "nothing is programmed for a refused request"
    );
    server.stop().await;
}
