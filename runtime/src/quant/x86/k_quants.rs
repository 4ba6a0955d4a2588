//! K-quant super-blocks (256 elements) against Q8_K activations: Q4_K, Q5_K, Q6_K.
//!
//! Per super-block, the integer products of each sub-block are summed pairwise in i16
//! (`maddubs`, unsigned weights × signed activations), multiplied by the sub-block's integer
//! scale and widened to i32 in one `madd`, and accumulated exactly in 8 i32 lanes; only then
//! is the super-block converted to f32 and scaled. The min (Q4_K, Q5_K) and offset (Q6_K)
//! terms come from the activations' per-16 sums, `bsums`, never element by element.

use std::arch::x86_64::*;

use bytemuck::cast_ref;

use super::{
    f16_to_f32, hsum_f32, lanes, load_16, load_32, prefetch_ahead, prefetch_ahead_by,
    PREFETCH_BYTES_Q6_K, TILE_ROWS,
};
use crate::quant::dispatch::ActBlockSum;
use crate::quant::{
    assert_dot_len, BlockQ4K, BlockQ4Kx8, BlockQ5K, BlockQ6K, BlockQ6Kx8, BlockQ8K,
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

/// The scales and mins of an interleaved Q4_K super-block's 8 rows, unpacked to bytes, in
/// registers. The decode dot reads them from there: stored and reloaded, they cost it 5–15%
/// (the 8-byte loads come right after the 32-byte stores and cannot take their data from
/// them). The batch kernel stores them ([`Q4KScaleBytes`]): it has no registers to spare.
struct Q4KScales {
    /// Byte `8j + r` of `scales[j / 4]`, `j % 4` counted: sub-block `j`'s scale in row `r`.
    scales: [__m256i; 2],
    /// Byte `2r + h` of 128-bit lane `p % 2` of `mins[p / 2]`: sub-block `2p + h`'s min in row
    /// `r` (pairs, for `pmaddwd`).
    mins: [__m256i; 2],
}

/// Unpacks the 6-bit scales and mins of all 8 rows at once, as `scale_min_k4` does for one:
/// with `q` a row's 12 bytes, sub-block `j < 4` has scale `q[j] & 63` and min `q[j+4] & 63`;
/// `j >= 4` takes its low 4 bits from `q[j+4]` (scale: low nibble, min: high nibble) and its
/// top 2 from the top of `q[j-4]` (scale) or `q[j]` (min). Bytes `0..4`, `4..8` and `8..12` of
/// the 8 rows are one 32-byte load each, so each step here serves 32 fields.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q4_k_x8_unpack(x: &BlockQ4Kx8) -> Q4KScales {
    let bytes = cast_ref::<[[u8; 8]; 12], [[u8; 32]; 3]>(&x.scales);
    let (a, b, c) = (load_32(&bytes[0]), load_32(&bytes[1]), load_32(&bytes[2]));
    let (six_bits, low_nibble) = (_mm256_set1_epi8(0x3f), _mm256_set1_epi8(0x0f));
    // Bits 7..6 of each byte moved to bits 5..4 (a 16-bit shift; the bits it carries across
    // bytes are masked off).
    let top_two = |v: __m256i| _mm256_and_si256(_mm256_srli_epi16::<2>(v), _mm256_set1_epi8(0x30));
    let scales_lo = _mm256_and_si256(a, six_bits);
    let mins_lo = _mm256_and_si256(b, six_bits);
    let scales_hi = _mm256_or_si256(_mm256_and_si256(c, low_nibble), top_two(a));
    let mins_hi = _mm256_or_si256(
        _mm256_and_si256(_mm256_srli_epi16::<4>(c), low_nibble),
        top_two(b),
    );
    // Each 128-bit lane holds sub-blocks (2p, 2p + 1): interleaved, they are the row pairs.
    let pairs = |m: __m256i| _mm256_unpacklo_epi8(m, _mm256_srli_si256::<8>(m));
    Q4KScales {
        scales: [scales_lo, scales_hi],
        mins: [pairs(mins_lo), pairs(mins_hi)],
    }
}

/// [`Q4KScales`] in memory, for the batch kernel.
#[repr(C)]
struct Q4KScaleBytes {
    /// `scales[j][r]`: sub-block `j`'s scale in row `r`.
    scales: [[u8; 8]; 8],
    /// `mins[p][2r + h]`: sub-block `2p + h`'s min in row `r`.
    mins: [[u8; 16]; 4],
}

impl Q4KScales {
    /// The scales of sub-block `j`, row `r` in byte `r`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn of(&self, j: usize) -> __m128i {
        let lane = lane_128(self.scales[j / 4], j / 2 % 2);
        if j.is_multiple_of(2) {
            lane
        } else {
            _mm_unpackhi_epi64(lane, lane)
        }
    }

    /// The min pairs of sub-blocks `(2p, 2p + 1)`, for `p` in `0..4`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn min_pairs(&self) -> [__m128i; 4] {
        let [m0, m1] = self.mins;
        [
            lane_128(m0, 0),
            lane_128(m0, 1),
            lane_128(m1, 0),
            lane_128(m1, 1),
        ]
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn to_bytes(&self) -> Q4KScaleBytes {
        let mut out = Q4KScaleBytes {
            scales: [[0; 8]; 8],
            mins: [[0; 16]; 4],
        };
        let scales: &mut [[u8; 32]; 2] = bytemuck::cast_mut(&mut out.scales);
        let mins: &mut [[u8; 32]; 2] = bytemuck::cast_mut(&mut out.mins);
        let all = self.scales.iter().chain(&self.mins);
        for (dst, &v) in scales.iter_mut().chain(mins.iter_mut()).zip(all) {
            // SAFETY: `dst` is 32 bytes; `storeu` needs no alignment.
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), v) };
        }
        out
    }
}

impl Q4KScaleBytes {
    /// [`Q4KScales::of`], from memory.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn of(&self, j: usize) -> __m128i {
        // SAFETY: `scales[j]` is 8 bytes; an unaligned 8-byte load.
        unsafe { _mm_loadl_epi64(self.scales[j].as_ptr().cast()) }
    }

    /// [`Q4KScales::min_pairs`], from memory.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn min_pairs(&self) -> [__m128i; 4] {
        self.mins.each_ref().map(|m| load_16(m))
    }
}

/// 128-bit lane `i` (0 or 1) of `v`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn lane_128(v: __m256i, i: usize) -> __m128i {
    if i == 0 {
        _mm256_castsi256_si128(v)
    } else {
        _mm256_extracti128_si256::<1>(v)
    }
}

/// The 8 rows' scales of a sub-block (`bytes`, row `r` in byte `r`), each in both i16 halves
/// of its row's dword: `pmaddwd` with a row's i16 pair sums then scales and adds them in one
/// step.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q4_k_x8_scales(bytes: __m128i) -> __m256i {
    let s = _mm256_cvtepu8_epi32(bytes);
    _mm256_or_si256(s, _mm256_slli_epi32::<16>(s))
}

/// Σ_j min[j]·(activation sum of sub-block j) of each of the 8 rows (row r in lane r):
/// `pmaddwd` of the min pairs with the pairs of sub-block sums.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q4_k_x8_min_sums(min_pairs: [__m128i; 4], y: &BlockQ8K) -> __m256i {
    // Sub-block sums B_j = bsums[2j] + bsums[2j + 1] (|B_j| <= 32·127, an i16): dword p of
    // `sums` is the pair (B_2p, B_2p+1).
    let b = load_32(cast_ref::<_, [u8; 32]>(&y.bsums));
    let sums = _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256::<1>(b));
    let mut acc = _mm256_setzero_si256();
    for (p, &pair_mins) in min_pairs.iter().enumerate() {
        let m = _mm256_cvtepu8_epi16(pair_mins);
        let pair = _mm256_set1_epi32(match p {
            0 => _mm_extract_epi32::<0>(sums),
            1 => _mm_extract_epi32::<1>(sums),
            2 => _mm_extract_epi32::<2>(sums),
            _ => _mm_extract_epi32::<3>(sums),
        });
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(m, pair));
    }
    acc
}

/// Dword `e` (elements 4e..4e + 4) of a Q8_K block's quants, in every lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q8_k_dword(y: &BlockQ8K, e: usize) -> __m256i {
    let q = &y.qs[4 * e..4 * e + 4];
    _mm256_set1_epi32(i32::from_le_bytes([
        q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8,
    ]))
}

/// Q4_K · Q8_K for the 8 rows of interleaved super-blocks against one activation row (decode).
///
/// As the interleaved Q4_0 kernel: one register holds a 4-byte run of every row, one broadcast
/// of the matching activation bytes and one `maddubs` serve all 8 rows. Each sub-block's pair
/// sums (at most 8 · 2 · 15 · 127, an i16) are scaled and summed by `pmaddwd` with the rows'
/// scales; the integer sums of a super-block are ggml's exactly, and only the float
/// accumulation differs in order.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_interleaved_q4_k_q8_k(w: &[BlockQ4Kx8], a: &[BlockQ8K]) -> [f32; 8] {
    assert_eq!(w.len(), a.len(), "dot of rows of different lengths");
    let low = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        prefetch_ahead(x);
        let unpacked = q4_k_x8_unpack(x);
        let mut sumi = _mm256_setzero_si256();
        for (g, qs) in x.qs.iter().enumerate() {
            let (mut lo_pairs, mut hi_pairs) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for t in 0..8 {
                let p = load_32(&cast_ref::<_, [[u8; 32]; 8]>(qs)[t]);
                let lo = _mm256_and_si256(p, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(p), low);
                let (a_lo, a_hi) = (q8_k_dword(y, 16 * g + t), q8_k_dword(y, 16 * g + 8 + t));
                lo_pairs = _mm256_add_epi16(lo_pairs, _mm256_maddubs_epi16(lo, a_lo));
                hi_pairs = _mm256_add_epi16(hi_pairs, _mm256_maddubs_epi16(hi, a_hi));
            }
            let (lo_scales, hi_scales) = (
                q4_k_x8_scales(unpacked.of(2 * g)),
                q4_k_x8_scales(unpacked.of(2 * g + 1)),
            );
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(lo_pairs, lo_scales));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(hi_pairs, hi_scales));
        }
        let mins = q4_k_x8_min_sums(unpacked.min_pairs(), y);
        let (d, dmin) = q4_k_x8_factors(x, y);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), d, acc);
        acc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mins), dmin, acc);
    }
    lanes(acc)
}

/// `d·d_a` and `dmin·d_a` of the 8 rows.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q4_k_x8_factors(x: &BlockQ4Kx8, y: &BlockQ8K) -> (__m256, __m256) {
    // SAFETY: `d` and `dmin` are 16 bytes each; unaligned loads.
    let (d, dmin) = unsafe {
        (
            _mm256_cvtph_ps(_mm_loadu_si128(x.d.as_ptr().cast())),
            _mm256_cvtph_ps(_mm_loadu_si128(x.dmin.as_ptr().cast())),
        )
    };
    let da = _mm256_set1_ps(y.d);
    (_mm256_mul_ps(d, da), _mm256_mul_ps(dmin, da))
}

/// [`dot_interleaved_q4_k_q8_k`] against [`TILE_ROWS`] activation rows at once (batches):
/// `out[n][r]` is row `r`'s dot with activation row `n`. Each sub-block's nibbles are unpacked
/// once for the 4 activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn gemm_interleaved_q4_k_q8_k(
    w: &[BlockQ4Kx8],
    a: [&[BlockQ8K]; TILE_ROWS],
    _sums: [&[ActBlockSum]; TILE_ROWS],
) -> [[f32; 8]; TILE_ROWS] {
    const { assert!(TILE_ROWS == 4) };
    a.iter()
        .for_each(|a| assert_eq!(w.len(), a.len(), "dot of rows of different lengths"));
    let low = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); TILE_ROWS];
    for (i, x) in w.iter().enumerate() {
        let ys: [&BlockQ8K; TILE_ROWS] = [&a[0][i], &a[1][i], &a[2][i], &a[3][i]];
        let unpacked = q4_k_x8_unpack(x).to_bytes();
        let mut sumi = [_mm256_setzero_si256(); TILE_ROWS];
        for j in 0..8 {
            let (g, high) = (j / 2, j % 2 == 1);
            let mut pairs = [_mm256_setzero_si256(); TILE_ROWS];
            for t in 0..8 {
                let p = load_32(&cast_ref::<_, [[u8; 32]; 8]>(&x.qs[g])[t]);
                let v = if high {
                    _mm256_and_si256(_mm256_srli_epi16::<4>(p), low)
                } else {
                    _mm256_and_si256(p, low)
                };
                for (pairs, y) in pairs.iter_mut().zip(ys) {
                    let a = q8_k_dword(y, 8 * j + t);
                    *pairs = _mm256_add_epi16(*pairs, _mm256_maddubs_epi16(v, a));
                }
            }
            let scales = q4_k_x8_scales(unpacked.of(j));
            for (sumi, pairs) in sumi.iter_mut().zip(pairs) {
                *sumi = _mm256_add_epi32(*sumi, _mm256_madd_epi16(pairs, scales));
            }
        }
        for n in 0..TILE_ROWS {
            let mins = q4_k_x8_min_sums(unpacked.min_pairs(), ys[n]);
            let (d, dmin) = q4_k_x8_factors(x, ys[n]);
            acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[n]), d, acc[n]);
            acc[n] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mins), dmin, acc[n]);
        }
    }
    [lanes(acc[0]), lanes(acc[1]), lanes(acc[2]), lanes(acc[3])]
}

/// Chunk `c`'s scales of interleaved Q6_K: the pairs (sub-blocks `2c`, `2c + 1`) as i16 per
/// row dword, and each of the two in both i16 halves of the dword (for `pmaddwd` with a row's
/// pair sums).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q6_k_x8_scales(x: &BlockQ6Kx8, c: usize) -> (__m256i, __m256i, __m256i) {
    let pairs = _mm256_cvtepi8_epi16(load_16(cast_ref(&x.scales[c])));
    let dup = |even: bool| {
        let (a, b) = if even { (0, 1) } else { (2, 3) };
        let lane = [
            a,
            b,
            a,
            b,
            a + 4,
            b + 4,
            a + 4,
            b + 4,
            a + 8,
            b + 8,
            a + 8,
            b + 8,
            a + 12,
            b + 12,
            a + 12,
            b + 12,
        ];
        let mask = _mm256_setr_epi8(
            lane[0], lane[1], lane[2], lane[3], lane[4], lane[5], lane[6], lane[7], lane[8],
            lane[9], lane[10], lane[11], lane[12], lane[13], lane[14], lane[15], lane[0], lane[1],
            lane[2], lane[3], lane[4], lane[5], lane[6], lane[7], lane[8], lane[9], lane[10],
            lane[11], lane[12], lane[13], lane[14], lane[15],
        );
        _mm256_shuffle_epi8(pairs, mask)
    };
    (dup(true), dup(false), pairs)
}

/// The stored 6-bit values (`q + 32`) of register `t` of an interleaved Q6_K chunk: `ql` its
/// low-bit bytes, `qh` the high-bit register of `t / 2`, `odd` whether `t` is odd. Returns the
/// low-nibble elements and the high-nibble ones.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q6_k_x8_values(ql: __m256i, qh: __m256i, odd: bool) -> (__m256i, __m256i) {
    let low4 = _mm256_set1_epi8(0x0f);
    let top = _mm256_set1_epi8(0x30);
    let (lo_high, hi_high) = if odd {
        (qh, _mm256_srli_epi16::<2>(qh))
    } else {
        (_mm256_slli_epi16::<4>(qh), _mm256_slli_epi16::<2>(qh))
    };
    let lo = _mm256_or_si256(_mm256_and_si256(ql, low4), _mm256_and_si256(lo_high, top));
    let hi = _mm256_or_si256(
        _mm256_and_si256(_mm256_srli_epi16::<4>(ql), low4),
        _mm256_and_si256(hi_high, top),
    );
    (lo, hi)
}

/// Σ_j scale[j]·(activation sum of sub-block j) of each of the 8 rows (row r in lane r).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q6_k_x8_scaled_sums(x: &BlockQ6Kx8, y: &BlockQ8K) -> __m256i {
    let mut acc = _mm256_setzero_si256();
    for c in 0..8 {
        let (_, _, pairs) = q6_k_x8_scales(x, c);
        // (bsums[2c], bsums[2c + 1]) as one dword.
        let b = i32::from(y.bsums[2 * c] as u16) | (i32::from(y.bsums[2 * c + 1]) << 16);
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi32(b)));
    }
    acc
}

/// Q6_K · Q8_K for the 8 rows of interleaved super-blocks against one activation row (decode).
///
/// The stored values `q + 32` (0..63) are the unsigned operand of `maddubs`; two of its pair
/// sums fit an i16 (2 · 2 · 63 · 127), and `pmaddwd` with the rows' scales takes them to i32.
/// The offset comes off once per super-block as `32 · Σ scale·bsum`, which makes each
/// super-block's integer sum ggml's exactly.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_interleaved_q6_k_q8_k(w: &[BlockQ6Kx8], a: &[BlockQ8K]) -> [f32; 8] {
    assert_eq!(w.len(), a.len(), "dot of rows of different lengths");
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        prefetch_ahead_by::<PREFETCH_BYTES_Q6_K, _>(x);
        let mut sumi = _mm256_setzero_si256();
        for c in 0..8 {
            let (sc_lo, sc_hi, _) = q6_k_x8_scales(x, c);
            for k in 0..2 {
                let qh = load_32(&cast_ref::<_, [[u8; 32]; 2]>(&x.qh[c])[k]);
                let (mut lo_pairs, mut hi_pairs) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for odd in [false, true] {
                    let t = 2 * k + usize::from(odd);
                    let ql = load_32(&cast_ref::<_, [[u8; 32]; 4]>(&x.ql[c])[t]);
                    let (lo, hi) = q6_k_x8_values(ql, qh, odd);
                    let (a_lo, a_hi) = (q8_k_dword(y, 8 * c + t), q8_k_dword(y, 8 * c + 4 + t));
                    lo_pairs = _mm256_add_epi16(lo_pairs, _mm256_maddubs_epi16(lo, a_lo));
                    hi_pairs = _mm256_add_epi16(hi_pairs, _mm256_maddubs_epi16(hi, a_hi));
                }
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(lo_pairs, sc_lo));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(hi_pairs, sc_hi));
            }
        }
        let offset = _mm256_slli_epi32::<5>(q6_k_x8_scaled_sums(x, y));
        let sumi = _mm256_sub_epi32(sumi, offset);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), q6_k_x8_factor(x, y), acc);
    }
    lanes(acc)
}

/// `d·d_a` of the 8 rows.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q6_k_x8_factor(x: &BlockQ6Kx8, y: &BlockQ8K) -> __m256 {
    // SAFETY: `d` is 16 bytes; an unaligned load.
    let d = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(x.d.as_ptr().cast()) });
    _mm256_mul_ps(d, _mm256_set1_ps(y.d))
}

/// [`dot_interleaved_q6_k_q8_k`] against [`TILE_ROWS`] activation rows at once (batches).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn gemm_interleaved_q6_k_q8_k(
    w: &[BlockQ6Kx8],
    a: [&[BlockQ8K]; TILE_ROWS],
    _sums: [&[ActBlockSum]; TILE_ROWS],
) -> [[f32; 8]; TILE_ROWS] {
    const { assert!(TILE_ROWS == 4) };
    a.iter()
        .for_each(|a| assert_eq!(w.len(), a.len(), "dot of rows of different lengths"));
    let mut acc = [_mm256_setzero_ps(); TILE_ROWS];
    for (i, x) in w.iter().enumerate() {
        let ys: [&BlockQ8K; TILE_ROWS] = [&a[0][i], &a[1][i], &a[2][i], &a[3][i]];
        let mut sumi = [_mm256_setzero_si256(); TILE_ROWS];
        for c in 0..8 {
            let (sc_lo, sc_hi, _) = q6_k_x8_scales(x, c);
            for high in [false, true] {
                let scales = if high { sc_hi } else { sc_lo };
                for k in 0..2 {
                    let qh = load_32(&cast_ref::<_, [[u8; 32]; 2]>(&x.qh[c])[k]);
                    let mut pairs = [_mm256_setzero_si256(); TILE_ROWS];
                    for odd in [false, true] {
                        let t = 2 * k + usize::from(odd);
                        let ql = load_32(&cast_ref::<_, [[u8; 32]; 4]>(&x.ql[c])[t]);
                        let (lo, hi) = q6_k_x8_values(ql, qh, odd);
                        let (v, e) = if high {
                            (hi, 8 * c + 4 + t)
                        } else {
                            (lo, 8 * c + t)
                        };
                        for (pairs, y) in pairs.iter_mut().zip(ys) {
                            *pairs =
                                _mm256_add_epi16(*pairs, _mm256_maddubs_epi16(v, q8_k_dword(y, e)));
                        }
                    }
                    for (sumi, pairs) in sumi.iter_mut().zip(pairs) {
                        *sumi = _mm256_add_epi32(*sumi, _mm256_madd_epi16(pairs, scales));
                    }
                }
            }
        }
        for n in 0..TILE_ROWS {
            let offset = _mm256_slli_epi32::<5>(q6_k_x8_scaled_sums(x, ys[n]));
            let sumi = _mm256_sub_epi32(sumi[n], offset);
            acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), q6_k_x8_factor(x, ys[n]), acc[n]);
        }
    }
    [lanes(acc[0]), lanes(acc[1]), lanes(acc[2]), lanes(acc[3])]
}
