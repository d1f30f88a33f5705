//! Smarter search end to end: early termination prunes a clearly bad trial at the first band
//! (and says why), a pruned trial never runs again on resume, `method: bayes` proposes its
//! trials from the journal, and `metric.target` closes the sweep to new trials.

use std::path::Path;

use crate::common::{csv_rows, journal_events, run, write_spec};

fn count(events: &[serde_json::Value], kind: &str, trial: u64) -> usize {
    events
        .iter()
        .filter(|e| e["event"] == kind && e["trial"] == trial)
        .count()
}

/// (step, loss, lr) of every training step in a trial's metrics.jsonl.
fn steps(trial_dir: &Path) -> Vec<(u64, f64, f64)> {
    std::fs::read_to_string(trial_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "step")
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap(),
                v["lr"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Two epochs of 6 steps, evaluated every 2 steps: 6 evaluations; bands at 1 and 3.
const PRUNING: &str = "metric: {name: dev_loss, goal: minimize}\nparameters:\n  learning_rate: {values: [1.0e-2, 1.0e-6, 3.0e-3]}\n  epochs: {value: 2}\n  batch_size: {value: 8}\n  eval_every: {value: 2}\nearly_terminate: {type: hyperband, min_iter: 1, eta: 3}\nresources: {devices: cpu, slots: 1, parallel: 1}\n";

#[test]
fn a_clearly_bad_trial_is_pruned_at_the_first_band_and_its_steps_match_an_unstopped_run() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), PRUNING);
    let results = tmp.path().join("results");
    let out = run(&["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()]);
    assert!(out.status.success());
    let rows = csv_rows(&results);
    let bad = rows.iter().find(|r| r["trial"] == "2").unwrap();
    assert_eq!(bad["status"], "pruned", "{bad:?}");
    assert_eq!(bad["pruned_band"], "1");
    assert_eq!(bad["pruned_step"], "2");
    let value: f64 = bad["pruned_value"].parse().unwrap();
    let threshold: f64 = bad["pruned_threshold"].parse().unwrap();
    assert!(value > threshold, "{value} vs {threshold}");
    assert!(bad["reason"].contains("pruned at band 1"), "{bad:?}");
    // Its best evaluation so far and its checkpoint are its result.
    let ran: usize = bad["steps"].parse().unwrap();
    assert!((2..12).contains(&ran), "stopped early: {ran} steps of 12");
    assert!(!bad["dev_loss"].is_empty() && bad["checkpoint"].ends_with("checkpoint"));
    assert!(Path::new(&bad["checkpoint"]).is_dir());
    let good = rows.iter().find(|r| r["trial"] == "1").unwrap();
    assert_eq!(
        (good["status"].as_str(), good["steps"].as_str()),
        ("finished", "12")
    );
    let events = journal_events(&results);
    let judged: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "trial_judged" && e["trial"] == 2)
        .collect();
    assert_eq!(judged.len(), 1, "{judged:?}");
    assert_eq!(judged[0]["band"], 1);
    assert_eq!(judged[0]["pruned"], true);
    // Every evaluation is a line of metrics.jsonl with its step.
    let evals: Vec<u64> = std::fs::read_to_string(results.join("trials/0001/metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "epoch")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(evals, vec![2, 4, 6, 8, 10, 12]);

    // The same trial, never stopped: its first steps are the same (the schedule follows the
    // full planned length either way).
    let other = tempfile::tempdir().unwrap();
    let spec = write_spec(
        other.path(),
        &PRUNING
            .replace("[1.0e-2, 1.0e-6, 3.0e-3]", "[1.0e-6]")
            .replace(
                "early_terminate: {type: hyperband, min_iter: 1, eta: 3}\n",
                "",
            ),
    );
    let out = run(&["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()]);
    assert!(out.status.success());
    let full = steps(&other.path().join("results/trials/0001"));
    let stopped = steps(&results.join("trials/0002"));
    assert_eq!(full.len(), 12);
    assert_eq!(stopped.len(), ran);
    assert_eq!(stopped[..], full[..ran]);
}

#[test]
fn a_pruned_trial_is_not_run_again_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), PRUNING);
    let results = tmp.path().join("results");
    let out = run(&["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()]);
    assert!(out.status.success());
    // As if the orchestrator was killed right after it journalled the pruning of trial 2:
    // the journal ends there (trial 2's result and everything of trial 3 not yet recorded).
    let path = results.join("journal.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut kept = Vec::new();
    for line in text.lines() {
        kept.push(line);
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["event"] == "trial_judged" && v["trial"] == 2 && v["pruned"] == true {
            break;
        }
    }
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    let out = run(&[
        "run".as_ref(),
        spec.as_os_str(),
        "--quiet".as_ref(),
        "--resume".as_ref(),
    ]);
    assert!(out.status.success());
    let events = journal_events(&results);
    assert_eq!(
        count(&events, "trial_started", 2),
        1,
        "a pruned trial never starts again"
    );
    assert_eq!(
        count(&events, "trial_judged", 2),
        1,
        "no band is judged twice"
    );
    assert_eq!(
        count(&events, "trial_started", 3),
        1,
        "trial 3, never journalled as started, ran once"
    );
    let rows = csv_rows(&results);
    let bad = rows.iter().find(|r| r["trial"] == "2").unwrap();
    assert_eq!(bad["status"], "pruned");
    assert!(
        !bad["dev_loss"].is_empty(),
        "its result was picked up: {bad:?}"
    );
    let third = rows.iter().find(|r| r["trial"] == "3").unwrap();
    assert!(third["status"] == "finished" || third["status"] == "pruned");
    assert!(!third["dev_loss"].is_empty());
    journal_count_of_bands(&events, 3);
}

fn journal_count_of_bands(events: &[serde_json::Value], trial: u64) -> usize {
    let mut bands: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "trial_judged" && e["trial"] == trial)
        .map(|e| e["band"].as_u64().unwrap())
        .collect();
    let n = bands.len();
    bands.dedup();
    assert_eq!(bands.len(), n, "each band once");
    n
}

#[test]
fn bayes_proposes_run_cap_trials_and_a_resume_proposes_no_more() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(
        tmp.path(),
        "method: bayes\nrun_cap: 5\nparameters:\n  learning_rate: {distribution: log_uniform_values, min: 1.0e-4, max: 3.0e-2}\n  batch_size: {values: [8, 16]}\n  method: {values: [sft, lora]}\n  epochs: {value: 1}\nresources: {devices: cpu, slots: 2, parallel: 2}\n",
    );
    let results = tmp.path().join("results");
    let out = run(&["plan".as_ref(), spec.as_os_str()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("method: bayes"));
    let out = run(&["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()]);
    assert!(out.status.success());
    let rows = csv_rows(&results);
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r["status"] == "finished"), "{rows:?}");
    let events = journal_events(&results);
    let planned: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "trial_planned")
        .collect();
    assert_eq!(planned.len(), 5);
    assert!(planned
        .iter()
        .all(|e| e["assignment"]["learning_rate"].is_number()));
    let out = run(&[
        "run".as_ref(),
        spec.as_os_str(),
        "--quiet".as_ref(),
        "--resume".as_ref(),
    ]);
    assert!(out.status.success());
    let after = journal_events(&results);
    assert_eq!(
        after
            .iter()
            .filter(|e| e["event"] == "trial_planned")
            .count(),
        5,
        "run_cap reached: nothing proposed again"
    );
    assert_eq!(
        after
            .iter()
            .filter(|e| e["event"] == "trial_started")
            .count(),
        5
    );
}

#[test]
fn once_a_trial_reaches_the_target_no_new_trial_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(
        tmp.path(),
        &PRUNING
            .replace("goal: minimize}", "goal: minimize, target: 100.0}")
            .replace(
                "early_terminate: {type: hyperband, min_iter: 1, eta: 3}\n",
                "",
            ),
    );
    let out = run(&["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()]);
    assert!(out.status.success());
    let rows = csv_rows(&tmp.path().join("results"));
    let status: Vec<&str> = rows.iter().map(|r| r["status"].as_str()).collect();
    assert_eq!(status, vec!["finished", "planned", "planned"]);
}

#[test]
fn a_resumed_bayes_sweep_re_derives_its_sampler_from_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(
        tmp.path(),
        "method: bayes\nrun_cap: 4\nparameters:\n  learning_rate: {distribution: log_uniform_values, min: 1.0e-4, max: 3.0e-2}\n  batch_size: {values: [8, 16]}\n  epochs: {value: 1}\nresources: {devices: cpu, slots: 1, parallel: 1}\n",
    );
    let results = tmp.path().join("results");
    let out = run(&["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()]);
    assert!(out.status.success());
    let assignment_of = |events: &[serde_json::Value], trial: u64| {
        events
            .iter()
            .find(|e| e["event"] == "trial_planned" && e["trial"] == trial)
            .map(|e| e["assignment"].clone())
            .unwrap()
    };
    let before = journal_events(&results);
    let third = assignment_of(&before, 3);
    // As if killed right after trial 2 finished: trials 3 and 4 were never proposed.
    let path = results.join("journal.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut kept = Vec::new();
    for line in text.lines() {
        kept.push(line);
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["event"] == "trial_finished" && v["trial"] == 2 {
            break;
        }
    }
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    let out = run(&[
        "run".as_ref(),
        spec.as_os_str(),
        "--quiet".as_ref(),
        "--resume".as_ref(),
    ]);
    assert!(out.status.success());
    let after = journal_events(&results);
    assert_eq!(
        assignment_of(&after, 3),
        third,
        "the same finished trials give the same next proposal"
    );
    assert_eq!(csv_rows(&results).len(), 4);
    assert_eq!(count(&after, "trial_started", 1), 1);
    assert_eq!(count(&after, "trial_started", 2), 1);
}
