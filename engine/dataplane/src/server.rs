//! The programming API on a local Unix socket, for a separate `earshot-control` process.
//!
//! Framing and messages are `earshot_engine_api::protocol` (documented in
//! `docs/engine-protocol.md`). Each connection is served by its own thread (and one
//! that answers its calls): requests reach the shards in order per connection, up to
//! [`CALLS_IN_FLIGHT`] at once, and each reply is sent as soon as its request is
//! applied (so replies can overtake each other; the id matches them).
//!
//! ## Contract
//! - **One programming client** (by default). A client whose hello asks for
//!   [`ClientRole::Program`] (the sidecar) is accepted only while fewer than
//!   [`SocketOptions::max_programmers`] (default 1) are connected; one more gets a
//!   hello with `refused` set and is closed. A cluster's engine node accepts one per
//!   control replica (`--programmers N`): the replicas serialise their work on each
//!   interaction themselves (docs/cluster.md). Events go to the programming client
//!   connected longest, and to the next one when it leaves. Observers ([`ClientRole::Observe`]) may call
//!   `Snapshot` and `Stats` only and get no events; any number may connect. A cluster
//!   node's agent ([`ClientRole::Agent`]) is an observer that may also send `Fence` and
//!   `Mute`.
//! - **No event is lost silently.** Events go to the programming client; while none is
//!   connected they wait in a bounded buffer ([`EVENT_BACKLOG`]) and are delivered, in
//!   order, to the next programming client right after its handshake. Beyond the bound
//!   new events are dropped and counted (`EngineSnapshot::events_lost`).
//! - **The socket is private.** It is created with mode 0600 (0660 with a configured
//!   group, [`SocketOptions::group`]) whatever the umask: it is bound inside a fresh
//!   0700 directory, its mode set, then linked into place, so it is never reachable
//!   with a wider mode. A path where another engine answers is refused (the running
//!   engine keeps it), a path that is not a socket is never deleted, and a stale socket
//!   (nobody answers) is replaced. On drop the socket is removed only if it is still
//!   the one this server created.
//! - Handshakes time out ([`HANDSHAKE_TIMEOUT`]); an accept error (such as EMFILE)
//!   backs off instead of spinning.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use earshot_engine_api::protocol::{
    ClientFrame, ClientRole, Hello, PROTOCOL_VERSION, ServerFrame, read_frame, write_frame,
};
use earshot_engine_api::{EngineApi, EngineError, EngineEvent, Request};

use crate::engine::EngineHandle;

/// Events kept for the next programming client while none is connected. At one event
/// per leg state change this is minutes of a busy engine without a sidecar.
pub const EVENT_BACKLOG: usize = 65_536;

/// Longest wait for a client's hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (out of file descriptors and the like), so the accept
/// loop never spins.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How the socket is created.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// Group allowed to program the engine: the socket is then 0660 and owned by this
    /// group (the engine must be a member or root). `None`: 0600, owner only.
    pub group: Option<u32>,
    /// Programming clients accepted at once. Default 1 (one sidecar); a cluster node
    /// takes one per control replica.
    pub max_programmers: usize,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            group: None,
            max_programmers: 1,
        }
    }
}

/// A running socket server.
#[derive(Debug)]
pub struct SocketServer {
    path: PathBuf,
    /// Device and inode of the socket this server created, so that drop never removes
    /// a socket that another engine put there since.
    identity: (u64, u64),
    stop: Arc<AtomicBool>,
}

/// The programming clients' side of the event stream, and the events waiting for one.
#[derive(Debug, Default)]
struct Hub {
    /// Connection number and a write handle of each programming client, oldest first;
    /// events go to the first.
    programmers: Vec<(u64, UnixStream)>,
    max_programmers: usize,
    backlog: VecDeque<EngineEvent>,
}

type SharedHub = Arc<Mutex<Hub>>;

fn lock(hub: &SharedHub) -> std::sync::MutexGuard<'_, Hub> {
    // A panic while holding the lock cannot leave the hub inconsistent (single pushes
    // and assignments), so a poisoned lock is still usable.
    hub.lock().unwrap_or_else(|e| e.into_inner())
}

impl SocketServer {
    /// Binds `path` with default [`SocketOptions`] and serves `engine` on it.
    pub fn start(path: &Path, engine: Arc<EngineHandle>) -> io::Result<SocketServer> {
        Self::start_with(path, engine, &SocketOptions::default())
    }

    /// Binds `path` (module doc: private mode, never over a live engine or a file that
    /// is not a socket) and serves `engine` on it.
    pub fn start_with(
        path: &Path,
        engine: Arc<EngineHandle>,
        options: &SocketOptions,
    ) -> io::Result<SocketServer> {
        let (listener, identity) = bind_private(path, options)?;
        let stop = Arc::new(AtomicBool::new(false));
        let hub: SharedHub = Arc::new(Mutex::new(Hub {
            max_programmers: options.max_programmers.max(1),
            ..Hub::default()
        }));
        {
            let (engine, hub, stop) = (engine.clone(), hub.clone(), stop.clone());
            thread::Builder::new()
                .name("earshot-api-events".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let Some(ev) = block_on(engine.next_event()) else {
                            return;
                        };
                        deliver(&hub, &engine, ev);
                    }
                })?;
        }
        {
            let stop = stop.clone();
            thread::Builder::new()
                .name("earshot-api".into())
                .spawn(move || accept_loop(&listener, &engine, &hub, &stop))?;
        }
        Ok(SocketServer {
            path: path.to_path_buf(),
            identity,
            stop,
        })
    }
}

impl Drop for SocketServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag, then remove the socket file if it is
        // still ours.
        let _ = UnixStream::connect(&self.path);
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.identity)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates the listening socket at `path` (module doc, "The socket is private").
fn bind_private(path: &Path, options: &SocketOptions) -> io::Result<(UnixListener, (u64, u64))> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} is the socket of a running engine; stop it first or choose \
                         another --socket",
                        path.display()
                    ),
                ));
            }
            // A socket left by an engine that died: nobody answers on it. Refusing
            // would need an operator to delete it by hand after every crash.
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; it is left untouched. Choose another \
                     --socket",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "earshot-engine.sock".into());
    let staging = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        use std::os::unix::fs::DirBuilderExt;
        // 0700 (the umask can only narrow it): nobody else can reach the socket inside
        // while its mode is still the umask's.
        std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    }
    let result = (|| {
        let inner = staging.join("s");
        let listener = UnixListener::bind(&inner)?;
        let mode = if options.group.is_some() {
            0o660
        } else {
            0o600
        };
        if let Some(gid) = options.group {
            std::os::unix::fs::chown(&inner, None, Some(gid))?;
        }
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(mode))?;
        // A hard link never replaces an existing path: if another engine linked its
        // socket here since the check above, this fails instead of taking it over.
        std::fs::hard_link(&inner, path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} appeared while binding (another engine?)",
                        path.display()
                    ),
                )
            } else {
                e
            }
        })?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok((listener, (meta.dev(), meta.ino())))
    })();
    let _ = std::fs::remove_file(staging.join("s"));
    let _ = std::fs::remove_dir(&staging);
    result
}

fn accept_loop(
    listener: &UnixListener,
    engine: &Arc<EngineHandle>,
    hub: &SharedHub,
    stop: &AtomicBool,
) {
    let next_conn = AtomicU64::new(1);
    loop {
        let conn = listener.accept();
        if stop.load(Ordering::Acquire) {
            return;
        }
        let conn = match conn {
            Ok((c, _)) => c,
            Err(e) => {
                eprintln!("earshot-engine: API accept failed: {e}; backing off");
                thread::park_timeout(ACCEPT_BACKOFF);
                continue;
            }
        };
        let id = next_conn.fetch_add(1, Ordering::Relaxed);
        let (engine, hub) = (engine.clone(), hub.clone());
        let spawned = thread::Builder::new()
            .name("earshot-api-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(id, conn, &engine, &hub) {
                    eprintln!("earshot-engine: API connection ended: {e}");
                }
            });
        if let Err(e) = spawned {
            eprintln!("earshot-engine: cannot serve an API connection: {e}");
            thread::park_timeout(ACCEPT_BACKOFF);
        }
    }
}

/// Sends `ev` to the programming client, or keeps it for the next one.
fn deliver(hub: &SharedHub, engine: &EngineHandle, ev: EngineEvent) {
    let mut h = lock(hub);
    while let Some((_, s)) = h.programmers.first_mut() {
        if write_frame(s, &ServerFrame::Event(ev.clone())).is_ok() {
            return;
        }
        // The client went away mid-stream: the next one (or the backlog) gets it.
        h.programmers.remove(0);
    }
    if h.backlog.len() < EVENT_BACKLOG {
        h.backlog.push_back(ev);
    } else {
        engine.note_event_lost();
    }
}

fn refuse(w: &mut UnixStream, why: String) -> io::Result<()> {
    write_frame(
        w,
        &Hello {
            refused: Some(why.clone()),
            ..Hello::current()
        },
    )?;
    Err(io::Error::new(io::ErrorKind::PermissionDenied, why))
}

fn serve_connection(
    id: u64,
    conn: UnixStream,
    engine: &EngineHandle,
    hub: &SharedHub,
) -> io::Result<()> {
    conn.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut reader = conn.try_clone()?;
    let Some(hello): Option<Hello> = read_frame(&mut reader)? else {
        return Ok(());
    };
    conn.set_read_timeout(None)?;
    let mut w = conn;
    if hello.protocol != "earshot-engine" || hello.version != PROTOCOL_VERSION {
        write_frame(&mut w, &Hello::current())?;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "client speaks {} v{}, this engine speaks earshot-engine v{PROTOCOL_VERSION}",
                hello.protocol, hello.version
            ),
        ));
    }
    let programmer = hello.role == ClientRole::Program;
    if programmer {
        let mut h = lock(hub);
        if h.programmers.len() >= h.max_programmers {
            drop(h);
            return refuse(
                &mut w,
                "another programming client (earshot-control) is connected to this engine; \
                 one engine is programmed by one sidecar. Stop the other one, or connect as \
                 an observer"
                    .into(),
            );
        }
        write_frame(&mut w, &Hello::current())?;
        // What happened while no sidecar listened, in order, before anything new.
        while let Some(ev) = h.backlog.pop_front() {
            if let Err(e) = write_frame(&mut w, &ServerFrame::Event(ev.clone())) {
                h.backlog.push_front(ev);
                return Err(e);
            }
        }
        h.programmers.push((id, w.try_clone()?));
    } else {
        write_frame(&mut w, &Hello::current())?;
    }
    let served = serve_calls(&mut reader, &mut w, engine, hub, hello.role);
    if programmer {
        let mut h = lock(hub);
        h.programmers.retain(|(p, _)| *p != id);
    }
    served
}

/// Calls of one connection handed to the engine without waiting for the previous
/// replies: enough to let a shard apply a reconciliation's requests many per loop
/// iteration (its `commands_per_iteration`), far below a shard's command queue.
pub const CALLS_IN_FLIGHT: usize = 64;

/// One call being answered: its correlation id and the engine's future.
type InFlight<'a> = (
    u64,
    earshot_engine_api::BoxFuture<'a, Result<earshot_engine_api::Response, EngineError>>,
);

/// Serves one connection's calls, pipelined: this thread reads calls and hands them,
/// in arrival order, to an answering thread that starts each on the engine at once
/// (its first poll puts the command on its shard's queue, so the shards see a
/// connection's commands in the order they were sent: per leg and per session
/// nothing is reordered) and writes each reply when it is ready, at most
/// [`CALLS_IN_FLIGHT`] at a time. Replies may therefore overtake each other; each
/// carries its call's id.
fn serve_calls(
    reader: &mut UnixStream,
    w: &mut UnixStream,
    engine: &EngineHandle,
    hub: &SharedHub,
    role: ClientRole,
) -> io::Result<()> {
    let (calls, inbox) = std::sync::mpsc::sync_channel::<InFlight<'_>>(CALLS_IN_FLIGHT);
    thread::scope(|scope| {
        let answerer = scope.spawn(move || answer_calls(&inbox, w, hub, role));
        let answering = answerer.thread().clone();
        let read = read_calls(reader, engine, role, &calls, &answering);
        // No more calls: the answering thread finishes those in flight and ends.
        drop(calls);
        answering.unpark();
        let answered = answerer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        read.and(answered)
    })
}

/// Reads calls until the stream ends and hands each (as an engine future) to the
/// answering thread, which it wakes.
fn read_calls<'a>(
    reader: &mut UnixStream,
    engine: &'a EngineHandle,
    role: ClientRole,
    calls: &std::sync::mpsc::SyncSender<InFlight<'a>>,
    answering: &Thread,
) -> io::Result<()> {
    while let Some(frame) = read_frame::<_, ClientFrame>(reader)? {
        let ClientFrame::Call { id, request } = frame;
        let allowed = match role {
            ClientRole::Program => true,
            ClientRole::Observe => matches!(request, Request::Snapshot | Request::Stats),
            ClientRole::Agent => matches!(
                request,
                Request::Snapshot | Request::Stats | Request::Fence { .. } | Request::Mute { .. }
            ),
        };
        let call = if allowed {
            engine.call(request)
        } else if role == ClientRole::Agent {
            refused("a node agent may only ask for Snapshot, Stats, Fence and Mute")
        } else {
            refused("an observer may only ask for Snapshot and Stats")
        };
        if calls.send((id, call)).is_err() {
            // The answering thread stopped (its socket failed): it reports why.
            return Ok(());
        }
        answering.unpark();
    }
    Ok(())
}

fn refused(
    message: &'static str,
) -> earshot_engine_api::BoxFuture<'static, Result<earshot_engine_api::Response, EngineError>> {
    Box::pin(std::future::ready(Err(EngineError::InvalidArgument {
        field: "request".into(),
        message: message.into(),
    })))
}

/// Starts the calls handed over, in order, and writes each reply when its future is
/// ready; ends when the reader has stopped and nothing is in flight.
fn answer_calls(
    inbox: &std::sync::mpsc::Receiver<InFlight<'_>>,
    w: &mut UnixStream,
    hub: &SharedHub,
    role: ClientRole,
) -> io::Result<()> {
    use std::sync::mpsc::TryRecvError;
    let programmer = role == ClientRole::Program;
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut in_flight: Vec<InFlight<'_>> = Vec::with_capacity(CALLS_IN_FLIGHT);
    let mut reading = true;
    loop {
        while reading && in_flight.len() < CALLS_IN_FLIGHT {
            let next = if in_flight.is_empty() {
                // Nothing to answer: wait for the next call.
                inbox.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                inbox.try_recv()
            };
            match next {
                Ok(call) => in_flight.push(call),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => reading = false,
            }
        }
        // Poll in arrival order: a new call's first poll hands it to its shard.
        let mut i = 0;
        while i < in_flight.len() {
            let Poll::Ready(result) = in_flight[i].1.as_mut().poll(&mut cx) else {
                i += 1;
                continue;
            };
            let (id, _) = in_flight.remove(i);
            let reply = ServerFrame::Reply { id, result };
            let written = if programmer {
                // Replies and events share the stream: write under the hub lock.
                let _h = lock(hub);
                write_frame(w, &reply)
            } else {
                write_frame(w, &reply)
            };
            if let Err(e) = written {
                // Unblock the reader too: this connection is over.
                let _ = w.shutdown(std::net::Shutdown::Both);
                return Err(e);
            }
        }
        if !reading && in_flight.is_empty() {
            return Ok(());
        }
        if in_flight.is_empty() {
            continue;
        }
        // Woken by a future that can progress, or by the reader with a new call.
        thread::park();
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the current thread (no async runtime needed here).
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}
