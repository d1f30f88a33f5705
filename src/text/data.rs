//! Training data: one JSON object per line, `{"system": ..., "src": ..., "tgt": ...}`.
//!
//! `src` and `tgt` are strings, or lists of strings of equal length for a multi-turn example
//! (ERNIE-style): the earlier (src, tgt) pairs are the conversation so far, the last `src` is the
//! query and the last `tgt` the answer that is trained and scored.
//!
//! Unlabelled text for `post_pretrain` may be given as `{"text": ...}` lines instead; a labelled
//! file also works there (its `src` is the text). Every error names file, line and field.
//!
//! The line parser returns every problem of a line (`LineIssue`), so the checker can list them
//! all; `load_examples`, which the trainer uses, stops at the first.

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
    /// Earlier turns of a multi-turn example, oldest first, as (query, answer); empty for a
    /// single-turn example.
    pub history: Vec<(String, String)>,
    pub src: String,
    pub tgt: Option<String>,
    /// 1-based line in its file, for messages.
    pub line: usize,
}

/// One thing wrong with one line of a data file.
#[derive(Debug, Clone, PartialEq)]
pub struct LineIssue {
    /// The field concerned (`src`, `tgt[1]`, ...), or None for the line as a whole.
    pub field: Option<String>,
    /// 1-based character column, when the JSON parser knows it.
    pub column: Option<usize>,
    pub message: String,
    /// How to fix it, when there is more to say than the message.
    pub hint: Option<String>,
}

impl LineIssue {
    fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            column: None,
            message: message.into(),
            hint: None,
        }
    }

    fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// The fields a data line may have; anything else is ignored (and the checker warns about it).
pub const FIELDS: [&str; 4] = ["system", "src", "tgt", "text"];

/// What a line of the seed format looks like, quoted in messages.
pub const LINE_EXAMPLE: &str = r#"{"system": "...", "src": "...", "tgt": "..."}"#;

/// Field names other tools use, and the field sweep reads instead.
pub const FIELD_ALIASES: [(&str, &str); 16] = [
    ("source", "src"),
    ("input", "src"),
    ("prompt", "src"),
    ("question", "src"),
    ("query", "src"),
    ("instruction", "src"),
    ("user", "src"),
    ("target", "tgt"),
    ("output", "tgt"),
    ("label", "tgt"),
    ("answer", "tgt"),
    ("response", "tgt"),
    ("completion", "tgt"),
    ("assistant", "tgt"),
    ("system_prompt", "system"),
    ("content", "text"),
];

/// The sweep field a foreign or misspelt field name probably means.
pub fn field_meant(name: &str) -> Option<&'static str> {
    let lower = name.to_lowercase();
    FIELD_ALIASES
        .iter()
        .find(|(alias, _)| *alias == lower)
        .map(|(_, field)| *field)
        .or_else(|| crate::util::suggest::did_you_mean(name, &FIELDS))
}

/// Loads a JSON-lines file of examples. Blank lines are skipped. Stops at the first problem;
/// `check::check_data_files` lists them all.
pub fn load_examples(path: &Path) -> Result<Vec<Example>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::Read {
        file: path.to_path_buf(),
        message: e.to_string(),
    })?;
    examples_from_bytes(bytes, path)
}

/// The examples of a data file's contents; `path` names it in errors. What `load_examples` does
/// after reading (and what the fuzzer compares the checker with).
pub fn examples_from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Vec<Example>, DataError> {
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
        let example = parse_line(raw, line).map_err(|issues| {
            let first = issues.into_iter().next().unwrap_or(LineIssue {
                field: None,
                column: None,
                message: "not a valid example".into(),
                hint: None,
            });
            let message = match first.hint {
                Some(hint) => format!("{} (hint: {hint})", first.message),
                None => first.message,
            };
            match first.field {
                Some(field) => DataError::Field {
                    file: path.to_path_buf(),
                    line,
                    field,
                    message,
                },
                None => DataError::Line {
                    file: path.to_path_buf(),
                    line,
                    message,
                },
            }
        })?;
        examples.push(example);
    }
    if examples.is_empty() {
        return Err(DataError::Empty {
            file: path.to_path_buf(),
        });
    }
    Ok(examples)
}

/// Parses one line (without its line break) into an example; every problem of the line is
/// returned.
pub fn parse_line(raw: &str, line: usize) -> Result<Example, Vec<LineIssue>> {
    let value = parse_json_line(raw).map_err(|issue| vec![issue])?;
    example_from_value(&value, line)
}

/// The JSON value on one line, or why there is none; a value spread over several lines is named
/// as such, since that (pretty-printed JSON) is the commonest way to get this format wrong.
pub fn parse_json_line(raw: &str) -> Result<Value, LineIssue> {
    serde_json::from_str(raw).map_err(|e| {
        let full = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        let reason = full.strip_suffix(&position).unwrap_or(&full).to_string();
        let (message, hint) = if e.classify() == serde_json::error::Category::Eof {
            (
                format!("not a JSON object: the line ends inside a JSON value ({reason}); one object per line expected"),
                "the object goes on over the next lines, as in pretty-printed JSON; write each example on one line, e.g. `jq -c . FILE`".to_string(),
            )
        } else {
            (
                format!("not a JSON object ({reason}); expected one object per line"),
                format!("each line must be one complete JSON object like {LINE_EXAMPLE}"),
            )
        };
        // serde_json counts bytes; editors count characters.
        let byte = e.column().saturating_sub(1);
        let column = raw
            .get(..byte)
            .map(|before| before.chars().count() + 1)
            .unwrap_or(e.column().max(1));
        LineIssue {
            field: None,
            column: Some(column),
            message,
            hint: Some(hint),
        }
    })
}

/// A JSON value's kind, in words, for "expected X, got Y" messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Interprets one parsed line as an example; every problem is returned.
pub fn example_from_value(value: &Value, line: usize) -> Result<Example, Vec<LineIssue>> {
    let Value::Object(obj) = value else {
        let hint = match value {
            Value::Array(_) => "a list holds the examples of a whole file in some formats; here each line is one object: write the elements one per line, e.g. `jq -c '.[]' FILE`".to_string(),
            _ => format!("write one JSON object per line like {LINE_EXAMPLE}"),
        };
        return Err(vec![LineIssue {
            field: None,
            column: Some(1),
            message: format!("expected a JSON object per line, got {}", kind_of(value)),
            hint: Some(hint),
        }]);
    };
    let mut issues = Vec::new();
    let system = match obj.get("system") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            issues.push(LineIssue::field(
                "system",
                format!("expected a string, got {}", kind_of(other)),
            ));
            None
        }
    };
    let text = match obj.get("text") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            if s.trim().is_empty() {
                issues.push(LineIssue::field("text", "is empty"));
            }
            Some(s.clone())
        }
        Some(other) => {
            issues.push(LineIssue::field(
                "text",
                format!("expected a string, got {}", kind_of(other)),
            ));
            None
        }
    };
    let src = turns(obj.get("src"), "src", &mut issues);
    let tgt = turns(obj.get("tgt"), "tgt", &mut issues);
    let src_given = !matches!(obj.get("src"), None | Some(Value::Null));
    let src = match (src, text, src_given) {
        (Some(s), _, _) => Some(s),
        (None, Some(t), false) => Some(vec![t]),
        (None, _, true) => None, // present but wrong: already reported
        (None, None, false) => {
            let mut issue = LineIssue::field(
                "src",
                "missing (every line needs `src`, or `text` for unlabelled data)",
            );
            let foreign: Vec<String> = obj
                .keys()
                .filter_map(|k| field_meant(k).map(|f| format!("`{k}` (sweep calls it `{f}`)")))
                .collect();
            if !foreign.is_empty() {
                issue = issue.with_hint(format!(
                    "this line has {}; rename the fields to {LINE_EXAMPLE}",
                    foreign.join(", ")
                ));
            } else {
                issue = issue.with_hint(format!("write lines like {LINE_EXAMPLE}"));
            }
            issues.push(issue);
            None
        }
    };
    let (Some(src), true) = (src, issues.is_empty()) else {
        return Err(issues);
    };
    let n = src.len();
    let example = match tgt {
        Some(tgt) if tgt.len() != n => {
            return Err(vec![LineIssue::field(
                "tgt",
                format!(
                    "has {} turn(s) but src has {n}; src and tgt must be lists of the same length (one answer per query)",
                    tgt.len()
                ),
            )
            .with_hint("for a single-turn example give both as strings; for a conversation give the queries in src and their answers in tgt, in order")]);
        }
        None if n > 1 => {
            return Err(vec![LineIssue::field(
                "tgt",
                format!("missing; src is a conversation of {n} queries and needs a list of {n} answers in tgt"),
            )]);
        }
        tgt => {
            let mut src = src;
            let last_src = src.pop().unwrap_or_default();
            let (history, last_tgt) = match tgt {
                Some(mut tgt) => {
                    let last = tgt.pop();
                    (src.into_iter().zip(tgt).collect(), last)
                }
                None => (Vec::new(), None),
            };
            Example {
                system,
                history,
                src: last_src,
                tgt: last_tgt,
                line,
            }
        }
    };
    Ok(example)
}

/// `src` or `tgt`: a string (one turn) or a non-empty list of strings (a conversation).
/// Problems go to `issues`; None when the field is absent or wrong.
fn turns(value: Option<&Value>, name: &str, issues: &mut Vec<LineIssue>) -> Option<Vec<String>> {
    match value {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            if s.trim().is_empty() {
                issues.push(LineIssue::field(name, "is empty").with_hint(format!(
                    "every example needs a non-empty `{name}`; drop the line or fill it in"
                )));
                return None;
            }
            Some(vec![s.clone()])
        }
        Some(Value::Array(items)) => {
            if items.is_empty() {
                issues.push(LineIssue::field(name, "is an empty list").with_hint(
                    "give a string, or a list with one entry per turn of the conversation",
                ));
                return None;
            }
            let before = issues.len();
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) if s.trim().is_empty() => {
                        issues.push(LineIssue::field(format!("{name}[{i}]"), "is empty"))
                    }
                    Value::String(s) => out.push(s.clone()),
                    other => issues.push(LineIssue::field(
                        format!("{name}[{i}]"),
                        format!("expected a string, got {}", kind_of(other)),
                    )),
                }
            }
            (issues.len() == before).then_some(out)
        }
        Some(other) => {
            issues.push(
                LineIssue::field(
                    name,
                    format!(
                        "expected a string or a list of strings, got {}",
                        kind_of(other)
                    ),
                )
                .with_hint(format!("write lines like {LINE_EXAMPLE}")),
            );
            None
        }
    }
}

/// The distinct labels of a set of examples, sorted: the candidates for classification accuracy.
pub fn label_set(examples: &[Example]) -> Vec<String> {
    let mut labels: Vec<String> = examples.iter().filter_map(|e| e.tgt.clone()).collect();
    labels.sort();
    labels.dedup();
    labels
}

/// The plain prompt of a single-turn example when the model has no chat template.
pub fn render_prompt(system: Option<&str>, src: &str) -> String {
    render_conversation(system, &[], src)
}

/// The prompt of an example with its earlier turns: each earlier turn in the same Query/Answer
/// form as the last, a blank line between turns, so a single-turn example renders exactly as
/// `{system}\n\nQuery: {src}\nAnswer:`. Training and evaluation share it (`text::encode::prompt_ids`).
pub fn render_conversation(
    system: Option<&str>,
    history: &[(String, String)],
    src: &str,
) -> String {
    let mut out = String::new();
    if let Some(s) = system.filter(|s| !s.is_empty()) {
        out.push_str(s);
        out.push_str("\n\n");
    }
    for (query, answer) in history {
        out.push_str("Query: ");
        out.push_str(query);
        out.push_str("\nAnswer:");
        out.push_str(&render_answer(answer));
        out.push_str("\n\n");
    }
    out.push_str("Query: ");
    out.push_str(src);
    out.push_str("\nAnswer:");
    out
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
    fn multi_turn_lines_keep_earlier_turns_as_history() {
        let ex = parse_line(
            r#"{"system":"s","src":["hi","and then?"],"tgt":["hello","bye"]}"#,
            4,
        )
        .unwrap();
        assert_eq!(ex.history, vec![("hi".to_string(), "hello".to_string())]);
        assert_eq!(
            (ex.src.as_str(), ex.tgt.as_deref()),
            ("and then?", Some("bye"))
        );
        assert_eq!(
            render_conversation(ex.system.as_deref(), &ex.history, &ex.src),
            "s\n\nQuery: hi\nAnswer: hello\n\nQuery: and then?\nAnswer:"
        );
        assert_eq!(render_prompt(Some("s"), "q"), "s\n\nQuery: q\nAnswer:");
        assert_eq!(render_prompt(None, "q"), "Query: q\nAnswer:");

        let issues = parse_line(r#"{"src":["a","b"],"tgt":["x"]}"#, 1).unwrap_err();
        assert!(issues[0].message.contains("same length"), "{issues:?}");
        let issues = parse_line(r#"{"src":["a", 3, ""],"tgt":7}"#, 1).unwrap_err();
        let fields: Vec<_> = issues.iter().filter_map(|i| i.field.clone()).collect();
        assert_eq!(fields, vec!["src[1]", "src[2]", "tgt"]);
        let issues = parse_line(r#"{"prompt":"a","completion":"b"}"#, 1).unwrap_err();
        let hint = issues[0].hint.clone().unwrap();
        assert!(hint.contains("`prompt` (sweep calls it `src`)"), "{hint}");
    }

    #[test]
    fn unlabelled_text_lines_are_examples_without_target() {
        let f = write("{\"text\":\"hello there\"}\n");
        let ex = load_examples(f.path()).unwrap();
        assert_eq!(ex[0].src, "hello there");
        assert!(ex[0].tgt.is_none());
    }
}
