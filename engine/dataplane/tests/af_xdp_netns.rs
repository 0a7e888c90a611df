//! The AF_XDP backend end to end: a real engine on one end of a veth pair, the test
//! kit's PCMU endpoints in another network namespace on the other end.
//!
//! One 3-party session per address family runs for a few seconds of 20 ms PCMU while
//! its plan switches live from monitor to barge; each peer must receive valid RTP from
//! its own leg's local port with continuous sequence numbers and hear exactly the tones
//! its mode lets it hear, while ping, TCP and UDP outside the engine's port range keep
//! reaching the engine host's kernel. After the engine stops, the program is detached
//! and the engine's ports reach the kernel again.
//!
//! Needs root (CAP_NET_ADMIN, CAP_BPF, CAP_IPC_LOCK), `ip` and `ping`; otherwise it
//! prints SKIPPED with the reason and passes. The kit's guards delete the namespaces on
//! drop, even when an assertion fails.
#![cfg(target_os = "linux")]
// A real network is paced and waited on in real time.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::ops::Range;
use std::time::{Duration, Instant};

use earshot_afxdp::XskConfig;
use earshot_engine::backend::af_xdp::{AfXdpConfig, AfXdpShared};
use earshot_engine::backend::{Backend, Factory};
use earshot_engine::config::{BackendKind, EngineConfig};
use earshot_engine::engine::Engine;
use earshot_engine::server::block_on;
use earshot_engine_api::{IpFamily, LegId, LegInfo, Request, Response};
use earshot_testkit::endpoint::{PcmuEndpoint, Talk};
use earshot_testkit::fixtures::{Role, Supervision, pcmu_media};
use earshot_testkit::handler::Echo;
use earshot_testkit::netns::{VethConfig, VethPair, require_root, require_tool};
use earshot_testkit::program::{add_leg, set_plan};
use earshot_testkit::rtp::Rtp;

const PORT_BASE: u16 = 40960;
const PORTS_PER_SHARD: u32 = 1024;
/// Packets each peer sends per phase (20 ms apart: 1.2 s of audio).
const PACKETS_PER_PHASE: u32 = 60;
/// Time at the start of each phase whose audio is ignored (neighbour resolution,
/// jitter buffer fill and the plan switch settle).
const SETTLE: Duration = Duration::from_millis(200);

/// The supervision modes the test switches through, in order, live on the same legs.
const PHASES: [Supervision; 2] = [Supervision::Monitor, Supervision::Barge];

/// The engine's namespace (`ve`, 10.78.0.1 and fd4e::1) and the peers' (`vp`,
/// 10.78.0.2 and fd4e::2), joined by a veth pair with `queues` queues per end.
fn veth(tag: &str, queues: u32) -> VethPair {
    VethPair::new(
        tag,
        VethConfig {
            prefix_a: "exe",
            prefix_b: "exp",
            queues,
            ..VethConfig::dual(78)
        },
    )
    .expect("veth pair")
}

fn engine_config(net: &VethPair) -> EngineConfig {
    EngineConfig {
        shards: 1,
        pin: false,
        port_base: PORT_BASE,
        ports_per_shard: PORTS_PER_SHARD,
        bind_v4: Some(net.v4_a()),
        bind_v6: net.cfg.v6.map(|(a, _)| a),
        backend: BackendKind::AfXdp,
        fallback: false,
        interface: Some(net.cfg.dev_a.into()),
        max_legs_per_shard: 64,
        max_sessions_per_shard: 16,
        seed: 7,
        ..EngineConfig::default()
    }
}

fn request(engine: &Engine, req: Request) -> Response {
    block_on(engine.handle().request(req)).expect("engine request")
}

/// Allocates and configures one leg per remote (parties C, A, S) in `session`, with no
/// plan yet.
fn allocate_legs(
    engine: &Engine,
    session: &str,
    family: IpFamily,
    remotes: &[SocketAddr],
) -> Vec<LegInfo> {
    let mut call = |r| block_on(engine.handle().request(r));
    (0..remotes.len())
        .map(|i| {
            add_leg(
                &mut call,
                session,
                &format!("p{i}"),
                family,
                pcmu_media(Some(remotes[i])),
            )
            .expect("leg allocated and configured")
        })
        .collect()
}

/// Kernel traffic on the engine's interface while (or after) the engine runs: ping, TCP
/// and UDP outside the port range from the peer namespace to the engine host. The
/// calling thread is in the engine's namespace.
fn check_kernel_traffic(net: &VethPair, udp_port: u16) {
    let engine_ip = net.v4_a();
    let udp = UdpSocket::bind((engine_ip, udp_port)).expect("kernel UDP socket");
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let tcp = TcpListener::bind((engine_ip, 0)).expect("kernel TCP listener");
    let tcp_port = tcp.local_addr().unwrap().port();
    // The kernel completes the handshake before accept(): the client runs to its end
    // first, so a failed connect fails the test instead of blocking accept() forever.
    net.b.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(b"kernel-udp", (engine_ip, udp_port)).unwrap();
        let mut c =
            TcpStream::connect((engine_ip, tcp_port)).expect("TCP connect to the engine host");
        c.write_all(b"kernel-tcp").unwrap();
    });
    let mut buf = [0u8; 64];
    let (n, _) = udp
        .recv_from(&mut buf)
        .expect("UDP outside the range reaches the kernel");
    assert_eq!(&buf[..n], b"kernel-udp");
    let (mut conn, _) = tcp.accept().expect("TCP accept");
    let mut got = Vec::new();
    conn.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"kernel-tcp");
    let ping = net
        .b
        .command("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "1", &engine_ip.to_string()])
        .output()
        .expect("ping");
    assert!(ping.status.success(), "ping to the engine host: {ping:?}");
}

#[test]
fn monitor_then_barge_over_af_xdp_on_veth_hear_the_right_tones_both_families_and_spare_kernel_traffic()
 {
    let test = "af_xdp_netns::monitor_then_barge";
    if !require_root(test) || !require_tool(test, "ping") {
        return;
    }
    let net = veth("barge", 1);
    net.a.enter().expect("enter the engine namespace");
    let cfg = engine_config(&net);
    let mut factory = Factory::new(&cfg).expect("factory");
    let engine = Engine::start(&cfg, |i| factory.open(i)).expect("engine starts on AF_XDP");
    assert_eq!(engine.handle().backend_name(), "af_xdp");
    assert!(
        net.xdp_attached_a().unwrap(),
        "the XDP program is attached while the engine runs"
    );

    // Parties C, A, S on IPv4, then C, A, S on IPv6, all in the peers' namespace.
    let eps: Vec<PcmuEndpoint> = [false, true]
        .into_iter()
        .flat_map(|v6| Role::ALL.map(move |who| (v6, who)))
        .enumerate()
        .map(|(i, (v6, _))| {
            let ip = net.addr_b(v6).expect("both families");
            net.b
                .run(|| PcmuEndpoint::bind(SocketAddr::new(ip, 0), 0x1000 + i as u32))
                .expect("peer endpoint")
        })
        .collect();
    let remotes: Vec<SocketAddr> = eps.iter().map(PcmuEndpoint::addr).collect();
    let sessions = [
        (
            "s-v4",
            allocate_legs(&engine, "s-v4", IpFamily::V4, &remotes[..3]),
        ),
        (
            "s-v6",
            allocate_legs(&engine, "s-v6", IpFamily::V6, &remotes[3..]),
        ),
    ];
    let locals: Vec<SocketAddr> = sessions
        .iter()
        .flat_map(|(_, legs)| legs.iter().map(|l| l.local))
        .collect();
    for (i, l) in locals.iter().enumerate() {
        assert_eq!(Some(l.ip()), net.addr_a(i >= 3));
        assert!((PORT_BASE..PORT_BASE + PORTS_PER_SHARD as u16).contains(&l.port()));
    }

    let mut windows: Vec<Range<Instant>> = Vec::new();
    for (p, phase) in PHASES.iter().enumerate() {
        for (session, legs) in &sessions {
            let ids: Vec<LegId> = legs.iter().map(|l| l.leg).collect();
            set_plan(
                &mut |r| block_on(engine.handle().request(r)),
                phase.plan(session, &ids, false),
            )
            .expect("plan applied");
        }
        let start = Instant::now();
        let talkers: Vec<_> = eps
            .iter()
            .enumerate()
            .map(|(i, ep)| {
                let who = Role::ALL[i % 3];
                ep.talk(locals[i], Talk::tone(who.tone(), PACKETS_PER_PHASE))
            })
            .collect();
        if p == 0 {
            // While the media flows: the host's own traffic on the same interface works.
            check_kernel_traffic(&net, 9999);
        }
        for t in talkers {
            assert_eq!(t.join().expect("talker"), PACKETS_PER_PHASE);
        }
        windows.push(start + SETTLE..Instant::now());
    }
    // The engine's jitter buffer holds a few frames: let the tail arrive (not analysed).
    std::thread::sleep(Duration::from_millis(300));

    let mut failures = Vec::new();
    for (i, ep) in eps.iter().enumerate() {
        let listener = Role::ALL[i % 3];
        let family = if i < 3 { "v4" } else { "v6" };
        let summary = ep.stream_summary(locals[i]);
        println!("leg {i} {family} {listener:?} ({}): {summary:?}", locals[i]);
        assert_eq!(
            summary.from_other, 0,
            "leg {i}: RTP from another address than its leg's: {summary:?}"
        );
        let audio = ep
            .received()
            .iter()
            .filter_map(|a| Rtp::parse(&a.bytes))
            .all(|r| r.payload_type == 0 && r.payload.len() == 160);
        assert!(
            summary.invalid == 0 && audio,
            "leg {i}: invalid RTP: {summary:?}"
        );
        assert_eq!(
            summary.seq_gaps, 0,
            "leg {i}: sequence numbers not continuous across the switch: {summary:?}"
        );
        assert_eq!(
            summary.ssrcs.len(),
            1,
            "leg {i}: one output stream, one SSRC: {summary:?}"
        );
        for (p, phase) in PHASES.iter().enumerate() {
            let heard = ep.hearing(listener, &windows[p]);
            println!("  {family} {phase:?}: {}", heard.summary());
            let frames = heard.frames();
            // Frames after settling: PACKETS_PER_PHASE - 10 sent; allow for a few held
            // in the jitter buffer across the phase boundary.
            if frames < (PACKETS_PER_PHASE as usize - 10) * 3 / 4 {
                failures.push(format!(
                    "{family} {phase:?}: {listener:?} analysed only {frames} frames"
                ));
            }
            failures.extend(heard.violations(family, *phase));
        }
    }
    assert!(
        failures.is_empty(),
        "who hears whom:\n  {}",
        failures.join("\n  ")
    );
    let Response::Stats(stats) = request(&engine, Request::Stats) else {
        panic!("Stats answers with stats");
    };
    assert_eq!(stats.backend, "af_xdp");
    let shard = &stats.shards[0];
    let sent = 6 * u64::from(PACKETS_PER_PHASE) * PHASES.len() as u64;
    assert!(shard.packets_in >= sent * 9 / 10, "{shard:?}");

    engine.shutdown();
    drop(factory);
    assert!(
        !net.xdp_attached_a().unwrap(),
        "stopping the engine detaches the program"
    );
    // The engine's ports now belong to the kernel again.
    check_kernel_traffic(&net, PORT_BASE + 10);
}

#[test]
fn missing_interface_fails_with_its_name_when_fallback_is_off() {
    if !require_root("af_xdp_netns::missing_interface") {
        return;
    }
    let net = veth("noif", 1);
    net.a.enter().expect("enter the engine namespace");
    let cfg = EngineConfig {
        interface: Some("nosuchif0".into()),
        ..engine_config(&net)
    };
    let mut factory = Factory::new(&cfg).expect("factory");
    let err = Engine::start(&cfg, |i| factory.open(i)).expect_err("no such interface");
    let text = err.to_string();
    assert!(text.contains("nosuchif0"), "{text}");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{text}");

    // With fallback on, the engine runs on io_uring (or sockets) instead.
    let cfg = EngineConfig {
        fallback: true,
        ..cfg
    };
    let mut factory = Factory::new(&cfg).expect("factory");
    let engine = Engine::start(&cfg, |i| factory.open(i)).expect("fallback backend");
    assert_ne!(engine.handle().backend_name(), "af_xdp");
    assert!(
        !net.xdp_attached_a().unwrap(),
        "a failed AF_XDP start leaves no program behind"
    );
}

#[test]
fn datagrams_on_another_shards_queue_are_handed_over_and_answered_by_the_owner() {
    if !require_root("af_xdp_netns::handover") {
        return;
    }
    const PORTS_EACH: u16 = 8;
    let net = veth("hand", 2);
    net.a.enter().expect("enter the engine namespace");
    let cfg = EngineConfig {
        shards: 2,
        ..engine_config(&net)
    };
    let small = XskConfig {
        frame_count: 1024,
        fill_ring_size: 512,
        completion_ring_size: 512,
        rx_ring_size: 512,
        tx_ring_size: 512,
        ..XskConfig::default()
    };
    let mut shared = AfXdpShared::start(
        &cfg,
        &AfXdpConfig {
            xsk: small,
            ..AfXdpConfig::default()
        },
    )
    .expect("attach and start");
    let mut backends = [
        shared.open_shard(0).expect("shard 0"),
        shared.open_shard(1).expect("shard 1"),
    ];
    let mut ports = Vec::new();
    for (shard, backend) in backends.iter_mut().enumerate() {
        for k in 0..PORTS_EACH {
            let port = cfg.shard_port_first(shard) + 2 * k;
            backend.open_port(port, IpFamily::V4).expect("open port");
            ports.push(port);
        }
    }

    // The peer sends one datagram per port (all from one socket: the flow hash picks the
    // queue per destination port, so with 16 flows some land on the other shard's queue)
    // and resends whatever is not acknowledged yet, as a first send can meet an
    // unresolved neighbour entry.
    let (engine_ip, peer_ip) = (net.v4_a(), net.v4_b());
    let peer_ports = ports.clone();
    let peer = net.b.spawn(move || {
        let s = UdpSocket::bind((peer_ip, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut acked: Vec<u16> = Vec::new();
        let mut buf = [0u8; 256];
        for _round in 0..60 {
            for &p in peer_ports.iter().filter(|p| !acked.contains(p)) {
                s.send_to(format!("d-{p}").as_bytes(), (engine_ip, p))
                    .unwrap();
            }
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let expected = format!("ack:d-{}", from.port());
                if buf[..n] == *expected.as_bytes() && !acked.contains(&from.port()) {
                    acked.push(from.port());
                }
            }
            if acked.len() == peer_ports.len() {
                break;
            }
        }
        acked
    });

    let mut recorders = [Echo::with_prefix(b"ack:"), Echo::with_prefix(b"ack:")];
    while !peer.is_finished() {
        for (b, r) in backends.iter_mut().zip(&mut recorders) {
            b.poll_recv(64, r).expect("poll_recv");
            b.flush().expect("flush");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut acked = peer.join().expect("peer thread");
    acked.sort_unstable();
    let mut all = ports.clone();
    all.sort_unstable();
    assert_eq!(
        acked, all,
        "every port answered, from the port the peer sent to"
    );

    for (shard, r) in recorders.iter().enumerate() {
        assert!(!r.handed.is_empty());
        for d in &r.handed {
            let owner = usize::from((d.local_port - PORT_BASE) / PORTS_PER_SHARD as u16);
            assert_eq!(
                owner, shard,
                "port {} delivered to shard {shard}, its owner",
                d.local_port
            );
            assert_eq!(d.remote.ip(), IpAddr::V4(peer_ip));
            assert_eq!(d.payload, format!("d-{}", d.local_port).as_bytes());
        }
    }
    let (s0, s1) = (shared.stats(0), shared.stats(1));
    println!("shard 0: {s0:?}\nshard 1: {s1:?}");
    assert_eq!(
        s0.handover_out + s1.handover_out,
        s0.handover_in + s1.handover_in
    );
    assert!(
        s0.handover_out + s1.handover_out > 0,
        "16 flows hashed over 2 queues all landed on their owner's queue (chance 2^-16)"
    );
    assert_eq!(s0.handover_full + s1.handover_full, 0);
    assert_eq!(
        s0.rx_not_ours + s1.rx_not_ours + s0.rx_malformed + s1.rx_malformed,
        0
    );
    let program = shared.program_counters();
    assert_eq!(
        program.pass_no_xsk, 0,
        "both queues have a socket: {program:?}"
    );
}
