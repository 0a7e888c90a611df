//! Typed errors: one for the packet path, one for key material. Neither ever carries or
//! prints key bytes.

use core::fmt;

/// Why a packet was not protected or unprotected. The engine counts drops by
/// [`SrtpError::reason`]. On every error the caller's buffer is left as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SrtpError {
    /// Shorter than the fixed header plus what the suite appends (tag, SRTCP index).
    TooShort,
    /// Not RTP/RTCP version 2, or a CSRC list or header extension runs past the end.
    Malformed,
    /// `protect_*`: the buffer has no room for the tag (a caller's sizing bug).
    BufferTooSmall,
    /// The authentication tag does not verify: forged, corrupted, or another key.
    Auth,
    /// Already received, or older than the replay window.
    Replay,
    /// `protect_*`: this packet index was already protected (or lies below the floor set
    /// with `resume_*`); sending it would reuse keystream.
    IndexReused,
    /// The index space of this key is used up (2^48 SRTP, 2^31 SRTCP packets): re-key.
    IndexExhausted,
    /// `protect_*` on an inbound session or `unprotect_*` on an outbound one.
    WrongDirection,
}

impl SrtpError {
    /// The counter name the engine uses for drops of this kind.
    pub const fn reason(self) -> &'static str {
        match self {
            SrtpError::TooShort => "srtp_too_short",
            SrtpError::Malformed => "srtp_malformed",
            SrtpError::BufferTooSmall => "srtp_buffer_too_small",
            SrtpError::Auth => "srtp_auth",
            SrtpError::Replay => "srtp_replay",
            SrtpError::IndexReused => "srtp_index_reused",
            SrtpError::IndexExhausted => "srtp_index_exhausted",
            SrtpError::WrongDirection => "srtp_wrong_direction",
        }
    }
}

impl fmt::Display for SrtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            SrtpError::TooShort => "packet too short for SRTP",
            SrtpError::Malformed => "malformed RTP/RTCP header",
            SrtpError::BufferTooSmall => "buffer has no room for the SRTP tag",
            SrtpError::Auth => "SRTP authentication failed",
            SrtpError::Replay => "SRTP replay or packet older than the replay window",
            SrtpError::IndexReused => "SRTP packet index already used with this key",
            SrtpError::IndexExhausted => "SRTP index space exhausted; re-key",
            SrtpError::WrongDirection => "SRTP session used in the wrong direction",
        };
        f.write_str(text)
    }
}

impl std::error::Error for SrtpError {}

/// Why key material was refused. Messages describe the shape of the input, never its
/// content, so they are safe to log and to return through the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyError {
    /// The key parameter does not start with `inline:` (RFC 4568 section 6.1).
    NotInline,
    /// The key material is not valid base64.
    Base64,
    /// The decoded key||salt has the wrong length for the suite.
    Length {
        /// Octets the suite needs.
        expected: usize,
        /// Octets the input carried.
        got: usize,
    },
    /// An MKI (`|1:4`) was given; earshot keys one master key per direction, no MKI.
    Mki,
    /// The lifetime field is neither `2^N` nor a decimal count, or exceeds 2^48.
    Lifetime,
    /// Several `inline:` keys in one attribute; earshot takes exactly one.
    MultipleKeys,
    /// The suite name is not one earshot implements.
    UnknownSuite,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NotInline => f.write_str("SDES key parameter must start with \"inline:\""),
            KeyError::Base64 => f.write_str("SDES key material is not valid base64"),
            KeyError::Length { expected, got } => write!(
                f,
                "SDES key material has {got} octets, the suite needs {expected} (key||salt)"
            ),
            KeyError::Mki => f.write_str("SDES keys with an MKI are not supported"),
            KeyError::Lifetime => {
                f.write_str("SDES key lifetime must be 2^N or a decimal count up to 2^48")
            }
            KeyError::MultipleKeys => f.write_str("only one SDES inline key is supported"),
            KeyError::UnknownSuite => f.write_str("unsupported SRTP crypto suite"),
        }
    }
}

impl std::error::Error for KeyError {}
