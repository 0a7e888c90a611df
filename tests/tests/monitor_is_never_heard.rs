//! Monitor on the agent: the supervisor hears customer and agent; neither ever hears the
//! supervisor; and the customer-agent path is forwarded, not re-encoded: the packets the
//! customer receives carry the agent's exact payload bytes.

use earshot_media::wire::rtp::{RtpPacket, RtpRepr};
use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SUPERVISOR_HZ, Sim, before, ms, seed_for,
};

#[test]
fn monitor_is_never_heard() {
    let mut sim = Sim::new("monitor_is_never_heard", seed_for("monitor_is_never_heard"));
    let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
    let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
    let s = sim.add_party(PartyConfig::tone("supervisor", SUPERVISOR_HZ));
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Monitor));
    let start = sim.now();
    sim.run_for(ms(3_000));
    let (from, to) = (start + ms(500), before(sim.now(), ms(200)));

    let sup = sim.listener(s);
    assert!(
        sup.hears(CUSTOMER_HZ, from, to),
        "supervisor misses the customer: {:?}",
        sup.tone_report(CUSTOMER_HZ, from, to)
    );
    assert!(
        sup.hears(AGENT_HZ, from, to),
        "supervisor misses the agent: {:?}",
        sup.tone_report(AGENT_HZ, from, to)
    );
    assert!(sup.never_hears(SUPERVISOR_HZ, from, to));
    for (who, other) in [(c, AGENT_HZ), (a, CUSTOMER_HZ)] {
        let l = sim.listener(who);
        assert!(
            l.hears(other, from, to),
            "{} misses {other} Hz",
            sim.name(who)
        );
        // The whole run, start-up included: a monitor is never heard, not even briefly.
        assert!(
            l.never_hears(SUPERVISOR_HZ, start, sim.now()),
            "{} hears the monitor: {:?}",
            sim.name(who),
            l.tone_report(SUPERVISOR_HZ, start, sim.now())
        );
    }

    // Forwarded, byte for byte: the customer's audio payloads are the agent's, in order
    // (clean links: nothing lost, nothing reordered).
    let agent_payloads: Vec<Vec<u8>> = sim
        .uplink_payloads(a)
        .iter()
        .map(|bytes| {
            let view = RtpPacket::new_checked(&bytes[..]).expect("the agent sends valid RTP");
            RtpRepr::parse(&view).expect("valid").payload.to_vec()
        })
        .collect();
    let got: Vec<&[u8]> = sim.listener(c).audio().map(|p| &p.payload[..]).collect();
    assert!(
        got.len() > 100,
        "the customer received only {} packets",
        got.len()
    );
    let first = agent_payloads
        .iter()
        .position(|p| p[..] == *got[0])
        .expect("first forwarded payload is one the agent sent");
    for (i, g) in got.iter().enumerate() {
        assert_eq!(
            *g,
            &agent_payloads[first + i][..],
            "payload {i} to the customer is not the agent's (re-encoded?)"
        );
    }
}
