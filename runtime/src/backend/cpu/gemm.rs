//! The f32 GEMM of widened batches (prefill, the vision tower): a block of weight rows widened
//! to f32 times every activation row, `out[j][r] = Σ_k w[j][k] · a[r][k]`.
//!
//! The activations are packed once per matmul into panels of [`PANEL_ROWS`] rows stored
//! k-major (the panel's 16 values of one column are one 64-byte line). The micro-kernel holds
//! a [`MICRO_W_ROWS`] × [`PANEL_ROWS`] tile of outputs in registers; per column it loads the
//! panel's 16 values as two vectors, broadcasts one value of each of the 6 weight rows, and
//! does 12 FMAs (AVX2). The outputs come out in `out`'s own layout (weight row major, activation rows
//! along it), so there is no horizontal sum anywhere, and the columns are walked in chunks of
//! [`K_CHUNK`] so that the chunk of the weight block and one panel's chunk stay in L1 while
//! every panel passes over the weights.
//!
//! It replaced a 3 × 4 micro-kernel that dotted weight rows with activation rows (8 partial
//! sums per register, summed horizontally at the end): that one read 7 vectors from L2 for
//! 12 FMAs and ran at about 60% of the FMA rate. On AVX-512 CPUs the same tile takes one
//! register per panel column (benches/README.md: 7B Q4_0 pp256 1.5×, CLIP-L encode 1.2–1.45×
//! against the AVX2 kernel on the same Xeon).

use std::ops::Range;

use bytemuck::{Pod, Zeroable};

use crate::quant;

/// Activation rows per packed panel: two 8-lane AVX2 vectors.
pub(super) const PANEL_ROWS: usize = 16;
/// Weight rows the micro-kernel broadcasts from: 6 × 2 accumulators, 2 panel vectors and one
/// broadcast fill 15 of the 16 AVX2 registers.
pub(super) const MICRO_W_ROWS: usize = 6;
/// Columns per pass over the panels (see [`gemm`]). A multiple of every block size (K-quants:
/// 256), so a chunk of a quantized row is whole blocks.
pub(super) const K_CHUNK: usize = 256;

/// One column of a panel: the values of its [`PANEL_ROWS`] rows, on one cache line.
#[derive(Clone, Copy, Default, Pod, Zeroable)]
#[repr(C, align(64))]
pub(super) struct PanelColumn(pub [f32; PANEL_ROWS]);

/// `c[j·ldc + i] += Σ_kk w[kk][j] · panel[kk][i]` for `j < MICRO_W_ROWS`, `i < PANEL_ROWS`,
/// with `w` as long as `panel`.
pub(super) type MicroKernelFn = fn(&[WeightColumn], &[PanelColumn], &mut [f32], usize);

/// One column of a group of [`MICRO_W_ROWS`] weight rows: what the micro-kernel broadcasts
/// at one step.
pub(super) type WeightColumn = [f32; MICRO_W_ROWS];

/// Activation rows packed into panels (the last one padded with zeros).
pub(super) struct PackedActs {
    columns: Vec<PanelColumn>,
    rows: usize,
    k: usize,
}

impl PackedActs {
    /// Packs `rows` rows of `k` values; `row(r, dst)` writes row `r` into `dst` (`k` long).
    /// Panels are filled in parallel: each panel's rows are written out whole, then moved into
    /// place (one cache line written per column, the 16 rows read along from L1/L2), rather
    /// than each row scattered over `k` lines in turn.
    ///
    /// The panels are written straight into uninitialized memory: zeroing them first (and
    /// faulting in their pages) on one thread took 7 ms of a 50 ms CLIP MLP matmul.
    pub(super) fn pack(
        rows: usize,
        k: usize,
        row: impl Fn(usize, &mut [f32]) + Sync + Send,
    ) -> PackedActs {
        use rayon::prelude::*;
        let n = rows.div_ceil(PANEL_ROWS) * k;
        let mut columns = Vec::with_capacity(n);
        columns.spare_capacity_mut()[..n]
            .par_chunks_mut(k.max(1))
            .enumerate()
            .for_each_init(Vec::new, |scratch, (p, panel)| {
                let n_rows = PANEL_ROWS.min(rows - p * PANEL_ROWS);
                scratch.resize(PANEL_ROWS * k, 0.0);
                for (i, dst) in scratch.chunks_exact_mut(k).enumerate() {
                    if i < n_rows {
                        row(p * PANEL_ROWS + i, dst);
                    } else {
                        dst.fill(0.0);
                    }
                }
                // 8 columns at a time: the 16 rows' runs of 8 in a block on the stack, then
                // out as 8 columns (about 3x faster than one column at a time, whose 16
                // bounds-checked loads per column were 5% of a CLIP encode).
                let whole = k / 8 * 8;
                for (c0, columns) in (0..whole).step_by(8).zip(panel.chunks_exact_mut(8)) {
                    let mut block = [[0f32; 8]; PANEL_ROWS];
                    for (i, run) in block.iter_mut().enumerate() {
                        run.copy_from_slice(&scratch[i * k + c0..][..8]);
                    }
                    for (c, column) in columns.iter_mut().enumerate() {
                        column.write(PanelColumn(std::array::from_fn(|i| block[i][c])));
                    }
                }
                for (c, column) in panel.iter_mut().enumerate().skip(whole) {
                    column.write(PanelColumn(std::array::from_fn(|i| scratch[i * k + c])));
                }
            });
        // SAFETY: the loop above wrote all `n` elements: the chunks of `k` cover `0..n`, and
        // each chunk's columns `0..whole` and `whole..k` are written.
        unsafe { columns.set_len(n) };
        PackedActs { columns, rows, k }
    }

    fn panel(&self, p: usize) -> &[PanelColumn] {
        &self.columns[p * self.k..][..self.k]
    }
}

/// The micro-kernel of the process's CPU path.
pub(super) fn micro_kernel() -> MicroKernelFn {
    match quant::cpu_path() {
        #[cfg(target_arch = "x86_64")]
        quant::CpuPath::Avx512 | quant::CpuPath::Avx512Vnni
            if quant::CpuPath::Avx512.is_available() =>
        {
            x86::micro_kernel_avx512
        }
        #[cfg(target_arch = "x86_64")]
        quant::CpuPath::Avx2 if quant::CpuPath::Avx2.is_available() => x86::micro_kernel,
        _ => micro_kernel_portable,
    }
}

/// `out` (`[n_block, acts.rows()]`) = a block of `n_block` weight rows times every packed
/// activation row. `widen(j, cols, dst)` writes columns `cols` of the block's row `j`, as f32,
/// into `dst`; the block is widened one [`K_CHUNK`] of columns at a time into `scratch`, each
/// group of [`MICRO_W_ROWS`] rows column-major, so that the micro-kernel reads one stream.
///
/// Loop order (BLIS's, with the weights as the broadcast operand): per chunk of columns, the
/// widened weights (96 KB for 96 rows) stay in L2 and each panel's chunk (16 KB) in L1 while
/// all of the block's weight groups stream past it; the panels come from L3 once per chunk.
pub(super) fn gemm(
    micro: MicroKernelFn,
    n_block: usize,
    acts: &PackedActs,
    widen: impl Fn(usize, Range<usize>, &mut [f32]),
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let (rows, k) = (acts.rows, acts.k);
    assert_eq!(out.len(), n_block * rows, "output block shape");
    out.fill(0.0);
    let n_groups = n_block.div_ceil(MICRO_W_ROWS);
    let mut tile = [0f32; MICRO_W_ROWS * PANEL_ROWS];
    for k0 in (0..k).step_by(K_CHUNK) {
        let kc = K_CHUNK.min(k - k0);
        scratch.row.resize(kc, 0.0);
        scratch.weights.resize(n_groups * kc, [0.0; MICRO_W_ROWS]);
        for j in 0..n_block {
            widen(j, k0..k0 + kc, &mut scratch.row);
            // A short last group repeats its last row; those outputs are not kept.
            let last = if j + 1 == n_block {
                n_groups * MICRO_W_ROWS
            } else {
                j + 1
            };
            for slot in j..last {
                let group = &mut scratch.weights[slot / MICRO_W_ROWS * kc..][..kc];
                for (column, &v) in group.iter_mut().zip(&scratch.row) {
                    column[slot % MICRO_W_ROWS] = v;
                }
            }
        }
        for p in 0..rows.div_ceil(PANEL_ROWS) {
            let panel = &acts.panel(p)[k0..k0 + kc];
            let r0 = p * PANEL_ROWS;
            let n_r = PANEL_ROWS.min(rows - r0);
            for (g, w) in scratch.weights.chunks_exact(kc).enumerate() {
                let j0 = g * MICRO_W_ROWS;
                let n_j = MICRO_W_ROWS.min(n_block - j0);
                if n_r == PANEL_ROWS && n_j == MICRO_W_ROWS {
                    micro(w, panel, &mut out[j0 * rows + r0..], rows);
                } else {
                    for j in 0..n_j {
                        tile[j * PANEL_ROWS..][..n_r]
                            .copy_from_slice(&out[(j0 + j) * rows + r0..][..n_r]);
                    }
                    micro(w, panel, &mut tile, PANEL_ROWS);
                    for j in 0..n_j {
                        out[(j0 + j) * rows + r0..][..n_r]
                            .copy_from_slice(&tile[j * PANEL_ROWS..][..n_r]);
                    }
                }
            }
        }
    }
}

/// A worker's buffers for [`gemm`], kept across calls.
#[derive(Default)]
pub(super) struct Scratch {
    row: Vec<f32>,
    weights: Vec<WeightColumn>,
    /// The caller's output block, `[n_block, rows]`.
    pub(super) out: Vec<f32>,
}

/// Every micro-kernel this CPU can run, for tests.
#[cfg(test)]
pub(super) fn micro_kernels() -> Vec<MicroKernelFn> {
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut kernels: Vec<MicroKernelFn> = vec![micro_kernel_portable];
    #[cfg(target_arch = "x86_64")]
    if quant::CpuPath::Avx2.is_available() {
        kernels.push(x86::micro_kernel);
    }
    #[cfg(target_arch = "x86_64")]
    if quant::CpuPath::Avx512.is_available() {
        kernels.push(x86::micro_kernel_avx512);
    }
    kernels
}

fn check_micro(w: &[WeightColumn], panel: &[PanelColumn], c: &[f32], ldc: usize) {
    assert_eq!(
        w.len(),
        panel.len(),
        "micro-kernel operands of different lengths"
    );
    assert!(
        ldc >= PANEL_ROWS && c.len() >= (MICRO_W_ROWS - 1) * ldc + PANEL_ROWS,
        "micro-kernel output tile out of bounds"
    );
}

fn micro_kernel_portable(w: &[WeightColumn], panel: &[PanelColumn], c: &mut [f32], ldc: usize) {
    check_micro(w, panel, c, ldc);
    let mut acc = [[0f32; PANEL_ROWS]; MICRO_W_ROWS];
    for (w, column) in w.iter().zip(panel) {
        for (acc, &b) in acc.iter_mut().zip(w) {
            for (acc, &a) in acc.iter_mut().zip(&column.0) {
                *acc += b * a;
            }
        }
    }
    for (j, acc) in acc.iter().enumerate() {
        for (c, acc) in c[j * ldc..][..PANEL_ROWS].iter_mut().zip(acc) {
            *c += acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{check_micro, PanelColumn, WeightColumn, MICRO_W_ROWS, PANEL_ROWS};
    use crate::quant::CpuPath;

    pub(super) fn micro_kernel(
        w: &[WeightColumn],
        panel: &[PanelColumn],
        c: &mut [f32],
        ldc: usize,
    ) {
        debug_assert!(CpuPath::Avx2.is_available());
        check_micro(w, panel, c, ldc);
        // SAFETY: `micro_kernel` hands this out only on the AVX2 path, which exists only where
        // the CPU reported AVX2, FMA and F16C; the lengths are checked above.
        unsafe { micro_kernel_avx2(w, panel, c, ldc) }
    }

    #[target_feature(enable = "avx2,fma")]
    fn micro_kernel_avx2(w: &[WeightColumn], panel: &[PanelColumn], c: &mut [f32], ldc: usize) {
        let mut acc = [[_mm256_setzero_ps(); 2]; MICRO_W_ROWS];
        for (w, column) in w.iter().zip(panel) {
            // SAFETY: a panel column is 16 floats; `loadu` needs no alignment.
            unsafe {
                let a0 = _mm256_loadu_ps(column.0.as_ptr());
                let a1 = _mm256_loadu_ps(column.0.as_ptr().add(8));
                for (acc, b) in acc.iter_mut().zip(w) {
                    let b = _mm256_broadcast_ss(b);
                    acc[0] = _mm256_fmadd_ps(b, a0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(b, a1, acc[1]);
                }
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            for (h, &acc) in acc.iter().enumerate() {
                // SAFETY: `c` holds `(MICRO_W_ROWS - 1)·ldc + PANEL_ROWS` floats (checked by
                // the caller), so row `j`'s 16 outputs are in bounds.
                unsafe {
                    let p = c.as_mut_ptr().add(j * ldc + h * 8);
                    _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), acc));
                }
            }
        }
        const { assert!(PANEL_ROWS == 16) };
    }

    pub(super) fn micro_kernel_avx512(
        w: &[WeightColumn],
        panel: &[PanelColumn],
        c: &mut [f32],
        ldc: usize,
    ) {
        debug_assert!(CpuPath::Avx512.is_available());
        check_micro(w, panel, c, ldc);
        // SAFETY: `micro_kernel` hands this out only on the AVX-512 paths, which exist only
        // where the CPU reported AVX-512 F (and AVX2, FMA); the lengths are checked above.
        unsafe { micro_kernel_avx512_impl(w, panel, c, ldc) }
    }

    /// The same tile with 512-bit registers: a panel column is one register, so a column
    /// costs one load, 6 broadcasts and 6 FMAs. Even and odd columns go to separate
    /// accumulators, for 12 FMA chains as in the AVX2 kernel.
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn micro_kernel_avx512_impl(
        w: &[WeightColumn],
        panel: &[PanelColumn],
        c: &mut [f32],
        ldc: usize,
    ) {
        let mut even = [_mm512_setzero_ps(); MICRO_W_ROWS];
        let mut odd = [_mm512_setzero_ps(); MICRO_W_ROWS];
        let (w_pairs, p_pairs) = (w.chunks_exact(2), panel.chunks_exact(2));
        let (w_rest, p_rest) = (w_pairs.remainder(), p_pairs.remainder());
        for (w, p) in w_pairs.zip(p_pairs) {
            // SAFETY: a panel column is 16 floats; `loadu` needs no alignment.
            let (a0, a1) = unsafe {
                (
                    _mm512_loadu_ps(p[0].0.as_ptr()),
                    _mm512_loadu_ps(p[1].0.as_ptr()),
                )
            };
            for j in 0..MICRO_W_ROWS {
                even[j] = _mm512_fmadd_ps(_mm512_set1_ps(w[0][j]), a0, even[j]);
                odd[j] = _mm512_fmadd_ps(_mm512_set1_ps(w[1][j]), a1, odd[j]);
            }
        }
        if let (Some(w), Some(p)) = (w_rest.first(), p_rest.first()) {
            // SAFETY: as above.
            let a = unsafe { _mm512_loadu_ps(p.0.as_ptr()) };
            for (even, &b) in even.iter_mut().zip(w) {
                *even = _mm512_fmadd_ps(_mm512_set1_ps(b), a, *even);
            }
        }
        for j in 0..MICRO_W_ROWS {
            // SAFETY: `c` holds `(MICRO_W_ROWS - 1)·ldc + PANEL_ROWS` floats (checked by the
            // caller), so row `j`'s 16 outputs are in bounds.
            unsafe {
                let p = c.as_mut_ptr().add(j * ldc);
                let sum = _mm512_add_ps(even[j], odd[j]);
                _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), sum));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::vector::test_data as data;
    use super::*;

    /// Every shape class: partial panels and weight groups, one and several column chunks
    /// (with a short last one), against f64 sums.
    #[test]
    fn gemm_matches_f64_on_every_available_path() {
        for (rows, n_block, k) in [
            (1, 1, 1),
            (16, 6, 128),
            (21, 13, 300),
            (40, 24, 513),
            (5, 7, 64),
        ] {
            let a = data(rows * k, 3);
            let w = data(n_block * k, 4);
            let acts = PackedActs::pack(rows, k, |r, dst| dst.copy_from_slice(&a[r * k..][..k]));
            for micro in micro_kernels() {
                let mut out = vec![f32::NAN; n_block * rows];
                let widen = |j: usize, cols: Range<usize>, dst: &mut [f32]| {
                    dst.copy_from_slice(&w[j * k..][cols])
                };
                gemm(
                    micro,
                    n_block,
                    &acts,
                    widen,
                    &mut Scratch::default(),
                    &mut out,
                );
                for j in 0..n_block {
                    for r in 0..rows {
                        let terms = (0..k).map(|i| w[j * k + i] as f64 * a[r * k + i] as f64);
                        let exact: f64 = terms.clone().sum();
                        let norm: f64 = terms.map(f64::abs).sum();
                        let got = out[j * rows + r] as f64;
                        assert!(
                            (got - exact).abs() <= 1e-6 * norm,
                            "rows={rows} n={n_block} k={k} w{j} a{r}: {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }

    /// The last panel's rows past the end are zeros, also when the worker's scratch held a
    /// full panel before it (one thread and 41 panels: rayon hands one scratch several).
    #[test]
    fn packing_pads_the_last_panel_with_zeros() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        for (rows, k) in [(3, 2), (19, 9), (16 * 40 + 3, 9)] {
            let acts =
                pool.install(|| PackedActs::pack(rows, k, |r, dst| dst.fill(r as f32 + 1.0)));
            assert_eq!(acts.columns.len(), rows.div_ceil(PANEL_ROWS) * k);
            for (p, panel) in acts.columns.chunks_exact(k).enumerate() {
                for column in panel {
                    for (i, &v) in column.0.iter().enumerate() {
                        let r = p * PANEL_ROWS + i;
                        let want = if r < rows { r as f32 + 1.0 } else { 0.0 };
                        assert_eq!(v, want, "rows={rows} k={k} panel {p} row {i}");
                    }
                }
            }
        }
    }
}
