//! `data.label_separator` against the labels it is meant to split: a separator that no training
//! label contains gives one level, the plain accuracy, which is most likely a typo (`/` for `-`)
//! or the wrong file. The empty separator is refused by the spec's own rules
//! (`SweepSpec::field_problems`).

use yaml_serde::Value as Yaml;

use super::data::DataFile;
use super::located::Ctx;
use super::yaml::{Seg, Target};
use super::Severity;
use crate::stats::classify::label_depth;

/// `data.label_separator` as the spec reads it: a string, or none.
fn separator(yaml: &Yaml) -> Option<String> {
    match yaml.get("data")?.get("label_separator")? {
        Yaml::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// The deepest label of `train` at `separator`, and how many labels have more than one level.
pub fn levels_of(train: &DataFile, separator: &str) -> (usize, usize) {
    let mut labels: Vec<&str> = train
        .examples
        .iter()
        .filter_map(|e| e.tgt.as_deref())
        .collect();
    labels.sort_unstable();
    labels.dedup();
    let depths: Vec<usize> = labels.iter().map(|l| label_depth(l, separator)).collect();
    (
        depths.iter().copied().max().unwrap_or(0),
        depths.iter().filter(|d| **d > 1).count(),
    )
}

/// Warns when the separator is in no training label, and notes the levels it finds.
pub fn check_label_levels(yaml: &Yaml, train: Option<&DataFile>, ctx: &mut Ctx) {
    let (Some(separator), Some(train)) = (separator(yaml), train) else {
        return;
    };
    if separator.is_empty() || train.examples.is_empty() {
        return;
    }
    let (depth, split) = levels_of(train, &separator);
    if split == 0 {
        ctx.push(
            Severity::Warning,
            &[Seg::Key("data".into()), Seg::Key("label_separator".into())],
            Target::Value,
            format!(
                "no label of {} contains {separator:?}: every label is one level, so accuracy per level is plain accuracy",
                train.file
            ),
            Some("write the labels' levels with this separator (`体育/足球`), or remove `label_separator`".into()),
        );
    } else {
        ctx.report.note(format!(
            "{}: labels have up to {depth} levels at {separator:?}: accuracy is also reported per level",
            train.file
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::CheckReport;
    use crate::text::data::examples_from_bytes;

    fn train(labels: &[&str]) -> DataFile {
        let text: String = labels
            .iter()
            .map(|l| format!("{{\"src\": \"q {l}\", \"tgt\": \"{l}\"}}\n"))
            .collect();
        DataFile {
            file: "train.json".into(),
            examples: examples_from_bytes(text.into_bytes(), std::path::Path::new("train.json"))
                .unwrap(),
            has_errors: false,
        }
    }

    fn check(yaml: &str, labels: &[&str]) -> String {
        let mut report = CheckReport::default();
        let doc: Yaml = yaml_serde::from_str(yaml).unwrap();
        let mut ctx = Ctx::new(yaml, "s.yaml", &mut report);
        check_label_levels(&doc, Some(&train(labels)), &mut ctx);
        report.render()
    }

    #[test]
    fn a_separator_no_label_contains_is_a_warning_at_its_place() {
        let yaml = "name: t\ndata:\n  train: a\n  dev: b\n  label_separator: \"/\"\n";
        let out = check(yaml, &["体育-足球", "财经-股票"]);
        assert!(
            out.contains(
                "s.yaml:5:20: warning: data.label_separator: no label of train.json contains \"/\""
            ),
            "{out}"
        );
        assert!(out.contains("check: ok (1 warning)"), "{out}");
        let out = check(yaml, &["体育/足球", "体育/篮球", "财经"]);
        assert!(!out.contains("warning"), "{out}");
        assert!(out.contains("up to 2 levels"), "{out}");
        // No separator: nothing to check.
        let out = check("name: t\ndata: {train: a, dev: b}\n", &["a"]);
        assert_eq!(out, "check: ok\n");
    }
}
