//! F16 weights against F16 activations: F16C widens 8 halves at a time to f32, FMA
//! accumulates. The scalar reference (ggml's) adds the f32 products in f64; here they are
//! added in f32, in 4×8 lanes, which keeps the error within a few units in the last place of
//! the sum of magnitudes for rows of thousands of elements.

use std::arch::x86_64::*;

use half::f16;

use super::{f16_to_f32, f32_to_f16, hsum_f32};
use crate::quant::{assert_dot_len, assert_row_len};

/// 8 halves widened to f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_f16x8(h: &[f16]) -> __m256 {
    assert_eq!(h.len(), 8);
    // SAFETY: `h` is 8 halves, 16 bytes; `loadu` has no alignment requirement.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(h.as_ptr().cast()) })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_f16(w: &[f16], a: &[f16]) -> f32 {
    assert_dot_len(w, a);
    // Four independent FMA chains cover the FMA latency (4 cycles) with one issued per cycle.
    let mut acc = [_mm256_setzero_ps(); 4];
    let (w32, a32) = (w.chunks_exact(32), a.chunks_exact(32));
    let (w_rest, a_rest) = (w32.remainder(), a32.remainder());
    for (w, a) in w32.zip(a32) {
        for (k, acc) in acc.iter_mut().enumerate() {
            let (w, a) = (&w[8 * k..8 * k + 8], &a[8 * k..8 * k + 8]);
            *acc = _mm256_fmadd_ps(load_f16x8(w), load_f16x8(a), *acc);
        }
    }
    let (w8, a8) = (w_rest.chunks_exact(8), a_rest.chunks_exact(8));
    let (w_tail, a_tail) = (w8.remainder(), a8.remainder());
    for (w, a) in w8.zip(a8) {
        acc[0] = _mm256_fmadd_ps(load_f16x8(w), load_f16x8(a), acc[0]);
    }
    let tail = w_tail
        .iter()
        .zip(a_tail)
        .fold(0f32, |sum, (&w, &a)| sum + f16_to_f32(w) * f16_to_f32(a));
    let total = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    hsum_f32(total) + tail
}

/// f32 → f16 with round-to-nearest-even (`vcvtps2ph`), as `half::f16::from_f32` and ggml do:
/// the same bits for every input, NaNs included (both keep the sign and the top payload bits
/// and set the quiet bit).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quantize_row_f16(src: &[f32], dst: &mut [f16]) {
    assert_row_len::<f16>(dst.len(), src.len());
    let (s8, mut d8) = (src.chunks_exact(8), dst.chunks_exact_mut(8));
    let s_tail = s8.remainder();
    for (s, d) in s8.zip(&mut d8) {
        // SAFETY: `s` is 8 floats and `d` 8 halves (16 bytes); no alignment is required.
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s.as_ptr()));
            _mm_storeu_si128(d.as_mut_ptr().cast(), h);
        }
    }
    for (d, &s) in d8.into_remainder().iter_mut().zip(s_tail) {
        *d = f32_to_f16(s);
    }
}
