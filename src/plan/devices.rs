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
    let out = Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.total,memory.free",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .map_err(|_| GpuQueryError::NotInstalled)?;
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
}
