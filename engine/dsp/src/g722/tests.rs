//! G.722 against an independent implementation (ffmpeg's `g722` codec, run as a
//! process), plus properties that need no oracle.
//!
//! The ffmpeg tests print `SKIPPED: ffmpeg not installed` and pass when there is no
//! `ffmpeg` on the PATH; CI installs it. Random signals are seeded; the seed is printed
//! and `G722_SEED=<n>` replays it.

use super::*;
use std::path::PathBuf;
use std::process::Command;

const RATE_HZ: f64 = 16_000.0;
/// Ten seconds per signal: long enough for every adaptation path to be exercised.
const SIGNAL_SAMPLES: usize = 160_000;

// ---------------------------------------------------------------------------------------
// Test signals
// ---------------------------------------------------------------------------------------

/// SplitMix64: small, seedable, good enough for test noise.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

fn seed() -> u64 {
    let seed = std::env::var("G722_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6722_2026);
    println!("G722_SEED={seed}");
    seed
}

fn to_i16(x: f64) -> i16 {
    x.round().clamp(-32768.0, 32767.0) as i16
}

/// Three simultaneous logarithmic sweeps across the whole band at different levels.
fn multi_tone_sweep() -> Vec<i16> {
    let duration_s = SIGNAL_SAMPLES as f64 / RATE_HZ;
    let mut phases = [0.0f64; 3];
    (0..SIGNAL_SAMPLES)
        .map(|i| {
            let t = i as f64 / RATE_HZ;
            let mut v = 0.0;
            for (k, (f0, f1, amp)) in [
                (50.0f64, 7900.0f64, 12000.0f64),
                (7900.0, 50.0, 6000.0),
                (300.0, 3400.0, 9000.0),
            ]
            .into_iter()
            .enumerate()
            {
                let f = f0 * (f1 / f0).powf(t / duration_s);
                phases[k] += 2.0 * std::f64::consts::PI * f / RATE_HZ;
                v += amp * phases[k].sin();
            }
            to_i16(v)
        })
        .collect()
}

/// Full-range uniform white noise: every sample anywhere in i16.
fn white_noise(rng: &mut Rng) -> Vec<i16> {
    (0..SIGNAL_SAMPLES)
        .map(|_| to_i16(rng.uniform() * 32768.0))
        .collect()
}

/// Speech-like: low-passed noise under a syllable-rate envelope with pauses.
fn speech_like(rng: &mut Rng) -> Vec<i16> {
    let mut lp = 0.0;
    (0..SIGNAL_SAMPLES)
        .map(|i| {
            let t = i as f64 / RATE_HZ;
            lp = 0.85 * lp + 0.15 * rng.uniform();
            // 4 Hz syllables, and 1.5 s phrases with 0.5 s of silence between them.
            let syllable = (2.0 * std::f64::consts::PI * 4.0 * t).sin().abs();
            let phrase = if t % 2.0 < 1.5 { 1.0 } else { 0.0 };
            to_i16(lp * syllable * phrase * 60000.0)
        })
        .collect()
}

/// Full-scale square wave at 500 Hz, rails included: drives the sub-band limiter.
fn full_scale_square() -> Vec<i16> {
    (0..SIGNAL_SAMPLES)
        .map(|i| if (i / 16) % 2 == 0 { 32767 } else { -32768 })
        .collect()
}

fn silence() -> Vec<i16> {
    vec![0; SIGNAL_SAMPLES]
}

/// All named test signals, with the seed printed once.
fn signals() -> Vec<(&'static str, Vec<i16>)> {
    let mut rng = Rng(seed());
    vec![
        ("multi_tone_sweep", multi_tone_sweep()),
        ("white_noise", white_noise(&mut rng)),
        ("speech_like", speech_like(&mut rng)),
        ("silence", silence()),
        ("full_scale_square", full_scale_square()),
    ]
}

// ---------------------------------------------------------------------------------------
// ffmpeg as an oracle
// ---------------------------------------------------------------------------------------

fn ffmpeg_available() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A scratch file name unique to this process and this call (tests run in parallel).
fn scratch(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("earshot-g722-{}-{n}-{name}", std::process::id()))
}

fn run_ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// ffmpeg's G.722 encoding of `pcm` (s16le, 16 kHz, mono, no trellis).
fn ffmpeg_encode(name: &str, pcm: &[i16]) -> Vec<u8> {
    let input = scratch(&format!("{name}.raw"));
    let output = scratch(&format!("{name}.g722"));
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(&input, bytes).unwrap();
    run_ffmpeg(&[
        "-f",
        "s16le",
        "-ar",
        "16000",
        "-ac",
        "1",
        "-i",
        input.to_str().unwrap(),
        "-c:a",
        "g722",
        "-f",
        "g722",
        output.to_str().unwrap(),
    ]);
    let encoded = std::fs::read(&output).unwrap();
    let _ = std::fs::remove_file(input);
    let _ = std::fs::remove_file(output);
    encoded
}

/// ffmpeg's G.722 decoding of `bytes` to s16le at 16 kHz.
fn ffmpeg_decode(name: &str, bytes: &[u8]) -> Vec<i16> {
    let input = scratch(&format!("{name}.in.g722"));
    let output = scratch(&format!("{name}.out.raw"));
    std::fs::write(&input, bytes).unwrap();
    run_ffmpeg(&[
        "-f",
        "g722",
        "-i",
        input.to_str().unwrap(),
        "-f",
        "s16le",
        "-ar",
        "16000",
        "-ac",
        "1",
        output.to_str().unwrap(),
    ]);
    let raw = std::fs::read(&output).unwrap();
    let _ = std::fs::remove_file(input);
    let _ = std::fs::remove_file(output);
    raw.chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn our_encode(pcm: &[i16]) -> Vec<u8> {
    let mut encoder = G722Encoder::new();
    let mut out = vec![0u8; pcm.len() / 2];
    // 20 ms frames, as the engine calls it.
    for (frame, bytes) in pcm.chunks(320).zip(out.chunks_mut(160)) {
        assert_eq!(encoder.encode(frame, bytes), frame.len() / 2);
    }
    out
}

fn our_encode_without_subband_limit(pcm: &[i16]) -> Vec<u8> {
    let mut out = vec![0u8; pcm.len() / 2];
    G722Encoder::new().encode_with::<false>(pcm, &mut out);
    out
}

fn our_decode(bytes: &[u8]) -> Vec<i16> {
    let mut decoder = G722Decoder::new();
    let mut out = vec![0i16; bytes.len() * 2];
    for (frame, pcm) in bytes.chunks(160).zip(out.chunks_mut(320)) {
        assert_eq!(decoder.decode(frame, pcm), frame.len() * 2);
    }
    out
}

fn first_difference<T: PartialEq + std::fmt::Debug>(ours: &[T], theirs: &[T]) -> Option<String> {
    if ours.len() != theirs.len() {
        return Some(format!("lengths {} vs {}", ours.len(), theirs.len()));
    }
    let mismatches = ours.iter().zip(theirs).filter(|(a, b)| a != b).count();
    ours.iter().zip(theirs).position(|(a, b)| a != b).map(|i| {
        format!(
            "{mismatches} differ; first at {i}: ours {:?} ffmpeg {:?}",
            ours[i], theirs[i]
        )
    })
}

/// The signals whose sub-band samples stay inside the reference's 15-bit limiter; on
/// those, ffmpeg's encoder (which does not limit) and the reference must agree.
fn exceeds_subband_limit(pcm: &[i16]) -> bool {
    let mut window = vec![0i16; 22];
    window.extend_from_slice(pcm);
    (0..pcm.len() / 2).any(|j| {
        let (even, odd) = qmf_accumulate(&window[2 * j..]);
        let (xl, xh) = ((even + odd) >> 14, (even - odd) >> 14);
        xl != limit(xl) || xh != limit(xh)
    })
}

#[test]
fn encoder_is_bit_exact_with_ffmpeg() {
    if !ffmpeg_available() {
        println!("SKIPPED: ffmpeg not installed");
        return;
    }
    for (name, pcm) in signals() {
        let theirs = ffmpeg_encode(name, &pcm);
        let ours = our_encode(&pcm);
        let diff = first_difference(&ours, &theirs);
        if exceeds_subband_limit(&pcm) {
            // ffmpeg skips the reference's limiter on the QMF outputs (see
            // docs/codecs.md); we follow the reference, so here the bitstreams may
            // differ. Without the limiter ours must equal ffmpeg's exactly: that is the
            // one difference. `limiter_divergence_is_not_worse_than_ffmpeg` checks that
            // the reference's choice is the better one.
            println!("{name}: exceeds the sub-band limiter; ffmpeg: {diff:?}");
            let unlimited = our_encode_without_subband_limit(&pcm);
            let diff = first_difference(&unlimited, &theirs);
            assert!(diff.is_none(), "{name} without limiter: {}", diff.unwrap());
            println!("{name}: identical to ffmpeg without the sub-band limiter");
            continue;
        }
        assert!(diff.is_none(), "{name}: {}", diff.unwrap());
        println!("{name}: {} bytes identical to ffmpeg", ours.len());
    }
}

#[test]
fn decoder_is_bit_exact_with_ffmpeg() {
    if !ffmpeg_available() {
        println!("SKIPPED: ffmpeg not installed");
        return;
    }
    let mut rng = Rng(seed() ^ 0xDEC0DE);
    let mut streams: Vec<(String, Vec<u8>)> = signals()
        .into_iter()
        .map(|(name, pcm)| (format!("{name}.ffmpeg"), ffmpeg_encode(name, &pcm)))
        .collect();
    // Arbitrary bytes: every codeword in every state, including the saturating paths
    // no encoder would choose.
    streams.push((
        "random_bytes".into(),
        (0..SIGNAL_SAMPLES / 2)
            .map(|_| rng.next_u64() as u8)
            .collect(),
    ));
    for (name, bytes) in streams {
        let theirs = ffmpeg_decode(&name, &bytes);
        let ours = our_decode(&bytes);
        let diff = first_difference(&ours, &theirs);
        assert!(diff.is_none(), "{name}: {}", diff.unwrap());
        println!("{name}: {} samples identical to ffmpeg", ours.len());
    }
}

/// Where ffmpeg's encoder and ours may part (inputs that overload the sub-band
/// limiter), ours must not be worse: compare the decoded error energy of both.
#[test]
fn limiter_divergence_is_not_worse_than_ffmpeg() {
    if !ffmpeg_available() {
        println!("SKIPPED: ffmpeg not installed");
        return;
    }
    let pcm = full_scale_square();
    assert!(exceeds_subband_limit(&pcm));
    let ours = our_decode(&our_encode(&pcm));
    let theirs = our_decode(&ffmpeg_encode("limiter", &pcm));
    let delay = 22; // QMF analysis + synthesis delay, in samples
    let error = |decoded: &[i16]| -> f64 {
        pcm.iter()
            .zip(&decoded[delay..])
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum::<f64>()
    };
    let signal: f64 = pcm.iter().map(|&x| f64::from(x).powi(2)).sum();
    let snr_ours = 10.0 * (signal / error(&ours)).log10();
    let snr_theirs = 10.0 * (signal / error(&theirs)).log10();
    println!("full-scale square SNR: ours {snr_ours:.2} dB, ffmpeg's bitstream {snr_theirs:.2} dB");
    assert!(
        snr_ours >= snr_theirs - 0.5,
        "ours {snr_ours} vs {snr_theirs}"
    );
}

// ---------------------------------------------------------------------------------------
// Properties without an oracle
// ---------------------------------------------------------------------------------------

#[test]
fn scale_table_matches_formula() {
    // One octave of 12-bit mantissas, rounded; the reference's ILA table is that
    // mantissa shifted to octave i / 32 + 1, minus one; DET is (ILA + 1) * 4.
    for (k, &m) in POW2_OCTAVE.iter().enumerate() {
        assert_eq!(
            m,
            (2048.0 * 2f64.powf(k as f64 / 32.0)).round() as i32,
            "k {k}"
        );
    }
    for (i, &det) in DET_OF_INDEX.iter().enumerate() {
        let mantissa = (2048.0 * 2f64.powf((i % 32) as f64 / 32.0)).round();
        let ila_plus_1 = (mantissa * 2f64.powi(i as i32 / 32 - 10)).floor() as i32;
        assert_eq!(det, 4 * ila_plus_1, "index {i}");
    }
    // Entries of the ILA table as printed in the reference (index, value).
    for (i, ila) in [
        (0, 1),
        (18, 1),
        (19, 2),
        (100, 16),
        (153, 54),
        (288, 1023),
        (320, 2047),
        (336, 2895),
        (352, 4095),
    ] {
        assert_eq!(DET_OF_INDEX[i], 4 * (ila + 1), "ila[{i}]");
    }
}

#[test]
fn tone_round_trip_has_high_snr() {
    // A 1 kHz tone at -12 dBFS through our encoder and decoder, with the codec delay.
    let pcm: Vec<i16> = (0..16_000)
        .map(|i| to_i16(8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / RATE_HZ).sin()))
        .collect();
    let decoded = our_decode(&our_encode(&pcm));
    let delay = 22;
    let settled = 1600; // skip the first 100 ms of adaptation
    let (mut signal, mut noise) = (0.0, 0.0);
    for i in settled..pcm.len() - delay {
        signal += f64::from(pcm[i]).powi(2);
        noise += (f64::from(pcm[i]) - f64::from(decoded[i + delay])).powi(2);
    }
    let snr_db = 10.0 * (signal / noise).log10();
    println!("1 kHz round trip SNR {snr_db:.1} dB");
    // G.722 at 64 kbit/s reaches well over 30 dB on a steady tone in the low band.
    assert!(snr_db > 30.0, "SNR {snr_db}");
}

#[test]
fn streaming_in_any_chunking_matches_one_call() {
    let mut rng = Rng(seed());
    let pcm = speech_like(&mut rng);
    let mut one_shot = vec![0u8; pcm.len() / 2];
    assert_eq!(
        G722Encoder::new().encode(&pcm, &mut one_shot),
        one_shot.len()
    );

    let mut encoder = G722Encoder::new();
    let mut chunked = vec![0u8; pcm.len() / 2];
    let mut at = 0;
    while at < pcm.len() / 2 {
        let bytes = (1 + (rng.next_u64() % 200) as usize).min(pcm.len() / 2 - at);
        let n = encoder.encode(&pcm[2 * at..2 * (at + bytes)], &mut chunked[at..at + bytes]);
        assert_eq!(n, bytes);
        at += bytes;
    }
    assert_eq!(one_shot, chunked);

    let mut decoder = G722Decoder::new();
    let mut whole = vec![0i16; pcm.len()];
    assert_eq!(decoder.decode(&one_shot, &mut whole), pcm.len());
    let mut decoder = G722Decoder::new();
    let mut pieces = vec![0i16; pcm.len()];
    for (bytes, out) in one_shot.chunks(37).zip(pieces.chunks_mut(74)) {
        decoder.decode(bytes, out);
    }
    assert_eq!(whole, pieces);
}

#[test]
fn short_buffers_write_only_what_fits() {
    let mut encoder = G722Encoder::new();
    let mut out = [0u8; 3];
    assert_eq!(encoder.encode(&[1, 2, 3, 4, 5, 6, 7, 8, 9], &mut out), 3);
    assert_eq!(encoder.encode(&[1], &mut out), 0);
    let mut decoder = G722Decoder::new();
    let mut pcm = [0i16; 5];
    assert_eq!(decoder.decode(&[0xFF; 4], &mut pcm), 4);
}

#[test]
fn leak_shortcuts_equal_the_reference_multiply() {
    // The reference computes these as mult(x, 32640) and mult(x, 32512) with
    // mult(a, b) = (a * b) >> 15; every 16-bit x.
    for x in -32768..=32767i32 {
        assert_eq!(leak_8(x), (x * 32640) >> 15, "{x}");
        assert_eq!(leak_7(x), (x * 32512) >> 15, "{x}");
    }
}

#[test]
fn state_is_small() {
    let bytes = core::mem::size_of::<G722Encoder>();
    println!(
        "G722Encoder {bytes} bytes, G722Decoder {} bytes",
        core::mem::size_of::<G722Decoder>()
    );
    assert!(bytes <= 512 && core::mem::size_of::<G722Decoder>() <= 512);
}

/// Not a correctness test: a fixed workload (20 s of speech-like audio encoded and
/// decoded) for counting instructions, e.g. `valgrind --tool=callgrind <test binary>
/// --ignored g722::tests::cost_probe`. Asserts only that the work happened.
#[test]
#[ignore = "a callgrind workload, run explicitly with --ignored"]
fn cost_probe() {
    let mut rng = Rng(1);
    let pcm: Vec<i16> = (0..2).flat_map(|_| speech_like(&mut rng)).collect();
    let bytes = our_encode(&pcm);
    let decoded = our_decode(&bytes);
    assert_eq!(decoded.len(), pcm.len());
}
