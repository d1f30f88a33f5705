//! The program's process: started as an argument vector (never through a shell) in the trial's
//! process group (the executor gave `sweep train` one of its own) or, started from the
//! orchestrator, in a group of its own; with no stdin, its stdout and stderr piped, and on Linux
//! PR_SET_PDEATHSIG=SIGKILL, so it never outlives its supervisor; signals passed on; and when it
//! has ended, whatever it left in the group killed.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use super::spawn;
pub use super::spawn::{Program, Setup};

/// Starts `argv` in `cwd` with `env` added to the inherited environment, as `setup` says.
pub fn spawn(
    argv: &[String],
    cwd: &Path,
    env: &[(&str, OsString)],
    setup: Setup,
) -> std::io::Result<Program> {
    // Python writes its reports at once, not when a block buffer fills.
    let mut added = vec![("PYTHONUNBUFFERED", OsString::from("1"))];
    added.extend(env.iter().cloned());
    if setup.memory_limit.is_some() {
        // Few malloc arenas, so the limit measures the trial's data rather than reserved arenas.
        added.push(("MALLOC_ARENA_MAX", OsString::from("2")));
    }
    spawn::spawn(argv, cwd, &spawn::environment(&added), setup)
}

/// Sends `signal` to every process of group `group`; false when none is left.
pub fn signal_group(group: u32, signal: libc::c_int) -> bool {
    // SAFETY: killpg(2) has no memory effects in this process.
    unsafe { libc::killpg(group as libc::pid_t, signal) == 0 }
}

/// Sends `signal` to `pid`; false when it no longer exists.
pub fn signal(pid: u32, signal: libc::c_int) -> bool {
    // SAFETY: kill(2) has no memory effects in this process.
    unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
}

/// Makes this process the reaper of its orphaned descendants (Linux: PR_SET_CHILD_SUBREAPER):
/// what the program leaves running when it exits becomes this supervisor's child instead of
/// init's, so [`kill_rest_of_group`] knows there is nothing to look for when it has no child
/// left, without reading every process of the machine in /proc.
pub fn become_subreaper() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// Reaps children that have already exited; true when none is left at all (no descendant
/// either, for a subreaper: an orphan would have become its child).
fn no_child_left() -> bool {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only `status`.
        let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if reaped > 0 {
            continue;
        }
        return reaped < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD);
    }
}

/// A descriptor that becomes readable when process `pid` exits (Linux's pidfd, 5.3 and later),
/// without reaping it: its id stays taken until the caller's `try_wait`, so no signal can reach
/// a stranger that reused it. None where the kernel has no pidfd.
pub fn exit_notifier(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor, which we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative return is a descriptor nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Waits up to `timeout` for any of `fds` to become readable (a pipe with data or at its end,
/// a pidfd whose process exited); which are, in their order (none when the wait timed out or
/// was interrupted by a signal).
pub fn poll_readable(fds: &[RawFd], timeout: std::time::Duration) -> Vec<bool> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: poll reads and writes only the `polled.len()` pollfds it is given.
    let ready = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, ms) };
    // A pipe at its end with nothing left reads as POLLHUP alone; an error as POLLERR.
    let flagged = libc::POLLIN | libc::POLLHUP | libc::POLLERR;
    polled
        .iter()
        .map(|p| ready > 0 && p.revents & flagged != 0)
        .collect()
}

/// Makes reads of `file` return WouldBlock instead of waiting (its other end is unaffected:
/// the flag belongs to this open file description only).
pub fn set_nonblocking(file: &std::fs::File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl with F_GETFL/F_SETFL reads and sets only this descriptor's status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Kills every other process of this process's group (what the program left behind: a
/// data-loader worker, a child it did not wait for), and waits briefly for them to go.
/// Only when the supervisor leads its group (the local executor made it so): inside a Slurm
/// job the group is the job's batch script, and Slurm ends the job's processes itself.
/// Called after the program was reaped: with no child left (the common end) there is nothing
/// to kill, since every other member of the group descends from this process (see
/// [`become_subreaper`]).
pub fn kill_rest_of_group() {
    // SAFETY: getpgrp and getpid have no memory effects.
    let (group, me) = unsafe { (libc::getpgrp(), libc::getpid()) };
    if group != me || no_child_left() {
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
