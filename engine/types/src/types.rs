//! Newtypes shared by every module: names carry their domain and units (STYLE.md rule 12).

use core::fmt;

/// RTP synchronisation source identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Ssrc(pub u32);

impl fmt::Debug for Ssrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ssrc({:#010x})", self.0)
    }
}

/// A 16-bit RTP sequence number. Comparisons are wrap-aware (RFC 1982 serial arithmetic).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct SeqNo(pub u16);

impl SeqNo {
    /// The next sequence number, wrapping at 2^16.
    pub const fn next(self) -> SeqNo {
        SeqNo(self.0.wrapping_add(1))
    }
    /// Signed distance from `other` to `self` (positive when `self` is newer), in the
    /// range -32768..=32767.
    pub const fn delta(self, other: SeqNo) -> i16 {
        self.0.wrapping_sub(other.0) as i16
    }
    /// True when `self` comes after `other` in serial order.
    pub const fn is_newer_than(self, other: SeqNo) -> bool {
        self.delta(other) > 0
    }
}

/// A 32-bit RTP timestamp in the stream's clock rate. Comparisons are wrap-aware.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct RtpTs(pub u32);

impl RtpTs {
    /// `self + samples`, wrapping at 2^32.
    pub const fn add(self, samples: u32) -> RtpTs {
        RtpTs(self.0.wrapping_add(samples))
    }
    /// Signed distance from `other` to `self` in clock ticks.
    pub const fn delta(self, other: RtpTs) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }
}

/// An RTP payload type (7 bits on the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct PayloadType(pub u8);

impl PayloadType {
    /// Static payload type of G.711 mu-law (RFC 3551).
    pub const PCMU: PayloadType = PayloadType(0);
    /// Static payload type of G.711 A-law (RFC 3551).
    pub const PCMA: PayloadType = PayloadType(8);
    /// Static payload type of comfort noise (RFC 3389).
    pub const CN: PayloadType = PayloadType(13);
}

/// Audio codecs a leg may carry. Narrowband G.711 only for now (SPEC section 3 lists
/// G722, OPUS and L16 as later work).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Codec {
    /// G.711 mu-law, 8 kHz, one byte per sample.
    Pcmu,
    /// G.711 A-law, 8 kHz, one byte per sample.
    Pcma,
}

impl Codec {
    /// Samples per second.
    pub const fn clock_rate_hz(self) -> u32 {
        8_000
    }
    /// Samples in one frame of `ptime_ms`.
    pub const fn frame_samples(self, ptime_ms: u32) -> usize {
        (self.clock_rate_hz() / 1_000 * ptime_ms) as usize
    }
    /// The static payload type RFC 3551 assigns.
    pub const fn static_payload_type(self) -> PayloadType {
        match self {
            Codec::Pcmu => PayloadType::PCMU,
            Codec::Pcma => PayloadType::PCMA,
        }
    }
}

/// Packetisation times a leg may use, in milliseconds (SPEC section 3).
pub const PTIMES_MS: [u32; 5] = [10, 20, 30, 40, 60];

/// The longest frame any leg can carry: 60 ms at 8 kHz.
pub const MAX_FRAME_SAMPLES: usize = 480;

/// The most legs one session mixes (issue 3).
pub const MAX_SESSION_LEGS: usize = 16;

/// Linear gain in Q12 fixed point: 4096 is unity, 0 is mute, 65535 is almost 16x.
///
/// Mixing multiplies each 16-bit sample by the gain in 32 bits and shifts right by 12
/// (arithmetic shift, rounding toward minus infinity), so unity gain is exact.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Gain(pub u16);

impl Gain {
    /// Silence.
    pub const MUTE: Gain = Gain(0);
    /// Pass-through.
    pub const UNITY: Gain = Gain(1 << Gain::SHIFT);
    /// Fractional bits.
    pub const SHIFT: u32 = 12;

    /// The Q12 gain closest to `linear`, clamped to the representable range.
    pub fn from_linear(linear: f32) -> Gain {
        let q = (linear * f32::from(1u16 << Self::SHIFT)).round();
        Gain(q.clamp(0.0, f32::from(u16::MAX)) as u16)
    }
    /// True when the edge contributes nothing.
    pub const fn is_mute(self) -> bool {
        self.0 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_compare_across_the_wrap() {
        assert!(SeqNo(0).is_newer_than(SeqNo(65535)));
        assert!(!SeqNo(65535).is_newer_than(SeqNo(0)));
        assert_eq!(SeqNo(3).delta(SeqNo(65534)), 5);
        assert_eq!(RtpTs(10).delta(RtpTs(u32::MAX - 9)), 20);
    }

    #[test]
    fn gains_round_and_clamp() {
        assert_eq!(Gain::from_linear(1.0), Gain::UNITY);
        assert_eq!(Gain::from_linear(-3.0), Gain::MUTE);
        assert_eq!(Gain::from_linear(100.0), Gain(u16::MAX));
        assert_eq!(Codec::Pcmu.frame_samples(20), 160);
    }
}
