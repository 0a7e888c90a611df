//! The embedded, crash-safe store (redb): everything the sidecar has acknowledged.
//!
//! ## Layout
//! - `journal`: every accepted mutating command, with its `now_ms` and the media of the
//!   legs it introduced, by journal index. The rules state machine is deterministic, so
//!   the latest snapshot plus the journal after it rebuilds the state exactly.
//! - `snapshot`: the whole rules [`State`] and the media map as of a journal index;
//!   written every `snapshot_every` commands and at shutdown, after which the journal
//!   up to it is deleted.
//! - `events`: the global event log by sequence number (from 1), bounded to the last
//!   `retention` events, for `WatchEvents`.
//! - `timeline`: every event again, keyed by (interaction, sequence), never pruned with
//!   the log: a call's history outlives the retention window.
//! - `legs`: the engine's leg for each (interaction, participant): id, local addresses
//!   (so a restarted engine gives legs their old ports back) and the configuration last
//!   sent.
//! - `meta`: counters (`next_sequence`, `next_journal`).
//!
//! ## Durability
//! A command, its journal entry and its events commit in one write transaction with
//! redb's default durability (fsync before `commit` returns), before the RPC is
//! acknowledged: a kill -9 after the reply loses nothing; a kill -9 before it loses
//! the whole command, never half of it.

use std::net::SocketAddr;
use std::path::Path;

use earshot_engine_api::{LegId, MediaConfig};
use earshot_rules::{Actor, Command, Event, EventKind, State};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::media::MediaSpec;

const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const TIMELINE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("timeline");
const LEGS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("legs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const NEXT_SEQUENCE: &str = "next_sequence";
const NEXT_JOURNAL: &str = "next_journal";
const SNAPSHOT_KEY: &str = "state";

/// The database file inside the data directory.
pub const DB_FILE: &str = "earshot-control.redb";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (boxed: redb's error is large and errors are rare).
    #[error("database: {0}")]
    Db(Box<redb::Error>),
    /// A stored record does not decode (corruption or an incompatible version).
    #[error("record encoding: {0}")]
    Encoding(#[from] serde_json::Error),
    /// The data directory could not be created.
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
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
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
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
}

/// A leg record's key: (interaction, participant).
pub type LegKey = (String, String);

/// Everything read back at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The latest snapshot.
    pub snapshot: Option<Snapshot>,
    /// Journal entries after it, in order, with their indices.
    pub journal: Vec<(u64, JournalEntry)>,
    /// Leg records.
    pub legs: Vec<(LegKey, LegRecord)>,
}

/// The store. All methods are blocking but short (one transaction each).
#[derive(Debug)]
pub struct Store {
    db: Database,
    retention: u64,
}

fn render_actor(actor: &Actor, named: Option<&str>) -> String {
    match actor {
        Actor::Orchestrator => named.unwrap_or("orchestrator").to_owned(),
        Actor::Engine => "engine".to_owned(),
        Actor::User { user_id } => format!("user:{user_id}"),
    }
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir`, keeping the last `retention`
    /// events for `WatchEvents`.
    pub fn open(data_dir: &Path, retention: u64) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let db = Database::create(data_dir.join(DB_FILE))?;
        let tx = db.begin_write()?;
        {
            // Create every table so that read transactions never meet a missing one.
            tx.open_table(JOURNAL)?;
            tx.open_table(SNAPSHOT)?;
            tx.open_table(EVENTS)?;
            tx.open_table(TIMELINE)?;
            tx.open_table(LEGS)?;
            let mut meta = tx.open_table(META)?;
            for key in [NEXT_SEQUENCE, NEXT_JOURNAL] {
                if meta.get(key)?.is_none() {
                    meta.insert(key, 1)?;
                }
            }
        }
        tx.commit()?;
        Ok(Store {
            db,
            retention: retention.max(1),
        })
    }

    /// Reads the snapshot, the journal after it and the leg records.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let tx = self.db.begin_read()?;
        let snapshot: Option<Snapshot> = match tx.open_table(SNAPSHOT)?.get(SNAPSHOT_KEY)? {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        };
        let after = snapshot.as_ref().map_or(0, |s| s.journal_upto);
        let mut journal = Vec::new();
        for row in tx.open_table(JOURNAL)?.range(after + 1..)? {
            let (k, v) = row?;
            journal.push((k.value(), serde_json::from_slice(v.value())?));
        }
        let mut legs = Vec::new();
        for row in tx.open_table(LEGS)?.iter()? {
            let (k, v) = row?;
            let (i, p) = k.value();
            legs.push((
                (i.to_owned(), p.to_owned()),
                serde_json::from_slice(v.value())?,
            ));
        }
        Ok(Loaded {
            snapshot,
            journal,
            legs,
        })
    }

    /// Appends one accepted command and its events in one transaction; returns the
    /// journal index and the events with their sequence numbers.
    pub fn commit_command(
        &self,
        entry: &JournalEntry,
        events: &[Event],
    ) -> Result<(u64, Vec<EventRecord>), StoreError> {
        let tx = self.db.begin_write()?;
        let mut records = Vec::with_capacity(events.len());
        let index;
        {
            let mut meta = tx.open_table(META)?;
            index = meta.get(NEXT_JOURNAL)?.map_or(1, |v| v.value());
            let mut seq = meta.get(NEXT_SEQUENCE)?.map_or(1, |v| v.value());
            meta.insert(NEXT_JOURNAL, index + 1)?;
            tx.open_table(JOURNAL)?
                .insert(index, serde_json::to_vec(entry)?.as_slice())?;
            let mut log = tx.open_table(EVENTS)?;
            let mut timeline = tx.open_table(TIMELINE)?;
            for e in events {
                let record = EventRecord {
                    sequence: seq,
                    kind: e.kind,
                    interaction_id: e.interaction_id.clone(),
                    time_ms: e.at_ms,
                    actor: render_actor(&e.actor, entry.actor.as_deref()),
                    details: e.details.clone(),
                };
                let bytes = serde_json::to_vec(&record)?;
                log.insert(seq, bytes.as_slice())?;
                timeline.insert((record.interaction_id.as_str(), seq), bytes.as_slice())?;
                records.push(record);
                seq += 1;
            }
            meta.insert(NEXT_SEQUENCE, seq)?;
            // Retention: drop the oldest beyond the window (usually one per event).
            while log.len()? > self.retention {
                if log.pop_first()?.is_none() {
                    break;
                }
            }
        }
        tx.commit()?;
        Ok((index, records))
    }

    /// Replaces the snapshot and deletes the journal it covers.
    pub fn write_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            tx.open_table(SNAPSHOT)?
                .insert(SNAPSHOT_KEY, serde_json::to_vec(snapshot)?.as_slice())?;
            let mut journal = tx.open_table(JOURNAL)?;
            journal.retain_in(..=snapshot.journal_upto, |_, _| false)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Writes and deletes leg records in one transaction.
    pub fn update_legs(
        &self,
        puts: &[(LegKey, LegRecord)],
        deletes: &[LegKey],
    ) -> Result<(), StoreError> {
        if puts.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let mut legs = tx.open_table(LEGS)?;
            for ((i, p), rec) in puts {
                legs.insert(
                    (i.as_str(), p.as_str()),
                    serde_json::to_vec(rec)?.as_slice(),
                )?;
            }
            for (i, p) in deletes {
                legs.remove((i.as_str(), p.as_str()))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Up to `limit` retained events with sequence greater than `after`, in order.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(EVENTS)?;
        let mut out = Vec::new();
        for row in table.range(after.saturating_add(1)..)?.take(limit) {
            let (_, v) = row?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    /// The oldest retained sequence number, or the next one to be assigned when none is
    /// retained.
    pub fn first_retained(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        if let Some((k, _)) = tx.open_table(EVENTS)?.first()? {
            return Ok(k.value());
        }
        Ok(tx
            .open_table(META)?
            .get(NEXT_SEQUENCE)?
            .map_or(1, |v| v.value()))
    }

    /// The sequence number the next event will get.
    pub fn next_sequence(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx
            .open_table(META)?
            .get(NEXT_SEQUENCE)?
            .map_or(1, |v| v.value()))
    }

    /// Every event of one interaction, in order.
    pub fn timeline(&self, interaction_id: &str) -> Result<Vec<EventRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TIMELINE)?;
        let mut out = Vec::new();
        for row in table.range((interaction_id, 0)..=(interaction_id, u64::MAX))? {
            let (_, v) = row?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn event(interaction: &str, kind: EventKind) -> Event {
        Event {
            kind,
            interaction_id: interaction.into(),
            at_ms: 5,
            actor: Actor::Orchestrator,
            details: BTreeMap::new(),
        }
    }

    fn entry() -> JournalEntry {
        JournalEntry {
            now_ms: 5,
            command: Command::EndInteraction {
                interaction_id: "i".into(),
            },
            media: Vec::new(),
            actor: Some("cc".into()),
        }
    }

    #[test]
    fn events_get_increasing_sequences_that_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 100).unwrap();
            let (_, recs) = store
                .commit_command(
                    &entry(),
                    &[
                        event("a", EventKind::HoldStarted),
                        event("b", EventKind::HoldEnded),
                    ],
                )
                .unwrap();
            assert_eq!(recs.iter().map(|r| r.sequence).collect::<Vec<_>>(), [1, 2]);
            assert_eq!(
                recs[0].actor, "cc",
                "the named actor overrides orchestrator"
            );
        }
        let store = Store::open(dir.path(), 100).unwrap();
        let (_, recs) = store
            .commit_command(&entry(), &[event("a", EventKind::HoldEnded)])
            .unwrap();
        assert_eq!(recs[0].sequence, 3);
        let tl = store.timeline("a").unwrap();
        assert_eq!(tl.iter().map(|r| r.sequence).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(store.load().unwrap().journal.len(), 2);
    }

    #[test]
    fn retention_bounds_the_log_but_not_the_timeline() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        for _ in 0..5 {
            store
                .commit_command(&entry(), &[event("a", EventKind::HoldStarted)])
                .unwrap();
        }
        assert_eq!(store.first_retained().unwrap(), 3);
        let after = store.events_after(0, 100).unwrap();
        assert_eq!(
            after.iter().map(|r| r.sequence).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(store.timeline("a").unwrap().len(), 5);
    }

    #[test]
    fn a_snapshot_deletes_the_journal_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 10).unwrap();
        let (i1, _) = store.commit_command(&entry(), &[]).unwrap();
        store
            .write_snapshot(&Snapshot {
                journal_upto: i1,
                rules: State::default(),
                media: Vec::new(),
            })
            .unwrap();
        let (i2, _) = store.commit_command(&entry(), &[]).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.snapshot.unwrap().journal_upto, i1);
        assert_eq!(
            loaded.journal.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [i2]
        );
    }
}
