//! What differs when a trial runs on a CUDA GPU: truthful messages when a GPU cannot be opened,
//! TF32 matrix products when the trial allows them, and the memory a CUDA process holds beyond
//! its tensors.
//!
//! Why a module of its own: the CUDA path cannot run on the CPU-only machines sweep is developed
//! on, so everything here that does not need a GPU is a pure function with unit tests, and the
//! rest is checked on a real GPU by `scripts/gpu-check.sh` (`sweep gpu-check`).

use crate::memory::MB;

/// Whether this binary was built with `--features cuda`.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// The message for a CUDA device that could not be opened, from what the build has and the
/// error candle gave. Why: a build without CUDA and a CUDA build on a machine without a usable
/// driver or GPU fail at the same call, and only the first is fixed by rebuilding; telling the
/// user to rebuild a binary that already has CUDA sends them the wrong way.
pub fn open_failure_message(device: &str, cuda_built: bool, error: &str) -> String {
    if !cuda_built {
        return format!(
            "cannot open {device}: this sweep was built without CUDA support; build it with \
             `scripts/build-cuda.sh` (or `cargo build --release --features cuda`), or use \
             `resources.devices: cpu`"
        );
    }
    // cudarc prints a driver error as `DriverError(CUDA_ERROR_..., "description")`.
    let why = if error.contains("CUDA_ERROR_STUB_LIBRARY") {
        "the libcuda.so.1 that was loaded is a link stub, not the NVIDIA driver's library (is a \
         `stubs` folder on LD_LIBRARY_PATH?); this machine needs the NVIDIA driver"
    } else if error.contains("CUDA_ERROR_NO_DEVICE") {
        "the NVIDIA driver sees no GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
    } else if error.contains("CUDA_ERROR_INSUFFICIENT_DRIVER")
        || error.contains("CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE")
    {
        "the NVIDIA driver is older than the CUDA version this sweep was built for (CUDA 13.0 \
         needs driver 580 or newer)"
    } else if error.contains("CUDA_ERROR_INVALID_DEVICE") {
        "there is no GPU with that index among the visible ones (CUDA_VISIBLE_DEVICES)"
    } else if error.contains("CUDA_ERROR_OUT_OF_MEMORY") {
        "the GPU has no memory left even for a CUDA context (other processes on it?)"
    } else {
        "the NVIDIA driver or GPU could not be used"
    };
    format!("cannot open {device}: this sweep has CUDA support, but {why}")
}

/// Lets f32 matrix products on CUDA use TF32 tensor cores (about 10 bits of mantissa in the
/// products, f32 accumulation) when `allowed`; returns whether they now do. Why it is opt-in
/// (the `tf32` trial parameter): it changes results in the fourth significant digit, and candle,
/// like PyTorch, defaults to full f32. The setting is per process, and a trial is a process. On
/// a build without CUDA, and for CPU devices, nothing changes and the answer is false.
pub fn set_tf32(allowed: bool) -> bool {
    #[cfg(feature = "cuda")]
    {
        candle_core::cuda::set_gemm_reduced_precision_f32(allowed);
        candle_core::cuda::gemm_reduced_precision_f32()
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = allowed;
        false
    }
}

/// What a process holds on each CUDA device beyond its tensors: the context (driver state, the
/// loaded kernel modules of candle, the default stream; a few hundred MiB on recent GPUs with
/// lazy module loading), cuBLAS and cuBLASLt handles with their workspace (32 MiB per handle on
/// Hopper), and the stream-ordered allocator's slack (freed blocks kept in its pool until the
/// stream synchronises, rounding to its granularity), as a fraction of the tensor bytes.
/// These are the budgeted values, not yet measured on a GPU: `sweep gpu-check` measures the peak
/// per process and prints it beside the estimate, which is how they are to be corrected.
pub const CUDA_CONTEXT: f64 = 450.0 * MB;
pub const CUBLAS_WORKSPACE: f64 = 64.0 * MB;
pub const ALLOCATOR_SLACK: f64 = 0.10;

/// Bytes a CUDA device holds beyond `tensor_bytes` of live tensors in one trial process.
pub fn cuda_process_overhead(tensor_bytes: f64) -> f64 {
    CUDA_CONTEXT + CUBLAS_WORKSPACE + ALLOCATOR_SLACK * tensor_bytes.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{estimate, Workload};
    use std::collections::BTreeMap;

    #[test]
    fn a_build_without_cuda_is_told_to_rebuild() {
        let m = open_failure_message(
            "cuda:0",
            false,
            "the candle crate has not been built with cuda support",
        );
        assert!(m.contains("built without CUDA support"), "{m}");
        assert!(m.contains("scripts/build-cuda.sh"), "{m}");
    }

    #[test]
    fn a_cuda_build_without_a_driver_is_not_told_to_rebuild() {
        // What cudarc 0.19 prints (driver/result.rs: `DriverError` shows its CUresult and
        // cuGetErrorString's text, which a stub cannot give).
        let cases = [
            (
                "DriverError(CUDA_ERROR_STUB_LIBRARY, \"<Failure when calling cuGetErrorString()>\")",
                "link stub",
            ),
            ("DriverError(CUDA_ERROR_NO_DEVICE, \"no CUDA-capable device is detected\")", "sees no GPU"),
            (
                "DriverError(CUDA_ERROR_INSUFFICIENT_DRIVER, \"CUDA driver version is insufficient for CUDA runtime version\")",
                "driver 580",
            ),
            ("DriverError(CUDA_ERROR_INVALID_DEVICE, \"invalid device ordinal\")", "no GPU with that index"),
            ("DriverError(CUDA_ERROR_UNKNOWN, \"unknown error\")", "could not be used"),
        ];
        for (error, expected) in cases {
            let m = open_failure_message("cuda:1", true, error);
            assert!(
                m.starts_with("cannot open cuda:1: this sweep has CUDA support"),
                "{m}"
            );
            assert!(m.contains(expected), "{error}: {m}");
            assert!(!m.contains("--features cuda"), "{m}");
        }
    }

    #[test]
    fn cuda_out_of_memory_is_recognised_from_candles_own_text() {
        // candle 0.11 wraps cudarc 0.19's errors transparently (cuda_backend/error.rs), and
        // cudarc's Display is its Debug: the enum variant, and for the driver cuGetErrorString.
        // The trial prints `error: {e:#}` (with anyhow's context first) as its last log line.
        let oom = [
            "error: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            "error: building one model replica per device: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"<Failure when calling cuGetErrorString()>\")",
            "error: CublasError(CUBLAS_STATUS_ALLOC_FAILED)",
            "error: CurandError(CURAND_STATUS_ALLOCATION_FAILED)",
            "error: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")\n   0: candle_core::error::Error::bt",
        ];
        for reason in oom {
            assert!(crate::runner::is_out_of_memory(reason), "{reason}");
        }
        let not_oom = [
            "error: DriverError(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, \"too many resources requested for launch\")",
            "error: DriverError(CUDA_ERROR_ILLEGAL_ADDRESS, \"an illegal memory access was encountered\")",
            "error: cannot open cuda:0: DriverError(CUDA_ERROR_STUB_LIBRARY, \"<Failure when calling cuGetErrorString()>\")",
            "error: CublasError(CUBLAS_STATUS_EXECUTION_FAILED)",
        ];
        for reason in not_oom {
            assert!(!crate::runner::is_out_of_memory(reason), "{reason}");
        }
    }

    #[test]
    fn tf32_is_only_on_where_cuda_is_built_and_asked_for() {
        assert!(!set_tf32(false));
        assert_eq!(set_tf32(true), CUDA_BUILT);
        assert!(!set_tf32(false));
    }

    fn workload_params(method: &str) -> crate::params::TrialParams {
        let a: BTreeMap<String, serde_json::Value> =
            [("method".to_string(), serde_json::json!(method))]
                .into_iter()
                .collect();
        crate::params::TrialParams::from_assignment(&a, 0).expect("valid trial")
    }

    #[test]
    fn a_cuda_device_adds_context_workspace_and_slack_and_the_cpu_nothing() {
        let mut cfg = crate::presets::preset("llama-135m").expect("preset");
        cfg.vocab_size = 49152;
        for method in ["sft", "lora"] {
            let p = workload_params(method);
            let w = |on_cuda| Workload {
                config: &cfg,
                params: &p,
                longest_sequence: 128,
                counted_per_sequence: 8,
                counted_longest_first: None,
                bytes_per_value: 4,
                on_cuda,
            };
            let (cpu, gpu) = (estimate(&w(false), 8), estimate(&w(true), 8));
            let tensors = cpu.weights + cpu.gradients + cpu.optimizer + cpu.activations;
            let added = gpu.total - cpu.total;
            assert!(
                (added - cuda_process_overhead(tensors)).abs() < 1.0,
                "{method}: {added}"
            );
            // The parts that are tensors do not change; the overhead holds the difference.
            assert_eq!(
                (cpu.weights, cpu.gradients, cpu.optimizer, cpu.activations),
                (gpu.weights, gpu.gradients, gpu.optimizer, gpu.activations)
            );
            assert!(gpu.overhead > CUDA_CONTEXT + CUBLAS_WORKSPACE);
            // A few hundred MiB plus a tenth: on the 135M shape, between 0.5 and 1.5 GiB.
            assert!(
                added > 512.0 * MB && added < 1536.0 * MB,
                "{method}: {}",
                added / MB
            );
        }
    }

    #[test]
    fn the_overhead_grows_with_the_tensors_and_never_goes_below_the_fixed_part() {
        assert_eq!(cuda_process_overhead(-5.0), CUDA_CONTEXT + CUBLAS_WORKSPACE);
        assert!(cuda_process_overhead(1e9) > cuda_process_overhead(1e8));
    }
}
