//! AVX2 and AVX-512 mixing kernels for x86-64.
//!
//! Both widen each input's 16-bit samples to 32 bits, multiply by the gain, shift, and
//! accumulate in 32-bit lanes exactly as the scalar reference does; only the final
//! narrowing differs in form (a saturating pack), not in result. Unity-gain inputs skip
//! the multiply and shift (`(x * 4096) >> 12 == x`), and muted inputs are skipped
//! (`(x * 0) >> 12 == 0`): both give identical bits, and unity is the common case.
//!
//! Safety structure: the vector bodies are `#[target_feature]` fns, unsafe to call. The
//! public wrappers are safe fns that check the CPU feature themselves (a cached load and
//! branch per frame), so they stay sound even if called outside a [`super::MixKernels`]
//! table. Memory is only touched through loads and stores on sub-slices whose bounds are
//! checked by slicing.

use super::check_args;
use super::scalar::{mix_from, pair_from};
use core::arch::x86_64::*;
use earshot_types::Gain;

/// True when this CPU runs [`mix_avx2`]'s vector body.
pub(super) fn avx2_detected() -> bool {
    is_x86_feature_detected!("avx2")
}

/// True when this CPU runs [`mix_avx512`]'s vector body (which also uses AVX2 for a
/// 16-sample remainder).
pub(super) fn avx512_detected() -> bool {
    avx2_detected() && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
}

/// The common shapes of a listener's mix, which have cheaper exact forms than the
/// general sum: one unity input (a copy: `(x * 4096) >> 12 == x` and one term cannot
/// saturate) and two unity inputs (one saturating 16-bit add: with two terms, saturating
/// the 32-bit sum once is the same as a saturating add).
enum Shape<'a> {
    Copy(&'a [i16]),
    Pair(&'a [i16], &'a [i16]),
    General,
}

fn shape<'a>(inputs: &[&'a [i16]], gains: &[Gain]) -> Shape<'a> {
    match (inputs, gains) {
        ([a], [Gain::UNITY]) => Shape::Copy(a),
        ([a, b], [Gain::UNITY, Gain::UNITY]) => Shape::Pair(a, b),
        _ => Shape::General,
    }
}

/// The AVX2 kernel: 16 samples per step. Falls back to the scalar reference on a CPU
/// without AVX2 (never the case when taken from [`super::MixKernels::available`]).
pub(super) fn mix_avx2(out: &mut [i16], inputs: &[&[i16]], gains: &[Gain]) {
    check_args(out, inputs, gains);
    let done = if avx2_detected() {
        match shape(inputs, gains) {
            Shape::Copy(a) => {
                out.copy_from_slice(a);
                return;
            }
            // SAFETY: AVX2 was detected on this CPU just above.
            Shape::Pair(a, b) => unsafe { pair_avx2(out, a, b, 0) },
            // SAFETY: AVX2 was detected on this CPU just above.
            Shape::General => unsafe { body_avx2(out, inputs, gains, 0) },
        }
    } else {
        0
    };
    mix_from(out, inputs, gains, done);
}

/// [`super::PairFn`] with AVX2: two unity-gain inputs, 16 samples per step.
pub(super) fn pair_avx2_kernel(out: &mut [i16], a: &[i16], b: &[i16]) {
    assert!(
        a.len() == out.len() && b.len() == out.len(),
        "every input is one output frame long"
    );
    if avx2_detected() {
        // SAFETY: AVX2 was detected on this CPU just above.
        unsafe { pair_avx2_whole(out, a, b) }
    } else {
        pair_from(out, a, b, 0);
    }
}

/// [`pair_avx2`] over the whole frame, then the scalar tail if any: the wrapper's last
/// act is this call, so it saves and restores nothing around it (a tail call).
#[target_feature(enable = "avx2")]
fn pair_avx2_whole(out: &mut [i16], a: &[i16], b: &[i16]) {
    let done = pair_avx2(out, a, b, 0);
    // A frame of whole 16-sample steps (every ptime at every rate) has no scalar tail.
    if done < out.len() {
        pair_from(out, a, b, done);
    }
}

/// [`super::PairFn`] with AVX-512: 32 samples per step, then AVX2, then scalar.
pub(super) fn pair_avx512_kernel(out: &mut [i16], a: &[i16], b: &[i16]) {
    assert!(
        a.len() == out.len() && b.len() == out.len(),
        "every input is one output frame long"
    );
    let done = if avx512_detected() {
        // SAFETY: AVX2, AVX-512F and AVX-512BW were detected on this CPU just above.
        unsafe {
            let done = pair_avx512(out, a, b);
            pair_avx2(out, a, b, done)
        }
    } else {
        0
    };
    pair_from(out, a, b, done);
}

/// Two unity inputs, 16 samples per step with one saturating add; returns where it
/// stopped. The caller has run `check_args`: `a`, `b` and `out` have one length.
/// Four steps per loop turn while 64 samples remain (a 20 ms PCMU frame of 160 samples
/// is two turns and two single steps): the loop's own count and branch are paid a
/// quarter as often, which is most of what a short frame costs beyond its adds.
#[target_feature(enable = "avx2")]
fn pair_avx2(out: &mut [i16], a: &[i16], b: &[i16], start: usize) -> usize {
    const LANES: usize = 16;
    let n = out.len().min(a.len()).min(b.len());
    let mut i = start;
    while i + 4 * LANES <= n {
        for k in 0..4 {
            let j = i + k * LANES;
            // SAFETY: j + 16 <= i + 64 <= n bounds all three slices, so each 32-byte
            // unaligned load and store is in bounds; `loadu`/`storeu` have no alignment
            // requirement.
            unsafe {
                let x = _mm256_loadu_si256(a.as_ptr().add(j).cast());
                let y = _mm256_loadu_si256(b.as_ptr().add(j).cast());
                _mm256_storeu_si256(out.as_mut_ptr().add(j).cast(), _mm256_adds_epi16(x, y));
            }
        }
        i += 4 * LANES;
    }
    while i + LANES <= n {
        // SAFETY: i + 16 <= n bounds all three slices, so each 32-byte unaligned load
        // and store is in bounds; `loadu`/`storeu` have no alignment requirement.
        unsafe {
            let x = _mm256_loadu_si256(a.as_ptr().add(i).cast());
            let y = _mm256_loadu_si256(b.as_ptr().add(i).cast());
            _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), _mm256_adds_epi16(x, y));
        }
        i += LANES;
    }
    i
}

/// Two unity inputs, 32 samples per step; returns where it stopped. As [`pair_avx2`].
#[target_feature(enable = "avx512f,avx512bw")]
fn pair_avx512(out: &mut [i16], a: &[i16], b: &[i16]) -> usize {
    const LANES: usize = 32;
    let n = out.len().min(a.len()).min(b.len());
    let mut i = 0;
    while i + LANES <= n {
        // SAFETY: i + 32 <= n bounds all three slices, so each 64-byte unaligned load
        // and store is in bounds; `loadu`/`storeu` have no alignment requirement.
        unsafe {
            let x = _mm512_loadu_si512(a.as_ptr().add(i).cast());
            let y = _mm512_loadu_si512(b.as_ptr().add(i).cast());
            _mm512_storeu_si512(out.as_mut_ptr().add(i).cast(), _mm512_adds_epi16(x, y));
        }
        i += LANES;
    }
    i
}

/// The AVX-512 kernel: 32 samples per step, then at most one 16-sample AVX2 step, then
/// scalar. Falls back to the scalar reference on a CPU without AVX-512 F + BW.
pub(super) fn mix_avx512(out: &mut [i16], inputs: &[&[i16]], gains: &[Gain]) {
    check_args(out, inputs, gains);
    let done = if avx512_detected() {
        match shape(inputs, gains) {
            Shape::Copy(a) => {
                out.copy_from_slice(a);
                return;
            }
            // SAFETY: AVX2, AVX-512F and AVX-512BW were detected on this CPU just above.
            Shape::Pair(a, b) => unsafe {
                let done = pair_avx512(out, a, b);
                pair_avx2(out, a, b, done)
            },
            // SAFETY: AVX2, AVX-512F and AVX-512BW were detected on this CPU just above.
            Shape::General => unsafe {
                let done = body_avx512(out, inputs, gains);
                body_avx2(out, inputs, gains, done)
            },
        }
    } else {
        0
    };
    mix_from(out, inputs, gains, done);
}

/// Mixes whole 16-sample chunks from `start`; returns where it stopped. The caller has
/// run `check_args`, so every input is `out.len()` long.
#[target_feature(enable = "avx2")]
fn body_avx2(out: &mut [i16], inputs: &[&[i16]], gains: &[Gain], start: usize) -> usize {
    const LANES: usize = 16;
    let mut i = start;
    while i + LANES <= out.len() {
        let mut low = _mm256_setzero_si256(); // samples i..i+8, 32-bit
        let mut high = _mm256_setzero_si256(); // samples i+8..i+16
        for (input, gain) in inputs.iter().zip(gains) {
            if gain.is_mute() {
                continue;
            }
            let src = &input[i..i + LANES];
            // SAFETY: `src` holds 16 i16 (32 bytes), so both 16-byte unaligned loads
            // are in bounds; `loadu` has no alignment requirement.
            let (a, b) = unsafe {
                (
                    _mm_loadu_si128(src.as_ptr().cast()),
                    _mm_loadu_si128(src.as_ptr().add(8).cast()),
                )
            };
            let (a, b) = (_mm256_cvtepi16_epi32(a), _mm256_cvtepi16_epi32(b));
            if *gain == Gain::UNITY {
                low = _mm256_add_epi32(low, a);
                high = _mm256_add_epi32(high, b);
            } else {
                let g = _mm256_set1_epi32(i32::from(gain.0));
                low = _mm256_add_epi32(low, _mm256_srai_epi32::<12>(_mm256_mullo_epi32(a, g)));
                high = _mm256_add_epi32(high, _mm256_srai_epi32::<12>(_mm256_mullo_epi32(b, g)));
            }
        }
        // `packs` saturates to i16 but interleaves 128-bit lanes: [l0-3 h0-3 l4-7 h4-7];
        // the permute puts the four 64-bit quarters back in sample order.
        let packed = _mm256_packs_epi32(low, high);
        let ordered = _mm256_permute4x64_epi64::<0b11_01_10_00>(packed);
        let dst = &mut out[i..i + LANES];
        // SAFETY: `dst` holds 16 i16 (32 bytes); `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), ordered) };
        i += LANES;
    }
    i
}

/// Mixes whole 32-sample chunks from 0; returns where it stopped. The caller has run
/// `check_args`, so every input is `out.len()` long.
#[target_feature(enable = "avx512f,avx512bw")]
fn body_avx512(out: &mut [i16], inputs: &[&[i16]], gains: &[Gain]) -> usize {
    const LANES: usize = 32;
    let mut i = 0;
    while i + LANES <= out.len() {
        let mut low = _mm512_setzero_si512(); // samples i..i+16, 32-bit
        let mut high = _mm512_setzero_si512(); // samples i+16..i+32
        for (input, gain) in inputs.iter().zip(gains) {
            if gain.is_mute() {
                continue;
            }
            let src = &input[i..i + LANES];
            // SAFETY: `src` holds 32 i16 (64 bytes), so both 32-byte unaligned loads
            // are in bounds; `loadu` has no alignment requirement.
            let (a, b) = unsafe {
                (
                    _mm256_loadu_si256(src.as_ptr().cast()),
                    _mm256_loadu_si256(src.as_ptr().add(16).cast()),
                )
            };
            let (a, b) = (_mm512_cvtepi16_epi32(a), _mm512_cvtepi16_epi32(b));
            if *gain == Gain::UNITY {
                low = _mm512_add_epi32(low, a);
                high = _mm512_add_epi32(high, b);
            } else {
                let g = _mm512_set1_epi32(i32::from(gain.0));
                low = _mm512_add_epi32(low, _mm512_srai_epi32::<12>(_mm512_mullo_epi32(a, g)));
                high = _mm512_add_epi32(high, _mm512_srai_epi32::<12>(_mm512_mullo_epi32(b, g)));
            }
        }
        // `vpmovsdw`: saturating narrow, in order (no lane interleave to undo).
        let (low, high) = (_mm512_cvtsepi32_epi16(low), _mm512_cvtsepi32_epi16(high));
        let dst = &mut out[i..i + LANES];
        // SAFETY: `dst` holds 32 i16 (64 bytes): two 32-byte unaligned stores fit.
        unsafe {
            _mm256_storeu_si256(dst.as_mut_ptr().cast(), low);
            _mm256_storeu_si256(dst.as_mut_ptr().add(16).cast(), high);
        }
        i += LANES;
    }
    i
}
