//! G.711 encode and decode of one 20 ms frame (160 samples), both laws, per kernel
//! variant.
//!
//! Ids: `g711/{encode,decode}/{pcmu,pcma}/<variant>`, where `<variant>` is every entry
//! of `G711Kernels::available()` on this CPU (`scalar` is the table-driven reference,
//! then `avx2`, `avx512`), plus `public`: the crate-level `g711::encode`/`decode`, which
//! dispatch through the kernel table detected once per process (what the shard calls).
//! Variants the CPU lacks are listed as skipped. Compare variants as ratios within one
//! run: the machine is shared and noisy.
//!
//! Run: `cargo bench -p earshot-bench --bench g711`. In CI, `cargo test --all-targets`
//! runs each bench once, including the result checks.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use earshot_dsp::g711::{self, G711Kernels};
use earshot_types::Codec;
use std::hint::black_box;

const FRAME_SAMPLES: usize = 160;

/// Speech-like test frame: two tones at moderate level, so codes spread over segments.
fn test_frame() -> [i16; FRAME_SAMPLES] {
    core::array::from_fn(|i| {
        let t = i as f32 / 8000.0;
        let v = 9000.0 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
            + 3000.0 * (2.0 * std::f32::consts::PI * 1330.0 * t).sin();
        v as i16
    })
}

/// The per-sample reference encoder and decoder of one law.
type PerSample = (fn(i16) -> u8, fn(u8) -> i16);

/// Checks one implementation's encode and decode of `pcm` against the per-sample
/// reference (so the benched calls are known to compute the right thing), then benches
/// both as `encode/<law>/<variant>` and `decode/<law>/<variant>`.
#[allow(clippy::too_many_arguments)] // one call site per variant kind; names say it all
fn bench_variant(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    pcm: &[i16; FRAME_SAMPLES],
    codec: Codec,
    law: &str,
    variant: &str,
    encode: impl Fn(Codec, &[i16], &mut [u8]),
    decode: impl Fn(Codec, &[u8], &mut [i16]),
    (encode_one, decode_one): PerSample,
) {
    let mut bytes = [0u8; FRAME_SAMPLES];
    encode(codec, pcm, &mut bytes);
    assert!(
        bytes.iter().zip(pcm).all(|(&b, &s)| b == encode_one(s)),
        "{variant} {law} encode"
    );
    let mut decoded = [0i16; FRAME_SAMPLES];
    decode(codec, &bytes, &mut decoded);
    assert!(
        decoded
            .iter()
            .zip(&bytes)
            .all(|(&s, &b)| s == decode_one(b)),
        "{variant} {law} decode"
    );
    group.bench_function(format!("encode/{law}/{variant}"), |b| {
        b.iter(|| {
            encode(codec, black_box(pcm), &mut bytes);
            black_box(&bytes);
        })
    });
    group.bench_function(format!("decode/{law}/{variant}"), |b| {
        b.iter(|| {
            decode(codec, black_box(&bytes), &mut decoded);
            black_box(&decoded);
        })
    });
}

fn g711(c: &mut Criterion) {
    let pcm = test_frame();
    for (name, needs) in G711Kernels::unavailable() {
        println!("g711 bench: SKIPPED variant {name} (needs {needs}, which this CPU lacks)");
    }
    println!(
        "g711 bench: the public functions use variant {}",
        g711::kernels().name
    );
    let mut group = c.benchmark_group("g711");
    group.throughput(Throughput::Elements(FRAME_SAMPLES as u64));
    for (codec, law, reference) in [
        (
            Codec::Pcmu,
            "pcmu",
            (
                g711::ulaw_encode_sample as fn(i16) -> u8,
                g711::ulaw_decode_sample as fn(u8) -> i16,
            ),
        ),
        (
            Codec::Pcma,
            "pcma",
            (
                g711::alaw_encode_sample as fn(i16) -> u8,
                g711::alaw_decode_sample as fn(u8) -> i16,
            ),
        ),
    ] {
        for k in G711Kernels::available() {
            bench_variant(
                &mut group,
                &pcm,
                codec,
                law,
                k.name,
                |c, s, d| k.encode(c, s, d),
                |c, s, d| k.decode(c, s, d),
                reference,
            );
        }
        bench_variant(
            &mut group,
            &pcm,
            codec,
            law,
            "public",
            g711::encode,
            g711::decode,
            reference,
        );
    }
    group.finish();
}

criterion_group!(benches, g711);
criterion_main!(benches);
