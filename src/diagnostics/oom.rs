//! Part 4: a trial that cannot fit its first micro-batch must finish after halving it. On a GPU
//! this process takes all the device's free memory but what the trial needs at a quarter of its
//! batch (by the plan's estimate), so the trial hits CUDA's own out-of-memory; in a dry run
//! `memory_per_device` limits the trial process instead.
//!
//! Judged on kinds, never on log text: the journal's `TrialOutOfMemory` events (the run loop's
//! reading of the trial's typed end) and the trial's result.json (`TrialEnd::Finished`, at a
//! smaller micro-batch).

use std::path::Path;

use anyhow::{Context, Result};

use crate::diagnostics::child::{planned_estimate_mb, run_sweep, SweepRun};
use crate::diagnostics::table::{row, Row, Status};
use crate::diagnostics::Args;
use crate::plan::devices::{query_gpus, GpuQueryError};
use crate::protocol::journal::Event;
use crate::protocol::trial::TrialEnd;
use crate::trainer::probe::HeldMemory;

const PART: &str = "4 oom";

/// The sweep file of the forced out-of-memory at micro-batch `micro` (batch `batch`).
fn spec(args: &Args, dir: &Path, batch: usize, micro: usize) -> String {
    let (devices, model, extra) = if args.cpu_dry_run {
        ("cpu", "{preset: test}", "  memory_per_device: 22\n")
    } else {
        ("cuda", "{preset: llama-135m}", "")
    };
    let data = args.root.join("data/clinc150-mini");
    format!(
        "name: gpu-check-oom\nmodel: {model}\nmethod: grid\nseed: 7\nmetric: {{name: dev_loss}}\non_oom: halve_batch\nparameters:\n  method: {{value: post_pretrain}}\n  epochs: {{value: 1}}\n  batch_size: {{value: {batch}}}\n  micro_batch: {{value: {micro}}}\n  learning_rate: {{value: 1.0e-4}}\ndata: {{train: '{}', dev: '{}'}}\noutput: '{}'\nresources:\n  devices: {devices}\n  parallel: 1\n{extra}",
        data.join("train.json").display(),
        data.join("dev.json").display(),
        dir.join("results").display()
    )
}

/// On a GPU: takes the device's free memory but the plan's estimate at a quarter of `batch`,
/// and says so; or the row saying why the part cannot run.
fn hold_the_rest(
    args: &Args,
    dir: &Path,
    batch: usize,
) -> Result<std::result::Result<(HeldMemory, String), Row>> {
    let not_run = |why: String| row(PART, "forced CUDA out-of-memory", why, Status::NotRun);
    let spec_path = dir.join("estimate.yaml");
    std::fs::create_dir_all(dir)?;
    std::fs::write(&spec_path, spec(args, dir, batch, batch / 4))?;
    let quarter = planned_estimate_mb(&spec_path)?;
    let free = match query_gpus() {
        Ok(gpus) => match gpus.first() {
            Some(gpu) => gpu.free_mb,
            None => return Ok(Err(not_run("nvidia-smi lists no visible GPU".into()))),
        },
        Err(GpuQueryError::NotInstalled) => {
            return Ok(Err(not_run(
                "nvidia-smi not found: cannot size the memory to hold".into(),
            )))
        }
        Err(e) => return Err(e).context("nvidia-smi"),
    };
    let hold = free - quarter;
    if hold < 1024.0 {
        return Ok(Err(not_run(format!(
            "only {free:.0} MiB free, the trial needs about {quarter:.0} at micro-batch {}",
            batch / 4
        ))));
    }
    let held =
        crate::trainer::probe::hold_memory(&args.device, hold).context("holding GPU memory")?;
    Ok(Ok((
        held,
        format!(
            "; held {hold:.0} of {free:.0} MiB free, leaving the estimate at micro-batch {}",
            batch / 4
        ),
    )))
}

/// Part 4: runs the sweep (with the rest of the GPU held, on a GPU) and judges it.
pub fn run(args: &Args, out: &Path) -> Result<Vec<Row>> {
    let dir = out.join("oom");
    // The dry run starts at 256: 22 MiB per trial fits post-pretraining the `test` preset at
    // micro-batch 32, not 64 (as tests/resources.rs); 256 fails in a CUDA build too, whose CPU
    // trial maps no CUDA library.
    let batch = if args.cpu_dry_run { 256 } else { 64usize };
    // Held for the whole sweep on a GPU: the memory the trial must not get.
    let (held, what) = if args.on_cuda() {
        match hold_the_rest(args, &dir, batch)? {
            Ok((held, what)) => (Some(held), what),
            Err(not_run) => return Ok(vec![not_run]),
        }
    } else {
        (None, String::new())
    };
    let sweep = run_sweep(&dir, &spec(args, &dir, batch, batch), false)?;
    drop(held);
    let devices = if args.cpu_dry_run { "cpu" } else { "cuda" };
    Ok(vec![judge(&sweep, batch, devices, &what)])
}

/// Recovered: the journal saw the trial run out of memory, and its result.json says it finished
/// at a micro-batch below `batch`.
fn judge(sweep: &SweepRun, batch: usize, devices: &str, held: &str) -> Row {
    let reasons: Vec<String> = sweep
        .entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::TrialOutOfMemory {
                micro_batch,
                retry_micro_batch,
                reason,
                ..
            } => Some(format!(
                "at {micro_batch} -> {}: {}",
                retry_micro_batch.map_or_else(|| "none".into(), |m| m.to_string()),
                shown_reason(reason)
            )),
            _ => None,
        })
        .collect();
    let micro = sweep.ends.iter().find_map(|(_, end)| match end {
        TrialEnd::Finished { result } => Some(result.micro_batch),
        _ => None,
    });
    let recovered =
        sweep.finished() == 1 && !reasons.is_empty() && micro.is_some_and(|m| (m as usize) < batch);
    row(
        PART,
        format!("forced out-of-memory ({devices}), micro-batch {batch}, halve_batch"),
        format!(
            "{} out-of-memory retries, finished at micro-batch {}{held}; {}",
            reasons.len(),
            micro.map_or_else(|| "-".into(), |m| m.to_string()),
            if reasons.is_empty() {
                "no out-of-memory seen".to_string()
            } else {
                reasons.join(" | ")
            }
        ),
        Status::of(recovered),
    )
}

/// The part of a failure reason worth a table cell: the last line (or ` | `-joined part, as the
/// executor joins log lines) that speaks of memory, else the last one starting with `error`,
/// else the last non-empty one; shortened. Not a backtrace frame. Only for showing: whether the
/// trial ran out of memory is the journal's kind, never this text.
pub fn shown_reason(reason: &str) -> String {
    let parts: Vec<&str> = reason
        .lines()
        .flat_map(|l| l.split(" | "))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let last_with = |keep: &dyn Fn(&str) -> bool| parts.iter().rev().find(|l| keep(l)).copied();
    let line = last_with(&|l| l.to_ascii_lowercase().contains("memory"))
        .or_else(|| last_with(&|l| l.to_ascii_lowercase().starts_with("error")))
        .or_else(|| parts.last().copied())
        .unwrap_or("");
    line.chars().take(160).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::journal::Entry;
    use crate::protocol::trial::TrialResult;

    #[test]
    fn the_reason_shown_is_the_error_line_not_the_backtrace() {
        let reason = "exit status 2\nerror: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")\n   0: candle_core::error::Error::bt\n";
        assert_eq!(
            shown_reason(reason),
            "error: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"
        );
        // As the executor reports a killed CPU trial: log lines joined by ` | `.
        let joined = "killed by signal 6: stack backtrace: | memory allocation of 393216 bytes failed | skipping backtrace printing";
        assert_eq!(
            shown_reason(joined),
            "memory allocation of 393216 bytes failed"
        );
        assert_eq!(
            shown_reason("exit status 1\nloss became NaN"),
            "loss became NaN"
        );
    }

    fn finished_at(micro_batch: u32) -> TrialEnd {
        let result: TrialResult = serde_json::from_value(serde_json::json!({
            "best_epoch": 1, "accuracy": null, "dev_loss": 1.0, "train_loss": 1.0,
            "seconds": 1.0, "tokens_per_sec": 1.0, "peak_rss_mb": 1.0,
            "trainable_params": 1, "micro_batch": micro_batch, "grad_accum": 1,
            "checkpoint": "/r/trials/0000/checkpoint"
        }))
        .unwrap();
        TrialEnd::Finished { result }
    }

    fn out_of_memory(at: u32) -> Entry {
        Entry {
            time: 0.0,
            event: Event::TrialOutOfMemory {
                trial: 0,
                micro_batch: at,
                retry_micro_batch: Some(at / 2),
                reason: "out of memory at micro-batch 256: memory allocation of 8 bytes failed"
                    .into(),
            },
        }
    }

    #[test]
    fn recovery_is_an_out_of_memory_event_and_a_finish_at_a_smaller_micro_batch() {
        let recovered = SweepRun {
            entries: vec![out_of_memory(256)],
            ends: vec![(0, finished_at(128))],
        };
        let r = judge(&recovered, 256, "cpu", "");
        assert_eq!(r.status, Status::Pass, "{r:?}");
        assert!(r
            .result
            .starts_with("1 out-of-memory retries, finished at micro-batch 128"));
        // Finished at the full micro-batch, or never out of memory, or not finished: a failure.
        let full = SweepRun {
            entries: vec![out_of_memory(256)],
            ends: vec![(0, finished_at(256))],
        };
        let never = SweepRun {
            entries: vec![],
            ends: vec![(0, finished_at(128))],
        };
        let unfinished = SweepRun {
            entries: vec![out_of_memory(256)],
            ends: vec![],
        };
        for sweep in [full, never, unfinished] {
            assert_eq!(judge(&sweep, 256, "cpu", "").status, Status::Fail);
        }
    }
}
