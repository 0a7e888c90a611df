//! Barge capacity through real UDP on loopback, in steps: one engine shard pinned to
//! `sut_core`, the generator (sender and receiver) pinned to `gen_core`.
//!
//! Each step starts a fresh engine, programs N 3-party barge sessions (every leg's
//! remote is the generator's socket), and offers every leg one 172-byte PCMU packet per
//! 20 ms (150 pps per session) for `step_ms`. What a step records, all as differences
//! across the step unless said otherwise:
//! - rates: offered, accepted by the kernel, received and sent by the engine, the
//!   engine's expected output (3 legs x 50 pps per session), back at the generator;
//! - the shard's ticks and late ticks (count and share), its stalled iterations, and
//!   tick lateness and processing percentiles (these two over the engine's life: setup
//!   and the step; the shard keeps no per-step histogram);
//! - the shard thread's busy share (its CPU time from `/proc/self/task/<tid>/schedstat`
//!   over wall time: the runtime loop sleeps when idle, so this is the share of a core
//!   it needed) and the core's busy share from `/proc/stat` (softirq work and anything
//!   else on the core included);
//! - CPU microseconds per packet: the shard thread's CPU time over packets in plus
//!   out (each direction counted), and the same from the core's busy time;
//! - the machine's stall record (the shard thread's runnable wait, steal and other load
//!   on its core), from the capacity runner's probe.
//!
//! With `shard_fifo` the shard thread runs `SCHED_FIFO` (priority 10): on a shared
//! machine other processes on the shard's core otherwise keep it waiting runnable
//! (the stall record's `run_delay_ms`) and its ticks late whatever the engine does;
//! a production shard has its core to itself (isolated, or real-time priority).
//!
//! A step passes with zero late ticks, zero drops and send failures, and the engine
//! receiving at least 99% of what the kernel accepted from the generator. The ramp
//! stops after a step whose shard thread was saturated (busy >= 98%) or which received less
//! than 95% of what was sent.
#![allow(unsafe_code)] // sched_setscheduler on the shard thread (`shard_fifo`)

use earshot_engine::backend::Factory;
use earshot_engine::clock::Clock;
use earshot_engine::engine::Engine;
use earshot_engine_api::{EngineApi, EngineError, Percentiles, Request, Response, ShardStats};
use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::capacity::{MachineProbe, StallRecord, Watched};
use crate::net;
use crate::udp::{
    UdpParams, block_on_call, engine_config, generate, local_v4, loopback, program_sessions,
};

/// Packets per second a barge session is offered (3 legs at 50 pps).
const PPS_PER_SESSION: u64 = 150;

/// The name the engine gives shard 0's thread (`earshot-shard-<i>`).
const SHARD_THREAD: &str = "earshot-shard-0";

/// Backend counters that count a datagram the engine built but could not send.
const SEND_FAILURES: [&str; 4] = ["tx_full", "tx_would_block", "tx_errors", "tx_no_port"];

/// What one step measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RampStep {
    /// Barge sessions carried.
    pub sessions: u32,
    /// Wall time of the measured window (sending plus the drain), milliseconds.
    pub wall_ms: u64,
    /// Time spent starting the engine and programming the sessions, milliseconds.
    pub setup_ms: u64,
    /// Packets per second the generator tried to send.
    pub offered_pps: f64,
    /// Packets per second the kernel accepted from the generator.
    pub sent_pps: f64,
    /// Packets per second the engine received.
    pub engine_in_pps: f64,
    /// Packets per second the engine sent.
    pub engine_out_pps: f64,
    /// Packets per second the engine should send: 3 legs x 50 pps per session.
    pub expected_out_pps: f64,
    /// Packets per second back at the generator.
    pub received_pps: f64,
    /// Ticks run during the window.
    pub ticks: u64,
    /// Ticks that started later than the engine's threshold (2 ms) during the window.
    pub late_ticks: u64,
    /// `late_ticks / ticks`.
    pub late_tick_share: f64,
    /// Tick lateness percentiles, microseconds, over the engine's life.
    pub tick_lateness_us: Percentiles,
    /// Tick processing time percentiles, microseconds, over the engine's life.
    pub tick_processing_us: Percentiles,
    /// Shard loop iterations longer than the stall budget (2.5 ms) during the window.
    pub shard_stalls: u64,
    /// Datagrams the shard dropped during the window, all reasons.
    pub drops: u64,
    /// Datagrams built but not sent (the backend's `tx_*` failure counters).
    pub send_failures: u64,
    /// Non-zero shard drop reasons and backend counters during the window.
    pub counters: Vec<(String, u64)>,
    /// The shard thread's CPU time over wall time.
    pub shard_busy_share: Option<f64>,
    /// The core's busy share (`/proc/stat`: the shard, softirqs, anything else).
    pub core_busy_share: Option<f64>,
    /// The shard thread's CPU time per packet in or out, microseconds.
    pub cpu_us_per_packet: Option<f64>,
    /// The core's busy time per packet in or out, microseconds.
    pub core_us_per_packet: Option<f64>,
    /// The machine's side: the shard thread's runnable wait, steal, other load.
    pub stall: StallRecord,
    /// Zero late ticks, drops and send failures; at least 99% of sent received.
    pub passed: bool,
}

/// A stepped run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RampResult {
    /// The generator's own ceiling (unlimited rate into a socket nobody reads).
    pub generator_max_pps: f64,
    /// Every step, in the order run.
    pub steps: Vec<RampStep>,
    /// The largest session count whose step passed.
    pub max_sessions_passed: Option<u32>,
    /// Seconds the run took.
    pub elapsed_s: f64,
}

/// One line per step for the operator.
pub fn step_line(r: &RampStep) -> String {
    let pct = |v: Option<f64>| v.map_or_else(|| "?".into(), |x| format!("{:.1}%", 100.0 * x));
    let us = |v: Option<f64>| v.map_or_else(|| "?".into(), |x| format!("{x:.2}"));
    format!(
        "{} sessions, {:.1} s: in {:.0}/{:.0} pps, out {:.0}/{:.0} pps, back {:.0}; \
         busy shard {} core {}; late {}/{} ({:.2}%), lateness p99 {:.0} us max {:.0} us; \
         {} us/pkt (core {}); stalls {}, drops {}, send failures {}; machine: run delay {} ms, \
         steal {}, other load {} -> {}",
        r.sessions,
        r.wall_ms as f64 / 1000.0,
        r.engine_in_pps,
        r.sent_pps,
        r.engine_out_pps,
        r.expected_out_pps,
        r.received_pps,
        pct(r.shard_busy_share),
        pct(r.core_busy_share),
        r.late_ticks,
        r.ticks,
        100.0 * r.late_tick_share,
        r.tick_lateness_us.p99,
        r.tick_lateness_us.max,
        us(r.cpu_us_per_packet),
        us(r.core_us_per_packet),
        r.shard_stalls,
        r.drops,
        r.send_failures,
        r.stall
            .run_delay_ms
            .map_or_else(|| "?".into(), |x| format!("{x:.1}")),
        pct(r.stall.steal_share),
        pct(r.stall.other_load_share),
        if r.passed { "pass" } else { "FAIL" }
    )
}

/// Puts thread `tid` in `SCHED_FIFO` at priority 10: the machine's other work (builds
/// on the same core) can then no longer keep it waiting. The kernel still keeps 5% of
/// every second for other threads (`sched_rt_runtime_us`).
fn set_fifo(tid: i32) -> Result<(), BenchError> {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: sched_setscheduler reads one sched_param, which lives across the call.
    let r = unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().into())
    }
}

/// The kernel task id of this process's thread named `name`, if one runs.
fn thread_id(name: &str) -> Option<i32> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .filter_map(Result::ok)
        .find(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })?
        .file_name()
        .to_str()?
        .parse()
        .ok()
}

fn shard_stats(api: &dyn EngineApi) -> Result<ShardStats, BenchError> {
    let Response::Stats(stats) = block_on_call(api, Request::Stats)? else {
        return Err(BenchError::UnexpectedResponse("Stats"));
    };
    stats
        .shards
        .into_iter()
        .next()
        .ok_or(BenchError::UnexpectedResponse("Stats without a shard"))
}

/// `after - before` of every named counter, the non-zero ones.
fn counter_deltas(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .map(|(k, v)| {
            let b = before.iter().find(|(n, _)| n == k).map_or(0, |(_, b)| *b);
            (k.clone(), v.saturating_sub(b))
        })
        .filter(|(_, d)| *d > 0)
        .collect()
}

/// Runs one step of `sessions` barges for `step_ms`.
pub fn run_step(p: &UdpParams, sessions: u32, step_ms: u64) -> Result<RampStep, BenchError> {
    let setup_clock = Clock::new();
    let cfg = engine_config(&p.backend, p.sut_core, sessions)?;
    let mut factory = Factory::new(&cfg)?;
    let engine = Engine::start(&cfg, |i| factory.open(i))?;
    let api = engine.handle();
    let result = measure(p, api.as_ref(), sessions, step_ms, &setup_clock);
    drop(api);
    engine.shutdown();
    result
}

fn measure(
    p: &UdpParams,
    api: &dyn EngineApi,
    sessions: u32,
    step_ms: u64,
    setup_clock: &Clock,
) -> Result<RampStep, BenchError> {
    let gen_sock = net::bind(loopback(0))?;
    let peer = local_v4(&gen_sock)?;
    let targets = program_sessions(api, "s", sessions, 3, peer)?;
    let setup_ms = setup_clock.now().as_nanos() / 1_000_000;
    let tid = thread_id(SHARD_THREAD)
        .ok_or_else(|| std::io::Error::other("the shard thread is not running"))?;
    if p.shard_fifo {
        set_fifo(tid)?;
    }
    let s0 = shard_stats(api)?;
    let clock = Clock::new();
    let probe = MachineProbe::start(Some(p.sut_core), Watched::Task(tid));
    let rate = u64::from(sessions) * PPS_PER_SESSION;
    let g = generate(
        &gen_sock,
        0x2000_0000,
        &targets,
        rate,
        step_ms * 1_000_000,
        p.gen_core,
        false,
    )?;
    let wall_ns = clock.now().as_nanos();
    let probed = probe.finish(wall_ns);
    let s1 = shard_stats(api)?;
    let secs = g.secs();
    let (pin, pout) = (
        s1.packets_in.saturating_sub(s0.packets_in),
        s1.packets_out.saturating_sub(s0.packets_out),
    );
    let ticks = s1.ticks.saturating_sub(s0.ticks);
    let late_ticks = s1.late_ticks.saturating_sub(s0.late_ticks);
    let drop_deltas = counter_deltas(&s0.drops, &s1.drops);
    let backend_deltas = counter_deltas(&s0.backend_counters, &s1.backend_counters);
    let drops = drop_deltas.iter().map(|(_, n)| n).sum();
    let send_failures = backend_deltas
        .iter()
        .filter(|(k, _)| SEND_FAILURES.contains(&k.as_str()))
        .map(|(_, n)| n)
        .sum();
    let packets = (pin + pout).max(1) as f64;
    let per_packet = |ns: f64| ns / packets / 1000.0;
    let passed =
        late_ticks == 0 && drops == 0 && send_failures == 0 && pin as f64 >= 0.99 * g.sent as f64;
    Ok(RampStep {
        sessions,
        wall_ms: wall_ns / 1_000_000,
        setup_ms,
        offered_pps: g.offered as f64 / secs,
        sent_pps: g.sent as f64 / secs,
        engine_in_pps: pin as f64 / secs,
        engine_out_pps: pout as f64 / secs,
        expected_out_pps: rate as f64,
        received_pps: g.received as f64 / secs,
        ticks,
        late_ticks,
        late_tick_share: late_ticks as f64 / ticks.max(1) as f64,
        tick_lateness_us: s1.tick_lateness_us,
        tick_processing_us: s1.tick_processing_us,
        shard_stalls: s1.stalls.saturating_sub(s0.stalls),
        drops,
        send_failures,
        counters: drop_deltas.into_iter().chain(backend_deltas).collect(),
        shard_busy_share: probed.cpu_share,
        core_busy_share: probed.core_busy_share,
        cpu_us_per_packet: probed.cpu_ns.map(|ns| per_packet(ns as f64)),
        core_us_per_packet: probed
            .core_busy_share
            .map(|b| per_packet(b * wall_ns as f64)),
        stall: probed.stall,
        passed,
    })
}

/// Setup attempts of a step whose ports are still held (below).
const SETUP_ATTEMPTS: u32 = 10;

/// [`run_step`], retried after a second while the engine finds its ports held: the
/// previous step's sockets close with its io_uring ring, whose requests the kernel
/// cancels in the background, so the next step can find them still bound.
fn run_step_when_ports_free(
    p: &UdpParams,
    sessions: u32,
    step_ms: u64,
) -> Result<RampStep, BenchError> {
    let mut attempt = 1;
    loop {
        match run_step(p, sessions, step_ms) {
            Err(BenchError::Engine(EngineError::ResourceExhausted(why)))
                if attempt < SETUP_ATTEMPTS =>
            {
                eprintln!("udp-ramp: {sessions} sessions: {why}; again in 1 s");
                std::thread::park_timeout(std::time::Duration::from_secs(1));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Runs every step of `p.ramp` (the generator's ceiling first), stopping after a
/// saturated step.
pub fn ramp(p: &UdpParams) -> Result<RampResult, BenchError> {
    let clock = Clock::new();
    let step_ms = p.step_ms.unwrap_or(crate::capacity::DEFAULT_STEP_MS);
    let generator_max_pps = generator_ceiling(p.gen_core)?;
    eprintln!("udp-ramp: generator max {generator_max_pps:.0} pps");
    let mut steps = Vec::new();
    for &n in &p.ramp {
        let r = run_step_when_ports_free(p, n, step_ms)?;
        eprintln!("udp-ramp: {}", step_line(&r));
        let saturated =
            r.shard_busy_share.is_some_and(|b| b >= 0.98) || r.engine_in_pps < 0.95 * r.sent_pps;
        steps.push(r);
        if saturated {
            break;
        }
    }
    Ok(RampResult {
        generator_max_pps,
        max_sessions_passed: steps.iter().filter(|s| s.passed).map(|s| s.sessions).max(),
        steps,
        elapsed_s: clock.now().as_nanos() as f64 / 1e9,
    })
}

/// The generator's own ceiling: one second unlimited into a socket nobody reads.
fn generator_ceiling(core: usize) -> Result<f64, BenchError> {
    let sink = net::bind(loopback(0))?;
    let g = generate(
        &net::bind(loopback(0))?,
        0x2000_0000,
        &[local_v4(&sink)?],
        0,
        1_000_000_000,
        core,
        false,
    )?;
    Ok(g.sent as f64 / (g.elapsed_ns.max(1) as f64 / 1e9))
}
