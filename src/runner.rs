//! The orchestrator behind `sweep run`: journals the plan, starts trials on free device slots as
//! child processes, follows their progress, records every outcome, and keeps results.csv and
//! best/ current after each trial. With `--resume` it picks up a sweep where it stopped.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::executor::{failure_reason, launch, Report};
use crate::journal::{self, Event, Journal};
use crate::plan::{Plan, PlannedTrial};
use crate::progress::SweepProgress;
use crate::results::{self, BestTrial, Status, TrialRow};
use crate::scheduler::Scheduler;
use crate::spec::{MetricSpec, OnOom, SweepSpec};
use crate::trial::{write_atomic, TrialConfig, TrialResult};

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
    pub finished: usize,
    pub failed: usize,
    pub refused: usize,
    pub seconds: f64,
    pub best: Option<BestTrial>,
    /// The user interrupted the sweep; `--resume` continues it.
    pub interrupted: bool,
}

pub fn trial_dir(results: &Path, id: usize) -> PathBuf {
    results.join("trials").join(format!("{id:04}"))
}

/// Holds the results folder for one `sweep run` at a time. The OS releases the lock when the
/// process ends, however it ends.
struct FolderLock {
    _file: File,
}

impl FolderLock {
    fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "{} is in use by another `sweep run` (pid {}); wait for it, or stop it first",
                    dir.display(),
                    holder.trim()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        file.set_len(0)?;
        std::fs::write(&path, std::process::id().to_string())?;
        Ok(Self { _file: file })
    }
}

/// Runs every trial of the plan that has not run yet and returns when all have ended (or the
/// user interrupted).
pub fn run(
    plan: &Plan,
    spec: &SweepSpec,
    spec_text: &str,
    opts: &RunOptions,
) -> Result<RunSummary> {
    let started = Instant::now();
    let metric = &spec.metric;
    let dir = &plan.results_dir;
    if plan.pool.has_cuda() && !cfg!(feature = "cuda") {
        bail!("the device pool has CUDA GPUs but this build of sweep has no CUDA support: rebuild with `cargo build --release --features cuda`, or set `resources.devices: cpu`");
    }
    let existing = dir.join(Journal::FILE).exists();
    if existing && !opts.resume {
        bail!(
            "{} already holds a sweep's results; continue it with `sweep run SPEC --resume`, or start a new one with `--out NEW_DIR`",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("trials"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let _lock = FolderLock::acquire(&dir)?;
    let mut journal = Journal::open(&dir)?;

    // Micro-batches lowered by out-of-memory retries, by trial.
    let mut micro_override: HashMap<usize, u32> = HashMap::new();
    let to_run: Vec<&PlannedTrial> = if existing {
        let rows = check_resumable(&dir, plan, spec)?;
        micro_override.extend(
            rows.iter()
                .filter_map(|r| Some((r.trial, r.retry_micro_batch?))),
        );
        stop_leftover_processes(&dir, &rows);
        let pending: HashSet<usize> = rows
            .iter()
            .filter(|r| {
                matches!(
                    r.status,
                    Status::Planned | Status::Running | Status::Stopped
                )
            })
            .map(|r| r.trial)
            .collect();
        journal.append(Event::SweepResumed {
            trials_to_run: pending.len(),
        })?;
        plan.trials
            .iter()
            .filter(|t| pending.contains(&t.id))
            .collect()
    } else {
        write_atomic(&dir.join("spec.yaml"), spec_text.as_bytes())?;
        journal.append(Event::SweepStarted {
            name: plan.name.clone(),
            trials: plan.trials.len(),
        })?;
        for t in &plan.trials {
            journal.append(Event::TrialPlanned {
                trial: t.id,
                params: t.params.to_map(),
                estimate_mb: t.estimate_mb,
            })?;
            if let Some(reason) = &t.refusal {
                journal.append(Event::TrialRefused {
                    trial: t.id,
                    reason: reason.clone(),
                })?;
            }
        }
        plan.trials.iter().filter(|t| t.refusal.is_none()).collect()
    };
    refresh_results(&dir, spec)?;

    let by_id: HashMap<usize, &PlannedTrial> = to_run.iter().map(|t| (t.id, *t)).collect();
    let mut ui = SweepProgress::new(to_run.len(), opts.quiet);
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
        plan.pool.slots.len(),
        plan.pool.parallel,
        to_run.iter().map(|t| (t.id, t.params.gpus as usize)),
    );
    crate::interrupt::install();
    let interrupts_before = crate::interrupt::count();
    let (tx, rx) = mpsc::channel::<(usize, Report)>();
    let mut running: HashMap<usize, (Vec<usize>, u32)> = HashMap::new();
    let mut stopping: Option<usize> = None;
    let (mut finished, mut failed) = (0, 0);
    loop {
        while let Some((id, slots)) = scheduler.next_to_start() {
            let t = by_id[&id];
            let physical: Vec<String> = slots
                .iter()
                .map(|i| plan.pool.slots[*i].name.clone())
                .collect();
            let limits = limits_for(plan, &physical);
            // A trial sees only its own GPUs, renumbered from 0 (CUDA_VISIBLE_DEVICES).
            let devices: Vec<String> = if limits.cuda_visible_devices.is_some() {
                (0..physical.len()).map(|i| format!("cuda:{i}")).collect()
            } else {
                physical.clone()
            };
            let tdir = trial_dir(&dir, id);
            let mut params = t.params.clone();
            if let Some(m) = micro_override.get(&id) {
                params.micro_batch = Some(*m);
            }
            let launched =
                prepare_trial(plan, t.id, &params, &tdir, &devices, limits.threads, metric)
                    .and_then(|()| launch(&opts.program, id, &tdir, &limits, tx.clone()));
            match launched {
                Ok(pid) => {
                    journal.append(Event::TrialStarted {
                        trial: id,
                        devices: physical.clone(),
                        threads: limits.threads,
                        pid,
                    })?;
                    running.insert(id, (slots, pid));
                    ui.trial_started(id, label(t));
                }
                Err(e) => {
                    scheduler.release(&slots);
                    failed += 1;
                    let reason = format!("could not start: {e:#}");
                    journal.append(Event::TrialFailed {
                        trial: id,
                        reason: reason.clone(),
                    })?;
                    ui.trial_ended(id, &format!("trial {id:04} failed: {reason}"));
                    refresh_results(&dir, spec)?;
                }
            }
        }
        if scheduler.is_idle() {
            break;
        }
        let interrupts = crate::interrupt::count() - interrupts_before;
        if interrupts >= 2 {
            // Second interrupt: stop now. Every running trial is killed and journalled as stopped.
            for (id, (_, pid)) in running.drain() {
                crate::interrupt::signal(pid, crate::interrupt::KILL);
                journal.append(Event::TrialStopped {
                    trial: id,
                    reason: "killed on a second interrupt".into(),
                })?;
            }
            refresh_results(&dir, spec)?;
            ui.finish();
            return Ok(summary(&dir, finished, failed, plan, started, true));
        }
        if interrupts == 1 && stopping.is_none() {
            stopping = Some(running.len());
            let dropped = scheduler.clear_queue();
            for (_, pid) in running.values() {
                crate::interrupt::signal(*pid, crate::interrupt::TERMINATE);
            }
            ui.println(&format!(
                "interrupted: {} queued trials will not start, {} running ones are stopping (Ctrl-C again to kill them now); continue later with --resume",
                dropped.len(),
                running.len()
            ));
        }
        let (id, report) = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => bail!("all trial monitors hung up"),
        };
        match report {
            Report::Progress(event) => ui.event(id, &event),
            Report::Exited(status) => {
                if let Some((slots, _)) = running.remove(&id) {
                    scheduler.release(&slots);
                }
                let tdir = trial_dir(&dir, id);
                let outcome = match &status {
                    Ok(s) if s.success() => read_result(&tdir),
                    _ => Err(failure_reason(&status, &tdir.join("train.log"))),
                };
                match outcome {
                    Ok(result) => {
                        finished += 1;
                        let line = format!(
                            "trial {id:04} finished: {} accuracy {} dev_loss {:.4} ({:.0} s)",
                            label(by_id[&id]),
                            result
                                .accuracy
                                .map(|a| format!("{a:.4}"))
                                .unwrap_or_else(|| "-".into()),
                            result.dev_loss,
                            result.seconds
                        );
                        journal.append(Event::TrialFinished { trial: id, result })?;
                        ui.trial_ended(id, &line);
                    }
                    Err(reason) if stopping.is_none() && is_out_of_memory(&reason) => {
                        let micro = micro_override
                            .get(&id)
                            .copied()
                            .unwrap_or_else(|| by_id[&id].params.micro_batch());
                        let batch = by_id[&id].params.batch_size;
                        let retry = match spec.on_oom {
                            OnOom::HalveBatch if micro > 1 => Some(
                                crate::memory::halved_micro_batch(micro as usize, batch as usize)
                                    as u32,
                            ),
                            _ => None,
                        };
                        journal.append(Event::TrialOutOfMemory {
                            trial: id,
                            micro_batch: micro,
                            retry_micro_batch: retry,
                            reason: reason.clone(),
                        })?;
                        match retry {
                            Some(m) => {
                                micro_override.insert(id, m);
                                scheduler.requeue_front(id, by_id[&id].params.gpus as usize);
                                ui.trial_ended(
                                    id,
                                    &format!("trial {id:04} out of memory at micro-batch {micro}; retrying with {m} (grad_accum {})", batch / m),
                                );
                                ui.add_pending(1);
                            }
                            None => {
                                failed += 1;
                                let why = format!(
                                    "out of memory at micro-batch {micro} (on_oom: {:?}): {reason}",
                                    spec.on_oom
                                );
                                journal.append(Event::TrialFailed {
                                    trial: id,
                                    reason: why.clone(),
                                })?;
                                ui.trial_ended(id, &format!("trial {id:04} failed: {why}"));
                                if spec.on_oom == OnOom::Fail {
                                    let dropped = scheduler.clear_queue();
                                    ui.println(&format!(
                                        "on_oom: fail: {} queued trials will not start",
                                        dropped.len()
                                    ));
                                }
                            }
                        }
                    }
                    Err(reason) if stopping.is_some() => {
                        journal.append(Event::TrialStopped {
                            trial: id,
                            reason: format!("stopped on interrupt ({reason})"),
                        })?;
                        ui.trial_ended(id, &format!("trial {id:04} stopped"));
                    }
                    Err(reason) => {
                        failed += 1;
                        journal.append(Event::TrialFailed {
                            trial: id,
                            reason: reason.clone(),
                        })?;
                        ui.trial_ended(id, &format!("trial {id:04} failed: {reason}"));
                    }
                }
                enforce_retention(&dir, spec, &mut journal)?;
                refresh_results(&dir, spec)?;
            }
        }
    }
    ui.finish();
    let interrupted = stopping.is_some();
    if !interrupted {
        journal.append(Event::SweepFinished {
            seconds: started.elapsed().as_secs_f64(),
        })?;
    }
    Ok(summary(&dir, finished, failed, plan, started, interrupted))
}

fn summary(
    dir: &Path,
    finished: usize,
    failed: usize,
    plan: &Plan,
    started: Instant,
    interrupted: bool,
) -> RunSummary {
    RunSummary {
        finished,
        failed,
        refused: plan.trials.iter().filter(|t| t.refusal.is_some()).count(),
        seconds: started.elapsed().as_secs_f64(),
        best: results::read_best(dir).ok(),
        dir: dir.to_path_buf(),
        interrupted,
    }
}

/// A sweep resumes only with the spec it started with, trial for trial.
fn check_resumable(dir: &Path, plan: &Plan, spec: &SweepSpec) -> Result<Vec<TrialRow>> {
    let frozen_path = dir.join("spec.yaml");
    let frozen = SweepSpec::from_file(&frozen_path)
        .with_context(|| format!("{}: cannot resume", dir.display()))?;
    let comparable = |s: &SweepSpec| SweepSpec {
        output: None,
        ..s.clone()
    };
    if comparable(&frozen) != comparable(spec) {
        bail!(
            "the sweep file differs from the one this sweep started with ({}); resume needs the same file, or start a new sweep with `--out NEW_DIR`",
            frozen_path.display()
        );
    }
    let rows = results::rows_from_journal(&journal::read(dir)?);
    // The micro-batch may differ (planned for another machine's memory, or lowered after an
    // out-of-memory retry): it changes how a step is computed, not what it computes.
    let comparable = |m: &std::collections::BTreeMap<String, serde_json::Value>| {
        let mut m = m.clone();
        m.remove("micro_batch");
        m
    };
    for t in &plan.trials {
        match rows.iter().find(|r| r.trial == t.id) {
            Some(r) if comparable(&r.params) == comparable(&t.params.to_map()) => {}
            _ => bail!(
                "trial {} of {} does not match the plan of the sweep file; start a new sweep with `--out NEW_DIR`",
                t.id,
                dir.display()
            ),
        }
    }
    Ok(rows)
}

/// Trial processes of an orchestrator that died may still be running; they are stopped before
/// their trials start again, so two processes never write one trial folder.
fn stop_leftover_processes(dir: &Path, rows: &[TrialRow]) {
    for r in rows.iter().filter(|r| r.status == Status::Running) {
        let Some(pid) = r.pid else { continue };
        let tdir = trial_dir(dir, r.trial);
        if !is_trial_process(pid, &tdir) {
            continue;
        }
        crate::interrupt::signal(pid, crate::interrupt::KILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_trial_process(pid, &tdir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `pid` is alive and is `sweep train` of this trial folder (not a reused pid).
fn is_trial_process(pid: u32, trial_dir: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let zombie = std::fs::read_to_string(proc_dir.join("status"))
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .unwrap_or(false);
    let wanted = trial_dir.display().to_string();
    !zombie
        && String::from_utf8_lossy(&cmdline)
            .split('\0')
            .any(|arg| arg == wanted)
}

/// Under `checkpoints: {keep: N}`, deletes the checkpoints of finished trials outside the N best.
/// The deletion is journalled first, so a crash in between leaves a consistent record.
fn enforce_retention(dir: &Path, spec: &SweepSpec, journal: &mut Journal) -> Result<()> {
    let Some(policy) = &spec.checkpoints else {
        return Ok(());
    };
    let rows = results::rows_from_journal(&journal::read(dir)?);
    let mut ranked: Vec<&TrialRow> = rows
        .iter()
        .filter(|r| r.status == Status::Finished && r.result.is_some())
        .collect();
    ranked.sort_by(|a, b| results::compare(a, b, &spec.metric));
    for row in ranked.into_iter().skip(policy.keep.max(1)) {
        if row.checkpoint_deleted {
            continue;
        }
        journal.append(Event::CheckpointDeleted { trial: row.trial })?;
        if let Some(result) = &row.result {
            if result.checkpoint.exists() {
                std::fs::remove_dir_all(&result.checkpoint)
                    .with_context(|| format!("deleting {}", result.checkpoint.display()))?;
            }
        }
    }
    Ok(())
}

/// Messages by which a trial's end shows it ran out of memory: CUDA's, cuBLAS's and cuRAND's as
/// candle 0.11 prints them (cudarc 0.19's `DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of
/// memory")`, `CublasError(CUBLAS_STATUS_ALLOC_FAILED)`, `CurandError(..)`), and Rust's
/// allocation failure (what a CPU trial under its memory limit prints before aborting).
const OUT_OF_MEMORY_MARKERS: [&str; 6] = [
    "CUDA_ERROR_OUT_OF_MEMORY",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CURAND_STATUS_ALLOCATION_FAILED",
    "out of memory",
    "memory allocation of",
    "Cannot allocate memory",
];

pub(crate) fn is_out_of_memory(reason: &str) -> bool {
    OUT_OF_MEMORY_MARKERS.iter().any(|m| reason.contains(m))
}

/// Threads, visible GPUs and memory limit of a trial on these slots.
fn limits_for(plan: &Plan, physical: &[String]) -> crate::executor::Limits {
    let cuda: Vec<&str> = physical
        .iter()
        .filter_map(|d| d.strip_prefix("cuda:"))
        .collect();
    crate::executor::Limits {
        threads: plan.pool.threads_for(physical.len()),
        cuda_visible_devices: (!cuda.is_empty()).then(|| cuda.join(",")),
        memory_bytes: plan
            .pool
            .cpu_memory_limit_mb
            .filter(|_| cuda.is_empty())
            .map(|mb| (mb * physical.len() as f64 * 1024.0 * 1024.0) as u64),
    }
}

/// Writes the trial's folder and config.json before it starts.
fn prepare_trial(
    plan: &Plan,
    id: usize,
    params: &crate::params::TrialParams,
    dir: &Path,
    devices: &[String],
    threads: usize,
    metric: &MetricSpec,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = TrialConfig {
        trial: id,
        sweep: plan.name.clone(),
        params: params.clone(),
        train: plan.train.clone(),
        dev: plan.dev.clone(),
        model: plan.model.clone(),
        metric: metric.clone(),
        devices: devices.to_vec(),
        threads,
    };
    write_atomic(
        &dir.join(TrialConfig::FILE),
        &serde_json::to_vec_pretty(&config)?,
    )?;
    Ok(())
}

fn read_result(dir: &Path) -> std::result::Result<TrialResult, String> {
    let path = dir.join(TrialResult::FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("exited 0 but {} is unreadable: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Rebuilds results.csv and best/ from the journal.
pub fn refresh_results(dir: &Path, spec: &SweepSpec) -> Result<()> {
    let rows = results::rows_from_journal(&journal::read(dir)?);
    results::write_csv(dir, &rows)?;
    if let Some(best) = results::best(&rows, &spec.metric) {
        results::write_best(dir, best, &spec.metric)?;
    }
    Ok(())
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
