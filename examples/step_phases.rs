//! Where a training step's time goes: the forward with its loss, the backward, reading the
//! gradients (store and sinks), clipping and the optimizer, each timed on its own, averaged over
//! the timed steps after one warm-up step. The same model, data and step as `train_speed`.
//!
//!     cargo run --release --example step_phases -- PRESET METHOD BATCH SEQ STEPS [VOCAB]
//!     cargo run --release --example step_phases -- llama-135m sft 4 128 3
//!
//! Prints one line of seconds per phase and the tokens/s of the whole.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Var};
use sweep::text::encode::Seq;
use sweep::trainer::batch::{make_batch, token_nll};
use sweep::trainer::bench;
use sweep::trainer::model::CausalLm;
use sweep::trainer::optim::{AdamW, Clip};

fn main() -> Result<()> {
    sweep::trainer::ops::cpu::tune_process();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        bail!("usage: step_phases PRESET METHOD BATCH SEQ STEPS [VOCAB]");
    }
    let preset = &args[0];
    let batch: usize = args[2].parse().context("BATCH")?;
    let seq: usize = args[3].parse().context("SEQ")?;
    let steps: usize = args[4].parse().context("STEPS")?;
    let vocab: usize = match args.get(5) {
        Some(v) => v.parse().context("VOCAB")?,
        None if preset == "llama-135m" => 49152,
        None => 3000,
    };
    let trainable = bench::trainable(&args[1])?;
    let device = Device::Cpu;
    let mut config =
        sweep::spec::shape::preset(preset).with_context(|| format!("no preset `{preset}`"))?;
    config.vocab_size = vocab;
    let weights = CausalLm::random_weights(&config, 1, DType::F32, &device)?;
    let model = CausalLm::new(config, &weights, trainable, 1, &device, preset)?;
    drop(weights);
    let seqs = bench::random_sequences(batch, seq, vocab);
    let refs: Vec<&Seq> = seqs.iter().collect();
    let vars: Vec<Var> = model.trainable().iter().map(|(_, v)| v.clone()).collect();
    let mut opt = AdamW::new(vars, 0.0)?.with_kernels(model.kernels())?;
    let names = ["forward", "backward", "gradients", "clip", "optimizer"];
    let mut seconds = [0.0f64; 5];
    for step in 0..=steps {
        let mut marks = vec![Instant::now()];
        let padded = make_batch(&refs, 0, &device)?;
        let loss = (token_nll(&model, &padded)?.sum_all()? / padded.tokens.max(1) as f64)?;
        loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        marks.push(Instant::now());
        let store = loss.backward()?;
        marks.push(Instant::now());
        let grads = model
            .gradients(&store)?
            .into_iter()
            .zip(model.trainable())
            .map(|(g, (name, _))| g.with_context(|| format!("no gradient for {name}")))
            .collect::<Result<Vec<_>>>()?;
        drop(store);
        marks.push(Instant::now());
        let clip = Clip::of(&grads, 1.0)?;
        marks.push(Instant::now());
        opt.step_scaled(&grads, clip.scale, 1e-4)?;
        marks.push(Instant::now());
        if step > 0 {
            for (s, pair) in seconds.iter_mut().zip(marks.windows(2)) {
                *s += (pair[1] - pair[0]).as_secs_f64();
            }
        }
    }
    let per_step: Vec<f64> = seconds.iter().map(|s| s / steps.max(1) as f64).collect();
    let total: f64 = per_step.iter().sum();
    let line: Vec<String> = names
        .iter()
        .zip(&per_step)
        .map(|(n, s)| format!("{n} {s:.3} s"))
        .collect();
    println!(
        "{}; step {total:.3} s, {:.1} tokens/s",
        line.join(", "),
        (batch * (seq - 1)) as f64 / total.max(1e-9)
    );
    Ok(())
}
