//! Weights interleaved [`DOT_ROWS`] = 8 rows to a block (`BlockQ4_0x8`, `BlockQ8_0x8`,
//! `BlockQ4Kx8`, `BlockQ6Kx8`: the layouts the x86 kernels use, built by the same code)
//! against their activations, with the by-element form of `sdot`: a group's 8 rows against
//! one activation row (decode) and against [`TILE_ROWS`] of them at once (prefill, the vision
//! tower).
//!
//! The layouts put each 4-byte run of the 8 rows side by side, so one 16-byte register holds
//! the same 4 elements of 4 rows. `sdot acc.4s, w.16b, a.4b[t]` multiplies each of those runs
//! by activation run `t` (4 bytes of one register, chosen by the instruction) and adds the sum
//! into the row's i32 lane: 16 multiply-adds for 4 rows in one instruction, with no
//! horizontal sum at the end, where the one-row kernels of `legacy.rs` and `k_quants.rs` spend
//! a reduction per block. In a batch each weight register is unpacked once and serves the 4
//! activation rows.
//!
//! Every kernel computes the same exact integer sums as the scalar reference and differs only
//! in the order of the float operations (`tests/row_kernels.rs` holds them to that). They use
//! `sdot`, so they exist only on the `neon-dotprod` path: their callers in `mod.rs` are
//! reachable only through a [`Neon`](super::Neon) made by `detect_dotprod`.

use std::arch::aarch64::*;
use std::arch::asm;

use bytemuck::cast_ref;

use super::{f16_to_f32, load_i8x16, load_u8x16};
use crate::quant::dispatch::{ActBlockSum, DOT_ROWS, TILE_ROWS};
use crate::quant::k_quants::QK_K;
use crate::quant::{BlockQ4Kx8, BlockQ4_0x8, BlockQ6Kx8, BlockQ8K, BlockQ8_0, BlockQ8_0x8};

/// `sdot` by element: lane `i` of `acc` gets `Σ_k w[4i + k] · a[4L + k]`, exactly.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn sdot_lane<const L: usize>(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    const { assert!(L < 4) };
    let mut acc = acc;
    // SAFETY: the instruction reads and writes these three registers and nothing else; the
    // CPU has it, as this function's `target_feature` requires of its callers.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{lane}]",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            lane = const L,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// `sdot` by element with the lane given at run time (a loop index the optimizer unrolls).
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn sdot_at(acc: int32x4_t, w: int8x16_t, a: int8x16_t, lane: usize) -> int32x4_t {
    match lane {
        0 => sdot_lane::<0>(acc, w, a),
        1 => sdot_lane::<1>(acc, w, a),
        2 => sdot_lane::<2>(acc, w, a),
        _ => sdot_lane::<3>(acc, w, a),
    }
}

/// 8 halves widened to f32, as (rows 0..4, rows 4..8).
#[target_feature(enable = "neon")]
#[inline]
fn scales_f16x8(h: &[half::f16; 8]) -> [float32x4_t; 2] {
    super::float::load_f16x8(h)
}

/// 16 bytes at `bytes[at..]` as one register.
#[target_feature(enable = "neon")]
#[inline]
fn load16(bytes: &[u8], at: usize) -> uint8x16_t {
    load_u8x16(bytes[at..at + 16].try_into().expect("16 bytes"))
}

/// The 32 quants of a Q8 block (or 32 of a Q8_K one) as two registers.
#[target_feature(enable = "neon")]
#[inline]
fn act32(qs: &[i8]) -> [int8x16_t; 2] {
    let qs: &[i8; 32] = qs.try_into().expect("32 quants");
    cast_ref::<[i8; 32], [[i8; 16]; 2]>(qs).map(|half| load_i8x16(&half))
}

/// Two lane accumulators (rows 0..4, 4..8) as the 8 rows' sums.
#[target_feature(enable = "neon")]
#[inline]
fn lanes8(acc: [float32x4_t; 2]) -> [f32; DOT_ROWS] {
    let mut out = [0f32; DOT_ROWS];
    // SAFETY: `out` is 8 floats, two unaligned 4-float stores.
    unsafe {
        vst1q_f32(out.as_mut_ptr(), acc[0]);
        vst1q_f32(out.as_mut_ptr().add(4), acc[1]);
    }
    out
}

/// `acc + cvt(sums) · (dw · da)`: one block's exact sums of 4 rows, scaled as ggml scales
/// them (`sumi · d_w · d_a`, up to the order of the products).
#[target_feature(enable = "neon")]
#[inline]
fn scale_add(acc: float32x4_t, sums: int32x4_t, dw: float32x4_t, da: f32) -> float32x4_t {
    vfmaq_f32(acc, vcvtq_f32_s32(sums), vmulq_n_f32(dw, da))
}

/// The lengths a kernel of interleaved blocks relies on.
fn check<A>(blocks: usize, a: &[&[A]], sums: &[&[ActBlockSum]]) {
    for a in a {
        assert_eq!(a.len(), blocks, "dot of rows of different lengths");
    }
    for sums in sums {
        assert_eq!(sums.len(), blocks, "one block sum per activation block");
    }
}

/// Q4_0 nibbles of one 16-byte register of interleaved runs, as (low: elements `4t..`,
/// high: elements `16 + 4t..`), bytes 0..=15 (the `-8` is taken off the sums).
#[target_feature(enable = "neon")]
#[inline]
fn nibbles(p: uint8x16_t) -> (int8x16_t, int8x16_t) {
    (
        vreinterpretq_s8_u8(vandq_u8(p, vdupq_n_u8(0x0f))),
        vreinterpretq_s8_u8(vshrq_n_u8::<4>(p)),
    )
}

/// Σ of a Q8_0 block's 32 quants.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn quant_sum(a: [int8x16_t; 2]) -> i32 {
    let ones = vdupq_n_s8(1);
    let both = super::sdot(super::sdot(vdupq_n_s32(0), a[0], ones), a[1], ones);
    vaddvq_s32(both)
}

/// Q4_0 · Q8_0 for the 8 rows of interleaved blocks (decode).
#[target_feature(enable = "neon,dotprod")]
pub(super) fn dot_q4_0x8(w: &[BlockQ4_0x8], a: &[BlockQ8_0]) -> [f32; DOT_ROWS] {
    check(w.len(), &[a], &[]);
    let mut acc = [vdupq_n_f32(0.0); 2];
    for (x, y) in w.iter().zip(a) {
        let act = act32(&y.qs);
        // `nibble - 8` summed: start from `-8 · Σa`.
        let start = vdupq_n_s32(-8 * quant_sum(act));
        let mut sums = [start; 2];
        for t in 0..4 {
            for (h, sums) in sums.iter_mut().enumerate() {
                let (lo, hi) = nibbles(load16(&x.qs, 32 * t + 16 * h));
                *sums = sdot_at(sdot_at(*sums, lo, act[0], t), hi, act[1], t);
            }
        }
        let dw = scales_f16x8(&x.d);
        let da = f16_to_f32(y.d);
        for h in 0..2 {
            acc[h] = scale_add(acc[h], sums[h], dw[h], da);
        }
    }
    lanes8(acc)
}

/// Q4_0 · Q8_0 for the 8 rows of interleaved blocks against [`TILE_ROWS`] activation rows:
/// `out[n][r]` is row `r`'s dot with activation row `n`. Each 16 bytes of nibbles are
/// unpacked once for the 4 activation rows; `-8·Σa` and the activation scales come from
/// `sums`.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn gemm_q4_0x8(
    w: &[BlockQ4_0x8],
    a: [&[BlockQ8_0]; TILE_ROWS],
    sums: [&[ActBlockSum]; TILE_ROWS],
) -> [[f32; DOT_ROWS]; TILE_ROWS] {
    check(w.len(), &a, &sums);
    let mut acc = [[vdupq_n_f32(0.0); 2]; TILE_ROWS];
    for (i, x) in w.iter().enumerate() {
        let act: [[int8x16_t; 2]; TILE_ROWS] = std::array::from_fn(|n| act32(&a[n][i].qs));
        let dw = scales_f16x8(&x.d);
        // Rows 0..4, then 4..8: 4 sums live at a time, beside the 8 activation registers.
        for h in 0..2 {
            let mut s: [int32x4_t; TILE_ROWS] =
                std::array::from_fn(|n| vdupq_n_s32(-8 * sums[n][i].sum));
            for t in 0..4 {
                let (lo, hi) = nibbles(load16(&x.qs, 32 * t + 16 * h));
                for (s, act) in s.iter_mut().zip(&act) {
                    *s = sdot_at(sdot_at(*s, lo, act[0], t), hi, act[1], t);
                }
            }
            for n in 0..TILE_ROWS {
                acc[n][h] = scale_add(acc[n][h], s[n], dw[h], sums[n][i].d);
            }
        }
    }
    acc.map(|acc| lanes8(acc))
}

/// Q8_0 · Q8_0 for the 8 rows of interleaved blocks (decode): runs 0..4 are elements 0..16
/// (the first activation register), runs 4..8 the rest.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn dot_q8_0x8(w: &[BlockQ8_0x8], a: &[BlockQ8_0]) -> [f32; DOT_ROWS] {
    check(w.len(), &[a], &[]);
    let mut acc = [vdupq_n_f32(0.0); 2];
    for (x, y) in w.iter().zip(a) {
        let act = act32(&y.qs);
        let qs: &[u8; 256] = bytemuck::cast_ref(&x.qs);
        let mut sums = [vdupq_n_s32(0); 2];
        for t in 0..8 {
            for (h, sums) in sums.iter_mut().enumerate() {
                let q = vreinterpretq_s8_u8(load16(qs, 32 * t + 16 * h));
                *sums = sdot_at(*sums, q, act[t / 4], t % 4);
            }
        }
        let dw = scales_f16x8(&x.d);
        let da = f16_to_f32(y.d);
        for h in 0..2 {
            acc[h] = scale_add(acc[h], sums[h], dw[h], da);
        }
    }
    lanes8(acc)
}

/// Q8_0 · Q8_0 for the 8 rows of interleaved blocks against [`TILE_ROWS`] activation rows.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn gemm_q8_0x8(
    w: &[BlockQ8_0x8],
    a: [&[BlockQ8_0]; TILE_ROWS],
    sums: [&[ActBlockSum]; TILE_ROWS],
) -> [[f32; DOT_ROWS]; TILE_ROWS] {
    check(w.len(), &a, &sums);
    let mut acc = [[vdupq_n_f32(0.0); 2]; TILE_ROWS];
    for (i, x) in w.iter().enumerate() {
        let act: [[int8x16_t; 2]; TILE_ROWS] = std::array::from_fn(|n| act32(&a[n][i].qs));
        let qs: &[u8; 256] = bytemuck::cast_ref(&x.qs);
        let dw = scales_f16x8(&x.d);
        for h in 0..2 {
            let mut s = [vdupq_n_s32(0); TILE_ROWS];
            for t in 0..8 {
                let q = vreinterpretq_s8_u8(load16(qs, 32 * t + 16 * h));
                for (s, act) in s.iter_mut().zip(&act) {
                    *s = sdot_at(*s, q, act[t / 4], t % 4);
                }
            }
            for n in 0..TILE_ROWS {
                acc[n][h] = scale_add(acc[n][h], s[n], dw[h], sums[n][i].d);
            }
        }
    }
    acc.map(|acc| lanes8(acc))
}

/// `acc + m · v[lane]` on 4 i16 lanes widened to i32 (`smlal` by element; `lane` in 0..8 is a
/// loop index the optimizer unrolls).
#[target_feature(enable = "neon")]
#[inline]
fn mlal_at(acc: int32x4_t, m: int16x4_t, v: int16x8_t, lane: usize) -> int32x4_t {
    match lane {
        0 => vmlal_laneq_s16::<0>(acc, m, v),
        1 => vmlal_laneq_s16::<1>(acc, m, v),
        2 => vmlal_laneq_s16::<2>(acc, m, v),
        3 => vmlal_laneq_s16::<3>(acc, m, v),
        4 => vmlal_laneq_s16::<4>(acc, m, v),
        5 => vmlal_laneq_s16::<5>(acc, m, v),
        6 => vmlal_laneq_s16::<6>(acc, m, v),
        _ => vmlal_laneq_s16::<7>(acc, m, v),
    }
}

/// Lanes `4h..4h + 4` of 8 unsigned bytes, widened to i32.
#[target_feature(enable = "neon")]
#[inline]
fn widen_u8_half(v: uint8x8_t, h: usize) -> int32x4_t {
    let wide = vmovl_u8(v);
    let half = if h == 0 {
        vget_low_u16(wide)
    } else {
        vget_high_u16(wide)
    };
    vreinterpretq_s32_u32(vmovl_u16(half))
}

/// The 8 rows' 6-bit sub-block scales and mins of an interleaved Q4_K super-block, one
/// register of 8 bytes (one per row) per sub-block: `scale_min_k4` on 8 rows at once.
#[target_feature(enable = "neon")]
#[inline]
fn q4_k_scales_mins(packed: &[[u8; 8]; 12]) -> ([uint8x8_t; 8], [uint8x8_t; 8]) {
    // SAFETY: each `packed[k]` is 8 bytes; `ld1` has no alignment requirement.
    let b: [uint8x8_t; 12] = std::array::from_fn(|k| unsafe { vld1_u8(packed[k].as_ptr()) });
    let low6 = vdup_n_u8(63);
    let low4 = vdup_n_u8(0x0f);
    let scales = std::array::from_fn(|j| {
        if j < 4 {
            vand_u8(b[j], low6)
        } else {
            let top = vshl_n_u8::<4>(vshr_n_u8::<6>(b[j - 4]));
            vorr_u8(vand_u8(b[j + 4], low4), top)
        }
    });
    let mins = std::array::from_fn(|j| {
        if j < 4 {
            vand_u8(b[j + 4], low6)
        } else {
            let top = vshl_n_u8::<4>(vshr_n_u8::<6>(b[j]));
            vorr_u8(vshr_n_u8::<4>(b[j + 4]), top)
        }
    });
    (scales, mins)
}

/// Q4_K's min terms of one activation row, `Σ_j mins[j][r] · (bsums[2j] + bsums[2j + 1])`
/// for the 8 rows, as (rows 0..4, rows 4..8); exact (at most 8 · 63 · 4064).
#[target_feature(enable = "neon")]
#[inline]
fn q4_k_min_terms(mins: &[int16x8_t; 8], bsums: &[i16; 16]) -> [int32x4_t; 2] {
    // SAFETY: `bsums` is 16 halves; two unaligned 8-half loads.
    let (b0, b1) = unsafe { (vld1q_s16(bsums.as_ptr()), vld1q_s16(bsums.as_ptr().add(8))) };
    // Lane j: bsums[2j] + bsums[2j + 1], the sum of sub-block j's 32 quants.
    let pairs = vpaddq_s16(b0, b1);
    let mut m = [vdupq_n_s32(0); 2];
    for (j, mins) in mins.iter().enumerate() {
        m[0] = mlal_at(m[0], vget_low_s16(*mins), pairs, j);
        m[1] = mlal_at(m[1], vget_high_s16(*mins), pairs, j);
    }
    m
}

/// Q4_K · Q8_K for the 8 rows of interleaved super-blocks (decode). Per 64-element group `g`,
/// the low nibbles are sub-block `2g` and the high ones sub-block `2g + 1`; each sub-block's
/// exact sums are multiplied by its scale (`mla`) and added up in i32 over the super-block,
/// whose sum alone is converted and scaled.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn dot_q4_kx8(w: &[BlockQ4Kx8], a: &[BlockQ8K]) -> [f32; DOT_ROWS] {
    check(w.len(), &[a], &[]);
    let mut acc = [vdupq_n_f32(0.0); 2];
    for (x, y) in w.iter().zip(a) {
        let (scales, mins) = q4_k_scales_mins(&x.scales);
        let mins = mins.map(|m| vreinterpretq_s16_u16(vmovl_u8(m)));
        let m = q4_k_min_terms(&mins, &y.bsums);
        let mut total = [vdupq_n_s32(0); 2];
        for (g, qs) in x.qs.iter().enumerate() {
            let mut s_lo = [vdupq_n_s32(0); 2];
            let mut s_hi = [vdupq_n_s32(0); 2];
            for q in 0..2 {
                let a_lo = load_i8x16(y.qs[64 * g + 16 * q..][..16].try_into().unwrap());
                let a_hi = load_i8x16(y.qs[64 * g + 32 + 16 * q..][..16].try_into().unwrap());
                for tt in 0..4 {
                    let t = 4 * q + tt;
                    for h in 0..2 {
                        let (lo, hi) = nibbles(load16(qs, 32 * t + 16 * h));
                        s_lo[h] = sdot_at(s_lo[h], lo, a_lo, tt);
                        s_hi[h] = sdot_at(s_hi[h], hi, a_hi, tt);
                    }
                }
            }
            for h in 0..2 {
                let sc_lo = widen_u8_half(scales[2 * g], h);
                let sc_hi = widen_u8_half(scales[2 * g + 1], h);
                total[h] = vmlaq_s32(vmlaq_s32(total[h], s_lo[h], sc_lo), s_hi[h], sc_hi);
            }
        }
        let (d, dmin) = (scales_f16x8(&x.d), scales_f16x8(&x.dmin));
        for h in 0..2 {
            acc[h] = vfmaq_f32(acc[h], vcvtq_f32_s32(total[h]), vmulq_n_f32(d[h], y.d));
            acc[h] = vfmsq_f32(acc[h], vcvtq_f32_s32(m[h]), vmulq_n_f32(dmin[h], y.d));
        }
    }
    lanes8(acc)
}

/// Q4_K · Q8_K for the 8 rows of interleaved super-blocks against [`TILE_ROWS`] activation
/// rows. Rows 0..4 and 4..8 in turn, and each group's runs in two halves (the activation
/// registers of runs 0..4, then 4..8), so that the 4 rows' activations, sums and totals stay
/// in registers.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn gemm_q4_kx8(
    w: &[BlockQ4Kx8],
    a: [&[BlockQ8K]; TILE_ROWS],
    sums: [&[ActBlockSum]; TILE_ROWS],
) -> [[f32; DOT_ROWS]; TILE_ROWS] {
    check(w.len(), &a, &sums);
    let mut acc = [[vdupq_n_f32(0.0); 2]; TILE_ROWS];
    for (i, x) in w.iter().enumerate() {
        let ys: [&BlockQ8K; TILE_ROWS] = std::array::from_fn(|n| &a[n][i]);
        let (scales, mins) = q4_k_scales_mins(&x.scales);
        let (d, dmin) = (scales_f16x8(&x.d), scales_f16x8(&x.dmin));
        let mins = mins.map(|m| vreinterpretq_s16_u16(vmovl_u8(m)));
        for (acc, y) in acc.iter_mut().zip(ys) {
            let m = q4_k_min_terms(&mins, &y.bsums);
            for h in 0..2 {
                acc[h] = vfmsq_f32(acc[h], vcvtq_f32_s32(m[h]), vmulq_n_f32(dmin[h], y.d));
            }
        }
        for h in 0..2 {
            let mut total = [vdupq_n_s32(0); TILE_ROWS];
            for (g, qs) in x.qs.iter().enumerate() {
                let mut s_lo = [vdupq_n_s32(0); TILE_ROWS];
                let mut s_hi = [vdupq_n_s32(0); TILE_ROWS];
                for q in 0..2 {
                    let act = |n: usize, at: usize| {
                        load_i8x16(ys[n].qs[at + 16 * q..][..16].try_into().unwrap())
                    };
                    let a_lo: [int8x16_t; TILE_ROWS] = std::array::from_fn(|n| act(n, 64 * g));
                    let a_hi: [int8x16_t; TILE_ROWS] = std::array::from_fn(|n| act(n, 64 * g + 32));
                    for tt in 0..4 {
                        let (lo, hi) = nibbles(load16(qs, 32 * (4 * q + tt) + 16 * h));
                        for n in 0..TILE_ROWS {
                            s_lo[n] = sdot_at(s_lo[n], lo, a_lo[n], tt);
                            s_hi[n] = sdot_at(s_hi[n], hi, a_hi[n], tt);
                        }
                    }
                }
                let sc_lo = widen_u8_half(scales[2 * g], h);
                let sc_hi = widen_u8_half(scales[2 * g + 1], h);
                for n in 0..TILE_ROWS {
                    total[n] = vmlaq_s32(vmlaq_s32(total[n], s_lo[n], sc_lo), s_hi[n], sc_hi);
                }
            }
            for n in 0..TILE_ROWS {
                let scale = vmulq_n_f32(d[h], ys[n].d);
                acc[n][h] = vfmaq_f32(acc[n][h], vcvtq_f32_s32(total[n]), scale);
            }
        }
    }
    acc.map(|acc| lanes8(acc))
}

/// Chunk `c`'s sub-block scales of rows `4h..4h + 4`, widened to i32, as (sub-block `2c`,
/// sub-block `2c + 1`): `scales[c]` holds row `r`'s pair at bytes `2r`, `2r + 1`.
#[target_feature(enable = "neon")]
#[inline]
fn q6_k_scales(scales: &[i8; 16], h: usize) -> (int32x4_t, int32x4_t) {
    let v = load_i8x16(scales);
    let (even, odd) = (vuzp1q_s8(v, v), vuzp2q_s8(v, v));
    let rows = |v: int8x16_t| {
        let wide = vmovl_s8(vget_low_s8(v));
        vmovl_s16(if h == 0 {
            vget_low_s16(wide)
        } else {
            vget_high_s16(wide)
        })
    };
    (rows(even), rows(odd))
}

/// The 6-bit quants minus 32 of one register of interleaved runs `t` of a Q6_K chunk, as
/// (elements `4t..`: sub-block `2c`, elements `16 + 4t..`: sub-block `2c + 1`), from the low
/// bits `ql` and the register of high bits `qh` that runs `2k` and `2k + 1` share (bits 0–3
/// for the even run, 4–7 for the odd one).
#[target_feature(enable = "neon")]
#[inline]
fn q6_k_values(ql: uint8x16_t, qh: uint8x16_t, odd: bool) -> (int8x16_t, int8x16_t) {
    let two = vdupq_n_u8(0x30);
    // Bits 4–5 of each value: the two high bits, moved from where this run keeps them.
    let (top_lo, top_hi) = if odd {
        (vandq_u8(qh, two), vandq_u8(vshrq_n_u8::<2>(qh), two))
    } else {
        (
            vandq_u8(vshlq_n_u8::<4>(qh), two),
            vandq_u8(vshlq_n_u8::<2>(qh), two),
        )
    };
    let lo = vorrq_u8(vandq_u8(ql, vdupq_n_u8(0x0f)), top_lo);
    let hi = vorrq_u8(vshrq_n_u8::<4>(ql), top_hi);
    let offset = vdupq_n_s8(32);
    (
        vsubq_s8(vreinterpretq_s8_u8(lo), offset),
        vsubq_s8(vreinterpretq_s8_u8(hi), offset),
    )
}

/// Q6_K · Q8_K for the 8 rows of interleaved super-blocks (decode): per 32-element chunk,
/// the low nibbles (and bits) are sub-block `2c`, the high ones `2c + 1`.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn dot_q6_kx8(w: &[BlockQ6Kx8], a: &[BlockQ8K]) -> [f32; DOT_ROWS] {
    check(w.len(), &[a], &[]);
    let mut acc = [vdupq_n_f32(0.0); 2];
    for (x, y) in w.iter().zip(a) {
        let mut total = [vdupq_n_s32(0); 2];
        for c in 0..QK_K / 32 {
            let a_lo = load_i8x16(y.qs[32 * c..][..16].try_into().unwrap());
            let a_hi = load_i8x16(y.qs[32 * c + 16..][..16].try_into().unwrap());
            for (h, total) in total.iter_mut().enumerate() {
                let mut s_lo = vdupq_n_s32(0);
                let mut s_hi = vdupq_n_s32(0);
                for t in 0..4 {
                    let qh = load16(&x.qh[c], 32 * (t / 2) + 16 * h);
                    let (lo, hi) = q6_k_values(load16(&x.ql[c], 32 * t + 16 * h), qh, t % 2 == 1);
                    s_lo = sdot_at(s_lo, lo, a_lo, t);
                    s_hi = sdot_at(s_hi, hi, a_hi, t);
                }
                let (sc_lo, sc_hi) = q6_k_scales(&x.scales[c], h);
                *total = vmlaq_s32(vmlaq_s32(*total, s_lo, sc_lo), s_hi, sc_hi);
            }
        }
        let d = scales_f16x8(&x.d);
        for h in 0..2 {
            acc[h] = vfmaq_f32(acc[h], vcvtq_f32_s32(total[h]), vmulq_n_f32(d[h], y.d));
        }
    }
    lanes8(acc)
}

/// Q6_K · Q8_K for the 8 rows of interleaved super-blocks against [`TILE_ROWS`] activation
/// rows: each register of quants is unpacked once for the 4 rows.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn gemm_q6_kx8(
    w: &[BlockQ6Kx8],
    a: [&[BlockQ8K]; TILE_ROWS],
    sums: [&[ActBlockSum]; TILE_ROWS],
) -> [[f32; DOT_ROWS]; TILE_ROWS] {
    check(w.len(), &a, &sums);
    let mut acc = [[vdupq_n_f32(0.0); 2]; TILE_ROWS];
    for (i, x) in w.iter().enumerate() {
        let ys: [&BlockQ8K; TILE_ROWS] = std::array::from_fn(|n| &a[n][i]);
        let d = scales_f16x8(&x.d);
        for h in 0..2 {
            let mut total = [vdupq_n_s32(0); TILE_ROWS];
            for c in 0..QK_K / 32 {
                let act =
                    |n: usize, at: usize| load_i8x16(ys[n].qs[at..][..16].try_into().unwrap());
                let a_lo: [int8x16_t; TILE_ROWS] = std::array::from_fn(|n| act(n, 32 * c));
                let a_hi: [int8x16_t; TILE_ROWS] = std::array::from_fn(|n| act(n, 32 * c + 16));
                let mut s_lo = [vdupq_n_s32(0); TILE_ROWS];
                let mut s_hi = [vdupq_n_s32(0); TILE_ROWS];
                for t in 0..4 {
                    let qh = load16(&x.qh[c], 32 * (t / 2) + 16 * h);
                    let (lo, hi) = q6_k_values(load16(&x.ql[c], 32 * t + 16 * h), qh, t % 2 == 1);
                    for n in 0..TILE_ROWS {
                        s_lo[n] = sdot_at(s_lo[n], lo, a_lo[n], t);
                        s_hi[n] = sdot_at(s_hi[n], hi, a_hi[n], t);
                    }
                }
                let (sc_lo, sc_hi) = q6_k_scales(&x.scales[c], h);
                for n in 0..TILE_ROWS {
                    total[n] = vmlaq_s32(vmlaq_s32(total[n], s_lo[n], sc_lo), s_hi[n], sc_hi);
                }
            }
            for n in 0..TILE_ROWS {
                let scale = vmulq_n_f32(d[h], ys[n].d);
                acc[n][h] = vfmaq_f32(acc[n][h], vcvtq_f32_s32(total[n]), scale);
            }
        }
    }
    acc.map(|acc| lanes8(acc))
}
