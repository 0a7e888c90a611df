//! # earshot-srtp: SRTP and SRTCP for the data plane
//!
//! Secure RTP (RFC 3711) and its AES-GCM suites (RFC 7714) for one leg at a time:
//! `AES_CM_128_HMAC_SHA1_80`, `AES_CM_128_HMAC_SHA1_32`, `AEAD_AES_128_GCM` and
//! `AEAD_AES_256_GCM`, keyed by SDES (RFC 4568) master keys. An [`SrtpSession`] is one
//! direction of one leg: an inbound session unprotects what the remote sent with the
//! remote's key, an outbound session protects what we send with ours. Each transform
//! works in place on the caller's datagram buffer: encrypting and appending the tag, or
//! verifying, decrypting and cutting it off.
//!
//! What it deliberately does not do: no I/O, no clock, no randomness of its own (a new
//! key's bytes come from the caller: [`MasterKey::generate`]), no allocation after
//! [`SrtpSession::new`], no MKI, no key lifetimes other than the default (2^48 SRTP and
//! 2^31 SRTCP packets, after which it refuses to protect), no key derivation rate other
//! than 0, no encrypted header extensions (RFC 6904), no DTLS-SRTP (the keys come
//! through the API), no SDP parsing beyond the `inline:` key parameter.
//!
//! Contract:
//! 1. Nothing from the network panics. Every malformed, truncated, forged or replayed
//!    packet returns an [`SrtpError`] whose [`SrtpError::reason`] the engine counts
//!    (`srtp_auth`, `srtp_replay`, ...), and the buffer is then left exactly as it was,
//!    so the caller can try another session (the previous key during a re-key).
//! 2. Per-SSRC state (rollover counter, replay window) changes only after a packet has
//!    authenticated (inbound) or has been protected (outbound): forged packets cannot
//!    move it. A packet index is never protected twice with one key.
//! 3. Key material never leaves through `Debug`, `Display` or an error, and is wiped
//!    when dropped: [`MasterKey`], the derived session keys, the HMAC pad states and the
//!    expanded AES key schedules.
//! 4. Crypto primitives are RustCrypto's `aes` (AES-NI / ARMv8 AES picked at run time)
//!    and `aes-gcm` (with CLMUL/PMULL GHASH), and `sha1`'s compression function (SHA-NI
//!    / ARMv8 SHA picked at run time) under our own HMAC with precomputed pad states.
//!    `docs/srtp.md` gives the measurements behind this choice.
//!
//! Driving it (the shard, per datagram):
//! 1. Inbound: `session.unprotect_rtp(&mut buf[..n])` (or `unprotect_rtcp` when RFC 5761
//!    demultiplexing says RTCP); on `Ok(len)` parse `buf[..len]` as RTP; on `Err(e)` count
//!    `e.reason()` and drop.
//! 2. Outbound: write the RTP packet into a buffer with `suite.rtp_overhead()` octets
//!    spare, then `session.protect_rtp(&mut buf, len)` and send `buf[..returned]`.
//! 3. Re-key: see [`SrtpSession::rekeyed`] and `docs/srtp.md` ("Re-keying a live leg").
#![deny(unsafe_code)]

mod error;
mod key;
#[allow(unsafe_code)]
mod ni;
pub mod primitives;
#[cfg(feature = "reference")]
pub mod reference;
mod replay;
mod session;
mod suite;
mod transform;

pub use earshot_types::Ssrc;
pub use error::{KeyError, SrtpError};
pub use key::MasterKey;
pub use replay::{MAX_REPLAY_WINDOW, MIN_REPLAY_WINDOW};
pub use session::{Direction, SessionKeys, SrtpConfig, SrtpSession};
pub use suite::{MAX_MASTER_LEN, SrtpSuite};
