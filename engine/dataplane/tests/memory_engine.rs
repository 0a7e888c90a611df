//! The whole engine (threads, command queues, acknowledgements) on the in-memory backend:
//! a barge session forwards nothing and mixes everything; a monitor session forwards.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use earshot_engine::backend::memory::{MemDatagram, MemoryBackend, MemoryNet};
use earshot_engine::config::{BackendKind, EngineConfig};
use earshot_engine::engine::Engine;
use earshot_engine::server::block_on;
use earshot_engine_api::{EngineError, IpFamily, LegId, MediaConfig, Request, Response};
use earshot_testkit::fixtures::{Supervision, pcmu_media};
use earshot_testkit::program::add_leg;
use earshot_testkit::rtp::RtpHeader;

fn start() -> (Engine, MemoryNet) {
    let cfg = EngineConfig {
        backend: BackendKind::Memory,
        pin: false,
        seed: 7,
        ..EngineConfig::default()
    };
    let net: Arc<Mutex<Option<MemoryNet>>> = Arc::default();
    let slot = net.clone();
    let engine = Engine::start(&cfg, move |_| {
        let (b, n) = MemoryBackend::new(8192, false);
        *slot.lock().unwrap() = Some(n);
        Ok(Box::new(b))
    })
    .unwrap();
    let n = net.lock().unwrap().take().unwrap();
    (engine, n)
}

fn call(engine: &Engine, r: Request) -> Result<Response, EngineError> {
    block_on(engine.handle().request(r))
}

fn leg(engine: &Engine, key: &str, peer: SocketAddr) -> (LegId, u16) {
    let media = MediaConfig {
        telephone_event_pt: Some(101),
        ..pcmu_media(Some(peer))
    };
    let info = add_leg(&mut |r| call(engine, r), "call-1", key, IpFamily::V4, media)
        .expect("leg allocated and configured");
    (info.leg, info.local.port())
}

fn rtp(seq: u16, ts: u32, ssrc: u32, byte: u8) -> Vec<u8> {
    RtpHeader::pcmu(seq, ts, ssrc).packet(&[byte; 160])
}

#[test]
fn monitor_forwards_the_primary_call_and_a_retry_returns_the_same_leg() {
    let (engine, net) = start();
    let pc: SocketAddr = "10.0.0.1:4000".parse().unwrap();
    let pa: SocketAddr = "10.0.0.2:4000".parse().unwrap();
    let ps: SocketAddr = "10.0.0.3:4000".parse().unwrap();
    let (c, c_port) = leg(&engine, "customer", pc);
    let (a, a_port) = leg(&engine, "agent", pa);
    let (s, _s_port) = leg(&engine, "supervisor", ps);
    let (c2, _) = leg(&engine, "customer", pc);
    assert_eq!(c, c2, "allocating the same key again returns the same leg");
    let plan = Supervision::Monitor.plan("call-1", &[c, a, s], true);
    assert_eq!(
        call(&engine, Request::SetSessionPlan(plan)).unwrap(),
        Response::Done
    );
    // The customer talks: the agent must get the very same payload, re-stamped.
    for i in 0..5u16 {
        net.inject(MemDatagram {
            engine_port: c_port,
            peer: pc,
            payload: rtp(i, u32::from(i) * 160, 0xC, 0x55),
        })
        .unwrap();
    }
    let mut to_agent = 0;
    #[allow(clippy::disallowed_methods)] // A real-thread test bounds its wait in real time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    #[allow(clippy::disallowed_methods)]
    while to_agent < 5 && std::time::Instant::now() < deadline {
        if let Some(d) = net.take_sent() {
            // A leg that hears nobody yet gets silence frames at its ptime (mu-law
            // 0xFF): those may come first, and are not what this test checks.
            if d.peer == pa && d.payload[12..].iter().all(|b| *b == 0xFF) {
                assert_eq!(d.engine_port, a_port);
            } else if d.peer == pa {
                assert_eq!(d.engine_port, a_port);
                assert_eq!(
                    &d.payload[12..],
                    &[0x55; 160][..],
                    "forwarded, not re-encoded"
                );
                to_agent += 1;
            }
        } else {
            std::thread::yield_now();
        }
    }
    assert_eq!(to_agent, 5);
    let Response::Stats(stats) = call(&engine, Request::Stats).unwrap() else {
        panic!()
    };
    assert_eq!(stats.shards[0].legs, 3);
    assert!(stats.shards[0].packets_in >= 5);
    call(
        &engine,
        Request::RemoveSession {
            session: "call-1".into(),
        },
    )
    .unwrap();
    let Response::Snapshot(snap) = call(&engine, Request::Snapshot).unwrap() else {
        panic!()
    };
    assert!(snap.legs.is_empty());
    engine.shutdown();
}

/// A leg re-created on a survivor (cluster failover) binds the failed node's address
/// and continues its outbound stream: same SSRC, the next sequence number and
/// timestamp, and for SRTP the same rollover count, so a receiver that tracked the old
/// stream decrypts the new one; the snapshot reports where the stream stands.
#[test]
fn a_leg_taken_over_continues_the_failed_node_s_stream() {
    use earshot_engine_api::{LegResume, MasterKey, SrtpMedia, SrtpSuite, StreamBase};
    use earshot_srtp::{Direction, SrtpConfig, SrtpError, SrtpSession};
    use earshot_types::Ssrc;

    let (engine, net) = start();
    let suite = SrtpSuite::AesCm128HmacSha1_80;
    let ours = MasterKey::generate(suite, |b| b.fill(0x42));
    let theirs = MasterKey::generate(suite, |b| b.fill(0x17));
    let peer: SocketAddr = "10.0.0.9:4000".parse().unwrap();
    let address: std::net::IpAddr = "10.1.2.3".parse().unwrap();
    // Rollover count 3, sequence number 65530: a wrap comes within the test.
    let base = StreamBase {
        ssrc: 0x5EED_F00D,
        index: (3 << 16) | 65_530,
        timestamp: 1_234_560,
    };
    let Response::Leg(info) = call(
        &engine,
        Request::AllocateLeg {
            session: "moved".into(),
            leg_key: "customer".into(),
            family: IpFamily::V4,
            requested_port: None,
            rtcp_mux: true,
            resume: Some(LegResume {
                local_ip: Some(address),
                stream: Some(base),
            }),
        },
    )
    .unwrap() else {
        panic!("AllocateLeg answered otherwise")
    };
    assert_eq!(
        info.local.ip(),
        address,
        "the leg binds the taken-over address"
    );
    let media = MediaConfig {
        srtp: Some(SrtpMedia::new(theirs, ours.clone()).unwrap()),
        ..pcmu_media(Some(peer))
    };
    call(
        &engine,
        Request::ConfigureLeg {
            leg: info.leg,
            media,
        },
    )
    .unwrap();
    // The leg hears nobody: it sends silence at ptime. Take the first packets.
    let mut sent = Vec::new();
    #[allow(clippy::disallowed_methods)] // A real-thread test bounds its wait in real time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    #[allow(clippy::disallowed_methods)]
    while sent.len() < 8 && std::time::Instant::now() < deadline {
        match net.take_sent() {
            Some(d) if d.peer == peer && d.payload[1] & 0x7f == 0 => sent.push(d.payload),
            Some(_) => {}
            None => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
    assert_eq!(sent.len(), 8, "the taken-over leg sends");
    let first = &sent[0];
    assert_eq!(
        u32::from_be_bytes(first[8..12].try_into().unwrap()),
        base.ssrc
    );
    assert_eq!(u16::from_be_bytes(first[2..4].try_into().unwrap()), 65_530);
    assert_eq!(
        u32::from_be_bytes(first[4..8].try_into().unwrap()),
        base.timestamp
    );
    // A receiver that knows the rollover count decrypts every packet, across the wrap.
    let mut receiver = SrtpSession::new(Direction::Inbound, &ours, SrtpConfig::default());
    receiver.resume_rtp(Ssrc(base.ssrc), base.index - 1);
    for (i, packet) in sent.iter().enumerate() {
        let mut buf = packet.clone();
        receiver
            .unprotect_rtp(&mut buf)
            .unwrap_or_else(|e| panic!("packet {i} does not decrypt: {e:?}"));
    }
    // One that guesses rollover count 0 (a fresh stream) cannot: the index is carried.
    let mut naive = SrtpSession::new(Direction::Inbound, &ours, SrtpConfig::default());
    let mut buf = first.clone();
    assert_eq!(naive.unprotect_rtp(&mut buf), Err(SrtpError::Auth));
    // The snapshot says where the stream stands now, for the next takeover.
    let Response::Snapshot(snap) = call(&engine, Request::Snapshot).unwrap() else {
        panic!()
    };
    let now = snap.activity_of(info.leg).and_then(|a| a.stream).unwrap();
    assert_eq!(now.ssrc, base.ssrc);
    assert!(now.index >= base.index + 8, "{now:?}");
    assert_eq!(
        now.index >> 16,
        4,
        "the rollover count moved on at the wrap: {now:?}"
    );
    engine.shutdown();
}

#[test]
fn bad_requests_name_the_field() {
    let (engine, _net) = start();
    let err = call(
        &engine,
        Request::AllocateLeg {
            session: "bad key!".into(),
            leg_key: "x".into(),
            family: IpFamily::V4,
            requested_port: None,
            rtcp_mux: false,
            resume: None,
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, EngineError::InvalidArgument { ref field, .. } if field == "session"),
        "{err:?}"
    );
    let err = call(
        &engine,
        Request::AllocateLeg {
            session: "s".into(),
            leg_key: "x".into(),
            family: IpFamily::V6,
            requested_port: None,
            rtcp_mux: false,
            resume: None,
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, EngineError::InvalidArgument { ref field, .. } if field == "family"),
        "{err:?}"
    );
    engine.shutdown();
}

/// A backend that panics on its first receive: stands in for any bug on a shard thread.
#[derive(Debug)]
struct PanickingBackend(MemoryBackend);

impl earshot_engine::backend::Backend for PanickingBackend {
    fn name(&self) -> &'static str {
        "panicking"
    }
    fn binder(&self) -> std::sync::Arc<dyn earshot_engine::backend::PortBinder> {
        self.0.binder()
    }
    fn add_port(
        &mut self,
        port: u16,
        family: IpFamily,
        bound: earshot_engine::backend::BoundPort,
    ) -> std::io::Result<()> {
        self.0.add_port(port, family, bound)
    }
    fn close_port(&mut self, port: u16) {
        self.0.close_port(port)
    }
    fn poll_recv(
        &mut self,
        _max: usize,
        _h: &mut dyn earshot_engine::backend::PacketHandler,
    ) -> std::io::Result<usize> {
        panic!("injected shard failure");
    }
    fn tx(&mut self) -> &mut dyn earshot_engine::backend::TxSink {
        self.0.tx()
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn wait(
        &mut self,
        now: earshot_media::time::Instant,
        deadline: earshot_media::time::Instant,
    ) -> std::io::Result<()> {
        self.0.wait(now, deadline)
    }
}

#[test]
fn a_dead_shard_answers_unavailable_instead_of_hanging() {
    use earshot_engine::backend::Backend;
    let cfg = EngineConfig {
        backend: BackendKind::Memory,
        pin: false,
        ..EngineConfig::default()
    };
    let engine = Engine::start(&cfg, |_| {
        let (b, _n) = MemoryBackend::new(16, false);
        Ok(Box::new(PanickingBackend(b)) as Box<dyn Backend>)
    })
    .unwrap();
    // The shard dies at its first receive (a request may still be answered before it).
    // Every request must come back (none hangs); within a bounded time the shard is seen
    // as down, and from then on it stays down.
    #[allow(clippy::disallowed_methods)] // A real thread: bound the wait in real time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut answered = 0;
    loop {
        match call(&engine, Request::Stats) {
            Ok(_) => answered += 1,
            Err(EngineError::Unavailable(_)) => break,
            Err(e) => panic!("unexpected {e:?}"),
        }
        #[allow(clippy::disallowed_methods)]
        let late = std::time::Instant::now() > deadline;
        assert!(
            !late,
            "the dead shard still answered after 5 s ({answered} answers)"
        );
    }
    for _ in 0..10 {
        assert!(
            matches!(
                call(&engine, Request::Stats),
                Err(EngineError::Unavailable(_))
            ),
            "once down, a shard stays down"
        );
    }
    engine.shutdown();
}

#[test]
#[allow(clippy::disallowed_methods)] // Lets the real shard thread tick for a while.
fn a_leg_joining_a_mixing_session_before_its_plan_does_not_disturb_the_shard() {
    let (engine, _net) = start();
    let p = |i: u8| -> SocketAddr { format!("10.0.0.{i}:4000").parse().unwrap() };
    let (c, _) = leg(&engine, "customer", p(1));
    let (a, _) = leg(&engine, "agent", p(2));
    let (s, _) = leg(&engine, "supervisor", p(3));
    let barge = Supervision::Barge.plan("call-1", &[c, a, s], true);
    call(&engine, Request::SetSessionPlan(barge)).unwrap();
    // A fourth leg arrives (allocated, not yet configured, not in any plan) while the
    // session ticks; then stats are read: the shard must keep running throughout.
    let Response::Leg(_) = call(
        &engine,
        Request::AllocateLeg {
            session: "call-1".into(),
            leg_key: "specialist".into(),
            family: IpFamily::V4,
            requested_port: None,
            rtcp_mux: true,
            resume: None,
        },
    )
    .unwrap() else {
        panic!()
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    let Response::Stats(stats) = call(&engine, Request::Stats).unwrap() else {
        panic!()
    };
    assert_eq!(stats.shards[0].legs, 4);
    assert!(stats.shards[0].ticks > 0, "the barge session ticked");
    engine.shutdown();
}

/// Datagrams the engine sends within `window` of real time (after dropping whatever
/// was queued before).
#[allow(clippy::disallowed_methods)] // A real-thread test counts in real time.
fn sent_within(net: &MemoryNet, window: std::time::Duration) -> usize {
    while net.take_sent().is_some() {}
    let deadline = std::time::Instant::now() + window;
    let mut n = 0;
    while std::time::Instant::now() < deadline {
        if net.take_sent().is_some() {
            n += 1;
        } else {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    n
}

/// Cluster isolation guard (`Request::Mute`, docs/cluster.md): a muted engine sends
/// nothing; a resume with `for_ms` is a vouch that lapses on its own, so an engine
/// whose agent died goes silent; a resume without it holds.
#[test]
#[allow(clippy::disallowed_methods)] // Real threads: waits are real time.
fn a_muted_engine_sends_nothing_and_a_lapsed_vouch_silences_it() {
    let (engine, net) = start();
    let (pc, pa, ps): (SocketAddr, SocketAddr, SocketAddr) = (
        "10.0.0.1:4000".parse().unwrap(),
        "10.0.0.2:4000".parse().unwrap(),
        "10.0.0.3:4000".parse().unwrap(),
    );
    let (c, _) = leg(&engine, "customer", pc);
    let (a, _) = leg(&engine, "agent", pa);
    let (s, _) = leg(&engine, "supervisor", ps);
    let plan = Supervision::Barge.plan("call-1", &[c, a, s], true);
    call(&engine, Request::SetSessionPlan(plan)).unwrap();
    let window = std::time::Duration::from_millis(200);
    // Three mixed outputs every 20 ms: about 30 in 200 ms.
    assert!(sent_within(&net, window) >= 10, "a barge sends to everyone");

    let mute = |muted, for_ms| call(&engine, Request::Mute { muted, for_ms }).unwrap();
    mute(true, None);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(sent_within(&net, window), 0, "muted: nothing sent");
    let Response::Snapshot(snap) = call(&engine, Request::Snapshot).unwrap() else {
        panic!()
    };
    assert_eq!(snap.legs.len(), 3, "muting keeps every leg");

    mute(false, None);
    assert!(sent_within(&net, window) >= 10, "resumed");

    // A vouch for 300 ms: sending goes on, then stops by itself.
    mute(false, Some(300));
    assert!(sent_within(&net, std::time::Duration::from_millis(100)) >= 3);
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert_eq!(sent_within(&net, window), 0, "the vouch lapsed: silent");
    // A new vouch resumes.
    mute(false, Some(10_000));
    assert!(sent_within(&net, window) >= 10, "vouched again");
    engine.shutdown();
}
