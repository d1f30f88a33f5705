//! A trained embedding lookup whose backward adds each position's gradient to its token's row in
//! the weight's `GradSink`, touching only the rows used.
//!
//! Why: candle's `index_select` backward adds the rows into a vocabulary-sized zero tensor with
//! `index_add`, which copies the whole tensor again; with a tied head that is three more passes
//! over a (V, h) gradient (113 MB for SmolLM2-135M) for 512 rows of work. With the head's
//! gradient in the same sink (`ops::cross_entropy::linear_nll` with a sink), the lookup's
//! backward is a few hundred row additions.
//!
//! The op's autograd input is the weight itself (a trained `Var`, so always on the tape); its
//! backward returns nothing to candle.

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::cpu::{runs_fused, slice_of, Data, Real};
use super::grad_sink::GradSink;

const NAME: &str = "fused-embedding";

/// Whether `embedding` computes this weight fused: on the CPU, f32 or f64, not empty.
pub fn fuses(weight: &Tensor) -> bool {
    runs_fused(weight) && weight.elem_count() > 0
}

/// The rows of `weight` (V, h) for `ids` (any shape, u32): shape (ids..., h). The weight's
/// gradient goes to `sink` where `fuses`; otherwise this is candle's `index_select`.
pub fn embedding(ids: &Tensor, weight: &Tensor, sink: &Arc<GradSink>) -> Result<Tensor> {
    let h = weight.dim(1)?;
    let mut shape = ids.dims().to_vec();
    shape.push(h);
    if !fuses(weight) {
        return embedding_composed(ids, weight);
    }
    let vocab = weight.dim(0)?;
    let ids = ids.flatten_all()?.to_vec1::<u32>()?;
    if let Some(id) = ids.iter().find(|id| **id as usize >= vocab) {
        bail!("{NAME}: token {id} outside a vocabulary of {vocab}");
    }
    weight
        .contiguous()?
        .apply_op1(Embedding {
            ids,
            sink: sink.clone(),
        })?
        .reshape(shape)
}

/// The composed twin: candle's `index_select`.
pub fn embedding_composed(ids: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let mut shape = ids.dims().to_vec();
    shape.push(weight.dim(1)?);
    weight.index_select(&ids.flatten_all()?, 0)?.reshape(shape)
}

struct Embedding {
    ids: Vec<u32>,
    sink: Arc<GradSink>,
}

fn gather<T: Real>(weight: &[T], ids: &[u32], h: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(ids.len() * h);
    for &id in ids {
        let row = id as usize * h;
        out.extend_from_slice(&weight[row..row + h]);
    }
    out
}

/// `sum[ids[i]] += grad[i]` for every position i.
fn scatter_add<T: Real>(sum: &mut [T], grad: &[T], ids: &[u32], h: usize) {
    for (i, &id) in ids.iter().enumerate() {
        let row = &mut sum[id as usize * h..(id as usize + 1) * h];
        row.iter_mut()
            .zip(&grad[i * h..(i + 1) * h])
            .for_each(|(s, g)| *s += *g);
    }
}

impl CustomOp1 for Embedding {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, h) = l.shape().dims2()?;
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(gather(slice_of(s, l, NAME)?, &self.ids, h)),
            CpuStorage::F64(_) => CpuStorage::F64(gather(slice_of(s, l, NAME)?, &self.ids, h)),
            _ => bail!("{NAME}: only f32 and f64"),
        };
        Ok((out, (self.ids.len(), h).into()))
    }

    fn bwd(&self, weight: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (vocab, h) = weight.dims2()?;
        let grad = grad.contiguous()?;
        let gd = Data::of(&grad);
        let what = "fused-embedding backward";
        match weight.dtype() {
            DType::F32 => self.sink.add_with::<f32, _>(vocab * h, |sum, _| {
                scatter_add(sum, gd.slice(what)?, &self.ids, h);
                Ok(())
            })?,
            DType::F64 => self.sink.add_with::<f64, _>(vocab * h, |sum, _| {
                scatter_add(sum, gd.slice(what)?, &self.ids, h);
                Ok(())
            })?,
            other => bail!("{NAME}: no backward in {other:?}"),
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::ops::cpu::check::{max_diff, random};
    use candle_core::{Device, Var};

    #[test]
    fn fused_equals_index_select_in_values_and_gradients() {
        for dtype in [DType::F32, DType::F64] {
            let w = Var::from_tensor(&random(&[11, 4], 1, dtype)).unwrap();
            // Repeated tokens: their gradients add up in one row.
            let ids = Tensor::new(&[[3u32, 0, 3], [10, 5, 3]], &Device::Cpu).unwrap();
            let probe = random(&[2, 3, 4], 2, dtype);
            let sink = GradSink::new();
            let yf = embedding(&ids, w.as_tensor(), &sink).unwrap();
            let yc = embedding_composed(&ids, w.as_tensor()).unwrap();
            assert_eq!(yf.dims(), &[2, 3, 4]);
            assert_eq!(max_diff(&yf, &yc), 0.0);
            let backward =
                |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let (gf, gc) = (backward(&yf), backward(&yc));
            assert!(gf.get(w.as_tensor()).is_none(), "the gradient is sunk");
            let sunk = sink.take(w.shape()).unwrap().unwrap();
            assert!(max_diff(&sunk, gc.get(w.as_tensor()).unwrap()) < 1e-6);
        }
    }

    #[test]
    fn adds_to_what_the_sink_holds() {
        // The tied head's gradient is in the sink first; the lookup adds its rows to it.
        let w = Var::from_tensor(&random(&[5, 2], 1, DType::F64)).unwrap();
        let sink = GradSink::new();
        sink.add_with::<f64, _>(10, |sum, _| {
            sum.iter_mut().for_each(|v| *v = 1.0);
            Ok(())
        })
        .unwrap();
        let ids = Tensor::new(&[4u32, 4], &Device::Cpu).unwrap();
        embedding(&ids, w.as_tensor(), &sink)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let sum = sink
            .take(w.shape())
            .unwrap()
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        assert_eq!(sum[4], vec![3.0, 3.0]);
        assert_eq!(sum[0], vec![1.0, 1.0]);
    }

    #[test]
    fn a_token_outside_the_vocabulary_is_an_error() {
        let w = Var::from_tensor(&random(&[5, 2], 1, DType::F32)).unwrap();
        let ids = Tensor::new(&[5u32], &Device::Cpu).unwrap();
        assert!(embedding(&ids, w.as_tensor(), &GradSink::new()).is_err());
    }
}
