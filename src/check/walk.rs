//! The key walk: every key of a sweep file and the type of its value, checked against the
//! spec's own schema (`spec::schema`, read from `SweepSpec`'s serde types) in one pass over the
//! YAML, so every unknown key and wrong type is reported with its position and a did-you-mean.
//!
//! The schema says which keys a block has, which are required, which may be `~` and what each
//! holds; the few rules of the checker's own (`RULES`) cover what a type cannot say: the
//! parameters' names, and the values an untagged enum accepts.

use std::sync::OnceLock;

use yaml_serde::Value as Yaml;

use super::located::{with, Ctx};
use super::yaml::{Seg, Target};
use super::Severity;
use crate::spec::params::{parameter_names, PARAMETER_ALIASES};
use crate::spec::schema::{variants, Field, Kind};
use crate::spec::{DeviceKind, Distribution, SweepSpec};

/// The sweep file's schema, read once from `SweepSpec`.
pub fn sweep_schema() -> &'static Kind {
    static SCHEMA: OnceLock<Kind> = OnceLock::new();
    SCHEMA.get_or_init(Kind::of::<SweepSpec>)
}

/// How the walk checks a key whose type alone does not say enough.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// Names of trial parameters (`spec::params`), each a search space.
    Parameters,
    /// `auto`, `cpu`, `cuda`, or a list of GPU ids (`DevicesSpec`, untagged).
    Devices,
    /// Any scalar: the typed parse reads it (`MemorySize`, untagged).
    Scalar,
    /// One of the model presets (a string in the spec, checked by name).
    Preset,
    /// `metric.name`: accuracy or dev_loss for the built-in trainer, any name a program
    /// reports (`MetricName`, untagged).
    MetricName,
}

/// Keys (dotted paths) with a rule of the checker's own.
pub const RULES: &[(&str, Rule)] = &[
    ("parameters", Rule::Parameters),
    ("resources.devices", Rule::Devices),
    ("resources.memory_per_device", Rule::Scalar),
    ("model.preset", Rule::Preset),
    ("metric.name", Rule::MetricName),
];

fn rule_at(path: &[Seg]) -> Option<Rule> {
    let here = super::located::dotted(path);
    RULES.iter().find(|(p, _)| *p == here).map(|(_, r)| *r)
}

/// Walks the whole file: the top level must be a mapping of `SweepSpec`'s keys.
pub fn walk_file(yaml: &Yaml, ctx: &mut Ctx) {
    ctx.program = ["program", "command"]
        .iter()
        .any(|k| yaml.get(k).is_some_and(|v| !v.is_null()));
    match yaml {
        Yaml::Mapping(_) => walk_map(yaml, sweep_schema().fields(), &[], ctx),
        Yaml::Null => ctx.file_error(
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
}

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
        ([], "project" | "entity" | "description") => Some(format!(
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

/// How to write a block, for a value that is not a mapping.
fn block_hint(path: &[Seg]) -> Option<String> {
    match path.last() {
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
    }
}

/// An example of a required key, for the message saying it is missing.
fn required_example(key: &str) -> Option<&'static str> {
    match key {
        "name" => Some("`name: my-sweep` (results go to results/<name>/)"),
        "data" => Some("`data: {train: PATH/train.json, dev: PATH/dev.json}`"),
        "parameters" => Some("`parameters: {learning_rate: {values: [1.0e-3, 3.0e-3]}}`"),
        "train" => Some("`train: PATH/train.json`"),
        "dev" => Some("`dev: PATH/dev.json` (the held-out set sweep measures on)"),
        _ => None,
    }
}

/// A YAML value's kind, in words.
pub fn kind(v: &Yaml) -> String {
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

fn names(fields: &[Field]) -> Vec<&'static str> {
    fields.iter().map(|f| f.name).collect()
}

fn walk_map(v: &Yaml, fields: &[Field], path: &[Seg], ctx: &mut Ctx) {
    let known = names(fields);
    let Yaml::Mapping(map) = v else {
        let listed: Vec<String> = known.iter().map(|n| format!("`{n}`")).collect();
        ctx.error(
            path,
            Target::Key,
            format!(
                "expected a mapping with {}, got {}",
                listed.join(", "),
                kind(v)
            ),
            block_hint(path),
        );
        return;
    };
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
        match fields.iter().find(|f| f.name == name) {
            None => {
                let hint = foreign_key_hint(path, name)
                    .or_else(|| Some(format!("known keys here: {}", known.join(", "))));
                ctx.error(
                    &here,
                    Target::Key,
                    format!(
                        "unknown key `{name}`{}",
                        crate::util::suggest::suffix(name, &known)
                    ),
                    hint,
                );
            }
            Some(field) => walk_value(value, field, &here, ctx),
        }
    }
    for field in fields.iter().filter(|f| f.required) {
        if map.get(field.name).is_none() {
            // Placed at the mapping that lacks it (1:1 for the top level), named in full.
            let missing = with(path, Seg::Key(field.name.into()));
            ctx.error(
                &missing,
                Target::Key,
                format!("missing `{}`", field.name),
                required_example(field.name).map(|e| format!("add {e}")),
            );
        }
    }
}

fn walk_value(v: &Yaml, field: &Field, path: &[Seg], ctx: &mut Ctx) {
    if matches!(v, Yaml::Null) {
        if !field.nullable {
            ctx.error(
                path,
                Target::Key,
                format!("`{}` is empty", field.name),
                Some(if field.required {
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
    match rule_at(path) {
        Some(Rule::Parameters) => walk_parameters(v, path, ctx),
        Some(Rule::Devices) => check_devices(v, path, ctx),
        Some(Rule::Scalar) => check_scalar(v, path, ctx),
        Some(Rule::Preset) => check_one_of(v, &crate::spec::shape::PRESET_NAMES, path, ctx),
        Some(Rule::MetricName) if ctx.program => check_scalar(v, path, ctx),
        Some(Rule::MetricName) => check_one_of(v, variants::<crate::spec::Metric>(), path, ctx),
        None => check_kind(v, &field.kind, path, ctx),
    }
}

/// A value against the kind the spec's type gives it.
fn check_kind(v: &Yaml, expected: &Kind, path: &[Seg], ctx: &mut Ctx) {
    match expected {
        Kind::Block(fields) => walk_map(v, fields, path, ctx),
        Kind::OneOf(words) => check_one_of(v, words, path, ctx),
        Kind::Count => check_count(v, path, ctx),
        Kind::Integer | Kind::Number | Kind::Flag | Kind::Text => check_scalar(v, path, ctx),
        Kind::List(item) => check_list(v, item, path, ctx),
        Kind::Named(item) => match v {
            Yaml::Mapping(map) => {
                for (k, value) in map {
                    match k.as_str() {
                        Some(name) => {
                            check_kind(value, item, &with(path, Seg::Key(name.into())), ctx)
                        }
                        None => ctx.error(
                            path,
                            Target::Key,
                            format!("keys must be names, got {}", kind(k)),
                            None,
                        ),
                    }
                }
            }
            other => ctx.error(
                path,
                Target::Key,
                format!("expected a mapping, got {}", kind(other)),
                None,
            ),
        },
        // Only the typed parse knows; it reports with a position too.
        Kind::Any => {}
    }
}

/// Any scalar, as the typed parser reads strings (a number or `true` is text too).
fn check_scalar(v: &Yaml, path: &[Seg], ctx: &mut Ctx) {
    if !matches!(v, Yaml::String(_) | Yaml::Number(_) | Yaml::Bool(_)) {
        ctx.error(
            path,
            Target::Key,
            format!("expected a string, got {}", kind(v)),
            None,
        );
    }
}

fn check_one_of(v: &Yaml, options: &[&str], path: &[Seg], ctx: &mut Ctx) {
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

fn check_list(v: &Yaml, item: &Kind, path: &[Seg], ctx: &mut Ctx) {
    let Yaml::Sequence(items) = v else {
        ctx.error(
            path,
            Target::Value,
            format!("expected a list of strings, got {}", kind(v)),
            Some("e.g. [\"--constraint=a100\"]".into()),
        );
        return;
    };
    for (i, value) in items.iter().enumerate() {
        let at = with(path, Seg::Index(i));
        match item {
            Kind::Text if !matches!(value, Yaml::String(_)) => ctx.error(
                &at,
                Target::Value,
                format!("expected a string, got {}", kind(value)),
                Some("quote it: each item is one argument".into()),
            ),
            Kind::Text => {}
            other => check_kind(value, other, &at, ctx),
        }
    }
}

fn check_devices(v: &Yaml, path: &[Seg], ctx: &mut Ctx) {
    let named = variants::<DeviceKind>();
    match v {
        Yaml::String(s) if named.contains(&s.as_str()) => {}
        Yaml::Sequence(ids) => {
            for (i, id) in ids.iter().enumerate() {
                check_count(id, &with(path, Seg::Index(i)), ctx);
            }
        }
        other => {
            let listed: Vec<String> = named.iter().map(|n| format!("`{n}`")).collect();
            ctx.error(
                path,
                Target::Value,
                format!(
                    "expected {} or a list of device ids, got {}{}",
                    listed.join(", "),
                    kind(other),
                    other
                        .as_str()
                        .map(|s| crate::util::suggest::suffix(s, named))
                        .unwrap_or_default()
                ),
                None,
            )
        }
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

/// The search space's keys (`ParamSpec`), from the schema.
fn search_space() -> &'static [Field] {
    match sweep_schema().field("parameters").map(|f| &f.kind) {
        Some(Kind::Named(space)) => space.fields(),
        _ => &[],
    }
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
        if !ctx.program && !known.contains(&name) {
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
        walk_search_space(name, spec, &here, ctx);
    }
}

/// One parameter's `{value | values | distribution, min, max, q, probabilities}`.
fn walk_search_space(name: &str, spec: &Yaml, path: &[Seg], ctx: &mut Ctx) {
    let Yaml::Mapping(entries) = spec else {
        let shown = match spec {
            Yaml::Sequence(_) => {
                format!("`{name}: {{values: [...]}}` for a list of values to search")
            }
            _ => format!(
                "`{name}: {{value: X}}` for one value, or `{{values: [X, Y]}}` to search several"
            ),
        };
        ctx.error(
            path,
            Target::Value,
            format!(
                "expected a search space like {{value: ...}} or {{values: [...]}}, got {}",
                kind(spec)
            ),
            Some(format!("write {shown} (W&B sweep syntax)")),
        );
        return;
    };
    let fields = search_space();
    let keys = names(fields);
    for (fk, fv) in entries {
        let Some(key) = fk.as_str() else {
            ctx.error(
                path,
                Target::Key,
                format!("keys must be names, got {}", kind(fk)),
                None,
            );
            continue;
        };
        let at = with(path, Seg::Key(key.to_string()));
        if key == "parameters" && ctx.program {
            // W&B's nested parameters: a block of search spaces of their own.
            walk_parameters(fv, &at, ctx);
            continue;
        }
        match fields.iter().find(|f| f.name == key) {
            Some(field) => check_search_field(field, fv, &at, ctx),
            None => ctx.error(
                &at,
                Target::Key,
                format!(
                    "unknown key `{key}`{}",
                    crate::util::suggest::suffix(key, &keys)
                ),
                Some(format!("a search space takes: {}", keys.join(", "))),
            ),
        }
    }
}

/// A key of a search space, by the kind its `ParamSpec` field has.
fn check_search_field(field: &Field, v: &Yaml, path: &[Seg], ctx: &mut Ctx) {
    let number = |v: &Yaml| matches!(v, Yaml::Number(_));
    match &field.kind {
        Kind::List(item) => {
            let Yaml::Sequence(items) = v else {
                let hint = (field.name == "values").then(|| {
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
            for (i, value) in items.iter().enumerate() {
                let at = with(path, Seg::Index(i));
                if **item == Kind::Number && !number(value) {
                    ctx.error(
                        &at,
                        Target::Value,
                        format!("expected a number, got {}", kind(value)),
                        None,
                    );
                } else {
                    check_json_like(value, &at, ctx);
                }
            }
        }
        Kind::Number => {
            if !number(v) {
                ctx.error(
                    path,
                    Target::Value,
                    format!("expected a number, got {}", kind(v)),
                    None,
                );
            }
        }
        Kind::Text => {
            if !matches!(v, Yaml::String(_)) {
                ctx.error(
                    path,
                    Target::Value,
                    format!("expected a distribution name, got {}", kind(v)),
                    Some(format!("one of: {}", Distribution::names().join(", "))),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every dotted path of the schema with its field, blocks first.
    fn all_fields(kind: &Kind, prefix: &str, out: &mut Vec<(String, Field)>) {
        for f in kind.fields() {
            let path = if prefix.is_empty() {
                f.name.to_string()
            } else {
                format!("{prefix}.{}", f.name)
            };
            out.push((path.clone(), f.clone()));
            all_fields(&f.kind, &path, out);
        }
    }

    #[test]
    fn every_rule_names_a_key_of_the_spec_and_every_untyped_key_has_a_rule() {
        let mut fields = Vec::new();
        all_fields(sweep_schema(), "", &mut fields);
        for (path, _) in RULES {
            assert!(
                fields.iter().any(|(p, _)| p == path),
                "rule for `{path}`, which SweepSpec does not have"
            );
        }
        for (path, field) in &fields {
            let checked = RULES.iter().any(|(p, _)| p == path);
            assert!(
                checked || field.kind != Kind::Any,
                "`{path}` takes any value: give it a rule in RULES"
            );
        }
    }
}
