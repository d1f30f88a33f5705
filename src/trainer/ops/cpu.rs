//! What the fused CPU kernels share: their element types, reading a CPU tensor's data, and a
//! matrix product on slices (the gemm crate candle's own matmul uses, one thread per call: the
//! kernels run their independent blocks on rayon's threads, the pool candle computes on).

use candle_core::{bail, CpuStorage, Layout, Result, Storage, StorageRef, Tensor, WithDType};

/// The element types the fused kernels compute in: f32 for training, f64 for the tests'
/// finite differences.
pub trait Real: WithDType {
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn neg_infinity() -> Self;
}

impl Real for f32 {
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn neg_infinity() -> Self {
        f32::NEG_INFINITY
    }
}

impl Real for f64 {
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn neg_infinity() -> Self {
        f64::NEG_INFINITY
    }
}

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

/// The dot product of two equally long slices, in eight independent sums the compiler keeps in
/// vector registers.
pub fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut sum = T::zero();
    for i in chunks * 8..a.len().min(b.len()) {
        sum += a[i] * b[i];
    }
    acc.iter().fold(sum, |s, x| s + *x)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
