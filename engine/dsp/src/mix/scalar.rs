//! The scalar reference kernel. It defines correct: every SIMD variant must produce the
//! same bits. Written for clarity (the formula of the module doc, sample by sample), not
//! tuned; the compiler may still vectorise it.

use super::{check_args, saturate};
use earshot_types::Gain;

/// Mixes `inputs`, each scaled by its Q12 gain, into `out` (see the [module
/// documentation](super) for the formula and the contract). The reference kernel.
pub fn mix(out: &mut [i16], inputs: &[&[i16]], gains: &[Gain]) {
    check_args(out, inputs, gains);
    mix_from(out, inputs, gains, 0);
}

/// The reference formula over samples `start..`, for the SIMD kernels' tails. The caller
/// has run `check_args`.
#[inline]
pub(super) fn mix_from(out: &mut [i16], inputs: &[&[i16]], gains: &[Gain], start: usize) {
    for (i, sample) in out.iter_mut().enumerate().skip(start) {
        let mut sum: i32 = 0;
        for (input, gain) in inputs.iter().zip(gains) {
            sum += (i32::from(input[i]) * i32::from(gain.0)) >> Gain::SHIFT;
        }
        *sample = saturate(sum);
    }
}

/// Two unity-gain inputs: the reference formula with two terms (see [`super::PairFn`]).
/// The caller's slices are one length (asserted).
pub fn pair(out: &mut [i16], a: &[i16], b: &[i16]) {
    assert!(
        a.len() == out.len() && b.len() == out.len(),
        "every input is one output frame long"
    );
    pair_from(out, a, b, 0);
}

/// [`pair`] over samples `start..`, for the SIMD kernels' tails.
#[inline]
pub(super) fn pair_from(out: &mut [i16], a: &[i16], b: &[i16], start: usize) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b).skip(start) {
        *o = saturate(i32::from(x) + i32::from(y));
    }
}
