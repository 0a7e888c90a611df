//! A leg's media as requested (`message Media`), validated once at the API edge and
//! persisted with the command that introduced it.

use std::net::SocketAddr;

use earshot_engine_api::{Codec, Family, MediaConfig, OpusParams, SampleRate};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::proto;

/// Packetisation times the engine supports (SPEC section 3).
pub use earshot_engine_api::PTIMES_MS;

/// Default ptime when the request leaves it 0.
pub const DEFAULT_PTIME_MS: u32 = 20;

/// A validated `message Media`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaSpec {
    /// Peer RTP address; `None` latches from the first packet.
    pub remote: Option<SocketAddr>,
    /// Codec (with its rate, for L16).
    pub codec: Codec,
    /// RTP payload type, 0..=127.
    pub payload_type: u8,
    /// One of [`PTIMES_MS`].
    pub ptime_ms: u32,
    /// RFC 4733 payload type, 0..=127 and different from `payload_type`.
    pub telephone_event_pt: Option<u8>,
    /// RTCP multiplexed on the RTP port.
    pub rtcp_mux: bool,
    /// Supervisor phone answers by itself (always true for non-supervisors and barge).
    pub auto_answer: bool,
    /// The peer's a=maxptime, if given.
    #[serde(default)]
    pub max_ptime_ms: Option<u32>,
    /// Opus fmtp parameters (defaults for other codecs).
    #[serde(default)]
    pub opus: OpusParams,
}

impl MediaSpec {
    /// Validates `media`, naming fields under `prefix` (e.g. `"participants[1].media"`).
    pub fn from_proto(prefix: &str, media: Option<&proto::Media>) -> Result<MediaSpec, ApiError> {
        let Some(m) = media else {
            return Err(ApiError::missing(prefix));
        };
        let field = |name: &str| format!("{prefix}.{name}");
        let remote = if m.remote.is_empty() {
            None
        } else {
            let addr: SocketAddr = m.remote.parse().map_err(|_| {
                ApiError::invalid(
                    field("remote"),
                    format!(
                        "\"{}\" is not an \"ip:port\" address",
                        crate::error::quote(&m.remote)
                    ),
                )
            })?;
            Some(addr)
        };
        let codec = codec_from_proto(m.codec, m.clock_rate_hz)
            .map_err(|(name, message)| ApiError::invalid(field(name), message))?;
        let payload_type = u8::try_from(m.payload_type)
            .ok()
            .filter(|pt| *pt <= 127)
            .ok_or_else(|| {
                ApiError::invalid(
                    field("payload_type"),
                    format!("payload type {} is not 0..=127", m.payload_type),
                )
            })?;
        let ptime_ms = if m.ptime_ms == 0 {
            DEFAULT_PTIME_MS
        } else {
            m.ptime_ms
        };
        let telephone_event_pt =
            match m.telephone_event_pt {
                None => None,
                Some(pt) => Some(u8::try_from(pt).ok().filter(|pt| *pt <= 127).ok_or_else(
                    || {
                        ApiError::invalid(
                            field("telephone_event_pt"),
                            format!("telephone-event payload type {pt} is not 0..=127"),
                        )
                    },
                )?),
            };
        let opus = match &m.opus {
            None => OpusParams::default(),
            Some(o) => OpusParams {
                use_inband_fec: o.use_inband_fec,
                use_dtx: o.use_dtx,
                max_average_bitrate_bps: o.max_average_bitrate_bps,
                max_playback_rate_hz: o.max_playback_rate_hz,
                sprop_max_capture_rate_hz: o.sprop_max_capture_rate_hz,
                stereo: o.stereo,
                complexity: match o.complexity {
                    None => None,
                    Some(c) => {
                        Some(u8::try_from(c).ok().filter(|c| *c <= 10).ok_or_else(|| {
                            ApiError::invalid(
                                field("opus.complexity"),
                                format!("complexity {c} is not 0..=10"),
                            )
                        })?)
                    }
                },
            },
        };
        let spec = MediaSpec {
            remote,
            codec,
            payload_type,
            ptime_ms,
            telephone_event_pt,
            rtcp_mux: m.rtcp_mux,
            auto_answer: m.auto_answer.unwrap_or(true),
            max_ptime_ms: m.max_ptime_ms,
            opus,
        };
        // The engine's own validator (earshot-engine-api): the sidecar refuses up front
        // exactly what the engine would refuse when the leg is configured.
        spec.engine_config(false)
            .validate()
            .map_err(|e| ApiError::invalid(field(e.field), e.message))?;
        Ok(spec)
    }

    /// The address family of the local port to allocate: that of the remote, IPv4 when
    /// it is to be learned.
    pub fn family(&self) -> Family {
        match self.remote {
            Some(SocketAddr::V6(_)) => Family::V6,
            _ => Family::V4,
        }
    }

    /// The engine's configuration for this leg.
    pub fn engine_config(&self, report_first_packet: bool) -> MediaConfig {
        MediaConfig {
            remote: self.remote,
            codec: self.codec,
            payload_type: self.payload_type,
            ptime_ms: self.ptime_ms,
            telephone_event_pt: self.telephone_event_pt,
            rtcp_mux: self.rtcp_mux,
            report_first_packet,
            max_ptime_ms: self.max_ptime_ms,
            opus: self.opus,
        }
    }

    /// Back to the wire form.
    pub fn to_proto(&self) -> proto::Media {
        proto::Media {
            remote: self.remote.map(|a| a.to_string()).unwrap_or_default(),
            codec: match self.codec {
                Codec::Pcmu => proto::Codec::Pcmu,
                Codec::Pcma => proto::Codec::Pcma,
                Codec::G722 => proto::Codec::G722,
                Codec::Opus => proto::Codec::Opus,
                Codec::L16(_) => proto::Codec::L16,
            } as i32,
            payload_type: u32::from(self.payload_type),
            ptime_ms: self.ptime_ms,
            telephone_event_pt: self.telephone_event_pt.map(u32::from),
            rtcp_mux: self.rtcp_mux,
            auto_answer: Some(self.auto_answer),
            clock_rate_hz: self.codec.rtp_clock_hz(),
            max_ptime_ms: self.max_ptime_ms,
            opus: (self.codec == Codec::Opus).then(|| proto::OpusParams {
                use_inband_fec: self.opus.use_inband_fec,
                use_dtx: self.opus.use_dtx,
                max_average_bitrate_bps: self.opus.max_average_bitrate_bps,
                max_playback_rate_hz: self.opus.max_playback_rate_hz,
                sprop_max_capture_rate_hz: self.opus.sprop_max_capture_rate_hz,
                stereo: self.opus.stereo,
                complexity: self.opus.complexity.map(u32::from),
            }),
        }
    }
}

/// The codec of `message Media` from its enum and a=rtpmap clock rate (`clock_rate_hz`,
/// 0 meaning the codec's own). On refusal, the field to name and why.
fn codec_from_proto(codec: i32, clock_rate_hz: u32) -> Result<Codec, (&'static str, String)> {
    let codec = match proto::Codec::try_from(codec) {
        Ok(proto::Codec::Pcmu) => Codec::Pcmu,
        Ok(proto::Codec::Pcma) => Codec::Pcma,
        Ok(proto::Codec::G722) => Codec::G722,
        Ok(proto::Codec::Opus) => Codec::Opus,
        Ok(proto::Codec::L16) => {
            return SampleRate::from_hz(clock_rate_hz)
                .map(Codec::L16)
                .ok_or_else(|| {
                    (
                        "clock_rate_hz",
                        format!(
                            "L16 at {clock_rate_hz} Hz is not supported (8000, 16000 or 48000)"
                        ),
                    )
                });
        }
        _ => {
            return Err((
                "codec",
                format!(
                    "codec {codec} is not CODEC_PCMU, CODEC_PCMA, CODEC_G722, CODEC_OPUS or \
                     CODEC_L16"
                ),
            ));
        }
    };
    if clock_rate_hz != 0 && clock_rate_hz != codec.rtp_clock_hz() {
        return Err((
            "clock_rate_hz",
            format!(
                "{} runs on a {} Hz RTP clock, not {clock_rate_hz}",
                codec.sdp_name(),
                codec.rtp_clock_hz()
            ),
        ));
    }
    Ok(codec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcmu() -> proto::Media {
        proto::Media {
            remote: "127.0.0.1:4000".into(),
            codec: proto::Codec::Pcmu as i32,
            payload_type: 0,
            ptime_ms: 20,
            telephone_event_pt: Some(101),
            rtcp_mux: true,
            auto_answer: None,
            ..Default::default()
        }
    }

    fn field_of(e: ApiError) -> String {
        e.field.expect("field named")
    }

    #[test]
    fn valid_media_round_trips_through_the_wire_form() {
        let spec = MediaSpec::from_proto("media", Some(&pcmu())).unwrap();
        assert!(spec.auto_answer, "auto_answer defaults to true");
        let back = MediaSpec::from_proto("media", Some(&spec.to_proto())).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn every_malformed_field_is_named() {
        let mut m = pcmu();
        m.remote = "not-an-address".into();
        assert_eq!(
            field_of(MediaSpec::from_proto("p.media", Some(&m)).unwrap_err()),
            "p.media.remote"
        );
        let mut m = pcmu();
        m.remote = "0.0.0.0:4000".into();
        assert_eq!(
            field_of(MediaSpec::from_proto("media", Some(&m)).unwrap_err()),
            "media.remote"
        );
        let mut m = pcmu();
        m.codec = 0;
        assert_eq!(
            field_of(MediaSpec::from_proto("media", Some(&m)).unwrap_err()),
            "media.codec"
        );
        let mut m = pcmu();
        m.payload_type = 128;
        assert_eq!(
            field_of(MediaSpec::from_proto("media", Some(&m)).unwrap_err()),
            "media.payload_type"
        );
        let mut m = pcmu();
        m.ptime_ms = 25;
        assert_eq!(
            field_of(MediaSpec::from_proto("media", Some(&m)).unwrap_err()),
            "media.ptime_ms"
        );
        let mut m = pcmu();
        m.telephone_event_pt = Some(0);
        assert_eq!(
            field_of(MediaSpec::from_proto("media", Some(&m)).unwrap_err()),
            "media.telephone_event_pt"
        );
        assert_eq!(
            field_of(MediaSpec::from_proto("media", None).unwrap_err()),
            "media"
        );
    }

    #[test]
    fn the_engine_validator_refuses_rtcp_payload_types_and_comfort_noise_dtmf() {
        for pt in [72, 95] {
            let mut m = pcmu();
            m.payload_type = pt;
            assert_eq!(
                field_of(MediaSpec::from_proto("media", Some(&m)).unwrap_err()),
                "media.payload_type",
                "payload type {pt}"
            );
        }
        let mut m = pcmu();
        m.telephone_event_pt = Some(13);
        assert_eq!(
            field_of(MediaSpec::from_proto("media", Some(&m)).unwrap_err()),
            "media.telephone_event_pt"
        );
    }

    #[test]
    fn wideband_codecs_map_with_their_clock_and_opus_parameters() {
        let mut m = pcmu();
        m.codec = proto::Codec::G722 as i32;
        m.payload_type = 9;
        let spec = MediaSpec::from_proto("media", Some(&m)).unwrap();
        assert_eq!(spec.codec, Codec::G722);
        assert_eq!(spec.to_proto().clock_rate_hz, 8_000);
        m.clock_rate_hz = 16_000;
        assert_eq!(
            field_of(MediaSpec::from_proto("media", Some(&m)).unwrap_err()),
            "media.clock_rate_hz",
            "G.722's RTP clock is 8 kHz (RFC 3551)"
        );
        let mut m = pcmu();
        m.codec = proto::Codec::L16 as i32;
        m.payload_type = 96;
        assert_eq!(
            field_of(MediaSpec::from_proto("media", Some(&m)).unwrap_err()),
            "media.clock_rate_hz",
            "L16 needs its rate"
        );
        m.clock_rate_hz = 16_000;
        let spec = MediaSpec::from_proto("media", Some(&m)).unwrap();
        assert_eq!(spec.codec, Codec::L16(SampleRate::Hz16000));
        assert_eq!(
            MediaSpec::from_proto("media", Some(&spec.to_proto())).unwrap(),
            spec
        );
        m.clock_rate_hz = 48_000;
        assert_eq!(
            field_of(MediaSpec::from_proto("media", Some(&m)).unwrap_err()),
            "media.ptime_ms",
            "20 ms of L16 at 48 kHz does not fit one packet"
        );
        let mut m = pcmu();
        m.codec = proto::Codec::Opus as i32;
        m.payload_type = 111;
        m.max_ptime_ms = Some(60);
        m.opus = Some(proto::OpusParams {
            use_inband_fec: true,
            max_average_bitrate_bps: Some(24_000),
            max_playback_rate_hz: Some(16_000),
            stereo: true,
            complexity: Some(3),
            ..Default::default()
        });
        let spec = MediaSpec::from_proto("media", Some(&m)).unwrap();
        assert_eq!(spec.codec, Codec::Opus);
        assert!(spec.opus.use_inband_fec && spec.opus.stereo);
        assert_eq!(spec.opus.bitrate_bps(), 24_000);
        assert_eq!(spec.opus.playback_rate(), SampleRate::Hz16000);
        let back = spec.to_proto();
        assert_eq!(back.clock_rate_hz, 48_000);
        assert_eq!(MediaSpec::from_proto("media", Some(&back)).unwrap(), spec);
        for (bad, field) in [
            (
                proto::OpusParams {
                    complexity: Some(11),
                    ..Default::default()
                },
                "media.opus.complexity",
            ),
            (
                proto::OpusParams {
                    max_average_bitrate_bps: Some(1_000_000),
                    ..Default::default()
                },
                "media.opus.max_average_bitrate_bps",
            ),
        ] {
            m.opus = Some(bad);
            assert_eq!(
                field_of(MediaSpec::from_proto("media", Some(&m)).unwrap_err()),
                field
            );
        }
        // Opus parameters on a PCMU leg are a mistake, named.
        let mut m = pcmu();
        m.opus = Some(proto::OpusParams {
            use_dtx: true,
            ..Default::default()
        });
        assert_eq!(
            field_of(MediaSpec::from_proto("media", Some(&m)).unwrap_err()),
            "media.opus"
        );
        // An Opus leg at 30 ms is refused: no such Opus frame.
        let mut m = pcmu();
        m.codec = proto::Codec::Opus as i32;
        m.ptime_ms = 30;
        assert_eq!(
            field_of(MediaSpec::from_proto("media", Some(&m)).unwrap_err()),
            "media.ptime_ms"
        );
    }

    #[test]
    fn media_stored_before_wideband_still_decodes() {
        let old = r#"{"remote":null,"codec":"Pcmu","payload_type":0,"ptime_ms":20,"telephone_event_pt":101,"rtcp_mux":true,"auto_answer":true}"#;
        let spec: MediaSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec.codec, Codec::Pcmu);
        assert_eq!(spec.opus, OpusParams::default());
    }

    #[test]
    fn empty_remote_means_latch_and_ipv6_remote_asks_for_an_ipv6_port() {
        let mut m = pcmu();
        m.remote = String::new();
        let spec = MediaSpec::from_proto("media", Some(&m)).unwrap();
        assert_eq!((spec.remote, spec.family()), (None, Family::V4));
        m.remote = "[::1]:5000".into();
        let spec = MediaSpec::from_proto("media", Some(&m)).unwrap();
        assert_eq!(spec.family(), Family::V6);
    }
}
