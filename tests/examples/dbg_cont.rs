use earshot_tests::sim::{AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SUPERVISOR_HZ, Sim, ms};
fn main() {
    let mut sim = Sim::new("continuity", 8160981832647174367);
    let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
    let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
    let s = sim.add_party(PartyConfig::tone("supervisor", SUPERVISOR_HZ));
    let steps = [
        Hearing::call(c, a).with(s, a, Mode::Monitor),
        Hearing::call(c, a).with(s, a, Mode::Coach),
        Hearing::call(c, a).with(s, a, Mode::Barge),
        Hearing::call(c, a).with(s, a, Mode::Monitor),
        Hearing::held(c, a).with(s, a, Mode::Monitor),
        Hearing::call(c, a).with(s, a, Mode::Monitor),
    ];
    for h in &steps { eprintln!("plan at {:?}", sim.now()); sim.set_hearing(h); sim.run_for(ms(1_013)); }
    for p in sim.listener(c).packets().iter().filter(|p| p.sent_at.as_nanos() > 5_900_000_000 && p.sent_at.as_nanos() < 6_200_000_000) {
        eprintln!("{:?} ssrc={:#x} seq={} ts={} m={} pt={} len={}", p.sent_at, p.ssrc, p.seq, p.ts, p.marker, p.pt, p.payload.len());
    }
}
