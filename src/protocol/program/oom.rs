//! A program's GPU out-of-memory, recognised from what it prints (stdout or stderr), one line at
//! a time. The messages are PyTorch's and those of the CUDA libraries under it, as they appear
//! in a Python traceback's last line or a log:
//!
//! - `torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total
//!   capacity of 79.15 GiB of which 3.25 MiB is free. ...` (PyTorch 2.5 and later; 2.0 to 2.4
//!   name it `torch.cuda.OutOfMemoryError`, 1.x `RuntimeError`; ROCm builds say `HIP out of
//!   memory`);
//! - `RuntimeError: CUDA error: out of memory` (an allocation outside the caching allocator:
//!   a CUDA context, a kernel's launch);
//! - `RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)``
//!   (cuBLAS's workspace), and cuDNN's `CUDNN_STATUS_ALLOC_FAILED`;
//! - the driver's and runtime's names, `CUDA_ERROR_OUT_OF_MEMORY` (CuPy, Numba, candle) and
//!   `cudaErrorMemoryAllocation`, and XLA's `RESOURCE_EXHAUSTED: Out of memory` (JAX).
//!
//! A line only recognises the message; whether the trial ended because of it (a program may
//! catch the error and halve its own batch, as Accelerate's `find_executable_batch_size` does)
//! is the caller's decision, from the exit status.

/// Which message a line holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OomSource {
    /// `CUDA out of memory` (PyTorch's caching allocator).
    PyTorch,
    /// `HIP out of memory` (PyTorch on ROCm).
    PyTorchHip,
    /// `CUDA error: out of memory`, `cudaErrorMemoryAllocation`, `CUDA_ERROR_OUT_OF_MEMORY`.
    Cuda,
    /// `CUBLAS_STATUS_ALLOC_FAILED`.
    Cublas,
    /// `CUDNN_STATUS_ALLOC_FAILED`.
    Cudnn,
    /// `RESOURCE_EXHAUSTED: Out of memory` (XLA).
    Xla,
}

/// A recognised out-of-memory message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutOfMemory {
    pub source: OomSource,
    /// PyTorch's `Tried to allocate N UNIT`, in MiB, when the line says it.
    pub tried_to_allocate_mib: Option<f64>,
}

/// The markers, each with the source it means; the first that a line contains wins.
const MARKERS: [(&str, OomSource); 8] = [
    ("CUDA out of memory", OomSource::PyTorch),
    ("HIP out of memory", OomSource::PyTorchHip),
    ("CUDA error: out of memory", OomSource::Cuda),
    ("CUDA_ERROR_OUT_OF_MEMORY", OomSource::Cuda),
    ("cudaErrorMemoryAllocation", OomSource::Cuda),
    ("CUBLAS_STATUS_ALLOC_FAILED", OomSource::Cublas),
    ("CUDNN_STATUS_ALLOC_FAILED", OomSource::Cudnn),
    ("RESOURCE_EXHAUSTED: Out of memory", OomSource::Xla),
];

/// The out-of-memory message `line` holds, if any.
pub fn out_of_memory(line: &str) -> Option<OutOfMemory> {
    let source = MARKERS
        .iter()
        .find(|(marker, _)| line.contains(marker))
        .map(|(_, source)| *source)?;
    Some(OutOfMemory {
        source,
        tried_to_allocate_mib: tried_to_allocate_mib(line),
    })
}

/// PyTorch's `Tried to allocate 1.50 GiB` in MiB (its units: B, KiB, MiB, GiB, TiB; older
/// releases print `MiB`/`GiB` only).
fn tried_to_allocate_mib(line: &str) -> Option<f64> {
    let rest = &line[line.find("Tried to allocate ")? + "Tried to allocate ".len()..];
    let mut words = rest.split_whitespace();
    let amount: f64 = words.next()?.parse().ok()?;
    let unit = words
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_alphabetic());
    let factor = match unit {
        "B" => 1.0 / (1024.0 * 1024.0),
        "KiB" => 1.0 / 1024.0,
        "MiB" => 1.0,
        "GiB" => 1024.0,
        "TiB" => 1024.0 * 1024.0,
        _ => return None,
    };
    let mib = amount * factor;
    mib.is_finite().then_some(mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytorch_messages_are_recognised() {
        let cases = [
            (
                "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a \
                 total capacity of 79.15 GiB of which 3.25 MiB is free.",
                OomSource::PyTorch,
                Some(20.0),
            ),
            (
                "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.50 GiB (GPU 0; \
                 15.78 GiB total capacity; 13.02 GiB already allocated)",
                OomSource::PyTorch,
                Some(1536.0),
            ),
            (
                "RuntimeError: CUDA out of memory. Tried to allocate 512.00 KiB (GPU 0; 7.79 GiB total capacity)",
                OomSource::PyTorch,
                Some(0.5),
            ),
            ("RuntimeError: CUDA out of memory.", OomSource::PyTorch, None),
            (
                "torch.OutOfMemoryError: HIP out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 63.98 GiB",
                OomSource::PyTorchHip,
                Some(2048.0),
            ),
            ("RuntimeError: CUDA error: out of memory", OomSource::Cuda, None),
            (
                "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
                OomSource::Cublas,
                None,
            ),
            ("RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED", OomSource::Cudnn, None),
            ("cupy.cuda.driver.CUDADriverError: CUDA_ERROR_OUT_OF_MEMORY: out of memory", OomSource::Cuda, None),
            ("NCCL WARN Cuda failure 2 'cudaErrorMemoryAllocation'", OomSource::Cuda, None),
            (
                "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4294967296 bytes.",
                OomSource::Xla,
                None,
            ),
            ("OutOfMemoryError: CUDA out of memory. Tried to allocate 8.00 B.", OomSource::PyTorch, Some(8.0 / 1048576.0)),
        ];
        for (line, source, mib) in cases {
            assert_eq!(
                out_of_memory(line),
                Some(OutOfMemory {
                    source,
                    tried_to_allocate_mib: mib
                }),
                "{line}"
            );
        }
    }

    #[test]
    fn other_lines_are_not_out_of_memory() {
        for line in [
            "",
            "epoch 3 loss 0.41",
            "RuntimeError: CUDA error: device-side assert triggered",
            "RuntimeError: CUDA error: an illegal memory access was encountered",
            "RuntimeError: Expected all tensors to be on the same device",
            "MemoryError",
            "memory: 12.3 GiB free",
            "cuda out of memory",
        ] {
            assert_eq!(out_of_memory(line), None, "{line}");
        }
        // An odd amount is no amount, not a failure.
        let oom = out_of_memory("CUDA out of memory. Tried to allocate lots of MiB").unwrap();
        assert_eq!(oom.tried_to_allocate_mib, None);
        let oom = out_of_memory("CUDA out of memory. Tried to allocate 3 PB").unwrap();
        assert_eq!(oom.tried_to_allocate_mib, None);
        let oom = out_of_memory("CUDA out of memory. Tried to allocate").unwrap();
        assert_eq!(oom.tried_to_allocate_mib, None);
    }
}
