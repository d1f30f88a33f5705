//! Resources: a real out-of-memory under a per-trial memory limit, recovered by halving the
//! micro-batch; GPUs found through nvidia-smi (a fake one on PATH), requests that can never be
//! met refused at once; memory predicted at plan time.

use std::path::{Path, PathBuf};

use crate::common::{csv_rows, repo, run, sweep};

fn spec_file(dir: &Path, body: &str) -> PathBuf {
    let data = repo().join("data/clinc150-mini");
    let path = dir.join("sweep.yaml");
    std::fs::write(
        &path,
        format!(
            "name: r\ndata: {{train: {}, dev: {}}}\nmodel: {{preset: test}}\noutput: {}\n{body}",
            data.join("train.json").display(),
            data.join("dev.json").display(),
            dir.join("results").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_real_out_of_memory_is_recovered_by_halving_the_micro_batch() {
    let tmp = tempfile::tempdir().unwrap();
    // 22 MiB of data per trial (RLIMIT_DATA): a micro-batch of 64 post-pretraining sequences
    // does not fit, 32 does (measured with the fused kernels: 64 fails under 26 MiB and runs
    // under 30, 32 fails under 18; about 40 and 30 MiB resident unconstrained).
    let spec = spec_file(
        tmp.path(),
        "parameters:\n  method: {value: post_pretrain}\n  batch_size: {value: 64}\n  epochs: {value: 1}\nresources: {devices: cpu, slots: 1, parallel: 1, memory_per_device: 22}\n",
    );
    // Skip the plan-time prediction, so the trial really starts at micro-batch 64.
    let out = run(&[
        "run".as_ref(),
        spec.as_os_str(),
        "--quiet".as_ref(),
        "--no-memory-check".as_ref(),
    ]);
    assert!(out.status.success());
    let results = tmp.path().join("results");
    let journal = std::fs::read_to_string(results.join("journal.jsonl")).unwrap();
    let ooms = journal.matches("\"event\":\"trial_out_of_memory\"").count();
    assert!(ooms >= 1, "the trial never ran out of memory:\n{journal}");
    let log = std::fs::read_to_string(results.join("trials/0001/train.log")).unwrap();
    assert!(log.contains("memory allocation of"), "{log}");
    let row = &csv_rows(&results)[0];
    assert_eq!(row["status"], "finished");
    assert_eq!(row["retries"], ooms.to_string());
    let micro: u32 = row["micro_batch"].parse().unwrap();
    let accum: u32 = row["grad_accum"].parse().unwrap();
    assert_eq!(micro, 64 >> ooms);
    assert_eq!(micro * accum, 64, "the effective batch stays 64");
}

#[test]
fn a_cpu_trial_that_runs_out_of_memory_ends_out_of_memory_in_its_result() {
    let tmp = tempfile::tempdir().unwrap();
    // As above: micro-batch 64 does not fit in 22 MiB; `skip` keeps the first attempt's end.
    let spec = spec_file(
        tmp.path(),
        "parameters:\n  method: {value: post_pretrain}\n  batch_size: {value: 64}\n  epochs: {value: 1}\nresources: {devices: cpu, slots: 1, parallel: 1, memory_per_device: 22}\non_oom: skip\n",
    );
    run(&[
        "run".as_ref(),
        spec.as_os_str(),
        "--quiet".as_ref(),
        "--no-memory-check".as_ref(),
    ]);
    let trial = tmp.path().join("results/trials/0001");
    let log = std::fs::read_to_string(trial.join("train.log")).unwrap_or_default();
    // The allocation failure aborts the process; the trainer's allocator wrote its end first.
    match sweep::protocol::trial::TrialEnd::read(&trial) {
        Ok(sweep::protocol::trial::TrialEnd::OutOfMemory {
            micro_batch,
            message,
        }) => {
            assert_eq!(micro_batch, 64);
            assert!(message.starts_with("memory allocation of"), "{message}");
        }
        other => panic!("{other:?}\n{log}"),
    }
    assert!(log.contains("memory allocation of"), "{log}");
}

#[test]
fn plan_shrinks_the_micro_batch_of_a_predicted_misfit_and_refuses_what_never_fits() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec_file(
        tmp.path(),
        "parameters:\n  method: {value: post_pretrain}\n  batch_size: {values: [512, 4096]}\nresources: {devices: cpu, slots: 1, memory_per_device: 60}\n",
    );
    let out = run(&["plan".as_ref(), spec.as_os_str(), "--json".as_ref()]);
    assert!(out.status.success());
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let trials = plan["trials"].as_array().unwrap();
    for t in trials {
        assert!(t["refusal"].is_null(), "{t}");
        assert!(t["estimate_mb"].as_f64().unwrap() <= 60.0, "{t}");
        let micro = t["params"]["micro_batch"].as_u64().unwrap();
        assert!(micro < t["params"]["batch_size"].as_u64().unwrap());
        assert!(t["note"].as_str().unwrap().contains("to fit 60 MiB"));
    }
    let tight = spec_file(
        tmp.path(),
        "parameters:\n  method: {value: sft}\nresources: {devices: cpu, slots: 1, memory_per_device: 8}\n",
    );
    let out = run(&["plan".as_ref(), tight.as_os_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("refused: needs about") && text.contains("even at micro-batch 1"),
        "{text}"
    );
}

/// A stand-in for nvidia-smi that lists four 16 GiB GPUs.
fn fake_nvidia_smi(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("nvidia-smi");
    std::fs::write(
        &script,
        "#!/bin/sh\nfor i in 0 1 2 3; do echo \"$i, Fake GPU $i, 16384, 16000\"; done\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

#[test]
fn gpus_come_from_nvidia_smi_and_a_request_for_too_many_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_nvidia_smi(tmp.path());
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let spec = spec_file(
        tmp.path(),
        "parameters:\n  gpus: {values: [1, 4, 8]}\nresources: {devices: auto, parallel: 4}\n",
    );
    let plan = |visible: Option<&str>| -> serde_json::Value {
        let mut cmd = sweep();
        cmd.args(["plan".as_ref(), spec.as_os_str(), "--json".as_ref()])
            .env("PATH", &path);
        match visible {
            Some(v) => cmd.env("CUDA_VISIBLE_DEVICES", v),
            None => cmd.env_remove("CUDA_VISIBLE_DEVICES"),
        };
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let all = plan(None);
    let slots = all["pool"]["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 4);
    assert_eq!(slots[3]["name"], "cuda:3");
    assert_eq!(slots[3]["memory_mb"], 16000.0);
    let trials = all["trials"].as_array().unwrap();
    assert!(trials[0]["refusal"].is_null() && trials[1]["refusal"].is_null());
    let r = trials[2]["refusal"].as_str().unwrap();
    assert!(r.contains("asks for 8 devices but the pool has 4"), "{r}");

    let visible = plan(Some("1,3"));
    let names: Vec<&str> = visible["pool"]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["cuda:1", "cuda:3"]);

    // This build has no CUDA: running on those GPUs is refused at once, not left waiting.
    if !cfg!(feature = "cuda") {
        let out = sweep()
            .args(["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()])
            .env("PATH", &path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no CUDA support"));
    }
}
