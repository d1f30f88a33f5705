//! The append-only journal, `journal.jsonl`: every state change of the sweep is one line, flushed
//! to disk before anything depends on it. results.csv and best/ are derived from it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::protocol::trial::TrialResult;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    SweepStarted {
        name: String,
        trials: usize,
    },
    TrialPlanned {
        trial: usize,
        params: BTreeMap<String, Value>,
        /// Predicted peak memory per device, MiB.
        #[serde(default)]
        estimate_mb: Option<f64>,
        /// The sampled parameter values, for trials proposed as the sweep runs (`method:
        /// bayes`): what a resumed sweep's sampler learns from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        assignment: Option<BTreeMap<String, Value>>,
    },
    /// Can never run as asked (for example more devices than the pool has).
    TrialRefused {
        trial: usize,
        reason: String,
    },
    TrialStarted {
        trial: usize,
        devices: Vec<String>,
        threads: usize,
        /// The trial process (local executor), so a later run (or a person) can find it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        /// The trial's Slurm job (`executor: slurm`), journalled as soon as sbatch answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<u32>,
    },
    /// A running trial waits for something that may never come (a Slurm job pending with a
    /// reason that cannot clear by itself, e.g. ReqNodeNotAvail on drained nodes).
    TrialWaiting {
        trial: usize,
        reason: String,
    },
    TrialFinished {
        trial: usize,
        result: TrialResult,
    },
    TrialFailed {
        trial: usize,
        reason: String,
    },
    SweepFinished {
        seconds: f64,
    },
    /// `sweep run --resume` picked the sweep up again.
    SweepResumed {
        trials_to_run: usize,
        /// Trials whose run (a Slurm job) outlived the earlier orchestrator and is followed
        /// again instead of being started anew.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reattached: Vec<usize>,
    },
    /// Stopped on the user's interrupt; runs again on resume.
    TrialStopped {
        trial: usize,
        reason: String,
    },
    /// The trial ran out of memory; with `retry_micro_batch` it runs again with that micro-batch.
    TrialOutOfMemory {
        trial: usize,
        micro_batch: u32,
        retry_micro_batch: Option<u32>,
        reason: String,
    },
    /// `early_terminate`: the trial reached band `band` (evaluations) at optimizer step `step`
    /// with `value` (the metric as a loss: negated when maximised), judged against `threshold`;
    /// `pruned`: it is stopped. Journalled before the trial is told, so a resumed sweep never
    /// judges a band twice.
    TrialJudged {
        trial: usize,
        band: usize,
        step: usize,
        value: f64,
        threshold: f64,
        pruned: bool,
    },
    /// The trial's checkpoint folder was deleted under `checkpoints: {keep: N}`.
    CheckpointDeleted {
        trial: usize,
    },
}

/// How a started trial is found again: its process, or its Slurm job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handle {
    Process(u32),
    SlurmJob(u32),
}

impl Handle {
    /// The `pid` and `job` fields of a `TrialStarted` event.
    pub fn fields(self) -> (Option<u32>, Option<u32>) {
        match self {
            Handle::Process(pid) => (Some(pid), None),
            Handle::SlurmJob(job) => (None, Some(job)),
        }
    }
}

impl Event {
    /// The trial an event is about, if any.
    pub fn trial(&self) -> Option<usize> {
        match self {
            Event::TrialPlanned { trial, .. }
            | Event::TrialRefused { trial, .. }
            | Event::TrialStarted { trial, .. }
            | Event::TrialWaiting { trial, .. }
            | Event::TrialFinished { trial, .. }
            | Event::TrialFailed { trial, .. }
            | Event::TrialStopped { trial, .. }
            | Event::TrialOutOfMemory { trial, .. }
            | Event::TrialJudged { trial, .. }
            | Event::CheckpointDeleted { trial } => Some(*trial),
            Event::SweepStarted { .. }
            | Event::SweepFinished { .. }
            | Event::SweepResumed { .. } => None,
        }
    }
}

/// One journal line: the event and when it happened (seconds since the Unix epoch).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub time: f64,
    #[serde(flatten)]
    pub event: Event,
}

/// The sweep's record, one event a line. Lines are written at once (a crash or kill of the
/// process loses none written) and synced to disk in groups (`sync`): the run loop syncs before
/// it waits and before anything it cannot undo, so every line is on disk within moments, and a
/// thousand short trials do not wait for the disk two thousand times one after another.
pub struct Journal {
    file: File,
    path: PathBuf,
    /// Lines written since the last sync.
    unsynced: bool,
}

impl Drop for Journal {
    /// An early return (an error) still leaves every line written on disk.
    fn drop(&mut self) {
        let _ = self.sync();
    }
}

impl Journal {
    pub const FILE: &'static str = "journal.jsonl";

    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(Self::FILE);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            file,
            path,
            unsynced: false,
        })
    }

    /// Appends one event (one write: a torn line can only be the last, and reading skips it).
    /// It is on disk after the next [`Journal::sync`].
    pub fn append(&mut self, event: Event) -> std::io::Result<()> {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let line = serde_json::to_string(&Entry { time, event })
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.file.write_all(format!("{line}\n").as_bytes())?;
        self.unsynced = true;
        Ok(())
    }

    /// Puts every line appended so far on disk (nothing to do when none is pending).
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every complete entry. A torn last line (a crash mid-write) is skipped, not an error.
pub fn read(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let text = std::fs::read_to_string(dir.join(Journal::FILE))?;
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Entry>(line) {
            Ok(e) => out.push(e),
            Err(_) if i + 1 == lines.len() => {}
            Err(e) => {
                return Err(std::io::Error::other(format!(
                    "{}:{}: {e}",
                    dir.join(Journal::FILE).display(),
                    i + 1
                )))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.append(Event::SweepStarted {
            name: "x".into(),
            trials: 2,
        })
        .unwrap();
        j.append(Event::TrialFailed {
            trial: 1,
            reason: "boom".into(),
        })
        .unwrap();
        drop(j);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(Journal::FILE))
            .unwrap();
        f.write_all(b"{\"time\": 1.0, \"event\": \"trial_fin")
            .unwrap();
        let entries = read(dir.path()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[1].event,
            Event::TrialFailed {
                trial: 1,
                reason: "boom".into()
            }
        );
    }

    #[test]
    fn lines_are_written_at_once_and_synced_in_groups() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        assert!(!j.unsynced);
        j.append(Event::SweepFinished { seconds: 1.0 }).unwrap();
        j.append(Event::SweepFinished { seconds: 2.0 }).unwrap();
        // Written: another process (a resumed sweep after a kill) reads them before any sync.
        assert_eq!(read(dir.path()).unwrap().len(), 2);
        assert!(j.unsynced);
        j.sync().unwrap();
        assert!(!j.unsynced);
        j.sync().unwrap();
    }
}
