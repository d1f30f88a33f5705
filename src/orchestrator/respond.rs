//! The run loop as event → response: every event the loop meets (a trial's progress, its end, an
//! interrupt, a start or a start that failed, a Slurm job waiting, a trial `method: bayes`
//! proposed, evaluations to judge) goes through `respond` (or `judge`), a pure function of the
//! event and the part of the loop's state it needs, which returns the actions to take in order.
//! The loop (`runner`) only carries them out: through the executor, the journal, the scheduler
//! and a reporter. No I/O here.

use crate::orchestrator::decide::{self, AfterExit, OnInterrupt, Placement};
use crate::orchestrator::executor::{with_log_tail, Exit, Stop};
use crate::protocol::journal::{Event, Handle};
use crate::protocol::trial::{EpochMetrics, ProgressEvent, ReadError, TrialEnd, TrialResult};
use crate::spec::hyperband::Hyperband;
use crate::spec::params::TrialParams;
use crate::spec::{MetricSpec, OnOom};

/// A trial's end, from what it says (its result.json, `end`) and how its process or job ended
/// (`exit`): the trial's own end is the truth whenever it left one; without one (killed by a
/// signal, crashed before it could write it) the end is a failure described from the exit and
/// the last lines of its log (`tail`), or an out-of-memory end at the micro-batch it ran with
/// (`micro`) when its executor saw it killed for its memory. Never reads the text of a message
/// to learn the kind.
pub fn resolve_end(
    exit: &Exit,
    end: Result<TrialEnd, ReadError>,
    micro: u32,
    tail: &[String],
) -> TrialEnd {
    let unreadable = match end {
        Ok(end) => return end,
        Err(e) => e,
    };
    match exit {
        Exit::Success => TrialEnd::InternalError {
            message: format!("exited successfully but {unreadable}"),
        },
        Exit::OutOfMemory(how) => TrialEnd::OutOfMemory {
            micro_batch: micro,
            message: with_log_tail(how.clone(), tail),
        },
        exit => TrialEnd::InternalError {
            message: with_log_tail(exit.describe(), tail),
        },
    }
}

/// What the loop knows of the trial an event is about.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialView {
    pub id: usize,
    /// How the user tells it from the others (method, learning rate...).
    pub label: String,
    pub batch_size: u32,
    /// Early termination stopped it (journalled `pruned`): its best evaluation is its result.
    pub pruned: bool,
}

/// Something the run loop met.
#[derive(Debug, Clone, PartialEq)]
pub enum LoopEvent {
    /// A trial printed a progress event.
    Progress {
        trial: TrialView,
        event: ProgressEvent,
    },
    /// A trial's process or job ended; `end` as `resolve_end` made it of its
    /// result.json and its exit.
    Ended { trial: TrialView, end: TrialEnd },
    /// Interrupts (Ctrl-C, SIGTERM) counted since the sweep started.
    Interrupts(usize),
    /// A trial started under `handle`.
    Started {
        trial: TrialView,
        handle: Handle,
        placement: Placement,
    },
    /// A run of a trial that an earlier orchestrator started is followed, not started again;
    /// `journalled` when the earlier one journalled its start.
    Reattached {
        trial: TrialView,
        handle: Handle,
        placement: Placement,
        journalled: bool,
    },
    /// A trial could not be started.
    StartFailed { trial: TrialView, error: String },
    /// A trial waits for something that may never come (a Slurm job pending hopelessly).
    Waiting { trial: usize, reason: String },
    /// `method: bayes` proposed a trial, planned now (`refusal` when it cannot run).
    Proposed {
        trial: TrialView,
        gpus: usize,
        params: std::collections::BTreeMap<String, serde_json::Value>,
        estimate_mb: Option<f64>,
        assignment: std::collections::BTreeMap<String, serde_json::Value>,
        refusal: Option<String>,
    },
}

/// The part of the loop's state a response depends on.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    pub metric: &'a MetricSpec,
    pub on_oom: OnOom,
    /// `early_terminate` is set: evaluations are judged.
    pub judges: bool,
    /// The user interrupted: no trial starts any more and running ones are stopping.
    pub stopping: bool,
    /// A trial reached `metric.target`: no trial starts any more.
    pub target_reached: bool,
    /// Trials running now.
    pub running: Vec<usize>,
    /// Trials waiting in the queue.
    pub queued: usize,
}

/// Why no trial starts any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Interrupted,
    TargetReached,
}

/// How a trial counts in the run's summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Ended with a result (pruned ones included).
    Finished,
    /// Of those, stopped by early termination.
    Pruned,
    Failed,
}

/// What the loop does, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Journal this event (then apply it to the trial rows).
    Journal(Event),
    /// Tell the user this line.
    Tell(String),
    /// The reporter shows a trial's progress event.
    Show {
        trial: usize,
        event: ProgressEvent,
    },
    /// The reporter shows a trial as running.
    ShowStarted {
        trial: usize,
        label: String,
    },
    /// The reporter shows a trial's run as over, with this line.
    ShowEnded {
        trial: usize,
        line: String,
    },
    /// Stop a running trial through the executor.
    Stop {
        trial: usize,
        how: Stop,
    },
    /// Judge the trial's evaluations for early termination (`judge`).
    Judge {
        trial: usize,
    },
    /// Write the trial's prune file: it stops at its next step, its best evaluation its result.
    Prune {
        trial: usize,
        note: serde_json::Value,
    },
    /// Put the trial back at the head of the queue (a retry at a smaller micro-batch), one more
    /// run to wait for.
    Requeue {
        trial: usize,
    },
    /// Add a proposed trial at the end of the queue, one more run to wait for.
    Enqueue {
        trial: usize,
        gpus: usize,
    },
    /// Drop every queued trial.
    DropQueue,
    /// No trial starts any more.
    Close(Closed),
    Count(Count),
    /// Under `checkpoints: {keep: N}`, delete what retention says.
    EnforceRetention,
    /// Rebuild results.csv, best/ and the report.
    Refresh,
    /// End the run now (killed on a second interrupt).
    Finish {
        interrupted: bool,
    },
}

/// The actions for `event` in `now`.
pub fn respond(event: LoopEvent, now: &Situation) -> Vec<Action> {
    match event {
        LoopEvent::Progress { trial, event } => on_progress(&trial, event, now),
        LoopEvent::Ended { trial, end } => on_end(&trial, end, now),
        LoopEvent::Interrupts(count) => on_interrupts(count, now),
        LoopEvent::Started {
            trial,
            handle,
            placement,
        } => started(&trial, handle, &placement, true),
        LoopEvent::Reattached {
            trial,
            handle,
            placement,
            journalled,
        } => {
            let mut actions = started(&trial, handle, &placement, !journalled);
            actions.push(Action::Tell(format!(
                "trial {:04} was started as {} before: following it, not starting it again",
                trial.id,
                describe_handle(handle)
            )));
            actions
        }
        LoopEvent::StartFailed { trial, error } => {
            let reason = format!("could not start: {error}");
            vec![
                Action::Count(Count::Failed),
                Action::Journal(Event::TrialFailed {
                    trial: trial.id,
                    reason: reason.clone(),
                }),
                Action::ShowEnded {
                    trial: trial.id,
                    line: format!("trial {:04} failed: {reason}", trial.id),
                },
                Action::Refresh,
            ]
        }
        LoopEvent::Waiting { trial, reason } => vec![
            Action::Tell(format!("trial {trial:04} waiting: {reason}")),
            Action::Journal(Event::TrialWaiting { trial, reason }),
            Action::Refresh,
        ],
        LoopEvent::Proposed {
            trial,
            gpus,
            params,
            estimate_mb,
            assignment,
            refusal,
        } => {
            let mut actions = vec![Action::Journal(Event::TrialPlanned {
                trial: trial.id,
                params,
                estimate_mb,
                assignment: Some(assignment),
            })];
            match refusal {
                Some(reason) => actions.extend([
                    Action::Journal(Event::TrialRefused {
                        trial: trial.id,
                        reason: reason.clone(),
                    }),
                    Action::Tell(format!("trial {:04} refused: {reason}", trial.id)),
                ]),
                None => actions.push(Action::Enqueue {
                    trial: trial.id,
                    gpus,
                }),
            }
            actions
        }
    }
}

fn started(trial: &TrialView, handle: Handle, placement: &Placement, journal: bool) -> Vec<Action> {
    let mut actions = Vec::new();
    if journal {
        let (pid, job) = handle.fields();
        actions.push(Action::Journal(Event::TrialStarted {
            trial: trial.id,
            devices: placement.physical.clone(),
            threads: placement.threads,
            pid,
            job,
        }));
    }
    actions.push(Action::ShowStarted {
        trial: trial.id,
        label: trial.label.clone(),
    });
    actions
}

/// A progress event: shown; an evaluation may reach `metric.target` (no trial starts any
/// more) and is judged under early termination.
fn on_progress(trial: &TrialView, event: ProgressEvent, now: &Situation) -> Vec<Action> {
    let mut actions = Vec::new();
    if let ProgressEvent::Epoch(m) = &event {
        let reached = m
            .metric(&now.metric.name)
            .is_some_and(|v| now.metric.reaches_target(v));
        if reached && !now.target_reached {
            actions.extend([
                Action::Close(Closed::TargetReached),
                Action::DropQueue,
                Action::Tell(format!(
                    "trial {:04} reached metric.target: no new trials start ({} queued dropped)",
                    trial.id, now.queued
                )),
            ]);
        }
        if now.judges {
            actions.push(Action::Judge { trial: trial.id });
        }
    }
    actions.insert(
        0,
        Action::Show {
            trial: trial.id,
            event,
        },
    );
    actions
}

/// A trial's end: what it means (`decide::after_exit`, or a pruned trial's result), journalled
/// and shown, then retention and the results.
fn on_end(trial: &TrialView, end: TrialEnd, now: &Situation) -> Vec<Action> {
    let id = trial.id;
    let mut actions = if trial.pruned {
        pruned_end(trial, end)
    } else {
        match decide::after_exit(end, now.stopping, now.on_oom, trial.batch_size) {
            AfterExit::Finished(result) => {
                let line = finished_line(trial, &result);
                vec![
                    Action::Count(Count::Finished),
                    Action::Journal(Event::TrialFinished {
                        trial: id,
                        result: *result,
                    }),
                    Action::ShowEnded { trial: id, line },
                ]
            }
            AfterExit::Retry {
                micro,
                retry,
                reason,
            } => vec![
                Action::Journal(Event::TrialOutOfMemory {
                    trial: id,
                    micro_batch: micro,
                    retry_micro_batch: Some(retry),
                    reason,
                }),
                Action::Requeue { trial: id },
                Action::ShowEnded {
                    trial: id,
                    line: format!(
                        "trial {id:04} out of memory at micro-batch {micro}; retrying with {retry} (grad_accum {})",
                        trial.batch_size / retry.max(1)
                    ),
                },
            ],
            AfterExit::OutOfMemory {
                micro,
                reason,
                why,
                stop_sweep,
            } => {
                let mut actions = vec![
                    Action::Journal(Event::TrialOutOfMemory {
                        trial: id,
                        micro_batch: micro,
                        retry_micro_batch: None,
                        reason,
                    }),
                    Action::Count(Count::Failed),
                    Action::Journal(Event::TrialFailed {
                        trial: id,
                        reason: why.clone(),
                    }),
                    Action::ShowEnded {
                        trial: id,
                        line: format!("trial {id:04} failed: {why}"),
                    },
                ];
                if stop_sweep {
                    actions.extend([
                        Action::DropQueue,
                        Action::Tell(format!(
                            "on_oom: fail: {} queued trials will not start",
                            now.queued
                        )),
                    ]);
                }
                actions
            }
            AfterExit::Stopped { reason } => vec![
                Action::Journal(Event::TrialStopped { trial: id, reason }),
                Action::ShowEnded {
                    trial: id,
                    line: format!("trial {id:04} stopped"),
                },
            ],
            AfterExit::Failed { reason } => vec![
                Action::Count(Count::Failed),
                Action::Journal(Event::TrialFailed {
                    trial: id,
                    reason: reason.clone(),
                }),
                Action::ShowEnded {
                    trial: id,
                    line: format!("trial {id:04} failed: {reason}"),
                },
            ],
        }
    };
    actions.extend([Action::EnforceRetention, Action::Refresh]);
    actions
}

/// The end of a trial early termination stopped: its best evaluation so far is its result,
/// whatever else it says.
fn pruned_end(trial: &TrialView, end: TrialEnd) -> Vec<Action> {
    let id = trial.id;
    let mut actions = vec![Action::Count(Count::Finished), Action::Count(Count::Pruned)];
    match end {
        TrialEnd::Finished { result } | TrialEnd::Pruned { result } => {
            let line = format!(
                "trial {id:04} pruned: {} best accuracy {} after {} steps",
                trial.label,
                accuracy(&result),
                result.steps.unwrap_or(0)
            );
            actions.extend([
                Action::Journal(Event::TrialFinished { trial: id, result }),
                Action::ShowEnded { trial: id, line },
            ])
        }
        other => actions.push(Action::ShowEnded {
            trial: id,
            line: format!(
                "trial {id:04} pruned; it ended without a result: {}",
                other.message()
            ),
        }),
    }
    actions
}

/// The interrupts counted so far: the first stops gracefully, the second kills and ends the
/// run (`decide::on_interrupt`).
fn on_interrupts(count: usize, now: &Situation) -> Vec<Action> {
    match decide::on_interrupt(count, now.stopping) {
        OnInterrupt::Continue => Vec::new(),
        OnInterrupt::StopGracefully => {
            let mut actions = vec![Action::Close(Closed::Interrupted), Action::DropQueue];
            actions.extend(now.running.iter().map(|&trial| Action::Stop {
                trial,
                how: Stop::Gracefully,
            }));
            actions.push(Action::Tell(format!(
                "interrupted: {} queued trials will not start, {} running ones are stopping (Ctrl-C again to kill them now); continue later with --resume",
                now.queued,
                now.running.len()
            )));
            actions
        }
        OnInterrupt::KillNow => {
            let mut actions = Vec::new();
            for &trial in &now.running {
                actions.extend([
                    Action::Stop {
                        trial,
                        how: Stop::Kill,
                    },
                    Action::Journal(Event::TrialStopped {
                        trial,
                        reason: "killed on a second interrupt".into(),
                    }),
                ]);
            }
            actions.extend([Action::Refresh, Action::Finish { interrupted: true }]);
            actions
        }
    }
}

/// What a trial is judged on at its evaluations so far.
pub struct Judging<'a> {
    pub rule: &'a Hyperband,
    pub trial: usize,
    /// How many evaluations the trial plans.
    pub planned: usize,
    pub evaluations: &'a [EpochMetrics],
    /// The metric early termination judges by.
    pub judged_by: &'a MetricSpec,
    /// The bands the trial was judged at already.
    pub judged: &'a [usize],
}

/// Early termination for a trial that evaluated: the bands it reached that were not judged yet
/// are judged (`Hyperband::due`, against what other trials were judged by there, `history`),
/// each judgement journalled before anything acts on it; a trial that is stopped gets its
/// prune file, which it sees at its next step.
pub fn judge(j: &Judging, history: impl Fn(usize) -> Vec<f64>) -> Vec<Action> {
    let mut losses = Vec::new();
    for m in j.evaluations {
        match m.metric(&j.judged_by.name).filter(|v| v.is_finite()) {
            Some(v) => losses.push(j.judged_by.as_loss(v)),
            None => break,
        }
    }
    let Ok(bands) = j.rule.bands(j.planned) else {
        return Vec::new();
    };
    let mut actions = Vec::new();
    for d in j.rule.due(&bands, &losses, j.judged, j.planned, history) {
        let step = j.evaluations.get(d.band - 1).map_or(0, |m| m.step);
        actions.push(Action::Journal(Event::TrialJudged {
            trial: j.trial,
            band: d.band,
            step,
            value: d.judgement.value,
            threshold: d.judgement.threshold,
            pruned: d.judgement.stop,
        }));
        if d.judgement.stop {
            actions.extend([
                Action::Prune {
                    trial: j.trial,
                    note: serde_json::json!({
                        "band": d.band,
                        "step": step,
                        "value": d.judgement.value,
                        "threshold": d.judgement.threshold,
                    }),
                },
                Action::Tell(format!(
                    "trial {:04} pruned at band {} (step {step}): {:.4} worse than threshold {:.4}",
                    j.trial, d.band, d.judgement.value, d.judgement.threshold
                )),
            ]);
        }
    }
    if !actions.is_empty() {
        actions.push(Action::Refresh);
    }
    actions
}

fn finished_line(trial: &TrialView, result: &TrialResult) -> String {
    format!(
        "trial {:04} finished: {} accuracy {} dev_loss {:.4} ({:.0} s)",
        trial.id,
        trial.label,
        accuracy(result),
        result.dev_loss,
        result.seconds
    )
}

fn accuracy(result: &TrialResult) -> String {
    result
        .accuracy
        .map(|a| format!("{a:.4}"))
        .unwrap_or_else(|| "-".into())
}

/// How the user tells a trial from the others.
/// A trial's label: a program's parameters as `name=value`, else [`label`].
pub fn label_of(plan: &crate::plan::Plan, t: &crate::plan::PlannedTrial) -> String {
    match &plan.program {
        Some(_) => {
            let words: Vec<String> = t
                .assignment
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            let text = words.join(" ");
            match text.char_indices().nth(60) {
                Some((i, _)) => format!("{}…", &text[..i]),
                None => text,
            }
        }
        None => label(&t.params),
    }
}

pub fn label(p: &TrialParams) -> String {
    format!(
        "{} lr={:.0e} ep={} bs={}{}",
        p.method.as_str(),
        p.learning_rate,
        p.epochs,
        p.batch_size,
        if p.gpus > 1 {
            format!(" gpus={}", p.gpus)
        } else {
            String::new()
        }
    )
}

/// A journalled run, in words.
pub fn describe_handle(handle: Handle) -> String {
    match handle {
        Handle::Process(pid) => format!("process {pid}"),
        Handle::SlurmJob(job) => format!("Slurm job {job}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::trial::TrialResult;

    fn result(accuracy: f64) -> TrialResult {
        let mut r: TrialResult = serde_json::from_value(serde_json::json!({
            "best_epoch": 1, "accuracy": 0.5, "dev_loss": 1.0, "train_loss": 1.0,
            "seconds": 2.0, "tokens_per_sec": 1.0, "peak_rss_mb": 1.0,
            "trainable_params": 1, "micro_batch": 8, "grad_accum": 2, "checkpoint": "/c",
            "steps": 6
        }))
        .unwrap();
        r.accuracy = Some(accuracy);
        r
    }

    fn trial(pruned: bool) -> TrialView {
        TrialView {
            id: 3,
            label: "lora lr=1e-4 ep=2 bs=16".into(),
            batch_size: 16,
            pruned,
        }
    }

    fn now(metric: &MetricSpec) -> Situation<'_> {
        Situation {
            metric,
            on_oom: OnOom::HalveBatch,
            judges: false,
            stopping: false,
            target_reached: false,
            running: vec![1, 3],
            queued: 4,
        }
    }

    fn oom(micro_batch: u32) -> TrialEnd {
        TrialEnd::OutOfMemory {
            micro_batch,
            message: "memory allocation of 64 bytes failed".into(),
        }
    }

    /// The actions of a kind, for tables that name what matters.
    fn kinds(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .map(|a| match a {
                Action::Journal(e) => match e {
                    Event::TrialFinished { .. } => "journal finished",
                    Event::TrialFailed { .. } => "journal failed",
                    Event::TrialStopped { .. } => "journal stopped",
                    Event::TrialOutOfMemory {
                        retry_micro_batch: Some(_),
                        ..
                    } => "journal oom retry",
                    Event::TrialOutOfMemory { .. } => "journal oom",
                    Event::TrialStarted { .. } => "journal started",
                    Event::TrialPlanned { .. } => "journal planned",
                    Event::TrialRefused { .. } => "journal refused",
                    Event::TrialWaiting { .. } => "journal waiting",
                    Event::TrialJudged { .. } => "journal judged",
                    _ => "journal other",
                },
                Action::Tell(_) => "tell",
                Action::Show { .. } => "show",
                Action::ShowStarted { .. } => "show started",
                Action::ShowEnded { .. } => "show ended",
                Action::Stop {
                    how: Stop::Gracefully,
                    ..
                } => "stop",
                Action::Stop {
                    how: Stop::Kill, ..
                } => "kill",
                Action::Judge { .. } => "judge",
                Action::Prune { .. } => "prune",
                Action::Requeue { .. } => "requeue",
                Action::Enqueue { .. } => "enqueue",
                Action::DropQueue => "drop queue",
                Action::Close(Closed::Interrupted) => "close: interrupted",
                Action::Close(Closed::TargetReached) => "close: target",
                Action::Count(Count::Finished) => "count finished",
                Action::Count(Count::Pruned) => "count pruned",
                Action::Count(Count::Failed) => "count failed",
                Action::EnforceRetention => "retention",
                Action::Refresh => "refresh",
                Action::Finish { .. } => "finish",
            })
            .collect()
    }

    #[test]
    fn a_trials_own_end_is_the_truth_and_an_exit_speaks_only_without_one() {
        let missing = || {
            Err(ReadError {
                path: "/r/trials/0001/result.json".into(),
                message: "No such file or directory".into(),
            })
        };
        let tail = vec!["loading".to_string(), "Segmentation fault".to_string()];
        let finished = TrialEnd::Finished {
            result: result(0.5),
        };
        // (exit, result.json, the end the loop acts on)
        let table: Vec<(Exit, Result<TrialEnd, ReadError>, TrialEnd)> = vec![
            (Exit::Success, Ok(finished.clone()), finished.clone()),
            // The trial's own kind wins over how its process ended.
            (Exit::Code(3), Ok(oom(16)), oom(16)),
            (Exit::Signal(6), Ok(oom(16)), oom(16)),
            (
                Exit::Code(2),
                Ok(TrialEnd::InvalidInput {
                    message: "train.json:3: tgt: missing".into(),
                }),
                TrialEnd::InvalidInput {
                    message: "train.json:3: tgt: missing".into(),
                },
            ),
            // No end: a failure told by the exit and the log's last lines...
            (
                Exit::Signal(9),
                missing(),
                TrialEnd::InternalError {
                    message: "killed by signal 9: loading | Segmentation fault".into(),
                },
            ),
            (
                Exit::Code(101),
                missing(),
                TrialEnd::InternalError {
                    message: "exit status 101: loading | Segmentation fault".into(),
                },
            ),
            (
                Exit::Other("Slurm job 7 was cancelled (CANCELLED)".into()),
                missing(),
                TrialEnd::InternalError {
                    message: "Slurm job 7 was cancelled (CANCELLED): loading | Segmentation fault"
                        .into(),
                },
            ),
            // ...an out-of-memory end at the micro-batch it ran with when killed for memory...
            (
                Exit::OutOfMemory("out of memory: Slurm job 7 exceeded its --mem".into()),
                missing(),
                TrialEnd::OutOfMemory {
                    micro_batch: 8,
                    message: "out of memory: Slurm job 7 exceeded its --mem: loading | Segmentation fault".into(),
                },
            ),
            // ...and a success without an end is no success.
            (
                Exit::Success,
                missing(),
                TrialEnd::InternalError {
                    message: "exited successfully but /r/trials/0001/result.json: No such file or directory".into(),
                },
            ),
        ];
        for (exit, end, want) in table {
            assert_eq!(resolve_end(&exit, end, 8, &tail), want, "{exit:?}");
        }
        // Text that reads like an out-of-memory is not one: only the kind counts.
        let killed = resolve_end(
            &Exit::Signal(6),
            missing(),
            8,
            &["memory allocation of 4096 bytes failed".to_string()],
        );
        assert!(
            matches!(killed, TrialEnd::InternalError { .. }),
            "{killed:?}"
        );
    }

    #[test]
    fn what_a_trials_end_leads_to() {
        let metric = MetricSpec::default();
        let finished = || TrialEnd::Finished {
            result: result(0.5),
        };
        let failed = || TrialEnd::InternalError {
            message: "killed by signal 9".into(),
        };
        // (pruned by the sweep, interrupted, on_oom, end, actions)
        let table: Vec<(bool, bool, OnOom, TrialEnd, Vec<&str>)> = vec![
            (
                false,
                false,
                OnOom::HalveBatch,
                finished(),
                vec!["count finished", "journal finished", "show ended"],
            ),
            // A pruned trial's best evaluation is its result...
            (
                true,
                false,
                OnOom::HalveBatch,
                TrialEnd::Pruned {
                    result: result(0.5),
                },
                vec![
                    "count finished",
                    "count pruned",
                    "journal finished",
                    "show ended",
                ],
            ),
            // ...and without one it still counts as pruned, nothing journalled.
            (
                true,
                false,
                OnOom::HalveBatch,
                failed(),
                vec!["count finished", "count pruned", "show ended"],
            ),
            (
                false,
                false,
                OnOom::HalveBatch,
                oom(8),
                vec!["journal oom retry", "requeue", "show ended"],
            ),
            (
                false,
                false,
                OnOom::HalveBatch,
                oom(1),
                vec![
                    "journal oom",
                    "count failed",
                    "journal failed",
                    "show ended",
                ],
            ),
            (
                false,
                false,
                OnOom::Skip,
                oom(8),
                vec![
                    "journal oom",
                    "count failed",
                    "journal failed",
                    "show ended",
                ],
            ),
            (
                false,
                false,
                OnOom::Fail,
                oom(8),
                vec![
                    "journal oom",
                    "count failed",
                    "journal failed",
                    "show ended",
                    "drop queue",
                    "tell",
                ],
            ),
            (
                false,
                true,
                OnOom::HalveBatch,
                oom(8),
                vec!["journal stopped", "show ended"],
            ),
            (
                false,
                true,
                OnOom::HalveBatch,
                failed(),
                vec!["journal stopped", "show ended"],
            ),
            (
                false,
                false,
                OnOom::HalveBatch,
                failed(),
                vec!["count failed", "journal failed", "show ended"],
            ),
        ];
        for (pruned, stopping, on_oom, end, mut want) in table {
            let situation = Situation {
                stopping,
                on_oom,
                ..now(&metric)
            };
            let what = format!("pruned={pruned} stopping={stopping} {on_oom:?} {end:?}");
            let actions = respond(
                LoopEvent::Ended {
                    trial: trial(pruned),
                    end,
                },
                &situation,
            );
            want.extend(["retention", "refresh"]);
            assert_eq!(kinds(&actions), want, "{what}");
        }
    }

    #[test]
    fn the_lines_and_journal_of_an_end_say_what_happened() {
        let metric = MetricSpec::default();
        let actions = respond(
            LoopEvent::Ended {
                trial: trial(false),
                end: oom(8),
            },
            &now(&metric),
        );
        assert!(actions.contains(&Action::Journal(Event::TrialOutOfMemory {
            trial: 3,
            micro_batch: 8,
            retry_micro_batch: Some(4),
            reason: "memory allocation of 64 bytes failed".into(),
        })));
        assert!(actions.contains(&Action::ShowEnded {
            trial: 3,
            line: "trial 0003 out of memory at micro-batch 8; retrying with 4 (grad_accum 4)"
                .into()
        }));
        let fail = Situation {
            on_oom: OnOom::Fail,
            ..now(&metric)
        };
        let actions = respond(
            LoopEvent::Ended {
                trial: trial(false),
                end: oom(8),
            },
            &fail,
        );
        assert!(actions.contains(&Action::Tell(
            "on_oom: fail: 4 queued trials will not start".into()
        )));
        let actions = respond(
            LoopEvent::Ended {
                trial: trial(true),
                end: TrialEnd::Finished {
                    result: result(0.25),
                },
            },
            &now(&metric),
        );
        assert!(actions.contains(&Action::ShowEnded {
            trial: 3,
            line: "trial 0003 pruned: lora lr=1e-4 ep=2 bs=16 best accuracy 0.2500 after 6 steps"
                .into()
        }));
    }

    #[test]
    fn a_first_interrupt_stops_the_running_trials_and_a_second_kills_them() {
        let metric = MetricSpec::default();
        assert!(respond(LoopEvent::Interrupts(0), &now(&metric)).is_empty());
        let first = respond(LoopEvent::Interrupts(1), &now(&metric));
        assert_eq!(
            kinds(&first),
            ["close: interrupted", "drop queue", "stop", "stop", "tell"]
        );
        let stopping = Situation {
            stopping: true,
            ..now(&metric)
        };
        assert!(respond(LoopEvent::Interrupts(1), &stopping).is_empty());
        let second = respond(LoopEvent::Interrupts(2), &stopping);
        assert_eq!(
            kinds(&second),
            [
                "kill",
                "journal stopped",
                "kill",
                "journal stopped",
                "refresh",
                "finish"
            ]
        );
        assert!(second.contains(&Action::Stop {
            trial: 3,
            how: Stop::Kill
        }));
    }

    #[test]
    fn an_evaluation_that_reaches_the_target_closes_the_sweep_once() {
        let metric = MetricSpec {
            target: Some(0.8),
            ..MetricSpec::default()
        };
        let evaluation = |accuracy: f64| LoopEvent::Progress {
            trial: trial(false),
            event: ProgressEvent::Epoch(EpochMetrics {
                epoch: 1,
                step: 4,
                train_loss: 1.0,
                dev_loss: 1.0,
                accuracy: Some(accuracy),
                tokens_per_sec: 1.0,
                peak_rss_mb: 1.0,
                elapsed_s: 1.0,
                eval_seconds: 0.1,
                accuracy_by_level: Vec::new(),
                reported: Default::default(),
            }),
        };
        let judging = Situation {
            judges: true,
            ..now(&metric)
        };
        // (accuracy, target reached before, actions)
        let table = [
            (0.5, false, vec!["show", "judge"]),
            (
                0.9,
                false,
                vec!["show", "close: target", "drop queue", "tell", "judge"],
            ),
            (0.9, true, vec!["show", "judge"]),
        ];
        for (accuracy, reached, want) in table {
            let situation = Situation {
                target_reached: reached,
                ..judging.clone()
            };
            assert_eq!(
                kinds(&respond(evaluation(accuracy), &situation)),
                want,
                "{accuracy} {reached}"
            );
        }
        let step = LoopEvent::Progress {
            trial: trial(false),
            event: ProgressEvent::Step {
                epoch: 1,
                step: 1,
                loss: 1.0,
                lr: 1e-4,
                grad_norm: 1.0,
            },
        };
        assert_eq!(kinds(&respond(step, &judging)), ["show"]);
    }

    #[test]
    fn starts_failed_starts_waits_and_proposals() {
        let metric = MetricSpec::default();
        let placement = Placement {
            physical: vec!["cpu".into()],
            devices: vec!["cpu".into()],
            threads: 2,
            cuda_visible_devices: None,
            memory_bytes: None,
            job: None,
        };
        let started = respond(
            LoopEvent::Started {
                trial: trial(false),
                handle: Handle::Process(42),
                placement: placement.clone(),
            },
            &now(&metric),
        );
        assert_eq!(kinds(&started), ["journal started", "show started"]);
        assert_eq!(
            started[0],
            Action::Journal(Event::TrialStarted {
                trial: 3,
                devices: vec!["cpu".into()],
                threads: 2,
                pid: Some(42),
                job: None
            })
        );
        // A re-attached run is journalled only when the earlier orchestrator did not.
        for (journalled, want) in [
            (true, vec!["show started", "tell"]),
            (false, vec!["journal started", "show started", "tell"]),
        ] {
            let actions = respond(
                LoopEvent::Reattached {
                    trial: trial(false),
                    handle: Handle::SlurmJob(9),
                    placement: placement.clone(),
                    journalled,
                },
                &now(&metric),
            );
            assert_eq!(kinds(&actions), want);
        }
        let failed = respond(
            LoopEvent::StartFailed {
                trial: trial(false),
                error: "sbatch refused the job: bad partition".into(),
            },
            &now(&metric),
        );
        assert_eq!(
            kinds(&failed),
            ["count failed", "journal failed", "show ended", "refresh"]
        );
        assert!(failed.contains(&Action::Journal(Event::TrialFailed {
            trial: 3,
            reason: "could not start: sbatch refused the job: bad partition".into()
        })));
        let waiting = respond(
            LoopEvent::Waiting {
                trial: 3,
                reason: "pending: PartitionConfig".into(),
            },
            &now(&metric),
        );
        assert_eq!(kinds(&waiting), ["tell", "journal waiting", "refresh"]);
        let proposed = |refusal: Option<&str>| LoopEvent::Proposed {
            trial: trial(false),
            gpus: 2,
            params: Default::default(),
            estimate_mb: Some(10.0),
            assignment: [("lr".to_string(), serde_json::json!(1e-4))].into(),
            refusal: refusal.map(String::from),
        };
        assert_eq!(
            kinds(&respond(proposed(None), &now(&metric))),
            ["journal planned", "enqueue"]
        );
        assert!(
            respond(proposed(None), &now(&metric)).contains(&Action::Enqueue { trial: 3, gpus: 2 })
        );
        assert_eq!(
            kinds(&respond(proposed(Some("8 devices")), &now(&metric))),
            ["journal planned", "journal refused", "tell"]
        );
    }

    #[test]
    fn a_trial_worse_than_its_band_is_judged_and_pruned_once() {
        let rule = Hyperband {
            min_iter: Some(1),
            max_iter: None,
            s: 0,
            eta: 2.0,
            strict: false,
        };
        let metric = MetricSpec::default();
        let evaluation = |step: usize, accuracy: f64| EpochMetrics {
            epoch: 1,
            step,
            train_loss: 1.0,
            dev_loss: 1.0,
            accuracy: Some(accuracy),
            tokens_per_sec: 1.0,
            peak_rss_mb: 1.0,
            elapsed_s: 1.0,
            eval_seconds: 0.1,
            accuracy_by_level: Vec::new(),
            reported: Default::default(),
        };
        let evaluations = [evaluation(4, 0.1)];
        let judging = Judging {
            rule: &rule,
            trial: 3,
            planned: 4,
            evaluations: &evaluations,
            judged_by: &metric,
            judged: &[],
        };
        // Others did far better at band 1.
        let actions = judge(&judging, |_| vec![-0.9, -0.8, -0.7]);
        assert_eq!(
            kinds(&actions),
            ["journal judged", "prune", "tell", "refresh"]
        );
        // Judged there already: nothing more.
        let again = Judging {
            judged: &[1],
            ..judging
        };
        assert!(judge(&again, |_| vec![-0.9, -0.8, -0.7]).is_empty());
    }
}
