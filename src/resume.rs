//! A trial's resume point: after every epoch the trainer saves the trainable weights, the
//! optimizer's moments and where it stood, so an interrupted trial continues from its last
//! finished epoch instead of from scratch. `trials/NNNN/resume/` is replaced atomically and
//! removed once the trial finishes.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::model::CausalLm;
use crate::optim::AdamW;
use crate::params::TrialParams;
use crate::trial::TrialResult;

const DIR: &str = "resume";
const STATE: &str = "state.json";
const TENSORS: &str = "tensors.safetensors";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResumeState {
    /// The last finished epoch.
    pub epoch: u32,
    /// Optimizer steps taken so far.
    pub step: usize,
    pub train_tokens: usize,
    pub train_seconds: f64,
    /// Wall time of the trial so far, over all its runs.
    pub seconds: f64,
    pub best: Option<TrialResult>,
    /// The parameters it was saved under; a different trial never resumes from it.
    pub params: TrialParams,
}

pub fn save(trial_dir: &Path, state: &ResumeState, model: &CausalLm, opt: &AdamW) -> Result<()> {
    let final_dir = trial_dir.join(DIR);
    let tmp = trial_dir.join("resume.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let (_, m, v) = opt.state();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (i, (name, var)) in model.trainable().iter().enumerate() {
        tensors.insert(format!("param.{name}"), var.as_tensor().clone());
        tensors.insert(format!("m.{name}"), m[i].clone());
        tensors.insert(format!("v.{name}"), v[i].clone());
    }
    candle_core::safetensors::save(&tensors, tmp.join(TENSORS))?;
    std::fs::write(tmp.join(STATE), serde_json::to_vec_pretty(state)?)?;
    let old = trial_dir.join("resume.old");
    if final_dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(&final_dir, &old)?;
    }
    std::fs::rename(&tmp, &final_dir)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Restores the saved point into `model` and `opt`, if there is one for these parameters.
pub fn load(
    trial_dir: &Path,
    params: &TrialParams,
    model: &CausalLm,
    opt: &mut AdamW,
) -> Result<Option<ResumeState>> {
    let dir = trial_dir.join(DIR);
    // A crash between the two renames of `save` leaves the previous point in resume.old.
    let dir = if dir.join(STATE).exists() {
        dir
    } else if trial_dir.join("resume.old").join(STATE).exists() {
        trial_dir.join("resume.old")
    } else {
        return Ok(None);
    };
    let state: ResumeState = serde_json::from_str(
        &std::fs::read_to_string(dir.join(STATE)).context("reading the resume state")?,
    )
    .context("parsing the resume state")?;
    // The micro-batch may change between runs (an out-of-memory retry): it splits the same
    // step differently and leaves the results the same.
    let same_trial = TrialParams {
        micro_batch: params.micro_batch,
        ..state.params.clone()
    } == *params;
    if !same_trial {
        bail!(
            "{}: saved for different trial parameters; delete it to start this trial afresh",
            dir.display()
        );
    }
    let mut tensors = candle_core::safetensors::load(dir.join(TENSORS), model.device())?;
    let mut take = |key: String| -> Result<Tensor> {
        tensors
            .remove(&key)
            .with_context(|| format!("{}: `{key}` missing", dir.display()))
    };
    let (mut m, mut v) = (Vec::new(), Vec::new());
    for (name, var) in model.trainable() {
        let value = take(format!("param.{name}"))?.to_dtype(var.dtype())?;
        if value.dims() != var.dims() {
            bail!(
                "{}: `{name}` has shape {:?}, the model {:?}",
                dir.display(),
                value.dims(),
                var.dims()
            );
        }
        var.set(&value)?;
        m.push(take(format!("m.{name}"))?.to_dtype(var.dtype())?);
        v.push(take(format!("v.{name}"))?.to_dtype(var.dtype())?);
    }
    opt.load_state(state.step, m, v)?;
    Ok(Some(state))
}

/// Drops the resume point of a finished trial.
pub fn clear(trial_dir: &Path) -> std::io::Result<()> {
    for d in [DIR, "resume.tmp", "resume.old"] {
        let p = trial_dir.join(d);
        if p.exists() {
            std::fs::remove_dir_all(p)?;
        }
    }
    Ok(())
}
