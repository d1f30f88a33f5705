//! Model shapes: the part of a Hugging Face `config.json` that sizes a decoder, its checks, its
//! parameter counts, and the built-in presets (so a sweep runs on a fresh machine with nothing
//! downloaded; their vocabulary size is filled in from the tokenizer built from the data).
//!
//! Pure arithmetic on shapes: reading a model folder is `text::model_folder`, tensors are the
//! trainer's.

use serde::{Deserialize, Serialize};

pub const PRESET_NAMES: [&str; 3] = ["test", "tiny", "llama-135m"];

/// The config of a preset, with `vocab_size` 0 until a tokenizer is known.
pub fn preset(name: &str) -> Option<ModelConfig> {
    let (hidden, inter, layers, heads, kv, tie) = match name {
        // For unit and CLI tests: trains in well under a second.
        "test" => (32, 64, 1, 4, 2, true),
        // The quickstart's size: a few minutes for a whole sweep on two CPU cores.
        "tiny" => (64, 128, 2, 4, 2, true),
        // SmolLM-135M's shape (HuggingFaceTB/SmolLM2-135M), random init: for speed measurements.
        "llama-135m" => (576, 1536, 30, 9, 3, true),
        _ => return None,
    };
    Some(ModelConfig {
        model_type: "llama".into(),
        vocab_size: 0,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv),
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 2048,
        tie_word_embeddings: tie,
        bos_token_id: None,
        eos_token_id: None,
        pad_token_id: None,
        attention_bias: false,
        rope_parameters: None,
        rope_scaling: None,
        use_sliding_window: false,
    })
}

/// A model config that sweep cannot build a model from, naming the file it came from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ShapeError {
    pub file: String,
    pub message: String,
}

/// The subset of a Hugging Face `config.json` that a Llama-style decoder needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Llama's switch for biases on q/k/v/o (Qwen2 always has q/k/v biases).
    #[serde(default)]
    pub attention_bias: bool,
    /// transformers 5.x moved `rope_theta` here.
    #[serde(default, skip_serializing)]
    pub rope_parameters: Option<serde_json::Value>,
    /// Scaled rotary positions (Llama 3's, YaRN...) are not implemented; refused, not ignored.
    #[serde(default, skip_serializing)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Qwen2's sliding-window attention is not implemented; refused, not ignored.
    #[serde(default, skip_serializing)]
    pub use_sliding_window: bool,
}

fn default_model_type() -> String {
    "llama".into()
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}

impl ModelConfig {
    /// Whether `module` (q_proj, ...) has a bias in this architecture.
    pub fn has_bias(&self, module: &str) -> bool {
        match self.model_type.as_str() {
            "qwen2" => matches!(module, "q_proj" | "k_proj" | "v_proj"),
            _ => self.attention_bias && matches!(module, "q_proj" | "k_proj" | "v_proj" | "o_proj"),
        }
    }

    /// Reconciles the ways transformers 4.x and 5.x write rotary settings: `rope_parameters`
    /// (5.x) wins over a top-level `rope_theta`. Rotary scaling is refused with the file named.
    pub fn normalize_rope(&mut self, file: &str) -> Result<(), ShapeError> {
        let rope_type = |v: &serde_json::Value| {
            v.get("rope_type")
                .or_else(|| v.get("type"))
                .and_then(|t| t.as_str())
                .unwrap_or("default")
                .to_string()
        };
        let refuse = |what: String| {
            Err(ShapeError {
                file: file.to_string(),
                message: format!("{what}: scaled rotary positions are not supported yet"),
            })
        };
        if let Some(params) = &self.rope_parameters {
            if let Some(theta) = params.get("rope_theta").and_then(|t| t.as_f64()) {
                self.rope_theta = theta;
            }
            let kind = rope_type(params);
            if kind != "default" {
                return refuse(format!("rope_parameters.rope_type `{kind}`"));
            }
        }
        if let Some(scaling) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            let kind = rope_type(scaling);
            if kind != "default" {
                return refuse(format!("rope_scaling `{kind}`"));
            }
        }
        Ok(())
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self, file: &str) -> Result<(), ShapeError> {
        let fail = |message: String| {
            Err(ShapeError {
                file: file.to_string(),
                message,
            })
        };
        if self.use_sliding_window {
            return fail(
                "use_sliding_window: sliding-window attention is not supported yet".into(),
            );
        }
        if !matches!(self.model_type.as_str(), "llama" | "qwen2") {
            return fail(format!(
                "model_type `{}` is not supported (supported: llama, qwen2)",
                self.model_type
            ));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
        ] {
            if v == 0 {
                return fail(format!("{name} must be positive"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return fail(
                "head_dim (hidden_size / num_attention_heads) must be even for rotary positions"
                    .into(),
            );
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return fail(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        Ok(())
    }

    /// The HF `config.json` we write beside every full checkpoint.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            let architecture = match self.model_type.as_str() {
                "qwen2" => "Qwen2ForCausalLM",
                _ => "LlamaForCausalLM",
            };
            obj.insert("architectures".into(), serde_json::json!([architecture]));
            obj.insert("torch_dtype".into(), serde_json::json!("float32"));
            obj.insert("hidden_act".into(), serde_json::json!("silu"));
            obj.insert(
                "attention_bias".into(),
                serde_json::json!(self.attention_bias),
            );
            obj.insert("mlp_bias".into(), serde_json::json!(false));
            obj.insert(
                "num_key_value_heads".into(),
                serde_json::json!(self.kv_heads()),
            );
        }
        v
    }

    /// Parameter count of the base model (embeddings included, lm_head once if untied).
    pub fn parameter_count(&self) -> usize {
        let h = self.hidden_size;
        let kv = self.kv_heads() * self.head_dim();
        let per_layer = h * h * 2 + h * kv * 2 + 3 * h * self.intermediate_size + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + h + self.num_hidden_layers * per_layer
    }
}

/// The linear projections LoRA may adapt, by their HF module names.
pub const LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Every base tensor's HF name and shape for a config.
pub fn weight_shapes(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let h = c.hidden_size;
    let kv = c.kv_heads() * c.head_dim();
    let i = c.intermediate_size;
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, h],
    )];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
        for (module, size) in [("q_proj", h), ("k_proj", kv), ("v_proj", kv), ("o_proj", h)] {
            if c.has_bias(module) {
                out.push((format!("{p}.self_attn.{module}.bias"), vec![size]));
            }
        }
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![c.vocab_size, h]));
    }
    out
}
