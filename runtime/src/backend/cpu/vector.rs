//! The f32 vector primitives of attention: a dot product and `y += a·x`, chosen once per
//! call from the process's CPU path (`quant::cpu_path`), like the matmul kernels.
//!
//! The portable versions keep 8 independent lane sums, which LLVM turns into SIMD on any
//! target (SSE2 on baseline x86-64, NEON on aarch64); the AVX2 versions add FMA and 16-wide
//! steps. Attention spends its time here: before these, the dot of a query with each key was
//! a sequential scalar sum, 25% of a 500-token TinyLlama prefill (perf, 2026-11-27).

use half::f16;

use crate::quant::{self, CpuPath};

/// The primitives of one CPU path.
#[derive(Clone, Copy)]
pub(super) struct VectorOps {
    /// `Σ a[i]·b[i]` over slices of equal length.
    pub dot: fn(&[f32], &[f32]) -> f32,
    /// `y[i] += a·x[i]` over slices of equal length.
    pub axpy: fn(&mut [f32], f32, &[f32]),
    /// `dot` with the second operand in f16 (an f16 KV cache).
    pub dot_f16: fn(&[f32], &[f16]) -> f32,
    /// `axpy` with `x` in f16.
    pub axpy_f16: fn(&mut [f32], f32, &[f16]),
    /// Attention scores of [`SCORE_ROWS`] query rows against the first `n` keys of a
    /// transposed key matrix: `out[r·n + j] = Σ_d q[r][d] · kt[d·n_kv + j]`, with `kt`
    /// `[head_dim, n_kv]` (`head_dim` = the query length). Keys along the lanes: no
    /// horizontal sums, and each key vector loaded serves all the rows.
    pub scores: ScoresFn,
    /// `out = Σ_j p[j] · v[j]` for value rows `v` `[p.len(), out.len()]`: the output stays in
    /// registers while the values stream by.
    pub weighted_sum: fn(&[f32], &[f32], &mut [f32]),
    /// The f32 GEMM micro-kernel of batched matmuls with widened weights (F16 on AVX2):
    /// `out[i][r] = Σ_k w[i][k] · a[r][k]` for [`GEMM_W_ROWS`] weight rows and
    /// [`GEMM_ROWS`] activation rows, all of one length.
    pub gemm: GemmFn,
}

/// Weight rows [`VectorOps::gemm`] takes at once.
pub(super) const GEMM_W_ROWS: usize = 3;
/// Activation rows [`VectorOps::gemm`] takes at once.
pub(super) const GEMM_ROWS: usize = 4;

/// See [`VectorOps::gemm`].
pub(super) type GemmFn =
    fn([&[f32]; GEMM_W_ROWS], [&[f32]; GEMM_ROWS]) -> [[f32; GEMM_ROWS]; GEMM_W_ROWS];

/// Query rows [`VectorOps::scores`] takes at once.
pub(super) const SCORE_ROWS: usize = 4;

/// `(query rows, transposed keys, n_kv, n, out)`: see [`VectorOps::scores`].
pub(super) type ScoresFn = fn([&[f32]; SCORE_ROWS], &[f32], usize, usize, &mut [f32]);

/// The primitives for the process's CPU path.
pub(super) fn vector_ops() -> VectorOps {
    match quant::cpu_path() {
        CpuPath::Avx2 => avx2().unwrap_or_else(portable),
        _ => portable(),
    }
}

fn portable() -> VectorOps {
    VectorOps {
        dot: dot_portable,
        axpy: axpy_portable,
        dot_f16: dot_f16_portable,
        axpy_f16: axpy_f16_portable,
        scores: scores_portable,
        weighted_sum: weighted_sum_portable,
        gemm: gemm_portable,
    }
}

/// The AVX2 primitives, where the CPU has them.
#[cfg(target_arch = "x86_64")]
fn avx2() -> Option<VectorOps> {
    CpuPath::Avx2.is_available().then_some(VectorOps {
        dot: x86::dot,
        axpy: x86::axpy,
        dot_f16: x86::dot_f16,
        axpy_f16: x86::axpy_f16,
        scores: x86::scores,
        weighted_sum: x86::weighted_sum,
        gemm: x86::gemm,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2() -> Option<VectorOps> {
    None
}

const LANES: usize = 8;

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of different lengths");
    let (a8, b8) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut acc = [0f32; LANES];
    for (x, y) in a8.zip(b8) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn axpy_portable(y: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(y.len(), x.len(), "axpy of different lengths");
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

fn dot_f16_portable(a: &[f32], b: &[f16]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of different lengths");
    let (a8, b8) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y.to_f32())
        .sum();
    let mut acc = [0f32; LANES];
    for (x, y) in a8.zip(b8) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l].to_f32();
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn axpy_f16_portable(y: &mut [f32], a: f32, x: &[f16]) {
    assert_eq!(y.len(), x.len(), "axpy of different lengths");
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x.to_f32());
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

fn check_gemm(w: &[&[f32]; GEMM_W_ROWS], a: &[&[f32]; GEMM_ROWS]) {
    let k = w[0].len();
    assert!(
        w.iter().all(|w| w.len() == k) && a.iter().all(|a| a.len() == k),
        "gemm rows of different lengths"
    );
}

fn gemm_portable(
    w: [&[f32]; GEMM_W_ROWS],
    a: [&[f32]; GEMM_ROWS],
) -> [[f32; GEMM_ROWS]; GEMM_W_ROWS] {
    check_gemm(&w, &a);
    w.map(|w| a.map(|a| dot_portable(w, a)))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{axpy_portable, dot_portable, GEMM_ROWS, GEMM_W_ROWS, SCORE_ROWS};
    use crate::quant::CpuPath;

    /// Whether the AVX2 versions may run: `vector_ops` hands them out only on the AVX2 path,
    /// which exists only where the CPU reported AVX2, FMA and F16C; checked again here in debug
    /// builds.
    fn debug_check() {
        debug_assert!(CpuPath::Avx2.is_available());
    }

    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        debug_check();
        assert_eq!(a.len(), b.len(), "dot of different lengths");
        // SAFETY: reachable only through `vector_ops` on the AVX2 path (see `debug_check`).
        unsafe { dot_avx2(a, b) }
    }

    pub(super) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        debug_check();
        assert_eq!(y.len(), x.len(), "axpy of different lengths");
        // SAFETY: as for `dot`.
        unsafe { axpy_avx2(y, a, x) }
    }

    pub(super) fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
        debug_check();
        assert_eq!(a.len(), b.len(), "dot of different lengths");
        // SAFETY: as for `dot`.
        unsafe { dot_f16_avx2(a, b) }
    }

    pub(super) fn axpy_f16(y: &mut [f32], a: f32, x: &[f16]) {
        debug_check();
        assert_eq!(y.len(), x.len(), "axpy of different lengths");
        // SAFETY: as for `dot`.
        unsafe { axpy_f16_avx2(y, a, x) }
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

    pub(super) fn gemm(
        w: [&[f32]; GEMM_W_ROWS],
        a: [&[f32]; GEMM_ROWS],
    ) -> [[f32; GEMM_ROWS]; GEMM_W_ROWS] {
        debug_check();
        super::check_gemm(&w, &a);
        // SAFETY: as for `dot`; the lengths are checked above.
        unsafe { gemm_avx2(w, a) }
    }

    /// 3 × 4 = 12 accumulators, each step 3 weight and 4 activation loads for 12 FMAs. With 2
    /// × 4 (8 accumulators, just the FMA latency × throughput) the loop reached about 40% of
    /// the FMA rate on the CLIP-L tower; 12 chains leave slack for the loads.
    #[target_feature(enable = "avx2,fma")]
    fn gemm_avx2(
        w: [&[f32]; GEMM_W_ROWS],
        a: [&[f32]; GEMM_ROWS],
    ) -> [[f32; GEMM_ROWS]; GEMM_W_ROWS] {
        let k = w[0].len();
        let k8 = k / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); GEMM_ROWS]; GEMM_W_ROWS];
        for i in (0..k8).step_by(8) {
            // SAFETY: every row has `k >= i + 8` floats (checked by the caller); `loadu` needs
            // no alignment.
            unsafe {
                let wv = w.map(|w| _mm256_loadu_ps(w.as_ptr().add(i)));
                for (r, a) in a.iter().enumerate() {
                    let x = _mm256_loadu_ps(a.as_ptr().add(i));
                    for (acc, &wv) in acc.iter_mut().zip(&wv) {
                        acc[r] = _mm256_fmadd_ps(wv, x, acc[r]);
                    }
                }
            }
        }
        let mut out = [[0f32; GEMM_ROWS]; GEMM_W_ROWS];
        for (i, (out, acc)) in out.iter_mut().zip(&acc).enumerate() {
            for (r, (o, &acc)) in out.iter_mut().zip(acc).enumerate() {
                *o = hsum(acc);
                if k8 < k {
                    *o += dot_portable(&w[i][k8..], &a[r][k8..]);
                }
            }
        }
        out
    }

    /// 8 halves widened to f32 (exact).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn load_f16x8(h: &[f16]) -> __m256 {
        assert_eq!(h.len(), 8);
        // SAFETY: `h` is 8 halves, 16 bytes; `loadu` has no alignment requirement.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(h.as_ptr().cast()) })
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_f16_avx2(a: &[f32], b: &[f16]) -> f32 {
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
        let (a_rest, b_rest) = (a16.remainder(), b16.remainder());
        for (x, y) in a16.zip(b16) {
            // SAFETY: `x` is 16 floats; `loadu` needs no alignment.
            let (x0, x1) = unsafe {
                (
                    _mm256_loadu_ps(x.as_ptr()),
                    _mm256_loadu_ps(x.as_ptr().add(8)),
                )
            };
            acc0 = _mm256_fmadd_ps(x0, load_f16x8(&y[..8]), acc0);
            acc1 = _mm256_fmadd_ps(x1, load_f16x8(&y[8..]), acc1);
        }
        hsum(_mm256_add_ps(acc0, acc1)) + super::dot_f16_portable(a_rest, b_rest)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn axpy_f16_avx2(y: &mut [f32], a: f32, x: &[f16]) {
        let av = _mm256_set1_ps(a);
        let mut y8 = y.chunks_exact_mut(8);
        let x8 = x.chunks_exact(8);
        let x_rest = x8.remainder();
        for (y, x) in (&mut y8).zip(x8) {
            // SAFETY: `y` is 8 floats; `loadu`/`storeu` need no alignment.
            unsafe {
                let v = _mm256_fmadd_ps(av, load_f16x8(x), _mm256_loadu_ps(y.as_ptr()));
                _mm256_storeu_ps(y.as_mut_ptr(), v);
            }
        }
        super::axpy_f16_portable(y8.into_remainder(), a, x_rest);
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        // Two FMA chains of 8 lanes: enough for head_dim 64–128 rows, where the loads of the
        // key row, not the FMA latency, set the pace.
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
        let (a_rest, b_rest) = (a16.remainder(), b16.remainder());
        for (x, y) in a16.zip(b16) {
            // SAFETY: `x` and `y` are 16 floats each; `loadu` needs no alignment.
            unsafe {
                let (x0, x1) = (
                    _mm256_loadu_ps(x.as_ptr()),
                    _mm256_loadu_ps(x.as_ptr().add(8)),
                );
                let (y0, y1) = (
                    _mm256_loadu_ps(y.as_ptr()),
                    _mm256_loadu_ps(y.as_ptr().add(8)),
                );
                acc0 = _mm256_fmadd_ps(x0, y0, acc0);
                acc1 = _mm256_fmadd_ps(x1, y1, acc1);
            }
        }
        hsum(_mm256_add_ps(acc0, acc1)) + dot_portable(a_rest, b_rest)
    }

    #[target_feature(enable = "avx2,fma")]
    fn axpy_avx2(y: &mut [f32], a: f32, x: &[f32]) {
        let av = _mm256_set1_ps(a);
        let mut y8 = y.chunks_exact_mut(8);
        let x8 = x.chunks_exact(8);
        let x_rest = x8.remainder();
        for (y, x) in (&mut y8).zip(x8) {
            // SAFETY: `y` and `x` are 8 floats each; `loadu`/`storeu` need no alignment.
            unsafe {
                let v =
                    _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr()), _mm256_loadu_ps(y.as_ptr()));
                _mm256_storeu_ps(y.as_mut_ptr(), v);
            }
        }
        axpy_portable(y8.into_remainder(), a, x_rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
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

    #[test]
    fn gemm_micro_kernel_matches_f64_on_every_available_path() {
        let paths: Vec<VectorOps> = std::iter::once(portable()).chain(avx2()).collect();
        for k in [1, 8, 13, 64, 1024, 1029] {
            let w_data = data(GEMM_W_ROWS * k, 7);
            let a_data = data(GEMM_ROWS * k, 8);
            let w: [&[f32]; GEMM_W_ROWS] = std::array::from_fn(|i| &w_data[i * k..(i + 1) * k]);
            let a: [&[f32]; GEMM_ROWS] = std::array::from_fn(|r| &a_data[r * k..(r + 1) * k]);
            for ops in &paths {
                let got = (ops.gemm)(w, a);
                for i in 0..GEMM_W_ROWS {
                    for r in 0..GEMM_ROWS {
                        let terms = w[i].iter().zip(a[r]).map(|(&x, &y)| x as f64 * y as f64);
                        let exact: f64 = terms.clone().sum();
                        let norm: f64 = terms.map(f64::abs).sum();
                        let diff = (got[i][r] as f64 - exact).abs();
                        assert!(
                            diff <= 1e-6 * norm,
                            "k={k} w{i} a{r}: {} vs {exact}",
                            got[i][r]
                        );
                    }
                }
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

    /// Every path's primitives against f64 sums, for lengths with and without tails.
    #[test]
    fn dot_and_axpy_match_f64_on_every_available_path() {
        let paths: Vec<VectorOps> = std::iter::once(portable()).chain(avx2()).collect();
        for n in [0, 1, 7, 8, 15, 16, 17, 64, 128, 131] {
            let (a, b) = (data(n, 1), data(n, 2));
            let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let norm: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| (x as f64 * y as f64).abs())
                .sum();
            for ops in &paths {
                let got = (ops.dot)(&a, &b) as f64;
                assert!(
                    (got - exact).abs() <= 1e-6 * norm + 1e-30,
                    "n={n}: {got} vs {exact}"
                );
            }
            let b16: Vec<f16> = b.iter().map(|&v| f16::from_f32(v)).collect();
            let exact16: f64 = a
                .iter()
                .zip(&b16)
                .map(|(&x, y)| x as f64 * y.to_f64())
                .sum();
            for ops in &paths {
                let got = (ops.dot_f16)(&a, &b16) as f64;
                assert!(
                    (got - exact16).abs() <= 1e-6 * norm + 1e-30,
                    "n={n}: {got} vs {exact16}"
                );

                let mut y = b.clone();
                (ops.axpy)(&mut y, 0.375, &a);
                for i in 0..n {
                    let want = b[i] as f64 + 0.375 * a[i] as f64;
                    assert!((y[i] as f64 - want).abs() <= 1e-6, "n={n} i={i}");
                }

                let mut y = a.clone();
                (ops.axpy_f16)(&mut y, -1.5, &b16);
                for i in 0..n {
                    let want = a[i] as f64 - 1.5 * b16[i].to_f64();
                    assert!((y[i] as f64 - want).abs() <= 1e-6, "n={n} i={i}");
                }
            }
        }
    }
}
