//! Talk groups follow the call (SPEC section 1 table), the product table, and what
//! happens to supervisions as the call moves: consult, transfer, conference, escalation.

mod common;

use common::*;
use earshot_rules::*;

/// Who a supervisor monitoring `target` hears after `event` (SPEC product table).
fn monitored_hears(target: &str, event: &str) -> Vec<String> {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(monitor("i", "s1", "sup1", "sp1", target));
    match event {
        "active" => {}
        "hold" => {
            fx.ok(hold("i", "c"));
        }
        "transfer" => {
            fx.ok(transfer("i", "a", agent("b")));
        }
        other => panic!("unknown event {other}"),
    }
    // Nobody hears the monitor, whatever happened.
    assert!(fx.heard_by("i", "sp1").is_empty());
    fx.hears("i", "sp1")
}

#[test]
fn product_table_monitoring_the_agent() {
    assert_eq!(monitored_hears("a", "active"), v(&["a", "c"]), "both");
    assert_eq!(monitored_hears("a", "hold"), v(&["a"]), "agent");
    assert_eq!(monitored_hears("a", "transfer"), v(&["a"]), "agent");
}

#[test]
fn product_table_monitoring_the_customer() {
    assert_eq!(monitored_hears("c", "active"), v(&["a", "c"]), "both");
    assert_eq!(monitored_hears("c", "hold"), v(&["c"]), "customer");
    assert_eq!(
        monitored_hears("c", "transfer"),
        v(&["b", "c"]),
        "customer and new agent"
    );
}

#[test]
fn create_puts_everyone_in_one_group_and_hold_resume_split_and_rejoin() {
    let mut fx = Fx::new();
    let out = fx.ok(Command::CreateInteraction {
        interaction_id: "i".into(),
        participants: vec![customer("c"), agent("a")],
    });
    assert_eq!(
        kinds(&out),
        vec![
            EventKind::InteractionCreated,
            EventKind::ParticipantJoined,
            EventKind::ParticipantJoined
        ]
    );
    assert_eq!(out.hear_changed, v(&["i"]));
    assert_eq!(fx.groups("i"), vec![v(&["a", "c"])]);
    let out = fx.ok(hold("i", "c"));
    assert_eq!(kinds(&out), vec![EventKind::HoldStarted]);
    assert_eq!(fx.groups("i"), vec![v(&["a"]), v(&["c"])]);
    assert!(fx.hears("i", "a").is_empty() && fx.hears("i", "c").is_empty());
    assert!(fx.ok(hold("i", "c")).existing);
    let out = fx.ok(resume("i", "c"));
    assert_eq!(kinds(&out), vec![EventKind::HoldEnded]);
    assert_eq!(fx.groups("i"), vec![v(&["a", "c"])]);
    assert!(fx.ok(resume("i", "c")).existing);
}

#[test]
fn both_held_stay_apart_until_both_resume() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(hold("i", "c"));
    fx.ok(hold("i", "a"));
    fx.ok(resume("i", "c"));
    assert_eq!(fx.groups("i"), vec![v(&["a"]), v(&["c"])]);
    fx.ok(resume("i", "a"));
    assert_eq!(fx.groups("i"), vec![v(&["a", "c"])]);
}

#[test]
fn consult_parks_the_customer_and_cancel_brings_the_agent_back() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(monitor("i", "m", "sup1", "sp1", "a"));
    let out = fx.ok(start_consult("i", "a", specialist("s")));
    assert_eq!(
        kinds(&out),
        vec![EventKind::ParticipantJoined, EventKind::ConsultStarted]
    );
    assert_eq!(fx.groups("i"), vec![v(&["a", "s"]), v(&["c"])]);
    // The supervisor follows the agent into the consult.
    assert_eq!(fx.hears("i", "sp1"), v(&["a", "s"]));
    let out = fx.ok(end_consult("i", ConsultEnd::Cancel));
    assert_eq!(
        kinds(&out),
        vec![EventKind::ConsultEnded, EventKind::ParticipantLeft]
    );
    assert_eq!(out.events[0].detail("mode"), Some("CANCEL"));
    assert_eq!(fx.groups("i"), vec![v(&["a", "c"])]);
    let s = fx
        .st
        .interaction("i")
        .unwrap()
        .participant("s")
        .unwrap()
        .state;
    assert_eq!(s, ParticipantState::Disconnected);
    assert_eq!(fx.hears("i", "sp1"), v(&["a", "c"]));
    // Retrying the same end is quiet; another mode is refused.
    assert!(fx.ok(end_consult("i", ConsultEnd::Cancel)).existing);
    fx.refused(
        end_consult("i", ConsultEnd::Transfer),
        reason::NO_ACTIVE_CONSULT,
    );
}

#[test]
fn consult_transfer_hands_the_customer_to_the_specialist() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(monitor("i", "m", "sup1", "sp1", "c"));
    fx.ok(start_consult("i", "a", specialist("s")));
    assert_eq!(fx.hears("i", "sp1"), v(&["c"]));
    fx.ok(end_consult("i", ConsultEnd::Transfer));
    assert_eq!(fx.groups("i"), vec![v(&["a"]), v(&["c", "s"])]);
    assert_eq!(fx.hears("i", "sp1"), v(&["c", "s"]));
    // The agent is left alone and may be removed.
    fx.ok(remove("i", "a"));
    assert_eq!(fx.groups("i"), vec![v(&["c", "s"])]);
}

#[test]
fn consult_conference_joins_all_three() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(start_consult("i", "a", specialist("s")));
    fx.ok(end_consult("i", ConsultEnd::Conference));
    assert_eq!(fx.groups("i"), vec![v(&["a", "c", "s"])]);
    fx.refused(
        barge("i", "b", "sup1", "sp1", "a"),
        reason::TARGET_IN_CONFERENCE,
    );
}

#[test]
fn consult_refusals() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.refused(
        end_consult("i", ConsultEnd::Cancel),
        reason::NO_ACTIVE_CONSULT,
    );
    fx.ok(start_consult("i", "a", specialist("s")));
    // Identical retry.
    assert!(fx.ok(start_consult("i", "a", specialist("s"))).existing);
    fx.refused(
        start_consult("i", "c", specialist("s2")),
        reason::CONSULT_ALREADY_ACTIVE,
    );
    fx.refused(
        start_consult("i", "a", agent("s")),
        reason::PARTICIPANT_EXISTS,
    );
    fx.refused(transfer("i", "a", agent("b")), reason::CONSULT_ACTIVE);
    fx.refused(transfer("i", "s", agent("b")), reason::CONSULT_ACTIVE);
    fx.ok(end_consult("i", ConsultEnd::Cancel));
    fx.ok(hold("i", "a"));
    fx.refused(
        start_consult("i", "a", specialist("s3")),
        reason::PARTICIPANT_ON_HOLD,
    );
}

#[test]
fn specialist_hanging_up_cancels_the_consult_agent_hanging_up_transfers() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(start_consult("i", "a", specialist("s")));
    let out = fx.ok(remove("i", "s"));
    assert_eq!(
        kinds(&out),
        vec![EventKind::ParticipantLeft, EventKind::ConsultEnded]
    );
    assert_eq!(out.events[1].detail("cause"), Some("SPECIALIST_LEFT"));
    assert_eq!(fx.groups("i"), vec![v(&["a", "c"])]);

    fx.ok(start_consult("i", "a", specialist("s2")));
    let out = fx.ok(remove("i", "a"));
    assert_eq!(out.events[1].detail("mode"), Some("TRANSFER"));
    assert_eq!(fx.groups("i"), vec![v(&["c", "s2"])]);
}

#[test]
fn blind_transfer_replaces_the_agent_and_leaves_it_alone() {
    let mut fx = Fx::new();
    fx.call("i");
    let out = fx.ok(transfer("i", "a", agent("b")));
    assert_eq!(
        kinds(&out),
        vec![EventKind::ParticipantJoined, EventKind::Transferred]
    );
    assert_eq!(fx.groups("i"), vec![v(&["a"]), v(&["b", "c"])]);
    assert!(fx.ok(transfer("i", "a", agent("b"))).existing);
    fx.refused(
        transfer("i", "a", customer("b")),
        reason::PARTICIPANT_EXISTS,
    );
}

#[test]
fn transfer_while_the_customer_is_held_hands_over_the_held_customer() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(hold("i", "c"));
    fx.ok(transfer("i", "a", agent("b")));
    assert_eq!(fx.groups("i"), vec![v(&["a"]), v(&["b"]), v(&["c"])]);
    fx.ok(resume("i", "c"));
    assert_eq!(fx.groups("i"), vec![v(&["a"]), v(&["b", "c"])]);
}

#[test]
fn conference_merges_the_named_groups_and_takes_them_off_hold() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(add("i", agent("x"), None));
    fx.ok(add("i", customer("y"), Some("x")));
    assert_eq!(fx.groups("i"), vec![v(&["a", "c"]), v(&["x", "y"])]);
    fx.ok(hold("i", "c"));
    let out = fx.ok(conference("i", &["c", "x"]));
    assert_eq!(kinds(&out), vec![EventKind::Conferenced]);
    assert_eq!(fx.groups("i"), vec![v(&["a", "c", "x", "y"])]);
    assert!(fx.ok(conference("i", &["c", "x"])).existing);
    fx.refused(conference("i", &["c"]), reason::TOO_FEW_PARTICIPANTS);
    fx.refused(conference("i", &["c", "c"]), reason::DUPLICATE_PARTICIPANT);
    fx.ok(monitor("i", "m", "sup1", "sp1", "a"));
    fx.refused(
        conference("i", &["c", "sp1"]),
        reason::PARTICIPANT_IS_SUPERVISOR,
    );
}

#[test]
fn monitor_escalates_to_barge_keeping_id_and_leg() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(monitor("i", "s1", "sup1", "sp1", "a"));
    assert!(fx.heard_by("i", "sp1").is_empty());
    let out = fx.ok(barge("i", "s1", "sup1", "sp1", "a"));
    assert_eq!(
        kinds(&out),
        vec![EventKind::MonitorStopped, EventKind::BargeStarted]
    );
    assert_eq!(out.events[1].detail("escalated_from"), Some("MONITOR"));
    assert_eq!(out.subject, Subject::Supervision("s1".into()));
    assert_eq!(out.hear_changed, v(&["i"]));
    let s = fx.supervision("s1");
    assert_eq!(s.mode, SupervisionMode::Barge);
    assert_eq!(s.supervisor_participant_id, "sp1");
    assert_eq!(s.escalated_from, Some(SupervisionMode::Monitor));
    assert_eq!(fx.hears("i", "sp1"), v(&["a", "c"]));
    assert_eq!(fx.heard_by("i", "sp1"), v(&["a", "c"]));
    // Retrying either request changes nothing.
    assert!(fx.ok(barge("i", "s1", "sup1", "sp1", "a")).existing);
    assert!(fx.ok(monitor("i", "s1", "sup1", "sp1", "a")).existing);
    assert_eq!(fx.supervision("s1").mode, SupervisionMode::Barge);
}

#[test]
fn coach_escalates_to_barge_under_a_new_request_id() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(coach("i", "s1", "sup1", "sp1", "a"));
    assert_eq!(
        fx.heard_by("i", "sp1"),
        v(&["a"]),
        "only the agent hears the coach"
    );
    // The escalating request names a new id and another leg id: the supervision keeps
    // its id and its leg, and the new id becomes an alias.
    let out = fx.ok(barge("i", "s2", "sup1", "sp-other", "a"));
    assert_eq!(out.subject, Subject::Supervision("s1".into()));
    assert_eq!(
        kinds(&out),
        vec![EventKind::CoachStopped, EventKind::BargeStarted]
    );
    let s = fx.supervision("s2");
    assert_eq!(s.supervision_id, "s1");
    assert_eq!(s.supervisor_participant_id, "sp1");
    assert!(
        fx.st
            .interaction("i")
            .unwrap()
            .participant("sp-other")
            .is_none()
    );
    assert_eq!(fx.heard_by("i", "sp1"), v(&["a", "c"]));
    // The coach slot of the agent is free again.
    fx.ok(coach("i", "s3", "sup2", "sp2", "a"));
    // Retry of the escalation is quiet; stopping through the alias stops s1.
    assert!(fx.ok(barge("i", "s2", "sup1", "sp-other", "a")).existing);
    fx.ok(stop("s2"));
    assert_eq!(fx.supervision("s1").state, SupervisionState::Ended);
    // The alias is taken.
    fx.refused(
        monitor("i", "s2", "sup3", "sp9", "a"),
        reason::SUPERVISION_EXISTS,
    );
}

#[test]
fn monitor_and_coach_alternate_through_stops_repeatedly() {
    let mut fx = Fx::new();
    fx.call("i");
    for round in 0..5 {
        let m = format!("m{round}");
        let c = format!("c{round}");
        // The same leg id is reused each time.
        fx.ok(monitor("i", &m, "sup1", "sp1", "a"));
        assert!(fx.heard_by("i", "sp1").is_empty());
        fx.refused(
            coach("i", &c, "sup1", "sp1", "a"),
            reason::STOP_CURRENT_FIRST,
        );
        fx.ok(stop(&m));
        fx.ok(coach("i", &c, "sup1", "sp1", "a"));
        assert_eq!(fx.heard_by("i", "sp1"), v(&["a"]));
        // A late retry of the old monitor returns the ended monitor and changes nothing.
        let late = fx.ok(monitor("i", &m, "sup1", "sp1", "a"));
        assert!(late.existing);
        assert_eq!(fx.supervision(&m).state, SupervisionState::Ended);
        assert_eq!(fx.heard_by("i", "sp1"), v(&["a"]));
        fx.ok(stop(&c));
    }
    let all = fx.st.supervisions(&SupervisionFilter {
        interaction_id: Some("i".into()),
        ..SupervisionFilter::default()
    });
    assert_eq!(all.len(), 10);
    assert!(all.iter().all(|s| s.state == SupervisionState::Ended));
}

#[test]
fn coach_whispers_only_to_the_agent_and_hears_barging_supervisors() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(coach("i", "c1", "sup1", "spc", "a"));
    fx.ok(barge("i", "b1", "sup2", "spb", "a"));
    fx.ok(monitor("i", "m1", "sup3", "spm", "c"));
    assert_eq!(fx.hears("i", "spc"), v(&["a", "c", "spb"]));
    assert_eq!(fx.hears("i", "spm"), v(&["a", "c", "spb"]));
    assert_eq!(fx.hears("i", "a"), v(&["c", "spb", "spc"]));
    assert_eq!(fx.hears("i", "c"), v(&["a", "spb"]));
    assert_eq!(fx.hears("i", "spb"), v(&["a", "c"]));
    assert!(fx.heard_by("i", "spm").is_empty());
}

#[test]
fn supervisions_follow_their_target_and_end_when_it_leaves() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(monitor("i", "m1", "sup1", "sp1", "a"));
    fx.ok(coach("i", "c1", "sup2", "sp2", "a"));
    fx.ok(monitor("i", "m2", "sup3", "sp3", "c"));
    fx.ok(transfer("i", "a", agent("b")));
    assert_eq!(fx.hears("i", "sp1"), v(&["a"]));
    assert_eq!(fx.hears("i", "sp3"), v(&["b", "c"]));
    let out = fx.ok(remove("i", "a"));
    assert_eq!(
        kinds(&out),
        vec![
            EventKind::ParticipantLeft,
            EventKind::MonitorStopped,
            EventKind::CoachStopped
        ]
    );
    assert!(
        out.events[1..]
            .iter()
            .all(|e| e.detail("cause") == Some("TARGET_LEFT"))
    );
    assert_eq!(fx.supervision("m1").state, SupervisionState::Ended);
    assert_eq!(fx.supervision("m2").state, SupervisionState::Active);
    let rel = fx.st.hear_relation("i").unwrap();
    assert!(!rel.legs.contains("sp1") && !rel.legs.contains("sp2"));
}

#[test]
fn removing_a_supervisor_leg_stops_its_supervision() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(barge("i", "b1", "sup1", "sp1", "a"));
    let out = fx.ok(remove("i", "sp1"));
    assert_eq!(kinds(&out), vec![EventKind::BargeStopped]);
    assert_eq!(fx.supervision("b1").state, SupervisionState::Ended);
    assert!(fx.ok(remove("i", "sp1")).existing);
}

#[test]
fn ending_the_interaction_stops_every_supervision_then_ends() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(monitor("i", "m1", "sup1", "sp1", "a"));
    fx.ok(barge("i", "b1", "sup2", "sp2", "a"));
    let out = fx.ok(end("i"));
    assert_eq!(
        kinds(&out),
        vec![
            EventKind::MonitorStopped,
            EventKind::BargeStopped,
            EventKind::InteractionEnded
        ]
    );
    let rel = fx.st.hear_relation("i").unwrap();
    assert!(rel.legs.is_empty() && rel.edges.is_empty());
    assert!(fx.ok(end("i")).existing);
    // A stop racing the end is quiet.
    assert!(fx.ok(stop("m1")).existing);
}

#[test]
fn add_participant_alone_or_joining_and_retries() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(add("i", agent("x"), None));
    fx.ok(add("i", agent("y"), Some("c")));
    assert_eq!(fx.groups("i"), vec![v(&["a", "c", "y"]), v(&["x"])]);
    assert!(fx.ok(add("i", agent("y"), Some("c"))).existing);
    fx.refused(add("i", customer("y"), None), reason::PARTICIPANT_EXISTS);
    fx.refused(
        add("i", agent("z"), Some("nope")),
        reason::PARTICIPANT_NOT_FOUND,
    );
    let e = fx.refused(
        add(
            "i",
            ParticipantSpec::new("z", ParticipantKind::Internal, Role::Supervisor),
            None,
        ),
        reason::SUPERVISOR_ROLE_RESERVED,
    );
    assert_eq!(
        e.code,
        ErrorCode::InvalidArgument {
            field: "participant.role"
        }
    );
    fx.ok(remove("i", "x"));
    fx.refused(
        add("i", agent("z"), Some("x")),
        reason::PARTICIPANT_NOT_CONNECTED,
    );
}

#[test]
fn create_retry_and_conflict() {
    let mut fx = Fx::new();
    fx.call("i");
    let out = fx.ok(Command::CreateInteraction {
        interaction_id: "i".into(),
        participants: vec![customer("c"), agent("a").with_user("agent-u")],
    });
    assert!(out.existing && out.events.is_empty());
    let e = fx.refused(
        Command::CreateInteraction {
            interaction_id: "i".into(),
            participants: vec![customer("c")],
        },
        reason::INTERACTION_EXISTS,
    );
    assert_eq!(e.code, ErrorCode::AlreadyExists);
    fx.refused(
        Command::CreateInteraction {
            interaction_id: "k".into(),
            participants: vec![customer("c"), agent("c")],
        },
        reason::DUPLICATE_PARTICIPANT,
    );
}

#[test]
fn queries_list_by_user_and_filter_supervisions() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.call("j");
    // One call at a time (SUPERVISOR_BUSY): j first, stopped, then i.
    fx.ok(monitor("j", "m2", "sup1", "sp1", "c"));
    fx.ok(stop("m2"));
    fx.ok(monitor("i", "m1", "sup1", "sp1", "a"));
    let ids: Vec<&str> = fx
        .st
        .interactions_for_user("agent-u")
        .iter()
        .map(|i| i.interaction_id.as_str())
        .collect();
    assert_eq!(ids, vec!["i", "j"]);
    assert_eq!(fx.st.interactions_for_user("sup1").len(), 2);
    assert!(fx.st.interactions_for_user("sup2").is_empty());
    let live = fx.st.supervisions(&SupervisionFilter {
        supervisor_user_id: Some("sup1".into()),
        live_only: true,
        ..SupervisionFilter::default()
    });
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].supervision_id, "m1");
    let on_c = fx.st.supervisions(&SupervisionFilter {
        target_participant_id: Some("c".into()),
        ..SupervisionFilter::default()
    });
    assert_eq!(on_c.len(), 1);
    assert_eq!(on_c[0].supervision_id, "m2");
}

#[test]
fn prune_forgets_interactions_ended_before_the_cutoff() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.call("j");
    fx.ok(coach("i", "c1", "sup1", "sp1", "a"));
    fx.ok(barge("i", "alias", "sup1", "sp1", "a"));
    fx.ok(end("i"));
    let cutoff = fx.now_ms + 1;
    fx.ok(end("j"));
    assert_eq!(fx.st.prune_ended(cutoff), 1);
    assert!(fx.st.interaction("i").is_none());
    assert!(fx.st.supervision("c1").is_none() && fx.st.supervision("alias").is_none());
    assert!(fx.st.interaction("j").is_some());
}
