//! The trainer's side of `sweep gpu-check` (`src/diagnostics/`): the candle work the check needs,
//! asked for by device name, answered in plain numbers. The check judges; this module only
//! computes, so that no code outside the trainer names candle.
//!
//! - `open`: opens a device as a trial would (the message a sweep would be told);
//! - `parity`: the tiny fixture's logits and gradients on the CPU and on a device, in f32 (full
//!   fine-tuning and LoRA) and with bf16 weights and f32 adapters;
//! - `bench`: `bench::measure` on a named device;
//! - `hold_memory`: device memory taken and kept, to force a trial into a real out-of-memory.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::spec::shape::LORA_TARGETS;
use crate::text::encode::Seq;
use crate::trainer::batch::{make_batch, token_nll};
use crate::trainer::bench::{BenchConfig, Measured};
use crate::trainer::error::{Result, TrainError};
use crate::trainer::model::{load_hf_folder, CausalLm, LoraSettings, Trainable};
use crate::trainer::train::device_for;

/// Opens `device` (`cpu` or `cuda:N`) as a trial would, and closes it again.
pub fn open(device: &str) -> Result<()> {
    device_for(device).map(drop)
}

/// A model's logits and the gradients of its trainable tensors (all flattened into one list).
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub logits: Vec<f32>,
    pub gradients: Vec<f32>,
}

/// What `parity` computed: the same fixture on the CPU and on the device.
#[derive(Debug, Clone, Default)]
pub struct Parity {
    /// Full fine-tuning in f32.
    pub cpu: Outputs,
    pub device: Outputs,
    /// LoRA (rank 4, alpha 8, every projection) in f32.
    pub cpu_lora: Outputs,
    pub device_lora: Outputs,
    /// LoRA on the device with bf16 weights.
    pub device_bf16_lora: Outputs,
    /// Whether the bf16 model computes in bf16 and keeps its adapters in f32.
    pub bf16_computes_in_bf16: bool,
    pub bf16_adapters_are_f32: bool,
}

/// The Hugging Face folder `fixture` on the CPU and on `device`, on the token ids `ids`.
pub fn parity(fixture: &Path, ids: &[Vec<u32>], device: &str) -> Result<Parity> {
    let device = device_for(device)?;
    let lora = || {
        Trainable::Lora(LoraSettings {
            rank: 4,
            alpha: 8.0,
            targets: LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
        })
    };
    let build = |dev: &Device, trainable: Trainable, dtype: DType| -> Result<CausalLm> {
        let (config, weights) = load_hf_folder(fixture, dev)?;
        Ok(CausalLm::with_compute_dtype(
            config,
            &weights,
            trainable,
            3,
            dev,
            "tiny-llama",
            dtype,
        )?)
    };
    let cpu = Device::Cpu;
    let half = build(&device, lora(), DType::BF16)?;
    Ok(Parity {
        cpu: outputs(&build(&cpu, Trainable::All, DType::F32)?, ids)?,
        device: outputs(&build(&device, Trainable::All, DType::F32)?, ids)?,
        cpu_lora: outputs(&build(&cpu, lora(), DType::F32)?, ids)?,
        device_lora: outputs(&build(&device, lora(), DType::F32)?, ids)?,
        bf16_computes_in_bf16: half.dtype() == DType::BF16,
        bf16_adapters_are_f32: half
            .trainable()
            .iter()
            .all(|(_, v)| v.dtype() == DType::F32),
        device_bf16_lora: outputs(&half, ids)?,
    })
}

fn flat(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
}

/// Logits and gradients of `model` on `ids`, with the LoRA B matrices set to a fixed pattern so
/// every adapter has a gradient.
fn outputs(model: &CausalLm, ids: &[Vec<u32>]) -> Result<Outputs> {
    let device = model.device();
    for (name, var) in model.trainable() {
        if name.contains("lora_B") {
            let n = var.as_tensor().elem_count();
            let pattern: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
            let t = Tensor::from_vec(pattern, var.shape(), &Device::Cpu)?
                .to_dtype(var.dtype())?
                .to_device(device)?;
            var.set(&t)?;
        }
    }
    let input = Tensor::new(ids.to_vec(), device)?;
    let logits = flat(&model.forward(&input)?)?;
    let seqs: Vec<Seq> = ids
        .iter()
        .map(|s| Seq {
            ids: s.clone(),
            loss_from: 1,
        })
        .collect();
    let refs: Vec<&Seq> = seqs.iter().collect();
    let batch = make_batch(&refs, 0, device)?;
    let loss = token_nll(model, &batch)?.sum_all()?.to_dtype(DType::F32)?;
    let grads = model.gradients(&loss.backward()?)?;
    let mut gradients = Vec::new();
    for ((name, _), g) in model.trainable().iter().zip(&grads) {
        let g = g
            .as_ref()
            .ok_or_else(|| TrainError::Setting(format!("no gradient for {name}")))?;
        gradients.extend(flat(g)?);
    }
    Ok(Outputs { logits, gradients })
}

/// `bench::measure` on the device named `device`.
pub fn bench(config: &BenchConfig, device: &str) -> Result<Measured> {
    crate::trainer::bench::measure(config, &device_for(device)?)
}

/// Device memory taken by this process and kept until dropped.
pub struct HeldMemory {
    _values: Tensor,
}

/// Takes `mb` MiB of `device`'s memory (f32 zeros) and waits until it is really taken.
pub fn hold_memory(device: &str, mb: f64) -> Result<HeldMemory> {
    let device = device_for(device)?;
    let values = (mb * 1024.0 * 1024.0 / 4.0) as usize;
    let held = Tensor::zeros(values, DType::F32, &device)?;
    device.synchronize()?;
    Ok(HeldMemory { _values: held })
}
