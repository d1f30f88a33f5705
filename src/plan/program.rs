//! Planning a sweep of a user's own program (`program`/`command`): no data, no model, no memory
//! estimate. A trial is its parameters (any names) and the devices it holds (`gpus`, sweep's
//! one parameter with a meaning of its own); it is refused at plan time when the pool (or the
//! Slurm partition) can never hold them. The argument vector of each run is made here from the
//! parameters (`ProgramPlan::argv`), by `spec::program`'s W&B rules.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::{resources, Plan, PlanError, PlanOptions, PlannedTrial, TrialPlanner};
use crate::protocol::trial::ProgramRun;
use crate::spec::params::TrialParams;
use crate::spec::program::{argv, ArgvError, CommandTemplate, NestedArgs, ProgramContext};
use crate::spec::search::Assignment;
use crate::spec::{ModelSource, OomBatch, SweepSpec};

/// The sweep parameter that keeps sweep's meaning with a program: devices the trial holds.
pub const GPUS: &str = "gpus";

/// How a program sweep's trials are run.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramPlan {
    /// `${program}`, absolute, when the file names one.
    pub program: Option<PathBuf>,
    /// Where each trial's program runs: the folder `sweep run` was started in, as for
    /// `wandb agent`.
    pub cwd: PathBuf,
    /// What `${interpreter}` is on this machine.
    pub interpreter: String,
    #[serde(skip)]
    pub template: CommandTemplate,
    /// Parameters that came from nested `parameters:` blocks (dotted names).
    pub nested: BTreeSet<String>,
    pub oom_batch: Option<OomBatch>,
}

impl ProgramPlan {
    /// The program's parameters for one run: the assignment without `gpus`, nested names nested
    /// again, and after out-of-memory retries (`micro_batch` below the planned `batch`) the
    /// per-device batch at `micro_batch` and the accumulation steps multiplied to match.
    pub fn params(
        &self,
        assignment: &Assignment,
        batch: u32,
        micro_batch: u32,
    ) -> BTreeMap<String, Value> {
        let mut flat: BTreeMap<String, Value> = assignment
            .iter()
            .filter(|(k, _)| k.as_str() != GPUS)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(b) = &self.oom_batch {
            if micro_batch > 0 && micro_batch < batch {
                flat.insert(b.per_device.clone(), Value::from(micro_batch));
                if let Some(acc) = &b.accumulate {
                    let factor = u64::from(batch / micro_batch);
                    let before = flat.get(acc).and_then(Value::as_u64).unwrap_or(1);
                    flat.insert(acc.clone(), Value::from(before * factor));
                }
            }
        }
        nest(flat, &self.nested)
    }

    /// The argument vector of one run, with `params` (from [`ProgramPlan::params`]) and the
    /// trial folder's parameter file for `${args_json_file}`.
    pub fn argv(
        &self,
        params: &BTreeMap<String, Value>,
        args_json_file: &Path,
    ) -> Result<Vec<OsString>, ArgvError> {
        let env = |name: &str| std::env::var_os(name);
        let program = self.program.clone().unwrap_or_default();
        let ctx = ProgramContext {
            program: &program,
            interpreter: self.interpreter.as_ref(),
            params,
            args_json_file,
            nested: NestedArgs::Dotted,
            env: &env,
        };
        argv(&self.template, &ctx)
    }
}

impl ProgramPlan {
    /// What `sweep train` runs for one run of a trial: `params` typed as planned (its batch the
    /// per-device batch), `micro_batch` what out-of-memory retries left it, `dir` the trial
    /// folder, `cuda_visible_devices` the GPU ids it holds (`None` on Slurm: the job's own).
    pub fn run(
        &self,
        assignment: &Assignment,
        params: &TrialParams,
        dir: &Path,
        cuda_visible_devices: Option<String>,
    ) -> Result<ProgramRun, ArgvError> {
        let values = self.params(assignment, params.batch_size, params.micro_batch());
        let argv = self.argv(&values, &dir.join(crate::protocol::program::PARAMS_JSON))?;
        Ok(ProgramRun {
            argv: argv
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            cwd: self.cwd.clone(),
            params: values,
            cuda_visible_devices,
            batch: self.oom_batch.as_ref().map(|_| params.micro_batch()),
        })
    }
}

/// Dotted names in `nested` as nested objects (`optimizer.lr` → `{optimizer: {lr: ..}}`); other
/// names, dots included (Hydra's `model.lr`), stay as they are.
pub fn nest(flat: BTreeMap<String, Value>, nested: &BTreeSet<String>) -> BTreeMap<String, Value> {
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for (name, value) in flat {
        if !nested.contains(&name) {
            out.insert(name, value);
            continue;
        }
        let mut parts = name.split('.');
        let first = parts.next().unwrap_or_default().to_string();
        let rest: Vec<&str> = parts.collect();
        let mut slot = out
            .entry(first)
            .or_insert_with(|| Value::Object(Default::default()));
        for part in rest {
            if !slot.is_object() {
                *slot = Value::Object(Default::default());
            }
            let Value::Object(map) = slot else { break };
            slot = map
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Default::default()));
        }
        *slot = value;
    }
    out
}

/// A positive whole number of the assignment, or why not.
fn count_of(assignment: &Assignment, name: &str) -> Result<Option<u32>, String> {
    match assignment.get(name) {
        None => Ok(None),
        Some(v) => match v.as_u64().filter(|n| *n >= 1 && *n <= u64::from(u32::MAX)) {
            Some(n) => Ok(Some(n as u32)),
            None => Err(format!(
                "{name} must be a whole number of at least 1, got {v}"
            )),
        },
    }
}

impl TrialPlanner {
    /// A program trial: its devices and its batch (for out-of-memory retries), refused when
    /// the pool or the partition can never hold it.
    pub(super) fn plan_program_trial(
        &self,
        id: usize,
        assignment: Assignment,
    ) -> Result<PlannedTrial, PlanError> {
        let fail = |message: String| PlanError::Trial {
            file: self.file.clone(),
            trial: id,
            assignment: super::describe(&assignment),
            message,
        };
        let gpus = count_of(&assignment, GPUS).map_err(fail)?.unwrap_or(1);
        let batch = match &self.program_batch {
            Some(name) => count_of(&assignment, name).map_err(fail)?,
            None => None,
        };
        let mut known = serde_json::Map::new();
        known.insert(GPUS.into(), Value::from(gpus));
        if let Some(b) = batch {
            known.insert("batch_size".into(), Value::from(b));
        }
        let params: TrialParams =
            serde_json::from_value(Value::Object(known)).map_err(|e| fail(e.to_string()))?;
        let params = TrialParams {
            seed: Some(self.seed),
            ..params
        };
        let mut refusal = self.pool_refusal(gpus);
        let job = self.job(gpus, None, &mut refusal);
        Ok(PlannedTrial {
            id,
            assignment,
            params,
            estimate_mb: None,
            note: None,
            refusal,
            job,
        })
    }
}

/// Plans a sweep whose trials run `spec`'s program.
pub(super) fn plan(spec: &SweepSpec, fname: &str, options: PlanOptions) -> Result<Plan, PlanError> {
    let (pool, slurm, time_s) = resources(spec, fname)?;
    let program = spec
        .program
        .as_ref()
        .map(|p| {
            std::fs::canonicalize(p).map_err(|source| PlanError::NotFound {
                file: fname.to_string(),
                field: "program",
                path: p.clone(),
                source,
            })
        })
        .transpose()?;
    let template =
        CommandTemplate::from_yaml(spec.command.as_deref().unwrap_or(&[])).map_err(|e| {
            PlanError::Program {
                file: fname.to_string(),
                message: e.to_string(),
            }
        })?;
    let cwd = std::env::current_dir().map_err(|source| PlanError::NotFound {
        file: fname.to_string(),
        field: "program",
        path: PathBuf::from("."),
        source,
    })?;
    let planner = TrialPlanner {
        file: fname.to_string(),
        lengths: None,
        program_batch: spec.oom_batch.as_ref().map(|b| b.per_device.clone()),
        pool: pool.clone(),
        slurm: slurm.clone(),
        device_mb: None,
        fitted: None,
        time_s,
        memory_check: options.memory_check,
        on_oom: spec.on_oom,
        seed: spec.seed,
    };
    let (trials, bayes) = planner.plan_sweep(spec)?;
    Ok(Plan {
        name: spec.name.clone(),
        results_dir: spec.results_dir(),
        train: PathBuf::new(),
        dev: PathBuf::new(),
        test: None,
        model: ModelSource::Preset(String::new()),
        pool,
        slurm,
        swept: spec.swept_parameters(),
        trials,
        fitted_max_seq_len: None,
        train_examples: 0,
        bayes,
        early_terminate: spec.early_terminate.map(|e| e.hyperband()),
        planner: Some(planner),
        program: Some(ProgramPlan {
            program,
            cwd,
            interpreter: crate::protocol::program::interpreter().to_string(),
            template,
            nested: spec.nested.clone(),
            oom_batch: spec.oom_batch.clone(),
        }),
    })
}

/// The trial table of a program sweep: each trial's devices, status and command.
pub(super) fn render_trials(plan: &Plan, program: &ProgramPlan) -> String {
    let mut out = format!("{:>5}  {:>5}  {:<40}  command\n", "trial", "gpus", "status");
    for t in &plan.trials {
        let status = match (&t.refusal, &t.job) {
            (Some(r), _) => format!("refused: {r}"),
            (None, Some(job)) => format!("ok (job: gpu:{} cpus {})", job.gpus, job.cpus),
            (None, None) => "ok".into(),
        };
        let params = program.params(&t.assignment, 0, 0);
        let command = match program.argv(&params, Path::new("params.json")) {
            Ok(argv) => argv
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => e.to_string(),
        };
        out.push_str(&format!(
            "{:>5}  {:>5}  {:<40}  {command}\n",
            t.id, t.params.gpus, status
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn assignment(v: Value) -> Assignment {
        serde_json::from_value(v).unwrap()
    }

    fn program_plan(oom: Option<OomBatch>, nested: &[&str]) -> ProgramPlan {
        ProgramPlan {
            program: Some(PathBuf::from("/p/train.py")),
            cwd: PathBuf::from("/p"),
            interpreter: "python3".into(),
            template: CommandTemplate::default_command(),
            nested: nested.iter().map(|s| s.to_string()).collect(),
            oom_batch: oom,
        }
    }

    #[test]
    fn nested_names_nest_again_and_dotted_ones_stay() {
        let flat: BTreeMap<String, Value> = serde_json::from_value(json!({
            "optimizer.lr": 0.1, "optimizer.nadam.beta": 0.9, "model.lr": 0.01, "x": 1
        }))
        .unwrap();
        let nested: BTreeSet<String> = ["optimizer.lr", "optimizer.nadam.beta"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            Value::Object(nest(flat, &nested).into_iter().collect()),
            json!({"optimizer": {"lr": 0.1, "nadam": {"beta": 0.9}}, "model.lr": 0.01, "x": 1})
        );
    }

    #[test]
    fn a_retry_halves_the_batch_and_doubles_the_accumulation() {
        let p = program_plan(
            Some(OomBatch {
                per_device: "bs".into(),
                accumulate: Some("accum".into()),
            }),
            &[],
        );
        let a = assignment(json!({"bs": 32, "accum": 2, "gpus": 2, "lr": 0.1}));
        let planned = p.params(&a, 32, 32);
        assert_eq!(
            Value::Object(planned.into_iter().collect()),
            json!({"bs": 32, "accum": 2, "lr": 0.1})
        );
        let retried = p.params(&a, 32, 8);
        assert_eq!(
            Value::Object(retried.clone().into_iter().collect()),
            json!({"bs": 8, "accum": 8, "lr": 0.1})
        );
        let argv = p.argv(&retried, Path::new("/t/params.json")).unwrap();
        assert_eq!(
            argv,
            [
                "/usr/bin/env",
                "python3",
                "/p/train.py",
                "--accum=8",
                "--bs=8",
                "--lr=0.1"
            ]
            .map(OsString::from)
        );
    }

    #[test]
    fn gpus_and_the_batch_must_be_counts() {
        let a = assignment(json!({"gpus": 0}));
        assert!(count_of(&a, GPUS).unwrap_err().contains("at least 1"));
        let a = assignment(json!({"gpus": 2.5}));
        assert!(count_of(&a, GPUS).is_err());
        let a = assignment(json!({"gpus": 2}));
        assert_eq!(count_of(&a, GPUS), Ok(Some(2)));
        assert_eq!(count_of(&a, "bs"), Ok(None));
    }
}
