//! Memory estimate of a trial before it runs: weights, gradients, optimizer state, activations.
//!
//! Why: the seed's full-SFT job ran out of memory after 30 minutes. Every trial's peak is
//! predicted at plan time from the model's shape and the data's longest sequence, so a trial that
//! can never fit is refused at once and one that fits only with a smaller micro-batch gets it.
//! The activation coefficients count the tensors our forward pass keeps for the backward pass
//! (see `model.rs`), and were checked against measured peaks (`scripts/validate-memory.sh`).

use serde::Serialize;

use crate::spec::params::{Kernels, Method, TrialParams};
use crate::spec::shape::ModelConfig;

/// What the estimate needs to know about a trial.
#[derive(Debug, Clone)]
pub struct Workload<'a> {
    pub config: &'a ModelConfig,
    pub params: &'a TrialParams,
    /// Tokens in the longest training sequence (after truncation to max_seq_len).
    pub longest_sequence: usize,
    /// Positions whose loss counts, per sequence at most: the longest answer for sft/lora, the
    /// whole sequence for post_pretrain.
    pub counted_per_sequence: usize,
    /// When known, the counted positions of every example, longest first: the worst micro-batch
    /// of m examples counts the sum of the first m (padding is never counted).
    pub counted_longest_first: Option<&'a [usize]>,
    /// Bytes per parameter and activation (4 for f32).
    pub bytes_per_value: usize,
    /// On a CUDA device the process also holds a context, cuBLAS workspace and allocator slack.
    pub on_cuda: bool,
    /// Tokens every training sequence starts with (the system prompt): a micro-batch of two or
    /// more computes them once (shared-prefix training), not once per sequence.
    pub shared_prefix: usize,
    /// Tokens of the longest answer when evaluation scores the dev set by label (0 when it does
    /// not): it computes vocabulary rows for at most `MAX_EVAL_BATCH` examples' answers at once.
    pub scored_answer_tokens: usize,
}

/// The most sequences evaluation computes per forward pass (`trainer::scoring`), whatever the
/// micro-batch: what bounds its memory.
pub const MAX_EVAL_BATCH: usize = 64;

/// The parts of a trial's predicted peak, in bytes.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Estimate {
    pub weights: f64,
    pub gradients: f64,
    pub optimizer: f64,
    pub activations: f64,
    /// The process itself: runtime, data, tokenizer.
    pub overhead: f64,
    /// The peak: the larger of loading (sft copies weights into trainable variables) and a
    /// training step.
    pub total: f64,
}

impl Estimate {
    pub fn total_mb(&self) -> f64 {
        self.total / MB
    }
}

pub const MB: f64 = 1024.0 * 1024.0;

/// The most logit values (positions x vocabulary) the fused cross-entropy keeps from its forward
/// for its backward, which then need not compute them again (a sixth of a 135M step's products);
/// above it, the backward recomputes them block by block. 64 Mi values: 256 MiB in f32.
pub const SAVED_LOGITS_MAX_VALUES: usize = 64 << 20;

/// Whether the fused cross-entropy keeps the logits of `positions` x `vocab` for its backward
/// (all of them or none; the estimate counts at most `SAVED_LOGITS_MAX_VALUES`).
pub fn keeps_logits(positions: usize, vocab: usize) -> bool {
    positions.saturating_mul(vocab) <= SAVED_LOGITS_MAX_VALUES
}

/// Resident memory of a trial process before the model (measured: runtime, rayon, data).
const PROCESS_OVERHEAD: f64 = 20.0 * MB;

/// Values (not bytes) alive at the peak of a step, per token and layer, as multiples of the
/// hidden and intermediate sizes, and per attention score, for each implementation of the
/// model's inner operations (`kernels`), fitted to peaks measured with examples/train_speed.rs
/// and `scripts/validate-memory.sh`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Coefficients {
    per_token_hidden: f64,
    per_token_intermediate: f64,
    per_score: f64,
    /// LoRA keeps more output-sized tensors per adapted projection (its delta and the sum).
    per_adapted_output: f64,
    /// Vocabulary-sized values per counted position of a training step.
    per_counted_vocab: f64,
    /// Vocabulary-sized values per answer row evaluation scores at once (logits, log-softmax).
    per_scored_vocab: f64,
    /// Whether the loss keeps its logits for the backward, up to `SAVED_LOGITS_MAX_VALUES`.
    saves_logits: bool,
}

/// Composed ops (candle's autograd of elementary ops; CUDA, or `kernels: composed`): norms keep
/// about 5 hidden-sized tensors each, projections and reshapes 10, rotary positions 8, residuals
/// 2; the MLP 4 intermediate-sized; attention 4 score-sized (scores, masked, probabilities and
/// their gradient); the loss the logits, log-softmax intermediates and their gradients.
const COMPOSED: Coefficients = Coefficients {
    per_token_hidden: 38.0,
    per_token_intermediate: 5.0,
    per_score: 5.0,
    per_adapted_output: 2.0,
    per_counted_vocab: 9.0,
    per_scored_vocab: 0.0,
    saves_logits: false,
};

/// Fused CPU ops (`trainer::ops`): norms, rotary positions and SwiGLU save only their inputs,
/// attention keeps no score-sized tensor (one log-sum-exp per row), and the training loss keeps
/// its logits' exponentials for the backward only up to `SAVED_LOGITS_MAX_VALUES` (counted
/// apart, `saves_logits`); what else is vocabulary-sized is evaluation's label scoring
/// (logits and log-softmax of at most `MAX_EVAL_BATCH` examples' answers at once), which the
/// composed coefficients' training vocabulary already covers. An adapted projection is one op
/// (`ops::lora`) that keeps no tensor of its own. Measured with `train_speed --kernels fused`:
/// the 135M shape at 4 x 128 peaks at 2,943 MiB (sft) and 1,381 MiB (LoRA), against 4,595 and
/// 3,850 composed.
const FUSED: Coefficients = Coefficients {
    per_token_hidden: 7.0,
    per_token_intermediate: 7.0,
    per_score: 0.0,
    per_adapted_output: 0.0,
    per_counted_vocab: 0.0,
    per_scored_vocab: 2.0,
    saves_logits: true,
};

/// The coefficients of the ops a trial trains with (`Kernels::on`: a CUDA trial computes
/// composed).
fn coefficients(w: &Workload) -> Coefficients {
    match w.params.kernels.on(!w.on_cuda) {
        Kernels::Fused => FUSED,
        Kernels::Composed => COMPOSED,
    }
}

/// Trainable parameter count for the method.
pub fn trainable_parameters(config: &ModelConfig, params: &TrialParams) -> usize {
    match params.method {
        // A head method's head (labels x hidden) is left out: small beside the rest, and the
        // label count is the data's, which the shape does not know.
        Method::Sft | Method::PostPretrain | Method::Classifier => config.parameter_count(),
        Method::Lora | Method::ClassifierLora => {
            let r = params.lora_rank as usize;
            let per_layer: usize = params
                .lora_targets
                .iter()
                .map(|t| {
                    let (fan_in, fan_out) = projection_shape(config, t);
                    r * (fan_in + fan_out)
                })
                .sum();
            per_layer * config.num_hidden_layers
        }
    }
}

/// (fan_in, fan_out) of a projection by its HF module name; (0, 0) for an unknown name.
fn projection_shape(c: &ModelConfig, module: &str) -> (usize, usize) {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let kv = c.kv_heads() * c.head_dim();
    match module {
        "q_proj" | "o_proj" => (h, h),
        "k_proj" | "v_proj" => (h, kv),
        "gate_proj" | "up_proj" => (h, i),
        "down_proj" => (i, h),
        _ => (0, 0),
    }
}

/// Predicts the peak memory of a trial on one device at the given micro-batch.
pub fn estimate(w: &Workload, micro_batch: usize) -> Estimate {
    let c = w.config;
    let b = w.bytes_per_value as f64;
    let params = c.parameter_count() as f64;
    let trainable = trainable_parameters(c, w.params) as f64;
    let weights = params * b;
    // Gradients: one buffer per trainable tensor, and a running sum when accumulating.
    let accumulating = w.params.grad_accum() > 1;
    let gradients = trainable * b * if accumulating { 2.0 } else { 1.0 };
    let optimizer = 2.0 * trainable * b;
    let t = w.longest_sequence.max(2) as f64;
    // The shared prefix once, then every sequence's own part (which attends to the prefix too).
    let prefix = if micro_batch >= 2 {
        (w.shared_prefix as f64).min(t - 1.0)
    } else {
        0.0
    };
    let tokens = micro_batch as f64 * (t - prefix) + prefix;
    let adapted_outputs: usize = match w.params.method {
        Method::Lora | Method::ClassifierLora => w
            .params
            .lora_targets
            .iter()
            .map(|t| projection_shape(c, t).1)
            .sum(),
        Method::Sft | Method::PostPretrain | Method::Classifier => 0,
    };
    let k = coefficients(w);
    let per_layer = tokens
        * (k.per_token_hidden * c.hidden_size as f64
            + k.per_token_intermediate * c.intermediate_size as f64
            + k.per_adapted_output * adapted_outputs as f64)
        + k.per_score
            * c.num_attention_heads as f64
            * (micro_batch as f64 * (t - prefix) * t + prefix * prefix);
    let counted = match w.counted_longest_first {
        Some(lengths) if !lengths.is_empty() => likely_counted(lengths, micro_batch),
        _ => micro_batch as f64 * w.counted_per_sequence.max(1) as f64,
    };
    let layers = per_layer * c.num_hidden_layers as f64;
    // Vocabulary-sized rows: a composed training step's loss, or, fused, evaluation's scoring.
    let scored_rows = (micro_batch.min(MAX_EVAL_BATCH) * w.scored_answer_tokens) as f64;
    let saved_logits = if k.saves_logits {
        (counted * c.vocab_size as f64).min(SAVED_LOGITS_MAX_VALUES as f64)
    } else {
        0.0
    };
    // A head method computes no vocabulary-sized rows: one hidden row per sequence meets the
    // head, in training and in evaluation (no label search).
    let vocabulary = if w.params.method.is_head() {
        0.0
    } else {
        (k.per_counted_vocab * counted + k.per_scored_vocab * scored_rows) * c.vocab_size as f64
            + saved_logits
    };
    let activations = (layers + vocabulary + 2.0 * tokens * c.hidden_size as f64) * b;
    let tensors = weights + gradients + optimizer + activations;
    let cuda = |bytes| w.on_cuda.then(|| cuda_process_overhead(bytes));
    let overhead = PROCESS_OVERHEAD + cuda(tensors).unwrap_or(0.0);
    let training = tensors + overhead;
    let loading = match w.params.method {
        Method::Sft | Method::PostPretrain | Method::Classifier => 2.0 * weights,
        Method::Lora | Method::ClassifierLora => weights,
    };
    let loading = loading + PROCESS_OVERHEAD + cuda(loading).unwrap_or(0.0);
    Estimate {
        weights,
        gradients,
        optimizer,
        activations,
        overhead,
        total: training.max(loading),
    }
}

/// Counted positions of a micro-batch of `m` random examples: the mean plus two standard
/// deviations of such a sum, never more than the `m` longest together (the worst batch, which a
/// shuffle almost never draws).
fn likely_counted(lengths: &[usize], m: usize) -> f64 {
    let n = lengths.len() as f64;
    let mean = lengths.iter().sum::<usize>() as f64 / n;
    let var = lengths
        .iter()
        .map(|l| (*l as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let worst = lengths.iter().take(m).sum::<usize>() as f64;
    (m as f64 * mean + 2.0 * (m as f64 * var).sqrt())
        .min(worst)
        .max(1.0)
}

/// The next micro-batch to try after `micro` did not fit: the largest divisor of `batch` at most
/// half of `micro` (a divisor, so every step splits into equal micro-batches), at least 1.
pub fn halved_micro_batch(micro: usize, batch: usize) -> usize {
    (1..=micro / 2)
        .rev()
        .find(|m| batch.is_multiple_of(*m))
        .unwrap_or(1)
}

/// The largest micro-batch that divides `batch` (halving from it) whose estimate fits `limit`
/// bytes, or None when even one example does not fit.
pub fn fitting_micro_batch(w: &Workload, batch: usize, limit: f64) -> Option<usize> {
    let mut micro = w.params.micro_batch().max(1) as usize;
    loop {
        if estimate(w, micro).total <= limit {
            return Some(micro);
        }
        if micro == 1 {
            return None;
        }
        micro = halved_micro_batch(micro, batch);
    }
}

/// What a process holds on each CUDA device beyond its tensors: the context (driver state, the
/// loaded kernel modules of candle, the default stream; a few hundred MiB on recent GPUs with
/// lazy module loading), cuBLAS and cuBLASLt handles with their workspace (32 MiB per handle on
/// Hopper), and the stream-ordered allocator's slack (freed blocks kept in its pool until the
/// stream synchronises, rounding to its granularity), as a fraction of the tensor bytes.
/// These are the budgeted values, not yet measured on a GPU: `sweep gpu-check` measures the peak
/// per process and prints it beside the estimate, which is how they are to be corrected.
pub const CUDA_CONTEXT: f64 = 450.0 * MB;
pub const CUBLAS_WORKSPACE: f64 = 64.0 * MB;
pub const ALLOCATOR_SLACK: f64 = 0.10;

/// Bytes a CUDA device holds beyond `tensor_bytes` of live tensors in one trial process.
pub fn cuda_process_overhead(tensor_bytes: f64) -> f64 {
    CUDA_CONTEXT + CUBLAS_WORKSPACE + ALLOCATOR_SLACK * tensor_bytes.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::{keeps_logits, SAVED_LOGITS_MAX_VALUES};

    #[test]
    fn the_loss_keeps_logits_up_to_the_bound_only() {
        // The 135M benchmark's step: 508 positions of a 49,152 vocabulary (100 MB in f32).
        assert!(keeps_logits(508, 49_152));
        assert!(keeps_logits(SAVED_LOGITS_MAX_VALUES, 1));
        assert!(!keeps_logits(SAVED_LOGITS_MAX_VALUES + 1, 1));
        // Post-pretraining 8 x 512 tokens of Qwen2's vocabulary: 2.5 GB, recomputed instead.
        assert!(!keeps_logits(4096, 151_936));
        assert!(!keeps_logits(usize::MAX, 2), "no overflow");
    }

    use super::*;
    use std::collections::BTreeMap;

    fn params(method: &str, batch: u32) -> TrialParams {
        let a: BTreeMap<String, serde_json::Value> = [
            ("method".to_string(), serde_json::json!(method)),
            ("batch_size".to_string(), serde_json::json!(batch)),
        ]
        .into_iter()
        .collect();
        TrialParams::from_assignment(&a, 0).unwrap()
    }

    #[test]
    fn lora_needs_less_than_sft_and_memory_grows_with_the_batch() {
        let mut cfg = crate::spec::shape::preset("llama-135m").unwrap();
        cfg.vocab_size = 49152;
        let sft = params("sft", 8);
        let lora = params("lora", 8);
        let w = |p| Workload {
            config: &cfg,
            params: p,
            longest_sequence: 128,
            counted_per_sequence: 4,
            counted_longest_first: None,
            bytes_per_value: 4,
            on_cuda: false,
            shared_prefix: 0,
            scored_answer_tokens: 0,
        };
        let (s, l) = (estimate(&w(&sft), 8), estimate(&w(&lora), 8));
        assert!(l.total < s.total);
        // A system prompt of 100 tokens shared by the micro-batch is computed once.
        let shared = Workload {
            shared_prefix: 100,
            ..w(&sft)
        };
        assert!(estimate(&shared, 8).activations < s.activations / 2.0);
        assert_eq!(estimate(&shared, 1).total, estimate(&w(&sft), 1).total);
        assert!(l.optimizer < s.optimizer / 20.0);
        assert!(estimate(&w(&sft), 4).total < s.total);
        // 135M parameters in f32 are about 513 MiB.
        assert!((s.weights / MB - 513.0).abs() < 10.0, "{}", s.weights / MB);
    }

    #[test]
    fn fitting_halves_down_to_one_or_gives_up() {
        let mut cfg = crate::spec::shape::preset("tiny").unwrap();
        cfg.vocab_size = 5000;
        let p = params("post_pretrain", 16);
        let w = Workload {
            config: &cfg,
            params: &p,
            longest_sequence: 64,
            counted_per_sequence: 64,
            counted_longest_first: None,
            bytes_per_value: 4,
            on_cuda: false,
            shared_prefix: 0,
            scored_answer_tokens: 0,
        };
        let full = estimate(&w, 16).total;
        let quarter = estimate(&w, 4).total;
        assert_eq!(fitting_micro_batch(&w, 16, full + 1.0), Some(16));
        assert_eq!(fitting_micro_batch(&w, 16, quarter + 1.0), Some(4));
        assert_eq!(fitting_micro_batch(&w, 16, 1.0), None);
    }

    fn workload_params(method: &str) -> crate::spec::params::TrialParams {
        let a: BTreeMap<String, serde_json::Value> =
            [("method".to_string(), serde_json::json!(method))]
                .into_iter()
                .collect();
        crate::spec::params::TrialParams::from_assignment(&a, 0).expect("valid trial")
    }

    #[test]
    fn a_cuda_device_adds_context_workspace_and_slack_and_the_cpu_nothing() {
        let mut cfg = crate::spec::shape::preset("llama-135m").expect("preset");
        cfg.vocab_size = 49152;
        for method in ["sft", "lora"] {
            // Composed on both devices (a CUDA trial always is), so only the overhead differs.
            let p = TrialParams {
                kernels: Kernels::Composed,
                ..workload_params(method)
            };
            let w = |on_cuda| Workload {
                config: &cfg,
                params: &p,
                longest_sequence: 128,
                counted_per_sequence: 8,
                counted_longest_first: None,
                bytes_per_value: 4,
                on_cuda,
                shared_prefix: 0,
                scored_answer_tokens: 0,
            };
            let (cpu, gpu) = (estimate(&w(false), 8), estimate(&w(true), 8));
            let tensors = cpu.weights + cpu.gradients + cpu.optimizer + cpu.activations;
            let added = gpu.total - cpu.total;
            assert!(
                (added - cuda_process_overhead(tensors)).abs() < 1.0,
                "{method}: {added}"
            );
            // The parts that are tensors do not change; the overhead holds the difference.
            assert_eq!(
                (cpu.weights, cpu.gradients, cpu.optimizer, cpu.activations),
                (gpu.weights, gpu.gradients, gpu.optimizer, gpu.activations)
            );
            assert!(gpu.overhead > CUDA_CONTEXT + CUBLAS_WORKSPACE);
            // A few hundred MiB plus a tenth: on the 135M shape, between 0.5 and 1.5 GiB.
            assert!(
                added > 512.0 * MB && added < 1536.0 * MB,
                "{method}: {}",
                added / MB
            );
        }
    }

    #[test]
    fn fused_kernels_need_less_on_the_cpu_and_change_nothing_on_cuda() {
        let mut cfg = crate::spec::shape::preset("llama-135m").expect("preset");
        cfg.vocab_size = 49152;
        let fused = workload_params("sft");
        let composed = TrialParams {
            kernels: Kernels::Composed,
            ..fused.clone()
        };
        let at = |p: &TrialParams, on_cuda| {
            estimate(
                &Workload {
                    config: &cfg,
                    params: p,
                    longest_sequence: 128,
                    counted_per_sequence: 127,
                    counted_longest_first: None,
                    bytes_per_value: 4,
                    on_cuda,
                    shared_prefix: 0,
                    scored_answer_tokens: 0,
                },
                4,
            )
        };
        // Measured with train_speed at 4 x 128: 2,937 MiB fused, 4,597 composed.
        let (f, c) = (
            at(&fused, false).total_mb(),
            at(&composed, false).total_mb(),
        );
        assert!(f < 0.75 * c, "fused {f} MiB, composed {c} MiB");
        assert!((2900.0..3600.0).contains(&f), "fused {f} MiB");
        assert_eq!(at(&fused, true), at(&composed, true));
    }

    #[test]
    fn the_overhead_grows_with_the_tensors_and_never_goes_below_the_fixed_part() {
        assert_eq!(cuda_process_overhead(-5.0), CUDA_CONTEXT + CUBLAS_WORKSPACE);
        assert!(cuda_process_overhead(1e9) > cuda_process_overhead(1e8));
    }
}
