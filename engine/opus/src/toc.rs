//! The Opus TOC byte and frame count (RFC 6716 section 3.1), parsed in Rust.
//!
//! The jitter buffer needs a packet's duration before (and without) decoding it, so this
//! is plain arithmetic on the first one or two bytes. It follows the RFC's rules for a
//! well-formed packet as far as the duration goes:
//!
//! - the TOC byte's `config` (top 5 bits) gives the mode, bandwidth and frame duration
//!   (Table 2), its `c` (low 2 bits) the frame count code: 0 is one frame, 1 and 2 are
//!   two frames, 3 is an arbitrary count `M` in the low 6 bits of the second byte;
//! - a code 3 packet needs that second byte (R6), and `M` must be at least 1 (R5) and the
//!   whole packet at most 120 ms (R5);
//! - an empty packet is not an Opus packet (R1).
//!
//! It does not check the frame lengths inside the packet (R2-R4, R7); the decoder does.
//! libopus's `opus_packet_get_nb_samples` applies the same checks except R5's `M >= 1`
//! (it answers 0 samples); the tests compare the two on real packets and arbitrary bytes.

/// Why a packet has no valid duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TocError {
    /// Zero bytes (R1).
    Empty,
    /// A code 3 packet without its frame count byte (R6).
    MissingFrameCount,
    /// A code 3 packet that says it holds zero frames (R5).
    ZeroFrames,
    /// More than 120 ms of audio (R5).
    TooLong {
        /// The duration the packet claims, in 48 kHz samples.
        samples_48k: u32,
    },
}

impl core::fmt::Display for TocError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TocError::Empty => f.write_str("empty Opus packet"),
            TocError::MissingFrameCount => f.write_str("Opus code 3 packet without frame count"),
            TocError::ZeroFrames => f.write_str("Opus code 3 packet with zero frames"),
            TocError::TooLong { samples_48k } => {
                write!(
                    f,
                    "Opus packet of {samples_48k} samples at 48 kHz exceeds 120 ms"
                )
            }
        }
    }
}

impl std::error::Error for TocError {}

/// The coding mode a TOC `config` selects (RFC 6716 Table 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// SILK only (configs 0-11).
    Silk,
    /// SILK and CELT together (configs 12-15).
    Hybrid,
    /// CELT only (configs 16-31).
    Celt,
}

/// Audio bandwidth a TOC `config` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bandwidth {
    /// 4 kHz.
    Narrowband,
    /// 6 kHz.
    Mediumband,
    /// 8 kHz.
    Wideband,
    /// 12 kHz.
    SuperWideband,
    /// 20 kHz.
    Fullband,
}

/// The meaning of one TOC byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Toc {
    /// Coding mode.
    pub mode: Mode,
    /// Audio bandwidth.
    pub bandwidth: Bandwidth,
    /// Duration of each frame, in 48 kHz samples (120 = 2.5 ms ... 2880 = 60 ms).
    pub frame_samples_48k: u32,
    /// Stereo flag `s`.
    pub stereo: bool,
    /// Frame count code `c` (0..=3).
    pub code: u8,
}

/// Longest packet the RFC allows: 120 ms at 48 kHz.
pub const MAX_PACKET_SAMPLES_48K: u32 = 5760;

impl Toc {
    /// Decode a TOC byte. Every byte value is a valid TOC.
    pub const fn parse(byte: u8) -> Toc {
        let config = byte >> 3;
        // Frame durations in 48 kHz samples (2.5 ms = 120).
        const SILK: [u32; 4] = [480, 960, 1920, 2880]; // 10, 20, 40, 60 ms
        const HYBRID: [u32; 2] = [480, 960]; // 10, 20 ms
        const CELT: [u32; 4] = [120, 240, 480, 960]; // 2.5, 5, 10, 20 ms
        let (mode, bandwidth, frame_samples_48k) = match config {
            0..=3 => (
                Mode::Silk,
                Bandwidth::Narrowband,
                SILK[(config & 3) as usize],
            ),
            4..=7 => (
                Mode::Silk,
                Bandwidth::Mediumband,
                SILK[(config & 3) as usize],
            ),
            8..=11 => (Mode::Silk, Bandwidth::Wideband, SILK[(config & 3) as usize]),
            12 | 13 => (
                Mode::Hybrid,
                Bandwidth::SuperWideband,
                HYBRID[(config & 1) as usize],
            ),
            14 | 15 => (
                Mode::Hybrid,
                Bandwidth::Fullband,
                HYBRID[(config & 1) as usize],
            ),
            16..=19 => (
                Mode::Celt,
                Bandwidth::Narrowband,
                CELT[(config & 3) as usize],
            ),
            20..=23 => (Mode::Celt, Bandwidth::Wideband, CELT[(config & 3) as usize]),
            24..=27 => (
                Mode::Celt,
                Bandwidth::SuperWideband,
                CELT[(config & 3) as usize],
            ),
            _ => (Mode::Celt, Bandwidth::Fullband, CELT[(config & 3) as usize]),
        };
        Toc {
            mode,
            bandwidth,
            frame_samples_48k,
            stereo: byte & 0x04 != 0,
            code: byte & 0x03,
        }
    }
}

/// Number of Opus frames in `packet` (1 to 48).
pub fn packet_frame_count(packet: &[u8]) -> Result<u32, TocError> {
    let (&toc, rest) = packet.split_first().ok_or(TocError::Empty)?;
    match toc & 0x03 {
        0 => Ok(1),
        1 | 2 => Ok(2),
        _ => {
            let &count_byte = rest.first().ok_or(TocError::MissingFrameCount)?;
            match u32::from(count_byte & 0x3F) {
                0 => Err(TocError::ZeroFrames),
                m => Ok(m),
            }
        }
    }
}

/// Duration of `packet` in samples at 48 kHz (the RTP clock of RFC 7587), at most
/// [`MAX_PACKET_SAMPLES_48K`].
pub fn packet_duration_samples(packet: &[u8]) -> Result<u32, TocError> {
    let frames = packet_frame_count(packet)?;
    let samples_48k = frames * Toc::parse(packet[0]).frame_samples_48k;
    if samples_48k > MAX_PACKET_SAMPLES_48K {
        return Err(TocError::TooLong { samples_48k });
    }
    Ok(samples_48k)
}
