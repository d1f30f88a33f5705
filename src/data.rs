//! Training data: one JSON object per line, `{"system": ..., "src": ..., "tgt": ...}`.
//!
//! Unlabelled text for `post_pretrain` may be given as `{"text": ...}` lines instead; a labelled
//! file also works there (its `src` is the text). Every error names file, line and field.

use std::path::{Path, PathBuf};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{file}: cannot read: {message}")]
    Read { file: PathBuf, message: String },
    #[error("{file}:{line}: {field}: {message}")]
    Field {
        file: PathBuf,
        line: usize,
        field: String,
        message: String,
    },
    #[error("{file}:{line}: {message}")]
    Line {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{file}: no examples (the file is empty)")]
    Empty { file: PathBuf },
}

/// One example. `tgt` is absent in unlabelled (pretraining) text.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub system: Option<String>,
    pub src: String,
    pub tgt: Option<String>,
    /// 1-based line in its file, for messages.
    pub line: usize,
}

/// Loads a JSON-lines file of examples. Blank lines are skipped.
pub fn load_examples(path: &Path) -> Result<Vec<Example>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::Read {
        file: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        DataError::Line {
            file: path.to_path_buf(),
            line,
            message: "invalid UTF-8; save the file as UTF-8".into(),
        }
    })?;
    let mut examples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim_end_matches('\r');
        let raw = if line == 1 {
            raw.trim_start_matches('\u{feff}')
        } else {
            raw
        };
        if raw.trim().is_empty() {
            continue;
        }
        examples.push(parse_line(path, line, raw)?);
    }
    if examples.is_empty() {
        return Err(DataError::Empty {
            file: path.to_path_buf(),
        });
    }
    Ok(examples)
}

fn parse_line(path: &Path, line: usize, raw: &str) -> Result<Example, DataError> {
    let value: Value = serde_json::from_str(raw).map_err(|e| DataError::Line {
        file: path.to_path_buf(),
        line,
        message: format!(
            "not a JSON object ({e}); expected one object per line like {{\"system\": \"...\", \"src\": \"...\", \"tgt\": \"...\"}}"
        ),
    })?;
    let Value::Object(obj) = value else {
        return Err(DataError::Line {
            file: path.to_path_buf(),
            line,
            message: "expected a JSON object per line".into(),
        });
    };
    let field_err = |field: &str, message: &str| DataError::Field {
        file: path.to_path_buf(),
        line,
        field: field.to_string(),
        message: message.to_string(),
    };
    let string_field = |field: &str| -> Result<Option<String>, DataError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(field_err(field, "expected a string")),
        }
    };
    let system = string_field("system")?;
    let tgt = string_field("tgt")?;
    let src = match (string_field("src")?, string_field("text")?) {
        (Some(s), _) | (None, Some(s)) => s,
        (None, None) => {
            return Err(field_err(
                "src",
                "missing (every line needs `src`, or `text` for unlabelled data)",
            ))
        }
    };
    if src.trim().is_empty() {
        return Err(field_err("src", "is empty"));
    }
    if matches!(&tgt, Some(t) if t.trim().is_empty()) {
        return Err(field_err("tgt", "is empty"));
    }
    Ok(Example {
        system,
        src,
        tgt,
        line,
    })
}

/// The distinct labels of a set of examples, sorted: the candidates for classification accuracy.
pub fn label_set(examples: &[Example]) -> Vec<String> {
    let mut labels: Vec<String> = examples.iter().filter_map(|e| e.tgt.clone()).collect();
    labels.sort();
    labels.dedup();
    labels
}

/// The plain prompt used when the model has no chat template. Training and evaluation share it.
pub fn render_prompt(system: Option<&str>, src: &str) -> String {
    match system {
        Some(s) if !s.is_empty() => format!("{s}\n\nQuery: {src}\nAnswer:"),
        _ => format!("Query: {src}\nAnswer:"),
    }
}

/// The answer text that follows the prompt.
pub fn render_answer(tgt: &str) -> String {
    format!(" {tgt}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    #[test]
    fn loads_lines_and_names_line_and_field_on_error() {
        let f = write(
            "{\"system\":\"s\",\"src\":\"a\",\"tgt\":\"x\"}\n\n{\"src\":\"b\",\"tgt\":\"y\"}\r\n",
        );
        let ex = load_examples(f.path()).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[1].line, 3);
        assert_eq!(label_set(&ex), vec!["x", "y"]);

        let f = write("{\"src\":\"a\",\"tgt\":\"x\"}\n{\"src\":\"b\",\"tgt\":3}\n");
        let err = load_examples(f.path()).unwrap_err().to_string();
        assert!(err.contains(":2: tgt: expected a string"), "{err}");

        let f = write("{\"src\":\"a\",\n\"tgt\":\"x\"}\n");
        let err = load_examples(f.path()).unwrap_err().to_string();
        assert!(err.contains(":1: not a JSON object"), "{err}");

        let f = write("{\"tgt\":\"x\"}\n");
        let err = load_examples(f.path()).unwrap_err().to_string();
        assert!(err.contains(":1: src: missing"), "{err}");
    }

    #[test]
    fn unlabelled_text_lines_are_examples_without_target() {
        let f = write("{\"text\":\"hello there\"}\n");
        let ex = load_examples(f.path()).unwrap();
        assert_eq!(ex[0].src, "hello there");
        assert!(ex[0].tgt.is_none());
    }
}
