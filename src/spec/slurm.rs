//! The Slurm settings of a sweep file (`resources: {executor: slurm, partition, time, account,
//! qos, sbatch_args}`): their checks, and Slurm's time format. Pure: nothing here runs Slurm.

use crate::spec::{ExecutorKind, Invalid, ResourcesSpec};

/// sbatch options sweep derives for every trial; `sbatch_args` may not set them.
pub const DERIVED_OPTIONS: [(&str, &str); 14] = [
    ("--gres", "from the trial's `gpus`"),
    ("--gpus", "from the trial's `gpus` (as --gres=gpu:k)"),
    ("--mem", "from the trial's memory estimate"),
    ("--cpus-per-task", "from the cluster's CPUs per GPU"),
    ("--time", "from `resources.time`"),
    ("--partition", "from `resources.partition`"),
    ("--account", "from `resources.account`"),
    ("--qos", "from `resources.qos`"),
    ("--job-name", "as sweep-NAME-TRIAL"),
    ("--output", "into the trial folder"),
    ("--error", "into the trial folder's train.log"),
    ("--chdir", "as the trial folder"),
    ("--wrap", "sweep submits a batch script of its own"),
    ("--array", "sweep submits one job per trial"),
];

/// Short forms of derived options.
const DERIVED_SHORT: [(&str, &str); 8] = [
    ("-p", "--partition"),
    ("-t", "--time"),
    ("-A", "--account"),
    ("-q", "--qos"),
    ("-J", "--job-name"),
    ("-o", "--output"),
    ("-e", "--error"),
    ("-c", "--cpus-per-task"),
];

/// Problems of the Slurm settings, as (field under `resources`, message).
pub fn resource_problems(r: &ResourcesSpec) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let slurm = r.executor() == ExecutorKind::Slurm;
    let only_slurm = [
        ("partition", r.partition.is_some()),
        ("time", r.time.is_some()),
        ("account", r.account.is_some()),
        ("qos", r.qos.is_some()),
        ("sbatch_args", r.sbatch_args.is_some()),
    ];
    for (name, given) in only_slurm {
        if given && !slurm {
            out.push((
                name,
                "is a Slurm setting: add `executor: slurm`, or remove it".to_string(),
            ));
        }
    }
    if slurm && r.slots.is_some() {
        out.push((
            "slots",
            "is a setting of the local pool; with `executor: slurm`, Slurm places trials (remove it)"
                .to_string(),
        ));
    }
    for (name, value) in [
        ("partition", &r.partition),
        ("account", &r.account),
        ("qos", &r.qos),
    ] {
        if let Some(v) = value {
            if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                out.push((name, format!("`{v}` must be one word")));
            }
        }
    }
    if let Some(t) = &r.time {
        if let Err(e) = parse_time_seconds(t) {
            out.push(("time", e.0));
        }
    }
    for arg in r.sbatch_args.iter().flatten() {
        if let Some(message) = sbatch_arg_problem(arg) {
            out.push(("sbatch_args", message));
        }
    }
    out
}

/// Why one extra sbatch argument is not allowed, if it is not.
pub fn sbatch_arg_problem(arg: &str) -> Option<String> {
    if arg.chars().any(|c| c == '\n' || c == '\0') {
        return Some(format!(
            "{arg:?}: one argument per item, without line breaks"
        ));
    }
    if !arg.starts_with('-') {
        return Some(format!(
            "`{arg}` is not an option; give each as one item, e.g. `--constraint=a100`"
        ));
    }
    let name = arg.split('=').next().unwrap_or(arg);
    if let Some((_, why)) = DERIVED_OPTIONS.iter().find(|(o, _)| *o == name) {
        return Some(format!("`{arg}`: sweep sets {name} itself ({why})"));
    }
    for (short, long) in DERIVED_SHORT {
        if arg == short || (arg.starts_with(short) && !arg.starts_with("--")) {
            return Some(format!("`{arg}`: sweep sets {long} itself"));
        }
    }
    None
}

/// Reads a Slurm time limit (`minutes`, `minutes:seconds`, `hours:minutes:seconds`,
/// `days-hours`, `days-hours:minutes`, `days-hours:minutes:seconds`) as seconds.
pub fn parse_time_seconds(text: &str) -> Result<u64, Invalid> {
    let bad = || {
        Invalid(format!(
            "`{text}` is not a Slurm time limit (minutes, or HH:MM:SS, or D-HH:MM:SS)"
        ))
    };
    let t = text.trim();
    let number = |s: &str| -> Result<u64, Invalid> {
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) || s.len() > 9 {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let (days, rest) = match t.split_once('-') {
        Some((d, rest)) => (Some(number(d)?), rest),
        None => (None, t),
    };
    let parts: Vec<u64> = rest.split(':').map(number).collect::<Result<_, _>>()?;
    let seconds = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
        _ => return Err(bad()),
    };
    if seconds == 0 {
        return Err(Invalid(format!(
            "`{text}`: the time limit must be positive"
        )));
    }
    Ok(seconds)
}

/// Seconds as Slurm writes a time limit (`D-HH:MM:SS` or `HH:MM:SS`).
pub fn format_time(seconds: u64) -> String {
    let (d, rest) = (seconds / 86400, seconds % 86400);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_time_formats_are_read_as_seconds() {
        assert_eq!(parse_time_seconds("90"), Ok(5400));
        assert_eq!(parse_time_seconds("5:30"), Ok(330));
        assert_eq!(parse_time_seconds("1:30:00"), Ok(5400));
        assert_eq!(parse_time_seconds("2-0"), Ok(172_800));
        assert_eq!(parse_time_seconds("1-02:03"), Ok(93_780));
        assert_eq!(parse_time_seconds("1-02:03:04"), Ok(93_784));
        for bad in ["", "abc", "1:2:3:4", "-5", "0", "1h", "1-", "9999999999"] {
            assert!(parse_time_seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(format_time(93_784), "1-02:03:04");
        assert_eq!(format_time(330), "00:05:30");
    }

    #[test]
    fn derived_options_and_misplaced_settings_are_refused() {
        assert!(sbatch_arg_problem("--constraint=a100").is_none());
        assert!(sbatch_arg_problem("--exclusive").is_none());
        assert!(sbatch_arg_problem("--mem=4G")
            .unwrap()
            .contains("memory estimate"));
        assert!(sbatch_arg_problem("-pdebug")
            .unwrap()
            .contains("--partition"));
        assert!(sbatch_arg_problem("--gres=gpu:2").is_some());
        assert!(sbatch_arg_problem("--constraint a100").is_none());
        assert!(sbatch_arg_problem("a100")
            .unwrap()
            .contains("not an option"));
        let local = ResourcesSpec {
            partition: Some("gpu".into()),
            ..Default::default()
        };
        let p = resource_problems(&local);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "partition");
        let slurm = ResourcesSpec {
            executor: Some(ExecutorKind::Slurm),
            partition: Some("my gpu".into()),
            time: Some("1h".into()),
            slots: Some(2),
            ..Default::default()
        };
        let fields: Vec<&str> = resource_problems(&slurm).iter().map(|p| p.0).collect();
        assert_eq!(fields, vec!["slots", "partition", "time"]);
    }
}
