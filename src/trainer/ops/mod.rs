//! Fused operations with their own backward: each one a candle `CustomOp` that does in one pass
//! over memory what the composed version does in many small ops, saving less for the backward.
//!
//! Why: candle 0.11's CPU autograd records every elementary op (a pass over memory and a saved
//! tensor each) and its fused `candle_nn` kernels (`rms_norm`, `softmax_last_dim`, `rope`) have no
//! backward at all. Training spends its time there (issue 12's profile).
//!
//! Rules every op here keeps:
//! - A composed twin built from candle's elementary ops stays beside it; tests compare the two
//!   (values, and gradients against finite differences in f64).
//! - `Kernels::Composed` (the `kernels` trial parameter) trains with the composed twins, to compare.
//! - CPU only until a kernel has run and been checked on a real GPU: on CUDA every op is composed
//!   (`effective`), so no unverified GPU kernel is ever a default path.

use candle_core::Device;

pub mod attention;
pub mod cpu;
pub mod cross_entropy;
pub mod embedding;
#[cfg(test)]
mod equivalence;
pub mod exp;
pub mod grad_sink;
pub mod linear;
pub mod lora;
pub mod rms_norm;
pub mod rope;
pub mod swiglu;

pub use crate::spec::params::Kernels;

/// The kernels a model on `device` trains with when `requested`: fused ones are CPU kernels, so a
/// CUDA model always computes the composed ops (candle's own CUDA kernels).
pub fn effective(requested: Kernels, device: &Device) -> Kernels {
    requested.on(device.is_cpu())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_gets_what_is_asked_for() {
        assert_eq!(effective(Kernels::Fused, &Device::Cpu), Kernels::Fused);
        assert_eq!(
            effective(Kernels::Composed, &Device::Cpu),
            Kernels::Composed
        );
    }
}
