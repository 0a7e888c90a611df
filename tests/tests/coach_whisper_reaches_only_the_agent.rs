//! Coach on the agent: the agent hears the customer and the supervisor's whisper; the
//! customer hears the agent only, never the supervisor; the supervisor hears both.

use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SUPERVISOR_HZ, Sim, before, ms, seed_for,
};

#[test]
fn coach_whisper_reaches_only_the_agent() {
    let mut sim = Sim::new("coach_whisper", seed_for("coach_whisper"));
    let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
    let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
    let s = sim.add_party(PartyConfig::tone("supervisor", SUPERVISOR_HZ));
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Coach));
    let start = sim.now();
    sim.run_for(ms(3_000));
    let (from, to) = (start + ms(500), before(sim.now(), ms(200)));

    let agent = sim.listener(a);
    assert!(
        agent.hears(CUSTOMER_HZ, from, to),
        "agent misses the customer: {:?}",
        agent.tone_report(CUSTOMER_HZ, from, to)
    );
    assert!(
        agent.hears(SUPERVISOR_HZ, from, to),
        "agent misses the whisper: {:?}",
        agent.tone_report(SUPERVISOR_HZ, from, to)
    );
    assert!(agent.never_hears(AGENT_HZ, from, to));

    let customer = sim.listener(c);
    assert!(customer.hears(AGENT_HZ, from, to));
    assert!(
        customer.never_hears(SUPERVISOR_HZ, start, sim.now()),
        "the customer hears the coach: {:?}",
        customer.tone_report(SUPERVISOR_HZ, start, sim.now())
    );

    let sup = sim.listener(s);
    assert!(sup.hears(CUSTOMER_HZ, from, to) && sup.hears(AGENT_HZ, from, to));
    assert!(sup.never_hears(SUPERVISOR_HZ, from, to));
}
