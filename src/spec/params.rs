//! One trial's full, typed settings: what a sampled assignment of parameters means.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::shape::LORA_TARGETS;

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
    /// A linear head over the last prompt token's final hidden state, all weights trained;
    /// cross-entropy over train's labels (transformers' `*ForSequenceClassification`).
    Classifier,
    /// The same head on a frozen base with low-rank adapters (PEFT's SEQ_CLS layout).
    ClassifierLora,
}

impl Method {
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Sft => "sft",
            Method::Lora => "lora",
            Method::PostPretrain => "post_pretrain",
            Method::Classifier => "classifier",
            Method::ClassifierLora => "classifier_lora",
        }
    }

    /// Whether the method classifies with a head over the prompt (no answer tokens, no label
    /// search) rather than generating the label.
    pub fn is_head(&self) -> bool {
        matches!(self, Method::Classifier | Method::ClassifierLora)
    }

    /// Whether the base is frozen and low-rank adapters train.
    pub fn is_lora(&self) -> bool {
        matches!(self, Method::Lora | Method::ClassifierLora)
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
    /// Longer examples lose prompt tokens from the left; the answer is never cut. A sweep that
    /// does not set it gets `fitted_max_seq_len` (the planner and the checker set it).
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
    /// Let f32 matrix products on a CUDA GPU use TF32 (see `gpu::set_tf32`). Left out of
    /// config.json and results when false, so sweeps written before it resume unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tf32: bool,
    /// Evaluate dev loss and accuracy every so many optimizer steps (and after the last one);
    /// each evaluation is an iteration of `early_terminate`. Default: after every epoch. Left
    /// out of config.json and results when not set, so older sweeps resume unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<u32>,
    /// Which implementation of the model's inner operations trains (see `trainer::ops`): `fused`
    /// (the default) or `composed`, kept to compare against. Left out of config.json and results
    /// when it is the default, so sweeps written before it resume unchanged.
    #[serde(default, skip_serializing_if = "Kernels::is_default")]
    pub kernels: Kernels,
}

/// The `kernels` trial parameter.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Kernels {
    /// One kernel per operation, with its own backward, where the trainer has one for the device.
    #[default]
    Fused,
    /// Every operation composed of candle's elementary tensor ops, as candle's autograd sees them.
    Composed,
}

impl Kernels {
    pub fn is_default(&self) -> bool {
        *self == Kernels::default()
    }

    /// The kernels a trial asking for `self` computes with: the fused ones are CPU kernels, so
    /// on any other device (CUDA) every operation is composed (candle's own kernels). The one
    /// rule the trainer (`ops::effective`) and the memory estimate both follow.
    pub fn on(self, cpu: bool) -> Kernels {
        if cpu {
            self
        } else {
            Kernels::Composed
        }
    }
}

/// The `max_seq_len` of a sweep that does not set it: its longest training example, so no
/// prompt loses its start (where the seed's system prompt lists the classes), within the model's
/// `max_position_embeddings`, and at least the smallest value allowed (8).
pub fn fitted_max_seq_len(longest_example: usize, max_position_embeddings: usize) -> u32 {
    let fitted = longest_example
        .min(max_position_embeddings)
        .max(MIN_SEQ_LEN as usize);
    u32::try_from(fitted).unwrap_or(u32::MAX)
}

/// The smallest `max_seq_len` allowed.
pub const MIN_SEQ_LEN: u32 = 8;

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

/// Why an assignment is not a valid trial, naming the parameter at fault when there is one, so
/// the checker can point at that parameter's line in the sweep file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ParamProblem {
    pub param: Option<String>,
    pub message: String,
}

/// Every parameter name a trial takes (the sweep file's `parameters:` keys).
pub fn parameter_names() -> Vec<String> {
    TrialParams::from_assignment(&BTreeMap::new(), 0)
        .map(|p| {
            // Parameters left out of the map at their default still count: set them otherwise.
            TrialParams {
                tf32: true,
                kernels: Kernels::Composed,
                eval_every: Some(1),
                ..p
            }
            .to_map()
            .into_keys()
            .collect()
        })
        .unwrap_or_default()
}

/// Parameter names from other tools (Hugging Face, W&B examples) and the name sweep uses.
pub const PARAMETER_ALIASES: [(&str, &str); 16] = [
    ("lr", "learning_rate"),
    ("learning-rate", "learning_rate"),
    ("num_epochs", "epochs"),
    ("num_train_epochs", "epochs"),
    ("epoch", "epochs"),
    ("per_device_train_batch_size", "batch_size"),
    ("train_batch_size", "batch_size"),
    ("micro_batch_size", "micro_batch"),
    ("max_length", "max_seq_len"),
    ("max_seq_length", "max_seq_len"),
    ("seq_len", "max_seq_len"),
    ("lora_r", "lora_rank"),
    ("rank", "lora_rank"),
    ("target_modules", "lora_targets"),
    ("warmup_ratio", "warmup"),
    ("max_norm", "max_grad_norm"),
];

/// Serde's type words in plain language.
fn plain_types(message: &str) -> String {
    message
        .replace("expected u32", "expected a whole number >= 0")
        .replace("expected u64", "expected a whole number >= 0")
        .replace("expected f64", "expected a number")
        .replace("expected a sequence", "expected a list")
}

fn to_object<'a>(pairs: impl Iterator<Item = (&'a String, &'a Value)>) -> Value {
    Value::Object(pairs.map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Why the single parameter `name: value` does not read as a trial setting, if it does not.
fn type_problem(name: &String, value: &Value) -> Option<ParamProblem> {
    let e =
        serde_json::from_value::<TrialParams>(to_object(std::iter::once((name, value)))).err()?;
    let msg = e.to_string();
    let message = if msg.starts_with("unknown field") {
        let known = parameter_names();
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        let meant = PARAMETER_ALIASES
            .iter()
            .find(|(alias, _)| alias == name)
            .map(|(_, meant)| format!(" (did you mean `{meant}`?)"))
            .unwrap_or_else(|| crate::util::suggest::suffix(name, &known));
        format!("unknown field `{name}`{meant}; see README for the parameters a trial takes")
    } else {
        format!("{name}: {}", plain_types(&msg))
    };
    Some(ParamProblem {
        param: Some(name.clone()),
        message,
    })
}

impl TrialParams {
    /// Interprets one assignment of parameter values; errors name the parameter.
    pub fn from_assignment(
        assignment: &BTreeMap<String, Value>,
        sweep_seed: u64,
    ) -> Result<Self, ParamProblem> {
        Self::check_assignment(assignment, sweep_seed).map_err(|problems| {
            problems.into_iter().next().unwrap_or_else(|| ParamProblem {
                param: None,
                message: "not a valid trial".into(),
            })
        })
    }

    /// Like `from_assignment`, but returns every problem, each with the parameter at fault.
    pub fn check_assignment(
        assignment: &BTreeMap<String, Value>,
        sweep_seed: u64,
    ) -> Result<Self, Vec<ParamProblem>> {
        let mut p: TrialParams = match serde_json::from_value(to_object(assignment.iter())) {
            Ok(p) => p,
            Err(whole) => {
                // Find the culprits one parameter at a time: types do not depend on each other.
                let mut problems: Vec<ParamProblem> = assignment
                    .iter()
                    .filter_map(|(k, v)| type_problem(k, v))
                    .collect();
                if problems.is_empty() {
                    problems.push(ParamProblem {
                        param: None,
                        message: plain_types(&whole.to_string()),
                    });
                }
                return Err(problems);
            }
        };
        if p.seed.is_none() {
            p.seed = Some(sweep_seed);
        }
        let problems = p.problems();
        if problems.is_empty() {
            Ok(p)
        } else {
            Err(problems
                .into_iter()
                .map(|(param, message)| ParamProblem {
                    param: Some(param.to_string()),
                    message,
                })
                .collect())
        }
    }

    /// Every range problem of the settings, each with the parameter it concerns.
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            out.push((
                "learning_rate",
                format!("learning_rate must be positive, got {}", self.learning_rate),
            ));
        }
        if self.epochs == 0 {
            out.push(("epochs", "epochs must be at least 1".into()));
        }
        if self.batch_size == 0 {
            out.push(("batch_size", "batch_size must be at least 1".into()));
        }
        if self.gpus == 0 {
            out.push(("gpus", "gpus must be at least 1".into()));
        }
        if let Some(m) = self.micro_batch {
            if m == 0 || !self.batch_size.is_multiple_of(m) {
                out.push((
                    "micro_batch",
                    format!("micro_batch {m} must divide batch_size {}", self.batch_size),
                ));
            }
        }
        if self.lora_rank == 0 {
            out.push(("lora_rank", "lora_rank must be at least 1".into()));
        }
        if !(self.lora_alpha > 0.0 && self.lora_alpha.is_finite()) {
            out.push((
                "lora_alpha",
                format!("lora_alpha must be positive, got {}", self.lora_alpha),
            ));
        }
        if let Some(bad) = self
            .lora_targets
            .iter()
            .find(|t| !LORA_TARGETS.contains(&t.as_str()))
        {
            out.push((
                "lora_targets",
                format!(
                    "lora_targets: unknown projection `{bad}`{} (known: {})",
                    crate::util::suggest::suffix(bad, &LORA_TARGETS),
                    LORA_TARGETS.join(", ")
                ),
            ));
        }
        if self.lora_targets.is_empty() {
            out.push(("lora_targets", "lora_targets is empty".into()));
        }
        if self.max_seq_len < MIN_SEQ_LEN {
            out.push(("max_seq_len", "max_seq_len must be at least 8".into()));
        }
        if !(0.0..1.0).contains(&self.warmup) {
            out.push((
                "warmup",
                format!(
                    "warmup is a fraction of steps in [0, 1), got {}",
                    self.warmup
                ),
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            out.push((
                "weight_decay",
                format!(
                    "weight_decay must not be negative, got {}",
                    self.weight_decay
                ),
            ));
        }
        if self.eval_every == Some(0) {
            out.push(("eval_every", "eval_every must be at least 1 (steps)".into()));
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            out.push((
                "max_grad_norm",
                format!(
                    "max_grad_norm must not be negative, got {}",
                    self.max_grad_norm
                ),
            ));
        }
        out
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

    /// The parameters a `to_map` view holds (as journalled).
    pub fn from_map(map: &BTreeMap<String, Value>) -> Result<Self, serde_json::Error> {
        serde_json::from_value(to_object(map.iter()))
    }

    /// Whether two trials compute the same thing. The micro-batch may differ (planned for
    /// another machine's memory, or lowered after an out-of-memory retry): it changes how a step
    /// is computed, not what it computes.
    pub fn same_trial_as(&self, other: &TrialParams) -> bool {
        TrialParams {
            micro_batch: other.micro_batch,
            ..self.clone()
        } == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fused_kernels_are_cpu_kernels() {
        assert_eq!(Kernels::Fused.on(true), Kernels::Fused);
        assert_eq!(Kernels::Composed.on(true), Kernels::Composed);
        assert_eq!(Kernels::Fused.on(false), Kernels::Composed);
    }

    #[test]
    fn every_field_is_a_known_parameter_even_those_left_out_at_their_default() {
        let names = parameter_names();
        for name in [
            "tf32",
            "kernels",
            "eval_every",
            "micro_batch",
            "seed",
            "learning_rate",
        ] {
            assert!(
                names.iter().any(|n| n == name),
                "{name} missing from {names:?}"
            );
        }
        let fields =
            serde_json::to_value(TrialParams::from_assignment(&BTreeMap::new(), 0).unwrap())
                .unwrap();
        assert!(fields
            .as_object()
            .unwrap()
            .keys()
            .all(|k| names.contains(k)));
    }

    #[test]
    fn the_same_trial_may_differ_only_in_micro_batch_and_round_trips_through_its_map() {
        let a = TrialParams::from_assignment(&BTreeMap::new(), 7).unwrap();
        let b = TrialParams::from_map(&a.to_map()).unwrap();
        assert_eq!(a, b);
        let smaller = TrialParams {
            micro_batch: Some(1),
            ..a.clone()
        };
        assert!(a.same_trial_as(&smaller) && smaller.same_trial_as(&a));
        let other = TrialParams {
            learning_rate: a.learning_rate * 2.0,
            ..a.clone()
        };
        assert!(!a.same_trial_as(&other));
    }

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
        let e = TrialParams::from_assignment(&assign(&[("learning_rate", json!(0.0))]), 0)
            .unwrap_err()
            .message;
        assert!(e.contains("learning_rate must be positive"), "{e}");
        let e = TrialParams::from_assignment(&assign(&[("method", json!("dpo"))]), 0)
            .unwrap_err()
            .message;
        assert!(e.contains("unknown variant `dpo`"), "{e}");
        let e = TrialParams::from_assignment(&assign(&[("lerning_rate", json!(0.1))]), 0)
            .unwrap_err()
            .message;
        assert!(e.contains("unknown field `lerning_rate`"), "{e}");
        let e = TrialParams::from_assignment(&assign(&[("epochs", json!(1.5))]), 0)
            .unwrap_err()
            .message;
        assert!(e.contains("invalid type"), "{e}");
        assert!(e.starts_with("epochs:"), "{e}");
    }

    #[test]
    fn every_problem_names_its_parameter() {
        let problems = TrialParams::check_assignment(
            &assign(&[
                ("lr", json!(0.1)),
                ("epochs", json!("two")),
                ("warmup", json!(2.0)),
            ]),
            0,
        )
        .unwrap_err();
        let params: Vec<_> = problems.iter().filter_map(|p| p.param.clone()).collect();
        assert_eq!(params, vec!["epochs", "lr"]);
        assert!(
            problems[1].message.contains("did you mean `learning_rate`"),
            "{problems:?}"
        );
        assert!(parameter_names().contains(&"max_seq_len".to_string()));
    }

    #[test]
    fn max_seq_len_fits_the_longest_example_within_the_model() {
        assert_eq!(fitted_max_seq_len(2400, 8192), 2400);
        assert_eq!(fitted_max_seq_len(2400, 2048), 2048);
        assert_eq!(fitted_max_seq_len(3, 2048), 8);
        assert_eq!(fitted_max_seq_len(0, 0), 8);
    }
}
