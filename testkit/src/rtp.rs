//! RTP for tests: one header writer and one parser, both through `earshot-wire`.
//!
//! [`RtpHeader::write`] fills the 12-byte fixed header of a buffer in place (the shard
//! rig rewrites it per packet, so it must not allocate); [`RtpHeader::packet`] builds a
//! whole datagram. [`Rtp::parse`] turns a received datagram into plain fields with the
//! wire crate's checked view, so a malformed datagram is `None`, never a panic.
//! [`RtpSender`] is the state of one outgoing stream (SSRC, sequence, timestamp).

use earshot_types::{PayloadType, RtpTs, SeqNo, Ssrc};
use earshot_wire::rtp::{RtpPacket, RtpRepr};

pub use earshot_wire::is_rtcp;

/// Length of the RTP fixed header (no CSRCs, no extension).
pub const HEADER_LEN: usize = 12;

/// The fields of an RTP fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    /// Version: 2 on the wire; tests write 1 to build a bad packet.
    pub version: u8,
    /// The M bit.
    pub marker: bool,
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Sequence number.
    pub seq: u16,
    /// Timestamp.
    pub ts: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

impl RtpHeader {
    /// A version-2 header of payload type `payload_type`, no marker.
    pub const fn new(payload_type: u8, seq: u16, ts: u32, ssrc: u32) -> RtpHeader {
        RtpHeader {
            version: 2,
            marker: false,
            payload_type,
            seq,
            ts,
            ssrc,
        }
    }

    /// A PCMU (payload type 0) header.
    pub const fn pcmu(seq: u16, ts: u32, ssrc: u32) -> RtpHeader {
        RtpHeader::new(0, seq, ts, ssrc)
    }

    /// The same header with the marker bit set to `marker`.
    pub const fn with_marker(self, marker: bool) -> RtpHeader {
        RtpHeader { marker, ..self }
    }

    /// The same header with version `version` (to build a malformed packet).
    pub const fn with_version(self, version: u8) -> RtpHeader {
        RtpHeader { version, ..self }
    }

    /// The header's [`HEADER_LEN`] bytes (no padding, no extension, no CSRCs).
    #[inline]
    pub fn bytes(&self) -> [u8; HEADER_LEN] {
        // Built in a zeroed local array: P, X and CC stay 0, and the compiler turns the
        // setters into plain stores (the shard rig writes a header per packet it feeds).
        let mut h = [0u8; HEADER_LEN];
        let mut p = RtpPacket::new_unchecked(&mut h[..]);
        p.set_version(self.version);
        p.set_marker(self.marker);
        p.set_payload_type(PayloadType(self.payload_type & 0x7f));
        p.set_seq(SeqNo(self.seq));
        p.set_ts(RtpTs(self.ts));
        p.set_ssrc(Ssrc(self.ssrc));
        h
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`, whatever they
    /// held before.
    #[inline]
    pub fn write(&self, buf: &mut [u8]) {
        buf[..HEADER_LEN].copy_from_slice(&self.bytes());
    }

    /// A datagram: this header, then `payload`.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN + payload.len()];
        self.write(&mut p);
        p[HEADER_LEN..].copy_from_slice(payload);
        p
    }
}

/// A received RTP packet as plain fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rtp {
    /// SSRC.
    pub ssrc: u32,
    /// Sequence number.
    pub seq: u16,
    /// Timestamp.
    pub ts: u32,
    /// Marker bit.
    pub marker: bool,
    /// Payload type.
    pub payload_type: u8,
    /// Payload bytes (padding removed).
    pub payload: Vec<u8>,
}

impl Rtp {
    /// Parses `datagram` as RTP; `None` for RTCP (RFC 5761 demultiplexing) and for
    /// anything the wire crate's checked view refuses.
    pub fn parse(datagram: &[u8]) -> Option<Rtp> {
        if is_rtcp(datagram) {
            return None;
        }
        let view = RtpPacket::new_checked(datagram).ok()?;
        let repr = RtpRepr::parse(&view).ok()?;
        Some(Rtp {
            ssrc: repr.ssrc.0,
            seq: repr.seq.0,
            ts: repr.ts.0,
            marker: repr.marker,
            payload_type: repr.payload_type.0,
            payload: repr.payload.to_vec(),
        })
    }
}

/// One outgoing RTP stream: each packet takes the next sequence number and advances the
/// timestamp by its frame's samples; the first carries the marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpSender {
    /// Payload type of the audio.
    pub payload_type: u8,
    /// SSRC.
    pub ssrc: u32,
    /// Sequence number of the next packet.
    pub seq: u16,
    /// Timestamp of the next packet.
    pub ts: u32,
    /// Packets sent so far.
    pub sent: u64,
}

impl RtpSender {
    /// A stream starting at `seq` and `ts`.
    pub const fn new(payload_type: u8, ssrc: u32, seq: u16, ts: u32) -> RtpSender {
        RtpSender {
            payload_type,
            ssrc,
            seq,
            ts,
            sent: 0,
        }
    }

    /// The next packet, carrying `payload` of `samples` samples.
    pub fn next_packet(&mut self, payload: &[u8], samples: u32) -> Vec<u8> {
        let header = RtpHeader::new(self.payload_type, self.seq, self.ts, self.ssrc)
            .with_marker(self.sent == 0);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(samples);
        self.sent += 1;
        header.packet(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_overwrites_every_header_bit_and_the_parser_reads_them_back() {
        let h = RtpHeader::new(8, 0xfffe, 0x1234_5678, 0xdead_beef).with_marker(true);
        let mut buf = vec![0xffu8; HEADER_LEN + 3];
        h.write(&mut buf);
        buf[HEADER_LEN..].copy_from_slice(&[1, 2, 3]);
        assert_eq!(
            &buf[..HEADER_LEN],
            &[
                0x80, 0x88, 0xff, 0xfe, 0x12, 0x34, 0x56, 0x78, 0xde, 0xad, 0xbe, 0xef
            ]
        );
        assert_eq!(buf, h.packet(&[1, 2, 3]));
        let r = Rtp::parse(&buf).expect("valid RTP");
        assert_eq!(
            (r.ssrc, r.seq, r.ts, r.marker, r.payload_type),
            (0xdead_beef, 0xfffe, 0x1234_5678, true, 8)
        );
        assert_eq!(r.payload, vec![1, 2, 3]);
    }

    #[test]
    fn malformed_and_rtcp_datagrams_do_not_parse() {
        let v1 = RtpHeader::pcmu(1, 1, 1).with_version(1).packet(&[0; 4]);
        assert_eq!(v1[0] >> 6, 1);
        assert_eq!(Rtp::parse(&v1), None);
        assert_eq!(Rtp::parse(&[0x80, 0, 0]), None);
        // An RTCP receiver report header (PT 201).
        assert_eq!(Rtp::parse(&[0x80, 201, 0, 1, 0, 0, 0, 1]), None);
    }

    #[test]
    fn a_sender_numbers_its_packets() {
        let mut s = RtpSender::new(0, 7, u16::MAX, 100);
        let a = Rtp::parse(&s.next_packet(&[0; 160], 160)).unwrap();
        let b = Rtp::parse(&s.next_packet(&[0; 160], 160)).unwrap();
        assert!(a.marker && !b.marker);
        assert_eq!((a.seq, b.seq), (u16::MAX, 0));
        assert_eq!((a.ts, b.ts), (100, 260));
        assert_eq!(s.sent, 2);
    }
}
