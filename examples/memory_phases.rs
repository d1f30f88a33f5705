//! Where a trial's memory peaks: the resident peak (VmHWM) of loading the model, of training
//! steps and of an evaluation, each measured alone (the peak is reset between phases through
//! /proc/self/clear_refs), with the resident memory left after each. What the fixed and
//! per-example parts of `spec::memory::estimate` are fitted to; `scripts/validate-memory.sh`
//! checks the whole estimate against real trials.
//!
//!     cargo run --release --example memory_phases -- MODEL METHOD DATA_DIR BATCH MICRO STEPS [DEV]
//!     cargo run --release --example memory_phases -- models/random-135m-chat lora data/clinc150-mini 8 2 2 32
//!
//! MODEL is a model folder or `preset:NAME`; METHOD `sft` or `lora`. Linux only. Prints one
//! JSON line, in MiB.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use sweep::spec::params::TrialParams;
use sweep::spec::ModelSource;
use sweep::text::data::{label_set, load_examples};
use sweep::text::encode::{answer_ids, encode_all, prompt_ids, Seq};
use sweep::trainer::parallel::Replicas;
use sweep::trainer::scoring::{evaluate_dev, Candidates};

/// (VmRSS, VmHWM) in MiB.
fn resident() -> Result<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/self/status"))?;
        let kb: f64 = line
            .split_whitespace()
            .nth(1)
            .context("malformed status line")?
            .parse()?;
        Ok(kb / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Starts a new phase: the peak so far is forgotten (it becomes the current resident size).
fn reset_peak() -> Result<()> {
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak (clear_refs)")
}

fn main() -> Result<()> {
    sweep::trainer::ops::cpu::tune_process();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 6 {
        bail!("usage: memory_phases MODEL METHOD DATA_DIR BATCH MICRO STEPS [DEV]");
    }
    let source = match args[0].strip_prefix("preset:") {
        Some(name) => ModelSource::Preset(name.to_string()),
        None => ModelSource::Path(PathBuf::from(&args[0])),
    };
    let dir = PathBuf::from(&args[2]);
    let batch: usize = args[3].parse().context("BATCH")?;
    let micro: usize = args[4].parse().context("MICRO")?;
    let steps: usize = args[5].parse().context("STEPS")?;
    let n_dev: usize = args.get(6).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let params = TrialParams::from_assignment(
        &[
            ("method".to_string(), serde_json::json!(args[1])),
            ("batch_size".to_string(), serde_json::json!(batch)),
            ("micro_batch".to_string(), serde_json::json!(micro)),
        ]
        .into_iter()
        .collect(),
        0,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let train = load_examples(&dir.join("train.json"))?;
    let mut dev = load_examples(&dir.join("dev.json"))?;
    dev.truncate(n_dev);
    let (start_rss, _) = resident()?;
    reset_peak()?;
    let loaded = sweep::trainer::train::load::load_model(&source, &params, &train, &Device::Cpu)?;
    let tok = loaded.tokenizer;
    let train_seqs = encode_all(&train, &tok, params.method, 4096, &dir.join("train.json"))?;
    let dev_seqs = encode_all(&dev, &tok, params.method, 4096, &dir.join("dev.json"))?;
    let max_len = train_seqs.iter().map(|s| s.ids.len()).max().unwrap_or(2);
    let mut replicas = Replicas::new(loaded.model, &[], 0.0, 1)?;
    let (load_rss, load_peak) = resident()?;
    reset_peak()?;
    // The longest examples first: the step's worst micro-batches.
    let mut order: Vec<&Seq> = train_seqs.iter().collect();
    order.sort_by_key(|s| std::cmp::Reverse(s.ids.len()));
    for step in 0..steps {
        let picked: Vec<&Seq> = (0..batch)
            .map(|j| order[(step * batch + j) % order.len()])
            .collect();
        replicas.step(&picked, micro, tok.pad, 1e-4, 1.0)?;
    }
    let (train_rss, train_peak) = resident()?;
    reset_peak()?;
    let labels = label_set(&train);
    let candidates = Candidates {
        answers: labels
            .iter()
            .map(|l| answer_ids(&tok, l))
            .collect::<Result<Vec<_>, _>>()?,
        labels: labels.clone(),
    };
    let prompts: Vec<Vec<u32>> = dev
        .iter()
        .map(|e| prompt_ids(&tok, e))
        .collect::<Result<_, _>>()?;
    let gold: Vec<Option<usize>> = dev
        .iter()
        .map(|e| e.tgt.as_ref().and_then(|t| labels.binary_search(t).ok()))
        .collect();
    evaluate_dev(
        replicas.primary(),
        &dev_seqs,
        &prompts,
        &candidates,
        &gold,
        (tok.bos.is_some(), max_len, tok.pad, micro),
        1,
    )?;
    let (eval_rss, eval_peak) = resident()?;
    println!(
        "{}",
        serde_json::json!({
            "model": args[0],
            "method": args[1],
            "batch": batch,
            "micro_batch": micro,
            "max_seq_len": max_len,
            "start_rss": start_rss,
            "load_peak": load_peak,
            "after_load_rss": load_rss,
            "train_peak": train_peak,
            "after_train_rss": train_rss,
            "eval_peak": eval_peak,
            "after_eval_rss": eval_rss,
        })
    );
    Ok(())
}
