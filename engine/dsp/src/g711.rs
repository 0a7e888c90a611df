//! ITU-T G.711 mu-law and A-law, bit-exact with the ITU reference software.
//!
//! "Correct" here means: the same bytes and samples as `g711.c` of the ITU-T G.191
//! Software Tool Library (`ulaw_compress`, `ulaw_expand`, `alaw_compress`,
//! `alaw_expand`), and for transcoding the conversion Tables 3 and 4 of G.711 itself.
//! Three details of that reference matter, and quick implementations often get them
//! wrong:
//!
//! - **Which bits are used.** mu-law quantises the top 14 bits of a 16-bit sample, A-law
//!   the top 13; A-law's smallest step is two 13-bit units, so in fact only the top 12
//!   bits decide an A-law code (G.191 shifts by 4). Lower bits are truncated, never
//!   rounded.
//! - **Negative samples use the one's complement.** G.191 takes the magnitude of a
//!   negative sample as `!x >> shift` (that is `-x - 1`), not `-x`: the quantiser is
//!   symmetric about -0.5, so -1 encodes like 0 (as "negative zero").
//! - **mu-law clips** magnitudes at or above decision value 8159 (14-bit) to the
//!   largest code instead of wrapping.
//!
//! The **scalar reference** for per-frame encode and decode is one table look-up per
//! sample. Every table is computed at compile time by `const fn` from the reference
//! formulas (or, for transcoding, from the standard's printed tables), so there is no
//! lazy initialisation, no allocation and no start-up cost. The tables are 16 KiB
//! (mu-law encode), 4 KiB (A-law encode), 2 x 512 B (decode) and 2 x 256 B (transcode):
//! they fit in L1/L2.
//!
//! **SIMD kernels** (AVX2 and AVX-512 F+BW on x86-64, in `g711/x86.rs`) compute the same
//! codes and samples with bit arithmetic, 32 per step: the int-to-float conversion finds
//! the segment and mantissa of a whole vector at once, and decoding multiplies by a
//! looked-up power of two. They are tested bit-identical to the scalar reference for all
//! 65,536 samples and all 256 codes at every offset within a chunk and at every length
//! up to 300 (AVX-512 also on an emulated CPU: `g711/emulate_avx512.py`).
//!
//! **Choosing a kernel.** [`G711Kernels`] is a table of the four slice kernels for one
//! instruction set. [`encode`] and [`decode`] dispatch through a table detected once per
//! process ([`kernels`]: the fastest variant, or the scalar reference when
//! `EARSHOT_FORCE_SCALAR=1`); a caller may hold its own table instead. Transcoding stays a
//! 256-entry look-up in every case.
//!
//! Round trips: `encode(decode(c)) == c` for every code except mu-law `0x7F`
//! ("negative zero"), which decodes to 0 and so re-encodes as `0xFF`. Transcoding is
//! NOT decode-then-encode: G.711 defines its conversion tables with the two laws' real
//! signal levels (mu-law's full scale is not exactly twice A-law's), so in 44 mu-law
//! and 32 A-law codes the standard picks a neighbouring code. We follow the standard.

use earshot_types::Codec;
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // SIMD loads and stores, and calls into `#[target_feature]` fns.
mod x86;

// ---------------------------------------------------------------------------------------
// Reference formulas. These are the G.191 algorithms, written as `const fn` so the
// look-up tables below can be computed by the compiler. They run only at compile time
// (and in tests); the hot path never calls them.
// ---------------------------------------------------------------------------------------

/// mu-law encoder of G.191 `ulaw_compress`, on one 16-bit sample.
const fn ulaw_compress(x: i16) -> u8 {
    // 14-bit magnitude; one's complement for negative samples (see module doc).
    let magnitude = if x < 0 { (!x) >> 2 } else { x >> 2 } as i32;
    // The +33 bias turns mu-law's segment boundaries into powers of two.
    let mut biased = magnitude + 33;
    if biased > 0x1FFF {
        biased = 0x1FFF; // clip: everything from decision value 8159 up is the top code
    }
    // Segment number 1..=8: one more than the bit length of `biased >> 6`.
    let segment = 1 + (32 - ((biased >> 6) as u32).leading_zeros()) as i32;
    let high_nibble = 8 - segment;
    let low_nibble = 0x0F - ((biased >> segment) & 0x0F);
    let code = ((high_nibble << 4) | low_nibble) as u8;
    if x >= 0 { code | 0x80 } else { code }
}

/// mu-law decoder of G.191 `ulaw_expand`: the middle of the code's decision interval,
/// 14 bits left-justified in 16.
const fn ulaw_expand(code: u8) -> i16 {
    let inverted = !code;
    let exponent = ((inverted >> 4) & 0x07) as i32;
    let mantissa = (inverted & 0x0F) as i32;
    let step = 8 << exponent; // four 16-bit units per 14-bit unit, times 2^(segment)
    let magnitude = (0x80 << exponent) + step * mantissa + step / 2 - 4 * 33;
    // The largest magnitude is 32124, so the cast cannot truncate.
    (if code & 0x80 != 0 {
        magnitude
    } else {
        -magnitude
    }) as i16
}

/// A-law encoder of G.191 `alaw_compress`, on one 16-bit sample.
const fn alaw_compress(x: i16) -> u8 {
    // 0..2048: the top 12 bits; one's complement for negative samples.
    let mut ix = if x < 0 { (!x) >> 4 } else { x >> 4 } as i32;
    if ix > 15 {
        // Segments 1..=7: find the exponent, drop the leading one.
        let mut exponent = 1;
        while ix > 16 + 15 {
            ix >>= 1;
            exponent += 1;
        }
        ix = ix - 16 + (exponent << 4);
    }
    let signed = if x >= 0 { ix | 0x80 } else { ix };
    // Even bits are inverted on the line (the "0x55" alternate-mark inversion).
    (signed ^ 0x55) as u8
}

/// A-law decoder of G.191 `alaw_expand`: the middle of the code's decision interval,
/// 13 bits left-justified in 16.
const fn alaw_expand(code: u8) -> i16 {
    let ix = ((code ^ 0x55) & 0x7F) as i32;
    let exponent = ix >> 4;
    let mut mantissa = ix & 0x0F;
    if exponent > 0 {
        mantissa += 16; // the leading one of segments 1..=7
    }
    mantissa = (mantissa << 4) + 0x08; // half a quantisation step
    if exponent > 1 {
        mantissa <<= exponent - 1;
    }
    // The largest magnitude is 32256, so the cast cannot truncate.
    (if code & 0x80 != 0 {
        mantissa
    } else {
        -mantissa
    }) as i16
}

// ---------------------------------------------------------------------------------------
// Compile-time tables.
// ---------------------------------------------------------------------------------------

/// mu-law depends only on the top 14 bits: one entry per value of `(x as u16) >> 2`.
const ULAW_ENCODE_SHIFT: u32 = 2;
/// A-law depends only on the top 12 bits (see the module doc): `(x as u16) >> 4`.
const ALAW_ENCODE_SHIFT: u32 = 4;

// Const fns cannot call through function pointers, hence one builder per table. Entry
// `i` of an encoder table is the code of the 16-bit samples whose top bits are `i`
// (they all encode alike, which the exhaustive tests check).

const fn ulaw_encode_table() -> [u8; 1 << (16 - ULAW_ENCODE_SHIFT)] {
    let mut table = [0u8; 1 << (16 - ULAW_ENCODE_SHIFT)];
    let mut i = 0;
    while i < table.len() {
        table[i] = ulaw_compress(((i as u16) << ULAW_ENCODE_SHIFT) as i16);
        i += 1;
    }
    table
}

const fn alaw_encode_table() -> [u8; 1 << (16 - ALAW_ENCODE_SHIFT)] {
    let mut table = [0u8; 1 << (16 - ALAW_ENCODE_SHIFT)];
    let mut i = 0;
    while i < table.len() {
        table[i] = alaw_compress(((i as u16) << ALAW_ENCODE_SHIFT) as i16);
        i += 1;
    }
    table
}

const fn ulaw_decode_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = ulaw_expand(code as u8);
        code += 1;
    }
    table
}

const fn alaw_decode_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = alaw_expand(code as u8);
        code += 1;
    }
    table
}

static ULAW_ENCODE: [u8; 1 << (16 - ULAW_ENCODE_SHIFT)] = ulaw_encode_table();
static ALAW_ENCODE: [u8; 1 << (16 - ALAW_ENCODE_SHIFT)] = alaw_encode_table();
static ULAW_DECODE: [i16; 256] = ulaw_decode_table();
static ALAW_DECODE: [i16; 256] = alaw_decode_table();

/// G.711 Table 3 (mu-law to A-law), as printed: index is the mu-law magnitude number
/// (0 = smallest), value the A-law magnitude number (1 = smallest). The sign carries
/// over unchanged. Two entries that the widely copied Sun `g711.c` got wrong (mu 80 ->
/// A 80, and A 80 -> mu 80 below; see Borge Lindberg's erratum) are as in the standard.
const G711_TABLE_3_MU_TO_A: [u8; 128] = [
    1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, //
    9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, //
    25, 27, 29, 31, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, //
    46, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, //
    64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, //
    80, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, //
    97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, //
    113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128,
];

/// G.711 Table 4 (A-law to mu-law), as printed: index is the A-law magnitude number
/// minus one, value the mu-law magnitude number.
const G711_TABLE_4_A_TO_MU: [u8; 128] = [
    1, 3, 5, 7, 9, 11, 13, 15, 16, 17, 18, 19, 20, 21, 22, 23, //
    24, 25, 26, 27, 28, 29, 30, 31, 32, 32, 33, 33, 34, 34, 35, 35, //
    36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 48, 49, 49, //
    50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 64, //
    65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, //
    80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, //
    96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, //
    112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127,
];

// On the wire, a mu-law code is `sign | (0x7F ^ magnitude number)`, with sign bit set
// for positive samples; an A-law code is `(sign | magnitude index) ^ 0x55`, same sign
// convention. Magnitude numbers grow with the signal level in both laws.

const fn ulaw_to_alaw_table() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut code = 0;
    while code < 256 {
        let sign = code as u8 & 0x80;
        let mu_number = (code as u8 & 0x7F) ^ 0x7F;
        let a_index = G711_TABLE_3_MU_TO_A[mu_number as usize] - 1;
        table[code] = (sign | a_index) ^ 0x55;
        code += 1;
    }
    table
}

const fn alaw_to_ulaw_table() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut code = 0;
    while code < 256 {
        let sign = code as u8 & 0x80;
        let a_index = (code as u8 ^ 0x55) & 0x7F;
        let mu_number = G711_TABLE_4_A_TO_MU[a_index as usize];
        table[code] = sign | (mu_number ^ 0x7F);
        code += 1;
    }
    table
}

static ULAW_TO_ALAW: [u8; 256] = ulaw_to_alaw_table();
static ALAW_TO_ULAW: [u8; 256] = alaw_to_ulaw_table();

// ---------------------------------------------------------------------------------------
// Public API.
// ---------------------------------------------------------------------------------------

/// Encodes one 16-bit linear sample to mu-law (G.191 `ulaw_compress`).
#[inline]
pub fn ulaw_encode_sample(x: i16) -> u8 {
    // A u16 shifted right by 2 is below 2^14, the table's length: no bounds check.
    ULAW_ENCODE[usize::from(x as u16 >> ULAW_ENCODE_SHIFT)]
}

/// Decodes one mu-law code to 16-bit linear (G.191 `ulaw_expand`).
#[inline]
pub fn ulaw_decode_sample(c: u8) -> i16 {
    ULAW_DECODE[usize::from(c)]
}

/// Encodes one 16-bit linear sample to A-law (G.191 `alaw_compress`).
#[inline]
pub fn alaw_encode_sample(x: i16) -> u8 {
    ALAW_ENCODE[usize::from(x as u16 >> ALAW_ENCODE_SHIFT)]
}

/// Decodes one A-law code to 16-bit linear (G.191 `alaw_expand`).
#[inline]
pub fn alaw_decode_sample(c: u8) -> i16 {
    ALAW_DECODE[usize::from(c)]
}

/// mu-law to A-law by G.711 Table 3 (not decode-then-encode; see the module doc).
#[inline]
pub fn ulaw_to_alaw(c: u8) -> u8 {
    ULAW_TO_ALAW[usize::from(c)]
}

/// A-law to mu-law by G.711 Table 4 (not decode-then-encode; see the module doc).
#[inline]
pub fn alaw_to_ulaw(c: u8) -> u8 {
    ALAW_TO_ULAW[usize::from(c)]
}

/// Decodes G.711 `src` into `dst` (`codec` is `Pcmu` or `Pcma`; any other codec is a
/// caller bug and writes nothing). The two should have equal lengths; the shorter one bounds
/// the work (the rest of `dst` is left as it was).
///
/// Runs the kernel chosen once per process by [`kernels`] (the fastest this CPU has,
/// unless `EARSHOT_FORCE_SCALAR=1`); every kernel gives the scalar reference's result.
#[inline]
pub fn decode(codec: Codec, src: &[u8], dst: &mut [i16]) {
    kernels().decode(codec, src, dst);
}

/// Encodes `src` into `dst`. The two should have equal lengths; the shorter one bounds
/// the work (the rest of `dst` is left as it was).
///
/// Runs the kernel chosen once per process by [`kernels`], like [`decode`].
#[inline]
pub fn encode(codec: Codec, src: &[i16], dst: &mut [u8]) {
    kernels().encode(codec, src, dst);
}

// ---------------------------------------------------------------------------------------
// Kernels: the scalar reference and the SIMD variants, chosen once.
// ---------------------------------------------------------------------------------------

/// The signature of every encode kernel: one law, `src` into `dst`, the shorter of the
/// two bounding the work.
pub type EncodeFn = fn(src: &[i16], dst: &mut [u8]);

/// The signature of every decode kernel: one law, `src` into `dst`, the shorter of the
/// two bounding the work.
pub type DecodeFn = fn(src: &[u8], dst: &mut [i16]);

/// The environment variable that [`G711Kernels::detect`] reads: `1` forces the scalar
/// reference (the same variable as [`crate::mix::FORCE_SCALAR_ENV`]).
pub const FORCE_SCALAR_ENV: &str = crate::mix::FORCE_SCALAR_ENV;

/// A table of G.711 slice kernels for one instruction set.
///
/// The table-driven scalar functions define correct; every SIMD variant is tested
/// bit-identical to them over all 65,536 samples and all 256 codes, at many lengths and
/// offsets. Transcoding is not in the table: it is one 256-byte look-up per code in every
/// variant ([`transcode`]).
///
/// The crate-level [`encode`] and [`decode`] use a table detected once per process
/// ([`kernels`]); a caller that wants the choice explicit (a bench comparing variants,
/// a shard that logs its choice) can hold a table itself and call
/// [`G711Kernels::encode`] and [`G711Kernels::decode`].
#[derive(Clone, Copy, Debug)]
pub struct G711Kernels {
    /// Short name of the instruction set: `"scalar"`, `"avx2"` or `"avx512"`. Stable:
    /// benches and stats use it as an identifier.
    pub name: &'static str,
    /// mu-law encoder.
    pub ulaw_encode: EncodeFn,
    /// A-law encoder.
    pub alaw_encode: EncodeFn,
    /// mu-law decoder.
    pub ulaw_decode: DecodeFn,
    /// A-law decoder.
    pub alaw_decode: DecodeFn,
}

impl G711Kernels {
    /// The portable table-driven reference, which defines correct for every other
    /// variant.
    pub const fn scalar() -> G711Kernels {
        G711Kernels {
            name: "scalar",
            ulaw_encode: ulaw_encode_scalar,
            alaw_encode: alaw_encode_scalar,
            ulaw_decode: ulaw_decode_scalar,
            alaw_decode: alaw_decode_scalar,
        }
    }

    /// The fastest variant this CPU runs, unless the environment variable
    /// `EARSHOT_FORCE_SCALAR` is `1`, in which case the scalar reference. Reads the
    /// environment (and allocates doing so): call it at start-up, not per frame.
    pub fn detect() -> G711Kernels {
        let force_scalar = std::env::var_os(FORCE_SCALAR_ENV).is_some_and(|v| v == "1");
        G711Kernels::detect_with(force_scalar)
    }

    /// The fastest variant this CPU runs, or the scalar reference if `force_scalar`.
    /// Ignores the environment.
    pub fn detect_with(force_scalar: bool) -> G711Kernels {
        if force_scalar {
            return G711Kernels::scalar();
        }
        #[cfg(target_arch = "x86_64")]
        {
            if x86::avx512_detected() {
                return G711Kernels::AVX512;
            }
            if x86::avx2_detected() {
                return G711Kernels::AVX2;
            }
        }
        G711Kernels::scalar()
    }

    /// Every variant this CPU can run, the scalar reference first and the fastest last.
    /// For tests and benches; allocates.
    pub fn available() -> Vec<G711Kernels> {
        let mut kernels = vec![G711Kernels::scalar()];
        #[cfg(target_arch = "x86_64")]
        {
            if x86::avx2_detected() {
                kernels.push(G711Kernels::AVX2);
            }
            if x86::avx512_detected() {
                kernels.push(G711Kernels::AVX512);
            }
        }
        kernels
    }

    /// Every variant compiled for this target, whether or not this CPU runs it, the
    /// scalar reference first. Calling any of them is sound: a SIMD kernel checks its
    /// CPU features itself and falls back to the scalar reference without them. For an
    /// emulator run (see `g711/emulate_avx512.py`); elsewhere use [`Self::available`].
    pub fn compiled() -> Vec<G711Kernels> {
        #[allow(unused_mut)] // nothing is pushed on targets without SIMD variants
        let mut kernels = vec![G711Kernels::scalar()];
        #[cfg(target_arch = "x86_64")]
        kernels.extend([G711Kernels::AVX2, G711Kernels::AVX512]);
        kernels
    }

    /// Names of the SIMD variants that exist for this target but that this CPU cannot
    /// run, each with what it needs. For tests and benches to say what they skipped.
    pub fn unavailable() -> Vec<(&'static str, &'static str)> {
        let mut missing = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if !x86::avx2_detected() {
                missing.push(("avx2", "AVX2"));
            }
            if !x86::avx512_detected() {
                missing.push(("avx512", "AVX-512F and AVX-512BW"));
            }
        }
        missing
    }

    #[cfg(target_arch = "x86_64")]
    const AVX2: G711Kernels = G711Kernels {
        name: "avx2",
        ulaw_encode: x86::ulaw_encode_avx2,
        alaw_encode: x86::alaw_encode_avx2,
        ulaw_decode: x86::ulaw_decode_avx2,
        alaw_decode: x86::alaw_decode_avx2,
    };

    #[cfg(target_arch = "x86_64")]
    const AVX512: G711Kernels = G711Kernels {
        name: "avx512",
        ulaw_encode: x86::ulaw_encode_avx512,
        alaw_encode: x86::alaw_encode_avx512,
        ulaw_decode: x86::ulaw_decode_avx512,
        alaw_decode: x86::alaw_decode_avx512,
    };

    /// Encodes `src` into `dst` with this table's kernel for `codec` (see [`encode`]).
    #[inline]
    pub fn encode(&self, codec: Codec, src: &[i16], dst: &mut [u8]) {
        match codec {
            Codec::Pcmu => (self.ulaw_encode)(src, dst),
            Codec::Pcma => (self.alaw_encode)(src, dst),
            // Not G.711: the caller's mistake, never the network's. Nothing is written.
            Codec::G722 | Codec::Opus | Codec::L16(_) => debug_assert!(false, "{codec:?}"),
        }
    }

    /// Decodes `src` into `dst` with this table's kernel for `codec` (see [`decode`]).
    #[inline]
    pub fn decode(&self, codec: Codec, src: &[u8], dst: &mut [i16]) {
        match codec {
            Codec::Pcmu => (self.ulaw_decode)(src, dst),
            Codec::Pcma => (self.alaw_decode)(src, dst),
            // Not G.711: the caller's mistake, never the network's. Nothing is written.
            Codec::G722 | Codec::Opus | Codec::L16(_) => debug_assert!(false, "{codec:?}"),
        }
    }
}

/// The kernel table that [`encode`] and [`decode`] use: [`G711Kernels::detect`], run on
/// the first call in the process and kept. Calling it once at start-up moves that first
/// detection (an environment read, which allocates) off the per-frame path; after it,
/// each call is one atomic load and a branch.
pub fn kernels() -> &'static G711Kernels {
    static KERNELS: OnceLock<G711Kernels> = OnceLock::new();
    KERNELS.get_or_init(G711Kernels::detect)
}

/// Scalar reference: mu-law encode, a table look-up per sample.
fn ulaw_encode_scalar(src: &[i16], dst: &mut [u8]) {
    encode_with(&ULAW_ENCODE, ULAW_ENCODE_SHIFT, src, dst);
}

/// Scalar reference: A-law encode, a table look-up per sample.
fn alaw_encode_scalar(src: &[i16], dst: &mut [u8]) {
    encode_with(&ALAW_ENCODE, ALAW_ENCODE_SHIFT, src, dst);
}

/// Scalar reference: mu-law decode, a table look-up per code.
fn ulaw_decode_scalar(src: &[u8], dst: &mut [i16]) {
    decode_with(&ULAW_DECODE, src, dst);
}

/// Scalar reference: A-law decode, a table look-up per code.
fn alaw_decode_scalar(src: &[u8], dst: &mut [i16]) {
    decode_with(&ALAW_DECODE, src, dst);
}

/// The decode loop for one law, eight samples per step.
#[inline(always)]
fn decode_with(table: &[i16; 256], src: &[u8], dst: &mut [i16]) {
    let n = src.len().min(dst.len());
    let (src, dst) = (&src[..n], &mut dst[..n]);
    // Eight samples per step with fixed-size chunks: the compiler unrolls them and drops
    // the per-sample loop and bounds checks (the index is a u8 into 256 entries).
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        for i in 0..8 {
            d[i] = table[usize::from(s[i])];
        }
    }
    for (d, &s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d = table[usize::from(s)];
    }
}

/// The encode loop for one law, eight samples per step (see [`decode_with`]). One
/// monomorphic loop per law: the tables differ in length and shift, and a constant
/// shift lets the compiler drop the bounds check.
#[inline(always)]
fn encode_with<const N: usize>(table: &[u8; N], shift: u32, src: &[i16], dst: &mut [u8]) {
    let n = src.len().min(dst.len());
    let (src, dst) = (&src[..n], &mut dst[..n]);
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        for i in 0..8 {
            d[i] = table[usize::from(s[i] as u16 >> shift)];
        }
    }
    for (d, &s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d = table[usize::from(s as u16 >> shift)];
    }
}

/// Transcodes G.711 bytes between the two laws by the standard's conversion tables,
/// without going through linear samples. `from == to` copies. The shorter of `src` and
/// `dst` bounds the work.
pub fn transcode(from: Codec, to: Codec, src: &[u8], dst: &mut [u8]) {
    let table = match (from, to) {
        (Codec::Pcmu, Codec::Pcma) => &ULAW_TO_ALAW,
        (Codec::Pcma, Codec::Pcmu) => &ALAW_TO_ULAW,
        (Codec::Pcmu, Codec::Pcmu) | (Codec::Pcma, Codec::Pcma) => {
            let n = src.len().min(dst.len());
            dst[..n].copy_from_slice(&src[..n]);
            return;
        }
        // Not two G.711 laws: the caller's mistake. Nothing is written.
        _ => {
            debug_assert!(false, "{from:?} -> {to:?}");
            return;
        }
    };
    let n = src.len().min(dst.len());
    let (src, dst) = (&src[..n], &mut dst[..n]);
    // Eight samples per step with fixed-size chunks: the compiler unrolls them and drops
    // the per-sample loop and bounds checks (the index is a u8 into 256 entries).
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        for i in 0..8 {
            d[i] = table[usize::from(s[i])];
        }
    }
    for (d, &s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d = table[usize::from(s)];
    }
}

#[cfg(test)]
mod tests;
