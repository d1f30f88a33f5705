//! Step time of data-parallel training (`gpus: k`) on k CPU replicas: real optimizer steps
//! (`parallel::Replicas::step`, the trainer's own) on random tokens at a fixed global batch.
//!
//!     cargo run --release --example data_parallel_speed -- DEVICES MODEL METHOD BATCH SEQ STEPS [VOCAB]
//!     cargo run --release --example data_parallel_speed -- 2 tiny sft 16 64 10 5000
//!     cargo run --release --example data_parallel_speed -- 2 256x4 sft 16 64 5 5000
//!
//! MODEL is a preset (`test`, `tiny`, `llama-135m`) or HIDDENxLAYERS (intermediate 2 x hidden,
//! heads of 32, half as many key/value heads). Prints one JSON line; `scripts/bench-data-parallel.sh`
//! runs the table in the README.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use sweep::spec::shape::ModelConfig;
use sweep::text::encode::Seq;
use sweep::trainer::model::CausalLm;
use sweep::trainer::parallel::Replicas;

/// A preset's shape, or HIDDENxLAYERS.
fn model_config(name: &str) -> Result<ModelConfig> {
    if let Some(config) = sweep::spec::shape::preset(name) {
        return Ok(config);
    }
    let (hidden, layers) = name
        .split_once('x')
        .with_context(|| format!("MODEL `{name}`: neither a preset nor HIDDENxLAYERS"))?;
    let hidden: usize = hidden.parse().context("MODEL: HIDDEN")?;
    let layers: usize = layers.parse().context("MODEL: LAYERS")?;
    let mut config = sweep::spec::shape::preset("tiny").context("the tiny preset")?;
    config.hidden_size = hidden;
    config.intermediate_size = 2 * hidden;
    config.num_hidden_layers = layers;
    config.num_attention_heads = (hidden / 32).max(1);
    config.num_key_value_heads = Some((hidden / 64).max(1));
    Ok(config)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 6 {
        bail!("usage: data_parallel_speed DEVICES MODEL METHOD BATCH SEQ STEPS [VOCAB]");
    }
    let devices: usize = args[0].parse().context("DEVICES")?;
    if devices == 0 {
        bail!("DEVICES must be at least 1");
    }
    let model_name = &args[1];
    let method = args[2].as_str();
    let batch: usize = args[3].parse().context("BATCH")?;
    let seq: usize = args[4].parse().context("SEQ")?;
    let steps: usize = args[5].parse().context("STEPS")?;
    let mut config = model_config(model_name)?;
    config.vocab_size = match args.get(6) {
        Some(v) => v.parse().context("VOCAB")?,
        None => 5000,
    };
    config.validate(model_name)?;
    let weights = CausalLm::random_weights(&config, 1, DType::F32, &Device::Cpu)?;
    let trainable = sweep::trainer::bench::trainable(method)?;
    let primary = CausalLm::new(
        config.clone(),
        &weights,
        trainable,
        1,
        &Device::Cpu,
        model_name,
    )?;
    drop(weights);
    let mut replicas = Replicas::new(primary, &vec![Device::Cpu; devices - 1], 0.0, 1)?;
    let seqs = sweep::trainer::bench::random_sequences(batch, seq, config.vocab_size);
    let refs: Vec<&Seq> = seqs.iter().collect();
    // One step to warm up allocations and thread pools, then the timed steps.
    replicas.step(&refs, batch, 0, 1e-4, 1.0)?;
    let mut step_seconds = Vec::with_capacity(steps);
    let mut last_loss = 0.0;
    for _ in 0..steps {
        let start = Instant::now();
        last_loss = replicas.step(&refs, batch, 0, 1e-4, 1.0)?.loss;
        step_seconds.push(start.elapsed().as_secs_f64());
    }
    let mean = step_seconds.iter().sum::<f64>() / steps.max(1) as f64;
    let mut sorted = step_seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "{}",
        serde_json::json!({
            "model": model_name,
            "method": method,
            "params": config.parameter_count(),
            "devices": devices,
            "global_batch": batch,
            "per_device_batch": sweep::trainer::parallel::per_device_batch(batch, devices),
            "seq": seq,
            "steps": steps,
            "threads": candle_core::utils::get_num_threads(),
            "seconds_per_step_mean": mean,
            "seconds_per_step_median": median,
            "peak_rss_mb": sweep::protocol::trial::peak_rss_mb(),
            "loss": last_loss,
        })
    );
    Ok(())
}
