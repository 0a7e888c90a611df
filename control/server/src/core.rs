//! Orchestration: rules state + store + engine, behind one lock.
//!
//! ## The order of a mutating RPC (and why)
//! 1. Under the core lock, apply the command to the rules [`State`]. A refusal returns
//!    at once: nothing was stored or programmed.
//! 2. Persist the command, its media and its events in one redb transaction (fsync), then
//!    publish the events to `WatchEvents`. This is the acknowledgement point for the
//!    *intent*: after it, a kill -9 of the sidecar loses nothing, and the restarted
//!    sidecar reprograms the engine from the stored state (reconciliation).
//! 3. Program the engine for every interaction whose hear relation changed (and the one
//!    the request named, so that a retry re-programs after an engine failure): remove
//!    legs of participants that left, allocate and configure legs of new ones, then
//!    replace the session plan. Leg assignments are persisted after the engine answers.
//! 4. Reply. If step 3 failed (engine down) the reply is the engine's error (usually
//!    UNAVAILABLE) although the intent is stored: the client retries (an identical
//!    retry is accepted and re-runs step 3), and the reconciler repairs the engine as
//!    soon as it answers again, whoever retries.
//!
//! Persisting before programming means the sidecar never acknowledges state it could
//! forget, and the engine is always derivable from the store; programming first would
//! leave legs the store does not know about after a crash (the reconciler removes such
//! strays anyway).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use earshot_engine_api::{
    Edge, EngineApi, EngineError, EngineEvent, EngineSnapshot, Gain, LegInfo, Request, Response,
    SessionPlan,
};
use earshot_rules::{
    Command, Outcome, ParticipantState, State, Subject, SupervisionFilter, SupervisionMode,
};
use tokio::sync::{Mutex, MutexGuard, broadcast};

use crate::clock::Clock;
use crate::error::ApiError;
use crate::media::MediaSpec;
use crate::store::{
    EventRecord, JournalEntry, LegKey, LegRecord, MediaEntry, Snapshot, Store, StoreError,
};

/// The mutable state of the sidecar; only touched under [`Shared::core`].
#[derive(Debug)]
pub struct Core {
    /// The rules state machine.
    pub rules: State,
    /// Requested media of every participant's leg.
    pub media: BTreeMap<LegKey, MediaSpec>,
    /// The engine's leg of every participant that has one.
    pub legs: BTreeMap<LegKey, LegRecord>,
    journal_upto: u64,
    since_snapshot: u64,
}

impl Core {
    /// Rebuilds the state from the store: snapshot, then the journal after it.
    pub fn load(store: &Store) -> Result<Core, StoreError> {
        let loaded = store.load()?;
        let (mut rules, mut media, mut journal_upto) = match loaded.snapshot {
            Some(s) => (
                s.rules,
                s.media
                    .into_iter()
                    .map(|m| ((m.interaction_id, m.participant_id), m.media))
                    .collect(),
                s.journal_upto,
            ),
            None => (State::default(), BTreeMap::new(), 0),
        };
        let since_snapshot = loaded.journal.len() as u64;
        for (index, entry) in loaded.journal {
            // The journal holds only accepted commands and the rules are deterministic,
            // so a refusal here means the rules changed meaning between versions: keep
            // going with what still applies rather than refuse to start.
            if let Err(e) = rules.apply(entry.now_ms, entry.command) {
                tracing::warn!(index, error = %e, "journal entry no longer applies");
            }
            for m in entry.media {
                media.insert((m.interaction_id, m.participant_id), m.media);
            }
            journal_upto = index;
        }
        Ok(Core {
            rules,
            media,
            legs: loaded.legs.into_iter().collect(),
            journal_upto,
            since_snapshot,
        })
    }

    /// The leg record of a participant.
    pub fn leg(&self, interaction_id: &str, participant_id: &str) -> Option<&LegRecord> {
        self.legs
            .get(&(interaction_id.to_owned(), participant_id.to_owned()))
    }

    /// The media of a participant.
    pub fn media_of(&self, interaction_id: &str, participant_id: &str) -> Option<&MediaSpec> {
        self.media
            .get(&(interaction_id.to_owned(), participant_id.to_owned()))
    }

    fn legs_of(&self, interaction_id: &str) -> Vec<LegKey> {
        self.legs
            .range((interaction_id.to_owned(), String::new())..)
            .take_while(|((i, _), _)| i == interaction_id)
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            journal_upto: self.journal_upto,
            rules: self.rules.clone(),
            media: self
                .media
                .iter()
                .map(|((i, p), m)| MediaEntry {
                    interaction_id: i.clone(),
                    participant_id: p.clone(),
                    media: m.clone(),
                })
                .collect(),
        }
    }
}

/// What a reconciliation changed in the engine.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Engine legs no participant owns, removed.
    pub legs_removed: usize,
    /// Legs the engine lacked, allocated again.
    pub legs_allocated: usize,
    /// Engine sessions of no live interaction, removed.
    pub sessions_removed: usize,
    /// Session plans that differed and were sent again.
    pub plans_sent: usize,
}

/// Everything the services share.
#[derive(Debug)]
pub struct Shared {
    /// The state, serialised: one mutation at a time, engine calls included.
    pub core: Mutex<Core>,
    /// The store (reads need no lock).
    pub store: Arc<Store>,
    /// The engine.
    pub engine: EngineHandle,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
    /// Live events for `WatchEvents`, published after they are stored.
    pub events: broadcast::Sender<Arc<EventRecord>>,
    /// Commands between snapshots.
    pub snapshot_every: u64,
    /// Set when an engine call failed: the reconciler runs at its next tick.
    pub needs_reconcile: AtomicBool,
    /// Turns true when the server shuts down, so open `WatchEvents` streams end and the
    /// graceful shutdown does not wait for clients that never hang up.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// `Arc<dyn EngineApi>` with a Debug impl.
#[derive(Clone)]
pub struct EngineHandle(pub Arc<dyn EngineApi>);

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineHandle")
    }
}

/// The interaction a command or outcome concerns, for engine programming.
fn scope_of(rules: &State, outcome: &Outcome) -> Option<String> {
    match &outcome.subject {
        Subject::Interaction(id) => Some(id.clone()),
        Subject::Supervision(id) => rules.supervision(id).map(|s| s.interaction_id.clone()),
        Subject::User(_) => None,
    }
}

/// Sorted edges and no-DTMF legs, so plans compare by content.
fn normalized(mut plan: SessionPlan) -> SessionPlan {
    plan.edges.sort_by_key(|e| (e.listener, e.source, e.gain));
    plan.no_dtmf.sort();
    plan.no_dtmf.dedup();
    plan
}

impl Shared {
    /// Applies a command end to end (module doc, steps 1-3). `prepare` runs under the
    /// lock before the rules see the command and returns the media of the legs it
    /// introduces (it may refuse, e.g. a retry with different media).
    pub async fn mutate<F>(
        &self,
        command: Command,
        actor: Option<String>,
        prepare: F,
    ) -> Result<(MutexGuard<'_, Core>, Outcome), ApiError>
    where
        F: FnOnce(&Core) -> Result<Vec<MediaEntry>, ApiError>,
    {
        let mut core = self.core.lock().await;
        let media = prepare(&core)?;
        let now_ms = self.clock.now_ms();
        let outcome = core.rules.apply(now_ms, command.clone())?;
        if !outcome.existing {
            for m in &media {
                core.media.insert(
                    (m.interaction_id.clone(), m.participant_id.clone()),
                    m.media.clone(),
                );
            }
            let entry = JournalEntry {
                now_ms,
                command,
                media,
                actor,
            };
            match self.store.commit_command(&entry, &outcome.events) {
                Ok((index, records)) => {
                    core.journal_upto = index;
                    core.since_snapshot += 1;
                    for r in records {
                        // No receivers is fine: nobody is watching.
                        let _ = self.events.send(Arc::new(r));
                    }
                }
                Err(e) => {
                    // Not acknowledged: put the in-memory state back to what is stored.
                    tracing::error!(error = %e, "store commit failed; reloading");
                    match Core::load(&self.store) {
                        Ok(reloaded) => *core = reloaded,
                        Err(e2) => tracing::error!(error = %e2, "store reload failed"),
                    }
                    return Err(ApiError::store(e));
                }
            }
            if core.since_snapshot >= self.snapshot_every {
                self.write_snapshot(&mut core);
            }
        }
        let mut targets: BTreeSet<String> = outcome.hear_changed.iter().cloned().collect();
        if let Some(scope) = scope_of(&core.rules, &outcome) {
            targets.insert(scope);
        }
        for interaction_id in targets {
            self.sync_interaction(&mut core, &interaction_id, &HashMap::new(), None)
                .await?;
        }
        Ok((core, outcome))
    }

    /// Writes a snapshot (errors are logged: the journal still holds everything).
    pub fn write_snapshot(&self, core: &mut Core) {
        match self.store.write_snapshot(&core.snapshot()) {
            Ok(()) => core.since_snapshot = 0,
            Err(e) => tracing::warn!(error = %e, "snapshot failed; journal kept"),
        }
    }

    async fn call(&self, request: Request) -> Result<Response, ApiError> {
        match self.engine.0.call(request).await {
            Ok(r) => Ok(r),
            Err(e) => {
                if matches!(e, EngineError::Unavailable(_)) {
                    self.needs_reconcile.store(true, Ordering::Relaxed);
                }
                Err(e.into())
            }
        }
    }

    async fn allocate(
        &self,
        key: &LegKey,
        media: &MediaSpec,
        requested_port: Option<u16>,
    ) -> Result<LegInfo, ApiError> {
        let request = |requested_port| Request::AllocateLeg {
            session: key.0.clone(),
            leg_key: key.1.clone(),
            family: media.family(),
            requested_port,
            rtcp_mux: media.rtcp_mux,
        };
        let first = self.call(request(requested_port)).await;
        let response = match first {
            // The old port is taken or out of range now: any port beats no leg.
            Err(e) if requested_port.is_some() && e.code != tonic::Code::Unavailable => {
                tracing::warn!(?key, ?requested_port, error = %e.message, "port not kept");
                self.call(request(None)).await?
            }
            other => other?,
        };
        match response {
            Response::Leg(info) => Ok(info),
            other => Err(EngineError::Internal(format!("AllocateLeg answered {other:?}")).into()),
        }
    }

    /// Brings the engine in line with one interaction's desired state. `wanted_ports`
    /// gives legs to re-create their old port; `current_plan`, when known, avoids
    /// re-sending an identical plan.
    pub async fn sync_interaction(
        &self,
        core: &mut Core,
        interaction_id: &str,
        wanted_ports: &HashMap<LegKey, u16>,
        current_plan: Option<&SessionPlan>,
    ) -> Result<bool, ApiError> {
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        let result = self
            .sync_inner(
                core,
                interaction_id,
                wanted_ports,
                current_plan,
                &mut puts,
                &mut deletes,
            )
            .await;
        // Record what the engine acknowledged even when a later call failed.
        if let Err(e) = self.store.update_legs(&puts, &deletes) {
            tracing::error!(error = %e, "leg records not persisted");
            return Err(ApiError::store(e));
        }
        result
    }

    async fn sync_inner(
        &self,
        core: &mut Core,
        interaction_id: &str,
        wanted_ports: &HashMap<LegKey, u16>,
        current_plan: Option<&SessionPlan>,
        puts: &mut Vec<(LegKey, LegRecord)>,
        deletes: &mut Vec<LegKey>,
    ) -> Result<bool, ApiError> {
        let Some(interaction) = core.rules.interaction(interaction_id) else {
            return Ok(false);
        };
        if interaction.is_ended() {
            self.call(Request::RemoveSession {
                session: interaction_id.to_owned(),
            })
            .await?;
            for key in core.legs_of(interaction_id) {
                core.legs.remove(&key);
                deletes.push(key);
            }
            return Ok(false);
        }
        let Some(relation) = core.rules.hear_relation(interaction_id) else {
            return Ok(false);
        };
        // Participants whose leg must report its first packet: ringing supervisor
        // phones (CONNECTING until MediaConnected).
        let connecting: BTreeSet<String> = interaction
            .participants
            .iter()
            .filter(|p| p.state == ParticipantState::Connecting)
            .map(|p| p.participant_id.clone())
            .collect();

        for key in core.legs_of(interaction_id) {
            if !relation.legs.contains(&key.1) {
                if let Some(rec) = core.legs.get(&key) {
                    self.call(Request::RemoveLeg { leg: rec.leg }).await?;
                }
                core.legs.remove(&key);
                deletes.push(key);
            }
        }
        for participant_id in &relation.legs {
            let key = (interaction_id.to_owned(), participant_id.clone());
            let Some(media) = core.media.get(&key).cloned() else {
                tracing::error!(?key, "participant without media; leg not programmed");
                continue;
            };
            let want = media.engine_config(connecting.contains(participant_id));
            let mut record = match core.legs.get(&key) {
                Some(r) => r.clone(),
                None => {
                    let info = self
                        .allocate(&key, &media, wanted_ports.get(&key).copied())
                        .await?;
                    LegRecord {
                        leg: info.leg,
                        local: info.local,
                        local_rtcp: info.local_rtcp,
                        configured: None,
                    }
                }
            };
            let changed = core.legs.get(&key) != Some(&record);
            if changed {
                // Keep the allocation even if configuring fails below.
                core.legs.insert(key.clone(), record.clone());
                puts.push((key.clone(), record.clone()));
            }
            if record.configured.as_ref() != Some(&want) {
                self.call(Request::ConfigureLeg {
                    leg: record.leg,
                    media: want.clone(),
                })
                .await?;
                record.configured = Some(want);
                core.legs.insert(key.clone(), record.clone());
                puts.push((key, record));
            }
        }

        let leg_of = |p: &str| core.leg(interaction_id, p).map(|r| r.leg);
        let mut plan = SessionPlan {
            session: interaction_id.to_owned(),
            ..SessionPlan::default()
        };
        for (listener, source) in &relation.edges {
            if let (Some(l), Some(s)) = (leg_of(listener), leg_of(source)) {
                plan.edges.push(Edge {
                    listener: l,
                    source: s,
                    gain: Gain::UNITY.0,
                });
            }
        }
        let filter = SupervisionFilter {
            interaction_id: Some(interaction_id.to_owned()),
            live_only: true,
            ..SupervisionFilter::default()
        };
        for s in core.rules.supervisions(&filter) {
            // SPEC section 5: DTMF never reaches a monitoring supervisor.
            if s.mode == SupervisionMode::Monitor
                && let Some(leg) = leg_of(&s.supervisor_participant_id)
            {
                plan.no_dtmf.push(leg);
            }
        }
        let plan = normalized(plan);
        if current_plan.is_some_and(|c| normalized(c.clone()) == plan) {
            return Ok(false);
        }
        self.call(Request::SetSessionPlan(plan)).await?;
        Ok(true)
    }

    /// Compares the engine with the stored state and repairs every difference: keeps
    /// legs that match, re-allocates missing ones on their old ports, removes unknown
    /// legs and sessions, re-sends plans that differ.
    pub async fn reconcile(&self) -> Result<ReconcileReport, ApiError> {
        let mut core = self.core.lock().await;
        let snapshot: EngineSnapshot = match self.call(Request::Snapshot).await? {
            Response::Snapshot(s) => s,
            other => {
                return Err(EngineError::Internal(format!("Snapshot answered {other:?}")).into());
            }
        };
        let mut report = ReconcileReport::default();
        let live: Vec<String> = core
            .rules
            .interactions()
            .filter(|i| !i.is_ended())
            .map(|i| i.interaction_id.clone())
            .collect();
        let mut desired: BTreeSet<LegKey> = BTreeSet::new();
        for id in &live {
            if let Some(rel) = core.rules.hear_relation(id) {
                desired.extend(rel.legs.into_iter().map(|p| (id.clone(), p)));
            }
        }
        let mut engine_legs: BTreeMap<LegKey, LegInfo> = BTreeMap::new();
        for info in &snapshot.legs {
            let key = (info.session.clone(), info.leg_key.clone());
            if desired.contains(&key) && !engine_legs.contains_key(&key) {
                engine_legs.insert(key, info.clone());
            } else {
                self.call(Request::RemoveLeg { leg: info.leg }).await?;
                report.legs_removed += 1;
            }
        }
        let live_set: BTreeSet<&String> = live.iter().collect();
        let engine_sessions: BTreeSet<String> = snapshot
            .legs
            .iter()
            .map(|l| l.session.clone())
            .chain(snapshot.plans.iter().map(|p| p.session.clone()))
            .collect();
        for session in engine_sessions {
            if !live_set.contains(&session) {
                self.call(Request::RemoveSession { session }).await?;
                report.sessions_removed += 1;
            }
        }

        let mut wanted_ports = HashMap::new();
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        let records: Vec<(LegKey, LegRecord)> = core
            .legs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, record) in records {
            match engine_legs.get(&key) {
                Some(info) => {
                    let adopted = LegRecord {
                        leg: info.leg,
                        local: info.local,
                        local_rtcp: info.local_rtcp,
                        configured: info.media.clone(),
                    };
                    if adopted != record {
                        core.legs.insert(key.clone(), adopted.clone());
                        puts.push((key, adopted));
                    }
                }
                None => {
                    if desired.contains(&key) {
                        wanted_ports.insert(key.clone(), record.local.port());
                        report.legs_allocated += 1;
                    }
                    core.legs.remove(&key);
                    deletes.push(key);
                }
            }
        }
        // Legs the engine has that the store lost (a crash between allocation and
        // persistence): adopt them.
        for (key, info) in &engine_legs {
            if !core.legs.contains_key(key) {
                let adopted = LegRecord {
                    leg: info.leg,
                    local: info.local,
                    local_rtcp: info.local_rtcp,
                    configured: info.media.clone(),
                };
                core.legs.insert(key.clone(), adopted.clone());
                puts.push((key.clone(), adopted));
            }
        }
        for key in desired.iter().filter(|k| !core.legs.contains_key(*k)) {
            if !wanted_ports.contains_key(key) {
                report.legs_allocated += 1;
            }
        }
        self.store
            .update_legs(&puts, &deletes)
            .map_err(ApiError::store)?;

        let plans: HashMap<&str, &SessionPlan> = snapshot
            .plans
            .iter()
            .map(|p| (p.session.as_str(), p))
            .collect();
        for id in &live {
            // An engine without a plan for the session needs one sent, even an empty one.
            let current = plans.get(id.as_str()).copied();
            let sent = self
                .sync_interaction(&mut core, id, &wanted_ports, current)
                .await?;
            if sent {
                report.plans_sent += 1;
            }
        }
        // Ended interactions whose legs outlived an engine outage.
        let ended: Vec<String> = core
            .legs
            .keys()
            .map(|(i, _)| i.clone())
            .filter(|i| !live_set.contains(i))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut deletes = Vec::new();
        for id in ended {
            for key in core.legs_of(&id) {
                core.legs.remove(&key);
                deletes.push(key);
            }
        }
        self.store
            .update_legs(&[], &deletes)
            .map_err(ApiError::store)?;
        self.needs_reconcile.store(false, Ordering::Relaxed);
        Ok(report)
    }

    /// Turns an engine event into a rules command and applies it.
    pub async fn handle_engine_event(&self, event: EngineEvent) -> Result<(), ApiError> {
        let command = match event {
            EngineEvent::FirstPacket {
                session, leg_key, ..
            } => Command::MediaConnected {
                interaction_id: session,
                participant_id: leg_key,
            },
            EngineEvent::MediaTimeout {
                session, leg_key, ..
            } => Command::MediaTimeout {
                interaction_id: session,
                participant_id: leg_key,
            },
            EngineEvent::RemoteLatched { .. } => return Ok(()),
        };
        drop(self.mutate(command, None, |_| Ok(Vec::new())).await?);
        Ok(())
    }
}
