//! AF_XDP vs io_uring vs sockets on a veth pair, in one run (`earshot-bench veth`).
//!
//! Two network namespaces joined by a veth pair (`ve` 10.77.0.1 in the engine namespace,
//! `vp` 10.77.0.2 in the peer namespace), created at start and deleted on exit (also on
//! error). The generator (batched sendmmsg, its clock stamped into every payload, a
//! receiver thread beside it) runs on `gen_core` with its socket in the peer namespace;
//! every system under test runs on `sut_core` in the engine namespace:
//! 0. the generator alone into a port nobody reads: its own ceiling;
//! 1. a bare batched UDP reflector (recvmmsg/sendmmsg, 64; the baseline of every ratio);
//! 2. an AF_XDP reflector on `earshot-afxdp` directly (XDP program, one XSK on queue 0,
//!    each frame answered with addresses and ports swapped, built in UMEM);
//! 3. the engine, one shard, on each backend asked for (`af_xdp`, `io_uring`, `socket`),
//!    carrying forwarded 2-leg sessions (the monitor path: payload untouched).
//!
//! Each system gets two bounded passes: first a latency pass at a fixed offered rate for
//! the generator-to-generator latency of forwarded packets, then a throughput pass (the
//! generator unlimited) for packets per second in and out of the SUT core, with the busy
//! share of both cores read from /proc/stat.
//!
//! What it deliberately does not do: judge veth numbers as NIC numbers (docs/perf.md
//! says what they do and do not predict), or run without root (it needs CAP_NET_ADMIN,
//! CAP_BPF and CAP_IPC_LOCK; it fails naming the step that was refused).
//!
//! The namespaces and the veth pair are the test kit's guards (`earshot_testkit::netns`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use earshot_afxdp::frame::{Ipv4Ident, UdpHeaders, parse_udp};
use earshot_afxdp::{AttachMode, XdpFilter, XdpProgram, XskConfig, XskSocket};
use earshot_engine::backend::{Factory, parse_kind};
use earshot_engine::config::EngineConfig;
use earshot_engine::core::stats::percentiles_us;
use earshot_engine::engine::{Engine, EngineHandle};
use earshot_engine_api::{EngineApi, Percentiles, Request, Response};
use earshot_testkit::netns::{self, VethConfig, VethPair};
use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::machine::CoreTimes;
use crate::net::{self, BATCH};
use crate::udp::{ReflectorCounters, generate, program_sessions, run_reflector};

const ENGINE_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PEER_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const SINK_PORT: u16 = 9000;
const REFLECTOR_PORT: u16 = 9001;
const XDP_REFLECTOR_PORT: u16 = 9002;
/// The engines' port blocks, one per backend case (below the kernel's ephemeral range,
/// where the generator's sockets live). Each case gets its own block because an
/// io_uring instance releases its sockets asynchronously after the engine stops, so the
/// next engine could find its ports still bound.
const ENGINE_PORT_BASE: u16 = 16384;
const ENGINE_PORTS: u32 = 4096;
const ENGINE_PORT_BLOCKS: usize = 4;
/// How long the receiver keeps counting after the last send.
const DRAIN_NS: u64 = 100_000_000;
/// MTU of the veth pair (the default).
const MTU: usize = 1500;

/// Parameters of one veth run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VethParams {
    /// Engine backends to measure, in order ("af_xdp", "io_uring", "socket").
    pub backends: Vec<String>,
    /// Forwarded 2-leg sessions programmed into the engine.
    pub sessions: u32,
    /// Milliseconds per pass (each system gets a throughput and a latency pass).
    pub duration_ms: u64,
    /// Offered packets per second in the latency pass.
    pub latency_rate_pps: u64,
    /// Core of the system under test.
    pub sut_core: usize,
    /// Core of the generator (sender and receiver threads).
    pub gen_core: usize,
}

/// One system under test, both passes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseResult {
    /// "reflector/socket", "reflector/af_xdp" or "engine/<backend>".
    pub target: String,
    /// Throughput pass: packets per second the generator got out.
    pub sent_pps: f64,
    /// Throughput pass: packets per second the SUT received (its core).
    pub sut_in_pps: f64,
    /// Throughput pass: packets per second the SUT sent (its core).
    pub sut_out_pps: f64,
    /// Throughput pass: packets per second back at the generator.
    pub received_pps: f64,
    /// Throughput pass: busy share (user, system, irq, softirq) of the SUT core, 0..1.
    /// On veth the receive softirq (XDP, the UDP stack) runs on the sender's core, so
    /// this is only part of the SUT's cost.
    pub sut_core_busy: f64,
    /// Throughput pass: busy share of the generator core, 0..1.
    pub gen_core_busy: f64,
    /// `sut_in_pps` over the socket reflector's.
    pub ratio_in: f64,
    /// `sut_out_pps` over the socket reflector's.
    pub ratio_out: f64,
    /// Latency pass: offered packets per second.
    pub latency_offered_pps: f64,
    /// Latency pass: packets per second back at the generator.
    pub latency_received_pps: f64,
    /// Latency pass: generator-to-generator latency, microseconds.
    pub latency_us: Percentiles,
}

/// A whole veth run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VethResult {
    /// The generator's own ceiling across the veth (unlimited, into a port nobody reads).
    pub generator_max_pps: f64,
    /// Every system under test, the socket reflector first.
    pub cases: Vec<CaseResult>,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> BenchError {
    std::io::Error::other(format!("{what}: {e}")).into()
}

/// The engine's namespace (`ve`, 10.77.0.1) and the peer's (`vp`, 10.77.0.2).
fn veth_pair() -> Result<VethPair, BenchError> {
    Ok(VethPair::new(
        "bench",
        VethConfig {
            prefix_a: "ebe",
            prefix_b: "ebp",
            ..VethConfig::v4(77)
        },
    )?)
}

fn pin(core: usize) {
    // Best effort: the report names the core asked for.
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

/// A system under test: counts what it received and sent since it started.
trait Sut {
    fn counts(&self) -> Result<(u64, u64), BenchError>;
    fn stop(self: Box<Self>) -> Result<(), BenchError>;
}

/// A reflector thread (socket or AF_XDP) with shared counters.
struct ReflectorSut {
    stop: Arc<AtomicBool>,
    counters: Arc<ReflectorCounters>,
    thread: std::thread::JoinHandle<Result<(), BenchError>>,
}

impl Sut for ReflectorSut {
    fn counts(&self) -> Result<(u64, u64), BenchError> {
        Ok((
            self.counters.packets_in.load(Ordering::Relaxed),
            self.counters.packets_out.load(Ordering::Relaxed),
        ))
    }

    fn stop(self: Box<Self>) -> Result<(), BenchError> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| io_err("reflector", "panicked"))?
    }
}

/// The AF_XDP reflector loop: every UDP frame the program redirects is answered from a
/// TX frame of the same UMEM with MACs, addresses and ports swapped.
fn run_xdp_reflector(
    core: usize,
    stop: &AtomicBool,
    counters: &ReflectorCounters,
    ready: mpsc::Sender<Result<(), String>>,
) -> Result<(), BenchError> {
    let addrs = [IpAddr::V4(ENGINE_V4)];
    let filter = XdpFilter {
        port_ranges: &[(XDP_REFLECTOR_PORT, XDP_REFLECTOR_PORT)],
        addrs: &addrs,
    };
    let setup = XdpProgram::attach("ve", &filter, AttachMode::Auto).and_then(|program| {
        let xsk = XskSocket::open("ve", 0, &XskConfig::default())?;
        xsk.register(&program)?;
        Ok((program, xsk))
    });
    let (_program, mut xsk) = match setup {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return Err(io_err("AF_XDP reflector", e));
        }
    };
    pin(core);
    let mut ident = Ipv4Ident::new(1);
    while !stop.load(Ordering::Relaxed) {
        let mut sent = 0u64;
        let n = xsk.recv_batch_with_tx(BATCH, |frame, tx| {
            let Ok(rx) = parse_udp(frame) else {
                return;
            };
            let headers = UdpHeaders::reply_to(&rx);
            let payload = &frame[rx.payload.clone()];
            let id = ident.next_id();
            let cap = tx.frame_capacity();
            let ok = tx.send_with(cap, |buf| {
                let at = headers.header_len();
                if at + payload.len() > buf.len() {
                    return 0;
                }
                buf[at..at + payload.len()].copy_from_slice(payload);
                headers.emit(buf, payload.len(), MTU, id).unwrap_or(0)
            });
            sent += u64::from(ok);
        });
        xsk.flush();
        counters.packets_in.fetch_add(n as u64, Ordering::Relaxed);
        counters.packets_out.fetch_add(sent, Ordering::Relaxed);
        if n == 0 {
            xsk.wait_readable(1);
        }
    }
    Ok(())
}

/// The engine on one backend, started in the engine namespace; the thread that owns it
/// waits for the stop signal.
struct EngineSut {
    handle: Arc<EngineHandle>,
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

fn call(api: &dyn EngineApi, req: Request) -> Result<Response, BenchError> {
    Ok(pollster::block_on(api.call(req))?)
}

impl Sut for EngineSut {
    fn counts(&self) -> Result<(u64, u64), BenchError> {
        let Response::Stats(stats) = call(self.handle.as_ref(), Request::Stats)? else {
            return Err(BenchError::UnexpectedResponse("Stats"));
        };
        Ok(stats
            .shards
            .iter()
            .fold((0, 0), |(i, o), s| (i + s.packets_in, o + s.packets_out)))
    }

    fn stop(self: Box<Self>) -> Result<(), BenchError> {
        let _ = self.stop.send(());
        drop(self.handle);
        self.thread
            .join()
            .map_err(|_| io_err("engine thread", "panicked"))
    }
}

fn start_engine(
    ns: &str,
    p: &VethParams,
    backend: &str,
    block: usize,
) -> Result<EngineSut, BenchError> {
    let cfg = EngineConfig {
        shards: 1,
        pin: true,
        cores: vec![p.sut_core],
        backend: parse_kind(backend)?,
        fallback: false,
        interface: Some("ve".into()),
        bind_v4: Some(ENGINE_V4),
        max_legs_per_shard: (p.sessions * 2).max(16),
        max_sessions_per_shard: p.sessions.max(1),
        seed: 1,
        port_base: ENGINE_PORT_BASE + (block % ENGINE_PORT_BLOCKS) as u16 * ENGINE_PORTS as u16,
        ports_per_shard: ENGINE_PORTS,
        socket: std::env::temp_dir().join("earshot-bench-veth-unused.sock"),
        ..EngineConfig::default()
    };
    let (tx, rx) = mpsc::channel::<Result<Arc<EngineHandle>, String>>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let ns = ns.to_string();
    let thread = std::thread::spawn(move || {
        // Shard threads inherit this thread's namespace.
        let started = netns::enter(&ns).map_err(|e| e.to_string()).and_then(|()| {
            let mut factory = Factory::new(&cfg).map_err(|e| e.to_string())?;
            let engine = Engine::start(&cfg, |i| factory.open(i)).map_err(|e| e.to_string())?;
            Ok((factory, engine))
        });
        match started {
            Ok((factory, engine)) => {
                let _ = tx.send(Ok(engine.handle()));
                let _ = stop_rx.recv();
                engine.shutdown();
                drop(factory);
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    let handle = rx
        .recv()
        .map_err(|_| io_err("engine thread", "exited"))?
        .map_err(|e| io_err(&format!("engine on {backend}"), e))?;
    Ok(EngineSut {
        handle,
        stop: stop_tx,
        thread,
    })
}

/// Busy share of a core between two readings, 0..1, counting stolen time as busy (the
/// core was not free for the system under test); 0 if unreadable.
fn busy_share(before: Option<CoreTimes>, after: Option<CoreTimes>) -> f64 {
    before
        .zip(after)
        .and_then(|(b, a)| b.shares_until(&a))
        .map_or(0.0, |(busy, steal)| busy + steal)
}

/// Both passes against one running SUT.
fn measure(
    target: &str,
    sut: &dyn Sut,
    sock: &UdpSocket,
    targets: &[SocketAddrV4],
    p: &VethParams,
) -> Result<CaseResult, BenchError> {
    let duration_ns = p.duration_ms * 1_000_000;
    // Latency first: an unlimited pass leaves a backlog in the SUT's socket buffers (one
    // per leg for the engine) that would otherwise be measured as latency.
    let lat = generate(
        sock,
        0x4000_0000,
        targets,
        p.latency_rate_pps,
        duration_ns,
        p.gen_core,
        true,
    )?;
    let (in0, out0) = sut.counts()?;
    let core = |c: usize| CoreTimes::read(Some(c));
    let (sut0, gen0) = (core(p.sut_core), core(p.gen_core));
    let g = generate(sock, 0x3000_0000, targets, 0, duration_ns, p.gen_core, true)?;
    let (sut1, gen1) = (core(p.sut_core), core(p.gen_core));
    let (in1, out1) = sut.counts()?;
    let r = CaseResult {
        target: target.to_string(),
        sent_pps: g.sent as f64 / g.secs(),
        sut_in_pps: (in1 - in0) as f64 / g.secs(),
        sut_out_pps: (out1 - out0) as f64 / g.secs(),
        received_pps: g.received as f64 / g.secs(),
        sut_core_busy: busy_share(sut0, sut1),
        gen_core_busy: busy_share(gen0, gen1),
        ratio_in: 0.0,
        ratio_out: 0.0,
        latency_offered_pps: lat.offered as f64 / lat.secs(),
        latency_received_pps: lat.received as f64 / lat.secs(),
        latency_us: percentiles_us(&lat.latency),
    };
    eprintln!(
        "veth: {target}: in {:.0} pps, out {:.0} pps, SUT core {:.0}% busy, generator core {:.0}% (generator sent {:.0}, got back {:.0}); at {:.0} pps ({:.0} back, {} samples) p50 {:.1} us p99 {:.1} us",
        r.sut_in_pps,
        r.sut_out_pps,
        100.0 * r.sut_core_busy,
        100.0 * r.gen_core_busy,
        r.sent_pps,
        r.received_pps,
        r.latency_offered_pps,
        r.latency_received_pps,
        r.latency_us.count,
        r.latency_us.p50,
        r.latency_us.p99
    );
    Ok(r)
}

fn peer_socket(pair: &VethPair) -> Result<UdpSocket, BenchError> {
    Ok(pair
        .b
        .run(|| net::bind(SocketAddr::V4(SocketAddrV4::new(PEER_V4, 0))))?)
}

fn local_v4(sock: &UdpSocket) -> Result<SocketAddrV4, BenchError> {
    match sock.local_addr()? {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(_) => Err(io_err("socket", "expected IPv4")),
    }
}

/// Runs every measurement of the module docs once.
pub fn run(p: &VethParams) -> Result<VethResult, BenchError> {
    let pair = veth_pair()?;
    let duration_ns = p.duration_ms * 1_000_000;

    // 0. The generator's ceiling: unlimited, into a bound socket nobody reads.
    let sink = pair
        .a
        .run(|| net::bind(SocketAddr::V4(SocketAddrV4::new(ENGINE_V4, SINK_PORT))))?;
    let g = generate(
        &peer_socket(&pair)?,
        0x2000_0000,
        &[local_v4(&sink)?],
        0,
        duration_ns.min(1_000_000_000),
        p.gen_core,
        false,
    )?;
    let generator_max_pps = g.sent as f64 / (g.secs() - DRAIN_NS as f64 / 1e9);
    drop(sink);
    eprintln!("veth: generator max {generator_max_pps:.0} pps");

    let mut cases = Vec::new();
    // 1. The socket reflector.
    {
        let sock = pair
            .a
            .run(|| net::bind(SocketAddr::V4(SocketAddrV4::new(ENGINE_V4, REFLECTOR_PORT))))?;
        let target = local_v4(&sock)?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(ReflectorCounters::default());
        let thread = {
            let (stop, counters, core) = (stop.clone(), counters.clone(), p.sut_core);
            std::thread::spawn(move || run_reflector(&sock, core, &stop, &counters))
        };
        let sut = Box::new(ReflectorSut {
            stop,
            counters,
            thread,
        });
        let r = measure(
            "reflector/socket",
            sut.as_ref(),
            &peer_socket(&pair)?,
            &[target],
            p,
        );
        sut.stop()?;
        cases.push(r?);
    }
    // 2. The AF_XDP reflector.
    {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(ReflectorCounters::default());
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let (stop, counters, core) = (stop.clone(), counters.clone(), p.sut_core);
            pair.a
                .spawn(move || run_xdp_reflector(core, &stop, &counters, ready_tx))
        };
        let ready = ready_rx.recv().unwrap_or(Err("thread exited".into()));
        let sut = Box::new(ReflectorSut {
            stop,
            counters,
            thread,
        });
        if let Err(e) = ready {
            let _ = sut.stop();
            return Err(io_err("AF_XDP reflector", e));
        }
        let target = SocketAddrV4::new(ENGINE_V4, XDP_REFLECTOR_PORT);
        let r = measure(
            "reflector/af_xdp",
            sut.as_ref(),
            &peer_socket(&pair)?,
            &[target],
            p,
        );
        sut.stop()?;
        cases.push(r?);
    }
    // 3. The engine on each backend.
    for (block, backend) in p.backends.iter().enumerate() {
        let sut = Box::new(start_engine(pair.a.name(), p, backend, block)?);
        let sock = peer_socket(&pair)?;
        let r = program_sessions(sut.handle.as_ref(), "v", p.sessions, 2, local_v4(&sock)?)
            .and_then(|targets| {
                measure(
                    &format!("engine/{backend}"),
                    sut.as_ref(),
                    &sock,
                    &targets,
                    p,
                )
            });
        sut.stop()?;
        cases.push(r?);
    }

    let (base_in, base_out) = (cases[0].sut_in_pps, cases[0].sut_out_pps);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    for c in &mut cases {
        c.ratio_in = ratio(c.sut_in_pps, base_in);
        c.ratio_out = ratio(c.sut_out_pps, base_out);
    }
    drop(pair);
    Ok(VethResult {
        generator_max_pps,
        cases,
    })
}
