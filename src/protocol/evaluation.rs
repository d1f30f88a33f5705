//! What evaluation leaves in files, shared by the trainer (which writes it), the orchestrator
//! (which runs `sweep eval --json` on the test set) and results (which reports it): the label set
//! saved with every checkpoint, a trial's dev predictions at its best epoch, and `sweep eval`'s
//! JSON report.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::trial::ReadError;
use crate::stats::classify::{Classification, LevelAccuracy};

/// In every checkpoint folder: the candidate labels and the sequence length the model was
/// trained and scored with, so `sweep predict` and `sweep eval` need nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointLabels {
    /// The distinct `tgt` values of train, sorted: the candidates every prompt is scored against.
    pub labels: Vec<String>,
    pub max_seq_len: u32,
    /// Sequences scored per forward pass when the trial evaluated (its micro-batch): scoring in
    /// the same batches gives the same numbers.
    pub eval_batch: usize,
    /// `data.label_separator` of the sweep that trained it: `sweep eval` reports accuracy per
    /// label level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_separator: Option<String>,
    /// The trial read its examples without their system prompt (a head method under
    /// `data: {system_prompt: drop}`): so do `sweep eval` and `sweep predict`. Left out when
    /// false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop_system_prompt: bool,
}

impl CheckpointLabels {
    pub const FILE: &'static str = "labels.json";

    pub fn read(checkpoint: &Path) -> Result<Self, ReadError> {
        let path = checkpoint.join(Self::FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| ReadError {
            path: path.clone(),
            message: format!("{e} (every checkpoint sweep writes has its candidate labels here)"),
        })?;
        serde_json::from_str(&text).map_err(|e| ReadError {
            path,
            message: e.to_string(),
        })
    }
}

/// One candidate label and its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelScore {
    pub label: String,
    /// Sum of the answer tokens' log-probabilities.
    pub logprob: f64,
    /// Softmax of `logprob` over the candidates: in `sweep predict` and `sweep eval`, which
    /// score every candidate. A trial's `dev_predictions.jsonl` leaves it out (and lists the
    /// best label only): its evaluation finds that label without scoring the others
    /// (`trainer::scoring::candidate_top_k`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<f64>,
}

/// The prediction for one example: a line of `sweep predict`'s output, and of a trial's
/// `dev_predictions.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Line of the input file (1-based).
    pub line: usize,
    pub src: String,
    /// The example's `tgt`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gold: Option<String>,
    pub predicted: String,
    /// The best candidates, best first.
    pub top: Vec<LabelScore>,
}

/// The dev set's predictions at a trial's best epoch (the weights in its checkpoint).
pub fn dev_predictions(trial_dir: &Path) -> PathBuf {
    trial_dir.join("dev_predictions.jsonl")
}

/// Reads a predictions file (one `Prediction` a line).
pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>, ReadError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReadError {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| ReadError {
                path: path.to_path_buf(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// `sweep eval CKPT DATA --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub checkpoint: PathBuf,
    pub data: PathBuf,
    pub labels: usize,
    #[serde(flatten)]
    pub metrics: Classification,
    /// Accuracy per label level, level 1 first, when the labels have levels (the checkpoint's
    /// `label_separator`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub levels: Vec<LevelAccuracy>,
}

/// The best trial's score on `data.test`, evaluated once when the sweep ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestScore {
    pub data: PathBuf,
    pub examples: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// Accuracy per label level, when the labels have levels (`data.label_separator`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub levels: Vec<LevelAccuracy>,
}
