//! Honest metrics on the dev set: per-token loss, and classification accuracy by scoring every
//! candidate label (the distinct `tgt` values of train) and taking the model's favourite.

use candle_core::Result;

use crate::text::encode::{supervised, Seq};
use crate::trainer::batch::{make_batch, token_nll};
use crate::trainer::model::CausalLm;

/// Most sequences scored per forward pass during evaluation. Callers pass the trial's
/// micro-batch, so evaluation never needs more memory than a training step (the memory estimate
/// relies on that).
pub const MAX_EVAL_BATCH: usize = 64;

/// Mean negative log-likelihood per counted token.
pub fn dev_loss(model: &CausalLm, seqs: &[Seq], pad: u32, eval_batch: usize) -> Result<f64> {
    let mut total = 0.0f64;
    let mut tokens = 0usize;
    for chunk in seqs.chunks(eval_batch.clamp(1, MAX_EVAL_BATCH)) {
        let refs: Vec<&Seq> = chunk.iter().collect();
        let batch = make_batch(&refs, pad, model.device())?;
        if batch.tokens == 0 {
            continue;
        }
        let nll = token_nll(model, &batch)?;
        total += nll
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        tokens += batch.tokens;
    }
    Ok(total / tokens.max(1) as f64)
}

/// The classification task: each dev prompt, its gold label's index, and every candidate answer.
pub struct Candidates {
    /// Tokenised answers (text + eos), one per label.
    pub answers: Vec<Vec<u32>>,
    pub labels: Vec<String>,
}

/// Sum of answer-token log-probabilities for every candidate, per prompt.
pub fn candidate_scores(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    candidates: &Candidates,
    has_bos: bool,
    max_len: usize,
    pad: u32,
    eval_batch: usize,
) -> Result<Vec<Vec<f64>>> {
    let mut seqs = Vec::with_capacity(prompts.len() * candidates.answers.len());
    for p in prompts {
        for a in &candidates.answers {
            // An answer that can never fit scores -inf rather than failing the whole evaluation.
            seqs.push(supervised(p, a, has_bos, max_len, 0).ok());
        }
    }
    let mut scores = vec![f64::NEG_INFINITY; seqs.len()];
    let scorable: Vec<usize> = (0..seqs.len()).filter(|i| seqs[*i].is_some()).collect();
    for chunk in scorable.chunks(eval_batch.clamp(1, MAX_EVAL_BATCH)) {
        let refs: Vec<&Seq> = chunk.iter().filter_map(|i| seqs[*i].as_ref()).collect();
        let batch = make_batch(&refs, pad, model.device())?;
        let nll = token_nll(model, &batch)?
            .to_dtype(candle_core::DType::F64)?
            .to_vec1::<f64>()?;
        let mut sums = vec![0.0f64; chunk.len()];
        for (row, v) in batch.rows.iter().zip(nll) {
            sums[*row] += v;
        }
        for (i, v) in chunk.iter().zip(sums) {
            scores[*i] = -v;
        }
    }
    Ok(scores
        .chunks(candidates.answers.len().max(1))
        .map(|c| c.to_vec())
        .collect())
}

/// Fraction of prompts whose highest-scoring candidate is the gold label (ties: the first label).
/// A gold label that is not among the candidates always counts as wrong.
pub fn accuracy(scores: &[Vec<f64>], gold: &[Option<usize>]) -> f64 {
    let correct = scores
        .iter()
        .zip(gold)
        .filter(|(s, g)| {
            let best = s
                .iter()
                .enumerate()
                .fold((usize::MAX, f64::NEG_INFINITY), |acc, (i, v)| {
                    if *v > acc.1 {
                        (i, *v)
                    } else {
                        acc
                    }
                })
                .0;
            **g == Some(best)
        })
        .count();
    correct as f64 / scores.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_takes_the_argmax_and_counts_unknown_gold_as_wrong() {
        let scores = vec![
            vec![-1.0, -0.5, -3.0],
            vec![-0.1, -2.0, -2.0],
            vec![-1.0, -1.0, -1.0],
        ];
        assert_eq!(accuracy(&scores, &[Some(1), Some(0), Some(0)]), 1.0);
        assert!((accuracy(&scores, &[Some(1), None, Some(2)]) - 1.0 / 3.0).abs() < 1e-12);
    }
}
