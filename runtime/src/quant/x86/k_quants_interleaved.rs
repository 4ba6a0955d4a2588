//! Q4_K and Q6_K weights interleaved [`DOT_ROWS`](crate::quant::DOT_ROWS) = 8 rows to a block
//! (`BlockQ4Kx8`, `BlockQ6Kx8`) against Q8_K activations: each layout's dot of a group's 8 rows
//! with one activation row (decode) and with [`TILE_ROWS`] activation rows at once (batches).
//! Re-exported by `k_quants.rs`, beside the one-row and tile kernels of the plain layouts.

use std::arch::x86_64::*;

use bytemuck::cast_ref;

use super::{
    lanes, load_16, load_32, prefetch_ahead, prefetch_ahead_by, PREFETCH_BYTES_Q6_K, TILE_ROWS,
};
use crate::quant::dispatch::ActBlockSum;
use crate::quant::{BlockQ4Kx8, BlockQ6Kx8, BlockQ8K};

/// The scales and mins of an interleaved Q4_K super-block's 8 rows, unpacked to bytes, in
/// registers. The decode dot reads them from there: stored and reloaded, they cost it 5–15%
/// (the 8-byte loads come right after the 32-byte stores and cannot take their data from
/// them). The batch kernel stores them ([`Q4KScaleBytes`]): it has no registers to spare.
pub(super) struct Q4KScales {
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
pub(super) fn q4_k_x8_unpack(x: &BlockQ4Kx8) -> Q4KScales {
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
pub(super) struct Q4KScaleBytes {
    /// `scales[j][r]`: sub-block `j`'s scale in row `r`.
    scales: [[u8; 8]; 8],
    /// `mins[p][2r + h]`: sub-block `2p + h`'s min in row `r`.
    pub(super) mins: [[u8; 16]; 4],
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
    pub(super) fn to_bytes(&self) -> Q4KScaleBytes {
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
    pub(super) fn of(&self, j: usize) -> __m128i {
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
