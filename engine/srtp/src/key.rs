//! Master keys: holding them (wiped on drop, never printed), generating them from
//! caller-supplied randomness, and the SDES `inline:` form of RFC 4568 section 6.1.

use core::fmt;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::error::KeyError;
use crate::suite::{MAX_MASTER_LEN, SrtpSuite};

/// Standard alphabet; padding optional on input (some endpoints drop the `==` of a
/// 28-octet AES-128-GCM key), always written on output.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The largest lifetime RFC 3711 allows for SRTP: 2^48 packets.
const MAX_LIFETIME_LOG2: u32 = 48;

/// A suite's master key followed by its master salt (SDES `key||salt`).
///
/// The bytes are wiped when the value is dropped, `Debug` prints `[redacted]`, and no
/// error built from one carries its bytes. Equality is constant-time. Clones are
/// independent copies and are wiped on their own drop.
#[derive(Clone)]
pub struct MasterKey {
    suite: SrtpSuite,
    bytes: [u8; MAX_MASTER_LEN],
}

impl MasterKey {
    /// Key material `key||salt` of exactly `suite.master_len()` octets.
    pub fn new(suite: SrtpSuite, key_and_salt: &[u8]) -> Result<Self, KeyError> {
        if key_and_salt.len() != suite.master_len() {
            return Err(KeyError::Length {
                expected: suite.master_len(),
                got: key_and_salt.len(),
            });
        }
        let mut bytes = [0u8; MAX_MASTER_LEN];
        bytes[..key_and_salt.len()].copy_from_slice(key_and_salt);
        Ok(Self { suite, bytes })
    }

    /// A fresh key: `fill` must write cryptographically secure random bytes into the
    /// whole slice it is given (the engine passes `getrandom::fill`). Randomness is an
    /// input so this crate stays free of I/O and tests stay deterministic.
    pub fn generate(suite: SrtpSuite, fill: impl FnOnce(&mut [u8])) -> Self {
        let mut bytes = [0u8; MAX_MASTER_LEN];
        fill(&mut bytes[..suite.master_len()]);
        Self { suite, bytes }
    }

    /// Parses the key parameter of an SDES `a=crypto` line for `suite`:
    /// `inline:<base64 key||salt>` optionally followed by `|<lifetime>` (`2^31` or a
    /// decimal count). The lifetime is checked for form and otherwise ignored: earshot
    /// never sends beyond the default lifetime (2^48 SRTP, 2^31 SRTCP packets) and
    /// refuses to go past it. An MKI (`|1:4`) or a second key (`;inline:...`) is refused.
    pub fn from_sdes(suite: SrtpSuite, key_param: &str) -> Result<Self, KeyError> {
        let key_param = key_param.trim();
        if key_param.contains(';') {
            return Err(KeyError::MultipleKeys);
        }
        let rest = key_param
            .strip_prefix("inline:")
            .ok_or(KeyError::NotInline)?;
        let mut parts = rest.split('|');
        let material = parts.next().unwrap_or_default();
        for part in parts {
            if part.contains(':') {
                return Err(KeyError::Mki);
            }
            check_lifetime(part)?;
        }
        // Room for any base64 decode estimate of the longest valid input; longer input
        // fails as a length error below rather than overflowing anything.
        let mut decoded = Zeroizing::new([0u8; MAX_MASTER_LEN + 18]);
        let max_encoded = MAX_MASTER_LEN.div_ceil(3) * 4;
        if material.len() > max_encoded {
            return Err(KeyError::Length {
                expected: suite.master_len(),
                got: material.len() / 4 * 3,
            });
        }
        let n = B64
            .decode_slice(material.as_bytes(), &mut decoded[..])
            .map_err(|_| KeyError::Base64)?;
        Self::new(suite, &decoded[..n])
    }

    /// The SDES key parameter `inline:<base64 key||salt>`, for the `a=crypto` line of
    /// an answer. The string is wiped when dropped; do not copy it into logs.
    pub fn to_sdes(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(7 + 64));
        out.push_str("inline:");
        B64.encode_string(self.key_and_salt(), &mut out);
        out
    }

    /// The suite this key is for.
    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    pub(crate) fn key_and_salt(&self) -> &[u8] {
        &self.bytes[..self.suite.master_len()]
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.bytes[..self.suite.key_len()]
    }

    pub(crate) fn salt(&self) -> &[u8] {
        &self.bytes[self.suite.key_len()..self.suite.master_len()]
    }
}

/// `2^N` with N <= 48, or a decimal count in 1..=2^48.
fn check_lifetime(text: &str) -> Result<(), KeyError> {
    let valid = if let Some(exp) = text.strip_prefix("2^") {
        exp.parse::<u32>()
            .is_ok_and(|e| (1..=MAX_LIFETIME_LOG2).contains(&e))
    } else {
        text.parse::<u64>()
            .is_ok_and(|n| (1..=1u64 << MAX_LIFETIME_LOG2).contains(&n))
    };
    if valid {
        Ok(())
    } else {
        Err(KeyError::Lifetime)
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("suite", &self.suite)
            .field("key", &format_args!("[redacted]"))
            .finish()
    }
}

impl PartialEq for MasterKey {
    fn eq(&self, other: &Self) -> bool {
        self.suite == other.suite && bool::from(self.bytes.ct_eq(&other.bytes))
    }
}

impl Eq for MasterKey {}
