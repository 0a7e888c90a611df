//! NEON mixing kernel for aarch64. Compiled and clippy-checked for
//! `aarch64-unknown-linux-gnu`; not executed on the x86-64 build machine, so its
//! bit-identity to the scalar reference is proven only where the property tests run on
//! an aarch64 host.
//!
//! Same shape as the x86 kernels: widen to 32 bits, multiply, shift, accumulate, then a
//! saturating narrow (`sqxtn`); unity gains skip the multiply, mutes are skipped.

use super::check_args;
use super::scalar::mix_from;
use core::arch::aarch64::*;
use earshot_types::Gain;

/// True when this CPU runs [`mix_neon`]'s vector body (always, on aarch64 Linux).
pub(super) fn detected() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

/// The NEON kernel: 8 samples per step, scalar tail.
pub(super) fn mix_neon(out: &mut [i16], inputs: &[&[i16]], gains: &[Gain]) {
    check_args(out, inputs, gains);
    let done = if detected() {
        // SAFETY: NEON was detected on this CPU just above.
        unsafe { body_neon(out, inputs, gains) }
    } else {
        0
    };
    mix_from(out, inputs, gains, done);
}

/// Mixes whole 8-sample chunks; returns where it stopped. The caller has run
/// `check_args`, so every input is `out.len()` long.
#[target_feature(enable = "neon")]
fn body_neon(out: &mut [i16], inputs: &[&[i16]], gains: &[Gain]) -> usize {
    const LANES: usize = 8;
    let mut i = 0;
    while i + LANES <= out.len() {
        let mut low = vdupq_n_s32(0);
        let mut high = vdupq_n_s32(0);
        for (input, gain) in inputs.iter().zip(gains) {
            if gain.is_mute() {
                continue;
            }
            let src = &input[i..i + LANES];
            // SAFETY: `src` holds 8 i16, exactly one 128-bit load.
            let v = unsafe { vld1q_s16(src.as_ptr()) };
            let (a, b) = (vmovl_s16(vget_low_s16(v)), vmovl_high_s16(v));
            if *gain == Gain::UNITY {
                low = vaddq_s32(low, a);
                high = vaddq_s32(high, b);
            } else {
                let g = vdupq_n_s32(i32::from(gain.0));
                low = vaddq_s32(low, vshrq_n_s32::<12>(vmulq_s32(a, g)));
                high = vaddq_s32(high, vshrq_n_s32::<12>(vmulq_s32(b, g)));
            }
        }
        let narrowed = vcombine_s16(vqmovn_s32(low), vqmovn_s32(high));
        let dst = &mut out[i..i + LANES];
        // SAFETY: `dst` holds 8 i16, exactly one 128-bit store.
        unsafe { vst1q_s16(dst.as_mut_ptr(), narrowed) };
        i += LANES;
    }
    i
}
