//! CPU plumbing the fused ops share: their element types, the contiguous elements of a tensor or a
//! storage, and how work is split over rayon's threads (candle's own pool).

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor, WithDType};

/// The element types the fused kernels compute in: f32 for training, f64 for the
/// finite-difference tests.
pub trait Real: WithDType + num_traits::Float + num_traits::NumAssign + Send + Sync {}
impl Real for f32 {}
impl Real for f64 {}

/// Elements per rayon task at least: below this the split costs more than it saves.
pub const MIN_TASK_ELEMENTS: usize = 16 * 1024;

/// Rows of `width` elements per rayon task, so that each task has `MIN_TASK_ELEMENTS` or more.
pub fn rows_per_task(width: usize) -> usize {
    MIN_TASK_ELEMENTS.div_ceil(width.max(1)).max(1)
}

/// The contiguous elements `layout` selects in `storage`; an error naming `op` otherwise.
pub fn slice<'a, T: Real>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: input must be contiguous");
    };
    Ok(&T::cpu_storage_as_slice(storage)?[start..end])
}

/// Runs `f` on the elements of the CPU tensor `t` (made contiguous first if it is not).
pub fn with_slice<T: Real, R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("{op}: a CPU kernel given a tensor on another device");
    };
    f(slice(cpu, layout, op)?)
}

/// Whether the fused CPU kernels compute tensors of `t`'s device and dtype (f32 or f64 on the CPU);
/// the callers fall back to the composed ops otherwise (half precision, CUDA).
pub fn runs_here(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}

/// How long candle's elementwise workers spin before sleeping, unless `CANDLE_BARRIER_POOL_SPIN_LIMIT`
/// says otherwise.
pub const BARRIER_SPIN_LIMIT: u32 = 100;

/// Makes candle 0.11's elementwise thread pool sleep soon when idle instead of spinning 25,000
/// times (its default): its workers then yield the cores to gemm's rayon threads, to the other
/// trials of a sweep and to whatever else runs. Measured under load (a shared 2-core machine, load
/// 12 to 20): tiny sft 3 to 5 times the tokens/s. Call before the first tensor op (candle reads the
/// setting once); a value the user set is kept.
pub fn park_idle_threads() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        std::env::set_var(VAR, BARRIER_SPIN_LIMIT.to_string());
    }
}

/// `sum(a[i] * b[i])` in eight independent lanes, so that the compiler vectorises it (one running
/// sum is a chain of dependent additions it may not reorder).
pub fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut lanes = [T::zero(); 8];
    let chunks = a.len() / 8 * 8;
    for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for k in 0..8 {
            lanes[k] += ca[k] * cb[k];
        }
    }
    let mut sum = lanes.iter().fold(T::zero(), |s, &l| s + l);
    for (&x, &y) in a[chunks..].iter().zip(&b[chunks..]) {
        sum += x * y;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_sums_every_element_whatever_the_length() {
        for n in [0usize, 1, 7, 8, 9, 17, 64] {
            let a: Vec<f64> = (0..n).map(|i| i as f64).collect();
            let b: Vec<f64> = (0..n).map(|i| 1.0 + i as f64).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert_eq!(dot(&a, &b), want, "n = {n}");
        }
        assert_eq!(rows_per_task(0), MIN_TASK_ELEMENTS);
        assert_eq!(rows_per_task(MIN_TASK_ELEMENTS * 2), 1);
    }
}

/// What the fused ops' tests share: random tensors, and gradients checked against central finite
/// differences in f64.
#[cfg(test)]
pub mod check {
    use candle_core::{DType, Device, Result, Tensor, Var};

    use crate::util::rng::SplitMix64;

    /// Normal random values of `shape` in `dtype` on the CPU.
    pub fn random(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
        let mut rng = SplitMix64::new(seed);
        let n: usize = shape.iter().product();
        let data: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        Tensor::from_vec(data, shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .expect("random tensor")
    }

    /// The largest absolute difference between two tensors of one shape.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Asserts that the gradients candle's backward gives for `sum(f(inputs) * probe)` (a random
    /// probe) match central finite differences, every element of every input, in f64.
    pub fn gradients_match_finite_differences(
        f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
        inputs: &[Tensor],
    ) {
        let inputs: Vec<Tensor> = inputs
            .iter()
            .map(|t| t.to_dtype(DType::F64).unwrap())
            .collect();
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let tracked: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&tracked).unwrap();
        let probe = random(out.dims(), 99, DType::F64);
        let loss = |xs: &[Tensor]| -> f64 {
            (f(xs).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let grads = (out * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let step = 1e-6;
        for (i, var) in vars.iter().enumerate() {
            let analytic: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for input {i}"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base: Vec<f64> = inputs[i].flatten_all().unwrap().to_vec1().unwrap();
            for j in 0..base.len() {
                let shifted = |delta: f64| -> Vec<Tensor> {
                    let mut v = base.clone();
                    v[j] += delta;
                    let mut xs = inputs.clone();
                    xs[i] = Tensor::from_vec(v, inputs[i].shape(), &Device::Cpu).unwrap();
                    xs
                };
                let numeric = (loss(&shifted(step)) - loss(&shifted(-step))) / (2.0 * step);
                let tolerance = 1e-6 * (1.0 + numeric.abs());
                assert!(
                    (numeric - analytic[j]).abs() < tolerance,
                    "input {i} element {j}: finite differences {numeric}, backward {}",
                    analytic[j]
                );
            }
        }
    }
}
