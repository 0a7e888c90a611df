//! # earshot-engine-api: how the control side programs the data plane
//!
//! The engine (`earshot-engine`) is programmed with the [`Request`]s defined here and
//! answers each with a [`Response`]; it reports what it observes on the media as
//! [`EngineEvent`]s. The same types cross two transports:
//! - **in-process**, in the all-in-one `earshot` binary: [`EngineApi`] implemented by the
//!   engine handle, which pushes each request onto a shard's bounded command queue and
//!   resolves when the shard acknowledges it (the change is then live);
//! - **the local Unix socket** between `earshot-control` and `earshot-engine`: the
//!   versioned framing in [`protocol`], documented in `docs/engine-protocol.md`.
//!
//! This crate holds no state and does no I/O beyond [`protocol`]'s framing helpers over a
//! caller's `Read`/`Write`.
//!
//! ## Contract
//! - A session is the engine's view of one interaction: the legs that may hear each other.
//!   All legs of a session live on one shard, chosen when the session's first leg is
//!   allocated, because mixing needs every input frame on one core.
//! - A leg is one participant's RTP stream each way, on its own local UDP port.
//! - A [`SessionPlan`] replaces the whole hear relation of a session at once; the shard
//!   applies it at a tick boundary and acknowledges it.
//! - Every request is safe to retry: allocating an existing `(session, leg_key)` returns
//!   the existing leg, removing a missing leg or session succeeds.
#![forbid(unsafe_code)]

pub mod protocol;
pub mod srtp;

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use serde::{Deserialize, Serialize};

pub use earshot_types::{
    Codec, Gain, IpFamily, MAX_PAYLOAD_BYTES, MAX_SESSION_LEGS, PTIMES_MS, PayloadType, SampleRate,
};
pub use srtp::{MasterKey, SrtpMedia, SrtpSuite};

/// The engine's identifier of a leg: shard index in the top 16 bits, then a slot index and
/// a generation so that a stale id never names a reused slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct LegId(pub u64);

impl LegId {
    /// Builds an id from its parts.
    pub const fn new(shard: u16, slot: u32, generation: u16) -> LegId {
        LegId(((shard as u64) << 48) | ((generation as u64) << 32) | slot as u64)
    }
    /// The shard that owns the leg.
    pub const fn shard(self) -> u16 {
        (self.0 >> 48) as u16
    }
    /// Slot in the shard's leg table.
    pub const fn slot(self) -> u32 {
        self.0 as u32
    }
    /// Generation of the slot when the leg was allocated.
    pub const fn generation(self) -> u16 {
        (self.0 >> 32) as u16
    }
}

impl fmt::Debug for LegId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "leg{}.{}.{}",
            self.shard(),
            self.slot(),
            self.generation()
        )
    }
}

impl fmt::Display for LegId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How a leg's media is carried (SPEC section 3, `message Media`).
///
/// The codec parameters are the peer's SDP: its `a=rtpmap` (codec and clock rate, in
/// [`Codec`]), `a=ptime`/`a=maxptime`, and for Opus its `a=fmtp` ([`OpusParams`]).
/// They say what the peer wants to *receive*; the engine accepts any packetization
/// from 10 to 60 ms whatever they say.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MediaConfig {
    /// The peer's RTP address; `None` latches it from the first valid packet
    /// (symmetric RTP).
    pub remote: Option<SocketAddr>,
    /// Audio codec (with its rate, for L16).
    pub codec: Codec,
    /// RTP payload type of the codec on this leg.
    pub payload_type: u8,
    /// Packetisation time of what the engine sends: 10, 20, 30, 40 or 60 ms (Opus:
    /// not 30, which is no Opus frame size).
    pub ptime_ms: u32,
    /// RFC 4733 telephone-event payload type, if the leg negotiated one.
    pub telephone_event_pt: Option<u8>,
    /// RTCP multiplexed on the RTP port (RFC 5761); otherwise RTCP uses port+1.
    pub rtcp_mux: bool,
    /// Report the leg's first received packet as [`EngineEvent::FirstPacket`] (used for
    /// supervisors whose phone rings: `auto_answer = false`).
    pub report_first_packet: bool,
    /// The peer's `a=maxptime`: the longest packet it accepts. `None`: no limit said.
    /// `ptime_ms` must not exceed it.
    #[serde(default)]
    pub max_ptime_ms: Option<u32>,
    /// Opus parameters (the peer's fmtp, RFC 7587 section 6.1). Must stay at their
    /// defaults for other codecs.
    #[serde(default)]
    pub opus: OpusParams,
    /// SRTP/SRTCP on this leg (RFC 3711, RFC 7714) with SDES keys; `None` is plain RTP.
    /// Legs of one session are plain or SRTP independently. Changing the keys of a
    /// configured leg re-keys it without a gap (`docs/srtp.md`). Absent in the
    /// serialised form of a plain leg, so older peers read it unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srtp: Option<SrtpMedia>,
    /// Strict source: the only address RTP and RTCP are accepted from (any port);
    /// `None` accepts the configured remote or latches the first valid sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict_source: Option<IpAddr>,
    /// Send nothing while the leg hears nobody; `false` (the default) sends silence
    /// frames at its ptime (SPEC section 5).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quiet_when_unheard: bool,
}

/// An Opus leg's parameters: the peer's `a=fmtp` (RFC 7587 section 6.1), which shape
/// what the engine's encoder sends to it, plus the encoder complexity (not an SDP
/// parameter; the operator's cost/quality lever). Every default is RFC 7587's.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Default)]
pub struct OpusParams {
    /// `useinbandfec=1`: the peer decodes in-band FEC, so the encoder adds it. Default
    /// false (RFC 7587). What the engine *receives* is decoded with FEC whenever a
    /// packet carries it, whatever this says.
    #[serde(default)]
    pub use_inband_fec: bool,
    /// `usedtx=1`: the peer prefers discontinuous transmission. Default false.
    #[serde(default)]
    pub use_dtx: bool,
    /// `maxaveragebitrate`: the most the peer wants to receive, 6000..=510000 bit/s.
    /// `None`: the engine's default (32 kbit/s).
    #[serde(default)]
    pub max_average_bitrate_bps: Option<u32>,
    /// `maxplaybackrate`: the highest audio rate the peer plays, 8000..=48000 Hz. The
    /// engine then never mixes or encodes above the rate that covers it (8, 16 or
    /// 48 kHz) for this leg. `None`: 48000.
    #[serde(default)]
    pub max_playback_rate_hz: Option<u32>,
    /// `sprop-maxcapturerate`: the highest audio rate the peer captures, 8000..=48000
    /// Hz. Its audio never needs a mix above the rate covering it. `None`: 48000.
    #[serde(default)]
    pub sprop_max_capture_rate_hz: Option<u32>,
    /// `stereo=1`: the peer would rather receive stereo. Accepted and recorded; the
    /// engine sends mono, which RFC 7587 allows, and downmixes stereo packets it
    /// receives (libopus decodes any Opus packet to mono). Default false.
    #[serde(default)]
    pub stereo: bool,
    /// Encoder complexity 0..=10 for what is sent to this leg. `None`: the engine's
    /// default (5, see docs/codecs.md for the cost of each).
    #[serde(default)]
    pub complexity: Option<u8>,
}

impl OpusParams {
    /// The engine's bitrate when the peer states no `maxaveragebitrate`: transparent
    /// wideband speech with room for FEC (RFC 7587 section 3.1.1: 28-40 kbit/s).
    pub const DEFAULT_BITRATE_BPS: u32 = 32_000;

    /// The bitrate the encoder uses towards this peer.
    pub fn bitrate_bps(&self) -> u32 {
        self.max_average_bitrate_bps
            .map_or(Self::DEFAULT_BITRATE_BPS, |max| {
                max.min(Self::DEFAULT_BITRATE_BPS)
            })
    }

    /// The highest rate worth sending this peer: the rate covering `maxplaybackrate`.
    pub fn playback_rate(&self) -> SampleRate {
        SampleRate::covering(self.max_playback_rate_hz.unwrap_or(48_000))
    }

    /// The highest rate the peer's own audio carries (`sprop-maxcapturerate`).
    pub fn capture_rate(&self) -> SampleRate {
        SampleRate::covering(self.sprop_max_capture_rate_hz.unwrap_or(48_000))
    }
}

/// Why a [`MediaConfig`] is refused: the field (as named in [`MediaConfig`]) and what is
/// wrong with it. The control side prefixes the field with the request path
/// (`participants[1].media.` + `payload_type`); the engine returns it as
/// [`EngineError::InvalidArgument`].
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct MediaError {
    /// The offending field of [`MediaConfig`].
    pub field: &'static str,
    /// What is wrong, quoting at most the field's own (small, numeric) value.
    pub message: String,
}

impl From<MediaError> for EngineError {
    fn from(e: MediaError) -> EngineError {
        EngineError::InvalidArgument {
            field: e.field.into(),
            message: e.message,
        }
    }
}

/// Payload types a codec may not use on a leg: RTCP packet types 200..=223 with the
/// marker bit set read as 72..=95 (RFC 5761 section 4), so an RTP packet with one of
/// them on an rtcp-mux port cannot be told from RTCP.
pub const RTCP_CONFLICT_PTS: std::ops::RangeInclusive<u8> = 72..=95;

impl MediaConfig {
    /// The one validator of a leg's media, run by the engine before it configures a leg
    /// and by the control sidecar before it stores or programs anything, so that the
    /// sidecar refuses up front exactly what the engine would. Checks, in order: ptime
    /// one of [`PTIMES_MS`]; payload type 7-bit and outside [`RTCP_CONFLICT_PTS`];
    /// telephone-event payload type 7-bit, not the codec's, not comfort noise (13), not
    /// in [`RTCP_CONFLICT_PTS`]; a remote address that is unicast with a port; then the
    /// codec's own limits ([`MediaConfig::validate_codec`]). SRTP suite names and key
    /// forms are checked where they are parsed, [`SrtpSuite`]-typed, by
    /// [`SrtpMedia::from_sdes`] (fields `srtp.suite`, `srtp.remote_key`,
    /// `srtp.local_key`): a `MediaConfig` cannot hold a bad key.
    pub fn validate(&self) -> Result<(), MediaError> {
        let bad = |field: &'static str, message: String| Err(MediaError { field, message });
        if !PTIMES_MS.contains(&self.ptime_ms) {
            return bad(
                "ptime_ms",
                format!("ptime {} ms is not one of {PTIMES_MS:?}", self.ptime_ms),
            );
        }
        if self.payload_type > 127 {
            return bad(
                "payload_type",
                format!("payload type {} is not 0..=127", self.payload_type),
            );
        }
        if RTCP_CONFLICT_PTS.contains(&self.payload_type) {
            return bad(
                "payload_type",
                format!(
                    "payload type {} is in 72..=95, which collides with RTCP packet types",
                    self.payload_type
                ),
            );
        }
        if let Some(te) = self.telephone_event_pt {
            if te > 127 || RTCP_CONFLICT_PTS.contains(&te) {
                return bad(
                    "telephone_event_pt",
                    format!("telephone-event payload type {te} is not 0..=127 outside 72..=95"),
                );
            }
            if te == self.payload_type || te == PayloadType::CN.0 {
                return bad(
                    "telephone_event_pt",
                    format!(
                        "telephone-event payload type {te} equals the codec's payload type or \
                         comfort noise (13)"
                    ),
                );
            }
        }
        if let Some(remote) = self.remote
            && (remote.port() == 0 || remote.ip().is_unspecified() || remote.ip().is_multicast())
        {
            return bad(
                "remote",
                format!("{remote} is not a unicast address with a port"),
            );
        }
        if let Some(ip) = self.strict_source {
            if ip.is_unspecified() || ip.is_multicast() {
                return bad("strict_source", format!("{ip} is not a unicast address"));
            }
            if let Some(remote) = self.remote
                && remote.ip() != ip
            {
                return bad(
                    "strict_source",
                    format!(
                        "{ip} is not the configured remote's address {}",
                        remote.ip()
                    ),
                );
            }
        }
        self.validate_codec()
    }

    /// The codec's own limits: a frame that fits one packet ([`MAX_PAYLOAD_BYTES`]:
    /// L16 at 48 kHz only at 10 ms, at 16 kHz up to 40 ms), Opus ptimes that are Opus
    /// frame sizes (not 30 ms), `ptime_ms <= max_ptime_ms`, Opus parameters in range,
    /// and none given for another codec.
    pub fn validate_codec(&self) -> Result<(), MediaError> {
        let bad = |field: &'static str, message: String| Err(MediaError { field, message });
        if let Some(per_ms) = self.codec.payload_bytes_per_ms()
            && (per_ms * self.ptime_ms) as usize > MAX_PAYLOAD_BYTES
        {
            return bad(
                "ptime_ms",
                format!(
                    "{} ms of {:?} is {} bytes, more than one packet carries ({MAX_PAYLOAD_BYTES})",
                    self.ptime_ms,
                    self.codec,
                    per_ms * self.ptime_ms
                ),
            );
        }
        if self.codec == Codec::Opus && self.ptime_ms == 30 {
            return bad(
                "ptime_ms",
                "30 ms is not an Opus frame size (10, 20, 40 or 60 ms)".into(),
            );
        }
        if let Some(max) = self.max_ptime_ms
            && !(10..=120).contains(&max)
        {
            return bad("max_ptime_ms", format!("maxptime {max} ms is not 10..=120"));
        }
        if let Some(max) = self.max_ptime_ms
            && self.ptime_ms > max
        {
            return bad(
                "ptime_ms",
                format!(
                    "ptime {} ms exceeds the peer's maxptime {max} ms",
                    self.ptime_ms
                ),
            );
        }
        let o = &self.opus;
        if self.codec != Codec::Opus {
            if *o != OpusParams::default() {
                return bad(
                    "opus",
                    format!("Opus parameters given for {:?}", self.codec),
                );
            }
            return Ok(());
        }
        if let Some(b) = o.max_average_bitrate_bps
            && !(6_000..=510_000).contains(&b)
        {
            return bad(
                "opus.max_average_bitrate_bps",
                format!("maxaveragebitrate {b} is not 6000..=510000"),
            );
        }
        for (field, rate) in [
            ("opus.max_playback_rate_hz", o.max_playback_rate_hz),
            (
                "opus.sprop_max_capture_rate_hz",
                o.sprop_max_capture_rate_hz,
            ),
        ] {
            if let Some(hz) = rate
                && !(8_000..=48_000).contains(&hz)
            {
                return bad(field, format!("{hz} Hz is not 8000..=48000"));
            }
        }
        if let Some(c) = o.complexity
            && c > 10
        {
            return bad("opus.complexity", format!("complexity {c} is not 0..=10"));
        }
        Ok(())
    }
}

/// One directed edge of the hear relation: `listener` hears `source` at `gain`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Edge {
    /// The leg that hears.
    pub listener: LegId,
    /// The leg that is heard.
    pub source: LegId,
    /// How loud the listener hears the source (Q12; on the wire a number, 4096 = unity).
    pub gain: Gain,
}

/// The whole hear relation of one session, replacing the previous one atomically.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, Default)]
pub struct SessionPlan {
    /// Session key (the interaction id).
    pub session: String,
    /// Who hears whom; legs of the session absent from every edge hear silence.
    pub edges: Vec<Edge>,
    /// Legs that must never receive telephone events even where they hear the source
    /// (monitoring supervisors, SPEC section 5).
    pub no_dtmf: Vec<LegId>,
}

/// A request from the control side.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Allocates a leg of `session` (creating the session on first use) with its own
    /// local port. Retrying with the same `(session, leg_key)` returns the same leg.
    AllocateLeg {
        /// Session key (the interaction id).
        session: String,
        /// The caller's name for the leg (the participant id), unique in the session.
        leg_key: String,
        /// Local address family.
        family: IpFamily,
        /// Ask for this local port (used when reprogramming a restarted engine so that
        /// legs keep their ports); refused if taken or outside the shard's range.
        requested_port: Option<u16>,
        /// RTCP will be multiplexed on the RTP port (RFC 5761): the leg needs one port
        /// instead of a pair. Must match the later [`MediaConfig::rtcp_mux`].
        #[serde(default)]
        rtcp_mux: bool,
        /// Continue a leg another node served (cluster failover, docs/cluster.md): bind
        /// its address and carry on its outbound stream. `None` for a new leg.
        #[serde(default)]
        resume: Option<LegResume>,
    },
    /// Sets or changes how a leg's media is carried.
    ConfigureLeg {
        /// The leg.
        leg: LegId,
        /// Its media.
        media: MediaConfig,
    },
    /// Replaces a session's hear relation; live when acknowledged.
    SetSessionPlan(SessionPlan),
    /// Removes a leg and closes its port. Succeeds if already gone.
    RemoveLeg {
        /// The leg.
        leg: LegId,
    },
    /// Removes a session and all its legs. Succeeds if already gone.
    RemoveSession {
        /// Session key.
        session: String,
    },
    /// Everything the engine holds, for reconciliation.
    Snapshot,
    /// Records `owner` (the control side's store identity) as the engine's owner, kept
    /// in memory and reported in [`EngineSnapshot::owner`], so that a sidecar started on
    /// an empty or foreign store can tell that the engine's legs are not its own and
    /// refuse to remove them. Answered with [`Response::Done`].
    Claim {
        /// The store identity of the claiming sidecar.
        owner: String,
    },
    /// Counters and latency percentiles per shard.
    Stats,
    /// Cluster fencing (docs/cluster.md): `fenced: true` removes every session and
    /// refuses every new leg, configuration and plan with `Unavailable` until
    /// `fenced: false`, so that a node that lost its lease sends nothing and cannot be
    /// programmed again while survivors take its calls over. Sent by the node's agent.
    Fence {
        /// Fence (true) or lift the fence (false).
        fenced: bool,
    },
    /// Cluster isolation guard (docs/cluster.md, "Fast failure detection"): `muted:
    /// true` makes every shard send nothing while it keeps receiving, mixing and
    /// advancing every stream; `muted: false` resumes. Sessions and programming are
    /// untouched. Sent by the node's agent when it hears none of its peers, so that a
    /// node its peers declare dead is already silent when they take its calls over.
    ///
    /// With `for_ms`, `muted: false` is a vouch that lasts `for_ms`: the engine mutes
    /// itself when no later vouch came in time (its agent died or stalled, so nobody
    /// keeps it from sending after its peers took its calls). Without it, resuming is
    /// unconditional and disarms that switch.
    Mute {
        /// Mute (true) or resume (false).
        muted: bool,
        /// How long a resume holds unless renewed (ms).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        for_ms: Option<u32>,
    },
}

/// The engine's answer to one [`Request`].
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Response {
    /// A leg exists with this id and local address.
    Leg(LegInfo),
    /// The request was applied.
    Done,
    /// Answer to [`Request::Snapshot`].
    Snapshot(EngineSnapshot),
    /// Answer to [`Request::Stats`].
    Stats(EngineStats),
}

/// What the engine knows about one leg.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LegInfo {
    /// Engine id.
    pub leg: LegId,
    /// Session key.
    pub session: String,
    /// Caller's key.
    pub leg_key: String,
    /// Local RTP address.
    pub local: SocketAddr,
    /// Local RTCP address (the RTP address when rtcp-mux).
    pub local_rtcp: SocketAddr,
    /// Current media configuration, if configured.
    pub media: Option<MediaConfig>,
    /// Remote address in use (configured or latched).
    pub remote: Option<SocketAddr>,
}

/// How a leg re-created on another node carries on where the failed node's leg stopped
/// (SPEC section 7): the same local address (a virtual address that moved to this node)
/// and the same outbound stream, so endpoints that latch on the address or check the
/// SSRC keep playing.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Default)]
pub struct LegResume {
    /// Bind this local address instead of the engine's own (bound with
    /// `IP_FREEBIND`, so it may arrive on an interface a moment later).
    pub local_ip: Option<IpAddr>,
    /// The outbound stream to continue; `None`: a fresh random one.
    pub stream: Option<StreamBase>,
}

/// An outbound RTP stream's position: what its next packet carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Default)]
pub struct StreamBase {
    /// Synchronisation source.
    pub ssrc: u32,
    /// Extended sequence number (rollover count << 16 | sequence number) of the next
    /// packet: for SRTP legs the packet index, which must never be used twice with one
    /// key.
    pub index: u64,
    /// RTP timestamp of the next frame.
    pub timestamp: u32,
}

/// What the engine observed on one leg, for reconciliation to recover an event the
/// control side may have missed (a `FirstPacket` produced while no sidecar listened).
///
/// Kept apart from [`LegInfo`] so that engines that do not fill it yet still build and
/// decode: an engine that does not report a leg here simply reports nothing for it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Default)]
pub struct LegActivity {
    /// The leg.
    pub leg: LegId,
    /// The leg has received at least one valid packet since it was configured (so a
    /// `FirstPacket` event was produced if the leg asked for one).
    pub first_packet_seen: bool,
    /// Valid RTP packets received on the leg.
    pub packets_in: u64,
    /// The leg's outbound stream as of the snapshot (configured legs only): what a
    /// node taking the leg over continues from (`earshot-node` reports it to the
    /// cluster).
    #[serde(default)]
    pub stream: Option<StreamBase>,
}

/// Everything the engine holds.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, Default)]
pub struct EngineSnapshot {
    /// Every leg.
    pub legs: Vec<LegInfo>,
    /// Every session's current plan.
    pub plans: Vec<SessionPlan>,
    /// The owner recorded by the last [`Request::Claim`], if any.
    #[serde(default)]
    pub owner: Option<String>,
    /// Events the engine could not keep for the control side (its queue overflowed
    /// while no client was connected).
    #[serde(default)]
    pub events_lost: u64,
    /// Per-leg activity, for the legs the engine reports it for (see [`LegActivity`]).
    #[serde(default)]
    pub activity: Vec<LegActivity>,
}

impl EngineSnapshot {
    /// The activity the engine reported for `leg`, if any.
    pub fn activity_of(&self, leg: LegId) -> Option<&LegActivity> {
        self.activity.iter().find(|a| a.leg == leg)
    }
}

/// Drop reasons counted per shard. The names are the metric labels. `srtp_auth`: an
/// SRTP/SRTCP packet whose tag did not verify (forged, corrupted, another key, or plain
/// RTP sent to an SRTP leg); `srtp_replay`: one already received or older than the
/// replay window; `srtp_protect`: a packet the engine could not protect for sending
/// (index space of the key used up: the leg needs a re-key).
pub const DROP_REASONS: [&str; 16] = [
    "truncated",
    "bad_version",
    "bad_header",
    "unknown_port",
    "unconfigured_leg",
    "wrong_source",
    "unknown_payload_type",
    "oversize",
    "jitter_late",
    "jitter_duplicate",
    "jitter_overflow",
    "tx_full",
    "bad_rtcp",
    "srtp_auth",
    "srtp_replay",
    "srtp_protect",
];

/// Counters and latency percentiles of one shard.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, Default)]
pub struct ShardStats {
    /// Shard index.
    pub shard: u16,
    /// CPU the shard is pinned to, if pinned.
    pub core: Option<usize>,
    /// Legs allocated.
    pub legs: u64,
    /// Sessions with at least one leg.
    pub sessions: u64,
    /// Sessions by mode: (mode, count) with mode one of "forward_only", "mixed", "silent".
    pub sessions_by_mode: Vec<(String, u64)>,
    /// RTP and RTCP datagrams received.
    pub packets_in: u64,
    /// Bytes received (UDP payload).
    pub bytes_in: u64,
    /// Datagrams sent.
    pub packets_out: u64,
    /// Bytes sent (UDP payload).
    pub bytes_out: u64,
    /// Drops by reason, in [`DROP_REASONS`] order.
    pub drops: Vec<(String, u64)>,
    /// Ticks that started later than one ptime after their deadline.
    pub late_ticks: u64,
    /// Ticks run.
    pub ticks: u64,
    /// Tick processing time percentiles in microseconds: p50, p90, p99, p99.9, max.
    pub tick_processing_us: Percentiles,
    /// Tick lateness (start minus deadline) percentiles in microseconds.
    pub tick_lateness_us: Percentiles,
    /// Command queue rejections because the queue was full.
    pub commands_rejected: u64,
    /// Loop iterations that took longer than the stall budget (2.5 ms).
    #[serde(default)]
    pub stalls: u64,
    /// Engine events lost because the event queue was full.
    #[serde(default)]
    pub events_lost: u64,
    /// The I/O backend's own counters (names depend on the backend: for example
    /// `rx_no_buffers` on io_uring, `tx_no_neighbor` on AF_XDP).
    #[serde(default)]
    pub backend_counters: Vec<(String, u64)>,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value recorded.
    pub max: f64,
    /// Values recorded.
    pub count: u64,
}

/// Per-shard statistics of the whole engine.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, Default)]
pub struct EngineStats {
    /// The I/O backend in use: "io_uring", "socket", "af_xdp" or "memory".
    pub backend: String,
    /// One entry per shard.
    pub shards: Vec<ShardStats>,
}

/// Something the engine observed on the media, reported to the control side.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum EngineEvent {
    /// A leg configured with `report_first_packet` received its first valid packet.
    FirstPacket {
        /// The leg.
        leg: LegId,
        /// Session key.
        session: String,
        /// Leg key.
        leg_key: String,
    },
    /// A leg received nothing for the configured media timeout.
    MediaTimeout {
        /// The leg.
        leg: LegId,
        /// Session key.
        session: String,
        /// Leg key.
        leg_key: String,
    },
    /// A leg without a configured remote latched onto this source address.
    RemoteLatched {
        /// The leg.
        leg: LegId,
        /// Address learned.
        remote: SocketAddr,
    },
}

/// Why the engine refused or could not apply a request.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum EngineError {
    /// A field of the request is malformed; names the field.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The leg or session does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// No free port, leg or session slot, or a full command queue.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The engine is not reachable or shutting down.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// A port could not be opened, or another operating error.
    #[error("engine failed: {0}")]
    Internal(String),
}

/// A boxed future, so that [`EngineApi`] is object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Programs an engine: in-process (the engine handle) or remote (the socket client).
pub trait EngineApi: Send + Sync {
    /// Sends one request; resolves when the engine has applied it (or refused it).
    fn call(&self, request: Request) -> BoxFuture<'_, Result<Response, EngineError>>;
    /// Takes the next event the engine reported, waiting for one.
    fn next_event(&self) -> BoxFuture<'_, Option<EngineEvent>>;
    /// A number that changes whenever the connection to the engine was re-established
    /// (so the engine may have restarted and lost its legs). The control side
    /// reconciles before any fresh allocation when it changes, so that a new leg can
    /// never take the recorded port of a leg that is yet to be re-created. In-process
    /// engines never reconnect: 0.
    fn connection_epoch(&self) -> u64 {
        0
    }

    /// Resolves when [`EngineApi::connection_epoch`] may have changed (a cluster's node
    /// joined or failed), so the reconciler repairs at once instead of at its next
    /// tick. Default: never; the reconciler also compares the epoch every tick.
    fn epoch_changed(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcmu() -> MediaConfig {
        MediaConfig {
            remote: Some(([127, 0, 0, 1], 4000).into()),
            codec: Codec::Pcmu,
            payload_type: 0,
            ptime_ms: 20,
            telephone_event_pt: Some(101),
            rtcp_mux: true,
            report_first_packet: false,
            max_ptime_ms: None,
            opus: OpusParams::default(),
            srtp: None,
            strict_source: None,
            quiet_when_unheard: false,
        }
    }

    /// Typed at the seam, unchanged on the wire: a plan's gain is the bare Q12 number
    /// and a family its variant name, as before they had types of their own.
    #[test]
    fn typed_gain_and_family_keep_their_wire_form() {
        let edge = Edge {
            listener: LegId(1),
            source: LegId(2),
            gain: Gain::UNITY,
        };
        let json = serde_json::to_value(edge).unwrap();
        assert_eq!(json["gain"], serde_json::json!(4096));
        let back: Edge = serde_json::from_str(r#"{"listener":1,"source":2,"gain":2048}"#).unwrap();
        assert_eq!(back.gain, Gain(2048));
        assert_eq!(serde_json::to_value(IpFamily::V6).unwrap(), "V6");
        assert_eq!(IpFamily::of([10, 0, 0, 1].into()), IpFamily::V4);
        assert_eq!(
            IpFamily::of(std::net::Ipv6Addr::LOCALHOST.into()),
            IpFamily::V6
        );
    }

    #[test]
    fn the_media_validator_names_the_field_of_every_refusal() {
        assert_eq!(pcmu().validate(), Ok(()));
        let field = |f: fn(&mut MediaConfig)| {
            let mut m = pcmu();
            f(&mut m);
            m.validate().map_err(|e| e.field)
        };
        assert_eq!(field(|m| m.ptime_ms = 25), Err("ptime_ms"));
        assert_eq!(
            field(|m| m.strict_source = Some([127, 0, 0, 2].into())),
            Err("strict_source"),
            "a strict source other than the configured remote's address"
        );
        assert_eq!(
            field(|m| m.strict_source = Some([0, 0, 0, 0].into())),
            Err("strict_source")
        );
        assert_eq!(field(|m| m.ptime_ms = 0), Err("ptime_ms"));
        assert_eq!(field(|m| m.payload_type = 128), Err("payload_type"));
        for pt in [72, 80, 95] {
            let mut m = pcmu();
            m.payload_type = pt;
            m.telephone_event_pt = Some(101);
            assert_eq!(
                m.validate().map_err(|e| e.field),
                Err("payload_type"),
                "{pt}"
            );
        }
        for ok in [71, 96] {
            let mut m = pcmu();
            m.payload_type = ok;
            assert_eq!(m.validate(), Ok(()), "{ok}");
        }
        assert_eq!(
            field(|m| m.telephone_event_pt = Some(13)),
            Err("telephone_event_pt")
        );
        assert_eq!(
            field(|m| m.telephone_event_pt = Some(0)),
            Err("telephone_event_pt")
        );
        assert_eq!(
            field(|m| m.telephone_event_pt = Some(80)),
            Err("telephone_event_pt")
        );
        assert_eq!(
            field(|m| m.telephone_event_pt = Some(200)),
            Err("telephone_event_pt")
        );
        assert_eq!(field(|m| m.telephone_event_pt = None), Ok(()));
        assert_eq!(
            field(|m| m.remote = Some(([0, 0, 0, 0], 4000).into())),
            Err("remote")
        );
        assert_eq!(
            field(|m| m.remote = Some(([127, 0, 0, 1], 0).into())),
            Err("remote")
        );
        assert_eq!(field(|m| m.remote = None), Ok(()));
        let as_engine: EngineError = pcmu_with_pt(90).validate().unwrap_err().into();
        assert!(
            matches!(as_engine, EngineError::InvalidArgument { ref field, .. } if field == "payload_type")
        );
    }

    #[test]
    fn codec_limits_and_opus_parameters_are_checked() {
        let field = |f: fn(&mut MediaConfig)| {
            let mut m = pcmu();
            f(&mut m);
            m.validate().map_err(|e| e.field)
        };
        let opus = |m: &mut MediaConfig| {
            m.codec = Codec::Opus;
            m.payload_type = 111;
        };
        assert_eq!(field(opus), Ok(()));
        assert_eq!(
            field(|m| {
                m.codec = Codec::Opus;
                m.ptime_ms = 30;
            }),
            Err("ptime_ms")
        );
        // L16: a frame must fit one packet.
        assert_eq!(
            field(|m| {
                m.codec = Codec::L16(SampleRate::Hz48000);
                m.ptime_ms = 10;
            }),
            Ok(())
        );
        assert_eq!(
            field(|m| m.codec = Codec::L16(SampleRate::Hz48000)),
            Err("ptime_ms")
        );
        assert_eq!(
            field(|m| {
                m.codec = Codec::L16(SampleRate::Hz16000);
                m.ptime_ms = 60;
            }),
            Err("ptime_ms")
        );
        assert_eq!(
            field(|m| {
                m.codec = Codec::L16(SampleRate::Hz8000);
                m.ptime_ms = 60;
            }),
            Ok(())
        );
        assert_eq!(field(|m| m.max_ptime_ms = Some(10)), Err("ptime_ms"));
        assert_eq!(field(|m| m.max_ptime_ms = Some(5)), Err("max_ptime_ms"));
        assert_eq!(field(|m| m.max_ptime_ms = Some(40)), Ok(()));
        assert_eq!(field(|m| m.opus.use_inband_fec = true), Err("opus"));
        let with = |f: fn(&mut OpusParams)| {
            let mut m = pcmu();
            opus(&mut m);
            f(&mut m.opus);
            m.validate().map_err(|e| e.field)
        };
        assert_eq!(
            with(|o| o.max_average_bitrate_bps = Some(5_999)),
            Err("opus.max_average_bitrate_bps")
        );
        assert_eq!(with(|o| o.max_average_bitrate_bps = Some(6_000)), Ok(()));
        assert_eq!(
            with(|o| o.max_playback_rate_hz = Some(96_000)),
            Err("opus.max_playback_rate_hz")
        );
        assert_eq!(
            with(|o| o.sprop_max_capture_rate_hz = Some(4_000)),
            Err("opus.sprop_max_capture_rate_hz")
        );
        assert_eq!(with(|o| o.complexity = Some(11)), Err("opus.complexity"));
        assert_eq!(
            with(|o| {
                o.stereo = true;
                o.use_dtx = true;
                o.complexity = Some(0);
            }),
            Ok(())
        );
    }

    #[test]
    fn opus_parameters_become_encoder_settings_and_rates() {
        let mut o = OpusParams::default();
        assert_eq!(o.bitrate_bps(), OpusParams::DEFAULT_BITRATE_BPS);
        assert_eq!(o.playback_rate(), SampleRate::Hz48000);
        o.max_average_bitrate_bps = Some(20_000);
        o.max_playback_rate_hz = Some(16_000);
        o.sprop_max_capture_rate_hz = Some(8_000);
        assert_eq!(o.bitrate_bps(), 20_000);
        assert_eq!(o.playback_rate(), SampleRate::Hz16000);
        assert_eq!(o.capture_rate(), SampleRate::Hz8000);
        o.max_average_bitrate_bps = Some(128_000);
        assert_eq!(o.bitrate_bps(), OpusParams::DEFAULT_BITRATE_BPS);
    }

    #[test]
    fn media_stored_before_wideband_still_decodes() {
        // A MediaConfig as serialised when the codec was `CodecName` and had no
        // parameters: the names are kept and the new fields default.
        let old = r#"{"remote":"127.0.0.1:4000","codec":"Pcma","payload_type":8,"ptime_ms":20,"telephone_event_pt":null,"rtcp_mux":true,"report_first_packet":false}"#;
        let m: MediaConfig = serde_json::from_str(old).unwrap();
        assert_eq!(m.codec, Codec::Pcma);
        assert_eq!((m.max_ptime_ms, m.opus), (None, OpusParams::default()));
        let mut l16 = pcmu();
        l16.codec = Codec::L16(SampleRate::Hz16000);
        let text = serde_json::to_string(&l16).unwrap();
        assert!(text.contains(r#""codec":{"L16":"Hz16000"}"#), "{text}");
        assert_eq!(serde_json::from_str::<MediaConfig>(&text).unwrap(), l16);
    }

    fn pcmu_with_pt(pt: u8) -> MediaConfig {
        let mut m = pcmu();
        m.payload_type = pt;
        m
    }

    #[test]
    fn plain_legs_serialise_without_an_srtp_field_and_srtp_legs_with_one() {
        let plain = serde_json::to_string(&pcmu()).unwrap();
        assert!(!plain.contains("srtp"), "{plain}");
        let back: MediaConfig = serde_json::from_str(&plain).unwrap();
        assert_eq!(back, pcmu());
        let mut secure = pcmu();
        secure.srtp = Some(
            SrtpMedia::new(
                MasterKey::generate(SrtpSuite::AeadAes256Gcm, |b| b.fill(7)),
                MasterKey::generate(SrtpSuite::AeadAes256Gcm, |b| b.fill(9)),
            )
            .unwrap(),
        );
        let json = serde_json::to_string(&secure).unwrap();
        let back: MediaConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, secure);
        let debug = format!("{secure:?}");
        assert!(debug.contains("AEAD_AES_256_GCM") && debug.contains("redacted"));
        // 0x07 and 0x09 octets are "BwcH" and "CQkJ" in base64.
        assert!(
            !debug.contains("BwcH") && !debug.contains("CQkJ"),
            "{debug}"
        );
    }

    #[test]
    fn snapshots_and_leg_infos_from_older_engines_decode_with_defaults() {
        let old = r#"{"legs":[{"leg":1,"session":"s","leg_key":"k","local":"127.0.0.1:1","local_rtcp":"127.0.0.1:1","media":null,"remote":null}],"plans":[]}"#;
        let snap: EngineSnapshot = serde_json::from_str(old).unwrap();
        assert_eq!(snap.owner, None);
        assert_eq!(snap.events_lost, 0);
        assert!(snap.activity_of(snap.legs[0].leg).is_none());
    }

    #[test]
    fn leg_ids_pack_and_unpack_their_parts() {
        let id = LegId::new(3, 70_000, 9);
        assert_eq!((id.shard(), id.slot(), id.generation()), (3, 70_000, 9));
        assert_eq!(format!("{id}"), "leg3.70000.9");
    }
}
