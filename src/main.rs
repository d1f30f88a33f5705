//! The command line: a thin layer over the `sweep` library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use sweep::plan::Plan;
use sweep::spec::SweepSpec;

#[derive(Parser)]
#[command(
    name = "sweep",
    version,
    about = "Hyperparameter sweeps for fine-tuning language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plan the sweep, train its trials in parallel, write results.csv and best/.
    Run {
        spec: PathBuf,
        /// No progress bars or per-trial lines.
        #[arg(long)]
        quiet: bool,
    },
    /// Print the trials that would run, their parameters and devices; nothing runs.
    Plan {
        spec: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check a sweep file and its data without training.
    Check { spec: PathBuf },
    /// Leaderboard and per-parameter summaries of a results folder.
    Report {
        dir: PathBuf,
        /// Also write the table to this CSV file.
        #[arg(long)]
        csv: Option<PathBuf>,
    },
    /// The best trial of a results folder: parameters, metric, checkpoint path.
    Best { dir: PathBuf },
    /// Train one trial from its folder (what the orchestrator and Slurm jobs call).
    Train { dir: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load(spec_path: &Path) -> Result<(SweepSpec, Plan, String)> {
    let text = std::fs::read_to_string(spec_path)
        .with_context(|| format!("{}: cannot read", spec_path.display()))?;
    let spec = SweepSpec::from_yaml(&text, &spec_path.display().to_string())?;
    let plan = Plan::new(&spec, spec_path)?;
    Ok((spec, plan, text))
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run { spec, quiet } => {
            let (spec, plan, text) = load(&spec)?;
            println!("{}", plan.render());
            let opts = sweep::runner::RunOptions {
                program: std::env::current_exe().context("locating the sweep executable")?,
                quiet,
            };
            let summary = sweep::runner::run(&plan, &spec.metric, &text, &opts)?;
            println!(
                "\n{} finished, {} failed, {} refused in {:.0} s; results in {}",
                summary.finished,
                summary.failed,
                summary.refused,
                summary.seconds,
                summary.dir.display()
            );
            print!("{}", sweep::report::render(&summary.dir)?);
            Ok(if summary.finished > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Plan { spec, json } => {
            let (_, plan, _) = load(&spec)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", plan.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { spec } => {
            let (_, plan, _) = load(&spec)?;
            let train = sweep::data::load_examples(&plan.train)?;
            let dev = sweep::data::load_examples(&plan.dev)?;
            println!(
                "{}: ok: {} trials, {} train and {} dev examples, {} labels",
                spec.display(),
                plan.trials.len(),
                train.len(),
                dev.len(),
                sweep::data::label_set(&train).len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { dir, csv } => {
            print!("{}", sweep::report::render(&dir)?);
            if let Some(out) = csv {
                std::fs::copy(dir.join(sweep::results::CSV), &out)
                    .with_context(|| format!("writing {}", out.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Best { dir } => {
            let best = sweep::results::read_best(&dir)?;
            println!("trial {:04}: {} {:.4}", best.trial, best.metric, best.value);
            for (k, v) in &best.params {
                println!("  {k}: {v}");
            }
            println!("checkpoint: {}", best.checkpoint.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Train { dir } => {
            let stdout = std::io::stdout();
            let result = sweep::train::run_trial(&dir, |event| {
                let mut out = stdout.lock();
                let _ = writeln!(out, "{}", serde_json::to_string(event).unwrap_or_default());
                let _ = out.flush();
            })?;
            eprintln!(
                "done: best epoch {}, accuracy {}, dev_loss {:.4}, {:.0} s",
                result.best_epoch,
                result
                    .accuracy
                    .map(|a| format!("{a:.4}"))
                    .unwrap_or_else(|| "-".into()),
                result.dev_loss,
                result.seconds
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
