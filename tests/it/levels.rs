//! Labels with levels (`data.label_separator`): a two-level set (`domain/intent`, from CLINC's
//! domains) gives accuracy per level in metrics.jsonl, results.csv, `sweep eval` and the report,
//! each equal to the level accuracy recomputed here from the trial's own dev predictions.

use std::path::{Path, PathBuf};

use crate::common::{csv_rows, repo, run, sweep};

/// Lines `skip..skip + n` of the bundled two-level set's `name`, written into `dir/out`.
fn levels_data(dir: &Path, name: &str, skip: usize, n: usize, out: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("data/clinc150-levels").join(name)).unwrap();
    let lines: Vec<&str> = text.lines().skip(skip).take(n).collect();
    let path = dir.join(out);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// The fraction of (gold, predicted) pairs whose first parts (the domain) agree.
fn domain_accuracy(pairs: &[(String, String)]) -> f64 {
    let domain = |l: &str| l.split('/').next().unwrap_or("").to_string();
    let right = pairs.iter().filter(|(g, p)| domain(g) == domain(p)).count();
    right as f64 / pairs.len() as f64
}

#[test]
fn label_levels_give_accuracy_per_level_in_every_output() {
    let tmp = tempfile::tempdir().unwrap();
    let train = levels_data(tmp.path(), "train.json", 0, 120, "train.json");
    let dev = levels_data(tmp.path(), "dev.json", 0, 40, "dev.json");
    let test = levels_data(tmp.path(), "dev.json", 40, 40, "test.json");
    let spec = format!(
        "name: levels\ndata:\n  train: {}\n  dev: {}\n  test: {}\n  label_separator: \"/\"\nmodel: {{preset: test}}\noutput: {}\nseed: 5\nparameters:\n  method: {{values: [sft, lora]}}\n  learning_rate: {{value: 1.0e-2}}\n  epochs: {{value: 2}}\n  batch_size: {{value: 8}}\n  micro_batch: {{value: 4}}\n  lora_rank: {{value: 4}}\nresources: {{devices: cpu, slots: 2, parallel: 2}}\n",
        train.display(),
        dev.display(),
        test.display(),
        tmp.path().join("results").display()
    );
    let spec_path = tmp.path().join("sweep.yaml");
    std::fs::write(&spec_path, spec).unwrap();

    let out = run(&["check".as_ref(), spec_path.as_os_str()]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("labels have up to 2 levels"), "{said}");

    let out = run(&["run".as_ref(), spec_path.as_os_str(), "--quiet".as_ref()]);
    assert!(out.status.success());
    let results = tmp.path().join("results");
    let rows = csv_rows(&results);
    assert_eq!(rows.len(), 2);
    for r in &rows {
        let num = |k: &str| -> f64 {
            r.get(k)
                .unwrap_or_else(|| panic!("results.csv has no {k}: {r:?}"))
                .parse()
                .unwrap_or_else(|e| panic!("{k}: {e}: {r:?}"))
        };
        let (level1, level2, accuracy) = (
            num("accuracy_level1"),
            num("accuracy_level2"),
            num("accuracy"),
        );
        // The deepest level is exact accuracy; a right label has its right domain.
        assert!((level2 - accuracy).abs() < 1e-12, "{r:?}");
        assert!(level1 >= level2, "{r:?}");
        assert!(num("train_seconds_per_epoch") > 0.0, "{r:?}");
        assert!(num("seconds_per_evaluation") > 0.0, "{r:?}");

        // The best evaluation's level 1 is the domain accuracy of the dev predictions it left.
        let tdir = results.join("trials").join(format!("{:0>4}", r["trial"]));
        let predictions: Vec<(String, String)> =
            std::fs::read_to_string(tdir.join("dev_predictions.jsonl"))
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    (
                        v["gold"].as_str().unwrap().to_string(),
                        v["predicted"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
        assert_eq!(predictions.len(), 40);
        assert!((domain_accuracy(&predictions) - level1).abs() < 1e-12);

        // Every evaluation in metrics.jsonl has both levels.
        let metrics = std::fs::read_to_string(tdir.join("metrics.jsonl")).unwrap();
        let evaluations: Vec<serde_json::Value> = metrics
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == "epoch")
            .collect();
        assert_eq!(evaluations.len(), 2);
        for e in &evaluations {
            let levels = e["accuracy_by_level"].as_array().expect("levels");
            assert_eq!(levels.len(), 2, "{e}");
            assert_eq!(levels[1], e["accuracy"], "{e}");
        }

        // `sweep eval` on the checkpoint: the same levels, as JSON and as text.
        let ckpt = tdir.join("checkpoint");
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
        let levels = report["levels"].as_array().expect("eval --json has levels");
        assert_eq!(levels.len(), 2);
        assert_eq!(levels[0]["level"], 1);
        assert!((levels[0]["accuracy"].as_f64().unwrap() - level1).abs() < 1e-9);
        assert!((levels[1]["accuracy"].as_f64().unwrap() - accuracy).abs() < 1e-9);
        let out = sweep()
            .args(["eval".as_ref(), ckpt.as_os_str(), dev.as_os_str()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("accuracy at level 1 {level1:.4}")),
            "{text}"
        );
    }

    // The test score has its levels too.
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("best/best.json")).unwrap())
            .unwrap();
    let test_levels = best["test"]["levels"].as_array().expect("test levels");
    assert_eq!(test_levels.len(), 2);
    assert_eq!(test_levels[1]["accuracy"], best["test"]["accuracy"]);

    // The report: level columns, the best trial's levels, and the per-method cost table.
    let page = std::fs::read_to_string(results.join("report.html")).unwrap();
    assert!(
        page.contains("scored once; level 1 "),
        "the test score's levels"
    );
    assert!(page.contains("<th>accuracy level 1</th>"));
    assert!(page.contains("dev accuracy by label level"));
    assert!(page.contains("Methods: accuracy against cost"));
    let out = run(&["report".as_ref(), results.as_os_str()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("accuracy_level1"), "{text}");
    assert!(text.contains("by method: accuracy against cost"), "{text}");
}

#[test]
fn a_separator_no_label_has_is_a_warning_and_an_empty_one_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, dev) = crate::common::small_data(tmp.path(), 20, 10);
    let write = |sep: &str| {
        let spec = format!(
            "name: t\ndata:\n  train: {}\n  dev: {}\n  label_separator: \"{sep}\"\nmodel: {{preset: test}}\nparameters:\n  epochs: {{value: 1}}\n",
            train.display(),
            dev.display()
        );
        let path = tmp.path().join("sweep.yaml");
        std::fs::write(&path, spec).unwrap();
        path
    };
    let out = run(&["check".as_ref(), write("/").as_os_str()]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("sweep.yaml:5:20: warning: data.label_separator: no label of"),
        "{said}"
    );
    let out = run(&["check".as_ref(), write("").as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("sweep.yaml:5:20: error: data.label_separator: must not be empty"),
        "{said}"
    );
}
