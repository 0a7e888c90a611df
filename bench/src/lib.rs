//! # earshot-bench
//!
//! Criterion micro-benchmarks live in `benches/`; they run in test mode in CI
//! (`cargo test --all-targets` runs each once) so they cannot rot. The whole-engine
//! runner (capacity search, latency histograms, JSON scenarios and results) lives in
//! this crate's binaries.
#![forbid(unsafe_code)]
