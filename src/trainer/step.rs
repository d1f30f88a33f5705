//! The gradients of all or part of a batch, in micro-batches, and what an optimizer step reports.
//! The optimizer step itself, on one device or k, is `parallel::Replicas::step`: the one step
//! training takes and the benchmarks time.

use candle_core::{DType, Tensor};

use crate::text::encode::Seq;
use crate::trainer::batch::{make_batch, shared_prefix_nll, token_nll};
use crate::trainer::model::CausalLm;

/// What one optimizer step did.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Mean loss per counted token over the whole batch.
    pub loss: f64,
    pub grad_norm: f64,
    pub input_tokens: usize,
}

/// The target tokens the loss counts in `seqs`: the denominator of the batch's mean token loss.
pub fn counted_tokens(seqs: &[&Seq]) -> usize {
    seqs.iter()
        .map(|s| s.ids.len().saturating_sub(s.loss_from.max(1)))
        .sum()
}

/// The gradients of part of a batch, before clipping.
pub struct ShardGradients {
    /// One per trainable tensor of the model, in `CausalLm::trainable` order (zeros where the
    /// part gave none).
    pub grads: Vec<Tensor>,
    /// This part's summed token loss divided by the whole batch's `denominator`: its share of
    /// the batch's mean token loss.
    pub loss: f64,
    pub input_tokens: usize,
}

/// The gradients of `seqs` (all or part of a batch) in micro-batches of `micro` sequences, each
/// micro-batch's summed token loss divided by `denominator`, the whole batch's counted tokens.
/// Why a shared denominator: then the gradients of any split of the batch (micro-batches,
/// devices, uneven shares) add up to the gradient of the batch's mean token loss.
/// Each micro-batch's shared prefix (the system prompt of the seed's data) is computed once.
pub fn shard_gradients(
    model: &CausalLm,
    seqs: &[&Seq],
    micro: usize,
    pad: u32,
    denominator: f64,
) -> candle_core::Result<ShardGradients> {
    shard_gradients_with(model, seqs, micro, pad, denominator, true)
}

/// `shard_gradients`, with each micro-batch's shared prefix computed once (`share_prefix`) or
/// in every sequence (the plain computation, which tests compare against).
pub fn shard_gradients_with(
    model: &CausalLm,
    seqs: &[&Seq],
    micro: usize,
    pad: u32,
    denominator: f64,
    share_prefix: bool,
) -> candle_core::Result<ShardGradients> {
    batch_gradients(
        model,
        StepBatch::Tokens(seqs),
        micro,
        pad,
        denominator,
        share_prefix,
    )
}

/// A batch (or part of one) as its method's loss reads it.
#[derive(Debug, Clone, Copy)]
pub enum StepBatch<'a> {
    /// Sequences whose answer tokens (or text) count: the generative methods' token loss.
    Tokens(&'a [&'a Seq]),
    /// Prompts with their label's index: the head methods' cross-entropy, one per example
    /// (`trainer::head`).
    Classes(&'a [(&'a Seq, u32)]),
}

impl<'a> StepBatch<'a> {
    pub fn len(&self) -> usize {
        match self {
            StepBatch::Tokens(s) => s.len(),
            StepBatch::Classes(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples in `range`.
    pub fn slice(&self, range: std::ops::Range<usize>) -> StepBatch<'a> {
        match *self {
            StepBatch::Tokens(s) => StepBatch::Tokens(&s[range]),
            StepBatch::Classes(s) => StepBatch::Classes(&s[range]),
        }
    }

    /// What the batch's summed loss is divided by: its counted tokens, or its examples.
    pub fn denominator(&self) -> usize {
        match self {
            StepBatch::Tokens(s) => counted_tokens(s),
            StepBatch::Classes(s) => s.len(),
        }
    }
}

/// The summed loss of one micro-batch and its non-pad input tokens; `None` when nothing in it
/// counts.
fn micro_batch_loss(
    model: &CausalLm,
    chunk: StepBatch,
    pad: u32,
    share_prefix: bool,
) -> candle_core::Result<(Option<Tensor>, usize)> {
    let seqs = match chunk {
        StepBatch::Tokens(seqs) => seqs,
        StepBatch::Classes(examples) => {
            let prompts: Vec<&[u32]> = examples.iter().map(|(s, _)| s.ids.as_slice()).collect();
            let classes: Vec<u32> = examples.iter().map(|(_, c)| *c).collect();
            let tokens = prompts.iter().map(|p| p.len()).sum();
            let nll =
                crate::trainer::head::class_nll(model, &prompts, &classes, pad, share_prefix)?;
            return Ok((Some(nll.sum_all()?), tokens));
        }
    };
    let shared = if share_prefix {
        shared_prefix_nll(model, seqs, pad)?
    } else {
        None
    };
    let (nll, batch) = match shared {
        Some(done) => done,
        None => {
            let batch = make_batch(seqs, pad, model.device())?;
            if batch.tokens == 0 {
                return Ok((None, batch.input_tokens));
            }
            (token_nll(model, &batch)?, batch)
        }
    };
    Ok((Some(nll.sum_all()?), batch.input_tokens))
}

/// The gradients of `batch` (all or part of a batch) in micro-batches of `micro` examples, each
/// micro-batch's summed loss divided by `denominator`, the whole batch's (`StepBatch::denominator`).
/// Why a shared denominator: then the gradients of any split of the batch (micro-batches,
/// devices, uneven shares) add up to the gradient of the batch's mean loss.
pub fn batch_gradients(
    model: &CausalLm,
    batch: StepBatch,
    micro: usize,
    pad: u32,
    denominator: f64,
    share_prefix: bool,
) -> candle_core::Result<ShardGradients> {
    let vars = model.trainable();
    // Whatever a failed earlier step left in the fused ops' gradient sinks is not this step's.
    model.clear_gradients()?;
    let mut acc: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut loss_total = 0.0;
    let mut input_tokens = 0;
    let micro = micro.max(1);
    for start in (0..batch.len()).step_by(micro) {
        let chunk = batch.slice(start..(start + micro).min(batch.len()));
        let (summed, tokens) = micro_batch_loss(model, chunk, pad, share_prefix)?;
        input_tokens += tokens;
        let Some(summed) = summed else {
            continue;
        };
        let loss = (summed / denominator)?;
        loss_total += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let grads = model.gradients(&loss.backward()?)?;
        for (slot, g) in acc.iter_mut().zip(grads) {
            if let Some(g) = g {
                *slot = Some(match slot.take() {
                    Some(prev) => (prev + g)?,
                    None => g,
                });
            }
        }
    }
    let grads = acc
        .into_iter()
        .zip(vars)
        .map(|(g, (_, v))| match g {
            Some(g) => Ok(g),
            None => v.as_tensor().zeros_like(),
        })
        .collect::<candle_core::Result<_>>()?;
    Ok(ShardGradients {
        grads,
        loss: loss_total,
        input_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::model::{tests::tiny_config, LoraSettings, Trainable};
    use crate::trainer::ops::Kernels;
    use crate::trainer::optim::AdamW;
    use crate::util::rng::SplitMix64;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// A tiny model computing with `kernels`; LoRA's B matrices random (not zero), so that every
    /// adapter gets a gradient.
    fn model(trainable: Trainable, kernels: Kernels) -> CausalLm {
        let dev = Device::Cpu;
        let cfg = tiny_config(19);
        let w = CausalLm::random_weights(&cfg, 5, DType::F32, &dev).unwrap();
        let m = CausalLm::new(cfg, &w, trainable, 1, &dev, "t")
            .unwrap()
            .with_kernels(kernels);
        let mut rng = SplitMix64::new(8);
        for (name, var) in m.trainable() {
            if name.contains("lora_B") {
                let values: Vec<f32> = (0..var.elem_count())
                    .map(|_| 0.05 * rng.normal() as f32)
                    .collect();
                var.set(&Tensor::from_vec(values, var.shape(), &dev).unwrap())
                    .unwrap();
            }
        }
        m
    }

    #[test]
    fn fused_and_composed_kernels_give_one_training_step() {
        let lora = LoraSettings {
            rank: 2,
            alpha: 4.0,
            targets: [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
        };
        // Three sequences sharing a 3-token prefix (computed once, with per-row rotary tables),
        // of unequal lengths (padding).
        let seqs = [
            Seq {
                ids: vec![1, 2, 3, 4, 5, 6, 7, 8],
                loss_from: 3,
            },
            Seq {
                ids: vec![1, 2, 3, 9, 10, 11],
                loss_from: 3,
            },
            Seq {
                ids: vec![1, 2, 3, 12, 13, 14, 15],
                loss_from: 1,
            },
        ];
        let refs: Vec<&Seq> = seqs.iter().collect();
        for trainable in [Trainable::All, Trainable::Lora(lora)] {
            for share_prefix in [true, false] {
                let mut results = Vec::new();
                for kernels in [Kernels::Fused, Kernels::Composed] {
                    let m = model(trainable.clone(), kernels);
                    assert_eq!(m.kernels(), kernels);
                    let shard = shard_gradients_with(&m, &refs, 2, 0, 17.0, share_prefix).unwrap();
                    let vars = m.trainable().iter().map(|(_, v)| v.clone()).collect();
                    let mut opt = AdamW::new(vars, 0.1)
                        .unwrap()
                        .with_kernels(kernels)
                        .unwrap();
                    assert_eq!(opt.is_fused(), kernels == Kernels::Fused);
                    for _ in 0..2 {
                        opt.step(&shard.grads, 1e-2).unwrap();
                    }
                    let params: Vec<Tensor> = m
                        .trainable()
                        .iter()
                        .map(|(_, v)| v.as_tensor().copy().unwrap())
                        .collect();
                    results.push((shard, params));
                }
                let ((fused, fused_params), (composed, composed_params)) =
                    (&results[0], &results[1]);
                assert!((fused.loss - composed.loss).abs() < 1e-5);
                assert_eq!(fused.input_tokens, composed.input_tokens);
                for (a, b) in fused.grads.iter().zip(&composed.grads) {
                    assert!(
                        max_diff(a, b) < 1e-5,
                        "gradient differs by {}",
                        max_diff(a, b)
                    );
                }
                for (a, b) in fused_params.iter().zip(composed_params) {
                    assert!(
                        max_diff(a, b) < 1e-5,
                        "parameter differs by {}",
                        max_diff(a, b)
                    );
                }
            }
        }
    }
}
