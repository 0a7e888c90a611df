//! Mixing kernels (being written).
