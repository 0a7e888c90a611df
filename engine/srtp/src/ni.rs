//! The AES-CM + HMAC-SHA1 packet path with x86-64 AES-NI and SHA-NI, the crate's only
//! unsafe code (intrinsics behind run-time CPU detection).
//!
//! Why not the `aes` and `sha1` crates here: on the 172-octet PCMU packet, `aes` runs
//! counter mode eight blocks in parallel and the remaining two one at a time (so three
//! AES latencies instead of one), and `sha1::compress` moves the state between memory and
//! registers at every call, with a feature check each time. Here the whole keystream of a
//! packet is produced in one interleaved pass, the SHA-1 state stays in registers from
//! the first inner block through the outer block (whose message is the inner digest,
//! built in registers too), and the CPU check is done once per session.
//! Both crates remain the fallback on CPUs without these extensions and for the KDF.
//!
//! On a Zen 1 core a SHA-1 block is a chain of 20 dependent `sha1rnds4` of about 6 cycles
//! each; the four blocks of an HMAC over 176 octets are the floor of a protect.

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

use zeroize::Zeroize;

/// The eleven AES-128 round keys (encryption only: counter mode never decrypts).
#[derive(Clone)]
#[repr(C, align(16))]
pub(crate) struct RoundKeys([[u8; 16]; 11]);

impl Drop for RoundKeys {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// True when this CPU has AES-NI, SHA-NI and the SSE levels the code below uses.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("aes")
            && std::is_x86_feature_detected!("sha")
            && std::is_x86_feature_detected!("sse4.1")
            && std::is_x86_feature_detected!("ssse3")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
impl RoundKeys {
    /// Expands `key` (FIPS 197 section 5.2). `None` when the CPU lacks AES-NI.
    pub(crate) fn new(key: &[u8; 16]) -> Option<Self> {
        if !available() {
            return None;
        }
        let mut out = RoundKeys([[0; 16]; 11]);
        // SAFETY: `available()` confirmed AES-NI, SSE2 and SSSE3/SSE4.1 on this CPU.
        unsafe { expand128(key, &mut out.0) };
        Some(out)
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl RoundKeys {
    pub(crate) fn new(_key: &[u8; 16]) -> Option<Self> {
        None
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "aes,sse2")]
unsafe fn expand128(key: &[u8; 16], out: &mut [[u8; 16]; 11]) {
    #[inline]
    #[target_feature(enable = "sse2")]
    fn next(prev: __m128i, assist: __m128i) -> __m128i {
        let t = _mm_shuffle_epi32::<0xFF>(assist);
        let mut x = prev;
        x = _mm_xor_si128(x, _mm_slli_si128::<4>(x));
        x = _mm_xor_si128(x, _mm_slli_si128::<4>(x));
        x = _mm_xor_si128(x, _mm_slli_si128::<4>(x));
        _mm_xor_si128(x, t)
    }
    macro_rules! round {
        ($k:ident, $rcon:literal) => {
            next($k, _mm_aeskeygenassist_si128::<$rcon>($k))
        };
    }
    // SAFETY: `key` is 16 readable octets; unaligned load.
    let k0 = unsafe { _mm_loadu_si128(key.as_ptr().cast()) };
    let k1 = round!(k0, 0x01);
    let k2 = round!(k1, 0x02);
    let k3 = round!(k2, 0x04);
    let k4 = round!(k3, 0x08);
    let k5 = round!(k4, 0x10);
    let k6 = round!(k5, 0x20);
    let k7 = round!(k6, 0x40);
    let k8 = round!(k7, 0x80);
    let k9 = round!(k8, 0x1B);
    let k10 = round!(k9, 0x36);
    for (slot, k) in out
        .iter_mut()
        .zip([k0, k1, k2, k3, k4, k5, k6, k7, k8, k9, k10])
    {
        // SAFETY: `slot` is 16 writable octets; unaligned store.
        unsafe { _mm_storeu_si128(slot.as_mut_ptr().cast(), k) };
    }
}

/// XORs `data` with the AES-128 counter-mode keystream from counter block `iv` (block
/// j is `iv + j` mod 2^128), all blocks of a chunk of eight in flight at once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn ctr_xor(keys: &RoundKeys, iv: &[u8; 16], data: &mut [u8]) {
    // SAFETY: a `RoundKeys` exists only when `available()` confirmed AES-NI and SSE4.1.
    unsafe { ctr_xor_ni(keys, iv, data) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "aes,sse2,ssse3,sse4.1")]
unsafe fn ctr_xor_ni(keys: &RoundKeys, iv: &[u8; 16], data: &mut [u8]) {
    // SAFETY: each round key is 16 readable octets; unaligned loads.
    let rk: [__m128i; 11] =
        core::array::from_fn(|i| unsafe { _mm_loadu_si128(keys.0[i].as_ptr().cast()) });
    let base = u128::from_be_bytes(*iv);
    let mut counter = 0u128;
    for chunk in data.chunks_mut(16 * 8) {
        // A fixed lane count per call keeps every lane in a register; a short last chunk
        // takes the next size up (a 160-octet payload is one call of 8 and one of 2).
        match chunk.len().div_ceil(16) {
            1..=2 => ctr_chunk::<2>(&rk, base, &mut counter, chunk),
            3..=4 => ctr_chunk::<4>(&rk, base, &mut counter, chunk),
            _ => ctr_chunk::<8>(&rk, base, &mut counter, chunk),
        }
    }
}

/// XORs `chunk` (at most `N` blocks) with `N` keystream blocks from `base + counter`,
/// the `N` AES computations interleaved round by round.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "aes,sse2,ssse3,sse4.1")]
fn ctr_chunk<const N: usize>(rk: &[__m128i; 11], base: u128, counter: &mut u128, chunk: &mut [u8]) {
    let mut b: [__m128i; N] = core::array::from_fn(|_| {
        let ctr = base.wrapping_add(*counter).to_be_bytes();
        *counter += 1;
        // SAFETY: `ctr` is 16 readable octets; unaligned load.
        _mm_xor_si128(unsafe { _mm_loadu_si128(ctr.as_ptr().cast()) }, rk[0])
    });
    for k in &rk[1..10] {
        for lane in &mut b {
            *lane = _mm_aesenc_si128(*lane, *k);
        }
    }
    for lane in &mut b {
        *lane = _mm_aesenclast_si128(*lane, rk[10]);
    }
    for (bytes, ks) in chunk.chunks_mut(16).zip(b) {
        if bytes.len() == 16 {
            let p = bytes.as_mut_ptr().cast::<__m128i>();
            // SAFETY: `bytes` is 16 readable and writable octets; unaligned access.
            unsafe { _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), ks)) };
        } else {
            let mut tail = [0u8; 16];
            // SAFETY: `tail` is 16 writable octets; unaligned store.
            unsafe { _mm_storeu_si128(tail.as_mut_ptr().cast(), ks) };
            for (byte, k) in bytes.iter_mut().zip(tail) {
                *byte ^= k;
            }
        }
    }
}

/// HMAC-SHA1 of `head || tail` (`tail` at most 55 octets) from the precomputed inner and
/// outer pad states. The caller checked `available()`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn hmac_sha1(inner: &[u32; 5], outer: &[u32; 5], head: &[u8], tail: &[u8]) -> [u8; 20] {
    debug_assert!(available());
    // SAFETY: the only caller (`HmacSha1::mac`) takes this path only when `available()`
    // confirmed SHA-NI, SSSE3 and SSE4.1 on this CPU, recorded at construction.
    unsafe { hmac_sha1_ni(inner, outer, head, tail) }
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse2")]
fn byte_swap_mask() -> __m128i {
    _mm_set_epi64x(0x0001_0203_0405_0607, 0x0809_0A0B_0C0D_0E0F)
}

/// One SHA-1 compression of the message words `w` (already in SHA-NI order) into
/// (`abcd`, `e`), all in registers.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn compress_words(abcd: &mut __m128i, e: &mut __m128i, w: [__m128i; 4]) {
    macro_rules! rounds4 {
        ($h0:ident, $h1:ident, $wk:expr, $i:literal) => {
            _mm_sha1rnds4_epu32::<$i>($h0, _mm_sha1nexte_epu32($h1, $wk))
        };
    }
    macro_rules! schedule {
        ($v0:expr, $v1:expr, $v2:expr, $v3:expr) => {
            _mm_sha1msg2_epu32(_mm_xor_si128(_mm_sha1msg1_epu32($v0, $v1), $v2), $v3)
        };
    }
    macro_rules! schedule_rounds4 {
        ($h0:ident, $h1:ident, $w0:expr, $w1:expr, $w2:expr, $w3:expr, $w4:expr, $i:literal) => {
            $w4 = schedule!($w0, $w1, $w2, $w3);
            $h1 = rounds4!($h0, $h1, $w4, $i);
        };
    }
    let [mut w0, mut w1, mut w2, mut w3] = w;
    let mut w4;
    let mut h0 = *abcd;
    let mut h1 = _mm_add_epi32(*e, w0);
    h1 = _mm_sha1rnds4_epu32::<0>(h0, h1);
    h0 = rounds4!(h1, h0, w1, 0);
    h1 = rounds4!(h0, h1, w2, 0);
    h0 = rounds4!(h1, h0, w3, 0);
    schedule_rounds4!(h0, h1, w0, w1, w2, w3, w4, 0);
    schedule_rounds4!(h1, h0, w1, w2, w3, w4, w0, 1);
    schedule_rounds4!(h0, h1, w2, w3, w4, w0, w1, 1);
    schedule_rounds4!(h1, h0, w3, w4, w0, w1, w2, 1);
    schedule_rounds4!(h0, h1, w4, w0, w1, w2, w3, 1);
    schedule_rounds4!(h1, h0, w0, w1, w2, w3, w4, 1);
    schedule_rounds4!(h0, h1, w1, w2, w3, w4, w0, 2);
    schedule_rounds4!(h1, h0, w2, w3, w4, w0, w1, 2);
    schedule_rounds4!(h0, h1, w3, w4, w0, w1, w2, 2);
    schedule_rounds4!(h1, h0, w4, w0, w1, w2, w3, 2);
    schedule_rounds4!(h0, h1, w0, w1, w2, w3, w4, 2);
    schedule_rounds4!(h1, h0, w1, w2, w3, w4, w0, 3);
    schedule_rounds4!(h0, h1, w2, w3, w4, w0, w1, 3);
    schedule_rounds4!(h1, h0, w3, w4, w0, w1, w2, 3);
    schedule_rounds4!(h0, h1, w4, w0, w1, w2, w3, 3);
    schedule_rounds4!(h1, h0, w0, w1, w2, w3, w4, 3);
    *abcd = _mm_add_epi32(*abcd, h0);
    *e = _mm_sha1nexte_epu32(h1, *e);
}

/// One SHA-1 compression of the 64 octets at `block`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn compress_block(abcd: &mut __m128i, e: &mut __m128i, block: &[u8; 64]) {
    let mask = byte_swap_mask();
    let p = block.as_ptr().cast::<__m128i>();
    // SAFETY: `block` is 64 readable octets: four unaligned 16-octet loads.
    let w = unsafe {
        [
            _mm_shuffle_epi8(_mm_loadu_si128(p), mask),
            _mm_shuffle_epi8(_mm_loadu_si128(p.add(1)), mask),
            _mm_shuffle_epi8(_mm_loadu_si128(p.add(2)), mask),
            _mm_shuffle_epi8(_mm_loadu_si128(p.add(3)), mask),
        ]
    };
    compress_words(abcd, e, w);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn hmac_sha1_ni(inner: &[u32; 5], outer: &[u32; 5], head: &[u8], tail: &[u8]) -> [u8; 20] {
    const BLOCK: usize = 64;
    #[inline]
    #[target_feature(enable = "sse2")]
    fn load(s: &[u32; 5]) -> (__m128i, __m128i) {
        (
            _mm_set_epi32(s[0] as i32, s[1] as i32, s[2] as i32, s[3] as i32),
            _mm_set_epi32(s[4] as i32, 0, 0, 0),
        )
    }
    let (mut abcd, mut e) = load(inner);
    let (blocks, rest) = head.as_chunks::<BLOCK>();
    for block in blocks {
        compress_block(&mut abcd, &mut e, block);
    }
    // The rest of head, then tail, then the SHA-1 padding: one or two blocks.
    let mut last = [0u8; 2 * BLOCK];
    last[..rest.len()].copy_from_slice(rest);
    last[rest.len()..rest.len() + tail.len()].copy_from_slice(tail);
    let used = rest.len() + tail.len();
    last[used] = 0x80;
    let n = if used + 9 <= BLOCK { 1 } else { 2 };
    let bits = ((BLOCK + head.len() + tail.len()) as u64) * 8;
    last[n * BLOCK - 8..n * BLOCK].copy_from_slice(&bits.to_be_bytes());
    let (padded, _) = last[..n * BLOCK].as_chunks::<BLOCK>();
    for block in padded {
        compress_block(&mut abcd, &mut e, block);
    }

    // The outer message is the 20-octet inner digest, 0x80, zeros and the bit length
    // (64 + 20) * 8: its words are the inner state itself, no bytes in between.
    let w0 = abcd;
    let w1 = _mm_or_si128(e, _mm_set_epi32(0, 0x8000_0000_u32 as i32, 0, 0));
    let w2 = _mm_setzero_si128();
    let w3 = _mm_set_epi32(0, 0, 0, ((BLOCK + 20) * 8) as i32);
    let (mut abcd, mut e) = load(outer);
    compress_words(&mut abcd, &mut e, [w0, w1, w2, w3]);

    let mut out = [0u8; 20];
    let digest = _mm_shuffle_epi8(abcd, byte_swap_mask());
    // SAFETY: `out` has 16 writable octets at its start; unaligned store.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), digest) };
    out[16..].copy_from_slice(&(_mm_extract_epi32::<3>(e) as u32).to_be_bytes());
    out
}
