//! Activation quantizers to Q8_0, Q8_1 and Q8_K, byte-identical to the scalar reference ones.
//!
//! ggml's own SIMD `quantize_row_q8_0` multiplies by `127/amax` and rounds half to even, which
//! differs from its reference (`x·(1/d)` with `d = amax/127`, `roundf`) in the last step of some
//! elements (GGUF-AND-LLAVA.md §2.4). We keep the reference's arithmetic so that both CPU paths
//! feed the dots the same activations: the scale is computed in scalar f32 exactly as the
//! reference does, the products `x·id` are IEEE multiplications either way, and the rounding
//! is `roundf` done exactly (see [`round_half_away`]).
//!
//! Two kinds of block go to the scalar reference instead, so that the bytes are identical for
//! every input: blocks holding a NaN or an infinity (the reference's result then depends on
//! the order in which it scans the block, and on Rust's saturating float-to-int casts), and
//! blocks so small (largest magnitude below about 4e-37) that the inverse scale overflows to
//! infinity. Neither occurs in a healthy forward pass; both cost one branch per block.

use std::arch::x86_64::*;

use bytemuck::{cast_mut, cast_ref};

use super::{f32_to_f16, hsum_i32};
use crate::quant::{assert_row_len, BlockFormat, BlockQ8K, BlockQ8_0, BlockQ8_1, QK_K};

/// `n` f32 values from `x[8i..8i + 8]`, as registers.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_f32s<const N: usize>(x: &[f32]) -> [__m256; N] {
    assert_eq!(x.len(), 8 * N, "block length");
    std::array::from_fn(|i| {
        // SAFETY: `x` holds 8·N floats (asserted above) and `8i + 8 <= 8N`; `loadu` has no
        // alignment requirement.
        unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) }
    })
}

/// Largest `|x|` over the registers (exact: max is order-independent for finite values).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn abs_max(v: &[__m256]) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    // `max_ps` returns its second operand when either is NaN: a NaN element is skipped.
    let m = v.iter().fold(_mm256_setzero_ps(), |m, &x| {
        _mm256_max_ps(_mm256_andnot_ps(sign, x), m)
    });
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

/// Whether every element is finite: `x - x` is 0 for finite `x` and NaN for infinities and
/// NaNs, and a NaN survives the sum.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn all_finite(v: &[__m256]) -> bool {
    let acc = v.iter().fold(_mm256_setzero_ps(), |acc, &x| {
        _mm256_add_ps(acc, _mm256_sub_ps(x, x))
    });
    _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(acc, acc)) == 0
}

/// `roundf`: to the nearest integer, halves away from zero, exactly. Adding 0.5 and truncating
/// is not exact (0.49999997 + 0.5 rounds up to 1.0), so the fraction is taken off instead:
/// `v - trunc(v)` is exact for every float, and the result steps one away from zero from
/// `trunc(v)` where that fraction is at least one half.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn round_half_away(v: __m256) -> __m256 {
    let sign = _mm256_set1_ps(-0.0);
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
    let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    let step = _mm256_or_ps(_mm256_set1_ps(1.0), _mm256_and_ps(v, sign));
    let away = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
    _mm256_add_ps(t, _mm256_and_ps(away, step))
}

/// 32 integral floats in -128..=127, as 32 bytes in order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn pack_to_i8(q: [__m256i; 4]) -> __m256i {
    // Both packs work per 128-bit lane: dwords end up in the order 0 2 4 6 1 3 5 7 of the
    // wanted one.
    let q01 = _mm256_packs_epi32(q[0], q[1]);
    let q23 = _mm256_packs_epi32(q[2], q[3]);
    let bytes = _mm256_packs_epi16(q01, q23);
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn store_32(dst: &mut [i8; 32], v: __m256i) {
    // SAFETY: the array is 32 bytes long; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), v) }
}

/// The reference Q8_0/Q8_1 block quantizer: `d = amax / 127`, `q = roundf(x · (1/d))`.
/// Returns `d` (in f32) and the quants as i32 lanes, or `None` for a block that must take the
/// scalar code (see the module notes).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn quantize_q8_block(x: &[f32], qs: &mut [i8; 32]) -> Option<(f32, [__m256i; 4])> {
    let v = load_f32s::<4>(x);
    let d = abs_max(&v) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    if !id.is_finite() || !all_finite(&v) {
        return None;
    }
    let id = _mm256_set1_ps(id);
    let q = v.map(|v| _mm256_cvttps_epi32(round_half_away(_mm256_mul_ps(v, id))));
    store_32(qs, pack_to_i8(q));
    Some((d, q))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quantize_row_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    assert_row_len::<BlockQ8_0>(dst.len(), src.len());
    for (block, x) in dst.iter_mut().zip(src.chunks_exact(32)) {
        match quantize_q8_block(x, &mut block.qs) {
            Some((d, _)) => block.d = f32_to_f16(d),
            None => BlockQ8_0::quantize_row(x, std::slice::from_mut(block)),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quantize_row_q8_1(src: &[f32], dst: &mut [BlockQ8_1]) {
    assert_row_len::<BlockQ8_1>(dst.len(), src.len());
    for (block, x) in dst.iter_mut().zip(src.chunks_exact(32)) {
        let Some((d, q)) = quantize_q8_block(x, &mut block.qs) else {
            BlockQ8_1::quantize_row(x, std::slice::from_mut(block));
            continue;
        };
        let sum = hsum_i32(_mm256_add_epi32(
            _mm256_add_epi32(q[0], q[1]),
            _mm256_add_epi32(q[2], q[3]),
        ));
        block.d = f32_to_f16(d);
        // As in the reference: the sum is scaled by the f32 `d`, before `d` is rounded.
        block.s = f32_to_f16(sum as f32 * d);
    }
}

/// The reference Q8_K quantizer: `iscale = -127 / max` for the signed element of largest
/// magnitude (the first one, on ties), `q = nearest_int(iscale · x)` (half to even, which the
/// explicit rounding below reproduces whatever MXCSR says), capped at 127.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quantize_row_q8_k(src: &[f32], dst: &mut [BlockQ8K]) {
    assert_row_len::<BlockQ8K>(dst.len(), src.len());
    for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK_K)) {
        let v = load_f32s::<32>(x);
        if !all_finite(&v) {
            BlockQ8K::quantize_row(x, std::slice::from_mut(block));
            continue;
        }
        let amax = abs_max(&v);
        if amax == 0.0 {
            *block = bytemuck::Zeroable::zeroed();
            continue;
        }
        let max = first_with_magnitude(x, &v, amax);
        let iscale = -127.0 / max;
        if !iscale.is_finite() {
            BlockQ8K::quantize_row(x, std::slice::from_mut(block));
            continue;
        }
        let scale = _mm256_set1_ps(iscale);
        let qs: &mut [[i8; 32]; 8] = cast_mut(&mut block.qs);
        for (out, v) in qs.iter_mut().zip(v.chunks_exact(4)) {
            let q: [__m256i; 4] = std::array::from_fn(|i| {
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_mul_ps(scale, v[i]),
                );
                _mm256_min_epi32(_mm256_cvttps_epi32(r), _mm256_set1_epi32(127))
            });
            store_32(out, pack_to_i8(q));
        }
        block.bsums = bsums(cast_ref(&block.qs));
        block.d = 1.0 / iscale;
    }
}

/// The first element of `x` (loaded as `v`) whose magnitude is `amax`, sign kept.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn first_with_magnitude(x: &[f32], v: &[__m256], amax: f32) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let target = _mm256_set1_ps(amax);
    for (i, &r) in v.iter().enumerate() {
        let hits = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
            _mm256_andnot_ps(sign, r),
            target,
        ));
        if hits != 0 {
            return x[8 * i + hits.trailing_zeros() as usize];
        }
    }
    // Unreachable for the finite blocks this is called on; no reason to panic either way.
    amax
}

/// The sums of the 16 groups of 16 quants.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bsums(qs: &[[i8; 32]; 8]) -> [i16; 16] {
    // Per register: 4 i32 partial sums of group 2k in the low lane, of 2k + 1 in the high lane.
    let partial = qs.map(|q| {
        let pairs = _mm256_maddubs_epi16(_mm256_set1_epi8(1), super::load_32(&q));
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    });
    // Two rounds of pairwise adds leave, per 128-bit lane, one total per register:
    // [g0 g2 g4 g6 | g1 g3 g5 g7] for registers 0..4, then the same for 4..8.
    let sums = |p: &[__m256i]| {
        let a = _mm256_hadd_epi32(p[0], p[1]);
        let b = _mm256_hadd_epi32(p[2], p[3]);
        _mm256_permutevar8x32_epi32(
            _mm256_hadd_epi32(a, b),
            _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
        )
    };
    let (lo, hi) = (sums(&partial[..4]), sums(&partial[4..]));
    // `packs` interleaves the 128-bit lanes of its operands; put them back in order.
    let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(lo, hi));
    let mut out = [0i16; 16];
    // SAFETY: `out` is 32 bytes long; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), packed) };
    out
}
