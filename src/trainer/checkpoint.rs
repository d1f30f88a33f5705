//! Checkpoints in Hugging Face layouts: a full model folder (config.json, model.safetensors,
//! tokenizer.json) for sft and post_pretrain, PEFT's adapter folder for LoRA; with a
//! classification head (`classifier`, `classifier_lora`) transformers' `*ForSequenceClassification`
//! folder (`score.weight`, `id2label`) and PEFT's SEQ_CLS adapter folder (the head under
//! `modules_to_save`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::text::tokenizer::TextTokenizer;
use crate::trainer::error::{bad_file, AtPath, Result};
use crate::trainer::model::CausalLm;
use crate::util::fs::{replace_dir, staging_dir};

/// The files of a model folder that say how text becomes tokens and conversations become
/// prompts: every checkpoint and export carries the base's, byte for byte, in the form the base
/// had them (a `chat_template.jinja`, or the `chat_template` inside tokenizer_config.json), so
/// transformers' `apply_chat_template` and anything serving the model prompt as training did.
pub const TOKENIZER_FILES: [&str; 10] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
];

/// The `TOKENIZER_FILES` a model folder has, with their bytes: what a checkpoint of a model
/// trained from `dir` carries (`save_with`'s `extra`).
pub fn tokenizer_files(dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    TOKENIZER_FILES
        .iter()
        .filter_map(|name| std::fs::read(dir.join(name)).ok().map(|b| (*name, b)))
        .collect()
}

/// Writes the model's checkpoint into `dir`, replacing what was there only once the new one is
/// complete (written beside it, then renamed).
pub fn save(model: &CausalLm, tokenizer: &TextTokenizer, base: &str, dir: &Path) -> Result<()> {
    save_with(model, tokenizer, base, dir, &[], &[])
}

/// A full checkpoint's `config.json` for a model with a classification head of `labels` (an
/// index's name `LABEL_i` where `labels` has none): transformers' `*ForSequenceClassification`
/// of the causal LM's architecture, with `id2label`, `label2id` and `num_labels`.
pub fn head_config_json(
    mut config: serde_json::Value,
    labels: &[String],
    num_labels: usize,
) -> serde_json::Value {
    let name = |i: usize| {
        labels
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("LABEL_{i}"))
    };
    let causal = config["architectures"][0]
        .as_str()
        .unwrap_or("LlamaForCausalLM")
        .to_string();
    let class = causal.replace("ForCausalLM", "ForSequenceClassification");
    config["architectures"] = serde_json::json!([class]);
    config["id2label"] = (0..num_labels)
        .map(|i| (i.to_string(), serde_json::json!(name(i))))
        .collect::<serde_json::Map<_, _>>()
        .into();
    config["label2id"] = (0..num_labels)
        .map(|i| (name(i), serde_json::json!(i)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    config["num_labels"] = serde_json::json!(num_labels);
    config["problem_type"] = serde_json::json!("single_label_classification");
    config
}

/// The tensors of a full checkpoint: the base's, and with a classification head `score.weight`
/// in place of the language-model head (a `*ForSequenceClassification` has none).
fn full_tensors(model: &CausalLm) -> HashMap<String, Tensor> {
    let mut tensors: HashMap<String, Tensor> = model.base_tensors().into_iter().collect();
    if let Some(score) = model.score_head() {
        tensors.remove("lm_head.weight");
        tensors.insert("score.weight".to_string(), score.clone());
    }
    tensors
}

/// As `save`, with `extra` files (name, contents) in the same folder swap, so a checkpoint is
/// never seen without them (labels.json, the base's `tokenizer_files`), and `labels` naming a
/// classification head's outputs in config.json. The tokenizer the trial used is written as
/// tokenizer.json unless `extra` holds the base's own.
pub fn save_with(
    model: &CausalLm,
    tokenizer: &TextTokenizer,
    base: &str,
    dir: &Path,
    extra: &[(&str, Vec<u8>)],
    labels: &[String],
) -> Result<()> {
    let tmp = staging_dir(dir).at(dir)?;
    for (name, bytes) in extra {
        let path = tmp.join(name);
        std::fs::write(&path, bytes).at(&path)?;
    }
    match model.lora_settings() {
        None => {
            candle_core::safetensors::save(&full_tensors(model), tmp.join("model.safetensors"))?;
            let path = tmp.join("config.json");
            let mut config = model.config.to_hf_json();
            if let Some(score) = model.score_head() {
                config = head_config_json(config, labels, score.dim(0)?);
            }
            let config = serde_json::to_vec_pretty(&config).at(&path)?;
            std::fs::write(&path, config).at(&path)?;
        }
        Some(lora) => {
            let tensors: HashMap<String, Tensor> = model.trainable_tensors().into_iter().collect();
            candle_core::safetensors::save(&tensors, tmp.join("adapter_model.safetensors"))?;
            let mut config = serde_json::json!({
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
            if model.score_head().is_some() {
                // PEFT's layout of a head trained beside the adapters: saved in full, as
                // `base_model.model.score.weight`.
                config["task_type"] = serde_json::json!("SEQ_CLS");
                config["modules_to_save"] = serde_json::json!(["score"]);
            }
            let path = tmp.join("adapter_config.json");
            std::fs::write(&path, serde_json::to_vec_pretty(&config).at(&path)?).at(&path)?;
        }
    }
    if !extra.iter().any(|(name, _)| *name == "tokenizer.json") {
        tokenizer.save(&tmp.join("tokenizer.json"))?;
    }
    replace_dir(&tmp, dir).at(dir)?;
    Ok(())
}

/// What a PEFT `adapter_config.json` says that merging and loading need.
#[derive(Debug, serde::Deserialize)]
pub struct AdapterConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: Vec<String>,
    pub base_model_name_or_path: String,
}

impl AdapterConfig {
    pub const FILE: &'static str = "adapter_config.json";

    /// The adapter folder's config; `None` when the folder holds no adapter_config.json.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(Self::FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).at(&path)?;
        Ok(Some(serde_json::from_str(&text).at(&path)?))
    }

    /// The LoRA settings the adapters were trained with.
    pub fn lora(&self) -> crate::trainer::model::LoraSettings {
        crate::trainer::model::LoraSettings {
            rank: self.r,
            alpha: self.lora_alpha,
            targets: self.target_modules.clone(),
        }
    }
}

/// Merges a LoRA checkpoint (PEFT layout) into its base: `W + (alpha / r) B A` for every adapted
/// projection, written to `out` as an ordinary Hugging Face model folder.
pub fn export_merged(adapter_dir: &Path, out: &Path) -> Result<()> {
    let config_path = adapter_dir.join(AdapterConfig::FILE);
    let adapter = AdapterConfig::read(adapter_dir)?.ok_or_else(|| {
        bad_file(
            adapter_dir,
            "not a LoRA checkpoint (no adapter_config.json)",
        )
    })?;
    let base = Path::new(&adapter.base_model_name_or_path);
    if !base.join("config.json").exists() {
        return Err(bad_file(
            &config_path,
            format!(
                "base_model_name_or_path `{}` is not a model folder here (a preset base cannot be merged; post-pretrain a base first)",
                adapter.base_model_name_or_path
            ),
        ));
    }
    let device = candle_core::Device::Cpu;
    let (config, mut weights) = crate::trainer::model::load_hf_folder(base, &device)?;
    let adapters_path = adapter_dir.join("adapter_model.safetensors");
    let adapters = candle_core::safetensors::load(&adapters_path, &device)
        .map_err(|e| bad_file(&adapters_path, e.to_string()))?;
    let scale = adapter.lora_alpha / adapter.r as f64;
    let mut merged = 0;
    for (name, weight) in weights.iter_mut() {
        let Some(prefix) = name.strip_suffix(".weight") else {
            continue;
        };
        if !adapter
            .target_modules
            .iter()
            .any(|m| prefix.ends_with(&format!(".{m}")))
        {
            continue;
        }
        let a = adapters.get(&format!("base_model.model.{prefix}.lora_A.weight"));
        let b = adapters.get(&format!("base_model.model.{prefix}.lora_B.weight"));
        let (Some(a), Some(b)) = (a, b) else {
            return Err(bad_file(&adapters_path, format!("no adapter for `{name}`")));
        };
        let dtype = weight.dtype();
        let delta = (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * scale)?;
        *weight = (weight.to_dtype(DType::F32)? + delta)?.to_dtype(dtype)?;
        merged += 1;
    }
    if merged == 0 {
        return Err(bad_file(
            &adapters_path,
            "no projection matched the adapter's target_modules",
        ));
    }
    let mut config = config.to_hf_json();
    // A SEQ_CLS adapter's head: the merged folder is a `*ForSequenceClassification`.
    if let Some(score) = adapters.get("base_model.model.score.weight") {
        let labels = crate::protocol::evaluation::CheckpointLabels::read(adapter_dir)
            .map(|l| l.labels)
            .unwrap_or_default();
        weights.remove("lm_head.weight");
        weights.insert("score.weight".to_string(), score.clone());
        config = head_config_json(config, &labels, score.dim(0)?);
    }
    let tmp = staging_dir(out).at(out)?;
    candle_core::safetensors::save(&weights, tmp.join("model.safetensors"))?;
    let config_out = tmp.join("config.json");
    std::fs::write(
        &config_out,
        serde_json::to_vec_pretty(&config).at(&config_out)?,
    )
    .at(&config_out)?;
    // The tokenizer and chat template as the checkpoint (else the base) has them; labels.json
    // too, so `sweep eval` and `sweep predict` take the merged folder as they take the adapters.
    for file in TOKENIZER_FILES.iter().chain(&["labels.json"]) {
        let from = [adapter_dir.join(file), base.join(file)]
            .into_iter()
            .find(|p| p.exists());
        if let Some(from) = from {
            std::fs::copy(&from, tmp.join(file)).at(&from)?;
        }
    }
    replace_dir(&tmp, out).at(out)?;
    Ok(())
}
