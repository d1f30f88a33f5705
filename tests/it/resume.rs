//! Nothing lost: an orchestrator killed at random moments resumes without re-running finished
//! trials; an interrupted trial continues from its last epoch exactly; Ctrl-C stops cleanly; a
//! folder in use is refused; checkpoint retention keeps the best.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sweep::util::rng::SplitMix64;

use crate::common::{
    self, csv_rows, journal_events, run, small_data, spawn_run, sweep, write_spec,
};

/// Polls every 10 ms, for at most 2 minutes.
fn wait_until(what: &str, ready: impl FnMut() -> bool) {
    common::wait_until(
        what,
        Duration::from_secs(120),
        Duration::from_millis(10),
        ready,
    )
}

#[test]
fn killed_ten_times_at_random_the_sweep_resumes_and_runs_each_trial_once() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(
        tmp.path(),
        "parameters:\n  learning_rate: {values: [1.0e-2, 5.0e-3, 3.0e-3, 2.0e-3, 1.0e-3, 5.0e-4]}\n  epochs: {values: [12, 18]}\n  batch_size: {value: 8}\nresources: {devices: cpu, slots: 2, parallel: 2}\n",
    );
    let results = tmp.path().join("results");
    let mut rng = SplitMix64::new(42);
    let mut kills = 0;
    while kills < 10 {
        let mut child = spawn_run(&spec, kills > 0);
        // SIGKILL at a random moment 50 to 800 ms in: while planning, training, or writing results.
        let delay = Duration::from_millis(50 + rng.below(750) as u64);
        let t0 = Instant::now();
        while t0.elapsed() < delay {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the sweep ended ({status}) after only {kills} kills; make it longer");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    let status = spawn_run(&spec, true).wait().unwrap();
    assert!(status.success(), "the final resume failed: {status}");
    assert!(kills >= 10);
    let rows = csv_rows(&results);
    assert_eq!(rows.len(), 12, "every planned trial appears exactly once");
    assert!(rows.iter().all(|r| r["status"] == "finished"), "{rows:?}");
    // No trial finished twice, and none started again after it had finished.
    let events = journal_events(&results);
    let mut done: HashMap<u64, usize> = HashMap::new();
    for e in &events {
        let t = e["trial"].as_u64().unwrap_or(0);
        match e["event"].as_str().unwrap() {
            "trial_finished" => *done.entry(t).or_default() += 1,
            "trial_started" => assert!(
                !done.contains_key(&t),
                "trial {t} started again after finishing"
            ),
            _ => {}
        }
    }
    assert_eq!(done.len(), 12);
    assert!(done.values().all(|n| *n == 1), "{done:?}");
    // Most kills hit a sweep that had started (a kill during the checks leaves no journal line).
    let resumed = events
        .iter()
        .filter(|e| e["event"] == "sweep_resumed")
        .count();
    assert!(resumed >= 5, "only {resumed} resumes were journalled");
}

/// Writes a one-trial folder with config.json, as `sweep run` would.
fn trial_folder(root: &Path, name: &str, epochs: u32) -> std::path::PathBuf {
    let (train, dev) = small_data(root, 48, 20);
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "trial": 1, "sweep": "t",
        "params": sweep::spec::params::TrialParams::from_assignment(
            &[("epochs".to_string(), serde_json::json!(epochs)), ("batch_size".to_string(), serde_json::json!(8))]
                .into_iter().collect(), 5).unwrap(),
        "train": train, "dev": dev,
        "model": {"preset": "test"},
        "metric": {"name": "accuracy"},
        "devices": ["cpu"], "threads": 1
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    dir
}

fn train(dir: &Path) -> Child {
    sweep()
        .arg("train")
        .arg(dir)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn an_interrupted_trial_continues_from_its_last_epoch_and_ends_as_if_never_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = trial_folder(tmp.path(), "whole", 3);
    assert!(train(&whole).wait().unwrap().success());

    let broken = trial_folder(tmp.path(), "broken", 3);
    let mut child = train(&broken);
    // Kill it during epoch 2, after epoch 1's resume point is on disk.
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["kind"] == "step" && v["epoch"] == 2 {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(broken.join("resume/state.json").exists());
    assert!(!broken.join("result.json").exists());

    let mut again = train(&broken);
    let stdout = again.stdout.take().unwrap();
    // Read every line: a trial whose stdout reader is gone stops (its orchestrator died).
    let lines: Vec<String> = BufReader::new(stdout).lines().map(|l| l.unwrap()).collect();
    let first: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(first["kind"], "resumed");
    assert_eq!(first["epoch"], 1);
    assert!(again.wait().unwrap().success());

    // A finished trial's end (`protocol::trial::TrialEnd`) holds its result.
    let read = |d: &Path| -> serde_json::Value {
        let end: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("result.json")).unwrap()).unwrap();
        assert_eq!(end["end"], "finished", "{end}");
        end["result"].clone()
    };
    let (a, b) = (read(&whole), read(&broken));
    for key in ["accuracy", "dev_loss", "train_loss", "best_epoch"] {
        assert_eq!(a[key], b[key], "{key} differs after resuming");
    }
    assert!(
        !broken.join("resume").exists(),
        "a finished trial keeps no resume point"
    );
}

#[test]
fn ctrl_c_stops_running_trials_cleanly_and_only_the_same_spec_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(
        tmp.path(),
        "parameters:\n  learning_rate: {values: [1.0e-2, 3.0e-3, 1.0e-3]}\n  epochs: {value: 200}\n  batch_size: {value: 8}\nresources: {devices: cpu, slots: 2, parallel: 2}\n",
    );
    let results = tmp.path().join("results");
    let mut child = spawn_run(&spec, false);
    wait_until("two trials to start", || {
        journal_events(&results)
            .iter()
            .filter(|e| e["event"] == "trial_started")
            .count()
            == 2
    });
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let rows = csv_rows(&results);
    let status_of: Vec<&str> = rows.iter().map(|r| r["status"].as_str()).collect();
    assert_eq!(status_of, vec!["stopped", "stopped", "planned"]);

    // A second run without --resume is refused; with it, the sweep continues.
    let refused = run(&["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    // Shorter trials would change the spec; resume must refuse that too.
    let changed = tmp.path().join("changed.yaml");
    std::fs::write(
        &changed,
        std::fs::read_to_string(&spec)
            .unwrap()
            .replace("epochs: {value: 200}", "epochs: {value: 1}"),
    )
    .unwrap();
    let out = run(&[
        "run".as_ref(),
        changed.as_os_str(),
        "--quiet".as_ref(),
        "--resume".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("differs"));
}

#[test]
fn a_folder_in_use_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(
        tmp.path(),
        "parameters:\n  epochs: {value: 300}\n  batch_size: {value: 8}\n",
    );
    let results = tmp.path().join("results");
    let mut first = spawn_run(&spec, false);
    wait_until("the trial to start", || {
        journal_events(&results)
            .iter()
            .any(|e| e["event"] == "trial_started")
    });
    let second = run(&[
        "run".as_ref(),
        spec.as_os_str(),
        "--quiet".as_ref(),
        "--resume".as_ref(),
    ]);
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use"));
    first.kill().unwrap();
    first.wait().unwrap();
}

#[test]
fn checkpoint_retention_keeps_the_best_and_deletes_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(
        tmp.path(),
        "checkpoints: {keep: 1}\nparameters:\n  learning_rate: {values: [1.0e-2, 3.0e-3, 1.0e-4]}\n  epochs: {value: 2}\n  batch_size: {value: 8}\nresources: {devices: cpu, slots: 1, parallel: 1}\n",
    );
    assert!(run(&["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()])
        .status
        .success());
    let results = tmp.path().join("results");
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("best/best.json")).unwrap())
            .unwrap();
    let best_trial = best["trial"].as_u64().unwrap();
    for r in csv_rows(&results) {
        let t: u64 = r["trial"].parse().unwrap();
        let dir = results.join(format!("trials/{t:04}/checkpoint"));
        if t == best_trial {
            assert!(dir.exists(), "the best trial's checkpoint was deleted");
            assert_ne!(r["checkpoint"], "deleted");
        } else {
            assert!(!dir.exists(), "trial {t}'s checkpoint should be deleted");
            assert_eq!(r["checkpoint"], "deleted");
        }
    }
    assert!(results.join("best/checkpoint/model.safetensors").exists());
}
