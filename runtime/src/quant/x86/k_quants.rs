//! K-quant super-blocks (256 elements) against Q8_K activations: Q4_K, Q5_K, Q6_K.
//!
//! Per super-block, the integer products of each sub-block are summed pairwise in i16
//! (`maddubs`, unsigned weights × signed activations), multiplied by the sub-block's integer
//! scale and widened to i32 in one `madd`, and accumulated exactly in 8 i32 lanes; only then
//! is the super-block converted to f32 and scaled. The min (Q4_K, Q5_K) and offset (Q6_K)
//! terms come from the activations' per-16 sums, `bsums`, never element by element.
//!
//! This file holds the kernels of the plain layouts: one weight row against one activation row,
//! and against [`TILE_ROWS`] of them. Those of the interleaved layouts (`BlockQ4Kx8`,
//! `BlockQ6Kx8`) are in `k_quants_interleaved.rs`, re-exported here.

use std::arch::x86_64::*;

use bytemuck::cast_ref;

use super::{f16_to_f32, hsum_f32, load_16, load_32, TILE_ROWS};
use crate::quant::{assert_dot_len, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};

pub(super) use super::k_quants_interleaved::{
    dot_interleaved_q4_k_q8_k, dot_interleaved_q6_k_q8_k, gemm_interleaved_q4_k_q8_k,
    gemm_interleaved_q6_k_q8_k,
};

/// The eight 6-bit scales and eight 6-bit mins of a Q4_K/Q5_K super-block (the values
/// `scale_min_k4` reads one at a time), four at a time in little-endian u32 words:
/// - words 0 and 1 (bytes 0..8): scales and mins 0..4 in their low 6 bits;
/// - word 2 (bytes 8..12): the low 4 bits of scales 4..8 (low nibbles) and mins 4..8 (high);
/// - the top 2 bits of words 0 and 1: bits 4–5 of scales and mins 4..8.
pub(super) fn scales_mins_k4(packed: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let [w0, w1, w2] = cast_ref::<[u8; 12], [[u8; 4]; 3]>(packed).map(u32::from_le_bytes);
    let scales_hi = (w2 & LOW4) | (((w0 >> 6) & LOW2) << 4);
    let mins_hi = ((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4);
    let join = |lo: u32, hi: u32| (u64::from(lo) | (u64::from(hi) << 32)).to_le_bytes();
    (join(w0 & LOW6, scales_hi), join(w1 & LOW6, mins_hi))
}

/// `scale · Σ x·y` over each group of 4 adjacent bytes, as 8 i32 lanes, for unsigned weights
/// `x <= 63` (so the i16 pair sums, at most `2·63·127`, cannot saturate) and an integer scale
/// that fits in i16.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn scaled_dot(x: __m256i, y: __m256i, scale: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), scale)
}

/// `Σ_j mins[j] · (bsums[2j] + bsums[2j + 1])`, the activations of each 32-element sub-block
/// summed and weighted by its min, as 4 i32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn min_term(mins: [u8; 8], bsums: &[i16; 16]) -> __m128i {
    min_term_widened(widen_mins(mins), bsums)
}

/// Eight unsigned bytes (the mins, or the scales) as i16 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn widen_mins(mins: [u8; 8]) -> __m128i {
    _mm_cvtepu8_epi16(_mm_set_epi64x(0, i64::from_le_bytes(mins)))
}

/// [`min_term`] with the mins already widened by [`widen_mins`].
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn min_term_widened(mins: __m128i, bsums: &[i16; 16]) -> __m128i {
    let [lo, hi] = cast_ref::<[i16; 16], [[u8; 16]; 2]>(bsums);
    // Each pair sum is at most 32·127 in magnitude: no i16 overflow.
    let sub_block_sums = _mm_hadd_epi16(load_16(lo), load_16(hi));
    _mm_madd_epi16(mins, sub_block_sums)
}

/// The Q4_K/Q5_K super-block loop: `values(x, g)` gives the weights of 32-byte group `g` as
/// (sub-block `2g`, sub-block `2g + 1`), each a register of unsigned bytes <= 31.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_affine_k<X>(
    w: &[X],
    a: &[BlockQ8K],
    header: impl Fn(&X) -> (f32, f32, &[u8; 12]),
    values: impl Fn(&X, usize) -> (__m256i, __m256i),
) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut acc_min = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let (d, dmin, packed) = header(x);
        let (scales, mins) = scales_mins_k4(packed);
        let q8: &[[i8; 32]; 8] = cast_ref(&y.qs);
        let mut sumi = _mm256_setzero_si256();
        for g in 0..4 {
            let (lo, hi) = values(x, g);
            let (s_lo, s_hi) = (i16::from(scales[2 * g]), i16::from(scales[2 * g + 1]));
            let lo = scaled_dot(lo, load_32(&q8[2 * g]), _mm256_set1_epi16(s_lo));
            let hi = scaled_dot(hi, load_32(&q8[2 * g + 1]), _mm256_set1_epi16(s_hi));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(lo, hi));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(sumi), acc);
        let mins = _mm256_zextsi128_si256(min_term(mins, &y.bsums));
        acc_min = _mm256_fmadd_ps(
            _mm256_set1_ps(dmin * y.d),
            _mm256_cvtepi32_ps(mins),
            acc_min,
        );
    }
    hsum_f32(_mm256_sub_ps(acc, acc_min))
}

/// Group `g` of a Q4_K super-block: `qs` holds sub-block `2g` in its low nibbles, `2g + 1` in
/// its high nibbles.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q4_k_values(x: &BlockQ4K, g: usize) -> (__m256i, __m256i) {
    let low4 = _mm256_set1_epi8(0x0f);
    let q = load_32(&cast_ref::<_, [[u8; 32]; 4]>(&x.qs)[g]);
    let lo = _mm256_and_si256(q, low4);
    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low4);
    (lo, hi)
}

/// Group `g` of a Q5_K super-block: Q4_K's nibbles, plus a fifth bit from `qh[l]`, bit `2g`
/// for the low nibbles and `2g + 1` for the high ones.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q5_k_values(x: &BlockQ5K, g: usize) -> (__m256i, __m256i) {
    let low4 = _mm256_set1_epi8(0x0f);
    let bit4 = _mm256_set1_epi8(0x10);
    let q = load_32(&cast_ref::<_, [[u8; 32]; 4]>(&x.qs)[g]);
    // Shifting 16-bit lanes moves bits across the byte boundary, but only bits of the byte's
    // own qh value land on bit 4 of each byte, and the rest is masked off.
    let qh = _mm256_srl_epi16(load_32(&x.qh), _mm_cvtsi32_si128(2 * g as i32));
    let lo = _mm256_or_si256(
        _mm256_and_si256(q, low4),
        _mm256_and_si256(_mm256_slli_epi16::<4>(qh), bit4),
    );
    let hi = _mm256_or_si256(
        _mm256_and_si256(_mm256_srli_epi16::<4>(q), low4),
        _mm256_and_si256(_mm256_slli_epi16::<3>(qh), bit4),
    );
    (lo, hi)
}

/// Q4_K · Q8_K, groups as [`q4_k_values`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q4_k_q8_k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    assert_dot_len(w, a);
    dot_affine_k(
        w,
        a,
        |x| (f16_to_f32(x.d), f16_to_f32(x.dmin), &x.scales),
        |x, g| q4_k_values(x, g),
    )
}

/// Q5_K · Q8_K, groups as [`q5_k_values`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q5_k_q8_k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    assert_dot_len(w, a);
    dot_affine_k(
        w,
        a,
        |x| (f16_to_f32(x.d), f16_to_f32(x.dmin), &x.scales),
        |x, g| q5_k_values(x, g),
    )
}

/// Row `row` (0..4) of half `half` (0..2) of a Q6_K super-block, as [`dot_q6_k_q8_k`] lays
/// them out: the 32 stored values `q + 32` and the two sub-block scales, one per 128-bit lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q6_k_row(x: &BlockQ6K, half: usize, row: usize) -> (__m256i, __m256i) {
    let ql: &[[u8; 32]; 4] = cast_ref(&x.ql);
    let qh: &[[u8; 32]; 2] = cast_ref(&x.qh);
    let l = load_32(&ql[2 * half + row % 2]);
    let h = load_32(&qh[half]);
    // Rows 0 and 1 take the low nibbles of l0 and l1, rows 2 and 3 the high ones; qh holds
    // bits 4–5 of the rows at bit offsets 0, 2, 4, 6 of each byte.
    let low = if row < 2 {
        l
    } else {
        _mm256_srli_epi16::<4>(l)
    };
    let high = match row {
        0 => _mm256_slli_epi16::<4>(h),
        1 => _mm256_slli_epi16::<2>(h),
        2 => h,
        _ => _mm256_srli_epi16::<2>(h),
    };
    let q = _mm256_or_si256(
        _mm256_and_si256(low, _mm256_set1_epi8(0x0f)),
        _mm256_and_si256(high, _mm256_set1_epi8(0x30)),
    );
    let s = 8 * half + 2 * row;
    let scale = _mm256_set_m128i(
        _mm_set1_epi16(i16::from(x.scales[s + 1])),
        _mm_set1_epi16(i16::from(x.scales[s])),
    );
    (q, scale)
}

/// `32 · Σ_g scale_g · bsums_g`: the stored `+ 32` of every Q6_K value, times the activations,
/// as 8 i32 lanes (`scales` are the 16 sub-block scales widened to i16).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn q6_k_offset(scales: __m256i, bsums: &[i16; 16]) -> __m256i {
    let bsums = load_32(cast_ref::<[i16; 16], [u8; 32]>(bsums));
    _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, scales))
}

/// Q6_K · Q8_K. Each 128-element half takes 64 bytes of `ql` (two registers) and 32 of `qh`
/// (one), and yields four rows of 32 stored values `q + 32` (0..64): low and high nibbles of
/// the two `ql` registers, with two bits each of `qh` on top. A row's 32 elements take two
/// sub-block scales, one per 128-bit lane. The `+ 32` is taken off once per super-block as
/// `32 · Σ_g scale_g · bsums_g`, which relies on `bsums` being the sums of `qs`, as the Q8_K
/// quantizer writes them.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q6_k_q8_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    assert_dot_len(w, a);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let q8: &[[i8; 32]; 8] = cast_ref(&y.qs);
        let mut sumi = _mm256_setzero_si256();
        for half in 0..2 {
            for row in 0..4 {
                let (q, scale) = q6_k_row(x, half, row);
                let p = scaled_dot(q, load_32(&q8[4 * half + row]), scale);
                sumi = _mm256_add_epi32(sumi, p);
            }
        }
        let scales = _mm256_cvtepi8_epi16(load_16(cast_ref(&x.scales)));
        sumi = _mm256_sub_epi32(sumi, q6_k_offset(scales, &y.bsums));
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(f16_to_f32(x.d) * y.d),
            _mm256_cvtepi32_ps(sumi),
            acc,
        );
    }
    hsum_f32(acc)
}

/// The tile version of [`dot_affine_k`]: each group's weights and scales are unpacked once for
/// [`TILE_ROWS`] activation rows. The min term goes into the same accumulator as the rest
/// (subtracted per super-block rather than once at the end), so the float additions come in
/// another order than in the single-row kernel.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_affine_k_tile<X>(
    w: &[X],
    a: [&[BlockQ8K]; TILE_ROWS],
    header: impl Fn(&X) -> (f32, f32, &[u8; 12]),
    values: impl Fn(&X, usize) -> (__m256i, __m256i),
) -> [f32; TILE_ROWS] {
    let mut acc = [_mm256_setzero_ps(); TILE_ROWS];
    for (i, x) in w.iter().enumerate() {
        // (`a.map(..)` here compiled to a call per super-block.)
        let ys: [&BlockQ8K; TILE_ROWS] = std::array::from_fn(|r| &a[r][i]);
        let (d, dmin, packed) = header(x);
        let (scales, mins) = scales_mins_k4(packed);
        let mut sumi = [_mm256_setzero_si256(); TILE_ROWS];
        for g in 0..4 {
            let (lo, hi) = values(x, g);
            let s_lo = _mm256_set1_epi16(i16::from(scales[2 * g]));
            let s_hi = _mm256_set1_epi16(i16::from(scales[2 * g + 1]));
            for (sumi, y) in sumi.iter_mut().zip(ys) {
                let q8: &[[i8; 32]; 8] = cast_ref(&y.qs);
                let lo = scaled_dot(lo, load_32(&q8[2 * g]), s_lo);
                let hi = scaled_dot(hi, load_32(&q8[2 * g + 1]), s_hi);
                *sumi = _mm256_add_epi32(*sumi, _mm256_add_epi32(lo, hi));
            }
        }
        let mins = widen_mins(mins);
        for ((acc, sumi), y) in acc.iter_mut().zip(sumi).zip(ys) {
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(sumi), *acc);
            let min = _mm256_zextsi128_si256(min_term_widened(mins, &y.bsums));
            *acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * y.d), _mm256_cvtepi32_ps(min), *acc);
        }
    }
    acc.map(|acc| hsum_f32(acc))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_tile_q4_k_q8_k(w: &[BlockQ4K], a: [&[BlockQ8K]; TILE_ROWS]) -> [f32; TILE_ROWS] {
    for a in a {
        assert_dot_len(w, a);
    }
    dot_affine_k_tile(
        w,
        a,
        |x| (f16_to_f32(x.d), f16_to_f32(x.dmin), &x.scales),
        |x, g| q4_k_values(x, g),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_tile_q5_k_q8_k(w: &[BlockQ5K], a: [&[BlockQ8K]; TILE_ROWS]) -> [f32; TILE_ROWS] {
    for a in a {
        assert_dot_len(w, a);
    }
    dot_affine_k_tile(
        w,
        a,
        |x| (f16_to_f32(x.d), f16_to_f32(x.dmin), &x.scales),
        |x, g| q5_k_values(x, g),
    )
}

/// The tile version of [`dot_q6_k_q8_k`]: each row of 32 values and its scales are unpacked
/// once for [`TILE_ROWS`] activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_tile_q6_k_q8_k(w: &[BlockQ6K], a: [&[BlockQ8K]; TILE_ROWS]) -> [f32; TILE_ROWS] {
    for a in a {
        assert_dot_len(w, a);
    }
    let mut acc = [_mm256_setzero_ps(); TILE_ROWS];
    for (i, x) in w.iter().enumerate() {
        // (`a.map(..)` here compiled to a call per super-block.)
        let ys: [&BlockQ8K; TILE_ROWS] = std::array::from_fn(|r| &a[r][i]);
        let mut sumi = [_mm256_setzero_si256(); TILE_ROWS];
        for half in 0..2 {
            for row in 0..4 {
                let (q, scale) = q6_k_row(x, half, row);
                for (sumi, y) in sumi.iter_mut().zip(ys) {
                    let q8: &[[i8; 32]; 8] = cast_ref(&y.qs);
                    let p = scaled_dot(q, load_32(&q8[4 * half + row]), scale);
                    *sumi = _mm256_add_epi32(*sumi, p);
                }
            }
        }
        let scales = _mm256_cvtepi8_epi16(load_16(cast_ref(&x.scales)));
        let d = f16_to_f32(x.d);
        for ((acc, sumi), y) in acc.iter_mut().zip(sumi).zip(ys) {
            let sumi = _mm256_sub_epi32(sumi, q6_k_offset(scales, &y.bsums));
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(sumi), *acc);
        }
    }
    acc.map(|acc| hsum_f32(acc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::k_quants::scale_min_k4;

    #[test]
    fn scales_and_mins_unpack_as_scale_min_k4_reads_them() {
        let mut state = 0x1234_5678_u32;
        for _ in 0..1000 {
            let mut packed = [0u8; 12];
            for b in &mut packed {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *b = state as u8;
            }
            let (scales, mins) = scales_mins_k4(&packed);
            for j in 0..8 {
                assert_eq!(
                    (scales[j], mins[j]),
                    scale_min_k4(j, &packed),
                    "{packed:?} {j}"
                );
            }
        }
    }
}
