//! One shard: the legs, sessions, port table and tick schedule of one core.
//!
//! The shard is a state machine in the sans-IO style (STYLE.md rule 1). It owns no socket,
//! thread or clock; see the crate doc for the loop that drives it. Everything is sized
//! when the shard is built: the leg and session tables, the port table (indexed directly
//! by local port, no hashing on the packet path), the event queue and the tick wheel.
//! Per-leg media state (jitter buffer, output stream) is built when a leg is configured,
//! which is the control path.
//!
//! ## Forward and mix
//! The session's media plan says, per listener, whether it hears silence, one forwarded
//! source, or a mix. A forwarded packet is re-stamped into the listener's output stream
//! and sent from inside the receive batch: no jitter buffer, no tick, no decoding. Inputs
//! that some listener mixes also go into their jitter buffer, and the session's tick
//! pulls a frame from each, mixes, encodes and sends. A session in which nobody mixes is
//! never ticked: monitoring adds nothing to the primary call's path.
//!
//! ## Rooms
//! [`legs`](self) allocation and configuration; `session`: hear relation to media plan and
//! the tick wheel; `packet`: the receive path; `tick`: mixing; `rtcp`: reports;
//! `report`: snapshots and statistics for the control side.

// Index loops walk parallel per-leg arrays (legs, formats, plan outputs) by leg index,
// which reads better than zipped iterators; nested `if`s keep the borrow scopes obvious.
#![allow(
    clippy::needless_range_loop,
    clippy::collapsible_if,
    clippy::collapsible_match
)]

mod legs;
mod packet;
mod report;
mod rtcp;
mod session;
mod srtp;
mod tick;

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use earshot_engine_api::{
    EngineError, EngineSnapshot, IpFamily, LegId, MediaConfig, Response, SessionPlan as ApiPlan,
    ShardStats,
};
use earshot_media::dsp::mix::MixKernels;
use earshot_media::mixer::Frames;
use earshot_media::rng::SeedRng;
use earshot_media::time::{Duration, Instant};
use earshot_media::{MAX_FRAME_SAMPLES, MAX_SESSION_LEGS};

use crate::stats::Counters;
use legs::{Leg, NewLeg};
pub use packet::ShardHandler;
use session::Session;

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

/// Events a shard queues for the control side. They carry ids, never strings: the
/// packet path does not allocate. Drained with [`Shard::poll_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardEvent {
    /// A leg configured with `report_first_packet` received its first valid packet.
    FirstPacket(LegId),
    /// A leg received nothing for the configured media timeout.
    MediaTimeout(LegId),
    /// A leg without a configured remote latched onto this source address.
    RemoteLatched(LegId, SocketAddr),
}

/// A port a removed leg no longer uses: the driver closes its socket(s) and returns it
/// to the port pool. Drained with [`Shard::poll_released_port`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReleasedPort {
    /// The leg's RTP port.
    pub port: u16,
    /// Whether the leg also held `port + 1` for RTCP (no rtcp-mux).
    pub paired: bool,
    /// The leg's address family.
    pub family: IpFamily,
}

/// Events held for the control side at most; beyond, they are counted as lost.
pub const EVENT_QUEUE: usize = 4_096;

pub(crate) const NO_SLOT: u32 = u32::MAX;

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
    wheel: Vec<u32>,
    /// Bit per wheel slot: set while the slot holds a session.
    wheel_busy: u64,
    wheel_cursor: u64,
    rng: SeedRng,
    kernels: MixKernels,
    counters: Counters,
    events: VecDeque<ShardEvent>,
    released: Vec<ReleasedPort>,
    timeout_sweep: u32,
    rtcp_sweep: u32,
    /// When the media-timeout and RTCP sweeps next run.
    next_sweep: Instant,
    ntp_at_zero: u64,
    /// One tick of PCM per leg of the session being ticked: mixed inputs in, mixes out.
    tick_in: Box<Frames>,
    tick_out: Box<Frames>,
    /// Encoded frames of shared mixes, by leader, for its followers.
    tick_enc: Box<[[u8; MAX_FRAME_SAMPLES]; MAX_SESSION_LEGS]>,
    /// One tick or frame at a codec's rate, on its way through a resampler.
    tick_rs: Box<[i16; MAX_FRAME_SAMPLES]>,
    /// Time of the first iteration: the wheel's origin.
    started: Option<Instant>,
    /// The packet path's last conversion of `now` to an RTP clock: `(now, clock_hz,
    /// units)`. A receive batch shares one `now`; a clock of 0 Hz (no codec has one)
    /// matches nothing before the first packet.
    last_arrival: (Instant, u32, u32),
}

impl Shard {
    /// Builds a shard with all its tables allocated.
    pub fn new(cfg: ShardConfig, kernels: MixKernels) -> Shard {
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
        Shard {
            legs: (0..max_legs).map(|_| None).collect(),
            generations: vec![0; max_legs],
            free_legs: (0..cfg.max_legs).rev().collect(),
            sessions: (0..max_sessions).map(|_| None).collect(),
            free_sessions: (0..cfg.max_sessions).rev().collect(),
            session_by_key: HashMap::with_capacity(max_sessions),
            port_table: vec![NO_SLOT; usize::from(cfg.port_count)],
            wheel: vec![NO_SLOT; tick::WHEEL_SLOTS],
            wheel_busy: 0,
            wheel_cursor: 0,
            rng: SeedRng::new(cfg.seed ^ u64::from(cfg.index).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            kernels,
            counters: Counters::new(),
            events: VecDeque::with_capacity(EVENT_QUEUE),
            released: Vec::with_capacity(64),
            timeout_sweep: 0,
            rtcp_sweep: 0,
            next_sweep: Instant::ZERO,
            ntp_at_zero: 0,
            tick_in: Box::new([[0; MAX_FRAME_SAMPLES]; MAX_SESSION_LEGS]),
            tick_out: Box::new([[0; MAX_FRAME_SAMPLES]; MAX_SESSION_LEGS]),
            tick_enc: Box::new([[0; MAX_FRAME_SAMPLES]; MAX_SESSION_LEGS]),
            tick_rs: Box::new([0; MAX_FRAME_SAMPLES]),
            started: None,
            last_arrival: (Instant::ZERO, 0, 0),
            cfg,
        }
    }

    /// The shard's configuration.
    pub fn config(&self) -> &ShardConfig {
        &self.cfg
    }

    /// The shard's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Mutable counters, for the driving loop's own accounting (stalls).
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

    /// Sets the NTP time (RFC 3550 64-bit format) that corresponds to `Instant::ZERO`, for
    /// the wall-clock field of sender reports. Without it, SRs carry NTP time since the
    /// engine's epoch.
    pub fn set_ntp_at_zero(&mut self, ntp: u64) {
        self.ntp_at_zero = ntp;
    }

    /// Takes the next event for the control side.
    pub fn poll_event(&mut self) -> Option<ShardEvent> {
        self.events.pop_front()
    }

    /// Takes the next port a removed leg released.
    pub fn poll_released_port(&mut self) -> Option<ReleasedPort> {
        self.released.pop()
    }

    // ---------------------------------------------------------------------------------
    // Commands (control path: may allocate; never I/O).

    /// Applies one command. Each command changes at most one session, whole, between
    /// receive batches and ticks: that is the tick boundary.
    pub fn handle_command(
        &mut self,
        now: Instant,
        cmd: ShardCommand,
    ) -> Result<Response, EngineError> {
        match cmd {
            ShardCommand::AllocateLeg {
                session,
                leg_key,
                family,
                port,
                rtcp_mux,
                resume,
            } => {
                let new = NewLeg {
                    session,
                    leg_key,
                    family,
                    port,
                    rtcp_mux,
                    resume,
                };
                self.allocate_leg(now, new)
            }
            ShardCommand::ConfigureLeg { leg, media } => self.configure_leg(now, leg, media),
            ShardCommand::SetSessionPlan(plan) => self.set_plan(now, plan),
            ShardCommand::RemoveLeg { leg } => {
                self.remove_leg(now, leg);
                Ok(Response::Done)
            }
            ShardCommand::RemoveSession { session } => {
                if let Some(&s) = self.session_by_key.get(&session) {
                    let sess = self.session(s);
                    let ids: Vec<LegId> = sess.legs[..sess.len]
                        .iter()
                        .map(|&slot| self.leg(slot).id)
                        .collect();
                    for id in ids {
                        self.remove_leg(now, id);
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
                Ok(Response::Stats(earshot_engine_api::EngineStats {
                    backend: String::new(),
                    shards: vec![stats],
                }))
            }
        }
    }

    fn push_event(&mut self, event: ShardEvent) {
        if self.events.len() < EVENT_QUEUE {
            self.events.push_back(event);
        } else {
            self.counters.events_lost += 1;
        }
    }

    /// Counts one send: `sent` as [`crate::io::TxSink::send_with`] returned it, `len`
    /// the datagram's length as the build closure returned it (0: SRTP protection
    /// failed and the send was cancelled).
    #[inline]
    fn count_send(&mut self, sent: bool, len: usize) {
        self.counters.count_send(sent, len);
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
    /// Adds a leg on `port`, which the caller chose from its
    /// [`PortPool`](crate::ports::PortPool) and bound (with `port + 1` unless
    /// `rtcp_mux`). Retrying with the same `(session, leg_key)` returns the existing leg,
    /// whatever `port` says: the caller then returns `port` to its pool.
    AllocateLeg {
        /// Session key.
        session: String,
        /// Leg key.
        leg_key: String,
        /// IpFamily.
        family: IpFamily,
        /// The leg's RTP port, in this shard's range and unused.
        port: u16,
        /// One port instead of a pair.
        rtcp_mux: bool,
        /// A leg taken over from a failed node: its address and outbound stream.
        resume: Option<earshot_engine_api::LegResume>,
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
