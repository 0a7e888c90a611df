//! The engine's events: a supervisor leg configured to report its first packet (a phone
//! that rings: auto_answer = false) reports it exactly once, and a leg that falls silent
//! for the media timeout (30 s here) reports a media timeout once, not again until media
//! returns.

use earshot_core::shard::{ShardCommand, ShardEvent};
use earshot_engine_api::MediaConfig;
use earshot_testkit::fixtures::pcmu_media;
use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SUPERVISOR_HZ, Sim, ms, seed_for,
};

#[test]
fn engine_events_report_first_packets_and_media_timeouts() {
    let mut sim = Sim::new("engine_events", seed_for("engine_events"));
    let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
    let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
    let s = sim.add_party(PartyConfig::tone("supervisor", SUPERVISOR_HZ));
    // The supervisor's phone rings: report its first packet.
    let media = MediaConfig {
        telephone_event_pt: Some(101),
        report_first_packet: true,
        ..pcmu_media(None)
    };
    sim.command(ShardCommand::ConfigureLeg {
        leg: sim.leg(s),
        media,
    })
    .unwrap();
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Monitor));
    sim.run_for(ms(2_000));
    let events = sim.take_events();
    let first: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, ShardEvent::FirstPacket(_)))
        .collect();
    assert_eq!(first.len(), 1, "exactly one FirstPacket: {events:?}");
    assert_eq!(*first[0], ShardEvent::FirstPacket(sim.leg(s)), "{first:?}");

    // The customer's line goes dead for 35 s: one timeout for the customer, none for
    // the others, and no second one while it stays silent.
    sim.talker_mut(c).set_active(false);
    sim.run_for(ms(35_000));
    let events = sim.take_events();
    let timeouts: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ShardEvent::MediaTimeout(leg) => Some(*leg),
            _ => None,
        })
        .collect();
    assert_eq!(timeouts, vec![sim.leg(c)], "{events:?}");
    sim.run_for(ms(35_000));
    assert!(
        !sim.take_events()
            .iter()
            .any(|e| matches!(e, ShardEvent::MediaTimeout(_))),
        "a silent leg times out once"
    );
    // Media returns, then stops again: a new timeout.
    sim.talker_mut(c).set_active(true);
    sim.run_for(ms(1_000));
    sim.talker_mut(c).set_active(false);
    sim.run_for(ms(35_000));
    let again = sim
        .take_events()
        .iter()
        .filter(|e| matches!(e, ShardEvent::MediaTimeout(_)))
        .count();
    assert_eq!(again, 1, "a new outage is reported again");
}
