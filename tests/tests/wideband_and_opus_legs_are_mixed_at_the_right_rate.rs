//! Wideband and Opus legs through the shard (issue 12, SPEC section 5): each session
//! mixes at the highest rate its audible legs need, inputs are decoded and resampled to
//! it, and every listener's mix is resampled and encoded in its own codec.
//!
//! The tones prove the rate. A 5 kHz tone exists only above 8 kHz sampling: a G.722
//! listener hears a G.722 talker's 5 kHz tone only if the mix ran at 16 kHz, and a
//! narrowband listener of the same mix must hear neither it nor its 3 kHz alias (8 kHz
//! sampling folds 5 kHz onto 3 kHz when the resampler does not filter). The simulated
//! phones use earshot's own codec states; ffmpeg checks the same paths with independent
//! codecs over real UDP (earshot/tests/ffmpeg_endpoints.rs).

use earshot_media::wire::dtmf::{DtmfEvent, DtmfPacket, DtmfRepr};
use earshot_media::{Codec, SampleRate};
use earshot_tests::sim::talker::DtmfPlan;
use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, Party, PartyConfig, SUPERVISOR_HZ, Sim, before, ms,
    seed_for,
};

/// A tone only a wideband path carries.
const WIDE_HZ: f64 = 5_000.0;
/// Where 5 kHz lands when sampled at 8 kHz without a low-pass filter.
const ALIAS_HZ: f64 = 3_000.0;
const TE_PT: u8 = 101;

fn party(name: &str, hz: f64, codec: Codec, pt: u8) -> PartyConfig {
    let mut p = PartyConfig::tone(name, hz);
    p.talker.codec = codec;
    p.talker.payload_type = pt;
    p
}

fn opus_missing() -> bool {
    match earshot_media::codec::opus_available() {
        Ok(_) => false,
        Err(e) => {
            // CI installs libopus0 (.ci/run): there the test runs.
            println!("SKIPPED: libopus not found ({e})");
            true
        }
    }
}

/// Asserts that the shard dropped nothing: every packet of every codec was playable.
fn no_drops(sim: &mut Sim) {
    let drops: Vec<(String, u64)> = sim
        .stats()
        .drops
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    assert!(drops.is_empty(), "drops: {drops:?}");
}

/// Asserts what each party hears and does not hear over the settled part of the run.
fn expect(sim: &Sim, from: earshot_media::time::Instant, rules: &[(Party, &[f64], &[f64])]) {
    let to = before(sim.now(), ms(200));
    for &(who, heard, absent) in rules {
        let l = sim.listener(who);
        assert!(
            l.audio().count() > 50,
            "{} got {} audio packets",
            sim.name(who),
            l.audio().count()
        );
        for &hz in heard {
            assert!(
                l.hears(hz, from, to),
                "{} should hear {hz} Hz: {:?}",
                sim.name(who),
                l.tone_report(hz, from, to)
            );
        }
        for &hz in absent {
            assert!(
                l.never_hears(hz, from, to),
                "{} should not hear {hz} Hz: {:?}",
                sim.name(who),
                l.tone_report(hz, from, to)
            );
        }
        assert_eq!(l.malformed, 0);
    }
    assert_eq!(sim.unroutable(), 0);
    assert_eq!(sim.wrong_port(), 0);
}

/// A G.722 customer and agent with a PCMU supervisor barging: the agent and customer
/// hear each other at 16 kHz (the 5 kHz tone arrives), the supervisor hears both at
/// 8 kHz (no 5 kHz, no alias), and the supervisor is heard by both.
#[test]
fn a_g722_call_mixes_at_16_khz_and_a_pcmu_barger_hears_it_narrowband() {
    let mut sim = Sim::new("wideband_barge", seed_for("wideband_barge"));
    let c = sim.add_party(party("customer", WIDE_HZ, Codec::G722, 9));
    let a = sim.add_party(party("agent", AGENT_HZ, Codec::G722, 9));
    let s = sim.add_party(PartyConfig::tone("supervisor", SUPERVISOR_HZ));
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Barge));
    let start = sim.now();
    sim.run_for(ms(2_500));
    expect(
        &sim,
        start + ms(500),
        &[
            (c, &[AGENT_HZ, SUPERVISOR_HZ], &[WIDE_HZ, ALIAS_HZ]),
            (a, &[WIDE_HZ, SUPERVISOR_HZ], &[AGENT_HZ, ALIAS_HZ]),
            (s, &[AGENT_HZ], &[WIDE_HZ, ALIAS_HZ, SUPERVISOR_HZ]),
        ],
    );
    no_drops(&mut sim);
}

/// The same G.722 call monitored by a PCMU supervisor: the call itself is forwarded
/// byte for byte (same codec both ways: nothing decodes for it), and the monitor's mix
/// runs at 8 kHz, which is all its phone plays.
#[test]
fn a_monitored_g722_call_is_forwarded_and_the_monitor_hears_it_narrowband() {
    let mut sim = Sim::new("wideband_monitor", seed_for("wideband_monitor"));
    let c = sim.add_party(party("customer", WIDE_HZ, Codec::G722, 9));
    let a = sim.add_party(party("agent", AGENT_HZ, Codec::G722, 9));
    let s = sim.add_party(PartyConfig::tone("supervisor", SUPERVISOR_HZ));
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Monitor));
    let start = sim.now();
    sim.run_for(ms(2_500));
    expect(
        &sim,
        start + ms(500),
        &[
            (c, &[AGENT_HZ], &[WIDE_HZ, SUPERVISOR_HZ]),
            (a, &[WIDE_HZ], &[AGENT_HZ, SUPERVISOR_HZ]),
            (s, &[AGENT_HZ], &[WIDE_HZ, ALIAS_HZ, SUPERVISOR_HZ]),
        ],
    );
    no_drops(&mut sim);
    // Forwarded: the agent receives exactly the customer's payloads.
    let sent: Vec<&[u8]> = sim.uplink_payloads(c).iter().map(|d| &d[12..]).collect();
    let got: Vec<&[u8]> = sim.listener(a).audio().map(|p| &p.payload[..]).collect();
    let matched = got.iter().filter(|p| sent.contains(p)).count();
    assert!(
        matched * 10 >= got.len() * 9,
        "{matched} of {} payloads the agent got are the customer's own bytes",
        got.len()
    );
}

/// A WebRTC agent on Opus (48 kHz RTP clock), a PCMU trunk customer and an L16 16 kHz
/// coach: the agent hears both (its Opus encoder runs at the session's rate), the
/// customer hears the agent only, the coach hears both; a key pressed on the trunk
/// reaches the Opus agent as a telephone event with its duration on the 48 kHz clock.
#[test]
fn an_opus_agent_a_pcmu_trunk_and_an_l16_coach_hear_the_right_tones() {
    if opus_missing() {
        return;
    }
    let mut sim = Sim::new("opus_coach", seed_for("opus_coach"));
    let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
    let a = sim.add_party(party("agent", AGENT_HZ, Codec::Opus, 111));
    let s = sim.add_party(party(
        "coach",
        SUPERVISOR_HZ,
        Codec::L16(SampleRate::Hz16000),
        96,
    ));
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Coach));
    let key_at = sim.talker(c).frame_index() + 60;
    sim.talker_mut(c).add_dtmf(DtmfPlan {
        start_frame: key_at,
        frames: 5,
        event: DtmfEvent::Digit(7),
    });
    let start = sim.now();
    sim.run_for(ms(3_000));
    expect(
        &sim,
        start + ms(600),
        &[
            (c, &[AGENT_HZ], &[SUPERVISOR_HZ, CUSTOMER_HZ]),
            (a, &[CUSTOMER_HZ, SUPERVISOR_HZ], &[AGENT_HZ]),
            (s, &[CUSTOMER_HZ, AGENT_HZ], &[SUPERVISOR_HZ]),
        ],
    );
    no_drops(&mut sim);
    // Every event packet the trunk sent reaches the agent, durations six times longer
    // (8 kHz units to 48 kHz units).
    let sent = sim.talker(c).events_sent().to_vec();
    let got: Vec<DtmfRepr> = sim
        .listener(a)
        .with_pt(TE_PT)
        .map(|p| DtmfRepr::parse(&DtmfPacket::new_checked(&p.payload[..]).unwrap()).unwrap())
        .collect();
    assert_eq!(got.len(), sent.len(), "event packets relayed");
    for (g, s) in got.iter().zip(&sent) {
        assert_eq!(u8::from(g.event), s.code);
        assert_eq!(u32::from(g.duration), u32::from(s.duration) * 6);
    }
}

/// Opus on both sides of a call, barged by an Opus supervisor: everyone plays 48 kHz,
/// so the session mixes at 48 kHz, and each hears the two others, the customer's 5 kHz
/// tone included. (Above 8 kHz, which only a 48 kHz mix carries, libopus at the
/// default 32 kbit/s keeps too little of a pure tone for the detector: a 10 kHz tone
/// arrives at 0.4% to 20% of its level, so the test does not claim more than wideband.)
#[test]
fn an_all_opus_barge_is_mixed_and_heard_wideband() {
    if opus_missing() {
        return;
    }
    let mut sim = Sim::new("opus_barge", seed_for("opus_barge"));
    let c = sim.add_party(party("customer", WIDE_HZ, Codec::Opus, 111));
    let a = sim.add_party(party("agent", AGENT_HZ, Codec::Opus, 111));
    let s = sim.add_party(party("supervisor", SUPERVISOR_HZ, Codec::Opus, 111));
    sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Barge));
    let start = sim.now();
    sim.run_for(ms(2_500));
    expect(
        &sim,
        start + ms(600),
        &[
            (c, &[AGENT_HZ, SUPERVISOR_HZ], &[WIDE_HZ]),
            (a, &[WIDE_HZ, SUPERVISOR_HZ], &[AGENT_HZ]),
            (s, &[WIDE_HZ, AGENT_HZ], &[SUPERVISOR_HZ]),
        ],
    );
    no_drops(&mut sim);
}

/// A WebRTC agent on Opus over a lossy uplink (5% random loss, up to 30 ms jitter), a
/// PCMU trunk hearing it: libopus recovers lost frames from the in-band FEC of the next
/// packet (the phones' encoders send FEC) or conceals them, so the trunk hears the
/// agent in at least 95% of 100 ms windows, and the engine's own account shows FEC at
/// work on the agent's leg.
#[test]
fn opus_loss_is_recovered_by_fec_and_concealed() {
    if opus_missing() {
        return;
    }
    let mut sim = Sim::new("opus_fec", seed_for("opus_fec"));
    let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
    let a = sim.add_party(PartyConfig {
        uplink: earshot_tests::sim::Link::with_jitter(10, 30).lossy(0.05),
        ..party("agent", AGENT_HZ, Codec::Opus, 111)
    });
    sim.set_hearing(&Hearing::call(c, a));
    let start = sim.now();
    sim.run_for(ms(10_000));
    let (from, to) = (start + ms(1_000), before(sim.now(), ms(300)));
    let (sent, lost) = sim.uplink_counts(a);
    assert!(
        lost * 100 > sent * 3,
        "the network lost only {lost} of {sent}: the test would prove nothing"
    );
    let js = sim
        .shard()
        .jitter_stats(sim.leg(a))
        .expect("configured leg");
    assert!(
        js.fec_ms > 0 && (js.fec_ms + js.concealed_ms) / 20 * 10 >= lost * 7,
        "lost {lost} packets; the buffer recovered {} ms by FEC and concealed {} ms",
        js.fec_ms,
        js.concealed_ms
    );
    let r = sim.listener(c).tone_report(AGENT_HZ, from, to);
    assert!(
        r.detected * 100 >= r.windows * 95,
        "the trunk hears the agent in {} of {} windows",
        r.detected,
        r.windows
    );
}
