//! Re-keying a live SRTP leg (a re-INVITE with new `a=crypto` lines, `UpdateMedia` in
//! the API) has no gap (issue 11). An SRTP customer talks to a plain agent; mid-call
//! the customer's leg gets a new remote key and a new local key. The customer's phone
//! keeps protecting with its old key for a while (its answer is on the way), then
//! switches:
//! - the agent hears the customer through the switch with no packet missing or
//!   toneless, and its output stream stays one continuous stream;
//! - every packet the phone protected with its old key during the overlap is accepted
//!   (no `srtp_auth` drop); old-key packets after the overlap are refused and counted
//!   `srtp_auth`, exactly as many as were sent, and never reach the agent;
//! - everything the engine sends the customer from the re-key on verifies with the new
//!   local key on the phone (RTP and SRTCP), and the customer keeps hearing the agent.

use earshot_engine_api::SrtpSuite;
use earshot_tests::sim::continuity::{StreamLimits, check_stream, longest_send_gap};
use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, PartyConfig, Sim, before, ms, seed_for, test_keys,
};

/// The overlap during which the engine still accepts the remote's previous key
/// (`REKEY_OVERLAP` in engine/core/src/shard/srtp.rs).
const OVERLAP_MS: u64 = 2_000;

fn run(label: &str, suite: SrtpSuite, phone_delay_ms: u64) {
    let mut sim = Sim::new(label, seed_for(label));
    let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ).with_srtp(suite, 1));
    let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
    sim.set_hearing(&Hearing::call(c, a));
    sim.run_for(ms(3_000));

    let rekey_at = sim.now();
    let switch_at = rekey_at + ms(phone_delay_ms);
    sim.rekey(c, test_keys(suite, 9), switch_at);
    // Past the phone's switch and the overlap's end, but not by much: the old session
    // is kept until the timeout sweep forgets it.
    sim.run_until(rekey_at + ms(OVERLAP_MS + 500));
    for reason in ["srtp_auth", "srtp_replay", "srtp_protect", "bad_rtcp"] {
        assert_eq!(
            sim.drops(reason),
            0,
            "{label}: {reason} drops across the re-key (old-key packets in the overlap \
             must be accepted)"
        );
    }

    // The agent heard the customer in every packet across the switch.
    let (from, to) = (
        before(rekey_at, ms(1_000)),
        (switch_at + ms(1_000)).min(before(sim.now(), ms(40))),
    );
    let l = sim.listener(a);
    let across: Vec<_> = l
        .audio()
        .filter(|p| p.sent_at >= from && p.sent_at < to)
        .collect();
    let expected = (to.saturating_since(from).as_nanos() / 20_000_000) as usize;
    assert!(
        across.len() + 1 >= expected,
        "{label}: the agent got {} packets in {} ms",
        across.len(),
        (to.saturating_since(from).as_nanos() / 1_000_000)
    );
    for p in &across {
        let amplitude = l.packet_tone(p, CUSTOMER_HZ);
        assert!(
            amplitude > 0.5,
            "{label}: agent packet seq {} sent at {:?} carries the customer at {amplitude:.2} \
             (re-key at {rekey_at:?}, phone switch at {switch_at:?})",
            p.seq,
            p.sent_at
        );
    }
    let gap = longest_send_gap(l.packets(), 0, from, to);
    assert!(
        gap <= ms(21),
        "{label}: the agent's stream paused {gap:?} across the re-key"
    );
    check_stream(
        l.packets(),
        0,
        StreamLimits {
            frame_samples: 160,
            ts_slack_samples: 16,
            allow_seq_gaps: false,
        },
        &[],
    )
    .unwrap_or_else(|e| panic!("{label}: the agent's output stream: {e}"));

    // Our re-keyed stream verified with the new key; the customer still hears the agent.
    assert_eq!(
        sim.srtp_failures(c),
        0,
        "{label}: the customer's phone could not verify what the engine sent"
    );
    let fresh = sim.verified_after_rekey(c);
    assert!(
        fresh >= (OVERLAP_MS + 500) / 20 - 2,
        "{label}: only {fresh} engine datagrams verified with the new key"
    );
    let cl = sim.listener(c);
    let (hear_from, hear_to) = (before(rekey_at, ms(500)), before(sim.now(), ms(100)));
    assert!(
        cl.hears(AGENT_HZ, hear_from, hear_to),
        "{label}: {:?}",
        cl.tone_report(AGENT_HZ, hear_from, hear_to)
    );

    // After the overlap, old-key packets are refused, counted, and heard by nobody.
    let agent_packets = sim.listener(a).packets().len();
    sim.inject_stale(c, 5);
    let injected_at = sim.now();
    sim.run_for(ms(1_000));
    assert_eq!(
        sim.drops("srtp_auth"),
        5,
        "{label}: the old key after the overlap"
    );
    assert_eq!(sim.drops("srtp_replay"), 0);
    let l = sim.listener(a);
    assert!(
        l.packets()[agent_packets..]
            .iter()
            .all(|p| l.packet_tone(p, CUSTOMER_HZ) > 0.5),
        "{label}: the stale packets disturbed what the agent hears"
    );
    assert!(l.hears(CUSTOMER_HZ, injected_at, before(sim.now(), ms(100))));
    // SRTCP too: run until the engine has sent the customer a report after the re-key
    // (RTCP intervals are randomised around 5 s).
    while !sim
        .listener(c)
        .rtcp()
        .iter()
        .any(|(sent, _)| *sent >= rekey_at)
        && sim.now() < rekey_at + ms(15_000)
    {
        sim.run_for(ms(500));
    }
    assert!(
        sim.listener(c)
            .rtcp()
            .iter()
            .any(|(sent, _)| *sent >= rekey_at),
        "{label}: no SRTCP report after the re-key to verify"
    );
    assert_eq!(sim.srtp_failures(c), 0);
    assert_eq!(sim.unroutable(), 0);
    assert_eq!(sim.wrong_port(), 0);
}

#[test]
fn rekeying_an_aes_cm_leg_while_the_phone_answers_late_has_no_gap() {
    run("rekey_aes_cm_80", SrtpSuite::AesCm128HmacSha1_80, 700);
}

#[test]
fn rekeying_a_gcm_leg_whose_phone_switches_at_once_has_no_gap() {
    run("rekey_gcm_128", SrtpSuite::AeadAes128Gcm, 0);
}

#[test]
fn rekeying_with_the_phone_switching_just_before_the_overlap_ends_has_no_gap() {
    run(
        "rekey_aes_cm_32_late",
        SrtpSuite::AesCm128HmacSha1_32,
        OVERLAP_MS - 100,
    );
}
