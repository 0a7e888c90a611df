//! The whole engine over real loopback UDP, on the io_uring and the socket backends.
//!
//! Three `std::net::UdpSocket` endpoints (customer, agent, supervisor) each talk a tone at
//! their own frequency while the session plan is switched live through monitor, coach,
//! barge, hold and monitor again after the resume. The test proves, per phase, who hears whom (SPEC section 1) by tone
//! detection on what each endpoint receives; that each endpoint's received RTP is one
//! stream across every switch (SPEC section 5); that the monitored customer-agent path is
//! forwarded bit-exactly; and that malformed datagrams are dropped, counted by reason,
//! and leave the audio intact.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};

use earshot_engine::backend::Factory;
use earshot_engine::config::{BackendKind, EngineConfig};
use earshot_engine::engine::Engine;
use earshot_engine::server::block_on;
use earshot_engine_api::{
    Edge, EngineError, Family, LegId, MediaConfig, Request, Response, SessionPlan,
};
use earshot_media::Codec;
use earshot_media::dsp::g711;

const SESSION: &str = "udp-call-1";
const SAMPLE_RATE_HZ: f64 = 8000.0;
const FRAME_SAMPLES: usize = 160;
const PTIME_MS: u64 = 20;
/// Packets each endpoint sends per phase (0.8 s of audio).
const PACKETS_PER_PHASE: usize = 40;
/// Ticks at the start of each phase whose received audio is ignored (jitter buffer and
/// plan switch settle): 100 ms.
const SETTLE_TICKS: usize = 5;
/// Tone amplitude: -12 dBFS.
const TONE_DBFS: f64 = -12.0;
/// A tone is heard when its mean per-frame power is at most this far below the sent
/// power, and absent when at least `ABSENT_DB` below.
const PRESENT_DB: f64 = -6.0;
const ABSENT_DB: f64 = -30.0;
/// Ticks at which each kind of malformed datagram is sent in every phase.
const BAD_TICKS: [usize; 3] = [10, 20, 30];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Customer,
    Agent,
    Supervisor,
}

const ALL: [Who; 3] = [Who::Customer, Who::Agent, Who::Supervisor];

impl Who {
    fn idx(self) -> usize {
        self as usize
    }
    fn tone_hz(self) -> f64 {
        match self {
            Who::Customer => 500.0,
            Who::Agent => 900.0,
            Who::Supervisor => 1400.0,
        }
    }
    fn key(self) -> &'static str {
        match self {
            Who::Customer => "customer",
            Who::Agent => "agent",
            Who::Supervisor => "supervisor",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Monitor,
    Coach,
    Barge,
    Hold,
    /// The customer is resumed, still monitored: every stream restarts after the hold.
    Resume,
}

const PHASES: [Phase; 5] = [
    Phase::Monitor,
    Phase::Coach,
    Phase::Barge,
    Phase::Hold,
    Phase::Resume,
];

impl Phase {
    /// (listener, source) pairs of the hear relation, SPEC section 1, with the
    /// supervisor targeting the agent.
    fn hears(self) -> Vec<(Who, Who)> {
        use Who::*;
        match self {
            Phase::Monitor | Phase::Resume => vec![
                (Customer, Agent),
                (Agent, Customer),
                (Supervisor, Customer),
                (Supervisor, Agent),
            ],
            Phase::Coach => vec![
                (Customer, Agent),
                (Agent, Customer),
                (Supervisor, Customer),
                (Supervisor, Agent),
                (Agent, Supervisor),
            ],
            Phase::Barge => vec![
                (Customer, Agent),
                (Customer, Supervisor),
                (Agent, Customer),
                (Agent, Supervisor),
                (Supervisor, Customer),
                (Supervisor, Agent),
            ],
            // The customer is held: {C}, {A}; the monitoring supervisor hears the agent's
            // group, which is the agent alone.
            Phase::Hold => vec![(Supervisor, Agent)],
        }
    }

    fn plan(self, legs: &[LegId; 3]) -> SessionPlan {
        let edges = self
            .hears()
            .into_iter()
            .map(|(l, s)| Edge {
                listener: legs[l.idx()],
                source: legs[s.idx()],
                gain: 4096,
            })
            .collect();
        let no_dtmf = if self == Phase::Barge {
            Vec::new()
        } else {
            vec![legs[Who::Supervisor.idx()]]
        };
        SessionPlan {
            session: SESSION.into(),
            edges,
            no_dtmf,
        }
    }
}

/// One RTP packet an endpoint received, with when (phase, tick) it was drained.
#[derive(Debug)]
struct Received {
    phase: usize,
    tick: usize,
    bytes: Vec<u8>,
}

/// One endpoint: its socket and the RTP stream it sends.
#[derive(Debug)]
struct Endpoint {
    who: Who,
    sock: UdpSocket,
    ssrc: u32,
    seq: u16,
    ts: u32,
    sample: u64,
    received: Vec<Received>,
}

fn tone_amplitude() -> f64 {
    32767.0 * 10f64.powf(TONE_DBFS / 20.0)
}

impl Endpoint {
    fn new(who: Who) -> Endpoint {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        Endpoint {
            who,
            sock,
            ssrc: 0x1000_0000 + who.idx() as u32,
            seq: 1000 * who.idx() as u16,
            ts: 7000 * who.idx() as u32,
            sample: 0,
            received: Vec::new(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// The next 20 ms of this endpoint's tone as a PCMU RTP packet. The customer marks
    /// each packet: every tone sample that is exactly zero is coded as the mu-law
    /// "negative zero" (0x7F) or the canonical zero (0xFF) according to one bit of the
    /// packet count. Both decode to 0, so the audio is unchanged, but only a forwarded
    /// packet keeps the 0x7F codes: a decode-mix-encode path turns them into 0xFF.
    fn next_packet(&mut self) -> Vec<u8> {
        let amp = tone_amplitude();
        let w = 2.0 * std::f64::consts::PI * self.who.tone_hz() / SAMPLE_RATE_HZ;
        let mut pcm = [0i16; FRAME_SAMPLES];
        for (i, s) in pcm.iter_mut().enumerate() {
            *s = (amp * (w * (self.sample + i as u64) as f64).sin()).round() as i16;
        }
        let mut payload = [0u8; FRAME_SAMPLES];
        g711::encode(Codec::Pcmu, &pcm, &mut payload);
        if self.who == Who::Customer {
            let count = u32::from(self.seq.wrapping_sub(1000 * self.who.idx() as u16));
            let zeros = pcm.iter().enumerate().filter(|(_, s)| **s == 0);
            for (bit, (i, _)) in zeros.enumerate().take(32) {
                payload[i] = if count >> bit & 1 == 1 { 0x7F } else { 0xFF };
            }
        }
        let p = rtp(0, self.seq, self.ts, self.ssrc, &payload);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME_SAMPLES as u32);
        self.sample += FRAME_SAMPLES as u64;
        p
    }

    /// Takes every datagram waiting, without blocking; RTCP (rtcp-mux) is set aside.
    fn drain(&mut self, phase: usize, tick: usize) {
        let mut buf = [0u8; 2048];
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    let bytes = buf[..n].to_vec();
                    let is_rtcp = n >= 2 && (192..=223).contains(&bytes[1]);
                    if !is_rtcp {
                        self.received.push(Received { phase, tick, bytes });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("{:?} receive failed: {e}", self.who),
            }
        }
    }
}

fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// Power of `hz` in one frame relative to the sent tone's power, as a linear ratio:
/// Goertzel on a frame that holds a whole number of periods of every tone used here
/// (500, 900 and 1400 Hz are multiples of 8000/160 = 50 Hz), so the tones do not leak
/// into each other's bins.
fn relative_power(frame: &[i16], hz: f64) -> f64 {
    let n = frame.len() as f64;
    let w = 2.0 * std::f64::consts::PI * hz / SAMPLE_RATE_HZ;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in frame {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let mag2 = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let amp = 2.0 * mag2.sqrt() / n;
    (amp / tone_amplitude()).powi(2)
}

/// Mean relative power (dB) of each endpoint's tone in what `ep` received in `phase`
/// after the settling ticks, and the number of frames analysed.
fn tone_levels_db(ep: &Endpoint, phase: usize) -> ([f64; 3], usize) {
    let mut sums = [0.0f64; 3];
    let mut frames = 0usize;
    let mut pcm = [0i16; FRAME_SAMPLES];
    for r in ep
        .received
        .iter()
        .filter(|r| r.phase == phase && r.tick >= SETTLE_TICKS)
    {
        let payload = &r.bytes[12..];
        if payload.len() != FRAME_SAMPLES {
            continue;
        }
        g711::decode(Codec::Pcmu, payload, &mut pcm);
        for who in ALL {
            sums[who.idx()] += relative_power(&pcm, who.tone_hz());
        }
        frames += 1;
    }
    let db = sums.map(|s| {
        if frames == 0 {
            f64::NEG_INFINITY
        } else {
            10.0 * (s / frames as f64).max(1e-12).log10()
        }
    });
    (db, frames)
}

fn call(engine: &Engine, r: Request) -> Result<Response, EngineError> {
    block_on(engine.handle().request(r))
}

fn allocate(engine: &Engine, who: Who, remote: SocketAddr) -> (LegId, SocketAddr) {
    let Response::Leg(info) = call(
        engine,
        Request::AllocateLeg {
            session: SESSION.into(),
            leg_key: who.key().into(),
            family: Family::V4,
            requested_port: None,
            rtcp_mux: true,
        },
    )
    .unwrap() else {
        panic!("AllocateLeg did not answer with a leg")
    };
    let media = MediaConfig {
        remote: Some(remote),
        codec: Codec::Pcmu,
        payload_type: 0,
        ptime_ms: PTIME_MS as u32,
        telephone_event_pt: Some(101),
        rtcp_mux: true,
        report_first_packet: false,
        max_ptime_ms: None,
        opus: Default::default(),
    };
    call(
        engine,
        Request::ConfigureLeg {
            leg: info.leg,
            media,
        },
    )
    .unwrap();
    (info.leg, info.local)
}

/// Checks that `ep`'s received RTP is one stream: one SSRC, sequence numbers +1 per
/// packet, timestamps never going back. Returns the first violation.
fn stream_violation(ep: &Endpoint) -> Option<String> {
    let first = ep.received.first()?;
    let ssrc0 = u32::from_be_bytes(first.bytes[8..12].try_into().unwrap());
    let mut prev: Option<(u16, u32)> = None;
    for (i, r) in ep.received.iter().enumerate() {
        if r.bytes.len() < 12 || r.bytes[0] >> 6 != 2 {
            return Some(format!("packet {i} is not RTP v2: {:02x?}", &r.bytes[..]));
        }
        let seq = u16::from_be_bytes([r.bytes[2], r.bytes[3]]);
        let ts = u32::from_be_bytes(r.bytes[4..8].try_into().unwrap());
        let ssrc = u32::from_be_bytes(r.bytes[8..12].try_into().unwrap());
        let at = format!("packet {i} (phase {:?}, tick {})", PHASES[r.phase], r.tick);
        if ssrc != ssrc0 {
            return Some(format!("{at}: SSRC {ssrc:#x} after {ssrc0:#x}"));
        }
        if let Some((pseq, pts)) = prev {
            if seq != pseq.wrapping_add(1) {
                return Some(format!("{at}: sequence {seq} after {pseq}"));
            }
            if (ts.wrapping_sub(pts) as i32) < 0 {
                return Some(format!("{at}: timestamp {ts} after {pts}"));
            }
        }
        prev = Some((seq, ts));
    }
    None
}

fn drop_counts(engine: &Engine) -> HashMap<String, u64> {
    let Response::Stats(stats) = call(engine, Request::Stats).unwrap() else {
        panic!("Stats did not answer with stats")
    };
    let mut drops = HashMap::new();
    for shard in &stats.shards {
        for (reason, n) in &shard.drops {
            *drops.entry(reason.clone()).or_insert(0) += n;
        }
    }
    drops
}

/// Runs the whole scenario on `backend`, with the engine's ports at `port_base`.
// A real-socket test paces its packets and bounds its waits with the real clock.
#[allow(clippy::disallowed_methods)]
fn run_scenario(backend: BackendKind, port_base: u16) {
    use std::time::{Duration as StdDuration, Instant as StdInstant};

    // The forwarding proof relies on two mu-law codes for zero, one canonical.
    assert_eq!(g711::ulaw_decode_sample(0x7F), 0);
    assert_eq!(g711::ulaw_decode_sample(0xFF), 0);
    assert_eq!(g711::ulaw_encode_sample(0), 0xFF);

    let cfg = EngineConfig {
        backend,
        fallback: false,
        pin: false,
        bind_v4: Some(std::net::Ipv4Addr::LOCALHOST),
        port_base,
        ports_per_shard: 1024,
        max_legs_per_shard: 64,
        max_sessions_per_shard: 16,
        seed: 11,
        ..EngineConfig::default()
    };
    let mut factory = Factory::new(&cfg).unwrap();
    let engine = match Engine::start(&cfg, |i| factory.open(i)) {
        Ok(e) => e,
        Err(e) if backend == BackendKind::IoUring => {
            println!("SKIPPED: io_uring backend cannot start here: {e}");
            return;
        }
        Err(e) => panic!("{backend:?} engine failed to start: {e}"),
    };

    let mut eps = ALL.map(Endpoint::new);
    let mut legs = [LegId(0); 3];
    let mut locals = [eps[0].addr(); 3];
    for who in ALL {
        let (leg, local) = allocate(&engine, who, eps[who.idx()].addr());
        legs[who.idx()] = leg;
        locals[who.idx()] = local;
    }
    let intruder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let customer_leg = locals[Who::Customer.idx()];

    // Every packet the customer sent while only monitored, to check forwarding.
    let mut customer_sent_in_monitor: Vec<Vec<u8>> = Vec::new();
    let mut bad_sent = 0u64;
    let tick = StdDuration::from_millis(PTIME_MS);
    for (p, phase) in PHASES.iter().enumerate() {
        assert_eq!(
            call(&engine, Request::SetSessionPlan(phase.plan(&legs))).unwrap(),
            Response::Done,
            "plan {phase:?} applied"
        );
        let start = StdInstant::now();
        for t in 0..PACKETS_PER_PHASE {
            let due = start + tick * t as u32;
            let now = StdInstant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            for ep in eps.iter_mut() {
                let pkt = ep.next_packet();
                let dst = locals[ep.who.idx()];
                ep.sock.send_to(&pkt, dst).unwrap();
                if *phase == Phase::Monitor && ep.who == Who::Customer {
                    customer_sent_in_monitor.push(pkt[12..].to_vec());
                }
            }
            if BAD_TICKS.contains(&t) {
                let c = &eps[Who::Customer.idx()].sock;
                // Truncated: shorter than an RTP header (second byte not RTCP-like).
                c.send_to(&[0x80, 0, 0, 1, 2], customer_leg).unwrap();
                // RTP version 1.
                let mut v1 = rtp(0, 1, 1, 0xBAD, &[0xFF; 160]);
                v1[0] = 0x40;
                c.send_to(&v1, customer_leg).unwrap();
                // A payload type the leg never negotiated.
                c.send_to(&rtp(96, 1, 1, 0xBAD, &[0xFF; 160]), customer_leg)
                    .unwrap();
                // A valid packet from an address that is not the leg's remote.
                intruder
                    .send_to(&rtp(0, 1, 1, 0xBAD, &[0xFF; 160]), customer_leg)
                    .unwrap();
                bad_sent += 1;
            }
            for ep in eps.iter_mut() {
                ep.drain(p, t);
            }
        }
    }
    // Let the last frames out, then attribute them to the last phase's final tick.
    let tail_end = StdInstant::now() + StdDuration::from_millis(100);
    while StdInstant::now() < tail_end {
        std::thread::sleep(StdDuration::from_millis(5));
        for ep in eps.iter_mut() {
            ep.drain(PHASES.len() - 1, PACKETS_PER_PHASE);
        }
    }

    let drops = drop_counts(&engine);
    println!("{backend:?}: drops {drops:?}");
    engine.shutdown();

    let mut failures = Vec::new();

    // 3. Who hears whom, per phase.
    for (p, phase) in PHASES.iter().enumerate() {
        let hears = phase.hears();
        for listener in ALL {
            let (db, frames) = tone_levels_db(&eps[listener.idx()], p);
            println!(
                "{backend:?} {phase:?}: {listener:?} got {frames} frames; C {:.1} dB, A {:.1} dB, S {:.1} dB",
                db[0], db[1], db[2]
            );
            let expect_any = hears.iter().any(|&(l, _)| l == listener);
            if expect_any && frames < PACKETS_PER_PHASE / 2 {
                failures.push(format!(
                    "{phase:?}: {listener:?} received only {frames} frames after settling"
                ));
            }
            for source in ALL {
                let level = db[source.idx()];
                let heard = hears.contains(&(listener, source));
                if heard && level < PRESENT_DB {
                    failures.push(format!(
                        "{phase:?}: {listener:?} should hear {source:?}, level {level:.1} dB"
                    ));
                }
                if !heard && level > ABSENT_DB {
                    failures.push(format!(
                        "{phase:?}: {listener:?} must not hear {source:?}, level {level:.1} dB"
                    ));
                }
            }
        }
    }

    // 4. One RTP stream per endpoint across every switch.
    for ep in &eps {
        assert!(!ep.received.is_empty(), "{:?} received nothing", ep.who);
        if let Some(v) = stream_violation(ep) {
            println!("{backend:?}: {:?} stream violation: {v}", ep.who);
            failures.push(format!("{:?} stream: {v}", ep.who));
        }
    }

    // 5. While only monitored, the agent gets the customer's payloads bit-exactly (the
    // 0x7F marks survive only a forward).
    let agent_monitor: Vec<&Received> = eps[Who::Agent.idx()]
        .received
        .iter()
        .filter(|r| r.phase == 0 && r.tick >= SETTLE_TICKS)
        .collect();
    let exact = agent_monitor
        .iter()
        .filter(|r| {
            customer_sent_in_monitor
                .iter()
                .any(|s| s[..] == r.bytes[12..])
        })
        .count();
    let marked = agent_monitor
        .iter()
        .filter(|r| r.bytes[12..].contains(&0x7F))
        .count();
    println!(
        "{backend:?}: agent got {} packets in monitor after settling, {exact} exact customer payloads, {marked} with 0x7F marks",
        agent_monitor.len()
    );
    if exact < agent_monitor.len() || exact < PACKETS_PER_PHASE / 2 || marked == 0 {
        failures.push(format!(
            "monitor: agent got {} packets, {exact} exact customer payloads, {marked} marked",
            agent_monitor.len()
        ));
    }

    // 6. Malformed packets are counted by reason.
    for reason in [
        "truncated",
        "bad_version",
        "unknown_payload_type",
        "wrong_source",
    ] {
        let n = drops.get(reason).copied().unwrap_or(0);
        if n < bad_sent {
            failures.push(format!("drops[{reason}] = {n}, sent {bad_sent}"));
        }
    }

    assert!(
        failures.is_empty(),
        "{backend:?} backend failed:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn io_uring_engine_mixes_forwards_and_drops_over_real_udp() {
    // 23 * 1024: below the ephemeral port range the endpoints are bound in.
    run_scenario(BackendKind::IoUring, 23 * 1024);
}

#[test]
fn socket_engine_mixes_forwards_and_drops_over_real_udp() {
    run_scenario(BackendKind::Socket, 24 * 1024);
}
