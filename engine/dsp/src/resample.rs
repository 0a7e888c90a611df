//! Streaming polyphase resampler between 8, 16 and 48 kHz (integer ratios 2, 3, 6).
//!
//! One linear-phase FIR low-pass, designed once at construction, serves as both the
//! anti-imaging filter (up) and the anti-aliasing filter (down). Its specification,
//! in terms of the lower of the two rates `f_low`:
//!
//! - **passband** 0 to 0.45 `f_low`, ripple well under 0.1 dB;
//! - **stopband** from 0.55 `f_low` up, at least 60 dB down (designed for about 75 dB).
//!   Going down, everything that would alias into the passband is at least 60 dB down;
//!   going up, every image of a passband tone is. The band 0.45-0.55 `f_low` is the
//!   transition (where G.711's own filters roll off anyway).
//!
//! The filter is a Kaiser-windowed sinc of `48 * ratio` taps (48 per polyphase branch),
//! so every direction costs 48 multiply-adds per sample at the higher rate on the up
//! side, or 48 per input sample on the down side. Its delay is `(48 * ratio - 1) / 2`
//! samples at the higher rate, the same both ways: 3.0 ms when one side is 8 kHz,
//! 1.5 ms between 16 and 48 kHz.
//!
//! Arithmetic is `f32` with 16-bit samples in and out (rounded, saturated). The inner
//! product is written with eight independent partial sums, which is what the compiler
//! vectorises; that summation order is the definition of the result, so any SIMD
//! version must keep it.
//!
//! Streaming: the resampler keeps its filter history between calls, and the number of
//! output samples is exact: `n` in gives `n * ratio` out going up and `n / ratio` out
//! going down (a remainder is kept for the next call), so 20 ms in is 20 ms out. Nothing
//! allocates after [`Resampler::new`]. Measured frequency response and the comparison
//! with the `rubato` crate are in `docs/codecs.md`.

#![forbid(unsafe_code)]

/// Taps per polyphase branch; the filter has `TAPS_PER_PHASE * ratio` taps. A multiple
/// of 8 so that every inner product is whole 8-lane blocks.
const TAPS_PER_PHASE: usize = 48;
const _: () = assert!(TAPS_PER_PHASE.is_multiple_of(8));

/// Kaiser window shape: beta = 0.1102 * (A - 8.7) for A = 75 dB of stopband.
const KAISER_BETA: f64 = 7.3;

/// Input is consumed in blocks of at most this many samples, so the work buffer has a
/// fixed size whatever the caller passes (60 ms at 48 kHz).
const BLOCK_SAMPLES: usize = 2880;

/// A rate this resampler does not convert between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnsupportedRates {
    /// Input rate asked for, in Hz.
    pub from_hz: u32,
    /// Output rate asked for, in Hz.
    pub to_hz: u32,
}

impl core::fmt::Display for UnsupportedRates {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "no resampler from {} Hz to {} Hz (supported: 8000, 16000, 48000, different)",
            self.from_hz, self.to_hz
        )
    }
}

impl std::error::Error for UnsupportedRates {}

/// Which way the rate goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// A mono 16-bit streaming resampler for one direction (for example 8 kHz to 48 kHz).
#[derive(Clone, Debug)]
pub struct Resampler {
    from_hz: u32,
    to_hz: u32,
    direction: Direction,
    ratio: usize,
    /// Up: `ratio` branches of `TAPS_PER_PHASE` coefficients each, each branch reversed
    /// so that its inner product runs forward over the input history. Down: the whole
    /// filter (symmetric, so its own reverse), `TAPS_PER_PHASE * ratio` taps.
    coefficients: Vec<f32>,
    /// Filter history followed by the samples of the current block, as `f32`.
    buffer: Vec<f32>,
    /// Valid samples in `buffer`.
    filled: usize,
    /// Samples of history the filter needs before the first new sample.
    history: usize,
}

impl Resampler {
    /// A resampler from `from_hz` to `to_hz`, both among 8000, 16000 and 48000 and
    /// different. Allocates its coefficients and work buffer (a few kilobytes) here, and
    /// never again.
    pub fn new(from_hz: u32, to_hz: u32) -> Result<Self, UnsupportedRates> {
        let supported = |hz| matches!(hz, 8000 | 16000 | 48000);
        if !supported(from_hz) || !supported(to_hz) || from_hz == to_hz {
            return Err(UnsupportedRates { from_hz, to_hz });
        }
        let (direction, ratio) = if to_hz > from_hz {
            (Direction::Up, (to_hz / from_hz) as usize)
        } else {
            (Direction::Down, (from_hz / to_hz) as usize)
        };
        let prototype = lowpass_prototype(ratio);
        let taps = prototype.len();
        let (coefficients, history) = match direction {
            Direction::Up => {
                // Branch p produces output sample ratio*j + p from inputs j, j-1, ...:
                // y = ratio * sum_k h[p + ratio*k] x[j - k]. Stored oldest input first.
                let mut c = Vec::with_capacity(taps);
                for p in 0..ratio {
                    for i in 0..TAPS_PER_PHASE {
                        let k = TAPS_PER_PHASE - 1 - i;
                        c.push((prototype[p + ratio * k] * ratio as f64) as f32);
                    }
                }
                (c, TAPS_PER_PHASE - 1)
            }
            // y[m] = sum_t h[t] x[ratio*m + t - (taps - ratio)], h symmetric.
            Direction::Down => (prototype.iter().map(|&h| h as f32).collect(), taps - ratio),
        };
        Ok(Resampler {
            from_hz,
            to_hz,
            direction,
            ratio,
            coefficients,
            // History, a remainder of fewer than `ratio` samples (down), one block.
            buffer: vec![0.0; history + ratio + BLOCK_SAMPLES],
            filled: history,
            history,
        })
    }

    /// Input rate in Hz.
    pub fn from_hz(&self) -> u32 {
        self.from_hz
    }

    /// Output rate in Hz.
    pub fn to_hz(&self) -> u32 {
        self.to_hz
    }

    /// Output samples that `input_samples` more input will produce, given what is
    /// pending: exactly `input_samples * ratio` up, `(pending + input_samples) / ratio`
    /// down (0 pending when every call is a multiple of the ratio).
    pub fn output_len(&self, input_samples: usize) -> usize {
        match self.direction {
            Direction::Up => input_samples * self.ratio,
            Direction::Down => (self.filled - self.history + input_samples) / self.ratio,
        }
    }

    /// The filter's delay in output samples (the group delay of the linear-phase FIR).
    pub fn delay_output_samples(&self) -> f64 {
        let delay_high_rate = (self.coefficients.len() - 1) as f64 / 2.0;
        match self.direction {
            Direction::Up => delay_high_rate,
            Direction::Down => delay_high_rate / self.ratio as f64,
        }
    }

    /// Forget all history, as if new.
    pub fn reset(&mut self) {
        self.buffer.fill(0.0);
        self.filled = self.history;
    }

    /// Resample `input` into `output`; returns the number of samples written, which is
    /// [`Resampler::output_len`]`(input.len())`. `output` must have room for that many
    /// (checked: a shorter `output` is a programmer error and panics, as a slice index
    /// would).
    pub fn process(&mut self, input: &[i16], output: &mut [i16]) -> usize {
        let needed = self.output_len(input.len());
        assert!(
            output.len() >= needed,
            "resampler output has room for {} of {needed} samples",
            output.len()
        );
        let mut written = 0;
        for block in input.chunks(BLOCK_SAMPLES) {
            written += self.process_block(block, &mut output[written..]);
        }
        debug_assert_eq!(written, needed);
        written
    }

    fn process_block(&mut self, block: &[i16], output: &mut [i16]) -> usize {
        debug_assert!(self.filled + block.len() <= self.buffer.len());
        for (slot, &x) in self.buffer[self.filled..].iter_mut().zip(block) {
            *slot = f32::from(x);
        }
        self.filled += block.len();
        let (written, consumed) = match self.direction {
            Direction::Up => self.upsample(output),
            Direction::Down => self.downsample(output),
        };
        // Keep the unconsumed tail (history plus any remainder) for the next call.
        self.buffer.copy_within(consumed..self.filled, 0);
        self.filled -= consumed;
        written
    }

    /// Every input sample past the history yields `ratio` outputs, one per branch.
    fn upsample(&self, output: &mut [i16]) -> (usize, usize) {
        let inputs = self.filled - self.history;
        let mut written = 0;
        for j in 0..inputs {
            let window = &self.buffer[j..j + TAPS_PER_PHASE];
            for branch in self.coefficients.chunks_exact(TAPS_PER_PHASE) {
                output[written] = to_i16(dot(branch, window));
                written += 1;
            }
        }
        (written, inputs)
    }

    /// One output per complete window, windows `ratio` samples apart.
    fn downsample(&self, output: &mut [i16]) -> (usize, usize) {
        let taps = self.coefficients.len();
        let mut start = 0;
        let mut written = 0;
        while start + taps <= self.filled {
            output[written] = to_i16(dot(&self.coefficients, &self.buffer[start..start + taps]));
            written += 1;
            start += self.ratio;
        }
        (written, start)
    }
}

/// Round half away from zero and saturate to 16 bits (`as` saturates).
#[inline(always)]
fn to_i16(y: f32) -> i16 {
    (y + 0.5f32.copysign(y)) as i16
}

/// Inner product in eight interleaved partial sums, added pairwise at the end. Both
/// slices are the same length, a multiple of 8.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for lane in 0..8 {
            acc[lane] += ca[lane] * cb[lane];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// The low-pass prototype for a ratio, at the higher rate: a Kaiser-windowed sinc with
/// cutoff at half the lower rate (the middle of the 0.45-0.55 transition band),
/// `TAPS_PER_PHASE * ratio` taps, DC gain 1.
fn lowpass_prototype(ratio: usize) -> Vec<f64> {
    let taps = TAPS_PER_PHASE * ratio;
    let center = (taps - 1) as f64 / 2.0;
    // Cutoff in cycles per sample at the higher rate.
    let cutoff = 0.5 / ratio as f64;
    let i0_beta = bessel_i0(KAISER_BETA);
    let mut h: Vec<f64> = (0..taps)
        .map(|n| {
            let t = n as f64 - center;
            let sinc = if t == 0.0 {
                2.0 * cutoff
            } else {
                (2.0 * std::f64::consts::PI * cutoff * t).sin() / (std::f64::consts::PI * t)
            };
            let x = t / center;
            let window = bessel_i0(KAISER_BETA * (1.0 - x * x).max(0.0).sqrt()) / i0_beta;
            sinc * window
        })
        .collect();
    let sum: f64 = h.iter().sum();
    for v in &mut h {
        *v /= sum;
    }
    h
}

/// Modified Bessel function of the first kind, order 0, by its power series (converges
/// fast for the arguments a Kaiser window uses).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let half = x / 2.0;
    for k in 1..50 {
        term *= (half / k as f64) * (half / k as f64);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

#[cfg(test)]
mod tests;
