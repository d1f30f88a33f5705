//! Search: turns a sweep's parameter spaces into concrete assignments, one per trial.
//!
//! `grid` is the Cartesian product of the value lists (first parameter by name varies slowest);
//! `random` draws `run_cap` assignments from a seeded generator, so a seed always gives the same
//! trials.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::rng::SplitMix64;
use crate::spec::{Domain, SearchMethod, SpecError, SweepSpec};

pub type Assignment = BTreeMap<String, Value>;

/// The assignments a sweep will run, in trial order.
pub fn assignments(spec: &SweepSpec, file: &str) -> Result<Vec<Assignment>, SpecError> {
    let mut domains = Vec::new();
    for (name, p) in &spec.parameters {
        let d = Domain::from_spec(p).map_err(|message| SpecError::Param {
            file: file.to_string(),
            param: name.clone(),
            message,
        })?;
        domains.push((name.clone(), d));
    }
    match spec.method {
        SearchMethod::Grid => grid(&domains, spec.run_cap, file),
        SearchMethod::Random => Ok(random(&domains, spec.run_cap.unwrap_or(1), spec.seed)),
    }
}

fn grid(
    domains: &[(String, Domain)],
    run_cap: Option<usize>,
    file: &str,
) -> Result<Vec<Assignment>, SpecError> {
    let mut lists = Vec::new();
    for (name, d) in domains {
        let values = d.grid_values().ok_or_else(|| SpecError::Param {
            file: file.to_string(),
            param: name.clone(),
            message: "grid search needs a finite list: use `values`, or `method: random` for a distribution".into(),
        })?;
        lists.push((name, values));
    }
    let mut out: Vec<Assignment> = vec![Assignment::new()];
    for (name, values) in &lists {
        let mut next = Vec::with_capacity(out.len() * values.len());
        for partial in &out {
            for v in values {
                let mut a = partial.clone();
                a.insert((*name).clone(), v.clone());
                next.push(a);
            }
        }
        out = next;
    }
    if let Some(cap) = run_cap {
        out.truncate(cap);
    }
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

fn sample(d: &Domain, rng: &mut SplitMix64) -> Value {
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
            Value::from(min + rng.below((max - min + 1) as usize) as i64)
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
            crate::params::TrialParams::from_assignment(x, 3).unwrap();
        }
    }
}
