//! Small helpers every stage may use: deterministic random numbers, did-you-mean suggestions,
//! atomic file and folder replacement, the text of a caught panic.
//!
//! Knows nothing about sweeps, models or tensors; depends on no other module of sweep.

pub mod fs;
pub mod panic;
pub mod rng;
pub mod suggest;
