//! The 32-element formats against Q8_0 / Q8_1 activations: Q4_0, Q5_0, Q8_0 (symmetric) and
//! Q4_1, Q5_1 (with a min), two blocks per 512-bit register.
//!
//! Block `2k` fills bytes 0..32 of a register and block `2k + 1` bytes 32..64, each in element
//! order, so that the i32 lanes 0..8 of the integer dot belong to the first block and 8..16 to
//! the second; each half is then scaled by its own `d_w·d_a` (a blend of two broadcasts) in one
//! FMA into a lane accumulator. Two accumulators alternate between pairs, for the latency
//! reason the AVX2 kernels give. A lone last block takes both halves and updates only the low
//! eight lanes.

use std::arch::x86_64::*;

use half::f16;

use super::super::{f16_to_f32, load_16, load_32};
use super::{dot_i8_i8, join, U8I8Dot};
use crate::quant::{
    assert_dot_len, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1,
};

/// Lanes 8..16: the second block's half of a register.
const HIGH_HALF: __mmask16 = 0xff00;
/// Lanes 0..8: the first block's half.
const LOW_HALF: __mmask16 = 0x00ff;

/// The 32 nibbles of each of two Q4_0/Q4_1/Q5_0/Q5_1 blocks as bytes 0..=15, in element order:
/// byte `j` of `qs` holds element `j` low and element `j + 16` high.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn nibbles(qs: [&[u8; 16]; 2]) -> __m512i {
    let spread = |qs: &[u8; 16]| {
        let packed = load_16(qs);
        _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed)
    };
    _mm512_and_si512(join(spread(qs[0]), spread(qs[1])), _mm512_set1_epi8(0x0f))
}

/// The fifth bits of two Q5_0/Q5_1 blocks as a mask: bit `i` of the little-endian `qh` word of
/// the first block is mask bit `i`, of the second block mask bit `32 + i`, matching the bytes
/// of [`nibbles`].
#[inline]
fn fifth_bits(qh: [[u8; 4]; 2]) -> __mmask64 {
    u64::from(u32::from_le_bytes(qh[0])) | (u64::from(u32::from_le_bytes(qh[1])) << 32)
}

/// Σ over blocks of `sumi(pair) · scale(block)`, where `sumi` gives a pair's integer dot as 16
/// i32 lanes (the first block's in lanes 0..8, the second's in 8..16).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn scaled_pair_sum<X, Y>(
    xs: &[X],
    ys: &[Y],
    sumi: impl Fn([&X; 2], [&Y; 2]) -> __m512i,
    scale: impl Fn(&X, &Y) -> f32,
) -> f32 {
    let term = |x: [&X; 2], y: [&Y; 2], acc: __m512| {
        let scales = _mm512_mask_blend_ps(
            HIGH_HALF,
            _mm512_set1_ps(scale(x[0], y[0])),
            _mm512_set1_ps(scale(x[1], y[1])),
        );
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi(x, y)), scales, acc)
    };
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let (mut x_quads, mut y_quads) = (xs.chunks_exact(4), ys.chunks_exact(4));
    for (x, y) in (&mut x_quads).zip(&mut y_quads) {
        acc0 = term([&x[0], &x[1]], [&y[0], &y[1]], acc0);
        acc1 = term([&x[2], &x[3]], [&y[2], &y[3]], acc1);
    }
    let (mut x_pairs, mut y_pairs) = (
        x_quads.remainder().chunks_exact(2),
        y_quads.remainder().chunks_exact(2),
    );
    for (x, y) in (&mut x_pairs).zip(&mut y_pairs) {
        acc0 = term([&x[0], &x[1]], [&y[0], &y[1]], acc0);
    }
    if let (Some(x), Some(y)) = (x_pairs.remainder().first(), y_pairs.remainder().first()) {
        // The block fills both halves; only the low half's lanes are added (`mask3` keeps
        // `acc1`'s other lanes as they are).
        acc1 = _mm512_mask3_fmadd_ps(
            _mm512_cvtepi32_ps(sumi([x, x], [y, y])),
            _mm512_set1_ps(scale(x, y)),
            acc1,
            LOW_HALF,
        );
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
}

/// The activation quants of two blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn quants<Y>(y: [&Y; 2], qs: impl Fn(&Y) -> &[i8; 32]) -> __m512i {
    join(load_32(qs(y[0])), load_32(qs(y[1])))
}

/// Q4_0 · Q8_0: weights `nibble - 8`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
pub(super) fn dot_q4_0_q8_0(dot: impl U8I8Dot, w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    assert_dot_len(w, a);
    scaled_pair_sum(
        w,
        a,
        |x, y| {
            let q = _mm512_sub_epi8(nibbles([&x[0].qs, &x[1].qs]), _mm512_set1_epi8(8));
            dot_i8_i8(dot, q, quants(y, |y| &y.qs))
        },
        |x, y| f16_to_f32(x.d) * f16_to_f32(y.d),
    )
}

/// Q5_0 · Q8_0: weights `(nibble | fifth bit << 4) - 16`, i.e. the nibble where the fifth bit
/// is set and `nibble - 16` where not.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
pub(super) fn dot_q5_0_q8_0(dot: impl U8I8Dot, w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    assert_dot_len(w, a);
    scaled_pair_sum(
        w,
        a,
        |x, y| {
            let nibbles = nibbles([&x[0].qs, &x[1].qs]);
            let clear = !fifth_bits([x[0].qh, x[1].qh]);
            let q = _mm512_mask_sub_epi8(nibbles, clear, nibbles, _mm512_set1_epi8(16));
            dot_i8_i8(dot, q, quants(y, |y| &y.qs))
        },
        |x, y| f16_to_f32(x.d) * f16_to_f32(y.d),
    )
}

/// Q8_0 · Q8_0.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
pub(super) fn dot_q8_0_q8_0(dot: impl U8I8Dot, w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    assert_dot_len(w, a);
    scaled_pair_sum(
        w,
        a,
        |x, y| dot_i8_i8(dot, quants(x, |x| &x.qs), quants(y, |y| &y.qs)),
        |x, y| f16_to_f32(x.d) * f16_to_f32(y.d),
    )
}

/// `Σ m·s` over the blocks of a Q4_1/Q5_1 · Q8_1 dot: the min of each weight block times the
/// activations' `s = d_a·Σ q_a`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn min_terms<X>(w: &[X], a: &[BlockQ8_1], min: impl Fn(&X) -> f16) -> f32 {
    w.iter().zip(a).fold(0f32, |sum, (x, y)| {
        sum + f16_to_f32(min(x)) * f16_to_f32(y.s)
    })
}

/// Q4_1 · Q8_1: `Σ (q·d + m)·q_a·d_a = d·d_a·Σ q·q_a + m·s`, unsigned nibbles `q`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
pub(super) fn dot_q4_1_q8_1(dot: impl U8I8Dot, w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    assert_dot_len(w, a);
    let scaled = scaled_pair_sum(
        w,
        a,
        |x, y| {
            let q = nibbles([&x[0].qs, &x[1].qs]);
            dot.dot(_mm512_setzero_si512(), q, quants(y, |y| &y.qs))
        },
        |x, y| f16_to_f32(x.d) * f16_to_f32(y.d),
    );
    scaled + min_terms(w, a, |x| x.m)
}

/// Q5_1 · Q8_1: unsigned 5-bit weights `nibble | fifth bit << 4`, min as in Q4_1.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
pub(super) fn dot_q5_1_q8_1(dot: impl U8I8Dot, w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    assert_dot_len(w, a);
    let scaled = scaled_pair_sum(
        w,
        a,
        |x, y| {
            let nibbles = nibbles([&x[0].qs, &x[1].qs]);
            let set = fifth_bits([x[0].qh, x[1].qh]);
            let q = _mm512_mask_add_epi8(nibbles, set, nibbles, _mm512_set1_epi8(16));
            dot.dot(_mm512_setzero_si512(), q, quants(y, |y| &y.qs))
        },
        |x, y| f16_to_f32(x.d) * f16_to_f32(y.d),
    );
    scaled + min_terms(w, a, |x| x.m)
}
