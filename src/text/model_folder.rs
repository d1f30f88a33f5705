//! The one reader of a Hugging Face model folder's `config.json`: the planner sizes memory with
//! it, the tokenizer takes its special ids from it, the trainer builds the model from it.

use std::path::{Path, PathBuf};

use crate::spec::shape::{fill_family_defaults, ModelConfig, ShapeError};

/// A model folder whose config cannot be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelFolderError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a model config: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Shape(#[from] ShapeError),
}

/// `dir/config.json` as written, with transformers 4.x/5.x rotary settings reconciled (scaled
/// rotary positions are refused with the file named).
pub fn read_config(dir: &Path) -> Result<ModelConfig, ModelFolderError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelFolderError::Read {
        path: path.clone(),
        source,
    })?;
    let parse_error = |e: serde_json::Error| ModelFolderError::Parse {
        path: path.clone(),
        message: e.to_string(),
    };
    let mut raw: serde_json::Value = serde_json::from_str(&text).map_err(parse_error)?;
    fill_family_defaults(&mut raw);
    let mut config: ModelConfig = serde_json::from_value(raw).map_err(parse_error)?;
    config.normalize_rope(&path.display().to_string())?;
    Ok(config)
}

/// The 1-based line of config.json where `key` is written (its first occurrence as a key), so
/// a refused field is shown where it is.
pub fn key_line(dir: &Path, key: &str) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let quoted = format!("\"{key}\"");
    text.lines()
        .position(|line| {
            line.find(&quoted)
                .is_some_and(|at| line[at + quoted.len()..].trim_start().starts_with(':'))
        })
        .map(|i| i + 1)
}

/// `read_config`, then every invariant the forward pass relies on (supported architecture,
/// divisible heads...): what a model is built from.
pub fn read_checked_config(dir: &Path) -> Result<ModelConfig, ModelFolderError> {
    let config = read_config(dir)?;
    config.validate(&dir.join("config.json").display().to_string())?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_file_when_config_is_missing_or_bad() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_config(dir.path()).unwrap_err();
        assert!(matches!(e, ModelFolderError::Read { .. }));
        assert!(e.to_string().contains("config.json: cannot read"), "{e}");
        std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 8}").unwrap();
        let e = read_config(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a model config"), "{e}");
    }

    #[test]
    fn checked_config_refuses_what_the_model_cannot_build() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = crate::spec::shape::preset("test").unwrap();
        cfg.vocab_size = 10;
        cfg.model_type = "gemma3".into();
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_string_pretty(&cfg).unwrap(),
        )
        .unwrap();
        assert!(read_config(dir.path()).is_ok());
        let e = read_checked_config(dir.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains("config.json: model_type: `gemma3` is not supported"),
            "{e}"
        );
        let line = key_line(dir.path(), "model_type").unwrap();
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        assert!(text
            .lines()
            .nth(line - 1)
            .unwrap()
            .contains("\"model_type\": \"gemma3\""));
        assert_eq!(key_line(dir.path(), "sliding_window"), None);
    }

    #[test]
    fn family_defaults_fill_only_what_config_json_leaves_out() {
        let dir = tempfile::tempdir().unwrap();
        let write = |json: serde_json::Value| {
            std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
            read_checked_config(dir.path()).unwrap()
        };
        let base = serde_json::json!({"vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 1, "num_attention_heads": 2});
        let mut ernie = base.clone();
        ernie["model_type"] = "ernie4_5".into();
        let c = write(ernie.clone());
        assert_eq!(
            (c.rope_theta, c.tie_word_embeddings, c.head_dim),
            (500_000.0, true, Some(128))
        );
        ernie["head_dim"] = 4.into();
        ernie["tie_word_embeddings"] = false.into();
        let c = write(ernie);
        assert_eq!((c.head_dim(), c.tie_word_embeddings), (4, false));
        let mut mistral = base.clone();
        mistral["model_type"] = "mistral".into();
        assert_eq!(write(mistral.clone()).attention_window(), Some(4096));
        mistral["sliding_window"] = serde_json::Value::Null;
        let c = write(mistral);
        assert_eq!((c.attention_window(), c.max_sequence()), (None, 2048));
        let mut llama = base;
        llama["sliding_window"] = 16.into();
        assert_eq!(
            write(llama).attention_window(),
            None,
            "only Mistral's counts"
        );
    }
}
