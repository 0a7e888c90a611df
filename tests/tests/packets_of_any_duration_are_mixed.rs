//! Any packetization in (issue 12): legs negotiated at 20 ms whose peers send 60 ms and
//! 30 ms packets (several 20 ms frames, or a frame and a half, per packet) and then
//! change to 10 ms and 40 ms mid-call. In a barge every input is mixed through its
//! jitter buffer, which works on timestamp ranges: every listener still hears exactly
//! the other two tones before and after the change, no packet is refused, no output
//! pauses, and every output keeps the leg's own 20 ms packets.

use earshot_tests::sim::continuity::longest_send_gap;
use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SUPERVISOR_HZ, Sim, before, ms, seed_for,
};

#[test]
fn packets_of_any_duration_are_mixed() {
    let mut sim = Sim::new("any_packetization", seed_for("any_packetization"));
    let sending = |name: &str, hz: f64, packet_ms: u32| {
        let mut p = PartyConfig::tone(name, hz);
        p.talker.packet_ms = Some(packet_ms);
        p
    };
    let c = sim.add_party(sending("customer", CUSTOMER_HZ, 60));
    let a = sim.add_party(sending("agent", AGENT_HZ, 30));
    let s = sim.add_party(PartyConfig::tone("supervisor", SUPERVISOR_HZ));
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Barge));
    let start = sim.now();
    sim.run_for(ms(3_000));
    let change = sim.now();
    // The peers change their packetization mid-call (a re-INVITE, or just because).
    sim.talker_mut(c).set_packet_ms(10);
    sim.talker_mut(a).set_packet_ms(40);
    sim.run_for(ms(3_000));
    let end = sim.now();

    let windows = [
        ("60/30 ms in", start + ms(600), before(change, ms(100))),
        ("10/40 ms in", change + ms(400), before(end, ms(200))),
    ];
    let expect = [
        (c, [AGENT_HZ, SUPERVISOR_HZ], CUSTOMER_HZ),
        (a, [CUSTOMER_HZ, SUPERVISOR_HZ], AGENT_HZ),
        (s, [CUSTOMER_HZ, AGENT_HZ], SUPERVISOR_HZ),
    ];
    for (label, from, to) in windows {
        for (who, heard, own) in expect {
            let l = sim.listener(who);
            for hz in heard {
                assert!(
                    l.hears(hz, from, to),
                    "{label}: {} should hear {hz} Hz: {:?}",
                    sim.name(who),
                    l.tone_report(hz, from, to)
                );
            }
            assert!(
                l.never_hears(own, from, to),
                "{label}: {} hears itself: {:?}",
                sim.name(who),
                l.tone_report(own, from, to)
            );
            let gap = longest_send_gap(l.packets(), 0, from, to);
            assert!(
                gap <= ms(21),
                "{label}: {}'s output paused for {gap:?}",
                sim.name(who)
            );
            // What the engine sends is packetized at the leg's ptime, whatever came in.
            let sizes: Vec<usize> = l
                .packets()
                .iter()
                .filter(|p| p.pt == 0 && p.sent_at >= from && p.sent_at < to)
                .map(|p| p.payload.len())
                .filter(|&n| n != 160)
                .collect();
            assert!(
                sizes.is_empty(),
                "{label}: {} got packets that are not 20 ms: {sizes:?}",
                sim.name(who)
            );
            assert_eq!(l.malformed, 0);
        }
    }
    // The peers really sent what the test says (12 header bytes, then a byte per
    // PCMU sample).
    let lens = |p| {
        let mut l: Vec<usize> = sim.uplink_payloads(p).iter().map(Vec::len).collect();
        l.dedup();
        l
    };
    assert_eq!(lens(c), [492, 92], "customer: 60 ms packets, then 10 ms");
    assert_eq!(lens(a), [252, 332], "agent: 30 ms packets, then 40 ms");
    // The engine refused nothing and lost nothing of what the peers sent.
    for reason in [
        "bad_header",
        "jitter_late",
        "jitter_duplicate",
        "jitter_overflow",
    ] {
        assert_eq!(sim.drops(reason), 0, "{reason} drops");
    }
    for p in [c, a] {
        let js = sim
            .shard()
            .jitter_stats(sim.leg(p))
            .expect("configured leg");
        assert_eq!(
            (js.bad_payload_drops, js.lost_ms),
            (0, 0),
            "{}: {js:?}",
            sim.name(p)
        );
    }
}
