//! # earshot-dsp: G.711 and the mixing kernels
//!
//! The sample-level arithmetic of the media core: [`g711`] converts between G.711 bytes
//! and 16-bit linear samples (and directly between mu-law and A-law), and [`mix`] sums
//! several talkers' frames, each under its own gain, into what one listener hears. The
//! media crate calls these once per frame, with decisions (who hears whom, forward or
//! mix, which codec) already taken.
//!
//! What it deliberately does not do: no I/O, no clock, no allocation on any per-frame
//! function, no state. It does not decide gains, resample, conceal loss or generate
//! comfort noise; those belong to `earshot-media`.
//!
//! Contract:
//! - G.711 is bit-exact with the ITU-T G.191 reference `g711.c` for encode and decode,
//!   and with G.711 Tables 3 and 4 for transcoding; all tables are built at compile time.
//! - Mixing follows one formula, defined by the scalar reference ([`mix::mix_scalar`]);
//!   every SIMD variant is property-tested bit-identical to it. A kernel table is chosen
//!   once ([`mix::MixKernels::detect`]); `EARSHOT_FORCE_SCALAR=1` forces the reference.
//! - G.711 encode and decode have SIMD variants too, tested bit-identical to the
//!   table-driven reference and chosen once per process ([`g711::kernels`]), with the
//!   same `EARSHOT_FORCE_SCALAR=1` override.
//! - Unsafe code exists only in the SIMD modules of [`mix`] and [`g711`] and in
//!   [`prefetch`] (one hint instruction), fenced per module, with a `SAFETY` comment on
//!   every block.

pub mod g711;
pub mod g722;
pub mod mix;
pub mod prefetch;
pub mod resample;
