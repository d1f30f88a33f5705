//! `scripts/gpu-check.sh` on the CPU (`--cpu-dry-run`): every part of the GPU check that can run
//! without a GPU runs here, through the script, from a compressed binary, so the check itself is
//! known to work before it meets a real GPU. What it cannot show here: CUDA numbers.

use std::process::Command;

use crate::common::repo;

#[test]
fn the_gpu_check_runs_every_part_on_the_cpu_from_a_compressed_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let packed = tmp.path().join("sweep.gz");
    let gz = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -1 -c '{}' > '{}'",
            env!("CARGO_BIN_EXE_sweep"),
            packed.display()
        ))
        .status()
        .unwrap();
    assert!(gz.success());
    let out = Command::new("bash")
        .arg(repo().join("scripts/gpu-check.sh"))
        .arg(&packed)
        .arg("--cpu-dry-run")
        .env("SWEEP_GPU_CHECK_DIR", tmp.path().join("work"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for part in ["1 parity", "2 sweep", "3 speed", "4 oom", "5 memory"] {
        assert!(stdout.contains(part), "no {part} row:\n{stdout}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // The dry run's own judgements: CPU against CPU agree exactly, the sweep finishes both
    // trials, and the forced out-of-memory recovers by halving.
    assert!(stdout.contains("f32 logits, device vs CPU"), "{stdout}");
    assert!(stdout.contains("2 of 2 finished"), "{stdout}");
    assert!(
        stdout.contains("out-of-memory retries, finished at micro-batch"),
        "{stdout}"
    );
    // A build without CUDA says so when asked for cuda:0, and tells how to get one.
    if !cfg!(feature = "cuda") {
        assert!(stdout.contains("built without CUDA support"), "{stdout}");
    }
}
