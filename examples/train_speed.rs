//! Training speed of one configuration: tokens/s and peak memory of real optimizer steps on
//! random tokens. One configuration per process, so the peak memory is this configuration's.
//!
//!     cargo run --release --example train_speed -- PRESET METHOD BATCH SEQ STEPS [VOCAB]
//!     cargo run --release --example train_speed -- llama-135m lora 4 128 3
//!
//! Prints one JSON line. `scripts/bench-speed.sh` runs the table in benches/train_speed.md.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Var};
use sweep::spec::shape::LORA_TARGETS;
use sweep::text::encode::Seq;
use sweep::trainer::model::{CausalLm, LoraSettings, Trainable};
use sweep::trainer::optim::AdamW;
use sweep::trainer::step::train_step;
use sweep::util::rng::SplitMix64;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        bail!("usage: train_speed PRESET METHOD BATCH SEQ STEPS [VOCAB]");
    }
    let preset = &args[0];
    let method = args[1].as_str();
    let batch: usize = args[2].parse().context("BATCH")?;
    let seq: usize = args[3].parse().context("SEQ")?;
    let steps: usize = args[4].parse().context("STEPS")?;
    let mut config = sweep::spec::shape::preset(preset).context("unknown preset")?;
    config.vocab_size = match args.get(5) {
        Some(v) => v.parse().context("VOCAB")?,
        None if preset == "llama-135m" => 49152,
        None => 3000,
    };
    let device = Device::Cpu;
    let weights = CausalLm::random_weights(&config, 1, DType::F32, &device)?;
    let trainable = match method {
        "lora" => Trainable::Lora(LoraSettings {
            rank: 8,
            alpha: 16.0,
            targets: LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
        }),
        "sft" => Trainable::All,
        other => bail!("method must be sft or lora, got {other}"),
    };
    let model = CausalLm::new(config.clone(), &weights, trainable, 1, &device, preset)?;
    drop(weights);
    let mut rng = SplitMix64::new(2);
    let seqs: Vec<Seq> = (0..batch)
        .map(|_| Seq {
            ids: (0..seq)
                .map(|_| 4 + rng.below(config.vocab_size - 4) as u32)
                .collect(),
            loss_from: 1,
        })
        .collect();
    let refs: Vec<&Seq> = seqs.iter().collect();
    let vars: Vec<Var> = model.trainable().iter().map(|(_, v)| v.clone()).collect();
    let mut opt = AdamW::new(vars, 0.0)?;
    // One step to warm up allocations, then the timed steps.
    train_step(&model, &mut opt, &refs, batch, 0, 1e-4, 1.0)?;
    let start = Instant::now();
    let mut tokens = 0;
    let mut last_loss = 0.0;
    for _ in 0..steps {
        let s = train_step(&model, &mut opt, &refs, batch, 0, 1e-4, 1.0)?;
        tokens += s.input_tokens;
        last_loss = s.loss;
    }
    let secs = start.elapsed().as_secs_f64();
    // The plan-time estimate of the same step, to compare with the measured peak.
    let trial = sweep::spec::params::TrialParams::from_assignment(
        &[
            ("method".to_string(), serde_json::json!(method)),
            ("batch_size".to_string(), serde_json::json!(batch)),
        ]
        .into_iter()
        .collect(),
        0,
    )
    .map_err(anyhow::Error::msg)?;
    let estimate = sweep::spec::memory::estimate(
        &sweep::spec::memory::Workload {
            config: &config,
            params: &trial,
            longest_sequence: seq,
            counted_per_sequence: seq - 1,
            counted_longest_first: None,
            bytes_per_value: 4,
            on_cuda: false,
            shared_prefix: 0,
        },
        batch,
    );
    println!(
        "{}",
        serde_json::json!({
            "preset": preset,
            "method": method,
            "params": config.parameter_count(),
            "trainable": model.trainable_parameter_count(),
            "batch": batch,
            "seq": seq,
            "steps": steps,
            "threads": candle_core::utils::get_num_threads(),
            "seconds_per_step": secs / steps as f64,
            "tokens_per_sec": tokens as f64 / secs,
            "peak_rss_mb": sweep::protocol::trial::peak_rss_mb(),
            "estimate_mb": estimate.total_mb(),
            "loss": last_loss,
        })
    );
    Ok(())
}
