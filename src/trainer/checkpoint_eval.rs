//! A saved checkpoint put to use: `sweep eval CKPT DATA` (accuracy, macro-F1, per-class
//! precision, recall and F1, confusions) and `sweep predict CKPT [FILE]` (the predicted label and
//! the top candidates for every line). Loads the checkpoint (`Scorer::load`) and scores every
//! candidate label with the same `scoring::candidate_scores` that measured the trial's dev
//! accuracy, in the same batches, with the labels and sequence length saved in the checkpoint
//! (`labels.json`), so they reproduce the trial's dev predictions example by example.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::protocol::evaluation::{CheckpointLabels, EvalReport, LabelScore, Prediction};
use crate::spec::ModelSource;
use crate::stats::classify::{argmax, classify, level_accuracy, softmax, top_k};
use crate::text::data::{examples_from_bytes, Example};
use crate::text::encode::{answer_ids, prompt_ids, supervised};
use crate::text::tokenizer::{load_tokenizer, TextTokenizer};
use crate::trainer::checkpoint::AdapterConfig;
use crate::trainer::error::{bad_file, AtPath, Result};
use crate::trainer::head::label_log_probs;
use crate::trainer::model::{load_hf_folder, CausalLm, Trainable};
use crate::trainer::scoring::{candidate_scores, Candidates};

/// A checkpoint loaded for scoring: the model, its tokenizer and its candidate labels.
pub struct Scorer {
    pub model: CausalLm,
    pub tokenizer: TextTokenizer,
    pub labels: CheckpointLabels,
    candidates: Candidates,
}

/// A random-init preset base as a LoRA trial recorded it: `sweep-preset:NAME:seedN`.
fn preset_base(base: &str) -> Option<(&str, u64)> {
    let rest = base.strip_prefix("sweep-preset:")?;
    let (name, seed) = rest.rsplit_once(":seed")?;
    Some((name, seed.parse().ok()?))
}

/// A preset's shape with the vocabulary and special ids of `tokenizer` (as training built it).
fn preset_config(
    name: &str,
    tokenizer: &TextTokenizer,
    at: &Path,
) -> Result<crate::spec::shape::ModelConfig> {
    let mut config = crate::spec::shape::preset(name)
        .ok_or_else(|| bad_file(at, format!("unknown model preset `{name}`")))?;
    config.vocab_size = tokenizer.vocab_size();
    config.bos_token_id = tokenizer.bos;
    config.eos_token_id = Some(tokenizer.eos);
    config.pad_token_id = Some(tokenizer.pad);
    Ok(config)
}

impl Scorer {
    /// Loads a checkpoint: a full Hugging Face model folder (sft, post_pretrain, or a merged LoRA
    /// export) or a PEFT adapter folder, whose base is the model folder it names or the preset it
    /// was trained from.
    pub fn load(checkpoint: &Path) -> Result<Self> {
        let device = Device::Cpu;
        if !checkpoint.is_dir() {
            return Err(bad_file(
                checkpoint,
                "not a checkpoint folder (expected a folder with config.json or adapter_config.json)",
            ));
        }
        let adapter_path = checkpoint.join(AdapterConfig::FILE);
        if !adapter_path.exists() && !checkpoint.join("config.json").exists() {
            return Err(bad_file(
                checkpoint,
                "not a checkpoint: no config.json (a full model) nor adapter_config.json (LoRA adapters)",
            ));
        }
        let labels = CheckpointLabels::read(checkpoint)?;
        if labels.labels.is_empty() {
            return Err(bad_file(
                &checkpoint.join(CheckpointLabels::FILE),
                "no candidate labels: this checkpoint was trained without labels (post_pretrain), so it cannot classify",
            ));
        }
        let (model, tokenizer) = if let Some(adapter) = AdapterConfig::read(checkpoint)? {
            let lora = Trainable::Lora(adapter.lora());
            let source = checkpoint.display().to_string();
            let (model, tokenizer) = match preset_base(&adapter.base_model_name_or_path) {
                Some((name, seed)) => {
                    let tokenizer = TextTokenizer::from_file(
                        &checkpoint.join("tokenizer.json"),
                        None,
                        None,
                        None,
                    )?;
                    let config = preset_config(name, &tokenizer, &adapter_path)?;
                    let weights = CausalLm::random_weights(&config, seed, DType::F32, &device)?;
                    let model = CausalLm::new(config, &weights, lora, seed, &device, &source)?;
                    (model, tokenizer)
                }
                None => {
                    let base = PathBuf::from(&adapter.base_model_name_or_path);
                    if !base.join("config.json").exists() {
                        return Err(bad_file(
                            &adapter_path,
                            format!(
                                "base_model_name_or_path `{}` is not a model folder here",
                                adapter.base_model_name_or_path
                            ),
                        ));
                    }
                    let (config, weights) = load_hf_folder(&base, &device)?;
                    let model = CausalLm::new(config, &weights, lora, 0, &device, &source)?;
                    // The base's tokenizer (and chat template), as training used it.
                    let tokenizer = load_tokenizer(&ModelSource::Path(base), &[])?;
                    (model, tokenizer)
                }
            };
            let adapters_path = checkpoint.join("adapter_model.safetensors");
            let adapters: HashMap<String, candle_core::Tensor> =
                candle_core::safetensors::load(&adapters_path, &device)
                    .map_err(|e| bad_file(&adapters_path, e.to_string()))?;
            // A SEQ_CLS adapter folder's head (PEFT's name), loaded with the adapters.
            let model = match adapters.get("base_model.model.score.weight") {
                Some(score) => model.with_score_head(score)?,
                None => model,
            };
            model.load_adapters(&adapters, &adapters_path.display().to_string())?;
            (model, tokenizer)
        } else if checkpoint.join("config.json").exists() {
            let (config, mut weights) = load_hf_folder(checkpoint, &device)?;
            let score = weights.remove("score.weight");
            if score.is_some() && !config.tie_word_embeddings {
                // A `*ForSequenceClassification` folder has no language-model head, which
                // nothing here computes with: zeros stand in for it.
                let shape = (config.vocab_size, config.hidden_size);
                let dtype = weights
                    .get("model.embed_tokens.weight")
                    .map_or(DType::F32, |t| t.dtype());
                weights
                    .entry("lm_head.weight".to_string())
                    .or_insert(candle_core::Tensor::zeros(shape, dtype, &device)?);
            }
            let model = CausalLm::new(
                config,
                &weights,
                Trainable::All,
                0,
                &device,
                &checkpoint.display().to_string(),
            )?;
            let model = match score {
                Some(score) => model.with_score_head(&score)?,
                None => model,
            };
            let tokenizer = load_tokenizer(&ModelSource::Path(checkpoint.to_path_buf()), &[])?;
            (model, tokenizer)
        } else {
            return Err(bad_file(
                checkpoint,
                "not a checkpoint: no config.json (a full model) nor adapter_config.json (LoRA adapters)",
            ));
        };
        let answers = labels
            .labels
            .iter()
            .map(|l| answer_ids(&tokenizer, l))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let candidates = Candidates {
            answers,
            labels: labels.labels.clone(),
        };
        Ok(Scorer {
            model,
            tokenizer,
            labels,
            candidates,
        })
    }

    /// Every candidate's score for every example, in the trial's evaluation batches: the sum
    /// of its answer tokens' log-probabilities, or with a classification head the head's
    /// log-probability (one forward per example), each prompt read as the trial read it.
    pub fn scores(&self, examples: &[Example]) -> Result<Vec<Vec<f64>>> {
        let prompts = examples
            .iter()
            .map(|e| {
                if self.labels.drop_system_prompt {
                    let mut e = e.clone();
                    e.system = None;
                    prompt_ids(&self.tokenizer, &e)
                } else {
                    prompt_ids(&self.tokenizer, e)
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if self.model.score_head().is_some() {
            return self.head_scores(&prompts, examples);
        }
        Ok(candidate_scores(
            &self.model,
            &prompts,
            &self.candidates,
            self.tokenizer.bos.is_some(),
            self.labels.max_seq_len as usize,
            self.tokenizer.pad,
            self.labels.eval_batch,
        )?)
    }

    /// The head's log-probabilities of every label, each prompt cut to the trial's
    /// `max_seq_len` as training cut it (`text::encode::supervised` without an answer).
    fn head_scores(&self, prompts: &[Vec<u32>], examples: &[Example]) -> Result<Vec<Vec<f64>>> {
        let cut = prompts
            .iter()
            .zip(examples)
            .map(|(p, e)| {
                supervised(
                    p,
                    &[],
                    self.tokenizer.bos.is_some(),
                    self.labels.max_seq_len as usize,
                    e.line,
                )
                .map(|s| s.ids)
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| crate::trainer::error::TrainError::Setting(e.to_string()))?;
        Ok(label_log_probs(
            &self.model,
            &cut,
            self.tokenizer.pad,
            self.labels.eval_batch,
        )?)
    }

    /// Scores and predictions for `examples`.
    pub fn predict(&self, examples: &[Example], k: usize) -> Result<Vec<Prediction>> {
        let scores = self.scores(examples)?;
        Ok(predictions(examples, &scores, &self.labels.labels, k))
    }
}

/// Predictions from candidate scores: the argmax label (the first on ties, as accuracy counts)
/// and the `k` best with their log-probabilities and softmax shares.
pub fn predictions(
    examples: &[Example],
    scores: &[Vec<f64>],
    labels: &[String],
    k: usize,
) -> Vec<Prediction> {
    examples
        .iter()
        .zip(scores)
        .map(|(e, s)| {
            let p = softmax(s);
            Prediction {
                line: e.line,
                src: e.src.clone(),
                gold: e.tgt.clone(),
                predicted: argmax(s)
                    .and_then(|i| labels.get(i).cloned())
                    .unwrap_or_default(),
                top: top_k(s, k)
                    .into_iter()
                    .map(|(i, logprob)| LabelScore {
                        label: labels.get(i).cloned().unwrap_or_default(),
                        logprob,
                        p: Some(p[i]),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Predictions from the best labels of `scoring::candidate_top_k`, best first: the first is the
/// prediction; without every label's score there are no softmax shares.
pub fn predictions_from_top(
    examples: &[Example],
    tops: &[Vec<(usize, f64)>],
    labels: &[String],
) -> Vec<Prediction> {
    examples
        .iter()
        .zip(tops)
        .map(|(e, top)| Prediction {
            line: e.line,
            src: e.src.clone(),
            gold: e.tgt.clone(),
            predicted: top
                .first()
                .and_then(|(i, _)| labels.get(*i).cloned())
                .unwrap_or_default(),
            top: top
                .iter()
                .map(|(i, logprob)| LabelScore {
                    label: labels.get(*i).cloned().unwrap_or_default(),
                    logprob: *logprob,
                    p: None,
                })
                .collect(),
        })
        .collect()
}

/// Reads examples from a file, or from `bytes` read elsewhere (stdin), naming `path` in errors.
pub fn read_examples(bytes: Vec<u8>, path: &Path) -> Result<Vec<Example>> {
    Ok(examples_from_bytes(bytes, path)?)
}

/// `sweep eval`: the checkpoint on a labelled data file.
pub fn evaluate(checkpoint: &Path, data: &Path) -> Result<(EvalReport, Vec<Prediction>)> {
    let scorer = Scorer::load(checkpoint)?;
    let bytes = std::fs::read(data).at(data)?;
    let examples = read_examples(bytes, data)?;
    if let Some(e) = examples.iter().find(|e| e.tgt.is_none()) {
        return Err(bad_file(
            data,
            format!(
                "line {}: tgt: missing; evaluation needs a label on every line (use `sweep predict` for unlabelled queries)",
                e.line
            ),
        ));
    }
    let predictions = scorer.predict(&examples, 3)?;
    let gold: Vec<&str> = predictions
        .iter()
        .map(|p| p.gold.as_deref().unwrap_or(""))
        .collect();
    let predicted: Vec<&str> = predictions.iter().map(|p| p.predicted.as_str()).collect();
    let report = EvalReport {
        checkpoint: checkpoint.to_path_buf(),
        data: data.to_path_buf(),
        labels: scorer.labels.labels.len(),
        metrics: classify(&gold, &predicted),
        levels: scorer
            .labels
            .label_separator
            .as_deref()
            .map(|separator| level_accuracy(&gold, &predicted, separator))
            .unwrap_or_default(),
    };
    Ok((report, predictions))
}

/// `sweep eval`'s table for people.
pub fn render(report: &EvalReport, confusions: usize) -> String {
    let m = &report.metrics;
    let mut out = format!(
        "{} on {}: {} examples, {} labels\naccuracy {:.4} ({}/{}), macro-F1 {:.4}\n{}\n{:<32} {:>9} {:>9} {:>9} {:>8}\n",
        report.checkpoint.display(),
        report.data.display(),
        m.examples,
        report.labels,
        m.accuracy,
        m.correct,
        m.examples,
        m.macro_f1,
        levels_text(&report.levels),
        "label",
        "precision",
        "recall",
        "f1",
        "support"
    );
    for c in &m.per_class {
        out.push_str(&format!(
            "{:<32} {:>9.4} {:>9.4} {:>9.4} {:>8}\n",
            c.label, c.precision, c.recall, c.f1, c.support
        ));
    }
    if !m.confusions.is_empty() {
        out.push_str("\nmost frequent confusions (gold -> predicted):\n");
        for c in m.confusions.iter().take(confusions) {
            out.push_str(&format!(
                "  {:>4}  {} -> {}\n",
                c.count, c.gold, c.predicted
            ));
        }
    }
    out
}

/// One line per label level (`accuracy at level 1 0.9000 (27/30)`), or nothing for flat labels.
fn levels_text(levels: &[crate::stats::classify::LevelAccuracy]) -> String {
    levels
        .iter()
        .map(|l| {
            format!(
                "accuracy at level {} {:.4} ({}/{})\n",
                l.level, l.accuracy, l.correct, l.examples
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_bases_are_recognised() {
        assert_eq!(preset_base("sweep-preset:test:seed42"), Some(("test", 42)));
        assert_eq!(preset_base("models/tiny-base"), None);
        assert_eq!(preset_base("sweep-preset:tiny:seedx"), None);
    }

    #[test]
    fn predictions_take_the_first_best_and_list_the_top_k() {
        let examples = examples_from_bytes(
            b"{\"src\": \"a\", \"tgt\": \"y\"}\n\n{\"src\": \"b\"}\n".to_vec(),
            Path::new("x.json"),
        )
        .unwrap();
        let labels = vec!["x".to_string(), "y".to_string(), "z".to_string()];
        let scores = vec![vec![-2.0, -1.0, -3.0], vec![-1.0, -1.0, -5.0]];
        let p = predictions(&examples, &scores, &labels, 2);
        assert_eq!(p[0].predicted, "y");
        assert_eq!(p[0].gold.as_deref(), Some("y"));
        assert_eq!(p[1].line, 3);
        assert_eq!(p[1].predicted, "x");
        assert_eq!(p[1].top.len(), 2);
        assert!((p[1].top[0].p.unwrap() - p[1].top[1].p.unwrap()).abs() < 1e-12);
        // From the search's best labels: the same prediction and log-probabilities, no shares.
        let tops = vec![vec![(1, -1.0), (0, -2.0)], vec![(0, -1.0), (1, -1.0)]];
        let q = predictions_from_top(&examples, &tops, &labels);
        assert_eq!(q[0].predicted, "y");
        assert_eq!(q[1].predicted, "x");
        assert_eq!(q[1].top[1].label, "y");
        assert!(q.iter().flat_map(|x| &x.top).all(|t| t.p.is_none()));
    }
}
