//! Hold with a monitor on the agent: the supervisor hears only the agent; the customer
//! hears nobody (hold audio is out of scope) and the agent hears nobody either, yet both
//! still receive an unbroken stream of silence at their ptime, so that their phones and
//! SBCs do not take the call for dead (SPEC section 5). Resume restores the call.

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
    // The held customer and the agent alone each get one silent packet per 20 ms, in
    // sequence, from the moment the hold is live.
    for (party, name) in [(c, "customer"), (a, "agent")] {
        let l = sim.listener(party);
        let held: Vec<_> = l.audio().filter(|p| p.sent_at > hold_at + ms(40)).collect();
        assert!(
            (145..=150).contains(&held.len()),
            "the {name} on hold got {} packets in ~3 s, not one per 20 ms",
            held.len()
        );
        assert!(
            held.windows(2)
                .all(|w| w[1].seq == w[0].seq.wrapping_add(1)
                    && w[1].ts.wrapping_sub(w[0].ts) == 160),
            "the {name}'s stream on hold is not continuous"
        );
        assert!(
            held.iter().all(|p| l.decode(p).iter().all(|&x| x == 0)),
            "the {name} on hold hears something other than silence"
        );
    }
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
