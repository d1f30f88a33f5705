//! AdamW, the learning-rate schedule and gradient clipping.
//!
//! Our own rather than candle-nn's `AdamW` because the trainer needs gradients accumulated over
//! micro-batches, clipped by global norm and averaged across devices before one step.

use std::cell::RefCell;

use candle_core::{CpuStorage, DType, Layout, Result, Tensor, Var};
use rayon::prelude::*;

use crate::trainer::ops::{self, Kernels};

pub struct AdamW {
    params: Vec<Var>,
    /// Decoupled weight decay applies to matrices only, not to norm gains.
    decays: Vec<bool>,
    moments: Moments,
    step: i32,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

/// The first and second moments, one per parameter, in the form the update computes with.
enum Moments {
    /// Tensors updated by candle's elementary ops, about 14 per parameter (`Kernels::Composed`,
    /// and wherever the fused update does not run: CUDA, half precision).
    Tensors { m: Vec<Tensor>, v: Vec<Tensor> },
    /// Plain f32 buffers, updated with the parameter in one in-place pass over the four arrays
    /// (`Kernels::Fused` on the CPU): no temporaries, no new parameter storage each step.
    Flat { m: Vec<Vec<f32>>, v: Vec<Vec<f32>> },
}

impl AdamW {
    pub fn new(params: Vec<Var>, weight_decay: f64) -> Result<Self> {
        let m = params
            .iter()
            .map(|p| p.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = m.clone();
        let decays = params.iter().map(|p| p.rank() >= 2).collect();
        Ok(Self {
            params,
            decays,
            moments: Moments::Tensors { m, v },
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        })
    }

    /// The same optimizer updating with `kernels`: the fused in-place update where every parameter
    /// is an f32 CPU tensor (the model's `kernels()`), the composed one otherwise. The moments
    /// carry over.
    pub fn with_kernels(mut self, kernels: Kernels) -> Result<Self> {
        let fused = kernels == Kernels::Fused
            && self.params.iter().all(|p| {
                ops::effective(kernels, p.device()) == Kernels::Fused && p.dtype() == DType::F32
            });
        let empty = Moments::Flat {
            m: Vec::new(),
            v: Vec::new(),
        };
        self.moments = match (std::mem::replace(&mut self.moments, empty), fused) {
            (Moments::Tensors { m, v }, true) => {
                // One moment at a time, each tensor dropped once copied: never two whole sets.
                let flat = |ts: Vec<Tensor>| -> Result<Vec<Vec<f32>>> {
                    ts.into_iter()
                        .map(|t| t.flatten_all()?.to_vec1::<f32>())
                        .collect()
                };
                Moments::Flat {
                    m: flat(m)?,
                    v: flat(v)?,
                }
            }
            (Moments::Flat { m, v }, false) => Moments::Tensors {
                m: self.as_tensors(&m),
                v: self.as_tensors(&v),
            },
            (unchanged, _) => unchanged,
        };
        Ok(self)
    }

    /// Flat moments as tensors of their parameters' shapes and devices.
    fn as_tensors(&self, flat: &[Vec<f32>]) -> Vec<Tensor> {
        flat.iter()
            .zip(&self.params)
            .map(|(values, p)| {
                Tensor::from_slice(values, p.shape(), p.device())
                    .expect("a flat moment has its parameter's element count")
            })
            .collect()
    }

    /// Whether `step` updates with the fused in-place pass.
    pub fn is_fused(&self) -> bool {
        matches!(self.moments, Moments::Flat { .. })
    }

    /// The moments and step count, to save with a resumable trial.
    pub fn state(&self) -> (usize, Vec<Tensor>, Vec<Tensor>) {
        let step = self.step as usize;
        match &self.moments {
            Moments::Tensors { m, v } => (step, m.clone(), v.clone()),
            Moments::Flat { m, v } => (step, self.as_tensors(m), self.as_tensors(v)),
        }
    }

    /// Restores what `state` gave; shapes must match the parameters.
    pub fn load_state(&mut self, step: usize, m: Vec<Tensor>, v: Vec<Tensor>) -> Result<()> {
        if m.len() != self.params.len() || v.len() != self.params.len() {
            candle_core::bail!(
                "optimizer state has {} tensors for {} parameters",
                m.len(),
                self.params.len()
            );
        }
        for ((p, m), v) in self.params.iter().zip(&m).zip(&v) {
            if m.dims() != p.dims() || v.dims() != p.dims() {
                candle_core::bail!(
                    "optimizer state shape {:?} does not fit parameter {:?}",
                    m.dims(),
                    p.dims()
                );
            }
        }
        self.step = step as i32;
        self.moments = match self.moments {
            Moments::Tensors { .. } => Moments::Tensors { m, v },
            Moments::Flat { .. } => {
                let flat = |ts: Vec<Tensor>| -> Result<Vec<Vec<f32>>> {
                    ts.iter()
                        .map(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
                        .collect()
                };
                Moments::Flat {
                    m: flat(m)?,
                    v: flat(v)?,
                }
            }
        };
        Ok(())
    }

    /// One update with `grads[i]` for `params[i]`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.step_scaled(grads, 1.0, lr)
    }

    /// One update with `grad_scale * grads[i]` for `params[i]`: how a clipped step is taken
    /// (`Clip::scale`) without a scaled copy of every gradient.
    pub fn step_scaled(&mut self, grads: &[Tensor], grad_scale: f64, lr: f64) -> Result<()> {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step);
        let bc2 = 1.0 - self.beta2.powi(self.step);
        match &mut self.moments {
            Moments::Tensors { m: ms, v: vs } => {
                for (i, p) in self.params.iter().enumerate() {
                    let scaled;
                    let g = if grad_scale == 1.0 {
                        &grads[i]
                    } else {
                        scaled = (&grads[i] * grad_scale)?;
                        &scaled
                    };
                    let m = ((&ms[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
                    let v = ((&vs[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
                    let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + self.eps)?)?;
                    let mut theta = p.as_tensor().clone();
                    if self.decays[i] && self.weight_decay > 0.0 {
                        theta = (&theta * (1.0 - lr * self.weight_decay))?;
                    }
                    p.set(&(theta - (update * lr)?)?)?;
                    ms[i] = m;
                    vs[i] = v;
                }
            }
            Moments::Flat { m: ms, v: vs } => {
                for (i, p) in self.params.iter().enumerate() {
                    let decay = if self.decays[i] {
                        lr * self.weight_decay
                    } else {
                        0.0
                    };
                    let constants = UpdateConstants {
                        beta1: self.beta1 as f32,
                        beta2: self.beta2 as f32,
                        one_minus_beta1: (1.0 - self.beta1) as f32,
                        one_minus_beta2: (1.0 - self.beta2) as f32,
                        inv_bc1: (1.0 / bc1) as f32,
                        inv_bc2: (1.0 / bc2) as f32,
                        eps: self.eps as f32,
                        lr: lr as f32,
                        keep: (1.0 - decay) as f32,
                        grad_scale: grad_scale as f32,
                    };
                    ops::cpu::with_slice::<f32, _>(&grads[i], "fused-adamw", |g| {
                        p.as_tensor().inplace_op1(&FusedUpdate {
                            moments: RefCell::new((&mut ms[i], &mut vs[i])),
                            grad: g,
                            constants,
                        })
                    })?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct UpdateConstants {
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    inv_bc1: f32,
    inv_bc2: f32,
    eps: f32,
    lr: f32,
    /// `1 - lr * weight_decay`, or 1 where the parameter does not decay.
    keep: f32,
    /// What the gradient is multiplied by first (clipping).
    grad_scale: f32,
}

/// AdamW on one parameter in place: moments, bias correction, decoupled decay and the step in one
/// pass over the parameter, its moments and its gradient, split over rayon's threads.
struct FusedUpdate<'a> {
    moments: RefCell<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
    grad: &'a [f32],
    constants: UpdateConstants,
}

/// The elementwise update: the same arithmetic, in the same order, as the composed path's tensor
/// ops (candle's affine ops multiply by the f64 constant rounded to f32), so the two agree to
/// rounding.
fn adamw_update(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: UpdateConstants) {
    for i in 0..p.len() {
        let g = g[i] * c.grad_scale;
        let m1 = m[i] * c.beta1 + g * c.one_minus_beta1;
        let v1 = v[i] * c.beta2 + (g * g) * c.one_minus_beta2;
        let update = (m1 * c.inv_bc1) / ((v1 * c.inv_bc2).sqrt() + c.eps);
        p[i] = p[i] * c.keep - update * c.lr;
        m[i] = m1;
        v[i] = v1;
    }
}

impl candle_core::InplaceOp1 for FusedUpdate<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(all) = storage else {
            candle_core::bail!("fused-adamw: only f32 parameters");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fused-adamw: the parameter must be contiguous");
        };
        let p = &mut all[start..end];
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        if m.len() != p.len() || v.len() != p.len() || self.grad.len() != p.len() {
            candle_core::bail!(
                "fused-adamw: parameter of {}, moments of {} and {}, gradient of {}",
                p.len(),
                m.len(),
                v.len(),
                self.grad.len()
            );
        }
        let n = ops::cpu::MIN_TASK_ELEMENTS * 4;
        let c = self.constants;
        p.par_chunks_mut(n)
            .zip(m.par_chunks_mut(n))
            .zip(v.par_chunks_mut(n).zip(self.grad.par_chunks(n)))
            .for_each(|((p, m), (v, g))| adamw_update(p, m, v, g, c));
        Ok(())
    }
}

/// Linear warm-up from 0, then cosine decay to a tenth of the peak.
pub fn learning_rate(peak: f64, step: usize, warmup_steps: usize, total_steps: usize) -> f64 {
    if step < warmup_steps {
        return peak * (step + 1) as f64 / warmup_steps as f64;
    }
    let span = total_steps.saturating_sub(warmup_steps).max(1);
    let progress = ((step - warmup_steps) as f64 / span as f64).min(1.0);
    let floor = 0.1 * peak;
    floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Gradient clipping by global norm: the norm of all gradients together, and the factor that
/// brings it down to the limit (`AdamW::step_scaled` applies it inside the update).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clip {
    /// The global L2 norm before clipping.
    pub norm: f64,
    /// 1, or `max_norm / (norm + 1e-6)` when the norm is over `max_norm` (0 disables).
    pub scale: f64,
}

impl Clip {
    pub fn of(grads: &[Tensor], max_norm: f64) -> Result<Self> {
        let mut sum = 0.0f64;
        for g in grads {
            sum += squared_norm(g)?;
        }
        Ok(Self::from_norm(sum.sqrt(), max_norm))
    }

    pub fn from_norm(norm: f64, max_norm: f64) -> Self {
        let scale = if max_norm > 0.0 && norm > max_norm {
            max_norm / (norm + 1e-6)
        } else {
            1.0
        };
        Clip { norm, scale }
    }
}

/// `sum(g^2)`: on rayon's threads for an f32 CPU tensor (composed, candle squares it into a new
/// tensor and sums that on one thread), with candle's ops otherwise.
fn squared_norm(g: &Tensor) -> Result<f64> {
    if g.device().is_cpu() && g.dtype() == DType::F32 {
        return ops::cpu::with_slice::<f32, _>(g, "gradient norm", |xs| {
            Ok(xs
                .par_chunks(ops::cpu::MIN_TASK_ELEMENTS)
                .map(|c| ops::cpu::dot(c, c) as f64)
                .sum())
        });
    }
    g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!((learning_rate(1.0, 0, 4, 20) - 0.25).abs() < 1e-12);
        assert!((learning_rate(1.0, 3, 4, 20) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1.0, 4, 4, 20) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1.0, 20, 4, 20) - 0.1).abs() < 1e-12);
        assert!(learning_rate(1.0, 10, 4, 20) < 1.0);
    }

    #[test]
    fn adamw_minimises_a_quadratic_and_clipping_bounds_the_norm() {
        let dev = Device::Cpu;
        let x = Var::new(&[3.0f32, -2.0], &dev).unwrap();
        let mut opt = AdamW::new(vec![x.clone()], 0.0).unwrap();
        for _ in 0..300 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let g = grads.get(x.as_tensor()).unwrap().clone();
            opt.step(&[g], 0.05).unwrap();
        }
        let v = x.as_tensor().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
        for dtype in [DType::F32, DType::F64] {
            let g = [
                Tensor::new(&[3.0f32, 0.0], &dev).unwrap(),
                Tensor::new(&[4.0f32], &dev).unwrap(),
            ]
            .map(|t| t.to_dtype(dtype).unwrap());
            let clip = Clip::of(&g, 1.0).unwrap();
            assert!((clip.norm - 5.0).abs() < 1e-6);
            assert!((clip.norm * clip.scale - 1.0).abs() < 1e-6);
            assert_eq!(Clip::of(&g, 10.0).unwrap().scale, 1.0);
            assert_eq!(Clip::of(&g, 0.0).unwrap().scale, 1.0, "0 disables");
        }
        // Large enough to be summed on several threads.
        let big = Tensor::ones(100_000, DType::F32, &dev).unwrap();
        assert!((Clip::of(&[big], 0.0).unwrap().norm - 100_000f64.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn fused_adamw_equals_composed_over_steps_and_resumes() {
        let dev = Device::Cpu;
        let mut rng = crate::util::rng::SplitMix64::new(3);
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
        // A matrix big enough to be split over threads (decays) and a vector (does not).
        let shapes: [&[usize]; 2] = [&[300, 250], &[7]];
        let init: Vec<Vec<f32>> = shapes.iter().map(|s| rand(s.iter().product())).collect();
        let grads: Vec<Vec<Tensor>> = (0..4)
            .map(|_| {
                shapes
                    .iter()
                    .map(|s| Tensor::from_vec(rand(s.iter().product()), *s, &dev).unwrap())
                    .collect()
            })
            .collect();
        let make = |kernels: Kernels| {
            let vars: Vec<Var> = shapes
                .iter()
                .zip(&init)
                .map(|(s, v)| Var::from_vec(v.clone(), *s, &dev).unwrap())
                .collect();
            let opt = AdamW::new(vars.clone(), 0.1)
                .unwrap()
                .with_kernels(kernels)
                .unwrap();
            (vars, opt)
        };
        let (fused_vars, mut fused) = make(Kernels::Fused);
        let (composed_vars, mut composed) = make(Kernels::Composed);
        assert!(fused.is_fused() && !composed.is_fused());
        for (step, g) in grads.iter().enumerate() {
            let lr = 1e-2 * (step + 1) as f64;
            // Clipped steps too: the scale inside the fused update, a scaled copy composed.
            let scale = if step % 2 == 1 { 0.25 } else { 1.0 };
            fused.step_scaled(g, scale, lr).unwrap();
            composed.step_scaled(g, scale, lr).unwrap();
        }
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        for (a, b) in fused_vars.iter().zip(&composed_vars) {
            assert!(diff(a.as_tensor(), b.as_tensor()) < 1e-6);
        }
        let (fs, fm, fv) = fused.state();
        let (cs, cm, cv) = composed.state();
        assert_eq!(fs, cs);
        for (a, b) in fm.iter().chain(&fv).zip(cm.iter().chain(&cv)) {
            assert!(diff(a, b) < 1e-6);
        }
        // Resume: the saved state loaded into a fresh fused optimizer continues alike.
        let (_, mut resumed) = make(Kernels::Fused);
        resumed.params = fused_vars.clone();
        resumed.load_state(fs, fm, fv).unwrap();
        resumed.step(&grads[0], 1e-2).unwrap();
        composed.step(&grads[0], 1e-2).unwrap();
        for (a, b) in fused_vars.iter().zip(&composed_vars) {
            assert!(diff(a.as_tensor(), b.as_tensor()) < 1e-6);
        }
    }
}
