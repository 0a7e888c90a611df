//! # earshot-opus: Opus for WebRTC-grade legs
//!
//! Opus (RFC 6716) as RTP payload (RFC 7587): the RTP clock is always 48 kHz whatever
//! the audio rate, mono by default. This crate gives the media core three things:
//!
//! - [`OpusEncoder`]: 8, 16 or 48 kHz mono PCM in, one packet out per call, with the
//!   per-leg settings of [`OpusSettings`] (bitrate, complexity, in-band FEC, expected
//!   packet loss, DTX), changeable while running.
//! - [`OpusDecoder`]: packets in, PCM out, plus the two loss paths: concealment
//!   ([`OpusDecoder::decode_lost`], PLC) and recovery of a lost frame from the in-band
//!   FEC carried by the packet after it (`decode(next, out, true)`).
//! - [`packet_frame_count`] and [`packet_duration_samples`]: the TOC parse of RFC 6716
//!   section 3.1 in plain Rust, so the jitter buffer knows a packet's duration (in 48 kHz
//!   samples) without decoding it.
//!
//! The codec itself is libopus, loaded at run time (`dlopen` of `libopus.so.0`, Debian
//! package `libopus0`) rather than linked: the workspace then builds and its other
//! tests run on a machine without libopus, and only Opus legs need it. [`available`]
//! says whether it loaded (and its version); without it [`OpusEncoder::new`] and
//! [`OpusDecoder::new`] return [`OpusError::Unavailable`], which a caller turns into a
//! refused leg, not a failed process. See `docs/codecs.md` for why no binding that
//! builds libopus from source is used. All unsafe code is in one module (`ffi`), every
//! block justified there.
//!
//! What it deliberately does not do: no resampling (the encoder takes 8, 16 or 48 kHz;
//! use `earshot_dsp::resample` between them), no stereo output (stereo packets decode
//! to mono), no jitter buffering or timing, no RTP.
//! States are allocated by libopus at construction (43 KiB per mono encoder, 18 KiB per
//! decoder, libopus 1.3.1); encode and decode never allocate.
//!
//! Contract:
//! - A missing libopus is an error value ([`OpusError::Unavailable`]) from every entry
//!   point that needs it, never a link failure or a panic. The library is loaded once
//!   per process and never unloaded.
//! - Input from the network never panics: every packet either decodes or returns an
//!   [`OpusError`]; sizes are checked before libopus sees them.
//! - Frame sizes are those of RFC 6716: 2.5, 5, 10, 20, 40 or 60 ms at the PCM rate.
//! - TOC parsing agrees with libopus's own `opus_packet_get_nb_samples` on every packet
//!   the RFC calls valid (tested on real packets and arbitrary bytes).

#![deny(unsafe_code)]

mod ffi;
mod toc;

pub use ffi::{
    libopus_packet_frames, libopus_packet_samples_48k, libopus_repacketize, libopus_version,
};
pub use toc::{
    Bandwidth, MAX_PACKET_SAMPLES_48K, Mode, Toc, TocError, packet_duration_samples,
    packet_frame_count,
};

use ffi::{
    OPUS_SET_BITRATE_REQUEST, OPUS_SET_COMPLEXITY_REQUEST, OPUS_SET_DTX_REQUEST,
    OPUS_SET_INBAND_FEC_REQUEST, OPUS_SET_PACKET_LOSS_PERC_REQUEST,
};

/// The RTP clock rate of Opus (RFC 7587 section 4.1), whatever the audio bandwidth.
pub const RTP_CLOCK_HZ: u32 = 48_000;

/// Largest packet a single frame can need (RFC 6716 section 3.2.1: 1275 bytes), times
/// three for a 60 ms encode: a safe output buffer size for [`OpusEncoder::encode`].
pub const MAX_PACKET_BYTES: usize = 3 * 1275 + 7;

/// Errors of this crate. libopus's own codes are kept in [`OpusError::Libopus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpusError {
    /// A setting outside what libopus accepts (which one, and the allowed range).
    BadSetting(&'static str),
    /// PCM length is not 2.5, 5, 10, 20, 40 or 60 ms at the configured rate.
    BadFrameSize {
        /// Samples passed.
        samples: usize,
        /// PCM rate in Hz.
        sample_rate_hz: u32,
    },
    /// An empty packet was passed to `decode` (use `decode_lost` for a gap).
    EmptyPacket,
    /// The libopus shared library could not be loaded (not installed, or not a usable
    /// libopus), so no Opus encoder or decoder can be made in this process.
    Unavailable {
        /// What was tried and what the loader said for each name, e.g.
        /// "tried libopus.so.0: cannot open shared object file: ...; libopus.so: ...".
        reason: &'static str,
    },
    /// libopus refused: a corrupt packet, an output buffer too small for the packet, ...
    Libopus {
        /// The libopus error code (`OPUS_INVALID_PACKET` = -4, `OPUS_BUFFER_TOO_SMALL`
        /// = -2, ...).
        code: i32,
    },
}

impl core::fmt::Display for OpusError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            OpusError::BadSetting(what) => write!(f, "bad Opus setting: {what}"),
            OpusError::BadFrameSize {
                samples,
                sample_rate_hz,
            } => write!(
                f,
                "{samples} samples at {sample_rate_hz} Hz is not an Opus frame size"
            ),
            OpusError::EmptyPacket => f.write_str("empty Opus packet"),
            OpusError::Unavailable { reason } => write!(
                f,
                "Opus is unavailable: the libopus shared library could not be loaded \
                 ({reason}); install it (Debian/Ubuntu package libopus0)"
            ),
            OpusError::Libopus { code } => write!(f, "libopus error {code}"),
        }
    }
}

impl std::error::Error for OpusError {}

fn libopus(code: i32) -> OpusError {
    OpusError::Libopus { code }
}

/// Is libopus loaded? Its version string (`"libopus 1.3.1"`) if so, else
/// [`OpusError::Unavailable`] saying what was tried. The first call loads the library
/// (once per process, failure included); later calls are a load of a pointer. Call it
/// at start-up to log the version, or before offering Opus in SDP.
pub fn available() -> Result<&'static str, OpusError> {
    ffi::api()
        .map(ffi::Api::version)
        .map_err(|reason| OpusError::Unavailable { reason })
}

fn loaded() -> Result<&'static ffi::Api, OpusError> {
    ffi::api().map_err(|reason| OpusError::Unavailable { reason })
}

/// The per-leg encoder settings (what SDP's fmtp and the API carry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpusSettings {
    /// PCM rate in and out of the codec: 8000 (narrowband peers: trunk audio towards a
    /// WebRTC agent, cheapest), 16000 (wideband voice) or 48000. Default 48000, the
    /// native rate of WebRTC endpoints.
    pub sample_rate_hz: u32,
    /// Target bitrate, 6000..=510000 bit/s. Default 32000: transparent wideband
    /// speech with room for FEC (RFC 7587 section 3.1.1 recommends 28-40 kbit/s for
    /// fullband speech; `maxaveragebitrate` lowers it).
    pub bitrate_bps: u32,
    /// Encoder complexity 0..=10. Default 5: measured about half the cost of 10 (see
    /// docs/codecs.md) for a barely audible difference on speech; capacity matters more
    /// here than the last fraction of a dB.
    pub complexity: u8,
    /// In-band FEC (`useinbandfec=1`). Default on: it only costs bits when the far end
    /// reports loss, and WebRTC endpoints expect it.
    pub inband_fec: bool,
    /// Expected packet loss in percent (0..=100), which sizes the FEC. Default 10.
    pub packet_loss_percent: u8,
    /// Discontinuous transmission (`usedtx=1`). Default off: RFC 7587 leaves it to the
    /// receiver to ask, and a monitored call should not look silent to the far end.
    pub dtx: bool,
}

impl Default for OpusSettings {
    fn default() -> Self {
        OpusSettings {
            sample_rate_hz: 48_000,
            bitrate_bps: 32_000,
            complexity: 5,
            inband_fec: true,
            packet_loss_percent: 10,
            dtx: false,
        }
    }
}

fn check_rate(sample_rate_hz: u32) -> Result<(), OpusError> {
    match sample_rate_hz {
        8_000 | 16_000 | 48_000 => Ok(()),
        _ => Err(OpusError::BadSetting(
            "sample rate must be 8000, 16000 or 48000 Hz",
        )),
    }
}

/// Is `samples` one of Opus's frame sizes (2.5 to 60 ms) at `sample_rate_hz`?
pub fn is_frame_size(samples: usize, sample_rate_hz: u32) -> bool {
    let per_2_5_ms = sample_rate_hz as usize / 400;
    [1, 2, 4, 8, 16, 24]
        .iter()
        .any(|&n| samples == n * per_2_5_ms)
}

/// A mono Opus encoder for one leg.
#[derive(Debug)]
pub struct OpusEncoder {
    inner: ffi::Encoder,
    settings: OpusSettings,
}

impl OpusEncoder {
    /// An encoder with `settings` applied (VoIP application).
    /// [`OpusError::Unavailable`] when libopus could not be loaded.
    pub fn new(settings: OpusSettings) -> Result<Self, OpusError> {
        check_rate(settings.sample_rate_hz)?;
        let inner = ffi::Encoder::new(loaded()?, settings.sample_rate_hz).map_err(libopus)?;
        let mut encoder = OpusEncoder { inner, settings };
        encoder.apply(settings)?;
        Ok(encoder)
    }

    /// The settings in force.
    pub fn settings(&self) -> OpusSettings {
        self.settings
    }

    /// Change bitrate, complexity, FEC, loss percentage and DTX while running (a new
    /// fmtp, or a loss report). The sample rate cannot change: make a new encoder.
    pub fn apply(&mut self, settings: OpusSettings) -> Result<(), OpusError> {
        if settings.sample_rate_hz != self.settings.sample_rate_hz {
            return Err(OpusError::BadSetting(
                "the sample rate of a running encoder cannot change",
            ));
        }
        if !(6_000..=510_000).contains(&settings.bitrate_bps) {
            return Err(OpusError::BadSetting("bitrate must be 6000..=510000 bit/s"));
        }
        if settings.complexity > 10 {
            return Err(OpusError::BadSetting("complexity must be 0..=10"));
        }
        if settings.packet_loss_percent > 100 {
            return Err(OpusError::BadSetting("packet loss must be 0..=100 percent"));
        }
        let set = |e: &mut ffi::Encoder, request, value| e.set(request, value).map_err(libopus);
        set(
            &mut self.inner,
            OPUS_SET_BITRATE_REQUEST,
            settings.bitrate_bps as i32,
        )?;
        set(
            &mut self.inner,
            OPUS_SET_COMPLEXITY_REQUEST,
            i32::from(settings.complexity),
        )?;
        set(
            &mut self.inner,
            OPUS_SET_INBAND_FEC_REQUEST,
            i32::from(settings.inband_fec),
        )?;
        set(
            &mut self.inner,
            OPUS_SET_PACKET_LOSS_PERC_REQUEST,
            i32::from(settings.packet_loss_percent),
        )?;
        set(
            &mut self.inner,
            OPUS_SET_DTX_REQUEST,
            i32::from(settings.dtx),
        )?;
        self.settings = settings;
        Ok(())
    }

    /// The encoder's algorithmic delay, in samples at its PCM rate.
    pub fn lookahead_samples(&mut self) -> Result<u32, OpusError> {
        let v = self.inner.lookahead().map_err(libopus)?;
        u32::try_from(v).map_err(|_| libopus(v))
    }

    /// Encode one frame of `pcm` (2.5 to 60 ms at the PCM rate) into `out`; returns the
    /// packet length. With DTX on, a silent frame may give a 1- or 2-byte packet, which
    /// RFC 7587 says need not be sent (the caller decides). [`MAX_PACKET_BYTES`] is always
    /// enough room.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, OpusError> {
        let rate = self.settings.sample_rate_hz;
        if !is_frame_size(pcm.len(), rate) {
            return Err(OpusError::BadFrameSize {
                samples: pcm.len(),
                sample_rate_hz: rate,
            });
        }
        self.inner.encode(pcm, out).map_err(libopus)
    }
}

/// A mono Opus decoder for one incoming stream.
#[derive(Debug)]
pub struct OpusDecoder {
    inner: ffi::Decoder,
    sample_rate_hz: u32,
}

impl OpusDecoder {
    /// A decoder giving mono PCM at `sample_rate_hz` (8000, 16000 or 48000), whatever the
    /// packets' bandwidth or channel count. [`OpusError::Unavailable`] when libopus
    /// could not be loaded.
    pub fn new(sample_rate_hz: u32) -> Result<Self, OpusError> {
        check_rate(sample_rate_hz)?;
        let inner = ffi::Decoder::new(loaded()?, sample_rate_hz).map_err(libopus)?;
        Ok(OpusDecoder {
            inner,
            sample_rate_hz,
        })
    }

    /// Output PCM rate in Hz.
    pub fn sample_rate_hz(&self) -> u32 {
        self.sample_rate_hz
    }

    /// Decode `packet` into `out`; returns the samples written.
    ///
    /// With `fec = false`, `out` must have room for the packet's whole duration (up to
    /// 120 ms). With `fec = true`, the packet is the one *after* a lost frame, and what
    /// is decoded is that lost frame, from the in-band FEC the packet carries: `out.len()`
    /// must then be exactly the lost frame's duration. Without FEC data in the packet,
    /// libopus conceals instead. Either way, decode the packet itself normally next.
    pub fn decode(
        &mut self,
        packet: &[u8],
        out: &mut [i16],
        fec: bool,
    ) -> Result<usize, OpusError> {
        if packet.is_empty() {
            return Err(OpusError::EmptyPacket);
        }
        if fec && !is_frame_size(out.len(), self.sample_rate_hz) {
            return Err(OpusError::BadFrameSize {
                samples: out.len(),
                sample_rate_hz: self.sample_rate_hz,
            });
        }
        self.inner.decode(Some(packet), out, fec).map_err(libopus)
    }

    /// Conceal a lost stretch of `out.len()` samples (a multiple of 2.5 ms) from the
    /// decoder's history (packet loss concealment).
    pub fn decode_lost(&mut self, out: &mut [i16]) -> Result<usize, OpusError> {
        let per_2_5_ms = self.sample_rate_hz as usize / 400;
        if out.is_empty() || !out.len().is_multiple_of(per_2_5_ms) {
            return Err(OpusError::BadFrameSize {
                samples: out.len(),
                sample_rate_hz: self.sample_rate_hz,
            });
        }
        self.inner.decode(None, out, false).map_err(libopus)
    }

    /// Forget the stream (new SSRC): the next packet decodes as the first.
    pub fn reset(&mut self) {
        self.inner.reset();
    }
}

#[cfg(test)]
mod tests;
