//! The head methods (`classifier`, `classifier_lora`): a linear head over the final hidden state
//! (after the final norm) of each prompt's last token, trained with cross-entropy over train's
//! labels. It is transformers' `*ForSequenceClassification` (`score.weight`, no bias), which pools
//! the last token that is not padding: our prompts are right-padded and never end in padding (a
//! chat template's generation prompt or the query's last token), so both read the same position.
//!
//! One forward per example, in training and in evaluation (no answer tokens, no label search).
//! Prompts that start alike (the seed's system prompt) have that prefix computed once: per
//! micro-batch in training (as `batch::shared_prefix_nll`), once for the whole dev set in
//! evaluation (as `scoring`). The model carries the head (`CausalLm::with_score_head`), so the
//! optimizer, replicas, resume points and checkpoints see it as one more trained tensor.

use candle_core::{DType, Device, Tensor, D};

use crate::trainer::batch::prefix_past;
use crate::trainer::model::{prefix_causal_mask, CausalLm, KvCache};
use crate::util::rng::SplitMix64;

/// A head's starting weight, (labels, hidden): normal with std 0.02 (transformers'
/// `initializer_range`), reproducible by seed.
pub fn initial_head(
    labels: usize,
    hidden: usize,
    seed: u64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut rng = SplitMix64::new(seed ^ 0x5c_0e);
    let data: Vec<f32> = (0..labels * hidden)
        .map(|_| rng.normal() as f32 * 0.02)
        .collect();
    Tensor::from_vec(data, (labels, hidden), device)
}

/// How many leading tokens every one of `prompts` shares and can be computed once: their common
/// prefix, short of each prompt's last token (whose hidden state meets the head and so must be
/// in each prompt's own part). 0 when fewer than two prompts would share it.
pub fn shared_prompt_prefix(prompts: &[&[u32]]) -> usize {
    let [first, rest @ ..] = prompts else {
        return 0;
    };
    if rest.is_empty() {
        return 0;
    }
    let mut common = first.len();
    for p in rest {
        common = common.min(first.iter().zip(*p).take_while(|(a, b)| a == b).count());
    }
    let shortest = prompts.iter().map(|p| p.len()).min().unwrap_or(0);
    common.min(shortest.saturating_sub(1))
}

/// The final hidden state of each prompt's last token, (n, hidden), for prompts that continue
/// after `past` (their first `past.len()` tokens, computed already; `None`: from the start). The
/// prompts are right-padded with `pad` to one width: causal attention keeps padding out of every
/// real token's state.
pub fn last_hidden_after(
    model: &CausalLm,
    prompts: &[&[u32]],
    past: Option<&KvCache>,
    pad: u32,
) -> candle_core::Result<Tensor> {
    let device = model.device();
    let p = past.map_or(0, |k| k.len());
    let own: Vec<&[u32]> = prompts.iter().map(|s| &s[p.min(s.len())..]).collect();
    if own.iter().any(|s| s.is_empty()) {
        candle_core::bail!("a prompt has no token of its own after a shared prefix of {p}");
    }
    let width = own.iter().map(|s| s.len()).max().unwrap_or(1);
    let mut ids = Vec::with_capacity(own.len() * width);
    let mut last = Vec::with_capacity(own.len());
    for (row, s) in own.iter().enumerate() {
        ids.extend(s.iter().copied().chain(std::iter::repeat(pad)).take(width));
        last.push((row * width + s.len() - 1) as u32);
    }
    let ids = Tensor::from_vec(ids, (own.len(), width), device)?;
    let positions: Vec<usize> = (p..p + width).collect();
    let mask = prefix_causal_mask(p, width, model.dtype(), device)?;
    let pasts: Vec<&KvCache> = past.into_iter().collect();
    let (hidden, _) = model.forward_with_past(&ids, &pasts, &positions, &mask)?;
    let h = hidden.dim(2)?;
    hidden
        .reshape((own.len() * width, h))?
        .index_select(&Tensor::from_vec(last, own.len(), device)?, 0)
}

/// `last_hidden_after` with the prompts' shared prefix (`shared_prompt_prefix`) computed once
/// when `share_prefix`; gradients flow back into it through its keys and values.
pub fn last_hidden(
    model: &CausalLm,
    prompts: &[&[u32]],
    pad: u32,
    share_prefix: bool,
) -> candle_core::Result<Tensor> {
    let p = if share_prefix {
        shared_prompt_prefix(prompts)
    } else {
        0
    };
    if p == 0 {
        return last_hidden_after(model, prompts, None, pad);
    }
    let past = prefix_past(model, &prompts[0][..p])?;
    last_hidden_after(model, prompts, Some(&past), pad)
}

/// The head's log-probabilities of every label, (n, labels), from last-token hidden states (n,
/// hidden): half precision normalised in f32, as the language-model loss is.
pub fn class_log_probs(model: &CausalLm, hidden: &Tensor) -> candle_core::Result<Tensor> {
    let Some(score) = model.score_head() else {
        candle_core::bail!("the model has no classification head");
    };
    let hidden = hidden.to_dtype(score.dtype())?;
    let logits = hidden.matmul(&score.t()?)?;
    let logits = match logits.dtype() {
        DType::BF16 | DType::F16 => logits.to_dtype(DType::F32)?,
        _ => logits,
    };
    candle_nn::ops::log_softmax(&logits, D::Minus1)
}

/// The cross-entropy of each prompt's class, (n,): what a training step sums and divides by the
/// batch's example count.
pub fn class_nll(
    model: &CausalLm,
    prompts: &[&[u32]],
    classes: &[u32],
    pad: u32,
    share_prefix: bool,
) -> candle_core::Result<Tensor> {
    let hidden = last_hidden(model, prompts, pad, share_prefix)?;
    let logp = class_log_probs(model, &hidden)?;
    let classes = Tensor::from_slice(classes, classes.len(), model.device())?;
    logp.gather(&classes.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
}

/// Every label's log-probability for every prompt, one forward per prompt in batches of
/// `eval_batch`, with no gradient; the prompts' common prefix is computed once for all of them.
/// What a trial's evaluation, `sweep eval` and `sweep predict` compute for the head methods.
pub fn label_log_probs(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    pad: u32,
    eval_batch: usize,
) -> candle_core::Result<Vec<Vec<f64>>> {
    let model = model.detached();
    let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let p = shared_prompt_prefix(&refs);
    let past = match p {
        0 => None,
        _ => Some(prefix_past(&model, &refs[0][..p])?),
    };
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in refs.chunks(eval_batch.max(1)) {
        let hidden = last_hidden_after(&model, chunk, past.as_ref(), pad)?;
        let logp = class_log_probs(&model, &hidden)?.to_dtype(DType::F64)?;
        out.extend(logp.to_vec2::<f64>()?);
    }
    Ok(out)
}

/// A head evaluation's numbers from every dev example's label log-probabilities: the mean
/// cross-entropy of the gold labels (over the examples whose label train has; NaN when none
/// has), the accuracy (an example whose label train lacks counts as wrong), and each example's
/// best label with its log-probability (the first on ties).
pub fn head_metrics(log_probs: &[Vec<f64>], gold: &[Option<usize>]) -> HeadMetrics {
    let best: Vec<Vec<(usize, f64)>> = log_probs
        .iter()
        .map(|row| {
            crate::stats::classify::argmax(row)
                .map(|i| vec![(i, row[i])])
                .unwrap_or_default()
        })
        .collect();
    let known: Vec<f64> = log_probs
        .iter()
        .zip(gold)
        .filter_map(|(row, g)| g.and_then(|g| row.get(g)).map(|lp| -lp))
        .collect();
    let dev_loss = known.iter().sum::<f64>() / known.len() as f64;
    let accuracy = crate::trainer::scoring::top_accuracy(&best, gold);
    HeadMetrics {
        dev_loss,
        accuracy,
        best,
    }
}

/// What `head_metrics` gives.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadMetrics {
    pub dev_loss: f64,
    pub accuracy: f64,
    pub best: Vec<Vec<(usize, f64)>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::model::{tests::tiny_config, LoraSettings, Trainable};
    use crate::trainer::ops::cpu::check::{gradients_match_finite_differences, max_diff, random};
    use crate::trainer::ops::Kernels;

    #[test]
    fn the_shared_prefix_leaves_every_prompt_its_last_token() {
        let a: &[u32] = &[1, 2, 3, 4];
        let b: &[u32] = &[1, 2, 3, 5, 6];
        assert_eq!(shared_prompt_prefix(&[a, b]), 3);
        assert_eq!(shared_prompt_prefix(&[a, &[1, 2, 3]]), 2, "not all of it");
        assert_eq!(shared_prompt_prefix(&[a, a]), 3);
        assert_eq!(shared_prompt_prefix(&[a]), 0, "one prompt shares nothing");
        assert_eq!(shared_prompt_prefix(&[a, &[7, 2]]), 0);
    }

    #[test]
    fn metrics_count_unknown_gold_labels_wrong_and_leave_them_out_of_the_loss() {
        let lp = vec![
            vec![-0.1, -2.0, -3.0],
            vec![-1.0, -0.5, -2.0],
            vec![-0.2, -1.0, -4.0],
        ];
        let m = head_metrics(&lp, &[Some(0), Some(2), None]);
        assert_eq!(
            m.best,
            vec![vec![(0, -0.1)], vec![(1, -0.5)], vec![(0, -0.2)]]
        );
        assert!((m.accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.dev_loss - (0.1 + 2.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn the_head_loss_gradient_matches_finite_differences() {
        // The head alone: hidden rows (n, hidden) and the weight (labels, hidden).
        let classes = Tensor::new(&[2u32, 0, 1, 2], &Device::Cpu).unwrap();
        let f = |inputs: &[Tensor]| -> candle_core::Result<Tensor> {
            let logits = inputs[0].matmul(&inputs[1].t()?)?;
            candle_nn::ops::log_softmax(&logits, D::Minus1)?
                .gather(&classes.unsqueeze(1)?, 1)?
                .squeeze(1)?
                .neg()
        };
        gradients_match_finite_differences(
            &f,
            &[
                random(&[4, 6], 1, DType::F64),
                random(&[3, 6], 2, DType::F64),
            ],
        );
    }

    /// A tiny f64 model with a random head, full or LoRA (B random, so adapters get gradients).
    fn model(trainable: Trainable, kernels: Kernels) -> CausalLm {
        let dev = Device::Cpu;
        let cfg = tiny_config(19);
        let w = CausalLm::random_weights(&cfg, 5, DType::F64, &dev).unwrap();
        let head = random(&[3, cfg.hidden_size], 9, DType::F64);
        let m = CausalLm::new(cfg, &w, trainable, 1, &dev, "t")
            .unwrap()
            .with_kernels(kernels)
            .with_score_head(&head)
            .unwrap();
        for (name, var) in m.trainable() {
            if name.contains("lora_B") {
                var.set(&(random(var.dims(), 3, DType::F64) * 0.05).unwrap())
                    .unwrap();
            }
        }
        m
    }

    fn prompts() -> Vec<Vec<u32>> {
        vec![
            vec![1, 3, 4, 5, 6, 7],
            vec![1, 3, 4, 5, 9],
            vec![1, 3, 4, 5, 11, 12, 13, 14],
        ]
    }

    fn loss(m: &CausalLm, share_prefix: bool) -> Tensor {
        let prompts = prompts();
        let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
        class_nll(m, &refs, &[2, 0, 1], 0, share_prefix)
            .unwrap()
            .sum_all()
            .unwrap()
    }

    #[test]
    fn whole_model_gradients_match_finite_differences_with_and_without_a_shared_prefix() {
        let lora = LoraSettings {
            rank: 2,
            alpha: 4.0,
            targets: vec!["q_proj".into(), "down_proj".into()],
        };
        for trainable in [Trainable::All, Trainable::Lora(lora)] {
            for kernels in [Kernels::Fused, Kernels::Composed] {
                let m = model(trainable.clone(), kernels);
                let plain = loss(&m, false);
                let shared = loss(&m, true);
                assert!(
                    max_diff(&plain, &shared) < 1e-10,
                    "the prefix changes nothing"
                );
                let grads = m.gradients(&shared.backward().unwrap()).unwrap();
                let names: Vec<String> = m.trainable().iter().map(|(n, _)| n.clone()).collect();
                assert!(names.iter().any(|n| n.ends_with("score.weight")));
                assert!(!names.iter().any(|n| n == "lm_head.weight"), "{names:?}");
                for ((name, var), g) in m.trainable().iter().zip(&grads) {
                    if name.contains("lm_head") {
                        continue;
                    }
                    let g = g.as_ref().unwrap_or_else(|| panic!("{name}: no gradient"));
                    let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
                    let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                    // Three elements of each tensor, central differences in f64.
                    for i in [0, base.len() / 2, base.len() - 1] {
                        let at = |delta: f64| {
                            let mut v = base.clone();
                            v[i] += delta;
                            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                                .unwrap();
                            let l = loss(&m, true).to_scalar::<f64>().unwrap();
                            m.clear_gradients().unwrap();
                            l
                        };
                        let eps = 1e-5;
                        let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                        at(0.0);
                        assert!(
                            (numeric - g[i]).abs() < 1e-6 * (1.0 + numeric.abs()),
                            "{name}[{i}] ({kernels:?}): analytic {} numeric {numeric}",
                            g[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn evaluation_gives_the_training_forward_s_log_probabilities() {
        let m = model(Trainable::All, Kernels::Fused);
        let prompts = prompts();
        let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
        let trained = class_log_probs(&m, &last_hidden(&m, &refs, 0, false).unwrap())
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        for batch in [1, 2, 3] {
            let evaluated = label_log_probs(&m, &prompts, 0, batch).unwrap();
            for (a, b) in trained.iter().flatten().zip(evaluated.iter().flatten()) {
                assert!((a - b).abs() < 1e-10, "batch {batch}: {a} vs {b}");
            }
        }
    }
}
