//! The sweep file: YAML syntax, the keys and their types (with did-you-mean), impossible values,
//! the grid, every trial's parameters. (What it names on disk is `named`'s; reading the file is
//! `sweep_file`'s.)
//!
//! The file is parsed to a YAML value first, so that one pass (`walk`, on the spec's own
//! schema) can report every unknown key and wrong type with its line and column; only then is
//! it read into the typed `SweepSpec`, whose own checks (`SweepSpec::field_problems`,
//! `Domain::from_spec`, `search::assignments`, `TrialParams::check_assignment`) are reused here
//! rather than written twice. Every problem is placed (`located`): at its node, at the block
//! that lacks a missing key, or at 1:1.

use std::collections::BTreeMap;

use yaml_serde::Value as Yaml;

use super::located::{with, Ctx};
use super::walk::walk_file;
use super::yaml::{locate, strip_position, Seg, Target};
use super::{CheckReport, Problem, Severity};
use crate::spec::params::TrialParams;
use crate::spec::search::{assignments, grid_size};
use crate::spec::{Domain, SearchMethod, SpecError, SweepSpec};

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

/// Checks a sweep file's text: syntax, keys, types, values, the grid and every trial. Touches
/// no file, so it is fuzzed directly.
pub fn check_spec_source(text: &str, file: &str, report: &mut CheckReport) -> SpecCheck {
    check_spec_source_counted(text, file, None, report)
}

/// [`check_spec_source`] for `sweep run FILE --count N`: at most `count` trials (the file's
/// `run_cap`, when smaller, stays), as `wandb agent --count` runs at most N.
pub fn check_spec_source_counted(
    text: &str,
    file: &str,
    count: Option<usize>,
    report: &mut CheckReport,
) -> SpecCheck {
    let mut out = SpecCheck::default();
    let Some(yaml) = parse_yaml(text, file, report) else {
        return out;
    };
    let mut ctx = Ctx::new(text, file, report);
    walk_file(&yaml, &mut ctx);
    let walk_errors = ctx.errors;
    out.yaml = Some(yaml);
    if walk_errors > 0 {
        return out;
    }
    let spec: SweepSpec = match SweepSpec::parse(text, file) {
        Ok(spec) => spec.with_count(count),
        Err(e) => {
            // The walk above should have said it; this is the safety net.
            let at = e.location();
            ctx.errors += 1;
            ctx.report
                .push(Problem::error(file, strip_position(&e.to_string())).at(
                    Some(at.as_ref().map_or(1, |l| l.line())),
                    Some(at.as_ref().map_or(1, |l| l.column())),
                ));
            return out;
        }
    };
    let problems = spec.field_problems();
    report_field_problems(&problems, out.yaml.as_ref(), &mut ctx);
    if problems.is_empty() {
        out.trials = check_trials(&spec, &mut ctx);
        if ctx.errors == 0 {
            out.spec = Some(spec);
        }
    }
    out
}

/// The text as YAML, or its syntax error (reported, with position and a hint).
fn parse_yaml(text: &str, file: &str, report: &mut CheckReport) -> Option<Yaml> {
    match yaml_serde::from_str(text) {
        Ok(v) => Some(v),
        Err(e) => {
            let at = e.location();
            let line = at.as_ref().map_or(1, |l| l.line());
            let tab = text
                .lines()
                .nth(line.saturating_sub(1))
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
                .at(Some(line), Some(at.as_ref().map_or(1, |l| l.column())))
                .hint(hint),
            );
            None
        }
    }
}

/// The typed spec's value problems, each at its field: the value when it is written, else the
/// block that lacks it (random search without `run_cap` points at `method`, which asks for it).
fn report_field_problems(problems: &[(String, String)], yaml: Option<&Yaml>, ctx: &mut Ctx) {
    for (field, message) in problems {
        let path = Seg::parse_path(field);
        let present = locate(ctx.text, &path, Target::Key).is_some();
        let (at, target) = match field.as_str() {
            "run_cap" if !present => (vec![Seg::Key("method".into())], Target::Value),
            _ => (path.clone(), value_or_key(yaml, &path)),
        };
        let mut p = Problem::error(ctx.file, message.clone()).field(field.clone());
        if field == "run_cap" && !present {
            p = p.hint("add e.g. `run_cap: 20`");
        }
        ctx.push_at(p, &at, target);
    }
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
    if spec.is_program() {
        // The parameters are the program's own: only `gpus` means something to sweep.
        check_program_trials(spec, &list, ctx);
        return Vec::new();
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

/// A program sweep's trials: `gpus` a count of devices the pool can hold, and the pool itself.
fn check_program_trials(spec: &SweepSpec, list: &[crate::spec::search::Assignment], ctx: &mut Ctx) {
    let gpus = crate::plan::program::GPUS;
    let bad = list.iter().find_map(|a| {
        a.get(gpus)
            .filter(|v| v.as_u64().is_none_or(|n| n == 0))
            .cloned()
    });
    if let Some(v) = bad {
        ctx.error(
            &[Seg::Key("parameters".into()), Seg::Key(gpus.into())],
            Target::Key,
            format!("gpus is the number of devices a trial holds: a whole number of at least 1, got {v}"),
            None,
        );
    }
    if let Err(e) = crate::plan::Pool::from_spec(spec, 1) {
        let path: Vec<Seg> = e.field.split('.').map(|k| Seg::Key(k.into())).collect();
        ctx.error(&path, Target::Value, e.message, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::schema::Kind;
    use crate::spec::ConflictPolicy;

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
                    .unwrap()
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
    fn an_empty_label_separator_is_refused_where_it_is_written() {
        let ok = "name: t\ndata: {train: a, dev: b, label_separator: \"/\"}\nparameters: {epochs: {value: 1}}\n";
        assert_eq!(
            SweepSpec::from_yaml(ok, "s.yaml")
                .unwrap()
                .label_separator(),
            Some("/")
        );
        assert!(!check(ok).contains("error"), "{}", check(ok));
        let out = check("name: t\ndata:\n  train: a\n  dev: b\n  label_separator: \"\"\nparameters: {epochs: {value: 1}}\n");
        assert!(
            out.contains("s.yaml:5:20: error: data.label_separator: must not be empty"),
            "{out}"
        );
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

    /// A spec with every field given (every `Option` is `Some`), at every level.
    fn full_spec() -> SweepSpec {
        use crate::spec::*;
        let leaf = ParamSpec {
            value: Some(serde_json::json!(1)),
            values: Some(vec![serde_json::json!(1)]),
            distribution: Some("categorical".into()),
            min: Some(0.0),
            max: Some(1.0),
            q: Some(1.0),
            probabilities: Some(vec![1.0]),
            parameters: Some(BTreeMap::new()),
        };
        let param = ParamSpec {
            parameters: Some(BTreeMap::from([("inner".to_string(), leaf.clone())])),
            ..leaf
        };
        SweepSpec {
            name: "t".into(),
            data: Some(DataSpec {
                train: "a".into(),
                dev: "b".into(),
                test: Some("c".into()),
                conflicts: ConflictPolicy::Error,
                label_separator: Some("/".into()),
                system_prompt: SystemPrompt::Drop,
            }),
            program: Some("train.py".into()),
            command: Some(vec![serde_json::json!("${program}")]),
            oom_batch: Some(OomBatch {
                per_device: "batch_size".into(),
                accumulate: Some("accum".into()),
            }),
            nested: Default::default(),
            model: ModelSpec {
                preset: Some("tiny".into()),
                path: Some("m".into()),
            },
            method: SearchMethod::Bayes,
            run_cap: Some(2),
            seed: 3,
            metric: MetricSpec {
                name: MetricName::Builtin(Metric::DevLoss),
                goal: Some(Goal::Minimize),
                target: Some(0.5),
            },
            parameters: BTreeMap::from([("epochs".to_string(), param)]),
            resources: ResourcesSpec {
                devices: Some(DevicesSpec::Named(DeviceKind::Cpu)),
                slots: Some(1),
                parallel: Some(1),
                memory_per_device: Some(MemorySize::Text("1GiB".into())),
                executor: Some(ExecutorKind::Slurm),
                partition: Some("p".into()),
                time: Some("10".into()),
                account: Some("a".into()),
                qos: Some("q".into()),
                sbatch_args: Some(vec!["--exclusive".into()]),
            },
            output: Some("out".into()),
            checkpoints: Some(CheckpointPolicy { keep: 1 }),
            on_oom: OnOom::Skip,
            early_terminate: Some(EarlyTerminate {
                kind: EarlyTerminateKind::Hyperband,
                min_iter: Some(1),
                max_iter: Some(4),
                s: Some(1),
                eta: Some(2.0),
                strict: Some(true),
                metric: Some(Metric::Accuracy),
            }),
        }
    }

    /// The keys of a serialized value and of the schema, level by level, must be the same.
    fn same_keys(written: &Yaml, kind: &Kind, at: &str) {
        match (written, kind) {
            (Yaml::Mapping(map), Kind::Block(fields)) => {
                let mut keys: Vec<&str> = map.keys().filter_map(|k| k.as_str()).collect();
                let mut known: Vec<&str> = fields.iter().map(|f| f.name).collect();
                keys.sort();
                known.sort();
                assert_eq!(keys, known, "the keys of `{at}`");
                for f in fields {
                    let inner = &map[f.name];
                    same_keys(inner, &f.kind, &format!("{at}.{}", f.name));
                }
            }
            (Yaml::Mapping(map), Kind::Named(item)) => {
                for (k, v) in map {
                    same_keys(v, item, &format!("{at}.{}", k.as_str().unwrap_or("?")));
                }
            }
            (_, Kind::Block(_)) => panic!("`{at}` is a block in the schema but not written as one"),
            _ => {}
        }
    }

    #[test]
    fn every_field_of_every_spec_type_is_known_to_the_checker_and_the_other_way_round() {
        // Serializing writes every field of a full spec; the checker's schema is read from the
        // types' Deserialize. The two sides must name the same keys at every level, and the
        // file must pass the key walk.
        let spec = full_spec();
        let text = yaml_serde::to_string(&spec).unwrap();
        let written: Yaml = yaml_serde::from_str(&text).unwrap();
        same_keys(&written, super::super::walk::sweep_schema(), "top");
        let mut report = CheckReport::default();
        let mut ctx = Ctx::new(&text, "s.yaml", &mut report);
        walk_file(&written, &mut ctx);
        assert_eq!(ctx.errors, 0, "{text}\n{}", report.render());
        assert_eq!(yaml_serde::from_str::<SweepSpec>(&text).unwrap(), spec);
    }

    #[test]
    fn a_sweep_file_that_is_a_list_is_refused_at_its_place() {
        let out = check("- name: t\n- data: {train: a, dev: b}\n");
        assert!(
            out.contains("s.yaml:1:1: error: expected a mapping of keys"),
            "{out}"
        );
        let out = check("# my sweep\n\n- name: t\n");
        assert!(
            out.contains("s.yaml:3:1: error: expected a mapping of keys"),
            "{out}"
        );
        let out = check("# nothing yet\n");
        assert!(
            out.contains("s.yaml:1:1: error: the sweep file is empty"),
            "{out}"
        );
    }

    #[test]
    fn a_missing_key_is_refused_at_the_block_that_lacks_it() {
        let out = check(
            "name: t\ndata: {train: a, dev: b}\nparameters: {epochs: {value: 1}}\nearly_terminate: {type: hyperband}\n",
        );
        assert!(
            out.contains(
                "s.yaml:4:1: error: early_terminate.min_iter: give min_iter, or max_iter with s"
            ),
            "{out}"
        );
        let out = check("name: t\nparameters: {}\ndata:\n  train: a\n");
        assert!(
            out.contains("s.yaml:3:1: error: data.dev: missing `dev`"),
            "{out}"
        );
        let out = check("name: t\ndata: {train: a, dev: b}\n");
        assert!(
            out.contains("s.yaml:1:1: error: parameters: missing `parameters`"),
            "{out}"
        );
    }

    #[test]
    fn every_error_of_a_sweep_file_names_a_line_and_column() {
        for text in [
            "",
            "[]",
            "- a\n",
            "just words\n",
            "name: t\n",
            "name: [t]\ndata: 3\nparameters: []\n",
            "name: t\ndata: {train: a, dev: b, conflicts: ~}\nparameters: {}\nmodel: ~\n",
            "name: t\ndata: {train: a, dev: b}\nparameters: {epochs: {value: 1}}\nearly_terminate: {type: hyperband}\n",
            "name: t\ndata: {train: a, dev: b}\nparameters: {epochs: {value: 1}}\nearly_terminate: {type: hyperband, max_iter: 9}\n",
            "name: t\ndata: {train: a, dev: b}\nmethod: random\nparameters: {epochs: {value: 1}}\n",
            "name: t\ndata: {train: a, dev: b}\nparameters: {epochs: {value: 1}}\ncheckpoints: {}\n",
            "name: t\ndata: {train: a, dev: b}\nparameters: {epochs: {value: 1}}\nresources: {executor: slurm, time: 1h, slots: 2}\n",
            "name: t\ndata: {train: a, dev: b}\nparameters: {epochs: {min: 3, max: 1}, lr: {value: 1}}\n",
            "name: t\ndata: {train: a, dev: b}\nparameters: {batch_size: {values: [0, 2]}}\n",
            "name: ../x\ndata: {train: a, dev: b}\nparameters: {epochs: {value: 1}}\nmetric: {target: .inf}\n",
            "name: t\ndata: {train: a, dev: b}\nparameters: {epochs: {value: 1}}\nresources: {devices: [0], executor: slurm}\n",
            "{a: [}\n",
        ] {
            let mut report = CheckReport::default();
            check_spec_source(text, "s.yaml", &mut report);
            assert!(report.has_errors(), "no error for {text:?}");
            for p in report.problems.iter().filter(|p| p.severity == Severity::Error) {
                assert!(
                    p.line.is_some() && p.column.is_some(),
                    "no place for `{p}` in {text:?}"
                );
            }
        }
    }
}
