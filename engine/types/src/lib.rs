//! # earshot-types: time and domain newtypes
//!
//! The vocabulary every other earshot crate speaks: a monotonic [`time::Instant`] that
//! callers pass in (the media core never reads a clock), and newtypes whose names carry
//! their domain and units ([`Ssrc`], [`SeqNo`], [`RtpTs`], [`Gain`], ...). No I/O, no
//! allocation, no unsafe.
#![forbid(unsafe_code)]

pub mod time;
mod types;

pub use types::*;
