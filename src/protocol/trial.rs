//! What passes between the orchestrator and a trial process: the trial's `config.json`, the
//! progress events it prints on stdout (one JSON object a line), and its `result.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::params::TrialParams;
use crate::spec::{MetricSpec, ModelSource};

/// A trial's folder in a results folder: `trials/NNNN`.
pub fn trial_dir(results: &Path, id: usize) -> PathBuf {
    results.join("trials").join(format!("{id:04}"))
}

/// A protocol file that cannot be read or is not what it should be.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    pub message: String,
}

/// Everything a trial process needs, written to `trials/NNNN/config.json` before launch.
/// Paths are absolute, so `sweep train DIR` works from any directory (a Slurm job, say).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrialConfig {
    pub trial: usize,
    pub sweep: String,
    pub params: TrialParams,
    pub train: PathBuf,
    pub dev: PathBuf,
    pub model: ModelSource,
    pub metric: MetricSpec,
    /// `cpu` or `cuda:N`, one per device the trial holds.
    pub devices: Vec<String>,
    /// CPU threads the trial may use.
    pub threads: usize,
    /// `data.label_separator`: accuracy is also measured per label level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_separator: Option<String>,
    /// `data.system_prompt` of the sweep: a head method's trial drops its examples' system
    /// prompt when it says `drop`. Left out when `keep`, so older trial folders read unchanged.
    #[serde(default, skip_serializing_if = "crate::spec::SystemPrompt::is_keep")]
    pub system_prompt: crate::spec::SystemPrompt,
    /// A user's own program to run instead of the built-in trainer (`sweep train` then
    /// supervises it); absent for built-in trials, so their config.json is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<ProgramRun>,
}

/// What `sweep train` needs to run one trial of a user's program.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProgramRun {
    /// The argument vector (never a shell string); the first element is the executable.
    pub argv: Vec<String>,
    /// Where it runs.
    pub cwd: PathBuf,
    /// Its parameters, as `params.json` holds them.
    pub params: std::collections::BTreeMap<String, serde_json::Value>,
    /// The physical GPU ids for CUDA_VISIBLE_DEVICES (`None`: leave what the job has, Slurm's).
    #[serde(default)]
    pub cuda_visible_devices: Option<String>,
    /// With `oom_batch`: the per-device batch this run has (what an out-of-memory end names).
    #[serde(default)]
    pub batch: Option<u32>,
}

impl TrialConfig {
    pub const FILE: &'static str = "config.json";

    pub fn read(dir: &Path) -> Result<Self, ReadError> {
        let path = dir.join(Self::FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| ReadError {
            path: path.clone(),
            message: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| ReadError {
            path,
            message: e.to_string(),
        })
    }
}

/// The optimizer steps (1-based, over the whole trial) after which a trial evaluates: every
/// `eval_every` steps and after the last one, or after every epoch when `eval_every` is not
/// set. The trainer evaluates at these steps and the orchestrator counts early termination's
/// iterations by them, so the two cannot disagree.
pub fn evaluation_steps(
    steps_per_epoch: usize,
    epochs: u32,
    eval_every: Option<u32>,
) -> Vec<usize> {
    let total = steps_per_epoch * epochs as usize;
    let every = match eval_every {
        Some(n) => (n as usize).max(1),
        None => steps_per_epoch.max(1),
    };
    let mut steps: Vec<usize> = (1..=total / every).map(|k| k * every).collect();
    if total > 0 && steps.last() != Some(&total) {
        steps.push(total);
    }
    steps
}

/// A trial's evaluations so far, from its `metrics.jsonl`, in step order; an evaluation repeated
/// by a resumed run counts once (its last line). A missing file or a torn line gives what can be
/// read: the file is being written while it is read.
pub fn read_evaluations(dir: &Path) -> Vec<EpochMetrics> {
    let Ok(text) = std::fs::read_to_string(dir.join(METRICS_FILE)) else {
        return Vec::new();
    };
    let mut by_step = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Ok(ProgressEvent::Epoch(m)) = serde_json::from_str::<ProgressEvent>(line) {
            by_step.insert(m.step, m);
        }
    }
    by_step.into_values().collect()
}

/// A trial's progress events, one JSON object a line.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// The file the orchestrator writes into a trial's folder to stop it early (`early_terminate`):
/// the trial sees it at its next step, keeps its best evaluation so far as its result and exits
/// successfully. A file, not a signal, so it reaches a Slurm job on another node the same way.
pub const PRUNE_FILE: &str = "prune.json";

/// One line of `metrics.jsonl`, and one progress event on the trial's stdout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProgressEvent {
    Start {
        epochs: u32,
        steps_per_epoch: usize,
        train_examples: usize,
        trainable_params: usize,
        /// The devices the trial trains on, one model replica each.
        #[serde(default)]
        devices: Vec<String>,
        /// The most examples one device takes per step (`batch_size` is over all devices).
        #[serde(default)]
        per_device_batch: usize,
    },
    Step {
        epoch: u32,
        step: usize,
        loss: f64,
        lr: f64,
        grad_norm: f64,
    },
    /// One evaluation: after an epoch, or every `eval_every` steps (`evaluation_steps`).
    Epoch(EpochMetrics),
    /// The trial continues after an interruption from the end of `epoch`.
    Resumed { epoch: u32, step: usize },
    /// How the trial ended: its last event, the same as its `result.json`.
    End(TrialEnd),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    pub epoch: u32,
    pub step: usize,
    pub train_loss: f64,
    pub dev_loss: f64,
    pub accuracy: Option<f64>,
    pub tokens_per_sec: f64,
    pub peak_rss_mb: f64,
    pub elapsed_s: f64,
    /// Seconds this epoch's evaluation took (dev loss and accuracy); 0 in files from before it
    /// was measured.
    #[serde(default)]
    pub eval_seconds: f64,
    /// Accuracy at each label level, level 1 first (`data.label_separator`); empty for flat
    /// labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accuracy_by_level: Vec<f64>,
    /// A program's reported numbers on this evaluation, by name (its metric among them).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub reported: std::collections::BTreeMap<String, f64>,
}

impl EpochMetrics {
    /// The sweep's metric at this evaluation.
    pub fn metric(&self, metric: &crate::spec::MetricName) -> Option<f64> {
        reported_or_builtin(&self.reported, metric, self.accuracy, self.dev_loss)
    }
}

/// A metric from a program's reported values when it reported it, else the built-in trainer's.
fn reported_or_builtin(
    reported: &std::collections::BTreeMap<String, f64>,
    metric: &crate::spec::MetricName,
    accuracy: Option<f64>,
    dev_loss: f64,
) -> Option<f64> {
    use crate::spec::{Metric, MetricName};
    if let Some(v) = reported.get(metric.column()) {
        return Some(*v);
    }
    match metric {
        MetricName::Builtin(Metric::Accuracy) => accuracy,
        MetricName::Builtin(Metric::DevLoss) if reported.is_empty() => Some(dev_loss),
        MetricName::Builtin(Metric::DevLoss) | MetricName::Reported(_) => None,
    }
}

/// A finished trial's outcome, `trials/NNNN/result.json`. Metrics are those of the best epoch,
/// whose weights are in `checkpoint/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrialResult {
    pub best_epoch: u32,
    pub accuracy: Option<f64>,
    pub dev_loss: f64,
    pub train_loss: f64,
    pub seconds: f64,
    pub tokens_per_sec: f64,
    pub peak_rss_mb: f64,
    /// Seconds spent evaluating, over every epoch of the trial's last run.
    #[serde(default)]
    pub eval_seconds: f64,
    /// The best evaluation's accuracy at each label level, level 1 first; empty for flat labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accuracy_by_level: Vec<f64>,
    /// Seconds of training per epoch, evaluations excluded, over the trial's last run: what a
    /// method costs to train. `None` in results recorded before it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_seconds_per_epoch: Option<f64>,
    /// Seconds one evaluation of the dev set took (dev loss and accuracy), averaged over the
    /// last run's evaluations: what a method costs to predict. `None` in results recorded
    /// before it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_per_evaluation: Option<f64>,
    pub trainable_params: usize,
    /// Examples per forward pass on one device.
    pub micro_batch: u32,
    /// Forward passes per step on one device.
    pub grad_accum: u32,
    /// Devices the trial trained on, one model replica each (results before multi-device
    /// trials ran on one).
    #[serde(default = "one_device")]
    pub devices: u32,
    /// The most examples one device took per step of the global `batch_size`; `None` in results
    /// recorded before it was.
    #[serde(default)]
    pub per_device_batch: Option<u32>,
    /// The optimizer step of the best evaluation; `None` in results recorded before it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_step: Option<usize>,
    /// Optimizer steps the trial took (fewer than planned when it was pruned); `None` in
    /// results recorded before it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    pub checkpoint: PathBuf,
    /// A program's reported numbers at its best evaluation, by name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub reported: std::collections::BTreeMap<String, f64>,
}

fn one_device() -> u32 {
    1
}

impl TrialResult {
    pub const FILE: &'static str = "result.json";

    pub fn metric(&self, metric: &crate::spec::MetricName) -> Option<f64> {
        reported_or_builtin(&self.reported, metric, self.accuracy, self.dev_loss)
    }

    /// What the trial is ranked by among others (`MetricSpec::rank`).
    pub fn score(&self, metric: &crate::spec::MetricName) -> crate::spec::Score {
        crate::spec::Score {
            value: self.metric(metric),
            dev_loss: self.dev_loss,
            seconds: self.seconds,
        }
    }
}

/// How a trial ended, in the trial's own words: `trials/NNNN/result.json` (its last write,
/// replaced atomically) and the last event of its progress stream. The run loop matches on the
/// kind; the trial alone reads the text of what failed inside it (candle's, cudarc's, an
/// allocation failure) and turns it into a kind. A trial that leaves no end (killed, crashed
/// before it could write one) is a failure the orchestrator describes from its exit status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "end", rename_all = "snake_case")]
pub enum TrialEnd {
    /// Trained to its planned end; `result` is its best evaluation.
    Finished { result: TrialResult },
    /// Stopped early by the sweep (its prune file): `result` is its best evaluation so far.
    Pruned { result: TrialResult },
    /// Ran out of memory (the host's under its limit, or a device's) at this micro-batch.
    OutOfMemory { micro_batch: u32, message: String },
    /// Stopped before its end on a signal (a graceful stop, Slurm's pre-timeout signal), with
    /// the step of the resume point it saved, if any: it can continue, not a failure.
    Stopped {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_step: Option<usize>,
    },
    /// Its input cannot train (data, model folder, settings): running it again changes nothing.
    InvalidInput { message: String },
    /// Anything else: a numerical failure, a device error, a bug.
    InternalError { message: String },
}

impl TrialEnd {
    /// The best evaluation of a trial that has a result (finished or pruned).
    pub fn result(&self) -> Option<&TrialResult> {
        match self {
            TrialEnd::Finished { result } | TrialEnd::Pruned { result } => Some(result),
            _ => None,
        }
    }

    /// What the end says, in words, for a log line or a failure's reason.
    pub fn message(&self) -> String {
        match self {
            TrialEnd::Finished { .. } => "finished".to_string(),
            TrialEnd::Pruned { .. } => "pruned".to_string(),
            TrialEnd::OutOfMemory {
                micro_batch,
                message,
            } => format!("out of memory at micro-batch {micro_batch}: {message}"),
            TrialEnd::Stopped { message, .. }
            | TrialEnd::InvalidInput { message }
            | TrialEnd::InternalError { message } => message.clone(),
        }
    }

    /// Reads `dir/result.json`. A file from before ends were typed (a bare `TrialResult`) is
    /// read as `Finished`.
    pub fn read(dir: &Path) -> Result<Self, ReadError> {
        let path = dir.join(TrialResult::FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| ReadError {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Self::parse(&text).map_err(|e| ReadError {
            path,
            message: e.to_string(),
        })
    }

    fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        if value.get("end").is_some() {
            serde_json::from_value(value)
        } else {
            serde_json::from_value(value).map(|result| TrialEnd::Finished { result })
        }
    }
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), 0 where unknown.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> TrialResult {
        TrialResult {
            best_epoch: 2,
            accuracy: Some(0.5),
            dev_loss: 1.0,
            train_loss: 1.2,
            seconds: 3.0,
            tokens_per_sec: 100.0,
            peak_rss_mb: 10.0,
            eval_seconds: 0.5,
            accuracy_by_level: vec![0.75, 0.5],
            train_seconds_per_epoch: Some(1.0),
            seconds_per_evaluation: Some(0.25),
            trainable_params: 1000,
            micro_batch: 4,
            grad_accum: 1,
            devices: 1,
            per_device_batch: Some(4),
            best_step: Some(8),
            steps: Some(8),
            checkpoint: PathBuf::from("/r/trials/0001/checkpoint"),
            reported: Default::default(),
        }
    }

    #[test]
    fn an_end_round_trips_and_a_bare_result_reads_as_finished() {
        let ends = [
            TrialEnd::Finished { result: result() },
            TrialEnd::Pruned { result: result() },
            TrialEnd::OutOfMemory {
                micro_batch: 8,
                message: "memory allocation of 4096 bytes failed".into(),
            },
            TrialEnd::Stopped {
                message: "saved on the pre-timeout signal".into(),
                resume_step: Some(12),
            },
            TrialEnd::InvalidInput {
                message: "train.json:3: tgt: missing".into(),
            },
            TrialEnd::InternalError {
                message: "loss became NaN".into(),
            },
        ];
        for end in ends {
            let text = serde_json::to_string(&end).unwrap();
            assert_eq!(TrialEnd::parse(&text).unwrap(), end, "{text}");
            let event = ProgressEvent::End(end.clone());
            let line = serde_json::to_string(&event).unwrap();
            assert_eq!(serde_json::from_str::<ProgressEvent>(&line).unwrap(), event);
        }
        let bare = serde_json::to_string(&result()).unwrap();
        assert_eq!(
            TrialEnd::parse(&bare).unwrap(),
            TrialEnd::Finished { result: result() }
        );
        assert!(TrialEnd::parse(r#"{"end": "exploded"}"#).is_err());
        assert!(TrialEnd::parse("{").is_err());
    }

    #[test]
    fn evaluations_come_every_eval_every_steps_and_after_the_last() {
        // Default: after every epoch.
        assert_eq!(evaluation_steps(5, 3, None), vec![5, 10, 15]);
        assert_eq!(evaluation_steps(5, 3, Some(4)), vec![4, 8, 12, 15]);
        assert_eq!(evaluation_steps(5, 2, Some(5)), vec![5, 10]);
        assert_eq!(evaluation_steps(5, 1, Some(50)), vec![5]);
        assert!(evaluation_steps(0, 1, None).is_empty());
    }
}
