//! Inputs ([`Command`]) and outputs ([`Outcome`], [`Event`]) of [`crate::State::apply`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{ConsultEnd, ParticipantSpec, Presence};

/// The fields shared by `StartMonitor`, `StartCoach` and `StartBarge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartSupervision {
    /// The interaction to supervise.
    pub interaction_id: String,
    /// Client-chosen id of the new supervision (global). For an escalating `StartBarge`
    /// it may be the id of the supervision being escalated, or a new id that becomes an
    /// alias of it.
    pub supervision_id: String,
    /// The supervisor's directory user.
    pub supervisor_user_id: String,
    /// Id of the supervisor's leg in the interaction. Must be new, or a disconnected
    /// supervisor leg of the same user (reused after a stop). Ignored when escalating:
    /// the existing leg is kept.
    pub supervisor_participant_id: String,
    /// The participant to supervise.
    pub target_participant_id: String,
    /// `true`: audio flows at once. `false`: CONNECTING until the first RTP packet from
    /// the supervisor (`MediaConnected`). Always treated as `true` for BARGE.
    pub auto_answer: bool,
}

/// One verb of the control API. Ids are client-chosen and validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Command {
    /// Create or update a directory user (presence is kept on update, OFFLINE if new).
    UpsertUser {
        /// User id.
        user_id: String,
        /// Display name.
        display_name: String,
        /// Full permission set (replaces the old one).
        permissions: BTreeSet<String>,
    },
    /// Change a user's presence.
    SetPresence {
        /// User id.
        user_id: String,
        /// New presence.
        presence: Presence,
    },
    /// Create a call; all `participants` start connected in one talk group.
    CreateInteraction {
        /// New interaction id.
        interaction_id: String,
        /// Initial participants (customer + agent, or any list, possibly empty).
        participants: Vec<ParticipantSpec>,
    },
    /// End the call: every live supervision stops, every leg disconnects.
    EndInteraction {
        /// Interaction id.
        interaction_id: String,
    },
    /// Add a connected participant, alone or in the talk group of `join_group_of`.
    AddParticipant {
        /// Interaction id.
        interaction_id: String,
        /// The new participant.
        participant: ParticipantSpec,
        /// Join this participant's conversation; `None` starts alone.
        join_group_of: Option<String>,
    },
    /// Disconnect a participant (a supervisor leg: stops its supervision).
    RemoveParticipant {
        /// Interaction id.
        interaction_id: String,
        /// Participant id.
        participant_id: String,
    },
    /// Put a participant on hold: alone in its own talk group until `Resume`.
    Hold {
        /// Interaction id.
        interaction_id: String,
        /// Participant id.
        participant_id: String,
    },
    /// Take a participant off hold: back into its conversation.
    Resume {
        /// Interaction id.
        interaction_id: String,
        /// Participant id.
        participant_id: String,
    },
    /// The agent leaves its group (which waits, parked) to talk to a new specialist.
    StartConsult {
        /// Interaction id.
        interaction_id: String,
        /// The consulting participant.
        agent_participant_id: String,
        /// The specialist, added by this verb.
        specialist: ParticipantSpec,
    },
    /// End the active consult.
    EndConsult {
        /// Interaction id.
        interaction_id: String,
        /// CANCEL, TRANSFER or CONFERENCE.
        mode: ConsultEnd,
    },
    /// Blind transfer: `to` (new) takes `from`'s place; `from` is left alone.
    Transfer {
        /// Interaction id.
        interaction_id: String,
        /// The participant handing over.
        from_participant_id: String,
        /// The participant taking over, added by this verb.
        to: ParticipantSpec,
    },
    /// Merge the named participants' groups into one (and take them off hold).
    Conference {
        /// Interaction id.
        interaction_id: String,
        /// At least two connected non-supervisor participants.
        participant_ids: Vec<String>,
    },
    /// Start listening silently.
    StartMonitor(StartSupervision),
    /// Start whispering to an internal target.
    StartCoach(StartSupervision),
    /// Join the target's talk group, or escalate the supervisor's monitor/coach in place.
    StartBarge(StartSupervision),
    /// Stop a supervision.
    StopSupervision {
        /// Supervision id (or an escalation alias).
        supervision_id: String,
    },
    /// From the engine: first RTP packet from a participant's leg.
    MediaConnected {
        /// Interaction id.
        interaction_id: String,
        /// Participant id.
        participant_id: String,
    },
    /// From the engine: no RTP from a participant's leg for the configured time.
    MediaTimeout {
        /// Interaction id.
        interaction_id: String,
        /// Participant id.
        participant_id: String,
    },
    /// A live participant's media changed (a SIP re-INVITE: new remote address, new
    /// SRTP keys, another ptime). The rules hold no media: the caller compares the old
    /// and new media and names what changed; nothing changed is an identical retry.
    UpdateMedia {
        /// Interaction id.
        interaction_id: String,
        /// Participant id (a call participant or a supervisor's leg).
        participant_id: String,
        /// What changed, by media field name (`remote`, `ptime_ms`, `srtp_remote_key`,
        /// ...), with the new value to show in the event, or an empty value for what
        /// is never shown (keys). Empty: nothing changed.
        changes: BTreeMap<String, String>,
    },
}

/// Timeline event kinds (SPEC section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum EventKind {
    InteractionCreated,
    ParticipantJoined,
    ParticipantLeft,
    HoldStarted,
    HoldEnded,
    ConsultStarted,
    ConsultEnded,
    Transferred,
    Conferenced,
    MonitorStarted,
    MonitorStopped,
    CoachStarted,
    CoachStopped,
    BargeStarted,
    BargeStopped,
    SupervisorConnected,
    MediaTimeout,
    InteractionEnded,
    /// Not produced by the rules: recorded by the control sidecar when the engine
    /// refused to program an interaction whose intent was already stored (accepted
    /// while the engine was unavailable); details: `reason`, `code`, `participant_id`.
    ProgrammingFailed,
    /// Not produced by the rules: recorded by the control sidecar when a leg could not
    /// be re-created on its recorded local port (the port is gone) and got a new one;
    /// details: `participant_id`, `old_local`, `new_local`.
    LegPortLost,
    /// A directory user was created or changed; details: `user_id`. Its
    /// `interaction_id` is empty: it belongs to no interaction's timeline.
    UserUpserted,
    /// A directory user's presence changed; details: `user_id`, `presence`. Its
    /// `interaction_id` is empty.
    PresenceChanged,
    /// Not produced by the rules: recorded by the control sidecar (cluster) when the
    /// engine node serving this interaction lost its lease; details: `node_id`.
    NodeFailed,
    /// Not produced by the rules: recorded when every leg of an interaction of a
    /// failed node has been re-created on a survivor; details: `node_id` (the new
    /// node), `from_node_id`, `gap_ms` (from the failure's detection to restoration).
    MediaRestored,
    /// A live participant's media was replaced (`UpdateMedia`); details:
    /// `participant_id`, `changed` (comma-separated field names) and the new value of
    /// each changed field that may be shown (never a key).
    MediaUpdated,
}

impl EventKind {
    /// The wire name, e.g. `"MONITOR_STARTED"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::InteractionCreated => "INTERACTION_CREATED",
            EventKind::ParticipantJoined => "PARTICIPANT_JOINED",
            EventKind::ParticipantLeft => "PARTICIPANT_LEFT",
            EventKind::HoldStarted => "HOLD_STARTED",
            EventKind::HoldEnded => "HOLD_ENDED",
            EventKind::ConsultStarted => "CONSULT_STARTED",
            EventKind::ConsultEnded => "CONSULT_ENDED",
            EventKind::Transferred => "TRANSFERRED",
            EventKind::Conferenced => "CONFERENCED",
            EventKind::MonitorStarted => "MONITOR_STARTED",
            EventKind::MonitorStopped => "MONITOR_STOPPED",
            EventKind::CoachStarted => "COACH_STARTED",
            EventKind::CoachStopped => "COACH_STOPPED",
            EventKind::BargeStarted => "BARGE_STARTED",
            EventKind::BargeStopped => "BARGE_STOPPED",
            EventKind::SupervisorConnected => "SUPERVISOR_CONNECTED",
            EventKind::MediaTimeout => "MEDIA_TIMEOUT",
            EventKind::InteractionEnded => "INTERACTION_ENDED",
            EventKind::ProgrammingFailed => "PROGRAMMING_FAILED",
            EventKind::LegPortLost => "LEG_PORT_LOST",
            EventKind::UserUpserted => "USER_UPSERTED",
            EventKind::PresenceChanged => "PRESENCE_CHANGED",
            EventKind::NodeFailed => "NODE_FAILED",
            EventKind::MediaRestored => "MEDIA_RESTORED",
            EventKind::MediaUpdated => "MEDIA_UPDATED",
        }
    }
}

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Actor {
    /// The call controller driving the call verbs (and `StopSupervision`, whose caller
    /// is not identified).
    Orchestrator,
    /// The media engine (`MediaConnected`, `MediaTimeout`).
    Engine,
    /// A directory user: the supervisor for supervision starts.
    User {
        /// The user id.
        user_id: String,
    },
}

/// One timeline entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The interaction's timeline it belongs to.
    pub interaction_id: String,
    /// `now_ms` of the command that produced it.
    pub at_ms: u64,
    /// Who caused it.
    pub actor: Actor,
    /// Details; the keys used are documented in docs/rules.md (`participant_id`,
    /// `supervision_id`, `target_participant_id`, `mode`, `cause`, ...).
    pub details: BTreeMap<String, String>,
}

impl Event {
    /// A detail value, if present.
    pub fn detail(&self, key: &str) -> Option<&str> {
        self.details.get(key).map(String::as_str)
    }
}

/// The object a command acted on, so the caller can read it back with a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Subject {
    /// A directory user (`State::user`).
    User(String),
    /// An interaction (`State::interaction`).
    Interaction(String),
    /// A supervision (`State::supervision`); after an escalation this is the id of the
    /// escalated supervision, not the alias the request may have named.
    Supervision(String),
}

/// The result of an accepted command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The request was already satisfied (identical retry, stop of something stopped,
    /// ...): nothing changed and `events` is empty.
    pub existing: bool,
    /// Timeline events, in order.
    pub events: Vec<Event>,
    /// Interactions whose hear relation changed (the engine must be reprogrammed).
    pub hear_changed: Vec<String>,
    /// The object acted on.
    pub subject: Subject,
}
