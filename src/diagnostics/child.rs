//! sweep's own commands in child processes, as a user runs them: `sweep run` on a sweep file the
//! check writes, `sweep plan --json` for an estimate. Why children: the check exercises the very
//! binary a user runs, and reaches the run loop only through what it leaves behind (the journal,
//! each trial's result.json), as any reader of a results folder does.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::protocol::journal::{Entry, Event};
use crate::protocol::trial::{trial_dir, TrialEnd};

/// This sweep binary.
pub fn sweep_exe() -> Result<PathBuf> {
    std::env::current_exe().context("locating the sweep executable")
}

/// What a sweep run by the check left: its journal, and each trial's end as it wrote it.
pub struct SweepRun {
    pub entries: Vec<Entry>,
    /// (trial, its result.json), for every trial the journal says finished.
    pub ends: Vec<(usize, TrialEnd)>,
}

impl SweepRun {
    /// Trials whose result.json says they finished.
    pub fn finished(&self) -> usize {
        self.ends
            .iter()
            .filter(|(_, end)| matches!(end, TrialEnd::Finished { .. }))
            .count()
    }
}

/// Writes `body` as `dir/sweep.yaml` and runs it with this binary's `sweep run --quiet` (which
/// checks it first) into `dir/results`, a fresh folder.
pub fn run_sweep(dir: &Path, body: &str, memory_check: bool) -> Result<SweepRun> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("sweep.yaml");
    std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
    let results = dir.join("results");
    if results.exists() {
        std::fs::remove_dir_all(&results)
            .with_context(|| format!("removing {}", results.display()))?;
    }
    let mut command = Command::new(sweep_exe()?);
    command
        .arg("run")
        .arg(&path)
        .arg("--quiet")
        .arg("--out")
        .arg(&results);
    if !memory_check {
        command.arg("--no-memory-check");
    }
    let out = command.output().context("running `sweep run`")?;
    let entries = crate::protocol::journal::read(&results).with_context(|| {
        format!(
            "`sweep run` left no journal in {} ({}): {}",
            results.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    let mut ends = Vec::new();
    for e in &entries {
        if let Event::TrialFinished { trial, .. } = e.event {
            let end = TrialEnd::read(&trial_dir(&results, trial))
                .with_context(|| format!("trial {trial} finished but left no end"))?;
            ends.push((trial, end));
        }
    }
    Ok(SweepRun { entries, ends })
}

/// The plan-time memory estimate of the first trial of the sweep file at `path`, MiB, from
/// `sweep plan --json --no-memory-check` as a user would see it.
pub fn planned_estimate_mb(path: &Path) -> Result<f64> {
    let planned = Command::new(sweep_exe()?)
        .arg("plan")
        .arg(path)
        .arg("--json")
        .arg("--no-memory-check")
        .output()
        .context("running `sweep plan`")?;
    let plan: serde_json::Value = serde_json::from_slice(&planned.stdout)
        .with_context(|| format!("`sweep plan --json` printed no plan ({})", planned.status))?;
    plan["trials"][0]["estimate_mb"]
        .as_f64()
        .context("`sweep plan --json` gave no estimate for the first trial")
}

/// The `data`, `output` and `resources` lines of a check's sweep file: the bundled data set
/// `data` under `root`, results into `out`, one trial at a time on `devices`.
pub fn data_lines(root: &Path, out: &Path, data: &str, devices: &str) -> String {
    let data = root.join("data").join(data);
    format!(
        "data: {{train: '{}', dev: '{}'}}\noutput: '{}'\nresources: {{devices: {devices}, parallel: 1}}\n",
        data.join("train.json").display(),
        data.join("dev.json").display(),
        out.display()
    )
}
