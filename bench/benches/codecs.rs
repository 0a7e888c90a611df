//! Codecs and resamplers, per 20 ms frame: what one leg costs per packet.
//!
//! Ids (stable, quoted in docs/codecs.md and docs/perf.md):
//! - `codec/<name>/encode` and `codec/<name>/decode` for `pcmu` (G.711 mu-law, 160
//!   samples), `g722` (320 samples at 16 kHz), `opus16k` and `opus48k` (Opus at 16 and
//!   48 kHz PCM, default per-leg settings: 32 kbit/s, complexity 5, FEC on);
//! - `resample/<from>_<to>` for our resampler, rates in kHz, 20 ms of input;
//! - for comparison only: `codec_variants/opus48k_complexity10/encode` (libopus's default
//!   complexity) and `resample_rubato/<from>_<to>` (rubato's FFT resampler, 20 ms
//!   chunks, i16 conversion included as in ours).
//!
//! Run: `cargo bench -p earshot-bench --bench codecs -- --warm-up-time 1
//! --measurement-time 3`. In CI, `cargo test --all-targets` runs each once, result
//! checks included.

use criterion::{Criterion, criterion_group, criterion_main};
use earshot_dsp::g711;
use earshot_dsp::g722::{G722Decoder, G722Encoder};
use earshot_dsp::resample::Resampler;
use earshot_opus::{MAX_PACKET_BYTES, OpusDecoder, OpusEncoder, OpusSettings};
use earshot_types::Codec;
use std::hint::black_box;

/// 20 ms of a speech-like signal at `rate_hz`: two harmonics and a formant-ish tone,
/// loud enough to use many quantiser levels.
fn frame(rate_hz: u32) -> Vec<i16> {
    (0..rate_hz as usize / 50)
        .map(|i| {
            let t = i as f32 / rate_hz as f32;
            let v = 7000.0 * (2.0 * std::f32::consts::PI * 180.0 * t).sin()
                + 4000.0 * (2.0 * std::f32::consts::PI * 540.0 * t).sin()
                + 2500.0 * (2.0 * std::f32::consts::PI * 1900.0 * t).sin();
            v as i16
        })
        .collect()
}

/// Power ratio of `decoded` to `original` in dB (mean square, so the two may be at
/// different rates), for "the codec did its job" checks.
fn level_db(original: &[i16], decoded: &[i16]) -> f64 {
    let e = |s: &[i16]| s.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / s.len() as f64;
    10.0 * (e(decoded) / e(original)).log10()
}

fn pcmu(c: &mut Criterion) {
    let pcm = frame(8000);
    let mut bytes = vec![0u8; pcm.len()];
    let mut decoded = vec![0i16; pcm.len()];
    g711::encode(Codec::Pcmu, &pcm, &mut bytes);
    g711::decode(Codec::Pcmu, &bytes, &mut decoded);
    assert!(level_db(&pcm, &decoded).abs() < 0.5);

    let mut group = c.benchmark_group("codec");
    group.bench_function("pcmu/encode", |b| {
        b.iter(|| {
            g711::encode(Codec::Pcmu, black_box(&pcm), &mut bytes);
            black_box(&bytes);
        })
    });
    group.bench_function("pcmu/decode", |b| {
        b.iter(|| {
            g711::decode(Codec::Pcmu, black_box(&bytes), &mut decoded);
            black_box(&decoded);
        })
    });
    group.finish();
}

fn g722(c: &mut Criterion) {
    let pcm = frame(16000);
    // Check: after a few frames of adaptation the decoded level matches the input.
    let mut encoder = G722Encoder::new();
    let mut decoder = G722Decoder::new();
    let mut bytes = vec![0u8; pcm.len() / 2];
    let mut decoded = vec![0i16; pcm.len()];
    for _ in 0..10 {
        assert_eq!(encoder.encode(&pcm, &mut bytes), 160);
        assert_eq!(decoder.decode(&bytes, &mut decoded), 320);
    }
    assert!(level_db(&pcm, &decoded).abs() < 1.0);

    let mut group = c.benchmark_group("codec");
    group.bench_function("g722/encode", |b| {
        b.iter(|| {
            encoder.encode(black_box(&pcm), &mut bytes);
            black_box(&bytes);
        })
    });
    group.bench_function("g722/decode", |b| {
        b.iter(|| {
            decoder.decode(black_box(&bytes), &mut decoded);
            black_box(&decoded);
        })
    });
    group.finish();
}

fn opus_at(c: &mut Criterion, name: &str, settings: OpusSettings, with_decode: bool) {
    let rate = settings.sample_rate_hz;
    let pcm = frame(rate);
    let mut encoder = OpusEncoder::new(settings).unwrap();
    let mut decoder = OpusDecoder::new(rate).unwrap();
    let mut packet = vec![0u8; MAX_PACKET_BYTES];
    let mut decoded = vec![0i16; pcm.len()];
    let mut len = 0;
    for _ in 0..10 {
        len = encoder.encode(&pcm, &mut packet).unwrap();
        assert_eq!(
            decoder.decode(&packet[..len], &mut decoded, false).unwrap(),
            pcm.len()
        );
    }
    // 32 kbit/s is 80 bytes per 20 ms; the decoded frame carries the input's energy
    // (within a few dB: the codec delay shifts the frame).
    assert!((20..400).contains(&len), "packet of {len} bytes");
    assert!(level_db(&pcm, &decoded).abs() < 3.0);

    let mut group = c.benchmark_group(if with_decode {
        "codec"
    } else {
        "codec_variants"
    });
    group.bench_function(format!("{name}/encode"), |b| {
        b.iter(|| {
            let n = encoder.encode(black_box(&pcm), &mut packet).unwrap();
            black_box(&packet[..n]);
        })
    });
    if with_decode {
        let packet = packet[..len].to_vec();
        group.bench_function(format!("{name}/decode"), |b| {
            b.iter(|| {
                let n = decoder
                    .decode(black_box(&packet), &mut decoded, false)
                    .unwrap();
                black_box(&decoded[..n]);
            })
        });
    }
    group.finish();
}

fn opus(c: &mut Criterion) {
    if let Err(e) = earshot_opus::available() {
        println!("SKIPPED: codec/opus*: {e}");
        return;
    }
    let at = |rate| OpusSettings {
        sample_rate_hz: rate,
        ..OpusSettings::default()
    };
    opus_at(c, "opus16k", at(16_000), true);
    opus_at(c, "opus48k", at(48_000), true);
    opus_at(
        c,
        "opus48k_complexity10",
        OpusSettings {
            complexity: 10,
            ..at(48_000)
        },
        false,
    );
}

const DIRECTIONS: [(u32, u32); 6] = [
    (8000, 16000),
    (16000, 8000),
    (8000, 48000),
    (48000, 8000),
    (16000, 48000),
    (48000, 16000),
];

fn resample(c: &mut Criterion) {
    let mut group = c.benchmark_group("resample");
    for (from, to) in DIRECTIONS {
        let input = frame(from);
        let mut r = Resampler::new(from, to).unwrap();
        let mut out = vec![0i16; to as usize / 50];
        // Check: 20 ms in is 20 ms out, and after the filter settles the level holds.
        for _ in 0..3 {
            assert_eq!(r.process(&input, &mut out), out.len());
        }
        assert!(level_db(&input, &out).abs() < 1.0, "{from}->{to}");
        group.bench_function(format!("{}_{}", from / 1000, to / 1000), |b| {
            b.iter(|| {
                r.process(black_box(&input), &mut out);
                black_box(&out);
            })
        });
    }
    group.finish();
}

fn resample_rubato(c: &mut Criterion) {
    use rubato::audioadapter_buffers::direct::InterleavedSlice;
    use rubato::{Fft, FixedSync, Resampler as _};
    let mut group = c.benchmark_group("resample_rubato");
    for (from, to) in DIRECTIONS {
        let input = frame(from);
        let frames_in = input.len();
        let mut r =
            Fft::<f32>::new(from as usize, to as usize, frames_in, 1, FixedSync::Both).unwrap();
        let frames_out = r.output_frames_next();
        assert_eq!(frames_out, to as usize / 50);
        let mut fin = vec![0f32; frames_in];
        let mut fout = vec![0f32; frames_out];
        let mut out = vec![0i16; frames_out];
        let mut run = |input: &[i16], out: &mut [i16]| {
            for (x, &s) in fin.iter_mut().zip(input) {
                *x = f32::from(s) / 32768.0;
            }
            let a = InterleavedSlice::new(&fin, 1, frames_in).unwrap();
            let mut b = InterleavedSlice::new_mut(&mut fout, 1, frames_out).unwrap();
            let (_, written) = r.process_into_buffer(&a, &mut b, None).unwrap();
            for (y, &v) in out.iter_mut().zip(&fout[..written]) {
                *y = (v * 32768.0).round() as i16;
            }
            written
        };
        // Check: rubato's delay is several frames; after it the level holds.
        for _ in 0..10 {
            assert_eq!(run(&input, &mut out), frames_out);
        }
        assert!(level_db(&input, &out).abs() < 1.0, "{from}->{to}");
        group.bench_function(format!("{}_{}", from / 1000, to / 1000), |b| {
            b.iter(|| {
                run(black_box(&input), &mut out);
                black_box(&out);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pcmu, g722, opus, resample, resample_rubato);
criterion_main!(benches);
