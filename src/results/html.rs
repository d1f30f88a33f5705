//! The HTML report (`sweep report DIR --html`, and `report.html` in every results folder,
//! refreshed as trials finish): one self-contained file that opens offline. The data goes in as
//! JSON and Apache ECharts (vendored from npm, `assets/echarts`, Apache-2.0) draws it; the
//! leaderboard, the best trial's per-class table and its confusions are plain HTML tables
//! rendered here (minijinja, escaped), so the page reads without JavaScript.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::protocol::evaluation::{dev_predictions, read_predictions, TestScore};
use crate::protocol::trial::{trial_dir, ProgressEvent};
use crate::results::cost::{self, MethodCost};
use crate::results::{file_at, io_at, level_columns, read_best, read_csv, Result};
use crate::spec::{Domain, Goal, ParamSpec, Score, SweepSpec};
use crate::stats::classify::{classify, level_accuracy, Classification, LevelAccuracy};
use crate::stats::importance::{bins, main_effect};
use crate::util::fs::write_atomic;

/// ECharts 6.1.0 (`assets/echarts/README.md`).
const ECHARTS: &str = include_str!("../../assets/echarts/echarts.min.js");
const TEMPLATE: &str = include_str!("../../assets/report.html.j2");

pub const FILE: &str = "report.html";

/// One trial as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TrialView {
    pub trial: i64,
    pub status: String,
    pub reason: String,
    pub params: Map<String, Value>,
    pub metric: Option<f64>,
    pub accuracy: Option<f64>,
    pub dev_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub best_epoch: Option<i64>,
    pub seconds: Option<f64>,
    pub estimated_mb: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    /// Accuracy at each label level, level 1 first (`data.label_separator`).
    pub accuracy_by_level: Vec<Option<f64>>,
    /// The trial's method (sft, lora, ...), whether swept or not.
    pub method: Option<String>,
    pub train_seconds_per_epoch: Option<f64>,
    pub seconds_per_evaluation: Option<f64>,
    pub best: bool,
    /// Rank among finished trials (1 = best).
    pub rank: Option<usize>,
    /// (step, train loss) per optimizer step.
    pub steps: Vec<(usize, f64)>,
    /// (step, dev loss, accuracy) per evaluation.
    pub evals: Vec<(usize, f64, Option<f64>)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Importance {
    pub param: String,
    /// Share of the metric's variance explained by the parameter's main effect.
    pub share: f64,
    pub levels: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BestView {
    pub trial: i64,
    pub metric: f64,
    pub accuracy: Option<f64>,
    pub test: Option<TestScore>,
    pub dev: Option<Classification>,
    /// The dev predictions' accuracy per label level (`data.label_separator`).
    pub dev_levels: Vec<LevelAccuracy>,
}

/// How a chart's axis shows a swept parameter, from how the sweep file draws it: a log axis for
/// the log-distributed ones, categories for a list of values (batch size 4 and 8 are two values,
/// not a range), a linear axis for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AxisScale {
    Linear,
    Log,
    Category,
}

impl AxisScale {
    /// The axis of a parameter written as `p`; linear for one that does not parse (the checks
    /// refused that sweep; an old results folder may still hold it).
    pub fn of(p: &ParamSpec) -> Self {
        match Domain::from_spec(p) {
            Ok(Domain::LogUniformValues { .. })
            | Ok(Domain::LogUniform { .. })
            | Ok(Domain::QLogUniformValues { .. }) => AxisScale::Log,
            Ok(Domain::Categorical { .. }) | Ok(Domain::Constant(_)) => AxisScale::Category,
            Ok(Domain::Uniform { .. })
            | Ok(Domain::IntUniform { .. })
            | Ok(Domain::QUniform { .. })
            | Err(_) => AxisScale::Linear,
        }
    }
}

/// Everything the page shows.
#[derive(Debug, Clone, Serialize)]
pub struct ReportData {
    pub name: String,
    pub metric: String,
    pub goal: String,
    pub swept: Vec<String>,
    /// Each swept parameter's axis (`AxisScale`).
    pub axes: BTreeMap<String, AxisScale>,
    /// How many label levels results.csv has columns for (0: flat labels).
    pub levels: usize,
    /// Accuracy against cost, per method.
    pub costs: Vec<MethodCost>,
    pub trials: Vec<TrialView>,
    pub importance: Vec<Importance>,
    pub best: Option<BestView>,
    pub method: &'static str,
}

/// How importance is computed, as the page says it.
pub const IMPORTANCE_METHOD: &str = "main-effect variance decomposition (first-order functional ANOVA on the finished trials, no surrogate model): the share of the metric's variance explained by grouping trials by the parameter's value; continuous values are cut into 4 equal-count bins; the rest is interactions and noise";

fn any_to_json(v: AnyValue) -> Value {
    match v {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::from(b),
        AnyValue::Int64(i) => Value::from(i),
        AnyValue::Int32(i) => Value::from(i),
        AnyValue::UInt32(i) => Value::from(i),
        AnyValue::UInt64(i) => Value::from(i),
        AnyValue::Float64(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        AnyValue::Float32(f) => {
            serde_json::Number::from_f64(f as f64).map_or(Value::Null, Value::Number)
        }
        AnyValue::String(s) => Value::from(s),
        AnyValue::StringOwned(s) => Value::from(s.as_str()),
        other => Value::from(other.to_string()),
    }
}

/// The rows of results.csv as JSON objects.
fn rows(df: &DataFrame) -> Vec<Map<String, Value>> {
    (0..df.height())
        .map(|i| {
            df.columns()
                .iter()
                .map(|c| {
                    (
                        c.name().to_string(),
                        c.get(i).map(any_to_json).unwrap_or(Value::Null),
                    )
                })
                .collect()
        })
        .collect()
}

/// Train-loss steps and evaluations from a trial's metrics.jsonl; unreadable lines (one being
/// written) are skipped.
type Steps = Vec<(usize, f64)>;
type Evals = Vec<(usize, f64, Option<f64>)>;

fn curves(path: &Path) -> (Steps, Evals) {
    let (mut steps, mut evals) = (Vec::new(), Vec::new());
    let Ok(text) = std::fs::read_to_string(path) else {
        return (steps, evals);
    };
    for line in text.lines() {
        match serde_json::from_str::<ProgressEvent>(line) {
            Ok(ProgressEvent::Step { step, loss, .. }) => {
                // A resumed trial repeats no step; keep the last value of each.
                steps.retain(|(s, _)| *s != step);
                steps.push((step, loss));
            }
            Ok(ProgressEvent::Epoch(m)) => {
                evals.retain(|(s, _, _)| *s != m.step);
                evals.push((m.step, m.dev_loss, m.accuracy));
            }
            _ => {}
        }
    }
    (steps, evals)
}

/// Parameter importance over finished trials with a metric (see `IMPORTANCE_METHOD`).
pub fn importance(trials: &[TrialView], swept: &[String]) -> Vec<Importance> {
    let done: Vec<&TrialView> = trials
        .iter()
        .filter(|t| t.status == "finished" && t.metric.is_some_and(f64::is_finite))
        .collect();
    let y: Vec<f64> = done.iter().filter_map(|t| t.metric).collect();
    let mut out: Vec<Importance> = swept
        .iter()
        .map(|p| {
            let values: Vec<&Value> = done
                .iter()
                .map(|t| t.params.get(p).unwrap_or(&Value::Null))
                .collect();
            let numbers: Option<Vec<f64>> = values.iter().map(|v| v.as_f64()).collect();
            let levels: Vec<String> = match numbers {
                Some(n) => bins(&n, 4).into_iter().map(|b| b.to_string()).collect(),
                None => values.iter().map(|v| v.to_string()).collect(),
            };
            let mut distinct = levels.clone();
            distinct.sort();
            distinct.dedup();
            Importance {
                param: p.clone(),
                share: main_effect(&levels, &y),
                levels: distinct.len(),
            }
        })
        .collect();
    out.sort_by(|a, b| b.share.total_cmp(&a.share));
    out
}

/// Gathers the report's data from a results folder.
pub fn collect(dir: &Path) -> Result<ReportData> {
    let spec = SweepSpec::read_frozen(&dir.join("spec.yaml"))
        .map_err(|e| file_at(dir, format!("not a results folder ({e})")))?;
    let df = read_csv(dir)?;
    let metric_col = spec.metric.name.column();
    let swept: Vec<String> = spec
        .swept_parameters()
        .into_iter()
        .filter(|p| df.column(p).is_ok())
        .collect();
    let best = read_best(dir).ok();
    let levels = level_columns(&df);
    let num = |r: &Map<String, Value>, k: &str| r.get(k).and_then(Value::as_f64);
    let mut trials: Vec<TrialView> = rows(&df)
        .into_iter()
        .map(|r| {
            let trial = r.get("trial").and_then(Value::as_i64).unwrap_or(-1);
            let (steps, evals) =
                curves(&trial_dir(dir, trial.max(0) as usize).join("metrics.jsonl"));
            TrialView {
                trial,
                status: r
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                reason: r
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                params: swept
                    .iter()
                    .map(|p| (p.clone(), r.get(p).cloned().unwrap_or(Value::Null)))
                    .collect(),
                metric: num(&r, metric_col),
                accuracy: num(&r, "accuracy"),
                dev_loss: num(&r, "dev_loss"),
                test_accuracy: num(&r, "test_accuracy"),
                best_epoch: r.get("best_epoch").and_then(Value::as_i64),
                seconds: num(&r, "seconds"),
                estimated_mb: num(&r, "estimated_mb"),
                peak_rss_mb: num(&r, "peak_rss_mb"),
                accuracy_by_level: levels.iter().map(|c| num(&r, c)).collect(),
                method: r.get("method").and_then(Value::as_str).map(String::from),
                train_seconds_per_epoch: num(&r, "train_seconds_per_epoch"),
                seconds_per_evaluation: num(&r, "seconds_per_evaluation"),
                best: best.as_ref().is_some_and(|b| b.trial as i64 == trial),
                rank: None,
                steps,
                evals,
            }
        })
        .collect();
    // Leaderboard order: the one ranking rule, finished (and pruned) trials first.
    let ranks = |status: &str| status == "finished" || status == "pruned";
    let score = |t: &TrialView| Score {
        value: t.metric,
        dev_loss: t.dev_loss.unwrap_or(f64::NAN),
        seconds: t.seconds.unwrap_or(f64::NAN),
    };
    trials.sort_by(|a, b| {
        (!ranks(&a.status))
            .cmp(&!ranks(&b.status))
            .then_with(|| spec.metric.rank(&score(a), &score(b)))
            .then(a.trial.cmp(&b.trial))
    });
    let mut rank = 0;
    for t in trials.iter_mut().filter(|t| ranks(&t.status)) {
        rank += 1;
        t.rank = Some(rank);
    }
    let importance = importance(&trials, &swept);
    let separator = spec.label_separator();
    let best = best.map(|b| {
        let preds = read_predictions(&dev_predictions(&trial_dir(dir, b.trial))).ok();
        let gold: Vec<&str> = preds
            .iter()
            .flatten()
            .map(|p| p.gold.as_deref().unwrap_or(""))
            .collect();
        let predicted: Vec<&str> = preds
            .iter()
            .flatten()
            .map(|p| p.predicted.as_str())
            .collect();
        BestView {
            trial: b.trial as i64,
            metric: b.value,
            accuracy: b.result.accuracy,
            test: b.test.clone(),
            dev: preds.is_some().then(|| classify(&gold, &predicted)),
            dev_levels: separator
                .map(|s| level_accuracy(&gold, &predicted, s))
                .unwrap_or_default(),
        }
    });
    let axes = swept
        .iter()
        .filter_map(|p| Some((p.clone(), AxisScale::of(spec.parameters.get(p)?))))
        .collect();
    let costs = cost::summarise(&cost::trial_costs(&df)?);
    Ok(ReportData {
        name: spec.name.clone(),
        metric: metric_col.to_string(),
        goal: match spec.metric.goal() {
            Goal::Maximize => "maximize".into(),
            Goal::Minimize => "minimize".into(),
        },
        swept,
        axes,
        levels: levels.len(),
        costs,
        trials,
        importance,
        best,
        method: IMPORTANCE_METHOD,
    })
}

/// The page for `data`.
pub fn render(data: &ReportData) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    env.add_filter("fixed", |v: f64, digits: usize| format!("{v:.digits$}"));
    env.add_filter("trial", |v: i64| format!("{v:04}"));
    let fail = |e: minijinja::Error| file_at(Path::new("assets/report.html.j2"), e);
    env.add_template("report.html", TEMPLATE).map_err(fail)?;
    // `</` never appears inside the script blocks, so neither can end them early.
    let json = serde_json::to_string(data)
        .map_err(|e| file_at(Path::new(FILE), e))?
        .replace("</", "<\\/");
    let script = ECHARTS.replace("</script", "<\\/script");
    env.get_template("report.html")
        .and_then(|t| {
            t.render(minijinja::context! {
                d => minijinja::Value::from(minijinja::value::Serde(data)),
                data_json => minijinja::Value::from_safe_string(json),
                echarts => minijinja::Value::from_safe_string(script),
            })
        })
        .map_err(fail)
}

/// Writes the report of the results folder `dir` to `out` (default `dir/report.html`).
pub fn write(dir: &Path, out: Option<&Path>) -> Result<PathBuf> {
    let data = collect(dir)?;
    let page = render(&data)?;
    let out = out.map_or_else(|| dir.join(FILE), Path::to_path_buf);
    write_atomic(&out, page.as_bytes()).map_err(io_at(&out))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(n: i64, lr: f64, method: &str, metric: f64) -> TrialView {
        TrialView {
            trial: n,
            status: "finished".into(),
            reason: String::new(),
            params: [
                ("learning_rate".to_string(), Value::from(lr)),
                ("method".to_string(), Value::from(method)),
            ]
            .into_iter()
            .collect(),
            metric: Some(metric),
            accuracy: Some(metric),
            dev_loss: Some(1.0),
            test_accuracy: None,
            best_epoch: Some(1),
            seconds: Some(1.0),
            estimated_mb: Some(10.0),
            peak_rss_mb: Some(12.0),
            accuracy_by_level: vec![Some(metric), Some(metric / 2.0)],
            method: Some(method.to_string()),
            train_seconds_per_epoch: Some(2.0),
            seconds_per_evaluation: Some(0.5),
            best: n == 1,
            rank: None,
            steps: vec![(1, 2.0), (2, 1.5)],
            evals: vec![(2, 1.0, Some(metric))],
        }
    }

    #[test]
    fn importance_ranks_the_parameter_that_matters_first() {
        let trials = vec![
            trial(1, 0.1, "sft", 0.9),
            trial(2, 0.1, "lora", 0.9),
            trial(3, 0.01, "sft", 0.3),
            trial(4, 0.01, "lora", 0.3),
        ];
        let imp = importance(&trials, &["method".into(), "learning_rate".into()]);
        assert_eq!(imp[0].param, "learning_rate");
        assert!((imp[0].share - 1.0).abs() < 1e-12);
        assert_eq!(imp[1].share, 0.0);
        assert_eq!(imp[1].levels, 2);
    }

    #[test]
    fn the_page_embeds_the_data_and_escapes_text() {
        let mut t = trial(1, 0.1, "</script><b>x", 0.9);
        t.reason = "<i>oops</i>".into();
        let data = ReportData {
            name: "demo <sweep>".into(),
            metric: "accuracy".into(),
            goal: "maximize".into(),
            swept: vec!["learning_rate".into(), "method".into()],
            axes: BTreeMap::from([
                ("learning_rate".to_string(), AxisScale::Log),
                ("method".to_string(), AxisScale::Category),
            ]),
            levels: 2,
            costs: Vec::new(),
            trials: vec![t],
            importance: vec![],
            best: None,
            method: IMPORTANCE_METHOD,
        };
        let page = render(&data).unwrap();
        assert!(page.contains("demo &lt;sweep&gt;"));
        // In the table escaped; in the JSON no `</` that could end the script early.
        assert!(page.contains("script&gt;&lt;b&gt;x"));
        assert!(page.contains("&lt;i&gt;oops"));
        assert!(!page.contains("</script><b>x"));
        assert!(page.contains("echarts"));
        assert!(
            !page.contains("<script src="),
            "nothing is loaded from elsewhere"
        );
        assert_eq!(
            page.matches("</script>").count(),
            page.matches("<script").count()
        );
        // The axes and the level columns reach the page.
        assert!(page.contains(r#""axes":{"learning_rate":"log","method":"category"}"#));
        assert!(page.contains("<th>accuracy level 2</th>"), "{page}");
    }

    #[test]
    fn axes_follow_how_the_sweep_file_draws_each_parameter() {
        let spec = |yaml: &str| -> ParamSpec { yaml_serde::from_str(yaml).unwrap() };
        for (yaml, scale) in [
            (
                "{distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-3}",
                AxisScale::Log,
            ),
            (
                "{distribution: log_uniform, min: -9, max: -4}",
                AxisScale::Log,
            ),
            (
                "{distribution: q_log_uniform_values, min: 8, max: 256, q: 8}",
                AxisScale::Log,
            ),
            ("{values: [4, 8]}", AxisScale::Category),
            ("{values: [sft, lora]}", AxisScale::Category),
            ("{min: 0.0, max: 0.3}", AxisScale::Linear),
            ("{min: 1, max: 5}", AxisScale::Linear),
            (
                "{distribution: q_uniform, min: 0, max: 10, q: 2}",
                AxisScale::Linear,
            ),
            ("{distribution: bogus}", AxisScale::Linear),
        ] {
            assert_eq!(AxisScale::of(&spec(yaml)), scale, "{yaml}");
        }
    }
}
