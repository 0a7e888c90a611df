//! The embedded, crash-safe store (redb): the default, for one host. Everything the
//! sidecar has acknowledged, in one file; a single writer (redb locks the file), so a
//! commit's base is always the head and [`RedbStore::records_after`] has nothing to tell.
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
//! - `ended_interactions`, `ended_supervisions`, `ended`: an ended interaction leaves
//!   the sidecar's memory at once; its final view (and its supervisions' views, by id
//!   and escalation alias) stays here, indexed by end time, until the retention period
//!   passes ([`Store::prune_ended`], which also deletes its timeline).
//! - `meta`: counters (`next_sequence`, `next_journal`) and the store's random identity
//!   (`store_id`, written at creation).
//!
//! ## Durability
//! A command, its journal entry and its events commit in one write transaction with
//! redb's default durability (fsync before `commit` returns), before the RPC is
//! acknowledged: a kill -9 after the reply loses nothing; a kill -9 before it loses
//! the whole command, never half of it.

use std::path::Path;

use earshot_rules::Event;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{
    CommitRecord, Committed, EndedRecord, EventRecord, JournalEntry, LegKey, LegRecord, Loaded,
    Snapshot, StoreError,
};

const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const TIMELINE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("timeline");
const LEGS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("legs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const ENDED: TableDefinition<(u64, &str), ()> = TableDefinition::new("ended");
const ENDED_INTERACTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("ended_interactions");
const ENDED_SUPERVISIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("ended_supervisions");

const NEXT_SEQUENCE: &str = "next_sequence";
const STORE_ID: &str = "store_id";
const NEXT_JOURNAL: &str = "next_journal";
const SNAPSHOT_KEY: &str = "state";

/// Page cache of the database (redb's default is 1 GiB).
pub const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The database file inside the data directory.
pub const DB_FILE: &str = "earshot-control.redb";

/// The redb store. All methods are blocking but short (one transaction each).
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    retention: u64,
    id: String,
    created: bool,
}

/// The first bytes of every redb file (redb's `MAGICNUMBER`).
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// Refuses a database file that is empty or does not start like a redb file.
fn check_header(path: &Path, len: u64) -> Result<(), StoreError> {
    use std::io::Read;
    let shown = path.display();
    if len == 0 {
        return Err(StoreError::Damaged(format!(
            "{shown} is empty (0 bytes): it is not the store of this sidecar. Restore it \
             from a backup, point --data-dir at the right directory, or remove the file to \
             start with a new, empty store"
        )));
    }
    let mut head = [0u8; REDB_MAGIC.len()];
    let n = std::fs::File::open(path)?.read(&mut head)?;
    if n < head.len() || head != REDB_MAGIC {
        return Err(StoreError::Damaged(format!(
            "{shown} is not an earshot store (no redb header; another program's file?). \
             Point --data-dir at the right directory"
        )));
    }
    Ok(())
}

/// Runs `f`, turning a panic inside the database library (which some kinds of damage
/// provoke) into [`StoreError::Damaged`].
fn guard<T>(shown: &str, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(StoreError::Damaged(format!(
                "{shown}: the database library failed: {what}"
            )))
        }
    }
}

/// 64 random bits for a store identity (the kernel's pool; the clock and the address
/// space as a fallback, since only distinctness matters).
fn random_id() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_ne_bytes(b);
    }
    let x = 0u8;
    (std::ptr::addr_of!(x) as u64) ^ u64::from(std::process::id()) << 32
}

impl RedbStore {
    /// Opens the store in `data_dir`, creating it only if the database file does not
    /// exist, keeping the last `retention` events for `WatchEvents`. A file that exists
    /// but is empty, is not a redb database, or is damaged is refused with
    /// [`StoreError::Damaged`] (never replaced by a fresh store: an empty store would
    /// make the sidecar believe the engine's calls are strays).
    pub fn open(data_dir: &Path, retention: u64) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let created = match std::fs::metadata(&path) {
            Ok(meta) => {
                check_header(&path, meta.len())?;
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(e.into()),
        };
        let shown = path.display().to_string();
        let opened = guard(&shown, || {
            // redb caches up to 1 GiB of pages by default, so the resident set would
            // follow the database file (events and ended calls within their retention)
            // instead of staying flat; the working set of a mutation is a few pages.
            let mut builder = Database::builder();
            builder.set_cache_size(CACHE_BYTES);
            let db = if created {
                builder.create(&path)?
            } else {
                builder.open(&path)?
            };
            Self::init_tables(&db)?;
            Ok(db)
        });
        let db = match opened {
            Ok(db) => db,
            Err(StoreError::Db(e)) if !created => {
                return Err(StoreError::Damaged(format!("{shown}: {e}")));
            }
            Err(e) => return Err(e),
        };
        // The store holds SRTP master keys (with each leg's media): owner-only, also
        // for a file an older version created with the umask's mode.
        restrict_to_owner(&path)?;
        let id = {
            let tx = db.begin_read()?;
            let meta = tx.open_table(META)?;
            meta.get(STORE_ID)?.map_or(0, |v| v.value())
        };
        let store = RedbStore {
            db,
            retention: retention.max(1),
            id: format!("store-{id:016x}"),
            created,
        };
        if !created {
            // Read every record once now, so that damage is a clear error at start and
            // never a surprise (or a panic) in the middle of serving.
            guard(&shown, || store.load().map(|_| ()))
                .map_err(|e| StoreError::Damaged(format!("{shown}: {e}")))?;
        }
        Ok(store)
    }

    fn init_tables(db: &Database) -> Result<(), StoreError> {
        let tx = db.begin_write()?;
        {
            // Create every table so that read transactions never meet a missing one.
            tx.open_table(JOURNAL)?;
            tx.open_table(SNAPSHOT)?;
            tx.open_table(EVENTS)?;
            tx.open_table(TIMELINE)?;
            tx.open_table(LEGS)?;
            tx.open_table(ENDED)?;
            tx.open_table(ENDED_INTERACTIONS)?;
            tx.open_table(ENDED_SUPERVISIONS)?;
            let mut meta = tx.open_table(META)?;
            for key in [NEXT_SEQUENCE, NEXT_JOURNAL] {
                if meta.get(key)?.is_none() {
                    meta.insert(key, 1)?;
                }
            }
            if meta.get(STORE_ID)?.is_none() {
                meta.insert(STORE_ID, random_id())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// This store's identity: random, written when the store was created. The sidecar
    /// claims the engine with it, so that a sidecar started on another (or a new) store
    /// can tell that the engine's legs are not its own.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this process created the store (it did not exist before).
    pub fn is_new(&self) -> bool {
        self.created
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
        let head = tx
            .open_table(META)?
            .get(NEXT_JOURNAL)?
            .map_or(1, |v| v.value())
            .saturating_sub(1);
        Ok(Loaded {
            snapshot,
            journal,
            legs,
            head,
        })
    }

    /// Everything one mutation made durable, in one transaction (one fsync): the
    /// command's journal entry (none for an identical retry or an event the sidecar
    /// records itself), its events, and the leg records the engine acknowledged while
    /// programming it. Returns the journal index (if an entry was written) and the
    /// events with their sequence numbers. Nothing to write: no transaction.
    ///
    /// `base` is the head the caller's state reflects: the commit is refused with
    /// [`StoreError::Conflict`] if the journal has moved past it. Only journal entries
    /// advance the head here (leg records and sidecar events are not replayed).
    pub fn commit(
        &self,
        base: u64,
        entry: Option<&JournalEntry>,
        events: &[Event],
        actor: Option<&str>,
        puts: &[(LegKey, LegRecord)],
        deletes: &[LegKey],
    ) -> Result<Committed, StoreError> {
        if entry.is_none() && events.is_empty() && puts.is_empty() && deletes.is_empty() {
            return Ok(Committed {
                index: None,
                head: base,
                records: Vec::new(),
            });
        }
        let tx = self.db.begin_write()?;
        let mut records = Vec::with_capacity(events.len());
        let mut index = None;
        let head;
        {
            let mut meta = tx.open_table(META)?;
            let next = meta.get(NEXT_JOURNAL)?.map_or(1, |v| v.value());
            if next - 1 != base {
                return Err(StoreError::Conflict { head: next - 1 });
            }
            head = if entry.is_some() { next } else { base };
            if let Some(entry) = entry {
                let i = next;
                meta.insert(NEXT_JOURNAL, i + 1)?;
                tx.open_table(JOURNAL)?
                    .insert(i, serde_json::to_vec(entry)?.as_slice())?;
                index = Some(i);
            }
            if !events.is_empty() {
                let mut seq = meta.get(NEXT_SEQUENCE)?.map_or(1, |v| v.value());
                let mut log = tx.open_table(EVENTS)?;
                let mut timeline = tx.open_table(TIMELINE)?;
                for e in events {
                    let record = EventRecord::of(seq, e, actor);
                    let bytes = serde_json::to_vec(&record)?;
                    log.insert(seq, bytes.as_slice())?;
                    // Directory events belong to no interaction's timeline.
                    if !record.interaction_id.is_empty() {
                        timeline.insert((record.interaction_id.as_str(), seq), bytes.as_slice())?;
                    }
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
            if !puts.is_empty() || !deletes.is_empty() {
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
        }
        tx.commit()?;
        Ok(Committed {
            index,
            head,
            records,
        })
    }

    /// Commits written by other writers after `head`: none (one writer).
    pub fn records_after(&self, _head: u64) -> Vec<(u64, CommitRecord)> {
        Vec::new()
    }

    /// Replaces the snapshot and deletes the journal it covers; a snapshot not newer
    /// than the stored one is dropped.
    pub fn write_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        /// Only the field compared (serde skips the rest of the stored snapshot).
        #[derive(serde::Deserialize)]
        struct Upto {
            journal_upto: u64,
        }
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(SNAPSHOT)?;
            let current = match table.get(SNAPSHOT_KEY)? {
                Some(v) => Some(serde_json::from_slice::<Upto>(v.value())?.journal_upto),
                None => None,
            };
            // An older snapshot never replaces a newer one (the conformance suite).
            if current.is_some_and(|upto| upto >= snapshot.journal_upto) {
                return Ok(());
            }
            table.insert(SNAPSHOT_KEY, serde_json::to_vec(snapshot)?.as_slice())?;
            drop(table);
            let mut journal = tx.open_table(JOURNAL)?;
            journal.retain_in(..=snapshot.journal_upto, |_, _| false)?;
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

    /// Keeps an ended interaction's final views (`supervisions`: id or alias and the
    /// encoded `proto::SupervisionInfo`). Idempotent.
    pub fn retire(
        &self,
        interaction_id: &str,
        record: &EndedRecord,
        supervisions: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut views = tx.open_table(ENDED_INTERACTIONS)?;
            if views.get(interaction_id)?.is_none() {
                views.insert(interaction_id, serde_json::to_vec(record)?.as_slice())?;
                tx.open_table(ENDED)?
                    .insert((record.ended_ms, interaction_id), ())?;
                let mut sups = tx.open_table(ENDED_SUPERVISIONS)?;
                for (id, view) in supervisions {
                    sups.insert(id.as_str(), view.as_slice())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// An ended interaction still retained.
    pub fn ended(&self, interaction_id: &str) -> Result<Option<EndedRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(ENDED_INTERACTIONS)?;
        match table.get(interaction_id)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
            None => Ok(None),
        }
    }

    /// Every retained ended interaction, by id.
    pub fn ended_all(&self) -> Result<Vec<(String, EndedRecord)>, StoreError> {
        let tx = self.db.begin_read()?;
        let mut out = Vec::new();
        for row in tx.open_table(ENDED_INTERACTIONS)?.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_owned(), serde_json::from_slice(v.value())?));
        }
        Ok(out)
    }

    /// The encoded final view of an ended supervision (by id or alias), if retained.
    pub fn ended_supervision(&self, supervision_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(ENDED_SUPERVISIONS)?;
        Ok(table.get(supervision_id)?.map(|v| v.value().to_vec()))
    }

    /// Every retained ended supervision view.
    pub fn ended_supervisions(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let mut out = Vec::new();
        for row in tx.open_table(ENDED_SUPERVISIONS)?.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Deletes every ended interaction that ended before `ended_before_ms`: its view,
    /// its supervisions' views and its timeline. Returns how many were deleted. At most
    /// `limit` per call, so one call never holds the database for long.
    pub fn prune_ended(&self, ended_before_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let tx = self.db.begin_write()?;
        let mut pruned = 0;
        {
            let mut index = tx.open_table(ENDED)?;
            let mut views = tx.open_table(ENDED_INTERACTIONS)?;
            let mut sups = tx.open_table(ENDED_SUPERVISIONS)?;
            let mut timeline = tx.open_table(TIMELINE)?;
            let doomed: Vec<(u64, String)> = index
                .range((0, "")..(ended_before_ms, ""))?
                .take(limit)
                .map(|row| row.map(|(k, _)| (k.value().0, k.value().1.to_owned())))
                .collect::<Result<_, _>>()?;
            for (ms, id) in doomed {
                index.remove((ms, id.as_str()))?;
                if let Some(v) = views.remove(id.as_str())? {
                    let record: EndedRecord = serde_json::from_slice(v.value())?;
                    for sid in &record.supervision_ids {
                        sups.remove(sid.as_str())?;
                    }
                }
                timeline.retain_in((id.as_str(), 0)..=(id.as_str(), u64::MAX), |_, _| false)?;
                pruned += 1;
            }
        }
        tx.commit()?;
        Ok(pruned)
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

/// Sets `path`'s mode to 0600 (read and write by its owner only).
fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(test)]
mod owner_only_tests {
    use super::*;

    #[test]
    fn the_store_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        drop(RedbStore::open(dir.path(), 100).unwrap());
        assert_eq!(mode(&path), 0o600);
        // A file left world-readable (an older version, a restore) is tightened on open.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(RedbStore::open(dir.path(), 100).unwrap());
        assert_eq!(mode(&path), 0o600);
    }
}
