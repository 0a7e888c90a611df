//! Mixing kernels: several 16-bit frames, one Q12 gain each, into one 16-bit frame.
//!
//! # Semantics (the scalar reference defines correct)
//!
//! For one listener, given `N` input frames of the output's length and one [`Gain`] per
//! input:
//!
//! ```text
//! out[i] = saturate_i16( sum over k of ((in_k[i] as i32 * gain_k as i32) >> 12) )
//! ```
//!
//! Each product is shifted on its own (an arithmetic shift, so it rounds toward minus
//! infinity) and the sum is accumulated in 32 bits, then saturated once. Accumulating
//! before saturating matters: three talkers at +30000, +30000 and -30000 mix to +30000,
//! where saturating pairwise would give 2767. Zero inputs give silence.
//!
//! # Choosing a kernel
//!
//! Every variant is a plain `fn` with the [`MixFn`] signature, gathered in a
//! [`MixKernels`] table. A shard calls [`MixKernels::detect`] once at start-up and keeps
//! the table; the per-frame path is then one indirect call with no feature test. The
//! SIMD variants are property-tested bit-identical to [`mix_scalar`] (see the tests);
//! setting the environment variable `EARSHOT_FORCE_SCALAR=1` (or calling
//! [`MixKernels::detect_with`]`(true)`) forces the scalar reference, to rule a kernel
//! out when chasing a bug or to measure the difference.
//!
//! Variants: `scalar` everywhere; `avx2` and `avx512` (AVX-512 F + BW) on x86-64;
//! `neon` on aarch64 (compiled and clippy-checked for `aarch64-unknown-linux-gnu`, but
//! not run here: the build machine is x86-64).
//!
//! # Contract
//!
//! Every kernel asserts (it is a programmer error otherwise, and the SIMD code relies on
//! it) that there is one gain per input, at most [`MAX_SESSION_LEGS`] inputs, and that
//! every input is exactly as long as `out`. Any length works: the SIMD variants run
//! their vector body over whole chunks and the scalar code over the tail. No kernel
//! allocates, locks or reads a clock.

use earshot_types::{Gain, MAX_SESSION_LEGS};

mod scalar;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // SIMD loads and stores, and calls into `#[target_feature]` fns.
mod x86;

#[cfg(target_arch = "aarch64")]
#[allow(unsafe_code)] // SIMD loads and stores, and calls into `#[target_feature]` fns.
mod neon;

#[cfg(test)]
mod tests;

pub use scalar::mix as mix_scalar;

/// The signature every mixing kernel shares: `out[i] = sat(sum_k (inputs[k][i] *
/// gains[k]) >> 12)`. See the [module documentation](self) for the exact contract.
pub type MixFn = fn(out: &mut [i16], inputs: &[&[i16]], gains: &[Gain]);

/// Two inputs at unity gain: `out[i] = sat(a[i] + b[i])`, the same bits as
/// [`MixFn`] with those two inputs and gains (one term each, saturated once), for the
/// commonest mix there is: a listener in a three-party call.
pub type PairFn = fn(out: &mut [i16], a: &[i16], b: &[i16]);

/// The environment variable that [`MixKernels::detect`] reads: `1` forces the scalar
/// reference kernels.
pub const FORCE_SCALAR_ENV: &str = "EARSHOT_FORCE_SCALAR";

/// A table of mixing kernels for one instruction set, chosen once per shard.
#[derive(Clone, Copy, Debug)]
pub struct MixKernels {
    /// Short name of the instruction set: `"scalar"`, `"avx2"`, `"avx512"` or `"neon"`.
    /// Stable: benches and stats use it as an identifier.
    pub name: &'static str,
    /// Mixes one listener's frame. Call as `(kernels.mix)(out, inputs, gains)`.
    pub mix: MixFn,
    /// Mixes two unity-gain inputs. Call as `(kernels.pair)(out, a, b)`.
    pub pair: PairFn,
}

impl MixKernels {
    /// The portable scalar reference, which defines correct for every other variant.
    pub const fn scalar() -> MixKernels {
        MixKernels {
            name: "scalar",
            mix: scalar::mix,
            pair: scalar::pair,
        }
    }

    /// The fastest variant this CPU runs, unless the environment variable
    /// `EARSHOT_FORCE_SCALAR` is `1`, in which case the scalar reference. Meant to be
    /// called once per shard at start-up (it reads the environment).
    pub fn detect() -> MixKernels {
        let force_scalar = std::env::var_os(FORCE_SCALAR_ENV).is_some_and(|v| v == "1");
        MixKernels::detect_with(force_scalar)
    }

    /// The fastest variant this CPU runs, or the scalar reference if `force_scalar`.
    /// Ignores the environment.
    pub fn detect_with(force_scalar: bool) -> MixKernels {
        if force_scalar {
            return MixKernels::scalar();
        }
        // `available` lists the variants slowest first and always holds at least the
        // scalar one, so the fallback is never taken; it keeps this free of `unwrap`.
        MixKernels::available()
            .pop()
            .unwrap_or_else(MixKernels::scalar)
    }

    /// Every variant this CPU can run, the scalar reference first and the fastest last.
    /// For tests and benches; allocates.
    pub fn available() -> Vec<MixKernels> {
        let mut kernels = vec![MixKernels::scalar()];
        #[cfg(target_arch = "x86_64")]
        {
            if x86::avx2_detected() {
                kernels.push(MixKernels {
                    name: "avx2",
                    mix: x86::mix_avx2,
                    pair: x86::pair_avx2_kernel,
                });
            }
            if x86::avx512_detected() {
                kernels.push(MixKernels {
                    name: "avx512",
                    mix: x86::mix_avx512,
                    pair: x86::pair_avx512_kernel,
                });
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if neon::detected() {
                kernels.push(MixKernels {
                    name: "neon",
                    mix: neon::mix_neon,
                    pair: scalar::pair,
                });
            }
        }
        kernels
    }
}

/// The largest magnitude one term `(x * gain) >> 12` can reach.
const MAX_TERM: i64 = (32768 * u16::MAX as i64) >> Gain::SHIFT;
// A full session of maximal terms must not overflow the 32-bit accumulator.
const _: () = assert!(MAX_TERM * MAX_SESSION_LEGS as i64 <= i32::MAX as i64);

/// The preconditions every kernel asserts before touching memory. The SIMD kernels'
/// bounds reasoning depends on them, so they are `assert!`, not `debug_assert!`; they
/// cost a few compares per frame, not per sample.
#[inline]
fn check_args(out: &[i16], inputs: &[&[i16]], gains: &[Gain]) {
    assert_eq!(inputs.len(), gains.len(), "one gain per input");
    assert!(
        inputs.len() <= MAX_SESSION_LEGS,
        "at most MAX_SESSION_LEGS inputs"
    );
    for input in inputs {
        assert_eq!(
            input.len(),
            out.len(),
            "every input is one output frame long"
        );
    }
}

/// Narrows a 32-bit sum to 16 bits, clamping instead of wrapping.
#[inline]
fn saturate(sum: i32) -> i16 {
    sum.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}
