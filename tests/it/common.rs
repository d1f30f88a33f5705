//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn sweep() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sweep"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A small labelled set: the first `n_train`/`n_dev` lines of the bundled quickstart data.
pub fn small_data(dir: &Path, n_train: usize, n_dev: usize) -> (PathBuf, PathBuf) {
    let take = |name: &str, n: usize| {
        let text = std::fs::read_to_string(repo().join("data/clinc150-mini").join(name)).unwrap();
        let lines: Vec<&str> = text.lines().take(n).collect();
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    (take("train.json", n_train), take("dev.json", n_dev))
}

pub fn write_spec(dir: &Path, body: &str) -> PathBuf {
    let (train, dev) = small_data(dir, 48, 20);
    let spec = format!(
        "name: t\ndata:\n  train: {}\n  dev: {}\nmodel: {{preset: test}}\noutput: {}\nseed: 3\n{body}",
        train.display(),
        dev.display(),
        dir.join("results").display()
    );
    let path = dir.join("sweep.yaml");
    std::fs::write(&path, spec).unwrap();
    path
}

pub fn run(args: &[&std::ffi::OsStr]) -> Output {
    let out = sweep().args(args).output().unwrap();
    eprintln!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn csv_rows(dir: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines
        .map(|l| {
            // Our reasons may hold commas inside quotes; split carefully.
            let mut fields = Vec::new();
            let mut cur = String::new();
            let mut quoted = false;
            for c in l.chars() {
                match c {
                    '"' => quoted = !quoted,
                    ',' if !quoted => fields.push(std::mem::take(&mut cur)),
                    c => cur.push(c),
                }
            }
            fields.push(cur);
            header.iter().cloned().zip(fields).collect()
        })
        .collect()
}

/// Largest absolute difference between two f32 tensors of one shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The events of a sweep's journal.jsonl (none when it does not exist yet).
pub fn journal_events(results: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(results.join("journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `sweep run SPEC --quiet` (with `--resume`) in the background, its output discarded.
pub fn spawn_run(spec: &Path, resume: bool) -> Child {
    let mut cmd = sweep();
    cmd.args(["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()]);
    if resume {
        cmd.arg("--resume");
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Polls every `poll` until `ready`, failing after `deadline` (only against hangs).
pub fn wait_until(what: &str, deadline: Duration, poll: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + deadline;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(poll);
    }
}

/// What a sweep left in its results folder, for a failing test to say what happened: the
/// journal, then each trial's train.log and Slurm output files (their last 60 lines each).
pub fn sweep_story(results: &Path) -> String {
    let tail = |path: &Path| {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    let mut story = format!(
        "=== {}/journal.jsonl\n{}\n",
        results.display(),
        tail(&results.join("journal.jsonl"))
    );
    let mut trials: Vec<PathBuf> = std::fs::read_dir(results.join("trials"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    trials.sort();
    for trial in trials {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&trial)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == "train.log" || n == "result.json" || n.starts_with("slurm-"))
        });
        files.sort();
        for file in files {
            story.push_str(&format!("=== {}\n{}\n", file.display(), tail(&file)));
        }
    }
    story
}

/// Prints `sweep_story` of a results folder when the test holding it fails (it is dropped while
/// the test panics), so a red CI run explains itself.
pub struct ExplainOnFailure(pub PathBuf);

impl Drop for ExplainOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("what the sweep left:\n{}", sweep_story(&self.0));
        }
    }
}
