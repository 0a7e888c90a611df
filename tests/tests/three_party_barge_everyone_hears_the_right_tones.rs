//! Barge: the supervisor joins the agent's talk group. Customer hears agent and
//! supervisor, agent hears customer and supervisor, supervisor hears customer and agent;
//! each hears exactly those tones and never its own (no self-echo).

use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SUPERVISOR_HZ, Sim, before, ms, seed_for,
};

#[test]
fn three_party_barge_everyone_hears_the_right_tones() {
    let mut sim = Sim::new("three_party_barge", seed_for("three_party_barge"));
    let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
    let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
    let s = sim.add_party(PartyConfig::tone("supervisor", SUPERVISOR_HZ));
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Barge));
    let start = sim.now();
    sim.run_for(ms(3_000));
    // Skip the jitter buffers' start-up.
    let (from, to) = (start + ms(500), before(sim.now(), ms(200)));
    let expect = [
        (c, [AGENT_HZ, SUPERVISOR_HZ], CUSTOMER_HZ),
        (a, [CUSTOMER_HZ, SUPERVISOR_HZ], AGENT_HZ),
        (s, [CUSTOMER_HZ, AGENT_HZ], SUPERVISOR_HZ),
    ];
    for (who, heard, own) in expect {
        let l = sim.listener(who);
        for hz in heard {
            assert!(
                l.hears(hz, from, to),
                "{} should hear {hz} Hz: {:?}",
                sim.name(who),
                l.tone_report(hz, from, to)
            );
        }
        assert!(
            l.never_hears(own, from, to),
            "{} hears itself: {:?}",
            sim.name(who),
            l.tone_report(own, from, to)
        );
        // A tone nobody in this call sends is absent too: the detector is not fooled by mixing.
        assert!(l.never_hears(earshot_tests::sim::SPECIALIST_HZ, from, to));
        assert_eq!(l.malformed, 0);
    }
    assert_eq!(
        sim.unroutable(),
        0,
        "the engine sent to an address no party has"
    );
    assert_eq!(
        sim.wrong_port(),
        0,
        "the engine sent a party's audio from another leg's port"
    );
}

/// The same barge with the supervisor on A-law: its leg is transcoded both ways (no path
/// to or from it can be forwarded), and everyone still hears exactly the right tones.
#[test]
fn three_party_barge_with_an_alaw_supervisor_hears_the_right_tones() {
    let mut sim = Sim::new("three_party_barge_alaw", seed_for("three_party_barge_alaw"));
    let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
    let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
    let mut sup = PartyConfig::tone("supervisor", SUPERVISOR_HZ);
    sup.talker.codec = earshot_media::Codec::Pcma;
    sup.talker.payload_type = 8;
    let s = sim.add_party(sup);
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Barge));
    let start = sim.now();
    sim.run_for(ms(3_000));
    let (from, to) = (start + ms(500), before(sim.now(), ms(200)));
    let expect = [
        (c, [AGENT_HZ, SUPERVISOR_HZ], CUSTOMER_HZ),
        (a, [CUSTOMER_HZ, SUPERVISOR_HZ], AGENT_HZ),
        (s, [CUSTOMER_HZ, AGENT_HZ], SUPERVISOR_HZ),
    ];
    for (who, heard, own) in expect {
        let l = sim.listener(who);
        assert!(
            l.audio().count() > 100,
            "{} got {} audio packets on its own payload type",
            sim.name(who),
            l.audio().count()
        );
        for hz in heard {
            assert!(
                l.hears(hz, from, to),
                "{} should hear {hz} Hz: {:?}",
                sim.name(who),
                l.tone_report(hz, from, to)
            );
        }
        assert!(
            l.never_hears(own, from, to),
            "{} hears itself: {:?}",
            sim.name(who),
            l.tone_report(own, from, to)
        );
    }
}
