//! The layout is the architecture: these tests fail when a dependency points the wrong way.
//!
//! - Only `src/trainer/` names candle; only `src/results/` uses polars.
//! - Each folder imports only the folders below it (`LAYERS`): the orchestrator, plan and check
//!   never import the trainer; the sweep definition (`spec`) depends on nothing but `util`;
//!   nothing imports `diagnostics`, which sits above every stage.
//! - No two modules import each other, directly or through others.
//! - Only the run loop and what sits above it name the journal or start `sweep` processes; the
//!   trainer, one trial, knows nothing of the sweep around it.
//! - One GPU query: only `src/plan/devices.rs` runs nvidia-smi.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each folder of `src/` and the folders it may import (`crate::NAME`).
/// `stats` (classification metrics, parameter importance) is pure arithmetic that both the
/// trainer (`sweep eval`) and results (the report) compute, and protocol's evaluation files carry
/// its types; it imports nothing, so it sits at the bottom beside `util`.
/// `diagnostics` (`sweep gpu-check`) drives both the run loop and the trainer, so it sits above
/// them all: it asks the trainer for candle work, reads the journal a `sweep run` child left,
/// and queries GPUs through `plan`; it reaches the orchestrator only through child processes.
/// `program_trial` (one trial of a user's own program: `sweep train` supervising it) is the
/// trainer's sibling for programs: the formats only, and never candle.
const LAYERS: [(&str, &[&str]); 12] = [
    ("util", &[]),
    ("stats", &[]),
    ("spec", &["util"]),
    ("text", &["spec", "util"]),
    ("protocol", &["spec", "stats", "util"]),
    ("plan", &["spec", "text", "protocol", "util"]),
    (
        "check",
        &["spec", "stats", "text", "plan", "protocol", "util"],
    ),
    ("trainer", &["spec", "stats", "text", "protocol", "util"]),
    ("program_trial", &["spec", "protocol", "util"]),
    ("results", &["spec", "stats", "protocol", "util"]),
    (
        "orchestrator",
        &[
            "check",
            "plan",
            "program_trial",
            "protocol",
            "results",
            "spec",
            "util",
        ],
    ),
    (
        "diagnostics",
        &["plan", "protocol", "spec", "trainer", "util"],
    ),
];

/// The files that may name the journal (`protocol::journal`, `Journal`), by path under `src/`:
/// the protocol that defines it, the run loop that writes it, results' `state` (a trial's row is
/// the journal's events applied, `Trials::apply`), and the diagnostics that read what a sweep
/// they ran left. Everything else below the orchestrator must not: the trainer is one trial.
const NAME_THE_JOURNAL: [&str; 4] = [
    "protocol/",
    "orchestrator/",
    "results/state.rs",
    "diagnostics/",
];

/// The folders that may start `sweep` processes: the run loop (a trial is `sweep train`, the
/// test score `sweep eval`) and the diagnostics above it (`sweep run`, `sweep plan`); and
/// `program_trial`, which starts a program not written out: the user's own (never sweep).
const START_SWEEP: [&str; 3] = ["orchestrator", "diagnostics", "program_trial"];

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The folder of `src/` a file is in (`None` for lib.rs and main.rs).
fn folder(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).ok()?;
    let mut parts = rel.components();
    let first = parts.next()?.as_os_str().to_str()?.to_string();
    parts.next().map(|_| first)
}

/// A line without its `//` comment (a `//` after a double quote is taken to be inside a string).
fn without_comment(l: &str) -> &str {
    match l.find("//") {
        Some(i) if !l[..i].contains('"') => &l[..i],
        _ => l,
    }
}

/// The code of a file without its comments, string literals kept (for what a `Command::new`
/// starts).
fn code_with_strings(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(without_comment)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The code of a file without its comments and string literals, so a doc comment or a message
/// (a sample error text in a test, say) may mention what code must not use.
fn code(path: &Path) -> String {
    strip_strings(&code_with_strings(path))
}

/// `code` with what stands between double quotes dropped (escaped quotes stay inside).
fn strip_strings(code: &str) -> String {
    code.lines()
        .map(|l| {
            let mut out = String::new();
            let (mut quoted, mut escaped) = (false, false);
            for c in l.chars() {
                match (quoted, escaped, c) {
                    (true, false, '\\') => escaped = true,
                    (true, true, _) => escaped = false,
                    (_, _, '"') => {
                        quoted = !quoted;
                        out.push('"');
                    }
                    (false, _, c) => out.push(c),
                    (true, _, _) => {}
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `code` (strings stripped) names `word` as a whole identifier.
fn names(code: &str, word: &str) -> bool {
    code.match_indices(word).any(|(i, _)| {
        let ident = |c: char| c.is_alphanumeric() || c == '_';
        !code[..i].chars().last().is_some_and(ident)
            && !code[i + word.len()..].chars().next().is_some_and(ident)
    })
}

/// Whether `code` (strings stripped) names the journal: its module (`protocol::journal`, or
/// `journal` in a `protocol::{..}` group) or its writer (`Journal`).
fn names_the_journal(code: &str) -> bool {
    let in_a_group = code.match_indices("protocol::{").any(|(i, m)| {
        let group = &code[i + m.len()..];
        names(&group[..group.find('}').unwrap_or(group.len())], "journal")
    });
    code.contains("protocol::journal") || in_a_group || names(code, "Journal")
}

/// The programs `code` (comments stripped, strings kept) starts with `Command::new`: the literal
/// it names, or `None` for a program that is not written out (a path from `current_exe`, a
/// variable: possibly sweep itself).
fn started_programs(code: &str) -> Vec<Option<String>> {
    code.match_indices("Command::new(")
        .map(|(i, m)| {
            let arg = code[i + m.len()..].trim_start();
            let literal = arg.strip_prefix('"')?;
            let (program, after) = literal.split_once('"')?;
            after
                .trim_start()
                .starts_with(')')
                .then(|| program.to_string())
        })
        .collect()
}

/// Why `code` (comments stripped, strings kept) may start a `sweep` process, if it may: it
/// locates its own executable, starts a program not written out, or starts `sweep` by name.
fn starts_sweep(code: &str) -> Option<String> {
    if names(&strip_strings(code), "current_exe") {
        return Some("locates its own executable (current_exe)".into());
    }
    started_programs(code).into_iter().find_map(|p| match p {
        None => Some("starts a program that is not written out".into()),
        Some(p) if p == "sweep" || p.ends_with("/sweep") => Some(format!("starts `{p}`")),
        Some(_) => None,
    })
}

/// The `crate::a::b` paths a file names, as (`a`, `b`).
fn crate_paths(code: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        let ident = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        let first = ident(rest);
        let second = rest[first.len()..]
            .strip_prefix("::")
            .map(ident)
            .unwrap_or_default();
        out.insert((first, second));
    }
    out
}

#[test]
fn only_the_trainer_names_candle_and_only_results_use_polars() {
    let mut wrong = Vec::new();
    for f in rust_files(&src()) {
        let code = code(&f);
        let folder = folder(&f);
        if folder.as_deref() != Some("trainer")
            && (code.contains("candle_core") || code.contains("candle_nn"))
        {
            wrong.push(format!("{} names candle", f.display()));
        }
        if folder.as_deref() != Some("results") && code.contains("polars::") {
            wrong.push(format!("{} uses polars", f.display()));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn each_folder_imports_only_the_folders_below_it() {
    let layers: BTreeMap<&str, &[&str]> = LAYERS.into_iter().collect();
    let mut wrong = Vec::new();
    for f in rust_files(&src()) {
        let Some(folder) = folder(&f) else { continue };
        let allowed = layers
            .get(folder.as_str())
            .unwrap_or_else(|| panic!("src/{folder}/ is not in LAYERS: say what it may import"));
        for (target, _) in crate_paths(&code(&f)) {
            if target != folder && !allowed.contains(&target.as_str()) {
                wrong.push(format!("{} imports crate::{target}", f.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // What the issues that made this layout asked for, said outright.
    for (folder, allowed) in LAYERS {
        assert!(
            !allowed.contains(&"diagnostics"),
            "{folder} may not import the diagnostics: they sit above every stage"
        );
        if ["orchestrator", "plan", "check"].contains(&folder) {
            assert!(
                !allowed.contains(&"trainer"),
                "{folder} may not import the trainer"
            );
        }
    }
}

#[test]
fn only_the_run_loop_and_above_name_the_journal_or_start_sweep() {
    let mut wrong = Vec::new();
    for f in rust_files(&src()) {
        let Some(folder) = folder(&f) else { continue };
        let rel = f
            .strip_prefix(src())
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if !NAME_THE_JOURNAL.iter().any(|p| rel.starts_with(p)) && names_the_journal(&code(&f)) {
            wrong.push(format!("{} names the journal", f.display()));
        }
        if !START_SWEEP.contains(&folder.as_str()) {
            if let Some(why) = starts_sweep(&code_with_strings(&f)) {
                wrong.push(format!("{} {why}", f.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Both lists name only folders above the trainer, or the journal's own.
    let layers: Vec<&str> = LAYERS.iter().map(|(f, _)| *f).collect();
    let trainer = layers.iter().position(|f| *f == "trainer").unwrap();
    for folder in START_SWEEP {
        let at = layers.iter().position(|f| *f == folder).unwrap();
        assert!(
            at > trainer,
            "{folder} starts sweep but is not above the trainer"
        );
    }
}

#[test]
fn the_checks_for_the_journal_and_sweep_processes_see_what_they_look_for() {
    // The journal, named as a module path, an import or its writer; not a word inside another.
    assert!(names_the_journal(
        "use crate::protocol::journal::{Entry, Event};"
    ));
    assert!(names_the_journal("let j = Journal::open(dir)?;"));
    assert!(names_the_journal("use crate::protocol::{journal, trial};"));
    assert!(names_the_journal(
        "use crate::protocol::{trial::TrialEnd, journal::Event};"
    ));
    assert!(!names_the_journal(
        "use crate::protocol::{trial, evaluation}; let journal = 1;"
    ));
    assert!(!names_the_journal("let journaled = JournalEntry::new();"));
    // What code() leaves of a comment or a message that mentions them.
    assert!(!names_the_journal(without_comment(
        "let x = 1; // the Journal"
    )));
    assert!(!names_the_journal(&strip_strings(
        r#"eprintln!("see protocol::journal");"#
    )));
    // Starting sweep: its own executable, a program in a variable, or `sweep` by name.
    assert!(starts_sweep("Command::new(std::env::current_exe()?).arg(\"run\")").is_some());
    assert!(starts_sweep("let exe = std::env::current_exe()?;").is_some());
    assert!(starts_sweep("let mut c = Command::new(program);").is_some());
    assert!(starts_sweep("std::process::Command::new( exe )").is_some());
    assert!(starts_sweep("Command::new(\"sweep\").arg(\"train\")").is_some());
    assert!(starts_sweep("Command::new(\"/opt/bin/sweep\")").is_some());
    // Other programs, written out, are not sweep.
    assert!(starts_sweep("Command::new(\"sinfo\").args([\"-h\"])").is_none());
    assert!(starts_sweep("Command::new( \"nvidia-smi\" )").is_none());
    assert!(starts_sweep("let current_exe_name = 1;").is_none());
    assert_eq!(
        started_programs(
            "Command::new(\"squeue\"); Command::new(x); Command::new(\"a\" .to_string())"
        ),
        vec![Some("squeue".to_string()), None, None]
    );
}

#[test]
fn only_plan_devices_queries_the_gpus() {
    let mut wrong = Vec::new();
    for f in rust_files(&src()) {
        let rel = f
            .strip_prefix(src())
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let runs_it = started_programs(&code_with_strings(&f))
            .iter()
            .any(|p| p.as_deref() == Some("nvidia-smi"));
        if runs_it && rel != "plan/devices.rs" {
            wrong.push(format!("{} runs nvidia-smi", f.display()));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn no_two_modules_depend_on_each_other() {
    // Module files (not a folder's mod.rs, which holds its children) and what they import.
    let files: Vec<PathBuf> = rust_files(&src())
        .into_iter()
        .filter(|f| folder(f).is_some() && f.file_name().is_some_and(|n| n != "mod.rs"))
        .collect();
    let name = |f: &Path| -> String {
        let rel = f.strip_prefix(src()).unwrap().with_extension("");
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy().to_string())
            .collect::<Vec<_>>()
            .join("::")
    };
    let known: BTreeSet<String> = files.iter().map(|f| name(f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let me = name(f);
        let code = code(f);
        let mut targets: BTreeSet<String> = crate_paths(&code)
            .into_iter()
            .map(|(a, b)| format!("{a}::{b}"))
            .collect();
        // `super::sibling` inside a folder.
        let parent = me
            .rsplit_once("::")
            .map(|(p, _)| p.to_string())
            .unwrap_or_default();
        for (i, _) in code.match_indices("super::") {
            let sibling: String = code[i + "super::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            targets.insert(format!("{parent}::{sibling}"));
        }
        targets.retain(|t| known.contains(t) && *t != me);
        edges.insert(me, targets);
    }
    // Depth-first search for a cycle.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| p == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            panic!("modules that depend on each other: {}", cycle.join(" -> "));
        }
    }
    assert!(
        edges.len() > 20,
        "the walk found too few modules: {}",
        edges.len()
    );
}
