//! `sweep run --resume`: whether a results folder can be continued with the sweep file given,
//! what became of the earlier run's trials (a run still going is re-attached to, not started
//! again; a pruned trial's late result is collected), and which trials run again.

use std::path::Path;

use crate::orchestrator::decide;
use crate::orchestrator::executor::{Executor, Reclaimed};
use crate::orchestrator::record::{io_at, Record, Result, RunError};
use crate::plan::{Plan, PlannedTrial};
use crate::protocol::journal::{self, Event, Handle};
use crate::protocol::trial::{trial_dir, TrialEnd};
use crate::results::state::{Status, TrialRow, Trials};
use crate::spec::SweepSpec;

/// A sweep resumes only with the spec it started with, trial for trial. Returns the trials'
/// states from the journal.
pub fn check_resumable(dir: &Path, plan: &Plan, spec: &SweepSpec) -> Result<Trials> {
    let frozen_path = dir.join("spec.yaml");
    let frozen = SweepSpec::read_frozen(&frozen_path).map_err(|e| RunError::NotResumable {
        message: format!("{}: cannot resume: {e}", dir.display()),
    })?;
    // `run_cap` may differ: `sweep run --count N` sets it without changing the file.
    let comparable = |s: &SweepSpec| SweepSpec {
        output: None,
        run_cap: None,
        ..s.clone()
    };
    if comparable(&frozen) != comparable(spec) {
        return Err(RunError::NotResumable {
            message: format!(
                "the sweep file differs from the one this sweep started with ({}); resume needs the same file, or start a new sweep with `--out NEW_DIR`",
                frozen_path.display()
            ),
        });
    }
    let trials = Trials::from_entries(&journal::read(dir).map_err(io_at(dir))?);
    for t in &plan.trials {
        let journalled = trials.get(t.id).map(|r| &r.params);
        if !journalled.is_some_and(|p| plan.same_trial(t, p)) {
            return Err(RunError::NotResumable {
                message: format!(
                    "trial {} of {} does not match the plan of the sweep file; start a new sweep with `--out NEW_DIR`",
                    t.id,
                    dir.display()
                ),
            });
        }
    }
    Ok(trials)
}

/// What a resumed sweep goes on with.
pub struct Resumed {
    /// Trials to start (again), in plan order.
    pub to_run: Vec<PlannedTrial>,
    /// Trials whose earlier run still goes on (a Slurm job) and is followed, with its handle.
    pub reattached: Vec<(usize, Handle)>,
}

/// Takes over the earlier run's trials: reclaims each that may still run (the executor either
/// clears it or re-attaches to it), collects the results of pruned trials that arrived after
/// the earlier orchestrator stopped, decides which trials run again, and journals the resume.
pub(crate) fn resume(
    record: &mut Record,
    plan: &Plan,
    spec: &SweepSpec,
    executor: &mut dyn Executor,
) -> Result<Resumed> {
    let dir = record.dir.clone();
    let mut reattached = Vec::new();
    for r in record.trials.rows().filter(|r| r.status.runs_on_resume()) {
        // Only a trial journalled as running has a run to follow; the executor may still find
        // one that was started but never journalled.
        let handle = r.handle.filter(|_| r.status == Status::Running);
        if let Reclaimed::Reattached(h) =
            executor.reclaim(r.trial, handle, &trial_dir(&dir, r.trial))
        {
            reattached.push((r.trial, h));
        }
    }
    let pruned_without_result: Vec<usize> = record
        .trials
        .rows()
        .filter(|r| r.status == Status::Pruned && r.result.is_none())
        .map(|r| r.trial)
        .collect();
    for trial in pruned_without_result {
        if let Some(result) = TrialEnd::read(&trial_dir(&dir, trial))
            .ok()
            .and_then(|end| end.result().cloned())
        {
            record.log(Event::TrialFinished { trial, result })?;
        }
    }
    let closed = decide::target_reached(record.trials.rows(), &spec.metric);
    let again = |r: &TrialRow| runs_again(r, closed);
    let to_run: Vec<PlannedTrial> = match &plan.bayes {
        None => plan
            .trials
            .iter()
            .filter(|t| record.trials.get(t.id).is_some_and(again))
            .cloned()
            .collect(),
        // Proposed trials are planned again from their journalled values.
        Some(_) => {
            let mut pending = Vec::new();
            for r in record.trials.rows().filter(|r| again(r)) {
                if let Some(a) = &r.assignment {
                    pending.push(plan.plan_trial(r.trial, a.clone())?);
                }
            }
            pending
        }
    };
    record.log(Event::SweepResumed {
        trials_to_run: to_run.len(),
        reattached: reattached.iter().map(|(t, _)| *t).collect(),
    })?;
    Ok(Resumed { to_run, reattached })
}

/// Whether a trial runs (again) on resume; once `metric.target` is reached (`closed`), trials
/// that never started stay unstarted.
pub fn runs_again(row: &TrialRow, closed: bool) -> bool {
    row.status.runs_on_resume()
        && !(closed && row.status == Status::Planned && row.handle.is_none())
}

/// Whether the earlier orchestrator journalled the start of the run now re-attached to (it may
/// have started it and stopped before it could).
pub fn start_journalled(row: Option<&TrialRow>, handle: Handle) -> bool {
    row.is_some_and(|r| r.status == Status::Running && r.handle == Some(handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: Status, handle: Option<Handle>) -> TrialRow {
        TrialRow {
            trial: 1,
            status,
            reason: String::new(),
            params: Default::default(),
            result: None,
            handle,
            checkpoint_deleted: false,
            estimate_mb: None,
            retries: 0,
            retry_micro_batch: None,
            judgements: Vec::new(),
            assignment: None,
        }
    }

    #[test]
    fn which_trials_run_again_on_resume() {
        let job = Some(Handle::SlurmJob(7));
        // (status, handle, target reached, runs again)
        let table = [
            (Status::Planned, None, false, true),
            (Status::Planned, None, true, false),
            // Started once (then requeued for a retry): it goes on even past the target.
            (Status::Planned, job, true, true),
            (Status::Running, job, true, true),
            (Status::Stopped, None, false, true),
            (Status::Stopped, None, true, true),
            (Status::Finished, None, false, false),
            (Status::Failed, None, false, false),
            (Status::Refused, None, false, false),
            (Status::Pruned, None, false, false),
        ];
        for (status, handle, closed, want) in table {
            assert_eq!(
                runs_again(&row(status, handle), closed),
                want,
                "{status:?} {handle:?} closed={closed}"
            );
        }
    }

    #[test]
    fn a_reattached_run_is_journalled_unless_the_earlier_orchestrator_did() {
        let h = Handle::SlurmJob(7);
        assert!(start_journalled(Some(&row(Status::Running, Some(h))), h));
        // Another job of the trial, journalled earlier: this one was not.
        assert!(!start_journalled(
            Some(&row(Status::Running, Some(Handle::SlurmJob(6)))),
            h
        ));
        assert!(!start_journalled(Some(&row(Status::Planned, None)), h));
        assert!(!start_journalled(None, h));
    }
}
