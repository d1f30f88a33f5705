//! Local program trials supervised by a thread of the orchestrator itself. `sweep train DIR` as
//! a second process between the run loop and a user's program cost a process start, its files
//! and two wake-ups per trial (a no-op trial's overhead was half sweep's); locally nothing needs
//! it: the orchestrator starts the program in a process group of its own and a thread follows it
//! with the same supervisor (`program_trial::supervise_to_end`) a Slurm job runs as `sweep
//! train`. Its events reach the run loop as any trial's do; a graceful stop is a request the
//! supervisor passes on as SIGTERM (then SIGKILL after its grace); the orchestrator's death takes
//! the program with it (PR_SET_PDEATHSIG), and `--resume` kills what its group left.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::program_trial::{self, Group, Host, Prepared};
use crate::protocol::program::TRIAL_DIR;
use crate::protocol::trial::ProgressEvent;

/// Passes a progress event to the run loop; false when it no longer listens.
pub type Reporter = Box<dyn Fn(ProgressEvent) -> bool + Send + Sync>;

/// What a local program trial's supervising thread answers to.
pub struct ProgramHost {
    report: Reporter,
    stops: AtomicUsize,
    last_stop: AtomicI32,
    /// The trial's `train.log`: the command line, warnings about its lines.
    log: Mutex<File>,
}

impl ProgramHost {
    /// Asks the program to stop (SIGTERM, passed on by its supervising thread).
    pub fn request_stop(&self) {
        self.last_stop.store(libc::SIGTERM, Ordering::SeqCst);
        self.stops.fetch_add(1, Ordering::SeqCst);
    }
}

impl Host for ProgramHost {
    fn report(&self, event: &ProgressEvent) -> bool {
        (self.report)(event.clone())
    }

    fn stop_requests(&self) -> (usize, i32) {
        (
            self.stops.load(Ordering::SeqCst),
            self.last_stop.load(Ordering::SeqCst),
        )
    }

    /// The run loop journals the end (synced) as soon as it reads it; see the trait.
    fn end_must_be_synced(&self) -> bool {
        false
    }

    fn log(&self, line: &str) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(log, "{line}");
    }
}

/// A program that could not be started, or its log opened.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct StartFailed {
    pub what: String,
    pub source: std::io::Error,
}

/// Starts a prepared program trial from this thread, which must outlive the program (the run
/// loop's): its log appended to `log_path`, its events passed to `report`, and a thread that
/// supervises it to its end and then calls `ended` (true when its end was written). Returns the
/// program's process id (its process group's too) and its host.
pub fn start(
    prepared: Prepared,
    log_path: &Path,
    memory_limit: Option<u64>,
    report: Reporter,
    ended: impl FnOnce(bool) + Send + 'static,
) -> Result<(u32, Arc<ProgramHost>), StartFailed> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|source| StartFailed {
            what: format!("opening {}", log_path.display()),
            source,
        })?;
    let host = Arc::new(ProgramHost {
        report,
        stops: AtomicUsize::new(0),
        last_stop: AtomicI32::new(0),
        log: Mutex::new(log),
    });
    host.log(&prepared.command_line());
    let program = prepared
        .start(Group::Own, memory_limit)
        .map_err(|source| StartFailed {
            what: format!("cannot start `{}`", prepared.argv().join(" ")),
            source,
        })?;
    let pid = program.id();
    let supervised = Arc::clone(&host);
    std::thread::spawn(move || {
        let written =
            program_trial::supervise_to_end(prepared, Ok(program), Group::Own, supervised.clone());
        if let Err(e) = &written {
            supervised.log(&format!("error: {e}"));
        }
        ended(written.is_ok());
    });
    Ok((pid, host))
}

/// Whether process group `group` still has a member started for the trial in `dir` (its
/// environment names the folder): what a program left when an earlier orchestrator died.
pub fn is_program_group(group: u32, dir: &Path) -> bool {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let wanted = format!("{TRIAL_DIR}={}", dir.display());
    program_trial::child::group_members(group as i32)
        .into_iter()
        .any(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == wanted.as_bytes()))
        })
}
