//! Resampler: exact output counts, streaming invariance, and the frequency response
//! measured with sine tones (coherent DFT bins, so no window leakage), against the
//! specification in the module doc. The same measurement runs on the `rubato` crate for
//! the comparison recorded in docs/codecs.md.

use super::*;

const DIRECTIONS: [(u32, u32); 6] = [
    (8000, 16000),
    (16000, 8000),
    (8000, 48000),
    (48000, 8000),
    (16000, 48000),
    (48000, 16000),
];

/// Input tone amplitude: -6 dBFS, far above the 16-bit rounding floor (-101 dBFS).
const AMPLITUDE: f64 = 16384.0;
/// Tones are multiples of 10 Hz and the analysis window is 100 ms: every tone and every
/// alias or image falls exactly on a DFT bin.
const BIN_HZ: u32 = 10;

/// A resampler under test: 20 ms frames in, whatever it outputs for them out.
trait Stream {
    fn push(&mut self, frame: &[i16], out: &mut Vec<i16>);
}

impl Stream for Resampler {
    fn push(&mut self, frame: &[i16], out: &mut Vec<i16>) {
        let start = out.len();
        out.resize(start + self.output_len(frame.len()), 0);
        let n = self.process(frame, &mut out[start..]);
        assert_eq!(n, out.len() - start);
    }
}

/// Amplitude of the component at `freq_hz` in `y` (an integer number of cycles long).
fn tone_amplitude(y: &[i16], rate_hz: u32, freq_hz: u32) -> f64 {
    let w = 2.0 * std::f64::consts::PI * f64::from(freq_hz) / f64::from(rate_hz);
    let (mut re, mut im) = (0.0, 0.0);
    for (n, &v) in y.iter().enumerate() {
        let phase = w * n as f64;
        re += f64::from(v) * phase.cos();
        im -= f64::from(v) * phase.sin();
    }
    2.0 * (re * re + im * im).sqrt() / y.len() as f64
}

/// Run a tone at `freq_hz` through a fresh stream in 20 ms frames; return 100 ms of
/// output after 100 ms of settling (longer than any filter here).
fn run_tone(stream: &mut dyn Stream, from_hz: u32, to_hz: u32, freq_hz: u32) -> Vec<i16> {
    let frame = (from_hz / 50) as usize;
    let frames = 15; // 300 ms
    let w = 2.0 * std::f64::consts::PI * f64::from(freq_hz) / f64::from(from_hz);
    let input: Vec<i16> = (0..frame * frames)
        .map(|n| (AMPLITUDE * (w * n as f64 + 0.3).sin()).round() as i16)
        .collect();
    let mut out = Vec::new();
    for f in input.chunks(frame) {
        stream.push(f, &mut out);
    }
    let settle = (to_hz / 10) as usize;
    let window = (to_hz / BIN_HZ) as usize;
    out[settle..settle + window].to_vec()
}

fn db(ratio: f64) -> f64 {
    20.0 * ratio.max(1e-12).log10()
}

/// Where a tone at `f` ends up after sampling at `rate` (folded into 0..rate/2).
fn alias(f: u32, rate: u32) -> u32 {
    let r = f % rate;
    if r > rate / 2 { rate - r } else { r }
}

/// Worst passband deviation (dB, absolute) and worst stopband gain (dB) of one
/// direction, for streams made by `make`.
#[derive(Debug)]
struct Response {
    passband_ripple_db: f64,
    stopband_gain_db: f64,
    worst_stop_hz: u32,
}

fn measure(make: &dyn Fn() -> Box<dyn Stream>, from_hz: u32, to_hz: u32) -> Response {
    let low = from_hz.min(to_hz);
    let pass_edge = low * 45 / 100;
    let stop_edge = low * 55 / 100;
    let mut ripple: f64 = 0.0;
    let mut stop: f64 = -200.0;
    let mut worst_stop_hz = 0;

    // Passband: the tone itself, 50 Hz up to 0.45 of the lower rate.
    let step = low / 80; // 100 Hz at 8 kHz
    let mut f = 50;
    while f <= pass_edge {
        let out = run_tone(make().as_mut(), from_hz, to_hz, f);
        let gain = db(tone_amplitude(&out, to_hz, f) / AMPLITUDE);
        ripple = ripple.max(gain.abs());
        // Up: every image of this tone must be in the stopband.
        if to_hz > from_hz {
            let mut k = 1;
            while k * from_hz - f < to_hz / 2 {
                for image in [k * from_hz - f, k * from_hz + f] {
                    if image < to_hz / 2 {
                        let g = db(tone_amplitude(&out, to_hz, image) / AMPLITUDE);
                        if g > stop {
                            (stop, worst_stop_hz) = (g, image);
                        }
                    }
                }
                k += 1;
            }
        }
        f += step;
    }

    // Down: tones from 0.55 of the output rate up to the input Nyquist must not alias
    // back above -60 dB.
    if to_hz < from_hz {
        let mut f = stop_edge;
        while f < from_hz / 2 {
            let a = alias(f, to_hz);
            if a > 2 * BIN_HZ && a < to_hz / 2 - 2 * BIN_HZ {
                let out = run_tone(make().as_mut(), from_hz, to_hz, f);
                let g = db(tone_amplitude(&out, to_hz, a) / AMPLITUDE);
                if g > stop {
                    (stop, worst_stop_hz) = (g, f);
                }
            }
            f += low / 47 / BIN_HZ * BIN_HZ; // an odd step, so aliases spread
        }
    }
    Response {
        passband_ripple_db: ripple,
        stopband_gain_db: stop,
        worst_stop_hz,
    }
}

#[test]
fn frequency_response_meets_the_specification() {
    for (from_hz, to_hz) in DIRECTIONS {
        let make = || -> Box<dyn Stream> { Box::new(Resampler::new(from_hz, to_hz).unwrap()) };
        let r = measure(&make, from_hz, to_hz);
        println!(
            "ours {from_hz}->{to_hz}: passband ripple {:.4} dB, stopband {:.1} dB (worst at {} Hz)",
            r.passband_ripple_db, r.stopband_gain_db, r.worst_stop_hz
        );
        assert!(r.passband_ripple_db <= 0.1, "{from_hz}->{to_hz}: {r:?}");
        assert!(r.stopband_gain_db <= -60.0, "{from_hz}->{to_hz}: {r:?}");
    }
}

/// The same measurement on rubato's synchronous FFT resampler (its recommended type for
/// fixed ratios), 20 ms chunks. Printed for docs/codecs.md; the assertion only checks
/// that the harness drives rubato correctly (tones pass at about unity gain).
#[test]
fn rubato_measured_the_same_way() {
    use rubato::audioadapter_buffers::direct::InterleavedSlice;
    use rubato::{Fft, FixedSync, Resampler as _};

    struct Rubato {
        inner: Fft<f32>,
        input: Vec<f32>,
        output: Vec<f32>,
    }
    impl Stream for Rubato {
        fn push(&mut self, frame: &[i16], out: &mut Vec<i16>) {
            for (x, &s) in self.input.iter_mut().zip(frame) {
                *x = f32::from(s) / 32768.0;
            }
            let frames_in = self.input.len();
            let frames_out = self.output.len();
            let input = InterleavedSlice::new(&self.input, 1, frames_in).unwrap();
            let mut output = InterleavedSlice::new_mut(&mut self.output, 1, frames_out).unwrap();
            let (_, written) = self
                .inner
                .process_into_buffer(&input, &mut output, None)
                .unwrap();
            out.extend(self.output[..written].iter().map(|&y| to_i16(y * 32768.0)));
        }
    }

    for (from_hz, to_hz) in DIRECTIONS {
        let make = || -> Box<dyn Stream> {
            let frame = (from_hz / 50) as usize;
            let inner =
                Fft::<f32>::new(from_hz as usize, to_hz as usize, frame, 1, FixedSync::Both)
                    .unwrap();
            assert_eq!(inner.input_frames_next(), frame);
            let out_frames = inner.output_frames_next();
            Box::new(Rubato {
                inner,
                input: vec![0.0; frame],
                output: vec![0.0; out_frames],
            })
        };
        let r = measure(&make, from_hz, to_hz);
        println!(
            "rubato Fft {from_hz}->{to_hz}: passband ripple {:.4} dB, stopband {:.1} dB (worst at {} Hz)",
            r.passband_ripple_db, r.stopband_gain_db, r.worst_stop_hz
        );
        assert!(r.passband_ripple_db < 3.0, "harness: {r:?}");
    }
}

#[test]
fn output_counts_are_exact() {
    for (from_hz, to_hz) in DIRECTIONS {
        let mut r = Resampler::new(from_hz, to_hz).unwrap();
        for ptime_ms in [10u32, 20, 30, 60] {
            let input = vec![1000i16; (from_hz / 1000 * ptime_ms) as usize];
            let mut output = vec![0i16; (to_hz / 1000 * ptime_ms) as usize];
            assert_eq!(r.output_len(input.len()), output.len());
            assert_eq!(r.process(&input, &mut output), output.len());
        }
    }
    // Going down, a remainder is carried: 7 + 5 samples at 6:1 give 1 then 1.
    let mut r = Resampler::new(48000, 8000).unwrap();
    let mut out = [0i16; 2];
    assert_eq!(r.process(&[0; 7], &mut out), 1);
    assert_eq!(r.output_len(5), 1);
    assert_eq!(r.process(&[0; 5], &mut out), 1);
    assert_eq!(r.output_len(5), 0);
}

#[test]
fn chunking_does_not_change_the_output() {
    // Seeded chunk sizes; the seed is fixed and printed so a failure replays.
    let seed = 0x5EED_u64;
    println!("chunk seed {seed}");
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (from_hz, to_hz) in DIRECTIONS {
        let input: Vec<i16> = (0..from_hz as usize / 2)
            .map(|_| next() as i16 / 2)
            .collect();
        let mut whole = Resampler::new(from_hz, to_hz).unwrap();
        let mut expected = vec![0i16; whole.output_len(input.len())];
        whole.process(&input, &mut expected);

        let mut pieces = Resampler::new(from_hz, to_hz).unwrap();
        let mut got = Vec::new();
        let mut at = 0;
        while at < input.len() {
            // Include chunks larger than the internal block.
            let n = (1 + next() as usize % 4000).min(input.len() - at);
            let mut out = vec![0i16; pieces.output_len(n)];
            pieces.process(&input[at..at + n], &mut out);
            got.extend_from_slice(&out);
            at += n;
        }
        assert_eq!(got, expected, "{from_hz}->{to_hz}");
    }
}

#[test]
fn impulse_peaks_at_the_stated_delay_and_dc_passes() {
    for (from_hz, to_hz) in DIRECTIONS {
        let mut r = Resampler::new(from_hz, to_hz).unwrap();
        let mut input = vec![0i16; from_hz as usize / 10];
        input[0] = 30000;
        let mut out = vec![0i16; r.output_len(input.len())];
        r.process(&input, &mut out);
        let peak = out
            .iter()
            .enumerate()
            .max_by_key(|(_, v)| v.unsigned_abs())
            .unwrap()
            .0;
        let delay = r.delay_output_samples();
        assert!(
            (peak as f64 - delay).abs() <= 1.0,
            "{from_hz}->{to_hz}: peak {peak}, delay {delay}"
        );

        let mut r = Resampler::new(from_hz, to_hz).unwrap();
        let input = vec![12345i16; from_hz as usize / 10];
        let mut out = vec![0i16; r.output_len(input.len())];
        r.process(&input, &mut out);
        let settled = &out[out.len() / 2..];
        assert!(
            settled.iter().all(|&v| (v - 12345).abs() <= 2),
            "{from_hz}->{to_hz}"
        );
    }
}

/// The polyphase code against the textbook form of the same filter, in f64: zero-stuff
/// and convolve going up, convolve and keep every ratio-th going down. Inputs are a
/// full-scale square (the output must saturate, not wrap) and full-range noise.
#[test]
fn polyphase_matches_direct_convolution() {
    for (from_hz, to_hz) in DIRECTIONS {
        let mut r = Resampler::new(from_hz, to_hz).unwrap();
        let (up, ratio) = if to_hz > from_hz {
            (true, (to_hz / from_hz) as usize)
        } else {
            (false, (from_hz / to_hz) as usize)
        };
        let h = lowpass_prototype(ratio);
        let period = (from_hz / 500) as usize;
        let mut noise = 0x1234_5678_u32;
        let input: Vec<i16> = (0..from_hz as usize / 5)
            .map(|i| {
                noise = noise.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                if i < from_hz as usize / 10 {
                    if (i / (period / 2)).is_multiple_of(2) {
                        i16::MAX
                    } else {
                        i16::MIN
                    }
                } else {
                    (noise >> 16) as i16
                }
            })
            .collect();
        let mut out = vec![0i16; r.output_len(input.len())];
        r.process(&input, &mut out);

        let x = |i: isize| -> f64 {
            if i < 0 {
                0.0
            } else {
                f64::from(input[i as usize])
            }
        };
        for (n, &got) in out.iter().enumerate() {
            let y: f64 = if up {
                // u[m] = ratio * x[m / ratio] where ratio divides m, else 0.
                h.iter()
                    .enumerate()
                    .filter(|&(t, _)| (n as isize - t as isize).rem_euclid(ratio as isize) == 0)
                    .map(|(t, &c)| {
                        c * ratio as f64 * x((n as isize - t as isize).div_euclid(ratio as isize))
                    })
                    .sum()
            } else {
                h.iter()
                    .enumerate()
                    .map(|(t, &c)| c * x((ratio * n + ratio - 1) as isize - t as isize))
                    .sum()
            };
            let expected = y.round().clamp(-32768.0, 32767.0) as i16;
            assert!(
                (i32::from(got) - i32::from(expected)).abs() <= 1,
                "{from_hz}->{to_hz} sample {n}: {got} vs {expected} ({y})"
            );
        }
        assert!(
            out.contains(&i16::MAX) && out.contains(&i16::MIN),
            "{from_hz}->{to_hz}"
        );
    }
}

#[test]
fn unsupported_rates_are_refused() {
    for (from_hz, to_hz) in [(8000, 8000), (44100, 48000), (8000, 32000), (0, 8000)] {
        assert_eq!(
            Resampler::new(from_hz, to_hz).unwrap_err(),
            UnsupportedRates { from_hz, to_hz }
        );
    }
}

/// Not correctness tests: fixed workloads (10 s in 20 ms frames) for counting
/// instructions per direction, e.g. `valgrind --tool=callgrind <test binary> --ignored
/// resample::tests::cost_probe_8_48`. Each asserts only that the work happened.
fn cost_probe(from_hz: u32, to_hz: u32) {
    let mut r = Resampler::new(from_hz, to_hz).unwrap();
    let frame: Vec<i16> = (0..from_hz as usize / 50)
        .map(|i| (i as i16).wrapping_mul(97))
        .collect();
    let mut out = vec![0i16; to_hz as usize / 50];
    let mut total = 0usize;
    for _ in 0..500 {
        total += r.process(&frame, &mut out);
    }
    assert_eq!(total, 500 * out.len());
}

macro_rules! cost_probes {
    ($($name:ident: $from:expr => $to:expr),*) => {$(
        #[test]
        #[ignore]
        fn $name() {
            cost_probe($from, $to);
        }
    )*};
}

cost_probes!(
    cost_probe_8_16: 8000 => 16000,
    cost_probe_16_8: 16000 => 8000,
    cost_probe_8_48: 8000 => 48000,
    cost_probe_48_8: 48000 => 8000,
    cost_probe_16_48: 16000 => 48000,
    cost_probe_48_16: 48000 => 16000
);
