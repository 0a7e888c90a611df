//! 5% random loss and up to 30 ms of jitter on every input of a barge: every listener
//! still hears both other tones in at least 95% of 100 ms windows; the lost frames were
//! concealed (faded repeats are visible in the output); no tone drops out for longer
//! than concealment allows, and every output keeps sending every 20 ms.

use earshot_tests::sim::continuity::longest_send_gap;
use earshot_tests::sim::listener::SILENT_FRACTION;
use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Link, Mode, PartyConfig, SUPERVISOR_HZ, Sim, before, ms,
    seed_for,
};

#[test]
fn loss_is_concealed_under_five_percent_random_loss() {
    let mut sim = Sim::new("loss_concealed", seed_for("loss_concealed"));
    let lossy = |name: &str, hz: f64| PartyConfig {
        uplink: Link::with_jitter(10, 30).lossy(0.05),
        ..PartyConfig::tone(name, hz)
    };
    let c = sim.add_party(lossy("customer", CUSTOMER_HZ));
    let a = sim.add_party(lossy("agent", AGENT_HZ));
    let s = sim.add_party(lossy("supervisor", SUPERVISOR_HZ));
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Barge));
    let start = sim.now();
    sim.run_for(ms(20_000));
    let (from, to) = (start + ms(1_000), before(sim.now(), ms(300)));

    let tones = [(c, CUSTOMER_HZ), (a, AGENT_HZ), (s, SUPERVISOR_HZ)];
    let mut total_lost = 0;
    for (p, _) in tones {
        let (sent, lost) = sim.uplink_counts(p);
        assert!(
            lost * 100 > sent * 3,
            "the network lost only {lost} of {sent}: the test would prove nothing"
        );
        total_lost += lost;
    }
    // The engine's own account: each input's jitter buffer concealed what the network
    // lost (late packets are concealed too, so at least most of the losses).
    for (p, _) in tones {
        let (_, lost) = sim.uplink_counts(p);
        let js = sim
            .shard()
            .jitter_stats(sim.leg(p))
            .expect("configured leg");
        // The buffer counts milliseconds; every talker here sends 20 ms packets.
        let (lost_frames, concealed_frames) = (js.lost_ms / 20, js.concealed_ms / 20);
        assert!(
            lost_frames * 10 >= lost * 7 && concealed_frames > 0,
            "{}: jitter buffer saw {lost_frames} lost and concealed {concealed_frames} \
             frames; the network lost {lost}",
            sim.name(p),
        );
    }
    for (listener, _) in tones {
        let l = sim.listener(listener);
        let gap = longest_send_gap(l.packets(), 0, from, to);
        assert!(
            gap <= ms(21),
            "{}'s output paused for {gap:?}: outputs must keep pacing",
            sim.name(listener)
        );
        for (source, hz) in tones.iter().copied().filter(|(p, _)| *p != listener) {
            let r = l.tone_report(hz, from, to);
            assert!(
                r.detected * 100 >= r.windows * 95,
                "{} hears {} in {} of {} windows",
                sim.name(listener),
                sim.name(source),
                r.detected,
                r.windows
            );
            // Per output packet: a concealed frame carries a faded repeat (between silent
            // and full); a frame silent for this tone is a gap.
            let (mut faded, mut run, mut worst_run) = (0, 0, 0);
            for p in l.audio().filter(|p| p.sent_at >= from && p.sent_at < to) {
                let f = l.packet_tone(p, hz);
                faded += usize::from(f > SILENT_FRACTION && f < 0.9);
                run = if f <= SILENT_FRACTION { run + 1 } else { 0 };
                worst_run = worst_run.max(run);
            }
            // Every frame lost on the source's uplink shows up as a faded repeat (the
            // window covers 93% of the run; late packets are concealed too).
            let (_, lost) = sim.uplink_counts(source);
            assert!(
                faded as u64 * 10 >= lost * 7,
                "{} got {faded} concealed frames of {}, which lost {lost}",
                sim.name(listener),
                sim.name(source)
            );
            // Three faded repeats, then silence until audio resumes: a silent frame means
            // four losses in a row, and two silent frames five (about 1 in 3 million).
            assert!(
                worst_run <= 1,
                "{} lost {} for {worst_run} frames in a row",
                sim.name(listener),
                sim.name(source)
            );
        }
    }
    let late = sim.drops("jitter_late");
    eprintln!("lost in the network: {total_lost}; late for the jitter buffer: {late}");
}
