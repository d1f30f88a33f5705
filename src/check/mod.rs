//! Check before you spend: every problem of a sweep file and its data, found before anything
//! trains, each with file, line (and column or field), what was expected and how to fix it.
//!
//! `sweep check` prints a `CheckReport`; `sweep run` computes the same report and refuses to
//! start on any error. The checks collect all problems (up to `MAX_PER_FILE` shown per file)
//! instead of stopping at the first, so one round of fixes is usually enough.
//!
//! - `spec`: YAML syntax, impossible values, the grid, every trial's parameters; `walk`: unknown
//!   keys and types, on the spec's own schema; `named`: the data files, the model folder and
//!   token lengths the sweep file names; `located`: every problem's line and column;
//!   `sweep_file`: the file read once, then all of the above.
//! - `data`: one file of JSON lines: encoding, line ends, pretty-printed JSON, fields, duplicates.
//! - `files`: across train and dev: labels, leaks, and the seed's naming mistakes.
//! - `levels`: `data.label_separator` against the training labels it splits.
//! - `tokens`: lengths with the model's tokenizer against every `max_seq_len` the sweep uses.
//!
//! **Reuses the rules of spec, text and plan instead of restating them; never imports the
//! trainer.** The keys of a sweep file come from the spec's own types (`spec::schema`).

pub mod data;
pub mod files;
pub mod levels;
pub mod located;
pub mod named;
pub mod paths;
pub mod program;
pub mod spec;
pub mod sweep_file;
pub mod tokens;
pub mod walk;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::plan::{Plan, PlanError, PlanOptions};
use crate::spec::SweepSpec;
use crate::text::encode::TokenCounts;

/// Problems shown per file; the rest are counted.
pub const MAX_PER_FILE: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Nothing trains while there is one.
    Error,
    /// Printed; does not stop a sweep.
    Warning,
}

/// One problem, rendered as `file:line:column: error: field: message (hint: ...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub severity: Severity,
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub field: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub fn error(file: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            file: file.into(),
            line: None,
            column: None,
            field: None,
            message: message.into(),
            hint: None,
        }
    }

    pub fn warning(file: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(file, message)
        }
    }

    pub fn at(mut self, line: Option<usize>, column: Option<usize>) -> Self {
        self.line = line;
        self.column = column;
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn maybe_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint.or(self.hint);
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, ": {severity}: ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// Everything a check found: problems (capped per file), counts, and notes (what was checked).
#[derive(Debug, Default, Clone)]
pub struct CheckReport {
    pub problems: Vec<Problem>,
    /// Per file: (errors, warnings) found beyond `MAX_PER_FILE`.
    pub hidden: BTreeMap<String, (usize, usize)>,
    /// One-line facts: example counts, labels, trials.
    pub notes: Vec<String>,
    shown: BTreeMap<String, usize>,
}

impl CheckReport {
    pub fn push(&mut self, problem: Problem) {
        let shown = self.shown.entry(problem.file.clone()).or_default();
        if *shown < MAX_PER_FILE {
            *shown += 1;
            self.problems.push(problem);
        } else {
            let hidden = self.hidden.entry(problem.file).or_default();
            match problem.severity {
                Severity::Error => hidden.0 += 1,
                Severity::Warning => hidden.1 += 1,
            }
        }
    }

    /// Whether further problems of `file` would only be counted (so need no locating).
    pub fn is_full(&self, file: &str) -> bool {
        self.shown.get(file).is_some_and(|n| *n >= MAX_PER_FILE)
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn merge(&mut self, other: CheckReport) {
        for p in other.problems {
            self.push(p);
        }
        for (file, (e, w)) in other.hidden {
            let h = self.hidden.entry(file).or_default();
            h.0 += e;
            h.1 += w;
        }
        self.notes.extend(other.notes);
    }

    fn count(&self, severity: Severity) -> usize {
        let hidden: usize = self
            .hidden
            .values()
            .map(|(e, w)| if severity == Severity::Error { *e } else { *w })
            .sum();
        hidden
            + self
                .problems
                .iter()
                .filter(|p| p.severity == severity)
                .count()
    }

    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    pub fn has_errors(&self) -> bool {
        self.errors() > 0
    }

    /// The problems, one a line, and a line per file whose further problems were not shown.
    pub fn render_problems(&self) -> String {
        let mut out = String::new();
        for p in &self.problems {
            out.push_str(&format!("{p}\n"));
        }
        for (file, (e, w)) in &self.hidden {
            out.push_str(&format!(
                "{file}: ... and {} more problem(s) not shown ({e} error(s), {w} warning(s))\n",
                e + w
            ));
        }
        out
    }

    /// The summary line: `check: 3 errors, 1 warning` or `check: ok (1 warning)`.
    pub fn summary(&self) -> String {
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        match (self.errors(), self.warnings()) {
            (0, 0) => "check: ok".to_string(),
            (0, w) => format!("check: ok ({})", plural(w, "warning")),
            (e, w) => format!("check: {}, {}", plural(e, "error"), plural(w, "warning")),
        }
    }

    /// Problems, notes and the summary: what `sweep check` prints.
    pub fn render(&self) -> String {
        let mut out = self.render_problems();
        for n in &self.notes {
            out.push_str(&format!("{n}\n"));
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }
}

/// Whether a path names a sweep file (by its extension) rather than a data file.
pub fn is_spec_path(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_lowercase)
            .as_deref(),
        Some("yaml" | "yml")
    )
}

/// `sweep check PATH...`: sweep files (.yaml/.yml) are checked with their data and tokenizer;
/// all other paths are data files, checked one by one and then as a train/dev pair.
/// `count`: `sweep check --count N`, the trials `sweep run --count N` would run (a random or
/// bayes sweep without `run_cap` needs one or the other).
pub fn check_paths(paths: &[PathBuf], count: Option<usize>) -> CheckReport {
    let mut report = CheckReport::default();
    let (specs, data): (Vec<&PathBuf>, Vec<&PathBuf>) = paths.iter().partition(|p| is_spec_path(p));
    for spec in specs {
        report.merge(sweep_file::read_and_check_spec_file(spec, count).0);
    }
    if !data.is_empty() {
        let data: Vec<PathBuf> = data.into_iter().cloned().collect();
        report.merge(check_data_files(&data));
    }
    report
}

/// A sweep file with everything it names: the spec itself, its data files (alone and as a pair),
/// the model folder, and every example's length under every `max_seq_len` the trials use.
pub fn check_spec_file(path: &Path) -> CheckReport {
    sweep_file::check_spec_file(path)
}

/// A sweep file that passed every check. `gate` is the only way to make one, and the run loop
/// (`orchestrator::runner::run`) takes nothing else, so no caller can start a sweep that did not
/// pass check. The file is read once: the checks and the run see the same text.
#[derive(Debug)]
pub struct CheckedSpec {
    path: PathBuf,
    text: String,
    spec: SweepSpec,
    report: CheckReport,
    train_tokens: Option<TokenCounts>,
}

impl CheckedSpec {
    pub fn spec(&self) -> &SweepSpec {
        &self.spec
    }
    /// The sweep file's text, as checked (frozen into the results folder).
    pub fn text(&self) -> &str {
        &self.text
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The warnings found (there are no errors).
    pub fn report(&self) -> &CheckReport {
        &self.report
    }
    /// Plans the checked sweep, with the training set's token counts the checks measured.
    pub fn plan(&self, options: PlanOptions) -> Result<Plan, PlanError> {
        Plan::measured(&self.spec, &self.path, options, self.train_tokens.as_ref())
    }
}

/// Every check of `check_spec_file`; the checked spec when none failed, else the report.
pub fn gate(path: &Path) -> Result<CheckedSpec, CheckReport> {
    gate_counted(path, None)
}

/// [`gate`] for `sweep run FILE --count N`: at most N trials, as `wandb agent --count N`.
pub fn gate_counted(path: &Path, count: Option<usize>) -> Result<CheckedSpec, CheckReport> {
    let (mut report, text, train_tokens) = sweep_file::read_and_check_spec_file(path, count);
    let Some(text) = text.filter(|_| !report.has_errors()) else {
        return Err(report);
    };
    match SweepSpec::from_yaml_counted(&text, &path.display().to_string(), count) {
        Ok(spec) => Ok(CheckedSpec {
            path: path.to_path_buf(),
            text,
            spec,
            report,
            train_tokens,
        }),
        // The checks accept only what parses; this guards that promise.
        Err(e) => {
            report.push(
                Problem::error(path.display().to_string(), e.to_string()).at(Some(1), Some(1)),
            );
            Err(report)
        }
    }
}

/// Data files given on the command line: each on its own, then train against dev.
pub fn check_data_files(paths: &[PathBuf]) -> CheckReport {
    files::check_data_files(paths)
}
