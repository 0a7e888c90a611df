//! The cluster store on etcd: what [`super::redb::RedbStore`] keeps in one file, as keys
//! under a prefix (default `/earshot/`), shared by every control replica.
//!
//! ## Layout (under the prefix)
//! - `meta/head`: `"{head:016x}/{next_sequence:016x}"`, the last commit index and the
//!   next event sequence number. **Every commit compares this value** with the one it
//!   was based on and writes the next one, in one transaction: that comparison is what
//!   makes the rules hold across replicas (module doc of [`crate::store`]).
//! - `meta/store_id`: the store's identity, written once by whoever created it.
//! - `journal/{index:016x}`: one [`CommitRecord`] per commit (command if any, events,
//!   leg records written and deleted): what other replicas replay.
//! - `events/{sequence:016x}`: the global event log, bounded to the last `retention`
//!   events (the commit deletes older ones in the same transaction).
//! - `timeline/{interaction}/{sequence:016x}`: every event of an interaction, kept with
//!   its ended view until pruned.
//! - `legs/{interaction}/{participant}`: leg records.
//! - `snap/current` (pointer: generation, chunk count, `journal_upto`) and
//!   `snap/{generation}/{chunk:08x}`: the snapshot, in chunks of at most 1 MiB (etcd
//!   refuses requests over 1.5 MiB by default).
//! - `ended/{ended_ms:016x}/{interaction}`, `ended_i/{interaction}`,
//!   `ended_s/{supervision}`: ended interactions' views for the retention period.
//!
//! Interaction, participant and supervision ids never contain `/` (SPEC section 1), so
//! the keys split unambiguously.
//!
//! ## Consistency
//! A load reads every key at one etcd revision. A commit that finds `meta/head` changed
//! returns [`StoreError::Conflict`] with the current head; a replayed transaction (reply
//! lost, retried on another member) fails its comparison the same way, and the caller's
//! catch-up then meets its own record, which re-applies as an identical retry.

use std::sync::Mutex;

use earshot_etcd::{
    Etcd, Expect, KeyValue, Write, WriteBatcher, WriteOutcome, absent, delete, get, prefix_end,
    put, value_is,
};
use earshot_rules::Event;
use serde::{Deserialize, Serialize};

use super::{
    CommitRecord, Committed, EndedRecord, EventRecord, JournalEntry, LegKey, LegRecord, Loaded,
    Snapshot, StoreError,
};

/// Largest value written in one key (etcd refuses requests over 1.5 MiB by default).
const CHUNK_BYTES: usize = 1024 * 1024;

/// The snapshot pointer.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotPointer {
    generation: String,
    chunks: u32,
    journal_upto: u64,
}

/// The head: last commit index and next event sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    head: u64,
    next_sequence: u64,
}

impl Head {
    fn encode(self) -> String {
        format!("{:016x}/{:016x}", self.head, self.next_sequence)
    }

    fn decode(bytes: &[u8]) -> Result<Head, StoreError> {
        let text = std::str::from_utf8(bytes).map_err(|_| bad("meta/head"))?;
        let (h, s) = text.split_once('/').ok_or_else(|| bad("meta/head"))?;
        Ok(Head {
            head: u64::from_str_radix(h, 16).map_err(|_| bad("meta/head"))?,
            next_sequence: u64::from_str_radix(s, 16).map_err(|_| bad("meta/head"))?,
        })
    }
}

fn bad(what: &str) -> StoreError {
    StoreError::Damaged(format!("etcd key {what} does not decode"))
}

/// The etcd store.
#[derive(Debug)]
pub struct EtcdStore {
    etcd: Etcd,
    prefix: String,
    retention: u64,
    id: String,
    created: bool,
    /// The head as last seen (by a commit or a read), to try a commit without reading
    /// it first; a stale guess only costs the failed comparison.
    head: Mutex<Option<Head>>,
    /// This replica's name in the locks it holds.
    replica: String,
    /// This replica's lease, kept alive while the process lives: every lock it holds
    /// is attached to it, so a replica that dies releases its locks within the TTL.
    lease: tokio::sync::Mutex<Option<(i64, earshot_etcd::KeepAlive)>>,
    /// Lock takes and releases, many per transaction (a reconciliation pass takes
    /// the locks of a failed node's hundreds of interactions at once).
    locks: WriteBatcher,
}

/// TTL of a replica's lease, in seconds: how long the locks of a replica that died
/// without releasing them stay held.
pub const REPLICA_LEASE_TTL_S: i64 = 5;

/// Longest wait for a lock another replica holds before the mutation is refused
/// (ABORTED, retry): a mutation holds it for a few store and engine round trips.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Deletes a lock's key if it is still the one we took.
async fn release(locks: &WriteBatcher, guard: LockGuard) {
    let result = locks
        .write_if(
            guard.key.clone(),
            Expect::ModRevision(guard.revision),
            Write::Delete,
        )
        .await;
    if let Err(e) = result {
        tracing::warn!(key = %guard.key, error = %e, "lock not released; it expires with the lease");
    }
}

/// A lock held in etcd ([`EtcdStore::lock`]).
#[derive(Debug)]
pub struct LockGuard {
    key: String,
    revision: i64,
}

fn hex(n: u64) -> String {
    format!("{n:016x}")
}

fn parse_hex_suffix(key: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(key).ok()?;
    let last = text.rsplit('/').next()?;
    u64::from_str_radix(last, 16).ok()
}

fn json<T: for<'a> Deserialize<'a>>(kv: &KeyValue) -> Result<T, StoreError> {
    Ok(serde_json::from_slice(&kv.value)?)
}

impl EtcdStore {
    /// Connects to `endpoints` and opens the store under `prefix`, creating its identity
    /// and head if this is the first replica ever. `retention` bounds the event log.
    pub async fn open(
        endpoints: &[String],
        prefix: &str,
        retention: u64,
    ) -> Result<EtcdStore, StoreError> {
        let etcd = Etcd::new(endpoints)?;
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let id_key = format!("{prefix}meta/store_id");
        let head_key = format!("{prefix}meta/head");
        let fresh = format!("store-{:016x}", random_id());
        let initial = Head {
            head: 0,
            next_sequence: 1,
        };
        let created = etcd
            .txn(
                vec![absent(id_key.clone())],
                vec![
                    put(id_key.clone(), fresh.clone(), 0),
                    put(head_key, initial.encode(), 0),
                ],
                vec![],
            )
            .await?
            .succeeded;
        let id = if created {
            fresh
        } else {
            let r = etcd.range(id_key.as_bytes(), &[], 0, 0).await?;
            let kv = r.kvs.first().ok_or_else(|| bad("meta/store_id"))?;
            String::from_utf8(kv.value.clone()).map_err(|_| bad("meta/store_id"))?
        };
        let etcd_for_locks = etcd.clone();
        Ok(EtcdStore {
            etcd,
            prefix,
            retention: retention.max(1),
            id,
            created,
            head: Mutex::new(None),
            replica: format!("replica-{:016x}", random_id()),
            lease: tokio::sync::Mutex::new(None),
            locks: WriteBatcher::start(etcd_for_locks),
        })
    }

    /// This replica's lease, granted (again) if there is none or it was lost.
    async fn replica_lease(&self) -> Result<i64, StoreError> {
        let mut lease = self.lease.lock().await;
        if let Some((id, keep)) = lease.as_ref()
            && keep.deadline.borrow().is_some()
        {
            return Ok(*id);
        }
        let id = self.etcd.grant(REPLICA_LEASE_TTL_S).await?;
        let keep = self.etcd.keep_alive(id, REPLICA_LEASE_TTL_S);
        *lease = Some((id, keep));
        Ok(id)
    }

    /// Takes the lock `name` (an interaction id, or `reconcile/<node>`), waiting up to
    /// [`LOCK_WAIT`] while another replica holds it. The lock lives under this
    /// replica's lease: if the process dies, it is released within
    /// [`REPLICA_LEASE_TTL_S`].
    pub async fn lock(&self, name: &str) -> Result<LockGuard, StoreError> {
        let key = self.key(&format!("locks/{name}"));
        let started = tokio::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(1);
        // `Absent` first; a key found holding our own name (a release that failed, or
        // one still on its way: see `unlock_in_background`) is taken afresh, so that a
        // release of the old revision landing later cannot delete it under us.
        let mut expect = Expect::Absent;
        loop {
            let lease = self.replica_lease().await?;
            let write = Write::Put {
                value: self.replica.clone().into_bytes(),
                lease,
            };
            let outcome = match self
                .locks
                .write_if(key.clone(), expect.clone(), write)
                .await
            {
                Ok(o) => o,
                Err(earshot_etcd::EtcdError::Refused(why)) if why.contains("lease not found") => {
                    // The lease expired (etcd unreachable for a while): take a new one
                    // (once: the other locks of the batch met the same error).
                    let mut held = self.lease.lock().await;
                    if held.as_ref().is_some_and(|(id, _)| *id == lease) {
                        *held = None;
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let holder = match outcome {
                WriteOutcome::Written { revision } => return Ok(LockGuard { key, revision }),
                WriteOutcome::Current(holder) => holder,
            };
            expect = match holder {
                Some(kv) if kv.value == self.replica.as_bytes() => {
                    Expect::ModRevision(kv.mod_revision)
                }
                // Released meanwhile: take it at once.
                None => Expect::Absent,
                Some(_) => {
                    if started.elapsed() > LOCK_WAIT {
                        return Err(StoreError::Locked(name.to_owned()));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(20));
                    Expect::Absent
                }
            };
        }
    }

    /// Releases a lock (if it is still the one taken: a lock lost with the lease and
    /// taken by another replica since is left alone).
    pub async fn unlock(&self, guard: LockGuard) {
        release(&self.locks, guard).await;
    }

    /// Releases a lock without waiting for etcd's answer: the reconciler's pass over
    /// many interactions (a failed node's calls) then pays one write per interaction
    /// on its path instead of two. A later `lock` of ours finds the key ours if the
    /// release has not landed yet; another replica waits for it as for any lock.
    pub fn unlock_in_background(&self, guard: LockGuard) {
        let locks = self.locks.clone();
        tokio::spawn(async move { release(&locks, guard).await });
    }

    /// The client, for the cluster's own keys (nodes, placement) beside the store's.
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// The key prefix, ending in `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The store's identity.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this process created the store.
    pub fn is_new(&self) -> bool {
        self.created
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn remember(&self, head: Head) {
        *self.head.lock().unwrap_or_else(|e| e.into_inner()) = Some(head);
    }

    fn cached(&self) -> Option<Head> {
        *self.head.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn read_head(&self, revision: i64) -> Result<(Head, i64), StoreError> {
        let r = self
            .etcd
            .range(self.key("meta/head").as_bytes(), &[], revision, 0)
            .await?;
        let kv = r.kvs.first().ok_or_else(|| bad("meta/head"))?;
        let head = Head::decode(&kv.value)?;
        if revision == 0 {
            self.remember(head);
        }
        Ok((head, r.revision))
    }

    /// Snapshot, journal after it, leg records and head, all at one revision.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        let (head, revision) = self.read_head(0).await?;
        let pointer = self
            .etcd
            .range(self.key("snap/current").as_bytes(), &[], revision, 0)
            .await?;
        let snapshot = match pointer.kvs.first() {
            Some(kv) => {
                let p: SnapshotPointer = json(kv)?;
                let chunks = self
                    .etcd
                    .range_prefix(
                        self.key(&format!("snap/{}/", p.generation)).as_bytes(),
                        revision,
                    )
                    .await?;
                if chunks.kvs.len() != p.chunks as usize {
                    return Err(StoreError::Damaged(format!(
                        "snapshot {} has {} of its {} chunks",
                        p.generation,
                        chunks.kvs.len(),
                        p.chunks
                    )));
                }
                let bytes: Vec<u8> = chunks.kvs.into_iter().flat_map(|kv| kv.value).collect();
                Some(serde_json::from_slice::<Snapshot>(&bytes)?)
            }
            None => None,
        };
        let after = snapshot.as_ref().map_or(0, |s| s.journal_upto);
        let mut journal = Vec::new();
        for (index, record) in self.records_between(after, revision).await?.0 {
            if let Some(entry) = record.entry {
                journal.push((index, entry));
            }
        }
        let mut legs = Vec::new();
        for kv in self
            .etcd
            .range_prefix(self.key("legs/").as_bytes(), revision)
            .await?
            .kvs
        {
            let text = String::from_utf8_lossy(&kv.key).into_owned();
            let rest = text.strip_prefix(&self.key("legs/")).unwrap_or(&text);
            let Some((i, p)) = rest.split_once('/') else {
                return Err(bad(&text));
            };
            legs.push(((i.to_owned(), p.to_owned()), json(&kv)?));
        }
        Ok(Loaded {
            head: head.head,
            snapshot,
            journal,
            legs,
        })
    }

    /// Commit records with index > `after`, as of `revision` (0: latest).
    async fn records_between(
        &self,
        after: u64,
        revision: i64,
    ) -> Result<(Vec<(u64, CommitRecord)>, i64), StoreError> {
        let prefix = self.key("journal/");
        let from = self.key(&format!("journal/{}", hex(after + 1)));
        let end = prefix_end(prefix.as_bytes());
        let mut out = Vec::new();
        let mut start = from.into_bytes();
        let mut at = revision;
        loop {
            let page = self.etcd.range(&start, &end, at, 500).await?;
            at = page.revision;
            for kv in &page.kvs {
                let index = parse_hex_suffix(&kv.key).ok_or_else(|| bad("journal"))?;
                out.push((index, json(kv)?));
            }
            match page.kvs.last() {
                Some(last) if page.more => {
                    start = last.key.clone();
                    start.push(0);
                }
                _ => return Ok((out, at)),
            }
        }
    }

    /// Every commit after `head`, in order; [`StoreError::Behind`] if a snapshot has
    /// deleted some of them.
    pub async fn records_after(&self, head: u64) -> Result<Vec<(u64, CommitRecord)>, StoreError> {
        let (records, revision) = self.records_between(head, 0).await?;
        if let Some((first, _)) = records.first()
            && *first != head + 1
        {
            return Err(StoreError::Behind { oldest: *first });
        }
        if records.is_empty() {
            // Nothing after `head` in the journal: either nothing happened or a
            // snapshot deleted it all. The head key, at the same revision, tells which.
            let (now, _) = self.read_head(revision).await?;
            if now.head > head {
                return Err(StoreError::Behind {
                    oldest: now.head + 1,
                });
            }
        }
        Ok(records)
    }

    /// Makes one mutation durable if `meta/head` still says `base`.
    pub async fn commit(
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
        let mut guess = match self.cached() {
            Some(h) if h.head == base => h,
            _ => self.read_head(0).await?.0,
        };
        loop {
            if guess.head != base {
                return Err(StoreError::Conflict { head: guess.head });
            }
            let index = base + 1;
            let records: Vec<EventRecord> = events
                .iter()
                .enumerate()
                .map(|(k, e)| EventRecord::of(guess.next_sequence + k as u64, e, actor))
                .collect();
            let next = Head {
                head: index,
                next_sequence: guess.next_sequence + records.len() as u64,
            };
            let record = CommitRecord {
                entry: entry.cloned(),
                events: records.clone(),
                puts: puts.to_vec(),
                deletes: deletes.to_vec(),
            };
            let mut ops = vec![
                put(self.key("meta/head"), next.encode(), 0),
                put(
                    self.key(&format!("journal/{}", hex(index))),
                    serde_json::to_vec(&record)?,
                    0,
                ),
            ];
            for r in &records {
                let bytes = serde_json::to_vec(r)?;
                ops.push(put(
                    self.key(&format!("events/{}", hex(r.sequence))),
                    bytes.clone(),
                    0,
                ));
                if !r.interaction_id.is_empty() {
                    ops.push(put(
                        self.key(&format!(
                            "timeline/{}/{}",
                            r.interaction_id,
                            hex(r.sequence)
                        )),
                        bytes,
                        0,
                    ));
                }
            }
            if !records.is_empty() && next.next_sequence > self.retention + 1 {
                // Keep the last `retention` events: delete everything before.
                let keep_from = next.next_sequence - self.retention;
                ops.push(delete(
                    self.key("events/"),
                    self.key(&format!("events/{}", hex(keep_from))),
                ));
            }
            // Leg records in the same transaction. A reconciliation after an engine
            // restart can carry thousands: etcd runs with `--max-txn-ops` and
            // `--max-request-bytes` raised for that (docs/cluster.md).
            let mut leg_ops = Vec::new();
            for ((i, p), rec) in puts {
                leg_ops.push(put(
                    self.key(&format!("legs/{i}/{p}")),
                    serde_json::to_vec(rec)?,
                    0,
                ));
            }
            for (i, p) in deletes {
                leg_ops.push(delete(self.key(&format!("legs/{i}/{p}")), Vec::new()));
            }
            ops.extend(leg_ops);
            let reply = self
                .etcd
                .txn(
                    vec![value_is(self.key("meta/head"), guess.encode())],
                    ops,
                    vec![get(self.key("meta/head"))],
                )
                .await?;
            if reply.succeeded {
                self.remember(next);
                return Ok(Committed {
                    index: entry.is_some().then_some(index),
                    head: index,
                    records,
                });
            }
            // Someone else committed (or our guess was stale): what is the head now?
            let now = reply
                .responses
                .first()
                .and_then(|r| match &r.response {
                    Some(earshot_etcd::pb::response_op::Response::ResponseRange(r)) => {
                        r.kvs.first().map(|kv| Head::decode(&kv.value))
                    }
                    _ => None,
                })
                .ok_or_else(|| bad("meta/head"))??;
            self.remember(now);
            guess = now;
        }
    }

    /// Writes a new snapshot (in chunks), then points at it and deletes the journal it
    /// covers and the previous snapshot in one transaction. A snapshot older than the
    /// current one is dropped.
    pub async fn write_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let current = self
            .etcd
            .range(self.key("snap/current").as_bytes(), &[], 0, 0)
            .await?;
        let (old, old_rev) = match current.kvs.first() {
            Some(kv) => (Some(json::<SnapshotPointer>(kv)?), kv.mod_revision),
            None => (None, 0),
        };
        if old
            .as_ref()
            .is_some_and(|o| o.journal_upto >= snapshot.journal_upto)
        {
            return Ok(());
        }
        let bytes = serde_json::to_vec(snapshot)?;
        let generation = format!("{:016x}", random_id());
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK_BYTES).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            self.etcd
                .txn(
                    vec![],
                    vec![put(
                        self.key(&format!("snap/{generation}/{n:08x}")),
                        chunk.to_vec(),
                        0,
                    )],
                    vec![],
                )
                .await?;
        }
        let pointer = SnapshotPointer {
            generation: generation.clone(),
            chunks: chunks.len() as u32,
            journal_upto: snapshot.journal_upto,
        };
        let mut ops = vec![
            put(self.key("snap/current"), serde_json::to_vec(&pointer)?, 0),
            delete(
                self.key("journal/"),
                self.key(&format!("journal/{}", hex(snapshot.journal_upto + 1))),
            ),
        ];
        if let Some(o) = &old {
            let p = self.key(&format!("snap/{}/", o.generation));
            ops.push(delete(p.clone(), prefix_end(p.as_bytes())));
        }
        let reply = self
            .etcd
            .txn(
                vec![earshot_etcd::mod_revision_is(
                    self.key("snap/current"),
                    old_rev,
                )],
                ops,
                vec![],
            )
            .await?;
        if !reply.succeeded {
            // Another replica wrote one meanwhile, or our own transaction went through
            // and its reply was lost: the client retries a timed-out call on another
            // member (during a leader change), and the retry fails the comparison our
            // first attempt changed. Deleting our chunks then would leave the pointer
            // naming a snapshot with none.
            let now = self
                .etcd
                .range(self.key("snap/current").as_bytes(), &[], 0, 0)
                .await?;
            let ours = match now.kvs.first() {
                Some(kv) => json::<SnapshotPointer>(kv)?.generation == generation,
                None => false,
            };
            if ours {
                return Ok(());
            }
            let p = self.key(&format!("snap/{generation}/"));
            self.etcd
                .txn(
                    vec![],
                    vec![delete(p.clone(), prefix_end(p.as_bytes()))],
                    vec![],
                )
                .await?;
        }
        Ok(())
    }

    /// Up to `limit` retained events after `after`.
    pub async fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let from = self.key(&format!("events/{}", hex(after.saturating_add(1))));
        let end = prefix_end(self.key("events/").as_bytes());
        let r = self
            .etcd
            .range(from.as_bytes(), &end, 0, limit as i64)
            .await?;
        r.kvs.iter().map(json).collect()
    }

    /// The oldest retained sequence, or the next one when none is retained.
    pub async fn first_retained(&self) -> Result<u64, StoreError> {
        let p = self.key("events/");
        let r = self
            .etcd
            .range(p.as_bytes(), &prefix_end(p.as_bytes()), 0, 1)
            .await?;
        match r.kvs.first() {
            Some(kv) => parse_hex_suffix(&kv.key).ok_or_else(|| bad("events")),
            None => self.next_sequence().await,
        }
    }

    /// The sequence number the next event will get.
    pub async fn next_sequence(&self) -> Result<u64, StoreError> {
        Ok(self.read_head(0).await?.0.next_sequence)
    }

    /// Keeps an ended interaction's views; the first replica to do so wins, the others'
    /// identical writes are skipped.
    pub async fn retire(
        &self,
        interaction_id: &str,
        record: &EndedRecord,
        supervisions: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let view_key = self.key(&format!("ended_i/{interaction_id}"));
        let mut ops = vec![
            put(view_key.clone(), serde_json::to_vec(record)?, 0),
            put(
                self.key(&format!("ended/{}/{interaction_id}", hex(record.ended_ms))),
                Vec::new(),
                0,
            ),
        ];
        for (id, view) in supervisions {
            ops.push(put(self.key(&format!("ended_s/{id}")), view.clone(), 0));
        }
        self.etcd.txn(vec![absent(view_key)], ops, vec![]).await?;
        Ok(())
    }

    /// An ended interaction still retained.
    pub async fn ended(&self, interaction_id: &str) -> Result<Option<EndedRecord>, StoreError> {
        let r = self
            .etcd
            .range(
                self.key(&format!("ended_i/{interaction_id}")).as_bytes(),
                &[],
                0,
                0,
            )
            .await?;
        r.kvs.first().map(json).transpose()
    }

    /// Every retained ended interaction.
    pub async fn ended_all(&self) -> Result<Vec<(String, EndedRecord)>, StoreError> {
        let p = self.key("ended_i/");
        let r = self.etcd.range_prefix(p.as_bytes(), 0).await?;
        r.kvs
            .iter()
            .map(|kv| {
                let id = String::from_utf8_lossy(&kv.key[p.len()..]).into_owned();
                Ok((id, json(kv)?))
            })
            .collect()
    }

    /// The encoded final view of an ended supervision.
    pub async fn ended_supervision(
        &self,
        supervision_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self
            .etcd
            .range(
                self.key(&format!("ended_s/{supervision_id}")).as_bytes(),
                &[],
                0,
                0,
            )
            .await?;
        Ok(r.kvs.into_iter().next().map(|kv| kv.value))
    }

    /// Every retained ended supervision view.
    pub async fn ended_supervisions(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let p = self.key("ended_s/");
        let r = self.etcd.range_prefix(p.as_bytes(), 0).await?;
        Ok(r.kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key[p.len()..]).into_owned(),
                    kv.value,
                )
            })
            .collect())
    }

    /// Deletes up to `limit` interactions that ended before `ended_before_ms`.
    pub async fn prune_ended(
        &self,
        ended_before_ms: u64,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let p = self.key("ended/");
        let end = self.key(&format!("ended/{}", hex(ended_before_ms)));
        let r = self
            .etcd
            .range(p.as_bytes(), end.as_bytes(), 0, limit as i64)
            .await?;
        let mut pruned = 0;
        for kv in r.kvs {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let Some(id) = key.rsplit('/').next().map(str::to_owned) else {
                continue;
            };
            let mut ops = vec![delete(kv.key.clone(), Vec::new())];
            if let Some(record) = self.ended(&id).await? {
                for sid in &record.supervision_ids {
                    ops.push(delete(self.key(&format!("ended_s/{sid}")), Vec::new()));
                }
            }
            ops.push(delete(self.key(&format!("ended_i/{id}")), Vec::new()));
            let t = self.key(&format!("timeline/{id}/"));
            ops.push(delete(t.clone(), prefix_end(t.as_bytes())));
            self.etcd.txn(vec![], ops, vec![]).await?;
            pruned += 1;
        }
        Ok(pruned)
    }

    /// Every event of one interaction, in order.
    pub async fn timeline(&self, interaction_id: &str) -> Result<Vec<EventRecord>, StoreError> {
        let p = self.key(&format!("timeline/{interaction_id}/"));
        let r = self.etcd.range_prefix(p.as_bytes(), 0).await?;
        r.kvs.iter().map(json).collect()
    }

    /// Follows other replicas' commits: every commit record written under the journal
    /// prefix from now on, as `(index, record)`, in order. The receiver ends when the
    /// watch cannot go on (etcd unreachable for `give_up`, or compacted past it); the
    /// caller then catches up with [`EtcdStore::records_after`] and follows again.
    pub async fn follow(
        &self,
        give_up: std::time::Duration,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<(u64, CommitRecord), StoreError>>, StoreError>
    {
        let (_, revision) = self.read_head(0).await?;
        let mut batches = self
            .etcd
            .watch(self.key("journal/").as_bytes(), revision + 1, give_up);
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            while let Some(batch) = batches.recv().await {
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                for change in batch.changes {
                    if change.deleted {
                        continue; // snapshots delete the journal they cover
                    }
                    let item = match parse_hex_suffix(&change.kv.key) {
                        Some(index) => json(&change.kv).map(|r| (index, r)),
                        None => Err(bad("journal")),
                    };
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// 64 random bits (the kernel's pool; only distinctness matters).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_round_trips_and_sorts_as_text() {
        let h = Head {
            head: 41,
            next_sequence: 9000,
        };
        assert_eq!(Head::decode(h.encode().as_bytes()).unwrap(), h);
        assert!(hex(9) < hex(10), "journal keys sort in index order");
        assert_eq!(parse_hex_suffix(b"/p/journal/000000000000002a"), Some(42));
        assert!(Head::decode(b"junk").is_err());
    }
}
