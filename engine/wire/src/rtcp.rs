//! RTCP (RFC 3550 section 6): compound packets, SR, RR, SDES, BYE and APP.
//!
//! Every RTCP packet starts with the same 32-bit word:
//!
//! ```text
//!  0                   1                   2                   3
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |V=2|P|  count  |      PT       |  length (32-bit words - 1)    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! A datagram carries a compound: packets back to back, iterated by [`packets`]. Only
//! the last may be padded. The RFC 3550 A.2 rule that a compound starts with SR or RR is
//! left to the caller, since reduced-size RTCP (RFC 5506) lifts it.
//!
//! Reprs hold their lists (report blocks, sources, SDES chunks and items) as either the
//! validated wire bytes (after `parse`, zero-copy) or a caller's slice (to `emit`); the
//! two compare equal when they hold the same elements.

use core::fmt;

use earshot_types::{RtpTs, Ssrc};

use crate::error::{Error, Result};

/// Length of the common header word.
pub const HEADER_LEN: usize = 4;
/// Length of one report block.
pub const REPORT_BLOCK_LEN: usize = 24;
/// Length of the SR sender-info section.
pub const SENDER_INFO_LEN: usize = 20;
/// The most items the 5-bit count field can announce (report blocks, sources, chunks).
pub const MAX_COUNT: usize = 31;
/// The largest packet the 16-bit length field can describe, in bytes.
pub const MAX_PACKET_LEN: usize = (u16::MAX as usize + 1) * 4;

fn read_u16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

fn read_u32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

fn write_u32(data: &mut [u8], at: usize, value: u32) {
    data[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// RTCP packet types. Total: any other value is `Unknown`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PacketType {
    /// 200, sender report.
    SenderReport,
    /// 201, receiver report.
    ReceiverReport,
    /// 202, source description.
    SourceDescription,
    /// 203, goodbye.
    Goodbye,
    /// 204, application defined.
    App,
    /// Anything else (e.g. RFC 4585 feedback, 205 and 206).
    Unknown(u8),
}

impl From<u8> for PacketType {
    fn from(value: u8) -> Self {
        match value {
            200 => PacketType::SenderReport,
            201 => PacketType::ReceiverReport,
            202 => PacketType::SourceDescription,
            203 => PacketType::Goodbye,
            204 => PacketType::App,
            other => PacketType::Unknown(other),
        }
    }
}

impl From<PacketType> for u8 {
    fn from(value: PacketType) -> Self {
        match value {
            PacketType::SenderReport => 200,
            PacketType::ReceiverReport => 201,
            PacketType::SourceDescription => 202,
            PacketType::Goodbye => 203,
            PacketType::App => 204,
            PacketType::Unknown(other) => other,
        }
    }
}

/// A zero-copy view of one RTCP packet (not a compound: see [`packets`]).
///
/// The packet occupies the first [`RtcpPacket::total_len`] bytes of the buffer; bytes
/// after that belong to the next packet of a compound. Accessors on an unchecked,
/// malformed buffer may panic; [`RtcpPacket::new_checked`] makes them safe.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RtcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> fmt::Debug for RtcpPacket<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = self.buffer.as_ref();
        let mut s = f.debug_struct("RtcpPacket");
        if data.len() >= HEADER_LEN {
            s.field("packet_type", &self.packet_type())
                .field("count", &self.count());
        }
        s.field("len", &data.len()).finish_non_exhaustive()
    }
}

impl<T: AsRef<[u8]>> RtcpPacket<T> {
    /// Wraps `buffer` without validating it.
    pub const fn new_unchecked(buffer: T) -> Self {
        RtcpPacket { buffer }
    }

    /// Wraps `buffer` after [`RtcpPacket::check_len`] accepted it.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Validates the version, that the declared length fits in the buffer and that any
    /// padding count is a non-zero multiple of 4 that fits in the packet body.
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 2 {
            return Err(Error::BadVersion);
        }
        let total = self.total_len();
        if data.len() < total {
            return Err(Error::Truncated);
        }
        if self.padding_flag() {
            // RFC 3550 6.4.1: the count "will be a multiple of four", which keeps every
            // body a whole number of words (and so re-emittable).
            let pad_len = usize::from(data[total - 1]);
            if pad_len == 0 || !pad_len.is_multiple_of(4) || pad_len > total - HEADER_LEN {
                return Err(Error::BadPadding);
            }
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version field.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 6
    }

    /// The P bit.
    pub fn padding_flag(&self) -> bool {
        self.buffer.as_ref()[0] & 0x20 != 0
    }

    /// The 5-bit count: report count (SR/RR), source count (SDES/BYE), subtype (APP).
    pub fn count(&self) -> u8 {
        self.buffer.as_ref()[0] & 0x1f
    }

    /// The packet type.
    pub fn packet_type(&self) -> PacketType {
        PacketType::from(self.buffer.as_ref()[1])
    }

    /// The raw length field: 32-bit words in the packet, minus one.
    pub fn length_words(&self) -> u16 {
        read_u16(self.buffer.as_ref(), 2)
    }

    /// Bytes in this packet, header and padding included.
    pub fn total_len(&self) -> usize {
        (usize::from(self.length_words()) + 1) * 4
    }

    /// Bytes of padding including the count byte (0 without P).
    pub fn padding_len(&self) -> usize {
        if self.padding_flag() {
            usize::from(self.buffer.as_ref()[self.total_len() - 1])
        } else {
            0
        }
    }

    /// The bytes after the header word and before any padding.
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.total_len() - self.padding_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RtcpPacket<T> {
    /// Writes the header word: version 2, P bit, count, type, length in words minus one.
    /// `total_len` must be a non-zero multiple of 4 no larger than [`MAX_PACKET_LEN`].
    pub fn set_header(
        &mut self,
        padding: bool,
        count: u8,
        packet_type: PacketType,
        total_len: usize,
    ) {
        assert!(
            total_len >= HEADER_LEN && total_len.is_multiple_of(4) && total_len <= MAX_PACKET_LEN,
            "RTCP packet length {total_len} is not a whole number of words"
        );
        debug_assert!(usize::from(count) <= MAX_COUNT);
        let data = self.buffer.as_mut();
        data[0] = 0x80 | (u8::from(padding) << 5) | (count & 0x1f);
        data[1] = u8::from(packet_type);
        // Bounded by MAX_PACKET_LEN just above.
        let words = (total_len / 4 - 1) as u16;
        data[2..4].copy_from_slice(&words.to_be_bytes());
    }

    /// The body, writable (between the header word and any padding).
    pub fn body_mut(&mut self) -> &mut [u8] {
        let end = self.total_len() - self.padding_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// Iterates over the packets of a compound datagram; see [`packets`].
#[derive(Clone, Debug)]
pub struct Packets<'a> {
    rest: &'a [u8],
}

/// The packets of the compound in `datagram`. Each item is a checked view sliced to its
/// own length. A malformed packet yields one error and ends the iteration: the rest of
/// the datagram cannot be framed. Padding on any but the last packet is `BadPadding`.
pub fn packets(datagram: &[u8]) -> Packets<'_> {
    Packets { rest: datagram }
}

impl<'a> Iterator for Packets<'a> {
    type Item = Result<RtcpPacket<&'a [u8]>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = core::mem::take(&mut self.rest);
        let packet = match RtcpPacket::new_checked(rest) {
            Ok(packet) => packet,
            Err(e) => return Some(Err(e)),
        };
        let total = packet.total_len();
        if packet.padding_flag() && total != rest.len() {
            return Some(Err(Error::BadPadding));
        }
        let (this, next) = rest.split_at(total);
        self.rest = next;
        Some(Ok(RtcpPacket::new_unchecked(this)))
    }
}

/// NTP and RTP time of a sender report, and the sender's counters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct SenderInfo {
    /// 64-bit NTP timestamp (see `earshot_types::time::WallClock`).
    pub ntp_ts: u64,
    /// The RTP timestamp corresponding to `ntp_ts`.
    pub rtp_ts: RtpTs,
    /// Packets sent since the start of transmission.
    pub packet_count: u32,
    /// Payload octets sent since the start of transmission.
    pub octet_count: u32,
}

impl SenderInfo {
    fn parse(data: &[u8]) -> SenderInfo {
        SenderInfo {
            ntp_ts: (u64::from(read_u32(data, 0)) << 32) | u64::from(read_u32(data, 4)),
            rtp_ts: RtpTs(read_u32(data, 8)),
            packet_count: read_u32(data, 12),
            octet_count: read_u32(data, 16),
        }
    }

    fn emit(&self, data: &mut [u8]) {
        data[0..8].copy_from_slice(&self.ntp_ts.to_be_bytes());
        write_u32(data, 8, self.rtp_ts.0);
        write_u32(data, 12, self.packet_count);
        write_u32(data, 16, self.octet_count);
    }
}

/// One reception report block (RFC 3550 section 6.4.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: Ssrc,
    /// Fraction of packets lost since the previous report, in 1/256ths.
    pub fraction_lost: u8,
    /// Cumulative packets lost (expected minus received; negative with duplicates).
    /// 24-bit signed on the wire: `emit` clamps to -8_388_608..=8_388_607 as RFC 3550
    /// A.3 prescribes.
    pub cumulative_lost: i32,
    /// Extended highest sequence number received (cycles in the high 16 bits).
    pub ext_highest_seq: u32,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR from this source (0 if none).
    pub lsr: u32,
    /// Delay since that SR, in 1/65536 seconds.
    pub dlsr: u32,
}

impl ReportBlock {
    /// Smallest cumulative loss the 24-bit field holds.
    pub const CUMULATIVE_LOST_MIN: i32 = -(1 << 23);
    /// Largest cumulative loss the 24-bit field holds.
    pub const CUMULATIVE_LOST_MAX: i32 = (1 << 23) - 1;

    fn parse(data: &[u8]) -> ReportBlock {
        // Sign-extend the 24-bit field: place it in the top bytes, shift back down.
        let cumulative_lost = i32::from_be_bytes([data[5], data[6], data[7], 0]) >> 8;
        ReportBlock {
            ssrc: Ssrc(read_u32(data, 0)),
            fraction_lost: data[4],
            cumulative_lost,
            ext_highest_seq: read_u32(data, 8),
            jitter: read_u32(data, 12),
            lsr: read_u32(data, 16),
            dlsr: read_u32(data, 20),
        }
    }

    fn emit(&self, data: &mut [u8]) {
        write_u32(data, 0, self.ssrc.0);
        let lost = self
            .cumulative_lost
            .clamp(Self::CUMULATIVE_LOST_MIN, Self::CUMULATIVE_LOST_MAX);
        let lost = lost.to_be_bytes();
        data[4] = self.fraction_lost;
        data[5..8].copy_from_slice(&lost[1..4]);
        write_u32(data, 8, self.ext_highest_seq);
        write_u32(data, 12, self.jitter);
        write_u32(data, 16, self.lsr);
        write_u32(data, 20, self.dlsr);
    }
}

/// Up to 31 report blocks: validated wire bytes or a caller's slice.
#[derive(Clone, Copy)]
pub struct ReportBlocks<'a>(ReportBlocksInner<'a>);

#[derive(Clone, Copy)]
enum ReportBlocksInner<'a> {
    Wire(&'a [u8]),
    Slice(&'a [ReportBlock]),
}

impl<'a> ReportBlocks<'a> {
    /// No blocks (a sender with nothing received, or a bare RR).
    pub const EMPTY: ReportBlocks<'static> = ReportBlocks(ReportBlocksInner::Slice(&[]));

    /// The blocks in `blocks`, or `Err(Capacity)` past 31.
    pub fn from_slice(blocks: &'a [ReportBlock]) -> Result<Self> {
        if blocks.len() > MAX_COUNT {
            return Err(Error::Capacity);
        }
        Ok(ReportBlocks(ReportBlocksInner::Slice(blocks)))
    }

    /// How many blocks.
    pub fn len(&self) -> usize {
        match self.0 {
            ReportBlocksInner::Wire(bytes) => bytes.len() / REPORT_BLOCK_LEN,
            ReportBlocksInner::Slice(blocks) => blocks.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The blocks, in order.
    pub fn iter(&self) -> impl Iterator<Item = ReportBlock> + 'a {
        let (wire, slice): (&'a [u8], &'a [ReportBlock]) = match self.0 {
            ReportBlocksInner::Wire(bytes) => (bytes, &[]),
            ReportBlocksInner::Slice(blocks) => (&[], blocks),
        };
        wire.chunks_exact(REPORT_BLOCK_LEN)
            .map(ReportBlock::parse)
            .chain(slice.iter().copied())
    }

    fn emit(&self, data: &mut [u8]) {
        for (block, out) in self.iter().zip(data.chunks_exact_mut(REPORT_BLOCK_LEN)) {
            block.emit(out);
        }
    }
}

impl PartialEq for ReportBlocks<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for ReportBlocks<'_> {}

impl fmt::Debug for ReportBlocks<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Sender report: the sender's own counters plus reports on what it receives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SenderReport<'a> {
    /// SSRC of the sender.
    pub ssrc: Ssrc,
    /// NTP/RTP time and counters.
    pub sender_info: SenderInfo,
    /// Reports on sources this sender receives.
    pub reports: ReportBlocks<'a>,
    /// Profile-specific extension words after the report blocks (usually empty).
    pub profile_extension: &'a [u8],
}

/// Receiver report: reports on what a non-sending participant receives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ReceiverReport<'a> {
    /// SSRC of the packet's sender.
    pub ssrc: Ssrc,
    /// Reports on sources it receives.
    pub reports: ReportBlocks<'a>,
    /// Profile-specific extension words after the report blocks (usually empty).
    pub profile_extension: &'a [u8],
}

/// SDES item types (RFC 3550 section 6.5). Total: other values are `Unknown`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SdesItemType {
    /// 1, canonical name: the one item every compound carries.
    Cname,
    /// 2, user name.
    Name,
    /// 3, e-mail address.
    Email,
    /// 4, phone number.
    Phone,
    /// 5, location.
    Loc,
    /// 6, application or tool name.
    Tool,
    /// 7, notice or status.
    Note,
    /// 8, private extension (its value starts with a prefix length and prefix).
    Priv,
    /// Any other non-zero type (0 terminates a chunk and is never an item).
    Unknown(u8),
}

impl From<u8> for SdesItemType {
    fn from(value: u8) -> Self {
        match value {
            1 => SdesItemType::Cname,
            2 => SdesItemType::Name,
            3 => SdesItemType::Email,
            4 => SdesItemType::Phone,
            5 => SdesItemType::Loc,
            6 => SdesItemType::Tool,
            7 => SdesItemType::Note,
            8 => SdesItemType::Priv,
            other => SdesItemType::Unknown(other),
        }
    }
}

impl From<SdesItemType> for u8 {
    fn from(value: SdesItemType) -> Self {
        match value {
            SdesItemType::Cname => 1,
            SdesItemType::Name => 2,
            SdesItemType::Email => 3,
            SdesItemType::Phone => 4,
            SdesItemType::Loc => 5,
            SdesItemType::Tool => 6,
            SdesItemType::Note => 7,
            SdesItemType::Priv => 8,
            SdesItemType::Unknown(other) => other,
        }
    }
}

/// One SDES item. `kind` must not be `Unknown(0)` and `value` at most 255 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SdesItem<'a> {
    /// Item type.
    pub kind: SdesItemType,
    /// Item text (UTF-8 by the RFC, but carried as bytes: we never trust it).
    pub value: &'a [u8],
}

/// The items of one chunk: validated wire bytes or a caller's slice.
#[derive(Clone, Copy)]
pub struct SdesItems<'a>(SdesItemsInner<'a>);

#[derive(Clone, Copy)]
enum SdesItemsInner<'a> {
    Wire(&'a [u8]),
    Slice(&'a [SdesItem<'a>]),
}

impl<'a> SdesItems<'a> {
    /// The items in `items`.
    pub fn from_slice(items: &'a [SdesItem<'a>]) -> Self {
        SdesItems(SdesItemsInner::Slice(items))
    }

    /// The items, in order.
    pub fn iter(&self) -> impl Iterator<Item = SdesItem<'a>> + 'a {
        let (mut wire, slice): (&'a [u8], &'a [SdesItem<'a>]) = match self.0 {
            SdesItemsInner::Wire(bytes) => (bytes, &[]),
            SdesItemsInner::Slice(items) => (&[], items),
        };
        // Wire bytes were validated by `scan_chunk`; `get` keeps this panic-free anyway.
        let from_wire = core::iter::from_fn(move || {
            let (&kind, rest) = wire.split_first()?;
            let (&len, rest) = rest.split_first()?;
            let value = rest.get(..usize::from(len))?;
            wire = &rest[usize::from(len)..];
            Some(SdesItem {
                kind: SdesItemType::from(kind),
                value,
            })
        });
        from_wire.chain(slice.iter().copied())
    }

    /// The CNAME, if the chunk has one.
    pub fn cname(&self) -> Option<&'a [u8]> {
        self.iter()
            .find(|item| item.kind == SdesItemType::Cname)
            .map(|item| item.value)
    }

    /// Bytes the items occupy on the wire, without the terminator and padding.
    fn wire_len(&self) -> usize {
        self.iter().map(|item| 2 + item.value.len()).sum()
    }
}

impl PartialEq for SdesItems<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for SdesItems<'_> {}

impl fmt::Debug for SdesItems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One SDES chunk: a source and its items.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SdesChunk<'a> {
    /// The SSRC or CSRC described.
    pub ssrc: Ssrc,
    /// Its items.
    pub items: SdesItems<'a>,
}

impl SdesChunk<'_> {
    /// Bytes on the wire: SSRC, items, at least one null octet, padded to 32 bits.
    fn wire_len(&self) -> usize {
        (4 + self.items.wire_len() + 1).next_multiple_of(4)
    }
}

/// Walks one chunk at the start of `data`: returns (end of items, end of chunk).
fn scan_chunk(data: &[u8]) -> Result<(usize, usize)> {
    if data.len() < 4 {
        return Err(Error::Truncated);
    }
    let mut pos = 4;
    loop {
        match data.get(pos) {
            None => return Err(Error::BadSdes),
            Some(0) => break,
            Some(_) => {
                let len = *data.get(pos + 1).ok_or(Error::BadSdes)?;
                pos += 2 + usize::from(len);
            }
        }
    }
    let chunk_end = (pos + 1).next_multiple_of(4);
    if chunk_end > data.len() {
        return Err(Error::BadSdes);
    }
    Ok((pos, chunk_end))
}

/// SDES chunks: validated wire bytes or a caller's slice.
#[derive(Clone, Copy)]
pub struct SdesChunks<'a>(SdesChunksInner<'a>);

#[derive(Clone, Copy)]
enum SdesChunksInner<'a> {
    Wire(&'a [u8]),
    Slice(&'a [SdesChunk<'a>]),
}

impl<'a> SdesChunks<'a> {
    /// The chunks in `chunks`, or `Err(Capacity)` past 31.
    pub fn from_slice(chunks: &'a [SdesChunk<'a>]) -> Result<Self> {
        if chunks.len() > MAX_COUNT {
            return Err(Error::Capacity);
        }
        Ok(SdesChunks(SdesChunksInner::Slice(chunks)))
    }

    /// The chunks, in order.
    pub fn iter(&self) -> impl Iterator<Item = SdesChunk<'a>> + 'a {
        let (mut wire, slice): (&'a [u8], &'a [SdesChunk<'a>]) = match self.0 {
            SdesChunksInner::Wire(bytes) => (bytes, &[]),
            SdesChunksInner::Slice(chunks) => (&[], chunks),
        };
        let from_wire = core::iter::from_fn(move || {
            let (items_end, chunk_end) = scan_chunk(wire).ok()?;
            let chunk = SdesChunk {
                ssrc: Ssrc(read_u32(wire, 0)),
                items: SdesItems(SdesItemsInner::Wire(&wire[4..items_end])),
            };
            wire = &wire[chunk_end..];
            Some(chunk)
        });
        from_wire.chain(slice.iter().copied())
    }

    /// How many chunks.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl PartialEq for SdesChunks<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for SdesChunks<'_> {}

impl fmt::Debug for SdesChunks<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Up to 31 sources: validated wire bytes or a caller's slice.
#[derive(Clone, Copy)]
pub struct SsrcList<'a>(SsrcListInner<'a>);

#[derive(Clone, Copy)]
enum SsrcListInner<'a> {
    Wire(&'a [u8]),
    Slice(&'a [Ssrc]),
}

impl<'a> SsrcList<'a> {
    /// The sources in `ssrcs`, or `Err(Capacity)` past 31.
    pub fn from_slice(ssrcs: &'a [Ssrc]) -> Result<Self> {
        if ssrcs.len() > MAX_COUNT {
            return Err(Error::Capacity);
        }
        Ok(SsrcList(SsrcListInner::Slice(ssrcs)))
    }

    /// How many sources.
    pub fn len(&self) -> usize {
        match self.0 {
            SsrcListInner::Wire(bytes) => bytes.len() / 4,
            SsrcListInner::Slice(ssrcs) => ssrcs.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sources, in order.
    pub fn iter(&self) -> impl Iterator<Item = Ssrc> + 'a {
        let (wire, slice): (&'a [u8], &'a [Ssrc]) = match self.0 {
            SsrcListInner::Wire(bytes) => (bytes, &[]),
            SsrcListInner::Slice(ssrcs) => (&[], ssrcs),
        };
        wire.chunks_exact(4)
            .map(|b| Ssrc(read_u32(b, 0)))
            .chain(slice.iter().copied())
    }
}

impl PartialEq for SsrcList<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for SsrcList<'_> {}

impl fmt::Debug for SsrcList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// BYE: sources leaving, with an optional reason (at most 255 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Goodbye<'a> {
    /// The sources leaving.
    pub sources: SsrcList<'a>,
    /// Why, if the sender said.
    pub reason: Option<&'a [u8]>,
}

/// APP: application-defined data.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct App<'a> {
    /// 5-bit subtype, carried in the count field.
    pub subtype: u8,
    /// SSRC of the sender.
    pub ssrc: Ssrc,
    /// Four ASCII characters naming the application.
    pub name: [u8; 4],
    /// Application data; a whole number of 32-bit words.
    pub data: &'a [u8],
}

/// A validated RTCP packet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RtcpRepr<'a> {
    /// SR (200).
    SenderReport(SenderReport<'a>),
    /// RR (201).
    ReceiverReport(ReceiverReport<'a>),
    /// SDES (202).
    SourceDescription(SdesChunks<'a>),
    /// BYE (203).
    Goodbye(Goodbye<'a>),
    /// APP (204).
    App(App<'a>),
    /// Any other type, kept raw so it can be counted or relayed.
    Unknown {
        /// The packet type byte.
        packet_type: u8,
        /// The 5-bit count field.
        count: u8,
        /// The body after the header word, without padding; whole words to emit.
        body: &'a [u8],
    },
}

impl<'a> RtcpRepr<'a> {
    /// Parses one packet. Runs [`RtcpPacket::check_len`] again, so an unchecked view of
    /// arbitrary bytes returns an error rather than panicking.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &RtcpPacket<&'a T>) -> Result<RtcpRepr<'a>> {
        packet.check_len()?;
        let buffer: &'a T = packet.buffer;
        let data: &'a [u8] = buffer.as_ref();
        let body = &data[HEADER_LEN..packet.total_len() - packet.padding_len()];
        let count = usize::from(packet.count());
        match packet.packet_type() {
            PacketType::SenderReport => {
                let reports_end = 4 + SENDER_INFO_LEN + count * REPORT_BLOCK_LEN;
                if body.len() < reports_end {
                    return Err(Error::Truncated);
                }
                Ok(RtcpRepr::SenderReport(SenderReport {
                    ssrc: Ssrc(read_u32(body, 0)),
                    sender_info: SenderInfo::parse(&body[4..4 + SENDER_INFO_LEN]),
                    reports: ReportBlocks(ReportBlocksInner::Wire(
                        &body[4 + SENDER_INFO_LEN..reports_end],
                    )),
                    profile_extension: &body[reports_end..],
                }))
            }
            PacketType::ReceiverReport => {
                let reports_end = 4 + count * REPORT_BLOCK_LEN;
                if body.len() < reports_end {
                    return Err(Error::Truncated);
                }
                Ok(RtcpRepr::ReceiverReport(ReceiverReport {
                    ssrc: Ssrc(read_u32(body, 0)),
                    reports: ReportBlocks(ReportBlocksInner::Wire(&body[4..reports_end])),
                    profile_extension: &body[reports_end..],
                }))
            }
            PacketType::SourceDescription => {
                let mut pos = 0;
                for _ in 0..count {
                    let (_, chunk_end) = scan_chunk(&body[pos..])?;
                    pos += chunk_end;
                }
                if pos != body.len() {
                    return Err(Error::BadLength);
                }
                Ok(RtcpRepr::SourceDescription(SdesChunks(
                    SdesChunksInner::Wire(body),
                )))
            }
            PacketType::Goodbye => {
                let sources_end = 4 * count;
                if body.len() < sources_end {
                    return Err(Error::Truncated);
                }
                let rest = &body[sources_end..];
                let reason = match rest.split_first() {
                    None => None,
                    Some((&len, text)) => {
                        let len = usize::from(len);
                        // The reason is padded to a word boundary, so at most three
                        // bytes may follow it.
                        if text.len() < len || text.len() - len > 3 {
                            return Err(Error::BadLength);
                        }
                        Some(&text[..len])
                    }
                };
                Ok(RtcpRepr::Goodbye(Goodbye {
                    sources: SsrcList(SsrcListInner::Wire(&body[..sources_end])),
                    reason,
                }))
            }
            PacketType::App => {
                if body.len() < 8 {
                    return Err(Error::Truncated);
                }
                let app_data = &body[8..];
                if !app_data.len().is_multiple_of(4) {
                    return Err(Error::BadLength);
                }
                Ok(RtcpRepr::App(App {
                    subtype: packet.count(),
                    ssrc: Ssrc(read_u32(body, 0)),
                    name: [body[4], body[5], body[6], body[7]],
                    data: app_data,
                }))
            }
            PacketType::Unknown(packet_type) => Ok(RtcpRepr::Unknown {
                packet_type,
                count: packet.count(),
                body,
            }),
        }
    }

    /// Bytes this packet occupies on the wire (always whole words; no padding emitted).
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match self {
                RtcpRepr::SenderReport(sr) => {
                    4 + SENDER_INFO_LEN
                        + sr.reports.len() * REPORT_BLOCK_LEN
                        + sr.profile_extension.len()
                }
                RtcpRepr::ReceiverReport(rr) => {
                    4 + rr.reports.len() * REPORT_BLOCK_LEN + rr.profile_extension.len()
                }
                RtcpRepr::SourceDescription(chunks) => {
                    chunks.iter().map(|chunk| chunk.wire_len()).sum()
                }
                RtcpRepr::Goodbye(bye) => {
                    4 * bye.sources.len()
                        + bye.reason.map_or(0, |r| (1 + r.len()).next_multiple_of(4))
                }
                RtcpRepr::App(app) => 8 + app.data.len(),
                RtcpRepr::Unknown { body, .. } => body.len(),
            }
    }

    /// Writes the packet into the first [`RtcpRepr::buffer_len`] bytes of `packet`'s
    /// buffer. Panics (programmer error) if the buffer is short, or a field breaks its
    /// documented bound: extension, APP or unknown bodies not whole words, an SDES item
    /// or BYE reason over 255 bytes, an SDES item of type 0, an APP subtype over 31.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut RtcpPacket<T>) {
        let total = self.buffer_len();
        assert!(
            packet.buffer.as_ref().len() >= total,
            "RTCP emit buffer too short"
        );
        let (count, packet_type) = match self {
            RtcpRepr::SenderReport(sr) => (sr.reports.len(), PacketType::SenderReport),
            RtcpRepr::ReceiverReport(rr) => (rr.reports.len(), PacketType::ReceiverReport),
            RtcpRepr::SourceDescription(chunks) => (chunks.len(), PacketType::SourceDescription),
            RtcpRepr::Goodbye(bye) => (bye.sources.len(), PacketType::Goodbye),
            RtcpRepr::App(app) => (usize::from(app.subtype), PacketType::App),
            RtcpRepr::Unknown {
                packet_type, count, ..
            } => (usize::from(*count), PacketType::from(*packet_type)),
        };
        assert!(count <= MAX_COUNT, "RTCP count {count} exceeds 5 bits");
        // Bounded by MAX_COUNT just above.
        packet.set_header(false, count as u8, packet_type, total);
        let body = &mut packet.buffer.as_mut()[HEADER_LEN..total];
        match self {
            RtcpRepr::SenderReport(sr) => {
                assert!(
                    sr.profile_extension.len().is_multiple_of(4),
                    "SR extension not whole words"
                );
                write_u32(body, 0, sr.ssrc.0);
                sr.sender_info.emit(&mut body[4..4 + SENDER_INFO_LEN]);
                let reports_end = 4 + SENDER_INFO_LEN + sr.reports.len() * REPORT_BLOCK_LEN;
                sr.reports.emit(&mut body[4 + SENDER_INFO_LEN..reports_end]);
                body[reports_end..].copy_from_slice(sr.profile_extension);
            }
            RtcpRepr::ReceiverReport(rr) => {
                assert!(
                    rr.profile_extension.len().is_multiple_of(4),
                    "RR extension not whole words"
                );
                write_u32(body, 0, rr.ssrc.0);
                let reports_end = 4 + rr.reports.len() * REPORT_BLOCK_LEN;
                rr.reports.emit(&mut body[4..reports_end]);
                body[reports_end..].copy_from_slice(rr.profile_extension);
            }
            RtcpRepr::SourceDescription(chunks) => {
                let mut pos = 0;
                for chunk in chunks.iter() {
                    let end = pos + chunk.wire_len();
                    write_u32(body, pos, chunk.ssrc.0);
                    let mut at = pos + 4;
                    for item in chunk.items.iter() {
                        let kind = u8::from(item.kind);
                        assert!(kind != 0, "SDES item type 0 is the chunk terminator");
                        let len = u8::try_from(item.value.len())
                            .expect("SDES item value over 255 bytes is a programmer error");
                        body[at] = kind;
                        body[at + 1] = len;
                        body[at + 2..at + 2 + item.value.len()].copy_from_slice(item.value);
                        at += 2 + item.value.len();
                    }
                    // Terminator and padding to the word boundary are all null octets.
                    body[at..end].fill(0);
                    pos = end;
                }
            }
            RtcpRepr::Goodbye(bye) => {
                for (i, ssrc) in bye.sources.iter().enumerate() {
                    write_u32(body, 4 * i, ssrc.0);
                }
                if let Some(reason) = bye.reason {
                    let at = 4 * bye.sources.len();
                    body[at] = u8::try_from(reason.len())
                        .expect("BYE reason over 255 bytes is a programmer error");
                    body[at + 1..at + 1 + reason.len()].copy_from_slice(reason);
                    body[at + 1 + reason.len()..].fill(0);
                }
            }
            RtcpRepr::App(app) => {
                assert!(app.data.len().is_multiple_of(4), "APP data not whole words");
                write_u32(body, 0, app.ssrc.0);
                body[4..8].copy_from_slice(&app.name);
                body[8..].copy_from_slice(app.data);
            }
            RtcpRepr::Unknown { body: raw, .. } => {
                assert!(raw.len().is_multiple_of(4), "RTCP body not whole words");
                body.copy_from_slice(raw);
            }
        }
    }
}

/// Bytes a compound of `reprs` occupies.
pub fn compound_buffer_len(reprs: &[RtcpRepr<'_>]) -> usize {
    reprs.iter().map(RtcpRepr::buffer_len).sum()
}

/// Writes `reprs` back to back into `buffer` (e.g. SR + SDES CNAME) and returns the
/// bytes written, or `Err(Capacity)` without writing if they do not fit.
pub fn emit_compound(reprs: &[RtcpRepr<'_>], buffer: &mut [u8]) -> Result<usize> {
    let total = compound_buffer_len(reprs);
    if total > buffer.len() {
        return Err(Error::Capacity);
    }
    let mut at = 0;
    for repr in reprs {
        let len = repr.buffer_len();
        repr.emit(&mut RtcpPacket::new_unchecked(&mut buffer[at..at + len]));
        at += len;
    }
    Ok(total)
}
