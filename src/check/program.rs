//! What a program sweep names on disk: its `program` (a file, taken from the folder `sweep run`
//! runs in, as `wandb agent` takes it) and the command's executable (a path, or a name on
//! PATH; `${interpreter}` is `python` or `python3` there). Its trials' parameters are the
//! program's own, so only their syntax (`spec`) and `gpus` are checked, never the built-in
//! trainer's rules.

use std::path::PathBuf;

use super::located::Ctx;
use super::paths::missing_file_hint;
use super::yaml::{Seg, Target};
use crate::spec::program::{CommandTemplate, Element, Macro, Piece};
use crate::spec::SweepSpec;

/// The program file and the command's executable.
pub fn check_program(spec: &SweepSpec, ctx: &mut Ctx) {
    if let Some(program) = &spec.program {
        let at = [Seg::Key("program".into())];
        if program.is_dir() {
            ctx.error(
                &at,
                Target::Value,
                format!("`{}` is a folder; the program is a file", program.display()),
                None,
            );
        } else if !program.exists() {
            ctx.error(
                &at,
                Target::Value,
                format!(
                    "`{}` not found (taken from the folder `sweep run` runs in, as `wandb \
                     agent` takes it)",
                    program.display()
                ),
                missing_file_hint(program, Some("program")),
            );
        }
    }
    let Ok(template) = CommandTemplate::from_yaml(spec.command.as_deref().unwrap_or(&[])) else {
        return; // Refused, at its element, by the spec's own checks.
    };
    let Some((index, element)) = template.executable() else {
        return;
    };
    let at: Vec<Seg> = match &spec.command {
        Some(c) if !c.is_empty() => vec![Seg::Key("command".into()), Seg::Index(index)],
        _ => vec![Seg::Key("program".into())],
    };
    let name = match element {
        Element::Macro(Macro::Interpreter) => crate::protocol::program::interpreter().to_string(),
        Element::Literal(pieces) if pieces.iter().all(|p| matches!(p, Piece::Text(_))) => pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_str(),
                Piece::EnvVar(_) => "",
            })
            .collect(),
        // `${program}` as the executable is checked above; the others are not known here.
        _ => return,
    };
    if name == "python" && element == &Element::Literal(vec![Piece::Text("python".into())]) {
        // A literal `python` resolves like `${interpreter}`.
        if find_executable(crate::protocol::program::interpreter()).is_some() {
            return;
        }
    }
    if find_executable(&name).is_none() {
        ctx.error(
            &at,
            Target::Value,
            format!("the command's executable `{name}` is not a file here nor a program on PATH"),
            Some("install it, or name it by its path".into()),
        );
    }
}

/// `name` as the program a process would run: a path when it has a `/`, else found on PATH.
pub fn find_executable(name: &str) -> Option<PathBuf> {
    crate::protocol::program::find_on_path(name, std::env::var_os("PATH").as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_are_found_by_path_or_on_path() {
        assert!(find_executable("sh").is_some());
        assert!(find_executable("/bin/sh").is_some());
        assert!(find_executable("no-such-program-here").is_none());
        assert!(find_executable("/no/such/file").is_none());
    }
}
