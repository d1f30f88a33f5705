//! A LoRA linear in one op: `y = x W^T + s (x A^T) B^T` for a frozen `W` (out, in) and trained
//! adapters `A` (rank, in) and `B` (out, rank), with its own backward: `dx = g W + s (g B) A`,
//! `dA = s (g B)^T x`, `dB = g^T s (x A^T)`, and no gradient for `W`.
//!
//! Why: composed, each adapted projection is the frozen product (which copied its input and its
//! output in and out of candle's matmul), two rank-sized products, a scale and an add over the
//! output; its backward four more products, a scale and an add of two input-sized gradients, each
//! a pass over memory and a fresh tensor (a 135M LoRA step has 210 adapted projections). Fused,
//! the base and adapter products go into one output buffer through gemm (accumulating), and the
//! input's gradient likewise, row block by row block on rayon's threads.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::cpu::{matmul, rows_per_thread, runs_fused, slice_of, Data, Real, View};

const NAME: &str = "fused-lora-linear";

/// Whether `lora_linear` computes these operands fused: on the CPU, all four f32 (or all f64),
/// none empty. (Adapters in f32 under a half-precision base take the model's composed path.)
pub fn fuses(x: &Tensor, w: &Tensor, a: &Tensor, b: &Tensor) -> bool {
    runs_fused(x)
        && [w, a, b].iter().all(|t| t.dtype() == x.dtype())
        && [x, w, a, b].iter().all(|t| t.elem_count() > 0)
}

/// `x W^T + scale (x A^T) B^T` for `x` (n, in), `W` (out, in), `A` (rank, in), `B` (out, rank):
/// shape (n, out). `W` never gets a gradient. Fused where `fuses`, composed otherwise.
pub fn lora_linear(x: &Tensor, w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    if !fuses(x, w, a, b) {
        return lora_linear_composed(x, w, a, b, scale);
    }
    let op = LoraLinear {
        weight: w.detach().contiguous()?,
        scale,
        dims: Mutex::new(None),
    };
    x.contiguous()?
        .apply_op3(&a.contiguous()?, &b.contiguous()?, op)
}

/// The composed twin: candle's products, scale and add (the weight detached, so it gets no
/// gradient, as in the fused op).
pub fn lora_linear_composed(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let base = x.matmul(&w.detach().t()?)?;
    let low = (x.matmul(&a.t()?)? * scale)?;
    base + low.matmul(&b.t()?)?
}

struct LoraLinear {
    weight: Tensor,
    scale: f64,
    /// Set by the forward, checked by the backward.
    dims: Mutex<Option<Dims>>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
struct Dims {
    n: usize,
    inp: usize,
    out: usize,
    rank: usize,
}

impl Dims {
    /// Rows per rayon task (`cpu::rows_per_thread`).
    fn row_block(&self) -> usize {
        rows_per_thread(self.n)
    }
}

/// `scale x A^T` for a block of `rows` rows of `x`: the adapter's rank-sized intermediate, which
/// the backward recomputes rather than keeps.
fn scaled_low<T: Real>(xb: &[T], rows: usize, a: &[T], d: Dims, scale: T) -> Result<Vec<T>> {
    let mut low = vec![T::zero(); rows * d.rank];
    matmul(
        &mut low,
        View::rows(rows, d.rank, d.rank),
        false,
        xb,
        View::rows(rows, d.inp, d.inp),
        a,
        View::rows(d.rank, d.inp, d.inp).t(),
        scale,
    )?;
    Ok(low)
}

fn forward<T: Real>(x: &[T], w: &[T], a: &[T], b: &[T], d: Dims, scale: T) -> Result<Vec<T>> {
    let mut y = vec![T::zero(); d.n * d.out];
    let block = d.row_block();
    y.par_chunks_mut(block * d.out)
        .enumerate()
        .try_for_each(|(k, yb)| -> Result<()> {
            let rows = yb.len() / d.out;
            let xb = &x[k * block * d.inp..(k * block + rows) * d.inp];
            let xv = View::rows(rows, d.inp, d.inp);
            let yv = View::rows(rows, d.out, d.out);
            matmul(
                yb,
                yv,
                false,
                xb,
                xv,
                w,
                View::rows(d.out, d.inp, d.inp).t(),
                T::one(),
            )?;
            let lv = View::rows(rows, d.rank, d.rank);
            let low = scaled_low(xb, rows, a, d, scale)?;
            matmul(
                yb,
                yv,
                true,
                &low,
                lv,
                b,
                View::rows(d.out, d.rank, d.rank).t(),
                T::one(),
            )
        })?;
    Ok(y)
}

/// The gradients of `x` (None unless asked for), `A` and `B`.
type Grads<T> = (Option<Vec<T>>, Vec<T>, Vec<T>);

/// The gradients of `x` (when `input_grad`), `A` and `B` for the output gradient `g`.
#[allow(clippy::too_many_arguments)]
fn backward<T: Real>(
    x: &[T],
    w: &[T],
    a: &[T],
    b: &[T],
    g: &[T],
    d: Dims,
    scale: T,
    input_grad: bool,
) -> Result<Grads<T>> {
    let block = d.row_block();
    let blocks = d.n.div_ceil(block);
    let mut dx = vec![T::zero(); if input_grad { d.n * d.inp } else { 0 }];
    let slots: Vec<Option<&mut [T]>> = if input_grad {
        dx.chunks_mut(block * d.inp).map(Some).collect()
    } else {
        (0..blocks).map(|_| None).collect()
    };
    // Per row block: its share of dA and dB, summed after.
    let partials: Vec<(Vec<T>, Vec<T>)> = slots
        .into_par_iter()
        .enumerate()
        .map(|(k, dxb)| -> Result<(Vec<T>, Vec<T>)> {
            let r0 = k * block;
            let rows = block.min(d.n - r0);
            let xb = &x[r0 * d.inp..(r0 + rows) * d.inp];
            let gb = &g[r0 * d.out..(r0 + rows) * d.out];
            let xv = View::rows(rows, d.inp, d.inp);
            let gv = View::rows(rows, d.out, d.out);
            let lv = View::rows(rows, d.rank, d.rank);
            // g B (rows, rank) and s x A^T (rows, rank).
            let mut g_b = vec![T::zero(); rows * d.rank];
            matmul(
                &mut g_b,
                lv,
                false,
                gb,
                gv,
                b,
                View::rows(d.out, d.rank, d.rank),
                T::one(),
            )?;
            let low = scaled_low(xb, rows, a, d, scale)?;
            if let Some(dxb) = dxb {
                matmul(
                    dxb,
                    xv,
                    false,
                    gb,
                    gv,
                    w,
                    View::rows(d.out, d.inp, d.inp),
                    T::one(),
                )?;
                matmul(
                    dxb,
                    xv,
                    true,
                    &g_b,
                    lv,
                    a,
                    View::rows(d.rank, d.inp, d.inp),
                    scale,
                )?;
            }
            let mut da = vec![T::zero(); d.rank * d.inp];
            matmul(
                &mut da,
                View::rows(d.rank, d.inp, d.inp),
                false,
                &g_b,
                lv.t(),
                xb,
                xv,
                scale,
            )?;
            let mut db = vec![T::zero(); d.out * d.rank];
            matmul(
                &mut db,
                View::rows(d.out, d.rank, d.rank),
                false,
                gb,
                gv.t(),
                &low,
                lv,
                T::one(),
            )?;
            Ok((da, db))
        })
        .collect::<Result<_>>()?;
    let mut da = vec![T::zero(); d.rank * d.inp];
    let mut db = vec![T::zero(); d.out * d.rank];
    for (pa, pb) in &partials {
        da.iter_mut().zip(pa).for_each(|(s, v)| *s += *v);
        db.iter_mut().zip(pb).for_each(|(s, v)| *s += *v);
    }
    Ok((input_grad.then_some(dx), da, db))
}

impl LoraLinear {
    fn dims(&self, x: &Layout, a: &Layout, b: &Layout) -> Result<Dims> {
        let (n, inp) = x.shape().dims2()?;
        let (rank, a_in) = a.shape().dims2()?;
        let (out, b_rank) = b.shape().dims2()?;
        let (w_out, w_in) = self.weight.dims2()?;
        if a_in != inp || b_rank != rank || w_out != out || w_in != inp {
            bail!(
                "{NAME}: x {:?}, W {:?}, A {:?}, B {:?} do not fit",
                x.shape(),
                self.weight.shape(),
                a.shape(),
                b.shape()
            );
        }
        Ok(Dims { n, inp, out, rank })
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = self.dims(l1, l2, l3)?;
        if let Ok(mut saved) = self.dims.lock() {
            *saved = Some(d);
        }
        let weight = Data::of(&self.weight);
        macro_rules! run {
            ($t:ty) => {{
                let y = forward::<$t>(
                    slice_of(s1, l1, NAME)?,
                    weight.slice(NAME)?,
                    slice_of(s2, l2, NAME)?,
                    slice_of(s3, l3, NAME)?,
                    d,
                    self.scale as $t,
                )?;
                <$t>::to_cpu_storage_owned(y)
            }};
        }
        let y = match s1 {
            CpuStorage::F32(_) => run!(f32),
            CpuStorage::F64(_) => run!(f64),
            _ => bail!("{NAME}: only f32 and f64"),
        };
        Ok((y, (d.n, d.out).into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = match self.dims.lock() {
            Ok(saved) => match *saved {
                Some(d) => d,
                None => bail!("{NAME}: backward before forward"),
            },
            Err(_) => bail!("{NAME}: the forward's saved state is poisoned"),
        };
        let grad = grad.contiguous()?;
        let (xd, wd, ad, bd, gd) = (
            Data::of(x),
            Data::of(&self.weight),
            Data::of(a),
            Data::of(b),
            Data::of(&grad),
        );
        let input_grad = x.track_op();
        let what = "fused-lora-linear backward";
        macro_rules! run {
            ($t:ty) => {{
                let (dx, da, db) = backward::<$t>(
                    xd.slice(what)?,
                    wd.slice(what)?,
                    ad.slice(what)?,
                    bd.slice(what)?,
                    gd.slice(what)?,
                    d,
                    self.scale as $t,
                    input_grad,
                )?;
                (
                    dx.map(|dx| Tensor::from_vec(dx, (d.n, d.inp), x.device()))
                        .transpose()?,
                    Tensor::from_vec(da, (d.rank, d.inp), a.device())?,
                    Tensor::from_vec(db, (d.out, d.rank), b.device())?,
                )
            }};
        }
        let (dx, da, db) = match x.dtype() {
            DType::F32 => run!(f32),
            DType::F64 => run!(f64),
            other => bail!("{NAME}: no backward in {other:?}"),
        };
        Ok((dx, Some(da), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::ops::cpu::check::{gradients_match_finite_differences, max_diff, random};
    use candle_core::Var;

    #[test]
    fn fused_equals_composed_in_values_and_gradients() {
        // 70 rows: several row blocks, the last one partial.
        let (n, inp, out, rank) = (70, 24, 40, 4);
        let x = Var::from_tensor(&random(&[n, inp], 1, DType::F32)).unwrap();
        let w = random(&[out, inp], 2, DType::F32);
        let a = Var::from_tensor(&random(&[rank, inp], 3, DType::F32)).unwrap();
        let b = Var::from_tensor(&random(&[out, rank], 4, DType::F32)).unwrap();
        let probe = random(&[n, out], 5, DType::F32);
        let run = |f: &dyn Fn() -> Result<Tensor>| {
            let y = f().unwrap();
            let grads = (&y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            (y, grads)
        };
        let (yf, gf) = run(&|| lora_linear(x.as_tensor(), &w, a.as_tensor(), b.as_tensor(), 2.0));
        let (yc, gc) =
            run(&|| lora_linear_composed(x.as_tensor(), &w, a.as_tensor(), b.as_tensor(), 2.0));
        assert!(max_diff(&yf, &yc) < 1e-4, "{}", max_diff(&yf, &yc));
        for v in [&x, &a, &b] {
            let d = max_diff(
                gf.get(v.as_tensor()).unwrap(),
                gc.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "{d}");
        }
        assert!(gf.get(&w).is_none(), "the frozen weight gets no gradient");
    }

    #[test]
    fn gradients_are_the_finite_differences() {
        let w = random(&[5, 6], 7, DType::F64);
        gradients_match_finite_differences(
            &|t| lora_linear(&t[0], &w, &t[1], &t[2], 0.5),
            &[
                random(&[19, 6], 8, DType::F64),
                random(&[3, 6], 9, DType::F64),
                random(&[5, 3], 10, DType::F64),
            ],
        );
    }

    #[test]
    fn shapes_that_do_not_fit_are_an_error() {
        let x = random(&[4, 6], 1, DType::F32);
        let w = random(&[5, 6], 2, DType::F32);
        let a = random(&[3, 7], 3, DType::F32);
        let b = random(&[5, 3], 4, DType::F32);
        assert!(lora_linear(&x, &w, &a, &b, 1.0).is_err());
    }
}
