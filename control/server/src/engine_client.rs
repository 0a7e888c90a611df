//! [`EngineClient`]: the engine programming API over the engine's local Unix socket
//! (`earshot_engine_api::protocol`), for the two-process deployment.
//!
//! One background task owns the connection: it connects, exchanges [`Hello`]s, reads
//! frames (replies are matched to calls by correlation id, events are queued for
//! [`EngineApi::next_event`]) and, when the socket closes, fails every pending call
//! with `Unavailable` and reconnects with capped exponential backoff. A call made
//! while disconnected fails at once with `Unavailable` rather than queueing: the
//! sidecar's reconciler re-programs the engine when it is back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use earshot_engine_api::protocol::{
    ClientFrame, Hello, MAX_FRAME_BYTES, PROTOCOL_VERSION, ServerFrame,
};
use earshot_engine_api::{BoxFuture, EngineApi, EngineError, EngineEvent, Request, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Mutex, mpsc, oneshot, watch};

/// How an [`EngineClient`] behaves.
#[derive(Debug, Clone)]
pub struct EngineClientConfig {
    /// Longest wait for one reply before the call fails `Unavailable` (default 5 s: a
    /// healthy engine acknowledges within a tick or two).
    pub call_timeout: Duration,
    /// First reconnect delay (default 100 ms), doubled per failure...
    pub reconnect_min: Duration,
    /// ...up to this (default 2 s), so a restarted engine is found quickly.
    pub reconnect_max: Duration,
}

impl Default for EngineClientConfig {
    fn default() -> Self {
        EngineClientConfig {
            call_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
        }
    }
}

type Pending = HashMap<u64, oneshot::Sender<Result<Response, EngineError>>>;

#[derive(Debug)]
struct Inner {
    config: EngineClientConfig,
    next_id: AtomicU64,
    pending: std::sync::Mutex<Pending>,
    writer: Mutex<Option<OwnedWriteHalf>>,
    events: Mutex<mpsc::UnboundedReceiver<EngineEvent>>,
    connected: watch::Receiver<bool>,
    /// Successful handshakes so far ([`EngineApi::connection_epoch`]).
    epoch: AtomicU64,
}

/// An [`EngineApi`] over the engine's Unix socket, reconnecting by itself.
#[derive(Debug, Clone)]
pub struct EngineClient {
    inner: Arc<Inner>,
}

async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l as usize <= MAX_FRAME_BYTES)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too large"))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await
}

async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

impl EngineClient {
    /// Starts connecting to the engine socket at `path` in the background (must be
    /// called inside a tokio runtime). Calls fail `Unavailable` until connected.
    pub fn connect(path: impl AsRef<Path>, config: EngineClientConfig) -> EngineClient {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (connected_tx, connected_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            config,
            next_id: AtomicU64::new(1),
            pending: std::sync::Mutex::new(HashMap::new()),
            writer: Mutex::new(None),
            events: Mutex::new(events_rx),
            connected: connected_rx,
            epoch: AtomicU64::new(0),
        });
        tokio::spawn(run_connection(
            Arc::downgrade(&inner),
            path.as_ref().to_path_buf(),
            events_tx,
            connected_tx,
        ));
        EngineClient { inner }
    }

    /// Whether the handshake has completed and the socket is open.
    pub fn is_connected(&self) -> bool {
        *self.inner.connected.borrow()
    }

    /// Waits until connected, at most `timeout`; returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    async fn call_inner(&self, request: Request) -> Result<Response, EngineError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock_pending(&self.inner.pending).insert(id, tx);
        let written = {
            let mut writer = self.inner.writer.lock().await;
            match writer.as_mut() {
                None => Err(EngineError::Unavailable(
                    "not connected to the engine".into(),
                )),
                Some(w) => write_frame(w, &ClientFrame::Call { id, request })
                    .await
                    .map_err(|e| EngineError::Unavailable(format!("engine socket: {e}"))),
            }
        };
        if let Err(e) = written {
            lock_pending(&self.inner.pending).remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(self.inner.config.call_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(EngineError::Unavailable(
                "engine connection lost before the reply".into(),
            )),
            Err(_) => {
                lock_pending(&self.inner.pending).remove(&id);
                Err(EngineError::Unavailable(format!(
                    "no reply from the engine within {:?}",
                    self.inner.config.call_timeout
                )))
            }
        }
    }
}

fn lock_pending(m: &std::sync::Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    // A panic while holding this lock cannot leave the map inconsistent (single
    // insert/remove calls), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl EngineApi for EngineClient {
    fn call(&self, request: Request) -> BoxFuture<'_, Result<Response, EngineError>> {
        Box::pin(self.call_inner(request))
    }

    fn next_event(&self) -> BoxFuture<'_, Option<EngineEvent>> {
        Box::pin(async move { self.inner.events.lock().await.recv().await })
    }

    fn connection_epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }
}

/// Connects, serves and reconnects until every [`EngineClient`] clone is dropped.
async fn run_connection(
    inner: Weak<Inner>,
    path: PathBuf,
    events: mpsc::UnboundedSender<EngineEvent>,
    connected: watch::Sender<bool>,
) {
    let mut delay = match inner.upgrade() {
        Some(i) => i.config.reconnect_min,
        None => return,
    };
    loop {
        match handshake(&path).await {
            Ok(stream) => {
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                delay = strong.config.reconnect_min;
                let (mut read, write) = stream.into_split();
                *strong.writer.lock().await = Some(write);
                // A new connection: the engine may have restarted (and lost its legs).
                strong.epoch.fetch_add(1, Ordering::AcqRel);
                drop(strong);
                let _ = connected.send(true);
                tracing::info!(path = %path.display(), "connected to the engine");
                let end = serve(&inner, &mut read, &events).await;
                let _ = connected.send(false);
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                *strong.writer.lock().await = None;
                let failed: Vec<_> = lock_pending(&strong.pending).drain().collect();
                for (_, tx) in failed {
                    let _ = tx.send(Err(EngineError::Unavailable(
                        "engine connection lost".into(),
                    )));
                }
                tracing::warn!(reason = %end, "engine connection closed; reconnecting");
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                // The engine answered but refused us (another sidecar programs it): an
                // operator must see this, not a debug line.
                tracing::error!(error = %e, path = %path.display(), "the engine refused this sidecar");
            }
            Err(e) => {
                tracing::debug!(error = %e, path = %path.display(), "engine not reachable");
            }
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let max = strong.config.reconnect_max;
        drop(strong);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(max);
    }
}

async fn handshake(path: &Path) -> std::io::Result<UnixStream> {
    let mut stream = UnixStream::connect(path).await?;
    write_frame(&mut stream, &Hello::current()).await?;
    let hello: Hello = read_frame(&mut stream)
        .await?
        .ok_or_else(|| std::io::Error::other("engine closed during the handshake"))?;
    if let Some(why) = hello.refused {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("engine refused the connection: {why}"),
        ));
    }
    if hello.protocol != "earshot-engine" || hello.version != PROTOCOL_VERSION {
        return Err(std::io::Error::other(format!(
            "engine speaks {} v{}, this sidecar {} v{PROTOCOL_VERSION}",
            hello.protocol,
            hello.version,
            Hello::current().protocol
        )));
    }
    Ok(stream)
}

/// Reads frames until the socket ends; returns why it ended.
async fn serve<R: AsyncRead + Unpin>(
    inner: &Weak<Inner>,
    read: &mut R,
    events: &mpsc::UnboundedSender<EngineEvent>,
) -> String {
    loop {
        match read_frame::<_, ServerFrame>(read).await {
            Ok(Some(ServerFrame::Reply { id, result })) => {
                let Some(strong) = inner.upgrade() else {
                    return "client dropped".into();
                };
                if let Some(tx) = lock_pending(&strong.pending).remove(&id) {
                    let _ = tx.send(result);
                }
            }
            Ok(Some(ServerFrame::Event(event))) => {
                // Unbounded on purpose: events are at most one per leg state change,
                // and blocking here would also block the replies the event handler's
                // own calls are waiting for.
                let _ = events.send(event);
            }
            Ok(None) => return "end of stream".into(),
            Err(e) => return e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use earshot_engine_api::LegId;
    use tokio::net::UnixListener;

    /// A one-connection engine stub: answers the handshake, replies `Done` to every
    /// call (after sending one event), then closes when told.
    async fn stub_engine(listener: UnixListener, close: oneshot::Receiver<()>) {
        let (mut stream, _) = listener.accept().await.unwrap();
        let _: Hello = read_frame(&mut stream).await.unwrap().unwrap();
        write_frame(&mut stream, &Hello::current()).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let server = async {
            while let Ok(Some(ClientFrame::Call { id, .. })) = read_frame(&mut read).await {
                let event = ServerFrame::Event(EngineEvent::RemoteLatched {
                    leg: LegId(7),
                    remote: ([127, 0, 0, 1], 9).into(),
                });
                write_frame(&mut write, &event).await.unwrap();
                let reply = ServerFrame::Reply {
                    id,
                    result: Ok(Response::Done),
                };
                write_frame(&mut write, &reply).await.unwrap();
            }
        };
        tokio::select! {
            () = server => {}
            _ = close => {}
        }
    }

    #[tokio::test]
    async fn calls_are_answered_events_delivered_and_a_lost_engine_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (close_tx, close_rx) = oneshot::channel();
        let stub = tokio::spawn(stub_engine(listener, close_rx));

        let client = EngineClient::connect(&path, EngineClientConfig::default());
        assert!(client.wait_connected(Duration::from_secs(5)).await);
        let reply = client.call(Request::RemoveLeg { leg: LegId(1) }).await;
        assert_eq!(reply, Ok(Response::Done));
        let event = client.next_event().await.unwrap();
        assert!(matches!(
            event,
            EngineEvent::RemoteLatched { leg: LegId(7), .. }
        ));

        close_tx.send(()).unwrap();
        stub.await.unwrap();
        let mut lost = false;
        for _ in 0..100 {
            if !client.is_connected() {
                lost = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(lost, "the client notices the closed socket");
        let err = client.call(Request::Snapshot).await.unwrap_err();
        assert!(matches!(err, EngineError::Unavailable(_)), "{err:?}");
    }
}
