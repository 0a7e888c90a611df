//! Cluster mode (SPEC section 7): engine nodes registered in etcd under leases, and
//! [`ClusterEngine`], the router that makes them one engine to the core.
//!
//! ## Keys (beside the store's, under the same prefix)
//! - `nodes/{node_id}`: a [`Registered`] node (its [`NodeInfo`] and a small number),
//!   attached to the node's lease: it disappears when the node stops renewing.
//! - `nodenum/{n}`: which node holds number `n` (1..=255), under the same lease. The
//!   number goes into the top bits of every [`LegId`] the router hands out, so leg ids
//!   of different nodes never collide in the core's records and plans.
//! - `drain/{node_id}`: set by `DrainNode`: no new interactions go there.
//! - `placement/{interaction}`: the node an interaction lives on, written once by
//!   whichever replica placed it first (a transaction that compares its absence), so
//!   every replica routes it to the same node; rewritten (comparing the old value) when
//!   that node has failed.
//!
//! ## Routing
//! A whole interaction lives on one node (its mix is local): `AllocateLeg`,
//! `SetSessionPlan` and `RemoveSession` go to the session's node, chosen on its first
//! leg by [`crate::placement::place`] over live, non-draining nodes with headroom;
//! `ConfigureLeg` and `RemoveLeg` go to the node whose number the leg id carries;
//! `Snapshot`, `Claim` and `Stats` go to every live node and are merged. Events of every
//! node arrive on one stream.
//!
//! ## Node failure
//! When a node's key disappears (lease expired: the node died or lost etcd) the router
//! forgets its connection, notes when the failure was seen, and changes its
//! [`EngineApi::connection_epoch`], so the reconciler runs at once: every leg of the
//! failed node is missing from the merged snapshot and is re-created, on its recorded
//! port, on the node placement now picks among the survivors (each interaction on its
//! own, so they spread), and the core records `NODE_FAILED` and `MEDIA_RESTORED`.
//!
//! The rest of a move happens around the router (docs/cluster.md, "Node failover"):
//! the node agents (`earshot-node`) detect the failure, fence or mute the failed node
//! and hand its virtual addresses to survivors; the router places each moved
//! interaction where its address went, and re-creates its legs with the failed node's
//! last stream report (same SSRC, sequence and timestamp moving on). Placement writes
//! share transactions ([`earshot_etcd::WriteBatcher`]), so a failed node's hundreds of
//! interactions move in a few etcd commits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use earshot_engine_api::{
    BoxFuture, EngineApi, EngineError, EngineEvent, EngineSnapshot, EngineStats, LegId, LegInfo,
    LegResume, Request, Response, SessionPlan, StreamBase,
};
use earshot_etcd::{Etcd, Expect, Write, WriteBatcher, WriteOutcome, absent, delete, put};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::placement::{self, NodeInfo};

/// A node as registered: what it says about itself and its number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    /// The node.
    pub info: NodeInfo,
    /// Its number, 1..=255, unique among live nodes.
    pub number: u8,
    /// The lease it is registered under: its stream reports are kept per lease
    /// ([`streams_key`]), so that a node that fenced itself and registered again
    /// cannot overwrite the report its survivors continue from.
    #[serde(default)]
    pub lease: i64,
}

/// Where a node registered under `lease` reports its streams.
pub fn streams_key(prefix: &str, node_id: &str, lease: i64) -> String {
    format!("{prefix}streams/{node_id}/{lease:x}")
}

/// Why registering failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd failed.
    #[error("etcd: {0}")]
    Etcd(#[from] earshot_etcd::EtcdError),
    /// Every node number is taken.
    #[error("255 nodes are registered: no node number left")]
    Full,
    /// A record does not decode.
    #[error("encoding: {0}")]
    Encoding(#[from] serde_json::Error),
}

/// A node's registration, kept alive by its lease.
#[derive(Debug)]
pub struct Registration {
    /// The lease; revoke it to leave at once.
    pub lease: i64,
    /// The node's number.
    pub number: u8,
    /// Renewal in the background; `deadline` turns `None` when the lease is lost.
    pub keep_alive: earshot_etcd::KeepAlive,
}

/// Registers `info` under `prefix` with a lease of `ttl_s` seconds: takes the lowest
/// free node number, then writes the node's key (both under the lease).
pub async fn register(
    etcd: &Etcd,
    prefix: &str,
    info: &NodeInfo,
    ttl_s: i64,
) -> Result<Registration, ClusterError> {
    let lease = etcd.grant(ttl_s).await?;
    let mut number = None;
    for n in 1..=255u8 {
        let key = format!("{prefix}nodenum/{n}");
        let r = etcd
            .txn(
                vec![absent(key.clone())],
                vec![put(key, info.node_id.clone(), lease)],
                vec![],
            )
            .await?;
        if r.succeeded {
            number = Some(n);
            break;
        }
    }
    let number = number.ok_or(ClusterError::Full)?;
    let registered = Registered {
        info: info.clone(),
        number,
        lease,
    };
    update(etcd, prefix, lease, &registered).await?;
    Ok(Registration {
        lease,
        number,
        keep_alive: etcd.keep_alive(lease, ttl_s),
    })
}

/// Rewrites a node's registration (its load) under its lease.
pub async fn update(
    etcd: &Etcd,
    prefix: &str,
    lease: i64,
    registered: &Registered,
) -> Result<(), ClusterError> {
    etcd.txn(
        vec![],
        vec![put(
            format!("{prefix}nodes/{}", registered.info.node_id),
            serde_json::to_vec(registered)?,
            lease,
        )],
        vec![],
    )
    .await?;
    Ok(())
}

/// Sets or clears a node's drain mark (`DrainNode`).
pub async fn set_draining(
    etcd: &Etcd,
    prefix: &str,
    node_id: &str,
    draining: bool,
) -> Result<(), ClusterError> {
    let key = format!("{prefix}drain/{node_id}");
    let op = if draining {
        put(key, "1", 0)
    } else {
        delete(key, Vec::new())
    };
    etcd.txn(vec![], vec![op], vec![]).await?;
    Ok(())
}

/// Connects to a node's engine (a Unix socket client in production, anything in
/// tests).
pub type Connector = Box<dyn Fn(&NodeInfo) -> Arc<dyn EngineApi> + Send + Sync>;

struct Node {
    registered: Registered,
    client: Arc<dyn EngineApi>,
    events: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.events.abort();
    }
}

/// A node seen failing, and the interactions re-placed away from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    /// The failed node.
    pub node_id: String,
    /// The interaction moved.
    pub interaction_id: String,
    /// The node it moved to.
    pub to_node_id: String,
    /// When the failure was seen, ms since the Unix epoch.
    pub detected_ms: u64,
}

/// Where an interaction lives: its node and the address its legs bind (one of the
/// node's addresses, or one it took over). Stored in `placement/{interaction}` as
/// `node` or `node@address`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placement {
    node: String,
    address: Option<IpAddr>,
}

impl Placement {
    fn parse(value: &str) -> Placement {
        match value.rsplit_once('@') {
            Some((node, address)) if address.parse::<IpAddr>().is_ok() => Placement {
                node: node.to_owned(),
                address: address.parse().ok(),
            },
            _ => Placement {
                node: value.to_owned(),
                address: None,
            },
        }
    }

    fn value(&self) -> String {
        match self.address {
            Some(a) => format!("{}@{a}", self.node),
            None => self.node.clone(),
        }
    }
}

/// One leg's outbound stream as its node last reported it (`streams/{node}/{lease}`,
/// written by `earshot-node` every report interval under a lease of its own that
/// outlives the node's by a minute: survivors read it after the node is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReport {
    /// The stream's next packet as of `at_ms`.
    pub stream: StreamBase,
    /// RTP clock of the leg's codec, Hz.
    pub clock_rate_hz: u32,
    /// Packet time, ms.
    pub ptime_ms: u32,
}

/// Everything one node reported: per (session, leg key), and when it read it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamReports {
    /// Wall time of the engine snapshot the report comes from, ms since the epoch.
    pub at_ms: u64,
    /// `(session, leg_key, report)`.
    pub legs: Vec<(String, String, StreamReport)>,
}

impl StreamReport {
    /// Where the stream stands `elapsed_ms` after the report: the timestamp moves on
    /// with wall time; the index moves past every packet the node can have sent since
    /// (at most two per packet time, forwarded bursts and telephone events included,
    /// plus a margin), so an SRTP key's keystream is never used twice.
    pub fn extrapolated(&self, elapsed_ms: u64) -> StreamBase {
        let ptime = u64::from(self.ptime_ms.max(1));
        let samples = elapsed_ms.saturating_mul(u64::from(self.clock_rate_hz)) / 1000;
        StreamBase {
            ssrc: self.stream.ssrc,
            index: self.stream.index + 2 * elapsed_ms / ptime + STREAM_INDEX_MARGIN,
            timestamp: self.stream.timestamp.wrapping_add(samples as u32),
        }
    }
}

/// How long placement waits for a failed node's address to be taken over.
const TAKEOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Packets added to an extrapolated index beyond two per packet time.
const STREAM_INDEX_MARGIN: u64 = 64;

/// A failed node's stream reports, by session and leg key: every re-created leg looks
/// its stream up (a failed node's thousands of legs, each found at once).
#[derive(Debug, Default)]
struct ReportIndex {
    at_ms: u64,
    legs: HashMap<String, HashMap<String, StreamReport>>,
}

impl From<StreamReports> for ReportIndex {
    fn from(r: StreamReports) -> ReportIndex {
        let mut legs: HashMap<String, HashMap<String, StreamReport>> = HashMap::new();
        for (session, leg_key, report) in r.legs {
            legs.entry(session).or_default().insert(leg_key, report);
        }
        ReportIndex {
            at_ms: r.at_ms,
            legs,
        }
    }
}

#[derive(Default)]
struct RouterState {
    nodes: BTreeMap<String, Node>,
    drained: BTreeSet<String>,
    placements: BTreeMap<String, Placement>,
    /// Which node holds each address (`addresses/held/{address}` claims, under the
    /// holders' leases).
    holders: BTreeMap<IpAddr, String>,
    /// Interactions moved off a failed node whose legs are not all re-created yet:
    /// the failed node, for its stream reports.
    moved_from: BTreeMap<String, String>,
    /// Stream reports of failed nodes (by node and lease), read once each.
    reports: BTreeMap<(String, i64), Arc<ReportIndex>>,
    /// Failed nodes (by id) and when their failure was seen.
    failed: BTreeMap<String, u64>,
    /// The lease each failed node was registered under (its stream reports' key).
    failed_leases: BTreeMap<String, i64>,
    /// Interactions moved off failed nodes, not yet reported.
    moves: Vec<Failover>,
    /// The placements failed nodes held, as this router last knew them: the compare
    /// value that moves each one with a single transaction (no read first). A stale
    /// one only makes that transaction fail and return the current value.
    orphaned: BTreeMap<String, Placement>,
}

impl RouterState {
    /// The live nodes as placement sees them (drain marks applied).
    fn node_infos(&self) -> Vec<NodeInfo> {
        self.nodes
            .values()
            .map(|n| {
                let mut info = n.registered.info.clone();
                info.draining |= self.drained.contains(&info.node_id);
                info
            })
            .collect()
    }
}

/// A session's node as the router reaches it.
struct Routed {
    number: u8,
    client: Arc<dyn EngineApi>,
    /// The address the session's legs bind, if it has one.
    address: Option<IpAddr>,
}

/// The router: the core's one engine, made of every live node (module doc).
pub struct ClusterEngine {
    etcd: Etcd,
    /// Placement writes, many per transaction (a failed node's interactions move in a
    /// few commits, not one each).
    placements: WriteBatcher,
    prefix: String,
    connect: Connector,
    state: Mutex<RouterState>,
    generation: AtomicU64,
    /// Poked with every `generation` change: wakes the reconciler at once.
    changed: tokio::sync::Notify,
    clock: Arc<dyn crate::Clock>,
    events_tx: mpsc::UnboundedSender<EngineEvent>,
    events_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<EngineEvent>>,
}

impl std::fmt::Debug for ClusterEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterEngine")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The leg id the core sees: the node's number in the top 8 bits of the shard field.
fn global(number: u8, leg: LegId) -> LegId {
    LegId::new(
        (u16::from(number) << 8) | (leg.shard() & 0xff),
        leg.slot(),
        leg.generation(),
    )
}

/// The node's own leg id and the node number.
fn local(leg: LegId) -> (u8, LegId) {
    (
        (leg.shard() >> 8) as u8,
        LegId::new(leg.shard() & 0xff, leg.slot(), leg.generation()),
    )
}

fn lock(state: &Mutex<RouterState>) -> std::sync::MutexGuard<'_, RouterState> {
    // Plain map updates: a panic cannot leave them half done.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn unavailable(what: impl Into<String>) -> EngineError {
    EngineError::Unavailable(what.into())
}

impl ClusterEngine {
    /// Starts following the nodes registered under `prefix` and connects to each with
    /// `connect`.
    pub async fn start(
        etcd: Etcd,
        prefix: &str,
        connect: Connector,
        clock: Arc<dyn crate::Clock>,
    ) -> Result<Arc<ClusterEngine>, ClusterError> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let engine = Arc::new(ClusterEngine {
            placements: WriteBatcher::start(etcd.clone()),
            etcd,
            prefix: prefix.to_owned(),
            connect,
            state: Mutex::new(RouterState::default()),
            generation: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
            clock,
            events_tx,
            events_rx: tokio::sync::Mutex::new(events_rx),
        });
        let revision = engine.load().await?;
        tokio::spawn(Arc::clone(&engine).follow(revision + 1));
        Ok(engine)
    }

    /// Reads every node and drain mark; returns the revision read at.
    async fn load(&self) -> Result<i64, ClusterError> {
        let nodes = self
            .etcd
            .range_prefix(format!("{}nodes/", self.prefix).as_bytes(), 0)
            .await?;
        let drained = self
            .etcd
            .range_prefix(format!("{}drain/", self.prefix).as_bytes(), nodes.revision)
            .await?;
        for kv in &nodes.kvs {
            let r: Registered = serde_json::from_slice(&kv.value)?;
            self.node_up(r);
        }
        let held = self
            .etcd
            .range_prefix(
                format!("{}addresses/held/", self.prefix).as_bytes(),
                nodes.revision,
            )
            .await?;
        let mut st = lock(&self.state);
        for kv in &held.kvs {
            if let Some(address) = held_address(&kv.key) {
                st.holders
                    .insert(address, String::from_utf8_lossy(&kv.value).into_owned());
            }
        }
        for kv in &drained.kvs {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            if let Some(id) = key.rsplit('/').next() {
                st.drained.insert(id.to_owned());
            }
        }
        Ok(nodes.revision)
    }

    /// Follows registrations and drain marks.
    async fn follow(self: Arc<Self>, from: i64) {
        // One watch over both prefixes would need a common prefix; two are simpler.
        let mut nodes = self.etcd.watch(
            format!("{}nodes/", self.prefix).as_bytes(),
            from,
            std::time::Duration::from_secs(3600),
        );
        let mut drains = self.etcd.watch(
            format!("{}drain/", self.prefix).as_bytes(),
            from,
            std::time::Duration::from_secs(3600),
        );
        let mut held = self.etcd.watch(
            format!("{}addresses/held/", self.prefix).as_bytes(),
            from,
            std::time::Duration::from_secs(3600),
        );
        loop {
            tokio::select! {
                batch = nodes.recv() => {
                    let Some(Ok(batch)) = batch else {
                        tracing::error!("node watch ended");
                        return;
                    };
                    for change in batch.changes {
                        let key = String::from_utf8_lossy(&change.kv.key).into_owned();
                        let id = key.rsplit('/').next().unwrap_or_default().to_owned();
                        if change.deleted {
                            self.node_down(&id);
                        } else if let Ok(r) = serde_json::from_slice::<Registered>(&change.kv.value) {
                            self.node_up(r);
                        }
                    }
                }
                batch = held.recv() => {
                    let Some(Ok(batch)) = batch else {
                        tracing::error!("address watch ended");
                        return;
                    };
                    let mut st = lock(&self.state);
                    for change in batch.changes {
                        let Some(address) = held_address(&change.kv.key) else { continue };
                        if change.deleted {
                            st.holders.remove(&address);
                        } else {
                            let node = String::from_utf8_lossy(&change.kv.value).into_owned();
                            tracing::info!(%address, node_id = %node, "address held");
                            st.holders.insert(address, node);
                        }
                    }
                    // A moved interaction may have been waiting for its address.
                    self.bump();
                }
                batch = drains.recv() => {
                    let Some(Ok(batch)) = batch else {
                        tracing::error!("drain watch ended");
                        return;
                    };
                    let mut st = lock(&self.state);
                    for change in batch.changes {
                        let key = String::from_utf8_lossy(&change.kv.key).into_owned();
                        let id = key.rsplit('/').next().unwrap_or_default().to_owned();
                        if change.deleted {
                            st.drained.remove(&id);
                        } else {
                            st.drained.insert(id);
                        }
                    }
                }
            }
        }
    }

    fn node_up(&self, registered: Registered) {
        let mut st = lock(&self.state);
        let id = registered.info.node_id.clone();
        if let Some(node) = st.nodes.get_mut(&id)
            && node.registered.number == registered.number
            && node.registered.info.engine == registered.info.engine
        {
            // A load report: same node, same engine.
            node.registered = registered;
            return;
        }
        let client = (self.connect)(&registered.info);
        let events = {
            let client = Arc::clone(&client);
            let tx = self.events_tx.clone();
            let number = registered.number;
            tokio::spawn(async move {
                while let Some(e) = client.next_event().await {
                    if tx.send(translate_event(number, e)).is_err() {
                        return;
                    }
                }
            })
        };
        tracing::info!(node_id = %id, number = registered.number, "engine node joined");
        st.failed.remove(&id);
        st.nodes.insert(
            id,
            Node {
                registered,
                client,
                events,
            },
        );
        self.bump();
    }

    /// A node joined or left, or an address moved: the epoch changes and the
    /// reconciler wakes (a stored permit if it is busy: it runs again right after).
    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    fn node_down(&self, node_id: &str) {
        let mut st = lock(&self.state);
        if let Some(node) = st.nodes.remove(node_id) {
            st.failed_leases
                .insert(node_id.to_owned(), node.registered.lease);
            tracing::warn!(
                node_id,
                "engine node lost its lease: its calls move to survivors"
            );
            st.failed.insert(node_id.to_owned(), self.clock.now_ms());
            let gone: Vec<String> = st
                .placements
                .iter()
                .filter(|(_, p)| p.node == node_id)
                .map(|(session, _)| session.clone())
                .collect();
            for session in gone {
                if let Some(p) = st.placements.remove(&session) {
                    st.orphaned.insert(session, p);
                }
            }
            self.bump();
        }
    }

    /// The live nodes as placement sees them (drain marks applied).
    pub fn nodes(&self) -> Vec<NodeInfo> {
        lock(&self.state).node_infos()
    }

    /// The node that serves a leg the core knows by its (global) id.
    pub fn node_of(&self, leg: LegId) -> Option<String> {
        let (number, _) = local(leg);
        let st = lock(&self.state);
        st.nodes
            .values()
            .find(|n| n.registered.number == number)
            .map(|n| n.registered.info.node_id.clone())
    }

    /// Interactions moved off failed nodes since the last call.
    pub fn take_moves(&self) -> Vec<Failover> {
        std::mem::take(&mut lock(&self.state).moves)
    }

    fn client_by_number(&self, number: u8) -> Option<Arc<dyn EngineApi>> {
        let st = lock(&self.state);
        st.nodes
            .values()
            .find(|n| n.registered.number == number)
            .map(|n| Arc::clone(&n.client))
    }

    fn live(&self, node_id: &str) -> Option<(u8, Arc<dyn EngineApi>)> {
        let st = lock(&self.state);
        st.nodes
            .get(node_id)
            .map(|n| (n.registered.number, Arc::clone(&n.client)))
    }

    /// The node of `session` and the address its legs bind: its placement if that
    /// node lives; with `place`, a new placement (first leg, or its node failed),
    /// agreed with every replica in etcd. An interaction whose node failed follows its
    /// address to the survivor that took the address over (module doc); where no node
    /// claims addresses at all, placement picks a survivor.
    async fn node_for(&self, session: &str, place: bool) -> Result<Option<Routed>, EngineError> {
        let cached = lock(&self.state).placements.get(session).cloned();
        if let Some(p) = cached
            && let Some((number, client)) = self.live(&p.node)
        {
            return Ok(Some(Routed {
                number,
                client,
                address: p.address,
            }));
        }
        let key = format!("{}placement/{session}", self.prefix);
        let etcd_err = |e: earshot_etcd::EtcdError| unavailable(format!("etcd: {e}"));
        // An interaction of a failed node is moved with a put that compares the
        // placement it had (no read first), batched with the others' (a failed node's
        // hundreds of calls then cost a few etcd commits); any other is read first.
        // Not if its node lives again (it re-registered): another replica may have
        // moved the interaction meanwhile, so etcd is asked.
        let orphaned = lock(&self.state).orphaned.remove(session);
        let orphaned = orphaned.filter(|p| self.live(&p.node).is_none());
        let mut current = match orphaned {
            Some(p) => Some(p),
            None => self
                .etcd
                .range(key.as_bytes(), &[], 0, 0)
                .await
                .map_err(etcd_err)?
                .kvs
                .first()
                .map(|kv| Placement::parse(&String::from_utf8_lossy(&kv.value))),
        };
        for _ in 0..8 {
            if let Some(p) = &current
                && let Some((number, client)) = self.live(&p.node)
            {
                lock(&self.state)
                    .placements
                    .insert(session.to_owned(), p.clone());
                return Ok(Some(Routed {
                    number,
                    client,
                    address: p.address,
                }));
            }
            if !place {
                return Ok(None);
            }
            let chosen = self.choose_waiting(session, current.as_ref()).await?;
            let expect = match &current {
                None => Expect::Absent,
                Some(old) => Expect::Value(old.value().into_bytes()),
            };
            let write = Write::Put {
                value: chosen.value().into_bytes(),
                lease: 0,
            };
            let outcome = self
                .placements
                .write_if(key.clone(), expect, write)
                .await
                .map_err(etcd_err)?;
            match outcome {
                WriteOutcome::Written { .. } => {
                    if let Some(old) = &current {
                        self.record_move(session, old, &chosen);
                    }
                    current = Some(chosen);
                }
                // Another replica placed it first: use theirs.
                WriteOutcome::Current(theirs) => {
                    current =
                        theirs.map(|kv| Placement::parse(&String::from_utf8_lossy(&kv.value)));
                }
            }
        }
        Err(unavailable(format!(
            "placement of {session} keeps changing"
        )))
    }

    /// Notes `session` moved off its failed node (`old`) to `chosen`.
    fn record_move(&self, session: &str, old: &Placement, chosen: &Placement) {
        let mut st = lock(&self.state);
        let detected_ms = st
            .failed
            .get(&old.node)
            .copied()
            .unwrap_or_else(|| self.clock.now_ms());
        st.moves.push(Failover {
            node_id: old.node.clone(),
            interaction_id: session.to_owned(),
            to_node_id: chosen.node.clone(),
            detected_ms,
        });
        st.moved_from.insert(session.to_owned(), old.node.clone());
    }

    /// [`ClusterEngine::choose`], waiting up to [`TAKEOVER_WAIT`] for a failed node's
    /// address to be taken over (its survivors' agents claim it within a few hundred
    /// ms of the lease's end): a reconciliation pass that gave up at once would retry
    /// only at its next pass, later.
    async fn choose_waiting(
        &self,
        session: &str,
        current: Option<&Placement>,
    ) -> Result<Placement, EngineError> {
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        loop {
            match self.choose(session, current) {
                Err(EngineError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// A new placement for `session`: its first (`current` none), or away from its
    /// failed node.
    fn choose(&self, session: &str, current: Option<&Placement>) -> Result<Placement, EngineError> {
        let st = lock(&self.state);
        if let Some(Placement {
            address: Some(address),
            ..
        }) = current
            && !st.holders.is_empty()
        {
            // The legs keep their address: the interaction goes where it went.
            return match st.holders.get(address) {
                Some(node) if st.nodes.contains_key(node) => Ok(Placement {
                    node: node.clone(),
                    address: Some(*address),
                }),
                _ => Err(unavailable(format!(
                    "address {address} of {session} is not taken over by a live node yet"
                ))),
            };
        }
        let nodes = st.node_infos();
        let Some(chosen) = placement::place(session, &nodes, 1) else {
            return Err(EngineError::ResourceExhausted(
                "no live, non-draining engine node has room".into(),
            ));
        };
        let address = match current {
            // A failed node's address nobody claims (nodes without address blocks):
            // keep it in the record; the survivor binds its own.
            Some(old) => old.address,
            None => {
                let held: Vec<IpAddr> = chosen
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .filter(|a| st.holders.get(a) == Some(&chosen.node_id))
                    .collect();
                placement::choose_address(session, &held)
            }
        };
        Ok(Placement {
            node: chosen.node_id.clone(),
            address,
        })
    }

    /// Where the stream of a leg of an interaction moved off a failed node stands now,
    /// from that node's last report; `None` for any other leg.
    async fn stream_of(&self, session: &str, leg_key: &str) -> Option<StreamBase> {
        let (failed, lease, cached) = {
            let st = lock(&self.state);
            let failed = st.moved_from.get(session)?.clone();
            let lease = st.failed_leases.get(&failed).copied().unwrap_or(0);
            let cached = st.reports.get(&(failed.clone(), lease)).cloned();
            (failed, lease, cached)
        };
        let reports = match cached {
            Some(r) => r,
            None => {
                let key = streams_key(&self.prefix, &failed, lease);
                let read = self.etcd.range(key.as_bytes(), &[], 0, 0).await;
                let reports: StreamReports = match read {
                    Ok(r) => r
                        .kvs
                        .first()
                        .and_then(|kv| serde_json::from_slice(&kv.value).ok())
                        .unwrap_or_default(),
                    Err(e) => {
                        tracing::warn!(node_id = %failed, error = %e, "stream reports not read: new streams");
                        return None;
                    }
                };
                let reports = Arc::new(ReportIndex::from(reports));
                lock(&self.state)
                    .reports
                    .insert((failed, lease), Arc::clone(&reports));
                reports
            }
        };
        let report = reports.legs.get(session)?.get(leg_key)?;
        let elapsed_ms = self.clock.now_ms().saturating_sub(reports.at_ms);
        Some(report.extrapolated(elapsed_ms))
    }

    async fn forget_placement(&self, session: &str) {
        {
            let mut st = lock(&self.state);
            st.placements.remove(session);
            st.orphaned.remove(session);
            st.moved_from.remove(session);
        }
        let key = format!("{}placement/{session}", self.prefix);
        if let Err(e) = self
            .etcd
            .txn(vec![], vec![delete(key, Vec::new())], vec![])
            .await
        {
            tracing::warn!(session, error = %e, "placement not deleted");
        }
    }

    async fn route(&self, request: Request) -> Result<Response, EngineError> {
        match request {
            Request::AllocateLeg {
                session,
                leg_key,
                family,
                requested_port,
                rtcp_mux,
                resume,
            } => {
                let Some(routed) = self.node_for(&session, true).await? else {
                    return Err(unavailable("no node"));
                };
                // A leg re-created on its recorded port continues the failed node's
                // stream if its interaction moved; every leg binds its interaction's
                // address (of the leg's family).
                let stream = match requested_port {
                    Some(_) => self.stream_of(&session, &leg_key).await,
                    None => None,
                };
                let address = routed
                    .address
                    .filter(|a| a.is_ipv4() == matches!(family, earshot_engine_api::IpFamily::V4));
                let resume = match (address, stream) {
                    (None, None) => resume,
                    (address, stream) => Some(LegResume {
                        local_ip: address.or(resume.and_then(|r| r.local_ip)),
                        stream,
                    }),
                };
                let r = routed
                    .client
                    .call(Request::AllocateLeg {
                        session,
                        leg_key,
                        family,
                        requested_port,
                        rtcp_mux,
                        resume,
                    })
                    .await?;
                Ok(translate_response(routed.number, r))
            }
            Request::ConfigureLeg { leg, media } => {
                let (number, leg) = local(leg);
                let client = self
                    .client_by_number(number)
                    .ok_or_else(|| unavailable("the leg's node is gone"))?;
                let r = client.call(Request::ConfigureLeg { leg, media }).await?;
                Ok(translate_response(number, r))
            }
            Request::RemoveLeg { leg } => {
                let (number, leg) = local(leg);
                match self.client_by_number(number) {
                    Some(client) => client.call(Request::RemoveLeg { leg }).await,
                    // Its node is gone, and the leg with it.
                    None => Ok(Response::Done),
                }
            }
            Request::SetSessionPlan(plan) => {
                let Some(Routed { client, .. }) = self.node_for(&plan.session, false).await? else {
                    return Err(EngineError::NotFound(format!(
                        "session {} is on no live node",
                        plan.session
                    )));
                };
                let plan = SessionPlan {
                    edges: plan
                        .edges
                        .iter()
                        .map(|e| earshot_engine_api::Edge {
                            listener: local(e.listener).1,
                            source: local(e.source).1,
                            gain: e.gain,
                        })
                        .collect(),
                    no_dtmf: plan.no_dtmf.iter().map(|l| local(*l).1).collect(),
                    session: plan.session,
                };
                client.call(Request::SetSessionPlan(plan)).await
            }
            Request::RemoveSession { session } => {
                let found = self.node_for(&session, false).await?;
                if let Some(Routed { client, .. }) = found {
                    client
                        .call(Request::RemoveSession {
                            session: session.clone(),
                        })
                        .await?;
                }
                self.forget_placement(&session).await;
                Ok(Response::Done)
            }
            Request::Snapshot => self.snapshot().await,
            Request::Claim { owner } => {
                for (_, client) in self.all() {
                    client
                        .call(Request::Claim {
                            owner: owner.clone(),
                        })
                        .await?;
                }
                Ok(Response::Done)
            }
            // Fencing is a node agent's request to its own engine, never routed.
            Request::Fence { .. } => Err(EngineError::InvalidArgument {
                field: "request".into(),
                message: "Fence is sent by a node's agent to its own engine".into(),
            }),
            Request::Mute { .. } => Err(EngineError::InvalidArgument {
                field: "request".into(),
                message: "Mute is sent by a node's agent to its own engine".into(),
            }),
            Request::Stats => {
                let mut out = EngineStats::default();
                for (number, client) in self.all() {
                    if let Ok(Response::Stats(s)) = client.call(Request::Stats).await {
                        out.backend = s.backend;
                        out.shards.extend(s.shards.into_iter().map(|mut sh| {
                            sh.shard |= u16::from(number) << 8;
                            sh
                        }));
                    }
                }
                Ok(Response::Stats(out))
            }
        }
    }

    fn all(&self) -> Vec<(u8, Arc<dyn EngineApi>)> {
        let st = lock(&self.state);
        st.nodes
            .values()
            .map(|n| (n.registered.number, Arc::clone(&n.client)))
            .collect()
    }

    async fn snapshot(&self) -> Result<Response, EngineError> {
        let mut merged = EngineSnapshot::default();
        let mut owners = BTreeSet::new();
        for (number, client) in self.all() {
            let Response::Snapshot(s) = client.call(Request::Snapshot).await? else {
                return Err(EngineError::Internal("Snapshot answered otherwise".into()));
            };
            owners.insert(s.owner.clone());
            merged.events_lost += s.events_lost;
            merged
                .legs
                .extend(s.legs.into_iter().map(|l| translate_leg(number, l)));
            merged.plans.extend(s.plans.into_iter().map(|p| {
                SessionPlan {
                    edges: p
                        .edges
                        .iter()
                        .map(|e| earshot_engine_api::Edge {
                            listener: global(number, e.listener),
                            source: global(number, e.source),
                            gain: e.gain,
                        })
                        .collect(),
                    no_dtmf: p.no_dtmf.iter().map(|l| global(number, *l)).collect(),
                    session: p.session,
                }
            }));
            merged.activity.extend(s.activity.into_iter().map(|mut a| {
                a.leg = global(number, a.leg);
                a
            }));
        }
        // One owner for the cluster: a node that holds legs of another store (or of
        // none) makes the whole snapshot say so, and the claim check refuses it.
        merged.owner = match owners.len() {
            0 => None,
            1 => owners.into_iter().next().flatten(),
            _ => owners.into_iter().find(|o| o.is_none()).flatten(),
        };
        Ok(Response::Snapshot(merged))
    }
}

/// The address of an `addresses/held/{address}` key.
fn held_address(key: &[u8]) -> Option<IpAddr> {
    String::from_utf8_lossy(key)
        .rsplit('/')
        .next()?
        .parse()
        .ok()
}

fn translate_leg(number: u8, mut info: LegInfo) -> LegInfo {
    info.leg = global(number, info.leg);
    info
}

fn translate_response(number: u8, r: Response) -> Response {
    match r {
        Response::Leg(info) => Response::Leg(translate_leg(number, info)),
        other => other,
    }
}

fn translate_event(number: u8, e: EngineEvent) -> EngineEvent {
    match e {
        EngineEvent::FirstPacket {
            leg,
            session,
            leg_key,
        } => EngineEvent::FirstPacket {
            leg: global(number, leg),
            session,
            leg_key,
        },
        EngineEvent::MediaTimeout {
            leg,
            session,
            leg_key,
        } => EngineEvent::MediaTimeout {
            leg: global(number, leg),
            session,
            leg_key,
        },
        EngineEvent::RemoteLatched { leg, remote } => EngineEvent::RemoteLatched {
            leg: global(number, leg),
            remote,
        },
    }
}

impl EngineApi for ClusterEngine {
    fn call(&self, request: Request) -> BoxFuture<'_, Result<Response, EngineError>> {
        Box::pin(self.route(request))
    }

    fn next_event(&self) -> BoxFuture<'_, Option<EngineEvent>> {
        Box::pin(async move { self.events_rx.lock().await.recv().await })
    }

    /// Changes whenever a node joins or leaves, or any node's connection was
    /// re-established: the core then reconciles before anything else.
    fn epoch_changed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.changed.notified())
    }

    fn connection_epoch(&self) -> u64 {
        let nodes: u64 = self
            .all()
            .iter()
            .map(|(n, c)| c.connection_epoch().wrapping_mul(u64::from(*n) + 1))
            .fold(0, u64::wrapping_add);
        self.generation
            .load(Ordering::Relaxed)
            .wrapping_mul(1_000_003)
            .wrapping_add(nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leg_ids_carry_the_node_number_and_come_back_unchanged() {
        let leg = LegId::new(3, 70_000, 9);
        let g = global(17, leg);
        assert_eq!(local(g), (17, leg));
        assert_ne!(global(18, leg), g, "two nodes' equal ids differ globally");
    }

    #[test]
    fn placements_carry_the_address_and_read_the_old_form() {
        let p = Placement::parse("node-a@10.0.0.7");
        assert_eq!(p.node, "node-a");
        assert_eq!(p.address, Some("10.0.0.7".parse().unwrap()));
        assert_eq!(Placement::parse(&p.value()), p);
        let v6 = Placement::parse("b@fd00::1");
        assert_eq!(v6.address, Some("fd00::1".parse().unwrap()));
        // Records written before addresses existed, and node names with an '@'.
        assert_eq!(Placement::parse("node-a").address, None);
        assert_eq!(Placement::parse("ops@dc1").node, "ops@dc1");
    }

    #[test]
    fn a_reported_stream_moves_on_with_time_and_past_every_packet_sent() {
        let report = StreamReport {
            stream: StreamBase {
                ssrc: 9,
                index: (2 << 16) | 65_500,
                timestamp: u32::MAX - 100,
            },
            clock_rate_hz: 8_000,
            ptime_ms: 20,
        };
        let now = report.extrapolated(1_000);
        assert_eq!(now.ssrc, 9);
        // 50 packets a second could have gone out; twice that plus the margin is skipped.
        assert_eq!(now.index, report.stream.index + 100 + STREAM_INDEX_MARGIN);
        assert!(now.index >> 16 == 3, "the rollover count follows the index");
        // 8,000 timestamp units later, across the 32-bit wrap.
        assert_eq!(now.timestamp, (u32::MAX - 100).wrapping_add(8_000));
        assert_eq!(
            report.extrapolated(0).index,
            report.stream.index + STREAM_INDEX_MARGIN
        );
    }
}
