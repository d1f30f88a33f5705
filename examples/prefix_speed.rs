//! The seed's workload, measured: one long system prompt listing every class on every line.
//! Training tokens/s with each micro-batch's shared prefix computed once against the plain
//! computation (every example computes the whole prompt), and evaluation seconds per dev example
//! with prefix-shared scoring (system prompt once per evaluation, each query once, the labels as
//! a token trie) against scoring every (example, label) sequence whole.
//!
//!     cargo run --release --example prefix_speed -- DATA_DIR PRESET BATCH STEPS DEV [PLAIN_LABELS [WARM_STEPS]]
//!     cargo run --release --example prefix_speed -- ../shared/data/clinc150 tiny 8 3 20
//!
//! DATA_DIR holds train.json and dev.json in the seed's format. The preset gets random weights
//! and its tokenizer is learned from train, as `sweep run` does. PLAIN_LABELS (default: all)
//! scores only that many labels the plain way and scales the time up to all labels (the plain
//! way costs the same per label), for models too slow to score every label whole. WARM_STEPS
//! (default 0) first trains that many untimed steps at learning rate 3e-3 on successive batches,
//! so that the search for the best label (`candidate_top_k` with k 1, what a trial's evaluation
//! runs) and the best three,
//! whose cost depends on how sure the model is, is also timed on a model that has learned
//! something. The fraction of one epoch's time that evaluation takes is this data set's dev
//! lines times seconds per dev example over its training lines times seconds per training
//! example (shared-prefix training). Prints one JSON line. `scripts/bench-prefix.sh` runs the
//! README's table.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Var};
use sweep::spec::ModelSource;
use sweep::text::data::load_examples;
use sweep::text::encode::{answer_ids, prompt_ids, supervised, Seq};
use sweep::text::tokenizer::load_tokenizer;
use sweep::trainer::model::{CausalLm, Trainable};
use sweep::trainer::optim::{AdamW, Clip};
use sweep::trainer::scoring::{
    candidate_scores, candidate_scores_plain, candidate_top_k, Candidates,
};
use sweep::trainer::step::{counted_tokens, shard_gradients_with};

fn main() -> Result<()> {
    // As a trial's process does (`trainer::train::run_trial`).
    sweep::trainer::ops::cpu::tune_process();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        bail!("usage: prefix_speed DATA_DIR PRESET BATCH STEPS DEV [PLAIN_LABELS [WARM_STEPS]]");
    }
    let dir = PathBuf::from(&args[0]);
    let preset = args[1].clone();
    let batch: usize = args[2].parse().context("BATCH")?;
    let steps: usize = args[3].parse().context("STEPS")?;
    let n_dev: usize = args[4].parse().context("DEV")?;
    let train = load_examples(&dir.join("train.json"))?;
    let dev = load_examples(&dir.join("dev.json"))?;
    let tok = load_tokenizer(&ModelSource::Preset(preset.clone()), &train)?;
    let mut config = sweep::spec::shape::preset(&preset).context("unknown preset")?;
    config.vocab_size = tok.vocab_size();
    let device = Device::Cpu;
    let weights = CausalLm::random_weights(&config, 1, DType::F32, &device)?;
    let model = CausalLm::new(
        config.clone(),
        &weights,
        Trainable::All,
        1,
        &device,
        &preset,
    )?;
    drop(weights);
    let mut labels: Vec<String> = train.iter().filter_map(|e| e.tgt.clone()).collect();
    labels.sort();
    labels.dedup();
    let plain_labels: usize = match args.get(5) {
        Some(n) => n.parse().context("PLAIN_LABELS")?,
        None => labels.len(),
    };
    let answers = labels
        .iter()
        .map(|l| answer_ids(&tok, l))
        .collect::<Result<Vec<_>, _>>()?;
    let longest_answer = answers.iter().map(Vec::len).max().unwrap_or(1);
    // Every 97th training example, so the batch mixes classes.
    let seqs: Vec<Seq> = train
        .iter()
        .step_by(97)
        .take(batch)
        .map(|e| -> Result<Seq> {
            let p = prompt_ids(&tok, e)?;
            let a = answer_ids(&tok, e.tgt.as_deref().context("unlabelled")?)?;
            Ok(supervised(&p, &a, true, p.len() + a.len(), e.line)?)
        })
        .collect::<Result<_>>()?;
    let refs: Vec<&Seq> = seqs.iter().collect();
    let seq_tokens: usize = seqs.iter().map(|s| s.ids.len()).sum::<usize>() / seqs.len().max(1);
    let vars: Vec<Var> = model.trainable().iter().map(|(_, v)| v.clone()).collect();
    let mut opt = AdamW::new(vars, 0.0)?;
    let denominator = counted_tokens(&refs).max(1) as f64;
    let mut train_speed = |share: bool| -> Result<f64> {
        let start = Instant::now();
        let mut tokens = 0;
        for _ in 0..steps {
            let g = shard_gradients_with(&model, &refs, batch, 0, denominator, share)?;
            opt.step_scaled(&g.grads, Clip::of(&g.grads, 1.0)?.scale, 1e-4)?;
            tokens += g.input_tokens;
        }
        Ok(tokens as f64 / start.elapsed().as_secs_f64())
    };
    let plain_tps = train_speed(false)?;
    let shared_tps = train_speed(true)?;
    let train_s_per_example = seq_tokens as f64 / shared_tps;
    let warm_steps: usize = match args.get(6) {
        Some(n) => n.parse().context("WARM_STEPS")?,
        None => 0,
    };
    let labelled: Vec<Seq> = train
        .iter()
        .map(|e| -> Result<Seq> {
            let p = prompt_ids(&tok, e)?;
            let a = answer_ids(&tok, e.tgt.as_deref().context("unlabelled")?)?;
            Ok(supervised(&p, &a, true, p.len() + a.len(), e.line)?)
        })
        .collect::<Result<_>>()?;
    // Successive batches of a fixed shuffle (every 97th line, wrapping), untimed.
    let order: Vec<usize> = (0..labelled.len())
        .map(|i| i * 97 % labelled.len().max(1))
        .collect();
    for step in 0..warm_steps {
        let picked: Vec<&Seq> = (0..batch)
            .map(|j| &labelled[order[(step * batch + j) % order.len()]])
            .collect();
        let d = counted_tokens(&picked).max(1) as f64;
        let g = shard_gradients_with(&model, &picked, batch, 0, d, true)?;
        opt.step_scaled(&g.grads, Clip::of(&g.grads, 1.0)?.scale, 3e-3)?;
    }

    let prompts: Vec<Vec<u32>> = dev
        .iter()
        .take(n_dev)
        .map(|e| prompt_ids(&tok, e))
        .collect::<Result<_, _>>()?;
    let max_len = prompts.iter().map(Vec::len).max().unwrap_or(0) + longest_answer;
    let all = Candidates {
        answers: answers.clone(),
        labels: labels.clone(),
    };
    let start = Instant::now();
    let shared = candidate_scores(&model, &prompts, &all, true, max_len, 0, batch)?;
    let shared_s = start.elapsed().as_secs_f64() / prompts.len() as f64;
    let start = Instant::now();
    let best = candidate_top_k(&model, &prompts, &all, true, max_len, 0, batch, 3)?;
    let top_s = start.elapsed().as_secs_f64() / prompts.len() as f64;
    let start = Instant::now();
    let first = candidate_top_k(&model, &prompts, &all, true, max_len, 0, batch, 1)?;
    let top1_s = start.elapsed().as_secs_f64() / prompts.len() as f64;
    let same_first = best.iter().zip(&first).all(|(b, f)| b.first() == f.first());
    let same_best = best
        .iter()
        .zip(&shared)
        .all(|(b, s)| b.first().map(|x| x.0) == sweep::stats::classify::argmax(s));
    let dev_correct = best
        .iter()
        .zip(&dev)
        .filter(|(b, e)| b.first().map(|x| labels[x.0].as_str()) == e.tgt.as_deref())
        .count();
    // One epoch: every training line once, then every dev line scored.
    let epoch_fraction =
        |eval_s: f64| eval_s * dev.len() as f64 / (train_s_per_example * train.len() as f64);
    let some = Candidates {
        answers: answers[..plain_labels.min(answers.len())].to_vec(),
        labels: labels[..plain_labels.min(labels.len())].to_vec(),
    };
    let start = Instant::now();
    let plain = candidate_scores_plain(&model, &prompts, &some, true, max_len, 0, batch)?;
    let plain_s = start.elapsed().as_secs_f64() / prompts.len() as f64 * labels.len() as f64
        / some.answers.len().max(1) as f64;
    let worst = shared
        .iter()
        .zip(&plain)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0f64, f64::max);
    println!(
        "{}",
        serde_json::json!({
            "preset": preset,
            "parameters": config.parameter_count(),
            "vocab": config.vocab_size,
            "labels": labels.len(),
            "tokens_per_training_example": seq_tokens,
            "dev_prompt_tokens": prompts.first().map(Vec::len),
            "batch": batch,
            "steps": steps,
            "train_tokens_per_s_plain": plain_tps,
            "train_tokens_per_s_shared": shared_tps,
            "dev_examples": prompts.len(),
            "eval_s_per_dev_example_plain": plain_s,
            "plain_labels_timed": some.answers.len(),
            "eval_s_per_dev_example_shared": shared_s,
            "max_score_difference": worst,
            "warm_steps": warm_steps,
            "dev_accuracy_after_warm_steps": dev_correct as f64 / prompts.len().max(1) as f64,
            "eval_s_per_dev_example_top3_search": top_s,
            "search_best_equals_full_argmax": same_best && same_first,
            "eval_s_per_dev_example_top1_search": top1_s,
            "train_s_per_example_shared": train_s_per_example,
            "train_lines": train.len(),
            "dev_lines": dev.len(),
            "epoch_eval_over_train_shared_scores": epoch_fraction(shared_s),
            "epoch_eval_over_train_top3_search": epoch_fraction(top_s),
            "epoch_eval_over_train_top1_search": epoch_fraction(top1_s),
        })
    );
    Ok(())
}
