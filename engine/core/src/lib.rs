//! # earshot-core: the shard, a sans-IO state machine
//!
//! One [`shard::Shard`] holds one core's share of the engine outright: its legs, sessions,
//! port table, jitter buffers, output streams and tick wheel. It owns no socket, thread,
//! clock or queue (STYLE.md rule 1): the data plane (`earshot-engine`) drives it on a
//! pinned thread with real I/O, the simulation harness (`earshot-tests`) drives it in
//! virtual time, and the benchmarks drive it flat out. They all run this loop:
//!
//! 1. For each command taken from the shard's queue, call
//!    [`Shard::handle_command`](shard::Shard::handle_command) with `now`; a new leg's
//!    port was chosen from a [`ports::PortPool`] and bound by the caller before.
//! 2. For each received datagram, call
//!    [`Shard::handle_packet`](shard::Shard::handle_packet) with the datagram where it
//!    lies and a [`io::TxSink`] (forwarding happens here, inside the receive batch).
//! 3. When [`Shard::poll_deadline`](shard::Shard::poll_deadline) has passed, call
//!    [`Shard::handle_ticks`](shard::Shard::handle_ticks): mixing sessions pull, mix,
//!    encode and send.
//! 4. Drain [`Shard::poll_event`](shard::Shard::poll_event) (first packets, media
//!    timeouts, latched remotes: ids, no strings) and
//!    [`Shard::poll_released_port`](shard::Shard::poll_released_port) (close the socket,
//!    return the port to the pool).
//!
//! What it deliberately does not do: no I/O and no syscalls, no clock reads (time is an
//! argument; the tick-processing histogram reads a caller-supplied time source), no
//! allocation on the packet path or in ticks, no decisions about who hears whom (the
//! control side's rules send the hear relation as a plan).
//!
//! Contract: bad input from the network is counted by reason ([`stats::DropReason`]) and
//! dropped; it never panics and never reaches another leg. A command changes one session
//! whole; every command is safe to retry.
#![forbid(unsafe_code)]

pub mod io;
pub mod ports;
pub mod rtp;
pub mod shard;
pub mod stats;

pub use shard::{ReleasedPort, Shard, ShardCommand, ShardConfig, ShardEvent, ShardHandler};
