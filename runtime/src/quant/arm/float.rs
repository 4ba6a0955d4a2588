//! F16 weights against F16 activations, and the F16 activation quantizer.
//!
//! ARMv8.0 NEON converts between f16 and f32 (`fcvtl`, `fcvtn`), but stable Rust offers those
//! intrinsics only on its unstable `f16` vector types, so they are issued with inline
//! assembly. Arithmetic on f16 itself (ARMv8.2 `fp16`) is not used: the products are formed
//! and added in f32, as the reference does.
//!
//! The scalar reference (ggml's) adds the f32 products in f64; here they are added in f32, in
//! 8×4 lanes (the same 32 lanes as the AVX2 kernel, so at most 128 sequential additions per
//! lane for 4096 elements), which keeps the error within a few units in the last place of the
//! sum of magnitudes.

use std::arch::aarch64::*;
use std::arch::asm;

use half::f16;

use super::f16_to_f32;
use crate::quant::{assert_dot_len, assert_row_len};

/// 8 halves widened to f32, as (elements 0..4, elements 4..8).
#[target_feature(enable = "neon")]
#[inline]
pub(crate) fn load_f16x8(h: &[f16]) -> [float32x4_t; 2] {
    assert_eq!(h.len(), 8);
    // SAFETY: `h` is 8 halves, 16 bytes; `ld1` has no alignment requirement.
    widen_f16x8(unsafe { vld1q_u16(h.as_ptr().cast()) })
}

/// The 8 halves whose bits are `bits`, widened to f32, as (lanes 0..4, lanes 4..8).
#[target_feature(enable = "neon")]
#[inline]
pub(crate) fn widen_f16x8(bits: uint16x8_t) -> [float32x4_t; 2] {
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: `fcvtl`/`fcvtl2` are ARMv8.0 NEON and touch only these registers. `lo` and
    // `hi` are plain (not late) outputs, so neither shares a register with `bits`, which the
    // second instruction still reads.
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {bits:v}.4h",
            "fcvtl2 {hi:v}.4s, {bits:v}.8h",
            bits = in(vreg) bits,
            lo = out(vreg) lo,
            hi = out(vreg) hi,
            options(pure, nomem, nostack),
        );
    }
    [lo, hi]
}

#[target_feature(enable = "neon")]
pub(super) fn dot_f16(w: &[f16], a: &[f16]) -> f32 {
    assert_dot_len(w, a);
    // Eight independent FMA chains: the 32 lanes of the error bound above, and enough to
    // cover the FMA latency of two pipes (4 cycles each on Cortex-A76, per Arm's guide).
    let mut acc = [vdupq_n_f32(0.0); 8];
    let (w32, a32) = (w.chunks_exact(32), a.chunks_exact(32));
    let (w_rest, a_rest) = (w32.remainder(), a32.remainder());
    for (w, a) in w32.zip(a32) {
        for (k, acc) in acc.chunks_exact_mut(2).enumerate() {
            let [w0, w1] = load_f16x8(&w[8 * k..8 * k + 8]);
            let [a0, a1] = load_f16x8(&a[8 * k..8 * k + 8]);
            acc[0] = vfmaq_f32(acc[0], w0, a0);
            acc[1] = vfmaq_f32(acc[1], w1, a1);
        }
    }
    let (w8, a8) = (w_rest.chunks_exact(8), a_rest.chunks_exact(8));
    let (w_tail, a_tail) = (w8.remainder(), a8.remainder());
    for (w, a) in w8.zip(a8) {
        let [w0, w1] = load_f16x8(w);
        let [a0, a1] = load_f16x8(a);
        acc[0] = vfmaq_f32(acc[0], w0, a0);
        acc[1] = vfmaq_f32(acc[1], w1, a1);
    }
    let tail = w_tail
        .iter()
        .zip(a_tail)
        .fold(0f32, |sum, (&w, &a)| sum + f16_to_f32(w) * f16_to_f32(a));
    let quarter = |i: usize| vaddq_f32(acc[i], acc[i + 4]);
    let total = vaddq_f32(
        vaddq_f32(quarter(0), quarter(1)),
        vaddq_f32(quarter(2), quarter(3)),
    );
    vaddvq_f32(total) + tail
}

/// 4 floats narrowed to f16 (`fcvtn`), rounding as FPCR says: to nearest even, which Linux
/// sets for every process and nothing here changes. That is the conversion
/// `half::f16::from_f32` (and ggml's `GGML_FP32_TO_FP16`) computes, NaNs included: both keep
/// the sign and the top payload bits and set the quiet bit.
#[target_feature(enable = "neon")]
#[inline]
fn narrow_f32x4(x: float32x4_t) -> uint16x4_t {
    let out: uint16x4_t;
    // SAFETY: `fcvtn` is ARMv8.0 NEON and touches only these two registers.
    unsafe {
        asm!(
            "fcvtn {out:v}.4h, {x:v}.4s",
            x = in(vreg) x,
            out = lateout(vreg) out,
            options(pure, nomem, nostack),
        );
    }
    out
}

#[target_feature(enable = "neon")]
pub(super) fn quantize_row_f16(src: &[f32], dst: &mut [f16]) {
    assert_row_len::<f16>(dst.len(), src.len());
    let (s4, mut d4) = (src.chunks_exact(4), dst.chunks_exact_mut(4));
    let s_tail = s4.remainder();
    for (s, d) in s4.zip(&mut d4) {
        // SAFETY: `s` is 4 floats; `ld1` has no alignment requirement.
        let x = unsafe { vld1q_f32(s.as_ptr()) };
        // SAFETY: `d` is 4 halves, 8 bytes; `st1` has no alignment requirement.
        unsafe { vst1_u16(d.as_mut_ptr().cast(), narrow_f32x4(x)) };
    }
    for (d, &s) in d4.into_remainder().iter_mut().zip(s_tail) {
        *d = f16::from_bits(vget_lane_u16::<0>(narrow_f32x4(vdupq_n_f32(s))));
    }
}
