//! # earshot-engine: the data plane
//!
//! Thread-per-core shards that carry live calls. Each shard ([`shard::Shard`]) owns its
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
pub mod rtp;
pub mod runtime;
pub mod server;
pub mod shard;
pub mod stats;
