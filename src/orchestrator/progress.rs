//! What the user watches (the `Reporter` of a sweep run without `--quiet`): one overall bar with
//! ETA, one bar per running trial (epoch, loss, accuracy). Without a terminal (CI, a log file)
//! the same news comes as plain lines.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::orchestrator::reporter::Reporter;
use crate::protocol::trial::ProgressEvent;

pub struct SweepProgress {
    multi: MultiProgress,
    overall: ProgressBar,
    trials: HashMap<usize, (ProgressBar, String)>,
    tty: bool,
}

impl SweepProgress {
    /// Bars with no trial to wait for yet (`Reporter::add_pending` adds them).
    pub fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        let multi = if tty {
            MultiProgress::new()
        } else {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        };
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:.bold} [{elapsed_precise}] {wide_bar:.cyan/blue} {pos}/{len} trials, ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        overall.set_prefix("sweep");
        if tty {
            overall.enable_steady_tick(Duration::from_millis(500));
        }
        Self {
            multi,
            overall,
            trials: HashMap::new(),
            tty,
        }
    }
}

impl Default for SweepProgress {
    fn default() -> Self {
        Self::new()
    }
}

/// A line on stderr in one write (`eprintln!` writes each formatted piece on its own to the
/// unbuffered stderr: a dozen system calls a line, a thousand trials' worth in a log file).
fn plain(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr()
        .lock()
        .write_all(format!("{line}\n").as_bytes());
}

impl Reporter for SweepProgress {
    /// Prints a line above the bars (or plainly, without a terminal).
    fn line(&mut self, line: &str) {
        if self.tty {
            let _ = self.multi.println(line);
        } else {
            plain(line);
        }
    }

    fn trial_started(&mut self, trial: usize, label: &str) {
        let bar = self.multi.add(ProgressBar::new(1));
        bar.set_style(
            ProgressStyle::with_template("  {prefix} {bar:25.green/white} {pos}/{len} steps {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("trial {trial:04} {label:<34}"));
        if !self.tty {
            plain(&format!("trial {trial:04} started: {label}"));
        }
        self.trials.insert(trial, (bar, label.to_string()));
    }

    fn trial_event(&mut self, trial: usize, event: &ProgressEvent) {
        let Some((bar, _)) = self.trials.get(&trial) else {
            return;
        };
        match event {
            ProgressEvent::Start {
                epochs,
                steps_per_epoch,
                ..
            } => bar.set_length((*epochs as usize * steps_per_epoch) as u64),
            ProgressEvent::Step {
                epoch, step, loss, ..
            } => {
                bar.set_position(*step as u64);
                let acc = bar.message();
                let acc = acc
                    .split(" acc ")
                    .nth(1)
                    .map(|a| format!(" acc {a}"))
                    .unwrap_or_default();
                bar.set_message(format!("epoch {epoch} loss {loss:.3}{acc}"));
            }
            // The run loop reports a trial's end from its exit and result.json.
            ProgressEvent::End(_) => {}
            ProgressEvent::Resumed { epoch, step } => {
                bar.set_position(*step as u64);
                bar.set_message(format!("resumed after epoch {epoch}"));
            }
            ProgressEvent::Epoch(m) => {
                let acc = m
                    .accuracy
                    .map(|a| format!("{a:.3}"))
                    .unwrap_or_else(|| "-".into());
                bar.set_message(format!(
                    "epoch {} loss {:.3} acc {acc}",
                    m.epoch, m.train_loss
                ));
                if !self.tty {
                    plain(&format!(
                        "trial {trial:04} epoch {}: train_loss {:.4} dev_loss {:.4} accuracy {acc}",
                        m.epoch, m.train_loss, m.dev_loss
                    ));
                }
            }
        }
    }

    fn trial_ended(&mut self, trial: usize, line: &str) {
        if let Some((bar, _)) = self.trials.remove(&trial) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        self.overall.inc(1);
        self.line(line);
    }

    fn add_pending(&mut self, n: u64) {
        self.overall.inc_length(n);
    }

    fn finish(&mut self) {
        self.overall.finish_and_clear();
    }
}
