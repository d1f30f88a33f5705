//! Causal (any-mask) attention in one pass: scores, mask, softmax and the value product block of
//! query rows by block, keeping only the output and each row's log-sum-exp for the backward,
//! which recomputes the probabilities from them.
//!
//! Why: composed from candle's ops, attention saves the (batch, heads, t, s) scores and the
//! probabilities (twice: softmax's and the matmul's inputs), repeats the grouped key/value heads
//! into full copies, and runs the softmax's reductions on one thread.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::cpu::{self, dot, matmul, runs_fused, slice_of, Data, Real, View};

/// Query rows per block: each block's scores (rows x s) are the only transient.
const ROW_BLOCK: usize = 64;

/// `softmax(q k^T * scale + mask) v` for q (b, nh, t, hd) and k, v (b, nkv, s, hd) (`nh` a
/// multiple of `nkv`: query head `h` reads key/value head `h / (nh / nkv)`), with the additive
/// `mask` (t, s) or (b or 1, 1, t, s). Result (b, nh, t, hd). Fused on the CPU in f32/f64,
/// composed elsewhere. A row whose mask is -inf everywhere gives zeros (the composed one NaN).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    if !runs_fused(q) {
        return composed_attention(q, k, v, mask, scale);
    }
    let (b, nh, t, hd) = q.dims4()?;
    let (kb, nkv, s, khd) = k.dims4()?;
    if kb != b || khd != hd || v.dims() != k.dims() || nkv == 0 || nh % nkv != 0 {
        bail!(
            "fused attention: q {:?}, k {:?}, v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let mask_batch_stride = match mask.dims() {
        [mt, ms] if (*mt, *ms) == (t, s) => 0,
        [1, 1, mt, ms] if (*mt, *ms) == (t, s) => 0,
        [mb, 1, mt, ms] if (*mb, *mt, *ms) == (b, t, s) => t * s,
        other => bail!("fused attention: mask {other:?} for {t} queries and {s} keys"),
    };
    let op = FusedAttention {
        mask: mask.to_dtype(q.dtype())?.contiguous()?,
        mask_batch_stride,
        scale,
        row_block: ROW_BLOCK,
        prefix: None,
        lse: Mutex::new(None),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// `attention` over the keys and values `[pk; k]` and `[pv; v]` (concatenated along the
/// sequence), where the prefix `pk`, `pv` (1, nkv, p, hd) is the same for every batch row and `k`,
/// `v` (b, nkv, s, hd) are each row's own; `mask` covers all p + s columns. Forward only: no
/// gradient reaches the prefix (label scoring's model is detached).
///
/// Why: label scoring runs many rows after one shared prompt (the 150-intent set's 615-token
/// system prompt); broadcasting the prefix to every row and concatenating copied its keys and
/// values per row, layer and search round. Here every row reads the one copy, and the scores
/// and products are those of the concatenated attention (the same softmax over the same row).
pub fn attention_after_shared_prefix(
    q: &Tensor,
    (pk, pv): (&Tensor, &Tensor),
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let (b, nh, t, hd) = q.dims4()?;
    let (pb, pkv, p, phd) = pk.dims4()?;
    let (kb, nkv, s, khd) = k.dims4()?;
    if pb != 1
        || pv.dims() != pk.dims()
        || (pkv, phd) != (nkv, hd)
        || kb != b
        || khd != hd
        || v.dims() != k.dims()
        || nkv == 0
        || nh % nkv != 0
    {
        bail!(
            "attention after a shared prefix: q {:?}, prefix {:?} / {:?}, k {:?}, v {:?}",
            q.dims(),
            pk.dims(),
            pv.dims(),
            k.dims(),
            v.dims()
        );
    }
    if !runs_fused(q) {
        let widen = |x: &Tensor, own: &Tensor| -> Result<Tensor> {
            Tensor::cat(&[&x.broadcast_as((b, nkv, p, hd))?, own], 2)
        };
        return composed_attention(q, &widen(pk, k)?, &widen(pv, v)?, mask, scale);
    }
    let cols = p + s;
    let mask_batch_stride = match mask.dims() {
        [mt, ms] if (*mt, *ms) == (t, cols) => 0,
        [1, 1, mt, ms] if (*mt, *ms) == (t, cols) => 0,
        [mb, 1, mt, ms] if (*mb, *mt, *ms) == (b, t, cols) => t * cols,
        other => {
            bail!("attention after a shared prefix: mask {other:?} for {t} queries and {cols} keys")
        }
    };
    let op = FusedAttention {
        mask: mask.to_dtype(q.dtype())?.contiguous()?,
        mask_batch_stride,
        scale,
        row_block: ROW_BLOCK,
        prefix: Some((
            pk.to_dtype(q.dtype())?.contiguous()?,
            pv.to_dtype(q.dtype())?.contiguous()?,
        )),
        lse: Mutex::new(None),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// The same attention from candle's elementary ops: what `Kernels::Composed` computes.
pub fn composed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let n_rep = q.dim(1)? / k.dim(1)?;
    let k = repeat_kv(k.clone(), n_rep)?;
    let v = repeat_kv(v.clone(), n_rep)?;
    let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    probs.matmul(&v)
}

/// Grouped-query attention: each key/value head serves `n_rep` query heads.
fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, nkv, t, hd) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, nkv, n_rep, t, hd))?
        .reshape((b, nkv * n_rep, t, hd))
}

struct FusedAttention {
    /// Contiguous, the dtype of q; (t, s) per batch row, `mask_batch_stride` apart (0: shared).
    mask: Tensor,
    mask_batch_stride: usize,
    scale: f64,
    row_block: usize,
    /// Keys and values (1, nkv, p, hd) before `k` and `v` that every batch row shares (contiguous,
    /// the dtype of q; forward only): the mask's columns are then p + s.
    prefix: Option<(Tensor, Tensor)>,
    /// Each query row's log-sum-exp of its masked scores (b, nh, t), set by the forward.
    lse: Mutex<Option<CpuStorage>>,
}

/// The dimensions of one call.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    nh: usize,
    nkv: usize,
    t: usize,
    s: usize,
    hd: usize,
}

impl Dims {
    fn n_rep(&self) -> usize {
        self.nh / self.nkv
    }
}

/// One past the last key any of the query rows `rows` of `mask` ((t, s) row-major) may see:
/// the products skip the keys after it (half the work of a causal mask).
fn keys_seen<T: Real>(mask: &[T], s: usize, rows: std::ops::Range<usize>) -> usize {
    let mut end = 0;
    for i in rows {
        let row = &mask[i * s..(i + 1) * s];
        if let Some(j) = row.iter().rposition(|m| *m != T::neg_infinity()) {
            end = end.max(j + 1);
        }
    }
    end
}

impl FusedAttention {
    fn forward<T: Real>(&self, q: &[T], k: &[T], v: &[T], d: Dims) -> Result<(Vec<T>, Vec<T>)> {
        let Dims {
            nh, nkv, t, s, hd, ..
        } = d;
        let mask_data = Data::of(&self.mask);
        let mask: &[T] = mask_data.slice("fused attention mask")?;
        let prefix_data = self
            .prefix
            .as_ref()
            .map(|(pk, pv)| (Data::of(pk), Data::of(pv)));
        let (pk, pv): (&[T], &[T]) = match &prefix_data {
            Some((pk, pv)) => (
                pk.slice("shared prefix keys")?,
                pv.slice("shared prefix values")?,
            ),
            None => (&[], &[]),
        };
        // Prefix keys per key/value head, and every query row's columns (prefix, then own).
        let p = pk.len() / (nkv * hd).max(1);
        let cols = p + s;
        let scale = T::from_f64(self.scale);
        let mut out = vec![T::zero(); q.len()];
        let mut lse = vec![T::zero(); d.b * nh * t];
        out.par_chunks_mut(t * hd)
            .zip(lse.par_chunks_mut(t))
            .enumerate()
            .try_for_each(|(bh, (out, lse))| -> Result<()> {
                let (bi, h) = (bh / nh, bh % nh);
                let kvh = bi * nkv + h / d.n_rep();
                let q = &q[bh * t * hd..(bh + 1) * t * hd];
                let k = &k[kvh * s * hd..(kvh + 1) * s * hd];
                let v = &v[kvh * s * hd..(kvh + 1) * s * hd];
                let pkvh = (h / d.n_rep()) * p * hd..(h / d.n_rep() + 1) * p * hd;
                let (pk, pv) = (&pk[pkvh.clone()], &pv[pkvh]);
                let mask = &mask[bi * self.mask_batch_stride..][..t * cols];
                let mut probs = vec![T::zero(); self.row_block.min(t) * cols];
                for r0 in (0..t).step_by(self.row_block) {
                    let rows = self.row_block.min(t - r0);
                    let seen = keys_seen(mask, cols, r0..r0 + rows);
                    // Of the columns seen, those of the shared prefix and those of the row's own.
                    let (seen_p, seen_own) = (seen.min(p), seen.saturating_sub(p));
                    let q_rows = &q[r0 * hd..];
                    let q_view = View::rows(rows, hd, hd);
                    let scores = [(0, seen_p, pk), (p, seen_own, k)];
                    for (at, n, keys) in scores {
                        let dst = View::rows(rows, n, cols);
                        let keys_view = View::rows(n, hd, hd).t();
                        matmul(
                            &mut probs[at..],
                            dst,
                            false,
                            q_rows,
                            q_view,
                            keys,
                            keys_view,
                            scale,
                        )?;
                    }
                    for i in 0..rows {
                        let row = &mut probs[i * cols..i * cols + seen];
                        let m_row = &mask[(r0 + i) * cols..];
                        row.iter_mut().zip(m_row).for_each(|(p, m)| *p += *m);
                        let max = cpu::max(row);
                        if max == T::neg_infinity() {
                            row.iter_mut().for_each(|p| *p = T::zero());
                            lse[r0 + i] = T::neg_infinity();
                            continue;
                        }
                        row.iter_mut().for_each(|p| *p -= max);
                        T::exp_in_place(row);
                        let sum = cpu::sum(row);
                        let inv = T::one() / sum;
                        row.iter_mut().for_each(|p| *p *= inv);
                        lse[r0 + i] = max + sum.ln();
                    }
                    // The prefix's product (zeros when it has no column seen), then the own one's.
                    let products = [(0, seen_p, pv, false), (p, seen_own, v, true)];
                    for (at, n, values, accumulate) in products {
                        matmul(
                            &mut out[r0 * hd..],
                            View::rows(rows, hd, hd),
                            accumulate,
                            &probs[at..],
                            View::rows(rows, n, cols),
                            values,
                            View::rows(n, hd, hd),
                            T::one(),
                        )?;
                    }
                }
                Ok(())
            })?;
        Ok((out, lse))
    }

    /// dq, dk, dv from the output's gradient `dout`, the inputs and the forward's output `out`.
    #[allow(clippy::too_many_arguments)]
    fn backward<T: Real>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        out: &[T],
        dout: &[T],
        lse: &[T],
        d: Dims,
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let Dims {
            nh, nkv, t, s, hd, ..
        } = d;
        let n_rep = d.n_rep();
        let mask_data = Data::of(&self.mask);
        let mask: &[T] = mask_data.slice("fused attention mask")?;
        let scale = T::from_f64(self.scale);
        let mut dq = vec![T::zero(); q.len()];
        let mut dk = vec![T::zero(); k.len()];
        let mut dv = vec![T::zero(); v.len()];
        // One task per (batch row, key/value head): it alone writes that head's dk, dv and the
        // dq of the query heads that read it.
        dq.par_chunks_mut(n_rep * t * hd)
            .zip(dk.par_chunks_mut(s * hd))
            .zip(dv.par_chunks_mut(s * hd))
            .enumerate()
            .try_for_each(|(bkv, ((dq, dk), dv))| -> Result<()> {
                let bi = bkv / nkv;
                let k = &k[bkv * s * hd..(bkv + 1) * s * hd];
                let v = &v[bkv * s * hd..(bkv + 1) * s * hd];
                let mask = &mask[bi * self.mask_batch_stride..][..t * s];
                let block = self.row_block.min(t) * s;
                let (mut probs, mut dprobs) = (vec![T::zero(); block], vec![T::zero(); block]);
                for r in 0..n_rep {
                    let bh = bi * nh + (bkv % nkv) * n_rep + r;
                    let head = bh * t * hd..(bh + 1) * t * hd;
                    let (q, out, dout) = (&q[head.clone()], &out[head.clone()], &dout[head]);
                    let lse = &lse[bh * t..(bh + 1) * t];
                    let dq = &mut dq[r * t * hd..(r + 1) * t * hd];
                    for r0 in (0..t).step_by(self.row_block) {
                        let rows = self.row_block.min(t - r0);
                        let seen = keys_seen(mask, s, r0..r0 + rows);
                        let q_rows = &q[r0 * hd..];
                        let dout_rows = &dout[r0 * hd..];
                        matmul(
                            &mut probs,
                            View::rows(rows, seen, s),
                            false,
                            q_rows,
                            View::rows(rows, hd, hd),
                            k,
                            View::rows(seen, hd, hd).t(),
                            scale,
                        )?;
                        matmul(
                            &mut dprobs,
                            View::rows(rows, seen, s),
                            false,
                            dout_rows,
                            View::rows(rows, hd, hd),
                            v,
                            View::rows(seen, hd, hd).t(),
                            T::one(),
                        )?;
                        for i in 0..rows {
                            let row = r0 + i;
                            let l = lse[row];
                            // d_i = dout_i . out_i = sum_j p_ij dp_ij
                            let d_i = dot(
                                &dout[row * hd..(row + 1) * hd],
                                &out[row * hd..(row + 1) * hd],
                            );
                            let p_row = &mut probs[i * s..i * s + seen];
                            let dp_row = &mut dprobs[i * s..i * s + seen];
                            let m_row = &mask[row * s..];
                            if l == T::neg_infinity() {
                                p_row.iter_mut().for_each(|p| *p = T::zero());
                            } else {
                                p_row.iter_mut().zip(m_row).for_each(|(p, m)| *p += *m - l);
                                T::exp_in_place(p_row);
                            }
                            for (p, dp) in p_row.iter().zip(dp_row.iter_mut()) {
                                // The score's gradient, in place of the probability's.
                                *dp = *p * (*dp - d_i);
                            }
                        }
                        // dq = scale * dS k; dk += scale * dS^T q; dv += P^T dout
                        matmul(
                            &mut dq[r0 * hd..],
                            View::rows(rows, hd, hd),
                            false,
                            &dprobs,
                            View::rows(rows, seen, s),
                            k,
                            View::rows(seen, hd, hd),
                            scale,
                        )?;
                        matmul(
                            dk,
                            View::rows(seen, hd, hd),
                            true,
                            &dprobs,
                            View::rows(rows, seen, s).t(),
                            q_rows,
                            View::rows(rows, hd, hd),
                            scale,
                        )?;
                        matmul(
                            dv,
                            View::rows(seen, hd, hd),
                            true,
                            &probs,
                            View::rows(rows, seen, s).t(),
                            dout_rows,
                            View::rows(rows, hd, hd),
                            T::one(),
                        )?;
                    }
                }
                Ok(())
            })?;
        Ok((dq, dk, dv))
    }
}

fn dims_of(l1: &Layout, l2: &Layout) -> Result<Dims> {
    let (b, nh, t, hd) = l1.shape().dims4()?;
    let (_, nkv, s, _) = l2.shape().dims4()?;
    Ok(Dims {
        b,
        nh,
        nkv,
        t,
        s,
        hd,
    })
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
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
        let d = dims_of(l1, l2)?;
        let what = "fused attention";
        let (out, lse) = match s1 {
            CpuStorage::F32(_) => {
                let (o, l) = self.forward::<f32>(
                    slice_of(s1, l1, what)?,
                    slice_of(s2, l2, what)?,
                    slice_of(s3, l3, what)?,
                    d,
                )?;
                (CpuStorage::F32(o), CpuStorage::F32(l))
            }
            CpuStorage::F64(_) => {
                let (o, l) = self.forward::<f64>(
                    slice_of(s1, l1, what)?,
                    slice_of(s2, l2, what)?,
                    slice_of(s3, l3, what)?,
                    d,
                )?;
                (CpuStorage::F64(o), CpuStorage::F64(l))
            }
            _ => bail!("fused attention: only f32 and f64"),
        };
        if let Ok(mut saved) = self.lse.lock() {
            *saved = Some(lse);
        }
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if self.prefix.is_some() {
            bail!("attention after a shared prefix has no backward (it is for scoring)");
        }
        let d = dims_of(q.layout(), k.layout())?;
        let saved = match self.lse.lock() {
            Ok(saved) => saved,
            Err(_) => bail!("fused attention: the forward's saved state is poisoned"),
        };
        let Some(lse) = saved.as_ref() else {
            bail!("fused attention: backward before forward");
        };
        let dout = dout.contiguous()?;
        let (qd, kd, vd, od, gd) = (
            Data::of(q),
            Data::of(k),
            Data::of(v),
            Data::of(out),
            Data::of(&dout),
        );
        let what = "fused attention backward";
        let (dq, dk, dv) = match lse {
            CpuStorage::F32(lse) => {
                let (dq, dk, dv) = self.backward::<f32>(
                    qd.slice(what)?,
                    kd.slice(what)?,
                    vd.slice(what)?,
                    od.slice(what)?,
                    gd.slice(what)?,
                    lse,
                    d,
                )?;
                (
                    Tensor::from_vec(dq, q.shape(), q.device())?,
                    Tensor::from_vec(dk, k.shape(), k.device())?,
                    Tensor::from_vec(dv, v.shape(), v.device())?,
                )
            }
            CpuStorage::F64(lse) => {
                let (dq, dk, dv) = self.backward::<f64>(
                    qd.slice(what)?,
                    kd.slice(what)?,
                    vd.slice(what)?,
                    od.slice(what)?,
                    gd.slice(what)?,
                    lse,
                    d,
                )?;
                (
                    Tensor::from_vec(dq, q.shape(), q.device())?,
                    Tensor::from_vec(dk, k.shape(), k.device())?,
                    Tensor::from_vec(dv, v.shape(), v.device())?,
                )
            }
            _ => bail!("fused attention: only f32 and f64"),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::ops::cpu::check;
    use crate::util::rng::SplitMix64;
    use candle_core::{DType, Device, Var};

    const B: usize = 2;
    const NH: usize = 4;
    const NKV: usize = 2;
    const T: usize = 5;
    const S: usize = 7;
    const HD: usize = 8;

    fn random(rng: &mut SplitMix64, shape: &[usize], dtype: DType) -> Tensor {
        check::random(shape, rng.next_u64(), dtype)
    }

    /// Masks of the shapes and kinds the model uses: causal after 2 past keys (t, s), and one
    /// per batch row (b, 1, t, s) with a tree-like pattern (each row sees the past and some of
    /// the earlier rows).
    fn masks(dtype: DType) -> Vec<Tensor> {
        let past = S - T;
        let causal: Vec<bool> = (0..T)
            .flat_map(|i| (0..S).map(move |j| j < past || j - past <= i))
            .collect();
        let tree: Vec<bool> = (0..B)
            .flat_map(|bi| {
                (0..T).flat_map(move |i| {
                    (0..S).map(move |j| {
                        j < past || j - past == i || (j - past < i && (j + bi + i) % 3 != 0)
                    })
                })
            })
            .collect();
        let dev = Device::Cpu;
        vec![
            crate::trainer::model::additive_mask(&causal, &[T, S], dtype, &dev).unwrap(),
            crate::trainer::model::additive_mask(&tree, &[B, 1, T, S], dtype, &dev).unwrap(),
        ]
    }

    fn with_row_block(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        row_block: usize,
    ) -> Tensor {
        let stride = if mask.rank() == 4 { T * S } else { 0 };
        let op = FusedAttention {
            mask: mask.to_dtype(q.dtype()).unwrap(),
            mask_batch_stride: stride,
            scale: 1.0 / (HD as f64).sqrt(),
            row_block,
            prefix: None,
            lse: Mutex::new(None),
        };
        q.apply_op3(k, v, op).unwrap()
    }

    #[test]
    fn fused_attention_equals_the_composed_one_in_f32() {
        let mut rng = SplitMix64::new(7);
        let q = random(&mut rng, &[B, NH, T, HD], DType::F32);
        let k = random(&mut rng, &[B, NKV, S, HD], DType::F32);
        let v = random(&mut rng, &[B, NKV, S, HD], DType::F32);
        let scale = 1.0 / (HD as f64).sqrt();
        for mask in masks(DType::F32) {
            let composed = composed_attention(&q, &k, &v, &mask, scale).unwrap();
            let fused = attention(&q, &k, &v, &mask, scale).unwrap();
            assert!(check::max_diff(&fused, &composed) < 1e-5);
            // Blocks of 2 query rows, the last one partial.
            let blocked = with_row_block(&q, &k, &v, &mask, 2);
            assert!(check::max_diff(&blocked, &composed) < 1e-5);
        }
    }

    #[test]
    fn fused_attention_gradients_match_finite_differences_in_f64() {
        let mut rng = SplitMix64::new(8);
        let q = random(&mut rng, &[B, NH, T, HD], DType::F64);
        let k = random(&mut rng, &[B, NKV, S, HD], DType::F64);
        let v = random(&mut rng, &[B, NKV, S, HD], DType::F64);
        let w = random(&mut rng, &[B, NH, T, HD], DType::F64);
        let scale = 1.0 / (HD as f64).sqrt();
        for mask in masks(DType::F64) {
            check::gradients_match_finite_differences(
                &|xs| Ok(with_row_block(&xs[0], &xs[1], &xs[2], &mask, 2)),
                &[q.clone(), k.clone(), v.clone()],
            );
            // The composed attention's gradients agree too.
            let vars = [&q, &k, &v].map(|t| Var::from_tensor(t).unwrap());
            let [tq, tk, tv] = [0, 1, 2].map(|i| vars[i].as_tensor().clone());
            let grads = |y: Tensor| (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let fused = grads(with_row_block(&tq, &tk, &tv, &mask, 2));
            let composed = grads(composed_attention(&tq, &tk, &tv, &mask, scale).unwrap());
            for var in &vars {
                let (f, c) = (fused.get(var.as_tensor()), composed.get(var.as_tensor()));
                assert!(check::max_diff(f.unwrap(), c.unwrap()) < 1e-10);
            }
        }
    }

    #[test]
    fn a_fully_masked_row_gives_zeros_and_no_gradient() {
        let mut rng = SplitMix64::new(9);
        let q = Var::from_tensor(&random(&mut rng, &[1, 2, 2, 4], DType::F64)).unwrap();
        let k = Var::from_tensor(&random(&mut rng, &[1, 1, 3, 4], DType::F64)).unwrap();
        let v = random(&mut rng, &[1, 1, 3, 4], DType::F64);
        let mask = crate::trainer::model::additive_mask(
            &[false, false, false, true, true, false],
            &[2, 3],
            DType::F64,
            &Device::Cpu,
        )
        .unwrap();
        let out = attention(&q, &k, &v, &mask, 0.5).unwrap();
        let first_rows = out
            .narrow(2, 0, 1)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert_eq!(first_rows.to_scalar::<f64>().unwrap(), 0.0);
        let grads = out.sum_all().unwrap().backward().unwrap();
        let dq = grads.get(q.as_tensor()).unwrap();
        assert!(dq
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .all(|x| x.is_finite()));
    }

    /// The shared-prefix attention equals plain attention over the prefix broadcast to every
    /// row and concatenated before each row's own keys, within 1e-5 relative (f32): random
    /// tensors, a prefix of 6 keys, a causal and a per-row tree mask over own keys, rows blocked
    /// by 2 and whole, a row that sees only part of the prefix and a row that sees nothing.
    #[test]
    fn attention_after_a_shared_prefix_equals_plain_attention() {
        let mut rng = SplitMix64::new(10);
        let p = 6;
        let q = random(&mut rng, &[B, NH, T, HD], DType::F32);
        let pk = random(&mut rng, &[1, NKV, p, HD], DType::F32);
        let pv = random(&mut rng, &[1, NKV, p, HD], DType::F32);
        let k = random(&mut rng, &[B, NKV, S, HD], DType::F32);
        let v = random(&mut rng, &[B, NKV, S, HD], DType::F32);
        let scale = 1.0 / (HD as f64).sqrt();
        let cols = p + S;
        let past = S - T;
        let dev = Device::Cpu;
        let plain_mask: Vec<bool> = (0..B)
            .flat_map(|bi| {
                (0..T).flat_map(move |i| {
                    (0..cols).map(move |j| match (bi, i) {
                        // Nothing seen at all; only the prefix's first 4 columns.
                        (1, 0) => false,
                        (0, 1) => j < 4,
                        _ if j < p => true,
                        _ => {
                            let j = j - p;
                            j < past || j - past == i || (j - past < i && (j + bi + i) % 3 != 0)
                        }
                    })
                })
            })
            .collect();
        let mask =
            crate::trainer::model::additive_mask(&plain_mask, &[B, 1, T, cols], DType::F32, &dev)
                .unwrap();
        let widen = |x: &Tensor, own: &Tensor| {
            Tensor::cat(&[&x.broadcast_as((B, NKV, p, HD)).unwrap(), own], 2).unwrap()
        };
        let (k_all, v_all) = (widen(&pk, &k), widen(&pv, &v));
        let plain = attention(&q, &k_all, &v_all, &mask, scale).unwrap();
        let split = attention_after_shared_prefix(&q, (&pk, &pv), &k, &v, &mask, scale).unwrap();
        let relative = |a: &Tensor, b: &Tensor| {
            let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            a.iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
                .fold(0f32, f32::max)
        };
        assert!(relative(&split, &plain) < 1e-5);
        // Blocks of 2 query rows, the last one partial.
        let blocked = FusedAttention {
            mask: mask.clone(),
            mask_batch_stride: T * cols,
            scale,
            row_block: 2,
            prefix: Some((pk.clone(), pv.clone())),
            lse: Mutex::new(None),
        };
        let blocked = q.apply_op3(&k, &v, blocked).unwrap();
        assert!(relative(&blocked, &plain) < 1e-5);
        // The row that sees nothing gives zeros, as plain attention does.
        let none = split.get(1).unwrap().narrow(1, 0, 1).unwrap();
        assert_eq!(
            none.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        // The composed fallback (what other devices run) agrees too.
        let composed = composed_attention(&q, &k_all, &v_all, &mask, scale).unwrap();
        let rows_seen = split.get(0).unwrap();
        assert!(relative(&rows_seen, &composed.get(0).unwrap()) < 1e-5);
    }
}
