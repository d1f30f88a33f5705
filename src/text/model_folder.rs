//! The one reader of a Hugging Face model folder's `config.json`: the planner sizes memory with
//! it, the tokenizer takes its special ids from it, the trainer builds the model from it.

use std::path::{Path, PathBuf};

use crate::spec::shape::{ModelConfig, ShapeError};

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
    let mut config: ModelConfig =
        serde_json::from_str(&text).map_err(|e| ModelFolderError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
    config.normalize_rope(&path.display().to_string())?;
    Ok(config)
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
        cfg.model_type = "mistral".into();
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_string(&cfg).unwrap(),
        )
        .unwrap();
        assert!(read_config(dir.path()).is_ok());
        let e = read_checked_config(dir.path()).unwrap_err();
        assert!(e.to_string().contains("model_type `mistral`"), "{e}");
    }
}
