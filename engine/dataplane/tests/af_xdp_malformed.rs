//! The AF_XDP backend against hostile frames and a hard kill, on a veth pair.
//!
//! 1. With the engine on AF_XDP and a forwarded 2-leg session carrying paced RTP, the
//!    peer namespace injects raw Ethernet frames through an AF_PACKET socket on its veth
//!    end: a truncated UDP header, an IPv4 total length past the frame, a bad UDP
//!    checksum, IPv4 with options, a VLAN-tagged frame and a fragment. Each kind is
//!    built to land on one counter, so the test proves the verdict per reason: the XDP
//!    program passes truncated headers and fragments to the kernel
//!    (`xdp_pass_truncated`, `xdp_pass_fragment`); redirected frames with inconsistent
//!    lengths are dropped by the backend (`rx_malformed`); a bad UDP checksum is not
//!    judged (veth frames carry CHECKSUM_PARTIAL, see `earshot_afxdp::frame`), so that
//!    datagram reaches the media layer, which drops its version-1 RTP (`bad_version`);
//!    IPv4 options and a VLAN tag are parsed and delivered (their payloads are chosen
//!    to be dropped as `unknown_payload_type` and `truncated` RTP). The good RTP keeps
//!    flowing throughout and the shard keeps answering.
//! 2. `earshot-engine` runs as a child process on AF_XDP, is SIGKILLed, the interface
//!    passes the engine's ports to the kernel again (the program died with its bpf_link),
//!    and a second engine started on the same interface carries RTP again.
//!
//! Needs root; otherwise prints SKIPPED with the reason and passes. The peers are the
//! test kit's PCMU endpoints; the kit's guards delete the namespaces on drop.
#![cfg(target_os = "linux")]
#![allow(unsafe_code)] // an AF_PACKET socket in the peer namespace
// A real network is paced and waited on in real time.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use earshot_engine::backend::Factory;
use earshot_engine::config::{BackendKind, EngineConfig};
use earshot_engine::engine::Engine;
use earshot_engine::server::block_on;
use earshot_engine_api::protocol::{ClientFrame, Hello, ServerFrame, read_frame, write_frame};
use earshot_engine_api::{IpFamily, LegId, LegInfo, Request, Response};
use earshot_testkit::endpoint::{PcmuEndpoint, Talk};
use earshot_testkit::fixtures::{Role, Supervision, pcmu_media};
use earshot_testkit::netns::{VethConfig, VethPair, require_root};
use earshot_testkit::program::{add_leg, set_plan};
use earshot_testkit::rtp::{Rtp, RtpHeader};

const PORT_BASE: u16 = 41984;
const PORTS_PER_SHARD: u32 = 1024;
const PACKETS: u32 = 100;
/// When (after the peers start talking) one frame of each malformed kind is injected.
const BAD_AT_MS: [u64; 4] = [400, 800, 1200, 1600];

/// Engine namespace (`ve`, 10.79.0.1) and peer namespace (`vp`, 10.79.0.2) joined by a
/// veth pair.
fn veth(tag: &str) -> VethPair {
    VethPair::new(
        tag,
        VethConfig {
            prefix_a: "xme",
            prefix_b: "xmp",
            ..VethConfig::v4(79)
        },
    )
    .expect("veth pair")
}

fn rtp(version: u8, pt: u8, seq: u16, ssrc: u32, payload_len: usize) -> Vec<u8> {
    // mu-law 0x55: audible, so a receiver could tell sound from the engine's silence.
    RtpHeader::new(pt, seq, 160 * u32::from(seq), ssrc)
        .with_version(version)
        .packet(&vec![0x55; payload_len])
}

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for c in chunks {
        for pair in c.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// How to spoil one frame.
#[derive(Clone, Copy, Debug, Default)]
struct Spoil {
    vlan: bool,
    ip_options: bool,
    /// IPv4 total length to write instead of the true one.
    total_len: Option<u16>,
    more_fragments: bool,
    bad_udp_checksum: bool,
    /// Cut the frame right after this many bytes of the UDP header.
    udp_header_bytes: Option<usize>,
}

/// An Ethernet frame with IPv4 and UDP from `src` to `dst`, spoiled as asked.
fn frame(
    macs: ([u8; 6], [u8; 6]),
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
    spoil: Spoil,
) -> Vec<u8> {
    let (dst_mac, src_mac) = macs;
    let mut f = Vec::with_capacity(1600);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    if spoil.vlan {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]); // 802.1Q, VID 5
    }
    f.extend_from_slice(&[0x08, 0x00]);
    let options: &[u8] = if spoil.ip_options { &[1, 1, 1, 0] } else { &[] };
    let ihl = 20 + options.len();
    let udp_len = 8 + payload.len();
    let total = spoil.total_len.unwrap_or((ihl + udp_len) as u16);
    let mut iph = vec![0x40 | (ihl / 4) as u8, 0];
    iph.extend_from_slice(&total.to_be_bytes());
    iph.extend_from_slice(&[0x12, 0x34]);
    iph.extend_from_slice(if spoil.more_fragments {
        &[0x20, 0]
    } else {
        &[0x40, 0]
    });
    iph.extend_from_slice(&[64, 17, 0, 0]);
    iph.extend_from_slice(&src.ip().octets());
    iph.extend_from_slice(&dst.ip().octets());
    iph.extend_from_slice(options);
    let c = checksum(&[&iph]);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&iph);
    let mut udp = Vec::new();
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.ip().octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let mut c = checksum(&[&pseudo, &udp]);
    if c == 0 {
        c = 0xffff;
    }
    if spoil.bad_udp_checksum {
        c ^= 0x5a5a;
    }
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    match spoil.udp_header_bytes {
        Some(n) => f.extend_from_slice(&udp[..n]),
        None => f.extend_from_slice(&udp),
    }
    f
}

/// An AF_PACKET socket that sends raw frames out of one interface.
struct RawSender {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl RawSender {
    /// Opens it in the calling thread's namespace.
    fn open(dev: &str) -> RawSender {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(dev).unwrap();
        // SAFETY: a NUL-terminated name that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        assert!(ifindex > 0, "no interface {dev}");
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh socket nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        RawSender { fd, ifindex }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: the buffer and address are valid for the stated lengths.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "AF_PACKET send: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("IPv4 expected"),
    }
}

/// The requests that make a forwarded pair (each leg hears the other) of legs whose
/// remotes are `remotes`, through `call`; returns the legs.
fn forwarded_pair(
    mut call: impl FnMut(Request) -> Response,
    session: &str,
    remotes: [SocketAddr; 2],
) -> [LegInfo; 2] {
    let mut call = |r| Ok(call(r));
    let legs = remotes.map(|remote| {
        add_leg(
            &mut call,
            session,
            &remote.to_string(),
            IpFamily::V4,
            pcmu_media(Some(remote)),
        )
        .expect("leg allocated and configured")
    });
    let ids: Vec<LegId> = legs.iter().map(|l| l.leg).collect();
    set_plan(&mut call, Supervision::Call.plan(session, &ids, false)).expect("plan applied");
    legs
}

/// Two peers in the peer namespace (a customer and an agent).
fn peers(net: &VethPair) -> [PcmuEndpoint; 2] {
    let ip = IpAddr::V4(net.v4_b());
    [0u32, 1].map(|i| {
        net.b
            .run(|| PcmuEndpoint::bind(SocketAddr::new(ip, 0), 0x2000 + i))
            .expect("peer endpoint")
    })
}

/// Each peer talks `PACKETS` paced packets to its leg while `inject(ms)` is called at
/// each of `at_ms` (milliseconds after the start); returns how many valid 20 ms PCMU
/// packets each peer received from its own leg.
fn talk(
    peers: &[PcmuEndpoint; 2],
    legs: [SocketAddr; 2],
    at_ms: &[u64],
    mut inject: impl FnMut(),
) -> [usize; 2] {
    let start = Instant::now();
    let talkers = [0, 1].map(|i| {
        let who = Role::ALL[i];
        peers[i].talk(legs[i], Talk::tone(who.tone(), PACKETS))
    });
    for &ms in at_ms {
        let at = start + Duration::from_millis(ms);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        inject();
    }
    for t in talkers {
        assert_eq!(t.join().expect("talker"), PACKETS);
    }
    // Let the last forwarded packets arrive.
    std::thread::sleep(Duration::from_millis(200));
    [0, 1].map(|i| {
        peers[i]
            .received()
            .iter()
            .filter(|a| a.from == legs[i])
            .filter_map(|a| Rtp::parse(&a.bytes))
            .filter(|r| r.payload_type == 0 && r.payload.len() == 160)
            .count()
    })
}

#[test]
fn malformed_frames_are_passed_or_dropped_by_reason_and_good_rtp_keeps_flowing() {
    if !require_root("af_xdp_malformed::malformed_frames") {
        return;
    }
    let net = veth("bad");
    let macs = (net.mac_a().unwrap(), net.mac_b().unwrap());
    net.a.enter().expect("enter the engine namespace");
    let cfg = EngineConfig {
        shards: 1,
        pin: false,
        port_base: PORT_BASE,
        ports_per_shard: PORTS_PER_SHARD,
        bind_v4: Some(net.v4_a()),
        backend: BackendKind::AfXdp,
        fallback: false,
        interface: Some(net.cfg.dev_a.into()),
        max_legs_per_shard: 16,
        max_sessions_per_shard: 4,
        seed: 5,
        ..EngineConfig::default()
    };
    let mut factory = Factory::new(&cfg).expect("factory");
    let engine = Engine::start(&cfg, |i| factory.open(i)).expect("engine starts on AF_XDP");

    let peers = peers(&net);
    let remotes = [peers[0].addr(), peers[1].addr()];
    let legs = forwarded_pair(
        |r| block_on(engine.handle().request(r)).expect("engine request"),
        "bad-1",
        remotes,
    );
    let legs = legs.map(|l| l.local);
    let raw = net.b.run(|| RawSender::open(net.cfg.dev_b));
    let (from, to) = (v4(remotes[0]), v4(legs[0]));
    let good = Spoil::default();
    let kinds = [
        // XDP: the UDP header runs past the frame -> kernel.
        frame(
            macs,
            from,
            to,
            &[],
            Spoil {
                udp_header_bytes: Some(4),
                total_len: Some(24),
                ..good
            },
        ),
        // Redirected, then refused by the backend's parser (length past the frame).
        frame(
            macs,
            from,
            to,
            &rtp(2, 0, 1, 0xbad, 160),
            Spoil {
                total_len: Some(1400),
                ..good
            },
        ),
        // Checksums are not judged on veth: the media layer sees RTP version 1.
        frame(
            macs,
            from,
            to,
            &rtp(1, 0, 1, 0xbad, 160),
            Spoil {
                bad_udp_checksum: true,
                ..good
            },
        ),
        // IPv4 options are parsed: the media layer sees an unknown payload type.
        frame(
            macs,
            from,
            to,
            &rtp(2, 96, 1, 0xbad, 160),
            Spoil {
                ip_options: true,
                ..good
            },
        ),
        // One VLAN tag is parsed: the media layer sees a truncated RTP header.
        frame(
            macs,
            from,
            to,
            &[0x80, 0, 0, 1, 2],
            Spoil { vlan: true, ..good },
        ),
        // A fragment goes to the kernel (which never completes it).
        frame(
            macs,
            from,
            to,
            &rtp(2, 0, 1, 0xbad, 160),
            Spoil {
                more_fragments: true,
                ..good
            },
        ),
    ];
    let got = talk(&peers, legs, &BAD_AT_MS, || {
        for k in &kinds {
            raw.send(k);
        }
    });

    let Response::Stats(stats) = block_on(engine.handle().request(Request::Stats)).unwrap() else {
        panic!("Stats answers with stats");
    };
    let shard = &stats.shards[0];
    let backend: HashMap<&str, u64> = shard
        .backend_counters
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    let drops: HashMap<&str, u64> = shard.drops.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    println!("received {got:?}\nbackend {backend:?}\ndrops {drops:?}");
    let rounds = BAD_AT_MS.len() as u64;
    let mut failures = Vec::new();
    for (name, map, counter) in [
        ("truncated UDP header", &backend, "xdp_pass_truncated"),
        ("fragment", &backend, "xdp_pass_fragment"),
        ("bad IPv4 total length", &backend, "rx_malformed"),
        ("bad UDP checksum (RTP v1)", &drops, "bad_version"),
        ("IPv4 options (PT 96)", &drops, "unknown_payload_type"),
        ("VLAN tag (short RTP)", &drops, "truncated"),
    ] {
        let n = map.get(counter).copied().unwrap_or(0);
        if n != rounds {
            failures.push(format!("{name}: {counter} = {n}, sent {rounds}"));
        }
    }
    // Every good packet plus the four redirected kinds went through the socket.
    let redirected = backend.get("xdp_redirected").copied().unwrap_or(0);
    if redirected < 2 * u64::from(PACKETS) + 4 * rounds {
        failures.push(format!("xdp_redirected = {redirected}"));
    }
    for (i, n) in got.iter().enumerate() {
        if *n < PACKETS as usize * 9 / 10 {
            failures.push(format!(
                "peer {i} received only {n} of {PACKETS} forwarded packets"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    engine.shutdown();
    drop(factory);
}

/// A minimal client of the engine's programming socket (docs/engine-protocol.md).
struct Client {
    stream: UnixStream,
    next_id: u64,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let mut stream = UnixStream::connect(path).expect("connect to the engine socket");
        write_frame(&mut stream, &Hello::current()).unwrap();
        let hello: Option<Hello> = read_frame(&mut stream).unwrap();
        assert_eq!(hello.expect("engine hello").protocol, "earshot-engine");
        Client { stream, next_id: 1 }
    }

    fn call(&mut self, request: Request) -> Response {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.stream, &ClientFrame::Call { id, request }).unwrap();
        loop {
            match read_frame::<_, ServerFrame>(&mut self.stream).unwrap() {
                Some(ServerFrame::Reply { id: got, result }) if got == id => {
                    return result.expect("engine accepts the request");
                }
                Some(_) => continue,
                None => panic!("engine closed the socket"),
            }
        }
    }
}

/// `earshot-engine` as a child process; killed (SIGKILL) and reaped on drop, so a
/// failing assertion leaves no engine running.
struct EngineProcess(Child);

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `earshot-engine` on AF_XDP in the engine namespace, as its own process.
fn spawn_engine(net: &VethPair, socket: &Path) -> EngineProcess {
    let _ = std::fs::remove_file(socket);
    let child = EngineProcess(
        net.a
            .command(env!("CARGO_BIN_EXE_earshot-engine"))
            .args([
                "--backend",
                "af_xdp",
                "--interface",
                net.cfg.dev_a,
                "--no-fallback",
                "--no-pin",
            ])
            .args(["--shards", "1", "--bind-v4", &net.v4_a().to_string()])
            .args(["--port-base", &PORT_BASE.to_string()])
            .args(["--ports-per-shard", &PORTS_PER_SHARD.to_string()])
            .arg("--socket")
            .arg(socket)
            .spawn()
            .expect("spawn earshot-engine"),
    );
    for _ in 0..200 {
        if socket.exists() && net.xdp_attached_a().unwrap() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("earshot-engine did not come up on AF_XDP within 10 s");
}

/// A forwarded pair programmed over the socket carries RTP both ways.
fn assert_engine_forwards(net: &VethPair, socket: &Path, session: &str) {
    let mut client = Client::connect(socket);
    let peers = peers(net);
    let remotes = [peers[0].addr(), peers[1].addr()];
    let legs = forwarded_pair(|r| client.call(r), session, remotes).map(|l| l.local);
    let got = talk(&peers, legs, &[], || {});
    for (i, n) in got.iter().enumerate() {
        assert!(
            *n >= PACKETS as usize * 9 / 10,
            "{session}: peer {i} received only {n} of {PACKETS}"
        );
    }
}

/// UDP to one of the engine's ports reaches a kernel socket in the engine namespace
/// (the calling thread must be in it).
fn assert_port_reaches_kernel(net: &VethPair, port: u16) {
    let engine_ip = net.v4_a();
    let kernel = UdpSocket::bind((engine_ip, port)).expect("kernel socket on an engine port");
    kernel
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let peer_ip = net.v4_b();
    net.b.run(|| {
        let s = UdpSocket::bind((peer_ip, 0)).unwrap();
        for _ in 0..3 {
            s.send_to(b"to-the-kernel", (engine_ip, port)).unwrap();
        }
    });
    let mut buf = [0u8; 64];
    let (n, from) = kernel
        .recv_from(&mut buf)
        .expect("the engine's port reaches the kernel after the kill");
    assert_eq!(&buf[..n], b"to-the-kernel");
    assert_eq!(from.ip(), IpAddr::V4(peer_ip));
}

#[test]
fn sigkilled_engine_leaves_no_program_behind_and_a_restart_works_again() {
    if !require_root("af_xdp_malformed::sigkilled_engine") {
        return;
    }
    let net = veth("kill");
    net.a.enter().expect("enter the engine namespace");
    let socket = PathBuf::from(format!("/tmp/earshot-xdp-kill-{}.sock", std::process::id()));

    let mut first = spawn_engine(&net, &socket);
    assert_engine_forwards(&net, &socket, "before-kill");
    first.0.kill().expect("SIGKILL the engine");
    first.0.wait().unwrap();
    // The bpf_link dies with the process; give the kernel a moment to release it.
    let mut detached = false;
    for _ in 0..40 {
        if !net.xdp_attached_a().unwrap() {
            detached = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        detached,
        "a SIGKILLed engine leaves no XDP program attached"
    );
    assert_port_reaches_kernel(&net, PORT_BASE + 10);

    let mut second = spawn_engine(&net, &socket);
    assert_engine_forwards(&net, &socket, "after-restart");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(second.0.id() as i32, libc::SIGTERM) };
    let status = second.0.wait().unwrap();
    assert!(
        status.success(),
        "engine exits cleanly on SIGTERM: {status:?}"
    );
    assert!(
        !net.xdp_attached_a().unwrap(),
        "SIGTERM detaches the program"
    );
    let _ = std::fs::remove_file(&socket);
}
