//! A trial's resume point: after every epoch the trainer saves the trainable weights, the
//! optimizer's moments and where it stood, so an interrupted trial continues from its last
//! finished epoch instead of from scratch. `trials/NNNN/resume/` is replaced atomically and
//! removed once the trial finishes.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::protocol::trial::TrialResult;
use crate::spec::params::TrialParams;
use crate::trainer::error::{bad_file, AtPath, Result};
use crate::trainer::model::CausalLm;
use crate::trainer::optim::AdamW;
use crate::util::fs::{completed_dir, replace_dir, staging_dir};

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
    /// Saved mid-epoch (on the pre-timeout signal): how far epoch `epoch + 1` had come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<PartialEpoch>,
}

/// Steps of an epoch already taken when a resume point was saved inside it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartialEpoch {
    pub steps: usize,
    pub loss_sum: f64,
}

pub fn save(trial_dir: &Path, state: &ResumeState, model: &CausalLm, opt: &AdamW) -> Result<()> {
    let final_dir = trial_dir.join(DIR);
    let tmp = staging_dir(&final_dir).at(&final_dir)?;
    let (_, m, v) = opt.state();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (i, (name, var)) in model.trainable().iter().enumerate() {
        tensors.insert(format!("param.{name}"), var.as_tensor().clone());
        tensors.insert(format!("m.{name}"), m[i].clone());
        tensors.insert(format!("v.{name}"), v[i].clone());
    }
    candle_core::safetensors::save(&tensors, tmp.join(TENSORS))?;
    let state_path = tmp.join(STATE);
    std::fs::write(
        &state_path,
        serde_json::to_vec_pretty(state).at(&state_path)?,
    )
    .at(&state_path)?;
    replace_dir(&tmp, &final_dir).at(&final_dir)?;
    Ok(())
}

/// Restores the saved point into `model` and `opt`, if there is one for these parameters.
pub fn load(
    trial_dir: &Path,
    params: &TrialParams,
    model: &CausalLm,
    opt: &mut AdamW,
) -> Result<Option<ResumeState>> {
    // A crash between the two renames of `save` leaves the previous point in resume.old.
    let Some(dir) = completed_dir(&trial_dir.join(DIR), STATE) else {
        return Ok(None);
    };
    let state_path = dir.join(STATE);
    let state: ResumeState =
        serde_json::from_str(&std::fs::read_to_string(&state_path).at(&state_path)?)
            .at(&state_path)?;
    // The micro-batch may change between runs (an out-of-memory retry): it splits the same
    // step differently and leaves the results the same.
    if !state.params.same_trial_as(params) {
        return Err(bad_file(
            &dir,
            "saved for different trial parameters; delete it to start this trial afresh",
        ));
    }
    let mut tensors = candle_core::safetensors::load(dir.join(TENSORS), model.device())?;
    let mut take = |key: String| -> Result<Tensor> {
        tensors
            .remove(&key)
            .ok_or_else(|| bad_file(&dir, format!("`{key}` missing")))
    };
    let (mut m, mut v) = (Vec::new(), Vec::new());
    for (name, var) in model.trainable() {
        let value = take(format!("param.{name}"))?.to_dtype(var.dtype())?;
        if value.dims() != var.dims() {
            return Err(bad_file(
                &dir,
                format!(
                    "`{name}` has shape {:?}, the model {:?}",
                    value.dims(),
                    var.dims()
                ),
            ));
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
