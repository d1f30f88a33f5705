//! One line of a user's program's stdout: a report or ordinary output.
//!
//! A program reports by printing a JSON object on a line of its own, for example
//! `{"epoch": 3, "val_loss": 0.41, "accuracy": 0.87}` (what `print(json.dumps(d), flush=True)`
//! writes). What a report keeps:
//! - numbers (integers and floats) as metrics, by name; a nested object's numbers under dotted
//!   names (`{"eval": {"loss": 0.3}}` is `eval.loss`), at most [`MAX_DEPTH`] levels deep;
//! - strings and booleans as text (shown, never ranked; a string is never read as a number,
//!   `"0.5"` included), cut to [`MAX_TEXT_CHARS`] characters;
//! - `checkpoint` (top level, a string): the path the program saved to, whatever it is;
//! - Python's `NaN`, `Infinity` and `-Infinity` (what `json.dumps` writes for a diverged loss,
//!   and what strict JSON has no word for) are read, then dropped as [`Dropped::NonFinite`], so
//!   a caller can tell "the metric diverged" from "the metric is absent";
//! - nulls and lists are dropped, said in [`Report::dropped`].
//!
//! Any line that does not start with `{` (after spaces) is ordinary log output. A line that
//! starts with `{` but is not a JSON object (torn, truncated, a Python dict's repr with single
//! quotes, too long, not UTF-8, numbers out of range) is skipped with a [`LineWarning`]; nothing
//! here panics on any input.

use std::collections::BTreeMap;

use serde_json::Value;

/// Longest line read as a report; a longer one is skipped (a program dumping a tensor).
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Most values one report keeps; the rest are dropped as [`Dropped::TooManyKeys`].
pub const MAX_KEYS: usize = 1000;
/// Deepest nesting read (`a.b.c.d`); deeper values are dropped as [`Dropped::TooDeep`].
pub const MAX_DEPTH: usize = 4;
/// Longest text value kept, in characters; a longer one is cut and ends in `…`.
pub const MAX_TEXT_CHARS: usize = 500;
/// Longest key kept, in bytes.
pub const MAX_KEY_BYTES: usize = 200;
/// Most dropped keys named in a report (all are counted).
pub const MAX_DROPPED_NAMED: usize = 32;
/// The key a program names its checkpoint with.
pub const CHECKPOINT_KEY: &str = "checkpoint";

/// What one line of a program's stdout is.
#[derive(Debug, Clone, PartialEq)]
pub enum ProgramLine {
    Report(Report),
    /// Ordinary output, kept in the trial's log only.
    Log,
    /// Meant as a report, unreadable: skipped.
    Malformed(LineWarning),
}

/// The values of one report line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// Finite numbers by (dotted) name.
    pub metrics: BTreeMap<String, f64>,
    /// Strings and booleans (`true`/`false`) by name.
    pub text: BTreeMap<String, String>,
    /// The `checkpoint` path, as printed.
    pub checkpoint: Option<String>,
    /// Keys not kept and why, the first [`MAX_DROPPED_NAMED`].
    pub dropped: Vec<(String, Dropped)>,
    /// How many keys were dropped in all.
    pub dropped_count: usize,
}

impl Report {
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).copied()
    }

    /// Whether `name` was reported as NaN or an infinity (a diverged loss, say).
    pub fn is_non_finite(&self, name: &str) -> bool {
        self.dropped
            .iter()
            .any(|(k, why)| k == name && *why == Dropped::NonFinite)
    }

    fn drop_key(&mut self, key: String, why: Dropped) {
        self.dropped_count += 1;
        if self.dropped.len() < MAX_DROPPED_NAMED {
            self.dropped.push((key, why));
        }
    }

    fn kept(&self) -> usize {
        self.metrics.len() + self.text.len()
    }
}

/// Why a key of a report was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// NaN, Infinity or -Infinity.
    NonFinite,
    Null,
    List,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Beyond [`MAX_KEYS`].
    TooManyKeys,
    /// Empty, or longer than [`MAX_KEY_BYTES`].
    BadKey,
    /// `checkpoint` that is not a string.
    CheckpointNotText,
}

/// Why a line that starts with `{` was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineWarning {
    #[error("skipped a report line of {bytes} bytes (longer than {MAX_LINE_BYTES})")]
    TooLong { bytes: usize },
    #[error("skipped a report line that is not valid UTF-8")]
    NotUtf8,
    #[error("skipped a line that starts with `{{` but is not a JSON object: {message}")]
    NotJson { message: String },
}

/// A line as read from the pipe, bytes: invalid UTF-8 is ordinary output unless the line
/// starts with `{`.
pub fn parse_line_bytes(line: &[u8]) -> ProgramLine {
    match std::str::from_utf8(line) {
        Ok(text) => parse_line(text),
        Err(_) if looks_like_report(&String::from_utf8_lossy(line)) => {
            ProgramLine::Malformed(LineWarning::NotUtf8)
        }
        Err(_) => ProgramLine::Log,
    }
}

/// One line of stdout, with or without its line ending.
pub fn parse_line(line: &str) -> ProgramLine {
    if !looks_like_report(line) {
        return ProgramLine::Log;
    }
    if line.len() > MAX_LINE_BYTES {
        return ProgramLine::Malformed(LineWarning::TooLong { bytes: line.len() });
    }
    let text = line.trim();
    let parsed = serde_json::from_str::<serde_json::Map<String, Value>>(text).or_else(|e| {
        // Python's json.dumps writes NaN and Infinity bare; read them as marked strings.
        python_literals(text)
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or(e)
    });
    match parsed {
        Ok(map) => ProgramLine::Report(report(map)),
        Err(e) => ProgramLine::Malformed(LineWarning::NotJson {
            message: e.to_string(),
        }),
    }
}

fn looks_like_report(line: &str) -> bool {
    line.trim_start().starts_with('{')
}

/// What Python's `NaN`, `Infinity`, `-Infinity` become before strict parsing: strings no
/// program prints (they start with U+0001).
const NON_FINITE_MARKS: [(&str, &str); 3] = [
    ("-Infinity", "\"\\u0001-Infinity\""),
    ("Infinity", "\"\\u0001Infinity\""),
    ("NaN", "\"\\u0001NaN\""),
];

/// `text` with Python's non-finite literals outside strings replaced by marked strings; None
/// when there were none.
fn python_literals(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut replaced = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some((word, mark)) =
            NON_FINITE_MARKS.iter().find(|(w, _)| rest.starts_with(w))
        {
            out.push_str(mark);
            rest = &rest[word.len()..];
            replaced = true;
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    replaced.then_some(out)
}

fn is_non_finite_mark(s: &str) -> bool {
    matches!(s, "\u{1}NaN" | "\u{1}Infinity" | "\u{1}-Infinity")
}

fn report(map: serde_json::Map<String, Value>) -> Report {
    let mut r = Report::default();
    for (key, value) in map {
        if key == CHECKPOINT_KEY {
            match value {
                Value::String(path) => r.checkpoint = Some(path),
                _ => r.drop_key(key, Dropped::CheckpointNotText),
            }
            continue;
        }
        visit(key, value, 1, &mut r);
    }
    r
}

fn visit(key: String, value: Value, depth: usize, r: &mut Report) {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.ends_with('.') {
        return r.drop_key(truncate(&key, 40), Dropped::BadKey);
    }
    if !matches!(value, Value::Object(_)) && r.kept() >= MAX_KEYS {
        return r.drop_key(key, Dropped::TooManyKeys);
    }
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.is_finite() => {
                r.metrics.insert(key, x);
            }
            _ => r.drop_key(key, Dropped::NonFinite),
        },
        Value::String(s) if is_non_finite_mark(&s) => r.drop_key(key, Dropped::NonFinite),
        Value::String(s) => {
            r.text.insert(key, truncate(&s, MAX_TEXT_CHARS));
        }
        Value::Bool(b) => {
            r.text.insert(key, b.to_string());
        }
        Value::Null => r.drop_key(key, Dropped::Null),
        Value::Array(_) => r.drop_key(key, Dropped::List),
        // Its values would be one level deeper than MAX_DEPTH: dropped as one.
        Value::Object(_) if depth == MAX_DEPTH => r.drop_key(key, Dropped::TooDeep),
        Value::Object(inner) => {
            for (k, v) in inner {
                visit(format!("{key}.{k}"), v, depth + 1, r);
            }
        }
    }
}

fn truncate(s: &str, chars: usize) -> String {
    match s.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_of(line: &str) -> Report {
        match parse_line(line) {
            ProgramLine::Report(r) => r,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    fn warning_of(line: &str) -> LineWarning {
        match parse_line(line) {
            ProgramLine::Malformed(w) => w,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn a_json_object_line_is_a_report() {
        let r = report_of("{\"epoch\": 3, \"val_loss\": 0.41, \"accuracy\": 0.87}\n");
        assert_eq!(r.metric("epoch"), Some(3.0));
        assert_eq!(r.metric("val_loss"), Some(0.41));
        assert_eq!(r.metric("accuracy"), Some(0.87));
        assert!(r.text.is_empty() && r.dropped.is_empty() && r.checkpoint.is_none());
        // Spaces around it and a CRLF ending change nothing.
        assert_eq!(report_of("  {\"a\":1}  \r\n").metric("a"), Some(1.0));
    }

    #[test]
    fn other_values_are_text_checkpoint_or_dropped() {
        let r = report_of(
            r#"{"epoch": 1, "phase": "eval", "best": true, "lr": "0.5", "note": null,
                "hist": [1, 2], "checkpoint": "ckpt/epoch-1", "eval": {"loss": 0.3, "f1": {"macro": 0.7}}}"#
                .replace('\n', " ")
                .as_str(),
        );
        assert_eq!(r.metric("epoch"), Some(1.0));
        assert_eq!(r.metric("eval.loss"), Some(0.3));
        assert_eq!(r.metric("eval.f1.macro"), Some(0.7));
        assert_eq!(r.text["phase"], "eval");
        assert_eq!(r.text["best"], "true");
        // A number in a string stays text.
        assert_eq!(r.text["lr"], "0.5");
        assert_eq!(r.metric("lr"), None);
        assert_eq!(r.checkpoint.as_deref(), Some("ckpt/epoch-1"));
        assert_eq!(
            r.dropped,
            [
                ("hist".to_string(), Dropped::List),
                ("note".to_string(), Dropped::Null)
            ]
        );
        assert_eq!(r.dropped_count, 2);
        let r = report_of(r#"{"checkpoint": 3}"#);
        assert_eq!(r.checkpoint, None);
        assert_eq!(
            r.dropped,
            [("checkpoint".to_string(), Dropped::CheckpointNotText)]
        );
    }

    #[test]
    fn pythons_nan_and_infinity_are_read_and_flagged() {
        // What json.dumps({"loss": float("nan"), ...}) prints.
        let r = report_of(
            r#"{"epoch": 2, "loss": NaN, "gn": Infinity, "m": -Infinity, "s": "NaN Infinity"}"#,
        );
        assert_eq!(r.metric("epoch"), Some(2.0));
        assert!(r.is_non_finite("loss") && r.is_non_finite("gn") && r.is_non_finite("m"));
        assert_eq!(r.metric("loss"), None);
        // Inside a string the words are text.
        assert_eq!(r.text["s"], "NaN Infinity");
        // As strings they are text too, never metrics.
        let r = report_of(r#"{"loss": "nan", "x": "inf"}"#);
        assert_eq!(r.text["loss"], "nan");
        assert!(r.metrics.is_empty() && !r.is_non_finite("loss"));
        // Escaped quotes do not fool the scan.
        let r = report_of(r#"{"a": "say \"NaN\"", "b": NaN}"#);
        assert_eq!(r.text["a"], "say \"NaN\"");
        assert!(r.is_non_finite("b"));
    }

    #[test]
    fn any_other_text_is_log_output() {
        for line in [
            "",
            "epoch 3 loss 0.41",
            "[1, 2, 3]",
            "\"just a string\"",
            "100%|██████████| 10/10",
            "Traceback (most recent call last):",
            "  File \"train.py\", line 3, in <module>",
            "}",
        ] {
            assert_eq!(parse_line(line), ProgramLine::Log, "{line:?}");
        }
    }

    #[test]
    fn broken_reports_are_skipped_with_a_warning() {
        for line in [
            "{",
            "{\"epoch\": 3, \"val_loss\": 0.4",
            "{'epoch': 3, 'loss': 0.4}",
            "{\"a\": 1} trailing",
            "{\"a\": 1e400}",
            "{\"a\": -1e999}",
            "{\"a\": nan}",
            "{\"a\": NaNx}",
            "{} {}",
            "{\"a\": 1,}",
        ] {
            assert!(
                matches!(warning_of(line), LineWarning::NotJson { .. }),
                "{line:?}"
            );
        }
        let deep = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
        assert!(matches!(warning_of(&deep), LineWarning::NotJson { .. }));
        let long = format!("{{\"a\": \"{}\"}}", "x".repeat(MAX_LINE_BYTES));
        assert_eq!(
            warning_of(&long),
            LineWarning::TooLong {
                bytes: MAX_LINE_BYTES + 9
            }
        );
        assert_eq!(
            parse_line_bytes(b"{\"a\": \"\xff\"}"),
            ProgramLine::Malformed(LineWarning::NotUtf8)
        );
        assert_eq!(parse_line_bytes(b"loss \xff\xfe"), ProgramLine::Log);
        assert!(warning_of("{").to_string().contains("not a JSON object"));
    }

    #[test]
    fn limits_keep_a_report_small() {
        // Deep nesting within serde's limit: kept to MAX_DEPTH levels.
        let r = report_of(r#"{"a": {"b": {"c": {"d": 1, "e": {"f": 2}}}}}"#);
        assert_eq!(r.metric("a.b.c.d"), Some(1.0));
        assert_eq!(r.dropped, [("a.b.c.e".to_string(), Dropped::TooDeep)]);
        // Many keys: the first MAX_KEYS kept (in key order), the rest counted.
        let body: Vec<String> = (0..MAX_KEYS + 50)
            .map(|i| format!("\"k{i:05}\": {i}"))
            .collect();
        let r = report_of(&format!("{{{}}}", body.join(", ")));
        assert_eq!(r.metrics.len(), MAX_KEYS);
        assert_eq!(r.dropped_count, 50);
        assert_eq!(r.dropped.len(), MAX_DROPPED_NAMED);
        // Long text is cut; odd keys are dropped.
        let r = report_of(&format!(
            "{{\"t\": \"{}\", \"\": 1, \"{}\": 2}}",
            "é".repeat(MAX_TEXT_CHARS + 10),
            "k".repeat(MAX_KEY_BYTES + 1)
        ));
        assert_eq!(r.text["t"].chars().count(), MAX_TEXT_CHARS + 1);
        assert!(r.text["t"].ends_with('…'));
        assert_eq!(r.dropped_count, 2);
        assert!(r.dropped.iter().all(|(_, why)| *why == Dropped::BadKey));
        // Huge but finite numbers are numbers.
        assert_eq!(report_of(r#"{"a": 1e300}"#).metric("a"), Some(1e300));
        assert_eq!(
            report_of(r#"{"a": 18446744073709551615}"#).metric("a"),
            Some(18446744073709551615.0)
        );
    }

    #[test]
    fn odd_inputs_never_panic() {
        // A small deterministic fuzz: every prefix and single-byte corruption of some reports.
        let seeds = [
            r#"{"epoch": 3, "val_loss": 0.41, "s": "a\"b\\", "n": NaN, "o": {"x": [1, {"y": 2}]}}"#,
            "{\"é\": \"中文🙂\", \"checkpoint\": \"/tmp/x\"}",
        ];
        for seed in seeds {
            let bytes = seed.as_bytes();
            for end in 0..=bytes.len() {
                let _ = parse_line_bytes(&bytes[..end]);
            }
            for i in 0..bytes.len() {
                for b in [b'{', b'}', b'"', b'\\', b'N', b'-', 0xff, 0] {
                    let mut v = bytes.to_vec();
                    v[i] = b;
                    let _ = parse_line_bytes(&v);
                }
            }
        }
    }
}
