//! The NEON versions of the vector primitives: decode attention of a group of heads, the
//! panel softmax and swish, with a polynomial `exp` (the AVX2 versions' algorithms, `x86.rs`,
//! on 4-lane registers). NEON is part of every aarch64 target this module is built for.

use std::arch::aarch64::*;

use half::f16;

use super::{DecodeHeads, PanelColumn, PANEL_ROWS};

/// Loading 4 cache values as f32.
pub(super) trait Load4: super::CacheValue {
    /// 4 values from `v[at..at + 4]` (panics if out of bounds).
    fn load4(v: &[Self], at: usize) -> float32x4_t;
}

impl Load4 for f32 {
    #[inline(always)]
    fn load4(v: &[f32], at: usize) -> float32x4_t {
        let v = &v[at..at + 4];
        // SAFETY: 4 floats in bounds; `ld1` needs no alignment; NEON is in every build of
        // this module.
        unsafe { vld1q_f32(v.as_ptr()) }
    }
}

impl Load4 for f16 {
    #[inline(always)]
    fn load4(v: &[f16], at: usize) -> float32x4_t {
        let v = &v[at..at + 4];
        // SAFETY: 4 halves in bounds; `ld1` needs no alignment. The widening is `fcvtl`
        // (ARMv8.0 NEON) on the low half of the register.
        unsafe {
            let bits = vcombine_u16(vld1_u16(v.as_ptr().cast()), vdup_n_u16(0));
            crate::quant::widen_f16x8(bits)[0]
        }
    }
}

pub(super) fn decode_heads<T: Load4>(
    call: &DecodeHeads<'_, T>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    super::check_decode_heads(call, scores, out);
    if !call.d.is_multiple_of(4) || call.n == 0 {
        return super::decode_heads_portable(call, scores, out);
    }
    // SAFETY: NEON only, which this whole build has.
    unsafe { decode_heads_neon(call, scores, out) }
}

/// The group's heads 4 at a time (`M` of them), as `x86::decode_heads_avx2` does: per key,
/// each 4-value chunk is loaded (and widened) once and multiplied into every head's
/// accumulators; per value, `4·W` values at a time into `M·W` accumulators.
#[target_feature(enable = "neon")]
fn decode_heads_neon<T: Load4>(call: &DecodeHeads<'_, T>, scores: &mut [f32], out: &mut [f32]) {
    super::in_parts_of_four(call, scores, out, |m, part, scores, out| match m {
        1 => heads_neon::<T, 1, 8>(part, scores, out),
        2 => heads_neon::<T, 2, 4>(part, scores, out),
        3 => heads_neon::<T, 3, 2>(part, scores, out),
        _ => heads_neon::<T, 4, 2>(part, scores, out),
    });
}

/// `M` heads of [`decode_heads_neon`] (`qs`, `out` `M·d` long, `scores` `M·n`).
// Index loops: arrays of registers stepped in lockstep (see `x86::heads_avx2`).
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "neon")]
#[inline]
fn heads_neon<T: Load4, const M: usize, const W: usize>(
    call: &DecodeHeads<'_, T>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let DecodeHeads {
        qs,
        d,
        keys,
        values,
        stride,
        n,
        scale,
    } = *call;
    assert!(qs.len() == M * d && out.len() == M * d && scores.len() == M * n);
    assert!(d.is_multiple_of(4) && n > 0);
    let load_q = |at: usize| {
        let q = &qs[at..at + 4];
        // SAFETY: 4 floats in bounds; `ld1` needs no alignment.
        unsafe { vld1q_f32(q.as_ptr()) }
    };
    for j in 0..n {
        // Two accumulators per head (even and odd chunks), as two FMA chains.
        let (mut even, mut odd) = ([vdupq_n_f32(0.0); M], [vdupq_n_f32(0.0); M]);
        let k = &keys[j * stride..][..d];
        let mut i = 0;
        while i + 8 <= d {
            let (k0, k1) = (T::load4(k, i), T::load4(k, i + 4));
            for h in 0..M {
                even[h] = vfmaq_f32(even[h], load_q(h * d + i), k0);
                odd[h] = vfmaq_f32(odd[h], load_q(h * d + i + 4), k1);
            }
            i += 8;
        }
        if i < d {
            let k0 = T::load4(k, i);
            for h in 0..M {
                even[h] = vfmaq_f32(even[h], load_q(h * d + i), k0);
            }
        }
        for h in 0..M {
            scores[h * n + j] = vaddvq_f32(vaddq_f32(even[h], odd[h])) * scale;
        }
    }
    for scores in scores.chunks_exact_mut(n) {
        softmax_neon(scores);
    }
    let mut d0 = 0;
    while d0 + 4 * W <= d {
        let mut acc = [[vdupq_n_f32(0.0); W]; M];
        for j in 0..n {
            let v = &values[j * stride + d0..][..4 * W];
            let vs: [float32x4_t; W] = std::array::from_fn(|b| T::load4(v, 4 * b));
            for h in 0..M {
                let p = scores[h * n + j];
                for b in 0..W {
                    acc[h][b] = vfmaq_n_f32(acc[h][b], vs[b], p);
                }
            }
        }
        for h in 0..M {
            let o = &mut out[h * d + d0..][..4 * W];
            for b in 0..W {
                // SAFETY: `4·b + 4 <= o.len()`; `st1` needs no alignment.
                unsafe { vst1q_f32(o[4 * b..].as_mut_ptr(), acc[h][b]) };
            }
        }
        d0 += 4 * W;
    }
    while d0 < d {
        let mut acc = [vdupq_n_f32(0.0); M];
        for j in 0..n {
            let v = T::load4(&values[j * stride + d0..][..4], 0);
            for h in 0..M {
                acc[h] = vfmaq_n_f32(acc[h], v, scores[h * n + j]);
            }
        }
        for h in 0..M {
            let o = &mut out[h * d + d0..][..4];
            // SAFETY: 4 floats in bounds.
            unsafe { vst1q_f32(o.as_mut_ptr(), acc[h]) };
        }
        d0 += 4;
    }
}

pub(super) fn panel_softmax(p: &mut [PanelColumn], scale: f32) -> [f32; PANEL_ROWS] {
    // SAFETY: NEON only, which this whole build has.
    unsafe { panel_softmax_neon(p, scale) }
}

pub(super) fn swish(x: &mut [f32], beta: f32) {
    // SAFETY: NEON only, which this whole build has.
    unsafe { swish_neon(x, beta) }
}

#[cfg(test)]
pub(super) fn softmax(p: &mut [f32], scale: f32) {
    p.iter_mut().for_each(|s| *s *= scale);
    // SAFETY: NEON only, which this whole build has.
    unsafe { softmax_neon(p) }
}

/// `x · sigmoid(β·x)` 4 lanes at a time, as `x86::swish_avx2`: `sigmoid(z)` is `1 / (1 + t)`
/// for `z >= 0` and `t / (1 + t)` below, `t = e^-|z|`.
#[target_feature(enable = "neon")]
fn swish_neon(x: &mut [f32], beta: f32) {
    let (body, tail) = x.split_at_mut(x.len() / 4 * 4);
    let one = vdupq_n_f32(1.0);
    for c in body.chunks_exact_mut(4) {
        // SAFETY: `c` is 4 floats; `ld1`/`st1` need no alignment.
        let v = unsafe { vld1q_f32(c.as_ptr()) };
        let z = vmulq_n_f32(v, beta);
        let t = exp(vnegq_f32(vabsq_f32(z)));
        let positive = vcgeq_f32(z, vdupq_n_f32(0.0));
        let sigmoid = vdivq_f32(vbslq_f32(positive, one, t), vaddq_f32(one, t));
        unsafe { vst1q_f32(c.as_mut_ptr(), vmulq_f32(v, sigmoid)) };
    }
    super::swish_portable(tail, beta);
}

/// The portable panel softmax's steps, a panel column (16 lanes) as 4 registers, with
/// [`exp`] in place of libm's.
#[target_feature(enable = "neon")]
fn panel_softmax_neon(p: &mut [PanelColumn], scale: f32) -> [f32; PANEL_ROWS] {
    const { assert!(PANEL_ROWS == 16) };
    let mut max = [vdupq_n_f32(f32::NEG_INFINITY); 4];
    for column in p.iter() {
        for (q, max) in max.iter_mut().enumerate() {
            // SAFETY: a panel column is 16 floats; `ld1` needs no alignment.
            *max = vmaxq_f32(*max, unsafe { vld1q_f32(column.0.as_ptr().add(4 * q)) });
        }
    }
    let mut sum = [vdupq_n_f32(0.0); 4];
    for column in p.iter_mut() {
        for (q, (sum, &max)) in sum.iter_mut().zip(&max).enumerate() {
            // SAFETY: as above.
            unsafe {
                let at = column.0.as_mut_ptr().add(4 * q);
                let e = exp(vmulq_n_f32(vsubq_f32(vld1q_f32(at), max), scale));
                vst1q_f32(at, e);
                *sum = vaddq_f32(*sum, e);
            }
        }
    }
    let mut inv = [0f32; PANEL_ROWS];
    for (q, &sum) in sum.iter().enumerate() {
        // SAFETY: `inv` holds 16 floats.
        unsafe {
            vst1q_f32(
                inv.as_mut_ptr().add(4 * q),
                vdivq_f32(vdupq_n_f32(1.0), sum),
            )
        };
    }
    inv
}

/// The portable softmax's steps on already scaled scores, 4 lanes at a time, with [`exp`].
#[target_feature(enable = "neon")]
fn softmax_neon(p: &mut [f32]) {
    let (body, tail) = p.split_at_mut(p.len() / 4 * 4);
    let mut vmax = vdupq_n_f32(f32::NEG_INFINITY);
    for c in body.chunks_exact(4) {
        // SAFETY: `c` is 4 floats; `ld1` needs no alignment.
        vmax = vmaxq_f32(vmax, unsafe { vld1q_f32(c.as_ptr()) });
    }
    let max = tail.iter().fold(vmaxvq_f32(vmax), |m, &v| m.max(v));
    let vmax = vdupq_n_f32(max);
    let mut vsum = vdupq_n_f32(0.0);
    for c in body.chunks_exact_mut(4) {
        // SAFETY: as above, and `st1`.
        unsafe {
            let v = exp(vsubq_f32(vld1q_f32(c.as_ptr()), vmax));
            vst1q_f32(c.as_mut_ptr(), v);
            vsum = vaddq_f32(vsum, v);
        }
    }
    let mut sum = vaddvq_f32(vsum);
    for v in tail.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for c in body.chunks_exact_mut(4) {
        // SAFETY: as above.
        unsafe { vst1q_f32(c.as_mut_ptr(), vmulq_n_f32(vld1q_f32(c.as_ptr()), inv)) };
    }
    tail.iter_mut().for_each(|v| *v *= inv);
}

/// `e^x` for `x <= 0`, `x86::exp`'s algorithm (Cephes' `expf`: `x = n·ln 2 + r`, a degree-6
/// polynomial for `e^r`, `2^n` through the exponent bits): within 2 ulp of libm's above
/// 2^-125, 0 below -87.
#[target_feature(enable = "neon")]
#[inline]
fn exp(x: float32x4_t) -> float32x4_t {
    let lowest = vdupq_n_f32(-87.0);
    let keep = vcgeq_f32(x, lowest);
    let x = vmaxq_f32(x, lowest);
    let n = vrndmq_f32(vfmaq_n_f32(vdupq_n_f32(0.5), x, std::f32::consts::LOG2_E));
    // r = x - n·ln 2, with ln 2 split in two so that n·C1 is exact.
    let r = vfmsq_n_f32(x, n, 0.693_359_4);
    let r = vfmsq_n_f32(r, n, -2.121_944_4e-4);
    let mut y = vdupq_n_f32(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        y = vfmaq_f32(vdupq_n_f32(c), y, r);
    }
    let y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), y, vmulq_f32(r, r));
    let pow2n = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
    let e = vmulq_f32(y, vreinterpretq_f32_s32(pow2n));
    vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(e), keep))
}
