//! # earshot-etcd: the small etcd v3 client earshot's cluster mode uses
//!
//! earshot keeps its cluster state in etcd (SPEC section 7): control replicas commit
//! with transactions that compare the revisions they read, follow each other through a
//! watch, and engine nodes register under leases. This crate is the client for exactly
//! that: [`Etcd::range`], [`Etcd::txn`] (with put and delete-range operations),
//! [`Etcd::watch`], and leases ([`Etcd::grant`], [`Etcd::keep_alive`],
//! [`Etcd::revoke`]), plus [`Etcd::status`] (which member leads) for tests and tools, and
//! [`WriteBatcher`]: conditional writes that share transactions (a failed node's placements
//! and locks take a few commits).
//!
//! The gRPC stubs are generated from a vendored subset of etcd's own protobuf files
//! (`proto/etcd.proto`, same names and field numbers) with protox, so the workspace
//! still builds with cargo alone (no `protoc`, no system headers).
//!
//! ## What it deliberately does not do
//! No authentication, TLS, member management, compaction or snapshots: earshot talks to
//! etcd over loopback or a private network and operators run etcd with its own tools.
//!
//! ## Contract
//! - **Fail over between members.** A call that meets a dead or partitioned member
//!   (transport error, `UNAVAILABLE`, timeout) is retried on the next endpoint, at most
//!   once per endpoint; the last error is returned if none answers.
//! - **A retried write may have been applied.** etcd can apply a request whose reply is
//!   lost. Callers make every write a transaction comparing revisions (a replayed
//!   transaction then fails its comparison) or idempotent.
//! - **A watch never skips.** [`Etcd::watch`] resumes after a failure from the revision
//!   after the last one delivered; if etcd compacted that revision away the watch ends
//!   with [`EtcdError::Compacted`] and the caller re-reads.
#![forbid(unsafe_code)]

pub mod batch;
pub mod testing;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

/// Generated etcd messages and clients (`etcdserverpb`).
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

pub use batch::{Expect, Write, WriteBatcher, WriteOutcome};
pub use pb::{Compare, KeyValue, RequestOp, ResponseOp, TxnResponse};

/// Why an etcd call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (every member down or unreachable).
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// etcd refused the request (too large, too many operations, bad argument).
    #[error("etcd refused the request: {0}")]
    Refused(String),
    /// A watch asked for revisions etcd has compacted away.
    #[error("etcd compacted revision {0}: re-read and watch again")]
    Compacted(i64),
    /// An endpoint is not a valid URL.
    #[error("bad etcd endpoint {0}")]
    BadEndpoint(String),
}

/// Whether a status means "try another member".
fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    ) || status.message().contains("leader changed")
        || status.message().contains("no leader")
}

/// The key just past every key that starts with `prefix` (etcd's `range_end` for a
/// prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): the whole key space after `prefix`.
    vec![0]
}

/// A put inside a transaction.
pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            prev_kv: false,
        })),
    }
}

/// A delete of `[key, range_end)` (of `key` alone when `range_end` is empty) inside a
/// transaction.
pub fn delete(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> RequestOp {
    RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: key.into(),
                range_end: range_end.into(),
                prev_kv: false,
            },
        )),
    }
}

/// A read of `key` inside a transaction.
pub fn get(key: impl Into<Vec<u8>>) -> RequestOp {
    RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key: key.into(),
            ..pb::RangeRequest::default()
        })),
    }
}

/// Compares `key`'s modification revision (0: the key does not exist).
pub fn mod_revision_is(key: impl Into<Vec<u8>>, revision: i64) -> Compare {
    Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Mod as i32,
        key: key.into(),
        target_union: Some(pb::compare::TargetUnion::ModRevision(revision)),
        range_end: Vec::new(),
    }
}

/// Compares `key`'s value.
pub fn value_is(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Compare {
    Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Value as i32,
        key: key.into(),
        target_union: Some(pb::compare::TargetUnion::Value(value.into())),
        range_end: Vec::new(),
    }
}

/// True when `key` does not exist (its creation revision is 0).
pub fn absent(key: impl Into<Vec<u8>>) -> Compare {
    Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.into(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
        range_end: Vec::new(),
    }
}

/// The result of a range read.
#[derive(Debug, Clone, Default)]
pub struct Range {
    /// The store revision the read saw.
    pub revision: i64,
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
    /// More keys matched than the limit allowed.
    pub more: bool,
}

/// One change seen by a watch.
#[derive(Debug, Clone)]
pub struct Change {
    /// The key was deleted (or its lease expired); otherwise it was put.
    pub deleted: bool,
    /// The key with its value (empty for a delete) and revisions.
    pub kv: KeyValue,
}

/// A batch of changes of one or more revisions, in revision order.
#[derive(Debug, Clone, Default)]
pub struct WatchBatch {
    /// The changes.
    pub changes: Vec<Change>,
    /// Every revision up to this one has been delivered.
    pub revision: i64,
}

/// An etcd client over one or more member endpoints (`http://127.0.0.1:2379`).
#[derive(Debug, Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    current: AtomicUsize,
}

/// Largest reply decoded: snapshot chunks and pages of journal records are large.
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

fn kv(ch: Channel) -> pb::kv_client::KvClient<Channel> {
    pb::kv_client::KvClient::new(ch).max_decoding_message_size(MAX_REPLY_BYTES)
}

/// Per-request timeout: long enough for a leader election (etcd's default election
/// timeout is 1 s), short enough that a partitioned member is left quickly.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

impl Etcd {
    /// A client of the members at `endpoints`. Connects lazily: a member that is down
    /// now is tried again later.
    pub fn new(endpoints: &[String]) -> Result<Etcd, EtcdError> {
        let mut channels = Vec::new();
        for e in endpoints {
            let url = if e.contains("://") {
                e.clone()
            } else {
                format!("http://{e}")
            };
            let endpoint = Endpoint::from_shared(url)
                .map_err(|_| EtcdError::BadEndpoint(e.clone()))?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true);
            channels.push(endpoint.connect_lazy());
        }
        if channels.is_empty() {
            return Err(EtcdError::BadEndpoint("(none)".into()));
        }
        Ok(Etcd {
            inner: Arc::new(Inner {
                endpoints: endpoints.to_vec(),
                channels,
                current: AtomicUsize::new(0),
            }),
        })
    }

    /// The endpoints this client uses.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// Runs `call` on the current member, moving to the next one on a retryable failure.
    async fn with_failover<T, F, Fut>(&self, mut call: F) -> Result<T, EtcdError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.inner.channels.len();
        let mut last = String::new();
        // Two rounds: a leader election can make every member refuse for a moment.
        for attempt in 0..2 * n {
            let i = self.inner.current.load(Ordering::Relaxed) % n;
            // The timeout is per call, not on the channel: watch and keep-alive streams
            // share the channel and live for hours.
            let outcome =
                tokio::time::timeout(REQUEST_TIMEOUT, call(self.inner.channels[i].clone()))
                    .await
                    .unwrap_or_else(|_| {
                        Err(tonic::Status::deadline_exceeded("etcd request timed out"))
                    });
            match outcome {
                Ok(v) => return Ok(v),
                Err(status) if retryable(&status) => {
                    last = format!("{}: {}", self.inner.endpoints[i], status.message());
                    tracing::debug!(endpoint = %self.inner.endpoints[i], error = %status.message(), "etcd member failed; trying the next");
                    let _ = self.inner.current.compare_exchange(
                        i,
                        (i + 1) % n,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    if attempt + 1 == n {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Err(status) => return Err(EtcdError::Refused(status.message().to_owned())),
            }
        }
        Err(EtcdError::Unavailable(last))
    }

    /// Reads `[key, range_end)` (`key` alone when `range_end` is empty) at `revision`
    /// (0: the latest), at most `limit` keys (0: all).
    pub async fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        revision: i64,
        limit: i64,
    ) -> Result<Range, EtcdError> {
        let request = pb::RangeRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            limit,
            revision,
            ..pb::RangeRequest::default()
        };
        let r = self
            .with_failover(|ch| {
                let request = request.clone();
                async move { kv(ch).range(request).await.map(tonic::Response::into_inner) }
            })
            .await?;
        Ok(Range {
            revision: r.header.map_or(0, |h| h.revision),
            kvs: r.kvs,
            more: r.more,
        })
    }

    /// Reads every key under `prefix` at `revision` (0: the latest), in pages.
    pub async fn range_prefix(&self, prefix: &[u8], revision: i64) -> Result<Range, EtcdError> {
        const PAGE: i64 = 1000;
        let end = prefix_end(prefix);
        let mut out = Range::default();
        let mut from = prefix.to_vec();
        let mut at = revision;
        loop {
            let page = self.range(&from, &end, at, PAGE).await?;
            // Every page at the first page's revision: one consistent view.
            at = page.revision;
            out.revision = page.revision;
            let more = page.more;
            if let Some(last) = page.kvs.last() {
                from = last.key.clone();
                from.push(0);
            }
            out.kvs.extend(page.kvs);
            if !more {
                return Ok(out);
            }
        }
    }

    /// One transaction: if every comparison holds, `success` is applied, otherwise
    /// `failure`. All of it at one revision, atomically.
    pub async fn txn(
        &self,
        compare: Vec<Compare>,
        success: Vec<RequestOp>,
        failure: Vec<RequestOp>,
    ) -> Result<TxnResponse, EtcdError> {
        let request = pb::TxnRequest {
            compare,
            success,
            failure,
        };
        self.with_failover(|ch| {
            let request = request.clone();
            async move { kv(ch).txn(request).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Grants a lease of `ttl_s` seconds; returns its id.
    pub async fn grant(&self, ttl_s: i64) -> Result<i64, EtcdError> {
        let r = self
            .with_failover(|ch| async move {
                pb::lease_client::LeaseClient::new(ch)
                    .lease_grant(pb::LeaseGrantRequest { ttl: ttl_s, id: 0 })
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await?;
        if !r.error.is_empty() {
            return Err(EtcdError::Refused(r.error));
        }
        Ok(r.id)
    }

    /// Revokes a lease: every key attached to it is deleted at once.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.with_failover(|ch| async move {
            pb::lease_client::LeaseClient::new(ch)
                .lease_revoke(pb::LeaseRevokeRequest { id: lease })
                .await
                .map(|_| ())
        })
        .await
    }

    /// Renews `lease` once; returns the remaining TTL in seconds (0 or less: the lease
    /// has expired).
    pub async fn keep_alive_once(&self, lease: i64) -> Result<i64, EtcdError> {
        self.with_failover(|ch| async move {
            let mut client = pb::lease_client::LeaseClient::new(ch);
            let request = tokio_stream::once(pb::LeaseKeepAliveRequest { id: lease });
            let mut replies = client.lease_keep_alive(request).await?.into_inner();
            match replies.message().await? {
                Some(r) => Ok(r.ttl),
                None => Err(tonic::Status::unavailable("keep-alive stream ended")),
            }
        })
        .await
    }

    /// Keeps `lease` alive in a background task, renewing every `ttl_s / 3` seconds.
    /// The returned receiver holds the deadline by which the lease is known to live
    /// (as a [`tokio::time::Instant`]); it turns `None` once renewal has failed past
    /// that deadline or etcd says the lease is gone. Dropping the [`KeepAlive`] stops
    /// renewing (the lease then expires by itself).
    pub fn keep_alive(&self, lease: i64, ttl_s: i64) -> KeepAlive {
        let (tx, rx) = watch::channel(Some(
            tokio::time::Instant::now() + Duration::from_secs(ttl_s.max(1) as u64),
        ));
        let client = self.clone();
        let task = tokio::spawn(async move {
            let period = Duration::from_millis((ttl_s.max(1) as u64 * 1000) / 3);
            loop {
                let sent = tokio::time::Instant::now();
                match client.keep_alive_once(lease).await {
                    Ok(ttl) if ttl > 0 => {
                        let _ = tx.send(Some(sent + Duration::from_secs(ttl as u64)));
                    }
                    Ok(_) => {
                        let _ = tx.send(None);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(lease, error = %e, "lease renewal failed");
                        let expired = tx.borrow().is_none_or(|d| d <= tokio::time::Instant::now());
                        if expired {
                            let _ = tx.send(None);
                            return;
                        }
                    }
                }
                tokio::time::sleep(period).await;
            }
        });
        KeepAlive { deadline: rx, task }
    }

    /// The member status of the endpoint at `index` (leader id, raft term).
    pub async fn status(&self, index: usize) -> Result<pb::StatusResponse, EtcdError> {
        let ch = self
            .inner
            .channels
            .get(index)
            .cloned()
            .ok_or_else(|| EtcdError::BadEndpoint(format!("#{index}")))?;
        pb::maintenance_client::MaintenanceClient::new(ch)
            .status(pb::StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| EtcdError::Unavailable(s.message().to_owned()))
    }

    /// Watches every key under `prefix` from `start_revision` (inclusive). Batches
    /// arrive in revision order; after a member failure the watch resumes on another
    /// member from the next undelivered revision. The channel ends with an error when
    /// etcd has compacted the revision to resume from, or when every member stayed
    /// unreachable for `give_up`.
    pub fn watch(
        &self,
        prefix: &[u8],
        start_revision: i64,
        give_up: Duration,
    ) -> mpsc::Receiver<Result<WatchBatch, EtcdError>> {
        let (tx, rx) = mpsc::channel(64);
        let client = self.clone();
        let prefix = prefix.to_vec();
        tokio::spawn(async move {
            let mut next = start_revision;
            let mut failing_since: Option<tokio::time::Instant> = None;
            loop {
                let n = client.inner.channels.len();
                let i = client.inner.current.load(Ordering::Relaxed) % n;
                match watch_once(&client.inner.channels[i], &prefix, next, &tx).await {
                    WatchEnd::Receiver => return,
                    WatchEnd::Compacted(rev) => {
                        let _ = tx.send(Err(EtcdError::Compacted(rev))).await;
                        return;
                    }
                    WatchEnd::Failed(resume, delivered) => {
                        next = resume;
                        if delivered {
                            failing_since = None;
                        }
                        let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() > give_up {
                            let _ = tx
                                .send(Err(EtcdError::Unavailable("watch: no member".into())))
                                .await;
                            return;
                        }
                        let _ = client.inner.current.compare_exchange(
                            i,
                            (i + 1) % n,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        rx
    }
}

enum WatchEnd {
    /// The receiver hung up.
    Receiver,
    Compacted(i64),
    /// The stream failed; resume from this revision; whether anything was delivered.
    Failed(i64, bool),
}

async fn watch_once(
    channel: &Channel,
    prefix: &[u8],
    mut next: i64,
    tx: &mpsc::Sender<Result<WatchBatch, EtcdError>>,
) -> WatchEnd {
    let (req_tx, req_rx) = mpsc::channel(1);
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                start_revision: next,
                progress_notify: true,
                prev_kv: false,
                watch_id: 0,
            },
        )),
    };
    if req_tx.send(create).await.is_err() {
        return WatchEnd::Failed(next, false);
    }
    // No per-request timeout on the stream: a separate channel without one.
    let mut client = pb::watch_client::WatchClient::new(channel.clone())
        .max_decoding_message_size(MAX_REPLY_BYTES);
    let stream = tokio_stream::wrappers::ReceiverStream::new(req_rx);
    let mut replies = match client.watch(stream).await {
        Ok(r) => r.into_inner(),
        Err(_) => return WatchEnd::Failed(next, false),
    };
    let mut delivered = false;
    loop {
        // A member cut off from its peers stops sending (even progress notifications,
        // every few minutes); a quiet stream is re-opened elsewhere after a while so a
        // partitioned member cannot hold the watch forever.
        let reply = match tokio::time::timeout(Duration::from_secs(15), replies.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None) | Err(_)) | Err(_) => return WatchEnd::Failed(next, delivered),
        };
        if reply.compact_revision > 0 {
            return WatchEnd::Compacted(reply.compact_revision);
        }
        if reply.canceled {
            return WatchEnd::Failed(next, delivered);
        }
        let revision = reply.header.as_ref().map_or(0, |h| h.revision);
        if reply.events.is_empty() {
            continue;
        }
        let mut last = next - 1;
        let changes = reply
            .events
            .into_iter()
            .filter_map(|e| {
                let deleted = e.r#type == pb::event::EventType::Delete as i32;
                let kv = e.kv?;
                last = last.max(kv.mod_revision);
                Some(Change { deleted, kv })
            })
            .collect();
        next = last + 1;
        delivered = true;
        if tx
            .send(Ok(WatchBatch {
                changes,
                revision: last.max(revision.min(last)),
            }))
            .await
            .is_err()
        {
            return WatchEnd::Receiver;
        }
    }
}

/// A lease kept alive in the background ([`Etcd::keep_alive`]).
#[derive(Debug)]
pub struct KeepAlive {
    /// Until when the lease is known to live; `None` once it is lost.
    pub deadline: watch::Receiver<Option<tokio::time::Instant>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_prefix_is_its_last_byte_plus_one() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
