//! Training speed of one configuration on random tokens: the optimizer step a trial takes
//! (`parallel::Replicas::step`, one device) on a preset's
//! shape, sft or LoRA (r 8, alpha 16, all seven projections), loss on every token. What
//! `examples/train_speed.rs` prints and what `sweep gpu-check` measures on a GPU, in one place.

use std::time::Instant;

use candle_core::{DType, Device};

use crate::spec::shape::LORA_TARGETS;
use crate::text::encode::Seq;
use crate::trainer::error::{Result, TrainError};
use crate::trainer::model::{CausalLm, LoraSettings, Trainable};
use crate::trainer::parallel::Replicas;
use crate::util::rng::SplitMix64;

/// One configuration to time.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub preset: String,
    /// `sft` or `lora`.
    pub method: String,
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    pub vocab: usize,
    /// Fused or composed inner operations (the `kernels` trial parameter).
    pub kernels: crate::spec::params::Kernels,
}

/// What the timed steps gave.
#[derive(Debug, Clone)]
pub struct Measured {
    pub params: usize,
    pub trainable: usize,
    pub seconds_per_step: f64,
    pub tokens_per_sec: f64,
    pub loss: f64,
    /// The plan-time estimate of the same step, MiB, to compare with the measured peak.
    pub estimate_mb: f64,
}

/// What the benchmarks train for a method: everything (`sft`), or LoRA r 8, alpha 16 on all
/// seven projections (`lora`), as the PyTorch side does.
pub fn trainable(method: &str) -> Result<Trainable> {
    match method {
        "lora" => Ok(Trainable::Lora(LoraSettings {
            rank: 8,
            alpha: 16.0,
            targets: LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
        })),
        "sft" => Ok(Trainable::All),
        other => Err(TrainError::Setting(format!(
            "the benchmark's method is sft or lora, got `{other}`"
        ))),
    }
}

/// `batch` sequences of `seq` random tokens from ids 4 and up (below the special tokens nothing
/// is drawn), loss on every token after the first; the same every run.
pub fn random_sequences(batch: usize, seq: usize, vocab: usize) -> Vec<Seq> {
    let mut rng = SplitMix64::new(2);
    (0..batch)
        .map(|_| Seq {
            ids: (0..seq)
                .map(|_| 4 + rng.below(vocab.saturating_sub(4)) as u32)
                .collect(),
            loss_from: 1,
        })
        .collect()
}

/// One warm-up step, then `steps` timed ones (synchronised with the device before and after).
pub fn measure(c: &BenchConfig, device: &Device) -> Result<Measured> {
    crate::trainer::ops::cpu::tune_process();
    let mut config = crate::spec::shape::preset(&c.preset)
        .ok_or_else(|| TrainError::UnknownPreset(c.preset.clone()))?;
    config.vocab_size = c.vocab;
    let weights = CausalLm::random_weights(&config, 1, DType::F32, device)?;
    let model = CausalLm::new(
        config.clone(),
        &weights,
        trainable(&c.method)?,
        1,
        device,
        &c.preset,
    )?
    .with_kernels(c.kernels);
    drop(weights);
    let seqs = random_sequences(c.batch, c.seq, c.vocab);
    let refs: Vec<&Seq> = seqs.iter().collect();
    let trainable = model.trainable_parameter_count();
    // The step a trial takes: one replica, AdamW without weight decay.
    let mut replicas = Replicas::new(model, &[], 0.0, 1)?;
    // One step to warm up allocations and kernels, then the timed steps.
    replicas.step(&refs, c.batch, 0, 1e-4, 1.0)?;
    device.synchronize()?;
    let start = Instant::now();
    let (mut tokens, mut loss) = (0, 0.0);
    for _ in 0..c.steps {
        let s = replicas.step(&refs, c.batch, 0, 1e-4, 1.0)?;
        tokens += s.input_tokens;
        loss = s.loss;
    }
    device.synchronize()?;
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let params = crate::spec::params::TrialParams::from_assignment(
        &[
            ("method".to_string(), serde_json::json!(c.method)),
            ("batch_size".to_string(), serde_json::json!(c.batch)),
            ("kernels".to_string(), serde_json::json!(c.kernels)),
        ]
        .into_iter()
        .collect(),
        0,
    )
    .map_err(|e| TrainError::Setting(e.to_string()))?;
    let estimate = crate::spec::memory::estimate(
        &crate::spec::memory::Workload {
            config: &config,
            params: &params,
            longest_sequence: c.seq,
            counted_per_sequence: c.seq - 1,
            counted_longest_first: None,
            bytes_per_value: 4,
            on_cuda: device.is_cuda(),
            shared_prefix: 0,
            // The benchmark times training steps only; nothing is scored.
            scored_answer_tokens: 0,
            // Random weights: no file is mapped.
            mapped_weights: false,
        },
        c.batch,
    );
    Ok(Measured {
        params: config.parameter_count(),
        trainable,
        seconds_per_step: secs / c.steps.max(1) as f64,
        tokens_per_sec: tokens as f64 / secs,
        loss,
        estimate_mb: estimate.total_mb(),
    })
}
