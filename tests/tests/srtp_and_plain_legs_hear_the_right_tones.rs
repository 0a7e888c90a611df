//! SRTP and plain legs in one call: an SRTP customer (the trunk), a plain agent, and a
//! supervisor that is SRTP (another suite) or plain, through monitor, coach and barge.
//! Every listener hears exactly the tones its hear relation says (forwarded paths are
//! decrypted and re-encrypted per leg, mixed ones protected per leg), every SRTP phone
//! verifies everything the engine sends it (RTP and SRTCP reports), and the shard counts
//! no SRTP failure.

use earshot_engine_api::SrtpSuite;
use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SPECIALIST_HZ, SUPERVISOR_HZ, Sim, before,
    ms, seed_for,
};

fn run(label: &str, mode: Mode, supervisor_srtp: Option<SrtpSuite>) {
    let mut sim = Sim::new(label, seed_for(label));
    let c = sim.add_party(
        PartyConfig::tone("customer", CUSTOMER_HZ).with_srtp(SrtpSuite::AesCm128HmacSha1_80, 1),
    );
    let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
    let mut sup = PartyConfig::tone("supervisor", SUPERVISOR_HZ);
    if let Some(suite) = supervisor_srtp {
        sup = sup.with_srtp(suite, 2);
    }
    let s = sim.add_party(sup);
    let hearing = Hearing::call(c, a).with(s, a, mode);
    sim.set_hearing(&hearing);
    let start = sim.now();
    // Long enough for every leg's first RTCP report (5 s mean interval, randomised).
    sim.run_for(ms(9_000));
    let (from, to) = (start + ms(500), before(sim.now(), ms(200)));
    let tones = [(c, CUSTOMER_HZ), (a, AGENT_HZ), (s, SUPERVISOR_HZ)];
    for (who, _) in tones {
        let l = sim.listener(who);
        for (src, hz) in tones {
            if src != who && hearing.hears(who, src) {
                assert!(
                    l.hears(hz, from, to),
                    "{label}: {} should hear {} ({hz} Hz): {:?}",
                    sim.name(who),
                    sim.name(src),
                    l.tone_report(hz, from, to)
                );
            } else {
                assert!(
                    l.never_hears(hz, from, to),
                    "{label}: {} must not hear {} ({hz} Hz): {:?}",
                    sim.name(who),
                    sim.name(src),
                    l.tone_report(hz, from, to)
                );
            }
        }
        assert!(l.never_hears(SPECIALIST_HZ, from, to));
        assert_eq!(
            l.malformed,
            0,
            "{label}: {} got malformed packets",
            sim.name(who)
        );
        assert_eq!(
            sim.srtp_failures(who),
            0,
            "{label}: {} could not unprotect what the engine sent",
            sim.name(who)
        );
        assert!(
            !l.rtcp().is_empty(),
            "{label}: {} got no (S)RTCP report",
            sim.name(who)
        );
    }
    for reason in ["srtp_auth", "srtp_replay", "srtp_protect", "bad_rtcp"] {
        assert_eq!(sim.drops(reason), 0, "{label}: {reason} drops");
    }
    assert_eq!(sim.unroutable(), 0);
    assert_eq!(sim.wrong_port(), 0);
}

#[test]
fn monitor_of_an_srtp_trunk_call_by_an_srtp_supervisor() {
    run(
        "srtp_monitor",
        Mode::Monitor,
        Some(SrtpSuite::AeadAes128Gcm),
    );
}

#[test]
fn coach_of_an_srtp_trunk_call_by_a_plain_supervisor() {
    run("srtp_coach_plain", Mode::Coach, None);
}

#[test]
fn coach_of_an_srtp_trunk_call_by_an_srtp_supervisor() {
    run(
        "srtp_coach",
        Mode::Coach,
        Some(SrtpSuite::AesCm128HmacSha1_32),
    );
}

#[test]
fn barge_into_an_srtp_trunk_call_by_a_plain_supervisor() {
    run("srtp_barge_plain", Mode::Barge, None);
}

#[test]
fn barge_into_an_srtp_trunk_call_by_an_srtp_supervisor() {
    run("srtp_barge", Mode::Barge, Some(SrtpSuite::AeadAes256Gcm));
}
