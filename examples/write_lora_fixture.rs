//! Writes tests/fixtures/hf/tiny-llama-lora (or, with fixture names as arguments, e.g.
//! `tiny-qwen3 tiny-ernie4_5 tiny-mistral`, tiny-NAME-lora for each): a LoRA checkpoint saved by
//! sweep (PEFT layout) on the tiny fixture, with seeded non-zero adapters on attention and MLP
//! projections, and the fixture's tokenizer files and chat template as a trial's checkpoint
//! carries them. Then `scripts/make-hf-fixtures.py --peft` records what PEFT and transformers
//! compute with them.
//!
//!     cargo run --release --example write_lora_fixture [tiny-qwen3 ...]

use anyhow::Result;
use candle_core::{Device, Tensor};
use sweep::trainer::model::{load_hf_folder, CausalLm, LoraSettings, Trainable};

fn main() -> Result<()> {
    let names: Vec<String> = std::env::args().skip(1).collect();
    let names = if names.is_empty() {
        vec!["tiny-llama".to_string()]
    } else {
        names
    };
    for name in names {
        write(&name)?;
    }
    Ok(())
}

fn write(name: &str) -> Result<()> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
    let base = root.join(name);
    let (config, weights) = load_hf_folder(&base, &Device::Cpu)?;
    let lora = LoraSettings {
        rank: 4,
        alpha: 8.0,
        targets: vec![
            "q_proj".into(),
            "v_proj".into(),
            "o_proj".into(),
            "down_proj".into(),
        ],
    };
    let model = CausalLm::new(
        config,
        &weights,
        Trainable::Lora(lora),
        7,
        &Device::Cpu,
        "base",
    )?;
    let mut rng = sweep::util::rng::SplitMix64::new(21);
    for (name, var) in model.trainable() {
        if name.contains("lora_B") {
            let v: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.normal() as f32 * 0.3)
                .collect();
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu)?)?;
        }
    }
    let tokenizer = sweep::text::tokenizer::TextTokenizer::build_word_level(["fixture"], 1)?;
    let adapter = root.join(format!("{name}-lora"));
    // The base is named relative to the adapter, as it would be inside a copied project.
    sweep::trainer::checkpoint::save_with(
        &model,
        &tokenizer,
        &format!("tests/fixtures/hf/{name}"),
        &adapter,
        &sweep::trainer::checkpoint::tokenizer_files(&base),
        &[],
    )?;
    println!("wrote {}", adapter.display());
    Ok(())
}
