//! What the user is told while a sweep runs. The run loop never prints: it tells a `Reporter`,
//! which is either the progress bars (`progress::SweepProgress`, plain lines without a terminal)
//! or `Quiet` (`--quiet`).

use crate::protocol::trial::ProgressEvent;

/// Where the run loop's news goes.
pub trait Reporter {
    /// A trial runs now.
    fn trial_started(&mut self, trial: usize, label: &str);
    /// A trial's progress event.
    fn trial_event(&mut self, trial: usize, event: &ProgressEvent);
    /// A trial's run is over: `line` says how.
    fn trial_ended(&mut self, trial: usize, line: &str);
    /// A line about the sweep (a refusal, an interrupt, a trial pruned).
    fn line(&mut self, line: &str);
    /// A line the user sees even under `--quiet`: the sweep's outcome (the test score) or a
    /// warning about it.
    fn outcome(&mut self, line: &str) {
        eprintln!("{line}");
    }
    /// `n` more trial runs to wait for (the plan's, a retry, a proposal).
    fn add_pending(&mut self, n: u64);
    /// The sweep's run is over.
    fn finish(&mut self);
}

/// `--quiet`: no bars, no per-trial lines; only the outcome.
pub struct Quiet;

impl Reporter for Quiet {
    fn trial_started(&mut self, _: usize, _: &str) {}
    fn trial_event(&mut self, _: usize, _: &ProgressEvent) {}
    fn trial_ended(&mut self, _: usize, _: &str) {}
    fn line(&mut self, _: &str) {}
    fn add_pending(&mut self, _: u64) {}
    fn finish(&mut self) {}
}
