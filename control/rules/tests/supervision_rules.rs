//! Every SPEC section 2 rule, accepted and refused, by reason; plus the precedence
//! between rules and the error codes.

mod common;

use common::*;
use earshot_rules::*;

#[test]
fn monitor_needs_its_permission_and_call_add() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.user("m-only", perms(&[PERM_MONITOR]), Presence::Available);
    fx.user("add-only", perms(&[PERM_CALL_ADD]), Presence::Available);
    fx.user(
        "m-add",
        perms(&[PERM_MONITOR, PERM_CALL_ADD]),
        Presence::Available,
    );
    let e = fx.refused(
        monitor("i", "s1", "m-only", "sp1", "a"),
        reason::MISSING_PERMISSION,
    );
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    fx.refused(
        monitor("i", "s1", "add-only", "sp1", "a"),
        reason::MISSING_PERMISSION,
    );
    fx.refused(
        monitor("i", "s1", "nobody", "sp1", "a"),
        reason::MISSING_PERMISSION,
    );
    fx.ok(monitor("i", "s1", "m-add", "sp1", "a"));
}

#[test]
fn coach_and_barge_need_their_own_permission() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.user(
        "m",
        perms(&[PERM_MONITOR, PERM_CALL_ADD]),
        Presence::Available,
    );
    fx.refused(
        coach("i", "s1", "m", "sp1", "a"),
        reason::MISSING_PERMISSION,
    );
    fx.refused(
        barge("i", "s1", "m", "sp1", "a"),
        reason::MISSING_PERMISSION,
    );
    fx.user(
        "c",
        perms(&[PERM_COACH, PERM_CALL_ADD]),
        Presence::Available,
    );
    fx.ok(coach("i", "s1", "c", "sp1", "a"));
    fx.user(
        "b",
        perms(&[PERM_BARGE, PERM_CALL_ADD]),
        Presence::Available,
    );
    fx.refused(barge("i", "s2", "b", "sp2", "c"), reason::TARGET_EXTERNAL);
    fx.ok(barge("i", "s2", "b", "sp2", "a"));
}

#[test]
fn escalation_to_barge_needs_the_barge_permission() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.user(
        "m",
        perms(&[PERM_MONITOR, PERM_CALL_ADD]),
        Presence::Available,
    );
    fx.ok(monitor("i", "s1", "m", "sp1", "a"));
    fx.refused(
        barge("i", "s1", "m", "sp1", "a"),
        reason::MISSING_PERMISSION,
    );
    assert_eq!(fx.supervision("s1").mode, SupervisionMode::Monitor);
}

#[test]
fn starting_from_none_needs_presence_available() {
    let mut fx = Fx::new();
    fx.call("i");
    for presence in [
        Presence::Busy,
        Presence::Away,
        Presence::Break,
        Presence::Meeting,
        Presence::OnQueue,
        Presence::Offline,
    ] {
        fx.user("sup1", all_perms(), presence);
        for cmd in [
            monitor("i", "s1", "sup1", "sp1", "a"),
            coach("i", "s1", "sup1", "sp1", "a"),
            barge("i", "s1", "sup1", "sp1", "a"),
        ] {
            let e = fx.refused(cmd, reason::SUPERVISOR_NOT_AVAILABLE);
            assert_eq!(e.code, ErrorCode::FailedPrecondition);
        }
    }
    fx.user("sup1", all_perms(), Presence::Available);
    fx.ok(monitor("i", "s1", "sup1", "sp1", "a"));
}

#[test]
fn a_new_user_is_offline_until_set_available() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(Command::UpsertUser {
        user_id: "fresh".into(),
        display_name: "Fresh".into(),
        permissions: all_perms(),
    });
    assert_eq!(fx.st.user("fresh").unwrap().presence, Presence::Offline);
    fx.refused(
        monitor("i", "s1", "fresh", "sp1", "a"),
        reason::SUPERVISOR_NOT_AVAILABLE,
    );
}

#[test]
fn escalation_in_place_does_not_need_presence() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(monitor("i", "s1", "sup1", "sp1", "a"));
    // Starting a supervision usually makes the supervisor BUSY; escalating must work.
    fx.user("sup1", all_perms(), Presence::Busy);
    fx.ok(barge("i", "s1", "sup1", "sp1", "a"));
    assert_eq!(fx.supervision("s1").mode, SupervisionMode::Barge);
}

#[test]
fn only_one_coach_per_agent() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(coach("i", "s1", "sup1", "sp1", "a"));
    fx.refused(
        coach("i", "s2", "sup2", "sp2", "a"),
        reason::COACH_ALREADY_ACTIVE,
    );
    // Monitoring the coached agent is fine.
    fx.ok(monitor("i", "s2", "sup2", "sp2", "a"));
    // Once the first coach stops, another supervisor may coach.
    fx.ok(stop("s1"));
    fx.ok(coach("i", "s3", "sup3", "sp3", "a"));
}

#[test]
fn a_connecting_coach_counts_as_the_agents_coach() {
    let mut fx = Fx::new();
    fx.call("i");
    let mut r = req("i", "s1", "sup1", "sp1", "a");
    r.auto_answer = false;
    fx.ok(Command::StartCoach(r));
    assert_eq!(fx.supervision("s1").state, SupervisionState::Connecting);
    fx.refused(
        coach("i", "s2", "sup2", "sp2", "a"),
        reason::COACH_ALREADY_ACTIVE,
    );
}

#[test]
fn coach_and_barge_targets_must_be_internal_monitor_may_target_external() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.refused(
        coach("i", "s1", "sup1", "sp1", "c"),
        reason::TARGET_EXTERNAL,
    );
    fx.refused(
        barge("i", "s1", "sup1", "sp1", "c"),
        reason::TARGET_EXTERNAL,
    );
    fx.ok(monitor("i", "s1", "sup1", "sp1", "c"));
    // Escalating a monitor of the customer is a barge into an external target.
    fx.refused(
        barge("i", "s1", "sup1", "sp1", "c"),
        reason::TARGET_EXTERNAL,
    );
}

#[test]
fn no_barge_into_the_specialist_of_an_active_consult() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(start_consult("i", "a", specialist("s")));
    fx.refused(
        barge("i", "b1", "sup1", "sp1", "s"),
        reason::TARGET_IN_CONSULT,
    );
    // The consulting agent is not in a consult *as a specialist*: allowed.
    fx.ok(barge("i", "b2", "sup2", "sp2", "a"));
    // Monitoring and coaching the specialist are allowed.
    fx.ok(monitor("i", "m1", "sup1", "sp1", "s"));
    fx.ok(stop("m1"));
    fx.ok(coach("i", "c1", "sup1", "sp3", "s"));
    fx.ok(stop("c1"));
    // After the consult ends (transferred to the specialist), barging into it is fine.
    fx.ok(end_consult("i", ConsultEnd::Transfer));
    fx.ok(barge("i", "b3", "sup3", "sp4", "s"));
}

#[test]
fn no_barge_into_a_conference_of_three_non_supervisors() {
    let mut fx = Fx::new();
    fx.call("i");
    // Two non-supervisors plus a barging supervisor is not a conference.
    fx.ok(barge("i", "b1", "sup1", "sp1", "a"));
    fx.ok(monitor("i", "m1", "sup2", "sp2", "a"));
    fx.ok(barge("i", "b2", "sup3", "sp3", "a"));
    fx.ok(stop("b1"));
    fx.ok(stop("b2"));
    fx.ok(add("i", agent("a2"), Some("a")));
    fx.refused(
        barge("i", "b3", "sup1", "sp4", "a"),
        reason::TARGET_IN_CONFERENCE,
    );
    fx.refused(
        barge("i", "b3", "sup1", "sp4", "a2"),
        reason::TARGET_IN_CONFERENCE,
    );
    // Escalating the monitor is refused the same way.
    fx.refused(
        barge("i", "m1", "sup2", "sp2", "a"),
        reason::TARGET_IN_CONFERENCE,
    );
    // Holding the customer leaves {a, a2}: no longer a conference.
    fx.ok(hold("i", "c"));
    fx.ok(barge("i", "b3", "sup1", "sp4", "a"));
}

#[test]
fn monitor_and_coach_switch_only_through_a_stop() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(monitor("i", "s1", "sup1", "sp1", "a"));
    fx.refused(
        coach("i", "s2", "sup1", "sp2", "a"),
        reason::STOP_CURRENT_FIRST,
    );
    fx.ok(stop("s1"));
    fx.ok(coach("i", "s2", "sup1", "sp2", "a"));
    fx.refused(
        monitor("i", "s3", "sup1", "sp3", "a"),
        reason::STOP_CURRENT_FIRST,
    );
}

#[test]
fn from_barge_stop_before_monitor_or_coach() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(barge("i", "s1", "sup1", "sp1", "a"));
    fx.refused(
        monitor("i", "s2", "sup1", "sp2", "a"),
        reason::STOP_BARGE_FIRST,
    );
    fx.refused(
        coach("i", "s2", "sup1", "sp2", "a"),
        reason::STOP_BARGE_FIRST,
    );
    fx.ok(stop("s1"));
    fx.ok(monitor("i", "s2", "sup1", "sp2", "a"));
}

#[test]
fn one_supervision_per_supervisor_per_interaction() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(monitor("i", "s1", "sup1", "sp1", "a"));
    // Same mode, new id, same or other target.
    fx.refused(
        monitor("i", "s2", "sup1", "sp2", "a"),
        reason::SUPERVISOR_ALREADY_ACTIVE,
    );
    fx.refused(
        monitor("i", "s2", "sup1", "sp2", "c"),
        reason::SUPERVISOR_ALREADY_ACTIVE,
    );
    // Escalating onto another target is not an in-place escalation.
    fx.refused(
        barge("i", "s2", "sup1", "sp2", "c"),
        reason::SUPERVISOR_ALREADY_ACTIVE,
    );
}

#[test]
fn barge_onto_another_target_while_monitoring_is_supervisor_already_active() {
    let mut fx = Fx::new();
    fx.ok(Command::CreateInteraction {
        interaction_id: "i".into(),
        participants: vec![customer("c"), agent("a"), agent("a2")],
    });
    fx.ok(hold("i", "c")); // {a, a2}: 2 non-supervisors, barge-able
    fx.ok(monitor("i", "s1", "sup1", "sp1", "a"));
    fx.refused(
        barge("i", "s2", "sup1", "sp2", "a2"),
        reason::SUPERVISOR_ALREADY_ACTIVE,
    );
    fx.ok(barge("i", "s2", "sup2", "sp2", "a2"));
    fx.refused(
        barge("i", "s3", "sup2", "sp3", "a2"),
        reason::SUPERVISOR_ALREADY_ACTIVE,
    );
    // A supervisor is on one call at a time (SUPERVISOR_BUSY, SPEC section 2).
    fx.call("j");
    fx.refused(
        monitor("j", "s4", "sup1", "sp1", "a"),
        reason::SUPERVISOR_BUSY,
    );
}

#[test]
fn a_participant_of_the_call_cannot_supervise_it() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.refused(
        monitor("i", "s1", "agent-u", "sp1", "c"),
        reason::SUPERVISOR_IS_PARTICIPANT,
    );
    fx.refused(
        barge("i", "s1", "agent-u", "sp1", "a"),
        reason::SUPERVISOR_IS_PARTICIPANT,
    );
    // Once the agent has left the call, its user may supervise it.
    fx.ok(add("i", agent("a2"), Some("c")));
    fx.ok(remove("i", "a"));
    fx.ok(monitor("i", "s1", "agent-u", "sp1", "c"));
}

#[test]
fn the_target_must_be_connected() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(add("i", agent("a2"), Some("a")));
    fx.ok(remove("i", "a2"));
    for cmd in [
        monitor("i", "s1", "sup1", "sp1", "a2"),
        coach("i", "s1", "sup1", "sp1", "a2"),
        barge("i", "s1", "sup1", "sp1", "a2"),
    ] {
        fx.refused(cmd, reason::TARGET_NOT_CONNECTED);
    }
}

#[test]
fn nothing_starts_on_an_ended_interaction() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(end("i"));
    for cmd in [
        monitor("i", "s1", "sup1", "sp1", "a"),
        coach("i", "s1", "sup1", "sp1", "a"),
        barge("i", "s1", "sup1", "sp1", "a"),
        hold("i", "c"),
        resume("i", "c"),
        add("i", agent("a2"), None),
        transfer("i", "a", agent("b")),
        start_consult("i", "a", specialist("s")),
        end_consult("i", ConsultEnd::Cancel),
        conference("i", &["a", "c"]),
    ] {
        let e = fx.refused(cmd, reason::INTERACTION_ENDED);
        assert_eq!(e.code, ErrorCode::FailedPrecondition);
    }
}

#[test]
fn a_supervisor_leg_cannot_be_a_target() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(barge("i", "s1", "sup1", "sp1", "a"));
    let e = fx.refused(
        monitor("i", "s2", "sup2", "sp2", "sp1"),
        reason::TARGET_IS_SUPERVISOR,
    );
    assert_eq!(
        e.code,
        ErrorCode::InvalidArgument {
            field: "target_participant_id"
        }
    );
}

#[test]
fn malformed_ids_name_the_field() {
    let mut fx = Fx::new();
    fx.call("i");
    let long = "x".repeat(MAX_ID_CHARS + 1);
    let cases: Vec<(Command, &str)> = vec![
        (monitor("i j", "s1", "sup1", "sp1", "a"), "interaction_id"),
        (monitor("i", "", "sup1", "sp1", "a"), "supervision_id"),
        (
            monitor("i", "s1", "sup/1", "sp1", "a"),
            "supervisor_user_id",
        ),
        (
            monitor("i", "s1", "sup1", &long, "a"),
            "supervisor_participant_id",
        ),
        (
            monitor("i", "s1", "sup1", "sp1", "a\n"),
            "target_participant_id",
        ),
        (stop("é"), "supervision_id"),
        (hold("i", "a b"), "participant_id"),
        (
            add("i", agent("bad id"), None),
            "participant.participant_id",
        ),
        (
            add("i", agent("ok").with_user("bad user"), None),
            "participant.user_id",
        ),
        (transfer("i", "a", agent("")), "to.participant_id"),
        (
            start_consult("i", "a", specialist("s p")),
            "specialist.participant_id",
        ),
        (conference("i", &["a", "c c"]), "participant_ids"),
    ];
    for (cmd, field) in cases {
        let e = fx.err(cmd);
        assert_eq!(e.reason, reason::INVALID_ID, "{e}");
        assert_eq!(e.code, ErrorCode::InvalidArgument { field }, "{e}");
    }
    // The longest valid id is accepted.
    let longest = "y".repeat(MAX_ID_CHARS);
    fx.ok(add("i", agent(&longest), None));
    assert!(is_valid_id("Az09._:-"));
}

#[test]
fn unknown_ids_are_not_found() {
    let mut fx = Fx::new();
    fx.call("i");
    let cases: Vec<(Command, &str)> = vec![
        (
            monitor("nope", "s1", "sup1", "sp1", "a"),
            reason::INTERACTION_NOT_FOUND,
        ),
        (
            monitor("i", "s1", "ghost", "sp1", "a"),
            reason::USER_NOT_FOUND,
        ),
        (
            monitor("i", "s1", "sup1", "sp1", "zz"),
            reason::PARTICIPANT_NOT_FOUND,
        ),
        (stop("nope"), reason::SUPERVISION_NOT_FOUND),
        (hold("i", "zz"), reason::PARTICIPANT_NOT_FOUND),
        (end("nope"), reason::INTERACTION_NOT_FOUND),
        (
            Command::SetPresence {
                user_id: "ghost".into(),
                presence: Presence::Available,
            },
            reason::USER_NOT_FOUND,
        ),
    ];
    for (cmd, why) in cases {
        let e = fx.refused(cmd, why);
        assert_eq!(e.code, ErrorCode::NotFound);
    }
}

#[test]
fn supervision_id_reused_with_other_content_already_exists() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.call("j");
    fx.ok(monitor("i", "s1", "sup1", "sp1", "a"));
    let e = fx.refused(
        monitor("j", "s1", "sup2", "sp1", "a"),
        reason::SUPERVISION_EXISTS,
    );
    assert_eq!(e.code, ErrorCode::AlreadyExists);
    fx.refused(
        monitor("i", "s1", "sup1", "sp1", "c"),
        reason::SUPERVISION_EXISTS,
    );
    // The supervisor leg id is taken by a call participant.
    fx.refused(
        monitor("j", "s2", "sup2", "c", "a"),
        reason::PARTICIPANT_EXISTS,
    );
    // ... or by another supervisor's leg, even a disconnected one.
    fx.ok(stop("s1"));
    fx.refused(
        monitor("i", "s3", "sup2", "sp1", "a"),
        reason::PARTICIPANT_EXISTS,
    );
    // The same supervisor may reuse its own disconnected leg id.
    fx.ok(coach("i", "s3", "sup1", "sp1", "a"));
    let leg = fx
        .st
        .interaction("i")
        .unwrap()
        .participant("sp1")
        .unwrap()
        .clone();
    assert_eq!(leg.state, ParticipantState::Connected);
    assert_eq!(leg.supervision_id.as_deref(), Some("s3"));
}

#[test]
fn precedence_validation_not_found_ended_permission_participant_presence_transition_target() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(add("i", agent("a2").with_user("nobody"), Some("a")));
    // Validation beats not-found.
    fx.refused(
        monitor("nope", "s 1", "ghost", "sp1", "a"),
        reason::INVALID_ID,
    );
    // Not-found beats ended.
    fx.call("e");
    fx.ok(end("e"));
    fx.refused(
        monitor("e", "s1", "ghost", "sp1", "a"),
        reason::USER_NOT_FOUND,
    );
    // Ended beats permission.
    fx.refused(
        monitor("e", "s1", "nobody", "sp1", "a"),
        reason::INTERACTION_ENDED,
    );
    // Permission beats participant-of-call.
    fx.refused(
        monitor("i", "s1", "nobody", "sp1", "c"),
        reason::MISSING_PERMISSION,
    );
    // Participant-of-call beats presence.
    fx.user("agent-u", all_perms(), Presence::Busy);
    fx.refused(
        monitor("i", "s1", "agent-u", "sp1", "c"),
        reason::SUPERVISOR_IS_PARTICIPANT,
    );
    // Presence beats target checks.
    fx.user("sup1", all_perms(), Presence::Busy);
    fx.refused(
        coach("i", "s1", "sup1", "sp1", "c"),
        reason::SUPERVISOR_NOT_AVAILABLE,
    );
    // Transitions beat target checks.
    fx.user("sup1", all_perms(), Presence::Available);
    fx.ok(monitor("i", "s1", "sup1", "sp1", "a"));
    fx.refused(
        coach("i", "s2", "sup1", "sp2", "c"),
        reason::STOP_CURRENT_FIRST,
    );
    // Target-not-connected beats the mode's target checks.
    fx.ok(remove("i", "a2"));
    fx.refused(
        coach("i", "s3", "sup2", "sp3", "a2"),
        reason::TARGET_NOT_CONNECTED,
    );
}

#[test]
fn an_identical_retry_returns_the_existing_supervision() {
    let mut fx = Fx::new();
    fx.call("i");
    let first = fx.ok(monitor("i", "s1", "sup1", "sp1", "a"));
    assert!(!first.existing);
    assert_eq!(kinds(&first), vec![EventKind::MonitorStarted]);
    let again = fx.ok(monitor("i", "s1", "sup1", "sp1", "a"));
    assert!(again.existing);
    assert!(again.events.is_empty());
    assert!(again.hear_changed.is_empty());
    assert_eq!(again.subject, Subject::Supervision("s1".into()));
    // Even after it ended, or the supervisor went away.
    fx.ok(stop("s1"));
    fx.user("sup1", all_perms(), Presence::Offline);
    assert!(fx.ok(monitor("i", "s1", "sup1", "sp1", "a")).existing);
    assert_eq!(fx.supervision("s1").state, SupervisionState::Ended);
}

#[test]
fn stop_is_idempotent() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(coach("i", "s1", "sup1", "sp1", "a"));
    let out = fx.ok(stop("s1"));
    assert_eq!(kinds(&out), vec![EventKind::CoachStopped]);
    assert_eq!(out.hear_changed, v(&["i"]));
    let again = fx.ok(stop("s1"));
    assert!(again.existing && again.events.is_empty() && again.hear_changed.is_empty());
}

#[test]
fn auto_answer_false_waits_for_first_rtp() {
    let mut fx = Fx::new();
    fx.call("i");
    let mut r = req("i", "s1", "sup1", "sp1", "a");
    r.auto_answer = false;
    let out = fx.ok(Command::StartMonitor(r));
    assert_eq!(kinds(&out), vec![EventKind::MonitorStarted]);
    let rel = fx.st.hear_relation("i").unwrap();
    assert!(rel.legs.contains("sp1"), "the ringing leg exists");
    assert!(
        fx.hears("i", "sp1").is_empty(),
        "no audio before the first RTP"
    );
    // First RTP from a call participant is routine.
    assert!(
        fx.ok(Command::MediaConnected {
            interaction_id: "i".into(),
            participant_id: "a".into(),
        })
        .existing
    );
    let out = fx.ok(Command::MediaConnected {
        interaction_id: "i".into(),
        participant_id: "sp1".into(),
    });
    assert_eq!(kinds(&out), vec![EventKind::SupervisorConnected]);
    assert_eq!(out.events[0].actor, Actor::Engine);
    assert_eq!(out.hear_changed, v(&["i"]));
    assert_eq!(fx.supervision("s1").state, SupervisionState::Active);
    assert_eq!(fx.hears("i", "sp1"), v(&["a", "c"]));
    // A second report changes nothing.
    assert!(
        fx.ok(Command::MediaConnected {
            interaction_id: "i".into(),
            participant_id: "sp1".into(),
        })
        .existing
    );
}

#[test]
fn barge_is_always_auto_answer() {
    let mut fx = Fx::new();
    fx.call("i");
    let mut r = req("i", "s1", "sup1", "sp1", "a");
    r.auto_answer = false;
    fx.ok(Command::StartBarge(r.clone()));
    let s = fx.supervision("s1");
    assert!(s.auto_answer);
    assert_eq!(s.state, SupervisionState::Active);
    // The retry as sent is recognised as identical.
    assert!(fx.ok(Command::StartBarge(r)).existing);
}

#[test]
fn media_timeout_of_a_supervisor_ends_its_supervision() {
    let mut fx = Fx::new();
    fx.call("i");
    fx.ok(barge("i", "s1", "sup1", "sp1", "a"));
    let out = fx.ok(Command::MediaTimeout {
        interaction_id: "i".into(),
        participant_id: "sp1".into(),
    });
    assert_eq!(
        kinds(&out),
        vec![EventKind::MediaTimeout, EventKind::BargeStopped]
    );
    assert_eq!(out.events[1].detail("cause"), Some("MEDIA_TIMEOUT"));
    assert_eq!(fx.supervision("s1").state, SupervisionState::Ended);
    assert!(fx.heard_by("i", "sp1").is_empty());
}

#[test]
fn media_timeout_of_a_call_leg_is_recorded_once_per_outage() {
    let mut fx = Fx::new();
    fx.call("i");
    let timeout = || Command::MediaTimeout {
        interaction_id: "i".into(),
        participant_id: "c".into(),
    };
    let out = fx.ok(timeout());
    assert_eq!(kinds(&out), vec![EventKind::MediaTimeout]);
    assert!(
        out.hear_changed.is_empty(),
        "the call controller decides, not us"
    );
    assert!(fx.ok(timeout()).existing);
    let back = fx.ok(Command::MediaConnected {
        interaction_id: "i".into(),
        participant_id: "c".into(),
    });
    assert!(!back.existing && back.events.is_empty());
    assert_eq!(kinds(&fx.ok(timeout())), vec![EventKind::MediaTimeout]);
}

#[test]
fn errors_display_code_reason_and_field() {
    let mut fx = Fx::new();
    let e = fx.err(hold("bad id", "a"));
    let shown = e.to_string();
    assert!(shown.contains("INVALID_ARGUMENT"), "{shown}");
    assert!(shown.contains("INVALID_ID"), "{shown}");
    assert!(shown.contains("interaction_id"), "{shown}");
}

#[test]
fn a_supervisor_live_on_one_call_is_busy_on_every_other_whatever_its_presence() {
    let mut fx = Fx::new();
    fx.call("i1");
    fx.call("i2");
    fx.user("s", all_perms(), Presence::Available);
    fx.ok(barge("i1", "b1", "s", "sp", "a"));
    // The platform never pushed a presence change: still AVAILABLE.
    let e = fx.refused(monitor("i2", "m2", "s", "sp", "a"), reason::SUPERVISOR_BUSY);
    assert_eq!(e.code, ErrorCode::FailedPrecondition);
    fx.refused(coach("i2", "c2", "s", "sp", "a"), reason::SUPERVISOR_BUSY);
    fx.refused(barge("i2", "b2", "s", "sp", "a"), reason::SUPERVISOR_BUSY);
    // A ringing (CONNECTING) supervision is live too.
    fx.user("r", all_perms(), Presence::Available);
    let mut ringing = req("i1", "m-r", "r", "spr", "c");
    ringing.auto_answer = false;
    fx.ok(Command::StartMonitor(ringing));
    fx.refused(
        monitor("i2", "m-r2", "r", "spr", "a"),
        reason::SUPERVISOR_BUSY,
    );
    // Escalation in place is unchanged, and once stopped the supervisor is free.
    fx.user("e", all_perms(), Presence::Available);
    fx.ok(monitor("i2", "m-e", "e", "spe", "a"));
    fx.refused(
        monitor("i1", "m-e1", "e", "spe", "c"),
        reason::SUPERVISOR_BUSY,
    );
    let escalated = fx.ok(barge("i2", "m-e", "e", "spe", "a"));
    assert!(!escalated.existing, "escalation in place still works");
    fx.ok(stop("b1"));
    fx.ok(monitor("i2", "m2", "s", "sp", "a"));
}

#[test]
fn dtmf_never_reaches_a_monitor_but_does_reach_a_coach_or_barger() {
    let mut fx = Fx::new();
    fx.call("i");
    let mut r = req("i", "s1", "sup1", "sp1", "a");
    r.auto_answer = false;
    fx.ok(Command::StartMonitor(r));
    let no_dtmf = |fx: &Fx| -> Vec<String> {
        fx.st
            .hear_relation("i")
            .unwrap()
            .no_dtmf
            .into_iter()
            .collect()
    };
    assert_eq!(
        no_dtmf(&fx),
        v(&["sp1"]),
        "a monitor, even one whose phone still rings"
    );
    fx.ok(Command::MediaConnected {
        interaction_id: "i".into(),
        participant_id: "sp1".into(),
    });
    assert_eq!(no_dtmf(&fx), v(&["sp1"]));
    fx.ok(stop("s1"));
    fx.ok(coach("i", "s2", "sup1", "sp1", "a"));
    assert!(no_dtmf(&fx).is_empty(), "a coach may receive digits");
    fx.ok(barge("i", "s2", "sup1", "sp1", "a"));
    assert!(
        no_dtmf(&fx).is_empty(),
        "a barging supervisor may receive digits"
    );
}
