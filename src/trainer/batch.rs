//! Padded batches of token sequences on a device, and the per-token loss that training and
//! evaluation share.

use candle_core::{Device, Tensor, D};

use crate::text::encode::Seq;
use crate::trainer::model::{CausalLm, KvCache};
use crate::trainer::ops::Kernels;

/// A right-padded batch. Inputs are ids[..n-1]; the loss counts the targets ids[t+1] at the
/// positions listed in `positions` (flat indices into batch x width), and only those.
pub struct Batch {
    pub inputs: Tensor,
    /// Flat (row * width + t) index of every counted position, u32.
    pub positions: Tensor,
    /// The target token at each counted position, u32.
    pub targets: Tensor,
    /// Which sequence of the batch each counted position belongs to.
    pub rows: Vec<usize>,
    /// Counted target tokens.
    pub tokens: usize,
    /// Non-pad input tokens (for throughput).
    pub input_tokens: usize,
}

pub fn make_batch(seqs: &[&Seq], pad: u32, device: &Device) -> candle_core::Result<Batch> {
    let width = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(2).max(2) - 1;
    let mut inputs = Vec::with_capacity(seqs.len() * width);
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    let mut rows = Vec::new();
    let mut input_tokens = 0;
    for (row, s) in seqs.iter().enumerate() {
        let n = s.ids.len();
        input_tokens += n.saturating_sub(1);
        for t in 0..width {
            inputs.push(if t < n { s.ids[t] } else { pad });
            if t + 1 < n && t + 1 >= s.loss_from {
                positions.push((row * width + t) as u32);
                targets.push(s.ids[t + 1]);
                rows.push(row);
            }
        }
    }
    let tokens = positions.len();
    Ok(Batch {
        inputs: Tensor::from_vec(inputs, (seqs.len(), width), device)?,
        positions: Tensor::from_vec(positions, tokens, device)?,
        targets: Tensor::from_vec(targets, tokens, device)?,
        rows,
        tokens,
        input_tokens,
    })
}

/// Negative log-likelihood of the target at every counted position: shape (tokens,).
pub fn token_nll(model: &CausalLm, batch: &Batch) -> candle_core::Result<Tensor> {
    let hidden = model.hidden_states(&batch.inputs)?;
    nll_at_counted(model, &hidden, batch)
}

/// The tokens every sequence of `seqs` starts with that can be computed once for all of them:
/// the common prefix, short of the first position whose prediction counts in the loss (and of
/// each sequence's last input), so that every counted position stays in each sequence's own
/// part. 0 when fewer than two sequences would share it.
pub fn shared_prefix_len(seqs: &[&Seq]) -> usize {
    let Some(first) = seqs.first() else {
        return 0;
    };
    if seqs.len() < 2 {
        return 0;
    }
    let mut common = first.ids.len();
    for s in &seqs[1..] {
        common = common.min(
            first
                .ids
                .iter()
                .zip(&s.ids)
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    let cap = seqs
        .iter()
        .map(|s| {
            s.loss_from
                .max(1)
                .min(s.ids.len().saturating_sub(1))
                .saturating_sub(1)
        })
        .min()
        .unwrap_or(0);
    common.min(cap)
}

/// As `token_nll` for the same sequences, with their shared prefix (`shared_prefix_len`)
/// computed once: the prefix runs as one sequence, and every sequence's own part attends to its
/// keys and values, whose gradients sum over the sequences. Equal to `token_nll` up to rounding.
/// `None` when the sequences share no prefix.
pub fn shared_prefix_nll(
    model: &CausalLm,
    seqs: &[&Seq],
    pad: u32,
) -> candle_core::Result<Option<(Tensor, Batch)>> {
    let p = shared_prefix_len(seqs);
    if p == 0 {
        return Ok(None);
    }
    let past = prefix_past(model, &seqs[0].ids[..p])?;
    Ok(Some(nll_after_prefix(model, seqs, &past, pad)?))
}

/// The keys and values of `prefix`, computed as one sequence of its own.
pub fn prefix_past(model: &CausalLm, prefix: &[u32]) -> candle_core::Result<KvCache> {
    let device = model.device();
    let p = prefix.len();
    let ids = Tensor::from_slice(prefix, (1, p), device)?;
    let positions: Vec<usize> = (0..p).collect();
    let mask = crate::trainer::model::prefix_causal_mask(0, p, model.dtype(), device)?;
    Ok(model.forward_with_past(&ids, &[], &positions, &mask)?.1)
}

/// `token_nll` of `seqs` whose first `past.len()` tokens are the prefix `past` holds (computed
/// by `prefix_past`, and at most `shared_prefix_len` of them): only each sequence's own part
/// runs, attending to the prefix's keys and values.
pub fn nll_after_prefix(
    model: &CausalLm,
    seqs: &[&Seq],
    past: &KvCache,
    pad: u32,
) -> candle_core::Result<(Tensor, Batch)> {
    let device = model.device();
    let p = past.len();
    let rest: Vec<Seq> = seqs
        .iter()
        .map(|s| Seq {
            ids: s.ids[p..].to_vec(),
            loss_from: s.loss_from.max(1) - p,
        })
        .collect();
    let refs: Vec<&Seq> = rest.iter().collect();
    let mut batch = make_batch(&refs, pad, device)?;
    // Throughput counts every input token, the shared ones once per sequence as in `token_nll`.
    batch.input_tokens += p * seqs.len();
    let t = batch.inputs.dim(1)?;
    let positions: Vec<usize> = (p..p + t).collect();
    let mask = crate::trainer::model::prefix_causal_mask(p, t, model.dtype(), device)?;
    let (hidden, _) = model.forward_with_past(&batch.inputs, &[past], &positions, &mask)?;
    Ok((nll_at_counted(model, &hidden, &batch)?, batch))
}

/// The negative log-likelihood at a batch's counted positions from its hidden states.
fn nll_at_counted(model: &CausalLm, hidden: &Tensor, batch: &Batch) -> candle_core::Result<Tensor> {
    let (b, t, h) = hidden.dims3()?;
    let counted = hidden
        .reshape((b * t, h))?
        .index_select(&batch.positions, 0)?;
    if model.kernels() == Kernels::Fused && crate::trainer::ops::cpu::runs_fused(&counted) {
        // Never materialises the (counted, vocabulary) logits.
        return model.head_nll(&counted, &batch.targets);
    }
    let logits = model.logits(&counted)?;
    // Half-precision logits are normalised in f32: bf16's 8 bits of mantissa would blur the loss.
    let logits = match logits.dtype() {
        candle_core::DType::BF16 | candle_core::DType::F16 => {
            logits.to_dtype(candle_core::DType::F32)?
        }
        _ => logits,
    };
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    logp.gather(&batch.targets.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_counts_answer_positions_only() {
        let a = Seq {
            ids: vec![1, 2, 3, 4],
            loss_from: 2,
        };
        let b = Seq {
            ids: vec![1, 5, 6],
            loss_from: 2,
        };
        let bt = make_batch(&[&a, &b], 0, &Device::Cpu).unwrap();
        assert_eq!(
            bt.inputs.to_vec2::<u32>().unwrap(),
            vec![vec![1, 2, 3], vec![1, 5, 6]]
        );
        // a predicts 3 (at t=1) and 4 (t=2); b predicts 6 (t=1); nothing else counts.
        assert_eq!(bt.positions.to_vec1::<u32>().unwrap(), vec![1, 2, 4]);
        assert_eq!(bt.targets.to_vec1::<u32>().unwrap(), vec![3, 4, 6]);
        assert_eq!(bt.rows, vec![0, 0, 1]);
        assert_eq!(bt.tokens, 3);
        assert_eq!(bt.input_tokens, 5);
    }

    #[test]
    fn the_shared_prefix_stops_before_the_first_counted_prediction() {
        let seq = |ids: &[u32], loss_from: usize| Seq {
            ids: ids.to_vec(),
            loss_from,
        };
        let a = seq(&[1, 2, 3, 4, 5, 6, 7], 5);
        let b = seq(&[1, 2, 3, 4, 9, 6], 5);
        // Position 4 predicts the first answer token: the 4 tokens before it are shared.
        assert_eq!(shared_prefix_len(&[&a, &b]), 4);
        let b2 = seq(&[1, 2, 3, 4, 5, 9], 5);
        assert_eq!(
            shared_prefix_len(&[&a, &b2]),
            4,
            "not the 5 they have in common"
        );
        let c = seq(&[1, 2, 8, 4, 5, 6, 7], 6);
        assert_eq!(shared_prefix_len(&[&a, &b, &c]), 2);
        assert_eq!(shared_prefix_len(&[&a]), 0, "one sequence shares nothing");
        let d = seq(&[1, 2, 3], 1);
        assert_eq!(
            shared_prefix_len(&[&a, &d]),
            0,
            "post_pretrain counts from 1"
        );
        let e = seq(&[7, 2, 3, 4, 5, 6, 7], 5);
        assert_eq!(shared_prefix_len(&[&a, &e]), 0);
    }
}
