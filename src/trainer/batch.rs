//! Padded batches of token sequences on a device, and the per-token loss that training and
//! evaluation share.

use candle_core::{Device, Tensor, D};

use crate::text::encode::Seq;
use crate::trainer::model::CausalLm;

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
    let (b, t, h) = hidden.dims3()?;
    let counted = hidden
        .reshape((b * t, h))?
        .index_select(&batch.positions, 0)?;
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
}
