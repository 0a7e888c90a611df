//! The shard thread's loop: the only place a shard meets a backend, a clock and its
//! queues.
//!
//! Each iteration:
//! 1. drain at most `commands_per_iteration` commands, apply each (handing a new leg's
//!    bound sockets to the backend, closing a removed leg's), acknowledge it;
//! 2. receive up to [`RECV_BATCHES`] batches, handing each datagram to the shard in place
//!    (forwarding happens here); stop early when a tick is due, so a flood of packets
//!    can delay a tick by at most one batch;
//! 3. run every tick that is due;
//! 4. flush the batched sends; move the shard's events to the engine's event queue;
//! 5. once the backend ran dry (a receive batch came back short), wait on it until the
//!    next deadline (at most 1 ms, so that commands are picked up promptly). The backend
//!    may hold out briefly for a batch of datagrams (io_uring: at most 50 us) but never
//!    past the deadline, so a tick waits for neither a receive drain (bounded by the
//!    deadline check after each batch) nor a wait.
//!
//! While the engine is muted (`Request::Mute`, sent by a cluster agent that hears no
//! peer, or past the last vouch of an agent that stopped vouching) the shard runs exactly as before, but everything it sends is built into a
//! scratch buffer and discarded: receiving, jitter buffers, mixing and stream state stay
//! current, so unmuting continues every stream where it would have been.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crossbeam_queue::ArrayQueue;
use earshot_core::io::{Datagram, MAX_UDP_PAYLOAD, PacketHandler, TxSink};
use earshot_core::shard::{ReleasedPort, Shard, ShardCommand, ShardEvent, ShardHandler};
use earshot_engine_api::{EngineError, Response};
use earshot_types::time::Duration;
use futures_channel::oneshot;

use crate::backend::{Backend, BoundPort};
use crate::clock::Clock;

/// A command, the sockets a new leg receives on, and where to send the acknowledgement.
#[derive(Debug)]
pub struct Envelope {
    /// The command.
    pub cmd: ShardCommand,
    /// For `AllocateLeg`: the leg's ports, bound off the shard thread (RTP, and RTCP on
    /// port+1 unless multiplexed). Closed unused if the shard refuses the leg or returns
    /// an existing one.
    pub ports: Vec<(u16, BoundPort)>,
    /// Resolved with the result once applied.
    pub reply: oneshot::Sender<Result<Response, EngineError>>,
}

/// What a shard thread shares with the engine handle.
#[derive(Debug, Clone)]
pub struct ShardLinks {
    /// Commands in.
    pub queue: Arc<ArrayQueue<Envelope>>,
    /// Events out, tagged with nothing: leg ids name their shard.
    pub events: Arc<ArrayQueue<ShardEvent>>,
    /// Events dropped because `events` was full.
    pub events_lost: Arc<AtomicUsize>,
    /// Ports whose sockets are closed, back to the handle's pool.
    pub released: Arc<ArrayQueue<ReleasedPort>>,
    /// Whether the shard thread still runs.
    pub alive: Arc<AtomicBool>,
    /// The CPU the shard thread runs on, as the kernel reports it after pinning (-1
    /// unknown).
    pub core: Arc<std::sync::atomic::AtomicI64>,
    /// Engine-wide: send nothing (every shard shares this flag).
    pub muted: Arc<AtomicBool>,
    /// Engine-wide: send nothing after this instant (nanoseconds of the engine clock;
    /// `u64::MAX`: no deadline), unless the agent vouches again (`Request::Mute`).
    pub send_until_ns: Arc<AtomicU64>,
}

/// Loop parameters from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct LoopParams {
    /// Commands applied per iteration at most.
    pub commands_per_iteration: usize,
    /// Datagrams per receive batch.
    pub recv_batch: usize,
    /// Core to pin to.
    pub core: Option<usize>,
}

/// Receive batches per loop iteration at most.
pub const RECV_BATCHES: usize = 8;

/// The longest a shard sleeps: bounds how long a command waits to be picked up.
const MAX_WAIT: Duration = Duration::from_millis(1);

/// An iteration longer than this is a stall (a quarter of the shortest ptime).
const STALL_BUDGET: Duration = Duration::from_micros(2_500);

/// Runs a shard until `stop` is set.
pub fn run(
    mut shard: Shard,
    mut backend: Box<dyn Backend>,
    links: ShardLinks,
    clock: Clock,
    stop: Arc<AtomicBool>,
    params: LoopParams,
) {
    // Whatever ends this function (stop, or a panic unwinding through it) marks the shard
    // dead and answers everything still queued, so no caller waits forever.
    let _guard = DeadShardGuard {
        queue: links.queue.clone(),
        alive: links.alive.clone(),
    };
    if let Some(core) = params.core {
        // Pinning is best effort: a core that does not exist (a container with fewer
        // CPUs than configured) leaves the thread unpinned rather than failing the engine.
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id: core });
    }
    links
        .core
        .store(crate::backend::current_cpu(), Ordering::Relaxed);
    // Best effort: without it ticks may wake up to 50 us late, which is still in budget.
    let _ = crate::backend::set_timer_slack_ns(1_000);
    let now_fn = || clock.now();
    while !stop.load(Ordering::Relaxed) {
        let now = clock.now();
        let iteration_start = now;
        for _ in 0..params.commands_per_iteration {
            let Some(env) = links.queue.pop() else { break };
            let result = apply(&mut shard, backend.as_mut(), now, env.cmd, env.ports);
            release_ports(&mut shard, backend.as_mut(), &links);
            // The caller may have given up waiting; the command is applied regardless.
            let _ = env.reply.send(result);
        }
        // Receive until the backend runs dry, at most RECV_BATCHES batches, so a burst is
        // absorbed before the ticks run but cannot starve them: a due tick ends it.
        let muted = links.muted.load(Ordering::Relaxed)
            || now.as_nanos() > links.send_until_ns.load(Ordering::Relaxed);
        let mut drained = false;
        for _ in 0..RECV_BATCHES {
            let mut handler = ShardHandler {
                shard: &mut shard,
                now,
            };
            let n = if muted {
                backend.poll_recv(params.recv_batch, &mut Muted(&mut handler))
            } else {
                backend.poll_recv(params.recv_batch, &mut handler)
            }
            .unwrap_or(0);
            drained = n < params.recv_batch;
            if drained || shard.poll_deadline().is_some_and(|d| d <= clock.now()) {
                break;
            }
        }
        let now = clock.now();
        if shard.poll_deadline().is_some_and(|d| d <= now) {
            if muted {
                shard.handle_ticks(now, &mut Discard::default(), &now_fn);
            } else {
                shard.handle_ticks(now, backend.tx(), &now_fn);
            }
        }
        let _ = backend.flush();
        while let Some(e) = shard.poll_event() {
            if links.events.push(e).is_err() {
                links.events_lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Stall detector: an iteration that took longer than the budget delayed every
        // packet and tick behind it. Counted, never logged, on this path.
        if clock.now().saturating_since(iteration_start) > STALL_BUDGET {
            shard.counters_mut().stalls += 1;
        }
        // Wait once the backend ran dry, not only after an empty pass: under load
        // every pass finds a few datagrams, and looping back at once would cost a
        // kernel entry per handful of them. The backend may hold out briefly for a
        // batch (io_uring: at most 50 us), never past the next tick.
        if drained && links.queue.is_empty() {
            let now = clock.now();
            let cap = now + MAX_WAIT;
            let deadline = shard.poll_deadline().map_or(cap, |d| d.min(cap));
            if deadline > now {
                let _ = backend.wait(now, deadline);
            }
        }
    }
}

/// Applies one command; a new leg's sockets go to the backend, unused ones are closed.
fn apply(
    shard: &mut Shard,
    backend: &mut dyn Backend,
    now: earshot_types::time::Instant,
    cmd: ShardCommand,
    ports: Vec<(u16, BoundPort)>,
) -> Result<Response, EngineError> {
    let stats = matches!(cmd, ShardCommand::Stats(_));
    let wanted = match &cmd {
        ShardCommand::AllocateLeg { port, family, .. } => Some((*port, *family)),
        _ => None,
    };
    let mut result = shard.handle_command(now, cmd);
    let mut ports = Some(ports);
    if let (Some((port, family)), Ok(Response::Leg(info))) = (wanted, &result) {
        // The shard took the port only if the leg is new (a retry returns the existing
        // leg on its own port): then the sockets become the backend's.
        if info.local.port() == port {
            let leg = info.leg;
            let mut added = Vec::new();
            let mut failure = None;
            for (p, bound) in ports.take().into_iter().flatten() {
                match backend.add_port(p, family, bound) {
                    Ok(()) => added.push(p),
                    Err(e) => {
                        failure = Some(format!("cannot receive on port {p}: {e}"));
                        break;
                    }
                }
            }
            if let Some(message) = failure {
                for p in added {
                    backend.close_port(p);
                }
                let _ = shard.handle_command(now, ShardCommand::RemoveLeg { leg });
                result = Err(EngineError::Internal(message));
            }
        }
    }
    // Ports bound for a leg the shard did not take go back unused (an idempotent retry
    // of AllocateLeg, as every reconciliation pass sends, must not leak one each time).
    for (p, bound) in ports.into_iter().flatten() {
        backend.discard_unused(p, bound);
    }
    if stats && let Ok(Response::Stats(s)) = &mut result {
        s.backend = backend.name().to_string();
        for shard_stats in &mut s.shards {
            shard_stats.backend_counters = backend
                .counters()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        }
    }
    result
}

/// Closes the sockets of removed legs and hands their ports back to the engine handle.
fn release_ports(shard: &mut Shard, backend: &mut dyn Backend, links: &ShardLinks) {
    while let Some(r) = shard.poll_released_port() {
        backend.close_port(r.port);
        if r.paired {
            backend.close_port(r.port + 1);
        }
        // The queue holds as many entries as the shard has ports: it cannot be full.
        let _ = links.released.push(r);
    }
}

/// A receive handler whose sends are discarded (the engine is muted).
struct Muted<'h, 'a>(&'h mut ShardHandler<'a>);

impl PacketHandler for Muted<'_, '_> {
    fn handle_datagram(&mut self, dgram: Datagram<'_>, _tx: &mut dyn TxSink) {
        self.0.handle_datagram(dgram, &mut Discard::default());
    }
}

/// Builds each datagram into a scratch buffer and drops it: the shard's state moves on
/// exactly as if it had been sent.
struct Discard {
    scratch: [u8; MAX_UDP_PAYLOAD],
}

impl Default for Discard {
    fn default() -> Self {
        Discard {
            scratch: [0; MAX_UDP_PAYLOAD],
        }
    }
}

impl TxSink for Discard {
    fn send_with(
        &mut self,
        _src_port: u16,
        _dst: std::net::SocketAddr,
        build: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> bool {
        build(&mut self.scratch);
        true
    }
}

struct DeadShardGuard {
    queue: Arc<ArrayQueue<Envelope>>,
    alive: Arc<AtomicBool>,
}

impl Drop for DeadShardGuard {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Release);
        if std::thread::panicking() {
            eprintln!("earshot-engine: a shard thread panicked; its legs are down");
        }
        drain_dead(&self.queue);
    }
}

/// Answers every command queued to a shard that no longer runs.
pub fn drain_dead(queue: &ArrayQueue<Envelope>) {
    while let Some(env) = queue.pop() {
        let _ = env
            .reply
            .send(Err(EngineError::Unavailable("shard stopped".into())));
    }
}
