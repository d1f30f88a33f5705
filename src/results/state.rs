//! A trial's states and their transitions, in one place: the run loop applies every event it
//! journals to its rows in memory, and the results folder rebuilds the same rows from the journal
//! with the same `apply`, so the two can never disagree.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::protocol::journal::{Entry, Event, Handle};
use crate::protocol::trial::TrialResult;

/// Where a trial stands, as the journal tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Planned,
    Refused,
    Running,
    Finished,
    Failed,
    /// Interrupted by the user; runs again on resume.
    Stopped,
    /// Stopped early by `early_terminate` (its judgement in `TrialRow::pruned`); its best
    /// evaluation so far is its result, ranked like a finished trial's. Never runs again.
    Pruned,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Planned => "planned",
            Status::Refused => "refused",
            Status::Running => "running",
            Status::Finished => "finished",
            Status::Failed => "failed",
            Status::Stopped => "stopped",
            Status::Pruned => "pruned",
        }
    }

    /// Whether the trial's result (when it has one) competes for best/ and the leaderboard:
    /// it ran to its end, or to where early termination stopped it.
    pub fn ranks(&self) -> bool {
        matches!(self, Status::Finished | Status::Pruned)
    }

    /// Whether a resumed sweep runs the trial (again): it has not ended for good.
    pub fn runs_on_resume(&self) -> bool {
        matches!(self, Status::Planned | Status::Running | Status::Stopped)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrialRow {
    pub trial: usize,
    pub status: Status,
    pub reason: String,
    pub params: BTreeMap<String, Value>,
    pub result: Option<TrialResult>,
    /// The process or Slurm job of the latest start.
    pub handle: Option<Handle>,
    /// Deleted under the checkpoint retention policy.
    pub checkpoint_deleted: bool,
    /// Predicted peak memory per device at plan time, MiB.
    pub estimate_mb: Option<f64>,
    /// Out-of-memory retries so far.
    pub retries: u32,
    /// The micro-batch the next run must use after out-of-memory retries.
    pub retry_micro_batch: Option<u32>,
    /// `early_terminate`'s judgements of the trial, one per band it reached, in order; the last
    /// one stopped it when the trial is `Pruned`.
    pub judgements: Vec<BandJudgement>,
    /// The parameter values a sampler proposed (`method: bayes`), as journalled.
    pub assignment: Option<BTreeMap<String, Value>>,
}

/// One `TrialJudged` event: the trial at one band of `early_terminate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BandJudgement {
    /// Evaluations the trial had made.
    pub band: usize,
    /// The optimizer step of the evaluation that reached the band.
    pub step: usize,
    /// The metric as a loss (negated when maximised).
    pub value: f64,
    pub threshold: f64,
    pub pruned: bool,
}

impl TrialRow {
    /// The judgement that pruned the trial, if one did.
    pub fn pruned_by(&self) -> Option<&BandJudgement> {
        self.judgements.last().filter(|j| j.pruned)
    }
}

/// Every trial's latest state, by trial id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trials {
    rows: BTreeMap<usize, TrialRow>,
}

impl Trials {
    /// The state the journal's entries lead to.
    pub fn from_entries(entries: &[Entry]) -> Self {
        let mut trials = Self::default();
        for e in entries {
            trials.apply(&e.event);
        }
        trials
    }

    /// The one transition function: what an event does to the trial it names.
    pub fn apply(&mut self, event: &Event) {
        if let Event::TrialPlanned {
            trial,
            params,
            estimate_mb,
            assignment,
        } = event
        {
            self.rows.insert(
                *trial,
                TrialRow {
                    trial: *trial,
                    status: Status::Planned,
                    reason: String::new(),
                    params: params.clone(),
                    result: None,
                    handle: None,
                    checkpoint_deleted: false,
                    estimate_mb: *estimate_mb,
                    retries: 0,
                    retry_micro_batch: None,
                    judgements: Vec::new(),
                    assignment: assignment.clone(),
                },
            );
            return;
        }
        let Some(r) = event.trial().and_then(|t| self.rows.get_mut(&t)) else {
            return;
        };
        match event {
            Event::TrialRefused { reason, .. } => {
                r.status = Status::Refused;
                r.reason = reason.clone();
            }
            Event::TrialFailed { reason, .. } => {
                r.status = Status::Failed;
                r.reason = reason.clone();
            }
            Event::TrialStarted { pid, job, .. } => {
                r.status = Status::Running;
                r.reason.clear();
                r.handle = job.map(Handle::SlurmJob).or(pid.map(Handle::Process));
            }
            Event::TrialWaiting { reason, .. } => r.reason = reason.clone(),
            Event::TrialStopped { reason, .. } => {
                r.status = Status::Stopped;
                r.reason = reason.clone();
            }
            Event::TrialOutOfMemory {
                retry_micro_batch,
                reason,
                ..
            } => {
                r.retries += 1;
                r.retry_micro_batch = *retry_micro_batch;
                r.reason = reason.clone();
                r.status = Status::Planned;
            }
            Event::CheckpointDeleted { .. } => r.checkpoint_deleted = true,
            Event::TrialFinished { result, .. } => {
                // A pruned trial's result is its best evaluation before it stopped.
                if r.status != Status::Pruned {
                    r.status = Status::Finished;
                }
                r.result = Some(result.clone());
            }
            Event::TrialJudged {
                band,
                step,
                value,
                threshold,
                pruned,
                ..
            } => {
                r.judgements.push(BandJudgement {
                    band: *band,
                    step: *step,
                    value: *value,
                    threshold: *threshold,
                    pruned: *pruned,
                });
                if *pruned {
                    r.status = Status::Pruned;
                    r.reason = format!(
                        "pruned at band {band} (evaluation {band}, step {step}): {value:.4} worse than threshold {threshold:.4}"
                    );
                }
            }
            Event::TrialPlanned { .. }
            | Event::SweepStarted { .. }
            | Event::SweepFinished { .. }
            | Event::SweepResumed { .. } => {}
        }
    }

    pub fn get(&self, trial: usize) -> Option<&TrialRow> {
        self.rows.get(&trial)
    }

    /// Rows in trial order.
    pub fn rows(&self) -> impl Iterator<Item = &TrialRow> {
        self.rows.values()
    }

    pub fn to_vec(&self) -> Vec<TrialRow> {
        self.rows.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> TrialResult {
        serde_json::from_value(serde_json::json!({
            "best_epoch": 1, "accuracy": 0.5, "dev_loss": 1.0, "train_loss": 1.0, "seconds": 1.0,
            "tokens_per_sec": 1.0, "peak_rss_mb": 1.0, "trainable_params": 1, "micro_batch": 8,
            "grad_accum": 1, "checkpoint": "/c"
        }))
        .unwrap()
    }

    #[test]
    fn a_trial_goes_through_retry_stop_and_finish() {
        let mut t = Trials::default();
        t.apply(&Event::TrialPlanned {
            trial: 1,
            params: BTreeMap::new(),
            estimate_mb: Some(10.0),
            assignment: None,
        });
        assert_eq!(t.get(1).unwrap().status, Status::Planned);
        t.apply(&Event::TrialStarted {
            trial: 1,
            devices: vec!["cpu".into()],
            threads: 1,
            pid: Some(42),
            job: None,
        });
        assert_eq!(t.get(1).unwrap().status, Status::Running);
        assert_eq!(t.get(1).unwrap().handle, Some(Handle::Process(42)));
        t.apply(&Event::TrialWaiting {
            trial: 1,
            reason: "pending: ReqNodeNotAvail".into(),
        });
        assert_eq!(t.get(1).unwrap().status, Status::Running);
        assert_eq!(t.get(1).unwrap().reason, "pending: ReqNodeNotAvail");
        t.apply(&Event::TrialStarted {
            trial: 1,
            devices: vec!["cpu".into()],
            threads: 1,
            pid: None,
            job: Some(7),
        });
        assert_eq!(t.get(1).unwrap().handle, Some(Handle::SlurmJob(7)));
        t.apply(&Event::TrialOutOfMemory {
            trial: 1,
            micro_batch: 8,
            retry_micro_batch: Some(4),
            reason: "out of memory".into(),
        });
        let r = t.get(1).unwrap();
        assert_eq!(
            (r.status, r.retries, r.retry_micro_batch),
            (Status::Planned, 1, Some(4))
        );
        t.apply(&Event::TrialStopped {
            trial: 1,
            reason: "interrupt".into(),
        });
        assert!(t.get(1).unwrap().status.runs_on_resume());
        t.apply(&Event::TrialFinished {
            trial: 1,
            result: result(),
        });
        t.apply(&Event::CheckpointDeleted { trial: 1 });
        let r = t.get(1).unwrap();
        assert_eq!(r.status, Status::Finished);
        assert!(r.checkpoint_deleted && r.result.is_some());
        assert!(!r.status.runs_on_resume());
        // A pruned trial stays pruned when its best evaluation arrives as its result.
        t.apply(&Event::TrialPlanned {
            trial: 2,
            params: BTreeMap::new(),
            estimate_mb: None,
            assignment: None,
        });
        t.apply(&Event::TrialJudged {
            trial: 2,
            band: 1,
            step: 4,
            value: -0.1,
            threshold: -0.5,
            pruned: true,
        });
        t.apply(&Event::TrialFinished {
            trial: 2,
            result: result(),
        });
        let r = t.get(2).unwrap();
        assert_eq!(r.status, Status::Pruned);
        assert!(r.result.is_some() && !r.status.runs_on_resume() && r.status.ranks());
        assert_eq!(r.pruned_by().map(|j| j.band), Some(1));
        assert!(r.reason.contains("threshold -0.5000"), "{}", r.reason);
        // Events about trials never planned change nothing.
        let before = t.clone();
        t.apply(&Event::TrialFailed {
            trial: 9,
            reason: "?".into(),
        });
        assert_eq!(t, before);
    }
}
