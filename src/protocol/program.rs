//! What passes between sweep and a user's own program (a sweep file with `program`/`command`):
//!
//! - to the program: its arguments (`spec::program::argv`), the environment variables below,
//!   and its parameters as two files in its trial folder, `params.json` (what W&B's
//!   `${args_json_file}` holds) and `wandb-config.yaml` (W&B's config form, which
//!   `wandb.init()` reads through `WANDB_SWEEP_PARAM_PATH`, so a W&B program's `wandb.config`
//!   holds the trial's parameters offline too);
//! - from the program: JSON-object lines on stdout ([`report`]), and out-of-memory messages
//!   ([`oom`]); its exit status.

pub mod oom;
pub mod report;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::spec::program::{args_json, python};
use crate::util::fs::write_replacing;

/// The trial's folder (absolute): a program may write anything there (checkpoints included).
pub const TRIAL_DIR: &str = "SWEEP_TRIAL_DIR";
/// The trial's number, as in `trials/NNNN` (`7`, not `0007`).
pub const TRIAL_ID: &str = "SWEEP_TRIAL_ID";
/// The sweep's `name`.
pub const SWEEP_NAME: &str = "SWEEP_NAME";
/// The metric the sweep ranks by (`metric.name`): the key the program's reports must hold.
pub const METRIC: &str = "SWEEP_METRIC";
/// The parameters as one JSON object: [`PARAMS_JSON`] in the trial folder.
pub const PARAMS_FILE: &str = "SWEEP_PARAMS_FILE";
/// The parameters in W&B's config form: [`WANDB_CONFIG_YAML`] in the trial folder.
pub const WANDB_CONFIG_FILE: &str = "SWEEP_WANDB_CONFIG_FILE";
/// W&B's own variable for that file (`wandb/env.py`, `SWEEP_PARAM_PATH`), set by `wandb agent`
/// and read by `wandb.init()` into `wandb.config`. sweep sets no `WANDB_SWEEP_ID`: with it,
/// `wandb.init()` would try to join a sweep on W&B's server.
pub const WANDB_SWEEP_PARAM_PATH: &str = "WANDB_SWEEP_PARAM_PATH";
/// The devices the trial holds as it names them, comma-separated: `cuda:0,cuda:1` (renumbered
/// from 0, as CUDA shows the visible ones) or `cpu`.
pub const DEVICES: &str = "SWEEP_DEVICES";
/// The physical GPU ids the trial holds, comma-separated (empty: none).
pub const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";

/// The parameters' JSON file in a trial folder.
pub const PARAMS_JSON: &str = "params.json";
/// The parameters' W&B config file in a trial folder.
pub const WANDB_CONFIG_YAML: &str = "wandb-config.yaml";

/// What a program trial's environment is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramTrialEnv<'a> {
    pub trial: usize,
    pub sweep: &'a str,
    pub metric: &'a str,
    /// The trial folder, absolute.
    pub dir: &'a Path,
    /// The devices as the trial names them (`Placement::devices`).
    pub devices: &'a [String],
    /// `Some(ids)`: set CUDA_VISIBLE_DEVICES to them (the local pool; `Some("")` hides every
    /// GPU from a trial that holds none). `None`: leave what the process inherits (a Slurm job's
    /// own, set by Slurm for the GPUs it gave the job).
    pub cuda_visible_devices: Option<&'a str>,
}

/// The variables sweep sets for a program trial, on top of the environment it inherits.
pub fn program_env(t: &ProgramTrialEnv<'_>) -> Vec<(&'static str, OsString)> {
    let wandb_config = t.dir.join(WANDB_CONFIG_YAML).into_os_string();
    let mut env = vec![
        (TRIAL_DIR, t.dir.as_os_str().to_os_string()),
        (TRIAL_ID, t.trial.to_string().into()),
        (SWEEP_NAME, t.sweep.into()),
        (METRIC, t.metric.into()),
        (PARAMS_FILE, t.dir.join(PARAMS_JSON).into_os_string()),
        (WANDB_CONFIG_FILE, wandb_config.clone()),
        (WANDB_SWEEP_PARAM_PATH, wandb_config),
        (DEVICES, t.devices.join(",").into()),
    ];
    if let Some(ids) = t.cuda_visible_devices {
        env.push((CUDA_VISIBLE_DEVICES, ids.into()));
    }
    env
}

/// The parameter files written for one trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamFiles {
    pub json: PathBuf,
    pub wandb_config: PathBuf,
}

/// Writes `params.json` and `wandb-config.yaml` into the trial folder `dir` (each replaced
/// atomically), before the program starts. Not synced: both are copies of the synced
/// config.json's parameters, written again before every start.
pub fn write_param_files(dir: &Path, params: &BTreeMap<String, Value>) -> io::Result<ParamFiles> {
    let files = ParamFiles {
        json: dir.join(PARAMS_JSON),
        wandb_config: dir.join(WANDB_CONFIG_YAML),
    };
    write_replacing(&files.json, params_json(params).as_bytes())?;
    write_replacing(&files.wandb_config, wandb_config_yaml(params).as_bytes())?;
    Ok(files)
}

/// `params.json`: the parameters as W&B's `${args_json}` writes them (Python's `json.dumps`,
/// nested parameters nested), so the same file serves `${args_json_file}`.
pub fn params_json(params: &BTreeMap<String, Value>) -> String {
    args_json(params)
}

/// `wandb-config.yaml`: W&B's config form, as `wandb agent` writes it for a run
/// (`config_util.save_config_file_from_dict` in wandb/wandb `wandb/sdk/lib/config_util.py`):
/// `wandb_version: 1`, then each parameter as `name: {value: v}` in block style. Written for
/// PyYAML (YAML 1.1) and YAML 1.2 readers alike: floats always with a `.` (`1.0e-05`, as
/// PyYAML writes them; `1e-05` would read back as a string), strings double-quoted with ASCII
/// escapes, lists in flow style.
pub fn wandb_config_yaml(params: &BTreeMap<String, Value>) -> String {
    // W&B writes no document body for no parameters ("adding an empty dictionary here causes
    // a parse error").
    let mut out = String::from("wandb_version: 1");
    if params.is_empty() {
        return out;
    }
    out.push_str("\n\n");
    for (name, value) in params {
        out.push_str(&yaml_key(name));
        out.push_str(":\n  value:");
        yaml_block(value, 4, &mut out);
    }
    out
}

/// `value` after a `key:` at the indentation `indent` for its entries: a non-empty map as
/// indented `key: value` lines, anything else on the same line.
fn yaml_block(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            for (k, v) in python::sorted(map) {
                out.push_str(&" ".repeat(indent));
                out.push_str(&yaml_key(k));
                out.push(':');
                yaml_block(v, indent + 2, out);
            }
        }
        other => {
            out.push(' ');
            out.push_str(&yaml_flow(other));
            out.push('\n');
        }
    }
}

/// A value in YAML's flow style, with scalars both YAML 1.1 and 1.2 read back unchanged.
fn yaml_flow(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) if n.is_f64() => yaml_float(n.as_f64().unwrap_or(f64::NAN)),
        Value::Number(n) => n.to_string(),
        Value::String(s) => yaml_string(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(yaml_flow).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = python::sorted(map)
                .into_iter()
                .map(|(k, v)| format!("{}: {}", yaml_key(k), yaml_flow(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

/// PyYAML's `represent_float`: Python's repr, lower-case, `.0` added before an exponent.
fn yaml_float(x: f64) -> String {
    if x.is_nan() {
        return ".nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { ".inf" } else { "-.inf" }.into();
    }
    let repr = python::float_repr(x);
    if !repr.contains('.') && repr.contains('e') {
        repr.replacen('e', ".0e", 1)
    } else {
        repr
    }
}

/// A key plain when it cannot be read as anything but that string, else double-quoted.
fn yaml_key(key: &str) -> String {
    const RESERVED: [&str; 11] = [
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", "",
    ];
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !RESERVED.contains(&key.to_ascii_lowercase().as_str());
    if plain {
        key.to_string()
    } else {
        yaml_string(key)
    }
}

/// A double-quoted YAML string in ASCII: `\"`, `\\`, `\n`, `\t`, `\r`, other control
/// characters as `\xNN`, beyond ASCII `\uNNNN` or `\UNNNNNNNN` (not UTF-16 surrogate pairs,
/// which PyYAML would read as two broken characters).
fn yaml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Whether `path` is a file this process may execute (for `spec::program::resolve_interpreter`
/// and for finding a `program`).
pub fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` as a process would run it: a path when it has a `/`, else the first executable file
/// of that name in the directories of `path_var` (a `PATH` value), as `execvp` looks.
pub fn find_on_path(name: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if name.contains('/') {
        let p = Path::new(name);
        return is_executable_file(p).then(|| p.to_path_buf());
    }
    std::env::split_paths(path_var?)
        .map(|d| d.join(name))
        .find(|p| is_executable_file(p))
}

/// `${interpreter}` on this machine: `python` if on PATH, else `python3` if that is.
pub fn interpreter() -> &'static str {
    crate::spec::program::resolve_interpreter(
        std::env::var_os("PATH").as_deref(),
        is_executable_file,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_environment_names_folder_files_and_devices() {
        let devices = ["cuda:0".to_string(), "cuda:1".to_string()];
        let t = ProgramTrialEnv {
            trial: 7,
            sweep: "demo",
            metric: "accuracy",
            dir: Path::new("/r/trials/0007"),
            devices: &devices,
            cuda_visible_devices: Some("2,5"),
        };
        let env: BTreeMap<&str, OsString> = program_env(&t).into_iter().collect();
        assert_eq!(env[TRIAL_DIR], "/r/trials/0007");
        assert_eq!(env[TRIAL_ID], "7");
        assert_eq!(env[SWEEP_NAME], "demo");
        assert_eq!(env[METRIC], "accuracy");
        assert_eq!(env[PARAMS_FILE], "/r/trials/0007/params.json");
        assert_eq!(env[WANDB_CONFIG_FILE], "/r/trials/0007/wandb-config.yaml");
        assert_eq!(env[WANDB_SWEEP_PARAM_PATH], env[WANDB_CONFIG_FILE]);
        assert_eq!(env[DEVICES], "cuda:0,cuda:1");
        assert_eq!(env[CUDA_VISIBLE_DEVICES], "2,5");
        assert!(!env.contains_key("WANDB_SWEEP_ID"));
        let slurm = ProgramTrialEnv {
            cuda_visible_devices: None,
            ..t
        };
        assert!(program_env(&slurm)
            .iter()
            .all(|(k, _)| *k != CUDA_VISIBLE_DEVICES));
    }

    #[test]
    fn wandb_config_is_wandbs_form() {
        let p = params(json!({
            "batch_size": 32,
            "learning_rate": 1e-5,
            "warmup": 0.1,
            "optimizer": {"nadam": {"beta": 0.9}, "lr": 0.001},
            "layers": [64, 128],
            "name": "it's \"x\" é🙂",
            "flag": true,
            "none": null,
            "yes": "no",
            "big": 1e16,
        }));
        let want = "wandb_version: 1\n\n\
            batch_size:\n  value: 32\n\
            big:\n  value: 1.0e+16\n\
            flag:\n  value: true\n\
            layers:\n  value: [64, 128]\n\
            learning_rate:\n  value: 1.0e-05\n\
            name:\n  value: \"it's \\\"x\\\" \\xe9\\U0001f642\"\n\
            none:\n  value: null\n\
            optimizer:\n  value:\n    lr: 0.001\n    nadam:\n      beta: 0.9\n\
            warmup:\n  value: 0.1\n\
            \"yes\":\n  value: \"no\"\n";
        let text = wandb_config_yaml(&p);
        assert_eq!(text, want);
        // Read back (YAML 1.2), each parameter is {value: v} with v unchanged.
        let back: BTreeMap<String, Value> = yaml_serde::from_str(&text).unwrap();
        assert_eq!(back["wandb_version"], json!(1));
        for (k, v) in &p {
            assert_eq!(&back[k]["value"], v, "{k}");
        }
        assert_eq!(wandb_config_yaml(&BTreeMap::new()), "wandb_version: 1");
    }

    #[test]
    fn param_files_are_written_into_the_trial_folder() {
        let dir = tempfile::tempdir().unwrap();
        let p = params(json!({"lr": 0.001, "epochs": 3}));
        let files = write_param_files(dir.path(), &p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&files.json).unwrap(),
            r#"{"epochs": 3, "lr": 0.001}"#
        );
        assert!(std::fs::read_to_string(&files.wandb_config)
            .unwrap()
            .starts_with("wandb_version: 1\n\nepochs:\n  value: 3\n"));
    }

    #[test]
    fn executable_files_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("python3");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(!is_executable_file(&script));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(is_executable_file(&script));
        assert!(!is_executable_file(dir.path()));
        let path = dir.path().as_os_str();
        assert_eq!(
            crate::spec::program::resolve_interpreter(Some(path), is_executable_file),
            "python3"
        );
    }
}
