//! Where fused ops put a trained weight's gradient: summed in place over every backward of a
//! step, instead of returned to candle's gradient store.
//!
//! Why: candle's backward gives every op's gradient for an input to `GradStore`, which adds it to
//! a fresh zero tensor (or to what is there) as a new tensor: for a weight, a weight-sized
//! allocation and two passes per use, beside the op's own work (and, through a transpose, a
//! strided copy on one thread). An op holding a `GradSink` writes its weight gradient straight
//! into the sum (gemm accumulating), and returns nothing to candle for the weight. Whoever reads
//! the gradients must then read the sinks too: `CausalLm::gradients` does, for every trained
//! weight.

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, Result, Shape, Tensor};

use super::cpu::Real;

/// Where the fused ops add a trained weight's gradient, summed over every backward since the
/// last `take`: the same data `GradStore` would hold, written in place.
#[derive(Debug, Default)]
pub struct GradSink {
    sum: Mutex<Option<CpuStorage>>,
}

impl GradSink {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The gradient summed since the last `take` (None if no backward reached the weight), as a
    /// tensor of `shape`; the sink is empty after.
    pub fn take(&self, shape: &Shape) -> Result<Option<Tensor>> {
        let Some(sum) = self.lock()?.take() else {
            return Ok(None);
        };
        let device = candle_core::Device::Cpu;
        let tensor = match sum {
            CpuStorage::F32(v) => Tensor::from_vec(v, shape, &device)?,
            CpuStorage::F64(v) => Tensor::from_vec(v, shape, &device)?,
            _ => bail!("gradient sink: only f32 and f64"),
        };
        Ok(Some(tensor))
    }

    /// Forgets what was summed (a step that failed half-way must not leak into the next one).
    pub fn clear(&self) -> Result<()> {
        *self.lock()? = None;
        Ok(())
    }

    /// Runs `add(buffer, accumulate)` on the sum's `len` elements and returns what it returns.
    /// `accumulate` is false when the sink was empty: the buffer is then zeros, which `add` may
    /// overwrite instead of adding to.
    pub fn add_with<T: Real, R>(
        &self,
        len: usize,
        add: impl FnOnce(&mut [T], bool) -> Result<R>,
    ) -> Result<R> {
        let mut guard = self.lock()?;
        let (mut buffer, accumulate) = match guard.take() {
            Some(sum) => (T::cpu_storage_data(sum)?, true),
            None => (vec![T::zero(); len], false),
        };
        if buffer.len() != len {
            bail!(
                "gradient sink: holds {} elements, the weight has {len}",
                buffer.len()
            );
        }
        let out = add(&mut buffer, accumulate)?;
        *guard = Some(T::to_cpu_storage_owned(buffer));
        Ok(out)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Option<CpuStorage>>> {
        self.sum
            .lock()
            .map_err(|_| candle_core::Error::Msg("gradient sink: poisoned".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_until_taken() {
        let sink = GradSink::new();
        let shape = Shape::from((2, 2));
        assert!(sink.take(&shape).unwrap().is_none());
        for k in 1..=3 {
            sink.add_with::<f32, _>(4, |buf, accumulate| {
                assert_eq!(accumulate, k > 1);
                if k == 1 {
                    assert!(
                        buf.iter().all(|v| *v == 0.0),
                        "an empty sink starts at zero"
                    );
                }
                buf.iter_mut().for_each(|v| *v += k as f32);
                Ok(())
            })
            .unwrap();
        }
        let sum = sink.take(&shape).unwrap().unwrap();
        assert_eq!(sum.to_vec2::<f32>().unwrap(), vec![vec![6.0; 2]; 2]);
        assert!(sink.take(&shape).unwrap().is_none(), "take empties");
    }

    #[test]
    fn clear_forgets_and_a_wrong_length_is_an_error() {
        let sink = GradSink::new();
        sink.add_with::<f64, _>(3, |_, _| Ok(())).unwrap();
        assert!(sink.add_with::<f64, _>(4, |_, _| Ok(())).is_err());
        sink.clear().unwrap();
        assert!(sink.take(&Shape::from(3)).unwrap().is_none());
    }
}
