//! `sweep check` on the fixture corpus in tests/fixtures/check: every bad spec and data file gives
//! the message written for it in expected.txt (file, line and field included) and the exit
//! status (2 on errors; 0 when there are only warnings). `sweep run` refuses a bad spec before
//! anything is written, and the bundled data and quickstart pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sweep() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sweep"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/check")
}

/// One entry of expected.txt: `check ARGS...`, `exit N`, then `> fragment` lines.
#[derive(Debug)]
struct Case {
    args: Vec<String>,
    exit: i32,
    expect: Vec<String>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("expected.txt")).unwrap();
    let mut cases: Vec<Case> = Vec::new();
    for line in text.lines() {
        if let Some(args) = line.strip_prefix("check ") {
            cases.push(Case {
                args: args.split_whitespace().map(String::from).collect(),
                exit: -1,
                expect: Vec::new(),
            });
        } else if let Some(code) = line.strip_prefix("exit ") {
            cases.last_mut().unwrap().exit = code.trim().parse().unwrap();
        } else if let Some(fragment) = line.strip_prefix("> ") {
            cases.last_mut().unwrap().expect.push(fragment.to_string());
        } else {
            assert!(
                line.trim().is_empty() || line.starts_with('#'),
                "expected.txt: cannot read {line:?}"
            );
        }
    }
    cases
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn every_fixture_gives_its_message_and_exit_status() {
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        assert!(
            case.exit == 0 || case.exit == 2,
            "{case:?}: exit must be 0 or 2"
        );
        assert!(!case.expect.is_empty(), "{case:?}: no expected message");
        let out = sweep()
            .arg("check")
            .args(&case.args)
            .current_dir(fixtures())
            .output()
            .unwrap();
        let all = text(&out);
        if out.status.code() != Some(case.exit) {
            failures.push(format!(
                "check {}: exit {:?}, expected {}\n{all}",
                case.args.join(" "),
                out.status.code(),
                case.exit
            ));
        }
        for fragment in &case.expect {
            if !all.contains(fragment.as_str()) {
                failures.push(format!(
                    "check {}: missing\n  {fragment}\nin\n{all}",
                    case.args.join(" ")
                ));
            }
        }
        if case.exit == 0 {
            assert!(
                case.expect.iter().all(|f| f.contains(": warning: ")),
                "{case:?}: a passing fixture is there for its warnings"
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every file of the corpus is used (named in expected.txt, or by a spec fixture that is), and
/// there are at least 40 bad ones.
#[test]
fn the_corpus_has_forty_bad_files_and_no_orphans() {
    let manifest = std::fs::read_to_string(fixtures().join("expected.txt")).unwrap();
    let mut files = Vec::new();
    let mut stack = vec![fixtures()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let rel = |p: &Path| {
        p.strip_prefix(fixtures())
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/")
    };
    let specs: Vec<String> = files
        .iter()
        .filter(|p| rel(p).starts_with("spec/"))
        .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
        .collect();
    let mut bad = 0;
    for f in &files {
        let name = rel(f);
        if name == "expected.txt" {
            continue;
        }
        let named = manifest.contains(&format!(" {name}"));
        assert!(
            named || specs.iter().any(|s| s.contains(&name)),
            "{name} is not used by any fixture"
        );
        if named && !name.starts_with("data/good/") {
            bad += 1;
        }
    }
    assert!(bad >= 40, "only {bad} bad fixture files");
}

#[test]
fn the_bundled_data_and_quickstart_pass() {
    let out = sweep()
        .args([
            "check",
            "data/clinc150-mini/train.json",
            "data/clinc150-mini/dev.json",
            "sweeps/quickstart.yaml",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("check: ok"), "{all}");
    assert!(all.contains("sweeps/quickstart.yaml: 16 trial(s)"), "{all}");
    assert!(
        all.contains("class counts (train/dev): alarm 60/20"),
        "{all}"
    );
}

#[test]
fn run_refuses_a_bad_spec_or_bad_data_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let good = fixtures().join("data/good");
    let bad_data = fixtures().join("data/pretty.json");
    for (name, train, params) in [
        (
            "bad-spec",
            good.join("train.json"),
            "  learning_rate: {values: [1.0e-3, -1]}\n",
        ),
        ("bad-data", bad_data, "  epochs: {value: 1}\n"),
    ] {
        let spec = tmp.path().join(format!("{name}.yaml"));
        std::fs::write(
            &spec,
            format!(
                "name: {name}\ndata:\n  train: {}\n  dev: {}\nmodel: {{preset: test}}\noutput: {}\nparameters:\n{params}",
                train.display(),
                good.join("dev.json").display(),
                results.display()
            ),
        )
        .unwrap();
        let out = sweep()
            .args(["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()])
            .output()
            .unwrap();
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{all}");
        assert!(all.contains(": error: "), "{all}");
        assert!(all.contains("nothing was started"), "{all}");
        assert!(
            !results.exists(),
            "{name}: a refused sweep wrote {results:?}"
        );
    }
}
