//! K-quant super-blocks (256 elements) against Q8_K activations: Q4_K, Q5_K, Q6_K.
//!
//! Per super-block, the weights of each sub-block are unpacked to signed bytes, dotted with
//! the activations in i32 lanes, multiplied by the sub-block's integer scale (`mla`) and
//! accumulated exactly; only then is the super-block's sum converted to f32 and scaled. The
//! min terms (Q4_K, Q5_K) come from the activations' per-16 sums, `bsums`, never element by
//! element. Q6_K's offset of 32 is taken off each weight byte instead (it fits in i8), which
//! leaves the dot independent of `bsums`.

use std::arch::aarch64::*;

use bytemuck::cast_ref;

use super::{f16_to_f32, load_i8x16, load_u8x16, I8Dot};
use crate::quant::k_quants::scale_min_k4;
use crate::quant::{assert_dot_len, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};

/// `Σ_j mins[j] · (bsums[2j] + bsums[2j + 1])`: the activations of each 32-element sub-block
/// summed and weighted by its min.
#[target_feature(enable = "neon")]
#[inline]
fn min_term(mins: &[u8; 8], bsums: &[i16; 16]) -> i32 {
    mins.iter()
        .zip(bsums.chunks_exact(2))
        .map(|(&m, pair)| i32::from(m) * (i32::from(pair[0]) + i32::from(pair[1])))
        .sum()
}

/// The Q4_K/Q5_K super-block loop: `values(x, g)` gives the weights of 32-byte group `g` as
/// (sub-block `2g`, sub-block `2g + 1`), each two registers of bytes in 0..=31.
#[target_feature(enable = "neon")]
#[inline]
fn dot_affine_k<X, D: I8Dot>(
    dot: D,
    w: &[X],
    a: &[BlockQ8K],
    header: impl Fn(&X) -> (f32, f32, &[u8; 12]),
    values: impl Fn(&X, usize) -> ([int8x16_t; 2], [int8x16_t; 2]),
) -> f32 {
    let sub_block_dot = |q: [int8x16_t; 2], y: &[[i8; 16]; 16], at: usize| {
        let acc = dot.dot(vdupq_n_s32(0), q[0], load_i8x16(&y[at]));
        dot.dot(acc, q[1], load_i8x16(&y[at + 1]))
    };
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let (d, dmin, packed) = header(x);
        let scales_mins: [(u8, u8); 8] = std::array::from_fn(|j| scale_min_k4(j, packed));
        let q8: &[[i8; 16]; 16] = cast_ref(&y.qs);
        let mut sumi = vdupq_n_s32(0);
        for g in 0..4 {
            let (lo, hi) = values(x, g);
            let (s_lo, s_hi) = (scales_mins[2 * g].0, scales_mins[2 * g + 1].0);
            sumi = vmlaq_n_s32(sumi, sub_block_dot(lo, q8, 4 * g), i32::from(s_lo));
            sumi = vmlaq_n_s32(sumi, sub_block_dot(hi, q8, 4 * g + 2), i32::from(s_hi));
        }
        let mins = scales_mins.map(|(_, m)| m);
        sum += d * y.d * vaddvq_s32(sumi) as f32 - dmin * y.d * min_term(&mins, &y.bsums) as f32;
    }
    sum
}

/// The low and high nibbles of 32 bytes of `qs`.
#[target_feature(enable = "neon")]
#[inline]
fn nibbles(qs: &[u8; 32]) -> ([uint8x16_t; 2], [uint8x16_t; 2]) {
    let q = cast_ref::<[u8; 32], [[u8; 16]; 2]>(qs).map(|half| load_u8x16(&half));
    let low4 = vdupq_n_u8(0x0f);
    (q.map(|q| vandq_u8(q, low4)), q.map(|v| vshrq_n_u8::<4>(v)))
}

/// Q4_K · Q8_K: group `g` of `qs` holds sub-block `2g` in its low nibbles, `2g + 1` in its
/// high nibbles.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn dot_q4_k_q8_k(dot: impl I8Dot, w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    assert_dot_len(w, a);
    dot_affine_k(
        dot,
        w,
        a,
        |x| (f16_to_f32(x.d), f16_to_f32(x.dmin), &x.scales),
        |x, g| {
            let (lo, hi) = nibbles(&cast_ref::<_, [[u8; 32]; 4]>(&x.qs)[g]);
            (
                lo.map(|v| vreinterpretq_s8_u8(v)),
                hi.map(|v| vreinterpretq_s8_u8(v)),
            )
        },
    )
}

/// Q5_K · Q8_K: Q4_K's nibbles, plus a fifth bit from `qh[l]`, bit `2g` for the low nibbles
/// of group `g` and `2g + 1` for the high ones.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn dot_q5_k_q8_k(dot: impl I8Dot, w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    assert_dot_len(w, a);
    let bit4 = vdupq_n_u8(0x10);
    dot_affine_k(
        dot,
        w,
        a,
        |x| (f16_to_f32(x.d), f16_to_f32(x.dmin), &x.scales),
        |x, g| {
            let (lo, hi) = nibbles(&cast_ref::<_, [[u8; 32]; 4]>(&x.qs)[g]);
            // A negative count shifts right: bit `2g` of each byte lands on bit 0.
            let shift = vdupq_n_s8(-2 * g as i8);
            let qh = cast_ref::<[u8; 32], [[u8; 16]; 2]>(&x.qh)
                .map(|half| vshlq_u8(load_u8x16(&half), shift));
            let with = |q: [uint8x16_t; 2], fifth: [uint8x16_t; 2]| {
                [0, 1].map(|i| vreinterpretq_s8_u8(vorrq_u8(q[i], vandq_u8(fifth[i], bit4))))
            };
            (
                with(lo, qh.map(|v| vshlq_n_u8::<4>(v))),
                with(hi, qh.map(|v| vshlq_n_u8::<3>(v))),
            )
        },
    )
}

/// Q6_K · Q8_K. Each 128-element half takes 64 bytes of `ql` (four registers) and 32 of `qh`
/// (two). For `k` in 0..2, register `k` of `ql` holds elements `16k..` (low nibbles) and
/// `64 + 16k..` (high), register `2 + k` elements `32 + 16k..` and `96 + 16k..`, and register
/// `k` of `qh` their top two bits, in that order from bit 0. The 16 elements from `16r` use
/// scale `r` and activation register `r` of the half.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn dot_q6_k_q8_k(dot: impl I8Dot, w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    assert_dot_len(w, a);
    let low4 = vdupq_n_u8(0x0f);
    let high2 = vdupq_n_u8(0x30);
    let offset = vdupq_n_s8(32);
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let ql: &[[u8; 16]; 8] = cast_ref(&x.ql);
        let qh: &[[u8; 16]; 4] = cast_ref(&x.qh);
        let q8: &[[i8; 16]; 16] = cast_ref(&y.qs);
        let mut sumi = vdupq_n_s32(0);
        for half in 0..2 {
            for k in 0..2 {
                let l0 = load_u8x16(&ql[4 * half + k]);
                let l1 = load_u8x16(&ql[4 * half + 2 + k]);
                let h = load_u8x16(&qh[2 * half + k]);
                let rows = [
                    (vandq_u8(l0, low4), vshlq_n_u8::<4>(h)),
                    (vandq_u8(l1, low4), vshlq_n_u8::<2>(h)),
                    (vshrq_n_u8::<4>(l0), h),
                    (vshrq_n_u8::<4>(l1), vshrq_n_u8::<2>(h)),
                ];
                for (row, (low, high)) in rows.into_iter().enumerate() {
                    let stored = vorrq_u8(low, vandq_u8(high, high2));
                    let q = vsubq_s8(vreinterpretq_s8_u8(stored), offset);
                    let r = 8 * half + 2 * row + k;
                    let p = dot.dot(vdupq_n_s32(0), q, load_i8x16(&q8[r]));
                    sumi = vmlaq_n_s32(sumi, p, i32::from(x.scales[r]));
                }
            }
        }
        sum += f16_to_f32(x.d) * y.d * vaddvq_s32(sumi) as f32;
    }
    sum
}
