//! Ctrl-C (SIGINT) and SIGTERM for the orchestrator: counted, not acted on in the handler.
//!
//! Trial processes run in their own process group, so the terminal's Ctrl-C reaches only the
//! orchestrator, which then decides: first interrupt, no new trials and the running ones are told
//! to stop; second, they are killed and the sweep ends at once.

use std::sync::atomic::{AtomicUsize, Ordering};

static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

#[cfg(unix)]
extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic increment: nothing else is async-signal-safe.
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to the counter (instead of ending the process).
pub fn install() {
    #[cfg(unix)]
    {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only touches an atomic.
        unsafe {
            libc::signal(libc::SIGINT, handler);
            libc::signal(libc::SIGTERM, handler);
        }
    }
}

/// How many interrupts arrived since start.
pub fn count() -> usize {
    INTERRUPTS.load(Ordering::SeqCst)
}

/// Sends `signal` to a process; false when it no longer exists.
#[cfg(unix)]
pub fn signal(pid: u32, signal: libc::c_int) -> bool {
    // SAFETY: kill(2) has no memory effects in this process.
    unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
}

/// Sends `signal` to the process group `pgid` (a trial's, led by its `sweep train`); false when
/// none of it exists any more.
#[cfg(unix)]
pub fn signal_group(pgid: u32, signal: libc::c_int) -> bool {
    // SAFETY: kill(2) has no memory effects in this process.
    unsafe { libc::kill(-(pgid as libc::pid_t), signal) == 0 }
}

#[cfg(unix)]
pub const TERMINATE: libc::c_int = libc::SIGTERM;
#[cfg(unix)]
pub const KILL: libc::c_int = libc::SIGKILL;
