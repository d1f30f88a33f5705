//! Train against dev: labels on both sides, leaks, class counts; and the file and folder names
//! that tripped the seed's user (`test.json` where dev was expected, train and dev in two
//! folders, a folder where a file was expected).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::data::{check_data_file, looks_like_classes, DataFile};
use super::paths::{role_of, shown, Role};
use super::{CheckReport, Problem};

/// `sweep check DATAFILE...`: each file alone, the naming hints, then train against dev.
pub fn check_data_files(paths: &[PathBuf]) -> CheckReport {
    let mut report = CheckReport::default();
    let mut loaded: Vec<(&PathBuf, DataFile)> = Vec::new();
    for p in paths {
        if let Some(d) = check_data_file(p, crate::spec::ConflictPolicy::Warn, &mut report) {
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

/// Labels across the pair, leaks from train into dev, class counts.
pub fn cross_check(train: &DataFile, dev: &DataFile, report: &mut CheckReport) {
    cross_check_as(train, dev, "dev", report)
}

/// As `cross_check`, for a held-out file in the `role` of dev or test.
pub fn cross_check_as(train: &DataFile, dev: &DataFile, role: &str, report: &mut CheckReport) {
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
                                "label `{label}` ({n} {role} example(s)) never occurs in train{}; accuracy can never count these right",
                                crate::util::suggest::suffix(label, &known)
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
                            "{} label(s) occur in train but never in {role}: {}{}",
                            only_train.len(),
                            names.join(", "),
                            if only_train.len() > 10 { ", ..." } else { "" }
                        ),
                    )
                    .at(Some(*line), None)
                    .field("tgt")
                    .hint(format!(
                        "accuracy on {role} says nothing about these; add {role} examples for them"
                    )),
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
            report.note(format!(
                "class counts (train/{role}): {}",
                counts.join(", ")
            ));
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
                    "{} {role} example(s) also occur in train (this one is train line {train_line})",
                    leaks.len()
                ),
            )
            .at(Some(*dev_line), None)
            .hint(format!("{role} should hold examples the model never trained on; remove them from one side")),
        );
    }
}
