//! One shard: the legs, sessions, port table and tick schedule of one core.
//!
//! The shard is a state machine in the sans-IO style (STYLE.md rule 1). It owns no socket,
//! thread or clock; the runtime loop (`runtime.rs`) feeds it:
//! - [`Shard::handle_command`] for each command drained from the shard's queue,
//! - [`Shard::handle_datagram`] (through [`PacketHandler`]) for each received datagram,
//! - [`Shard::handle_ticks`] when [`Shard::poll_deadline`] has passed,
//!
//! and passes `now` to each. Everything is sized when the shard is built: the leg and
//! session tables, the port table (indexed directly by local port, no hashing on the
//! packet path), the free-port stack and the tick wheel. Per-leg media state (jitter
//! buffer, output stream) is built when a leg is configured, which is the control path.
//!
//! ## Forward and mix
//! The session's [`SessionPlan`] says, per listener, whether it hears silence, one
//! forwarded source, or a mix. A forwarded packet is re-stamped into the listener's
//! output stream and sent from inside the receive batch: no jitter buffer, no tick, no
//! decoding. Inputs that some listener mixes also go into their jitter buffer, and the
//! session's tick pulls a frame from each, mixes, encodes and sends. A session in which
//! nobody mixes is never ticked: monitoring adds nothing to the primary call's path.

// Index loops walk parallel per-leg arrays (legs, formats, plan outputs) by leg index,
// which reads better than zipped iterators; nested `if`s keep the borrow scopes obvious.
#![allow(
    clippy::needless_range_loop,
    clippy::collapsible_if,
    clippy::collapsible_match
)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use earshot_engine_api::{
    EngineError, EngineEvent, EngineSnapshot, Family, LegId, LegInfo, MediaConfig, Response,
    SessionPlan as ApiPlan, ShardStats,
};
use earshot_media::dsp::{g711, mix::MixKernels};
use earshot_media::jitter::{JitterBuffer, JitterConfig};
use earshot_media::plan::{HearMatrix, LegFormat, OutputPlan, SessionPlan};
use earshot_media::rng::SeedRng;
use earshot_media::stream::OutputStream;
use earshot_media::time::{Duration, Instant};
use earshot_media::{
    Codec, Gain, MAX_FRAME_SAMPLES, MAX_SESSION_LEGS, PayloadType, RtpTs, SeqNo, Ssrc,
};

use earshot_media::wire::rtcp::{
    self, ReceiverReport, ReportBlock, ReportBlocks, RtcpRepr, SdesChunk, SdesChunks, SdesItem,
    SdesItemType, SenderInfo, SenderReport,
};
use earshot_media::wire::seq::{JitterEstimator, SeqTracker};

use crate::backend::{Backend, Datagram, MAX_UDP_PAYLOAD, PacketHandler, TxSink};
use crate::rtp::{self, RtpView};
use crate::stats::{Counters, DropReason};

/// Sizes and policies of one shard, fixed at start.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// Shard index (the top 16 bits of its legs' ids).
    pub index: u16,
    /// First local port of the shard's range (even).
    pub port_first: u16,
    /// Number of ports in the range (even; two per leg: RTP and RTCP).
    pub port_count: u16,
    /// Most legs the shard holds.
    pub max_legs: u32,
    /// Most sessions the shard holds.
    pub max_sessions: u32,
    /// Local IPv4 address legs report, if IPv4 is enabled.
    pub local_v4: Option<Ipv4Addr>,
    /// Local IPv6 address legs report, if IPv6 is enabled.
    pub local_v6: Option<Ipv6Addr>,
    /// Jitter-buffer depth bounds.
    pub jitter_min_ms: u32,
    /// Jitter-buffer depth bounds.
    pub jitter_max_ms: u32,
    /// A configured leg that receives nothing for this long raises a media timeout.
    pub media_timeout: Duration,
    /// A tick that starts later than its deadline by more than this is counted late.
    pub late_tick_threshold: Duration,
    /// Seed of the shard's RNG (SSRCs, initial sequence numbers and timestamps).
    pub seed: u64,
}

const NO_SLOT: u32 = u32::MAX;

/// Mean interval between a leg's RTCP reports (RFC 3550 section 6.2's minimum of 5 s;
/// each interval is randomised over [0.5, 1.5] of it).
const RTCP_INTERVAL: Duration = Duration::from_secs(5);

/// Granularity of the tick wheel.
const WHEEL_SLOT_NS: u64 = 1_000_000;
/// Slots in the wheel: more than the longest tick period (60 ms).
const WHEEL_SLOTS: usize = 64;
const _: () = assert!(WHEEL_SLOTS as u64 * WHEEL_SLOT_NS > 60_000_000);

#[derive(Debug)]
struct LegMedia {
    codec: Codec,
    payload_type: u8,
    ptime_ms: u32,
    frame_samples: usize,
    te_pt: Option<u8>,
    rtcp_mux: bool,
    report_first_packet: bool,
    config: MediaConfig,
    jitter: JitterBuffer,
    out: OutputStream,
    /// Linear PCM pulled from the jitter buffer, not yet consumed by ticks.
    in_pcm: Box<[i16; 2 * MAX_FRAME_SAMPLES]>,
    in_len: usize,
    /// Mixed PCM accumulated toward one output frame.
    out_pcm: Box<[i16; MAX_FRAME_SAMPLES]>,
    out_len: usize,
    /// Whether this output sent a mixed frame at its previous tick (marker logic).
    mixed_active: bool,
    /// Whether the jitter buffer is in use (some listener mixes this input).
    jitter_live: bool,
    /// Source timestamp of the telephone event being relayed, and its output timestamp.
    dtmf_out_ts: Option<(RtpTs, RtpTs)>,
    /// Reception statistics for RTCP report blocks (RFC 3550 A.1, A.3, A.8).
    rx_seq: SeqTracker,
    rx_jitter: JitterEstimator,
    rx_ssrc: Option<Ssrc>,
    /// Middle 32 bits of the NTP time of the last SR received, and when it arrived.
    last_sr: Option<(u32, Instant)>,
    /// Payload octets sent, for the sender report.
    octets_sent: u32,
    packets_sent: u32,
    /// When this leg next sends RTCP.
    next_rtcp: Instant,
}

#[derive(Debug)]
struct Leg {
    id: LegId,
    key: String,
    session: u32,
    /// Position in the session's leg list (the hear matrix index).
    index: u8,
    port: u16,
    family: Family,
    remote: Option<SocketAddr>,
    latched: bool,
    media: Option<Box<LegMedia>>,
    last_rx: Instant,
    timed_out: bool,
    first_packet_seen: bool,
    rtcp_open: bool,
    /// The leg holds a port pair (RTP and RTCP); otherwise one port, RTCP multiplexed.
    paired: bool,
}

#[derive(Debug)]
struct Session {
    key: String,
    legs: [u32; MAX_SESSION_LEGS],
    len: usize,
    api_plan: ApiPlan,
    plan: SessionPlan,
    /// Bit per leg index: never receives telephone events.
    no_dtmf: u16,
    matrix: HearMatrix,
    /// Whether any output mixes (then the session ticks).
    mixing: bool,
    tick_samples: usize,
    tick_period: Duration,
    next_tick: Instant,
    /// Next session in the same wheel slot, or NO_SLOT.
    wheel_next: u32,
    scheduled: bool,
}

/// One core's share of the engine.
#[derive(Debug)]
pub struct Shard {
    cfg: ShardConfig,
    legs: Vec<Option<Leg>>,
    generations: Vec<u16>,
    free_legs: Vec<u32>,
    sessions: Vec<Option<Session>>,
    free_sessions: Vec<u32>,
    session_by_key: HashMap<String, u32>,
    /// Local port minus `port_first` -> leg slot (RTP and RTCP ports both map).
    port_table: Vec<u32>,
    free_ports: Vec<u16>,
    free_singles: Vec<u16>,
    wheel: Vec<u32>,
    wheel_cursor: u64,
    rng: SeedRng,
    kernels: MixKernels,
    counters: Counters,
    events: Arc<ArrayQueue<EngineEvent>>,
    timeout_sweep: u32,
    rtcp_sweep: u32,
    ntp_at_zero: u64,
    scratch: Box<[i16; MAX_FRAME_SAMPLES]>,
    /// Time of the first iteration: the wheel's origin.
    started: Option<Instant>,
}

impl Shard {
    /// Builds a shard with all its tables allocated.
    pub fn new(
        cfg: ShardConfig,
        kernels: MixKernels,
        events: Arc<ArrayQueue<EngineEvent>>,
    ) -> Shard {
        assert!(
            cfg.port_first.is_multiple_of(2),
            "port ranges start on an even port"
        );
        assert!(
            cfg.port_count >= 2 && cfg.port_count.is_multiple_of(2),
            "port ranges hold pairs"
        );
        let max_legs = cfg.max_legs as usize;
        let max_sessions = cfg.max_sessions as usize;
        let mut free_ports: Vec<u16> = (0..cfg.port_count / 2)
            .map(|i| cfg.port_first + 2 * i)
            .collect();
        free_ports.reverse(); // Hand out the lowest port first.
        Shard {
            legs: (0..max_legs).map(|_| None).collect(),
            generations: vec![0; max_legs],
            free_legs: (0..cfg.max_legs).rev().collect(),
            sessions: (0..max_sessions).map(|_| None).collect(),
            free_sessions: (0..cfg.max_sessions).rev().collect(),
            session_by_key: HashMap::with_capacity(max_sessions),
            port_table: vec![NO_SLOT; usize::from(cfg.port_count)],
            free_singles: Vec::with_capacity(usize::from(cfg.port_count)),
            free_ports,
            wheel: vec![NO_SLOT; WHEEL_SLOTS],
            wheel_cursor: 0,
            rng: SeedRng::new(cfg.seed ^ u64::from(cfg.index).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            kernels,
            counters: Counters::new(),
            events,
            timeout_sweep: 0,
            rtcp_sweep: 0,
            ntp_at_zero: 0,
            scratch: Box::new([0; MAX_FRAME_SAMPLES]),
            started: None,
            cfg,
        }
    }

    /// The shard's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Mutable counters, for the runtime loop's own accounting.
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// The jitter-buffer counters of a configured leg (for tests, benchmarks and
    /// diagnostics; read on the shard's own thread).
    pub fn jitter_stats(&self, leg: LegId) -> Option<earshot_media::jitter::JitterStats> {
        let slot = self.resolve(leg).ok()?;
        self.leg(slot).media.as_ref().map(|m| m.jitter.stats())
    }

    /// Legs currently allocated.
    pub fn leg_count(&self) -> usize {
        self.cfg.max_legs as usize - self.free_legs.len()
    }

    /// Sessions currently allocated.
    pub fn session_count(&self) -> usize {
        self.cfg.max_sessions as usize - self.free_sessions.len()
    }

    // ---------------------------------------------------------------------------------
    // Commands (control path: may allocate, may make syscalls through the backend).

    /// Applies one command. Each command changes at most one session, whole, between
    /// receive batches and ticks: that is the tick boundary.
    pub fn handle_command(
        &mut self,
        now: Instant,
        backend: &mut dyn Backend,
        cmd: ShardCommand,
    ) -> Result<Response, EngineError> {
        match cmd {
            ShardCommand::AllocateLeg {
                session,
                leg_key,
                family,
                requested_port,
                rtcp_mux,
            } => self.allocate_leg(
                now,
                backend,
                session,
                leg_key,
                family,
                requested_port,
                rtcp_mux,
            ),
            ShardCommand::ConfigureLeg { leg, media } => {
                self.configure_leg(now, backend, leg, media)
            }
            ShardCommand::SetSessionPlan(plan) => self.set_plan(now, plan),
            ShardCommand::RemoveLeg { leg } => {
                self.remove_leg(now, backend, leg);
                Ok(Response::Done)
            }
            ShardCommand::RemoveSession { session } => {
                if let Some(&s) = self.session_by_key.get(&session) {
                    let legs: Vec<u32> = self.session(s).legs[..self.session(s).len].to_vec();
                    for slot in legs {
                        let id = self.leg(slot).id;
                        self.remove_leg(now, backend, id);
                    }
                    // The last leg's removal freed the session already.
                }
                Ok(Response::Done)
            }
            ShardCommand::Snapshot(mut snap) => {
                self.fill_snapshot(&mut snap);
                Ok(Response::Snapshot(snap))
            }
            ShardCommand::Stats(mut stats) => {
                self.fill_stats(&mut stats);
                stats.backend_counters = backend
                    .counters()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                Ok(Response::Stats(earshot_engine_api::EngineStats {
                    backend: backend.name().to_string(),
                    shards: vec![stats],
                }))
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // The fields of one request, unpacked.
    fn allocate_leg(
        &mut self,
        now: Instant,
        backend: &mut dyn Backend,
        session: String,
        leg_key: String,
        family: Family,
        requested_port: Option<u16>,
        rtcp_mux: bool,
    ) -> Result<Response, EngineError> {
        let local_ip: IpAddr = match family {
            Family::V4 => self.cfg.local_v4.map(IpAddr::V4),
            Family::V6 => self.cfg.local_v6.map(IpAddr::V6),
        }
        .ok_or_else(|| EngineError::InvalidArgument {
            field: "family".into(),
            message: format!("{family:?} is not enabled on this engine"),
        })?;
        // Idempotent retry: the same (session, key) returns the existing leg.
        let existing_session = self.session_by_key.get(&session).copied();
        if let Some(s) = existing_session {
            let sess = self.session(s);
            for &slot in &sess.legs[..sess.len] {
                let leg = self.leg(slot);
                if leg.key == leg_key {
                    return Ok(Response::Leg(self.leg_info(slot)));
                }
            }
            if sess.len == MAX_SESSION_LEGS {
                return Err(EngineError::ResourceExhausted(format!(
                    "session {session} already has {MAX_SESSION_LEGS} legs"
                )));
            }
        }
        let port = self.take_port(requested_port, rtcp_mux)?;
        let Some(slot) = self.free_legs.pop() else {
            self.give_port(port, rtcp_mux);
            return Err(EngineError::ResourceExhausted(
                "no free leg slot on this shard".into(),
            ));
        };
        let sess_slot = match existing_session {
            Some(s) => s,
            None => match self.free_sessions.pop() {
                Some(s) => s,
                None => {
                    self.give_port(port, rtcp_mux);
                    self.free_legs.push(slot);
                    return Err(EngineError::ResourceExhausted(
                        "no free session slot on this shard".into(),
                    ));
                }
            },
        };
        if let Err(e) = backend.open_port(port, family) {
            self.give_port(port, rtcp_mux);
            self.free_legs.push(slot);
            if existing_session.is_none() {
                self.free_sessions.push(sess_slot);
            }
            return Err(EngineError::Internal(format!(
                "cannot open port {port}: {e}"
            )));
        }
        if existing_session.is_none() {
            self.sessions[sess_slot as usize] = Some(Session {
                key: session.clone(),
                legs: [NO_SLOT; MAX_SESSION_LEGS],
                len: 0,
                api_plan: ApiPlan {
                    session: session.clone(),
                    ..ApiPlan::default()
                },
                plan: SessionPlan::build(&HearMatrix::new(0), &[]),
                no_dtmf: 0,
                matrix: HearMatrix::new(0),
                mixing: false,
                tick_samples: 160,
                tick_period: Duration::from_millis(20),
                next_tick: now,
                wheel_next: NO_SLOT,
                scheduled: false,
            });
            self.session_by_key.insert(session, sess_slot);
        }
        let generation = self.generations[slot as usize];
        let id = LegId::new(self.cfg.index, slot, generation);
        let sess = self.session_mut(sess_slot);
        let index = sess.len;
        sess.legs[index] = slot;
        sess.len += 1;
        self.legs[slot as usize] = Some(Leg {
            id,
            key: leg_key,
            session: sess_slot,
            index: index as u8,
            port,
            family,
            remote: None,
            latched: false,
            media: None,
            last_rx: now,
            timed_out: false,
            first_packet_seen: false,
            rtcp_open: false,
            paired: !rtcp_mux,
        });
        self.port_table[usize::from(port - self.cfg.port_first)] = slot;
        if !rtcp_mux {
            self.port_table[usize::from(port + 1 - self.cfg.port_first)] = slot;
        }
        let _ = local_ip;
        // The plan always covers every leg of the session (a new leg hears and is heard
        // by nobody until the next plan), so per-leg lookups never go out of range.
        self.rebuild_plan(now, sess_slot);
        Ok(Response::Leg(self.leg_info(slot)))
    }

    fn configure_leg(
        &mut self,
        now: Instant,
        backend: &mut dyn Backend,
        id: LegId,
        media: MediaConfig,
    ) -> Result<Response, EngineError> {
        let slot = self.resolve(id)?;
        media.validate()?;
        let codec = Codec::from(media.codec);
        let frame_samples = codec.frame_samples(media.ptime_ms);
        let jitter_cfg = JitterConfig {
            codec,
            ptime_ms: media.ptime_ms,
            min_depth_ms: self.cfg.jitter_min_ms.max(media.ptime_ms),
            max_depth_ms: self.cfg.jitter_max_ms.max(media.ptime_ms * 2),
            ..JitterConfig::new(codec, media.ptime_ms)
        };
        let ssrc = Ssrc(self.rng.next_u32());
        let first_seq = SeqNo(self.rng.next_u32() as u16);
        let first_ts = RtpTs(self.rng.next_u32());
        let leg = self.legs[slot as usize]
            .as_mut()
            .expect("resolved slot holds a leg");
        let (port, family) = (leg.port, leg.family);
        // Reconfiguring keeps the output stream (and so its SSRC and sequence space) when
        // the format is unchanged, so that a retry or a remote change does not reset it.
        let keep = leg.media.as_ref().is_some_and(|m| {
            m.codec == codec && m.ptime_ms == media.ptime_ms && m.payload_type == media.payload_type
        });
        if media.rtcp_mux == leg.paired {
            return Err(EngineError::InvalidArgument {
                field: "rtcp_mux".into(),
                message: "must match the rtcp_mux the leg was allocated with".into(),
            });
        }
        let rtcp_needed = !media.rtcp_mux;
        leg.remote = media.remote;
        leg.latched = false;
        leg.last_rx = now;
        leg.timed_out = false;
        if keep {
            let m = leg.media.as_mut().expect("checked above");
            m.te_pt = media.telephone_event_pt;
            m.rtcp_mux = media.rtcp_mux;
            m.report_first_packet = media.report_first_packet;
            m.config = media;
        } else {
            leg.media = Some(Box::new(LegMedia {
                codec,
                payload_type: media.payload_type,
                ptime_ms: media.ptime_ms,
                frame_samples,
                te_pt: media.telephone_event_pt,
                rtcp_mux: media.rtcp_mux,
                report_first_packet: media.report_first_packet,
                jitter: JitterBuffer::new(jitter_cfg),
                out: OutputStream::new(
                    ssrc,
                    first_seq,
                    first_ts,
                    codec,
                    PayloadType(media.payload_type),
                    media.ptime_ms,
                ),
                config: media,
                in_pcm: Box::new([0; 2 * MAX_FRAME_SAMPLES]),
                in_len: 0,
                out_pcm: Box::new([0; MAX_FRAME_SAMPLES]),
                out_len: 0,
                mixed_active: false,
                jitter_live: false,
                dtmf_out_ts: None,
                rx_seq: SeqTracker::new(),
                rx_jitter: JitterEstimator::new(),
                rx_ssrc: None,
                last_sr: None,
                octets_sent: 0,
                packets_sent: 0,
                next_rtcp: now + RTCP_INTERVAL,
            }));
        }
        let rtcp_open = leg.rtcp_open;
        if rtcp_needed && !rtcp_open {
            backend.open_port(port + 1, family).map_err(|e| {
                EngineError::Internal(format!("cannot open RTCP port {}: {e}", port + 1))
            })?;
            self.leg_mut(slot).rtcp_open = true;
        } else if !rtcp_needed && rtcp_open {
            backend.close_port(port + 1);
            self.leg_mut(slot).rtcp_open = false;
        }
        // The format may have changed: rebuild the session's plan.
        let s = self.leg(slot).session;
        self.rebuild_plan(now, s);
        Ok(Response::Leg(self.leg_info(slot)))
    }

    fn set_plan(&mut self, now: Instant, plan: ApiPlan) -> Result<Response, EngineError> {
        let s = *self
            .session_by_key
            .get(&plan.session)
            .ok_or_else(|| EngineError::NotFound(format!("session {}", plan.session)))?;
        for (i, e) in plan.edges.iter().enumerate() {
            for (field, id) in [("listener", e.listener), ("source", e.source)] {
                let slot = self.resolve(id).map_err(|_| EngineError::InvalidArgument {
                    field: format!("edges[{i}].{field}"),
                    message: format!("{id} is not a leg of this engine"),
                })?;
                if self.leg(slot).session != s {
                    return Err(EngineError::InvalidArgument {
                        field: format!("edges[{i}].{field}"),
                        message: format!("{id} is not a leg of session {}", plan.session),
                    });
                }
            }
            if e.listener == e.source {
                return Err(EngineError::InvalidArgument {
                    field: format!("edges[{i}]"),
                    message: "nobody hears themselves".into(),
                });
            }
        }
        self.session_mut(s).api_plan = plan;
        self.rebuild_plan(now, s);
        Ok(Response::Done)
    }

    /// Rebuilds the media plan of session `s` from its API plan and its legs' formats.
    fn rebuild_plan(&mut self, now: Instant, s: u32) {
        let sess = self.session(s);
        let n = sess.len;
        let mut matrix = HearMatrix::new(n);
        let mut no_dtmf = 0u16;
        let mut formats = [LegFormat {
            codec: Codec::Pcmu,
            ptime_ms: 20,
        }; MAX_SESSION_LEGS];
        let mut configured = [false; MAX_SESSION_LEGS];
        for i in 0..n {
            let leg = self.leg(sess.legs[i]);
            if let Some(m) = &leg.media {
                formats[i] = LegFormat {
                    codec: m.codec,
                    ptime_ms: m.ptime_ms,
                };
                configured[i] = true;
            }
            if sess.api_plan.no_dtmf.contains(&leg.id) {
                no_dtmf |= 1 << i;
            }
        }
        for e in &sess.api_plan.edges {
            let (Some(l), Some(src)) = (self.index_in(s, e.listener), self.index_in(s, e.source))
            else {
                continue; // A leg removed since the plan was set.
            };
            // An unconfigured leg can neither be heard nor hear: it has no codec yet.
            if configured[l] && configured[src] {
                // set_plan refused self-edges and the indices come from this session, so
                // the matrix cannot refuse this edge.
                let _ = matrix.set(l, src, Gain(e.gain));
            }
        }
        let plan = SessionPlan::build(&matrix, &formats[..n]);
        // A listener whose forwarded source changes starts a new source mapping, even if
        // the two sources happen to share an SSRC.
        for l in 0..n.min(self.session(s).plan.legs()) {
            let before = *self.session(s).plan.output(l);
            let after = *plan.output(l);
            if before != after {
                if let OutputPlan::Forward { .. } = before {
                    let slot = self.session(s).legs[l];
                    if let Some(m) = self.leg_mut(slot).media.as_mut() {
                        m.out.end_forward();
                    }
                }
            }
        }
        let mut mixing = false;
        let mut tick_ms = 0u32;
        for l in 0..n {
            if matches!(plan.output(l), OutputPlan::Mix(_)) {
                mixing = true;
            }
        }
        if mixing {
            // The session ticks at the greatest common divisor of its mixed legs' ptimes
            // so that every leg's frames are whole numbers of ticks.
            for i in 0..n {
                let mixed_out = matches!(plan.output(i), OutputPlan::Mix(_));
                if configured[i] && (mixed_out || plan.is_mixed_input(i)) {
                    tick_ms = gcd(tick_ms, formats[i].ptime_ms);
                }
            }
        }
        let tick_ms = if tick_ms == 0 { 20 } else { tick_ms };
        // Staggering: a session's ticks fall at a phase derived from its slot, spreading
        // sessions evenly over the period instead of bursting every 20 ms.
        // Phases are whole wheel slots, so that a tick's deadline is the start of its slot
        // and the shard wakes exactly when it is due.
        let phase_ns = (u64::from(s).wrapping_mul(7_919) % u64::from(tick_ms)) * WHEEL_SLOT_NS;
        let sess = self.session_mut(s);
        sess.matrix = matrix;
        sess.plan = plan;
        sess.no_dtmf = no_dtmf;
        sess.tick_samples = (tick_ms * 8) as usize;
        sess.tick_period = Duration::from_millis(u64::from(tick_ms));
        let was_mixing = sess.mixing;
        sess.mixing = mixing;
        if mixing && !was_mixing {
            let period = u64::from(tick_ms) * 1_000_000;
            let base = now.as_nanos() - now.as_nanos() % period;
            let mut next = Instant::from_nanos(base + phase_ns);
            if next <= now {
                next += sess.tick_period;
            }
            sess.next_tick = next;
            if !sess.scheduled {
                self.schedule(s);
            }
        }
        // Inputs that stopped being mixed drop what they buffered so that when they are
        // mixed again they start fresh rather than from stale audio.
        let legs = self.session(s).legs;
        for i in 0..n {
            let mixed_input = self.session(s).plan.is_mixed_input(i);
            let mixed_out = i < self.session(s).plan.legs()
                && matches!(self.session(s).plan.output(i), OutputPlan::Mix(_));
            if let Some(m) = self.leg_mut(legs[i]).media.as_mut() {
                if !mixed_input && (m.in_len > 0 || m.jitter_live) {
                    // Nobody mixes this input now: its jitter buffer is neither fed nor
                    // polled from here on, so it starts afresh when it is mixed again
                    // rather than from a stale timeline.
                    m.in_len = 0;
                    m.jitter.reset();
                    m.jitter_live = false;
                } else if mixed_input {
                    m.jitter_live = true;
                }
                if !mixed_out {
                    m.out_len = 0;
                    m.mixed_active = false;
                }
            }
        }
    }

    /// Takes a free port: a pair base (even) for a leg with separate RTCP, or any single
    /// port for a multiplexed leg (odd halves of pairs split by earlier mux legs first).
    fn take_port(&mut self, requested: Option<u16>, mux: bool) -> Result<u16, EngineError> {
        if let Some(p) = requested {
            let refuse = || EngineError::InvalidArgument {
                field: "requested_port".into(),
                message: format!(
                    "port {p} is taken or outside this shard's range {}..{}",
                    self.cfg.port_first,
                    u32::from(self.cfg.port_first) + u32::from(self.cfg.port_count)
                ),
            };
            if let Some(pos) = self.free_singles.iter().position(|&f| f == p) {
                if !mux {
                    return Err(refuse());
                }
                return Ok(self.free_singles.swap_remove(pos));
            }
            let base = p & !1;
            let pos = self
                .free_ports
                .iter()
                .position(|&f| f == base)
                .ok_or_else(refuse)?;
            if !mux && p != base {
                return Err(refuse());
            }
            self.free_ports.remove(pos);
            if mux {
                self.free_singles
                    .push(if p == base { base + 1 } else { base });
            }
            return Ok(p);
        }
        if mux {
            if let Some(p) = self.free_singles.pop() {
                return Ok(p);
            }
        }
        let base = self
            .free_ports
            .pop()
            .ok_or_else(|| EngineError::ResourceExhausted("no free port on this shard".into()))?;
        if mux {
            self.free_singles.push(base + 1);
        }
        Ok(base)
    }

    /// Returns a port taken by [`Shard::take_port`]. Single ports stay singles: pairs are
    /// not re-merged, which only matters once mux and non-mux legs have churned through
    /// the whole range.
    fn give_port(&mut self, port: u16, mux: bool) {
        if mux {
            self.free_singles.push(port);
        } else {
            self.free_ports.push(port);
        }
    }

    fn remove_leg(&mut self, now: Instant, backend: &mut dyn Backend, id: LegId) {
        let Ok(slot) = self.resolve(id) else { return };
        let Some(leg) = self.legs[slot as usize].take() else {
            return;
        };
        backend.close_port(leg.port);
        if leg.rtcp_open {
            backend.close_port(leg.port + 1);
        }
        self.port_table[usize::from(leg.port - self.cfg.port_first)] = NO_SLOT;
        if leg.paired {
            self.port_table[usize::from(leg.port + 1 - self.cfg.port_first)] = NO_SLOT;
        }
        self.give_port(leg.port, !leg.paired);
        self.generations[slot as usize] = self.generations[slot as usize].wrapping_add(1);
        self.free_legs.push(slot);
        let s = leg.session;
        let sess = self.session_mut(s);
        let idx = usize::from(leg.index);
        sess.legs.copy_within(idx + 1..sess.len, idx);
        sess.len -= 1;
        sess.legs[sess.len] = NO_SLOT;
        sess.api_plan
            .edges
            .retain(|e| e.listener != id && e.source != id);
        sess.api_plan.no_dtmf.retain(|&l| l != id);
        let remaining = sess.legs;
        let len = sess.len;
        for (i, &slot) in remaining[..len].iter().enumerate() {
            self.leg_mut(slot).index = i as u8;
        }
        if len == 0 {
            let key = self.session(s).key.clone();
            self.session_by_key.remove(&key);
            let scheduled = self.session(s).scheduled;
            if scheduled {
                self.unschedule(s);
            }
            self.sessions[s as usize] = None;
            self.free_sessions.push(s);
        } else {
            self.rebuild_plan(now, s);
        }
    }

    // ---------------------------------------------------------------------------------
    // Packet path: no allocation, no locks, no logging; count and drop.

    /// Handles one received datagram in place; `tx` is where forwarded copies are built.
    pub fn handle_packet(&mut self, now: Instant, d: Datagram<'_>, tx: &mut dyn TxSink) {
        self.counters.packets_in += 1;
        self.counters.bytes_in += d.payload.len() as u64;
        if d.payload.len() > MAX_UDP_PAYLOAD {
            return self.counters.drop(DropReason::Oversize);
        }
        let Some(offset) = d.local_port.checked_sub(self.cfg.port_first) else {
            return self.counters.drop(DropReason::UnknownPort);
        };
        let slot = match self.port_table.get(usize::from(offset)) {
            Some(&slot) if slot != NO_SLOT => slot,
            _ => return self.counters.drop(DropReason::UnknownPort),
        };
        let leg = self.legs[slot as usize]
            .as_mut()
            .expect("port table names live legs");
        let is_rtcp_port = leg.paired && d.local_port != leg.port;
        let Some(media) = leg.media.as_ref() else {
            return self.counters.drop(DropReason::UnconfiguredLeg);
        };
        // RTCP: on port+1, or multiplexed (RFC 5761: second byte 192..=223).
        if is_rtcp_port || (media.rtcp_mux && rtp::looks_like_rtcp(d.payload)) {
            return self.handle_rtcp(now, slot, d);
        }
        let view = match RtpView::parse(d.payload) {
            Ok(v) => v,
            Err(reason) => return self.counters.drop(reason),
        };
        // Symmetric RTP: latch the first valid source, then refuse every other one.
        let leg = self.legs[slot as usize]
            .as_mut()
            .expect("port table names live legs");
        match leg.remote {
            Some(r) if r != d.remote => {
                if leg.latched
                    || leg
                        .media
                        .as_ref()
                        .is_some_and(|m| m.config.remote.is_some())
                {
                    return self.counters.drop(DropReason::WrongSource);
                }
            }
            Some(_) => {}
            None => {}
        }
        let media = leg.media.as_mut().expect("checked above");
        let pt = view.payload_type;
        let is_audio = pt == media.payload_type;
        let is_event = media.te_pt == Some(pt);
        let is_cn = pt == PayloadType::CN.0;
        if !(is_audio || is_event || is_cn) {
            return self.counters.drop(DropReason::UnknownPayloadType);
        }
        if leg.remote.is_none() {
            leg.remote = Some(d.remote);
            leg.latched = true;
            let ev = EngineEvent::RemoteLatched {
                leg: leg.id,
                remote: d.remote,
            };
            if self.events.push(ev).is_err() {
                self.counters.events_lost += 1;
            }
        }
        let leg = self.legs[slot as usize]
            .as_mut()
            .expect("port table names live legs");
        leg.last_rx = now;
        leg.timed_out = false;
        // Reception statistics for this leg's RTCP report blocks (RFC 3550 A.1, A.8).
        if let Some(m) = leg.media.as_mut() {
            if m.rx_ssrc != Some(Ssrc(view.ssrc)) {
                m.rx_ssrc = Some(Ssrc(view.ssrc));
                m.rx_seq = SeqTracker::new();
                m.rx_jitter.reset();
            }
            m.rx_seq.handle_seq(SeqNo(view.seq));
            if !is_event {
                let arrival = (u128::from(now.as_nanos()) * 8_000 / 1_000_000_000) as u32;
                m.rx_jitter.handle_arrival(arrival, RtpTs(view.ts));
            }
        }
        if !leg.first_packet_seen {
            leg.first_packet_seen = true;
            if leg.media.as_ref().is_some_and(|m| m.report_first_packet) {
                let s = leg.session;
                let ev = EngineEvent::FirstPacket {
                    leg: leg.id,
                    session: self.session(s).key.clone(),
                    leg_key: self.leg(slot).key.clone(),
                };
                if self.events.push(ev).is_err() {
                    self.counters.events_lost += 1;
                }
            }
        }
        let leg = self.leg(slot);
        let (s, src_index) = (leg.session, usize::from(leg.index));
        if is_event {
            return self.forward_event(now, s, src_index, &view, d.payload, tx);
        }
        // Forward to every listener whose plan forwards this source.
        let sess = self.session(s);
        let targets = sess.plan.forward_targets(src_index);
        if !targets.is_empty() {
            let legs = sess.legs;
            for l in targets {
                self.forward_audio(now, legs[l], &view, d.payload, tx);
            }
        }
        // Buffer for the mix if anyone mixes this source.
        if self.session(s).plan.is_mixed_input(src_index) {
            let media = self.leg_mut(slot).media.as_mut().expect("checked above");
            let r = media.jitter.handle_packet(
                now,
                Ssrc(view.ssrc),
                SeqNo(view.seq),
                RtpTs(view.ts),
                PayloadType(view.payload_type),
                view.marker,
                view.payload(d.payload),
            );
            if let Err(drop) = r {
                if let Some(reason) = jitter_drop_reason(&drop) {
                    self.counters.drop(reason);
                }
            }
        }
    }

    fn forward_audio(
        &mut self,
        now: Instant,
        listener: u32,
        view: &RtpView,
        packet: &[u8],
        tx: &mut dyn TxSink,
    ) {
        let leg = self.legs[listener as usize]
            .as_mut()
            .expect("session legs are live");
        let (Some(remote), Some(m)) = (leg.remote, leg.media.as_mut()) else {
            return;
        };
        let Some(stamp) = m.out.forward(
            now,
            Ssrc(view.ssrc),
            SeqNo(view.seq),
            RtpTs(view.ts),
            view.marker,
        ) else {
            return;
        };
        m.mixed_active = false;
        let payload = view.payload(packet);
        let pt = m.payload_type;
        let sent = tx.send_with(leg.port, remote, &mut |buf| {
            let h = rtp::write_header(buf, pt, stamp.marker, stamp.seq.0, stamp.ts.0, stamp.ssrc.0);
            buf[h..h + payload.len()].copy_from_slice(payload);
            h + payload.len()
        });
        if sent {
            m.packets_sent = m.packets_sent.wrapping_add(1);
            m.octets_sent = m.octets_sent.wrapping_add(payload.len() as u32);
        }
        self.count_send(sent, rtp::HEADER_LEN + payload.len());
    }

    /// Passes a telephone event from source `src` to every listener that hears it and may
    /// receive events (SPEC section 5: never mixed, never to a monitoring supervisor).
    fn forward_event(
        &mut self,
        now: Instant,
        s: u32,
        src: usize,
        view: &RtpView,
        packet: &[u8],
        tx: &mut dyn TxSink,
    ) {
        let sess = self.session(s);
        let (legs, n, no_dtmf) = (sess.legs, sess.len, sess.no_dtmf);
        for l in 0..n {
            if l == src || no_dtmf & (1 << l) != 0 || self.session(s).matrix.gain(l, src).is_mute()
            {
                continue;
            }
            let leg = self.legs[legs[l] as usize]
                .as_mut()
                .expect("session legs are live");
            let (Some(remote), Some(m)) = (leg.remote, leg.media.as_mut()) else {
                continue;
            };
            let Some(te_pt) = m.te_pt else { continue };
            // An event keeps one timestamp for all its packets; map the source's event
            // timestamp to one in the output's space, chosen when the event starts.
            let src_ts = RtpTs(view.ts);
            let out_ts = match m.dtmf_out_ts {
                Some((from, to)) if from == src_ts => to,
                _ => {
                    let to = m.out.event_timestamp(now);
                    m.dtmf_out_ts = Some((src_ts, to));
                    to
                }
            };
            let stamp = m.out.event(out_ts, view.marker);
            let payload = view.payload(packet);
            let sent = tx.send_with(leg.port, remote, &mut |buf| {
                let h = rtp::write_header(
                    buf,
                    te_pt,
                    stamp.marker,
                    stamp.seq.0,
                    stamp.ts.0,
                    stamp.ssrc.0,
                );
                buf[h..h + payload.len()].copy_from_slice(payload);
                h + payload.len()
            });
            self.count_send(sent, rtp::HEADER_LEN + payload.len());
        }
    }

    fn handle_rtcp(&mut self, now: Instant, slot: u32, d: Datagram<'_>) {
        let mut sr_ntp = None;
        for p in rtcp::packets(d.payload) {
            let Ok(p) = p else {
                return self.counters.drop(DropReason::BadRtcp);
            };
            match RtcpRepr::parse(&p) {
                Ok(RtcpRepr::SenderReport(sr)) => sr_ntp = Some(sr.sender_info.ntp_ts),
                Ok(_) => {}
                Err(_) => return self.counters.drop(DropReason::BadRtcp),
            }
        }
        // The peer's sender report feeds LSR/DLSR in our next report block, so that it
        // can compute the round-trip time.
        if let (Some(ntp), Some(m)) = (sr_ntp, self.leg_mut(slot).media.as_mut()) {
            m.last_sr = Some(((ntp >> 16) as u32, now));
        }
    }

    /// Sends the RTCP reports that are due, a bounded number per call.
    fn send_rtcp(&mut self, now: Instant, tx: &mut dyn TxSink) {
        const PER_CALL: u32 = 64;
        let max = self.cfg.max_legs;
        for _ in 0..PER_CALL.min(max) {
            let slot = self.rtcp_sweep;
            self.rtcp_sweep = (self.rtcp_sweep + 1) % max;
            let jitter_ms = self.rng.next_u32() % 5_000;
            let ntp = self.ntp_at_zero.wrapping_add(ntp_of(now));
            let Some(leg) = self.legs[slot as usize].as_mut() else {
                continue;
            };
            let (Some(remote), Some(m)) = (leg.remote, leg.media.as_mut()) else {
                continue;
            };
            if m.next_rtcp > now {
                continue;
            }
            // [0.5, 1.5] of the interval, so that legs set up together drift apart.
            m.next_rtcp = now + Duration::from_millis(2_500 + u64::from(jitter_ms) / 2 * 2);
            let ssrc = m.out.ssrc();
            let block = m.rx_ssrc.map(|src| {
                let loss = m.rx_seq.poll_interval_loss();
                let (lsr, dlsr) = match m.last_sr {
                    Some((mid, at)) => {
                        let d = now.saturating_since(at).as_nanos();
                        (mid, ((u128::from(d) << 16) / 1_000_000_000) as u32)
                    }
                    None => (0, 0),
                };
                ReportBlock {
                    ssrc: src,
                    fraction_lost: loss.fraction_lost,
                    cumulative_lost: m.rx_seq.cumulative_lost().clamp(
                        i64::from(ReportBlock::CUMULATIVE_LOST_MIN),
                        i64::from(ReportBlock::CUMULATIVE_LOST_MAX),
                    ) as i32,
                    ext_highest_seq: m.rx_seq.extended_max(),
                    jitter: m.rx_jitter.jitter(),
                    lsr,
                    dlsr,
                }
            });
            let blocks_storage: &[ReportBlock] = match &block {
                Some(b) => std::slice::from_ref(b),
                None => &[],
            };
            let Ok(blocks) = ReportBlocks::from_slice(blocks_storage) else {
                continue;
            };
            let report = if m.packets_sent > 0 {
                RtcpRepr::SenderReport(SenderReport {
                    ssrc,
                    sender_info: SenderInfo {
                        ntp_ts: ntp,
                        rtp_ts: m.out.event_timestamp(now),
                        packet_count: m.packets_sent,
                        octet_count: m.octets_sent,
                    },
                    reports: blocks,
                    profile_extension: &[],
                })
            } else {
                RtcpRepr::ReceiverReport(ReceiverReport {
                    ssrc,
                    reports: blocks,
                    profile_extension: &[],
                })
            };
            let cname = *b"earshot";
            let items = [SdesItem {
                kind: SdesItemType::Cname,
                value: &cname,
            }];
            let chunks = [SdesChunk {
                ssrc,
                items: earshot_media::wire::rtcp::SdesItems::from_slice(&items),
            }];
            let Ok(sdes) = SdesChunks::from_slice(&chunks) else {
                continue;
            };
            let compound = [report, RtcpRepr::SourceDescription(sdes)];
            let dst = if m.rtcp_mux {
                remote
            } else {
                SocketAddr::new(remote.ip(), remote.port().wrapping_add(1))
            };
            let src_port = if m.rtcp_mux { leg.port } else { leg.port + 1 };
            let mut len = 0;
            let sent = tx.send_with(src_port, dst, &mut |buf| {
                len = rtcp::emit_compound(&compound, buf).unwrap_or(0);
                len
            });
            if sent && len > 0 {
                self.counters.packets_out += 1;
                self.counters.bytes_out += len as u64;
            } else if !sent {
                self.counters.drop(DropReason::TxFull);
            }
        }
    }

    #[inline]
    fn count_send(&mut self, sent: bool, len: usize) {
        if sent {
            self.counters.packets_out += 1;
            self.counters.bytes_out += len as u64;
        } else {
            self.counters.drop(DropReason::TxFull);
        }
    }

    // ---------------------------------------------------------------------------------
    // Ticks.

    /// When the shard next needs [`Shard::handle_ticks`], if any session ticks.
    pub fn poll_deadline(&self) -> Option<Instant> {
        if self.session_count() == 0 {
            return None;
        }
        // The wheel is scanned a slot at a time; waking at the next slot boundary is
        // cheap and precise to the slot width.
        Some(Instant::from_nanos((self.wheel_cursor + 1) * WHEEL_SLOT_NS))
    }

    /// Runs every tick due at `now` and sweeps a few legs for media timeouts.
    pub fn handle_ticks(&mut self, now: Instant, tx: &mut dyn TxSink, clock: &dyn Fn() -> Instant) {
        if self.started.is_none() {
            self.started = Some(now);
            self.wheel_cursor = now.as_nanos() / WHEEL_SLOT_NS;
        }
        let target = now.as_nanos() / WHEEL_SLOT_NS;
        while self.wheel_cursor <= target {
            let slot = (self.wheel_cursor % WHEEL_SLOTS as u64) as usize;
            let mut s = std::mem::replace(&mut self.wheel[slot], NO_SLOT);
            let mut keep = NO_SLOT;
            while s != NO_SLOT {
                let next = self.session(s).wheel_next;
                let deadline = self.session(s).next_tick;
                if deadline <= now {
                    self.session_mut(s).scheduled = false;
                    let start = clock();
                    let lateness = start.saturating_since(deadline);
                    self.run_tick(start, s, tx);
                    let end = clock();
                    let c = &mut self.counters;
                    c.ticks += 1;
                    let _ = c.tick_lateness_ns.record(lateness.as_nanos().max(1));
                    let _ = c
                        .tick_processing_ns
                        .record(end.saturating_since(start).as_nanos().max(1));
                    if lateness > self.cfg.late_tick_threshold {
                        c.late_ticks += 1;
                    }
                    if let Some(sess) = self.sessions[s as usize].as_mut() {
                        if sess.mixing {
                            sess.next_tick += sess.tick_period;
                            // A shard that fell more than a period behind skips ahead
                            // rather than bursting to catch up.
                            if sess.next_tick + sess.tick_period < now {
                                sess.next_tick = now;
                            }
                            self.schedule(s);
                        }
                    }
                } else {
                    // Not yet due (a later lap of the wheel): keep it in this slot.
                    self.session_mut(s).wheel_next = keep;
                    keep = s;
                }
                s = next;
            }
            // Reinsert the sessions kept for a later lap.
            let mut k = keep;
            while k != NO_SLOT {
                let next = self.session(k).wheel_next;
                self.session_mut(k).wheel_next = self.wheel[slot];
                self.wheel[slot] = k;
                k = next;
            }
            if self.wheel_cursor == target {
                break;
            }
            self.wheel_cursor += 1;
        }
        self.sweep_timeouts(now);
        self.send_rtcp(now, tx);
    }

    /// Sets the NTP time (RFC 3550 64-bit format) that corresponds to `Instant::ZERO`, for
    /// the wall-clock field of sender reports. Without it, SRs carry NTP time since the
    /// engine's epoch.
    pub fn set_ntp_at_zero(&mut self, ntp: u64) {
        self.ntp_at_zero = ntp;
    }

    fn schedule(&mut self, s: u32) {
        let sess = self.sessions[s as usize]
            .as_mut()
            .expect("scheduling a live session");
        let slot = ((sess.next_tick.as_nanos() / WHEEL_SLOT_NS) % WHEEL_SLOTS as u64) as usize;
        sess.wheel_next = self.wheel[slot];
        sess.scheduled = true;
        self.wheel[slot] = s;
    }

    fn unschedule(&mut self, s: u32) {
        for slot in 0..WHEEL_SLOTS {
            let mut prev = NO_SLOT;
            let mut cur = self.wheel[slot];
            while cur != NO_SLOT {
                let next = self.session(cur).wheel_next;
                if cur == s {
                    if prev == NO_SLOT {
                        self.wheel[slot] = next;
                    } else {
                        self.session_mut(prev).wheel_next = next;
                    }
                    self.session_mut(s).scheduled = false;
                    return;
                }
                prev = cur;
                cur = next;
            }
        }
    }

    /// One tick of session `s`: pull a tick's worth of PCM from every mixed input, mix
    /// each mixed output, and send every output whose frame is complete.
    fn run_tick(&mut self, now: Instant, s: u32, tx: &mut dyn TxSink) {
        let sess = self.session(s);
        let (legs, n, tick) = (sess.legs, sess.len, sess.tick_samples);
        if !sess.mixing {
            return;
        }
        // 1. Inputs: top up each mixed input's PCM to one tick from its jitter buffer.
        for i in 0..n {
            if !self.session(s).plan.is_mixed_input(i) {
                continue;
            }
            let Some(m) = self.legs[legs[i] as usize]
                .as_mut()
                .and_then(|l| l.media.as_mut())
            else {
                continue;
            };
            // Decoded straight into the staging buffer: in_len < tick <= frame, and the
            // buffer holds two of the longest frames.
            while m.in_len < tick {
                let fs = m.frame_samples;
                let _kind = m
                    .jitter
                    .poll_frame(now, &mut m.in_pcm[m.in_len..m.in_len + fs]);
                m.in_len += fs;
            }
        }
        // 2. Outputs: mix one tick for each mixed listener; send full frames.
        for l in 0..n {
            if l >= self.session(s).plan.legs() {
                break;
            }
            let OutputPlan::Mix(_) = self.session(s).plan.output(l) else {
                continue;
            };
            let mut inputs: [&[i16]; MAX_SESSION_LEGS] = [&[]; MAX_SESSION_LEGS];
            let mut gains = [Gain::MUTE; MAX_SESSION_LEGS];
            let mut k = 0;
            let sess = self.sessions[s as usize]
                .as_ref()
                .expect("ticking a live session");
            if let OutputPlan::Mix(sources) = sess.plan.output(l) {
                for &earshot_media::plan::MixSource { source: src, gain } in sources.as_slice() {
                    if let Some(m) = self.legs[legs[src] as usize]
                        .as_ref()
                        .and_then(|x| x.media.as_ref())
                    {
                        inputs[k] = &m.in_pcm[..tick];
                        gains[k] = gain;
                        k += 1;
                    }
                }
            }
            let mix = self.kernels.mix;
            // Inputs borrow other legs immutably, so the mix lands in the shard's scratch
            // buffer (a different field), not in the listener's own leg.
            let chunk = &mut self.scratch[..tick];
            mix(chunk, &inputs[..k], &gains[..k]);
            let chunk = &self.scratch[..tick];
            let leg = self.legs[legs[l] as usize]
                .as_mut()
                .expect("session legs are live");
            let port = leg.port;
            let remote = leg.remote;
            let Some(m) = leg.media.as_mut() else {
                continue;
            };
            let fs = m.frame_samples;
            if m.out_len + tick > fs {
                m.out_len = 0; // ptime changed under us; restart the frame.
            }
            // The common case, a tick of one whole frame, encodes straight from the mix.
            let whole = m.out_len == 0 && tick == fs;
            if !whole {
                m.out_pcm[m.out_len..m.out_len + tick].copy_from_slice(chunk);
                m.out_len += tick;
                if m.out_len < fs {
                    continue;
                }
                m.out_len = 0;
            }
            let talkspurt = !m.mixed_active;
            m.mixed_active = true;
            let stamp = m.out.mixed(now, talkspurt);
            let Some(remote) = remote else { continue };
            let (codec, pt) = (m.codec, m.payload_type);
            let pcm = if whole { chunk } else { &m.out_pcm[..fs] };
            let sent = tx.send_with(port, remote, &mut |buf| {
                let h =
                    rtp::write_header(buf, pt, stamp.marker, stamp.seq.0, stamp.ts.0, stamp.ssrc.0);
                g711::encode(codec, pcm, &mut buf[h..h + fs]);
                h + fs
            });
            if sent {
                m.packets_sent = m.packets_sent.wrapping_add(1);
                m.octets_sent = m.octets_sent.wrapping_add(fs as u32);
            }
            self.count_send(sent, rtp::HEADER_LEN + fs);
        }
        // 3. Consume the tick from every input.
        for i in 0..n {
            if let Some(m) = self.legs[legs[i] as usize]
                .as_mut()
                .and_then(|l| l.media.as_mut())
            {
                if m.in_len == tick {
                    m.in_len = 0;
                } else if m.in_len > tick {
                    m.in_pcm.copy_within(tick..m.in_len, 0);
                    m.in_len -= tick;
                }
            }
        }
    }

    fn sweep_timeouts(&mut self, now: Instant) {
        // A bounded slice of the leg table per call keeps the sweep's cost flat.
        const SWEEP_PER_CALL: u32 = 64;
        let max = self.cfg.max_legs;
        for _ in 0..SWEEP_PER_CALL.min(max) {
            let slot = self.timeout_sweep;
            self.timeout_sweep = (self.timeout_sweep + 1) % max;
            let timeout = self.cfg.media_timeout;
            let Some(leg) = self.legs[slot as usize].as_mut() else {
                continue;
            };
            if leg.media.is_none() || leg.timed_out || now.saturating_since(leg.last_rx) < timeout {
                continue;
            }
            leg.timed_out = true;
            let (id, s) = (leg.id, leg.session);
            let ev = EngineEvent::MediaTimeout {
                leg: id,
                session: self.session(s).key.clone(),
                leg_key: self.leg(slot).key.clone(),
            };
            if self.events.push(ev).is_err() {
                self.counters.events_lost += 1;
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Reading state.

    fn fill_snapshot(&self, snap: &mut EngineSnapshot) {
        for (slot, leg) in self.legs.iter().enumerate() {
            if leg.is_some() {
                snap.legs.push(self.leg_info(slot as u32));
            }
        }
        for sess in self.sessions.iter().flatten() {
            snap.plans.push(sess.api_plan.clone());
        }
    }

    fn fill_stats(&self, s: &mut ShardStats) {
        s.shard = self.cfg.index;
        s.legs = self.leg_count() as u64;
        s.sessions = self.session_count() as u64;
        let (mut fwd, mut mixed, mut silent) = (0u64, 0u64, 0u64);
        for sess in self.sessions.iter().flatten() {
            if sess.mixing {
                mixed += 1;
            } else if (0..sess.len).any(|l| {
                l < sess.plan.legs() && matches!(sess.plan.output(l), OutputPlan::Forward { .. })
            }) {
                fwd += 1;
            } else {
                silent += 1;
            }
        }
        s.sessions_by_mode = vec![
            ("forward_only".into(), fwd),
            ("mixed".into(), mixed),
            ("silent".into(), silent),
        ];
        self.counters.fill(s);
    }

    fn leg_info(&self, slot: u32) -> LegInfo {
        let leg = self.leg(slot);
        let ip: IpAddr = match leg.family {
            Family::V4 => IpAddr::V4(self.cfg.local_v4.unwrap_or(Ipv4Addr::LOCALHOST)),
            Family::V6 => IpAddr::V6(self.cfg.local_v6.unwrap_or(Ipv6Addr::LOCALHOST)),
        };
        // A leg allocated for rtcp-mux holds one port: RTCP shares it from the start.
        let mux = !leg.paired;
        LegInfo {
            leg: leg.id,
            session: self.session(leg.session).key.clone(),
            leg_key: leg.key.clone(),
            local: SocketAddr::new(ip, leg.port),
            local_rtcp: SocketAddr::new(ip, if mux { leg.port } else { leg.port + 1 }),
            media: leg.media.as_ref().map(|m| m.config.clone()),
            remote: leg.remote,
        }
    }

    fn resolve(&self, id: LegId) -> Result<u32, EngineError> {
        let slot = id.slot();
        let ok = id.shard() == self.cfg.index
            && (slot as usize) < self.legs.len()
            && self.legs[slot as usize]
                .as_ref()
                .is_some_and(|l| l.id == id);
        if ok {
            Ok(slot)
        } else {
            Err(EngineError::NotFound(format!("leg {id}")))
        }
    }

    fn index_in(&self, s: u32, id: LegId) -> Option<usize> {
        let slot = self.resolve(id).ok()?;
        let leg = self.leg(slot);
        (leg.session == s).then_some(usize::from(leg.index))
    }

    fn leg(&self, slot: u32) -> &Leg {
        self.legs[slot as usize]
            .as_ref()
            .expect("slot holds a live leg")
    }

    fn leg_mut(&mut self, slot: u32) -> &mut Leg {
        self.legs[slot as usize]
            .as_mut()
            .expect("slot holds a live leg")
    }

    fn session(&self, s: u32) -> &Session {
        self.sessions[s as usize]
            .as_ref()
            .expect("slot holds a live session")
    }

    fn session_mut(&mut self, s: u32) -> &mut Session {
        self.sessions[s as usize]
            .as_mut()
            .expect("slot holds a live session")
    }
}

/// A command for one shard (the engine routes each [`earshot_engine_api::Request`]).
// Commands are few and travel by value through a bounded queue on the control path; the
// size of the stats variant does not matter there.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ShardCommand {
    /// See [`earshot_engine_api::Request::AllocateLeg`].
    AllocateLeg {
        /// Session key.
        session: String,
        /// Leg key.
        leg_key: String,
        /// Family.
        family: Family,
        /// Port wanted.
        requested_port: Option<u16>,
        /// One port instead of a pair.
        rtcp_mux: bool,
    },
    /// See [`earshot_engine_api::Request::ConfigureLeg`].
    ConfigureLeg {
        /// Leg.
        leg: LegId,
        /// Media.
        media: MediaConfig,
    },
    /// See [`earshot_engine_api::Request::SetSessionPlan`].
    SetSessionPlan(ApiPlan),
    /// See [`earshot_engine_api::Request::RemoveLeg`].
    RemoveLeg {
        /// Leg.
        leg: LegId,
    },
    /// See [`earshot_engine_api::Request::RemoveSession`].
    RemoveSession {
        /// Session key.
        session: String,
    },
    /// Fill this snapshot with the shard's legs and plans.
    Snapshot(EngineSnapshot),
    /// Fill this entry with the shard's stats.
    Stats(ShardStats),
}

/// Validates a leg's media configuration; names the offending field.
pub fn validate_media(m: &MediaConfig) -> Result<(), EngineError> {
    let bad = |field: &str, message: String| {
        Err(EngineError::InvalidArgument {
            field: field.into(),
            message,
        })
    };
    if !earshot_media::PTIMES_MS.contains(&m.ptime_ms) {
        return bad(
            "ptime_ms",
            format!("{} is not one of 10, 20, 30, 40, 60", m.ptime_ms),
        );
    }
    if m.payload_type > 127 {
        return bad(
            "payload_type",
            format!("{} is not a 7-bit payload type", m.payload_type),
        );
    }
    if let Some(te) = m.telephone_event_pt {
        if te > 127 || te == m.payload_type || te == PayloadType::CN.0 {
            return bad(
                "telephone_event_pt",
                format!("{te} clashes or is not a 7-bit payload type"),
            );
        }
    }
    if (72..=95).contains(&m.payload_type) {
        return bad(
            "payload_type",
            format!("{} collides with RTCP packet types", m.payload_type),
        );
    }
    Ok(())
}

/// `now` as a 64-bit NTP duration (32.32 fixed point seconds).
fn ntp_of(now: Instant) -> u64 {
    let ns = now.as_nanos();
    ((ns / 1_000_000_000) << 32) | (((ns % 1_000_000_000) << 32) / 1_000_000_000)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn jitter_drop_reason(d: &earshot_media::jitter::DropReason) -> Option<DropReason> {
    use earshot_media::jitter::DropReason as J;
    match d {
        J::TooLate => Some(DropReason::JitterLate),
        J::Duplicate => Some(DropReason::JitterDuplicate),
        J::Overflow => Some(DropReason::JitterOverflow),
        J::BadPayloadLength => Some(DropReason::BadHeader),
        J::UnexpectedPayloadType => Some(DropReason::UnknownPayloadType),
        // Held while a new timeline proves itself: not a loss of input.
        J::Probation => None,
    }
}

/// Adapts a shard and a clock reading to the backend's [`PacketHandler`].
#[derive(Debug)]
pub struct ShardHandler<'a> {
    /// The shard.
    pub shard: &'a mut Shard,
    /// `now` for the whole batch: one clock read per batch, not per packet.
    pub now: Instant,
}

impl PacketHandler for ShardHandler<'_> {
    fn handle_datagram(&mut self, dgram: Datagram<'_>, tx: &mut dyn TxSink) {
        self.shard.handle_packet(self.now, dgram, tx);
    }
}
