//! The x86-64 versions of the GEMM's kernels: the micro-kernel with AVX2 (FMA) and with
//! AVX-512 F registers, and the F16 widener with F16C conversions and 8 × 8 transposes.
//! `micro_kernel` and `f16_widener` hand them out only on the paths whose CPUs reported the
//! features.

use std::arch::x86_64::*;

use super::{
    check_f16_rows, check_micro, widen_f16_portable, GroupColumn, PanelColumn, TileOut, GROUP_ROWS,
    PANEL_ROWS,
};
use crate::quant::CpuPath;

pub(super) fn micro_kernel(group: &[GroupColumn], panel: &[PanelColumn], out: TileOut<'_>) {
    assert!(
        CpuPath::Avx2.is_available(),
        "AVX2 kernels on a CPU without AVX2"
    );
    check_micro(group, panel);
    // SAFETY: `micro_kernel` hands this out only on the AVX2 path, which exists only where
    // the CPU reported AVX2, FMA and F16C; the lengths are checked above.
    unsafe { micro_kernel_avx2(group, panel, out) }
}

#[target_feature(enable = "avx2,fma")]
fn micro_kernel_avx2(group: &[GroupColumn], panel: &[PanelColumn], mut out: TileOut<'_>) {
    let mut acc = [[_mm256_setzero_ps(); 2]; GROUP_ROWS];
    for (b, column) in group.iter().zip(panel) {
        // SAFETY: a panel column is 16 floats; `loadu` needs no alignment.
        unsafe {
            let a0 = _mm256_loadu_ps(column.0.as_ptr());
            let a1 = _mm256_loadu_ps(column.0.as_ptr().add(8));
            for (acc, b) in acc.iter_mut().zip(b) {
                let b = _mm256_broadcast_ss(b);
                acc[0] = _mm256_fmadd_ps(b, a0, acc[0]);
                acc[1] = _mm256_fmadd_ps(b, a1, acc[1]);
            }
        }
    }
    for (j, acc) in acc.iter().enumerate() {
        let row = out.row(j);
        for (h, &acc) in acc.iter().enumerate() {
            // SAFETY: a tile row is 16 floats, so `h·8..h·8 + 8` is in bounds.
            unsafe {
                let p = row.as_mut_ptr().add(h * 8);
                _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), acc));
            }
        }
    }
    const { assert!(PANEL_ROWS == 16) };
}

pub(super) fn micro_kernel_avx512(group: &[GroupColumn], panel: &[PanelColumn], out: TileOut<'_>) {
    assert!(
        CpuPath::Avx512.is_available(),
        "AVX-512 kernels on a CPU without AVX-512"
    );
    check_micro(group, panel);
    // SAFETY: `micro_kernel` hands this out only on the AVX-512 paths, which exist only
    // where the CPU reported AVX-512 F (and AVX2, FMA); the lengths are checked above.
    unsafe { micro_kernel_avx512_impl(group, panel, out) }
}

/// The same tile with 512-bit registers: a panel column is one register, so a column
/// costs one load, 6 broadcasts and 6 FMAs. Even and odd columns go to separate
/// accumulators, for 12 FMA chains as in the AVX2 kernel.
#[target_feature(enable = "avx512f,avx2,fma")]
fn micro_kernel_avx512_impl(group: &[GroupColumn], panel: &[PanelColumn], mut out: TileOut<'_>) {
    let mut even = [_mm512_setzero_ps(); GROUP_ROWS];
    let mut odd = [_mm512_setzero_ps(); GROUP_ROWS];
    let (g_pairs, p_pairs) = (group.chunks_exact(2), panel.chunks_exact(2));
    let (g_rest, p_rest) = (g_pairs.remainder(), p_pairs.remainder());
    for (b, p) in g_pairs.zip(p_pairs) {
        // SAFETY: a panel column is 16 floats; `loadu` needs no alignment.
        let (a0, a1) = unsafe {
            (
                _mm512_loadu_ps(p[0].0.as_ptr()),
                _mm512_loadu_ps(p[1].0.as_ptr()),
            )
        };
        for j in 0..GROUP_ROWS {
            even[j] = _mm512_fmadd_ps(_mm512_set1_ps(b[0][j]), a0, even[j]);
            odd[j] = _mm512_fmadd_ps(_mm512_set1_ps(b[1][j]), a1, odd[j]);
        }
    }
    if let (Some(b), Some(p)) = (g_rest.first(), p_rest.first()) {
        // SAFETY: as above.
        let a = unsafe { _mm512_loadu_ps(p.0.as_ptr()) };
        for (even, &b) in even.iter_mut().zip(b) {
            *even = _mm512_fmadd_ps(_mm512_set1_ps(b), a, *even);
        }
    }
    for j in 0..GROUP_ROWS {
        let p = out.row(j).as_mut_ptr();
        // SAFETY: a tile row is 16 floats.
        unsafe {
            let sum = _mm512_add_ps(even[j], odd[j]);
            _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), sum));
        }
    }
}

pub(super) fn widen_f16(rows: &[&[u8]], panel: &mut [PanelColumn]) {
    assert!(
        CpuPath::Avx2.is_available(),
        "AVX2 kernels on a CPU without AVX2"
    );
    check_f16_rows(rows, panel);
    // SAFETY: `f16_widener` hands this out only on the AVX2 and AVX-512 paths, which exist
    // only where the CPU reported AVX2 and F16C; the lengths are checked above.
    unsafe { widen_f16_avx2(rows, panel) }
}

/// 8 columns at a time: per half of the panel, 8 rows' runs of 8 values converted (one
/// `vcvtph2ps` each) and transposed in registers, then stored as the 8 columns' halves.
#[target_feature(enable = "avx2,f16c")]
fn widen_f16_avx2(rows: &[&[u8]], panel: &mut [PanelColumn]) {
    let whole = panel.len() / 8 * 8;
    for c0 in (0..whole).step_by(8) {
        for half in 0..2 {
            let mut v = [_mm256_setzero_ps(); 8];
            for (v, row) in v.iter_mut().zip(rows.iter().skip(half * 8)) {
                // SAFETY: the row holds `2·panel.len()` bytes (checked by the caller) and
                // `c0 + 8 <= whole <= panel.len()`, so its 16 bytes at `2·c0` are in bounds.
                *v = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(row[2 * c0..].as_ptr().cast())) };
            }
            for (c, v) in transpose8(v).into_iter().enumerate() {
                // SAFETY: a panel column is 16 floats; this half is `half·8..half·8 + 8`.
                unsafe { _mm256_storeu_ps(panel[c0 + c].0.as_mut_ptr().add(half * 8), v) };
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

/// `out[c][i] = v[i][c]` for an 8 × 8 block.
#[target_feature(enable = "avx2")]
fn transpose8(v: [__m256; 8]) -> [__m256; 8] {
    // Pairs of rows interleaved: (0,1) (2,3) (4,5) (6,7), low and high halves of each lane.
    let t: [__m256; 8] = [
        _mm256_unpacklo_ps(v[0], v[1]),
        _mm256_unpackhi_ps(v[0], v[1]),
        _mm256_unpacklo_ps(v[2], v[3]),
        _mm256_unpackhi_ps(v[2], v[3]),
        _mm256_unpacklo_ps(v[4], v[5]),
        _mm256_unpackhi_ps(v[4], v[5]),
        _mm256_unpacklo_ps(v[6], v[7]),
        _mm256_unpackhi_ps(v[6], v[7]),
    ];
    // Columns (c, c + 4) of rows 0–3 and of rows 4–7, one per 128-bit lane.
    let s: [__m256; 8] = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    [
        _mm256_permute2f128_ps::<0x20>(s[0], s[4]),
        _mm256_permute2f128_ps::<0x20>(s[1], s[5]),
        _mm256_permute2f128_ps::<0x20>(s[2], s[6]),
        _mm256_permute2f128_ps::<0x20>(s[3], s[7]),
        _mm256_permute2f128_ps::<0x31>(s[0], s[4]),
        _mm256_permute2f128_ps::<0x31>(s[1], s[5]),
        _mm256_permute2f128_ps::<0x31>(s[2], s[6]),
        _mm256_permute2f128_ps::<0x31>(s[3], s[7]),
    ]
}
