//! Tones: a sine generator, the Goertzel detector, and the "does this listener hear
//! that tone over this span" rule every audio test applies.
//!
//! Detection is by energy at one frequency relative to a known reference amplitude,
//! never by sample equality: G.711, mixing and concealment all change samples a little.
//! Tones used by the tests are multiples of 50 Hz, so a 20 ms frame (160 samples at
//! 8 kHz) and a 100 ms window both hold whole periods of every tone and the Goertzel bins
//! do not leak into each other.

/// The narrowband sample rate every G.711 test uses.
pub const NARROWBAND_HZ: f64 = 8000.0;

/// Peak amplitude of the tests' tones: 8192, a quarter of full scale (about -12 dBFS),
/// loud enough to measure and low enough that a mix of four never saturates.
pub const TONE_AMPLITUDE: f64 = 8192.0;

/// A tone counts as present in a window when its measured amplitude is at least this
/// fraction of the reference amplitude (-12 dB). A tone mixed at unity measures about
/// 1.0; an absent tone measures below 0.01 (G.711 noise and leakage), so the margin is
/// wide both ways.
pub const PRESENT_FRACTION: f64 = 0.25;

/// A window whose tone measures below this fraction of the reference is silent for that
/// tone (-20 dB): concealment fades a lost frame to 0.75, 0.375 and 0.19.
pub const SILENT_FRACTION: f64 = 0.1;

/// The peak amplitude of a sine at `dbfs` decibels relative to full scale (32767).
pub fn amplitude_dbfs(dbfs: f64) -> f64 {
    32767.0 * 10f64.powf(dbfs / 20.0)
}

/// A sine generator: `amplitude * sin(2 pi hz n / rate_hz)`, rounded to 16 bits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tone {
    /// Frequency in Hz.
    pub hz: f64,
    /// Peak amplitude in linear 16-bit units.
    pub amplitude: f64,
    /// Sample rate in Hz.
    pub rate_hz: f64,
}

impl Tone {
    /// A tone of `hz` at `amplitude`, sampled at `rate_hz`.
    pub const fn new(hz: f64, amplitude: f64, rate_hz: f64) -> Tone {
        Tone {
            hz,
            amplitude,
            rate_hz,
        }
    }

    /// A narrowband (8 kHz) tone of `hz` at the tests' [`TONE_AMPLITUDE`].
    pub const fn narrowband(hz: f64) -> Tone {
        Tone::new(hz, TONE_AMPLITUDE, NARROWBAND_HZ)
    }

    /// Sample number `n` of the tone (sample 0 is at phase 0).
    pub fn sample(&self, n: u64) -> i16 {
        let phase = 2.0 * std::f64::consts::PI * self.hz * n as f64 / self.rate_hz;
        (self.amplitude * phase.sin()).round() as i16
    }

    /// Fills `out` with samples `first ..` of the tone.
    pub fn fill(&self, first: u64, out: &mut [i16]) {
        for (i, s) in out.iter_mut().enumerate() {
            *s = self.sample(first + i as u64);
        }
    }

    /// Samples `first .. first + n` of the tone.
    pub fn samples(&self, first: u64, n: usize) -> Vec<i16> {
        let mut out = vec![0; n];
        self.fill(first, &mut out);
        out
    }
}

/// Amplitude of the `hz` component of `samples` taken at `rate_hz` (Goertzel): for a
/// pure sine of amplitude `a` on a bin, returns about `a`; 0 for no samples.
pub fn tone_amplitude(samples: &[i16], hz: f64, rate_hz: f64) -> f64 {
    let n = samples.len();
    if n == 0 {
        return 0.0;
    }
    let w = 2.0 * std::f64::consts::PI * hz / rate_hz;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * power.max(0.0).sqrt() / n as f64
}

/// How one tone measured over a span cut into windows (frames, or fixed windows of a
/// rebuilt playout). Each window's measure is the tone's amplitude as a fraction of the
/// reference amplitude.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ToneReport {
    /// Windows measured.
    pub windows: usize,
    /// Windows where the tone was present (at least [`PRESENT_FRACTION`]).
    pub detected: usize,
    /// Smallest fraction seen (infinity when no window was measured).
    pub min_fraction: f64,
    /// Largest fraction seen.
    pub max_fraction: f64,
    /// Sum of the squared fractions: the relative power, for [`ToneReport::mean_db`].
    pub power_sum: f64,
}

impl Default for ToneReport {
    fn default() -> Self {
        ToneReport {
            windows: 0,
            detected: 0,
            min_fraction: f64::INFINITY,
            max_fraction: 0.0,
            power_sum: 0.0,
        }
    }
}

impl ToneReport {
    /// Adds one window whose tone measured `fraction` of the reference amplitude.
    pub fn add(&mut self, fraction: f64) {
        self.windows += 1;
        self.detected += usize::from(fraction >= PRESENT_FRACTION);
        self.min_fraction = self.min_fraction.min(fraction);
        self.max_fraction = self.max_fraction.max(fraction);
        self.power_sum += fraction * fraction;
    }

    /// Measures `hz` in `window` (samples at `rate_hz`) against `reference` amplitude and
    /// adds it.
    pub fn add_window(&mut self, window: &[i16], hz: f64, rate_hz: f64, reference: f64) {
        self.add(tone_amplitude(window, hz, rate_hz) / reference);
    }

    /// The tone is heard: present in at least 90% of the windows, and there was at least
    /// one window.
    pub fn hears(&self) -> bool {
        self.windows > 0 && self.detected * 10 >= self.windows * 9
    }

    /// The tone is present in no window.
    pub fn never_hears(&self) -> bool {
        self.detected == 0
    }

    /// Mean power of the tone relative to the reference, in dB (negative infinity when
    /// no window was measured; floored at -120 dB).
    pub fn mean_db(&self) -> f64 {
        if self.windows == 0 {
            return f64::NEG_INFINITY;
        }
        10.0 * (self.power_sum / self.windows as f64).max(1e-12).log10()
    }
}

/// Measures `hz` over consecutive windows of `window_samples` samples of `samples`
/// (a trailing partial window is left out) against `reference` amplitude.
pub fn tone_report(
    samples: &[i16],
    hz: f64,
    rate_hz: f64,
    window_samples: usize,
    reference: f64,
) -> ToneReport {
    let mut r = ToneReport::default();
    if window_samples == 0 {
        return r;
    }
    for w in samples.chunks_exact(window_samples) {
        r.add_window(w, hz, rate_hz, reference);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goertzel_measures_a_tone_and_ignores_the_others() {
        let mut mix = Tone::new(500.0, 8192.0, 8000.0).samples(0, 800);
        for (m, o) in mix
            .iter_mut()
            .zip(Tone::new(900.0, 8192.0, 8000.0).samples(0, 800))
        {
            *m += o;
        }
        let at_500 = tone_amplitude(&mix, 500.0, 8000.0);
        let at_1400 = tone_amplitude(&mix, 1400.0, 8000.0);
        assert!((at_500 - 8192.0).abs() < 100.0, "500 Hz measured {at_500}");
        assert!(at_1400 < 50.0, "absent 1400 Hz measured {at_1400}");
    }

    #[test]
    fn the_generator_is_a_sine_at_its_rate() {
        let t = Tone::new(1000.0, 10_000.0, 8000.0);
        // 1 kHz at 8 kHz: 8 samples per period, peaks at samples 2 and 6.
        assert_eq!(t.sample(0), 0);
        assert_eq!(t.sample(2), 10_000);
        assert_eq!(t.sample(6), -10_000);
        assert_eq!(t.samples(8, 4), t.samples(0, 4), "periodic");
        let wide = Tone::new(1000.0, 10_000.0, 16_000.0);
        assert_eq!(wide.sample(4), 10_000, "16 samples per period at 16 kHz");
    }

    #[test]
    fn reports_count_windows_and_levels() {
        let tone = Tone::narrowband(500.0);
        let mut pcm = tone.samples(0, 1600);
        // Silence the last 100 ms window.
        pcm[800..].fill(0);
        let r = tone_report(&pcm, 500.0, NARROWBAND_HZ, 800, TONE_AMPLITUDE);
        assert_eq!((r.windows, r.detected), (2, 1));
        assert!(!r.hears() && !r.never_hears());
        // Half the power on average: -3 dB.
        assert!((r.mean_db() + 3.0).abs() < 0.2, "{}", r.mean_db());
        let absent = tone_report(&pcm, 900.0, NARROWBAND_HZ, 800, TONE_AMPLITUDE);
        assert!(
            absent.never_hears() && absent.mean_db() < -30.0,
            "{absent:?}"
        );
        assert_eq!(ToneReport::default().mean_db(), f64::NEG_INFINITY);
    }

    #[test]
    fn dbfs_amplitudes() {
        assert!((amplitude_dbfs(0.0) - 32767.0).abs() < 1e-9);
        assert!((amplitude_dbfs(-12.0) - TONE_AMPLITUDE).abs() < 50.0);
    }
}
