//! Activation quantizers to Q8_0, Q8_1 and Q8_K, byte-identical to the scalar reference ones.
//!
//! NEON has both roundings the references use as single instructions: `fcvtas` (to nearest,
//! ties away from zero: `roundf`, for Q8_0/Q8_1) and `fcvtns` (ties to even: ggml's
//! `nearest_int`, for Q8_K). The scales are computed in scalar f32 exactly as the references
//! compute them, and the products `x·id` are IEEE multiplications either way. AArch64 NEON
//! follows FPCR for subnormals, which Linux leaves off flush-to-zero, so tiny inputs behave as
//! in scalar code too.
//!
//! As on x86 (`x86/activations.rs`), two kinds of block go to the scalar reference instead:
//! blocks holding a NaN or an infinity, and blocks so small that the inverse scale overflows
//! to infinity. Neither occurs in a healthy forward pass; both cost one branch per block.

use std::arch::aarch64::*;

use bytemuck::cast_mut;
use half::f16;

use crate::quant::{assert_row_len, BlockFormat, BlockQ8K, BlockQ8_0, BlockQ8_1, QK_K};

/// `x` as `N` registers of 4 floats.
#[target_feature(enable = "neon")]
#[inline]
fn load_f32s<const N: usize>(x: &[f32]) -> [float32x4_t; N] {
    assert_eq!(x.len(), 4 * N, "block length");
    std::array::from_fn(|i| {
        // SAFETY: `x` holds 4·N floats (asserted above) and `4i + 4 <= 4N`; `ld1` has no
        // alignment requirement.
        unsafe { vld1q_f32(x.as_ptr().add(4 * i)) }
    })
}

/// Whether every element is finite: `x - x` is 0 for finite `x` and NaN for infinities and
/// NaNs, and a NaN survives the sum.
#[target_feature(enable = "neon")]
#[inline]
fn all_finite(v: &[float32x4_t]) -> bool {
    let acc = v
        .iter()
        .fold(vdupq_n_f32(0.0), |acc, &x| vaddq_f32(acc, vsubq_f32(x, x)));
    vminvq_u32(vceqq_f32(acc, acc)) == u32::MAX
}

/// Largest `|x|` over the registers, for finite values (exact: max is order-independent).
#[target_feature(enable = "neon")]
#[inline]
fn abs_max(v: &[float32x4_t]) -> f32 {
    let m = v
        .iter()
        .fold(vdupq_n_f32(0.0), |m, &x| vmaxq_f32(m, vabsq_f32(x)));
    vmaxvq_f32(m)
}

/// 16 integers in -128..=127 (four registers) as 16 bytes in order. The narrowing keeps the
/// low bits, as the references' `as i8` casts do.
#[target_feature(enable = "neon")]
#[inline]
fn narrow_to_i8(q: &[int32x4_t]) -> int8x16_t {
    let half = |a, b| vmovn_s16(vcombine_s16(vmovn_s32(a), vmovn_s32(b)));
    vcombine_s8(half(q[0], q[1]), half(q[2], q[3]))
}

#[target_feature(enable = "neon")]
#[inline]
fn store_16(dst: &mut [i8; 16], v: int8x16_t) {
    // SAFETY: the array is 16 bytes long; `st1` has no alignment requirement.
    unsafe { vst1q_s8(dst.as_mut_ptr(), v) }
}

/// The reference Q8_0/Q8_1 block quantizer: `d = amax / 127`, `q = roundf(x · (1/d))`.
/// Returns `d` (in f32) and `Σ q`, or `None` for a block that must take the scalar code (see
/// the module notes).
#[target_feature(enable = "neon")]
#[inline]
fn quantize_q8_block(x: &[f32], qs: &mut [i8; 32]) -> Option<(f32, i32)> {
    let v = load_f32s::<8>(x);
    if !all_finite(&v) {
        return None;
    }
    let d = abs_max(&v) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    if !id.is_finite() {
        return None;
    }
    let q = v.map(|v| vcvtaq_s32_f32(vmulq_n_f32(v, id)));
    let halves: &mut [[i8; 16]; 2] = cast_mut(qs);
    store_16(&mut halves[0], narrow_to_i8(&q[..4]));
    store_16(&mut halves[1], narrow_to_i8(&q[4..]));
    let sum = q.iter().fold(vdupq_n_s32(0), |s, &q| vaddq_s32(s, q));
    Some((d, vaddvq_s32(sum)))
}

#[target_feature(enable = "neon")]
pub(super) fn quantize_row_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    assert_row_len::<BlockQ8_0>(dst.len(), src.len());
    for (block, x) in dst.iter_mut().zip(src.chunks_exact(32)) {
        match quantize_q8_block(x, &mut block.qs) {
            Some((d, _)) => block.d = f16::from_f32(d),
            None => BlockQ8_0::quantize_row(x, std::slice::from_mut(block)),
        }
    }
}

#[target_feature(enable = "neon")]
pub(super) fn quantize_row_q8_1(src: &[f32], dst: &mut [BlockQ8_1]) {
    assert_row_len::<BlockQ8_1>(dst.len(), src.len());
    for (block, x) in dst.iter_mut().zip(src.chunks_exact(32)) {
        let Some((d, sum)) = quantize_q8_block(x, &mut block.qs) else {
            BlockQ8_1::quantize_row(x, std::slice::from_mut(block));
            continue;
        };
        block.d = f16::from_f32(d);
        // As in the reference: the sum is scaled by the f32 `d`, before `d` is rounded.
        block.s = f16::from_f32(sum as f32 * d);
    }
}

/// The reference Q8_K quantizer: `iscale = -127 / max` for the signed element of largest
/// magnitude (the first one, on ties), `q = nearest_int(iscale · x)` (half to even:
/// `fcvtns`), capped at 127.
#[target_feature(enable = "neon")]
pub(super) fn quantize_row_q8_k(src: &[f32], dst: &mut [BlockQ8K]) {
    assert_row_len::<BlockQ8K>(dst.len(), src.len());
    for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK_K)) {
        let v = load_f32s::<64>(x);
        if !all_finite(&v) {
            BlockQ8K::quantize_row(x, std::slice::from_mut(block));
            continue;
        }
        let amax = abs_max(&v);
        if amax == 0.0 {
            *block = bytemuck::Zeroable::zeroed();
            continue;
        }
        let iscale = -127.0 / first_with_magnitude(x, &v, amax);
        if !iscale.is_finite() {
            BlockQ8K::quantize_row(x, std::slice::from_mut(block));
            continue;
        }
        let groups: &mut [[i8; 16]; 16] = cast_mut(&mut block.qs);
        for ((out, sum), v) in groups
            .iter_mut()
            .zip(&mut block.bsums)
            .zip(v.chunks_exact(4))
        {
            let q: [int32x4_t; 4] = std::array::from_fn(|i| {
                let r = vcvtnq_s32_f32(vmulq_n_f32(v[i], iscale));
                vminq_s32(r, vdupq_n_s32(127))
            });
            let bytes = narrow_to_i8(&q);
            store_16(out, bytes);
            *sum = vaddlvq_s8(bytes);
        }
        block.d = 1.0 / iscale;
    }
}

/// The first element of `x` (loaded as `v`) whose magnitude is `amax`, sign kept.
#[target_feature(enable = "neon")]
#[inline]
fn first_with_magnitude(x: &[f32], v: &[float32x4_t], amax: f32) -> f32 {
    let target = vdupq_n_f32(amax);
    for (i, &r) in v.iter().enumerate() {
        if vmaxvq_u32(vceqq_f32(vabsq_f32(r), target)) != 0 {
            if let Some(&max) = x[4 * i..4 * i + 4].iter().find(|v| v.abs() == amax) {
                return max;
            }
        }
    }
    // Unreachable for the finite blocks this is called on; no reason to panic either way.
    amax
}
