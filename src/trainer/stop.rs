//! The pre-timeout signal: Slurm sends SIGUSR1 to a trial's job before its time limit
//! (`--signal=B:USR1@90`). The trainer then finishes the step it is in, saves a resume point
//! there (mid-epoch included) and exits with `EXIT_SAVED`, so the job can be requeued and
//! continue exactly where it stopped.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The exit status of a trial that saved on the signal (EX_TEMPFAIL: try again).
pub const EXIT_SAVED: u8 = 75;

#[cfg(unix)]
extern "C" fn on_signal(_: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Routes SIGUSR1 to the flag (instead of ending the process).
pub fn install() {
    #[cfg(unix)]
    {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(libc::SIGUSR1, handler);
        }
    }
}

/// Whether the signal came: stop at the next step boundary.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
