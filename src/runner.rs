//! The orchestrator behind `sweep run`: journals the plan, starts trials on free device slots as
//! child processes, follows their progress, records every outcome, and keeps results.csv and
//! best/ current after each trial.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::executor::{failure_reason, launch, Report};
use crate::journal::{self, Event, Journal};
use crate::plan::{Plan, PlannedTrial};
use crate::progress::SweepProgress;
use crate::results::{self, BestTrial};
use crate::scheduler::Scheduler;
use crate::spec::MetricSpec;
use crate::trial::{write_atomic, TrialConfig, TrialResult};

pub struct RunOptions {
    /// The `sweep` executable that trials run as (`PROGRAM train DIR`).
    pub program: PathBuf,
    /// No progress bars or per-trial lines.
    pub quiet: bool,
}

#[derive(Debug)]
pub struct RunSummary {
    pub dir: PathBuf,
    pub finished: usize,
    pub failed: usize,
    pub refused: usize,
    pub seconds: f64,
    pub best: Option<BestTrial>,
}

pub fn trial_dir(results: &Path, id: usize) -> PathBuf {
    results.join("trials").join(format!("{id:04}"))
}

/// Runs every trial of the plan and returns when all have ended.
pub fn run(
    plan: &Plan,
    metric: &MetricSpec,
    spec_text: &str,
    opts: &RunOptions,
) -> Result<RunSummary> {
    let started = Instant::now();
    let dir = &plan.results_dir;
    if dir.join(Journal::FILE).exists() {
        bail!(
            "{} already holds a sweep's results; move it away or set `output:` in the sweep file to start a new one",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("trials"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    write_atomic(&dir.join("spec.yaml"), spec_text.as_bytes())?;
    let mut journal = Journal::open(&dir)?;
    journal.append(Event::SweepStarted {
        name: plan.name.clone(),
        trials: plan.trials.len(),
    })?;
    for t in &plan.trials {
        journal.append(Event::TrialPlanned {
            trial: t.id,
            params: t.params.to_map(),
        })?;
        if let Some(reason) = &t.refusal {
            journal.append(Event::TrialRefused {
                trial: t.id,
                reason: reason.clone(),
            })?;
        }
    }
    refresh_results(&dir, metric)?;

    let runnable: Vec<&PlannedTrial> = plan.trials.iter().filter(|t| t.refusal.is_none()).collect();
    let by_id: HashMap<usize, &PlannedTrial> = runnable.iter().map(|t| (t.id, *t)).collect();
    let mut ui = SweepProgress::new(runnable.len(), opts.quiet);
    for t in plan.trials.iter().filter(|t| t.refusal.is_some()) {
        ui.println(&format!(
            "trial {:04} refused: {}",
            t.id,
            t.refusal.as_deref().unwrap_or_default()
        ));
    }
    let mut scheduler = Scheduler::new(
        plan.pool.slots.len(),
        plan.pool.parallel,
        runnable.iter().map(|t| (t.id, t.params.gpus as usize)),
    );
    let (tx, rx) = mpsc::channel::<(usize, Report)>();
    let mut held: HashMap<usize, Vec<usize>> = HashMap::new();
    let (mut finished, mut failed) = (0, 0);
    loop {
        while let Some((id, slots)) = scheduler.next() {
            let t = by_id[&id];
            let devices: Vec<String> = slots.iter().map(|i| plan.pool.slots[*i].clone()).collect();
            let threads = plan.pool.threads_for(slots.len());
            let tdir = trial_dir(&dir, id);
            let launched =
                prepare_trial(plan, t, &tdir, &devices, threads, metric).and_then(|()| {
                    let pid = launch(&opts.program, id, &tdir, threads, tx.clone())?;
                    journal.append(Event::TrialStarted {
                        trial: id,
                        devices: devices.clone(),
                        threads,
                        pid,
                    })?;
                    Ok(pid)
                });
            match launched {
                Ok(_pid) => {
                    held.insert(id, slots);
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
                    refresh_results(&dir, metric)?;
                }
            }
        }
        if scheduler.is_idle() {
            break;
        }
        let (id, report) = rx.recv().context("all trial monitors hung up")?;
        match report {
            Report::Progress(event) => ui.event(id, &event),
            Report::Exited(status) => {
                if let Some(slots) = held.remove(&id) {
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
                    Err(reason) => {
                        failed += 1;
                        journal.append(Event::TrialFailed {
                            trial: id,
                            reason: reason.clone(),
                        })?;
                        ui.trial_ended(id, &format!("trial {id:04} failed: {reason}"));
                    }
                }
                refresh_results(&dir, metric)?;
            }
        }
    }
    ui.finish();
    let seconds = started.elapsed().as_secs_f64();
    journal.append(Event::SweepFinished { seconds })?;
    Ok(RunSummary {
        finished,
        failed,
        refused: plan.trials.len() - runnable.len(),
        seconds,
        best: results::read_best(&dir).ok(),
        dir,
    })
}

/// Writes the trial's folder and config.json before it starts.
fn prepare_trial(
    plan: &Plan,
    t: &PlannedTrial,
    dir: &Path,
    devices: &[String],
    threads: usize,
    metric: &MetricSpec,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = TrialConfig {
        trial: t.id,
        sweep: plan.name.clone(),
        params: t.params.clone(),
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
pub fn refresh_results(dir: &Path, metric: &MetricSpec) -> Result<()> {
    let rows = results::rows_from_journal(&journal::read(dir)?);
    results::write_csv(dir, &rows)?;
    if let Some(best) = results::best(&rows, metric) {
        results::write_best(dir, best, metric)?;
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
