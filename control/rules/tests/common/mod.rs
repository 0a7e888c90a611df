//! Shared fixture for the rules tests: a state with a few users and helpers that build
//! commands, apply them at increasing times and check atomicity on refusal.
#![allow(dead_code)]

use std::collections::BTreeSet;

use earshot_rules::*;

/// Every supervision permission.
pub fn all_perms() -> BTreeSet<String> {
    [PERM_MONITOR, PERM_COACH, PERM_BARGE, PERM_CALL_ADD]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

pub fn perms(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

pub fn customer(id: &str) -> ParticipantSpec {
    ParticipantSpec::new(id, ParticipantKind::External, Role::Customer)
}

pub fn agent(id: &str) -> ParticipantSpec {
    ParticipantSpec::new(id, ParticipantKind::Internal, Role::Agent)
}

pub fn specialist(id: &str) -> ParticipantSpec {
    ParticipantSpec::new(id, ParticipantKind::Internal, Role::Specialist)
}

pub fn req(iid: &str, sid: &str, user: &str, sp: &str, target: &str) -> StartSupervision {
    StartSupervision {
        interaction_id: iid.into(),
        supervision_id: sid.into(),
        supervisor_user_id: user.into(),
        supervisor_participant_id: sp.into(),
        target_participant_id: target.into(),
        auto_answer: true,
    }
}

pub fn monitor(iid: &str, sid: &str, user: &str, sp: &str, target: &str) -> Command {
    Command::StartMonitor(req(iid, sid, user, sp, target))
}

pub fn coach(iid: &str, sid: &str, user: &str, sp: &str, target: &str) -> Command {
    Command::StartCoach(req(iid, sid, user, sp, target))
}

pub fn barge(iid: &str, sid: &str, user: &str, sp: &str, target: &str) -> Command {
    Command::StartBarge(req(iid, sid, user, sp, target))
}

pub fn stop(sid: &str) -> Command {
    Command::StopSupervision {
        supervision_id: sid.into(),
    }
}

pub fn hold(iid: &str, p: &str) -> Command {
    Command::Hold {
        interaction_id: iid.into(),
        participant_id: p.into(),
    }
}

pub fn resume(iid: &str, p: &str) -> Command {
    Command::Resume {
        interaction_id: iid.into(),
        participant_id: p.into(),
    }
}

pub fn remove(iid: &str, p: &str) -> Command {
    Command::RemoveParticipant {
        interaction_id: iid.into(),
        participant_id: p.into(),
    }
}

pub fn end(iid: &str) -> Command {
    Command::EndInteraction {
        interaction_id: iid.into(),
    }
}

pub fn transfer(iid: &str, from: &str, to: ParticipantSpec) -> Command {
    Command::Transfer {
        interaction_id: iid.into(),
        from_participant_id: from.into(),
        to,
    }
}

pub fn start_consult(iid: &str, a: &str, s: ParticipantSpec) -> Command {
    Command::StartConsult {
        interaction_id: iid.into(),
        agent_participant_id: a.into(),
        specialist: s,
    }
}

pub fn end_consult(iid: &str, mode: ConsultEnd) -> Command {
    Command::EndConsult {
        interaction_id: iid.into(),
        mode,
    }
}

pub fn conference(iid: &str, ids: &[&str]) -> Command {
    Command::Conference {
        interaction_id: iid.into(),
        participant_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
    }
}

pub fn add(iid: &str, spec: ParticipantSpec, join: Option<&str>) -> Command {
    Command::AddParticipant {
        interaction_id: iid.into(),
        participant: spec,
        join_group_of: join.map(str::to_owned),
    }
}

pub fn kinds(out: &Outcome) -> Vec<EventKind> {
    out.events.iter().map(|e| e.kind).collect()
}

/// A state and a clock. Users: `sup1`..`sup3` (every permission, AVAILABLE), `agent-u`
/// (every permission, AVAILABLE; the user behind agent `a`), `nobody` (no permission,
/// AVAILABLE).
pub struct Fx {
    pub st: State,
    pub now_ms: u64,
}

impl Fx {
    pub fn new() -> Self {
        let mut fx = Fx {
            st: State::default(),
            now_ms: 1_000,
        };
        for u in ["sup1", "sup2", "sup3", "agent-u"] {
            fx.user(u, all_perms(), Presence::Available);
        }
        fx.user("nobody", BTreeSet::new(), Presence::Available);
        fx
    }

    pub fn user(&mut self, id: &str, permissions: BTreeSet<String>, presence: Presence) {
        self.ok(Command::UpsertUser {
            user_id: id.into(),
            display_name: format!("User {id}"),
            permissions,
        });
        self.ok(Command::SetPresence {
            user_id: id.into(),
            presence,
        });
    }

    pub fn apply(&mut self, cmd: Command) -> Result<Outcome, RuleError> {
        self.now_ms += 10;
        self.st.apply(self.now_ms, cmd)
    }

    #[track_caller]
    pub fn ok(&mut self, cmd: Command) -> Outcome {
        let shown = format!("{cmd:?}");
        match self.apply(cmd) {
            Ok(o) => o,
            Err(e) => panic!("{shown} refused: {e}"),
        }
    }

    /// Applies a command that must be refused, and checks the refusal changed nothing.
    #[track_caller]
    pub fn err(&mut self, cmd: Command) -> RuleError {
        let before = self.st.clone();
        let shown = format!("{cmd:?}");
        match self.apply(cmd) {
            Ok(o) => panic!("{shown} accepted: {o:?}"),
            Err(e) => {
                assert_eq!(self.st, before, "a refusal must not change the state");
                e
            }
        }
    }

    /// Applies a command that must be refused with `reason`.
    #[track_caller]
    pub fn refused(&mut self, cmd: Command, reason: &str) -> RuleError {
        let e = self.err(cmd);
        assert_eq!(e.reason, reason, "{e}");
        e
    }

    /// Interaction `iid` with customer `c` (EXTERNAL) and agent `a` (INTERNAL, user
    /// `agent-u`), talking.
    pub fn call(&mut self, iid: &str) {
        self.ok(Command::CreateInteraction {
            interaction_id: iid.into(),
            participants: vec![customer("c"), agent("a").with_user("agent-u")],
        });
    }

    /// Who `listener` hears in `iid`, sorted.
    pub fn hears(&self, iid: &str, listener: &str) -> Vec<String> {
        self.st
            .hear_relation(iid)
            .expect("interaction exists")
            .sources_of(listener)
            .map(str::to_owned)
            .collect()
    }

    /// Who hears `source` in `iid`, sorted.
    pub fn heard_by(&self, iid: &str, source: &str) -> Vec<String> {
        self.st
            .hear_relation(iid)
            .expect("interaction exists")
            .listeners_of(source)
            .map(str::to_owned)
            .collect()
    }

    pub fn groups(&self, iid: &str) -> Vec<Vec<String>> {
        self.st.interaction(iid).expect("exists").talk_groups()
    }

    pub fn supervision(&self, sid: &str) -> Supervision {
        self.st
            .supervision(sid)
            .expect("supervision exists")
            .clone()
    }
}

pub fn v(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}
