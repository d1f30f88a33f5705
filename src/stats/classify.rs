//! Classification metrics from predicted and gold labels, computed the way scikit-learn's
//! `classification_report` does: the classes are those in gold or predicted; a class never
//! predicted has precision 0, one never in gold recall 0 (its `zero_division=0`); macro-F1 is the
//! unweighted mean of the per-class F1.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub label: String,
    /// Examples whose gold label is this class.
    pub support: usize,
    /// Examples predicted as this class.
    pub predicted: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// How often examples of class `gold` were predicted as `predicted` (a mistake: they differ).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    pub gold: String,
    pub predicted: String,
    pub count: usize,
}

/// Everything `sweep eval` reports about a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub examples: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// By label, in label order.
    pub per_class: Vec<ClassMetrics>,
    /// Mistakes by frequency, most frequent first (ties by gold, then predicted label).
    pub confusions: Vec<Confusion>,
}

/// The index of the highest score; the first on ties (as accuracy during training counts it);
/// `None` for an empty list. NaN never wins.
pub fn argmax(scores: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, v) in scores.iter().enumerate() {
        if best.is_none_or(|(_, b)| *v > b) && !v.is_nan() {
            best = Some((i, *v));
        }
    }
    best.map(|(i, _)| i)
        .or(if scores.is_empty() { None } else { Some(0) })
}

/// The `k` highest scores as (index, score), best first; ties keep index order.
pub fn top_k(scores: &[f64], k: usize) -> Vec<(usize, f64)> {
    let mut order: Vec<(usize, f64)> = scores.iter().copied().enumerate().collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    order.truncate(k);
    order
}

/// Softmax of log-scores: each candidate's probability among the candidates.
pub fn softmax(scores: &[f64]) -> Vec<f64> {
    let max = scores
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return vec![0.0; scores.len()];
    }
    let exp: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / total).collect()
}

/// Metrics of `predicted` against `gold`, pair by pair (equal lengths; extra items are ignored).
pub fn classify<S: AsRef<str>>(gold: &[S], predicted: &[S]) -> Classification {
    let n = gold.len().min(predicted.len());
    let mut support: BTreeMap<&str, usize> = BTreeMap::new();
    let mut guessed: BTreeMap<&str, usize> = BTreeMap::new();
    let mut hits: BTreeMap<&str, usize> = BTreeMap::new();
    let mut mistakes: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (g, p) in gold.iter().zip(predicted).take(n) {
        let (g, p) = (g.as_ref(), p.as_ref());
        *support.entry(g).or_default() += 1;
        *guessed.entry(p).or_default() += 1;
        hits.entry(g).or_default();
        hits.entry(p).or_default();
        if g == p {
            *hits.entry(g).or_default() += 1;
        } else {
            *mistakes.entry((g, p)).or_default() += 1;
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_class: Vec<ClassMetrics> = hits
        .iter()
        .map(|(label, tp)| {
            let s = support.get(label).copied().unwrap_or(0);
            let p = guessed.get(label).copied().unwrap_or(0);
            let precision = ratio(*tp, p);
            let recall = ratio(*tp, s);
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            ClassMetrics {
                label: label.to_string(),
                support: s,
                predicted: p,
                precision,
                recall,
                f1,
            }
        })
        .collect();
    let correct: usize = hits.values().sum();
    let macro_f1 = if per_class.is_empty() {
        0.0
    } else {
        per_class.iter().map(|c| c.f1).sum::<f64>() / per_class.len() as f64
    };
    let mut confusions: Vec<Confusion> = mistakes
        .into_iter()
        .map(|((g, p), count)| Confusion {
            gold: g.to_string(),
            predicted: p.to_string(),
            count,
        })
        .collect();
    // Stable: equal counts stay in (gold, predicted) order.
    confusions.sort_by_key(|c| std::cmp::Reverse(c.count));
    Classification {
        examples: n,
        correct,
        accuracy: ratio(correct, n),
        macro_f1,
        per_class,
        confusions,
    }
}

/// Accuracy at one level of labels that have levels (`体育/足球`: level 1 is `体育`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelAccuracy {
    /// 1 for the first part of a label, 2 for the first two, and so on.
    pub level: usize,
    pub correct: usize,
    pub examples: usize,
    pub accuracy: f64,
}

/// The first `k` parts of `label` split at `separator`, with the separators between them (the
/// whole label when it has `k` parts or fewer).
pub fn label_prefix<'a>(label: &'a str, separator: &str, k: usize) -> &'a str {
    if k == 0 {
        return "";
    }
    if separator.is_empty() {
        return label;
    }
    match label.match_indices(separator).nth(k - 1) {
        Some((end, _)) => &label[..end],
        None => label,
    }
}

/// How many levels `label` has: its parts at `separator`.
pub fn label_depth(label: &str, separator: &str) -> usize {
    if separator.is_empty() {
        1
    } else {
        label.matches(separator).count() + 1
    }
}

/// Accuracy at every level of `gold`'s labels, level 1 first, pair by pair as `classify`: a
/// prediction counts at level k when its first k parts equal the gold label's first k (so the
/// level-1 accuracy of a level-2 classifier counts `体育/篮球` for `体育/足球`). A label with fewer
/// than k parts is compared whole, so the deepest level is exact accuracy. Levels run from 1 to
/// the deepest gold label; nothing for no examples or an empty separator.
pub fn level_accuracy<S: AsRef<str>>(
    gold: &[S],
    predicted: &[S],
    separator: &str,
) -> Vec<LevelAccuracy> {
    let n = gold.len().min(predicted.len());
    if n == 0 || separator.is_empty() {
        return Vec::new();
    }
    let depth = gold[..n]
        .iter()
        .map(|g| label_depth(g.as_ref(), separator))
        .max()
        .unwrap_or(1);
    (1..=depth)
        .map(|level| {
            let correct = gold
                .iter()
                .zip(predicted)
                .take(n)
                .filter(|(g, p)| {
                    label_prefix(g.as_ref(), separator, level)
                        == label_prefix(p.as_ref(), separator, level)
                })
                .count();
            LevelAccuracy {
                level,
                correct,
                examples: n,
                accuracy: correct as f64 / n as f64,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_a_hand_computed_example() {
        // gold:      a a a b b c
        // predicted: a a b b c c
        let gold = ["a", "a", "a", "b", "b", "c"];
        let pred = ["a", "a", "b", "b", "c", "c"];
        let m = classify(&gold, &pred);
        assert_eq!((m.examples, m.correct), (6, 4));
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
        let by: BTreeMap<&str, &ClassMetrics> =
            m.per_class.iter().map(|c| (c.label.as_str(), c)).collect();
        // a: tp 2, predicted 2, support 3 -> p 1, r 2/3, f1 0.8
        assert!((by["a"].precision - 1.0).abs() < 1e-12);
        assert!((by["a"].recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((by["a"].f1 - 0.8).abs() < 1e-12);
        // b: tp 1, predicted 2, support 2 -> 0.5, 0.5, 0.5
        assert!((by["b"].f1 - 0.5).abs() < 1e-12);
        // c: tp 1, predicted 2, support 1 -> p 0.5, r 1, f1 2/3
        assert!((by["c"].f1 - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.macro_f1 - (0.8 + 0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert_eq!(m.confusions.len(), 2);
        assert_eq!(
            m.confusions[0],
            Confusion {
                gold: "a".into(),
                predicted: "b".into(),
                count: 1
            }
        );
    }

    #[test]
    fn a_class_never_predicted_or_never_gold_scores_zero_not_nan() {
        let m = classify(&["a", "a", "b"], &["a", "a", "c"]);
        let b = m.per_class.iter().find(|c| c.label == "b").unwrap();
        let c = m.per_class.iter().find(|c| c.label == "c").unwrap();
        assert_eq!((b.precision, b.recall, b.f1), (0.0, 0.0, 0.0));
        assert_eq!((c.support, c.predicted, c.f1), (0, 1, 0.0));
        assert!((m.macro_f1 - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.confusions[0].count, 1);
        let empty = classify::<&str>(&[], &[]);
        assert_eq!((empty.accuracy, empty.macro_f1), (0.0, 0.0));
    }

    #[test]
    fn confusions_are_ordered_by_count() {
        let m = classify(&["a", "a", "b", "b", "b"], &["c", "c", "c", "a", "a"]);
        let counts: Vec<(String, String, usize)> = m
            .confusions
            .iter()
            .map(|c| (c.gold.clone(), c.predicted.clone(), c.count))
            .collect();
        assert_eq!(
            counts,
            vec![
                ("a".into(), "c".into(), 2),
                ("b".into(), "a".into(), 2),
                ("b".into(), "c".into(), 1)
            ]
        );
    }

    #[test]
    fn argmax_top_k_and_softmax() {
        assert_eq!(argmax(&[-1.0, -0.5, -0.5]), Some(1));
        assert_eq!(argmax(&[f64::NEG_INFINITY, f64::NEG_INFINITY]), Some(0));
        assert_eq!(argmax(&[]), None);
        assert_eq!(
            top_k(&[-3.0, -1.0, -2.0, -1.0], 3),
            vec![(1, -1.0), (3, -1.0), (2, -2.0)]
        );
        let p = softmax(&[0.0, (2.0f64).ln()]);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-12 && (p[1] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(softmax(&[f64::NEG_INFINITY]), vec![0.0]);
    }

    #[test]
    fn a_prediction_counts_at_a_level_when_its_first_parts_match() {
        assert_eq!(label_prefix("体育/足球/英超", "/", 1), "体育");
        assert_eq!(label_prefix("体育/足球/英超", "/", 2), "体育/足球");
        assert_eq!(label_prefix("体育/足球/英超", "/", 3), "体育/足球/英超");
        assert_eq!(label_prefix("体育", "/", 2), "体育");
        assert_eq!(label_prefix("a::b", "::", 1), "a");
        assert_eq!(label_depth("a/b/c", "/"), 3);
        assert_eq!(label_depth("a", "/"), 1);
        // gold:      体育/足球 体育/足球 财经/股票 财经/基金 财经
        // predicted: 体育/足球 体育/篮球 财经/基金 体育/足球 财经/股票
        let gold = ["体育/足球", "体育/足球", "财经/股票", "财经/基金", "财经"];
        let pred = [
            "体育/足球",
            "体育/篮球",
            "财经/基金",
            "体育/足球",
            "财经/股票",
        ];
        let levels = level_accuracy(&gold, &pred, "/");
        assert_eq!(levels.len(), 2);
        assert_eq!((levels[0].level, levels[0].correct), (1, 4));
        assert!((levels[0].accuracy - 0.8).abs() < 1e-12);
        // Level 2: only the first is right; `财经` (one part) is compared whole.
        assert_eq!(
            (levels[1].level, levels[1].correct, levels[1].examples),
            (2, 1, 5)
        );
        // The deepest level is exact accuracy.
        assert_eq!(levels[1].accuracy, classify(&gold, &pred).accuracy);
        // A prefix of a part is not the part: `a/bc` is not `a/b` at level 2.
        let l = level_accuracy(&["a/b"], &["a/bc"], "/");
        assert_eq!((l[0].correct, l[1].correct), (1, 0));
        assert!(level_accuracy(&["a/b"], &["a/b"], "").is_empty());
        assert!(level_accuracy::<&str>(&[], &[], "/").is_empty());
        // Labels without the separator: one level, which is accuracy.
        let flat = level_accuracy(&["x", "y"], &["x", "x"], "/");
        assert_eq!(flat.len(), 1);
        assert!((flat[0].accuracy - 0.5).abs() < 1e-12);
    }
}
