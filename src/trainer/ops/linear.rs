//! A projection `y = x W^T` in one op with its own backward: `dx = g W` for candle, and, for a
//! trained `W`, `g^T x` added into the weight's `GradSink` (gemm accumulating in place); a frozen
//! `W` (no sink) gets no gradient work at all.
//!
//! Why: composed, `x.matmul(&W.t())` records a matmul and a transpose. Candle's matmul backward
//! always computes both operands' gradients, so a frozen weight still cost a weight-gradient
//! product; and for a trained one its backward makes the gradient as an (in, out) product, adds
//! it to a fresh zero tensor, transposes it, and adds that strided view to a second fresh zero
//! tensor (one thread, element by element): four weight-sized passes and two allocations beyond
//! the product itself, for each of the seven projections of every layer (a 135M sft step: 210 of
//! them, 106 M weights). Measured with `step_phases` (135M sft, 4 x 128, 2 threads): the
//! backward from 4.1-5.8 s to 3.1-3.3 s.
//!
//! The op's only autograd input is `x`: the weight is held by the op, detached. So it is only
//! used when `x` is itself on the tape; otherwise candle would never call its backward and a
//! trained weight would silently get nothing (`fuses`).

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::cpu::{matmul, rows_per_thread, runs_fused, slice_of, Data, Real, View};
use super::grad_sink::GradSink;

const NAME: &str = "fused-linear";

/// Whether `linear` computes these operands fused: on the CPU, x and W of the same f32
/// (or f64) dtype, neither empty, and `x` on the autograd tape (see the module's doc).
pub fn fuses(x: &Tensor, w: &Tensor) -> bool {
    runs_fused(x)
        && w.dtype() == x.dtype()
        && x.elem_count() > 0
        && w.elem_count() > 0
        && x.track_op()
}

/// `x W^T` for `x` (n, in) and `W` (out, in): shape (n, out). Where `fuses`, `W`'s gradient goes
/// to `sink` if given one (a trained weight) and nowhere if not (a frozen weight). Otherwise this
/// is candle's matmul: a trained `W` (a `Var`'s tensor) gets its gradient in the gradient store
/// as usual, and a frozen one (a plain tensor) none.
pub fn linear(x: &Tensor, w: &Tensor, sink: Option<&Arc<GradSink>>) -> Result<Tensor> {
    if !fuses(x, w) {
        return linear_composed(x, w);
    }
    let op = Linear {
        weight: w.detach().contiguous()?,
        sink: sink.cloned(),
    };
    x.contiguous()?.apply_op1(op)
}

/// The composed twin: candle's product with the transposed weight.
pub fn linear_composed(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.matmul(&w.t()?)
}

struct Linear {
    weight: Tensor,
    /// A trained weight's; none for a frozen one.
    sink: Option<Arc<GradSink>>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
struct Dims {
    n: usize,
    inp: usize,
    out: usize,
}

/// `dst` (rows x cols, row-major) = `lhs` `rhs` by blocks of `dst`'s rows, one rayon task each.
/// `lhs_rows(r0, rows)` gives the slice and view of `lhs`'s rows `r0..r0 + rows`.
fn par_rows<'a, T: Real>(
    dst: &mut [T],
    cols: usize,
    accumulate: bool,
    lhs_rows: impl Fn(usize, usize) -> (&'a [T], View) + Sync,
    rhs: &[T],
    rhs_view: View,
) -> Result<()> {
    let rows = dst.len() / cols.max(1);
    let block = rows_per_thread(rows);
    dst.par_chunks_mut(block * cols)
        .enumerate()
        .try_for_each(|(k, db)| {
            let r = db.len() / cols;
            let (lhs, lhs_view) = lhs_rows(k * block, r);
            matmul(
                db,
                View::rows(r, cols, cols),
                accumulate,
                lhs,
                lhs_view,
                rhs,
                rhs_view,
                T::one(),
            )
        })
}

fn forward<T: Real>(x: &[T], w: &[T], d: Dims) -> Result<Vec<T>> {
    let mut y = vec![T::zero(); d.n * d.out];
    par_rows(
        &mut y,
        d.out,
        false,
        |r0, rows| {
            (
                &x[r0 * d.inp..(r0 + rows) * d.inp],
                View::rows(rows, d.inp, d.inp),
            )
        },
        w,
        View::rows(d.out, d.inp, d.inp).t(),
    )?;
    Ok(y)
}

/// `dx = g W`, and, when given `(dw, accumulate)`, `g^T x` added into `dw` (overwriting it
/// unless `accumulate`).
fn backward<T: Real>(
    x: &[T],
    w: &[T],
    g: &[T],
    d: Dims,
    dw: Option<(&mut [T], bool)>,
) -> Result<Vec<T>> {
    let mut dx = vec![T::zero(); d.n * d.inp];
    par_rows(
        &mut dx,
        d.inp,
        false,
        |r0, rows| {
            (
                &g[r0 * d.out..(r0 + rows) * d.out],
                View::rows(rows, d.out, d.out),
            )
        },
        w,
        View::rows(d.out, d.inp, d.inp),
    )?;
    if let Some((dw, accumulate)) = dw {
        // dW's rows o0..o0+rows are g's columns o0..o0+rows, transposed, times x.
        par_rows(
            dw,
            d.inp,
            accumulate,
            |o0, rows| (&g[o0..], View::rows(d.n, rows, d.out).t()),
            x,
            View::rows(d.n, d.inp, d.inp),
        )?;
    }
    Ok(dx)
}

impl Linear {
    fn dims(&self, x: &Layout) -> Result<Dims> {
        let (n, inp) = x.shape().dims2()?;
        let (out, w_in) = self.weight.dims2()?;
        if w_in != inp {
            bail!(
                "{NAME}: x {:?} and W {:?} do not fit",
                x.shape(),
                self.weight.shape()
            );
        }
        Ok(Dims { n, inp, out })
    }
}

impl CustomOp1 for Linear {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = self.dims(l)?;
        let weight = Data::of(&self.weight);
        let y = match s {
            CpuStorage::F32(_) => {
                f32::to_cpu_storage_owned(forward(slice_of(s, l, NAME)?, weight.slice(NAME)?, d)?)
            }
            CpuStorage::F64(_) => {
                f64::to_cpu_storage_owned(forward(slice_of(s, l, NAME)?, weight.slice(NAME)?, d)?)
            }
            _ => bail!("{NAME}: only f32 and f64"),
        };
        Ok((y, (d.n, d.out).into()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = self.dims(x.layout())?;
        let grad = grad.contiguous()?;
        let (xd, wd, gd) = (Data::of(x), Data::of(&self.weight), Data::of(&grad));
        let what = "fused-linear backward";
        macro_rules! run {
            ($t:ty) => {{
                let (xs, ws, gs) = (xd.slice(what)?, wd.slice(what)?, gd.slice(what)?);
                let dx = match &self.sink {
                    Some(sink) => sink.add_with::<$t, _>(d.out * d.inp, |dw, accumulate| {
                        backward::<$t>(xs, ws, gs, d, Some((dw, accumulate)))
                    })?,
                    None => backward::<$t>(xs, ws, gs, d, None)?,
                };
                Tensor::from_vec(dx, (d.n, d.inp), x.device())?
            }};
        }
        let dx = match x.dtype() {
            DType::F32 => run!(f32),
            DType::F64 => run!(f64),
            other => bail!("{NAME}: no backward in {other:?}"),
        };
        Ok(Some(dx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::ops::cpu::check::{max_diff, random};
    use candle_core::Var;

    /// Values, the input's gradient and the weight's (from the sink) against candle's matmul;
    /// frozen (no sink), no gradient for the weight anywhere.
    fn compare(n: usize, inp: usize, out: usize, dtype: DType, tolerance: f64) {
        let x = Var::from_tensor(&random(&[n, inp], 1, dtype)).unwrap();
        let w = Var::from_tensor(&random(&[out, inp], 2, dtype)).unwrap();
        let probe = random(&[n, out], 3, dtype);
        let backward = |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let yc = linear_composed(x.as_tensor(), w.as_tensor()).unwrap();
        let gc = backward(&yc);
        for trained in [true, false] {
            let sink = GradSink::new();
            let yf = linear(x.as_tensor(), w.as_tensor(), trained.then_some(&sink)).unwrap();
            assert!(max_diff(&yf, &yc) < tolerance, "{}", max_diff(&yf, &yc));
            let gf = backward(&yf);
            let dx = max_diff(
                gf.get(x.as_tensor()).unwrap(),
                gc.get(x.as_tensor()).unwrap(),
            );
            assert!(dx < tolerance, "dx {dx}");
            assert!(
                gf.get(w.as_tensor()).is_none(),
                "W's gradient is never stored"
            );
            match sink.take(w.shape()).unwrap() {
                Some(dw) => {
                    assert!(trained, "a frozen weight gets no gradient");
                    let d = max_diff(&dw, gc.get(w.as_tensor()).unwrap());
                    assert!(d < tolerance, "dW {d}");
                }
                None => assert!(!trained, "a trained weight's gradient is sunk"),
            }
            assert!(sink.take(w.shape()).unwrap().is_none(), "take empties");
        }
    }

    #[test]
    fn fused_equals_composed_in_values_and_gradients() {
        // 70 rows and 41 outputs: several row blocks each way, the last ones partial.
        compare(70, 24, 41, DType::F32, 1e-4);
        compare(70, 24, 41, DType::F64, 1e-12);
        compare(1, 3, 2, DType::F64, 1e-12);
    }

    #[test]
    fn gradients_are_the_finite_differences() {
        // The weight is an input of a composed function here, so its gradient is checked through
        // the sink below; the input's against finite differences.
        let w = random(&[5, 6], 7, DType::F64);
        crate::trainer::ops::cpu::check::gradients_match_finite_differences(
            &|t| linear(&t[0], &w, Some(&GradSink::new())),
            &[random(&[19, 6], 8, DType::F64)],
        );
        // dW by finite differences of sum(probe * x W^T) in W.
        let x = Var::from_tensor(&random(&[9, 4], 9, DType::F64)).unwrap();
        let w0: Vec<f64> = random(&[3, 4], 10, DType::F64)
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let probe = random(&[9, 3], 11, DType::F64);
        let loss = |w: &[f64]| -> f64 {
            let w = Tensor::from_slice(w, (3, 4), &candle_core::Device::Cpu).unwrap();
            (linear_composed(x.as_tensor(), &w).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let sink = GradSink::new();
        let w = Tensor::from_slice(&w0, (3, 4), &candle_core::Device::Cpu).unwrap();
        (linear(x.as_tensor(), &w, Some(&sink)).unwrap() * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let dw: Vec<f64> = sink
            .take(w.shape())
            .unwrap()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (i, got) in dw.iter().enumerate() {
            let (mut up, mut down) = (w0.clone(), w0.clone());
            up[i] += 1e-6;
            down[i] -= 1e-6;
            let numeric = (loss(&up) - loss(&down)) / 2e-6;
            assert!((got - numeric).abs() < 1e-6, "dW[{i}]: {got} vs {numeric}");
        }
    }

    #[test]
    fn backwards_accumulate_until_taken_and_clear_forgets() {
        let x = Var::from_tensor(&random(&[20, 6], 1, DType::F64)).unwrap();
        let w = random(&[5, 6], 2, DType::F64);
        let sink = GradSink::new();
        let once = |sink: &Arc<GradSink>| {
            linear(x.as_tensor(), &w, Some(sink))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
        };
        once(&sink);
        let single = sink.take(w.shape()).unwrap().unwrap();
        once(&sink);
        once(&sink);
        let double = sink.take(w.shape()).unwrap().unwrap();
        assert!(max_diff(&(single * 2.0).unwrap(), &double) < 1e-12);
        once(&sink);
        sink.clear().unwrap();
        assert!(sink.take(w.shape()).unwrap().is_none());
    }

    #[test]
    fn an_input_off_the_tape_takes_the_composed_path() {
        // Nothing upstream trains: candle would never call the op's backward, so W's gradient
        // must come from the gradient store.
        let x = random(&[4, 3], 1, DType::F32);
        let w = Var::from_tensor(&random(&[2, 3], 2, DType::F32)).unwrap();
        assert!(!fuses(&x, w.as_tensor()));
        let sink = GradSink::new();
        let grads = linear(&x, w.as_tensor(), Some(&sink))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(w.as_tensor()).is_some());
        assert!(sink.take(w.shape()).unwrap().is_none());
    }

    #[test]
    fn shapes_that_do_not_fit_are_an_error() {
        let x = Var::from_tensor(&random(&[4, 6], 1, DType::F32)).unwrap();
        let w = random(&[5, 7], 2, DType::F32);
        assert!(linear(x.as_tensor(), &w, Some(&GradSink::new())).is_err());
    }
}
