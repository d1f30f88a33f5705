//! The program's process: started as an argument vector (never through a shell) in the trial's
//! process group (the executor gave `sweep train` one of its own), with no stdin, its stdout and
//! stderr piped, and on Linux PR_SET_PDEATHSIG=SIGKILL, so it never outlives its supervisor;
//! signals passed on; and when it has ended, whatever it left in the group killed.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// Starts `argv` in `cwd` with `env` added to the inherited environment.
pub fn spawn(argv: &[String], cwd: &Path, env: &[(&str, OsString)]) -> std::io::Result<Child> {
    let Some((program, args)) = argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the command is empty",
        ));
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Python writes its reports at once, not when a block buffer fills.
        .env("PYTHONUNBUFFERED", "1");
    for (k, v) in env {
        command.env(k, v);
    }
    #[cfg(target_os = "linux")]
    // SAFETY: prctl and getppid are async-signal-safe and touch only the child being started.
    unsafe {
        let parent = libc::getpid();
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The supervisor may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Sends `signal` to `pid`; false when it no longer exists.
pub fn signal(pid: u32, signal: libc::c_int) -> bool {
    // SAFETY: kill(2) has no memory effects in this process.
    unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
}

/// Kills every other process of this process's group (what the program left behind: a
/// data-loader worker, a child it did not wait for), and waits briefly for them to go.
/// Only when the supervisor leads its group (the local executor made it so): inside a Slurm
/// job the group is the job's batch script, and Slurm ends the job's processes itself.
pub fn kill_rest_of_group() {
    // SAFETY: getpgrp and getpid have no memory effects.
    let (group, me) = unsafe { (libc::getpgrp(), libc::getpid()) };
    if group != me {
        return;
    }
    for _ in 0..50 {
        let others: Vec<i32> = group_members(group)
            .into_iter()
            .filter(|p| *p != me)
            .collect();
        if others.is_empty() {
            return;
        }
        for p in others {
            signal(p as u32, libc::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The live processes (zombies excluded) whose process group is `group`, from /proc.
pub fn group_members(group: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat_group(&stat))
                .is_some_and(|(state, pgrp)| pgrp == group && state != 'Z')
        })
        .collect()
}

/// (state, process group) of a /proc/PID/stat line; the command name may hold spaces and
/// parentheses, so fields are counted after its last `)`.
fn stat_group(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Atomics only: nothing else is async-signal-safe.
    LAST_SIGNAL.store(sig, Ordering::SeqCst);
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

/// Routes SIGTERM, SIGINT and SIGUSR1 (Slurm's pre-timeout signal) to a counter, to be passed on
/// to the program, instead of ending the supervisor.
pub fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only touches atomics.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGUSR1, handler);
    }
}

/// Signals caught so far, and the latest one.
pub fn caught() -> (usize, i32) {
    (
        SIGNALS.load(Ordering::SeqCst),
        LAST_SIGNAL.load(Ordering::SeqCst),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_state_and_group() {
        assert_eq!(
            stat_group("123 (python3 a) b)) S 1 77 77 0 -1"),
            Some(('S', 77))
        );
        assert_eq!(stat_group("garbage"), None);
        // SAFETY: getpgrp has no memory effects.
        let me = unsafe { libc::getpgrp() };
        assert!(group_members(me).contains(&(std::process::id() as i32)));
    }
}
