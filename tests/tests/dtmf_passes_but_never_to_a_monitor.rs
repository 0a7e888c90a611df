//! Telephone events (RFC 4733) from the customer reach the agent as events, are never
//! mixed into anyone's audio, and never reach a monitoring supervisor.

use earshot_media::wire::dtmf::{DtmfEvent, DtmfPacket, DtmfRepr};
use earshot_tests::sim::talker::DtmfPlan;
use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SUPERVISOR_HZ, Sim, ms, seed_for,
};

/// The two tones of key 5 (ITU-T Q.23): what the audio would carry if an engine
/// rendered the event into it.
const KEY5_HZ: [f64; 2] = [770.0, 1336.0];
const TE_PT: u8 = 101;

#[test]
fn dtmf_passes_but_never_to_a_monitor() {
    let mut sim = Sim::new("dtmf", seed_for("dtmf"));
    let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
    let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
    let s = sim.add_party(PartyConfig::tone("supervisor", SUPERVISOR_HZ));
    // Monitor phase (the agent's path is forwarded), then a barge (the agent's path is
    // mixed): a key press in each.
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Monitor));
    let first = sim.talker(c).frame_index() + 50;
    sim.talker_mut(c).add_dtmf(DtmfPlan {
        start_frame: first,
        frames: 10,
        event: DtmfEvent::Digit(5),
    });
    let start = sim.now();
    sim.run_for(ms(2_000));
    let monitor_events_sent = sim.talker(c).events_sent().len();
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Barge));
    let second = sim.talker(c).frame_index() + 50;
    sim.talker_mut(c).add_dtmf(DtmfPlan {
        start_frame: second,
        frames: 10,
        event: DtmfEvent::Digit(5),
    });
    sim.run_for(ms(2_000));
    let end = sim.now();

    let sent = sim.talker(c).events_sent().to_vec();
    assert_eq!(
        monitor_events_sent, 12,
        "the customer sends 10 packets and 2 extra end packets per key"
    );
    assert_eq!(sent.len(), 24);

    // The agent gets every event packet, in order, payload intact.
    let agent = sim.listener(a);
    let got: Vec<DtmfRepr> = agent
        .with_pt(TE_PT)
        .map(|p| {
            DtmfRepr::parse(&DtmfPacket::new_checked(&p.payload[..]).expect("4-byte event"))
                .expect("valid event")
        })
        .collect();
    assert_eq!(
        got.len(),
        sent.len(),
        "the agent got {} of {} event packets",
        got.len(),
        sent.len()
    );
    for (g, s) in got.iter().zip(&sent) {
        assert_eq!(
            (u8::from(g.event), g.end, g.duration),
            (s.code, s.end, s.duration)
        );
    }
    // Every packet of one event carries one timestamp, and the first one the marker.
    let ts: Vec<u32> = agent.with_pt(TE_PT).map(|p| p.ts).collect();
    assert!(ts[..12].iter().all(|&t| t == ts[0]) && ts[12..].iter().all(|&t| t == ts[12]));
    assert!(agent.with_pt(TE_PT).next().is_some_and(|p| p.marker));

    // The monitoring supervisor never gets an event packet.
    let sup = sim.listener(s);
    let during_monitor = sup
        .with_pt(TE_PT)
        .filter(|p| p.sent_at < start + ms(2_000))
        .count();
    assert_eq!(
        during_monitor, 0,
        "a monitoring supervisor received telephone events"
    );

    // Nobody's audio carries the key's tones: events are never mixed.
    for p in [c, a, s] {
        for hz in KEY5_HZ {
            let l = sim.listener(p);
            assert!(
                l.never_hears(hz, start, end),
                "{} hears {hz} Hz: {:?}",
                sim.name(p),
                l.tone_report(hz, start, end)
            );
        }
    }
}
