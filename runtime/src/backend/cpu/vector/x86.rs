//! The AVX2 versions (FMA, F16C) of the vector primitives: decode attention of a group of heads,
//! the softmaxes (row and panel) and swish, with a polynomial `exp`. `vector_ops` hands them out
//! on the AVX2 and AVX-512 paths, which exist only where the CPU reported the features.

use std::arch::x86_64::*;

use half::f16;

use super::{DecodeHeads, PanelColumn, PANEL_ROWS};
use crate::quant::CpuPath;

/// Whether the AVX2 versions may run: `vector_ops` hands them out only on the AVX2 path,
/// which exists only where the CPU reported AVX2, FMA and F16C; checked again here (a cached
/// load), since these functions are safe to call.
fn debug_check() {
    assert!(
        CpuPath::Avx2.is_available(),
        "AVX2 kernels on a CPU without AVX2"
    );
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

pub(super) fn decode_heads<T: Load8>(
    call: &DecodeHeads<'_, T>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    debug_check();
    super::check_decode_heads(call, scores, out);
    if !call.d.is_multiple_of(8) || call.n == 0 {
        return super::decode_heads_portable(call, scores, out);
    }
    // SAFETY: `debug_check` above: the CPU has AVX2, FMA and F16C; the lengths are checked
    // above and `d` is whole vectors.
    unsafe { decode_heads_avx2(call, scores, out) }
}

/// The group's heads 4 at a time (`M` of them): per key, each 8-value chunk is loaded
/// (and widened) once and multiplied into `2·M` accumulators; per value, `8·W` values at a
/// time into `M·W` accumulators (`W` = 8, 4, 2, 2 for 1–4 heads). Each head loading every
/// key and value on its own, the conversions of an f16 cache rather than the multiply-adds
/// bounded the speed (criterion `attention/decode`: the same time for 4 KV heads as for 32
/// under 32 query heads of 64; 1.47× faster shared, benches/README.md).
#[target_feature(enable = "avx2,fma,f16c")]
fn decode_heads_avx2<T: Load8>(call: &DecodeHeads<'_, T>, scores: &mut [f32], out: &mut [f32]) {
    // `W` output vectors per head and pass over the values: 8 accumulators in all (6 for 3
    // heads), enough independent FMA chains to hide their latency.
    super::in_parts_of_four(call, scores, out, |m, part, scores, out| match m {
        1 => heads_avx2::<T, 1, 8>(part, scores, out),
        2 => heads_avx2::<T, 2, 4>(part, scores, out),
        3 => heads_avx2::<T, 3, 2>(part, scores, out),
        _ => heads_avx2::<T, 4, 2>(part, scores, out),
    });
}

/// `M` heads of [`decode_heads_avx2`] (`qs`, `out` `M·d` long, `scores` `M·n`), the
/// weighted sums `8·W` output values per head at a time (then 8 for a rest).
// Index loops: several arrays of registers are stepped in lockstep, and constant indices
// keep them in registers (an iterator over one with a computed index into another spilled).
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn heads_avx2<T: Load8, const M: usize, const W: usize>(
    call: &DecodeHeads<'_, T>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let DecodeHeads {
        qs,
        d,
        keys,
        values,
        stride,
        n,
        scale,
    } = *call;
    assert!(qs.len() == M * d && out.len() == M * d && scores.len() == M * n);
    assert!(d.is_multiple_of(8) && n > 0);
    assert!((n - 1) * stride + d <= keys.len().min(values.len()));
    for j in 0..n {
        // Two accumulators per head (even and odd vectors), as two FMA chains.
        let (mut even, mut odd) = ([_mm256_setzero_ps(); M], [_mm256_setzero_ps(); M]);
        let k = keys[j * stride..][..d].as_ptr();
        let mut i = 0;
        // SAFETY (both loops): `i + 16 <= d`, resp. `i + 8 <= d`: within key `j` (checked
        // above) and within every query head.
        unsafe {
            while i + 16 <= d {
                let (k0, k1) = (T::load8(k.add(i)), T::load8(k.add(i + 8)));
                for h in 0..M {
                    let q = qs.as_ptr().add(h * d + i);
                    even[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q), k0, even[h]);
                    odd[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(8)), k1, odd[h]);
                }
                i += 16;
            }
            if i < d {
                let k0 = T::load8(k.add(i));
                for h in 0..M {
                    let q = qs.as_ptr().add(h * d + i);
                    even[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q), k0, even[h]);
                }
            }
        }
        for h in 0..M {
            scores[h * n + j] = hsum(_mm256_add_ps(even[h], odd[h])) * scale;
        }
    }
    for scores in scores.chunks_exact_mut(n) {
        softmax_avx2(scores, 1.0);
    }
    // The weighted sums: passes over the values for `8·W` outputs of every head, then
    // one for each 8 left.
    let mut d0 = 0;
    while d0 + 8 * W <= d {
        let mut acc = [[_mm256_setzero_ps(); W]; M];
        for j in 0..n {
            let v = values[j * stride + d0..][..8 * W].as_ptr();
            // SAFETY: `8·b + 8 <= 8·W`, the slice taken above.
            let vs: [__m256; W] = std::array::from_fn(|b| unsafe { T::load8(v.add(8 * b)) });
            for h in 0..M {
                let p = _mm256_set1_ps(scores[h * n + j]);
                for b in 0..W {
                    acc[h][b] = _mm256_fmadd_ps(p, vs[b], acc[h][b]);
                }
            }
        }
        for h in 0..M {
            let o = &mut out[h * d + d0..][..8 * W];
            for b in 0..W {
                // SAFETY: `8·b + 8 <= o.len()`.
                unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * b), acc[h][b]) };
            }
        }
        d0 += 8 * W;
    }
    while d0 < d {
        let mut acc = [_mm256_setzero_ps(); M];
        for j in 0..n {
            // SAFETY: `d0 + 8 <= d`: within value `j`.
            let v = unsafe { T::load8(values[j * stride + d0..][..8].as_ptr()) };
            for h in 0..M {
                acc[h] = _mm256_fmadd_ps(_mm256_set1_ps(scores[h * n + j]), v, acc[h]);
            }
        }
        for h in 0..M {
            // SAFETY: `d0 + 8 <= d`: within head `h`'s output.
            unsafe { _mm256_storeu_ps(out[h * d + d0..][..8].as_mut_ptr(), acc[h]) };
        }
        d0 += 8;
    }
}

#[cfg(test)]
pub(super) fn softmax(p: &mut [f32], scale: f32) {
    debug_check();
    // SAFETY: `debug_check` above: the CPU has AVX2 and FMA.
    unsafe { softmax_avx2(p, scale) }
}

pub(super) fn panel_softmax(p: &mut [PanelColumn], scale: f32) -> [f32; PANEL_ROWS] {
    debug_check();
    // SAFETY: `debug_check` above: the CPU has AVX2 and FMA.
    unsafe { panel_softmax_avx2(p, scale) }
}

pub(super) fn swish(x: &mut [f32], beta: f32) {
    debug_check();
    // SAFETY: `debug_check` above: the CPU has AVX2 and FMA.
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

/// The portable panel softmax's steps, a panel column (16 lanes) as two vectors, with
/// [`exp`] in place of libm's: no horizontal step anywhere.
#[target_feature(enable = "avx2,fma")]
fn panel_softmax_avx2(p: &mut [PanelColumn], scale: f32) -> [f32; PANEL_ROWS] {
    const { assert!(PANEL_ROWS == 16) };
    let mut max = [_mm256_set1_ps(f32::NEG_INFINITY); 2];
    for column in p.iter() {
        for (h, max) in max.iter_mut().enumerate() {
            // SAFETY: a panel column is 16 floats; `loadu` needs no alignment.
            let s = unsafe { _mm256_loadu_ps(column.0.as_ptr().add(8 * h)) };
            *max = _mm256_max_ps(*max, s);
        }
    }
    let vs = _mm256_set1_ps(scale);
    let mut sum = [_mm256_setzero_ps(); 2];
    for column in p.iter_mut() {
        for (h, (sum, &max)) in sum.iter_mut().zip(&max).enumerate() {
            // SAFETY: as above.
            unsafe {
                let at = column.0.as_mut_ptr().add(8 * h);
                let e = exp(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(at), max), vs));
                _mm256_storeu_ps(at, e);
                *sum = _mm256_add_ps(*sum, e);
            }
        }
    }
    let mut inv = [0f32; PANEL_ROWS];
    for (h, &sum) in sum.iter().enumerate() {
        let one = _mm256_set1_ps(1.0);
        // SAFETY: `inv` holds 16 floats.
        unsafe { _mm256_storeu_ps(inv.as_mut_ptr().add(8 * h), _mm256_div_ps(one, sum)) };
    }
    inv
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
