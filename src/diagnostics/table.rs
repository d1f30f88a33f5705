//! The check's one table: a row per check, how it came out, and the exit status it gives.

use std::process::ExitCode;

/// How a row came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// A measurement with nothing to judge it against.
    Info,
    /// Not run, with the reason in the row.
    NotRun,
}

impl Status {
    fn as_str(&self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Info => "info",
            Status::NotRun => "not run",
        }
    }

    /// Pass when `condition` holds, else fail.
    pub fn of(condition: bool) -> Status {
        if condition {
            Status::Pass
        } else {
            Status::Fail
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub part: &'static str,
    pub check: String,
    pub result: String,
    pub status: Status,
}

pub fn row(
    part: &'static str,
    check: impl Into<String>,
    result: impl Into<String>,
    status: Status,
) -> Row {
    Row {
        part,
        check: check.into(),
        result: result.into(),
        status,
    }
}

/// The row of a part that stopped with an error before its own rows.
pub fn failed_part(part: &'static str, error: &anyhow::Error) -> Row {
    row(part, "runs to the end", format!("{error:#}"), Status::Fail)
}

/// Pass when `value` is within `tolerance`.
pub fn judged(value: f64, tolerance: f64) -> Status {
    Status::of(value.is_finite() && value <= tolerance)
}

/// The table as printed: fixed columns, one row per check.
pub fn render(rows: &[Row]) -> String {
    let w_check = rows.iter().map(|r| r.check.len()).max().unwrap_or(5).max(5);
    let w_part = rows.iter().map(|r| r.part.len()).max().unwrap_or(4).max(4);
    let mut out = format!(
        "{:<w_part$}  {:<w_check$}  {:<7}  result\n",
        "part", "check", "status"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<w_part$}  {:<w_check$}  {:<7}  {}\n",
            r.part,
            r.check,
            r.status.as_str(),
            r.result
        ));
    }
    out
}

/// The line under the table: how many checks passed, failed and did not run.
pub fn summary(rows: &[Row], work: &std::path::Path) -> String {
    let count = |s: Status| rows.iter().filter(|r| r.status == s).count();
    format!(
        "{} checks: {} passed, {} failed, {} not run; work folder {}",
        rows.len(),
        count(Status::Pass),
        count(Status::Fail),
        count(Status::NotRun),
        work.display()
    )
}

/// Exit status of the whole check: failure when any row failed.
pub fn exit_status(rows: &[Row]) -> ExitCode {
    if rows.iter().any(|r| r.status == Status::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_failed_row_fails_the_check_and_not_run_does_not() {
        let ok = vec![
            row("1", "a", "x", Status::Pass),
            row("3", "b", "y", Status::NotRun),
        ];
        assert_eq!(exit_status(&ok), ExitCode::SUCCESS);
        let mut bad = ok.clone();
        bad.push(row("4", "c", "z", Status::Fail));
        assert_eq!(exit_status(&bad), ExitCode::from(1));
        let table = render(&bad);
        assert!(
            table.lines().count() == 4 && table.contains("FAIL"),
            "{table}"
        );
        assert_eq!(
            summary(&bad, std::path::Path::new("/w")),
            "3 checks: 1 passed, 1 failed, 1 not run; work folder /w"
        );
    }

    #[test]
    fn a_value_passes_within_its_tolerance_and_nan_never_does() {
        assert_eq!(judged(1e-5, 1e-4), Status::Pass);
        assert_eq!(judged(1e-3, 1e-4), Status::Fail);
        assert_eq!(judged(f64::NAN, 1.0), Status::Fail);
    }
}
