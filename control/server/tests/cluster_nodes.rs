//! Engine nodes registered in etcd under leases, placement, DrainNode and the move of
//! a failed node's calls (SPEC section 7), through the control plane's gRPC API. The
//! nodes' engines are fakes (in memory) so that the test is about the control plane;
//! real engines and media are the chaos suite's. Prints `SKIPPED` without etcd.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use earshot_control::cluster::{self, ClusterEngine, Registration};
use earshot_control::placement::NodeInfo;
use earshot_control::proto;
use earshot_engine_api::EngineApi;
use earshot_etcd::Etcd;
use earshot_etcd::testing::EtcdCluster;
use support::{FakeEngine, TestServer, add_supervisor, create_call, reason_of, supervise};

const PREFIX: &str = "/nodes-test/";

struct Nodes {
    engines: BTreeMap<String, Arc<FakeEngine>>,
    leases: BTreeMap<String, Registration>,
}

fn info(id: &str) -> NodeInfo {
    NodeInfo {
        node_id: id.into(),
        engine: format!("fake:{id}"),
        media_address: "127.0.0.1".into(),
        shards: 1,
        capacity_legs: 10_000,
        legs: 0,
        weight: 1.0,
        draining: false,
        addresses: Vec::new(),
        peer: None,
    }
}

async fn nodes(etcd: &Etcd, ids: &[&str]) -> Nodes {
    let mut engines = BTreeMap::new();
    let mut leases = BTreeMap::new();
    for (k, id) in ids.iter().enumerate() {
        // Port ranges apart, so a leg re-created on a survivor keeps its port.
        engines.insert((*id).to_owned(), FakeEngine::new(30_000 + 2_000 * k as u16));
        leases.insert(
            (*id).to_owned(),
            cluster::register(etcd, PREFIX, &info(id), 2).await.unwrap(),
        );
    }
    Nodes { engines, leases }
}

/// Which fake node holds the legs of `session` (all of them: panics if split).
fn node_of_session(nodes: &Nodes, session: &str) -> Option<String> {
    let holders: Vec<&String> = nodes
        .engines
        .iter()
        .filter(|(_, e)| {
            e.state
                .lock()
                .unwrap()
                .legs
                .values()
                .any(|l| l.session == session)
        })
        .map(|(id, _)| id)
        .collect();
    assert!(holders.len() <= 1, "{session} is split over {holders:?}");
    holders.first().map(|s| (*s).clone())
}

async fn control(cluster: &EtcdCluster, nodes: &Nodes, dir: &std::path::Path) -> TestServer {
    let engines = nodes.engines.clone();
    let connect: cluster::Connector = Box::new(move |node: &NodeInfo| {
        let id = node.node_id.clone();
        let engine: Arc<dyn EngineApi> = engines[&id].clone();
        engine
    });
    let router = ClusterEngine::start(
        Etcd::new(&cluster.endpoints()).unwrap(),
        PREFIX,
        connect,
        Arc::new(earshot_control::SystemClock),
    )
    .await
    .unwrap();
    let endpoints = cluster.endpoints();
    let r = Arc::clone(&router);
    TestServer::start_on(dir, router, move |c| {
        c.etcd_endpoints = endpoints;
        c.etcd_prefix = PREFIX.into();
        c.cluster = Some(r);
    })
    .await
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1000 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_live_whole_on_one_node_and_drain_and_failover_move_them_right() {
    let Some(etcd_cluster) = EtcdCluster::start(1).await else {
        return;
    };
    let etcd = Etcd::new(&etcd_cluster.endpoints()).unwrap();
    let mut nodes = nodes(&etcd, &["n1", "n2", "n3"]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = control(&etcd_cluster, &nodes, dir.path()).await;
    let listed = server
        .engine()
        .list_nodes(proto::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.nodes.len(), 3, "every registered node is listed");

    let calls = 30;
    check_placement(&server, &nodes, calls).await;
    check_supervisor_joins_the_call_s_node(&server, &nodes).await;
    check_drain(&server, &nodes, calls).await;
    check_failover(&server, &etcd, &mut nodes, calls + 20).await;
    server.stop().await;
}

/// Placement: every call whole on one node, spread over the nodes.
async fn check_placement(server: &TestServer, nodes: &Nodes, calls: usize) {
    for k in 0..calls {
        server
            .interactions()
            .create_interaction(create_call(&format!("call-{k}")))
            .await
            .unwrap();
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for k in 0..calls {
        let node = node_of_session(nodes, &format!("call-{k}")).expect("placed");
        *per_node.entry(node).or_default() += 1;
    }
    println!("placement of {calls} calls: {per_node:?}");
    assert_eq!(
        per_node.len(),
        3,
        "spread over all three nodes: {per_node:?}"
    );
}

/// A supervisor's leg joins its interaction's node; the response names the node.
async fn check_supervisor_joins_the_call_s_node(server: &TestServer, nodes: &Nodes) {
    add_supervisor(server, "sup-1").await;
    let started = server
        .supervision()
        .start_monitor(supervise("call-0", "s-0", "sup-1", "sup-leg", "a", 25000))
        .await
        .unwrap();
    let _ = started;
    let home = node_of_session(nodes, "call-0").unwrap();
    assert!(nodes.engines[&home].leg("call-0", "sup-leg").is_some());
    let view = server
        .interactions()
        .get_interaction(proto::GetInteractionRequest {
            interaction_id: "call-0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    for p in &view.participants {
        let leg = p.leg.as_ref().expect("a connected participant has a leg");
        assert_eq!(
            leg.node_id, home,
            "{} is served by {home}",
            p.participant_id
        );
    }
}

/// DrainNode: nothing new on the drained node (`calls` more are created); its calls
/// stay.
async fn check_drain(server: &TestServer, nodes: &Nodes, calls: usize) {
    let drained = "n1";
    let before: BTreeSet<String> = (0..calls)
        .map(|k| format!("call-{k}"))
        .filter(|c| node_of_session(nodes, c).as_deref() == Some(drained))
        .collect();
    server
        .engine()
        .drain_node(proto::DrainNodeRequest {
            node_id: drained.into(),
            undrain: false,
        })
        .await
        .unwrap();
    let missing = server
        .engine()
        .drain_node(proto::DrainNodeRequest {
            node_id: "no-such-node".into(),
            undrain: false,
        })
        .await
        .expect_err("an unknown node");
    assert_eq!(reason_of(&missing).0, "NODE_NOT_FOUND");
    // The mark reaches the router through the watch.
    let mut e = server.engine();
    eventually("drain mark seen", || {
        let mut e = e.clone();
        async move {
            e.list_nodes(proto::ListNodesRequest {})
                .await
                .unwrap()
                .into_inner()
                .nodes
                .iter()
                .any(|n| n.node_id == "n1" && n.draining)
        }
    })
    .await;
    let _ = &mut e;
    for k in calls..calls + 20 {
        let id = format!("call-{k}");
        server
            .interactions()
            .create_interaction(create_call(&id))
            .await
            .unwrap();
        assert_ne!(
            node_of_session(nodes, &id).as_deref(),
            Some(drained),
            "{id} placed on a draining node"
        );
    }
    for c in &before {
        assert_eq!(
            node_of_session(nodes, c).as_deref(),
            Some(drained),
            "{c} stayed"
        );
    }
    server
        .engine()
        .drain_node(proto::DrainNodeRequest {
            node_id: drained.into(),
            undrain: true,
        })
        .await
        .unwrap();
}

/// Failover: n2's lease ends (as when it dies); its calls (of `calls`) move to the
/// survivors, each whole, spread, with NODE_FAILED and MEDIA_RESTORED on their
/// timelines.
async fn check_failover(server: &TestServer, etcd: &Etcd, nodes: &mut Nodes, calls: usize) {
    let failed = "n2";
    let on_failed: Vec<String> = (0..calls)
        .map(|k| format!("call-{k}"))
        .filter(|c| node_of_session(nodes, c).as_deref() == Some(failed))
        .collect();
    assert!(!on_failed.is_empty());
    let lease = nodes.leases.remove(failed).unwrap();
    etcd.revoke(lease.lease).await.unwrap();
    drop(lease);
    // The dead node's engine would be gone with it.
    nodes.engines[failed].state.lock().unwrap().legs.clear();
    let dead = nodes.engines.remove(failed).unwrap();
    eventually("every call of the failed node runs on a survivor", || {
        let ok = on_failed
            .iter()
            .all(|c| node_of_session(nodes, c).is_some_and(|n| n != failed));
        async move { ok }
    })
    .await;
    drop(dead);
    let mut moved_to: BTreeMap<String, usize> = BTreeMap::new();
    for c in &on_failed {
        *moved_to
            .entry(node_of_session(nodes, c).unwrap())
            .or_default() += 1;
    }
    println!("{} calls of {failed} moved: {moved_to:?}", on_failed.len());
    if on_failed.len() >= 4 {
        assert_eq!(
            moved_to.len(),
            2,
            "spread over both survivors: {moved_to:?}"
        );
    }
    for c in &on_failed {
        let mut i = server.interactions();
        let c2 = c.clone();
        eventually("NODE_FAILED and MEDIA_RESTORED recorded", || {
            let mut i = i.clone();
            let c = c2.clone();
            async move {
                let tl = i
                    .get_timeline(proto::GetTimelineRequest { interaction_id: c })
                    .await
                    .unwrap()
                    .into_inner();
                let kinds: Vec<i32> = tl.events.iter().map(|e| e.kind).collect();
                kinds.contains(&(proto::EventKind::NodeFailed as i32))
                    && kinds.contains(&(proto::EventKind::MediaRestored as i32))
            }
        })
        .await;
        let _ = &mut i;
        let view = server
            .interactions()
            .get_interaction(proto::GetInteractionRequest {
                interaction_id: c.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let now = node_of_session(nodes, c).unwrap();
        for p in &view.participants {
            assert_eq!(
                p.leg.as_ref().unwrap().node_id,
                now,
                "{c}: the view follows the move"
            );
        }
    }
}

/// The supervision rules hold across replicas and nodes (SPEC 7): two replicas share
/// one etcd and three nodes. A supervisor monitoring a call on one node through one
/// replica is refused a call on another node through the other replica
/// (`SUPERVISOR_BUSY`); an agent coached through one replica cannot get a second coach
/// through the other (`COACH_ALREADY_ACTIVE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_hold_across_replicas_and_nodes() {
    let Some(etcd_cluster) = EtcdCluster::start(1).await else {
        return;
    };
    let etcd = Etcd::new(&etcd_cluster.endpoints()).unwrap();
    let nodes = nodes(&etcd, &["n1", "n2", "n3"]).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = control(&etcd_cluster, &nodes, dir_a.path()).await;
    let b = control(&etcd_cluster, &nodes, dir_b.path()).await;
    // Calls through both replicas until two live on different nodes.
    let mut placed: Vec<(String, String)> = Vec::new();
    for k in 0..12 {
        let id = format!("x-{k}");
        let replica = if k % 2 == 0 { &a } else { &b };
        replica
            .interactions()
            .create_interaction(create_call(&id))
            .await
            .unwrap();
        let node = node_of_session(&nodes, &id).expect("placed");
        placed.push((id, node));
    }
    let (p, p_node) = placed[0].clone();
    let (q, q_node) = placed
        .iter()
        .find(|(_, n)| *n != p_node)
        .cloned()
        .expect("12 calls on three nodes are not all on one");
    for user in ["sup-1", "sup-2", "sup-3"] {
        add_supervisor(&a, user).await;
    }

    a.supervision()
        .start_monitor(supervise(&p, "s-1", "sup-1", "sup-1-leg", "a", 25000))
        .await
        .unwrap();
    let busy = b
        .supervision()
        .start_monitor(supervise(&q, "s-2", "sup-1", "sup-1-leg", "a", 25002))
        .await
        .expect_err("a supervisor busy on one node's call, through the other replica");
    assert_eq!(reason_of(&busy).0, "SUPERVISOR_BUSY");

    b.supervision()
        .start_coach(supervise(&q, "c-1", "sup-2", "sup-2-leg", "a", 25004))
        .await
        .unwrap();
    let second = a
        .supervision()
        .start_coach(supervise(&q, "c-2", "sup-3", "sup-3-leg", "a", 25006))
        .await
        .expect_err("a second coach of the agent, through the other replica");
    assert_eq!(reason_of(&second).0, "COACH_ALREADY_ACTIVE");
    // The legs that were granted live on their calls' nodes; the refused ones nowhere.
    assert!(nodes.engines[&p_node].leg(&p, "sup-1-leg").is_some());
    assert!(nodes.engines[&q_node].leg(&q, "sup-2-leg").is_some());
    for engine in nodes.engines.values() {
        assert!(engine.leg(&q, "sup-1-leg").is_none());
        assert!(engine.leg(&q, "sup-3-leg").is_none());
    }
    a.stop().await;
    b.stop().await;
}
