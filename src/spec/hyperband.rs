//! `early_terminate: {type: hyperband}` as W&B defines it, decided asynchronously (as ASHA does):
//! a trial is judged the moment it reaches a band, against the trials that reached that band
//! before it, and never waits for a band to fill.
//!
//! Bands are counts of evaluations: `min_iter * eta^k` (k = 0, 1, ...), or, from `max_iter` and
//! `s`, `max_iter / eta^k` for k = 1..=s. At a band, the threshold is the value ranked at
//! `floor(n / eta)` among the n values recorded there (lower is better: the metric is negated
//! when maximised), and a trial worse than it stops. W&B's own implementation indexes the
//! history with the loop variable after the loop (wandb/wandb#7156); here the band a trial just
//! reached is the one that is judged, and every judgement is recorded so a resumed sweep makes
//! no decision twice.
//!
//! `strict: true` judges the value at the band itself; otherwise the trial's best value up to
//! the band, so a trial whose last evaluation was noisy is not stopped for it.

/// The settings of `early_terminate` with `type: hyperband`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hyperband {
    pub min_iter: Option<usize>,
    pub max_iter: Option<usize>,
    pub s: usize,
    pub eta: f64,
    pub strict: bool,
}

/// A band setting that can never prune anything.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BandError {
    #[error("eta must be greater than 1, got {0}")]
    Eta(f64),
    #[error("give min_iter, or max_iter with s")]
    NoBands,
    #[error("max_iter {max_iter} / eta^s leaves no band of at least 1 evaluation: raise max_iter or lower s")]
    Empty { max_iter: usize },
}

impl Hyperband {
    /// The bands in evaluations, ascending, at most `limit` of them (bands past a trial's last
    /// evaluation never apply).
    pub fn bands(&self, limit: usize) -> Result<Vec<usize>, BandError> {
        if self.eta.is_nan() || self.eta <= 1.0 {
            return Err(BandError::Eta(self.eta));
        }
        let mut bands = Vec::new();
        match (self.min_iter, self.max_iter) {
            (Some(min_iter), _) => {
                let mut band = min_iter.max(1) as f64;
                while band <= limit as f64 && bands.len() < 64 {
                    bands.push(band as usize);
                    band *= self.eta;
                }
            }
            (None, Some(max_iter)) => {
                let mut band = max_iter as f64;
                for _ in 0..self.s {
                    band /= self.eta;
                    if band < 1.0 {
                        break;
                    }
                    bands.push(band as usize);
                }
                if bands.is_empty() {
                    return Err(BandError::Empty { max_iter });
                }
                bands.sort_unstable();
                bands.dedup();
                bands.retain(|b| *b <= limit);
            }
            (None, None) => return Err(BandError::NoBands),
        }
        Ok(bands)
    }

    /// The value a trial is judged by at a band, from its losses so far (one per evaluation,
    /// lower is better), if it has reached `band` evaluations.
    pub fn judged_value(&self, losses: &[f64], band: usize) -> Option<f64> {
        let reached = losses.get(..band).filter(|l| !l.is_empty())?;
        Some(if self.strict {
            reached[band - 1]
        } else {
            reached.iter().copied().fold(f64::INFINITY, f64::min)
        })
    }

    /// The decision for a trial that reached a band with `value`, when `earlier` are the values
    /// other trials were judged by at that band. The threshold counts the trial's own value, as
    /// W&B's does.
    pub fn judge(&self, value: f64, earlier: &[f64]) -> Judgement {
        let mut all: Vec<f64> = earlier.to_vec();
        all.push(value);
        all.sort_by(f64::total_cmp);
        let index = ((all.len() as f64) / self.eta).floor() as usize;
        let threshold = all[index.min(all.len() - 1)];
        Judgement {
            value,
            threshold,
            stop: value > threshold,
        }
    }
}

/// A band a trial has just been judged at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Due {
    pub band: usize,
    pub judgement: Judgement,
}

impl Hyperband {
    /// The judgements due for a trial now: at every band in `bands` its `losses` (one per
    /// evaluation so far, in order) have reached and that is not in `judged` yet, in band
    /// order, up to the first that stops it. `earlier(band)` gives the values other trials
    /// were judged by at a band. A trial whose `total` evaluations end at the band is never
    /// stopped there: nothing would be saved, and its value still counts for the others.
    pub fn due(
        &self,
        bands: &[usize],
        losses: &[f64],
        judged: &[usize],
        total: usize,
        earlier: impl Fn(usize) -> Vec<f64>,
    ) -> Vec<Due> {
        let mut out = Vec::new();
        for &band in bands {
            if judged.contains(&band) {
                continue;
            }
            let Some(value) = self.judged_value(losses, band) else {
                break;
            };
            let mut judgement = self.judge(value, &earlier(band));
            judgement.stop &= band < total;
            let stop = judgement.stop;
            out.push(Due { band, judgement });
            if stop {
                break;
            }
        }
        out
    }
}

/// One trial at one band.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    pub value: f64,
    pub threshold: f64,
    pub stop: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(min_iter: Option<usize>, max_iter: Option<usize>, s: usize, eta: f64) -> Hyperband {
        Hyperband {
            min_iter,
            max_iter,
            s,
            eta,
            strict: true,
        }
    }

    #[test]
    fn bands_as_w_and_b_documents_them() {
        // W&B's docs: min_iter 3, eta 3 -> brackets at 3, 9, 27, 81 ...
        assert_eq!(
            hb(Some(3), None, 0, 3.0).bands(100).unwrap(),
            vec![3, 9, 27, 81]
        );
        // max_iter 27, s 2, eta 3 -> 27/3 = 9 and 27/9 = 3.
        assert_eq!(hb(None, Some(27), 2, 3.0).bands(100).unwrap(), vec![3, 9]);
        // The docstring example of wandb/sweeps: max_iter 5, eta 2, s 2 -> 1 and 2.
        assert_eq!(hb(None, Some(5), 2, 2.0).bands(100).unwrap(), vec![1, 2]);
        assert_eq!(hb(Some(2), None, 0, 2.0).bands(7).unwrap(), vec![2, 4]);
        assert_eq!(hb(Some(1), None, 0, 1.0).bands(7), Err(BandError::Eta(1.0)));
        assert_eq!(hb(None, None, 0, 3.0).bands(7), Err(BandError::NoBands));
        assert_eq!(
            hb(None, Some(2), 3, 3.0).bands(7),
            Err(BandError::Empty { max_iter: 2 })
        );
    }

    #[test]
    fn the_docstring_example_of_w_and_b_stops_b_and_c() {
        // Losses per evaluation of runs a..e; bands [1, 2] are reached after 2 and 3
        // evaluations in W&B's zero-based indexing, i.e. bands 2 and 3 in evaluations here.
        let rule = hb(None, Some(5), 2, 2.0);
        let runs = [
            ("a", vec![10.0, 9.0]),
            ("b", vec![10.0, 10.0]),
            ("c", vec![10.0, 8.0, 8.0]),
            ("d", vec![10.0, 7.0, 7.0]),
            ("e", vec![10.0, 6.0, 6.0]),
        ];
        // Judged in the order the runs reached each band: a, then e, d, c, b at band 2.
        let at = |band: usize, names: &[&str]| -> Vec<(String, Judgement)> {
            let mut seen = Vec::new();
            let mut out = Vec::new();
            for name in names {
                let losses = &runs.iter().find(|(n, _)| n == name).unwrap().1;
                let v = rule.judged_value(losses, band).unwrap();
                out.push((name.to_string(), rule.judge(v, &seen)));
                seen.push(v);
            }
            out
        };
        let band2 = at(2, &["a", "e", "d", "c", "b"]);
        let stopped: Vec<&str> = band2
            .iter()
            .filter(|(_, j)| j.stop)
            .map(|(n, _)| n.as_str())
            .collect();
        // With all five values in, W&B's threshold at this band is 8 (sorted [6,7,8,9,10][2]):
        // b (10) is stopped; c (8) passes the first band.
        assert_eq!(band2.last().unwrap().1.threshold, 8.0);
        assert!(stopped.contains(&"b"));
        assert!(!stopped.contains(&"c") && !stopped.contains(&"d") && !stopped.contains(&"e"));
        // At the next band c (8) is worse than the threshold of [6, 7, 8]: 7, and stops.
        let band3 = at(3, &["e", "d", "c"]);
        assert_eq!(
            band3[2].1,
            Judgement {
                value: 8.0,
                threshold: 7.0,
                stop: true
            }
        );
        assert!(!band3[1].1.stop, "d (7) is not worse than 7");
    }

    #[test]
    fn the_first_trial_at_a_band_passes_and_a_clearly_bad_one_stops() {
        let rule = hb(Some(1), None, 0, 3.0);
        assert!(!rule.judge(5.0, &[]).stop);
        let j = rule.judge(9.0, &[1.0, 1.1, 1.2]);
        assert!(j.stop);
        assert_eq!(j.threshold, 1.1);
    }

    #[test]
    fn due_judges_each_band_once_and_stops_at_the_first_prune() {
        let rule = hb(Some(1), None, 0, 3.0);
        let bands = rule.bands(9).unwrap();
        assert_eq!(bands, vec![1, 3, 9]);
        let history = |band: usize| match band {
            1 => vec![0.1, 0.2, 0.3],
            _ => vec![],
        };
        // A bad trial at its first evaluation: judged at band 1 and stopped.
        let d = rule.due(&bands, &[5.0], &[], 9, history);
        assert_eq!(d.len(), 1);
        assert!(d[0].judgement.stop && d[0].band == 1);
        // Already judged at band 1: nothing due until band 3.
        assert!(rule.due(&bands, &[5.0, 4.0], &[1], 9, history).is_empty());
        // A trial whose last evaluation is the band is judged but never stopped.
        let d = rule.due(&bands, &[5.0], &[], 1, history);
        assert!(!d[0].judgement.stop && d[0].judgement.value == 5.0);
        // A good trial passes band 1 and, reaching band 3 first, passes it too.
        let d = rule.due(&bands, &[0.05, 0.04, 0.03], &[], 9, history);
        assert_eq!(d.iter().map(|d| d.band).collect::<Vec<_>>(), vec![1, 3]);
        assert!(d.iter().all(|d| !d.judgement.stop));
    }

    #[test]
    fn loose_judging_uses_the_best_value_so_far() {
        let mut rule = hb(Some(1), None, 0, 3.0);
        rule.strict = false;
        let losses = [2.0, 1.0, 3.0];
        assert_eq!(rule.judged_value(&losses, 3), Some(1.0));
        rule.strict = true;
        assert_eq!(rule.judged_value(&losses, 3), Some(3.0));
        assert_eq!(rule.judged_value(&losses, 4), None);
        assert_eq!(rule.judged_value(&losses, 0), None);
    }
}
