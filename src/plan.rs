//! Planning: from a sweep file to the list of trials, each with typed parameters, the devices it
//! needs, and a refusal when it can never run. Nothing trains here; `sweep plan` prints this.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::params::TrialParams;
use crate::search::{assignments, Assignment};
use crate::spec::{DeviceKind, DevicesSpec, SweepSpec};
use crate::trial::ModelSource;

/// The devices trials are placed on. On a CPU-only machine every slot is the CPU; a trial with
/// `gpus: k` holds k slots (and so a larger share of the cores).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Pool {
    /// One name per slot: `cpu`, or `cuda:N`.
    pub slots: Vec<String>,
    /// Most trials running at once.
    pub parallel: usize,
    /// CPU cores shared among running trials.
    pub cores: usize,
}

impl Pool {
    pub fn from_spec(spec: &SweepSpec, cores: usize) -> Result<Self> {
        let parallel = spec.resources.parallel.unwrap_or(2);
        let cpu = |n: usize| vec!["cpu".to_string(); n];
        let slots = match &spec.resources.devices {
            None
            | Some(DevicesSpec::Named(DeviceKind::Auto))
            | Some(DevicesSpec::Named(DeviceKind::Cpu)) => {
                cpu(spec.resources.slots.unwrap_or(parallel))
            }
            Some(DevicesSpec::Named(DeviceKind::Cuda)) | Some(DevicesSpec::Ids(_))
                if !cfg!(feature = "cuda") =>
            {
                bail!("resources.devices: this build of sweep has no CUDA support; rebuild with `cargo build --release --features cuda`, or use `devices: cpu`")
            }
            Some(DevicesSpec::Named(DeviceKind::Cuda)) => {
                bail!("resources.devices: `cuda` needs the device ids for now, e.g. `devices: [0, 1]`")
            }
            Some(DevicesSpec::Ids(ids)) => {
                if ids.is_empty() {
                    bail!("resources.devices: the list of device ids is empty");
                }
                ids.iter().map(|i| format!("cuda:{i}")).collect()
            }
        };
        Ok(Self {
            slots,
            parallel,
            cores: cores.max(1),
        })
    }

    /// CPU threads for a trial holding `held` slots: the cores split between the trials that can
    /// run at once.
    pub fn threads_for(&self, held: usize) -> usize {
        let concurrent = self.parallel.min(self.slots.len()).max(1);
        (self.cores * held / concurrent).clamp(1, self.cores)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedTrial {
    /// 1-based; the trial folder is `trials/{id:04}`.
    pub id: usize,
    pub assignment: Assignment,
    pub params: TrialParams,
    /// Why the trial can never run, if so.
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    pub results_dir: PathBuf,
    pub train: PathBuf,
    pub dev: PathBuf,
    pub model: ModelSource,
    pub pool: Pool,
    pub swept: Vec<String>,
    pub trials: Vec<PlannedTrial>,
}

impl Plan {
    /// Plans a parsed spec; `file` names the sweep file in messages.
    pub fn new(spec: &SweepSpec, file: &Path) -> Result<Self> {
        let fname = file.display().to_string();
        let absolute = |field: &str, p: &Path| -> Result<PathBuf> {
            std::fs::canonicalize(p)
                .with_context(|| format!("{fname}: {field}: `{}` not found", p.display()))
        };
        let train = absolute("data.train", &spec.data.train)?;
        let dev = absolute("data.dev", &spec.data.dev)?;
        let model = match (&spec.model.path, &spec.model.preset) {
            (Some(p), _) => {
                let dir = absolute("model.path", p)?;
                if !dir.join("config.json").exists() {
                    bail!("{fname}: model.path: `{}` has no config.json (a Hugging Face model folder is expected)", p.display());
                }
                ModelSource::Path(dir)
            }
            (None, Some(name)) => ModelSource::Preset(name.clone()),
            (None, None) => ModelSource::Preset("tiny".into()),
        };
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let pool = Pool::from_spec(spec, cores).with_context(|| fname.clone())?;
        let mut trials = Vec::new();
        for (i, assignment) in assignments(spec, &fname)?.into_iter().enumerate() {
            let id = i + 1;
            let params = TrialParams::from_assignment(&assignment, spec.seed).map_err(|e| {
                anyhow::anyhow!("{fname}: trial {id} ({}): {e}", describe(&assignment))
            })?;
            let refusal = if params.gpus as usize > pool.slots.len() {
                Some(format!(
                    "asks for {} devices but the pool has {} ({}); it could never start",
                    params.gpus,
                    pool.slots.len(),
                    pool.slots.join(", ")
                ))
            } else {
                None
            };
            trials.push(PlannedTrial {
                id,
                assignment,
                params,
                refusal,
            });
        }
        if trials.is_empty() {
            bail!("{fname}: the sweep has no trials");
        }
        Ok(Self {
            name: spec.name.clone(),
            results_dir: spec.results_dir(),
            train,
            dev,
            model,
            pool,
            swept: spec.swept_parameters(),
            trials,
        })
    }

    /// A human-readable table of the trials.
    pub fn render(&self) -> String {
        let mut out = format!(
            "sweep `{}`: {} trials ({} refused), swept: {}\npool: {} slot(s) [{}], at most {} at once, {} cores\nresults: {}\n\n",
            self.name,
            self.trials.len(),
            self.trials.iter().filter(|t| t.refusal.is_some()).count(),
            if self.swept.is_empty() { "nothing".to_string() } else { self.swept.join(", ") },
            self.pool.slots.len(),
            self.pool.slots.join(", "),
            self.pool.parallel,
            self.pool.cores,
            self.results_dir.display()
        );
        out.push_str(&format!(
            "{:>5}  {:<13} {:>10} {:>6} {:>6} {:>5} {:>5} {:>7}  {}\n",
            "trial", "method", "lr", "epochs", "batch", "micro", "gpus", "threads", "status"
        ));
        for t in &self.trials {
            let p = &t.params;
            out.push_str(&format!(
                "{:>5}  {:<13} {:>10.3e} {:>6} {:>6} {:>5} {:>5} {:>7}  {}\n",
                t.id,
                p.method.as_str(),
                p.learning_rate,
                p.epochs,
                p.batch_size,
                p.micro_batch(),
                p.gpus,
                self.pool.threads_for(p.gpus as usize),
                t.refusal
                    .as_deref()
                    .map(|r| format!("refused: {r}"))
                    .unwrap_or_else(|| "ok".into())
            ));
        }
        out
    }
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
        let pool = Pool {
            slots: vec!["cpu".into(); 4],
            parallel: 2,
            cores: 2,
        };
        assert_eq!(pool.threads_for(1), 1);
        assert_eq!(pool.threads_for(2), 2);
        let pool = Pool {
            slots: vec!["cpu".into(); 2],
            parallel: 1,
            cores: 2,
        };
        assert_eq!(pool.threads_for(1), 2);
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
