//! The simulated world: one shard, its endpoints, the network between them, and virtual
//! time.
//!
//! [`Sim`] drives one [`Shard`] directly (sans-IO). Time only moves when the simulation
//! moves it, to the next of: a talker's next frame, the next datagram arrival, the
//! shard's [`Shard::poll_deadline`]. At each instant it runs, in this fixed order:
//! 1. every talker frame due: the packet goes onto the talker's uplink;
//! 2. every datagram due: toward the engine through [`Shard::handle_packet`], toward an
//!    endpoint into its [`Listener`];
//! 3. the shard's ticks, if its deadline has passed ([`Shard::handle_ticks`]).
//!
//! Whatever the shard sends is captured by the kit's [`CaptureSink`] (with its virtual
//! send time, source port and destination) and routed to the endpoint with that address through
//! the endpoint's downlink. Ties in time are broken by insertion order, and nothing reads
//! a real clock or iterates a hash map, so one seed gives one run, bit for bit.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use earshot_core::io::{Datagram, MAX_UDP_PAYLOAD};
use earshot_core::ports::PortPool;
use earshot_core::shard::{Shard, ShardCommand, ShardEvent};
use earshot_engine_api::{
    Edge, EngineError, IpFamily, LegId, MasterKey, MediaConfig, Response, SessionPlan, ShardStats,
    SrtpMedia, SrtpSuite,
};
use earshot_media::Gain;
use earshot_media::dsp::mix::MixKernels;
use earshot_media::time::{Duration, Instant};
use earshot_srtp::{Direction, SrtpConfig, SrtpSession};
use earshot_testkit::fixtures::pcmu_media;
use earshot_testkit::rig::{CaptureSink, shard_config};

use super::listener::Listener;
use super::net::{Link, SimRng};
use super::scenario::Hearing;
use super::seed::SeedGuard;
use super::talker::{Talker, TalkerConfig};

/// The session every simulation's parties belong to.
pub const SESSION: &str = "call-1";

/// First port of the simulated shard's range.
pub const PORT_FIRST: u16 = 20_000;
/// Ports in the simulated shard's range.
pub const PORT_COUNT: u16 = 256;

/// A party (endpoint) of the simulation, by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Party(pub usize);

/// How one party is set up.
#[derive(Debug, Clone)]
pub struct PartyConfig {
    /// Name, for messages.
    pub name: String,
    /// What its phone sends.
    pub talker: TalkerConfig,
    /// Configure the leg without a remote so that the engine latches the first source.
    pub latch: bool,
    /// Path from the phone to the engine.
    pub uplink: Link,
    /// Path from the engine to the phone.
    pub downlink: Link,
    /// SRTP keys as the engine's leg is configured with them (`remote_key`: what the
    /// phone encrypts with; `local_key`: what the engine encrypts with); `None`: plain.
    pub srtp: Option<SrtpMedia>,
}

impl PartyConfig {
    /// A party named `name` sending a PCMU tone of `tone_hz` over clean links.
    pub fn tone(name: &str, tone_hz: f64) -> PartyConfig {
        PartyConfig {
            name: name.to_string(),
            talker: TalkerConfig::tone(tone_hz),
            latch: false,
            uplink: Link::CLEAN,
            downlink: Link::CLEAN,
            srtp: None,
        }
    }

    /// The same party with an SRTP phone of `suite`; the two keys are derived from
    /// `key_seed` (a test's keys need no secrecy, only to differ between parties).
    pub fn with_srtp(mut self, suite: SrtpSuite, key_seed: u8) -> PartyConfig {
        self.srtp = Some(test_keys(suite, key_seed));
        self
    }
}

/// A leg's two SRTP keys of `suite` derived from `key_seed` (a test's keys need no
/// secrecy, only to differ between parties and between a leg's key generations).
pub fn test_keys(suite: SrtpSuite, key_seed: u8) -> SrtpMedia {
    let key = |salt: u8| {
        MasterKey::generate(suite, |b| {
            for (k, x) in b.iter_mut().enumerate() {
                *x = key_seed
                    .wrapping_mul(31)
                    .wrapping_add(salt)
                    .wrapping_add(k as u8);
            }
        })
    };
    SrtpMedia::new(key(1), key(2)).expect("one suite")
}

/// The phone's side of an SRTP leg.
#[derive(Debug)]
struct PhoneSrtp {
    /// Protects what the phone sends (the leg's `remote_key`).
    out: SrtpSession,
    /// Unprotects what the engine sends (the leg's `local_key`).
    inb: SrtpSession,
    /// Engine datagrams the phone could not unprotect.
    failures: u64,
    /// After a re-key ([`Sim::rekey`]): the phone's previous sessions and the instant
    /// the engine was re-keyed. Engine datagrams sent before it are verified with the
    /// previous inbound session, those sent at or after it only with the new one.
    previous: Option<PreviousKeys>,
    /// A re-key the phone has not applied to what it sends yet: at this instant its
    /// outbound session switches to this one (the phone answered the re-INVITE).
    pending_out: Option<(Instant, SrtpSession)>,
    /// Engine datagrams sent at or after the last re-key that verified with the new key.
    verified_after_rekey: u64,
}

/// A phone's sessions before its last re-key.
#[derive(Debug)]
struct PreviousKeys {
    rekeyed_at: Instant,
    inb: SrtpSession,
    /// The old outbound session, kept after the phone switched, to send stale packets.
    out: Option<SrtpSession>,
}

/// A datagram the engine sent (the kit's capture, stamped with virtual time).
pub use earshot_testkit::rig::Captured;

#[derive(Debug)]
struct Endpoint {
    cfg: PartyConfig,
    addr: SocketAddr,
    leg: LegId,
    engine_port: u16,
    talker: Talker,
    listener: Listener,
    uplink_sent: u64,
    uplink_lost: u64,
    /// Every datagram the phone sent.
    uplink_log: Vec<Vec<u8>>,
    srtp: Option<PhoneSrtp>,
    /// The configuration the engine's leg was last given.
    media: MediaConfig,
}

#[derive(Debug, Clone, Copy)]
enum Dest {
    Engine { port: u16, from: SocketAddr },
    Party(usize),
}

#[derive(Debug)]
struct InFlight {
    at: Instant,
    order: u64,
    sent_at: Instant,
    dest: Dest,
    bytes: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    /// Reversed: the heap pops the earliest arrival, then the earliest sent.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.order).cmp(&(self.at, self.order))
    }
}

/// One simulated shard with its endpoints and network. See the module doc.
#[derive(Debug)]
pub struct Sim {
    now: Instant,
    shard: Shard,
    ports: PortPool,
    tx: CaptureSink,
    rng: SimRng,
    parties: Vec<Endpoint>,
    in_flight: BinaryHeap<InFlight>,
    order: u64,
    captured: Vec<Captured>,
    /// Engine datagrams to an address no party has.
    unroutable: u64,
    /// Engine datagrams to a party from a port other than its leg's.
    wrong_port: u64,
    plan_changes: Vec<(Instant, Hearing)>,
    scratch: Vec<u8>,
    guard: SeedGuard,
}

impl Sim {
    /// A simulation of one shard, all randomness from `seed`; `label` names the test in
    /// the failure message. Virtual time starts at 1 s.
    pub fn new(label: &str, seed: u64) -> Sim {
        let mut rng = SimRng::new(seed);
        let cfg = shard_config(PORT_FIRST, PORT_COUNT, 32, 8, rng.next_u64());
        let ports = PortPool::new(cfg.port_first, cfg.port_count);
        let shard = Shard::new(cfg, MixKernels::detect());
        let now = Instant::from_nanos(1_000_000_000);
        Sim {
            now,
            shard,
            ports,
            tx: CaptureSink::new(),
            rng,
            parties: Vec::new(),
            in_flight: BinaryHeap::new(),
            order: 0,
            captured: Vec::new(),
            unroutable: 0,
            wrong_port: 0,
            plan_changes: Vec::new(),
            scratch: Vec::with_capacity(MAX_UDP_PAYLOAD),
            guard: SeedGuard::new(label, seed),
        }
    }

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.guard.seed()
    }

    /// Current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The shard under test.
    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// Applies a command to the shard at the current time, as the engine's handle does:
    /// a new leg's port comes from the pool, a removed leg's port goes back to it.
    pub fn command(&mut self, cmd: ShardCommand) -> Result<Response, EngineError> {
        let allocated = match &cmd {
            ShardCommand::AllocateLeg { port, rtcp_mux, .. } => Some((*port, *rtcp_mux)),
            _ => None,
        };
        let r = self.shard.handle_command(self.now, cmd);
        if let Some((port, mux)) = allocated {
            let used = matches!(&r, Ok(Response::Leg(info)) if info.local.port() == port);
            if !used {
                self.ports.give(port, mux);
            }
        }
        while let Some(released) = self.shard.poll_released_port() {
            self.ports.give(released.port, !released.paired);
        }
        r
    }

    /// A free port of the shard's range for a new leg (the engine's handle binds one).
    pub fn free_port(&mut self, rtcp_mux: bool) -> u16 {
        self.ports
            .take(rtcp_mux)
            .expect("the simulated shard's port range is not exhausted")
    }

    /// Allocates and configures a leg for a new party; its phone starts sending within
    /// one frame (at a random phase).
    pub fn add_party(&mut self, cfg: PartyConfig) -> Party {
        let i = self.parties.len();
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)), 5004);
        let port = self.free_port(true);
        let leg = match self.command(ShardCommand::AllocateLeg {
            session: SESSION.into(),
            leg_key: cfg.name.clone(),
            family: IpFamily::V4,
            port,
            rtcp_mux: true,
            resume: None,
        }) {
            Ok(Response::Leg(info)) => info,
            other => panic!("allocating {}: {other:?}", cfg.name),
        };
        let media = MediaConfig {
            codec: cfg.talker.codec,
            payload_type: cfg.talker.payload_type,
            ptime_ms: cfg.talker.ptime_ms,
            telephone_event_pt: cfg.talker.telephone_event_pt,
            srtp: cfg.srtp.clone(),
            ..pcmu_media(if cfg.latch { None } else { Some(addr) })
        };
        if let Err(e) = self.command(ShardCommand::ConfigureLeg {
            leg: leg.leg,
            media: media.clone(),
        }) {
            panic!("configuring {}: {e}", cfg.name);
        }
        let phase = self
            .rng
            .duration_up_to(Duration::from_millis(u64::from(cfg.talker.ptime_ms)));
        let talker = Talker::new(
            cfg.talker.clone(),
            self.now + phase,
            self.rng.next_u32(),
            self.rng.next_u32() as u16,
            self.rng.next_u32(),
        );
        let listener = Listener::new(cfg.talker.codec, cfg.talker.payload_type);
        let srtp = cfg.srtp.as_ref().map(|k| PhoneSrtp {
            out: SrtpSession::new(Direction::Outbound, k.remote_key(), SrtpConfig::default()),
            inb: SrtpSession::new(Direction::Inbound, k.local_key(), SrtpConfig::default()),
            failures: 0,
            previous: None,
            pending_out: None,
            verified_after_rekey: 0,
        });
        self.parties.push(Endpoint {
            cfg,
            addr,
            leg: leg.leg,
            engine_port: leg.local.port(),
            talker,
            listener,
            uplink_sent: 0,
            uplink_lost: 0,
            uplink_log: Vec::new(),
            srtp,
            media,
        });
        Party(i)
    }

    /// Re-keys party `p`'s SRTP leg the way a re-INVITE with a new `a=crypto` line
    /// does (`UpdateMedia` in the API): the engine's leg is configured now with `keys`
    /// (everything else unchanged); the phone verifies what the engine sends from now on
    /// with the new local key only (what was sent before, with the old one) and keeps
    /// protecting with its old key until `phone_switches_at` (its answer's round trip),
    /// then with the new remote key, sequence and rollover continuing.
    pub fn rekey(&mut self, p: Party, keys: SrtpMedia, phone_switches_at: Instant) {
        let now = self.now;
        let leg = self.parties[p.0].leg;
        let mut media = self.parties[p.0].media.clone();
        media.srtp = Some(keys.clone());
        if let Err(e) = self.command(ShardCommand::ConfigureLeg {
            leg,
            media: media.clone(),
        }) {
            panic!("re-keying {}: {e}", self.parties[p.0].cfg.name);
        }
        let party = &mut self.parties[p.0];
        party.media = media;
        let srtp = party.srtp.as_mut().expect("only an SRTP party is re-keyed");
        let new_inb = srtp.inb.rekeyed(keys.local_key());
        srtp.previous = Some(PreviousKeys {
            rekeyed_at: now,
            inb: std::mem::replace(&mut srtp.inb, new_inb),
            out: None,
        });
        srtp.pending_out = Some((phone_switches_at, srtp.out.rekeyed(keys.remote_key())));
        srtp.verified_after_rekey = 0;
    }

    /// Sends `count` RTP packets of party `p`'s stream protected with its phone's old
    /// key (kept after a [`Sim::rekey`] and the phone's switch) straight to the engine
    /// now: a stale sender, or packets held in the network past the overlap. They carry
    /// sequence numbers ahead of the stream, so that only the key can refuse them.
    pub fn inject_stale(&mut self, p: Party, count: u16) {
        let party = &mut self.parties[p.0];
        let ssrc = party.talker.ssrc();
        let pt = party.talker.config().payload_type;
        let samples = party.talker.config().ptime_ms * 8;
        let srtp = party.srtp.as_mut().expect("an SRTP party");
        let previous = srtp.previous.as_mut().expect("the party was re-keyed");
        let out = previous
            .out
            .as_mut()
            .expect("the phone has switched to its new key");
        // Ahead of the stream (by less than half the sequence space), so that the
        // replay check lets them through to the key's.
        let (seq0, ts0) = (party.talker.next_seq().wrapping_add(1000), 1_000_000u32);
        let mut datagrams = Vec::new();
        for k in 0..count {
            let header = earshot_testkit::rtp::RtpHeader::new(
                pt,
                seq0.wrapping_add(k),
                ts0.wrapping_add(u32::from(k) * samples),
                ssrc,
            );
            let mut buf = header.packet(&[0xffu8; 160]);
            let len = buf.len();
            buf.resize(len + out.suite().rtp_overhead(), 0);
            let sealed = out.protect_rtp(&mut buf, len).expect("protects");
            buf.truncate(sealed);
            datagrams.push(buf);
        }
        let (port, from, now) = (party.engine_port, party.addr, self.now);
        for bytes in datagrams {
            self.inject_at(now, port, from, bytes);
        }
    }

    /// Engine datagrams party `p`'s phone verified with its new key since the last
    /// [`Sim::rekey`] (RTP and SRTCP).
    pub fn verified_after_rekey(&self, p: Party) -> u64 {
        self.parties[p.0]
            .srtp
            .as_ref()
            .map_or(0, |s| s.verified_after_rekey)
    }

    /// Replaces the session's hear relation with `hearing` (edges at unity gain).
    pub fn set_hearing(&mut self, hearing: &Hearing) {
        let mut edges = Vec::new();
        let mut no_dtmf = Vec::new();
        for l in 0..self.parties.len() {
            for s in 0..self.parties.len() {
                if hearing.hears(Party(l), Party(s)) {
                    edges.push(Edge {
                        listener: self.parties[l].leg,
                        source: self.parties[s].leg,
                        gain: Gain::UNITY,
                    });
                }
            }
            if hearing.is_monitor(Party(l)) {
                no_dtmf.push(self.parties[l].leg);
            }
        }
        let plan = SessionPlan {
            session: SESSION.into(),
            edges,
            no_dtmf,
        };
        if let Err(e) = self.command(ShardCommand::SetSessionPlan(plan)) {
            panic!("setting plan {hearing:?}: {e}");
        }
        self.plan_changes.push((self.now, hearing.clone()));
    }

    /// Every plan set so far, with when.
    pub fn plan_changes(&self) -> &[(Instant, Hearing)] {
        &self.plan_changes
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end);
    }

    /// Runs until virtual time `end` (everything due at `end` included).
    pub fn run_until(&mut self, end: Instant) {
        loop {
            let mut next = end;
            for p in &self.parties {
                next = next.min(p.talker.next_send_at());
            }
            if let Some(f) = self.in_flight.peek() {
                next = next.min(f.at);
            }
            if let Some(d) = self.shard.poll_deadline() {
                next = next.min(d);
            }
            self.now = self.now.max(next);
            self.step();
            if self.now >= end {
                break;
            }
        }
    }

    /// Everything due at `self.now`, in the documented order.
    fn step(&mut self) {
        let now = self.now;
        self.tx.set_now(now);
        for i in 0..self.parties.len() {
            while self.parties[i].talker.next_send_at() <= now {
                let mut buf = std::mem::take(&mut self.scratch);
                if self.parties[i].talker.emit(now, &mut buf) {
                    let p = &mut self.parties[i];
                    if let Some(srtp) = &mut p.srtp {
                        if srtp.pending_out.as_ref().is_some_and(|(at, _)| *at <= now)
                            && let Some((_, next)) = srtp.pending_out.take()
                        {
                            let old = std::mem::replace(&mut srtp.out, next);
                            if let Some(previous) = &mut srtp.previous {
                                previous.out = Some(old);
                            }
                        }
                        let len = buf.len();
                        buf.resize(len + srtp.out.suite().rtp_overhead(), 0);
                        let sealed = srtp.out.protect_rtp(&mut buf, len);
                        buf.truncate(sealed.expect("a phone's packet protects"));
                    }
                    let dest = Dest::Engine {
                        port: p.engine_port,
                        from: p.addr,
                    };
                    let link = p.cfg.uplink;
                    self.send_over(link, now, dest, &buf, Some(i));
                }
                self.scratch = buf;
            }
        }
        while self.in_flight.peek().is_some_and(|f| f.at <= now) {
            let Some(mut f) = self.in_flight.pop() else {
                break;
            };
            match f.dest {
                Dest::Engine { port, from } => {
                    let d = Datagram {
                        local_port: port,
                        remote: from,
                        payload: &mut f.bytes,
                    };
                    self.shard.handle_packet(now, d, &mut self.tx);
                    self.route_sent();
                }
                Dest::Party(i) => {
                    let p = &mut self.parties[i];
                    let len = match &mut p.srtp {
                        None => Some(f.bytes.len()),
                        Some(srtp) => {
                            // Sent before the last re-key: the old key; after: the new.
                            let (session, fresh) = match &mut srtp.previous {
                                Some(prev) if f.sent_at < prev.rekeyed_at => (&mut prev.inb, false),
                                Some(_) => (&mut srtp.inb, true),
                                None => (&mut srtp.inb, false),
                            };
                            let r = if earshot_media::wire::is_rtcp(&f.bytes) {
                                session.unprotect_rtcp(&mut f.bytes)
                            } else {
                                session.unprotect_rtp(&mut f.bytes)
                            };
                            srtp.failures += u64::from(r.is_err());
                            srtp.verified_after_rekey += u64::from(fresh && r.is_ok());
                            r.ok()
                        }
                    };
                    if let Some(len) = len {
                        p.listener.handle_datagram(f.sent_at, now, &f.bytes[..len]);
                    }
                }
            }
        }
        if self.shard.poll_deadline().is_some_and(|d| d <= now) {
            self.shard.handle_ticks(now, &mut self.tx, &|| now);
            self.route_sent();
        }
    }

    fn send_over(
        &mut self,
        link: Link,
        now: Instant,
        dest: Dest,
        bytes: &[u8],
        uplink_of: Option<usize>,
    ) {
        let arrivals = link.transmit(&mut self.rng, now);
        if let Some(i) = uplink_of {
            self.parties[i].uplink_log.push(bytes.to_vec());
            self.parties[i].uplink_sent += 1;
            self.parties[i].uplink_lost += u64::from(arrivals.is_lost());
        }
        let times = arrivals.as_slice();
        for &at in times {
            self.order += 1;
            self.in_flight.push(InFlight {
                at,
                order: self.order,
                sent_at: now,
                dest,
                bytes: bytes.to_vec(),
            });
        }
    }

    /// Routes what the shard sent to the parties by destination address.
    fn route_sent(&mut self) {
        let sent = self.tx.take();
        for c in &sent {
            match self.parties.iter().position(|p| p.addr == c.dst) {
                Some(i) => {
                    if c.src_port != self.parties[i].engine_port {
                        self.wrong_port += 1;
                    }
                    let link = self.parties[i].cfg.downlink;
                    self.send_over(link, c.at, Dest::Party(i), &c.bytes, None);
                }
                None => self.unroutable += 1,
            }
        }
        self.captured.extend(sent);
    }

    /// Delivers `bytes` to engine port `port` from `from` at `at` (at least now),
    /// bypassing every link: for malformed and foreign traffic.
    pub fn inject_at(&mut self, at: Instant, port: u16, from: SocketAddr, bytes: Vec<u8>) {
        self.order += 1;
        let at = at.max(self.now);
        self.in_flight.push(InFlight {
            at,
            order: self.order,
            sent_at: at,
            dest: Dest::Engine { port, from },
            bytes,
        });
    }

    /// The party's listener.
    pub fn listener(&self, p: Party) -> &Listener {
        &self.parties[p.0].listener
    }

    /// The party's talker.
    pub fn talker(&self, p: Party) -> &Talker {
        &self.parties[p.0].talker
    }

    /// The party's talker, to schedule events or mute it.
    pub fn talker_mut(&mut self, p: Party) -> &mut Talker {
        &mut self.parties[p.0].talker
    }

    /// The party's name.
    pub fn name(&self, p: Party) -> &str {
        &self.parties[p.0].cfg.name
    }

    /// The party's phone address.
    pub fn addr(&self, p: Party) -> SocketAddr {
        self.parties[p.0].addr
    }

    /// The party's leg.
    pub fn leg(&self, p: Party) -> LegId {
        self.parties[p.0].leg
    }

    /// The party's engine port.
    pub fn engine_port(&self, p: Party) -> u16 {
        self.parties[p.0].engine_port
    }

    /// Packets the party's phone sent, and how many of them its uplink lost.
    pub fn uplink_counts(&self, p: Party) -> (u64, u64) {
        (self.parties[p.0].uplink_sent, self.parties[p.0].uplink_lost)
    }

    /// Engine datagrams the party's SRTP phone could not verify and decrypt (0 for a
    /// plain phone).
    pub fn srtp_failures(&self, p: Party) -> u64 {
        self.parties[p.0].srtp.as_ref().map_or(0, |s| s.failures)
    }

    /// Every datagram the party's phone sent, in order (before its uplink).
    pub fn uplink_payloads(&self, p: Party) -> &[Vec<u8>] {
        &self.parties[p.0].uplink_log
    }

    /// Every party.
    pub fn parties(&self) -> impl Iterator<Item = Party> + use<> {
        (0..self.parties.len()).map(Party)
    }

    /// Every datagram the engine sent, in order.
    pub fn captured(&self) -> &[Captured] {
        &self.captured
    }

    /// Engine datagrams that went to no party's address.
    pub fn unroutable(&self) -> u64 {
        self.unroutable
    }

    /// Engine datagrams that reached a party from a port other than its leg's.
    pub fn wrong_port(&self) -> u64 {
        self.wrong_port
    }

    /// Takes the events the shard reported so far.
    pub fn take_events(&mut self) -> Vec<ShardEvent> {
        std::iter::from_fn(|| self.shard.poll_event()).collect()
    }

    /// The shard's counters, through [`ShardCommand::Stats`].
    pub fn stats(&mut self) -> ShardStats {
        match self.command(ShardCommand::Stats(ShardStats::default())) {
            Ok(Response::Stats(mut s)) if s.shards.len() == 1 => s.shards.remove(0),
            other => panic!("stats: {other:?}"),
        }
    }

    /// Drops counted for `reason` (one of `earshot_engine_api::DROP_REASONS`).
    pub fn drops(&mut self, reason: &str) -> u64 {
        let stats = self.stats();
        stats
            .drops
            .iter()
            .find(|(r, _)| r == reason)
            .map(|(_, n)| *n)
            .unwrap_or_else(|| panic!("{reason:?} is not a drop reason the shard reports"))
    }
}
