//! The engine: shard threads, their command queues, and the handle that programs them.
//!
//! [`Engine::start`] builds one [`Shard`] per configured core, each with its own backend,
//! and runs each on its own pinned thread (no async runtime on shard threads). The
//! [`EngineHandle`] implements [`EngineApi`]: it routes each request to the owning shard's
//! bounded lock-free command queue and resolves when the shard acknowledges it. A full
//! queue is refused at once (`ResourceExhausted`); it never blocks a shard.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_queue::ArrayQueue;
use earshot_engine_api::{
    BoxFuture, EngineApi, EngineError, EngineEvent, EngineSnapshot, EngineStats, Request, Response,
    ShardStats,
};
use earshot_media::dsp::mix::MixKernels;
use earshot_media::time::{Duration, WallClock};
use futures_channel::oneshot;

use crate::backend::Backend;
use crate::clock::Clock;
use crate::config::EngineConfig;
use crate::runtime::{self, Envelope};
use crate::shard::{Shard, ShardCommand, ShardConfig};

/// Capacity of the queue of events from all shards to the control side.
const EVENT_QUEUE: usize = 65_536;

/// A running engine.
#[derive(Debug)]
pub struct Engine {
    handle: Arc<EngineHandle>,
    threads: Vec<JoinHandle<()>>,
}

/// Programs a running engine; cheap to share.
#[derive(Debug)]
pub struct EngineHandle {
    queues: Vec<Arc<ArrayQueue<Envelope>>>,
    events: Arc<ArrayQueue<EngineEvent>>,
    stop: Arc<AtomicBool>,
    /// Session key -> shard, and the count of sessions placed on each shard. Control
    /// path only.
    placement: Mutex<Placement>,
    backend_name: String,
    /// Whether each shard's thread still runs.
    alive: Vec<Arc<AtomicBool>>,
    /// Commands refused per shard because its queue was full (control side, atomic).
    rejected: Vec<std::sync::atomic::AtomicU64>,
    /// Events forwarded by the pump thread from the shards' lock-free queue.
    event_rx: Mutex<futures_channel::mpsc::UnboundedReceiver<EngineEvent>>,
    /// The owner named by the last `Request::Claim` (the control side's store id).
    owner: Mutex<Option<String>>,
    /// Events dropped on the way to the control side outside the shards (the socket
    /// server's buffer overflowed while no client was connected).
    events_lost: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Placement {
    by_session: HashMap<String, u16>,
    per_shard: Vec<u64>,
}

impl Engine {
    /// Starts the shards. `make_backend(i)` builds shard i's backend; it runs on the
    /// caller's thread so that a backend that cannot start is reported before any shard
    /// runs.
    pub fn start(
        cfg: &EngineConfig,
        mut make_backend: impl FnMut(usize) -> io::Result<Box<dyn Backend>>,
    ) -> io::Result<Engine> {
        cfg.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let kernels = MixKernels::detect();
        let clock = Clock::new();
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(ArrayQueue::new(EVENT_QUEUE));
        let seed = if cfg.seed == 0 { os_seed() } else { cfg.seed };
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        let mut backend_name = String::new();
        let mut alive = Vec::new();
        for i in 0..cfg.shards {
            let backend = make_backend(i)?;
            backend_name = backend.name().to_string();
            let shard_cfg = ShardConfig {
                index: i as u16,
                port_first: cfg.shard_port_first(i),
                port_count: cfg.shard_port_count(i),
                max_legs: cfg.max_legs_per_shard,
                max_sessions: cfg.max_sessions_per_shard,
                local_v4: cfg.bind_v4,
                local_v6: cfg.bind_v6,
                jitter_min_ms: cfg.jitter_min_ms,
                jitter_max_ms: cfg.jitter_max_ms,
                media_timeout: Duration::from_secs(cfg.media_timeout_s),
                late_tick_threshold: Duration::from_micros(cfg.late_tick_threshold_us),
                seed: seed.wrapping_add(i as u64),
            };
            let mut shard = Shard::new(shard_cfg, kernels, events.clone());
            shard.set_ntp_at_zero(clock.ntp_at(earshot_media::time::Instant::ZERO));
            let queue = Arc::new(ArrayQueue::new(cfg.command_queue));
            queues.push(queue.clone());
            let core = if cfg.pin {
                Some(cfg.cores.get(i).copied().unwrap_or(i))
            } else {
                None
            };
            let params = runtime::LoopParams {
                commands_per_iteration: cfg.commands_per_iteration,
                recv_batch: cfg.recv_batch,
                core,
            };
            let stop = stop.clone();
            let shard_alive = Arc::new(AtomicBool::new(true));
            alive.push(shard_alive.clone());
            let t = std::thread::Builder::new()
                .name(format!("earshot-shard-{i}"))
                .spawn(move || {
                    runtime::run(shard, backend, queue, clock, stop, params, shard_alive)
                })?;
            threads.push(t);
        }
        // Events are rare (first packets, timeouts, latching). One pump thread moves them
        // from the shards' lock-free queue to an async channel, so shard threads never
        // wake the control side's runtime themselves.
        let (event_tx, event_rx) = futures_channel::mpsc::unbounded();
        {
            let (events, stop) = (events.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("earshot-events".into())
                    .spawn(move || {
                        while !stop.load(Ordering::Acquire) {
                            while let Some(e) = events.pop() {
                                if event_tx.unbounded_send(e).is_err() {
                                    return;
                                }
                            }
                            std::thread::park_timeout(std::time::Duration::from_millis(2));
                        }
                    })?,
            );
        }
        let handle = Arc::new(EngineHandle {
            event_rx: Mutex::new(event_rx),
            alive,
            rejected: (0..cfg.shards)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            queues,
            events,
            stop,
            placement: Mutex::new(Placement {
                by_session: HashMap::new(),
                per_shard: vec![0; cfg.shards],
            }),
            backend_name,
            owner: Mutex::new(None),
            events_lost: std::sync::atomic::AtomicU64::new(0),
        });
        Ok(Engine { handle, threads })
    }

    /// The handle that programs this engine.
    pub fn handle(&self) -> Arc<EngineHandle> {
        self.handle.clone()
    }

    /// Stops every shard and joins its thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.handle.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

impl EngineHandle {
    /// The backend the shards run on.
    pub fn backend_name(&self) -> &str {
        &self.backend_name
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.queues.len()
    }

    /// Takes an event if one is queued, without waiting.
    pub fn try_event(&self) -> Option<EngineEvent> {
        self.events.pop()
    }

    /// Counts an event dropped after it left the shards (reported in the snapshot's
    /// `events_lost`), for the socket server's bounded buffer.
    pub fn note_event_lost(&self) {
        self.events_lost.fetch_add(1, Ordering::Relaxed);
    }

    /// The owner named by the last `Request::Claim`.
    pub fn owner(&self) -> Option<String> {
        self.owner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn send(&self, shard: usize, cmd: ShardCommand) -> Result<Response, EngineError> {
        if self.stop.load(Ordering::Acquire) {
            return Err(EngineError::Unavailable("engine is shutting down".into()));
        }
        let queue = self
            .queues
            .get(shard)
            .ok_or_else(|| EngineError::NotFound(format!("shard {shard}")))?;
        let (tx, rx) = oneshot::channel();
        if !self.alive[shard].load(Ordering::Acquire) {
            return Err(EngineError::Unavailable(format!(
                "shard {shard} is not running"
            )));
        }
        if queue.push(Envelope { cmd, reply: tx }).is_err() {
            self.rejected[shard].fetch_add(1, Ordering::Relaxed);
            return Err(EngineError::ResourceExhausted(format!(
                "shard {shard} command queue full"
            )));
        }
        // The shard may have died between the check and the push: answer for it.
        if !self.alive[shard].load(Ordering::Acquire) {
            runtime::drain_dead(queue);
        }
        rx.await
            .map_err(|_| EngineError::Unavailable(format!("shard {shard} stopped")))?
    }

    /// Chooses the shard of a session: where it already is, else the least loaded.
    fn place(&self, session: &str) -> usize {
        // The lock is on the control path only; shards never take it.
        let mut p = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&s) = p.by_session.get(session) {
            return usize::from(s);
        }
        let (best, _) = p
            .per_shard
            .iter()
            .enumerate()
            .min_by_key(|(_, n)| **n)
            .unwrap_or((0, &0));
        p.per_shard[best] += 1;
        p.by_session.insert(session.to_string(), best as u16);
        best
    }

    fn forget(&self, session: &str) {
        let mut p = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = p.by_session.remove(session) {
            p.per_shard[usize::from(s)] = p.per_shard[usize::from(s)].saturating_sub(1);
        }
    }

    fn shard_of_session(&self, session: &str) -> Option<usize> {
        let p = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        p.by_session.get(session).map(|&s| usize::from(s))
    }

    /// Applies one request.
    pub async fn request(&self, req: Request) -> Result<Response, EngineError> {
        match req {
            Request::AllocateLeg {
                session,
                leg_key,
                family,
                requested_port,
                rtcp_mux,
            } => {
                validate_key("session", &session)?;
                validate_key("leg_key", &leg_key)?;
                let shard = self.place(&session);
                let r = self
                    .send(
                        shard,
                        ShardCommand::AllocateLeg {
                            session: session.clone(),
                            leg_key,
                            family,
                            requested_port,
                            rtcp_mux,
                        },
                    )
                    .await;
                if r.is_err() {
                    // Forget a placement that holds nothing (a refused first leg).
                    let snap = self
                        .send(shard, ShardCommand::Snapshot(EngineSnapshot::default()))
                        .await;
                    if let Ok(Response::Snapshot(s)) = snap
                        && !s.legs.iter().any(|l| l.session == session)
                    {
                        self.forget(&session);
                    }
                }
                r
            }
            Request::ConfigureLeg { leg, media } => {
                self.send(
                    usize::from(leg.shard()),
                    ShardCommand::ConfigureLeg { leg, media },
                )
                .await
            }
            Request::SetSessionPlan(plan) => {
                let shard = self
                    .shard_of_session(&plan.session)
                    .ok_or_else(|| EngineError::NotFound(format!("session {}", plan.session)))?;
                self.send(shard, ShardCommand::SetSessionPlan(plan)).await
            }
            Request::RemoveLeg { leg } => {
                if usize::from(leg.shard()) >= self.queues.len() {
                    return Ok(Response::Done);
                }
                self.send(usize::from(leg.shard()), ShardCommand::RemoveLeg { leg })
                    .await
            }
            Request::RemoveSession { session } => {
                let Some(shard) = self.shard_of_session(&session) else {
                    return Ok(Response::Done);
                };
                let r = self
                    .send(
                        shard,
                        ShardCommand::RemoveSession {
                            session: session.clone(),
                        },
                    )
                    .await;
                self.forget(&session);
                r
            }
            Request::Claim { owner } => {
                validate_key("owner", &owner)?;
                *self.owner.lock().unwrap_or_else(|e| e.into_inner()) = Some(owner);
                Ok(Response::Done)
            }
            Request::Snapshot => {
                let mut all = EngineSnapshot {
                    owner: self.owner(),
                    events_lost: self.events_lost.load(Ordering::Relaxed),
                    ..EngineSnapshot::default()
                };
                for shard in 0..self.queues.len() {
                    if let Response::Snapshot(s) = self
                        .send(shard, ShardCommand::Snapshot(EngineSnapshot::default()))
                        .await?
                    {
                        all.legs.extend(s.legs);
                        all.plans.extend(s.plans);
                        all.activity.extend(s.activity);
                        all.events_lost += s.events_lost;
                    }
                }
                Ok(Response::Snapshot(all))
            }
            Request::Stats => {
                let mut all = EngineStats {
                    backend: self.backend_name.clone(),
                    shards: Vec::new(),
                };
                for shard in 0..self.queues.len() {
                    if let Response::Stats(s) = self
                        .send(shard, ShardCommand::Stats(ShardStats::default()))
                        .await?
                    {
                        all.shards.extend(s.shards.into_iter().map(|mut st| {
                            st.commands_rejected = self.rejected[shard].load(Ordering::Relaxed);
                            st
                        }));
                    }
                }
                Ok(Response::Stats(all))
            }
        }
    }
}

impl EngineApi for EngineHandle {
    fn call(&self, request: Request) -> BoxFuture<'_, Result<Response, EngineError>> {
        Box::pin(self.request(request))
    }

    fn next_event(&self) -> BoxFuture<'_, Option<EngineEvent>> {
        Box::pin(std::future::poll_fn(move |cx| {
            use futures_core::Stream;
            let mut rx = self.event_rx.lock().unwrap_or_else(|e| e.into_inner());
            std::pin::Pin::new(&mut *rx).poll_next(cx)
        }))
    }
}

/// Checks a session or leg key: 1..=128 chars of `[A-Za-z0-9._:-]` (SPEC section 1).
pub fn validate_key(field: &str, key: &str) -> Result<(), EngineError> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(EngineError::InvalidArgument {
            field: field.into(),
            message: format!("{key:?} is not 1..128 characters of [A-Za-z0-9._:-]"),
        })
    }
}

fn os_seed() -> u64 {
    let mut b = [0u8; 8];
    // getrandom(2) cannot fail for 8 bytes once the pool is initialised; fall back to
    // the address-space layout otherwise.
    if getrandom(&mut b) {
        u64::from_ne_bytes(b)
    } else {
        let x = 0u8;
        std::ptr::addr_of!(x) as u64 ^ 0x5eed
    }
}

fn getrandom(buf: &mut [u8]) -> bool {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_ok()
}
