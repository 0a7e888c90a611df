//! Arbitrary bytes and mutations of valid RTP, RTCP and telephone-event packets, sent to
//! every leg's port (and to ports nobody owns) from the right and wrong sources, while a
//! barge runs and switches plans: the shard never panics, every datagram is counted as
//! received, and every listener still hears the tones it should afterwards.

use std::net::SocketAddr;

use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SUPERVISOR_HZ, Sim, before, ms, seed_for,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

/// A valid 20 ms PCMU packet to mutate.
fn valid_rtp(pt: u8, seq: u16) -> Vec<u8> {
    let mut p = vec![
        0x80,
        pt,
        (seq >> 8) as u8,
        seq as u8,
        0,
        0,
        0x0a,
        0x00,
        1,
        2,
        3,
        4,
    ];
    p.extend(std::iter::repeat_n(0x55u8, 160));
    p
}

/// A valid RTCP receiver report to mutate.
fn valid_rtcp() -> Vec<u8> {
    vec![0x80, 201, 0, 1, 0, 0, 0, 1]
}

#[derive(Debug, Clone)]
enum Junk {
    Bytes(Vec<u8>),
    Mutated {
        base: u8,
        flips: Vec<(usize, u8)>,
        cut: usize,
    },
}

fn junk() -> impl Strategy<Value = Junk> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..1600).prop_map(Junk::Bytes),
        (
            0u8..4,
            proptest::collection::vec((0usize..200, any::<u8>()), 1..8),
            0usize..200
        )
            .prop_map(|(base, flips, cut)| Junk::Mutated { base, flips, cut }),
    ]
}

fn render(j: &Junk, seq: u16) -> Vec<u8> {
    match j {
        Junk::Bytes(b) => b.clone(),
        Junk::Mutated { base, flips, cut } => {
            let mut p = match base {
                0 => valid_rtp(0, seq),
                1 => valid_rtp(101, seq),
                2 => valid_rtp(13, seq),
                _ => valid_rtcp(),
            };
            let len = p.len();
            for &(i, x) in flips {
                p[i % len] ^= x;
            }
            p.truncate((*cut).max(1).min(p.len()));
            p
        }
    }
}

/// Cases per run: 24 by default (CI); `EARSHOT_CASES=N` for a long search. The generator
/// is seeded from [`seed_for`] (`EARSHOT_SEED` overrides it), so a failure replays: the
/// run prints its seed, and proptest prints the minimal failing input.
fn config() -> ProptestConfig {
    let seed = seed_for("arbitrary_datagrams_junk");
    eprintln!("arbitrary_datagrams: junk seed = {seed} (replay with EARSHOT_SEED={seed})");
    ProptestConfig {
        cases: std::env::var("EARSHOT_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(24),
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_datagrams_never_disturb_the_shard(
        junks in proptest::collection::vec((junk(), 0usize..5, any::<bool>()), 50..200),
    ) {
        let mut sim = Sim::new("arbitrary_datagrams", seed_for("arbitrary_datagrams"));
        let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
        let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
        let s = sim.add_party(PartyConfig::tone("supervisor", SUPERVISOR_HZ));
        sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Monitor));
        sim.run_for(ms(300));
        let parties = [c, a, s];
        let stranger: SocketAddr = "10.9.9.9:9999".parse().unwrap();
        let received_before = sim.stats().packets_in;
        let n = junks.len() as u64;
        for (k, (j, target, wrong_source)) in junks.iter().enumerate() {
            let (port, from) = match target {
                0..=2 => {
                    let p = parties[*target];
                    let from = if *wrong_source { stranger } else { sim.addr(p) };
                    (sim.engine_port(p), from)
                }
                3 => (sim.engine_port(parties[k % 3]) + 1, sim.addr(parties[k % 3])),
                _ => (9, stranger),
            };
            let at = sim.now() + ms(k as u64 % 40);
            sim.inject_at(at, port, from, render(j, 40_000 + k as u16));
            if k % 50 == 25 {
                sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Barge));
            }
        }
        sim.run_for(ms(200));
        // Every datagram reached the shard and was counted (junk to a port outside the
        // shard's range included), and the shard is still running.
        let st = sim.stats();
        prop_assert!(st.packets_in >= received_before + n, "{} < {} + {n}", st.packets_in, received_before);
        // After the junk, a barge still carries every tone to everyone who should hear it.
        sim.set_hearing(&Hearing::call(c, a).with(s, a, Mode::Barge));
        let start = sim.now();
        sim.run_for(ms(1_500));
        let (from, to) = (start + ms(400), before(sim.now(), ms(100)));
        for (l, hz) in [(c, AGENT_HZ), (c, SUPERVISOR_HZ), (a, CUSTOMER_HZ), (s, CUSTOMER_HZ), (s, AGENT_HZ)] {
            prop_assert!(
                sim.listener(l).hears(hz, from, to),
                "{} misses {hz} Hz after the junk: {:?}; jitter buffers: {:?}",
                sim.name(l),
                sim.listener(l).tone_report(hz, from, to),
                parties.map(|p| sim.shard().jitter_stats(sim.leg(p)))
            );
        }
    }
}
