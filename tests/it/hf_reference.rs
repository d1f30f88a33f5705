//! Our forward and backward passes against Python transformers' own: tiny random-init Llama,
//! Qwen2, Qwen3, ERNIE 4.5 and Mistral folders written by `scripts/make-hf-fixtures.py`
//! (transformers 5.x, so `rope_parameters` too), with the logits transformers computed for fixed
//! token ids, the gradients of the mean next-token cross-entropy, and what `apply_chat_template`
//! rendered with each folder's chat template.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use sweep::text::chat::{ChatTemplate, Turn};
use sweep::text::encode::Seq;
use sweep::trainer::batch::{make_batch, token_nll};
use sweep::trainer::model::{load_hf_folder, CausalLm, Trainable};
use sweep::trainer::ops::Kernels;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

fn read_json(path: PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn load(name: &str, kernels: Kernels) -> CausalLm {
    let (config, weights) = load_hf_folder(&fixture(name), &Device::Cpu).unwrap();
    CausalLm::new(config, &weights, Trainable::All, 0, &Device::Cpu, name)
        .unwrap()
        .with_kernels(kernels)
}

fn agrees_with_transformers(name: &str) {
    let expected = read_json(fixture(name).join("expected_logits.json"));
    let ids: Vec<Vec<u32>> = serde_json::from_value(expected["ids"].clone()).unwrap();
    let want: Vec<Vec<Vec<f32>>> = serde_json::from_value(expected["logits"].clone()).unwrap();
    for kernels in [Kernels::Fused, Kernels::Composed] {
        let got = load(name, kernels)
            .forward(&Tensor::new(ids.clone(), &Device::Cpu).unwrap())
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
        eprintln!(
            "{name} {kernels:?}: max |ours - transformers| = {worst:e}, relative {relative:e}"
        );
        assert!(
            relative < 1e-4,
            "{name} {kernels:?}: logits differ by {worst} (largest logit {largest})"
        );
    }
}

/// Every parameter's gradient of the mean next-token cross-entropy over the fixture's ids, as
/// training computes it (`token_nll` over every position after the first), against the first
/// values and the norm of transformers' gradient.
fn gradients_agree_with_transformers(name: &str) {
    let expected = read_json(fixture(name).join("expected_gradients.json"));
    let ids: Vec<Vec<u32>> = serde_json::from_value(expected["ids"].clone()).unwrap();
    let want = expected["gradients"].as_object().unwrap();
    for kernels in [Kernels::Fused, Kernels::Composed] {
        let model = load(name, kernels);
        let seqs: Vec<Seq> = ids
            .iter()
            .map(|ids| Seq {
                ids: ids.clone(),
                loss_from: 1,
            })
            .collect();
        let refs: Vec<&Seq> = seqs.iter().collect();
        let batch = make_batch(&refs, 0, &Device::Cpu).unwrap();
        let loss =
            (token_nll(&model, &batch).unwrap().sum_all().unwrap() / batch.tokens as f64).unwrap();
        let loss_value = loss.to_scalar::<f32>().unwrap() as f64;
        let want_loss = expected["loss"].as_f64().unwrap();
        assert!(
            (loss_value - want_loss).abs() < 1e-4 * want_loss,
            "{name}: loss {loss_value}, transformers {want_loss}"
        );
        let grads = model.gradients(&loss.backward().unwrap()).unwrap();
        assert_eq!(model.trainable().len(), want.len(), "{name}: parameters");
        let mut worst = 0.0f64;
        for ((param, _), g) in model.trainable().iter().zip(&grads) {
            let reference = want
                .get(param)
                .unwrap_or_else(|| panic!("{name}: transformers has no `{param}`"));
            let g = g
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: no gradient for {param}"))
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(
                g.len() as u64,
                reference["numel"].as_u64().unwrap(),
                "{param}"
            );
            let norm = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            let want_norm = reference["norm"].as_f64().unwrap();
            let first: Vec<f64> = serde_json::from_value(reference["first"].clone()).unwrap();
            let scale = want_norm.max(1e-6);
            let diff = first
                .iter()
                .zip(&g)
                .map(|(w, g)| (w - *g as f64).abs())
                .fold((norm - want_norm).abs(), f64::max);
            assert!(
                diff / scale < 1e-4,
                "{name} {kernels:?}: {param}: gradient differs by {diff:e} (norm {want_norm:e})"
            );
            worst = worst.max(diff / scale);
        }
        eprintln!("{name} {kernels:?}: gradients within {worst:e} of transformers' (relative to each norm)");
    }
}

/// The folder's chat template renders the fixture's conversation as `apply_chat_template` did.
fn chat_template_renders_as_transformers(name: &str) {
    let expected = read_json(fixture(name).join("expected_chat.json"));
    let template = ChatTemplate::from_folder(&fixture(name))
        .unwrap()
        .unwrap_or_else(|| panic!("{name} has a chat template"));
    let messages = expected["messages"].as_array().unwrap();
    let turns: Vec<Turn> = messages
        .iter()
        .map(|m| Turn {
            role: m["role"].as_str().unwrap(),
            content: m["content"].as_str().unwrap(),
        })
        .collect();
    let prompt = template.render(&turns, true).unwrap();
    assert_eq!(prompt, expected["prompt"].as_str().unwrap(), "{name}");
    let answer = expected["answer"].as_str().unwrap();
    let (split_prompt, rendered_answer) = template.split(&turns, answer).unwrap();
    assert_eq!(
        format!("{split_prompt}{rendered_answer}"),
        expected["full"].as_str().unwrap(),
        "{name}"
    );
    assert!(rendered_answer.contains(answer), "{rendered_answer}");
}

#[test]
fn llama_logits_match_transformers() {
    agrees_with_transformers("tiny-llama");
}

#[test]
fn qwen2_logits_match_transformers() {
    agrees_with_transformers("tiny-qwen2");
}

#[test]
fn qwen3_matches_transformers_in_logits_gradients_and_chat_template() {
    agrees_with_transformers("tiny-qwen3");
    gradients_agree_with_transformers("tiny-qwen3");
    chat_template_renders_as_transformers("tiny-qwen3");
}

#[test]
fn ernie4_5_matches_transformers_in_logits_gradients_and_chat_template() {
    agrees_with_transformers("tiny-ernie4_5");
    gradients_agree_with_transformers("tiny-ernie4_5");
    chat_template_renders_as_transformers("tiny-ernie4_5");
}

#[test]
fn mistral_matches_transformers_in_logits_gradients_and_chat_template() {
    agrees_with_transformers("tiny-mistral");
    gradients_agree_with_transformers("tiny-mistral");
    chat_template_renders_as_transformers("tiny-mistral");
}
