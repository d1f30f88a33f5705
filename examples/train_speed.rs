//! Training speed of one configuration: tokens/s and peak memory of real optimizer steps on
//! random tokens. One configuration per process, so the peak memory is this configuration's.
//!
//!     cargo run --release --example train_speed -- PRESET METHOD BATCH SEQ STEPS [VOCAB] [--kernels composed]
//!     cargo run --release --example train_speed -- llama-135m lora 4 128 3
//!
//! Prints one JSON line. `scripts/bench-speed.sh` runs the table in benches/train_speed.md.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use sweep::spec::params::Kernels;
use sweep::trainer::bench::{measure, BenchConfig};

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let kernels = match args.iter().position(|a| a == "--kernels") {
        Some(i) => {
            let value = args
                .get(i + 1)
                .context("--kernels needs fused or composed")?;
            let kernels: Kernels = serde_json::from_value(serde_json::json!(value))
                .context("--kernels is fused or composed")?;
            args.drain(i..i + 2);
            kernels
        }
        None => Kernels::default(),
    };
    if args.len() < 5 {
        bail!(
            "usage: train_speed PRESET METHOD BATCH SEQ STEPS [VOCAB] [--kernels fused|composed]"
        );
    }
    let preset = &args[0];
    let method = args[1].as_str();
    let batch: usize = args[2].parse().context("BATCH")?;
    let seq: usize = args[3].parse().context("SEQ")?;
    let steps: usize = args[4].parse().context("STEPS")?;
    let vocab = match args.get(5) {
        Some(v) => v.parse().context("VOCAB")?,
        None if preset == "llama-135m" => 49152,
        None => 3000,
    };
    let m = measure(
        &BenchConfig {
            preset: preset.clone(),
            method: method.to_string(),
            batch,
            seq,
            steps,
            vocab,
            kernels,
        },
        &Device::Cpu,
    )?;
    println!(
        "{}",
        serde_json::json!({
            "preset": preset,
            "method": method,
            "kernels": kernels,
            "params": m.params,
            "trainable": m.trainable,
            "batch": batch,
            "seq": seq,
            "steps": steps,
            "threads": candle_core::utils::get_num_threads(),
            "seconds_per_step": m.seconds_per_step,
            "tokens_per_sec": m.tokens_per_sec,
            "peak_rss_mb": sweep::protocol::trial::peak_rss_mb(),
            "estimate_mb": m.estimate_mb,
            "loss": m.loss,
        })
    );
    Ok(())
}
