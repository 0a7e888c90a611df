//! The AF_XDP backend end to end: a real engine on one end of a veth pair, real UDP
//! sockets in another network namespace on the other end.
//!
//! One 3-party barge session per address family (every leg hears the other two at unity
//! gain) runs for a few seconds of 20 ms PCMU; each peer socket must receive valid RTP
//! from its own leg's local port with continuous sequence numbers and audible audio, while
//! ping, TCP and UDP outside the engine's port range keep reaching the engine host's
//! kernel. After the engine stops, the program is detached and the engine's ports reach
//! the kernel again.
//!
//! Needs root (CAP_NET_ADMIN, CAP_BPF, CAP_IPC_LOCK), `ip` and `ping`; otherwise it
//! prints SKIPPED with the reason and passes. Namespaces carry the pid in their names and
//! are deleted in Drop, even when an assertion fails.
#![cfg(target_os = "linux")]
#![allow(unsafe_code)] // setns(2) to move a test thread into a namespace

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use earshot_afxdp::XskConfig;
use earshot_engine::backend::af_xdp::{AfXdpConfig, AfXdpShared};
use earshot_engine::backend::{Backend, Datagram, Factory, PacketHandler, TxSink};
use earshot_engine::config::{BackendKind, EngineConfig};
use earshot_engine::engine::{Engine, EngineHandle};
use earshot_engine::server::block_on;
use earshot_engine_api::{
    Edge, Family, LegInfo, MediaConfig, Request, Response, SessionPlan,
};
use earshot_media::Codec;
use earshot_media::dsp::g711;

const ENGINE_V4: &str = "10.78.0.1";
const PEER_V4: &str = "10.78.0.2";
const ENGINE_V6: &str = "fd78::1";
const PEER_V6: &str = "fd78::2";
const PORT_BASE: u16 = 40960;
const PORTS_PER_SHARD: u32 = 1024;
/// Packets each peer socket sends per phase (20 ms apart: 1.2 s of audio).
const PACKETS_PER_PHASE: u16 = 60;
const RTP_HEADER: usize = 12;
const PCMU_20MS: usize = 160;

fn skip_reason() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        return Some("needs root (CAP_NET_ADMIN, CAP_BPF, CAP_IPC_LOCK)".into());
    }
    for tool in ["ip", "ping"] {
        let found = Command::new(tool).arg("-V").output().is_ok();
        if !found {
            return Some(format!("needs the `{tool}` binary"));
        }
    }
    None
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The engine's namespace (`ve`: 10.78.0.1, fd78::1) and the peer's (`vp`: 10.78.0.2,
/// fd78::2), joined by a veth pair. Deleting the namespaces deletes the veth.
struct NetPair {
    engine: String,
    peer: String,
}

impl NetPair {
    fn new(tag: &str) -> NetPair {
        NetPair::with_queues(tag, 1)
    }

    /// A pair whose veth ends have `queues` RX and TX queues each (the engine side's RX
    /// queue of a frame is the peer side's TX queue, chosen by flow hash).
    fn with_queues(tag: &str, queues: u32) -> NetPair {
        let pid = std::process::id();
        let q = queues.to_string();
        let pair = NetPair {
            engine: format!("exe-{pid}-{tag}"),
            peer: format!("exp-{pid}-{tag}"),
        };
        ip(&["netns", "add", &pair.engine]);
        ip(&["netns", "add", &pair.peer]);
        ip(&[
            "-n",
            &pair.engine,
            "link",
            "add",
            "ve",
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            "vp",
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "netns",
            &pair.peer,
        ]);
        for (ns, dev, v4, v6) in [
            (&pair.engine, "ve", ENGINE_V4, ENGINE_V6),
            (&pair.peer, "vp", PEER_V4, PEER_V6),
        ] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }

    fn xdp_attached(&self) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.engine, "link", "show", "ve"])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.engine, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Moves the calling thread (only) into namespace `ns`.
fn enter_netns(ns: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("open netns");
    // SAFETY: setns with a valid namespace fd affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        shards: 1,
        pin: false,
        port_base: PORT_BASE,
        ports_per_shard: PORTS_PER_SHARD,
        bind_v4: Some(ENGINE_V4.parse().unwrap()),
        bind_v6: Some(ENGINE_V6.parse().unwrap()),
        backend: BackendKind::AfXdp,
        fallback: false,
        interface: Some("ve".into()),
        max_legs_per_shard: 64,
        max_sessions_per_shard: 16,
        seed: 7,
        ..EngineConfig::default()
    }
}

fn request(engine: &Engine, req: Request) -> Response {
    block_on(engine.handle().request(req)).expect("engine request")
}

const SAMPLE_RATE_HZ: f64 = 8000.0;
/// Tone amplitude: -12 dBFS.
const TONE_DBFS: f64 = -12.0;
/// A tone is heard when its mean per-frame power is at most this far below the sent
/// power, and absent when at least `ABSENT_DB` below.
const PRESENT_DB: f64 = -6.0;
const ABSENT_DB: f64 = -30.0;
/// Frames at the start of each phase whose audio is ignored (neighbour resolution,
/// jitter buffer fill and the plan switch settle): 200 ms.
const SETTLE_TICKS: u16 = 10;

/// The three parties of each session, in leg order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Customer,
    Agent,
    Supervisor,
}

const ALL: [Who; 3] = [Who::Customer, Who::Agent, Who::Supervisor];

impl Who {
    fn idx(self) -> usize {
        self as usize
    }

    /// Each party talks its own tone; all are multiples of 8000 / 160 = 50 Hz, so a 20 ms
    /// frame holds whole periods and the Goertzel bins do not leak into each other.
    fn tone_hz(self) -> f64 {
        match self {
            Who::Customer => 500.0,
            Who::Agent => 900.0,
            Who::Supervisor => 1400.0,
        }
    }
}

/// The supervision modes the test switches through, in order, live on the same legs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Monitor,
    Barge,
}

const PHASES: [Phase; 2] = [Phase::Monitor, Phase::Barge];

impl Phase {
    /// (listener, source) pairs of the hear relation (SPEC section 1), the supervisor
    /// targeting the agent.
    fn hears(self) -> Vec<(Who, Who)> {
        use Who::*;
        match self {
            Phase::Monitor => vec![
                (Customer, Agent),
                (Agent, Customer),
                (Supervisor, Customer),
                (Supervisor, Agent),
            ],
            Phase::Barge => vec![
                (Customer, Agent),
                (Customer, Supervisor),
                (Agent, Customer),
                (Agent, Supervisor),
                (Supervisor, Customer),
                (Supervisor, Agent),
            ],
        }
    }

    fn plan(self, session: &str, legs: &[LegInfo]) -> SessionPlan {
        SessionPlan {
            session: session.into(),
            edges: self
                .hears()
                .into_iter()
                .map(|(l, s)| Edge {
                    listener: legs[l.idx()].leg,
                    source: legs[s.idx()].leg,
                    gain: 4096,
                })
                .collect(),
            no_dtmf: Vec::new(),
        }
    }
}

fn tone_amplitude() -> f64 {
    32767.0 * 10f64.powf(TONE_DBFS / 20.0)
}

/// Frame `n` (20 ms) of `who`'s tone, PCMU.
fn tone_payload(who: Who, n: u64) -> [u8; PCMU_20MS] {
    let w = 2.0 * std::f64::consts::PI * who.tone_hz() / SAMPLE_RATE_HZ;
    let mut pcm = [0i16; PCMU_20MS];
    for (i, s) in pcm.iter_mut().enumerate() {
        let t = n * PCMU_20MS as u64 + i as u64;
        *s = (tone_amplitude() * (w * t as f64).sin()).round() as i16;
    }
    let mut payload = [0u8; PCMU_20MS];
    g711::encode(Codec::Pcmu, &pcm, &mut payload);
    payload
}

/// Power of `hz` in one frame relative to the sent tone's power, as a linear ratio
/// (Goertzel, as in `udp_e2e.rs`).
fn relative_power(frame: &[i16], hz: f64) -> f64 {
    let n = frame.len() as f64;
    let w = 2.0 * std::f64::consts::PI * hz / SAMPLE_RATE_HZ;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in frame {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let mag2 = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let amp = 2.0 * mag2.sqrt() / n;
    (amp / tone_amplitude()).powi(2)
}

fn rtp_packet(
    ssrc: u32,
    seq: u16,
    ts: u32,
    payload: &[u8; PCMU_20MS],
) -> [u8; RTP_HEADER + PCMU_20MS] {
    let mut pkt = [0u8; RTP_HEADER + PCMU_20MS];
    pkt[0] = 0x80;
    pkt[1] = 0; // PCMU
    pkt[2..4].copy_from_slice(&seq.to_be_bytes());
    pkt[4..8].copy_from_slice(&ts.to_be_bytes());
    pkt[8..12].copy_from_slice(&ssrc.to_be_bytes());
    pkt[RTP_HEADER..].copy_from_slice(payload);
    pkt
}

/// What one peer socket received from the engine.
#[derive(Debug, Default)]
struct Heard {
    packets: usize,
    from_wrong_addr: usize,
    invalid: usize,
    seq_gaps: usize,
    ssrcs: Vec<u32>,
    last_seq: Option<u16>,
    /// Sum of each party's relative tone power over the frames analysed, per phase.
    power: [[f64; 3]; PHASES.len()],
    /// Frames analysed (received after the phase's settling ticks), per phase.
    frames: [usize; PHASES.len()],
}

impl Heard {
    fn take(
        &mut self,
        bytes: &[u8],
        from: SocketAddr,
        expected_from: SocketAddr,
        phase: usize,
        tick: u16,
    ) {
        if from != expected_from {
            self.from_wrong_addr += 1;
            return;
        }
        // RTCP (rtcp-mux) is not part of the audio stream.
        if bytes.len() >= 2 && (192..=223).contains(&bytes[1]) {
            return;
        }
        if bytes.len() != RTP_HEADER + PCMU_20MS || bytes[0] >> 6 != 2 || bytes[1] & 0x7f != 0 {
            self.invalid += 1;
            return;
        }
        self.packets += 1;
        let seq = u16::from_be_bytes([bytes[2], bytes[3]]);
        if self
            .last_seq
            .is_some_and(|last| seq != last.wrapping_add(1))
        {
            self.seq_gaps += 1;
        }
        self.last_seq = Some(seq);
        let ssrc = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if !self.ssrcs.contains(&ssrc) {
            self.ssrcs.push(ssrc);
        }
        if tick >= SETTLE_TICKS {
            let mut pcm = [0i16; PCMU_20MS];
            g711::decode(Codec::Pcmu, &bytes[RTP_HEADER..], &mut pcm);
            for who in ALL {
                self.power[phase][who.idx()] += relative_power(&pcm, who.tone_hz());
            }
            self.frames[phase] += 1;
        }
    }

    /// Mean relative power (dB) of each party's tone in `phase`.
    fn levels_db(&self, phase: usize) -> [f64; 3] {
        let frames = self.frames[phase];
        self.power[phase].map(|s| {
            if frames == 0 {
                f64::NEG_INFINITY
            } else {
                10.0 * (s / frames as f64).max(1e-12).log10()
            }
        })
    }
}

/// One session's plan switch, applied by the peer thread at each phase start.
struct PlanSwitch {
    engine: Arc<EngineHandle>,
    sessions: Vec<(String, Vec<LegInfo>)>,
}

/// Peer side: binds one socket per leg in the peer namespace (parties C, A, S per
/// family), reports their addresses, waits for the legs, then for each phase switches
/// the plans and sends paced tones from each socket, recording what comes back.
#[allow(clippy::disallowed_methods)] // real-time pacing of a real network peer
fn run_peers(
    ns: String,
    binds: Vec<IpAddr>,
    addrs_tx: mpsc::Sender<Vec<SocketAddr>>,
    go_rx: mpsc::Receiver<(Vec<SocketAddr>, PlanSwitch)>,
) -> Vec<Heard> {
    enter_netns(&ns);
    let socks: Vec<UdpSocket> = binds
        .iter()
        .map(|&ip| {
            let s = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind peer socket");
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    addrs_tx
        .send(socks.iter().map(|s| s.local_addr().unwrap()).collect())
        .unwrap();
    let (targets, switch) = go_rx.recv().expect("leg addresses");
    let mut heard: Vec<Heard> = socks.iter().map(|_| Heard::default()).collect();
    let mut buf = [0u8; 2048];
    let drain = |heard: &mut Vec<Heard>, buf: &mut [u8], phase: usize, tick: u16| {
        for (i, s) in socks.iter().enumerate() {
            while let Ok((n, from)) = s.recv_from(buf) {
                heard[i].take(&buf[..n], from, targets[i], phase, tick);
            }
        }
    };
    let mut sent: u16 = 0;
    for (p, phase) in PHASES.iter().enumerate() {
        for (session, legs) in &switch.sessions {
            let r = block_on(
                switch
                    .engine
                    .request(Request::SetSessionPlan(phase.plan(session, legs))),
            );
            assert_eq!(r.expect("plan applied"), Response::Done);
        }
        let start = std::time::Instant::now();
        for t in 0..PACKETS_PER_PHASE {
            for (i, s) in socks.iter().enumerate() {
                let who = ALL[i % 3];
                let payload = tone_payload(who, u64::from(sent));
                let pkt = rtp_packet(
                    0x1000 + i as u32,
                    100 + sent,
                    160 * u32::from(sent),
                    &payload,
                );
                s.send_to(&pkt, targets[i]).expect("send RTP");
            }
            sent += 1;
            drain(&mut heard, &mut buf, p, t);
            let next = start + Duration::from_millis(20 * (u64::from(t) + 1));
            std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
        }
    }
    // The engine's jitter buffer holds a few frames: collect the tail (not analysed).
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(10));
        drain(&mut heard, &mut buf, PHASES.len() - 1, 0);
    }
    heard
}

/// Allocates and configures one leg per remote (parties C, A, S) in `session`, with no
/// plan yet (the peer thread sets one per phase).
fn allocate_legs(
    engine: &Engine,
    session: &str,
    family: Family,
    remotes: &[SocketAddr],
) -> Vec<LegInfo> {
    let mut legs = Vec::new();
    for (i, &remote) in remotes.iter().enumerate() {
        let Response::Leg(info) = request(
            engine,
            Request::AllocateLeg {
                session: session.into(),
                leg_key: format!("p{i}"),
                family,
                requested_port: None,
                rtcp_mux: true,
            },
        ) else {
            panic!("AllocateLeg answers with a leg");
        };
        request(
            engine,
            Request::ConfigureLeg {
                leg: info.leg,
                media: MediaConfig {
                    remote: Some(remote),
                    codec: Codec::Pcmu,
                    payload_type: 0,
                    ptime_ms: 20,
                    telephone_event_pt: None,
                    rtcp_mux: true,
                    report_first_packet: false,
                    max_ptime_ms: None,
                    opus: Default::default(),
                },
            },
        );
        legs.push(info);
    }
    legs
}

/// Kernel traffic on the engine's interface while (or after) the engine runs: ping, TCP
/// and UDP outside the port range from the peer namespace to the engine host.
fn check_kernel_traffic(net: &NetPair, udp_port: u16) {
    let udp = UdpSocket::bind((ENGINE_V4, udp_port)).expect("kernel UDP socket");
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let tcp = TcpListener::bind((ENGINE_V4, 0)).expect("kernel TCP listener");
    let tcp_port = tcp.local_addr().unwrap().port();
    let peer = net.peer.clone();
    let client = std::thread::spawn(move || {
        enter_netns(&peer);
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(b"kernel-udp", (ENGINE_V4, udp_port)).unwrap();
        let mut c =
            TcpStream::connect((ENGINE_V4, tcp_port)).expect("TCP connect to the engine host");
        c.write_all(b"kernel-tcp").unwrap();
    });
    // The kernel completes the handshake before accept(): join first, so a failed
    // connect fails the test instead of blocking accept() forever.
    client.join().expect("UDP and TCP from the peer namespace");
    let mut buf = [0u8; 64];
    let (n, _) = udp
        .recv_from(&mut buf)
        .expect("UDP outside the range reaches the kernel");
    assert_eq!(&buf[..n], b"kernel-udp");
    let (mut conn, _) = tcp.accept().expect("TCP accept");
    let mut got = Vec::new();
    conn.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"kernel-tcp");
    let ping = Command::new("ip")
        .args([
            "netns", "exec", &net.peer, "ping", "-c", "2", "-i", "0.2", "-W", "1", ENGINE_V4,
        ])
        .output()
        .expect("ping");
    assert!(ping.status.success(), "ping to the engine host: {ping:?}");
}

#[test]
#[allow(clippy::disallowed_methods)] // waits on a real network in real time
fn monitor_then_barge_over_af_xdp_on_veth_hear_the_right_tones_both_families_and_spare_kernel_traffic()
 {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED af_xdp_netns: {reason}");
        return;
    }
    let net = NetPair::new("barge");
    enter_netns(&net.engine);
    let cfg = engine_config();
    let mut factory = Factory::new(&cfg).expect("factory");
    let engine = Engine::start(&cfg, |i| factory.open(i)).expect("engine starts on AF_XDP");
    assert_eq!(engine.handle().backend_name(), "af_xdp");
    assert!(
        net.xdp_attached(),
        "the XDP program is attached while the engine runs"
    );

    let (addrs_tx, addrs_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let binds: Vec<IpAddr> = [PEER_V4; 3]
        .iter()
        .chain(&[PEER_V6; 3])
        .map(|a| a.parse().unwrap())
        .collect();
    let peer_ns = net.peer.clone();
    let peers = std::thread::spawn(move || run_peers(peer_ns, binds, addrs_tx, go_rx));
    let remotes = addrs_rx.recv().expect("peer sockets bound");
    let legs_v4 = allocate_legs(&engine, "s-v4", Family::V4, &remotes[..3]);
    let legs_v6 = allocate_legs(&engine, "s-v6", Family::V6, &remotes[3..]);
    let locals: Vec<SocketAddr> = legs_v4.iter().chain(&legs_v6).map(|l| l.local).collect();
    for (l, family_ip) in locals.iter().zip([
        ENGINE_V4, ENGINE_V4, ENGINE_V4, ENGINE_V6, ENGINE_V6, ENGINE_V6,
    ]) {
        assert_eq!(l.ip(), family_ip.parse::<IpAddr>().unwrap());
        assert!((PORT_BASE..PORT_BASE + PORTS_PER_SHARD as u16).contains(&l.port()));
    }
    let switch = PlanSwitch {
        engine: engine.handle(),
        sessions: vec![("s-v4".into(), legs_v4), ("s-v6".into(), legs_v6)],
    };
    go_tx.send((locals.clone(), switch)).unwrap();

    // While the media flows: the host's own traffic on the same interface still works.
    check_kernel_traffic(&net, 9999);

    let heard = peers.join().expect("peer thread");
    let mut failures = Vec::new();
    for (i, h) in heard.iter().enumerate() {
        let listener = ALL[i % 3];
        let family = if i < 3 { "v4" } else { "v6" };
        println!("leg {i} {family} {listener:?} ({}): {h:?}", locals[i]);
        assert_eq!(
            h.from_wrong_addr, 0,
            "leg {i}: RTP from another address than its leg's: {h:?}"
        );
        assert_eq!(h.invalid, 0, "leg {i}: invalid RTP: {h:?}");
        assert_eq!(
            h.seq_gaps, 0,
            "leg {i}: sequence numbers not continuous across the switch: {h:?}"
        );
        assert_eq!(
            h.ssrcs.len(),
            1,
            "leg {i}: one output stream, one SSRC: {h:?}"
        );
        for (p, phase) in PHASES.iter().enumerate() {
            let hears = phase.hears();
            let db = h.levels_db(p);
            println!(
                "  {family} {phase:?}: {listener:?} analysed {} frames; C {:.1} dB, A {:.1} dB, S {:.1} dB",
                h.frames[p], db[0], db[1], db[2]
            );
            // Frames after settling: PACKETS_PER_PHASE - SETTLE_TICKS sent; allow for a
            // few held in the jitter buffer across the phase boundary.
            if h.frames[p] < usize::from(PACKETS_PER_PHASE - SETTLE_TICKS) * 3 / 4 {
                failures.push(format!(
                    "{family} {phase:?}: {listener:?} analysed only {} frames",
                    h.frames[p]
                ));
            }
            for source in ALL {
                let level = db[source.idx()];
                let heard = hears.contains(&(listener, source));
                if heard && level < PRESENT_DB {
                    failures.push(format!(
                        "{family} {phase:?}: {listener:?} should hear {source:?}, level {level:.1} dB"
                    ));
                }
                if !heard && level > ABSENT_DB {
                    failures.push(format!(
                        "{family} {phase:?}: {listener:?} must not hear {source:?}, level {level:.1} dB"
                    ));
                }
            }
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
        !net.xdp_attached(),
        "stopping the engine detaches the program"
    );
    // The engine's ports now belong to the kernel again.
    check_kernel_traffic(&net, PORT_BASE + 10);
}

#[test]
fn missing_interface_fails_with_its_name_when_fallback_is_off() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED af_xdp_netns: {reason}");
        return;
    }
    let net = NetPair::new("noif");
    enter_netns(&net.engine);
    let cfg = EngineConfig {
        interface: Some("nosuchif0".into()),
        ..engine_config()
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
        !net.xdp_attached(),
        "a failed AF_XDP start leaves no program behind"
    );
}

/// Records every datagram and answers each with `ack:` + its payload, from the port it
/// arrived on, through the sink lent with it.
#[derive(Default)]
struct EchoRecorder {
    got: Vec<(u16, SocketAddr, Vec<u8>)>,
}

impl PacketHandler for EchoRecorder {
    fn handle_datagram(&mut self, d: Datagram<'_>, tx: &mut dyn TxSink) {
        self.got.push((d.local_port, d.remote, d.payload.to_vec()));
        let payload = d.payload;
        tx.send_with(d.local_port, d.remote, &mut |buf| {
            buf[..4].copy_from_slice(b"ack:");
            buf[4..4 + payload.len()].copy_from_slice(payload);
            4 + payload.len()
        });
    }
}

#[test]
#[allow(clippy::disallowed_methods)] // waits on a real network in real time
fn datagrams_on_another_shards_queue_are_handed_over_and_answered_by_the_owner() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED af_xdp_netns: {reason}");
        return;
    }
    const PORTS_EACH: u16 = 8;
    let net = NetPair::with_queues("hand", 2);
    enter_netns(&net.engine);
    let cfg = EngineConfig {
        shards: 2,
        ..engine_config()
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
            backend.open_port(port, Family::V4).expect("open port");
            ports.push(port);
        }
    }

    // The peer sends one datagram per port (all from one socket: the flow hash picks the
    // queue per destination port, so with 16 flows some land on the other shard's queue)
    // and resends whatever is not acknowledged yet, as a first send can meet an
    // unresolved neighbour entry.
    let peer_ns = net.peer.clone();
    let peer_ports = ports.clone();
    let peer = std::thread::spawn(move || {
        enter_netns(&peer_ns);
        let s = UdpSocket::bind((PEER_V4, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut acked: Vec<u16> = Vec::new();
        let mut buf = [0u8; 256];
        for _round in 0..60 {
            for &p in peer_ports.iter().filter(|p| !acked.contains(p)) {
                s.send_to(format!("d-{p}").as_bytes(), (ENGINE_V4, p))
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

    let mut recorders = [EchoRecorder::default(), EchoRecorder::default()];
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
        assert!(!r.got.is_empty());
        for (port, remote, payload) in &r.got {
            let owner = usize::from((port - PORT_BASE) / PORTS_PER_SHARD as u16);
            assert_eq!(
                owner, shard,
                "port {port} delivered to shard {shard}, its owner"
            );
            assert_eq!(remote.ip(), PEER_V4.parse::<IpAddr>().unwrap());
            assert_eq!(payload, format!("d-{port}").as_bytes());
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
