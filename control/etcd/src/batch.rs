//! Conditional writes, many per transaction ("group commit").
//!
//! A failed engine node's hundreds of interactions are each moved with a put that
//! compares the old placement, under a lock taken with a put that compares the key's
//! absence and released with a delete that compares its revision. One transaction per
//! write costs one raft commit each (170-211 ms for a thousand on this machine's
//! 3-member test cluster, 256 at a time); a [`WriteBatcher`] sends the writes that queued
//! while one transaction was in flight together in the next, at most [`MAX_BATCH`]
//! (etcd's default `--max-txn-ops`), so a lone write still goes at once and a thousand
//! go in about eight commits (29-42 ms; `examples/batch_timing.rs`).
//!
//! The batch is one transaction: every comparison holds, or nothing is written. When
//! one fails, the failure branch reads every key back, and each write learns its own
//! fate: a write whose comparison did hold is sent again in the next batch (it is not
//! failed by a neighbour), a write whose key holds something else is answered with
//! what it holds. Two writes of one key never share a batch (etcd refuses duplicate
//! keys in a transaction): the later waits for the next. An etcd error (the lease
//! gone, no member answering) fails every write of its batch alike, so writes under
//! different leases belong in different batchers.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};

use crate::pb::response_op::Response;
use crate::{
    Compare, Etcd, EtcdError, KeyValue, absent, delete, get, mod_revision_is, put, value_is,
};

/// Most puts in one transaction: etcd's default `--max-txn-ops` (128) bounds each of a
/// transaction's compare, success and failure lists.
pub const MAX_BATCH: usize = 128;

/// What a conditional write expects of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist.
    Absent,
    /// The key holds this value.
    Value(Vec<u8>),
    /// The key was last modified at this revision.
    ModRevision(i64),
}

impl Expect {
    fn compare(&self, key: &[u8]) -> Compare {
        match self {
            Expect::Absent => absent(key.to_vec()),
            Expect::Value(v) => value_is(key.to_vec(), v.clone()),
            Expect::ModRevision(r) => mod_revision_is(key.to_vec(), *r),
        }
    }

    fn holds(&self, current: Option<&KeyValue>) -> bool {
        match (self, current) {
            (Expect::Absent, None) => true,
            (Expect::Value(v), Some(kv)) => kv.value == *v,
            (Expect::ModRevision(r), Some(kv)) => kv.mod_revision == *r,
            _ => false,
        }
    }
}

/// What a conditional write does when its expectation holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Puts `value`, attached to `lease` (0: none).
    Put {
        /// The new value.
        value: Vec<u8>,
        /// The lease it lives under (0: none).
        lease: i64,
    },
    /// Deletes the key.
    Delete,
}

/// What became of one conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The expectation held and the change is applied, at this revision.
    Written {
        /// The revision of the transaction that applied it (the key's new
        /// modification revision, for a put).
        revision: i64,
    },
    /// The key held something else: this (`None`: absent). Nothing was written.
    Current(Option<KeyValue>),
}

struct Pending {
    key: Vec<u8>,
    expect: Expect,
    change: Write,
    reply: oneshot::Sender<Result<WriteOutcome, EtcdError>>,
}

/// Writes waiting for the next batch, oldest first.
type Queue = VecDeque<Pending>;

/// Conditional puts sent in shared transactions (module doc). Cheap to clone; the
/// sending task ends when the last clone is dropped.
#[derive(Clone)]
pub struct WriteBatcher {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
}

impl std::fmt::Debug for WriteBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBatcher").finish_non_exhaustive()
    }
}

fn lock(queue: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    // Plain queue operations: a panic cannot leave one half done.
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

impl WriteBatcher {
    /// Starts the sending task on the current tokio runtime.
    pub fn start(etcd: Etcd) -> WriteBatcher {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
        });
        tokio::spawn(send_batches(etcd, Arc::downgrade(&shared)));
        WriteBatcher { shared }
    }

    /// Applies `change` to `key` if the key is as `expect`ed. An etcd error fails
    /// every write of its batch alike.
    pub async fn write_if(
        &self,
        key: impl Into<Vec<u8>>,
        expect: Expect,
        change: Write,
    ) -> Result<WriteOutcome, EtcdError> {
        let (reply, outcome) = oneshot::channel();
        lock(&self.shared.queue).push_back(Pending {
            key: key.into(),
            expect,
            change,
            reply,
        });
        self.shared.wake.notify_one();
        outcome
            .await
            .unwrap_or_else(|_| Err(EtcdError::Unavailable("the put batcher stopped".into())))
    }
}

/// Takes up to [`MAX_BATCH`] waiting puts, no key twice.
fn take_batch(queue: &Mutex<Queue>) -> Vec<Pending> {
    let mut q = lock(queue);
    let mut keys = BTreeSet::new();
    let mut batch = Vec::new();
    let mut later = VecDeque::new();
    while batch.len() < MAX_BATCH {
        let Some(p) = q.pop_front() else {
            break;
        };
        if keys.insert(p.key.clone()) {
            batch.push(p);
        } else {
            later.push_back(p);
        }
    }
    // Puts held back keep their place ahead of everything queued after them.
    while let Some(p) = later.pop_back() {
        q.push_front(p);
    }
    batch
}

async fn send_batches(etcd: Etcd, shared: std::sync::Weak<Shared>) {
    loop {
        let Some(s) = shared.upgrade() else {
            return;
        };
        let notified = s.wake.notified();
        let batch = take_batch(&s.queue);
        if batch.is_empty() {
            // Wakes on a new put, or now and then to notice the batcher was dropped.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), notified).await;
            continue;
        }
        let retry = send(&etcd, batch).await;
        let mut q = lock(&s.queue);
        for p in retry.into_iter().rev() {
            q.push_front(p);
        }
    }
}

/// Sends one batch; returns the puts to send again (their comparison held, a
/// neighbour's did not).
async fn send(etcd: &Etcd, batch: Vec<Pending>) -> Vec<Pending> {
    let compares = batch.iter().map(|p| p.expect.compare(&p.key)).collect();
    let changes = batch
        .iter()
        .map(|p| match &p.change {
            Write::Put { value, lease } => put(p.key.clone(), value.clone(), *lease),
            Write::Delete => delete(p.key.clone(), Vec::new()),
        })
        .collect();
    let reads = batch.iter().map(|p| get(p.key.clone())).collect();
    let reply = match etcd.txn(compares, changes, reads).await {
        Ok(reply) => reply,
        Err(e) => {
            for p in batch {
                let _ = p.reply.send(Err(e.clone()));
            }
            return Vec::new();
        }
    };
    if reply.succeeded {
        let revision = reply.header.as_ref().map_or(0, |h| h.revision);
        for p in batch {
            let _ = p.reply.send(Ok(WriteOutcome::Written { revision }));
        }
        return Vec::new();
    }
    let mut retry = Vec::new();
    for (p, read) in batch.into_iter().zip(reply.responses) {
        let current = match read.response {
            Some(Response::ResponseRange(r)) => r.kvs.into_iter().next(),
            _ => None,
        };
        if p.expect.holds(current.as_ref()) {
            retry.push(p);
        } else {
            let _ = p.reply.send(Ok(WriteOutcome::Current(current)));
        }
    }
    retry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::EtcdCluster;

    fn put_of(value: &str) -> Write {
        Write::Put {
            value: value.as_bytes().to_vec(),
            lease: 0,
        }
    }

    fn value_of(outcome: &WriteOutcome) -> Option<Vec<u8>> {
        match outcome {
            WriteOutcome::Current(kv) => kv.as_ref().map(|kv| kv.value.clone()),
            WriteOutcome::Written { .. } => panic!("written, not refused"),
        }
    }

    #[tokio::test]
    async fn each_put_of_a_shared_transaction_learns_its_own_fate() {
        let Some(cluster) = EtcdCluster::start(1).await else {
            return;
        };
        let etcd = Etcd::new(&cluster.endpoints()).expect("endpoints");
        etcd.txn(vec![], vec![put("/b/held", "other", 0)], vec![])
            .await
            .expect("seed");
        let batcher = WriteBatcher::start(etcd.clone());
        // Three hundred puts at once: they share transactions (more than one, fewer
        // than one each), and the one whose comparison fails fails alone.
        let mut puts = Vec::new();
        for i in 0..300 {
            let b = batcher.clone();
            puts.push(tokio::spawn(async move {
                b.write_if(format!("/b/k{i}"), Expect::Absent, put_of(&format!("v{i}")))
                    .await
            }));
        }
        let wrong = batcher
            .write_if("/b/held", Expect::Value(b"mine".to_vec()), put_of("new"))
            .await
            .expect("etcd answers");
        assert_eq!(value_of(&wrong), Some(b"other".to_vec()));
        for (i, p) in puts.into_iter().enumerate() {
            let outcome = p.await.expect("task").expect("etcd answers");
            assert!(
                matches!(outcome, WriteOutcome::Written { .. }),
                "put {i}: {outcome:?}"
            );
        }
        let written = etcd.range_prefix(b"/b/k", 0).await.expect("read");
        assert_eq!(written.kvs.len(), 300);
        let held = etcd.range(b"/b/held", &[], 0, 0).await.expect("read");
        assert_eq!(held.kvs[0].value, b"other");
        // A put whose expected value holds succeeds; the same put again does not.
        let first = batcher
            .write_if("/b/k7", Expect::Value(b"v7".to_vec()), put_of("w7"))
            .await
            .expect("etcd answers");
        let WriteOutcome::Written { revision: put_at } = first else {
            panic!("{first:?}")
        };
        let again = batcher
            .write_if("/b/k7", Expect::Value(b"v7".to_vec()), put_of("w7"))
            .await
            .expect("etcd answers");
        assert_eq!(value_of(&again), Some(b"w7".to_vec()));
        // A delete at an older revision does nothing; at the put's revision it deletes.
        let stale = batcher
            .write_if("/b/k7", Expect::ModRevision(put_at - 1), Write::Delete)
            .await
            .expect("etcd answers");
        assert_eq!(value_of(&stale), Some(b"w7".to_vec()));
        let deleted = batcher
            .write_if("/b/k7", Expect::ModRevision(put_at), Write::Delete)
            .await
            .expect("etcd answers");
        assert!(
            matches!(deleted, WriteOutcome::Written { .. }),
            "{deleted:?}"
        );
        assert!(
            etcd.range(b"/b/k7", &[], 0, 0)
                .await
                .expect("read")
                .kvs
                .is_empty()
        );
        // The revision moved by fewer transactions than puts: they were batched.
        let revision = etcd
            .range(b"/b/k0", &[], 0, 0)
            .await
            .expect("read")
            .revision;
        assert!(revision < 200, "300 puts took {revision} revisions");
    }

    #[test]
    fn a_batch_never_holds_one_key_twice_and_the_later_put_keeps_its_place() {
        let queue = Mutex::new(Queue::default());
        let mut replies = Vec::new();
        for key in ["a", "b", "a", "c", "a"] {
            let (reply, rx) = oneshot::channel();
            replies.push(rx);
            lock(&queue).push_back(Pending {
                key: key.into(),
                expect: Expect::Absent,
                change: Write::Delete,
                reply,
            });
        }
        let keys = |b: &[Pending]| {
            b.iter()
                .map(|p| String::from_utf8_lossy(&p.key).into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&take_batch(&queue)), ["a", "b", "c"]);
        assert_eq!(keys(&take_batch(&queue)), ["a"]);
        assert_eq!(keys(&take_batch(&queue)), ["a"]);
        assert!(take_batch(&queue).is_empty());
    }
}
