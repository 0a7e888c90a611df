//! The state machine: [`State::apply`] and the queries.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{Actor, Command, Event, EventKind, Outcome, StartSupervision, Subject};
use crate::error::{RuleError, quote, reason};
use crate::hear::{self, HearRelation};
use crate::model::{
    Consult, ConsultEnd, EndedConsult, Interaction, PERM_CALL_ADD, Participant, ParticipantKind,
    ParticipantSpec, ParticipantState, Presence, Role, Supervision, SupervisionMode,
    SupervisionState, User,
};

/// Longest id, in characters (SPEC section 1).
pub const MAX_ID_CHARS: usize = 128;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;
/// Longest permission string, in characters.
pub const MAX_PERMISSION_CHARS: usize = 128;

/// Whether `s` is a valid id: 1..=128 characters of `[A-Za-z0-9._:-]`.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_CHARS
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn check_id(field: &'static str, value: &str) -> Result<(), RuleError> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(RuleError::invalid(
            field,
            reason::INVALID_ID,
            format!(
                "{field} must be 1..{MAX_ID_CHARS} chars of [A-Za-z0-9._:-], got \"{}\"",
                quote(value)
            ),
        ))
    }
}

/// Field names for one `ParticipantSpec` inside a request, so errors name the field.
struct SpecFields {
    participant_id: &'static str,
    user_id: &'static str,
    role: &'static str,
}

fn check_spec(spec: &ParticipantSpec, fields: &SpecFields) -> Result<(), RuleError> {
    check_id(fields.participant_id, &spec.participant_id)?;
    if let Some(u) = &spec.user_id {
        check_id(fields.user_id, u)?;
    }
    if spec.role == Role::Supervisor {
        return Err(RuleError::invalid(
            fields.role,
            reason::SUPERVISOR_ROLE_RESERVED,
            format!(
                "participant {} has role SUPERVISOR; supervisors join through StartMonitor, \
                 StartCoach or StartBarge",
                quote(&spec.participant_id)
            ),
        ));
    }
    Ok(())
}

/// Filter for [`State::supervisions`]; `None` fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SupervisionFilter {
    /// Only this interaction.
    pub interaction_id: Option<String>,
    /// Only this supervisor user.
    pub supervisor_user_id: Option<String>,
    /// Only this target participant.
    pub target_participant_id: Option<String>,
    /// Only CONNECTING or ACTIVE ones.
    pub live_only: bool,
}

/// What a handler produced, before the hear-relation diff is added.
struct Done {
    subject: Subject,
    events: Vec<Event>,
    existing: bool,
}

impl Done {
    fn existing(subject: Subject) -> Self {
        Done {
            subject,
            events: Vec::new(),
            existing: true,
        }
    }
}

/// Collects events for one command, stamped with its time.
struct Timeline {
    now_ms: u64,
    events: Vec<Event>,
}

impl Timeline {
    fn new(now_ms: u64) -> Self {
        Timeline {
            now_ms,
            events: Vec::new(),
        }
    }

    fn push(
        &mut self,
        kind: EventKind,
        interaction_id: &str,
        actor: &Actor,
        details: &[(&str, &str)],
    ) {
        self.events.push(Event {
            kind,
            interaction_id: interaction_id.to_owned(),
            at_ms: self.now_ms,
            actor: actor.clone(),
            details: details
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        });
    }
}

fn started_kind(mode: SupervisionMode) -> EventKind {
    match mode {
        SupervisionMode::Monitor => EventKind::MonitorStarted,
        SupervisionMode::Coach => EventKind::CoachStarted,
        SupervisionMode::Barge => EventKind::BargeStarted,
    }
}

fn stopped_kind(mode: SupervisionMode) -> EventKind {
    match mode {
        SupervisionMode::Monitor => EventKind::MonitorStopped,
        SupervisionMode::Coach => EventKind::CoachStopped,
        SupervisionMode::Barge => EventKind::BargeStopped,
    }
}

fn kind_str(kind: ParticipantKind) -> &'static str {
    match kind {
        ParticipantKind::External => "EXTERNAL",
        ParticipantKind::Internal => "INTERNAL",
    }
}

fn role_str(role: Role) -> &'static str {
    match role {
        Role::Customer => "CUSTOMER",
        Role::Agent => "AGENT",
        Role::Specialist => "SPECIALIST",
        Role::Supervisor => "SUPERVISOR",
        Role::Other => "OTHER",
    }
}

fn new_member(spec: &ParticipantSpec, now_ms: u64, conversation: u32) -> Participant {
    Participant {
        participant_id: spec.participant_id.clone(),
        kind: spec.kind,
        role: spec.role,
        user_id: spec.user_id.clone(),
        state: ParticipantState::Connected,
        held: false,
        supervision_id: None,
        joined_at_ms: now_ms,
        left_at_ms: None,
        media_timed_out: false,
        conversation: Some(conversation),
    }
}

fn push_joined(tl: &mut Timeline, interaction_id: &str, spec: &ParticipantSpec) {
    tl.push(
        EventKind::ParticipantJoined,
        interaction_id,
        &Actor::Orchestrator,
        &[
            ("participant_id", &spec.participant_id),
            ("kind", kind_str(spec.kind)),
            ("role", role_str(spec.role)),
            ("user_id", spec.user_id.as_deref().unwrap_or("")),
        ],
    );
}

/// What one command could change, saved by [`State::checkpoint`] and put back by
/// [`State::restore`]. Opaque: it holds copies of the touched objects (`None` for an
/// object that did not exist yet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    users: Vec<(String, Option<User>)>,
    interaction: Option<(String, Option<Interaction>)>,
    supervisions: Vec<(String, Option<Supervision>)>,
    aliases: Vec<(String, Option<String>)>,
}

fn restore_entry<V>(map: &mut BTreeMap<String, V>, id: String, saved: Option<V>) {
    match saved {
        Some(v) => {
            map.insert(id, v);
        }
        None => {
            map.remove(&id);
        }
    }
}

/// The whole control-plane view: directory, interactions, supervisions.
///
/// See the crate documentation for the contract of [`State::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    users: BTreeMap<String, User>,
    interactions: BTreeMap<String, Interaction>,
    supervisions: BTreeMap<String, Supervision>,
    /// Escalation aliases: a new `supervision_id` named by an escalating `StartBarge`
    /// -> the id of the supervision it escalated.
    aliases: BTreeMap<String, String>,
}

impl State {
    // ----------------------------------------------------------------- queries

    /// A directory user.
    pub fn user(&self, user_id: &str) -> Option<&User> {
        self.users.get(user_id)
    }

    /// Every directory user, by id.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// An interaction, ended or not.
    pub fn interaction(&self, interaction_id: &str) -> Option<&Interaction> {
        self.interactions.get(interaction_id)
    }

    /// Every interaction, by id.
    pub fn interactions(&self) -> impl Iterator<Item = &Interaction> {
        self.interactions.values()
    }

    /// Interactions with a participant record (any role, any state) for `user_id`.
    pub fn interactions_for_user(&self, user_id: &str) -> Vec<&Interaction> {
        self.interactions
            .values()
            .filter(|i| {
                i.participants
                    .iter()
                    .any(|p| p.user_id.as_deref() == Some(user_id))
            })
            .collect()
    }

    /// A supervision by id or by escalation alias.
    pub fn supervision(&self, supervision_id: &str) -> Option<&Supervision> {
        let id = self.resolve_supervision(supervision_id)?;
        self.supervisions.get(id)
    }

    /// Supervisions matching `filter`, by id.
    pub fn supervisions(&self, filter: &SupervisionFilter) -> Vec<&Supervision> {
        self.supervisions
            .values()
            .filter(|s| {
                filter
                    .interaction_id
                    .as_ref()
                    .is_none_or(|i| *i == s.interaction_id)
                    && filter
                        .supervisor_user_id
                        .as_ref()
                        .is_none_or(|u| *u == s.supervisor_user_id)
                    && filter
                        .target_participant_id
                        .as_ref()
                        .is_none_or(|t| *t == s.target_participant_id)
                    && (!filter.live_only || s.is_live())
            })
            .collect()
    }

    /// Who hears whom in `interaction_id` (SPEC section 1 rules 1-4); `None` for an
    /// unknown id, no legs and no edges once ended.
    pub fn hear_relation(&self, interaction_id: &str) -> Option<HearRelation> {
        let interaction = self.interactions.get(interaction_id)?;
        Some(hear::compute(interaction, |id| self.supervisions.get(id)))
    }

    /// Forgets one ended interaction with its supervisions and their aliases (the
    /// control sidecar keeps ended calls in its store, not in memory). Returns whether
    /// it was forgotten; a live interaction is kept (programmer error: asserted in debug).
    pub fn forget_interaction(&mut self, interaction_id: &str) -> bool {
        let ended = self
            .interactions
            .get(interaction_id)
            .is_some_and(Interaction::is_ended);
        debug_assert!(
            ended || !self.interactions.contains_key(interaction_id),
            "only ended interactions are forgotten"
        );
        if !ended {
            return false;
        }
        if let Some(i) = self.interactions.remove(interaction_id) {
            for sid in &i.supervision_ids {
                if let Some(s) = self.supervisions.remove(sid)
                    && let Some(alias) = s.escalation_alias
                {
                    self.aliases.remove(&alias);
                }
            }
        }
        true
    }

    /// Forgets interactions that ended before `ended_before_ms`, with their supervisions
    /// and aliases, and returns how many were removed. The timeline lives in the store,
    /// so this only bounds memory; an identical retry of a forgotten create would create
    /// it again, so callers should keep a retry window's worth.
    pub fn prune_ended(&mut self, ended_before_ms: u64) -> usize {
        let doomed: Vec<String> = self
            .interactions
            .values()
            .filter(|i| i.ended_at_ms.is_some_and(|t| t < ended_before_ms))
            .map(|i| i.interaction_id.clone())
            .collect();
        for id in &doomed {
            if let Some(i) = self.interactions.remove(id) {
                for sid in &i.supervision_ids {
                    if let Some(s) = self.supervisions.remove(sid)
                        && let Some(alias) = s.escalation_alias
                    {
                        self.aliases.remove(&alias);
                    }
                }
            }
        }
        doomed.len()
    }

    // ----------------------------------------------------------------- undo

    /// Saves exactly what `cmd` can change, so that [`State::restore`] puts it back
    /// after a later step of the caller refuses (the control sidecar applies a command
    /// tentatively, programs the engine, and undoes the command if the engine refuses).
    /// Cheap: one interaction with its supervisions, or one user, never the whole state.
    pub fn checkpoint(&self, cmd: &Command) -> Checkpoint {
        let mut cp = Checkpoint::default();
        match cmd {
            Command::UpsertUser { user_id, .. } | Command::SetPresence { user_id, .. } => {
                cp.users
                    .push((user_id.clone(), self.users.get(user_id).cloned()));
            }
            _ => {}
        }
        if let Some(interaction_id) = self.scope_of(cmd) {
            let interaction = self.interactions.get(&interaction_id).cloned();
            if let Some(i) = &interaction {
                for sid in &i.supervision_ids {
                    cp.supervisions
                        .push((sid.clone(), self.supervisions.get(sid).cloned()));
                    if let Some(alias) = self
                        .supervisions
                        .get(sid)
                        .and_then(|s| s.escalation_alias.clone())
                    {
                        cp.aliases
                            .push((alias.clone(), self.aliases.get(&alias).cloned()));
                    }
                }
            }
            cp.interaction = Some((interaction_id, interaction));
        }
        if let Command::StartMonitor(r) | Command::StartCoach(r) | Command::StartBarge(r) = cmd {
            // A new supervision, or an escalation that records a new id as an alias.
            cp.supervisions.push((
                r.supervision_id.clone(),
                self.supervisions.get(&r.supervision_id).cloned(),
            ));
            cp.aliases.push((
                r.supervision_id.clone(),
                self.aliases.get(&r.supervision_id).cloned(),
            ));
        }
        cp
    }

    /// Puts back what [`State::checkpoint`] saved: the state is then exactly as it was
    /// when the checkpoint was taken, whatever commands the checkpoint's command changed.
    pub fn restore(&mut self, cp: Checkpoint) {
        // Later entries were saved from the same state as earlier ones, so the order of
        // restoring does not matter; duplicates restore the same value twice.
        for (id, user) in cp.users {
            restore_entry(&mut self.users, id, user);
        }
        for (id, supervision) in cp.supervisions {
            restore_entry(&mut self.supervisions, id, supervision);
        }
        for (id, target) in cp.aliases {
            restore_entry(&mut self.aliases, id, target);
        }
        if let Some((id, interaction)) = cp.interaction {
            restore_entry(&mut self.interactions, id, interaction);
        }
    }

    // ----------------------------------------------------------------- apply

    /// Applies one command at wall time `now_ms`. On error the state is unchanged.
    pub fn apply(&mut self, now_ms: u64, cmd: Command) -> Result<Outcome, RuleError> {
        let scope = self.scope_of(&cmd);
        let before = scope.as_deref().and_then(|i| self.hear_relation(i));
        let done = self.dispatch(now_ms, cmd)?;
        let after = scope.as_deref().and_then(|i| self.hear_relation(i));
        let hear_changed = match scope {
            Some(i) if before != after => vec![i],
            _ => Vec::new(),
        };
        Ok(Outcome {
            existing: done.existing,
            events: done.events,
            hear_changed,
            subject: done.subject,
        })
    }

    /// The interaction a command can touch, if any.
    fn scope_of(&self, cmd: &Command) -> Option<String> {
        match cmd {
            Command::UpsertUser { .. } | Command::SetPresence { .. } => None,
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
            Command::StartMonitor(r) | Command::StartCoach(r) | Command::StartBarge(r) => {
                Some(r.interaction_id.clone())
            }
            Command::StopSupervision { supervision_id } => self
                .supervision(supervision_id)
                .map(|s| s.interaction_id.clone()),
        }
    }

    fn dispatch(&mut self, now_ms: u64, cmd: Command) -> Result<Done, RuleError> {
        match cmd {
            Command::UpsertUser {
                user_id,
                display_name,
                permissions,
            } => self.upsert_user(now_ms, user_id, display_name, permissions),
            Command::SetPresence { user_id, presence } => {
                self.set_presence(now_ms, user_id, presence)
            }
            Command::CreateInteraction {
                interaction_id,
                participants,
            } => self.create_interaction(now_ms, interaction_id, participants),
            Command::EndInteraction { interaction_id } => {
                self.end_interaction(now_ms, interaction_id)
            }
            Command::AddParticipant {
                interaction_id,
                participant,
                join_group_of,
            } => self.add_participant(now_ms, interaction_id, participant, join_group_of),
            Command::RemoveParticipant {
                interaction_id,
                participant_id,
            } => self.remove_participant(now_ms, interaction_id, participant_id),
            Command::Hold {
                interaction_id,
                participant_id,
            } => self.set_hold(now_ms, interaction_id, participant_id, true),
            Command::Resume {
                interaction_id,
                participant_id,
            } => self.set_hold(now_ms, interaction_id, participant_id, false),
            Command::StartConsult {
                interaction_id,
                agent_participant_id,
                specialist,
            } => self.start_consult(now_ms, interaction_id, agent_participant_id, specialist),
            Command::EndConsult {
                interaction_id,
                mode,
            } => self.end_consult(now_ms, interaction_id, mode),
            Command::Transfer {
                interaction_id,
                from_participant_id,
                to,
            } => self.transfer(now_ms, interaction_id, from_participant_id, to),
            Command::Conference {
                interaction_id,
                participant_ids,
            } => self.conference(now_ms, interaction_id, participant_ids),
            Command::StartMonitor(r) => self.start_supervision(now_ms, SupervisionMode::Monitor, r),
            Command::StartCoach(r) => self.start_supervision(now_ms, SupervisionMode::Coach, r),
            Command::StartBarge(r) => self.start_supervision(now_ms, SupervisionMode::Barge, r),
            Command::StopSupervision { supervision_id } => {
                self.stop_supervision(now_ms, supervision_id)
            }
            Command::MediaConnected {
                interaction_id,
                participant_id,
            } => self.media_connected(now_ms, interaction_id, participant_id),
            Command::MediaTimeout {
                interaction_id,
                participant_id,
            } => self.media_timeout(now_ms, interaction_id, participant_id),
            Command::UpdateMedia {
                interaction_id,
                participant_id,
                changes,
            } => self.update_media(now_ms, interaction_id, participant_id, &changes),
        }
    }

    // ----------------------------------------------------------------- lookups

    fn resolve_supervision<'a>(&'a self, id: &'a str) -> Option<&'a str> {
        if self.supervisions.contains_key(id) {
            Some(id)
        } else {
            self.aliases.get(id).map(String::as_str)
        }
    }

    fn find_interaction(&self, interaction_id: &str) -> Result<&Interaction, RuleError> {
        self.interactions.get(interaction_id).ok_or_else(|| {
            RuleError::not_found(
                reason::INTERACTION_NOT_FOUND,
                format!("no interaction {}", quote(interaction_id)),
            )
        })
    }

    /// The interaction a handler already found. Panics only on a handler bug.
    fn interaction_mut(&mut self, interaction_id: &str) -> &mut Interaction {
        self.interactions
            .get_mut(interaction_id)
            .expect("handlers look the interaction up before mutating it")
    }

    fn not_ended(interaction: &Interaction) -> Result<(), RuleError> {
        if interaction.is_ended() {
            Err(RuleError::precondition(
                reason::INTERACTION_ENDED,
                format!(
                    "interaction {} has ended",
                    quote(&interaction.interaction_id)
                ),
            ))
        } else {
            Ok(())
        }
    }

    fn find_participant<'a>(
        interaction: &'a Interaction,
        participant_id: &str,
    ) -> Result<&'a Participant, RuleError> {
        interaction.participant(participant_id).ok_or_else(|| {
            RuleError::not_found(
                reason::PARTICIPANT_NOT_FOUND,
                format!(
                    "no participant {} in interaction {}",
                    quote(participant_id),
                    quote(&interaction.interaction_id)
                ),
            )
        })
    }

    /// A call verb needs a connected non-supervisor participant here.
    fn check_call_member(field: &'static str, participant: &Participant) -> Result<(), RuleError> {
        if participant.is_supervisor() {
            return Err(RuleError::invalid(
                field,
                reason::PARTICIPANT_IS_SUPERVISOR,
                format!(
                    "participant {} is a supervisor leg; use the supervision verbs",
                    quote(&participant.participant_id)
                ),
            ));
        }
        if !participant.is_connected() {
            return Err(RuleError::precondition(
                reason::PARTICIPANT_NOT_CONNECTED,
                format!(
                    "participant {} is not connected",
                    quote(&participant.participant_id)
                ),
            ));
        }
        Ok(())
    }

    /// Live supervisions of one interaction, as ids.
    fn live_supervisions(&self, interaction_id: &str) -> Vec<String> {
        self.interactions
            .get(interaction_id)
            .map(|i| {
                i.supervision_ids
                    .iter()
                    .filter(|id| self.supervisions.get(*id).is_some_and(Supervision::is_live))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    // ----------------------------------------------------------------- shared effects

    /// Ends a live supervision and disconnects its supervisor leg, with its *_STOPPED
    /// event. A no-op on an ended one.
    fn end_supervision(
        &mut self,
        tl: &mut Timeline,
        supervision_id: &str,
        actor: &Actor,
        cause: &str,
    ) {
        let Some(s) = self.supervisions.get_mut(supervision_id) else {
            return;
        };
        if !s.is_live() {
            return;
        }
        s.state = SupervisionState::Ended;
        s.ended_at_ms = Some(tl.now_ms);
        let s = s.clone();
        let interaction = self.interaction_mut(&s.interaction_id);
        if let Some(p) = interaction.participant_mut(&s.supervisor_participant_id) {
            // A supervisor leg is only reused once disconnected, so a live supervision
            // always owns its leg.
            assert_eq!(p.supervision_id.as_deref(), Some(supervision_id));
            p.state = ParticipantState::Disconnected;
            p.left_at_ms = Some(tl.now_ms);
        }
        tl.push(
            stopped_kind(s.mode),
            &s.interaction_id,
            actor,
            &[
                ("supervision_id", &s.supervision_id),
                ("supervisor_participant_id", &s.supervisor_participant_id),
                ("supervisor_user_id", &s.supervisor_user_id),
                ("target_participant_id", &s.target_participant_id),
                ("cause", cause),
            ],
        );
    }

    /// Disconnects a non-supervisor participant and ends the supervisions that target it.
    /// Does not touch the consult; callers handle that.
    fn disconnect_member(
        &mut self,
        tl: &mut Timeline,
        interaction_id: &str,
        participant_id: &str,
        actor: &Actor,
        cause: &str,
    ) {
        let now_ms = tl.now_ms;
        let interaction = self.interaction_mut(interaction_id);
        let Some(p) = interaction.participant_mut(participant_id) else {
            return;
        };
        assert!(!p.is_supervisor());
        p.state = ParticipantState::Disconnected;
        p.conversation = None;
        p.held = false;
        p.left_at_ms = Some(now_ms);
        tl.push(
            EventKind::ParticipantLeft,
            interaction_id,
            actor,
            &[("participant_id", participant_id), ("cause", cause)],
        );
        for sid in self.live_supervisions(interaction_id) {
            let targets_it = self
                .supervisions
                .get(&sid)
                .is_some_and(|s| s.target_participant_id == participant_id);
            if targets_it {
                self.end_supervision(tl, &sid, actor, "TARGET_LEFT");
            }
        }
    }

    /// Ends the active consult and records it as the last one.
    fn close_consult(
        &mut self,
        tl: &mut Timeline,
        interaction_id: &str,
        mode: ConsultEnd,
        cause: &str,
    ) -> Option<Consult> {
        let interaction = self.interaction_mut(interaction_id);
        let consult = interaction.consult.take()?;
        interaction.last_consult = Some(EndedConsult {
            agent_participant_id: consult.agent_participant_id.clone(),
            specialist_participant_id: consult.specialist_participant_id.clone(),
            mode,
        });
        tl.push(
            EventKind::ConsultEnded,
            interaction_id,
            &Actor::Orchestrator,
            &[
                ("agent_participant_id", &consult.agent_participant_id),
                (
                    "specialist_participant_id",
                    &consult.specialist_participant_id,
                ),
                ("mode", mode.as_str()),
                ("cause", cause),
            ],
        );
        Some(consult)
    }

    fn move_to_conversation(
        &mut self,
        interaction_id: &str,
        participant_id: &str,
        conversation: u32,
    ) {
        if let Some(p) = self
            .interaction_mut(interaction_id)
            .participant_mut(participant_id)
            && p.conversation.is_some()
        {
            p.conversation = Some(conversation);
        }
    }

    fn move_alone(&mut self, interaction_id: &str, participant_id: &str) {
        let interaction = self.interaction_mut(interaction_id);
        let c = interaction.new_conversation();
        if let Some(p) = interaction.participant_mut(participant_id)
            && p.conversation.is_some()
        {
            p.conversation = Some(c);
        }
    }

    // ----------------------------------------------------------------- directory

    fn upsert_user(
        &mut self,
        now_ms: u64,
        user_id: String,
        display_name: String,
        permissions: BTreeSet<String>,
    ) -> Result<Done, RuleError> {
        check_id("user_id", &user_id)?;
        if display_name.chars().count() > MAX_DISPLAY_NAME_CHARS
            || display_name.chars().any(char::is_control)
        {
            return Err(RuleError::invalid(
                "display_name",
                reason::INVALID_DISPLAY_NAME,
                format!(
                    "display_name must be at most {MAX_DISPLAY_NAME_CHARS} chars without \
                     control characters"
                ),
            ));
        }
        for perm in &permissions {
            if perm.is_empty()
                || perm.chars().count() > MAX_PERMISSION_CHARS
                || perm.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(RuleError::invalid(
                    "permissions",
                    reason::INVALID_PERMISSION,
                    format!("invalid permission \"{}\"", quote(perm)),
                ));
            }
        }
        let subject = Subject::User(user_id.clone());
        // Directory changes are events too (WatchEvents), on no interaction's timeline.
        let mut tl = Timeline::new(now_ms);
        tl.push(
            EventKind::UserUpserted,
            "",
            &Actor::Orchestrator,
            &[("user_id", &user_id)],
        );
        if let Some(u) = self.users.get_mut(&user_id) {
            if u.display_name == display_name && u.permissions == permissions {
                return Ok(Done::existing(subject));
            }
            u.display_name = display_name;
            u.permissions = permissions;
        } else {
            self.users.insert(
                user_id.clone(),
                User {
                    user_id,
                    display_name,
                    permissions,
                    presence: Presence::Offline,
                },
            );
        }
        Ok(Done {
            subject,
            events: tl.events,
            existing: false,
        })
    }

    fn set_presence(
        &mut self,
        now_ms: u64,
        user_id: String,
        presence: Presence,
    ) -> Result<Done, RuleError> {
        check_id("user_id", &user_id)?;
        let u = self.users.get_mut(&user_id).ok_or_else(|| {
            RuleError::not_found(
                reason::USER_NOT_FOUND,
                format!("no user {}", quote(&user_id)),
            )
        })?;
        let subject = Subject::User(user_id.clone());
        if u.presence == presence {
            return Ok(Done::existing(subject));
        }
        u.presence = presence;
        let mut tl = Timeline::new(now_ms);
        tl.push(
            EventKind::PresenceChanged,
            "",
            &Actor::Orchestrator,
            &[("user_id", &user_id), ("presence", presence.as_str())],
        );
        Ok(Done {
            subject,
            events: tl.events,
            existing: false,
        })
    }

    // ----------------------------------------------------------------- call verbs

    fn create_interaction(
        &mut self,
        now_ms: u64,
        interaction_id: String,
        participants: Vec<ParticipantSpec>,
    ) -> Result<Done, RuleError> {
        check_id("interaction_id", &interaction_id)?;
        let fields = SpecFields {
            participant_id: "participants.participant_id",
            user_id: "participants.user_id",
            role: "participants.role",
        };
        let mut seen = BTreeSet::new();
        for spec in &participants {
            check_spec(spec, &fields)?;
            if !seen.insert(spec.participant_id.as_str()) {
                return Err(RuleError::invalid(
                    fields.participant_id,
                    reason::DUPLICATE_PARTICIPANT,
                    format!("participant {} listed twice", quote(&spec.participant_id)),
                ));
            }
        }
        let subject = Subject::Interaction(interaction_id.clone());
        if let Some(existing) = self.interactions.get(&interaction_id) {
            if existing.created_with == participants {
                return Ok(Done::existing(subject));
            }
            return Err(RuleError::exists(
                reason::INTERACTION_EXISTS,
                format!(
                    "interaction {} exists with other participants",
                    quote(&interaction_id)
                ),
            ));
        }
        let mut tl = Timeline::new(now_ms);
        tl.push(
            EventKind::InteractionCreated,
            &interaction_id,
            &Actor::Orchestrator,
            &[("participant_count", &participants.len().to_string())],
        );
        for spec in &participants {
            push_joined(&mut tl, &interaction_id, spec);
        }
        let interaction = Interaction {
            interaction_id: interaction_id.clone(),
            created_at_ms: now_ms,
            ended_at_ms: None,
            participants: participants
                .iter()
                .map(|s| new_member(s, now_ms, 0))
                .collect(),
            consult: None,
            last_consult: None,
            supervision_ids: Vec::new(),
            created_with: participants,
            next_conversation: 1,
        };
        self.interactions.insert(interaction_id, interaction);
        Ok(Done {
            subject,
            events: tl.events,
            existing: false,
        })
    }

    fn end_interaction(&mut self, now_ms: u64, interaction_id: String) -> Result<Done, RuleError> {
        check_id("interaction_id", &interaction_id)?;
        let subject = Subject::Interaction(interaction_id.clone());
        if self.find_interaction(&interaction_id)?.is_ended() {
            return Ok(Done::existing(subject));
        }
        let mut tl = Timeline::new(now_ms);
        for sid in self.live_supervisions(&interaction_id) {
            self.end_supervision(&mut tl, &sid, &Actor::Orchestrator, "INTERACTION_ENDED");
        }
        let interaction = self.interaction_mut(&interaction_id);
        for p in &mut interaction.participants {
            if p.state != ParticipantState::Disconnected {
                p.state = ParticipantState::Disconnected;
                p.left_at_ms = Some(now_ms);
            }
            p.conversation = None;
            p.held = false;
        }
        interaction.consult = None;
        interaction.ended_at_ms = Some(now_ms);
        tl.push(
            EventKind::InteractionEnded,
            &interaction_id,
            &Actor::Orchestrator,
            &[],
        );
        Ok(Done {
            subject,
            events: tl.events,
            existing: false,
        })
    }

    fn add_participant(
        &mut self,
        now_ms: u64,
        interaction_id: String,
        participant: ParticipantSpec,
        join_group_of: Option<String>,
    ) -> Result<Done, RuleError> {
        check_id("interaction_id", &interaction_id)?;
        check_spec(
            &participant,
            &SpecFields {
                participant_id: "participant.participant_id",
                user_id: "participant.user_id",
                role: "participant.role",
            },
        )?;
        if let Some(j) = &join_group_of {
            check_id("join_group_of", j)?;
        }
        let interaction = self.find_interaction(&interaction_id)?;
        let join = match &join_group_of {
            Some(j) => Some(Self::find_participant(interaction, j)?),
            None => None,
        };
        let subject = Subject::Interaction(interaction_id.clone());
        if let Some(existing) = interaction.participant(&participant.participant_id) {
            if !existing.is_supervisor() && existing.spec() == participant {
                return Ok(Done::existing(subject));
            }
            return Err(RuleError::exists(
                reason::PARTICIPANT_EXISTS,
                format!(
                    "participant {} exists with other content",
                    quote(&participant.participant_id)
                ),
            ));
        }
        Self::not_ended(interaction)?;
        let conversation = match join {
            Some(j) => {
                Self::check_call_member("join_group_of", j)?;
                j.conversation
            }
            None => None,
        };
        let mut tl = Timeline::new(now_ms);
        push_joined(&mut tl, &interaction_id, &participant);
        let interaction = self.interaction_mut(&interaction_id);
        let conversation = conversation.unwrap_or_else(|| interaction.new_conversation());
        interaction
            .participants
            .push(new_member(&participant, now_ms, conversation));
        Ok(Done {
            subject,
            events: tl.events,
            existing: false,
        })
    }

    fn remove_participant(
        &mut self,
        now_ms: u64,
        interaction_id: String,
        participant_id: String,
    ) -> Result<Done, RuleError> {
        check_id("interaction_id", &interaction_id)?;
        check_id("participant_id", &participant_id)?;
        let interaction = self.find_interaction(&interaction_id)?;
        let p = Self::find_participant(interaction, &participant_id)?;
        let subject = Subject::Interaction(interaction_id.clone());
        if p.state == ParticipantState::Disconnected {
            // Also covers every participant of an ended interaction.
            return Ok(Done::existing(subject));
        }
        let mut tl = Timeline::new(now_ms);
        let actor = Actor::Orchestrator;
        if p.is_supervisor() {
            let sid = p
                .supervision_id
                .clone()
                .expect("a supervisor leg always names its supervision");
            self.end_supervision(&mut tl, &sid, &actor, "PARTICIPANT_REMOVED");
            return Ok(Done {
                subject,
                events: tl.events,
                existing: false,
            });
        }
        let consult = interaction.consult.clone();
        self.disconnect_member(&mut tl, &interaction_id, &participant_id, &actor, "REMOVED");
        if let Some(c) = consult {
            if c.specialist_participant_id == participant_id {
                // The specialist hung up: the agent goes back to the parked group, as
                // if the consult had been cancelled.
                self.close_consult(
                    &mut tl,
                    &interaction_id,
                    ConsultEnd::Cancel,
                    "SPECIALIST_LEFT",
                );
                self.move_to_conversation(
                    &interaction_id,
                    &c.agent_participant_id,
                    c.parked_conversation,
                );
            } else if c.agent_participant_id == participant_id {
                // The agent hung up during the consult: the classic attended transfer,
                // the specialist takes over the parked group.
                self.close_consult(&mut tl, &interaction_id, ConsultEnd::Transfer, "AGENT_LEFT");
                self.move_to_conversation(
                    &interaction_id,
                    &c.specialist_participant_id,
                    c.parked_conversation,
                );
            }
        }
        Ok(Done {
            subject,
            events: tl.events,
            existing: false,
        })
    }

    fn set_hold(
        &mut self,
        now_ms: u64,
        interaction_id: String,
        participant_id: String,
        hold: bool,
    ) -> Result<Done, RuleError> {
        check_id("interaction_id", &interaction_id)?;
        check_id("participant_id", &participant_id)?;
        let interaction = self.find_interaction(&interaction_id)?;
        let p = Self::find_participant(interaction, &participant_id)?;
        let subject = Subject::Interaction(interaction_id.clone());
        Self::not_ended(interaction)?;
        Self::check_call_member("participant_id", p)?;
        if p.held == hold {
            return Ok(Done::existing(subject));
        }
        let mut tl = Timeline::new(now_ms);
        let kind = if hold {
            EventKind::HoldStarted
        } else {
            EventKind::HoldEnded
        };
        tl.push(
            kind,
            &interaction_id,
            &Actor::Orchestrator,
            &[("participant_id", &participant_id)],
        );
        if let Some(p) = self
            .interaction_mut(&interaction_id)
            .participant_mut(&participant_id)
        {
            p.held = hold;
        }
        Ok(Done {
            subject,
            events: tl.events,
            existing: false,
        })
    }

    fn start_consult(
        &mut self,
        now_ms: u64,
        interaction_id: String,
        agent_participant_id: String,
        specialist: ParticipantSpec,
    ) -> Result<Done, RuleError> {
        check_id("interaction_id", &interaction_id)?;
        check_id("agent_participant_id", &agent_participant_id)?;
        check_spec(
            &specialist,
            &SpecFields {
                participant_id: "specialist.participant_id",
                user_id: "specialist.user_id",
                role: "specialist.role",
            },
        )?;
        let interaction = self.find_interaction(&interaction_id)?;
        let agent = Self::find_participant(interaction, &agent_participant_id)?;
        let subject = Subject::Interaction(interaction_id.clone());
        if let Some(existing) = interaction.participant(&specialist.participant_id) {
            let same_consult = interaction.consult.as_ref().is_some_and(|c| {
                c.agent_participant_id == agent_participant_id
                    && c.specialist_participant_id == specialist.participant_id
            });
            if same_consult && existing.spec() == specialist {
                return Ok(Done::existing(subject));
            }
            return Err(RuleError::exists(
                reason::PARTICIPANT_EXISTS,
                format!(
                    "participant {} already exists",
                    quote(&specialist.participant_id)
                ),
            ));
        }
        Self::not_ended(interaction)?;
        Self::check_call_member("agent_participant_id", agent)?;
        if let Some(c) = &interaction.consult {
            return Err(RuleError::precondition(
                reason::CONSULT_ALREADY_ACTIVE,
                format!(
                    "{} is already consulting {}",
                    quote(&c.agent_participant_id),
                    quote(&c.specialist_participant_id)
                ),
            ));
        }
        if agent.held {
            return Err(RuleError::precondition(
                reason::PARTICIPANT_ON_HOLD,
                format!("{} is on hold", quote(&agent_participant_id)),
            ));
        }
        let parked = agent
            .conversation
            .expect("a connected non-supervisor participant has a conversation");
        let mut tl = Timeline::new(now_ms);
        push_joined(&mut tl, &interaction_id, &specialist);
        tl.push(
            EventKind::ConsultStarted,
            &interaction_id,
            &Actor::Orchestrator,
            &[
                ("agent_participant_id", &agent_participant_id),
                ("specialist_participant_id", &specialist.participant_id),
            ],
        );
        let interaction = self.interaction_mut(&interaction_id);
        let side = interaction.new_conversation();
        interaction
            .participants
            .push(new_member(&specialist, now_ms, side));
        interaction.consult = Some(Consult {
            agent_participant_id: agent_participant_id.clone(),
            specialist_participant_id: specialist.participant_id,
            started_at_ms: now_ms,
            parked_conversation: parked,
        });
        self.move_to_conversation(&interaction_id, &agent_participant_id, side);
        Ok(Done {
            subject,
            events: tl.events,
            existing: false,
        })
    }

    fn end_consult(
        &mut self,
        now_ms: u64,
        interaction_id: String,
        mode: ConsultEnd,
    ) -> Result<Done, RuleError> {
        check_id("interaction_id", &interaction_id)?;
        let interaction = self.find_interaction(&interaction_id)?;
        let subject = Subject::Interaction(interaction_id.clone());
        if interaction.consult.is_none()
            && interaction
                .last_consult
                .as_ref()
                .is_some_and(|c| c.mode == mode)
        {
            return Ok(Done::existing(subject));
        }
        Self::not_ended(interaction)?;
        if interaction.consult.is_none() {
            return Err(RuleError::precondition(
                reason::NO_ACTIVE_CONSULT,
                format!("no consult is active in {}", quote(&interaction_id)),
            ));
        }
        let mut tl = Timeline::new(now_ms);
        let c = self
            .close_consult(&mut tl, &interaction_id, mode, "END_CONSULT")
            .expect("checked above that a consult is active");
        let (agent, specialist) = (&c.agent_participant_id, &c.specialist_participant_id);
        match mode {
            ConsultEnd::Cancel => {
                self.move_to_conversation(&interaction_id, agent, c.parked_conversation);
                self.disconnect_member(
                    &mut tl,
                    &interaction_id,
                    specialist,
                    &Actor::Orchestrator,
                    "CONSULT_CANCELLED",
                );
            }
            ConsultEnd::Transfer => {
                self.move_to_conversation(&interaction_id, specialist, c.parked_conversation);
                self.move_alone(&interaction_id, agent);
            }
            ConsultEnd::Conference => {
                let interaction = self.interaction_mut(&interaction_id);
                for id in [agent, specialist] {
                    if let Some(from) = interaction.participant(id).and_then(|p| p.conversation) {
                        interaction.relabel(from, c.parked_conversation);
                    }
                }
            }
        }
        Ok(Done {
            subject,
            events: tl.events,
            existing: false,
        })
    }

    fn transfer(
        &mut self,
        now_ms: u64,
        interaction_id: String,
        from_participant_id: String,
        to: ParticipantSpec,
    ) -> Result<Done, RuleError> {
        check_id("interaction_id", &interaction_id)?;
        check_id("from_participant_id", &from_participant_id)?;
        check_spec(
            &to,
            &SpecFields {
                participant_id: "to.participant_id",
                user_id: "to.user_id",
                role: "to.role",
            },
        )?;
        let interaction = self.find_interaction(&interaction_id)?;
        let from = Self::find_participant(interaction, &from_participant_id)?;
        let subject = Subject::Interaction(interaction_id.clone());
        if let Some(existing) = interaction.participant(&to.participant_id) {
            if !existing.is_supervisor() && existing.spec() == to {
                return Ok(Done::existing(subject));
            }
            return Err(RuleError::exists(
                reason::PARTICIPANT_EXISTS,
                format!(
                    "participant {} exists with other content",
                    quote(&to.participant_id)
                ),
            ));
        }
        Self::not_ended(interaction)?;
        Self::check_call_member("from_participant_id", from)?;
        if let Some(c) = &interaction.consult
            && (c.agent_participant_id == from_participant_id
                || c.specialist_participant_id == from_participant_id)
        {
            return Err(RuleError::precondition(
                reason::CONSULT_ACTIVE,
                format!(
                    "{} is in an active consult; end it first",
                    quote(&from_participant_id)
                ),
            ));
        }
        let conversation = from
            .conversation
            .expect("a connected non-supervisor participant has a conversation");
        let mut tl = Timeline::new(now_ms);
        push_joined(&mut tl, &interaction_id, &to);
        tl.push(
            EventKind::Transferred,
            &interaction_id,
            &Actor::Orchestrator,
            &[
                ("from_participant_id", &from_participant_id),
                ("to_participant_id", &to.participant_id),
            ],
        );
        let interaction = self.interaction_mut(&interaction_id);
        interaction
            .participants
            .push(new_member(&to, now_ms, conversation));
        // `from` is left alone and off hold: it no longer belongs to the call's
        // conversation, so its hold would mean nothing.
        if let Some(p) = interaction.participant_mut(&from_participant_id) {
            p.held = false;
        }
        self.move_alone(&interaction_id, &from_participant_id);
        Ok(Done {
            subject,
            events: tl.events,
            existing: false,
        })
    }

    fn conference(
        &mut self,
        now_ms: u64,
        interaction_id: String,
        participant_ids: Vec<String>,
    ) -> Result<Done, RuleError> {
        check_id("interaction_id", &interaction_id)?;
        let mut seen = BTreeSet::new();
        for id in &participant_ids {
            check_id("participant_ids", id)?;
            if !seen.insert(id.as_str()) {
                return Err(RuleError::invalid(
                    "participant_ids",
                    reason::DUPLICATE_PARTICIPANT,
                    format!("participant {} listed twice", quote(id)),
                ));
            }
        }
        if participant_ids.len() < 2 {
            return Err(RuleError::invalid(
                "participant_ids",
                reason::TOO_FEW_PARTICIPANTS,
                "a conference needs at least two participants".to_owned(),
            ));
        }
        let interaction = self.find_interaction(&interaction_id)?;
        let mut members = Vec::with_capacity(participant_ids.len());
        for id in &participant_ids {
            members.push(Self::find_participant(interaction, id)?);
        }
        let subject = Subject::Interaction(interaction_id.clone());
        let first_conversation = members[0].conversation;
        let already = members.iter().all(|p| {
            !p.is_supervisor()
                && p.is_connected()
                && !p.held
                && p.conversation.is_some()
                && p.conversation == first_conversation
        });
        if already {
            return Ok(Done::existing(subject));
        }
        Self::not_ended(interaction)?;
        for p in &members {
            Self::check_call_member("participant_ids", p)?;
        }
        let conversations: Vec<u32> = members.iter().filter_map(|p| p.conversation).collect();
        let mut tl = Timeline::new(now_ms);
        let joined = participant_ids.join(",");
        tl.push(
            EventKind::Conferenced,
            &interaction_id,
            &Actor::Orchestrator,
            &[("participant_ids", &joined)],
        );
        let interaction = self.interaction_mut(&interaction_id);
        let target = conversations[0];
        for &c in &conversations[1..] {
            interaction.relabel(c, target);
        }
        for id in &participant_ids {
            if let Some(p) = interaction.participant_mut(id) {
                p.held = false;
            }
        }
        Ok(Done {
            subject,
            events: tl.events,
            existing: false,
        })
    }

    // ----------------------------------------------------------------- supervision

    /// StartMonitor, StartCoach and StartBarge: the checks of SPEC section 2 in their
    /// documented order, one function per row, then the one change they allow.
    fn start_supervision(
        &mut self,
        now_ms: u64,
        mode: SupervisionMode,
        req: StartSupervision,
    ) -> Result<Done, RuleError> {
        // 1. Validation.
        check_supervision_ids(&req)?;
        let auto_answer = mode == SupervisionMode::Barge || req.auto_answer;
        // 2. Not found.
        let interaction = self.find_interaction(&req.interaction_id)?;
        let user = self.find_user(&req.supervisor_user_id)?;
        let target = Self::find_participant(interaction, &req.target_participant_id)?;
        // 3./4. Replay, or the id taken by something else.
        let escalate_by_id = match self.existing_supervision_id(mode, auto_answer, &req)? {
            IdUse::Replay(subject) => return Ok(Done::existing(subject)),
            IdUse::EscalateById => true,
            IdUse::Fresh => false,
        };
        // 5. Interaction ended.
        Self::not_ended(interaction)?;
        // 6. Role misuse.
        check_target_is_not_supervisor(target)?;
        // 7. Permission.
        check_supervision_permission(user, mode)?;
        // 8. Failed preconditions, in documented order.
        check_supervisor_not_participant(interaction, &req)?;
        let escalating = match self.live_supervision_here(interaction, &req) {
            None => {
                self.check_supervisor_free(interaction, user, &req)?;
                None
            }
            Some(current) => Some(check_escalation(current, mode, &req)?),
        };
        debug_assert!(!escalate_by_id || escalating.is_some());
        check_target_connected(target)?;
        self.check_target_for_mode(interaction, target, mode, &req)?;

        // Accepted.
        Ok(match escalating {
            Some(sid) => self.escalate_to_barge(now_ms, sid, escalate_by_id, &req),
            None => self.create_supervision(now_ms, mode, auto_answer, req),
        })
    }

    fn find_user(&self, user_id: &str) -> Result<&User, RuleError> {
        self.users.get(user_id).ok_or_else(|| {
            RuleError::not_found(
                reason::USER_NOT_FOUND,
                format!("no user {}", quote(user_id)),
            )
        })
    }

    /// Rows 3 and 4: an identical request is a replay; an id used for something else is
    /// SUPERVISION_EXISTS, with one exception: StartBarge naming the live monitor or
    /// coach it escalates.
    fn existing_supervision_id(
        &self,
        mode: SupervisionMode,
        auto_answer: bool,
        req: &StartSupervision,
    ) -> Result<IdUse, RuleError> {
        let Some(sid) = self.resolve_supervision(&req.supervision_id) else {
            return Ok(IdUse::Fresh);
        };
        let s = &self.supervisions[sid];
        let same_call = s.interaction_id == req.interaction_id
            && s.supervisor_user_id == req.supervisor_user_id
            && s.target_participant_id == req.target_participant_id;
        let identical = same_call
            && s.requested_mode == mode
            && s.supervisor_participant_id == req.supervisor_participant_id
            && s.auto_answer == auto_answer;
        let escalation_retry =
            same_call && mode == SupervisionMode::Barge && s.escalated_from.is_some();
        if identical || escalation_retry {
            return Ok(IdUse::Replay(Subject::Supervision(
                s.supervision_id.clone(),
            )));
        }
        if same_call
            && mode == SupervisionMode::Barge
            && s.is_live()
            && s.mode != SupervisionMode::Barge
            && sid == req.supervision_id
        {
            return Ok(IdUse::EscalateById);
        }
        Err(RuleError::exists(
            reason::SUPERVISION_EXISTS,
            format!(
                "supervision {} exists with other content",
                quote(&req.supervision_id)
            ),
        ))
    }

    /// The supervisor's live supervision on this interaction, if any.
    fn live_supervision_here<'a>(
        &'a self,
        interaction: &Interaction,
        req: &StartSupervision,
    ) -> Option<&'a Supervision> {
        interaction
            .supervision_ids
            .iter()
            .filter_map(|id| self.supervisions.get(id))
            .find(|s| s.is_live() && s.supervisor_user_id == req.supervisor_user_id)
    }

    /// A supervisor with nothing live on this interaction: free elsewhere (one call at a
    /// time, whatever presence the platform pushed, since it may lag or never come),
    /// AVAILABLE, and the leg id free (or this supervisor's own disconnected leg).
    fn check_supervisor_free(
        &self,
        interaction: &Interaction,
        user: &User,
        req: &StartSupervision,
    ) -> Result<(), RuleError> {
        let elsewhere = self.supervisions.values().find(|s| {
            s.is_live()
                && s.supervisor_user_id == req.supervisor_user_id
                && s.interaction_id != req.interaction_id
        });
        if let Some(s) = elsewhere {
            return Err(RuleError::precondition(
                reason::SUPERVISOR_BUSY,
                format!(
                    "user {} already supervises interaction {} ({})",
                    quote(&req.supervisor_user_id),
                    quote(&s.interaction_id),
                    quote(&s.supervision_id)
                ),
            ));
        }
        if user.presence != Presence::Available {
            return Err(RuleError::precondition(
                reason::SUPERVISOR_NOT_AVAILABLE,
                format!(
                    "user {} is {:?}, not AVAILABLE",
                    quote(&user.user_id),
                    user.presence
                ),
            ));
        }
        if let Some(p) = interaction.participant(&req.supervisor_participant_id) {
            let reusable = p.is_supervisor()
                && p.state == ParticipantState::Disconnected
                && p.user_id.as_deref() == Some(req.supervisor_user_id.as_str());
            if !reusable {
                return Err(RuleError::exists(
                    reason::PARTICIPANT_EXISTS,
                    format!(
                        "participant {} is taken in {}",
                        quote(&req.supervisor_participant_id),
                        quote(&req.interaction_id)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What the target must be for this mode: coach and barge only on internal legs, one
    /// coach per target, no barge into a consult's specialist or a conference of three.
    fn check_target_for_mode(
        &self,
        interaction: &Interaction,
        target: &Participant,
        mode: SupervisionMode,
        req: &StartSupervision,
    ) -> Result<(), RuleError> {
        if mode != SupervisionMode::Monitor && target.kind == ParticipantKind::External {
            return Err(RuleError::precondition(
                reason::TARGET_EXTERNAL,
                format!("{} is EXTERNAL", quote(&target.participant_id)),
            ));
        }
        match mode {
            SupervisionMode::Monitor => Ok(()),
            SupervisionMode::Coach => self.check_no_other_coach(interaction, target, req),
            SupervisionMode::Barge => check_barge_target(interaction, target),
        }
    }

    fn check_no_other_coach(
        &self,
        interaction: &Interaction,
        target: &Participant,
        req: &StartSupervision,
    ) -> Result<(), RuleError> {
        let other_coach = interaction
            .supervision_ids
            .iter()
            .filter_map(|id| self.supervisions.get(id))
            .find(|s| {
                s.is_live()
                    && s.mode == SupervisionMode::Coach
                    && s.target_participant_id == req.target_participant_id
            });
        match other_coach {
            Some(s) => Err(RuleError::precondition(
                reason::COACH_ALREADY_ACTIVE,
                format!(
                    "{} is already coached by {}",
                    quote(&target.participant_id),
                    quote(&s.supervisor_user_id)
                ),
            )),
            None => Ok(()),
        }
    }

    /// A live monitor or coach becomes a barge in place: same id, same leg.
    fn escalate_to_barge(
        &mut self,
        now_ms: u64,
        sid: String,
        escalate_by_id: bool,
        req: &StartSupervision,
    ) -> Done {
        let actor = Actor::User {
            user_id: req.supervisor_user_id.clone(),
        };
        let s = self
            .supervisions
            .get_mut(&sid)
            .expect("the escalated supervision was just found");
        let from_mode = s.mode;
        s.mode = SupervisionMode::Barge;
        s.escalated_from = Some(from_mode);
        if !escalate_by_id && req.supervision_id != sid {
            s.escalation_alias = Some(req.supervision_id.clone());
            self.aliases.insert(req.supervision_id.clone(), sid.clone());
        }
        let s = &self.supervisions[&sid];
        let details: [(&str, &str); 4] = [
            ("supervision_id", &s.supervision_id),
            ("supervisor_participant_id", &s.supervisor_participant_id),
            ("supervisor_user_id", &s.supervisor_user_id),
            ("target_participant_id", &s.target_participant_id),
        ];
        let mut tl = Timeline::new(now_ms);
        let mut stopped = details.to_vec();
        stopped.push(("cause", "ESCALATED_TO_BARGE"));
        tl.push(stopped_kind(from_mode), &s.interaction_id, &actor, &stopped);
        let mut started = details.to_vec();
        started.push(("escalated_from", from_mode.as_str()));
        tl.push(EventKind::BargeStarted, &s.interaction_id, &actor, &started);
        Done {
            subject: Subject::Supervision(sid),
            events: tl.events,
            existing: false,
        }
    }

    /// A new supervision and its supervisor leg (ringing, or connected on auto-answer).
    fn create_supervision(
        &mut self,
        now_ms: u64,
        mode: SupervisionMode,
        auto_answer: bool,
        req: StartSupervision,
    ) -> Done {
        let (state, leg_state, connected_at_ms) = if auto_answer {
            (
                SupervisionState::Active,
                ParticipantState::Connected,
                Some(now_ms),
            )
        } else {
            (
                SupervisionState::Connecting,
                ParticipantState::Connecting,
                None,
            )
        };
        let supervision = Supervision {
            supervision_id: req.supervision_id.clone(),
            interaction_id: req.interaction_id.clone(),
            supervisor_user_id: req.supervisor_user_id.clone(),
            supervisor_participant_id: req.supervisor_participant_id.clone(),
            target_participant_id: req.target_participant_id.clone(),
            mode,
            state,
            auto_answer,
            requested_mode: mode,
            escalated_from: None,
            escalation_alias: None,
            started_at_ms: now_ms,
            connected_at_ms,
            ended_at_ms: None,
        };
        let interaction = self.interaction_mut(&req.interaction_id);
        let leg = Participant {
            participant_id: req.supervisor_participant_id.clone(),
            kind: ParticipantKind::Internal,
            role: Role::Supervisor,
            user_id: Some(req.supervisor_user_id.clone()),
            state: leg_state,
            held: false,
            supervision_id: Some(req.supervision_id.clone()),
            joined_at_ms: now_ms,
            left_at_ms: None,
            media_timed_out: false,
            conversation: None,
        };
        match interaction.participant_mut(&req.supervisor_participant_id) {
            Some(old) => *old = leg,
            None => interaction.participants.push(leg),
        }
        interaction.supervision_ids.push(req.supervision_id.clone());
        let mut tl = Timeline::new(now_ms);
        tl.push(
            started_kind(mode),
            &req.interaction_id,
            &Actor::User {
                user_id: req.supervisor_user_id.clone(),
            },
            &[
                ("supervision_id", &req.supervision_id),
                ("supervisor_participant_id", &req.supervisor_participant_id),
                ("supervisor_user_id", &req.supervisor_user_id),
                ("target_participant_id", &req.target_participant_id),
                ("auto_answer", if auto_answer { "true" } else { "false" }),
            ],
        );
        self.supervisions
            .insert(req.supervision_id.clone(), supervision);
        Done {
            subject: Subject::Supervision(req.supervision_id),
            events: tl.events,
            existing: false,
        }
    }

    fn stop_supervision(&mut self, now_ms: u64, supervision_id: String) -> Result<Done, RuleError> {
        check_id("supervision_id", &supervision_id)?;
        let sid = self
            .resolve_supervision(&supervision_id)
            .ok_or_else(|| {
                RuleError::not_found(
                    reason::SUPERVISION_NOT_FOUND,
                    format!("no supervision {}", quote(&supervision_id)),
                )
            })?
            .to_owned();
        let subject = Subject::Supervision(sid.clone());
        if !self.supervisions[&sid].is_live() {
            return Ok(Done::existing(subject));
        }
        let mut tl = Timeline::new(now_ms);
        self.end_supervision(&mut tl, &sid, &Actor::Orchestrator, "STOPPED");
        Ok(Done {
            subject,
            events: tl.events,
            existing: false,
        })
    }

    // ----------------------------------------------------------------- engine reports

    fn media_connected(
        &mut self,
        now_ms: u64,
        interaction_id: String,
        participant_id: String,
    ) -> Result<Done, RuleError> {
        check_id("interaction_id", &interaction_id)?;
        check_id("participant_id", &participant_id)?;
        let interaction = self.find_interaction(&interaction_id)?;
        let p = Self::find_participant(interaction, &participant_id)?;
        let subject = Subject::Interaction(interaction_id.clone());
        // Reports race with ends and removals; a late one is not an error.
        if interaction.is_ended() || p.state == ParticipantState::Disconnected {
            return Ok(Done::existing(subject));
        }
        let mut tl = Timeline::new(now_ms);
        let mut changed = p.media_timed_out;
        let connecting_supervision = if p.state == ParticipantState::Connecting {
            p.supervision_id.clone()
        } else {
            None
        };
        if let Some(sid) = &connecting_supervision
            && let Some(s) = self.supervisions.get_mut(sid)
            && s.state == SupervisionState::Connecting
        {
            s.state = SupervisionState::Active;
            s.connected_at_ms = Some(now_ms);
            changed = true;
            tl.push(
                EventKind::SupervisorConnected,
                &interaction_id,
                &Actor::Engine,
                &[
                    ("supervision_id", sid),
                    ("supervisor_participant_id", &participant_id),
                ],
            );
        }
        if let Some(p) = self
            .interaction_mut(&interaction_id)
            .participant_mut(&participant_id)
        {
            p.media_timed_out = false;
            p.state = ParticipantState::Connected;
        }
        Ok(Done {
            subject,
            events: tl.events,
            existing: !changed,
        })
    }

    fn media_timeout(
        &mut self,
        now_ms: u64,
        interaction_id: String,
        participant_id: String,
    ) -> Result<Done, RuleError> {
        check_id("interaction_id", &interaction_id)?;
        check_id("participant_id", &participant_id)?;
        let interaction = self.find_interaction(&interaction_id)?;
        let p = Self::find_participant(interaction, &participant_id)?;
        let subject = Subject::Interaction(interaction_id.clone());
        if interaction.is_ended() || p.state == ParticipantState::Disconnected || p.media_timed_out
        {
            return Ok(Done::existing(subject));
        }
        let supervision_id = if p.is_supervisor() {
            p.supervision_id.clone()
        } else {
            None
        };
        let mut tl = Timeline::new(now_ms);
        tl.push(
            EventKind::MediaTimeout,
            &interaction_id,
            &Actor::Engine,
            &[("participant_id", &participant_id)],
        );
        if let Some(p) = self
            .interaction_mut(&interaction_id)
            .participant_mut(&participant_id)
        {
            p.media_timed_out = true;
        }
        // A supervisor leg is ours to manage (the call controller may not know it), so a
        // dead supervisor phone ends its supervision. Call legs belong to the call
        // controller, which decides whether to remove them.
        if let Some(sid) = supervision_id {
            self.end_supervision(&mut tl, &sid, &Actor::Engine, "MEDIA_TIMEOUT");
        }
        Ok(Done {
            subject,
            events: tl.events,
            existing: false,
        })
    }

    /// A participant's media replaced: any participant that has a leg (connected or
    /// ringing; supervisors included, their leg is theirs to re-negotiate too).
    fn update_media(
        &mut self,
        now_ms: u64,
        interaction_id: String,
        participant_id: String,
        changes: &BTreeMap<String, String>,
    ) -> Result<Done, RuleError> {
        check_id("interaction_id", &interaction_id)?;
        check_id("participant_id", &participant_id)?;
        let interaction = self.find_interaction(&interaction_id)?;
        let p = Self::find_participant(interaction, &participant_id)?;
        let subject = Subject::Interaction(interaction_id.clone());
        Self::not_ended(interaction)?;
        if p.state == ParticipantState::Disconnected {
            return Err(RuleError::precondition(
                reason::PARTICIPANT_NOT_CONNECTED,
                format!(
                    "participant {} has left; it has no leg to update",
                    quote(&participant_id)
                ),
            ));
        }
        if changes.is_empty() {
            return Ok(Done::existing(subject));
        }
        let changed = changes.keys().cloned().collect::<Vec<_>>().join(",");
        let mut details: Vec<(&str, &str)> = vec![
            ("participant_id", participant_id.as_str()),
            ("changed", changed.as_str()),
        ];
        for (name, value) in changes {
            // Fixed keys win: a change can never overwrite them.
            if !value.is_empty() && !matches!(name.as_str(), "participant_id" | "changed") {
                details.push((name.as_str(), value.as_str()));
            }
        }
        let mut tl = Timeline::new(now_ms);
        tl.push(
            EventKind::MediaUpdated,
            &interaction_id,
            &Actor::Orchestrator,
            &details,
        );
        Ok(Done {
            subject,
            events: tl.events,
            existing: false,
        })
    }
}

/// How a StartMonitor/StartCoach/StartBarge uses its supervision id.
enum IdUse {
    /// New id.
    Fresh,
    /// The same request again: answer with what exists.
    Replay(Subject),
    /// StartBarge naming the live monitor or coach it escalates.
    EscalateById,
}

fn check_supervision_ids(req: &StartSupervision) -> Result<(), RuleError> {
    check_id("interaction_id", &req.interaction_id)?;
    check_id("supervision_id", &req.supervision_id)?;
    check_id("supervisor_user_id", &req.supervisor_user_id)?;
    check_id("supervisor_participant_id", &req.supervisor_participant_id)?;
    check_id("target_participant_id", &req.target_participant_id)
}

fn check_target_is_not_supervisor(target: &Participant) -> Result<(), RuleError> {
    if target.is_supervisor() {
        return Err(RuleError::invalid(
            "target_participant_id",
            reason::TARGET_IS_SUPERVISOR,
            format!("{} is a supervisor leg", quote(&target.participant_id)),
        ));
    }
    Ok(())
}

fn check_supervision_permission(user: &User, mode: SupervisionMode) -> Result<(), RuleError> {
    if !user.has_permission(mode.permission()) || !user.has_permission(PERM_CALL_ADD) {
        return Err(RuleError::denied(format!(
            "user {} needs {} and {}",
            quote(&user.user_id),
            mode.permission(),
            PERM_CALL_ADD
        )));
    }
    Ok(())
}

fn check_supervisor_not_participant(
    interaction: &Interaction,
    req: &StartSupervision,
) -> Result<(), RuleError> {
    let is_participant = interaction.participants.iter().any(|p| {
        !p.is_supervisor()
            && p.is_connected()
            && p.user_id.as_deref() == Some(req.supervisor_user_id.as_str())
    });
    if is_participant {
        return Err(RuleError::precondition(
            reason::SUPERVISOR_IS_PARTICIPANT,
            format!(
                "user {} is a participant of {}",
                quote(&req.supervisor_user_id),
                quote(&req.interaction_id)
            ),
        ));
    }
    Ok(())
}

/// A supervisor already live on this interaction may only escalate a monitor or coach of
/// the same target to barge; the answer is the id of the supervision to escalate.
fn check_escalation(
    current: &Supervision,
    mode: SupervisionMode,
    req: &StartSupervision,
) -> Result<String, RuleError> {
    match (current.mode, mode) {
        (SupervisionMode::Barge, SupervisionMode::Monitor | SupervisionMode::Coach) => {
            Err(RuleError::precondition(
                reason::STOP_BARGE_FIRST,
                format!("stop barge {} first", quote(&current.supervision_id)),
            ))
        }
        (SupervisionMode::Monitor, SupervisionMode::Coach)
        | (SupervisionMode::Coach, SupervisionMode::Monitor) => Err(RuleError::precondition(
            reason::STOP_CURRENT_FIRST,
            format!(
                "stop {} {} first",
                current.mode.as_str(),
                quote(&current.supervision_id)
            ),
        )),
        (SupervisionMode::Monitor | SupervisionMode::Coach, SupervisionMode::Barge)
            if current.target_participant_id == req.target_participant_id =>
        {
            Ok(current.supervision_id.clone())
        }
        _ => Err(RuleError::precondition(
            reason::SUPERVISOR_ALREADY_ACTIVE,
            format!(
                "user {} already supervises {} ({})",
                quote(&req.supervisor_user_id),
                quote(&req.interaction_id),
                quote(&current.supervision_id)
            ),
        )),
    }
}

fn check_target_connected(target: &Participant) -> Result<(), RuleError> {
    if !target.is_connected() {
        return Err(RuleError::precondition(
            reason::TARGET_NOT_CONNECTED,
            format!("{} is not connected", quote(&target.participant_id)),
        ));
    }
    Ok(())
}

/// No barge into a consult's specialist or a conference of three or more.
fn check_barge_target(interaction: &Interaction, target: &Participant) -> Result<(), RuleError> {
    if interaction
        .consult
        .as_ref()
        .is_some_and(|c| c.specialist_participant_id == target.participant_id)
    {
        return Err(RuleError::precondition(
            reason::TARGET_IN_CONSULT,
            format!(
                "{} is the specialist of an active consult",
                quote(&target.participant_id)
            ),
        ));
    }
    let group = interaction.talk_group_of(&target.participant_id);
    if group.len() >= 3 {
        return Err(RuleError::precondition(
            reason::TARGET_IN_CONFERENCE,
            format!(
                "{} is in a conference of {}",
                quote(&target.participant_id),
                group.len()
            ),
        ));
    }
    Ok(())
}
