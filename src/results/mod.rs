//! Results derived from the journal: results.csv (one row per trial, built with polars), the best
//! trial's `best/` folder, and the report (leaderboard and per-parameter summaries).
//!
//! The only code that uses polars. It must not start anything (no processes, no training, no
//! model loaded: a test score arrives as a file the run loop's child wrote), never write or read
//! the journal file itself (`state` applies the events the run loop hands it, or that a reader
//! read), and never change a trial's course: it describes what happened, ranking by the spec's
//! one rule (`MetricSpec::rank`) rather than one of its own.

pub mod cost;
pub mod html;
pub mod png;
pub mod report;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde_json::Value;

use crate::protocol::evaluation::TestScore;
use crate::protocol::trial::TrialResult;
use crate::results::state::{BandJudgement, TrialRow};
use crate::spec::{MetricSpec, Score};
use crate::util::fs::{replace_dir, staging_dir, write_atomic};

/// What can go wrong reading or writing a results folder, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error(transparent)]
    Table(#[from] PolarsError),
}

pub type Result<T> = std::result::Result<T, ResultsError>;

pub(crate) fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ResultsError + '_ {
    move |source| ResultsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn file_at(path: &Path, message: impl std::fmt::Display) -> ResultsError {
    ResultsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Rewrites results.csv and, when a trial has finished, best/ from the trials' rows.
pub fn refresh(dir: &Path, rows: &[TrialRow], metric: &MetricSpec) -> Result<()> {
    write_csv_ranked(dir, rows, Some(metric))?;
    if let Some(best) = best(rows, metric) {
        write_best(dir, best, metric)?;
    }
    Ok(())
}

/// Orders trials best first by `MetricSpec::rank`; trials without a result come last.
pub fn compare(a: &TrialRow, b: &TrialRow, metric: &MetricSpec) -> std::cmp::Ordering {
    let unmeasured = Score {
        value: None,
        dev_loss: f64::NAN,
        seconds: f64::NAN,
    };
    let score = |r: &TrialRow| {
        r.result
            .as_ref()
            .map_or(unmeasured, |res| res.score(&metric.name))
    };
    metric.rank(&score(a), &score(b))
}

/// The best finished trial (see `compare`).
pub fn best<'a>(rows: &'a [TrialRow], metric: &MetricSpec) -> Option<&'a TrialRow> {
    rows.iter()
        .filter(|r| {
            r.status.ranks()
                && r.result
                    .as_ref()
                    .and_then(|res| res.metric(&metric.name))
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

/// One row per trial: identity, status, every parameter, then the metrics of the best epoch
/// (and, for the best trial once the sweep has ended, its test accuracy).
pub fn table(rows: &[TrialRow], test: Option<(usize, f64)>) -> Result<DataFrame> {
    table_ranked(rows, test, None)
}

/// [`table`], with a column for the sweep's metric even before any trial reported it (a
/// program's metric is a reported name: the leaderboard needs its column).
pub fn table_ranked(
    rows: &[TrialRow],
    test: Option<(usize, f64)>,
    metric: Option<&MetricSpec>,
) -> Result<DataFrame> {
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
    cols.extend(level_accuracy_columns(rows));
    cols.push(Column::new(
        "test_accuracy".into(),
        rows.iter()
            .map(|r| test.filter(|(t, _)| *t == r.trial).map(|(_, a)| a))
            .collect::<Vec<_>>(),
    ));
    cols.extend(measurement_columns(rows));
    cols.push(Column::new("devices".into(), int(&|r| r.devices as i64)));
    cols.push(Column::new(
        "per_device_batch".into(),
        rows.iter()
            .map(|r| r.result.as_ref()?.per_device_batch.map(i64::from))
            .collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "steps".into(),
        rows.iter()
            .map(|r| r.result.as_ref()?.steps.map(|s| s as i64))
            .collect::<Vec<_>>(),
    ));
    let judged = |f: &dyn Fn(&BandJudgement) -> f64| -> Vec<Option<f64>> {
        rows.iter().map(|r| r.pruned_by().map(f)).collect()
    };
    cols.push(Column::new(
        "pruned_band".into(),
        rows.iter()
            .map(|r| r.pruned_by().map(|j| j.band as i64))
            .collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "pruned_step".into(),
        rows.iter()
            .map(|r| r.pruned_by().map(|j| j.step as i64))
            .collect::<Vec<_>>(),
    ));
    cols.push(Column::new("pruned_value".into(), judged(&|j| j.value)));
    cols.push(Column::new(
        "pruned_threshold".into(),
        judged(&|j| j.threshold),
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
    push_reported_columns(rows, &mut cols);
    if let Some(name) = metric.map(|m| m.name.column()) {
        if !cols.iter().any(|c| c.name().as_str() == name) {
            cols.push(Column::new(name.into(), vec![None::<f64>; rows.len()]));
        }
    }
    Ok(DataFrame::new(rows.len(), cols)?)
}

/// dev_loss ... grad_accum: what a trial measured of itself. The built-in trainer's own
/// measurements are left empty for a program trial (its result holds what it reported) rather
/// than showing a 0 it never measured; its losses are what it reported under those names.
fn measurement_columns(rows: &[TrialRow]) -> Vec<Column> {
    let res = |f: &dyn Fn(&TrialResult) -> Option<f64>| -> Vec<Option<f64>> {
        rows.iter().map(|r| r.result.as_ref().and_then(f)).collect()
    };
    let int = |f: &dyn Fn(&TrialResult) -> i64| -> Vec<Option<i64>> {
        rows.iter().map(|r| r.result.as_ref().map(f)).collect()
    };
    let mut out = Vec::new();
    let trainer = |f: &dyn Fn(&TrialResult) -> f64| -> Vec<Option<f64>> {
        res(&|r| r.reported.is_empty().then(|| f(r)))
    };
    let trainer_int = |f: &dyn Fn(&TrialResult) -> i64| -> Vec<Option<i64>> {
        rows.iter()
            .map(|r| r.result.as_ref().filter(|x| x.reported.is_empty()).map(f))
            .collect()
    };
    let loss = |name: &'static str, f: fn(&TrialResult) -> f64| {
        res(&move |r| match r.reported.is_empty() {
            true => Some(f(r)),
            false => r.reported.get(name).copied(),
        })
    };
    out.push(Column::new(
        "dev_loss".into(),
        loss("dev_loss", |r| r.dev_loss),
    ));
    out.push(Column::new(
        "train_loss".into(),
        loss("train_loss", |r| r.train_loss),
    ));
    out.push(Column::new(
        "best_epoch".into(),
        int(&|r| r.best_epoch as i64),
    ));
    out.push(Column::new("seconds".into(), res(&|r| Some(r.seconds))));
    out.push(Column::new(
        "tokens_per_sec".into(),
        trainer(&|r| r.tokens_per_sec),
    ));
    out.push(Column::new(
        "peak_rss_mb".into(),
        trainer(&|r| r.peak_rss_mb),
    ));
    out.push(Column::new(
        "eval_seconds".into(),
        trainer(&|r| r.eval_seconds),
    ));
    out.push(Column::new(
        "train_seconds_per_epoch".into(),
        res(&|r| r.train_seconds_per_epoch),
    ));
    out.push(Column::new(
        "seconds_per_evaluation".into(),
        res(&|r| r.seconds_per_evaluation),
    ));
    out.push(Column::new(
        "trainable_params".into(),
        trainer_int(&|r| r.trainable_params as i64),
    ));
    out.push(Column::new(
        "micro_batch".into(),
        trainer_int(&|r| r.micro_batch as i64),
    ));
    out.push(Column::new(
        "grad_accum".into(),
        trainer_int(&|r| r.grad_accum as i64),
    ));
    out
}

/// A program's reported numbers at each trial's best evaluation, one column per name (after
/// the others; a name that is already a column is left out).
fn push_reported_columns(rows: &[TrialRow], cols: &mut Vec<Column>) {
    let taken: BTreeSet<String> = cols.iter().map(|c| c.name().to_string()).collect();
    let names: BTreeSet<&String> = rows
        .iter()
        .filter_map(|r| r.result.as_ref())
        .flat_map(|r| r.reported.keys())
        .filter(|k| !taken.contains(k.as_str()))
        .collect();
    for name in names {
        cols.push(Column::new(
            name.as_str().into(),
            rows.iter()
                .map(|r| r.result.as_ref()?.reported.get(name).copied())
                .collect::<Vec<_>>(),
        ));
    }
}

pub const CSV: &str = "results.csv";

/// results.csv's column of the accuracy at label level `level` (1-based): `accuracy_level1`.
pub fn level_column(level: usize) -> String {
    format!("accuracy_level{level}")
}

/// The label-level columns results.csv has, level 1 first.
pub fn level_columns(df: &DataFrame) -> Vec<String> {
    (1..)
        .map(level_column)
        .take_while(|c| df.column(c).is_ok())
        .collect()
}

/// `accuracy_level1`, `accuracy_level2`, ...: as many as the deepest labels of any trial (none
/// for flat labels).
fn level_accuracy_columns(rows: &[TrialRow]) -> Vec<Column> {
    let levels = rows
        .iter()
        .filter_map(|r| r.result.as_ref().map(|x| x.accuracy_by_level.len()))
        .max()
        .unwrap_or(0);
    (1..=levels)
        .map(|level| {
            let values: Vec<Option<f64>> = rows
                .iter()
                .map(|r| r.result.as_ref()?.accuracy_by_level.get(level - 1).copied())
                .collect();
            Column::new(level_column(level).into(), values)
        })
        .collect()
}

/// Columns that come from a trial's result. `micro_batch` is also a parameter; the column shows
/// what the trial really ran with.
const RESULT_COLUMNS: [&str; 2] = ["micro_batch", "grad_accum"];

/// Rewrites results.csv from the rows, atomically.
pub fn write_csv(dir: &Path, rows: &[TrialRow]) -> Result<()> {
    write_csv_ranked(dir, rows, None)
}

/// [`write_csv`] with the sweep's metric's column always there ([`table_ranked`]).
pub fn write_csv_ranked(dir: &Path, rows: &[TrialRow], metric: Option<&MetricSpec>) -> Result<()> {
    let test = read_best(dir)
        .ok()
        .and_then(|b| Some((b.trial, b.test?.accuracy)));
    let mut df = table_ranked(rows, test, metric)?;
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf).finish(&mut df)?;
    write_atomic(&dir.join(CSV), &buf).map_err(io_at(&dir.join(CSV)))
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
    /// Its score on `data.test`, evaluated once when the sweep ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<TestScore>,
}

/// Makes `best/` hold the best trial's checkpoint and best.json. The new folder is assembled
/// beside the old one and swapped in by rename.
pub fn write_best(dir: &Path, row: &TrialRow, metric: &MetricSpec) -> Result<()> {
    let Some(result) = row.result.as_ref() else {
        return Err(file_at(dir, format!("trial {} has no result", row.trial)));
    };
    let best_dir = dir.join("best");
    if let Ok(text) = std::fs::read_to_string(best_dir.join("best.json")) {
        if let Ok(old) = serde_json::from_str::<BestTrial>(&text) {
            if old.trial == row.trial {
                return Ok(());
            }
        }
    }
    let tmp = staging_dir(&best_dir).map_err(io_at(&best_dir))?;
    let best_checkpoint = std::fs::canonicalize(dir)
        .unwrap_or_else(|_| dir.to_path_buf())
        .join("best")
        .join("checkpoint");
    // A folder (the built-in trainer's, or a program's) is copied; a program's file is copied
    // into `checkpoint/`; a path that is not there (a program's, on another machine) is named.
    let checkpoint = if result.checkpoint.is_dir() {
        copy_dir(&result.checkpoint, &tmp.join("checkpoint")).map_err(io_at(&result.checkpoint))?;
        best_checkpoint
    } else if let (true, Some(name)) = (result.checkpoint.is_file(), result.checkpoint.file_name())
    {
        std::fs::create_dir_all(tmp.join("checkpoint"))
            .and_then(|()| std::fs::copy(&result.checkpoint, tmp.join("checkpoint").join(name)))
            .map_err(io_at(&result.checkpoint))?;
        best_checkpoint.join(name)
    } else {
        result.checkpoint.clone()
    };
    let best = BestTrial {
        trial: row.trial,
        metric: metric.name.column().to_string(),
        value: result.metric(&metric.name).unwrap_or(f64::NAN),
        params: row.params.clone(),
        result: result.clone(),
        checkpoint,
        test: None,
    };
    let best_json = tmp.join("best.json");
    let bytes = serde_json::to_vec_pretty(&best).map_err(|e| file_at(&best_json, e))?;
    std::fs::write(&best_json, bytes).map_err(io_at(&best_json))?;
    replace_dir(&tmp, &best_dir).map_err(io_at(&best_dir))?;
    Ok(())
}

/// Records the best trial's test score in best.json (results.csv and the report show it from
/// there). `trial` must still be the best one.
pub fn record_test(dir: &Path, trial: usize, score: TestScore) -> Result<()> {
    let mut best = read_best(dir)?;
    let path = dir.join("best").join("best.json");
    if best.trial != trial {
        return Err(file_at(
            &path,
            format!("trial {trial} is no longer the best"),
        ));
    }
    best.test = Some(score);
    let bytes = serde_json::to_vec_pretty(&best).map_err(|e| file_at(&path, e))?;
    write_atomic(&path, &bytes).map_err(io_at(&path))
}

pub fn read_best(dir: &Path) -> Result<BestTrial> {
    let path = dir.join("best").join("best.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|_| file_at(&path, "no best trial yet (has any trial finished?)"))?;
    serde_json::from_str(&text).map_err(|e| file_at(&path, format!("unreadable: {e}")))
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
    df.map_err(|e| file_at(&path, e))
}

/// The leaderboard: finished and pruned trials (a pruned one with its best evaluation before it
/// stopped), best first.
pub fn leaderboard(df: &DataFrame, metric: &MetricSpec, params: &[String]) -> Result<DataFrame> {
    let m = metric.name.column();
    let mut names: Vec<&str> = vec!["trial", "status"];
    names.extend(params.iter().map(String::as_str));
    let levels = level_columns(df);
    let mut shown = vec![m, "accuracy"];
    shown.extend(levels.iter().map(String::as_str));
    shown.extend([
        "test_accuracy",
        "dev_loss",
        "best_epoch",
        "seconds",
        "train_seconds_per_epoch",
        "seconds_per_evaluation",
    ]);
    for c in shown {
        // test_accuracy only in results written since `data.test` exists.
        if !names.contains(&c) && df.column(c).is_ok() {
            names.push(c);
        }
    }
    let cols: Vec<Expr> = names.into_iter().map(col).collect();
    let finished = df
        .clone()
        .lazy()
        .filter(
            col("status")
                .eq(lit("finished"))
                .or(col("status").eq(lit("pruned"))),
        )
        .select(cols)
        .collect()?;
    // Sorted by the one ranking rule (`MetricSpec::rank`), not by a polars sort that restates it.
    let numbers = |name: &str| -> Result<Vec<Option<f64>>> {
        let column = finished.column(name)?.cast(&DataType::Float64)?;
        let values = column.f64()?;
        Ok((0..values.len()).map(|i| values.get(i)).collect())
    };
    let (values, losses, seconds) = (numbers(m)?, numbers("dev_loss")?, numbers("seconds")?);
    let score = |i: usize| Score {
        value: values[i],
        dev_loss: losses[i].unwrap_or(f64::NAN),
        seconds: seconds[i].unwrap_or(f64::NAN),
    };
    let mut order: Vec<usize> = (0..finished.height()).collect();
    order.sort_by(|a, b| metric.rank(&score(*a), &score(*b)));
    let order = IdxCa::from_vec(
        "order".into(),
        order.into_iter().map(|i| i as IdxSize).collect(),
    );
    Ok(finished.take(&order)?)
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
    use crate::results::state::Status;
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
                reported: Default::default(),
                best_epoch: 1,
                accuracy: Some(acc),
                dev_loss: loss,
                train_loss: loss,
                seconds: secs,
                tokens_per_sec: 1.0,
                peak_rss_mb: 1.0,
                eval_seconds: 1.0,
                accuracy_by_level: Vec::new(),
                train_seconds_per_epoch: Some(secs / 2.0),
                seconds_per_evaluation: Some(secs / 10.0),
                trainable_params: 10,
                micro_batch: 4,
                grad_accum: 1,
                devices: 1,
                per_device_batch: Some(4),
                best_step: None,
                steps: None,
                checkpoint: PathBuf::from("x"),
            }),
            handle: None,
            checkpoint_deleted: false,
            estimate_mb: None,
            retries: 0,
            retry_micro_batch: None,
            judgements: Vec::new(),
            assignment: None,
        }
    }

    #[test]
    fn a_program_trial_leaves_the_trainers_measurements_empty_not_zero() {
        let mut program = finished(1, 0.1, 0.8, 0.0, 1.0);
        let result = program.result.as_mut().unwrap();
        result.reported = [("val_loss".to_string(), 0.4), ("dev_loss".to_string(), 0.3)]
            .into_iter()
            .collect();
        (result.tokens_per_sec, result.trainable_params) = (0.0, 0);
        let df = table(&[program, finished(2, 0.1, 0.8, 0.5, 1.0)], None).unwrap();
        let f64s = |name: &str| -> Vec<Option<f64>> {
            df.column(name).unwrap().f64().unwrap().iter().collect()
        };
        assert_eq!(f64s("tokens_per_sec"), [None, Some(1.0)]);
        assert_eq!(f64s("dev_loss"), [Some(0.3), Some(0.5)], "what it reported");
        assert_eq!(f64s("train_loss"), [None, Some(0.5)], "it reported none");
        assert_eq!(f64s("val_loss"), [Some(0.4), None]);
        let params: Vec<Option<i64>> = df
            .column("trainable_params")
            .unwrap()
            .i64()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(params, [None, Some(10)]);
    }

    #[test]
    fn best_breaks_ties_by_loss_then_time() {
        let metric = MetricSpec {
            name: crate::spec::MetricName::Builtin(Metric::Accuracy),
            goal: None,
            target: None,
        };
        let rows = vec![
            finished(1, 0.1, 0.8, 0.5, 10.0),
            finished(2, 0.2, 0.9, 0.7, 10.0),
            finished(3, 0.3, 0.9, 0.6, 20.0),
            finished(4, 0.4, 0.9, 0.6, 15.0),
        ];
        assert_eq!(best(&rows, &metric).unwrap().trial, 4);
        let loss = MetricSpec {
            name: crate::spec::MetricName::Builtin(Metric::DevLoss),
            goal: None,
            target: None,
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
            handle: None,
            checkpoint_deleted: false,
            estimate_mb: None,
            retries: 0,
            retry_micro_batch: None,
            judgements: Vec::new(),
            assignment: None,
        });
        write_csv(dir.path(), &rows).unwrap();
        let df = read_csv(dir.path()).unwrap();
        assert_eq!(df.height(), 4);
        let metric = MetricSpec {
            name: crate::spec::MetricName::Builtin(Metric::Accuracy),
            goal: None,
            target: None,
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
        // The cost columns come back for the per-method summary; the failed trial is left out.
        let costs = cost::trial_costs(&df).unwrap();
        assert_eq!(costs.len(), 3);
        assert_eq!(costs[0].method, "sft");
        assert_eq!(costs[0].train_seconds_per_epoch, Some(0.5));
        assert_eq!(costs[2].seconds_per_evaluation, Some(0.1));
        let summary = cost::summarise(&costs);
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].best_accuracy, Some(0.9));
        assert!(summary[0].cheapest_to_train && summary[0].cheapest_to_evaluate);
    }

    #[test]
    fn label_levels_get_a_column_each() {
        let dir = tempfile::tempdir().unwrap();
        let mut rows = vec![
            finished(1, 0.1, 0.5, 0.5, 1.0),
            finished(2, 0.1, 0.7, 0.5, 1.0),
        ];
        if let Some(r) = rows[1].result.as_mut() {
            r.accuracy_by_level = vec![0.9, 0.7];
        }
        write_csv(dir.path(), &rows).unwrap();
        let df = read_csv(dir.path()).unwrap();
        assert_eq!(level_columns(&df), ["accuracy_level1", "accuracy_level2"]);
        let level1 = df.column("accuracy_level1").unwrap().f64().unwrap().clone();
        assert_eq!((level1.get(0), level1.get(1)), (None, Some(0.9)));
        let metric = MetricSpec {
            name: crate::spec::MetricName::Builtin(Metric::Accuracy),
            goal: None,
            target: None,
        };
        let lb = leaderboard(&df, &metric, &[]).unwrap();
        assert!(lb.column("accuracy_level2").is_ok());
        // Flat labels: no level columns.
        write_csv(dir.path(), &rows[..1]).unwrap();
        assert!(level_columns(&read_csv(dir.path()).unwrap()).is_empty());
    }
}
