//! RTP data packets (RFC 3550 section 5.1) and their header extensions (RFC 8285).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |V=2|P|X|  CC   |M|     PT      |       sequence number         |
//! |                           timestamp                           |
//! |                             SSRC                              |
//! |                     CSRC list (CC x 32 bits)                  |
//! |   profile (0xBEDE / 0x100X)   |   extension length (words)    |  if X
//! |                     extension data ...                        |  if X
//! |                     payload ...               | padding | cnt |  cnt if P
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use core::fmt;
use core::ops::Range;

use earshot_types::{PayloadType, RtpTs, SeqNo, Ssrc};

use crate::error::{Error, Result};

/// Length of the fixed RTP header, before CSRCs and extension.
pub const HEADER_LEN: usize = 12;
/// The most CSRCs the 4-bit CC field can announce.
pub const MAX_CSRCS: usize = 15;
/// Profile value of the RFC 8285 one-byte header-extension form.
pub const PROFILE_ONE_BYTE: u16 = 0xBEDE;
/// Profile value of the RFC 8285 two-byte form; the low 4 bits are "appbits".
pub const PROFILE_TWO_BYTE: u16 = 0x1000;
/// The longest extension block the 16-bit length (in words) can describe, in bytes.
pub const MAX_EXTENSION_DATA_LEN: usize = u16::MAX as usize * 4;

mod field {
    use core::ops::Range;
    pub const VPXCC: usize = 0;
    pub const MPT: usize = 1;
    pub const SEQ: Range<usize> = 2..4;
    pub const TS: Range<usize> = 4..8;
    pub const SSRC: Range<usize> = 8..12;
}

fn read_u16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

fn read_u32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

/// Where the variable parts of a packet sit, found in one validating pass.
struct Layout {
    /// Start of the extension block's 4-byte preamble, when X is set.
    extension_start: Option<usize>,
    /// Fixed header, CSRCs and extension block.
    header_len: usize,
    /// Padding bytes including the count byte.
    padding_len: usize,
}

impl Layout {
    /// Validates the version and that every declared length fits in `data`.
    fn of(data: &[u8]) -> Result<Layout> {
        let Some(&first) = data.first() else {
            return Err(Error::Truncated);
        };
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if first >> 6 != 2 {
            return Err(Error::BadVersion);
        }
        let mut header_len = HEADER_LEN + 4 * usize::from(first & 0x0f);
        let mut extension_start = None;
        if first & 0x10 != 0 {
            let Some(&[_, _, hi, lo]) = data.get(header_len..header_len + 4) else {
                return Err(Error::Truncated);
            };
            extension_start = Some(header_len);
            header_len += 4 + 4 * usize::from(u16::from_be_bytes([hi, lo]));
        }
        if data.len() < header_len {
            return Err(Error::Truncated);
        }
        let mut padding_len = 0;
        if first & 0x20 != 0 {
            // The count includes itself, so zero is malformed; it may not eat the header.
            padding_len = usize::from(data[data.len() - 1]);
            if padding_len == 0 || padding_len > data.len() - header_len {
                return Err(Error::BadPadding);
            }
        }
        Ok(Layout {
            extension_start,
            header_len,
            padding_len,
        })
    }
}

/// A zero-copy view of an RTP packet in a buffer.
///
/// Build it with [`RtpPacket::new_checked`] for bytes from the network: after that every
/// accessor is in bounds. [`RtpPacket::new_unchecked`] is for buffers the caller is about
/// to fill (e.g. through [`RtpRepr::emit`]); accessors on an unchecked, malformed buffer
/// may panic, exactly as in smoltcp.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> fmt::Debug for RtpPacket<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtpPacket")
            .field("len", &self.buffer.as_ref().len())
            .finish_non_exhaustive()
    }
}

impl<T: AsRef<[u8]>> RtpPacket<T> {
    /// Wraps `buffer` without validating it.
    pub const fn new_unchecked(buffer: T) -> Self {
        RtpPacket { buffer }
    }

    /// Wraps `buffer` after [`RtpPacket::check_len`] accepted it.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Validates the version and that every length the header declares (CSRC list,
    /// extension block, padding count) fits in the buffer, so accessors cannot panic.
    pub fn check_len(&self) -> Result<()> {
        Layout::of(self.buffer.as_ref()).map(|_| ())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version field (2 for every packet `new_checked` accepts).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VPXCC] >> 6
    }

    /// The P bit: the packet ends in padding whose last byte counts it.
    pub fn padding_flag(&self) -> bool {
        self.buffer.as_ref()[field::VPXCC] & 0x20 != 0
    }

    /// The X bit: a header extension follows the CSRC list.
    pub fn extension_flag(&self) -> bool {
        self.buffer.as_ref()[field::VPXCC] & 0x10 != 0
    }

    /// The CC field: how many CSRCs follow the fixed header.
    pub fn csrc_count(&self) -> u8 {
        self.buffer.as_ref()[field::VPXCC] & 0x0f
    }

    /// The M bit (for audio: first packet of a talk spurt).
    pub fn marker(&self) -> bool {
        self.buffer.as_ref()[field::MPT] & 0x80 != 0
    }

    /// The 7-bit payload type.
    pub fn payload_type(&self) -> PayloadType {
        PayloadType(self.buffer.as_ref()[field::MPT] & 0x7f)
    }

    /// The sequence number.
    pub fn seq(&self) -> SeqNo {
        SeqNo(read_u16(self.buffer.as_ref(), field::SEQ.start))
    }

    /// The RTP timestamp.
    pub fn ts(&self) -> RtpTs {
        RtpTs(read_u32(self.buffer.as_ref(), field::TS.start))
    }

    /// The synchronisation source.
    pub fn ssrc(&self) -> Ssrc {
        Ssrc(read_u32(self.buffer.as_ref(), field::SSRC.start))
    }

    /// The `index`-th contributing source, or `None` past the CC count.
    pub fn csrc(&self, index: usize) -> Option<Ssrc> {
        (index < usize::from(self.csrc_count()))
            .then(|| Ssrc(read_u32(self.buffer.as_ref(), HEADER_LEN + 4 * index)))
    }

    /// The contributing sources, in wire order.
    pub fn csrcs(&self) -> impl Iterator<Item = Ssrc> + '_ {
        (0..usize::from(self.csrc_count())).filter_map(|i| self.csrc(i))
    }

    /// Bytes of the extension block including its 4-byte preamble, when X is set.
    fn extension_range(&self) -> Option<Range<usize>> {
        if !self.extension_flag() {
            return None;
        }
        let start = HEADER_LEN + 4 * usize::from(self.csrc_count());
        let words = usize::from(read_u16(self.buffer.as_ref(), start + 2));
        Some(start..start + 4 + 4 * words)
    }

    /// Everything before the payload: fixed header, CSRCs and extension block.
    pub fn header_len(&self) -> usize {
        match self.extension_range() {
            Some(range) => range.end,
            None => HEADER_LEN + 4 * usize::from(self.csrc_count()),
        }
    }

    /// Bytes of padding at the end, including the count byte itself (0 without P).
    pub fn padding_len(&self) -> usize {
        let data = self.buffer.as_ref();
        if self.padding_flag() {
            usize::from(data[data.len() - 1])
        } else {
            0
        }
    }

    fn payload_range(&self) -> Range<usize> {
        self.header_len()..self.buffer.as_ref().len() - self.padding_len()
    }

    /// The header extension, when X is set.
    pub fn extension(&self) -> Option<HeaderExtension<'_>> {
        let range = self.extension_range()?;
        let data = &self.buffer.as_ref()[range];
        Some(HeaderExtension {
            profile: read_u16(data, 0),
            data: &data[4..],
        })
    }

    /// The payload, between the header and the padding.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_range()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RtpPacket<T> {
    /// Sets the version field (emitters write 2).
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[field::VPXCC];
        *b = (*b & 0x3f) | (version << 6);
    }

    /// Sets the P bit. The caller writes the padding count in the last byte.
    pub fn set_padding_flag(&mut self, on: bool) {
        let b = &mut self.buffer.as_mut()[field::VPXCC];
        *b = (*b & !0x20) | (u8::from(on) << 5);
    }

    /// Sets the X bit. The caller writes the extension block after the CSRCs.
    pub fn set_extension_flag(&mut self, on: bool) {
        let b = &mut self.buffer.as_mut()[field::VPXCC];
        *b = (*b & !0x10) | (u8::from(on) << 4);
    }

    /// Sets the CC field. `count` must be at most [`MAX_CSRCS`].
    pub fn set_csrc_count(&mut self, count: u8) {
        debug_assert!(usize::from(count) <= MAX_CSRCS);
        let b = &mut self.buffer.as_mut()[field::VPXCC];
        *b = (*b & 0xf0) | (count & 0x0f);
    }

    /// Sets the M bit in place.
    pub fn set_marker(&mut self, marker: bool) {
        let b = &mut self.buffer.as_mut()[field::MPT];
        *b = (*b & 0x7f) | (u8::from(marker) << 7);
    }

    /// Sets the payload type in place. Only the low 7 bits fit on the wire.
    pub fn set_payload_type(&mut self, pt: PayloadType) {
        debug_assert!(pt.0 < 0x80, "payload type {} does not fit in 7 bits", pt.0);
        let b = &mut self.buffer.as_mut()[field::MPT];
        *b = (*b & 0x80) | (pt.0 & 0x7f);
    }

    /// Sets the sequence number in place.
    pub fn set_seq(&mut self, seq: SeqNo) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&seq.0.to_be_bytes());
    }

    /// Sets the timestamp in place.
    pub fn set_ts(&mut self, ts: RtpTs) {
        self.buffer.as_mut()[field::TS].copy_from_slice(&ts.0.to_be_bytes());
    }

    /// Sets the SSRC in place.
    pub fn set_ssrc(&mut self, ssrc: Ssrc) {
        self.buffer.as_mut()[field::SSRC].copy_from_slice(&ssrc.0.to_be_bytes());
    }

    /// Sets the `index`-th CSRC. `index` must be below the CC count.
    pub fn set_csrc(&mut self, index: usize, csrc: Ssrc) {
        assert!(index < usize::from(self.csrc_count()), "CSRC index past CC");
        let at = HEADER_LEN + 4 * index;
        self.buffer.as_mut()[at..at + 4].copy_from_slice(&csrc.0.to_be_bytes());
    }

    /// The payload, writable in place (e.g. to re-encode a frame of the same length).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.payload_range();
        &mut self.buffer.as_mut()[range]
    }
}

/// A header extension block: the 16-bit profile and the data words after the length.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct HeaderExtension<'a> {
    /// "Defined by profile": [`PROFILE_ONE_BYTE`], `PROFILE_TWO_BYTE | appbits`, or other.
    pub profile: u16,
    /// The extension data; its length is a multiple of 4 on the wire.
    pub data: &'a [u8],
}

/// Which RFC 8285 form an extension block uses, read from its profile field.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ExtensionForm {
    /// One-byte headers (profile 0xBEDE): 4-bit id, 4-bit length minus one.
    OneByte,
    /// Two-byte headers (profile 0x100X): 8-bit id, 8-bit length; `appbits` is X.
    TwoByte {
        /// The low 4 bits of the profile, application defined.
        appbits: u8,
    },
    /// A profile RFC 8285 does not define; its data is opaque.
    Other(u16),
}

impl<'a> HeaderExtension<'a> {
    /// The RFC 8285 form, from the profile field.
    pub fn form(&self) -> ExtensionForm {
        match self.profile {
            PROFILE_ONE_BYTE => ExtensionForm::OneByte,
            p if p & 0xfff0 == PROFILE_TWO_BYTE => ExtensionForm::TwoByte {
                appbits: (p & 0x0f) as u8,
            },
            p => ExtensionForm::Other(p),
        }
    }

    /// Iterates over the RFC 8285 elements. Yields nothing for [`ExtensionForm::Other`];
    /// yields one `Err(BadExtension)` and stops if an element runs past the block.
    pub fn elements(&self) -> ExtensionElements<'a> {
        ExtensionElements {
            form: self.form(),
            data: self.data,
            pos: 0,
        }
    }
}

/// One RFC 8285 header-extension element.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ExtensionElement<'a> {
    /// Local identifier negotiated in SDP (1..=14 one-byte, 1..=255 two-byte).
    pub id: u8,
    /// The element's data.
    pub data: &'a [u8],
}

/// Iterator over the elements of a header extension; see [`HeaderExtension::elements`].
#[derive(Clone, Debug)]
pub struct ExtensionElements<'a> {
    form: ExtensionForm,
    data: &'a [u8],
    pos: usize,
}

impl<'a> ExtensionElements<'a> {
    fn fail(&mut self) -> Option<Result<ExtensionElement<'a>>> {
        self.pos = self.data.len();
        Some(Err(Error::BadExtension))
    }
}

impl<'a> Iterator for ExtensionElements<'a> {
    type Item = Result<ExtensionElement<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let &first = self.data.get(self.pos)?;
            // A zero byte is padding between or after elements in both forms (RFC 8285
            // sections 4.2 and 4.3); like libwebrtc we skip it whatever its length nibble.
            if first == 0 || (self.form == ExtensionForm::OneByte && first >> 4 == 0) {
                self.pos += 1;
                continue;
            }
            let (id, data_start, data_len) = match self.form {
                ExtensionForm::OneByte => {
                    let id = first >> 4;
                    if id == 15 {
                        // Reserved: processing stops here, keeping what came before.
                        self.pos = self.data.len();
                        return None;
                    }
                    (id, self.pos + 1, usize::from(first & 0x0f) + 1)
                }
                ExtensionForm::TwoByte { .. } => {
                    let Some(&len) = self.data.get(self.pos + 1) else {
                        return self.fail();
                    };
                    (first, self.pos + 2, usize::from(len))
                }
                ExtensionForm::Other(_) => return None,
            };
            let Some(data) = self.data.get(data_start..data_start + data_len) else {
                return self.fail();
            };
            self.pos = data_start + data_len;
            return Some(Ok(ExtensionElement { id, data }));
        }
    }
}

/// Up to 15 contributing sources, stored inline so a [`RtpRepr`] never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CsrcList {
    // Invariant: slots at and past `len` hold Ssrc(0), so the derived equality is
    // equality of the lists.
    ids: [Ssrc; MAX_CSRCS],
    len: u8,
}

impl CsrcList {
    /// The empty list.
    pub const EMPTY: CsrcList = CsrcList {
        ids: [Ssrc(0); MAX_CSRCS],
        len: 0,
    };

    /// A list holding `csrcs`, or `Err(Capacity)` for more than [`MAX_CSRCS`].
    pub fn from_slice(csrcs: &[Ssrc]) -> Result<Self> {
        let mut list = Self::EMPTY;
        for &csrc in csrcs {
            list.push(csrc)?;
        }
        Ok(list)
    }

    /// Appends `csrc`, or returns `Err(Capacity)` when the list is full.
    pub fn push(&mut self, csrc: Ssrc) -> Result<()> {
        let slot = self
            .ids
            .get_mut(usize::from(self.len))
            .ok_or(Error::Capacity)?;
        *slot = csrc;
        self.len += 1;
        Ok(())
    }

    /// The sources, in order.
    pub fn as_slice(&self) -> &[Ssrc] {
        &self.ids[..usize::from(self.len)]
    }

    /// How many sources.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for CsrcList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// A validated RTP packet: every header field, the extension block, the payload and
/// the padding length.
///
/// To write only a header (and then encode the payload straight into the buffer after
/// it), emit a repr with an empty `payload` and `padding_len: 0`; the payload starts at
/// [`RtpRepr::header_len`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RtpRepr<'a> {
    /// The M bit.
    pub marker: bool,
    /// Payload type; must be below 128.
    pub payload_type: PayloadType,
    /// Sequence number.
    pub seq: SeqNo,
    /// Timestamp.
    pub ts: RtpTs,
    /// Synchronisation source.
    pub ssrc: Ssrc,
    /// Contributing sources.
    pub csrcs: CsrcList,
    /// The header extension block; its data length must be a multiple of 4.
    pub extension: Option<HeaderExtension<'a>>,
    /// The payload.
    pub payload: &'a [u8],
    /// Bytes of padding including the count byte; 0 means no padding (P bit clear).
    pub padding_len: u8,
}

impl<'a> RtpRepr<'a> {
    /// Parses a packet. Validates again (as [`RtpPacket::check_len`] does), so an
    /// unchecked view of arbitrary bytes returns an error rather than panicking.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &RtpPacket<&'a T>) -> Result<RtpRepr<'a>> {
        let buffer: &'a T = packet.buffer;
        let data: &'a [u8] = buffer.as_ref();
        let layout = Layout::of(data)?;
        let mut csrcs = CsrcList::EMPTY;
        for word in data[HEADER_LEN..]
            .chunks_exact(4)
            .take(usize::from(data[0] & 0x0f))
        {
            csrcs.push(Ssrc(read_u32(word, 0)))?;
        }
        let extension = layout.extension_start.map(|start| HeaderExtension {
            profile: read_u16(data, start),
            data: &data[start + 4..layout.header_len],
        });
        Ok(RtpRepr {
            marker: data[field::MPT] & 0x80 != 0,
            payload_type: PayloadType(data[field::MPT] & 0x7f),
            seq: SeqNo(read_u16(data, field::SEQ.start)),
            ts: RtpTs(read_u32(data, field::TS.start)),
            ssrc: Ssrc(read_u32(data, field::SSRC.start)),
            csrcs,
            extension,
            payload: &data[layout.header_len..data.len() - layout.padding_len],
            // Layout::of bounded the count by one byte's range.
            padding_len: layout.padding_len as u8,
        })
    }

    /// Bytes before the payload: fixed header, CSRCs, extension block.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + 4 * self.csrcs.len() + self.extension.map_or(0, |ext| 4 + ext.data.len())
    }

    /// Bytes the whole packet occupies.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len() + usize::from(self.padding_len)
    }

    /// Writes the packet into the first [`RtpRepr::buffer_len`] bytes of `packet`'s
    /// buffer. Padding bytes are zero except the count. Panics if the buffer is shorter,
    /// the payload type exceeds 7 bits or the extension data is not whole words: those
    /// are programmer errors.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut RtpPacket<T>) {
        let total = self.buffer_len();
        assert!(
            packet.buffer.as_ref().len() >= total,
            "RTP emit buffer too short"
        );
        assert!(self.payload_type.0 < 0x80, "payload type exceeds 7 bits");
        let buf = packet.buffer.as_mut();
        // The fixed header in one store: fewer bounds checks than field-by-field setters.
        let mut fixed = [0u8; HEADER_LEN];
        // CsrcList caps the length at 15.
        fixed[0] = 0x80
            | (u8::from(self.padding_len != 0) << 5)
            | (u8::from(self.extension.is_some()) << 4)
            | self.csrcs.len() as u8;
        fixed[1] = (u8::from(self.marker) << 7) | self.payload_type.0;
        fixed[field::SEQ].copy_from_slice(&self.seq.0.to_be_bytes());
        fixed[field::TS].copy_from_slice(&self.ts.0.to_be_bytes());
        fixed[field::SSRC].copy_from_slice(&self.ssrc.0.to_be_bytes());
        buf[..HEADER_LEN].copy_from_slice(&fixed);
        for (i, csrc) in self.csrcs.as_slice().iter().enumerate() {
            let at = HEADER_LEN + 4 * i;
            buf[at..at + 4].copy_from_slice(&csrc.0.to_be_bytes());
        }
        let mut at = HEADER_LEN + 4 * self.csrcs.len();
        if let Some(ext) = self.extension {
            assert!(
                ext.data.len().is_multiple_of(4) && ext.data.len() <= MAX_EXTENSION_DATA_LEN,
                "extension data must be whole 32-bit words"
            );
            buf[at..at + 2].copy_from_slice(&ext.profile.to_be_bytes());
            // Bounded by MAX_EXTENSION_DATA_LEN just above.
            let words = (ext.data.len() / 4) as u16;
            buf[at + 2..at + 4].copy_from_slice(&words.to_be_bytes());
            buf[at + 4..at + 4 + ext.data.len()].copy_from_slice(ext.data);
            at += 4 + ext.data.len();
        }
        buf[at..at + self.payload.len()].copy_from_slice(self.payload);
        at += self.payload.len();
        if self.padding_len != 0 {
            buf[at..total].fill(0);
            buf[total - 1] = self.padding_len;
        }
    }
}
