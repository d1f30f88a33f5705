//! Everything a sweep file names on disk: the data files (alone, as a pair, the test set,
//! labelled enough for the trials' methods), the model folder, and every example's length with
//! the model's tokenizer under every `max_seq_len` the trials use.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use yaml_serde::Value as Yaml;

use super::data::{check_data_file, DataFile};
use super::files::{cross_check, cross_check_as};
use super::located::Ctx;
use super::paths::{folder_hint, missing_file_hint};
use super::spec::SpecCheck;
use super::tokens::{check_lengths, Lengths};
use super::yaml::{Seg, Target};
use super::{CheckReport, Problem, Severity};
use crate::spec::params::{Method, TrialParams};
use crate::spec::shape::Architecture;
use crate::spec::{ConflictPolicy, ModelSource, SystemPrompt};
use crate::text::encode::TokenCounts;
use crate::text::tokenizer::TextTokenizer;

/// The files a sweep names: data (alone, as a pair, labelled enough for the methods), the model
/// folder, and token lengths with the model's tokenizer. Returns the training set's token
/// counts when they were measured.
pub fn check_named_files(
    checked: &SpecCheck,
    text: &str,
    file: &str,
    report: &mut CheckReport,
) -> Option<TokenCounts> {
    let yaml = checked.yaml.as_ref()?;
    let mut ctx = Ctx::new(text, file, report);
    if ["program", "command"]
        .iter()
        .any(|k| yaml.get(k).is_some_and(|v| !v.is_null()))
    {
        // A program sweep names no data and no model of ours.
        if let Some(spec) = &checked.spec {
            super::program::check_program(spec, &mut ctx);
        }
        return None;
    }
    let conflicts = conflict_policy(yaml);
    let [train, dev] = check_train_and_dev(yaml, conflicts, &mut ctx);
    check_test_file(yaml, conflicts, train.as_ref(), &mut ctx);
    super::levels::check_label_levels(yaml, train.as_ref(), &mut ctx);
    let model = check_model(yaml, &mut ctx);
    let (true, Some(model)) = (checked.spec.is_some(), model) else {
        return None;
    };
    let loaded: Vec<&DataFile> = [train.as_ref(), dev.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    check_labels(&checked.trials, &loaded, ctx.report);
    let fitted_by_default = checked
        .spec
        .as_ref()
        .is_some_and(|s| !s.parameters.contains_key("max_seq_len"));
    ctx.report
        .note(trials_note(file, &checked.trials, fitted_by_default));
    if let Some(spec) = &checked.spec {
        if let Some(note) = system_prompt_note(spec.system_prompt(), &checked.trials) {
            ctx.report.note(note);
        }
    }
    let train_file = train.as_ref()?;
    if train_file.examples.is_empty() {
        return None;
    }
    let tokenizer = load_tokenizer(&model, train_file, &mut ctx)?;
    let counts: Vec<TokenCounts> = loaded
        .iter()
        .map(|d| TokenCounts::measure(&tokenizer, &d.examples))
        .collect();
    if let (Some(spec), Some(train_counts)) = (&checked.spec, counts.first()) {
        let shared = train_counts.shared_prefix;
        if let Some(note) =
            head_behind_long_prompt_note(spec.system_prompt(), &checked.trials, shared)
        {
            ctx.report.note(note);
        }
    }
    let mut lengths = trial_lengths(&checked.trials);
    if fitted_by_default {
        if let Some(fitted) = fitted_lengths(&model, &lengths, counts.first(), file, ctx.report) {
            lengths = fitted;
        }
    } else {
        check_window(&model, &lengths, &mut ctx);
    }
    let files: Vec<(&DataFile, &TokenCounts)> = loaded.iter().copied().zip(&counts).collect();
    check_lengths(&files, &lengths, ctx.report);
    // The first file is train: the planner sizes memory with its counts.
    counts.into_iter().next()
}

/// `data.conflicts` read as the spec reads it; the default when it is absent or wrong (the
/// walk reports a wrong one).
fn conflict_policy(yaml: &Yaml) -> ConflictPolicy {
    yaml.get("data")
        .and_then(|data| data.get("conflicts"))
        .and_then(|v| yaml_serde::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// A string value at `path` of the YAML (as the typed parser would read it).
fn text_at(yaml: &Yaml, path: &[&str]) -> Option<String> {
    let mut v = yaml;
    for k in path {
        v = v.as_mapping()?.get(*k)?;
    }
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The data file at `data.<which>`, checked alone; None when it is not there or unreadable.
fn check_data_path(
    which: &str,
    p: &str,
    conflicts: ConflictPolicy,
    ctx: &mut Ctx,
) -> Option<DataFile> {
    let field = format!("data.{which}");
    let seg = [Seg::Key("data".into()), Seg::Key(which.into())];
    let path = PathBuf::from(p);
    if path.is_dir() {
        ctx.error(
            &seg,
            Target::Value,
            format!("`{p}` is a folder; a data file is expected"),
            folder_hint(&path),
        );
        return None;
    }
    if !path.exists() {
        ctx.error(
            &seg,
            Target::Value,
            format!("`{p}` not found"),
            missing_file_hint(&path, Some(&field)),
        );
        return None;
    }
    check_data_file(&path, conflicts, ctx.report)
}

/// Train and dev, each alone, then one against the other (and a warning when they are the
/// same file).
fn check_train_and_dev(
    yaml: &Yaml,
    conflicts: ConflictPolicy,
    ctx: &mut Ctx,
) -> [Option<DataFile>; 2] {
    let paths: Vec<String> = ["train", "dev"]
        .iter()
        .filter_map(|which| text_at(yaml, &["data", which]))
        .collect();
    let [train, dev] = ["train", "dev"].map(|which| {
        text_at(yaml, &["data", which]).and_then(|p| check_data_path(which, &p, conflicts, ctx))
    });
    if let [a, b] = paths.as_slice() {
        let same = a == b
            || std::fs::canonicalize(a)
                .ok()
                .is_some_and(|a| std::fs::canonicalize(b).ok() == Some(a));
        if same {
            ctx.push(
                Severity::Warning,
                &[Seg::Key("data".into()), Seg::Key("dev".into())],
                Target::Value,
                "train and dev are the same file: dev then measures memorisation, not learning"
                    .into(),
                Some("hold out part of the data as dev.json".into()),
            );
        }
    }
    if let (Some(t), Some(d)) = (&train, &dev) {
        cross_check(t, d, ctx.report);
    }
    [train, dev]
}

/// `data.test`, checked like dev: the best checkpoint is scored on it when the sweep ends, by
/// accuracy, so every example needs a label.
fn check_test_file(
    yaml: &Yaml,
    conflicts: ConflictPolicy,
    train: Option<&DataFile>,
    ctx: &mut Ctx,
) {
    let Some(p) = text_at(yaml, &["data", "test"]) else {
        return;
    };
    let Some(test) = check_data_path("test", &p, conflicts, ctx) else {
        return;
    };
    if let Some(t) = train {
        cross_check_as(t, &test, "test", ctx.report);
    }
    if let Some(e) = test.examples.iter().find(|e| e.tgt.is_none()) {
        ctx.report.push(
            Problem::error(
                &test.file,
                "test examples need a label: the test score is accuracy",
            )
            .at(Some(e.line), None)
            .field("tgt"),
        );
    }
}

/// Trials that learn the answer (sft, lora) need every example labelled.
fn check_labels(trials: &[TrialParams], loaded: &[&DataFile], report: &mut CheckReport) {
    let supervised = trials
        .iter()
        .filter(|p| p.method != Method::PostPretrain)
        .count();
    if supervised == 0 {
        return;
    }
    for d in loaded {
        let missing: Vec<usize> = d
            .examples
            .iter()
            .filter(|e| e.tgt.is_none())
            .map(|e| e.line)
            .collect();
        if let Some(first) = missing.first() {
            report.push(
                Problem::error(
                    &d.file,
                    format!(
                        "{} example(s) have no tgt, but {supervised} of the {} trials train with sft or lora, which learn the answer",
                        missing.len(),
                        trials.len()
                    ),
                )
                .at(Some(*first), None)
                .field("tgt")
                .hint("label every example, or use `method: {value: post_pretrain}` for unlabelled text"),
            );
        }
    }
}

/// Every `max_seq_len` the trials use, by whether the trial learns answers or plain text.
fn trial_lengths(trials: &[TrialParams]) -> Lengths {
    let mut lengths = Lengths::default();
    for p in trials {
        match p.method {
            Method::PostPretrain => lengths.unsupervised.insert(p.max_seq_len as usize),
            Method::Sft | Method::Lora | Method::Classifier | Method::ClassifierLora => {
                lengths.supervised.insert(p.max_seq_len as usize)
            }
        };
    }
    lengths
}

/// `s.yaml: 4 trial(s) (lora, sft), max_seq_len 128, 256`.
fn trials_note(file: &str, trials: &[TrialParams], fitted_by_default: bool) -> String {
    let methods: BTreeSet<&str> = trials.iter().map(|p| p.method.as_str()).collect();
    let lengths = trial_lengths(trials);
    let all: BTreeSet<usize> = lengths
        .supervised
        .union(&lengths.unsupervised)
        .copied()
        .collect();
    format!(
        "{file}: {} trial(s) ({}), max_seq_len {}",
        trials.len(),
        methods.into_iter().collect::<Vec<_>>().join(", "),
        if fitted_by_default {
            "fitted to the data".to_string()
        } else {
            all.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    )
}

/// Shared system-prompt tokens from which `sweep check` tells a head method that keeps them
/// about `system_prompt: drop`.
const LONG_SHARED_PREFIX: usize = 128;

/// A note for head-method trials that read a long system prompt every line shares (the seed's
/// list of classes). Why: a head reads one state, the last prompt token's, and behind a long
/// shared prefix a small model's state hardly depends on the query: CLINC150's 600-token list
/// kept `classifier` near chance (0.035) on models/tiny-base where the query alone reached 0.915
/// (docs/benchmarks.md). `None` when no head trial keeps such a prompt.
fn head_behind_long_prompt_note(
    option: SystemPrompt,
    trials: &[TrialParams],
    shared_prefix: usize,
) -> Option<String> {
    if shared_prefix < LONG_SHARED_PREFIX {
        return None;
    }
    let heads: BTreeSet<&str> = trials
        .iter()
        .filter(|p| p.method.is_head() && !option.drops_for(p.method))
        .map(|p| p.method.as_str())
        .collect();
    if heads.is_empty() {
        return None;
    }
    Some(format!(
        "the {} trials read a {shared_prefix}-token system prompt that every line shares before its query: a head reads the prompt's last token, which so long a prefix can leave blind to the query on a small model; data: {{system_prompt: drop}} drops it for the head methods only",
        heads.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

/// Which trials `data: {system_prompt: drop}` applies to (the head methods) and which keep the
/// system prompt; nothing to say under `keep`.
fn system_prompt_note(option: SystemPrompt, trials: &[TrialParams]) -> Option<String> {
    if option.is_keep() {
        return None;
    }
    let (dropping, keeping): (Vec<&TrialParams>, Vec<&TrialParams>) =
        trials.iter().partition(|p| option.drops_for(p.method));
    let names = |ps: &[&TrialParams]| {
        let set: BTreeSet<&str> = ps.iter().map(|p| p.method.as_str()).collect();
        set.into_iter().collect::<Vec<_>>().join(", ")
    };
    Some(if dropping.is_empty() {
        "data.system_prompt: drop applies to none of the trials: only the head methods (classifier, classifier_lora) drop it".to_string()
    } else if keeping.is_empty() {
        format!(
            "data.system_prompt: drop: every trial ({}) reads its examples without their system prompt",
            names(&dropping)
        )
    } else {
        format!(
            "data.system_prompt: drop applies to {} of {} trials ({}); {} keep the system prompt",
            dropping.len(),
            trials.len(),
            names(&dropping),
            names(&keeping)
        )
    })
}

/// The trial's own tokenizer (a preset's is learned from the training examples).
fn load_tokenizer(model: &ModelSource, train: &DataFile, ctx: &mut Ctx) -> Option<TextTokenizer> {
    match crate::text::tokenizer::load_tokenizer(model, &train.examples) {
        Ok(t) => Some(t),
        Err(e) => {
            ctx.error(
                &[Seg::Key("model".into())],
                Target::Key,
                format!("cannot load the tokenizer: {e:#}"),
                None,
            );
            None
        }
    }
}

/// Without `max_seq_len` in the sweep file, the trials use one fitted to the training data
/// (noted): the lengths to check become that one.
fn fitted_lengths(
    model: &ModelSource,
    lengths: &Lengths,
    train_counts: Option<&TokenCounts>,
    file: &str,
    report: &mut CheckReport,
) -> Option<Lengths> {
    let max_positions = match model {
        ModelSource::Preset(name) => {
            crate::spec::shape::preset(name).map(|c| c.max_position_embeddings)
        }
        // Within a sliding window too: beyond it the model is refused.
        ModelSource::Path(dir) => crate::text::model_folder::read_config(dir)
            .ok()
            .map(|c| c.max_sequence()),
    }?;
    let longest = train_counts?.longest();
    let fitted = crate::spec::params::fitted_max_seq_len(longest, max_positions);
    report.note(format!(
        "{file}: {}",
        crate::plan::fitted_note(fitted, longest, max_positions)
    ));
    let one = |set: &BTreeSet<usize>| -> BTreeSet<usize> {
        if set.is_empty() {
            BTreeSet::new()
        } else {
            BTreeSet::from([fitted as usize])
        }
    };
    Some(Lengths {
        supervised: one(&lengths.supervised),
        unsupervised: one(&lengths.unsupervised),
    })
}

/// The model folder named by `model.path` (config.json, tokenizer.json), or the preset.
fn check_model(yaml: &Yaml, ctx: &mut Ctx) -> Option<ModelSource> {
    let seg = [Seg::Key("model".into()), Seg::Key("path".into())];
    let Some(p) = text_at(yaml, &["model", "path"]) else {
        let preset = text_at(yaml, &["model", "preset"]).unwrap_or_else(|| "tiny".into());
        return Some(ModelSource::Preset(preset));
    };
    let dir = PathBuf::from(&p);
    if !dir.is_dir() {
        let (message, hint) = if dir.exists() {
            (format!("`{p}` is a file; a model folder is expected"), None)
        } else {
            (
                format!("`{p}` not found"),
                Some(
                    "a Hugging Face model folder (config.json, model.safetensors, tokenizer.json), or use `model: {preset: tiny}`"
                        .to_string(),
                ),
            )
        };
        ctx.error(&seg, Target::Value, message, hint);
        return None;
    }
    let mut ok = true;
    for needed in ["config.json", "tokenizer.json"] {
        if !dir.join(needed).is_file() {
            let hint = if needed == "tokenizer.json" && dir.join("tokenizer.model").is_file() {
                "the folder has only a SentencePiece tokenizer.model: transformers writes its tokenizer.json with `AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)`"
            } else {
                "a Hugging Face model folder is expected: config.json, model.safetensors (or shards), tokenizer.json"
            };
            ctx.error(
                &seg,
                Target::Value,
                format!("`{p}` has no {needed}"),
                Some(hint.into()),
            );
            ok = false;
        }
    }
    if !dir.join("model.safetensors").is_file()
        && !dir.join("model.safetensors.index.json").is_file()
    {
        ctx.error(
            &seg,
            Target::Value,
            format!("`{p}` has no model.safetensors (nor model.safetensors.index.json)"),
            None,
        );
        ok = false;
    }
    ok = ok && check_model_config(&dir, ctx.report);
    ok.then(|| ModelSource::Path(std::fs::canonicalize(&dir).unwrap_or(dir)))
}

/// The folder's config.json by the trainer's own rules (`read_checked_config`: the family, its
/// shapes, features it does not build), so what a trial would refuse at its start is refused
/// here first, with the file, the line and the field.
fn check_model_config(dir: &Path, report: &mut CheckReport) -> bool {
    use crate::text::model_folder::{key_line, read_checked_config, ModelFolderError};
    let file = dir.join("config.json").display().to_string();
    let problem = match read_checked_config(dir) {
        Ok(_) => return true,
        Err(ModelFolderError::Shape(e)) => {
            let line = e.field.as_deref().and_then(|f| key_line(dir, f));
            let problem = Problem::error(&file, e.message).at(line, None);
            match e.field.as_deref() {
                Some("model_type") => problem.field("model_type").hint(format!(
                    "sweep builds {}; the README's model table says what is refused and why",
                    Architecture::SUPPORTED
                )),
                Some(field) => problem.field(field),
                None => problem,
            }
        }
        Err(e) => Problem::error(&file, e.to_string()),
    };
    report.push(problem);
    false
}

/// A model with a sliding window (Mistral) computes sequences up to the window as full attention
/// does; a trial's `max_seq_len` beyond it is refused.
fn check_window(model: &ModelSource, lengths: &Lengths, ctx: &mut Ctx) {
    let ModelSource::Path(dir) = model else {
        return;
    };
    let Some(window) = crate::text::model_folder::read_config(dir)
        .ok()
        .and_then(|c| c.attention_window())
    else {
        return;
    };
    let beyond = lengths
        .supervised
        .union(&lengths.unsupervised)
        .copied()
        .filter(|n| *n > window)
        .max();
    if let Some(n) = beyond {
        ctx.error(
            &[Seg::Key("parameters".into()), Seg::Key("max_seq_len".into())],
            Target::Key,
            format!(
                "max_seq_len {n} is beyond the model's sliding_window {window} ({}): sequences longer than the window are not supported",
                dir.join("config.json").display()
            ),
            Some(format!("use a max_seq_len of at most {window}")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trials(methods: &[&str]) -> Vec<TrialParams> {
        methods
            .iter()
            .map(|m| {
                TrialParams::from_assignment(
                    &[("method".to_string(), serde_json::json!(m))]
                        .into_iter()
                        .collect(),
                    1,
                )
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn head_methods_that_keep_a_long_shared_system_prompt_are_told_about_drop() {
        let mixed = trials(&["sft", "lora", "classifier", "classifier_lora"]);
        let note = head_behind_long_prompt_note(SystemPrompt::Keep, &mixed, 606).unwrap();
        assert!(
            note.starts_with(
                "the classifier, classifier_lora trials read a 606-token system prompt"
            ),
            "{note}"
        );
        assert!(note.contains("data: {system_prompt: drop}"), "{note}");
        assert_eq!(
            head_behind_long_prompt_note(SystemPrompt::Keep, &mixed, 40),
            None,
            "a short prompt"
        );
        assert_eq!(
            head_behind_long_prompt_note(SystemPrompt::Drop, &mixed, 606),
            None,
            "the heads drop it"
        );
        let generative = trials(&["sft", "lora"]);
        assert_eq!(
            head_behind_long_prompt_note(SystemPrompt::Keep, &generative, 606),
            None
        );
    }

    #[test]
    fn the_system_prompt_option_names_the_trials_it_applies_to() {
        let mixed = trials(&["sft", "lora", "classifier", "classifier_lora"]);
        assert_eq!(system_prompt_note(SystemPrompt::Keep, &mixed), None);
        assert_eq!(
            system_prompt_note(SystemPrompt::Drop, &mixed).unwrap(),
            "data.system_prompt: drop applies to 2 of 4 trials (classifier, classifier_lora); lora, sft keep the system prompt"
        );
        let none = system_prompt_note(SystemPrompt::Drop, &trials(&["sft"])).unwrap();
        assert!(none.contains("applies to none"), "{none}");
        let all = system_prompt_note(SystemPrompt::Drop, &trials(&["classifier"])).unwrap();
        assert!(all.contains("every trial (classifier)"), "{all}");
    }
}
