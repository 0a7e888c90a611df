//! # earshot-bench
//!
//! Criterion micro-benchmarks live in `benches/`; they run in test mode in CI
//! (`cargo test --all-targets` runs each once) so they cannot rot. The whole-engine
//! runner lives here and in the `earshot-bench` binary:
//! - [`capacity`]: how many 3-party barge sessions one core carries with zero late
//!   ticks, driving the test kit's shard rig (a [`earshot_engine::core::Shard`]) on the
//!   real clock with the in-memory packet path (no kernel in the way), in steps of 60 s
//!   with the machine's stall record beside each;
//! - [`udp`]: the same engine behind real UDP on loopback, against a bare batched UDP
//!   reflector measured in the same run (the kernel's ceiling, SPEC section 6);
//! - [`udp_ramp`]: barge capacity through real UDP, in steps, each with the shard's
//!   busy share, late ticks and CPU per packet beside the machine's stall record;
//! - [`veth`]: AF_XDP vs io_uring vs sockets across a veth pair between two network
//!   namespaces, with a socket and an AF_XDP reflector as baselines (needs root);
//! - [`machine`]: per-core busy and stolen time from `/proc/stat`, reported beside
//!   every measurement;
//! - [`scenario`]: JSON scenario files (`bench/scenarios/*.json`) and JSON results
//!   (`bench/results/*.json`).
//!
//! What it deliberately does not do: judge. It measures and reports numbers next to the
//! SPEC targets; whether a noisy 2-core box met a target is for the reader of the
//! report. It is not a load generator for production either: every run is bounded.
//!
//! Contract: every run is bounded in time (`max_seconds`, `duration_ms`); the runner
//! never changes engine code paths, it only feeds them.

pub mod capacity;
pub mod machine;
pub mod net;
pub mod scenario;
pub mod udp;
pub mod udp_ramp;
#[cfg(target_os = "linux")]
pub mod veth;

/// Why a benchmark run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The engine refused a setup command.
    #[error("engine refused setup: {0}")]
    Engine(#[from] earshot_engine_api::EngineError),
    /// The engine answered with an unexpected response kind.
    #[error("unexpected engine response to {0}")]
    UnexpectedResponse(&'static str),
    /// The shard rig (in-memory runs) could not be set up.
    #[error("{0}")]
    Rig(#[from] earshot_testkit::rig::RigError),
    /// A socket or file operation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A scenario or result file could not be parsed or written.
    #[error("json: {0}")]
    Json(#[from] simd_json::Error),
}
