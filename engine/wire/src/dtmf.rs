//! RFC 4733 telephone-event payloads (DTMF carried as named events, not audio).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     event     |E|R| volume    |          duration             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! This is the RTP payload, not the RTP packet: take it from
//! [`crate::rtp::RtpPacket::payload`] when the payload type is the leg's negotiated
//! `telephone_event_pt`.

use core::fmt;

use crate::error::{Error, Result};

/// Length of one event block.
pub const EVENT_LEN: usize = 4;
/// The largest volume (attenuation in -dBm0) the 6-bit field holds.
pub const MAX_VOLUME: u8 = 63;

/// The named events of RFC 4733 section 3.2 (DTMF 0-9, *, #, A-D, flash). Total:
/// other codes are `Other`. `Digit` holds 0..=9; other values are not canonical.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DtmfEvent {
    /// Codes 0..=9: the digit itself.
    Digit(u8),
    /// Code 10: `*`.
    Star,
    /// Code 11: `#`.
    Pound,
    /// Code 12: `A`.
    A,
    /// Code 13: `B`.
    B,
    /// Code 14: `C`.
    C,
    /// Code 15: `D`.
    D,
    /// Code 16: hook flash.
    Flash,
    /// Any other event code (tones and line events of RFC 4734, or unassigned).
    Other(u8),
}

impl From<u8> for DtmfEvent {
    fn from(code: u8) -> Self {
        match code {
            0..=9 => DtmfEvent::Digit(code),
            10 => DtmfEvent::Star,
            11 => DtmfEvent::Pound,
            12 => DtmfEvent::A,
            13 => DtmfEvent::B,
            14 => DtmfEvent::C,
            15 => DtmfEvent::D,
            16 => DtmfEvent::Flash,
            other => DtmfEvent::Other(other),
        }
    }
}

impl From<DtmfEvent> for u8 {
    fn from(event: DtmfEvent) -> Self {
        match event {
            DtmfEvent::Digit(d) => d,
            DtmfEvent::Star => 10,
            DtmfEvent::Pound => 11,
            DtmfEvent::A => 12,
            DtmfEvent::B => 13,
            DtmfEvent::C => 14,
            DtmfEvent::D => 15,
            DtmfEvent::Flash => 16,
            DtmfEvent::Other(other) => other,
        }
    }
}

impl DtmfEvent {
    /// The key as a character ('0'-'9', '*', '#', 'A'-'D'), or `None` for flash and
    /// other events.
    pub fn key(self) -> Option<char> {
        match self {
            DtmfEvent::Digit(d) if d <= 9 => Some(char::from(b'0' + d)),
            DtmfEvent::Star => Some('*'),
            DtmfEvent::Pound => Some('#'),
            DtmfEvent::A => Some('A'),
            DtmfEvent::B => Some('B'),
            DtmfEvent::C => Some('C'),
            DtmfEvent::D => Some('D'),
            _ => None,
        }
    }
}

/// A zero-copy view of a telephone-event payload.
///
/// Only the first 4 bytes are read: RFC 4733 allows further blocks only under RFC 2198
/// redundancy, which arrives with its own payload type.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DtmfPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> fmt::Debug for DtmfPacket<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtmfPacket")
            .field("len", &self.buffer.as_ref().len())
            .finish_non_exhaustive()
    }
}

impl<T: AsRef<[u8]>> DtmfPacket<T> {
    /// Wraps `buffer` without validating it; accessors panic if it is under 4 bytes.
    pub const fn new_unchecked(buffer: T) -> Self {
        DtmfPacket { buffer }
    }

    /// Wraps `buffer` after [`DtmfPacket::check_len`] accepted it.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Validates that one event block fits.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < EVENT_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The event code.
    pub fn event(&self) -> DtmfEvent {
        DtmfEvent::from(self.buffer.as_ref()[0])
    }

    /// The E bit: this packet ends the event.
    pub fn end(&self) -> bool {
        self.buffer.as_ref()[1] & 0x80 != 0
    }

    /// The R bit: reserved, sent as 0 and ignored on receipt.
    pub fn reserved(&self) -> bool {
        self.buffer.as_ref()[1] & 0x40 != 0
    }

    /// Power level in -dBm0 (0 loudest .. 63).
    pub fn volume(&self) -> u8 {
        self.buffer.as_ref()[1] & 0x3f
    }

    /// Duration so far, in RTP timestamp units from the event's timestamp.
    pub fn duration(&self) -> u16 {
        let data = self.buffer.as_ref();
        u16::from_be_bytes([data[2], data[3]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> DtmfPacket<T> {
    /// Sets the event code.
    pub fn set_event(&mut self, event: DtmfEvent) {
        self.buffer.as_mut()[0] = u8::from(event);
    }

    /// Sets the E bit, clears R, sets the volume (must be at most [`MAX_VOLUME`]).
    pub fn set_end_and_volume(&mut self, end: bool, volume: u8) {
        debug_assert!(volume <= MAX_VOLUME);
        self.buffer.as_mut()[1] = (u8::from(end) << 7) | (volume & 0x3f);
    }

    /// Sets the duration.
    pub fn set_duration(&mut self, duration: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&duration.to_be_bytes());
    }
}

/// Rescales the duration of the telephone-event payload in `payload` from a
/// `from_hz` RTP clock to a `to_hz` one (RFC 4733 2.3.5: durations count in the
/// stream's clock), saturating at the longest a packet can say. A payload too short to
/// carry an event, or equal clocks, are left as they are: the relay passes what it got.
pub fn rescale_duration(payload: &mut [u8], from_hz: u32, to_hz: u32) {
    if from_hz == to_hz || from_hz == 0 {
        return;
    }
    let Ok(mut packet) = DtmfPacket::new_checked(payload) else {
        return;
    };
    let scaled = u64::from(packet.duration()) * u64::from(to_hz) / u64::from(from_hz);
    packet.set_duration(u16::try_from(scaled).unwrap_or(u16::MAX));
}

/// A validated telephone event.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct DtmfRepr {
    /// Which event.
    pub event: DtmfEvent,
    /// This packet ends the event (sent three times, RFC 4733 section 2.5.1.4).
    pub end: bool,
    /// Power level in -dBm0, at most [`MAX_VOLUME`].
    pub volume: u8,
    /// Duration so far in timestamp units.
    pub duration: u16,
}

impl DtmfRepr {
    /// Parses the event block (the reserved bit is ignored, as the RFC requires).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &DtmfPacket<&T>) -> Result<DtmfRepr> {
        packet.check_len()?;
        Ok(DtmfRepr {
            event: packet.event(),
            end: packet.end(),
            volume: packet.volume(),
            duration: packet.duration(),
        })
    }

    /// Bytes the payload occupies.
    pub const fn buffer_len(&self) -> usize {
        EVENT_LEN
    }

    /// Writes the event block into the first 4 bytes of `packet`'s buffer. Panics if the
    /// buffer is shorter or the volume exceeds 6 bits (programmer errors).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut DtmfPacket<T>) {
        assert!(self.volume <= MAX_VOLUME, "DTMF volume exceeds 6 bits");
        packet.set_event(self.event);
        packet.set_end_and_volume(self.end, self.volume);
        packet.set_duration(self.duration);
    }
}
