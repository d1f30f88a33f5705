//! Diagnostics: `sweep gpu-check` (hidden; run by `scripts/gpu-check.sh`), the checks the CUDA
//! path must pass on a real GPU before anyone relies on it, as one table.
//!
//! 1. `parity`: our model's logits and gradients on the device against the CPU's on the tiny
//!    transformers fixture (f32 within 1e-4 relative; bf16 weights with f32 LoRA adapters within
//!    looser tolerances);
//! 2. `short_sweep`: a short sweep with `devices: cuda`, sft and lora, on the bundled data;
//! 3. `speed`: tokens/s and peak device memory of the 135M shape, sft and lora, each in its own
//!    process (beside PyTorch+PEFT's when the script could run them);
//! 4. `oom`: a trial forced into a real out-of-memory (the rest of the GPU held by this process),
//!    which must recover by halving its micro-batch;
//! 5. `memory`: measured against estimated memory, from 3.
//!
//! Why inside the binary: the GPU host needs no Rust toolchain, only the built binary, and the
//! check exercises the very code a sweep runs. `--cpu-dry-run` runs every part on the CPU (the
//! out-of-memory through `memory_per_device` instead of a full GPU), which is what the test suite
//! does, so the logic is exercised even where no GPU exists; only numbers that need a GPU are
//! then not judged.
//!
//! This folder sits above every stage, as it drives both the run loop and the trainer: nothing
//! else imports it. It reaches the run loop only as a user does, through `sweep run` and `sweep
//! plan` child processes and the files they leave (the journal, each trial's result.json), never
//! by calling it; it asks the trainer for candle work through `trainer::probe` and names no
//! candle itself; it queries GPUs only through `plan::devices`. It judges; it never trains.

pub mod child;
pub mod memory;
pub mod oom;
pub mod parity;
pub mod short_sweep;
pub mod speed;
pub mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::diagnostics::table::{failed_part, row, Row, Status};

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

impl Args {
    /// The device every part runs on: `cpu` in a dry run, else `--device`.
    pub fn device_name(&self) -> String {
        if self.cpu_dry_run {
            "cpu".to_string()
        } else {
            self.device.clone()
        }
    }

    /// Whether the parts run on a CUDA device (not a dry run).
    pub fn on_cuda(&self) -> bool {
        self.device_name().starts_with("cuda")
    }
}

/// `sweep gpu-check`: every part in turn, a part's error as a failed row, the table printed.
pub fn main(args: Args) -> Result<ExitCode> {
    if let Some(method) = &args.bench {
        return speed::bench_child(&args, method).map(|()| ExitCode::SUCCESS);
    }
    let device = args.device_name();
    crate::trainer::probe::open(&device)?;
    let out = match &args.out {
        Some(o) => o.clone(),
        None => std::env::temp_dir().join(format!("sweep-gpu-check-{}", std::process::id())),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut rows = setup_rows(&args);
    let mut part = |name: &'static str, result: Result<Vec<Row>>| match result {
        Ok(r) => rows.extend(r),
        Err(e) => rows.push(failed_part(name, &e)),
    };
    part("1 parity", parity::run(&args.root, &device));
    part("2 sweep", short_sweep::run(&args, &out));
    let (speed, measured) = match speed::run(&args, &out) {
        Ok((rows, measured)) => (Ok(rows), measured),
        Err(e) => (Err(e), Vec::new()),
    };
    part("3 speed", speed);
    part("4 oom", oom::run(&args, &out));
    rows.extend(memory::rows(&measured, args.cpu_dry_run));
    print!("{}", table::render(&rows));
    println!("{}", table::summary(&rows, &out));
    Ok(table::exit_status(&rows))
}

/// Part 0: the device, the build and the libraries; in a dry run also what opening `cuda:0`
/// would tell a sweep with this build.
fn setup_rows(args: &Args) -> Vec<Row> {
    let mut rows = vec![row(
        "0 setup",
        "device, build, libraries",
        format!(
            "{}{}; cuda feature {}; libraries: {}",
            args.device_name(),
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
        let what = match crate::trainer::probe::open("cuda:0") {
            Ok(()) => "opened".to_string(),
            // The first line: candle appends a backtrace when RUST_BACKTRACE is set.
            Err(e) => e.to_string().lines().next().unwrap_or("").to_string(),
        };
        rows.push(row("0 setup", "opening cuda:0", what, Status::Info));
    }
    rows
}
