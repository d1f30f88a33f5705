//! A trial's loading: its devices, data, tokenizer and model, the labels it scores, its schedule,
//! its replicas, and the resume point it continues from, if any.

use std::path::Path;

use candle_core::{DType, Device};

use crate::protocol::trial::TrialConfig;
use crate::spec::params::{Method, TrialParams};
use crate::spec::ModelSource;
use crate::text::data::{label_set, load_examples, Example};
use crate::text::encode::{answer_ids, encode_all, prompt_ids, Seq};
use crate::text::tokenizer::{load_tokenizer, TextTokenizer};
use crate::trainer::error::{Result, TrainError};
use crate::trainer::gpu::{open_cuda, set_tf32};
use crate::trainer::head::initial_head;
use crate::trainer::model::{load_hf_folder, CausalLm, LoraSettings, Trainable};
use crate::trainer::parallel::Replicas;
use crate::trainer::resume::ResumeState;
use crate::trainer::scoring::Candidates;
use crate::trainer::train::schedule::Schedule;
use crate::trainer::train::sink::TrialSink;

/// The candle device for a slot name of `TrialConfig::devices` (`cpu` or `cuda:N`).
pub fn device_for(name: &str) -> Result<Device> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(id) = name.strip_prefix("cuda:") {
        let id: usize = id
            .parse()
            .map_err(|_| TrainError::Device(format!("bad device `{name}`")))?;
        return open_cuda(name, id);
    }
    Err(TrainError::Device(format!(
        "unknown device `{name}` (expected cpu or cuda:N)"
    )))
}

/// The devices of a trial: one replica per slot it holds (`gpus: k`); on a CPU-only pool every
/// slot is `cpu`, and a config without devices trains on the CPU.
pub fn devices_of(cfg: &TrialConfig) -> Result<Vec<Device>> {
    if cfg.devices.is_empty() {
        return Ok(vec![Device::Cpu]);
    }
    cfg.devices.iter().map(|name| device_for(name)).collect()
}

/// A model ready to train, with its tokenizer and a description of its base for checkpoints.
pub struct LoadedModel {
    pub model: CausalLm,
    pub tokenizer: TextTokenizer,
    pub base: String,
}

/// Builds the trial's model: a preset (random init, tokenizer from the training text) or a
/// Hugging Face folder.
pub fn load_model(
    source: &ModelSource,
    params: &TrialParams,
    train: &[Example],
    device: &Device,
) -> Result<LoadedModel> {
    let trainable = match params.method {
        Method::Lora | Method::ClassifierLora => Trainable::Lora(LoraSettings {
            rank: params.lora_rank as usize,
            alpha: params.lora_alpha,
            targets: params.lora_targets.clone(),
        }),
        Method::Sft | Method::PostPretrain | Method::Classifier => Trainable::All,
    };
    let seed = params.seed();
    let tokenizer = load_tokenizer(source, train)?;
    match source {
        ModelSource::Preset(name) => {
            let mut config = crate::spec::shape::preset(name)
                .ok_or_else(|| TrainError::UnknownPreset(name.clone()))?;
            config.vocab_size = tokenizer.vocab_size();
            config.bos_token_id = tokenizer.bos;
            config.eos_token_id = Some(tokenizer.eos);
            config.pad_token_id = Some(tokenizer.pad);
            let weights = CausalLm::random_weights(&config, seed, DType::F32, device)?;
            let model = CausalLm::new(config, &weights, trainable, seed, device, name)?
                .with_kernels(params.kernels);
            Ok(LoadedModel {
                model,
                tokenizer,
                base: format!("sweep-preset:{name}:seed{seed}"),
            })
        }
        ModelSource::Path(dir) => {
            let (config, weights) = load_hf_folder(dir, device)?;
            let model = CausalLm::new(
                config,
                &weights,
                trainable,
                seed,
                device,
                &dir.display().to_string(),
            )?
            .with_kernels(params.kernels);
            Ok(LoadedModel {
                model,
                tokenizer,
                base: dir.display().to_string(),
            })
        }
    }
}

/// What an evaluation needs to score the dev set's labels: the candidates (train's labels), each
/// dev prompt, and each dev example's gold label among the candidates.
pub struct LabelScoring {
    pub candidates: Candidates,
    pub prompts: Vec<Vec<u32>>,
    pub gold: Vec<Option<usize>>,
}

/// Classification accuracy needs labels on both sides: `None` when train has no labels or a dev
/// example has none.
fn label_scoring(
    tokenizer: &TextTokenizer,
    labels: &[String],
    dev: &[Example],
) -> Result<Option<LabelScoring>> {
    if labels.is_empty() || !dev.iter().all(|e| e.tgt.is_some()) {
        return Ok(None);
    }
    let answers = labels
        .iter()
        .map(|l| answer_ids(tokenizer, l))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let prompts = dev
        .iter()
        .map(|e| prompt_ids(tokenizer, e))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let gold = dev
        .iter()
        .map(|e| e.tgt.as_ref().and_then(|t| labels.binary_search(t).ok()))
        .collect();
    Ok(Some(LabelScoring {
        candidates: Candidates {
            answers,
            labels: labels.to_vec(),
        },
        prompts,
        gold,
    }))
}

/// What the head methods train and evaluate against: each training example's label and each dev
/// example's gold label, as indices into train's labels (`None`: a label train lacks).
pub struct HeadClasses {
    pub train: Vec<u32>,
    pub dev_gold: Vec<Option<usize>>,
}

impl HeadClasses {
    /// The label indices of `train` and `dev` among `labels` (sorted); every training example
    /// has one, as `encode_all` refused those without.
    fn of(labels: &[String], train: &[Example], dev: &[Example]) -> Self {
        let index = |e: &Example| e.tgt.as_ref().and_then(|t| labels.binary_search(t).ok());
        Self {
            train: train.iter().map(|e| index(e).unwrap_or(0) as u32).collect(),
            dev_gold: dev.iter().map(index).collect(),
        }
    }
}

/// Everything a trial loaded before its first step.
pub struct Loaded {
    pub cfg: TrialConfig,
    pub tokenizer: TextTokenizer,
    /// The checkpoints' base (`LoadedModel::base`).
    pub base: String,
    pub dev: Vec<Example>,
    pub train_seqs: Vec<Seq>,
    pub dev_seqs: Vec<Seq>,
    /// Train's labels, sorted: the candidates every evaluation scores.
    pub labels: Vec<String>,
    pub scoring: Option<LabelScoring>,
    /// The head methods' labels (their `scoring` is `None`: no label search).
    pub classes: Option<HeadClasses>,
    /// The examples were read without their system prompt (`SystemPrompt::drops_for`).
    pub drop_system_prompt: bool,
    pub schedule: Schedule,
    pub replicas: Replicas,
    /// The resume point the trial continues from.
    pub resumed: Option<ResumeState>,
}

/// Loads the trial in `dir` whose config is `cfg`: devices, data, model, replicas, and its resume
/// point (an interrupted trial continues from its last one).
pub fn load(dir: &Path, cfg: TrialConfig, sink: &mut dyn TrialSink) -> Result<Loaded> {
    let p = &cfg.params;
    let devices = devices_of(&cfg)?;
    if p.tf32 && set_tf32(true) {
        sink.say(&format!(
            "trial {}: f32 matrix products may use TF32 (tf32: true)",
            cfg.trial
        ));
    }
    let drop_system_prompt = cfg.system_prompt.drops_for(p.method);
    let without_system = |mut examples: Vec<Example>| {
        if drop_system_prompt {
            examples.iter_mut().for_each(|e| e.system = None);
        }
        examples
    };
    let train = without_system(load_examples(&cfg.train)?);
    let dev = without_system(load_examples(&cfg.dev)?);
    let LoadedModel {
        mut model,
        tokenizer,
        base,
    } = load_model(&cfg.model, p, &train, &devices[0])?;
    let max_len = p.max_seq_len as usize;
    let train_seqs = encode_all(&train, &tokenizer, p.method, max_len, &cfg.train)?;
    let dev_seqs = encode_all(&dev, &tokenizer, p.method, max_len, &cfg.dev)?;
    let labels = label_set(&train);
    let (scoring, classes) = if p.method.is_head() {
        let head = initial_head(
            labels.len(),
            model.config.hidden_size,
            p.seed(),
            &devices[0],
        )?;
        model = model.with_score_head(&head)?;
        (None, Some(HeadClasses::of(&labels, &train, &dev)))
    } else {
        (label_scoring(&tokenizer, &labels, &dev)?, None)
    };
    let schedule = Schedule::of(p, train_seqs.len(), devices.len());
    let mut replicas = Replicas::new(model, &devices[1..], p.weight_decay, p.seed())?;
    let resumed =
        replicas.restore(|model, opt| crate::trainer::resume::load(dir, p, model, opt))?;
    Ok(Loaded {
        cfg,
        tokenizer,
        base,
        dev,
        train_seqs,
        dev_seqs,
        labels,
        scoring,
        classes,
        drop_system_prompt,
        schedule,
        replicas,
        resumed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(tgt: &str, line: usize) -> Example {
        Example {
            system: None,
            history: Vec::new(),
            src: format!("query {line}"),
            tgt: Some(tgt.into()),
            line,
        }
    }

    /// Training and evaluation must agree on which head row is which label: both index train's
    /// sorted labels (`label_set`), whatever order the lines come in; a dev label that train
    /// lacks has no row.
    #[test]
    fn head_classes_index_train_s_sorted_labels_in_training_and_evaluation() {
        let train = [
            example("play_music", 1),
            example("alarm", 2),
            example("balance", 3),
        ];
        let dev = [
            example("balance", 1),
            example("weather", 2),
            example("play_music", 3),
        ];
        let labels = label_set(&train);
        assert_eq!(labels, ["alarm", "balance", "play_music"]);
        let classes = HeadClasses::of(&labels, &train, &dev);
        assert_eq!(classes.train, [2, 0, 1]);
        assert_eq!(classes.dev_gold, [Some(1), None, Some(2)]);
    }
}
