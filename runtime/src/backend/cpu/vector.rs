//! The f32 vector primitives of attention and of widened matmuls, chosen once per call from
//! the process's CPU path (`quant::cpu_path`), like the matmul kernels: decode attention of one
//! head over the cache, and batched attention scores and weighted sums.
//!
//! The portable versions are plain loops (LLVM vectorizes the lane-parallel ones with SSE2 or
//! NEON); the AVX2 versions use FMA and F16C, and each says what it was measured against.

use half::f16;

use crate::quant::{self, CpuPath};

/// The primitives of one CPU path.
#[derive(Clone, Copy)]
pub(super) struct VectorOps {
    /// Attention scores of [`SCORE_ROWS`] query rows against the first `n` keys of a
    /// transposed key matrix: `out[r·n + j] = Σ_d q[r][d] · kt[d·n_kv + j]`, with `kt`
    /// `[head_dim, n_kv]` (`head_dim` = the query length). Keys along the lanes: no
    /// horizontal sums, and each key vector loaded serves all the rows.
    pub scores: ScoresFn,
    /// `out = Σ_j p[j] · v[j]` for value rows `v` `[p.len(), out.len()]`: the output stays in
    /// registers while the values stream by.
    pub weighted_sum: fn(&[f32], &[f32], &mut [f32]),
    /// Decode attention of one query head over `n` cached positions whose keys and values
    /// for this head start every `stride` elements: scores, softmax and weighted sum in one
    /// call, `out` = the head's output (`q.len()` wide). See [`DecodeHeadFn`].
    pub decode_head: DecodeHeadFn<f32>,
    /// [`VectorOps::decode_head`] over an f16 cache.
    pub decode_head_f16: DecodeHeadFn<f16>,
    /// `p = softmax(scale · p)` in place (the max subtracted first).
    pub softmax: fn(&mut [f32], f32),
    /// `x = x · sigmoid(β·x)` in place ("swish"): SiLU with β = 1, CLIP's quick GELU with
    /// β = 1.702.
    pub swish: fn(&mut [f32], f32),
}

/// `(q, keys, values, stride, n, scale, scores scratch (n long), out)`: keys and values of
/// position `j` at `[j·stride..][..q.len()]`.
pub(super) type DecodeHeadFn<T> = fn(&[f32], &[T], &[T], usize, usize, f32, &mut [f32], &mut [f32]);

/// Query rows [`VectorOps::scores`] takes at once.
pub(super) const SCORE_ROWS: usize = 4;

/// `(query rows, transposed keys, n_kv, n, out)`: see [`VectorOps::scores`].
pub(super) type ScoresFn = fn([&[f32]; SCORE_ROWS], &[f32], usize, usize, &mut [f32]);

/// The primitives for the process's CPU path.
pub(super) fn vector_ops() -> VectorOps {
    match quant::cpu_path() {
        // The AVX-512 paths have no vector primitives of their own yet; their CPUs run AVX2's.
        CpuPath::Avx2 | CpuPath::Avx512 | CpuPath::Avx512Vnni => avx2().unwrap_or_else(portable),
        _ => portable(),
    }
}

fn portable() -> VectorOps {
    VectorOps {
        scores: scores_portable,
        weighted_sum: weighted_sum_portable,
        decode_head: decode_head_portable::<f32>,
        decode_head_f16: decode_head_portable::<f16>,
        softmax: softmax_portable,
        swish: swish_portable,
    }
}

/// The AVX2 primitives, where the CPU has them.
#[cfg(target_arch = "x86_64")]
fn avx2() -> Option<VectorOps> {
    CpuPath::Avx2.is_available().then_some(VectorOps {
        scores: x86::scores,
        weighted_sum: x86::weighted_sum,
        decode_head: x86::decode_head::<f32>,
        decode_head_f16: x86::decode_head::<f16>,
        softmax: x86::softmax,
        swish: x86::swish,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2() -> Option<VectorOps> {
    None
}

fn axpy_portable(y: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(y.len(), x.len(), "axpy of different lengths");
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

fn check_scores(q: &[&[f32]; SCORE_ROWS], kt: &[f32], n_kv: usize, n: usize, out: &[f32]) {
    let head_dim = q[0].len();
    assert!(
        q.iter().all(|q| q.len() == head_dim),
        "query rows of one length"
    );
    assert_eq!(kt.len(), head_dim * n_kv, "transposed keys");
    assert!(n <= n_kv, "more scores than keys");
    assert_eq!(out.len(), SCORE_ROWS * n, "score rows");
}

fn scores_portable(q: [&[f32]; SCORE_ROWS], kt: &[f32], n_kv: usize, n: usize, out: &mut [f32]) {
    check_scores(&q, kt, n_kv, n, out);
    out.fill(0.0);
    for (q, out) in q.iter().zip(out.chunks_exact_mut(n.max(1))) {
        for (d, &qd) in q.iter().enumerate() {
            axpy_portable(&mut out[..n], qd, &kt[d * n_kv..][..n]);
        }
    }
}

fn softmax_portable(p: &mut [f32], scale: f32) {
    p.iter_mut().for_each(|s| *s *= scale);
    super::attention::softmax_in_place(p);
}

fn swish_portable(x: &mut [f32], beta: f32) {
    x.iter_mut().for_each(|v| *v /= 1.0 + (-beta * *v).exp());
}

fn weighted_sum_portable(p: &[f32], v: &[f32], out: &mut [f32]) {
    assert_eq!(v.len(), p.len() * out.len(), "value rows");
    out.fill(0.0);
    if out.is_empty() {
        return;
    }
    for (&p, v) in p.iter().zip(v.chunks_exact(out.len())) {
        axpy_portable(out, p, v);
    }
}

/// A cache element, widened to f32.
pub(super) trait CacheValue: Copy + Send + Sync + 'static {
    fn widen(self) -> f32;
}

impl CacheValue for f32 {
    fn widen(self) -> f32 {
        self
    }
}

impl CacheValue for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

fn check_decode_head<T>(
    q: &[f32],
    keys: &[T],
    values: &[T],
    stride: usize,
    n: usize,
    scores: &[f32],
    out: &[f32],
) {
    let d = q.len();
    assert!(d <= stride || n <= 1, "head wider than the stride");
    let need = if n == 0 { 0 } else { (n - 1) * stride + d };
    assert!(
        keys.len() >= need && values.len() >= need,
        "cache shorter than n positions"
    );
    assert_eq!(scores.len(), n, "scores scratch");
    assert_eq!(out.len(), d, "output width");
}

#[allow(clippy::too_many_arguments)]
fn decode_head_portable<T: CacheValue>(
    q: &[f32],
    keys: &[T],
    values: &[T],
    stride: usize,
    n: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    check_decode_head(q, keys, values, stride, n, scores, out);
    let d = q.len();
    for (j, s) in scores.iter_mut().enumerate() {
        let k = &keys[j * stride..][..d];
        *s = q.iter().zip(k).map(|(&a, &b)| a * b.widen()).sum::<f32>() * scale;
    }
    super::attention::softmax_in_place(scores);
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        let v = &values[j * stride..][..d];
        out.iter_mut()
            .zip(v)
            .for_each(|(o, &v)| *o += p * v.widen());
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::SCORE_ROWS;
    use crate::quant::CpuPath;

    /// Whether the AVX2 versions may run: `vector_ops` hands them out only on the AVX2 path,
    /// which exists only where the CPU reported AVX2, FMA and F16C; checked again here in debug
    /// builds.
    fn debug_check() {
        debug_assert!(CpuPath::Avx2.is_available());
    }

    pub(super) fn scores(
        q: [&[f32]; SCORE_ROWS],
        kt: &[f32],
        n_kv: usize,
        n: usize,
        out: &mut [f32],
    ) {
        debug_check();
        super::check_scores(&q, kt, n_kv, n, out);
        // SAFETY: as for `dot`; the lengths are checked above.
        unsafe { scores_avx2(q, kt, n_kv, n, out) }
    }

    pub(super) fn weighted_sum(p: &[f32], v: &[f32], out: &mut [f32]) {
        debug_check();
        assert_eq!(v.len(), p.len() * out.len(), "value rows");
        // SAFETY: as for `dot`.
        unsafe { weighted_sum_avx2(p, v, out) }
    }

    /// Keys per step of `scores_avx2`: 2 registers × 4 rows = 8 accumulators, 8 FMAs for 2
    /// loads of keys and 4 broadcasts of query values.
    const SCORE_KEYS: usize = 16;

    #[target_feature(enable = "avx2,fma")]
    fn scores_avx2(q: [&[f32]; SCORE_ROWS], kt: &[f32], n_kv: usize, n: usize, out: &mut [f32]) {
        let head_dim = q[0].len();
        let full = n / SCORE_KEYS * SCORE_KEYS;
        for j in (0..full).step_by(SCORE_KEYS) {
            let mut acc = [[_mm256_setzero_ps(); 2]; SCORE_ROWS];
            for d in 0..head_dim {
                let k = &kt[d * n_kv + j..][..SCORE_KEYS];
                // SAFETY: `k` is 16 floats; `loadu` needs no alignment.
                let (k0, k1) = unsafe {
                    (
                        _mm256_loadu_ps(k.as_ptr()),
                        _mm256_loadu_ps(k.as_ptr().add(8)),
                    )
                };
                for (acc, q) in acc.iter_mut().zip(&q) {
                    let qd = _mm256_set1_ps(q[d]);
                    acc[0] = _mm256_fmadd_ps(qd, k0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(qd, k1, acc[1]);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let o = &mut out[r * n + j..][..SCORE_KEYS];
                // SAFETY: `o` is 16 floats; `storeu` needs no alignment.
                unsafe {
                    _mm256_storeu_ps(o.as_mut_ptr(), acc[0]);
                    _mm256_storeu_ps(o.as_mut_ptr().add(8), acc[1]);
                }
            }
        }
        for (r, q) in q.iter().enumerate() {
            for j in full..n {
                out[r * n + j] = q
                    .iter()
                    .enumerate()
                    .map(|(d, &qd)| qd * kt[d * n_kv + j])
                    .sum();
            }
        }
    }

    /// Output lanes per pass of `weighted_sum_avx2`: 8 accumulators of 8 (64 dims, CLIP's
    /// head size; LLaMA's 128 takes two passes over the same values, from L1/L2).
    const SUM_LANES: usize = 64;

    #[target_feature(enable = "avx2,fma")]
    fn weighted_sum_avx2(p: &[f32], v: &[f32], out: &mut [f32]) {
        let head_dim = out.len();
        let mut d0 = 0;
        while d0 + SUM_LANES <= head_dim {
            weighted_sum_lanes::<8>(p, v, head_dim, d0, &mut out[d0..d0 + SUM_LANES]);
            d0 += SUM_LANES;
        }
        while d0 + 8 <= head_dim {
            weighted_sum_lanes::<1>(p, v, head_dim, d0, &mut out[d0..d0 + 8]);
            d0 += 8;
        }
        for (d, o) in out.iter_mut().enumerate().skip(d0) {
            *o = p
                .iter()
                .enumerate()
                .map(|(j, &p)| p * v[j * head_dim + d])
                .sum();
        }
    }

    /// Dims `d0..d0 + 8·B` of the weighted sum, in `B` registers.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn weighted_sum_lanes<const B: usize>(
        p: &[f32],
        v: &[f32],
        head_dim: usize,
        d0: usize,
        out: &mut [f32],
    ) {
        assert_eq!(out.len(), 8 * B);
        let mut acc = [_mm256_setzero_ps(); B];
        for (j, &pj) in p.iter().enumerate() {
            let row = &v[j * head_dim + d0..][..8 * B];
            let pb = _mm256_set1_ps(pj);
            for (b, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `row` holds 8·B floats; `loadu` needs no alignment.
                let x = unsafe { _mm256_loadu_ps(row.as_ptr().add(8 * b)) };
                *acc = _mm256_fmadd_ps(pb, x, *acc);
            }
        }
        for (b, acc) in acc.iter().enumerate() {
            // SAFETY: `out` holds 8·B floats.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * b), *acc) };
        }
    }

    /// Loading 8 cache values as f32.
    pub(super) trait Load8: super::CacheValue {
        /// # Safety
        /// `p` points to 8 readable values, and the CPU has AVX2, FMA and F16C.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Load8 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: the caller's contract.
            unsafe { _mm256_loadu_ps(p) }
        }
    }

    impl Load8 for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const f16) -> __m256 {
            // SAFETY: the caller's contract (F16C for the conversion).
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode_head<T: Load8>(
        q: &[f32],
        keys: &[T],
        values: &[T],
        stride: usize,
        n: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        debug_check();
        super::check_decode_head(q, keys, values, stride, n, scores, out);
        if !q.len().is_multiple_of(8) {
            return super::decode_head_portable(q, keys, values, stride, n, scale, scores, out);
        }
        // SAFETY: as for `dot`; the lengths are checked above and `q.len()` is whole vectors.
        unsafe { decode_head_avx2(q, keys, values, stride, scale, scores, out) }
    }

    /// One query head over the cache, all in one function: the per-key dot keeps its two FMA
    /// chains and one horizontal sum, and the weighted sum keeps 64 output lanes in registers
    /// while the values stream by. Calling a dot and an axpy per key through function pointers
    /// (each with its checks, the axpy loading and storing the output row) ran at ≈ 4 GB/s of
    /// cache (criterion `attention/decode/2048`, 2026-11-27).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn decode_head_avx2<T: Load8>(
        q: &[f32],
        keys: &[T],
        values: &[T],
        stride: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let d = q.len();
        for (j, s) in scores.iter_mut().enumerate() {
            let k = &keys[j * stride..][..d];
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            // SAFETY: `i + 8 <= d` for every load (d is whole vectors), within `q` and `k`.
            unsafe {
                while i + 16 <= d {
                    acc0 = _mm256_fmadd_ps(
                        _mm256_loadu_ps(q.as_ptr().add(i)),
                        T::load8(k.as_ptr().add(i)),
                        acc0,
                    );
                    acc1 = _mm256_fmadd_ps(
                        _mm256_loadu_ps(q.as_ptr().add(i + 8)),
                        T::load8(k.as_ptr().add(i + 8)),
                        acc1,
                    );
                    i += 16;
                }
                if i < d {
                    acc0 = _mm256_fmadd_ps(
                        _mm256_loadu_ps(q.as_ptr().add(i)),
                        T::load8(k.as_ptr().add(i)),
                        acc0,
                    );
                }
            }
            *s = hsum(_mm256_add_ps(acc0, acc1)) * scale;
        }
        softmax_avx2(scores, 1.0);
        let mut d0 = 0;
        while d0 < d {
            let lanes = (d - d0).min(64);
            let mut acc = [_mm256_setzero_ps(); 8];
            for (j, &p) in scores.iter().enumerate() {
                let v = &values[j * stride + d0..][..lanes];
                let pb = _mm256_set1_ps(p);
                for (b, acc) in acc.iter_mut().enumerate().take(lanes / 8) {
                    // SAFETY: `8·b + 8 <= lanes = v.len()`.
                    *acc = _mm256_fmadd_ps(pb, unsafe { T::load8(v.as_ptr().add(8 * b)) }, *acc);
                }
            }
            for (b, acc) in acc.iter().enumerate().take(lanes / 8) {
                // SAFETY: `d0 + 8·b + 8 <= d = out.len()`.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(d0 + 8 * b), *acc) };
            }
            d0 += lanes;
        }
    }

    pub(super) fn softmax(p: &mut [f32], scale: f32) {
        debug_check();
        // SAFETY: as for `dot`.
        unsafe { softmax_avx2(p, scale) }
    }

    pub(super) fn swish(x: &mut [f32], beta: f32) {
        debug_check();
        // SAFETY: as for `dot`.
        unsafe { swish_avx2(x, beta) }
    }

    /// `x · sigmoid(β·x)` 8 lanes at a time, with [`exp`] (of `-|β·x|` only, its domain):
    /// `sigmoid(z)` is `1 / (1 + t)` for `z >= 0` and `t / (1 + t)` below, `t = e^-|z|`.
    /// NaN stays NaN and ±∞ give what the portable formula gives (∞ and NaN).
    #[target_feature(enable = "avx2,fma")]
    fn swish_avx2(x: &mut [f32], beta: f32) {
        let (body, tail) = x.split_at_mut(x.len() / 8 * 8);
        let (vbeta, one, sign) = (
            _mm256_set1_ps(beta),
            _mm256_set1_ps(1.0),
            _mm256_set1_ps(-0.0),
        );
        for c in body.chunks_exact_mut(8) {
            // SAFETY: `c` is 8 floats; unaligned loads and stores.
            let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            let z = _mm256_mul_ps(v, vbeta);
            let t = exp(_mm256_or_ps(z, sign));
            let positive = _mm256_cmp_ps::<_CMP_GE_OQ>(z, _mm256_setzero_ps());
            let sigmoid = _mm256_div_ps(_mm256_blendv_ps(t, one, positive), _mm256_add_ps(one, t));
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), _mm256_mul_ps(v, sigmoid)) };
        }
        super::swish_portable(tail, beta);
    }

    /// The portable softmax's steps, 8 lanes at a time, with [`exp`] in place of libm's.
    #[target_feature(enable = "avx2,fma")]
    fn softmax_avx2(p: &mut [f32], scale: f32) {
        let (body, tail) = p.split_at_mut(p.len() / 8 * 8);
        let vs = _mm256_set1_ps(scale);
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in body.chunks_exact_mut(8) {
            // SAFETY: `c` is 8 floats; unaligned loads and stores.
            let v = _mm256_mul_ps(unsafe { _mm256_loadu_ps(c.as_ptr()) }, vs);
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), v) };
            vmax = _mm256_max_ps(vmax, v);
        }
        let m = _mm_max_ps(
            _mm256_castps256_ps128(vmax),
            _mm256_extractf128_ps::<1>(vmax),
        );
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        let mut max = _mm_cvtss_f32(m);
        for v in tail.iter_mut() {
            *v *= scale;
            max = max.max(*v);
        }
        let vmax = _mm256_set1_ps(max);
        let mut vsum = _mm256_setzero_ps();
        for c in body.chunks_exact_mut(8) {
            // SAFETY: as above.
            let v = exp(_mm256_sub_ps(unsafe { _mm256_loadu_ps(c.as_ptr()) }, vmax));
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), v) };
            vsum = _mm256_add_ps(vsum, v);
        }
        let mut sum = hsum(vsum);
        for v in tail.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        let vinv = _mm256_set1_ps(inv);
        for c in body.chunks_exact_mut(8) {
            // SAFETY: as above.
            let v = _mm256_mul_ps(unsafe { _mm256_loadu_ps(c.as_ptr()) }, vinv);
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), v) };
        }
        tail.iter_mut().for_each(|v| *v *= inv);
    }

    /// `e^x` for `x <= 0` (softmax's arguments), within 2 ulp of libm's `expf` above
    /// 2^-125 and 0 below -87: Cephes' `expf` (x = n·ln 2 + r, |r| <= ln 2 / 2, a degree-6
    /// polynomial for e^r, 2^n through the exponent bits).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn exp(x: __m256) -> __m256 {
        let lowest = _mm256_set1_ps(-87.0);
        let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(x, lowest);
        let x = _mm256_max_ps(x, lowest);
        let n = _mm256_floor_ps(_mm256_fmadd_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        ));
        // r = x - n·ln 2, with ln 2 split in two so that n·C1 is exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(
            y,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let pow2n = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(pow2n)), keep)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// `n` reproducible values in [-1, 1) (xorshift), for the unit tests of the f32 kernels.
#[cfg(test)]
pub(super) fn test_data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::test_data as data;
    use super::*;

    #[test]
    fn decode_head_matches_f64_attention_on_every_available_path() {
        let paths: Vec<VectorOps> = std::iter::once(portable()).chain(avx2()).collect();
        for (d, stride, n) in [
            (128, 4096, 37),
            (64, 192, 5),
            (16, 16, 1),
            (8, 24, 300),
            (12, 40, 9),
        ] {
            let q = data(d, 11);
            let k = data((n - 1) * stride + d, 12);
            let v = data((n - 1) * stride + d, 13);
            let scale = 1.0 / (d as f32).sqrt();
            let rounded = |x: &[f32]| -> Vec<f16> { x.iter().map(|&v| f16::from_f32(v)).collect() };
            let (k16, v16) = (rounded(&k), rounded(&v));
            let want = |k: &[f64], v: &[f64]| -> Vec<f64> {
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        (0..d).map(|i| q[i] as f64 * k[j * stride + i]).sum::<f64>() * scale as f64
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                (0..d)
                    .map(|i| (0..n).map(|j| e[j] / sum * v[j * stride + i]).sum())
                    .collect()
            };
            let wide = |x: &[f32]| -> Vec<f64> { x.iter().map(|&v| v as f64).collect() };
            let wide16 = |x: &[f16]| -> Vec<f64> { x.iter().map(|v| v.to_f64()).collect() };
            let want32 = want(&wide(&k), &wide(&v));
            let want16 = want(&wide16(&k16), &wide16(&v16));
            for ops in &paths {
                let (mut scores, mut out) = (vec![0f32; n], vec![f32::NAN; d]);
                (ops.decode_head)(&q, &k, &v, stride, n, scale, &mut scores, &mut out);
                for i in 0..d {
                    assert!(
                        (out[i] as f64 - want32[i]).abs() <= 1e-5,
                        "f32 d={d} n={n} i={i}"
                    );
                }
                let (mut scores, mut out) = (vec![0f32; n], vec![f32::NAN; d]);
                (ops.decode_head_f16)(&q, &k16, &v16, stride, n, scale, &mut scores, &mut out);
                for i in 0..d {
                    assert!(
                        (out[i] as f64 - want16[i]).abs() <= 1e-5,
                        "f16 d={d} n={n} i={i}"
                    );
                }
            }
        }
    }

    /// Every path's softmax against f64, element by element: within 1e-6 of each probability
    /// plus 1e-6 of the largest (the polynomial `exp` of AVX2 is within a few ulp; the rest is
    /// the sum's rounding). Scores span the full range of softmax's arguments, including ones
    /// more than 87 below the max, whose probability underflows.
    #[test]
    fn softmax_matches_f64_on_every_available_path() {
        let paths: Vec<VectorOps> = std::iter::once(portable()).chain(avx2()).collect();
        for (n, spread) in [
            (1, 1.0),
            (7, 3.0),
            (8, 3.0),
            (37, 20.0),
            (577, 60.0),
            (64, 2000.0),
        ] {
            let scores: Vec<f32> = data(n, 9).iter().map(|v| v * spread).collect();
            let scale = 0.125f32;
            let max = scores
                .iter()
                .map(|&s| (s * scale) as f64)
                .fold(f64::MIN, f64::max);
            let exps: Vec<f64> = scores
                .iter()
                .map(|&s| ((s * scale) as f64 - max).exp())
                .collect();
            let total: f64 = exps.iter().sum();
            for ops in &paths {
                let mut p = scores.clone();
                (ops.softmax)(&mut p, scale);
                for (j, (&got, &e)) in p.iter().zip(&exps).enumerate() {
                    let want = e / total;
                    assert!(
                        (got as f64 - want).abs() <= 1e-6 * want + 1e-6 / total,
                        "n={n} spread={spread} j{j}: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// Every path's swish against f64 from the same f32 `β·x` (whose rounding `e^` would
    /// magnify by `|β·x|` in any f32 code): within 4e-7 relative (a few ulp) plus 1e-35
    /// absolute (the far negative side, where the result underflows), over the range where the
    /// sigmoid saturates on both sides, and its special values.
    #[test]
    fn swish_matches_f64_on_every_available_path() {
        let paths: Vec<VectorOps> = std::iter::once(portable()).chain(avx2()).collect();
        let mut x: Vec<f32> = data(1003, 11).iter().map(|v| v * 120.0).collect();
        x.extend([0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 51.3, -51.3]);
        for beta in [1.0f32, 1.702] {
            let want: Vec<f64> = x
                .iter()
                .map(|&v| v as f64 / (1.0 + (-((beta * v) as f64)).exp()))
                .collect();
            for ops in &paths {
                let mut got = x.clone();
                (ops.swish)(&mut got, beta);
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - w).abs() <= 4e-7 * w.abs() + 1e-35,
                        "β={beta} x={}: {g} vs {w} (element {i})",
                        x[i]
                    );
                }
                // 8 values, so that AVX2 takes them in its vector loop, not its scalar tail.
                let mut special = [0.0f32; 8];
                special[..3].copy_from_slice(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
                (ops.swish)(&mut special, beta);
                assert!(special[0].is_nan() && special[1] == f32::INFINITY && special[2].is_nan());
            }
        }
    }

    /// The batched attention primitives of every path against f64 sums.
    #[test]
    fn scores_and_weighted_sums_match_f64_on_every_available_path() {
        let paths: Vec<VectorOps> = std::iter::once(portable()).chain(avx2()).collect();
        for (head_dim, n_kv, n) in [
            (16, 5, 5),
            (64, 40, 33),
            (128, 37, 16),
            (72, 20, 0),
            (3, 17, 17),
        ] {
            let q_data = data(SCORE_ROWS * head_dim, 3);
            let q: [&[f32]; SCORE_ROWS] =
                std::array::from_fn(|r| &q_data[r * head_dim..(r + 1) * head_dim]);
            let kt = data(head_dim * n_kv, 4);
            let p = data(n, 5);
            let v = data(n * head_dim, 6);
            for ops in &paths {
                let mut out = vec![f32::NAN; SCORE_ROWS * n];
                (ops.scores)(q, &kt, n_kv, n, &mut out);
                for r in 0..SCORE_ROWS {
                    for j in 0..n {
                        let terms = (0..head_dim).map(|d| q[r][d] as f64 * kt[d * n_kv + j] as f64);
                        let exact: f64 = terms.clone().sum();
                        let norm: f64 = terms.map(f64::abs).sum();
                        let got = out[r * n + j] as f64;
                        assert!(
                            (got - exact).abs() <= 1e-6 * norm,
                            "{head_dim} {n}: r{r} j{j}"
                        );
                    }
                }
                let mut sum = vec![f32::NAN; head_dim];
                (ops.weighted_sum)(&p, &v, &mut sum);
                for (d, &got) in sum.iter().enumerate() {
                    let terms = (0..n).map(|j| p[j] as f64 * v[j * head_dim + d] as f64);
                    let exact: f64 = terms.clone().sum();
                    let norm: f64 = terms.map(f64::abs).sum();
                    assert!(
                        (got as f64 - exact).abs() <= 1e-6 * norm,
                        "{head_dim} {n}: d{d}"
                    );
                }
            }
        }
    }
}
