//! What a trial's evaluation costs against its training, in one process and on the same model:
//! seconds per trained example (the optimizer step a trial takes, `Replicas::step`, shared-prefix
//! micro-batches) and seconds per evaluated dev example (what `trial::evaluate` runs: the dev
//! loss, then the best label by `candidate_top_k`), alternated `REPEATS` times so that a machine
//! shared with other jobs slows both alike; the ratio is what matters.
//!
//!     cargo run --release --example eval_vs_train -- MODEL METHOD DATA_DIR BATCH MICRO STEPS DEV [REPEATS [WARM]] [--separate]
//!     cargo run --release --example eval_vs_train -- models/random-135m-chat lora data/clinc150-mini 8 8 2 32
//!     cargo run --release --example eval_vs_train -- preset:tiny sft ../shared/data/clinc150 8 8 4 64 3 100
//!
//! MODEL is a model folder or `preset:NAME` (random init, tokenizer learned from train, as a
//! trial does); METHOD `sft` or `lora` (r 8 on q and v, the trial defaults). DATA_DIR holds
//! train.json and dev.json. Each repeat times STEPS optimizer steps of BATCH training examples
//! (micro-batches of MICRO) on successive batches, then the first DEV dev lines evaluated with
//! micro-batch MICRO as a trial's evaluation. WARM (default 0) untimed steps at learning rate 3e-3
//! first, so that the label search sees a model that has learned something (how much of the
//! label trie the search opens depends on how sure the model is). `--separate` also times the
//! dev loss and the best label as two passes and checks they agree. Prints one JSON line per
//! repeat, then a summary line with the median ratio. Each repeat also gives the ratio of the
//! process's CPU seconds (`eval_cpu_over_train_cpu`, user + system of all its threads): on a
//! machine shared with other jobs, a process that is paused or waits for a core loses wall
//! time but not CPU time. `scripts/bench-eval.sh` runs the figures.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use sweep::spec::params::{Method, TrialParams};
use sweep::spec::ModelSource;
use sweep::text::data::{label_set, load_examples};
use sweep::text::encode::{answer_ids, encode_all, prompt_ids, Seq};
use sweep::trainer::parallel::Replicas;
use sweep::trainer::scoring::{
    candidate_top_k, candidate_top_k_by_search, dev_loss, evaluate_dev, top_accuracy, Candidates,
    Trie,
};

/// CPU seconds this process has used so far, every thread's user and system time.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn main() -> Result<()> {
    sweep::trainer::ops::cpu::tune_process();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // Also time the dev loss and the label search as separate passes (what trials ran before).
    let separate = args.iter().any(|a| a == "--separate");
    args.retain(|a| a != "--separate");
    if args.len() < 7 {
        bail!("usage: eval_vs_train MODEL METHOD DATA_DIR BATCH MICRO STEPS DEV [REPEATS [WARM]]");
    }
    let source = match args[0].strip_prefix("preset:") {
        Some(name) => ModelSource::Preset(name.to_string()),
        None => ModelSource::Path(PathBuf::from(&args[0])),
    };
    let method = args[1].clone();
    let dir = PathBuf::from(&args[2]);
    let number = |i: usize, name: &str| -> Result<usize> {
        args[i].parse().with_context(|| name.to_string())
    };
    let (batch, micro, steps, n_dev) = (
        number(3, "BATCH")?,
        number(4, "MICRO")?,
        number(5, "STEPS")?,
        number(6, "DEV")?,
    );
    let repeats = args
        .get(7)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2usize);
    let warm = args
        .get(8)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(0usize);
    let params = TrialParams::from_assignment(
        &[
            ("method".to_string(), serde_json::json!(method)),
            ("batch_size".to_string(), serde_json::json!(batch)),
            ("micro_batch".to_string(), serde_json::json!(micro)),
        ]
        .into_iter()
        .collect(),
        0,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if params.method == Method::PostPretrain {
        bail!("METHOD is sft or lora");
    }
    let train = load_examples(&dir.join("train.json"))?;
    let mut dev = load_examples(&dir.join("dev.json"))?;
    dev.truncate(n_dev);
    let loaded = sweep::trainer::train::load::load_model(&source, &params, &train, &Device::Cpu)?;
    let tok = loaded.tokenizer;
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
    let longest = |seqs: &[Seq]| seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
    let max_len = 4096;
    let train_seqs = encode_all(
        &train,
        &tok,
        params.method,
        max_len,
        &dir.join("train.json"),
    )?;
    let dev_seqs = encode_all(&dev, &tok, params.method, max_len, &dir.join("dev.json"))?;
    // The trial's max_seq_len as the plan fits it: the longest example.
    let max_len = longest(&train_seqs).max(longest(&dev_seqs));
    let gold: Vec<Option<usize>> = dev
        .iter()
        .map(|e| e.tgt.as_ref().and_then(|t| labels.binary_search(t).ok()))
        .collect();
    let mut replicas = Replicas::new(loaded.model, &[], 0.0, 1)?;
    // Successive batches of a fixed shuffle (every 97th line, wrapping).
    let order: Vec<usize> = (0..train_seqs.len())
        .map(|i| i * 97 % train_seqs.len().max(1))
        .collect();
    let mut next = 0usize;
    let mut batch_of = || -> Vec<&Seq> {
        let picked = (0..batch)
            .map(|j| &train_seqs[order[(next + j) % order.len()]])
            .collect();
        next += batch;
        picked
    };
    for _ in 0..warm {
        replicas.step(&batch_of(), micro, tok.pad, 3e-3, 1.0)?;
    }
    let trie = Trie::new(&candidates.answers);
    let mut ratios = Vec::new();
    let mut cpu_ratios = Vec::new();
    for repeat in 0..repeats {
        let start = Instant::now();
        let cpu_start = cpu_seconds();
        for _ in 0..steps {
            replicas.step(&batch_of(), micro, tok.pad, 1e-4, 1.0)?;
        }
        let train_s = start.elapsed().as_secs_f64() / (steps * batch).max(1) as f64;
        let train_cpu = (cpu_seconds() - cpu_start) / (steps * batch).max(1) as f64;
        let model = replicas.primary();
        // What a trial's evaluation runs (`trial::evaluate`).
        let start = Instant::now();
        let cpu_start = cpu_seconds();
        let e = evaluate_dev(
            model,
            &dev_seqs,
            &prompts,
            &candidates,
            &gold,
            (tok.bos.is_some(), max_len, tok.pad, micro),
            1,
        )?;
        let eval_s = start.elapsed().as_secs_f64() / dev.len().max(1) as f64;
        let eval_cpu = (cpu_seconds() - cpu_start) / dev.len().max(1) as f64;
        // Its two parts as separate passes, for comparison: the dev loss, then the best label.
        let (loss_s, top_s, same) = if separate {
            let start = Instant::now();
            let loss = dev_loss(model, &dev_seqs, tok.pad, micro)?;
            let loss_s = start.elapsed().as_secs_f64() / dev.len().max(1) as f64;
            let start = Instant::now();
            let best = candidate_top_k(
                model,
                &prompts,
                &candidates,
                tok.bos.is_some(),
                max_len,
                tok.pad,
                micro,
                1,
            )?;
            let top_s = start.elapsed().as_secs_f64() / dev.len().max(1) as f64;
            // The search whatever the trie's size (`candidate_top_k` scores small tries whole).
            let start = Instant::now();
            let searched = candidate_top_k_by_search(
                model,
                &prompts,
                &candidates,
                tok.bos.is_some(),
                max_len,
                tok.pad,
                micro,
                1,
            )?;
            let search_s = start.elapsed().as_secs_f64() / dev.len().max(1) as f64;
            let same = (loss - e.dev_loss).abs() < 1e-4
                && searched
                    .iter()
                    .zip(&best)
                    .all(|(a, b)| a.first().map(|x| x.0) == b.first().map(|x| x.0))
                && best
                    .iter()
                    .zip(&e.best)
                    .all(|(a, b)| a.first().map(|x| x.0) == b.first().map(|x| x.0));
            (Some(loss_s), Some(top_s), Some((same, search_s)))
        } else {
            (None, None, None)
        };
        let loss = e.dev_loss;
        let best = e.best;
        ratios.push(eval_s / train_s);
        cpu_ratios.push(eval_cpu / train_cpu);
        println!(
            "{}",
            serde_json::json!({
                "repeat": repeat,
                "train_s_per_example": train_s,
                "eval_s_per_dev_example": eval_s,
                "separate_dev_loss_s_per_dev_example": loss_s,
                "separate_top1_s_per_dev_example": top_s,
                "separate_agree": same.map(|s| s.0),
                "search_top1_s_per_dev_example": same.map(|s| s.1),
                "eval_over_train": eval_s / train_s,
                "eval_cpu_over_train_cpu": eval_cpu / train_cpu,
                "dev_loss": loss,
                "accuracy": top_accuracy(&best, &gold),
            })
        );
    }
    ratios.sort_by(f64::total_cmp);
    cpu_ratios.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "model": args[0],
            "method": method,
            "data": args[2],
            "batch": batch,
            "micro_batch": micro,
            "labels": labels.len(),
            "trie_nodes": trie.nodes.len(),
            "longest_answer": candidates.answers.iter().map(Vec::len).max(),
            "dev_prompt_tokens": prompts.first().map(Vec::len),
            "max_seq_len": max_len,
            "warm_steps": warm,
            "dev_examples": dev.len(),
            "median_eval_over_train": ratios[ratios.len() / 2],
            "median_eval_cpu_over_train_cpu": cpu_ratios[cpu_ratios.len() / 2],
        })
    );
    Ok(())
}
