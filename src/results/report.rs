//! `sweep report`: the leaderboard and, for each swept parameter, the metric's mean and max per
//! value, computed with polars from results.csv. Table layout follows polars' `POLARS_FMT_*`
//! environment, which the command line sets once at start (`TABLE_FORMAT`).

use std::path::Path;

use crate::results::{by_parameter, cost, leaderboard, read_csv, Result, ResultsError};
use crate::spec::SweepSpec;

/// polars' table settings for whole, compact tables however many trials: set by the command line
/// before any thread starts (setting the environment later is unsound).
pub const TABLE_FORMAT: [(&str, &str); 5] = [
    ("POLARS_FMT_MAX_ROWS", "1000"),
    ("POLARS_FMT_MAX_COLS", "30"),
    ("POLARS_TABLE_WIDTH", "220"),
    ("POLARS_FMT_TABLE_HIDE_DATAFRAME_SHAPE_INFORMATION", "1"),
    ("POLARS_FMT_TABLE_HIDE_COLUMN_DATA_TYPES", "1"),
];

pub fn render(dir: &Path) -> Result<String> {
    let spec_path = dir.join("spec.yaml");
    let spec = SweepSpec::read_frozen(&spec_path).map_err(|e| ResultsError::File {
        path: dir.to_path_buf(),
        message: format!("not a results folder ({e})"),
    })?;
    let df = read_csv(dir)?;
    let swept: Vec<String> = spec
        .swept_parameters()
        .into_iter()
        .filter(|p| df.column(p).is_ok())
        .collect();
    let mut out = format!(
        "\nleaderboard ({}, {}):\n{}\n",
        spec.metric.name.column(),
        match spec.metric.goal() {
            crate::spec::Goal::Maximize => "higher is better",
            crate::spec::Goal::Minimize => "lower is better",
        },
        leaderboard(&df, &spec.metric, &swept)?
    );
    let costs = cost::summarise(&cost::trial_costs(&df)?);
    if !costs.is_empty() {
        out.push_str(&format!(
            "\nby method: accuracy against cost (train seconds per epoch and seconds per evaluation, means over its trials; the cheapest within a point of the best accuracy marked):\n{}\n",
            cost::table(&costs)?
        ));
    }
    for p in &swept {
        out.push_str(&format!(
            "\nby {p}:\n{}\n",
            by_parameter(&df, &spec.metric, p)?
        ));
    }
    if let Ok(best) = crate::results::read_best(dir) {
        out.push_str(&format!(
            "\nbest: trial {:04}, {} {:.4}, checkpoint {}\n",
            best.trial,
            best.metric,
            best.value,
            best.checkpoint.display()
        ));
    }
    Ok(out)
}
