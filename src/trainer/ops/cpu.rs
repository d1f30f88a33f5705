//! What the fused CPU kernels share: their element types, reading a CPU tensor's data, a matrix
//! product on slices (the gemm crate candle's own matmul uses, one thread per call: the kernels
//! run their independent blocks on rayon's threads, the pool candle computes on), how work is
//! split over those threads, and candle's idle threads.

use candle_core::{bail, CpuStorage, Layout, Result, Storage, StorageRef, Tensor, WithDType};

/// The element types the fused kernels compute in: f32 for training, f64 for the tests'
/// finite differences.
pub trait Real: WithDType + num_traits::Float + num_traits::NumAssign + Send + Sync {
    /// `xs[i] = exp(xs[i])`: vectorised for f32 (`ops::exp`), where the kernels' time goes.
    fn exp_in_place(xs: &mut [Self]) {
        xs.iter_mut().for_each(|x| *x = x.exp());
    }
}
impl Real for f32 {
    fn exp_in_place(xs: &mut [f32]) {
        super::exp::exp_in_place(xs);
    }
}
impl Real for f64 {}

/// Whether the fused kernels compute tensors of this device and dtype (CPU, f32 or f64); any
/// other takes the composed path.
pub fn runs_fused(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}

/// The contiguous data of a CPU storage seen through `layout`.
pub fn slice_of<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{what}: expected a contiguous tensor");
    };
    Ok(&T::cpu_storage_as_slice(storage)?[start..end])
}

/// A read lock on a contiguous CPU tensor's storage, to read its data without a copy.
pub struct Data<'a> {
    guard: StorageRef<'a>,
    layout: &'a Layout,
}

impl<'a> Data<'a> {
    /// `t` must be contiguous (call `.contiguous()` first: a no-op when it already is).
    pub fn of(t: &'a Tensor) -> Self {
        let (guard, layout) = t.storage_and_layout();
        Data { guard, layout }
    }

    pub fn slice<T: WithDType>(&self, what: &str) -> Result<&[T]> {
        match &*self.guard {
            Storage::Cpu(cpu) => slice_of(cpu, self.layout, what),
            _ => bail!("{what}: a fused CPU kernel got a tensor on another device"),
        }
    }
}

/// A row-major matrix view of a slice: element (i, j) at `i * row_stride + j * col_stride`.
#[derive(Clone, Copy)]
pub struct View {
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl View {
    /// A row-major block of `rows` x `cols` whose rows are `ld` apart.
    pub fn rows(rows: usize, cols: usize, ld: usize) -> Self {
        View {
            rows,
            cols,
            row_stride: ld,
            col_stride: 1,
        }
    }

    /// The transpose of `self`, as a view of the same data.
    pub fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// One past the largest index the view reads (0 when empty).
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
        }
    }
}

/// `dst = (dst if accumulate else 0) + scale * lhs rhs`, on one thread, at gemm's speed.
/// Every view is checked against its slice, so this is safe for any arguments.
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Real>(
    dst: &mut [T],
    dst_view: View,
    accumulate: bool,
    lhs: &[T],
    lhs_view: View,
    rhs: &[T],
    rhs_view: View,
    scale: T,
) -> Result<()> {
    let (m, n, k) = (dst_view.rows, dst_view.cols, lhs_view.cols);
    if lhs_view.rows != m || rhs_view.rows != k || rhs_view.cols != n {
        bail!(
            "fused matmul: ({m} x {n}) = ({} x {k}) ({} x {})",
            lhs_view.rows,
            rhs_view.rows,
            rhs_view.cols
        );
    }
    if dst_view.extent() > dst.len()
        || lhs_view.extent() > lhs.len()
        || rhs_view.extent() > rhs.len()
    {
        bail!("fused matmul: a view reaches past its data");
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[i * dst_view.row_stride + j * dst_view.col_stride] = T::zero();
                }
            }
        }
        return Ok(());
    }
    // SAFETY: the three views were checked above to stay inside their slices, and `dst` is a
    // unique borrow that overlaps neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_view.col_stride as isize,
            dst_view.row_stride as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_view.col_stride as isize,
            lhs_view.row_stride as isize,
            rhs.as_ptr(),
            rhs_view.col_stride as isize,
            rhs_view.row_stride as isize,
            T::one(),
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

/// Elements per rayon task at least: below this the split costs more than it saves.
pub const MIN_TASK_ELEMENTS: usize = 16 * 1024;

/// Rows of `width` elements per rayon task, so that each task has `MIN_TASK_ELEMENTS` or more.
pub fn rows_per_task(width: usize) -> usize {
    MIN_TASK_ELEMENTS.div_ceil(width.max(1)).max(1)
}

/// Rows per rayon task for `rows` rows of a product: one block per thread (each block is its own
/// gemm call, whose fixed cost dominates on small shapes; two blocks per thread made a small LoRA
/// step 20 % slower), at least 16 rows.
pub fn rows_per_thread(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads().max(1)).max(16)
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
        bail!("{op}: a CPU kernel given a tensor on another device");
    };
    f(slice_of(cpu, layout, op)?)
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

/// The process settings the CPU trainer wants, before its first tensor op: candle's idle threads
/// sleep (`park_idle_threads`) and start now (`start_elementwise_threads`), and freed memory is
/// kept for the next step (`keep_freed_memory`).
pub fn tune_process() {
    park_idle_threads();
    start_elementwise_threads();
    keep_freed_memory();
}

/// Starts candle's elementwise thread pool now, while the process has memory to spare.
///
/// Why: candle spawns it at its first large elementwise op and panics if a thread cannot start.
/// A trial under its memory limit (`RLIMIT_DATA`, which counts thread stacks) that first met such
/// an op late, in evaluation after a halved batch, panicked there, and printing the panic's
/// backtrace ran out of memory inside std's backtrace lock: the trial hung instead of failing.
pub fn start_elementwise_threads() {
    let _ = candle_core::utils::barrier_pool();
}

/// Blocks below this many bytes come from malloc's heap and, once freed, stay there for the next
/// step (`keep_freed_memory`).
pub const KEEP_FREED_BELOW: usize = 256 << 20;

/// Makes glibc's malloc keep freed memory for reuse instead of handing it back to the kernel:
/// blocks below `KEEP_FREED_BELOW` come from the heap, and the heap is never trimmed.
///
/// Why: a training step allocates and frees the same tensors every step. By default glibc maps
/// every block over 128 KiB (up to 32 MiB as it adapts) and unmaps it when freed, and trims the
/// heap's top, so each step pays again for page faults and the kernel zeroing its pages
/// (a tenth of a `tiny` LoRA step in perf). With both thresholds at `KEEP_FREED_BELOW`, measured
/// with `train_speed` (tiny, 16 x 64, 60 steps, 3 runs each): LoRA 19,000-21,600 to
/// 26,900-37,400 tokens/s, SFT 26,800-30,000 to 28,200-32,300; peak memory within 1 MB.
/// Trimming is off altogether since the weight gradients are written in place
/// (`ops::linear`): a 135M sft step frees its 400 MB of them at once after the optimizer, which
/// left that much free at the heap's top to trim and fault in again the next step (100,000 page
/// faults a step; 3.6-4.1 s of backward against 3.1-3.2 s untrimmed). A trial is a process of
/// its own, and its resident memory stays at the peak it reached, which the memory estimate is
/// about. Under a data limit (`RLIMIT_DATA`, how sweep holds a trial to its memory) the heap is
/// trimmed above `KEEP_FREED_BELOW` as before: memory kept by malloc counts against the limit,
/// and what is not malloc's (thread stacks, the largest tensors' own mappings) needs room too.
/// Settings the user gave glibc (`GLIBC_TUNABLES`, `MALLOC_*_`) are kept.
pub fn keep_freed_memory() {
    let user_set = std::env::vars_os().any(|(k, v)| {
        let (k, v) = (k.to_string_lossy(), v.to_string_lossy());
        k.starts_with("MALLOC_") || (k == "GLIBC_TUNABLES" && v.contains("glibc.malloc."))
    });
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !user_set {
        let bytes = KEEP_FREED_BELOW as libc::c_int;
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only the struct it is given.
        let limited = unsafe { libc::getrlimit(libc::RLIMIT_DATA, &mut limit) } == 0
            && limit.rlim_cur != libc::RLIM_INFINITY;
        // -1: never trim (mallopt(3)).
        let trim = if limited { bytes } else { -1 };
        // SAFETY: mallopt only changes two of malloc's thresholds; it is called before the
        // trainer's threads start allocating, and is safe to call at any time anyway.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, bytes);
            libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = user_set;
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

/// `sum(xs[i])` in eight independent lanes, so that the compiler vectorises it (as `dot`).
pub fn sum<T: Real>(xs: &[T]) -> T {
    let mut lanes = [T::zero(); 8];
    let chunks = xs.len() / 8 * 8;
    for c in xs[..chunks].chunks_exact(8) {
        for k in 0..8 {
            lanes[k] += c[k];
        }
    }
    let total = lanes.iter().fold(T::zero(), |s, &l| s + l);
    xs[chunks..].iter().fold(total, |s, &x| s + x)
}

/// The largest of `xs` (-inf when empty), in eight lanes as `sum`.
pub fn max<T: Real>(xs: &[T]) -> T {
    let mut lanes = [T::neg_infinity(); 8];
    let chunks = xs.len() / 8 * 8;
    for c in xs[..chunks].chunks_exact(8) {
        for k in 0..8 {
            lanes[k] = if c[k] > lanes[k] { c[k] } else { lanes[k] };
        }
    }
    let most = lanes
        .iter()
        .fold(T::neg_infinity(), |m, &l| if l > m { l } else { m });
    xs[chunks..]
        .iter()
        .fold(most, |m, &x| if x > m { x } else { m })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_and_max_see_every_element_whatever_the_length() {
        for n in [0usize, 1, 7, 8, 9, 17, 64] {
            let xs: Vec<f64> = (0..n).map(|i| ((i * 7) % 11) as f64 - 3.0).collect();
            assert_eq!(sum(&xs), xs.iter().sum::<f64>(), "n = {n}");
            let want = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(max(&xs), want, "n = {n}");
        }
    }

    #[test]
    fn matmul_on_views_matches_the_definition() {
        // a (2 x 3), b (3 x 2) stored transposed (2 x 3).
        let a = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let bt = [1.0f64, 0.0, -1.0, 2.0, 1.0, 0.5];
        let mut c = [10.0f64; 4];
        matmul(
            &mut c,
            View::rows(2, 2, 2),
            true,
            &a,
            View::rows(2, 3, 3),
            &bt,
            View::rows(2, 3, 3).t(),
            2.0,
        )
        .unwrap();
        // a b = [[-2, 5.5], [-2, 16]]
        assert_eq!(c, [6.0, 21.0, 6.0, 42.0]);
        assert!(matmul(
            &mut c,
            View::rows(2, 2, 2),
            false,
            &a,
            View::rows(2, 3, 4),
            &bt,
            View::rows(2, 3, 3).t(),
            1.0
        )
        .is_err());
    }

    #[test]
    fn dot_sums_every_element() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let ones = vec![1.0f32; 19];
        assert_eq!(dot(&a, &ones), 171.0);
    }

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

    #[test]
    fn products_take_one_row_block_per_thread_of_at_least_16_rows() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            assert_eq!(rows_per_thread(508), 254);
            assert_eq!(rows_per_thread(509), 255);
            assert_eq!(rows_per_thread(20), 16);
            assert_eq!(rows_per_thread(0), 16);
        });
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
