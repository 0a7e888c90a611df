//! Live switching monitor -> coach -> barge -> monitor -> hold -> resume: every output
//! leg's RTP stream keeps one SSRC, sequence numbers +1 per packet, timestamps moving
//! forward and within a frame of elapsed time, and the marker bit on the first packet
//! after each switch of what that leg carries (silence, a forwarded source, a mix).

use earshot_tests::sim::continuity::{StreamLimits, check_stream};
use earshot_tests::sim::{AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SUPERVISOR_HZ, Sim, ms, seed_for};

#[test]
fn output_streams_are_continuous_across_switches() {
    let mut sim = Sim::new("continuity", seed_for("continuity"));
    let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
    let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
    let s = sim.add_party(PartyConfig::tone("supervisor", SUPERVISOR_HZ));
    let steps = [
        Hearing::call(c, a).with(s, a, Mode::Monitor),
        Hearing::call(c, a).with(s, a, Mode::Coach),
        Hearing::call(c, a).with(s, a, Mode::Barge),
        Hearing::call(c, a).with(s, a, Mode::Monitor),
        Hearing::held(c, a).with(s, a, Mode::Monitor),
        Hearing::call(c, a).with(s, a, Mode::Monitor),
    ];
    for h in &steps {
        sim.set_hearing(h);
        // Odd lengths so switches fall at every phase of the 20 ms frame.
        sim.run_for(ms(1_013));
    }
    let parties: Vec<_> = sim.parties().collect();
    for &p in &parties {
        // The instants where what this leg carries changed.
        let mut switches = Vec::new();
        let mut before = None;
        for (at, h) in sim.plan_changes() {
            let kind = h.output_of(p, parties.iter().copied());
            if before.is_some_and(|b| b != kind) {
                switches.push(*at);
            }
            before = Some(kind);
        }
        let l = sim.listener(p);
        assert!(l.audio().count() > 50, "{} received only {} packets", sim.name(p), l.audio().count());
        let limits = StreamLimits { frame_samples: 160, ts_slack_samples: 16, allow_seq_gaps: false };
        if let Err(e) = check_stream(l.packets(), 0, limits, &switches) {
            panic!("{}'s output stream: {e}", sim.name(p));
        }
    }
}
