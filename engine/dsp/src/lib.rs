//! # earshot-dsp: G.711 and the mixing kernels
//!
//! Pure functions over sample slices. No I/O, no allocation, no clock. The mixing
//! kernels have a scalar reference that defines correct; SIMD variants are chosen once
//! at start (see [`mix`]).

pub mod g711;
pub mod mix;
