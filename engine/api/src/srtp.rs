//! SRTP of a leg (`MediaConfig::srtp`): the suite and the two SDES master keys.
//!
//! One form from the API edge to the shard: the control side parses the `a=crypto`
//! material once with [`SrtpMedia::from_sdes`] (the one parser, naming the field of any
//! refusal), keeps the typed value, persists it, and sends it to the engine, which
//! parses it again with the same function when it crosses the Unix socket.
//!
//! Secrecy: the keys are [`MasterKey`]s, which print `[redacted]` in `Debug`, have no
//! `Display`, compare in constant time and are wiped when dropped. They leave memory in
//! clear only where they must: serialised (SDES `inline:` form) into the engine
//! programming socket (a private, 0600 Unix socket) and into the control side's store
//! (a 0600 file), and the local key in the response to the orchestrator that asked for
//! the leg (it needs it for its SDP answer). Error messages describe the shape of a
//! refused key, never its content.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

pub use earshot_srtp::{KeyError, MasterKey, SrtpSuite};

use crate::MediaError;

/// The SDES suite names the engine implements, for messages.
pub const SRTP_SUITE_NAMES: &str =
    "AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM or AEAD_AES_256_GCM";

/// The SRTP keys of one leg (SDES, RFC 4568), both of one suite. Boxed: a plain leg's
/// [`crate::MediaConfig`] (and every message holding one) stays small.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpMedia {
    keys: Box<Keys>,
}

#[derive(Clone, PartialEq, Eq)]
struct Keys {
    remote_key: MasterKey,
    local_key: MasterKey,
}

impl SrtpMedia {
    /// Both keys must be of the same suite (the one the SDP answer chose).
    pub fn new(remote_key: MasterKey, local_key: MasterKey) -> Result<SrtpMedia, MediaError> {
        if remote_key.suite() != local_key.suite() {
            return Err(MediaError {
                field: "srtp.local_key",
                message: format!(
                    "the local key is for {}, the remote key for {}: one suite per leg",
                    local_key.suite().sdes_name(),
                    remote_key.suite().sdes_name()
                ),
            });
        }
        Ok(SrtpMedia {
            keys: Box::new(Keys {
                remote_key,
                local_key,
            }),
        })
    }

    /// Parses the suite name (`AES_CM_128_HMAC_SHA1_80`, as in SDP) and the key
    /// parameters of the remote's and our `a=crypto` lines (`inline:<base64
    /// key||salt>`, optionally `|<lifetime>`). Refusals name the field (`srtp.suite`,
    /// `srtp.remote_key`, `srtp.local_key`) and never quote key material.
    pub fn from_sdes(
        suite: &str,
        remote_key: &str,
        local_key: &str,
    ) -> Result<SrtpMedia, MediaError> {
        let suite = parse_suite(suite)?;
        let remote_key = parse_key(suite, "srtp.remote_key", remote_key)?;
        let local_key = parse_key(suite, "srtp.local_key", local_key)?;
        SrtpMedia::new(remote_key, local_key)
    }

    /// The suite of both keys.
    pub fn suite(&self) -> SrtpSuite {
        self.keys.remote_key.suite()
    }

    /// What the remote encrypts with: the engine unprotects what it receives with it.
    pub fn remote_key(&self) -> &MasterKey {
        &self.keys.remote_key
    }

    /// What the engine encrypts with: the key of our `a=crypto` line.
    pub fn local_key(&self) -> &MasterKey {
        &self.keys.local_key
    }
}

/// The suite named `name` in SDP, or a refusal naming `srtp.suite`.
pub fn parse_suite(name: &str) -> Result<SrtpSuite, MediaError> {
    SrtpSuite::from_sdes_name(name.trim()).ok_or_else(|| MediaError {
        field: "srtp.suite",
        // The name is not quoted: a client that pasted key material into the wrong
        // field must not see it echoed into logs and error trackers.
        message: format!("the suite is not one of {SRTP_SUITE_NAMES}"),
    })
}

/// An SDES key parameter of `suite`, or a refusal naming `field` that describes the
/// input's shape only.
pub fn parse_key(
    suite: SrtpSuite,
    field: &'static str,
    text: &str,
) -> Result<MasterKey, MediaError> {
    MasterKey::from_sdes(suite, text).map_err(|e| MediaError {
        field,
        message: format!("{e} ({})", suite.sdes_name()),
    })
}

impl fmt::Debug for SrtpMedia {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpMedia")
            .field("suite", &self.suite().sdes_name())
            .field("keys", &format_args!("[redacted]"))
            .finish()
    }
}

/// The serialised form: SDP names and SDES key parameters.
#[derive(Serialize, Deserialize)]
struct Wire {
    suite: String,
    remote_key: String,
    local_key: String,
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.remote_key.zeroize();
        self.local_key.zeroize();
    }
}

impl Serialize for SrtpMedia {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let wire = Wire {
            suite: self.suite().sdes_name().to_owned(),
            remote_key: self.keys.remote_key.to_sdes().as_str().to_owned(),
            local_key: self.keys.local_key.to_sdes().as_str().to_owned(),
        };
        wire.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SrtpMedia {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(d)?;
        SrtpMedia::from_sdes(&wire.suite, &wire.remote_key, &wire.local_key)
            .map_err(|e| D::Error::custom(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_80: &str = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
    const KEY_80_B: &str = "inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj";

    #[test]
    fn sdes_material_parses_and_survives_serialisation_without_printing_keys() {
        let m = SrtpMedia::from_sdes("AES_CM_128_HMAC_SHA1_80", KEY_80, KEY_80_B).unwrap();
        assert_eq!(m.suite(), SrtpSuite::AesCm128HmacSha1_80);
        assert_eq!(m.remote_key().to_sdes().as_str(), KEY_80);
        assert_eq!(m.local_key().to_sdes().as_str(), KEY_80_B);
        let json = serde_json::to_string(&m).unwrap();
        let back: SrtpMedia = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        let debug = format!("{m:?}");
        assert!(
            !debug.contains("WVNf") && !debug.contains("d0Rm"),
            "{debug}"
        );
        assert!(debug.contains("redacted"), "{debug}");
    }

    #[test]
    fn refusals_name_the_field_and_never_quote_the_material() {
        let err = SrtpMedia::from_sdes("AES_CM_128_NOPE", KEY_80, KEY_80_B).unwrap_err();
        assert_eq!(err.field, "srtp.suite");
        let err =
            SrtpMedia::from_sdes("AES_CM_128_HMAC_SHA1_80", "WVNfX19zZW1j", KEY_80_B).unwrap_err();
        assert_eq!(err.field, "srtp.remote_key");
        assert!(!err.message.contains("WVNf"), "{}", err.message);
        let short = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7";
        let err = SrtpMedia::from_sdes("AES_CM_128_HMAC_SHA1_80", KEY_80, short).unwrap_err();
        assert_eq!(err.field, "srtp.local_key");
        assert!(!err.message.contains("WVNf"), "{}", err.message);
        // A key of the wrong length for the suite (AES-256-GCM needs 44 octets).
        let err = SrtpMedia::from_sdes("AEAD_AES_256_GCM", KEY_80, KEY_80_B).unwrap_err();
        assert_eq!(err.field, "srtp.remote_key");
        let mut bad = serde_json::to_value(
            SrtpMedia::from_sdes("AES_CM_128_HMAC_SHA1_80", KEY_80, KEY_80_B).unwrap(),
        )
        .unwrap();
        bad["local_key"] = "inline:@@@@".into();
        let err = serde_json::from_value::<SrtpMedia>(bad).unwrap_err();
        assert!(err.to_string().contains("srtp.local_key"), "{err}");
    }

    #[test]
    fn keys_of_two_suites_are_refused() {
        let remote = MasterKey::generate(SrtpSuite::AeadAes128Gcm, |b| b.fill(1));
        let local = MasterKey::generate(SrtpSuite::AesCm128HmacSha1_80, |b| b.fill(2));
        assert_eq!(
            SrtpMedia::new(remote, local).unwrap_err().field,
            "srtp.local_key"
        );
    }
}
