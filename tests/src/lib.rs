//! # earshot-tests: deterministic simulation and behaviour tests
//!
//! The main test of earshot (STYLE.md rule 9). [`sim`] is a harness that drives one
//! data-plane shard (`earshot_core::Shard`, the sans-IO core) sans-IO, in seeded virtual time,
//! with simulated phones (tone talkers with drift and DTMF, listeners that detect tones)
//! across a network model (delay, jitter, loss, reordering, duplicates). The files in
//! `tests/` each prove one behaviour of SPEC sections 1 and 5 with it.
//!
//! What it deliberately does not do: open sockets, start threads or read a clock. The
//! real-socket end-to-end tests sit on top of this, not instead of it.
//!
//! Contract: a run is a pure function of its seed. Every failure prints
//! `seed = N (replay with EARSHOT_SEED=N)`, and setting that variable replays the run
//! bit for bit.
#![forbid(unsafe_code)]

pub mod sim;
