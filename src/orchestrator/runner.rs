//! The run loop behind `sweep run`: journals the plan, starts trials on free device slots through
//! the executor, follows their progress, records every outcome, and keeps results.csv and best/
//! current after each trial. With `--resume` it picks up a sweep where it stopped.
//!
//! Only I/O and bookkeeping: what to do is decided in `decide` and `scheduler`.

use crate::protocol::evaluation::{EvalReport, TestScore};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::check::CheckedSpec;
use crate::orchestrator::decide::{self, AfterExit, OnInterrupt, Outcome};
use crate::orchestrator::executor::{Executor, LocalExecutor, Reclaimed, Report, Stop};
use crate::orchestrator::lock::FolderLock;
use crate::orchestrator::progress::SweepProgress;
use crate::orchestrator::scheduler::Scheduler;
use crate::orchestrator::slurm::{SlurmExecutor, SlurmSettings};
use crate::plan::{Plan, PlannedTrial};
use crate::protocol::journal::{self, Event, Handle, Journal};
use crate::protocol::trial::{
    read_evaluations, trial_dir, ProgressEvent, TrialConfig, TrialResult, PRUNE_FILE,
};
use crate::results::state::{Status, Trials};
use crate::results::{self, BestTrial};
use crate::spec::hyperband::Hyperband;
use crate::spec::params::TrialParams;
use crate::spec::tpe::Tpe;
use crate::spec::SweepSpec;
use crate::util::fs::write_atomic;

/// Why a sweep could not run (or go on), naming the folder or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the device pool has CUDA GPUs but this build of sweep has no CUDA support: rebuild with `scripts/build-cuda.sh` (or `cargo build --release --features cuda`), or set `resources.devices: cpu`")]
    NoCudaSupport,
    #[error("{} already holds a sweep's results; continue it with `sweep run SPEC --resume`, or start a new one with `--out NEW_DIR`", dir.display())]
    ResultsExist { dir: PathBuf },
    #[error("{message}")]
    NotResumable { message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] crate::orchestrator::lock::LockError),
    #[error(transparent)]
    Results(#[from] crate::results::ResultsError),
    #[error("all trial monitors hung up")]
    MonitorsGone,
    #[error("a proposed trial cannot be planned: {0}")]
    Plan(String),
}

pub type Result<T> = std::result::Result<T, RunError>;

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub struct RunOptions {
    /// The `sweep` executable that trials run as (`PROGRAM train DIR`).
    pub program: PathBuf,
    /// No progress bars or per-trial lines.
    pub quiet: bool,
    /// Continue the sweep already in the results folder.
    pub resume: bool,
}

#[derive(Debug)]
pub struct RunSummary {
    pub dir: PathBuf,
    /// Trials that ended with a result in this run, pruned ones included.
    pub finished: usize,
    /// Of those, the ones early termination stopped.
    pub pruned: usize,
    pub failed: usize,
    pub refused: usize,
    pub seconds: f64,
    pub best: Option<BestTrial>,
    /// The user interrupted the sweep; `--resume` continues it.
    pub interrupted: bool,
}

/// The journal and the trial rows it leads to, kept together: every event is journalled
/// (synced) and then applied to the rows in memory, so they never need re-reading.
struct Record {
    journal: Journal,
    trials: Trials,
    dir: PathBuf,
}

impl Record {
    fn log(&mut self, event: Event) -> Result<()> {
        self.journal
            .append(event.clone())
            .map_err(io_at(self.journal.path()))?;
        self.trials.apply(&event);
        Ok(())
    }

    /// Rebuilds results.csv, best/ and report.html from the rows.
    fn refresh(&self, spec: &SweepSpec) -> Result<()> {
        results::refresh(&self.dir, &self.trials.to_vec(), &spec.metric)?;
        results::html::write(&self.dir, None)?;
        Ok(())
    }
}

/// Runs every trial of the plan that has not run yet, as local child processes or as Slurm
/// jobs (`resources.executor`), and returns when all have ended (or the user interrupted). Only
/// a spec that passed check can run.
pub fn run(checked: &CheckedSpec, plan: &Plan, opts: &RunOptions) -> Result<RunSummary> {
    if plan.slurm.is_some() {
        let settings = SlurmSettings::from_spec(checked.spec(), opts.program.clone());
        let (mut executor, reports) = SlurmExecutor::new(settings);
        return run_with(checked, plan, opts, &mut executor, &reports);
    }
    let (mut executor, reports) = LocalExecutor::new(opts.program.clone());
    run_with(checked, plan, opts, &mut executor, &reports)
}

/// `run`, with trials started by `executor`, whose reports arrive on `reports`.
pub fn run_with(
    checked: &CheckedSpec,
    plan: &Plan,
    opts: &RunOptions,
    executor: &mut dyn Executor,
    reports: &Receiver<(usize, Report)>,
) -> Result<RunSummary> {
    let started = Instant::now();
    let spec = checked.spec();
    let dir = &plan.results_dir;
    let slurm_gpus = plan.slurm.as_ref().is_some_and(|s| !s.cpu_stand_ins);
    if (plan.pool.has_cuda() || slurm_gpus) && !cfg!(feature = "cuda") {
        return Err(RunError::NoCudaSupport);
    }
    let existing = dir.join(Journal::FILE).exists();
    if existing && !opts.resume {
        return Err(RunError::ResultsExist { dir: dir.clone() });
    }
    std::fs::create_dir_all(dir.join("trials")).map_err(io_at(dir))?;
    let dir = std::fs::canonicalize(dir).map_err(io_at(dir))?;
    let _lock = FolderLock::acquire(&dir)?;
    let mut record = Record {
        trials: if existing {
            check_resumable(&dir, plan, spec)?
        } else {
            Trials::default()
        },
        journal: Journal::open(&dir).map_err(io_at(&dir.join(Journal::FILE)))?,
        dir: dir.clone(),
    };

    // Trials of an earlier run that still run (Slurm jobs): followed, not started again.
    let mut reattached: Vec<(usize, Handle)> = Vec::new();
    let to_run: Vec<PlannedTrial> = if existing {
        for r in record.trials.rows().filter(|r| r.status.runs_on_resume()) {
            // Only a trial journalled as running has a run to follow; the executor may still
            // find one that was started but never journalled.
            let handle = r.handle.filter(|_| r.status == Status::Running);
            if let Reclaimed::Reattached(h) =
                executor.reclaim(r.trial, handle, &trial_dir(&dir, r.trial))
            {
                reattached.push((r.trial, h));
            }
        }
        // A pruned trial's result that arrived after the earlier orchestrator stopped.
        let pruned_without_result: Vec<usize> = record
            .trials
            .rows()
            .filter(|r| r.status == Status::Pruned && r.result.is_none())
            .map(|r| r.trial)
            .collect();
        for trial in pruned_without_result {
            if let Ok(result) = read_result(&trial_dir(&dir, trial)) {
                record.log(Event::TrialFinished { trial, result })?;
            }
        }
        // Once metric.target is reached, trials that never started stay unstarted.
        let closed = decide::target_reached(record.trials.rows(), &spec.metric);
        let runs_again = |r: &crate::results::state::TrialRow| {
            r.status.runs_on_resume()
                && !(closed && r.status == Status::Planned && r.handle.is_none())
        };
        let pending: Vec<PlannedTrial> = match &plan.bayes {
            None => plan
                .trials
                .iter()
                .filter(|t| record.trials.get(t.id).is_some_and(runs_again))
                .cloned()
                .collect(),
            // Proposed trials are planned again from their journalled values.
            Some(_) => {
                let mut pending = Vec::new();
                for r in record.trials.rows().filter(|r| runs_again(r)) {
                    if let Some(a) = &r.assignment {
                        pending.push(
                            plan.plan_trial(r.trial, a.clone())
                                .map_err(|e| RunError::Plan(e.to_string()))?,
                        );
                    }
                }
                pending
            }
        };
        record.log(Event::SweepResumed {
            trials_to_run: pending.len(),
            reattached: reattached.iter().map(|(t, _)| *t).collect(),
        })?;
        pending
    } else {
        let frozen = dir.join("spec.yaml");
        write_atomic(&frozen, checked.text().as_bytes()).map_err(io_at(&frozen))?;
        record.log(Event::SweepStarted {
            name: plan.name.clone(),
            trials: plan.trials.len(),
        })?;
        for t in &plan.trials {
            record.log(Event::TrialPlanned {
                trial: t.id,
                params: t.params.to_map(),
                estimate_mb: t.estimate_mb,
                assignment: None,
            })?;
            if let Some(reason) = &t.refusal {
                record.log(Event::TrialRefused {
                    trial: t.id,
                    reason: reason.clone(),
                })?;
            }
        }
        plan.trials
            .iter()
            .filter(|t| t.refusal.is_none())
            .cloned()
            .collect()
    };
    record.refresh(spec)?;

    let mut by_id: HashMap<usize, PlannedTrial> =
        to_run.iter().map(|t| (t.id, t.clone())).collect();
    let mut ui = SweepProgress::new(to_run.len(), opts.quiet);
    // No new trial starts once a trial reaches metric.target.
    let mut target_reached = decide::target_reached(record.trials.rows(), &spec.metric);
    let bayes = plan
        .bayes
        .as_ref()
        .map(|b| (b, Tpe::new(b.seed, b.run_cap)));
    if existing {
        ui.println(&format!(
            "resuming: {} of {} trials still to run",
            to_run.len(),
            plan.trials.len()
        ));
    } else {
        for t in plan.trials.iter().filter(|t| t.refusal.is_some()) {
            ui.println(&format!(
                "trial {:04} refused: {}",
                t.id,
                t.refusal.as_deref().unwrap_or_default()
            ));
        }
    }
    let mut scheduler = Scheduler::new(
        decide::scheduler_slots(plan),
        plan.pool.parallel,
        to_run.iter().map(|t| (t.id, t.params.gpus as usize)),
    );
    crate::orchestrator::interrupt::install();
    let interrupts_before = crate::orchestrator::interrupt::count();
    // The slots each running trial holds.
    let mut running: HashMap<usize, Vec<usize>> = HashMap::new();
    for (id, handle) in reattached {
        if let (Some(slots), Some(t)) = (scheduler.take(id), by_id.get(&id)) {
            // A run the earlier orchestrator started but could not journal: journalled now.
            let journalled = record
                .trials
                .get(id)
                .is_some_and(|r| r.status == Status::Running && r.handle == Some(handle));
            if !journalled {
                let placement = decide::placement_for(plan, t, &slots);
                let (pid, job) = handle.fields();
                record.log(Event::TrialStarted {
                    trial: id,
                    devices: placement.physical,
                    threads: placement.threads,
                    pid,
                    job,
                })?;
            }
            running.insert(id, slots);
            ui.trial_started(id, label(t));
            ui.println(&format!(
                "trial {id:04} was started as {} before: following it, not starting it again",
                describe_handle(handle)
            ));
        }
    }
    let mut stopping = false;
    let (mut finished, mut failed, mut pruned) = (0, 0, 0);
    loop {
        if let Some((search, tpe)) = &bayes {
            let proposed = record.trials.rows().count();
            let due = decide::proposals_due(
                search.run_cap,
                proposed,
                scheduler.running(),
                scheduler.queued(),
                plan.pool.parallel,
                stopping || target_reached,
            );
            for k in 0..due {
                let observations = decide::observations(record.trials.rows(), &spec.metric);
                let index = proposed + k;
                let assignment = tpe.propose(&search.domains, &observations, index);
                let t = plan
                    .plan_trial(index + 1, assignment.clone())
                    .map_err(|e| RunError::Plan(e.to_string()))?;
                record.log(Event::TrialPlanned {
                    trial: t.id,
                    params: t.params.to_map(),
                    estimate_mb: t.estimate_mb,
                    assignment: Some(assignment),
                })?;
                if let Some(reason) = &t.refusal {
                    record.log(Event::TrialRefused {
                        trial: t.id,
                        reason: reason.clone(),
                    })?;
                    ui.println(&format!("trial {:04} refused: {reason}", t.id));
                    continue;
                }
                ui.add_pending(1);
                scheduler.enqueue(t.id, t.params.gpus as usize);
                by_id.insert(t.id, t);
            }
        }
        while let Some((id, slots)) = scheduler.next_to_start() {
            let t = &by_id[&id];
            let placement = decide::placement_for(plan, t, &slots);
            let tdir = trial_dir(&dir, id);
            let params = params_to_run(t, &record.trials);
            let launched = prepare_trial(
                checked,
                plan,
                t.id,
                &params,
                &tdir,
                &placement.devices,
                placement.threads,
            )
            .and_then(|()| {
                executor
                    .start(id, &tdir, &placement)
                    .map_err(|e| e.to_string())
            });
            match launched {
                Ok(handle) => {
                    let (pid, job) = handle.fields();
                    record.log(Event::TrialStarted {
                        trial: id,
                        devices: placement.physical.clone(),
                        threads: placement.threads,
                        pid,
                        job,
                    })?;
                    running.insert(id, slots);
                    ui.trial_started(id, label(t));
                }
                Err(e) => {
                    scheduler.release(&slots);
                    failed += 1;
                    let reason = format!("could not start: {e}");
                    record.log(Event::TrialFailed {
                        trial: id,
                        reason: reason.clone(),
                    })?;
                    ui.trial_ended(id, &format!("trial {id:04} failed: {reason}"));
                    record.refresh(spec)?;
                }
            }
        }
        if scheduler.is_idle() {
            break;
        }
        let interrupts = crate::orchestrator::interrupt::count() - interrupts_before;
        match decide::on_interrupt(interrupts, stopping) {
            OnInterrupt::Continue => {}
            OnInterrupt::KillNow => {
                // Every running trial is killed and journalled as stopped.
                for (id, _) in running.drain() {
                    executor.stop(id, Stop::Kill);
                    record.log(Event::TrialStopped {
                        trial: id,
                        reason: "killed on a second interrupt".into(),
                    })?;
                }
                record.refresh(spec)?;
                ui.finish();
                return Ok(summary(
                    &dir,
                    (finished, pruned),
                    failed,
                    plan,
                    started,
                    true,
                ));
            }
            OnInterrupt::StopGracefully => {
                stopping = true;
                let dropped = scheduler.clear_queue();
                for id in running.keys() {
                    executor.stop(*id, Stop::Gracefully);
                }
                ui.println(&format!(
                    "interrupted: {} queued trials will not start, {} running ones are stopping (Ctrl-C again to kill them now); continue later with --resume",
                    dropped.len(),
                    running.len()
                ));
            }
        }
        let (id, report) = match reports.recv_timeout(Duration::from_millis(200)) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Err(RunError::MonitorsGone),
        };
        let exit = match report {
            Report::Progress(event) => {
                ui.event(id, &event);
                if let ProgressEvent::Epoch(m) = &event {
                    if !target_reached
                        && m.metric(spec.metric.name)
                            .is_some_and(|v| spec.metric.reaches_target(v))
                    {
                        target_reached = true;
                        let dropped = scheduler.clear_queue();
                        ui.println(&format!(
                            "trial {id:04} reached metric.target: no new trials start ({} queued dropped)",
                            dropped.len()
                        ));
                    }
                    if let (Some(rule), Some(t)) = (&plan.early_terminate, by_id.get(&id)) {
                        judge_trial(&mut record, &mut ui, plan, spec, rule, t)?;
                    }
                }
                continue;
            }
            Report::Waiting(reason) => {
                ui.println(&format!("trial {id:04} waiting: {reason}"));
                record.log(Event::TrialWaiting { trial: id, reason })?;
                record.refresh(spec)?;
                continue;
            }
            Report::Exited(exit) => exit,
        };
        if let Some(slots) = running.remove(&id) {
            scheduler.release(&slots);
        }
        // The trial folder's result.json is the truth for success.
        let outcome = match exit {
            Ok(()) => match read_result(&trial_dir(&dir, id)) {
                Ok(result) => Outcome::Finished(Box::new(result)),
                Err(reason) => Outcome::Failed(reason),
            },
            Err(reason) => Outcome::Failed(reason),
        };
        let t = &by_id[&id];
        if record
            .trials
            .get(id)
            .is_some_and(|r| r.status == Status::Pruned)
        {
            // Early termination stopped it: its best evaluation so far is its result.
            finished += 1;
            pruned += 1;
            match outcome {
                Outcome::Finished(result) => {
                    let line = format!(
                        "trial {id:04} pruned: {} best accuracy {} after {} steps",
                        label(t),
                        result
                            .accuracy
                            .map(|a| format!("{a:.4}"))
                            .unwrap_or_else(|| "-".into()),
                        result.steps.unwrap_or(0)
                    );
                    record.log(Event::TrialFinished {
                        trial: id,
                        result: *result,
                    })?;
                    ui.trial_ended(id, &line);
                }
                Outcome::Failed(reason) => {
                    ui.trial_ended(
                        id,
                        &format!("trial {id:04} pruned; it ended without a result: {reason}"),
                    );
                }
            }
            enforce_retention(&mut record, spec)?;
            record.refresh(spec)?;
            continue;
        }
        let micro = params_to_run(t, &record.trials).micro_batch();
        match decide::after_exit(outcome, stopping, spec.on_oom, micro, t.params.batch_size) {
            AfterExit::Finished(result) => {
                finished += 1;
                let line = format!(
                    "trial {id:04} finished: {} accuracy {} dev_loss {:.4} ({:.0} s)",
                    label(t),
                    result
                        .accuracy
                        .map(|a| format!("{a:.4}"))
                        .unwrap_or_else(|| "-".into()),
                    result.dev_loss,
                    result.seconds
                );
                record.log(Event::TrialFinished {
                    trial: id,
                    result: *result,
                })?;
                ui.trial_ended(id, &line);
            }
            AfterExit::Retry {
                micro,
                retry,
                reason,
            } => {
                record.log(Event::TrialOutOfMemory {
                    trial: id,
                    micro_batch: micro,
                    retry_micro_batch: Some(retry),
                    reason,
                })?;
                scheduler.requeue_front(id, t.params.gpus as usize);
                ui.trial_ended(
                    id,
                    &format!(
                        "trial {id:04} out of memory at micro-batch {micro}; retrying with {retry} (grad_accum {})",
                        t.params.batch_size / retry
                    ),
                );
                ui.add_pending(1);
            }
            AfterExit::OutOfMemory {
                micro,
                reason,
                why,
                stop_sweep,
            } => {
                record.log(Event::TrialOutOfMemory {
                    trial: id,
                    micro_batch: micro,
                    retry_micro_batch: None,
                    reason,
                })?;
                failed += 1;
                record.log(Event::TrialFailed {
                    trial: id,
                    reason: why.clone(),
                })?;
                ui.trial_ended(id, &format!("trial {id:04} failed: {why}"));
                if stop_sweep {
                    let dropped = scheduler.clear_queue();
                    ui.println(&format!(
                        "on_oom: fail: {} queued trials will not start",
                        dropped.len()
                    ));
                }
            }
            AfterExit::Stopped { reason } => {
                record.log(Event::TrialStopped { trial: id, reason })?;
                ui.trial_ended(id, &format!("trial {id:04} stopped"));
            }
            AfterExit::Failed { reason } => {
                failed += 1;
                record.log(Event::TrialFailed {
                    trial: id,
                    reason: reason.clone(),
                })?;
                ui.trial_ended(id, &format!("trial {id:04} failed: {reason}"));
            }
        }
        enforce_retention(&mut record, spec)?;
        record.refresh(spec)?;
    }
    ui.finish();
    if !stopping {
        record.log(Event::SweepFinished {
            seconds: started.elapsed().as_secs_f64(),
        })?;
        if let Some(test) = &plan.test {
            match score_test(&opts.program, &dir, test) {
                Ok(Some(line)) => eprintln!("{line}"),
                Ok(None) => {}
                Err(e) => eprintln!("warning: the best checkpoint was not scored on test: {e}"),
            }
            record.refresh(spec)?;
        }
    }
    Ok(summary(
        &dir,
        (finished, pruned),
        failed,
        plan,
        started,
        stopping,
    ))
}

/// Early termination for the trial that just evaluated: the bands it reached that were not
/// judged yet are judged (`Hyperband::due`, against what the other trials were judged by
/// there), each judgement journalled before anything acts on it; a trial that is stopped gets
/// its prune file, which it sees at its next step.
fn judge_trial(
    record: &mut Record,
    ui: &mut SweepProgress,
    plan: &Plan,
    spec: &SweepSpec,
    rule: &Hyperband,
    t: &PlannedTrial,
) -> Result<()> {
    let Some(row) = record.trials.get(t.id) else {
        return Ok(());
    };
    if row.status != Status::Running {
        return Ok(());
    }
    let tdir = trial_dir(&record.dir, t.id);
    let evaluations = read_evaluations(&tdir);
    let judged_by = spec
        .early_terminate
        .map_or_else(|| spec.metric.clone(), |e| e.judged_metric(&spec.metric));
    let mut losses = Vec::new();
    for m in &evaluations {
        match m.metric(judged_by.name).filter(|v| v.is_finite()) {
            Some(v) => losses.push(judged_by.as_loss(v)),
            None => break,
        }
    }
    let planned = plan.evaluation_steps(&t.params);
    let Ok(bands) = rule.bands(planned.len()) else {
        return Ok(());
    };
    let judged: Vec<usize> = row.judgements.iter().map(|j| j.band).collect();
    let due = rule.due(&bands, &losses, &judged, planned.len(), |band| {
        decide::band_history(record.trials.rows(), band, t.id)
    });
    for d in due {
        let step = evaluations.get(d.band - 1).map_or(0, |m| m.step);
        record.log(Event::TrialJudged {
            trial: t.id,
            band: d.band,
            step,
            value: d.judgement.value,
            threshold: d.judgement.threshold,
            pruned: d.judgement.stop,
        })?;
        if d.judgement.stop {
            let path = tdir.join(PRUNE_FILE);
            let note = serde_json::json!({
                "band": d.band,
                "step": step,
                "value": d.judgement.value,
                "threshold": d.judgement.threshold,
            });
            write_atomic(&path, note.to_string().as_bytes()).map_err(io_at(&path))?;
            ui.println(&format!(
                "trial {:04} pruned at band {} (step {step}): {:.4} worse than threshold {:.4}",
                t.id, d.band, d.judgement.value, d.judgement.threshold
            ));
        }
    }
    if record
        .trials
        .get(t.id)
        .is_some_and(|r| r.judgements.len() > judged.len())
    {
        record.refresh(spec)?;
    }
    Ok(())
}

/// Scores the best trial's checkpoint on `data.test`, once: in a child process (`sweep eval
/// --json`), as the orchestrator never loads a model itself. The score goes into best.json, from
/// which results.csv and the report show it. `None` when it was already scored.
fn score_test(
    program: &Path,
    dir: &Path,
    test: &Path,
) -> std::result::Result<Option<String>, String> {
    let Ok(best) = results::read_best(dir) else {
        return Ok(None);
    };
    if best.test.as_ref().is_some_and(|t| t.data == test) {
        return Ok(None);
    }
    let out = std::process::Command::new(program)
        .arg("eval")
        .arg(&best.checkpoint)
        .arg(test)
        .arg("--json")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let report: EvalReport = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("unreadable `sweep eval --json` output: {e}"))?;
    let score = TestScore {
        data: test.to_path_buf(),
        examples: report.metrics.examples,
        accuracy: report.metrics.accuracy,
        macro_f1: report.metrics.macro_f1,
    };
    let line = format!(
        "best trial {:04} on test ({}): accuracy {:.4}, macro-F1 {:.4} ({} examples); dev accuracy {}",
        best.trial,
        test.display(),
        score.accuracy,
        score.macro_f1,
        score.examples,
        best.result
            .accuracy
            .map_or("-".to_string(), |a| format!("{a:.4}"))
    );
    results::record_test(dir, best.trial, score).map_err(|e| e.to_string())?;
    Ok(Some(line))
}

/// The trial's parameters for its next run: as planned, with the micro-batch that out-of-memory
/// retries left it.
fn params_to_run(t: &PlannedTrial, trials: &Trials) -> TrialParams {
    let mut params = t.params.clone();
    if let Some(m) = trials.get(t.id).and_then(|r| r.retry_micro_batch) {
        params.micro_batch = Some(m);
    }
    params
}

fn summary(
    dir: &Path,
    (finished, pruned): (usize, usize),
    failed: usize,
    plan: &Plan,
    started: Instant,
    interrupted: bool,
) -> RunSummary {
    RunSummary {
        finished,
        pruned,
        failed,
        refused: plan.trials.iter().filter(|t| t.refusal.is_some()).count(),
        seconds: started.elapsed().as_secs_f64(),
        best: results::read_best(dir).ok(),
        dir: dir.to_path_buf(),
        interrupted,
    }
}

/// A sweep resumes only with the spec it started with, trial for trial. Returns the trials'
/// states from the journal.
fn check_resumable(dir: &Path, plan: &Plan, spec: &SweepSpec) -> Result<Trials> {
    let frozen_path = dir.join("spec.yaml");
    let frozen = SweepSpec::from_file(&frozen_path).map_err(|e| RunError::NotResumable {
        message: format!("{}: cannot resume: {e}", dir.display()),
    })?;
    let comparable = |s: &SweepSpec| SweepSpec {
        output: None,
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
        let journalled = trials
            .get(t.id)
            .and_then(|r| TrialParams::from_map(&r.params).ok());
        if !journalled.is_some_and(|p| p.same_trial_as(&t.params)) {
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

/// Under `checkpoints: {keep: N}`, deletes the checkpoints `decide::checkpoints_to_delete`
/// names. The deletion is journalled first, so a crash in between leaves a consistent record.
fn enforce_retention(record: &mut Record, spec: &SweepSpec) -> Result<()> {
    let Some(policy) = &spec.checkpoints else {
        return Ok(());
    };
    for trial in decide::checkpoints_to_delete(record.trials.rows(), &spec.metric, policy.keep) {
        record.log(Event::CheckpointDeleted { trial })?;
        let checkpoint = record
            .trials
            .get(trial)
            .and_then(|r| r.result.as_ref())
            .map(|r| r.checkpoint.clone());
        if let Some(checkpoint) = checkpoint.filter(|c| c.exists()) {
            std::fs::remove_dir_all(&checkpoint).map_err(io_at(&checkpoint))?;
        }
    }
    Ok(())
}

/// Writes the trial's folder and config.json before it starts.
fn prepare_trial(
    checked: &CheckedSpec,
    plan: &Plan,
    id: usize,
    params: &TrialParams,
    dir: &Path,
    devices: &[String],
    threads: usize,
) -> std::result::Result<(), String> {
    let config = TrialConfig {
        trial: id,
        sweep: plan.name.clone(),
        params: params.clone(),
        train: plan.train.clone(),
        dev: plan.dev.clone(),
        model: plan.model.clone(),
        metric: checked.spec().metric.clone(),
        devices: devices.to_vec(),
        threads,
    };
    let path = dir.join(TrialConfig::FILE);
    let bytes = serde_json::to_vec_pretty(&config).map_err(|e| e.to_string())?;
    // Only a running trial is ever pruned, and a pruned one never starts again.
    let _ = std::fs::remove_file(dir.join(PRUNE_FILE));
    std::fs::create_dir_all(dir)
        .and_then(|()| write_atomic(&path, &bytes))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn read_result(dir: &Path) -> std::result::Result<TrialResult, String> {
    // The trial's end (`TrialEnd`); a finished or pruned one holds its result.
    let end =
        crate::protocol::trial::TrialEnd::read(dir).map_err(|e| format!("exited 0 but {e}"))?;
    end.result().cloned().ok_or_else(|| end.message())
}

fn describe_handle(handle: Handle) -> String {
    match handle {
        Handle::Process(pid) => format!("process {pid}"),
        Handle::SlurmJob(job) => format!("Slurm job {job}"),
    }
}

fn label(t: &PlannedTrial) -> String {
    let p = &t.params;
    format!(
        "{} lr={:.0e} ep={} bs={}{}",
        p.method.as_str(),
        p.learning_rate,
        p.epochs,
        p.batch_size,
        if p.gpus > 1 {
            format!(" gpus={}", p.gpus)
        } else {
            String::new()
        }
    )
}
