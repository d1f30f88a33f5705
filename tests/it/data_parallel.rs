//! Data parallelism (`gpus: k`), proven on CPU where k CPU devices stand in for GPUs: k replicas
//! at the same global batch take the same steps as one device (losses, gradient norms, weights),
//! stay identical to each other, also with uneven shards, micro-batches and LoRA; and a sweep
//! with `gpus: 2` runs and reports its devices in results.csv.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use sweep::spec::shape::ModelConfig;
use sweep::text::encode::Seq;
use sweep::trainer::model::{CausalLm, LoraSettings, Trainable};
use sweep::trainer::parallel::{shard_ranges, Replicas};
use sweep::trainer::step::counted_tokens;
use sweep::util::rng::SplitMix64;

use crate::common::{csv_rows, run, write_spec};

const STEPS: usize = 6;
const LR: f64 = 1e-2;
const WEIGHT_DECAY: f64 = 0.01;
/// Low enough that clipping acts on the first steps, so the single clip of the summed gradient
/// is tested too.
const MAX_GRAD_NORM: f64 = 1.0;

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

/// `n` sequences of different lengths and answer starts, so shards differ in their token counts
/// (averaging per-device mean losses would then weight tokens unequally; summing shares of the
/// global mean does not).
fn seqs(n: usize, seed: u64) -> Vec<Seq> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let len = 4 + rng.below(9);
            let mut ids = vec![1];
            ids.extend((1..len - 1).map(|_| 3 + rng.below(26) as u32));
            ids.push(2);
            let loss_from = 1 + rng.below(len - 2);
            Seq { ids, loss_from }
        })
        .collect()
}

fn weights(dtype: DType) -> HashMap<String, Tensor> {
    CausalLm::random_weights(&config(), 17, dtype, &Device::Cpu).unwrap()
}

fn lora() -> Trainable {
    Trainable::Lora(LoraSettings {
        rank: 4,
        alpha: 8.0,
        targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
    })
}

fn values(model: &CausalLm) -> Vec<Vec<f64>> {
    model
        .trainable()
        .iter()
        .map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        })
        .collect()
}

fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// What a run did: per step (loss, grad norm, input tokens), and the trainable values of every
/// replica at the end (one entry for the single-device run).
struct Run {
    steps: Vec<(f64, f64, usize)>,
    replicas: Vec<Vec<Vec<f64>>>,
    before: Vec<Vec<f64>>,
}

/// `STEPS` steps over the batches `batches` (cycled) on one device: one replica, as every trial
/// ran before data parallelism.
fn one_device(trainable: &Trainable, dtype: DType, batches: &[Vec<Seq>], micro: usize) -> Run {
    let model = CausalLm::new(
        config(),
        &weights(dtype),
        trainable.clone(),
        5,
        &Device::Cpu,
        "t",
    )
    .unwrap();
    let before = values(&model);
    let mut replicas = Replicas::new(model, &[], WEIGHT_DECAY, 5).unwrap();
    let steps = (0..STEPS)
        .map(|i| {
            let refs: Vec<&Seq> = batches[i % batches.len()].iter().collect();
            let s = replicas.step(&refs, micro, 0, LR, MAX_GRAD_NORM).unwrap();
            (s.loss, s.grad_norm, s.input_tokens)
        })
        .collect();
    Run {
        steps,
        replicas: vec![values(replicas.primary())],
        before,
    }
}

/// The same on `k` CPU replicas.
fn k_devices(
    k: usize,
    trainable: &Trainable,
    dtype: DType,
    batches: &[Vec<Seq>],
    micro: usize,
) -> Run {
    let primary = CausalLm::new(
        config(),
        &weights(dtype),
        trainable.clone(),
        5,
        &Device::Cpu,
        "t",
    )
    .unwrap();
    let before = values(&primary);
    let mut replicas = Replicas::new(primary, &vec![Device::Cpu; k - 1], WEIGHT_DECAY, 5).unwrap();
    assert_eq!(replicas.count(), k);
    let steps = (0..STEPS)
        .map(|i| {
            let refs: Vec<&Seq> = batches[i % batches.len()].iter().collect();
            let s = replicas.step(&refs, micro, 0, LR, MAX_GRAD_NORM).unwrap();
            (s.loss, s.grad_norm, s.input_tokens)
        })
        .collect();
    Run {
        steps,
        replicas: replicas.models().iter().map(values).collect(),
        before,
    }
}

/// The k-device run took the single-device run's steps, its replicas are identical, and training
/// really moved the weights (so agreeing is not agreeing on the start).
fn assert_same_training(single: &Run, parallel: &Run, weight_tolerance: f64) {
    assert_eq!(single.steps.len(), STEPS);
    for (i, (a, b)) in single.steps.iter().zip(&parallel.steps).enumerate() {
        let rel = |x: f64, y: f64| (x - y).abs() / x.abs().max(y.abs()).max(1e-12);
        assert!(
            rel(a.0, b.0) < 1e-5,
            "step {}: loss {} on one device, {} on several",
            i + 1,
            a.0,
            b.0
        );
        assert!(
            rel(a.1, b.1) < 1e-5,
            "step {}: grad norm {} vs {}",
            i + 1,
            a.1,
            b.1
        );
        assert_eq!(a.2, b.2, "step {}: input tokens", i + 1);
    }
    let primary = &parallel.replicas[0];
    for (r, replica) in parallel.replicas.iter().enumerate().skip(1) {
        assert_eq!(replica, primary, "replica {r} differs from replica 0");
    }
    let moved = max_abs_diff(&single.replicas[0], &single.before);
    assert!(moved > 1e-3, "training barely moved the weights: {moved}");
    let diff = max_abs_diff(&single.replicas[0], primary);
    let worst_loss = single
        .steps
        .iter()
        .zip(&parallel.steps)
        .map(|(a, b)| (a.0 - b.0).abs() / a.0.abs())
        .fold(0.0, f64::max);
    eprintln!("worst relative loss difference {worst_loss:e}, weights {diff:e} (moved {moved:e})");
    assert!(
        diff < weight_tolerance,
        "weights after {STEPS} steps differ by {diff} from one device's (moved by {moved})"
    );
}

#[test]
fn two_devices_take_the_same_steps_as_one_at_the_same_global_batch() {
    // Two different batches of 8, alternating; one device sees all 8 in one forward pass, each
    // of two devices sees 4.
    let batches = vec![seqs(8, 1), seqs(8, 2)];
    for dtype in [DType::F32, DType::F64] {
        let single = one_device(&Trainable::All, dtype, &batches, 8);
        let parallel = k_devices(2, &Trainable::All, dtype, &batches, 8);
        let tolerance = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        assert_same_training(&single, &parallel, tolerance);
    }
}

#[test]
fn an_odd_batch_splits_three_and_two_and_stays_exact() {
    let batch = seqs(5, 3);
    let refs: Vec<&Seq> = batch.iter().collect();
    let ranges = shard_ranges(5, 2);
    assert_eq!(ranges, vec![0..3, 3..5]);
    // The shards' token counts are not 3:2, so a mean of per-device means would be wrong here.
    let first = counted_tokens(&refs[ranges[0].clone()]);
    let second = counted_tokens(&refs[ranges[1].clone()]);
    assert_ne!(
        first * 2,
        second * 3,
        "the test batch should be uneven in tokens"
    );
    // And a last batch of one example on two devices: the second sits the step out.
    let batches = vec![batch.clone(), seqs(1, 4)];
    for dtype in [DType::F32, DType::F64] {
        let single = one_device(&Trainable::All, dtype, &batches, 5);
        let parallel = k_devices(2, &Trainable::All, dtype, &batches, 5);
        let tolerance = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        assert_same_training(&single, &parallel, tolerance);
    }
}

#[test]
fn micro_batches_on_each_device_accumulate_to_the_same_step() {
    // Batch 12 on 3 devices with micro-batches of 2 (2 forward passes each) against one device
    // and one forward pass of 12.
    let batches = vec![seqs(12, 5), seqs(12, 6)];
    let single = one_device(&Trainable::All, DType::F64, &batches, 12);
    let parallel = k_devices(3, &Trainable::All, DType::F64, &batches, 2);
    assert_same_training(&single, &parallel, 1e-12);
}

#[test]
fn lora_on_two_devices_matches_one_device_and_leaves_the_base_alone() {
    let batches = vec![seqs(7, 7), seqs(7, 8)];
    for dtype in [DType::F32, DType::F64] {
        let single = one_device(&lora(), dtype, &batches, 7);
        let parallel = k_devices(2, &lora(), dtype, &batches, 7);
        let tolerance = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        assert_same_training(&single, &parallel, tolerance);
    }
    // The frozen base of every replica is the untouched initial weights.
    let primary =
        CausalLm::new(config(), &weights(DType::F32), lora(), 5, &Device::Cpu, "t").unwrap();
    let mut replicas = Replicas::new(primary, &[Device::Cpu], 0.0, 5).unwrap();
    let batch = seqs(6, 9);
    let refs: Vec<&Seq> = batch.iter().collect();
    replicas.step(&refs, 6, 0, LR, MAX_GRAD_NORM).unwrap();
    let initial = weights(DType::F32);
    for model in replicas.models() {
        for (name, tensor) in model.base_tensors() {
            let diff = crate::common::max_abs_diff(&tensor, &initial[&name]);
            assert_eq!(diff, 0.0, "frozen {name} changed");
        }
    }
}

#[test]
fn restoring_the_primary_reaches_every_replica() {
    let primary = CausalLm::new(
        config(),
        &weights(DType::F32),
        Trainable::All,
        5,
        &Device::Cpu,
        "t",
    )
    .unwrap();
    let mut replicas = Replicas::new(primary, &[Device::Cpu, Device::Cpu], 0.0, 5).unwrap();
    // As a resume point does: new values into the primary only.
    replicas
        .restore(|model, _opt| -> anyhow::Result<()> {
            for (_, var) in model.trainable() {
                var.set(&(var.as_tensor() + 0.5)?)?;
            }
            Ok(())
        })
        .unwrap();
    let primary = values(replicas.primary());
    let initial = CausalLm::new(
        config(),
        &weights(DType::F32),
        Trainable::All,
        5,
        &Device::Cpu,
        "t",
    )
    .unwrap();
    assert!(max_abs_diff(&primary, &values(&initial)) > 0.4);
    for model in &replicas.models()[1..] {
        assert_eq!(values(model), primary);
    }
}

#[test]
fn a_sweep_with_gpus_2_trains_on_two_cpu_slots_and_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    // The same trial on one and on two devices: same seed, same global batch.
    let spec = write_spec(
        tmp.path(),
        "parameters:\n  gpus: {values: [1, 2]}\n  epochs: {value: 2}\n  batch_size: {value: 8}\n  learning_rate: {value: 1.0e-2}\n  max_seq_len: {value: 96}\nresources: {devices: cpu, slots: 2, parallel: 2}\n",
    );
    let out = run(&["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()]);
    assert!(out.status.success());
    let results = tmp.path().join("results");
    let rows = csv_rows(&results);
    assert_eq!(rows.len(), 2);
    let row = |gpus: &str| rows.iter().find(|r| r["gpus"] == gpus).unwrap().clone();
    let (one, two) = (row("1"), row("2"));
    for (r, devices, per_device) in [(&one, "1", "8"), (&two, "2", "4")] {
        assert_eq!(r["status"], "finished", "{r:?}");
        assert_eq!(r["devices"], devices, "{r:?}");
        assert_eq!(r["per_device_batch"], per_device, "{r:?}");
        assert_eq!(r["batch_size"], "8", "{r:?}");
    }
    // Same training, so the same dev loss up to float summation order.
    let loss = |r: &HashMap<String, String>| r["dev_loss"].parse::<f64>().unwrap();
    let rel = (loss(&one) - loss(&two)).abs() / loss(&one);
    assert!(rel < 1e-4, "dev loss {} vs {}", loss(&one), loss(&two));

    let events = |trial: &str| -> Vec<serde_json::Value> {
        let dir = results
            .join("trials")
            .join(format!("{:04}", trial.parse::<usize>().unwrap()));
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (e1, e2) = (events(&one["trial"]), events(&two["trial"]));
    assert_eq!(e2[0]["kind"], "start");
    assert_eq!(e2[0]["devices"], serde_json::json!(["cpu", "cpu"]));
    assert_eq!(e2[0]["per_device_batch"], 4);
    assert_eq!(e1[0]["devices"], serde_json::json!(["cpu"]));
    let step_losses = |events: &[serde_json::Value]| -> Vec<f64> {
        events
            .iter()
            .filter(|e| e["kind"] == "step")
            .map(|e| e["loss"].as_f64().unwrap())
            .collect()
    };
    let (l1, l2) = (step_losses(&e1), step_losses(&e2));
    assert!(l1.len() >= 5 && l1.len() == l2.len(), "{l1:?} vs {l2:?}");
    for (a, b) in l1.iter().zip(&l2) {
        assert!((a - b).abs() / a < 1e-4, "step losses {l1:?} vs {l2:?}");
    }
}
