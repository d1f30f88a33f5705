//! Checkpoints in Hugging Face layouts: a full model folder (config.json, model.safetensors,
//! tokenizer.json) for sft and post_pretrain, PEFT's adapter folder for LoRA.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Tensor;

use crate::model::CausalLm;
use crate::tokenizer::TextTokenizer;

/// Writes the model's checkpoint into `dir`, replacing what was there only once the new one is
/// complete (written beside it, then renamed).
pub fn save(model: &CausalLm, tokenizer: &TextTokenizer, base: &str, dir: &Path) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    match model.lora_settings() {
        None => {
            let tensors: HashMap<String, Tensor> = model.base_tensors().into_iter().collect();
            candle_core::safetensors::save(&tensors, tmp.join("model.safetensors"))?;
            let config = serde_json::to_vec_pretty(&model.config.to_hf_json())?;
            std::fs::write(tmp.join("config.json"), config)?;
        }
        Some(lora) => {
            let tensors: HashMap<String, Tensor> = model.trainable_tensors().into_iter().collect();
            candle_core::safetensors::save(&tensors, tmp.join("adapter_model.safetensors"))?;
            let config = serde_json::json!({
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": base,
                "r": lora.rank,
                "lora_alpha": lora.alpha,
                "lora_dropout": 0.0,
                "target_modules": lora.targets,
                "bias": "none",
                "fan_in_fan_out": false,
                "inference_mode": true,
            });
            std::fs::write(
                tmp.join("adapter_config.json"),
                serde_json::to_vec_pretty(&config)?,
            )?;
        }
    }
    tokenizer
        .save(&tmp.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!(e))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(())
}
