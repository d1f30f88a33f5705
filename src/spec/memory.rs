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
    /// The weights come from a model folder's safetensors, which loading maps into memory: every
    /// page of the file is resident while its tensors are copied out (a preset's random weights
    /// have no file).
    pub mapped_weights: bool,
}

/// The most sequences evaluation computes per forward pass (`trainer::scoring`), whatever the
/// micro-batch: what bounds its memory.
pub const MAX_EVAL_BATCH: usize = 64;

/// Tokens an evaluation's forward pass holds per token of a training micro-batch. A training step
/// keeps every layer's activations for the backward pass (the fused kernels' 7 hidden- and 7
/// intermediate-sized values per token and layer); a forward pass keeps only each layer's keys
/// and values (2 key/value-sized values per token and layer) and one layer's intermediates at a
/// time, about a twentieth on the 135M shape. Eight times a micro-batch's tokens lets label
/// scoring put many dev examples in one pass (the fixed cost of a pass, reading every weight,
/// is shared) and stays well under the training step's memory (`evaluation_activations`).
pub const EVAL_TOKENS_PER_TRAINING_TOKEN: usize = 8;

/// Tokens one forward pass of evaluation's label scoring holds for a trial of `micro_batch`
/// sequences of up to `max_len` tokens.
pub fn eval_tokens_per_pass(micro_batch: usize, max_len: usize) -> usize {
    EVAL_TOKENS_PER_TRAINING_TOKEN * micro_batch.max(1) * max_len.max(1)
}

/// The parts of a trial's predicted peak, in bytes.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Estimate {
    pub weights: f64,
    pub gradients: f64,
    pub optimizer: f64,
    pub activations: f64,
    /// What an evaluation's forward pass holds at once (keys and values of every layer, one
    /// layer's intermediates, vocabulary rows), besides the weights, gradients and optimizer
    /// state that stay allocated while it runs.
    pub evaluation: f64,
    /// The process itself: runtime, data, tokenizer, what the allocator keeps.
    pub overhead: f64,
    /// The peak: the largest of loading (a model folder's mapped file while its tensors are
    /// copied out; sft's copy into trainable variables), a training step and an evaluation.
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

/// Resident memory of a trial process besides its tensors (runtime, rayon, data, tokenizer,
/// encoded sequences, allocator arenas). Measured with examples/memory_phases.rs on the 135M
/// shape: 553 MiB resident after loading LoRA against 513 MiB of weights.
const PROCESS_OVERHEAD: f64 = 40.0 * MB;

/// What the CPU allocator keeps beyond the live tensors of a step that trains every weight, as
/// a fraction of the trainable bytes: freed copies (the loaded weights, once copied into
/// trainable variables; the step's gradient temporaries) that stay in malloc's arenas.
/// Measured with examples/memory_phases.rs on the 135M shape: sft peaks 120 to 160 MiB above
/// the live tensors at micro-batch 1 and 2 (LoRA, whose trainable part is small, not at all).
const CPU_RETAINED_PER_TRAINABLE_BYTE: f64 = 0.3;

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
    /// Whether the loss keeps its logits for the backward, up to `SAVED_LOGITS_MAX_VALUES`.
    saves_logits: bool,
    /// Values per query and key/value head and per unit of head width beyond Llama's
    /// (hidden_size / heads): a head_dim of its own (Qwen3, ERNIE 4.5) widens the projections'
    /// outputs, their transposed copies, the rotated queries and keys and the attention output
    /// that the step keeps. The other coefficients were fitted on Llama's heads, where this is 0.
    per_widened_head_value: f64,
    /// Values each of Qwen3's head norms keeps per query and key value.
    per_head_norm_value: f64,
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
    saves_logits: false,
    // Not measured (CUDA trials compute composed): the fused fit scaled as `per_token_hidden`
    // scales (38 / 8), and a composed norm's 5 tensors.
    per_widened_head_value: 14.0,
    per_head_norm_value: 5.0,
};

/// Fused CPU ops (`trainer::ops`): norms, rotary positions and SwiGLU save only their inputs,
/// attention keeps no score-sized tensor (one log-sum-exp per row), and the training loss keeps
/// its logits' exponentials for the backward only up to `SAVED_LOGITS_MAX_VALUES` (counted
/// apart, `saves_logits`; evaluation's vocabulary rows are `evaluation_activations`'). An
/// adapted projection is one op (`ops::lora`) that keeps no tensor of its own. Measured with
/// `train_speed --kernels fused`: the 135M shape at 4 x 128 peaks at 2,943 MiB (sft) and 1,381
/// MiB (LoRA), against 4,595 and 3,850 composed; per token, 8 hidden- and 7.5
/// intermediate-sized values per layer fit the LoRA peaks of examples/memory_phases.rs at
/// micro-batch 1, 2 and 8 (1.6 to 1.9 MiB a token on the 135M shape). On the same shape with
/// Qwen3's heads of 128 (`scripts/validate-memory.sh OUT qwen3`), a LoRA step at micro-batch 8
/// peaked 3,830 values a token and layer above the Llama-fitted estimate: the head norms' 1,536
/// (one value per query and key value) and 3 per widened head value (12 heads, 64 wider).
const FUSED: Coefficients = Coefficients {
    per_token_hidden: 8.0,
    per_token_intermediate: 7.5,
    per_score: 0.0,
    per_adapted_output: 0.0,
    per_counted_vocab: 0.0,
    saves_logits: true,
    per_widened_head_value: 3.0,
    per_head_norm_value: 1.0,
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

/// (fan_in, fan_out) of a projection by its HF module name; (0, 0) for an unknown name. The
/// shape's own rule, so a head_dim of its own (Qwen3, ERNIE) is counted as the model has it.
fn projection_shape(c: &ModelConfig, module: &str) -> (usize, usize) {
    c.projection_shape(module)
}

/// Values per token and layer a training step keeps beyond what Llama's block of the same
/// hidden and intermediate sizes keeps (what `per_token_hidden` and `per_token_intermediate`
/// were fitted to): wider heads than hidden_size / heads (never counted narrower: the fit is
/// not checked below Llama's), Qwen3's query and key norms, ERNIE 4.5's de-interleaved copies
/// of the queries and keys (one value each, both kernels), and a biased projection's output
/// besides the product it is added to. A frozen bias (LoRA) costs one more: the autograd's
/// backward of the broadcast add keeps a gradient the bias's full output size for the untracked
/// bias until the step ends (candle's `GradStore::or_insert`), where a trained one's is summed
/// into the bias. Measured on the 135M shape (`scripts/validate-memory.sh OUT new`): ERNIE 4.5
/// with `use_bias` peaked 6,134 values a token and layer above Qwen3 in sft at micro-batch 8
/// (its biased outputs are 6,144) and about twice that in LoRA.
fn family_values_per_token(c: &ModelConfig, k: &Coefficients, method: Method) -> f64 {
    let heads = (c.num_attention_heads + c.kv_heads()) as f64;
    let llama_head = (c.hidden_size / c.num_attention_heads.max(1)) as f64;
    let widened = k.per_widened_head_value * heads * (c.head_dim() as f64 - llama_head).max(0.0);
    let query_and_key_values = heads * c.head_dim() as f64;
    let head_norms = if c.has_qk_norm() {
        k.per_head_norm_value * query_and_key_values
    } else {
        0.0
    };
    let deinterleaved = if c.interleaved_rope() {
        query_and_key_values
    } else {
        0.0
    };
    let biased_outputs: usize = crate::spec::shape::LORA_TARGETS
        .iter()
        .filter(|m| c.has_bias(m))
        .map(|m| projection_shape(c, m).1)
        .sum();
    let outputs_per_bias = match method {
        Method::Lora | Method::ClassifierLora => 2.0,
        Method::Sft | Method::PostPretrain | Method::Classifier => 1.0,
    };
    widened + head_norms + deinterleaved + outputs_per_bias * biased_outputs as f64
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
    let activations = training_activations(w, micro_batch) * b;
    let evaluation = evaluation_activations(w, micro_batch) * b;
    let tensors = weights + gradients + optimizer + activations.max(evaluation);
    let cuda = |bytes| w.on_cuda.then(|| cuda_process_overhead(bytes));
    let retained = if w.on_cuda {
        0.0
    } else {
        CPU_RETAINED_PER_TRAINABLE_BYTE * trainable * b
    };
    let overhead = PROCESS_OVERHEAD + retained + cuda(tensors).unwrap_or(0.0);
    let running = tensors + overhead;
    // Loading: the weights, plus either the mapped file they are copied from or (sft) their
    // copy into trainable variables; the two never overlap (the file is unmapped first).
    let copied = w.mapped_weights || trainable >= params;
    let loading = weights * if copied { 2.0 } else { 1.0 };
    let loading = loading + PROCESS_OVERHEAD + cuda(loading).unwrap_or(0.0);
    Estimate {
        weights,
        gradients,
        optimizer,
        activations,
        evaluation,
        overhead,
        total: running.max(loading),
    }
}

/// Values a training step keeps for its backward pass at its peak, at micro-batch `micro_batch`.
fn training_activations(w: &Workload, micro_batch: usize) -> f64 {
    let c = w.config;
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
            + k.per_adapted_output * adapted_outputs as f64
            + family_values_per_token(c, &k, w.params.method))
        + k.per_score
            * c.num_attention_heads as f64
            * (micro_batch as f64 * (t - prefix) * t + prefix * prefix);
    let counted = match w.counted_longest_first {
        Some(lengths) if !lengths.is_empty() => likely_counted(lengths, micro_batch),
        _ => micro_batch as f64 * w.counted_per_sequence.max(1) as f64,
    };
    let layers = per_layer * c.num_hidden_layers as f64;
    let saved_logits = if k.saves_logits {
        (counted * c.vocab_size as f64).min(SAVED_LOGITS_MAX_VALUES as f64)
    } else {
        0.0
    };
    // A head method computes no vocabulary-sized rows: one hidden row per sequence meets the
    // head (no label search).
    let vocabulary = if w.params.method.is_head() {
        0.0
    } else {
        k.per_counted_vocab * counted * c.vocab_size as f64 + saved_logits
    };
    layers + vocabulary + 2.0 * tokens * c.hidden_size as f64
}

/// Values evaluation's label scoring holds at once at micro-batch `micro_batch`: a forward
/// pass of `eval_tokens_per_pass` tokens keeps every layer's keys and values of them (the search
/// keeps a round's for the next) and one layer's intermediates at a time (about 6 hidden- and 3
/// intermediate-sized values per token); every row also sees the common prefix's keys and values
/// widened to it, one layer at a time; and the vocabulary rows of at most a micro-batch's
/// answers (logits and log-softmax). Far less than a training step, which keeps every layer's
/// activations: the estimate shows it all the same, so that it is never the hidden peak.
fn evaluation_activations(w: &Workload, micro_batch: usize) -> f64 {
    if w.scored_answer_tokens == 0 {
        return 0.0;
    }
    let c = w.config;
    let batch = micro_batch.clamp(1, MAX_EVAL_BATCH);
    let tokens = eval_tokens_per_pass(batch, w.longest_sequence) as f64;
    let kv = (c.kv_heads() * c.head_dim()) as f64;
    let per_token = 2.0 * kv * c.num_hidden_layers as f64
        + 6.0 * c.hidden_size as f64
        + 3.0 * c.intermediate_size as f64;
    let rows = tokens / (w.longest_sequence.max(1) as f64);
    let widened_prefix = 2.0 * kv * rows * w.shared_prefix as f64;
    let scored_rows = (batch * w.scored_answer_tokens) as f64;
    let vocabulary = 2.0 * scored_rows * c.vocab_size as f64;
    tokens * per_token + widened_prefix + vocabulary
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
            mapped_weights: false,
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
            mapped_weights: false,
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
                mapped_weights: false,
            };
            let (cpu, gpu) = (estimate(&w(false), 8), estimate(&w(true), 8));
            let tensors =
                cpu.weights + cpu.gradients + cpu.optimizer + cpu.activations.max(cpu.evaluation);
            // The parts that are tensors do not change; the overhead holds the difference.
            assert_eq!(
                (cpu.weights, cpu.gradients, cpu.optimizer, cpu.activations),
                (gpu.weights, gpu.gradients, gpu.optimizer, gpu.activations)
            );
            assert_eq!(cpu.total - cpu.overhead, gpu.total - gpu.overhead);
            assert!(
                (gpu.overhead - PROCESS_OVERHEAD - cuda_process_overhead(tensors)).abs() < 1.0,
                "{method}"
            );
            let added = gpu.total - cpu.total;
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
                    mapped_weights: false,
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

    /// Peaks measured on the 135M shape (SmolLM2-135M-Instruct's, random weights, its chat
    /// template; 64 lines of the bundled 10-intent set: prompts of 97 tokens at most sharing 61,
    /// answers of 3 to 9), batch 8, the larger of `scripts/validate-memory.sh`'s trial peak and
    /// examples/memory_phases.rs' phase peaks, MiB: (method, micro-batch, peak).
    const MEASURED_135M: [(&str, usize, f64); 6] = [
        ("sft", 1, 2938.0),
        ("sft", 2, 2991.0),
        ("sft", 8, 2720.0),
        ("lora", 1, 1044.0),
        ("lora", 2, 1044.0),
        ("lora", 8, 1147.0),
    ];

    fn chat_135m_workload<'a>(cfg: &'a ModelConfig, p: &'a TrialParams) -> Workload<'a> {
        Workload {
            config: cfg,
            params: p,
            longest_sequence: 97,
            counted_per_sequence: 9,
            counted_longest_first: None,
            bytes_per_value: 4,
            on_cuda: false,
            shared_prefix: 61,
            scored_answer_tokens: 9,
            mapped_weights: true,
        }
    }

    /// A trial of `method` at batch 8 and micro-batch `micro`, as the validation sweeps run.
    fn batch_8_trial(method: &str, micro: usize) -> TrialParams {
        let a: BTreeMap<String, serde_json::Value> = [
            ("method".to_string(), serde_json::json!(method)),
            ("batch_size".to_string(), serde_json::json!(8)),
            ("micro_batch".to_string(), serde_json::json!(micro)),
        ]
        .into_iter()
        .collect();
        TrialParams::from_assignment(&a, 0).expect("valid trial")
    }

    #[test]
    fn the_135m_chat_shape_estimate_holds_its_measured_peaks_within_a_tenth() {
        let mut cfg = crate::spec::shape::preset("llama-135m").expect("preset");
        cfg.vocab_size = 49152;
        for (method, micro, peak) in MEASURED_135M {
            let p = batch_8_trial(method, micro);
            let e = estimate(&chat_135m_workload(&cfg, &p), micro);
            let mb = e.total_mb();
            assert!(
                mb >= peak && mb <= 1.10 * peak,
                "{method} at micro-batch {micro}: estimated {mb:.0} MiB, measured {peak:.0}"
            );
            // Evaluation never sets the peak: its pass holds less than a training step.
            assert!(e.evaluation < e.activations, "{method} {micro}: {e:?}");
        }
    }

    /// The 135M shape in `family`, as `scripts/make-random-135m.py --arch` writes it: Qwen3
    /// with q/k norms and head_dim 128, ERNIE 4.5 with `use_bias` and head_dim 128 (both tied),
    /// Mistral with an untied head and a 4096-position window.
    fn shape_135m(family: &str) -> ModelConfig {
        let mut c = crate::spec::shape::preset("llama-135m").expect("preset");
        c.vocab_size = 49152;
        c.model_type = family.into();
        match family {
            "qwen3" => c.head_dim = Some(128),
            "ernie4_5" => {
                c.head_dim = Some(128);
                c.use_bias = true;
            }
            "mistral" => {
                c.tie_word_embeddings = false;
                c.sliding_window = Some(4096);
            }
            _ => {}
        }
        c
    }

    #[test]
    fn the_new_families_135m_weights_count_what_their_safetensors_hold() {
        // Per layer of the 135M shape (hidden 576, intermediate 1536, 9 heads, 3 key/value):
        // with head_dim 128 the queries are 9 x 128 = 1152 wide, keys and values 3 x 128 = 384.
        let embed = 49152 * 576;
        let mlp = 3 * 576 * 1536;
        let norms = 2 * 576;
        let wide_attention = 2 * 576 * 1152 + 2 * 576 * 384;
        let qk_norms = 2 * 128;
        let biases = 1152 + 384 + 384 + 576 + 1536 + 1536 + 576;
        let llama_attention = 2 * 576 * 576 + 2 * 576 * 192;
        let layers = |per_layer: usize| 30 * per_layer + embed + 576;
        let want = [
            ("llama", layers(llama_attention + mlp + norms)),
            ("qwen3", layers(wide_attention + mlp + norms + qk_norms)),
            ("ernie4_5", layers(wide_attention + mlp + norms + biases)),
            ("mistral", layers(llama_attention + mlp + norms) + embed),
        ];
        // What transformers 5.24 wrote into each folder's model.safetensors (the sum of its
        // tensors' shapes): SmolLM2-135M's 134,515,008 and the three others.
        let written = [
            ("llama", 134_515_008),
            ("qwen3", 161_064_768),
            ("ernie4_5", 161_241_408),
            ("mistral", 162_826_560),
        ];
        for ((family, derived), (_, file)) in want.into_iter().zip(written) {
            let c = shape_135m(family);
            c.validate("config.json").expect("valid shape");
            assert_eq!(c.parameter_count(), derived, "{family}");
            assert_eq!(derived, file, "{family}");
            // sft trains every weight of them, the untied head included.
            let p = workload_params("sft");
            assert_eq!(trainable_parameters(&c, &p), file, "{family}");
        }
    }

    #[test]
    fn each_family_keeps_its_own_values_per_token_beyond_llamas() {
        let lora = workload_params("lora");
        let sft = workload_params("sft");
        let values = |family: &str, p: &TrialParams| {
            family_values_per_token(&shape_135m(family), &FUSED, p.method)
        };
        // Llama's heads (576 / 9 = 64) and no bias: what the coefficients were fitted to.
        assert_eq!(values("llama", &sft), 0.0);
        assert_eq!(values("mistral", &lora), 0.0);
        // Qwen3: 9 + 3 heads of 128, 64 wider than Llama's, 3 values each; the head norms'
        // one value per query and key value.
        let qwen3 = 3.0 * 12.0 * 64.0 + 12.0 * 128.0;
        assert_eq!(values("qwen3", &sft), qwen3);
        assert_eq!(values("qwen3", &lora), qwen3);
        // ERNIE 4.5: the same heads, de-interleaved copies in place of the norms, and the
        // biased outputs (queries 1152, keys and values 384, o 576, gate and up 1536, down 576)
        // once when the biases train, twice when they are frozen.
        let biased = (1152 + 2 * 384 + 576 + 2 * 1536 + 576) as f64;
        assert_eq!(values("ernie4_5", &sft), qwen3 + biased);
        assert_eq!(values("ernie4_5", &lora), qwen3 + 2.0 * biased);
        // Qwen2's q/k/v biases count too (its heads are Llama's).
        let mut qwen2 = crate::spec::shape::preset("llama-135m").expect("preset");
        qwen2.model_type = "qwen2".into();
        assert_eq!(
            family_values_per_token(&qwen2, &FUSED, Method::Sft),
            (576 + 2 * 192) as f64
        );
    }

    /// Peaks measured by `scripts/validate-memory.sh OUT new` (2026-12-03, transformers 5.24's
    /// random folders of `scripts/make-random-135m.py --arch`, the 64-line slice of the bundled
    /// set as for `MEASURED_135M`), MiB: (family, method, micro-batch, peak).
    const MEASURED_135M_FAMILIES: [(&str, &str, usize, f64); 18] = [
        ("qwen3", "sft", 1, 3480.0),
        ("qwen3", "sft", 2, 3542.0),
        ("qwen3", "sft", 8, 3335.0),
        ("qwen3", "lora", 1, 1247.0),
        ("qwen3", "lora", 2, 1248.0),
        ("qwen3", "lora", 8, 1515.0),
        ("ernie4_5", "sft", 1, 3549.0),
        ("ernie4_5", "sft", 2, 3619.0),
        ("ernie4_5", "sft", 8, 3580.0),
        ("ernie4_5", "lora", 1, 1248.0),
        ("ernie4_5", "lora", 2, 1248.0),
        ("ernie4_5", "lora", 8, 1994.0),
        ("mistral", "sft", 1, 3566.0),
        ("mistral", "sft", 2, 3612.0),
        ("mistral", "sft", 8, 3260.0),
        ("mistral", "lora", 1, 1261.0),
        ("mistral", "lora", 2, 1261.0),
        ("mistral", "lora", 8, 1261.0),
    ];

    #[test]
    fn the_new_families_135m_estimates_hold_their_measured_peaks_within_a_tenth() {
        for (family, method, micro, peak) in MEASURED_135M_FAMILIES {
            let cfg = shape_135m(family);
            let p = batch_8_trial(method, micro);
            let mb = estimate(&chat_135m_workload(&cfg, &p), micro).total_mb();
            assert!(
                (mb - peak).abs() <= 0.10 * peak,
                "{family} {method} at micro-batch {micro}: estimated {mb:.0} MiB, measured {peak:.0}"
            );
        }
    }

    #[test]
    fn a_mapped_model_folder_costs_its_weights_twice_while_loading() {
        let mut cfg = crate::spec::shape::preset("llama-135m").expect("preset");
        cfg.vocab_size = 49152;
        let p = workload_params("lora");
        let folder = chat_135m_workload(&cfg, &p);
        let preset = Workload {
            mapped_weights: false,
            ..folder.clone()
        };
        // LoRA at micro-batch 1: loading is the peak from a folder (file and copy), not from a
        // preset's random weights.
        let (f, r) = (estimate(&folder, 1), estimate(&preset, 1));
        assert_eq!(f.total, 2.0 * f.weights + PROCESS_OVERHEAD);
        assert!(r.total < f.total);
        assert_eq!(
            (f.weights, f.gradients, f.optimizer, f.activations),
            (r.weights, r.gradients, r.optimizer, r.activations)
        );
    }

    #[test]
    fn evaluation_holds_keys_and_values_and_a_micro_batch_of_vocabulary_rows() {
        let mut cfg = crate::spec::shape::preset("llama-135m").expect("preset");
        cfg.vocab_size = 49152;
        let p = workload_params("lora");
        let w = chat_135m_workload(&cfg, &p);
        // Micro-batch 2, sequences of 97: 8 x 2 x 97 = 1,552 tokens a pass; per token 2 x 192
        // key/value values in 30 layers, 6 x 576 + 3 x 1536 intermediates; 16 rows widened
        // with the 61-token prefix's keys and values; 2 x 9 answer rows of the vocabulary, twice.
        let tokens = 1552.0;
        let want = tokens * (2.0 * 192.0 * 30.0 + 6.0 * 576.0 + 3.0 * 1536.0)
            + 2.0 * 192.0 * 16.0 * 61.0
            + 2.0 * 18.0 * 49152.0;
        assert!((evaluation_activations(&w, 2) - want).abs() < 1.0);
        let none = Workload {
            scored_answer_tokens: 0,
            ..w.clone()
        };
        assert_eq!(evaluation_activations(&none, 2), 0.0);
    }
}
