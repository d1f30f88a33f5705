//! A sweep file from disk: read once (a regular file, not too large, UTF-8), its text checked
//! (`spec`), then everything it names (`named`).

use std::path::Path;

use super::named::check_named_files;
use super::spec::check_spec_source_counted;
use super::{CheckReport, Problem};
use crate::text::encode::TokenCounts;

/// Sweep files larger than this are not sweep files (and are not read).
const MAX_SPEC_BYTES: u64 = 1 << 20;

/// Reads and checks a sweep file and everything it names.
pub fn check_spec_file(path: &Path) -> CheckReport {
    read_and_check_spec_file(path, None).0
}

/// `check_spec_file`, and what the run needs of its work: the file's text when it could be read
/// (so it is read once) and the training set's token counts when they were measured (so it is
/// tokenized once).
/// `count`: `sweep run --count N` (see `check_spec_source_counted`).
pub fn read_and_check_spec_file(
    path: &Path,
    count: Option<usize>,
) -> (CheckReport, Option<String>, Option<TokenCounts>) {
    let file = path.display().to_string();
    let mut report = CheckReport::default();
    let text = match read_spec(path) {
        Ok(text) => text,
        Err(problem) => {
            report.push(*problem);
            return (report, None, None);
        }
    };
    let checked = check_spec_source_counted(&text, &file, count, &mut report);
    let train_tokens = check_named_files(&checked, &text, &file, &mut report);
    (report, Some(text), train_tokens)
}

fn read_spec(path: &Path) -> Result<String, Box<Problem>> {
    let file = path.display().to_string();
    let fail = |m: String| Box::new(Problem::error(&file, m));
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(fail(
            "is not a regular file; give a sweep file (.yaml)".into(),
        ));
    }
    if meta.len() > MAX_SPEC_BYTES {
        // The file as a whole: 1:1.
        return Err(Box::new(
            Problem::error(
                &file,
                format!(
                    "is {} bytes; a sweep file is a few lines of YAML",
                    meta.len()
                ),
            )
            .at(Some(1), Some(1)),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + valid.iter().filter(|b| **b == b'\n').count();
        let line_start = valid
            .iter()
            .rposition(|b| *b == b'\n')
            .map(|i| i + 1)
            .unwrap_or(0);
        let column = String::from_utf8_lossy(&valid[line_start..])
            .chars()
            .count()
            + 1;
        Box::new(
            Problem::error(&file, "invalid UTF-8")
                .at(Some(line), Some(column))
                .hint("save the sweep file as UTF-8"),
        )
    })
}
