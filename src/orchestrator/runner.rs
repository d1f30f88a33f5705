//! The run loop behind `sweep run`: journals the plan, starts trials on free device slots through
//! the executor, follows their progress, records every outcome, and keeps results.csv and best/
//! current after each trial. With `--resume` it picks up a sweep where it stopped (`resume`).
//!
//! Only I/O and bookkeeping: every event the loop meets goes through `respond`, a pure function
//! that returns actions; the loop carries them out through the executor, the journal, the
//! scheduler and a `Reporter` (it never prints).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub use crate::orchestrator::record::{Result, RunError};

use crate::check::CheckedSpec;
use crate::orchestrator::decide;
use crate::orchestrator::executor::{
    log_tail, Executor, Exit, LocalExecutor, Report, StartError, LOG_FILE,
};
use crate::orchestrator::interrupt;
use crate::orchestrator::lock::FolderLock;
use crate::orchestrator::progress::SweepProgress;
use crate::orchestrator::record::{io_at, Record};
use crate::orchestrator::reporter::{Quiet, Reporter};
use crate::orchestrator::respond::{
    self, Action, Closed, Count, Judging, LoopEvent, Situation, TrialView,
};
use crate::orchestrator::resume::{self, Resumed};
use crate::orchestrator::scheduler::Scheduler;
use crate::orchestrator::slurm::{SlurmExecutor, SlurmSettings};
use crate::plan::{Plan, PlannedTrial};
use crate::protocol::evaluation::{EvalReport, TestScore};
use crate::protocol::journal::{Event, Journal};
use crate::protocol::trial::{
    read_evaluations, trial_dir, TrialConfig, TrialEnd, TrialResult, PRUNE_FILE,
};
use crate::results::state::{Status, Trials};
use crate::results::{self, BestTrial};
use crate::spec::params::TrialParams;
use crate::spec::tpe::Tpe;
use crate::spec::SweepSpec;
use crate::util::fs::{write_atomic, write_replacing};

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

/// Runs every trial of the plan that has not run yet, as local child processes or as Slurm
/// jobs (`resources.executor`), and returns when all have ended (or the user interrupted). Only
/// a spec that passed check can run.
pub fn run(checked: &CheckedSpec, plan: &Plan, opts: &RunOptions) -> Result<RunSummary> {
    let mut bars;
    let mut quiet = Quiet;
    let reporter: &mut dyn Reporter = if opts.quiet {
        &mut quiet
    } else {
        bars = SweepProgress::new();
        &mut bars
    };
    if plan.slurm.is_some() {
        let settings = SlurmSettings::from_spec(checked.spec(), opts.program.clone());
        let (mut executor, reports) = SlurmExecutor::new(settings);
        return run_with(checked, plan, opts, &mut executor, &reports, reporter);
    }
    let (mut executor, reports) = LocalExecutor::new(opts.program.clone());
    run_with(checked, plan, opts, &mut executor, &reports, reporter)
}

/// `run`, with trials started by `executor`, whose reports arrive on `reports`, and the news
/// told to `reporter`.
pub fn run_with(
    checked: &CheckedSpec,
    plan: &Plan,
    opts: &RunOptions,
    executor: &mut dyn Executor,
    reports: &Receiver<(usize, Report)>,
    reporter: &mut dyn Reporter,
) -> Result<RunSummary> {
    let started = Instant::now();
    let spec = checked.spec();
    let (dir, existing) = open_results(plan, opts)?;
    let _lock = FolderLock::acquire(&dir)?;
    let trials = if existing {
        resume::check_resumable(&dir, plan, spec)?
    } else {
        Trials::default()
    };
    let mut record = Record::open(&dir, trials)?;
    let Resumed { to_run, reattached } = if existing {
        let resumed = resume::resume(&mut record, plan, spec, executor)?;
        reporter.line(&format!(
            "resuming: {} of {} trials still to run",
            resumed.to_run.len(),
            plan.trials.len()
        ));
        resumed
    } else {
        begin(&mut record, checked, plan, reporter)?
    };
    record.refresh(spec)?;
    reporter.add_pending(to_run.len() as u64);
    let mut run = Loop::new(checked, plan, record, executor, reporter, &to_run);
    run.follow(reattached)?;
    let killed = run.run(reports)?;
    run.record.refresh(spec)?;
    run.reporter.finish();
    let interrupted = killed || run.stopping;
    if !interrupted {
        run.record.log(Event::SweepFinished {
            seconds: started.elapsed().as_secs_f64(),
        })?;
        run.record.sync()?;
        if let Some(test) = &plan.test {
            match score_test(&opts.program, &dir, test) {
                Ok(Some(line)) => run.reporter.outcome(&line),
                Ok(None) => {}
                Err(e) => run.reporter.outcome(&format!(
                    "warning: the best checkpoint was not scored on test: {e}"
                )),
            }
            run.record.refresh(spec)?;
        }
    }
    Ok(RunSummary {
        finished: run.tally.finished,
        pruned: run.tally.pruned,
        failed: run.tally.failed,
        refused: plan.trials.iter().filter(|t| t.refusal.is_some()).count(),
        seconds: started.elapsed().as_secs_f64(),
        best: results::read_best(&dir).ok(),
        dir,
        interrupted,
    })
}

/// The results folder, made and canonical, and whether it holds a sweep already.
fn open_results(plan: &Plan, opts: &RunOptions) -> Result<(PathBuf, bool)> {
    let dir = &plan.results_dir;
    let slurm_gpus = plan.slurm.as_ref().is_some_and(|s| !s.cpu_stand_ins);
    // A user's program drives the GPUs itself: sweep only hands them out.
    let trains_here = plan.program.is_none();
    if trains_here && (plan.pool.has_cuda() || slurm_gpus) && !cfg!(feature = "cuda") {
        return Err(RunError::NoCudaSupport);
    }
    let existing = dir.join(Journal::FILE).exists();
    if existing && !opts.resume {
        return Err(RunError::ResultsExist { dir: dir.clone() });
    }
    std::fs::create_dir_all(dir.join("trials")).map_err(io_at(dir))?;
    let dir = std::fs::canonicalize(dir).map_err(io_at(dir))?;
    Ok((dir, existing))
}

/// A new sweep: its spec frozen beside the results, its plan journalled (refusals told).
fn begin(
    record: &mut Record,
    checked: &CheckedSpec,
    plan: &Plan,
    reporter: &mut dyn Reporter,
) -> Result<Resumed> {
    let frozen = record.dir.join("spec.yaml");
    let text = checked.spec().frozen_text(checked.text());
    write_atomic(&frozen, text.as_bytes()).map_err(io_at(&frozen))?;
    record.log(Event::SweepStarted {
        name: plan.name.clone(),
        trials: plan.trials.len(),
    })?;
    for t in &plan.trials {
        record.log(Event::TrialPlanned {
            trial: t.id,
            params: plan.recorded_params(t),
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
    for t in &plan.trials {
        if let Some(reason) = &t.refusal {
            reporter.line(&format!("trial {:04} refused: {reason}", t.id));
        }
    }
    Ok(Resumed {
        to_run: plan
            .trials
            .iter()
            .filter(|t| t.refusal.is_none())
            .cloned()
            .collect(),
        reattached: Vec::new(),
    })
}

/// Trials that ended in this run, by how they count.
#[derive(Debug, Default)]
struct Tally {
    finished: usize,
    pruned: usize,
    failed: usize,
}

/// The run loop's state, and the actions it carries out.
struct Loop<'a> {
    checked: &'a CheckedSpec,
    plan: &'a Plan,
    spec: &'a SweepSpec,
    record: Record,
    executor: &'a mut dyn Executor,
    reporter: &'a mut dyn Reporter,
    scheduler: Scheduler,
    by_id: HashMap<usize, PlannedTrial>,
    /// The slots each running trial holds.
    running: HashMap<usize, Vec<usize>>,
    tpe: Option<Tpe>,
    stopping: bool,
    /// No new trial starts once a trial reaches metric.target.
    target_reached: bool,
    tally: Tally,
    /// The trial whose folder was last made ahead (`make_next_ahead`).
    made_ahead: Option<usize>,
}

impl<'a> Loop<'a> {
    fn new(
        checked: &'a CheckedSpec,
        plan: &'a Plan,
        record: Record,
        executor: &'a mut dyn Executor,
        reporter: &'a mut dyn Reporter,
        to_run: &[PlannedTrial],
    ) -> Self {
        let spec = checked.spec();
        Self {
            checked,
            plan,
            spec,
            target_reached: decide::target_reached(record.trials.rows(), &spec.metric),
            record,
            executor,
            reporter,
            scheduler: Scheduler::new(
                decide::scheduler_slots(plan),
                plan.pool.parallel,
                to_run.iter().map(|t| (t.id, t.params.gpus as usize)),
            ),
            by_id: to_run.iter().map(|t| (t.id, t.clone())).collect(),
            running: HashMap::new(),
            tpe: plan.bayes.as_ref().map(|b| Tpe::new(b.seed, b.run_cap)),
            stopping: false,
            tally: Tally::default(),
            made_ahead: None,
        }
    }

    /// Runs until every trial ended (false) or a second interrupt killed them (true).
    fn run(&mut self, reports: &Receiver<(usize, Report)>) -> Result<bool> {
        interrupt::install();
        let interrupts_before = interrupt::count();
        loop {
            self.propose()?;
            self.launch()?;
            self.make_next_ahead();
            if self.scheduler.is_idle() {
                return Ok(false);
            }
            let interrupts = interrupt::count() - interrupts_before;
            if self.respond(LoopEvent::Interrupts(interrupts))? {
                return Ok(true);
            }
            self.record.refresh_if_stale(self.spec)?;
            // What the loop journalled since it last waited goes to disk in one sync.
            self.record.sync()?;
            let (id, report) = match reports.recv_timeout(Duration::from_millis(200)) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Err(RunError::MonitorsGone),
            };
            let Some(trial) = self.view(id) else {
                continue;
            };
            let event = match report {
                Report::Progress(event) => LoopEvent::Progress {
                    trial,
                    event: *event,
                },
                Report::Waiting(reason) => LoopEvent::Waiting { trial: id, reason },
                Report::Exited(exit) => {
                    if let Some(slots) = self.running.remove(&id) {
                        self.scheduler.release(&slots);
                    }
                    let end = self.end_of(id, &exit);
                    LoopEvent::Ended { trial, end }
                }
            };
            if self.respond(event)? {
                return Ok(true);
            }
        }
    }

    /// The trial's end: what its result.json says, or what its exit and log say when it left
    /// none (`respond::resolve_end`).
    fn end_of(&self, id: usize, exit: &Exit) -> TrialEnd {
        let dir = trial_dir(&self.record.dir, id);
        let end = TrialEnd::read(&dir);
        let tail = if end.is_err() {
            log_tail(&dir.join(LOG_FILE))
        } else {
            Vec::new()
        };
        let micro = self
            .by_id
            .get(&id)
            .map(|t| decide::params_to_run(t, &self.record.trials).micro_batch())
            .unwrap_or(0);
        respond::resolve_end(exit, end, micro, &tail)
    }

    /// What the loop knows of trial `id`, for an event about it.
    fn view(&self, id: usize) -> Option<TrialView> {
        let t = self.by_id.get(&id)?;
        Some(TrialView {
            id,
            label: respond::label_of(self.plan, t),
            batch_size: t.params.batch_size,
            pruned: self
                .record
                .trials
                .get(id)
                .is_some_and(|r| r.status == Status::Pruned),
        })
    }

    fn situation(&self) -> Situation<'a> {
        let mut running: Vec<usize> = self.running.keys().copied().collect();
        running.sort_unstable();
        Situation {
            metric: &self.spec.metric,
            on_oom: self.spec.on_oom,
            judges: self.plan.early_terminate.is_some(),
            stopping: self.stopping,
            target_reached: self.target_reached,
            running,
            queued: self.scheduler.queued(),
        }
    }

    /// Responds to `event`: true when the run ends now.
    fn respond(&mut self, event: LoopEvent) -> Result<bool> {
        let actions = respond::respond(event, &self.situation());
        self.carry_out(actions)
    }

    /// Does what the actions say, in order: true when one ends the run.
    fn carry_out(&mut self, actions: Vec<Action>) -> Result<bool> {
        for action in actions {
            match action {
                Action::Journal(event) => self.record.log(event)?,
                Action::Tell(line) => self.reporter.line(&line),
                Action::Show { trial, event } => self.reporter.trial_event(trial, &event),
                Action::ShowStarted { trial, label } => self.reporter.trial_started(trial, &label),
                Action::ShowEnded { trial, line } => self.reporter.trial_ended(trial, &line),
                Action::Stop { trial, how } => self.executor.stop(trial, how),
                Action::Judge { trial } => self.judge(trial)?,
                Action::Prune { trial, note } => {
                    let path = trial_dir(&self.record.dir, trial).join(PRUNE_FILE);
                    write_atomic(&path, note.to_string().as_bytes()).map_err(io_at(&path))?;
                }
                Action::Requeue { trial } => {
                    let gpus = self.by_id.get(&trial).map_or(1, |t| t.params.gpus as usize);
                    self.scheduler.requeue_front(trial, gpus);
                    self.reporter.add_pending(1);
                }
                Action::Enqueue { trial, gpus } => {
                    self.scheduler.enqueue(trial, gpus);
                    self.reporter.add_pending(1);
                }
                Action::DropQueue => {
                    self.scheduler.clear_queue();
                }
                Action::Close(Closed::Interrupted) => self.stopping = true,
                Action::Close(Closed::TargetReached) => self.target_reached = true,
                Action::Count(Count::Finished) => self.tally.finished += 1,
                Action::Count(Count::Pruned) => self.tally.pruned += 1,
                Action::Count(Count::Failed) => self.tally.failed += 1,
                Action::EnforceRetention => enforce_retention(&mut self.record, self.spec)?,
                Action::Refresh => self.record.refresh_soon(self.spec)?,
                Action::Finish { .. } => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Follows the runs of an earlier orchestrator that still go on, instead of starting them.
    fn follow(&mut self, reattached: Vec<(usize, crate::protocol::journal::Handle)>) -> Result<()> {
        for (id, handle) in reattached {
            let Some(t) = self.by_id.get(&id).cloned() else {
                continue;
            };
            let (Some(slots), Some(trial)) = (self.scheduler.take(id), self.view(id)) else {
                continue;
            };
            let placement = decide::placement_for(self.plan, &t, &slots);
            let journalled = resume::start_journalled(self.record.trials.get(id), handle);
            self.running.insert(id, slots);
            self.respond(LoopEvent::Reattached {
                trial,
                handle,
                placement,
                journalled,
            })?;
        }
        Ok(())
    }

    /// Starts every queued trial the scheduler lets start now.
    fn launch(&mut self) -> Result<()> {
        while let Some((id, slots)) = self.scheduler.next_to_start() {
            let (Some(t), Some(trial)) = (self.by_id.get(&id).cloned(), self.view(id)) else {
                self.scheduler.release(&slots);
                continue;
            };
            let placement = decide::placement_for(self.plan, &t, &slots);
            let dir = trial_dir(&self.record.dir, id);
            let params = decide::params_to_run(&t, &self.record.trials);
            let durable = self.executor.inputs_read_later();
            let launched = prepare_trial(
                self.checked,
                self.plan,
                &t,
                &params,
                &dir,
                &placement,
                durable,
            )
            .and_then(|()| self.executor.start(id, &dir, &placement));
            let event = match launched {
                Ok(handle) => {
                    self.running.insert(id, slots);
                    LoopEvent::Started {
                        trial,
                        handle,
                        placement,
                    }
                }
                Err(e) => {
                    self.scheduler.release(&slots);
                    LoopEvent::StartFailed {
                        trial,
                        error: e.to_string(),
                    }
                }
            };
            self.respond(event)?;
        }
        Ok(())
    }

    /// Has the executor make the folder of the trial due to start next while the running ones
    /// run (`Executor::make_ahead`), once per trial.
    fn make_next_ahead(&mut self) {
        let Some(id) = self.scheduler.head() else {
            return;
        };
        if self.made_ahead.replace(id) != Some(id) {
            let dir = trial_dir(&self.record.dir, id);
            self.executor.make_ahead(&dir, self.plan.program.is_some());
        }
    }

    /// `method: bayes`: proposes the trials due now (`decide::proposals_due`), each learning
    /// from every result before it.
    fn propose(&mut self) -> Result<()> {
        let plan = self.plan;
        let (Some(search), Some(tpe)) = (&plan.bayes, self.tpe.take()) else {
            return Ok(());
        };
        let proposed = self.propose_with(search, &tpe);
        self.tpe = Some(tpe);
        proposed
    }

    fn propose_with(&mut self, search: &crate::plan::BayesSearch, tpe: &Tpe) -> Result<()> {
        let proposed = self.record.trials.rows().count();
        let due = decide::proposals_due(
            search.run_cap,
            proposed,
            self.scheduler.running(),
            self.scheduler.queued(),
            self.plan.pool.parallel,
            self.stopping || self.target_reached,
        );
        for k in 0..due {
            let observations = decide::observations(self.record.trials.rows(), &self.spec.metric);
            let index = proposed + k;
            let assignment = tpe.propose(&search.domains, &observations, index);
            let t = self.plan.plan_trial(index + 1, assignment.clone())?;
            let event = LoopEvent::Proposed {
                trial: TrialView {
                    id: t.id,
                    label: respond::label_of(self.plan, &t),
                    batch_size: t.params.batch_size,
                    pruned: false,
                },
                gpus: t.params.gpus as usize,
                params: self.plan.recorded_params(&t),
                estimate_mb: t.estimate_mb,
                assignment,
                refusal: t.refusal.clone(),
            };
            self.by_id.insert(t.id, t);
            self.respond(event)?;
        }
        Ok(())
    }

    /// Early termination for a trial that just evaluated (`respond::judge`), while it runs.
    fn judge(&mut self, id: usize) -> Result<()> {
        let (Some(rule), Some(t)) = (&self.plan.early_terminate, self.by_id.get(&id)) else {
            return Ok(());
        };
        let Some(row) = self.record.trials.get(id) else {
            return Ok(());
        };
        if row.status != Status::Running {
            return Ok(());
        }
        let evaluations = read_evaluations(&trial_dir(&self.record.dir, id));
        let judged_by = self.spec.early_terminate.map_or_else(
            || self.spec.metric.clone(),
            |e| e.judged_metric(&self.spec.metric),
        );
        let judged: Vec<usize> = row.judgements.iter().map(|j| j.band).collect();
        let judging = Judging {
            rule,
            trial: id,
            planned: self.plan.planned_evaluations(&t.params),
            evaluations: &evaluations,
            judged_by: &judged_by,
            judged: &judged,
        };
        let rows = &self.record.trials;
        let actions = respond::judge(&judging, |band| decide::band_history(rows.rows(), band, id));
        self.carry_out(actions)?;
        Ok(())
    }
}

/// Why the best checkpoint could not be scored on `data.test`.
#[derive(Debug, thiserror::Error)]
pub enum TestScoreError {
    #[error("cannot start {}: {source}", program.display())]
    Start {
        program: PathBuf,
        source: std::io::Error,
    },
    /// `sweep eval` failed, with what it said.
    #[error("{0}")]
    Eval(String),
    #[error("unreadable `sweep eval --json` output: {0}")]
    Output(#[from] serde_json::Error),
    #[error(transparent)]
    Record(#[from] crate::results::ResultsError),
}

/// Scores the best trial's checkpoint on `data.test`, once: in a child process (`sweep eval
/// --json`), as the orchestrator never loads a model itself. The score goes into best.json, from
/// which results.csv and the report show it. Returns the line to tell; `None` when it was
/// already scored.
fn score_test(
    program: &Path,
    dir: &Path,
    test: &Path,
) -> std::result::Result<Option<String>, TestScoreError> {
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
        .map_err(|source| TestScoreError::Start {
            program: program.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(TestScoreError::Eval(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let report: EvalReport = serde_json::from_slice(&out.stdout)?;
    let score = TestScore {
        data: test.to_path_buf(),
        examples: report.metrics.examples,
        accuracy: report.metrics.accuracy,
        macro_f1: report.metrics.macro_f1,
        levels: report.levels,
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
    results::record_test(dir, best.trial, score)?;
    Ok(Some(line))
}

/// Under `checkpoints: {keep: N}`, deletes the checkpoints `decide::checkpoints_to_delete`
/// names. The deletion is journalled first, so a crash in between leaves a consistent record.
fn enforce_retention(record: &mut Record, spec: &SweepSpec) -> Result<()> {
    let Some(policy) = &spec.checkpoints else {
        return Ok(());
    };
    for trial in decide::checkpoints_to_delete(record.trials.rows(), &spec.metric, policy.keep) {
        record.log(Event::CheckpointDeleted { trial })?;
        record.sync()?;
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

/// Writes the trial's folder and config.json before it starts, and clears what an earlier run
/// of it left that this one must not be read as: its prune file (only a running trial is ever
/// pruned, and a pruned one never starts again) and its end (result.json). config.json is
/// synced when `durable` (`Executor::inputs_read_later`).
fn prepare_trial(
    checked: &CheckedSpec,
    plan: &Plan,
    t: &PlannedTrial,
    params: &TrialParams,
    dir: &Path,
    placement: &decide::Placement,
    durable: bool,
) -> std::result::Result<(), StartError> {
    let id = t.id;
    let io_at = |what: String| move |source| StartError::Io { what, source };
    std::fs::create_dir_all(dir).map_err(io_at(format!("creating {}", dir.display())))?;
    // A program's command and parameter files (`params.json`, `wandb-config.yaml`); on the
    // local pool it sees exactly its GPUs (none: an empty CUDA_VISIBLE_DEVICES).
    let program = match &plan.program {
        Some(p) => {
            let cuda = match plan.slurm {
                Some(_) => None,
                None => Some(placement.cuda_visible_devices.clone().unwrap_or_default()),
            };
            let run = p
                .run(&t.assignment, params, dir, cuda)
                .map_err(|e| StartError::Rejected(e.to_string()))?;
            crate::protocol::program::write_param_files(dir, &run.params).map_err(io_at(
                format!("writing the parameters into {}", dir.display()),
            ))?;
            Some(run)
        }
        None => None,
    };
    let config = TrialConfig {
        trial: id,
        sweep: plan.name.clone(),
        params: params.clone(),
        train: plan.train.clone(),
        dev: plan.dev.clone(),
        model: plan.model.clone(),
        metric: checked.spec().metric.clone(),
        devices: placement.devices.clone(),
        threads: placement.threads,
        label_separator: checked.spec().label_separator().map(str::to_string),
        system_prompt: checked.spec().system_prompt(),
        program,
    };
    let path = dir.join(TrialConfig::FILE);
    let io = |source| StartError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let bytes = serde_json::to_vec_pretty(&config).map_err(|e| io(std::io::Error::other(e)))?;
    for stale in [PRUNE_FILE, TrialResult::FILE] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let write = if durable {
        write_atomic
    } else {
        write_replacing
    };
    std::fs::create_dir_all(dir)
        .and_then(|()| write(&path, &bytes))
        .map_err(io)
}
