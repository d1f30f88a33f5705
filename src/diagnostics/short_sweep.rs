//! Part 2: a short sweep on the device as a user runs it, sft and lora on the post-pretrained
//! tiny base and the bundled data; both trials must finish.

use std::path::Path;

use anyhow::Result;

use crate::diagnostics::child::{data_lines, run_sweep, SweepRun};
use crate::diagnostics::table::{row, Row, Status};
use crate::diagnostics::Args;
use crate::protocol::journal::Event;

/// Part 2.
pub fn run(args: &Args, out: &Path) -> Result<Vec<Row>> {
    let devices = if args.cpu_dry_run { "cpu" } else { "cuda" };
    let body = format!(
        "name: gpu-check\nmodel: {{path: '{}'}}\nmethod: grid\nseed: 7\nmetric: {{name: accuracy, goal: maximize}}\nparameters:\n  method: {{values: [sft, lora]}}\n  learning_rate: {{value: 1.0e-2}}\n  epochs: {{value: 1}}\n  batch_size: {{value: 8}}\n{}",
        args.root.join("models/tiny-base").display(),
        data_lines(&args.root, &out.join("sweep"), "clinc150-mini", devices)
    );
    let sweep = run_sweep(&out.join("sweep-spec"), &body, true)?;
    Ok(vec![judge(&sweep, devices)])
}

/// Pass when both trials' result.json say they finished; the journal's story beside it.
fn judge(sweep: &SweepRun, devices: &str) -> Row {
    let story: Vec<String> = sweep
        .entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::TrialFinished { trial, result } => Some(format!(
                "trial {trial}: accuracy {} dev_loss {:.4}, {:.0} tokens/s",
                result
                    .accuracy
                    .map_or_else(|| "-".into(), |a| format!("{a:.3}")),
                result.dev_loss,
                result.tokens_per_sec
            )),
            Event::TrialFailed { trial, reason } => Some(format!("trial {trial} failed: {reason}")),
            Event::TrialStarted { trial, devices, .. } => {
                Some(format!("trial {trial} on {}", devices.join(",")))
            }
            _ => None,
        })
        .collect();
    let finished = sweep.finished();
    row(
        "2 sweep",
        format!("devices: {devices}, sft and lora, 1 epoch"),
        format!("{finished} of 2 finished; {}", story.join("; ")),
        Status::of(finished == 2),
    )
}
