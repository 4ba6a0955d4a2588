//! The 64-bit ARM versions of the GEMM's kernels: the micro-kernel with NEON's multiply-add by
//! element, and the F16 widener with `fcvtl` conversions and 4 × 4 transposes. NEON is part of
//! every aarch64 target this module is built for (see `quant/arm/mod.rs`).

use std::arch::aarch64::*;

use super::{
    check_f16_rows, check_micro, widen_f16_portable, GroupColumn, PanelColumn, TileOut, GROUP_ROWS,
    PANEL_ROWS,
};

pub(super) fn micro_kernel(group: &[GroupColumn], panel: &[PanelColumn], out: TileOut<'_>) {
    check_micro(group, panel);
    // SAFETY: NEON only, which this whole build has; the lengths are checked above.
    unsafe { micro_kernel_neon(group, panel, out) }
}

/// The 6 × 16 tile in 24 registers of 4 lanes. Per column: the panel column as 4 registers,
/// the group column's 6 values as one register and a half, and 24 `fmla` by element, which
/// read the broadcast value straight from its lane (no broadcast instruction). 24
/// accumulators are 24 independent chains, more than the `fmla` latency needs.
#[target_feature(enable = "neon")]
fn micro_kernel_neon(group: &[GroupColumn], panel: &[PanelColumn], mut out: TileOut<'_>) {
    const { assert!(PANEL_ROWS == 16 && GROUP_ROWS == 6) };
    let mut acc = [[vdupq_n_f32(0.0); 4]; GROUP_ROWS];
    for (b, column) in group.iter().zip(panel) {
        // SAFETY: a panel column is 16 floats and a group column 6: the loads are in bounds
        // (`b[..4]` and `b[4..6]`); `ld1` needs no alignment.
        let (a, b03, b45) = unsafe {
            let p = column.0.as_ptr();
            (
                [
                    vld1q_f32(p),
                    vld1q_f32(p.add(4)),
                    vld1q_f32(p.add(8)),
                    vld1q_f32(p.add(12)),
                ],
                vld1q_f32(b.as_ptr()),
                vld1_f32(b.as_ptr().add(4)),
            )
        };
        for q in 0..4 {
            acc[0][q] = vfmaq_laneq_f32::<0>(acc[0][q], a[q], b03);
            acc[1][q] = vfmaq_laneq_f32::<1>(acc[1][q], a[q], b03);
            acc[2][q] = vfmaq_laneq_f32::<2>(acc[2][q], a[q], b03);
            acc[3][q] = vfmaq_laneq_f32::<3>(acc[3][q], a[q], b03);
            acc[4][q] = vfmaq_lane_f32::<0>(acc[4][q], a[q], b45);
            acc[5][q] = vfmaq_lane_f32::<1>(acc[5][q], a[q], b45);
        }
    }
    for (j, acc) in acc.iter().enumerate() {
        let row = out.row(j);
        for (q, &acc) in acc.iter().enumerate() {
            // SAFETY: a tile row is 16 floats, so `4q..4q + 4` is in bounds.
            unsafe {
                let p = row.as_mut_ptr().add(4 * q);
                vst1q_f32(p, vaddq_f32(vld1q_f32(p), acc));
            }
        }
    }
}

pub(super) fn widen_f16(rows: &[&[u8]], panel: &mut [PanelColumn]) {
    check_f16_rows(rows, panel);
    // SAFETY: NEON only, which this whole build has; the lengths are checked above.
    unsafe { widen_f16_neon(rows, panel) }
}

/// 8 columns at a time: per quarter of the panel (4 rows), each row's 8 halves widened with
/// `fcvtl` (two registers of 4), then the two 4 × 4 blocks transposed and stored as the 8
/// columns' quarters. Rows past `rows` are zeros.
#[target_feature(enable = "neon")]
fn widen_f16_neon(rows: &[&[u8]], panel: &mut [PanelColumn]) {
    let whole = panel.len() / 8 * 8;
    for c0 in (0..whole).step_by(8) {
        for quarter in 0..4 {
            let mut lo = [vdupq_n_f32(0.0); 4];
            let mut hi = [vdupq_n_f32(0.0); 4];
            for (i, row) in rows.iter().skip(4 * quarter).take(4).enumerate() {
                let halves = &row[2 * c0..][..16];
                // SAFETY: `halves` is 16 bytes; `ld1` needs no alignment.
                let bits = unsafe { vreinterpretq_u16_u8(vld1q_u8(halves.as_ptr())) };
                [lo[i], hi[i]] = crate::quant::widen_f16x8(bits);
            }
            for (block, v) in [lo, hi].into_iter().enumerate() {
                for (c, column) in transpose4(v).into_iter().enumerate() {
                    let column_at = &mut panel[c0 + 4 * block + c].0[4 * quarter..][..4];
                    // SAFETY: the slice is 4 floats; `st1` needs no alignment.
                    unsafe { vst1q_f32(column_at.as_mut_ptr(), column) };
                }
            }
        }
    }
    if whole < panel.len() {
        let mut tails = [&[][..]; PANEL_ROWS];
        for (tail, row) in tails.iter_mut().zip(rows) {
            *tail = &row[2 * whole..];
        }
        widen_f16_portable(&tails[..rows.len()], &mut panel[whole..]);
    }
}

/// `out[c][i] = v[i][c]` for a 4 × 4 block.
#[target_feature(enable = "neon")]
#[inline]
fn transpose4(v: [float32x4_t; 4]) -> [float32x4_t; 4] {
    // (v0[0] v1[0] v0[2] v1[2]), (v0[1] v1[1] v0[3] v1[3]), the same for rows 2 and 3.
    let t0 = vtrn1q_f32(v[0], v[1]);
    let t1 = vtrn2q_f32(v[0], v[1]);
    let t2 = vtrn1q_f32(v[2], v[3]);
    let t3 = vtrn2q_f32(v[2], v[3]);
    let pairs = |a: float32x4_t, b: float32x4_t| {
        let (a, b) = (vreinterpretq_f64_f32(a), vreinterpretq_f64_f32(b));
        (
            vreinterpretq_f32_f64(vtrn1q_f64(a, b)),
            vreinterpretq_f32_f64(vtrn2q_f64(a, b)),
        )
    };
    let (c0, c2) = pairs(t0, t2);
    let (c1, c3) = pairs(t1, t3);
    [c0, c1, c2, c3]
}
