//! LoRA checkpoints in PEFT's layout merge into an ordinary model folder that computes what the
//! adapted model computes.

use candle_core::{Device, Tensor};
use sweep::spec::shape::LORA_TARGETS;
use sweep::text::tokenizer::TextTokenizer;
use sweep::trainer::model::{load_hf_folder, CausalLm, LoraSettings, Trainable};

use crate::common::max_abs_diff;

#[test]
fn a_merged_lora_checkpoint_gives_the_adapted_models_logits() {
    let base =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/tiny-llama");
    let dev = Device::Cpu;
    let (base_config, weights) = load_hf_folder(&base, &dev).unwrap();
    let lora = LoraSettings {
        rank: 4,
        alpha: 8.0,
        targets: LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
    };
    let model = CausalLm::new(
        base_config.clone(),
        &weights,
        Trainable::Lora(lora),
        3,
        &dev,
        "base",
    )
    .unwrap();
    // Trained adapters are not zero: give B values so the merge has something to fold in.
    let mut rng = sweep::util::rng::SplitMix64::new(9);
    for (name, var) in model.trainable() {
        if name.contains("lora_B") {
            let n = var.elem_count();
            let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * 0.3).collect();
            var.set(&Tensor::from_vec(v, var.shape(), &dev).unwrap())
                .unwrap();
        }
    }
    let ids = Tensor::new(&[[1u32, 5, 9, 3, 7, 2, 11, 4]], &dev).unwrap();
    let adapted = model.forward(&ids).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let checkpoint = tmp.path().join("checkpoint");
    let tokenizer = TextTokenizer::build_word_level(["a b c"], 1).unwrap();
    sweep::trainer::checkpoint::save(&model, &tokenizer, &base.display().to_string(), &checkpoint)
        .unwrap();
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(checkpoint.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");

    let merged_dir = tmp.path().join("merged");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sweep"))
        .args([
            "export".as_ref(),
            checkpoint.as_os_str(),
            "--merge".as_ref(),
            merged_dir.as_os_str(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (merged_config, merged_weights) = load_hf_folder(&merged_dir, &dev).unwrap();
    let plain = CausalLm::new(
        merged_config,
        &merged_weights,
        Trainable::All,
        0,
        &dev,
        "merged",
    )
    .unwrap();
    let merged = plain.forward(&ids).unwrap();
    let diff = max_abs_diff(&adapted, &merged);
    let scale = merged
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff / scale < 1e-5,
        "merged logits differ by {diff} (largest {scale})"
    );
    // And the merge really changed the base: the adapters were not zero.
    let base_model = CausalLm::new(base_config, &weights, Trainable::All, 0, &dev, "base").unwrap();
    let moved = max_abs_diff(&base_model.forward(&ids).unwrap(), &merged);
    assert!(moved > 1e-3);
    assert!(merged_dir.join("tokenizer.json").exists());
}

fn logits_close(got: &Tensor, want: &[Vec<Vec<f32>>]) -> f32 {
    let got = got.to_vec3::<f32>().unwrap();
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
    worst / largest
}

/// PEFT's logits with the LoRA folder sweep wrote on fixture `base` (`NAME-lora`, recorded by
/// `scripts/make-hf-fixtures.py --peft`) against ours with the adapters and with the merged
/// export; the export carries the base's tokenizer files and chat template byte for byte.
fn peft_computes_with_our_adapter_what_we_do_and_what_our_merged_export_does(base: &str) {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
    let adapter = root.join(format!("{base}-lora"));
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("expected_logits.json")).unwrap(),
    )
    .unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(expected["ids"].clone()).unwrap();
    let peft: Vec<Vec<Vec<f32>>> = serde_json::from_value(expected["logits"].clone()).unwrap();
    let dev = Device::Cpu;
    let ids = Tensor::new(ids, &dev).unwrap();

    // Ours, adapters loaded from the PEFT-layout folder.
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    let lora = LoraSettings {
        rank: config["r"].as_u64().unwrap() as usize,
        alpha: config["lora_alpha"].as_f64().unwrap(),
        targets: serde_json::from_value(config["target_modules"].clone()).unwrap(),
    };
    let (base_config, base_weights) = load_hf_folder(&root.join(base), &dev).unwrap();
    let model = CausalLm::new(
        base_config,
        &base_weights,
        Trainable::Lora(lora),
        0,
        &dev,
        "base",
    )
    .unwrap();
    let tensors =
        candle_core::safetensors::load(adapter.join("adapter_model.safetensors"), &dev).unwrap();
    model
        .load_adapters(&tensors, "adapter_model.safetensors")
        .unwrap();
    let ours = logits_close(&model.forward(&ids).unwrap(), &peft);
    assert!(
        ours < 1e-4,
        "{base}: our LoRA model vs PEFT: relative {ours}"
    );

    // The merged export, loaded as a plain model.
    let tmp = tempfile::tempdir().unwrap();
    let merged_dir = tmp.path().join("merged");
    sweep::trainer::checkpoint::export_merged(&adapter, &merged_dir).unwrap();
    let (c, w) = load_hf_folder(&merged_dir, &dev).unwrap();
    let merged = CausalLm::new(c, &w, Trainable::All, 0, &dev, "merged").unwrap();
    let rel = logits_close(&merged.forward(&ids).unwrap(), &peft);
    assert!(rel < 1e-4, "{base}: merged export vs PEFT: relative {rel}");
    eprintln!("{base}: relative difference to PEFT: adapted {ours:e}, merged {rel:e}");
    for (name, bytes) in sweep::trainer::checkpoint::tokenizer_files(&root.join(base)) {
        let carried = std::fs::read(merged_dir.join(name))
            .unwrap_or_else(|_| panic!("{base}: the merged export has no {name}"));
        assert_eq!(carried, bytes, "{base}: {name} differs from the base's");
    }
}

#[test]
fn peft_loads_our_llama_adapters_as_we_do_and_as_our_merged_export_computes() {
    peft_computes_with_our_adapter_what_we_do_and_what_our_merged_export_does("tiny-llama");
}

#[test]
fn peft_loads_our_qwen3_ernie_and_mistral_adapters_as_we_do_and_as_our_merged_exports_compute() {
    for base in ["tiny-qwen3", "tiny-ernie4_5", "tiny-mistral"] {
        peft_computes_with_our_adapter_what_we_do_and_what_our_merged_export_does(base);
    }
    // The chat template travels in the form the base has it: its own file, or inside
    // tokenizer_config.json (and then no chat_template.jinja appears).
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
    let tmp = tempfile::tempdir().unwrap();
    for (base, jinja) in [("tiny-qwen3", true), ("tiny-ernie4_5", false)] {
        let merged = tmp.path().join(base);
        sweep::trainer::checkpoint::export_merged(&root.join(format!("{base}-lora")), &merged)
            .unwrap();
        assert_eq!(merged.join("chat_template.jinja").exists(), jinja, "{base}");
        let template = sweep::text::chat::ChatTemplate::from_folder(&merged).unwrap();
        assert!(
            template.is_some(),
            "{base}: the merged folder has a chat template"
        );
    }
}
