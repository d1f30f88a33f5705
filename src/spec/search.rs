//! Search: turns a sweep's parameter spaces into concrete assignments, one per trial.
//!
//! `grid` is the Cartesian product of the value lists (first parameter by name varies slowest);
//! `random` draws `run_cap` assignments from a seeded generator, so a seed always gives the same
//! trials.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::spec::{Domain, SearchMethod, SpecError, SweepSpec};
use crate::util::rng::SplitMix64;

pub type Assignment = BTreeMap<String, Value>;

/// The assignments a sweep will run, in trial order.
pub fn assignments(spec: &SweepSpec, file: &str) -> Result<Vec<Assignment>, SpecError> {
    let domains = domains(spec, file)?;
    match spec.method {
        SearchMethod::Grid => grid(&domains, spec.run_cap, file),
        SearchMethod::Random => Ok(random(&domains, spec.run_cap.unwrap_or(1), spec.seed)),
        // The sampler proposes trials as results arrive (`tpe`); what the checker and the plan
        // see up front are `run_cap` random draws from the same spaces: valid values, not the
        // trials that will run.
        SearchMethod::Bayes => Ok(random(&domains, spec.run_cap.unwrap_or(1), spec.seed)),
    }
}

/// Each parameter's search space, by name.
pub fn domains(spec: &SweepSpec, file: &str) -> Result<Vec<(String, Domain)>, SpecError> {
    let mut domains = Vec::new();
    for (name, p) in &spec.parameters {
        let d = Domain::from_spec(p).map_err(|e| SpecError::Param {
            file: file.to_string(),
            param: name.clone(),
            message: e.0,
        })?;
        domains.push((name.clone(), d));
    }
    Ok(domains)
}

/// The largest grid that runs without an explicit `run_cap`: a bigger one is almost always a
/// mistake (a range of values where one value was meant), and its plan alone takes long.
pub const MAX_GRID: usize = 1000;

/// A parameter a grid cannot enumerate (a continuous or very wide distribution).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter `{param}` has no finite list of values")]
pub struct NotFinite {
    pub param: String,
}

/// How many trials the full grid over these domains has (saturating), or the name of the first
/// parameter that has no finite list of values.
pub fn grid_size(domains: &[(String, Domain)]) -> Result<usize, NotFinite> {
    let mut total: usize = 1;
    for (name, d) in domains {
        let n = match d {
            Domain::Constant(_) => 1,
            Domain::Categorical { values, .. } => values.len(),
            Domain::IntUniform { min, max } if max.saturating_sub(*min) <= 1000 => {
                (max - min + 1) as usize
            }
            _ => {
                return Err(NotFinite {
                    param: name.clone(),
                })
            }
        };
        total = total.saturating_mul(n);
    }
    Ok(total)
}

fn grid(
    domains: &[(String, Domain)],
    run_cap: Option<usize>,
    file: &str,
) -> Result<Vec<Assignment>, SpecError> {
    let total = grid_size(domains).map_err(|e| SpecError::Param {
        file: file.to_string(),
        param: e.param,
        message:
            "grid search needs a finite list: use `values`, or `method: random` for a distribution"
                .into(),
    })?;
    if total > MAX_GRID && run_cap.is_none() {
        return Err(SpecError::Field {
            file: file.to_string(),
            field: "parameters".into(),
            message: format!(
                "the grid has {} trials, more than {MAX_GRID}; set `run_cap` to run only the first ones, use `method: random` with `run_cap`, or list fewer values",
                if total == usize::MAX { "too many".to_string() } else { total.to_string() }
            ),
        });
    }
    let mut lists = Vec::new();
    for (name, d) in domains {
        // grid_size succeeded, so every domain has a finite list.
        lists.push((name, d.grid_values().unwrap_or_default()));
    }
    let count = total.min(run_cap.unwrap_or(usize::MAX));
    // Trial k is k written in mixed radix over the list lengths, the first parameter (by name)
    // the most significant digit: the first parameter varies slowest. Only the trials that run
    // are built, so a capped huge grid costs nothing.
    let out = (0..count)
        .map(|k| {
            let mut rest = k;
            let mut a = Assignment::new();
            for (name, values) in lists.iter().rev() {
                let n = values.len().max(1);
                if let Some(v) = values.get(rest % n) {
                    a.insert((*name).clone(), v.clone());
                }
                rest /= n;
            }
            a
        })
        .collect();
    Ok(out)
}

fn random(domains: &[(String, Domain)], count: usize, seed: u64) -> Vec<Assignment> {
    let mut rng = SplitMix64::new(seed);
    (0..count)
        .map(|_| {
            domains
                .iter()
                .map(|(name, d)| (name.clone(), sample(d, &mut rng)))
                .collect()
        })
        .collect()
}

/// One value of a domain, drawn as random search draws it.
pub fn sample(d: &Domain, rng: &mut SplitMix64) -> Value {
    let quantize = |x: f64, q: f64| (x / q).round() * q;
    match d {
        Domain::Constant(v) => v.clone(),
        Domain::Categorical {
            values,
            probabilities,
        } => match probabilities {
            None => values[rng.below(values.len())].clone(),
            Some(p) => {
                let u = rng.uniform();
                let mut acc = 0.0;
                for (v, w) in values.iter().zip(p) {
                    acc += w;
                    if u < acc {
                        return v.clone();
                    }
                }
                values[values.len() - 1].clone()
            }
        },
        Domain::Uniform { min, max } => Value::from(min + rng.uniform() * (max - min)),
        Domain::IntUniform { min, max } => {
            // Bounds are within ±2^53 (see Domain::from_spec), so this cannot overflow.
            let span = max.saturating_sub(*min).saturating_add(1).max(1) as usize;
            Value::from(min.saturating_add(rng.below(span) as i64))
        }
        Domain::LogUniformValues { min, max } => {
            Value::from((min.ln() + rng.uniform() * (max.ln() - min.ln())).exp())
        }
        Domain::LogUniform { min, max } => Value::from((min + rng.uniform() * (max - min)).exp()),
        Domain::QUniform { min, max, q } => number(quantize(min + rng.uniform() * (max - min), *q)),
        Domain::QLogUniformValues { min, max, q } => number(quantize(
            (min.ln() + rng.uniform() * (max.ln() - min.ln())).exp(),
            *q,
        )),
    }
}

/// Whole numbers as integers, so `epochs` drawn from q_uniform with q 1 is a valid count.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(body: &str) -> SweepSpec {
        SweepSpec::from_yaml(
            &format!("name: t\ndata: {{train: a, dev: b}}\n{body}"),
            "s.yaml",
        )
        .unwrap()
    }

    #[test]
    fn grid_is_the_cartesian_product() {
        let s = spec(
            "parameters:\n  method: {values: [sft, lora]}\n  learning_rate: {values: [0.1, 0.01, 0.001]}\n  epochs: {value: 2}\n",
        );
        let a = assignments(&s, "s.yaml").unwrap();
        assert_eq!(a.len(), 6);
        let mut seen: Vec<String> = a
            .iter()
            .map(|x| format!("{}-{}", x["method"], x["learning_rate"]))
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 6);
        assert!(a.iter().all(|x| x["epochs"] == 2));
        let capped = spec("run_cap: 4\nparameters:\n  method: {values: [sft, lora]}\n  learning_rate: {values: [0.1, 0.01, 0.001]}\n");
        assert_eq!(assignments(&capped, "s.yaml").unwrap().len(), 4);
    }

    #[test]
    fn a_huge_grid_needs_run_cap_and_a_capped_one_is_cheap() {
        let body = "parameters:\n  epochs: {min: 1, max: 1000}\n  batch_size: {min: 1, max: 1000}\n  lora_rank: {min: 1, max: 1000}\n";
        let e = assignments(&spec(body), "s.yaml").unwrap_err().to_string();
        assert!(e.contains("more than 1000") && e.contains("run_cap"), "{e}");
        let capped = assignments(&spec(&format!("run_cap: 3\n{body}")), "s.yaml").unwrap();
        assert_eq!(capped.len(), 3);
        assert_eq!(capped[2]["lora_rank"], 3);
        assert_eq!(capped[2]["epochs"], 1);
    }

    #[test]
    fn grid_refuses_continuous_distributions() {
        let s = spec("parameters:\n  learning_rate: {distribution: uniform, min: 0.1, max: 0.2}\n");
        let e = assignments(&s, "s.yaml").unwrap_err().to_string();
        assert!(
            e.contains("parameters.learning_rate") && e.contains("method: random"),
            "{e}"
        );
    }

    #[test]
    fn random_is_seeded_and_within_bounds() {
        let body = "method: random\nrun_cap: 50\nseed: 3\nparameters:\n  learning_rate: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-3}\n  epochs: {distribution: int_uniform, min: 1, max: 3}\n  batch_size: {values: [4, 8]}\n  warmup: {distribution: q_uniform, min: 0, max: 0.5, q: 0.1}\n";
        let a = assignments(&spec(body), "s.yaml").unwrap();
        let b = assignments(&spec(body), "s.yaml").unwrap();
        assert_eq!(a.len(), 50);
        assert_eq!(a, b, "same seed, same trials");
        let c = assignments(&spec(&body.replace("seed: 3", "seed: 4")), "s.yaml").unwrap();
        assert_ne!(a, c);
        for x in &a {
            let lr = x["learning_rate"].as_f64().unwrap();
            assert!((1e-5..=1e-3).contains(&lr));
            let e = x["epochs"].as_i64().unwrap();
            assert!((1..=3).contains(&e));
        }
        let epochs: std::collections::BTreeSet<i64> =
            a.iter().map(|x| x["epochs"].as_i64().unwrap()).collect();
        assert_eq!(epochs.len(), 3, "all of 1..=3 drawn in 50 trials");
        // Every assignment is a valid trial.
        for x in &a {
            crate::spec::params::TrialParams::from_assignment(x, 3).unwrap();
        }
    }
}
