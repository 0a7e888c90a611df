//! Real UDP on loopback: the engine against a bare batched reflector, same run.
//!
//! Three measurements, each bounded:
//! 1. the generator's own ceiling: a batched sender (sendmmsg, 64) pinned to
//!    `gen_core`, unlimited rate, into a socket nobody reads;
//! 2. the bare reflector ([`run_reflector`]: recvmmsg/sendmmsg batches of 64, one
//!    socket, pinned to `sut_core`) at the offered rate;
//! 3. the engine (one shard pinned to `sut_core`, the named backend) carrying
//!    forwarded 2-leg sessions (each leg hears the other: the monitor path, payload
//!    untouched) or 3-party barge sessions (mixed), at the same offered rate.
//!
//! The generator stamps its clock into the first 8 payload bytes; the receiver (a
//! second thread on `gen_core`) reads it back from forwarded or reflected packets, so
//! latency is generator-to-generator and includes the receiver's own scheduling delay
//! on a shared core. Mixed packets carry re-encoded audio, so barge runs report rates
//! only.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use earshot_engine::backend::{Factory, parse_kind};
use earshot_engine::clock::Clock;
use earshot_engine::config::EngineConfig;
use earshot_engine::core::stats::percentiles_us;
use earshot_engine::engine::Engine;
use earshot_engine_api::{EngineApi, IpFamily, LegId, Percentiles, Request, Response};
use earshot_media::Codec;
use earshot_testkit::fixtures::{all_hear_all, pcmu_media, plan};
use earshot_testkit::g711::tone_frame;
use earshot_testkit::program::{add_leg, set_plan};
use earshot_testkit::rig::{FRAME_SAMPLES, PACKET_LEN, voice};
use earshot_testkit::rtp::{HEADER_LEN, RtpHeader};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::net::{self, BATCH, Mmsg};

/// What the engine carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// 2-leg sessions, each leg forwarded to the other (no mixing, no tick).
    Forward,
    /// 3-party barge sessions, every leg hears the other two mixed.
    Barge,
}

/// Parameters of a UDP comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UdpParams {
    /// Engine backend: "io_uring" or "socket".
    pub backend: String,
    /// Session kind.
    pub mode: Mode,
    /// Sessions programmed into the engine.
    pub sessions: u32,
    /// Offered packets per second in total (0: as fast as the generator can).
    /// Barge sessions are offered 50 pps per leg whatever this says.
    pub rate_pps: u64,
    /// Milliseconds per measured run.
    pub duration_ms: u64,
    /// Core of the system under test (reflector or engine shard).
    pub sut_core: usize,
    /// Core of the generator (sender and receiver threads).
    pub gen_core: usize,
    /// Session counts of a stepped capacity run ([`crate::udp_ramp`]); empty: the
    /// one-count comparison ([`compare`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ramp: Vec<u32>,
    /// Milliseconds per step of a stepped run (default 60,000, SPEC section 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ms: Option<u64>,
    /// Stepped runs: the shard thread runs `SCHED_FIFO` (see [`crate::udp_ramp`]).
    #[serde(default)]
    pub shard_fifo: bool,
}

/// One measured run against one system under test.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// "reflector" or "engine/<backend>".
    pub target: String,
    /// Packets per second the generator tried to send.
    pub offered_pps: f64,
    /// Packets per second the kernel accepted from the generator.
    pub sent_pps: f64,
    /// Packets per second the system under test received.
    pub sut_in_pps: f64,
    /// Packets per second the system under test sent.
    pub sut_out_pps: f64,
    /// Packets per second back at the generator.
    pub received_pps: f64,
    /// Generator-to-generator latency of forwarded/reflected packets, microseconds.
    pub latency_us: Option<Percentiles>,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UdpResult {
    /// The generator's own ceiling (unlimited rate into a socket nobody reads).
    pub generator_max_pps: f64,
    /// The bare reflector.
    pub reflector: RunResult,
    /// The engine.
    pub engine: RunResult,
    /// Engine packets out per second over reflector packets out per second.
    pub ratio_out: f64,
    /// Engine packets in per second over reflector packets in per second.
    pub ratio_in: f64,
}

/// How long the receiver keeps counting after the last send.
const DRAIN_NS: u64 = 100_000_000;

fn pin(core: usize) {
    // Best effort: the report names the core asked for.
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

/// What the generator saw.
#[derive(Clone, Debug)]
pub(crate) struct GenReport {
    pub(crate) offered: u64,
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) latency: Histogram<u64>,
    pub(crate) elapsed_ns: u64,
}

impl GenReport {
    /// Sending window plus drain, in seconds: the denominator of every rate.
    pub(crate) fn secs(&self) -> f64 {
        (self.elapsed_ns + DRAIN_NS) as f64 / 1e9
    }
}

/// Sends RTP to `targets` in rotation at `rate_pps` (0: unlimited) for `duration_ns`,
/// receiving on the same socket in a second thread; both pinned to `core`.
/// SSRCs are `ssrc_base + target index`. Shared by the loopback and veth runners.
pub(crate) fn generate(
    sock: &UdpSocket,
    ssrc_base: u32,
    targets: &[SocketAddrV4],
    rate_pps: u64,
    duration_ns: u64,
    core: usize,
    measure_latency: bool,
) -> Result<GenReport, BenchError> {
    let clock = Clock::new();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let rx_sock = sock.try_clone()?;
    let rx = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || -> Histogram<u64> {
            pin(core);
            let mut h = Histogram::new_with_bounds(1, 10_000_000_000, 3)
                .expect("constant bounds are valid");
            let mut m = Mmsg::new();
            while !stop.load(Ordering::Relaxed) {
                let n = m.recv(&rx_sock).unwrap_or(0);
                let now = clock.now().as_nanos();
                for i in 0..n {
                    let (_, p) = m.received(i);
                    if measure_latency && p.len() >= 20 {
                        let mut ts = [0u8; 8];
                        ts.copy_from_slice(&p[12..20]);
                        let sent = u64::from_le_bytes(ts);
                        let _ = h.record(now.saturating_sub(sent).max(1));
                    }
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
            h
        })
    };
    pin(core);
    let tone: [u8; FRAME_SAMPLES] = tone_frame(Codec::Pcmu, &voice(0), 0);
    let mut m = Mmsg::new();
    for i in 0..BATCH {
        m.buf_mut(i)[HEADER_LEN..PACKET_LEN].copy_from_slice(&tone);
    }
    let mut seq = vec![0u16; targets.len()];
    let (mut offered, mut sent, mut next_target) = (0u64, 0u64, 0usize);
    let start = clock.now().as_nanos();
    loop {
        let now = clock.now().as_nanos() - start;
        if now >= duration_ns {
            break;
        }
        let due = if rate_pps == 0 {
            offered + BATCH as u64
        } else {
            (u128::from(now) * u128::from(rate_pps) / 1_000_000_000) as u64 + 1
        };
        let n = due.saturating_sub(offered).min(BATCH as u64) as usize;
        if n == 0 {
            // Yield rather than spin: the receiver shares this core, and a spinning
            // sender would add a scheduler timeslice to every latency sample.
            std::thread::yield_now();
            continue;
        }
        let stamp = clock.now().as_nanos();
        for i in 0..n {
            let t = next_target;
            next_target = (next_target + 1) % targets.len();
            let s = seq[t];
            seq[t] = s.wrapping_add(1);
            let buf = m.buf_mut(i);
            RtpHeader::pcmu(s, u32::from(s) * 160, ssrc_base + t as u32)
                .with_marker(s == 0)
                .write(buf);
            buf[12..20].copy_from_slice(&stamp.to_le_bytes());
            m.set_send(i, targets[t], PACKET_LEN);
        }
        offered += n as u64;
        // A full socket buffer (ENOBUFS under an unlimited rate) counts as not sent.
        sent += m.send(sock, n).unwrap_or(0) as u64;
    }
    let elapsed_ns = clock.now().as_nanos() - start;
    // Let in-flight packets land before stopping the receiver.
    let drain_until = clock.now().as_nanos() + DRAIN_NS;
    while clock.now().as_nanos() < drain_until {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    let latency = rx
        .join()
        .map_err(|_| std::io::Error::other("receiver panicked"))?;
    Ok(GenReport {
        offered,
        sent,
        received: received.load(Ordering::Relaxed),
        latency,
        elapsed_ns,
    })
}

pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

pub(crate) fn local_v4(sock: &UdpSocket) -> Result<SocketAddrV4, BenchError> {
    match sock.local_addr()? {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(_) => Err(std::io::Error::other("expected an IPv4 socket").into()),
    }
}

/// Counters of a running reflector.
#[derive(Debug, Default)]
pub struct ReflectorCounters {
    /// Datagrams received.
    pub packets_in: AtomicU64,
    /// Datagrams sent back.
    pub packets_out: AtomicU64,
}

/// The bare reflector: receives batches of 64 on `sock` and sends each datagram back
/// to its source, unchanged, until `stop`. Pinned to `core`.
pub fn run_reflector(
    sock: &UdpSocket,
    core: usize,
    stop: &AtomicBool,
    counters: &ReflectorCounters,
) -> Result<(), BenchError> {
    pin(core);
    let mut m = Mmsg::new();
    while !stop.load(Ordering::Relaxed) {
        let n = m.recv(sock)?;
        if n == 0 {
            continue;
        }
        for i in 0..n {
            let (src, p) = m.received(i);
            let len = p.len();
            m.set_send(i, src, len);
        }
        let sent = m.send(sock, n)?;
        counters.packets_in.fetch_add(n as u64, Ordering::Relaxed);
        counters
            .packets_out
            .fetch_add(sent as u64, Ordering::Relaxed);
    }
    Ok(())
}

fn run_result(target: &str, g: &GenReport, sut_in: u64, sut_out: u64, lat: bool) -> RunResult {
    // Rates over the sending window plus the drain, during which both systems still
    // count what was in flight.
    let secs = (g.elapsed_ns + DRAIN_NS) as f64 / 1e9;
    RunResult {
        target: target.to_string(),
        offered_pps: g.offered as f64 / secs,
        sent_pps: g.sent as f64 / secs,
        sut_in_pps: sut_in as f64 / secs,
        sut_out_pps: sut_out as f64 / secs,
        received_pps: g.received as f64 / secs,
        latency_us: lat.then(|| percentiles_us(&g.latency)),
    }
}

pub(crate) fn block_on_call(api: &dyn EngineApi, req: Request) -> Result<Response, BenchError> {
    Ok(pollster::block_on(api.call(req))?)
}

/// Programs `sessions` sessions of `legs_per` legs whose remotes are all `peer`, every
/// leg hearing every other (2 legs: a forwarded pair; 3: a barge); session keys are
/// `prefix` and a number. Returns every leg's local RTP address, the generator's
/// targets. Shared by the loopback and veth runners.
pub(crate) fn program_sessions(
    api: &dyn EngineApi,
    prefix: &str,
    sessions: u32,
    legs_per: usize,
    peer: SocketAddrV4,
) -> Result<Vec<SocketAddrV4>, BenchError> {
    let mut call = |r| pollster::block_on(api.call(r));
    let edges = all_hear_all(legs_per);
    let mut targets = Vec::new();
    for s in 0..sessions {
        let session = format!("{prefix}{s}");
        let mut ids: Vec<LegId> = Vec::with_capacity(legs_per);
        for k in 0..legs_per {
            let media = pcmu_media(Some(SocketAddr::V4(peer)));
            let info = add_leg(&mut call, &session, &format!("p{k}"), IpFamily::V4, media)?;
            ids.push(info.leg);
            match info.local {
                SocketAddr::V4(a) => targets.push(a),
                SocketAddr::V6(_) => return Err(std::io::Error::other("IPv6 leg").into()),
            }
        }
        set_plan(&mut call, plan(&session, &ids, &edges, &[]))?;
    }
    Ok(targets)
}

fn engine_counts(api: &dyn EngineApi) -> Result<(String, u64, u64), BenchError> {
    let Response::Stats(stats) = block_on_call(api, Request::Stats)? else {
        return Err(BenchError::UnexpectedResponse("Stats"));
    };
    let (i, o) = stats
        .shards
        .iter()
        .fold((0, 0), |(i, o), s| (i + s.packets_in, o + s.packets_out));
    Ok((stats.backend, i, o))
}

/// One shard pinned to `core` on `backend` (no fallback), room for `sessions` barges.
pub(crate) fn engine_config(
    backend: &str,
    core: usize,
    sessions: u32,
) -> Result<EngineConfig, BenchError> {
    Ok(EngineConfig {
        shards: 1,
        pin: true,
        cores: vec![core],
        backend: parse_kind(backend)?,
        fallback: false,
        max_legs_per_shard: (sessions * 3).max(16),
        max_sessions_per_shard: sessions.max(1),
        seed: 1,
        // Below the kernel's ephemeral range (32768..60999), where the generator's own
        // sockets live.
        port_base: 16384,
        ports_per_shard: 16384,
        socket: std::env::temp_dir().join("earshot-bench-unused.sock"),
        ..EngineConfig::default()
    })
}

/// Runs the three measurements of the module docs.
pub fn compare(p: &UdpParams) -> Result<UdpResult, BenchError> {
    let duration_ns = p.duration_ms * 1_000_000;
    let rate = if p.mode == Mode::Barge {
        u64::from(p.sessions) * 3 * 50
    } else {
        p.rate_pps
    };
    let measure_latency = p.mode == Mode::Forward;
    // 1. The generator's ceiling, into a socket nobody reads.
    let sink = net::bind(loopback(0))?;
    let sink_addr = local_v4(&sink)?;
    let g = generate(
        &net::bind(loopback(0))?,
        0x2000_0000,
        &[sink_addr],
        0,
        duration_ns.min(1_000_000_000),
        p.gen_core,
        false,
    )?;
    let generator_max_pps = g.sent as f64 / (g.elapsed_ns as f64 / 1e9);
    drop(sink);
    eprintln!("udp: generator max {generator_max_pps:.0} pps");

    // 2. The bare reflector.
    let refl_sock = net::bind(loopback(0))?;
    let refl_addr = local_v4(&refl_sock)?;
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(ReflectorCounters::default());
    let refl = {
        let (stop, counters, core) = (stop.clone(), counters.clone(), p.sut_core);
        std::thread::spawn(move || run_reflector(&refl_sock, core, &stop, &counters))
    };
    let g = generate(
        &net::bind(loopback(0))?,
        0x2000_0000,
        &[refl_addr],
        rate,
        duration_ns,
        p.gen_core,
        true,
    )?;
    stop.store(true, Ordering::Relaxed);
    refl.join()
        .map_err(|_| std::io::Error::other("reflector panicked"))??;
    let reflector = run_result(
        "reflector",
        &g,
        counters.packets_in.load(Ordering::Relaxed),
        counters.packets_out.load(Ordering::Relaxed),
        true,
    );
    eprintln!("udp: reflector {reflector:?}");

    // 3. The engine.
    let cfg = engine_config(&p.backend, p.sut_core, p.sessions)?;
    let mut factory = Factory::new(&cfg)?;
    let engine = Engine::start(&cfg, |i| factory.open(i))?;
    let api = engine.handle();
    let gen_sock = net::bind(loopback(0))?;
    let peer = local_v4(&gen_sock)?;
    let legs_per = if p.mode == Mode::Forward { 2 } else { 3 };
    let targets = program_sessions(api.as_ref(), "s", p.sessions, legs_per, peer)?;
    // Mixing sessions tick (and send) from the moment they are programmed: count only
    // the generation window (and its drain), as for the reflector.
    let (_, in0, out0) = engine_counts(api.as_ref())?;
    let g = generate(
        &gen_sock,
        0x2000_0000,
        &targets,
        rate,
        duration_ns,
        p.gen_core,
        measure_latency,
    )?;
    let (backend_name, in1, out1) = engine_counts(api.as_ref())?;
    let (sin, sout) = (in1 - in0, out1 - out0);
    // Where the missing packets went: the shard's drops and the backend's own counters.
    if let Ok(Response::Stats(stats)) = block_on_call(api.as_ref(), Request::Stats) {
        for s in &stats.shards {
            let nonzero = |v: &Vec<(String, u64)>| {
                v.iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(k, n)| format!("{k}={n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            eprintln!(
                "udp: shard {} drops [{}] backend [{}] late_ticks={} stalls={}",
                s.shard,
                nonzero(&s.drops),
                nonzero(&s.backend_counters),
                s.late_ticks,
                s.stalls
            );
        }
    }
    drop(api);
    engine.shutdown();
    let engine_run = run_result(
        &format!("engine/{backend_name}"),
        &g,
        sin,
        sout,
        measure_latency,
    );
    eprintln!("udp: engine {engine_run:?}");
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ok(UdpResult {
        generator_max_pps,
        ratio_out: ratio(engine_run.sut_out_pps, reflector.sut_out_pps),
        ratio_in: ratio(engine_run.sut_in_pps, reflector.sut_in_pps),
        reflector,
        engine: engine_run,
    })
}

/// Runs the bare reflector alone on `port` for `duration_ms` (for use with an external
/// generator); returns (packets in, packets out).
pub fn reflector_alone(port: u16, core: usize, duration_ms: u64) -> Result<(u64, u64), BenchError> {
    let sock = net::bind(loopback(port))?;
    eprintln!("reflector: listening on {}", sock.local_addr()?);
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(ReflectorCounters::default());
    let t = {
        let (stop, counters) = (stop.clone(), counters.clone());
        std::thread::spawn(move || run_reflector(&sock, core, &stop, &counters))
    };
    let clock = Clock::new();
    while clock.now().as_nanos() < duration_ms * 1_000_000 {
        std::thread::park_timeout(std::time::Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    t.join()
        .map_err(|_| std::io::Error::other("reflector panicked"))??;
    Ok((
        counters.packets_in.load(Ordering::Relaxed),
        counters.packets_out.load(Ordering::Relaxed),
    ))
}
