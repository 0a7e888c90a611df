//! Arbitrary bytes, mutations of genuine SRTP packets, replays and plain RTP, sent to SRTP
//! legs (and to the plain leg beside them) from the right and wrong sources while a
//! barge runs: the shard never panics, nothing that fails authentication or replays
//! reaches anyone (`srtp_auth` / `srtp_replay` count it), and afterwards every listener
//! still hears the tones it should and every SRTP phone verifies all it receives.

use std::net::SocketAddr;

use earshot_engine_api::SrtpSuite;
use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SUPERVISOR_HZ, Sim, before, ms, seed_for,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

#[derive(Debug, Clone)]
enum Junk {
    /// Any bytes.
    Bytes(Vec<u8>),
    /// A genuine packet the target's phone sent earlier (index into its uplink log),
    /// with bits flipped and maybe cut short; no flips: a replay.
    Genuine {
        pick: usize,
        flips: Vec<(usize, u8)>,
        cut: Option<usize>,
    },
    /// Plain RTP (an unencrypted phone, or a downgrade attempt).
    Plain { seq: u16 },
}

fn junk() -> impl Strategy<Value = Junk> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..1600).prop_map(Junk::Bytes),
        (
            any::<usize>(),
            proptest::collection::vec((0usize..200, any::<u8>()), 0..4),
            proptest::option::of(0usize..200)
        )
            .prop_map(|(pick, flips, cut)| Junk::Genuine { pick, flips, cut }),
        any::<u16>().prop_map(|seq| Junk::Plain { seq }),
    ]
}

fn plain_rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![
        0x80,
        0,
        (seq >> 8) as u8,
        seq as u8,
        0,
        0,
        0x0a,
        0,
        1,
        2,
        3,
        4,
    ];
    p.extend(std::iter::repeat_n(0x55u8, 160));
    p
}

fn render(j: &Junk, genuine: &[Vec<u8>]) -> Vec<u8> {
    match j {
        Junk::Bytes(b) => b.clone(),
        Junk::Plain { seq } => plain_rtp(*seq),
        Junk::Genuine { pick, flips, cut } => {
            let mut p = genuine[pick % genuine.len()].clone();
            let len = p.len();
            for &(i, x) in flips {
                p[i % len] ^= x;
            }
            if let Some(cut) = cut {
                p.truncate((*cut).max(1).min(len));
            }
            p
        }
    }
}

/// Cases per run: 16 by default (CI); `EARSHOT_CASES=N` for a long search. Seeded from
/// [`seed_for`] (`EARSHOT_SEED` overrides it); the seed is printed so a failure replays.
fn config() -> ProptestConfig {
    let seed = seed_for("arbitrary_srtp_junk");
    eprintln!("arbitrary_srtp: junk seed = {seed} (replay with EARSHOT_SEED={seed})");
    ProptestConfig {
        cases: std::env::var("EARSHOT_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(16),
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_datagrams_to_srtp_legs_never_disturb_the_shard(
        junks in proptest::collection::vec((junk(), 0usize..4, any::<bool>()), 50..200),
    ) {
        let mut sim = Sim::new("arbitrary_srtp", seed_for("arbitrary_srtp"));
        let c = sim.add_party(
            PartyConfig::tone("customer", CUSTOMER_HZ)
                .with_srtp(SrtpSuite::AesCm128HmacSha1_80, 1),
        );
        let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
        let s = sim.add_party(
            PartyConfig::tone("supervisor", SUPERVISOR_HZ).with_srtp(SrtpSuite::AeadAes128Gcm, 2),
        );
        sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Monitor));
        sim.run_for(ms(300));
        let parties = [c, a, s];
        let stranger: SocketAddr = "10.9.9.9:9999".parse().unwrap();
        let genuine = [c, a, s].map(|p| sim.uplink_payloads(p).to_vec());
        let before_in = sim.stats().packets_in;
        let (auth0, replay0) = (sim.drops("srtp_auth"), sim.drops("srtp_replay"));
        // One certain replay and one certain forgery on each SRTP leg, then the junk.
        let mut sends = Vec::new();
        for p in [0, 2] {
            let first = genuine[p][0].clone();
            let mut forged = genuine[p][1].clone();
            let last = forged.len() - 1;
            forged[last] ^= 1;
            sends.push((p, false, first));
            sends.push((p, false, forged));
        }
        for (j, target, wrong_source) in &junks {
            let p = target % 3;
            sends.push((p, *wrong_source && *target != 3, render(j, &genuine[p])));
        }
        let n = sends.len() as u64;
        for (k, (p, wrong_source, bytes)) in sends.into_iter().enumerate() {
            let from = if wrong_source { stranger } else { sim.addr(parties[p]) };
            let at = sim.now() + ms(k as u64 % 40);
            sim.inject_at(at, sim.engine_port(parties[p]), from, bytes);
            if k % 50 == 25 {
                sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Barge));
            }
        }
        sim.run_for(ms(200));
        let st = sim.stats();
        prop_assert!(st.packets_in >= before_in + n, "{} < {} + {n}", st.packets_in, before_in);
        prop_assert!(sim.drops("srtp_replay") >= replay0 + 2, "replays were not refused");
        prop_assert!(sim.drops("srtp_auth") >= auth0 + 2, "forgeries were not refused");
        // After the junk, a barge carries every tone to everyone who should hear it, and
        // every SRTP phone verifies everything the engine sent it.
        sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Barge));
        let start = sim.now();
        sim.run_for(ms(1_500));
        let (from, to) = (start + ms(400), before(sim.now(), ms(100)));
        for (l, hz) in [(c, AGENT_HZ), (c, SUPERVISOR_HZ), (a, CUSTOMER_HZ), (s, CUSTOMER_HZ), (s, AGENT_HZ)] {
            prop_assert!(
                sim.listener(l).hears(hz, from, to),
                "{} misses {hz} Hz after the junk: {:?}",
                sim.name(l),
                sim.listener(l).tone_report(hz, from, to)
            );
        }
        for p in parties {
            prop_assert_eq!(sim.srtp_failures(p), 0, "{} could not verify", sim.name(p));
            prop_assert_eq!(sim.listener(p).malformed, 0, "{} got malformed packets", sim.name(p));
        }
    }
}
