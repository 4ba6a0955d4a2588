//! The f32 GEMM of widened batches (prefill, the vision tower): every activation row times a
//! block of weight rows widened to f32, `out[r][j] = Σ_k a[r][k] · w[j][k]`.
//!
//! The micro-kernel holds a [`GROUP_ROWS`] × [`PANEL_ROWS`] tile of outputs in registers; per
//! column it loads one [`PanelColumn`] (16 values, one 64-byte line) as two vectors, broadcasts
//! the [`GROUP_ROWS`] values of one [`GroupColumn`], and does 12 FMAs (AVX2). In the matmul the
//! activations are the broadcast operand, packed once per matmul into groups of 6 rows stored
//! column-major, and the weights are the lanes: a block of weight rows is widened, one
//! [`K_CHUNK`] of columns at a time, into panels of 16 rows. So a tile is 6 activation rows ×
//! 16 output columns, added straight into the output in its final `[rows, n_out]` layout: no
//! horizontal sum, no transpose, no intermediate buffer. Attention uses the same micro-kernel
//! with keys and values as the broadcast operand (`attention.rs`). Activations as the
//! broadcast operand make 577 CLIP rows 97 groups of 6 (0.9% padding). On AVX-512 CPUs the
//! same tile takes one register per panel column (benches/README.md: 7B Q4_0 pp256 1.5×,
//! CLIP-L encode 1.2–1.45× against the AVX2 kernel on the same Xeon).
//!
//! The portable kernels are here; the AVX2 and AVX-512 ones are in `x86.rs`, the NEON ones in
//! `arm.rs`.

use std::marker::PhantomData;
use std::ops::Range;

use bytemuck::{Pod, Zeroable};

use super::columns::ColumnBlock;
use super::pool::Pool;
use crate::quant;

/// Rows of a panel (the micro-kernel's lanes): two 8-lane AVX2 vectors.
pub(super) const PANEL_ROWS: usize = 16;
/// Rows of a group (the micro-kernel's broadcast operand): 6 × 2 accumulators, 2 panel vectors
/// and one broadcast fill 15 of the 16 AVX2 registers.
pub(super) const GROUP_ROWS: usize = 6;
/// Columns per pass over the activations (see [`gemm`]). A multiple of every block size
/// (K-quants: 256), so a chunk of a quantized row is whole blocks.
pub(super) const K_CHUNK: usize = 256;

/// One column of a panel: the values of its [`PANEL_ROWS`] rows, on one cache line.
#[derive(Clone, Copy, Default, Pod, Zeroable)]
#[repr(C, align(64))]
pub(super) struct PanelColumn(pub [f32; PANEL_ROWS]);

/// One column of a group of [`GROUP_ROWS`] rows: what the micro-kernel broadcasts at one step.
pub(super) type GroupColumn = [f32; GROUP_ROWS];

/// `out.row(j)[i] += Σ_kk group[kk][j] · panel[kk][i]` for `j < GROUP_ROWS`, `i < PANEL_ROWS`,
/// with `group` as long as `panel`.
pub(super) type MicroKernelFn = fn(&[GroupColumn], &[PanelColumn], TileOut<'_>);

/// Where a micro-kernel adds its tile: [`GROUP_ROWS`] rows of [`PANEL_ROWS`] floats, `ldc`
/// floats apart. It borrows them exclusively, as a `&mut` would, without the floats between
/// the rows: in a matmul those belong to columns that other workers write.
pub(super) struct TileOut<'a> {
    first: *mut f32,
    ldc: usize,
    _floats: PhantomData<&'a mut f32>,
}

impl<'a> TileOut<'a> {
    /// The tile whose first row starts at `c[0]`.
    pub(super) fn in_slice(c: &'a mut [f32], ldc: usize) -> TileOut<'a> {
        assert!(
            ldc >= PANEL_ROWS && c.len() >= (GROUP_ROWS - 1) * ldc + PANEL_ROWS,
            "micro-kernel output tile out of bounds"
        );
        // SAFETY: the floats of every row lie inside `c` (checked above), which is borrowed
        // exclusively for `'a`.
        unsafe { TileOut::from_raw(c.as_mut_ptr(), ldc) }
    }

    /// # Safety
    /// For each `j < GROUP_ROWS`, the [`PANEL_ROWS`] floats at `first + j·ldc` must be valid,
    /// and neither read nor written through any other pointer, for `'a`.
    pub(super) unsafe fn from_raw(first: *mut f32, ldc: usize) -> TileOut<'a> {
        TileOut {
            first,
            ldc,
            _floats: PhantomData,
        }
    }

    /// Row `j`'s floats.
    #[inline(always)]
    pub(super) fn row(&mut self, j: usize) -> &mut [f32; PANEL_ROWS] {
        assert!(j < GROUP_ROWS, "tile row {j}");
        // SAFETY: row `j` is valid and exclusively ours (the constructors' contract), and
        // `&mut self` keeps two rows from being borrowed at once.
        unsafe { &mut *self.first.add(j * self.ldc).cast::<[f32; PANEL_ROWS]>() }
    }
}

/// Activation rows packed into groups of [`GROUP_ROWS`] (the last one padded with zeros),
/// each group column-major.
pub(super) struct PackedActs {
    columns: Vec<GroupColumn>,
    rows: usize,
    k: usize,
}

impl PackedActs {
    /// Packs `rows` rows of `k` values; `row(r, dst)` writes row `r` into `dst` (`k` long).
    /// Groups are filled in parallel: each group's rows are written out whole, then moved into
    /// place 8 columns at a time, rather than each row scattered over `k` columns in turn.
    ///
    /// The groups are written straight into uninitialized memory: zeroing them first (and
    /// faulting in their pages) on one thread took 7 ms of a 50 ms CLIP MLP matmul.
    pub(super) fn pack(
        pool: &Pool,
        rows: usize,
        k: usize,
        row: impl Fn(usize, &mut [f32]) + Sync,
    ) -> PackedActs {
        let n = rows.div_ceil(GROUP_ROWS) * k;
        let mut columns = Vec::with_capacity(n);
        pool.for_each_chunk_init(
            &mut columns.spare_capacity_mut()[..n],
            k.max(1),
            Vec::new,
            |scratch, g, group| {
                let n_rows = GROUP_ROWS.min(rows - g * GROUP_ROWS);
                scratch.resize(GROUP_ROWS * k, 0.0);
                for (i, dst) in scratch.chunks_exact_mut(k).enumerate() {
                    if i < n_rows {
                        row(g * GROUP_ROWS + i, dst);
                    } else {
                        dst.fill(0.0);
                    }
                }
                // 8 columns at a time: the rows' runs of 8 in a block on the stack, then out
                // as 8 columns (about 3x faster than one column at a time, whose bounds-checked
                // strided loads were 5% of a CLIP encode).
                let whole = k / 8 * 8;
                for (c0, columns) in (0..whole).step_by(8).zip(group.chunks_exact_mut(8)) {
                    let mut block = [[0f32; 8]; GROUP_ROWS];
                    for (i, run) in block.iter_mut().enumerate() {
                        run.copy_from_slice(&scratch[i * k + c0..][..8]);
                    }
                    for (c, column) in columns.iter_mut().enumerate() {
                        column.write(std::array::from_fn(|i| block[i][c]));
                    }
                }
                for (c, column) in group.iter_mut().enumerate().skip(whole) {
                    column.write(std::array::from_fn(|i| scratch[i * k + c]));
                }
            },
        );
        // SAFETY: the loop above wrote all `n` elements: the chunks of `k` cover `0..n`, and
        // each chunk's columns `0..whole` and `whole..k` are written.
        unsafe { columns.set_len(n) };
        PackedActs { columns, rows, k }
    }

    fn group(&self, g: usize) -> &[GroupColumn] {
        &self.columns[g * self.k..][..self.k]
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
        quant::CpuPath::Avx2 | quant::CpuPath::AvxVnni if quant::CpuPath::Avx2.is_available() => {
            x86::micro_kernel
        }
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        quant::CpuPath::Neon | quant::CpuPath::NeonDotprod => arm::micro_kernel,
        _ => micro_kernel_portable,
    }
}

/// Adds every packed activation row times a block of `n_block` weight rows to columns
/// `b0..b0 + n_block` of `out` (`[acts.rows, _]`). `widen(rows, cols, panel, buf)` writes
/// columns `cols` of the block's rows `rows` (at most [`PANEL_ROWS`] of them) into `panel`,
/// `panel[c].0[i] = w[rows.start + i][cols.start + c]` (see [`widen_rows`] and
/// [`f16_widener`]; `buf` is theirs to use); lanes past the rows may hold anything, their
/// outputs are dropped.
///
/// Loop order (BLIS's, with the activations as the broadcast operand): per chunk of columns,
/// the block's widened panels (96 KB for 96 rows) stay in L2 while each group's chunk (6 KB)
/// passes over all of them from L1; the groups come from L3 once per chunk.
pub(super) fn gemm(
    micro: MicroKernelFn,
    n_block: usize,
    acts: &PackedActs,
    widen: impl Fn(Range<usize>, Range<usize>, &mut [PanelColumn], &mut Vec<f32>),
    scratch: &mut Scratch,
    out: &mut ColumnBlock<'_>,
    b0: usize,
) {
    let (rows, k) = (acts.rows, acts.k);
    assert!(b0 + n_block <= out.width(), "output block out of bounds");
    let n_panels = n_block.div_ceil(PANEL_ROWS);
    for k0 in (0..k).step_by(K_CHUNK) {
        let kc = K_CHUNK.min(k - k0);
        scratch.panels.resize(n_panels * kc, PanelColumn::default());
        for (p, panel) in scratch.panels.chunks_exact_mut(kc).enumerate() {
            let j0 = p * PANEL_ROWS;
            widen(
                j0..n_block.min(j0 + PANEL_ROWS),
                k0..k0 + kc,
                panel,
                &mut scratch.row,
            );
        }
        for g in 0..rows.div_ceil(GROUP_ROWS) {
            let group = &acts.group(g)[k0..k0 + kc];
            let r0 = g * GROUP_ROWS;
            let n_r = GROUP_ROWS.min(rows - r0);
            for (p, panel) in scratch.panels.chunks_exact(kc).enumerate() {
                let c0 = b0 + p * PANEL_ROWS;
                let n_c = PANEL_ROWS.min(n_block - p * PANEL_ROWS);
                if n_r == GROUP_ROWS && n_c == PANEL_ROWS {
                    micro(group, panel, out.tile(r0, c0));
                } else {
                    // An edge: through a whole tile of our own.
                    let mut tile = [[0f32; PANEL_ROWS]; GROUP_ROWS];
                    for (j, t) in tile.iter_mut().enumerate().take(n_r) {
                        t[..n_c].copy_from_slice(&out.row(r0 + j)[c0..][..n_c]);
                    }
                    micro(
                        group,
                        panel,
                        TileOut::in_slice(tile.as_flattened_mut(), PANEL_ROWS),
                    );
                    for (j, t) in tile.iter().enumerate().take(n_r) {
                        out.row(r0 + j)[c0..][..n_c].copy_from_slice(&t[..n_c]);
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
    panels: Vec<PanelColumn>,
}

/// A `widen` for [`gemm`] from any row format: `row(j, dst)` writes the chunk's columns of
/// row `j` as f32 into `dst` (`panel.len()` long), one row after the other, each scattered
/// into its lane.
pub(super) fn widen_rows(
    rows: Range<usize>,
    panel: &mut [PanelColumn],
    buf: &mut Vec<f32>,
    row: impl Fn(usize, &mut [f32]),
) {
    buf.resize(panel.len(), 0.0);
    for (i, j) in rows.enumerate() {
        row(j, buf);
        for (column, &v) in panel.iter_mut().zip(buf.iter()) {
            column.0[i] = v;
        }
    }
}

/// Widens up to [`PANEL_ROWS`] rows of F16 (little-endian bytes, each `2·panel.len()` long)
/// into a panel; lanes past the rows are set to 0.
pub(super) type F16WidenFn = fn(&[&[u8]], &mut [PanelColumn]);

/// The F16 widener of the process's CPU path: F16C conversions and 8 × 8 transposes where the
/// CPU has them (no scatter of single floats), else one value at a time.
pub(super) fn f16_widener() -> F16WidenFn {
    match quant::cpu_path() {
        #[cfg(target_arch = "x86_64")]
        quant::CpuPath::Avx2
        | quant::CpuPath::AvxVnni
        | quant::CpuPath::Avx512
        | quant::CpuPath::Avx512Vnni
            if quant::CpuPath::Avx2.is_available() =>
        {
            x86::widen_f16
        }
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        quant::CpuPath::Neon | quant::CpuPath::NeonDotprod => arm::widen_f16,
        _ => widen_f16_portable,
    }
}

fn check_f16_rows(rows: &[&[u8]], panel: &[PanelColumn]) {
    assert!(
        rows.len() <= PANEL_ROWS,
        "{} rows for one panel",
        rows.len()
    );
    for row in rows {
        assert_eq!(row.len(), 2 * panel.len(), "F16 row of the wrong length");
    }
}

fn widen_f16_portable(rows: &[&[u8]], panel: &mut [PanelColumn]) {
    check_f16_rows(rows, panel);
    for (c, column) in panel.iter_mut().enumerate() {
        column.0 = std::array::from_fn(|i| {
            rows.get(i).map_or(0.0, |row| {
                half::f16::from_le_bytes([row[2 * c], row[2 * c + 1]]).to_f32()
            })
        });
    }
}

/// Every micro-kernel this CPU can run, for tests (the paths it cannot are reported).
#[cfg(test)]
pub(super) fn micro_kernels() -> Vec<MicroKernelFn> {
    quant::report_skipped_paths("gemm micro-kernels");
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(unused_mut)
    )]
    let mut kernels: Vec<MicroKernelFn> = vec![micro_kernel_portable];
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    kernels.push(arm::micro_kernel);
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

fn check_micro(group: &[GroupColumn], panel: &[PanelColumn]) {
    assert_eq!(
        group.len(),
        panel.len(),
        "micro-kernel operands of different lengths"
    );
}

fn micro_kernel_portable(group: &[GroupColumn], panel: &[PanelColumn], mut out: TileOut<'_>) {
    check_micro(group, panel);
    let mut acc = [[0f32; PANEL_ROWS]; GROUP_ROWS];
    for (b, column) in group.iter().zip(panel) {
        for (acc, &b) in acc.iter_mut().zip(b) {
            for (acc, &a) in acc.iter_mut().zip(&column.0) {
                *acc += b * a;
            }
        }
    }
    for (j, acc) in acc.iter().enumerate() {
        for (c, acc) in out.row(j).iter_mut().zip(acc) {
            *c += acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
mod arm;

#[cfg(test)]
mod tests {
    use super::super::columns::par_column_blocks;
    use super::super::vector::test_data as data;
    use super::*;

    /// Every shape class: partial groups and panels, one and several column chunks (with a
    /// short last one), a block that starts inside the output's columns, against f64 sums
    /// added to what the output held; the columns outside the block are left alone.
    #[test]
    fn gemm_matches_f64_on_every_available_path() {
        for (rows, n_block, k, b0, cols) in [
            (1, 1, 1, 0, 1),
            (6, 16, 128, 0, 16),
            (21, 13, 300, 3, 20),
            (40, 40, 513, 16, 64),
            (5, 7, 64, 1, 9),
        ] {
            let pool = Pool::new(2);
            let a = data(rows * k, 3);
            let w = data(n_block * k, 4);
            let init = data(rows * cols, 5);
            let acts = PackedActs::pack(&pool, rows, k, |r, dst| {
                dst.copy_from_slice(&a[r * k..][..k])
            });
            for micro in micro_kernels() {
                let mut out = init.clone();
                par_column_blocks(&pool, &mut out, rows, cols, cols, |_, mut block| {
                    let widen =
                        |rows: Range<usize>, cols: Range<usize>, panel: &mut _, buf: &mut _| {
                            widen_rows(rows, panel, buf, |j, dst| {
                                dst.copy_from_slice(&w[j * k..][cols.clone()])
                            })
                        };
                    let mut scratch = Scratch::default();
                    gemm(micro, n_block, &acts, widen, &mut scratch, &mut block, b0);
                });
                for r in 0..rows {
                    for c in 0..cols {
                        let got = out[r * cols + c] as f64;
                        let was = init[r * cols + c] as f64;
                        if !(b0..b0 + n_block).contains(&c) {
                            assert_eq!(got, was, "rows={rows} n={n_block} k={k} a{r} column {c}");
                            continue;
                        }
                        let j = c - b0;
                        let terms = (0..k).map(|i| w[j * k + i] as f64 * a[r * k + i] as f64);
                        let exact: f64 = was + terms.clone().sum::<f64>();
                        let norm: f64 = was.abs() + terms.map(f64::abs).sum::<f64>();
                        assert!(
                            (got - exact).abs() <= 1e-6 * norm,
                            "rows={rows} n={n_block} k={k} w{j} a{r}: {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }

    /// The last group's rows past the end are zeros, also when the worker's scratch held a
    /// full group before it (one thread and 41 groups: the pool hands one scratch several).
    #[test]
    fn packing_pads_the_last_group_with_zeros() {
        let pool = Pool::new(1);
        for (rows, k) in [(3, 2), (19, 9), (GROUP_ROWS * 40 + 3, 17)] {
            let acts = PackedActs::pack(&pool, rows, k, |r, dst| dst.fill(r as f32 + 1.0));
            assert_eq!(acts.columns.len(), rows.div_ceil(GROUP_ROWS) * k);
            for (g, group) in acts.columns.chunks_exact(k).enumerate() {
                for column in group {
                    for (i, &v) in column.iter().enumerate() {
                        let r = g * GROUP_ROWS + i;
                        let want = if r < rows { r as f32 + 1.0 } else { 0.0 };
                        assert_eq!(v, want, "rows={rows} k={k} group {g} row {i}");
                    }
                }
            }
        }
    }

    /// The CPU path's F16 widener against `half`'s conversion of each value: every row count
    /// of a panel, lengths with and without a tail past the last 8 columns, and the special
    /// values (infinities, NaN, subnormals, -0) compared bit for bit. Lanes past the rows are 0.
    #[test]
    fn f16_widening_matches_half() {
        let specials = [
            0x7c00u16, 0xfc00, 0x7e00, 0x0001, 0x03ff, 0x8000, 0x3c00, 0xc000,
        ];
        for n_rows in 0..=PANEL_ROWS {
            for len in [1, 7, 8, 9, 24, 37] {
                let rows: Vec<Vec<u8>> = (0..n_rows)
                    .map(|i| {
                        (0..len)
                            .flat_map(|c| {
                                let bits = if (i + c) % 5 == 0 {
                                    specials[(i * 3 + c) % specials.len()]
                                } else {
                                    half::f16::from_f32(((i * 31 + c * 7) % 97) as f32 - 48.5)
                                        .to_bits()
                                };
                                bits.to_le_bytes()
                            })
                            .collect()
                    })
                    .collect();
                let rows: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
                let mut panel = vec![PanelColumn([f32::NAN; PANEL_ROWS]); len];
                f16_widener()(&rows, &mut panel);
                for (c, column) in panel.iter().enumerate() {
                    for (i, &v) in column.0.iter().enumerate() {
                        let want = rows.get(i).map_or(0.0, |row| {
                            half::f16::from_le_bytes([row[2 * c], row[2 * c + 1]]).to_f32()
                        });
                        assert_eq!(
                            v.to_bits(),
                            want.to_bits(),
                            "{n_rows} rows of {len}: row {i} column {c}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "micro-kernel output tile out of bounds")]
    fn a_tile_past_its_slice_is_refused() {
        let mut c = vec![0f32; (GROUP_ROWS - 1) * 20 + PANEL_ROWS - 1];
        TileOut::in_slice(&mut c, 20);
    }
}
