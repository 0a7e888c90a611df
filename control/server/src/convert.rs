//! Between the wire (`proto`) and the rules' types: request validation on the way in,
//! views of the state on the way out.

use std::collections::BTreeMap;

use earshot_rules as rules;
use rules::{ConsultEnd, ParticipantKind, ParticipantState, Presence, Role, SupervisionMode};

use crate::core::Core;
use crate::error::ApiError;
use crate::media::MediaSpec;
use crate::proto;
use crate::store::{EventRecord, MediaEntry};

/// Longest `actor` string accepted.
pub const MAX_ACTOR_CHARS: usize = 128;

/// Validates the optional `actor` field; `None` when empty.
pub fn actor(value: &str) -> Result<Option<String>, ApiError> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.chars().count() > MAX_ACTOR_CHARS || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "actor",
            format!("actor must be at most {MAX_ACTOR_CHARS} printable characters"),
        ));
    }
    Ok(Some(value.to_owned()))
}

fn kind_in(field: &str, v: i32) -> Result<ParticipantKind, ApiError> {
    match proto::ParticipantKind::try_from(v) {
        Ok(proto::ParticipantKind::External) => Ok(ParticipantKind::External),
        Ok(proto::ParticipantKind::Internal) => Ok(ParticipantKind::Internal),
        _ => Err(ApiError::invalid(
            field,
            format!("kind {v} is not PARTICIPANT_KIND_EXTERNAL or PARTICIPANT_KIND_INTERNAL"),
        )),
    }
}

fn role_in(field: &str, v: i32) -> Result<Role, ApiError> {
    match proto::Role::try_from(v) {
        Ok(proto::Role::Customer) => Ok(Role::Customer),
        Ok(proto::Role::Agent) => Ok(Role::Agent),
        Ok(proto::Role::Specialist) => Ok(Role::Specialist),
        Ok(proto::Role::Supervisor) => Ok(Role::Supervisor),
        Ok(proto::Role::Other) => Ok(Role::Other),
        _ => Err(ApiError::invalid(
            field,
            format!("role {v} is not a known role"),
        )),
    }
}

/// Validates a participant spec named `prefix` (e.g. `participants[0]`): its kind,
/// role and media here, its ids in the rules. Returns the rules' spec and the media
/// entry to persist.
pub fn spec_in(
    prefix: &str,
    interaction_id: &str,
    spec: Option<&proto::ParticipantSpec>,
) -> Result<(rules::ParticipantSpec, MediaEntry), ApiError> {
    let Some(spec) = spec else {
        return Err(ApiError::missing(prefix));
    };
    let kind = kind_in(&format!("{prefix}.kind"), spec.kind)?;
    let role = role_in(&format!("{prefix}.role"), spec.role)?;
    let media = MediaSpec::from_proto(&format!("{prefix}.media"), spec.media.as_ref())?;
    Ok((
        rules::ParticipantSpec {
            participant_id: spec.participant_id.clone(),
            kind,
            role,
            user_id: (!spec.user_id.is_empty()).then(|| spec.user_id.clone()),
        },
        MediaEntry {
            interaction_id: interaction_id.to_owned(),
            participant_id: spec.participant_id.clone(),
            media,
        },
    ))
}

/// Refuses a retry that names an existing call participant with different media:
/// the same id with different content is ALREADY_EXISTS.
pub fn check_media_retry(core: &Core, entries: &[crate::core::NewLeg]) -> Result<(), ApiError> {
    for e in entries.iter().map(|n| &n.entry) {
        let exists = core
            .rules
            .interaction(&e.interaction_id)
            .and_then(|i| i.participant(&e.participant_id))
            .is_some_and(|p| !p.is_supervisor());
        if exists
            && core
                .media_of(&e.interaction_id, &e.participant_id)
                .is_some_and(|m| !m.satisfies(&e.media))
        {
            return Err(ApiError::new(
                tonic::Code::AlreadyExists,
                crate::error::reason::MEDIA_MISMATCH,
                format!(
                    "participant {} of {} exists with different media",
                    crate::error::quote(&e.participant_id),
                    crate::error::quote(&e.interaction_id)
                ),
            ));
        }
    }
    Ok(())
}

/// `Presence` from the wire.
pub fn presence_in(v: i32) -> Result<Presence, ApiError> {
    use proto::Presence as P;
    match P::try_from(v) {
        Ok(P::Available) => Ok(Presence::Available),
        Ok(P::Busy) => Ok(Presence::Busy),
        Ok(P::Away) => Ok(Presence::Away),
        Ok(P::Break) => Ok(Presence::Break),
        Ok(P::Meeting) => Ok(Presence::Meeting),
        Ok(P::OnQueue) => Ok(Presence::OnQueue),
        Ok(P::Offline) => Ok(Presence::Offline),
        _ => Err(ApiError::invalid(
            "presence",
            format!("presence {v} is not a known presence"),
        )),
    }
}

/// `EndConsultMode` from the wire.
pub fn consult_end_in(v: i32) -> Result<ConsultEnd, ApiError> {
    match proto::EndConsultMode::try_from(v) {
        Ok(proto::EndConsultMode::Cancel) => Ok(ConsultEnd::Cancel),
        Ok(proto::EndConsultMode::Transfer) => Ok(ConsultEnd::Transfer),
        Ok(proto::EndConsultMode::Conference) => Ok(ConsultEnd::Conference),
        _ => Err(ApiError::invalid(
            "mode",
            format!("mode {v} is not CANCEL, TRANSFER or CONFERENCE"),
        )),
    }
}

fn presence_out(p: Presence) -> proto::Presence {
    match p {
        Presence::Available => proto::Presence::Available,
        Presence::Busy => proto::Presence::Busy,
        Presence::Away => proto::Presence::Away,
        Presence::Break => proto::Presence::Break,
        Presence::Meeting => proto::Presence::Meeting,
        Presence::OnQueue => proto::Presence::OnQueue,
        Presence::Offline => proto::Presence::Offline,
    }
}

fn kind_out(k: ParticipantKind) -> proto::ParticipantKind {
    match k {
        ParticipantKind::External => proto::ParticipantKind::External,
        ParticipantKind::Internal => proto::ParticipantKind::Internal,
    }
}

fn role_out(r: Role) -> proto::Role {
    match r {
        Role::Customer => proto::Role::Customer,
        Role::Agent => proto::Role::Agent,
        Role::Specialist => proto::Role::Specialist,
        Role::Supervisor => proto::Role::Supervisor,
        Role::Other => proto::Role::Other,
    }
}

fn mode_out(m: SupervisionMode) -> proto::SupervisionMode {
    match m {
        SupervisionMode::Monitor => proto::SupervisionMode::Monitor,
        SupervisionMode::Coach => proto::SupervisionMode::Coach,
        SupervisionMode::Barge => proto::SupervisionMode::Barge,
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A directory user.
pub fn user_out(u: &rules::User) -> proto::User {
    proto::User {
        user_id: u.user_id.clone(),
        display_name: u.display_name.clone(),
        permissions: u.permissions.iter().cloned().collect(),
        presence: presence_out(u.presence) as i32,
    }
}

/// A participant's leg while it has one.
pub fn leg_out(core: &Core, interaction_id: &str, participant_id: &str) -> Option<proto::Leg> {
    let record = core.leg(interaction_id, participant_id)?;
    Some(proto::Leg {
        local: record.local.to_string(),
        local_rtcp: record.local_rtcp.to_string(),
        media: core
            .media_of(interaction_id, participant_id)
            .map(MediaSpec::to_proto),
        node_id: record.node.clone().unwrap_or_default(),
    })
}

/// One participant; `groups` are the interaction's talk groups.
pub fn participant_out(
    core: &Core,
    interaction: &rules::Interaction,
    p: &rules::Participant,
    groups: &[Vec<String>],
) -> proto::Participant {
    let talk_group = groups
        .iter()
        .position(|g| g.contains(&p.participant_id))
        .and_then(|i| i32::try_from(i).ok())
        .unwrap_or(-1);
    let supervision = p
        .supervision_id
        .as_deref()
        .and_then(|id| core.rules.supervision(id));
    let state = match p.state {
        ParticipantState::Connecting => proto::ParticipantState::Connecting,
        ParticipantState::Connected => proto::ParticipantState::Connected,
        ParticipantState::Disconnected => proto::ParticipantState::Disconnected,
    };
    proto::Participant {
        participant_id: p.participant_id.clone(),
        kind: kind_out(p.kind) as i32,
        role: role_out(p.role) as i32,
        user_id: p.user_id.clone().unwrap_or_default(),
        state: state as i32,
        leg: if p.state == ParticipantState::Disconnected {
            None
        } else {
            leg_out(core, &interaction.interaction_id, &p.participant_id)
        },
        talk_group,
        supervision_id: supervision
            .map(|s| s.supervision_id.clone())
            .unwrap_or_default(),
        supervision_mode: supervision.map_or(0, |s| mode_out(s.mode) as i32),
        target_participant_id: supervision
            .map(|s| s.target_participant_id.clone())
            .unwrap_or_default(),
        on_hold: p.held,
    }
}

/// One interaction with its talk groups and hear relation.
pub fn interaction_out(core: &Core, i: &rules::Interaction) -> proto::Interaction {
    let groups = i.talk_groups();
    let hear = core
        .rules
        .hear_relation(&i.interaction_id)
        .map(|r| {
            r.edges
                .into_iter()
                .map(|(listener, source)| proto::HearEdge { listener, source })
                .collect()
        })
        .unwrap_or_default();
    proto::Interaction {
        interaction_id: i.interaction_id.clone(),
        participants: i
            .participants
            .iter()
            .map(|p| participant_out(core, i, p, &groups))
            .collect(),
        talk_groups: groups
            .iter()
            .map(|g| proto::TalkGroup {
                participant_ids: g.clone(),
            })
            .collect(),
        consult: i.consult.as_ref().map(|c| proto::Consult {
            agent_participant_id: c.agent_participant_id.clone(),
            specialist_participant_id: c.specialist_participant_id.clone(),
        }),
        ended: i.is_ended(),
        created_ms: ms(i.created_at_ms),
        ended_ms: i.ended_at_ms.map_or(0, ms),
        hear,
    }
}

/// One supervision with the supervisor's leg.
pub fn supervision_out(core: &Core, s: &rules::Supervision) -> proto::SupervisionInfo {
    let state = match s.state {
        rules::SupervisionState::Connecting => proto::SupervisionState::Connecting,
        rules::SupervisionState::Active => proto::SupervisionState::Active,
        rules::SupervisionState::Ended => proto::SupervisionState::Ended,
    };
    proto::SupervisionInfo {
        supervision_id: s.supervision_id.clone(),
        interaction_id: s.interaction_id.clone(),
        supervisor_user_id: s.supervisor_user_id.clone(),
        supervisor_participant_id: s.supervisor_participant_id.clone(),
        target_participant_id: s.target_participant_id.clone(),
        mode: mode_out(s.mode) as i32,
        state: state as i32,
        auto_answer: s.auto_answer,
        leg: if s.is_live() {
            leg_out(core, &s.interaction_id, &s.supervisor_participant_id)
        } else {
            None
        },
        started_ms: ms(s.started_at_ms),
        ended_ms: s.ended_at_ms.map_or(0, ms),
    }
}

fn event_kind_out(k: rules::EventKind) -> proto::EventKind {
    use proto::EventKind as P;
    use rules::EventKind as K;
    match k {
        K::InteractionCreated => P::InteractionCreated,
        K::ParticipantJoined => P::ParticipantJoined,
        K::ParticipantLeft => P::ParticipantLeft,
        K::HoldStarted => P::HoldStarted,
        K::HoldEnded => P::HoldEnded,
        K::ConsultStarted => P::ConsultStarted,
        K::ConsultEnded => P::ConsultEnded,
        K::Transferred => P::Transferred,
        K::Conferenced => P::Conferenced,
        K::MonitorStarted => P::MonitorStarted,
        K::MonitorStopped => P::MonitorStopped,
        K::CoachStarted => P::CoachStarted,
        K::CoachStopped => P::CoachStopped,
        K::BargeStarted => P::BargeStarted,
        K::BargeStopped => P::BargeStopped,
        K::SupervisorConnected => P::SupervisorConnected,
        K::MediaTimeout => P::MediaTimeout,
        K::InteractionEnded => P::InteractionEnded,
        K::ProgrammingFailed => P::ProgrammingFailed,
        K::LegPortLost => P::LegPortLost,
        K::UserUpserted => P::UserUpserted,
        K::PresenceChanged => P::PresenceChanged,
        K::NodeFailed => P::NodeFailed,
        K::MediaRestored => P::MediaRestored,
        K::MediaUpdated => P::MediaUpdated,
    }
}

/// A stored event on the wire.
pub fn event_out(e: &EventRecord) -> proto::Event {
    proto::Event {
        sequence: e.sequence,
        kind: event_kind_out(e.kind) as i32,
        interaction_id: e.interaction_id.clone(),
        time_ms: ms(e.time_ms),
        actor: e.actor.clone(),
        details: e
            .details
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect(),
    }
}

/// Engine statistics on the wire.
pub fn stats_out(s: &earshot_engine_api::EngineStats) -> proto::GetStatsResponse {
    let pct = |p: &earshot_engine_api::Percentiles| proto::Percentiles {
        p50: p.p50,
        p90: p.p90,
        p99: p.p99,
        p999: p.p999,
        max: p.max,
        count: p.count,
    };
    let counters = |v: &[(String, u64)]| {
        v.iter()
            .map(|(name, value)| proto::Counter {
                name: name.clone(),
                value: *value,
            })
            .collect()
    };
    proto::GetStatsResponse {
        backend: s.backend.clone(),
        cores: s
            .shards
            .iter()
            .map(|c| proto::CoreStats {
                shard: u32::from(c.shard),
                core: c.core.and_then(|c| i32::try_from(c).ok()).unwrap_or(-1),
                legs: c.legs,
                sessions: c.sessions,
                sessions_by_mode: counters(&c.sessions_by_mode),
                packets_in: c.packets_in,
                bytes_in: c.bytes_in,
                packets_out: c.packets_out,
                bytes_out: c.bytes_out,
                drops: counters(&c.drops),
                late_ticks: c.late_ticks,
                ticks: c.ticks,
                tick_processing_us: Some(pct(&c.tick_processing_us)),
                tick_lateness_us: Some(pct(&c.tick_lateness_us)),
                commands_rejected: c.commands_rejected,
            })
            .collect(),
    }
}
