//! A leg that hears nobody still gets silence at its ptime (SPEC section 5), so it sits
//! in its session's idle set. Removing it, when it is the session's last leg, shifts no
//! index but leaves the old idle set naming an index past the end. The shard used to
//! look that index up while rebuilding the plan and panic (found by the all-in-one
//! system tests: StopSupervision of a ringing coach took shard 0 down). The call must
//! carry on, and so must the shard.

use earshot_core::shard::ShardCommand;
use earshot_tests::sim::{AGENT_HZ, CUSTOMER_HZ, Hearing, PartyConfig, Sim, before, ms, seed_for};

#[test]
fn removing_an_idle_leg_keeps_the_call() {
    let label = "remove_idle_leg";
    let mut sim = Sim::new(label, seed_for(label));
    let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
    let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
    // The supervisor's leg is in the session but hears nobody yet: it is sent silence.
    let s = sim.add_party(PartyConfig::tone("supervisor", 1_000.0));
    sim.set_hearing(&Hearing::call(c, a));
    sim.run_for(ms(500));
    let idle_packets = sim.listener(s).audio().count();
    assert!(
        idle_packets >= 20,
        "the leg that hears nobody got {idle_packets} packets in 500 ms, not silence at its ptime"
    );

    sim.command(ShardCommand::RemoveLeg { leg: sim.leg(s) })
        .expect("removing a leg");
    let removed_at = sim.now();
    sim.run_for(ms(1_500));
    let (from, to) = (removed_at + ms(300), before(sim.now(), ms(100)));
    for (listener, hz, name) in [(c, AGENT_HZ, "customer"), (a, CUSTOMER_HZ, "agent")] {
        let l = sim.listener(listener);
        assert!(
            l.hears(hz, from, to),
            "the {name} lost the call when an idle leg was removed: {:?}",
            l.tone_report(hz, from, to)
        );
    }
    // The shard still takes commands.
    sim.command(ShardCommand::RemoveLeg { leg: sim.leg(a) })
        .expect("the shard still answers");
}
