//! `sweep gpu-check` (hidden; run by `scripts/gpu-check.sh`): the checks the CUDA path must pass
//! on a real GPU before anyone relies on it, as one table.
//!
//! 1. parity: our model's logits and gradients on the device against the CPU's on the tiny
//!    transformers fixture (f32 within 1e-4 relative; bf16 weights with f32 LoRA adapters within
//!    the tolerances below);
//! 2. a short sweep with `devices: cuda`, sft and lora, on the bundled data;
//! 3. tokens/s and peak device memory of the 135M shape, sft and lora, each in its own process
//!    (beside PyTorch+PEFT's when the script could run them);
//! 4. a trial forced into a real out-of-memory (the rest of the GPU held by this process), which
//!    must recover by halving its micro-batch;
//! 5. measured against estimated memory, from 3.
//!
//! Why inside the binary: the GPU host needs no Rust toolchain, only the built binary, and the
//! check exercises the very code a sweep runs. `--cpu-dry-run` runs every part on the CPU (the
//! out-of-memory through `memory_per_device` instead of a full GPU), which is what the test suite
//! does, so the logic is exercised even where no GPU exists; only numbers that need a GPU are
//! then not judged.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::protocol::journal::Event;
use crate::spec::shape::LORA_TARGETS;
use crate::text::encode::Seq;
use crate::trainer::batch::{make_batch, token_nll};
use crate::trainer::model::{load_hf_folder, CausalLm, LoraSettings, Trainable};

/// Relative tolerance of f32 on the device against f32 on the CPU (only summation order
/// differs).
pub const F32_TOLERANCE: f64 = 1e-4;
/// bf16 keeps 8 significant bits (unit round-off 2^-8 = 3.9e-3); every weight and activation of
/// the 2-layer fixture (random weights of std 0.2, so large logits) is rounded once or more. The
/// CPU's bf16 path measured 2.9e-2 (logits) and 4.4e-2 (gradients) on it: the tolerances are
/// about twice that, so a GPU that rounds as carefully passes and one that loses precision
/// somewhere (bf16 accumulation, an f32 adapter cast to bf16) does not.
pub const BF16_LOGITS_TOLERANCE: f64 = 6e-2;
pub const BF16_GRADIENT_TOLERANCE: f64 = 1e-1;

/// The arguments of `sweep gpu-check`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The device to check (a CUDA device), against the CPU.
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// Run every part on the CPU instead, with small shapes: checks the check itself.
    #[arg(long)]
    pub cpu_dry_run: bool,
    /// The sweep source tree (its tests/fixtures, data and models folders).
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
    /// Working folder for the sweeps and logs (default: a new folder in the temp dir).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// PyTorch+PEFT measurements of the same shapes (JSON written by scripts/gpu-check.sh).
    #[arg(long)]
    pub torch: Option<PathBuf>,
    /// Where the CUDA libraries were found (printed in the table).
    #[arg(long)]
    pub libs: Option<String>,
    /// Internal: measure one training configuration (sft or lora) and print one JSON line.
    #[arg(long, hide = true)]
    pub bench: Option<String>,
}

/// How a row came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// A measurement with nothing to judge it against.
    Info,
    /// Not run, with the reason in the row.
    NotRun,
}

impl Status {
    fn as_str(&self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Info => "info",
            Status::NotRun => "not run",
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub part: &'static str,
    pub check: String,
    pub result: String,
    pub status: Status,
}

fn row(
    part: &'static str,
    check: impl Into<String>,
    result: impl Into<String>,
    status: Status,
) -> Row {
    Row {
        part,
        check: check.into(),
        result: result.into(),
        status,
    }
}

/// Pass when `value` is within `tolerance`.
fn judged(value: f64, tolerance: f64) -> Status {
    if value.is_finite() && value <= tolerance {
        Status::Pass
    } else {
        Status::Fail
    }
}

/// The table as printed: fixed columns, one row per check.
pub fn render(rows: &[Row]) -> String {
    let w_check = rows.iter().map(|r| r.check.len()).max().unwrap_or(5).max(5);
    let w_part = rows.iter().map(|r| r.part.len()).max().unwrap_or(4).max(4);
    let mut out = format!(
        "{:<w_part$}  {:<w_check$}  {:<7}  result\n",
        "part", "check", "status"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<w_part$}  {:<w_check$}  {:<7}  {}\n",
            r.part,
            r.check,
            r.status.as_str(),
            r.result
        ));
    }
    out
}

/// Exit status of the whole check: failure when any row failed.
pub fn exit_status(rows: &[Row]) -> ExitCode {
    if rows.iter().any(|r| r.status == Status::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `sweep gpu-check`.
pub fn main(args: Args) -> Result<ExitCode> {
    if let Some(method) = &args.bench {
        return bench_child(&args, method).map(|()| ExitCode::SUCCESS);
    }
    let device_name = if args.cpu_dry_run {
        "cpu".to_string()
    } else {
        args.device.clone()
    };
    let device = crate::trainer::train::device_for(&device_name)?;
    let out = match &args.out {
        Some(o) => o.clone(),
        None => std::env::temp_dir().join(format!("sweep-gpu-check-{}", std::process::id())),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut rows = vec![row(
        "0 setup",
        "device, build, libraries",
        format!(
            "{device_name}{}; cuda feature {}; libraries: {}",
            if args.cpu_dry_run {
                " (CPU dry run: GPU numbers are not judged)"
            } else {
                ""
            },
            if crate::trainer::gpu::CUDA_BUILT {
                "on"
            } else {
                "off"
            },
            args.libs.as_deref().unwrap_or("not given")
        ),
        Status::Info,
    )];
    if args.cpu_dry_run {
        // What a sweep on cuda:0 would be told here: the device-open message of this build.
        let (what, status) = match crate::trainer::train::device_for("cuda:0") {
            Ok(_) => ("opened".to_string(), Status::Info),
            // The first line: candle appends a backtrace when RUST_BACKTRACE is set.
            Err(e) => (
                format!("{e:#}").lines().next().unwrap_or("").to_string(),
                Status::Info,
            ),
        };
        rows.push(row("0 setup", "opening cuda:0", what, status));
    }
    let part = |name: &'static str, rows: &mut Vec<Row>, result: Result<Vec<Row>>| match result {
        Ok(r) => rows.extend(r),
        Err(e) => rows.push(row(name, "runs to the end", format!("{e:#}"), Status::Fail)),
    };
    part("1 parity", &mut rows, parity(&args.root, &device));
    part("2 sweep", &mut rows, short_sweep(&args, &device_name, &out));
    let mut memory = Vec::new();
    match benches(&args, &device_name, &out) {
        Ok((speed_rows, measured)) => {
            rows.extend(speed_rows);
            memory = memory_rows(&measured, args.cpu_dry_run);
        }
        Err(e) => rows.push(row(
            "3 speed",
            "runs to the end",
            format!("{e:#}"),
            Status::Fail,
        )),
    }
    part("4 oom", &mut rows, forced_oom(&args, &device, &out));
    rows.extend(memory);
    print!("{}", render(&rows));
    let failed = rows.iter().filter(|r| r.status == Status::Fail).count();
    println!(
        "{} checks: {} passed, {} failed, {} not run; work folder {}",
        rows.len(),
        rows.iter().filter(|r| r.status == Status::Pass).count(),
        failed,
        rows.iter().filter(|r| r.status == Status::NotRun).count(),
        out.display()
    );
    Ok(exit_status(&rows))
}

/// Largest absolute difference relative to the largest magnitude of `reference`.
pub fn relative_difference(got: &[f32], reference: &[f32]) -> f64 {
    if got.len() != reference.len() {
        return f64::INFINITY;
    }
    let mut worst = 0.0f64;
    let mut largest = 0.0f64;
    for (g, r) in got.iter().zip(reference) {
        worst = worst.max((f64::from(*g) - f64::from(*r)).abs());
        largest = largest.max(f64::from(*r).abs());
    }
    if worst == 0.0 {
        0.0
    } else {
        worst / largest.max(f64::MIN_POSITIVE)
    }
}

fn flat(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
}

/// Logits and gradients (of the trainable tensors, all flattened into one list) of a model on
/// the fixture's ids, with the LoRA B matrices set to a fixed pattern so every adapter has a
/// gradient.
fn logits_and_gradients(model: &CausalLm, ids: &[Vec<u32>]) -> Result<(Vec<f32>, Vec<f32>)> {
    let device = model.device();
    for (name, var) in model.trainable() {
        if name.contains("lora_B") {
            let n = var.as_tensor().elem_count();
            let pattern: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
            let t = Tensor::from_vec(pattern, var.shape(), &Device::Cpu)?
                .to_dtype(var.dtype())?
                .to_device(device)?;
            var.set(&t)?;
        }
    }
    let input = Tensor::new(ids.to_vec(), device)?;
    let logits = flat(&model.forward(&input)?)?;
    let seqs: Vec<Seq> = ids
        .iter()
        .map(|s| Seq {
            ids: s.clone(),
            loss_from: 1,
        })
        .collect();
    let refs: Vec<&Seq> = seqs.iter().collect();
    let batch = make_batch(&refs, 0, device)?;
    let loss = token_nll(model, &batch)?.sum_all()?.to_dtype(DType::F32)?;
    let grads = model.gradients(&loss.backward()?)?;
    let mut all = Vec::new();
    for ((name, _), g) in model.trainable().iter().zip(&grads) {
        let g = g
            .as_ref()
            .with_context(|| format!("no gradient for {name}"))?;
        all.extend(flat(g)?);
    }
    Ok((logits, all))
}

/// Part 1: the fixture's logits and gradients on `device` against the CPU, in f32 (full
/// fine-tuning and LoRA) and with bf16 weights and f32 adapters.
fn parity(root: &Path, device: &Device) -> Result<Vec<Row>> {
    let dir = root.join("tests/fixtures/hf/tiny-llama");
    let expected_path = dir.join("expected_logits.json");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&expected_path)
            .with_context(|| format!("reading {}", expected_path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", expected_path.display()))?;
    let ids: Vec<Vec<u32>> = serde_json::from_value(expected["ids"].clone())
        .with_context(|| format!("{}: ids", expected_path.display()))?;
    let want: Vec<Vec<Vec<f32>>> = serde_json::from_value(expected["logits"].clone())
        .with_context(|| format!("{}: logits", expected_path.display()))?;
    let want: Vec<f32> = want.into_iter().flatten().flatten().collect();
    let lora = || {
        Trainable::Lora(LoraSettings {
            rank: 4,
            alpha: 8.0,
            targets: LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
        })
    };
    let build = |dev: &Device, trainable: Trainable, dtype: DType| -> Result<CausalLm> {
        let (config, weights) = load_hf_folder(&dir, dev)?;
        Ok(CausalLm::with_compute_dtype(
            config,
            &weights,
            trainable,
            3,
            dev,
            "tiny-llama",
            dtype,
        )?)
    };
    let mut rows = Vec::new();
    let (cpu_logits, cpu_grads) =
        logits_and_gradients(&build(&Device::Cpu, Trainable::All, DType::F32)?, &ids)?;
    let (dev_logits, dev_grads) =
        logits_and_gradients(&build(device, Trainable::All, DType::F32)?, &ids)?;
    let d = relative_difference(&cpu_logits, &want);
    rows.push(row(
        "1 parity",
        "f32 logits, CPU vs transformers",
        format!("{d:.1e} (tolerance {F32_TOLERANCE:.0e})"),
        judged(d, F32_TOLERANCE),
    ));
    let d = relative_difference(&dev_logits, &cpu_logits);
    rows.push(row(
        "1 parity",
        "f32 logits, device vs CPU",
        format!("{d:.1e} (tolerance {F32_TOLERANCE:.0e})"),
        judged(d, F32_TOLERANCE),
    ));
    let d = relative_difference(&dev_grads, &cpu_grads);
    rows.push(row(
        "1 parity",
        "f32 sft gradients, device vs CPU",
        format!(
            "{d:.1e} over {} values (tolerance {F32_TOLERANCE:.0e})",
            cpu_grads.len()
        ),
        judged(d, F32_TOLERANCE),
    ));
    let (cpu_lora_logits, cpu_lora) =
        logits_and_gradients(&build(&Device::Cpu, lora(), DType::F32)?, &ids)?;
    let (_, dev_lora) = logits_and_gradients(&build(device, lora(), DType::F32)?, &ids)?;
    let d = relative_difference(&dev_lora, &cpu_lora);
    rows.push(row(
        "1 parity",
        "f32 lora gradients, device vs CPU",
        format!(
            "{d:.1e} over {} values (tolerance {F32_TOLERANCE:.0e})",
            cpu_lora.len()
        ),
        judged(d, F32_TOLERANCE),
    ));
    let half = build(device, lora(), DType::BF16)?;
    let adapters_f32 = half
        .trainable()
        .iter()
        .all(|(_, v)| v.dtype() == DType::F32);
    rows.push(row(
        "1 parity",
        "bf16 weights keep f32 adapters",
        format!(
            "compute {:?}, adapters {}",
            half.dtype(),
            if adapters_f32 { "f32" } else { "not f32" }
        ),
        if half.dtype() == DType::BF16 && adapters_f32 {
            Status::Pass
        } else {
            Status::Fail
        },
    ));
    let (half_logits, half_grads) = logits_and_gradients(&half, &ids)?;
    let d = relative_difference(&half_logits, &cpu_lora_logits);
    rows.push(row(
        "1 parity",
        "bf16 lora logits, device vs f32 CPU",
        format!("{d:.1e} (tolerance {BF16_LOGITS_TOLERANCE:.0e})"),
        judged(d, BF16_LOGITS_TOLERANCE),
    ));
    let d = relative_difference(&half_grads, &cpu_lora);
    rows.push(row(
        "1 parity",
        "bf16 lora gradients (f32), device vs f32 CPU",
        format!("{d:.1e} (tolerance {BF16_GRADIENT_TOLERANCE:.0e})"),
        judged(d, BF16_GRADIENT_TOLERANCE),
    ));
    Ok(rows)
}

/// What a sweep run by the check left: trials finished, and its journal.
struct SweepRun {
    finished: usize,
    entries: Vec<crate::protocol::journal::Entry>,
}

/// Writes a sweep file into `dir` and runs it as a user would, with this binary's `sweep run`
/// (which checks it first) in a child process: the trainer never drives the orchestrator itself.
fn run_sweep(dir: &Path, body: &str, memory_check: bool) -> Result<SweepRun> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("sweep.yaml");
    std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
    let results = dir.join("results");
    if results.exists() {
        std::fs::remove_dir_all(&results)
            .with_context(|| format!("removing {}", results.display()))?;
    }
    let mut command =
        Command::new(std::env::current_exe().context("locating the sweep executable")?);
    command
        .arg("run")
        .arg(&path)
        .arg("--quiet")
        .arg("--out")
        .arg(&results);
    if !memory_check {
        command.arg("--no-memory-check");
    }
    let out = command.output().context("running `sweep run`")?;
    let entries = crate::protocol::journal::read(&results).with_context(|| {
        format!(
            "`sweep run` left no journal in {} ({}): {}",
            results.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    let finished = entries
        .iter()
        .filter(|e| matches!(e.event, Event::TrialFinished { .. }))
        .count();
    Ok(SweepRun { finished, entries })
}

fn data_lines(root: &Path, out: &Path, data: &str, devices: &str) -> String {
    let data = root.join("data").join(data);
    format!(
        "data: {{train: '{}', dev: '{}'}}\noutput: '{}'\nresources: {{devices: {devices}, parallel: 1}}\n",
        data.join("train.json").display(),
        data.join("dev.json").display(),
        out.display()
    )
}

/// Part 2: a short sweep on the device, sft and lora on the post-pretrained tiny base.
fn short_sweep(args: &Args, device_name: &str, out: &Path) -> Result<Vec<Row>> {
    let devices = if device_name == "cpu" { "cpu" } else { "cuda" };
    let body = format!(
        "name: gpu-check\nmodel: {{path: '{}'}}\nmethod: grid\nseed: 7\nmetric: {{name: accuracy, goal: maximize}}\nparameters:\n  method: {{values: [sft, lora]}}\n  learning_rate: {{value: 1.0e-2}}\n  epochs: {{value: 1}}\n  batch_size: {{value: 8}}\n{}",
        args.root.join("models/tiny-base").display(),
        data_lines(&args.root, &out.join("sweep"), "clinc150-mini", devices)
    );
    let SweepRun { finished, entries } = run_sweep(&out.join("sweep-spec"), &body, true)?;
    let mut rows = Vec::new();
    let mut results = Vec::new();
    for e in &entries {
        match &e.event {
            Event::TrialFinished { trial, result } => results.push(format!(
                "trial {trial}: accuracy {} dev_loss {:.4}, {:.0} tokens/s",
                result
                    .accuracy
                    .map(|a| format!("{a:.3}"))
                    .unwrap_or_else(|| "-".into()),
                result.dev_loss,
                result.tokens_per_sec
            )),
            Event::TrialFailed { trial, reason } => {
                results.push(format!("trial {trial} failed: {reason}"))
            }
            Event::TrialStarted { trial, devices, .. } => {
                results.push(format!("trial {trial} on {}", devices.join(",")))
            }
            _ => {}
        }
    }
    rows.push(row(
        "2 sweep",
        format!("devices: {devices}, sft and lora, 1 epoch"),
        format!("{finished} of 2 finished; {}", results.join("; ")),
        if finished == 2 {
            Status::Pass
        } else {
            Status::Fail
        },
    ));
    Ok(rows)
}

/// Free memory of the first visible GPU in MiB, from nvidia-smi; None when nvidia-smi is absent.
fn free_gpu_memory_mb() -> Option<Result<f64>> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.free",
            "--format=csv,noheader,nounits",
            "-i",
            "0",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .next()
            .and_then(|l| l.trim().parse::<f64>().ok())
            .with_context(|| format!("nvidia-smi: cannot read free memory from `{}`", text.trim())),
    )
}

/// What one benchmark process measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BenchResult {
    pub method: String,
    pub shape: String,
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    pub tokens_per_sec: f64,
    pub peak_rss_mb: f64,
    /// Peak device memory of the process, MiB (nvidia-smi), when on a GPU.
    #[serde(default)]
    pub peak_device_mb: Option<f64>,
    /// How the device peak was read.
    #[serde(default)]
    pub peak_source: Option<String>,
    pub estimate_mb: f64,
    pub loss: f64,
}

/// The benchmark shape: the 135M llama shape on a GPU; the `test` preset in a dry run (the 135M
/// shape takes a quarter of a minute per step on a CPU).
fn bench_shape(dry_run: bool) -> (&'static str, usize, usize, usize, usize) {
    if dry_run {
        ("test", 2, 16, 2, 500)
    } else {
        ("llama-135m", 8, 256, 10, 49152)
    }
}

/// `--bench METHOD`: runs in its own process, so its peak memory is this configuration's.
fn bench_child(args: &Args, method: &str) -> Result<()> {
    let (shape, batch, seq, steps, vocab) = bench_shape(args.cpu_dry_run);
    let device_name = if args.cpu_dry_run {
        "cpu"
    } else {
        args.device.as_str()
    };
    let device = crate::trainer::train::device_for(device_name)?;
    if method != "sft" && method != "lora" {
        bail!("--bench takes sft or lora, got `{method}`");
    }
    let measured = crate::trainer::bench::measure(
        &crate::trainer::bench::BenchConfig {
            preset: shape.to_string(),
            method: method.to_string(),
            batch,
            seq,
            steps,
            vocab,
            kernels: Default::default(),
        },
        &device,
    )?;
    let result = BenchResult {
        method: method.to_string(),
        shape: shape.to_string(),
        batch,
        seq,
        steps,
        tokens_per_sec: measured.tokens_per_sec,
        peak_rss_mb: crate::protocol::trial::peak_rss_mb(),
        peak_device_mb: None,
        peak_source: None,
        estimate_mb: measured.estimate_mb,
        loss: measured.loss,
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// Used memory of `pid` on the GPUs, MiB, from nvidia-smi's list of compute processes; None when
/// nvidia-smi lists no such process (in a container it may not see our process ids).
pub fn parse_process_memory(text: &str, pid: u32) -> Option<f64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(',').map(str::trim);
            let p: u32 = fields.next()?.parse().ok()?;
            let mb: f64 = fields.next()?.parse().ok()?;
            (p == pid).then_some(mb)
        })
        .reduce(|a, b| a + b)
}

fn nvidia_smi(args: &[&str]) -> Option<String> {
    let out = Command::new("nvidia-smi").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Memory used on the first visible GPU, MiB (the whole device, every process).
fn device_used_mb() -> Option<f64> {
    let index = std::env::var("CUDA_VISIBLE_DEVICES")
        .ok()
        .and_then(|v| v.split(',').next().map(str::to_string))
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "0".into());
    let text = nvidia_smi(&[
        "--query-gpu=memory.used",
        "--format=csv,noheader,nounits",
        "-i",
        index.trim(),
    ])?;
    text.lines().next()?.trim().parse().ok()
}

/// Runs one `--bench` child, sampling its GPU memory every 100 ms when on a GPU.
fn run_bench(args: &Args, method: &str, out: &Path) -> Result<BenchResult> {
    let exe = std::env::current_exe().context("locating the sweep executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["gpu-check", "--bench", method, "--device", &args.device]);
    if args.cpu_dry_run {
        cmd.arg("--cpu-dry-run");
    }
    let baseline = if args.cpu_dry_run {
        None
    } else {
        device_used_mb()
    };
    let log_path = out.join(format!("bench-{method}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting the benchmark process")?;
    let pid = child.id();
    let mut per_process: Option<f64> = None;
    let mut device_peak: Option<f64> = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if !args.cpu_dry_run {
            if let Some(text) = nvidia_smi(&[
                "--query-compute-apps=pid,used_memory",
                "--format=csv,noheader,nounits",
            ]) {
                if let Some(mb) = parse_process_memory(&text, pid) {
                    per_process = Some(per_process.map_or(mb, |p: f64| p.max(mb)));
                }
            }
            if let Some(used) = device_used_mb() {
                device_peak = Some(device_peak.map_or(used, |p: f64| p.max(used)));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output()?;
    if !status.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!("benchmark {method} failed ({status}): {}", last_line(&log));
    }
    let line = String::from_utf8_lossy(&output.stdout);
    let mut result: BenchResult = serde_json::from_str(line.lines().last().unwrap_or(""))
        .with_context(|| format!("benchmark {method} printed `{}`", line.trim()))?;
    match (per_process, device_peak, baseline) {
        (Some(p), _, _) => {
            result.peak_device_mb = Some(p);
            result.peak_source = Some("nvidia-smi, this process".into());
        }
        (None, Some(peak), Some(base)) => {
            result.peak_device_mb = Some(peak - base);
            result.peak_source = Some("nvidia-smi, whole GPU minus what was used before".into());
        }
        _ => {}
    }
    Ok(result)
}

/// PyTorch+PEFT's numbers for the same shapes, as scripts/gpu-check.sh writes them:
/// `{"sft": {"tokens_per_sec": .., "peak_mb": ..}, "lora": {..}, "versions": ".."}`, or
/// `{"skipped": "why"}`.
fn torch_numbers(path: Option<&Path>) -> Result<Option<serde_json::Value>> {
    match path {
        None => Ok(None),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Ok(Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not JSON", p.display()))?,
            ))
        }
    }
}

/// Part 3: tokens/s and peak memory, sft and lora, beside PyTorch's when given.
fn benches(args: &Args, device_name: &str, out: &Path) -> Result<(Vec<Row>, Vec<BenchResult>)> {
    let torch = torch_numbers(args.torch.as_deref())?;
    let mut rows = Vec::new();
    let mut measured = Vec::new();
    for method in ["sft", "lora"] {
        let r = run_bench(args, method, out)?;
        let peak = r
            .peak_device_mb
            .map(|m| {
                format!(
                    "{m:.0} MiB on the device ({})",
                    r.peak_source.as_deref().unwrap_or("?")
                )
            })
            .unwrap_or_else(|| format!("{:.0} MiB resident (CPU)", r.peak_rss_mb));
        rows.push(row(
            "3 speed",
            format!(
                "{} {method} {}x{}, f32, ours on {device_name}",
                r.shape, r.batch, r.seq
            ),
            format!("{:.0} tokens/s, peak {peak}", r.tokens_per_sec),
            if r.tokens_per_sec.is_finite() && r.tokens_per_sec > 0.0 && r.loss.is_finite() {
                Status::Info
            } else {
                Status::Fail
            },
        ));
        match torch.as_ref() {
            Some(t) if t.get(method).is_some() => {
                let m = &t[method];
                let tps = m["tokens_per_sec"].as_f64().unwrap_or(f64::NAN);
                rows.push(row(
                    "3 speed",
                    format!(
                        "{} {method}, PyTorch{} on the same GPU",
                        r.shape,
                        if method == "lora" { "+PEFT" } else { "" }
                    ),
                    format!(
                        "{tps:.0} tokens/s (ours {:.2}x), peak {:.0} MiB ({})",
                        r.tokens_per_sec / tps,
                        m["peak_mb"].as_f64().unwrap_or(f64::NAN),
                        t["versions"].as_str().unwrap_or("")
                    ),
                    Status::Info,
                ));
            }
            Some(t) => rows.push(row(
                "3 speed",
                format!("{} {method}, PyTorch", r.shape),
                t["skipped"]
                    .as_str()
                    .unwrap_or("no numbers for this method")
                    .to_string(),
                Status::NotRun,
            )),
            None => rows.push(row(
                "3 speed",
                format!("{} {method}, PyTorch", r.shape),
                "no PyTorch numbers given (--torch)",
                Status::NotRun,
            )),
        }
        measured.push(r);
    }
    Ok((rows, measured))
}

/// Whether an estimate is good enough for planning: never more than 15 % below the measured peak
/// (too low lets a trial start that will not fit), and at most twice it (too high refuses or
/// shrinks trials that would have fitted).
pub fn estimate_status(estimate_mb: f64, measured_mb: f64) -> Status {
    if !(estimate_mb.is_finite() && measured_mb.is_finite() && measured_mb > 0.0) {
        Status::Fail
    } else if estimate_mb >= 0.85 * measured_mb && estimate_mb <= 2.0 * measured_mb {
        Status::Pass
    } else {
        Status::Fail
    }
}

/// Part 5: each benchmark's measured peak against the plan-time estimate of the same step.
fn memory_rows(measured: &[BenchResult], dry_run: bool) -> Vec<Row> {
    measured
        .iter()
        .map(|r| {
            let (peak, what) = match r.peak_device_mb {
                Some(m) => (m, "device"),
                None => (r.peak_rss_mb, "resident"),
            };
            let status = if dry_run {
                Status::Info
            } else if r.peak_device_mb.is_none() {
                Status::NotRun
            } else {
                estimate_status(r.estimate_mb, peak)
            };
            row(
                "5 memory",
                format!("{} {} {}x{}: estimate vs measured", r.shape, r.method, r.batch, r.seq),
                format!(
                    "estimate {:.0} MiB, measured {peak:.0} MiB {what} (ratio {:.2}; pass: 0.85 to 2){}",
                    r.estimate_mb,
                    r.estimate_mb / peak,
                    if status == Status::NotRun { "; nvidia-smi gave no reading" } else { "" }
                ),
                status,
            )
        })
        .collect()
}

/// Part 4: a trial that cannot fit its first micro-batch. On a GPU this process takes all the
/// device's free memory but what the trial needs at a quarter of its batch (by the estimate), so
/// the trial hits CUDA's own out-of-memory; in a dry run `memory_per_device` limits the trial
/// process instead. Either way it must finish after halving its micro-batch.
fn forced_oom(args: &Args, device: &Device, out: &Path) -> Result<Vec<Row>> {
    let dir = out.join("oom");
    // The dry run starts at 256: 22 MiB per trial fits post-pretraining the `test` preset at
    // micro-batch 32, not 64 (as tests/resources.rs), and a CUDA build's trial may have up to
    // about 20 MiB more, the part of the run loop's allowance for the CUDA libraries
    // (`CUDA_LIBRARIES_DATA_MB`, 224 MiB) they leave unused (they map 200 to 220); 256 fails
    // either way.
    let batch = if args.cpu_dry_run { 256 } else { 64usize };
    let (devices, model, extra) = if args.cpu_dry_run {
        let limit = 22;
        (
            "cpu",
            "{preset: test}".to_string(),
            format!("  memory_per_device: {limit}\n"),
        )
    } else {
        ("cuda", "{preset: llama-135m}".to_string(), String::new())
    };
    let data = args.root.join("data/clinc150-mini");
    let body = |micro: usize| {
        format!(
            "name: gpu-check-oom\nmodel: {model}\nmethod: grid\nseed: 7\nmetric: {{name: dev_loss}}\non_oom: halve_batch\nparameters:\n  method: {{value: post_pretrain}}\n  epochs: {{value: 1}}\n  batch_size: {{value: {batch}}}\n  micro_batch: {{value: {micro}}}\n  learning_rate: {{value: 1.0e-4}}\ndata: {{train: '{}', dev: '{}'}}\noutput: '{}'\nresources:\n  devices: {devices}\n  parallel: 1\n{extra}",
            data.join("train.json").display(),
            data.join("dev.json").display(),
            dir.join("results").display()
        )
    };
    // Held for the whole sweep on a GPU: the memory the trial must not get.
    let mut _ballast: Option<Tensor> = None;
    let mut held = String::new();
    if device.is_cuda() {
        let spec_text = body(batch / 4);
        let spec_path = dir.join("estimate.yaml");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(&spec_path, &spec_text)?;
        // The plan's own estimate, from `sweep plan --json` as a user would see it.
        let planned =
            Command::new(std::env::current_exe().context("locating the sweep executable")?)
                .arg("plan")
                .arg(&spec_path)
                .arg("--json")
                .arg("--no-memory-check")
                .output()
                .context("running `sweep plan`")?;
        let plan: serde_json::Value = serde_json::from_slice(&planned.stdout)
            .with_context(|| format!("`sweep plan --json` printed no plan ({})", planned.status))?;
        let quarter = plan["trials"][0]["estimate_mb"]
            .as_f64()
            .context("no estimate for the out-of-memory trial")?;
        let free = match free_gpu_memory_mb() {
            Some(Ok(mb)) => mb,
            Some(Err(e)) => bail!("{e}"),
            None => {
                return Ok(vec![row(
                    "4 oom",
                    "forced CUDA out-of-memory",
                    "nvidia-smi not found: cannot size the memory to hold",
                    Status::NotRun,
                )])
            }
        };
        let hold = free - quarter;
        if hold < 1024.0 {
            return Ok(vec![row(
                "4 oom",
                "forced CUDA out-of-memory",
                format!(
                    "only {free:.0} MiB free, the trial needs about {quarter:.0} at micro-batch {}",
                    batch / 4
                ),
                Status::NotRun,
            )]);
        }
        let values = (hold * 1024.0 * 1024.0 / 4.0) as usize;
        _ballast = Some(Tensor::zeros(values, DType::F32, device).context("holding GPU memory")?);
        device.synchronize()?;
        held = format!(
            "; held {hold:.0} of {free:.0} MiB free, leaving the estimate at micro-batch {}",
            batch / 4
        );
    }
    let SweepRun { finished, entries } = run_sweep(&dir, &body(batch), false)?;
    drop(_ballast);
    let mut reasons = Vec::new();
    let mut micro = None;
    for e in &entries {
        match &e.event {
            Event::TrialOutOfMemory {
                micro_batch,
                retry_micro_batch,
                reason,
                ..
            } => reasons.push(format!(
                "at {micro_batch} -> {}: {}",
                retry_micro_batch
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "none".into()),
                last_line(reason)
            )),
            Event::TrialFinished { result, .. } => micro = Some(result.micro_batch),
            _ => {}
        }
    }
    let recovered =
        finished == 1 && !reasons.is_empty() && micro.is_some_and(|m| (m as usize) < batch);
    Ok(vec![row(
        "4 oom",
        format!("forced out-of-memory ({devices}), micro-batch {batch}, halve_batch"),
        format!(
            "{} out-of-memory retries, finished at micro-batch {}{held}; {}",
            reasons.len(),
            micro.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            if reasons.is_empty() {
                "no out-of-memory seen".to_string()
            } else {
                reasons.join(" | ")
            }
        ),
        if recovered {
            Status::Pass
        } else {
            Status::Fail
        },
    )])
}

/// The part of a failure reason that names the error: the last line (or ` | `-joined part, as
/// the executor joins log lines) that the out-of-memory matcher recognises, else the last one
/// starting with `error`, else the last non-empty one; shortened. Not a backtrace frame.
fn last_line(reason: &str) -> String {
    let parts: Vec<&str> = reason
        .lines()
        .flat_map(|l| l.split(" | "))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = parts
        .iter()
        .rev()
        .find(|l| crate::protocol::trial::is_out_of_memory(l))
        .or_else(|| {
            parts
                .iter()
                .rev()
                .find(|l| l.to_ascii_lowercase().starts_with("error"))
        })
        .or_else(|| parts.last())
        .copied()
        .unwrap_or("");
    line.chars().take(160).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_difference_is_against_the_largest_reference_value() {
        assert_eq!(relative_difference(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        let d = relative_difference(&[1.0, 4.1], &[1.0, 4.0]);
        assert!((d - 0.025).abs() < 1e-6, "{d}");
        assert!(relative_difference(&[1.0], &[1.0, 2.0]).is_infinite());
        assert_eq!(judged(f64::NAN, 1.0), Status::Fail);
    }

    #[test]
    fn nvidia_smi_process_memory_is_read_for_our_pid_only() {
        let text = "1234, 5120\n999, 100\n1234, 20\nnot a line\n";
        assert_eq!(parse_process_memory(text, 1234), Some(5140.0));
        assert_eq!(parse_process_memory(text, 42), None);
    }

    #[test]
    fn estimates_pass_between_a_little_under_and_twice_the_measurement() {
        assert_eq!(estimate_status(1000.0, 1000.0), Status::Pass);
        assert_eq!(estimate_status(860.0, 1000.0), Status::Pass);
        assert_eq!(estimate_status(800.0, 1000.0), Status::Fail);
        assert_eq!(estimate_status(2100.0, 1000.0), Status::Fail);
        assert_eq!(estimate_status(1000.0, 0.0), Status::Fail);
    }

    #[test]
    fn any_failed_row_fails_the_check_and_not_run_does_not() {
        let ok = vec![
            row("1", "a", "x", Status::Pass),
            row("3", "b", "y", Status::NotRun),
        ];
        assert_eq!(exit_status(&ok), ExitCode::SUCCESS);
        let mut bad = ok.clone();
        bad.push(row("4", "c", "z", Status::Fail));
        assert_eq!(exit_status(&bad), ExitCode::from(1));
        let table = render(&bad);
        assert!(
            table.lines().count() == 4 && table.contains("FAIL"),
            "{table}"
        );
    }

    #[test]
    fn the_reason_shown_is_the_error_line_not_the_backtrace() {
        let reason = "exit status 2\nerror: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")\n   0: candle_core::error::Error::bt\n";
        assert_eq!(
            last_line(reason),
            "error: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"
        );
        // As the executor reports a killed CPU trial: log lines joined by ` | `.
        let joined = "killed by signal 6: stack backtrace: | memory allocation of 393216 bytes failed | skipping backtrace printing";
        assert_eq!(
            last_line(joined),
            "memory allocation of 393216 bytes failed"
        );
    }
}
