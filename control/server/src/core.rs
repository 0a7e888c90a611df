//! Orchestration: rules state + engine + store, behind one lock.
//!
//! ## The order of a mutating RPC (and why)
//! A mutating RPC takes effect whole or leaves no trace (SPEC section 2). Under the core
//! lock:
//! 1. **Validate completely.** The service checks every field (media through the
//!    engine's own validator, `MediaConfig::validate`, so the sidecar refuses exactly
//!    what the engine would); `prepare` checks what needs the state (a retry with other
//!    media). A refusal returns at once: nothing was touched.
//! 2. **Apply to the rules tentatively**, after saving a [`Checkpoint`] of exactly what
//!    the command can change (one interaction with its supervisions, or one user: cheap
//!    at any number of calls). A rules refusal returns at once. Limits that need the
//!    resulting state (at most `MAX_SESSION_LEGS` legs per interaction) are checked
//!    here, before the engine sees anything.
//! 3. **Program the engine** for the interaction the command concerns: allocate and
//!    configure the legs of new participants, send the plan, and only then remove the
//!    legs of participants that left (removal cannot be undone, so it comes last, after
//!    every step that can be refused). Every leg record touched is remembered with its
//!    previous value ([`Attempt`]).
//! 4. **On success**: persist the journal entry, the events and the leg records in one
//!    redb transaction (fsync), publish the events to `WatchEvents`, reply.
//!    **On an engine refusal other than UNAVAILABLE** (or a failed commit): undo what
//!    this attempt did in the engine (configurations back, the previous plan, the legs
//!    it allocated removed), restore the checkpoint and the media map, store nothing,
//!    emit nothing, and reply with the engine's error, its field named as in the
//!    request (`participants[0].media.remote`). A corrected retry then succeeds.
//!    **On UNAVAILABLE** (engine down or restarting): persist the intent as in the
//!    success case (with the leg records the engine did acknowledge), publish its
//!    events and reply UNAVAILABLE; the reconciler applies it when the engine is back.
//!    If the engine then refuses it, that interaction alone is marked
//!    `PROGRAMMING_FAILED` (event, metric, WARN log) and the others are programmed.
//!
//! Programming before persisting means a crash between the two leaves engine legs the
//! store does not know; the reconciler removes such strays, but only from an engine
//! this store has claimed (an empty or foreign store never removes the legs of a
//! running engine; see [`Shared::reconcile`]).
//!
//! ## Reconciliation
//! [`Shared::reconcile`] compares the engine's snapshot with the stored state: legs of
//! no live participant and sessions of no live interaction are removed, missing legs
//! are re-created on their recorded local port first (all of them, before any fresh
//! allocation, so no recorded port is ever handed to another leg), legs whose port is
//! truly gone get a new one and a `LEG_PORT_LOST` event, plans that differ are sent
//! again. Each interaction is handled on its own: a refusal marks that one
//! `PROGRAMMING_FAILED` and the pass goes on. Interactions are handled many at once (a failed
//! node's hundreds of calls in parallel, up to `PASS_IN_FLIGHT`), each in order, and their
//! results are applied to the state afterwards in a fixed order. A first packet the engine saw while no
//! sidecar listened (a ringing supervisor that answered) is recovered from the
//! engine's per-leg activity. A mutation reconciles first whenever the engine
//! connection was re-established since the last pass, so a fresh allocation can never
//! take the port of a leg yet to be re-created.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use earshot_engine_api::{
    Edge, EngineApi, EngineError, EngineEvent, EngineSnapshot, Gain, LegInfo, MAX_SESSION_LEGS,
    MediaConfig, Request, Response, SessionPlan,
};
use earshot_rules::{
    Actor, Checkpoint, Command, Event, EventKind, Outcome, ParticipantState, State, Subject,
};
use tokio::sync::{Mutex, MutexGuard, broadcast};
use tonic::Code;

use crate::clock::Clock;
use crate::error::{ApiError, reason};
use crate::media::MediaSpec;
use crate::metrics::RpcMetrics;
use crate::store::{
    CommitRecord, EventRecord, JournalEntry, LegKey, LegRecord, MediaEntry, Snapshot, Store,
    StoreError,
};

/// Attempts of one mutation against commits of other replicas before it is refused
/// with ABORTED `STORE_CONFLICT` (each attempt first replays what the others did).
const MAX_COMMIT_ATTEMPTS: usize = 16;

/// The mutable state of the sidecar; only touched under [`Shared::core`].
#[derive(Debug)]
pub struct Core {
    /// The rules state machine.
    pub rules: State,
    /// Requested media of every participant's leg.
    pub media: BTreeMap<LegKey, MediaSpec>,
    /// The engine's leg of every participant that has one.
    pub legs: BTreeMap<LegKey, LegRecord>,
    /// Live interactions the engine refused to program, with the reason last reported
    /// (in memory: after a restart the next reconciliation reports them again).
    pub out_of_sync: BTreeMap<String, String>,
    journal_upto: u64,
    since_snapshot: u64,
    /// Engine legs and sessions that were strays in the last reconciliation pass. With
    /// a shared store a leg can be a stray for a moment (another replica allocated it
    /// and has not committed yet), so a stray is removed only when it is still one a
    /// pass later.
    strays_seen: (BTreeSet<earshot_engine_api::LegId>, BTreeSet<String>),
}

/// A participant's media introduced by a command, with the request field that carried
/// it (`participants[1].media`), so an engine refusal of that leg names the field.
#[derive(Debug, Clone)]
pub struct NewLeg {
    /// What to persist.
    pub entry: MediaEntry,
    /// The request field of the media.
    pub field: String,
}

impl Core {
    /// Rebuilds the state from the store: snapshot, then the journal after it.
    pub async fn load(store: &Store) -> Result<Core, StoreError> {
        let loaded = store.load().await?;
        let head = loaded.head;
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
            out_of_sync: BTreeMap::new(),
            // Commits without a command (leg records, sidecar events) advance the head
            // in a shared store too.
            journal_upto: journal_upto.max(head),
            since_snapshot,
            strays_seen: Default::default(),
        })
    }

    /// The head (last commit index) this state reflects.
    pub fn head(&self) -> u64 {
        self.journal_upto
    }

    /// Applies another replica's commit (module doc, "Replicas"): its command to the
    /// rules, its media, its leg records. `index` must be the next one.
    fn apply_record(&mut self, index: u64, record: CommitRecord) {
        debug_assert_eq!(index, self.journal_upto + 1);
        if let Some(entry) = record.entry {
            if let Err(e) = self.rules.apply(entry.now_ms, entry.command) {
                // Accepted by the replica that committed it against this same state:
                // only a rules change between versions can refuse it here.
                tracing::warn!(index, error = %e, "replicated command no longer applies");
            }
            for m in entry.media {
                self.media
                    .insert((m.interaction_id, m.participant_id), m.media);
            }
        }
        for (key, leg) in record.puts {
            self.legs.insert(key, leg);
        }
        for key in record.deletes {
            self.legs.remove(&key);
        }
        self.journal_upto = index;
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

    /// Interactions whose legs the engine should hold: the live ones.
    fn live_interactions(&self) -> Vec<String> {
        self.rules
            .interactions()
            .filter(|i| !i.is_ended())
            .map(|i| i.interaction_id.clone())
            .collect()
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
    /// Legs re-created on a new port because their recorded port was gone.
    pub ports_lost: usize,
    /// Interactions the engine refused to program in this pass.
    pub failed: usize,
    /// Engine events recovered from the engine's state.
    pub events_recovered: usize,
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
    /// Set when an engine call failed: the reconciler runs at its next tick, and the
    /// next mutation reconciles before it programs anything.
    pub needs_reconcile: AtomicBool,
    /// The engine connection epoch of the last complete reconciliation.
    pub reconciled_epoch: AtomicU64,
    /// Take over an engine that holds legs this store does not own (the operator said
    /// so with `--adopt-engine-state`): its unknown legs are then removed.
    pub adopt_engine_state: bool,
    /// The sidecar's own metrics.
    pub metrics: Arc<RpcMetrics>,
    /// Turns true when the server shuts down, so open `WatchEvents` streams end and the
    /// graceful shutdown does not wait for clients that never hang up.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Cluster mode: the router over the engine nodes (also `engine`), for what only
    /// it knows (which node serves a leg, which calls moved off a failed node).
    pub cluster: Option<Arc<crate::cluster::ClusterEngine>>,
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

/// The interaction a command names, if it names one directly.
fn command_interaction(command: &Command) -> Option<&str> {
    match command {
        Command::UpsertUser { .. }
        | Command::SetPresence { .. }
        | Command::StopSupervision { .. } => None,
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
        | Command::UpdateMedia { interaction_id, .. } => Some(interaction_id),
        Command::StartMonitor(r) | Command::StartCoach(r) | Command::StartBarge(r) => {
            Some(&r.interaction_id)
        }
    }
}

/// Sorted edges and no-DTMF legs, so plans compare by content.
fn normalized(mut plan: SessionPlan) -> SessionPlan {
    plan.edges.sort_by_key(|e| (e.listener, e.source, e.gain));
    plan.no_dtmf.sort();
    plan.no_dtmf.dedup();
    plan
}

/// What one programming attempt changed in [`Core::legs`] (and so in the engine):
/// the value of every touched record before its first change, and the sessions whose
/// plan was sent. Persisted on success, undone on refusal.
#[derive(Debug, Default)]
struct Attempt {
    before: BTreeMap<LegKey, Option<LegRecord>>,
    plans_sent: BTreeSet<String>,
}

impl Attempt {
    /// Remembers `key`'s record as it is now, unless already remembered.
    fn touch(&mut self, core: &Core, key: &LegKey) {
        self.before
            .entry(key.clone())
            .or_insert_with(|| core.legs.get(key).cloned());
    }

    /// The records to write and delete so the store matches `core.legs`.
    fn leg_changes(&self, core: &Core) -> (Vec<(LegKey, LegRecord)>, Vec<LegKey>) {
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        for (key, before) in &self.before {
            match core.legs.get(key) {
                Some(now) if before.as_ref() != Some(now) => puts.push((key.clone(), now.clone())),
                Some(_) => {}
                None if before.is_some() => deletes.push(key.clone()),
                None => {}
            }
        }
        (puts, deletes)
    }
}

/// An engine failure while programming one interaction, with the participant whose
/// leg was refused (to name the request field).
#[derive(Debug)]
struct Refused {
    error: ApiError,
    participant: Option<String>,
}

impl Refused {
    fn of(participant: Option<&str>) -> impl FnOnce(ApiError) -> Refused + '_ {
        move |error| Refused {
            error,
            participant: participant.map(str::to_owned),
        }
    }

    fn unavailable(&self) -> bool {
        self.error.code == Code::Unavailable
    }
}

/// The request field an engine refusal of a new participant's leg points at: the
/// engine names fields of its own request (`family`, `payload_type`), the client knows
/// the fields of its request (`participants[0].media.remote`).
fn name_field(refused: Refused, new_legs: &[NewLeg]) -> ApiError {
    let mut error = refused.error;
    let prefix = refused.participant.as_deref().and_then(|p| {
        new_legs
            .iter()
            .find(|n| n.entry.participant_id == p)
            .map(|n| n.field.as_str())
    });
    if let (Some(prefix), Some(field)) = (prefix, error.field.as_deref()) {
        let named = match field {
            // The local address family follows the remote's.
            "family" => Some(format!("{prefix}.remote")),
            "requested_port" => None,
            other => Some(format!("{prefix}.{other}")),
        };
        if let Some(named) = named {
            error.field = Some(named);
        }
    }
    error
}

/// A sidecar-recorded event (not produced by the rules).
fn engine_event(
    kind: EventKind,
    interaction_id: &str,
    at_ms: u64,
    details: &[(&str, &str)],
) -> Event {
    Event {
        kind,
        interaction_id: interaction_id.to_owned(),
        at_ms,
        actor: Actor::Engine,
        details: details
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// Where a reconciliation pass spent its time: milliseconds per step, in order
/// (logged when the pass changed the engine; wall-clock ms, which is what a
/// failover's media gap is made of).
#[derive(Debug, Default)]
struct Laps {
    steps: Vec<(&'static str, u64)>,
    last_ms: u64,
}

impl Laps {
    fn start(now_ms: u64) -> Laps {
        Laps {
            steps: Vec::new(),
            last_ms: now_ms,
        }
    }

    /// Ends the step `name` at `now_ms`.
    fn lap(&mut self, name: &'static str, now_ms: u64) {
        self.steps.push((name, now_ms.saturating_sub(self.last_ms)));
        self.last_ms = now_ms;
    }
}

impl std::fmt::Display for Laps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: u64 = self.steps.iter().map(|(_, ms)| ms).sum();
        write!(f, "{total} ms:")?;
        for (name, ms) in &self.steps {
            write!(f, " {name} {ms}")?;
        }
        Ok(())
    }
}

/// The plan for `relation`, with `leg_of` naming each participant's engine leg.
fn plan_of(
    relation: &earshot_rules::HearRelation,
    leg_of: impl Fn(&str) -> Option<earshot_engine_api::LegId>,
) -> SessionPlan {
    let mut plan = SessionPlan {
        session: relation.interaction_id.clone(),
        ..SessionPlan::default()
    };
    for (listener, source) in &relation.edges {
        if let (Some(l), Some(s)) = (leg_of(listener), leg_of(source)) {
            plan.edges.push(Edge {
                listener: l,
                source: s,
                gain: Gain::UNITY,
            });
        }
    }
    // The rules decide who never receives telephone events (SPEC section 5).
    for participant in &relation.no_dtmf {
        if let Some(leg) = leg_of(participant) {
            plan.no_dtmf.push(leg);
        }
    }
    normalized(plan)
}

/// Interactions a reconciliation pass programs at once (and interactions whose legs
/// its phases A and B allocate at once): enough to keep every survivor's engine
/// connection and etcd busy after a node failure, few enough not to flood an
/// engine's command queues or etcd.
const PASS_IN_FLIGHT: usize = 256;

/// What programming one interaction takes, read from [`Core`] under its lock
/// ([`Shared::work_for`]), so that the engine calls can run without it, many
/// interactions at once.
#[derive(Debug)]
enum Work {
    /// Nothing (an unknown interaction, or one without a hear relation).
    Nothing,
    /// An ended interaction: its session goes, and its leg records with it.
    End {
        interaction_id: String,
        legs: Vec<LegKey>,
    },
    /// A live one.
    Program(Box<ProgramWork>),
}

/// [`Work::Program`].
#[derive(Debug)]
struct ProgramWork {
    relation: earshot_rules::HearRelation,
    /// Every leg of the relation with its media and the configuration it must have,
    /// in the relation's order.
    wanted: Vec<(LegKey, MediaSpec, MediaConfig)>,
    /// The interaction's leg records as they are.
    records: BTreeMap<LegKey, LegRecord>,
    /// The plan the engine holds, when known (an identical one is not sent again).
    current_plan: Option<SessionPlan>,
}

/// What [`Programmer::program`] did: the leg record changes in the order they were
/// made (`None`: removed), whether the plan was sent, and the result.
#[derive(Debug)]
struct Programmed {
    changes: Vec<(LegKey, Option<LegRecord>)>,
    plan_sent: bool,
    result: Result<bool, Refused>,
}

/// The engine side of programming, detached from [`Core`]: it only calls the
/// engine, so a reconciliation pass runs many at once (one task per interaction)
/// and applies their results to the core afterwards, in a fixed order.
#[derive(Clone)]
struct Programmer {
    engine: Arc<dyn EngineApi>,
    cluster: Option<Arc<crate::cluster::ClusterEngine>>,
}

impl Programmer {
    async fn call(&self, request: Request) -> Result<Response, ApiError> {
        self.engine.call(request).await.map_err(ApiError::from)
    }

    async fn allocate(
        &self,
        key: &LegKey,
        media: &MediaSpec,
        requested_port: Option<u16>,
    ) -> Result<LegInfo, ApiError> {
        let response = self
            .call(Request::AllocateLeg {
                session: key.0.clone(),
                leg_key: key.1.clone(),
                family: media.family(),
                requested_port,
                rtcp_mux: media.rtcp_mux,
                resume: None,
            })
            .await?;
        match response {
            Response::Leg(info) => Ok(info),
            other => Err(EngineError::Internal(format!("AllocateLeg answered {other:?}")).into()),
        }
    }

    /// The record of a freshly allocated leg (not configured yet).
    fn record_of(&self, info: &LegInfo) -> LegRecord {
        LegRecord {
            leg: info.leg,
            local: info.local,
            local_rtcp: info.local_rtcp,
            configured: None,
            node: self.cluster.as_ref().and_then(|c| c.node_of(info.leg)),
        }
    }

    /// Allocates one interaction's legs in order (each on the port given, or a fresh
    /// one), stopping at the first failure other than a lost port (`requested_port`).
    async fn allocate_all(
        self,
        legs: Vec<(LegKey, MediaSpec, Option<u16>)>,
    ) -> Vec<(LegKey, Result<LegInfo, ApiError>)> {
        let mut out = Vec::with_capacity(legs.len());
        for (key, media, port) in legs {
            let r = self.allocate(&key, &media, port).await;
            let stop = r
                .as_ref()
                .is_err_and(|e| e.field.as_deref() != Some("requested_port"));
            out.push((key, r));
            if stop {
                break;
            }
        }
        out
    }

    /// Brings the engine in line with one interaction's desired state (module doc,
    /// step 3): allocate what is missing, configure what differs, send the plan, and
    /// only then remove the legs of participants that left (nothing after that can be
    /// refused).
    async fn program(self, work: Work) -> Programmed {
        let mut done = Programmed {
            changes: Vec::new(),
            plan_sent: false,
            result: Ok(false),
        };
        done.result = match work {
            Work::Nothing => Ok(false),
            Work::End {
                interaction_id,
                legs,
            } => self
                .call(Request::RemoveSession {
                    session: interaction_id,
                })
                .await
                .map(|_| {
                    done.changes.extend(legs.into_iter().map(|k| (k, None)));
                    false
                })
                .map_err(Refused::of(None)),
            Work::Program(work) => self.program_live(*work, &mut done).await,
        };
        done
    }

    async fn program_live(
        &self,
        work: ProgramWork,
        done: &mut Programmed,
    ) -> Result<bool, Refused> {
        let ProgramWork {
            relation,
            wanted,
            mut records,
            current_plan,
        } = work;
        // 1. Legs of the relation: allocate what is missing, configure what differs.
        for (key, media, want) in wanted {
            let mut record = match records.get(&key) {
                Some(r) => r.clone(),
                None => {
                    let info = self
                        .allocate(&key, &media, None)
                        .await
                        .map_err(Refused::of(Some(key.1.as_str())))?;
                    let record = self.record_of(&info);
                    records.insert(key.clone(), record.clone());
                    done.changes.push((key.clone(), Some(record.clone())));
                    record
                }
            };
            if record.configured.as_ref() != Some(&want) {
                self.call(Request::ConfigureLeg {
                    leg: record.leg,
                    media: want.clone(),
                })
                .await
                .map_err(Refused::of(Some(key.1.as_str())))?;
                record.configured = Some(want);
                records.insert(key.clone(), record.clone());
                done.changes.push((key, Some(record)));
            }
        }
        // 2. The plan.
        let plan = plan_of(&relation, |p| {
            records
                .get(&(relation.interaction_id.clone(), p.to_owned()))
                .map(|r| r.leg)
        });
        let mut sent = false;
        if !records.is_empty() && current_plan.is_none_or(|c| normalized(c) != plan) {
            self.call(Request::SetSessionPlan(plan))
                .await
                .map_err(Refused::of(None))?;
            done.plan_sent = true;
            sent = true;
        }
        // 3. Legs of participants that left, last.
        for (key, record) in records {
            if relation.legs.contains(&key.1) {
                continue;
            }
            self.call(Request::RemoveLeg { leg: record.leg })
                .await
                .map_err(Refused::of(None))?;
            done.changes.push((key, None));
        }
        Ok(sent)
    }
}

/// Runs `job` on every input, at most [`PASS_IN_FLIGHT`] at once, each in its own
/// task; the outputs come back in the order of the inputs (`None`: the task did not
/// finish, which only a runtime shutting down does; a panic is passed on).
async fn run_bounded<I, F, Fut>(inputs: Vec<I>, job: F) -> Vec<Option<Fut::Output>>
where
    F: Fn(I) -> Fut,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let mut out: Vec<Option<Fut::Output>> = (0..inputs.len()).map(|_| None).collect();
    let mut inputs = inputs.into_iter().enumerate();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < PASS_IN_FLIGHT {
            let Some((index, input)) = inputs.next() else {
                break;
            };
            let fut = job(input);
            running.spawn(async move { (index, fut.await) });
        }
        match running.join_next().await {
            Some(Ok((index, output))) => out[index] = Some(output),
            Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Some(Err(e)) => tracing::warn!(error = %e, "programming task cancelled"),
            None => return out,
        }
    }
}

impl Shared {
    /// The engine node serving `leg` (cluster mode).
    fn node_of(&self, leg: earshot_engine_api::LegId) -> Option<String> {
        self.cluster.as_ref()?.node_of(leg)
    }

    /// Records `NODE_FAILED` and `MEDIA_RESTORED` for every interaction the router
    /// moved off a failed node whose legs all run again on the survivor.
    async fn report_failovers(&self, core: &mut Core) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let moves = cluster.take_moves();
        if moves.is_empty() {
            return;
        }
        let now_ms = self.clock.now_ms();
        let mut events = Vec::new();
        for m in moves {
            let gap_ms = now_ms.saturating_sub(m.detected_ms).to_string();
            tracing::warn!(
                interaction_id = %m.interaction_id,
                from = %m.node_id,
                to = %m.to_node_id,
                gap_ms = %gap_ms,
                "interaction moved off a failed node"
            );
            events.push(engine_event(
                EventKind::NodeFailed,
                &m.interaction_id,
                m.detected_ms,
                &[("node_id", &m.node_id)],
            ));
            events.push(engine_event(
                EventKind::MediaRestored,
                &m.interaction_id,
                now_ms,
                &[
                    ("node_id", &m.to_node_id),
                    ("from_node_id", &m.node_id),
                    ("gap_ms", &gap_ms),
                ],
            ));
        }
        self.record_events(core, &events).await;
    }

    /// Applies a command end to end (module doc, steps 1-4). `prepare` runs under the
    /// lock before the rules see the command and returns the media of the legs it
    /// introduces (it may refuse, e.g. a retry with different media).
    ///
    /// In a shared store a commit can lose the race to another replica; the attempt is
    /// then undone whole (engine included), what the others committed is replayed, and
    /// the command is tried again against the new state, `prepare` included (so a
    /// second coach of an agent meets the first one and gets COACH_ALREADY_ACTIVE).
    pub async fn mutate<F>(
        &self,
        command: Command,
        actor: Option<String>,
        prepare: F,
    ) -> Result<(MutexGuard<'_, Core>, Outcome), ApiError>
    where
        F: Fn(&Core) -> Result<Vec<NewLeg>, ApiError>,
    {
        let scope = command.clone();
        self.mutate_with(scope, actor, move |core| {
            Ok((command.clone(), prepare(core)?))
        })
        .await
    }

    /// [`Shared::mutate`] for a command that depends on the state: `prepare` builds it
    /// under the lock (with the media it introduces). `scope` names the interaction it
    /// concerns (its lock, its retired answer); the built command must concern the same
    /// one. `UpdateMedia` uses it: what changed is known only against the media in
    /// force.
    pub async fn mutate_with<F>(
        &self,
        scope: Command,
        actor: Option<String>,
        prepare: F,
    ) -> Result<(MutexGuard<'_, Core>, Outcome), ApiError>
    where
        F: Fn(&Core) -> Result<(Command, Vec<NewLeg>), ApiError>,
    {
        let mut core = self.core.lock().await;
        self.reconcile_if_needed(&mut core).await?;
        let guard = self.lock_scope(&mut core, &scope).await?;
        let result = async {
            if let Some(outcome) = self.retired_answer(&core, &scope).await? {
                return Ok(outcome);
            }
            let (command, new_legs) = prepare(&core)?;
            debug_assert_eq!(command_interaction(&command), command_interaction(&scope));
            self.mutate_locked(&mut core, command, actor, new_legs)
                .await
        }
        .await;
        self.store.unlock(guard).await;
        result.map(|outcome| (core, outcome))
    }

    /// In a shared store: takes the lock of the interaction `command` concerns and
    /// brings this state up to date, so that the command meets the latest state of
    /// its interaction and no other replica programs that interaction until this one
    /// has committed (module doc, "Replicas"). Nothing to do with one writer.
    async fn lock_scope(
        &self,
        core: &mut Core,
        command: &Command,
    ) -> Result<Option<crate::store::etcd::LockGuard>, ApiError> {
        if !self.store.is_shared() {
            return Ok(None);
        }
        let scope = |core: &Core| match command {
            Command::StopSupervision { supervision_id } => core
                .rules
                .supervision(supervision_id)
                .map(|s| s.interaction_id.clone()),
            other => command_interaction(other).map(str::to_owned),
        };
        let mut scoped = scope(core);
        if scoped.is_none() {
            // A supervision this replica has not heard of yet, or a directory command.
            self.catch_up(core).await?;
            scoped = scope(core);
        }
        let Some(id) = scoped else {
            return Ok(None);
        };
        let guard = self.store.lock(&id).await.map_err(ApiError::store)?;
        if let Err(e) = self.catch_up(core).await {
            self.store.unlock(guard).await;
            return Err(e);
        }
        Ok(guard)
    }

    /// Replays every commit other replicas made after this state's head (nothing to do
    /// on a store with one writer). A replica so far behind that a snapshot folded its
    /// missing commits reloads the whole state.
    pub async fn catch_up(&self, core: &mut Core) -> Result<(), ApiError> {
        self.replay(core).await?;
        self.retire_ended_locked(core).await;
        Ok(())
    }

    /// [`Shared::catch_up`] without retiring calls that ended (what retiring itself
    /// uses when its commit loses a race).
    async fn replay(&self, core: &mut Core) -> Result<(), ApiError> {
        if !self.store.is_shared() {
            return Ok(());
        }
        match self.store.records_after(core.journal_upto).await {
            Ok(records) => {
                for (index, record) in records {
                    if index == core.journal_upto + 1 {
                        core.apply_record(index, record);
                    }
                }
            }
            Err(StoreError::Behind { .. }) => {
                tracing::warn!(
                    head = core.journal_upto,
                    "replica fell behind a snapshot; reloading"
                );
                let out_of_sync = std::mem::take(&mut core.out_of_sync);
                *core = Core::load(&self.store).await.map_err(ApiError::store)?;
                core.out_of_sync = out_of_sync;
            }
            Err(e) => return Err(ApiError::store(e)),
        }
        Ok(())
    }

    /// Follows every replica's commits (a shared store only; returns at once
    /// otherwise): publishes their events to `WatchEvents` in commit order (this
    /// replica's own included) and replays other replicas' commits into this state, so
    /// reads on any replica see every write within a watch round trip.
    pub async fn run_follower(self: Arc<Self>) {
        let crate::store::Store::Etcd(etcd) = &*self.store else {
            return;
        };
        let mut published = self.core.lock().await.journal_upto;
        loop {
            let mut commits = match etcd.follow(std::time::Duration::from_secs(30)).await {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the store; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
            };
            // Whatever was committed before the watch started.
            self.follow_gap(&mut published).await;
            while let Some(item) = commits.recv().await {
                match item {
                    Ok((index, record)) => {
                        if index <= published {
                            continue;
                        }
                        if index > published + 1 {
                            self.follow_gap(&mut published).await;
                            if index <= published {
                                continue;
                            }
                        }
                        self.follow_one(&mut published, index, record).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "store watch ended; following again");
                        break;
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Publishes and replays one commit in order.
    async fn follow_one(&self, published: &mut u64, index: u64, record: CommitRecord) {
        self.publish_now(record.events.clone());
        *published = index;
        let mut core = self.core.lock().await;
        if index == core.journal_upto + 1 {
            core.apply_record(index, record);
            self.retire_ended_locked(&mut core).await;
        } else if index > core.journal_upto
            && let Err(e) = self.catch_up(&mut core).await
        {
            tracing::warn!(error = %e.message, "catching up failed");
        }
    }

    /// Publishes and replays every commit after `published` (read from the store).
    async fn follow_gap(&self, published: &mut u64) {
        match self.store.records_after(*published).await {
            Ok(records) => {
                for (index, record) in records {
                    if index == *published + 1 {
                        self.follow_one(published, index, record).await;
                    }
                }
            }
            Err(StoreError::Behind { .. }) => {
                // Folded into a snapshot: live watchers cannot get these events from
                // here, but they stay readable from the store (WatchEvents resumes by
                // sequence). The state catches up by reloading.
                let mut core = self.core.lock().await;
                if let Err(e) = self.catch_up(&mut core).await {
                    tracing::warn!(error = %e.message, "reloading after a snapshot failed");
                }
                *published = core.journal_upto;
            }
            Err(e) => tracing::warn!(error = %e, "reading the journal failed"),
        }
    }

    /// Commits what the sidecar records itself (leg records, its own events), replaying
    /// other replicas' commits and retrying when it loses a race: these never depend on
    /// the rules' state.
    async fn commit_side(
        &self,
        core: &mut Core,
        events: &[Event],
        puts: &[(LegKey, LegRecord)],
        deletes: &[LegKey],
    ) -> Result<(), StoreError> {
        let mut attempt = 0;
        loop {
            match self
                .store
                .commit(core.journal_upto, None, events, None, puts, deletes)
                .await
            {
                Ok(committed) => {
                    core.journal_upto = committed.head;
                    self.publish(committed.records);
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) if attempt + 1 < MAX_COMMIT_ATTEMPTS => {
                    attempt += 1;
                    if let Err(e) = self.replay(core).await {
                        tracing::warn!(error = %e.message, "catching up before a retry failed");
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Shared::mutate`] with the lock held and the media prepared.
    async fn mutate_locked(
        &self,
        core: &mut Core,
        command: Command,
        actor: Option<String>,
        new_legs: Vec<NewLeg>,
    ) -> Result<Outcome, ApiError> {
        // Accumulates across conflict retries: the engine keeps what was programmed.
        let mut attempt = Attempt::default();
        let mut tries = 0;
        let (outcome, scope, programmed) = loop {
            let now_ms = self.clock.now_ms();
            let checkpoint = core.rules.checkpoint(&command);
            let outcome = match core.rules.apply(now_ms, command.clone()) {
                Ok(o) => o,
                Err(e) => {
                    // Only after a conflict can there be engine work to undo: the
                    // latest state refuses what an older one accepted.
                    if !attempt.before.is_empty() || !attempt.plans_sent.is_empty() {
                        let scope = command_interaction(&command).map(str::to_owned);
                        self.undo(
                            core,
                            Undo {
                                checkpoint,
                                media_before: Vec::new(),
                                scope,
                            },
                            attempt,
                        )
                        .await;
                    }
                    return Err(e.into());
                }
            };
            let mut media_before = Vec::new();
            if !outcome.existing {
                for n in &new_legs {
                    let key = (
                        n.entry.interaction_id.clone(),
                        n.entry.participant_id.clone(),
                    );
                    let old = core.media.insert(key.clone(), n.entry.media.clone());
                    media_before.push((key, old));
                }
            }
            let scope = scope_of(&core.rules, &outcome);
            let programmed = match &scope {
                Some(id) => match Self::check_limits(core, id) {
                    Err(error) => Err(Refused {
                        error,
                        participant: None,
                    }),
                    Ok(()) => self.program(core, id, None, &mut attempt).await.map(|_| ()),
                },
                None => Ok(()),
            };
            let undo = Undo {
                checkpoint,
                media_before,
                scope: scope.clone(),
            };
            let programmed = match programmed {
                Err(refused) if !refused.unavailable() => {
                    let error = name_field(refused, &new_legs);
                    tracing::warn!(
                        interaction_id = scope.as_deref().unwrap_or(""),
                        code = ?error.code,
                        reason = error.reason,
                        field = error.field.as_deref().unwrap_or(""),
                        error = %error.message,
                        "engine refused the change; undone, nothing stored"
                    );
                    if error.reason.starts_with("ENGINE_") {
                        self.metrics
                            .sidecar
                            .engine_refusals
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    self.undo(core, undo, attempt).await;
                    return Err(error);
                }
                other => other,
            };
            // Accepted (or accepted while the engine is unavailable): durable now.
            let entry = (!outcome.existing).then(|| JournalEntry {
                now_ms,
                command: command.clone(),
                media: new_legs.iter().map(|n| n.entry.clone()).collect(),
                actor: actor.clone(),
            });
            let (puts, deletes) = attempt.leg_changes(core);
            match self
                .store
                .commit(
                    core.journal_upto,
                    entry.as_ref(),
                    &outcome.events,
                    actor.as_deref(),
                    &puts,
                    &deletes,
                )
                .await
            {
                Ok(committed) => {
                    core.journal_upto = committed.head;
                    if committed.index.is_some() {
                        core.since_snapshot += 1;
                    }
                    self.publish(committed.records);
                    break (outcome, scope, programmed);
                }
                Err(StoreError::Conflict { head }) if tries + 1 < MAX_COMMIT_ATTEMPTS => {
                    // Another replica committed first (on another interaction: this
                    // one is locked). Put the rules and media back, keep the engine
                    // as programmed, replay the others' commits, and apply the command
                    // again to the new state: the engine work is reused where the new
                    // outcome agrees, undone where it is refused.
                    tries += 1;
                    tracing::debug!(head, tries, "another replica committed first; retrying");
                    core.rules.restore(undo.checkpoint);
                    for (key, old) in undo.media_before.into_iter().rev() {
                        match old {
                            Some(m) => core.media.insert(key, m),
                            None => core.media.remove(&key),
                        };
                    }
                    if let Err(e) = self.catch_up(core).await {
                        self.undo_engine(core, scope.as_deref(), attempt).await;
                        return Err(e);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "store commit failed; the change is undone");
                    self.undo(core, undo, attempt).await;
                    return Err(ApiError::store(e));
                }
            }
        };
        if core.since_snapshot >= self.snapshot_every {
            self.write_snapshot(core).await;
        }
        if let Some(id) = &scope
            && core.rules.interaction(id).is_some_and(|i| i.is_ended())
        {
            // Ended calls leave memory at once; the store keeps their views for the
            // retention period. The reconciler removes what the engine still holds.
            self.retire(core, id).await;
        }
        match programmed {
            Ok(()) => {
                if let Some(id) = &scope {
                    self.mark_in_sync(core, id);
                }
                Ok(outcome)
            }
            Err(refused) => {
                // UNAVAILABLE: the intent is stored; the reconciler programs it.
                self.needs_reconcile.store(true, Ordering::Relaxed);
                Err(refused.error)
            }
        }
    }

    /// Moves an ended interaction from memory to the store: its final view and its
    /// supervisions' views are stored, then it is forgotten with its media and leg
    /// records (SPEC: the sidecar's memory stays flat however many calls ended).
    pub async fn retire(&self, core: &mut Core, interaction_id: &str) {
        let Some(i) = core.rules.interaction(interaction_id) else {
            return;
        };
        if !i.is_ended() {
            return;
        }
        use prost::Message;
        let mut supervisions = Vec::new();
        let mut ids = Vec::new();
        for sid in &i.supervision_ids {
            if let Some(s) = core.rules.supervision(sid) {
                let view = crate::convert::supervision_out(core, s).encode_to_vec();
                if let Some(alias) = &s.escalation_alias {
                    ids.push(alias.clone());
                    supervisions.push((alias.clone(), view.clone()));
                }
                ids.push(sid.clone());
                supervisions.push((sid.clone(), view));
            }
        }
        let mut user_ids: Vec<String> = i
            .participants
            .iter()
            .filter_map(|p| p.user_id.clone())
            .collect();
        user_ids.sort();
        user_ids.dedup();
        let record = crate::store::EndedRecord {
            ended_ms: i.ended_at_ms.unwrap_or_default(),
            created_with: i.created_with().to_vec(),
            user_ids,
            supervision_ids: ids,
            view: crate::convert::interaction_out(core, i).encode_to_vec(),
        };
        let legs = core.legs_of(interaction_id);
        let mut stored = self
            .store
            .retire(interaction_id, &record, &supervisions)
            .await;
        if stored.is_ok() {
            stored = self.commit_side(core, &[], &[], &legs).await;
        }
        if let Err(e) = stored {
            tracing::error!(interaction_id, error = %e, "ended interaction kept in memory");
            return;
        }
        core.rules.forget_interaction(interaction_id);
        let media: Vec<LegKey> = core
            .media
            .range((interaction_id.to_owned(), String::new())..)
            .take_while(|((i, _), _)| i == interaction_id)
            .map(|(k, _)| k.clone())
            .collect();
        for key in media {
            core.media.remove(&key);
        }
        for key in legs {
            core.legs.remove(&key);
        }
        core.out_of_sync.remove(interaction_id);
        self.metrics
            .sidecar
            .interactions_in_memory
            .store(core.rules.interactions().count() as u64, Ordering::Relaxed);
    }

    /// Retires every ended interaction still in memory (after a restart replayed them).
    pub async fn retire_ended(&self) {
        let mut core = self.core.lock().await;
        self.retire_ended_locked(&mut core).await;
    }

    /// [`Shared::retire_ended`] with the lock held (also after replaying another
    /// replica's commits that ended calls).
    async fn retire_ended_locked(&self, core: &mut Core) {
        let ended: Vec<String> = core
            .rules
            .interactions()
            .filter(|i| i.is_ended())
            .map(|i| i.interaction_id.clone())
            .collect();
        for id in ended {
            self.retire(core, &id).await;
        }
        self.metrics
            .sidecar
            .interactions_in_memory
            .store(core.rules.interactions().count() as u64, Ordering::Relaxed);
    }

    /// The answer to a command on an interaction (or supervision) that ended and left
    /// memory but is still retained in the store, as the rules would have answered it
    /// in memory: retries of what ended it are `existing`, other verbs
    /// `INTERACTION_ENDED`, reused ids `ALREADY_EXISTS`. `None`: the rules decide.
    async fn retired_answer(
        &self,
        core: &Core,
        command: &Command,
    ) -> Result<Option<Outcome>, ApiError> {
        use earshot_rules::reason as r;
        let existing = |subject| {
            Ok(Some(Outcome {
                existing: true,
                events: Vec::new(),
                hear_changed: Vec::new(),
                subject,
            }))
        };
        let ended = |msg: String| {
            Err(ApiError::new(
                Code::FailedPrecondition,
                r::INTERACTION_ENDED,
                msg,
            ))
        };
        if let Command::StopSupervision { supervision_id } = command {
            if core.rules.supervision(supervision_id).is_none()
                && self
                    .store
                    .ended_supervision(supervision_id)
                    .await
                    .map_err(ApiError::store)?
                    .is_some()
            {
                return existing(Subject::Supervision(supervision_id.clone()));
            }
            return Ok(None);
        }
        if let Command::StartMonitor(req) | Command::StartCoach(req) | Command::StartBarge(req) =
            command
            && core.rules.supervision(&req.supervision_id).is_none()
            && core.rules.interaction(&req.interaction_id).is_some()
            && self
                .store
                .ended_supervision(&req.supervision_id)
                .await
                .map_err(ApiError::store)?
                .is_some()
        {
            return Err(ApiError::new(
                Code::AlreadyExists,
                r::SUPERVISION_EXISTS,
                format!(
                    "supervision {} exists (ended) with other content",
                    crate::error::quote(&req.supervision_id)
                ),
            ));
        }
        let Some(interaction_id) = command_interaction(command) else {
            return Ok(None);
        };
        if core.rules.interaction(interaction_id).is_some() {
            return Ok(None);
        }
        let Some(record) = self
            .store
            .ended(interaction_id)
            .await
            .map_err(ApiError::store)?
        else {
            return Ok(None);
        };
        let subject = Subject::Interaction(interaction_id.to_owned());
        let shown = crate::error::quote(interaction_id);
        match command {
            Command::CreateInteraction { participants, .. } => {
                if *participants == record.created_with {
                    existing(subject)
                } else {
                    Err(ApiError::new(
                        Code::AlreadyExists,
                        r::INTERACTION_EXISTS,
                        format!("interaction {shown} exists (ended) with other participants"),
                    ))
                }
            }
            Command::EndInteraction { .. }
            | Command::MediaConnected { .. }
            | Command::MediaTimeout { .. } => existing(subject),
            Command::StartMonitor(req) | Command::StartCoach(req) | Command::StartBarge(req) => {
                if self
                    .store
                    .ended_supervision(&req.supervision_id)
                    .await
                    .map_err(ApiError::store)?
                    .is_some()
                {
                    existing(Subject::Supervision(req.supervision_id.clone()))
                } else {
                    ended(format!("interaction {shown} has ended"))
                }
            }
            _ => ended(format!("interaction {shown} has ended")),
        }
    }

    /// Limits checked on the tentative state, before the engine sees anything.
    fn check_limits(core: &Core, interaction_id: &str) -> Result<(), ApiError> {
        let legs = core
            .rules
            .hear_relation(interaction_id)
            .map_or(0, |r| r.legs.len());
        if legs > MAX_SESSION_LEGS {
            return Err(ApiError::new(
                Code::ResourceExhausted,
                reason::TOO_MANY_LEGS,
                format!(
                    "interaction {} would have {legs} legs; an interaction has at most \
                     {MAX_SESSION_LEGS}",
                    crate::error::quote(interaction_id)
                ),
            ));
        }
        Ok(())
    }

    /// Publishes stored events to `WatchEvents`. In a shared store only the follower
    /// publishes ([`Shared::publish_replicated`]), in commit order, whoever committed:
    /// a replica publishing its own events at once could overtake an earlier event of
    /// another replica that it has not seen yet.
    fn publish(&self, records: Vec<EventRecord>) {
        if self.store.is_shared() {
            return;
        }
        self.publish_now(records);
    }

    fn publish_now(&self, records: Vec<EventRecord>) {
        for r in records {
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(Arc::new(r));
        }
    }

    /// Writes a snapshot (errors are logged: the journal still holds everything).
    pub async fn write_snapshot(&self, core: &mut Core) {
        match self.store.write_snapshot(&core.snapshot()).await {
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

    /// Whether [`Shared::program`] would change anything in the engine for
    /// `interaction_id` (no engine call): a leg missing or configured otherwise, a
    /// plan that differs, a leg of a participant that left, or an ended call.
    fn needs_programming(
        core: &Core,
        interaction_id: &str,
        current_plan: Option<&SessionPlan>,
    ) -> bool {
        let Some(interaction) = core.rules.interaction(interaction_id) else {
            return false;
        };
        if interaction.is_ended() {
            return true;
        }
        let Some(relation) = core.rules.hear_relation(interaction_id) else {
            return false;
        };
        for p in &interaction.participants {
            if !relation.legs.contains(&p.participant_id) {
                continue;
            }
            let key = (interaction_id.to_owned(), p.participant_id.clone());
            let Some(media) = core.media.get(&key) else {
                continue;
            };
            let want = media.engine_config(p.state == ParticipantState::Connecting);
            match core.legs.get(&key) {
                Some(r) if r.configured.as_ref() == Some(&want) => {}
                _ => return true,
            }
        }
        let legs = core.legs_of(interaction_id);
        if legs.iter().any(|k| !relation.legs.contains(&k.1)) {
            return true;
        }
        !legs.is_empty()
            && current_plan
                .is_none_or(|c| normalized(c.clone()) != Self::plan_for(core, interaction_id))
    }

    /// The plan the engine should hold for `interaction_id`, from the rules and the
    /// leg records.
    fn plan_for(core: &Core, interaction_id: &str) -> SessionPlan {
        match core.rules.hear_relation(interaction_id) {
            Some(relation) => plan_of(&relation, |p| core.leg(interaction_id, p).map(|r| r.leg)),
            None => SessionPlan {
                session: interaction_id.to_owned(),
                ..SessionPlan::default()
            },
        }
    }

    /// Brings the engine in line with one interaction's desired state (module doc,
    /// step 3), recording every change in `attempt`. `current_plan`, when known, avoids
    /// re-sending an identical plan. Returns whether a plan was sent.
    async fn program(
        &self,
        core: &mut Core,
        interaction_id: &str,
        current_plan: Option<&SessionPlan>,
        attempt: &mut Attempt,
    ) -> Result<bool, Refused> {
        let work = Self::work_for(core, interaction_id, current_plan);
        let done = self.programmer().program(work).await;
        self.apply_programmed(core, interaction_id, done, attempt)
    }

    /// The engine side of programming, detached from the core ([`Programmer`]).
    fn programmer(&self) -> Programmer {
        Programmer {
            engine: Arc::clone(&self.engine.0),
            cluster: self.cluster.clone(),
        }
    }

    /// What programming `interaction_id` takes, read from the state (no engine call).
    fn work_for(core: &Core, interaction_id: &str, current_plan: Option<&SessionPlan>) -> Work {
        let Some(interaction) = core.rules.interaction(interaction_id) else {
            return Work::Nothing;
        };
        if interaction.is_ended() {
            return Work::End {
                interaction_id: interaction_id.to_owned(),
                legs: core.legs_of(interaction_id),
            };
        }
        let Some(relation) = core.rules.hear_relation(interaction_id) else {
            return Work::Nothing;
        };
        // Ringing supervisor phones report their first packet (CONNECTING until then).
        let connecting: BTreeSet<&str> = interaction
            .participants
            .iter()
            .filter(|p| p.state == ParticipantState::Connecting)
            .map(|p| p.participant_id.as_str())
            .collect();
        let mut wanted = Vec::new();
        for participant_id in &relation.legs {
            let key = (interaction_id.to_owned(), participant_id.clone());
            let Some(media) = core.media.get(&key).cloned() else {
                tracing::error!(?key, "participant without media; leg not programmed");
                continue;
            };
            let want = media.engine_config(connecting.contains(participant_id.as_str()));
            wanted.push((key, media, want));
        }
        let records = core
            .legs_of(interaction_id)
            .into_iter()
            .filter_map(|k| core.legs.get(&k).cloned().map(|r| (k, r)))
            .collect();
        Work::Program(Box::new(ProgramWork {
            relation,
            wanted,
            records,
            current_plan: current_plan.cloned(),
        }))
    }

    /// Applies what [`Programmer::program`] did to the leg records (each change
    /// remembered in `attempt`, also those made before a refusal: the engine has them).
    fn apply_programmed(
        &self,
        core: &mut Core,
        interaction_id: &str,
        done: Programmed,
        attempt: &mut Attempt,
    ) -> Result<bool, Refused> {
        for (key, record) in done.changes {
            attempt.touch(core, &key);
            match record {
                Some(r) => core.legs.insert(key, r),
                None => core.legs.remove(&key),
            };
        }
        if done.plan_sent {
            attempt.plans_sent.insert(interaction_id.to_owned());
        }
        if done.result.as_ref().is_err_and(Refused::unavailable) {
            self.needs_reconcile.store(true, Ordering::Relaxed);
        }
        done.result
    }

    /// Puts the rules, the media map, the leg records and the engine back as they were
    /// before a refused attempt (module doc, step 4). Engine calls that fail here leave
    /// strays the reconciler removes (they are not in the restored state).
    async fn undo(&self, core: &mut Core, undo: Undo, attempt: Attempt) {
        core.rules.restore(undo.checkpoint);
        for (key, old) in undo.media_before.into_iter().rev() {
            match old {
                Some(m) => core.media.insert(key, m),
                None => core.media.remove(&key),
            };
        }
        self.undo_engine(core, undo.scope.as_deref(), attempt).await;
    }

    /// The engine half of [`Shared::undo`]: leg records back as they were before the
    /// attempt, configurations and the plan of `scope` re-sent, legs it allocated
    /// removed.
    async fn undo_engine(&self, core: &mut Core, scope: Option<&str>, attempt: Attempt) {
        let mut allocated = Vec::new();
        let mut reconfigure: Vec<(earshot_engine_api::LegId, MediaConfig)> = Vec::new();
        for (key, before) in &attempt.before {
            match (before, core.legs.get(key)) {
                (None, Some(now)) => allocated.push(now.leg),
                (Some(b), Some(now)) if b.leg == now.leg && b.configured != now.configured => {
                    if let Some(config) = &b.configured {
                        reconfigure.push((b.leg, config.clone()));
                    }
                }
                _ => {}
            }
        }
        for (key, before) in attempt.before {
            match before {
                Some(r) => core.legs.insert(key, r),
                None => core.legs.remove(&key),
            };
        }
        let mut clean = true;
        for (leg, media) in reconfigure {
            clean &= self
                .call(Request::ConfigureLeg { leg, media })
                .await
                .is_ok();
        }
        if let Some(id) = scope {
            let exists = core.rules.interaction(id).is_some();
            if exists && attempt.plans_sent.contains(id) && !core.legs_of(id).is_empty() {
                let plan = Self::plan_for(core, id);
                clean &= self.call(Request::SetSessionPlan(plan)).await.is_ok();
            }
            for leg in allocated {
                clean &= self.call(Request::RemoveLeg { leg }).await.is_ok();
            }
            if !exists {
                // A refused create: no session may stay behind, not even empty.
                clean &= self
                    .call(Request::RemoveSession {
                        session: id.to_owned(),
                    })
                    .await
                    .is_ok();
            }
        }
        if !clean {
            tracing::warn!("engine undo incomplete; the reconciler removes what is left");
            self.needs_reconcile.store(true, Ordering::Relaxed);
        }
    }

    fn mark_in_sync(&self, core: &mut Core, interaction_id: &str) {
        if core.out_of_sync.remove(interaction_id).is_some() {
            tracing::info!(interaction_id, "interaction programmed again");
        }
        self.metrics
            .sidecar
            .interactions_out_of_sync
            .store(core.out_of_sync.len() as u64, Ordering::Relaxed);
    }

    /// Marks an interaction the engine refused (with an already stored intent): WARN
    /// log every time, a `PROGRAMMING_FAILED` event and a metric once per reason.
    async fn mark_failed(&self, core: &mut Core, interaction_id: &str, refused: &Refused) {
        let error = &refused.error;
        let participant = refused.participant.as_deref().unwrap_or("");
        tracing::warn!(
            interaction_id,
            participant_id = participant,
            code = ?error.code,
            reason = error.reason,
            error = %error.message,
            "the engine refused to program this interaction; it is out of sync"
        );
        let why = format!("{}: {}", error.reason, error.message);
        if core.out_of_sync.get(interaction_id) != Some(&why) {
            core.out_of_sync
                .insert(interaction_id.to_owned(), why.clone());
            self.metrics
                .sidecar
                .programming_failures
                .fetch_add(1, Ordering::Relaxed);
            let code = crate::metrics::code_name(error.code);
            let event = engine_event(
                EventKind::ProgrammingFailed,
                interaction_id,
                self.clock.now_ms(),
                &[
                    ("reason", error.reason),
                    ("code", code),
                    ("message", &why),
                    ("participant_id", participant),
                ],
            );
            self.record_events(core, &[event]).await;
        }
        self.metrics
            .sidecar
            .interactions_out_of_sync
            .store(core.out_of_sync.len() as u64, Ordering::Relaxed);
    }

    /// Stores and publishes events the sidecar records itself.
    async fn record_events(&self, core: &mut Core, events: &[Event]) {
        if let Err(e) = self.commit_side(core, events, &[], &[]).await {
            tracing::error!(error = %e, "events not recorded");
        }
    }

    /// Reconciles first if the engine may have lost state since the last pass. Only an
    /// engine that is not ours is an error (nothing may be programmed into it); any
    /// other failure leaves the mutation to meet the engine's state itself.
    async fn reconcile_if_needed(&self, core: &mut Core) -> Result<(), ApiError> {
        let epoch = self.engine.0.connection_epoch();
        if self.needs_reconcile.load(Ordering::Relaxed)
            || epoch != self.reconciled_epoch.load(Ordering::Relaxed)
        {
            match self.reconcile_locked(core).await {
                Ok(_) => {}
                Err(e) if e.reason == reason::ENGINE_NOT_OURS => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e.message, "reconcile before a mutation failed");
                }
            }
        }
        Ok(())
    }

    /// Compares the engine with the stored state and repairs every difference (module
    /// doc, Reconciliation).
    pub async fn reconcile(&self) -> Result<ReconcileReport, ApiError> {
        let mut core = self.core.lock().await;
        self.reconcile_locked(&mut core).await
    }

    async fn snapshot_of_engine(&self) -> Result<EngineSnapshot, ApiError> {
        match self.call(Request::Snapshot).await? {
            Response::Snapshot(s) => Ok(s),
            other => Err(EngineError::Internal(format!("Snapshot answered {other:?}")).into()),
        }
    }

    /// Makes sure the engine is ours before anything of it is removed: claims a fresh
    /// engine; refuses one that holds legs under another owner (or none) unless the
    /// operator asked to adopt it.
    async fn claim(&self, snapshot: &EngineSnapshot) -> Result<(), ApiError> {
        let ours = self.store.id();
        if snapshot.owner.as_deref() == Some(ours) {
            return Ok(());
        }
        if !snapshot.legs.is_empty() && !self.adopt_engine_state {
            let owner = snapshot.owner.as_deref().unwrap_or("nobody");
            return Err(ApiError::new(
                Code::Unavailable,
                reason::ENGINE_NOT_OURS,
                format!(
                    "the engine holds {} leg(s) of another control store (owner {owner}, this \
                     store is {ours}{}): refusing to touch them. Point --data-dir at the \
                     store that programmed this engine, or start with --adopt-engine-state to \
                     take the engine over and remove every leg this store does not know",
                    snapshot.legs.len(),
                    if self.store.is_new() { ", new" } else { "" }
                ),
            ));
        }
        if !snapshot.legs.is_empty() {
            tracing::warn!(
                legs = snapshot.legs.len(),
                previous_owner = snapshot.owner.as_deref().unwrap_or("nobody"),
                "adopting the engine's state (--adopt-engine-state): legs this store does \
                 not know will be removed"
            );
        }
        self.call(Request::Claim {
            owner: ours.to_owned(),
        })
        .await?;
        Ok(())
    }

    async fn reconcile_locked(&self, core: &mut Core) -> Result<ReconcileReport, ApiError> {
        let mut laps = Laps::start(self.clock.now_ms());
        // One replica at a time repairs an engine, from the latest state.
        let guard = self
            .store
            .lock("reconcile")
            .await
            .map_err(ApiError::store)?;
        laps.lap("lock", self.clock.now_ms());
        let result = async {
            self.catch_up(core).await?;
            laps.lap("catch_up", self.clock.now_ms());
            self.reconcile_unlocked(core, &mut laps).await
        }
        .await;
        self.store.unlock(guard).await;
        result
    }

    async fn reconcile_unlocked(
        &self,
        core: &mut Core,
        laps: &mut Laps,
    ) -> Result<ReconcileReport, ApiError> {
        let epoch = self.engine.0.connection_epoch();
        let snapshot = self.snapshot_of_engine().await?;
        self.claim(&snapshot).await?;
        laps.lap("snapshot", self.clock.now_ms());
        let mut report = ReconcileReport::default();
        let mut attempt = Attempt::default();
        let result = self
            .reconcile_pass(core, &snapshot, &mut report, &mut attempt, laps)
            .await;
        // Record what the engine acknowledged, even when the pass stopped early.
        let (puts, deletes) = attempt.leg_changes(core);
        self.commit_side(core, &[], &puts, &deletes)
            .await
            .map_err(ApiError::store)?;
        laps.lap("commit", self.clock.now_ms());
        result?;
        self.report_failovers(core).await;
        laps.lap("failover_events", self.clock.now_ms());
        self.recover_first_packets(core, &snapshot, &mut report)
            .await;
        laps.lap("first_packets", self.clock.now_ms());
        if report.legs_allocated + report.plans_sent + report.legs_removed > 0 {
            tracing::info!(
                legs_allocated = report.legs_allocated,
                plans_sent = report.plans_sent,
                legs_removed = report.legs_removed,
                "reconciliation pass took {laps}"
            );
        }
        self.metrics
            .sidecar
            .interactions_out_of_sync
            .store(core.out_of_sync.len() as u64, Ordering::Relaxed);
        self.reconciled_epoch.store(epoch, Ordering::Relaxed);
        self.needs_reconcile.store(false, Ordering::Relaxed);
        Ok(report)
    }

    /// The body of a reconciliation; an `Err` is UNAVAILABLE (the pass stops, the
    /// engine is gone again), every other refusal is isolated to its interaction.
    async fn reconcile_pass(
        &self,
        core: &mut Core,
        snapshot: &EngineSnapshot,
        report: &mut ReconcileReport,
        attempt: &mut Attempt,
        laps: &mut Laps,
    ) -> Result<(), ApiError> {
        let live = core.live_interactions();
        let live_set: BTreeSet<&String> = live.iter().collect();
        let mut desired: BTreeSet<LegKey> = BTreeSet::new();
        for id in &live {
            if let Some(rel) = core.rules.hear_relation(id) {
                desired.extend(rel.legs.into_iter().map(|p| (id.clone(), p)));
            }
        }
        // Strays (the engine is ours: claimed above) and the legs we keep. With a
        // shared store, only strays already seen in the previous pass go (field doc of
        // `strays_seen`).
        let patient = self.store.is_shared();
        let (seen_legs, seen_sessions) = std::mem::take(&mut core.strays_seen);
        let mut engine_legs: BTreeMap<LegKey, &LegInfo> = BTreeMap::new();
        for info in &snapshot.legs {
            let key = (info.session.clone(), info.leg_key.clone());
            if desired.contains(&key) && !engine_legs.contains_key(&key) {
                engine_legs.insert(key, info);
            } else if patient && !seen_legs.contains(&info.leg) {
                core.strays_seen.0.insert(info.leg);
            } else {
                self.call(Request::RemoveLeg { leg: info.leg }).await?;
                report.legs_removed += 1;
            }
        }
        let engine_sessions: BTreeSet<&String> = snapshot
            .legs
            .iter()
            .map(|l| &l.session)
            .chain(snapshot.plans.iter().map(|p| &p.session))
            .collect();
        for session in engine_sessions {
            if !live_set.contains(session) {
                if patient && !seen_sessions.contains(session) {
                    core.strays_seen.1.insert(session.clone());
                    continue;
                }
                self.call(Request::RemoveSession {
                    session: session.clone(),
                })
                .await?;
                report.sessions_removed += 1;
            }
        }
        // Records follow the engine where it has the leg; records of participants that
        // left (or of ended calls) go.
        let records: Vec<LegKey> = core.legs.keys().cloned().collect();
        for key in records {
            if let Some(info) = engine_legs.get(&key) {
                let adopted = LegRecord {
                    leg: info.leg,
                    local: info.local,
                    local_rtcp: info.local_rtcp,
                    configured: info.media.clone(),
                    node: self.node_of(info.leg),
                };
                if core.legs.get(&key) != Some(&adopted) {
                    attempt.touch(core, &key);
                    core.legs.insert(key, adopted);
                }
            } else if !desired.contains(&key) {
                attempt.touch(core, &key);
                core.legs.remove(&key);
            }
        }
        // Legs the engine has that the store lost (accepted while the engine was
        // unavailable, acknowledged, not yet persisted): adopt them.
        for (key, info) in &engine_legs {
            if !core.legs.contains_key(key) {
                attempt.touch(core, key);
                core.legs.insert(
                    key.clone(),
                    LegRecord {
                        leg: info.leg,
                        local: info.local,
                        local_rtcp: info.local_rtcp,
                        configured: info.media.clone(),
                        node: self.node_of(info.leg),
                    },
                );
            }
        }

        laps.lap("strays", self.clock.now_ms());
        // Phase A: every recorded leg the engine lacks, on its recorded port, before
        // any fresh allocation (so no recorded port is handed to another leg).
        let mut failed: BTreeMap<String, Refused> = BTreeMap::new();
        let missing: Vec<LegKey> = core
            .legs
            .keys()
            .filter(|k| desired.contains(*k) && !engine_legs.contains_key(*k))
            .cloned()
            .collect();
        // The interactions with legs to re-create will be programmed: their locks are
        // taken meanwhile.
        let mut early = Locking::default();
        if patient {
            for id in missing.iter().map(|k| &k.0).collect::<BTreeSet<_>>() {
                early.start(&self.store, id);
            }
        }
        let lost = self
            .allocate_again(core, missing, true, report, &mut failed, attempt)
            .await;
        let lost = match lost {
            Ok(lost) => lost,
            Err(e) => {
                release(&self.store, early).await;
                return Err(e);
            }
        };
        laps.lap("phase_a", self.clock.now_ms());
        // Phase B: legs whose port is truly gone get a new one (the old record is
        // replaced only now that its replacement exists) and an event naming them.
        let lost = lost
            .into_iter()
            .filter(|k| !failed.contains_key(&k.0))
            .collect();
        if let Err(e) = self
            .allocate_again(core, lost, false, report, &mut failed, attempt)
            .await
        {
            release(&self.store, early).await;
            return Err(e);
        }
        laps.lap("phase_b", self.clock.now_ms());
        // Phase C: every live interaction on its own (fresh legs, configurations,
        // plans), many at once; a refusal marks that one and the pass goes on.
        let plans: BTreeMap<&str, &SessionPlan> = snapshot
            .plans
            .iter()
            .map(|p| (p.session.as_str(), p))
            .collect();
        let locked = if patient {
            self.lock_for_programming(core, &live, &failed, &plans, early)
                .await?
        } else {
            BTreeMap::new()
        };
        laps.lap("locks", self.clock.now_ms());
        let verdicts = self
            .program_all(core, &plans, &live, locked, &failed, attempt)
            .await;
        for (id, verdict) in verdicts {
            match verdict {
                Ok(sent) => {
                    report.plans_sent += usize::from(sent);
                    self.mark_in_sync(core, &id);
                }
                Err(r) if r.unavailable() => return Err(r.error),
                Err(r) => {
                    failed.insert(id, r);
                }
            }
        }
        laps.lap("phase_c", self.clock.now_ms());
        report.failed = failed.len();
        for (id, refused) in &failed {
            self.mark_failed(core, id, refused).await;
        }
        laps.lap("failed", self.clock.now_ms());
        // Out-of-sync marks of interactions that ended or vanished.
        core.out_of_sync.retain(|id, _| live_set.contains(id));
        Ok(())
    }

    /// Re-creates the legs `keys` the engine lacks (reconciliation phases A and B),
    /// many interactions at once and each interaction's legs in order; the results are
    /// applied in key order. Phase A (`on_recorded_port`) asks for each leg's recorded
    /// port and returns the legs whose port is gone; phase B gives those a new port and
    /// records `LEG_PORT_LOST`. A refusal marks its interaction `failed`; UNAVAILABLE
    /// ends the pass (after recording what the engine did acknowledge).
    async fn allocate_again(
        &self,
        core: &mut Core,
        keys: Vec<LegKey>,
        on_recorded_port: bool,
        report: &mut ReconcileReport,
        failed: &mut BTreeMap<String, Refused>,
        attempt: &mut Attempt,
    ) -> Result<Vec<LegKey>, ApiError> {
        let mut per_interaction: BTreeMap<String, Vec<(LegKey, MediaSpec, Option<u16>)>> =
            BTreeMap::new();
        let mut old_local = BTreeMap::new();
        for key in keys {
            let (Some(record), Some(media)) = (core.legs.get(&key), core.media.get(&key)) else {
                continue;
            };
            let port = on_recorded_port.then(|| record.local.port());
            old_local.insert(key.clone(), record.local);
            per_interaction
                .entry(key.0.clone())
                .or_default()
                .push((key, media.clone(), port));
        }
        let programmer = self.programmer();
        let mut groups: Vec<_> = per_interaction.into_values().collect();
        // One interaction first: the cluster router reads what it keeps about a failed
        // node (its last stream report) on the first leg re-created from it and caches
        // it, so the others do not all read and decode it at once.
        let rest = groups.split_off(groups.len().min(1));
        let mut results = run_bounded(groups, |legs| programmer.clone().allocate_all(legs)).await;
        results.extend(run_bounded(rest, |legs| programmer.clone().allocate_all(legs)).await);
        let mut lost = Vec::new();
        let mut events = Vec::new();
        let mut unavailable = None;
        for (key, result) in results.into_iter().flatten().flatten() {
            match result {
                Ok(info) => {
                    attempt.touch(core, &key);
                    core.legs
                        .insert(key.clone(), self.programmer().record_of(&info));
                    report.legs_allocated += 1;
                    if !on_recorded_port && let Some(old) = old_local.get(&key) {
                        events.push(self.port_lost(&key, *old, info.local, report));
                    }
                }
                Err(e) if e.code == Code::Unavailable => {
                    unavailable.get_or_insert(e);
                }
                Err(e) if on_recorded_port && e.field.as_deref() == Some("requested_port") => {
                    lost.push(key);
                }
                Err(error) => {
                    failed.entry(key.0.clone()).or_insert(Refused {
                        error,
                        participant: Some(key.1),
                    });
                }
            }
        }
        if !events.is_empty() {
            self.record_events(core, &events).await;
        }
        match unavailable {
            Some(e) => {
                self.needs_reconcile.store(true, Ordering::Relaxed);
                Err(e)
            }
            None => Ok(lost),
        }
    }

    /// Counts and logs a leg re-created on a new port; returns its `LEG_PORT_LOST`.
    fn port_lost(
        &self,
        key: &LegKey,
        old: std::net::SocketAddr,
        new: std::net::SocketAddr,
        report: &mut ReconcileReport,
    ) -> Event {
        report.ports_lost += 1;
        self.metrics
            .sidecar
            .legs_port_lost
            .fetch_add(1, Ordering::Relaxed);
        let (old_local, new_local) = (old.to_string(), new.to_string());
        tracing::warn!(
            interaction_id = %key.0,
            participant_id = %key.1,
            %old_local,
            %new_local,
            "a leg's recorded port is gone; it has a new local port"
        );
        engine_event(
            EventKind::LegPortLost,
            &key.0,
            self.clock.now_ms(),
            &[
                ("participant_id", &key.1),
                ("old_local", &old_local),
                ("new_local", &new_local),
            ],
        )
    }

    /// Reconciliation phase C: programs every live interaction that differs (with a
    /// shared store, only those in `locked`, whose locks are released here), many at
    /// once; applies every result in `live` order (the engine has what it
    /// acknowledged, even past an UNAVAILABLE) and returns each interaction's verdict
    /// in that order.
    async fn program_all(
        &self,
        core: &mut Core,
        plans: &BTreeMap<&str, &SessionPlan>,
        live: &[String],
        mut locked: BTreeMap<String, Option<crate::store::etcd::LockGuard>>,
        failed: &BTreeMap<String, Refused>,
        attempt: &mut Attempt,
    ) -> Vec<(String, Result<bool, Refused>)> {
        let patient = self.store.is_shared();
        let mut ids = Vec::new();
        let mut guards = Vec::new();
        let mut works = Vec::new();
        for id in live {
            if failed.contains_key(id) {
                continue;
            }
            let current = plans.get(id.as_str()).copied();
            let guard = match locked.remove(id) {
                Some(guard) => guard,
                // In sync, or busy on another replica.
                None if patient => continue,
                None if !Self::needs_programming(core, id, current) => {
                    self.mark_in_sync(core, id);
                    continue;
                }
                None => None,
            };
            works.push(Self::work_for(core, id, current));
            ids.push(id.clone());
            guards.push(guard);
        }
        let programmer = self.programmer();
        let results = run_bounded(works, |work| programmer.clone().program(work)).await;
        let mut verdicts = Vec::with_capacity(ids.len());
        for ((id, done), guard) in ids.into_iter().zip(results).zip(guards) {
            let verdict = match done {
                Some(done) => self.apply_programmed(core, &id, done, attempt),
                None => Err(Refused {
                    error: EngineError::Unavailable("programming task cancelled".into()).into(),
                    participant: None,
                }),
            };
            self.store.unlock_in_background(guard);
            verdicts.push((id, verdict));
        }
        for guard in locked.into_values() {
            self.store.unlock_in_background(guard);
        }
        verdicts
    }

    /// With a shared store another replica may be programming an interaction right
    /// now: the reconciler touches one only if it differs, and then under its lock.
    /// The locks of a pass are taken all at once (a failed node's hundreds of calls
    /// cost one etcd round trip, not one each), then one catch-up covers them all.
    /// `early` holds the locks already being taken (those of interactions with legs to
    /// re-create, taken while phase A runs); the locks of interactions that need
    /// nothing after all, or failed, are released. Interactions in sync are marked so;
    /// busy ones are left for the next pass.
    async fn lock_for_programming(
        &self,
        core: &mut Core,
        live: &[String],
        failed: &BTreeMap<String, Refused>,
        plans: &BTreeMap<&str, &SessionPlan>,
        mut early: Locking,
    ) -> Result<BTreeMap<String, Option<crate::store::etcd::LockGuard>>, ApiError> {
        let mut wanted = BTreeSet::new();
        for id in live {
            if failed.contains_key(id) {
                continue;
            }
            if !Self::needs_programming(core, id, plans.get(id.as_str()).copied()) {
                self.mark_in_sync(core, id);
                continue;
            }
            if !early.ids.contains(id) {
                early.start(&self.store, id);
            }
            wanted.insert(id.clone());
        }
        let mut locked = BTreeMap::new();
        while let Some(joined) = early.tasks.join_next().await {
            match joined {
                Ok((id, Ok(guard))) if wanted.contains(&id) => {
                    locked.insert(id, guard);
                }
                Ok((_, Ok(guard))) => self.store.unlock_in_background(guard),
                Ok((id, Err(e))) => {
                    tracing::debug!(interaction_id = %id, error = %e, "busy; next pass");
                }
                Err(e) => tracing::warn!(error = %e, "lock task failed"),
            }
        }
        if !locked.is_empty()
            && let Err(e) = self.catch_up(core).await
        {
            for guard in locked.into_values() {
                self.store.unlock_in_background(guard);
            }
            return Err(e);
        }
        Ok(locked)
    }

    /// Applies the `FirstPacket` the engine saw while no sidecar listened: a ringing
    /// supervisor's leg that has received packets is connected (SPEC section 2).
    async fn recover_first_packets(
        &self,
        core: &mut Core,
        snapshot: &EngineSnapshot,
        report: &mut ReconcileReport,
    ) {
        let mut answered = Vec::new();
        for i in core.rules.interactions().filter(|i| !i.is_ended()) {
            for p in &i.participants {
                if p.state != ParticipantState::Connecting {
                    continue;
                }
                let Some(record) = core.leg(&i.interaction_id, &p.participant_id) else {
                    continue;
                };
                if snapshot
                    .activity_of(record.leg)
                    .is_some_and(|a| a.first_packet_seen)
                {
                    answered.push((i.interaction_id.clone(), p.participant_id.clone()));
                }
            }
        }
        for (interaction_id, participant_id) in answered {
            let command = Command::MediaConnected {
                interaction_id: interaction_id.clone(),
                participant_id: participant_id.clone(),
            };
            let applied = match self.lock_scope(core, &command).await {
                Ok(guard) => {
                    let r = self.mutate_locked(core, command, None, Vec::new()).await;
                    self.store.unlock(guard).await;
                    r
                }
                Err(e) => Err(e),
            };
            match applied {
                Ok(_) => {
                    report.events_recovered += 1;
                    self.metrics
                        .sidecar
                        .events_recovered
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        interaction_id,
                        participant_id,
                        "first packet recovered from the engine's state"
                    );
                }
                Err(e) => tracing::warn!(
                    interaction_id,
                    participant_id,
                    error = %e.message,
                    "recovered first packet not applied"
                ),
            }
        }
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

/// Interaction locks being taken by a reconciliation pass, one task each.
#[derive(Default)]
struct Locking {
    ids: BTreeSet<String>,
    tasks: tokio::task::JoinSet<(
        String,
        Result<Option<crate::store::etcd::LockGuard>, StoreError>,
    )>,
}

impl Locking {
    /// Starts taking the lock of `id`.
    fn start(&mut self, store: &Arc<Store>, id: &str) {
        let (store, id) = (Arc::clone(store), id.to_owned());
        self.ids.insert(id.clone());
        self.tasks.spawn(async move {
            let guard = store.lock(&id).await;
            (id, guard)
        });
    }
}

/// Waits for the locks being taken and releases them (a pass that stopped early).
async fn release(store: &Store, mut locking: Locking) {
    while let Some(joined) = locking.tasks.join_next().await {
        if let Ok((_, Ok(guard))) = joined {
            store.unlock_in_background(guard);
        }
    }
}

/// What [`Shared::undo`] needs besides the attempt.
struct Undo {
    checkpoint: Checkpoint,
    media_before: Vec<(LegKey, Option<MediaSpec>)>,
    scope: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_leg(participant: &str, field: &str) -> NewLeg {
        NewLeg {
            entry: MediaEntry {
                interaction_id: "i".into(),
                participant_id: participant.into(),
                media: MediaSpec {
                    remote: None,
                    codec: earshot_engine_api::Codec::Pcmu,
                    payload_type: 0,
                    ptime_ms: 20,
                    telephone_event_pt: None,
                    rtcp_mux: true,
                    auto_answer: true,
                    max_ptime_ms: None,
                    opus: Default::default(),
                    srtp: None,
                    strict_source: None,
                    quiet_when_unheard: false,
                },
            },
            field: field.into(),
        }
    }

    #[test]
    fn an_engine_refusal_of_a_new_leg_names_the_request_field() {
        let legs = [
            new_leg("c", "participants[0].media"),
            new_leg("a", "participants[1].media"),
        ];
        let refused = |field: &str, participant: Option<&str>| Refused {
            error: EngineError::InvalidArgument {
                field: field.into(),
                message: "no".into(),
            }
            .into(),
            participant: participant.map(str::to_owned),
        };
        let named = |r| name_field(r, &legs).field;
        assert_eq!(
            named(refused("family", Some("a"))).as_deref(),
            Some("participants[1].media.remote")
        );
        assert_eq!(
            named(refused("payload_type", Some("c"))).as_deref(),
            Some("participants[0].media.payload_type")
        );
        assert_eq!(
            named(refused("family", Some("existing"))).as_deref(),
            Some("family"),
            "a leg the request did not introduce keeps the engine's name"
        );
        assert_eq!(named(refused("family", None)).as_deref(), Some("family"));
    }
}
