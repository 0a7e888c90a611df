//! The shard's view of RTP on the packet path: the few header fields it routes on, read
//! where the datagram lies, and the header it writes for each packet it sends.

use crate::stats::DropReason;

/// Length of the fixed RTP header earshot emits (no CSRCs, no extension).
pub const HEADER_LEN: usize = 12;

/// The routing fields of a received RTP packet, and where its payload is.
#[derive(Clone, Copy, Debug)]
pub struct RtpView {
    /// Payload type.
    pub payload_type: u8,
    /// Marker bit.
    pub marker: bool,
    /// Sequence number.
    pub seq: u16,
    /// Timestamp.
    pub ts: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    payload_start: usize,
    payload_end: usize,
}

impl RtpView {
    /// Validates `packet` with the wire crate's checked view and keeps what routing needs.
    // Always inlined: the view is then built in the caller's registers rather than
    // returned through memory and copied (once per received packet).
    #[inline(always)]
    pub fn parse(packet: &[u8]) -> Result<RtpView, DropReason> {
        // The packet nearly every peer sends: version 2, no padding, no extension, no
        // CSRCs. Nothing in it declares a length, so the only check is the fixed header's
        // (the wire crate's checks come to the same for this first byte); read in place.
        if let Some((fixed, _)) = packet.split_first_chunk::<HEADER_LEN>()
            && fixed[0] == 0x80
        {
            return Ok(RtpView {
                payload_type: fixed[1] & 0x7f,
                marker: fixed[1] & 0x80 != 0,
                seq: u16::from_be_bytes([fixed[2], fixed[3]]),
                ts: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
                ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
                payload_start: HEADER_LEN,
                payload_end: packet.len(),
            });
        }
        Self::parse_checked(packet)
    }

    /// Any other header: the wire crate's checked view.
    #[inline(never)]
    fn parse_checked(packet: &[u8]) -> Result<RtpView, DropReason> {
        use earshot_media::wire::rtp::RtpPacket;
        let p = RtpPacket::new_checked(packet).map_err(|e| drop_reason(&e))?;
        let payload = p.payload();
        // The payload is a subslice of `packet`: its offset is a pointer difference.
        let start = payload.as_ptr() as usize - packet.as_ptr() as usize;
        Ok(RtpView {
            payload_type: p.payload_type().0,
            marker: p.marker(),
            seq: p.seq().0,
            ts: p.ts().0,
            ssrc: p.ssrc().0,
            payload_start: start,
            payload_end: start + payload.len(),
        })
    }

    /// The payload within the packet this view was parsed from.
    pub fn payload<'a>(&self, packet: &'a [u8]) -> &'a [u8] {
        &packet[self.payload_start..self.payload_end]
    }
}

fn drop_reason(e: &earshot_media::wire::Error) -> DropReason {
    use earshot_media::wire::Error;
    match e {
        Error::Truncated => DropReason::Truncated,
        Error::BadVersion => DropReason::BadVersion,
        _ => DropReason::BadHeader,
    }
}

/// RFC 5761 section 4: with rtcp-mux, a second byte of 192..=223 is RTCP.
pub fn looks_like_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 2 && (192..=223).contains(&packet[1])
}

/// Whether `packet` is a well-formed RTCP compound packet.
pub fn rtcp_is_valid(packet: &[u8]) -> bool {
    let mut n = 0;
    for p in earshot_media::wire::rtcp::packets(packet) {
        if p.is_err() {
            return false;
        }
        n += 1;
    }
    n > 0
}

/// Writes a 12-byte RTP header at the start of `buf`; returns its length.
#[inline]
pub fn write_header(buf: &mut [u8], pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32) -> usize {
    // One bounds check for the whole header (a transmit buffer always holds it).
    let h: &mut [u8; HEADER_LEN] = buf
        .first_chunk_mut()
        .expect("a transmit buffer holds an RTP header");
    h[0] = 0x80;
    h[1] = (u8::from(marker) << 7) | (pt & 0x7f);
    h[2..4].copy_from_slice(&seq.to_be_bytes());
    h[4..8].copy_from_slice(&ts.to_be_bytes());
    h[8..12].copy_from_slice(&ssrc.to_be_bytes());
    HEADER_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path for a plain header and the wire crate's checked view agree on every
    /// field, and on every first byte and length the fast path could misjudge.
    #[test]
    fn the_plain_header_fast_path_matches_the_checked_view() {
        let mut packet = [0u8; 40];
        for (i, b) in packet.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        for first in 0..=255u8 {
            for mpt in [0x00, 0x80, 0x7f, 0xff, 0x12] {
                for len in [0, 1, 11, 12, 13, 16, 40] {
                    packet[0] = first;
                    packet[1] = mpt;
                    let p = &packet[..len];
                    let fast = RtpView::parse(p);
                    let checked = RtpView::parse_checked(p);
                    match (fast, checked) {
                        (Ok(a), Ok(b)) => {
                            assert_eq!(
                                (a.payload_type, a.marker, a.seq, a.ts, a.ssrc),
                                (b.payload_type, b.marker, b.seq, b.ts, b.ssrc)
                            );
                            assert_eq!(a.payload(p), b.payload(p), "first {first:#x} len {len}");
                        }
                        (Err(a), Err(b)) => assert_eq!(a, b, "first {first:#x} len {len}"),
                        (a, b) => panic!("first {first:#x} len {len}: {a:?} vs {b:?}"),
                    }
                }
            }
        }
    }
}
