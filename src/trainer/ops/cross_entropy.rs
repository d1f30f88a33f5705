//! The language-model head and its cross-entropy in one op: from hidden states (n, h), the head's
//! weight (V, h) and the targets (n), each position's negative log-likelihood, computing the
//! logits a block of vocabulary at a time (a chunked log-sum-exp) and never keeping them; the
//! backward recomputes each block and turns it into `softmax - one-hot` on the spot.
//!
//! Why: composed, the head's (n, V) logits, the log-softmax's (n, V) result and their gradients
//! are whole tensors (about 100 MB each for 512 positions of a 49k vocabulary), and the
//! log-softmax's reductions run on one thread.

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::cpu::{self, dot, matmul, runs_fused, slice_of, Data, Real, View};
use super::grad_sink::GradSink;

/// Positions per block.
const ROW_BLOCK: usize = 128;
/// Vocabulary entries per block: a block's logits (rows x chunk) are the only transient.
const VOCAB_CHUNK: usize = 1024;

/// The negative log-likelihood of `targets` (n, u32) under `softmax(hidden weight^T)`, for
/// `hidden` (n, h) and `weight` (V, h): shape (n,). The weight gets a gradient only when it
/// tracks one (a frozen head, as under LoRA, costs no weight-gradient work), or, fused, into
/// `sink` when given one (`ops::grad_sink`; only while `hidden` is on the tape, so that the
/// backward runs). Fused on the CPU in f32/f64, composed elsewhere.
pub fn linear_nll(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    sink: Option<&Arc<GradSink>>,
) -> Result<Tensor> {
    if !runs_fused(hidden) {
        return composed_linear_nll(hidden, weight, targets);
    }
    let sink = sink.filter(|_| hidden.track_op() && weight.dtype() == hidden.dtype());
    // Keep the logits' blocks for the backward where there will be one and they are not too big.
    let keep_logits = (hidden.track_op() || weight.track_op())
        && crate::spec::memory::keeps_logits(hidden.dim(0)?, weight.dim(0)?);
    linear_nll_in_blocks(hidden, weight, targets, sink, BLOCKING, keep_logits)
}

fn linear_nll_in_blocks(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    sink: Option<&Arc<GradSink>>,
    blocking: Blocking,
    keep_logits: bool,
) -> Result<Tensor> {
    let (n, h) = hidden.dims2()?;
    let (vocab, wh) = weight.dims2()?;
    let targets = targets.to_vec1::<u32>()?;
    if wh != h || targets.len() != n {
        bail!(
            "fused cross-entropy: hidden {:?}, weight {:?}, {} targets",
            hidden.dims(),
            weight.dims(),
            targets.len()
        );
    }
    if let Some(t) = targets.iter().find(|t| **t as usize >= vocab) {
        bail!("fused cross-entropy: target {t} outside a vocabulary of {vocab}");
    }
    let op = FusedLinearNll {
        targets,
        blocking,
        keep_logits,
        saved: Mutex::new(None),
        sink: sink.cloned(),
    };
    // A sunk weight is off the tape: its gradient goes to the sink, none to candle.
    let weight = match sink {
        Some(_) => weight.detach(),
        None => weight.to_dtype(hidden.dtype())?,
    };
    hidden.contiguous()?.apply_op2(&weight.contiguous()?, op)
}

/// The same loss from candle's elementary ops: the logits, a log-softmax over the whole
/// vocabulary, the targets' entries.
pub fn composed_linear_nll(hidden: &Tensor, weight: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = hidden.matmul(&weight.t()?)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
}

/// The log-probabilities of chosen tokens after each hidden state: `wanted[i]`'s tokens under
/// `softmax(hidden[i] weight^T)`, for `hidden` (n, h) and `weight` (V, h), with no gradient
/// (evaluation's label scoring). Fused on the CPU in f32/f64: the logits exist a block at a
/// time, and only the wanted tokens' logits are computed whole (one dot product each); composed
/// elsewhere.
pub fn chosen_log_probs(
    hidden: &Tensor,
    weight: &Tensor,
    wanted: &[Vec<u32>],
) -> Result<Vec<Vec<f64>>> {
    let (n, h) = hidden.dims2()?;
    let (vocab, wh) = weight.dims2()?;
    if wh != h || wanted.len() != n {
        bail!(
            "chosen log-probabilities: hidden {:?}, weight {:?}, {} rows of tokens",
            hidden.dims(),
            weight.dims(),
            wanted.len()
        );
    }
    if let Some(t) = wanted.iter().flatten().find(|t| **t as usize >= vocab) {
        bail!("chosen log-probabilities: token {t} outside a vocabulary of {vocab}");
    }
    if !runs_fused(hidden) || n == 0 {
        return composed_chosen_log_probs(hidden, weight, wanted);
    }
    let d = Dims { n, h, vocab };
    let weight = weight.to_dtype(hidden.dtype())?;
    macro_rules! run {
        ($t:ty) => {
            cpu::with_slice::<$t, _>(hidden, "chosen log-probabilities", |hs| {
                cpu::with_slice::<$t, _>(&weight, "chosen log-probabilities", |ws| {
                    let lse = BLOCKING.log_sum_exp(hs, ws, d)?;
                    Ok(wanted
                        .iter()
                        .enumerate()
                        .map(|(i, toks)| {
                            let row = &hs[i * h..(i + 1) * h];
                            toks.iter()
                                .map(|t| {
                                    let t = *t as usize;
                                    (dot(row, &ws[t * h..(t + 1) * h]) - lse[i]) as f64
                                })
                                .collect()
                        })
                        .collect())
                })
            })
        };
    }
    match hidden.dtype() {
        candle_core::DType::F32 => run!(f32),
        _ => run!(f64),
    }
}

/// `chosen_log_probs` from candle's ops: the whole (n, V) logits and their log-softmax.
pub fn composed_chosen_log_probs(
    hidden: &Tensor,
    weight: &Tensor,
    wanted: &[Vec<u32>],
) -> Result<Vec<Vec<f64>>> {
    let vocab = weight.dim(0)?;
    let logits = hidden
        .matmul(&weight.to_dtype(hidden.dtype())?.t()?)?
        .to_dtype(candle_core::DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?.flatten_all()?;
    let flat_index: Vec<u32> = wanted
        .iter()
        .enumerate()
        .flat_map(|(c, toks)| toks.iter().map(move |t| (c * vocab + *t as usize) as u32))
        .collect();
    let picked = flat_index.len();
    let values = logp
        .index_select(&Tensor::from_vec(flat_index, picked, hidden.device())?, 0)?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1::<f64>()?;
    let mut at = 0;
    Ok(wanted
        .iter()
        .map(|toks| {
            at += toks.len();
            values[at - toks.len()..at].to_vec()
        })
        .collect())
}

/// How the logits are cut into blocks: `row_block` positions by `vocab_chunk` vocabulary
/// entries, a block's logits (rows x chunk) the only transient.
#[derive(Clone, Copy)]
struct Blocking {
    row_block: usize,
    vocab_chunk: usize,
}

/// One (row block, vocabulary chunk) of the forward's log-sum-exp: each row's max and sum of
/// `exp(z - max)` there, and, when kept, the block's `exp(z - max)` then its rows' maxima.
struct BlockLse<T> {
    stats: Vec<(T, T)>,
    kept: Vec<T>,
}

/// The default blocks.
const BLOCKING: Blocking = Blocking {
    row_block: ROW_BLOCK,
    vocab_chunk: VOCAB_CHUNK,
};

/// Each position's log-sum-exp of its logits and the blocks kept, in the op's element type.
enum Saved {
    F32(Vec<f32>, Vec<Vec<f32>>),
    F64(Vec<f64>, Vec<Vec<f64>>),
}

struct FusedLinearNll {
    targets: Vec<u32>,
    blocking: Blocking,
    /// Keep the forward's blocks for the backward (`log_sum_exp_keeping`).
    keep_logits: bool,
    /// What the forward saved, taken by the backward.
    saved: Mutex<Option<Saved>>,
    /// Where the weight's gradient goes, if not to candle.
    sink: Option<Arc<GradSink>>,
}

#[derive(Clone, Copy)]
struct Dims {
    n: usize,
    h: usize,
    vocab: usize,
}

impl Blocking {
    fn blocks(&self, d: Dims) -> (usize, usize) {
        (
            d.n.div_ceil(self.row_block),
            d.vocab.div_ceil(self.vocab_chunk),
        )
    }

    /// The logits of rows `r0..r0 + rows` for the vocabulary `c0..c0 + width` into `buf`
    /// (rows x width, `vocab_chunk` apart).
    #[allow(clippy::too_many_arguments)]
    fn logits<T: Real>(
        &self,
        buf: &mut [T],
        hidden: &[T],
        weight: &[T],
        d: Dims,
        r0: usize,
        rows: usize,
        c0: usize,
        width: usize,
    ) -> Result<()> {
        matmul(
            buf,
            View::rows(rows, width, self.vocab_chunk),
            false,
            &hidden[r0 * d.h..],
            View::rows(rows, d.h, d.h),
            &weight[c0 * d.h..],
            View::rows(width, d.h, d.h).t(),
            T::one(),
        )
    }

    /// Each position's log-sum-exp of its logits, a block at a time.
    fn log_sum_exp<T: Real>(&self, hidden: &[T], weight: &[T], d: Dims) -> Result<Vec<T>> {
        Ok(self.log_sum_exp_keeping(hidden, weight, d, false)?.0)
    }

    /// `log_sum_exp`, and, when `keep`, every block's `exp(z - max)` (rows x `vocab_chunk`,
    /// block by block in row-block-major order) followed by its rows' maxima: what the backward
    /// turns into the softmax without computing the logits again (`SavedBlocks`).
    fn log_sum_exp_keeping<T: Real>(
        &self,
        hidden: &[T],
        weight: &[T],
        d: Dims,
        keep: bool,
    ) -> Result<(Vec<T>, Vec<Vec<T>>)> {
        let (row_blocks, chunks) = self.blocks(d);
        // Per (row block, vocabulary chunk): each row's (max, sum of exp(z - max)) there.
        let blocks: Vec<BlockLse<T>> = (0..row_blocks * chunks)
            .into_par_iter()
            .map(|task| -> Result<BlockLse<T>> {
                let (rb, vc) = (task / chunks, task % chunks);
                let r0 = rb * self.row_block;
                let rows = self.row_block.min(d.n - r0);
                let c0 = vc * self.vocab_chunk;
                let width = self.vocab_chunk.min(d.vocab - c0);
                let mut buf = vec![T::zero(); rows * self.vocab_chunk];
                self.logits(&mut buf, hidden, weight, d, r0, rows, c0, width)?;
                let stats: Vec<(T, T)> = (0..rows)
                    .map(|i| {
                        let row = &mut buf[i * self.vocab_chunk..i * self.vocab_chunk + width];
                        let max = cpu::max(row);
                        row.iter_mut().for_each(|z| *z -= max);
                        T::exp_in_place(row);
                        (max, cpu::sum(row))
                    })
                    .collect();
                if keep {
                    buf.extend(stats.iter().map(|(max, _)| *max));
                } else {
                    buf = Vec::new();
                }
                Ok(BlockLse { stats, kept: buf })
            })
            .collect::<Result<_>>()?;
        let (partials, kept): (Vec<_>, Vec<_>) =
            blocks.into_iter().map(|b| (b.stats, b.kept)).unzip();
        let mut lse = vec![T::zero(); d.n];
        for (i, l) in lse.iter_mut().enumerate() {
            let (rb, within) = (i / self.row_block, i % self.row_block);
            let parts = &partials[rb * chunks..(rb + 1) * chunks];
            let max = parts
                .iter()
                .map(|p| p[within].0)
                .fold(T::neg_infinity(), |m, z| if z > m { z } else { m });
            let sum = parts.iter().fold(T::zero(), |s, p| {
                s + p[within].1 * (p[within].0 - max).exp()
            });
            *l = max + sum.ln();
        }
        Ok((lse, if keep { kept } else { Vec::new() }))
    }
}

impl FusedLinearNll {
    /// `grad * (softmax - one-hot)` of rows `r0..` for the vocabulary `c0..`, in `buf`: from
    /// the forward's kept block when there is one (`exp(z - max) * exp(max - lse)`), else from
    /// the logits computed again.
    #[allow(clippy::too_many_arguments)]
    fn logit_grads<T: Real>(
        &self,
        buf: &mut [T],
        hidden: &[T],
        weight: &[T],
        lse: &[T],
        kept: &[Vec<T>],
        grad: &[T],
        d: Dims,
        (r0, rows): (usize, usize),
        (c0, width): (usize, usize),
    ) -> Result<()> {
        let chunk = self.blocking.vocab_chunk;
        let block = (r0 / self.blocking.row_block) * self.blocking.blocks(d).1 + c0 / chunk;
        let kept = kept.get(block).filter(|b| b.len() == rows * chunk + rows);
        if kept.is_none() {
            self.blocking
                .logits(buf, hidden, weight, d, r0, rows, c0, width)?;
        }
        for i in 0..rows {
            let (l, g) = (lse[r0 + i], grad[r0 + i]);
            let row = &mut buf[i * chunk..i * chunk + width];
            match kept {
                Some(kept) => {
                    let scale = (kept[rows * chunk + i] - l).exp() * g;
                    row.iter_mut()
                        .zip(&kept[i * chunk..i * chunk + width])
                        .for_each(|(z, e)| *z = *e * scale);
                }
                None => {
                    row.iter_mut().for_each(|z| *z -= l);
                    T::exp_in_place(row);
                    row.iter_mut().for_each(|z| *z *= g);
                }
            }
            let target = self.targets[r0 + i] as usize;
            if (c0..c0 + width).contains(&target) {
                row[target - c0] -= g;
            }
        }
        Ok(())
    }

    /// Each position's log-sum-exp and negative log-likelihood, and the blocks kept for the
    /// backward (none unless `keep_logits`).
    #[allow(clippy::type_complexity)]
    fn forward<T: Real>(
        &self,
        hidden: &[T],
        weight: &[T],
        d: Dims,
    ) -> Result<(Vec<T>, Vec<T>, Vec<Vec<T>>)> {
        let (lse, kept) = self
            .blocking
            .log_sum_exp_keeping(hidden, weight, d, self.keep_logits)?;
        let nll = lse
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let t = self.targets[i] as usize;
                *l - dot(
                    &hidden[i * d.h..(i + 1) * d.h],
                    &weight[t * d.h..(t + 1) * d.h],
                )
            })
            .collect();
        Ok((lse, nll, kept))
    }

    /// The gradient of the hidden states; the weight's is added into `dw` when given one.
    #[allow(clippy::too_many_arguments)]
    fn backward<T: Real>(
        &self,
        hidden: &[T],
        weight: &[T],
        lse: &[T],
        kept: &[Vec<T>],
        grad: &[T],
        d: Dims,
        dw: Option<&mut [T]>,
    ) -> Result<Vec<T>> {
        let weight_grad = dw.is_some();
        let (row_blocks, chunks) = self.blocking.blocks(d);
        let block = self.blocking.row_block.min(d.n) * self.blocking.vocab_chunk;
        let threads = rayon::current_num_threads();
        if !weight_grad && row_blocks >= 2 * threads {
            // Each task owns a block of rows of the hidden gradient and walks the vocabulary.
            let mut dh = vec![T::zero(); d.n * d.h];
            dh.par_chunks_mut(self.blocking.row_block * d.h)
                .enumerate()
                .try_for_each(|(rb, dh)| -> Result<()> {
                    let r0 = rb * self.blocking.row_block;
                    let rows = self.blocking.row_block.min(d.n - r0);
                    let mut buf = vec![T::zero(); block];
                    for vc in 0..chunks {
                        let c0 = vc * self.blocking.vocab_chunk;
                        let width = self.blocking.vocab_chunk.min(d.vocab - c0);
                        self.logit_grads(
                            &mut buf,
                            hidden,
                            weight,
                            lse,
                            kept,
                            grad,
                            d,
                            (r0, rows),
                            (c0, width),
                        )?;
                        matmul(
                            dh,
                            View::rows(rows, d.h, d.h),
                            true,
                            &buf,
                            View::rows(rows, width, self.blocking.vocab_chunk),
                            &weight[c0 * d.h..],
                            View::rows(width, d.h, d.h),
                            T::one(),
                        )?;
                    }
                    Ok(())
                })?;
            return Ok(dh);
        }
        // Each task owns a chunk of the vocabulary (and of the weight's gradient, if any) and
        // walks the rows; the hidden gradient sums over chunks, in one buffer per rayon job.
        // Also the frozen head's way when there are too few rows to share out.
        let slots: Vec<Option<&mut [T]>> = match dw {
            Some(dw) => dw
                .chunks_mut(self.blocking.vocab_chunk * d.h)
                .map(Some)
                .collect(),
            None => (0..chunks).map(|_| None).collect(),
        };
        let per_job = chunks / (4 * threads).max(1);
        let dh = slots
            .into_par_iter()
            .enumerate()
            .with_min_len(per_job.max(1))
            .try_fold(
                || vec![T::zero(); d.n * d.h],
                |mut dh, (vc, mut dw)| -> Result<Vec<T>> {
                    let c0 = vc * self.blocking.vocab_chunk;
                    let width = self.blocking.vocab_chunk.min(d.vocab - c0);
                    let mut buf = vec![T::zero(); block];
                    for rb in 0..row_blocks {
                        let r0 = rb * self.blocking.row_block;
                        let rows = self.blocking.row_block.min(d.n - r0);
                        self.logit_grads(
                            &mut buf,
                            hidden,
                            weight,
                            lse,
                            kept,
                            grad,
                            d,
                            (r0, rows),
                            (c0, width),
                        )?;
                        if let Some(dw) = dw.as_deref_mut() {
                            matmul(
                                dw,
                                View::rows(width, d.h, d.h),
                                true,
                                &buf,
                                View::rows(rows, width, self.blocking.vocab_chunk).t(),
                                &hidden[r0 * d.h..],
                                View::rows(rows, d.h, d.h),
                                T::one(),
                            )?;
                        }
                        matmul(
                            &mut dh[r0 * d.h..],
                            View::rows(rows, d.h, d.h),
                            true,
                            &buf,
                            View::rows(rows, width, self.blocking.vocab_chunk),
                            &weight[c0 * d.h..],
                            View::rows(width, d.h, d.h),
                            T::one(),
                        )?;
                    }
                    Ok(dh)
                },
            )
            .try_reduce(
                || vec![T::zero(); d.n * d.h],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += *y);
                    Ok(a)
                },
            )?;
        Ok(dh)
    }
}

impl CustomOp2 for FusedLinearNll {
    fn name(&self) -> &'static str {
        "fused-linear-nll"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, h) = l1.shape().dims2()?;
        let vocab = l2.shape().dims2()?.0;
        let d = Dims { n, h, vocab };
        let what = "fused cross-entropy";
        let (saved, nll) = match s1 {
            CpuStorage::F32(_) => {
                let (l, o, k) =
                    self.forward::<f32>(slice_of(s1, l1, what)?, slice_of(s2, l2, what)?, d)?;
                (Saved::F32(l, k), CpuStorage::F32(o))
            }
            CpuStorage::F64(_) => {
                let (l, o, k) =
                    self.forward::<f64>(slice_of(s1, l1, what)?, slice_of(s2, l2, what)?, d)?;
                (Saved::F64(l, k), CpuStorage::F64(o))
            }
            _ => bail!("fused cross-entropy: only f32 and f64"),
        };
        if let Ok(mut slot) = self.saved.lock() {
            *slot = Some(saved);
        }
        Ok((nll, n.into()))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        _nll: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, h) = hidden.dims2()?;
        let vocab = weight.dim(0)?;
        let d = Dims { n, h, vocab };
        // Taken, so that the kept blocks are freed as soon as they are used.
        let saved = match self.saved.lock() {
            Ok(mut saved) => saved.take(),
            Err(_) => bail!("fused cross-entropy: the forward's saved state is poisoned"),
        };
        let Some(saved) = saved else {
            bail!("fused cross-entropy: backward before forward (or a second backward)");
        };
        let grad = grad.contiguous()?;
        let (hd, wd, gd) = (Data::of(hidden), Data::of(weight), Data::of(&grad));
        let what = "fused cross-entropy backward";
        // The weight's gradient: into the sink, or a fresh tensor for candle if it trains.
        macro_rules! run {
            ($t:ty, $lse:expr, $kept:expr) => {{
                let backward = |dw: Option<&mut [$t]>| {
                    self.backward::<$t>(
                        hd.slice(what)?,
                        wd.slice(what)?,
                        $lse,
                        $kept,
                        gd.slice(what)?,
                        d,
                        dw,
                    )
                };
                let (dh, dw) = match &self.sink {
                    Some(sink) => (
                        sink.add_with::<$t, _>(vocab * h, |dw, _| backward(Some(dw)))?,
                        None,
                    ),
                    None if weight.track_op() => {
                        let mut dw = vec![<$t as num_traits::Zero>::zero(); vocab * h];
                        let dh = backward(Some(&mut dw))?;
                        (dh, Some(Tensor::from_vec(dw, (vocab, h), weight.device())?))
                    }
                    None => (backward(None)?, None),
                };
                (Tensor::from_vec(dh, (n, h), hidden.device())?, dw)
            }};
        }
        let (dh, dw) = match &saved {
            Saved::F32(lse, kept) => run!(f32, lse, kept),
            Saved::F64(lse, kept) => run!(f64, lse, kept),
        };
        Ok((Some(dh), dw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::ops::cpu::check;
    use crate::util::rng::SplitMix64;
    use candle_core::{DType, Device, Var};

    const N: usize = 6;
    const H: usize = 5;
    const V: usize = 13;

    fn random(rng: &mut SplitMix64, shape: &[usize], dtype: DType) -> Tensor {
        check::random(shape, rng.next_u64(), dtype)
    }

    fn blocks(row_block: usize, vocab_chunk: usize) -> Blocking {
        Blocking {
            row_block,
            vocab_chunk,
        }
    }

    fn targets() -> Tensor {
        // Targets in the first, a middle and the last (partial) chunk of 4.
        Tensor::new(&[0u32, 5, 12, 3, 8, 12], &Device::Cpu).unwrap()
    }

    #[test]
    fn fused_nll_equals_the_composed_one_in_f32() {
        let mut rng = SplitMix64::new(3);
        let hidden = random(&mut rng, &[N, H], DType::F32);
        let weight = random(&mut rng, &[V, H], DType::F32);
        let composed = composed_linear_nll(&hidden, &weight, &targets()).unwrap();
        let fused = linear_nll(&hidden, &weight, &targets(), None).unwrap();
        assert!(check::max_diff(&fused, &composed) < 1e-5);
        for keep in [false, true] {
            let blocked =
                linear_nll_in_blocks(&hidden, &weight, &targets(), None, blocks(4, 4), keep)
                    .unwrap();
            assert!(check::max_diff(&blocked, &composed) < 1e-5);
        }
    }

    #[test]
    fn fused_nll_gradients_match_finite_differences_in_f64() {
        let mut rng = SplitMix64::new(4);
        let hidden = random(&mut rng, &[N, H], DType::F64);
        let weight = random(&mut rng, &[V, H], DType::F64);
        // Blocks of 4 rows and 4 vocabulary entries, the last ones partial; the softmax from
        // the logits computed again, and from the forward's kept blocks.
        for keep in [false, true] {
            check::gradients_match_finite_differences(
                &|xs| linear_nll_in_blocks(&xs[0], &xs[1], &targets(), None, blocks(4, 4), keep),
                &[hidden.clone(), weight.clone()],
            );
        }
        // The composed loss's gradients agree too.
        let vars = [&hidden, &weight].map(|t| Var::from_tensor(t).unwrap());
        let [th, tw] = [0, 1].map(|i| vars[i].as_tensor().clone());
        let grads = |y: Tensor| y.sum_all().unwrap().backward().unwrap();
        let fused =
            grads(linear_nll_in_blocks(&th, &tw, &targets(), None, blocks(4, 4), true).unwrap());
        let composed = grads(composed_linear_nll(&th, &tw, &targets()).unwrap());
        for var in &vars {
            let (f, c) = (fused.get(var.as_tensor()), composed.get(var.as_tensor()));
            assert!(check::max_diff(f.unwrap(), c.unwrap()) < 1e-10);
        }
    }

    #[test]
    fn a_frozen_head_gets_no_gradient_and_the_hidden_states_the_same() {
        let mut rng = SplitMix64::new(5);
        let hidden = Var::from_tensor(&random(&mut rng, &[N, H], DType::F64)).unwrap();
        let frozen = random(&mut rng, &[V, H], DType::F64);
        let trained = Var::from_tensor(&frozen).unwrap();
        // Blocks of 1 row: shared out by rows (on up to 3 threads); of 4: by vocabulary.
        for row_block in [1, 4] {
            let grads_of = |w: &Tensor| {
                linear_nll_in_blocks(&hidden, w, &targets(), None, blocks(row_block, 4), false)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap()
            };
            let g_frozen = grads_of(&frozen);
            let g_trained = grads_of(trained.as_tensor());
            assert!(g_frozen.get(&frozen).is_none());
            assert!(g_trained.get(trained.as_tensor()).is_some());
            assert!(
                check::max_diff(
                    g_frozen.get(hidden.as_tensor()).unwrap(),
                    g_trained.get(hidden.as_tensor()).unwrap()
                ) < 1e-12
            );
        }
    }

    #[test]
    fn a_sunk_head_gradient_is_the_composed_one_and_sums_over_backwards() {
        let mut rng = SplitMix64::new(6);
        let hidden = Var::from_tensor(&random(&mut rng, &[N, H], DType::F64)).unwrap();
        let weight = Var::from_tensor(&random(&mut rng, &[V, H], DType::F64)).unwrap();
        let composed = composed_linear_nll(hidden.as_tensor(), weight.as_tensor(), &targets())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        // By rows (blocks of 1) and by vocabulary (blocks of 4): the weight's way is the latter.
        for (row_block, keep) in [(1, false), (4, false), (1, true), (4, true)] {
            let sink = GradSink::new();
            for _ in 0..2 {
                let y = linear_nll_in_blocks(
                    hidden.as_tensor(),
                    weight.as_tensor(),
                    &targets(),
                    Some(&sink),
                    blocks(row_block, 4),
                    keep,
                )
                .unwrap();
                let grads = y.sum_all().unwrap().backward().unwrap();
                assert!(grads.get(weight.as_tensor()).is_none(), "sunk, not stored");
                let dh = grads.get(hidden.as_tensor()).unwrap();
                assert!(check::max_diff(dh, composed.get(hidden.as_tensor()).unwrap()) < 1e-10);
            }
            let sunk = sink.take(weight.shape()).unwrap().unwrap();
            let twice = (composed.get(weight.as_tensor()).unwrap() * 2.0).unwrap();
            assert!(check::max_diff(&sunk, &twice) < 1e-10);
        }
    }

    #[test]
    fn chosen_log_probs_equal_the_composed_ones() {
        let mut rng = SplitMix64::new(11);
        let wanted: Vec<Vec<u32>> = vec![
            vec![0, 12],
            vec![],
            vec![5],
            vec![3, 4, 11],
            vec![8],
            vec![12],
        ];
        for dtype in [DType::F32, DType::F64] {
            let hidden = random(&mut rng, &[N, H], dtype);
            let weight = random(&mut rng, &[V, H], dtype);
            let fused = chosen_log_probs(&hidden, &weight, &wanted).unwrap();
            let composed = composed_chosen_log_probs(&hidden, &weight, &wanted).unwrap();
            assert_eq!(fused.len(), N);
            for (f, c) in fused.iter().zip(&composed) {
                assert_eq!(f.len(), c.len());
                for (a, b) in f.iter().zip(c) {
                    assert!((a - b).abs() < 1e-5, "{dtype:?}: {a} against {b}");
                }
            }
            // Across vocabulary blocks too: chunks of 4 entries, rows one block each.
            let op = Blocking {
                row_block: 2,
                vocab_chunk: 4,
            };
            let d = Dims {
                n: N,
                h: H,
                vocab: V,
            };
            let f64s = |t: &Tensor| -> Vec<f64> {
                t.to_dtype(DType::F64)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1())
                    .unwrap()
            };
            let lse = op.log_sum_exp(&f64s(&hidden), &f64s(&weight), d).unwrap();
            let logits = hidden
                .to_dtype(DType::F64)
                .unwrap()
                .matmul(&weight.to_dtype(DType::F64).unwrap().t().unwrap())
                .unwrap();
            let want: Vec<f64> = logits
                .exp()
                .unwrap()
                .sum(1)
                .unwrap()
                .log()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (a, b) in lse.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{dtype:?} blocks: {a} against {b}");
            }
        }
        let hidden = random(&mut rng, &[1, H], DType::F32);
        let weight = random(&mut rng, &[V, H], DType::F32);
        assert!(chosen_log_probs(&hidden, &weight, &[vec![V as u32]]).is_err());
        assert!(chosen_log_probs(&hidden, &weight, &[vec![0], vec![1]]).is_err());
    }

    #[test]
    fn a_target_outside_the_vocabulary_is_an_error() {
        let hidden = Tensor::zeros((1, H), DType::F32, &Device::Cpu).unwrap();
        let weight = Tensor::zeros((V, H), DType::F32, &Device::Cpu).unwrap();
        let err = linear_nll(
            &hidden,
            &weight,
            &Tensor::new(&[13u32], &Device::Cpu).unwrap(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("target 13"), "{err}");
    }
}
