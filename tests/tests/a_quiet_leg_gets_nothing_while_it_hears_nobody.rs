//! By default a connected leg that hears nobody gets silence at its ptime (SPEC section
//! 5); a leg configured `quiet_when_unheard` gets nothing while it hears nobody and its
//! stream resumes, continuous, when it hears someone again (issue 9: "per-leg option to
//! send nothing").

use earshot_core::shard::ShardCommand;
use earshot_engine_api::MediaConfig;
use earshot_testkit::fixtures::pcmu_media;
use earshot_tests::sim::{AGENT_HZ, CUSTOMER_HZ, Hearing, PartyConfig, Sim, before, ms, seed_for};

#[test]
fn a_quiet_leg_gets_nothing_while_it_hears_nobody() {
    let label = "quiet_when_unheard";
    let mut sim = Sim::new(label, seed_for(label));
    let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
    let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
    let remote = sim.addr(c);
    sim.command(ShardCommand::ConfigureLeg {
        leg: sim.leg(c),
        media: MediaConfig {
            quiet_when_unheard: true,
            ..pcmu_media(Some(remote))
        },
    })
    .unwrap();
    sim.set_hearing(&Hearing::call(c, a));
    sim.run_for(ms(1_000));

    // Hold: both hear nobody. The default agent gets silence; the quiet customer nothing.
    let hold_at = sim.now();
    sim.set_hearing(&Hearing::held(c, a));
    sim.run_for(ms(2_000));
    let after_hold = |l: &earshot_tests::sim::Listener| {
        l.audio().filter(|p| p.sent_at > hold_at + ms(60)).count()
    };
    let to_agent = after_hold(sim.listener(a));
    let to_customer = after_hold(sim.listener(c));
    assert!(
        to_agent >= 90,
        "the default leg gets silence at its ptime on hold ({to_agent} packets in ~2 s)"
    );
    assert_eq!(
        to_customer, 0,
        "the quiet leg got packets while it heard nobody"
    );

    // Resume: the quiet leg hears the agent again, on the same stream.
    let resume_at = sim.now();
    sim.set_hearing(&Hearing::call(c, a));
    sim.run_for(ms(1_500));
    let (from, to) = (resume_at + ms(400), before(sim.now(), ms(100)));
    let l = sim.listener(c);
    assert!(
        l.hears(AGENT_HZ, from, to),
        "the quiet customer does not hear the agent after resume: {:?}",
        l.tone_report(AGENT_HZ, from, to)
    );
    let ssrcs: std::collections::BTreeSet<u32> = l.audio().map(|p| p.ssrc).collect();
    assert_eq!(
        ssrcs.len(),
        1,
        "the quiet leg's stream changed SSRC: {ssrcs:?}"
    );
}
