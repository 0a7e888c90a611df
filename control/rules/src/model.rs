//! The objects the rules reason about: users, participants, interactions, supervisions.
//!
//! Everything here is plain data with serde derives so the whole [`crate::State`] can be
//! persisted and restored. Fields that only the state machine may change are private;
//! the rest are public for reading (callers only ever get shared references).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Permission needed (with [`PERM_CALL_ADD`]) to start a MONITOR supervision.
pub const PERM_MONITOR: &str = "conversation:call:monitor";
/// Permission needed (with [`PERM_CALL_ADD`]) to start a COACH supervision.
pub const PERM_COACH: &str = "conversation:call:coach";
/// Permission needed (with [`PERM_CALL_ADD`]) to start or escalate to a BARGE supervision.
pub const PERM_BARGE: &str = "conversation:call:barge";
/// Every supervision adds a leg to the call, so every mode also needs this one.
pub const PERM_CALL_ADD: &str = "conversation:call:add";
/// Lets a user list or read interactions on a supervisor's behalf. The rules crate does
/// not serve reads; the gRPC layer checks it, and it is exported here so both agree.
pub const PERM_INTERACTION_VIEW: &str = "analytics:interaction:view";

/// A directory user's presence (SPEC section 3, `Directory.SetPresence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Presence {
    /// Free to take work; the only presence from which a supervision may start fresh.
    Available,
    /// Busy.
    Busy,
    /// Away.
    Away,
    /// On a break.
    Break,
    /// In a meeting.
    Meeting,
    /// Taking queue calls.
    OnQueue,
    /// Signed out. New users start here until a `SetPresence` says otherwise.
    Offline,
}

impl Presence {
    /// The wire name, e.g. `"AVAILABLE"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Available => "AVAILABLE",
            Presence::Busy => "BUSY",
            Presence::Away => "AWAY",
            Presence::Break => "BREAK",
            Presence::Meeting => "MEETING",
            Presence::OnQueue => "ON_QUEUE",
            Presence::Offline => "OFFLINE",
        }
    }
}

/// Where a participant's media comes from: outside the contact center or inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ParticipantKind {
    /// A customer or any party outside the contact center. Cannot be coached or barged.
    External,
    /// An agent, specialist or supervisor.
    Internal,
}

/// What a participant is in the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    /// The caller or callee on the outside.
    Customer,
    /// The agent handling the call.
    Agent,
    /// A consulted specialist.
    Specialist,
    /// A supervisor leg. Only the supervision verbs create these; call verbs refuse it.
    Supervisor,
    /// Anyone else (an IVR, a third party).
    Other,
}

/// Lifecycle of a participant's media leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ParticipantState {
    /// The leg exists but audio does not flow yet: a supervisor phone with
    /// `auto_answer = false` that has not sent its first RTP packet.
    Connecting,
    /// Audio flows.
    Connected,
    /// Gone. The record stays so the interaction keeps its history and ids stay unique.
    Disconnected,
}

/// The three supervision modes (SPEC section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SupervisionMode {
    /// Listen silently.
    Monitor,
    /// Listen, and whisper to the target agent only.
    Coach,
    /// Join the target's talk group as a full participant.
    Barge,
}

impl SupervisionMode {
    /// The wire name, e.g. `"MONITOR"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SupervisionMode::Monitor => "MONITOR",
            SupervisionMode::Coach => "COACH",
            SupervisionMode::Barge => "BARGE",
        }
    }

    /// The mode-specific permission (always needed together with [`PERM_CALL_ADD`]).
    pub fn permission(self) -> &'static str {
        match self {
            SupervisionMode::Monitor => PERM_MONITOR,
            SupervisionMode::Coach => PERM_COACH,
            SupervisionMode::Barge => PERM_BARGE,
        }
    }
}

/// Lifecycle of a supervision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SupervisionState {
    /// Waiting for the first RTP packet from a supervisor phone with `auto_answer = false`.
    Connecting,
    /// Audio flows according to the mode.
    Active,
    /// Stopped, for whatever cause; terminal.
    Ended,
}

/// How a consult ends (`EndConsult.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsultEnd {
    /// The agent returns to the parked group; the specialist leaves.
    Cancel,
    /// The specialist takes the agent's place in the parked group; the agent is left alone.
    Transfer,
    /// Agent, specialist and the parked group all talk together.
    Conference,
}

impl ConsultEnd {
    /// The wire name, e.g. `"CANCEL"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsultEnd::Cancel => "CANCEL",
            ConsultEnd::Transfer => "TRANSFER",
            ConsultEnd::Conference => "CONFERENCE",
        }
    }
}

/// A directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Client-chosen id (validated charset).
    pub user_id: String,
    /// Free text for display, at most [`crate::MAX_DISPLAY_NAME_CHARS`] characters.
    pub display_name: String,
    /// Permission strings, e.g. [`PERM_MONITOR`].
    pub permissions: BTreeSet<String>,
    /// Current presence; [`Presence::Offline`] until set.
    pub presence: Presence,
}

impl User {
    /// Whether the user holds `permission` exactly (no wildcards).
    pub fn has_permission(&self, permission: &str) -> bool {
        self.permissions.contains(permission)
    }
}

/// What a client says about a non-supervisor participant when adding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantSpec {
    /// Unique within the interaction for the interaction's whole life.
    pub participant_id: String,
    /// EXTERNAL or INTERNAL.
    pub kind: ParticipantKind,
    /// Any role except [`Role::Supervisor`].
    pub role: Role,
    /// The directory user behind the participant, if any (agents usually have one).
    pub user_id: Option<String>,
}

impl ParticipantSpec {
    /// Shorthand used by tests and examples.
    pub fn new(participant_id: &str, kind: ParticipantKind, role: Role) -> Self {
        ParticipantSpec {
            participant_id: participant_id.to_owned(),
            kind,
            role,
            user_id: None,
        }
    }

    /// The same spec with a directory user attached.
    pub fn with_user(mut self, user_id: &str) -> Self {
        self.user_id = Some(user_id.to_owned());
        self
    }
}

/// One party of an interaction, with one media leg while not disconnected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// Unique within the interaction.
    pub participant_id: String,
    /// EXTERNAL or INTERNAL (supervisors are always INTERNAL).
    pub kind: ParticipantKind,
    /// Role; [`Role::Supervisor`] exactly when this is a supervisor leg.
    pub role: Role,
    /// Directory user, always set for supervisors.
    pub user_id: Option<String>,
    /// Leg lifecycle.
    pub state: ParticipantState,
    /// Put on hold by `Hold` and not yet resumed: alone in its own talk group.
    pub held: bool,
    /// For supervisor legs: the supervision this leg currently (or last) served. Its
    /// mode and target are on the [`Supervision`].
    pub supervision_id: Option<String>,
    /// When the participant (last) joined.
    pub joined_at_ms: u64,
    /// When it (last) left.
    pub left_at_ms: Option<u64>,
    /// The engine reported `MediaTimeout` and no media since; keeps `MEDIA_TIMEOUT`
    /// to one event per outage.
    pub media_timed_out: bool,
    /// The conversation (see `Interaction::talk_groups`): `Some` exactly for connected
    /// non-supervisor participants. Private so that only the state machine moves people.
    pub(crate) conversation: Option<u32>,
}

impl Participant {
    /// A supervisor leg (role SUPERVISOR).
    pub fn is_supervisor(&self) -> bool {
        self.role == Role::Supervisor
    }

    /// Audio flows to and from this leg.
    pub fn is_connected(&self) -> bool {
        self.state == ParticipantState::Connected
    }

    /// The spec this participant was added with (meaningful for non-supervisors).
    pub fn spec(&self) -> ParticipantSpec {
        ParticipantSpec {
            participant_id: self.participant_id.clone(),
            kind: self.kind,
            role: self.role,
            user_id: self.user_id.clone(),
        }
    }
}

/// An active consult: `agent` stepped out of its group to talk to `specialist`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consult {
    /// The consulting participant.
    pub agent_participant_id: String,
    /// The consulted participant, added by `StartConsult`.
    pub specialist_participant_id: String,
    /// When the consult started.
    pub started_at_ms: u64,
    /// The conversation the agent left, where the rest of the call waits.
    pub(crate) parked_conversation: u32,
}

/// The last consult that ended, kept so that an `EndConsult` retry succeeds quietly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedConsult {
    /// The consulting participant.
    pub agent_participant_id: String,
    /// The consulted participant.
    pub specialist_participant_id: String,
    /// How it ended.
    pub mode: ConsultEnd,
}

/// One call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interaction {
    /// Client-chosen id.
    pub interaction_id: String,
    /// When `CreateInteraction` was applied.
    pub created_at_ms: u64,
    /// Set by `EndInteraction`; terminal.
    pub ended_at_ms: Option<u64>,
    /// Every participant ever, in join order (disconnected ones included).
    pub participants: Vec<Participant>,
    /// The consult in progress, if any (at most one per interaction).
    pub consult: Option<Consult>,
    /// The last consult that ended.
    pub last_consult: Option<EndedConsult>,
    /// Every supervision ever started on this interaction, in start order.
    pub supervision_ids: Vec<String>,
    /// The participant list `CreateInteraction` was called with, to recognise a retry.
    pub(crate) created_with: Vec<ParticipantSpec>,
    /// Next unused conversation label.
    pub(crate) next_conversation: u32,
}

impl Interaction {
    /// `EndInteraction` has been applied.
    pub fn is_ended(&self) -> bool {
        self.ended_at_ms.is_some()
    }

    /// The participant list `CreateInteraction` was called with (an identical create
    /// is a retry).
    pub fn created_with(&self) -> &[ParticipantSpec] {
        &self.created_with
    }

    /// The participant with this id, in any state.
    pub fn participant(&self, participant_id: &str) -> Option<&Participant> {
        self.participants
            .iter()
            .find(|p| p.participant_id == participant_id)
    }

    pub(crate) fn participant_mut(&mut self, participant_id: &str) -> Option<&mut Participant> {
        self.participants
            .iter_mut()
            .find(|p| p.participant_id == participant_id)
    }

    /// The talk groups (SPEC section 1): every connected non-supervisor participant in
    /// exactly one group. Internally each such participant belongs to a *conversation*
    /// (who it talks with when not held); a held participant forms a group of its own,
    /// the others of a conversation form one group. Members are sorted, groups are
    /// sorted by their first member, so the result is deterministic.
    pub fn talk_groups(&self) -> Vec<Vec<String>> {
        let mut by_conversation: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let mut groups: Vec<Vec<String>> = Vec::new();
        for p in &self.participants {
            let Some(conversation) = p.conversation else {
                continue;
            };
            if p.held {
                groups.push(vec![p.participant_id.clone()]);
            } else {
                by_conversation
                    .entry(conversation)
                    .or_default()
                    .push(p.participant_id.clone());
            }
        }
        groups.extend(by_conversation.into_values());
        for g in &mut groups {
            g.sort();
        }
        groups.sort();
        groups
    }

    /// The members of `participant_id`'s talk group (itself included), or empty when it
    /// is not a connected non-supervisor participant.
    pub fn talk_group_of(&self, participant_id: &str) -> Vec<String> {
        let Some(p) = self.participant(participant_id) else {
            return Vec::new();
        };
        let Some(conversation) = p.conversation else {
            return Vec::new();
        };
        if p.held {
            return vec![p.participant_id.clone()];
        }
        let mut members: Vec<String> = self
            .participants
            .iter()
            .filter(|q| q.conversation == Some(conversation) && !q.held)
            .map(|q| q.participant_id.clone())
            .collect();
        members.sort();
        members
    }

    /// A fresh conversation label.
    pub(crate) fn new_conversation(&mut self) -> u32 {
        let c = self.next_conversation;
        // u32 labels: four billion moves per call is not a real limit.
        self.next_conversation = self.next_conversation.wrapping_add(1);
        c
    }

    /// Moves everyone in conversation `from` into `to` (and the consult's parked label
    /// with them, so a consult still finds its parked group after a merge).
    pub(crate) fn relabel(&mut self, from: u32, to: u32) {
        if from == to {
            return;
        }
        for p in &mut self.participants {
            if p.conversation == Some(from) {
                p.conversation = Some(to);
            }
        }
        if let Some(c) = &mut self.consult
            && c.parked_conversation == from
        {
            c.parked_conversation = to;
        }
    }
}

/// A supervisor attached to a target participant in one mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supervision {
    /// Client-chosen id, global across interactions.
    pub supervision_id: String,
    /// The supervised interaction.
    pub interaction_id: String,
    /// The supervisor's directory user.
    pub supervisor_user_id: String,
    /// The supervisor's leg in the interaction (role SUPERVISOR, kind INTERNAL).
    pub supervisor_participant_id: String,
    /// The supervised (non-supervisor) participant.
    pub target_participant_id: String,
    /// Current mode; changes only by escalation to BARGE.
    pub mode: SupervisionMode,
    /// Lifecycle.
    pub state: SupervisionState,
    /// As requested at start (BARGE requests are always `true`).
    pub auto_answer: bool,
    /// The mode the supervision was started with (differs from `mode` after escalation).
    pub requested_mode: SupervisionMode,
    /// Set when a MONITOR or COACH was escalated to BARGE in place.
    pub escalated_from: Option<SupervisionMode>,
    /// The `supervision_id` of an escalating `StartBarge` that named a new id; that id
    /// resolves to this supervision from then on.
    pub escalation_alias: Option<String>,
    /// When it started.
    pub started_at_ms: u64,
    /// When audio started flowing.
    pub connected_at_ms: Option<u64>,
    /// When it ended.
    pub ended_at_ms: Option<u64>,
}

impl Supervision {
    /// Not ended (CONNECTING or ACTIVE).
    pub fn is_live(&self) -> bool {
        self.state != SupervisionState::Ended
    }
}
