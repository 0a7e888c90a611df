//! # earshot-media: the sans-IO media core
//!
//! Everything earshot does to audio, and nothing it does to the outside world. This crate
//! gathers the media core: wire formats ([`wire`], re-exported from `earshot-wire`),
//! codecs and mixing kernels ([`dsp`], from `earshot-dsp`), and the stateful pieces that
//! live here: a per-leg [`jitter`] buffer, the per-listener [`plan`] built from a
//! session's hear relation, and the per-output-leg RTP [`stream`].
//!
//! What it deliberately does not do: no sockets, threads, clocks, timers or syscalls.
//! Time is an argument ([`time::Instant`]) and randomness is a seed. After construction
//! nothing on the per-packet or per-frame path allocates.
//!
//! ## The driving loop
//! A data-plane shard (crate `earshot-engine`) drives these pieces like this:
//! 1. A datagram arrives: `wire::rtp::RtpPacket::new_checked` views it where it lies; bad
//!    input is an error value, counted and dropped by the caller.
//! 2. If a listener's plan forwards this source, the packet is re-stamped by that
//!    listener's [`stream::OutputStream`] and sent at once, bypassing the jitter buffer.
//! 3. Otherwise its payload goes into the leg's [`jitter::JitterBuffer`].
//! 4. At each tick, every mixed input is pulled from its jitter buffer as linear PCM
//!    (decoded by the leg's [`codec::Decoder`] and resampled to the session's mix rate
//!    where they differ), the [`dsp::mix`] kernels build each listener's mix from the
//!    session's gains, the listener's [`codec::Encoder`] encodes a frame once a ptime
//!    is complete, and the output stream stamps it.
#![forbid(unsafe_code)]

pub use earshot_dsp as dsp;
pub use earshot_types::time;
pub use earshot_types::*;
pub use earshot_wire as wire;

pub mod codec;
pub mod jitter;
pub mod mixer;
pub mod plan;
pub mod rng;
pub mod stream;
