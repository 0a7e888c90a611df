//! Conditional puts, many per transaction ("group commit").
//!
//! A failed engine node's hundreds of interactions are each moved with a put that
//! compares the old value. One transaction per put costs one raft commit each; a
//! [`PutBatcher`] sends the puts that queued while one transaction was in flight
//! together in the next, at most [`MAX_BATCH`] (etcd's default `--max-txn-ops`), so a
//! lone put still goes at once and a thousand go in about eight commits.
//!
//! The batch is one transaction: every comparison holds, or nothing is written. When
//! one fails, the failure branch reads every key back, and each put learns its own
//! fate: a put whose comparison did hold is sent again in the next batch (it is not
//! failed by a neighbour), a put whose key holds something else is answered with what
//! it holds. Two puts of one key never share a batch (etcd refuses duplicate keys in a
//! transaction): the later waits for the next.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};

use crate::pb::response_op::Response;
use crate::{Etcd, EtcdError, absent, get, put, value_is};

/// Most puts in one transaction: etcd's default `--max-txn-ops` (128) bounds each of a
/// transaction's compare, success and failure lists.
pub const MAX_BATCH: usize = 128;

/// What became of one conditional put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// The key held the expected value (or was absent, if that was expected) and now
    /// holds the new one.
    Written,
    /// The key held something else: this (`None`: absent). Nothing was written.
    Current(Option<Vec<u8>>),
}

struct Pending {
    key: Vec<u8>,
    /// `None`: the key must not exist.
    expected: Option<Vec<u8>>,
    value: Vec<u8>,
    reply: oneshot::Sender<Result<PutOutcome, EtcdError>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Pending>,
}

/// Conditional puts sent in shared transactions (module doc). Cheap to clone; the
/// sending task ends when the last clone is dropped.
#[derive(Clone)]
pub struct PutBatcher {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
}

impl std::fmt::Debug for PutBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutBatcher").finish_non_exhaustive()
    }
}

fn lock(queue: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    // Plain queue operations: a panic cannot leave one half done.
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

impl PutBatcher {
    /// Starts the sending task on the current tokio runtime.
    pub fn start(etcd: Etcd) -> PutBatcher {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
        });
        tokio::spawn(send_batches(etcd, Arc::downgrade(&shared)));
        PutBatcher { shared }
    }

    /// Puts `value` at `key` if the key holds `expected` (`None`: if it is absent).
    /// An etcd error fails every put of its batch alike.
    pub async fn put_if(
        &self,
        key: impl Into<Vec<u8>>,
        expected: Option<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<PutOutcome, EtcdError> {
        let (reply, outcome) = oneshot::channel();
        lock(&self.shared.queue).waiting.push_back(Pending {
            key: key.into(),
            expected,
            value: value.into(),
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
        let Some(p) = q.waiting.pop_front() else {
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
        q.waiting.push_front(p);
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
            q.waiting.push_front(p);
        }
    }
}

/// Sends one batch; returns the puts to send again (their comparison held, a
/// neighbour's did not).
async fn send(etcd: &Etcd, batch: Vec<Pending>) -> Vec<Pending> {
    let compares = batch
        .iter()
        .map(|p| match &p.expected {
            None => absent(p.key.clone()),
            Some(v) => value_is(p.key.clone(), v.clone()),
        })
        .collect();
    let puts = batch
        .iter()
        .map(|p| put(p.key.clone(), p.value.clone(), 0))
        .collect();
    let reads = batch.iter().map(|p| get(p.key.clone())).collect();
    let reply = match etcd.txn(compares, puts, reads).await {
        Ok(reply) => reply,
        Err(e) => {
            for p in batch {
                let _ = p.reply.send(Err(e.clone()));
            }
            return Vec::new();
        }
    };
    if reply.succeeded {
        for p in batch {
            let _ = p.reply.send(Ok(PutOutcome::Written));
        }
        return Vec::new();
    }
    let mut retry = Vec::new();
    for (p, read) in batch.into_iter().zip(reply.responses) {
        let current = match read.response {
            Some(Response::ResponseRange(r)) => r.kvs.into_iter().next().map(|kv| kv.value),
            _ => None,
        };
        if current == p.expected {
            retry.push(p);
        } else {
            let _ = p.reply.send(Ok(PutOutcome::Current(current)));
        }
    }
    retry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::EtcdCluster;

    #[tokio::test]
    async fn each_put_of_a_shared_transaction_learns_its_own_fate() {
        let Some(cluster) = EtcdCluster::start(1).await else {
            return;
        };
        let etcd = Etcd::new(&cluster.endpoints()).expect("endpoints");
        etcd.txn(vec![], vec![put("/b/held", "other", 0)], vec![])
            .await
            .expect("seed");
        let batcher = PutBatcher::start(etcd.clone());
        // Three hundred puts at once: they share transactions (more than one, fewer
        // than one each), and the one whose comparison fails fails alone.
        let mut puts = Vec::new();
        for i in 0..300 {
            let b = batcher.clone();
            puts.push(tokio::spawn(async move {
                b.put_if(format!("/b/k{i}"), None, format!("v{i}")).await
            }));
        }
        let wrong = batcher
            .put_if("/b/held", Some(b"mine".to_vec()), "new")
            .await
            .expect("etcd answers");
        assert_eq!(wrong, PutOutcome::Current(Some(b"other".to_vec())));
        for (i, p) in puts.into_iter().enumerate() {
            let outcome = p.await.expect("task").expect("etcd answers");
            assert_eq!(outcome, PutOutcome::Written, "put {i}");
        }
        let written = etcd.range_prefix(b"/b/k", 0).await.expect("read");
        assert_eq!(written.kvs.len(), 300);
        let held = etcd.range(b"/b/held", &[], 0, 0).await.expect("read");
        assert_eq!(held.kvs[0].value, b"other");
        // A put whose expected value holds succeeds; the same put again does not.
        let first = batcher
            .put_if("/b/k7", Some(b"v7".to_vec()), "w7")
            .await
            .expect("etcd answers");
        assert_eq!(first, PutOutcome::Written);
        let again = batcher
            .put_if("/b/k7", Some(b"v7".to_vec()), "w7")
            .await
            .expect("etcd answers");
        assert_eq!(again, PutOutcome::Current(Some(b"w7".to_vec())));
        // The revision moved by fewer transactions than puts: they were batched.
        let revision = etcd
            .range(b"/b/k7", &[], 0, 0)
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
            lock(&queue).waiting.push_back(Pending {
                key: key.into(),
                expected: None,
                value: Vec::new(),
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
