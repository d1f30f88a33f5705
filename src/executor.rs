//! Runs trials as child processes (`sweep train TRIAL_DIR`), so a crash or abort in one trial never
//! takes the sweep down. The child's stdout carries progress events (JSON lines); its stderr goes
//! to the trial's `train.log`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::Sender;

use anyhow::{Context, Result};

use crate::trial::ProgressEvent;

/// What a trial process reports to the orchestrator.
#[derive(Debug)]
pub enum Report {
    Progress(ProgressEvent),
    /// The process ended (or could not be waited for).
    Exited(std::io::Result<ExitStatus>),
}

/// Starts `program train DIR` with `threads` CPU threads; a thread forwards its reports as
/// `(trial, report)` until it exits. Returns the child's process id.
/// How a trial process is confined.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// CPU threads.
    pub threads: usize,
    /// CUDA devices it may see (physical ids, comma-separated), renumbered from 0 inside.
    pub cuda_visible_devices: Option<String>,
    /// Bytes of memory it may allocate (RLIMIT_DATA); beyond, allocations fail (out of memory).
    pub memory_bytes: Option<u64>,
}

pub fn launch(
    program: &Path,
    trial: usize,
    dir: &Path,
    limits: &Limits,
    tx: Sender<(usize, Report)>,
) -> Result<u32> {
    // Appended, not replaced: a resumed or retried trial keeps the log of its earlier runs.
    let log_path = dir.join("train.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let threads = limits.threads.max(1);
    let mut command = Command::new(program);
    if let Some(ids) = &limits.cuda_visible_devices {
        command.env("CUDA_VISIBLE_DEVICES", ids);
    }
    #[cfg(unix)]
    if let Some(bytes) = limits.memory_bytes {
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
        .with_context(|| format!("starting {} train {}", program.display(), dir.display()))?;
    let pid = child.id();
    let stdout = child.stdout.take();
    std::thread::spawn(move || {
        if let Some(out) = stdout {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(event) = serde_json::from_str::<ProgressEvent>(&line) {
                    if tx.send((trial, Report::Progress(event))).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send((trial, Report::Exited(child.wait())));
    });
    Ok(pid)
}

/// A failed trial's reason: how it ended, and the last lines of its log.
pub fn failure_reason(status: &std::io::Result<ExitStatus>, log: &PathBuf) -> String {
    let how = match status {
        Ok(s) => match (s.code(), signal_of(s)) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "ended abnormally".to_string(),
        },
        Err(e) => format!("could not be waited for: {e}"),
    };
    let tail: Vec<String> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
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
