//! Random command sequences over a small id space (so ids collide and every rule is
//! exercised), checking the invariants after every step, the hear relation against an
//! independent brute-force reading of SPEC section 1 rules 1-4, atomicity of refusals,
//! idempotency of retries, undo by checkpoint, and serde/journal round trips.

use std::collections::{BTreeMap, BTreeSet};

use earshot_rules::*;
use proptest::prelude::*;

const INTERACTIONS: [&str; 4] = ["i0", "i1", "i2", "i3"];
const PARTICIPANTS: [&str; 6] = ["p0", "p1", "p2", "p3", "p4", "p5"];
const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
/// Supervisor leg ids: mostly their own pool, sometimes a call participant's id (taken).
const LEGS: [&str; 3] = ["v0", "v1", "v2"];
const SUPERVISIONS: [&str; 12] = [
    "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11",
];
const ALL_PERMS: [&str; 4] = [PERM_MONITOR, PERM_COACH, PERM_BARGE, PERM_CALL_ADD];

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(items)
}

fn iid() -> impl Strategy<Value = String> {
    pick(&INTERACTIONS).prop_map(str::to_owned)
}

fn pid() -> impl Strategy<Value = String> {
    pick(&PARTICIPANTS).prop_map(str::to_owned)
}

fn uid() -> impl Strategy<Value = String> {
    pick(&USERS).prop_map(str::to_owned)
}

fn sid() -> impl Strategy<Value = String> {
    pick(&SUPERVISIONS).prop_map(str::to_owned)
}

fn spec() -> impl Strategy<Value = ParticipantSpec> {
    pid().prop_flat_map(spec_for)
}

fn spec_for(participant_id: String) -> impl Strategy<Value = ParticipantSpec> {
    (
        Just(participant_id),
        any::<bool>(),
        prop_oneof![
            4 => Just(Role::Customer),
            4 => Just(Role::Agent),
            2 => Just(Role::Specialist),
            1 => Just(Role::Other),
            1 => Just(Role::Supervisor),
        ],
        proptest::option::weighted(0.3, uid()),
    )
        .prop_map(
            |(participant_id, internal, role, user_id)| ParticipantSpec {
                participant_id,
                kind: if internal {
                    ParticipantKind::Internal
                } else {
                    ParticipantKind::External
                },
                role,
                user_id,
            },
        )
}

fn start() -> impl Strategy<Value = StartSupervision> {
    let leg = prop_oneof![4 => pick(&LEGS).prop_map(str::to_owned), 1 => pid()];
    // Targets mostly among the prelude's participants, so starts meet each other.
    let target = prop_oneof![3 => pick(&PARTICIPANTS[..3]).prop_map(str::to_owned), 1 => pid()];
    (
        iid(),
        sid(),
        uid(),
        leg,
        target,
        proptest::bool::weighted(0.8),
    )
        .prop_map(
            |(interaction_id, supervision_id, user, sp, target, auto_answer)| StartSupervision {
                interaction_id,
                supervision_id,
                supervisor_user_id: user,
                supervisor_participant_id: sp,
                target_participant_id: target,
                auto_answer,
            },
        )
}

fn command() -> impl Strategy<Value = Command> {
    let consult_end = prop_oneof![
        Just(ConsultEnd::Cancel),
        Just(ConsultEnd::Transfer),
        Just(ConsultEnd::Conference)
    ];
    prop_oneof![
        2 => (uid(), prop_oneof![
            2 => Just(ALL_PERMS.to_vec()),
            1 => proptest::sample::subsequence(ALL_PERMS.to_vec(), 0..=4),
        ]).prop_map(
            |(user_id, perms)| Command::UpsertUser {
                user_id,
                display_name: "name".into(),
                permissions: perms.into_iter().map(str::to_owned).collect(),
            }
        ),
        2 => (uid(), prop_oneof![3 => Just(Presence::Available), 1 => Just(Presence::Busy)])
            .prop_map(|(user_id, presence)| Command::SetPresence { user_id, presence }),
        3 => (iid(), prop_oneof![
            // Mostly distinct ids (a valid call), sometimes anything (duplicates refused).
            4 => proptest::sample::subsequence(PARTICIPANTS.to_vec(), 0..5).prop_flat_map(|ids| {
                ids.into_iter().map(|id| spec_for(id.to_owned())).collect::<Vec<_>>()
            }),
            1 => proptest::collection::vec(spec(), 0..4),
        ]).prop_map(
            |(interaction_id, participants)| Command::CreateInteraction {
                interaction_id,
                participants,
            }
        ),
        1 => iid().prop_map(|interaction_id| Command::EndInteraction { interaction_id }),
        3 => (iid(), spec(), proptest::option::of(pid())).prop_map(
            |(interaction_id, participant, join_group_of)| Command::AddParticipant {
                interaction_id,
                participant,
                join_group_of,
            }
        ),
        2 => (iid(), pid()).prop_map(|(interaction_id, participant_id)| {
            Command::RemoveParticipant { interaction_id, participant_id }
        }),
        2 => (iid(), pid()).prop_map(|(interaction_id, participant_id)| Command::Hold {
            interaction_id,
            participant_id,
        }),
        2 => (iid(), pid()).prop_map(|(interaction_id, participant_id)| Command::Resume {
            interaction_id,
            participant_id,
        }),
        2 => (iid(), pid(), spec()).prop_map(|(interaction_id, agent, specialist)| {
            Command::StartConsult {
                interaction_id,
                agent_participant_id: agent,
                specialist,
            }
        }),
        2 => (iid(), consult_end).prop_map(|(interaction_id, mode)| Command::EndConsult {
            interaction_id,
            mode,
        }),
        2 => (iid(), pid(), spec()).prop_map(|(interaction_id, from, to)| Command::Transfer {
            interaction_id,
            from_participant_id: from,
            to,
        }),
        2 => (iid(), proptest::collection::vec(pid(), 1..4)).prop_map(
            |(interaction_id, participant_ids)| Command::Conference {
                interaction_id,
                participant_ids,
            }
        ),
        4 => start().prop_map(Command::StartMonitor),
        4 => start().prop_map(Command::StartCoach),
        4 => start().prop_map(Command::StartBarge),
        3 => sid().prop_map(|supervision_id| Command::StopSupervision { supervision_id }),
        2 => (iid(), pid()).prop_map(|(interaction_id, participant_id)| {
            Command::MediaConnected { interaction_id, participant_id }
        }),
        1 => (iid(), pid()).prop_map(|(interaction_id, participant_id)| {
            Command::MediaTimeout { interaction_id, participant_id }
        }),
    ]
}

/// One command, or (sometimes) a monitor/coach start followed by the same supervisor's
/// barge on the same target (under the same or a new id), so escalations happen often.
fn command_group() -> impl Strategy<Value = Vec<Command>> {
    prop_oneof![
        12 => command().prop_map(|c| vec![c]),
        1 => (start(), any::<bool>(), any::<bool>(), sid()).prop_map(
            |(r, coach, same_id, other_id)| {
                let mut escalate = r.clone();
                if !same_id {
                    escalate.supervision_id = other_id;
                }
                let first = if coach {
                    Command::StartCoach(r)
                } else {
                    Command::StartMonitor(r)
                };
                vec![first, Command::StartBarge(escalate)]
            }
        ),
    ]
}

/// A sequence of up to `max_groups` groups, flattened.
fn commands(max_groups: usize) -> impl Strategy<Value = Vec<Command>> {
    proptest::collection::vec(command_group(), 1..max_groups)
        .prop_map(|groups| groups.into_iter().flatten().collect())
}

/// SPEC section 1 rules 1-4, read pair by pair, from the talk groups and supervisions
/// alone (not from the crate's own relation code).
fn brute_force_edges(st: &State, interaction: &Interaction) -> BTreeSet<(String, String)> {
    let mut edges = BTreeSet::new();
    if interaction.is_ended() {
        return edges;
    }
    let groups = interaction.talk_groups();
    let group_index = |p: &str| groups.iter().position(|g| g.iter().any(|m| m == p));
    // Active supervision by supervisor leg.
    let active: BTreeMap<String, Supervision> = interaction
        .supervision_ids
        .iter()
        .filter_map(|id| st.supervision(id))
        .filter(|s| s.state == SupervisionState::Active)
        .map(|s| (s.supervisor_participant_id.clone(), s.clone()))
        .collect();
    // The group a participant "is a member of for rule 1": its own talk group, or for a
    // barging supervisor its target's.
    let member_group = |p: &Participant| -> Option<usize> {
        if !p.is_supervisor() {
            return group_index(&p.participant_id);
        }
        let s = active.get(&p.participant_id)?;
        if s.mode == SupervisionMode::Barge {
            group_index(&s.target_participant_id)
        } else {
            None
        }
    };
    for l in &interaction.participants {
        for x in &interaction.participants {
            if l.participant_id == x.participant_id {
                continue;
            }
            let (lg, xg) = (member_group(l), member_group(x));
            // Rules 1 and 2.
            let mut hears = lg.is_some() && lg == xg;
            // Rule 3: a monitor or coach hears every member of its target's group.
            if let Some(s) = active.get(&l.participant_id)
                && s.mode != SupervisionMode::Barge
                && xg.is_some()
                && xg == group_index(&s.target_participant_id)
            {
                hears = true;
            }
            // Rule 4: the coached target hears its coach.
            if let Some(s) = active.get(&x.participant_id)
                && s.mode == SupervisionMode::Coach
                && s.target_participant_id == l.participant_id
            {
                hears = true;
            }
            if hears {
                edges.insert((l.participant_id.clone(), x.participant_id.clone()));
            }
        }
    }
    edges
}

fn check_invariants(st: &State) -> Result<(), TestCaseError> {
    // A supervisor is live on at most one interaction (SUPERVISOR_BUSY).
    let mut busy: BTreeMap<&str, &str> = BTreeMap::new();
    for s in st.supervisions(&SupervisionFilter {
        live_only: true,
        ..SupervisionFilter::default()
    }) {
        if let Some(other) = busy.insert(&s.supervisor_user_id, &s.interaction_id) {
            prop_assert_eq!(
                other,
                s.interaction_id.as_str(),
                "{} is live on two interactions",
                s.supervisor_user_id
            );
        }
    }
    for interaction in st.interactions() {
        let iid = &interaction.interaction_id;
        let sups: Vec<&Supervision> = interaction
            .supervision_ids
            .iter()
            .map(|id| st.supervision(id).expect("listed supervision exists"))
            .collect();
        let live: Vec<&&Supervision> = sups.iter().filter(|s| s.is_live()).collect();

        // One live coach per target; one live supervision per supervisor.
        let mut coached = BTreeSet::new();
        let mut supervisors = BTreeSet::new();
        for s in &live {
            if s.mode == SupervisionMode::Coach {
                prop_assert!(
                    coached.insert(&s.target_participant_id),
                    "two coaches in {iid}"
                );
            }
            prop_assert!(
                supervisors.insert(&s.supervisor_user_id),
                "two live supervisions by {} in {iid}",
                s.supervisor_user_id
            );
            // A live supervision's target is a connected non-supervisor; its leg is
            // CONNECTING exactly while the supervision is.
            let target = interaction.participant(&s.target_participant_id).unwrap();
            prop_assert!(!target.is_supervisor() && target.is_connected());
            let leg = interaction
                .participant(&s.supervisor_participant_id)
                .unwrap();
            prop_assert!(leg.is_supervisor());
            prop_assert_eq!(
                leg.supervision_id.as_deref(),
                Some(s.supervision_id.as_str())
            );
            let expected = match s.state {
                SupervisionState::Connecting => ParticipantState::Connecting,
                _ => ParticipantState::Connected,
            };
            prop_assert_eq!(leg.state, expected);
            prop_assert!(s.requested_mode != SupervisionMode::Barge || s.auto_answer);
        }
        // Every non-disconnected supervisor leg serves a live supervision.
        for p in interaction
            .participants
            .iter()
            .filter(|p| p.is_supervisor())
        {
            if p.state != ParticipantState::Disconnected {
                let s = st
                    .supervision(p.supervision_id.as_deref().unwrap())
                    .unwrap();
                prop_assert!(s.is_live());
            }
        }

        // Every connected non-supervisor participant in exactly one talk group, and
        // nobody else in any.
        let groups = interaction.talk_groups();
        let mut seen = BTreeMap::new();
        for g in &groups {
            prop_assert!(!g.is_empty());
            for m in g {
                *seen.entry(m.clone()).or_insert(0) += 1;
            }
        }
        for p in &interaction.participants {
            let count = seen.get(&p.participant_id).copied().unwrap_or(0);
            let expected = usize::from(!p.is_supervisor() && p.is_connected());
            prop_assert_eq!(count, expected, "{} in {} groups", p.participant_id, count);
        }
        prop_assert_eq!(seen.len(), groups.iter().map(Vec::len).sum::<usize>());

        // An active consult has both parties connected.
        if let Some(c) = &interaction.consult {
            prop_assert!(
                interaction
                    .participant(&c.agent_participant_id)
                    .unwrap()
                    .is_connected()
            );
            let s = interaction
                .participant(&c.specialist_participant_id)
                .unwrap();
            prop_assert!(s.is_connected());
        }
        if interaction.is_ended() {
            prop_assert!(live.is_empty());
            prop_assert!(interaction.consult.is_none());
        }

        // The hear relation.
        let rel = st.hear_relation(iid).unwrap();
        for (l, x) in &rel.edges {
            prop_assert!(l != x, "{l} hears itself");
            prop_assert!(rel.legs.contains(l) && rel.legs.contains(x));
        }
        for s in &live {
            if s.mode == SupervisionMode::Monitor {
                prop_assert_eq!(rel.listeners_of(&s.supervisor_participant_id).count(), 0);
            }
        }
        let legs: BTreeSet<String> = if interaction.is_ended() {
            BTreeSet::new()
        } else {
            interaction
                .participants
                .iter()
                .filter(|p| p.state != ParticipantState::Disconnected)
                .map(|p| p.participant_id.clone())
                .collect()
        };
        prop_assert_eq!(&rel.legs, &legs);
        prop_assert_eq!(&rel.edges, &brute_force_edges(st, interaction));
    }
    Ok(())
}

fn scope(st: &State, cmd: &Command) -> Option<String> {
    match cmd {
        Command::UpsertUser { .. } | Command::SetPresence { .. } => None,
        Command::StopSupervision { supervision_id } => st
            .supervision(supervision_id)
            .map(|s| s.interaction_id.clone()),
        Command::StartMonitor(r) | Command::StartCoach(r) | Command::StartBarge(r) => {
            Some(r.interaction_id.clone())
        }
        Command::CreateInteraction { interaction_id, .. }
        | Command::EndInteraction { interaction_id }
        | Command::AddParticipant { interaction_id, .. }
        | Command::RemoveParticipant { interaction_id, .. }
        | Command::Hold { interaction_id, .. }
        | Command::Resume { interaction_id, .. }
        | Command::StartConsult { interaction_id, .. }
        | Command::EndConsult { interaction_id, .. }
        | Command::Transfer { interaction_id, .. }
        | Command::Conference { interaction_id, .. }
        | Command::MediaConnected { interaction_id, .. }
        | Command::MediaTimeout { interaction_id, .. }
        | Command::UpdateMedia { interaction_id, .. } => Some(interaction_id.clone()),
    }
}

/// Every user exists with every permission and is AVAILABLE, `i0` is a call of customer
/// `p0` and agent `p1` (user `u3`), `i1` the same plus agent `p2` in conference; random
/// commands then change that.
fn prelude() -> State {
    let mut st = State::default();
    for iid in &INTERACTIONS[..2] {
        st.apply(
            0,
            Command::CreateInteraction {
                interaction_id: (*iid).to_owned(),
                participants: vec![
                    ParticipantSpec::new("p0", ParticipantKind::External, Role::Customer),
                    ParticipantSpec::new("p1", ParticipantKind::Internal, Role::Agent)
                        .with_user("u3"),
                ],
            },
        )
        .unwrap();
    }
    // i1 is a three-party conference.
    st.apply(
        0,
        Command::AddParticipant {
            interaction_id: "i1".into(),
            participant: ParticipantSpec::new("p2", ParticipantKind::Internal, Role::Agent),
            join_group_of: Some("p0".into()),
        },
    )
    .unwrap();
    for u in USERS {
        st.apply(
            0,
            Command::UpsertUser {
                user_id: u.into(),
                display_name: u.into(),
                permissions: ALL_PERMS.iter().map(|p| (*p).to_owned()).collect(),
            },
        )
        .unwrap();
        st.apply(
            0,
            Command::SetPresence {
                user_id: u.into(),
                presence: Presence::Available,
            },
        )
        .unwrap();
    }
    st
}

/// Applies `cmds` checking every step; returns the state and how many were accepted.
fn run(cmds: &[Command]) -> Result<(State, usize), TestCaseError> {
    let mut st = prelude();
    let mut accepted = 0;
    for (step, cmd) in cmds.iter().enumerate() {
        let now_ms = 1_000 + 10 * step as u64;
        let before = st.clone();
        let where_ = scope(&st, cmd);
        let checkpoint = st.checkpoint(cmd);
        let result = st.apply(now_ms, cmd.clone());
        // Whatever the command did, restoring its checkpoint gives the state back
        // exactly (the control sidecar's undo when the engine refuses).
        let mut undone = st.clone();
        undone.restore(checkpoint);
        prop_assert_eq!(&undone, &before, "restoring the checkpoint of {:?}", cmd);
        match result {
            Err(e) => {
                prop_assert_eq!(&st, &before, "refusal {} changed the state", e);
                // SUPERVISOR_BUSY exactly when the supervisor is live on another call.
                if e.reason == reason::SUPERVISOR_BUSY {
                    let (Command::StartMonitor(r)
                    | Command::StartCoach(r)
                    | Command::StartBarge(r)) = cmd
                    else {
                        return Err(TestCaseError::fail(format!("SUPERVISOR_BUSY for {cmd:?}")));
                    };
                    let elsewhere = before
                        .supervisions(&SupervisionFilter {
                            supervisor_user_id: Some(r.supervisor_user_id.clone()),
                            live_only: true,
                            ..SupervisionFilter::default()
                        })
                        .into_iter()
                        .any(|s| s.interaction_id != r.interaction_id);
                    prop_assert!(
                        elsewhere,
                        "SUPERVISOR_BUSY without a live supervision elsewhere"
                    );
                }
            }
            Ok(out) => {
                accepted += 1;
                if out.existing {
                    prop_assert_eq!(&st, &before, "an `existing` outcome changed the state");
                    prop_assert!(out.events.is_empty() && out.hear_changed.is_empty());
                }
                // Oracle for SUPERVISOR_BUSY: a supervision that starts fresh (not an
                // escalation in place) never finds its supervisor live elsewhere.
                if let Command::StartMonitor(r) | Command::StartCoach(r) | Command::StartBarge(r) =
                    cmd
                    && !out.existing
                {
                    let fresh = before
                        .supervisions(&SupervisionFilter {
                            interaction_id: Some(r.interaction_id.clone()),
                            supervisor_user_id: Some(r.supervisor_user_id.clone()),
                            live_only: true,
                            ..SupervisionFilter::default()
                        })
                        .is_empty();
                    let elsewhere = before
                        .supervisions(&SupervisionFilter {
                            supervisor_user_id: Some(r.supervisor_user_id.clone()),
                            live_only: true,
                            ..SupervisionFilter::default()
                        })
                        .into_iter()
                        .any(|s| s.interaction_id != r.interaction_id);
                    prop_assert!(
                        !(fresh && elsewhere),
                        "{:?} started while busy elsewhere",
                        cmd
                    );
                }
                for e in &out.events {
                    prop_assert_eq!(e.at_ms, now_ms);
                    // Directory events belong to no interaction.
                    let expected = where_.clone().unwrap_or_default();
                    prop_assert_eq!(&e.interaction_id, &expected);
                }
                let rel_before = where_.as_deref().and_then(|i| before.hear_relation(i));
                let rel_after = where_.as_deref().and_then(|i| st.hear_relation(i));
                prop_assert_eq!(!out.hear_changed.is_empty(), rel_before != rel_after);
                // An immediate identical retry is accepted and changes nothing.
                let settled = st.clone();
                let retry = st.apply(now_ms + 5, cmd.clone());
                prop_assert!(
                    matches!(&retry, Ok(o) if o.existing && o.events.is_empty()),
                    "retry of {:?} gave {:?}",
                    cmd,
                    retry
                );
                prop_assert_eq!(&st, &settled);
            }
        }
        check_invariants(&st)?;
    }
    Ok((st, accepted))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_every_invariant(
        cmds in commands(190)
    ) {
        run(&cmds)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn state_commands_and_outcomes_survive_serde_and_replay(
        cmds in commands(150)
    ) {
        let (st, _) = run(&cmds)?;
        let json = serde_json::to_string(&st).unwrap();
        let back: State = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &st);

        // A journal of the commands (as JSON) replayed into a fresh state rebuilds it,
        // with the same outcomes.
        let mut original = prelude();
        let mut replayed = prelude();
        for (step, cmd) in cmds.iter().enumerate() {
            let now_ms = 1_000 + 10 * step as u64;
            let line = serde_json::to_string(cmd).unwrap();
            let decoded: Command = serde_json::from_str(&line).unwrap();
            prop_assert_eq!(&decoded, cmd);
            let a = original.apply(now_ms, cmd.clone());
            let b = replayed.apply(now_ms, decoded);
            prop_assert_eq!(&a, &b);
            if let Ok(out) = a {
                let out_json = serde_json::to_string(&out).unwrap();
                let out_back: Outcome = serde_json::from_str(&out_json).unwrap();
                prop_assert_eq!(out_back, out);
            }
        }
        prop_assert_eq!(&replayed, &original);
    }
}

/// The generator reaches the interesting states: without this a property test could
/// pass vacuously on sequences that are all refused.
#[test]
fn random_sequences_reach_supervisions_consults_and_escalations() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut supervised, mut consulted, mut escalated, mut accepted, mut total) = (0, 0, 0, 0, 0);
    let mut reasons = BTreeMap::new();
    for _ in 0..64 {
        let cmds = commands(190).new_tree(&mut runner).unwrap().current();
        let mut st = prelude();
        for (step, cmd) in cmds.into_iter().enumerate() {
            total += 1;
            match st.apply(step as u64, cmd) {
                Err(e) => *reasons.entry(e.reason).or_insert(0) += 1,
                Ok(out) => {
                    accepted += usize::from(!out.existing);
                    for e in &out.events {
                        match e.kind {
                            EventKind::MonitorStarted
                            | EventKind::CoachStarted
                            | EventKind::BargeStarted => supervised += 1,
                            EventKind::ConsultStarted => consulted += 1,
                            _ => {}
                        }
                        if e.detail("escalated_from").is_some() {
                            escalated += 1;
                        }
                    }
                }
            }
        }
    }
    // Every SPEC section 2 refusal is reached by the random sequences.
    for why in [
        reason::MISSING_PERMISSION,
        reason::SUPERVISOR_NOT_AVAILABLE,
        reason::COACH_ALREADY_ACTIVE,
        reason::TARGET_EXTERNAL,
        reason::TARGET_IN_CONSULT,
        reason::TARGET_IN_CONFERENCE,
        reason::STOP_CURRENT_FIRST,
        reason::STOP_BARGE_FIRST,
        reason::SUPERVISOR_ALREADY_ACTIVE,
        reason::SUPERVISOR_BUSY,
        reason::SUPERVISOR_IS_PARTICIPANT,
        reason::TARGET_NOT_CONNECTED,
        reason::INTERACTION_ENDED,
    ] {
        assert!(
            reasons.contains_key(why),
            "{why} never reached: {reasons:?}"
        );
    }
    assert!(supervised > 100, "only {supervised} supervisions started");
    assert!(consulted > 10, "only {consulted} consults");
    assert!(escalated > 5, "only {escalated} escalations");
    assert!(
        accepted * 10 > total,
        "only {accepted} of {total} changed something"
    );
}
