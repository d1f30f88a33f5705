//! The head methods (`classifier`, `classifier_lora`) end to end: a transformers-made
//! `LlamaForSequenceClassification` folder scores as transformers does (prompt ids through the chat
//! template, the last token's head log-probabilities); one sweep trains generative and head
//! methods side by side; a head checkpoint evaluates and predicts, and a `classifier_lora` one
//! merges into a `*ForSequenceClassification` folder that evaluates the same.

use std::collections::HashMap;
use std::path::Path;

use sweep::text::encode::prompt_ids;
use sweep::trainer::checkpoint_eval::{read_examples, Scorer};

use crate::common::{csv_rows, repo, run, small_data};

#[test]
fn a_transformers_classifier_folder_scores_as_transformers_does() {
    let dir = repo().join("tests/fixtures/hf/tiny-llama-classifier");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let data = dir.join("data.json");
    let examples = read_examples(std::fs::read(&data).unwrap(), &data).unwrap();
    let scorer = Scorer::load(&dir).unwrap();
    assert!(scorer.model.score_head().is_some());
    // The prompt as transformers' apply_chat_template(add_generation_prompt=True) renders it.
    for (example, ids) in examples.iter().zip(expected["ids"].as_array().unwrap()) {
        let ids: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
        assert_eq!(prompt_ids(&scorer.tokenizer, example).unwrap(), ids);
    }
    // Its head over the last prompt token, in batches of 2 (one row padded), as transformers
    // pools the last non-pad token of one right-padded batch.
    let scores = scorer.scores(&examples).unwrap();
    let want: Vec<Vec<f64>> = serde_json::from_value(expected["log_probs"].clone()).unwrap();
    for (got, want) in scores.iter().flatten().zip(want.iter().flatten()) {
        assert!((got - want).abs() < 1e-4, "{got} vs transformers' {want}");
    }
}

/// tiny-base with a chat template, as the seed's users' models have one.
fn chat_model(root: &Path) -> std::path::PathBuf {
    let model = root.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(repo().join("models/tiny-base").join(f), model.join(f)).unwrap();
    }
    let template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
    std::fs::write(
        model.join("tokenizer_config.json"),
        serde_json::json!({"chat_template": template, "eos_token": "<eos>"}).to_string(),
    )
    .unwrap();
    model
}

fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tensor_names(path: &Path) -> Vec<String> {
    let tensors: HashMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    let mut names: Vec<String> = tensors.into_keys().collect();
    names.sort();
    names
}

/// `sweep eval --json`'s accuracy of `checkpoint` on `data`.
fn eval_accuracy(checkpoint: &Path, data: &Path) -> f64 {
    let out = run(&[
        "eval".as_ref(),
        checkpoint.as_os_str(),
        data.as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(out.status.success(), "{}", checkpoint.display());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["accuracy"].as_f64().unwrap()
}

#[test]
fn one_sweep_trains_both_approaches_and_head_checkpoints_evaluate_predict_and_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let model = chat_model(tmp.path());
    let (train, dev) = small_data(tmp.path(), 48, 20);
    let out_dir = tmp.path().join("out");
    let spec = tmp.path().join("methods.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: methods\ndata: {{train: {}, dev: {}, system_prompt: drop}}\nmodel: {{path: {}}}\noutput: {}\nparameters:\n  method: {{values: [sft, classifier, classifier_lora]}}\n  epochs: {{value: 2}}\n  learning_rate: {{value: 1.0e-2}}\n",
            train.display(),
            dev.display(),
            model.display(),
            out_dir.display()
        ),
    )
    .unwrap();
    let check = run(&["check".as_ref(), spec.as_os_str()]);
    assert!(check.status.success());
    let said = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(
        said.contains("system_prompt: drop") && said.contains("classifier, classifier_lora"),
        "check names the methods the option applies to: {said}"
    );
    assert!(run(&["run".as_ref(), spec.as_os_str(), "--quiet".as_ref()])
        .status
        .success());
    let rows = csv_rows(&out_dir);
    assert!(rows.iter().all(|r| r["status"] == "finished"), "{rows:?}");
    let methods: Vec<&str> = rows.iter().map(|r| r["method"].as_str()).collect();
    assert_eq!(methods, ["sft", "classifier", "classifier_lora"]);
    let recorded = |trial: &str| -> f64 {
        rows.iter().find(|r| r["trial"] == trial).unwrap()["accuracy"]
            .parse()
            .unwrap()
    };

    // classifier: a full `LlamaForSequenceClassification` folder.
    let full = out_dir.join("trials/0002/checkpoint");
    let config = json_file(&full.join("config.json"));
    assert_eq!(config["architectures"][0], "LlamaForSequenceClassification");
    let labels = json_file(&full.join("labels.json"));
    assert_eq!(labels["drop_system_prompt"], true);
    let n = labels["labels"].as_array().unwrap().len();
    assert_eq!(config["num_labels"], n);
    assert_eq!(config["id2label"]["0"], labels["labels"][0]);
    let names = tensor_names(&full.join("model.safetensors"));
    assert!(names.contains(&"score.weight".to_string()));
    assert!(!names.contains(&"lm_head.weight".to_string()));
    assert!(
        full.join("tokenizer_config.json").exists(),
        "the chat template"
    );

    // classifier_lora: PEFT's SEQ_CLS adapter folder.
    let adapter = out_dir.join("trials/0003/checkpoint");
    let adapter_config = json_file(&adapter.join("adapter_config.json"));
    assert_eq!(adapter_config["task_type"], "SEQ_CLS");
    assert_eq!(
        adapter_config["modules_to_save"],
        serde_json::json!(["score"])
    );
    let names = tensor_names(&adapter.join("adapter_model.safetensors"));
    assert!(names.contains(&"base_model.model.score.weight".to_string()));
    assert!(names.iter().any(|n| n.ends_with("lora_A.weight")));

    // Its merged export: a full classification folder, with what eval needs.
    let merged = tmp.path().join("merged");
    assert!(run(&[
        "export".as_ref(),
        adapter.as_os_str(),
        "--merge".as_ref(),
        merged.as_os_str()
    ])
    .status
    .success());
    let merged_config = json_file(&merged.join("config.json"));
    assert_eq!(
        merged_config["architectures"][0],
        "LlamaForSequenceClassification"
    );
    assert_eq!(merged_config["id2label"], config["id2label"]);
    let names = tensor_names(&merged.join("model.safetensors"));
    assert!(names.contains(&"score.weight".to_string()));
    assert!(!names.iter().any(|n| n.contains("lora_")));

    // eval reproduces each trial's dev accuracy, the merged folder its adapters'.
    for (checkpoint, trial) in [(&full, "2"), (&adapter, "3"), (&merged, "3")] {
        let accuracy = eval_accuracy(checkpoint, &dev);
        assert!(
            (accuracy - recorded(trial)).abs() < 1e-9,
            "{}: {accuracy} vs {}",
            checkpoint.display(),
            recorded(trial)
        );
    }
    // predict: one line per query, the predicted label among train's and every label scored.
    let predicted = run(&["predict".as_ref(), adapter.as_os_str(), dev.as_os_str()]);
    assert!(predicted.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&predicted.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20);
    let known: Vec<&serde_json::Value> = labels["labels"].as_array().unwrap().iter().collect();
    for line in &lines {
        assert!(known.contains(&&line["predicted"]), "{line}");
        let p: f64 = line["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["p"].as_f64().unwrap())
            .sum();
        assert!(p <= 1.0 + 1e-9);
    }
    // The dev predictions of the head trial, as the generative ones have.
    let dev_predictions =
        std::fs::read_to_string(out_dir.join("trials/0002/dev_predictions.jsonl")).unwrap();
    assert_eq!(dev_predictions.lines().count(), 20);
}

/// The head methods on two (CPU) devices take the same steps as on one at the same global batch,
/// with an odd batch (shards of 3 and 2) sharing a prefix, full and LoRA.
#[test]
fn head_steps_on_two_devices_equal_one_device() {
    use candle_core::{Device, Tensor};
    use sweep::text::encode::Seq;
    use sweep::trainer::model::{load_hf_folder, CausalLm, LoraSettings, Trainable};
    use sweep::trainer::parallel::Replicas;
    use sweep::trainer::step::StepBatch;

    let dev = Device::Cpu;
    let (config, weights) =
        load_hf_folder(&repo().join("tests/fixtures/hf/tiny-llama"), &dev).unwrap();
    let head = sweep::trainer::head::initial_head(3, config.hidden_size, 4, &dev).unwrap();
    let prompts: Vec<Seq> = [
        vec![1u32, 5, 9, 3, 7],
        vec![1, 5, 9, 11, 4, 60],
        vec![1, 5, 9, 33],
        vec![1, 5, 9, 8, 8, 17, 25],
        vec![1, 5, 9, 40],
    ]
    .into_iter()
    .map(|ids| Seq {
        loss_from: ids.len(),
        ids,
    })
    .collect();
    let batch: Vec<(&Seq, u32)> = prompts.iter().zip([0, 2, 1, 2, 0]).collect();
    let lora = LoraSettings {
        rank: 2,
        alpha: 4.0,
        targets: vec!["q_proj".into(), "up_proj".into()],
    };
    for trainable in [Trainable::All, Trainable::Lora(lora)] {
        let replicas = |devices: &[Device]| {
            let model = CausalLm::new(config.clone(), &weights, trainable.clone(), 2, &dev, "t")
                .unwrap()
                .with_score_head(&head)
                .unwrap();
            Replicas::new(model, devices, 0.01, 2).unwrap()
        };
        let (mut one, mut two) = (replicas(&[]), replicas(&[Device::Cpu]));
        for _ in 0..3 {
            let a = one
                .step_batch(StepBatch::Classes(&batch), 2, 0, 1e-2, 1.0)
                .unwrap();
            let b = two
                .step_batch(StepBatch::Classes(&batch), 2, 0, 1e-2, 1.0)
                .unwrap();
            assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
            assert!(a.loss > 0.0 && a.loss.is_finite());
        }
        let values = |r: &Replicas, i: usize| -> Vec<Tensor> {
            r.models()[i]
                .trainable()
                .iter()
                .map(|(_, v)| v.as_tensor().clone())
                .collect()
        };
        for (a, b) in values(&one, 0).iter().zip(values(&two, 0)) {
            assert!(crate::common::max_abs_diff(a, &b) < 1e-5);
        }
        for (a, b) in values(&two, 0).iter().zip(values(&two, 1)) {
            assert_eq!(
                crate::common::max_abs_diff(a, &b),
                0.0,
                "replicas stay identical"
            );
        }
        assert!(two.models()[1].score_head().is_some());
    }
}
