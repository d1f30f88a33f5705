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
        }
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
                r.status = Status::Finished;
                r.result = Some(result.clone());
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
        // Events about trials never planned change nothing.
        let before = t.clone();
        t.apply(&Event::TrialFailed {
            trial: 9,
            reason: "?".into(),
        });
        assert_eq!(t, before);
    }
}
