//! The programming API on a local Unix socket, for a separate `earshot-control` process.
//!
//! Framing and messages are `earshot_engine_api::protocol` (documented in
//! `docs/engine-protocol.md`). Each connection is served by its own thread; requests
//! are applied in order per connection. Engine events go to the most recently connected
//! client (the sidecar); when none is connected they wait in the engine's queue.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use earshot_engine_api::protocol::{
    ClientFrame, Hello, PROTOCOL_VERSION, ServerFrame, read_frame, write_frame,
};
use earshot_engine_api::{EngineApi, EngineError};

use crate::engine::EngineHandle;

/// A running socket server.
#[derive(Debug)]
pub struct SocketServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

type Writer = Arc<Mutex<Option<UnixStream>>>;

impl SocketServer {
    /// Binds `path` (replacing a stale socket file) and serves `engine` on it.
    pub fn start(path: &Path, engine: Arc<EngineHandle>) -> io::Result<SocketServer> {
        if path.exists() {
            // A socket left by an engine that died; refusing would need an operator to
            // delete it by hand after every crash.
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let events_to: Writer = Arc::new(Mutex::new(None));
        {
            let (engine, events_to, stop) = (engine.clone(), events_to.clone(), stop.clone());
            thread::Builder::new()
                .name("earshot-api-events".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let Some(ev) = block_on(engine.next_event()) else {
                            return;
                        };
                        let mut w = events_to.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(s) = w.as_mut()
                            && write_frame(s, &ServerFrame::Event(ev)).is_err()
                        {
                            *w = None;
                        }
                    }
                })?;
        }
        {
            let stop = stop.clone();
            thread::Builder::new()
                .name("earshot-api".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        let Ok(conn) = conn else { continue };
                        let (engine, events_to) = (engine.clone(), events_to.clone());
                        let _ = thread::Builder::new()
                            .name("earshot-api-conn".into())
                            .spawn(move || {
                                if let Err(e) = serve_connection(conn, &engine, &events_to) {
                                    eprintln!("earshot-engine: API connection ended: {e}");
                                }
                            });
                    }
                })?;
        }
        Ok(SocketServer {
            path: path.to_path_buf(),
            stop,
        })
    }
}

impl Drop for SocketServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag, then remove the socket file.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_connection(conn: UnixStream, engine: &EngineHandle, events_to: &Writer) -> io::Result<()> {
    let mut reader = conn.try_clone()?;
    let writer: Writer = Arc::new(Mutex::new(Some(conn.try_clone()?)));
    let Some(hello): Option<Hello> = read_frame(&mut reader)? else {
        return Ok(());
    };
    let mut w = conn;
    write_frame(&mut w, &Hello::current())?;
    if hello.protocol != "earshot-engine" || hello.version != PROTOCOL_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "client speaks {} v{}, this engine speaks earshot-engine v{PROTOCOL_VERSION}",
                hello.protocol, hello.version
            ),
        ));
    }
    *events_to.lock().unwrap_or_else(|e| e.into_inner()) = Some(w.try_clone()?);
    while let Some(frame) = read_frame::<_, ClientFrame>(&mut reader)? {
        let ClientFrame::Call { id, request } = frame;
        let result = block_on(engine.call(request));
        let result = result.map_err(|e: EngineError| e);
        let mut guard = writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = guard.as_mut() {
            // Replies and events share the stream: hold the events lock while writing.
            let _ev = events_to.lock().unwrap_or_else(|e| e.into_inner());
            write_frame(s, &ServerFrame::Reply { id, result })?;
        }
    }
    Ok(())
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
