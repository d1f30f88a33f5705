//! Scoring a model on labelled text, the numbers a trial's evaluation reports: the dev set's
//! per-token loss (`dev_loss`), and every candidate label's log-probability after each prompt
//! (`candidate_scores`; `candidate_top_k` the best labels only), whose favourite gives the
//! accuracy. Used during training (`train`'s evaluations) and on a saved checkpoint
//! (`checkpoint_eval`), so both score alike.
//!
//! Scoring shares work the way the seed's data repeats it: the prompt prefix every dev example
//! starts with (the system prompt listing the classes) is computed once per evaluation; each
//! prompt's own part runs once, and all candidate labels follow it as one token trie, so a token
//! that begins several labels is computed once. Every score is still the model's exact
//! log-probability of that label after that prompt. Scoring computes with detached weights
//! (`CausalLm::for_evaluation`: no backward graph is recorded, and LoRA adapters are merged into
//! their projections for the evaluation, so a LoRA model scores at an sft model's cost).

use candle_core::{Result, Tensor};

use crate::text::encode::{fit, supervised, Fit, Seq};
use crate::trainer::batch::{
    make_batch, nll_after_prefix, prefix_past, shared_prefix_len, token_nll,
};
use crate::trainer::model::{additive_mask, CausalLm, KvCache};
use crate::trainer::ops::cpu::runs_fused;
use crate::trainer::ops::Kernels;

use crate::spec::memory::eval_tokens_per_pass;
/// Most sequences scored per forward pass during evaluation. Callers pass the trial's
/// micro-batch, so evaluation never needs more memory than the plan-time estimate allows for.
pub use crate::spec::memory::MAX_EVAL_BATCH;

/// Mean negative log-likelihood per counted token. The prefix every sequence shares (the
/// system prompt) is computed once for the whole evaluation (`batch::shared_prefix_len`), and
/// each chunk of `eval_batch` sequences runs only its own parts after it; equal to the plain
/// computation up to rounding (integration test `shared_prefix`). Why: with the seed's system
/// prompt the plain way computed 630 tokens per dev line, more than the whole label search.
pub fn dev_loss(model: &CausalLm, seqs: &[Seq], pad: u32, eval_batch: usize) -> Result<f64> {
    let all: Vec<&Seq> = seqs.iter().collect();
    let (total, tokens) = dev_nll_sum(model, &all, pad, eval_batch)?;
    Ok(total / tokens.max(1) as f64)
}

/// `dev_loss`'s sum of negative log-likelihoods and its count of tokens.
fn dev_nll_sum(
    model: &CausalLm,
    all: &[&Seq],
    pad: u32,
    eval_batch: usize,
) -> Result<(f64, usize)> {
    let model = &model.for_evaluation()?;
    let shared = shared_prefix_len(all);
    let past = match all.first() {
        Some(first) if shared > 0 => Some(prefix_past(model, &first.ids[..shared])?),
        _ => None,
    };
    let mut total = 0.0f64;
    let mut tokens = 0usize;
    for refs in all.chunks(eval_batch.clamp(1, MAX_EVAL_BATCH)) {
        if refs.iter().all(|s| s.ids.len() <= s.loss_from.max(1)) {
            continue; // nothing counted
        }
        let (nll, batch) = match &past {
            Some(past) => nll_after_prefix(model, refs, past, pad)?,
            None => {
                let batch = make_batch(refs, pad, model.device())?;
                (token_nll(model, &batch)?, batch)
            }
        };
        total += nll
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        tokens += batch.tokens;
    }
    Ok((total, tokens))
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
    by_prompt_fit(
        model,
        prompts,
        candidates,
        (has_bos, max_len, pad, eval_batch),
        |_, scores| scores,
        |model, _, whole, budget, vocab_rows| {
            shared_scores(model, whole, &candidates.answers, budget, vocab_rows)
        },
    )
}

/// What `candidate_scores` and `candidate_top_k` share: with weights detached (adapters
/// merged, `CausalLm::for_evaluation`), prompts that fit
/// whole with the longest candidate go to `whole` (shared work, given the token `budget` of a
/// forward pass and the vocabulary rows allowed at once), the others, cut differently for each
/// candidate length, are scored in full (`cut_scores`; an empty prompt one sequence per
/// candidate, `candidate_scores_plain`) and turned into the result by `from_plain`. Results in
/// the order of `prompts`.
fn by_prompt_fit<T: Clone + Default>(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    candidates: &Candidates,
    (has_bos, max_len, pad, eval_batch): (bool, usize, u32, usize),
    from_plain: impl Fn(usize, Vec<f64>) -> T,
    whole_scored: impl FnOnce(&CausalLm, &[usize], &[&[u32]], usize, usize) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let model = &model.for_evaluation()?;
    let longest = candidates.answers.iter().map(Vec::len).max().unwrap_or(0);
    let (mut whole, cut): (Vec<usize>, Vec<usize>) = (0..prompts.len())
        .partition(|i| !prompts[*i].is_empty() && prompts[*i].len() + longest <= max_len);
    // Shortest first, so that the prompts of one forward pass have similar lengths: each row is
    // padded to its pass's longest prompt (padding was a quarter of the tokens in dev order).
    whole.sort_by_key(|i| prompts[*i].len());
    let mut out = vec![T::default(); prompts.len()];
    let batch = eval_batch.clamp(1, MAX_EVAL_BATCH);
    // Tokens per forward pass: a multiple of a training micro-batch's (a forward pass keeps
    // far less per token than a training step, `spec::memory::eval_tokens_per_pass`), and
    // vocabulary-sized rows at once: a micro-batch's answers.
    let budget = eval_tokens_per_pass(batch, max_len);
    let vocab_rows = batch * longest.max(1);
    if !cut.is_empty() {
        // An empty prompt has no last token to score the first answer token after: plain.
        let (empty, cut): (Vec<usize>, Vec<usize>) =
            cut.into_iter().partition(|i| prompts[*i].is_empty());
        let subset: Vec<Vec<u32>> = cut.iter().map(|i| prompts[*i].clone()).collect();
        let shared = cut_scores(
            model,
            &subset,
            candidates,
            (has_bos, max_len),
            budget,
            vocab_rows,
        )?;
        for (i, s) in cut.iter().zip(shared) {
            out[*i] = from_plain(*i, s);
        }
        let subset: Vec<Vec<u32>> = empty.iter().map(|i| prompts[*i].clone()).collect();
        let plain = candidate_scores_plain(
            model, &subset, candidates, has_bos, max_len, pad, eval_batch,
        )?;
        for (i, s) in empty.iter().zip(plain) {
            out[*i] = from_plain(*i, s);
        }
    }
    if !whole.is_empty() && !candidates.answers.is_empty() {
        let subset: Vec<&[u32]> = whole.iter().map(|i| prompts[*i].as_slice()).collect();
        for (i, s) in whole
            .iter()
            .zip(whole_scored(model, &whole, &subset, budget, vocab_rows)?)
        {
            out[*i] = s;
        }
    }
    Ok(out)
}

/// The candidates of a prompt of `prompt` tokens grouped by how many prompt tokens each one's
/// sequence cuts (`text::encode::fit`: 0 for those that fit whole), fewest first, as (tokens
/// cut, answer indices in order); answers that can never fit are in no group (they score -inf).
pub fn answers_by_cut(
    prompt: usize,
    answer_lens: &[usize],
    has_bos: bool,
    max_len: usize,
) -> Vec<(usize, Vec<usize>)> {
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (a, len) in answer_lens.iter().enumerate() {
        match fit(prompt, *len, has_bos, max_len) {
            Fit::Whole => groups.entry(0).or_default().push(a),
            Fit::PromptCut(cut) => groups.entry(cut).or_default().push(a),
            Fit::AnswerTooLong => {}
        }
    }
    groups.into_iter().collect()
}

/// `candidate_scores` of non-empty prompts that do not fit whole with the longest candidate:
/// each prompt as each candidate's sequence cuts it (`answers_by_cut`), and the candidates that
/// share a cut prompt scored after it as a trie (`shared_scores`), many prompts per pass where
/// they share a set of candidates. Equal to `candidate_scores_plain` up to rounding.
///
/// Why: scored one sequence per candidate, the one dev prompt of 32 that the longest label
/// pushed past max_seq_len cost a third of the 135M shape's evaluation (10 full sequences).
fn cut_scores(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    candidates: &Candidates,
    (has_bos, max_len): (bool, usize),
    budget: usize,
    vocab_rows: usize,
) -> Result<Vec<Vec<f64>>> {
    let lens: Vec<usize> = candidates.answers.iter().map(Vec::len).collect();
    let mut scores = vec![vec![f64::NEG_INFINITY; lens.len()]; prompts.len()];
    // Per set of candidates: the prompts (index, as cut) that score them.
    let mut by_subset: std::collections::BTreeMap<Vec<usize>, Vec<(usize, Vec<u32>)>> =
        Default::default();
    for (i, p) in prompts.iter().enumerate() {
        for (_, subset) in answers_by_cut(p.len(), &lens, has_bos, max_len) {
            let seq = supervised(p, &candidates.answers[subset[0]], has_bos, max_len, 0);
            let Ok(seq) = seq else { continue };
            let cut_prompt = seq.ids[..seq.loss_from].to_vec();
            by_subset.entry(subset).or_default().push((i, cut_prompt));
        }
    }
    for (subset, mut items) in by_subset {
        items.sort_by_key(|(_, p)| p.len());
        let answers: Vec<Vec<u32>> = subset
            .iter()
            .map(|a| candidates.answers[*a].clone())
            .collect();
        let refs: Vec<&[u32]> = items.iter().map(|(_, p)| p.as_slice()).collect();
        let scored = shared_scores(model, &refs, &answers, budget, vocab_rows)?;
        for ((i, _), s) in items.iter().zip(scored) {
            for (a, v) in subset.iter().zip(s) {
                scores[*i][*a] = v;
            }
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
    // Only nodes with children are computed: a leaf's score comes from its parent's logits.
    let parents: Vec<Expand> = (0..n).filter(|i| is_parent[*i]).map(Expand::Node).collect();
    let (inner, local) = sub_trie(&trie, &parents);
    let (common, past) = common_prefix(model, prompts)?;
    let mut out = Vec::with_capacity(prompts.len());
    for group in prompt_groups(prompts, common, inner.nodes.len(), budget, 1) {
        let rows = &prompts[group];
        let b = rows.len();
        let width = rows.iter().map(|p| p.len() - common).max().unwrap_or(0) + inner.nodes.len();
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
            ids.extend(inner.nodes.iter().map(|(_, tok, _)| *tok));
            ids.resize((r + 1) * width, 0);
            let (a, pos) = trie_row_layout(common, rest.len(), &inner, width);
            allowed.extend(a);
            positions.extend(pos);
            let last = contexts.len();
            contexts.push((r * width + rest.len() - 1) as u32);
            let mut node_context = vec![0usize; n];
            for (k, at) in local.iter().enumerate() {
                if let Some(at) = at {
                    node_context[k] = contexts.len();
                    contexts.push((r * width + rest.len() + at) as u32);
                }
            }
            for (parent, tok, _) in &trie.nodes {
                let c = parent.map_or(last, |q| node_context[q]);
                picks.push((c, *tok));
            }
        }
        let ids = Tensor::from_vec(ids, (b, width), device)?;
        let mask = additive_mask(&allowed, &[b, width, common + width], dtype, device)?;
        let pasts: Vec<&KvCache> = past.iter().collect();
        let (hidden, _) = model.forward_with_past(&ids, &pasts, &positions, &mask)?;
        let flat = hidden.reshape((b * width, hidden.dim(2)?))?;
        // Each context's wanted tokens, in the order of `picks`, then each pick's value.
        let mut wanted: Vec<Vec<u32>> = vec![Vec::new(); contexts.len()];
        let mut slot = Vec::with_capacity(picks.len());
        for (c, tok) in &picks {
            slot.push((*c, wanted[*c].len()));
            wanted[*c].push(*tok);
        }
        let values = log_probs_at(model, &flat, &contexts, &wanted, vocab_rows)?;
        let picked: Vec<f64> = slot.iter().map(|(c, i)| values[*c][*i]).collect();
        for r in 0..b {
            let node_logp = &picked[r * n..(r + 1) * n];
            out.push(
                trie.paths
                    .iter()
                    .map(|path| path.iter().map(|k| node_logp[*k]).sum())
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// Consecutive groups of `prompts` computed in one forward pass each, at least one prompt each
/// and within the token `budget` of a pass otherwise (each row holds a prompt's own part, past
/// the `common` prefix, and the `trie_nodes`, padded to its group's longest). Of those
/// groupings, the one with the fewest tokens computed, counting each pass as
/// `PASS_OVERHEAD_TOKENS` more (a group takes `passes` of them): prompts of similar lengths
/// together (callers sort them by length), so that short prompts are not padded to long ones.
fn prompt_groups(
    prompts: &[&[u32]],
    common: usize,
    trie_nodes: usize,
    budget: usize,
    passes: usize,
) -> Vec<std::ops::Range<usize>> {
    let n = prompts.len();
    // cost[j]: the least cost of the first j prompts; from[j]: where its last group starts.
    let mut cost = vec![usize::MAX; n + 1];
    let mut from = vec![0usize; n + 1];
    cost[0] = 0;
    for end in 1..=n {
        let mut widest = 0;
        for start in (0..end).rev() {
            widest = widest.max(prompts[start].len() - common);
            let tokens = (end - start) * (widest + trie_nodes);
            if end - start > 1 && tokens > budget {
                break;
            }
            let total = cost[start].saturating_add(tokens + passes * PASS_OVERHEAD_TOKENS);
            if total < cost[end] {
                cost[end] = total;
                from[end] = start;
            }
        }
    }
    let mut groups = Vec::new();
    let mut end = n;
    while end > 0 {
        groups.push(from[end]..end);
        end = from[end];
    }
    groups.reverse();
    groups
}

/// What one more forward pass costs in `prompt_groups`, in tokens: the pass over the weights and
/// the per-pass work that a few more padded rows would not add.
const PASS_OVERHEAD_TOKENS: usize = 32;

/// The forward passes a group of the label search takes, as `prompt_groups` counts them: its
/// prompts' own parts, then a few rounds (four on the 135M shape's ten labels, random weights).
const SEARCH_PASSES: usize = 5;

/// The log-probabilities of `wanted[c]`'s tokens after the hidden state at flat row
/// `contexts[c]`, for every context c; where whole vocabulary-sized rows exist (composed
/// kernels) in slices of `vocab_rows` contexts, so that at most that many exist at once.
fn log_probs_at(
    model: &CausalLm,
    flat: &Tensor,
    contexts: &[u32],
    wanted: &[Vec<u32>],
    vocab_rows: usize,
) -> Result<Vec<Vec<f64>>> {
    let device = model.device();
    let fused = model.kernels() == Kernels::Fused && runs_fused(flat);
    let step = rows_per_call(fused, contexts.len(), vocab_rows);
    let mut out = Vec::with_capacity(contexts.len());
    for first in (0..contexts.len()).step_by(step) {
        let last = (first + step).min(contexts.len());
        let rows = Tensor::from_slice(&contexts[first..last], last - first, device)?;
        out.extend(model.chosen_log_probs(&flat.index_select(&rows, 0)?, &wanted[first..last])?);
    }
    Ok(out)
}

/// Context rows per `chosen_log_probs` call: with the fused kernel, all of them (it computes
/// the logits a block at a time, so its memory does not grow with the rows, and each call reads
/// the whole head: at micro-batch 1 the 135M shape's evaluation read its 113 MB head once per
/// 9 rows); otherwise at most `vocab_rows`, each row's whole logits existing at once.
fn rows_per_call(fused: bool, contexts: usize, vocab_rows: usize) -> usize {
    match fused {
        true => contexts.max(1),
        false => vocab_rows.max(1),
    }
}

/// The prefix all `prompts` share (leaving each at least its last token), its length and its
/// keys and values, computed once.
fn common_prefix(model: &CausalLm, prompts: &[&[u32]]) -> Result<(usize, Option<KvCache>)> {
    let shortest = prompts.iter().map(|p| p.len()).min().unwrap_or(1);
    let mut common = shortest.saturating_sub(1);
    for p in prompts.iter().skip(1) {
        common = common.min(
            prompts[0]
                .iter()
                .zip(*p)
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    if common == 0 {
        return Ok((0, None));
    }
    let device = model.device();
    let ids = Tensor::from_slice(&prompts[0][..common], (1, common), device)?;
    let positions: Vec<usize> = (0..common).collect();
    let mask = crate::trainer::model::prefix_causal_mask(0, common, model.dtype(), device)?;
    Ok((
        common,
        Some(model.forward_with_past(&ids, &[], &positions, &mask)?.1),
    ))
}
/// The `k` best candidates after every prompt, best first, as (label index, score): the labels
/// and exact scores `candidate_scores` would rank first (ties: the lower label index first, as
/// `accuracy` and `stats::classify::top_k` break them), found without scoring every label.
///
/// Why: accuracy and the dev predictions need only the best few labels. Log-probabilities are at
/// most 0, so a label prefix's partial score bounds every label that continues it; the search
/// (`TopSearch`) expands the best prefixes first and stops once no unexpanded prefix can reach
/// the `k`-th best complete label. A confident model looks at a handful of trie nodes instead of
/// all of them. Prompts that do not fit whole are scored in full (`candidate_scores`) and ranked.
#[allow(clippy::too_many_arguments)]
pub fn candidate_top_k(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    candidates: &Candidates,
    has_bos: bool,
    max_len: usize,
    pad: u32,
    eval_batch: usize,
    k: usize,
) -> Result<Vec<Vec<(usize, f64)>>> {
    let none = vec![None; prompts.len()];
    let searched = top_k_scored(
        model,
        prompts,
        candidates,
        (has_bos, max_len, pad, eval_batch),
        k,
        &none,
        SEARCH_FROM_INNER_NODES,
    )?;
    Ok(searched.into_iter().map(|s| s.best).collect())
}

/// Labels whose trie has fewer nodes with children than this are all scored (and ranked) by
/// `candidate_top_k` instead of searched: the search's extra forward passes (one per trie level
/// at least) cost more than the few vocabulary rows they could save (10 THUCNews labels of 3
/// tokens, 20 such nodes: 33 s searching against 29 s scoring all, README).
pub const SEARCH_FROM_INNER_NODES: usize = 64;

/// `candidate_top_k` that always searches, however small the trie (for tests and benchmarks).
#[allow(clippy::too_many_arguments)]
pub fn candidate_top_k_by_search(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    candidates: &Candidates,
    has_bos: bool,
    max_len: usize,
    pad: u32,
    eval_batch: usize,
    k: usize,
) -> Result<Vec<Vec<(usize, f64)>>> {
    let none = vec![None; prompts.len()];
    let searched = top_k_scored(
        model,
        prompts,
        candidates,
        (has_bos, max_len, pad, eval_batch),
        k,
        &none,
        0,
    )?;
    Ok(searched.into_iter().map(|s| s.best).collect())
}

/// `candidate_top_k`, searching when the trie has at least `search_from` nodes with children;
/// with `gold`, each prompt's gold label's exact score too.
fn top_k_scored(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    candidates: &Candidates,
    settings: (bool, usize, u32, usize),
    k: usize,
    gold: &[Option<usize>],
    search_from: usize,
) -> Result<Vec<Searched>> {
    let (has_bos, max_len, pad, eval_batch) = settings;
    let ranked = |i: usize, scores: Vec<f64>| Searched {
        best: crate::stats::classify::top_k(&scores, k),
        gold: gold[i].and_then(|g| scores.get(g).copied()),
    };
    let inner = Trie::new(&candidates.answers)
        .parents()
        .into_iter()
        .filter(|p| *p)
        .count();
    if inner < search_from {
        let scores = candidate_scores(
            model, prompts, candidates, has_bos, max_len, pad, eval_batch,
        )?;
        return Ok(scores
            .into_iter()
            .enumerate()
            .map(|(i, s)| ranked(i, s))
            .collect());
    }
    by_prompt_fit(
        model,
        prompts,
        candidates,
        settings,
        ranked,
        |model, indices, whole, budget, vocab_rows| {
            let gold: Vec<Option<usize>> = indices.iter().map(|i| gold[*i]).collect();
            searched_top_k(
                model,
                whole,
                &candidates.answers,
                k,
                &gold,
                budget,
                vocab_rows,
            )
        },
    )
}

/// What a trial's evaluation reports of a labelled dev set.
#[derive(Debug, Clone)]
pub struct DevEvaluation {
    /// Mean negative log-likelihood per gold answer token (`dev_loss`).
    pub dev_loss: f64,
    /// Per prompt, the `k` best labels, best first (`candidate_top_k`).
    pub best: Vec<Vec<(usize, f64)>>,
}

/// `dev_loss` and `candidate_top_k` of a labelled dev set in one pass over it: the label search
/// also completes each example's gold label, whose exact score is the negative of that example's
/// summed answer loss, so the dev loss needs no pass of its own. Examples whose dev sequence is
/// not their prompt and gold answer as the scoring cuts it (a gold label that is not a
/// candidate, a prompt cut otherwise) get their loss from `dev_loss`'s own computation. Equal to
/// calling both up to rounding (unit test below, integration test `shared_prefix`).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_dev(
    model: &CausalLm,
    dev_seqs: &[Seq],
    prompts: &[Vec<u32>],
    candidates: &Candidates,
    gold: &[Option<usize>],
    (has_bos, max_len, pad, eval_batch): (bool, usize, u32, usize),
    k: usize,
) -> Result<DevEvaluation> {
    // The gold label to complete, per prompt: only where its sequence is the dev sequence.
    let scored_gold: Vec<Option<usize>> = (0..prompts.len())
        .map(|i| {
            let g = (*gold.get(i)?)?;
            let seq = supervised(&prompts[i], candidates.answers.get(g)?, has_bos, max_len, 0);
            (seq.ok().as_ref() == dev_seqs.get(i)).then_some(g)
        })
        .collect();
    let searched = top_k_scored(
        model,
        prompts,
        candidates,
        (has_bos, max_len, pad, eval_batch),
        k,
        &scored_gold,
        SEARCH_FROM_INNER_NODES,
    )?;
    let mut total = 0.0f64;
    let mut tokens = 0usize;
    let mut rest: Vec<&Seq> = Vec::new();
    for (i, seq) in dev_seqs.iter().enumerate() {
        match (scored_gold.get(i).copied().flatten(), searched.get(i)) {
            (
                Some(_),
                Some(Searched {
                    gold: Some(score), ..
                }),
            ) => {
                total -= score;
                tokens += seq.ids.len() - seq.loss_from.max(1);
            }
            _ => rest.push(seq),
        }
    }
    if !rest.is_empty() {
        let (t, n) = dev_nll_sum(model, &rest, pad, eval_batch)?;
        total += t;
        tokens += n;
    }
    Ok(DevEvaluation {
        dev_loss: total / tokens.max(1) as f64,
        best: searched.into_iter().map(|s| s.best).collect(),
    })
}

/// The exact best-first search over the answer trie behind `candidate_top_k`, for one prompt,
/// as pure bookkeeping: which prefixes to expand next, and what an expansion teaches. The model
/// is asked for the log-probabilities that follow a prefix (the prompt itself, or a trie node).
pub struct TopSearch<'a> {
    trie: &'a Trie,
    k: usize,
    /// Per node: its children.
    children: Vec<Vec<usize>>,
    /// The first tokens' nodes.
    roots: Vec<usize>,
    /// Per node: the answers that end there.
    ending: Vec<Vec<usize>>,
    /// Per node: the lowest index of an answer that continues past it (usize::MAX: none).
    lowest_below: Vec<usize>,
    /// Answers with no tokens (score 0).
    empty: Vec<usize>,
}

/// One prompt's progress in a `TopSearch`.
#[derive(Debug, Clone)]
pub struct SearchState {
    /// Per node: its partial score (the sum of its path's log-probabilities), once known.
    partial: Vec<Option<f64>>,
    expanded: Vec<bool>,
    root_expanded: bool,
    /// Complete answers: (score, index).
    complete: Vec<(f64, usize)>,
}

/// What to expand: the prompt itself (its next-token distribution scores the first tokens) or a
/// trie node (scores its children).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expand {
    Prompt,
    Node(usize),
}

impl<'a> TopSearch<'a> {
    pub fn new(trie: &'a Trie, k: usize) -> Self {
        let n = trie.nodes.len();
        let mut children = vec![Vec::new(); n];
        let mut roots = Vec::new();
        for (i, (parent, _, _)) in trie.nodes.iter().enumerate() {
            match parent {
                Some(p) => children[*p].push(i),
                None => roots.push(i),
            }
        }
        let mut ending = vec![Vec::new(); n];
        let mut lowest_below = vec![usize::MAX; n];
        let mut empty = Vec::new();
        for (a, path) in trie.paths.iter().enumerate() {
            match path.split_last() {
                Some((last, inner)) => {
                    ending[*last].push(a);
                    for node in inner {
                        lowest_below[*node] = lowest_below[*node].min(a);
                    }
                }
                None => empty.push(a),
            }
        }
        Self {
            trie,
            k: k.max(1),
            children,
            roots,
            ending,
            lowest_below,
            empty,
        }
    }

    pub fn start(&self) -> SearchState {
        SearchState {
            partial: vec![None; self.trie.nodes.len()],
            expanded: vec![false; self.trie.nodes.len()],
            root_expanded: false,
            complete: self.empty.iter().map(|a| (0.0, *a)).collect(),
        }
    }

    /// The `k` best complete answers so far, best first (ties: lower index first).
    fn best(&self, state: &SearchState) -> Vec<(f64, usize)> {
        let mut best = state.complete.clone();
        best.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        best.truncate(self.k);
        best
    }

    /// Up to `most` expansions that could still change the `k` best, most promising first;
    /// none when the search is done. Until `k` answers are complete nothing can be ruled out,
    /// so only the `k` most promising prefixes go first, with those within `CLOSE_TO_THE_BEST`
    /// of the best (each expansion costs a token's forward and a vocabulary-sized row of
    /// logits); after that every prefix that can still win must be expanded anyway.
    pub fn next(&self, state: &SearchState, most: usize) -> Vec<Expand> {
        if !state.root_expanded {
            return vec![Expand::Prompt];
        }
        let best = self.best(state);
        // The k-th best so far: a prefix must be able to beat it (or tie it with a lower index).
        let bar = (best.len() >= self.k).then(|| best[best.len() - 1]);
        let mut open: Vec<(f64, usize)> = (0..self.trie.nodes.len())
            .filter(|i| !state.expanded[*i] && !self.children[*i].is_empty())
            .filter_map(|i| state.partial[i].map(|p| (p, i)))
            .filter(|(p, i)| match bar {
                None => !p.is_nan(),
                Some((s, a)) => *p > s || (*p == s && self.lowest_below[*i] < a),
            })
            .collect();
        open.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        if bar.is_none() {
            // The `k` most promising, and those about as likely as the best of them: an unsure
            // model must expand them all anyway, and a round costs a pass over the weights
            // whatever its width (11 rounds of one node each on the 135M shape, otherwise).
            let close = match open.first() {
                Some((top, _)) => open
                    .iter()
                    .take_while(|(p, _)| *p >= top - CLOSE_TO_THE_BEST)
                    .count(),
                None => 0,
            };
            open.truncate(close.max(self.k).min(most));
        }
        open.into_iter()
            .take(most.max(1))
            .map(|(_, i)| Expand::Node(i))
            .collect()
    }

    /// The tokens whose log-probabilities `what`'s expansion needs, in order.
    pub fn wanted(&self, what: Expand) -> Vec<u32> {
        let nodes = match what {
            Expand::Prompt => &self.roots,
            Expand::Node(i) => &self.children[i],
        };
        nodes.iter().map(|c| self.trie.nodes[*c].1).collect()
    }

    /// Records an expansion: `logp[j]` is the log-probability of `wanted(what)[j]` after it.
    pub fn record(&self, state: &mut SearchState, what: Expand, logp: &[f64]) {
        let (base, nodes) = match what {
            Expand::Prompt => {
                state.root_expanded = true;
                (None, &self.roots)
            }
            Expand::Node(i) => {
                state.expanded[i] = true;
                (state.partial[i], &self.children[i])
            }
        };
        for (c, lp) in nodes.iter().zip(logp) {
            // Summed in path order from the first token, as `candidate_scores` sums.
            let score = match base {
                Some(b) => b + lp,
                None => *lp,
            };
            state.partial[*c] = Some(score);
            for a in &self.ending[*c] {
                state.complete.push((score, *a));
            }
        }
    }

    /// The `k` best answers, best first, as (index, score).
    pub fn result(&self, state: &SearchState) -> Vec<(usize, f64)> {
        self.best(state).into_iter().map(|(s, a)| (a, s)).collect()
    }
}

/// Before `k` labels are complete, the search expands together the prefixes whose partial score
/// is within this many nats of the best open one's (a factor of e^4, about 55, in probability).
const CLOSE_TO_THE_BEST: f64 = 4.0;

/// Most prefixes expanded per prompt in one forward pass of the search.
const EXPANSIONS_PER_PASS: usize = 64;

/// A prompt's outcome of the search: its `k` best labels, best first, and the score of the label
/// whose path it was asked to complete (the gold label, for the dev loss), when asked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Searched {
    pub best: Vec<(usize, f64)>,
    pub gold: Option<f64>,
}

/// `candidate_top_k` for prompts that fit whole, many prompts per forward pass: the common
/// prefix once; per group of prompts (as many as the token `budget` of a pass holds), one pass
/// over every prompt's own part (which expands the prompts themselves), then rounds of the
/// search, each one pass that holds, per prompt, only the trie nodes this round expands. Every
/// computed node's keys and values are kept for the rounds after it, so a node is computed once
/// whatever its depth, and attends to the common prefix, its prompt's own part and its
/// ancestors (`round_row_layout`). `gold[i]`, when given, is a label whose whole path prompt i
/// expands besides the search's choices, so that its exact score is known (the dev loss).
fn searched_top_k(
    model: &CausalLm,
    prompts: &[&[u32]],
    answers: &[Vec<u32>],
    k: usize,
    gold: &[Option<usize>],
    budget: usize,
    vocab_rows: usize,
) -> Result<Vec<Searched>> {
    let trie = Trie::new(answers);
    let search = TopSearch::new(&trie, k);
    let inner = trie.parents().iter().filter(|p| **p).count();
    let (common, past) = common_prefix(model, prompts)?;
    let mut out = Vec::with_capacity(prompts.len());
    // Groups as wide as a prompt's own part and a round's expansions.
    let rows = inner.min(EXPANSIONS_PER_PASS);
    for range in prompt_groups(prompts, common, rows, budget, SEARCH_PASSES) {
        let gold = &gold[range.clone()];
        let group = GroupSearch::start(
            model,
            &search,
            &prompts[range],
            (common, past.as_ref()),
            vocab_rows,
        )?;
        out.extend(group.run(model, gold, vocab_rows)?);
    }
    Ok(out)
}

/// One group of prompts searched together: their own parts' keys and values, and those of every
/// round's nodes (each round's tensors hold every row of the group, padded).
struct GroupSearch<'a> {
    search: &'a TopSearch<'a>,
    common_past: Option<&'a KvCache>,
    common: usize,
    /// Per row: its prompt's tokens past the common prefix.
    rests: Vec<usize>,
    own_width: usize,
    own: KvCache,
    rounds: Vec<KvCache>,
    /// Columns before the next round's nodes: common + own_width + every earlier round's width.
    columns: usize,
    /// Per row, per trie node: its column once computed.
    node_cols: Vec<Vec<Option<usize>>>,
    states: Vec<SearchState>,
}

impl<'a> GroupSearch<'a> {
    /// The group's own parts in one pass, which expands each prompt (its first tokens' scores).
    fn start(
        model: &CausalLm,
        search: &'a TopSearch<'a>,
        group: &[&[u32]],
        (common, common_past): (usize, Option<&'a KvCache>),
        vocab_rows: usize,
    ) -> Result<Self> {
        let device = model.device();
        let rests: Vec<usize> = group.iter().map(|p| p.len() - common).collect();
        let own_width = rests.iter().copied().max().unwrap_or(1);
        let b = group.len();
        let mut ids = Vec::with_capacity(b * own_width);
        let mut allowed = Vec::with_capacity(b * own_width * (common + own_width));
        let mut positions = Vec::with_capacity(b * own_width);
        let no_nodes = Trie::new(&[]);
        for (row, p) in group.iter().enumerate() {
            ids.extend_from_slice(&p[common..]);
            ids.resize((row + 1) * own_width, 0);
            let (a, pos) = trie_row_layout(common, rests[row], &no_nodes, own_width);
            allowed.extend(a);
            positions.extend(pos);
        }
        let ids = Tensor::from_vec(ids, (b, own_width), device)?;
        let shape = [b, own_width, common + own_width];
        let mask = additive_mask(&allowed, &shape, model.dtype(), device)?;
        let pasts: Vec<&KvCache> = common_past.into_iter().collect();
        let (hidden, own) = model.forward_with_past(&ids, &pasts, &positions, &mask)?;
        let flat = hidden.reshape((b * own_width, hidden.dim(2)?))?;
        let contexts: Vec<u32> = (0..b)
            .map(|row| (row * own_width + rests[row] - 1) as u32)
            .collect();
        let wanted = vec![search.wanted(Expand::Prompt); b];
        let values = log_probs_at(model, &flat, &contexts, &wanted, vocab_rows)?;
        let mut states: Vec<SearchState> = group.iter().map(|_| search.start()).collect();
        for (state, v) in states.iter_mut().zip(&values) {
            search.record(state, Expand::Prompt, v);
        }
        Ok(Self {
            search,
            common_past,
            common,
            rests,
            own_width,
            own,
            rounds: Vec::new(),
            columns: common + own_width,
            node_cols: vec![vec![None; search.trie.nodes.len()]; b],
            states,
        })
    }

    /// Row `row`'s nodes to expand this round: the search's choices, then the gold path's nodes
    /// whose scores are known and that are not yet expanded.
    fn round_of(&self, row: usize, gold: Option<usize>) -> Vec<usize> {
        let state = &self.states[row];
        let mut nodes: Vec<usize> = self
            .search
            .next(state, EXPANSIONS_PER_PASS)
            .into_iter()
            .filter_map(|what| match what {
                Expand::Node(i) => Some(i),
                Expand::Prompt => None,
            })
            .collect();
        if let Some(path) = gold.and_then(|g| self.search.trie.paths.get(g)) {
            for node in path.iter().take(path.len().saturating_sub(1)) {
                if state.partial[*node].is_some() && !state.expanded[*node] && !nodes.contains(node)
                {
                    nodes.push(*node);
                }
            }
        }
        nodes
    }

    /// Rounds until no prompt of the group has anything left to expand; each prompt's result.
    /// A prompt whose search is done leaves the group (`keep_rows`), so that later rounds do
    /// not carry it as padding.
    fn run(
        mut self,
        model: &CausalLm,
        gold: &[Option<usize>],
        vocab_rows: usize,
    ) -> Result<Vec<Searched>> {
        let device = model.device();
        // Per current row: its prompt's index in the group.
        let mut rows: Vec<usize> = (0..self.states.len()).collect();
        let mut out = vec![Searched::default(); rows.len()];
        loop {
            let mut rounds: Vec<Vec<usize>> = rows
                .iter()
                .enumerate()
                .map(|(row, at)| self.round_of(row, gold[*at]))
                .collect();
            if rounds.iter().any(Vec::is_empty) {
                let keep: Vec<usize> = (0..rows.len()).filter(|r| !rounds[*r].is_empty()).collect();
                for (row, at) in rows.iter().enumerate() {
                    if rounds[row].is_empty() {
                        out[*at] = self.searched(row, gold[*at]);
                    }
                }
                if keep.is_empty() {
                    break;
                }
                self.keep_rows(&keep, device)?;
                rows = keep.iter().map(|r| rows[*r]).collect();
                rounds = keep
                    .iter()
                    .map(|r| std::mem::take(&mut rounds[*r]))
                    .collect();
            }
            let b = rows.len();
            let width = rounds.iter().map(Vec::len).max().unwrap_or(0);
            let cols = self.columns + width;
            let mut ids = Vec::with_capacity(b * width);
            let mut allowed = Vec::with_capacity(b * width * cols);
            let mut positions = Vec::with_capacity(b * width);
            let mut contexts: Vec<u32> = Vec::new();
            let mut wanted: Vec<Vec<u32>> = Vec::new();
            for (row, nodes) in rounds.iter().enumerate() {
                let (a, pos) = round_row_layout(
                    (self.common, self.rests[row], self.own_width, self.columns),
                    &self.node_cols[row],
                    self.search.trie,
                    nodes,
                    width,
                );
                allowed.extend(a);
                positions.extend(pos);
                ids.extend(nodes.iter().map(|n| self.search.trie.nodes[*n].1));
                ids.resize((row + 1) * width, 0);
                for (j, node) in nodes.iter().enumerate() {
                    contexts.push((row * width + j) as u32);
                    wanted.push(self.search.wanted(Expand::Node(*node)));
                }
            }
            let ids = Tensor::from_vec(ids, (b, width), device)?;
            let mask = additive_mask(&allowed, &[b, width, cols], model.dtype(), device)?;
            let mut pasts: Vec<&KvCache> = self.common_past.into_iter().collect();
            pasts.push(&self.own);
            pasts.extend(self.rounds.iter());
            let (hidden, kv) = model.forward_with_past(&ids, &pasts, &positions, &mask)?;
            let flat = hidden.reshape((b * width, hidden.dim(2)?))?;
            let values = log_probs_at(model, &flat, &contexts, &wanted, vocab_rows)?;
            let mut values = values.iter();
            for (row, nodes) in rounds.iter().enumerate() {
                for (j, node) in nodes.iter().enumerate() {
                    self.node_cols[row][*node] = Some(self.columns + j);
                    if let Some(v) = values.next() {
                        self.search
                            .record(&mut self.states[row], Expand::Node(*node), v);
                    }
                }
            }
            self.rounds.push(kv);
            self.columns = cols;
        }
        Ok(out)
    }

    /// Row `row`'s outcome: its best labels, and the score of `gold` once its path is complete.
    fn searched(&self, row: usize, gold: Option<usize>) -> Searched {
        let state = &self.states[row];
        Searched {
            best: self.search.result(state),
            gold: gold.and_then(|g| {
                state
                    .complete
                    .iter()
                    .find(|(_, a)| *a == g)
                    .map(|(score, _)| *score)
            }),
        }
    }

    /// Keeps only the rows `keep` (in order) of every kept tensor and per-row record; the columns
    /// stay where they are, so each row's nodes keep their columns.
    fn keep_rows(&mut self, keep: &[usize], device: &candle_core::Device) -> Result<()> {
        let index = Tensor::from_vec(
            keep.iter().map(|r| *r as u32).collect::<Vec<u32>>(),
            keep.len(),
            device,
        )?;
        let select = |cache: &KvCache| -> Result<KvCache> {
            Ok(KvCache {
                layers: cache
                    .layers
                    .iter()
                    .map(|(k, v)| Ok((k.index_select(&index, 0)?, v.index_select(&index, 0)?)))
                    .collect::<Result<_>>()?,
            })
        };
        self.own = select(&self.own)?;
        self.rounds = self.rounds.iter().map(select).collect::<Result<_>>()?;
        self.rests = keep.iter().map(|r| self.rests[*r]).collect();
        self.node_cols = keep.iter().map(|r| self.node_cols[*r].clone()).collect();
        self.states = keep.iter().map(|r| self.states[*r].clone()).collect();
        Ok(())
    }
}

/// What a row of a search round attends to, on lengths alone: the row holds this round's
/// `nodes`, padded to `width`, after `before` columns: the `common` prefix, the prompt's own
/// keys and values (`rest` of the `own_width` columns kept for it), then earlier rounds' nodes,
/// each at its column in `node_cols` (every ancestor of a node expanded now has one). Returns the
/// mask (width x (before + width), row-major) and each token's position.
pub fn round_row_layout(
    (common, rest, own_width, before): (usize, usize, usize, usize),
    node_cols: &[Option<usize>],
    trie: &Trie,
    nodes: &[usize],
    width: usize,
) -> (Vec<bool>, Vec<usize>) {
    debug_assert!(before >= common + own_width);
    let cols = before + width;
    let mut allowed = vec![false; width * cols];
    let mut positions = Vec::with_capacity(width);
    for i in 0..width {
        let row = &mut allowed[i * cols..(i + 1) * cols];
        row[before + i] = true;
        match nodes.get(i) {
            Some(node) => {
                // The whole prompt, then the node's ancestors (computed in earlier rounds).
                row[..common + rest].iter_mut().for_each(|a| *a = true);
                let mut up = trie.nodes[*node].0;
                while let Some(k) = up {
                    if let Some(c) = node_cols[k] {
                        row[c] = true;
                    }
                    up = trie.nodes[k].0;
                }
                positions.push(common + rest + trie.nodes[*node].2);
            }
            // Padding sees itself only (never seen by a real token), so no row is all -inf.
            None => positions.push(before + i),
        }
    }
    (allowed, positions)
}

/// The nodes that expansions `rounds` need (the expanded nodes and their ancestors) as a trie of
/// their own, and each full-trie node's index in it.
fn sub_trie(trie: &Trie, rounds: &[Expand]) -> (Trie, Vec<Option<usize>>) {
    let mut keep = vec![false; trie.nodes.len()];
    for what in rounds {
        if let Expand::Node(i) = what {
            let mut node = Some(*i);
            while let Some(k) = node {
                keep[k] = true;
                node = trie.nodes[k].0;
            }
        }
    }
    let mut local = vec![None; trie.nodes.len()];
    let mut nodes = Vec::new();
    // Parents come before their children in the full trie, so their local index is known.
    for (i, (parent, tok, depth)) in trie.nodes.iter().enumerate() {
        if keep[i] {
            local[i] = Some(nodes.len());
            nodes.push((parent.and_then(|p| local[p]), *tok, *depth));
        }
    }
    (
        Trie {
            nodes,
            paths: Vec::new(),
        },
        local,
    )
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
    let model = &model.for_evaluation()?;
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

/// Fraction of prompts whose best label (`candidate_top_k`'s first) is the gold one; the same
/// figure `accuracy` gives from every score.
pub fn top_accuracy(best: &[Vec<(usize, f64)>], gold: &[Option<usize>]) -> f64 {
    let correct = best
        .iter()
        .zip(gold)
        .filter(|(b, g)| g.is_some() && b.first().map(|x| x.0) == **g)
        .count();
    correct as f64 / best.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_groups_fill_the_token_budget_in_order_and_never_leave_a_prompt_out() {
        // Own parts (past a common prefix of 2) of 3, 1, 5 and 2 tokens; a trie of 4 nodes.
        let prompts: Vec<Vec<u32>> = [5, 3, 7, 4].iter().map(|n| vec![0; *n]).collect();
        let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
        // Widths: {0,1} -> 2 x (3 + 4) = 14; adding 2 -> 3 x 9 = 27 > 20; {2,3} -> 2 x 9 = 18.
        assert_eq!(prompt_groups(&refs, 2, 4, 20, 1), vec![0..2, 2..4]);
        // A budget smaller than one prompt's row still takes each prompt alone.
        assert_eq!(
            prompt_groups(&refs, 2, 4, 1, 1),
            vec![0..1, 1..2, 2..3, 3..4]
        );
        assert_eq!(prompt_groups(&refs, 2, 4, 1000, 1), vec![0..4]);
        assert!(prompt_groups(&[], 0, 4, 10, 1).is_empty());
    }

    #[test]
    fn a_cut_prompt_groups_its_candidates_by_how_much_of_it_their_sequence_cuts() {
        // A prompt of 10 tokens, max_len 13: answers of 1-3 tokens fit whole, 4 cuts 1, 5 cuts
        // 2; 12 leaves no prompt token after bos and can never fit.
        let lens = [3, 4, 1, 5, 12, 4, 2];
        assert_eq!(
            answers_by_cut(10, &lens, true, 13),
            vec![(0, vec![0, 2, 6]), (1, vec![1, 5]), (2, vec![3])]
        );
        // Without bos the first prompt token may go too: 12 cuts 9 of 10.
        assert_eq!(answers_by_cut(10, &[12], false, 13), vec![(9, vec![0])]);
        assert!(answers_by_cut(10, &[], true, 13).is_empty());
    }

    #[test]
    fn the_fused_head_takes_every_context_row_in_one_call_and_whole_logits_a_bounded_number() {
        assert_eq!(rows_per_call(true, 500, 9), 500);
        assert_eq!(rows_per_call(false, 500, 9), 9);
        assert_eq!(rows_per_call(true, 0, 9), 1);
        assert_eq!(rows_per_call(false, 500, 0), 1);
    }

    #[test]
    fn cut_prompts_score_as_every_candidate_alone_and_never_fitting_ones_score_minus_infinity() {
        let model = tiny_model();
        let prompts: Vec<Vec<u32>> = vec![
            vec![1, 4, 5, 6, 7, 8, 9],
            vec![1, 4, 5, 6, 11],
            vec![1, 4, 5, 6, 12, 13, 14, 15],
        ];
        let answers: Vec<Vec<u32>> = vec![
            vec![20, 2],
            vec![20, 21, 22, 2],
            vec![23, 2],
            vec![24, 25, 26, 27, 28, 29, 2],
            vec![20, 21, 30, 2],
        ];
        let candidates = Candidates {
            labels: (0..answers.len()).map(|i| format!("l{i}")).collect(),
            answers,
        };
        for (has_bos, max_len) in [(true, 9), (false, 8), (true, 12)] {
            let plain =
                candidate_scores_plain(&model, &prompts, &candidates, has_bos, max_len, 0, 2)
                    .expect("plain");
            let shared = candidate_scores(&model, &prompts, &candidates, has_bos, max_len, 0, 2)
                .expect("shared");
            for (p, s) in plain.iter().flatten().zip(shared.iter().flatten()) {
                match p.is_finite() {
                    true => assert!((p - s).abs() < 1e-4, "{p} vs {s}, max_len {max_len}"),
                    false => assert_eq!(p, s),
                }
            }
        }
        // At 8 tokens with bos, the 7-token answer leaves no prompt token: never fits.
        let s = candidate_scores(&model, &prompts, &candidates, true, 8, 0, 2).expect("shared");
        assert!(s.iter().all(|row| row[3] == f64::NEG_INFINITY));
        assert!(s.iter().all(|row| row[0].is_finite()));
    }

    #[test]
    fn prompt_groups_keep_short_prompts_apart_from_long_ones() {
        // Sorted own parts: 40 of 2 tokens, then 4 of 60; a trie of 4 nodes; room for all.
        let prompts: Vec<Vec<u32>> = (0..44)
            .map(|i| vec![0; if i < 40 { 2 } else { 60 }])
            .collect();
        let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
        // One pass would compute 44 x 64 = 2,816 tokens; two, 40 x 6 + 4 x 64 = 496 and a pass.
        assert_eq!(prompt_groups(&refs, 0, 4, 100_000, 1), vec![0..40, 40..44]);
        // A search's group takes several passes: a few more padded rows are cheaper.
        let near: Vec<Vec<u32>> = (0..10)
            .map(|i| vec![0; if i < 5 { 2 } else { 12 }])
            .collect();
        let near: Vec<&[u32]> = near.iter().map(|p| p.as_slice()).collect();
        assert_eq!(prompt_groups(&near, 0, 4, 100_000, 1), vec![0..5, 5..10]);
        assert_eq!(prompt_groups(&near, 0, 4, 100_000, 5), vec![0..10]);
        // Equal lengths stay in one pass.
        assert_eq!(prompt_groups(&refs[..40], 0, 4, 100_000, 1), vec![0..40]);
    }

    #[test]
    fn accuracy_takes_the_argmax_and_counts_unknown_gold_as_wrong() {
        let scores = vec![
            vec![-1.0, -0.5, -3.0],
            vec![-0.1, -2.0, -2.0],
            vec![-1.0, -1.0, -1.0],
        ];
        assert_eq!(accuracy(&scores, &[Some(1), Some(0), Some(0)]), 1.0);
        assert!((accuracy(&scores, &[Some(1), None, Some(2)]) - 1.0 / 3.0).abs() < 1e-12);
        let best: Vec<Vec<(usize, f64)>> = scores
            .iter()
            .map(|s| crate::stats::classify::top_k(s, 1))
            .collect();
        assert_eq!(top_accuracy(&best, &[Some(1), Some(0), Some(0)]), 1.0);
        assert!((top_accuracy(&best, &[Some(1), None, Some(2)]) - 1.0 / 3.0).abs() < 1e-12);
    }

    /// Runs a `TopSearch` to the end against `logp(context, token)`, counting expansions.
    fn search_with(
        trie: &Trie,
        k: usize,
        most: usize,
        logp: &dyn Fn(Expand, u32) -> f64,
    ) -> (Vec<(usize, f64)>, usize) {
        let search = TopSearch::new(trie, k);
        let mut state = search.start();
        let mut expansions = 0;
        loop {
            let round = search.next(&state, most);
            if round.is_empty() {
                return (search.result(&state), expansions);
            }
            for what in round {
                let values: Vec<f64> = search.wanted(what).iter().map(|t| logp(what, *t)).collect();
                search.record(&mut state, what, &values);
                expansions += 1;
            }
        }
    }

    /// Every answer's full score under `logp`, summed along its path as `candidate_scores` does.
    fn full_scores(trie: &Trie, logp: &dyn Fn(Expand, u32) -> f64) -> Vec<f64> {
        trie.paths
            .iter()
            .map(|path| {
                path.iter()
                    .map(|k| {
                        let (parent, tok, _) = trie.nodes[*k];
                        logp(parent.map_or(Expand::Prompt, Expand::Node), tok)
                    })
                    .sum()
            })
            .collect()
    }

    #[test]
    fn the_search_finds_the_exact_top_k_with_ties_broken_by_label_order() {
        let mut rng = crate::util::rng::SplitMix64::new(11);
        for case in 0..300 {
            // Few distinct tokens and short answers: shared prefixes, answers that are prefixes
            // of others, duplicates; log-probabilities from a handful of values: many ties.
            let count = 1 + (rng.next_u64() % 12) as usize;
            let answers: Vec<Vec<u32>> = (0..count)
                .map(|_| {
                    // Real answers always hold at least their end-of-sequence token.
                    let len = 1 + (rng.next_u64() % 4) as usize;
                    (0..len).map(|_| (rng.next_u64() % 3) as u32).collect()
                })
                .collect();
            let trie = Trie::new(&answers);
            let salt = rng.next_u64();
            let levels = [0.0, -0.5, -1.0, -7.25];
            let logp = move |what: Expand, tok: u32| -> f64 {
                let context = match what {
                    Expand::Prompt => 0u64,
                    Expand::Node(i) => i as u64 + 1,
                };
                let mut h = crate::util::rng::SplitMix64::new(salt ^ (context * 31 + tok as u64));
                levels[(h.next_u64() % 4) as usize]
            };
            let full = full_scores(&trie, &logp);
            for k in [1, 2, 3, 20] {
                for most in [1, 4] {
                    let (found, _) = search_with(&trie, k, most, &logp);
                    assert_eq!(
                        found,
                        crate::stats::classify::top_k(&full, k),
                        "case {case}, k {k}: answers {answers:?}, scores {full:?}"
                    );
                }
            }
            let best = crate::stats::classify::argmax(&full);
            assert_eq!(search_with(&trie, 1, 4, &logp).0.first().map(|b| b.0), best);
        }
    }

    #[test]
    fn a_confident_model_expands_only_the_prefixes_that_could_win() {
        // Ten labels of three tokens each, sharing nothing; the model is sure of label 7.
        let answers: Vec<Vec<u32>> = (0..10u32).map(|a| vec![a, 10 + a, 20]).collect();
        let trie = Trie::new(&answers);
        let gold = &trie.paths[7];
        let logp = |what: Expand, tok: u32| -> f64 {
            let on_path = match what {
                Expand::Prompt => tok == 7,
                Expand::Node(i) => gold.contains(&i),
            };
            if on_path {
                -0.01
            } else {
                -9.0
            }
        };
        let (found, expansions) = search_with(&trie, 1, 1, &logp);
        assert_eq!(found[0].0, 7);
        // The prompt and label 7's first two tokens; the 20 other inner nodes stay untouched.
        assert_eq!(expansions, 3);
        let full = full_scores(&trie, &logp);
        assert_eq!(found, crate::stats::classify::top_k(&full, 1));
    }

    #[test]
    fn an_unsure_model_expands_its_close_prefixes_together_before_any_label_is_complete() {
        // Ten labels of three tokens; every token about as likely as any other.
        let answers: Vec<Vec<u32>> = (0..10u32).map(|a| vec![a, 10 + a, 20]).collect();
        let trie = Trie::new(&answers);
        let search = TopSearch::new(&trie, 1);
        let mut state = search.start();
        let round = search.next(&state, 64);
        assert_eq!(round, vec![Expand::Prompt]);
        let firsts: Vec<f64> = (0..10).map(|a| -2.3 - 0.01 * a as f64).collect();
        search.record(&mut state, Expand::Prompt, &firsts);
        // All ten first tokens in one round (none is complete yet), best first.
        let round = search.next(&state, 64);
        assert_eq!(round.len(), 10);
        assert_eq!(round[0], Expand::Node(trie.paths[0][0]));
        // `most` still bounds a round.
        assert_eq!(search.next(&state, 4).len(), 4);
        // A sure model's runner-up is far behind: one prefix only.
        let mut sure = search.start();
        let mut firsts = vec![-9.0; 10];
        firsts[3] = -0.01;
        search.record(&mut sure, Expand::Prompt, &firsts);
        assert_eq!(search.next(&sure, 64), vec![Expand::Node(trie.paths[3][0])]);
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

        // A search round: common 2, this prompt's own 2 of 3 kept columns, then two earlier
        // rounds: nodes 0 (5) and 5 (8) at columns 5 and 6, nodes 1 (5-6) and 3 (5-7) at 7 and
        // 8; this round expands nodes 4 (5-7-9) and 6 (8-9), padded to 3.
        let cols_of = [Some(5), Some(7), None, Some(8), None, Some(6), None];
        let (allowed, positions) = round_row_layout((2, 2, 3, 9), &cols_of, &trie, &[4, 6], 3);
        let cols = 9 + 3;
        let row =
            |i: usize| -> Vec<usize> { (0..cols).filter(|j| allowed[i * cols + j]).collect() };
        // Node 4: the common prefix, its own two tokens (not the third, padding column), its
        // ancestors 0 and 3 where earlier rounds put them, and itself.
        assert_eq!(row(0), vec![0, 1, 2, 3, 5, 8, 9]);
        assert_eq!(row(1), vec![0, 1, 2, 3, 6, 10]);
        assert_eq!(row(2), vec![11], "padding sees only itself");
        assert_eq!(positions[0], 6, "depth 2 after 4 prompt tokens");
        assert_eq!(positions[1], 5);
    }

    /// A random `test`-preset model (vocabulary 40) for the scoring comparisons.
    fn tiny_model() -> CausalLm {
        let mut config = crate::spec::shape::preset("test").expect("preset");
        config.vocab_size = 40;
        let device = candle_core::Device::Cpu;
        let weights =
            CausalLm::random_weights(&config, 3, candle_core::DType::F32, &device).expect("w");
        CausalLm::new(
            config,
            &weights,
            crate::trainer::model::Trainable::All,
            3,
            &device,
            "test",
        )
        .expect("model")
    }

    #[test]
    fn batched_evaluation_equals_every_example_scored_alone() {
        let model = tiny_model();
        let mut rng = crate::util::rng::SplitMix64::new(5);
        let mut draw =
            |n: usize| -> Vec<u32> { (0..n).map(|_| 3 + rng.below(37) as u32).collect() };
        // A shared system prompt, then each example's own part of varying length.
        let system = draw(9);
        let prompts: Vec<Vec<u32>> = (0..7)
            .map(|i| [system.clone(), draw(1 + i % 4)].concat())
            .collect();
        // Labels sharing first tokens, of 2 to 9 tokens, each ending in the eos token 2, and
        // enough of them (over 64 inner nodes) that the search runs rather than full scoring.
        let answers: Vec<Vec<u32>> = (0..24)
            .map(|i| {
                let stem = [5 + (i % 3) as u32, 9 + (i % 5) as u32];
                [&stem[..1 + i % 2], &draw(i % 7)[..], &[2]].concat()
            })
            .collect();
        let candidates = Candidates {
            labels: (0..answers.len()).map(|i| format!("l{i}")).collect(),
            answers,
        };
        assert!(
            Trie::new(&candidates.answers)
                .parents()
                .iter()
                .filter(|p| **p)
                .count()
                >= 64
        );
        // The last example's gold label is not a candidate: its loss comes from its own pass.
        let mut gold: Vec<Option<usize>> = (0..prompts.len()).map(|i| Some(i * 5 % 24)).collect();
        let outside = vec![7, 7, 2];
        *gold.last_mut().expect("examples") = None;
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        // Roomy, then so tight that long prompts are cut (and scored the plain way).
        for (max_len, eval_batch) in [(longest + 8, 64), (longest + 8, 1), (longest + 2, 3)] {
            let dev_seqs: Vec<Seq> = prompts
                .iter()
                .zip(&gold)
                .map(|(p, g)| {
                    let answer = g.map_or(&outside, |g| &candidates.answers[g]);
                    supervised(p, answer, false, max_len, 0).expect("fits")
                })
                .collect();
            // The reference: every (prompt, label) sequence whole, every dev example alone.
            let plain = candidate_scores_plain(
                &model,
                &prompts,
                &candidates,
                false,
                max_len,
                0,
                eval_batch,
            )
            .expect("plain");
            let (mut nll, mut tokens) = (0.0, 0);
            for seq in &dev_seqs {
                let (n, t) = dev_nll_sum(&model, &[seq], 0, 1).expect("alone");
                nll += n;
                tokens += t;
            }
            let settings = (false, max_len, 0, eval_batch);
            for search_from in [0, usize::MAX] {
                let searched = top_k_scored(
                    &model,
                    &prompts,
                    &candidates,
                    settings,
                    2,
                    &gold,
                    search_from,
                )
                .expect("searched");
                for (i, (s, full)) in searched.iter().zip(&plain).enumerate() {
                    let want = crate::stats::classify::top_k(full, 2);
                    assert_eq!(
                        s.best.iter().map(|x| x.0).collect::<Vec<_>>(),
                        want.iter().map(|x| x.0).collect::<Vec<_>>(),
                        "prompt {i}, max_len {max_len}, search from {search_from}"
                    );
                    for ((_, a), (_, b)) in s.best.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
                    }
                    match gold[i] {
                        Some(g) => {
                            let score = s.gold.expect("the gold path is completed");
                            assert!((score - full[g]).abs() < 1e-4, "{score} vs {}", full[g]);
                        }
                        None => assert_eq!(s.gold, None),
                    }
                }
            }
            let e = evaluate_dev(&model, &dev_seqs, &prompts, &candidates, &gold, settings, 1)
                .expect("evaluation");
            let alone = nll / tokens as f64;
            assert!(
                (e.dev_loss - alone).abs() < 1e-5 * alone.max(1.0),
                "dev loss, max_len {max_len}: {} vs {alone}",
                e.dev_loss
            );
            assert!(
                (e.dev_loss - dev_loss(&model, &dev_seqs, 0, eval_batch).expect("loss")).abs()
                    < 1e-5 * alone.max(1.0)
            );
            let best: Vec<Option<usize>> = e.best.iter().map(|b| b.first().map(|x| x.0)).collect();
            let want: Vec<Option<usize>> = plain
                .iter()
                .map(|s| crate::stats::classify::argmax(s))
                .collect();
            assert_eq!(best, want, "max_len {max_len}, eval_batch {eval_batch}");
        }
    }

    #[test]
    fn a_lora_model_evaluates_merged_as_it_computes_unmerged() {
        let mut config = crate::spec::shape::preset("test").expect("preset");
        config.vocab_size = 40;
        let device = candle_core::Device::Cpu;
        let weights =
            CausalLm::random_weights(&config, 3, candle_core::DType::F32, &device).expect("w");
        let lora = crate::trainer::model::LoraSettings {
            rank: 2,
            alpha: 4.0,
            targets: vec!["q_proj".into(), "v_proj".into(), "up_proj".into()],
        };
        let trainable = crate::trainer::model::Trainable::Lora(lora);
        let model = CausalLm::new(config, &weights, trainable, 3, &device, "test").expect("model");
        // Trained adapters (B away from zero), so that the merged weights differ.
        let mut rng = crate::util::rng::SplitMix64::new(11);
        for (name, var) in model.trainable() {
            if name.contains("lora_B") {
                let data: Vec<f32> = (0..var.elem_count())
                    .map(|_| rng.normal() as f32 * 2.0)
                    .collect();
                var.set(&Tensor::from_vec(data, var.dims(), &device).expect("B"))
                    .expect("set");
            }
        }
        let mut draw =
            |n: usize| -> Vec<u32> { (0..n).map(|_| 3 + rng.below(37) as u32).collect() };
        let system = draw(6);
        let prompts: Vec<Vec<u32>> = (0..6)
            .map(|i| [system.clone(), draw(1 + i % 3)].concat())
            .collect();
        // Enough labels (over 64 inner nodes) that both the search and full scoring run.
        let answers: Vec<Vec<u32>> = (0..24)
            .map(|i| [&[5 + (i % 3) as u32][..], &draw(1 + i % 6)[..], &[2]].concat())
            .collect();
        let candidates = Candidates {
            labels: (0..answers.len()).map(|i| format!("l{i}")).collect(),
            answers,
        };
        let gold: Vec<Option<usize>> = (0..prompts.len()).map(|i| Some(i * 7 % 24)).collect();
        let max_len = prompts.iter().map(Vec::len).max().unwrap_or(0) + 8;
        // The reference: every sequence whole, with the adapters as training computes them.
        let unmerged = model.detached();
        let nll = |seq: &Seq| -> (f64, usize) {
            let batch = make_batch(&[seq], 0, &device).expect("batch");
            let sum = token_nll(&unmerged, &batch)
                .and_then(|t| t.sum_all()?.to_scalar::<f32>())
                .expect("nll");
            (f64::from(sum), batch.tokens)
        };
        let seq = |p: &[u32], a: &[u32]| supervised(p, a, false, max_len, 0).expect("fits");
        let want: Vec<Option<usize>> = prompts
            .iter()
            .map(|p| {
                let scores: Vec<f64> = candidates
                    .answers
                    .iter()
                    .map(|a| -nll(&seq(p, a)).0)
                    .collect();
                crate::stats::classify::argmax(&scores)
            })
            .collect();
        let dev_seqs: Vec<Seq> = prompts
            .iter()
            .zip(&gold)
            .map(|(p, g)| seq(p, &candidates.answers[g.expect("gold")]))
            .collect();
        let (total, tokens) = dev_seqs
            .iter()
            .map(nll)
            .fold((0.0, 0), |(a, n), (b, m)| (a + b, n + m));
        let loss = total / tokens as f64;
        // The adapters matter: the base model's loss is another.
        let base = CausalLm::new(
            model.config.clone(),
            &weights,
            crate::trainer::model::Trainable::All,
            3,
            &device,
            "test",
        )
        .expect("base");
        let base_loss = dev_loss(&base, &dev_seqs, 0, 4).expect("base loss");
        assert!((base_loss - loss).abs() > 1e-3, "{base_loss} vs {loss}");
        for search_from in [0, usize::MAX] {
            let settings = (false, max_len, 0, 4);
            let searched = top_k_scored(
                &model,
                &prompts,
                &candidates,
                settings,
                1,
                &gold,
                search_from,
            )
            .expect("searched");
            let best: Vec<Option<usize>> = searched
                .iter()
                .map(|s| s.best.first().map(|x| x.0))
                .collect();
            assert_eq!(best, want, "search from {search_from}");
        }
        let e = evaluate_dev(
            &model,
            &dev_seqs,
            &prompts,
            &candidates,
            &gold,
            (false, max_len, 0, 4),
            1,
        )
        .expect("evaluation");
        let best: Vec<Option<usize>> = e.best.iter().map(|b| b.first().map(|x| x.0)).collect();
        assert_eq!(best, want);
        // Merging reorders a sum (measured: 6e-9 relative here).
        assert!(
            (e.dev_loss - loss).abs() < 1e-6 * loss,
            "{} vs {loss}",
            e.dev_loss
        );
    }
}
