//! The store: everything the sidecar has acknowledged, behind one interface with two
//! implementations that pass one conformance suite (`tests/store_conformance.rs`).
//!
//! - [`redb::RedbStore`], the default: one embedded, crash-safe file per host (`cargo
//!   run --release` uses it unchanged).
//! - [`etcd::EtcdStore`]: the cluster's store (SPEC section 7). Several control replicas
//!   share it; each commit is one etcd transaction comparing the head it was based on.
//!
//! ## The model both implement
//! The rules state machine is deterministic, so the state is a **journal** of accepted
//! commands over a **snapshot**; leg records, events (with their global sequence
//! number and per-interaction timeline) and the final views of ended interactions sit
//! beside it. One mutation is one [`Store::commit`]: its journal entry, its events and
//! the leg records the engine acknowledged, atomically. A commit names its **base**,
//! the head (last commit index) that the caller's state reflects; if anything was
//! committed after it the commit is refused with [`StoreError::Conflict`] and nothing is
//! written. The caller then reads what it missed ([`Store::records_after`]), applies it,
//! re-applies its command to the new state (which may now be refused: two replicas
//! racing to coach one agent, exactly one wins, the other answers
//! COACH_ALREADY_ACTIVE) and commits again. So every rule of SPEC section 2 holds across
//! replicas: a command is only ever accepted against the latest state.
//!
//! Event sequence numbers are assigned inside the commit, under the same comparison, so
//! they are global, gap-free and in commit order whichever replica wrote them:
//! `WatchEvents` on any replica resumes from any retained sequence.
//!
//! With redb there is one writer (the file is locked), so the base is always the head and
//! there is nothing to catch up on; with etcd every commit (even one with only leg
//! records or sidecar events) advances the head and is a [`CommitRecord`] others replay.

use std::net::SocketAddr;
use std::path::Path;

use earshot_engine_api::{LegId, MediaConfig};
use earshot_rules::{Actor, Command, Event, EventKind, State};
use serde::{Deserialize, Serialize};

use crate::media::MediaSpec;

pub mod etcd;
pub mod redb;

pub use self::redb::{CACHE_BYTES, DB_FILE};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (boxed: redb's error is large and errors are rare).
    #[error("database: {0}")]
    Db(Box<::redb::Error>),
    /// A stored record does not decode (corruption or an incompatible version).
    #[error("record encoding: {0}")]
    Encoding(#[from] serde_json::Error),
    /// The data directory could not be created or read.
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
    /// The database file exists but is empty, foreign or damaged.
    #[error("damaged store: {0}")]
    Damaged(String),
    /// Another writer committed after the head this commit was based on: catch up
    /// ([`Store::records_after`]) and try again.
    #[error("another replica committed first (head is now {head})")]
    Conflict {
        /// The head as the store sees it.
        head: u64,
    },
    /// The commits after the caller's head were folded into a snapshot: load the whole
    /// state again.
    #[error("the journal after this replica's head was compacted (oldest is {oldest})")]
    Behind {
        /// The oldest commit index still in the journal.
        oldest: u64,
    },
    /// Another replica held the named lock for too long.
    #[error("{0} is being changed through another control replica; retry")]
    Locked(String),
    /// etcd failed or is unreachable.
    #[error("etcd: {0}")]
    Etcd(#[from] earshot_etcd::EtcdError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> StoreError {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    ::redb::Error,
    ::redb::DatabaseError,
    ::redb::TransactionError,
    ::redb::TableError,
    ::redb::StorageError,
    ::redb::CommitError
);

/// One persisted event (a rules [`Event`] with its global sequence number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Global sequence number, from 1.
    pub sequence: u64,
    /// What happened.
    pub kind: EventKind,
    /// The interaction.
    pub interaction_id: String,
    /// Wall time of the command, ms since the Unix epoch.
    pub time_ms: u64,
    /// Who caused it (see `message Event.actor`).
    pub actor: String,
    /// Details from the rules.
    pub details: std::collections::BTreeMap<String, String>,
}

/// The media of one participant's leg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaEntry {
    /// Interaction.
    pub interaction_id: String,
    /// Participant.
    pub participant_id: String,
    /// Its media.
    pub media: MediaSpec,
}

/// One accepted command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The time it was applied at.
    pub now_ms: u64,
    /// The command.
    pub command: Command,
    /// Media of the legs it introduced or replaced.
    pub media: Vec<MediaEntry>,
    /// The actor the request named, overriding `orchestrator` in its events.
    pub actor: Option<String>,
}

/// The whole state as of journal index `journal_upto` (inclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Last journal index included.
    pub journal_upto: u64,
    /// The rules state.
    pub rules: State,
    /// Every participant's media.
    pub media: Vec<MediaEntry>,
}

/// An ended interaction kept in the store (not in memory) for the retention period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedRecord {
    /// When it ended, ms since the Unix epoch.
    pub ended_ms: u64,
    /// The participants it was created with (an identical create is a retry).
    pub created_with: Vec<earshot_rules::ParticipantSpec>,
    /// Every user id that took part (for `ListInteractions` by user).
    pub user_ids: Vec<String>,
    /// Its supervisions' ids and escalation aliases.
    pub supervision_ids: Vec<String>,
    /// The final `proto::Interaction`, protobuf-encoded.
    pub view: Vec<u8>,
}

/// The engine's leg for one participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegRecord {
    /// Engine id.
    pub leg: LegId,
    /// Local RTP address.
    pub local: SocketAddr,
    /// Local RTCP address.
    pub local_rtcp: SocketAddr,
    /// The configuration last acknowledged by the engine.
    pub configured: Option<MediaConfig>,
    /// The engine node serving the leg (cluster); `None` on one host.
    #[serde(default)]
    pub node: Option<String>,
}

/// A leg record's key: (interaction, participant).
pub type LegKey = (String, String);

/// Everything read back at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The head: the index of the last commit the loaded state includes.
    pub head: u64,
    /// The latest snapshot.
    pub snapshot: Option<Snapshot>,
    /// Journal entries after it, in order, with their indices.
    pub journal: Vec<(u64, JournalEntry)>,
    /// Leg records.
    pub legs: Vec<(LegKey, LegRecord)>,
}

/// What a commit wrote.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    /// The journal index of the entry, if one was written.
    pub index: Option<u64>,
    /// The head after the commit (the caller's new base).
    pub head: u64,
    /// The events with their sequence numbers.
    pub records: Vec<EventRecord>,
}

/// One commit as other replicas replay it: everything a mutation made durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CommitRecord {
    /// The command, if the commit carried one.
    pub entry: Option<JournalEntry>,
    /// Its events, with their sequence numbers.
    pub events: Vec<EventRecord>,
    /// Leg records written.
    pub puts: Vec<(LegKey, LegRecord)>,
    /// Leg records deleted.
    pub deletes: Vec<LegKey>,
}

impl EventRecord {
    /// The record of `event` with sequence number `sequence`; `named` overrides the
    /// `orchestrator` actor (the request's `actor` field).
    pub fn of(sequence: u64, event: &Event, named: Option<&str>) -> EventRecord {
        EventRecord {
            sequence,
            kind: event.kind,
            interaction_id: event.interaction_id.clone(),
            time_ms: event.at_ms,
            actor: match &event.actor {
                Actor::Orchestrator => named.unwrap_or("orchestrator").to_owned(),
                Actor::Engine => "engine".to_owned(),
                Actor::User { user_id } => format!("user:{user_id}"),
            },
            details: event.details.clone(),
        }
    }
}

/// The store: redb on one host, etcd in a cluster (module doc). Every method is one
/// transaction (a few for etcd's paged reads).
#[derive(Debug)]
pub enum Store {
    /// The embedded store.
    Redb(redb::RedbStore),
    /// The cluster store.
    Etcd(etcd::EtcdStore),
}

impl Store {
    /// Opens (or creates) the embedded store in `data_dir`, keeping the last
    /// `retention` events for `WatchEvents` ([`redb::RedbStore::open`]).
    pub fn open(data_dir: &Path, retention: u64) -> Result<Store, StoreError> {
        redb::RedbStore::open(data_dir, retention).map(Store::Redb)
    }

    /// Connects to the etcd cluster at `endpoints`, under the key prefix `prefix`
    /// ([`etcd::EtcdStore::open`]).
    pub async fn open_etcd(
        endpoints: &[String],
        prefix: &str,
        retention: u64,
    ) -> Result<Store, StoreError> {
        etcd::EtcdStore::open(endpoints, prefix, retention)
            .await
            .map(Store::Etcd)
    }

    /// Whether several replicas may write this store (so commits can conflict and
    /// other replicas' commits must be followed).
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Etcd(_))
    }

    /// The store's identity, random, written when it was created. The sidecar claims the
    /// engine with it.
    pub fn id(&self) -> &str {
        match self {
            Store::Redb(s) => s.id(),
            Store::Etcd(s) => s.id(),
        }
    }

    /// Whether this process created the store.
    pub fn is_new(&self) -> bool {
        match self {
            Store::Redb(s) => s.is_new(),
            Store::Etcd(s) => s.is_new(),
        }
    }

    /// The snapshot, the journal after it, the leg records and the head, consistently.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        match self {
            Store::Redb(s) => s.load(),
            Store::Etcd(s) => s.load().await,
        }
    }

    /// Makes one mutation durable (module doc): the journal entry (none for an
    /// identical retry or a record the sidecar makes itself), its events and the leg
    /// records, atomically, if nothing was committed after `base`. Nothing to write:
    /// no transaction, the head stays `base`.
    pub async fn commit(
        &self,
        base: u64,
        entry: Option<&JournalEntry>,
        events: &[Event],
        actor: Option<&str>,
        puts: &[(LegKey, LegRecord)],
        deletes: &[LegKey],
    ) -> Result<Committed, StoreError> {
        match self {
            Store::Redb(s) => s.commit(base, entry, events, actor, puts, deletes),
            Store::Etcd(s) => s.commit(base, entry, events, actor, puts, deletes).await,
        }
    }

    /// Every commit after `head`, in order (other replicas' work). Errors with
    /// [`StoreError::Behind`] if a snapshot has already deleted some of them: the
    /// caller then loads the whole state again.
    pub async fn records_after(&self, head: u64) -> Result<Vec<(u64, CommitRecord)>, StoreError> {
        match self {
            Store::Redb(s) => Ok(s.records_after(head)),
            Store::Etcd(s) => s.records_after(head).await,
        }
    }

    /// Takes the lock `name` across replicas (etcd; nothing to take with redb, whose
    /// single writer is serialised by the core lock). A mutation holds its
    /// interaction's lock from before it reads the latest state until after it
    /// commits, so that no other replica programs that interaction's legs meanwhile.
    pub async fn lock(&self, name: &str) -> Result<Option<etcd::LockGuard>, StoreError> {
        match self {
            Store::Redb(_) => Ok(None),
            Store::Etcd(s) => s.lock(name).await.map(Some),
        }
    }

    /// Releases a lock taken with [`Store::lock`].
    pub async fn unlock(&self, guard: Option<etcd::LockGuard>) {
        if let (Store::Etcd(s), Some(g)) = (self, guard) {
            s.unlock(g).await;
        }
    }

    /// Releases a lock taken with [`Store::lock`] without waiting for the answer
    /// ([`etcd::EtcdStore::unlock_in_background`]).
    pub fn unlock_in_background(&self, guard: Option<etcd::LockGuard>) {
        if let (Store::Etcd(s), Some(g)) = (self, guard) {
            s.unlock_in_background(g);
        }
    }

    /// Replaces the snapshot and deletes the journal it covers.
    pub async fn write_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        match self {
            Store::Redb(s) => s.write_snapshot(snapshot),
            Store::Etcd(s) => s.write_snapshot(snapshot).await,
        }
    }

    /// Up to `limit` retained events with sequence greater than `after`, in order.
    pub async fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        match self {
            Store::Redb(s) => s.events_after(after, limit),
            Store::Etcd(s) => s.events_after(after, limit).await,
        }
    }

    /// The oldest retained sequence number, or the next one when none is retained.
    pub async fn first_retained(&self) -> Result<u64, StoreError> {
        match self {
            Store::Redb(s) => s.first_retained(),
            Store::Etcd(s) => s.first_retained().await,
        }
    }

    /// The sequence number the next event will get.
    pub async fn next_sequence(&self) -> Result<u64, StoreError> {
        match self {
            Store::Redb(s) => s.next_sequence(),
            Store::Etcd(s) => s.next_sequence().await,
        }
    }

    /// Keeps an ended interaction's final views. Idempotent: the first writer wins.
    pub async fn retire(
        &self,
        interaction_id: &str,
        record: &EndedRecord,
        supervisions: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        match self {
            Store::Redb(s) => s.retire(interaction_id, record, supervisions),
            Store::Etcd(s) => s.retire(interaction_id, record, supervisions).await,
        }
    }

    /// An ended interaction still retained.
    pub async fn ended(&self, interaction_id: &str) -> Result<Option<EndedRecord>, StoreError> {
        match self {
            Store::Redb(s) => s.ended(interaction_id),
            Store::Etcd(s) => s.ended(interaction_id).await,
        }
    }

    /// Every retained ended interaction, by id.
    pub async fn ended_all(&self) -> Result<Vec<(String, EndedRecord)>, StoreError> {
        match self {
            Store::Redb(s) => s.ended_all(),
            Store::Etcd(s) => s.ended_all().await,
        }
    }

    /// The encoded final view of an ended supervision (by id or alias).
    pub async fn ended_supervision(
        &self,
        supervision_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Redb(s) => s.ended_supervision(supervision_id),
            Store::Etcd(s) => s.ended_supervision(supervision_id).await,
        }
    }

    /// Every retained ended supervision view.
    pub async fn ended_supervisions(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match self {
            Store::Redb(s) => s.ended_supervisions(),
            Store::Etcd(s) => s.ended_supervisions().await,
        }
    }

    /// Deletes up to `limit` ended interactions that ended before `ended_before_ms`
    /// (views, supervisions' views, timeline); returns how many.
    pub async fn prune_ended(
        &self,
        ended_before_ms: u64,
        limit: usize,
    ) -> Result<usize, StoreError> {
        match self {
            Store::Redb(s) => s.prune_ended(ended_before_ms, limit),
            Store::Etcd(s) => s.prune_ended(ended_before_ms, limit).await,
        }
    }

    /// Every event of one interaction, in order.
    pub async fn timeline(&self, interaction_id: &str) -> Result<Vec<EventRecord>, StoreError> {
        match self {
            Store::Redb(s) => s.timeline(interaction_id),
            Store::Etcd(s) => s.timeline(interaction_id).await,
        }
    }
}
