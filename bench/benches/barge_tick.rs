//! One 3-party barge tick (customer, agent, barging supervisor; 20 ms of PCMU each):
//! decode three 160-byte payloads, mix for each listener the other two at unity gain,
//! encode three payloads. Target: at most 1 us median.
//!
//! Benched with the detected kernels and with the scalar reference, to show what SIMD
//! buys on the whole tick.
//!
//! Run: `cargo bench -p earshot-bench --bench barge_tick`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use earshot_dsp::g711;
use earshot_dsp::mix::MixKernels;
use earshot_types::{Codec, Gain};
use std::hint::black_box;

const FRAME_SAMPLES: usize = 160;
const PARTIES: usize = 3;

/// Three speech-level PCMU payloads, different per party.
fn payloads() -> [[u8; FRAME_SAMPLES]; PARTIES] {
    core::array::from_fn(|party| {
        let pcm: [i16; FRAME_SAMPLES] = core::array::from_fn(|i| {
            let t = i as f32 / 8000.0;
            let hz = 300.0 + 250.0 * party as f32;
            (12_000.0 * (2.0 * std::f32::consts::PI * hz * t).sin()) as i16
        });
        let mut bytes = [0u8; FRAME_SAMPLES];
        g711::encode(Codec::Pcmu, &pcm, &mut bytes);
        bytes
    })
}

/// Working buffers, sized once as the engine would.
struct Tick {
    linear: [[i16; FRAME_SAMPLES]; PARTIES],
    mixed: [[i16; FRAME_SAMPLES]; PARTIES],
    out: [[u8; FRAME_SAMPLES]; PARTIES],
}

impl Tick {
    fn run(&mut self, kernels: &MixKernels, payloads: &[[u8; FRAME_SAMPLES]; PARTIES]) {
        for (payload, linear) in payloads.iter().zip(&mut self.linear) {
            g711::decode(Codec::Pcmu, payload, linear);
        }
        let gains = [Gain::UNITY; PARTIES - 1];
        for listener in 0..PARTIES {
            let [a, b] = [(listener + 1) % PARTIES, (listener + 2) % PARTIES];
            let inputs: [&[i16]; PARTIES - 1] = [&self.linear[a], &self.linear[b]];
            (kernels.mix)(&mut self.mixed[listener], &inputs, &gains);
        }
        for (mixed, out) in self.mixed.iter().zip(&mut self.out) {
            g711::encode(Codec::Pcmu, mixed, out);
        }
    }
}

fn barge_tick(c: &mut Criterion) {
    let payloads = payloads();
    let detected = MixKernels::detect();
    let mut group = c.benchmark_group("barge_tick");
    group.throughput(Throughput::Elements(1));
    for kernels in [detected, MixKernels::scalar()] {
        let mut tick = Tick {
            linear: [[0; FRAME_SAMPLES]; PARTIES],
            mixed: [[0; FRAME_SAMPLES]; PARTIES],
            out: [[0; FRAME_SAMPLES]; PARTIES],
        };
        tick.run(&kernels, &payloads);
        // Check once: listener 0 hears parties 1 and 2, sample by sample.
        let heard = payloads[1].iter().zip(&payloads[2]);
        for (i, (&b, &c)) in heard.enumerate() {
            let sum =
                i32::from(g711::ulaw_decode_sample(b)) + i32::from(g711::ulaw_decode_sample(c));
            let expected = g711::ulaw_encode_sample(sum.clamp(-32768, 32767) as i16);
            assert_eq!(tick.out[0][i], expected, "sample {i}");
        }
        group.bench_function(BenchmarkId::from_parameter(kernels.name), |b| {
            b.iter(|| {
                tick.run(&kernels, black_box(&payloads));
                black_box(&tick.out);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, barge_tick);
criterion_main!(benches);
