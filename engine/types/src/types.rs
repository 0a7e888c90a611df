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
    /// Static payload type of G.722 (RFC 3551).
    pub const G722: PayloadType = PayloadType(9);
    /// Static payload type of comfort noise (RFC 3389).
    pub const CN: PayloadType = PayloadType(13);
}

/// A PCM sample rate the media core decodes, mixes and resamples at: narrowband
/// (telephony), wideband (G.722, "HD voice") and fullband (WebRTC's native rate).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum SampleRate {
    /// 8 kHz.
    Hz8000,
    /// 16 kHz.
    Hz16000,
    /// 48 kHz.
    Hz48000,
}

impl SampleRate {
    /// Every rate, lowest first.
    pub const ALL: [SampleRate; 3] = [SampleRate::Hz8000, SampleRate::Hz16000, SampleRate::Hz48000];

    /// Samples per second.
    pub const fn hz(self) -> u32 {
        match self {
            SampleRate::Hz8000 => 8_000,
            SampleRate::Hz16000 => 16_000,
            SampleRate::Hz48000 => 48_000,
        }
    }
    /// The rate of exactly `hz`, if it is one of ours.
    pub const fn from_hz(hz: u32) -> Option<SampleRate> {
        match hz {
            8_000 => Some(SampleRate::Hz8000),
            16_000 => Some(SampleRate::Hz16000),
            48_000 => Some(SampleRate::Hz48000),
            _ => None,
        }
    }
    /// The lowest of our rates that carries everything a `hz` source can hold (8 kHz
    /// for up to 8000, 16 kHz up to 16000, else 48 kHz): how an SDP `maxplaybackrate`
    /// becomes a rate.
    pub const fn covering(hz: u32) -> SampleRate {
        if hz <= 8_000 {
            SampleRate::Hz8000
        } else if hz <= 16_000 {
            SampleRate::Hz16000
        } else {
            SampleRate::Hz48000
        }
    }
    /// Samples in `ms` milliseconds at this rate.
    pub const fn samples_in_ms(self, ms: u32) -> usize {
        (self.hz() / 1_000 * ms) as usize
    }
}

/// Audio codecs a leg may carry (SPEC section 5), with their RTP and PCM facts.
///
/// Two rates describe a codec and they differ: the **RTP clock** that timestamps count
/// in ([`Codec::rtp_clock_hz`]) and the **audio rate** of the PCM the codec carries
/// ([`Codec::audio_rate`]). G.722 is 16 kHz audio on an 8 kHz RTP clock (RFC 3551
/// 4.5.2); Opus always uses a 48 kHz RTP clock whatever its audio bandwidth (RFC 7587
/// 4.1). Frames are therefore counted apart: [`Codec::rtp_units_per_frame`] for
/// timestamps, [`Codec::pcm_samples_per_frame`] for samples.
///
/// With the `serde` feature the names serialise as `"Pcmu"`, `"Pcma"`, `"G722"`,
/// `"Opus"` and `{"L16": "Hz16000"}` (the first two as stored before wideband existed).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Codec {
    /// G.711 mu-law: 8 kHz, one byte per sample.
    Pcmu,
    /// G.711 A-law: 8 kHz, one byte per sample.
    Pcma,
    /// G.722 at 64 kbit/s: 16 kHz audio, one byte per two samples, 8 kHz RTP clock.
    G722,
    /// Opus (RFC 6716, RFC 7587): up to 48 kHz audio, 48 kHz RTP clock, mono sent.
    Opus,
    /// Linear 16-bit big-endian PCM, mono, at the rate given (RTP clock = audio rate).
    L16(SampleRate),
}

impl Codec {
    /// The RTP timestamp clock, in Hz.
    pub const fn rtp_clock_hz(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 => 8_000,
            Codec::Opus => 48_000,
            Codec::L16(rate) => rate.hz(),
        }
    }
    /// The highest audio rate the codec carries: what its PCM is natively sampled at
    /// (Opus: 48 kHz, though a leg may ask for less, see the Opus parameters).
    pub const fn audio_rate(self) -> SampleRate {
        match self {
            Codec::Pcmu | Codec::Pcma => SampleRate::Hz8000,
            Codec::G722 => SampleRate::Hz16000,
            Codec::Opus => SampleRate::Hz48000,
            Codec::L16(rate) => rate,
        }
    }
    /// RTP timestamp units in one frame of `ptime_ms`.
    pub const fn rtp_units_per_frame(self, ptime_ms: u32) -> u32 {
        self.rtp_clock_hz() / 1_000 * ptime_ms
    }
    /// PCM samples in one frame of `ptime_ms` at the codec's audio rate.
    pub const fn pcm_samples_per_frame(self, ptime_ms: u32) -> usize {
        self.audio_rate().samples_in_ms(ptime_ms)
    }
    /// Payload bytes per millisecond of a codec with a fixed bit rate; `None` for Opus,
    /// whose packets vary in size (their duration is in the TOC byte).
    pub const fn payload_bytes_per_ms(self) -> Option<u32> {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 => Some(8),
            Codec::Opus => None,
            Codec::L16(rate) => Some(rate.hz() / 1_000 * 2),
        }
    }
    /// The static payload type RFC 3551 assigns, if any (Opus and L16 at our rates are
    /// always dynamic).
    pub const fn static_payload_type(self) -> Option<PayloadType> {
        match self {
            Codec::Pcmu => Some(PayloadType::PCMU),
            Codec::Pcma => Some(PayloadType::PCMA),
            Codec::G722 => Some(PayloadType::G722),
            Codec::Opus | Codec::L16(_) => None,
        }
    }
    /// The encoding name of SDP's `a=rtpmap` (RFC 3551, RFC 7587).
    pub const fn sdp_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::Opus => "opus",
            Codec::L16(_) => "L16",
        }
    }
}

/// Packetisation times a leg may use, in milliseconds (SPEC section 3).
pub const PTIMES_MS: [u32; 5] = [10, 20, 30, 40, 60];

/// The granularity of every packet the engine accepts and of jitter-buffer playout:
/// packet durations are whole multiples of it (every ptime of [`PTIMES_MS`] is).
pub const UNIT_MS: u32 = 10;
const _: () = {
    let mut i = 0;
    while i < PTIMES_MS.len() {
        assert!(PTIMES_MS[i].is_multiple_of(UNIT_MS));
        i += 1;
    }
};

/// The largest RTP payload a leg sends or accepts, in bytes: a 1500-byte Ethernet MTU
/// less IPv6 (40), UDP (8), the RTP header (12) and the longest SRTP tag (16). Fixed
/// rate codecs whose frame would not fit (L16 at 48 kHz beyond 10 ms) are refused.
pub const MAX_PAYLOAD_BYTES: usize = 1_424;

/// The longest PCM frame any leg or tick holds: 60 ms at 48 kHz.
pub const MAX_FRAME_SAMPLES: usize = 2_880;

/// The most legs one session mixes (issue 3).
pub const MAX_SESSION_LEGS: usize = 16;

/// The IP family of an address: which of a node's addresses a leg binds, which
/// header an AF_XDP frame carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum IpFamily {
    /// IPv4.
    #[default]
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of `address`.
    pub const fn of(address: std::net::IpAddr) -> IpFamily {
        match address {
            std::net::IpAddr::V4(_) => IpFamily::V4,
            std::net::IpAddr::V6(_) => IpFamily::V6,
        }
    }
}

/// Linear gain in Q12 fixed point: 4096 is unity, 0 is mute, 65535 is almost 16x.
///
/// Mixing multiplies each 16-bit sample by the gain in 32 bits and shifts right by 12
/// (arithmetic shift, rounding toward minus infinity), so unity gain is exact.
///
/// With the `serde` feature it serialises as the bare Q12 number (4096 for unity).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, PartialOrd, Ord)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(transparent)
)]
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
    }

    #[test]
    fn codecs_tell_their_clock_from_their_audio_rate() {
        assert_eq!(Codec::Pcmu.rtp_units_per_frame(20), 160);
        assert_eq!(Codec::Pcmu.pcm_samples_per_frame(20), 160);
        // G.722: 8 kHz clock, 16 kHz audio (RFC 3551 4.5.2).
        assert_eq!(Codec::G722.rtp_units_per_frame(20), 160);
        assert_eq!(Codec::G722.pcm_samples_per_frame(20), 320);
        // Opus: 48 kHz clock whatever the audio (RFC 7587 4.1).
        assert_eq!(Codec::Opus.rtp_units_per_frame(20), 960);
        let l16 = Codec::L16(SampleRate::Hz16000);
        assert_eq!(
            (l16.rtp_clock_hz(), l16.pcm_samples_per_frame(10)),
            (16_000, 160)
        );
        assert_eq!(l16.payload_bytes_per_ms(), Some(32));
        assert_eq!(Codec::Opus.payload_bytes_per_ms(), None);
        assert_eq!(Codec::G722.static_payload_type(), Some(PayloadType(9)));
        assert_eq!(Codec::Opus.static_payload_type(), None);
        assert_eq!(
            MAX_FRAME_SAMPLES,
            Codec::Opus.pcm_samples_per_frame(*PTIMES_MS.last().unwrap())
        );
    }

    #[test]
    fn sample_rates_cover_what_sdp_asks_for() {
        for r in SampleRate::ALL {
            assert_eq!(SampleRate::from_hz(r.hz()), Some(r));
            assert_eq!(SampleRate::covering(r.hz()), r);
        }
        assert_eq!(SampleRate::from_hz(44_100), None);
        assert_eq!(SampleRate::covering(12_000), SampleRate::Hz16000);
        assert_eq!(SampleRate::covering(24_000), SampleRate::Hz48000);
        assert!(SampleRate::Hz8000 < SampleRate::Hz48000);
    }
}
