//! G.711 encode and decode of one 20 ms frame (160 samples), both laws.
//!
//! Run: `cargo bench -p earshot-bench --bench g711`. In CI, `cargo test --all-targets`
//! runs each bench once, including the result checks.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use earshot_dsp::g711;
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

fn g711(c: &mut Criterion) {
    let pcm = test_frame();
    let mut group = c.benchmark_group("g711");
    group.throughput(Throughput::Elements(FRAME_SAMPLES as u64));
    for (codec, name, encode_one, decode_one) in [
        (
            Codec::Pcmu,
            "pcmu",
            g711::ulaw_encode_sample as fn(i16) -> u8,
            g711::ulaw_decode_sample as fn(u8) -> i16,
        ),
        (
            Codec::Pcma,
            "pcma",
            g711::alaw_encode_sample,
            g711::alaw_decode_sample,
        ),
    ] {
        // Check the work once, so the benched calls are known to compute the right thing.
        let mut bytes = [0u8; FRAME_SAMPLES];
        g711::encode(codec, &pcm, &mut bytes);
        assert!(bytes.iter().zip(&pcm).all(|(&b, &s)| b == encode_one(s)));
        let mut decoded = [0i16; FRAME_SAMPLES];
        g711::decode(codec, &bytes, &mut decoded);
        assert!(
            decoded
                .iter()
                .zip(&bytes)
                .all(|(&s, &b)| s == decode_one(b))
        );

        group.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                g711::encode(codec, black_box(&pcm), &mut bytes);
                black_box(&bytes);
            })
        });
        group.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| {
                g711::decode(codec, black_box(&bytes), &mut decoded);
                black_box(&decoded);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, g711);
criterion_main!(benches);
