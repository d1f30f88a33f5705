//! Where a trial's side effects go: its event sink. The trial computes; everything it tells the
//! world (progress lines, metrics.jsonl, log lines, its end in result.json) and everything it
//! asks of it (the prune file, the pre-timeout signal) passes through a `TrialSink`.
//!
//! `CliSink` is what `sweep train DIR` uses: progress events as JSON lines on stdout for the
//! orchestrator and appended to metrics.jsonl, log lines on stderr, the end in result.json
//! (atomically), the prune file and `trainer::stop`'s flag. `RecordingSink` keeps everything in
//! memory, so a test can run a trial and read what it said.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::protocol::trial::{ProgressEvent, TrialEnd, TrialResult, METRICS_FILE, PRUNE_FILE};
use crate::trainer::error::{AtPath, Result, TrainError};
use crate::trainer::train::oom_guard;
use crate::util::fs::write_atomic;

/// What a trial tells the world and asks of it.
pub trait TrialSink {
    /// The trial runs at micro-batch `micro_batch` from now on: an out-of-memory end is at it.
    fn running_at(&mut self, micro_batch: u32);
    /// The trial starts its steps, afresh or continuing an interrupted run (`resumed`): a fresh
    /// start drops the progress of earlier runs, a resumed one keeps it.
    fn begin(&mut self, resumed: bool) -> Result<()>;
    /// A progress event (start, step, evaluation, resumed, and last the end).
    fn event(&mut self, event: &ProgressEvent) -> Result<()>;
    /// A line for the trial's log.
    fn say(&mut self, line: &str);
    /// Whether the sweep asked the trial to stop early (early termination): checked after every
    /// step.
    fn prune_requested(&mut self) -> bool;
    /// Whether the trial should save a resume point and stop (the pre-timeout signal): checked
    /// after every step.
    fn stop_requested(&mut self) -> bool;
    /// Records the trial's end (result.json), before its last event.
    fn write_end(&mut self, end: &TrialEnd) -> Result<()>;
}

/// `sweep train DIR`'s sink: see the module comment.
pub struct CliSink {
    dir: PathBuf,
    metrics: Option<File>,
}

impl CliSink {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            metrics: None,
        }
    }

    fn metrics_path(&self) -> PathBuf {
        self.dir.join(METRICS_FILE)
    }

    /// One progress line on stdout; a stdout nobody reads any more means the orchestrator is gone.
    fn print(line: &str) -> Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|_| TrainError::OrchestratorGone)
    }
}

impl TrialSink for CliSink {
    fn running_at(&mut self, micro_batch: u32) {
        oom_guard::arm(&self.dir, micro_batch);
    }

    fn begin(&mut self, resumed: bool) -> Result<()> {
        let path = self.metrics_path();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(&path)
            .at(&path)?;
        self.metrics = Some(file);
        Ok(())
    }

    fn event(&mut self, event: &ProgressEvent) -> Result<()> {
        let path = self.metrics_path();
        let line = serde_json::to_string(event).at(&path)?;
        // metrics.jsonl holds the trial's progress; its end is result.json.
        if !matches!(event, ProgressEvent::End(_)) {
            if let Some(metrics) = &mut self.metrics {
                writeln!(metrics, "{line}").at(&path)?;
                metrics.flush().at(&path)?;
            }
        }
        Self::print(&line)
    }

    fn say(&mut self, line: &str) {
        eprintln!("{line}");
    }

    fn prune_requested(&mut self) -> bool {
        self.dir.join(PRUNE_FILE).exists()
    }

    fn stop_requested(&mut self) -> bool {
        crate::trainer::stop::requested()
    }

    fn write_end(&mut self, end: &TrialEnd) -> Result<()> {
        // The end is written; an allocation failure from here on is not this trial's end.
        oom_guard::disarm();
        let path = self.dir.join(TrialResult::FILE);
        write_atomic(&path, &serde_json::to_vec_pretty(end).at(&path)?).at(&path)
    }
}

/// A sink that keeps what the trial said, for tests; it asks for a prune or a stop after the
/// steps given.
#[derive(Debug, Default)]
pub struct RecordingSink {
    pub micro_batch: Option<u32>,
    pub resumed: Option<bool>,
    pub events: Vec<ProgressEvent>,
    pub lines: Vec<String>,
    pub end: Option<TrialEnd>,
    /// Ask for a prune once this many step events were seen.
    pub prune_after_steps: Option<usize>,
    /// Ask for a stop once this many step events were seen.
    pub stop_after_steps: Option<usize>,
}

impl RecordingSink {
    fn steps_seen(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, ProgressEvent::Step { .. }))
            .count()
    }
}

impl TrialSink for RecordingSink {
    fn running_at(&mut self, micro_batch: u32) {
        self.micro_batch = Some(micro_batch);
    }

    fn begin(&mut self, resumed: bool) -> Result<()> {
        self.resumed = Some(resumed);
        Ok(())
    }

    fn event(&mut self, event: &ProgressEvent) -> Result<()> {
        self.events.push(event.clone());
        Ok(())
    }

    fn say(&mut self, line: &str) {
        self.lines.push(line.to_string());
    }

    fn prune_requested(&mut self) -> bool {
        self.prune_after_steps
            .is_some_and(|n| self.steps_seen() >= n)
    }

    fn stop_requested(&mut self) -> bool {
        self.stop_after_steps
            .is_some_and(|n| self.steps_seen() >= n)
    }

    fn write_end(&mut self, end: &TrialEnd) -> Result<()> {
        self.end = Some(end.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_sink_appends_progress_to_metrics_only_when_resumed_and_writes_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let step = ProgressEvent::Step {
            epoch: 1,
            step: 1,
            loss: 2.0,
            lr: 1e-3,
            grad_norm: 0.5,
        };
        let metrics = || std::fs::read_to_string(dir.path().join(METRICS_FILE)).unwrap();
        let mut sink = CliSink::new(dir.path());
        sink.begin(false).unwrap();
        sink.event(&step).unwrap();
        let mut again = CliSink::new(dir.path());
        again.begin(true).unwrap();
        again.event(&step).unwrap();
        assert_eq!(metrics().lines().count(), 2);
        let end = TrialEnd::InvalidInput {
            message: "train.json:3: tgt: missing".into(),
        };
        again.event(&ProgressEvent::End(end.clone())).unwrap();
        assert_eq!(metrics().lines().count(), 2, "the end is not progress");
        again.write_end(&end).unwrap();
        assert_eq!(TrialEnd::read(dir.path()).unwrap(), end);
        let mut fresh = CliSink::new(dir.path());
        fresh.begin(false).unwrap();
        assert_eq!(metrics(), "");
        assert!(!fresh.prune_requested());
        std::fs::write(dir.path().join(PRUNE_FILE), "{}").unwrap();
        assert!(fresh.prune_requested());
    }
}
