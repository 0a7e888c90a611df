//! Capacity on one core: N 3-party barge sessions through one shard, in memory.
//!
//! A [`Shard`] is built directly (no runtime loop, no command queue) and driven from
//! the calling thread, pinned, on the real clock: every 20 ms each leg receives one
//! prebuilt 172-byte PCMU packet (12-byte RTP header, 160 bytes of tone), the packets
//! of one period spread evenly across it, and due ticks run between receive batches
//! exactly as the runtime loop runs them. Sends go to a discarding [`TxSink`] that
//! still lets the shard build (encode) every packet.
//!
//! The shard counts a tick late when it starts more than `late_tick_threshold_us` after
//! its deadline (2 ms, the engine default). A step passes when it saw zero late ticks
//! and the feeder kept up (so that a late tick cannot hide behind a starved shard).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use earshot_engine::clock::Clock;
use earshot_engine::core::io::{Datagram, MAX_UDP_PAYLOAD, TxSink};
use earshot_engine::core::ports::PortPool;
use earshot_engine::core::shard::{Shard, ShardCommand, ShardConfig};
use earshot_engine_api::{
    Edge, Family, LegId, MediaConfig, Percentiles, Response, SessionPlan, ShardStats,
};
use earshot_media::Codec;
use earshot_media::dsp::g711;
use earshot_media::dsp::mix::MixKernels;
use earshot_media::time::{Duration, Instant};
use serde::{Deserialize, Serialize};

use crate::BenchError;

/// RTP header plus 20 ms of PCMU.
pub const PACKET_LEN: usize = 172;
const RTP_HEADER_LEN: usize = 12;
const FRAME_SAMPLES: usize = 160;
const PERIOD_NS: u64 = 20_000_000;
const LEGS_PER_SESSION: usize = 3;
/// Datagrams handed to the shard between two tick checks, like one receive batch.
const FEED_BATCH: usize = 64;

/// Parameters of one capacity step.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct StepParams {
    /// Barge sessions (3 legs each).
    pub sessions: u32,
    /// How long the step feeds packets, in milliseconds (SPEC asks 60,000).
    pub step_ms: u64,
    /// Core to pin the shard's thread to, if any.
    pub core: Option<usize>,
    /// A tick starting more than this after its deadline is late (engine default 2000).
    pub late_tick_threshold_us: u64,
}

/// What one step measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepResult {
    /// Barge sessions carried.
    pub sessions: u32,
    /// Wall time the step fed packets, in milliseconds.
    pub step_ms: u64,
    /// Wall time spent setting the sessions up, in milliseconds.
    pub setup_ms: u64,
    /// Ticks run.
    pub ticks: u64,
    /// Ticks later than the threshold.
    pub late_ticks: u64,
    /// Datagrams the shard received.
    pub packets_in: u64,
    /// Datagrams the shard sent (mixed frames).
    pub packets_out: u64,
    /// Datagrams the shard dropped, all reasons.
    pub drops: u64,
    /// Tick processing time, microseconds.
    pub tick_processing_us: Percentiles,
    /// Tick lateness (start minus deadline), microseconds.
    pub tick_lateness_us: Percentiles,
    /// Largest delay between a packet's due time and its delivery to the shard, in
    /// microseconds: when it grows past a period the core could not keep up.
    pub feed_lag_max_us: u64,
    /// Longest gap between two iterations of the (spinning) loop, in microseconds:
    /// time the thread was not running at all, i.e. preempted by the machine.
    pub stall_max_us: u64,
    /// Fraction of the step's wall time spent inside the shard (receive and ticks).
    pub busy_fraction: f64,
    /// `sessions / busy_fraction`: the sessions one core would carry if the shard had
    /// it to itself, from the measured work per session (an estimate, not a pass).
    pub projected_sessions: f64,
    /// Zero late ticks and the feeder never fell a whole period behind.
    pub passed: bool,
}

/// A sink that lets the shard build every packet, then discards it.
#[derive(Debug)]
pub struct DiscardSink {
    buf: Box<[u8; MAX_UDP_PAYLOAD]>,
    /// Packets built.
    pub sent: u64,
}

impl DiscardSink {
    /// A sink with its one buffer.
    pub fn new() -> DiscardSink {
        DiscardSink {
            buf: Box::new([0; MAX_UDP_PAYLOAD]),
            sent: 0,
        }
    }
}

impl Default for DiscardSink {
    fn default() -> Self {
        DiscardSink::new()
    }
}

impl TxSink for DiscardSink {
    fn send_with(
        &mut self,
        _src_port: u16,
        _dst: SocketAddr,
        build: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> bool {
        let len = build(&mut self.buf[..]);
        // Keep the built bytes observable so the encode cannot be optimised away.
        std::hint::black_box(&self.buf[..len.min(MAX_UDP_PAYLOAD)]);
        self.sent += 1;
        true
    }
}

/// 20 ms of a 1 kHz tone at -10 dBFS in PCMU: realistic payload for the decoder.
pub fn tone_frame() -> [u8; FRAME_SAMPLES] {
    let mut pcm = [0i16; FRAME_SAMPLES];
    for (i, s) in pcm.iter_mut().enumerate() {
        let phase = 2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 8000.0;
        *s = (phase.sin() * 10_362.0) as i16;
    }
    let mut out = [0u8; FRAME_SAMPLES];
    g711::encode(Codec::Pcmu, &pcm, &mut out);
    out
}

/// Writes an RTP header (V=2, PT 0) into `buf`.
pub fn write_rtp_header(buf: &mut [u8], marker: bool, seq: u16, ts: u32, ssrc: u32) {
    buf[0] = 0x80;
    buf[1] = if marker { 0x80 } else { 0 };
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

/// The far end of leg `i`: a distinct address per leg, as real phones would have.
fn peer_of(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8);
    SocketAddr::V4(SocketAddrV4::new(ip, 40_000))
}

fn pcmu_20ms() -> MediaConfig {
    MediaConfig {
        remote: None,
        codec: Codec::Pcmu,
        payload_type: 0,
        ptime_ms: 20,
        telephone_event_pt: None,
        rtcp_mux: true,
        report_first_packet: false,
        max_ptime_ms: None,
        opus: Default::default(),
    }
}

/// A shard holding `sessions` barge sessions, and each leg's local port, in leg order
/// (session-major). Set up at engine time 0 so that the run starts just before the
/// first ticks.
fn build_shard(sessions: u32) -> Result<(Shard, Vec<u16>), BenchError> {
    let legs = sessions as usize * LEGS_PER_SESSION;
    let cfg = ShardConfig {
        index: 0,
        port_first: 2,
        port_count: 65_532,
        max_legs: legs as u32,
        max_sessions: sessions,
        local_v4: Some(Ipv4Addr::LOCALHOST),
        local_v6: None,
        jitter_min_ms: 20,
        jitter_max_ms: 200,
        media_timeout: Duration::from_secs(30),
        late_tick_threshold: Duration::from_micros(2000),
        seed: 1,
    };
    let mut pool = PortPool::new(cfg.port_first, cfg.port_count);
    let mut shard = Shard::new(cfg, MixKernels::detect());
    let now = Instant::from_nanos(0);
    let mut ports = Vec::with_capacity(legs);
    for s in 0..sessions {
        let session = format!("s{s}");
        let mut ids = [LegId(0); LEGS_PER_SESSION];
        for (k, id) in ids.iter_mut().enumerate() {
            let cmd = ShardCommand::AllocateLeg {
                session: session.clone(),
                leg_key: format!("p{k}"),
                family: Family::V4,
                port: pool
                    .take(true)
                    .ok_or(BenchError::UnexpectedResponse("free port"))?,
                rtcp_mux: true,
            };
            let Response::Leg(info) = shard.handle_command(now, cmd)? else {
                return Err(BenchError::UnexpectedResponse("AllocateLeg"));
            };
            *id = info.leg;
            ports.push(info.local.port());
            let media = MediaConfig {
                remote: Some(peer_of(ports.len() - 1)),
                ..pcmu_20ms()
            };
            shard.handle_command(
                now,
                ShardCommand::ConfigureLeg {
                    leg: info.leg,
                    media,
                },
            )?;
        }
        let mut edges = Vec::with_capacity(6);
        for &listener in &ids {
            for &source in &ids {
                if listener != source {
                    edges.push(Edge {
                        listener,
                        source,
                        gain: 4096,
                    });
                }
            }
        }
        let plan = SessionPlan {
            session,
            edges,
            no_dtmf: Vec::new(),
        };
        shard.handle_command(now, ShardCommand::SetSessionPlan(plan))?;
    }
    Ok((shard, ports))
}

fn shard_stats(shard: &mut Shard) -> Result<ShardStats, BenchError> {
    let cmd = ShardCommand::Stats(ShardStats::default());
    match shard.handle_command(Instant::from_nanos(0), cmd)? {
        Response::Stats(mut s) if !s.shards.is_empty() => Ok(s.shards.swap_remove(0)),
        _ => Err(BenchError::UnexpectedResponse("Stats")),
    }
}

/// Runs one step: sets up, feeds for `step_ms` of real time, reads the shard's stats.
pub fn run_step(p: &StepParams) -> Result<StepResult, BenchError> {
    if let Some(core) = p.core {
        // Best effort: an absent core leaves the thread unpinned (and the report says
        // which core was asked for).
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id: core });
    }
    let setup_clock = Clock::new();
    let (mut shard, ports) = build_shard(p.sessions)?;
    let setup_ms = setup_clock.now().as_nanos() / 1_000_000;
    let legs = ports.len();
    let peers: Vec<SocketAddr> = (0..legs).map(peer_of).collect();
    let tone = tone_frame();
    let mut pkt = [0u8; PACKET_LEN];
    pkt[RTP_HEADER_LEN..].copy_from_slice(&tone);
    let mut sink = DiscardSink::new();
    // The engine's timeline starts now: the sessions were set up at time 0 and tick at
    // their staggered phases within the first period.
    let clock = Clock::new();
    let now_fn = || clock.now();
    let end_ns = p.step_ms * 1_000_000;
    let spacing_ns = PERIOD_NS / legs.max(1) as u64;
    let mut next: u64 = 0;
    let mut feed_lag_max_ns = 0u64;
    let (mut busy_ns, mut stall_max_ns, mut last_end) = (0u64, 0u64, 0u64);
    loop {
        let now = clock.now();
        if now.as_nanos() >= end_ns {
            break;
        }
        stall_max_ns = stall_max_ns.max(now.as_nanos().saturating_sub(last_end));
        let mut worked = false;
        for _ in 0..FEED_BATCH {
            let period = next / legs as u64;
            let leg = (next % legs as u64) as usize;
            let due = period * PERIOD_NS + leg as u64 * spacing_ns;
            if due > now.as_nanos() {
                break;
            }
            feed_lag_max_ns = feed_lag_max_ns.max(now.as_nanos() - due);
            write_rtp_header(
                &mut pkt,
                period == 0,
                period as u16,
                (period as u32).wrapping_mul(FRAME_SAMPLES as u32),
                0x1000_0000 + leg as u32,
            );
            let d = Datagram {
                local_port: ports[leg],
                remote: peers[leg],
                payload: &pkt,
            };
            shard.handle_packet(now, d, &mut sink);
            next += 1;
            worked = true;
        }
        let tick_now = clock.now();
        if shard.poll_deadline().is_some_and(|d| d <= tick_now) {
            shard.handle_ticks(tick_now, &mut sink, &now_fn);
            worked = true;
        }
        let end = clock.now().as_nanos();
        if worked {
            busy_ns += end - now.as_nanos();
        }
        last_end = end;
    }
    let stats = shard_stats(&mut shard)?;
    let drops = stats.drops.iter().map(|(_, n)| n).sum();
    // The shard's own threshold is fixed at 2 ms; a different threshold is applied to
    // the lateness histogram's view only through the shard config, so keep them equal.
    debug_assert_eq!(p.late_tick_threshold_us, 2000);
    let passed = stats.late_ticks == 0 && feed_lag_max_ns < PERIOD_NS;
    let busy_fraction = busy_ns as f64 / end_ns.max(1) as f64;
    Ok(StepResult {
        sessions: p.sessions,
        step_ms: p.step_ms,
        setup_ms,
        ticks: stats.ticks,
        late_ticks: stats.late_ticks,
        packets_in: stats.packets_in,
        packets_out: stats.packets_out,
        drops,
        tick_processing_us: stats.tick_processing_us,
        tick_lateness_us: stats.tick_lateness_us,
        feed_lag_max_us: feed_lag_max_ns / 1000,
        stall_max_us: stall_max_ns / 1000,
        busy_fraction,
        projected_sessions: f64::from(p.sessions) / busy_fraction.max(1e-9),
        passed,
    })
}

/// A capacity search: ramp through `ramp`, then bisect between the last pass and the
/// first failure while time remains.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchParams {
    /// Session counts to try in order (ascending); the search stops at the first
    /// failure.
    pub ramp: Vec<u32>,
    /// Milliseconds per step.
    pub step_ms: u64,
    /// Stop starting new steps after this many seconds (setup included).
    pub max_seconds: u64,
    /// Stop bisecting when the gap between pass and failure is at most this.
    pub resolution: u32,
    /// Core to pin to.
    pub core: Option<usize>,
}

/// The outcome of a search.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchResult {
    /// Largest session count with zero late ticks, if any passed.
    pub max_sessions_zero_late: Option<u32>,
    /// Smallest session count that failed, if any did.
    pub min_sessions_failed: Option<u32>,
    /// `projected_sessions` of the largest unsaturated step: the estimate of what one
    /// unshared core carries, from measured work.
    pub projected_sessions: Option<f64>,
    /// Every step, in the order run.
    pub steps: Vec<StepResult>,
    /// Seconds the search took.
    pub elapsed_s: f64,
}

/// Runs the search; bounded by `max_seconds` (a step already started finishes).
pub fn search(p: &SearchParams) -> Result<SearchResult, BenchError> {
    let clock = Clock::new();
    let budget_ns = p.max_seconds * 1_000_000_000;
    let mut steps = Vec::new();
    let step = |n: u32, steps: &mut Vec<StepResult>| -> Result<(bool, bool), BenchError> {
        let r = run_step(&StepParams {
            sessions: n,
            step_ms: p.step_ms,
            core: p.core,
            late_tick_threshold_us: 2000,
        })?;
        eprintln!(
            "capacity: {n} sessions: {} ticks, {} late, tick p50 {:.2} us p99 {:.2} us p99.9 {:.2} us, lateness p99 {:.0} us, feed lag max {} us, stall max {} us, busy {:.3} (projected {:.0}) -> {}",
            r.ticks,
            r.late_ticks,
            r.tick_processing_us.p50,
            r.tick_processing_us.p99,
            r.tick_processing_us.p999,
            r.tick_lateness_us.p99,
            r.feed_lag_max_us,
            r.stall_max_us,
            r.busy_fraction,
            r.projected_sessions,
            if r.passed { "pass" } else { "FAIL" }
        );
        let result = (
            r.passed,
            r.busy_fraction >= 1.0 || r.feed_lag_max_us >= PERIOD_NS / 1000,
        );
        steps.push(r);
        Ok(result)
    };
    // The ramp goes on past a failed step (a noisy machine fails small steps too, and
    // the work-per-session estimate still needs the larger ones) until the core is
    // saturated or the time is up.
    for &n in &p.ramp {
        if clock.now().as_nanos() >= budget_ns {
            break;
        }
        let (_, saturated) = step(n, &mut steps)?;
        if saturated {
            break;
        }
    }
    // The largest passing count, and the smallest failure above it (a preempted small
    // step must not hide a clean larger one).
    let mut good = steps.iter().filter(|s| s.passed).map(|s| s.sessions).max();
    let mut bad = steps
        .iter()
        .filter(|s| !s.passed && good.is_none_or(|g| s.sessions > g))
        .map(|s| s.sessions)
        .min();
    while let (Some(b), Some(g)) = (bad, good) {
        if b - g <= p.resolution.max(1) || clock.now().as_nanos() >= budget_ns {
            break;
        }
        let mid = g + (b - g) / 2;
        if step(mid, &mut steps)?.0 {
            good = Some(mid);
        } else {
            bad = Some(mid);
        }
    }
    let projected_sessions = steps
        .iter()
        .filter(|s| s.busy_fraction < 1.0)
        .max_by_key(|s| s.sessions)
        .map(|s| s.projected_sessions);
    Ok(SearchResult {
        projected_sessions,
        max_sessions_zero_late: good,
        min_sessions_failed: bad,
        steps,
        elapsed_s: clock.now().as_nanos() as f64 / 1e9,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_capacity_step_ticks_every_session_and_mixes_every_leg() {
        let r = run_step(&StepParams {
            sessions: 10,
            step_ms: 200,
            core: None,
            late_tick_threshold_us: 2000,
        })
        .expect("step runs");
        // 200 ms at 20 ms per tick: about 10 ticks per session (staggered phases and
        // the run's edges cost at most one or two).
        assert!(r.ticks >= 10 * 8, "ticks {}", r.ticks);
        assert!(r.packets_in >= 30 * 8, "packets in {}", r.packets_in);
        assert_eq!(r.drops, 0, "every fed packet is valid for its leg");
        // Each tick sends one mixed frame to each of the three legs.
        assert_eq!(r.packets_out, r.ticks * 3);
        assert!(r.tick_processing_us.count == r.ticks);
        assert!(r.busy_fraction > 0.0 && r.busy_fraction < 1.0);
    }

    #[test]
    fn the_tone_frame_is_not_silence() {
        let f = tone_frame();
        assert!(f.iter().any(|&b| b != f[0]));
    }
}

/// Memory held by barge sessions once every buffer has been used.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemoryResult {
    /// Sessions built.
    pub sessions: u32,
    /// Resident set before building the shard, bytes.
    pub rss_before: u64,
    /// Resident set after building and running it, bytes.
    pub rss_after: u64,
    /// (after - before) / sessions, bytes: each session's legs, jitter buffers, output
    /// streams and its share of the shard's tables.
    pub bytes_per_session: f64,
}

/// Builds `sessions` 3-party barge sessions on one shard and runs one second of virtual
/// time through them (50 packets per leg, every tick), so that every buffer has been
/// written, then reports the growth of the resident set per session.
pub fn memory(sessions: u32) -> Result<MemoryResult, BenchError> {
    let rss_before = rss_bytes();
    let (mut shard, ports) = build_shard(sessions)?;
    let legs = ports.len();
    let peers: Vec<SocketAddr> = (0..legs).map(peer_of).collect();
    let mut pkt = [0u8; PACKET_LEN];
    pkt[RTP_HEADER_LEN..].copy_from_slice(&tone_frame());
    let mut sink = DiscardSink::new();
    for period in 0..50u64 {
        let now = Instant::from_nanos(period * PERIOD_NS);
        for (leg, (&port, &peer)) in ports.iter().zip(&peers).enumerate() {
            write_rtp_header(
                &mut pkt,
                period == 0,
                period as u16,
                (period as u32).wrapping_mul(FRAME_SAMPLES as u32),
                0x1000_0000 + leg as u32,
            );
            let d = Datagram {
                local_port: port,
                remote: peer,
                payload: &pkt,
            };
            shard.handle_packet(now, d, &mut sink);
        }
        // Every wheel slot of the period, so every session ticks.
        for ms in 0..20u64 {
            let t = Instant::from_nanos(period * PERIOD_NS + ms * 1_000_000);
            shard.handle_ticks(t, &mut sink, &|| t);
        }
    }
    let rss_after = rss_bytes();
    std::hint::black_box(&shard);
    Ok(MemoryResult {
        sessions,
        rss_before,
        rss_after,
        bytes_per_session: rss_after.saturating_sub(rss_before) as f64 / f64::from(sessions.max(1)),
    })
}

/// The process's resident set in bytes (Linux `/proc/self/statm`), 0 where unavailable.
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    pages * 4096
}

#[cfg(test)]
mod memory_tests {
    #[test]
    fn memory_measurement_runs_and_sees_growth() {
        let r = super::memory(50).unwrap();
        assert!(r.rss_after >= r.rss_before);
        assert!(r.bytes_per_session > 0.0, "{r:?}");
    }
}
