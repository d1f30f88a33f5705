//! Honest metrics on the dev set: per-token loss, and classification accuracy by scoring every
//! candidate label (the distinct `tgt` values of train) and taking the model's favourite.
//!
//! Scoring shares work the way the seed's data repeats it: the prompt prefix every dev example
//! starts with (the system prompt listing the classes) is computed once per evaluation; each
//! prompt's own part runs once, and all candidate labels follow it as one token trie, so a token
//! that begins several labels is computed once. Every score is still the model's exact
//! log-probability of that label after that prompt. Evaluation computes with detached weights:
//! no backward graph is recorded.

use candle_core::{DType, Result, Tensor};

use crate::text::encode::{supervised, Seq};
use crate::trainer::batch::{make_batch, token_nll};
use crate::trainer::model::{additive_mask, CausalLm, KvCache};

/// Most sequences scored per forward pass during evaluation. Callers pass the trial's
/// micro-batch, so evaluation never needs more memory than a training step (the memory estimate
/// relies on that).
pub const MAX_EVAL_BATCH: usize = 64;

/// Mean negative log-likelihood per counted token.
pub fn dev_loss(model: &CausalLm, seqs: &[Seq], pad: u32, eval_batch: usize) -> Result<f64> {
    let model = &model.detached();
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

/// Sum of answer-token log-probabilities for every candidate, per prompt: `scores[prompt][label]`.
/// A candidate that cannot fit in `max_len` even with the prompt cut scores -inf.
///
/// Prompts that fit whole with the longest candidate are scored with shared work (see the module
/// notes); the others, whose prompt is cut differently for each candidate length, one sequence
/// per candidate as `candidate_scores_plain` does. The scores equal `candidate_scores_plain`'s up
/// to rounding.
pub fn candidate_scores(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    candidates: &Candidates,
    has_bos: bool,
    max_len: usize,
    pad: u32,
    eval_batch: usize,
) -> Result<Vec<Vec<f64>>> {
    let model = &model.detached();
    let longest = candidates.answers.iter().map(Vec::len).max().unwrap_or(0);
    let (whole, cut): (Vec<usize>, Vec<usize>) = (0..prompts.len())
        .partition(|i| !prompts[*i].is_empty() && prompts[*i].len() + longest <= max_len);
    let mut scores = vec![Vec::new(); prompts.len()];
    if !cut.is_empty() {
        let subset: Vec<Vec<u32>> = cut.iter().map(|i| prompts[*i].clone()).collect();
        let plain = candidate_scores_plain(
            model, &subset, candidates, has_bos, max_len, pad, eval_batch,
        )?;
        for (i, s) in cut.iter().zip(plain) {
            scores[*i] = s;
        }
    }
    if !whole.is_empty() && !candidates.answers.is_empty() {
        let subset: Vec<&[u32]> = whole.iter().map(|i| prompts[*i].as_slice()).collect();
        let batch = eval_batch.clamp(1, MAX_EVAL_BATCH);
        // Tokens per forward pass and vocabulary-sized rows at once: a training micro-batch's.
        let budget = batch * max_len.max(1);
        let vocab_rows = batch * longest.max(1);
        let shared = shared_scores(model, &subset, &candidates.answers, budget, vocab_rows)?;
        for (i, s) in whole.iter().zip(shared) {
            scores[*i] = s;
        }
    }
    Ok(scores)
}

/// The candidate answers as a token trie: one node per distinct answer prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct Trie {
    /// Per node: its parent node (None: a first token), its token, its depth (0 for a first token).
    pub nodes: Vec<(Option<usize>, u32, usize)>,
    /// Per answer: the nodes of its tokens, in order.
    pub paths: Vec<Vec<usize>>,
}

impl Trie {
    pub fn new(answers: &[Vec<u32>]) -> Self {
        let mut nodes: Vec<(Option<usize>, u32, usize)> = Vec::new();
        let mut children: std::collections::HashMap<(Option<usize>, u32), usize> =
            std::collections::HashMap::new();
        let paths = answers
            .iter()
            .map(|answer| {
                let mut parent = None;
                answer
                    .iter()
                    .enumerate()
                    .map(|(depth, tok)| {
                        let node = *children.entry((parent, *tok)).or_insert_with(|| {
                            nodes.push((parent, *tok, depth));
                            nodes.len() - 1
                        });
                        parent = Some(node);
                        node
                    })
                    .collect()
            })
            .collect();
        Self { nodes, paths }
    }

    /// Whether a node has children (its logits are needed).
    fn parents(&self) -> Vec<bool> {
        let mut is_parent = vec![false; self.nodes.len()];
        for (parent, _, _) in &self.nodes {
            if let Some(p) = parent {
                is_parent[*p] = true;
            }
        }
        is_parent
    }
}

/// What a row of a scoring batch attends to, on lengths alone: the row holds `rest` prompt tokens
/// (after the `past` tokens every row shares) then the trie's nodes, padded to `width`. Returns
/// the mask (width x (past + width), row-major) and each token's position.
pub fn trie_row_layout(
    past: usize,
    rest: usize,
    trie: &Trie,
    width: usize,
) -> (Vec<bool>, Vec<usize>) {
    let n = trie.nodes.len();
    let cols = past + width;
    let mut allowed = vec![false; width * cols];
    let mut positions = Vec::with_capacity(width);
    for i in 0..width {
        let row = &mut allowed[i * cols..(i + 1) * cols];
        if i < rest {
            // A prompt token: the shared prefix, and the prompt up to itself.
            row[..past + i + 1].iter_mut().for_each(|a| *a = true);
            positions.push(past + i);
        } else if i < rest + n {
            // A trie node: the whole prompt, then its ancestors and itself.
            row[..past + rest].iter_mut().for_each(|a| *a = true);
            let mut node = Some(i - rest);
            while let Some(k) = node {
                row[past + rest + k] = true;
                node = trie.nodes[k].0;
            }
            positions.push(past + rest + trie.nodes[i - rest].2);
        } else {
            // Padding sees itself only (never seen by a real token), so no row is all -inf.
            row[past + i] = true;
            positions.push(past + i);
        }
    }
    (allowed, positions)
}

/// Scores of every answer after every prompt (each fits whole), sharing the common prefix of
/// the prompts, each prompt's own part and the answers' common prefixes. `budget` bounds the
/// tokens of one forward pass and `vocab_rows` the vocabulary-sized rows of logits computed at
/// once (a micro-batch's worth of each).
fn shared_scores(
    model: &CausalLm,
    prompts: &[&[u32]],
    answers: &[Vec<u32>],
    budget: usize,
    vocab_rows: usize,
) -> Result<Vec<Vec<f64>>> {
    let device = model.device();
    let dtype = model.dtype();
    let trie = Trie::new(answers);
    let is_parent = trie.parents();
    let n = trie.nodes.len();
    // The prefix all prompts share, leaving each at least its last token.
    let shortest = prompts.iter().map(|p| p.len()).min().unwrap_or(1);
    let mut common = shortest.saturating_sub(1);
    for p in &prompts[1..] {
        common = common.min(
            prompts[0]
                .iter()
                .zip(*p)
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    let past = if common > 0 {
        let ids = Tensor::from_slice(&prompts[0][..common], (1, common), device)?;
        let positions: Vec<usize> = (0..common).collect();
        let mask = crate::trainer::model::prefix_causal_mask(0, common, dtype, device)?;
        Some(model.forward_with_past(&ids, None, &positions, &mask)?.1)
    } else {
        None
    };
    let vocab = model.config.vocab_size;
    let mut out = Vec::with_capacity(prompts.len());
    let mut start = 0;
    while start < prompts.len() {
        // As many prompts per forward pass as the token budget allows (at least one).
        let mut end = start + 1;
        let width_of = |s: usize, e: usize| {
            prompts[s..e]
                .iter()
                .map(|p| p.len() - common)
                .max()
                .unwrap_or(0)
                + n
        };
        while end < prompts.len() && (end + 1 - start) * width_of(start, end + 1) <= budget {
            end += 1;
        }
        let rows = &prompts[start..end];
        let b = rows.len();
        let width = width_of(start, end);
        let mut ids = Vec::with_capacity(b * width);
        let mut allowed = Vec::with_capacity(b * width * (common + width));
        let mut positions = Vec::with_capacity(b * width);
        // Flat hidden-state rows whose logits are needed: each prompt's last token, then every
        // trie node that has children.
        let mut contexts: Vec<u32> = Vec::new();
        // Per row: for each node, the context whose logits give its token, and the token.
        let mut picks: Vec<(usize, u32)> = Vec::with_capacity(b * n);
        for (r, p) in rows.iter().enumerate() {
            let rest = &p[common..];
            ids.extend_from_slice(rest);
            ids.extend(trie.nodes.iter().map(|(_, tok, _)| *tok));
            ids.resize((r + 1) * width, 0);
            let (a, pos) = trie_row_layout(common, rest.len(), &trie, width);
            allowed.extend(a);
            positions.extend(pos);
            let last = contexts.len();
            contexts.push((r * width + rest.len() - 1) as u32);
            let mut node_context = vec![0usize; n];
            for (k, parent) in is_parent.iter().enumerate() {
                if *parent {
                    node_context[k] = contexts.len();
                    contexts.push((r * width + rest.len() + k) as u32);
                }
            }
            for (parent, tok, _) in &trie.nodes {
                let c = parent.map_or(last, |q| node_context[q]);
                picks.push((c, *tok));
            }
        }
        let ids = Tensor::from_vec(ids, (b, width), device)?;
        let mask = additive_mask(&allowed, &[b, width, common + width], dtype, device)?;
        let row_past: Option<KvCache> = past.clone();
        let (hidden, _) = model.forward_with_past(&ids, row_past.as_ref(), &positions, &mask)?;
        let h = hidden.dim(2)?;
        let flat = hidden.reshape((b * width, h))?;
        // Log-probabilities in slices of `vocab_rows` contexts, so that at most that many
        // vocabulary-sized rows exist at once.
        let mut picked = vec![0.0f64; picks.len()];
        let mut order: Vec<usize> = (0..picks.len()).collect();
        order.sort_by_key(|i| picks[*i].0);
        let mut next = 0;
        for first in (0..contexts.len()).step_by(vocab_rows.max(1)) {
            let last = (first + vocab_rows.max(1)).min(contexts.len());
            let rows = Tensor::from_slice(&contexts[first..last], last - first, device)?;
            let logits = model
                .logits(&flat.index_select(&rows, 0)?)?
                .to_dtype(DType::F32)?;
            let logp =
                candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?.flatten_all()?;
            let mut which = Vec::new();
            let mut flat_index = Vec::new();
            while next < order.len() && picks[order[next]].0 < last {
                let (c, tok) = picks[order[next]];
                which.push(order[next]);
                flat_index.push(((c - first) * vocab + tok as usize) as u32);
                next += 1;
            }
            let n_picked = flat_index.len();
            let values = logp
                .index_select(&Tensor::from_vec(flat_index, n_picked, device)?, 0)?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?;
            for (i, v) in which.into_iter().zip(values) {
                picked[i] = v;
            }
        }
        for r in 0..b {
            let node_logp = &picked[r * n..(r + 1) * n];
            out.push(
                trie.paths
                    .iter()
                    .map(|path| path.iter().map(|k| node_logp[*k]).sum())
                    .collect(),
            );
        }
        start = end;
    }
    Ok(out)
}

/// `candidate_scores` the plain way: every (prompt, candidate) pair as its own whole sequence.
pub fn candidate_scores_plain(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    candidates: &Candidates,
    has_bos: bool,
    max_len: usize,
    pad: u32,
    eval_batch: usize,
) -> Result<Vec<Vec<f64>>> {
    let model = &model.detached();
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

    #[test]
    fn the_trie_shares_answer_prefixes_and_rows_see_their_ancestors_only() {
        let trie = Trie::new(&[vec![5, 6, 9], vec![5, 7, 9], vec![8, 9], vec![5, 6, 9]]);
        // 5, 5-6, 5-6-9, 5-7, 5-7-9, 8, 8-9: seven distinct prefixes.
        assert_eq!(trie.nodes.len(), 7);
        assert_eq!(trie.paths[0], trie.paths[3]);
        assert_eq!(trie.paths[1][0], trie.paths[0][0]);
        assert_eq!(
            trie.parents(),
            vec![true, true, false, true, false, true, false]
        );
        // past 2, a prompt rest of 2 tokens, 7 nodes, padded to 10.
        let (allowed, positions) = trie_row_layout(2, 2, &trie, 10);
        let cols = 12;
        let row =
            |i: usize| -> Vec<usize> { (0..cols).filter(|j| allowed[i * cols + j]).collect() };
        assert_eq!(row(0), vec![0, 1, 2]);
        assert_eq!(row(1), vec![0, 1, 2, 3]);
        // Node 4 (5-7-9): the prompt, then nodes 0 (5), 3 (7) and itself.
        assert_eq!(row(2 + 4), vec![0, 1, 2, 3, 4, 7, 8]);
        assert_eq!(row(9), vec![11], "padding sees only itself");
        assert_eq!(positions[..4], [2, 3, 4, 5]);
        assert_eq!(positions[2 + 4], 6, "depth 2 after 4 prompt tokens");
    }
}
