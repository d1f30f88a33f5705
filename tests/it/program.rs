//! Your own training program (`program`/`command`, W&B's keys), swept by real processes: the
//! standard-library trainer in examples/programs (a real learning curve on the bundled data),
//! and for W&B's own sweep files a stand-in program (tests/fixtures/wandb/stand_in.py) that
//! reports whatever metric the file names. Every macro form reaches the program; grid and bayes
//! with `--count`; hyperband stops a program and nothing of it is left; Ctrl-C then `--resume`
//! loses nothing; a kill -9 of the orchestrator then `--resume` runs no trial twice and leaves
//! no process; a crash is failed with its stderr; PyTorch's out-of-memory message is
//! recognised and `on_oom: halve_batch` halves the named parameter; `gpus: 2` on a pool of four
//! (a stand-in nvidia-smi) shows the program exactly two GPUs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::{csv_rows, journal_events, repo, wait_until, ExplainOnFailure};

/// `sweep` as built for this test run (or `SWEEP_TEST_BIN`, a copy that other builds sharing the
/// target folder cannot replace while the tests run).
fn sweep() -> Command {
    Command::new(
        std::env::var_os("SWEEP_TEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sweep"))),
    )
}

fn run_in(dir: &Path, args: &[&std::ffi::OsStr]) -> Output {
    let out = sweep().args(args).current_dir(dir).output().unwrap();
    eprintln!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn trainer() -> PathBuf {
    repo().join("examples/programs/stdlib_trainer.py")
}

/// A sweep file for the standard-library trainer, its results in `dir/results`.
fn spec(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("sweep.yaml");
    std::fs::write(
        &path,
        format!(
            "name: prog\nprogram: {}\noutput: {}\n{body}",
            trainer().display(),
            dir.join("results").display()
        ),
    )
    .unwrap();
    path
}

fn statuses(results: &Path) -> Vec<String> {
    csv_rows(results)
        .into_iter()
        .map(|r| r["status"].clone())
        .collect()
}

/// The processes (zombies aside) whose process group is `group`.
fn group_members(group: u64) -> Vec<u64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.len() > 2 && f[0] != "Z" && f[2].parse::<u64>().ok() == Some(group)
        })
        .collect()
}

/// Every trial's process group (its `sweep train`'s pid) from the journal.
fn trial_groups(results: &Path) -> Vec<u64> {
    journal_events(results)
        .iter()
        .filter(|e| e["event"] == "trial_started")
        .filter_map(|e| e["pid"].as_u64())
        .collect()
}

fn assert_no_process_left(results: &Path) {
    for group in trial_groups(results) {
        let left = group_members(group);
        assert!(left.is_empty(), "group {group} still has {left:?}");
    }
}

#[test]
fn every_macro_form_reaches_the_program_as_wandb_passes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let train = repo().join("data/clinc150-mini/train.json");
    // (command's elements after ${env} ${interpreter} ${program}, what the logged argument
    // vector must hold, whether a boolean parameter goes with it)
    let forms: [(&str, &str, bool); 9] = [
        ("${args}", " --epochs=1 --learning_rate=0.5 ", false),
        (
            "${args_no_equals}",
            " --epochs 1 --learning_rate 0.5 ",
            false,
        ),
        ("${args_no_hyphens}", " epochs=1 learning_rate=0.5 ", false),
        (
            "${args_append_hydra}",
            " +epochs=1 +learning_rate=0.5 ",
            false,
        ),
        (
            "${args_override_hydra}",
            " ++epochs=1 ++learning_rate=0.5 ",
            false,
        ),
        (
            "${args_no_boolean_flags}",
            " --epochs=1 --learning_rate=0.5 --verbose ",
            true,
        ),
        (
            "${args_json}",
            r#"{"epochs": 1, "learning_rate": 0.5, "verbose": true}"#,
            true,
        ),
        ("${args_json_file}", "/trials/0001/params.json ", true),
        (
            "--train=${envvar:SWEEP_IT_TRAIN}\n  - ${args}",
            "--train=/",
            false,
        ),
    ];
    for (i, (last, want, verbose)) in forms.iter().enumerate() {
        let dir = tmp.path().join(i.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let command = format!(
            "command:\n  - ${{env}}\n  - ${{interpreter}}\n  - ${{program}}\n  - {}\n",
            last.replace("\\n", "\n")
        );
        let verbose = if *verbose {
            "  verbose: {value: true}\n"
        } else {
            ""
        };
        let path = spec(
            &dir,
            &format!(
                "{command}metric: {{name: val_loss}}\nparameters:\n  learning_rate: {{value: 0.5}}\n  epochs: {{value: 1}}\n{verbose}resources: {{devices: cpu, slots: 1, parallel: 1}}\n"
            ),
        );
        let results = dir.join("results");
        let _explain = ExplainOnFailure(results.clone());
        let out = sweep()
            .args(["run".as_ref(), path.as_os_str(), "--quiet".as_ref()])
            .env("SWEEP_IT_TRAIN", &train)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(statuses(&results), ["finished"], "{command}");
        let log = std::fs::read_to_string(results.join("trials/0001/train.log")).unwrap();
        let line = log.lines().find(|l| l.starts_with("program: ")).unwrap();
        assert!(format!("{line} ").contains(want), "{command}: {line}");
        // The parameters also reach it as files, in JSON and in W&B's config form.
        let params = std::fs::read_to_string(results.join("trials/0001/params.json")).unwrap();
        assert!(params.contains(r#""learning_rate": 0.5"#), "{params}");
        let wandb = std::fs::read_to_string(results.join("trials/0001/wandb-config.yaml")).unwrap();
        assert!(wandb.contains("learning_rate:\n  value: 0.5"), "{wandb}");
    }
    // The program's metric and its other reported keys are columns; best.json names the
    // checkpoint it reported.
    let results = tmp.path().join("0/results");
    let row = &csv_rows(&results)[0];
    let val_loss: f64 = row["val_loss"].parse().unwrap();
    assert!(val_loss > 0.0 && val_loss < 5.0, "{row:?}");
    assert!(row["accuracy"].parse::<f64>().unwrap() > 0.0);
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("best/best.json")).unwrap())
            .unwrap();
    assert_eq!(best["metric"], "val_loss");
    assert!(
        Path::new(best["checkpoint"].as_str().unwrap()).is_file(),
        "{best}"
    );
}

#[test]
fn check_refuses_unknown_macros_and_missing_programs_where_they_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.yaml");
    std::fs::write(
        &path,
        "program: no_such_train.py\ncommand:\n  - ${env}\n  - ${interpeter}\n  - ${program}\nmetric: {name: val_loss}\nparameters:\n  lr: {values: [0.1]}\n  gpus: {value: 0}\noom_batch: {per_device: batch}\n",
    )
    .unwrap();
    let out = run_in(tmp.path(), &["check".as_ref(), path.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bad.yaml:4:5: error: command[1]: unknown macro `${interpeter}` (did you mean `${interpreter}`?)"),
        "{text}"
    );
    assert!(
        text.contains("oom_batch.per_device: `batch` is not a parameter"),
        "{text}"
    );
    // A file that is fine but for its program: the program is looked for.
    std::fs::write(
        &path,
        "program: no_such_train.py\nmetric: {name: val_loss}\nparameters:\n  lr: {values: [0.1]}\n",
    )
    .unwrap();
    let out = run_in(tmp.path(), &["check".as_ref(), path.as_os_str()]);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("bad.yaml:1:10: error: program: `no_such_train.py` not found"),
        "{text}"
    );
    // Random search with neither run_cap nor --count is refused, saying both.
    std::fs::write(
        &path,
        format!(
            "program: {}\nmethod: random\nmetric: {{name: val_loss}}\nparameters:\n  lr: {{min: 0.1, max: 1.0}}\n",
            trainer().display()
        ),
    )
    .unwrap();
    let out = run_in(tmp.path(), &["run".as_ref(), path.as_os_str()]);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("run_cap") && text.contains("--count"),
        "{text}"
    );
}

#[test]
fn grid_and_bayes_run_as_many_trials_as_count_says() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = spec(
        tmp.path(),
        "method: grid\nmetric: {name: accuracy, goal: maximize}\nparameters:\n  learning_rate: {values: [0.2, 0.5]}\n  batch_size: {values: [16, 32]}\n  epochs: {value: 1}\nresources: {devices: cpu, slots: 2, parallel: 2}\n",
    );
    let results = tmp.path().join("results");
    let _explain = ExplainOnFailure(results.clone());
    let out = run_in(
        tmp.path(),
        &[
            "run".as_ref(),
            grid.as_os_str(),
            "--count".as_ref(),
            "3".as_ref(),
            "--quiet".as_ref(),
        ],
    );
    assert!(out.status.success());
    assert_eq!(statuses(&results), ["finished"; 3]);

    let tmp = tempfile::tempdir().unwrap();
    let bayes = spec(
        tmp.path(),
        "method: bayes\nmetric: {name: val_loss, goal: minimize}\nparameters:\n  learning_rate: {distribution: log_uniform_values, min: 0.05, max: 2.0}\n  epochs: {value: 1}\nresources: {devices: cpu, slots: 2, parallel: 2}\n",
    );
    let results = tmp.path().join("results");
    let _explain = ExplainOnFailure(results.clone());
    let out = run_in(
        tmp.path(),
        &[
            "run".as_ref(),
            bayes.as_os_str(),
            "--count".as_ref(),
            "4".as_ref(),
            "--quiet".as_ref(),
        ],
    );
    assert!(out.status.success());
    let rows = csv_rows(&results);
    assert_eq!(rows.len(), 4);
    let rates: BTreeSet<String> = rows.iter().map(|r| r["learning_rate"].clone()).collect();
    assert_eq!(rates.len(), 4, "each proposal differs: {rows:?}");
    assert!(rows
        .iter()
        .all(|r| r["status"] == "finished" && !r["val_loss"].is_empty()));
}

#[test]
fn hyperband_stops_a_program_and_leaves_nothing_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    // One at a time: three good trials make the history, then a hopeless one reaches band 2.
    let path = spec(
        tmp.path(),
        "method: grid\nmetric: {name: val_loss, goal: minimize}\nparameters:\n  learning_rate: {values: [1.0, 0.8, 0.6, 0.0001]}\n  epochs: {value: 8}\n  sleep: {value: 0.15}\nearly_terminate: {type: hyperband, min_iter: 2, eta: 2}\nresources: {devices: cpu, slots: 1, parallel: 1}\n",
    );
    let results = tmp.path().join("results");
    let _explain = ExplainOnFailure(results.clone());
    let out = run_in(
        tmp.path(),
        &["run".as_ref(), path.as_os_str(), "--quiet".as_ref()],
    );
    assert!(out.status.success());
    let rows = csv_rows(&results);
    let last = &rows[3];
    assert_eq!(last["status"], "pruned", "{rows:?}");
    assert!(!last["pruned_band"].is_empty() && !last["pruned_threshold"].is_empty());
    // It was stopped by SIGTERM (the trainer says where), well before its 8 epochs.
    let stderr = std::fs::read_to_string(results.join("trials/0004/stderr.log")).unwrap();
    assert!(stderr.to_lowercase().contains("stop"), "{stderr}");
    let evaluations = std::fs::read_to_string(results.join("trials/0004/metrics.jsonl")).unwrap();
    assert!(evaluations.lines().count() < 8);
    assert_no_process_left(&results);
}

/// `sweep run PATH --quiet` started, once trials 1 and 2 have each reported an evaluation.
fn run_until_two_programs_report(path: &Path, results: &Path) -> std::process::Child {
    let child = sweep()
        .args(["run".as_ref(), path.as_os_str(), "--quiet".as_ref()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "two programs to report",
        Duration::from_secs(120),
        Duration::from_millis(20),
        || {
            (1..=2).all(|t| {
                std::fs::read_to_string(results.join(format!("trials/000{t}/metrics.jsonl")))
                    .is_ok_and(|m| !m.is_empty())
            })
        },
    );
    child
}

/// The trials the journal says finished, one entry per `trial_finished`, in trial order.
fn finished_trials(results: &Path) -> Vec<u64> {
    let mut finished: Vec<u64> = journal_events(results)
        .iter()
        .filter(|e| e["event"] == "trial_finished")
        .filter_map(|e| e["trial"].as_u64())
        .collect();
    finished.sort_unstable();
    finished
}

/// `sweep run PATH --resume` in `dir`: trials 1, 2 and 3 each finish exactly once, and no
/// process is left in any trial's group.
fn resume_finishes_each_of_three_trials_once(dir: &Path, path: &Path, results: &Path) {
    let out = run_in(
        dir,
        &[
            "run".as_ref(),
            path.as_os_str(),
            "--resume".as_ref(),
            "--quiet".as_ref(),
        ],
    );
    assert!(out.status.success());
    assert_eq!(statuses(results), ["finished"; 3]);
    assert_eq!(
        finished_trials(results),
        [1, 2, 3],
        "each trial finished once"
    );
    assert_no_process_left(results);
}

#[test]
fn ctrl_c_stops_the_programs_and_resume_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let path = spec(
        tmp.path(),
        "method: grid\nmetric: {name: val_loss}\nparameters:\n  learning_rate: {values: [0.3, 0.5, 0.7]}\n  epochs: {value: 12}\n  sleep: {value: 0.25}\nresources: {devices: cpu, slots: 2, parallel: 2}\n",
    );
    let results = tmp.path().join("results");
    let _explain = ExplainOnFailure(results.clone());
    let mut child = run_until_two_programs_report(&path, &results);
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert_eq!(statuses(&results), ["stopped", "stopped", "planned"]);
    assert_no_process_left(&results);
    // The programs got the signal and stopped cleanly (the trainer says so on stderr).
    let stderr = std::fs::read_to_string(results.join("trials/0001/stderr.log")).unwrap();
    assert!(stderr.to_lowercase().contains("stop"), "{stderr}");

    resume_finishes_each_of_three_trials_once(tmp.path(), &path, &results);
}

/// A program that leaves a process behind (a `sleep` in its group, as a data-loader worker
/// would be) and reports an epoch every 0.3 s.
const LEAVES_A_CHILD: &str = r#"import json, subprocess, sys, time
subprocess.Popen(["sleep", "300"])
for epoch in range(1, 4):
    time.sleep(0.3)
    print(json.dumps({"epoch": epoch, "val_loss": 1.0 / epoch}), flush=True)
"#;

#[test]
fn kill_9_of_the_orchestrator_then_resume_runs_no_trial_twice_and_leaves_no_process() {
    let tmp = tempfile::tempdir().unwrap();
    let program = tmp.path().join("leaves_a_child.py");
    std::fs::write(&program, LEAVES_A_CHILD).unwrap();
    let path = tmp.path().join("sweep.yaml");
    let results = tmp.path().join("results");
    std::fs::write(
        &path,
        format!(
            "name: killed\nprogram: {}\noutput: {}\nmethod: grid\nmetric: {{name: val_loss}}\nparameters:\n  x: {{values: [1, 2, 3]}}\nresources: {{devices: cpu, slots: 2, parallel: 2}}\n",
            program.display(),
            results.display()
        ),
    )
    .unwrap();
    let _explain = ExplainOnFailure(results.clone());
    let mut child = run_until_two_programs_report(&path, &results);
    child.kill().unwrap();
    child.wait().unwrap();
    // The programs die with the orchestrator; what they started outlives them until resume.
    let left: Vec<u64> = trial_groups(&results)
        .into_iter()
        .flat_map(group_members)
        .collect();
    assert!(!left.is_empty(), "each program's sleep outlives a kill -9");

    resume_finishes_each_of_three_trials_once(tmp.path(), &path, &results);
}

#[test]
fn a_crashing_program_fails_with_the_end_of_its_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let path = spec(
        tmp.path(),
        "metric: {name: val_loss}\nparameters:\n  epochs: {value: 3}\n  fail_at_epoch: {value: 2}\n",
    );
    let results = tmp.path().join("results");
    let _explain = ExplainOnFailure(results.clone());
    let out = run_in(
        tmp.path(),
        &["run".as_ref(), path.as_os_str(), "--quiet".as_ref()],
    );
    assert_eq!(out.status.code(), Some(1), "no trial succeeded");
    let row = &csv_rows(&results)[0];
    assert_eq!(row["status"], "failed");
    assert!(
        row["reason"].contains("exited with status 1")
            && row["reason"].contains("failing at epoch 2 as asked"),
        "{row:?}"
    );
    // Its one evaluation before the crash is kept.
    let evaluations = std::fs::read_to_string(results.join("trials/0001/metrics.jsonl")).unwrap();
    assert_eq!(evaluations.lines().count(), 1);
}

#[test]
fn pytorch_out_of_memory_is_recognised_and_halve_batch_halves_the_named_parameter() {
    let tmp = tempfile::tempdir().unwrap();
    let body = |on_oom: &str| {
        format!(
            "metric: {{name: val_loss}}\non_oom: {on_oom}\noom_batch: {{per_device: batch_size}}\nparameters:\n  epochs: {{value: 1}}\n  batch_size: {{value: 64}}\n  simulate_oom_above_batch: {{value: 16}}\n"
        )
    };
    let path = spec(tmp.path(), &body("halve_batch"));
    let results = tmp.path().join("results");
    let _explain = ExplainOnFailure(results.clone());
    let out = run_in(
        tmp.path(),
        &["run".as_ref(), path.as_os_str(), "--quiet".as_ref()],
    );
    assert!(out.status.success());
    let row = &csv_rows(&results)[0];
    assert_eq!(row["status"], "finished", "{row:?}");
    assert_eq!(row["retries"], "2", "64 -> 32 -> 16");
    let params = std::fs::read_to_string(results.join("trials/0001/params.json")).unwrap();
    assert!(params.contains(r#""batch_size": 16"#), "{params}");
    let ooms: Vec<u64> = journal_events(&results)
        .iter()
        .filter(|e| e["event"] == "trial_out_of_memory")
        .filter_map(|e| e["micro_batch"].as_u64())
        .collect();
    assert_eq!(ooms, [64, 32]);

    let tmp = tempfile::tempdir().unwrap();
    let path = spec(tmp.path(), &body("skip"));
    let results = tmp.path().join("results");
    let out = run_in(
        tmp.path(),
        &["run".as_ref(), path.as_os_str(), "--quiet".as_ref()],
    );
    assert_eq!(out.status.code(), Some(1));
    let row = &csv_rows(&results)[0];
    assert_eq!(row["status"], "failed");
    assert!(row["reason"].contains("CUDA out of memory"), "{row:?}");
    let end: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(results.join("trials/0001/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(end["end"], "out_of_memory", "{end}");
    assert_eq!(end["micro_batch"], 64);
}

#[test]
fn gpus_two_shows_the_program_exactly_two_of_the_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let smi = bin.join("nvidia-smi");
    std::fs::write(
        &smi,
        "#!/bin/sh\nfor i in 0 1 2 3; do echo \"$i, Fake GPU $i, 16384, 16000\"; done\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).unwrap();
    let program = tmp.path().join("show_devices.py");
    std::fs::write(
        &program,
        // Each waits until both have written what they see: the two run side by side.
        "import json, os, time\nids = os.environ['CUDA_VISIBLE_DEVICES']\nhere = os.environ['SWEEP_TRIAL_DIR']\nopen(os.path.join(here, 'visible.txt'), 'w').write(ids + '|' + os.environ['SWEEP_DEVICES'])\nfor _ in range(6000):\n    if all(os.path.exists(os.path.join(here, '..', t, 'visible.txt')) for t in ('0001', '0002')):\n        break\n    time.sleep(0.01)\nprint(json.dumps({'score': 1.0, 'visible': len(ids.split(','))}))\n",
    )
    .unwrap();
    let path = tmp.path().join("gpus.yaml");
    std::fs::write(
        &path,
        format!(
            "program: {}\noutput: {}\nmetric: {{name: score, goal: maximize}}\nparameters:\n  gpus: {{values: [2, 2, 8]}}\n  x: {{value: 1}}\nresources: {{devices: auto, parallel: 2}}\n",
            program.display(),
            tmp.path().join("results").display()
        ),
    )
    .unwrap();
    let results = tmp.path().join("results");
    let _explain = ExplainOnFailure(results.clone());
    let path_var = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = sweep()
        .args(["run".as_ref(), path.as_os_str(), "--quiet".as_ref()])
        .env("PATH", &path_var)
        .env_remove("CUDA_VISIBLE_DEVICES")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("refused: asks for 8 devices but the pool has 4"),
        "{stdout}"
    );
    assert_eq!(statuses(&results), ["finished", "finished", "refused"]);
    let mut held = BTreeSet::new();
    for t in 1..=2 {
        let seen =
            std::fs::read_to_string(results.join(format!("trials/000{t}/visible.txt"))).unwrap();
        let (ids, devices) = seen.split_once('|').unwrap();
        let ids: Vec<u32> = ids.split(',').map(|i| i.parse().unwrap()).collect();
        assert_eq!(ids.len(), 2, "{seen}");
        assert!(ids.iter().all(|i| *i < 4) && ids[0] != ids[1], "{seen}");
        assert_eq!(devices, "cuda:0,cuda:1");
        held.extend(ids);
    }
    // Side by side, the two trials held four different GPUs.
    assert_eq!(held.len(), 4);
    assert_eq!(csv_rows(&results)[0]["visible"], "2.0");
}

/// The five forms of W&B's own sweep files, unchanged, with a stand-in program.
#[test]
fn wandb_sweep_files_run_unchanged_with_count() {
    let fixtures = repo().join("tests/fixtures/wandb");
    for (file, count) in [
        ("grid-hyperband.yaml", 4),
        ("bayes-hyperband.yaml", 3),
        ("hydra.yaml", 3),
        ("boolean-flags.yaml", 4),
        ("llm-eval.yaml", 4),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(fixtures.join(file), tmp.path().join(file)).unwrap();
        std::fs::copy(fixtures.join("stand_in.py"), tmp.path().join("train.py")).unwrap();
        // `sweep check` takes the file as it is, with the `--count` that `sweep run` gives it
        // (a random or bayes file without `run_cap` needs one); without it those two are
        // refused, naming run_cap.
        let counted = count.to_string();
        let check = run_in(
            tmp.path(),
            &[
                "check".as_ref(),
                file.as_ref(),
                "--count".as_ref(),
                counted.as_ref(),
            ],
        );
        assert!(check.status.success(), "{file}: {check:?}");
        if ["bayes-hyperband.yaml", "hydra.yaml"].contains(&file) {
            let uncounted = run_in(tmp.path(), &["check".as_ref(), file.as_ref()]);
            assert_eq!(uncounted.status.code(), Some(2), "{file}");
            assert!(
                String::from_utf8_lossy(&uncounted.stdout).contains("run_cap"),
                "{file}: {uncounted:?}"
            );
        }
        let out = run_in(
            tmp.path(),
            &[
                "run".as_ref(),
                file.as_ref(),
                "--count".as_ref(),
                count.to_string().as_ref(),
                "--quiet".as_ref(),
            ],
        );
        assert!(out.status.success(), "{file}");
        let name = match file {
            "llm-eval.yaml" => "llm-eval".to_string(),
            other => other.trim_end_matches(".yaml").to_string(),
        };
        let results = tmp.path().join("results").join(&name);
        let _explain = ExplainOnFailure(results.clone());
        let rows = csv_rows(&results);
        assert_eq!(rows.len(), count, "{file}");
        assert!(
            rows.iter()
                .all(|r| r["status"] == "finished" || r["status"] == "pruned"),
            "{file}: {rows:?}"
        );
        let received = |t: usize| -> serde_json::Value {
            serde_json::from_str(
                &std::fs::read_to_string(results.join(format!("trials/{t:04}/received.json")))
                    .unwrap(),
            )
            .unwrap()
        };
        let argv: Vec<String> = (1..=count)
            .flat_map(|t| {
                received(t)["argv"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        match file {
            "hydra.yaml" => assert!(argv.iter().any(|a| a.starts_with("model.lr=")), "{argv:?}"),
            "boolean-flags.yaml" => {
                assert!(argv.contains(&"--use_amp".to_string()), "{argv:?}");
                assert!(!argv.iter().any(|a| a.contains("False")), "{argv:?}");
            }
            "bayes-hyperband.yaml" => {
                assert!(
                    argv.iter().any(|a| a.starts_with("--optimizer.momentum=")),
                    "{argv:?}"
                );
                let params =
                    std::fs::read_to_string(results.join("trials/0001/params.json")).unwrap();
                assert!(
                    params.contains(r#""optimizer": {"#),
                    "nested again: {params}"
                );
            }
            "llm-eval.yaml" => {
                assert_eq!(received(1)["params"]["max_new_tokens"], 64);
                assert!(!rows[0]["eval/accuracy"].is_empty(), "{:?}", rows[0]);
            }
            _ => assert!(
                argv.iter().any(|a| a.starts_with("--optimizer=")),
                "{argv:?}"
            ),
        }
    }
}

/// A program that leaves a process of a new session (outside the trial's group, out of reach of
/// the group kill) holding its stdout open: the trial still ends, with its report, once the
/// pipes have been read for a bounded while; and a program that writes nothing to stderr
/// leaves no stderr.log.
#[test]
fn a_process_that_escapes_the_group_holding_stdout_does_not_keep_the_trial_waiting() {
    let tmp = tempfile::tempdir().unwrap();
    let pid_file = tmp.path().join("escaped.pid");
    let program = tmp.path().join("escape.py");
    std::fs::write(
        &program,
        format!(
            "import json, subprocess\n\
             p = subprocess.Popen(['sleep', '600'], start_new_session=True)\n\
             open({pid:?}, 'w').write(str(p.pid))\n\
             print(json.dumps({{'accuracy': 0.5}}), flush=True)\n",
            pid = pid_file.display().to_string()
        ),
    )
    .unwrap();
    let path = tmp.path().join("sweep.yaml");
    let results = tmp.path().join("results");
    std::fs::write(
        &path,
        format!(
            "name: escape\nprogram: {}\ncommand: [python3, '${{program}}']\n\
             metric: {{name: accuracy, goal: maximize}}\nmethod: grid\n\
             parameters:\n  x: {{value: 1}}\noutput: {}\n",
            program.display(),
            results.display()
        ),
    )
    .unwrap();
    let _explain = ExplainOnFailure(results.clone());
    let mut run = crate::common::spawn_run(&path, false);
    let mut status = None;
    // Only against a hang: the escaped sleep holds the pipe for ten minutes.
    wait_until(
        "the sweep to end",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || {
            status = run.try_wait().unwrap();
            status.is_some()
        },
    );
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let row = &csv_rows(&results)[0];
    assert_eq!(
        (row["status"].as_str(), row["accuracy"].as_str()),
        ("finished", "0.5"),
        "{row:?}"
    );
    assert!(!results.join("trials/0001/stderr.log").exists());
    assert!(results.join("trials/0001/stdout.log").exists());
    // Nothing of the trial's own group is left (the escaped sleep, killed above, was not in it).
    assert_no_process_left(&results);
}
