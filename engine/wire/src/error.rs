//! The one error type of the wire layer.
//!
//! Every variant names what is wrong with the bytes, so the engine can count dropped
//! packets by reason (SPEC section 5) with [`Error::reason`] as the counter label.

use core::fmt;

/// Why a buffer was rejected as an RTP, RTCP or RFC 4733 packet, or why a
/// representation could not be built.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Error {
    /// The buffer ends before the fixed header, or before a length the header declares
    /// (CSRC list, extension words, RTCP length words, SDES item, report blocks).
    Truncated,
    /// The version field is not 2.
    BadVersion,
    /// The padding bit is set but the pad count is zero or larger than the bytes
    /// available, or padding appears on an RTCP packet that is not last in its compound.
    BadPadding,
    /// A length or count field disagrees with the bytes it describes (e.g. an RTCP
    /// report count that leaves bytes over, or a reason length past the packet end).
    BadLength,
    /// An RTP header-extension element runs past the extension block.
    BadExtension,
    /// An SDES chunk is not terminated by a null item and padded to 32 bits.
    BadSdes,
    /// A fixed-capacity list is full (15 CSRCs, 31 report blocks or sources).
    Capacity,
}

impl Error {
    /// A short, stable, snake_case label for drop counters and metrics.
    pub const fn reason(self) -> &'static str {
        match self {
            Error::Truncated => "truncated",
            Error::BadVersion => "bad_version",
            Error::BadPadding => "bad_padding",
            Error::BadLength => "bad_length",
            Error::BadExtension => "bad_extension",
            Error::BadSdes => "bad_sdes",
            Error::Capacity => "capacity",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Error::Truncated => "packet truncated",
            Error::BadVersion => "version is not 2",
            Error::BadPadding => "invalid padding",
            Error::BadLength => "length or count field disagrees with the packet",
            Error::BadExtension => "malformed RTP header extension",
            Error::BadSdes => "malformed SDES chunk",
            Error::Capacity => "fixed-capacity list is full",
        };
        f.write_str(text)
    }
}

impl std::error::Error for Error {}

/// Result of wire-layer operations.
pub type Result<T> = core::result::Result<T, Error>;
