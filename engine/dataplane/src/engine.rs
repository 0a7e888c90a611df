//! The engine: shard threads, their command queues, and the handle that programs them.
//!
//! [`Engine::start`] builds one [`Shard`] per configured core, each with its own backend,
//! and runs each on its own pinned thread (no async runtime on shard threads). The
//! [`EngineHandle`] implements [`EngineApi`]: it routes each request to the owning shard's
//! bounded lock-free command queue and resolves when the shard acknowledges it. A full
//! queue is refused at once (`ResourceExhausted`); it never blocks a shard.
//!
//! The handle also does the control-path work a shard must not: it chooses a new leg's
//! port from the shard's [`PortPool`] and binds it (a syscall that can fail when another
//! process holds the port: that port is set aside and the next one tried, a bounded
//! number of times), and it turns the shards' id-only events into the API's events with
//! session and leg keys, on a thread of its own.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_queue::ArrayQueue;
use earshot_core::ports::{PortPool, PortRefusal};
use earshot_core::shard::{Shard, ShardCommand, ShardConfig, ShardEvent};
use earshot_engine_api::{
    BoxFuture, EngineApi, EngineError, EngineEvent, EngineSnapshot, EngineStats, IpFamily, LegId,
    LegResume, Request, Response, ShardStats,
};
use earshot_media::dsp::mix::MixKernels;
use earshot_media::time::{Duration, WallClock};
use futures_channel::oneshot;

use crate::backend::{Backend, BoundPort, PortBinder};
use crate::clock::Clock;
use crate::config::EngineConfig;
use crate::runtime::{self, Envelope, ShardLinks};

/// Capacity of each shard's queue of events to the control side.
const EVENT_QUEUE: usize = 16_384;

/// Ports tried per allocation before giving up when the OS refuses them (other
/// processes hold ports in the range).
pub const BIND_ATTEMPTS: usize = 64;

/// A running engine.
#[derive(Debug)]
pub struct Engine {
    handle: Arc<EngineHandle>,
    threads: Vec<JoinHandle<()>>,
}

/// The control-side half of one shard.
#[derive(Debug)]
struct ShardPort {
    links: ShardLinks,
    binder: Arc<dyn PortBinder>,
    pool: Mutex<PortPool>,
    /// Commands refused because the queue was full.
    rejected: AtomicU64,
    /// Ports the OS refused to bind (another process held them).
    ports_busy: AtomicU64,
    /// The CPU the shard's thread runs on, once it has reported it (-1 before).
    core: Arc<std::sync::atomic::AtomicI64>,
}

/// Programs a running engine; cheap to share.
#[derive(Debug)]
pub struct EngineHandle {
    shards: Vec<ShardPort>,
    stop: Arc<AtomicBool>,
    /// Session key -> shard, and the count of sessions placed on each shard. Control
    /// path only.
    placement: Mutex<Placement>,
    /// Leg id -> (session, leg key), for turning shard events into API events.
    keys: Arc<Mutex<HashMap<LegId, (String, String)>>>,
    backend_name: String,
    /// Events translated by the pump thread.
    event_rx: Mutex<futures_channel::mpsc::UnboundedReceiver<EngineEvent>>,
    /// The owner named by the last `Request::Claim` (the control side's store id).
    owner: Mutex<Option<String>>,
    /// Fenced by the cluster agent (`Request::Fence`): programming refused.
    fenced: AtomicBool,
    /// Muted by the cluster agent (`Request::Mute`): every shard sends nothing.
    muted: Arc<AtomicBool>,
    /// Until when the agent's last vouch lets the shards send (engine clock, ns).
    send_until_ns: Arc<AtomicU64>,
    clock: Clock,
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
        let muted = Arc::new(AtomicBool::new(false));
        let send_until_ns = Arc::new(AtomicU64::new(u64::MAX));
        let seed = if cfg.seed == 0 { os_seed() } else { cfg.seed };
        let mut shards = Vec::new();
        let mut threads = Vec::new();
        let mut backend_name = String::new();
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
            let pool = PortPool::sliced(
                shard_cfg.port_first,
                shard_cfg.port_count,
                cfg.port_slice,
                cfg.port_slices,
            );
            let mut shard = Shard::new(shard_cfg, kernels);
            shard.set_ntp_at_zero(clock.ntp_at(earshot_media::time::Instant::ZERO));
            let links = ShardLinks {
                queue: Arc::new(ArrayQueue::new(cfg.command_queue)),
                events: Arc::new(ArrayQueue::new(EVENT_QUEUE)),
                events_lost: Arc::new(AtomicUsize::new(0)),
                released: Arc::new(ArrayQueue::new(usize::from(pool.count()).max(1))),
                alive: Arc::new(AtomicBool::new(true)),
                core: Arc::new(std::sync::atomic::AtomicI64::new(-1)),
                muted: muted.clone(),
                send_until_ns: send_until_ns.clone(),
            };
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
            shards.push(ShardPort {
                binder: backend.binder(),
                links: links.clone(),
                pool: Mutex::new(pool),
                rejected: AtomicU64::new(0),
                ports_busy: AtomicU64::new(0),
                core: links.core.clone(),
            });
            let stop = stop.clone();
            let t = std::thread::Builder::new()
                .name(format!("earshot-shard-{i}"))
                .spawn(move || runtime::run(shard, backend, links, clock, stop, params))?;
            threads.push(t);
        }
        // Events are rare (first packets, timeouts, latching). One pump thread moves them
        // from the shards' lock-free queues to an async channel, adding the keys, so shard
        // threads never allocate for them nor wake the control side's runtime themselves.
        let (event_tx, event_rx) = futures_channel::mpsc::unbounded();
        let keys: Arc<Mutex<HashMap<LegId, (String, String)>>> = Arc::default();
        {
            let queues: Vec<_> = shards.iter().map(|s| s.links.events.clone()).collect();
            let (keys, stop) = (keys.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("earshot-events".into())
                    .spawn(move || pump_events(&queues, &keys, &event_tx, &stop))?,
            );
        }
        let handle = Arc::new(EngineHandle {
            event_rx: Mutex::new(event_rx),
            shards,
            stop,
            keys,
            placement: Mutex::new(Placement {
                by_session: HashMap::new(),
                per_shard: vec![0; cfg.shards],
            }),
            backend_name,
            owner: Mutex::new(None),
            fenced: AtomicBool::new(false),
            muted,
            send_until_ns,
            clock,
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
        self.shards.len()
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
        self.send_with(shard, cmd, Vec::new()).await
    }

    async fn send_with(
        &self,
        shard: usize,
        cmd: ShardCommand,
        ports: Vec<(u16, BoundPort)>,
    ) -> Result<Response, EngineError> {
        if self.stop.load(Ordering::Acquire) {
            return Err(EngineError::Unavailable("engine is shutting down".into()));
        }
        let s = self
            .shards
            .get(shard)
            .ok_or_else(|| EngineError::NotFound(format!("shard {shard}")))?;
        let (tx, rx) = oneshot::channel();
        if !s.links.alive.load(Ordering::Acquire) {
            return Err(EngineError::Unavailable(format!(
                "shard {shard} is not running"
            )));
        }
        if s.links
            .queue
            .push(Envelope {
                cmd,
                ports,
                reply: tx,
            })
            .is_err()
        {
            s.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(EngineError::ResourceExhausted(format!(
                "shard {shard} command queue full"
            )));
        }
        // The shard may have died between the check and the push: answer for it.
        if !s.links.alive.load(Ordering::Acquire) {
            runtime::drain_dead(&s.links.queue);
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

    /// Takes ports back that the shard's removed legs released.
    fn reclaim(&self, shard: &ShardPort) {
        let mut pool = shard.pool.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(r) = shard.links.released.pop() {
            pool.give(r.port, !r.paired);
        }
    }

    /// Chooses and binds a new leg's port(s) on the calling thread: `requested` itself,
    /// or the pool's next free port, skipping ports another process holds (each set
    /// aside and counted) for at most [`BIND_ATTEMPTS`] tries.
    fn bind_port(
        &self,
        shard: usize,
        family: IpFamily,
        requested: Option<u16>,
        rtcp_mux: bool,
        ip: Option<IpAddr>,
    ) -> Result<(u16, Vec<(u16, BoundPort)>), EngineError> {
        let s = &self.shards[shard];
        self.reclaim(s);
        if let Some(port) = requested {
            // The pool's guard must be gone before the refusal locks it again to
            // quote the range (a temporary would live to the end of the statement).
            let taken = lock_pool(s).take_specific(port, rtcp_mux);
            taken.map_err(|why| {
                let (first, count) = {
                    let p = lock_pool(s);
                    (p.first(), p.count())
                };
                EngineError::InvalidArgument {
                    field: "requested_port".into(),
                    message: match why {
                        PortRefusal::OutOfRange => format!(
                            "port {port} is outside shard {shard}'s range {first}..{}",
                            u32::from(first) + u32::from(count)
                        ),
                        PortRefusal::InUse => format!("port {port} is in use by another leg"),
                        PortRefusal::NotEven => {
                            format!("port {port} is odd; a leg without rtcp-mux needs a pair")
                        }
                    },
                }
            })?;
            return match self.bind_sockets(s, port, family, rtcp_mux, ip) {
                Ok(bound) => Ok((port, bound)),
                Err(e) => {
                    let busy = e.kind() == io::ErrorKind::AddrInUse;
                    if busy {
                        s.ports_busy.fetch_add(1, Ordering::Relaxed);
                        lock_pool(s).set_aside(port, rtcp_mux);
                    } else {
                        lock_pool(s).give(port, rtcp_mux);
                    }
                    Err(EngineError::InvalidArgument {
                        field: "requested_port".into(),
                        message: format!("port {port} cannot be bound: {e}"),
                    })
                }
            };
        }
        for _ in 0..BIND_ATTEMPTS {
            let Some(port) = lock_pool(s).take(rtcp_mux) else {
                return Err(EngineError::ResourceExhausted(format!(
                    "no free port on shard {shard}"
                )));
            };
            match self.bind_sockets(s, port, family, rtcp_mux, ip) {
                Ok(bound) => return Ok((port, bound)),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    s.ports_busy.fetch_add(1, Ordering::Relaxed);
                    lock_pool(s).set_aside(port, rtcp_mux);
                }
                Err(e) => {
                    lock_pool(s).give(port, rtcp_mux);
                    let (field, message) = match e.kind() {
                        io::ErrorKind::AddrNotAvailable => (
                            "family",
                            format!("{family:?} is not enabled on this engine: {e}"),
                        ),
                        _ => {
                            return Err(EngineError::Internal(format!("binding port {port}: {e}")));
                        }
                    };
                    return Err(EngineError::InvalidArgument {
                        field: field.into(),
                        message,
                    });
                }
            }
        }
        Err(EngineError::ResourceExhausted(format!(
            "{BIND_ATTEMPTS} ports in a row on shard {shard} are held by other processes; \
             move the port range out of the kernel's ephemeral range (docs/operations.md)"
        )))
    }

    fn bind_sockets(
        &self,
        s: &ShardPort,
        port: u16,
        family: IpFamily,
        rtcp_mux: bool,
        ip: Option<IpAddr>,
    ) -> io::Result<Vec<(u16, BoundPort)>> {
        let mut bound = vec![(port, s.binder.bind(ip, port, family)?)];
        if !rtcp_mux {
            bound.push((port + 1, s.binder.bind(ip, port + 1, family)?));
        }
        Ok(bound)
    }

    async fn allocate(
        &self,
        session: String,
        leg_key: String,
        family: IpFamily,
        requested_port: Option<u16>,
        rtcp_mux: bool,
        resume: Option<LegResume>,
    ) -> Result<Response, EngineError> {
        validate_key("session", &session)?;
        validate_key("leg_key", &leg_key)?;
        let shard = self.place(&session);
        let ip = resume.and_then(|r| r.local_ip);
        let bound = self.bind_port(shard, family, requested_port, rtcp_mux, ip);
        let r = match bound {
            Ok((port, sockets)) => {
                let cmd = ShardCommand::AllocateLeg {
                    session: session.clone(),
                    leg_key: leg_key.clone(),
                    family,
                    port,
                    rtcp_mux,
                    resume,
                };
                let r = self.send_with(shard, cmd, sockets).await;
                let used = matches!(&r, Ok(Response::Leg(info)) if info.local.port() == port);
                if !used {
                    // Refused, or a retry answered with the existing leg: the sockets
                    // were closed by the shard's loop; the port is free again.
                    let s = &self.shards[shard];
                    s.pool
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .give(port, rtcp_mux);
                }
                r
            }
            Err(e) => Err(e),
        };
        match &r {
            Ok(Response::Leg(info)) => {
                self.keys
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(info.leg, (session, leg_key));
            }
            Err(_) => {
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
            Ok(_) => {}
        }
        r
    }

    /// Applies one request.
    pub async fn request(&self, req: Request) -> Result<Response, EngineError> {
        let programs = matches!(
            req,
            Request::AllocateLeg { .. } | Request::ConfigureLeg { .. } | Request::SetSessionPlan(_)
        );
        if programs && self.fenced.load(Ordering::Acquire) {
            return Err(EngineError::Unavailable(
                "this node is fenced: it lost its cluster lease".into(),
            ));
        }
        match req {
            Request::AllocateLeg {
                session,
                leg_key,
                family,
                requested_port,
                rtcp_mux,
                resume,
            } => {
                self.allocate(session, leg_key, family, requested_port, rtcp_mux, resume)
                    .await
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
                if usize::from(leg.shard()) >= self.shards.len() {
                    return Ok(Response::Done);
                }
                let r = self
                    .send(usize::from(leg.shard()), ShardCommand::RemoveLeg { leg })
                    .await;
                if r.is_ok() {
                    self.keys
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&leg);
                }
                r
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
                if r.is_ok() {
                    self.keys
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|_, (s, _)| *s != session);
                }
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
                for shard in 0..self.shards.len() {
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
            Request::Stats => self.stats().await,
            Request::Mute { muted, for_ms } => {
                let until = match for_ms {
                    Some(ms) if !muted => self
                        .clock
                        .now()
                        .as_nanos()
                        .saturating_add(u64::from(ms) * 1_000_000),
                    _ => u64::MAX,
                };
                self.send_until_ns.store(until, Ordering::Release);
                self.muted.store(muted, Ordering::Release);
                Ok(Response::Done)
            }
            Request::Fence { fenced } => {
                self.fenced.store(fenced, Ordering::Release);
                if fenced {
                    let sessions: Vec<String> = self
                        .placement
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .by_session
                        .keys()
                        .cloned()
                        .collect();
                    for session in sessions {
                        Box::pin(self.request(Request::RemoveSession { session })).await?;
                    }
                }
                Ok(Response::Done)
            }
        }
    }

    async fn stats(&self) -> Result<Response, EngineError> {
        let mut all = EngineStats {
            backend: self.backend_name.clone(),
            shards: Vec::new(),
        };
        for (i, s) in self.shards.iter().enumerate() {
            if let Response::Stats(st) = self
                .send(i, ShardCommand::Stats(ShardStats::default()))
                .await?
            {
                all.shards.extend(st.shards.into_iter().map(|mut st| {
                    st.commands_rejected = s.rejected.load(Ordering::Relaxed);
                    st.events_lost += s.links.events_lost.load(Ordering::Relaxed) as u64;
                    let core = s.core.load(Ordering::Relaxed);
                    st.core = usize::try_from(core).ok();
                    st.backend_counters
                        .push(("ports_busy".into(), s.ports_busy.load(Ordering::Relaxed)));
                    st
                }));
            }
        }
        Ok(Response::Stats(all))
    }
}

fn lock_pool(s: &ShardPort) -> std::sync::MutexGuard<'_, PortPool> {
    s.pool.lock().unwrap_or_else(|e| e.into_inner())
}

/// Moves events from every shard's queue to the API channel, adding the session and leg
/// keys. Events of legs removed meanwhile are stale and dropped.
fn pump_events(
    queues: &[Arc<ArrayQueue<ShardEvent>>],
    keys: &Mutex<HashMap<LegId, (String, String)>>,
    out: &futures_channel::mpsc::UnboundedSender<EngineEvent>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Acquire) {
        let mut moved = false;
        for q in queues {
            while let Some(e) = q.pop() {
                moved = true;
                let event = match e {
                    ShardEvent::RemoteLatched(leg, remote) => {
                        Some(EngineEvent::RemoteLatched { leg, remote })
                    }
                    ShardEvent::FirstPacket(leg) | ShardEvent::MediaTimeout(leg) => {
                        let keys = keys.lock().unwrap_or_else(|e| e.into_inner());
                        keys.get(&leg).map(|(session, leg_key)| {
                            let (session, leg_key) = (session.clone(), leg_key.clone());
                            if matches!(e, ShardEvent::FirstPacket(_)) {
                                EngineEvent::FirstPacket {
                                    leg,
                                    session,
                                    leg_key,
                                }
                            } else {
                                EngineEvent::MediaTimeout {
                                    leg,
                                    session,
                                    leg_key,
                                }
                            }
                        })
                    }
                };
                if let Some(event) = event
                    && out.unbounded_send(event).is_err()
                {
                    return;
                }
            }
        }
        if !moved {
            std::thread::park_timeout(std::time::Duration::from_millis(2));
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
