//! Process and connection limits of the gRPC server.
//!
//! - [`raise_nofile`]: the open-file soft limit is raised to the hard limit at start
//!   (1,024 soft is the common server default; each gRPC connection and, in the
//!   all-in-one binary, each RTP leg is a file descriptor).
//! - [`limited_incoming`]: the accepted TCP connections, bounded: at most
//!   `max_connections` open at once (beyond that a connection is closed at once and
//!   counted, with a WARN log at most every 10 s), and a connection that sends nothing
//!   within `handshake_timeout` is closed. An accept error (EMFILE: out of file
//!   descriptors) backs off 100 ms instead of spinning, with the same rate-limited
//!   WARN.
//!
//! ## What it deliberately does not do
//! It does not limit requests per connection or their rate (tonic's concurrency and
//! HTTP/2 settings do), nor authenticate (see `security`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::metrics::RpcMetrics;

/// Default bound on concurrent gRPC connections: far above what orchestrators open (a
/// few each), far below the open-file limit a server raises itself to.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default time a new connection has to send its first bytes (TLS or HTTP/2 preface).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Shortest interval between two WARN lines about refused connections.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Raises the open-file soft limit to the hard limit; returns the limits in force
/// afterwards (soft, hard), or `None` if they cannot be read.
pub fn raise_nofile() -> Option<(u64, u64)> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        // Unlimited soft limit: nothing to raise.
        return Some((u64::MAX, u64::MAX));
    };
    let hard = hard.unwrap_or(u64::MAX);
    if soft < hard {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            return Some((soft, hard));
        }
        tracing::info!(from = soft, to = hard, "open-file limit raised");
        return Some((hard, hard));
    }
    Some((soft, hard))
}

/// `wanted` connections, at most a quarter of the open-file soft limit (`nofile`, from
/// [`raise_nofile`]): the rest is for the store, the engine socket and, in the
/// all-in-one binary, the RTP legs. Logs a WARN when it lowers the bound.
pub fn cap_connections(wanted: usize, nofile: Option<(u64, u64)>) -> usize {
    let Some((soft, _)) = nofile else {
        return wanted;
    };
    let cap = usize::try_from(soft / 4).unwrap_or(usize::MAX).max(1);
    if wanted > cap {
        tracing::warn!(
            wanted,
            cap,
            open_file_limit = soft,
            "--max-connections lowered to a quarter of the open-file limit"
        );
        return cap;
    }
    wanted
}

/// How many connections the server accepts and how long they may stay silent.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// At most this many connections open at once.
    pub max_connections: usize,
    /// A connection that sends nothing for this long after accept is closed.
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// An accepted connection holding one of the bounded slots until dropped.
#[derive(Debug)]
pub struct LimitedStream {
    inner: TcpStream,
    _slot: Slot,
    /// Until the first bytes arrive: closes the connection when it fires.
    handshake: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A connection slot; counts the open-connections gauge.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<RpcMetrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics
            .sidecar
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled
            && buf.filled().len() > before
        {
            self.handshake = None;
        }
        if polled.is_pending()
            && let Some(timer) = self.handshake.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no handshake within the handshake timeout",
            )));
        }
        polled
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for LimitedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Rate-limits a WARN line: at most one per [`WARN_EVERY`], with the count since.
#[derive(Debug)]
struct Warner {
    last: Option<tokio::time::Instant>,
    suppressed: u64,
}

impl Warner {
    fn warn(&mut self, what: &str, detail: &str) {
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(detail, similar_since_last = self.suppressed, "{what}");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// The connections accepted on `listener` within `limits`, for
/// `Server::serve_with_incoming_shutdown`. The accept loop runs on its own task and
/// ends when the returned stream is dropped.
pub fn limited_incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    metrics: Arc<RpcMetrics>,
) -> ReceiverStream<io::Result<LimitedStream>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        let mut warner = Warner {
            last: None,
            suppressed: 0,
        };
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: the socket stays readable, so retrying at once
                    // would spin a core. Back off and say so (rate-limited).
                    warner.warn("gRPC accept failed; backing off", &e.to_string());
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                metrics
                    .sidecar
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                warner.warn(
                    "gRPC connection refused: connection limit reached (--max-connections)",
                    &peer,
                );
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            metrics
                .sidecar
                .connections_open
                .fetch_add(1, Ordering::Relaxed);
            let limited = LimitedStream {
                inner: stream,
                _slot: Slot {
                    _permit: permit,
                    metrics: Arc::clone(&metrics),
                },
                handshake: Some(Box::pin(tokio::time::sleep(limits.handshake_timeout))),
            };
            if tx.send(Ok(limited)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}
