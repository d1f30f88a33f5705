//! Accuracy against cost, per training method: for a sweep over `method` (sft, lora, the head
//! methods), each method's best accuracy beside what it costs to train (seconds per epoch,
//! evaluations excluded) and to predict (seconds per evaluation of the dev set), and which
//! method is the cheapest of those within a point of the best. Read from results.csv, so `sweep
//! report`, report.html and the PNGs show the same numbers.

use polars::prelude::*;
use serde::Serialize;

use crate::results::Result;

/// How far below the best accuracy a method may be and still count as as good (one point).
pub const WITHIN: f64 = 0.01;

/// One method's trials, summarised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodCost {
    pub method: String,
    /// Finished and pruned trials of the method.
    pub trials: usize,
    pub best_accuracy: Option<f64>,
    /// The trial with `best_accuracy`.
    pub best_trial: Option<i64>,
    /// Means over the method's trials that measured them.
    pub train_seconds_per_epoch: Option<f64>,
    pub seconds_per_evaluation: Option<f64>,
    /// The most memory any of its trials held.
    pub peak_rss_mb: Option<f64>,
    /// Within `WITHIN` of the best accuracy and the least training time per epoch of those.
    pub cheapest_to_train: bool,
    /// Within `WITHIN` of the best accuracy and the least time per evaluation of those.
    pub cheapest_to_evaluate: bool,
}

/// The index of the lowest `cost` among the items whose accuracy is within `within` of the
/// best accuracy; items without an accuracy or a cost never win. `None` when none qualifies.
pub fn cheapest_within(items: &[(Option<f64>, Option<f64>)], within: f64) -> Option<usize> {
    let best = items
        .iter()
        .filter_map(|(a, _)| *a)
        .filter(|a| a.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    items
        .iter()
        .enumerate()
        .filter(|(_, (a, c))| {
            a.is_some_and(|a| a >= best - within - 1e-12) && c.is_some_and(f64::is_finite)
        })
        .min_by(|(_, x), (_, y)| x.1.unwrap_or(f64::NAN).total_cmp(&y.1.unwrap_or(f64::NAN)))
        .map(|(i, _)| i)
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// One trial's row as the summary reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialCost {
    pub trial: i64,
    pub method: String,
    pub accuracy: Option<f64>,
    pub train_seconds_per_epoch: Option<f64>,
    pub seconds_per_evaluation: Option<f64>,
    pub peak_rss_mb: Option<f64>,
}

/// The summary per method, in the order methods first appear in `trials`.
pub fn summarise(trials: &[TrialCost]) -> Vec<MethodCost> {
    let mut methods: Vec<&str> = Vec::new();
    for t in trials {
        if !methods.contains(&t.method.as_str()) {
            methods.push(&t.method);
        }
    }
    let mut out: Vec<MethodCost> = methods
        .into_iter()
        .map(|m| {
            let own: Vec<&TrialCost> = trials.iter().filter(|t| t.method == m).collect();
            let best = own
                .iter()
                .filter(|t| t.accuracy.is_some_and(f64::is_finite))
                .max_by(|a, b| {
                    a.accuracy
                        .unwrap_or(0.0)
                        .total_cmp(&b.accuracy.unwrap_or(0.0))
                });
            let all = |f: fn(&TrialCost) -> Option<f64>| -> Vec<f64> {
                own.iter()
                    .filter_map(|t| f(t))
                    .filter(|v| v.is_finite())
                    .collect()
            };
            MethodCost {
                method: m.to_string(),
                trials: own.len(),
                best_accuracy: best.and_then(|t| t.accuracy),
                best_trial: best.map(|t| t.trial),
                train_seconds_per_epoch: mean(&all(|t| t.train_seconds_per_epoch)),
                seconds_per_evaluation: mean(&all(|t| t.seconds_per_evaluation)),
                peak_rss_mb: all(|t| t.peak_rss_mb).into_iter().reduce(f64::max),
                cheapest_to_train: false,
                cheapest_to_evaluate: false,
            }
        })
        .collect();
    let pick = |cost: fn(&MethodCost) -> Option<f64>, out: &[MethodCost]| {
        let items: Vec<(Option<f64>, Option<f64>)> =
            out.iter().map(|m| (m.best_accuracy, cost(m))).collect();
        cheapest_within(&items, WITHIN)
    };
    if let Some(i) = pick(|m| m.train_seconds_per_epoch, &out) {
        out[i].cheapest_to_train = true;
    }
    if let Some(i) = pick(|m| m.seconds_per_evaluation, &out) {
        out[i].cheapest_to_evaluate = true;
    }
    out
}

/// The finished and pruned trials of results.csv as the summary reads them; nothing when it has
/// no `method` column.
pub fn trial_costs(df: &DataFrame) -> Result<Vec<TrialCost>> {
    if df.column("method").is_err() {
        return Ok(Vec::new());
    }
    let numbers = |name: &str| -> Result<Vec<Option<f64>>> {
        match df.column(name) {
            Ok(c) => {
                let c = c.cast(&DataType::Float64)?;
                let v = c.f64()?;
                Ok((0..v.len()).map(|i| v.get(i)).collect())
            }
            // Results from before a column existed.
            Err(_) => Ok(vec![None; df.height()]),
        }
    };
    let texts = |name: &str| -> Result<Vec<Option<String>>> {
        let c = df.column(name)?.cast(&DataType::String)?;
        let v = c.str()?;
        Ok((0..v.len()).map(|i| v.get(i).map(String::from)).collect())
    };
    let (status, method) = (texts("status")?, texts("method")?);
    let trial = numbers("trial")?;
    let (accuracy, train, eval, peak) = (
        numbers("accuracy")?,
        numbers("train_seconds_per_epoch")?,
        numbers("seconds_per_evaluation")?,
        numbers("peak_rss_mb")?,
    );
    Ok((0..df.height())
        .filter(|i| matches!(status[*i].as_deref(), Some("finished" | "pruned")))
        .map(|i| TrialCost {
            trial: trial[i].unwrap_or(-1.0) as i64,
            method: method[i].clone().unwrap_or_default(),
            accuracy: accuracy[i],
            train_seconds_per_epoch: train[i],
            seconds_per_evaluation: eval[i],
            peak_rss_mb: peak[i],
        })
        .collect())
}

/// The summary as a table for `sweep report`, with the marks as words.
pub fn table(costs: &[MethodCost]) -> Result<DataFrame> {
    let mark = |m: &MethodCost| {
        let mut words = Vec::new();
        if m.cheapest_to_train {
            words.push("train");
        }
        if m.cheapest_to_evaluate {
            words.push("evaluate");
        }
        words.join(", ")
    };
    let col = |name: &str, f: fn(&MethodCost) -> Option<f64>| {
        Column::new(name.into(), costs.iter().map(f).collect::<Vec<_>>())
    };
    let columns = vec![
        Column::new(
            "method".into(),
            costs.iter().map(|m| m.method.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "trials".into(),
            costs.iter().map(|m| m.trials as i64).collect::<Vec<_>>(),
        ),
        col("best_accuracy", |m| m.best_accuracy),
        Column::new(
            "best_trial".into(),
            costs.iter().map(|m| m.best_trial).collect::<Vec<_>>(),
        ),
        col("train_s_per_epoch", |m| m.train_seconds_per_epoch),
        col("eval_s", |m| m.seconds_per_evaluation),
        col("peak_mb", |m| m.peak_rss_mb),
        Column::new(
            "cheapest_within_1_point_to".into(),
            costs.iter().map(mark).collect::<Vec<_>>(),
        ),
    ];
    Ok(DataFrame::new(costs.len(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(trial: i64, method: &str, acc: f64, train: f64, eval: f64) -> TrialCost {
        TrialCost {
            trial,
            method: method.into(),
            accuracy: Some(acc),
            train_seconds_per_epoch: Some(train),
            seconds_per_evaluation: Some(eval),
            peak_rss_mb: Some(100.0 * trial as f64),
        }
    }

    #[test]
    fn the_cheapest_within_a_point_of_the_best_is_marked() {
        assert_eq!(
            cheapest_within(&[(Some(0.90), Some(5.0)), (Some(0.895), Some(2.0))], 0.01),
            Some(1)
        );
        // More than a point below the best: not a candidate however cheap.
        assert_eq!(
            cheapest_within(&[(Some(0.90), Some(5.0)), (Some(0.88), Some(1.0))], 0.01),
            Some(0)
        );
        // Exactly one point below counts (no rounding error decides it).
        assert_eq!(
            cheapest_within(&[(Some(0.91), Some(5.0)), (Some(0.90), Some(1.0))], 0.01),
            Some(1)
        );
        assert_eq!(cheapest_within(&[(None, Some(1.0))], 0.01), None);
        assert_eq!(cheapest_within(&[(Some(0.5), None)], 0.01), None);

        let trials = [
            t(1, "sft", 0.90, 10.0, 4.0),
            t(2, "sft", 0.80, 12.0, 6.0),
            t(3, "lora", 0.895, 8.0, 4.5),
            t(4, "classifier", 0.86, 6.0, 0.2),
            t(5, "classifier_lora", 0.893, 7.0, 0.3),
        ];
        let s = summarise(&trials);
        let names: Vec<&str> = s.iter().map(|m| m.method.as_str()).collect();
        assert_eq!(names, ["sft", "lora", "classifier", "classifier_lora"]);
        assert_eq!((s[0].trials, s[0].best_trial), (2, Some(1)));
        assert_eq!(s[0].best_accuracy, Some(0.90));
        assert_eq!(s[0].train_seconds_per_epoch, Some(11.0));
        assert_eq!(s[0].seconds_per_evaluation, Some(5.0));
        assert_eq!(s[0].peak_rss_mb, Some(200.0));
        // Within a point of 0.90: sft, lora and classifier_lora; classifier is 4 points below.
        let train: Vec<bool> = s.iter().map(|m| m.cheapest_to_train).collect();
        let eval: Vec<bool> = s.iter().map(|m| m.cheapest_to_evaluate).collect();
        assert_eq!(train, [false, false, false, true]);
        assert_eq!(eval, [false, false, false, true]);
        let table = table(&s).unwrap();
        assert_eq!(table.height(), 4);
        let marks = table.column("cheapest_within_1_point_to").unwrap();
        assert_eq!(marks.get(3).unwrap().get_str(), Some("train, evaluate"));
        assert_eq!(marks.get(0).unwrap().get_str(), Some(""));
    }
}
