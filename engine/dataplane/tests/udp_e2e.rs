//! The whole engine over real loopback UDP, on the io_uring and the socket backends.
//!
//! Three PCMU endpoints of the test kit (customer, agent, supervisor) each talk a tone at
//! their own frequency while the session plan is switched live through monitor, coach,
//! barge, hold and monitor again after the resume. The test proves, per phase, who hears
//! whom (SPEC section 1) by tone detection on what each endpoint receives; that each
//! endpoint's received RTP is one stream across every switch (SPEC section 5); that the
//! monitored customer-agent path is forwarded bit-exactly; and that malformed datagrams
//! are dropped, counted by reason, and leave the audio intact.
// A real-socket test paces its phases and bounds its waits with the real clock.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use earshot_engine::backend::Factory;
use earshot_engine::config::{BackendKind, EngineConfig};
use earshot_engine::engine::Engine;
use earshot_engine::server::block_on;
use earshot_engine_api::{EngineError, IpFamily, LegId, MediaConfig, Request, Response};
use earshot_testkit::endpoint::{PcmuEndpoint, Talk};
use earshot_testkit::fixtures::{Role, Supervision, pcmu_media};
use earshot_testkit::g711;
use earshot_testkit::program::{add_leg, set_plan};
use earshot_testkit::rtp::{HEADER_LEN, Rtp, RtpHeader};

const SESSION: &str = "udp-call-1";
/// Each endpoint's SSRC is this plus its party index.
const CUSTOMER_SSRC: u32 = 0x1000_0000;
/// Packets each endpoint sends per phase (0.8 s of audio).
const PACKETS_PER_PHASE: u32 = 40;
/// Time at the start of each phase whose received audio is ignored (jitter buffer and
/// plan switch settle).
const SETTLE: Duration = Duration::from_millis(100);
/// When, after each phase starts, each kind of malformed datagram is sent.
const BAD_AT_MS: [u64; 3] = [200, 400, 600];

/// The supervision modes the test switches through, live on the same legs: the last is
/// the customer resumed after the hold, still monitored (every stream restarts).
const PHASES: [Supervision; 5] = [
    Supervision::Monitor,
    Supervision::Coach,
    Supervision::Barge,
    Supervision::Hold,
    Supervision::Monitor,
];

fn call(engine: &Engine, r: Request) -> Result<Response, EngineError> {
    block_on(engine.handle().request(r))
}

fn allocate(engine: &Engine, who: Role, remote: SocketAddr) -> (LegId, SocketAddr) {
    let media = MediaConfig {
        telephone_event_pt: Some(101),
        ..pcmu_media(Some(remote))
    };
    let info = add_leg(
        &mut |r| call(engine, r),
        SESSION,
        who.key(),
        IpFamily::V4,
        media,
    )
    .expect("leg allocated and configured");
    (info.leg, info.local)
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

/// Sleeps until `at`.
fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// Runs the whole scenario on `backend`, with the engine's ports at `port_base`.
fn run_scenario(backend: BackendKind, port_base: u16) {
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

    let eps = Role::ALL.map(|who| {
        PcmuEndpoint::loopback(CUSTOMER_SSRC + who.index() as u32).expect("endpoint socket")
    });
    let mut legs = [LegId(0); 3];
    let mut locals = [eps[0].addr(); 3];
    for who in Role::ALL {
        let (leg, local) = allocate(&engine, who, eps[who.index()].addr());
        legs[who.index()] = leg;
        locals[who.index()] = local;
    }
    let intruder = PcmuEndpoint::loopback(0xBAD).expect("intruder socket");
    let customer = &eps[Role::Customer.index()];
    let customer_leg = locals[Role::Customer.index()];
    let bad = |pt: u8, version: u8| {
        RtpHeader::new(pt, 1, 1, 0xBAD)
            .with_version(version)
            .packet(&[0xFF; 160])
    };

    let mut windows: Vec<Range<Instant>> = Vec::new();
    let mut bad_sent = 0u64;
    for (p, phase) in PHASES.iter().enumerate() {
        set_plan(&mut |r| call(&engine, r), phase.plan(SESSION, &legs, true))
            .unwrap_or_else(|e| panic!("plan {phase:?}: {e}"));
        let start = Instant::now();
        let talkers: Vec<_> = Role::ALL
            .iter()
            .map(|&who| {
                let talk = Talk {
                    // Only the customer marks its zeros: the agent must get them back
                    // untouched while only monitored.
                    mark_zeros: who == Role::Customer,
                    ..Talk::tone(who.tone(), PACKETS_PER_PHASE)
                };
                eps[who.index()].talk(locals[who.index()], talk)
            })
            .collect();
        for at in BAD_AT_MS {
            sleep_until(start + Duration::from_millis(at));
            // Truncated: shorter than an RTP header (second byte not RTCP-like).
            customer
                .send_raw(&[0x80, 0, 0, 1, 2], customer_leg)
                .unwrap();
            // RTP version 1.
            customer.send_raw(&bad(0, 1), customer_leg).unwrap();
            // A payload type the leg never negotiated.
            customer.send_raw(&bad(96, 2), customer_leg).unwrap();
            // A valid packet from an address that is not the leg's remote.
            intruder.send_raw(&bad(0, 2), customer_leg).unwrap();
            bad_sent += 1;
        }
        for t in talkers {
            assert_eq!(t.join().expect("talker"), PACKETS_PER_PHASE, "{phase:?}");
        }
        // The window ends when the next plan is set: what arrives later belongs to the
        // next phase (and falls in its settling time). The last phase lets its tail in.
        if p + 1 == PHASES.len() {
            std::thread::sleep(Duration::from_millis(100));
        }
        windows.push(start + SETTLE..Instant::now());
    }

    let drops = drop_counts(&engine);
    println!("{backend:?}: drops {drops:?}");
    engine.shutdown();

    let mut failures = Vec::new();

    // 3. Who hears whom, per phase.
    for (p, phase) in PHASES.iter().enumerate() {
        let window = &windows[p];
        for listener in Role::ALL {
            let heard = eps[listener.index()].hearing(listener, window);
            println!("{backend:?} {phase:?}: {}", heard.summary());
            let frames = heard.frames();
            if phase.hears_anyone(listener) && frames < PACKETS_PER_PHASE as usize / 2 {
                failures.push(format!(
                    "{phase:?}: {listener:?} received only {frames} frames after settling"
                ));
            }
            failures.extend(heard.violations("", *phase));
        }
    }

    // 4. One RTP stream per endpoint across every switch.
    for who in Role::ALL {
        let ep = &eps[who.index()];
        assert!(!ep.received().is_empty(), "{who:?} received nothing");
        if let Some(v) = ep.stream_violation() {
            println!("{backend:?}: {who:?} stream violation: {v}");
            failures.push(format!("{who:?} stream: {v}"));
        }
    }

    // 5. While only monitored, the agent gets the customer's payloads bit-exactly (the
    // 0x7F marks survive only a forward).
    let customer_sent: Vec<Vec<u8>> = customer
        .sent_in(&(windows[0].start - SETTLE..windows[0].end))
        .into_iter()
        .filter_map(|s| Rtp::parse(&s.bytes))
        .filter(|r| r.ssrc == CUSTOMER_SSRC && r.payload_type == 0)
        .map(|r| r.payload)
        .collect();
    let agent_monitor: Vec<Vec<u8>> = eps[Role::Agent.index()]
        .received_in(&windows[0])
        .into_iter()
        .filter(|a| a.bytes.len() > HEADER_LEN && !earshot_testkit::rtp::is_rtcp(&a.bytes))
        .map(|a| a.bytes[HEADER_LEN..].to_vec())
        .collect();
    let exact = agent_monitor
        .iter()
        .filter(|r| customer_sent.iter().any(|s| s == *r))
        .count();
    let marked = agent_monitor.iter().filter(|r| r.contains(&0x7F)).count();
    println!(
        "{backend:?}: agent got {} packets in monitor after settling, {exact} exact customer payloads, {marked} with 0x7F marks",
        agent_monitor.len()
    );
    if exact < agent_monitor.len() || exact < PACKETS_PER_PHASE as usize / 2 || marked == 0 {
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
