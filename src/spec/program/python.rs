//! Python's text forms of a parameter value, as W&B's agent (a Python program) writes them into
//! a command line: `str()` (`--lr=0.001`, `--flag=True`, `--layers=[1, 2]`), `repr()` (inside
//! lists and dicts: `['a', 'b']`), `float.__repr__` (`1e-05`, `1.0`, `1e+16`) and `json.dumps`
//! with its defaults (`{"a": 1, "b": [1, 2]}`: `", "` and `": "`, ASCII only).
//!
//! W&B builds its flags with `f"{param}={value}"` (`create_sweep_command_args` in
//! wandb/wandb `wandb/sdk/launch/sweeps/utils.py`), so a program that parses W&B's arguments
//! today sees the same text from sweep. Object keys are written in sorted order, the order
//! W&B's sweep library (wandb/sweeps `src/sweeps/params.py`, `HyperParameterSet.to_config`)
//! gives nested parameters, whatever order serde_json keeps.

use serde_json::{Map, Number, Value};

/// Python's `str(value)`: a string as itself, `True`/`False`, `None`, numbers as Python prints
/// them, lists and dicts as their `repr`.
pub fn str_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => repr_of(other),
    }
}

/// Python's `repr(value)`: like `str` but strings quoted (`'adam'`).
pub fn repr_of(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => number(n),
        Value::String(s) => repr_str(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(repr_of).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = sorted(map)
                .into_iter()
                .map(|(k, v)| format!("{}: {}", repr_str(k), repr_of(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

/// Python's `json.dumps(value)` with its defaults: `", "` between items, `": "` after keys,
/// every character outside printable ASCII escaped (`ensure_ascii`), floats as `float.__repr__`.
pub fn json_dumps(value: &Value) -> String {
    let mut out = String::new();
    write_json(value, &mut out);
    out
}

/// [`json_dumps`] of an object given as its entries (already in the order to write).
pub fn json_dumps_entries<'a>(
    entries: impl IntoIterator<Item = (&'a String, &'a Value)>,
) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_json_str(k, &mut out);
        out.push_str(": ");
        write_json(v, &mut out);
    }
    out.push('}');
    out
}

/// A number as Python prints it: integers in decimal, floats as `float.__repr__`.
pub fn number(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        float_repr(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Python's `repr(x)` for a float: the shortest digits that read back as `x` (as Rust's), in
/// fixed notation when the decimal point falls within 16 places (`0.0001`, `1000.0`), else in
/// exponent notation with a sign and at least two exponent digits (`1e-05`, `1.5e+16`).
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` is the shortest round-trip form too: "-1.2345e3", "1e-5".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    // Position of the decimal point relative to the digits, as in CPython's float_repr_style.
    let point = exponent + 1;
    let body = if (-3..=16).contains(&point) {
        fixed(&digits, point)
    } else {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{first}{fraction}e{exp_sign}{:02}", exponent.abs())
    };
    format!("{sign}{body}")
}

/// `digits` with the decimal point `point` places from their start, `.0` when nothing follows it.
fn fixed(digits: &str, point: i32) -> String {
    if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else {
        let point = point as usize;
        if point >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point - digits.len()))
        } else {
            format!("{}.{}", &digits[..point], &digits[point..])
        }
    }
}

/// Python's `repr` of a string: single quotes unless the text holds `'` and no `"`; `\\`, `\n`,
/// `\r`, `\t` and the quote escaped; characters Python does not print as themselves as `\xNN`,
/// `\uNNNN` or `\UNNNNNNNN`.
pub fn repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !python_printable(c) => {
                let n = c as u32;
                if n < 0x100 {
                    out.push_str(&format!("\\x{n:02x}"));
                } else if n < 0x10000 {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `str.isprintable` for one character, for the characters a parameter value may
/// plausibly hold: control characters (C0, DEL, C1), the separators other than the space
/// (no-break, ideographic and the other Unicode spaces, line and paragraph separators) and the
/// common format characters (soft hyphen, zero-width ones, byte order mark) are not printable.
/// Unassigned and private-use code points, rare in parameter values, print as themselves here
/// where Python would escape them.
fn python_printable(c: char) -> bool {
    let n = c as u32;
    !(n < 0x20
        || (0x7f..=0xa0).contains(&n)
        || n == 0xad
        || n == 0x1680
        || (0x2000..=0x200f).contains(&n)
        || (0x2028..=0x202f).contains(&n)
        || n == 0x61c
        || (0x205f..=0x206f).contains(&n)
        || n == 0x3000
        || n == 0xfeff
        || (0xd800..=0xdfff).contains(&n))
}

fn write_json(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&json_number(n)),
        Value::String(s) => write_json_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(v, out);
            }
            out.push(']');
        }
        Value::Object(map) => out.push_str(&json_dumps_entries(sorted(map))),
    }
}

/// A number as `json.dumps` writes it: as Python's repr, but non-finite floats (which a
/// `serde_json::Value` cannot hold anyway) as `NaN`/`Infinity`, as Python's json module does.
fn json_number(n: &Number) -> String {
    match n.as_f64() {
        Some(x) if n.is_f64() && x.is_nan() => "NaN".into(),
        Some(x) if n.is_f64() && x.is_infinite() => {
            if x > 0.0 { "Infinity" } else { "-Infinity" }.into()
        }
        _ => number(n),
    }
}

/// A JSON string as `json.dumps` writes it with `ensure_ascii`: `\"`, `\\`, `\n`, `\r`, `\t`,
/// `\b`, `\f`, everything else outside space..tilde as `\uXXXX` (lower-case hex, UTF-16
/// surrogate pairs beyond the basic plane).
fn write_json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// A map's entries by key, whatever order the map keeps (serde_json's `preserve_order` may be
/// switched on by another crate).
pub fn sorted(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_print_as_python_repr() {
        // Each pair checked against CPython 3: `repr(float(x))`.
        let cases = [
            (0.001, "0.001"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e-5, "1e-05"),
            (3e-4, "0.0003"),
            (2.5e-5, "2.5e-05"),
            (1.0, "1.0"),
            (-1.0, "-1.0"),
            (0.1, "0.1"),
            (0.30000000000000004, "0.30000000000000004"),
            (123.456, "123.456"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (1e100, "1e+100"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
            (100.0, "100.0"),
            (0.5, "0.5"),
            (-2.5e-7, "-2.5e-07"),
        ];
        for (x, want) in cases {
            assert_eq!(float_repr(x), want, "{x:e}");
        }
    }

    #[test]
    fn str_is_what_an_f_string_prints() {
        assert_eq!(str_of(&json!("adam")), "adam");
        assert_eq!(str_of(&json!(true)), "True");
        assert_eq!(str_of(&json!(false)), "False");
        assert_eq!(str_of(&json!(null)), "None");
        assert_eq!(str_of(&json!(32)), "32");
        assert_eq!(str_of(&json!(-7)), "-7");
        assert_eq!(str_of(&json!(u64::MAX)), "18446744073709551615");
        assert_eq!(str_of(&json!(0.001)), "0.001");
        assert_eq!(str_of(&json!(2.0)), "2.0");
        assert_eq!(str_of(&json!([1, 2, 3])), "[1, 2, 3]");
        assert_eq!(str_of(&json!(["a", "b"])), "['a', 'b']");
        assert_eq!(str_of(&json!([true, null, 1.5])), "[True, None, 1.5]");
        assert_eq!(str_of(&json!([])), "[]");
        assert_eq!(str_of(&json!({})), "{}");
        assert_eq!(
            str_of(&json!({"nadam": {"beta": 0.9}, "lr": 0.001})),
            "{'lr': 0.001, 'nadam': {'beta': 0.9}}"
        );
    }

    #[test]
    fn strings_repr_as_python_quotes_them() {
        assert_eq!(repr_str("adam"), "'adam'");
        assert_eq!(repr_str("it's"), "\"it's\"");
        assert_eq!(repr_str("it's \"x\""), "'it\\'s \"x\"'");
        assert_eq!(repr_str("a\\b"), "'a\\\\b'");
        assert_eq!(repr_str("a\nb\tc\r"), "'a\\nb\\tc\\r'");
        assert_eq!(repr_str("\u{1}\u{7f}\u{a0}"), "'\\x01\\x7f\\xa0'");
        assert_eq!(repr_str("\u{200b}\u{2028}"), "'\\u200b\\u2028'");
        assert_eq!(
            repr_str("\u{1680}\u{3000}\u{feff}\u{ad}\u{2060}\u{2065}\u{61c}"),
            "'\\u1680\\u3000\\ufeff\\xad\\u2060\\u2065\\u061c'"
        );
        assert_eq!(repr_str("héllo 中文 🙂"), "'héllo 中文 🙂'");
    }

    #[test]
    fn json_dumps_matches_python_defaults() {
        // W&B's own test: tests/system_tests/test_sweep/test_wandb_agent.py
        // (test_agent_create_command_args).
        let v = json!({"a": true, "b": false, "c": 1, "d": null});
        assert_eq!(
            json_dumps(&v),
            r#"{"a": true, "b": false, "c": 1, "d": null}"#
        );
        assert_eq!(
            json_dumps(&json!({"lr": 1e-5, "layers": [1, 2], "name": "x\"y", "u": "é🙂\u{7f}"})),
            r#"{"layers": [1, 2], "lr": 1e-05, "name": "x\"y", "u": "\u00e9\ud83d\ude42\u007f"}"#
        );
        assert_eq!(json_dumps(&json!([])), "[]");
        assert_eq!(json_dumps(&json!({})), "{}");
        assert_eq!(json_dumps(&json!("\u{8}\u{c}\u{1}")), r#""\b\f\u0001""#);
        // What json_dumps writes, serde_json reads back unchanged.
        let v = json!({"z": [0.1, -3, "a\nb"], "a": {"y": null, "x": 1e300}});
        assert_eq!(serde_json::from_str::<Value>(&json_dumps(&v)).unwrap(), v);
    }
}
