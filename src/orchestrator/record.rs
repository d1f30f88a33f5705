//! What a sweep run records and how it fails: the journal and the trial rows it leads to
//! (`Record`), and `RunError`. Shared by the run loop (`runner`) and `resume`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::plan::PlanError;
use crate::protocol::journal::{Event, Journal};
use crate::results;
use crate::results::state::Trials;
use crate::spec::SweepSpec;

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
    Plan(#[from] PlanError),
}

pub type Result<T> = std::result::Result<T, RunError>;

pub fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The journal and the trial rows it leads to, kept together: every event is journalled
/// (synced) and then applied to the rows in memory, so they never need re-reading.
pub(crate) struct Record {
    journal: Journal,
    pub(crate) trials: Trials,
    pub(crate) dir: PathBuf,
    /// When results.csv, best/ and report.html were last rebuilt, and whether the rows changed
    /// since: a rebuild reads every trial's files, so at many short trials (a program that runs
    /// for milliseconds) rebuilding after each would make the sweep quadratic.
    refreshed_at: Option<Instant>,
    /// How long the last rebuild took: the next waits in proportion (`decide::refresh_due`).
    refresh_took: std::time::Duration,
    stale: bool,
}

impl Record {
    /// The journal of the results folder `dir` (opened for appending), with the rows `trials`
    /// of what it holds already.
    pub fn open(dir: &Path, trials: Trials) -> Result<Self> {
        Ok(Self {
            journal: Journal::open(dir).map_err(io_at(&dir.join(Journal::FILE)))?,
            trials,
            dir: dir.to_path_buf(),
            refreshed_at: None,
            refresh_took: std::time::Duration::ZERO,
            stale: false,
        })
    }

    pub(crate) fn log(&mut self, event: Event) -> Result<()> {
        self.journal
            .append(event.clone())
            .map_err(io_at(self.journal.path()))?;
        self.trials.apply(&event);
        Ok(())
    }

    /// Puts every journal line logged so far on disk: before the loop waits, and before anything
    /// it cannot undo.
    pub(crate) fn sync(&mut self) -> Result<()> {
        self.journal.sync().map_err(io_at(self.journal.path()))
    }

    /// Rebuilds results.csv, best/ and report.html from the rows.
    pub(crate) fn refresh(&mut self, spec: &SweepSpec) -> Result<()> {
        let start = Instant::now();
        results::refresh(&self.dir, &self.trials.to_vec(), &spec.metric)?;
        results::html::write(&self.dir, None)?;
        self.refresh_took = start.elapsed();
        self.refreshed_at = Some(Instant::now());
        self.stale = false;
        Ok(())
    }

    /// Rebuilds them now when `decide::refresh_due` says so, else marks them stale for
    /// `refresh_if_stale` (the loop asks at every turn) or the final `refresh`. The journal,
    /// synced at every event, stays the record: a crash in between loses nothing.
    pub(crate) fn refresh_soon(&mut self, spec: &SweepSpec) -> Result<()> {
        self.stale = true;
        self.refresh_if_stale(spec)
    }

    /// Rebuilds them when they are stale and a rebuild is due.
    pub(crate) fn refresh_if_stale(&mut self, spec: &SweepSpec) -> Result<()> {
        let since = self.refreshed_at.map(|t| t.elapsed());
        if self.stale && crate::orchestrator::decide::refresh_due(since, self.refresh_took) {
            self.refresh(spec)?;
        }
        Ok(())
    }
}
