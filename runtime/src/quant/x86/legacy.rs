//! The 32-element formats against Q8_0 / Q8_1 activations: Q4_0, Q5_0, Q8_0 (symmetric) and
//! Q4_1, Q5_1 (with a min).
//!
//! Each block's 32 weights are widened to one register of bytes, in element order, so that
//! they line up with the activation quants; the integer dot of the block is exact, then
//! converted to f32 and scaled by `d_w·d_a` with an FMA into a lane accumulator. Two
//! accumulators alternate between blocks: one FMA chain per block would cost its 4-cycle
//! latency per 18-byte Q4_0 block, about the time the block takes to stream from memory.
//!
//! This file holds the kernels of the plain layouts: one weight row against one activation row,
//! and [`DOT_ROWS`] weight rows against one. Those of the interleaved layouts (`BlockQ4_0x8`,
//! `BlockQ8_0x8`) are in `legacy_interleaved.rs`, re-exported here.

use std::arch::x86_64::*;

use half::f16;

use super::{dot_i8_i8, dot_u8_i8, f16_to_f32, hsum_f32, lanes, load_16, load_32};
use crate::quant::dispatch::DOT_ROWS;
use crate::quant::{
    assert_dot_len, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1,
};

pub(super) use super::legacy_interleaved::{
    dot_interleaved_q4_0_q8_0, dot_interleaved_q8_0_q8_0, gemm_interleaved_q4_0_q8_0,
    gemm_interleaved_q8_0_q8_0,
};

/// The 32 nibbles of a Q4_0/Q4_1/Q5_0/Q5_1 block as bytes 0..=15, in element order: byte `j`
/// of `qs` holds element `j` low and element `j + 16` high.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn nibbles(qs: &[u8; 16]) -> __m256i {
    let packed = load_16(qs);
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// `0xff` in byte `i` where bit `i` of the little-endian `qh` word is set, else 0.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bit_mask(qh: [u8; 4]) -> __m256i {
    let word = _mm256_set1_epi32(i32::from_le_bytes(qh));
    // Bytes 0..8 take byte 0 of the word, 8..16 byte 1, ...
    let spread = _mm256_shuffle_epi8(
        word,
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    // Byte `i` sets every bit but `i % 8`: all ones afterwards exactly when that bit was set.
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1))
}

/// Σ over blocks of `sumi(block) · scale(block)`, with `sumi` as 8 i32 lanes and two
/// alternating accumulators.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn scaled_block_sum<X, Y>(
    xs: &[X],
    ys: &[Y],
    sumi: impl Fn(&X, &Y) -> __m256i,
    scale: impl Fn(&X, &Y) -> f32,
) -> f32 {
    let term = |x: &X, y: &Y, acc: __m256| {
        _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(sumi(x, y)),
            _mm256_set1_ps(scale(x, y)),
            acc,
        )
    };
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (mut x_pairs, mut y_pairs) = (xs.chunks_exact(2), ys.chunks_exact(2));
    for (x, y) in (&mut x_pairs).zip(&mut y_pairs) {
        acc0 = term(&x[0], &y[0], acc0);
        acc1 = term(&x[1], &y[1], acc1);
    }
    if let (Some(x), Some(y)) = (x_pairs.remainder().first(), y_pairs.remainder().first()) {
        acc0 = term(x, y, acc0);
    }
    hsum_f32(_mm256_add_ps(acc0, acc1))
}

/// The weights of a Q4_0 block as i8: `nibble - 8`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q4_0_weights(x: &BlockQ4_0) -> __m256i {
    _mm256_sub_epi8(nibbles(&x.qs), _mm256_set1_epi8(8))
}

/// The weights of a Q5_0 block as i8: `(nibble | fifth bit << 4) - 16`, i.e. the nibble itself
/// where the fifth bit is set and `nibble - 16` (the nibble with the top bits of the byte set)
/// where not.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q5_0_weights(x: &BlockQ5_0) -> __m256i {
    let high = _mm256_andnot_si256(bit_mask(x.qh), _mm256_set1_epi8(0xf0u8 as i8));
    _mm256_or_si256(nibbles(&x.qs), high)
}

/// Q4_0 · Q8_0: weights `nibble - 8`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    assert_dot_len(w, a);
    scaled_block_sum(
        w,
        a,
        |x, y| dot_i8_i8(q4_0_weights(x), load_32(&y.qs)),
        |x, y| f16_to_f32(x.d) * f16_to_f32(y.d),
    )
}

/// Q5_0 · Q8_0: weights as [`q5_0_weights`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q5_0_q8_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    assert_dot_len(w, a);
    scaled_block_sum(
        w,
        a,
        |x, y| dot_i8_i8(q5_0_weights(x), load_32(&y.qs)),
        |x, y| f16_to_f32(x.d) * f16_to_f32(y.d),
    )
}

/// Q8_0 · Q8_0.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    assert_dot_len(w, a);
    scaled_block_sum(
        w,
        a,
        |x, y| dot_i8_i8(load_32(&x.qs), load_32(&y.qs)),
        |x, y| f16_to_f32(x.d) * f16_to_f32(y.d),
    )
}

/// Q4_1 · Q8_1: `Σ (q·d + m)·q_a·d_a = d·d_a·Σ q·q_a + m·s`, with `s = d_a·Σ q_a` stored in the
/// activation block. The min terms are summed apart from the lanes.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q4_1_q8_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    assert_dot_len(w, a);
    let mins = w
        .iter()
        .zip(a)
        .fold(0f32, |sum, (x, y)| sum + f16_to_f32(x.m) * f16_to_f32(y.s));
    let scaled = scaled_block_sum(
        w,
        a,
        |x, y| dot_u8_i8(nibbles(&x.qs), load_32(&y.qs)),
        |x, y| f16_to_f32(x.d) * f16_to_f32(y.d),
    );
    scaled + mins
}

/// Q5_1 · Q8_1: unsigned 5-bit weights `nibble | fifth bit << 4`, min as in Q4_1.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q5_1_q8_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    assert_dot_len(w, a);
    let mins = w
        .iter()
        .zip(a)
        .fold(0f32, |sum, (x, y)| sum + f16_to_f32(x.m) * f16_to_f32(y.s));
    let scaled = scaled_block_sum(
        w,
        a,
        |x, y| {
            let high = _mm256_and_si256(bit_mask(x.qh), _mm256_set1_epi8(0x10));
            let q = _mm256_or_si256(nibbles(&x.qs), high);
            dot_u8_i8(q, load_32(&y.qs))
        },
        |x, y| f16_to_f32(x.d) * f16_to_f32(y.d),
    );
    scaled + mins
}

/// 32 activation quants as 8 little-endian dwords, for broadcasting 4 at a time.
#[inline]
pub(super) fn dwords(qs: &[i8; 32]) -> [i32; 8] {
    let mut out = [0i32; 8];
    for (out, q) in out.iter_mut().zip(qs.chunks_exact(4)) {
        *out = i32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]);
    }
    out
}

/// Q4_0 · Q8_0 for [`DOT_ROWS`] = 8 weight rows against one activation row (decode).
///
/// The 8 rows' blocks are transposed in registers so that one register holds 4 consecutive
/// nibble bytes of every row: one broadcast of the matching 4 activation bytes and one
/// `maddubs` then serve all 8 rows, the block's sums come out one row per lane, and the 8
/// weight scales convert in one instruction. About 8 instructions per row and block, against
/// 15 for rows dotted 4 at a time without the transpose and 19 for the one-row dot: LLaVA-7B
/// Q4_0 tg32 2.7 → 3.3 t/s (benches/README.md). Prefetching each row 16 blocks ahead made no
/// measurable difference. (Closures that call `array::map` are avoided in here: `map` does not
/// inline them, and the kernel ran at half speed.)
///
/// Each block sum is exact (`Σ q·a - 8·Σ a`, in i16 then i32: `|Σ q·a|` over one lane's 8
/// `maddubs` pairs is at most `8·2·15·127 < 2^15`), then fused into the row's lane as
/// `sum · (d_w·d_a)`, block after block: the reference's order of additions, with one rounding
/// fewer per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_rows_q4_0_q8_0(w: [&[BlockQ4_0]; DOT_ROWS], a: &[BlockQ8_0]) -> [f32; DOT_ROWS] {
    const { assert!(DOT_ROWS == 8) };
    w.iter().for_each(|w| assert_dot_len(w, a));
    let mut acc = _mm256_setzero_ps();
    for (i, y) in a.iter().enumerate() {
        // Rows r (low half) and r + 4 (high half) of the block, 4 packed dwords each.
        let pair = |r: usize| _mm256_set_m128i(load_16(&w[r + 4][i].qs), load_16(&w[r][i].qs));
        let (p0, p1, p2, p3) = (pair(0), pair(1), pair(2), pair(3));
        let (t0, t1) = (_mm256_unpacklo_epi32(p0, p1), _mm256_unpackhi_epi32(p0, p1));
        let (t2, t3) = (_mm256_unpacklo_epi32(p2, p3), _mm256_unpackhi_epi32(p2, p3));
        // `packed[t]`: dword `t` (bytes 4t..4t+4) of every row, row r in lane r.
        let packed = [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ];
        let mut d = [0i16; DOT_ROWS];
        for (d, w) in d.iter_mut().zip(&w) {
            *d = w[i].d.to_bits() as i16;
        }
        let d = _mm_setr_epi16(d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]);
        acc = q4_0_rows_step(packed, d, y, acc);
    }
    lanes(acc)
}

/// One block of 8 Q4_0 rows against activation block `y`, fused into `acc` (row r in lane r):
/// `packed[t]` holds dword `t` of every row's `qs` (row r in lane r), `d` the rows' f16 scales.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn q4_0_rows_step(
    packed: [__m256i; 4],
    d: __m128i,
    y: &BlockQ8_0,
    acc: __m256,
) -> __m256 {
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let eights = _mm256_set1_epi8(8);
    // The activation block as 8 dwords: dword e holds elements 4e..4e+4.
    let act = dwords(&y.qs);
    let mut pairs = _mm256_setzero_si256();
    for (t, &p) in packed.iter().enumerate() {
        // Byte j of a row holds element j (low nibble) and element j + 16 (high).
        let lo = _mm256_and_si256(p, low);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(p), low);
        let (a_lo, a_hi) = (_mm256_set1_epi32(act[t]), _mm256_set1_epi32(act[4 + t]));
        pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(lo, a_lo));
        pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(hi, a_hi));
    }
    // 8·Σa, the same for every row, in every lane.
    let bias = _mm256_madd_epi16(_mm256_maddubs_epi16(eights, load_32(&y.qs)), ones);
    let bias = _mm256_add_epi32(bias, _mm256_permute2x128_si256::<0x01>(bias, bias));
    let bias = _mm256_add_epi32(bias, _mm256_shuffle_epi32::<0b01_00_11_10>(bias));
    let bias = _mm256_add_epi32(bias, _mm256_shuffle_epi32::<0b10_11_00_01>(bias));
    let sums = _mm256_sub_epi32(_mm256_madd_epi16(pairs, ones), bias);
    let scales = _mm256_mul_ps(_mm256_cvtph_ps(d), _mm256_set1_ps(f16_to_f32(y.d)));
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scales, acc)
}

/// Q5_0 · Q8_0 for [`DOT_ROWS`] weight rows against one activation row, 4 rows at a time,
/// each result bit-identical to [`dot_q5_0_q8_0`]'s for its row.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_rows_q5_0_q8_0(w: [&[BlockQ5_0]; DOT_ROWS], a: &[BlockQ8_0]) -> [f32; DOT_ROWS] {
    w.iter().for_each(|w| assert_dot_len(w, a));
    let unsigned = |x: &BlockQ5_0| {
        let high = _mm256_and_si256(bit_mask(x.qh), _mm256_set1_epi8(0x10));
        _mm256_or_si256(nibbles(&x.qs), high)
    };
    let first = offset_rows_sum([w[0], w[1], w[2], w[3]], a, 16, unsigned, |x| x.d);
    let second = offset_rows_sum([w[4], w[5], w[6], w[7]], a, 16, unsigned, |x| x.d);
    std::array::from_fn(|r| if r < 4 { first[r] } else { second[r - 4] })
}

/// The dots of 4 rows of a symmetric format whose weights are `q - offset` for unsigned
/// `q < 2·offset <= 32`, against one Q8_0 row.
///
/// Each activation block is loaded once for all the rows, and its `offset·Σa` once: a row's
/// block sum is `maddubs(q, a) - maddubs(offset, a)` (i16 pairs, no saturation as
/// `q·|a| < 32·128`), which costs no sign fix-ups. The four weight scales of a block convert in
/// one instruction. The float arithmetic of each row is exactly [`scaled_block_sum`]'s: the
/// same integer sums and scale products, fused into the same two alternating accumulators in
/// the same order, so each result is bit-identical to the one-row dot's.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn offset_rows_sum<X>(
    w: [&[X]; 4],
    a: &[BlockQ8_0],
    offset: i8,
    unsigned: impl Fn(&X) -> __m256i,
    scale: impl Fn(&X) -> f16,
) -> [f32; 4] {
    let ones = _mm256_set1_epi16(1);
    let offsets = _mm256_set1_epi8(offset);
    // Lane `r` of a block's four products, in every lane.
    let lane = |v: __m128, r: i32| {
        _mm256_permutevar8x32_ps(_mm256_castps128_ps256(v), _mm256_set1_epi32(r))
    };
    // Block `i` of every row, fused into `acc` (one accumulator per row).
    let step = |i: usize, acc: &mut [__m256; 4]| {
        let y = &a[i];
        let ay = load_32(&y.qs);
        let bias = _mm256_maddubs_epi16(offsets, ay);
        let d = w.map(|w| scale(&w[i]).to_bits() as i16);
        let dw = _mm_cvtph_ps(_mm_setr_epi16(d[0], d[1], d[2], d[3], 0, 0, 0, 0));
        let scales = _mm_mul_ps(dw, _mm_set1_ps(f16_to_f32(y.d)));
        for (r, acc) in acc.iter_mut().enumerate() {
            let pairs = _mm256_sub_epi16(_mm256_maddubs_epi16(unsigned(&w[r][i]), ay), bias);
            let sumi = _mm256_madd_epi16(pairs, ones);
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), lane(scales, r as i32), *acc);
        }
    };
    // Even blocks into `acc0`, odd ones into `acc1`, as `scaled_block_sum` alternates them.
    let mut acc0 = [_mm256_setzero_ps(); 4];
    let mut acc1 = [_mm256_setzero_ps(); 4];
    for i in (0..a.len() / 2 * 2).step_by(2) {
        step(i, &mut acc0);
        step(i + 1, &mut acc1);
    }
    if a.len() % 2 == 1 {
        step(a.len() - 1, &mut acc0);
    }
    std::array::from_fn(|r| hsum_f32(_mm256_add_ps(acc0[r], acc1[r])))
}
