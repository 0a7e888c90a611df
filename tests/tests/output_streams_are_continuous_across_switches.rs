//! Live switching monitor -> coach -> barge -> monitor -> hold -> resume: every output
//! leg's RTP stream keeps one SSRC, sequence numbers +1 per packet, timestamps moving
//! forward and within a frame of elapsed time, and the marker bit on the first packet
//! after each switch of what that leg carries (silence, a forwarded source, a mix).

use earshot_tests::sim::continuity::{WITHIN_A_FRAME, check_all_streams};
use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SUPERVISOR_HZ, Sim, ms, seed_for,
};

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
    for p in sim.parties() {
        let n = sim.listener(p).audio().count();
        assert!(n > 50, "{} received only {n} packets", sim.name(p));
    }
    if let Err(e) = check_all_streams(&sim, WITHIN_A_FRAME) {
        panic!("{e}");
    }
}

/// The agent's output flips between forwarding the customer (monitor) and mixing the
/// customer with the whisper (coach) every few tens of milliseconds.
///
/// Regression: the output stream once stamped every switch at least a frame after the
/// previous packet, so quick forward <-> mix switches built up a lead of about 1.5 frames
/// over elapsed time. A switch now re-anchors on wall time (`OutputStream::reanchor`).
#[test]
fn rapid_switches_keep_timestamps_within_a_frame_of_elapsed_time() {
    // Four runs, so that the switches fall at several phases of the talkers' frames.
    let base = seed_for("rapid_switches");
    for k in 0..4 {
        let mut sim = Sim::new("rapid_switches", base.wrapping_add(k));
        let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
        let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
        let s = sim.add_party(PartyConfig::tone("supervisor", SUPERVISOR_HZ));
        for i in 0..40 {
            let (mode, run_ms) = if i % 2 == 0 {
                (Mode::Coach, 43)
            } else {
                (Mode::Monitor, 31)
            };
            sim.set_hearing(&Hearing::call(c, a).with(s, a, mode));
            sim.run_for(ms(run_ms));
        }
        if let Err(e) = check_all_streams(&sim, WITHIN_A_FRAME) {
            panic!("{e}");
        }
    }
}
