//! # earshot-engine: the data plane
//!
//! Thread-per-core shards that carry live calls. Each shard ([`earshot_core::Shard`], the
//! sans-IO state machine of crate `earshot-core`) owns its
//! legs, sessions, port table, jitter buffers, output streams and tick schedule outright;
//! it takes no lock on the packet path and allocates nothing there. The control side
//! programs shards through bounded lock-free command queues ([`engine::EngineHandle`],
//! which implements `earshot_engine_api::EngineApi`), in-process or through the local
//! Unix socket ([`server`]).
//!
//! Shards meet the outside world only through a [`backend::Backend`]: io_uring, portable
//! sockets, AF_XDP or in-memory queues, behind one batch interface that admits zero-copy
//! frames.
//!
//! What this crate does not do: decide who hears whom (the control side's rules do) or
//! read the OS clock anywhere but [`clock`].

pub mod backend;
pub mod clock;
pub mod config;
pub mod engine;
pub mod runtime;
pub mod server;

/// The shard and everything it is made of: re-exported so that users of the data plane
/// name one crate.
pub use earshot_core as core;
