//! Control replicas on one etcd (SPEC section 7): any replica answers any RPC and the
//! supervision rules of section 2 hold across them. Two `earshot-control` servers
//! share a real etcd and one engine (a fake one: the media is not the point here).
//! Prints `SKIPPED` where etcd is not installed.

mod support;

use std::sync::Arc;
use std::time::Duration;

use earshot_control::proto;
use earshot_etcd::testing::EtcdCluster;
use support::{FakeEngine, TestServer, add_supervisor, create_call, reason_of, supervise};

async fn replicas(
    cluster: &EtcdCluster,
    prefix: &str,
) -> (TestServer, TestServer, Arc<FakeEngine>) {
    let engine = FakeEngine::new(30000);
    let dir = tempfile::tempdir().unwrap();
    let endpoints = cluster.endpoints();
    let start = |endpoints: Vec<String>| {
        let engine = engine.clone();
        let dir = dir.path().to_owned();
        let prefix = prefix.to_owned();
        async move {
            TestServer::start_on(&dir, engine, move |c| {
                c.etcd_endpoints = endpoints;
                c.etcd_prefix = prefix;
            })
            .await
        }
    };
    let a = start(endpoints.clone()).await;
    let mut rotated = endpoints;
    rotated.rotate_left(1);
    let b = start(rotated).await;
    (a, b, engine)
}

/// Polls `f` until it returns true (replication to another replica takes a watch
/// round trip), at most 5 s.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_answers_and_the_rules_hold_across_replicas() {
    let Some(cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let (a, b, engine) = replicas(&cluster, "/rules/").await;

    // A call created through A is readable through B.
    a.interactions()
        .create_interaction(create_call("call-1"))
        .await
        .unwrap();
    let bi = b.interactions();
    eventually("B sees call-1", || {
        let mut bi = bi.clone();
        async move {
            bi.get_interaction(proto::GetInteractionRequest {
                interaction_id: "call-1".into(),
            })
            .await
            .is_ok()
        }
    })
    .await;
    assert!(
        engine.leg("call-1", "a").is_some(),
        "the call is programmed"
    );

    // Directory writes through either replica are one directory.
    add_supervisor(&a, "sup-1").await;
    add_supervisor(&b, "sup-2").await;

    // Two supervisors race to coach the same agent, one through each replica:
    // exactly one wins, the other is told COACH_ALREADY_ACTIVE.
    let mut sa = a.supervision();
    let mut sb = b.supervision();
    let (ra, rb) = tokio::join!(
        sa.start_coach(supervise("call-1", "s-a", "sup-1", "sup-1-leg", "a", 21000)),
        sb.start_coach(supervise("call-1", "s-b", "sup-2", "sup-2-leg", "a", 21002)),
    );
    let (won, lost) = match (ra, rb) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        (ra, rb) => panic!("exactly one coach must win: {ra:?} / {rb:?}"),
    };
    assert_eq!(lost.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason_of(&lost).0, "COACH_ALREADY_ACTIVE");
    let winner = won.into_inner().supervision.unwrap();
    println!("coach race won by {}", winner.supervisor_user_id);

    // The winner is busy: another call through the other replica refuses them.
    a.interactions()
        .create_interaction(proto::CreateInteractionRequest {
            interaction_id: "call-2".into(),
            ..create_call("call-2")
        })
        .await
        .unwrap();
    let busy_user = winner.supervisor_user_id.clone();
    let other_side = if busy_user == "sup-1" { &b } else { &a };
    let refused = other_side
        .supervision()
        .start_monitor(supervise(
            "call-2", "s-c", &busy_user, "busy-leg", "c", 21004,
        ))
        .await
        .expect_err("a supervisor coaching on call-1 is busy");
    assert_eq!(reason_of(&refused).0, "SUPERVISOR_BUSY");

    // Events of both replicas, through either, in one global order without gaps.
    let mut watch = b
        .interactions()
        .watch_events(proto::WatchEventsRequest {
            after_sequence: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    while let Ok(Ok(Some(e))) =
        tokio::time::timeout(Duration::from_millis(500), watch.message()).await
    {
        seqs.push(e.sequence);
    }
    assert!(seqs.len() >= 6, "create, join, coach events: {seqs:?}");
    let expected: Vec<u64> = (seqs[0]..seqs[0] + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "ordered and gap-free across replicas");

    a.stop().await;
    b.stop().await;
}

/// Many races, so that a lost race that leaked engine state or a double commit would
/// show: each round two replicas start a coach on the same agent at once; exactly one
/// wins; then the winner stops and the next round starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_coaches_through_two_replicas_leave_exactly_one_coach_each_round() {
    let Some(cluster) = EtcdCluster::start(1).await else {
        return;
    };
    let (a, b, engine) = replicas(&cluster, "/races/").await;
    a.interactions()
        .create_interaction(create_call("call-r"))
        .await
        .unwrap();
    add_supervisor(&a, "sup-1").await;
    add_supervisor(&a, "sup-2").await;
    let rounds = 15;
    let mut wins = [0usize; 2];
    for round in 0..rounds {
        let (ida, idb) = (format!("a-{round}"), format!("b-{round}"));
        let mut sa = a.supervision();
        let mut sb = b.supervision();
        let (ra, rb) = tokio::join!(
            sa.start_coach(supervise("call-r", &ida, "sup-1", "leg-1", "a", 21000)),
            sb.start_coach(supervise("call-r", &idb, "sup-2", "leg-2", "a", 21002)),
        );
        let (winner, side) = match (&ra, &rb) {
            (Ok(_), Err(_)) => (ida.clone(), 0),
            (Err(_), Ok(_)) => (idb.clone(), 1),
            _ => panic!("round {round}: exactly one coach must win: {ra:?} / {rb:?}"),
        };
        let lost = ra.err().or(rb.err()).unwrap();
        assert_eq!(reason_of(&lost).0, "COACH_ALREADY_ACTIVE", "round {round}");
        wins[side] += 1;
        // The loser left nothing in the engine: one supervisor leg only.
        let leg_names: Vec<String> = {
            let st = engine.state.lock().unwrap();
            st.legs
                .values()
                .filter(|l| l.session == "call-r")
                .map(|l| l.leg_key.clone())
                .collect()
        };
        assert_eq!(
            leg_names.len(),
            3,
            "round {round}: c, a and one coach: {leg_names:?}"
        );
        a.supervision()
            .stop_supervision(proto::StopSupervisionRequest {
                supervision_id: winner,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    println!("wins by replica: {wins:?} over {rounds} rounds");
    a.stop().await;
    b.stop().await;
}
