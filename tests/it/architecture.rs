//! The layout is the architecture: these tests fail when a dependency points the wrong way.
//!
//! - Only `src/trainer/` names candle; only `src/results/` uses polars.
//! - Each folder imports only the folders below it (`LAYERS`): the orchestrator, plan and check
//!   never import the trainer; the sweep definition (`spec`) depends on nothing but `util`.
//! - No two modules import each other, directly or through others.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each folder of `src/` and the folders it may import (`crate::NAME`).
/// `stats` (classification metrics, parameter importance) is pure arithmetic that both the
/// trainer (`sweep eval`) and results (the report) compute, and protocol's evaluation files carry
/// its types; it imports nothing, so it sits at the bottom beside `util`.
const LAYERS: [(&str, &[&str]); 10] = [
    ("util", &[]),
    ("stats", &[]),
    ("spec", &["util"]),
    ("text", &["spec", "util"]),
    ("protocol", &["spec", "stats", "util"]),
    ("plan", &["spec", "text", "protocol", "util"]),
    ("check", &["spec", "text", "plan", "protocol", "util"]),
    ("trainer", &["spec", "stats", "text", "protocol", "util"]),
    ("results", &["spec", "stats", "protocol", "util"]),
    (
        "orchestrator",
        &["check", "plan", "protocol", "results", "spec", "util"],
    ),
];

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

/// The code of a file without its comments and string literals, so a doc comment or a message
/// (a sample error text in a test, say) may mention what code must not use.
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let l = match l.find("//") {
                Some(i) if !l[..i].contains('"') => &l[..i],
                _ => l,
            };
            // Drop what stands between double quotes (escaped quotes stay inside).
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
    // What the issue that made this layout asked for, said outright.
    for (folder, allowed) in LAYERS {
        if ["orchestrator", "plan", "check"].contains(&folder) {
            assert!(
                !allowed.contains(&"trainer"),
                "{folder} may not import the trainer"
            );
        }
    }
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
