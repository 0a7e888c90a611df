//! Mixing kernels: N = 2..=8 inputs of 160 samples into one frame, every instruction set
//! this CPU runs, one group per N so the SIMD/scalar ratio can be read off directly.
//!
//! Two gain patterns: `unity` (every edge at 1.0, the common case of a talk group) and
//! `gain` (every edge at an arbitrary Q12 gain, the general multiply path).
//!
//! Run: `cargo bench -p earshot-bench --bench mix -- --warm-up-time 1 --measurement-time 3`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use earshot_dsp::mix::MixKernels;
use earshot_types::Gain;
use std::hint::black_box;

const FRAME_SAMPLES: usize = 160;

/// Deterministic, loud, uncorrelated inputs (a 32-bit LCG), so sums sometimes saturate.
fn inputs(n: usize) -> Vec<Vec<i16>> {
    let mut state = 0x2545_F491_u32;
    (0..n)
        .map(|_| {
            (0..FRAME_SAMPLES)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 16) as i16
                })
                .collect()
        })
        .collect()
}

fn mix(c: &mut Criterion) {
    let all = MixKernels::available();
    for (pattern, gain) in [("unity", Gain::UNITY), ("gain", Gain(3_000))] {
        for n in 2..=8 {
            let frames = inputs(n);
            let refs: Vec<&[i16]> = frames.iter().map(Vec::as_slice).collect();
            let gains = vec![gain; n];
            let mut reference = [0i16; FRAME_SAMPLES];
            (MixKernels::scalar().mix)(&mut reference, &refs, &gains);

            let mut group = c.benchmark_group(format!("mix/{pattern}/n={n}"));
            group.throughput(Throughput::Elements(FRAME_SAMPLES as u64));
            for kernels in &all {
                let mut out = [0i16; FRAME_SAMPLES];
                (kernels.mix)(&mut out, &refs, &gains);
                assert_eq!(out, reference, "{} differs from scalar", kernels.name);
                group.bench_function(BenchmarkId::from_parameter(kernels.name), |b| {
                    b.iter(|| {
                        (kernels.mix)(&mut out, black_box(&refs), black_box(&gains));
                        black_box(&out);
                    })
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, mix);
criterion_main!(benches);
