//! The tonic services: request validation, then [`Shared::mutate`] or a read under the
//! core lock, then a view of the result.

use std::sync::Arc;

use prost::Message;

use earshot_engine_api::{Request as EngineRequest, Response as EngineResponse};
use earshot_rules::{self as rules, Command, StartSupervision, Subject, SupervisionFilter};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use crate::convert::{self, actor};
use crate::core::NewLeg;
use crate::core::{Core, Shared};
use crate::error::{ApiError, reason};
use crate::media::MediaSpec;
use crate::proto;
use crate::store::{EventRecord, MediaEntry};

/// Largest page of `ListInteractions`.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Events read from the store per page while replaying `WatchEvents` backlog.
const REPLAY_PAGE: usize = 1000;

/// Buffer between a `WatchEvents` task and its client.
const WATCH_BUFFER: usize = 256;

type Reply<T> = Result<Response<T>, Status>;

/// Like [`check_id`] for an optional field, where empty means absent.
fn check_optional_id(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        Ok(())
    } else {
        check_id(field, value)
    }
}

fn check_id(field: &str, value: &str) -> Result<(), ApiError> {
    if rules::is_valid_id(value) {
        Ok(())
    } else {
        Err(ApiError {
            code: Code::InvalidArgument,
            reason: rules::reason::INVALID_ID,
            message: format!(
                "{field} must be 1..{} chars of [A-Za-z0-9._:-], got \"{}\"",
                rules::MAX_ID_CHARS,
                crate::error::quote(value)
            ),
            field: Some(field.to_owned()),
        })
    }
}

fn not_found(reason: &'static str, what: &str, id: &str) -> ApiError {
    ApiError::new(
        Code::NotFound,
        reason,
        format!("no {what} {}", crate::error::quote(id)),
    )
}

/// An interaction from memory, or the final view of an ended one from the store.
async fn interaction_view(
    shared: &Shared,
    core: &Core,
    interaction_id: &str,
) -> Result<proto::Interaction, ApiError> {
    if let Some(i) = core.rules.interaction(interaction_id) {
        return Ok(convert::interaction_out(core, i));
    }
    if let Some(record) = shared
        .store
        .ended(interaction_id)
        .await
        .map_err(ApiError::store)?
    {
        return proto::Interaction::decode(record.view.as_slice()).map_err(ApiError::store);
    }
    Err(not_found(
        rules::reason::INTERACTION_NOT_FOUND,
        "interaction",
        interaction_id,
    ))
}

fn participant_view(
    core: &Core,
    interaction_id: &str,
    participant_id: &str,
) -> Option<proto::Participant> {
    let i = core.rules.interaction(interaction_id)?;
    let p = i.participant(participant_id)?;
    Some(convert::participant_out(core, i, p, &i.talk_groups()))
}

/// A supervision from memory, or the final view of one whose interaction ended.
async fn supervision_view(
    shared: &Shared,
    core: &Core,
    supervision_id: &str,
) -> Result<proto::SupervisionInfo, ApiError> {
    if let Some(s) = core.rules.supervision(supervision_id) {
        return Ok(convert::supervision_out(core, s));
    }
    if let Some(view) = shared
        .store
        .ended_supervision(supervision_id)
        .await
        .map_err(ApiError::store)?
    {
        return proto::SupervisionInfo::decode(view.as_slice()).map_err(ApiError::store);
    }
    Err(not_found(
        rules::reason::SUPERVISION_NOT_FOUND,
        "supervision",
        supervision_id,
    ))
}

fn user_view(core: &Core, user_id: &str) -> Result<proto::User, ApiError> {
    core.rules
        .user(user_id)
        .map(convert::user_out)
        .ok_or_else(|| not_found(rules::reason::USER_NOT_FOUND, "user", user_id))
}

/// `Interactions` service.
#[derive(Debug, Clone)]
pub struct InteractionsService {
    /// Shared state.
    pub shared: Arc<Shared>,
}

/// `Supervision` service.
#[derive(Debug, Clone)]
pub struct SupervisionService {
    /// Shared state.
    pub shared: Arc<Shared>,
}

/// `Directory` service.
#[derive(Debug, Clone)]
pub struct DirectoryService {
    /// Shared state.
    pub shared: Arc<Shared>,
}

/// `Engine` service.
#[derive(Debug, Clone)]
pub struct EngineService {
    /// Shared state.
    pub shared: Arc<Shared>,
}

impl InteractionsService {
    /// Applies a call verb that answers with the interaction.
    async fn interaction_verb(
        &self,
        command: Command,
        interaction_id: &str,
        actor: Option<String>,
    ) -> Reply<proto::Interaction> {
        let (core, _) = self
            .shared
            .mutate(command, actor, |_| Ok(Vec::new()))
            .await?;
        Ok(Response::new(
            interaction_view(&self.shared, &core, interaction_id).await?,
        ))
    }

    /// Applies a verb that adds one participant with media (from the request field
    /// `field`); answers with it.
    async fn joining_verb(
        &self,
        command: Command,
        entry: MediaEntry,
        field: &str,
        actor: Option<String>,
    ) -> Result<(proto::Participant, proto::Interaction, bool), ApiError> {
        let entries = vec![NewLeg {
            entry: entry.clone(),
            field: format!("{field}.media"),
        }];
        let (core, outcome) = self
            .shared
            .mutate(command, actor, move |core| {
                convert::check_media_retry(core, &entries)?;
                Ok(entries.clone())
            })
            .await?;
        let interaction = interaction_view(&self.shared, &core, &entry.interaction_id).await?;
        let participant = participant_view(&core, &entry.interaction_id, &entry.participant_id)
            .ok_or_else(|| {
                ApiError::new(
                    Code::Internal,
                    "PARTICIPANT_MISSING",
                    "participant not recorded",
                )
            })?;
        Ok((participant, interaction, outcome.existing))
    }
}

/// Builds the `UpdateMedia` command against the media in force (under the core lock):
/// the media that will be in force ([`MediaSpec::updated`]) and what changed. A leg
/// keeps its allocation: rtcp_mux and the address family cannot change on it. Without
/// media in force (unknown interaction or participant) the command names no change and
/// the rules give the refusal (NOT_FOUND, INTERACTION_ENDED, PARTICIPANT_NOT_CONNECTED).
fn prepare_update(
    core: &Core,
    interaction_id: &str,
    participant_id: &str,
    requested: MediaSpec,
) -> Result<(Command, Vec<NewLeg>), ApiError> {
    let command = |changes| Command::UpdateMedia {
        interaction_id: interaction_id.to_owned(),
        participant_id: participant_id.to_owned(),
        changes,
    };
    let Some(current) = core.media_of(interaction_id, participant_id) else {
        return Ok((command(Default::default()), Vec::new()));
    };
    let next = current.updated(requested);
    if next.rtcp_mux != current.rtcp_mux {
        return Err(ApiError::invalid(
            "media.rtcp_mux",
            format!(
                "rtcp_mux must stay {} as the leg was allocated; remove and re-add the \
                 participant to change it",
                current.rtcp_mux
            ),
        ));
    }
    let leg_is_v6 = core
        .leg(interaction_id, participant_id)
        .map_or(current.family() == earshot_engine_api::IpFamily::V6, |r| {
            r.local.is_ipv6()
        });
    if next.remote.is_some_and(|r| r.is_ipv6() != leg_is_v6) {
        return Err(ApiError::invalid(
            "media.remote",
            format!(
                "the leg's local port is {}; the remote must be of the same address family \
                 (remove and re-add the participant to change it)",
                if leg_is_v6 { "IPv6" } else { "IPv4" }
            ),
        ));
    }
    let changes = current.changes(&next);
    let legs = if changes.is_empty() {
        Vec::new()
    } else {
        vec![NewLeg {
            entry: MediaEntry {
                interaction_id: interaction_id.to_owned(),
                participant_id: participant_id.to_owned(),
                media: next,
            },
            field: "media".to_owned(),
        }]
    };
    Ok((command(changes), legs))
}

#[tonic::async_trait]
impl proto::interactions_server::Interactions for InteractionsService {
    async fn create_interaction(
        &self,
        request: Request<proto::CreateInteractionRequest>,
    ) -> Reply<proto::CreateInteractionResponse> {
        let req = request.into_inner();
        let actor = actor(&req.actor)?;
        if req.participants.is_empty() {
            // A call without a leg is nothing the engine can hold.
            return Err(
                ApiError::invalid("participants", "a call needs at least one participant").into(),
            );
        }
        let mut specs = Vec::with_capacity(req.participants.len());
        let mut entries = Vec::with_capacity(req.participants.len());
        for (i, p) in req.participants.iter().enumerate() {
            let field = format!("participants[{i}]");
            let (spec, entry) = convert::spec_in(&field, &req.interaction_id, Some(p))?;
            specs.push(spec);
            entries.push(NewLeg {
                entry,
                field: format!("{field}.media"),
            });
        }
        let command = Command::CreateInteraction {
            interaction_id: req.interaction_id.clone(),
            participants: specs,
        };
        let (core, outcome) = self
            .shared
            .mutate(command, actor, move |core| {
                convert::check_media_retry(core, &entries)?;
                Ok(entries.clone())
            })
            .await?;
        Ok(Response::new(proto::CreateInteractionResponse {
            interaction: Some(interaction_view(&self.shared, &core, &req.interaction_id).await?),
            existing: outcome.existing,
        }))
    }

    async fn get_interaction(
        &self,
        request: Request<proto::GetInteractionRequest>,
    ) -> Reply<proto::Interaction> {
        let req = request.into_inner();
        check_id("interaction_id", &req.interaction_id)?;
        let core = self.shared.core.lock().await;
        Ok(Response::new(
            interaction_view(&self.shared, &core, &req.interaction_id).await?,
        ))
    }

    async fn list_interactions(
        &self,
        request: Request<proto::ListInteractionsRequest>,
    ) -> Reply<proto::ListInteractionsResponse> {
        let req = request.into_inner();
        check_optional_id("user_id", &req.user_id)?;
        check_optional_id("on_behalf_of_user_id", &req.on_behalf_of_user_id)?;
        check_optional_id("page_token", &req.page_token)?;
        let page_size = match req.page_size as usize {
            0 => MAX_PAGE_SIZE,
            n if n <= MAX_PAGE_SIZE => n,
            n => {
                return Err(ApiError::invalid(
                    "page_size",
                    format!("page_size {n} exceeds {MAX_PAGE_SIZE}"),
                )
                .into());
            }
        };
        let core = self.shared.core.lock().await;
        if !req.on_behalf_of_user_id.is_empty() {
            let user = core.rules.user(&req.on_behalf_of_user_id).ok_or_else(|| {
                not_found(
                    rules::reason::USER_NOT_FOUND,
                    "user",
                    &req.on_behalf_of_user_id,
                )
            })?;
            if !user.has_permission(rules::PERM_INTERACTION_VIEW) {
                return Err(ApiError::new(
                    Code::PermissionDenied,
                    reason::MISSING_PERMISSION,
                    format!(
                        "user {} lacks {}",
                        user.user_id,
                        rules::PERM_INTERACTION_VIEW
                    ),
                )
                .into());
            }
        }
        let candidates: Vec<&rules::Interaction> = if req.user_id.is_empty() {
            core.rules.interactions().collect()
        } else {
            core.rules.interactions_for_user(&req.user_id)
        };
        let after_token = |id: &str| req.page_token.is_empty() || id > req.page_token.as_str();
        let mut page: Vec<(String, proto::Interaction)> = candidates
            .into_iter()
            .filter(|i| req.include_ended || !i.is_ended())
            .filter(|i| after_token(&i.interaction_id))
            .map(|i| (i.interaction_id.clone(), convert::interaction_out(&core, i)))
            .collect();
        if req.include_ended {
            // Ended calls live in the store (not in memory) for the retention period.
            for (id, record) in self
                .shared
                .store
                .ended_all()
                .await
                .map_err(ApiError::store)?
            {
                let for_user = req.user_id.is_empty() || record.user_ids.contains(&req.user_id);
                if for_user && after_token(&id) {
                    let view = proto::Interaction::decode(record.view.as_slice())
                        .map_err(ApiError::store)?;
                    page.push((id, view));
                }
            }
        }
        page.sort_by(|a, b| a.0.cmp(&b.0));
        let more = page.len() > page_size;
        page.truncate(page_size);
        let next_page_token = if more {
            page.last().map(|(id, _)| id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(proto::ListInteractionsResponse {
            interactions: page.into_iter().map(|(_, v)| v).collect(),
            next_page_token,
        }))
    }

    async fn end_interaction(
        &self,
        request: Request<proto::EndInteractionRequest>,
    ) -> Reply<proto::Interaction> {
        let req = request.into_inner();
        let actor = actor(&req.actor)?;
        let command = Command::EndInteraction {
            interaction_id: req.interaction_id.clone(),
        };
        self.interaction_verb(command, &req.interaction_id, actor)
            .await
    }

    async fn add_participant(
        &self,
        request: Request<proto::AddParticipantRequest>,
    ) -> Reply<proto::AddParticipantResponse> {
        let req = request.into_inner();
        let actor = actor(&req.actor)?;
        let (spec, entry) =
            convert::spec_in("participant", &req.interaction_id, req.participant.as_ref())?;
        let command = Command::AddParticipant {
            interaction_id: req.interaction_id.clone(),
            participant: spec,
            join_group_of: (!req.join_group_of.is_empty()).then(|| req.join_group_of.clone()),
        };
        let (participant, interaction, existing) = self
            .joining_verb(command, entry, "participant", actor)
            .await?;
        Ok(Response::new(proto::AddParticipantResponse {
            participant: Some(participant),
            interaction: Some(interaction),
            existing,
        }))
    }

    async fn remove_participant(
        &self,
        request: Request<proto::RemoveParticipantRequest>,
    ) -> Reply<proto::Interaction> {
        let req = request.into_inner();
        let actor = actor(&req.actor)?;
        let command = Command::RemoveParticipant {
            interaction_id: req.interaction_id.clone(),
            participant_id: req.participant_id,
        };
        self.interaction_verb(command, &req.interaction_id, actor)
            .await
    }

    async fn hold(&self, request: Request<proto::HoldRequest>) -> Reply<proto::Interaction> {
        let req = request.into_inner();
        let actor = actor(&req.actor)?;
        let command = Command::Hold {
            interaction_id: req.interaction_id.clone(),
            participant_id: req.participant_id,
        };
        self.interaction_verb(command, &req.interaction_id, actor)
            .await
    }

    async fn resume(&self, request: Request<proto::ResumeRequest>) -> Reply<proto::Interaction> {
        let req = request.into_inner();
        let actor = actor(&req.actor)?;
        let command = Command::Resume {
            interaction_id: req.interaction_id.clone(),
            participant_id: req.participant_id,
        };
        self.interaction_verb(command, &req.interaction_id, actor)
            .await
    }

    async fn start_consult(
        &self,
        request: Request<proto::StartConsultRequest>,
    ) -> Reply<proto::StartConsultResponse> {
        let req = request.into_inner();
        let actor = actor(&req.actor)?;
        let (spec, entry) =
            convert::spec_in("specialist", &req.interaction_id, req.specialist.as_ref())?;
        let command = Command::StartConsult {
            interaction_id: req.interaction_id.clone(),
            agent_participant_id: req.agent_participant_id,
            specialist: spec,
        };
        let (specialist, interaction, _) = self
            .joining_verb(command, entry, "specialist", actor)
            .await?;
        Ok(Response::new(proto::StartConsultResponse {
            specialist: Some(specialist),
            interaction: Some(interaction),
        }))
    }

    async fn end_consult(
        &self,
        request: Request<proto::EndConsultRequest>,
    ) -> Reply<proto::Interaction> {
        let req = request.into_inner();
        let actor = actor(&req.actor)?;
        let mode = convert::consult_end_in(req.mode)?;
        let command = Command::EndConsult {
            interaction_id: req.interaction_id.clone(),
            mode,
        };
        self.interaction_verb(command, &req.interaction_id, actor)
            .await
    }

    async fn transfer(
        &self,
        request: Request<proto::TransferRequest>,
    ) -> Reply<proto::TransferResponse> {
        let req = request.into_inner();
        let actor = actor(&req.actor)?;
        let (spec, entry) = convert::spec_in("to", &req.interaction_id, req.to.as_ref())?;
        let command = Command::Transfer {
            interaction_id: req.interaction_id.clone(),
            from_participant_id: req.from_participant_id,
            to: spec,
        };
        let (participant, interaction, _) = self.joining_verb(command, entry, "to", actor).await?;
        Ok(Response::new(proto::TransferResponse {
            participant: Some(participant),
            interaction: Some(interaction),
        }))
    }

    async fn conference(
        &self,
        request: Request<proto::ConferenceRequest>,
    ) -> Reply<proto::Interaction> {
        let req = request.into_inner();
        let actor = actor(&req.actor)?;
        let command = Command::Conference {
            interaction_id: req.interaction_id.clone(),
            participant_ids: req.participant_ids,
        };
        self.interaction_verb(command, &req.interaction_id, actor)
            .await
    }

    async fn update_media(
        &self,
        request: Request<proto::UpdateMediaRequest>,
    ) -> Reply<proto::UpdateMediaResponse> {
        let req = request.into_inner();
        let actor = actor(&req.actor)?;
        check_id("interaction_id", &req.interaction_id)?;
        check_id("participant_id", &req.participant_id)?;
        // The one validator every media goes through (the engine's own included).
        let requested = MediaSpec::from_proto("media", req.media.as_ref())?;
        let (iid, pid) = (req.interaction_id, req.participant_id);
        let scope = Command::UpdateMedia {
            interaction_id: iid.clone(),
            participant_id: pid.clone(),
            changes: Default::default(),
        };
        let (core, outcome) = self
            .shared
            .mutate_with(scope, actor, |core| {
                prepare_update(core, &iid, &pid, requested.clone())
            })
            .await?;
        let changed = outcome
            .events
            .iter()
            .find(|e| e.kind == rules::EventKind::MediaUpdated)
            .and_then(|e| e.detail("changed"))
            .map(|c| c.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        let leg = convert::leg_out(&core, &iid, &pid).or_else(|| {
            // Accepted while the engine had no leg for it yet: the media, no address.
            core.media_of(&iid, &pid).map(|m| proto::Leg {
                media: Some(m.to_proto()),
                ..proto::Leg::default()
            })
        });
        Ok(Response::new(proto::UpdateMediaResponse {
            leg,
            existing: outcome.existing,
            changed,
        }))
    }

    async fn get_timeline(
        &self,
        request: Request<proto::GetTimelineRequest>,
    ) -> Reply<proto::GetTimelineResponse> {
        let req = request.into_inner();
        check_id("interaction_id", &req.interaction_id)?;
        let known = self
            .shared
            .core
            .lock()
            .await
            .rules
            .interaction(&req.interaction_id)
            .is_some();
        let events = self
            .shared
            .store
            .timeline(&req.interaction_id)
            .await
            .map_err(ApiError::store)?;
        if !known && events.is_empty() {
            return Err(not_found(
                rules::reason::INTERACTION_NOT_FOUND,
                "interaction",
                &req.interaction_id,
            )
            .into());
        }
        Ok(Response::new(proto::GetTimelineResponse {
            events: events.iter().map(convert::event_out).collect(),
        }))
    }

    type WatchEventsStream = ReceiverStream<Result<proto::Event, Status>>;

    async fn watch_events(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Reply<Self::WatchEventsStream> {
        let req = request.into_inner();
        check_optional_id("interaction_id", &req.interaction_id)?;
        // Subscribe before reading the backlog so nothing falls between the two; the
        // task skips live events it already sent from the store.
        let live = self.shared.events.subscribe();
        let store = Arc::clone(&self.shared.store);
        let after = if req.live_only {
            store
                .next_sequence()
                .await
                .map_err(ApiError::store)?
                .saturating_sub(1)
        } else {
            req.after_sequence
        };
        check_retained(&store, after).await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let filter = (!req.interaction_id.is_empty()).then_some(req.interaction_id);
        let stopping = self.shared.stopping.clone();
        tokio::spawn(async move {
            let mut stopping = stopping;
            tokio::select! {
                () = watch_task(store, live, after, filter, tx) => {}
                _ = stopping.wait_for(|s| *s) => {}
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// OUT_OF_RANGE when events after `after` have been dropped by retention.
async fn check_retained(store: &crate::store::Store, after: u64) -> Result<(), ApiError> {
    let first = store.first_retained().await.map_err(ApiError::store)?;
    if after != 0 && after.saturating_add(1) < first {
        return Err(ApiError::new(
            Code::OutOfRange,
            reason::EVENTS_EXPIRED,
            format!("events after {after} are no longer retained; the oldest retained is {first}"),
        ));
    }
    Ok(())
}

fn wanted(filter: &Option<String>, e: &EventRecord) -> bool {
    filter.as_ref().is_none_or(|f| *f == e.interaction_id)
}

/// Streams stored events after `after`, then live ones; falls back to the store when
/// it lags behind the live channel.
async fn watch_task(
    store: Arc<crate::store::Store>,
    mut live: broadcast::Receiver<Arc<EventRecord>>,
    mut last: u64,
    filter: Option<String>,
    tx: mpsc::Sender<Result<proto::Event, Status>>,
) {
    'replay: loop {
        loop {
            let page = match store.events_after(last, REPLAY_PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(ApiError::store(e).into())).await;
                    return;
                }
            };
            let full = page.len() == REPLAY_PAGE;
            for e in page {
                last = e.sequence;
                if wanted(&filter, &e) && tx.send(Ok(convert::event_out(&e))).await.is_err() {
                    return;
                }
            }
            if !full {
                break;
            }
        }
        loop {
            match live.recv().await {
                Ok(e) => {
                    if e.sequence <= last {
                        continue;
                    }
                    last = e.sequence;
                    if wanted(&filter, &e) && tx.send(Ok(convert::event_out(&e))).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // A slow client: catch up from the store if it still has the events.
                    if let Err(e) = check_retained(&store, last).await {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                    continue 'replay;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

impl SupervisionService {
    async fn start(
        &self,
        request: Request<proto::StartSupervisionRequest>,
        mode: rules::SupervisionMode,
    ) -> Reply<proto::StartSupervisionResponse> {
        let req = request.into_inner();
        let media = match req.media.as_ref() {
            Some(m) => Some(MediaSpec::from_proto("media", Some(m))?),
            None => None,
        };
        let start = StartSupervision {
            interaction_id: req.interaction_id.clone(),
            supervision_id: req.supervision_id.clone(),
            supervisor_user_id: req.supervisor_user_id.clone(),
            supervisor_participant_id: req.supervisor_participant_id.clone(),
            target_participant_id: req.target_participant_id.clone(),
            auto_answer: media.as_ref().is_none_or(|m| m.auto_answer),
        };
        let command = match mode {
            rules::SupervisionMode::Monitor => Command::StartMonitor(start),
            rules::SupervisionMode::Coach => Command::StartCoach(start),
            rules::SupervisionMode::Barge => Command::StartBarge(start),
        };
        let prepare = |core: &Core| {
            // An escalation to barge keeps the existing leg and its media.
            let escalation = mode == rules::SupervisionMode::Barge
                && !core
                    .rules
                    .supervisions(&SupervisionFilter {
                        interaction_id: Some(req.interaction_id.clone()),
                        supervisor_user_id: Some(req.supervisor_user_id.clone()),
                        live_only: true,
                        ..SupervisionFilter::default()
                    })
                    .is_empty();
            let retry = core.rules.supervision(&req.supervision_id).is_some();
            match media.clone() {
                Some(media) if !escalation => Ok(vec![NewLeg {
                    entry: MediaEntry {
                        interaction_id: req.interaction_id.clone(),
                        participant_id: req.supervisor_participant_id.clone(),
                        media,
                    },
                    field: "media".to_owned(),
                }]),
                None if !escalation && !retry => Err(ApiError::missing("media")),
                _ => Ok(Vec::new()),
            }
        };
        let (core, outcome) = self.shared.mutate(command, None, prepare).await?;
        let id = match &outcome.subject {
            Subject::Supervision(id) => id.clone(),
            _ => req.supervision_id.clone(),
        };
        Ok(Response::new(proto::StartSupervisionResponse {
            supervision: Some(supervision_view(&self.shared, &core, &id).await?),
            existing: outcome.existing,
        }))
    }
}

#[tonic::async_trait]
impl proto::supervision_server::Supervision for SupervisionService {
    async fn start_monitor(
        &self,
        request: Request<proto::StartSupervisionRequest>,
    ) -> Reply<proto::StartSupervisionResponse> {
        self.start(request, rules::SupervisionMode::Monitor).await
    }

    async fn start_coach(
        &self,
        request: Request<proto::StartSupervisionRequest>,
    ) -> Reply<proto::StartSupervisionResponse> {
        self.start(request, rules::SupervisionMode::Coach).await
    }

    async fn start_barge(
        &self,
        request: Request<proto::StartSupervisionRequest>,
    ) -> Reply<proto::StartSupervisionResponse> {
        self.start(request, rules::SupervisionMode::Barge).await
    }

    async fn stop_supervision(
        &self,
        request: Request<proto::StopSupervisionRequest>,
    ) -> Reply<proto::SupervisionInfo> {
        let req = request.into_inner();
        let actor = actor(&req.actor)?;
        let command = Command::StopSupervision {
            supervision_id: req.supervision_id.clone(),
        };
        let (core, outcome) = self
            .shared
            .mutate(command, actor, |_| Ok(Vec::new()))
            .await?;
        let id = match &outcome.subject {
            Subject::Supervision(id) => id.clone(),
            _ => req.supervision_id,
        };
        Ok(Response::new(
            supervision_view(&self.shared, &core, &id).await?,
        ))
    }

    async fn get_supervision(
        &self,
        request: Request<proto::GetSupervisionRequest>,
    ) -> Reply<proto::SupervisionInfo> {
        let req = request.into_inner();
        check_id("supervision_id", &req.supervision_id)?;
        let core = self.shared.core.lock().await;
        Ok(Response::new(
            supervision_view(&self.shared, &core, &req.supervision_id).await?,
        ))
    }

    async fn list_supervisions(
        &self,
        request: Request<proto::ListSupervisionsRequest>,
    ) -> Reply<proto::ListSupervisionsResponse> {
        let req = request.into_inner();
        check_optional_id("interaction_id", &req.interaction_id)?;
        check_optional_id("supervisor_user_id", &req.supervisor_user_id)?;
        let filter = SupervisionFilter {
            interaction_id: (!req.interaction_id.is_empty()).then_some(req.interaction_id),
            supervisor_user_id: (!req.supervisor_user_id.is_empty())
                .then_some(req.supervisor_user_id),
            target_participant_id: None,
            live_only: !req.include_ended,
        };
        let core = self.shared.core.lock().await;
        let mut supervisions: Vec<proto::SupervisionInfo> = core
            .rules
            .supervisions(&filter)
            .into_iter()
            .map(|s| convert::supervision_out(&core, s))
            .collect();
        if req.include_ended {
            for (id, view) in self
                .shared
                .store
                .ended_supervisions()
                .await
                .map_err(ApiError::store)?
            {
                let s = proto::SupervisionInfo::decode(view.as_slice()).map_err(ApiError::store)?;
                // Aliases are stored too; list each supervision once.
                let matches = s.supervision_id == id
                    && filter
                        .interaction_id
                        .as_ref()
                        .is_none_or(|i| *i == s.interaction_id)
                    && filter
                        .supervisor_user_id
                        .as_ref()
                        .is_none_or(|u| *u == s.supervisor_user_id);
                if matches {
                    supervisions.push(s);
                }
            }
            supervisions.sort_by(|a, b| a.supervision_id.cmp(&b.supervision_id));
        }
        Ok(Response::new(proto::ListSupervisionsResponse {
            supervisions,
        }))
    }
}

#[tonic::async_trait]
impl proto::directory_server::Directory for DirectoryService {
    async fn upsert_user(&self, request: Request<proto::UpsertUserRequest>) -> Reply<proto::User> {
        let req = request.into_inner();
        let command = Command::UpsertUser {
            user_id: req.user_id.clone(),
            display_name: req.display_name,
            permissions: req.permissions.into_iter().collect(),
        };
        let (core, _) = self
            .shared
            .mutate(command, None, |_| Ok(Vec::new()))
            .await?;
        Ok(Response::new(user_view(&core, &req.user_id)?))
    }

    async fn set_presence(
        &self,
        request: Request<proto::SetPresenceRequest>,
    ) -> Reply<proto::User> {
        let req = request.into_inner();
        let presence = convert::presence_in(req.presence)?;
        let command = Command::SetPresence {
            user_id: req.user_id.clone(),
            presence,
        };
        let (core, _) = self
            .shared
            .mutate(command, None, |_| Ok(Vec::new()))
            .await?;
        Ok(Response::new(user_view(&core, &req.user_id)?))
    }

    async fn get_user(&self, request: Request<proto::GetUserRequest>) -> Reply<proto::User> {
        let req = request.into_inner();
        check_id("user_id", &req.user_id)?;
        let core = self.shared.core.lock().await;
        Ok(Response::new(user_view(&core, &req.user_id)?))
    }
}

#[tonic::async_trait]
impl proto::engine_server::Engine for EngineService {
    async fn get_stats(
        &self,
        _request: Request<proto::GetStatsRequest>,
    ) -> Reply<proto::GetStatsResponse> {
        match self.shared.engine.0.call(EngineRequest::Stats).await {
            Ok(EngineResponse::Stats(stats)) => Ok(Response::new(convert::stats_out(&stats))),
            Ok(other) => Err(ApiError::new(
                Code::Internal,
                reason::ENGINE_INTERNAL,
                format!("Stats answered {other:?}"),
            )
            .into()),
            Err(e) => Err(ApiError::from(e).into()),
        }
    }

    async fn drain_node(
        &self,
        request: Request<proto::DrainNodeRequest>,
    ) -> Reply<proto::DrainNodeResponse> {
        let req = request.into_inner();
        check_id("node_id", &req.node_id)?;
        let (Some(cluster), crate::store::Store::Etcd(store)) =
            (&self.shared.cluster, &*self.shared.store)
        else {
            return Err(not_a_cluster().into());
        };
        let Some(mut node) = cluster
            .nodes()
            .into_iter()
            .find(|n| n.node_id == req.node_id)
        else {
            return Err(not_found(reason::NODE_NOT_FOUND, "engine node", &req.node_id).into());
        };
        crate::cluster::set_draining(store.etcd(), store.prefix(), &req.node_id, !req.undrain)
            .await
            .map_err(ApiError::store)?;
        node.draining = !req.undrain;
        tracing::info!(node_id = %req.node_id, draining = node.draining, "drain mark set");
        Ok(Response::new(proto::DrainNodeResponse {
            node: Some(node_out(&node)),
        }))
    }

    async fn list_nodes(
        &self,
        _request: Request<proto::ListNodesRequest>,
    ) -> Reply<proto::ListNodesResponse> {
        let nodes = self
            .shared
            .cluster
            .as_ref()
            .map(|c| c.nodes())
            .unwrap_or_default();
        Ok(Response::new(proto::ListNodesResponse {
            nodes: nodes.iter().map(node_out).collect(),
        }))
    }
}

fn not_a_cluster() -> ApiError {
    ApiError::new(
        Code::FailedPrecondition,
        reason::NOT_A_CLUSTER,
        "this control plane runs one engine, not a cluster of nodes (see docs/cluster.md)",
    )
}

fn node_out(n: &crate::placement::NodeInfo) -> proto::Node {
    proto::Node {
        node_id: n.node_id.clone(),
        engine: n.engine.clone(),
        media_address: n.media_address.clone(),
        shards: u32::from(n.shards),
        capacity_legs: n.capacity_legs,
        legs: n.legs,
        weight: n.weight,
        draining: n.draining,
    }
}
