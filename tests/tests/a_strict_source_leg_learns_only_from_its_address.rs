//! A leg with a strict source (`Media.strict_source_ip`) accepts RTP and RTCP only from
//! that address, before and after it learns its remote: a racer that sends first, from
//! another address, is never latched, never sent to and never heard; the real phone,
//! when it starts, is learned and hears the call (issue 9: "an optional per-leg strict
//! source for legs that must never learn"). Without the strict source the same racer
//! takes the latch, which is what the option is for.

use std::net::SocketAddr;

use earshot_core::shard::ShardCommand;
use earshot_engine_api::MediaConfig;
use earshot_testkit::fixtures::pcmu_media;
use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SUPERVISOR_HZ, Sim, before, ms, seed_for,
};

/// A valid 20 ms PCMU packet.
fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x0b, 0xad, 0xf0, 0x0d];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend(std::iter::repeat_n(0x2a, 160));
    p
}

/// Runs a monitor whose supervisor leg learns its remote, with a racer sending first;
/// answers (racer datagrams dropped as wrong_source, datagrams sent to no party).
fn race(strict: bool) -> (u64, u64, bool) {
    let label = format!("strict_source_{strict}");
    let mut sim = Sim::new(&label, seed_for(&label));
    let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
    let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
    let s = sim.add_party(PartyConfig {
        latch: true,
        ..PartyConfig::tone("supervisor", SUPERVISOR_HZ)
    });
    sim.talker_mut(s).set_active(false);
    let phone = sim.addr(s);
    sim.command(ShardCommand::ConfigureLeg {
        leg: sim.leg(s),
        media: MediaConfig {
            strict_source: strict.then_some(phone.ip()),
            ..pcmu_media(None)
        },
    })
    .unwrap();
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Monitor));
    sim.run_for(ms(200));

    let racer: SocketAddr = "10.66.6.6:7078".parse().unwrap();
    let port = sim.engine_port(s);
    let wrong_before = sim.drops("wrong_source");
    let start = sim.now();
    for k in 0..20u16 {
        sim.inject_at(start + ms(u64::from(k) * 20), port, racer, rtp(k));
    }
    sim.run_for(ms(600));
    // The phone answers after the racer.
    sim.talker_mut(s).set_active(true);
    let answered = sim.now();
    sim.run_for(ms(1_500));
    let (from, to) = (answered + ms(400), before(sim.now(), ms(100)));
    let hears = sim.listener(s).hears(AGENT_HZ, from, to);
    (
        sim.drops("wrong_source") - wrong_before,
        sim.unroutable(),
        hears,
    )
}

#[test]
fn a_strict_source_leg_learns_only_from_its_address() {
    let (dropped, unroutable, hears) = race(true);
    assert_eq!(dropped, 20, "every racer packet is dropped as wrong_source");
    assert_eq!(unroutable, 0, "the engine sent the call to the racer");
    assert!(
        hears,
        "the real phone, learned after the racer, hears the agent"
    );

    // The control: without a strict source the racer, first to send, takes the leg.
    let (_, unroutable, hears) = race(false);
    assert!(
        unroutable > 0 && !hears,
        "without a strict source the racer should have been latched (unroutable {unroutable}, phone hears {hears})"
    );
}
