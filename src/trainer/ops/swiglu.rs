//! SwiGLU's gate `silu(gate) * up`, one pass forward and one backward, saving nothing (the sigmoid
//! is recomputed backwards) where the composed version keeps silu's input, its output and the
//! product's operands.
//!
//! Backward, with `s = sigmoid(gate)`: `d_up = g * gate * s`,
//! `d_gate = g * up * s * (1 + gate * (1 - s))`.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{runs_fused, slice_of, with_slice, Real, MIN_TASK_ELEMENTS};

/// Fused `silu(gate) * up` where it runs (f32/f64 on the CPU), the composed version otherwise.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !runs_fused(gate) || gate.dtype() != up.dtype() || gate.dims() != up.dims() {
        return swiglu_composed(gate, up);
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// The composed twin, from differentiable elementary ops.
pub fn swiglu_composed(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

const NAME: &str = "fused-swiglu";

struct SwiGlu;

/// `out[i] = sigmoid(x[i])`, through one vectorised `exp` pass.
fn sigmoid<T: Real>(x: &[T], out: &mut [T]) {
    out.iter_mut().zip(x).for_each(|(o, x)| *o = -*x);
    T::exp_in_place(out);
    out.iter_mut().for_each(|o| *o = T::one() / (T::one() + *o));
}

fn forward<T: Real>(gate: &[T], up: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); gate.len()];
    out.par_chunks_mut(MIN_TASK_ELEMENTS)
        .zip(
            gate.par_chunks(MIN_TASK_ELEMENTS)
                .zip(up.par_chunks(MIN_TASK_ELEMENTS)),
        )
        .for_each(|(y, (g, u))| {
            sigmoid(g, y);
            for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                *y = g * *y * u;
            }
        });
    out
}

/// `(d_gate, d_up)` for the output gradient `grad`.
fn backward<T: Real>(gate: &[T], up: &[T], grad: &[T]) -> (Vec<T>, Vec<T>) {
    let mut d_gate = vec![T::zero(); gate.len()];
    let mut d_up = vec![T::zero(); gate.len()];
    let n = MIN_TASK_ELEMENTS;
    d_gate
        .par_chunks_mut(n)
        .zip(d_up.par_chunks_mut(n))
        .zip(
            gate.par_chunks(n)
                .zip(up.par_chunks(n))
                .zip(grad.par_chunks(n)),
        )
        .for_each(|((dg, du), ((g, u), gr))| {
            // dg holds the sigmoid until it is overwritten with the gradient.
            sigmoid(g, dg);
            for i in 0..dg.len() {
                let s = dg[i];
                du[i] = gr[i] * g[i] * s;
                dg[i] = gr[i] * u[i] * s * (T::one() + g[i] * (T::one() - s));
            }
        });
    (d_gate, d_up)
}

fn cpu_forward<T: Real>(
    g: &CpuStorage,
    lg: &Layout,
    u: &CpuStorage,
    lu: &Layout,
) -> Result<(CpuStorage, Shape)> {
    if lg.shape() != lu.shape() {
        candle_core::bail!(
            "{NAME}: gate {:?} and up {:?} differ",
            lg.shape(),
            lu.shape()
        );
    }
    let out = forward(slice_of::<T>(g, lg, NAME)?, slice_of::<T>(u, lu, NAME)?);
    Ok((T::to_cpu_storage_owned(out), lg.shape().clone()))
}

fn tensor_backward<T: Real>(
    gate: &Tensor,
    up: &Tensor,
    grad: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (dg, du) = with_slice::<T, _>(gate, NAME, |g| {
        with_slice::<T, _>(up, NAME, |u| {
            with_slice::<T, _>(grad, NAME, |gr| Ok(backward(g, u, gr)))
        })
    })?;
    Ok((
        Some(Tensor::from_vec(dg, gate.shape(), gate.device())?),
        Some(Tensor::from_vec(du, up.shape(), up.device())?),
    ))
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        match s1 {
            CpuStorage::F32(_) => cpu_forward::<f32>(s1, l1, s2, l2),
            CpuStorage::F64(_) => cpu_forward::<f64>(s1, l1, s2, l2),
            _ => candle_core::bail!("{NAME}: only f32 and f64"),
        }
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        match gate.dtype() {
            DType::F32 => tensor_backward::<f32>(gate, up, grad),
            DType::F64 => tensor_backward::<f64>(gate, up, grad),
            other => candle_core::bail!("{NAME}: no backward in {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::ops::cpu::check::{gradients_match_finite_differences, max_diff, random};
    use candle_core::Var;

    #[test]
    fn fused_equals_composed_in_values_and_gradients() {
        // Over MIN_TASK_ELEMENTS, so the work is split into several tasks.
        let shape = [4, 100, 50];
        let g = Var::from_tensor(&random(&shape, 1, DType::F32)).unwrap();
        let u = Var::from_tensor(&random(&shape, 2, DType::F32)).unwrap();
        let probe = random(&shape, 3, DType::F32);
        let fused = swiglu(g.as_tensor(), u.as_tensor()).unwrap();
        let composed = swiglu_composed(g.as_tensor(), u.as_tensor()).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5);
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
        for v in [&g, &u] {
            let d = max_diff(
                gf.get(v.as_tensor()).unwrap(),
                gc.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "{d}");
        }
    }

    #[test]
    fn gradients_are_the_finite_differences() {
        let g = random(&[3, 7], 4, DType::F64);
        let u = random(&[3, 7], 5, DType::F64);
        gradients_match_finite_differences(&|t| swiglu(&t[0], &t[1]), &[g, u]);
    }
}
