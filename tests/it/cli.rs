//! The command line end to end, on real CLINC150 queries with the small `test` preset.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{csv_rows, run, small_data, sweep, write_spec};

#[test]
fn a_sweep_trains_every_trial_and_picks_the_best() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(
        tmp.path(),
        "parameters:\n  method: {values: [sft, lora]}\n  learning_rate: {values: [1.0e-2, 3.0e-3]}\n  epochs: {value: 2}\n  batch_size: {value: 8}\n  lora_rank: {value: 4}\n  max_seq_len: {value: 96}\nresources: {devices: cpu, slots: 2, parallel: 2}\n",
    );
    let out = run(&["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()]);
    assert!(out.status.success());
    let results = tmp.path().join("results");
    let rows = csv_rows(&results);
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!(r["status"], "finished", "{r:?}");
        let acc: f64 = r["accuracy"].parse().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        let loss: f64 = r["dev_loss"].parse().unwrap();
        assert!(loss.is_finite() && loss > 0.0);
    }
    // Every trial kept per-epoch metrics and a checkpoint in the right layout.
    for r in &rows {
        let tdir = results
            .join("trials")
            .join(format!("{:04}", r["trial"].parse::<usize>().unwrap()));
        let metrics = std::fs::read_to_string(tdir.join("metrics.jsonl")).unwrap();
        assert_eq!(
            metrics
                .lines()
                .filter(|l| l.contains("\"kind\":\"epoch\""))
                .count(),
            2
        );
        let file = if r["method"] == "lora" {
            "adapter_model.safetensors"
        } else {
            "model.safetensors"
        };
        assert!(
            tdir.join("checkpoint").join(file).exists(),
            "{file} missing for {r:?}"
        );
    }
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("best/best.json")).unwrap())
            .unwrap();
    let best_acc = best["value"].as_f64().unwrap();
    let max_acc = rows
        .iter()
        .map(|r| r["accuracy"].parse::<f64>().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(best_acc, max_acc);
    assert!(Path::new(best["checkpoint"].as_str().unwrap())
        .join("tokenizer.json")
        .exists());

    let report = run(&["report".as_ref(), results.as_os_str()]);
    assert!(report.status.success());
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        text.contains("by learning_rate") && text.contains("by method"),
        "{text}"
    );
    let b = run(&["best".as_ref(), results.as_os_str()]);
    assert!(String::from_utf8_lossy(&b.stdout).contains("best/checkpoint"));

    // The journal has one line per state change, each trial started and finished once.
    let journal = std::fs::read_to_string(results.join("journal.jsonl")).unwrap();
    assert_eq!(journal.matches("\"event\":\"trial_started\"").count(), 4);
    assert_eq!(journal.matches("\"event\":\"trial_finished\"").count(), 4);

    // A second run into the same folder is refused rather than mixing two sweeps.
    let again = run(&["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds"));
}

#[test]
fn a_trial_killed_mid_sweep_is_recorded_and_the_sweep_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    // Trial 2 runs for many epochs; we kill its process as soon as it starts.
    let spec = write_spec(
        tmp.path(),
        "parameters:\n  epochs: {values: [1, 400, 1]}\n  batch_size: {value: 16}\nresources: {devices: cpu, slots: 2, parallel: 2}\n",
    );
    let mut child = sweep()
        .args(["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let journal = tmp.path().join("results/journal.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    let pid = loop {
        assert!(Instant::now() < deadline, "trial 2 never started");
        let text = std::fs::read_to_string(&journal).unwrap_or_default();
        let started = text.lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["event"] == "trial_started" && v["trial"] == 2).then(|| v["pid"].as_u64().unwrap())
        });
        if let Some(pid) = started {
            break pid;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the sweep itself must survive a trial's crash"
    );
    let rows = csv_rows(&tmp.path().join("results"));
    let status_of = |t: &str| rows.iter().find(|r| r["trial"] == t).unwrap().clone();
    assert_eq!(status_of("1")["status"], "finished");
    assert_eq!(status_of("3")["status"], "finished");
    let crashed = status_of("2");
    assert_eq!(crashed["status"], "failed");
    assert!(
        crashed["reason"].contains("killed by signal 9"),
        "{crashed:?}"
    );
    // The report, rewritten as trials ended, marks the failed trial in its leaderboard.
    let page = std::fs::read_to_string(tmp.path().join("results/report.html")).unwrap();
    assert!(
        page.contains("<tr class=\"failed\"><td></td><td>0002</td>"),
        "the failed trial is not marked in report.html"
    );
}

#[test]
fn a_trial_that_can_never_fit_is_refused_and_the_rest_run() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(
        tmp.path(),
        "parameters:\n  gpus: {values: [1, 8]}\n  epochs: {value: 1}\nresources: {devices: cpu, slots: 2, parallel: 2}\n",
    );
    let plan = run(&["plan".as_ref(), spec.as_os_str()]);
    assert!(plan.status.success());
    assert!(String::from_utf8_lossy(&plan.stdout)
        .contains("refused: asks for 8 devices but the pool has 2"));
    let out = run(&["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()]);
    assert!(out.status.success());
    let rows = csv_rows(&tmp.path().join("results"));
    assert_eq!(rows[0]["status"], "finished");
    assert_eq!(rows[1]["status"], "refused");
    assert!(rows[1]["reason"].contains("8 devices"));
}

#[test]
fn plan_counts_grid_and_random_trials() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = write_spec(
        tmp.path(),
        "parameters:\n  method: {values: [sft, lora, post_pretrain]}\n  batch_size: {values: [4, 8]}\n  learning_rate: {value: 1.0e-3}\n",
    );
    let out = run(&["plan".as_ref(), grid.as_os_str(), "--json".as_ref()]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["trials"].as_array().unwrap().len(), 6);

    let random = write_spec(
        tmp.path(),
        "method: random\nrun_cap: 7\nparameters:\n  learning_rate: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}\n  epochs: {distribution: int_uniform, min: 1, max: 4}\n",
    );
    let a = run(&["plan".as_ref(), random.as_os_str(), "--json".as_ref()]);
    let b = run(&["plan".as_ref(), random.as_os_str(), "--json".as_ref()]);
    let pa: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(pa["trials"].as_array().unwrap().len(), 7);
    assert_eq!(
        a.stdout, b.stdout,
        "the same seed must give the same trials"
    );
}

#[test]
fn a_bad_spec_is_refused_with_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(
        tmp.path(),
        "parameters:\n  learning_rate: {distribution: log_uniform_values, min: 0.1, max: 0.01}\n",
    );
    let out = run(&["run".as_ref(), spec.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sweep.yaml") && err.contains("parameters.learning_rate"),
        "{err}"
    );
    assert!(
        !tmp.path().join("results").exists(),
        "nothing may start on a bad spec"
    );
}

#[test]
fn post_pretrain_checkpoint_is_the_base_of_the_next_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, dev) = small_data(tmp.path(), 48, 20);
    let pre = tmp.path().join("pre.yaml");
    std::fs::write(
        &pre,
        format!(
            "name: pre\ndata: {{train: {}, dev: {}}}\nmodel: {{preset: test}}\noutput: {}\nmetric: {{name: dev_loss}}\nparameters:\n  method: {{value: post_pretrain}}\n  epochs: {{value: 2}}\n  learning_rate: {{value: 1.0e-2}}\n",
            train.display(),
            dev.display(),
            tmp.path().join("pre").display()
        ),
    )
    .unwrap();
    assert!(run(&["run".as_ref(), pre.as_os_str(), "--quiet".as_ref()])
        .status
        .success());
    let base = tmp.path().join("pre/best/checkpoint");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(
            base.join(f).exists(),
            "{f} missing from the post_pretrain checkpoint"
        );
    }
    let ft = tmp.path().join("ft.yaml");
    std::fs::write(
        &ft,
        format!(
            "name: ft\ndata: {{train: {}, dev: {}}}\nmodel: {{path: {}}}\noutput: {}\nparameters:\n  method: {{values: [sft, lora]}}\n  epochs: {{value: 1}}\n",
            train.display(),
            dev.display(),
            base.display(),
            tmp.path().join("ft").display()
        ),
    )
    .unwrap();
    assert!(run(&["run".as_ref(), ft.as_os_str(), "--quiet".as_ref()])
        .status
        .success());
    let rows = csv_rows(&tmp.path().join("ft"));
    assert!(rows.iter().all(|r| r["status"] == "finished"), "{rows:?}");
    let adapter: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            tmp.path()
                .join("ft/trials/0002/checkpoint/adapter_config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(adapter["peft_type"], "LORA");
    assert!(adapter["base_model_name_or_path"]
        .as_str()
        .unwrap()
        .ends_with("best/checkpoint"));
    // `sweep eval` takes adapters on a folder base, and their merged export, alike.
    let lora = tmp.path().join("ft/trials/0002/checkpoint");
    let merged = tmp.path().join("merged");
    assert!(run(&[
        "export".as_ref(),
        lora.as_os_str(),
        "--merge".as_ref(),
        merged.as_os_str()
    ])
    .status
    .success());
    let recorded: f64 = rows.iter().find(|r| r["trial"] == "2").unwrap()["accuracy"]
        .parse()
        .unwrap();
    for ckpt in [&lora, &merged] {
        let out = run(&[
            "eval".as_ref(),
            ckpt.as_os_str(),
            dev.as_os_str(),
            "--json".as_ref(),
        ]);
        assert!(out.status.success());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let acc = report["accuracy"].as_f64().unwrap();
        assert!(
            (acc - recorded).abs() < 1e-9,
            "{}: {acc} vs {recorded}",
            ckpt.display()
        );
    }
}

#[test]
fn a_model_folder_with_a_chat_template_trains_through_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(
            crate::common::repo().join("models/tiny-base").join(f),
            model.join(f),
        )
        .unwrap();
    }
    let template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
    std::fs::write(
        model.join("tokenizer_config.json"),
        serde_json::json!({"chat_template": template, "eos_token": "<eos>"}).to_string(),
    )
    .unwrap();
    let (train, dev) = small_data(tmp.path(), 48, 20);
    let spec = tmp.path().join("chat.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: chat\ndata: {{train: {}, dev: {}}}\nmodel: {{path: {}}}\noutput: {}\nparameters:\n  method: {{values: [sft, lora]}}\n  epochs: {{value: 1}}\n",
            train.display(),
            dev.display(),
            model.display(),
            tmp.path().join("out").display()
        ),
    )
    .unwrap();
    assert!(run(&["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()])
        .status
        .success());
    let rows = csv_rows(&tmp.path().join("out"));
    assert!(rows.iter().all(|r| r["status"] == "finished"), "{rows:?}");
    let acc: f64 = rows[0]["accuracy"].parse().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    // The checkpoints keep the template, so `sweep eval` renders prompts as training did.
    for r in &rows {
        let ckpt = tmp
            .path()
            .join("out/trials")
            .join(format!("{:0>4}", r["trial"]))
            .join("checkpoint");
        assert!(ckpt.join("tokenizer_config.json").exists());
        let out = run(&[
            "eval".as_ref(),
            ckpt.as_os_str(),
            dev.as_os_str(),
            "--json".as_ref(),
        ]);
        assert!(out.status.success());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let recorded: f64 = r["accuracy"].parse().unwrap();
        assert!((report["accuracy"].as_f64().unwrap() - recorded).abs() < 1e-9);
    }
}

#[test]
fn noisy_labels_train_with_a_warning_and_max_seq_len_fits_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(
        tmp.path(),
        "parameters:\n  epochs: {value: 1}\n  batch_size: {value: 8}\n",
    );
    // The first query again, with another label: noisy data, as real labelled data is.
    let train = tmp.path().join("train.json");
    let text = std::fs::read_to_string(&train).unwrap();
    let mut first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let other = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["tgt"].clone())
        .find(|t| *t != first["tgt"])
        .unwrap();
    first["tgt"] = other;
    std::fs::write(&train, format!("{text}{first}\n")).unwrap();

    let check = run(&["check".as_ref(), spec.as_os_str()]);
    assert_eq!(check.status.code(), Some(0));
    let said = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(
        said.contains("train.json:49: warning: tgt: conflicting labels: 1 example(s) repeat an earlier src with a different tgt: line 49"),
        "{said}"
    );
    assert!(
        said.contains("(not set in the sweep file: the longest training example"),
        "{said}"
    );
    let plan = run(&["plan".as_ref(), spec.as_os_str()]);
    let plan = String::from_utf8_lossy(&plan.stdout).to_string();
    assert!(plan.contains("(not set in the sweep file"), "{plan}");
    assert!(run(&["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()])
        .status
        .success());
    let rows = csv_rows(&tmp.path().join("results"));
    assert_eq!(rows[0]["status"], "finished", "{rows:?}");
    assert!(rows[0]["eval_seconds"].parse::<f64>().unwrap() > 0.0);
    // The trial's max_seq_len is the longest example, so no prompt lost its start.
    let config =
        std::fs::read_to_string(tmp.path().join("results/trials/0001/config.json")).unwrap();
    let fitted = serde_json::from_str::<serde_json::Value>(&config).unwrap()["params"]
        ["max_seq_len"]
        .as_u64()
        .unwrap();
    assert!(plan.contains(&format!("max_seq_len {fitted} (")), "{plan}");
    assert_ne!(fitted, 256);

    // `data: {conflicts: error}` refuses the same file.
    let strict = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("data:\n", "data:\n  conflicts: error\n");
    std::fs::write(&spec, strict).unwrap();
    let check = run(&["check".as_ref(), spec.as_os_str()]);
    assert_eq!(check.status.code(), Some(2));
}
