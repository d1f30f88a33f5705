//! One trial of a user's own training program: what `sweep train DIR` does when the trial's
//! `config.json` holds a `program` (`protocol::trial::ProgramRun`). A small supervisor, so that
//! the run loop, the executors (local and Slurm) and the journal treat a program trial exactly
//! as a built-in one:
//!
//! - the program starts as its argument vector (`child`), with the trial's environment
//!   (`protocol::program::program_env`: its folder, parameter files, devices), stdin closed;
//!   its stdout and stderr are kept in the trial folder (`stdout.log`; `stderr.log` once it
//!   writes there); one thread reads both pipes and waits for its exit in one `poll` (`output`);
//! - each stdout line is read as a report (`protocol::program::report`); a report holding the
//!   sweep's metric is an evaluation (`curve`), sent on as the same `Epoch` progress event the
//!   built-in trainer emits and written to metrics.jsonl; a malformed line is skipped with a
//!   warning in the trial's log;
//! - out-of-memory messages on either stream are recognised (`protocol::program::oom`);
//! - the prune file (early termination) stops it: SIGTERM, SIGKILL after [`GRACE`]; a signal
//!   sent to `sweep train` (Ctrl-C's stop, Slurm's cancel) is passed on the same way;
//! - its end becomes one `TrialEnd` (`end`) in result.json and the last event, and whatever it
//!   left in the trial's process group is killed.
//!
//! **Never names candle: a program trial never loads the trainer.** Imports only the formats
//! (`protocol`), the spec's types and `util`.

pub mod child;
pub mod curve;
pub mod end;
mod output;
mod spawn;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::program::{program_env, ProgramTrialEnv};
use crate::protocol::trial::{
    ProgramRun, ProgressEvent, TrialConfig, TrialEnd, TrialResult, PRUNE_FILE,
};
use crate::util::fs::{write_atomic, write_replacing};
use curve::Curve;
use end::{end_of, Outcome, ProcessExit, StopReason};
use output::{Streams, Watch};

/// How long a program has to exit after SIGTERM before it is killed.
pub const GRACE: Duration = Duration::from_secs(10);
/// The program's stdout and stderr in the trial folder.
pub const STDOUT_LOG: &str = "stdout.log";
pub const STDERR_LOG: &str = "stderr.log";
/// Lines of stderr kept for a failure's message.
const TAIL_LINES: usize = 5;
/// How often the supervisor looks at the prune file and its signals (the program's output and
/// exit wake it at once).
const POLL: Duration = Duration::from_millis(20);
/// How long the pipes are read after the program ended, waiting for their end.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ProgramTrialError {
    #[error(transparent)]
    Config(#[from] crate::protocol::trial::ReadError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io_at(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProgramTrialError {
    let what = what.into();
    move |source| ProgramTrialError::Io { what, source }
}

/// Whether the trial in `dir` runs a program (its config.json says so).
pub fn is_program_trial(dir: &Path) -> bool {
    TrialConfig::read(dir).is_ok_and(|c| c.program.is_some())
}

/// Who a supervised program answers to: `sweep train DIR` (its own process, as a Slurm job runs
/// it: [`ProcessHost`]) or a thread of the orchestrator (a local trial, so that no second
/// process stands between the run loop and the program: the orchestrator's `LocalExecutor`).
pub trait Host: Send + Sync {
    /// Passes a progress event on; false when nobody listens any more (the orchestrator gone).
    fn report(&self, event: &ProgressEvent) -> bool;
    /// Stop requests received so far, and the latest one's signal (SIGTERM, SIGINT, SIGUSR1).
    fn stop_requests(&self) -> (usize, i32);
    /// A line for the trial's log (`train.log`).
    fn log(&self, line: &str);
    /// Whether result.json must be on disk before the end is reported: a Slurm job's end may
    /// wait there for an orchestrator that comes back later. Not when the run loop journals the
    /// end (synced) as soon as it is told, and runs the trial again after a crash before that.
    fn end_must_be_synced(&self) -> bool {
        true
    }
}

/// `sweep train DIR`'s host: events on stdout, the signals it caught, its stderr as the log.
pub struct ProcessHost;

impl Host for ProcessHost {
    fn report(&self, event: &ProgressEvent) -> bool {
        let Ok(text) = serde_json::to_string(event) else {
            return true;
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}").and_then(|()| out.flush()).is_ok()
    }

    fn stop_requests(&self) -> (usize, i32) {
        child::caught()
    }

    fn log(&self, line: &str) {
        eprintln!("{line}");
    }
}

/// Which process group the program runs in, and so how what it leaves behind is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// The supervisor's (`sweep train`, whose group the executor made, or a Slurm job's): the
    /// supervisor kills the rest of its group when the program has ended.
    Supervisor,
    /// Its own, led by the program (started from the orchestrator): the group is killed when the
    /// program has exited, before it is reaped (so its id cannot have been reused).
    Own,
}

/// A program trial read from its folder, ready to start.
pub struct Prepared {
    cfg: TrialConfig,
    run: ProgramRun,
    /// The trial folder, absolute.
    dir: PathBuf,
    env: Vec<(&'static str, std::ffi::OsString)>,
}

impl Prepared {
    /// Reads the trial in `dir`: None when its config.json holds no program (a built-in trial).
    pub fn read(dir: &Path) -> Result<Option<Self>, ProgramTrialError> {
        let cfg = TrialConfig::read(dir)?;
        let Some(run) = cfg.program.clone() else {
            return Ok(None);
        };
        let dir = std::path::absolute(dir).map_err(io_at(format!("{}", dir.display())))?;
        let env = program_env(&ProgramTrialEnv {
            trial: cfg.trial,
            sweep: &cfg.sweep,
            metric: cfg.metric.name.column(),
            dir: &dir,
            devices: &cfg.devices,
            cuda_visible_devices: run.cuda_visible_devices.as_deref(),
        });
        Ok(Some(Self { cfg, run, dir, env }))
    }

    /// The program's argument vector.
    pub fn argv(&self) -> &[String] {
        &self.run.argv
    }

    /// Starts the program (PR_SET_PDEATHSIG ties it to the calling thread: start it from one
    /// that outlives it), in `group`, its data segment limited to `memory_limit` bytes if given.
    pub fn start(
        &self,
        group: Group,
        memory_limit: Option<u64>,
    ) -> std::io::Result<child::Program> {
        child::spawn(
            &self.run.argv,
            &self.run.cwd,
            &self.env,
            child::Setup {
                own_group: group == Group::Own,
                // It never outlives its supervisor.
                die_with_caller: true,
                memory_limit,
            },
        )
    }

    /// The command line, for the log.
    pub fn command_line(&self) -> String {
        format!("program: {}", shell_words(&self.run.argv))
    }
}

/// `sweep train DIR` for a program trial: runs it to its end, writes result.json and the `End`
/// event, and returns the end.
pub fn command(dir: &Path) -> Result<TrialEnd, ProgramTrialError> {
    let Some(prepared) = Prepared::read(dir)? else {
        return Err(ProgramTrialError::Io {
            what: format!("{}: not a program trial", dir.display()),
            source: std::io::Error::other("config.json has no `program`"),
        });
    };
    child::catch_signals();
    child::become_subreaper();
    let host = Arc::new(ProcessHost);
    host.log(&prepared.command_line());
    let started = prepared.start(Group::Supervisor, None);
    // What the program left in the group is killed there, once it has ended.
    supervise_to_end(prepared, started, Group::Supervisor, host)
}

/// Follows a started program (or a failed start) to its end: its lines read, stopped when asked
/// or pruned, what it left killed, result.json and the `End` event written.
pub fn supervise_to_end(
    prepared: Prepared,
    started: std::io::Result<child::Program>,
    group: Group,
    host: Arc<dyn Host>,
) -> Result<TrialEnd, ProgramTrialError> {
    let Prepared { cfg, run, dir, .. } = prepared;
    let mut watch = Watch::new(Curve::new(cfg.metric.clone()), host);
    let (exit, stopped) = match started {
        Ok(mut program) => {
            let mut streams = Streams::take(&mut program, &dir)?;
            let outcome = supervise(&mut program, group, &dir, &mut streams, &mut watch);
            // What it left holding its pipes goes first, or they would not reach their end.
            if group == Group::Supervisor {
                child::kill_rest_of_group();
            }
            drain(&mut streams, &mut watch);
            outcome
        }
        Err(e) => {
            let what = format!("cannot start `{}`: {e}", run.argv.join(" "));
            watch.tail.push_back(what);
            (ProcessExit::Code(127), None)
        }
    };
    let end = end_of(outcome(&cfg, &run, &dir, &watch, exit, stopped));
    write_end(&dir, &end, watch.host.as_ref())?;
    Ok(end)
}

/// The outcome the end is decided from.
fn outcome(
    cfg: &TrialConfig,
    run: &ProgramRun,
    dir: &Path,
    watch: &Watch,
    exit: ProcessExit,
    stopped: Option<StopReason>,
) -> Outcome {
    Outcome {
        exit,
        stopped,
        out_of_memory: watch.oom.clone(),
        stderr_tail: watch.tail.iter().cloned().collect(),
        batch: run.batch,
        metric: cfg.metric.name.column().to_string(),
        evaluations: watch.curve.evaluations(),
        result: watch.curve.result(
            watch.started.elapsed().as_secs_f64(),
            dir.join("checkpoint"),
            cfg.devices.len().max(1) as u32,
        ),
    }
}

/// What is left in the pipes once the program has ended, up to their end; at most [`DRAIN`]
/// (a process that left the trial's group may hold them open for ever: its later output is lost,
/// the trial is not kept waiting for it).
fn drain(streams: &mut Streams, watch: &mut Watch) {
    let until = Instant::now() + DRAIN;
    while !streams.ended() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let ready = child::poll_readable(&streams.fds(), left.min(POLL));
        streams.read_ready(&ready, watch);
    }
}

/// Waits for the program while reading its output, stopping it when the trial is pruned, a
/// stop is requested of the host or the orchestrator goes: SIGTERM (the signal received, for a
/// signal), SIGKILL after [`GRACE`]. One `poll` waits on its pipes and on its exit (a pidfd,
/// `child::exit_notifier`), so a line or the exit wakes the loop at once; stop requests, the
/// prune file and the deadline are looked at every [`POLL`] at least.
fn supervise(
    program: &mut child::Program,
    group: Group,
    dir: &Path,
    streams: &mut Streams,
    watch: &mut Watch,
) -> (ProcessExit, Option<StopReason>) {
    let pid = program.id();
    let mut stops = Stops::default();
    let notifier = child::exit_notifier(pid);
    loop {
        let mut fds = streams.fds();
        fds.extend(notifier.as_ref().map(|fd| fd.as_raw_fd()));
        let ready = child::poll_readable(&fds, POLL);
        streams.read_ready(&ready, watch);
        let exited = match &notifier {
            Some(_) => ready.last().copied().unwrap_or(false),
            // No pidfd (a kernel before 5.3): looked at every turn.
            None => true,
        };
        if exited {
            // Exited, not yet reaped: its group goes first, while its id is still taken. (Without
            // a pidfd, it is reaped first: a reaped leader's group is killed just after.)
            if group == Group::Own && notifier.is_some() {
                child::signal_group(pid, libc::SIGKILL);
            }
            if let Some(exit) = reap(program) {
                if group == Group::Own && notifier.is_none() {
                    child::signal_group(pid, libc::SIGKILL);
                }
                return (exit, stops.stopped);
            }
        }
        stops.look(pid, dir, watch);
    }
}

/// Why and when the supervisor stopped the program.
#[derive(Default)]
struct Stops {
    stopped: Option<StopReason>,
    deadline: Option<Instant>,
    /// Stop requests of the host passed on so far.
    passed_on: usize,
}

impl Stops {
    /// Passes on a new stop request, stops the program when pruned or orphaned, and kills it
    /// once its grace is over.
    fn look(&mut self, pid: u32, dir: &Path, watch: &Watch) {
        let (count, last) = watch.host.stop_requests();
        let why = if count > self.passed_on {
            self.passed_on = count;
            // SIGUSR1 (Slurm's pre-timeout signal) asks the program to stop as SIGTERM does.
            let sig = if last == libc::SIGUSR1 {
                libc::SIGTERM
            } else {
                last
            };
            child::signal(pid, sig);
            Some(StopReason::Signal(last))
        } else if self.stopped.is_none() && dir.join(PRUNE_FILE).exists() {
            Some(StopReason::Pruned)
        } else if self.stopped.is_none() && watch.orchestrator_gone {
            Some(StopReason::OrchestratorGone)
        } else {
            None
        };
        if let Some(why) = why {
            if !matches!(why, StopReason::Signal(_)) {
                child::signal(pid, libc::SIGTERM);
            }
            // A prune stays a prune when a signal follows; a signal wins over nothing else.
            if !matches!(self.stopped, Some(StopReason::Pruned)) {
                self.stopped = Some(why);
            }
            self.deadline.get_or_insert(Instant::now() + GRACE);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            child::signal(pid, libc::SIGKILL);
        }
    }
}

/// Its exit when it has exited (reaped now), else None.
fn reap(program: &mut child::Program) -> Option<ProcessExit> {
    match program.try_wait() {
        Ok(Some(status)) => Some(ProcessExit::of(&Ok(status))),
        Ok(None) => None,
        Err(e) => Some(ProcessExit::Unknown(e.to_string())),
    }
}

/// result.json, then the `End` event (the orchestrator may be gone: not an error).
fn write_end(dir: &Path, end: &TrialEnd, host: &dyn Host) -> Result<(), ProgramTrialError> {
    let path = dir.join(TrialResult::FILE);
    let bytes = serde_json::to_vec_pretty(end).map_err(|e| ProgramTrialError::Io {
        what: format!("writing {}", path.display()),
        source: std::io::Error::other(e),
    })?;
    let write = if host.end_must_be_synced() {
        write_atomic
    } else {
        write_replacing
    };
    write(&path, &bytes).map_err(io_at(format!("writing {}", path.display())))?;
    host.report(&ProgressEvent::End(end.clone()));
    Ok(())
}

/// The argument vector as one line for the log (each argument quoted when it needs it); never
/// run through a shell.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=./:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_logged_command_quotes_what_a_shell_would_split() {
        let argv = ["python3", "t.py", "--name=a b", "--x=it's", ""].map(String::from);
        assert_eq!(
            shell_words(&argv),
            r"python3 t.py '--name=a b' '--x=it'\''s' ''"
        );
    }
}
