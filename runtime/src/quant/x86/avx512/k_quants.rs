//! K-quant super-blocks (256 elements) against Q8_K activations: Q4_K, Q5_K, Q6_K, 64 elements
//! (two Q4_K/Q5_K sub-blocks, four Q6_K ones) per 512-bit register.
//!
//! The arithmetic is the AVX2 kernels' (`super::super::k_quants`): per register, the u8×i8
//! products are summed pairwise in i16 (`vpmaddubsw`), multiplied by each sub-block's integer
//! scale and widened to i32 in one `vpmaddwd`, and accumulated exactly in 16 i32 lanes; the
//! super-block is then converted to f32 and scaled. The min (Q4_K, Q5_K) and offset (Q6_K)
//! terms come from the activations' per-16 sums, `bsums`, with the AVX2 helpers.
//!
//! Every kernel is written once for `N` activation rows: the weights and scales of each
//! register are unpacked once for all of them. `N = 1` is the single-row dot, `N = TILE_ROWS`
//! the tile. The min term goes into the same accumulator as the rest, per super-block.

use std::arch::x86_64::*;

use bytemuck::cast_ref;

use super::super::k_quants::{min_term_widened, q6_k_offset, scales_mins_k4, widen_mins};
use super::super::{f16_to_f32, load_16, load_32};
use super::{halves_epi16, join, load_64, quarters_epi16, TILE_ROWS};
use crate::quant::{assert_dot_len, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, VecDot};

/// `scale · Σ x·y` over each group of 4 adjacent bytes, as 16 i32 lanes, for unsigned weights
/// `x <= 63` (so the i16 pair sums, at most `2·63·127`, cannot saturate) and i16 scales in
/// -128..=127 (so the i32 sums of two scaled pairs cannot overflow).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn scaled_dot(x: __m512i, y: __m512i, scale: __m512i) -> __m512i {
    _mm512_madd_epi16(_mm512_maddubs_epi16(x, y), scale)
}

/// The 256 activation quants of a Q8_K block as four registers.
fn q8_quarters(y: &BlockQ8K) -> &[[i8; 64]; 4] {
    cast_ref(&y.qs)
}

/// The Q4_K/Q5_K super-block loop for `N` activation rows: `values(x, g)` gives the weights of
/// 32-byte group `g` as one register, sub-block `2g` in bytes 0..32 and `2g + 1` in 32..64,
/// unsigned bytes <= 31.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn dot_affine_k<X: VecDot<Activation = BlockQ8K>, const N: usize>(
    w: &[X],
    a: [&[BlockQ8K]; N],
    header: impl Fn(&X) -> (f32, f32, &[u8; 12]),
    values: impl Fn(&X, usize) -> __m512i,
) -> [f32; N] {
    for a in a {
        assert_dot_len(w, a);
    }
    let mut acc = [_mm512_setzero_ps(); N];
    for (i, x) in w.iter().enumerate() {
        let ys: [&BlockQ8K; N] = std::array::from_fn(|r| &a[r][i]);
        let (d, dmin, packed) = header(x);
        let (scales, mins) = scales_mins_k4(packed);
        // The eight scales as i16 lanes 0..8, for `vpermw` to spread.
        let scales = _mm512_zextsi128_si512(widen_mins(scales));
        let mut sumi = [_mm512_setzero_si512(); N];
        for g in 0..4 {
            let q = values(x, g);
            let (lo, hi) = (2 * g as i16, 2 * g as i16 + 1);
            let scale = _mm512_permutexvar_epi16(halves_epi16(lo, hi), scales);
            for (sumi, y) in sumi.iter_mut().zip(ys) {
                let p = scaled_dot(q, load_64(&q8_quarters(y)[g]), scale);
                *sumi = _mm512_add_epi32(*sumi, p);
            }
        }
        let mins = widen_mins(mins);
        for ((acc, sumi), y) in acc.iter_mut().zip(sumi).zip(ys) {
            *acc = _mm512_fmadd_ps(_mm512_set1_ps(d * y.d), _mm512_cvtepi32_ps(sumi), *acc);
            let min = _mm512_zextsi128_si512(min_term_widened(mins, &y.bsums));
            *acc = _mm512_fnmadd_ps(_mm512_set1_ps(dmin * y.d), _mm512_cvtepi32_ps(min), *acc);
        }
    }
    acc.map(|acc| _mm512_reduce_add_ps(acc))
}

/// The 32 bytes of Q4_K/Q5_K group `g` split into nibbles: the low ones (sub-block `2g`) in
/// bytes 0..32, the high ones (`2g + 1`) in 32..64.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn group_nibbles(qs: &[u8; 128], g: usize) -> __m512i {
    let q = load_32(&cast_ref::<_, [[u8; 32]; 4]>(qs)[g]);
    _mm512_and_si512(join(q, _mm256_srli_epi16::<4>(q)), _mm512_set1_epi8(0x0f))
}

/// Group `g` of a Q4_K super-block, as [`group_nibbles`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn q4_k_values(x: &BlockQ4K, g: usize) -> __m512i {
    group_nibbles(&x.qs, g)
}

/// Group `g` of a Q5_K super-block: Q4_K's nibbles, plus 16 where the fifth bit is set; it
/// comes from `qh[l]` for element `l` of either sub-block, bit `2g` for sub-block `2g` (bytes
/// 0..32) and bit `2g + 1` for sub-block `2g + 1` (bytes 32..64).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn q5_k_values(x: &BlockQ5K, g: usize) -> __m512i {
    let nibbles = group_nibbles(&x.qs, g);
    let qh = _mm512_broadcast_i64x4(load_32(&x.qh));
    let bit = 1u8 << (2 * g);
    let bits = join(
        _mm256_set1_epi8(bit as i8),
        _mm256_set1_epi8((bit << 1) as i8),
    );
    let set = _mm512_test_epi8_mask(qh, bits);
    _mm512_mask_add_epi8(nibbles, set, nibbles, _mm512_set1_epi8(16))
}

/// Q4_K · Q8_K, groups as [`q4_k_values`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dot_q4_k_q8_k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let [dot] = dot_affine_k(
        w,
        [a],
        |x| (f16_to_f32(x.d), f16_to_f32(x.dmin), &x.scales),
        |x, g| q4_k_values(x, g),
    );
    dot
}

/// Q5_K · Q8_K, groups as [`q5_k_values`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dot_q5_k_q8_k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    let [dot] = dot_affine_k(
        w,
        [a],
        |x| (f16_to_f32(x.d), f16_to_f32(x.dmin), &x.scales),
        |x, g| q5_k_values(x, g),
    );
    dot
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dot_tile_q4_k_q8_k(w: &[BlockQ4K], a: [&[BlockQ8K]; TILE_ROWS]) -> [f32; TILE_ROWS] {
    dot_affine_k(
        w,
        a,
        |x| (f16_to_f32(x.d), f16_to_f32(x.dmin), &x.scales),
        |x, g| q4_k_values(x, g),
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dot_tile_q5_k_q8_k(w: &[BlockQ5K], a: [&[BlockQ8K]; TILE_ROWS]) -> [f32; TILE_ROWS] {
    dot_affine_k(
        w,
        a,
        |x| (f16_to_f32(x.d), f16_to_f32(x.dmin), &x.scales),
        |x, g| q5_k_values(x, g),
    )
}

/// Half `half` (0..2) of a Q6_K super-block as two registers of stored values `q + 32`
/// (0..64): rows 0 and 1 of the layout table (elements `l` and `l + 32`, l in 0..32), then
/// rows 2 and 3 (`l + 64`, `l + 96`). So each register holds 64 consecutive elements, the
/// order of the activations. Rows 0 and 1 take the low nibbles of the two 32-byte halves of
/// the half's 64 `ql` bytes, rows 2 and 3 the high ones; the 32 `qh` bytes hold bits 4–5 of
/// rows 0, 1, 2, 3 at bit offsets 0, 2, 4, 6.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn q6_k_half(x: &BlockQ6K, half: usize) -> [__m512i; 2] {
    let ql: &[[u8; 64]; 2] = cast_ref(&x.ql);
    let qh: &[[u8; 32]; 2] = cast_ref(&x.qh);
    let l = load_64(&ql[half]);
    let h = _mm512_broadcast_i64x4(load_32(&qh[half]));
    let (low4, bits45) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
    // 16-bit shifts move bits across the byte boundary, but only bits of a byte's own qh
    // value land on bits 4–5 of that byte, and the rest is masked off.
    let high01 = _mm512_sllv_epi16(h, halves_epi16(4, 2));
    let high23 = _mm512_srlv_epi16(h, halves_epi16(0, 2));
    let rows01 = _mm512_or_si512(_mm512_and_si512(l, low4), _mm512_and_si512(high01, bits45));
    let rows23 = _mm512_or_si512(
        _mm512_and_si512(_mm512_srli_epi16::<4>(l), low4),
        _mm512_and_si512(high23, bits45),
    );
    [rows01, rows23]
}

/// Q6_K for `N` activation rows. Element `e` of half `h` takes scale `8h + e / 16`, so the
/// four 128-bit lanes of register `r` of half `h` take scales `8h + 4r + 0..4`. The stored
/// `+ 32` is taken off once per super-block as `32 · Σ_g scale_g · bsums_g`, which relies on
/// `bsums` being the sums of `qs`, as the Q8_K quantizer writes them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn dot_q6_k<const N: usize>(w: &[BlockQ6K], a: [&[BlockQ8K]; N]) -> [f32; N] {
    for a in a {
        assert_dot_len(w, a);
    }
    let mut acc = [0f32; N];
    for (i, x) in w.iter().enumerate() {
        let ys: [&BlockQ8K; N] = std::array::from_fn(|r| &a[r][i]);
        // The 16 scales as i16 lanes 0..16, for `vpermw` to spread.
        let scales = _mm256_cvtepi8_epi16(load_16(cast_ref(&x.scales)));
        let spread = _mm512_zextsi256_si512(scales);
        let mut sumi = [_mm512_setzero_si512(); N];
        for half in 0..2 {
            let rows = q6_k_half(x, half);
            for (r, q) in rows.into_iter().enumerate() {
                let first = (8 * half + 4 * r) as i16;
                let lanes = quarters_epi16([first, first + 1, first + 2, first + 3]);
                let scale = _mm512_permutexvar_epi16(lanes, spread);
                for (sumi, y) in sumi.iter_mut().zip(ys) {
                    let p = scaled_dot(q, load_64(&q8_quarters(y)[2 * half + r]), scale);
                    *sumi = _mm512_add_epi32(*sumi, p);
                }
            }
        }
        let d = f16_to_f32(x.d);
        for ((acc, sumi), y) in acc.iter_mut().zip(sumi).zip(ys) {
            // The lanes of `sumi` and of the offset hold different sub-blocks, so they cancel
            // only in total: summed exactly as integers first. (Converted lane by lane, an
            // all-zero block, 32 stored everywhere, came out as ±2^-13 against large
            // activations: each lane's product with the scale rounds.)
            let offset = _mm512_zextsi256_si512(q6_k_offset(scales, &y.bsums));
            let total = _mm512_reduce_add_epi32(_mm512_sub_epi32(sumi, offset));
            *acc += d * y.d * total as f32;
        }
    }
    acc
}

/// Q6_K · Q8_K, as [`dot_q6_k`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dot_q6_k_q8_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let [dot] = dot_q6_k(w, [a]);
    dot
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dot_tile_q6_k_q8_k(w: &[BlockQ6K], a: [&[BlockQ8K]; TILE_ROWS]) -> [f32; TILE_ROWS] {
    dot_q6_k(w, a)
}
