//! How a program trial ended, as the one `TrialEnd` the run loop matches on (pure): asked to
//! stop by early termination → pruned with the result so far; stopped by a signal or by the
//! orchestrator's going → stopped (it runs again on `--resume`); exit 0 → finished; otherwise
//! out of memory when it printed a CUDA out-of-memory message, else an internal error with the
//! last lines of its stderr.

use crate::protocol::trial::{TrialEnd, TrialResult};

/// Why the supervisor stopped the program, if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Early termination (the trial's prune file).
    Pruned,
    /// `sweep train` was sent this signal (Ctrl-C's stop, a Slurm cancel) and passed it on.
    Signal(i32),
    /// The orchestrator's end of the progress pipe closed.
    OrchestratorGone,
}

/// How the program's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessExit {
    Code(i32),
    Signal(i32),
    /// It could not be waited for.
    Unknown(String),
}

impl ProcessExit {
    pub fn of(status: &std::io::Result<std::process::ExitStatus>) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => ProcessExit::Code(c),
                (None, Some(sig)) => ProcessExit::Signal(sig),
                _ => ProcessExit::Unknown("ended abnormally".into()),
            },
            Err(e) => ProcessExit::Unknown(e.to_string()),
        }
    }

    fn describe(&self) -> String {
        match self {
            ProcessExit::Code(c) => format!("exited with status {c}"),
            ProcessExit::Signal(s) => format!("was killed by signal {s}"),
            ProcessExit::Unknown(why) => format!("could not be waited for ({why})"),
        }
    }
}

/// Everything the end depends on.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub exit: ProcessExit,
    pub stopped: Option<StopReason>,
    /// The first out-of-memory message it printed.
    pub out_of_memory: Option<String>,
    /// The last lines of its stderr.
    pub stderr_tail: Vec<String>,
    /// The per-device batch it ran with (`oom_batch`), what an out-of-memory retry halves.
    pub batch: Option<u32>,
    /// The metric it reports (`metric.name`).
    pub metric: String,
    pub evaluations: usize,
    pub result: TrialResult,
}

/// The trial's end.
pub fn end_of(o: Outcome) -> TrialEnd {
    match o.stopped {
        Some(StopReason::Pruned) => return TrialEnd::Pruned { result: o.result },
        Some(StopReason::Signal(sig)) => {
            return TrialEnd::Stopped {
                message: format!("stopped by signal {sig} (passed on to the program)"),
                resume_step: None,
            }
        }
        Some(StopReason::OrchestratorGone) => {
            return TrialEnd::Stopped {
                message: "the orchestrator went away; the program was stopped".into(),
                resume_step: None,
            }
        }
        None => {}
    }
    let tail = if o.stderr_tail.is_empty() {
        String::new()
    } else {
        format!(": {}", o.stderr_tail.join(" | "))
    };
    match (&o.exit, o.out_of_memory) {
        (ProcessExit::Code(0), _) if o.evaluations > 0 => TrialEnd::Finished { result: o.result },
        (ProcessExit::Code(0), _) => TrialEnd::InternalError {
            message: format!(
                "the program exited successfully but printed no report holding `{}` (print one \
                 JSON object per line on stdout, e.g. {{\"{}\": 0.41}})",
                o.metric, o.metric
            ),
        },
        (_, Some(message)) => TrialEnd::OutOfMemory {
            micro_batch: o.batch.unwrap_or(1),
            message,
        },
        (exit, None) => TrialEnd::InternalError {
            message: format!("the program {}{tail}", exit.describe()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn outcome(exit: ProcessExit) -> Outcome {
        Outcome {
            exit,
            stopped: None,
            out_of_memory: None,
            stderr_tail: vec!["Traceback".into(), "ValueError: boom".into()],
            batch: Some(32),
            metric: "val_loss".into(),
            evaluations: 2,
            result: crate::program_trial::curve::Curve::new(Default::default()).result(
                1.0,
                PathBuf::from("/c"),
                1,
            ),
        }
    }

    #[test]
    fn each_way_a_program_ends() {
        assert!(matches!(
            end_of(outcome(ProcessExit::Code(0))),
            TrialEnd::Finished { .. }
        ));
        let silent = Outcome {
            evaluations: 0,
            ..outcome(ProcessExit::Code(0))
        };
        assert!(end_of(silent)
            .message()
            .contains("no report holding `val_loss`"));
        let crashed = end_of(outcome(ProcessExit::Code(1)));
        assert_eq!(
            crashed.message(),
            "the program exited with status 1: Traceback | ValueError: boom"
        );
        assert!(matches!(crashed, TrialEnd::InternalError { .. }));
        let oom = Outcome {
            out_of_memory: Some("torch.OutOfMemoryError: CUDA out of memory.".into()),
            ..outcome(ProcessExit::Code(1))
        };
        assert_eq!(
            end_of(oom),
            TrialEnd::OutOfMemory {
                micro_batch: 32,
                message: "torch.OutOfMemoryError: CUDA out of memory.".into()
            }
        );
        // Caught and survived (exit 0): finished.
        let survived = Outcome {
            out_of_memory: Some("CUDA out of memory".into()),
            ..outcome(ProcessExit::Code(0))
        };
        assert!(matches!(end_of(survived), TrialEnd::Finished { .. }));
        let pruned = Outcome {
            stopped: Some(StopReason::Pruned),
            ..outcome(ProcessExit::Signal(15))
        };
        assert!(matches!(end_of(pruned), TrialEnd::Pruned { .. }));
        // Stopped, even when the program exits 0 on the signal: it did not finish.
        let stopped = Outcome {
            stopped: Some(StopReason::Signal(15)),
            ..outcome(ProcessExit::Code(0))
        };
        assert!(matches!(end_of(stopped), TrialEnd::Stopped { .. }));
        assert!(end_of(outcome(ProcessExit::Signal(9)))
            .message()
            .starts_with("the program was killed by signal 9"));
    }
}
