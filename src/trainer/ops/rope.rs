//! Rotary positions in Hugging Face's "rotate half" layout, one pass forward and one backward:
//! `y = x * cos + rotate_half(x) * sin` with `rotate_half([x1, x2]) = [-x2, x1]`. The op holds the
//! cos/sin tables, so it saves nothing; its backward is the transposed (inverse) rotation, itself
//! the same op, so gradients of gradients flow too.
//!
//! Elementwise, with `p(d)` the partner of `d` in the other half and `s(d)` = -1 in the first half,
//! +1 in the second: forward `y[d] = x[d] cos[d] + s(d) x[p(d)] sin[d]`; backward
//! `dx[d] = g[d] cos[d] - s(d) g[p(d)] sin[p(d)]`.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::cpu::{rows_per_task, runs_fused, slice_of, with_slice, Real};

/// Fused rotary positions where they run (f32/f64 on the CPU), the composed version otherwise.
/// `x` is (batch, heads, t, head_dim); `cos`/`sin` are (t, head_dim), shared by every row, or
/// (batch, 1, t, head_dim), one table per row.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !runs_fused(x) || cos.dtype() != x.dtype() || sin.dtype() != x.dtype() {
        return rope_composed(x, cos, sin);
    }
    let Ok((b, _, t, hd)) = x.dims4() else {
        return rope_composed(x, cos, sin);
    };
    let table_rows = match cos.dims() {
        [tt, d] if (*tt, *d) == (t, hd) => 1,
        [bb, 1, tt, d] if (*bb, *tt, *d) == (b, t, hd) => b,
        // Any other shape: the composed ops broadcast it, or say why they cannot.
        _ => return rope_composed(x, cos, sin),
    };
    if sin.dims() != cos.dims() || hd == 0 || hd % 2 != 0 {
        return rope_composed(x, cos, sin);
    }
    x.contiguous()?.apply_op1(Rope {
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
        table_rows,
        inverse: false,
    })
}

/// The composed twin, from differentiable elementary ops.
pub fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

const NAME: &str = "fused-rope";

struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// 1: one (t, head_dim) table for every batch row; batch: one per row.
    table_rows: usize,
    /// The transposed rotation: the backward of the forward one.
    inverse: bool,
}

/// Rotates every (head_dim)-row of `x`, (batch, heads, t, head_dim) flattened, with the tables'
/// row for its batch row and position.
fn rotate<T: Real>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    (_, heads, t, hd): (usize, usize, usize, usize),
    table_rows: usize,
    inverse: bool,
) -> Vec<T> {
    let half = hd / 2;
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(hd)
        .zip(x.par_chunks(hd))
        .enumerate()
        .with_min_len(rows_per_task(hd))
        .for_each(|(row, (y, x))| {
            let position = row % t;
            let batch_row = row / (heads * t);
            let table = if table_rows == 1 {
                position
            } else {
                batch_row * t + position
            } * hd;
            let (c, s) = (&cos[table..table + hd], &sin[table..table + hd]);
            let (x1, x2) = x.split_at(half);
            let (y1, y2) = y.split_at_mut(half);
            let (c1, c2) = c.split_at(half);
            let (s1, s2) = s.split_at(half);
            if inverse {
                for d in 0..half {
                    y1[d] = x1[d] * c1[d] + x2[d] * s2[d];
                    y2[d] = x2[d] * c2[d] - x1[d] * s1[d];
                }
            } else {
                for d in 0..half {
                    y1[d] = x1[d] * c1[d] - x2[d] * s1[d];
                    y2[d] = x2[d] * c2[d] + x1[d] * s2[d];
                }
            }
        });
    out
}

impl Rope {
    fn run<T: Real>(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims4()?;
        let x = slice_of::<T>(x, layout, NAME)?;
        let out = with_slice::<T, _>(&self.cos, NAME, |cos| {
            with_slice::<T, _>(&self.sin, NAME, |sin| {
                Ok(rotate(x, cos, sin, dims, self.table_rows, self.inverse))
            })
        })?;
        Ok((T::to_cpu_storage_owned(out), layout.shape().clone()))
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        match storage {
            CpuStorage::F32(_) => self.run::<f32>(storage, layout),
            CpuStorage::F64(_) => self.run::<f64>(storage, layout),
            _ => candle_core::bail!("{NAME}: only f32 and f64"),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !matches!(grad.dtype(), DType::F32 | DType::F64) {
            candle_core::bail!("{NAME}: no backward in {:?}", grad.dtype());
        }
        Ok(Some(grad.contiguous()?.apply_op1(Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            table_rows: self.table_rows,
            inverse: !self.inverse,
        })?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::ops::cpu::check::{gradients_match_finite_differences, max_diff, random};
    use candle_core::Var;

    /// Real rotary tables (angles `position * frequency`, both halves alike) as the model makes.
    fn tables(rows: usize, hd: usize, dtype: DType) -> (Tensor, Tensor) {
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for row in 0..rows {
            for _ in 0..2 {
                for i in 0..hd / 2 {
                    let angle = (row % 7) as f64 * 10f64.powf(-(2.0 * i as f64) / hd as f64);
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let dev = candle_core::Device::Cpu;
        (
            Tensor::from_vec(cos, (rows, hd), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
            Tensor::from_vec(sin, (rows, hd), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        )
    }

    #[test]
    fn fused_equals_composed_for_both_table_shapes() {
        let (b, h, t, hd) = (2, 3, 5, 8);
        let x = Var::from_tensor(&random(&[b, h, t, hd], 1, DType::F32)).unwrap();
        let probe = random(&[b, h, t, hd], 2, DType::F32);
        let shared = tables(t, hd, DType::F32);
        let (c, s) = tables(b * t, hd, DType::F32);
        let per_row = (
            c.reshape((b, 1, t, hd)).unwrap(),
            s.reshape((b, 1, t, hd)).unwrap(),
        );
        for (cos, sin) in [shared, per_row] {
            let fused = rope(x.as_tensor(), &cos, &sin).unwrap();
            let composed = rope_composed(x.as_tensor(), &cos, &sin).unwrap();
            assert!(max_diff(&fused, &composed) < 1e-6);
            let gf = (fused * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gc = (composed * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let d = max_diff(
                gf.get(x.as_tensor()).unwrap(),
                gc.get(x.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "{d}");
        }
    }

    #[test]
    fn gradients_are_the_finite_differences_for_any_tables() {
        let (b, h, t, hd) = (2, 2, 3, 4);
        let x = random(&[b, h, t, hd], 3, DType::F64);
        // Arbitrary tables, halves unlike: the backward must be the true transpose.
        let cos = random(&[t, hd], 4, DType::F64);
        let sin = random(&[t, hd], 5, DType::F64);
        gradients_match_finite_differences(
            &|xs| rope(&xs[0], &cos, &sin),
            std::slice::from_ref(&x),
        );
        let cos = random(&[b, 1, t, hd], 6, DType::F64);
        let sin = random(&[b, 1, t, hd], 7, DType::F64);
        gradients_match_finite_differences(&|xs| rope(&xs[0], &cos, &sin), &[x]);
    }

    #[test]
    fn mismatched_tables_are_an_error() {
        let x = random(&[1, 2, 3, 4], 1, DType::F32);
        let (cos, sin) = tables(5, 4, DType::F32);
        assert!(rope(&x, &cos, &sin).is_err());
    }
}
