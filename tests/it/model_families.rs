//! What the trainer refuses, `sweep check` refuses first: a model folder of a type sweep does not
//! build, or a sliding window shorter than the trials' sequences, fails the check with the file,
//! line and field, exit 2. And a Qwen3 folder (per-head q/k norms, a chat template of its own)
//! passes the check, trains with LoRA, and its merged export carries the base's tokenizer files
//! and chat template byte for byte.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sweep::text::tokenizer::TextTokenizer;
use sweep::trainer::model::{load_hf_folder, CausalLm, Trainable};

use crate::common::{repo, run};

/// A copy of the fixture `name` in `dir`, with config.json's `key` set to `value` when given.
fn copy_fixture(name: &str, dir: &Path, edit: Option<(&str, serde_json::Value)>) -> PathBuf {
    let from = repo().join("tests/fixtures/hf").join(name);
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    if let Some((key, value)) = edit {
        let path = to.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config[key] = value;
        std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    }
    to
}

const WORDS: [(&str, &str); 3] = [
    ("play some music please", "music"),
    ("wake me up at seven", "alarm"),
    ("will it rain tomorrow", "weather"),
];

/// Train and dev files whose words all fit the fixtures' 64-token vocabulary, and the sweep
/// file naming `model`.
fn write_sweep(dir: &Path, model: &Path, max_seq_len: u32) -> PathBuf {
    let system = "classify: music, alarm or weather";
    let lines = |n: usize| -> String {
        (0..n)
            .map(|i| {
                let (src, tgt) = WORDS[i % WORDS.len()];
                serde_json::json!({"system": system, "src": src, "tgt": tgt}).to_string() + "\n"
            })
            .collect()
    };
    std::fs::write(dir.join("train.json"), lines(12)).unwrap();
    std::fs::write(dir.join("dev.json"), lines(6)).unwrap();
    let spec = format!(
        "name: families\ndata:\n  train: {}\n  dev: {}\nmodel: {{path: {}}}\noutput: {}\nseed: 3\nparameters:\n  method: {{value: lora}}\n  learning_rate: {{value: 1.0e-2}}\n  epochs: {{value: 1}}\n  batch_size: {{value: 4}}\n  lora_rank: {{value: 2}}\n  max_seq_len: {{value: {max_seq_len}}}\nresources: {{devices: cpu, slots: 1, parallel: 1}}\n",
        dir.join("train.json").display(),
        dir.join("dev.json").display(),
        model.display(),
        dir.join("results").display(),
    );
    let path = dir.join("sweep.yaml");
    std::fs::write(&path, spec).unwrap();
    path
}

/// The fixture's tokenizer replaced by a word-level one over the sweep's words (< 64 tokens).
fn with_sweep_tokenizer(model: &Path) {
    let texts = WORDS
        .iter()
        .flat_map(|(src, tgt)| [*src, *tgt])
        .chain(["classify: music, alarm or weather"]);
    let tokenizer = TextTokenizer::build_word_level(texts, 1).unwrap();
    tokenizer.save(&model.join("tokenizer.json")).unwrap();
}

fn output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_model_folder_of_an_unsupported_type_fails_check_with_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_fixture(
        "tiny-qwen3",
        tmp.path(),
        Some(("model_type", "gemma3".into())),
    );
    let spec = write_sweep(tmp.path(), &model, 48);
    let out = run(&["check".as_ref(), spec.as_os_str()]);
    let all = output(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    let text = std::fs::read_to_string(model.join("config.json")).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("\"model_type\""))
        .unwrap()
        + 1;
    let config = model.join("config.json");
    let config = std::fs::canonicalize(&config).unwrap_or(config);
    let want = format!(
        "{}:{line}: error: model_type: `gemma3` is not supported (supported: llama, mistral, qwen2, qwen3, ernie4_5)",
        config.display()
    );
    assert!(all.contains(&want), "wanted {want}\n{all}");
    assert!(!all.contains("check: ok"), "{all}");
}

#[test]
fn a_mistral_window_shorter_than_max_seq_len_fails_check_at_max_seq_len() {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_fixture("tiny-mistral", tmp.path(), None);
    with_sweep_tokenizer(&model);
    let spec = write_sweep(tmp.path(), &model, 48);
    let out = run(&["check".as_ref(), spec.as_os_str()]);
    let all = output(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains(
            "error: parameters.max_seq_len: max_seq_len 48 is beyond the model's sliding_window 16"
        ),
        "{all}"
    );
}

#[test]
fn a_qwen3_folder_passes_check_trains_and_its_merged_export_carries_its_chat_template() {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_fixture("tiny-qwen3", tmp.path(), None);
    with_sweep_tokenizer(&model);
    let spec = write_sweep(tmp.path(), &model, 64);
    let out = run(&["check".as_ref(), spec.as_os_str()]);
    assert_eq!(out.status.code(), Some(0), "{}", output(&out));
    let out = run(&["run".as_ref(), spec.as_os_str()]);
    assert!(out.status.success(), "{}", output(&out));
    let checkpoint = tmp.path().join("results/best/checkpoint");
    let merged = tmp.path().join("merged");
    let out = run(&[
        "export".as_ref(),
        checkpoint.as_os_str(),
        "--merge".as_ref(),
        merged.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", output(&out));
    for name in [
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        let base = std::fs::read(model.join(name)).unwrap();
        for folder in [&checkpoint, &merged] {
            let carried = std::fs::read(folder.join(name))
                .unwrap_or_else(|_| panic!("{} has no {name}", folder.display()));
            assert_eq!(carried, base, "{}: {name}", folder.display());
        }
    }
    let (config, weights) = load_hf_folder(&merged, &Device::Cpu).unwrap();
    assert_eq!(
        (config.model_type.as_str(), config.head_dim()),
        ("qwen3", 12)
    );
    assert!(weights.contains_key("model.layers.1.self_attn.q_norm.weight"));
    let merged_model =
        CausalLm::new(config, &weights, Trainable::All, 0, &Device::Cpu, "merged").unwrap();
    let ids = Tensor::new(&[[2u32, 5, 9, 3]], &Device::Cpu).unwrap();
    let logits = merged_model.forward(&ids).unwrap();
    assert_eq!(logits.dims(), &[1, 4, 64]);
}

/// A full (sft) checkpoint of each new family holds exactly the tensors transformers saved for
/// it (q/k norms, biases, tied head) and a config.json that builds the same model: what
/// transformers loads as `AutoModelForCausalLM`.
#[test]
fn full_checkpoints_of_qwen3_ernie_and_mistral_hold_transformers_tensors_and_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["tiny-qwen3", "tiny-ernie4_5", "tiny-mistral"] {
        let base = repo().join("tests/fixtures/hf").join(name);
        let (config, weights) = load_hf_folder(&base, &Device::Cpu).unwrap();
        let model = CausalLm::new(config, &weights, Trainable::All, 0, &Device::Cpu, name).unwrap();
        let out = tmp.path().join(name);
        let tokenizer = TextTokenizer::build_word_level(["a b"], 1).unwrap();
        sweep::trainer::checkpoint::save_with(
            &model,
            &tokenizer,
            name,
            &out,
            &sweep::trainer::checkpoint::tokenizer_files(&base),
            &[],
        )
        .unwrap();
        let (config, saved) = load_hf_folder(&out, &Device::Cpu).unwrap();
        let mut want: Vec<&String> = weights.keys().collect();
        let mut got: Vec<&String> = saved.keys().collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{name}: tensor names");
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        let original: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).unwrap())
                .unwrap();
        for key in [
            "architectures",
            "model_type",
            "head_dim",
            "tie_word_embeddings",
        ] {
            assert_eq!(written[key], original[key], "{name}: {key}");
        }
        let again =
            CausalLm::new(config, &saved, Trainable::All, 0, &Device::Cpu, "saved").unwrap();
        let ids = Tensor::new(&[[2u32, 5, 9, 3, 7]], &Device::Cpu).unwrap();
        let diff = crate::common::max_abs_diff(
            &model.forward(&ids).unwrap(),
            &again.forward(&ids).unwrap(),
        );
        assert_eq!(diff, 0.0, "{name}");
    }
}
