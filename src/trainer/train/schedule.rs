//! A trial's shape in steps, from its parameters alone: how the global batch falls on devices and
//! micro-batches, how many steps, which of them evaluate, the warm-up, each epoch's order.

use std::collections::BTreeSet;

use crate::protocol::trial::evaluation_steps;
use crate::spec::params::TrialParams;
use crate::trainer::parallel::per_device_batch;
use crate::util::rng::SplitMix64;

/// The micro-batch a trial with `params` runs at over `devices` devices: per forward pass on one
/// device, at most the device's share of the global batch.
pub fn micro_batch_of(params: &TrialParams, devices: usize) -> usize {
    let share = per_device_batch(params.batch_size as usize, devices);
    (params.micro_batch() as usize).min(share).max(1)
}

/// What `Schedule::of` decides for a trial.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// The global batch: each step's examples over all devices.
    pub batch_size: usize,
    pub steps_per_epoch: usize,
    /// Steps over every planned epoch: the learning-rate schedule's length.
    pub total_steps: usize,
    pub warmup_steps: usize,
    pub devices: usize,
    /// The most examples one device takes per step.
    pub per_device_batch: usize,
    /// Examples per forward pass on one device (also the evaluation's batch).
    pub micro_batch: usize,
    /// Forward passes per step on one device.
    pub grad_accum: usize,
    /// The steps (1-based, over the whole trial) after which the trial evaluates.
    pub evaluate_after: BTreeSet<usize>,
}

impl Schedule {
    /// The schedule of a trial with `params` over `train_examples` examples and `devices`
    /// devices. The schedule always follows the full planned length, so a trial's first k steps
    /// are the same whether or not early termination stops it after them. `batch_size` is the
    /// global batch: each step's examples are split over the devices, the first
    /// `batch_size % k` devices taking one more.
    pub fn of(params: &TrialParams, train_examples: usize, devices: usize) -> Self {
        let batch_size = params.batch_size as usize;
        let steps_per_epoch = train_examples.div_ceil(batch_size);
        let total_steps = steps_per_epoch * params.epochs as usize;
        let per_device_batch = per_device_batch(batch_size, devices);
        let micro_batch = micro_batch_of(params, devices);
        Self {
            batch_size,
            steps_per_epoch,
            total_steps,
            warmup_steps: (params.warmup * total_steps as f64).round() as usize,
            devices,
            per_device_batch,
            micro_batch,
            grad_accum: per_device_batch.div_ceil(micro_batch),
            evaluate_after: evaluation_steps(steps_per_epoch, params.epochs, params.eval_every)
                .into_iter()
                .collect(),
        }
    }
}

/// The order of `examples` training examples in `epoch` (1-based). It depends on the seed and
/// the epoch alone, so a resumed trial sees the same batches as an uninterrupted one.
pub fn epoch_order(seed: u64, epoch: u32, examples: usize) -> Vec<usize> {
    let mut rng =
        SplitMix64::new(seed ^ 0x5eed_da7a ^ u64::from(epoch).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..examples).collect();
    rng.shuffle(&mut order);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, serde_json::Value)]) -> TrialParams {
        TrialParams::from_assignment(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            0,
        )
        .unwrap()
    }

    #[test]
    fn the_global_batch_falls_on_devices_then_micro_batches() {
        let p = params(&[
            ("batch_size", serde_json::json!(12)),
            ("micro_batch", serde_json::json!(4)),
            ("epochs", serde_json::json!(3)),
            ("warmup", serde_json::json!(0.1)),
        ]);
        let s = Schedule::of(&p, 25, 2);
        assert_eq!(s.steps_per_epoch, 3);
        assert_eq!(s.total_steps, 9);
        assert_eq!(s.warmup_steps, 1);
        assert_eq!(s.per_device_batch, 6);
        assert_eq!(s.micro_batch, 4);
        assert_eq!(s.grad_accum, 2);
        assert_eq!(s.evaluate_after, [3, 6, 9].into_iter().collect());
        // A micro-batch above a device's share is cut to it.
        let one = params(&[
            ("batch_size", serde_json::json!(8)),
            ("micro_batch", serde_json::json!(8)),
        ]);
        assert_eq!(micro_batch_of(&one, 2), 4);
        assert_eq!(Schedule::of(&one, 16, 2).grad_accum, 1);
    }

    #[test]
    fn an_epochs_order_is_a_permutation_fixed_by_seed_and_epoch() {
        let a = epoch_order(3, 1, 50);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(3, 1, 50));
        assert_ne!(a, epoch_order(3, 2, 50));
        assert_ne!(a, epoch_order(4, 1, 50));
    }
}
