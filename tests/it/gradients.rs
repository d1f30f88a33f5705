//! The trainer's gradients against finite differences, in f64, for every kind of weight of the
//! model (embeddings, norms, attention and MLP projections, lm_head) and for LoRA adapters; and
//! LoRA training that changes the adapters and nothing else.

use candle_core::{DType, Device, Tensor};
use sweep::spec::shape::ModelConfig;
use sweep::text::encode::Seq;
use sweep::trainer::batch::{make_batch, token_nll};
use sweep::trainer::model::{CausalLm, LoraSettings, Trainable};
use sweep::trainer::ops::Kernels;
use sweep::trainer::parallel::Replicas;

fn config() -> ModelConfig {
    ModelConfig {
        model_type: "llama".into(),
        vocab_size: 13,
        hidden_size: 8,
        intermediate_size: 12,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: Some(1),
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        max_position_embeddings: 32,
        tie_word_embeddings: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        pad_token_id: Some(0),
        attention_bias: false,
        rope_parameters: None,
        rope_scaling: None,
        use_sliding_window: false,
        head_dim: None,
        mlp_bias: false,
        use_bias: false,
        sliding_window: None,
        hidden_act: None,
    }
}

fn seqs() -> Vec<Seq> {
    vec![
        Seq {
            ids: vec![1, 5, 6, 7, 8, 2],
            loss_from: 3,
        },
        Seq {
            ids: vec![1, 9, 10, 2],
            loss_from: 2,
        },
        Seq {
            ids: vec![1, 11, 3, 4, 12, 5, 2],
            loss_from: 1,
        },
    ]
}

/// The training loss: summed answer-token NLL over the batch divided by its token count.
fn loss(model: &CausalLm) -> Tensor {
    let s = seqs();
    let refs: Vec<&Seq> = s.iter().collect();
    let batch = make_batch(&refs, 0, &Device::Cpu).unwrap();
    (token_nll(model, &batch).unwrap().sum_all().unwrap() / batch.tokens as f64).unwrap()
}

/// Seeded normal noise, so the test is the same on every run.
fn noise(shape: &candle_core::Shape, std: f64, seed: u64) -> Tensor {
    let mut rng = sweep::util::rng::SplitMix64::new(seed);
    let v: Vec<f64> = (0..shape.elem_count())
        .map(|_| rng.normal() * std)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

/// Central differences at a few entries of every trainable tensor; returns the worst relative error.
fn check(model: &CausalLm) -> f64 {
    let grads = model.gradients(&loss(model).backward().unwrap()).unwrap();
    let eps = 1e-6;
    let mut worst = 0.0f64;
    let mut checked = 0;
    for ((name, var), g) in model.trainable().iter().zip(&grads) {
        let analytic = g
            .as_ref()
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let original = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let n = original.len();
        for &i in &[0, n / 3, n / 2, n - 1] {
            let nudged = |delta: f64| {
                let mut v = original.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.as_tensor().shape(), &Device::Cpu).unwrap())
                    .unwrap();
                scalar(&loss(model))
            };
            let numeric = (nudged(eps) - nudged(-eps)) / (2.0 * eps);
            var.set(
                &Tensor::from_vec(original.clone(), var.as_tensor().shape(), &Device::Cpu).unwrap(),
            )
            .unwrap();
            // Relative error, with an absolute floor: a gradient near 1e-7 is below what central
            // differences resolve on a loss near 2 (rounding ~1e-16 * 2 / eps).
            let err = (numeric - analytic[i]).abs() / (numeric.abs() + analytic[i].abs()).max(1e-3);
            assert!(
                err < 1e-5,
                "{name}[{i}]: finite difference {numeric:e}, backprop {:e}",
                analytic[i]
            );
            worst = worst.max(err);
            checked += 1;
        }
    }
    assert!(checked > 0);
    worst
}

#[test]
fn full_model_gradients_match_finite_differences() {
    let cfg = config();
    let w = CausalLm::random_weights(&cfg, 11, DType::F64, &Device::Cpu).unwrap();
    // Norm gains start at 1; make them generic so their gradients are tested off the easy point.
    let mut w = w;
    for (name, t) in w.iter_mut() {
        if name.ends_with("norm.weight") {
            *t = (t.clone() + noise(t.shape(), 0.3, name.len() as u64)).unwrap();
        } else {
            // std 0.02 is too flat for a meaningful check; use larger weights.
            *t = (t.clone() * 20.0).unwrap();
        }
    }
    let model = CausalLm::new(cfg.clone(), &w, Trainable::All, 1, &Device::Cpu, "t").unwrap();
    let names: Vec<&str> = model.trainable().iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ] {
        assert!(names.contains(&expected), "{expected} is not trainable");
    }
    let worst = check(&model);
    eprintln!("worst relative error (full): {worst:e}");

    let mut tied = cfg;
    tied.tie_word_embeddings = true;
    let mut w = w;
    w.remove("lm_head.weight");
    let model = CausalLm::new(tied, &w, Trainable::All, 1, &Device::Cpu, "t").unwrap();
    check(&model);
}

#[test]
fn qwen2_biases_train_and_match_finite_differences() {
    let mut cfg = config();
    cfg.model_type = "qwen2".into();
    let w: std::collections::HashMap<String, Tensor> =
        CausalLm::random_weights(&cfg, 13, DType::F64, &Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, (t * 20.0).unwrap()))
            .collect();
    assert!(w.contains_key("model.layers.1.self_attn.k_proj.bias"));
    assert!(!w.contains_key("model.layers.1.self_attn.o_proj.bias"));
    let model = CausalLm::new(cfg, &w, Trainable::All, 1, &Device::Cpu, "t").unwrap();
    let names: Vec<&str> = model.trainable().iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"model.layers.0.self_attn.q_proj.bias"));
    check(&model);
}

/// Qwen3 (per-head q/k norms, head_dim of its own), ERNIE 4.5 (interleaved rotary pairs, biases
/// on every projection, head_dim of its own) and Mistral (within its window): every weight's
/// gradient, the norms and biases included, against finite differences, with fused and composed
/// inner operations.
#[test]
fn qwen3_ernie_and_mistral_gradients_match_finite_differences() {
    for (model_type, extra_weight) in [
        ("qwen3", "model.layers.1.self_attn.k_norm.weight"),
        ("ernie4_5", "model.layers.0.mlp.down_proj.bias"),
        ("mistral", "model.layers.0.self_attn.o_proj.weight"),
    ] {
        let mut cfg = config();
        cfg.model_type = model_type.into();
        match model_type {
            "mistral" => cfg.sliding_window = Some(8),
            "ernie4_5" => {
                cfg.use_bias = true;
                cfg.head_dim = Some(6);
            }
            _ => cfg.head_dim = Some(6),
        }
        cfg.validate("config.json").unwrap();
        let w: std::collections::HashMap<String, Tensor> =
            CausalLm::random_weights(&cfg, 17, DType::F64, &Device::Cpu)
                .unwrap()
                .into_iter()
                .map(|(n, t)| {
                    let t = if n.ends_with("norm.weight") {
                        (t.clone() + noise(t.shape(), 0.3, n.len() as u64)).unwrap()
                    } else {
                        (t * 20.0).unwrap()
                    };
                    (n, t)
                })
                .collect();
        assert!(w.contains_key(extra_weight), "{model_type}: {extra_weight}");
        for kernels in [Kernels::Fused, Kernels::Composed] {
            let model = CausalLm::new(cfg.clone(), &w, Trainable::All, 1, &Device::Cpu, "t")
                .unwrap()
                .with_kernels(kernels);
            let names: Vec<&str> = model.trainable().iter().map(|(n, _)| n.as_str()).collect();
            assert!(
                names.contains(&extra_weight),
                "{model_type}: {extra_weight}"
            );
            let worst = check(&model);
            eprintln!("{model_type} {kernels:?}: worst relative error {worst:e}");
        }
    }
}

#[test]
fn lora_gradients_match_finite_differences() {
    let cfg = config();
    let w: std::collections::HashMap<String, Tensor> =
        CausalLm::random_weights(&cfg, 5, DType::F64, &Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, (t * 20.0).unwrap()))
            .collect();
    let lora = LoraSettings {
        rank: 2,
        alpha: 4.0,
        targets: sweep::spec::shape::LORA_TARGETS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let model = CausalLm::new(cfg, &w, Trainable::Lora(lora), 2, &Device::Cpu, "t").unwrap();
    assert_eq!(model.trainable().len(), 2 * 7 * 2);
    // B starts at zero, which makes A's gradient zero; move B off zero so both are tested.
    for (name, var) in model.trainable() {
        if name.contains("lora_B") {
            let t = noise(var.as_tensor().shape(), 0.5, name.len() as u64);
            var.set(&t).unwrap();
        }
    }
    let worst = check(&model);
    eprintln!("worst relative error (lora): {worst:e}");
}

fn snapshot(pairs: Vec<(String, Tensor)>) -> Vec<(String, Vec<f32>)> {
    pairs
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn lora_training_changes_only_the_adapters() {
    let cfg = config();
    let w = CausalLm::random_weights(&cfg, 5, DType::F32, &Device::Cpu).unwrap();
    let lora = LoraSettings {
        rank: 4,
        alpha: 8.0,
        targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
    };
    let model = CausalLm::new(cfg, &w, Trainable::Lora(lora), 2, &Device::Cpu, "t").unwrap();
    let base_before = snapshot(model.base_tensors());
    let adapters_before = snapshot(model.trainable_tensors());
    // The optimizer step a trial takes, on one device.
    let mut replicas = Replicas::new(model, &[], 0.01, 2).unwrap();
    let s = seqs();
    let refs: Vec<&Seq> = s.iter().collect();
    let first = replicas.step(&refs, 2, 0, 1e-2, 1.0).unwrap().loss;
    let mut last = first;
    for _ in 0..30 {
        last = replicas.step(&refs, 2, 0, 1e-2, 1.0).unwrap().loss;
    }
    let model = replicas.primary();
    assert!(
        last < first,
        "LoRA training did not lower the loss: {first} -> {last}"
    );
    assert_eq!(
        snapshot(model.base_tensors()),
        base_before,
        "a frozen base weight changed"
    );
    let adapters_after = snapshot(model.trainable_tensors());
    for ((name, before), (_, after)) in adapters_before.iter().zip(&adapters_after) {
        assert_ne!(before, after, "adapter {name} did not train");
    }
}

#[test]
fn micro_batches_accumulate_to_the_same_step_as_one_batch() {
    let cfg = config();
    let w = CausalLm::random_weights(&cfg, 9, DType::F64, &Device::Cpu).unwrap();
    let s = seqs();
    let refs: Vec<&Seq> = s.iter().collect();
    let run = |micro: usize| {
        let model = CausalLm::new(cfg.clone(), &w, Trainable::All, 1, &Device::Cpu, "t").unwrap();
        let mut replicas = Replicas::new(model, &[], 0.0, 1).unwrap();
        let losses: Vec<f64> = (0..3)
            .map(|_| replicas.step(&refs, micro, 0, 1e-2, 0.0).unwrap().loss)
            .collect();
        let model = replicas.primary();
        let weights: Vec<f64> = model
            .base_tensors()
            .iter()
            .flat_map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f64>().unwrap())
            .collect();
        (losses, weights)
    };
    let (l3, w3) = run(3);
    let (l1, w1) = run(1);
    for (a, b) in l3.iter().zip(&l1) {
        assert!((a - b).abs() < 1e-10, "{l3:?} vs {l1:?}");
    }
    let max_diff = w3
        .iter()
        .zip(&w1)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(max_diff < 1e-10, "weights differ by {max_diff}");
}

#[test]
fn shared_prefix_gradients_match_finite_differences_of_the_plain_loss() {
    // Three sequences that share bos and a 3-token system prompt, computed once by backprop.
    let seqs = [
        Seq {
            ids: vec![1, 5, 6, 7, 8, 9, 2],
            loss_from: 5,
        },
        Seq {
            ids: vec![1, 5, 6, 7, 10, 2],
            loss_from: 5,
        },
        Seq {
            ids: vec![1, 5, 6, 7, 11, 12, 2],
            loss_from: 6,
        },
    ];
    let refs: Vec<&Seq> = seqs.iter().collect();
    assert_eq!(sweep::trainer::batch::shared_prefix_len(&refs), 4);
    let cfg = config();
    let w: std::collections::HashMap<String, Tensor> =
        CausalLm::random_weights(&cfg, 19, DType::F64, &Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, (t * 20.0).unwrap()))
            .collect();
    let model = CausalLm::new(cfg, &w, Trainable::All, 1, &Device::Cpu, "t").unwrap();
    let tokens = sweep::trainer::step::counted_tokens(&refs) as f64;
    let shared =
        sweep::trainer::step::shard_gradients_with(&model, &refs, 3, 0, tokens, true).unwrap();
    let plain_loss = |m: &CausalLm| {
        let batch = make_batch(&refs, 0, &Device::Cpu).unwrap();
        scalar(&(token_nll(m, &batch).unwrap().sum_all().unwrap() / tokens).unwrap())
    };
    let eps = 1e-6;
    for ((name, var), grad) in model.trainable().iter().zip(&shared.grads) {
        let analytic = grad.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let original = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let n = original.len();
        for &i in &[0, n / 2, n - 1] {
            let nudged = |delta: f64| {
                let mut v = original.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.as_tensor().shape(), &Device::Cpu).unwrap())
                    .unwrap();
                plain_loss(&model)
            };
            let numeric = (nudged(eps) - nudged(-eps)) / (2.0 * eps);
            var.set(
                &Tensor::from_vec(original.clone(), var.as_tensor().shape(), &Device::Cpu).unwrap(),
            )
            .unwrap();
            let err = (numeric - analytic[i]).abs() / (numeric.abs() + analytic[i].abs()).max(1e-3);
            assert!(
                err < 1e-5,
                "{name}[{i}]: finite difference {numeric:e}, shared-prefix backprop {:e}",
                analytic[i]
            );
        }
    }
}
