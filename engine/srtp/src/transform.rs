//! The per-packet transforms of one key direction: AES-CM + HMAC-SHA1 (RFC 3711
//! sections 3.3, 3.4, 4.1.1, 4.2.1) and AES-GCM (RFC 7714 sections 8 and 9), on SRTP and
//! SRTCP, in place. Session keys are derived once, here, at construction.
//!
//! Every function checks before it writes: on any error the packet is untouched.

use aes::cipher::KeyInit;
use aes::cipher::generic_array::GenericArray;
use aes_gcm::{AeadInPlace, Aes128Gcm, Aes256Gcm};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::SrtpError;
use crate::primitives::{CmAes, HmacSha1, Kdf, KdfLabel};
use crate::suite::SrtpSuite;

const GCM_TAG: usize = 16;
/// The E flag of the SRTCP index word: the payload is encrypted.
pub(crate) const SRTCP_E_FLAG: u32 = 1 << 31;
/// Octets of the RTCP header that stay in clear: V/P/RC, PT, length, sender SSRC.
pub(crate) const RTCP_CLEAR_HEADER: usize = 8;

/// The keys of one of SRTP or SRTCP for one direction.
///
/// The AES-CM variant is what the packet path of most legs touches, so it stays inline
/// and small (round keys, pad states, salt, tag length: 256 octets, four cache lines). The GCM
/// ciphers are boxed: the `aes-gcm` types hold both an AES-NI and a software schedule
/// (over 1 KiB for AES-256-GCM), and inline they made every session that size.
// The large variant is the hot one on purpose: boxing it would add a pointer chase (and
// likely a cache miss) to every AES-CM packet.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum Transform {
    /// AES-128-CM encryption, HMAC-SHA1 authentication truncated to `tag_len`.
    Cm {
        aes: CmAes,
        hmac: HmacSha1,
        salt: Zeroizing<[u8; 14]>,
        /// Octets of tag (10 or 4): a `u8` so that the variant packs into 256 octets.
        tag_len: u8,
    },
    /// AES-128-GCM.
    Gcm128 {
        aead: Box<Aes128Gcm>,
        salt: Zeroizing<[u8; 12]>,
    },
    /// AES-256-GCM.
    Gcm256 {
        aead: Box<Aes256Gcm>,
        salt: Zeroizing<[u8; 12]>,
    },
}

/// SRTP or SRTCP: which three KDF labels a transform uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layer {
    Rtp,
    Rtcp,
}

impl Transform {
    /// The transform of `layer` keyed by the session keys `kdf` derives.
    pub(crate) fn new(kdf: &Kdf<'_>, layer: Layer) -> Self {
        let suite = kdf.suite();
        let (enc, auth, salt_label) = match layer {
            Layer::Rtp => (
                KdfLabel::RtpEncryption,
                KdfLabel::RtpAuth,
                KdfLabel::RtpSalt,
            ),
            Layer::Rtcp => (
                KdfLabel::RtcpEncryption,
                KdfLabel::RtcpAuth,
                KdfLabel::RtcpSalt,
            ),
        };
        let mut key = Zeroizing::new([0u8; 32]);
        let mut auth_key = Zeroizing::new([0u8; 20]);
        let mut salt = Zeroizing::new([0u8; 14]);
        let key = &mut key[..suite.key_len()];
        let salt = &mut salt[..suite.salt_len()];
        kdf.derive(enc, key);
        kdf.derive(salt_label, salt);
        if !suite.is_aead() {
            kdf.derive(auth, &mut auth_key[..]);
        }
        Self::from_session_keys(suite, layer, key, salt, &auth_key[..])
    }

    /// A transform from session keys (what the KDF produces). Lengths are the suite's;
    /// `auth_key` (20 octets) is ignored by the GCM suites.
    pub(crate) fn from_session_keys(
        suite: SrtpSuite,
        layer: Layer,
        key: &[u8],
        salt: &[u8],
        auth_key: &[u8],
    ) -> Self {
        assert_eq!(key.len(), suite.key_len(), "session key length");
        assert_eq!(salt.len(), suite.salt_len(), "session salt length");
        match suite {
            SrtpSuite::AesCm128HmacSha1_80 | SrtpSuite::AesCm128HmacSha1_32 => {
                assert_eq!(auth_key.len(), 20, "HMAC-SHA1 session key length");
                let mut cm_salt = Zeroizing::new([0u8; 14]);
                cm_salt.copy_from_slice(salt);
                Transform::Cm {
                    aes: CmAes::new(key.try_into().expect("AES-128 key length checked above")),
                    hmac: HmacSha1::new(auth_key),
                    salt: cm_salt,
                    tag_len: match layer {
                        Layer::Rtp => suite.rtp_tag_len(),
                        Layer::Rtcp => suite.rtcp_tag_len(),
                    } as u8,
                }
            }
            SrtpSuite::AeadAes128Gcm | SrtpSuite::AeadAes256Gcm => {
                let mut gcm_salt = Zeroizing::new([0u8; 12]);
                gcm_salt.copy_from_slice(salt);
                if suite == SrtpSuite::AeadAes128Gcm {
                    Transform::Gcm128 {
                        aead: Box::new(Aes128Gcm::new(GenericArray::from_slice(key))),
                        salt: gcm_salt,
                    }
                } else {
                    Transform::Gcm256 {
                        aead: Box::new(Aes256Gcm::new(GenericArray::from_slice(key))),
                        salt: gcm_salt,
                    }
                }
            }
        }
    }

    /// Octets appended to an SRTP packet.
    pub(crate) fn rtp_tag_len(&self) -> usize {
        match self {
            Transform::Cm { tag_len, .. } => usize::from(*tag_len),
            Transform::Gcm128 { .. } | Transform::Gcm256 { .. } => GCM_TAG,
        }
    }

    /// Octets of tag in an SRTCP packet (the 4-octet index word comes on top).
    pub(crate) fn rtcp_tag_len(&self) -> usize {
        self.rtp_tag_len()
    }

    /// Encrypts `buf[header_len..len]` and appends the tag at `len`. The caller checked
    /// that `buf` has room and that `index` is fresh.
    pub(crate) fn protect_rtp(
        &self,
        buf: &mut [u8],
        header_len: usize,
        len: usize,
        ssrc: u32,
        index: u64,
    ) {
        match self {
            Transform::Cm {
                aes,
                hmac,
                salt,
                tag_len,
            } => {
                let tag_len = usize::from(*tag_len);
                let iv = cm_iv(salt, ssrc, index);
                aes.xor(&iv, &mut buf[header_len..len]);
                let roc = ((index >> 16) as u32).to_be_bytes();
                let tag = hmac.mac(&buf[..len], &roc);
                buf[len..len + tag_len].copy_from_slice(&tag[..tag_len]);
            }
            Transform::Gcm128 { aead, salt } => {
                gcm_seal_rtp(&**aead, salt, buf, header_len, len, ssrc, index)
            }
            Transform::Gcm256 { aead, salt } => {
                gcm_seal_rtp(&**aead, salt, buf, header_len, len, ssrc, index)
            }
        }
    }

    /// Verifies the tag at the end of `buf` and decrypts the payload in place; returns
    /// the length without the tag.
    pub(crate) fn unprotect_rtp(
        &self,
        buf: &mut [u8],
        header_len: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<usize, SrtpError> {
        let tag_len = self.rtp_tag_len();
        let end = buf.len() - tag_len;
        match self {
            Transform::Cm {
                aes, hmac, salt, ..
            } => {
                let roc = ((index >> 16) as u32).to_be_bytes();
                let (packet, tag) = buf.split_at_mut(end);
                let expected = hmac.mac(packet, &roc);
                if !bool::from(expected[..tag_len].ct_eq(tag)) {
                    return Err(SrtpError::Auth);
                }
                let iv = cm_iv(salt, ssrc, index);
                aes.xor(&iv, &mut packet[header_len..]);
            }
            Transform::Gcm128 { aead, salt } => {
                gcm_open_rtp(&**aead, salt, buf, header_len, ssrc, index)?
            }
            Transform::Gcm256 { aead, salt } => {
                gcm_open_rtp(&**aead, salt, buf, header_len, ssrc, index)?
            }
        }
        Ok(end)
    }

    /// Encrypts `buf[8..len]`, appends the E flag and `index` and the tag (in the order
    /// the suite puts them); returns the new length.
    pub(crate) fn protect_rtcp(&self, buf: &mut [u8], len: usize, ssrc: u32, index: u32) -> usize {
        let word = (SRTCP_E_FLAG | index).to_be_bytes();
        match self {
            Transform::Cm {
                aes,
                hmac,
                salt,
                tag_len,
            } => {
                let tag_len = usize::from(*tag_len);
                let iv = cm_iv(salt, ssrc, u64::from(index));
                aes.xor(&iv, &mut buf[RTCP_CLEAR_HEADER..len]);
                buf[len..len + 4].copy_from_slice(&word);
                let tag = hmac.mac(&buf[..len + 4], &[]);
                buf[len + 4..len + 4 + tag_len].copy_from_slice(&tag[..tag_len]);
                len + 4 + tag_len
            }
            Transform::Gcm128 { aead, salt } => gcm_seal_rtcp(&**aead, salt, buf, len, ssrc, index),
            Transform::Gcm256 { aead, salt } => gcm_seal_rtcp(&**aead, salt, buf, len, ssrc, index),
        }
    }

    /// Where the SRTCP index word sits in a protected packet of `len` octets.
    pub(crate) fn rtcp_word_at(&self, len: usize) -> usize {
        match self {
            Transform::Cm { tag_len, .. } => len - usize::from(*tag_len) - 4,
            Transform::Gcm128 { .. } | Transform::Gcm256 { .. } => len - 4,
        }
    }

    /// Verifies and (when the E flag is set) decrypts an SRTCP packet in place; returns
    /// the RTCP length.
    pub(crate) fn unprotect_rtcp(
        &self,
        buf: &mut [u8],
        ssrc: u32,
        word: u32,
    ) -> Result<usize, SrtpError> {
        let len = buf.len();
        let encrypted = word & SRTCP_E_FLAG != 0;
        let index = word & !SRTCP_E_FLAG;
        match self {
            Transform::Cm {
                aes,
                hmac,
                salt,
                tag_len,
            } => {
                let tag_len = usize::from(*tag_len);
                let (packet, tag) = buf.split_at_mut(len - tag_len);
                let expected = hmac.mac(packet, &[]);
                if !bool::from(expected[..tag_len].ct_eq(tag)) {
                    return Err(SrtpError::Auth);
                }
                let end = packet.len() - 4;
                if encrypted {
                    let iv = cm_iv(salt, ssrc, u64::from(index));
                    aes.xor(&iv, &mut packet[RTCP_CLEAR_HEADER..end]);
                }
                Ok(end)
            }
            Transform::Gcm128 { aead, salt } => gcm_open_rtcp(&**aead, salt, buf, ssrc, word),
            Transform::Gcm256 { aead, salt } => gcm_open_rtcp(&**aead, salt, buf, ssrc, word),
        }
    }
}

/// RFC 3711 section 4.1.1: `IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16)`.
fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *b ^= s;
    }
    for (b, i) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *b ^= i;
    }
    iv
}

/// RFC 7714 sections 8.1 and 9.1: `salt XOR (00 00 || SSRC || ROC || SEQ)` for SRTP, and
/// `salt XOR (00 00 || SSRC || 00 00 || 0 || SRTCP index)` for SRTCP: both are the
/// 48-bit index in the last six octets.
fn gcm_nonce(
    salt: &[u8; 12],
    ssrc: u32,
    index: u64,
) -> GenericArray<u8, aes_gcm::aead::consts::U12> {
    let mut nonce = GenericArray::default();
    nonce.copy_from_slice(salt);
    for (b, s) in nonce[2..6].iter_mut().zip(ssrc.to_be_bytes()) {
        *b ^= s;
    }
    for (b, i) in nonce[6..12].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *b ^= i;
    }
    nonce
}

fn gcm_seal_rtp<A: AeadInPlace<NonceSize = aes_gcm::aead::consts::U12>>(
    aead: &A,
    salt: &[u8; 12],
    buf: &mut [u8],
    header_len: usize,
    len: usize,
    ssrc: u32,
    index: u64,
) {
    let (header, rest) = buf.split_at_mut(header_len);
    let (payload, tail) = rest.split_at_mut(len - header_len);
    // Cannot fail: an RTP payload is far below GCM's 2^36-byte limit.
    if let Ok(tag) = aead.encrypt_in_place_detached(&gcm_nonce(salt, ssrc, index), header, payload)
    {
        tail[..GCM_TAG].copy_from_slice(&tag);
    }
}

fn gcm_open_rtp<A: AeadInPlace<NonceSize = aes_gcm::aead::consts::U12>>(
    aead: &A,
    salt: &[u8; 12],
    buf: &mut [u8],
    header_len: usize,
    ssrc: u32,
    index: u64,
) -> Result<(), SrtpError> {
    let end = buf.len() - GCM_TAG;
    let (header, rest) = buf.split_at_mut(header_len);
    let (payload, tag) = rest.split_at_mut(end - header_len);
    aead.decrypt_in_place_detached(
        &gcm_nonce(salt, ssrc, index),
        header,
        payload,
        GenericArray::from_slice(tag),
    )
    .map_err(|_| SrtpError::Auth)
}

/// RFC 7714 section 9: the payload after the first 8 octets is encrypted; the 8 octets
/// and the E||index word are the associated data; the tag precedes the word on the wire.
fn gcm_seal_rtcp<A: AeadInPlace<NonceSize = aes_gcm::aead::consts::U12>>(
    aead: &A,
    salt: &[u8; 12],
    buf: &mut [u8],
    len: usize,
    ssrc: u32,
    index: u32,
) -> usize {
    let word = (SRTCP_E_FLAG | index).to_be_bytes();
    let mut aad = [0u8; RTCP_CLEAR_HEADER + 4];
    aad[..RTCP_CLEAR_HEADER].copy_from_slice(&buf[..RTCP_CLEAR_HEADER]);
    aad[RTCP_CLEAR_HEADER..].copy_from_slice(&word);
    let nonce = gcm_nonce(salt, ssrc, u64::from(index));
    // Cannot fail: an RTCP payload is far below GCM's length limit.
    if let Ok(tag) = aead.encrypt_in_place_detached(&nonce, &aad, &mut buf[RTCP_CLEAR_HEADER..len])
    {
        buf[len..len + GCM_TAG].copy_from_slice(&tag);
    }
    buf[len + GCM_TAG..len + GCM_TAG + 4].copy_from_slice(&word);
    len + GCM_TAG + 4
}

fn gcm_open_rtcp<A: AeadInPlace<NonceSize = aes_gcm::aead::consts::U12>>(
    aead: &A,
    salt: &[u8; 12],
    buf: &mut [u8],
    ssrc: u32,
    word: u32,
) -> Result<usize, SrtpError> {
    let len = buf.len();
    let end = len - GCM_TAG - 4;
    let index = word & !SRTCP_E_FLAG;
    let nonce = gcm_nonce(salt, ssrc, u64::from(index));
    let mut tag = [0u8; GCM_TAG];
    tag.copy_from_slice(&buf[end..end + GCM_TAG]);
    if word & SRTCP_E_FLAG != 0 {
        let mut aad = [0u8; RTCP_CLEAR_HEADER + 4];
        aad[..RTCP_CLEAR_HEADER].copy_from_slice(&buf[..RTCP_CLEAR_HEADER]);
        aad[RTCP_CLEAR_HEADER..].copy_from_slice(&word.to_be_bytes());
        aead.decrypt_in_place_detached(
            &nonce,
            &aad,
            &mut buf[RTCP_CLEAR_HEADER..end],
            GenericArray::from_slice(&tag),
        )
        .map_err(|_| SrtpError::Auth)?;
    } else {
        // Authenticated only: the whole packet and the word are the associated data. The
        // word is moved up against the packet for one contiguous slice, and put back if
        // the tag does not verify so the buffer is unchanged on error.
        buf[end..end + 4].copy_from_slice(&word.to_be_bytes());
        let verified = aead.decrypt_in_place_detached(
            &nonce,
            &buf[..end + 4],
            &mut [],
            GenericArray::from_slice(&tag),
        );
        if verified.is_err() {
            buf[end..end + 4].copy_from_slice(&tag[..4]);
            return Err(SrtpError::Auth);
        }
    }
    Ok(end)
}
