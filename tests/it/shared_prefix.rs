//! Shared-prefix scoring and training against the plain computation: candidate scores from one
//! prompt pass and a label trie equal every (prompt, label) sequence scored whole (the tiny base
//! through a chat template, with and without LoRA, and Qwen2's biases and grouped heads), and the
//! search for the best labels finds the labels those scores rank first; the dev loss with the
//! dev set's common prefix computed once equals the plain mean; and
//! gradients with each micro-batch's common prefix computed once equal the plain gradients (sft,
//! LoRA, micro-batches, two devices).

use candle_core::{DType, Device, Tensor, Var};
use sweep::spec::shape::ModelConfig;
use sweep::spec::ModelSource;
use sweep::stats::classify::{argmax, top_k};
use sweep::text::data::load_examples;
use sweep::text::encode::{answer_ids, prompt_ids, supervised, Seq};
use sweep::text::tokenizer::load_tokenizer;
use sweep::trainer::batch::{make_batch, token_nll};
use sweep::trainer::model::{load_hf_folder, CausalLm, LoraSettings, Trainable};
use sweep::trainer::optim::{AdamW, Clip};
use sweep::trainer::parallel::Replicas;
use sweep::trainer::scoring::{
    candidate_scores, candidate_scores_plain, candidate_top_k, candidate_top_k_by_search, dev_loss,
    Candidates,
};
use sweep::trainer::step::{counted_tokens, shard_gradients_with};
use sweep::util::rng::SplitMix64;

use crate::common::{repo, small_data};

fn lora(targets: &[&str]) -> Trainable {
    Trainable::Lora(LoraSettings {
        rank: 4,
        alpha: 8.0,
        targets: targets.iter().map(|t| t.to_string()).collect(),
    })
}

/// Sets every LoRA B to seeded noise, so the adapters change the scores.
fn perturb_adapters(model: &CausalLm) {
    let mut rng = SplitMix64::new(3);
    for (name, var) in model.trainable() {
        if name.contains("lora_B") {
            let v: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.normal() as f32 * 0.05)
                .collect();
            var.set(&Tensor::from_vec(v, var.shape(), var.device()).unwrap())
                .unwrap();
        }
    }
}

fn worst(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter()
                .zip(y)
                .map(|(p, q)| if p == q { 0.0 } else { (p - q).abs() })
        })
        .fold(0.0, f64::max)
}

#[test]
fn shared_scoring_equals_whole_sequences_through_a_chat_template_with_and_without_lora() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("model");
    std::fs::create_dir_all(&folder).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(repo().join("models/tiny-base").join(f), folder.join(f)).unwrap();
    }
    let template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
    std::fs::write(
        folder.join("tokenizer_config.json"),
        serde_json::json!({"chat_template": template, "eos_token": "<eos>"}).to_string(),
    )
    .unwrap();
    let (train, dev) = small_data(tmp.path(), 60, 12);
    let train = load_examples(&train).unwrap();
    let dev = load_examples(&dev).unwrap();
    let tok = load_tokenizer(&ModelSource::Path(folder.clone()), &train).unwrap();
    assert!(tok.chat.is_some());
    let mut labels: Vec<String> = train.iter().filter_map(|e| e.tgt.clone()).collect();
    labels.sort();
    labels.dedup();
    let candidates = Candidates {
        answers: labels
            .iter()
            .map(|l| answer_ids(&tok, l).unwrap())
            .collect(),
        labels,
    };
    let prompts: Vec<Vec<u32>> = dev.iter().map(|e| prompt_ids(&tok, e).unwrap()).collect();
    let longest = prompts.iter().map(Vec::len).max().unwrap();
    let (config, weights) = load_hf_folder(&folder, &Device::Cpu).unwrap();
    for trainable in [Trainable::All, lora(&["q_proj", "v_proj", "up_proj"])] {
        let model =
            CausalLm::new(config.clone(), &weights, trainable, 1, &Device::Cpu, "t").unwrap();
        perturb_adapters(&model);
        // Roomy, then so tight that some prompts are cut (and scored the plain way), with forward
        // passes of one prompt and of several.
        for (max_len, eval_batch) in [(longest + 40, 64), (longest + 40, 1), (longest, 3)] {
            let shared =
                candidate_scores(&model, &prompts, &candidates, false, max_len, 0, eval_batch)
                    .unwrap();
            let plain = candidate_scores_plain(
                &model,
                &prompts,
                &candidates,
                false,
                max_len,
                0,
                eval_batch,
            )
            .unwrap();
            let d = worst(&shared, &plain);
            assert!(d < 1e-4, "max_len {max_len}, eval_batch {eval_batch}: {d}");
            // The dev loss with the dev set's common prefix computed once: the plain mean.
            let seqs: Vec<Seq> = dev
                .iter()
                .zip(&prompts)
                .map(|(e, p)| {
                    let a = answer_ids(&tok, e.tgt.as_deref().unwrap()).unwrap();
                    supervised(p, &a, false, max_len, e.line).unwrap()
                })
                .collect();
            let refs: Vec<&Seq> = seqs.iter().collect();
            let batch = make_batch(&refs, 0, &Device::Cpu).unwrap();
            let plain_loss = token_nll(&model.detached(), &batch)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
                / batch.tokens as f64;
            let shared_loss = dev_loss(&model, &seqs, 0, eval_batch).unwrap();
            assert!(
                (shared_loss - plain_loss).abs() < 1e-5 * plain_loss.max(1.0),
                "dev loss, max_len {max_len}, eval_batch {eval_batch}: {shared_loss} vs {plain_loss}"
            );
            assert!(shared.iter().flatten().all(|s| s.is_finite() && *s < 0.0));
            // The search for the best three labels: the labels the full scores rank first, in
            // their order (ties: lower index), with the same scores.
            let searched = candidate_top_k_by_search(
                &model,
                &prompts,
                &candidates,
                false,
                max_len,
                0,
                eval_batch,
                3,
            )
            .unwrap();
            // The small trie here is scored whole by `candidate_top_k`: the same answer.
            let ranked = candidate_top_k(
                &model,
                &prompts,
                &candidates,
                false,
                max_len,
                0,
                eval_batch,
                3,
            )
            .unwrap();
            assert_eq!(
                searched.iter().map(|t| t[0].0).collect::<Vec<_>>(),
                ranked.iter().map(|t| t[0].0).collect::<Vec<_>>()
            );
            for ((found, full), whole) in searched.iter().zip(&shared).zip(&plain) {
                let want = top_k(full, 3);
                let labels = |v: &[(usize, f64)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
                assert_eq!(labels(found), labels(&want), "{found:?} vs {want:?}");
                assert_eq!(found.first().map(|x| x.0), argmax(whole));
                for ((_, a), (_, b)) in found.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-4, "{a} vs {b}");
                }
            }
        }
    }
}

#[test]
fn shared_scoring_equals_whole_sequences_for_qwen2() {
    let folder = repo().join("tests/fixtures/hf/tiny-qwen2");
    let (config, weights) = load_hf_folder(&folder, &Device::Cpu).unwrap();
    let vocab = config.vocab_size as u32;
    let mut rng = SplitMix64::new(9);
    let mut draw = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| 3 + rng.below(vocab as usize - 3) as u32)
            .collect()
    };
    let system = draw(17);
    let prompts: Vec<Vec<u32>> = (0..7)
        .map(|i| [system.clone(), draw(2 + i % 4)].concat())
        .collect();
    // Labels that share first tokens, of different lengths, one a prefix of another.
    let a = draw(3);
    let answers = vec![
        a.clone(),
        [a[..2].to_vec(), draw(2)].concat(),
        a[..1].to_vec(),
        draw(4),
    ];
    let candidates = Candidates {
        labels: (0..answers.len()).map(|i| i.to_string()).collect(),
        answers,
    };
    for trainable in [Trainable::All, lora(&["k_proj", "o_proj", "down_proj"])] {
        let model =
            CausalLm::new(config.clone(), &weights, trainable, 1, &Device::Cpu, "t").unwrap();
        perturb_adapters(&model);
        let shared = candidate_scores(&model, &prompts, &candidates, true, 64, 0, 2).unwrap();
        let plain = candidate_scores_plain(&model, &prompts, &candidates, true, 64, 0, 2).unwrap();
        let d = worst(&shared, &plain);
        assert!(d < 1e-4, "{d}");
    }
}

fn config() -> ModelConfig {
    ModelConfig {
        model_type: "llama".into(),
        vocab_size: 29,
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        max_position_embeddings: 64,
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

/// Sequences in the seed's shape: bos, one system prompt, a query, an answer.
fn seqs(n: usize) -> Vec<Seq> {
    let mut rng = SplitMix64::new(21);
    let mut draw = |k: usize| -> Vec<u32> { (0..k).map(|_| 3 + rng.below(26) as u32).collect() };
    let system = draw(11);
    (0..n)
        .map(|i| {
            let mut ids = vec![1];
            ids.extend(&system);
            ids.extend(draw(1 + i % 4));
            let loss_from = ids.len();
            ids.extend(draw(1 + i % 3));
            ids.push(2);
            Seq { ids, loss_from }
        })
        .collect()
}

fn flat(grads: &[Tensor]) -> Vec<f64> {
    grads
        .iter()
        .flat_map(|g| {
            g.flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        })
        .collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn model(trainable: Trainable) -> CausalLm {
    let w = CausalLm::random_weights(&config(), 17, DType::F32, &Device::Cpu).unwrap();
    let m = CausalLm::new(config(), &w, trainable, 5, &Device::Cpu, "t").unwrap();
    perturb_adapters(&m);
    m
}

#[test]
fn shared_prefix_gradients_equal_the_plain_ones_for_sft_lora_and_micro_batches() {
    let data = seqs(6);
    let refs: Vec<&Seq> = data.iter().collect();
    let denominator = counted_tokens(&refs) as f64;
    for trainable in [
        Trainable::All,
        lora(&["q_proj", "k_proj", "v_proj", "gate_proj"]),
    ] {
        let m = model(trainable);
        let plain = shard_gradients_with(&m, &refs, 6, 0, denominator, false).unwrap();
        let norm = flat(&plain.grads).iter().map(|g| g * g).sum::<f64>().sqrt();
        assert!(norm > 1e-3, "the gradients are not all zero: {norm}");
        for micro in [1, 2, 3, 6] {
            let shared = shard_gradients_with(&m, &refs, micro, 0, denominator, true).unwrap();
            assert!(
                (shared.loss - plain.loss).abs() < 1e-5,
                "micro {micro}: loss"
            );
            assert_eq!(shared.input_tokens, plain.input_tokens);
            let d = max_diff(&flat(&shared.grads), &flat(&plain.grads));
            assert!(d < 1e-5, "micro {micro}: gradients differ by {d}");
        }
    }
}

#[test]
fn shared_prefix_steps_on_two_devices_equal_a_plain_step_on_one() {
    let data = seqs(5);
    let refs: Vec<&Seq> = data.iter().collect();
    for trainable in [Trainable::All, lora(&["q_proj", "down_proj"])] {
        // The plain step by hand: gradients, clipping, AdamW.
        let single = model(trainable.clone());
        let denominator = counted_tokens(&refs) as f64;
        let plain = shard_gradients_with(&single, &refs, 2, 0, denominator, false).unwrap();
        let clip = Clip::of(&plain.grads, 1.0).unwrap();
        let vars: Vec<Var> = single.trainable().iter().map(|(_, v)| v.clone()).collect();
        let mut opt = AdamW::new(vars, 0.0).unwrap();
        opt.step_scaled(&plain.grads, clip.scale, 1e-2).unwrap();

        let mut replicas = Replicas::new(model(trainable), &[Device::Cpu], 0.0, 5).unwrap();
        let stats = replicas.step(&refs, 2, 0, 1e-2, 1.0).unwrap();
        assert!((stats.loss - plain.loss).abs() < 1e-5);
        assert!((stats.grad_norm - clip.norm).abs() < 1e-5);
        let weights = |m: &CausalLm| -> Vec<f64> {
            flat(
                &m.trainable()
                    .iter()
                    .map(|(_, v)| v.as_tensor().clone())
                    .collect::<Vec<_>>(),
            )
        };
        let d = max_diff(&weights(replicas.primary()), &weights(&single));
        assert!(d < 1e-5, "weights after the step differ by {d}");
    }
}
