//! The run loop's decisions, as pure functions: what a trial's end means (finished, retried with
//! a smaller micro-batch, failed, stopped), what an interrupt does, which checkpoints retention
//! deletes, which devices and limits a trial gets. No I/O here: `runner` does what these say.

use crate::plan::slurm::JobRequest;
use crate::plan::{Plan, PlannedTrial};
use crate::protocol::trial::{TrialEnd, TrialResult};
use crate::results::state::{TrialRow, Trials};
use crate::spec::memory::halved_micro_batch;
use crate::spec::params::TrialParams;
use crate::spec::tpe::Observation;
use crate::spec::{MetricSpec, OnOom};

/// What the run loop does about a trial that ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterExit {
    Finished(Box<TrialResult>),
    /// Out of memory and retried at the queue's head with `retry` as its micro-batch.
    Retry {
        micro: u32,
        retry: u32,
        reason: String,
    },
    /// Out of memory and not retried; under `on_oom: fail` the queue is dropped as well.
    OutOfMemory {
        micro: u32,
        reason: String,
        why: String,
        stop_sweep: bool,
    },
    /// Ended while the sweep was being interrupted: it runs again on resume.
    Stopped {
        reason: String,
    },
    Failed {
        reason: String,
    },
}

/// The trial of a batch of `batch` (not pruned by the sweep) ended with `end`.
pub fn after_exit(end: TrialEnd, interrupted: bool, on_oom: OnOom, batch: u32) -> AfterExit {
    let reason = end.message();
    match end {
        TrialEnd::Finished { result } | TrialEnd::Pruned { result } => {
            AfterExit::Finished(Box::new(result))
        }
        _ if interrupted => AfterExit::Stopped {
            reason: format!("stopped on interrupt ({reason})"),
        },
        TrialEnd::OutOfMemory {
            micro_batch: micro,
            message,
        } => match on_oom {
            OnOom::HalveBatch if micro > 1 => AfterExit::Retry {
                micro,
                retry: halved_micro_batch(micro as usize, batch as usize) as u32,
                reason: message,
            },
            _ => AfterExit::OutOfMemory {
                micro,
                why: format!(
                    "out of memory at micro-batch {micro} (on_oom: {on_oom:?}): {message}"
                ),
                reason: message,
                stop_sweep: on_oom == OnOom::Fail,
            },
        },
        // Stopped from outside while the sweep was not: as before typed ends, a failure.
        TrialEnd::Stopped { message, .. }
        | TrialEnd::InvalidInput { message }
        | TrialEnd::InternalError { message } => AfterExit::Failed { reason: message },
    }
}

/// The trial's parameters for its next run: as planned, with the micro-batch that out-of-memory
/// retries left it.
pub fn params_to_run(t: &PlannedTrial, trials: &Trials) -> TrialParams {
    let mut params = t.params.clone();
    if let Some(m) = trials.get(t.id).and_then(|r| r.retry_micro_batch) {
        params.micro_batch = Some(m);
    }
    params
}

/// What the run loop does about the interrupts (Ctrl-C, SIGTERM) counted so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInterrupt {
    Continue,
    /// The first: start no more trials and ask the running ones to stop (they save and exit).
    StopGracefully,
    /// The second: kill the running trials now and end the sweep.
    KillNow,
}

pub fn on_interrupt(interrupts: usize, already_stopping: bool) -> OnInterrupt {
    match interrupts {
        0 => OnInterrupt::Continue,
        1 if already_stopping => OnInterrupt::Continue,
        1 => OnInterrupt::StopGracefully,
        _ => OnInterrupt::KillNow,
    }
}

/// Under `checkpoints: {keep: N}`: the finished trials whose checkpoints go, every one outside the
/// N best (at least one is kept) that is not deleted yet. Ranked by `MetricSpec::rank`.
pub fn checkpoints_to_delete<'a>(
    rows: impl IntoIterator<Item = &'a TrialRow>,
    metric: &MetricSpec,
    keep: usize,
) -> Vec<usize> {
    let mut ranked: Vec<&TrialRow> = rows
        .into_iter()
        .filter(|r| r.status.ranks() && r.result.is_some())
        .collect();
    ranked.sort_by(|a, b| crate::results::compare(a, b, metric));
    ranked
        .into_iter()
        .skip(keep.max(1))
        .filter(|r| !r.checkpoint_deleted)
        .map(|r| r.trial)
        .collect()
}

/// What `method: bayes` learns from: every proposed trial (one with a journalled assignment),
/// its loss the metric of its result (negated when maximised) when it finished or was pruned;
/// none when it failed, was refused, or still runs, which the sampler counts as bad.
pub fn observations<'a>(
    rows: impl IntoIterator<Item = &'a TrialRow>,
    metric: &MetricSpec,
) -> Vec<Observation> {
    rows.into_iter()
        .filter_map(|r| {
            let assignment = r.assignment.clone()?;
            let loss = r
                .result
                .as_ref()
                .filter(|_| r.status.ranks())
                .and_then(|res| res.metric(&metric.name))
                .filter(|v| v.is_finite())
                .map(|v| metric.as_loss(v));
            Some(Observation { assignment, loss })
        })
        .collect()
}

/// How many trials `method: bayes` proposes now: one per place free under `parallel` that no
/// queued trial takes, within what `run_cap` leaves, none once the sweep is closed to new
/// trials (interrupted, or `metric.target` reached). Proposing only when a place frees up lets
/// each proposal learn from every result before it.
pub fn proposals_due(
    run_cap: usize,
    proposed: usize,
    running: usize,
    queued: usize,
    parallel: usize,
    closed: bool,
) -> usize {
    if closed {
        return 0;
    }
    parallel
        .saturating_sub(running + queued)
        .min(run_cap.saturating_sub(proposed))
}

/// The values other trials were judged by at `band` (early termination's history there).
pub fn band_history<'a>(
    rows: impl IntoIterator<Item = &'a TrialRow>,
    band: usize,
    except: usize,
) -> Vec<f64> {
    rows.into_iter()
        .filter(|r| r.trial != except)
        .flat_map(|r| r.judgements.iter().filter(|j| j.band == band))
        .map(|j| j.value)
        .collect()
}

/// Whether a trial's result already reaches `metric.target` (what a resumed sweep knows).
pub fn target_reached<'a>(
    rows: impl IntoIterator<Item = &'a TrialRow>,
    metric: &MetricSpec,
) -> bool {
    rows.into_iter().any(|r| {
        r.result
            .as_ref()
            .and_then(|res| res.metric(&metric.name))
            .is_some_and(|v| metric.reaches_target(v))
    })
}

/// Where a trial runs and how it is confined.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The pool's slot names (`cpu`, `cuda:N` with N the physical index), for the journal.
    pub physical: Vec<String>,
    /// The devices as the trial names them: its GPUs renumbered from 0 (it sees only its own
    /// through CUDA_VISIBLE_DEVICES), else the slot names.
    pub devices: Vec<String>,
    pub threads: usize,
    /// Physical CUDA ids, comma-separated.
    pub cuda_visible_devices: Option<String>,
    /// Bytes of memory a CPU trial may allocate (`resources.memory_per_device` x slots).
    pub memory_bytes: Option<u64>,
    /// With `executor: slurm`: what its job asks for.
    pub job: Option<JobRequest>,
}

pub fn placement(plan: &Plan, slots: &[usize]) -> Placement {
    let physical: Vec<String> = slots
        .iter()
        .map(|i| plan.pool.slots[*i].name.clone())
        .collect();
    let cuda: Vec<&str> = physical
        .iter()
        .filter_map(|d| d.strip_prefix("cuda:"))
        .collect();
    let devices = if cuda.is_empty() {
        physical.clone()
    } else {
        (0..physical.len()).map(|i| format!("cuda:{i}")).collect()
    };
    Placement {
        threads: plan.pool.threads_for(physical.len()),
        cuda_visible_devices: (!cuda.is_empty()).then(|| cuda.join(",")),
        memory_bytes: memory_bytes(plan, cuda.is_empty(), physical.len()),
        devices,
        physical,
        job: None,
    }
}

/// A trial's byte limit, the one rule for local and Slurm trials alike: a trial on CPUs
/// (`on_cpu`) with `replicas` model replicas may use `resources.memory_per_device` per replica
/// (a CUDA build's trial on the CPU maps no CUDA library: cudarc opens them at first use); a
/// trial on GPUs, or a pool without a CPU limit, has none.
pub fn memory_bytes(plan: &Plan, on_cpu: bool, replicas: usize) -> Option<u64> {
    let mb = plan.pool.cpu_memory_limit_mb.filter(|_| on_cpu)? * replicas as f64;
    Some((mb * 1024.0 * 1024.0) as u64)
}

/// Where `trial` runs: on the pool's `slots`, or as a Slurm job.
pub fn placement_for(plan: &Plan, trial: &PlannedTrial, slots: &[usize]) -> Placement {
    let mut placement = match plan.slurm {
        Some(_) => slurm_placement(plan, trial),
        None => placement(plan, slots),
    };
    // A user's program is not held to the built-in trainer's byte limit (RLIMIT_DATA would
    // also cap a CUDA program's mappings).
    if plan.program.is_some() {
        placement.memory_bytes = None;
    }
    placement
}

/// Where a trial of a Slurm sweep runs: Slurm picks the node and its GPUs (the job sees them
/// as CUDA_VISIBLE_DEVICES, renumbered from 0 by CUDA); with CPU stand-ins it trains on as many
/// CPU replicas, under `memory_per_device` per replica when given.
pub fn slurm_placement(plan: &Plan, trial: &PlannedTrial) -> Placement {
    let k = trial.params.gpus.max(1) as usize;
    let cpu = plan.slurm.as_ref().is_none_or(|s| s.cpu_stand_ins);
    let devices: Vec<String> = (0..k)
        .map(|i| {
            if cpu {
                "cpu".to_string()
            } else {
                format!("cuda:{i}")
            }
        })
        .collect();
    Placement {
        physical: vec![format!("slurm:gpu:{k}")],
        devices,
        threads: plan.threads_for(trial),
        cuda_visible_devices: None,
        memory_bytes: memory_bytes(plan, cpu, k),
        job: trial.job.clone(),
    }
}

/// The slots the scheduler hands out. A local pool's own; on Slurm, which places jobs itself,
/// enough for `parallel` of the largest trials, so only `parallel` bounds the jobs submitted.
pub fn scheduler_slots(plan: &Plan) -> usize {
    match plan.slurm {
        Some(_) => {
            let largest = plan
                .trials
                .iter()
                .map(|t| t.params.gpus.max(1) as usize)
                .max()
                .unwrap_or(1);
            largest * plan.pool.parallel.max(1)
        }
        None => plan.pool.slots.len(),
    }
}

/// The least time between two rebuilds of results.csv, best/ and report.html while a sweep
/// runs: often enough to watch, rarely enough that a thousand one-second trials are not spent
/// rereading every trial's files.
pub const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// A rebuild's share of the run loop's time at most (1/REFRESH_SHARE): a rebuild reads every
/// trial's files, so over thousands of trials it grows, and a fixed interval would let it take
/// the loop over (a thousand no-op trials spent more time rebuilding than running).
pub const REFRESH_SHARE: u32 = 50;

/// Whether stale results are rebuilt now, `since` the last rebuild (none yet: now), which took
/// `took`: after REFRESH_EVERY, or REFRESH_SHARE times `took` when that is longer.
pub fn refresh_due(since: Option<std::time::Duration>, took: std::time::Duration) -> bool {
    since.is_none_or(|d| d >= REFRESH_EVERY.max(took * REFRESH_SHARE))
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_are_rebuilt_at_most_once_a_refresh_interval() {
        use std::time::Duration;
        let quick = Duration::from_millis(5);
        assert!(refresh_due(None, Duration::ZERO));
        assert!(!refresh_due(Some(Duration::from_millis(10)), quick));
        assert!(refresh_due(Some(REFRESH_EVERY), quick));
        assert!(refresh_due(Some(Duration::from_secs(60)), quick));
    }

    #[test]
    fn a_slow_rebuild_waits_in_proportion_so_it_never_takes_the_loop_over() {
        use std::time::Duration;
        let slow = Duration::from_millis(300);
        // 300 ms a rebuild: not again before 50 x 300 ms = 15 s.
        assert!(!refresh_due(Some(Duration::from_secs(2)), slow));
        assert!(!refresh_due(Some(Duration::from_millis(14_999)), slow));
        assert!(refresh_due(Some(Duration::from_secs(15)), slow));
    }

    use super::*;
    use crate::results::state::Status;

    fn result() -> Box<TrialResult> {
        Box::new(
            serde_json::from_value(serde_json::json!({
                "best_epoch": 1, "accuracy": 0.5, "dev_loss": 1.0, "train_loss": 1.0,
                "seconds": 1.0, "tokens_per_sec": 1.0, "peak_rss_mb": 1.0,
                "trainable_params": 1, "micro_batch": 8, "grad_accum": 1, "checkpoint": "/c"
            }))
            .unwrap(),
        )
    }

    fn oom(micro_batch: u32) -> TrialEnd {
        TrialEnd::OutOfMemory {
            micro_batch,
            message: "memory allocation of 4096 bytes failed".into(),
        }
    }

    #[test]
    fn an_end_is_finished_retried_failed_or_stopped() {
        let finished = || TrialEnd::Finished { result: *result() };
        let failed = |m: &str| AfterExit::Failed { reason: m.into() };
        let internal = || TrialEnd::InternalError {
            message: "killed by signal 9".into(),
        };
        // (end, interrupted, on_oom, batch, what the loop does)
        let table = [
            (finished(), false, OnOom::HalveBatch, 16, AfterExit::Finished(result())),
            // Even while interrupted a trial that finished is finished.
            (finished(), true, OnOom::Fail, 16, AfterExit::Finished(result())),
            (
                TrialEnd::Pruned { result: *result() },
                false,
                OnOom::HalveBatch,
                16,
                AfterExit::Finished(result()),
            ),
            (
                oom(8),
                false,
                OnOom::HalveBatch,
                16,
                AfterExit::Retry {
                    micro: 8,
                    retry: 4,
                    reason: "memory allocation of 4096 bytes failed".into(),
                },
            ),
            // Halving keeps a divisor of the batch: 12 -> 6 -> 3 -> 1.
            (
                oom(3),
                false,
                OnOom::HalveBatch,
                12,
                AfterExit::Retry {
                    micro: 3,
                    retry: 1,
                    reason: "memory allocation of 4096 bytes failed".into(),
                },
            ),
            // Nothing left to halve.
            (
                oom(1),
                false,
                OnOom::HalveBatch,
                12,
                AfterExit::OutOfMemory {
                    micro: 1,
                    reason: "memory allocation of 4096 bytes failed".into(),
                    why: "out of memory at micro-batch 1 (on_oom: HalveBatch): memory allocation of 4096 bytes failed".into(),
                    stop_sweep: false,
                },
            ),
            (
                oom(8),
                false,
                OnOom::Skip,
                16,
                AfterExit::OutOfMemory {
                    micro: 8,
                    reason: "memory allocation of 4096 bytes failed".into(),
                    why: "out of memory at micro-batch 8 (on_oom: Skip): memory allocation of 4096 bytes failed".into(),
                    stop_sweep: false,
                },
            ),
            (
                oom(8),
                false,
                OnOom::Fail,
                16,
                AfterExit::OutOfMemory {
                    micro: 8,
                    reason: "memory allocation of 4096 bytes failed".into(),
                    why: "out of memory at micro-batch 8 (on_oom: Fail): memory allocation of 4096 bytes failed".into(),
                    stop_sweep: true,
                },
            ),
            // While interrupted, any end without a result is a stop (it runs again on resume).
            (
                oom(8),
                true,
                OnOom::HalveBatch,
                16,
                AfterExit::Stopped {
                    reason: "stopped on interrupt (out of memory at micro-batch 8: memory allocation of 4096 bytes failed)".into(),
                },
            ),
            (
                TrialEnd::Stopped {
                    message: "stopped on SIGTERM".into(),
                    resume_step: Some(4),
                },
                true,
                OnOom::HalveBatch,
                16,
                AfterExit::Stopped {
                    reason: "stopped on interrupt (stopped on SIGTERM)".into(),
                },
            ),
            // Stopped from outside while the sweep runs on: a failure, as before.
            (
                TrialEnd::Stopped {
                    message: "stopped on SIGTERM".into(),
                    resume_step: None,
                },
                false,
                OnOom::HalveBatch,
                16,
                failed("stopped on SIGTERM"),
            ),
            (internal(), false, OnOom::HalveBatch, 16, failed("killed by signal 9")),
            (
                TrialEnd::InvalidInput {
                    message: "no examples".into(),
                },
                false,
                OnOom::HalveBatch,
                16,
                failed("no examples"),
            ),
        ];
        for (end, interrupted, on_oom, batch, want) in table {
            let what = format!("{end:?} interrupted={interrupted} {on_oom:?}");
            assert_eq!(after_exit(end, interrupted, on_oom, batch), want, "{what}");
        }
    }

    #[test]
    fn a_retried_trial_runs_with_the_micro_batch_its_retries_left_it() {
        let mut params: TrialParams = serde_json::from_str("{}").unwrap();
        params.batch_size = 16;
        let t = PlannedTrial {
            id: 1,
            assignment: Default::default(),
            params,
            estimate_mb: None,
            note: None,
            refusal: None,
            job: None,
        };
        let mut trials = Trials::default();
        assert_eq!(params_to_run(&t, &trials).micro_batch(), 16);
        trials.apply(&crate::protocol::journal::Event::TrialPlanned {
            trial: 1,
            params: t.params.to_map(),
            estimate_mb: None,
            assignment: None,
        });
        trials.apply(&crate::protocol::journal::Event::TrialOutOfMemory {
            trial: 1,
            micro_batch: 16,
            retry_micro_batch: Some(8),
            reason: String::new(),
        });
        assert_eq!(params_to_run(&t, &trials).micro_batch(), 8);
    }

    #[test]
    fn on_slurm_a_trial_gets_its_job_and_parallel_alone_bounds_the_scheduler() {
        use crate::plan::slurm::{Cluster, JobRequest};
        use crate::plan::{Pool, SlurmPlan};
        let trial = |id: usize, gpus: u32| {
            let mut params: TrialParams = serde_json::from_str("{}").unwrap();
            params.gpus = gpus;
            PlannedTrial {
                id,
                assignment: Default::default(),
                params,
                estimate_mb: Some(30.0),
                note: None,
                refusal: None,
                job: Some(JobRequest {
                    gpus,
                    cpus: 2 * gpus,
                    memory_mb: 300,
                    time_s: None,
                }),
            }
        };
        let mut plan = Plan {
            name: "s".into(),
            results_dir: "r".into(),
            train: "t".into(),
            dev: "d".into(),
            test: None,
            fitted_max_seq_len: None,
            train_examples: 1,
            bayes: None,
            early_terminate: None,
            planner: None,
            program: None,
            model: crate::spec::ModelSource::Preset("test".into()),
            pool: Pool {
                slots: Vec::new(),
                parallel: 3,
                cores: 2,
                cpu_memory_limit_mb: Some(60.0),
            },
            slurm: Some(SlurmPlan {
                cluster: Cluster {
                    partition: "debug".into(),
                    nodes: Vec::new(),
                    max_time_s: None,
                },
                cpu_stand_ins: true,
            }),
            swept: Vec::new(),
            trials: vec![trial(1, 1), trial(2, 2)],
        };
        assert_eq!(scheduler_slots(&plan), 6);
        let p = slurm_placement(&plan, &plan.trials[1]);
        assert_eq!(p.devices, vec!["cpu", "cpu"]);
        assert_eq!((p.threads, p.cuda_visible_devices.clone()), (4, None));
        assert_eq!(p.memory_bytes, Some(120 * 1024 * 1024));
        assert_eq!(p.job.as_ref().unwrap().gpus, 2);
        // On GPUs: Slurm's CUDA_VISIBLE_DEVICES, renumbered from 0; no CPU limit.
        plan.slurm.as_mut().unwrap().cpu_stand_ins = false;
        let p = slurm_placement(&plan, &plan.trials[1]);
        assert_eq!(p.devices, vec!["cuda:0", "cuda:1"]);
        assert_eq!(p.memory_bytes, None);
    }

    #[test]
    fn bayes_proposes_into_free_places_within_run_cap_and_learns_from_results() {
        assert_eq!(proposals_due(10, 0, 0, 0, 2, false), 2);
        assert_eq!(proposals_due(10, 3, 1, 0, 2, false), 1);
        assert_eq!(proposals_due(10, 3, 1, 1, 2, false), 0);
        assert_eq!(proposals_due(4, 3, 0, 0, 2, false), 1);
        assert_eq!(proposals_due(10, 3, 0, 0, 2, true), 0);
        let row = |trial: usize, status: Status, acc: Option<f64>| {
            let mut r = TrialRow {
                trial,
                status,
                reason: String::new(),
                params: Default::default(),
                result: acc.map(|a| {
                    let mut r = *result();
                    r.accuracy = Some(a);
                    r
                }),
                handle: None,
                checkpoint_deleted: false,
                estimate_mb: None,
                retries: 0,
                retry_micro_batch: None,
                judgements: Vec::new(),
                assignment: Some([("x".to_string(), serde_json::json!(trial))].into()),
            };
            if trial == 9 {
                r.assignment = None;
            }
            r
        };
        let rows = [
            row(1, Status::Finished, Some(0.8)),
            row(2, Status::Pruned, Some(0.1)),
            row(3, Status::Failed, None),
            row(4, Status::Running, None),
            row(9, Status::Finished, Some(0.9)),
        ];
        let metric = MetricSpec::default();
        let obs = observations(&rows, &metric);
        let losses: Vec<Option<f64>> = obs.iter().map(|o| o.loss).collect();
        assert_eq!(losses, vec![Some(-0.8), Some(-0.1), None, None]);
        assert!(!target_reached(&rows, &metric));
        let with_target = MetricSpec {
            target: Some(0.85),
            ..MetricSpec::default()
        };
        assert!(target_reached(&rows, &with_target));
    }

    #[test]
    fn a_first_interrupt_stops_gracefully_a_second_kills() {
        assert_eq!(on_interrupt(0, false), OnInterrupt::Continue);
        assert_eq!(on_interrupt(1, false), OnInterrupt::StopGracefully);
        assert_eq!(on_interrupt(1, true), OnInterrupt::Continue);
        assert_eq!(on_interrupt(2, true), OnInterrupt::KillNow);
        assert_eq!(on_interrupt(5, false), OnInterrupt::KillNow);
    }

    #[test]
    fn retention_keeps_the_best_and_deletes_each_checkpoint_once() {
        let row = |trial: usize, acc: f64, deleted: bool| {
            let mut result = result();
            result.accuracy = Some(acc);
            TrialRow {
                trial,
                status: Status::Finished,
                reason: String::new(),
                params: Default::default(),
                result: Some(*result),
                handle: None,
                checkpoint_deleted: deleted,
                estimate_mb: None,
                retries: 0,
                retry_micro_batch: None,
                judgements: Vec::new(),
                assignment: None,
            }
        };
        let mut failed = row(5, 0.99, false);
        failed.status = Status::Failed;
        let rows = [
            row(1, 0.5, false),
            row(2, 0.9, false),
            row(3, 0.7, true),
            row(4, 0.6, false),
            failed,
        ];
        let metric = MetricSpec::default();
        assert_eq!(checkpoints_to_delete(&rows, &metric, 2), vec![4, 1]);
        assert_eq!(checkpoints_to_delete(&rows, &metric, 0), vec![4, 1]);
        assert!(checkpoints_to_delete(&rows, &metric, 10).is_empty());
    }
}
