//! The 32-element formats against Q8_0 / Q8_1 activations: Q4_0, Q5_0, Q8_0 (symmetric) and
//! Q4_1, Q5_1 (with a min).
//!
//! Each block's 32 weights are widened to one register of bytes, in element order, so that
//! they line up with the activation quants; the integer dot of the block is exact, then
//! converted to f32 and scaled by `d_w·d_a` with an FMA into a lane accumulator. Two
//! accumulators alternate between blocks: one FMA chain per block would cost its 4-cycle
//! latency per 18-byte Q4_0 block, about the time the block takes to stream from memory.

use std::arch::x86_64::*;

use super::{dot_i8_i8, dot_u8_i8, f16_to_f32, hsum_f32, load_16, load_32};
use crate::quant::{
    assert_dot_len, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1,
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
