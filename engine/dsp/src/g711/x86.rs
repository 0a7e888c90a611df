//! AVX2 and AVX-512 G.711 encoders and decoders for x86-64.
//!
//! # Encoding: the float conversion is the leading-zero count
//!
//! Both laws end in "find the segment (the position of the leading one), then take the
//! four bits below it". Converting a small integer to `f32` does exactly that in one
//! instruction: for `v` with bit length `L`, the float's biased exponent is `126 + L`
//! and the top four mantissa bits are the four bits below `v`'s leading one. So the bit
//! pattern shifted right by 19 is `((126 + L) << 4) | mantissa`, and both laws' 7-bit
//! magnitude numbers are that minus a constant:
//!
//! - mu-law: `v = min(|x|' >> 2 + 33, 0x1FFF)` (the +33 bias makes every segment a power
//!   of two; `|x|'` is the one's-complement magnitude of the scalar reference, see the
//!   parent module). `L` is 6..=13, the segment `L - 5`, and the number
//!   `((L - 6) << 4) | mantissa` = `(bits >> 19) - 0x840`.
//! - A-law: `v = |x|' >> 4` (0..2048). From `v >= 16` the number is
//!   `((L - 4) << 4) | mantissa` = `(bits >> 19) - 0x820`; below 16 (A-law's linear
//!   segment 0) the number is `v` itself. Below 16 the float formula gives at most `v`
//!   (and a negative number for 0), from 16 on at least 16, so
//!   `max(formula, min(v, 16))` selects the right one with two instructions.
//!
//! The 16-bit magnitudes are widened to 32 bits only for the conversion (with
//! `unpacklo/hi`, undone in the same lane order by `packus`).
//!
//! # Decoding: a multiply by a looked-up power of two
//!
//! Both decoders compute `magnitude = base(mantissa) << exponent`, and AVX2 has no
//! 16-bit variable shift, so the shift is a multiply by `2^exponent`. Every factor fits
//! a byte: per code byte, two `pshufb` look-ups (16-entry tables) give the base and the
//! power of two; they are widened to 16 bits and multiplied.
//!
//! - mu-law: `magnitude = (0x84 + 8 * mantissa) * 2^exponent - 0x84` on the inverted
//!   code (G.191's `ulaw_expand` with its bias 0x84 = 4 * 33).
//! - A-law: `magnitude = (8 * mantissa + 4 + 128 * [exponent > 0]) * 2^max(exponent, 1)`
//!   on `code ^ 0x55`: `16 * mantissa + 8` in segment 0, `(16 * mantissa + 264) <<
//!   (exponent - 1)` above it, as in `alaw_expand`. The products stay below 2^15.
//!
//! The sign is applied last: negative where the code's bit 7 is clear.
//!
//! # Safety structure
//!
//! The vector bodies are `#[target_feature]` fns, unsafe to call. The wrappers that the
//! [`super::G711Kernels`] table holds are safe fns that check the CPU feature themselves
//! (a cached load and a branch per frame), so they stay sound even if called some other
//! way. Memory is touched only by unaligned loads and stores on sub-slices whose bounds
//! are checked by slicing.
//!
//! # Lengths
//!
//! A body runs over whole 32-sample chunks; a last partial chunk is done by one more
//! chunk that ends at the last sample and overlaps the previous one (the samples in the
//! overlap are computed twice, to the same values: the output never aliases the input,
//! whose type differs). Slices shorter than one chunk go to the scalar reference.

use super::{alaw_decode_scalar, alaw_encode_scalar, ulaw_decode_scalar, ulaw_encode_scalar};
use core::arch::x86_64::*;
use core::sync::atomic::{AtomicU8, Ordering};

/// Samples per step of every body here: one 256-bit vector of codes, or of 16-bit
/// samples twice (AVX2) or once (AVX-512).
const CHUNK: usize = 32;

/// What [`avx2_detected`] and [`avx512_detected`] last found, for the wrappers' hot
/// path: [`UNKNOWN`] until one is asked, then [`PRESENT`] or [`ABSENT`] as
/// `is_x86_feature_detected!` said. Nothing else writes them.
static AVX2: AtomicU8 = AtomicU8::new(UNKNOWN);
static AVX512: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const ABSENT: u8 = 1;
const PRESENT: u8 = 2;

/// Remembers a detection result in `cell`; returns it.
fn remember(cell: &AtomicU8, present: bool) -> bool {
    cell.store(if present { PRESENT } else { ABSENT }, Ordering::Relaxed);
    present
}

/// True when this CPU runs the AVX2 bodies.
pub(super) fn avx2_detected() -> bool {
    remember(&AVX2, is_x86_feature_detected!("avx2"))
}

/// True when this CPU runs the AVX-512 bodies: they use AVX-512F and BW, and AVX2 for
/// the byte-level half of decoding.
pub(super) fn avx512_detected() -> bool {
    remember(
        &AVX512,
        avx2_detected()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw"),
    )
}

/// [`avx2_detected`] returned true before: one load, no call.
#[inline(always)]
fn avx2_known() -> bool {
    AVX2.load(Ordering::Relaxed) == PRESENT
}

/// [`avx512_detected`] returned true before: one load, no call.
#[inline(always)]
fn avx512_known() -> bool {
    AVX512.load(Ordering::Relaxed) == PRESENT
}

/// The common shape of every wrapper: trim to the shorter slice, run `body` if the CPU
/// has the feature and there is at least one chunk, otherwise the scalar reference.
/// The hot path asks only the remembered detection (`$known`): with no call left in
/// it, the wrapper saves no registers and tail-calls the body. Anything else (detection
/// not asked yet, no such feature, a short slice) takes the out-of-line `slow` path.
macro_rules! wrapper {
    ($(#[$doc:meta])* $name:ident, $src:ty, $dst:ty, $detected:ident, $known:ident, $body:ident, $scalar:ident) => {
        $(#[$doc])*
        pub(super) fn $name(src: &[$src], dst: &mut [$dst]) {
            #[cold]
            #[inline(never)]
            fn slow(src: &[$src], dst: &mut [$dst]) {
                if src.len() >= CHUNK && $detected() {
                    // SAFETY: `$detected` checks exactly the features the body is
                    // compiled for (each invocation below pairs them), and it returned
                    // true on this CPU just above; `src` and `dst` are equally long and
                    // at least one chunk.
                    unsafe { $body(src, dst) }
                } else {
                    $scalar(src, dst)
                }
            }
            let n = src.len().min(dst.len());
            let (src, dst) = (&src[..n], &mut dst[..n]);
            if n >= CHUNK && $known() {
                // SAFETY: `$known` is true only after `$detected`, which checks exactly
                // the features the body is compiled for, returned true on this CPU (see
                // `remember`); `src` and `dst` are equally long and at least one chunk.
                unsafe { $body(src, dst) }
            } else {
                slow(src, dst)
            }
        }
    };
}

wrapper!(
    /// mu-law encoder, AVX2: 32 samples per step.
    ulaw_encode_avx2, i16, u8, avx2_detected, avx2_known, ulaw_encode_body_avx2, ulaw_encode_scalar
);
wrapper!(
    /// A-law encoder, AVX2: 32 samples per step.
    alaw_encode_avx2, i16, u8, avx2_detected, avx2_known, alaw_encode_body_avx2, alaw_encode_scalar
);
wrapper!(
    /// mu-law decoder, AVX2: 32 codes per step.
    ulaw_decode_avx2, u8, i16, avx2_detected, avx2_known, ulaw_decode_body_avx2, ulaw_decode_scalar
);
wrapper!(
    /// A-law decoder, AVX2: 32 codes per step.
    alaw_decode_avx2, u8, i16, avx2_detected, avx2_known, alaw_decode_body_avx2, alaw_decode_scalar
);
wrapper!(
    /// mu-law encoder, AVX-512: 32 samples per step in one 512-bit vector.
    ulaw_encode_avx512, i16, u8, avx512_detected, avx512_known, ulaw_encode_body_avx512, ulaw_encode_scalar
);
wrapper!(
    /// A-law encoder, AVX-512: 32 samples per step in one 512-bit vector.
    alaw_encode_avx512, i16, u8, avx512_detected, avx512_known, alaw_encode_body_avx512, alaw_encode_scalar
);
wrapper!(
    /// mu-law decoder, AVX-512: byte work in 256 bits, 16-bit work in 512.
    ulaw_decode_avx512, u8, i16, avx512_detected, avx512_known, ulaw_decode_body_avx512, ulaw_decode_scalar
);
wrapper!(
    /// A-law decoder, AVX-512: byte work in 256 bits, 16-bit work in 512.
    alaw_decode_avx512, u8, i16, avx512_detected, avx512_known, alaw_decode_body_avx512, alaw_decode_scalar
);

/// Calls `body` with the start of every chunk of a slice of `n` samples: 0, 32, 64, ...,
/// and, if `n` is not a multiple of 32, `n - 32` last (overlapping the chunk before it).
/// Nothing if `n < 32`. Every start is at most `n - 32`, which lets the compiler drop
/// the bounds checks of the chunk slices in `body`.
#[inline(always)]
fn for_each_chunk(n: usize, mut body: impl FnMut(usize)) {
    let Some(last) = n.checked_sub(CHUNK) else {
        return;
    };
    let mut start = 0;
    loop {
        body(start);
        if start == last {
            break;
        }
        start = (start + CHUNK).min(last);
    }
}

// ---------------------------------------------------------------------------------------
// AVX2.
// ---------------------------------------------------------------------------------------

/// `(bits of f32(v)) >> 19` for each 16-bit lane `v` (non-negative, below 2^15), as 16-bit
/// lanes in the same order: `((126 + bit length) << 4) | four bits below the leading
/// one`, or 0 for `v == 0`.
#[inline]
#[target_feature(enable = "avx2")]
fn exponent_mantissa_avx2(v: __m256i) -> __m256i {
    let zero = _mm256_setzero_si256();
    let lo = _mm256_castps_si256(_mm256_cvtepi32_ps(_mm256_unpacklo_epi16(v, zero)));
    let hi = _mm256_castps_si256(_mm256_cvtepi32_ps(_mm256_unpackhi_epi16(v, zero)));
    // Both are below 2^12 after the shift: `packus` does not saturate.
    _mm256_packus_epi32(_mm256_srli_epi32::<19>(lo), _mm256_srli_epi32::<19>(hi))
}

/// mu-law codes (in the low byte of each 16-bit lane) of 16 samples.
#[inline]
#[target_feature(enable = "avx2")]
fn ulaw_codes_avx2(x: __m256i) -> __m256i {
    let sign = _mm256_srai_epi16::<15>(x); // all ones for negative samples
    // One's-complement magnitude, 14 bits: 0..=8191.
    let magnitude = _mm256_srai_epi16::<2>(_mm256_xor_si256(x, sign));
    let biased = _mm256_min_epi16(
        _mm256_add_epi16(magnitude, _mm256_set1_epi16(33)),
        _mm256_set1_epi16(0x1FFF),
    );
    let number_plus_0x840 = exponent_mantissa_avx2(biased);
    // code = sign bit (set when positive) | (0x7F - number)
    //      = 0xFF - number - (0x80 if negative) = 0x93F - (number + 0x840) - (sign & 0x80).
    _mm256_sub_epi16(
        _mm256_sub_epi16(_mm256_set1_epi16(0x93F), number_plus_0x840),
        _mm256_and_si256(sign, _mm256_set1_epi16(0x80)),
    )
}

/// A-law codes (in the low byte of each 16-bit lane) of 16 samples.
#[inline]
#[target_feature(enable = "avx2")]
fn alaw_codes_avx2(x: __m256i) -> __m256i {
    let sign = _mm256_srai_epi16::<15>(x);
    // One's-complement magnitude, top 12 bits: 0..=2047.
    let v = _mm256_srai_epi16::<4>(_mm256_xor_si256(x, sign));
    // Wraps below zero for v < 16 (down to -0x820 for v == 0); the signed max discards it.
    let logarithmic = _mm256_sub_epi16(exponent_mantissa_avx2(v), _mm256_set1_epi16(0x820));
    let number = _mm256_max_epi16(logarithmic, _mm256_min_epi16(v, _mm256_set1_epi16(16)));
    // code = (sign bit set when positive | number) ^ 0x55 = number ^ 0xD5 ^ (sign & 0x80).
    _mm256_xor_si256(
        _mm256_xor_si256(number, _mm256_set1_epi16(0xD5)),
        _mm256_and_si256(sign, _mm256_set1_epi16(0x80)),
    )
}

/// The AVX2 encode loop, generic over the law's 16-lane code function.
#[inline]
#[target_feature(enable = "avx2")]
fn encode_body_avx2(src: &[i16], dst: &mut [u8], codes: impl Fn(__m256i) -> __m256i) {
    // Equal lengths, known to the compiler from here on.
    let dst = &mut dst[..src.len()];
    for_each_chunk(src.len(), |start| {
        let s = &src[start..start + CHUNK];
        // SAFETY: `s` holds 32 i16 (64 bytes): two 32-byte unaligned loads fit.
        let (a, b) = unsafe {
            (
                _mm256_loadu_si256(s.as_ptr().cast()),
                _mm256_loadu_si256(s.as_ptr().add(16).cast()),
            )
        };
        // Codes are 0..=255 in 16-bit lanes: `packus` narrows them without saturating but
        // interleaves the 128-bit lanes ([a0-7 b0-7 | a8-15 b8-15]); the permute restores
        // sample order.
        let packed = _mm256_packus_epi16(codes(a), codes(b));
        let ordered = _mm256_permute4x64_epi64::<0b11_01_10_00>(packed);
        let d = &mut dst[start..start + CHUNK];
        // SAFETY: `d` holds 32 bytes; `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_si256(d.as_mut_ptr().cast(), ordered) };
    });
}

/// # Safety
/// The CPU must support AVX2, and `src.len() == dst.len() >= 32`.
#[target_feature(enable = "avx2")]
unsafe fn ulaw_encode_body_avx2(src: &[i16], dst: &mut [u8]) {
    encode_body_avx2(src, dst, |x| ulaw_codes_avx2(x));
}

/// # Safety
/// The CPU must support AVX2, and `src.len() == dst.len() >= 32`.
#[target_feature(enable = "avx2")]
unsafe fn alaw_encode_body_avx2(src: &[i16], dst: &mut [u8]) {
    encode_body_avx2(src, dst, |x| alaw_codes_avx2(x));
}

/// 16-entry byte table for `pshufb`, repeated in both 128-bit lanes; entries past `N`
/// are zero.
#[inline]
#[target_feature(enable = "avx2")]
fn byte_table<const N: usize>(entries: [u8; N]) -> __m256i {
    let mut table = [0u8; 16];
    table[..N].copy_from_slice(&entries);
    let t = i128::from_le_bytes(table);
    // Two halves of the 128-bit value as the low and high 64-bit elements.
    let (low, high) = (t as i64, (t >> 64) as i64);
    _mm256_set_epi64x(high, low, high, low)
}

/// Per code byte (32 of them, any order): the magnitude's two factors and the sign,
/// as bytes. `base * power` is the decoded magnitude (before mu-law's bias is
/// subtracted), and `negative`'s bit 7 is set where the sample is negative.
struct DecodeFactors {
    base: __m256i,
    power: __m256i,
    negative: __m256i,
}

#[inline]
#[target_feature(enable = "avx2")]
fn ulaw_factors_avx2(codes: __m256i) -> DecodeFactors {
    // Inverted code: bit 7 set for negative samples, exponent in bits 4-6, mantissa 0-3.
    let inverted = _mm256_xor_si256(codes, _mm256_set1_epi8(-1));
    // The 16-bit shift drags bits in from the neighbouring byte; the mask drops them.
    let exponent = _mm256_and_si256(_mm256_srli_epi16::<4>(inverted), _mm256_set1_epi8(0x07));
    let mantissa = _mm256_and_si256(inverted, _mm256_set1_epi8(0x0F));
    let powers = byte_table([1, 2, 4, 8, 16, 32, 64, 128]);
    let bases = byte_table(core::array::from_fn::<u8, 16, _>(|m| 0x84 + 8 * m as u8));
    DecodeFactors {
        base: _mm256_shuffle_epi8(bases, mantissa),
        power: _mm256_shuffle_epi8(powers, exponent),
        negative: inverted,
    }
}

#[inline]
#[target_feature(enable = "avx2")]
fn alaw_factors_avx2(codes: __m256i) -> DecodeFactors {
    // `^ 0x55` undoes the line inversion, `^ 0x80` makes bit 7 set for negative samples:
    // bits 0-6 are the magnitude index, exponent in bits 4-6, mantissa in 0-3.
    let x = _mm256_xor_si256(codes, _mm256_set1_epi8(0xD5_u8 as i8));
    let exponent = _mm256_and_si256(_mm256_srli_epi16::<4>(x), _mm256_set1_epi8(0x07));
    let mantissa = _mm256_and_si256(x, _mm256_set1_epi8(0x0F));
    // base = 8m + 4 (+ 128 above segment 0), power = 2^max(exponent, 1): see the module doc.
    let bases = byte_table(core::array::from_fn::<u8, 16, _>(|m| 8 * m as u8 + 4));
    let leading_one = byte_table([0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80]);
    let powers = byte_table([2, 2, 4, 8, 16, 32, 64, 128]);
    DecodeFactors {
        base: _mm256_or_si256(
            _mm256_shuffle_epi8(bases, mantissa),
            _mm256_shuffle_epi8(leading_one, exponent),
        ),
        power: _mm256_shuffle_epi8(powers, exponent),
        negative: x,
    }
}

/// The AVX2 decode loop, generic over the law's factor function; `bias` is subtracted
/// from every magnitude (0x84 for mu-law, 0 for A-law).
#[inline]
#[target_feature(enable = "avx2")]
fn decode_body_avx2(
    src: &[u8],
    dst: &mut [i16],
    bias: i16,
    factors: impl Fn(__m256i) -> DecodeFactors,
) {
    // Equal lengths, known to the compiler from here on.
    let dst = &mut dst[..src.len()];
    for_each_chunk(src.len(), |start| {
        let s = &src[start..start + CHUNK];
        // SAFETY: `s` holds 32 bytes; `loadu` has no alignment requirement.
        let codes = unsafe { _mm256_loadu_si256(s.as_ptr().cast()) };
        // Widening with `unpacklo/hi` works within 128-bit lanes. With the 8-byte quarters
        // arranged [q0 q2 | q1 q3], `unpacklo` yields codes 0-15 in order and `unpackhi`
        // codes 16-31.
        let codes = _mm256_permute4x64_epi64::<0b11_01_10_00>(codes);
        let f = factors(codes);
        let zero = _mm256_setzero_si256();
        // Sign words: low byte 1, high byte the `negative` byte, so the word is negative
        // exactly where the sample is, and never zero (`sign_epi16` would zero it).
        let one = _mm256_set1_epi8(1);
        let halves = [
            (
                _mm256_unpacklo_epi8(f.base, zero),
                _mm256_unpacklo_epi8(f.power, zero),
                _mm256_unpacklo_epi8(one, f.negative),
            ),
            (
                _mm256_unpackhi_epi8(f.base, zero),
                _mm256_unpackhi_epi8(f.power, zero),
                _mm256_unpackhi_epi8(one, f.negative),
            ),
        ];
        let d = &mut dst[start..start + CHUNK];
        for (k, (base, power, sign)) in halves.into_iter().enumerate() {
            // Below 2^15 (see the module doc): the 16-bit product is exact.
            let magnitude =
                _mm256_sub_epi16(_mm256_mullo_epi16(base, power), _mm256_set1_epi16(bias));
            let samples = _mm256_sign_epi16(magnitude, sign);
            let half = &mut d[16 * k..16 * k + 16];
            // SAFETY: `half` holds 16 i16 (32 bytes); `storeu` has no alignment requirement.
            unsafe { _mm256_storeu_si256(half.as_mut_ptr().cast(), samples) };
        }
    });
}

/// # Safety
/// The CPU must support AVX2, and `src.len() == dst.len() >= 32`.
#[target_feature(enable = "avx2")]
unsafe fn ulaw_decode_body_avx2(src: &[u8], dst: &mut [i16]) {
    decode_body_avx2(src, dst, 0x84, |c| ulaw_factors_avx2(c));
}

/// # Safety
/// The CPU must support AVX2, and `src.len() == dst.len() >= 32`.
#[target_feature(enable = "avx2")]
unsafe fn alaw_decode_body_avx2(src: &[u8], dst: &mut [i16]) {
    decode_body_avx2(src, dst, 0, |c| alaw_factors_avx2(c));
}

// ---------------------------------------------------------------------------------------
// AVX-512 (F + BW). The same arithmetic as AVX2, 32 lanes of 16 bits per vector, with
// in-order narrowing (`vpmovwb`) and widening (`vpmovzxbw`), and masked negation.
// ---------------------------------------------------------------------------------------

/// As [`exponent_mantissa_avx2`], on 32 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn exponent_mantissa_avx512(v: __m512i) -> __m512i {
    let zero = _mm512_setzero_si512();
    let lo = _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_unpacklo_epi16(v, zero)));
    let hi = _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_unpackhi_epi16(v, zero)));
    _mm512_packus_epi32(_mm512_srli_epi32::<19>(lo), _mm512_srli_epi32::<19>(hi))
}

/// As [`ulaw_codes_avx2`], on 32 samples.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn ulaw_codes_avx512(x: __m512i) -> __m512i {
    let sign = _mm512_srai_epi16::<15>(x);
    let magnitude = _mm512_srai_epi16::<2>(_mm512_xor_si512(x, sign));
    let biased = _mm512_min_epi16(
        _mm512_add_epi16(magnitude, _mm512_set1_epi16(33)),
        _mm512_set1_epi16(0x1FFF),
    );
    let number_plus_0x840 = exponent_mantissa_avx512(biased);
    _mm512_sub_epi16(
        _mm512_sub_epi16(_mm512_set1_epi16(0x93F), number_plus_0x840),
        _mm512_and_si512(sign, _mm512_set1_epi16(0x80)),
    )
}

/// As [`alaw_codes_avx2`], on 32 samples.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn alaw_codes_avx512(x: __m512i) -> __m512i {
    let sign = _mm512_srai_epi16::<15>(x);
    let v = _mm512_srai_epi16::<4>(_mm512_xor_si512(x, sign));
    let logarithmic = _mm512_sub_epi16(exponent_mantissa_avx512(v), _mm512_set1_epi16(0x820));
    let number = _mm512_max_epi16(logarithmic, _mm512_min_epi16(v, _mm512_set1_epi16(16)));
    _mm512_xor_si512(
        _mm512_xor_si512(number, _mm512_set1_epi16(0xD5)),
        _mm512_and_si512(sign, _mm512_set1_epi16(0x80)),
    )
}

/// The AVX-512 encode loop, generic over the law's 32-lane code function.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn encode_body_avx512(src: &[i16], dst: &mut [u8], codes: impl Fn(__m512i) -> __m512i) {
    // Equal lengths, known to the compiler from here on.
    let dst = &mut dst[..src.len()];
    for_each_chunk(src.len(), |start| {
        let s = &src[start..start + CHUNK];
        // SAFETY: `s` holds 32 i16, exactly one 64-byte unaligned load.
        let x = unsafe { _mm512_loadu_si512(s.as_ptr().cast()) };
        // `vpmovwb`: truncating narrow in sample order (codes are 0..=255).
        let bytes = _mm512_cvtepi16_epi8(codes(x));
        let d = &mut dst[start..start + CHUNK];
        // SAFETY: `d` holds 32 bytes; `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_si256(d.as_mut_ptr().cast(), bytes) };
    });
}

/// # Safety
/// The CPU must support AVX-512F and AVX-512BW, and `src.len() == dst.len() >= 32`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn ulaw_encode_body_avx512(src: &[i16], dst: &mut [u8]) {
    encode_body_avx512(src, dst, |x| ulaw_codes_avx512(x));
}

/// # Safety
/// The CPU must support AVX-512F and AVX-512BW, and `src.len() == dst.len() >= 32`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn alaw_encode_body_avx512(src: &[i16], dst: &mut [u8]) {
    encode_body_avx512(src, dst, |x| alaw_codes_avx512(x));
}

/// The AVX-512 decode loop: the byte-level factors in 256 bits (AVX2, no lane
/// rearrangement needed), then widened in order to 32 x 16 bits.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw")]
fn decode_body_avx512(
    src: &[u8],
    dst: &mut [i16],
    bias: i16,
    factors: impl Fn(__m256i) -> DecodeFactors,
) {
    // Equal lengths, known to the compiler from here on.
    let dst = &mut dst[..src.len()];
    for_each_chunk(src.len(), |start| {
        let s = &src[start..start + CHUNK];
        // SAFETY: `s` holds 32 bytes; `loadu` has no alignment requirement.
        let codes = unsafe { _mm256_loadu_si256(s.as_ptr().cast()) };
        let f = factors(codes);
        let magnitude = _mm512_sub_epi16(
            _mm512_mullo_epi16(_mm512_cvtepu8_epi16(f.base), _mm512_cvtepu8_epi16(f.power)),
            _mm512_set1_epi16(bias),
        );
        // Bit 7 of each `negative` byte, in order: the lanes to negate.
        let negative = _mm256_movemask_epi8(f.negative) as u32;
        let samples = _mm512_mask_sub_epi16(magnitude, negative, _mm512_setzero_si512(), magnitude);
        let d = &mut dst[start..start + CHUNK];
        // SAFETY: `d` holds 32 i16, exactly one 64-byte unaligned store.
        unsafe { _mm512_storeu_si512(d.as_mut_ptr().cast(), samples) };
    });
}

/// # Safety
/// The CPU must support AVX2, AVX-512F and AVX-512BW, and `src.len() == dst.len() >= 32`.
#[target_feature(enable = "avx2,avx512f,avx512bw")]
unsafe fn ulaw_decode_body_avx512(src: &[u8], dst: &mut [i16]) {
    decode_body_avx512(src, dst, 0x84, |c| ulaw_factors_avx2(c));
}

/// # Safety
/// The CPU must support AVX2, AVX-512F and AVX-512BW, and `src.len() == dst.len() >= 32`.
#[target_feature(enable = "avx2,avx512f,avx512bw")]
unsafe fn alaw_decode_body_avx512(src: &[u8], dst: &mut [i16]) {
    decode_body_avx512(src, dst, 0, |c| alaw_factors_avx2(c));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wrappers' remembered detection: before it is known a call takes the slow
    /// path (which detects and remembers), after it the hot one; both give the scalar
    /// reference's output, and what is remembered is what the CPU has.
    #[test]
    fn a_wrapper_gives_the_reference_before_and_after_detection_is_remembered() {
        let codes: Vec<u8> = (0..160u32).map(|i| (i * 37 % 256) as u8).collect();
        let mut reference = vec![0i16; 160];
        ulaw_decode_scalar(&codes, &mut reference);
        let pcm = reference.clone();
        let mut encoded = vec![0u8; 160];
        ulaw_encode_scalar(&pcm, &mut encoded);
        for round in 0..2 {
            if round == 0 {
                // Forget: the next call detects again (other tests' calls in the
                // meantime only take the slow path).
                AVX2.store(UNKNOWN, Ordering::Relaxed);
            }
            let mut out = vec![0i16; 160];
            ulaw_decode_avx2(&codes, &mut out);
            assert_eq!(out, reference, "decode, round {round}");
            let mut bytes = vec![0u8; 160];
            ulaw_encode_avx2(&pcm, &mut bytes);
            assert_eq!(bytes, encoded, "encode, round {round}");
            let expected = if is_x86_feature_detected!("avx2") {
                PRESENT
            } else {
                ABSENT
            };
            assert_eq!(AVX2.load(Ordering::Relaxed), expected, "round {round}");
            assert_eq!(avx2_known(), expected == PRESENT);
        }
    }
}
