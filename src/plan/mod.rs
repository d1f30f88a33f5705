//! Planning: from a sweep file to the list of trials, each with typed parameters, the devices it
//! needs, its predicted memory, and a refusal when it can never run. Nothing trains here;
//! `sweep plan` prints this.
//!
//! **Starts nothing and writes nothing; never imports the trainer.** (Reading the machine's
//! devices with nvidia-smi and the cluster with sinfo are the only commands it runs: questions,
//! not work.)

pub mod devices;
pub mod program;
pub mod slurm;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::plan::devices::{machine_memory_mb, query_gpus, GpuQueryError};
use crate::plan::slurm::{job_request, read_cluster, Cluster, JobRequest};
use crate::protocol::trial::evaluation_steps;
use crate::spec::hyperband::Hyperband;
use crate::spec::memory::{estimate, fitting_micro_batch, Workload, MB};
use crate::spec::params::{Method, TrialParams};
use crate::spec::search::{assignments, domains, Assignment};
use crate::spec::shape::ModelConfig;
use crate::spec::{
    DeviceKind, DevicesSpec, Domain, ExecutorKind, ModelSource, OnOom, SearchMethod, SpecError,
    SweepSpec,
};
use crate::text::data::{DataError, Example};
use crate::text::encode::TokenCounts;
use crate::text::model_folder::{read_config, ModelFolderError};
use crate::text::tokenizer::{load_tokenizer, TokenizerError};

/// Why a sweep cannot be planned; every message names the sweep file or the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{file}: {field}: `{}` not found", path.display())]
    NotFound {
        file: String,
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: model.path: `{}` has no config.json (a Hugging Face model folder is expected)", path.display())]
    NotAModelFolder { file: String, path: PathBuf },
    /// (Not `source`: the message already holds the problem, and printing the error's chain
    /// would say it twice.)
    #[error("{file}: {problem}")]
    Pool { file: String, problem: PoolError },
    #[error("{file}: trial {trial} ({assignment}): {message}")]
    Trial {
        file: String,
        trial: usize,
        assignment: String,
        message: String,
    },
    #[error("{file}: the sweep has no trials")]
    NoTrials { file: String },
    #[error("{file}: {message}")]
    Program { file: String, message: String },
    #[error(
        "{file}: data: missing (the built-in trainer needs `data: {{train: FILE, dev: FILE}}`)"
    )]
    NoData { file: String },
    #[error("unknown preset `{0}`")]
    UnknownPreset(String),
    #[error("{}:{line}: cannot tokenize: {message}", file.display())]
    Tokens {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    ModelFolder(#[from] ModelFolderError),
}

/// One place a trial can run: the CPU, or one CUDA device.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Slot {
    /// `cpu` or `cuda:N` (N the physical index).
    pub name: String,
    /// Memory a trial may use on it, in MiB, when known.
    pub memory_mb: Option<f64>,
    /// What it is, for people (`cpu`, or the GPU's name).
    pub label: String,
}

/// A `resources` setting the pool cannot be made from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PoolError {
    /// The spec field at fault (`resources.devices`, ...).
    pub field: &'static str,
    pub message: String,
}

impl PoolError {
    fn devices(message: String) -> Self {
        Self {
            field: "resources.devices",
            message,
        }
    }
}

/// The devices trials are placed on. On a CPU-only machine every slot is the CPU; a trial with
/// `gpus: k` holds k slots (and so a larger share of the cores).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Pool {
    pub slots: Vec<Slot>,
    /// Most trials running at once.
    pub parallel: usize,
    /// CPU cores shared among running trials.
    pub cores: usize,
    /// Enforced memory per CPU slot in MiB (`resources.memory_per_device`), if any.
    pub cpu_memory_limit_mb: Option<f64>,
}

impl Pool {
    /// The pool a spec asks for: `auto` finds CUDA GPUs with nvidia-smi and falls back to CPU slots.
    pub fn from_spec(spec: &SweepSpec, cores: usize) -> Result<Self, PoolError> {
        let parallel = spec.resources.parallel.unwrap_or(2);
        let per_device = match &spec.resources.memory_per_device {
            Some(m) => Some(m.mb().map_err(|e| PoolError {
                field: "resources.memory_per_device",
                message: e.0,
            })?),
            None => None,
        };
        let cpu_pool = |n: usize| -> Self {
            let memory = per_device.or_else(|| machine_memory_mb().map(|m| m / n as f64));
            Self {
                slots: (0..n)
                    .map(|_| Slot {
                        name: "cpu".into(),
                        memory_mb: memory,
                        label: "cpu".into(),
                    })
                    .collect(),
                parallel,
                cores: cores.max(1),
                cpu_memory_limit_mb: per_device,
            }
        };
        let gpu_pool = |gpus: Vec<crate::plan::devices::Gpu>| -> Self {
            Self {
                slots: gpus
                    .into_iter()
                    .map(|g| Slot {
                        name: format!("cuda:{}", g.index),
                        memory_mb: Some(per_device.unwrap_or(g.free_mb)),
                        label: g.name,
                    })
                    .collect(),
                parallel,
                cores: cores.max(1),
                cpu_memory_limit_mb: None,
            }
        };
        if spec.resources.executor() == ExecutorKind::Slurm {
            if let Some(DevicesSpec::Ids(_)) = &spec.resources.devices {
                return Err(PoolError::devices(
                    "GPU ids cannot be chosen with `executor: slurm`: Slurm gives each job its GPUs; use `auto`, `cuda` or `cpu`".into(),
                ));
            }
            // Slurm places the jobs: no pool of ours, only the memory of a device when given.
            return Ok(Self {
                slots: Vec::new(),
                parallel,
                cores: cores.max(1),
                cpu_memory_limit_mb: per_device,
            });
        }
        let cpu_slots = spec.resources.slots.unwrap_or(parallel);
        Ok(match &spec.resources.devices {
            None | Some(DevicesSpec::Named(DeviceKind::Auto)) => match query_gpus() {
                Ok(gpus) if !gpus.is_empty() => gpu_pool(gpus),
                _ => cpu_pool(cpu_slots),
            },
            Some(DevicesSpec::Named(DeviceKind::Cpu)) => cpu_pool(cpu_slots),
            Some(DevicesSpec::Named(DeviceKind::Cuda)) => match query_gpus() {
                Ok(gpus) if !gpus.is_empty() => gpu_pool(gpus),
                Ok(_) => return Err(PoolError::devices("`cuda`, but nvidia-smi lists no GPU this process may use (CUDA_VISIBLE_DEVICES?)".into())),
                Err(GpuQueryError::NotInstalled) => return Err(PoolError::devices("`cuda`, but nvidia-smi is not installed here; use `devices: cpu`".into())),
                Err(e) => return Err(PoolError::devices(format!("`cuda`, but {e}"))),
            },
            Some(DevicesSpec::Ids(ids)) => {
                if ids.is_empty() {
                    return Err(PoolError::devices("the list of device ids is empty".into()));
                }
                match query_gpus() {
                    Ok(gpus) => {
                        let missing: Vec<String> = ids
                            .iter()
                            .filter(|i| !gpus.iter().any(|g| g.index == **i))
                            .map(|i| i.to_string())
                            .collect();
                        if !missing.is_empty() {
                            return Err(PoolError::devices(format!(
                                "GPU {} not found; nvidia-smi lists {}",
                                missing.join(", "),
                                if gpus.is_empty() { "none".to_string() } else {
                                    gpus.iter().map(|g| g.index.to_string()).collect::<Vec<_>>().join(", ")
                                }
                            )));
                        }
                        gpu_pool(gpus.into_iter().filter(|g| ids.contains(&g.index)).collect())
                    }
                    Err(GpuQueryError::NotInstalled) => return Err(PoolError::devices("GPU ids given, but nvidia-smi is not installed here".into())),
                    Err(e) => return Err(PoolError::devices(e.to_string())),
                }
            }
        })
    }

    /// CPU threads for a trial holding `held` slots: the cores split between the trials that can
    /// run at once.
    pub fn threads_for(&self, held: usize) -> usize {
        let concurrent = self.parallel.min(self.slots.len()).max(1);
        (self.cores * held / concurrent).clamp(1, self.cores)
    }

    pub fn has_cuda(&self) -> bool {
        self.slots.iter().any(|s| s.name.starts_with("cuda:"))
    }

    /// The memory one device of a trial has, which its estimate must fit: on Slurm (no slots of
    /// ours) `memory_per_device` when given, else the smallest slot of the pool.
    pub fn trial_memory_limit_mb(&self, on_slurm: bool) -> Option<f64> {
        if on_slurm {
            self.cpu_memory_limit_mb
        } else {
            self.device_memory_mb()
        }
    }

    /// The smallest memory among the slots, which a trial must fit on whichever it gets.
    fn device_memory_mb(&self) -> Option<f64> {
        self.slots
            .iter()
            .filter_map(|s| s.memory_mb)
            .min_by(f64::total_cmp)
    }

    fn describe(&self) -> String {
        let mut names: Vec<String> = Vec::new();
        for s in &self.slots {
            let mem = s
                .memory_mb
                .map(|m| format!(" {:.0} MiB", m))
                .unwrap_or_default();
            names.push(if s.name == "cpu" {
                format!("cpu{mem}")
            } else {
                format!("{} ({}){mem}", s.name, s.label)
            });
        }
        names.join(", ")
    }
}

/// How planning treats memory.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    /// Refuse or shrink trials whose predicted memory does not fit their device.
    pub memory_check: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self { memory_check: true }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedTrial {
    /// 1-based; the trial folder is `trials/{id:04}`.
    pub id: usize,
    pub assignment: Assignment,
    pub params: TrialParams,
    /// Predicted peak memory per device, in MiB, at the planned micro-batch.
    pub estimate_mb: Option<f64>,
    /// What planning changed, e.g. a smaller micro-batch to fit.
    pub note: Option<String>,
    /// Why the trial can never run, if so.
    pub refusal: Option<String>,
    /// With `executor: slurm`: what its job asks of the cluster.
    pub job: Option<JobRequest>,
}

/// Where a sweep with `executor: slurm` submits, as read before anything is submitted.
#[derive(Debug, Clone, Serialize)]
pub struct SlurmPlan {
    pub cluster: Cluster,
    /// `devices: cpu`: each job asks for its GPUs but trains on as many CPU stand-ins.
    pub cpu_stand_ins: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    pub results_dir: PathBuf,
    pub train: PathBuf,
    pub dev: PathBuf,
    /// `data.test`: scored once, on the best trial's checkpoint, when the sweep ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<PathBuf>,
    pub model: ModelSource,
    pub pool: Pool,
    /// With `executor: slurm`: the partition and its limits.
    pub slurm: Option<SlurmPlan>,
    pub swept: Vec<String>,
    pub trials: Vec<PlannedTrial>,
    /// When the spec does not set `max_seq_len`: what the trials use instead, and why.
    pub fitted_max_seq_len: Option<String>,
    /// Training examples (a trial's steps per epoch are `ceil(examples / batch_size)`).
    pub train_examples: usize,
    /// `method: bayes`: trials are proposed as results arrive, so `trials` starts empty.
    #[serde(skip)]
    pub bayes: Option<BayesSearch>,
    /// `early_terminate`, when the sweep has it.
    #[serde(skip)]
    pub early_terminate: Option<Hyperband>,
    /// Plans trials proposed after planning (`plan_trial`).
    #[serde(skip)]
    pub(crate) planner: Option<TrialPlanner>,
    /// With a `program`: how each trial's command is made (trials run it instead of the
    /// built-in trainer; `train`, `dev` and `model` are then unused and empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<program::ProgramPlan>,
}

/// What `method: bayes` proposes from.
#[derive(Debug, Clone)]
pub struct BayesSearch {
    pub domains: Vec<(String, Domain)>,
    pub run_cap: usize,
    pub seed: u64,
    /// The parameters of `run_cap` random draws from the spaces, planned to check that every
    /// value makes a valid trial; they stand for the trials the sampler may propose.
    pub draws: Vec<TrialParams>,
}

/// Everything planning one trial needs besides its assignment, kept so that trials proposed
/// while the sweep runs are planned by the same rules as the ones planned up front.
#[derive(Debug, Clone)]
pub(crate) struct TrialPlanner {
    file: String,
    /// The training data's token lengths; `None` for a program sweep (its trials are sized by
    /// their `gpus` alone).
    lengths: Option<Lengths>,
    /// With a program: its per-device batch parameter, read into a trial's micro-batch.
    program_batch: Option<String>,
    pool: Pool,
    slurm: Option<SlurmPlan>,
    device_mb: Option<f64>,
    fitted: Option<u32>,
    time_s: Option<u64>,
    memory_check: bool,
    on_oom: OnOom,
    seed: u64,
}

impl TrialPlanner {
    /// Every trial of the sweep's search, planned; with `method: bayes` none up front but the
    /// search that proposes them (its first draws planned like the others, so a value no trial
    /// can take is an error here). A sweep with neither is an error.
    fn plan_sweep(
        &self,
        spec: &SweepSpec,
    ) -> Result<(Vec<PlannedTrial>, Option<BayesSearch>), PlanError> {
        let file = &self.file;
        let mut trials = Vec::new();
        for (i, assignment) in assignments(spec, file)?.into_iter().enumerate() {
            trials.push(self.plan(i + 1, assignment)?);
        }
        let bayes = match spec.method {
            SearchMethod::Bayes => Some(BayesSearch {
                domains: domains(spec, file)?,
                run_cap: spec.run_cap.unwrap_or(1),
                seed: spec.seed,
                draws: std::mem::take(&mut trials)
                    .into_iter()
                    .map(|t| t.params)
                    .collect(),
            }),
            SearchMethod::Grid | SearchMethod::Random => None,
        };
        if trials.is_empty() && bayes.is_none() {
            return Err(PlanError::NoTrials { file: file.clone() });
        }
        Ok((trials, bayes))
    }

    /// Trial `id` with these parameter values: typed, fitted to memory, or refused.
    fn plan(&self, id: usize, assignment: Assignment) -> Result<PlannedTrial, PlanError> {
        let (pool, slurm, device_mb) = (&self.pool, &self.slurm, self.device_mb);
        let Some(lengths) = &self.lengths else {
            return self.plan_program_trial(id, assignment);
        };
        let mut params =
            TrialParams::from_assignment(&assignment, self.seed).map_err(|problem| {
                PlanError::Trial {
                    file: self.file.clone(),
                    trial: id,
                    assignment: describe(&assignment),
                    message: problem.message,
                }
            })?;
        if let Some(fitted) = self.fitted {
            params.max_seq_len = fitted;
        }
        let mut refusal = self.pool_refusal(params.gpus);
        let mut note = None;
        // Each device holds the model and its share of the micro-batch.
        let per_device = |micro: usize| micro.div_ceil(params.gpus.max(1) as usize);
        let workload = Workload {
            on_cuda: pool.has_cuda(),
            ..lengths.workload(&params)
        };
        let planned_micro = params.micro_batch() as usize;
        let mut estimate_mb = Some(estimate(&workload, per_device(planned_micro)).total_mb());
        if let (Some(limit), true, None) = (device_mb, self.memory_check, &refusal) {
            if estimate_mb.unwrap_or(0.0) > limit {
                let at_one = estimate(&workload, 1).total_mb();
                let fit = match self.on_oom {
                    OnOom::HalveBatch => {
                        fitting_micro_batch(&workload, params.batch_size as usize, limit * MB)
                    }
                    OnOom::Skip | OnOom::Fail => None,
                };
                match fit {
                    Some(micro) => {
                        note = Some(format!(
                            "micro-batch {planned_micro} -> {micro} (grad_accum {}) to fit {limit:.0} MiB",
                            params.batch_size as usize / micro
                        ));
                        estimate_mb = Some(estimate(&workload, per_device(micro)).total_mb());
                        params.micro_batch = Some(micro as u32);
                    }
                    None if at_one > limit => {
                        refusal = Some(format!(
                            "needs about {at_one:.0} MiB even at micro-batch 1, more than the {limit:.0} MiB of a device; it could never fit"
                        ))
                    }
                    None => {
                        refusal = Some(format!(
                            "needs about {:.0} MiB at micro-batch {planned_micro}, more than the {limit:.0} MiB of a device (on_oom: {:?})",
                            estimate_mb.unwrap_or(0.0),
                            self.on_oom
                        ))
                    }
                }
            }
        }
        let job = self.job(params.gpus, estimate_mb, &mut refusal);
        if refusal.is_some() && slurm.is_none() {
            estimate_mb = estimate_mb.filter(|_| params.gpus as usize <= pool.slots.len());
        }
        Ok(PlannedTrial {
            id,
            assignment,
            params,
            estimate_mb,
            note,
            refusal,
            job,
        })
    }

    /// A refusal when the pool can never hold `gpus` devices (a local sweep).
    fn pool_refusal(&self, gpus: u32) -> Option<String> {
        (self.slurm.is_none() && gpus as usize > self.pool.slots.len()).then(|| {
            format!(
                "asks for {gpus} devices but the pool has {} ({}); it could never start",
                self.pool.slots.len(),
                self.pool.describe()
            )
        })
    }

    /// On Slurm, the trial's job request, or its refusal in `refusal`.
    fn job(
        &self,
        gpus: u32,
        estimate_mb: Option<f64>,
        refusal: &mut Option<String>,
    ) -> Option<JobRequest> {
        let mut job = None;
        if let (Some(s), None) = (&self.slurm, &*refusal) {
            match job_request(&s.cluster, gpus, estimate_mb, self.time_s) {
                Ok(request) => job = Some(request),
                Err(reason) => *refusal = Some(reason.to_string()),
            }
        }
        job
    }
}

/// What a fitted `max_seq_len` is, for the plan and the checks.
pub fn fitted_note(fitted: u32, longest: usize, max_positions: usize) -> String {
    let why = if longest > max_positions {
        format!("the longest training example has {longest} tokens, cut to the model's max_position_embeddings {max_positions}")
    } else {
        format!("the longest training example, within the model's max_position_embeddings {max_positions}")
    };
    format!("max_seq_len {fitted} (not set in the sweep file: {why})")
}

/// Token lengths of the training data under the model's tokenizer, for memory estimates.
#[derive(Debug, Clone)]
struct Lengths {
    config: ModelConfig,
    /// (prompt, answer) tokens of each labelled example.
    supervised: Vec<(usize, usize)>,
    /// Tokens of each example as unlabelled text.
    text: Vec<usize>,
    /// Counted positions per example, longest first: answers (sft/lora) and texts.
    answers_desc: Vec<usize>,
    texts_desc: Vec<usize>,
    /// The longest training example in tokens, before truncation.
    longest: usize,
    /// Prompt tokens every labelled training example starts with.
    shared_prefix: usize,
    /// The weights are read from a model folder's (memory-mapped) safetensors.
    mapped_weights: bool,
}

impl Lengths {
    /// From the training set's token counts: those the checks measured, or measured here.
    fn measure(
        model: &ModelSource,
        train_file: &Path,
        train: &[Example],
        counted: Option<&TokenCounts>,
    ) -> Result<Self, PlanError> {
        let measured;
        let counts = match counted {
            Some(c) => c,
            None => {
                measured = TokenCounts::measure(&load_tokenizer(model, train)?, train);
                &measured
            }
        };
        if let Some((line, e)) = counts.first_error() {
            return Err(PlanError::Tokens {
                file: train_file.to_path_buf(),
                line,
                message: e.to_string(),
            });
        }
        let config = match model {
            ModelSource::Preset(name) => {
                let mut c = crate::spec::shape::preset(name)
                    .ok_or_else(|| PlanError::UnknownPreset(name.clone()))?;
                c.vocab_size = counts.vocab_size;
                c
            }
            ModelSource::Path(dir) => read_config(dir)?,
        };
        let supervised: Vec<(usize, usize)> = counts
            .examples
            .iter()
            .filter_map(|e| e.labelled.as_ref()?.as_ref().ok().copied())
            .collect();
        // Texts that give fewer than two tokens train nothing (and fail the checks).
        let text: Vec<usize> = counts
            .examples
            .iter()
            .filter_map(|e| e.text.as_ref().ok().copied())
            .filter(|n| *n >= 2)
            .collect();
        let mut answers_desc: Vec<usize> = supervised.iter().map(|(_, a)| *a).collect();
        answers_desc.sort_unstable_by(|a, b| b.cmp(a));
        let mut texts_desc: Vec<usize> = text.iter().map(|n| n.saturating_sub(1)).collect();
        texts_desc.sort_unstable_by(|a, b| b.cmp(a));
        Ok(Self {
            config,
            supervised,
            text,
            answers_desc,
            texts_desc,
            longest: counts.longest(),
            shared_prefix: counts.shared_prefix,
            mapped_weights: matches!(model, ModelSource::Path(_)),
        })
    }

    fn workload<'a>(&'a self, params: &'a TrialParams) -> Workload<'a> {
        let max = params.max_seq_len as usize;
        let (longest_sequence, counted_per_sequence) = match params.method {
            Method::PostPretrain => {
                let longest = self.text.iter().map(|n| (*n).min(max)).max().unwrap_or(2);
                (longest, longest.saturating_sub(1))
            }
            Method::Sft | Method::Lora => (
                self.supervised
                    .iter()
                    .map(|(p, a)| (p + a).min(max))
                    .max()
                    .unwrap_or(2),
                self.supervised.iter().map(|(_, a)| *a).max().unwrap_or(1),
            ),
            // The prompt alone; the head's one row per sequence is no counted token.
            Method::Classifier | Method::ClassifierLora => (
                self.supervised
                    .iter()
                    .map(|(p, _)| (*p).min(max))
                    .max()
                    .unwrap_or(2),
                1,
            ),
        };
        // Truncation to max_seq_len only shortens texts; the sorted lengths stay an upper bound.
        let counted_longest_first = match params.method {
            Method::PostPretrain => &self.texts_desc,
            Method::Sft | Method::Lora | Method::Classifier | Method::ClassifierLora => {
                &self.answers_desc
            }
        };
        Workload {
            config: &self.config,
            params,
            longest_sequence,
            counted_per_sequence,
            counted_longest_first: Some(counted_longest_first),
            bytes_per_value: 4,
            on_cuda: false,
            // Evaluation scores dev by label whenever the data has labels, but for the head
            // methods (one forward per dev example, no label search).
            scored_answer_tokens: if params.method.is_head() {
                0
            } else {
                self.supervised.iter().map(|(_, a)| *a).max().unwrap_or(0)
            },
            mapped_weights: self.mapped_weights,
            // A prompt cut to max_seq_len keeps only bos of what the prompts share.
            shared_prefix: match params.method {
                Method::PostPretrain => 0,
                Method::Sft | Method::Lora | Method::Classifier | Method::ClassifierLora => {
                    let cut = self.supervised.iter().any(|(p, a)| p + a > max);
                    if cut {
                        self.shared_prefix.min(1)
                    } else {
                        self.shared_prefix
                    }
                }
            },
        }
    }
}

impl Plan {
    /// Plans a parsed spec; `file` names the sweep file in messages.
    pub fn new(spec: &SweepSpec, file: &Path) -> Result<Self, PlanError> {
        Self::with_options(spec, file, PlanOptions::default())
    }

    pub fn with_options(
        spec: &SweepSpec,
        file: &Path,
        options: PlanOptions,
    ) -> Result<Self, PlanError> {
        Self::measured(spec, file, options, None)
    }

    /// `with_options`, with the training set's token counts when the checks already measured
    /// them (`check::CheckedSpec::plan`), so a run tokenizes its data once.
    pub fn measured(
        spec: &SweepSpec,
        file: &Path,
        options: PlanOptions,
        train_tokens: Option<&TokenCounts>,
    ) -> Result<Self, PlanError> {
        let fname = file.display().to_string();
        if spec.is_program() {
            return program::plan(spec, &fname, options);
        }
        let Some(data) = &spec.data else {
            return Err(PlanError::NoData { file: fname });
        };
        let absolute = |field: &'static str, p: &Path| -> Result<PathBuf, PlanError> {
            std::fs::canonicalize(p).map_err(|source| PlanError::NotFound {
                file: fname.clone(),
                field,
                path: p.to_path_buf(),
                source,
            })
        };
        let train = absolute("data.train", &data.train)?;
        let dev = absolute("data.dev", &data.dev)?;
        let test = data
            .test
            .as_ref()
            .map(|t| absolute("data.test", t))
            .transpose()?;
        let model = match (&spec.model.path, &spec.model.preset) {
            (Some(p), _) => {
                let dir = absolute("model.path", p)?;
                if !dir.join("config.json").exists() {
                    return Err(PlanError::NotAModelFolder {
                        file: fname,
                        path: p.clone(),
                    });
                }
                ModelSource::Path(dir)
            }
            (None, Some(name)) => ModelSource::Preset(name.clone()),
            (None, None) => ModelSource::Preset("tiny".into()),
        };
        let (pool, slurm, time_s) = resources(spec, &fname)?;
        let examples = crate::text::data::load_examples(&train)?;
        let lengths = Lengths::measure(&model, &train, &examples, train_tokens)?;
        let device_mb = pool.trial_memory_limit_mb(slurm.is_some());
        let fitted = (!spec.parameters.contains_key("max_seq_len")).then(|| {
            crate::spec::params::fitted_max_seq_len(lengths.longest, lengths.config.max_sequence())
        });
        let planner = TrialPlanner {
            file: fname.clone(),
            lengths: Some(lengths.clone()),
            program_batch: None,
            pool: pool.clone(),
            slurm: slurm.clone(),
            device_mb,
            fitted,
            time_s,
            memory_check: options.memory_check,
            on_oom: spec.on_oom,
            seed: spec.seed,
        };
        let (trials, bayes) = planner.plan_sweep(spec)?;
        Ok(Self {
            name: spec.name.clone(),
            results_dir: spec.results_dir(),
            train,
            dev,
            test,
            model,
            pool,
            slurm,
            swept: spec.swept_parameters(),
            trials,
            fitted_max_seq_len: fitted
                .map(|n| fitted_note(n, lengths.longest, lengths.config.max_position_embeddings)),
            train_examples: examples.len(),
            bayes,
            early_terminate: spec.early_terminate.map(|e| e.hyperband()),
            planner: Some(planner),
            program: None,
        })
    }

    /// Plans a trial proposed while the sweep runs (`method: bayes`), by the rules of the
    /// trials planned up front.
    pub fn plan_trial(&self, id: usize, assignment: Assignment) -> Result<PlannedTrial, PlanError> {
        match &self.planner {
            Some(planner) => planner.plan(id, assignment),
            None => Err(PlanError::NoTrials {
                file: self.name.clone(),
            }),
        }
    }

    /// A trial's parameters as the journal and results.csv keep them: a program's own (its
    /// assignment, `gpus` included), else the built-in trainer's typed settings.
    pub fn recorded_params(
        &self,
        t: &PlannedTrial,
    ) -> std::collections::BTreeMap<String, serde_json::Value> {
        match &self.program {
            Some(_) => t.assignment.clone(),
            None => t.params.to_map(),
        }
    }

    /// Whether the journalled parameters `journalled` are trial `t`'s (a resumed sweep must
    /// plan the same trials).
    pub fn same_trial(
        &self,
        t: &PlannedTrial,
        journalled: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> bool {
        match &self.program {
            Some(_) => *journalled == t.assignment,
            None => TrialParams::from_map(journalled).is_ok_and(|p| p.same_trial_as(&t.params)),
        }
    }

    /// How many evaluations a trial makes, as early termination's last band: a program's is
    /// not known in advance (unbounded).
    pub fn planned_evaluations(&self, params: &TrialParams) -> usize {
        if self.program.is_some() {
            usize::MAX
        } else {
            self.evaluation_steps(params).len()
        }
    }

    /// A trial's optimizer steps per epoch.
    pub fn steps_per_epoch(&self, params: &TrialParams) -> usize {
        self.train_examples
            .div_ceil(params.batch_size.max(1) as usize)
    }

    /// The optimizer steps after which a trial evaluates (`protocol::trial::evaluation_steps`).
    pub fn evaluation_steps(&self, params: &TrialParams) -> Vec<usize> {
        evaluation_steps(
            self.steps_per_epoch(params),
            params.epochs,
            params.eval_every,
        )
    }

    /// CPU threads a trial gets: its job's CPUs on Slurm, else its share of the local cores.
    pub fn threads_for(&self, t: &PlannedTrial) -> usize {
        match &t.job {
            Some(job) => job.cpus.max(1) as usize,
            None => self.pool.threads_for(t.params.gpus as usize),
        }
    }

    /// A human-readable table of the trials.
    pub fn render(&self) -> String {
        let placement = match &self.slurm {
            Some(s) => format!(
                "Slurm partition `{}` ({} node(s), most GPUs on a node {}, time limit {}), at most {} jobs submitted at once{}",
                s.cluster.partition,
                s.cluster.nodes.len(),
                s.cluster.nodes.iter().map(|n| n.gpus).max().unwrap_or(0),
                s.cluster
                    .max_time_s
                    .map(crate::spec::slurm::format_time)
                    .unwrap_or_else(|| "none".into()),
                self.pool.parallel,
                if s.cpu_stand_ins { ", CPU stand-ins for GPUs" } else { "" }
            ),
            None => format!(
                "pool: {} slot(s) [{}], at most {} at once, {} cores",
                self.pool.slots.len(),
                self.pool.describe(),
                self.pool.parallel,
                self.pool.cores
            ),
        };
        let mut out = format!(
            "sweep `{}`: {} trials ({} refused), swept: {}\n{placement}\nresults: {}\n\n",
            self.name,
            self.trials.len(),
            self.trials.iter().filter(|t| t.refusal.is_some()).count(),
            if self.swept.is_empty() {
                "nothing".to_string()
            } else {
                self.swept.join(", ")
            },
            self.results_dir.display()
        );
        if let Some(note) = &self.fitted_max_seq_len {
            out.push_str(note);
            out.push_str("\n\n");
        }
        out.push_str(&self.render_search());
        if let Some(program) = &self.program {
            out.push_str(&program::render_trials(self, program));
            return out;
        }
        let device_mb = self
            .pool
            .trial_memory_limit_mb(self.slurm.is_some())
            .map(|m| format!("{m:.0}"))
            .unwrap_or_else(|| "?".into());
        out.push_str(&format!(
            "{:>5}  {:<13} {:>10} {:>6} {:>6} {:>5} {:>5} {:>7} {:>14}  {}\n",
            "trial",
            "method",
            "lr",
            "epochs",
            "batch",
            "micro",
            "gpus",
            "threads",
            "memory MiB",
            "status"
        ));
        for t in &self.trials {
            let p = &t.params;
            let memory = t
                .estimate_mb
                .map(|e| format!("{e:.0}/{device_mb}"))
                .unwrap_or_else(|| "-".into());
            let mut status = match (&t.refusal, &t.note) {
                (Some(r), _) => format!("refused: {r}"),
                (None, Some(n)) => format!("ok: {n}"),
                (None, None) => "ok".into(),
            };
            if let Some(job) = &t.job {
                status.push_str(&format!(
                    " (job: gpu:{} cpus {} mem {} MiB)",
                    job.gpus, job.cpus, job.memory_mb
                ));
            }
            out.push_str(&format!(
                "{:>5}  {:<13} {:>10.3e} {:>6} {:>6} {:>5} {:>5} {:>7} {:>14}  {}\n",
                t.id,
                p.method.as_str(),
                p.learning_rate,
                p.epochs,
                p.batch_size,
                p.micro_batch(),
                p.gpus,
                self.threads_for(t),
                memory,
                status
            ));
        }
        out
    }
}

impl Plan {
    /// `method: bayes`, the bands of `early_terminate` (in evaluations and in each kind of
    /// trial's steps) and the most trial-steps the sweep can use.
    fn render_search(&self) -> String {
        let mut out = String::new();
        if let Some(b) = &self.bayes {
            out.push_str(&format!(
                "method: bayes (Tree-structured Parzen Estimator, seed {}): up to {} trials, each proposed from the results before it; the table below is empty until they are\n",
                b.seed, b.run_cap
            ));
        }
        // The trials whose steps bound the budget: the planned ones, or for bayes the draws
        // that stand for what the sampler can propose (the most steps any of them takes, times
        // run_cap).
        let steps_of = |p: &TrialParams| self.steps_per_epoch(p) * p.epochs as usize;
        let most_steps: usize = match &self.bayes {
            Some(b) => b.run_cap * self.bayes_most_steps(),
            None => self
                .trials
                .iter()
                .filter(|t| t.refusal.is_none())
                .map(|t| steps_of(&t.params))
                .sum(),
        };
        if let Some(rule) = &self.early_terminate {
            let typical = self.typical_params();
            let mut kinds: Vec<(u32, u32, Option<u32>)> = typical
                .iter()
                .map(|p| (p.batch_size, p.epochs, p.eval_every))
                .collect();
            kinds.sort_unstable();
            kinds.dedup();
            // A program's evaluations are not known in advance: the first bands are shown.
            let most_evaluations = match &self.program {
                Some(_) => rule.max_iter.unwrap_or(100),
                None => typical
                    .iter()
                    .map(|p| self.evaluation_steps(p).len())
                    .max()
                    .unwrap_or(usize::MAX),
            };
            if self.program.is_some() {
                kinds.clear();
            }
            match rule.bands(most_evaluations) {
                Ok(bands) => {
                    out.push_str(&format!(
                        "early_terminate: hyperband, eta {}, {}: bands at evaluations {:?}\n",
                        rule.eta,
                        if rule.strict {
                            "strict (the value at the band)"
                        } else {
                            "the best value up to the band"
                        },
                        bands
                    ));
                    for (batch, epochs, every) in kinds {
                        let Some(params) = typical.iter().find(|p| {
                            (p.batch_size, p.epochs, p.eval_every) == (batch, epochs, every)
                        }) else {
                            continue;
                        };
                        let at = self.evaluation_steps(params);
                        let steps: Vec<usize> = bands
                            .iter()
                            .filter_map(|b| at.get(b - 1).copied())
                            .collect();
                        out.push_str(&format!(
                            "  batch {batch}, {epochs} epoch(s), {} evaluations (eval_every {}): bands at steps {:?} of {}\n",
                            at.len(),
                            every.map_or("epoch".to_string(), |e| e.to_string()),
                            steps,
                            at.last().copied().unwrap_or(0)
                        ));
                    }
                }
                Err(e) => out.push_str(&format!("early_terminate: {e}\n")),
            }
        }
        // A program's steps are its own affair: nothing to count.
        if self.program.is_none() {
            out.push_str(&format!(
                "most trial-steps the sweep can use: {most_steps}{}\n\n",
                if self.early_terminate.is_some() {
                    " (fewer as trials are pruned)"
                } else {
                    ""
                }
            ));
        }
        out
    }

    /// The most steps one trial the sampler proposes can take: over the draws planning saw.
    fn bayes_most_steps(&self) -> usize {
        self.typical_params()
            .iter()
            .map(|p| self.steps_per_epoch(p) * p.epochs as usize)
            .max()
            .unwrap_or(0)
    }

    /// The planned trials' parameters, or for bayes those of the draws.
    fn typical_params(&self) -> Vec<&TrialParams> {
        match &self.bayes {
            Some(b) => b.draws.iter().collect(),
            None => self.trials.iter().map(|t| &t.params).collect(),
        }
    }
}

/// The device pool, the Slurm partition (with `executor: slurm`) and the job time limit.
fn resources(
    spec: &SweepSpec,
    fname: &str,
) -> Result<(Pool, Option<SlurmPlan>, Option<u64>), PlanError> {
    let fname = fname.to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let pool = Pool::from_spec(spec, cores).map_err(|problem| PlanError::Pool {
        file: fname.clone(),
        problem,
    })?;
    let slurm = match spec.resources.executor() {
        ExecutorKind::Local => None,
        ExecutorKind::Slurm => Some(SlurmPlan {
            cluster: read_cluster(spec.resources.partition.as_deref()).map_err(|e| {
                PlanError::Pool {
                    file: fname.clone(),
                    problem: PoolError {
                        field: if spec.resources.partition.is_some() {
                            "resources.partition"
                        } else {
                            "resources.executor"
                        },
                        message: e.to_string(),
                    },
                }
            })?,
            cpu_stand_ins: matches!(
                spec.resources.devices,
                Some(DevicesSpec::Named(DeviceKind::Cpu))
            ),
        }),
    };
    let time_s = match &spec.resources.time {
        Some(t) => {
            Some(
                crate::spec::slurm::parse_time_seconds(t).map_err(|e| PlanError::Pool {
                    file: fname.clone(),
                    problem: PoolError {
                        field: "resources.time",
                        message: e.0,
                    },
                })?,
            )
        }
        None => None,
    };
    Ok((pool, slurm, time_s))
}

fn describe(a: &Assignment) -> String {
    a.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_trials_larger_than_the_pool_and_splits_threads() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d.json");
        std::fs::write(&data, "{\"src\":\"a\",\"tgt\":\"b\"}\n").unwrap();
        let yaml = format!(
            "name: p\ndata: {{train: {0}, dev: {0}}}\nparameters:\n  gpus: {{values: [1, 2, 8]}}\nresources: {{devices: cpu, slots: 4, parallel: 2}}\n",
            data.display()
        );
        let spec = SweepSpec::from_yaml(&yaml, "s.yaml").unwrap();
        let plan = Plan::new(&spec, Path::new("s.yaml")).unwrap();
        assert_eq!(plan.trials.len(), 3);
        assert!(plan.trials[0].refusal.is_none() && plan.trials[1].refusal.is_none());
        let r = plan.trials[2].refusal.as_deref().unwrap();
        assert!(r.contains("8 devices") && r.contains("has 4"), "{r}");
        let cpu = |n: usize| -> Vec<Slot> {
            (0..n)
                .map(|_| Slot {
                    name: "cpu".into(),
                    memory_mb: None,
                    label: "cpu".into(),
                })
                .collect()
        };
        let pool = Pool {
            slots: cpu(4),
            parallel: 2,
            cores: 2,
            cpu_memory_limit_mb: None,
        };
        assert_eq!(pool.threads_for(1), 1);
        assert_eq!(pool.threads_for(2), 2);
        let pool = Pool {
            slots: cpu(2),
            parallel: 1,
            cores: 2,
            cpu_memory_limit_mb: None,
        };
        assert_eq!(pool.threads_for(1), 2);
    }

    #[test]
    fn the_memory_limit_is_the_smallest_slot_locally_and_memory_per_device_on_slurm() {
        let slot = |memory_mb: Option<f64>| Slot {
            name: "cuda:0".into(),
            memory_mb,
            label: "gpu".into(),
        };
        let pool = |slots: Vec<Slot>, limit: Option<f64>| Pool {
            slots,
            parallel: 2,
            cores: 2,
            cpu_memory_limit_mb: limit,
        };
        let local = pool(
            vec![slot(Some(8000.0)), slot(None), slot(Some(6000.0))],
            None,
        );
        assert_eq!(local.trial_memory_limit_mb(false), Some(6000.0));
        let limited = pool(vec![slot(Some(8000.0))], Some(4096.0));
        assert_eq!(limited.trial_memory_limit_mb(false), Some(8000.0));
        // Slurm has no slots of ours: only `memory_per_device` says what a device holds.
        assert_eq!(
            pool(Vec::new(), Some(4096.0)).trial_memory_limit_mb(true),
            Some(4096.0)
        );
        assert_eq!(pool(Vec::new(), None).trial_memory_limit_mb(true), None);
        assert_eq!(pool(Vec::new(), None).trial_memory_limit_mb(false), None);
    }

    fn spec_with(resources: &str, parameters: &str) -> (tempfile::TempDir, SweepSpec) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d.json");
        let lines: String = (0..20)
            .map(|i| {
                format!(
                    "{{\"src\":\"query number {i} about things\",\"tgt\":\"label{}\"}}\n",
                    i % 3
                )
            })
            .collect();
        std::fs::write(&data, lines).unwrap();
        let yaml = format!(
            "name: p\ndata: {{train: {0}, dev: {0}}}\nmodel: {{preset: tiny}}\nparameters:\n{parameters}\nresources: {resources}\n",
            data.display()
        );
        let spec = SweepSpec::from_yaml(&yaml, "s.yaml").unwrap();
        (dir, spec)
    }

    #[test]
    fn a_trial_predicted_too_large_gets_a_smaller_micro_batch_or_is_refused() {
        // 60 MiB per device: the tiny model fits at small micro-batches only.
        let (_d, spec) = spec_with(
            "{devices: cpu, slots: 2, memory_per_device: 60}",
            "  method: {value: post_pretrain}\n  batch_size: {values: [4, 512]}",
        );
        let plan = Plan::new(&spec, Path::new("s.yaml")).unwrap();
        let small = &plan.trials[0];
        assert!(small.refusal.is_none() && small.note.is_none(), "{small:?}");
        let big = &plan.trials[1];
        assert!(big.refusal.is_none(), "{big:?}");
        let micro = big.params.micro_batch();
        assert!(micro < 512 && 512 % micro == 0, "micro {micro}");
        assert!(big.estimate_mb.unwrap() <= 60.0);
        assert!(big.note.as_deref().unwrap().contains("to fit 60 MiB"));

        // 10 MiB cannot hold even one example.
        let (_d, spec) = spec_with(
            "{devices: cpu, slots: 2, memory_per_device: 10}",
            "  method: {value: sft}",
        );
        let plan = Plan::new(&spec, Path::new("s.yaml")).unwrap();
        let r = plan.trials[0].refusal.as_deref().unwrap();
        assert!(r.contains("even at micro-batch 1"), "{r}");

        // on_oom: skip refuses instead of shrinking; --no-memory-check plans it as asked.
        let (_d, mut spec) = spec_with(
            "{devices: cpu, slots: 2, memory_per_device: 60}",
            "  method: {value: post_pretrain}\n  batch_size: {value: 512}",
        );
        spec.on_oom = OnOom::Skip;
        let plan = Plan::new(&spec, Path::new("s.yaml")).unwrap();
        assert!(plan.trials[0]
            .refusal
            .as_deref()
            .unwrap()
            .contains("on_oom: Skip"));
        let unchecked = Plan::with_options(
            &spec,
            Path::new("s.yaml"),
            PlanOptions {
                memory_check: false,
            },
        )
        .unwrap();
        assert!(unchecked.trials[0].refusal.is_none());
        assert_eq!(unchecked.trials[0].params.micro_batch(), 512);
    }

    #[test]
    fn missing_data_file_names_the_field() {
        let spec = SweepSpec::from_yaml(
            "name: p\ndata: {train: /nonexistent/t.json, dev: /nonexistent/d.json}\nparameters: {}\n",
            "s.yaml",
        )
        .unwrap();
        let e = format!("{:#}", Plan::new(&spec, Path::new("s.yaml")).unwrap_err());
        assert!(
            e.contains("data.train") && e.contains("/nonexistent/t.json"),
            "{e}"
        );
    }
}
