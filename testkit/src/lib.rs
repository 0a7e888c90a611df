//! # earshot-testkit: the one test kit
//!
//! Everything the tests, benchmarks and the cost model of earshot would otherwise write
//! again in every file, written once (STYLE.md, "One test kit"):
//! - [`tone`]: a sine generator, the Goertzel detector, and the "hears `hz` over this
//!   span" rule ([`tone::ToneReport`]);
//! - [`g711`]: G.711 through `earshot-dsp`, never a second implementation;
//! - [`rtp`]: one RTP header writer and one parser of received datagrams, both through
//!   `earshot-wire`, and the state of an outgoing stream;
//! - [`endpoint`]: a real-UDP PCMU phone that talks a paced tone and records what it
//!   hears;
//! - [`netns`]: network namespaces and veth pairs as guards, and [`netns::require_root`];
//! - [`fixtures`]: the parties, the hear relation of each supervision mode, the PCMU
//!   media of every test leg;
//! - [`rig`]: a [`earshot_core::Shard`] with its port pool and transmit sinks, sessions
//!   added in one call and fed a period of packets at a time;
//! - [`handler`]: an echoing, recording packet handler for driving backends directly;
//! - [`program`]: allocate, configure and plan through whatever reaches the engine.
//!
//! What it deliberately does not do: depend on the data plane (`earshot-engine`) or on
//! the AF_XDP crate, so that their own tests can use it without a cycle; judge results
//! (tests assert); read the clock or sleep anywhere but the real-socket endpoint.
//!
//! Contract: nothing here panics on what the network sends (parsers return `None`);
//! guards clean up on drop, also while a failing test unwinds; every helper that
//! generates data is deterministic. The one unsafe call, `setns(2)`, is fenced in
//! [`netns`] with its justification.

pub mod endpoint;
pub mod fixtures;
pub mod g711;
pub mod handler;
#[cfg(target_os = "linux")]
pub mod netns;
pub mod program;
pub mod rig;
pub mod rtp;
pub mod tone;
