//! The 32-element formats against Q8_0 / Q8_1 activations: Q4_0, Q5_0, Q8_0 (symmetric) and
//! Q4_1, Q5_1 (with a min).
//!
//! Each block's 32 weights are widened to two registers of bytes, in element order, so that
//! they line up with the activation quants; the integer dot of the block is exact, then
//! converted to f32 and scaled by `d_w·d_a` with an FMA into a lane accumulator. Two
//! accumulators alternate between blocks, as in the AVX2 kernels, so that consecutive blocks'
//! FMAs do not wait on each other (not measured on ARM hardware: this machine has none).

use std::arch::aarch64::*;

use bytemuck::cast_ref;
use half::f16;

use super::{f16_to_f32, load_i8x16, load_u8x16, I8Dot};
use crate::quant::{
    assert_dot_len, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1,
};

/// The 32 nibbles of a Q4_0/Q4_1/Q5_0/Q5_1 block as bytes 0..=15, in element order: byte `j`
/// of `qs` holds element `j` low and element `j + 16` high.
#[target_feature(enable = "neon")]
#[inline]
fn nibbles(qs: &[u8; 16]) -> [uint8x16_t; 2] {
    let packed = load_u8x16(qs);
    [vandq_u8(packed, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(packed)]
}

/// `0xff` in byte `i` (of 32, two registers) where bit `i` of the little-endian `qh` word is
/// set, else 0.
#[target_feature(enable = "neon")]
#[inline]
fn bit_mask(qh: [u8; 4]) -> [uint8x16_t; 2] {
    // Byte `i` of a register tests bit `i % 8` of the `qh` byte it was filled from.
    const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let bits = load_u8x16(&BITS);
    let spread = |lo: u8, hi: u8| vtstq_u8(vcombine_u8(vdup_n_u8(lo), vdup_n_u8(hi)), bits);
    [spread(qh[0], qh[1]), spread(qh[2], qh[3])]
}

/// The 32 activation quants of a block, as two registers.
#[target_feature(enable = "neon")]
#[inline]
fn activations(qs: &[i8; 32]) -> [int8x16_t; 2] {
    cast_ref::<[i8; 32], [[i8; 16]; 2]>(qs).map(|half| load_i8x16(&half))
}

/// The exact integer dot of one block's 32 weights with its 32 activation quants, as 4 lanes.
#[target_feature(enable = "neon")]
#[inline]
fn block_dot(dot: impl I8Dot, w: [int8x16_t; 2], a: &[i8; 32]) -> int32x4_t {
    let [a0, a1] = activations(a);
    dot.dot(dot.dot(vdupq_n_s32(0), w[0], a0), w[1], a1)
}

/// Σ over blocks of `sumi(block) · scale(block)`, with `sumi` as 4 i32 lanes and two
/// alternating accumulators.
#[target_feature(enable = "neon")]
#[inline]
fn scaled_block_sum<X, Y>(
    xs: &[X],
    ys: &[Y],
    sumi: impl Fn(&X, &Y) -> int32x4_t,
    scale: impl Fn(&X, &Y) -> f32,
) -> f32 {
    let term = |x: &X, y: &Y, acc: float32x4_t| {
        vfmaq_f32(acc, vcvtq_f32_s32(sumi(x, y)), vdupq_n_f32(scale(x, y)))
    };
    let (mut acc0, mut acc1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let (mut x_pairs, mut y_pairs) = (xs.chunks_exact(2), ys.chunks_exact(2));
    for (x, y) in (&mut x_pairs).zip(&mut y_pairs) {
        acc0 = term(&x[0], &y[0], acc0);
        acc1 = term(&x[1], &y[1], acc1);
    }
    if let (Some(x), Some(y)) = (x_pairs.remainder().first(), y_pairs.remainder().first()) {
        acc0 = term(x, y, acc0);
    }
    vaddvq_f32(vaddq_f32(acc0, acc1))
}

/// Q4_0 · Q8_0: weights `nibble - 8`.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn dot_q4_0_q8_0(dot: impl I8Dot, w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    assert_dot_len(w, a);
    scaled_block_sum(
        w,
        a,
        |x, y| {
            let q = nibbles(&x.qs).map(|n| vsubq_s8(vreinterpretq_s8_u8(n), vdupq_n_s8(8)));
            block_dot(dot, q, &y.qs)
        },
        |x, y| f16_to_f32(x.d) * f16_to_f32(y.d),
    )
}

/// Q5_0 · Q8_0: weights `(nibble | fifth bit << 4) - 16`, i.e. the nibble itself where the
/// fifth bit is set and `nibble - 16` (the nibble with the top bits of the byte set) where not.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn dot_q5_0_q8_0(dot: impl I8Dot, w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    assert_dot_len(w, a);
    scaled_block_sum(
        w,
        a,
        |x, y| {
            let [n0, n1] = nibbles(&x.qs);
            let [m0, m1] = bit_mask(x.qh);
            let q = |n, m| vreinterpretq_s8_u8(vorrq_u8(n, vbicq_u8(vdupq_n_u8(0xf0), m)));
            block_dot(dot, [q(n0, m0), q(n1, m1)], &y.qs)
        },
        |x, y| f16_to_f32(x.d) * f16_to_f32(y.d),
    )
}

/// Q8_0 · Q8_0.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn dot_q8_0_q8_0(dot: impl I8Dot, w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    assert_dot_len(w, a);
    scaled_block_sum(
        w,
        a,
        |x, y| block_dot(dot, activations(&x.qs), &y.qs),
        |x, y| f16_to_f32(x.d) * f16_to_f32(y.d),
    )
}

/// Σ over blocks of `m·s`: with `Σ (q·d + m)·q_a·d_a = d·d_a·Σ q·q_a + m·s` and
/// `s = d_a·Σ q_a` stored in the activation block, the min terms are summed apart from the
/// lanes.
#[target_feature(enable = "neon")]
#[inline]
fn min_terms<X>(w: &[X], a: &[BlockQ8_1], min: impl Fn(&X) -> f16) -> f32 {
    w.iter().zip(a).fold(0f32, |sum, (x, y)| {
        sum + f16_to_f32(min(x)) * f16_to_f32(y.s)
    })
}

/// Q4_1 · Q8_1: unsigned weights `nibble`, plus the min terms.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn dot_q4_1_q8_1(dot: impl I8Dot, w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    assert_dot_len(w, a);
    let scaled = scaled_block_sum(
        w,
        a,
        |x, y| block_dot(dot, nibbles(&x.qs).map(|v| vreinterpretq_s8_u8(v)), &y.qs),
        |x, y| f16_to_f32(x.d) * f16_to_f32(y.d),
    );
    scaled + min_terms(w, a, |x| x.m)
}

/// Q5_1 · Q8_1: unsigned 5-bit weights `nibble | fifth bit << 4`, min as in Q4_1.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn dot_q5_1_q8_1(dot: impl I8Dot, w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    assert_dot_len(w, a);
    let scaled = scaled_block_sum(
        w,
        a,
        |x, y| {
            let [n0, n1] = nibbles(&x.qs);
            let [m0, m1] = bit_mask(x.qh);
            let q = |n, m| vreinterpretq_s8_u8(vorrq_u8(n, vandq_u8(vdupq_n_u8(0x10), m)));
            block_dot(dot, [q(n0, m0), q(n1, m1)], &y.qs)
        },
        |x, y| f16_to_f32(x.d) * f16_to_f32(y.d),
    );
    scaled + min_terms(w, a, |x| x.m)
}
