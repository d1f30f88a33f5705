//! One trial, start to finish: what `sweep train TRIAL_DIR` runs in its own process. It loads
//! its data and model (`load`), trains in optimizer steps (`trial`), evaluates every
//! `eval_every` steps or epoch, keeps the best evaluation's checkpoint, saves a resume point
//! after every epoch, and ends with a kind (`end`): result.json and the last progress event.
//!
//! Every side effect goes through the trial's event sink (`sink`): metrics.jsonl, the progress
//! events on stdout, log lines, the prune file, the pre-timeout signal, result.json. A CPU trial
//! that dies of an allocation failure under its memory limit still leaves its end (`oom_guard`).

pub mod end;
pub mod load;
pub mod oom_guard;
pub mod schedule;
pub mod sink;
pub mod trial;

use std::path::Path;
use std::time::Instant;

use crate::protocol::trial::{ProgressEvent, TrialConfig, TrialEnd};
use crate::trainer::error::{Result, TrainError};
use crate::trainer::train::end::end_of;
use crate::trainer::train::schedule::micro_batch_of;
use crate::trainer::train::sink::{CliSink, TrialSink};
use crate::trainer::train::trial::{EpochEnd, Trial};
use crate::util::panic::panic_message;

pub use load::{device_for, load_model, LoadedModel};

/// Trains the trial in `dir` to its end: `Finished` or `Pruned` with its best evaluation, or how
/// it failed. Writes checkpoint/ (the best evaluation) and resume points into `dir`; tells
/// everything else to `sink`.
pub fn run_trial(dir: &Path, sink: &mut dyn TrialSink) -> Result<TrialEnd> {
    crate::trainer::ops::cpu::tune_process();
    let started = Instant::now();
    let cfg = TrialConfig::read(dir)?;
    sink.running_at(micro_batch_of(&cfg.params, cfg.devices.len().max(1)) as u32);
    let loaded = load::load(dir, cfg, sink)?;
    let mut trial = Trial::start(dir, loaded, started, sink)?;
    let mut pruned = false;
    for epoch in trial.epochs() {
        if trial.run_epoch(epoch, sink)? == EpochEnd::Pruned {
            pruned = true;
            break;
        }
    }
    trial.finish(pruned, sink)
}

/// Runs the trial in `dir` and records its end, whatever it is (a panic included): result.json,
/// then (once a trial with a result has dropped its resume point) the `End` event, last. Returns
/// the end and, when the trial did not finish or was not pruned, the error that ended it.
pub fn run(dir: &Path, sink: &mut dyn TrialSink) -> (TrialEnd, Option<TrainError>) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_trial(dir, sink)))
        .unwrap_or_else(|payload| Err(TrainError::Panicked(panic_message(payload.as_ref()))));
    let (mut end, mut error) = match outcome {
        Ok(end) => (end, None),
        Err(error) => (end_of(&error, micro_batch(dir)), Some(error)),
    };
    let recorded = sink.write_end(&end).and_then(|()| {
        if end.result().is_some() {
            crate::trainer::resume::clear(dir).map_err(|source| TrainError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        Ok(())
    });
    if let Err(failed) = recorded {
        end = end_of(&failed, micro_batch(dir));
        // Best effort: the file that failed may be result.json itself.
        let _ = sink.write_end(&end);
        error = Some(failed);
    }
    // A reader gone by now changes nothing: the end is in result.json.
    let _ = sink.event(&ProgressEvent::End(end.clone()));
    (end, error)
}

/// The micro-batch the trial in `dir` runs at, for an end before it said so (0 when its config
/// cannot be read, which is no out-of-memory end).
fn micro_batch(dir: &Path) -> u32 {
    TrialConfig::read(dir)
        .map(|cfg| micro_batch_of(&cfg.params, cfg.devices.len().max(1)) as u32)
        .unwrap_or(0)
}

/// `sweep train DIR`: the trial with the CLI's sink (`sink::CliSink`), the pre-timeout signal
/// routed to `trainer::stop`. `Ok` when it finished or was pruned; else the error that ended it
/// (its end is in result.json already): `TrainError::SavedOnSignal` for a trial that saved a
/// resume point on the signal, `TrainError::OrchestratorGone` when its progress had no reader.
pub fn command(dir: &Path) -> Result<()> {
    crate::trainer::stop::install();
    let mut sink = CliSink::new(dir);
    let (end, error) = run(dir, &mut sink);
    if let Some(error) = error {
        return Err(error);
    }
    if let Some(result) = end.result() {
        sink.say(&format!(
            "done: best epoch {}, accuracy {}, dev_loss {:.4}, {:.0} s",
            result.best_epoch,
            result
                .accuracy
                .map(|a| format!("{a:.4}"))
                .unwrap_or_else(|| "-".into()),
            result.dev_loss,
            result.seconds
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::train::sink::RecordingSink;

    /// A one-trial folder as `sweep run` writes it: the `test` preset on the first 24 training
    /// and 8 dev lines of clinc150-mini, batches of 8 (3 steps an epoch), 2 epochs.
    fn trial_folder(root: &Path) -> std::path::PathBuf {
        trial_folder_with(root, 24, 8, &[], serde_json::json!({}))
    }

    /// `trial_folder` on the first `n_train` and `n_dev` lines, with `params` over the
    /// defaults and `extra` keys in config.json.
    fn trial_folder_with(
        root: &Path,
        n_train: usize,
        n_dev: usize,
        params: &[(&str, serde_json::Value)],
        extra: serde_json::Value,
    ) -> std::path::PathBuf {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/clinc150-mini");
        let take = |name: &str, n: usize| {
            let text = std::fs::read_to_string(data.join(name)).unwrap();
            let path = root.join(name);
            std::fs::write(&path, text.lines().take(n).collect::<Vec<_>>().join("\n")).unwrap();
            path
        };
        let (train, dev) = (take("train.json", n_train), take("dev.json", n_dev));
        let dir = root.join("trial");
        std::fs::create_dir_all(&dir).unwrap();
        let params = crate::spec::params::TrialParams::from_assignment(
            &[
                ("epochs".to_string(), serde_json::json!(2)),
                ("batch_size".to_string(), serde_json::json!(8)),
            ]
            .into_iter()
            .chain(params.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .collect(),
            5,
        )
        .unwrap();
        let mut config = serde_json::json!({
            "trial": 1, "sweep": "t", "params": params, "train": train, "dev": dev,
            "model": {"preset": "test"}, "metric": {"name": "accuracy"},
            "devices": ["cpu"], "threads": 1
        });
        if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
            config.extend(extra.clone());
        }
        std::fs::write(dir.join(TrialConfig::FILE), config.to_string()).unwrap();
        dir
    }

    fn kinds(sink: &RecordingSink) -> Vec<String> {
        sink.events
            .iter()
            .map(|e| {
                serde_json::to_value(e).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn a_trial_tells_its_sink_every_step_and_evaluation_and_ends_last() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = trial_folder(tmp.path());
        let mut sink = RecordingSink::default();
        let (end, error) = run(&dir, &mut sink);
        assert!(error.is_none(), "{error:?}");
        let TrialEnd::Finished { result } = &end else {
            panic!("{end:?}")
        };
        assert_eq!(result.steps, Some(6));
        assert_eq!(sink.micro_batch, Some(8));
        assert_eq!(sink.resumed, Some(false));
        let step = "step".to_string();
        let mut expected = vec!["start".to_string()];
        for _ in 0..2 {
            expected.extend([step.clone(), step.clone(), step.clone(), "epoch".into()]);
        }
        expected.push("end".into());
        assert_eq!(kinds(&sink), expected);
        assert_eq!(sink.events.last(), Some(&ProgressEvent::End(end.clone())));
        assert_eq!(sink.end, Some(end));
        assert!(dir.join("checkpoint").is_dir());
        assert!(
            !dir.join("resume").exists(),
            "a finished trial keeps no resume point"
        );
        assert!(sink
            .lines
            .iter()
            .any(|l| l.contains("2 epochs") || l.contains("6 steps")));
    }

    #[test]
    fn a_stop_saves_a_resume_point_and_the_next_run_continues_from_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = trial_folder(tmp.path());
        let mut stopped = RecordingSink {
            stop_after_steps: Some(4),
            ..RecordingSink::default()
        };
        let (end, error) = run(&dir, &mut stopped);
        assert!(matches!(
            error,
            Some(TrainError::SavedOnSignal { step: 4, .. })
        ));
        assert!(
            matches!(
                end,
                TrialEnd::Stopped {
                    resume_step: Some(4),
                    ..
                }
            ),
            "{end:?}"
        );
        let mut again = RecordingSink::default();
        let (end, error) = run(&dir, &mut again);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(again.resumed, Some(true));
        assert_eq!(
            again.events[1],
            ProgressEvent::Resumed { epoch: 1, step: 4 }
        );
        assert_eq!(end.result().and_then(|r| r.steps), Some(6));
        // Steps 5 and 6 only, then the evaluation of epoch 2.
        assert_eq!(kinds(&again)[2..], ["step", "step", "epoch", "end"]);
    }

    #[test]
    fn a_prune_request_ends_the_trial_with_its_best_evaluation_so_far() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = trial_folder(tmp.path());
        let mut sink = RecordingSink {
            prune_after_steps: Some(3),
            ..RecordingSink::default()
        };
        let (end, error) = run(&dir, &mut sink);
        assert!(error.is_none(), "{error:?}");
        let TrialEnd::Pruned { result } = &end else {
            panic!("{end:?}")
        };
        assert_eq!((result.best_step, result.steps), (Some(3), Some(3)));
        assert!(sink.lines.iter().any(|l| l.contains("early termination")));
    }

    #[test]
    fn a_tiny_classifier_learns_the_intents_well_above_chance() {
        // 10 intents (chance 0.1), the system prompt dropped (a head needs no list of classes).
        let tmp = tempfile::tempdir().unwrap();
        let params = [
            ("method", serde_json::json!("classifier")),
            ("epochs", serde_json::json!(4)),
            ("learning_rate", serde_json::json!(1e-2)),
            ("max_seq_len", serde_json::json!(64)),
        ];
        let extra = serde_json::json!({"system_prompt": "drop"});
        let dir = trial_folder_with(tmp.path(), 600, 200, &params, extra);
        let mut sink = RecordingSink::default();
        let (end, error) = run(&dir, &mut sink);
        assert!(error.is_none(), "{error:?}");
        let result = end.result().unwrap();
        let accuracy = result.accuracy.unwrap();
        assert!(accuracy > 0.5, "accuracy {accuracy}");
        assert!(
            result.dev_loss < (10f64).ln(),
            "dev loss {}",
            result.dev_loss
        );
        let labels: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("checkpoint/labels.json")).unwrap())
                .unwrap();
        assert_eq!(labels["drop_system_prompt"], true);
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("checkpoint/config.json")).unwrap())
                .unwrap();
        assert_eq!(config["architectures"][0], "LlamaForSequenceClassification");
        assert_eq!(config["num_labels"], 10);
        assert_eq!(config["id2label"]["0"], "alarm");
        let predictions = std::fs::read_to_string(dir.join("dev_predictions.jsonl")).unwrap();
        assert_eq!(predictions.lines().count(), 200);
    }

    #[test]
    fn a_head_trial_resumed_after_a_stop_ends_as_an_uninterrupted_one() {
        // The head is a trained tensor like the adapters: in the resume point, and restored.
        let params = [("method", serde_json::json!("classifier_lora"))];
        let uninterrupted = {
            let tmp = tempfile::tempdir().unwrap();
            let dir = trial_folder_with(tmp.path(), 24, 8, &params, serde_json::json!({}));
            run(&dir, &mut RecordingSink::default()).0
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = trial_folder_with(tmp.path(), 24, 8, &params, serde_json::json!({}));
        let mut stopped = RecordingSink {
            stop_after_steps: Some(4),
            ..RecordingSink::default()
        };
        let (_, error) = run(&dir, &mut stopped);
        assert!(
            matches!(error, Some(TrainError::SavedOnSignal { .. })),
            "{error:?}"
        );
        let (resumed, error) = run(&dir, &mut RecordingSink::default());
        assert!(error.is_none(), "{error:?}");
        let (a, b) = (uninterrupted.result().unwrap(), resumed.result().unwrap());
        assert_eq!(a.accuracy, b.accuracy);
        assert!(
            (a.dev_loss - b.dev_loss).abs() < 1e-9,
            "{} vs {}",
            a.dev_loss,
            b.dev_loss
        );
    }

    #[test]
    fn missing_data_is_invalid_input() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = trial_folder(tmp.path());
        std::fs::remove_file(tmp.path().join("dev.json")).unwrap();
        let mut sink = RecordingSink::default();
        let (end, error) = run(&dir, &mut sink);
        assert!(matches!(error, Some(TrainError::Data(_))), "{error:?}");
        assert!(matches!(end, TrialEnd::InvalidInput { .. }), "{end:?}");
        assert_eq!(sink.events, vec![ProgressEvent::End(end)]);
    }
}
