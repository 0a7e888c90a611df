//! `UpdateMedia`: the rules hold no media, they check that the participant has a leg and
//! record `MEDIA_UPDATED` with what the caller says changed; nothing changed is a quiet
//! retry; the hear relation never moves.

mod common;

use std::collections::BTreeMap;

use common::*;
use earshot_rules::*;

fn update(iid: &str, p: &str, changes: &[(&str, &str)]) -> Command {
    Command::UpdateMedia {
        interaction_id: iid.into(),
        participant_id: p.into(),
        changes: changes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    }
}

#[test]
fn an_update_is_recorded_with_what_changed_and_moves_nobody() {
    let mut fx = Fx::new();
    fx.call("i1");
    let hear_before = fx.st.hear_relation("i1");
    let out = fx.ok(update(
        "i1",
        "c",
        &[("remote", "192.0.2.1:4000"), ("srtp_remote_key", "")],
    ));
    assert!(!out.existing);
    assert!(out.hear_changed.is_empty());
    assert_eq!(kinds(&out), [EventKind::MediaUpdated]);
    let e = &out.events[0];
    assert_eq!(e.detail("participant_id"), Some("c"));
    assert_eq!(e.detail("changed"), Some("remote,srtp_remote_key"));
    assert_eq!(e.detail("remote"), Some("192.0.2.1:4000"));
    assert_eq!(
        e.detail("srtp_remote_key"),
        None,
        "empty values are never shown"
    );
    assert_eq!(fx.st.hear_relation("i1"), hear_before);
    // A change can never overwrite the fixed details.
    let out = fx.ok(update(
        "i1",
        "a",
        &[("participant_id", "x"), ("changed", "y")],
    ));
    assert_eq!(out.events[0].detail("participant_id"), Some("a"));
    assert_eq!(
        out.events[0].detail("changed"),
        Some("changed,participant_id")
    );
    // Nothing changed: an identical retry.
    let out = fx.ok(update("i1", "c", &[]));
    assert!(out.existing && out.events.is_empty());
}

#[test]
fn only_a_participant_with_a_leg_can_be_updated() {
    let mut fx = Fx::new();
    fx.call("i1");
    fx.ok(monitor("i1", "s1", "sup1", "sup1-leg", "a"));
    let out = fx.ok(update("i1", "sup1-leg", &[("ptime_ms", "30")]));
    assert_eq!(kinds(&out), [EventKind::MediaUpdated]);
    fx.refused(
        update("nope", "c", &[("ptime_ms", "30")]),
        reason::INTERACTION_NOT_FOUND,
    );
    fx.refused(
        update("i1", "zz", &[("ptime_ms", "30")]),
        reason::PARTICIPANT_NOT_FOUND,
    );
    fx.refused(update("i1", "bad id!", &[]), reason::INVALID_ID);
    fx.ok(stop("s1"));
    fx.refused(
        update("i1", "sup1-leg", &[("ptime_ms", "30")]),
        reason::PARTICIPANT_NOT_CONNECTED,
    );
    fx.ok(end("i1"));
    fx.refused(
        update("i1", "c", &[("ptime_ms", "30")]),
        reason::INTERACTION_ENDED,
    );
    fx.refused(update("i1", "c", &[]), reason::INTERACTION_ENDED);
}
