//! RMSNorm `y = x / sqrt(mean(x^2) + eps) * weight` over the last dimension, one pass forward and
//! one backward, saving nothing: the per-row inverse RMS is recomputed in the backward pass (one
//! dot product per row), cheaper than keeping the composed version's four activation-sized
//! tensors.
//!
//! Backward, with `r` the row's inverse RMS and `h` its width:
//! `dx = r * g * w - x * r^3 * sum(g * w * x) / h`, `dweight = sum over rows of g * x * r`.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::cpu::{dot, rows_per_task, runs_fused, slice_of, with_slice, Real};

/// Fused RMSNorm where it runs (f32/f64 on the CPU, `x` and `weight` of one dtype), the composed
/// version otherwise.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !runs_fused(x) || x.dtype() != weight.dtype() {
        return rms_norm_composed(x, weight, eps);
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps })
}

/// The composed twin, from differentiable elementary ops. Half precision is normalised in f32, as
/// transformers does.
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = if matches!(dtype, DType::F16 | DType::BF16) {
        x.to_dtype(DType::F32)?
    } else {
        x.clone()
    };
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?;
    normed.broadcast_mul(weight)
}

struct RmsNorm {
    eps: f64,
}

const NAME: &str = "fused-rms-norm";

fn inverse_rms<T: Real>(row: &[T], eps: T) -> T {
    let n = T::from(row.len()).unwrap_or_else(T::one);
    (dot(row, row) / n + eps).sqrt().recip()
}

fn forward<T: Real>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let h = w.len();
    let eps = T::from_f64(eps);
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .with_min_len(rows_per_task(h))
        .for_each(|(y, x)| {
            let r = inverse_rms(x, eps);
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                *y = x * r * w;
            }
        });
    out
}

/// `(dx, dweight)`; `dweight` only when `want_dw`.
fn backward<T: Real>(x: &[T], w: &[T], g: &[T], eps: f64, want_dw: bool) -> (Vec<T>, Vec<T>) {
    let h = w.len();
    let eps = T::from_f64(eps);
    let inv_h = T::one() / T::from(h).unwrap_or_else(T::one);
    let block = rows_per_task(h) * h;
    let mut dx = vec![T::zero(); x.len()];
    let dw = dx
        .par_chunks_mut(block)
        .zip(x.par_chunks(block).zip(g.par_chunks(block)))
        .map(|(dx, (x, g))| {
            let mut dw = if want_dw {
                vec![T::zero(); h]
            } else {
                Vec::new()
            };
            let mut gw = vec![T::zero(); h];
            for ((dx, x), g) in dx.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)) {
                let r = inverse_rms(x, eps);
                for ((gw, &g), &w) in gw.iter_mut().zip(g).zip(w) {
                    *gw = g * w;
                }
                let c = r * r * r * dot(&gw, x) * inv_h;
                for ((dx, &gw), &x) in dx.iter_mut().zip(&gw).zip(x) {
                    *dx = r * gw - c * x;
                }
                if want_dw {
                    for ((dw, &g), &x) in dw.iter_mut().zip(g).zip(x) {
                        *dw += g * x * r;
                    }
                }
            }
            dw
        })
        .reduce(Vec::new, |a, b| match (a.is_empty(), b.is_empty()) {
            (true, _) => b,
            (_, true) => a,
            _ => a.iter().zip(&b).map(|(&p, &q)| p + q).collect(),
        });
    let dw = if want_dw && dw.is_empty() {
        vec![T::zero(); h]
    } else {
        dw
    };
    (dx, dw)
}

fn cpu_forward<T: Real>(
    x: &CpuStorage,
    lx: &Layout,
    w: &CpuStorage,
    lw: &Layout,
    eps: f64,
) -> Result<(CpuStorage, Shape)> {
    let (x, w) = (slice_of::<T>(x, lx, NAME)?, slice_of::<T>(w, lw, NAME)?);
    let h = lx.shape().dims().last().copied().unwrap_or(0);
    if w.len() != h || h == 0 {
        candle_core::bail!("{NAME}: weight of {} for rows of {h}", w.len());
    }
    Ok((
        T::to_cpu_storage_owned(forward(x, w, eps)),
        lx.shape().clone(),
    ))
}

fn tensor_backward<T: Real>(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    eps: f64,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let want_dw = w.track_op();
    let (dx, dw) = with_slice::<T, _>(x, NAME, |xs| {
        with_slice::<T, _>(w, NAME, |ws| {
            with_slice::<T, _>(g, NAME, |gs| Ok(backward(xs, ws, gs, eps, want_dw)))
        })
    })?;
    let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
    let dw = if want_dw {
        Some(Tensor::from_vec(dw, w.shape(), w.device())?)
    } else {
        None
    };
    Ok((Some(dx), dw))
}

impl CustomOp2 for RmsNorm {
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
            CpuStorage::F32(_) => cpu_forward::<f32>(s1, l1, s2, l2, self.eps),
            CpuStorage::F64(_) => cpu_forward::<f64>(s1, l1, s2, l2, self.eps),
            _ => candle_core::bail!("{NAME}: only f32 and f64"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        match x.dtype() {
            DType::F32 => tensor_backward::<f32>(x, w, grad, self.eps),
            DType::F64 => tensor_backward::<f64>(x, w, grad, self.eps),
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
        let x = Var::from_tensor(&random(&[3, 5, 40], 1, DType::F32)).unwrap();
        let w = Var::from_tensor(&random(&[40], 2, DType::F32)).unwrap();
        let probe = random(&[3, 5, 40], 3, DType::F32);
        let fused = rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap();
        let composed = rms_norm_composed(x.as_tensor(), w.as_tensor(), 1e-6).unwrap();
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
        for v in [&x, &w] {
            let d = max_diff(
                gf.get(v.as_tensor()).unwrap(),
                gc.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "{d}");
        }
    }

    #[test]
    fn gradients_are_the_finite_differences() {
        let x = random(&[2, 3, 6], 4, DType::F64);
        let w = random(&[6], 5, DType::F64);
        gradients_match_finite_differences(&|t| rms_norm(&t[0], &t[1], 1e-5), &[x, w]);
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_and_rows_split_over_threads_alike() {
        // Enough rows that the work is split into several rayon tasks.
        let x = Var::from_tensor(&random(&[2048, 16], 6, DType::F32)).unwrap();
        let w = random(&[16], 7, DType::F32);
        let fused = rms_norm(x.as_tensor(), &w, 1e-6).unwrap();
        let composed = rms_norm_composed(x.as_tensor(), &w, 1e-6).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5);
        let g = fused.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&w).is_none());
        let gc = composed.sum_all().unwrap().backward().unwrap();
        assert!(
            max_diff(
                g.get(x.as_tensor()).unwrap(),
                gc.get(x.as_tensor()).unwrap()
            ) < 1e-4
        );
    }
}
