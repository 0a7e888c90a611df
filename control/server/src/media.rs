//! A leg's media as requested (`message Media`), validated once at the API edge and
//! persisted with the command that introduced it.

use std::net::SocketAddr;

use earshot_engine_api::{CodecName, Family, MediaConfig};
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
    /// Codec.
    pub codec: CodecName,
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
        let codec = match proto::Codec::try_from(m.codec) {
            Ok(proto::Codec::Pcmu) => CodecName::Pcmu,
            Ok(proto::Codec::Pcma) => CodecName::Pcma,
            _ => {
                return Err(ApiError::invalid(
                    field("codec"),
                    format!("codec {} is not CODEC_PCMU or CODEC_PCMA", m.codec),
                ));
            }
        };
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
        let spec = MediaSpec {
            remote,
            codec,
            payload_type,
            ptime_ms,
            telephone_event_pt,
            rtcp_mux: m.rtcp_mux,
            auto_answer: m.auto_answer.unwrap_or(true),
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
        }
    }

    /// Back to the wire form.
    pub fn to_proto(&self) -> proto::Media {
        proto::Media {
            remote: self.remote.map(|a| a.to_string()).unwrap_or_default(),
            codec: match self.codec {
                CodecName::Pcmu => proto::Codec::Pcmu,
                CodecName::Pcma => proto::Codec::Pcma,
            } as i32,
            payload_type: u32::from(self.payload_type),
            ptime_ms: self.ptime_ms,
            telephone_event_pt: self.telephone_event_pt.map(u32::from),
            rtcp_mux: self.rtcp_mux,
            auto_answer: Some(self.auto_answer),
        }
    }
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
