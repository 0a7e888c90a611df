//! Talkers whose clocks run 1000 ppm fast and slow, for three minutes of virtual time in
//! a barge: the tones are still heard at the end, every output keeps sending every
//! 20 ms, and the delay from a talker to a listener does not grow (the jitter buffer
//! drops or inserts frames rather than accumulate 180 ms of drift).

use earshot_media::time::{Duration, Instant};
use earshot_testkit::tone::{NARROWBAND_HZ, TONE_AMPLITUDE, tone_amplitude};
use earshot_tests::sim::continuity::longest_send_gap;
use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Link, Mode, PartyConfig, SUPERVISOR_HZ, Sim, before, ms,
    seed_for,
};

/// Beacon arrival delays (playout time minus send time) of `talker`'s beacons as heard
/// by `listener`, in order.
fn beacon_delays(
    sim: &Sim,
    talker: earshot_tests::sim::Party,
    listener: earshot_tests::sim::Party,
) -> Vec<(Instant, Duration)> {
    let sends = sim.talker(talker).beacons();
    let beacon_hz = sim.talker(talker).config().beacon_hz;
    let play = sim.listener(listener).playout();
    let mut out: Vec<(Instant, Duration)> = Vec::new();
    let mut i = 0;
    while i + 160 <= play.samples.len() {
        let f =
            tone_amplitude(&play.samples[i..i + 160], beacon_hz, NARROWBAND_HZ) / TONE_AMPLITUDE;
        if f > 0.5 {
            // Refine to the strongest 40-sample step of this beacon.
            let best = (0..5)
                .map(|k| i + 40 * k)
                .filter(|&j| j + 160 <= play.samples.len())
                .max_by(|&x, &y| {
                    tone_amplitude(&play.samples[x..x + 160], beacon_hz, NARROWBAND_HZ).total_cmp(
                        &tone_amplitude(&play.samples[y..y + 160], beacon_hz, NARROWBAND_HZ),
                    )
                })
                .unwrap_or(i);
            let heard = play.time_of(best);
            if let Some(&sent) = sends.iter().rev().find(|&&t| t <= heard) {
                out.push((sent, heard.saturating_since(sent)));
            }
            i = best + 800;
        } else {
            i += 40;
        }
    }
    out
}

#[test]
fn clock_drift_does_not_grow_the_buffer() {
    let mut sim = Sim::new("clock_drift", seed_for("clock_drift"));
    let drifting = |name: &str, hz: f64, ppm: f64, beacon_hz: f64| {
        let mut p = PartyConfig {
            uplink: Link::with_jitter(5, 5),
            ..PartyConfig::tone(name, hz)
        };
        p.talker.drift_ppm = ppm;
        p.talker.beacon_every_frames = 250; // one every 5 s
        p.talker.beacon_hz = beacon_hz;
        p
    };
    let c = sim.add_party(drifting("customer", CUSTOMER_HZ, 1000.0, 2700.0));
    let a = sim.add_party(drifting("agent", AGENT_HZ, -1000.0, 3100.0));
    let s = sim.add_party(drifting("supervisor", SUPERVISOR_HZ, 500.0, 3500.0));
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Barge));
    let start = sim.now();
    sim.run_for(ms(180_000));
    let end = sim.now();
    let (from, to) = (before(end, ms(10_000)), before(end, ms(300)));
    let tones = [(c, CUSTOMER_HZ), (a, AGENT_HZ), (s, SUPERVISOR_HZ)];
    for (listener, _) in tones {
        let l = sim.listener(listener);
        let gap = longest_send_gap(l.packets(), 0, start + ms(1_000), to);
        assert!(
            gap <= ms(21),
            "{}'s output paused for {gap:?}",
            sim.name(listener)
        );
        let sent_last_minute = l
            .audio()
            .filter(|p| p.sent_at >= before(end, ms(60_000)))
            .count();
        assert!(
            (2999..=3001).contains(&sent_last_minute),
            "{} got {sent_last_minute} packets in the last minute, not 3000",
            sim.name(listener)
        );
        for (source, hz) in tones.iter().copied().filter(|(p, _)| *p != listener) {
            let r = l.tone_report(hz, from, to);
            assert!(
                r.detected * 100 >= r.windows * 95,
                "{} hears {} in {} of {} windows at the end",
                sim.name(listener),
                sim.name(source),
                r.detected,
                r.windows
            );
        }
    }
    // The fast customer heard by the slow agent, and the slow agent heard by the fast
    // customer: delay at the end within 40 ms of delay at the start (uncorrected drift
    // would be 180 ms either way).
    for (talker, listener) in [(c, a), (a, c), (s, c)] {
        let d = beacon_delays(&sim, talker, listener);
        assert!(
            d.len() >= 30,
            "only {} beacons of {} found at {}",
            d.len(),
            sim.name(talker),
            sim.name(listener)
        );
        let early = d[1].1.as_micros() as i64;
        let late = d[d.len() - 1].1.as_micros() as i64;
        assert!(
            (late - early).abs() <= 40_000,
            "{} -> {}: delay went from {early} us to {late} us",
            sim.name(talker),
            sim.name(listener)
        );
    }
}
