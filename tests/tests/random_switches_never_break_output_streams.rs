//! Property: any sequence of plans (monitor, coach or barge by a supervisor, hold,
//! resume, supervisor leaving) applied live at any moment never panics the shard, and
//! every output leg's RTP stream stays continuous (one SSRC, seq +1, timestamps forward
//! and within a frame of elapsed time, marker after each switch).

use earshot_tests::sim::continuity::{StreamLimits, check_stream};
use earshot_tests::sim::{AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, Party, PartyConfig, SUPERVISOR_HZ, Sim, ms};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Step {
    Call,
    Hold,
    Supervise { mode: u8, on_customer: bool, held: bool },
}

fn hearing(step: Step, c: Party, a: Party, s: Party) -> Hearing {
    match step {
        Step::Call => Hearing::call(c, a),
        Step::Hold => Hearing::held(c, a),
        Step::Supervise { mode, on_customer, held } => {
            let base = if held { Hearing::held(c, a) } else { Hearing::call(c, a) };
            // Coach and barge need an internal target (SPEC section 2): the agent.
            let (mode, target) = match mode % 3 {
                0 => (Mode::Monitor, if on_customer { c } else { a }),
                1 => (Mode::Coach, a),
                _ => (Mode::Barge, a),
            };
            base.with(s, target, mode)
        }
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => Just(Step::Call),
        1 => Just(Step::Hold),
        4 => (any::<u8>(), any::<bool>(), any::<bool>()).prop_map(|(mode, on_customer, held)| Step::Supervise { mode, on_customer, held }),
    ]
}

proptest! {
    // Failures print the minimal input (seed and steps); no regression file, so that a
    // run never writes into the source tree.
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_switches_never_break_output_streams(
        seed in any::<u64>(),
        steps in prop::collection::vec((step(), 1u64..600), 1..10),
    ) {
        let mut sim = Sim::new("random_switches", seed);
        let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
        let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
        let s = sim.add_party(PartyConfig::tone("supervisor", SUPERVISOR_HZ));
        for (st, run_ms) in &steps {
            sim.set_hearing(&hearing(*st, c, a, s));
            sim.run_for(ms(*run_ms));
        }
        sim.run_for(ms(200));
        let parties = [c, a, s];
        for p in parties {
            let mut switches = Vec::new();
            let mut before = None;
            for (at, h) in sim.plan_changes() {
                let kind = h.output_of(p, parties.iter().copied());
                if before.is_some_and(|b| b != kind) {
                    switches.push(*at);
                }
                before = Some(kind);
            }
            let limits = StreamLimits { frame_samples: 160, ts_slack_samples: 16, allow_seq_gaps: false };
            let checked = check_stream(sim.listener(p).packets(), 0, limits, &switches);
            prop_assert!(checked.is_ok(), "{}: {:?} (steps {:?})", sim.name(p), checked, steps);
        }
    }
}
