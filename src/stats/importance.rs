//! Parameter importance as a main-effect variance decomposition (first-order functional ANOVA,
//! computed on the trials themselves, with no surrogate model): for each parameter, the share of
//! the metric's variance over the finished trials that the parameter's main effect explains,
//!
//! `importance(p) = Σ_v n_v (mean(y | p = v) − mean(y))² / Σ_i (y_i − mean(y))²`,
//!
//! which is the first-order Sobol index (and fANOVA's main-effect fraction) estimated from the
//! groups of trials that share a value of `p`. On a full grid the main effects are orthogonal,
//! so their shares add up to at most 1; what is left is interactions (and noise). Continuous
//! parameters (random search) are first cut into equal-count bins (`bins`), otherwise every
//! trial would be its own group and explain everything.

/// The share of `y`'s variance explained by grouping the trials by `levels` (one per trial):
/// between 0 and 1; 0 when `y` does not vary or there is one group.
pub fn main_effect<L: PartialEq>(levels: &[L], y: &[f64]) -> f64 {
    let n = levels.len().min(y.len());
    if n == 0 {
        return 0.0;
    }
    let mean = y[..n].iter().sum::<f64>() / n as f64;
    let total: f64 = y[..n].iter().map(|v| (v - mean).powi(2)).sum();
    if total <= f64::EPSILON * n as f64 {
        return 0.0;
    }
    let mut groups: Vec<(&L, f64, usize)> = Vec::new();
    for (l, v) in levels.iter().zip(y).take(n) {
        match groups.iter_mut().find(|g| g.0 == l) {
            Some(g) => {
                g.1 += v;
                g.2 += 1;
            }
            None => groups.push((l, *v, 1)),
        }
    }
    let between: f64 = groups
        .iter()
        .map(|(_, sum, count)| *count as f64 * (sum / *count as f64 - mean).powi(2))
        .sum();
    (between / total).clamp(0.0, 1.0)
}

/// Cuts numbers into at most `bins` groups of (nearly) equal counts, by rank; equal values always
/// share a group. Returns each value's group index. With no more distinct values than `bins`,
/// each distinct value is its own group.
pub fn bins(values: &[f64], bins: usize) -> Vec<usize> {
    let mut distinct: Vec<f64> = values.to_vec();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    if distinct.len() <= bins.max(1) {
        return values
            .iter()
            .map(|v| distinct.partition_point(|d| d.total_cmp(v).is_lt()))
            .collect();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    values
        .iter()
        .map(|v| {
            // The rank of the first equal value decides the bin, so ties never split.
            let rank = sorted.partition_point(|s| s.total_cmp(v).is_lt());
            (rank * bins / n).min(bins - 1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_that_decides_everything_explains_everything() {
        let lr = ["a", "a", "b", "b"];
        let bs = [1, 2, 1, 2];
        let y = [0.2, 0.2, 0.8, 0.8];
        assert!((main_effect(&lr, &y) - 1.0).abs() < 1e-12);
        assert_eq!(main_effect(&bs, &y), 0.0);
    }

    #[test]
    fn additive_effects_split_the_variance_by_their_size() {
        // y = 2 * [lr = b] + 1 * [bs = 2] on a full 2 x 2 grid: variances 1 and 0.25 (of 1.25).
        let lr = ["a", "a", "b", "b"];
        let bs = [1, 2, 1, 2];
        let y = [0.0, 1.0, 2.0, 3.0];
        assert!((main_effect(&lr, &y) - 0.8).abs() < 1e-12);
        assert!((main_effect(&bs, &y) - 0.2).abs() < 1e-12);
        // A pure interaction (xor) has no main effect at all.
        let xor = [0.0, 1.0, 1.0, 0.0];
        assert_eq!(main_effect(&lr, &xor), 0.0);
        assert_eq!(main_effect(&bs, &xor), 0.0);
        assert_eq!(main_effect(&lr, &[0.5; 4]), 0.0);
    }

    #[test]
    fn bins_by_rank_and_keep_ties_together() {
        assert_eq!(bins(&[3.0, 1.0, 3.0, 2.0], 5), vec![2, 0, 2, 1]);
        assert_eq!(
            bins(&[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 3),
            vec![0, 0, 1, 1, 2, 2]
        );
        let b = bins(&[1.0, 1.0, 1.0, 1.0, 2.0, 3.0], 2);
        assert!(b[..4].iter().all(|x| *x == b[0]));
    }
}
