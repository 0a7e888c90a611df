//! A shard rig: one [`Shard`] with its [`PortPool`], driven flat out without a runtime
//! loop, a queue or a socket. The cost model (`perf`), the capacity runner (`bench`)
//! and tests build on it.
//!
//! The rig sets up sessions the way the engine handle does (a port from the pool, then
//! `AllocateLeg`, `ConfigureLeg` with [`pcmu_media`], `SetSessionPlan`), and feeds them
//! the packets real phones would send: each leg one 20 ms PCMU packet per period, from
//! its own far-end address, with its own SSRC, sequence number `period` and timestamp
//! `160 * period`. Packets are prebuilt per party (one tone each) and only their header
//! is rewritten per packet, so feeding costs next to nothing beside the shard's work
//! (about 30 instructions a packet, which the cost model counts with the shard's).
//!
//! SRTP ([`ShardRig::set_srtp`]): every leg added afterwards is configured with the
//! suite, one remote key shared by all legs (what the phones encrypt with) and its own
//! local key. The phones' side protects each party's packet once per period with one
//! outbound session (every leg of a party index sends the same SSRC, so the protected
//! bytes are the same for all of them), and each leg's packet is a copy of it: the shard
//! unprotects in place. Feeding then costs a 190-octet copy per packet beside the
//! shard's work, and three protections per period for the whole rig.
//!
//! Two transmit sinks: [`DiscardSink`] lets the shard build every packet and folds each
//! into a checksum before discarding it (the build cannot be optimised away, and no I/O
//! is counted); [`CaptureSink`] keeps every datagram.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;

use earshot_core::io::{Datagram, MAX_UDP_PAYLOAD, TxSink};
use earshot_core::ports::PortPool;
use earshot_core::shard::{Shard, ShardCommand, ShardConfig};
use earshot_dsp::mix::MixKernels;
use earshot_engine_api::{
    EngineError, IpFamily, LegId, MasterKey, MediaConfig, Response, ShardStats, SrtpMedia,
    SrtpSuite,
};
use earshot_srtp::{Direction, SrtpConfig, SrtpSession};
use earshot_types::Codec;
use earshot_types::time::{Duration, Instant};

use crate::fixtures::{Supervision, pcmu_media, plan};
use crate::rtp::{HEADER_LEN, RtpHeader};
use crate::tone::Tone;

/// Samples in one 20 ms PCMU frame.
pub const FRAME_SAMPLES: usize = 160;
/// One RTP packet of 20 ms PCMU: 12-byte header and 160 bytes of audio.
pub const PACKET_LEN: usize = HEADER_LEN + FRAME_SAMPLES;
/// One packetisation period (20 ms) in nanoseconds.
pub const PERIOD_NS: u64 = 20_000_000;
/// The longest SRTP packet a rig leg sends: the PCMU packet and the largest tag.
pub const SRTP_PACKET_MAX: usize = PACKET_LEN + 16;

/// The codecs a rig party may talk ([`ShardRig::set_codecs`]): those whose 20 ms packet
/// fits [`PACKET_LEN`] (L16 does not).
pub const RIG_CODECS: [Codec; 4] = [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus];

/// One party's prebuilt packet: its codec's 20 ms frame of the party's tone, behind a
/// header rewritten per packet.
#[derive(Clone, Copy, Debug)]
struct Voice {
    bytes: [u8; PACKET_LEN],
    len: usize,
    payload_type: u8,
    /// RTP timestamp units per 20 ms period.
    ts_per_period: u32,
}

impl Voice {
    /// Party `party`'s voice in `codec`: for the stateful codecs (G.722, Opus) the frame
    /// an encoder produces once it has settled (the fourth), so the shard's decoder sees
    /// a steady stream of one representative frame.
    fn new(codec: Codec, party: usize) -> Voice {
        let rate = codec.audio_rate();
        let samples = rate.samples_in_ms(20);
        let settings = earshot_opus::OpusSettings::default();
        let mut encoder = earshot_media::codec::Encoder::new(codec, settings)
            .expect("rig codecs have encoders (Opus needs libopus)");
        let tone = Tone::new(
            voice(party).hz,
            crate::tone::TONE_AMPLITUDE,
            f64::from(rate.hz()),
        );
        let mut pcm = vec![0i16; samples];
        let mut bytes = [0u8; PACKET_LEN];
        let mut len = 0;
        for frame in 0..4u64 {
            tone.fill(frame * samples as u64, &mut pcm);
            len = encoder.encode(&pcm, &mut bytes[HEADER_LEN..]);
        }
        assert!(len > 0, "{codec:?} encoded nothing");
        Voice {
            bytes,
            len: HEADER_LEN + len,
            payload_type: rig_payload_type(codec),
            ts_per_period: codec.rtp_units_per_frame(20),
        }
    }

    /// The RTP header of this voice's packet of `period` from `ssrc` (the marker on
    /// period 0, the talk-spurt start).
    #[inline]
    fn header(&self, period: u64, ssrc: u32) -> RtpHeader {
        RtpHeader {
            payload_type: self.payload_type,
            ..RtpHeader::pcmu(
                period as u16,
                (period as u32).wrapping_mul(self.ts_per_period),
                ssrc,
            )
        }
        .with_marker(period == 0)
    }
}

/// The payload type rig legs of `codec` use: the static one, 111 for Opus (WebRTC's
/// usual choice).
pub fn rig_payload_type(codec: Codec) -> u8 {
    codec.static_payload_type().map_or(111, |pt| pt.0)
}

/// A shard configuration with the engine's defaults for everything but the sizes: legs
/// report 127.0.0.1, jitter buffers between 20 and 200 ms, a 30 s media timeout, ticks
/// later than 2 ms counted late.
pub fn shard_config(
    port_first: u16,
    port_count: u16,
    max_legs: u32,
    max_sessions: u32,
    seed: u64,
) -> ShardConfig {
    ShardConfig {
        index: 0,
        port_first,
        port_count,
        max_legs,
        max_sessions,
        local_v4: Some(Ipv4Addr::LOCALHOST),
        local_v6: None,
        jitter_min_ms: 20,
        jitter_max_ms: 200,
        media_timeout: Duration::from_secs(30),
        late_tick_threshold: Duration::from_millis(2),
        seed,
    }
}

/// The far end of leg `i`: a distinct address per leg, as real phones would have.
pub fn peer_of(i: usize) -> SocketAddr {
    let n = i + 1;
    let ip = Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8);
    SocketAddr::V4(SocketAddrV4::new(ip, 40_000))
}

/// The tone party `party` of a rig session talks: speech-level (-12 dBFS) and different
/// per party, so that a mix of two parties is not a doubling of one.
pub fn voice(party: usize) -> Tone {
    Tone::narrowband(300.0 + 250.0 * party as f64)
}

/// Folds one value into a running checksum (an FNV-1a step on 64 bits): cheap enough to
/// sit inside a measured loop, and it makes the output observable.
pub fn fold(sum: u64, value: u64) -> u64 {
    (sum ^ value).wrapping_mul(0x0000_0100_0000_01b3)
}

/// Why a rig could not be set up.
#[derive(Debug)]
pub enum RigError {
    /// The shard refused a set-up command.
    Engine(EngineError),
    /// The shard answered a set-up command with the wrong kind of response.
    UnexpectedResponse(&'static str),
    /// The port pool is exhausted.
    NoFreePort,
    /// A codec the rig cannot prebuild a 20 ms packet of ([`RIG_CODECS`]).
    UnsupportedCodec(Codec),
}

impl std::fmt::Display for RigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RigError::Engine(e) => write!(f, "shard set-up failed: {e}"),
            RigError::UnexpectedResponse(what) => write!(f, "unexpected response to {what}"),
            RigError::NoFreePort => f.write_str("the rig's port range is exhausted"),
            RigError::UnsupportedCodec(c) => write!(f, "the rig cannot talk {c:?}"),
        }
    }
}

impl std::error::Error for RigError {}

impl From<EngineError> for RigError {
    fn from(e: EngineError) -> RigError {
        RigError::Engine(e)
    }
}

/// A sink that lets the shard build every packet, folds its length and last byte into
/// a checksum, and discards it: the cost of building is counted, no I/O is.
#[derive(Debug)]
pub struct DiscardSink {
    buf: Box<[u8; MAX_UDP_PAYLOAD]>,
    /// Packets built (cancelled sends included: `build` ran).
    pub sent: u64,
    /// The fold of every packet's length and last byte.
    pub checksum: u64,
}

impl DiscardSink {
    /// A sink with its one buffer.
    pub fn new() -> DiscardSink {
        DiscardSink {
            buf: Box::new([0; MAX_UDP_PAYLOAD]),
            sent: 0,
            checksum: 0,
        }
    }
}

impl Default for DiscardSink {
    fn default() -> Self {
        DiscardSink::new()
    }
}

impl TxSink for DiscardSink {
    fn send_with(
        &mut self,
        _src_port: u16,
        _dst: SocketAddr,
        build: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> bool {
        let len = build(&mut self.buf[..]).min(MAX_UDP_PAYLOAD);
        let built = black_box(&self.buf[..len]);
        let last = built.last().copied().unwrap_or(0);
        self.checksum = fold(self.checksum, ((len as u64) << 8) | u64::from(last));
        self.sent += 1;
        true
    }
}

/// A datagram the shard sent, as a [`CaptureSink`] kept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// The sink's time when it was sent ([`CaptureSink::set_now`]).
    pub at: Instant,
    /// Local port it left from.
    pub src_port: u16,
    /// Destination.
    pub dst: SocketAddr,
    /// UDP payload.
    pub bytes: Vec<u8>,
}

/// A sink that keeps every datagram the shard sends (cancelled sends are not kept).
#[derive(Debug)]
pub struct CaptureSink {
    now: Instant,
    buf: Box<[u8; MAX_UDP_PAYLOAD]>,
    pending: Vec<Captured>,
}

impl CaptureSink {
    /// An empty sink at time zero.
    pub fn new() -> CaptureSink {
        CaptureSink {
            now: Instant::ZERO,
            buf: Box::new([0; MAX_UDP_PAYLOAD]),
            pending: Vec::new(),
        }
    }

    /// Stamps datagrams sent from now on with `now`.
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// Takes every datagram kept so far, in send order.
    pub fn take(&mut self) -> Vec<Captured> {
        std::mem::take(&mut self.pending)
    }

    /// Datagrams kept and not yet taken.
    pub fn pending(&self) -> &[Captured] {
        &self.pending
    }
}

impl Default for CaptureSink {
    fn default() -> Self {
        CaptureSink::new()
    }
}

impl TxSink for CaptureSink {
    fn send_with(
        &mut self,
        src_port: u16,
        dst: SocketAddr,
        build: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> bool {
        let len = build(&mut self.buf[..]);
        assert!(
            len <= MAX_UDP_PAYLOAD,
            "the shard built a datagram longer than the buffer it was lent"
        );
        if len > 0 {
            self.pending.push(Captured {
                at: self.now,
                src_port,
                dst,
                bytes: self.buf[..len].to_vec(),
            });
        }
        true
    }
}

/// One leg of the rig.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RigLeg {
    /// The engine's id.
    pub id: LegId,
    /// Its local port.
    pub port: u16,
    /// Its far end.
    pub peer: SocketAddr,
    /// Its party index in its session (which prebuilt packet it sends).
    pub party: usize,
}

/// The SSRC every leg of party index `party` sends with on an SRTP rig.
pub fn srtp_ssrc_of(party: usize) -> u32 {
    0x2000_0000 + party as u32
}

/// The key material of the rig's SRTP keys: `n` in the first two octets and `tag` in
/// the rest (a different key per leg without a random source).
fn rig_key(suite: SrtpSuite, tag: u8, n: usize) -> MasterKey {
    MasterKey::generate(suite, |b| {
        b.fill(tag);
        b[0] = (n >> 8) as u8;
        b[1] = n as u8;
    })
}

/// The phones' side of an SRTP rig.
#[derive(Debug)]
struct RigSrtp {
    suite: SrtpSuite,
    /// The key every leg is configured with as its remote key.
    remote_key: MasterKey,
    /// Protects with `remote_key`: one stream per party SSRC.
    phones: SrtpSession,
    /// Per party index: the period whose packet `protected` holds, and its length.
    protected: Vec<(Option<u64>, usize, [u8; SRTP_PACKET_MAX])>,
    /// The copy handed to the shard, which unprotects it in place.
    scratch: [u8; SRTP_PACKET_MAX],
    /// Packets the phones' session could not protect (none unless the rig is misused).
    protect_failures: u64,
}

impl RigSrtp {
    fn new(suite: SrtpSuite) -> RigSrtp {
        let remote_key = rig_key(suite, 0x5A, 0);
        let config = SrtpConfig {
            max_ssrcs: 16,
            ..SrtpConfig::default()
        };
        let phones = SrtpSession::new(Direction::Outbound, &remote_key, config);
        RigSrtp {
            suite,
            remote_key,
            phones,
            protected: Vec::new(),
            scratch: [0; SRTP_PACKET_MAX],
            protect_failures: 0,
        }
    }

    /// Party `party`'s packet of `period`, protected, copied into the scratch buffer:
    /// its length (0 when it could not be protected).
    #[inline]
    fn packet(&mut self, voice: &mut Voice, party: usize, period: u64) -> usize {
        while self.protected.len() <= party {
            self.protected.push((None, 0, [0; SRTP_PACKET_MAX]));
        }
        let (at, len, bytes) = &mut self.protected[party];
        if *at != Some(period) {
            voice
                .header(period, srtp_ssrc_of(party))
                .write(&mut voice.bytes);
            bytes[..voice.len].copy_from_slice(&voice.bytes[..voice.len]);
            *at = Some(period);
            *len = self
                .phones
                .protect_rtp(bytes, voice.len)
                .unwrap_or_else(|_| {
                    self.protect_failures += 1;
                    0
                });
        }
        self.scratch[..*len].copy_from_slice(&bytes[..*len]);
        *len
    }
}

/// One shard, its port pool, a transmit sink, and the legs it was given.
#[derive(Debug)]
pub struct ShardRig<S: TxSink = DiscardSink> {
    shard: Shard,
    ports: PortPool,
    sink: S,
    legs: Vec<RigLeg>,
    /// One prebuilt packet per party index; the header is rewritten per packet.
    voices: Vec<Voice>,
    /// The codec of each party index (PCMU beyond the list).
    codecs: Vec<Codec>,
    kernel: &'static str,
    /// Set: legs added are SRTP and are fed protected packets.
    srtp: Option<Box<RigSrtp>>,
}

impl ShardRig<DiscardSink> {
    /// A rig whose sink discards (and checksums) every packet.
    pub fn new(cfg: ShardConfig, kernels: MixKernels) -> ShardRig<DiscardSink> {
        ShardRig::with_sink(cfg, kernels, DiscardSink::new())
    }
}

impl<S: TxSink> ShardRig<S> {
    /// A rig sending into `sink`.
    pub fn with_sink(cfg: ShardConfig, kernels: MixKernels, sink: S) -> ShardRig<S> {
        let ports = PortPool::new(cfg.port_first, cfg.port_count);
        ShardRig {
            shard: Shard::new(cfg, kernels),
            ports,
            sink,
            legs: Vec::new(),
            voices: Vec::new(),
            codecs: Vec::new(),
            kernel: kernels.name,
            srtp: None,
        }
    }

    /// Makes every leg added from now on an SRTP leg of `suite` (see the module docs).
    /// Set it before adding sessions: legs added before stay plain, and are then fed
    /// plain packets no longer (every leg is fed the protected form).
    pub fn set_srtp(&mut self, suite: SrtpSuite) {
        self.srtp = Some(Box::new(RigSrtp::new(suite)));
    }

    /// The SRTP suite of the rig's legs, if they are SRTP.
    pub fn srtp_suite(&self) -> Option<SrtpSuite> {
        self.srtp.as_ref().map(|s| s.suite)
    }

    /// The key the shard protects what it sends to rig leg `index` with (its local
    /// key), on an SRTP rig: what a phone would unprotect with.
    pub fn srtp_local_key(&self, index: usize) -> Option<MasterKey> {
        self.srtp
            .as_ref()
            .map(|s| rig_key(s.suite, 0xA5, index + 1))
    }

    /// Packets the rig's phones could not protect (zero unless the rig is misused).
    pub fn srtp_protect_failures(&self) -> u64 {
        self.srtp.as_ref().map_or(0, |s| s.protect_failures)
    }

    /// Sets the codec of each party index (customer, agent, supervisor, ...) for the
    /// sessions added from now on; parties beyond the list talk PCMU. Set it before
    /// adding sessions: a party's prebuilt voice is made in its codec when its first leg
    /// is added. Refuses a codec outside [`RIG_CODECS`].
    pub fn set_codecs(&mut self, codecs: &[Codec]) -> Result<(), RigError> {
        if let Some(c) = codecs.iter().find(|c| !RIG_CODECS.contains(c)) {
            return Err(RigError::UnsupportedCodec(*c));
        }
        self.codecs = codecs.to_vec();
        Ok(())
    }

    fn codec_of(&self, party: usize) -> Codec {
        self.codecs.get(party).copied().unwrap_or(Codec::Pcmu)
    }

    /// Adds session `session` of `parties` legs (each in its party's codec, rtcp-mux, each with its far end
    /// [`peer_of`] its rig-wide leg index) and the plan `edges` (party indices, unity
    /// gain), at time `now`. Returns the new legs' rig indices.
    pub fn add_session(
        &mut self,
        now: Instant,
        session: &str,
        parties: usize,
        edges: &[(usize, usize)],
    ) -> Result<Range<usize>, RigError> {
        let first = self.legs.len();
        let mut ids = Vec::with_capacity(parties);
        for party in 0..parties {
            let port = self.ports.take(true).ok_or(RigError::NoFreePort)?;
            let cmd = ShardCommand::AllocateLeg {
                session: session.into(),
                leg_key: format!("p{party}"),
                family: IpFamily::V4,
                port,
                rtcp_mux: true,
                resume: None,
            };
            let Response::Leg(info) = self.shard.handle_command(now, cmd)? else {
                return Err(RigError::UnexpectedResponse("AllocateLeg"));
            };
            let peer = peer_of(self.legs.len());
            let codec = self.codec_of(party);
            let mut media = MediaConfig {
                codec,
                payload_type: rig_payload_type(codec),
                ..pcmu_media(Some(peer))
            };
            if let Some(srtp) = &self.srtp {
                let local = rig_key(srtp.suite, 0xA5, self.legs.len() + 1);
                let keys =
                    SrtpMedia::new(srtp.remote_key.clone(), local).map_err(EngineError::from)?;
                media.srtp = Some(keys);
            }
            let cmd = ShardCommand::ConfigureLeg {
                leg: info.leg,
                media,
            };
            self.shard.handle_command(now, cmd)?;
            ids.push(info.leg);
            self.legs.push(RigLeg {
                id: info.leg,
                port: info.local.port(),
                peer,
                party,
            });
            while self.voices.len() <= party {
                let p = self.voices.len();
                self.voices.push(Voice::new(self.codec_of(p), p));
            }
        }
        let cmd = ShardCommand::SetSessionPlan(plan(session, &ids, edges, &[]));
        self.shard.handle_command(now, cmd)?;
        Ok(first..self.legs.len())
    }

    /// Adds a 3-party barge session (everyone hears the other two, mixed).
    pub fn add_barge_session(
        &mut self,
        now: Instant,
        session: &str,
    ) -> Result<Range<usize>, RigError> {
        self.add_session(now, session, 3, Supervision::Barge.edges())
    }

    /// Adds a monitored call: customer and agent forwarded to each other, the supervisor
    /// hearing both mixed.
    pub fn add_monitor_session(
        &mut self,
        now: Instant,
        session: &str,
    ) -> Result<Range<usize>, RigError> {
        self.add_session(now, session, 3, Supervision::Monitor.edges())
    }

    /// Hands leg `leg`'s packet of `period` to the shard at `now` (the marker on period
    /// 0, the talk-spurt start).
    #[inline]
    pub fn feed(&mut self, now: Instant, leg: usize, period: u64) {
        let l = self.legs[leg];
        if let Some(srtp) = self.srtp.as_deref_mut() {
            feed_srtp(
                &mut self.shard,
                &mut self.sink,
                srtp,
                &mut self.voices[l.party],
                now,
                &l,
                period,
            );
            return;
        }
        feed_one(
            &mut self.shard,
            &mut self.sink,
            &mut self.voices[l.party],
            now,
            leg,
            &l,
            period,
        );
    }

    /// Feeds every leg its packet of `period`, all at `now`.
    #[inline]
    pub fn feed_period(&mut self, now: Instant, period: u64) {
        let ShardRig {
            shard,
            sink,
            legs,
            voices,
            srtp,
            ..
        } = self;
        for (i, l) in legs.iter().enumerate() {
            match srtp.as_deref_mut() {
                Some(srtp) => feed_srtp(shard, sink, srtp, &mut voices[l.party], now, l, period),
                None => feed_one(shard, sink, &mut voices[l.party], now, i, l, period),
            }
        }
    }

    /// Runs the ticks due at `now`, as the runtime loop does between receive batches;
    /// `clock` is the time source of the tick-processing histogram. Returns whether any
    /// were due.
    #[inline]
    pub fn tick_if_due(&mut self, now: Instant, clock: &dyn Fn() -> Instant) -> bool {
        if self.shard.poll_deadline().is_some_and(|d| d <= now) {
            self.shard.handle_ticks(now, &mut self.sink, clock);
            true
        } else {
            false
        }
    }

    /// Runs `periods` in virtual time from period 0: each period every leg's packet at
    /// its start, then the ticks due at each millisecond of it.
    pub fn run_periods(&mut self, periods: Range<u64>) {
        for period in periods {
            self.feed_period(Instant::from_nanos(period * PERIOD_NS), period);
            for ms in 0..PERIOD_NS / 1_000_000 {
                let t = Instant::from_nanos(period * PERIOD_NS + ms * 1_000_000);
                self.tick_if_due(t, &|| t);
            }
        }
    }

    /// The shard's statistics (through [`ShardCommand::Stats`], at `now`).
    pub fn stats(&mut self, now: Instant) -> Result<ShardStats, RigError> {
        let cmd = ShardCommand::Stats(ShardStats::default());
        match self.shard.handle_command(now, cmd)? {
            Response::Stats(mut s) if !s.shards.is_empty() => Ok(s.shards.swap_remove(0)),
            _ => Err(RigError::UnexpectedResponse("Stats")),
        }
    }

    /// The shard.
    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// The shard, to send it commands of one's own.
    pub fn shard_mut(&mut self) -> &mut Shard {
        &mut self.shard
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The sink, to take what it captured.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Every leg, in the order added.
    pub fn legs(&self) -> &[RigLeg] {
        &self.legs
    }

    /// The mix kernel the shard uses (`"scalar"`, `"avx2"`, ...).
    pub fn kernel(&self) -> &'static str {
        self.kernel
    }
}

/// One SRTP leg's packet of `period`: the party's protected packet, copied for the
/// shard to unprotect in place.
#[inline]
fn feed_srtp<S: TxSink>(
    shard: &mut Shard,
    sink: &mut S,
    srtp: &mut RigSrtp,
    voice: &mut Voice,
    now: Instant,
    leg: &RigLeg,
    period: u64,
) {
    let len = srtp.packet(voice, leg.party, period);
    if len == 0 {
        return;
    }
    let d = Datagram {
        local_port: leg.port,
        remote: leg.peer,
        payload: black_box(&mut srtp.scratch[..len]),
    };
    shard.handle_packet(now, d, sink);
}

/// One leg's packet of `period`: the party's prebuilt packet with this leg's header
/// written over it, handed to the shard where it lies.
#[inline]
fn feed_one<S: TxSink>(
    shard: &mut Shard,
    sink: &mut S,
    voice: &mut Voice,
    now: Instant,
    index: usize,
    leg: &RigLeg,
    period: u64,
) {
    voice
        .header(period, 0x1000_0000 + index as u32)
        .write(&mut voice.bytes);
    let d = Datagram {
        local_port: leg.port,
        remote: leg.peer,
        payload: black_box(&mut voice.bytes[..voice.len]),
    };
    shard.handle_packet(now, d, sink);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{AGENT, CUSTOMER, SUPERVISOR};
    use crate::rtp::Rtp;
    use crate::tone::{NARROWBAND_HZ, TONE_AMPLITUDE, tone_amplitude};

    fn rig_with_capture(sessions: u32) -> ShardRig<CaptureSink> {
        let cfg = shard_config(20_000, 256, 3 * sessions, sessions, 5);
        ShardRig::with_sink(cfg, MixKernels::scalar(), CaptureSink::new())
    }

    #[test]
    fn a_barge_session_mixes_the_other_two_for_each_party() {
        let mut rig = rig_with_capture(1);
        let legs = rig.add_barge_session(Instant::ZERO, "b").unwrap();
        assert_eq!(legs, 0..3);
        rig.run_periods(0..20);
        let sent = rig.sink_mut().take();
        let stats = rig.stats(Instant::ZERO).unwrap();
        assert_eq!(stats.packets_in, 60);
        assert!(stats.ticks >= 15, "{stats:?}");
        assert_eq!(stats.packets_out as usize, sent.len());
        // The last frame each party got holds the other two voices, not its own.
        for leg in rig.legs().to_vec() {
            let last = sent
                .iter()
                .rev()
                .find(|c| c.dst == leg.peer)
                .expect("each party gets mixed frames");
            assert_eq!(last.src_port, leg.port, "sent from the party's own port");
            let rtp = Rtp::parse(&last.bytes).expect("RTP");
            let pcm = crate::g711::decode_vec(Codec::Pcmu, &rtp.payload);
            for party in [CUSTOMER, AGENT, SUPERVISOR] {
                let level = tone_amplitude(&pcm, voice(party).hz, NARROWBAND_HZ) / TONE_AMPLITUDE;
                if party == leg.party {
                    assert!(level < 0.05, "party {party} hears itself at {level}");
                } else {
                    assert!(level > 0.5, "party {} misses {party}: {level}", leg.party);
                }
            }
        }
    }

    #[test]
    fn each_party_of_a_mixed_codec_session_gets_its_own_codec() {
        let mut rig = rig_with_capture(1);
        rig.set_codecs(&[Codec::Pcmu, Codec::G722, Codec::Pcma])
            .unwrap();
        rig.add_barge_session(Instant::ZERO, "w").unwrap();
        rig.run_periods(0..20);
        let sent = rig.sink_mut().take();
        let stats = rig.stats(Instant::ZERO).unwrap();
        assert_eq!(stats.packets_in, 60);
        assert!(stats.drops.iter().all(|(_, n)| *n == 0), "{stats:?}");
        for (leg, pt) in rig.legs().to_vec().into_iter().zip([0u8, 9, 8]) {
            let got: Vec<Rtp> = sent
                .iter()
                .filter(|c| c.dst == leg.peer)
                .filter_map(|c| Rtp::parse(&c.bytes))
                .collect();
            assert!(got.len() >= 15, "party {} got {}", leg.party, got.len());
            assert!(
                got.iter()
                    .all(|r| r.payload_type == pt && r.payload.len() == 160)
            );
        }
        assert!(matches!(
            rig.set_codecs(&[Codec::L16(earshot_types::SampleRate::Hz8000)]),
            Err(RigError::UnsupportedCodec(_))
        ));
    }

    #[test]
    fn a_monitor_session_forwards_customer_and_agent_untouched() {
        let mut rig = rig_with_capture(1);
        rig.add_monitor_session(Instant::ZERO, "m").unwrap();
        rig.feed(Instant::ZERO, CUSTOMER, 0);
        let sent = rig.sink_mut().take();
        assert_eq!(sent.len(), 1, "forwarded at once, inside the receive call");
        assert_eq!(sent[0].dst, rig.legs()[AGENT].peer);
        let rtp = Rtp::parse(&sent[0].bytes).unwrap();
        let want: [u8; FRAME_SAMPLES] = crate::g711::tone_frame(Codec::Pcmu, &voice(CUSTOMER), 0);
        assert_eq!(rtp.payload, want.to_vec(), "payload forwarded bit-exactly");
    }

    #[test]
    fn an_srtp_barge_session_authenticates_every_packet_and_mixes_every_leg() {
        for suite in SrtpSuite::ALL {
            let mut rig = rig_with_capture(1);
            rig.set_srtp(suite);
            rig.add_barge_session(Instant::ZERO, "b").unwrap();
            rig.run_periods(0..20);
            let sent = rig.sink_mut().take();
            let stats = rig.stats(Instant::ZERO).unwrap();
            assert_eq!(stats.packets_in, 60, "{suite:?}: every packet fed");
            let dropped: u64 = stats.drops.iter().map(|(_, n)| n).sum();
            assert_eq!(dropped, 0, "{suite:?}: {:?}", stats.drops);
            assert_eq!(rig.srtp_protect_failures(), 0);
            assert_eq!(stats.packets_out as usize, sent.len());
            for (index, leg) in rig.legs().to_vec().into_iter().enumerate() {
                let key = rig.srtp_local_key(index).expect("an SRTP rig");
                let mut phone = SrtpSession::new(Direction::Inbound, &key, SrtpConfig::default());
                let mut last = None;
                for c in sent.iter().filter(|c| c.dst == leg.peer) {
                    let mut bytes = c.bytes.clone();
                    let len = phone
                        .unprotect_rtp(&mut bytes)
                        .unwrap_or_else(|e| panic!("{suite:?}: leg {index}: {e:?}"));
                    assert_eq!(len, PACKET_LEN, "{suite:?}");
                    last = Some(bytes[..len].to_vec());
                }
                let last = last.expect("each party gets mixed frames");
                let rtp = Rtp::parse(&last).expect("RTP");
                let pcm = crate::g711::decode_vec(Codec::Pcmu, &rtp.payload);
                for party in [CUSTOMER, AGENT, SUPERVISOR] {
                    let level =
                        tone_amplitude(&pcm, voice(party).hz, NARROWBAND_HZ) / TONE_AMPLITUDE;
                    if party == leg.party {
                        assert!(level < 0.05, "{suite:?}: party {party} hears itself");
                    } else {
                        assert!(level > 0.5, "{suite:?}: party {} misses {party}", leg.party);
                    }
                }
            }
        }
    }

    #[test]
    fn the_discard_sink_checksums_what_the_shard_built() {
        let run = |periods: u64| {
            let cfg = shard_config(20_000, 16, 3, 1, 5);
            let mut rig = ShardRig::new(cfg, MixKernels::scalar());
            rig.add_barge_session(Instant::ZERO, "b").unwrap();
            rig.run_periods(0..periods);
            (rig.sink().sent, rig.sink().checksum)
        };
        let (a, b) = (run(10), run(11));
        assert!(a.0 > 0 && b.0 > a.0);
        assert_ne!(a.1, b.1);
        assert_eq!(run(10), a, "the same work gives the same checksum");
    }

    #[test]
    fn peers_are_distinct_per_leg() {
        let peers: Vec<SocketAddr> = (0..70_000).step_by(997).map(peer_of).collect();
        let mut dedup = peers.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), peers.len());
    }
}
