//! AdamW, the learning-rate schedule and gradient clipping.
//!
//! Our own rather than candle-nn's `AdamW` because the trainer needs gradients accumulated over
//! micro-batches, clipped by global norm and averaged across devices before one step.

use candle_core::{Result, Tensor, Var};

pub struct AdamW {
    params: Vec<Var>,
    /// Decoupled weight decay applies to matrices only, not to norm gains.
    decays: Vec<bool>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: i32,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
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
            m,
            v,
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        })
    }

    /// The moments and step count, to save with a resumable trial.
    pub fn state(&self) -> (usize, &[Tensor], &[Tensor]) {
        (self.step as usize, &self.m, &self.v)
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
        self.m = m;
        self.v = v;
        Ok(())
    }

    /// One update with `grads[i]` for `params[i]`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step);
        let bc2 = 1.0 - self.beta2.powi(self.step);
        for (i, p) in self.params.iter().enumerate() {
            let g = &grads[i];
            let m = ((&self.m[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + self.eps)?)?;
            let mut theta = p.as_tensor().clone();
            if self.decays[i] && self.weight_decay > 0.0 {
                theta = (&theta * (1.0 - lr * self.weight_decay))?;
            }
            p.set(&(theta - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
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

/// Scales gradients so their global L2 norm is at most `max_norm` (0 disables); returns the norm
/// before clipping.
pub fn clip_by_global_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut sum = 0.0f64;
    for g in grads.iter() {
        sum += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = sum.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
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
        let mut g = vec![Tensor::new(&[3.0f32, 4.0], &dev).unwrap()];
        let n = clip_by_global_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let after = g[0]
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        assert!((after - 1.0).abs() < 1e-4);
        let _ = DType::F32;
    }
}
