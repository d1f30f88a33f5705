//! Data parallelism: a trial with `gpus: k` trains k identical model replicas, one per device.
//!
//! Every optimizer step splits the batch into k contiguous shards; each replica computes the
//! gradient of its shard (in micro-batches, as on one device) on its own device and its own
//! thread; the shard gradients are summed on the first device in replica order; the sum is
//! clipped once and one AdamW step updates the first replica, whose new values are then copied
//! into the others. So the replicas are bit-identical after every step by construction, and the
//! step equals the single-device step up to float summation order: every shard's summed token
//! loss is divided by the *whole* batch's counted-token total, so the shard gradients add up to
//! the gradient of the batch's mean token loss however unevenly the examples (and their tokens)
//! fall on the devices.
//!
//! On CPU, k CPU "devices" stand in for GPUs (the same code path). On CUDA each replica sits on
//! its own device and the gradients travel to the first device with `Tensor::to_device`; an NCCL
//! all-reduce would avoid that hop but needs a `nccl` build that cannot be made on the CPU-only
//! development machines.

use candle_core::Device;

use crate::text::encode::Seq;
use crate::trainer::model::{CausalLm, ModelError, Trainable};
use crate::trainer::optim::{AdamW, Clip};
use crate::trainer::step::{batch_gradients, ShardGradients, StepBatch, StepStats};

/// Errors of building or stepping replicas.
#[derive(Debug, thiserror::Error)]
pub enum ParallelError {
    #[error("replica {replica} has {found} trainable tensors, the first replica {expected}")]
    TrainableCount {
        replica: usize,
        found: usize,
        expected: usize,
    },
    #[error("replica {replica} trains `{name}` {shape:?} where the first replica trains `{expected_name}` {expected_shape:?}")]
    TrainableMismatch {
        replica: usize,
        name: String,
        shape: Vec<usize>,
        expected_name: String,
        expected_shape: Vec<usize>,
    },
    #[error("the thread of replica {replica} panicked: {message}")]
    ReplicaPanicked { replica: usize, message: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ParallelError>;

/// The examples each of `devices` devices takes from a batch of `batch` examples: contiguous
/// ranges, the first `batch % devices` devices one example more than the rest. Devices beyond the
/// batch get empty ranges and sit the step out.
pub fn shard_ranges(batch: usize, devices: usize) -> Vec<std::ops::Range<usize>> {
    let devices = devices.max(1);
    let (base, extra) = (batch / devices, batch % devices);
    let mut start = 0;
    (0..devices)
        .map(|d| {
            let len = base + usize::from(d < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

/// The most examples one device takes per step from a global batch of `batch` over `devices`:
/// what results.csv calls `per_device_batch`.
pub fn per_device_batch(batch: usize, devices: usize) -> usize {
    batch.div_ceil(devices.max(1))
}

/// k replicas of one model with one optimizer, kept identical (see the module comment).
pub struct Replicas {
    /// Replica 0 (the primary: optimizer, evaluation, checkpoints) first.
    models: Vec<CausalLm>,
    optimizer: AdamW,
}

impl Replicas {
    /// Takes `primary` as replica 0 and builds one more replica on each of `other_devices` from
    /// its current weights, with AdamW (decoupled `weight_decay`) over the primary's trainable
    /// tensors. `seed` initialises LoRA adapters as the primary's were; the copy that follows
    /// makes the replicas equal whatever the seed.
    pub fn new(
        primary: CausalLm,
        other_devices: &[Device],
        weight_decay: f64,
        seed: u64,
    ) -> Result<Self> {
        let mut models = Vec::with_capacity(1 + other_devices.len());
        if !other_devices.is_empty() {
            // Detached: a trainable base tensor is the primary's `Var`, which the replica must
            // not share (it copies it into a `Var` of its own); frozen tensors may be shared.
            let weights = primary
                .base_tensors()
                .into_iter()
                .map(|(name, tensor)| (name, tensor.detach()))
                .collect();
            let trainable = match primary.lora_settings() {
                Some(lora) => Trainable::Lora(lora.clone()),
                None => Trainable::All,
            };
            for device in other_devices {
                let mut replica = CausalLm::new(
                    primary.config.clone(),
                    &weights,
                    trainable.clone(),
                    seed,
                    device,
                    "replica of the first device's model",
                )?
                .with_kernels(primary.kernels());
                if let Some(score) = primary.score_head() {
                    replica = replica.with_score_head(&score.detach())?;
                }
                models.push(replica);
            }
        }
        models.insert(0, primary);
        let vars = models[0]
            .trainable()
            .iter()
            .map(|(_, v)| v.clone())
            .collect();
        let kernels = models[0].kernels();
        let replicas = Self {
            models,
            optimizer: AdamW::new(vars, weight_decay)?.with_kernels(kernels)?,
        };
        replicas.check_alike()?;
        replicas.broadcast()?;
        Ok(replicas)
    }

    /// Replica 0: the model that is evaluated and saved.
    pub fn primary(&self) -> &CausalLm {
        &self.models[0]
    }

    /// Every replica, the primary first.
    pub fn models(&self) -> &[CausalLm] {
        &self.models
    }

    /// How many devices train.
    pub fn count(&self) -> usize {
        self.models.len()
    }

    /// The optimizer of the primary's trainable tensors (to save its state).
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// Lets `load` change the primary and the optimizer (a resume point, say), then copies the
    /// primary's trainable values into every other replica so they stay identical.
    pub fn restore<T, E>(
        &mut self,
        load: impl FnOnce(&CausalLm, &mut AdamW) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E>
    where
        E: From<ParallelError>,
    {
        let loaded = load(&self.models[0], &mut self.optimizer)?;
        self.broadcast().map_err(E::from)?;
        Ok(loaded)
    }

    /// One optimizer step over `seqs` (the global batch): every replica takes its shard in
    /// micro-batches of `micro`, the gradients are summed on the primary's device in replica
    /// order, clipped by global norm, applied to the primary, and copied to the other replicas.
    /// The optimizer step: what a trial takes (on one device, one replica) and what the
    /// benchmarks (`trainer::bench`) time.
    pub fn step(
        &mut self,
        seqs: &[&Seq],
        micro: usize,
        pad: u32,
        lr: f64,
        max_grad_norm: f64,
    ) -> Result<StepStats> {
        self.step_batch(StepBatch::Tokens(seqs), micro, pad, lr, max_grad_norm)
    }

    /// `step` on a batch of either loss (`StepBatch`): the head methods' steps come here.
    pub fn step_batch(
        &mut self,
        batch: StepBatch,
        micro: usize,
        pad: u32,
        lr: f64,
        max_grad_norm: f64,
    ) -> Result<StepStats> {
        let denominator = batch.denominator().max(1) as f64;
        let shards = self.shard_gradients(batch, micro, pad, denominator)?;
        let primary_device = self.models[0].device().clone();
        let mut summed: Option<ShardGradients> = None;
        for shard in shards.into_iter().flatten() {
            summed = Some(match summed {
                None => ShardGradients {
                    grads: shard
                        .grads
                        .iter()
                        .map(|g| g.to_device(&primary_device))
                        .collect::<candle_core::Result<_>>()?,
                    ..shard
                },
                Some(total) => ShardGradients {
                    grads: total
                        .grads
                        .iter()
                        .zip(&shard.grads)
                        .map(|(sum, g)| sum + g.to_device(&primary_device)?)
                        .collect::<candle_core::Result<_>>()?,
                    loss: total.loss + shard.loss,
                    input_tokens: total.input_tokens + shard.input_tokens,
                },
            });
        }
        let ShardGradients {
            grads,
            loss,
            input_tokens,
        } = match summed {
            Some(total) => total,
            // An empty batch: every shard was empty. Zero gradients, as one device would take.
            None => batch_gradients(
                &self.models[0],
                batch.slice(0..0),
                micro,
                pad,
                denominator,
                true,
            )?,
        };
        let clip = Clip::of(&grads, max_grad_norm)?;
        self.optimizer.step_scaled(&grads, clip.scale, lr)?;
        self.broadcast()?;
        Ok(StepStats {
            loss,
            grad_norm: clip.norm,
            input_tokens,
        })
    }

    /// Each replica's gradients of its shard, in replica order (`None` for an empty shard). With
    /// more than one replica each runs on its own thread, so k devices (or k CPU shares) work at
    /// once; the primary's shard runs on the calling thread.
    fn shard_gradients(
        &self,
        batch: StepBatch,
        micro: usize,
        pad: u32,
        denominator: f64,
    ) -> Result<Vec<Option<ShardGradients>>> {
        let ranges = shard_ranges(batch.len(), self.models.len());
        if self.models.len() == 1 {
            // One device: the whole batch on the calling thread, empty batch included.
            return Ok(vec![Some(batch_gradients(
                &self.models[0],
                batch,
                micro,
                pad,
                denominator,
                true,
            )?)]);
        }
        let work = |model: &CausalLm, range: std::ops::Range<usize>| {
            let shard = batch.slice(range);
            if shard.is_empty() {
                Ok(None)
            } else {
                batch_gradients(model, shard, micro, pad, denominator, true).map(Some)
            }
        };
        std::thread::scope(|scope| {
            let others: Vec<_> = self
                .models
                .iter()
                .zip(ranges.iter().cloned())
                .skip(1)
                .map(|(model, range)| scope.spawn(move || work(model, range)))
                .collect();
            let first = work(&self.models[0], ranges[0].clone());
            // Every thread is joined before any error returns, so none outlives the step.
            let joined: Vec<_> = others.into_iter().map(|h| h.join()).collect();
            let mut out = vec![first?];
            for (i, result) in joined.into_iter().enumerate() {
                match result {
                    Ok(grads) => out.push(grads?),
                    Err(payload) => {
                        return Err(ParallelError::ReplicaPanicked {
                            replica: i + 1,
                            message: crate::util::panic::panic_message(payload.as_ref()),
                        })
                    }
                }
            }
            Ok(out)
        })
    }

    /// Copies the primary's trainable values into every other replica (in place, bit for bit).
    fn broadcast(&self) -> Result<()> {
        let (primary, others) = self.models.split_at(1);
        for replica in others {
            for ((_, source), (_, target)) in primary[0].trainable().iter().zip(replica.trainable())
            {
                target.set(&source.as_tensor().to_device(replica.device())?)?;
            }
        }
        Ok(())
    }

    /// Every replica has the primary's trainable tensors, by name and shape, in the same order.
    fn check_alike(&self) -> Result<()> {
        let expected = self.models[0].trainable();
        for (replica, model) in self.models.iter().enumerate().skip(1) {
            let found = model.trainable();
            if found.len() != expected.len() {
                return Err(ParallelError::TrainableCount {
                    replica,
                    found: found.len(),
                    expected: expected.len(),
                });
            }
            for ((name, var), (expected_name, expected_var)) in found.iter().zip(expected) {
                if name != expected_name || var.dims() != expected_var.dims() {
                    return Err(ParallelError::TrainableMismatch {
                        replica,
                        name: name.clone(),
                        shape: var.dims().to_vec(),
                        expected_name: expected_name.clone(),
                        expected_shape: expected_var.dims().to_vec(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_contiguous_and_the_first_devices_take_the_remainder() {
        assert_eq!(shard_ranges(5, 2), vec![0..3, 3..5]);
        assert_eq!(shard_ranges(8, 3), vec![0..3, 3..6, 6..8]);
        assert_eq!(shard_ranges(16, 1), vec![0..16]);
        // More devices than examples: the last ones sit the step out.
        assert_eq!(shard_ranges(1, 2), vec![0..1, 1..1]);
        assert_eq!(per_device_batch(5, 2), 3);
        assert_eq!(per_device_batch(16, 2), 8);
        assert_eq!(per_device_batch(16, 1), 16);
    }
}
