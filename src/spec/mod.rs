//! The sweep file: what to train on, which model, which parameters to search, with what resources.
//!
//! Parameter syntax follows W&B sweeps (`value`, `values`, `distribution`, `min`, `max`, `q`,
//! `probabilities`) so users can bring the sweep files they already have.
//!
//! **No file system beyond reading the sweep file, no processes, no candle.**

pub mod hyperband;
pub mod memory;
pub mod params;
pub mod program;
pub mod schema;
pub mod search;
pub mod shape;
pub mod slurm;
pub mod tpe;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{file}: cannot read: {message}")]
    Read { file: String, message: String },
    #[error("{file}: {message}")]
    Yaml { file: String, message: String },
    #[error("{file}: parameters.{param}: {message}")]
    Param {
        file: String,
        param: String,
        message: String,
    },
    #[error("{file}: {field}: {message}")]
    Field {
        file: String,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// The results folder's name. Default: the sweep file's name without its extension (W&B's
    /// files often have none).
    #[serde(default)]
    pub name: String,
    /// The built-in trainer's data; not used with a `program`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataSpec>,
    /// A user's own training program (W&B's `program`): each trial runs it through `command`
    /// instead of the built-in trainer (see `program`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<PathBuf>,
    /// W&B's `command`: the argument vector with macros; default `${env} ${interpreter}
    /// ${program} ${args}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<Value>>,
    /// With a `program` and `on_oom: halve_batch`: which of its parameters is the per-device
    /// batch that an out-of-memory retry halves, and which (if any) doubles to keep the
    /// effective batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_batch: Option<OomBatch>,
    #[serde(default)]
    pub model: ModelSpec,
    #[serde(default)]
    pub method: SearchMethod,
    #[serde(default)]
    pub run_cap: Option<usize>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub metric: MetricSpec,
    pub parameters: BTreeMap<String, ParamSpec>,
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// Results folder; default `results/<name>`.
    #[serde(default)]
    pub output: Option<PathBuf>,
    /// Checkpoint retention; default: keep every trial's.
    #[serde(default)]
    pub checkpoints: Option<CheckpointPolicy>,
    /// What to do when a trial does not fit in memory (predicted or real). Default halve_batch.
    #[serde(default)]
    pub on_oom: OnOom,
    /// Stop trials that fall behind at set numbers of evaluations (W&B's syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_terminate: Option<EarlyTerminate>,
    /// The parameters that came from nested `parameters:` blocks, by their dotted names (the
    /// program gets them nested again); filled in by `SweepSpec::parse`.
    #[serde(skip)]
    pub nested: std::collections::BTreeSet<String>,
}

/// `oom_batch: {per_device: NAME, accumulate: NAME}`: a program's batch parameters, for
/// `on_oom: halve_batch`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OomBatch {
    /// The parameter holding the per-device batch (halved on out of memory).
    pub per_device: String,
    /// The parameter holding the gradient-accumulation steps (doubled with each halving).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accumulate: Option<String>,
}

/// `early_terminate: {type: hyperband, min_iter | max_iter + s, eta, strict}`, as W&B writes it.
/// Iterations are evaluations (`eval_every`, or one per epoch).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EarlyTerminate {
    #[serde(rename = "type")]
    pub kind: EarlyTerminateKind,
    #[serde(default)]
    pub min_iter: Option<usize>,
    #[serde(default)]
    pub max_iter: Option<usize>,
    /// Number of bands below `max_iter` (W&B's default 0; needed with `max_iter`).
    #[serde(default)]
    pub s: Option<usize>,
    /// Default 3, as W&B's.
    #[serde(default)]
    pub eta: Option<f64>,
    /// Judge the value at the band itself (true) or the best one up to it (default false).
    #[serde(default)]
    pub strict: Option<bool>,
    /// What trials are judged by (not in W&B): `accuracy` or `dev_loss`, by its own goal.
    /// Default: the sweep's metric. Early accuracy can sit at the majority-class rate for a
    /// quarter of training while dev loss already orders the trials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
}

impl EarlyTerminate {
    /// Every value problem, as (field under `early_terminate`, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        use crate::spec::hyperband::BandError;
        let mut out = Vec::new();
        if self.min_iter == Some(0) {
            out.push(("min_iter", "must be at least 1 (evaluations)".to_string()));
        }
        if self.max_iter == Some(0) {
            out.push(("max_iter", "must be at least 1 (evaluations)".to_string()));
        }
        if self.min_iter.is_none() && self.max_iter.is_some() && self.s.unwrap_or(0) == 0 {
            out.push((
                "s",
                "with max_iter, give s >= 1: the number of bands below max_iter".to_string(),
            ));
            return out;
        }
        match self.hyperband().bands(usize::MAX) {
            Ok(_) => {}
            Err(e @ BandError::Eta(_)) => out.push(("eta", e.to_string())),
            Err(e @ BandError::NoBands) => out.push(("min_iter", e.to_string())),
            Err(e @ BandError::Empty { .. }) => out.push(("max_iter", e.to_string())),
        }
        out
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EarlyTerminateKind {
    Hyperband,
}

impl EarlyTerminate {
    /// What trials are judged by: `metric` by its own goal, else the sweep's metric.
    pub fn judged_metric(&self, sweep: &MetricSpec) -> MetricSpec {
        match self.metric {
            Some(name) if sweep.name != name => MetricSpec {
                name: name.into(),
                goal: None,
                target: None,
            },
            _ => sweep.clone(),
        }
    }

    /// The stop rule these settings describe.
    pub fn hyperband(&self) -> crate::spec::hyperband::Hyperband {
        crate::spec::hyperband::Hyperband {
            min_iter: self.min_iter,
            max_iter: self.max_iter,
            s: self.s.unwrap_or(0),
            eta: self.eta.unwrap_or(3.0),
            strict: self.strict.unwrap_or(false),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnOom {
    /// Halve the micro-batch and double gradient accumulation (same effective batch), down to 1.
    #[default]
    HalveBatch,
    /// Record the trial as failed (out of memory) and go on with the others.
    Skip,
    /// Record it and start no further trials.
    Fail,
}

/// How many trials keep their checkpoint folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointPolicy {
    /// The N best finished trials keep theirs; the others' are deleted as trials finish. The best
    /// trial's is never deleted.
    pub keep: usize,
}

/// Relative paths are taken from the directory `sweep` runs in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub train: PathBuf,
    pub dev: PathBuf,
    /// Held out from choosing: only the best trial's checkpoint is scored on it, once, when the
    /// sweep ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<PathBuf>,
    /// What a query repeated with a different label is: a warning (default; real labelled data
    /// is noisy) or an error.
    #[serde(default)]
    pub conflicts: ConflictPolicy,
    /// What separates a label's levels (`体育/足球` with `/`): accuracy is then also reported
    /// per level (level 1 counts a prediction right when its first part is). Not set: labels
    /// are flat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_separator: Option<String>,
    /// What the head methods (`classifier`, `classifier_lora`) do with an example's system
    /// prompt: keep it as the data gives it (default), or drop it (the list of classes a
    /// generative prompt needs means nothing to a head, and costs its tokens in every forward).
    /// The generative methods always keep it.
    #[serde(default, skip_serializing_if = "SystemPrompt::is_keep")]
    pub system_prompt: SystemPrompt,
}

/// `data: {system_prompt: keep | drop}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SystemPrompt {
    #[default]
    Keep,
    Drop,
}

impl SystemPrompt {
    pub fn is_keep(&self) -> bool {
        *self == SystemPrompt::Keep
    }

    /// Whether a trial of `method` reads its examples without their system prompt.
    pub fn drops_for(&self, method: crate::spec::params::Method) -> bool {
        *self == SystemPrompt::Drop && method.is_head()
    }
}

/// `data: {conflicts: warn | error}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    #[default]
    Warn,
    Error,
}

/// Either a built-in preset (random init, tokenizer built from the training data) or a Hugging
/// Face model folder (config.json, model.safetensors, tokenizer.json).
/// Where a trial's model comes from: a built-in preset (random init) or a Hugging Face folder
/// (an absolute path once planned).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    Preset(String),
    Path(PathBuf),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default)]
    pub preset: Option<String>,
    #[serde(default)]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SearchMethod {
    #[default]
    Grid,
    Random,
    /// A Tree-structured Parzen Estimator proposes each trial from the ones before it (`tpe`).
    Bayes,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// `accuracy` or `dev_loss` for the built-in trainer; any name a program reports.
    pub name: MetricName,
    #[serde(default)]
    pub goal: Option<Goal>,
    /// W&B's `target`: once a trial's evaluation reaches it (by the goal), no new trial starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
}

impl Default for MetricSpec {
    fn default() -> Self {
        Self {
            name: MetricName::Builtin(Metric::Accuracy),
            goal: None,
            target: None,
        }
    }
}

/// A metric's name: one the built-in trainer measures, or any name a program reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum MetricName {
    Builtin(Metric),
    Reported(String),
}

impl MetricName {
    /// Its name, as a column of results.csv and a key of a program's reports.
    pub fn column(&self) -> &str {
        match self {
            MetricName::Builtin(m) => m.column(),
            MetricName::Reported(name) => name,
        }
    }

    pub fn builtin(&self) -> Option<Metric> {
        match self {
            MetricName::Builtin(m) => Some(*m),
            MetricName::Reported(_) => None,
        }
    }
}

impl From<Metric> for MetricName {
    fn from(m: Metric) -> Self {
        MetricName::Builtin(m)
    }
}

impl PartialEq<Metric> for MetricName {
    fn eq(&self, other: &Metric) -> bool {
        *self == MetricName::Builtin(*other)
    }
}

impl MetricSpec {
    pub fn goal(&self) -> Goal {
        // W&B's default goal is minimize; accuracy's is maximize.
        self.goal.unwrap_or(match self.name {
            MetricName::Builtin(Metric::Accuracy) => Goal::Maximize,
            MetricName::Builtin(Metric::DevLoss) | MetricName::Reported(_) => Goal::Minimize,
        })
    }
    /// A metric value as a loss (lower is better): negated when the goal is to maximise. What
    /// the sampler and early termination compare.
    pub fn as_loss(&self, value: f64) -> f64 {
        match self.goal() {
            Goal::Maximize => -value,
            Goal::Minimize => value,
        }
    }

    /// Whether `value` reaches `target` (at or beyond it, by the goal).
    pub fn reaches_target(&self, value: f64) -> bool {
        self.target
            .is_some_and(|t| value.is_finite() && self.as_loss(value) <= self.as_loss(t))
    }

    /// The one ranking of sweep, used for the leaderboard, `best/` and a trial's best epoch:
    /// the metric by its goal, ties broken by lower dev loss, then by fewer seconds. A score
    /// without a finite metric ranks after every score with one. `Less` means `a` is better.
    pub fn rank(&self, a: &Score, b: &Score) -> std::cmp::Ordering {
        let key = |s: &Score| -> Option<(f64, f64, f64)> {
            let v = s.value.filter(|v| v.is_finite())?;
            let v = if self.goal() == Goal::Maximize { -v } else { v };
            Some((v, s.dev_loss, s.seconds))
        };
        match (key(a), key(b)) {
            (Some(x), Some(y)) => {
                x.0.total_cmp(&y.0)
                    .then(x.1.total_cmp(&y.1))
                    .then(x.2.total_cmp(&y.2))
            }
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
    }
}

/// What a trial, or one evaluation of it, is ranked by (see `MetricSpec::rank`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// The sweep's metric; `None` when it was not measured.
    pub value: Option<f64>,
    pub dev_loss: f64,
    /// Time taken to reach this score.
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Fraction of dev examples whose best-scoring candidate label is the true one.
    Accuracy,
    /// Mean per-token loss on dev (answer tokens; all tokens for post_pretrain).
    DevLoss,
}

impl Metric {
    pub fn column(&self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::DevLoss => "dev_loss",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    Maximize,
    Minimize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    /// Default `auto`.
    #[serde(default)]
    pub devices: Option<DevicesSpec>,
    /// CPU device slots in the pool (a `gpus: k` trial holds k of them). Default: `parallel`.
    #[serde(default)]
    pub slots: Option<usize>,
    /// Most trials running at once. Default 2.
    #[serde(default)]
    pub parallel: Option<usize>,
    /// Memory of one device slot, e.g. `4GiB` or `512` (MiB). On the CPU it is also enforced: a
    /// trial process gets this much per slot it holds, and fails with out-of-memory beyond it.
    /// Default: a GPU's free memory; the machine's memory divided among the CPU slots.
    #[serde(default)]
    pub memory_per_device: Option<MemorySize>,
    /// Where trials run: `local` (default, child processes of `sweep run`) or `slurm` (one batch
    /// job per trial).
    #[serde(default)]
    pub executor: Option<ExecutorKind>,
    /// Slurm: the partition jobs are submitted to (default: the cluster's default partition).
    #[serde(default)]
    pub partition: Option<String>,
    /// Slurm: each job's time limit, in Slurm's format (`90`, `1:30:00`, `2-00:00:00`).
    #[serde(default)]
    pub time: Option<String>,
    /// Slurm: `--account`.
    #[serde(default)]
    pub account: Option<String>,
    /// Slurm: `--qos`.
    #[serde(default)]
    pub qos: Option<String>,
    /// Slurm: further sbatch arguments, each one argument (`["--constraint=a100"]`).
    #[serde(default)]
    pub sbatch_args: Option<Vec<String>>,
}

impl ResourcesSpec {
    pub fn executor(&self) -> ExecutorKind {
        self.executor.unwrap_or(ExecutorKind::Local)
    }
}

/// Where trials run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    #[default]
    Local,
    Slurm,
}

/// A memory size as written: MiB as a number, or text with a unit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum MemorySize {
    Mb(f64),
    Text(String),
}

impl MemorySize {
    pub fn mb(&self) -> Result<f64, Invalid> {
        match self {
            MemorySize::Mb(v) if *v > 0.0 && v.is_finite() => Ok(*v),
            MemorySize::Mb(v) => Err(Invalid(format!("{v} must be positive"))),
            MemorySize::Text(t) => parse_memory_mb(t),
        }
    }
}

/// Reads a memory size: a number of MiB, or a number with a unit (`512MiB`, `2GiB`, `2GB`,
/// `1.5G`). Decimal units count as binary ones: nobody sizes memory in 10^9 bytes on purpose.
pub fn parse_memory_mb(text: &str) -> Result<f64, Invalid> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| Invalid(format!("`{text}` is not a memory size (e.g. 2GiB, 512MiB)")))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1.0,
        "g" | "gb" | "gib" => 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0,
        "k" | "kb" | "kib" => 1.0 / 1024.0,
        _ => {
            return Err(Invalid(format!(
                "`{text}`: unknown unit `{unit}` (use MiB or GiB)"
            )))
        }
    };
    if value <= 0.0 || !value.is_finite() {
        return Err(Invalid(format!("`{text}` must be positive")));
    }
    Ok(value * scale)
}

/// Why a value of the sweep definition is not allowed, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum DevicesSpec {
    /// `auto`, `cpu` or `cuda`.
    Named(DeviceKind),
    /// CUDA device ids.
    Ids(Vec<usize>),
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Auto,
    Cpu,
    Cuda,
}

/// One parameter's search space, as written in the file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Vec<f64>>,
    /// W&B's nested parameters: `optimizer: {parameters: {lr: {...}}}` is the parameter
    /// `optimizer.lr` (flattened by `SweepSpec::parse`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BTreeMap<String, ParamSpec>>,
}

/// A parameter's search space once understood.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    Constant(Value),
    Categorical {
        values: Vec<Value>,
        probabilities: Option<Vec<f64>>,
    },
    Uniform {
        min: f64,
        max: f64,
    },
    IntUniform {
        min: i64,
        max: i64,
    },
    /// Log-uniform between the values `min` and `max`.
    LogUniformValues {
        min: f64,
        max: f64,
    },
    /// Log-uniform with `min` and `max` given as natural-log exponents (W&B's `log_uniform`).
    LogUniform {
        min: f64,
        max: f64,
    },
    QUniform {
        min: f64,
        max: f64,
        q: f64,
    },
    QLogUniformValues {
        min: f64,
        max: f64,
        q: f64,
    },
}

/// The most trials one sweep may have (`run_cap`): beyond it the plan alone would take minutes.
pub const MAX_RUN_CAP: usize = 10_000;

/// Bounds of `int_uniform` must be exact in an f64 and leave room for `max - min + 1`.
const INT_BOUND: f64 = 9_007_199_254_740_992.0; // 2^53

/// W&B's distributions, as `distribution:` names them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    Constant,
    Categorical,
    Uniform,
    IntUniform,
    LogUniformValues,
    LogUniform,
    QUniform,
    QLogUniformValues,
}

impl Distribution {
    /// Every name `distribution:` accepts, read from the enum itself.
    pub fn names() -> &'static [&'static str] {
        schema::variants::<Distribution>()
    }

    /// The name it is written with (serde lists variants in declaration order).
    pub fn name(self) -> &'static str {
        Self::names().get(self as usize).copied().unwrap_or("?")
    }

    /// The distribution a name stands for, as serde reads it.
    pub fn from_name(name: &str) -> Option<Self> {
        use serde::de::IntoDeserializer;
        let name: serde::de::value::StrDeserializer<serde::de::value::Error> =
            name.into_deserializer();
        Self::deserialize(name).ok()
    }
}

impl Domain {
    /// Interprets a parameter spec; the error message says what is wrong and how to write it.
    pub fn from_spec(p: &ParamSpec) -> Result<Domain, Invalid> {
        let fail = |message: String| Err(Invalid(message));
        let dist = match (&p.distribution, &p.value, &p.values, p.min, p.max) {
            (Some(name), ..) => match Distribution::from_name(name) {
                Some(d) => d,
                None => {
                    return fail(format!(
                        "unknown distribution `{name}`{} (known: {})",
                        crate::util::suggest::suffix(name, Distribution::names()),
                        Distribution::names().join(", ")
                    ))
                }
            },
            (None, Some(_), None, None, None) => Distribution::Constant,
            (None, None, Some(_), None, None) => Distribution::Categorical,
            (None, None, None, Some(min), Some(max)) => {
                if min.fract() == 0.0 && max.fract() == 0.0 {
                    Distribution::IntUniform
                } else {
                    Distribution::Uniform
                }
            }
            (None, None, None, None, None) => {
                return fail("empty: give `value`, `values`, or `distribution` with `min` and `max`".into())
            }
            _ => return fail("give exactly one of `value`, `values`, or `min`/`max` (with an optional `distribution`)".into()),
        };
        let name = dist.name();
        let bounds = || -> Result<(f64, f64), Invalid> {
            match (p.min, p.max) {
                (Some(min), Some(max)) if min.is_finite() && max.is_finite() && min < max => {
                    Ok((min, max))
                }
                (Some(min), Some(max)) if !(min.is_finite() && max.is_finite()) => Err(Invalid(
                    format!("min ({min}) and max ({max}) must be finite numbers"),
                )),
                (Some(min), Some(max)) => Err(Invalid(format!(
                    "min ({min}) must be less than max ({max})"
                ))),
                _ => Err(Invalid(format!(
                    "distribution `{name}` needs `min` and `max`"
                ))),
            }
        };
        let q = || -> Result<f64, Invalid> {
            match p.q {
                Some(q) if q > 0.0 && q.is_finite() => Ok(q),
                Some(q) => Err(Invalid(format!("q must be positive, got {q}"))),
                None => Ok(1.0),
            }
        };
        let positive_min = |min: f64| -> Result<(), Invalid> {
            if min <= 0.0 {
                return Err(Invalid(format!(
                    "distribution `{name}` needs min > 0, got {min}"
                )));
            }
            Ok(())
        };
        match dist {
            Distribution::Constant => p
                .value
                .clone()
                .map(Domain::Constant)
                .ok_or_else(|| Invalid("distribution `constant` needs `value`".into())),
            Distribution::Categorical => Self::categorical(p),
            Distribution::Uniform => bounds().map(|(min, max)| Domain::Uniform { min, max }),
            Distribution::IntUniform => {
                let (min, max) = bounds()?;
                if min.fract() != 0.0 || max.fract() != 0.0 {
                    return fail(
                        "distribution `int_uniform` needs whole-number `min` and `max`".into(),
                    );
                }
                if min.abs() > INT_BOUND || max.abs() > INT_BOUND {
                    return fail(format!(
                        "distribution `int_uniform` needs `min` and `max` within ±{INT_BOUND}"
                    ));
                }
                Ok(Domain::IntUniform {
                    min: min as i64,
                    max: max as i64,
                })
            }
            Distribution::LogUniformValues => {
                let (min, max) = bounds()?;
                positive_min(min)?;
                Ok(Domain::LogUniformValues { min, max })
            }
            Distribution::LogUniform => bounds().map(|(min, max)| Domain::LogUniform { min, max }),
            Distribution::QUniform => {
                let (min, max) = bounds()?;
                Ok(Domain::QUniform { min, max, q: q()? })
            }
            Distribution::QLogUniformValues => {
                let (min, max) = bounds()?;
                positive_min(min)?;
                Ok(Domain::QLogUniformValues { min, max, q: q()? })
            }
        }
    }

    /// `values` with their optional `probabilities`.
    fn categorical(p: &ParamSpec) -> Result<Domain, Invalid> {
        let values = p
            .values
            .clone()
            .ok_or_else(|| Invalid("distribution `categorical` needs `values`".into()))?;
        if values.is_empty() {
            return Err(Invalid("`values` is empty: list at least one value".into()));
        }
        if let Some(probs) = &p.probabilities {
            if probs.len() != values.len() {
                return Err(Invalid(format!(
                    "`probabilities` has {} entries for {} values",
                    probs.len(),
                    values.len()
                )));
            }
            let sum: f64 = probs.iter().sum();
            if probs.iter().any(|x| *x < 0.0) || (sum - 1.0).abs() > 1e-6 {
                return Err(Invalid(format!(
                    "`probabilities` must be non-negative and sum to 1 (sum is {sum})"
                )));
            }
        }
        Ok(Domain::Categorical {
            values,
            probabilities: p.probabilities.clone(),
        })
    }

    /// The finite list of values a grid search takes, or None for a continuous distribution.
    pub fn grid_values(&self) -> Option<Vec<Value>> {
        match self {
            Domain::Constant(v) => Some(vec![v.clone()]),
            Domain::Categorical { values, .. } => Some(values.clone()),
            Domain::IntUniform { min, max } if max.saturating_sub(*min) <= 1000 => {
                Some((*min..=*max).map(Value::from).collect())
            }
            _ => None,
        }
    }

    /// Whether the parameter varies across trials (a "swept" parameter).
    pub fn is_swept(&self) -> bool {
        match self {
            Domain::Constant(_) => false,
            Domain::Categorical { values, .. } => values.len() > 1,
            _ => true,
        }
    }
}

/// A sweep's name from its file's: the stem, with characters a folder name should not have
/// replaced by `_` (`sweep` when nothing is left).
pub fn default_name(file: &str) -> String {
    let stem = Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.trim_matches('.').is_empty() {
        "sweep".into()
    } else {
        name
    }
}

/// W&B's nested `parameters:` as dotted names (`optimizer.lr`), and the set of names that came
/// from nesting. A block with `parameters` and none of `value`, `values`, `distribution`,
/// `min`, `max` is a nest; any other keeps its `parameters` (and is refused).
fn flatten_parameters(
    params: BTreeMap<String, ParamSpec>,
) -> (
    BTreeMap<String, ParamSpec>,
    std::collections::BTreeSet<String>,
) {
    let mut flat = BTreeMap::new();
    let mut nested = std::collections::BTreeSet::new();
    for (name, mut p) in params {
        let only_nest = p.value.is_none()
            && p.values.is_none()
            && p.distribution.is_none()
            && p.min.is_none()
            && p.max.is_none();
        match p.parameters.take() {
            Some(inner) if only_nest => {
                let (inner_flat, _) = flatten_parameters(inner);
                for (k, v) in inner_flat {
                    let dotted = format!("{name}.{k}");
                    nested.insert(dotted.clone());
                    flat.insert(dotted, v);
                }
            }
            other => {
                p.parameters = other;
                flat.insert(name, p);
            }
        }
    }
    (flat, nested)
}

impl SweepSpec {
    /// `data.label_separator`, when the sweep has data and sets one.
    pub fn label_separator(&self) -> Option<&str> {
        self.data.as_ref()?.label_separator.as_deref()
    }

    /// `data.system_prompt` (keep without data: a program sweep has none).
    pub fn system_prompt(&self) -> SystemPrompt {
        self.data
            .as_ref()
            .map_or(SystemPrompt::Keep, |d| d.system_prompt)
    }

    /// Reads and parses a sweep file. Interpretation of parameters happens in `search`.
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError::Read {
            file: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    pub fn from_yaml(text: &str, file: &str) -> Result<Self, SpecError> {
        Self::from_yaml_counted(text, file, None)
    }

    /// [`SweepSpec::from_yaml`] with `sweep run --count N` applied ([`SweepSpec::with_count`]).
    pub fn from_yaml_counted(
        text: &str,
        file: &str,
        count: Option<usize>,
    ) -> Result<Self, SpecError> {
        let spec = SweepSpec::parse(text, file)
            .map_err(|e| SpecError::Yaml {
                file: file.to_string(),
                message: e.to_string(),
            })?
            .with_count(count);
        spec.validate(file)?;
        Ok(spec)
    }

    /// The typed spec of a sweep file's text, with what the file leaves out filled in: `name`
    /// from the file's name (`file`), nested parameters flattened to dotted names.
    pub fn parse(text: &str, file: &str) -> Result<Self, yaml_serde::Error> {
        let mut spec: SweepSpec = yaml_serde::from_str(text)?;
        if spec.name.is_empty() {
            spec.name = default_name(file);
        }
        let (flat, nested) = flatten_parameters(std::mem::take(&mut spec.parameters));
        spec.parameters = flat;
        spec.nested = nested;
        Ok(spec)
    }

    /// A results folder's frozen copy of its sweep file (`spec.yaml`), read without the checks
    /// it passed when the sweep started (a `run_cap` given by `--count` is not in it).
    pub fn read_frozen(path: &Path) -> Result<Self, SpecError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SpecError::Read {
            file: file.clone(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &file).map_err(|e| SpecError::Yaml {
            file,
            message: e.to_string(),
        })
    }

    /// The text to freeze into a results folder: the file's own, with its defaulted `name`
    /// written in when the file has none (W&B's files often do not), so the frozen copy reads
    /// back as the same sweep.
    pub fn frozen_text(&self, text: &str) -> String {
        let named = text
            .lines()
            .any(|l| l.starts_with("name:") || l.starts_with("\"name\":"));
        if named {
            text.to_string()
        } else {
            let quoted = serde_json::to_string(&self.name).unwrap_or_else(|_| "sweep".into());
            format!("name: {quoted}\n{text}")
        }
    }

    /// `sweep run FILE --count N`: at most N trials (W&B's `wandb agent --count`), the file's
    /// `run_cap` when it is smaller.
    pub fn with_count(mut self, count: Option<usize>) -> Self {
        if let Some(n) = count {
            self.run_cap = Some(self.run_cap.map_or(n, |cap| cap.min(n)));
        }
        self
    }

    /// Whether trials run a user's program instead of the built-in trainer.
    pub fn is_program(&self) -> bool {
        self.program.is_some() || self.command.as_ref().is_some_and(|c| !c.is_empty())
    }

    fn validate(&self, file: &str) -> Result<(), SpecError> {
        match self.field_problems().into_iter().next() {
            None => Ok(()),
            Some((field, message)) => Err(match field.strip_prefix("parameters.") {
                Some(param) => SpecError::Param {
                    file: file.to_string(),
                    param: param.to_string(),
                    message,
                },
                None => SpecError::Field {
                    file: file.to_string(),
                    field,
                    message,
                },
            }),
        }
    }

    /// Every value problem of a parsed spec, as (dotted field path, message). Parsing already
    /// guaranteed the types; these are the values no sweep can run with.
    pub fn field_problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut field = |field: &str, message: String| out.push((field.to_string(), message));
        if self.name.trim().is_empty()
            || self
                .name
                .chars()
                .any(|c| !(c.is_alphanumeric() || c == '-' || c == '_' || c == '.'))
            || self.name == "."
            || self.name == ".."
        {
            field(
                "name",
                format!(
                    "`{}` must be a non-empty folder name (letters, digits, - _ .)",
                    self.name
                ),
            );
        }
        self.program_problems(&mut field);
        match (&self.model.preset, &self.model.path) {
            _ if self.is_program() => {}
            (Some(_), Some(_)) => field("model", "give either `preset` or `path`, not both".into()),
            (Some(p), None) if crate::spec::shape::preset(p).is_none() => field(
                "model.preset",
                format!(
                    "unknown preset `{p}`{} (known: {})",
                    crate::util::suggest::suffix(p, &crate::spec::shape::PRESET_NAMES),
                    crate::spec::shape::PRESET_NAMES.join(", ")
                ),
            ),
            _ => {}
        }
        if self.method == SearchMethod::Random && self.run_cap.is_none() {
            field(
                "run_cap",
                "random search needs `run_cap` (how many trials), or `sweep run FILE --count N`"
                    .into(),
            );
        }
        if self.method == SearchMethod::Bayes && self.run_cap.is_none() {
            field(
                "run_cap",
                "bayes search needs `run_cap` (how many trials it proposes), or `sweep run FILE \
                 --count N`"
                    .into(),
            );
        }
        if let Some(t) = self.metric.target.filter(|t| !t.is_finite()) {
            field("metric.target", format!("must be a finite number, got {t}"));
        }
        if let Some(et) = &self.early_terminate {
            for (name, problem) in et.problems() {
                field(&format!("early_terminate.{name}"), problem);
            }
        }
        match self.run_cap {
            Some(0) => field("run_cap", "must be at least 1".into()),
            Some(n) if n > MAX_RUN_CAP => field(
                "run_cap",
                format!("{n} trials is more than sweep runs in one sweep (at most {MAX_RUN_CAP})"),
            ),
            _ => {}
        }
        if self.resources.parallel == Some(0) {
            field("resources.parallel", "must be at least 1".into());
        }
        if self.resources.slots == Some(0) {
            field("resources.slots", "must be at least 1".into());
        }
        if let Some(Err(message)) = self
            .resources
            .memory_per_device
            .as_ref()
            .map(MemorySize::mb)
        {
            field("resources.memory_per_device", message.0);
        }
        for (name, message) in slurm::resource_problems(&self.resources) {
            field(&format!("resources.{name}"), message);
        }
        if self.label_separator() == Some("") {
            field(
                "data.label_separator",
                "must not be empty: give the text between a label's levels, such as \"/\"".into(),
            );
        }
        if self.checkpoints.as_ref().is_some_and(|c| c.keep == 0) {
            field(
                "checkpoints.keep",
                "must be at least 1 (the best trial's checkpoint is always kept)".into(),
            );
        }
        for (name, p) in &self.parameters {
            if p.parameters.is_some() {
                field(
                    &format!("parameters.{name}"),
                    "nested `parameters` cannot sit beside `value`, `values`, `distribution`, \
                     `min` or `max`"
                        .into(),
                );
            } else if let Err(e) = Domain::from_spec(p) {
                field(&format!("parameters.{name}"), e.0);
            }
        }
        out
    }

    /// What differs with a `program`: no data or model needed, any metric name, `oom_batch`
    /// naming parameters; without one, the built-in trainer's data, metrics and no `oom_batch`.
    fn program_problems(&self, field: &mut impl FnMut(&str, String)) {
        if !self.is_program() {
            if self.data.is_none() {
                field(
                    "data",
                    "missing `data` (`data: {train: FILE, dev: FILE}`), or give a `program` to \
                     sweep your own training program"
                        .into(),
                );
            }
            if let MetricName::Reported(name) = &self.metric.name {
                let known = schema::variants::<Metric>();
                field(
                    "metric.name",
                    format!(
                        "unknown metric `{name}`{} (the built-in trainer measures {}; a \
                         `program` may report any name)",
                        crate::util::suggest::suffix(name, known),
                        known.join(", ")
                    ),
                );
            }
            if self.oom_batch.is_some() {
                field(
                    "oom_batch",
                    "names a program's batch parameters; the built-in trainer halves its own \
                     micro_batch"
                        .into(),
                );
            }
            return;
        }
        if let Some(Err(e)) = self
            .command
            .as_deref()
            .map(program::CommandTemplate::from_yaml)
        {
            field(&format!("command[{}]", e.index()), e.reason());
        }
        if self.program.is_none()
            && self
                .command
                .as_deref()
                .and_then(|c| program::CommandTemplate::from_yaml(c).ok())
                .is_some_and(|t| t.uses(program::Macro::Program))
        {
            field(
                "program",
                "the command uses `${program}` but the file names no `program`".into(),
            );
        }
        if let Some(b) = &self.oom_batch {
            for (key, name) in [
                ("per_device", Some(&b.per_device)),
                ("accumulate", b.accumulate.as_ref()),
            ] {
                let Some(name) = name else { continue };
                if !self.parameters.contains_key(name) {
                    field(
                        &format!("oom_batch.{key}"),
                        format!(
                            "`{name}` is not a parameter of this sweep{}",
                            crate::util::suggest::suffix(
                                name,
                                &self
                                    .parameters
                                    .keys()
                                    .map(String::as_str)
                                    .collect::<Vec<_>>()
                            )
                        ),
                    );
                }
            }
        }
    }

    /// Where results go: `output`, else `results/<name>`.
    pub fn results_dir(&self) -> PathBuf {
        self.output
            .clone()
            .unwrap_or_else(|| PathBuf::from("results").join(&self.name))
    }

    /// Names of the parameters that vary across trials.
    pub fn swept_parameters(&self) -> Vec<String> {
        self.parameters
            .iter()
            .filter(|(_, p)| Domain::from_spec(p).map(|d| d.is_swept()).unwrap_or(false))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_mb("512").unwrap(), 512.0);
        assert_eq!(parse_memory_mb("2GiB").unwrap(), 2048.0);
        assert_eq!(parse_memory_mb("1.5 GB").unwrap(), 1536.0);
        assert!(parse_memory_mb("2 bananas").is_err());
        assert!(parse_memory_mb("-1G").is_err());
    }

    #[test]
    fn ranking_uses_the_goal_then_dev_loss_then_seconds_and_puts_unmeasured_last() {
        let score = |value: Option<f64>, dev_loss: f64, seconds: f64| Score {
            value,
            dev_loss,
            seconds,
        };
        let acc = MetricSpec::default();
        let loss = MetricSpec {
            name: MetricName::Builtin(Metric::DevLoss),
            goal: None,
            target: None,
        };
        use std::cmp::Ordering::*;
        assert_eq!(
            acc.rank(&score(Some(0.9), 2.0, 9.0), &score(Some(0.8), 1.0, 1.0)),
            Less
        );
        assert_eq!(
            loss.rank(&score(Some(0.9), 0.9, 9.0), &score(Some(0.8), 0.8, 1.0)),
            Greater
        );
        assert_eq!(
            acc.rank(&score(Some(0.9), 1.0, 9.0), &score(Some(0.9), 1.5, 1.0)),
            Less
        );
        assert_eq!(
            acc.rank(&score(Some(0.9), 1.0, 2.0), &score(Some(0.9), 1.0, 3.0)),
            Less
        );
        assert_eq!(
            acc.rank(&score(Some(0.9), 1.0, 2.0), &score(Some(0.9), 1.0, 2.0)),
            Equal
        );
        assert_eq!(
            acc.rank(&score(None, 0.1, 1.0), &score(Some(0.1), 9.0, 9.0)),
            Greater
        );
        assert_eq!(
            acc.rank(
                &score(Some(f64::NAN), 0.1, 1.0),
                &score(Some(0.1), 9.0, 9.0)
            ),
            Greater
        );
        assert_eq!(
            acc.rank(&score(None, 0.1, 1.0), &score(None, 9.0, 9.0)),
            Equal
        );
    }

    const SPEC: &str = r#"
name: t
data: {train: a.json, dev: b.json}
method: grid
metric: {name: accuracy, goal: maximize}
parameters:
  method: {values: [sft, lora]}
  learning_rate: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}
  epochs: {value: 2}
resources: {devices: cpu, slots: 2, parallel: 2}
"#;

    #[test]
    fn parses_w_and_b_style_parameters() {
        let s = SweepSpec::from_yaml(SPEC, "s.yaml").unwrap();
        assert_eq!(
            s.resources.devices,
            Some(DevicesSpec::Named(DeviceKind::Cpu))
        );
        assert_eq!(
            Domain::from_spec(&s.parameters["learning_rate"]).unwrap(),
            Domain::LogUniformValues {
                min: 1e-4,
                max: 1e-2
            }
        );
        assert_eq!(s.swept_parameters(), vec!["learning_rate", "method"]);
        assert_eq!(s.results_dir(), PathBuf::from("results/t"));
    }

    #[test]
    fn early_termination_judges_the_sweep_metric_unless_told_otherwise() {
        let text = format!("{SPEC}early_terminate: {{type: hyperband, min_iter: 2}}\n");
        let s = SweepSpec::from_yaml(&text, "s.yaml").unwrap();
        let et = s.early_terminate.unwrap();
        assert_eq!(et.judged_metric(&s.metric), s.metric);
        assert_eq!(et.hyperband().eta, 3.0);
        assert!(!et.hyperband().strict);
        let text = format!(
            "{SPEC}early_terminate: {{type: hyperband, min_iter: 2, eta: 2, metric: dev_loss}}\n"
        );
        let s = SweepSpec::from_yaml(&text, "s.yaml").unwrap();
        let judged = s.early_terminate.unwrap().judged_metric(&s.metric);
        assert_eq!(
            (judged.name.clone(), judged.goal()),
            (MetricName::Builtin(Metric::DevLoss), Goal::Minimize)
        );
        assert_eq!(judged.as_loss(1.5), 1.5);
        assert_eq!(s.metric.as_loss(0.8), -0.8);
        assert!(!s.metric.reaches_target(0.8));
    }

    #[test]
    fn inferred_distributions_follow_w_and_b() {
        let p = ParamSpec {
            min: Some(1.0),
            max: Some(4.0),
            ..Default::default()
        };
        assert_eq!(
            Domain::from_spec(&p).unwrap(),
            Domain::IntUniform { min: 1, max: 4 }
        );
        let p = ParamSpec {
            min: Some(0.1),
            max: Some(0.5),
            ..Default::default()
        };
        assert_eq!(
            Domain::from_spec(&p).unwrap(),
            Domain::Uniform { min: 0.1, max: 0.5 }
        );
    }

    #[test]
    fn errors_name_the_parameter_and_the_fix() {
        let bad = SPEC.replace("min: 1.0e-4, max: 1.0e-2", "min: 1.0e-2, max: 1.0e-4");
        let e = SweepSpec::from_yaml(&bad, "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("parameters.learning_rate") && e.contains("less than max"),
            "{e}"
        );
        let bad = SPEC.replace("log_uniform_values", "log_normalish");
        let e = SweepSpec::from_yaml(&bad, "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown distribution `log_normalish`"), "{e}");
        let bad = SPEC.replace("method: grid", "method: random");
        let e = SweepSpec::from_yaml(&bad, "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("run_cap"), "{e}");
        let bad = SPEC.replace("metric:", "metrics:");
        let e = SweepSpec::from_yaml(&bad, "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `metrics`"), "{e}");
    }
}
