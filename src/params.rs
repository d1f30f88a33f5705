//! One trial's full, typed settings: what a sampled assignment of parameters means.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::LORA_TARGETS;

/// The fine-tuning method.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Supervised fine-tuning of all weights; loss on the answer tokens.
    Sft,
    /// Low-rank adapters on a frozen base; loss on the answer tokens.
    Lora,
    /// Continued causal-LM training on all tokens of unlabelled text.
    PostPretrain,
}

impl Method {
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Sft => "sft",
            Method::Lora => "lora",
            Method::PostPretrain => "post_pretrain",
        }
    }
}

/// Every knob of a trial. Names are the sweep file's parameter names; anything not swept takes
/// the default below.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrialParams {
    #[serde(default = "d_method")]
    pub method: Method,
    #[serde(default = "d_lr")]
    pub learning_rate: f64,
    #[serde(default = "d_epochs")]
    pub epochs: u32,
    /// Examples per optimizer step (the effective batch, over all devices and accumulation).
    #[serde(default = "d_batch")]
    pub batch_size: u32,
    /// Examples per forward pass; `batch_size / micro_batch` micro-batches are accumulated.
    /// Default: the whole batch.
    #[serde(default)]
    pub micro_batch: Option<u32>,
    /// Device slots the trial holds.
    #[serde(default = "d_one")]
    pub gpus: u32,
    #[serde(default = "d_rank")]
    pub lora_rank: u32,
    #[serde(default = "d_alpha")]
    pub lora_alpha: f64,
    /// Projections that get adapters. Default: all seven linear projections of each layer.
    #[serde(default = "d_targets")]
    pub lora_targets: Vec<String>,
    /// Longer examples lose prompt tokens from the left; the answer is never cut.
    #[serde(default = "d_seq")]
    pub max_seq_len: u32,
    /// Fraction of optimizer steps spent warming the learning rate up from 0.
    #[serde(default = "d_warmup")]
    pub warmup: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Gradient clipping by global norm; 0 disables.
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    /// Initialisation and data order. Default: the sweep's seed.
    #[serde(default)]
    pub seed: Option<u64>,
}

fn d_method() -> Method {
    Method::Sft
}
fn d_lr() -> f64 {
    1e-3
}
fn d_epochs() -> u32 {
    1
}
fn d_batch() -> u32 {
    8
}
fn d_one() -> u32 {
    1
}
fn d_rank() -> u32 {
    8
}
fn d_alpha() -> f64 {
    16.0
}
fn d_targets() -> Vec<String> {
    LORA_TARGETS.iter().map(|s| s.to_string()).collect()
}
fn d_seq() -> u32 {
    256
}
fn d_warmup() -> f64 {
    0.1
}
fn d_clip() -> f64 {
    1.0
}

impl TrialParams {
    /// Interprets one assignment of parameter values; errors name the parameter.
    pub fn from_assignment(
        assignment: &BTreeMap<String, Value>,
        sweep_seed: u64,
    ) -> Result<Self, String> {
        let object: serde_json::Map<String, Value> = assignment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut p: TrialParams = serde_json::from_value(Value::Object(object)).map_err(|e| {
            let msg = e.to_string();
            if msg.starts_with("unknown field") {
                format!("{msg}; see README for the parameters a trial takes")
            } else {
                msg
            }
        })?;
        if p.seed.is_none() {
            p.seed = Some(sweep_seed);
        }
        p.validate()?;
        Ok(p)
    }

    fn validate(&self) -> Result<(), String> {
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(format!(
                "learning_rate must be positive, got {}",
                self.learning_rate
            ));
        }
        if self.epochs == 0 {
            return Err("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return Err("batch_size must be at least 1".into());
        }
        if self.gpus == 0 {
            return Err("gpus must be at least 1".into());
        }
        if let Some(m) = self.micro_batch {
            if m == 0 || self.batch_size % m != 0 {
                return Err(format!(
                    "micro_batch {m} must divide batch_size {}",
                    self.batch_size
                ));
            }
        }
        if self.lora_rank == 0 {
            return Err("lora_rank must be at least 1".into());
        }
        if let Some(bad) = self
            .lora_targets
            .iter()
            .find(|t| !LORA_TARGETS.contains(&t.as_str()))
        {
            return Err(format!(
                "lora_targets: unknown projection `{bad}` (known: {})",
                LORA_TARGETS.join(", ")
            ));
        }
        if self.lora_targets.is_empty() {
            return Err("lora_targets is empty".into());
        }
        if self.max_seq_len < 8 {
            return Err("max_seq_len must be at least 8".into());
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return Err(format!(
                "warmup is a fraction of steps in [0, 1), got {}",
                self.warmup
            ));
        }
        if self.weight_decay < 0.0 || self.max_grad_norm < 0.0 {
            return Err("weight_decay and max_grad_norm must not be negative".into());
        }
        Ok(())
    }

    pub fn micro_batch(&self) -> u32 {
        self.micro_batch.unwrap_or(self.batch_size)
    }

    pub fn grad_accum(&self) -> u32 {
        self.batch_size / self.micro_batch()
    }

    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(0)
    }

    /// Flat name -> value view (for the journal and results.csv).
    pub fn to_map(&self) -> BTreeMap<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn assign(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn defaults_and_typing() {
        let p = TrialParams::from_assignment(
            &assign(&[
                ("method", json!("lora")),
                ("epochs", json!(3)),
                ("batch_size", json!(8)),
                ("micro_batch", json!(2)),
            ]),
            7,
        )
        .unwrap();
        assert_eq!(p.method, Method::Lora);
        assert_eq!(p.grad_accum(), 4);
        assert_eq!(p.seed(), 7);
        assert_eq!(p.lora_targets.len(), 7);
    }

    #[test]
    fn bad_values_are_explained() {
        let e =
            TrialParams::from_assignment(&assign(&[("learning_rate", json!(0.0))]), 0).unwrap_err();
        assert!(e.contains("learning_rate must be positive"), "{e}");
        let e = TrialParams::from_assignment(&assign(&[("method", json!("dpo"))]), 0).unwrap_err();
        assert!(e.contains("unknown variant `dpo`"), "{e}");
        let e =
            TrialParams::from_assignment(&assign(&[("lerning_rate", json!(0.1))]), 0).unwrap_err();
        assert!(e.contains("unknown field `lerning_rate`"), "{e}");
        let e = TrialParams::from_assignment(&assign(&[("epochs", json!(1.5))]), 0).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
    }
}
