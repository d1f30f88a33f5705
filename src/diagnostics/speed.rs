//! Part 3: tokens/s and peak memory of the 135M shape (the `test` preset in a dry run), sft and
//! lora, each measured in its own process (`sweep gpu-check --bench METHOD`) so that its peak
//! is its own, beside PyTorch+PEFT's numbers when the script could measure them.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::diagnostics::child::sweep_exe;
use crate::diagnostics::table::{row, Row, Status};
use crate::diagnostics::Args;
use crate::plan::devices::{process_memory_mb, query_gpus};
use crate::trainer::bench::BenchConfig;

const PART: &str = "3 speed";

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

/// The benchmark's shape, batch, sequence length, steps and vocabulary: the 135M llama shape on
/// a GPU; the `test` preset in a dry run (the 135M shape takes a quarter of a minute per step on
/// a CPU).
fn bench_shape(dry_run: bool) -> (&'static str, usize, usize, usize, usize) {
    if dry_run {
        ("test", 2, 16, 2, 500)
    } else {
        ("llama-135m", 8, 256, 10, 49152)
    }
}

/// `--bench METHOD`: runs in its own process, so its peak memory is this configuration's; prints
/// one JSON line (a `BenchResult`).
pub fn bench_child(args: &Args, method: &str) -> Result<()> {
    let (shape, batch, seq, steps, vocab) = bench_shape(args.cpu_dry_run);
    if method != "sft" && method != "lora" {
        bail!("--bench takes sft or lora, got `{method}`");
    }
    let config = BenchConfig {
        preset: shape.to_string(),
        method: method.to_string(),
        batch,
        seq,
        steps,
        vocab,
        kernels: Default::default(),
    };
    let measured = crate::trainer::probe::bench(&config, &args.device_name())?;
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

/// Memory used on the first visible GPU, MiB (the whole device, every process): its total less
/// its free memory, from `plan::devices`' query.
fn device_used_mb() -> Option<f64> {
    let gpus = query_gpus().ok()?;
    gpus.first().map(|g| g.total_mb - g.free_mb)
}

/// The highest memory a child used while it ran, sampled every 100 ms: its own (nvidia-smi's
/// list of compute processes) and the whole first GPU's.
#[derive(Debug, Default)]
struct Peaks {
    process: Option<f64>,
    device: Option<f64>,
}

fn max(peak: Option<f64>, value: Option<f64>) -> Option<f64> {
    match (peak, value) {
        (Some(p), Some(v)) => Some(p.max(v)),
        (p, v) => p.or(v),
    }
}

/// Waits for `child`, sampling its GPU memory when `sample`.
fn wait_sampling(child: &mut Child, sample: bool) -> Result<(ExitStatus, Peaks)> {
    let pid = child.id();
    let mut peaks = Peaks::default();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, peaks));
        }
        if sample {
            peaks.process = max(peaks.process, process_memory_mb(pid));
            peaks.device = max(peaks.device, device_used_mb());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs one `--bench` child, its log in `out`, sampling its GPU memory when on a GPU.
fn run_bench(args: &Args, method: &str, out: &Path) -> Result<BenchResult> {
    let mut cmd = Command::new(sweep_exe()?);
    cmd.args(["gpu-check", "--bench", method, "--device", &args.device]);
    if args.cpu_dry_run {
        cmd.arg("--cpu-dry-run");
    }
    let on_gpu = !args.cpu_dry_run;
    let baseline = if on_gpu { device_used_mb() } else { None };
    let log_path = out.join(format!("bench-{method}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting the benchmark process")?;
    let (status, peaks) = wait_sampling(&mut child, on_gpu)?;
    let output = child.wait_with_output()?;
    if !status.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!(
            "benchmark {method} failed ({status}): {}",
            crate::diagnostics::oom::shown_reason(&log)
        );
    }
    let line = String::from_utf8_lossy(&output.stdout);
    let mut result: BenchResult = serde_json::from_str(line.lines().last().unwrap_or(""))
        .with_context(|| format!("benchmark {method} printed `{}`", line.trim()))?;
    match (peaks.process, peaks.device, baseline) {
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

/// Our row for one benchmark.
fn ours(r: &BenchResult, device_name: &str) -> Row {
    let peak = r
        .peak_device_mb
        .map(|m| {
            format!(
                "{m:.0} MiB on the device ({})",
                r.peak_source.as_deref().unwrap_or("?")
            )
        })
        .unwrap_or_else(|| format!("{:.0} MiB resident (CPU)", r.peak_rss_mb));
    row(
        PART,
        format!(
            "{} {} {}x{}, f32, ours on {device_name}",
            r.shape, r.method, r.batch, r.seq
        ),
        format!("{:.0} tokens/s, peak {peak}", r.tokens_per_sec),
        if r.tokens_per_sec.is_finite() && r.tokens_per_sec > 0.0 && r.loss.is_finite() {
            Status::Info
        } else {
            Status::Fail
        },
    )
}

/// PyTorch's row for the same benchmark, or why there is none.
fn theirs(r: &BenchResult, torch: Option<&serde_json::Value>) -> Row {
    let method = r.method.as_str();
    match torch {
        Some(t) if t.get(method).is_some() => {
            let m = &t[method];
            let tps = m["tokens_per_sec"].as_f64().unwrap_or(f64::NAN);
            row(
                PART,
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
            )
        }
        Some(t) => row(
            PART,
            format!("{} {method}, PyTorch", r.shape),
            t["skipped"]
                .as_str()
                .unwrap_or("no numbers for this method")
                .to_string(),
            Status::NotRun,
        ),
        None => row(
            PART,
            format!("{} {method}, PyTorch", r.shape),
            "no PyTorch numbers given (--torch)",
            Status::NotRun,
        ),
    }
}

/// Part 3: the rows, and what each benchmark measured (for part 5).
pub fn run(args: &Args, out: &Path) -> Result<(Vec<Row>, Vec<BenchResult>)> {
    let torch = torch_numbers(args.torch.as_deref())?;
    let mut rows = Vec::new();
    let mut measured = Vec::new();
    for method in ["sft", "lora"] {
        let r = run_bench(args, method, out)?;
        rows.push(ours(&r, &args.device_name()));
        rows.push(theirs(&r, torch.as_ref()));
        measured.push(r);
    }
    Ok((rows, measured))
}
