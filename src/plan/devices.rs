//! What devices the machine has: CUDA GPUs as `nvidia-smi` reports them (honouring
//! CUDA_VISIBLE_DEVICES), and the CPU's memory. `query_gpus` is sweep's one GPU query: anything
//! that needs the list of GPUs and their memory asks it rather than running nvidia-smi again.

use std::process::Command;

use serde::Serialize;

/// One GPU as nvidia-smi sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gpu {
    pub index: usize,
    pub name: String,
    pub total_mb: f64,
    pub free_mb: f64,
}

/// Why the GPUs cannot be listed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuQueryError {
    /// No nvidia-smi on PATH: a machine without NVIDIA's driver.
    #[error("nvidia-smi is not installed here")]
    NotInstalled,
    #[error("nvidia-smi failed: {0}")]
    Failed(String),
    #[error("nvidia-smi output line {line}: cannot read `{text}`")]
    Unreadable { line: usize, text: String },
}

/// Parses `nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits`.
pub fn parse_nvidia_smi(text: &str) -> Result<Vec<Gpu>, GpuQueryError> {
    let mut gpus = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = || GpuQueryError::Unreadable {
            line: n + 1,
            text: line.to_string(),
        };
        if fields.len() != 4 {
            return Err(bad());
        }
        gpus.push(Gpu {
            index: fields[0].parse().map_err(|_| bad())?,
            name: fields[1].to_string(),
            total_mb: fields[2].parse().map_err(|_| bad())?,
            free_mb: fields[3].parse().map_err(|_| bad())?,
        });
    }
    Ok(gpus)
}

/// The GPUs this process may use, with their memory now: nvidia-smi's list, filtered by
/// CUDA_VISIBLE_DEVICES when set (numeric ids only; an empty value hides every GPU).
pub fn query_gpus() -> Result<Vec<Gpu>, GpuQueryError> {
    let out = nvidia_smi(&[
        "--query-gpu=index,name,memory.total,memory.free",
        "--format=csv,noheader,nounits",
    ])
    .ok_or(GpuQueryError::NotInstalled)?;
    if !out.status.success() {
        return Err(GpuQueryError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let gpus = parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout))?;
    Ok(match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(visible) => visible_only(gpus, &visible),
        Err(_) => gpus,
    })
}

/// nvidia-smi's answer to `args`; None when nvidia-smi is not there. The one place sweep runs it.
fn nvidia_smi(args: &[&str]) -> Option<std::process::Output> {
    Command::new("nvidia-smi").args(args).output().ok()
}

/// Memory that process `pid` uses on the GPUs, MiB, from nvidia-smi's list of compute processes
/// (what `sweep gpu-check` samples while a benchmark runs). None when nvidia-smi is not there or
/// fails, or lists no such process (in a container it may not see our process ids).
pub fn process_memory_mb(pid: u32) -> Option<f64> {
    let out = nvidia_smi(&[
        "--query-compute-apps=pid,used_memory",
        "--format=csv,noheader,nounits",
    ])?;
    out.status
        .success()
        .then(|| parse_process_memory(&String::from_utf8_lossy(&out.stdout), pid))?
}

/// Parses `nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits` for
/// `pid`: the sum over its lines (one per GPU it uses), None when it has none.
pub fn parse_process_memory(text: &str, pid: u32) -> Option<f64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(',').map(str::trim);
            let p: u32 = fields.next()?.parse().ok()?;
            let mb: f64 = fields.next()?.parse().ok()?;
            (p == pid).then_some(mb)
        })
        .reduce(|a, b| a + b)
}

fn visible_only(gpus: Vec<Gpu>, visible: &str) -> Vec<Gpu> {
    let wanted: Vec<usize> = visible
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    gpus.into_iter()
        .filter(|g| wanted.contains(&g.index))
        .collect()
}

/// Physical memory of the machine in MiB (Linux `MemTotal`), if known.
pub fn machine_memory_mb() -> Option<f64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nvidia_smi_and_honours_visible_devices() {
        let text = "0, NVIDIA A100-SXM4-80GB, 81920, 80000\n1, NVIDIA A100-SXM4-80GB, 81920, 1000\n2, Tesla T4, 15360, 15000\n";
        let gpus = parse_nvidia_smi(text).unwrap();
        assert_eq!(gpus.len(), 3);
        assert_eq!(gpus[2].name, "Tesla T4");
        assert_eq!(gpus[1].free_mb, 1000.0);
        let seen = visible_only(gpus.clone(), "2,0");
        assert_eq!(seen.iter().map(|g| g.index).collect::<Vec<_>>(), vec![0, 2]);
        assert!(visible_only(gpus, "").is_empty());
        assert!(parse_nvidia_smi("0, x, lots, 3\n").is_err());
    }

    #[test]
    fn nvidia_smi_process_memory_is_read_for_our_pid_only() {
        let text = "1234, 5120\n999, 100\n1234, 20\nnot a line\n";
        assert_eq!(parse_process_memory(text, 1234), Some(5140.0));
        assert_eq!(parse_process_memory(text, 42), None);
    }
}
