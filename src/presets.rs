//! Built-in model shapes, so a sweep runs on a fresh machine with nothing downloaded.
//! The vocabulary size is filled in from the tokenizer built from the training data.

use crate::model::ModelConfig;

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
