//! Hold with a monitor on the agent: the supervisor hears only the agent; the customer
//! hears nothing at all (hold audio is out of scope) and the agent hears nobody either.
//! Resume restores the call.

use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SUPERVISOR_HZ, Sim, before, ms, seed_for,
};

#[test]
fn hold_isolates_the_customer() {
    let mut sim = Sim::new("hold_isolates", seed_for("hold_isolates"));
    let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
    let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
    let s = sim.add_party(PartyConfig::tone("supervisor", SUPERVISOR_HZ));
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Monitor));
    sim.run_for(ms(1_000));

    let hold_at = sim.now();
    sim.set_hearing(&Hearing::held(c, a).with(s, a, Mode::Monitor));
    let customer_packets_before = sim.listener(c).audio().count();
    sim.run_for(ms(3_000));
    let (from, to) = (hold_at + ms(500), before(sim.now(), ms(200)));

    let sup = sim.listener(s);
    assert!(
        sup.hears(AGENT_HZ, from, to),
        "supervisor misses the agent on hold: {:?}",
        sup.tone_report(AGENT_HZ, from, to)
    );
    assert!(
        sup.never_hears(CUSTOMER_HZ, from, to),
        "supervisor hears the held customer: {:?}",
        sup.tone_report(CUSTOMER_HZ, from, to)
    );
    // The held customer is sent nothing once the hold is live (one in-flight packet of
    // slack for the packet already on the downlink).
    let sent_to_customer_on_hold = sim
        .listener(c)
        .audio()
        .filter(|p| p.sent_at > hold_at)
        .count();
    assert!(
        sent_to_customer_on_hold == 0,
        "held customer got {sent_to_customer_on_hold} audio packets after the hold ({customer_packets_before} before)"
    );
    let agent = sim.listener(a);
    assert!(
        agent.audio().all(|p| p.sent_at <= hold_at),
        "the agent alone in its group got audio on hold"
    );

    let resume_at = sim.now();
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Monitor));
    sim.run_for(ms(2_000));
    let (from, to) = (resume_at + ms(500), before(sim.now(), ms(200)));
    assert!(
        sim.listener(c).hears(AGENT_HZ, from, to),
        "customer does not hear the agent after resume"
    );
    assert!(
        sim.listener(a).hears(CUSTOMER_HZ, from, to),
        "agent does not hear the customer after resume"
    );
    assert!(
        sim.listener(s).hears(CUSTOMER_HZ, from, to),
        "supervisor does not hear the customer after resume"
    );
}
