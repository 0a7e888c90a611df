//! # earshot-wire: RTP, RTCP and RFC 4733 on the wire
//!
//! The byte-level layer of the media engine. For each format it offers a zero-copy view
//! over a buffer (`RtpPacket<T: AsRef<[u8]>>`, `RtcpPacket`, `DtmfPacket`) whose
//! `new_checked` validates every length the header declares, field accessors, and
//! setters when the buffer is writable, so the forwarding path can re-stamp sequence
//! number, timestamp, SSRC, marker and payload type in place. Beside each view sits a
//! validated `Repr` (`RtpRepr`, `RtcpRepr`, `DtmfRepr`) with `parse(&view)`,
//! `buffer_len()` and `emit(&mut view)`, in the manner of smoltcp's `wire` module. The
//! [`seq`] module keeps the per-source receive statistics of RFC 3550 appendix A
//! (sequence validation, loss, interarrival jitter) that RTCP reports carry, and
//! [`report`] builds a leg's periodic report from them.
//!
//! What it deliberately does not do: no I/O, no clock (arrival times are arguments), no
//! allocation (reprs borrow the packet bytes or the caller's slices; CSRCs live in an
//! inline array), no payload decoding (G.711 lives in `earshot-dsp`), no SRTP, no
//! session logic (which SSRC is latched, which payload type is DTMF: the media crate
//! decides).
//!
//! Contract:
//! 1. No input from the network panics. `new_checked`, every `parse` and every iterator
//!    (RTCP compound packets, RFC 8285 extension elements, SDES items) return an
//!    [`Error`] naming the reason instead; the engine counts drops by
//!    [`Error::reason`]. Property tests feed them arbitrary bytes.
//! 2. `parse(emit(repr)) == repr` for every repr within its documented field bounds.
//! 3. `emit` panics only on programmer errors (buffer shorter than `buffer_len()`, a
//!    field beyond its wire width), never on data that came from the network.
//! 4. On-wire enums are total: unknown values are kept in an `Unknown`/`Other` arm.
#![forbid(unsafe_code)]

pub mod dtmf;
mod error;
pub mod report;
pub mod rtcp;
pub mod rtp;
pub mod seq;

pub use error::{Error, Result};

/// RFC 5761 demultiplexing for rtcp-mux: true when `datagram` is RTCP rather than RTP.
///
/// RTCP packet types 192..=223 sit where an RTP second byte would carry the marker bit
/// and payload types 64..=95, which RFC 5761 forbids RTP from using on a muxed port.
pub fn is_rtcp(datagram: &[u8]) -> bool {
    matches!(datagram.get(1), Some(192..=223))
}
