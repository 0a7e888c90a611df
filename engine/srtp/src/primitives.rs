//! The building blocks below the packet transforms: AES counter mode (RFC 3711 section
//! 4.1.1), HMAC-SHA1 with precomputed pad states (RFC 2104), and the key derivation
//! function (RFC 3711 section 4.3, reused by RFC 7714 section 11).
//!
//! Public so that the RFC 3711 appendix B vectors can check each block on its own; the
//! engine uses [`crate::SrtpSession`] and never needs them.

use aes::cipher::consts::U16;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, BlockSizeUser, KeyInit};
use aes::{Aes128, Aes128Enc, Aes256, Aes256Enc};
use sha1::digest::consts::U64;
use zeroize::{Zeroize, Zeroizing};

use crate::key::MasterKey;
use crate::suite::SrtpSuite;

type AesBlock = GenericArray<u8, U16>;
type ShaBlock = GenericArray<u8, U64>;

/// Counter blocks encrypted per AES call: AES-NI pipelines eight blocks in flight.
const PARALLEL_BLOCKS: usize = 8;

/// XORs `data` with the AES counter-mode keystream that starts at counter block `iv`
/// (RFC 3711 section 4.1.1: block j is `iv + j` mod 2^128).
///
/// Applying it twice restores the input. The keystream is generated eight blocks at a
/// time so the AES rounds of independent blocks overlap in the pipeline.
pub(crate) fn aes_cm_xor<C>(cipher: &C, iv: &[u8; 16], data: &mut [u8])
where
    C: BlockEncrypt + BlockSizeUser<BlockSize = U16>,
{
    let base = u128::from_be_bytes(*iv);
    let mut counter = 0u128;
    let mut keystream = [AesBlock::default(); PARALLEL_BLOCKS];
    for chunk in data.chunks_mut(16 * PARALLEL_BLOCKS) {
        let blocks = chunk.len().div_ceil(16);
        for block in &mut keystream[..blocks] {
            block.copy_from_slice(&base.wrapping_add(counter).to_be_bytes());
            counter += 1;
        }
        cipher.encrypt_blocks(&mut keystream[..blocks]);
        for (bytes, block) in chunk.chunks_mut(16).zip(&keystream[..blocks]) {
            let key: [u8; 16] = (*block).into();
            if let Ok(whole) = <&mut [u8; 16]>::try_from(&mut *bytes) {
                // One 128-bit XOR per block rather than sixteen byte XORs.
                let mixed = u128::from_ne_bytes(*whole) ^ u128::from_ne_bytes(key);
                *whole = mixed.to_ne_bytes();
            } else {
                for (byte, k) in bytes.iter_mut().zip(key) {
                    *byte ^= k;
                }
            }
        }
    }
}

/// XORs `data` with the AES-CM keystream of `key` (16 or 32 octets) from counter block
/// `iv`: the keystream itself when `data` is all zeros (RFC 3711 appendix B.2).
pub fn aes_cm_keystream_xor(key: &[u8], iv: &[u8; 16], data: &mut [u8]) {
    match key.len() {
        16 => aes_cm_xor(&Aes128::new(GenericArray::from_slice(key)), iv, data),
        32 => aes_cm_xor(&Aes256::new(GenericArray::from_slice(key)), iv, data),
        other => panic!("AES keys are 16 or 32 octets here, not {other}"),
    }
}

/// AES-128 for counter mode on the packet path: the eleven encryption round keys used
/// with AES-NI directly (176 octets inline), or, on CPUs without it, the `aes` crate's
/// cipher kept out of line (its schedule is larger and that path is slow anyway).
#[derive(Clone)]
pub(crate) enum CmAes {
    Ni(crate::ni::RoundKeys),
    Soft(Box<Aes128>),
}

impl CmAes {
    pub(crate) fn new(key: &[u8; 16]) -> Self {
        match crate::ni::RoundKeys::new(key) {
            Some(keys) => CmAes::Ni(keys),
            None => CmAes::Soft(Box::new(Aes128::new(GenericArray::from_slice(key)))),
        }
    }

    /// Octets this cipher keeps on the heap (the software schedule, off the NI path).
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            CmAes::Ni(_) => 0,
            CmAes::Soft(aes) => core::mem::size_of_val(&**aes),
        }
    }

    /// XORs `data` with the keystream from counter block `iv` (see [`aes_cm_xor`]).
    pub(crate) fn xor(&self, iv: &[u8; 16], data: &mut [u8]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            CmAes::Ni(keys) => crate::ni::ctr_xor(keys, iv, data),
            #[cfg(not(target_arch = "x86_64"))]
            CmAes::Ni(_) => unreachable!("RoundKeys::new returns None off x86-64"),
            CmAes::Soft(aes) => aes_cm_xor(&**aes, iv, data),
        }
    }
}

/// SHA-1 initial state (FIPS 180-4 section 5.3.1).
const SHA1_IV: [u32; 5] = [
    0x6745_2301,
    0xEFCD_AB89,
    0x98BA_DCFE,
    0x1032_5476,
    0xC3D2_E1F0,
];
const SHA1_BLOCK: usize = 64;
const SHA1_LEN: usize = 20;

/// HMAC-SHA1 whose key pads are hashed once, at construction.
///
/// Each MAC then costs the compressions of the message and one outer compression: four
/// SHA-1 blocks for a 172-octet RTP packet plus its ROC. The message is fed straight
/// from the caller's buffer (no copy of the packet), the final partial block is built on
/// the stack. The pad states are wiped on drop.
#[derive(Clone)]
pub struct HmacSha1 {
    inner: [u32; 5],
    outer: [u32; 5],
    /// SHA-NI present (checked once here, not per packet): [`crate::ni`] computes the
    /// whole MAC in registers.
    ni: bool,
}

impl HmacSha1 {
    /// Precomputes the inner and outer states for `key` (at most 64 octets; SRTP
    /// authentication keys are 20).
    pub fn new(key: &[u8]) -> Self {
        assert!(
            key.len() <= SHA1_BLOCK,
            "HMAC-SHA1 keys longer than a block are not used by SRTP"
        );
        let mut pad = Zeroizing::new([0u8; SHA1_BLOCK]);
        let mut state = |fill: u8| {
            pad.fill(fill);
            for (p, k) in pad.iter_mut().zip(key) {
                *p ^= k;
            }
            let mut s = SHA1_IV;
            compress(&mut s, &pad[..]);
            s
        };
        let inner = state(0x36);
        let outer = state(0x5c);
        Self {
            inner,
            outer,
            ni: crate::ni::available(),
        }
    }

    /// HMAC-SHA1 of `head || tail`, where `tail` is at most 55 octets (SRTP passes the
    /// 4-octet ROC there, so the packet needs no room for it).
    pub fn mac(&self, head: &[u8], tail: &[u8]) -> [u8; SHA1_LEN] {
        debug_assert!(tail.len() <= 55);
        #[cfg(target_arch = "x86_64")]
        if self.ni {
            return crate::ni::hmac_sha1(&self.inner, &self.outer, head, tail);
        }
        let mut state = self.inner;
        let full = head.len() - head.len() % SHA1_BLOCK;
        for block in head[..full].chunks_exact(SHA1_BLOCK) {
            compress(&mut state, block);
        }
        // The rest of head, then tail, then the SHA-1 padding: one or two blocks.
        let mut last = [0u8; 2 * SHA1_BLOCK];
        let rest = head.len() - full;
        last[..rest].copy_from_slice(&head[full..]);
        last[rest..rest + tail.len()].copy_from_slice(tail);
        let used = rest + tail.len();
        last[used] = 0x80;
        let blocks = if used + 9 <= SHA1_BLOCK { 1 } else { 2 };
        let bits = ((SHA1_BLOCK + head.len() + tail.len()) as u64) * 8;
        last[blocks * SHA1_BLOCK - 8..blocks * SHA1_BLOCK].copy_from_slice(&bits.to_be_bytes());
        for block in last[..blocks * SHA1_BLOCK].chunks_exact(SHA1_BLOCK) {
            compress(&mut state, block);
        }

        let mut outer_block = [0u8; SHA1_BLOCK];
        for (bytes, word) in outer_block.chunks_exact_mut(4).zip(state) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        outer_block[SHA1_LEN] = 0x80;
        let outer_bits = ((SHA1_BLOCK + SHA1_LEN) as u64) * 8;
        outer_block[SHA1_BLOCK - 8..].copy_from_slice(&outer_bits.to_be_bytes());
        let mut outer = self.outer;
        compress(&mut outer, &outer_block);

        let mut out = [0u8; SHA1_LEN];
        for (bytes, word) in out.chunks_exact_mut(4).zip(outer) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

impl core::fmt::Debug for HmacSha1 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HmacSha1([redacted])")
    }
}

impl Drop for HmacSha1 {
    fn drop(&mut self) {
        self.inner.zeroize();
        self.outer.zeroize();
    }
}

/// One SHA-1 compression of a 64-octet block (SHA-NI when the CPU has it).
fn compress(state: &mut [u32; 5], block: &[u8]) {
    sha1::compress(state, core::slice::from_ref(ShaBlock::from_slice(block)));
}

/// The KDF labels of RFC 3711 section 4.3.1 (SRTP) and 4.3.2 (SRTCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum KdfLabel {
    /// SRTP encryption key.
    RtpEncryption = 0x00,
    /// SRTP authentication key.
    RtpAuth = 0x01,
    /// SRTP session salt.
    RtpSalt = 0x02,
    /// SRTCP encryption key.
    RtcpEncryption = 0x03,
    /// SRTCP authentication key.
    RtcpAuth = 0x04,
    /// SRTCP session salt.
    RtcpSalt = 0x05,
}

/// The key derivation function of one master key (RFC 3711 section 4.3.1 with key
/// derivation rate 0): the AES key schedule is expanded once and serves all six labels
/// of a session (SRTP and SRTCP, key, salt and authentication key). Encryption-only
/// schedules, wiped on drop (`aes`'s `zeroize` feature).
pub(crate) struct Kdf<'a> {
    master: &'a MasterKey,
    prf: Prf,
}

// A stack temporary of the control path (one per session set-up): boxing the smaller
// variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Prf {
    Aes128(Aes128Enc),
    Aes256(Aes256Enc),
}

impl<'a> Kdf<'a> {
    pub(crate) fn new(master: &'a MasterKey) -> Self {
        let key = master.key();
        let prf = match master.suite() {
            SrtpSuite::AeadAes256Gcm => Prf::Aes256(Aes256Enc::new(GenericArray::from_slice(key))),
            SrtpSuite::AesCm128HmacSha1_80
            | SrtpSuite::AesCm128HmacSha1_32
            | SrtpSuite::AeadAes128Gcm => {
                Prf::Aes128(Aes128Enc::new(GenericArray::from_slice(key)))
            }
        };
        Self { master, prf }
    }

    /// The suite of the master key.
    pub(crate) fn suite(&self) -> SrtpSuite {
        self.master.suite()
    }

    /// Fills `out` with the session key material for `label`: the AES-CM keystream
    /// under the master key starting at `(master_salt XOR (label << 48)) * 2^16`.
    pub(crate) fn derive(&self, label: KdfLabel, out: &mut [u8]) {
        let mut iv = Zeroizing::new([0u8; 16]);
        iv[..self.master.salt().len()].copy_from_slice(self.master.salt());
        iv[7] ^= label as u8;
        out.fill(0);
        match &self.prf {
            Prf::Aes128(aes) => aes_cm_xor(aes, &iv, out),
            Prf::Aes256(aes) => aes_cm_xor(aes, &iv, out),
        }
    }
}

/// Fills `out` with the session key material for `label` (RFC 3711 section 4.3.1 with
/// key derivation rate 0, so r = 0): the AES-CM keystream under the master key starting
/// at `(master_salt XOR (label << 48)) * 2^16`.
///
/// RFC 7714 section 11 uses the same PRF for GCM with its 96-bit master salt, which is
/// placed in the leftmost octets of the 112-bit field with two zero octets after it (as
/// libsrtp does); AES-256 is the PRF for 256-bit master keys (RFC 6188).
pub fn derive(master: &MasterKey, label: KdfLabel, out: &mut [u8]) {
    Kdf::new(master).derive(label, out);
}
