//! Part 5: each benchmark's measured peak (part 3) against the plan-time estimate of the same
//! step, which is what decides whether a trial may start.

use crate::diagnostics::speed::BenchResult;
use crate::diagnostics::table::{row, Row, Status};

/// Whether an estimate is good enough for planning: never more than 15 % below the measured peak
/// (too low lets a trial start that will not fit), and at most twice it (too high refuses or
/// shrinks trials that would have fitted).
pub fn estimate_status(estimate_mb: f64, measured_mb: f64) -> Status {
    if !(estimate_mb.is_finite() && measured_mb.is_finite() && measured_mb > 0.0) {
        Status::Fail
    } else {
        Status::of(estimate_mb >= 0.85 * measured_mb && estimate_mb <= 2.0 * measured_mb)
    }
}

/// Part 5's rows; in a dry run the CPU's figures are shown, not judged.
pub fn rows(measured: &[BenchResult], dry_run: bool) -> Vec<Row> {
    measured
        .iter()
        .map(|r| {
            let (peak, what) = match r.peak_device_mb {
                Some(m) => (m, "device"),
                None => (r.peak_rss_mb, "resident"),
            };
            let status = if dry_run {
                Status::Info
            } else if r.peak_device_mb.is_none() {
                Status::NotRun
            } else {
                estimate_status(r.estimate_mb, peak)
            };
            row(
                "5 memory",
                format!("{} {} {}x{}: estimate vs measured", r.shape, r.method, r.batch, r.seq),
                format!(
                    "estimate {:.0} MiB, measured {peak:.0} MiB {what} (ratio {:.2}; pass: 0.85 to 2){}",
                    r.estimate_mb,
                    r.estimate_mb / peak,
                    if status == Status::NotRun { "; nvidia-smi gave no reading" } else { "" }
                ),
                status,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_pass_between_a_little_under_and_twice_the_measurement() {
        assert_eq!(estimate_status(1000.0, 1000.0), Status::Pass);
        assert_eq!(estimate_status(860.0, 1000.0), Status::Pass);
        assert_eq!(estimate_status(800.0, 1000.0), Status::Fail);
        assert_eq!(estimate_status(2100.0, 1000.0), Status::Fail);
        assert_eq!(estimate_status(1000.0, 0.0), Status::Fail);
    }
}
