//! # earshot-perf: the cost model
//!
//! Fixed, seeded workloads whose cost is counted in executed instructions rather than
//! timed. Each [`Mode`] is one operation of the engine, run [`run`]`(mode, iterations)`
//! times in a loop with nothing else in it, so that `valgrind --tool=callgrind` (or
//! `perf stat -e instructions` where the machine exposes counters) sees the operation
//! and a constant start-up cost. `perf/callgrind.sh` runs each mode at two iteration
//! counts and divides the difference in instructions by the difference in iterations,
//! which cancels the start-up cost; `perf/baseline.json` holds the result and
//! `perf/check.sh` compares a fresh run against it.
//!
//! The operations:
//! - a forwarded packet through a [`Shard`], in the monitor plan (customer and agent hear
//!   each other, the supervisor hears both) with the supervisor's mix ticks run as they
//!   fall due, and the same packet with nobody mixing (the bare forward path);
//! - one 3-party barge period: three packets in, one mixed session tick (three decodes,
//!   three mixes, three encodes, three packets out);
//! - the DSP kernels alone: G.711 decode and encode of one 20 ms frame, and a mix of two
//!   160-sample inputs with the scalar reference and with the detected SIMD kernel.
//!
//! The shard workloads run on the test kit's shard rig (`earshot_testkit::rig`), the
//! same rig the capacity runner uses. Time is a fake clock advanced by the workload
//! (20 ms of engine time per barge period), so every run executes the same
//! instructions: no OS clock, no randomness beyond the shard's fixed seed, no I/O
//! (sends go to the rig's sink, which builds each packet, checksums and discards it).
//!
//! What this crate does not do: time anything (criterion benches in `bench/` do), run
//! valgrind (the scripts do), or judge the numbers (the baseline and `check.sh` do).
//!
//! Contract: for a given build and CPU feature set, `run(mode, n)` executes the same
//! instructions on every call, and its cost grows by the same amount per iteration once
//! the first few periods (jitter-buffer fill) have passed.

#![forbid(unsafe_code)]

use std::fmt;
use std::hint::black_box;

use earshot_dsp::g711;
use earshot_dsp::mix::MixKernels;
use earshot_engine_api::EngineError;
use earshot_testkit::fixtures::{AGENT, CUSTOMER, Supervision};
use earshot_testkit::g711::tone_frame;
use earshot_testkit::rig::{
    DiscardSink, FRAME_SAMPLES, PERIOD_NS, RigError, ShardRig, fold, shard_config, voice,
};
use earshot_types::time::Instant;
use earshot_types::{Codec, Gain};

/// The shard's seed: fixed so SSRCs and initial sequence numbers repeat run to run.
const SHARD_SEED: u64 = 0x005e_ed0f_ea25_4071;

/// One operation of the cost model; the binary's first argument names it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// One packet from the customer or the agent (alternately, one each per 20 ms) in
    /// the monitor plan: forwarded to the other party and buffered for the
    /// supervisor's mix, whose tick runs when due (one tick per two packets, amortised
    /// into this count).
    Forward,
    /// One packet forwarded between customer and agent while nobody mixes: the bare
    /// forward path, with no jitter buffer and no tick.
    ForwardPure,
    /// One 20 ms period of a 3-party barge session: three packets in (each buffered,
    /// none forwarded), then one mixed session tick sending three packets.
    BargeTick,
    /// G.711 mu-law decode of one 160-sample frame.
    G711Decode,
    /// G.711 mu-law encode of one 160-sample frame.
    G711Encode,
    /// Mix of two 160-sample inputs at unity gain with the scalar reference kernel.
    MixScalar,
    /// The same mix with the kernel [`MixKernels::detect`] picks on this CPU (under
    /// valgrind, the best instruction set valgrind emulates).
    MixDetected,
}

impl Mode {
    /// Every mode, in the order the scripts report them.
    pub const ALL: [Mode; 7] = [
        Mode::Forward,
        Mode::ForwardPure,
        Mode::BargeTick,
        Mode::G711Decode,
        Mode::G711Encode,
        Mode::MixScalar,
        Mode::MixDetected,
    ];

    /// The mode's name on the command line and in `baseline.json`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Forward => "forward",
            Mode::ForwardPure => "forward-pure",
            Mode::BargeTick => "barge-tick",
            Mode::G711Decode => "g711-decode",
            Mode::G711Encode => "g711-encode",
            Mode::MixScalar => "mix-scalar",
            Mode::MixDetected => "mix-detected",
        }
    }

    /// What one iteration is, for the report's "instructions per ..." column.
    pub fn unit(self) -> &'static str {
        match self {
            Mode::Forward | Mode::ForwardPure => "packet",
            Mode::BargeTick => "session tick",
            Mode::G711Decode | Mode::G711Encode => "frame",
            Mode::MixScalar | Mode::MixDetected => "listener frame",
        }
    }

    /// The mode named `name`, if any.
    pub fn parse(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a workload could not run.
#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    /// The shard refused a set-up command.
    #[error("shard set-up failed: {0}")]
    Engine(#[from] EngineError),
    /// The rig could not be set up.
    #[error("{0}")]
    Rig(#[from] RigError),
}

/// What one run did: enough to see that the work happened and was not optimised away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The operation.
    pub mode: Mode,
    /// How many times it ran.
    pub iterations: u64,
    /// The mix kernel in use (`"scalar"`, `"avx2"`, ...); the DSP-only g711 modes say
    /// `"none"`.
    pub kernel: &'static str,
    /// Datagrams handed to the shard (0 for DSP modes).
    pub packets_in: u64,
    /// Datagrams the shard built and sent (0 for DSP modes).
    pub packets_out: u64,
    /// Datagrams the shard dropped, all reasons.
    pub drops: u64,
    /// Session ticks the shard ran.
    pub ticks: u64,
    /// A fold of the produced bytes or samples; differs when the output does.
    pub checksum: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mode={} iterations={} kernel={} packets_in={} packets_out={} drops={} ticks={} checksum={:016x}",
            self.mode,
            self.iterations,
            self.kernel,
            self.packets_in,
            self.packets_out,
            self.drops,
            self.ticks,
            self.checksum
        )
    }
}

/// Runs `mode` `iterations` times and reports what it did.
pub fn run(mode: Mode, iterations: u64) -> Result<Report, PerfError> {
    match mode {
        Mode::Forward => Workload::new(Supervision::Monitor)?.run_forward(iterations, true),
        Mode::ForwardPure => Workload::new(Supervision::Call)?.run_forward(iterations, false),
        Mode::BargeTick => Workload::new(Supervision::Barge)?.run_barge(iterations),
        Mode::G711Decode => Ok(run_g711_decode(iterations)),
        Mode::G711Encode => Ok(run_g711_encode(iterations)),
        Mode::MixScalar => Ok(run_mix(Mode::MixScalar, MixKernels::scalar(), iterations)),
        Mode::MixDetected => Ok(run_mix(Mode::MixDetected, MixKernels::detect(), iterations)),
    }
}

/// 20 ms of party `party`'s voice as linear samples (the rig's tones: speech-level,
/// different per party so that a mix of two parties is not a doubling of one).
pub fn tone_pcm(party: usize) -> [i16; FRAME_SAMPLES] {
    let mut pcm = [0; FRAME_SAMPLES];
    voice(party).fill(0, &mut pcm);
    pcm
}

/// [`tone_pcm`] encoded as PCMU.
pub fn tone_pcmu(party: usize) -> [u8; FRAME_SAMPLES] {
    tone_frame(Codec::Pcmu, &voice(party), 0)
}

fn run_g711_decode(iterations: u64) -> Report {
    let payload = tone_pcmu(0);
    let mut pcm = [0i16; FRAME_SAMPLES];
    let mut checksum = 0;
    for i in 0..iterations {
        g711::decode(Codec::Pcmu, black_box(&payload), &mut pcm);
        let pcm = black_box(&pcm);
        checksum = fold(checksum, pcm[i as usize % FRAME_SAMPLES] as u16 as u64);
    }
    dsp_report(Mode::G711Decode, "none", iterations, checksum)
}

fn run_g711_encode(iterations: u64) -> Report {
    let pcm = tone_pcm(0);
    let mut payload = [0u8; FRAME_SAMPLES];
    let mut checksum = 0;
    for i in 0..iterations {
        g711::encode(Codec::Pcmu, black_box(&pcm), &mut payload);
        let payload = black_box(&payload);
        checksum = fold(checksum, u64::from(payload[i as usize % FRAME_SAMPLES]));
    }
    dsp_report(Mode::G711Encode, "none", iterations, checksum)
}

fn run_mix(mode: Mode, kernels: MixKernels, iterations: u64) -> Report {
    let (a, b) = (tone_pcm(0), tone_pcm(1));
    let gains = [Gain::UNITY; 2];
    let mut out = [0i16; FRAME_SAMPLES];
    let mut checksum = 0;
    for i in 0..iterations {
        let inputs: [&[i16]; 2] = [black_box(&a), black_box(&b)];
        (kernels.mix)(&mut out, &inputs, black_box(&gains));
        let out = black_box(&out);
        checksum = fold(checksum, out[i as usize % FRAME_SAMPLES] as u16 as u64);
    }
    dsp_report(mode, kernels.name, iterations, checksum)
}

fn dsp_report(mode: Mode, kernel: &'static str, iterations: u64, checksum: u64) -> Report {
    Report {
        mode,
        iterations,
        kernel,
        packets_in: 0,
        packets_out: 0,
        drops: 0,
        ticks: 0,
        checksum,
    }
}

/// The kit's shard rig holding one 3-leg session (customer, agent, supervisor) in one
/// supervision mode, fed one packet per leg per 20 ms of fake clock.
#[derive(Debug)]
struct Workload {
    rig: ShardRig<DiscardSink>,
}

impl Workload {
    fn new(mode: Supervision) -> Result<Workload, PerfError> {
        let cfg = shard_config(20_000, 16, 3, 1, SHARD_SEED);
        let mut rig = ShardRig::new(cfg, MixKernels::detect());
        rig.add_session(Instant::ZERO, "perf", 3, mode.edges())?;
        Ok(Workload { rig })
    }

    /// One packet per iteration, customer and agent alternately, 10 ms of fake clock
    /// apart (so each sends one per 20 ms); ticks run when due if `ticks`.
    fn run_forward(mut self, iterations: u64, ticks: bool) -> Result<Report, PerfError> {
        for i in 0..iterations {
            let (period, k) = (i / 2, if i % 2 == 0 { CUSTOMER } else { AGENT });
            let now = Instant::from_nanos(period * PERIOD_NS + (i % 2) * PERIOD_NS / 2);
            self.rig.feed(now, k, period);
            if ticks {
                self.rig.tick_if_due(now, &|| now);
            }
        }
        let mode = if ticks {
            Mode::Forward
        } else {
            Mode::ForwardPure
        };
        Ok(self.report(mode, iterations))
    }

    /// One 20 ms period per iteration: every leg sends one packet, then the tick runs.
    fn run_barge(mut self, iterations: u64) -> Result<Report, PerfError> {
        for period in 0..iterations {
            let now = Instant::from_nanos(period * PERIOD_NS);
            self.rig.feed_period(now, period);
            self.rig.tick_if_due(now, &|| now);
        }
        Ok(self.report(Mode::BargeTick, iterations))
    }

    fn report(&self, mode: Mode, iterations: u64) -> Report {
        let c = self.rig.shard().counters();
        let sink = self.rig.sink();
        Report {
            mode,
            iterations,
            kernel: self.rig.kernel(),
            packets_in: c.packets_in,
            packets_out: c.packets_out,
            drops: c.drops.iter().sum(),
            ticks: c.ticks,
            checksum: fold(sink.checksum, sink.sent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_name_parses_back_to_the_mode() {
        for mode in Mode::ALL {
            assert_eq!(Mode::parse(mode.name()), Some(mode));
        }
        assert_eq!(Mode::parse("no-such-mode"), None);
    }

    #[test]
    fn forward_in_the_monitor_plan_forwards_every_packet_and_ticks_once_per_period() {
        let r = run(Mode::Forward, 200).expect("rig builds");
        assert_eq!(r.packets_in, 200);
        assert_eq!(r.drops, 0, "{r}");
        // 100 periods: each packet forwarded once; the supervisor's mix sends about one
        // packet per period once its jitter buffer has filled.
        assert!(r.ticks >= 90 && r.ticks <= 101, "{r}");
        assert!(r.packets_out >= 200 + 90, "{r}");
    }

    #[test]
    fn forward_pure_forwards_every_packet_without_ticking() {
        let r = run(Mode::ForwardPure, 100).expect("rig builds");
        assert_eq!(
            (r.packets_in, r.packets_out, r.drops, r.ticks),
            (100, 100, 0, 0)
        );
    }

    #[test]
    fn barge_tick_mixes_one_frame_per_leg_per_period() {
        let r = run(Mode::BargeTick, 100).expect("rig builds");
        assert_eq!(r.packets_in, 300);
        assert_eq!(r.drops, 0, "{r}");
        assert!(r.ticks >= 95, "{r}");
        assert!(r.packets_out >= 3 * 95, "{r}");
    }

    #[test]
    fn mix_kernels_agree_on_the_output() {
        // The scalar reference defines correct, so the detected kernel's checksum over
        // the same iterations must match it.
        let scalar = run(Mode::MixScalar, 500).expect("dsp runs");
        let detected = run(Mode::MixDetected, 500).expect("dsp runs");
        assert_eq!(scalar.checksum, detected.checksum);
    }

    #[test]
    fn g711_checksums_change_with_the_iteration_count() {
        // The fold samples a different output position per iteration: a loop that was
        // skipped or hoisted would not produce distinct sums.
        let a = run(Mode::G711Decode, 10).expect("dsp runs");
        let b = run(Mode::G711Decode, 11).expect("dsp runs");
        assert_ne!(a.checksum, b.checksum);
        let c = run(Mode::G711Encode, 10).expect("dsp runs");
        assert_ne!(c.checksum, 0);
    }
}
