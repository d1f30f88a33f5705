//! The command line: a thin layer over the `sweep` library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use sweep::orchestrator::runner::RunSummary;
use sweep::plan::{Plan, PlanOptions};
use sweep::spec::SweepSpec;

/// A CPU trial that runs out of memory under its limit still records its end
/// (`trainer::train::oom_guard`; armed by `sweep train` only).
#[global_allocator]
static ALLOCATOR: sweep::trainer::train::oom_guard::GuardedAllocator =
    sweep::trainer::train::oom_guard::GuardedAllocator;

/// `sweep --version`: the version and whether the binary can train on CUDA GPUs (what
/// scripts/gpu-check.sh asks).
const VERSION: &str = if cfg!(feature = "cuda") {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (CUDA 13: the driver and CUDA libraries are opened when a trial first uses a GPU)"
    )
} else {
    concat!(env!("CARGO_PKG_VERSION"), " (CPU only: built without CUDA)")
};

#[derive(Parser)]
#[command(
    name = "sweep",
    version = VERSION,
    about = "Hyperparameter sweeps for fine-tuning language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plan the sweep, train its trials in parallel, write results.csv and best/.
    Run(RunArgs),
    /// Print the trials that would run, their parameters and devices; nothing runs.
    Plan {
        spec: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Show trials as asked even when their predicted memory exceeds the device's.
        #[arg(long)]
        no_memory_check: bool,
    },
    /// Check sweep files (.yaml/.yml, with their data and model) and data files without
    /// training: every problem with file, line and field; exit status 2 on any error.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Check sweep files as `sweep run --count N` runs them (a random or bayes sweep
        /// without `run_cap` needs one or the other).
        #[arg(long, value_name = "N")]
        count: Option<usize>,
    },
    /// Leaderboard and per-parameter summaries of a results folder.
    Report {
        dir: PathBuf,
        /// Also write the table to this CSV file.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Write the interactive HTML report (one self-contained file) to OUT, by default
        /// DIR/report.html.
        #[arg(long, value_name = "OUT", num_args = 0..=1)]
        html: Option<Option<PathBuf>>,
        /// Write the main plots as PNG images into this folder.
        #[arg(long, value_name = "DIR")]
        png: Option<PathBuf>,
    },
    /// The best trial of a results folder: parameters, metric, checkpoint path.
    Best { dir: PathBuf },
    /// Export a checkpoint; `--merge OUT` folds a LoRA checkpoint's adapters into its base and
    /// writes an ordinary Hugging Face model folder.
    Export {
        checkpoint: PathBuf,
        #[arg(long, value_name = "OUT")]
        merge: PathBuf,
    },
    /// Score a checkpoint on a labelled data file: accuracy, macro-F1, per-class precision,
    /// recall and F1, and the most frequent confusions.
    Eval {
        checkpoint: PathBuf,
        data: PathBuf,
        /// Machine-readable output (one JSON object).
        #[arg(long)]
        json: bool,
    },
    /// Classify queries with a checkpoint: one JSON line in ({"src", optional "system"}), one
    /// JSON line out (predicted label and the top candidates); reads stdin without FILE.
    Predict {
        checkpoint: PathBuf,
        file: Option<PathBuf>,
        /// How many of the best labels to list per line.
        #[arg(long, default_value_t = 3)]
        top: usize,
    },
    /// Train one trial from its folder (what the orchestrator and Slurm jobs call).
    Train { dir: PathBuf },
    /// Check the CUDA path on a real GPU (what scripts/gpu-check.sh runs); see src/diagnostics/.
    #[command(hide = true)]
    GpuCheck(sweep::diagnostics::Args),
}

/// The arguments of `sweep run`.
#[derive(clap::Args)]
struct RunArgs {
    spec: PathBuf,
    /// No progress bars or per-trial lines.
    #[arg(long)]
    quiet: bool,
    /// Continue the interrupted sweep in the results folder: finished trials are kept,
    /// interrupted ones continue from their last finished epoch.
    #[arg(long)]
    resume: bool,
    /// Run at most N trials (as `wandb agent --count N`): what a random or bayes sweep without
    /// `run_cap` needs; with `--resume`, give the same N.
    #[arg(long, value_name = "N")]
    count: Option<usize>,
    /// Results folder (instead of the spec's `output`, or results/<name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Plan trials as asked even when their predicted memory exceeds the device's (a real
    /// out-of-memory is still recovered under `on_oom`).
    #[arg(long)]
    no_memory_check: bool,
}

fn main() -> ExitCode {
    // Before any thread exists: the only sound moment to set the environment.
    for (key, value) in sweep::results::report::TABLE_FORMAT {
        std::env::set_var(key, value);
    }
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run(args) => run(args),
        Command::Plan {
            spec,
            json,
            no_memory_check,
        } => plan(&spec, json, !no_memory_check),
        Command::Check { paths, count } => check(&paths, count),
        Command::Report {
            dir,
            csv,
            html,
            png,
        } => report(&dir, csv.as_deref(), html, png.as_deref()),
        Command::Export { checkpoint, merge } => export(&checkpoint, &merge),
        Command::Best { dir } => best(&dir),
        Command::Eval {
            checkpoint,
            data,
            json,
        } => eval(&checkpoint, &data, json),
        Command::Predict {
            checkpoint,
            file,
            top,
        } => predict(&checkpoint, file.as_deref(), top),
        Command::GpuCheck(args) => sweep::diagnostics::main(args),
        Command::Train { dir } => train(dir),
    }
}

/// `sweep run`: nothing starts, and nothing is written, until the same checks as `sweep check`
/// pass; warnings are shown and do not stop the sweep.
fn run(args: RunArgs) -> Result<ExitCode> {
    let checked = match sweep::check::gate_counted(&args.spec, args.count) {
        Ok(checked) => checked,
        Err(report) => {
            eprint!("{}", report.render());
            eprintln!("nothing was started: fix the errors above and run again");
            return Ok(ExitCode::from(2));
        }
    };
    eprint!("{}", checked.report().render_problems());
    let mut plan = checked.plan(PlanOptions {
        memory_check: !args.no_memory_check,
    })?;
    if let Some(out) = args.out {
        plan.results_dir = out;
    }
    println!("{}", plan.render());
    let opts = sweep::orchestrator::runner::RunOptions {
        program: std::env::current_exe().context("locating the sweep executable")?,
        quiet: args.quiet,
        resume: args.resume,
    };
    let summary = sweep::orchestrator::runner::run(&checked, &plan, &opts)?;
    if summary.interrupted {
        eprintln!(
            "interrupted; continue with `sweep run {} --resume`",
            args.spec.display()
        );
        return Ok(ExitCode::from(130));
    }
    println!("\n{}", counts(&summary));
    print!("{}", sweep::results::report::render(&summary.dir)?);
    println!(
        "report: {}",
        summary.dir.join(sweep::results::html::FILE).display()
    );
    Ok(if summary.best.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The line after a sweep: how its trials ended, how long it took, where the results are.
fn counts(summary: &RunSummary) -> String {
    format!(
        "{} finished ({} of them pruned), {} failed, {} refused in {:.0} s; results in {}",
        summary.finished,
        summary.pruned,
        summary.failed,
        summary.refused,
        summary.seconds,
        summary.dir.display()
    )
}

/// `sweep plan`: the plan of a sweep file, unchecked, as text or JSON.
fn plan(spec_path: &Path, json: bool, memory_check: bool) -> Result<ExitCode> {
    let text = std::fs::read_to_string(spec_path)
        .with_context(|| format!("{}: cannot read", spec_path.display()))?;
    let spec = SweepSpec::from_yaml(&text, &spec_path.display().to_string())?;
    let plan = Plan::with_options(&spec, spec_path, PlanOptions { memory_check })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", plan.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// `sweep check`: exit status 2 on any error.
fn check(paths: &[PathBuf], count: Option<usize>) -> Result<ExitCode> {
    let report = sweep::check::check_paths(paths, count);
    print!("{}", report.render());
    Ok(if report.has_errors() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// `sweep report`: the leaderboard, and the HTML report, plots and CSV copy asked for.
fn report(
    dir: &Path,
    csv: Option<&Path>,
    html: Option<Option<PathBuf>>,
    png: Option<&Path>,
) -> Result<ExitCode> {
    print!("{}", sweep::results::report::render(dir)?);
    if let Some(out) = html {
        let written = sweep::results::html::write(dir, out.as_deref())?;
        println!("HTML report: {}", written.display());
    }
    if let Some(out) = png {
        for file in sweep::results::png::write(dir, out)? {
            println!("plot: {}", file.display());
        }
    }
    if let Some(out) = csv {
        std::fs::copy(dir.join(sweep::results::CSV), out)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `sweep export --merge`.
fn export(checkpoint: &Path, merge: &Path) -> Result<ExitCode> {
    sweep::trainer::checkpoint::export_merged(checkpoint, merge)?;
    println!("merged model written to {}", merge.display());
    Ok(ExitCode::SUCCESS)
}

/// `sweep best`.
fn best(dir: &Path) -> Result<ExitCode> {
    let best = sweep::results::read_best(dir)?;
    println!("trial {:04}: {} {:.4}", best.trial, best.metric, best.value);
    for (k, v) in &best.params {
        println!("  {k}: {v}");
    }
    println!("checkpoint: {}", best.checkpoint.display());
    Ok(ExitCode::SUCCESS)
}

/// `sweep eval`.
fn eval(checkpoint: &Path, data: &Path, json: bool) -> Result<ExitCode> {
    let (report, _) = sweep::trainer::checkpoint_eval::evaluate(checkpoint, data)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", sweep::trainer::checkpoint_eval::render(&report, 10));
    }
    Ok(ExitCode::SUCCESS)
}

/// `sweep predict`: the input is checked before the model is loaded, so a bad line fails fast.
fn predict(checkpoint: &Path, file: Option<&Path>, top: usize) -> Result<ExitCode> {
    let (bytes, name) = match file {
        Some(path) => (
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?,
            path.to_path_buf(),
        ),
        None => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                .context("reading stdin")?;
            (bytes, PathBuf::from("<stdin>"))
        }
    };
    let examples = sweep::trainer::checkpoint_eval::read_examples(bytes, &name)?;
    let scorer = sweep::trainer::checkpoint_eval::Scorer::load(checkpoint)?;
    let mut out = std::io::stdout().lock();
    for p in scorer.predict(&examples, top.max(1))? {
        writeln!(out, "{}", serde_json::to_string(&p)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `sweep train DIR`: one trial, its progress events on stdout.
fn train(dir: PathBuf) -> Result<ExitCode> {
    if sweep::program_trial::is_program_trial(&dir) {
        // A user's program: its end is in result.json; exit 0 unless it could not be written.
        sweep::program_trial::command(&dir)?;
        return Ok(ExitCode::SUCCESS);
    }
    match sweep::trainer::train::command(&dir) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ sweep::trainer::error::TrainError::SavedOnSignal { .. }) => {
            // Inside a Slurm job: requeue it; it continues from this resume point.
            let requeued = sweep::orchestrator::slurm::requeue_own_job();
            eprintln!(
                "{e}; {}",
                if requeued {
                    "the Slurm job is requeued and will continue from it"
                } else {
                    "`sweep run --resume` continues from it"
                }
            );
            Ok(ExitCode::from(sweep::trainer::stop::EXIT_SAVED))
        }
        Err(e @ sweep::trainer::error::TrainError::OrchestratorGone) => {
            // The last finished epoch is saved; `sweep run --resume` continues from it.
            eprintln!("{e}");
            Ok(ExitCode::from(3))
        }
        Err(e) => Err(e.into()),
    }
}
