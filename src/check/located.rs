//! Problems of one sweep file, each placed at a line and column: the node that is wrong, or for
//! a key that is missing the block that lacks it, or 1:1 for the file as a whole. No problem of
//! a sweep file's text goes without a place.

use super::yaml::{locate, Seg, Target};
use super::{CheckReport, Problem, Severity};

/// Where problems of one sweep file go, with the text to place them in.
pub struct Ctx<'a> {
    pub text: &'a str,
    pub file: &'a str,
    pub report: &'a mut CheckReport,
    /// Errors pushed so far.
    pub errors: usize,
    /// The file sweeps a user's own program (`program`/`command`): its parameters are the
    /// program's, any name.
    pub program: bool,
}

impl<'a> Ctx<'a> {
    pub fn new(text: &'a str, file: &'a str, report: &'a mut CheckReport) -> Self {
        Self {
            text,
            file,
            report,
            errors: 0,
            program: false,
        }
    }

    /// A problem at `path` (the whole file when empty), named by its dotted path.
    pub fn push(
        &mut self,
        severity: Severity,
        path: &[Seg],
        target: Target,
        message: String,
        hint: Option<String>,
    ) {
        let mut p = match severity {
            Severity::Error => Problem::error(self.file, message),
            Severity::Warning => Problem::warning(self.file, message),
        }
        .maybe_hint(hint);
        if !path.is_empty() {
            p = p.field(dotted(path));
        }
        self.push_at(p, path, target);
    }

    pub fn error(&mut self, path: &[Seg], target: Target, message: String, hint: Option<String>) {
        self.push(Severity::Error, path, target, message, hint);
    }

    /// An error of the file as a whole (it is empty): at 1:1.
    pub fn file_error(&mut self, message: String, hint: Option<String>) {
        self.errors += 1;
        self.report.push(
            Problem::error(self.file, message)
                .at(Some(1), Some(1))
                .maybe_hint(hint),
        );
    }

    /// `problem`, placed at `path` (see `place`).
    pub fn push_at(&mut self, problem: Problem, path: &[Seg], target: Target) {
        // Placing re-reads the document; not worth it for a problem that is only counted.
        let at = if self.report.is_full(self.file) {
            (1, 1)
        } else {
            place(self.text, path, target)
        };
        if problem.severity == Severity::Error {
            self.errors += 1;
        }
        self.report.push(problem.at(Some(at.0), Some(at.1)));
    }
}

/// Where a problem at `path` is shown: the node at `path` when it is in the text; else the
/// nearest block above it that is (a missing key is its block's problem); else 1:1, the file
/// as a whole.
pub fn place(text: &str, path: &[Seg], target: Target) -> (usize, usize) {
    if path.is_empty() {
        return locate(text, path, Target::Value).unwrap_or((1, 1));
    }
    if let Some(at) = locate(text, path, target) {
        return at;
    }
    (1..path.len())
        .rev()
        .find_map(|n| locate(text, &path[..n], Target::Key))
        .unwrap_or((1, 1))
}

/// `parameters.lr.values[1]`.
pub fn dotted(path: &[Seg]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// `path` one step further.
pub fn with(path: &[Seg], seg: Seg) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(seg);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_is_placed_at_its_block_and_the_file_at_its_start() {
        let text = "# a sweep\nname: t\nearly_terminate:\n  type: hyperband\n";
        let path = |p: &str| Seg::parse_path(p);
        assert_eq!(place(text, &path("name"), Target::Value), (2, 7));
        assert_eq!(
            place(text, &path("early_terminate.min_iter"), Target::Value),
            (3, 1)
        );
        assert_eq!(place(text, &path("run_cap"), Target::Value), (1, 1));
        assert_eq!(place("- a\n- b\n", &[], Target::Value), (1, 1));
        assert_eq!(place("", &[], Target::Value), (1, 1));
        assert_eq!(
            dotted(&path("parameters.lr.values[1]")),
            "parameters.lr.values[1]"
        );
    }
}
