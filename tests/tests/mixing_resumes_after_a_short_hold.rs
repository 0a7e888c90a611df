//! A leg that leaves every mix for less than a second (a short hold) and comes back into
//! a mix is heard again at once: its jitter buffer starts afresh instead of waiting on the
//! timeline it had before the hold. (Found by the process-level tests: after a 0.6 s hold,
//! the next mix of the customer was silent.)

use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SUPERVISOR_HZ, Sim, before, ms, seed_for,
};

#[test]
fn mixing_resumes_after_a_short_hold() {
    for hold_ms in [200, 600, 900] {
        let mut sim = Sim::new("short_hold", seed_for("short_hold") ^ hold_ms);
        let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
        let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
        let s = sim.add_party(PartyConfig::tone("supervisor", SUPERVISOR_HZ));
        // Monitoring the agent: the supervisor mixes both.
        sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Monitor));
        sim.run_for(ms(1_000));
        // Hold: the customer is alone and mixed by nobody.
        sim.set_hearing(&Hearing::held(c, a).with(s, a, Mode::Monitor));
        sim.run_for(ms(hold_ms));
        // Resume into a coach: the agent mixes the customer and the whisper.
        sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Coach));
        let start = sim.now();
        sim.run_for(ms(1_000));
        let (from, to) = (start + ms(200), before(sim.now(), ms(100)));
        let agent = sim.listener(a);
        assert!(
            agent.hears(CUSTOMER_HZ, from, to),
            "after a {hold_ms} ms hold the agent misses the customer: {:?}",
            agent.tone_report(CUSTOMER_HZ, from, to)
        );
        let sup = sim.listener(s);
        assert!(
            sup.hears(CUSTOMER_HZ, from, to),
            "after a {hold_ms} ms hold the supervisor misses the customer: {:?}",
            sup.tone_report(CUSTOMER_HZ, from, to)
        );
    }
}
