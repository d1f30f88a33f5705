//! Our forward pass against Python transformers' own: tiny random-init Llama and Qwen2 folders
//! written by `scripts/make-hf-fixtures.py` (transformers 5.x, so `rope_parameters` too), with the
//! logits transformers computed for fixed token ids.

use candle_core::{Device, Tensor};
use sweep::trainer::model::{load_hf_folder, CausalLm, Trainable};

fn agrees_with_transformers(name: &str) {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected_logits.json")).unwrap())
            .unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(expected["ids"].clone()).unwrap();
    let want: Vec<Vec<Vec<f32>>> = serde_json::from_value(expected["logits"].clone()).unwrap();
    let (config, weights) = load_hf_folder(&dir, &Device::Cpu).unwrap();
    let model = CausalLm::new(config, &weights, Trainable::All, 0, &Device::Cpu, name).unwrap();
    let got = model
        .forward(&Tensor::new(ids, &Device::Cpu).unwrap())
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let mut worst = 0.0f32;
    let mut largest = 0.0f32;
    for (g, w) in got
        .iter()
        .flatten()
        .flatten()
        .zip(want.iter().flatten().flatten())
    {
        worst = worst.max((g - w).abs());
        largest = largest.max(w.abs());
    }
    let relative = worst / largest;
    eprintln!("{name}: max |ours - transformers| = {worst:e}, relative {relative:e}");
    assert!(
        relative < 1e-4,
        "{name}: logits differ by {worst} (largest logit {largest})"
    );
}

#[test]
fn llama_logits_match_transformers() {
    agrees_with_transformers("tiny-llama");
}

#[test]
fn qwen2_logits_match_transformers() {
    agrees_with_transformers("tiny-qwen2");
}
