//! A user's own training program, as W&B sweep files name it: `program` (a script) and
//! `command` (the argument vector that runs it, with macros). This module is W&B's model of
//! both, read from W&B's agent so that a file written for `wandb agent` runs unchanged:
//!
//! - wandb/wandb `wandb/wandb_agent.py`: `Agent.DEFAULT_SWEEP_COMMAND` and `Agent._command_run`
//!   (an element that is a macro alone, `${name}`, is replaced by a list of arguments;
//!   `${interpreter}` is `python`, `${program}` the sweep's `program`, `${env}` `/usr/bin/env`
//!   except on Windows, `${args_json_file}` a file holding `${args_json}`);
//! - wandb/wandb `wandb/sdk/launch/sweeps/utils.py`: `create_sweep_command` (`${envvar:NAME}`
//!   anywhere in an element, NAME in `[A-Z0-9_]`; an empty or absent `command` is the default)
//!   and `create_sweep_command_args` (`--name=value` with Python's `str(value)`, booleans as
//!   `True`/`False`, false booleans left out of `${args_no_boolean_flags}` and true ones bare
//!   `--name`, `${args_json}` as `json.dumps`, the hydra forms `+name=value`/`++name=value`,
//!   `${args_no_equals}` as `--name value`);
//! - its tests, `tests/system_tests/test_sweep/test_wandb_agent.py`, mirrored below;
//! - wandb/sweeps `src/sweeps/params.py`: parameters in sorted order, nested `parameters:`
//!   given to the program as one dict per top-level name.
//!
//! Where sweep differs, and why (each is also said where it happens):
//! - An unknown macro, a macro inside a longer element (`--cfg=${args_json_file}`), an
//!   unclosed `${` or a malformed `${envvar:...}` is refused when the file is checked. W&B
//!   silently drops an unknown whole-element macro and passes the others through literally,
//!   which runs the program with arguments nobody meant.
//! - `${envvar:NAME}` of an unset variable is an error; W&B passes the text `NAME` itself.
//! - `${interpreter}`, and a literal `python` as the command's first word (after `${env}`),
//!   is `python` where a `python` is on PATH and `python3` where only that is (W&B always
//!   runs `python`, which fails on systems that ship only `python3`).
//! - Nested parameters reach `${args}` and its kin as dotted names by default
//!   (`--optimizer.lr=0.001`, as Hydra and most argument parsers take them); W&B writes one
//!   `--optimizer={'lr': 0.001}` (a Python dict's text), available as [`NestedArgs::WandbDict`].
//!   `${args_json}` and the parameter files keep the nesting, as W&B does.
//! - W&B's `${args_dict}` (an internal dict the agent would splice in as its keys) is refused.

pub mod python;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::Path;

use serde_json::Value;

use crate::util::suggest;

/// W&B's command when a sweep file has none (`Agent.DEFAULT_SWEEP_COMMAND`).
pub const DEFAULT_COMMAND: [&str; 4] = ["${env}", "${interpreter}", "${program}", "${args}"];

/// What `${env}` stands for on Unix, as in W&B.
pub const ENV_PROGRAM: &str = "/usr/bin/env";

/// What W&B's `${interpreter}` always is.
pub const WANDB_INTERPRETER: &str = "python";

/// The interpreter sweep falls back to where no `python` is on PATH.
pub const PYTHON3: &str = "python3";

/// A macro that stands for a whole element of the command: replaced by zero or more arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Macro {
    /// `/usr/bin/env`.
    Env,
    /// `python`, or `python3` where there is no `python` (see [`resolve_interpreter`]).
    Interpreter,
    /// The sweep file's `program`.
    Program,
    /// `--name=value` per parameter.
    Args,
    /// `--name`, `value` per parameter (two arguments).
    ArgsNoEquals,
    /// `name=value` per parameter (Hydra's override syntax).
    ArgsNoHyphens,
    /// As `Args`, but a true boolean is a bare `--name` and a false one is left out.
    ArgsNoBooleanFlags,
    /// One argument: every parameter as one JSON object.
    ArgsJson,
    /// One argument: the path of a file holding `ArgsJson`'s text.
    ArgsJsonFile,
    /// `+name=value` per parameter (Hydra: append to the config).
    ArgsAppendHydra,
    /// `++name=value` per parameter (Hydra: append or override).
    ArgsOverrideHydra,
}

impl Macro {
    pub const ALL: [Macro; 11] = [
        Macro::Env,
        Macro::Interpreter,
        Macro::Program,
        Macro::Args,
        Macro::ArgsNoEquals,
        Macro::ArgsNoHyphens,
        Macro::ArgsNoBooleanFlags,
        Macro::ArgsJson,
        Macro::ArgsJsonFile,
        Macro::ArgsAppendHydra,
        Macro::ArgsOverrideHydra,
    ];

    /// The name between `${` and `}`, as W&B spells it.
    pub fn name(self) -> &'static str {
        match self {
            Macro::Env => "env",
            Macro::Interpreter => "interpreter",
            Macro::Program => "program",
            Macro::Args => "args",
            Macro::ArgsNoEquals => "args_no_equals",
            Macro::ArgsNoHyphens => "args_no_hyphens",
            Macro::ArgsNoBooleanFlags => "args_no_boolean_flags",
            Macro::ArgsJson => "args_json",
            Macro::ArgsJsonFile => "args_json_file",
            Macro::ArgsAppendHydra => "args_append_hydra",
            Macro::ArgsOverrideHydra => "args_override_hydra",
        }
    }

    pub fn from_name(name: &str) -> Option<Macro> {
        Macro::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Part of a literal element: text, or `${envvar:NAME}` (replaced by the variable's value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    EnvVar(String),
}

/// One element of a command: a whole-element macro, or literal text (possibly with
/// `${envvar:NAME}` inside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Element {
    Macro(Macro),
    Literal(Vec<Piece>),
}

/// A checked `command`: every element a known macro or a literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTemplate {
    elements: Vec<Element>,
}

/// Why an element of `command` is refused; `index` counts from 0, as in `command[0]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("command[{index}]: unknown macro `${{{name}}}`{}", hint(name))]
    UnknownMacro { index: usize, name: String },
    #[error(
        "command[{index}]: `${{{name}}}` must be an element of its own: W&B replaces a macro only \
         when it is the whole element, and would pass this text as it is"
    )]
    EmbeddedMacro { index: usize, name: String },
    #[error(
        "command[{index}]: `${{args_dict}}` is W&B's internal form of the parameters, not an \
         argument list; use `${{args_json}}` or `${{args_json_file}}`"
    )]
    ArgsDict { index: usize },
    #[error(
        "command[{index}]: `${{envvar:{name}}}`: an environment variable's name is upper-case \
         letters, digits and `_` (W&B recognises no other)"
    )]
    EnvVarName { index: usize, name: String },
    #[error("command[{index}]: `${{` without its closing `}}`")]
    Unclosed { index: usize },
    #[error("command[{index}]: a {found} where a string, number or boolean was expected")]
    NotScalar { index: usize, found: &'static str },
}

impl TemplateError {
    /// The element at fault (`command[index]`).
    pub fn index(&self) -> usize {
        match self {
            TemplateError::UnknownMacro { index, .. }
            | TemplateError::EmbeddedMacro { index, .. }
            | TemplateError::ArgsDict { index }
            | TemplateError::EnvVarName { index, .. }
            | TemplateError::Unclosed { index }
            | TemplateError::NotScalar { index, .. } => *index,
        }
    }

    /// The message without its `command[i]: ` prefix.
    pub fn reason(&self) -> String {
        let text = self.to_string();
        match text.split_once(": ") {
            Some((_, rest)) => rest.to_string(),
            None => text,
        }
    }
}

/// " (did you mean `${args}`?)", or W&B's list of macros.
fn hint(name: &str) -> String {
    let mut known: Vec<&str> = Macro::ALL.iter().map(|m| m.name()).collect();
    known.push("envvar:NAME");
    match suggest::did_you_mean(name, &known) {
        Some(k) => format!(" (did you mean `${{{k}}}`?)"),
        None => format!(
            " (W&B's macros: {})",
            known
                .iter()
                .map(|k| format!("${{{k}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl CommandTemplate {
    /// W&B's default command, `${env} ${interpreter} ${program} ${args}`.
    pub fn default_command() -> Self {
        Self::parse(&DEFAULT_COMMAND[..]).unwrap_or_else(|_| unreachable!("the default parses"))
    }

    /// Checks a `command`'s elements. An empty list is the default command, as in W&B
    /// (`command or DEFAULT_SWEEP_COMMAND`).
    pub fn parse<S: AsRef<str>>(elements: &[S]) -> Result<Self, TemplateError> {
        if elements.is_empty() {
            return Ok(Self::default_command());
        }
        let elements = elements
            .iter()
            .enumerate()
            .map(|(index, e)| parse_element(index, e.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(CommandTemplate { elements })
    }

    /// [`CommandTemplate::parse`] of the YAML list as read: numbers and booleans become text as
    /// W&B's `str(element)` makes them (`3`, `0.5`, `True`); a list or a map is refused.
    pub fn from_yaml(elements: &[Value]) -> Result<Self, TemplateError> {
        let texts = elements
            .iter()
            .enumerate()
            .map(|(index, v)| match v {
                Value::Array(_) => Err(TemplateError::NotScalar {
                    index,
                    found: "list",
                }),
                Value::Object(_) => Err(TemplateError::NotScalar {
                    index,
                    found: "map",
                }),
                other => Ok(python::str_of(other)),
            })
            .collect::<Result<Vec<String>, _>>()?;
        Self::parse(&texts)
    }

    pub fn elements(&self) -> &[Element] {
        &self.elements
    }

    /// Whether the command uses `m` (`${program}`: the program must exist; `${args_json_file}`:
    /// its file must be written before the start).
    pub fn uses(&self, m: Macro) -> bool {
        self.elements.contains(&Element::Macro(m))
    }

    /// The environment variables the command reads through `${envvar:NAME}`, in order.
    pub fn env_vars(&self) -> Vec<&str> {
        self.elements
            .iter()
            .filter_map(|e| match e {
                Element::Literal(pieces) => Some(pieces),
                Element::Macro(_) => None,
            })
            .flatten()
            .filter_map(|p| match p {
                Piece::EnvVar(name) => Some(name.as_str()),
                Piece::Text(_) => None,
            })
            .collect()
    }

    /// The element that names the executable, with its index: a literal's text (`${envvar:..}`
    /// inside left out), or the macro.
    pub fn executable(&self) -> Option<(usize, &Element)> {
        let i = self.executable_index();
        self.elements.get(i).map(|e| (i, e))
    }

    /// The index of the element that names the executable: the first, or the second after
    /// `${env}` or a literal `/usr/bin/env`.
    fn executable_index(&self) -> usize {
        match self.elements.first() {
            Some(Element::Macro(Macro::Env)) => 1,
            Some(Element::Literal(p)) if matches!(p.as_slice(), [Piece::Text(t)] if t == ENV_PROGRAM) => {
                1
            }
            _ => 0,
        }
    }
}

fn parse_element(index: usize, text: &str) -> Result<Element, TemplateError> {
    // W&B: `c.startswith("${") and c.endswith("}")` is a macro standing for the whole element.
    if let Some(name) = text.strip_prefix("${").and_then(|t| t.strip_suffix('}')) {
        if !name.contains(['$', '{', '}']) && !name.starts_with("envvar:") {
            return match Macro::from_name(name) {
                Some(m) => Ok(Element::Macro(m)),
                None if name == "args_dict" => Err(TemplateError::ArgsDict { index }),
                None => Err(TemplateError::UnknownMacro {
                    index,
                    name: name.into(),
                }),
            };
        }
    }
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].into()));
        }
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(TemplateError::Unclosed { index })?;
        let name = &after[..end];
        pieces.push(embedded(index, name)?);
        rest = &after[end + 1..];
    }
    if !rest.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(rest.into()));
    }
    Ok(Element::Literal(pieces))
}

/// `${name}` inside a longer element: only `${envvar:NAME}` may be there.
fn embedded(index: usize, name: &str) -> Result<Piece, TemplateError> {
    if let Some(var) = name.strip_prefix("envvar:") {
        let valid = !var.is_empty()
            && var
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        return if valid {
            Ok(Piece::EnvVar(var.into()))
        } else {
            Err(TemplateError::EnvVarName {
                index,
                name: var.into(),
            })
        };
    }
    if Macro::from_name(name).is_some() || name == "args_dict" {
        Err(TemplateError::EmbeddedMacro {
            index,
            name: name.into(),
        })
    } else {
        Err(TemplateError::UnknownMacro {
            index,
            name: name.into(),
        })
    }
}

/// How nested parameters (a parameter whose value is a map) reach the `${args}` family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NestedArgs {
    /// One flag per leaf, dotted: `--optimizer.lr=0.001 --optimizer.nadam.beta=0.9` (sweep's
    /// default: what Hydra, OmegaConf and jsonargparse read).
    #[default]
    Dotted,
    /// One flag per top-level name with the dict's Python text, as W&B's agent writes it:
    /// `--optimizer={'lr': 0.001, 'nadam': {'beta': 0.9}}`.
    WandbDict,
}

/// Everything a command's macros stand for, for one trial.
pub struct ProgramContext<'a> {
    /// The sweep file's `program`, as `${program}` passes it.
    pub program: &'a Path,
    /// What `${interpreter}` (and a leading literal `python`) becomes: [`resolve_interpreter`].
    pub interpreter: &'a OsStr,
    /// The trial's parameters by name (sorted, as W&B's sweep library orders them); a value
    /// that is a map is a nested parameter.
    pub params: &'a BTreeMap<String, Value>,
    /// The path `${args_json_file}` passes; the caller writes [`args_json`] there.
    pub args_json_file: &'a Path,
    pub nested: NestedArgs,
    /// The environment `${envvar:NAME}` reads.
    pub env: &'a dyn Fn(&str) -> Option<OsString>,
}

/// An argument vector that cannot be made for this trial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgvError {
    #[error(
        "command[{index}]: `${{envvar:{name}}}`: the environment variable {name} is not set \
         (W&B would pass the text `{name}` instead)"
    )]
    MissingEnvVar { index: usize, name: String },
}

/// The argument vector that runs one trial, exactly as W&B's agent builds it (but for the
/// differences in this module's documentation). Never a shell string: each element is one
/// argument, spaces and quotes included.
pub fn argv(
    template: &CommandTemplate,
    ctx: &ProgramContext<'_>,
) -> Result<Vec<OsString>, ArgvError> {
    let executable = template.executable_index();
    let mut out = Vec::new();
    for (index, element) in template.elements.iter().enumerate() {
        match element {
            Element::Macro(m) => out.extend(expand(*m, ctx)),
            Element::Literal(pieces) if index == executable && is_python(pieces) => {
                out.push(ctx.interpreter.to_os_string())
            }
            Element::Literal(pieces) => {
                let mut arg = OsString::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => arg.push(t),
                        Piece::EnvVar(name) => {
                            let value =
                                (ctx.env)(name).ok_or_else(|| ArgvError::MissingEnvVar {
                                    index,
                                    name: name.clone(),
                                })?;
                            arg.push(value);
                        }
                    }
                }
                out.push(arg);
            }
        }
    }
    Ok(out)
}

fn is_python(pieces: &[Piece]) -> bool {
    matches!(pieces, [Piece::Text(t)] if t == WANDB_INTERPRETER)
}

/// The arguments one macro stands for.
pub fn expand(m: Macro, ctx: &ProgramContext<'_>) -> Vec<OsString> {
    let flags = || flags(ctx.params, ctx.nested);
    let each = |f: &dyn Fn(&str, &Value) -> String| -> Vec<OsString> {
        flags()
            .iter()
            .map(|(name, value)| OsString::from(f(name, value)))
            .collect()
    };
    match m {
        Macro::Env => vec![ENV_PROGRAM.into()],
        Macro::Interpreter => vec![ctx.interpreter.to_os_string()],
        Macro::Program => vec![ctx.program.as_os_str().to_os_string()],
        Macro::Args => each(&|n, v| format!("--{n}={}", python::str_of(v))),
        Macro::ArgsNoHyphens => each(&|n, v| format!("{n}={}", python::str_of(v))),
        Macro::ArgsAppendHydra => each(&|n, v| format!("+{n}={}", python::str_of(v))),
        Macro::ArgsOverrideHydra => each(&|n, v| format!("++{n}={}", python::str_of(v))),
        Macro::ArgsNoEquals => flags()
            .iter()
            .flat_map(|(n, v)| [format!("--{n}").into(), python::str_of(v).into()])
            .collect(),
        Macro::ArgsNoBooleanFlags => flags()
            .iter()
            .filter_map(|(n, v)| match v {
                Value::Bool(true) => Some(format!("--{n}").into()),
                Value::Bool(false) => None,
                other => Some(format!("--{n}={}", python::str_of(other)).into()),
            })
            .collect(),
        Macro::ArgsJson => vec![args_json(ctx.params).into()],
        Macro::ArgsJsonFile => vec![ctx.args_json_file.as_os_str().to_os_string()],
    }
}

/// The parameters as the `${args}` family names them, in order: top-level names sorted, and
/// with [`NestedArgs::Dotted`] a map's leaves as `outer.inner` (its keys sorted). An empty map
/// stays one flag (`{}`), as there is no leaf to name.
pub fn flags(params: &BTreeMap<String, Value>, nested: NestedArgs) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (name, value) in params {
        match (nested, value) {
            (NestedArgs::Dotted, Value::Object(map)) if !map.is_empty() => {
                dotted(name, map, &mut out)
            }
            _ => out.push((name.clone(), value.clone())),
        }
    }
    out
}

fn dotted(prefix: &str, map: &serde_json::Map<String, Value>, out: &mut Vec<(String, Value)>) {
    for (key, value) in python::sorted(map) {
        let name = format!("{prefix}.{key}");
        match value {
            Value::Object(inner) if !inner.is_empty() => dotted(&name, inner, out),
            other => out.push((name, other.clone())),
        }
    }
}

/// `${args_json}`, and the text of `${args_json_file}`: the parameters as Python's
/// `json.dumps` writes W&B's `flags_dict` (nested parameters stay nested).
pub fn args_json(params: &BTreeMap<String, Value>) -> String {
    python::json_dumps_entries(params)
}

/// What `${interpreter}` runs: `python` where a `python` is on `path_var` (a `PATH` value),
/// else `python3` where that is, else `python` (W&B's choice, so the error names what W&B
/// would have run). `is_executable` answers for a candidate file; pure, so the caller decides
/// what the file system says.
pub fn resolve_interpreter(
    path_var: Option<&OsStr>,
    is_executable: impl Fn(&Path) -> bool,
) -> &'static str {
    let dirs: Vec<_> = path_var
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    let found = |name: &str| dirs.iter().any(|d| is_executable(&d.join(name)));
    if found(WANDB_INTERPRETER) {
        WANDB_INTERPRETER
    } else if found(PYTHON3) {
        PYTHON3
    } else {
        WANDB_INTERPRETER
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn run(command: &[&str], p: &BTreeMap<String, Value>, nested: NestedArgs) -> Vec<String> {
        let template = CommandTemplate::parse(command).unwrap();
        let ctx = ProgramContext {
            program: Path::new("train.py"),
            interpreter: OsStr::new("python3"),
            params: p,
            args_json_file: Path::new("/r/trials/0001/params.json"),
            nested,
            env: &no_env,
        };
        argv(&template, &ctx)
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    /// W&B's own case (tests/system_tests/test_sweep/test_wandb_agent.py,
    /// test_agent_create_command_args): `{a: True, b: False, c: 1, d: None}`.
    fn wandb_case() -> BTreeMap<String, Value> {
        params(json!({"a": true, "b": false, "c": 1, "d": null}))
    }

    #[test]
    fn each_args_macro_matches_wandbs_own_test() {
        let p = wandb_case();
        let d = NestedArgs::Dotted;
        assert_eq!(
            run(&["${args}"], &p, d),
            ["--a=True", "--b=False", "--c=1", "--d=None"]
        );
        assert_eq!(
            run(&["${args_no_hyphens}"], &p, d),
            ["a=True", "b=False", "c=1", "d=None"]
        );
        assert_eq!(
            run(&["${args_no_boolean_flags}"], &p, d),
            ["--a", "--c=1", "--d=None"]
        );
        assert_eq!(
            run(&["${args_json}"], &p, d),
            [r#"{"a": true, "b": false, "c": 1, "d": null}"#]
        );
        assert_eq!(
            run(&["${args_append_hydra}"], &p, d),
            ["+a=True", "+b=False", "+c=1", "+d=None"]
        );
        assert_eq!(
            run(&["${args_override_hydra}"], &p, d),
            ["++a=True", "++b=False", "++c=1", "++d=None"]
        );
        assert_eq!(
            run(&["${args_no_equals}"], &p, d),
            ["--a", "True", "--b", "False", "--c", "1", "--d", "None"]
        );
    }

    #[test]
    fn default_command_is_env_interpreter_program_args() {
        let p = params(json!({"learning_rate": 0.001, "batch_size": 32, "optimizer": "adam"}));
        let want = [
            "/usr/bin/env",
            "python3",
            "train.py",
            "--batch_size=32",
            "--learning_rate=0.001",
            "--optimizer=adam",
        ];
        assert_eq!(run(&DEFAULT_COMMAND, &p, NestedArgs::Dotted), want);
        // An absent or empty `command` is the default, as in W&B.
        assert_eq!(
            CommandTemplate::parse::<&str>(&[]).unwrap(),
            CommandTemplate::default_command()
        );
        assert_eq!(
            CommandTemplate::default_command().elements(),
            [Macro::Env, Macro::Interpreter, Macro::Program, Macro::Args].map(Element::Macro)
        );
    }

    #[test]
    fn values_are_formatted_as_pythons_str() {
        let p = params(json!({
            "lr": 1e-5, "wd": 0.0, "warmup": 0.1, "big": 1e16, "whole": 2.0,
            "layers": [64, 128], "names": ["a", "b"], "text": "one two", "quote": "it's",
        }));
        assert_eq!(
            run(&["${args}"], &p, NestedArgs::Dotted),
            [
                "--big=1e+16",
                "--layers=[64, 128]",
                "--lr=1e-05",
                "--names=['a', 'b']",
                "--quote=it's",
                "--text=one two",
                "--warmup=0.1",
                "--wd=0.0",
                "--whole=2.0",
            ]
        );
    }

    #[test]
    fn nested_parameters_are_dotted_or_wandbs_dict() {
        // W&B's example: wandb/sweeps examples/nested-params/sweep-nested-cli.yaml.
        let p = params(json!({
            "batch_size": 32,
            "optimizer": {"nadam": {"beta": 0.9}, "lr": 0.001},
            "empty": {},
        }));
        assert_eq!(
            run(&["${args}"], &p, NestedArgs::Dotted),
            [
                "--batch_size=32",
                "--empty={}",
                "--optimizer.lr=0.001",
                "--optimizer.nadam.beta=0.9",
            ]
        );
        assert_eq!(
            run(&["${args_no_hyphens}"], &p, NestedArgs::Dotted)[2],
            "optimizer.lr=0.001"
        );
        assert_eq!(
            run(&["${args}"], &p, NestedArgs::WandbDict),
            [
                "--batch_size=32",
                "--empty={}",
                "--optimizer={'lr': 0.001, 'nadam': {'beta': 0.9}}",
            ]
        );
        // JSON keeps the nesting either way.
        assert_eq!(
            run(&["${args_json}"], &p, NestedArgs::Dotted),
            [
                r#"{"batch_size": 32, "empty": {}, "optimizer": {"lr": 0.001, "nadam": {"beta": 0.9}}}"#
            ]
        );
        // Hydra-style names with dots are names like any other.
        let p = params(json!({"model.lr": 0.01, "trainer.max_epochs": 3}));
        assert_eq!(
            run(
                &[
                    "${env}",
                    "${interpreter}",
                    "${program}",
                    "${args_no_hyphens}"
                ],
                &p,
                NestedArgs::Dotted
            ),
            [
                "/usr/bin/env",
                "python3",
                "train.py",
                "model.lr=0.01",
                "trainer.max_epochs=3"
            ]
        );
    }

    #[test]
    fn program_interpreter_env_and_json_file() {
        let p = params(json!({"x": 1}));
        assert_eq!(
            run(
                &[
                    "${env}",
                    "${interpreter}",
                    "${program}",
                    "--config",
                    "${args_json_file}"
                ],
                &p,
                NestedArgs::Dotted
            ),
            [
                "/usr/bin/env",
                "python3",
                "train.py",
                "--config",
                "/r/trials/0001/params.json"
            ]
        );
        // A literal `python` in the executable's place resolves like ${interpreter}; elsewhere
        // it is an ordinary argument.
        assert_eq!(
            run(
                &["${env}", "python", "${program}", "--name", "python"],
                &p,
                NestedArgs::Dotted
            ),
            ["/usr/bin/env", "python3", "train.py", "--name", "python"]
        );
        assert_eq!(
            run(&["python", "-u", "${program}"], &p, NestedArgs::Dotted),
            ["python3", "-u", "train.py"]
        );
        assert_eq!(
            run(&["/usr/bin/env", "python", "t.py"], &p, NestedArgs::Dotted),
            ["/usr/bin/env", "python3", "t.py"]
        );
        assert_eq!(
            run(&["python3.11", "t.py"], &p, NestedArgs::Dotted),
            ["python3.11", "t.py"]
        );
        // No parameters: the args macros stand for nothing, ${args_json} for `{}`.
        let none = BTreeMap::new();
        assert_eq!(
            run(
                &["${program}", "${args}", "${args_json}"],
                &none,
                NestedArgs::Dotted
            ),
            ["train.py", "{}"]
        );
    }

    #[test]
    fn envvar_is_replaced_anywhere_in_an_element() {
        // W&B's own case (test_agent_create_sweep_command).
        let env = |name: &str| -> Option<OsString> {
            match name {
                "FOO_DIR" => Some("foo_dir".into()),
                "FOO_DIR_TWO" => Some("foo_dir_two".into()),
                "FOO_VAR" => Some("foo_var".into()),
                _ => None,
            }
        };
        let template = CommandTemplate::parse(&[
            "${env}",
            "${interpreter}",
            "--output_dir",
            "fake/path/${envvar:FOO_DIR}/${envvar:FOO_DIR}/${envvar:FOO_DIR_TWO}",
            "--foovar",
            "${envvar:FOO_VAR}",
        ])
        .unwrap();
        assert_eq!(
            template.env_vars(),
            ["FOO_DIR", "FOO_DIR", "FOO_DIR_TWO", "FOO_VAR"]
        );
        let p = BTreeMap::new();
        let ctx = ProgramContext {
            program: Path::new("train.py"),
            interpreter: OsStr::new("python"),
            params: &p,
            args_json_file: Path::new("p.json"),
            nested: NestedArgs::Dotted,
            env: &env,
        };
        assert_eq!(
            argv(&template, &ctx).unwrap(),
            [
                "/usr/bin/env",
                "python",
                "--output_dir",
                "fake/path/foo_dir/foo_dir/foo_dir_two",
                "--foovar",
                "foo_var"
            ]
            .map(OsString::from)
        );
        // Unset: an error naming it (W&B would pass the name itself).
        let missing = CommandTemplate::parse(&["x", "${envvar:NOPE}"]).unwrap();
        assert_eq!(
            argv(&missing, &ctx),
            Err(ArgvError::MissingEnvVar {
                index: 1,
                name: "NOPE".into()
            })
        );
    }

    #[test]
    fn arguments_are_never_split_or_quoted() {
        let p = params(json!({"prompt": "a b; rm -rf / \"$HOME\"", "x": "$(id)"}));
        assert_eq!(
            run(&["${program}", "${args}"], &p, NestedArgs::Dotted),
            ["train.py", "--prompt=a b; rm -rf / \"$HOME\"", "--x=$(id)"]
        );
        // Non-UTF-8 environment values pass through as bytes.
        use std::os::unix::ffi::OsStringExt;
        let env = |_: &str| -> Option<OsString> { Some(OsString::from_vec(vec![b'a', 0xff])) };
        let template = CommandTemplate::parse(&["--dir=${envvar:D}"]).unwrap();
        let none = BTreeMap::new();
        let ctx = ProgramContext {
            program: Path::new("t"),
            interpreter: OsStr::new("python"),
            params: &none,
            args_json_file: Path::new("p"),
            nested: NestedArgs::Dotted,
            env: &env,
        };
        assert_eq!(
            argv(&template, &ctx).unwrap()[0].as_encoded_bytes(),
            b"--dir=a\xff"
        );
    }

    #[test]
    fn refusals_name_the_element_and_the_macro() {
        let err = |c: &[&str]| CommandTemplate::parse(c).unwrap_err();
        assert_eq!(
            err(&["${env}", "${interpeter}"]),
            TemplateError::UnknownMacro {
                index: 1,
                name: "interpeter".into()
            }
        );
        assert!(err(&["${env}", "${interpeter}"]).to_string().contains(
            "command[1]: unknown macro `${interpeter}` (did you mean `${interpreter}`?)"
        ));
        assert!(err(&["${foo}"])
            .to_string()
            .contains("W&B's macros: ${env}, "));
        assert_eq!(
            err(&["python", "--cfg=${args_json_file}"]),
            TemplateError::EmbeddedMacro {
                index: 1,
                name: "args_json_file".into()
            }
        );
        assert_eq!(
            err(&["${args}${args}"]),
            TemplateError::EmbeddedMacro {
                index: 0,
                name: "args".into()
            }
        );
        assert_eq!(
            err(&["a", "b", "--home=${HOME}"]),
            TemplateError::UnknownMacro {
                index: 2,
                name: "HOME".into()
            }
        );
        assert_eq!(err(&["${args_dict}"]), TemplateError::ArgsDict { index: 0 });
        assert_eq!(
            err(&["${envvar:home}"]),
            TemplateError::EnvVarName {
                index: 0,
                name: "home".into()
            }
        );
        assert_eq!(
            err(&["${envvar:}"]),
            TemplateError::EnvVarName {
                index: 0,
                name: "".into()
            }
        );
        assert_eq!(err(&["x", "${args"]), TemplateError::Unclosed { index: 1 });
        assert_eq!(err(&["${"]), TemplateError::Unclosed { index: 0 });
        // Plain dollars and braces are literal text.
        let ok = CommandTemplate::parse(&["$HOME", "{a}", "$", "}", "a$b{c}", ""]).unwrap();
        assert_eq!(
            ok.elements()[0],
            Element::Literal(vec![Piece::Text("$HOME".into())])
        );
        assert_eq!(
            ok.elements()[5],
            Element::Literal(vec![Piece::Text("".into())])
        );
    }

    #[test]
    fn yaml_elements_become_text_as_wandb_str_makes_them() {
        let t =
            CommandTemplate::from_yaml(&[json!("${program}"), json!(3), json!(0.5), json!(true)])
                .unwrap();
        assert_eq!(t.elements()[0], Element::Macro(Macro::Program));
        assert_eq!(
            t.elements()[1],
            Element::Literal(vec![Piece::Text("3".into())])
        );
        assert_eq!(
            t.elements()[2],
            Element::Literal(vec![Piece::Text("0.5".into())])
        );
        assert_eq!(
            t.elements()[3],
            Element::Literal(vec![Piece::Text("True".into())])
        );
        assert_eq!(
            CommandTemplate::from_yaml(&[json!("a"), json!(["b"])]),
            Err(TemplateError::NotScalar {
                index: 1,
                found: "list"
            })
        );
        assert!(t.uses(Macro::Program));
        assert!(!t.uses(Macro::Args));
    }

    #[test]
    fn interpreter_is_python_else_python3() {
        let path = OsString::from("/venv/bin:/usr/bin");
        let only = |names: &'static [&'static str]| {
            move |p: &Path| names.iter().any(|n| p == Path::new(n))
        };
        assert_eq!(
            resolve_interpreter(Some(&path), only(&["/usr/bin/python3"])),
            "python3"
        );
        assert_eq!(
            resolve_interpreter(Some(&path), only(&["/usr/bin/python3", "/venv/bin/python"])),
            "python"
        );
        assert_eq!(resolve_interpreter(Some(&path), only(&[])), "python");
        assert_eq!(
            resolve_interpreter(None, only(&["/usr/bin/python3"])),
            "python"
        );
    }

    #[test]
    fn every_macro_has_a_name_that_parses_back() {
        for m in Macro::ALL {
            assert_eq!(Macro::from_name(m.name()), Some(m));
            let t = CommandTemplate::parse(&[format!("${{{}}}", m.name())]).unwrap();
            assert!(t.uses(m));
        }
    }
}
