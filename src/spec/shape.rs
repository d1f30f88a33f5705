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
        head_dim: None,
        mlp_bias: false,
        use_bias: false,
        sliding_window: None,
        hidden_act: None,
    })
}

/// A model config that sweep cannot build a model from, naming the file it came from and, where
/// one key is at fault, that key of config.json.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct ShapeError {
    pub file: String,
    pub field: Option<String>,
    pub message: String,
}

/// The decoder families sweep builds, by config.json's `model_type`: Llama's block (RMSNorm,
/// grouped-query attention with rotary positions, SwiGLU MLP) and what each family changes in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    /// Biases on q/k/v.
    Qwen2,
    /// RMSNorm of every query and key head before rotary positions; `head_dim` of its own.
    Qwen3,
    /// Rotary positions on interleaved pairs (GLM's layout); `use_bias` on every projection;
    /// tied head by default.
    Ernie45,
    /// Llama within `sliding_window` positions; longer sequences are refused.
    Mistral,
}

impl Architecture {
    /// Every `model_type` sweep builds, for messages.
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2, qwen3, ernie4_5";

    pub fn of(model_type: &str) -> Option<Self> {
        Some(match model_type {
            "llama" => Self::Llama,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            "ernie4_5" => Self::Ernie45,
            "mistral" => Self::Mistral,
            _ => return None,
        })
    }

    /// transformers' class for a causal LM of this family (config.json's `architectures`).
    pub fn causal_lm_class(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
            Self::Ernie45 => "Ernie4_5ForCausalLM",
            Self::Mistral => "MistralForCausalLM",
        }
    }
}

/// Fills the keys a family's transformers config defaults differently from Llama's, where
/// config.json leaves them out, so a hand-written or trimmed config means what transformers
/// reads from it (ERNIE 4.5: rope_theta 500000, tied head, eps 1e-5, head_dim 128; Qwen3:
/// head_dim 128; Mistral: a 4096-position sliding window unless `sliding_window` is null).
pub fn fill_family_defaults(raw: &mut serde_json::Value) {
    let Some(obj) = raw.as_object_mut() else {
        return;
    };
    let defaults: &[(&str, serde_json::Value)] =
        match obj.get("model_type").and_then(|t| t.as_str()) {
            Some("ernie4_5") => &[
                ("rope_theta", serde_json::json!(500_000.0)),
                ("tie_word_embeddings", serde_json::json!(true)),
                ("rms_norm_eps", serde_json::json!(1e-5)),
                ("head_dim", serde_json::json!(128)),
            ],
            Some("qwen3") => &[("head_dim", serde_json::json!(128))],
            Some("mistral") => &[("sliding_window", serde_json::json!(4096))],
            _ => &[],
        };
    for (key, value) in defaults {
        if !obj.contains_key(*key) {
            obj.insert((*key).to_string(), value.clone());
        }
    }
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
    /// Qwen2's and Qwen3's sliding-window attention is not implemented; refused, not ignored.
    #[serde(default, skip_serializing)]
    pub use_sliding_window: bool,
    /// The width of one attention head where it is not hidden_size / num_attention_heads
    /// (Qwen3, ERNIE 4.5, Mistral Nemo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Llama's switch for biases on gate/up/down.
    #[serde(default)]
    pub mlp_bias: bool,
    /// ERNIE 4.5's switch for biases on every projection.
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_bias: bool,
    /// Mistral's attention window (a token sees the `sliding_window` positions up to its own);
    /// Qwen's only counts with `use_sliding_window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Only SiLU (SwiGLU) is built; anything else is refused, not ignored.
    #[serde(default, skip_serializing)]
    pub hidden_act: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !b
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
    /// The family this config builds, None when sweep does not build it (`validate` says so).
    pub fn architecture(&self) -> Option<Architecture> {
        Architecture::of(&self.model_type)
    }

    /// Whether `module` (q_proj, ...) has a bias in this architecture.
    pub fn has_bias(&self, module: &str) -> bool {
        let attention = matches!(module, "q_proj" | "k_proj" | "v_proj" | "o_proj");
        let mlp = matches!(module, "gate_proj" | "up_proj" | "down_proj");
        match self.architecture() {
            Some(Architecture::Qwen2) => matches!(module, "q_proj" | "k_proj" | "v_proj"),
            Some(Architecture::Ernie45) => self.use_bias && (attention || mlp),
            Some(Architecture::Mistral) => false,
            Some(Architecture::Qwen3) => self.attention_bias && attention,
            Some(Architecture::Llama) | None => {
                (self.attention_bias && attention) || (self.mlp_bias && mlp)
            }
        }
    }

    /// Qwen3's RMSNorm of each query and key head (`q_norm`, `k_norm`, of head_dim) before
    /// rotary positions.
    pub fn has_qk_norm(&self) -> bool {
        self.architecture() == Some(Architecture::Qwen3)
    }

    /// ERNIE 4.5 rotates interleaved pairs (x0, x1), (x2, x3)... where Llama rotates the two
    /// halves of a head against each other.
    pub fn interleaved_rope(&self) -> bool {
        self.architecture() == Some(Architecture::Ernie45)
    }

    /// Mistral's sliding window: attention within it equals full causal attention, so a
    /// sequence of at most this many positions computes as Llama does; longer ones are refused.
    pub fn attention_window(&self) -> Option<usize> {
        match self.architecture() {
            Some(Architecture::Mistral) => self.sliding_window,
            _ => None,
        }
    }

    /// The longest sequence this model computes: its positions, and within its window.
    pub fn max_sequence(&self) -> usize {
        let window = self.attention_window().unwrap_or(usize::MAX);
        self.max_position_embeddings.min(window)
    }

    /// (fan_in, fan_out) of a projection by its HF module name; (0, 0) for an unknown name.
    pub fn projection_shape(&self, module: &str) -> (usize, usize) {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads * self.head_dim();
        let kv = self.kv_heads() * self.head_dim();
        match module {
            "q_proj" => (h, q),
            "k_proj" | "v_proj" => (h, kv),
            "o_proj" => (q, h),
            "gate_proj" | "up_proj" => (h, i),
            "down_proj" => (i, h),
            _ => (0, 0),
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
        let refuse = |field: &str, what: String| {
            Err(ShapeError {
                file: file.to_string(),
                field: Some(field.to_string()),
                message: format!("{what}: scaled rotary positions are not supported yet"),
            })
        };
        if let Some(params) = &self.rope_parameters {
            if let Some(theta) = params.get("rope_theta").and_then(|t| t.as_f64()) {
                self.rope_theta = theta;
            }
            let kind = rope_type(params);
            if kind != "default" {
                return refuse("rope_parameters", format!("rope_type `{kind}`"));
            }
        }
        if let Some(scaling) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            let kind = rope_type(scaling);
            if kind != "default" {
                return refuse("rope_scaling", format!("`{kind}`"));
            }
        }
        Ok(())
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    /// One attention head's width: config.json's `head_dim`, else hidden_size / heads.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Checks the invariants the forward pass relies on and refuses every feature it does not
    /// build (an unknown family, sliding windows it does not compute, another activation): the
    /// one validation of a model config, which `sweep check` and the trainer both run.
    pub fn validate(&self, file: &str) -> Result<(), ShapeError> {
        let fail = |field: &str, message: String| {
            Err(ShapeError {
                file: file.to_string(),
                field: Some(field.to_string()),
                message,
            })
        };
        let Some(arch) = self.architecture() else {
            return fail(
                "model_type",
                format!(
                    "`{}` is not supported (supported: {})",
                    self.model_type,
                    Architecture::SUPPORTED
                ),
            );
        };
        if self.use_sliding_window && matches!(arch, Architecture::Qwen2 | Architecture::Qwen3) {
            return fail(
                "use_sliding_window",
                "sliding-window attention is not supported yet for qwen models".into(),
            );
        }
        if self.attention_window() == Some(0) {
            return fail("sliding_window", "must be positive".into());
        }
        if let Some(act) = self
            .hidden_act
            .as_deref()
            .filter(|a| !matches!(*a, "silu" | "swish"))
        {
            return fail(
                "hidden_act",
                format!("`{act}` is not supported (only silu: SwiGLU MLPs)"),
            );
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
        ] {
            if v == 0 {
                return fail(name, "must be positive".into());
            }
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(
                "hidden_size",
                format!(
                    "{} is not divisible by num_attention_heads {} (and no head_dim is given)",
                    self.hidden_size, self.num_attention_heads
                ),
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            return fail(
                "head_dim",
                format!("{} must be even for rotary positions", self.head_dim()),
            );
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return fail(
                "num_key_value_heads",
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    self.num_attention_heads,
                    self.kv_heads()
                ),
            );
        }
        Ok(())
    }

    /// The HF `config.json` we write beside every full checkpoint.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            let architecture = self
                .architecture()
                .unwrap_or(Architecture::Llama)
                .causal_lm_class();
            obj.insert("architectures".into(), serde_json::json!([architecture]));
            obj.insert("torch_dtype".into(), serde_json::json!("float32"));
            obj.insert("hidden_act".into(), serde_json::json!("silu"));
            obj.insert(
                "attention_bias".into(),
                serde_json::json!(self.attention_bias),
            );
            obj.insert("mlp_bias".into(), serde_json::json!(self.mlp_bias));
            // transformers reads a Mistral config without the key as a 4096-position window.
            if self.architecture() == Some(Architecture::Mistral) {
                obj.insert(
                    "sliding_window".into(),
                    serde_json::json!(self.sliding_window),
                );
            }
            obj.insert(
                "num_key_value_heads".into(),
                serde_json::json!(self.kv_heads()),
            );
        }
        v
    }

    /// Parameter count of the base model (embeddings included, lm_head once if untied; biases
    /// and Qwen3's q/k norms too): the sum of `weight_shapes`.
    pub fn parameter_count(&self) -> usize {
        weight_shapes(self)
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum()
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
    let hd = c.head_dim();
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, h],
    )];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        // Weights, then biases: the order `random_weights` draws them in.
        let projections = |kind: &str, modules: &[&str]| {
            let weights = modules.iter().map(|m| {
                let (fan_in, fan_out) = c.projection_shape(m);
                (format!("{p}.{kind}.{m}.weight"), vec![fan_out, fan_in])
            });
            let biases = modules.iter().filter(|m| c.has_bias(m)).map(|m| {
                (
                    format!("{p}.{kind}.{m}.bias"),
                    vec![c.projection_shape(m).1],
                )
            });
            weights.chain(biases).collect::<Vec<_>>()
        };
        out.extend(projections(
            "self_attn",
            &["q_proj", "k_proj", "v_proj", "o_proj"],
        ));
        if c.has_qk_norm() {
            out.push((format!("{p}.self_attn.q_norm.weight"), vec![hd]));
            out.push((format!("{p}.self_attn.k_norm.weight"), vec![hd]));
        }
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.extend(projections("mlp", &["gate_proj", "up_proj", "down_proj"]));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![c.vocab_size, h]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(model_type: &str) -> ModelConfig {
        let mut c = preset("test").unwrap();
        c.vocab_size = 10;
        c.model_type = model_type.into();
        c
    }

    fn refusal(c: &ModelConfig) -> (Option<String>, String) {
        let e = c.validate("config.json").unwrap_err();
        (e.field.clone(), e.to_string())
    }

    #[test]
    fn validate_refuses_what_the_model_does_not_build_naming_the_field() {
        for t in ["llama", "qwen2", "qwen3", "ernie4_5", "mistral"] {
            config(t).validate("config.json").unwrap();
        }
        let (field, text) = refusal(&config("gemma3"));
        assert_eq!(field.as_deref(), Some("model_type"));
        assert!(
            text.starts_with("config.json: model_type: `gemma3` is not supported"),
            "{text}"
        );
        let mut c = config("qwen3");
        c.use_sliding_window = true;
        assert_eq!(refusal(&c).0.as_deref(), Some("use_sliding_window"));
        let mut c = config("llama");
        c.hidden_act = Some("gelu".into());
        assert_eq!(refusal(&c).0.as_deref(), Some("hidden_act"));
        let mut c = config("qwen3");
        c.head_dim = Some(7);
        assert_eq!(refusal(&c).0.as_deref(), Some("head_dim"));
        let mut c = config("mistral");
        c.sliding_window = Some(0);
        assert_eq!(refusal(&c).0.as_deref(), Some("sliding_window"));
        // A head_dim of its own lifts the divisibility rule (hidden 32, 5 heads of 8).
        let mut c = config("qwen3");
        c.num_attention_heads = 5;
        c.num_key_value_heads = Some(1);
        assert_eq!(refusal(&c).0.as_deref(), Some("hidden_size"));
        c.head_dim = Some(8);
        c.validate("config.json").unwrap();
        assert_eq!(c.projection_shape("q_proj"), (32, 40));
        assert_eq!(c.projection_shape("o_proj"), (40, 32));
    }

    #[test]
    fn each_family_has_its_own_tensors_and_they_are_counted() {
        let count = |c: &ModelConfig| -> usize {
            weight_shapes(c)
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum()
        };
        let llama = config("llama");
        // 1 layer, hidden 32, 4 heads (2 kv) of 8, intermediate 64, tied: the old formula.
        let (h, kv, i) = (32, 16, 64);
        let per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h;
        assert_eq!(llama.parameter_count(), 10 * h + h + per_layer);
        let mut qwen3 = config("qwen3");
        qwen3.head_dim = Some(12);
        let names: Vec<String> = weight_shapes(&qwen3).into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"model.layers.0.self_attn.k_norm.weight".to_string()));
        assert_eq!(qwen3.parameter_count(), count(&qwen3));
        let mut ernie = config("ernie4_5");
        ernie.use_bias = true;
        let biases = weight_shapes(&ernie)
            .into_iter()
            .filter(|(n, _)| n.ends_with(".bias"))
            .count();
        assert_eq!(biases, 7, "every projection of the one layer");
        assert_eq!(
            config("qwen2").parameter_count(),
            llama.parameter_count() + h + 2 * kv
        );
        assert!(!config("mistral").has_bias("q_proj"));
    }

    #[test]
    fn the_written_config_json_names_the_class_and_keeps_mistrals_window() {
        let mut m = config("mistral");
        let json = m.to_hf_json();
        assert_eq!(json["architectures"][0], "MistralForCausalLM");
        assert!(
            json["sliding_window"].is_null(),
            "no window: null, not absent"
        );
        assert!(json.as_object().unwrap().contains_key("sliding_window"));
        m.sliding_window = Some(4096);
        assert_eq!(m.to_hf_json()["sliding_window"], 4096);
        let mut e = config("ernie4_5");
        e.use_bias = true;
        e.head_dim = Some(12);
        let json = e.to_hf_json();
        assert_eq!(
            (
                &json["architectures"][0],
                &json["use_bias"],
                &json["head_dim"]
            ),
            (
                &serde_json::json!("Ernie4_5ForCausalLM"),
                &serde_json::json!(true),
                &serde_json::json!(12)
            )
        );
        assert_eq!(
            config("qwen3").to_hf_json()["architectures"][0],
            "Qwen3ForCausalLM"
        );
    }
}
