//! One data file on its own: encoding, line ends, one JSON object per line, the fields of every
//! example, duplicates and contradictions. Works on bytes, so it is fuzzed directly.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::Value;

use super::{CheckReport, Problem};
use crate::spec::ConflictPolicy;
use crate::text::data::{
    example_from_value, field_meant, parse_json_line, Example, LineIssue, FIELDS, LINE_EXAMPLE,
};

/// Data files larger than this are not read by the checker (nor sensibly by the trainer, which
/// holds all examples in memory); also what keeps a path like /proc/kcore from reading forever.
pub const MAX_DATA_BYTES: u64 = 4 << 30;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What one file holds, for the checks across files.
#[derive(Debug, Default)]
pub struct DataFile {
    pub file: String,
    pub examples: Vec<Example>,
    /// Whether this file alone had an error (the trainer would refuse it).
    pub has_errors: bool,
}

/// Reads and checks a data file; None when it cannot be read at all (reported).
/// `conflicts` says whether a query repeated with another label is a warning or an error.
pub fn check_data_file(
    path: &Path,
    conflicts: ConflictPolicy,
    report: &mut CheckReport,
) -> Option<DataFile> {
    let file = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            report.push(
                Problem::error(&file, format!("cannot read: {e}"))
                    .maybe_hint(super::paths::missing_file_hint(path, None)),
            );
            return None;
        }
    };
    if meta.is_dir() {
        report.push(
            Problem::error(&file, "is a folder, not a data file")
                .maybe_hint(super::paths::folder_hint(path)),
        );
        return None;
    }
    if !meta.is_file() {
        report.push(Problem::error(
            &file,
            "is not a regular file (a device or pipe?); give a JSON-lines file",
        ));
        return None;
    }
    if meta.len() > MAX_DATA_BYTES {
        report.push(Problem::error(
            &file,
            format!(
                "is {} bytes, more than sweep reads ({MAX_DATA_BYTES} bytes)",
                meta.len()
            ),
        ));
        return None;
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            report.push(Problem::error(&file, format!("cannot read: {e}")));
            return None;
        }
    };
    let before = report.errors();
    let mut data = check_data_bytes(&bytes, &file, conflicts, report);
    if report.errors() > before {
        data.has_errors = true;
        add_format_hint(path, report);
    }
    Some(data)
}

/// A file with another extension that failed to parse: say what the format is.
fn add_format_hint(path: &Path, report: &mut CheckReport) {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_lowercase);
    if let Some(ext @ ("csv" | "tsv" | "txt" | "xlsx" | "parquet")) = ext.as_deref() {
        report.push(
            Problem::warning(
                path.display().to_string(),
                format!("a `.{ext}` file: sweep reads JSON lines only"),
            )
            .hint(format!(
                "convert it to one JSON object per line like {LINE_EXAMPLE} and name it train.json / dev.json"
            )),
        );
    }
}

/// Checks the bytes of one data file; `file` names it in messages. Never panics, whatever the
/// bytes; the work is linear in their length.
pub fn check_data_bytes(
    bytes: &[u8],
    file: &str,
    conflicts: ConflictPolicy,
    report: &mut CheckReport,
) -> DataFile {
    let mut out = DataFile {
        file: file.to_string(),
        ..DataFile::default()
    };
    let before = report.errors();
    check_bytes_into(bytes, file, conflicts, report, &mut out);
    out.has_errors = report.errors() > before;
    out
}

fn check_bytes_into(
    bytes: &[u8],
    file: &str,
    conflicts: ConflictPolicy,
    report: &mut CheckReport,
    out: &mut DataFile,
) {
    let Some(body) = strip_encoding(bytes, file, report) else {
        return;
    };
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    warn_crlf(&lines, file, report);
    let mut read = read_lines(&lines, file, report);
    // Blank means what the loader skips (`str::trim`), so the two agree on "empty".
    if read.records.is_empty() && read.bad_json.is_empty() && read.bad_utf8 == 0 {
        report.push(
            Problem::error(file, "the file is empty: no examples")
                .at(Some(1), Some(1))
                .hint(format!("one example per line, like {LINE_EXAMPLE}")),
        );
        return;
    }
    if !read.bad_json.is_empty() {
        if let Some(documents) = std::str::from_utf8(body).ok().and_then(json_documents) {
            report_layout(file, &documents, report);
            read.records = documents.into_iter().flat_map(|d| d.records).collect();
            read.bad_json.clear();
        }
    }
    report_bad_json(read.bad_json, file, report);
    out.examples = examples_of(read.records, file, report);
    check_examples(file, &out.examples, conflicts, report);
}

/// The text after a UTF-8 byte-order mark (a warning); None for UTF-16 (an error).
fn strip_encoding<'a>(bytes: &'a [u8], file: &str, report: &mut CheckReport) -> Option<&'a [u8]> {
    if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") {
        report.push(
            Problem::error(file, "the file is UTF-16 text; sweep reads UTF-8")
                .at(Some(1), Some(1))
                .hint("save it as UTF-8, e.g. `iconv -f utf-16 -t utf-8 FILE > FILE.new`"),
        );
        return None;
    }
    Some(match bytes.strip_prefix(BOM) {
        Some(rest) => {
            report.push(
                Problem::warning(file, "the file starts with a UTF-8 byte-order mark (BOM); sweep skips it, many JSON tools do not")
                    .at(Some(1), Some(1))
                    .hint("save the file as UTF-8 without BOM"),
            );
            rest
        }
        None => bytes,
    })
}

/// One warning for all Windows line ends, at the first.
fn warn_crlf(lines: &[&[u8]], file: &str, report: &mut CheckReport) {
    let crlf: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.ends_with(b"\r"))
        .map(|(i, _)| i + 1)
        .collect();
    if let Some(first) = crlf.first() {
        report.push(
            Problem::warning(
                file,
                format!(
                    "{} line(s) end in CRLF (Windows line ends); sweep accepts them, some tools do not",
                    crlf.len()
                ),
            )
            .at(Some(*first), None)
            .hint("convert with `dos2unix FILE` or save with LF line ends"),
        );
    }
}

/// The lines of a file read one by one: JSON values with their line, the lines that are not
/// JSON (reported later, or read again as a whole file), and how many were not UTF-8.
#[derive(Default)]
struct Lines {
    records: Vec<(usize, Value)>,
    bad_json: Vec<(usize, LineIssue)>,
    bad_utf8: usize,
}

fn read_lines(lines: &[&[u8]], file: &str, report: &mut CheckReport) -> Lines {
    let mut read = Lines::default();
    for (i, raw) in lines.iter().enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                let valid = &raw[..e.valid_up_to()];
                let column = String::from_utf8_lossy(valid).chars().count() + 1;
                let byte = raw.get(e.valid_up_to()).copied().unwrap_or(0);
                read.bad_utf8 += 1;
                report.push(
                    Problem::error(file, format!("invalid UTF-8 (byte 0x{byte:02X})"))
                        .at(Some(line), Some(column))
                        .hint("the file is probably Latin-1 or Windows-1252; re-save it as UTF-8, e.g. `iconv -f windows-1252 -t utf-8 FILE`"),
                );
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        match parse_json_line(text) {
            Ok(v) => read.records.push((line, v)),
            Err(issue) => read.bad_json.push((line, issue)),
        }
    }
    read
}

/// A file that is not JSON lines at all (CSV, plain text) fails on every line: the first few
/// say why, one more line counts the rest, so other problems still get shown.
fn report_bad_json(bad_json: Vec<(usize, LineIssue)>, file: &str, report: &mut CheckReport) {
    const SHOWN_BAD_LINES: usize = 5;
    let more_bad = bad_json.len().saturating_sub(SHOWN_BAD_LINES);
    let first_more = bad_json.get(SHOWN_BAD_LINES).map(|(line, _)| *line);
    for (line, issue) in bad_json.into_iter().take(SHOWN_BAD_LINES) {
        report.push(
            Problem::error(file, issue.message)
                .at(Some(line), issue.column)
                .maybe_hint(issue.hint),
        );
    }
    if more_bad > 0 {
        report.push(
            Problem::error(
                file,
                format!("{more_bad} more line(s) are not JSON objects either, from here on"),
            )
            .at(first_more, None)
            .hint(format!(
                "every line must be one JSON object like {LINE_EXAMPLE}"
            )),
        );
    }
}

/// The examples of the records, each record's problems reported at its line, and one warning
/// per field sweep does not read.
fn examples_of(records: Vec<(usize, Value)>, file: &str, report: &mut CheckReport) -> Vec<Example> {
    let mut examples = Vec::new();
    let mut unknown: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (line, value) in records {
        if let Value::Object(obj) = &value {
            for key in obj.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
                let entry = unknown.entry(key.clone()).or_insert((line, 0));
                entry.1 += 1;
            }
        }
        match example_from_value(&value, line) {
            Ok(example) => examples.push(example),
            Err(issues) => {
                for issue in issues {
                    let mut p = Problem::error(file, issue.message)
                        .at(Some(line), issue.column)
                        .maybe_hint(issue.hint);
                    p.field = issue.field;
                    report.push(p);
                }
            }
        }
    }
    for (key, (line, count)) in unknown {
        let meant = field_meant(&key)
            .map(|f| format!("did you mean `{f}`? "))
            .unwrap_or_default();
        report.push(
            Problem::warning(
                file,
                format!("field `{key}` is not read by sweep (on {count} line(s)); it is ignored"),
            )
            .at(Some(line), None)
            .field(key.clone())
            .hint(format!("{meant}sweep reads {}", FIELDS.join(", "))),
        );
    }
    examples
}

/// One top-level JSON value of a file parsed as a whole, and the records it holds.
struct Document {
    first_line: usize,
    last_line: usize,
    /// Shares its first line with the previous value.
    shares_line: bool,
    is_array: bool,
    records: Vec<(usize, Value)>,
}

/// The file read as a stream of JSON values, when it is one (e.g. pretty-printed objects or a
/// top-level array); None when it is not JSON at all. A top-level array's elements become the
/// records, each with the line it starts on.
fn json_documents(text: &str) -> Option<Vec<Document>> {
    let newlines: Vec<usize> = text
        .bytes()
        .enumerate()
        .filter(|(_, b)| *b == b'\n')
        .map(|(i, _)| i)
        .collect();
    let line_of = |offset: usize| 1 + newlines.partition_point(|&nl| nl < offset);
    let mut docs = Vec::new();
    let mut pos = 0;
    let mut prev_last_line = 0;
    loop {
        pos += skip_ws(&text[pos..]);
        if pos >= text.len() {
            break;
        }
        let (value, len) = one_value(&text[pos..])?;
        let first_line = line_of(pos);
        let last_line = line_of(pos + len.saturating_sub(1));
        let is_array = value.is_array();
        let records = match value {
            Value::Array(_) => array_elements(text, pos)?
                .into_iter()
                .map(|(offset, v)| (line_of(offset), v))
                .collect(),
            v => vec![(first_line, v)],
        };
        docs.push(Document {
            first_line,
            last_line,
            shares_line: first_line == prev_last_line,
            is_array,
            records,
        });
        prev_last_line = last_line;
        pos += len;
    }
    (!docs.is_empty()).then_some(docs)
}

fn skip_ws(s: &str) -> usize {
    s.len() - s.trim_start_matches([' ', '\t', '\n', '\r']).len()
}

/// The first JSON value of `s` and its length in bytes.
fn one_value(s: &str) -> Option<(Value, usize)> {
    let mut stream = serde_json::Deserializer::from_str(s).into_iter::<Value>();
    let value = stream.next()?.ok()?;
    Some((value, stream.byte_offset()))
}

/// The elements of the array that starts at byte `start` of `text`, each with its byte offset.
fn array_elements(text: &str, start: usize) -> Option<Vec<(usize, Value)>> {
    let mut pos = start + text.get(start..)?.find('[')? + 1;
    let mut out = Vec::new();
    loop {
        pos += skip_ws(text.get(pos..)?);
        let rest = text.get(pos..)?;
        if rest.starts_with(']') {
            return Some(out);
        }
        let (value, len) = one_value(rest)?;
        out.push((pos, value));
        pos += len;
        pos += skip_ws(text.get(pos..)?);
        match text.get(pos..)?.chars().next()? {
            ',' => pos += 1,
            ']' => return Some(out),
            _ => return None,
        }
    }
}

/// Errors for a file that is JSON but not one object per line: one per kind of mistake, at its
/// first occurrence, with a count of the others (a pretty-printed file would otherwise fill the
/// report with the same message).
fn report_layout(file: &str, docs: &[Document], report: &mut CheckReport) {
    let more = |n: usize, what: &str| {
        if n > 1 {
            format!(" (and {} more {what} like it)", n - 1)
        } else {
            String::new()
        }
    };
    for d in docs.iter().filter(|d| d.is_array) {
        report.push(
            Problem::error(
                file,
                format!(
                    "the file holds a top-level JSON array (lines {}-{}); one object per line expected",
                    d.first_line, d.last_line
                ),
            )
            .at(Some(d.first_line), Some(1))
            .hint("write the elements one per line, e.g. `jq -c '.[]' FILE > FILE.jsonl`"),
        );
    }
    let spread: Vec<&Document> = docs
        .iter()
        .filter(|d| !d.is_array && d.last_line > d.first_line)
        .collect();
    if let Some(d) = spread.first() {
        report.push(
            Problem::error(
                file,
                format!(
                    "a JSON document spread over lines {}-{} (pretty-printed){}; one object per line expected",
                    d.first_line,
                    d.last_line,
                    more(spread.len(), "objects")
                ),
            )
            .at(Some(d.first_line), Some(1))
            .hint("write each object on one line, e.g. `jq -c . FILE > FILE.jsonl` (the seed's platform rejected exactly this; what worked was one {\"system\", \"src\", \"tgt\"} object per line)"),
        );
    }
    let shared: Vec<&Document> = docs.iter().filter(|d| d.shares_line).collect();
    if let Some(d) = shared.first() {
        report.push(
            Problem::error(
                file,
                format!(
                    "a second JSON value on the same line{}; one object per line expected",
                    more(shared.len(), "lines")
                ),
            )
            .at(Some(d.first_line), None)
            .hint("put a line break between the objects"),
        );
    }
}

/// Whether the labels look like classes (few distinct values, or short ones) rather than free
/// text: only then are a repeated query with two labels, or a dev label missing from train,
/// mistakes.
pub fn looks_like_classes(examples: &[Example]) -> bool {
    let labels: Vec<&str> = examples.iter().filter_map(|e| e.tgt.as_deref()).collect();
    if labels.is_empty() {
        return false;
    }
    let mut distinct = labels.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let words: usize = labels.iter().map(|l| l.split_whitespace().count()).sum();
    distinct.len() * 2 <= labels.len() || words <= 3 * labels.len()
}

/// How many first conflicting lines a conflict problem shows.
const CONFLICTS_SHOWN: usize = 3;

/// One problem for every query repeated with a different label (noisy labels, as real labelled
/// data has): how many, and the first few lines. A warning, so the data trains as it is, unless
/// the spec says `data: {conflicts: error}`.
fn conflict_problem(
    file: &str,
    conflicting: &[(usize, usize, &str, &str)],
    policy: ConflictPolicy,
) -> Option<Problem> {
    let (first, ..) = conflicting.first()?;
    let shown: Vec<String> = conflicting
        .iter()
        .take(CONFLICTS_SHOWN)
        .map(|(line, earlier, a, b)| format!("line {line} `{b}` (line {earlier}: `{a}`)"))
        .collect();
    let more = conflicting.len().saturating_sub(CONFLICTS_SHOWN);
    let message = format!(
        "conflicting labels: {} example(s) repeat an earlier src with a different tgt: {}{}",
        conflicting.len(),
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    );
    let problem = match policy {
        ConflictPolicy::Warn => Problem::warning(file, message).hint(
            "sweep trains on them as they are (noisy labels); `data: {conflicts: error}` in the sweep file refuses them",
        ),
        ConflictPolicy::Error => Problem::error(file, message)
            .hint("keep one label per query, or drop `conflicts: error` to train on noisy labels"),
    };
    Some(problem.at(Some(*first), None).field("tgt"))
}

/// The identity of an example's input: everything but the answer.
fn input_key(e: &Example) -> (&Option<String>, &Vec<(String, String)>, &str) {
    (&e.system, &e.history, e.src.as_str())
}

/// Duplicates, contradictions and a mix of labelled and unlabelled lines within one file.
fn check_examples(
    file: &str,
    examples: &[Example],
    conflicts: ConflictPolicy,
    report: &mut CheckReport,
) {
    let classes = looks_like_classes(examples);
    let mut first_seen: HashMap<_, (usize, Option<&str>)> = HashMap::new();
    // (line, earlier line, earlier label, this label) of every query repeated with another label.
    let mut conflicting: Vec<(usize, usize, &str, &str)> = Vec::new();
    for e in examples {
        match first_seen.get(&input_key(e)) {
            None => {
                first_seen.insert(input_key(e), (e.line, e.tgt.as_deref()));
            }
            Some((line, tgt)) if *tgt == e.tgt.as_deref() => report.push(
                Problem::warning(file, format!("duplicate example: the same as line {line}"))
                    .at(Some(e.line), None)
                    .hint("drop one: duplicates weigh an example twice and can leak into dev"),
            ),
            Some((line, tgt)) => {
                let (Some(a), Some(b)) = (tgt, e.tgt.as_deref()) else {
                    continue;
                };
                if classes {
                    conflicting.push((e.line, *line, a, b));
                } else {
                    report.push(
                        Problem::warning(
                            file,
                            format!("the same src as line {line} has a different tgt there"),
                        )
                        .hint(
                            "fine for free-text answers (several references); a mistake for labels",
                        )
                        .at(Some(e.line), None)
                        .field("tgt"),
                    );
                }
            }
        }
    }
    if let Some(problem) = conflict_problem(file, &conflicting, conflicts) {
        report.push(problem);
    }
    let labelled = examples.iter().filter(|e| e.tgt.is_some()).count();
    let unlabelled = examples.len() - labelled;
    if labelled > 0 && unlabelled > 0 {
        let minority = if unlabelled <= labelled {
            examples.iter().find(|e| e.tgt.is_none())
        } else {
            examples.iter().find(|e| e.tgt.is_some())
        };
        report.push(
            Problem::warning(
                file,
                format!("{labelled} example(s) have a tgt and {unlabelled} do not"),
            )
            .at(minority.map(|e| e.line), None)
            .hint(
                "sft and lora need a tgt on every line; only post_pretrain takes unlabelled text",
            ),
        );
    }
    if !examples.is_empty() {
        let turns = examples.iter().filter(|e| !e.history.is_empty()).count();
        let labels = crate::text::data::label_set(examples).len();
        report.note(format!(
            "{file}: {} example(s){}, {labels} distinct tgt value(s)",
            examples.len(),
            if turns > 0 {
                format!(" ({turns} multi-turn)")
            } else {
                String::new()
            }
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &[u8]) -> (CheckReport, DataFile) {
        let mut r = CheckReport::default();
        let d = check_data_bytes(text, "f.json", ConflictPolicy::Warn, &mut r);
        (r, d)
    }

    #[test]
    fn pretty_printed_and_array_files_are_named_as_such() {
        let (r, d) = check(b"{\n  \"src\": \"a\",\n  \"tgt\": \"x\"\n}\n{\"src\": [\"b\"], \"tgt\": [\"y\", \"z\"]}\n");
        let text = r.render();
        assert!(
            text.contains("f.json:1:1: error: a JSON document spread over lines 1-4"),
            "{text}"
        );
        assert!(
            text.contains("f.json:5: error: tgt: has 2 turn(s) but src has 1"),
            "{text}"
        );
        assert_eq!(d.examples.len(), 1);

        let (r, d) =
            check(b"[\n {\"src\": \"a\", \"tgt\": \"x\"},\n {\"src\": \"\", \"tgt\": \"y\"}\n]\n");
        let text = r.render();
        assert!(
            text.contains("f.json:1:1: error: the file holds a top-level JSON array"),
            "{text}"
        );
        assert!(text.contains("f.json:3: error: src: is empty"), "{text}");
        assert_eq!(d.examples.len(), 1);
    }

    #[test]
    fn encoding_and_line_end_problems() {
        let (r, _) = check(
            b"\xEF\xBB\xBF{\"src\":\"a\",\"tgt\":\"x\"}\r\n{\"src\":\"caf\xE9\",\"tgt\":\"x\"}\n",
        );
        let text = r.render();
        assert!(
            text.contains("f.json:1:1: warning: the file starts with a UTF-8 byte-order mark"),
            "{text}"
        );
        assert!(
            text.contains("f.json:1: warning: 1 line(s) end in CRLF"),
            "{text}"
        );
        assert!(
            text.contains("f.json:2:12: error: invalid UTF-8 (byte 0xE9)"),
            "{text}"
        );
    }

    #[test]
    fn duplicates_conflicts_and_unknown_fields() {
        let (r, _) = check(b"{\"src\":\"a\",\"tgt\":\"x\"}\n{\"src\":\"a\",\"tgt\":\"x\"}\n{\"src\":\"a\",\"tgt\":\"y\",\"id\":3}\n");
        let text = r.render();
        assert!(
            text.contains("f.json:2: warning: duplicate example: the same as line 1"),
            "{text}"
        );
        assert!(
            text.contains("f.json:3: warning: tgt: conflicting labels: 1 example(s) repeat an earlier src with a different tgt: line 3 `y` (line 1: `x`)"),
            "{text}"
        );
        assert!(
            text.contains("f.json:3: warning: id: field `id` is not read"),
            "{text}"
        );
    }

    #[test]
    fn noisy_labels_are_one_warning_with_a_count_or_an_error_when_the_spec_says_so() {
        let mut text = String::new();
        for i in 0..6 {
            text.push_str(&format!("{{\"src\":\"q{i}\",\"tgt\":\"a\"}}\n"));
        }
        for i in 0..5 {
            text.push_str(&format!("{{\"src\":\"q{i}\",\"tgt\":\"b\"}}\n"));
        }
        let (r, d) = check(text.as_bytes());
        assert!(!d.has_errors, "noisy labels train");
        assert_eq!(r.warnings(), 1, "{}", r.render());
        let shown = r.render();
        assert!(
            shown.contains("f.json:7: warning: tgt: conflicting labels: 5 example(s) repeat an earlier src with a different tgt: line 7 `b` (line 1: `a`), line 8 `b` (line 2: `a`), line 9 `b` (line 3: `a`) and 2 more"),
            "{shown}"
        );
        let mut r = CheckReport::default();
        let d = check_data_bytes(text.as_bytes(), "f.json", ConflictPolicy::Error, &mut r);
        assert!(d.has_errors);
        assert!(
            r.render()
                .contains("f.json:7: error: tgt: conflicting labels: 5 example(s)"),
            "{}",
            r.render()
        );
    }
}
