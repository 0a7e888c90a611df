//! Per-leg codec state: one [`Decoder`] and one [`Encoder`] per leg, whatever the codec.
//!
//! Every codec of SPEC section 5 behind one enum each, so that the jitter buffer and the
//! tick path call one function per frame and never know which codec runs: G.711 (ITU-T
//! tables, stateless), G.722 (our ADPCM, 16 kHz PCM on an 8 kHz RTP clock), L16
//! (big-endian samples, RFC 3551 4.5.11) and Opus (libopus through `earshot-opus`).
//!
//! What it deliberately does not do: no resampling (the leg puts a resampler beside its
//! codec when the session mixes at another rate), no timing, no RTP. Construction is the
//! control path: an Opus state is allocated there (libopus, tens of KiB), and nothing
//! here allocates after it.
//!
//! Contract:
//! - A decoder's PCM rate is fixed at construction ([`Decoder::pcm_rate`]): the codec's
//!   own, except Opus, which decodes straight to the rate the caller asks for (8, 16 or
//!   48 kHz), so that an Opus leg in a narrowband session never resamples.
//! - Bytes from the network never panic: a payload of the wrong length or a corrupt
//!   Opus packet is a [`PayloadError`] or decodes to silence, counted by the caller.
//! - Packet durations are whole multiples of [`UNIT_MS`] from 10 to 60 ms
//!   ([`payload_units`]); anything else is refused, since the jitter buffer plays
//!   10 ms units.

use earshot_dsp::g711;
use earshot_dsp::g722::{G722Decoder, G722Encoder};
use earshot_opus::{OpusDecoder, OpusEncoder, OpusError, OpusSettings};

use crate::{Codec, SampleRate, UNIT_MS};

/// The most 10 ms units one packet may carry (60 ms, the longest ptime).
pub const MAX_PACKET_UNITS: usize = 6;

/// Bytes one 10 ms unit of Opus may take in the jitter buffer: 256 kbit/s, far above
/// any voice bitrate (WebRTC sends 32-64 kbit/s). Larger packets are refused.
pub const OPUS_UNIT_BYTES: usize = 320;

/// Why a payload cannot be played.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not a whole number of 10 ms units from 10 to 60 ms (or an odd L16 length).
    #[error("payload is not 10 to 60 ms in whole 10 ms units")]
    BadDuration,
    /// An Opus packet whose TOC does not parse.
    #[error("Opus packet with a malformed TOC")]
    BadToc,
    /// An Opus packet too large for the units it covers ([`OPUS_UNIT_BYTES`] each).
    #[error("Opus packet larger than the jitter buffer holds for its duration")]
    TooLarge,
}

/// The duration of `payload` in 10 ms units (1..=[`MAX_PACKET_UNITS`]): from its
/// length for the fixed-rate codecs, from the TOC (RFC 6716 3.1) for Opus.
pub fn payload_units(codec: Codec, payload: &[u8]) -> Result<usize, PayloadError> {
    let units = match codec.payload_bytes_per_ms() {
        Some(per_ms) => {
            let per_unit = (per_ms * UNIT_MS) as usize;
            if payload.is_empty() || !payload.len().is_multiple_of(per_unit) {
                return Err(PayloadError::BadDuration);
            }
            payload.len() / per_unit
        }
        None => {
            let samples_48k = earshot_opus::packet_duration_samples(payload)
                .map_err(|_| PayloadError::BadToc)? as usize;
            let per_unit = (earshot_opus::RTP_CLOCK_HZ / 1_000 * UNIT_MS) as usize;
            if samples_48k == 0 || !samples_48k.is_multiple_of(per_unit) {
                return Err(PayloadError::BadDuration);
            }
            let units = samples_48k / per_unit;
            if payload.len() > units * OPUS_UNIT_BYTES {
                return Err(PayloadError::TooLarge);
            }
            units
        }
    };
    if (1..=MAX_PACKET_UNITS).contains(&units) {
        Ok(units)
    } else {
        Err(PayloadError::BadDuration)
    }
}

/// Whether Opus legs can run in this process: libopus's version, or why it did not
/// load (the message a refused Opus leg carries).
pub fn opus_available() -> Result<&'static str, OpusError> {
    earshot_opus::available()
}

/// Bytes the jitter buffer keeps per 10 ms unit of `codec`.
pub const fn unit_bytes(codec: Codec) -> usize {
    match codec.payload_bytes_per_ms() {
        Some(per_ms) => (per_ms * UNIT_MS) as usize,
        None => OPUS_UNIT_BYTES,
    }
}

/// The PCM rate an Opus state runs at in a session mixing at `mix_rate`: the mix rate
/// itself (libopus takes every one of ours), so an Opus leg never needs a resampler.
/// Every other codec runs at its own audio rate.
pub const fn pcm_rate(codec: Codec, mix_rate: SampleRate) -> SampleRate {
    match codec {
        Codec::Opus => mix_rate,
        other => other.audio_rate(),
    }
}

/// Decodes one leg's payloads to linear PCM.
#[derive(Debug)]
pub enum Decoder {
    /// G.711 mu-law or A-law: stateless table lookups, through the kernel chosen once
    /// per process for this law (held here: no dispatch per frame).
    G711(Codec, g711::DecodeFn),
    /// G.722: ADPCM state (260 bytes), 16 kHz out.
    G722(Box<G722Decoder>),
    /// L16 at the given rate: byte swapping.
    L16(SampleRate),
    /// Opus: a libopus decoder at the session's mix rate.
    Opus(OpusDecoder),
}

impl Decoder {
    /// A decoder for `codec`; Opus decodes to `opus_rate` (control path: allocates).
    pub fn new(codec: Codec, opus_rate: SampleRate) -> Result<Decoder, OpusError> {
        Ok(match codec {
            Codec::Pcmu | Codec::Pcma => Decoder::g711(codec),
            Codec::G722 => Decoder::G722(Box::new(G722Decoder::new())),
            Codec::L16(rate) => Decoder::L16(rate),
            Codec::Opus => Decoder::Opus(OpusDecoder::new(opus_rate.hz())?),
        })
    }

    /// A G.711 decoder for `codec` (`Pcma`: A-law, anything else mu-law).
    pub fn g711(codec: Codec) -> Decoder {
        let k = g711::kernels();
        let kernel = if codec == Codec::Pcma {
            k.alaw_decode
        } else {
            k.ulaw_decode
        };
        Decoder::G711(codec, kernel)
    }

    /// The rate of the PCM it writes.
    pub fn pcm_rate(&self) -> SampleRate {
        match self {
            Decoder::G711(..) => SampleRate::Hz8000,
            Decoder::G722(_) => SampleRate::Hz16000,
            Decoder::L16(rate) => *rate,
            Decoder::Opus(d) => {
                SampleRate::from_hz(d.sample_rate_hz()).unwrap_or(SampleRate::Hz48000)
            }
        }
    }

    /// True when decoding leaves no state behind, so the same bytes can be decoded
    /// again later (to conceal a loss) with the same result.
    pub fn is_stateless(&self) -> bool {
        matches!(self, Decoder::G711(..) | Decoder::L16(_))
    }

    /// True when the codec conceals losses itself (Opus PLC and FEC); the others are
    /// concealed by a faded repeat of the last audio.
    pub fn conceals(&self) -> bool {
        matches!(self, Decoder::Opus(_))
    }

    /// Decodes `payload` into the start of `out`; returns the samples written. For the
    /// fixed-rate codecs `payload` may be any whole number of samples; for Opus it is one
    /// packet and `out` must hold its whole duration. A packet libopus refuses leaves the
    /// expected span silent (`expected` samples) rather than failing the tick.
    pub fn decode(&mut self, payload: &[u8], out: &mut [i16], expected: usize) -> usize {
        match self {
            Decoder::G711(_, kernel) => {
                let n = payload.len().min(out.len());
                kernel(&payload[..n], &mut out[..n]);
                n
            }
            Decoder::G722(d) => d.decode(payload, out),
            Decoder::L16(_) => {
                let n = (payload.len() / 2).min(out.len());
                for (o, b) in out[..n].iter_mut().zip(payload.chunks_exact(2)) {
                    *o = i16::from_be_bytes([b[0], b[1]]);
                }
                n
            }
            Decoder::Opus(d) => match d.decode(payload, out, false) {
                Ok(n) => n,
                Err(_) => {
                    let n = expected.min(out.len());
                    out[..n].fill(0);
                    n
                }
            },
        }
    }

    /// Opus only: recovers the `out.len()` samples lost just before `next` from the
    /// in-band FEC `next` carries (libopus conceals when it carries none). False for
    /// the other codecs or when libopus refuses.
    pub fn decode_fec(&mut self, next: &[u8], out: &mut [i16]) -> bool {
        match self {
            Decoder::Opus(d) => d.decode(next, out, true).is_ok(),
            _ => false,
        }
    }

    /// Opus only: packet loss concealment for `out.len()` samples (a multiple of
    /// 2.5 ms). False for the other codecs or when libopus refuses.
    pub fn conceal(&mut self, out: &mut [i16]) -> bool {
        match self {
            Decoder::Opus(d) => d.decode_lost(out).is_ok(),
            _ => false,
        }
    }

    /// Forgets the stream (the next payload decodes as the first).
    pub fn reset(&mut self) {
        match self {
            Decoder::G722(d) => **d = G722Decoder::new(),
            Decoder::Opus(d) => d.reset(),
            Decoder::G711(..) | Decoder::L16(_) => {}
        }
    }
}

/// Encodes one leg's outgoing frames.
#[derive(Debug)]
pub enum Encoder {
    /// G.711 mu-law or A-law, through the kernel chosen once per process for this law
    /// (held here: no table lookup per frame).
    G711(Codec, g711::EncodeFn),
    /// G.722 ADPCM state, 16 kHz in.
    G722(Box<G722Encoder>),
    /// L16 at the given rate.
    L16(SampleRate),
    /// Opus: a libopus encoder at the session's mix rate.
    Opus(OpusEncoder),
}

impl Encoder {
    /// An encoder for `codec`; Opus takes PCM at `opus.sample_rate_hz` with the leg's
    /// settings (control path: allocates).
    pub fn new(codec: Codec, opus: OpusSettings) -> Result<Encoder, OpusError> {
        Ok(match codec {
            Codec::Pcmu | Codec::Pcma => {
                let k = g711::kernels();
                let kernel = if codec == Codec::Pcma {
                    k.alaw_encode
                } else {
                    k.ulaw_encode
                };
                Encoder::G711(codec, kernel)
            }
            Codec::G722 => Encoder::G722(Box::new(G722Encoder::new())),
            Codec::L16(rate) => Encoder::L16(rate),
            Codec::Opus => Encoder::Opus(OpusEncoder::new(opus)?),
        })
    }

    /// The rate of the PCM it takes.
    pub fn pcm_rate(&self) -> SampleRate {
        match self {
            Encoder::G711(..) => SampleRate::Hz8000,
            Encoder::G722(_) => SampleRate::Hz16000,
            Encoder::L16(rate) => *rate,
            Encoder::Opus(e) => {
                SampleRate::from_hz(e.settings().sample_rate_hz).unwrap_or(SampleRate::Hz48000)
            }
        }
    }

    /// Encodes one frame of `pcm` into `out`; returns the payload length (0 when libopus
    /// refuses, which the caller treats as nothing to send).
    #[inline]
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> usize {
        match self {
            Encoder::G711(_, kernel) => {
                let n = pcm.len().min(out.len());
                kernel(&pcm[..n], &mut out[..n]);
                n
            }
            Encoder::G722(e) => e.encode(pcm, out),
            Encoder::L16(_) => {
                let n = pcm.len().min(out.len() / 2);
                for (b, s) in out.chunks_exact_mut(2).zip(&pcm[..n]) {
                    b.copy_from_slice(&s.to_be_bytes());
                }
                2 * n
            }
            Encoder::Opus(e) => e.encode(pcm, out).unwrap_or(0),
        }
    }

    /// True when the state carries history (so a listener that shared another's encoded
    /// frames must take over that encoder's state when it starts encoding its own).
    pub fn is_stateful(&self) -> bool {
        matches!(self, Encoder::G722(_) | Encoder::Opus(_))
    }

    /// Copies another G.722 encoder's state into this one (a follower of a shared mix
    /// becoming a leader: the far end's decoder followed the leader's bitstream). False
    /// when there is nothing that can be copied (Opus states are opaque; Opus decoders
    /// resynchronise within a frame anyway).
    pub fn take_state_of(&mut self, other: &Encoder) -> bool {
        match (self, other) {
            (Encoder::G722(mine), Encoder::G722(theirs)) => {
                mine.clone_from(theirs);
                true
            }
            _ => false,
        }
    }
}

/// Concealment and playout helpers shared by every codec.
pub mod fade {
    /// Q15 gain at the start of concealed unit `run` (0-based): halving every 20 ms,
    /// i.e. 2^(-run/2) per 10 ms unit. Beyond the table the gain is zero.
    pub const GAIN_Q15: [i32; 16] = [
        32_768, 23_170, 16_384, 11_585, 8_192, 5_793, 4_096, 2_896, 2_048, 1_448, 1_024, 724, 512,
        362, 256, 181,
    ];

    /// Scales `out` in place by a gain ramping linearly from that of unit `run` to that
    /// of unit `run + 1`, so consecutive concealed units join without a step.
    pub fn apply(out: &mut [i16], run: usize) {
        let g_start = GAIN_Q15.get(run).copied().unwrap_or(0);
        let g_end = GAIN_Q15.get(run + 1).copied().unwrap_or(0);
        let n = out.len().max(1) as i32;
        for (i, o) in out.iter_mut().enumerate() {
            let g = g_start - (g_start - g_end) * i as i32 / n;
            *o = ((i32::from(*o) * g) >> 15) as i16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: SampleRate, hz: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                (8_000.0
                    * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate.hz())).sin())
                    as i16
            })
            .collect()
    }

    #[test]
    fn payload_durations_come_from_length_or_toc() {
        assert_eq!(payload_units(Codec::Pcmu, &[0; 160]), Ok(2));
        assert_eq!(payload_units(Codec::Pcma, &[0; 480]), Ok(6));
        assert_eq!(
            payload_units(Codec::Pcmu, &[0; 560]),
            Err(PayloadError::BadDuration)
        );
        assert_eq!(
            payload_units(Codec::Pcmu, &[0; 159]),
            Err(PayloadError::BadDuration)
        );
        assert_eq!(
            payload_units(Codec::Pcmu, &[]),
            Err(PayloadError::BadDuration)
        );
        // G.722: one byte per two 16 kHz samples, i.e. per 8 kHz RTP tick.
        assert_eq!(payload_units(Codec::G722, &[0; 240]), Ok(3));
        assert_eq!(
            payload_units(Codec::L16(SampleRate::Hz16000), &[0; 640]),
            Ok(2)
        );
        assert_eq!(
            payload_units(Codec::L16(SampleRate::Hz16000), &[0; 641]),
            Err(PayloadError::BadDuration)
        );
        // Opus TOC: config 1 (SILK NB 20 ms), code 0: one 20 ms frame.
        assert_eq!(payload_units(Codec::Opus, &[1 << 3, 0, 0]), Ok(2));
        // Code 1: two 20 ms frames.
        assert_eq!(payload_units(Codec::Opus, &[(1 << 3) | 1, 0, 0]), Ok(4));
        // Config 16 (CELT NB 2.5 ms): not whole 10 ms units.
        assert_eq!(
            payload_units(Codec::Opus, &[16 << 3, 0]),
            Err(PayloadError::BadDuration)
        );
        // Config 3 (SILK NB 60 ms), code 1 (two frames): 120 ms, too long.
        assert_eq!(
            payload_units(Codec::Opus, &[(3 << 3) | 1, 0]),
            Err(PayloadError::BadDuration)
        );
        assert_eq!(payload_units(Codec::Opus, &[]), Err(PayloadError::BadToc));
        let big = vec![1u8 << 3; 2 * OPUS_UNIT_BYTES + 1];
        assert_eq!(
            payload_units(Codec::Opus, &big),
            Err(PayloadError::TooLarge)
        );
    }

    #[test]
    fn l16_is_big_endian_and_round_trips() {
        let mut e = Encoder::new(Codec::L16(SampleRate::Hz8000), OpusSettings::default()).unwrap();
        let mut d = Decoder::new(Codec::L16(SampleRate::Hz8000), SampleRate::Hz8000).unwrap();
        let pcm = [1i16, -2, 0x1234, i16::MIN];
        let mut bytes = [0u8; 8];
        assert_eq!(e.encode(&pcm, &mut bytes), 8);
        assert_eq!(bytes[..6], [0, 1, 0xff, 0xfe, 0x12, 0x34]);
        let mut back = [0i16; 4];
        assert_eq!(d.decode(&bytes, &mut back, 4), 4);
        assert_eq!(back, pcm);
        assert!(d.is_stateless() && !d.conceals());
    }

    #[test]
    fn g722_codec_state_round_trips_a_tone_at_16_khz() {
        let mut e = Encoder::new(Codec::G722, OpusSettings::default()).unwrap();
        let mut d = Decoder::new(Codec::G722, SampleRate::Hz8000).unwrap();
        assert_eq!(
            (e.pcm_rate(), d.pcm_rate()),
            (SampleRate::Hz16000, SampleRate::Hz16000)
        );
        let pcm = tone(SampleRate::Hz16000, 1_000.0, 3_200);
        let mut out = vec![0i16; pcm.len()];
        for (i, o) in pcm.chunks(320).zip(out.chunks_mut(320)) {
            let mut bytes = [0u8; 160];
            assert_eq!(e.encode(i, &mut bytes), 160);
            assert_eq!(d.decode(&bytes, o, 320), 320);
        }
        // ADPCM delay is a few samples: compare energy, not samples.
        let energy = |x: &[i16]| x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
        let ratio = energy(&out[1_600..]) / energy(&pcm[1_600..]);
        assert!((0.8..1.25).contains(&ratio), "energy ratio {ratio}");
        assert!(!d.is_stateless() && e.is_stateful());
    }

    #[test]
    fn opus_runs_at_the_mix_rate_and_conceals() {
        if let Err(e) = earshot_opus::available() {
            println!("SKIPPED: libopus not found ({e})");
            return;
        }
        assert_eq!(
            pcm_rate(Codec::Opus, SampleRate::Hz8000),
            SampleRate::Hz8000
        );
        assert_eq!(
            pcm_rate(Codec::G722, SampleRate::Hz8000),
            SampleRate::Hz16000
        );
        for rate in SampleRate::ALL {
            let settings = OpusSettings {
                sample_rate_hz: rate.hz(),
                ..OpusSettings::default()
            };
            let mut e = Encoder::new(Codec::Opus, settings).unwrap();
            let mut d = Decoder::new(Codec::Opus, rate).unwrap();
            assert_eq!((e.pcm_rate(), d.pcm_rate()), (rate, rate));
            let frame = rate.samples_in_ms(20);
            let pcm = tone(rate, 400.0, frame);
            let mut packet = [0u8; 400];
            let n = e.encode(&pcm, &mut packet);
            assert!(n > 0);
            assert_eq!(payload_units(Codec::Opus, &packet[..n]), Ok(2));
            let mut out = vec![0i16; frame];
            assert_eq!(d.decode(&packet[..n], &mut out, frame), frame);
            assert!(d.conceal(&mut out[..frame / 2]));
            assert!(d.decode_fec(&packet[..n], &mut out));
            // A corrupt packet decodes to silence of the expected length, never panics.
            out.fill(7);
            assert_eq!(d.decode(&[0xff, 0xff, 0xff], &mut out, frame), frame);
            assert!(out.iter().all(|&s| s == 0));
        }
    }

    #[test]
    fn the_fade_halves_every_twenty_milliseconds() {
        for (run, pair) in fade::GAIN_Q15.windows(3).enumerate() {
            let expected = pair[0] as f64 / 2.0;
            assert!(
                (f64::from(pair[2]) - expected).abs() <= 1.0,
                "unit {run}: {pair:?}"
            );
        }
        let mut x = [10_000i16; 80];
        fade::apply(&mut x, 0);
        assert_eq!(x[0], 10_000);
        assert!(x[79] > 7_000 && x[79] < 7_200, "{}", x[79]);
        let mut y = [10_000i16; 80];
        fade::apply(&mut y, 40);
        assert!(y.iter().all(|&s| s == 0));
    }
}
