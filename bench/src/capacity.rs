//! Capacity on one core: N 3-party barge sessions through one shard, in memory.
//!
//! The kit's [`ShardRig`] builds a shard directly (no runtime loop, no command queue)
//! and this module drives it from the calling thread, pinned, on the real clock: every
//! 20 ms each leg receives one 172-byte PCMU packet (12-byte RTP header, 160 bytes of
//! tone), the packets of one period spread evenly across it, and due ticks run between
//! receive batches exactly as the runtime loop runs them. Sends go to the rig's
//! discarding sink, which still lets the shard build (encode) every packet.
//!
//! A search runs steps of `step_ms` each (60 s by default, SPEC section 6; shorter for
//! a quick look or the CI-sized scenario). Every step reports what the shard did
//! (ticks, late ticks, tick processing and lateness percentiles), how busy it was (time
//! inside the shard over wall time, and the thread's CPU time over wall time), and the
//! machine's stall record beside it: the longest gap the feeding loop saw between two
//! of its iterations, the time the thread waited runnable for a CPU, and the steal and
//! other load on its core from `/proc/stat`. A late tick on a core that was stolen from
//! is the machine's, not the engine's; the record lets the reader tell them apart.
//!
//! SRTP (`"srtp": "<suite id>"` in the scenario, `--srtp` on the command line, ids as
//! `aes_cm_128_hmac_sha1_80`): every leg is an SRTP leg of that suite with generated
//! keys, and is fed protected packets (the kit's rig protects each party's packet once
//! per period and hands each leg a copy, which the shard authenticates and decrypts in
//! place); the shard protects everything it sends. The result has the same shape; run
//! a plain and an SRTP search back to back and compare `projected_sessions`.
//!
//! The shard counts a tick late when it starts more than 2 ms after its deadline (the
//! engine default). A step passes when it saw zero late ticks and the feeder kept up
//! (so that a late tick cannot hide behind a starved shard).
#![allow(unsafe_code)] // clock_gettime(CLOCK_THREAD_CPUTIME_ID): the thread's CPU time

use earshot_engine::clock::Clock;
use earshot_engine_api::{Percentiles, SrtpSuite};
use earshot_media::dsp::mix::MixKernels;
use earshot_media::time::Instant;
use earshot_testkit::rig::{PERIOD_NS, RIG_CODECS, ShardRig, shard_config};
use earshot_types::Codec;
use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::machine::CoreTimes;

const LEGS_PER_SESSION: usize = 3;
/// Datagrams handed to the shard between two tick checks, like one receive batch.
const FEED_BATCH: usize = 64;
/// With `sleep_when_idle`, the loop wakes this long before the next thing is due and
/// spins the rest (the kernel's timer slack is 50 us).
const IDLE_SPIN_NS: u64 = 100_000;
/// A step's length unless a scenario or flag says otherwise (SPEC section 6).
pub const DEFAULT_STEP_MS: u64 = 60_000;

/// Parameters of one capacity step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepParams {
    /// Barge sessions (3 legs each).
    pub sessions: u32,
    /// How long the step feeds packets, in milliseconds.
    pub step_ms: u64,
    /// Core to pin the shard's thread to, if any.
    pub core: Option<usize>,
    /// Sleep until the next packet or tick is due instead of spinning, as the engine's
    /// runtime loop waits on its backend: the thread's CPU share is then its busy share,
    /// and lateness includes the wake-up. Off by default (spinning measures the shard's
    /// work alone).
    #[serde(default)]
    pub sleep_when_idle: bool,
    /// Every leg SRTP with this suite (its lower-case id, `aes_cm_128_hmac_sha1_80`,
    /// ...); absent: plain RTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srtp: Option<String>,
    /// What each session is: its parties' codecs and its supervision mode.
    #[serde(default, flatten)]
    pub calls: CallShape,
}

/// The sessions of a step: a 3-party barge of PCMU legs unless the scenario says
/// otherwise (`"codecs": ["pcmu", "opus", "pcmu"]` for customer, agent, supervisor;
/// `"mode": "monitor"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallShape {
    /// Codec of each party (customer, agent, supervisor) by SDP name in lower case:
    /// `pcmu`, `pcma`, `g722`, `opus`. Empty: all PCMU.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codecs: Vec<String>,
    /// `barge` (the default: everyone hears the two others, all mixed) or `monitor`
    /// (customer and agent hear each other, the supervisor hears both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl CallShape {
    /// The parties' codecs, or an error naming the unknown one.
    pub fn codecs(&self) -> Result<Vec<Codec>, BenchError> {
        self.codecs
            .iter()
            .map(|name| {
                RIG_CODECS
                    .into_iter()
                    .find(|c| c.sdp_name().eq_ignore_ascii_case(name.trim()))
                    .ok_or_else(|| {
                        std::io::Error::other(format!(
                            "unknown codec {name:?}: one of pcmu, pcma, g722, opus"
                        ))
                        .into()
                    })
            })
            .collect()
    }

    /// Whether sessions are monitored calls (else barges), or an error for an unknown
    /// mode.
    pub fn monitor(&self) -> Result<bool, BenchError> {
        match self.mode.as_deref().map(str::trim) {
            None | Some("barge") => Ok(false),
            Some("monitor") => Ok(true),
            Some(other) => Err(std::io::Error::other(format!(
                "unknown mode {other:?}: barge or monitor"
            ))
            .into()),
        }
    }
}

/// The suite a scenario's `srtp` names, or an error listing the ids.
pub fn parse_srtp(id: Option<&str>) -> Result<Option<SrtpSuite>, BenchError> {
    let Some(id) = id else {
        return Ok(None);
    };
    SrtpSuite::ALL
        .into_iter()
        .find(|s| s.id() == id.trim())
        .map(Some)
        .ok_or_else(|| {
            let ids: Vec<&str> = SrtpSuite::ALL.iter().map(|s| s.id()).collect();
            std::io::Error::other(format!(
                "unknown srtp suite {id:?}: one of {}",
                ids.join(", ")
            ))
            .into()
        })
}

/// The machine's side of a step: what the shard thread could not help.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StallRecord {
    /// Longest gap between two iterations of the feeding loop (not counting its own
    /// sleeps), in microseconds: time the thread was not running at all. Absent where
    /// no feeding loop of ours ran the shard (the real-UDP runs: see their `stalls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_gap_max_us: Option<u64>,
    /// Time the thread waited runnable for a CPU during the step, in milliseconds
    /// (`/proc/thread-self/schedstat`; `None` where unreadable).
    pub run_delay_ms: Option<f64>,
    /// Share of the core's time stolen by the hypervisor (`/proc/stat`, the pinned
    /// core's line, or all cores when unpinned).
    pub steal_share: Option<f64>,
    /// Share of the core's time busy with anything but this thread: other processes,
    /// interrupts (the core's busy share minus the thread's CPU share, at least 0).
    pub other_load_share: Option<f64>,
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
    /// Fraction of the step's wall time spent inside the shard (receive and ticks).
    pub busy_fraction: f64,
    /// The shard thread's CPU time over the step's wall time: its busy share when it
    /// sleeps while idle; when it spins, near 1 unless the machine took the core away.
    /// `None` where unreadable.
    pub thread_cpu_share: Option<f64>,
    /// The machine's stall record during the step.
    pub stall: StallRecord,
    /// `sessions / busy_fraction`: the sessions one core would carry if the shard had
    /// it to itself, from the measured work per session (an estimate, not a pass).
    pub projected_sessions: f64,
    /// Zero late ticks and the feeder never fell a whole period behind.
    pub passed: bool,
}

/// The calling thread's CPU time in nanoseconds.
fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which lives across the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Which thread a [`MachineProbe`] watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watched {
    /// The thread that calls the probe.
    Current,
    /// Another thread of this process, by its kernel task id (`/proc/self/task/<tid>`).
    Task(i32),
}

impl Watched {
    /// Field `n` of the thread's schedstat: 0 CPU time, 1 runnable wait, nanoseconds.
    fn schedstat(self, n: usize) -> Option<u64> {
        let path = match self {
            Watched::Current => "/proc/thread-self/schedstat".to_string(),
            Watched::Task(tid) => format!("/proc/self/task/{tid}/schedstat"),
        };
        let s = std::fs::read_to_string(path).ok()?;
        s.split_whitespace().nth(n)?.parse().ok()
    }

    /// The thread's CPU time in nanoseconds.
    fn cpu_ns(self) -> Option<u64> {
        match self {
            Watched::Current => thread_cpu_ns(),
            Watched::Task(_) => self.schedstat(0),
        }
    }

    /// Nanoseconds the thread has waited runnable for a CPU.
    fn run_delay_ns(self) -> Option<u64> {
        self.schedstat(1)
    }
}

/// What a [`MachineProbe`] saw between its start and finish.
#[derive(Clone, Debug)]
pub(crate) struct Probed {
    /// CPU time the watched thread used, nanoseconds.
    pub(crate) cpu_ns: Option<u64>,
    /// That CPU time over the wall time.
    pub(crate) cpu_share: Option<f64>,
    /// Share of the core's time busy with anything (this thread, others, interrupts).
    pub(crate) core_busy_share: Option<f64>,
    /// The stall record, without a loop gap (only a feeding loop can measure that).
    pub(crate) stall: StallRecord,
}

/// What the machine did to one step, measured from before and after.
pub(crate) struct MachineProbe {
    core: Option<usize>,
    thread: Watched,
    cpu_ns: Option<u64>,
    run_delay_ns: Option<u64>,
    times: Option<CoreTimes>,
}

impl MachineProbe {
    /// Starts watching `thread` and `core` (its line of `/proc/stat`; all cores for
    /// `None`).
    pub(crate) fn start(core: Option<usize>, thread: Watched) -> MachineProbe {
        MachineProbe {
            core,
            thread,
            cpu_ns: thread.cpu_ns(),
            run_delay_ns: thread.run_delay_ns(),
            times: CoreTimes::read(core),
        }
    }

    /// What happened over the `wall_ns` since the start.
    pub(crate) fn finish(self, wall_ns: u64) -> Probed {
        let wall = wall_ns.max(1) as f64;
        let cpu_ns = self
            .cpu_ns
            .zip(self.thread.cpu_ns())
            .map(|(a, b)| b.saturating_sub(a));
        let cpu_share = cpu_ns.map(|ns| ns as f64 / wall);
        let run_delay_ms = self
            .run_delay_ns
            .zip(self.thread.run_delay_ns())
            .map(|(a, b)| b.saturating_sub(a) as f64 / 1e6);
        let shares = self
            .times
            .zip(CoreTimes::read(self.core))
            .and_then(|(a, b)| a.shares_until(&b));
        let other = shares
            .zip(cpu_share)
            .map(|((busy, _), mine)| (busy - mine).max(0.0));
        Probed {
            cpu_ns,
            cpu_share,
            core_busy_share: shares.map(|(busy, _)| busy),
            stall: StallRecord {
                loop_gap_max_us: None,
                run_delay_ms,
                steal_share: shares.map(|(_, s)| s),
                other_load_share: other,
            },
        }
    }
}

/// A rig holding `sessions` barge sessions, set up at engine time 0 so that the run
/// starts just before the first ticks.
fn build_rig(
    sessions: u32,
    srtp: Option<SrtpSuite>,
    calls: &CallShape,
) -> Result<ShardRig, BenchError> {
    let legs = sessions * LEGS_PER_SESSION as u32;
    let cfg = shard_config(2, 65_532, legs, sessions, 1);
    let mut rig = ShardRig::new(cfg, MixKernels::detect());
    if let Some(suite) = srtp {
        rig.set_srtp(suite);
    }
    rig.set_codecs(&calls.codecs()?)?;
    let monitor = calls.monitor()?;
    for s in 0..sessions {
        let name = format!("s{s}");
        if monitor {
            rig.add_monitor_session(Instant::ZERO, &name)?;
        } else {
            rig.add_barge_session(Instant::ZERO, &name)?;
        }
    }
    Ok(rig)
}

/// Runs one step: sets up, feeds for `step_ms` of real time, reads the shard's stats.
pub fn run_step(p: &StepParams) -> Result<StepResult, BenchError> {
    if let Some(core) = p.core {
        // Best effort: an absent core leaves the thread unpinned (and the report says
        // which core was asked for).
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id: core });
    }
    let srtp = parse_srtp(p.srtp.as_deref())?;
    let setup_clock = Clock::new();
    let mut rig = build_rig(p.sessions, srtp, &p.calls)?;
    let setup_ms = setup_clock.now().as_nanos() / 1_000_000;
    let legs = rig.legs().len();
    // The engine's timeline starts now: the sessions were set up at time 0 and tick at
    // their staggered phases within the first period.
    let clock = Clock::new();
    let now_fn = || clock.now();
    let probe = MachineProbe::start(p.core, Watched::Current);
    let end_ns = p.step_ms * 1_000_000;
    let spacing_ns = PERIOD_NS / legs.max(1) as u64;
    let mut next: u64 = 0;
    let mut feed_lag_max_ns = 0u64;
    let (mut busy_ns, mut gap_max_ns, mut last_end) = (0u64, 0u64, 0u64);
    loop {
        let now = clock.now();
        if now.as_nanos() >= end_ns {
            break;
        }
        gap_max_ns = gap_max_ns.max(now.as_nanos().saturating_sub(last_end));
        let mut worked = false;
        for _ in 0..FEED_BATCH {
            let period = next / legs as u64;
            let leg = (next % legs as u64) as usize;
            let due = period * PERIOD_NS + leg as u64 * spacing_ns;
            if due > now.as_nanos() {
                break;
            }
            feed_lag_max_ns = feed_lag_max_ns.max(now.as_nanos() - due);
            rig.feed(now, leg, period);
            next += 1;
            worked = true;
        }
        worked |= rig.tick_if_due(clock.now(), &now_fn);
        let mut end = clock.now().as_nanos();
        if worked {
            busy_ns += end - now.as_nanos();
        } else if p.sleep_when_idle {
            let packet_due = (next / legs as u64) * PERIOD_NS + (next % legs as u64) * spacing_ns;
            let tick_due = rig
                .shard()
                .poll_deadline()
                .map_or(u64::MAX, |d| d.as_nanos());
            let due = packet_due.min(tick_due).min(end_ns);
            if due > end + IDLE_SPIN_NS {
                std::thread::park_timeout(std::time::Duration::from_nanos(
                    due - end - IDLE_SPIN_NS,
                ));
                // The sleep is ours, not the machine's: the gap is measured from here.
                end = clock.now().as_nanos();
            }
        }
        last_end = end;
    }
    let wall_ns = clock.now().as_nanos();
    let probed = probe.finish(wall_ns);
    let (thread_cpu_share, mut stall) = (probed.cpu_share, probed.stall);
    stall.loop_gap_max_us = Some(gap_max_ns / 1000);
    let stats = rig.stats(clock.now())?;
    let drops = stats.drops.iter().map(|(_, n)| n).sum();
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
        busy_fraction,
        thread_cpu_share,
        stall,
        projected_sessions: f64::from(p.sessions) / busy_fraction.max(1e-9),
        passed,
    })
}

/// A capacity search: ramp through `ramp`, then bisect between the last pass and the
/// first failure while time remains.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchParams {
    /// Session counts to try in order (ascending).
    pub ramp: Vec<u32>,
    /// Milliseconds per step (60,000 by default; shorter to look quickly).
    #[serde(default = "default_step_ms")]
    pub step_ms: u64,
    /// Stop starting new steps after this many seconds (setup included).
    pub max_seconds: u64,
    /// Stop bisecting when the gap between pass and failure is at most this.
    pub resolution: u32,
    /// Core to pin to.
    pub core: Option<usize>,
    /// See [`StepParams::sleep_when_idle`].
    #[serde(default)]
    pub sleep_when_idle: bool,
    /// See [`StepParams::srtp`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srtp: Option<String>,
    /// See [`StepParams::calls`].
    #[serde(default, flatten)]
    pub calls: CallShape,
}

fn default_step_ms() -> u64 {
    DEFAULT_STEP_MS
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

/// One line per step for the operator, machine record beside the engine's numbers.
pub fn step_line(r: &StepResult) -> String {
    let opt =
        |v: Option<f64>, scale: f64| v.map_or_else(|| "?".into(), |x| format!("{:.1}", x * scale));
    format!(
        "{} sessions, {} s: {} ticks, {} late; tick p50 {:.2} us p99 {:.2} us p99.9 {:.2} us; \
         lateness p50 {:.0} us p99 {:.0} us max {:.0} us; busy {:.1}% (thread CPU {}%), \
         projected {:.0}; machine: loop gap max {} us, run delay {} ms, steal {}%, other load {}% -> {}",
        r.sessions,
        r.step_ms as f64 / 1000.0,
        r.ticks,
        r.late_ticks,
        r.tick_processing_us.p50,
        r.tick_processing_us.p99,
        r.tick_processing_us.p999,
        r.tick_lateness_us.p50,
        r.tick_lateness_us.p99,
        r.tick_lateness_us.max,
        100.0 * r.busy_fraction,
        opt(r.thread_cpu_share, 100.0),
        r.projected_sessions,
        r.stall
            .loop_gap_max_us
            .map_or_else(|| "?".into(), |g| g.to_string()),
        opt(r.stall.run_delay_ms, 1.0),
        opt(r.stall.steal_share, 100.0),
        opt(r.stall.other_load_share, 100.0),
        if r.passed { "pass" } else { "FAIL" }
    )
}

/// Runs the search; bounded by `max_seconds` (a step already started finishes).
pub fn search(p: &SearchParams) -> Result<SearchResult, BenchError> {
    // An unknown suite fails here, before any step.
    parse_srtp(p.srtp.as_deref())?;
    p.calls.codecs()?;
    p.calls.monitor()?;
    let clock = Clock::new();
    let budget_ns = p.max_seconds * 1_000_000_000;
    let mut steps = Vec::new();
    let step = |n: u32, steps: &mut Vec<StepResult>| -> Result<(bool, bool), BenchError> {
        let r = run_step(&StepParams {
            sessions: n,
            step_ms: p.step_ms,
            core: p.core,
            sleep_when_idle: p.sleep_when_idle,
            srtp: p.srtp.clone(),
            calls: p.calls.clone(),
        })?;
        eprintln!("capacity: {}", step_line(&r));
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
    let mut rig = build_rig(sessions, None, &CallShape::default())?;
    rig.run_periods(0..50);
    let rss_after = rss_bytes();
    std::hint::black_box(&rig);
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
mod tests {
    use super::*;

    #[test]
    fn a_tiny_capacity_step_ticks_every_session_and_mixes_every_leg() {
        let r = run_step(&StepParams {
            sessions: 10,
            step_ms: 200,
            core: None,
            sleep_when_idle: false,
            srtp: None,
            calls: CallShape::default(),
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
        // The loop spins: its thread ran for most of the step, unless the machine took
        // the core away (which the stall record then shows).
        let cpu = r
            .thread_cpu_share
            .expect("thread CPU time is readable on Linux");
        assert!(cpu > 0.0 && cpu <= 1.05, "thread CPU share {cpu}");
        assert!(
            cpu > 0.5 || r.stall.run_delay_ms.unwrap_or(0.0) > 50.0,
            "the spinning thread was neither running nor waiting: {r:?}"
        );
        assert!(
            r.stall.loop_gap_max_us.is_some_and(|g| g < 200_000),
            "{r:?}"
        );
        println!("{}", step_line(&r));
    }

    #[test]
    fn a_step_that_sleeps_when_idle_does_the_same_work_on_a_fraction_of_the_cpu() {
        let r = run_step(&StepParams {
            sessions: 10,
            step_ms: 300,
            core: None,
            sleep_when_idle: true,
            srtp: None,
            calls: CallShape::default(),
        })
        .expect("step runs");
        assert!(r.ticks >= 10 * 12, "ticks {}", r.ticks);
        assert_eq!(r.drops, 0);
        assert_eq!(r.packets_out, r.ticks * 3);
        // 10 sessions are a few percent of a core; sleeping, the thread uses little more.
        let cpu = r
            .thread_cpu_share
            .expect("thread CPU time is readable on Linux");
        assert!(cpu < 0.5, "a sleeping loop used {cpu} of a core: {r:?}");
        println!("{}", step_line(&r));
    }

    /// Runs a CI-sized scenario file and checks what every step did.
    fn run_ci_scenario(file: &str) -> SearchResult {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scenarios")
            .join(file);
        let named = crate::scenario::load(&path).expect("CI scenario parses");
        let crate::scenario::Scenario::Capacity(p) = named.scenario else {
            panic!("{file} is not a capacity scenario");
        };
        assert!(p.step_ms <= 500 && p.max_seconds <= 10, "CI-sized: {p:?}");
        let r = search(&p).expect("search runs");
        assert!(!r.steps.is_empty());
        assert!(r.elapsed_s < 30.0, "took {} s", r.elapsed_s);
        // Every step did the work it was given; a loaded CI machine may fail a step on
        // timing, but the projection from measured work is always there. On an SRTP
        // run no drop means every packet fed authenticated (`srtp_auth`, `srtp_replay`)
        // and every packet sent was protected (`srtp_protect`).
        for s in &r.steps {
            assert_eq!(s.drops, 0, "{s:?}");
            assert_eq!(s.packets_out, s.ticks * 3, "{s:?}");
            assert!(
                s.stall.steal_share.is_some(),
                "/proc/stat is readable: {s:?}"
            );
        }
        let projected = r.projected_sessions.expect("an unsaturated step");
        assert!(projected > f64::from(r.steps[0].sessions), "{projected}");
        let json = simd_json::serde::to_string(&r).expect("result serialises");
        assert!(json.contains("\"projected_sessions\""), "{json}");
        r
    }

    #[test]
    fn the_ci_sized_scenario_runs_in_seconds_and_reports_a_projection() {
        run_ci_scenario("capacity-ci.json");
    }

    #[test]
    fn the_ci_sized_srtp_scenario_feeds_protected_packets_and_reports_a_projection() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scenarios")
            .join("capacity-srtp-ci.json");
        let named = crate::scenario::load(&path).expect("parses");
        let crate::scenario::Scenario::Capacity(p) = named.scenario else {
            panic!("not a capacity scenario");
        };
        assert_eq!(
            parse_srtp(p.srtp.as_deref()).expect("a known suite"),
            Some(SrtpSuite::AesCm128HmacSha1_80)
        );
        let r = run_ci_scenario("capacity-srtp-ci.json");
        // The packets really were SRTP: the shard received what it fed.
        assert!(r.steps.iter().all(|s| s.packets_in > 0), "{r:?}");
    }

    #[test]
    fn an_srtp_step_authenticates_every_fed_packet() {
        for suite in SrtpSuite::ALL {
            let r = run_step(&StepParams {
                sessions: 5,
                step_ms: 150,
                core: None,
                sleep_when_idle: false,
                srtp: Some(suite.id().to_string()),
                calls: CallShape::default(),
            })
            .expect("step runs");
            assert!(r.packets_in >= 15 * 5, "{suite:?}: {r:?}");
            assert_eq!(
                r.drops, 0,
                "{suite:?}: every fed packet authenticates: {r:?}"
            );
            assert_eq!(r.packets_out, r.ticks * 3, "{suite:?}");
        }
    }

    #[test]
    fn the_ci_sized_g722_barge_scenario_mixes_g722_legs() {
        let r = run_ci_scenario("capacity-g722-barge-ci.json");
        assert!(r.steps.iter().all(|s| s.packets_in > 0), "{r:?}");
    }

    #[test]
    fn the_ci_sized_opus_pcmu_monitor_scenario_transcodes_every_leg() {
        if let Err(e) = earshot_media::codec::opus_available() {
            println!("SKIPPED: libopus not found ({e})");
            return;
        }
        // Every output is mixed (Opus and PCMU cannot forward to each other), so the
        // run's check of three packets out per tick holds for monitored calls too.
        let r = run_ci_scenario("capacity-opus-pcmu-monitor-ci.json");
        assert!(r.steps.iter().all(|s| s.packets_in > 0), "{r:?}");
    }

    /// A one-step, one-second search of 10 plain PCMU barges: the base of the tests that
    /// change one parameter.
    fn tiny_search() -> SearchParams {
        SearchParams {
            ramp: vec![10],
            step_ms: 100,
            max_seconds: 1,
            resolution: 5,
            core: None,
            sleep_when_idle: false,
            srtp: None,
            calls: CallShape::default(),
        }
    }

    #[test]
    fn unknown_codecs_and_modes_are_refused_before_any_step() {
        let mut p = SearchParams {
            calls: CallShape {
                codecs: vec!["pcmu".into(), "amr".into()],
                mode: None,
            },
            ..tiny_search()
        };
        let e = search(&p).expect_err("unknown codec");
        assert!(e.to_string().contains("amr"), "{e}");
        p.calls = CallShape {
            codecs: vec!["G722".into()],
            mode: Some("whisper".into()),
        };
        let e = search(&p).expect_err("unknown mode");
        assert!(e.to_string().contains("whisper"), "{e}");
        assert_eq!(p.calls.codecs().unwrap(), vec![Codec::G722]);
    }

    #[test]
    fn an_unknown_srtp_suite_is_refused_before_any_step() {
        let p = SearchParams {
            srtp: Some("aes_cm_256_hmac_sha1_80".into()),
            ..tiny_search()
        };
        let e = search(&p).expect_err("unknown suite");
        assert!(e.to_string().contains("aes_cm_128_hmac_sha1_80"), "{e}");
        assert_eq!(parse_srtp(None).unwrap(), None);
    }

    #[test]
    fn steps_default_to_sixty_seconds() {
        let mut text =
            br#"{"kind":"capacity","ramp":[10],"max_seconds":5,"resolution":5,"core":null}"#
                .to_vec();
        let s: crate::scenario::Scenario = simd_json::serde::from_slice(&mut text).unwrap();
        let crate::scenario::Scenario::Capacity(p) = s else {
            panic!("parsed as the wrong kind")
        };
        assert_eq!(p.step_ms, 60_000);
    }

    #[test]
    fn memory_measurement_runs_and_sees_growth() {
        let r = memory(50).unwrap();
        assert!(r.rss_after >= r.rss_before);
        assert!(r.bytes_per_session > 0.0, "{r:?}");
    }
}
