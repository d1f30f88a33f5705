//! Starting trials and following them. `Executor` is what the run loop needs of any way to run a
//! trial (start it on given devices, receive its progress and its end, stop it); `LocalExecutor`
//! runs each as a child process (`sweep train TRIAL_DIR`), so a crash or abort in one trial never
//! takes the sweep down. The child's stdout carries progress events (JSON lines); its stderr goes
//! to the trial's `train.log`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::orchestrator::decide::Placement;
use crate::orchestrator::interrupt;
use crate::orchestrator::program_host::{self, ProgramHost};
use crate::program_trial::Prepared;
use crate::protocol::journal::Handle;
use crate::protocol::trial::ProgressEvent;

/// What a trial reports to the orchestrator.
#[derive(Debug)]
pub enum Report {
    /// Boxed: an evaluation with its reported keys is far larger than the other variants.
    Progress(Box<ProgressEvent>),
    /// The trial's process or job ended, so: what the trial says of its end is in its
    /// result.json, which the run loop reads (`TrialEnd::read`); this speaks only when the trial
    /// left none.
    Exited(Exit),
    /// It waits for something that may never come (a Slurm job pending with a reason that
    /// cannot clear by itself); sent once per reason.
    Waiting(String),
}

/// How a trial's process or job ended, as its executor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Exit status 0; a Slurm job COMPLETED.
    Success,
    /// A non-zero exit status.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Killed from outside for the memory it used (Slurm's OUT_OF_MEMORY: over its `--mem`), in
    /// the executor's words. The trial had no chance to say so itself.
    OutOfMemory(String),
    /// Ended otherwise, in the executor's words (a Slurm state, a process that could not be
    /// waited for, a job Slurm forgot).
    Other(String),
}

impl Exit {
    /// The exit of a child process as `wait` gave it.
    pub fn of_process(status: &std::io::Result<ExitStatus>) -> Self {
        match status {
            Ok(s) if s.success() => Exit::Success,
            Ok(s) => match (s.code(), signal_of(s)) {
                (Some(c), _) => Exit::Code(c),
                (None, Some(sig)) => Exit::Signal(sig),
                _ => Exit::Other("ended abnormally".to_string()),
            },
            Err(e) => Exit::Other(format!("could not be waited for: {e}")),
        }
    }

    /// How it ended, in words: the start of a failed trial's reason.
    pub fn describe(&self) -> String {
        match self {
            Exit::Success => "exited successfully".to_string(),
            Exit::Code(c) => format!("exit status {c}"),
            Exit::Signal(sig) => format!("killed by signal {sig}"),
            Exit::OutOfMemory(what) | Exit::Other(what) => what.clone(),
        }
    }
}

/// What `reclaim` found of an earlier run of a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaimed {
    /// Nothing of it runs any more: start the trial again.
    Gone,
    /// It still runs (or its end is still to be collected) and this executor follows it now
    /// under this handle: it will report its end, and must not be started again.
    Reattached(Handle),
}

/// How to stop a running trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Ask it to stop; it saves nothing more and exits (its last finished epoch is kept).
    Gracefully,
    /// Now.
    Kill,
}

/// A trial that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The cluster refused the submission, with its message.
    #[error("{0}")]
    Rejected(String),
}

/// A way to run trials. Reports arrive as `(trial, report)` on the receiver the executor was
/// made with; each started trial sends exactly one `Exited`.
pub trait Executor {
    /// Starts trial `trial` from its folder `dir` (config.json written) on `placement`. Returns
    /// the handle to journal (a process id, a Slurm job id).
    fn start(
        &mut self,
        trial: usize,
        dir: &Path,
        placement: &Placement,
    ) -> Result<Handle, StartError>;
    /// Stops a trial this executor started.
    fn stop(&mut self, trial: usize, how: Stop);
    /// Whether a trial's inputs (config.json) must be on disk before it starts: a Slurm job reads
    /// them later, perhaps after this machine crashed. A local trial reads them at once, and
    /// after a crash it is started again with them written anew, so it need not wait for the disk.
    fn inputs_read_later(&self) -> bool {
        true
    }
    /// Before a resumed sweep runs `trial` (folder `dir`) again, with the handle of its latest
    /// journalled start if any: either nothing of an earlier run may still write the folder
    /// (`Gone`), or the executor follows that run to its end (`Reattached`).
    fn reclaim(&mut self, trial: usize, handle: Option<Handle>, dir: &Path) -> Reclaimed;
    /// Makes the folder `dir` of a trial due to start soon, and the files its start and end will
    /// create, empty, while other trials run (a program trial's when `program`); nothing where
    /// trials' folders are made elsewhere.
    fn make_ahead(&self, _dir: &Path, _program: bool) {}
}

/// Trials as child processes of this one: `sweep train DIR` for a built-in trial, the program
/// itself for a program trial (`program_host`: supervised by a thread of this process).
pub struct LocalExecutor {
    program: PathBuf,
    tx: Sender<(usize, Report)>,
    pids: HashMap<usize, u32>,
    /// The program trials' hosts, by trial: a graceful stop is asked of the supervising thread.
    programs: HashMap<usize, Arc<ProgramHost>>,
}

impl LocalExecutor {
    /// `program` is the `sweep` executable that trials run as (`PROGRAM train DIR`).
    pub fn new(program: PathBuf) -> (Self, Receiver<(usize, Report)>) {
        let (tx, rx) = mpsc::channel();
        (
            Self {
                program,
                tx,
                pids: HashMap::new(),
                programs: HashMap::new(),
            },
            rx,
        )
    }
}

impl Executor for LocalExecutor {
    fn start(
        &mut self,
        trial: usize,
        dir: &Path,
        placement: &Placement,
    ) -> Result<Handle, StartError> {
        // A config.json that cannot be read is `sweep train`'s to report, as for any trial.
        if let Ok(Some(prepared)) = Prepared::read(dir) {
            let (events, ends) = (self.tx.clone(), self.tx.clone());
            let (pid, host) = program_host::start(
                prepared,
                &dir.join(LOG_FILE),
                placement.memory_bytes,
                Box::new(move |event| {
                    events
                        .send((trial, Report::Progress(Box::new(event))))
                        .is_ok()
                }),
                move |written| {
                    let exit = if written {
                        Exit::Success
                    } else {
                        Exit::Code(1)
                    };
                    let _ = ends.send((trial, Report::Exited(exit)));
                },
            )
            .map_err(|e| StartError::Io {
                what: e.what,
                source: e.source,
            })?;
            self.pids.insert(trial, pid);
            self.programs.insert(trial, host);
            return Ok(Handle::Process(pid));
        }
        self.programs.remove(&trial);
        let pid = launch(&self.program, trial, dir, placement, self.tx.clone())?;
        self.pids.insert(trial, pid);
        Ok(Handle::Process(pid))
    }

    fn inputs_read_later(&self) -> bool {
        false
    }

    fn stop(&mut self, trial: usize, how: Stop) {
        if let Some(pid) = self.pids.get(&trial) {
            match how {
                // A program trial's supervising thread passes it on to its program.
                Stop::Gracefully if self.programs.contains_key(&trial) => {
                    self.programs[&trial].request_stop();
                }
                // The trial itself (`sweep train`).
                Stop::Gracefully => {
                    interrupt::signal(*pid, interrupt::TERMINATE);
                }
                // The trial's whole process group: nothing it started is left behind.
                Stop::Kill => {
                    interrupt::signal_group(*pid, interrupt::KILL);
                }
            }
        }
    }

    /// Creating a file is the slow part of a no-op trial's files on some file systems (ext4
    /// without a journal looks through recently freed inodes first: a millisecond a file here),
    /// and a program trial's start and end create eight; made ahead, the start and the end only
    /// fill them (`util::fs::write_replacing` writes an empty file in place). Best effort: a
    /// file not made here is created when written, as always.
    fn make_ahead(&self, dir: &Path, program: bool) {
        use crate::program_trial::STDOUT_LOG;
        use crate::protocol::program::{PARAMS_JSON, WANDB_CONFIG_YAML};
        use crate::protocol::trial::{TrialConfig, TrialResult, METRICS_FILE};
        use crate::util::fs::make_ahead;
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let filled = [TrialConfig::FILE, LOG_FILE, METRICS_FILE];
        // stderr.log is made when the program first writes there (most no-op trials never do).
        let programs = [PARAMS_JSON, WANDB_CONFIG_YAML, STDOUT_LOG];
        let programs = if program { &programs[..] } else { &[] };
        for name in filled.iter().chain(programs) {
            let _ = make_ahead(&dir.join(name), false);
        }
        let _ = make_ahead(&dir.join(TrialResult::FILE), true);
    }

    fn reclaim(&mut self, _trial: usize, handle: Option<Handle>, dir: &Path) -> Reclaimed {
        // Its process was this orchestrator's child: without the pipe it cannot be followed.
        let Some(Handle::Process(pid)) = handle else {
            return Reclaimed::Gone;
        };
        // A program started by an earlier orchestrator died with it; what it started may not.
        if program_host::is_program_group(pid, dir) {
            interrupt::signal_group(pid, interrupt::KILL);
        }
        if !is_trial_process(pid, dir) {
            return Reclaimed::Gone;
        }
        // Its group: a program trial's program (and what it started) with it.
        interrupt::signal_group(pid, interrupt::KILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_trial_process(pid, dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Reclaimed::Gone
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

/// Starts `program train DIR` confined as `placement` says; a thread forwards its reports as
/// `(trial, report)` until it exits. Returns the child's process id.
fn launch(
    program: &Path,
    trial: usize,
    dir: &Path,
    placement: &Placement,
    tx: Sender<(usize, Report)>,
) -> Result<u32, StartError> {
    // Appended, not replaced: a resumed or retried trial keeps the log of its earlier runs.
    let log_path = dir.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| StartError::Io {
            what: format!("opening {}", log_path.display()),
            source,
        })?;
    let threads = placement.threads.max(1);
    let mut command = Command::new(program);
    if let Some(ids) = &placement.cuda_visible_devices {
        command.env("CUDA_VISIBLE_DEVICES", ids);
    }
    #[cfg(unix)]
    if let Some(bytes) = placement.memory_bytes {
        // Few malloc arenas, so the limit measures the trial's data rather than reserved arenas.
        command.env("MALLOC_ARENA_MAX", "2");
        let limit = libc::rlimit {
            rlim_cur: bytes as libc::rlim_t,
            rlim_max: bytes as libc::rlim_t,
        };
        // SAFETY: setrlimit is async-signal-safe and touches only the child being started.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                if libc::setrlimit(libc::RLIMIT_DATA, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    // Its own process group: the terminal's Ctrl-C reaches the orchestrator only, which then
    // stops trials in order (see `interrupt`).
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .arg("train")
        .arg(dir)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env("CANDLE_NUM_THREADS", threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|source| StartError::Io {
            what: format!("starting {} train {}", program.display(), dir.display()),
            source,
        })?;
    let pid = child.id();
    let stdout = child.stdout.take();
    std::thread::spawn(move || {
        if let Some(out) = stdout {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(event) = serde_json::from_str::<ProgressEvent>(&line) {
                    if tx.send((trial, Report::Progress(Box::new(event)))).is_err() {
                        break;
                    }
                }
            }
        }
        let exit = Exit::of_process(&child.wait());
        let _ = tx.send((trial, Report::Exited(exit)));
    });
    Ok(pid)
}

/// A trial's log: its stderr (locally and as a Slurm job's `--error`).
pub const LOG_FILE: &str = "train.log";

/// The last non-empty lines of a trial's log (at most three): what a failure the trial could
/// not describe itself is explained by.
pub fn log_tail(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// `how` a trial ended, then the last lines of its log, at most 600 bytes in all.
pub fn with_log_tail(how: String, tail: &[String]) -> String {
    let mut reason = how;
    if !tail.is_empty() {
        reason.push_str(": ");
        reason.push_str(&tail.join(" | "));
    }
    if reason.len() > 600 {
        let mut cut = 600;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    reason
}

#[cfg(unix)]
fn signal_of(s: &ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    s.signal()
}

#[cfg(not(unix))]
fn signal_of(_: &ExitStatus) -> Option<i32> {
    None
}
