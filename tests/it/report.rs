//! After the sweep: the test score, `sweep eval` and `sweep predict` on its checkpoints, and the
//! HTML report as a person sees it (headless Chromium).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{csv_rows, repo, run, sweep};

/// A two-trial sweep (sft and lora on the `test` preset) with a test file; returns the results
/// folder and the dev file.
fn sweep_with_test(dir: &Path) -> (PathBuf, PathBuf) {
    let lines = |name: &str| -> Vec<String> {
        std::fs::read_to_string(repo().join("data/clinc150-mini").join(name))
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    };
    let (train, dev) = (lines("train.json"), lines("dev.json"));
    let write = |name: &str, l: &[String]| {
        let p = dir.join(name);
        std::fs::write(&p, l.join("\n") + "\n").unwrap();
        p
    };
    let train = write("train.json", &train[..60]);
    let devp = write("dev.json", &dev[..30]);
    let test = write("test.json", &dev[30..60]);
    let spec = format!(
        "name: t\ndata:\n  train: {}\n  dev: {}\n  test: {}\nmodel: {{preset: test}}\noutput: {}\nseed: 3\nparameters:\n  method: {{values: [sft, lora]}}\n  learning_rate: {{value: 1.0e-2}}\n  epochs: {{value: 2}}\n  batch_size: {{value: 8}}\n  micro_batch: {{value: 4}}\n  lora_rank: {{value: 4}}\n  max_seq_len: {{value: 96}}\nresources: {{devices: cpu, slots: 2, parallel: 2}}\n",
        train.display(),
        devp.display(),
        test.display(),
        dir.join("results").display()
    );
    let spec_path = dir.join("sweep.yaml");
    std::fs::write(&spec_path, spec).unwrap();
    let out = run(&["run".as_ref(), spec_path.as_os_str(), "--quiet".as_ref()]);
    assert!(out.status.success());
    (dir.join("results"), devp)
}

#[test]
fn the_best_checkpoint_is_scored_on_test_once_and_predict_reproduces_dev() {
    let tmp = tempfile::tempdir().unwrap();
    let (results, dev) = sweep_with_test(tmp.path());
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("best/best.json")).unwrap())
            .unwrap();
    let test_acc = best["test"]["accuracy"]
        .as_f64()
        .expect("best.json has test");
    assert_eq!(best["test"]["examples"], 30);
    let rows = csv_rows(&results);
    let best_trial = best["trial"].as_u64().unwrap().to_string();
    for r in &rows {
        if r["trial"] == best_trial {
            assert_eq!(r["test_accuracy"].parse::<f64>().unwrap(), test_acc);
        } else {
            assert_eq!(
                r["test_accuracy"], "",
                "only the best trial is scored on test"
            );
        }
    }
    let page = std::fs::read_to_string(results.join("report.html")).unwrap();
    assert!(
        page.contains("test accuracy <b>"),
        "the report shows the test score"
    );

    for r in &rows {
        let tdir = results.join("trials").join(format!("{:0>4}", r["trial"]));
        let ckpt = tdir.join("checkpoint");
        // `sweep predict` on dev gives, line by line, the predictions behind the dev accuracy.
        let out = sweep()
            .args(["predict".as_ref(), ckpt.as_os_str(), dev.as_os_str()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let predicted: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let recorded: Vec<serde_json::Value> =
            std::fs::read_to_string(tdir.join("dev_predictions.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        assert_eq!(predicted.len(), 30);
        assert_eq!(predicted.len(), recorded.len());
        let mut correct = 0;
        for (p, q) in predicted.iter().zip(&recorded) {
            assert_eq!(p["line"], q["line"]);
            assert_eq!(p["predicted"], q["predicted"], "{p} vs {q}");
            assert_eq!(p["top"].as_array().unwrap().len(), 3);
            correct += usize::from(p["predicted"] == q["gold"]);
        }
        let acc: f64 = r["accuracy"].parse().unwrap();
        assert!(
            (correct as f64 / 30.0 - acc).abs() < 1e-9,
            "{correct}/30 vs {acc}"
        );
        // `sweep eval --json`: the same accuracy, and per-class metrics that add up.
        let out = sweep()
            .args([
                "eval".as_ref(),
                ckpt.as_os_str(),
                dev.as_os_str(),
                "--json".as_ref(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!((report["accuracy"].as_f64().unwrap() - acc).abs() < 1e-9);
        let support: u64 = report["per_class"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["support"].as_u64().unwrap())
            .sum();
        assert_eq!(support, 30);
    }

    // The main plots as PNG images.
    let pngs = tmp.path().join("png");
    let out = run(&[
        "report".as_ref(),
        results.as_os_str(),
        "--png".as_ref(),
        pngs.as_os_str(),
    ]);
    assert!(out.status.success());
    for name in [
        "learning_curves.png",
        "importance.png",
        "memory.png",
        "accuracy_by_method.png",
        "accuracy_by_train_seconds.png",
        "accuracy_by_eval_seconds.png",
    ] {
        let bytes = std::fs::read(pngs.join(name)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{name}");
    }

    // Stdin, with only `src`: one line out per line in.
    let ckpt = results.join("best/checkpoint");
    let mut child = sweep()
        .args(["predict".as_ref(), ckpt.as_os_str()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"src\": \"wake me up at 7\"}\n{\"src\": \"what is my balance\", \"system\": \"classify\"}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}

#[test]
fn bad_input_to_eval_and_predict_names_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (results, dev) = sweep_with_test(tmp.path());
    let ckpt = results.join("best/checkpoint");
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "{\"src\": \"hi\"}\n{\"system\": \"x\"}\n").unwrap();
    let empty = tmp.path().join("empty.json");
    std::fs::write(&empty, "").unwrap();
    let cases: Vec<(Vec<&std::ffi::OsStr>, String)> = vec![
        (
            vec!["predict".as_ref(), ckpt.as_os_str(), bad.as_os_str()],
            format!("{}:2: src", bad.display()),
        ),
        (
            vec!["predict".as_ref(), ckpt.as_os_str(), empty.as_os_str()],
            format!("{}: no examples", empty.display()),
        ),
        (
            vec!["predict".as_ref(), tmp.path().as_os_str(), dev.as_os_str()],
            "not a checkpoint".to_string(),
        ),
        (
            vec!["eval".as_ref(), ckpt.as_os_str(), bad.as_os_str()],
            format!("{}:2: src", bad.display()),
        ),
    ];
    for (args, expected) in cases {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&expected), "{expected:?} not in {err}");
    }
}

/// Headless Chromium, when there is one (under CI it must be there).
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser"]
        .into_iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is not installed, and CI must run the report check (.ci/run installs it)"
        );
        eprintln!("skipped: no chromium on PATH (apt-get install chromium to run this check)");
    }
    found
}

fn headless(chrome: &Path, profile: &Path, extra: &[&str], page: &Path) -> std::process::Output {
    Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap()
}

#[test]
fn the_html_report_draws_every_chart_in_headless_chromium() {
    let Some(chrome) = chromium() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (results, _) = sweep_with_test(tmp.path());
    let page = results.join("report.html");
    // The page itself checks that every chart's canvas has drawn pixels and says so in its title.
    let dom = headless(
        &chrome,
        &tmp.path().join("profile-dom"),
        &["--dump-dom"],
        &page,
    );
    let html = String::from_utf8_lossy(&dom.stdout);
    let logs = String::from_utf8_lossy(&dom.stderr);
    let title = html
        .split("<title>")
        .nth(1)
        .and_then(|t| t.split("</title>").next())
        .unwrap_or("");
    assert!(
        title.starts_with("charts drawn "),
        "title {title:?}; log:\n{logs}"
    );
    let counts: Vec<&str> = title["charts drawn ".len()..]
        .split(':')
        .next()
        .unwrap()
        .split('/')
        .collect();
    assert_eq!(counts[0], counts[1], "{title}");
    assert!(counts[0].parse::<usize>().unwrap() >= 8, "{title}");
    assert!(!logs.contains("Uncaught"), "script error:\n{logs}");
    // And a screenshot, as a person would see the page.
    let shot = tmp.path().join("report.png");
    let arg = format!("--screenshot={}", shot.display());
    let out = headless(
        &chrome,
        &tmp.path().join("profile-shot"),
        &[&arg, "--window-size=1280,2400"],
        &page,
    );
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(!logs.contains("Uncaught"), "script error:\n{logs}");
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert_eq!(&png[1..4], b"PNG");
    assert!(
        png.len() > 50_000,
        "a blank page compresses to almost nothing: {} bytes",
        png.len()
    );
}

/// The title's `drawn/expected` chart counts and the body's `data-axes` of a page, as headless
/// Chromium renders it.
fn rendered(chrome: &Path, profile: &Path, page: &Path) -> (String, String) {
    let dom = headless(chrome, profile, &["--dump-dom"], page);
    let html = String::from_utf8_lossy(&dom.stdout).to_string();
    let logs = String::from_utf8_lossy(&dom.stderr);
    assert!(!logs.contains("Uncaught"), "script error:\n{logs}");
    let between = |a: &str, b: &str| {
        html.split(a)
            .nth(1)
            .and_then(|t| t.split(b).next())
            .unwrap_or("")
            .to_string()
    };
    (
        between("<title>", "</title>"),
        between("data-axes=\"", "\""),
    )
}

#[test]
fn the_report_axes_follow_how_each_parameter_is_drawn_in_headless_chromium() {
    let Some(chrome) = chromium() else { return };
    // A results folder as a finished random sweep leaves it: a log-distributed learning rate,
    // batch sizes 4 and 8 (two values, not a range) and two methods.
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(
        results.join("spec.yaml"),
        "name: axes\ndata: {train: a.json, dev: b.json}\nmethod: random\nrun_cap: 6\nparameters:\n  learning_rate: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-2}\n  batch_size: {values: [4, 8]}\n  warmup_ratio: {min: 0.0, max: 0.2}\n  method: {values: [sft, lora]}\n",
    )
    .unwrap();
    let mut csv = String::from("trial,status,reason,batch_size,learning_rate,method,warmup_ratio,accuracy,dev_loss,best_epoch,seconds,train_seconds_per_epoch,seconds_per_evaluation,peak_rss_mb,estimated_mb\n");
    for (i, (lr, bs, m, acc)) in [
        (2.0e-5, 4, "sft", 0.61),
        (3.0e-4, 8, "sft", 0.83),
        (8.0e-3, 4, "lora", 0.78),
        (1.0e-4, 8, "lora", 0.82),
        (5.0e-5, 4, "lora", 0.70),
        (1.0e-3, 8, "sft", 0.80),
    ]
    .iter()
    .enumerate()
    {
        csv.push_str(&format!(
            "{},finished,,{bs},{lr},{m},{},{acc},1.0,1,10.0,{},{},300.0,280.0\n",
            i + 1,
            0.03 * i as f64,
            if *m == "sft" { 4.0 } else { 3.0 },
            0.5 + 0.1 * i as f64
        ));
    }
    std::fs::write(results.join("results.csv"), csv).unwrap();
    let out = run(&["report".as_ref(), results.as_os_str(), "--html".as_ref()]);
    assert!(out.status.success());
    let (title, axes) = rendered(
        &chrome,
        &tmp.path().join("profile"),
        &results.join("report.html"),
    );
    assert!(title.starts_with("charts drawn "), "{title}");
    let counts: Vec<&str> = title["charts drawn ".len()..]
        .split(':')
        .next()
        .unwrap()
        .split('/')
        .collect();
    assert_eq!(counts[0], counts[1], "{title}");
    let mut axes: Vec<&str> = axes.split(' ').collect();
    axes.sort();
    assert_eq!(
        axes,
        [
            "batch_size:category",
            "learning_rate:log",
            "method:category",
            "warmup_ratio:value"
        ]
    );
    // And the per-method cost table marks the cheapest within a point of the best (sft 0.83,
    // lora 0.82: lora trains faster).
    let page = std::fs::read_to_string(results.join("report.html")).unwrap();
    let marks = |method: &str| -> Vec<bool> {
        let row = page
            .split(&format!("<tr><td class=\"t\">{method}</td>"))
            .nth(1)
            .and_then(|r| r.split("</tr>").next())
            .unwrap_or_else(|| panic!("no cost row for {method}"));
        let cells: Vec<&str> = row.split("<td>").collect();
        cells[cells.len() - 2..]
            .iter()
            .map(|c| c.contains("&#10003;"))
            .collect()
    };
    // Cheapest to train: lora (3 s/epoch against 4); to evaluate: sft (0.7 s against 0.8).
    assert_eq!(marks("lora"), [true, false]);
    assert_eq!(marks("sft"), [false, true]);
}
