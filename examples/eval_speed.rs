//! What a trial's evaluation costs on a trained checkpoint, each part timed in one process: the
//! dev loss (gold answers only), every label's score (`candidate_scores`, what `sweep eval` and
//! `sweep predict` run) and the search for the three best labels (`candidate_top_k_by_search`;
//! a trial's `candidate_top_k` searches when the label trie is large, see
//! `SEARCH_FROM_INNER_NODES`); with the accuracy each gives and whether they agree.
//!
//!     cargo run --release --example eval_speed -- CHECKPOINT DEV_FILE [LINES]
//!
//! CHECKPOINT is a trial's checkpoint folder (with labels.json); DEV_FILE in the seed's format.
//! LINES (default: all) scores only the first that many lines. Prints one JSON line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sweep::stats::classify::argmax;
use sweep::text::data::load_examples;
use sweep::text::encode::{answer_ids, prompt_ids, supervised, Seq};
use sweep::trainer::checkpoint_eval::Scorer;
use sweep::trainer::scoring::{candidate_scores, candidate_top_k_by_search, dev_loss, Candidates};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        bail!("usage: eval_speed CHECKPOINT DEV_FILE [LINES]");
    }
    let scorer = Scorer::load(&PathBuf::from(&args[0]))?;
    let mut dev = load_examples(&PathBuf::from(&args[1]))?;
    if let Some(n) = args.get(2) {
        dev.truncate(n.parse().context("LINES")?);
    }
    let tok = &scorer.tokenizer;
    let labels = &scorer.labels.labels;
    let max_len = scorer.labels.max_seq_len as usize;
    let batch = scorer.labels.eval_batch;
    let has_bos = tok.bos.is_some();
    let candidates = Candidates {
        answers: labels
            .iter()
            .map(|l| answer_ids(tok, l))
            .collect::<Result<Vec<_>, _>>()?,
        labels: labels.clone(),
    };
    let prompts: Vec<Vec<u32>> = dev
        .iter()
        .map(|e| prompt_ids(tok, e))
        .collect::<Result<_, _>>()?;
    let seqs: Vec<Seq> = dev
        .iter()
        .zip(&prompts)
        .map(|(e, p)| -> Result<Seq> {
            let a = answer_ids(tok, e.tgt.as_deref().context("unlabelled dev line")?)?;
            Ok(supervised(p, &a, has_bos, max_len, e.line)?)
        })
        .collect::<Result<_>>()?;
    let start = Instant::now();
    let best = candidate_top_k_by_search(
        &scorer.model,
        &prompts,
        &candidates,
        has_bos,
        max_len,
        tok.pad,
        batch,
        3,
    )?;
    let top_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let loss = dev_loss(&scorer.model, &seqs, tok.pad, batch)?;
    let loss_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let full = candidate_scores(
        &scorer.model,
        &prompts,
        &candidates,
        has_bos,
        max_len,
        tok.pad,
        batch,
    )?;
    let full_s = start.elapsed().as_secs_f64();
    let correct = |picked: &[Option<usize>]| {
        picked
            .iter()
            .zip(&dev)
            .filter(|(p, e)| p.map(|i| labels[i].as_str()) == e.tgt.as_deref())
            .count() as f64
            / dev.len().max(1) as f64
    };
    let full_pick: Vec<Option<usize>> = full.iter().map(|s| argmax(s)).collect();
    let top_pick: Vec<Option<usize>> = best.iter().map(|b| b.first().map(|x| x.0)).collect();
    println!(
        "{}",
        serde_json::json!({
            "checkpoint": args[0],
            "dev_lines": dev.len(),
            "labels": labels.len(),
            "dev_loss": loss,
            "dev_loss_s": loss_s,
            "all_scores_s": full_s,
            "top3_search_s": top_s,
            "accuracy_all_scores": correct(&full_pick),
            "accuracy_top3_search": correct(&top_pick),
            "same_predictions": full_pick == top_pick,
        })
    );
    Ok(())
}
