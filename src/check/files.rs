//! Train against dev: labels on both sides, leaks, class counts; and the file and folder names
//! that tripped the seed's user (`test.json` where dev was expected, train and dev in two
//! folders, a folder where a file was expected).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::data::{check_data_file, looks_like_classes, DataFile};
use super::{CheckReport, Problem};

/// What a data file is for, judged by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Train,
    Dev,
    Test,
    Unknown,
}

/// A file's role from its name: `train*`, `dev*`/`valid*`/`val*`/`eval*`, `test*`.
pub fn role_of(path: &Path) -> Role {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_lowercase();
    if stem.contains("train") {
        Role::Train
    } else if stem.contains("dev")
        || stem.contains("valid")
        || stem.starts_with("val")
        || stem.contains("eval")
    {
        Role::Dev
    } else if stem.contains("test") {
        Role::Test
    } else {
        Role::Unknown
    }
}

/// `sweep check DATAFILE...`: each file alone, the naming hints, then train against dev.
pub fn check_data_files(paths: &[PathBuf]) -> CheckReport {
    let mut report = CheckReport::default();
    let mut loaded: Vec<(&PathBuf, DataFile)> = Vec::new();
    for p in paths {
        if let Some(d) = check_data_file(p, &mut report) {
            loaded.push((p, d));
        }
    }
    naming_hints(paths, &mut report);
    let find = |roles: &[Role]| loaded.iter().position(|(p, _)| roles.contains(&role_of(p)));
    let pair = match (
        find(&[Role::Train]),
        find(&[Role::Dev]).or(find(&[Role::Test])),
    ) {
        (Some(t), Some(d)) if t != d => Some((t, d)),
        _ if loaded.len() == 2 => {
            report.note(format!(
                "taking {} as train and {} as dev (by their order)",
                loaded[0].0.display(),
                loaded[1].0.display()
            ));
            Some((0, 1))
        }
        _ => None,
    };
    if let Some((t, d)) = pair {
        cross_check(&loaded[t].1, &loaded[d].1, &mut report);
    }
    report
}

/// The seed's naming mistakes, said when seen among data files given on the command line.
fn naming_hints(paths: &[PathBuf], report: &mut CheckReport) {
    let has = |role: Role| paths.iter().any(|p| role_of(p) == role);
    if !has(Role::Dev) {
        for p in paths.iter().filter(|p| role_of(p) == Role::Test) {
            report.push(
                Problem::warning(
                    p.display().to_string(),
                    "named as a test set: sweep trains on `train` and picks the best epoch on `dev`; this file is read as the dev set here",
                )
                .hint("rename it to dev.json beside train.json, or name it in the sweep file as `data: {train: .../train.json, dev: .../test.json}`; the seed's platform rejected a test.json where dev.json was expected"),
            );
        }
    }
    let folder = |role: Role| {
        paths
            .iter()
            .find(|p| role_of(p) == role)
            .map(|p| p.parent().unwrap_or(Path::new("")).to_path_buf())
    };
    if let (Some(train), Some(dev)) = (
        folder(Role::Train),
        folder(Role::Dev).or(folder(Role::Test)),
    ) {
        if train != dev {
            let dev_file = paths
                .iter()
                .find(|p| matches!(role_of(p), Role::Dev | Role::Test))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            report.push(
                Problem::warning(
                    dev_file,
                    format!(
                        "train and dev are in different folders (`{}` and `{}`)",
                        shown(&train),
                        shown(&dev)
                    ),
                )
                .hint("sweep reads any two paths, but tools that take one data folder expect train.json and dev.json side by side; keep them together, e.g. data/mytask/train.json and data/mytask/dev.json"),
            );
        }
    }
}

fn shown(dir: &Path) -> String {
    if dir.as_os_str().is_empty() {
        ".".into()
    } else {
        dir.display().to_string()
    }
}

/// Labels across the pair, leaks from train into dev, class counts.
pub fn cross_check(train: &DataFile, dev: &DataFile, report: &mut CheckReport) {
    fn count(d: &DataFile) -> BTreeMap<&str, (usize, usize)> {
        let mut m: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for e in &d.examples {
            if let Some(t) = &e.tgt {
                let entry = m.entry(t.as_str()).or_insert((e.line, 0));
                entry.1 += 1;
            }
        }
        m
    }
    let (train_labels, dev_labels) = (count(train), count(dev));
    if !train_labels.is_empty() && !dev_labels.is_empty() {
        if looks_like_classes(&train.examples) {
            let known: Vec<&str> = train_labels.keys().copied().collect();
            for (label, (line, n)) in &dev_labels {
                if !train_labels.contains_key(label) {
                    report.push(
                        Problem::error(
                            &dev.file,
                            format!(
                                "label `{label}` ({n} dev example(s)) never occurs in train{}; accuracy can never count these right",
                                crate::suggest::suffix(label, &known)
                            ),
                        )
                        .at(Some(*line), None)
                        .field("tgt")
                        .hint("accuracy scores the labels seen in train: add train examples with this label, or fix its spelling"),
                    );
                }
            }
            let only_train: Vec<(&str, usize)> = train_labels
                .iter()
                .filter(|(l, _)| !dev_labels.contains_key(*l))
                .map(|(l, (line, _))| (*l, *line))
                .collect();
            if let Some((_, line)) = only_train.first() {
                let names: Vec<String> = only_train
                    .iter()
                    .take(10)
                    .map(|(l, _)| format!("`{l}`"))
                    .collect();
                report.push(
                    Problem::warning(
                        &train.file,
                        format!(
                            "{} label(s) occur in train but never in dev: {}{}",
                            only_train.len(),
                            names.join(", "),
                            if only_train.len() > 10 { ", ..." } else { "" }
                        ),
                    )
                    .at(Some(*line), None)
                    .field("tgt")
                    .hint("accuracy on dev says nothing about these; add dev examples for them"),
                );
            }
            let mut counts: Vec<String> = train_labels
                .iter()
                .take(20)
                .map(|(l, (_, n))| {
                    format!("{l} {n}/{}", dev_labels.get(l).map(|d| d.1).unwrap_or(0))
                })
                .collect();
            if train_labels.len() > 20 {
                counts.push(format!("... {} more", train_labels.len() - 20));
            }
            report.note(format!("class counts (train/dev): {}", counts.join(", ")));
        } else {
            report.note(format!(
                "{}: tgt values look like free text, not classes; label checks skipped",
                train.file
            ));
        }
    }
    let mut in_train: HashMap<_, usize> = HashMap::new();
    for e in &train.examples {
        in_train
            .entry((&e.system, &e.history, &e.src, &e.tgt))
            .or_insert(e.line);
    }
    let leaks: Vec<(usize, usize)> = dev
        .examples
        .iter()
        .filter_map(|e| {
            in_train
                .get(&(&e.system, &e.history, &e.src, &e.tgt))
                .map(|t| (e.line, *t))
        })
        .collect();
    if let Some((dev_line, train_line)) = leaks.first() {
        report.push(
            Problem::warning(
                &dev.file,
                format!(
                    "{} dev example(s) also occur in train (this one is train line {train_line})",
                    leaks.len()
                ),
            )
            .at(Some(*dev_line), None)
            .hint("dev should hold examples the model never trained on; remove them from one side"),
        );
    }
}

/// Data files (`.json`, `.jsonl`) in a folder, sorted, at most `limit`.
fn data_files_in(dir: &Path, limit: usize) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .take(1000)
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("json" | "jsonl")
                )
        })
        .collect();
    out.sort();
    out.truncate(limit);
    out
}

fn names(files: &[PathBuf]) -> String {
    files
        .iter()
        .filter_map(|p| p.file_name().map(|n| format!("`{}`", n.to_string_lossy())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What to say when a data file is not found: what is there instead. `field` is `data.train`
/// or `data.dev` when the path comes from a sweep file.
pub fn missing_file_hint(path: &Path, field: Option<&str>) -> Option<String> {
    let parent = path.parent().unwrap_or(Path::new(""));
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|_| ".".into());
    if !parent.as_os_str().is_empty() && !parent.is_dir() {
        return Some(format!(
            "the folder `{}` does not exist either; relative paths are taken from the directory sweep runs in ({cwd})",
            parent.display()
        ));
    }
    let there = data_files_in(parent, 8);
    let wanted = match field {
        Some("data.dev") => Some(Role::Dev),
        Some("data.train") => Some(Role::Train),
        _ => role_of(path).into_known(),
    };
    if wanted == Some(Role::Dev) {
        if let Some(test) = there
            .iter()
            .find(|p| matches!(role_of(p), Role::Test | Role::Dev))
        {
            return Some(format!(
                "found `{}` there: sweep's held-out set is dev; point {} at it, or rename it to dev.json (the seed's platform wanted train.json and dev.json side by side)",
                test.display(),
                field.unwrap_or("data.dev")
            ));
        }
    }
    if let Some(role) = wanted {
        if let Some(same) = there.iter().find(|p| role_of(p) == role) {
            return Some(format!(
                "found `{}` there; did you mean it?",
                same.display()
            ));
        }
    }
    // The two-folders mistake: the file sits in a sibling folder.
    if let (Some(name), Some(grand)) = (path.file_name(), parent.parent()) {
        let grand = if grand.as_os_str().is_empty() {
            Path::new(".")
        } else {
            grand
        };
        if let Ok(entries) = std::fs::read_dir(grand) {
            for entry in entries.take(200).flatten() {
                let candidate = entry.path().join(name);
                if entry.path() != parent && candidate.is_file() {
                    return Some(format!(
                        "found `{}` in another folder; point the path at it, or keep train and dev files side by side in one folder",
                        candidate.display()
                    ));
                }
            }
        }
    }
    if there.is_empty() {
        Some(format!(
            "relative paths are taken from the directory sweep runs in ({cwd})"
        ))
    } else {
        Some(format!("data files there: {}", names(&there)))
    }
}

impl Role {
    fn into_known(self) -> Option<Role> {
        match self {
            Role::Test => Some(Role::Dev),
            Role::Unknown => None,
            r => Some(r),
        }
    }
}

/// What to say when a folder is given where a data file is expected (the seed's two folders).
pub fn folder_hint(dir: &Path) -> Option<String> {
    let files = data_files_in(dir, 8);
    let first = files.first()?;
    Some(format!(
        "it holds {}; give the file itself, e.g. `{}`",
        names(&files),
        first.display()
    ))
}
