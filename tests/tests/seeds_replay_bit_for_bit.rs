//! The same seed replays a run bit for bit: every datagram the engine sends, its time,
//! port and destination are identical across two runs with jitter, loss, duplicates,
//! latching, DTMF and live switches. A different seed gives a different run (so the seed
//! really drives the randomness).

use earshot_media::wire::dtmf::DtmfEvent;
use earshot_tests::sim::talker::DtmfPlan;
use earshot_tests::sim::world::Captured;
use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Link, Mode, PartyConfig, SUPERVISOR_HZ, SeedGuard, Sim, ms,
    seed_for,
};

fn run(seed: u64) -> Vec<Captured> {
    let mut sim = Sim::new("seeds_replay", seed);
    let rough = Link::with_jitter(5, 40).lossy(0.03).duplicating(0.02);
    let party = |name: &str, hz: f64| PartyConfig {
        uplink: rough,
        downlink: rough,
        ..PartyConfig::tone(name, hz)
    };
    let c = sim.add_party(PartyConfig {
        latch: true,
        ..party("customer", CUSTOMER_HZ)
    });
    let a = sim.add_party(party("agent", AGENT_HZ));
    let s = sim.add_party(party("supervisor", SUPERVISOR_HZ));
    sim.talker_mut(c).add_dtmf(DtmfPlan {
        start_frame: 30,
        frames: 6,
        event: DtmfEvent::Pound,
    });
    for h in [
        Hearing::call(c, a).with(s, a, Mode::Monitor),
        Hearing::call(c, a).with(s, a, Mode::Barge),
        Hearing::held(c, a).with(s, a, Mode::Coach),
    ] {
        sim.set_hearing(&h);
        sim.run_for(ms(777));
    }
    sim.captured().to_vec()
}

#[test]
fn seeds_replay_bit_for_bit() {
    let seed = seed_for("seeds_replay");
    let _guard = SeedGuard::new("seeds_replay", seed);
    let first = run(seed);
    let second = run(seed);
    assert!(
        first.len() > 200,
        "only {} datagrams: the run proves little",
        first.len()
    );
    assert_eq!(
        first.len(),
        second.len(),
        "the replay sent a different number of datagrams"
    );
    if let Some(i) = (0..first.len()).find(|&i| first[i] != second[i]) {
        panic!("datagram {i} differs: {:?} vs {:?}", first[i], second[i]);
    }
    let other = run(seed ^ 0x5eed);
    assert_ne!(first, other, "a different seed gave the identical run");
}
