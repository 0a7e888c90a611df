//! The shard thread's loop: the only place a shard meets a backend, a clock and its
//! command queue.
//!
//! Each iteration:
//! 1. drain at most `commands_per_iteration` commands, apply each, acknowledge it;
//! 2. receive one batch, handing each datagram to the shard in place (forwarding
//!    happens here);
//! 3. run every tick that is due;
//! 4. flush the batched sends;
//! 5. if nothing arrived, wait on the backend until the next deadline (at most 1 ms, so
//!    that commands are picked up promptly).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::ArrayQueue;
use earshot_engine_api::{EngineError, Response};
use earshot_media::time::Duration;
use futures_channel::oneshot;

use crate::backend::Backend;
use crate::clock::Clock;
use crate::shard::{Shard, ShardCommand, ShardHandler};

/// A command and where to send its acknowledgement.
#[derive(Debug)]
pub struct Envelope {
    /// The command.
    pub cmd: ShardCommand,
    /// Resolved with the result once applied.
    pub reply: oneshot::Sender<Result<Response, EngineError>>,
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
const RECV_BATCHES: usize = 8;

/// The longest a shard sleeps: bounds how long a command waits to be picked up.
const MAX_WAIT: Duration = Duration::from_millis(1);

/// An iteration longer than this is a stall (a quarter of the shortest ptime).
const STALL_BUDGET: Duration = Duration::from_micros(2_500);

/// Runs a shard until `stop` is set.
pub fn run(
    mut shard: Shard,
    mut backend: Box<dyn Backend>,
    queue: Arc<ArrayQueue<Envelope>>,
    clock: Clock,
    stop: Arc<AtomicBool>,
    params: LoopParams,
    alive: Arc<AtomicBool>,
) {
    // Whatever ends this function (stop, or a panic unwinding through it) marks the shard
    // dead and answers everything still queued, so no caller waits forever.
    let _guard = DeadShardGuard {
        queue: queue.clone(),
        alive,
    };
    if let Some(core) = params.core {
        // Pinning is best effort: a core that does not exist (a container with fewer
        // CPUs than configured) leaves the thread unpinned rather than failing the engine.
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id: core });
    }
    // Best effort: without it ticks may wake up to 50 us late, which is still in budget.
    let _ = crate::backend::set_timer_slack_ns(1_000);
    let now_fn = || clock.now();
    while !stop.load(Ordering::Relaxed) {
        let now = clock.now();
        let iteration_start = now;
        for _ in 0..params.commands_per_iteration {
            let Some(env) = queue.pop() else { break };
            let result = shard.handle_command(now, backend.as_mut(), env.cmd);
            // The caller may have given up waiting; the command is applied regardless.
            let _ = env.reply.send(result);
        }
        // Receive until the backend runs dry, at most RECV_BATCHES batches, so a burst is
        // absorbed before the ticks run but cannot starve them either.
        let mut received = 0;
        for _ in 0..RECV_BATCHES {
            let mut handler = ShardHandler {
                shard: &mut shard,
                now,
            };
            let n = backend
                .poll_recv(params.recv_batch, &mut handler)
                .unwrap_or(0);
            received += n;
            if n < params.recv_batch {
                break;
            }
        }
        let now = clock.now();
        if shard.poll_deadline().is_some_and(|d| d <= now) {
            shard.handle_ticks(now, backend.tx(), &now_fn);
        }
        let _ = backend.flush();
        // Stall detector: an iteration that took longer than the budget delayed every
        // packet and tick behind it. Counted, never logged, on this path.
        if clock.now().saturating_since(iteration_start) > STALL_BUDGET {
            shard.counters_mut().stalls += 1;
        }
        if received == 0 && queue.is_empty() {
            let now = clock.now();
            let cap = now + MAX_WAIT;
            let deadline = shard.poll_deadline().map_or(cap, |d| d.min(cap));
            if deadline > now {
                let _ = backend.wait(now, deadline);
            }
        }
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
