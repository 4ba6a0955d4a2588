//! F16 weights against F16 activations: `vcvtph2ps` widens 16 halves at a time to f32, FMA
//! accumulates in 4×16 lanes. As on AVX2, the products are added in f32 rather than in the
//! reference's f64; with 16 lanes each accumulator takes half as many sequential additions.

use std::arch::x86_64::*;

use half::f16;

use super::super::f16_to_f32;
use crate::quant::assert_dot_len;

/// 16 halves widened to f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn load_f16x16(h: &[f16]) -> __m512 {
    assert_eq!(h.len(), 16);
    // SAFETY: `h` is 16 halves, 32 bytes; `loadu` has no alignment requirement.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(h.as_ptr().cast()) })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dot_f16(w: &[f16], a: &[f16]) -> f32 {
    assert_dot_len(w, a);
    // Four independent FMA chains cover the FMA latency (4 cycles) at one issued per cycle.
    let mut acc = [_mm512_setzero_ps(); 4];
    let (w64, a64) = (w.chunks_exact(64), a.chunks_exact(64));
    let (w_rest, a_rest) = (w64.remainder(), a64.remainder());
    for (w, a) in w64.zip(a64) {
        for (k, acc) in acc.iter_mut().enumerate() {
            let (w, a) = (&w[16 * k..16 * k + 16], &a[16 * k..16 * k + 16]);
            *acc = _mm512_fmadd_ps(load_f16x16(w), load_f16x16(a), *acc);
        }
    }
    let (w16, a16) = (w_rest.chunks_exact(16), a_rest.chunks_exact(16));
    let (w_tail, a_tail) = (w16.remainder(), a16.remainder());
    for (w, a) in w16.zip(a16) {
        acc[0] = _mm512_fmadd_ps(load_f16x16(w), load_f16x16(a), acc[0]);
    }
    let tail = w_tail
        .iter()
        .zip(a_tail)
        .fold(0f32, |sum, (&w, &a)| sum + f16_to_f32(w) * f16_to_f32(a));
    let total = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(total) + tail
}
