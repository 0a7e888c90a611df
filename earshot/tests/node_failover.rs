//! Node failover with real processes (SPEC section 7, docs/cluster.md): a real etcd
//! cluster (3 members on loopback), three engine nodes (`earshot-engine` on the socket
//! backend, each with its own `earshot-node` agent and its own block of two virtual
//! addresses), one control replica in cluster mode (`earshot-control --cluster`), and
//! real UDP phones: calls with barging supervisors spread over the nodes. Then one
//! node's engine and agent are killed with SIGKILL while every phone talks (the
//! survivors' agents notice it by its silence on their UDP pings and declare it dead
//! before its lease expires: fast failure detection), or its agent is cut off from
//! etcd while its peers still hear it (the lease path: it fences itself).
//!
//! What must hold, per call of the dead node, measured at the phones:
//! - the call is not dropped and its supervision is not lost: every participant is
//!   still there and every party hears whom it heard before (tones);
//! - every leg comes back on the **same address and port** (the dead node's virtual
//!   address, taken over by a survivor), with the **same SSRC** and a sequence number
//!   that moves forward (by fewer than 1,000), so that a phone that latched on the
//!   address and the stream keeps playing;
//! - the media gap (the longest time a phone received nothing) is reported (p50, p99,
//!   max) and bounded by the lease TTL plus the time to re-create the legs;
//! - the dead node's calls go to more than one survivor, and calls on the other nodes
//!   never stop (gap under a second).
//!
//! Two topologies:
//! - **one host** (the first two tests): every process on this host's loopback, and the
//!   virtual addresses are loopback aliases (all of 127/8 is local on Linux), so what
//!   moves is the claim in etcd and the sockets bound to the address (`IP_FREEBIND`);
//! - **hosts on a LAN** (`a_killed_host_s_addresses_move_to_a_survivor_on_the_lan`,
//!   root): each node on a host of its own (a network namespace joined to a bridge by
//!   a veth pair), with etcd, the control replica and the phones on the LAN's
//!   namespace. The victim's host is killed and taken off the network, and each of its
//!   addresses really moves: the survivor's agent brings it up on its interface
//!   (`--address-device`) and announces it with a gratuitous ARP, and the phones,
//!   which only ever send to the address, reach the survivor.
//!
//! Sizes: `EARSHOT_FAILOVER_CALLS` (default 9; docs/cluster.md has a longer run),
//! `EARSHOT_FAILOVER_BULK_CALLS` (default 0: silent calls that only scale the move),
//! `EARSHOT_FAILOVER_TTL_S` (default 2). `EARSHOT_FAILOVER_LOGS=DIR` keeps every
//! process's log in DIR. Prints SKIPPED where etcd is not installed.

// Real processes and real sockets: waits and arrival stamps use the real clock.
#![allow(clippy::disallowed_methods)]

mod e2e;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::{Api, ChildGuard};
use earshot_control::proto;
use earshot_etcd::testing::EtcdCluster;
use earshot_testkit::endpoint::{PcmuEndpoint, Talk};
use earshot_testkit::fixtures::Role;
use earshot_testkit::netns::{self, Netns};
use earshot_testkit::rtp::Rtp;

const NODES: usize = 3;
/// The lease TTL of the nodes (s): how long after a node dies its calls move. Default
/// 2 s (the agent's default); 1 s (`EARSHOT_FAILOVER_TTL_S=1`, etcd's floor with the
/// test cluster's 500 ms election timeout) halves the gap but lets a node whose
/// renewals are held up 400 ms by a starved CPU fence itself, which a shared CI machine
/// can do.
fn lease_ttl_s() -> u64 {
    std::env::var("EARSHOT_FAILOVER_TTL_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// The agents fence this long before their lease could expire: a quarter of the TTL
/// (renewals go every third of it, so a renewal must be late by more than 40% of the
/// TTL before a live node fences).
fn fence_margin_ms() -> u64 {
    lease_ttl_s() * 250
}
/// How long every phone talks: the whole test.
const TALK_PACKETS: u32 = 1_500;

fn calls() -> usize {
    std::env::var("EARSHOT_FAILOVER_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9)
}

/// Bulk calls (`EARSHOT_FAILOVER_BULK_CALLS`, default 0): plain customer-agent calls
/// whose phones are one silent sink, created before the measured calls. Nothing flows
/// on them, but each is re-created on failover like any other: they measure how the
/// move scales (hundreds of calls on the failed node) without hundreds of real phones
/// on two cores. The measured calls' ids sort after theirs, so the reconciler reaches
/// them last: their gap is the whole move's.
fn bulk_calls() -> usize {
    std::env::var("EARSHOT_FAILOVER_BULK_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Ports per shard: room in every node's own slice for its share of all the calls,
/// and for a dead node's share on top.
fn ports_per_shard() -> usize {
    2_048 + 4 * bulk_calls()
}

/// Where the processes run.
#[derive(Clone, Copy)]
enum Topology<'a> {
    /// Everything on this host's loopback.
    OneHost,
    /// Each node on a host of its own, everything else on the LAN (see [`Lan`]).
    Lan(&'a Lan),
}

impl Topology<'_> {
    /// Node `i`'s block of virtual addresses: four, so that a dead node's calls spread
    /// over the survivors address by address.
    fn block(self, i: usize) -> [IpAddr; 4] {
        match self {
            Topology::OneHost => [1, 2, 3, 4].map(|k| IpAddr::from([127, 0, 20 + i as u8, k])),
            Topology::Lan(_) => {
                [1, 2, 3, 4].map(|k| IpAddr::from([10, 77, 0, 100 + 4 * i as u8 + k]))
            }
        }
    }

    /// Node `i`'s own address (its engine's and its agent's).
    fn node_address(self, i: usize) -> IpAddr {
        match self {
            Topology::OneHost => IpAddr::from([127, 0, 0, 1]),
            Topology::Lan(_) => Lan::host_address(i),
        }
    }

    /// The address of the phones, the etcd proxies and the bulk calls' sink.
    fn caller_address(self) -> IpAddr {
        match self {
            Topology::OneHost => IpAddr::from([127, 0, 0, 1]),
            Topology::Lan(_) => Lan::BRIDGE_ADDRESS,
        }
    }

    /// How node `i` runs `binary args`: directly, or inside its host's namespace.
    fn on_node(self, i: usize, binary: &Path, args: Vec<String>) -> (PathBuf, Vec<String>) {
        match self {
            Topology::OneHost => (binary.to_owned(), args),
            Topology::Lan(lan) => {
                // `ip netns exec` execs the binary, so its pid is the node's process.
                let mut all = vec![
                    "netns".to_string(),
                    "exec".into(),
                    lan.hosts[i].name().into(),
                    binary.display().to_string(),
                ];
                all.extend(args);
                (PathBuf::from("ip"), all)
            }
        }
    }
}

/// A LAN of hosts: namespace `lan` holds a bridge (`br0`, 10.77.0.254/24) and runs
/// etcd, the control replica, the agents' etcd proxies and every phone; node `i`'s host
/// is a namespace of its own joined to the bridge by a veth pair (`eth0`, 10.77.0.11+i),
/// on which its agent brings the virtual addresses it holds up and down. Everything is
/// deleted on drop.
struct Lan {
    lan: Netns,
    hosts: Vec<Netns>,
}

impl Lan {
    const BRIDGE_ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 77, 0, 254));

    fn host_address(i: usize) -> IpAddr {
        IpAddr::from([10, 77, 0, 11 + i as u8])
    }

    /// `tag` keeps the namespaces of two tests of one process apart.
    fn new(tag: &str, n: usize) -> std::io::Result<Lan> {
        let lan = Netns::new("esfo", &format!("{tag}lan"))?;
        lan.ip(&["link", "add", "br0", "type", "bridge"])?;
        lan.ip(&["address", "add", "10.77.0.254/24", "dev", "br0"])?;
        lan.ip(&["link", "set", "br0", "up"])?;
        let mut hosts = Vec::new();
        for i in 0..n {
            let host = Netns::new("esfo", &format!("{tag}host{i}"))?;
            let port = format!("host{i}");
            lan.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host.name(),
            ])?;
            lan.ip(&["link", "set", &port, "master", "br0", "up"])?;
            let own = format!("{}/24", Lan::host_address(i));
            host.ip(&["address", "add", &own, "dev", "eth0"])?;
            host.ip(&["link", "set", "eth0", "up"])?;
            hosts.push(host);
        }
        Ok(Lan { lan, hosts })
    }

    /// The addresses configured on host `i`'s `eth0`.
    fn addresses_of(&self, i: usize) -> Vec<IpAddr> {
        let out = self.hosts[i]
            .ip(&["-o", "-4", "address", "show", "dev", "eth0"])
            .unwrap_or_default();
        out.split_whitespace()
            .filter_map(|w| w.split('/').next()?.parse().ok())
            .collect()
    }
}

/// One engine node: its engine and agent processes.
struct Node {
    id: String,
    engine: ChildGuard,
    agent: ChildGuard,
}

fn start_node(
    topology: Topology<'_>,
    i: usize,
    dir: &Path,
    bins: &Binaries,
    etcd: &[String],
    prefix: &str,
    port_base: u16,
) -> Node {
    let id = format!("node-{i}");
    let socket = dir.join(format!("{id}.sock"));
    let engine_args: Vec<String> = [
        "--backend",
        "socket",
        "--socket",
        &socket.display().to_string(),
        "--programmers",
        "2",
        "--port-base",
        &port_base.to_string(),
        "--ports-per-shard",
        &ports_per_shard().to_string(),
        "--port-slice",
        &format!("{i}/{NODES}"),
        "--bind-v4",
        &topology.node_address(i).to_string(),
        "--no-pin",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let (program, args) = topology.on_node(i, &bins.engine, engine_args);
    let mut engine = ChildGuard::spawn(
        &format!("engine {id}"),
        &program,
        &args,
        &dir.join(format!("{id}-engine.log")),
    );
    e2e::wait_until_accepting(&mut engine, &socket);
    let addresses: Vec<String> = topology.block(i).iter().map(ToString::to_string).collect();
    let mut agent_args: Vec<String> = [
        "--etcd",
        &etcd.join(","),
        "--etcd-prefix",
        prefix,
        "--node-id",
        &id,
        "--engine-socket",
        &socket.display().to_string(),
        "--address",
        &addresses.join(","),
        "--lease-ttl",
        &lease_ttl_s().to_string(),
        "--report-interval-ms",
        "1000",
        "--fence-margin-ms",
        &fence_margin_ms().to_string(),
        "--media-address",
        &topology.node_address(i).to_string(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    if let Topology::Lan(_) = topology {
        agent_args.extend(["--address-device".to_string(), "eth0".into()]);
    }
    let (program, args) = topology.on_node(i, &bins.node, agent_args);
    let agent = ChildGuard::spawn(
        &format!("agent {id}"),
        &program,
        &args,
        &dir.join(format!("{id}-agent.log")),
    );
    Node { id, engine, agent }
}

struct Binaries {
    engine: PathBuf,
    control: PathBuf,
    node: PathBuf,
}

/// One call: a customer and an agent phone, and a barging supervisor's phone.
struct Call {
    id: String,
    phones: BTreeMap<&'static str, PcmuEndpoint>,
    /// Each participant's leg address, as the engine first gave it.
    locals: BTreeMap<String, SocketAddr>,
    node: String,
}

fn participant_locals(inter: &proto::Interaction) -> BTreeMap<String, SocketAddr> {
    inter
        .participants
        .iter()
        .filter(|p| p.leg.is_some())
        .map(|p| (p.participant_id.clone(), e2e::leg_local(p.leg.as_ref())))
        .collect()
}

fn nodes_of(inter: &proto::Interaction) -> Vec<String> {
    let mut v: Vec<String> = inter
        .participants
        .iter()
        .filter_map(|p| p.leg.as_ref().map(|l| l.node_id.clone()))
        .collect();
    v.sort();
    v.dedup();
    v
}

async fn wait_nodes(api: &Api, n: usize, nodes: &mut [Node]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = api
            .engine()
            .list_nodes(proto::ListNodesRequest {})
            .await
            .map(|r| r.into_inner().nodes.len())
            .unwrap_or(0);
        if listed == n {
            return;
        }
        for node in nodes.iter_mut() {
            node.engine.assert_running();
            node.agent.assert_running();
        }
        assert!(
            Instant::now() < deadline,
            "{listed} of {n} nodes registered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The RTP packets `phone` received from `from`, with their arrival times.
fn stream_from(phone: &PcmuEndpoint, from: SocketAddr) -> Vec<(Instant, Rtp)> {
    phone
        .received()
        .into_iter()
        .filter(|a| a.from == from)
        .filter_map(|a| Rtp::parse(&a.bytes).map(|r| (a.at, r)))
        .collect()
}

/// The longest time between two packets `phone` received in `window`.
fn longest_gap(phone: &PcmuEndpoint, window: &std::ops::Range<Instant>) -> Duration {
    let times: Vec<Instant> = phone.received_in(window).iter().map(|a| a.at).collect();
    let mut gap = times
        .first()
        .map_or(window.end - window.start, |t| *t - window.start);
    for w in times.windows(2) {
        gap = gap.max(w[1] - w[0]);
    }
    gap.max(times.last().map_or(Duration::ZERO, |t| window.end - *t))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The running cluster and its calls.
struct Harness {
    _sink: std::net::UdpSocket,
    _serial: tokio::sync::MutexGuard<'static, ()>,
    _etcd: EtcdCluster,
    _tmp: tempfile::TempDir,
    nodes: Vec<Node>,
    /// Each node's proxies to the etcd members: (node index, proxy).
    proxies: Vec<(usize, Proxy)>,
    control: ChildGuard,
    api: Api,
    calls: Vec<Call>,
}

/// A TCP proxy to one etcd member that can be cut: every connection through it is
/// closed and new ones are refused (a node partitioned from etcd, still reachable by
/// its callers).
struct Proxy {
    addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    /// A proxy to `member` listening on `ip` (any port).
    async fn start(member: &str, ip: IpAddr) -> Proxy {
        let target: SocketAddr = member
            .trim_start_matches("http://")
            .parse()
            .expect("an http://ip:port etcd endpoint");
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *watch.borrow() {
                    continue;
                }
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Proxy { addr, cut }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn cut(&self) {
        let _ = self.cut.send(true);
    }
}

/// Starts etcd, the nodes, the control replica and the calls, and lets them talk for
/// 2 s; `None` (with the reason printed) where etcd or a binary is missing.
async fn start_cluster(topology: Topology<'_>) -> Option<Harness> {
    // One cluster at a time: two would share the 2-core machine and measure each other.
    let serial = SERIAL.lock().await;
    let etcd = EtcdCluster::start(3).await?;
    let engine = e2e::engine_binary()?;
    let bins = Binaries {
        engine,
        control: e2e::control_binary(),
        node: e2e::node_binary(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = match std::env::var_os("EARSHOT_FAILOVER_LOGS") {
        Some(keep) => {
            let keep = PathBuf::from(keep);
            std::fs::create_dir_all(&keep).unwrap();
            keep
        }
        None => tmp.path().to_owned(),
    };
    let dir = dir.as_path();
    let prefix = "/failover/";
    let endpoints = etcd.endpoints();
    let port_base = e2e::free_port_base();
    // Each agent reaches etcd through proxies of its own, which a test can cut.
    let mut proxies = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..NODES {
        let mut via = Vec::new();
        for member in &endpoints {
            let proxy = Proxy::start(member, topology.caller_address()).await;
            via.push(proxy.url());
            proxies.push((i, proxy));
        }
        nodes.push(start_node(topology, i, dir, &bins, &via, prefix, port_base));
    }

    let grpc: SocketAddr = ([127, 0, 0, 1], e2e::free_tcp_port()).into();
    let control_args: Vec<String> = [
        "--grpc",
        &grpc.to_string(),
        "--etcd",
        &endpoints.join(","),
        "--etcd-prefix",
        prefix,
        "--cluster",
        "--data-dir",
        &dir.join("control").display().to_string(),
        "--metrics",
        "off",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let mut control = ChildGuard::spawn(
        "earshot-control",
        &bins.control,
        &control_args,
        &dir.join("control.log"),
    );
    let api = Api {
        channel: e2e::connect_when_serving(grpc, &mut control).await,
    };
    wait_nodes(&api, NODES, &mut nodes).await;
    // Every node holds its own addresses before calls are placed on them.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sink = create_bulk_calls(&api, &control, topology).await;
    let all = place_calls(&api, &control, topology).await;
    // Everyone talks for the whole test (the talk threads end on their own).
    for call in &all {
        for (key, role) in [
            ("c", Role::Customer),
            ("a", Role::Agent),
            ("s", Role::Supervisor),
        ] {
            let to = call.locals[key];
            drop(call.phones[key].talk(to, Talk::tone(role.tone(), TALK_PACKETS)));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    Some(Harness {
        _sink: sink,
        _serial: serial,
        _etcd: etcd,
        _tmp: tmp,
        nodes,
        proxies,
        control,
        api,
        calls: all,
    })
}

/// The bulk calls (see [`bulk_calls`]), all to one sink that reads nothing (returned:
/// it must live as long as the calls).
async fn create_bulk_calls(
    api: &Api,
    control: &ChildGuard,
    topology: Topology<'_>,
) -> std::net::UdpSocket {
    let sink = std::net::UdpSocket::bind((topology.caller_address(), 0)).unwrap();
    let sink_addr = sink.local_addr().unwrap();
    for k in 0..bulk_calls() {
        let agent_user = format!("bulk-agent-{k}");
        api.user(&agent_user, &[], proto::Presence::Available).await;
        use proto::{ParticipantKind as K, Role as R};
        api.interactions()
            .create_interaction(proto::CreateInteractionRequest {
                interaction_id: format!("bulk-{k:05}"),
                participants: vec![
                    e2e::spec("c", K::External, R::Customer, "", sink_addr),
                    e2e::spec("a", K::Internal, R::Agent, &agent_user, sink_addr),
                ],
                actor: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("create bulk-{k}: {e:?}\n{}", control.log_tail()));
    }

    sink
}

/// The measured calls, each with a barging supervisor (everyone hears everyone), each
/// whole on one node and bound to a node's virtual address.
async fn place_calls(api: &Api, control: &ChildGuard, topology: Topology<'_>) -> Vec<Call> {
    let n = calls();
    let mut all: Vec<Call> = Vec::new();
    for k in 0..n {
        let id = format!("call-{k}");
        let agent_user = format!("agent-{k}");
        let sup_user = format!("sup-{k}");
        api.user(&agent_user, &[], proto::Presence::Available).await;
        api.user(&sup_user, &e2e::ALL_PERMISSIONS, proto::Presence::Available)
            .await;
        let mut phones = BTreeMap::new();
        for (key, ssrc) in [("c", 1), ("a", 2), ("s", 3)] {
            let ssrc = 0x0100_0000 * ssrc + k as u32;
            let at = SocketAddr::new(topology.caller_address(), 0);
            phones.insert(key, PcmuEndpoint::bind(at, ssrc).unwrap());
        }
        use proto::{ParticipantKind as K, Role as R};
        let inter = api
            .interactions()
            .create_interaction(proto::CreateInteractionRequest {
                interaction_id: id.clone(),
                participants: vec![
                    e2e::spec("c", K::External, R::Customer, "", phones["c"].addr()),
                    e2e::spec("a", K::Internal, R::Agent, &agent_user, phones["a"].addr()),
                ],
                actor: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("create {id}: {e:?}\n{}", control.log_tail()))
            .into_inner()
            .interaction
            .expect("interaction");
        api.start(
            proto::SupervisionMode::Barge,
            e2e::supervise(
                &id,
                &format!("barge-{k}"),
                &sup_user,
                "s",
                "a",
                phones["s"].addr(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("barge {id}: {e:?}"));
        let inter = api.interaction(&inter.interaction_id).await;
        let on = nodes_of(&inter);
        assert_eq!(on.len(), 1, "{id} lives on one node: {on:?}");
        let locals = participant_locals(&inter);
        for (p, local) in &locals {
            assert!(
                (0..NODES).any(|i| topology.block(i).contains(&local.ip())),
                "{id}/{p} binds {local}, not a node's virtual address"
            );
        }
        all.push(Call {
            id,
            phones,
            locals,
            node: on[0].clone(),
        });
    }
    all
}

/// The node with the most calls.
fn busiest(h: &Harness) -> String {
    // The victim: the node with the most calls.
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for call in &h.calls {
        *per_node.entry(call.node.as_str()).or_default() += 1;
    }
    let victim = per_node
        .iter()
        .max_by_key(|(_, c)| **c)
        .map(|(id, _)| id.to_string())
        .expect("calls were placed");
    println!("calls per node before the failure: {per_node:?}; failing {victim}");
    victim
}

/// After `victim` failed at `before_kill` (`how`: what happened to it): every call is
/// whole on a survivor, on the same addresses, with the same streams, and the gaps are
/// bounded and reported.
async fn check_failover(h: Harness, victim: &str, before_kill: Instant, how: &str) {
    let Harness {
        control,
        api,
        calls: all,
        ..
    } = h;
    let moved: Vec<&Call> = all.iter().filter(|c| c.node == victim).collect();
    wait_until_moved_and_heard(&api, &control, &moved, victim, before_kill).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let end = Instant::now();
    let survivors_used = check_calls_whole(&api, &all, victim, end).await;
    if moved.len() >= 4 {
        assert!(
            survivors_used.len() >= 2,
            "{} moved calls all went to {survivors_used:?}",
            moved.len()
        );
    }
    let mut gaps = check_streams_continue(&moved, before_kill, end);
    // The other calls never stop.
    let mut others = Vec::new();
    for call in all.iter().filter(|c| c.node != victim) {
        for phone in call.phones.values() {
            others.push(longest_gap(phone, &(before_kill..end)));
        }
    }
    gaps.sort();
    others.sort();
    println!(
        "{how} of {victim} ({} calls, to {survivors_used:?}, lease TTL {} s): \
         media gap p50 {:?} p99 {:?} max {:?}; other calls' longest gap {:?}",
        moved.len(),
        lease_ttl_s(),
        percentile(&gaps, 0.5),
        percentile(&gaps, 0.99),
        gaps.last().copied().unwrap_or_default(),
        others.last().copied().unwrap_or_default()
    );
    let bound = Duration::from_secs(lease_ttl_s() + 3);
    assert!(
        gaps.last().copied().unwrap_or_default() < bound,
        "a media gap over {bound:?}: {gaps:?}"
    );
    assert!(
        others.last().copied().unwrap_or_default() < Duration::from_secs(1),
        "a call on a surviving node stopped: {others:?}"
    );

    check_timelines(&api, &moved).await;
    check_bulk_calls_whole(&api, victim).await;
}

/// Every bulk call (those the failed node held among them) lives on, whole, on one
/// surviving node: none was dropped by the move.
async fn check_bulk_calls_whole(api: &Api, victim: &str) {
    for k in 0..bulk_calls() {
        let id = format!("bulk-{k:05}");
        let inter = api.interaction(&id).await;
        let on = nodes_of(&inter);
        let legs = inter
            .participants
            .iter()
            .filter(|p| p.leg.is_some())
            .count();
        assert!(
            on.len() == 1 && on[0] != victim && legs == 2,
            "{id} after the failover: legs {legs} on {on:?} (victim {victim})"
        );
    }
}

/// Until the control plane says every moved call lives elsewhere (a node cut off from
/// etcd goes on sending until it fences, so packets alone prove nothing yet), then
/// until every phone of the moved calls hears again: at most 20 s (plus time for bulk
/// calls).
async fn wait_until_moved_and_heard(
    api: &Api,
    control: &ChildGuard,
    moved: &[&Call],
    victim: &str,
    before_kill: Instant,
) {
    let deadline = before_kill + Duration::from_secs(20 + bulk_calls() as u64 / 50);
    loop {
        let mut elsewhere = true;
        for call in moved {
            let on = nodes_of(&api.interaction(&call.id).await);
            elsewhere &= !on.is_empty() && on.iter().all(|n| n != victim);
        }
        if elsewhere {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead node's calls were not moved within 20 s; control log:\n{}",
            control.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved_at = Instant::now();
    loop {
        let now = Instant::now();
        // Only packets sent after the move, and after the kill (in flight at the
        // kill: under 100 ms).
        let recent = (now - Duration::from_millis(200))
            .max(before_kill + Duration::from_millis(100))
            .max(moved_at)..now;
        let back = moved.iter().all(|c| {
            c.phones
                .values()
                .all(|p| !p.received_in(&recent).is_empty())
        });
        if back {
            break;
        }
        assert!(
            now < deadline,
            "the dead node's calls did not come back within 20 s; control log:\n{}",
            control.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Per call: not dropped, same addresses, on a survivor, supervision active,
/// who-hears-whom intact over the last second before `end`. Returns the survivors the
/// failed node's calls went to.
async fn check_calls_whole(api: &Api, all: &[Call], victim: &str, end: Instant) -> Vec<String> {
    let steady = (end - Duration::from_millis(1000))..end;
    let mut survivors_used: Vec<String> = Vec::new();
    for call in all {
        let inter = api.interaction(&call.id).await;
        assert_eq!(
            participant_locals(&inter),
            call.locals,
            "{}: legs moved to other addresses",
            call.id
        );
        let on = nodes_of(&inter);
        assert_eq!(on.len(), 1, "{} lives on one node: {on:?}", call.id);
        assert_ne!(on[0], victim, "{} still on the dead node", call.id);
        if call.node == victim {
            survivors_used.push(on[0].clone());
        }
        let sup = api
            .supervision()
            .get_supervision(proto::GetSupervisionRequest {
                supervision_id: format!("barge-{}", &call.id[5..]),
            })
            .await
            .unwrap_or_else(|e| panic!("{}: supervision lost: {e:?}", call.id))
            .into_inner();
        assert_eq!(
            sup.state,
            proto::SupervisionState::Active as i32,
            "{}: supervision not active after the failure",
            call.id
        );
        for (listener, sources) in [
            ("c", [Role::Agent, Role::Supervisor]),
            ("a", [Role::Customer, Role::Supervisor]),
            ("s", [Role::Customer, Role::Agent]),
        ] {
            for source in sources {
                // Present in most frames (a plan lost after the move would leave it
                // out of every frame; a loaded machine drops the odd frame).
                let report = call.phones[listener].tone_report(source.tone_hz(), &steady);
                assert!(
                    report.windows >= 20 && report.detected * 4 >= report.windows * 3,
                    "{}: {listener} does not hear {source:?} after the failure ({report:?})",
                    call.id,
                );
            }
        }
    }
    survivors_used.sort();
    survivors_used.dedup();
    survivors_used
}

/// Per phone of a moved call: the same stream (SSRC, sequence moving on) from the same
/// address, and nothing from anywhere else. Returns each phone's longest gap.
fn check_streams_continue(moved: &[&Call], before_kill: Instant, end: Instant) -> Vec<Duration> {
    let mut gaps = Vec::new();
    for call in moved {
        for (key, phone) in &call.phones {
            let local = call.locals[*key];
            let stream = stream_from(phone, local);
            let before: Vec<&(Instant, Rtp)> =
                stream.iter().filter(|(at, _)| *at < before_kill).collect();
            let after: Vec<&(Instant, Rtp)> =
                stream.iter().filter(|(at, _)| *at >= before_kill).collect();
            let (Some((_, last)), Some((_, first))) =
                (before.last(), after.last().and(after.first()))
            else {
                panic!("{}/{key}: no packets from {local} before or after", call.id);
            };
            // Packets still in flight at the kill count as before.
            let resumed = after
                .iter()
                .find(|(_, r)| r.seq.wrapping_sub(last.seq) > 3 || r.ssrc != last.ssrc)
                .map_or(first, |(_, r)| r);
            assert_eq!(
                resumed.ssrc, last.ssrc,
                "{}/{key}: a new SSRC after the failover",
                call.id
            );
            let jump = resumed.seq.wrapping_sub(last.seq);
            assert!(
                (1..1000).contains(&jump),
                "{}/{key}: sequence {} -> {} (jump {jump})",
                call.id,
                last.seq,
                resumed.seq
            );
            let foreign = phone
                .received()
                .iter()
                .filter(|a| a.at >= before_kill && a.from != local)
                .count();
            assert_eq!(
                foreign, 0,
                "{}/{key}: {foreign} packets from another address",
                call.id
            );
            gaps.push(longest_gap(phone, &(before_kill..end)));
        }
    }
    gaps
}

/// The timeline of every moved call says what happened.
async fn check_timelines(api: &Api, moved: &[&Call]) {
    for call in moved {
        let timeline = api
            .interactions()
            .get_timeline(proto::GetTimelineRequest {
                interaction_id: call.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let restored = timeline
            .events
            .iter()
            .any(|e| e.kind == proto::EventKind::MediaRestored as i32);
        assert!(restored, "{}: no MEDIA_RESTORED on the timeline", call.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_calls_continue_on_survivors_on_the_same_address_and_stream() {
    kill_the_busiest_node(Topology::OneHost).await;
}

/// The same failure with every node on a host of its own (see [`Lan`]): the victim's
/// engine and agent are killed and its host leaves the network (its link goes down, so
/// nothing there answers ARP for its addresses any more). Each of its addresses must
/// come up on a survivor's interface, and the phones on the LAN, which keep sending to
/// the same address, must reach the survivor (the gratuitous ARP moved it).
#[test]
fn a_killed_host_s_addresses_move_to_a_survivor_on_the_lan() {
    on_the_lan(
        "a_killed_host_s_addresses_move_to_a_survivor_on_the_lan",
        Failure::Kill,
    );
}

/// How the busiest node fails.
#[derive(Clone, Copy)]
enum Failure {
    /// [`kill_the_busiest_node`].
    Kill,
    /// [`cut_the_busiest_node_off_etcd`].
    CutOffEtcd,
}

/// Runs `failure` on a LAN of hosts built for it (root and `arping` needed, else the
/// test named `name` says why it skips).
fn on_the_lan(name: &str, failure: Failure) {
    if !netns::require_root(name) || !netns::require_tool(name, "arping") {
        return;
    }
    // Two tests of one process must not share namespace names.
    let tag = match failure {
        Failure::Kill => "k",
        Failure::CutOffEtcd => "p",
    };
    let lan = Lan::new(tag, NODES).expect("the LAN's namespaces");
    // Runtime threads start inside the LAN's namespace, so every socket the test opens
    // (gRPC, proxies, phones) and every process it spawns is on the LAN.
    lan.lan.run(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let topology = Topology::Lan(&lan);
        match failure {
            Failure::Kill => runtime.block_on(kill_the_busiest_node(topology)),
            Failure::CutOffEtcd => runtime.block_on(cut_the_busiest_node_off_etcd(topology)),
        }
    });
}

/// SIGKILLs the engine and agent of the node with the most calls (and takes its host
/// off the LAN), waits until a survivor declares it dead, and checks the failover.
async fn kill_the_busiest_node(topology: Topology<'_>) {
    let Some(mut h) = start_cluster(topology).await else {
        return;
    };
    let victim = busiest(&h);
    let index = h.nodes.iter().position(|n| n.id == victim).expect("victim");
    let before_kill = Instant::now();
    let v = &mut h.nodes[index];
    v.engine.kill9();
    v.agent.kill9();
    if let Topology::Lan(lan) = topology {
        lan.hosts[index]
            .ip(&["link", "set", "eth0", "down"])
            .expect("the victim's host leaves the LAN");
    }
    // Fast failure detection (docs/cluster.md): the survivors' agents stop hearing
    // the victim's pings, declare it dead and hand its addresses over, well before its
    // lease would expire.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !h
        .nodes
        .iter()
        .filter(|n| n.id != victim)
        .any(|n| n.agent.log_tail().contains("peer declared dead"))
    {
        assert!(
            Instant::now() < deadline,
            "no survivor declared {victim} dead"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = moved_addresses(&h, &victim);
    check_failover(h, &victim, before_kill, "SIGKILL").await;
    if let Topology::Lan(lan) = topology {
        // The phones heard the moved calls again (checked above) only because each
        // address now lives on a survivor's interface (the dead host, off the link,
        // still has them configured: nobody runs there).
        check_addresses_moved(lan, index, &moved, false);
    }
}

/// A node cut off from etcd but not from its callers fences itself (its agent stops
/// every session before its lease can expire), so the survivors can bind its addresses
/// and ports: had it gone on sending, the re-created legs could not bind them (on one
/// host two sockets cannot hold one address and port) and the checks of the same
/// address would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_etcd_fences_itself_and_its_calls_move() {
    cut_the_busiest_node_off_etcd(Topology::OneHost).await;
}

/// The same partition on a LAN of hosts: the cut-off host stays on the link, so it must
/// also take its addresses down when it fences; had it kept one, two hosts would
/// answer ARP for it and the phones' packets could go to either.
#[test]
fn a_host_cut_off_from_etcd_gives_its_addresses_up_on_the_lan() {
    on_the_lan(
        "a_host_cut_off_from_etcd_gives_its_addresses_up_on_the_lan",
        Failure::CutOffEtcd,
    );
}

/// Cuts the agent of the node with the most calls off etcd (its engine and its callers
/// still reach each other), waits until it fences, and checks the failover.
async fn cut_the_busiest_node_off_etcd(topology: Topology<'_>) {
    let Some(mut h) = start_cluster(topology).await else {
        return;
    };
    let victim = busiest(&h);
    let index = h.nodes.iter().position(|n| n.id == victim).expect("victim");
    let before_cut = Instant::now();
    for (i, proxy) in &h.proxies {
        if *i == index {
            proxy.cut();
        }
    }
    check_failover_fenced(&mut h, index).await;
    let moved = moved_addresses(&h, &victim);
    check_failover(h, &victim, before_cut, "partition from etcd").await;
    if let Topology::Lan(lan) = topology {
        check_addresses_moved(lan, index, &moved, true);
    }
}

/// The addresses of `victim`'s calls' legs.
fn moved_addresses(h: &Harness, victim: &str) -> Vec<IpAddr> {
    h.calls
        .iter()
        .filter(|c| c.node == victim)
        .flat_map(|c| c.locals.values().map(SocketAddr::ip))
        .collect()
}

/// Each of `moved` is up on exactly one survivor, and (if `gave_up`: the failed host
/// `index` still runs) no longer on the failed host.
fn check_addresses_moved(lan: &Lan, index: usize, moved: &[IpAddr], gave_up: bool) {
    for address in moved {
        let on: Vec<usize> = (0..NODES)
            .filter(|&i| (gave_up || i != index) && lan.addresses_of(i).contains(address))
            .collect();
        assert!(
            on.len() == 1 && on[0] != index,
            "{address} of host {index} is up on hosts {on:?}: not on exactly one survivor"
        );
    }
}

/// Waits (at most 10 s) until the cut-off node's agent says it fenced, and checks its
/// engine process still runs: the node was cut off, not killed.
async fn check_failover_fenced(h: &mut Harness, index: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let node = &mut h.nodes[index];
        node.engine.assert_running();
        if node.agent.log_tail().contains("fenced") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never fenced:\n{}",
            node.id,
            node.agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
