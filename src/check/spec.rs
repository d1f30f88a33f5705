//! The sweep file: YAML syntax, the keys and their types (with did-you-mean), impossible values,
//! the grid, every trial's parameters, then everything it names on disk: data files, the model
//! folder, and token lengths with the model's tokenizer.
//!
//! The file is parsed to a YAML value first, so that one pass can report every unknown key and
//! wrong type with its line and column; only then is it read into the typed `SweepSpec`, whose
//! own checks (`SweepSpec::field_problems`, `Domain::from_spec`, `search::assignments`,
//! `TrialParams::check_assignment`) are reused here rather than written twice.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use yaml_serde::Value as Yaml;

use super::data::{check_data_file, DataFile};
use super::files::{cross_check, cross_check_as};
use super::paths::{folder_hint, missing_file_hint};
use super::tokens::{check_lengths, Lengths};
use super::yaml::{locate, strip_position, Seg, Target};
use super::{CheckReport, Problem, Severity};
use crate::spec::params::{parameter_names, Method, TrialParams, PARAMETER_ALIASES};
use crate::spec::search::{assignments, grid_size};
use crate::spec::ConflictPolicy;
use crate::spec::ModelSource;
use crate::spec::{Domain, SearchMethod, SpecError, SweepSpec};
use crate::text::encode::TokenCounts;

/// Sweep files larger than this are not sweep files (and are not read).
const MAX_SPEC_BYTES: u64 = 1 << 20;

/// The shape of a value in the sweep file.
#[derive(Clone, Copy)]
enum Shape {
    /// A string (any scalar, as the typed parser reads it).
    Text,
    /// A whole number >= 0.
    Count,
    OneOf(&'static [&'static str]),
    Map(&'static [Key]),
    Parameters,
    Devices,
    /// A list of strings.
    TextList,
}

struct Key {
    name: &'static str,
    shape: Shape,
    required: bool,
    /// `~` (null) means "not given" here.
    nullable: bool,
}

const fn key(name: &'static str, shape: Shape, required: bool, nullable: bool) -> Key {
    Key {
        name,
        shape,
        required,
        nullable,
    }
}

const TOP: &[Key] = &[
    key("name", Shape::Text, true, false),
    key("data", Shape::Map(DATA), true, false),
    key("model", Shape::Map(MODEL), false, false),
    key(
        "method",
        Shape::OneOf(&["grid", "random", "bayes"]),
        false,
        false,
    ),
    key("run_cap", Shape::Count, false, true),
    key("seed", Shape::Count, false, false),
    key("metric", Shape::Map(METRIC), false, false),
    key("parameters", Shape::Parameters, true, false),
    key("resources", Shape::Map(RESOURCES), false, false),
    key("output", Shape::Text, false, true),
    key("checkpoints", Shape::Map(CHECKPOINTS), false, true),
    key(
        "on_oom",
        Shape::OneOf(&["halve_batch", "skip", "fail"]),
        false,
        false,
    ),
    key("early_terminate", Shape::Map(EARLY_TERMINATE), false, true),
];
const EARLY_TERMINATE: &[Key] = &[
    key("type", Shape::OneOf(&["hyperband"]), true, false),
    key("min_iter", Shape::Count, false, true),
    key("max_iter", Shape::Count, false, true),
    key("s", Shape::Count, false, true),
    key("eta", Shape::Text, false, true),
    key("strict", Shape::Text, false, true),
    key(
        "metric",
        Shape::OneOf(&["accuracy", "dev_loss"]),
        false,
        true,
    ),
];
const CHECKPOINTS: &[Key] = &[key("keep", Shape::Count, true, false)];
const DATA: &[Key] = &[
    key("train", Shape::Text, true, false),
    key("dev", Shape::Text, true, false),
    key("test", Shape::Text, false, true),
    key("conflicts", Shape::OneOf(&["warn", "error"]), false, true),
];
const MODEL: &[Key] = &[
    key(
        "preset",
        Shape::OneOf(&crate::spec::shape::PRESET_NAMES),
        false,
        true,
    ),
    key("path", Shape::Text, false, true),
];
const METRIC: &[Key] = &[
    key("name", Shape::OneOf(&["accuracy", "dev_loss"]), true, false),
    key("goal", Shape::OneOf(&["maximize", "minimize"]), false, true),
    key("target", Shape::Text, false, true),
];
const RESOURCES: &[Key] = &[
    key("devices", Shape::Devices, false, true),
    key("slots", Shape::Count, false, true),
    key("parallel", Shape::Count, false, true),
    key("memory_per_device", Shape::Text, false, true),
    key("executor", Shape::OneOf(&["local", "slurm"]), false, true),
    key("partition", Shape::Text, false, true),
    key("time", Shape::Text, false, true),
    key("account", Shape::Text, false, true),
    key("qos", Shape::Text, false, true),
    key("sbatch_args", Shape::TextList, false, true),
];
const PARAM_KEYS: [&str; 7] = [
    "value",
    "values",
    "distribution",
    "min",
    "max",
    "q",
    "probabilities",
];

/// Keys of other tools' sweep files, and what to say about them.
fn foreign_key_hint(path: &[Seg], key: &str) -> Option<String> {
    let parent: Vec<&str> = path
        .iter()
        .filter_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .collect();
    match (parent.as_slice(), key) {
        ([], "program" | "command" | "project" | "entity" | "description") => Some(format!(
            "`{key}` is a W&B sweep key that sweep does not use; remove it"
        )),
        (["data"], "valid" | "validation" | "eval" | "val") => Some(format!(
            "sweep's held-out set is called `dev`: write `dev: PATH` instead of `{key}: PATH`"
        )),
        ([], "train" | "dev") => {
            Some("data files go under `data:`, e.g. `data: {train: PATH, dev: PATH}`".to_string())
        }
        ([], "lr" | "learning_rate" | "epochs" | "batch_size") => Some(format!(
            "trial parameters go under `parameters:`, e.g. `parameters: {{{key}: {{value: ...}}}}`"
        )),
        _ => None,
    }
}

/// The outcome of checking a sweep file's text.
#[derive(Default)]
pub struct SpecCheck {
    /// The parsed YAML, when it parsed.
    pub yaml: Option<Yaml>,
    /// The typed spec, when it parsed and its values are valid.
    pub spec: Option<SweepSpec>,
    /// Every trial's parameters, when all trials are valid.
    pub trials: Vec<TrialParams>,
}

/// Reads and checks a sweep file and everything it names.
pub fn check_spec_file(path: &Path) -> CheckReport {
    read_and_check_spec_file(path).0
}

/// `check_spec_file`, and what the run needs of its work: the file's text when it could be read
/// (so it is read once) and the training set's token counts when they were measured (so it is
/// tokenized once).
pub fn read_and_check_spec_file(path: &Path) -> (CheckReport, Option<String>, Option<TokenCounts>) {
    let file = path.display().to_string();
    let mut report = CheckReport::default();
    let text = match read_spec(path) {
        Ok(text) => text,
        Err(problem) => {
            report.push(*problem);
            return (report, None, None);
        }
    };
    let checked = check_spec_source(&text, &file, &mut report);
    let train_tokens = check_named_files(&checked, &text, &file, &mut report);
    (report, Some(text), train_tokens)
}

fn read_spec(path: &Path) -> Result<String, Box<Problem>> {
    let file = path.display().to_string();
    let fail = |m: String| Box::new(Problem::error(&file, m));
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(fail(
            "is not a regular file; give a sweep file (.yaml)".into(),
        ));
    }
    if meta.len() > MAX_SPEC_BYTES {
        return Err(fail(format!(
            "is {} bytes; a sweep file is a few lines of YAML",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + valid.iter().filter(|b| **b == b'\n').count();
        let line_start = valid
            .iter()
            .rposition(|b| *b == b'\n')
            .map(|i| i + 1)
            .unwrap_or(0);
        let column = String::from_utf8_lossy(&valid[line_start..])
            .chars()
            .count()
            + 1;
        Box::new(
            Problem::error(&file, "invalid UTF-8")
                .at(Some(line), Some(column))
                .hint("save the sweep file as UTF-8"),
        )
    })
}

/// Where problems of one sweep file go, with the text to locate them in.
struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
    report: &'a mut CheckReport,
    errors: usize,
}

impl Ctx<'_> {
    fn push(
        &mut self,
        severity: Severity,
        path: &[Seg],
        target: Target,
        message: String,
        hint: Option<String>,
    ) {
        // Locating re-reads the document; not worth it for a problem that is only counted.
        let at = if path.is_empty() || self.report.is_full(self.file) {
            None
        } else {
            locate(self.text, path, target)
        };
        let mut p = match severity {
            Severity::Error => Problem::error(self.file, message),
            Severity::Warning => Problem::warning(self.file, message),
        }
        .at(at.map(|a| a.0), at.map(|a| a.1))
        .maybe_hint(hint);
        if !path.is_empty() {
            p = p.field(dotted(path));
        }
        if severity == Severity::Error {
            self.errors += 1;
        }
        self.report.push(p);
    }

    fn error(&mut self, path: &[Seg], target: Target, message: String, hint: Option<String>) {
        self.push(Severity::Error, path, target, message, hint);
    }
}

/// `parameters.lr.values[1]`.
fn dotted(path: &[Seg]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn with(path: &[Seg], seg: Seg) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(seg);
    p
}

/// A YAML value's kind, in words.
fn kind(v: &Yaml) -> String {
    match v {
        Yaml::Null => "nothing".into(),
        Yaml::Bool(b) => format!("`{b}`"),
        Yaml::Number(n) => format!("the number {n}"),
        Yaml::String(s) => format!("the string `{}`", clip(s)),
        Yaml::Sequence(_) => "a list".into(),
        Yaml::Mapping(_) => "a mapping".into(),
        Yaml::Tagged(t) => format!("a value tagged `{}`", t.tag),
    }
}

fn clip(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Checks a sweep file's text: syntax, keys, types, values, the grid and every trial. Touches
/// no file, so it is fuzzed directly.
pub fn check_spec_source(text: &str, file: &str, report: &mut CheckReport) -> SpecCheck {
    let mut out = SpecCheck::default();
    let yaml: Yaml = match yaml_serde::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let at = e.location();
            let line = at.as_ref().map(|l| l.line());
            let tab = line
                .and_then(|n| text.lines().nth(n.saturating_sub(1)))
                .is_some_and(|l| l.contains('\t'));
            let hint = if tab {
                "this line has a tab: YAML indents with spaces only"
            } else {
                "check the indentation and the `key: value` form near there"
            };
            report.push(
                Problem::error(
                    file,
                    format!("YAML syntax: {}", strip_position(&e.to_string())),
                )
                .at(line, at.as_ref().map(|l| l.column()))
                .hint(hint),
            );
            return out;
        }
    };
    let mut ctx = Ctx {
        text,
        file,
        report,
        errors: 0,
    };
    match &yaml {
        Yaml::Mapping(_) => walk_map(&yaml, TOP, &[], &mut ctx),
        Yaml::Null => ctx.error(
            &[],
            Target::Value,
            "the sweep file is empty".into(),
            Some("start from sweeps/quickstart.yaml; see README, section \"A sweep file\"".into()),
        ),
        other => ctx.error(
            &[],
            Target::Value,
            format!(
                "expected a mapping of keys (name, data, parameters, ...), got {}",
                kind(other)
            ),
            Some("see README, section \"A sweep file\"".into()),
        ),
    }
    let walk_errors = ctx.errors;
    out.yaml = Some(yaml);
    if walk_errors > 0 {
        return out;
    }
    let spec: SweepSpec = match yaml_serde::from_str(text) {
        Ok(spec) => spec,
        Err(e) => {
            // The walk above should have said it; this is the safety net.
            let at = e.location();
            ctx.report
                .push(Problem::error(file, strip_position(&e.to_string())).at(
                    at.as_ref().map(|l| l.line()),
                    at.as_ref().map(|l| l.column()),
                ));
            return out;
        }
    };
    let problems = spec.field_problems();
    for (field, message) in &problems {
        let path = Seg::parse_path(field);
        let target = value_or_key(out.yaml.as_ref(), &path);
        // A problem with a key that is not there (random search without run_cap) points at
        // the key that asks for it.
        let present = locate(text, &path, Target::Key).is_some();
        let (at, target) = match field.as_str() {
            "run_cap" if !present => (vec![Seg::Key("method".into())], Target::Value),
            _ => (path.clone(), target),
        };
        let line = locate(text, &at, target);
        let mut p = Problem::error(file, message.clone())
            .at(line.map(|l| l.0), line.map(|l| l.1))
            .field(field.clone());
        if field == "run_cap" && !present {
            p = p.hint("add e.g. `run_cap: 20`");
        }
        ctx.errors += 1;
        ctx.report.push(p);
    }
    if problems.is_empty() {
        out.trials = check_trials(&spec, &mut ctx);
        if ctx.errors == 0 {
            out.spec = Some(spec);
        }
    }
    out
}

/// Point at the value for scalars, at the key for mappings and lists (whose value starts on
/// another line or at a brace).
fn value_or_key(yaml: Option<&Yaml>, path: &[Seg]) -> Target {
    let mut v = yaml;
    for s in path {
        v = match (v, s) {
            (Some(Yaml::Mapping(m)), Seg::Key(k)) => m.get(k.as_str()),
            (Some(Yaml::Sequence(items)), Seg::Index(i)) => items.get(*i),
            _ => None,
        };
    }
    match v {
        Some(Yaml::Mapping(_) | Yaml::Sequence(_)) => Target::Key,
        _ => Target::Value,
    }
}

fn walk_map(v: &Yaml, keys: &[Key], path: &[Seg], ctx: &mut Ctx) {
    let Yaml::Mapping(map) = v else {
        let names: Vec<&str> = keys.iter().map(|k| k.name).collect();
        let hint = match path.last() {
            Some(Seg::Key(k)) if k == "data" => {
                Some("write `data: {train: PATH/train.json, dev: PATH/dev.json}`".to_string())
            }
            Some(Seg::Key(k)) if k == "metric" => {
                Some("write `metric: {name: accuracy, goal: maximize}`".to_string())
            }
            Some(Seg::Key(k)) if k == "model" => {
                Some("write `model: {preset: tiny}` or `model: {path: FOLDER}`".to_string())
            }
            _ => None,
        };
        ctx.error(
            path,
            Target::Key,
            format!(
                "expected a mapping with {}, got {}",
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                kind(v)
            ),
            hint,
        );
        return;
    };
    let names: Vec<&str> = keys.iter().map(|k| k.name).collect();
    for (k, value) in map {
        let Some(name) = k.as_str() else {
            ctx.error(
                path,
                Target::Key,
                format!("keys must be names, got {}", kind(k)),
                None,
            );
            continue;
        };
        let here = with(path, Seg::Key(name.to_string()));
        match keys.iter().find(|key| key.name == name) {
            None => {
                let hint = foreign_key_hint(path, name)
                    .or_else(|| Some(format!("known keys here: {}", names.join(", "))));
                ctx.error(
                    &here,
                    Target::Key,
                    format!(
                        "unknown key `{name}`{}",
                        crate::util::suggest::suffix(name, &names)
                    ),
                    hint,
                );
            }
            Some(key) => walk_value(value, key, &here, ctx),
        }
    }
    for key in keys.iter().filter(|k| k.required) {
        if map.get(key.name).is_none() {
            let example = match key.name {
                "name" => "`name: my-sweep` (results go to results/<name>/)",
                "data" => "`data: {train: PATH/train.json, dev: PATH/dev.json}`",
                "parameters" => "`parameters: {learning_rate: {values: [1.0e-3, 3.0e-3]}}`",
                "train" => "`train: PATH/train.json`",
                "dev" => "`dev: PATH/dev.json` (the held-out set sweep measures on)",
                _ => "",
            };
            // Pointed at the mapping that lacks it (no line for the top level), named in full.
            let at = if path.is_empty() {
                None
            } else {
                locate(ctx.text, path, Target::Key)
            };
            let p = Problem::error(ctx.file, format!("missing `{}`", key.name))
                .at(at.map(|a| a.0), at.map(|a| a.1))
                .field(dotted(&with(path, Seg::Key(key.name.into()))))
                .maybe_hint((!example.is_empty()).then(|| format!("add {example}")));
            ctx.errors += 1;
            ctx.report.push(p);
        }
    }
}

fn walk_value(v: &Yaml, key: &Key, path: &[Seg], ctx: &mut Ctx) {
    if matches!(v, Yaml::Null) {
        if !key.nullable {
            ctx.error(
                path,
                Target::Key,
                format!("`{}` is empty", key.name),
                Some(if key.required {
                    "give it a value".to_string()
                } else {
                    "give it a value, or remove the line for the default".to_string()
                }),
            );
        }
        return;
    }
    if let Yaml::Tagged(t) = v {
        ctx.error(
            path,
            Target::Value,
            format!("unexpected YAML tag `{}`", t.tag),
            Some("remove the `!tag`".into()),
        );
        return;
    }
    match key.shape {
        Shape::Text => {
            if !matches!(v, Yaml::String(_) | Yaml::Number(_) | Yaml::Bool(_)) {
                ctx.error(
                    path,
                    Target::Key,
                    format!("expected a string, got {}", kind(v)),
                    None,
                );
            }
        }
        Shape::Count => check_count(v, path, ctx),
        Shape::OneOf(options) => {
            let word = match v {
                Yaml::String(s) => Some(s.as_str()),
                _ => None,
            };
            if !word.is_some_and(|w| options.contains(&w)) {
                let meant = word
                    .map(|w| crate::util::suggest::suffix(w, options))
                    .unwrap_or_default();
                ctx.error(
                    path,
                    Target::Value,
                    format!(
                        "expected one of {}, got {}{meant}",
                        options.join(", "),
                        kind(v)
                    ),
                    None,
                );
            }
        }
        Shape::Map(keys) => walk_map(v, keys, path, ctx),
        Shape::Parameters => walk_parameters(v, path, ctx),
        Shape::TextList => match v {
            Yaml::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    if !matches!(item, Yaml::String(_)) {
                        ctx.error(
                            &with(path, Seg::Index(i)),
                            Target::Value,
                            format!("expected a string, got {}", kind(item)),
                            Some("quote it: each item is one argument".into()),
                        );
                    }
                }
            }
            other => ctx.error(
                path,
                Target::Value,
                format!("expected a list of strings, got {}", kind(other)),
                Some("e.g. [\"--constraint=a100\"]".into()),
            ),
        },
        Shape::Devices => match v {
            Yaml::String(s) if ["auto", "cpu", "cuda"].contains(&s.as_str()) => {}
            Yaml::Sequence(ids) => {
                for (i, id) in ids.iter().enumerate() {
                    check_count(id, &with(path, Seg::Index(i)), ctx);
                }
            }
            other => ctx.error(
                path,
                Target::Value,
                format!(
                    "expected `auto`, `cpu`, `cuda` or a list of device ids, got {}{}",
                    kind(other),
                    other
                        .as_str()
                        .map(|s| crate::util::suggest::suffix(s, &["auto", "cpu", "cuda"]))
                        .unwrap_or_default()
                ),
                None,
            ),
        },
    }
}

fn check_count(v: &Yaml, path: &[Seg], ctx: &mut Ctx) {
    if v.as_u64().is_some() {
        return;
    }
    let why = match v {
        Yaml::Number(n) if n.as_i64().is_some_and(|i| i < 0) => "must not be negative",
        Yaml::Number(_) => "must be a whole number",
        _ => "expected a whole number",
    };
    ctx.error(path, Target::Value, format!("{why}, got {}", kind(v)), None);
}

fn walk_parameters(v: &Yaml, path: &[Seg], ctx: &mut Ctx) {
    let Yaml::Mapping(map) = v else {
        ctx.error(
            path,
            Target::Key,
            format!("expected a mapping of parameter names to search spaces, got {}", kind(v)),
            Some("write e.g. `parameters: {learning_rate: {values: [1.0e-3, 3.0e-3]}, epochs: {value: 2}}`".into()),
        );
        return;
    };
    if map.is_empty() {
        ctx.push(
            Severity::Warning,
            path,
            Target::Key,
            "no parameters: the sweep is a single trial with every default".into(),
            None,
        );
    }
    let known = parameter_names();
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    for (k, spec) in map {
        let Some(name) = k.as_str() else {
            ctx.error(
                path,
                Target::Key,
                format!("parameter names must be names, got {}", kind(k)),
                None,
            );
            continue;
        };
        let here = with(path, Seg::Key(name.to_string()));
        if !known.contains(&name) {
            let meant = PARAMETER_ALIASES
                .iter()
                .find(|(alias, _)| *alias == name)
                .map(|(_, n)| format!(" (did you mean `{n}`?)"))
                .unwrap_or_else(|| crate::util::suggest::suffix(name, &known));
            ctx.error(
                &here,
                Target::Key,
                format!("unknown parameter `{name}`{meant}"),
                Some(format!("a trial takes: {}", known.join(", "))),
            );
            continue;
        }
        let Yaml::Mapping(fields) = spec else {
            let shown = match spec {
                Yaml::Sequence(_) => format!("`{name}: {{values: [...]}}` for a list of values to search"),
                _ => format!("`{name}: {{value: X}}` for one value, or `{{values: [X, Y]}}` to search several"),
            };
            ctx.error(
                &here,
                Target::Value,
                format!(
                    "expected a search space like {{value: ...}} or {{values: [...]}}, got {}",
                    kind(spec)
                ),
                Some(format!("write {shown} (W&B sweep syntax)")),
            );
            continue;
        };
        for (fk, fv) in fields {
            let Some(field) = fk.as_str() else {
                ctx.error(
                    &here,
                    Target::Key,
                    format!("keys must be names, got {}", kind(fk)),
                    None,
                );
                continue;
            };
            let at = with(&here, Seg::Key(field.to_string()));
            if !PARAM_KEYS.contains(&field) {
                ctx.error(
                    &at,
                    Target::Key,
                    format!(
                        "unknown key `{field}`{}",
                        crate::util::suggest::suffix(field, &PARAM_KEYS)
                    ),
                    Some(format!("a search space takes: {}", PARAM_KEYS.join(", "))),
                );
                continue;
            }
            check_param_field(field, fv, &at, ctx);
        }
    }
}

fn check_param_field(field: &str, v: &Yaml, path: &[Seg], ctx: &mut Ctx) {
    let number = |v: &Yaml| matches!(v, Yaml::Number(_));
    match field {
        "values" | "probabilities" => {
            let Yaml::Sequence(items) = v else {
                let hint = (field == "values").then(|| {
                    "write a list, e.g. `values: [1, 2]`; for a single value use `value: X`"
                        .to_string()
                });
                ctx.error(
                    path,
                    Target::Value,
                    format!("expected a list, got {}", kind(v)),
                    hint,
                );
                return;
            };
            for (i, item) in items.iter().enumerate() {
                let at = with(path, Seg::Index(i));
                if field == "probabilities" && !number(item) {
                    ctx.error(
                        &at,
                        Target::Value,
                        format!("expected a number, got {}", kind(item)),
                        None,
                    );
                } else {
                    check_json_like(item, &at, ctx);
                }
            }
        }
        "min" | "max" | "q" => {
            if !number(v) {
                ctx.error(
                    path,
                    Target::Value,
                    format!("expected a number, got {}", kind(v)),
                    None,
                );
            }
        }
        "distribution" => {
            if !matches!(v, Yaml::String(_)) {
                ctx.error(
                    path,
                    Target::Value,
                    format!("expected a distribution name, got {}", kind(v)),
                    Some(format!("one of: {}", crate::spec::DISTRIBUTIONS.join(", "))),
                );
            }
        }
        _ => check_json_like(v, path, ctx),
    }
}

/// Parameter values become JSON; YAML tags and non-string keys do not.
fn check_json_like(v: &Yaml, path: &[Seg], ctx: &mut Ctx) {
    match v {
        Yaml::Tagged(t) => ctx.error(
            path,
            Target::Value,
            format!("unexpected YAML tag `{}`", t.tag),
            Some("remove the `!tag`".into()),
        ),
        Yaml::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                check_json_like(item, &with(path, Seg::Index(i)), ctx);
            }
        }
        Yaml::Mapping(m) => {
            for (k, item) in m {
                match k.as_str() {
                    Some(name) => check_json_like(item, &with(path, Seg::Key(name.into())), ctx),
                    None => ctx.error(
                        path,
                        Target::Key,
                        format!("keys must be names, got {}", kind(k)),
                        None,
                    ),
                }
            }
        }
        _ => {}
    }
}

/// One distinct trial problem: the first trial that has it, how many do, and the value of the
/// parameter at fault there (to point at it in the file).
struct Seen {
    first: usize,
    count: usize,
    value: Option<serde_json::Value>,
}

/// Every trial the sweep would run, through the same code `sweep plan` uses; each distinct
/// problem once, at the value that causes it. Returns the trials when all are valid.
fn check_trials(spec: &SweepSpec, ctx: &mut Ctx) -> Vec<TrialParams> {
    let list = match assignments(spec, ctx.file) {
        Ok(list) => list,
        Err(e) => {
            let (path, message) = match e {
                SpecError::Param { param, message, .. } => (
                    vec![Seg::Key("parameters".into()), Seg::Key(param)],
                    message,
                ),
                SpecError::Field { field, message, .. } => (Seg::parse_path(&field), message),
                other => (Vec::new(), other.to_string()),
            };
            ctx.error(&path, Target::Key, message, None);
            return Vec::new();
        }
    };
    if list.is_empty() {
        ctx.error(
            &[Seg::Key("parameters".into())],
            Target::Key,
            "the sweep has no trials".into(),
            None,
        );
        return Vec::new();
    }
    if spec.method == SearchMethod::Grid {
        let domains: Vec<(String, Domain)> = spec
            .parameters
            .iter()
            .filter_map(|(n, p)| Domain::from_spec(p).ok().map(|d| (n.clone(), d)))
            .collect();
        if let Ok(total) = grid_size(&domains) {
            if total > list.len() {
                ctx.push(
                    Severity::Warning,
                    &[Seg::Key("run_cap".into())],
                    Target::Value,
                    format!(
                        "the grid has {total} trials; run_cap {} runs only the first {}",
                        list.len(),
                        list.len()
                    ),
                    Some("use `method: random` to sample the grid evenly instead".into()),
                );
            }
        }
    }
    let mut seen: BTreeMap<(Option<String>, String), Seen> = BTreeMap::new();
    let mut trials = Vec::new();
    for (i, a) in list.iter().enumerate() {
        match TrialParams::check_assignment(a, spec.seed) {
            Ok(p) => trials.push(p),
            Err(problems) => {
                for p in problems {
                    let value = p.param.as_ref().and_then(|n| a.get(n).cloned());
                    let entry = seen.entry((p.param, p.message)).or_insert(Seen {
                        first: i + 1,
                        count: 0,
                        value,
                    });
                    entry.count += 1;
                }
            }
        }
    }
    for (
        (param, message),
        Seen {
            first,
            count,
            value,
        },
    ) in seen
    {
        let path = match &param {
            Some(name) if spec.parameters.contains_key(name) => {
                let base = vec![Seg::Key("parameters".into()), Seg::Key(name.clone())];
                match spec
                    .parameters
                    .get(name)
                    .and_then(|p| Domain::from_spec(p).ok())
                {
                    Some(Domain::Categorical { values, .. }) => {
                        match values.iter().position(|v| Some(v) == value.as_ref()) {
                            Some(i) => with(&with(&base, Seg::Key("values".into())), Seg::Index(i)),
                            None => base,
                        }
                    }
                    Some(Domain::Constant(_)) if spec.parameters[name].value.is_some() => {
                        with(&base, Seg::Key("value".into()))
                    }
                    _ => base,
                }
            }
            _ => vec![Seg::Key("parameters".into())],
        };
        let which = if count == 1 {
            format!("trial {first}")
        } else {
            format!("{count} trials, the first trial {first}")
        };
        let target = if matches!(path.last(), Some(Seg::Index(_)))
            || matches!(path.last(), Some(Seg::Key(k)) if k == "value")
        {
            Target::Value
        } else {
            Target::Key
        };
        ctx.error(&path, target, format!("{message} (in {which})"), None);
    }
    if trials.len() < list.len() {
        return Vec::new();
    }
    if let Err(e) = crate::plan::Pool::from_spec(spec, 1) {
        let path: Vec<Seg> = e.field.split('.').map(|k| Seg::Key(k.into())).collect();
        ctx.error(&path, Target::Value, e.message, None);
    }
    trials
}

/// A string value at `path` of the YAML (as the typed parser would read it).
fn text_at(yaml: &Yaml, path: &[&str]) -> Option<String> {
    let mut v = yaml;
    for k in path {
        v = v.as_mapping()?.get(*k)?;
    }
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The files a sweep names: data (alone, as a pair, labelled enough for the methods), the model
/// folder, and token lengths with the model's tokenizer.
fn check_named_files(
    checked: &SpecCheck,
    text: &str,
    file: &str,
    report: &mut CheckReport,
) -> Option<TokenCounts> {
    let yaml = checked.yaml.as_ref()?;
    let mut ctx = Ctx {
        text,
        file,
        report,
        errors: 0,
    };
    let mut data: Vec<Option<DataFile>> = Vec::new();
    let mut paths: Vec<PathBuf> = Vec::new();
    let conflicts = match text_at(yaml, &["data", "conflicts"]).as_deref() {
        Some("error") => ConflictPolicy::Error,
        _ => ConflictPolicy::Warn,
    };
    for which in ["train", "dev"] {
        let field = format!("data.{which}");
        let seg = [Seg::Key("data".into()), Seg::Key(which.into())];
        let loaded = text_at(yaml, &["data", which]).and_then(|p| {
            let path = PathBuf::from(&p);
            paths.push(path.clone());
            if path.is_dir() {
                ctx.error(
                    &seg,
                    Target::Value,
                    format!("`{p}` is a folder; a data file is expected"),
                    folder_hint(&path),
                );
                return None;
            }
            if !path.exists() {
                ctx.error(
                    &seg,
                    Target::Value,
                    format!("`{p}` not found"),
                    missing_file_hint(&path, Some(&field)),
                );
                return None;
            }
            check_data_file(&path, conflicts, ctx.report)
        });
        data.push(loaded);
    }
    if let [a, b] = paths.as_slice() {
        if a == b
            || std::fs::canonicalize(a)
                .ok()
                .is_some_and(|a| std::fs::canonicalize(b).ok() == Some(a))
        {
            ctx.push(
                Severity::Warning,
                &[Seg::Key("data".into()), Seg::Key("dev".into())],
                Target::Value,
                "train and dev are the same file: dev then measures memorisation, not learning"
                    .into(),
                Some("hold out part of the data as dev.json".into()),
            );
        }
    }
    let (train, dev) = match data.as_slice() {
        [Some(t), Some(d)] => (Some(t), Some(d)),
        [t, d] => (t.as_ref(), d.as_ref()),
        _ => (None, None),
    };
    if let (Some(t), Some(d)) = (train, dev) {
        cross_check(t, d, ctx.report);
    }
    // `data.test`, checked like dev: the best checkpoint is scored on it when the sweep ends.
    if let Some(p) = text_at(yaml, &["data", "test"]) {
        let seg = [Seg::Key("data".into()), Seg::Key("test".into())];
        let path = PathBuf::from(&p);
        if path.is_dir() {
            ctx.error(
                &seg,
                Target::Value,
                format!("`{p}` is a folder; a data file is expected"),
                folder_hint(&path),
            );
        } else if !path.exists() {
            ctx.error(
                &seg,
                Target::Value,
                format!("`{p}` not found"),
                missing_file_hint(&path, Some("data.test")),
            );
        } else if let Some(test) = check_data_file(&path, conflicts, ctx.report) {
            if let Some(t) = train {
                cross_check_as(t, &test, "test", ctx.report);
            }
            if let Some(e) = test.examples.iter().find(|e| e.tgt.is_none()) {
                ctx.report.push(
                    Problem::error(
                        &test.file,
                        "test examples need a label: the test score is accuracy",
                    )
                    .at(Some(e.line), None)
                    .field("tgt"),
                );
            }
        }
    }

    let model = check_model(yaml, &mut ctx);
    let (true, Some(model)) = (checked.spec.is_some(), model) else {
        return None;
    };
    let trials = &checked.trials;
    let supervised: Vec<&TrialParams> = trials
        .iter()
        .filter(|p| p.method != Method::PostPretrain)
        .collect();
    let loaded: Vec<&DataFile> = [train, dev].into_iter().flatten().collect();
    if !supervised.is_empty() {
        for d in &loaded {
            let missing: Vec<usize> = d
                .examples
                .iter()
                .filter(|e| e.tgt.is_none())
                .map(|e| e.line)
                .collect();
            if let Some(first) = missing.first() {
                ctx.report.push(
                    Problem::error(
                        &d.file,
                        format!(
                            "{} example(s) have no tgt, but {} of the {} trials train with sft or lora, which learn the answer",
                            missing.len(),
                            supervised.len(),
                            trials.len()
                        ),
                    )
                    .at(Some(*first), None)
                    .field("tgt")
                    .hint("label every example, or use `method: {value: post_pretrain}` for unlabelled text"),
                );
            }
        }
    }
    // Without `max_seq_len` in the sweep file, the trials use one fitted to the data (known
    // once the data is tokenized below).
    let fitted_by_default = checked
        .spec
        .as_ref()
        .is_some_and(|s| !s.parameters.contains_key("max_seq_len"));
    let mut lengths = Lengths::default();
    for p in trials {
        match p.method {
            Method::PostPretrain => lengths.unsupervised.insert(p.max_seq_len as usize),
            Method::Sft | Method::Lora => lengths.supervised.insert(p.max_seq_len as usize),
        };
    }
    let methods: std::collections::BTreeSet<&str> =
        trials.iter().map(|p| p.method.as_str()).collect();
    let all_lengths: std::collections::BTreeSet<usize> = lengths
        .supervised
        .union(&lengths.unsupervised)
        .copied()
        .collect();
    ctx.report.note(format!(
        "{file}: {} trial(s) ({}), max_seq_len {}",
        trials.len(),
        methods.into_iter().collect::<Vec<_>>().join(", "),
        if fitted_by_default {
            "fitted to the data".to_string()
        } else {
            all_lengths
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    let train = train?;
    if train.examples.is_empty() {
        return None;
    }
    let tokenizer = match crate::text::tokenizer::load_tokenizer(&model, &train.examples) {
        Ok(t) => t,
        Err(e) => {
            ctx.error(
                &[Seg::Key("model".into())],
                Target::Key,
                format!("cannot load the tokenizer: {e:#}"),
                None,
            );
            return None;
        }
    };
    let counts: Vec<TokenCounts> = loaded
        .iter()
        .map(|d| TokenCounts::measure(&tokenizer, &d.examples))
        .collect();
    if fitted_by_default {
        let max_positions = match &model {
            ModelSource::Preset(name) => {
                crate::spec::shape::preset(name).map(|c| c.max_position_embeddings)
            }
            ModelSource::Path(dir) => crate::text::model_folder::read_config(dir)
                .ok()
                .map(|c| c.max_position_embeddings),
        };
        if let (Some(max_positions), Some(train_counts)) = (max_positions, counts.first()) {
            let longest = train_counts.longest();
            let fitted = crate::spec::params::fitted_max_seq_len(longest, max_positions);
            ctx.report.note(format!(
                "{file}: {}",
                crate::plan::fitted_note(fitted, longest, max_positions)
            ));
            let one = |set: &BTreeSet<usize>| -> BTreeSet<usize> {
                if set.is_empty() {
                    BTreeSet::new()
                } else {
                    BTreeSet::from([fitted as usize])
                }
            };
            lengths = Lengths {
                supervised: one(&lengths.supervised),
                unsupervised: one(&lengths.unsupervised),
            };
        }
    }
    let files: Vec<(&DataFile, &TokenCounts)> = loaded.iter().copied().zip(&counts).collect();
    check_lengths(&files, &lengths, ctx.report);
    // The first file is train: the planner sizes memory with its counts.
    counts.into_iter().next()
}

/// The model folder named by `model.path` (config.json, tokenizer.json), or the preset.
fn check_model(yaml: &Yaml, ctx: &mut Ctx) -> Option<ModelSource> {
    let seg = [Seg::Key("model".into()), Seg::Key("path".into())];
    let Some(p) = text_at(yaml, &["model", "path"]) else {
        let preset = text_at(yaml, &["model", "preset"]).unwrap_or_else(|| "tiny".into());
        return Some(ModelSource::Preset(preset));
    };
    let dir = PathBuf::from(&p);
    if !dir.is_dir() {
        let (message, hint) = if dir.exists() {
            (format!("`{p}` is a file; a model folder is expected"), None)
        } else {
            (
                format!("`{p}` not found"),
                Some(
                    "a Hugging Face model folder (config.json, model.safetensors, tokenizer.json), or use `model: {preset: tiny}`"
                        .to_string(),
                ),
            )
        };
        ctx.error(&seg, Target::Value, message, hint);
        return None;
    }
    let mut ok = true;
    for needed in ["config.json", "tokenizer.json"] {
        if !dir.join(needed).is_file() {
            ctx.error(
                &seg,
                Target::Value,
                format!("`{p}` has no {needed}"),
                Some("a Hugging Face model folder is expected: config.json, model.safetensors (or shards), tokenizer.json".into()),
            );
            ok = false;
        }
    }
    if !dir.join("model.safetensors").is_file()
        && !dir.join("model.safetensors.index.json").is_file()
    {
        ctx.error(
            &seg,
            Target::Value,
            format!("`{p}` has no model.safetensors (nor model.safetensors.index.json)"),
            None,
        );
        ok = false;
    }
    ok.then(|| ModelSource::Path(std::fs::canonicalize(&dir).unwrap_or(dir)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> String {
        let mut r = CheckReport::default();
        check_spec_source(text, "s.yaml", &mut r);
        r.render()
    }

    #[test]
    fn the_key_walk_knows_every_field_of_sweep_spec() {
        // Serializing a spec writes every field (None as null), at every level: a field added
        // to SweepSpec but not to the walk above shows up here as an unknown key.
        let spec = SweepSpec::from_yaml(
            "name: t\ndata: {train: a, dev: b}\nparameters: {epochs: {value: 1}}\n",
            "s.yaml",
        )
        .unwrap();
        let text = yaml_serde::to_string(&spec).unwrap();
        let out = check(&text);
        assert!(!out.contains("error"), "{text}\n{out}");
    }

    #[test]
    fn data_conflicts_is_known_to_the_walk_and_to_sweep_spec() {
        for (value, policy) in [
            ("warn", ConflictPolicy::Warn),
            ("error", ConflictPolicy::Error),
        ] {
            let text = format!(
                "name: t\ndata: {{train: a, dev: b, conflicts: {value}}}\nparameters: {{epochs: {{value: 1}}}}\n"
            );
            assert_eq!(
                SweepSpec::from_yaml(&text, "s.yaml")
                    .unwrap()
                    .data
                    .conflicts,
                policy
            );
            let out = check(&text);
            assert!(!out.contains("conflicts"), "{out}");
        }
        let out = check("name: t\ndata: {train: a, dev: b, conflicts: maybe}\nparameters: {epochs: {value: 1}}\n");
        assert!(out.contains("conflicts"), "{out}");
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let out = check("name: t\ndata: {train: a, dev: b\nparameters: {}\n");
        assert!(out.contains("s.yaml:3:"), "{out}");
        assert!(out.contains("error: YAML syntax"), "{out}");
    }

    #[test]
    fn unknown_keys_and_types_are_all_reported_with_positions() {
        let out = check(
            "name: t\ndata: {train: a, dev: b}\nmetrics: {name: accuracy}\nrun_cap: -3\nmethod: gird\nparameters:\n  lerning_rate: {values: [0.1]}\n  epochs: 3\n  batch_size: {valeus: [1]}\n",
        );
        for want in [
            "s.yaml:3:1: error: metrics: unknown key `metrics` (did you mean `metric`?)",
            "s.yaml:4:10: error: run_cap: must not be negative",
            "s.yaml:5:9: error: method: expected one of grid, random, bayes, got the string `gird` (did you mean `grid`?)",
            "s.yaml:7:3: error: parameters.lerning_rate: unknown parameter `lerning_rate` (did you mean `learning_rate`?)",
            "s.yaml:8:11: error: parameters.epochs: expected a search space",
            "s.yaml:9:16: error: parameters.batch_size.valeus: unknown key `valeus` (did you mean `values`?)",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
    }

    #[test]
    fn search_settings_are_checked_where_they_are_written() {
        let out = check(
            "name: t\ndata: {train: a, dev: b}\nmethod: bayes\nmetric: {name: accuracy, target: 0.9}\nparameters: {epochs: {value: 1}}\nearly_terminate:\n  type: hyperband\n  min_iter: 2\n  eta: 1\n",
        );
        assert!(
            out.contains("s.yaml:3:9: error: run_cap: bayes search needs `run_cap`"),
            "{out}"
        );
        assert!(
            out.contains("s.yaml:9:8: error: early_terminate.eta: eta must be greater than 1"),
            "{out}"
        );
        let out = check(
            "name: t\ndata: {train: a, dev: b}\nmetric: {name: accuracy, target: high}\nparameters: {epochs: {value: 1}}\n",
        );
        assert!(
            out.contains(
                "s.yaml:3:34: error: metric.target: invalid type: string \"high\", expected f64"
            ),
            "{out}"
        );
        let out = check(
            "name: t\ndata: {train: a, dev: b}\nparameters: {epochs: {value: 1}}\nearly_terminate: {type: hyperbnd, max_iter: 9}\n",
        );
        assert!(
            out.contains("early_terminate.type: expected one of hyperband"),
            "{out}"
        );
        let out = check(
            "name: t\ndata: {train: a, dev: b}\nparameters: {epochs: {value: 1}}\nearly_terminate: {type: hyperband, max_iter: 9}\n",
        );
        assert!(
            out.contains("early_terminate.s: with max_iter, give s >= 1"),
            "{out}"
        );
        let out = check(
            "name: t\ndata: {train: a, dev: b}\nparameters: {epochs: {value: 1}}\nearly_terminate: {type: hyperband}\n",
        );
        assert!(
            out.contains("early_terminate.min_iter: give min_iter, or max_iter with s"),
            "{out}"
        );
    }

    #[test]
    fn slurm_settings_are_checked_where_they_are_written() {
        let out = check(
            "name: t\ndata: {train: a, dev: b}\nparameters: {}\nresources:\n  executor: slurm\n  partiton: gpu\n  time: 1h\n  sbatch_args: [\"--mem=4G\", 3]\n",
        );
        assert!(
            out.contains("s.yaml:6:3: error: resources.partiton: unknown key"),
            "{out}"
        );
        assert!(out.contains("did you mean `partition`"), "{out}");
        assert!(
            out.contains("s.yaml:8:29: error: resources.sbatch_args[1]: expected a string"),
            "{out}"
        );
        let out = check(
            "name: t\ndata: {train: a, dev: b}\nparameters: {}\nresources:\n  executor: slurm\n  time: 1h\n  sbatch_args: [\"--mem=4G\"]\n",
        );
        assert!(
            out.contains("error: resources.time: `1h` is not a Slurm time limit"),
            "{out}"
        );
        assert!(
            out.contains("error: resources.sbatch_args: `--mem=4G`: sweep sets --mem itself"),
            "{out}"
        );
        let out = check(
            "name: t\ndata: {train: a, dev: b}\nparameters: {}\nresources: {executor: lsf, qos: high}\n",
        );
        assert!(out.contains("expected one of local, slurm"), "{out}");
    }

    #[test]
    fn impossible_values_point_at_the_value() {
        let out = check(
            "name: t\ndata: {train: a, dev: b}\nparameters:\n  learning_rate: {values: [1.0e-3, 0]}\n  batch_size: {value: 0}\n  warmup: {distribution: uniform, min: 0.5, max: 0.1}\n",
        );
        assert!(
            out.contains(
                "s.yaml:6:3: error: parameters.warmup: min (0.5) must be less than max (0.1)"
            ),
            "{out}"
        );
        let out = check(
            "name: t\ndata: {train: a, dev: b}\nparameters:\n  learning_rate: {values: [1.0e-3, 0]}\n  batch_size: {value: 0}\n",
        );
        assert!(out.contains("s.yaml:4:36: error: parameters.learning_rate.values[1]: learning_rate must be positive, got 0 (in trial 2)"), "{out}");
        assert!(
            out.contains(
                "s.yaml:5:23: error: parameters.batch_size.value: batch_size must be at least 1"
            ),
            "{out}"
        );
    }
}
