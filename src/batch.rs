//! Token sequences and padded batches, and the per-token loss that training and evaluation share.

use candle_core::{DType, Device, Tensor, D};

use crate::data::{render_answer, render_prompt, Example};
use crate::model::CausalLm;
use crate::tokenizer::{TextTokenizer, TokenizerError};

/// A token sequence whose tokens from `loss_from` on are predicted (and count in the loss).
#[derive(Debug, Clone, PartialEq)]
pub struct Seq {
    pub ids: Vec<u32>,
    pub loss_from: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(
        "line {line}: the answer alone takes {answer} tokens, more than max_seq_len {max} allows"
    )]
    AnswerTooLong {
        line: usize,
        answer: usize,
        max: usize,
    },
    #[error("line {line}: no tokens")]
    Empty { line: usize },
}

/// Prompt ids for an example (bos, then the rendered prompt), shared by training and scoring.
pub fn prompt_ids(tok: &TextTokenizer, ex: &Example) -> Result<Vec<u32>, TokenizerError> {
    let mut ids: Vec<u32> = tok.bos.into_iter().collect();
    ids.extend(tok.encode(&render_prompt(ex.system.as_deref(), &ex.src))?);
    Ok(ids)
}

/// Answer ids: the answer text, then end-of-sequence.
pub fn answer_ids(tok: &TextTokenizer, tgt: &str) -> Result<Vec<u32>, TokenizerError> {
    let mut ids = tok.encode(&render_answer(tgt))?;
    ids.push(tok.eos);
    Ok(ids)
}

/// Prompt + answer, the loss on the answer only. Too-long sequences lose prompt tokens just
/// after bos (the start of the system text), never the query's end or the answer.
pub fn supervised(
    prompt: &[u32],
    answer: &[u32],
    has_bos: bool,
    max: usize,
    line: usize,
) -> Result<Seq, EncodeError> {
    let keep_head = usize::from(has_bos);
    let total = prompt.len() + answer.len();
    let mut ids = Vec::with_capacity(total.min(max));
    if total > max {
        let cut = total - max;
        if prompt.len() < keep_head + cut + 1 {
            return Err(EncodeError::AnswerTooLong {
                line,
                answer: answer.len(),
                max,
            });
        }
        ids.extend_from_slice(&prompt[..keep_head]);
        ids.extend_from_slice(&prompt[keep_head + cut..]);
    } else {
        ids.extend_from_slice(prompt);
    }
    let loss_from = ids.len();
    ids.extend_from_slice(answer);
    Ok(Seq { ids, loss_from })
}

/// Unlabelled text for causal-LM training: every token after the first is predicted.
pub fn unsupervised(
    tok: &TextTokenizer,
    text: &str,
    max: usize,
    line: usize,
) -> Result<Seq, EncodeError> {
    let mut ids: Vec<u32> = tok.bos.into_iter().collect();
    ids.extend(tok.encode(text)?);
    ids.push(tok.eos);
    ids.truncate(max);
    if ids.len() < 2 {
        return Err(EncodeError::Empty { line });
    }
    Ok(Seq { ids, loss_from: 1 })
}

/// A right-padded batch: inputs are ids[..n-1], targets ids[1..], mask 1 where a target counts.
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
    pub mask: Tensor,
    /// Counted target tokens.
    pub tokens: usize,
    /// Non-pad input tokens (for throughput).
    pub input_tokens: usize,
}

pub fn make_batch(
    seqs: &[&Seq],
    pad: u32,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Batch> {
    let width = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(2).max(2) - 1;
    let mut inputs = Vec::with_capacity(seqs.len() * width);
    let mut targets = Vec::with_capacity(seqs.len() * width);
    let mut mask = Vec::with_capacity(seqs.len() * width);
    let mut tokens = 0;
    let mut input_tokens = 0;
    for s in seqs {
        let n = s.ids.len();
        input_tokens += n - 1;
        for t in 0..width {
            let real = t + 1 < n;
            inputs.push(if t < n { s.ids[t] } else { pad });
            targets.push(if real { s.ids[t + 1] } else { pad });
            let counts = real && t + 1 >= s.loss_from;
            tokens += usize::from(counts);
            mask.push(if counts { 1f32 } else { 0f32 });
        }
    }
    let shape = (seqs.len(), width);
    Ok(Batch {
        inputs: Tensor::from_vec(inputs, shape, device)?,
        targets: Tensor::from_vec(targets, shape, device)?,
        mask: Tensor::from_vec(mask, shape, device)?.to_dtype(dtype)?,
        tokens,
        input_tokens,
    })
}

/// Negative log-likelihood of each target, zero where masked: shape (batch, seq).
pub fn token_nll(model: &CausalLm, batch: &Batch) -> candle_core::Result<Tensor> {
    let logits = model.forward(&batch.inputs)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = logp.gather(&batch.targets.unsqueeze(2)?, 2)?.squeeze(2)?;
    picked.neg()?.mul(&batch.mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_answer_and_query_end() {
        let prompt = [100, 1, 2, 3, 4, 5];
        let answer = [7, 8, 99];
        let s = supervised(&prompt, &answer, true, 6, 1).unwrap();
        assert_eq!(s.ids, vec![100, 4, 5, 7, 8, 99]);
        assert_eq!(s.loss_from, 3);
        assert!(matches!(
            supervised(&prompt, &answer, true, 3, 9),
            Err(EncodeError::AnswerTooLong { line: 9, .. })
        ));
    }

    #[test]
    fn batch_masks_prompt_and_padding() {
        let a = Seq {
            ids: vec![1, 2, 3, 4],
            loss_from: 2,
        };
        let b = Seq {
            ids: vec![1, 5, 6],
            loss_from: 2,
        };
        let bt = make_batch(&[&a, &b], 0, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            bt.inputs.to_vec2::<u32>().unwrap(),
            vec![vec![1, 2, 3], vec![1, 5, 6]]
        );
        assert_eq!(
            bt.targets.to_vec2::<u32>().unwrap(),
            vec![vec![2, 3, 4], vec![5, 6, 0]]
        );
        assert_eq!(
            bt.mask.to_vec2::<f32>().unwrap(),
            vec![vec![0.0, 1.0, 1.0], vec![0.0, 1.0, 0.0]]
        );
        assert_eq!(bt.tokens, 3);
        assert_eq!(bt.input_tokens, 5);
    }
}
