//! Ethernet / VLAN / IPv4 / IPv6 / UDP in place: parse a received frame into addresses and
//! a payload range, and write the headers of a frame to transmit around a payload that is
//! already in the buffer.
//!
//! No unsafe, no allocation. The parser accepts what the XDP program redirects (one
//! optional 802.1Q/802.1ad tag, IPv4 with options, IPv6 with UDP as the next header) and
//! refuses anything else with a typed [`FrameError`].
//!
//! Checksums: received UDP checksums are NOT validated. On veth (and with many NIC offloads)
//! a frame carries CHECKSUM_PARTIAL, i.e. only the pseudo-header sum, so validating would
//! drop good traffic; the device, not the frame, knows whether the checksum was checked.
//! The IPv4 header checksum is not checked either, for the same reason (some devices leave
//! it to offload). On transmit every checksum is computed in full, because nothing after
//! us (veth peer, NIC without offload configured) will complete it.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::ops::Range;

/// Ethernet header length without a VLAN tag.
pub const ETH_HEADER_LEN: usize = 14;
/// Length of one 802.1Q / 802.1ad tag.
pub const VLAN_TAG_LEN: usize = 4;
/// IPv4 header length without options (we never emit options).
pub const IPV4_HEADER_LEN: usize = 20;
/// IPv6 fixed header length.
pub const IPV6_HEADER_LEN: usize = 40;
/// UDP header length.
pub const UDP_HEADER_LEN: usize = 8;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
/// Default TTL / hop limit of emitted packets (Linux's default too).
pub const DEFAULT_TTL: u8 = 64;

/// Why a frame was not parsed as UDP over IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A header runs past the end of the frame.
    #[error("frame truncated")]
    Truncated,
    /// The ethertype (after an optional VLAN tag) is not IPv4 or IPv6.
    #[error("not IP (ethertype {0:#06x})")]
    NotIp(u16),
    /// The IP payload is not UDP (or IPv6 has extension headers before it).
    #[error("not UDP (IP protocol / next header {0})")]
    NotUdp(u8),
    /// An IPv4 fragment (MF set or non-zero offset): only the kernel reassembles.
    #[error("IPv4 fragment")]
    Fragment,
    /// IP version nibble disagrees with the ethertype, or IHL < 5.
    #[error("malformed IP header")]
    BadIpHeader,
    /// IP total / payload length or UDP length inconsistent with each other or the frame.
    #[error("inconsistent IP/UDP length fields")]
    BadLength,
    /// Source and destination of a frame to build are of different address families.
    #[error("source and destination address families differ")]
    FamilyMismatch,
    /// The IP packet to build would exceed the MTU.
    #[error("packet of {len} bytes exceeds the MTU of {mtu}")]
    ExceedsMtu {
        /// IP packet length (IP header + UDP header + payload) that was asked for.
        len: usize,
        /// The MTU it was checked against.
        mtu: usize,
    },
    /// The buffer cannot hold the headers plus the payload.
    #[error("buffer of {cap} bytes too small for a {len}-byte frame")]
    BufferTooSmall {
        /// Bytes needed.
        len: usize,
        /// Bytes available.
        cap: usize,
    },
}

/// A received UDP datagram, located inside its Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpFrame {
    /// Ethernet source address (the previous hop).
    pub src_mac: [u8; 6],
    /// Ethernet destination address (us, or broadcast/multicast).
    pub dst_mac: [u8; 6],
    /// The VLAN TCI (priority + id) when the frame carried a tag.
    pub vlan_tci: Option<u16>,
    /// IP source and UDP source port.
    pub src: SocketAddr,
    /// IP destination and UDP destination port.
    pub dst: SocketAddr,
    /// Byte range of the UDP payload within the frame (bounded by the UDP length field,
    /// so Ethernet padding is excluded).
    pub payload: Range<usize>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses an Ethernet frame carrying UDP over IPv4 or IPv6.
///
/// Accepts IPv4 options (payload starts at IHL * 4) and one VLAN tag; ignores Ethernet
/// padding; never reads a checksum (see the module doc).
pub fn parse_udp(frame: &[u8]) -> Result<UdpFrame, FrameError> {
    if frame.len() < ETH_HEADER_LEN {
        return Err(FrameError::Truncated);
    }
    let mut dst_mac = [0u8; 6];
    let mut src_mac = [0u8; 6];
    dst_mac.copy_from_slice(&frame[0..6]);
    src_mac.copy_from_slice(&frame[6..12]);
    let mut ethertype = be16(frame, 12);
    let mut l3 = ETH_HEADER_LEN;
    let mut vlan_tci = None;
    if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
        if frame.len() < l3 + VLAN_TAG_LEN {
            return Err(FrameError::Truncated);
        }
        vlan_tci = Some(be16(frame, l3));
        ethertype = be16(frame, l3 + 2);
        l3 += VLAN_TAG_LEN;
    }
    let ip = &frame[l3..];
    let (src_ip, dst_ip, udp_at, ip_end) = match ethertype {
        ETHERTYPE_IPV4 => {
            if ip.len() < IPV4_HEADER_LEN {
                return Err(FrameError::Truncated);
            }
            let ihl_bytes = usize::from(ip[0] & 0x0f) * 4;
            if ip[0] >> 4 != 4 || ihl_bytes < IPV4_HEADER_LEN {
                return Err(FrameError::BadIpHeader);
            }
            if ip[9] != IPPROTO_UDP {
                return Err(FrameError::NotUdp(ip[9]));
            }
            if be16(ip, 6) & 0x3fff != 0 {
                return Err(FrameError::Fragment);
            }
            let total_len = usize::from(be16(ip, 2));
            if ip.len() < ihl_bytes {
                return Err(FrameError::Truncated);
            }
            if total_len < ihl_bytes || total_len > ip.len() {
                return Err(FrameError::BadLength);
            }
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (
                IpAddr::V4(src),
                IpAddr::V4(dst),
                l3 + ihl_bytes,
                l3 + total_len,
            )
        }
        ETHERTYPE_IPV6 => {
            if ip.len() < IPV6_HEADER_LEN {
                return Err(FrameError::Truncated);
            }
            if ip[0] >> 4 != 6 {
                return Err(FrameError::BadIpHeader);
            }
            if ip[6] != IPPROTO_UDP {
                return Err(FrameError::NotUdp(ip[6]));
            }
            let payload_len = usize::from(be16(ip, 4));
            if IPV6_HEADER_LEN + payload_len > ip.len() {
                return Err(FrameError::BadLength);
            }
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&ip[8..24]);
            dst.copy_from_slice(&ip[24..40]);
            let end = l3 + IPV6_HEADER_LEN + payload_len;
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                l3 + IPV6_HEADER_LEN,
                end,
            )
        }
        other => return Err(FrameError::NotIp(other)),
    };
    if ip_end < udp_at + UDP_HEADER_LEN {
        return Err(if frame.len() < udp_at + UDP_HEADER_LEN {
            FrameError::Truncated
        } else {
            FrameError::BadLength
        });
    }
    let udp = &frame[udp_at..];
    let udp_len = usize::from(be16(udp, 4));
    if udp_len < UDP_HEADER_LEN || udp_at + udp_len > ip_end {
        return Err(FrameError::BadLength);
    }
    Ok(UdpFrame {
        src_mac,
        dst_mac,
        vlan_tci,
        src: SocketAddr::new(src_ip, be16(udp, 0)),
        dst: SocketAddr::new(dst_ip, be16(udp, 2)),
        payload: udp_at + UDP_HEADER_LEN..udp_at + udp_len,
    })
}

/// Internet checksum accumulator (RFC 1071): 16-bit big-endian words summed in 32 bits,
/// folded at the end. An odd trailing byte is padded with zero.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checksum {
    sum: u64,
}

impl Checksum {
    /// Adds bytes that start at an even offset of the checksummed data.
    pub fn add_bytes(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(2);
        for pair in &mut chunks {
            self.sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        if let [last] = chunks.remainder() {
            self.sum += u64::from(u16::from_be_bytes([*last, 0]));
        }
    }

    /// Adds one 16-bit word.
    pub fn add_u16(&mut self, word: u16) {
        self.sum += u64::from(word);
    }

    /// The one's complement of the folded sum, as written into a header.
    pub fn finish(self) -> u16 {
        let mut sum = self.sum;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        // The fold leaves at most 16 bits.
        !(sum as u16)
    }
}

/// IPv4 identification source: one per transmitting shard, incremented per packet, so
/// fragments of different datagrams (should anything fragment them later) never share an id.
#[derive(Debug, Clone, Default)]
pub struct Ipv4Ident {
    next: u16,
}

impl Ipv4Ident {
    /// Starts at `seed` (seed from config, so runs are reproducible).
    pub fn new(seed: u16) -> Self {
        Ipv4Ident { next: seed }
    }

    /// The id for the next packet.
    pub fn next_id(&mut self) -> u16 {
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        id
    }
}

/// The headers of one UDP frame to transmit. The payload is written by the caller at
/// `buf[header_len()..]`, then [`UdpHeaders::emit`] writes the headers in front of it and
/// computes every checksum in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpHeaders {
    /// Ethernet source address (our interface).
    pub src_mac: [u8; 6],
    /// Ethernet destination address (next hop).
    pub dst_mac: [u8; 6],
    /// 802.1Q tag to insert, if the interface is a tagged trunk.
    pub vlan_tci: Option<u16>,
    /// Our address and port.
    pub src: SocketAddr,
    /// The remote address and port.
    pub dst: SocketAddr,
    /// IPv4 TTL or IPv6 hop limit; [`DEFAULT_TTL`] unless there is a reason.
    pub ttl: u8,
}

impl UdpHeaders {
    /// Bytes of headers before the payload: Ethernet (+ tag) + IP + UDP.
    pub fn header_len(&self) -> usize {
        self.udp_offset() + UDP_HEADER_LEN
    }

    fn ip_offset(&self) -> usize {
        ETH_HEADER_LEN
            + if self.vlan_tci.is_some() {
                VLAN_TAG_LEN
            } else {
                0
            }
    }

    fn udp_offset(&self) -> usize {
        self.ip_offset()
            + match self.src {
                SocketAddr::V4(_) => IPV4_HEADER_LEN,
                SocketAddr::V6(_) => IPV6_HEADER_LEN,
            }
    }

    /// The headers of the reply to `rx`: addresses, ports and MACs swapped, same VLAN.
    pub fn reply_to(rx: &UdpFrame) -> Self {
        UdpHeaders {
            src_mac: rx.dst_mac,
            dst_mac: rx.src_mac,
            vlan_tci: rx.vlan_tci,
            src: rx.dst,
            dst: rx.src,
            ttl: DEFAULT_TTL,
        }
    }

    /// Writes Ethernet, IP and UDP headers in front of the `payload_len` bytes already at
    /// `buf[header_len()..]` and returns the frame length.
    ///
    /// `mtu` bounds the IP packet (IP + UDP headers + payload), as the interface MTU does.
    /// IPv4 gets DF set (we never want the path to fragment RTP), `ident` as identification
    /// and a header checksum; the UDP checksum is always computed (0 is sent as 0xffff).
    pub fn emit(
        &self,
        buf: &mut [u8],
        payload_len: usize,
        mtu: usize,
        ident: u16,
    ) -> Result<usize, FrameError> {
        let ip_at = self.ip_offset();
        let udp_at = self.udp_offset();
        let frame_len = udp_at + UDP_HEADER_LEN + payload_len;
        let ip_len = frame_len - ip_at;
        if ip_len > mtu {
            return Err(FrameError::ExceedsMtu { len: ip_len, mtu });
        }
        if frame_len > buf.len() {
            return Err(FrameError::BufferTooSmall {
                len: frame_len,
                cap: buf.len(),
            });
        }
        let udp_len = UDP_HEADER_LEN + payload_len;
        // ip_len <= mtu and MTUs are < 64 KiB in practice; refuse rather than truncate.
        let udp_len16 = u16::try_from(udp_len).map_err(|_| FrameError::ExceedsMtu {
            len: ip_len,
            mtu: usize::from(u16::MAX),
        })?;

        buf[0..6].copy_from_slice(&self.dst_mac);
        buf[6..12].copy_from_slice(&self.src_mac);
        let ethertype = match self.src {
            SocketAddr::V4(_) => ETHERTYPE_IPV4,
            SocketAddr::V6(_) => ETHERTYPE_IPV6,
        };
        if let Some(tci) = self.vlan_tci {
            buf[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            buf[14..16].copy_from_slice(&tci.to_be_bytes());
            buf[16..18].copy_from_slice(&ethertype.to_be_bytes());
        } else {
            buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
        }

        let mut udp_sum = Checksum::default();
        match (self.src, self.dst) {
            (SocketAddr::V4(src), SocketAddr::V4(dst)) => {
                let ip = &mut buf[ip_at..udp_at];
                // ip_len < udp_len + 20 and udp_len fits in u16 checked above only for udp;
                // recheck for the IP total length field.
                let total = u16::try_from(ip_len).map_err(|_| FrameError::ExceedsMtu {
                    len: ip_len,
                    mtu: usize::from(u16::MAX),
                })?;
                ip[0] = 0x45;
                ip[1] = 0; // DSCP/ECN: left to the caller's QoS policy, default best effort
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                ip[4..6].copy_from_slice(&ident.to_be_bytes());
                ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF, offset 0
                ip[8] = self.ttl;
                ip[9] = IPPROTO_UDP;
                ip[10..12].copy_from_slice(&[0, 0]);
                ip[12..16].copy_from_slice(&src.ip().octets());
                ip[16..20].copy_from_slice(&dst.ip().octets());
                let mut ip_sum = Checksum::default();
                ip_sum.add_bytes(ip);
                ip[10..12].copy_from_slice(&ip_sum.finish().to_be_bytes());
                udp_sum.add_bytes(&src.ip().octets());
                udp_sum.add_bytes(&dst.ip().octets());
            }
            (SocketAddr::V6(src), SocketAddr::V6(dst)) => {
                let ip = &mut buf[ip_at..udp_at];
                ip[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
                ip[4..6].copy_from_slice(&udp_len16.to_be_bytes());
                ip[6] = IPPROTO_UDP;
                ip[7] = self.ttl;
                ip[8..24].copy_from_slice(&src.ip().octets());
                ip[24..40].copy_from_slice(&dst.ip().octets());
                udp_sum.add_bytes(&src.ip().octets());
                udp_sum.add_bytes(&dst.ip().octets());
            }
            _ => return Err(FrameError::FamilyMismatch),
        }
        // Pseudo-header tail: protocol and UDP length (the same 16-bit sum for v4 and v6).
        udp_sum.add_u16(u16::from(IPPROTO_UDP));
        udp_sum.add_u16(udp_len16);

        let udp = &mut buf[udp_at..frame_len];
        udp[0..2].copy_from_slice(&self.src.port().to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
        udp[4..6].copy_from_slice(&udp_len16.to_be_bytes());
        udp[6..8].copy_from_slice(&[0, 0]);
        udp_sum.add_bytes(udp);
        let sum = match udp_sum.finish() {
            // 0 means "no checksum" in IPv4 and is illegal in IPv6: send its complement twin.
            0 => 0xffff,
            sum => sum,
        };
        udp[6..8].copy_from_slice(&sum.to_be_bytes());
        Ok(frame_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Golden frames whose checksums were computed by an independent implementation
    // (Python's struct.pack plus a textbook RFC 1071 fold), not by this module:
    // IPv4 header 0x1493, UDP 0x143a; IPv6 UDP 0x2e38.
    // 02:00:00:00:00:02 <- 02:00:00:00:00:01, 10.0.0.1:4000 -> 10.0.0.2:5004, ident 0x1234,
    // DF, TTL 64, payload "earshot!".
    const GOLDEN_V4: &str = "020000000002 020000000001 0800
        4500 0024 1234 4000 4011 1493 0a000001 0a000002
        0fa0 138c 0010 143a 6561727368 6f7421";
    // fd00::1:4000 -> fd00::2:5004, hop limit 64, payload "earshot!".
    const GOLDEN_V6: &str = "020000000002 020000000001 86dd
        60000000 0010 11 40 fd000000000000000000000000000001 fd000000000000000000000000000002
        0fa0 138c 0010 2e38 6561727368 6f7421";

    fn v4_headers() -> UdpHeaders {
        UdpHeaders {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            vlan_tci: None,
            src: "10.0.0.1:4000".parse().unwrap(),
            dst: "10.0.0.2:5004".parse().unwrap(),
            ttl: DEFAULT_TTL,
        }
    }

    fn v6_headers() -> UdpHeaders {
        UdpHeaders {
            src: "[fd00::1]:4000".parse().unwrap(),
            dst: "[fd00::2]:5004".parse().unwrap(),
            ..v4_headers()
        }
    }

    fn build(h: &UdpHeaders, payload: &[u8], ident: u16) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let at = h.header_len();
        buf[at..at + payload.len()].copy_from_slice(payload);
        let len = h.emit(&mut buf, payload.len(), 1500, ident).unwrap();
        buf.truncate(len);
        buf
    }

    #[test]
    fn ipv4_header_checksum_matches_the_rfc1071_textbook_example() {
        // The widely published example header whose checksum is 0xb861.
        let mut hdr = hex("4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7");
        let mut sum = Checksum::default();
        sum.add_bytes(&hdr);
        assert_eq!(sum.finish(), 0xb861);
        hdr[10..12].copy_from_slice(&[0xb8, 0x61]);
        let mut verify = Checksum::default();
        verify.add_bytes(&hdr);
        assert_eq!(
            verify.finish(),
            0,
            "a header with its checksum sums to 0xffff"
        );
    }

    #[test]
    fn ipv4_frame_matches_independently_built_golden_bytes() {
        assert_eq!(build(&v4_headers(), b"earshot!", 0x1234), hex(GOLDEN_V4));
    }

    #[test]
    fn ipv6_frame_matches_independently_built_golden_bytes() {
        assert_eq!(build(&v6_headers(), b"earshot!", 0), hex(GOLDEN_V6));
    }

    #[test]
    fn golden_frames_parse_back_to_their_addresses_and_payload() {
        for (golden, h) in [(GOLDEN_V4, v4_headers()), (GOLDEN_V6, v6_headers())] {
            let frame = hex(golden);
            let p = parse_udp(&frame).unwrap();
            assert_eq!((p.src, p.dst), (h.src, h.dst));
            assert_eq!((p.src_mac, p.dst_mac), (h.src_mac, h.dst_mac));
            assert_eq!(&frame[p.payload], b"earshot!");
        }
    }

    #[test]
    fn vlan_tagged_frame_round_trips_with_its_tag() {
        let h = UdpHeaders {
            vlan_tci: Some(0x2064),
            ..v4_headers()
        };
        let frame = build(&h, b"tagged", 7);
        assert_eq!(&frame[12..18], &[0x81, 0x00, 0x20, 0x64, 0x08, 0x00]);
        let p = parse_udp(&frame).unwrap();
        assert_eq!(p.vlan_tci, Some(0x2064));
        assert_eq!(&frame[p.payload], b"tagged");
        // The tag does not change the IP/UDP bytes: same as the untagged golden after it.
        let plain = build(&v4_headers(), b"tagged", 7);
        assert_eq!(&frame[18..], &plain[14..]);
    }

    #[test]
    fn qinq_outer_tag_is_accepted() {
        let mut frame = build(
            &UdpHeaders {
                vlan_tci: Some(5),
                ..v4_headers()
            },
            b"x",
            1,
        );
        frame[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
        assert_eq!(parse_udp(&frame).unwrap().vlan_tci, Some(5));
    }

    #[test]
    fn ipv4_options_move_the_udp_header() {
        let plain = build(&v4_headers(), b"opts", 1);
        // Insert 8 bytes of options (NOPs + EOL) and fix IHL / total length.
        let mut frame = plain[..34].to_vec();
        frame.extend_from_slice(&[1, 1, 1, 1, 1, 1, 1, 0]);
        frame.extend_from_slice(&plain[34..]);
        frame[14] = 0x47;
        let total = be16(&frame, 16) + 8;
        frame[16..18].copy_from_slice(&total.to_be_bytes());
        let p = parse_udp(&frame).unwrap();
        assert_eq!(p.dst, v4_headers().dst);
        assert_eq!(&frame[p.payload], b"opts");
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut frame = build(&v4_headers(), b"ab", 1);
        frame.resize(60, 0xee); // minimum Ethernet frame, padded by the sender's NIC
        let p = parse_udp(&frame).unwrap();
        assert_eq!(&frame[p.payload], b"ab");
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_refused() {
        for golden in [GOLDEN_V4, GOLDEN_V6] {
            let frame = hex(golden);
            for len in 0..frame.len() {
                let err = parse_udp(&frame[..len]).unwrap_err();
                assert!(
                    matches!(err, FrameError::Truncated | FrameError::BadLength),
                    "len {len}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn inconsistent_lengths_are_refused() {
        let good = hex(GOLDEN_V4);
        let mut udp_too_long = good.clone();
        udp_too_long[38..40].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(parse_udp(&udp_too_long), Err(FrameError::BadLength));
        let mut udp_too_short = good.clone();
        udp_too_short[38..40].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(parse_udp(&udp_too_short), Err(FrameError::BadLength));
        let mut ip_too_long = good.clone();
        ip_too_long[16..18].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(parse_udp(&ip_too_long), Err(FrameError::BadLength));
        let mut ihl_too_small = good.clone();
        ihl_too_small[14] = 0x44;
        assert_eq!(parse_udp(&ihl_too_small), Err(FrameError::BadIpHeader));
        let mut wrong_version = good;
        wrong_version[14] = 0x65;
        assert_eq!(parse_udp(&wrong_version), Err(FrameError::BadIpHeader));
    }

    #[test]
    fn fragments_and_other_protocols_are_refused_by_reason() {
        let good = hex(GOLDEN_V4);
        let mut more_fragments = good.clone();
        more_fragments[20] = 0x20; // MF
        assert_eq!(parse_udp(&more_fragments), Err(FrameError::Fragment));
        let mut offset = good.clone();
        offset[20..22].copy_from_slice(&0x0001u16.to_be_bytes());
        assert_eq!(parse_udp(&offset), Err(FrameError::Fragment));
        let mut tcp = good.clone();
        tcp[23] = 6;
        assert_eq!(parse_udp(&tcp), Err(FrameError::NotUdp(6)));
        let mut arp = good;
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse_udp(&arp), Err(FrameError::NotIp(0x0806)));
        let mut hop_by_hop = hex(GOLDEN_V6);
        hop_by_hop[20] = 0;
        assert_eq!(parse_udp(&hop_by_hop), Err(FrameError::NotUdp(0)));
    }

    #[test]
    fn frames_over_the_mtu_are_refused() {
        let h = v4_headers();
        let mut buf = vec![0u8; 4096];
        // 20 + 8 + 1472 = 1500 fits exactly, one more byte does not.
        assert!(h.emit(&mut buf, 1472, 1500, 0).is_ok());
        assert_eq!(
            h.emit(&mut buf, 1473, 1500, 0),
            Err(FrameError::ExceedsMtu {
                len: 1501,
                mtu: 1500
            })
        );
        assert!(matches!(
            h.emit(&mut buf[..100], 200, 1500, 0),
            Err(FrameError::BufferTooSmall { .. })
        ));
        let mixed = UdpHeaders {
            dst: "[fd00::2]:1".parse().unwrap(),
            ..v4_headers()
        };
        assert_eq!(
            mixed.emit(&mut buf, 10, 1500, 0),
            Err(FrameError::FamilyMismatch)
        );
    }

    #[test]
    fn ident_counter_increments_and_wraps() {
        let mut ident = Ipv4Ident::new(u16::MAX);
        assert_eq!(ident.next_id(), u16::MAX);
        assert_eq!(ident.next_id(), 0);
        assert_eq!(ident.next_id(), 1);
    }

    /// Verifies a built frame's checksums by summing each covered region including the
    /// checksum field: a correct checksum makes the sum fold to 0xffff (finish() == 0).
    fn checksums_verify(frame: &[u8]) -> bool {
        let p = parse_udp(frame).unwrap();
        let udp_at = p.payload.start - UDP_HEADER_LEN;
        let udp = &frame[udp_at..p.payload.end];
        let mut sum = Checksum::default();
        match (p.src.ip(), p.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut ip = Checksum::default();
                ip.add_bytes(&frame[udp_at - IPV4_HEADER_LEN..udp_at]);
                if ip.finish() != 0 {
                    return false;
                }
                sum.add_bytes(&s.octets());
                sum.add_bytes(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                sum.add_bytes(&s.octets());
                sum.add_bytes(&d.octets());
            }
            _ => return false,
        }
        sum.add_u16(17);
        sum.add_u16(udp.len() as u16);
        sum.add_bytes(udp);
        sum.finish() == 0
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn built_frames_parse_back_and_their_checksums_verify(
            payload in proptest::collection::vec(any::<u8>(), 0..1400),
            v6 in any::<bool>(),
            vlan in proptest::option::of(any::<u16>()),
            sport in any::<u16>(), dport in any::<u16>(), ident in any::<u16>(),
            a in any::<[u8; 16]>(), b in any::<[u8; 16]>(),
        ) {
            let (src, dst): (IpAddr, IpAddr) = if v6 {
                (Ipv6Addr::from(a).into(), Ipv6Addr::from(b).into())
            } else {
                (Ipv4Addr::new(a[0], a[1], a[2], a[3]).into(),
                 Ipv4Addr::new(b[0], b[1], b[2], b[3]).into())
            };
            let h = UdpHeaders {
                vlan_tci: vlan,
                src: SocketAddr::new(src, sport),
                dst: SocketAddr::new(dst, dport),
                ..v4_headers()
            };
            let frame = build(&h, &payload, ident);
            let p = parse_udp(&frame).unwrap();
            prop_assert_eq!((p.src, p.dst, p.vlan_tci), (h.src, h.dst, h.vlan_tci));
            prop_assert_eq!(&frame[p.payload], &payload[..]);
            prop_assert!(checksums_verify(&frame));
        }

        #[test]
        fn parser_never_panics_and_stays_in_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(p) = parse_udp(&bytes) {
                prop_assert!(p.payload.start <= p.payload.end && p.payload.end <= bytes.len());
            }
        }

        #[test]
        fn parser_survives_corruption_of_a_valid_frame(at in 0usize..50, byte in any::<u8>(), v6 in any::<bool>()) {
            let mut frame = hex(if v6 { GOLDEN_V6 } else { GOLDEN_V4 });
            let at = at % frame.len();
            frame[at] = byte;
            if let Ok(p) = parse_udp(&frame) {
                prop_assert!(p.payload.end <= frame.len());
            }
        }
    }
}
