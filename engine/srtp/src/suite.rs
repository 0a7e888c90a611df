//! The four crypto suites, with the lengths RFC 4568 (SDES) and RFC 7714 give them.

/// An SRTP crypto suite as named in an SDP `a=crypto` line (RFC 4568, RFC 7714).
///
/// `AES_CM_128_HMAC_SHA1_32` shortens only the SRTP tag: SRTCP keeps the 80-bit tag
/// (RFC 4568 section 6.2.2, RFC 5764 section 4.1.2), which is what libsrtp does too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SrtpSuite {
    /// AES-128 counter mode, HMAC-SHA1 truncated to 80 bits (RFC 3711's default).
    AesCm128HmacSha1_80,
    /// AES-128 counter mode, HMAC-SHA1 truncated to 32 bits on SRTP, 80 on SRTCP.
    AesCm128HmacSha1_32,
    /// AES-128-GCM with a 16-octet tag (RFC 7714).
    AeadAes128Gcm,
    /// AES-256-GCM with a 16-octet tag (RFC 7714).
    AeadAes256Gcm,
}

impl SrtpSuite {
    /// Every suite, in the order an offer usually lists them.
    pub const ALL: [SrtpSuite; 4] = [
        SrtpSuite::AeadAes256Gcm,
        SrtpSuite::AeadAes128Gcm,
        SrtpSuite::AesCm128HmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32,
    ];

    /// The suite an SDES `a=crypto` line names, or `None` for one we do not implement.
    pub fn from_sdes_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.sdes_name() == name)
    }

    /// The name SDES gives the suite (`AES_CM_128_HMAC_SHA1_80`, ...).
    pub const fn sdes_name(self) -> &'static str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            SrtpSuite::AeadAes128Gcm => "AEAD_AES_128_GCM",
            SrtpSuite::AeadAes256Gcm => "AEAD_AES_256_GCM",
        }
    }

    /// The SDES name in lower case, as benchmark ids and metrics labels use it.
    pub const fn id(self) -> &'static str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "aes_cm_128_hmac_sha1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "aes_cm_128_hmac_sha1_32",
            SrtpSuite::AeadAes128Gcm => "aead_aes_128_gcm",
            SrtpSuite::AeadAes256Gcm => "aead_aes_256_gcm",
        }
    }

    /// Master (and session) encryption key length in octets.
    pub const fn key_len(self) -> usize {
        match self {
            SrtpSuite::AeadAes256Gcm => 32,
            _ => 16,
        }
    }

    /// Master (and session) salt length in octets: 112 bits for AES-CM, 96 for GCM.
    pub const fn salt_len(self) -> usize {
        if self.is_aead() { 12 } else { 14 }
    }

    /// `key_len() + salt_len()`: the length of the SDES `inline:` material.
    pub const fn master_len(self) -> usize {
        self.key_len() + self.salt_len()
    }

    /// Authentication tag octets appended to each SRTP packet.
    pub const fn rtp_tag_len(self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => 10,
            SrtpSuite::AesCm128HmacSha1_32 => 4,
            SrtpSuite::AeadAes128Gcm | SrtpSuite::AeadAes256Gcm => 16,
        }
    }

    /// Authentication tag octets appended to each SRTCP packet (after the index word).
    pub const fn rtcp_tag_len(self) -> usize {
        if self.is_aead() { 16 } else { 10 }
    }

    /// Octets `protect_rtp` adds to a packet.
    pub const fn rtp_overhead(self) -> usize {
        self.rtp_tag_len()
    }

    /// Octets `protect_rtcp` adds to a packet: the tag and the 4-octet E flag and index.
    pub const fn rtcp_overhead(self) -> usize {
        self.rtcp_tag_len() + 4
    }

    /// True for the RFC 7714 AEAD suites.
    pub const fn is_aead(self) -> bool {
        matches!(self, SrtpSuite::AeadAes128Gcm | SrtpSuite::AeadAes256Gcm)
    }
}

/// The largest master key plus salt any suite uses (AES-256 key and 96-bit salt).
pub const MAX_MASTER_LEN: usize = 46;

const _: () = {
    let mut i = 0;
    while i < SrtpSuite::ALL.len() {
        assert!(SrtpSuite::ALL[i].master_len() <= MAX_MASTER_LEN);
        i += 1;
    }
};
