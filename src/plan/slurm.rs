//! A Slurm cluster as planning sees it: the nodes of the partition (CPUs, memory, GPUs) and its
//! time limit, read with `sinfo` before anything is submitted, and what each trial asks of it
//! (GPUs, CPUs, memory with a margin, time). A trial no node of the partition could ever run is
//! refused here, with the reason, instead of pending forever. Parsing and deciding are pure
//! functions; `read_cluster` is the one place that runs a command.

use std::process::Command;

use serde::Serialize;

use crate::spec::slurm::{format_time, parse_time_seconds};
use crate::spec::Invalid;

/// One node of a partition, as `sinfo -N` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub name: String,
    pub cpus: u32,
    pub memory_mb: u64,
    /// GPUs in its generic resources (`gpu:4`, `gpu:a100:8(S:0-1)`).
    pub gpus: u32,
    /// Slurm's state (`idle`, `mixed`, `drained`, ...).
    pub state: String,
}

/// The partition trials are submitted to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    pub partition: String,
    pub nodes: Vec<Node>,
    /// The partition's MaxTime in seconds; None when unlimited.
    pub max_time_s: Option<u64>,
}

/// What one trial's job asks of Slurm (the derived sbatch options).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRequest {
    /// `--gres=gpu:k`
    pub gpus: u32,
    /// `--cpus-per-task`, also the trial's threads.
    pub cpus: u32,
    /// `--mem`, MiB.
    pub memory_mb: u64,
    /// `--time`, seconds (None: the partition's default).
    pub time_s: Option<u64>,
}

/// The sinfo format `parse_sinfo` reads: partition (`*` marks the default), node, CPUs, memory
/// (MiB), generic resources, time limit, state.
pub const SINFO_FORMAT: &str = "%P|%N|%c|%m|%G|%l|%T";

/// One line of `sinfo -h -N -o SINFO_FORMAT`.
#[derive(Debug, Clone, PartialEq)]
pub struct SinfoRow {
    pub partition: String,
    pub default: bool,
    pub node: Node,
    pub time_limit: String,
}

/// A line of sinfo's output that cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("sinfo output line {line}: {what} in `{text}`")]
pub struct SinfoError {
    pub line: usize,
    pub what: &'static str,
    pub text: String,
}

pub fn parse_sinfo(text: &str) -> Result<Vec<SinfoRow>, SinfoError> {
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        let bad = |what: &'static str| SinfoError {
            line: n + 1,
            what,
            text: line.to_string(),
        };
        if f.len() != 7 {
            return Err(bad("expected 7 fields"));
        }
        let (partition, default) = match f[0].strip_suffix('*') {
            Some(p) => (p.to_string(), true),
            None => (f[0].to_string(), false),
        };
        // Memory may read `16000+` when nodes differ; the smallest is what is promised.
        let number = |s: &str| s.trim_end_matches('+').parse::<u64>();
        rows.push(SinfoRow {
            partition,
            default,
            time_limit: f[5].to_string(),
            node: Node {
                name: f[1].to_string(),
                cpus: number(f[2]).map_err(|_| bad("unreadable CPUs"))? as u32,
                memory_mb: number(f[3]).map_err(|_| bad("unreadable memory"))?,
                gpus: gres_gpus(f[4]),
                state: f[6].to_string(),
            },
        });
    }
    Ok(rows)
}

/// GPUs in a GRES string: `gpu:4`, `gpu:a100:4(S:0-1)`, `gpu:2,mps:200`, `(null)`.
pub fn gres_gpus(gres: &str) -> u32 {
    gres.split(',')
        .filter_map(|item| {
            let item = item.split('(').next().unwrap_or(item);
            let mut parts = item.split(':');
            (parts.next()? == "gpu").then_some(())?;
            parts.next_back()?.parse::<u32>().ok()
        })
        .sum()
}

/// A time limit as sinfo writes it; None for unlimited.
pub fn parse_limit(text: &str) -> Result<Option<u64>, Invalid> {
    match text {
        "infinite" | "INFINITE" | "UNLIMITED" | "unlimited" | "n/a" | "NONE" => Ok(None),
        t => parse_time_seconds(t).map(Some),
    }
}

/// The partition named (or the default one) out of sinfo's rows.
pub fn cluster_from_rows(
    rows: &[SinfoRow],
    partition: Option<&str>,
) -> Result<Cluster, ClusterError> {
    let name = match partition {
        Some(p) => p.to_string(),
        None => rows
            .iter()
            .find(|r| r.default)
            .map(|r| r.partition.clone())
            .ok_or(ClusterError::NoDefaultPartition)?,
    };
    let mine: Vec<&SinfoRow> = rows.iter().filter(|r| r.partition == name).collect();
    if mine.is_empty() {
        let mut known: Vec<String> = rows.iter().map(|r| r.partition.clone()).collect();
        known.dedup();
        return Err(ClusterError::NoSuchPartition { name, known });
    }
    Ok(Cluster {
        max_time_s: parse_limit(&mine[0].time_limit).map_err(|e| ClusterError::TimeLimit {
            partition: name.clone(),
            problem: e,
        })?,
        partition: name,
        nodes: mine.iter().map(|r| r.node.clone()).collect(),
    })
}

/// Why no node of the partition could ever run a trial's job.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobRefusal {
    #[error("asks for a time limit of {} but partition `{partition}` allows at most {}; it would never start", format_time(*asked_s), format_time(*most_s))]
    TooLong {
        partition: String,
        asked_s: u64,
        most_s: u64,
    },
    #[error("asks for {gpus} GPUs but no node of partition `{partition}` has more than {most}; it would never start")]
    TooManyGpus {
        partition: String,
        gpus: u32,
        most: u32,
    },
    #[error("needs about {memory_mb} MiB of memory but the nodes of partition `{partition}` with {gpus} GPUs have at most {most_mb} MiB; it would never start")]
    TooMuchMemory {
        partition: String,
        memory_mb: u64,
        gpus: u32,
        most_mb: u64,
    },
}

/// Host memory a job asks for: what the trial's replicas are predicted to use (`per_device_mb`
/// each), plus a quarter and 256 MiB for what the estimate leaves out.
pub fn memory_request_mb(per_device_mb: f64, gpus: u32) -> u64 {
    (per_device_mb * f64::from(gpus.max(1)) * 1.25 + 256.0).ceil() as u64
}

/// What trial asks of the cluster, or why no node of the partition could ever run it.
pub fn job_request(
    cluster: &Cluster,
    gpus: u32,
    per_device_mb: Option<f64>,
    time_s: Option<u64>,
) -> Result<JobRequest, JobRefusal> {
    if let (Some(t), Some(max)) = (time_s, cluster.max_time_s) {
        if t > max {
            return Err(JobRefusal::TooLong {
                partition: cluster.partition.clone(),
                asked_s: t,
                most_s: max,
            });
        }
    }
    let most_gpus = cluster.nodes.iter().map(|n| n.gpus).max().unwrap_or(0);
    let usable: Vec<&Node> = cluster.nodes.iter().filter(|n| n.gpus >= gpus).collect();
    if usable.is_empty() {
        return Err(JobRefusal::TooManyGpus {
            partition: cluster.partition.clone(),
            gpus,
            most: most_gpus,
        });
    }
    let memory_mb = per_device_mb
        .map(|m| memory_request_mb(m, gpus))
        .unwrap_or(0);
    let most_memory = usable.iter().map(|n| n.memory_mb).max().unwrap_or(0);
    if memory_mb > most_memory {
        return Err(JobRefusal::TooMuchMemory {
            partition: cluster.partition.clone(),
            memory_mb,
            gpus,
            most_mb: most_memory,
        });
    }
    // CPUs in proportion to the GPUs, on the node that offers the most per GPU.
    let cpus = usable
        .iter()
        .map(|n| {
            let per_gpu = n.cpus.checked_div(n.gpus).unwrap_or(n.cpus).max(1);
            (per_gpu * gpus.max(1)).min(n.cpus)
        })
        .max()
        .unwrap_or(1)
        .max(1);
    Ok(JobRequest {
        gpus,
        cpus,
        memory_mb: memory_mb.max(1),
        time_s,
    })
}

/// Why the cluster cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot run sinfo ({0}): with `executor: slurm`, Slurm's client commands (sinfo, sbatch, squeue, scancel) must be on PATH")]
    NoSinfo(String),
    #[error("sinfo failed: {0}")]
    SinfoFailed(String),
    #[error(transparent)]
    Unreadable(#[from] SinfoError),
    #[error("the cluster has no default partition; set `resources.partition`")]
    NoDefaultPartition,
    #[error("partition `{name}` not found; sinfo lists {}", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    NoSuchPartition { name: String, known: Vec<String> },
    #[error("{problem}")]
    TimeLimit { partition: String, problem: Invalid },
}

/// Reads the partition (or the default one) with `sinfo`.
pub fn read_cluster(partition: Option<&str>) -> Result<Cluster, ClusterError> {
    let out = Command::new("sinfo")
        .args(["-h", "-N", "-o", SINFO_FORMAT])
        .output()
        .map_err(|e| ClusterError::NoSinfo(e.to_string()))?;
    if !out.status.success() {
        return Err(ClusterError::SinfoFailed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let rows = parse_sinfo(&String::from_utf8_lossy(&out.stdout))?;
    cluster_from_rows(&rows, partition)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINFO: &str = "debug*|localhost|8|16000|gpu:4|2:00:00|idle\n\
        gpu|a1|64|512000|gpu:a100:8(S:0-1)|2-00:00:00|mixed\n\
        gpu|a2|64|256000+|gpu:a100:4,mps:100|2-00:00:00|drained\n\
        cpu|c1|32|64000|(null)|infinite|idle\n";

    #[test]
    fn sinfo_is_read_into_partitions_nodes_and_limits() {
        let rows = parse_sinfo(SINFO).unwrap();
        assert_eq!(rows.len(), 4);
        let debug = cluster_from_rows(&rows, None).unwrap();
        assert_eq!(debug.partition, "debug");
        assert_eq!(debug.max_time_s, Some(7200));
        assert_eq!(debug.nodes[0].gpus, 4);
        let gpu = cluster_from_rows(&rows, Some("gpu")).unwrap();
        assert_eq!(
            gpu.nodes
                .iter()
                .map(|n| (n.gpus, n.memory_mb))
                .collect::<Vec<_>>(),
            vec![(8, 512_000), (4, 256_000)]
        );
        assert_eq!(gpu.max_time_s, Some(172_800));
        assert_eq!(
            cluster_from_rows(&rows, Some("cpu")).unwrap().max_time_s,
            None
        );
        let e = cluster_from_rows(&rows, Some("gpus"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`gpus` not found") && e.contains("debug, gpu, cpu"),
            "{e}"
        );
        assert!(parse_sinfo("a|b|c\n")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert_eq!(gres_gpus("(null)"), 0);
        assert_eq!(gres_gpus("gpu:tesla:2(S:0),gpu:k80:1"), 3);
    }

    #[test]
    fn a_request_no_node_can_meet_is_refused_with_the_reason() {
        let debug = cluster_from_rows(&parse_sinfo(SINFO).unwrap(), None).unwrap();
        let ok = job_request(&debug, 2, Some(100.0), Some(600)).unwrap();
        assert_eq!(
            ok,
            JobRequest {
                gpus: 2,
                cpus: 4,
                memory_mb: 506,
                time_s: Some(600)
            }
        );
        let e = job_request(&debug, 8, Some(100.0), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("asks for 8 GPUs") && e.contains("more than 4"),
            "{e}"
        );
        let e = job_request(&debug, 1, Some(20_000.0), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 16000 MiB"), "{e}");
        let e = job_request(&debug, 1, None, Some(3 * 3600))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("03:00:00") && e.contains("at most 02:00:00"),
            "{e}"
        );
        // A CPU-only partition: the request runs on CPUs alone.
        let cpu = cluster_from_rows(&parse_sinfo(SINFO).unwrap(), Some("cpu")).unwrap();
        assert!(job_request(&cpu, 1, None, None).is_err());
    }
}
