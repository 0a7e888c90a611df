//! Malformed and foreign datagrams interleaved with a live barge: truncated, version 1,
//! bad padding, oversize, an unknown payload type, a wrong source after latching and an
//! unknown port. Each is dropped and counted under its own reason (and no other); none
//! reaches another leg; all good traffic is still heard.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use earshot_core::ShardEvent;
use earshot_engine_api::DROP_REASONS;
use earshot_tests::sim::world::{PORT_COUNT, PORT_FIRST};
use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SUPERVISOR_HZ, Sim, before, ms, seed_for,
};

/// A well-formed 20 ms PCMU packet with payload type `pt`, every payload byte `fill`.
fn rtp(pt: u8, seq: u16, fill: u8) -> Vec<u8> {
    let mut p = vec![
        0x80,
        pt,
        (seq >> 8) as u8,
        seq as u8,
        0,
        0,
        0,
        0,
        0xde,
        0xad,
        0xbe,
        0xef,
    ];
    p.extend(std::iter::repeat_n(fill, 160));
    p
}

#[test]
fn bad_packets_are_counted_and_dropped() {
    let mut sim = Sim::new("bad_packets", seed_for("bad_packets"));
    // The customer's leg latches its remote from the first valid packet.
    let c = sim.add_party(PartyConfig {
        latch: true,
        ..PartyConfig::tone("customer", CUSTOMER_HZ)
    });
    let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
    let s = sim.add_party(PartyConfig::tone("supervisor", SUPERVISOR_HZ));
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Barge));
    let start = sim.now();
    sim.run_for(ms(300));
    let latched: Vec<_> = sim
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, ShardEvent::RemoteLatched(..)))
        .collect();
    assert_eq!(
        latched,
        vec![ShardEvent::RemoteLatched(sim.leg(c), sim.addr(c))]
    );

    let stranger = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9)), 6000);
    let (cp, ap) = (sim.engine_port(c), sim.engine_port(a));
    let (caddr, aaddr) = (sim.addr(c), sim.addr(a));
    let unused_port = PORT_FIRST + PORT_COUNT - 2;
    let mut bad_padding = rtp(0, 1, 0x55);
    // P set with a pad count of zero: the count includes itself, so zero is malformed.
    bad_padding[0] |= 0x20;
    *bad_padding.last_mut().expect("non-empty") = 0;
    let mut version1 = rtp(0, 2, 0x55);
    version1[0] = 0x40;
    // (reason, port, from, bytes)
    let kinds: Vec<(&str, u16, SocketAddr, Vec<u8>)> = vec![
        ("truncated", cp, caddr, vec![0x80, 0x00, 0x00, 0x01, 0x00]),
        ("bad_version", ap, aaddr, version1),
        ("bad_header", cp, caddr, bad_padding),
        ("oversize", ap, aaddr, vec![0x80; 1500]),
        ("unknown_payload_type", cp, caddr, rtp(96, 3, 0x55)),
        ("wrong_source", cp, stranger, rtp(0, 4, 0x55)),
        ("wrong_source", ap, stranger, rtp(0, 5, 0x55)),
        ("unknown_port", unused_port, stranger, rtp(0, 6, 0x55)),
    ];
    const ROUNDS: u64 = 40;
    let t0 = sim.now();
    for round in 0..ROUNDS {
        for (k, (_, port, from, bytes)) in kinds.iter().enumerate() {
            // Spread over two seconds, at odd offsets so they fall between good packets.
            let at = t0 + ms(round * 50 + k as u64 * 3 + 1);
            sim.inject_at(at, *port, *from, bytes.clone());
        }
    }
    sim.run_for(ms(3_000));

    let stats = sim.stats();
    for reason in DROP_REASONS {
        let expected = kinds.iter().filter(|(r, ..)| *r == reason).count() as u64 * ROUNDS;
        let got = stats
            .drops
            .iter()
            .find(|(r, _)| r == reason)
            .map_or(0, |(_, n)| *n);
        assert_eq!(got, expected, "drops for {reason}");
    }

    let (from, to) = (start + ms(500), before(sim.now(), ms(200)));
    let tones = [(c, CUSTOMER_HZ), (a, AGENT_HZ), (s, SUPERVISOR_HZ)];
    for (listener, own) in tones {
        let l = sim.listener(listener);
        for (_, hz) in tones.iter().copied().filter(|(p, _)| *p != listener) {
            assert!(
                l.hears(hz, from, to),
                "{} misses {hz} Hz amid bad packets: {:?}",
                sim.name(listener),
                l.tone_report(hz, from, to)
            );
        }
        assert!(l.never_hears(own, from, to));
        assert_eq!(
            l.malformed,
            0,
            "{} received something malformed",
            sim.name(listener)
        );
        // The foreign payload (all 0x55) never reaches anyone.
        assert!(
            l.audio().all(|p| p.payload.iter().any(|&b| b != 0x55)),
            "a dropped packet's payload reached {}",
            sim.name(listener)
        );
    }
}
