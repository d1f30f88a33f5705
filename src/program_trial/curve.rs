//! A program's learning curve from its report lines (pure): every report holding the sweep's
//! metric is an evaluation (the same `EpochMetrics` event the built-in trainer emits, its
//! reported numbers in `reported`); the best evaluation by the sweep's ranking makes the
//! trial's `TrialResult`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::protocol::program::report::Report;
use crate::protocol::trial::{EpochMetrics, TrialResult};
use crate::spec::{MetricSpec, Score};

/// The keys a program's reports use for the columns the built-in trainer fills itself.
const TRAIN_LOSS_KEYS: [&str; 3] = ["train_loss", "loss", "train/loss"];
const DEV_LOSS_KEYS: [&str; 4] = ["dev_loss", "val_loss", "eval_loss", "eval/loss"];

/// What the program has reported so far.
#[derive(Debug, Clone)]
pub struct Curve {
    metric: MetricSpec,
    /// The latest value of every number any report held (a key printed on its own line is kept
    /// for the next evaluation).
    latest: BTreeMap<String, f64>,
    /// The latest `checkpoint` path.
    checkpoint: Option<String>,
    evaluations: Vec<EpochMetrics>,
    /// The index of the best evaluation in `evaluations`.
    best: Option<usize>,
}

impl Curve {
    pub fn new(metric: MetricSpec) -> Self {
        Self {
            metric,
            latest: BTreeMap::new(),
            checkpoint: None,
            evaluations: Vec::new(),
            best: None,
        }
    }

    /// Takes one report, `elapsed_s` seconds into the trial; the evaluation it makes when it
    /// holds the metric.
    pub fn observe(&mut self, report: &Report, elapsed_s: f64) -> Option<EpochMetrics> {
        for (k, v) in &report.metrics {
            self.latest.insert(k.clone(), *v);
        }
        if let Some(c) = &report.checkpoint {
            self.checkpoint = Some(c.clone());
        }
        let name = self.metric.name.column();
        // A diverged metric (NaN, an infinity) is an evaluation too: the worst one.
        if report.metric(name).is_none() && !report.is_non_finite(name) {
            return None;
        }
        let index = self.evaluations.len() + 1;
        let first = |keys: &[&str]| keys.iter().find_map(|k| report.metric(k));
        let mut reported = self.latest.clone();
        if report.is_non_finite(name) {
            reported.remove(name);
        }
        let m = EpochMetrics {
            epoch: report
                .metric("epoch")
                .filter(|e| *e >= 0.0 && e.fract() == 0.0 && *e <= f64::from(u32::MAX))
                .map_or(index as u32, |e| e as u32),
            step: index,
            train_loss: first(&TRAIN_LOSS_KEYS).unwrap_or(0.0),
            dev_loss: first(&DEV_LOSS_KEYS).unwrap_or(0.0),
            accuracy: report.metric("accuracy"),
            tokens_per_sec: 0.0,
            peak_rss_mb: 0.0,
            elapsed_s,
            eval_seconds: 0.0,
            accuracy_by_level: Vec::new(),
            reported,
        };
        let better = match self.best {
            None => true,
            Some(b) => {
                self.metric.rank(
                    &score(&self.metric, &m),
                    &score(&self.metric, &self.evaluations[b]),
                ) == std::cmp::Ordering::Less
            }
        };
        self.evaluations.push(m.clone());
        if better {
            self.best = Some(self.evaluations.len() - 1);
        }
        Some(m)
    }

    pub fn evaluations(&self) -> usize {
        self.evaluations.len()
    }

    /// The trial's result: its best evaluation (or, with none, the latest values), its seconds
    /// in all, its checkpoint the path the program reported (`dir/checkpoint` otherwise, which
    /// then may not exist).
    pub fn result(&self, seconds: f64, default_checkpoint: PathBuf, devices: u32) -> TrialResult {
        let best = self.best.map(|b| &self.evaluations[b]);
        let checkpoint = self
            .checkpoint
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or(default_checkpoint);
        TrialResult {
            best_epoch: best.map_or(0, |m| m.epoch),
            accuracy: best.and_then(|m| m.accuracy),
            dev_loss: best.map_or(0.0, |m| m.dev_loss),
            train_loss: best.map_or(0.0, |m| m.train_loss),
            seconds,
            tokens_per_sec: 0.0,
            peak_rss_mb: 0.0,
            eval_seconds: 0.0,
            trainable_params: 0,
            micro_batch: 0,
            grad_accum: 0,
            devices,
            per_device_batch: None,
            best_step: best.map(|m| m.step),
            steps: Some(self.evaluations.len()),
            checkpoint,
            accuracy_by_level: Vec::new(),
            train_seconds_per_epoch: None,
            seconds_per_evaluation: None,
            reported: best.map_or_else(|| self.latest.clone(), |m| m.reported.clone()),
        }
    }
}

fn score(metric: &MetricSpec, m: &EpochMetrics) -> Score {
    Score {
        value: m.metric(&metric.name),
        dev_loss: 0.0,
        seconds: m.elapsed_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::program::report::{parse_line, ProgramLine};
    use crate::spec::{Goal, MetricName};

    fn report(line: &str) -> Report {
        match parse_line(line) {
            ProgramLine::Report(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn metric(name: &str, goal: Goal) -> MetricSpec {
        MetricSpec {
            name: MetricName::Reported(name.into()),
            goal: Some(goal),
            target: None,
        }
    }

    #[test]
    fn lines_with_the_metric_are_evaluations_and_the_best_is_the_result() {
        let mut c = Curve::new(metric("val_loss", Goal::Minimize));
        assert!(c.observe(&report(r#"{"lr": 0.1}"#), 0.1).is_none());
        let e1 = c
            .observe(
                &report(r#"{"epoch": 1, "val_loss": 0.9, "loss": 1.2}"#),
                1.0,
            )
            .unwrap();
        assert_eq!(
            (e1.epoch, e1.step, e1.train_loss, e1.dev_loss),
            (1, 1, 1.2, 0.9)
        );
        assert_eq!(e1.reported["lr"], 0.1);
        assert_eq!(
            e1.metric(&MetricName::Reported("val_loss".into())),
            Some(0.9)
        );
        c.observe(&report(r#"{"checkpoint": "/c/ep2", "val_loss": 0.5}"#), 2.0);
        c.observe(&report(r#"{"val_loss": 0.7, "epoch": 3}"#), 3.0);
        assert_eq!(c.evaluations(), 3);
        let r = c.result(3.5, PathBuf::from("/t/checkpoint"), 1);
        assert_eq!(r.best_step, Some(2));
        assert_eq!(r.best_epoch, 2);
        assert_eq!(r.reported["val_loss"], 0.5);
        assert_eq!(r.checkpoint, PathBuf::from("/c/ep2"));
        assert_eq!(r.seconds, 3.5);
        assert_eq!(
            r.metric(&MetricName::Reported("val_loss".into())),
            Some(0.5)
        );
    }

    #[test]
    fn a_maximised_metric_and_a_diverged_one() {
        let mut c = Curve::new(metric("f1", Goal::Maximize));
        c.observe(&report(r#"{"f1": 0.4}"#), 1.0);
        let diverged = c.observe(&report(r#"{"f1": NaN}"#), 2.0).unwrap();
        assert_eq!(diverged.metric(&MetricName::Reported("f1".into())), None);
        c.observe(&report(r#"{"f1": 0.6}"#), 3.0);
        let r = c.result(4.0, PathBuf::from("/t/checkpoint"), 2);
        assert_eq!(r.best_step, Some(3));
        assert_eq!(r.devices, 2);
        assert_eq!(r.checkpoint, PathBuf::from("/t/checkpoint"));
        // Built-in names from a program: accuracy is its own column.
        let mut c = Curve::new(MetricSpec::default());
        let e = c.observe(&report(r#"{"accuracy": 0.8}"#), 1.0).unwrap();
        assert_eq!(e.accuracy, Some(0.8));
    }
}
