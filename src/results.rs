//! Results derived from the journal: results.csv (one row per trial, built with polars), the best
//! trial's `best/` folder, and the report (leaderboard and per-parameter summaries).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use polars::prelude::*;
use serde_json::Value;

use crate::journal::{Entry, Event};
use crate::spec::{Goal, MetricSpec};
use crate::trial::{write_atomic, TrialResult};

/// Where a trial stands, as the journal tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Planned,
    Refused,
    Running,
    Finished,
    Failed,
    /// Interrupted by the user; runs again on resume.
    Stopped,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Planned => "planned",
            Status::Refused => "refused",
            Status::Running => "running",
            Status::Finished => "finished",
            Status::Failed => "failed",
            Status::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TrialRow {
    pub trial: usize,
    pub status: Status,
    pub reason: String,
    pub params: BTreeMap<String, Value>,
    pub result: Option<TrialResult>,
    /// The process of the latest start, while the trial is running.
    pub pid: Option<u32>,
    /// Deleted under the checkpoint retention policy.
    pub checkpoint_deleted: bool,
    /// Predicted peak memory per device at plan time, MiB.
    pub estimate_mb: Option<f64>,
    /// Out-of-memory retries so far.
    pub retries: u32,
    /// The micro-batch the next run must use after out-of-memory retries.
    pub retry_micro_batch: Option<u32>,
}

/// The latest state of every trial, in trial order.
pub fn rows_from_journal(entries: &[Entry]) -> Vec<TrialRow> {
    let mut rows: BTreeMap<usize, TrialRow> = BTreeMap::new();
    for e in entries {
        match &e.event {
            Event::TrialPlanned {
                trial,
                params,
                estimate_mb,
            } => {
                rows.insert(
                    *trial,
                    TrialRow {
                        trial: *trial,
                        status: Status::Planned,
                        reason: String::new(),
                        params: params.clone(),
                        result: None,
                        pid: None,
                        checkpoint_deleted: false,
                        estimate_mb: *estimate_mb,
                        retries: 0,
                        retry_micro_batch: None,
                    },
                );
            }
            Event::TrialRefused { trial, reason } | Event::TrialFailed { trial, reason } => {
                if let Some(r) = rows.get_mut(trial) {
                    r.status = if matches!(e.event, Event::TrialRefused { .. }) {
                        Status::Refused
                    } else {
                        Status::Failed
                    };
                    r.reason = reason.clone();
                }
            }
            Event::TrialStarted { trial, pid, .. } => {
                if let Some(r) = rows.get_mut(trial) {
                    r.status = Status::Running;
                    r.reason.clear();
                    r.pid = Some(*pid);
                }
            }
            Event::TrialStopped { trial, reason } => {
                if let Some(r) = rows.get_mut(trial) {
                    r.status = Status::Stopped;
                    r.reason = reason.clone();
                }
            }
            Event::TrialOutOfMemory {
                trial,
                retry_micro_batch,
                reason,
                ..
            } => {
                if let Some(r) = rows.get_mut(trial) {
                    r.retries += 1;
                    r.retry_micro_batch = *retry_micro_batch;
                    r.reason = reason.clone();
                    r.status = Status::Planned;
                }
            }
            Event::CheckpointDeleted { trial } => {
                if let Some(r) = rows.get_mut(trial) {
                    r.checkpoint_deleted = true;
                }
            }
            Event::TrialFinished { trial, result } => {
                if let Some(r) = rows.get_mut(trial) {
                    r.status = Status::Finished;
                    r.result = Some(result.clone());
                }
            }
            Event::SweepStarted { .. }
            | Event::SweepFinished { .. }
            | Event::SweepResumed { .. } => {}
        }
    }
    rows.into_values().collect()
}

/// Orders trials best first: by the metric and its goal, ties broken by lower dev loss, then by
/// fewer seconds. Trials without a finite metric come last.
pub fn compare(a: &TrialRow, b: &TrialRow, metric: &MetricSpec) -> std::cmp::Ordering {
    let key = |r: &TrialRow| -> Option<(f64, f64, f64)> {
        let res = r.result.as_ref()?;
        let v = res.metric(metric.name).filter(|v| v.is_finite())?;
        let v = if metric.goal() == Goal::Maximize {
            -v
        } else {
            v
        };
        Some((v, res.dev_loss, res.seconds))
    };
    match (key(a), key(b)) {
        (Some(x), Some(y)) => {
            x.0.total_cmp(&y.0)
                .then(x.1.total_cmp(&y.1))
                .then(x.2.total_cmp(&y.2))
        }
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

/// The best finished trial (see `compare`).
pub fn best<'a>(rows: &'a [TrialRow], metric: &MetricSpec) -> Option<&'a TrialRow> {
    rows.iter()
        .filter(|r| {
            r.status == Status::Finished
                && r.result
                    .as_ref()
                    .and_then(|res| res.metric(metric.name))
                    .is_some_and(f64::is_finite)
        })
        .min_by(|a, b| compare(a, b, metric))
}

/// A column of parameter values: numbers stay numbers, anything else becomes text.
fn param_column(name: &str, values: Vec<Option<&Value>>) -> Column {
    let all_ints = values.iter().flatten().all(|v| v.is_i64() || v.is_u64());
    let all_nums = values.iter().flatten().all(|v| v.is_number());
    if all_ints {
        Column::new(
            name.into(),
            values
                .iter()
                .map(|v| v.and_then(Value::as_i64))
                .collect::<Vec<_>>(),
        )
    } else if all_nums {
        Column::new(
            name.into(),
            values
                .iter()
                .map(|v| v.and_then(Value::as_f64))
                .collect::<Vec<_>>(),
        )
    } else {
        let text: Vec<Option<String>> = values
            .iter()
            .map(|v| {
                v.map(|v| match v {
                    Value::String(s) => s.clone(),
                    // Lists (lora_targets) as space-separated words: readable, and CSV-safe.
                    Value::Array(items) => items
                        .iter()
                        .map(|i| {
                            i.as_str()
                                .map(String::from)
                                .unwrap_or_else(|| i.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                    other => other.to_string(),
                })
            })
            .collect();
        Column::new(name.into(), text)
    }
}

/// One row per trial: identity, status, every parameter, then the metrics of the best epoch.
pub fn table(rows: &[TrialRow]) -> Result<DataFrame> {
    let names: BTreeSet<&String> = rows.iter().flat_map(|r| r.params.keys()).collect();
    let mut cols = vec![
        Column::new(
            "trial".into(),
            rows.iter().map(|r| r.trial as i64).collect::<Vec<_>>(),
        ),
        Column::new(
            "status".into(),
            rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "reason".into(),
            rows.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>(),
        ),
    ];
    for name in names
        .into_iter()
        .filter(|n| !RESULT_COLUMNS.contains(&n.as_str()))
    {
        cols.push(param_column(
            name,
            rows.iter().map(|r| r.params.get(name)).collect(),
        ));
    }
    let res = |f: &dyn Fn(&TrialResult) -> Option<f64>| -> Vec<Option<f64>> {
        rows.iter().map(|r| r.result.as_ref().and_then(f)).collect()
    };
    let int = |f: &dyn Fn(&TrialResult) -> i64| -> Vec<Option<i64>> {
        rows.iter().map(|r| r.result.as_ref().map(f)).collect()
    };
    cols.push(Column::new("accuracy".into(), res(&|r| r.accuracy)));
    cols.push(Column::new("dev_loss".into(), res(&|r| Some(r.dev_loss))));
    cols.push(Column::new(
        "train_loss".into(),
        res(&|r| Some(r.train_loss)),
    ));
    cols.push(Column::new(
        "best_epoch".into(),
        int(&|r| r.best_epoch as i64),
    ));
    cols.push(Column::new("seconds".into(), res(&|r| Some(r.seconds))));
    cols.push(Column::new(
        "tokens_per_sec".into(),
        res(&|r| Some(r.tokens_per_sec)),
    ));
    cols.push(Column::new(
        "peak_rss_mb".into(),
        res(&|r| Some(r.peak_rss_mb)),
    ));
    cols.push(Column::new(
        "trainable_params".into(),
        int(&|r| r.trainable_params as i64),
    ));
    cols.push(Column::new(
        "micro_batch".into(),
        int(&|r| r.micro_batch as i64),
    ));
    cols.push(Column::new(
        "grad_accum".into(),
        int(&|r| r.grad_accum as i64),
    ));
    cols.push(Column::new("devices".into(), int(&|r| r.devices as i64)));
    cols.push(Column::new(
        "per_device_batch".into(),
        rows.iter()
            .map(|r| r.result.as_ref()?.per_device_batch.map(i64::from))
            .collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "retries".into(),
        rows.iter().map(|r| r.retries as i64).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "estimated_mb".into(),
        rows.iter().map(|r| r.estimate_mb).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "checkpoint".into(),
        rows.iter()
            .map(|r| match (&r.result, r.checkpoint_deleted) {
                (Some(x), false) => Some(x.checkpoint.display().to_string()),
                (Some(_), true) => Some("deleted".to_string()),
                (None, _) => None,
            })
            .collect::<Vec<_>>(),
    ));
    Ok(DataFrame::new(rows.len(), cols)?)
}

pub const CSV: &str = "results.csv";

/// Columns that come from a trial's result. `micro_batch` is also a parameter; the column shows
/// what the trial really ran with.
const RESULT_COLUMNS: [&str; 2] = ["micro_batch", "grad_accum"];

/// Rewrites results.csv from the rows, atomically.
pub fn write_csv(dir: &Path, rows: &[TrialRow]) -> Result<()> {
    let mut df = table(rows)?;
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf).finish(&mut df)?;
    write_atomic(&dir.join(CSV), &buf)
        .with_context(|| format!("writing {}", dir.join(CSV).display()))
}

/// What `best/best.json` says.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BestTrial {
    pub trial: usize,
    pub metric: String,
    pub value: f64,
    pub params: BTreeMap<String, Value>,
    pub result: TrialResult,
    /// The copy in `best/checkpoint`.
    pub checkpoint: PathBuf,
}

/// Makes `best/` hold the best trial's checkpoint and best.json. The new folder is assembled
/// beside the old one and swapped in by rename.
pub fn write_best(dir: &Path, row: &TrialRow, metric: &MetricSpec) -> Result<()> {
    let result = row.result.as_ref().context("best trial has no result")?;
    let best_dir = dir.join("best");
    if let Ok(text) = std::fs::read_to_string(best_dir.join("best.json")) {
        if let Ok(old) = serde_json::from_str::<BestTrial>(&text) {
            if old.trial == row.trial {
                return Ok(());
            }
        }
    }
    let tmp = dir.join("best.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    copy_dir(&result.checkpoint, &tmp.join("checkpoint"))
        .with_context(|| format!("copying {}", result.checkpoint.display()))?;
    let best = BestTrial {
        trial: row.trial,
        metric: metric.name.column().to_string(),
        value: result.metric(metric.name).unwrap_or(f64::NAN),
        params: row.params.clone(),
        result: result.clone(),
        checkpoint: std::fs::canonicalize(dir)
            .unwrap_or_else(|_| dir.to_path_buf())
            .join("best")
            .join("checkpoint"),
    };
    std::fs::write(tmp.join("best.json"), serde_json::to_vec_pretty(&best)?)?;
    let old = dir.join("best.old");
    if best_dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(&best_dir, &old)?;
    }
    std::fs::rename(&tmp, &best_dir)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

pub fn read_best(dir: &Path) -> Result<BestTrial> {
    let path = dir.join("best").join("best.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: no best trial yet (has any trial finished?)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: unreadable", path.display()))
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Reads results.csv back (for `sweep report`).
pub fn read_csv(dir: &Path) -> Result<DataFrame> {
    let path = dir.join(CSV);
    let df = CsvReadOptions::default()
        .with_has_header(true)
        .try_into_reader_with_file_path(Some(path.clone()))
        .and_then(|r| r.finish());
    anyhow::Context::with_context(df, || format!("reading {}", path.display()))
}

/// The leaderboard: finished trials, best first.
pub fn leaderboard(df: &DataFrame, metric: &MetricSpec, params: &[String]) -> Result<DataFrame> {
    let m = metric.name.column();
    let mut names: Vec<&str> = vec!["trial"];
    names.extend(params.iter().map(String::as_str));
    for c in [m, "accuracy", "dev_loss", "best_epoch", "seconds"] {
        if !names.contains(&c) {
            names.push(c);
        }
    }
    let cols: Vec<Expr> = names.into_iter().map(col).collect();
    let descending = metric.goal() == Goal::Maximize;
    Ok(df
        .clone()
        .lazy()
        .filter(col("status").eq(lit("finished")))
        .select(cols)
        .sort_by_exprs(
            [col(m), col("dev_loss"), col("seconds")],
            SortMultipleOptions::default()
                .with_order_descending_multi([descending, false, false])
                .with_nulls_last(true),
        )
        .collect()?)
}

/// For one swept parameter: the metric's mean and max over finished trials, per value.
pub fn by_parameter(df: &DataFrame, metric: &MetricSpec, param: &str) -> Result<DataFrame> {
    let m = metric.name.column();
    Ok(df
        .clone()
        .lazy()
        .filter(col("status").eq(lit("finished")))
        .group_by([col(param)])
        .agg([
            col(m).mean().alias(format!("mean_{m}")),
            col(m).min().alias(format!("min_{m}")),
            col(m).max().alias(format!("max_{m}")),
            len().alias("trials"),
        ])
        .sort([param], SortMultipleOptions::default())
        .collect()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Metric;

    fn finished(trial: usize, lr: f64, acc: f64, loss: f64, secs: f64) -> TrialRow {
        TrialRow {
            trial,
            status: Status::Finished,
            reason: String::new(),
            params: [
                ("learning_rate".to_string(), Value::from(lr)),
                ("method".to_string(), Value::from("sft")),
            ]
            .into_iter()
            .collect(),
            result: Some(TrialResult {
                best_epoch: 1,
                accuracy: Some(acc),
                dev_loss: loss,
                train_loss: loss,
                seconds: secs,
                tokens_per_sec: 1.0,
                peak_rss_mb: 1.0,
                trainable_params: 10,
                micro_batch: 4,
                grad_accum: 1,
                devices: 1,
                per_device_batch: Some(4),
                checkpoint: PathBuf::from("x"),
            }),
            pid: None,
            checkpoint_deleted: false,
            estimate_mb: None,
            retries: 0,
            retry_micro_batch: None,
        }
    }

    #[test]
    fn best_breaks_ties_by_loss_then_time() {
        let metric = MetricSpec {
            name: Metric::Accuracy,
            goal: None,
        };
        let rows = vec![
            finished(1, 0.1, 0.8, 0.5, 10.0),
            finished(2, 0.2, 0.9, 0.7, 10.0),
            finished(3, 0.3, 0.9, 0.6, 20.0),
            finished(4, 0.4, 0.9, 0.6, 15.0),
        ];
        assert_eq!(best(&rows, &metric).unwrap().trial, 4);
        let loss = MetricSpec {
            name: Metric::DevLoss,
            goal: None,
        };
        assert_eq!(best(&rows, &loss).unwrap().trial, 1);
    }

    #[test]
    fn csv_round_trip_and_group_by() {
        let dir = tempfile::tempdir().unwrap();
        let mut rows = vec![
            finished(1, 0.1, 0.5, 0.5, 1.0),
            finished(2, 0.1, 0.7, 0.5, 1.0),
            finished(3, 0.2, 0.9, 0.5, 1.0),
        ];
        rows.push(TrialRow {
            trial: 4,
            status: Status::Failed,
            reason: "exit status 101".into(),
            params: rows[0].params.clone(),
            result: None,
            pid: None,
            checkpoint_deleted: false,
            estimate_mb: None,
            retries: 0,
            retry_micro_batch: None,
        });
        write_csv(dir.path(), &rows).unwrap();
        let df = read_csv(dir.path()).unwrap();
        assert_eq!(df.height(), 4);
        let metric = MetricSpec {
            name: Metric::Accuracy,
            goal: None,
        };
        let g = by_parameter(&df, &metric, "learning_rate").unwrap();
        assert_eq!(g.height(), 2);
        let means = g.column("mean_accuracy").unwrap().f64().unwrap().clone();
        let means: Vec<Option<f64>> = (0..means.len()).map(|i| means.get(i)).collect();
        assert!((means[0].unwrap() - 0.6).abs() < 1e-9);
        let trials = g.column("trials").unwrap().u32().unwrap().clone();
        let trials: Vec<Option<u32>> = (0..trials.len()).map(|i| trials.get(i)).collect();
        assert_eq!(
            trials,
            vec![Some(2), Some(1)],
            "the failed trial is not counted"
        );
        let lb = leaderboard(&df, &metric, &["learning_rate".into()]).unwrap();
        let first = lb.column("trial").unwrap().i64().unwrap().clone();
        let first: Vec<Option<i64>> = (0..first.len()).map(|i| first.get(i)).collect();
        assert_eq!(first, vec![Some(3), Some(2), Some(1)]);
    }
}
