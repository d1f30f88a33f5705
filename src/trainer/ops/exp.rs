//! `exp` over a slice of f32, eight lanes at a time where the CPU has AVX2 and FMA (chosen at run
//! time, so the binary still runs on any x86-64), one element at a time elsewhere.
//!
//! Why by hand: the fused kernels' softmaxes, cross-entropy and SiLU spend their time in `expf`
//! (libm, one element per call: about 10 % of a `tiny` training step and a fifth of an
//! evaluation, measured with perf). The kept SIMD crates do not fit: `wide` picks its instructions
//! when it is compiled (plain SSE2 in a portable build), `pulp` (already here through gemm) has
//! no `exp`, and sleef's Rust ports need nightly. The method is Cephes' `expf`, which most SIMD
//! libraries use: `exp(x) = 2^n exp(r)` with `n = round(x / ln 2)` and `|r| <= ln 2 / 2`, a
//! degree-7 polynomial for `exp(r)`; within 2 ulp of libm over the range tested below.

/// Below this `exp` is under f32's smallest normal number: the vector path gives 0 there (libm
/// gives a subnormal), which no sum or product in the kernels can tell apart.
const LOWEST: f32 = -87.336_55;
/// Above this the vector path gives +inf (libm does from 88.72 on; 2^n must stay a normal
/// number): the kernels only take `exp` of values at most 0, or of -x in a sigmoid, where
/// either gives the same result.
const HIGHEST: f32 = 88.376_26;

/// `xs[i] = exp(xs[i])` for every element: -inf gives 0, +inf gives +inf, NaN stays NaN.
pub fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features `avx2::exp_in_place` is compiled for (checked
            // just above).
            unsafe { avx2::exp_in_place(xs) };
            return;
        }
    }
    xs.iter_mut().for_each(|x| *x = x.exp());
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{HIGHEST, LOWEST};

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_in_place(xs: &mut [f32]) {
        let mut chunks = xs.chunks_exact_mut(8);
        for chunk in &mut chunks {
            // SAFETY: `chunk` holds exactly eight f32; unaligned loads and stores.
            let x = _mm256_loadu_ps(chunk.as_ptr());
            _mm256_storeu_ps(chunk.as_mut_ptr(), exp8(x));
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let mut lanes = [0.0f32; 8];
            lanes[..rest.len()].copy_from_slice(rest);
            let x = _mm256_loadu_ps(lanes.as_ptr());
            _mm256_storeu_ps(lanes.as_mut_ptr(), exp8(x));
            rest.copy_from_slice(&lanes[..rest.len()]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        // Cephes expf's coefficients, highest degree first.
        const P: [f32; 6] = [
            1.987_569_1e-4,
            1.398_2e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5, // Cephes: 5.0000001201e-1, which is 0.5 in f32
        ];
        let lowest = _mm256_set1_ps(LOWEST);
        let highest = _mm256_set1_ps(HIGHEST);
        // Clamp into the range where 2^n is a normal number; the ends are set after.
        let c = _mm256_min_ps(_mm256_max_ps(x, lowest), highest);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(c, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), c);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(P[0]);
        for coefficient in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*coefficient));
        }
        // exp(r) = 1 + r + r^2 p(r)
        let r2 = _mm256_mul_ps(r, r);
        let e = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        // 2^n from its exponent bits; n is within [-126, 127] after the clamp.
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        let y = _mm256_mul_ps(e, _mm256_castsi256_ps(bits));
        // Under the range: 0; over it: +inf; NaN: NaN.
        let y = _mm256_blendv_ps(
            y,
            _mm256_setzero_ps(),
            _mm256_cmp_ps::<_CMP_LT_OQ>(x, lowest),
        );
        let y = _mm256_blendv_ps(
            y,
            _mm256_set1_ps(f32::INFINITY),
            _mm256_cmp_ps::<_CMP_GT_OQ>(x, highest),
        );
        _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units of the last place between two finite f32 of one sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_matches_libm_within_two_ulp_across_the_range() {
        // Every 1/1000 from below the lowest normal result to overflow, every length's tail.
        let xs: Vec<f32> = (-87_336..88_376).map(|i| i as f32 / 1000.0).collect();
        let mut ys = xs.clone();
        exp_in_place(&mut ys);
        let worst = xs
            .iter()
            .zip(&ys)
            .map(|(x, y)| ulps(x.exp(), *y))
            .max()
            .unwrap();
        assert!(worst <= 2, "worst {worst} ulp");
        for n in 0..17 {
            let mut tail: Vec<f32> = (0..n).map(|i| i as f32 * 0.37 - 2.0).collect();
            let want: Vec<f32> = tail.iter().map(|x| x.exp()).collect();
            exp_in_place(&mut tail);
            for (w, g) in want.iter().zip(&tail) {
                assert!(ulps(*w, *g) <= 2, "length {n}: {w} against {g}");
            }
        }
    }

    #[test]
    fn exp_keeps_the_ends_and_nan() {
        let mut xs = [
            f32::NEG_INFINITY,
            -1000.0,
            -88.0,
            0.0,
            89.0,
            f32::INFINITY,
            f32::NAN,
            1.0,
            -0.0,
        ];
        exp_in_place(&mut xs);
        assert_eq!(xs[0], 0.0);
        assert_eq!(xs[1], 0.0);
        assert!(xs[2] >= 0.0 && xs[2] < 1e-37);
        assert_eq!(xs[3], 1.0);
        assert_eq!(xs[4], f32::INFINITY);
        assert_eq!(xs[5], f32::INFINITY);
        assert!(xs[6].is_nan());
        assert!(ulps(xs[7], std::f32::consts::E) <= 1);
        assert_eq!(xs[8], 1.0);
    }
}
