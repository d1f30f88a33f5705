//! What differs when a trial runs on a CUDA GPU: truthful messages when a GPU cannot be opened,
//! and TF32 matrix products when the trial allows them. (The memory a CUDA process holds beyond
//! its tensors is arithmetic: `spec::memory::cuda_process_overhead`.)
//!
//! Why a module of its own: the CUDA path cannot run on the CPU-only machines sweep is developed
//! on, so everything here that does not need a GPU is a pure function with unit tests, and the
//! rest is checked on a real GPU by `scripts/gpu-check.sh` (`sweep gpu-check`).

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

/// A shared library a CUDA trial opens at its start (cudarc loads them at first use, so the
/// binary itself starts without any: vendor/candle-core/PATCH.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaLibrary {
    /// What it is, as a user knows it.
    pub name: &'static str,
    /// The file the loader looks for.
    pub file: &'static str,
    /// Where a user gets it.
    pub from: &'static str,
}

/// Every library `Device::new_cuda` and a training step need, the driver's first.
pub const CUDA_LIBRARIES: [CudaLibrary; 5] = [
    CudaLibrary {
        name: "the NVIDIA driver",
        file: "libcuda.so.1",
        from: "the NVIDIA driver (run CUDA trials on a GPU node, or set `resources.devices: cpu`)",
    },
    CudaLibrary {
        name: "cuBLAS",
        file: "libcublas.so.13",
        from: CUDA_13_LIBRARIES,
    },
    CudaLibrary {
        name: "cuBLASLt",
        file: "libcublasLt.so.13",
        from: CUDA_13_LIBRARIES,
    },
    CudaLibrary {
        name: "cuRAND",
        file: "libcurand.so.10",
        from: CUDA_13_LIBRARIES,
    },
    CudaLibrary {
        name: "NVRTC",
        file: "libnvrtc.so.13",
        from: CUDA_13_LIBRARIES,
    },
];

const CUDA_13_LIBRARIES: &str = "the CUDA 13 libraries: a CUDA 13 toolkit, or `pip install \
     nvidia-cublas nvidia-curand nvidia-cuda-nvrtc` (PyTorch's CUDA 13 wheels bring them), with \
     their lib folder on LD_LIBRARY_PATH";

/// Why `device` cannot be opened when the libraries in `missing` cannot be loaded, or `None`
/// when nothing is missing. Why before opening: cudarc panics on the first call into a library it
/// cannot load, which would end the trial with a panic instead of a message.
pub fn missing_libraries_message(device: &str, missing: &[CudaLibrary]) -> Option<String> {
    if missing.is_empty() {
        return None;
    }
    let what: Vec<String> = missing
        .iter()
        .map(|l| {
            format!(
                "{} ({}) is not found: it comes with {}",
                l.name, l.file, l.from
            )
        })
        .collect();
    Some(format!(
        "cannot open {device}: this sweep has CUDA support, but {}",
        what.join("; ")
    ))
}

/// The CUDA libraries that cannot be loaded on this machine (none missing on a build without
/// CUDA, which never opens them).
pub fn missing_cuda_libraries() -> Vec<CudaLibrary> {
    #[cfg(feature = "cuda")]
    {
        // SAFETY: each only tries to dlopen the library's candidate names and closes it again.
        let present = unsafe {
            [
                cudarc::driver::sys::is_culib_present(),
                cudarc::cublas::sys::is_culib_present(),
                cudarc::cublaslt::sys::is_culib_present(),
                cudarc::curand::sys::is_culib_present(),
                cudarc::nvrtc::sys::is_culib_present(),
            ]
        };
        CUDA_LIBRARIES
            .iter()
            .zip(present)
            .filter(|(_, present)| !present)
            .map(|(l, _)| *l)
            .collect()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Vec::new()
    }
}

/// Opens CUDA device `id` (named `device` in messages): first the libraries it needs, each named
/// when missing, then the device, with `open_failure_message`'s account of what went wrong.
pub fn open_cuda(device: &str, id: usize) -> crate::trainer::error::Result<candle_core::Device> {
    use crate::trainer::error::TrainError;
    if CUDA_BUILT {
        if let Some(message) = missing_libraries_message(device, &missing_cuda_libraries()) {
            return Err(TrainError::Device(message));
        }
    }
    candle_core::Device::new_cuda(id)
        .map_err(|e| TrainError::Device(open_failure_message(device, CUDA_BUILT, &e.to_string())))
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn missing_libraries_are_each_named_with_where_they_come_from() {
        assert_eq!(missing_libraries_message("cuda:0", &[]), None);
        let m = missing_libraries_message("cuda:0", &CUDA_LIBRARIES[..1]).unwrap();
        assert!(
            m.starts_with("cannot open cuda:0: this sweep has CUDA support, but the NVIDIA driver (libcuda.so.1) is not found"),
            "{m}"
        );
        assert!(m.contains("resources.devices: cpu"), "{m}");
        let m = missing_libraries_message("cuda:2", &CUDA_LIBRARIES[1..3]).unwrap();
        assert!(m.contains("cuBLAS (libcublas.so.13) is not found"), "{m}");
        assert!(
            m.contains("cuBLASLt (libcublasLt.so.13) is not found"),
            "{m}"
        );
        assert!(m.contains("LD_LIBRARY_PATH"), "{m}");
        assert!(!m.contains("driver"), "{m}");
    }

    #[test]
    fn a_build_without_cuda_misses_no_library_and_is_told_to_rebuild() {
        if !CUDA_BUILT {
            assert!(missing_cuda_libraries().is_empty());
            let e = open_cuda("cuda:0", 0).unwrap_err().to_string();
            assert!(e.contains("built without CUDA support"), "{e}");
        }
    }

    #[test]
    fn tf32_is_only_on_where_cuda_is_built_and_asked_for() {
        assert!(!set_tf32(false));
        assert_eq!(set_tf32(true), CUDA_BUILT);
        assert!(!set_tf32(false));
    }
}
