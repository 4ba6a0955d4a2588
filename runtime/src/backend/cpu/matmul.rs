//! Matrix multiplication with quantized weights: `y = x · wᵀ`.
//!
//! The activations are quantized once per call to the format ggml pairs with the weight type
//! (Q8_0, Q8_1, Q8_K, F16, ...), then each worker takes a run of weight rows and dots every row
//! of it with every activation row, so each weight row is streamed from memory once per call
//! however many tokens are in the batch. The kernel for a weight type is chosen here, per call,
//! by [`kernel_for`]: scalar or SIMD, from the CPU path detected at run time. Where the path
//! has kernels for an interleaved layout of the type (`RowKernels::interleaved`), the weight's
//! interleaved copy is used instead of the mapped rows, 8 rows at a time.

use std::ops::Range;

use bytemuck::{cast_slice, cast_slice_mut};

use super::columns::{guided_runs, zeroed_by_column_runs};
use super::gemm::{self, PackedActs, PanelColumn, PANEL_ROWS};
use super::pool::Pool;
use super::{CpuTensor, CpuWeight};
use crate::quant::{self, GgmlType, RowKernels, WideOut, DOT_ROWS, TILE_ROWS, WIDE_TILE_ROWS};

/// Weight rows a worker multiplies by all the activations before moving on (see `matmul`),
/// with the tile kernels.
const WEIGHT_BLOCK_ROWS: usize = 16;
/// The same for widened batches: 6 panels of the f32 micro-kernel, 96 KB of widened weights
/// per column chunk (see `gemm::gemm`).
const WIDE_BLOCK_ROWS: usize = 6 * PANEL_ROWS;
/// The same for the integer GEMM of interleaved weights: 8 groups, 147 KB of 4096-wide Q4_0
/// in L2, while each tile of 4 activation rows (17 KB of Q8_0) passes over them from L1.
const INTERLEAVED_BLOCK_ROWS: usize = 8 * DOT_ROWS;
/// The fewest activation rows that are widened (where the type widens at all): below it, the
/// cost of widening a weight block is not shared by enough rows.
const WIDEN_MIN_ROWS: usize = 4;

/// How to multiply by weights of one type: the activation format, its quantizer, and the dot.
pub(super) type Kernel = RowKernels;

/// The kernel for a weight type, or `None` if the type cannot be multiplied with: the SIMD
/// kernels of the process's CPU path where it has them (the best the CPU offers, unless
/// `LLAVA_CPU` says otherwise; see `quant::dispatch`), else the scalar reference.
pub(super) fn kernel_for(ty: GgmlType) -> Option<Kernel> {
    quant::row_kernels(ty, quant::cpu_path())
}

/// How a matmul runs its batch: the kernel choice, made in one place from what the weight's
/// kernels offer and how many activation rows there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Strategy {
    /// Every row through the packed f32 GEMM, the weights widened block by block.
    Widened,
    /// Whole tiles of [`TILE_ROWS`] rows through the integer GEMM of interleaved weights.
    InterleavedGemm,
    /// Whole tiles of [`TILE_ROWS`] rows through the tile kernel (K-quants).
    Tiles,
    /// Every row on its own (decode): the row kernels.
    Rows,
}

/// What a weight type's kernels offer, as [`plan`] needs it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Offers {
    /// The type can be widened to f32 for the packed GEMM.
    pub widen: bool,
    /// The weight is interleaved and the path has an integer GEMM for it.
    pub interleaved_gemm: bool,
    /// The path has a tile kernel for the type.
    pub tile: bool,
}

/// A matmul's plan: the strategy, how many rows it takes (the rest go row by row), and how
/// many weight rows a worker multiplies by all of them before moving on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Plan {
    pub strategy: Strategy,
    pub batch_rows: usize,
    pub block_rows: usize,
}

/// The plan for `rows` activation rows: widened batches from [`WIDEN_MIN_ROWS`] rows (unless
/// the weight has an interleaved GEMM, which wins), else whole tiles of [`TILE_ROWS`], else row
/// by row. A pure function, so the choice is tested on its own.
pub(super) fn plan(offers: Offers, rows: usize) -> Plan {
    let tiles = rows / TILE_ROWS * TILE_ROWS;
    let strategy = if offers.interleaved_gemm {
        if tiles > 0 {
            Strategy::InterleavedGemm
        } else {
            Strategy::Rows
        }
    } else if offers.widen && rows >= WIDEN_MIN_ROWS {
        Strategy::Widened
    } else if offers.tile && tiles > 0 {
        Strategy::Tiles
    } else {
        Strategy::Rows
    };
    let batch_rows = match strategy {
        Strategy::Widened => rows,
        Strategy::InterleavedGemm | Strategy::Tiles => tiles,
        Strategy::Rows => 0,
    };
    // Interleaved weights keep their block size for the rows of a decode too (column runs of
    // whole groups either way).
    let block_rows = match strategy {
        Strategy::Widened => WIDE_BLOCK_ROWS,
        _ if offers.interleaved_gemm => INTERLEAVED_BLOCK_ROWS,
        _ => WEIGHT_BLOCK_ROWS,
    };
    Plan {
        strategy,
        batch_rows,
        block_rows,
    }
}

pub(super) fn matmul(pool: &Pool, x: &CpuTensor, w: &CpuWeight) -> CpuTensor {
    let k = w.row_len();
    let n_out = w.n_rows();
    assert_eq!(
        x.cols, k,
        "matmul: activations have {} columns, weight rows have {k}",
        x.cols
    );
    let kernel = kernel_for(w.ggml_type()).expect("weight type checked at load");
    let w_row_bytes = w.ggml_type().row_bytes(k as u64).expect("checked at load") as usize;
    let a_row_bytes = kernel
        .act_type
        .row_bytes(k as u64)
        .expect("activation rows are whole blocks when weight rows are")
        as usize;

    // Each activation row starts on a 4-byte boundary, as its block structs require.
    let a_stride_words = a_row_bytes.div_ceil(4);
    let mut act = vec![0u32; x.rows * a_stride_words];
    pool.for_each_chunk(&mut act, a_stride_words, |r, dst| {
        (kernel.quantize)(x.row(r), &mut cast_slice_mut(dst)[..a_row_bytes])
    });
    let act_bytes: &[u8] = cast_slice(&act);
    let act_row = |r: usize| &act_bytes[r * a_stride_words * 4..][..a_row_bytes];
    // Interleaved weights (`CpuWeight::interleaved`) where the path has kernels for them: row
    // `j` is then row `j % DOT_ROWS` of group `j / DOT_ROWS`, and `w_row` is not used.
    let interleaved = kernel
        .interleaved
        .as_ref()
        .and_then(|how| Some((how, w.interleaved(how, pool)?)));
    let weights = interleaved.map_or_else(|| w.data(), |(_, data)| data);
    let group_bytes = interleaved.map_or(0, |(how, _)| (how.group_bytes)(w_row_bytes));
    let group = |j: usize| &weights[j / DOT_ROWS * group_bytes..][..group_bytes];
    let rows = x.rows;
    let w_row = |j: usize| &weights[j * w_row_bytes..][..w_row_bytes];
    // Widened batches: the activations as f32 (exactly the quantized values), packed for the
    // micro-kernel once per call.
    // Interleaved weights have an integer GEMM of their own instead.
    let interleaved_gemm = interleaved.map(|(how, _)| how.gemm);
    let plan = plan(
        Offers {
            widen: kernel.widen_batches,
            interleaved_gemm: interleaved_gemm.is_some(),
            tile: kernel.dot_tile.is_some(),
        },
        rows,
    );
    let n_blocks = k / kernel.act_type.block_size();
    // Where the interleaved GEMM has a wider kernel, the batch's first `wide_rows` rows (whole
    // tiles of WIDE_TILE_ROWS) are packed for it, once per call; the rest of the batch takes
    // the TILE_ROWS kernel.
    let wide = interleaved
        .and_then(|(how, _)| how.wide)
        .filter(|_| plan.strategy == Strategy::InterleavedGemm && n_blocks > 0);
    let wide_rows = wide.map_or(0, |_| plan.batch_rows / WIDE_TILE_ROWS * WIDE_TILE_ROWS);
    let wide_tile_words = wide.map_or(0, |wide| (wide.packed_bytes)(n_blocks).div_ceil(4));
    let mut wide_tiles = Vec::new();
    if let Some(wide) = wide {
        wide_tiles = vec![0u32; wide_rows / WIDE_TILE_ROWS * wide_tile_words];
        pool.for_each_chunk(&mut wide_tiles, wide_tile_words, |t, dst| {
            let rows = std::array::from_fn(|n| act_row(t * WIDE_TILE_ROWS + n));
            (wide.pack)(rows, cast_slice_mut(dst));
        });
    }
    // The TILE_ROWS kernel's activation block sums, once per call (not per group of weight
    // rows), for the rows after the wide tiles.
    let mut block_sums = Vec::new();
    if plan.strategy == Strategy::InterleavedGemm {
        block_sums = vec![quant::ActBlockSum::default(); (rows - wide_rows) * n_blocks];
        pool.for_each_chunk(&mut block_sums, n_blocks.max(1), |i, out| {
            quant::act_block_sums(kernel.act_type, act_row(wide_rows + i), out)
                .expect("interleaved kernels take Q8_0 or Q8_K activations");
        });
    }
    let act_sums = |r: usize| &block_sums[(r - wide_rows) * n_blocks..][..n_blocks];
    let packed = (plan.strategy == Strategy::Widened).then(|| {
        PackedActs::pack(pool, rows, k, |r, dst| {
            quant::dequantize_row(kernel.act_type, act_row(r), dst)
                .expect("quantized by the same kernel table")
        })
    });
    let micro = gemm::micro_kernel();
    let widen_f16 = (w.ggml_type() == GgmlType::F16).then(gemm::f16_widener);
    const {
        assert!(
            WIDE_BLOCK_ROWS.is_multiple_of(DOT_ROWS)
                && WEIGHT_BLOCK_ROWS.is_multiple_of(DOT_ROWS)
                && INTERLEAVED_BLOCK_ROWS.is_multiple_of(DOT_ROWS)
        )
    };
    // Rows of activations the batch kernel takes; the rest are dotted one by one (8
    // interleaved rows at a time where the weights are).
    let (tiled_rows, block_rows) = (plan.batch_rows, plan.block_rows);
    // The output in its final layout, [rows, n_out]: each task writes a run of columns
    // (weight rows) of every row, whole blocks (so whole groups of DOT_ROWS for the interleaved
    // weights, whole panels for the widened ones) except at the end of the weight.
    let runs = guided_runs(n_out, block_rows, pool.threads());
    let out = zeroed_by_column_runs(pool, rows, n_out, &runs, |first, mut cols| {
        let mut scratch = gemm::Scratch::default();
        // A block of weight rows (37 KB of 4096-wide Q4_K) stays in L2 while every tile of
        // activation rows (19 KB of Q8_K) passes over it from L1: the weights are read from
        // memory once per call, the activations from L3 once per block.
        for b0 in (0..cols.width()).step_by(block_rows) {
            let block_first = first + b0;
            let n_block = block_rows.min(cols.width() - b0);
            if let (Strategy::Widened, Some(acts)) = (plan.strategy, &packed) {
                let ty = w.ggml_type();
                let widen = |rows: Range<usize>,
                             range: Range<usize>,
                             panel: &mut [PanelColumn],
                             buf: &mut Vec<f32>| {
                    let offset = ty.row_bytes(range.start as u64).expect("whole blocks") as usize;
                    let len = ty.row_bytes(range.len() as u64).expect("whole blocks") as usize;
                    let src = |j: usize| &w_row(block_first + j)[offset..][..len];
                    if let Some(widen_f16) = widen_f16 {
                        let mut srcs = [&[][..]; PANEL_ROWS];
                        for (s, j) in srcs.iter_mut().zip(rows.clone()) {
                            *s = src(j);
                        }
                        widen_f16(&srcs[..rows.len()], panel);
                    } else {
                        gemm::widen_rows(rows, panel, buf, |j, dst| {
                            quant::dequantize_row(ty, src(j), dst).expect("type checked at load")
                        });
                    }
                };
                // Tiles go straight into `out`, which starts at zero.
                gemm::gemm(micro, n_block, acts, widen, &mut scratch, &mut cols, b0);
            } else if let (Strategy::InterleavedGemm, Some(gemm)) =
                (plan.strategy, interleaved_gemm)
            {
                if let Some(wide) = wide {
                    // Up to `wide.groups` consecutive groups per call (fewer at a weight's end).
                    let step = wide.groups * DOT_ROWS;
                    let mut sums: WideOut = Default::default();
                    for (t, tile) in wide_tiles.chunks_exact(wide_tile_words).enumerate() {
                        for g in (0..n_block).step_by(step) {
                            let width = step.min(n_block - g);
                            let first = (block_first + g) / DOT_ROWS * group_bytes;
                            let groups = &weights[first..][..width / DOT_ROWS * group_bytes];
                            (wide.gemm)(groups, cast_slice(tile), &mut sums);
                            for (n, sums) in sums.iter().enumerate() {
                                let r = t * WIDE_TILE_ROWS + n;
                                cols.row(r)[b0 + g..][..width].copy_from_slice(&sums[..width]);
                            }
                        }
                    }
                }
                for r in (wide_rows..tiled_rows).step_by(TILE_ROWS) {
                    let acts = std::array::from_fn(|i| act_row(r + i));
                    let act_sums = std::array::from_fn(|i| act_sums(r + i));
                    for g in (0..n_block).step_by(DOT_ROWS) {
                        let sums = gemm(group(block_first + g), acts, act_sums);
                        for (n, sums) in sums.iter().enumerate() {
                            cols.row(r + n)[b0 + g..][..DOT_ROWS].copy_from_slice(sums);
                        }
                    }
                }
            } else if let (Strategy::Tiles, Some(dot_tile)) = (plan.strategy, kernel.dot_tile) {
                for r in (0..tiled_rows).step_by(TILE_ROWS) {
                    let acts = std::array::from_fn(|i| act_row(r + i));
                    for j in 0..n_block {
                        let sums = dot_tile(w_row(block_first + j), acts);
                        for (n, &sum) in sums.iter().enumerate() {
                            cols.row(r + n)[b0 + j] = sum;
                        }
                    }
                }
            }
            // The rest (all of decode), one activation row at a time: DOT_ROWS weight rows at
            // a time where the path has a kernel for it, else one by one.
            for r in tiled_rows..rows {
                let a = act_row(r);
                let out_row = &mut cols.row(r)[b0..b0 + n_block];
                let mut j = 0;
                if let Some((how, _)) = interleaved {
                    // Blocks and column runs are whole groups: runs are whole blocks but at
                    // the weight's end, and an interleaved weight has whole groups.
                    for (g, out) in out_row.chunks_exact_mut(DOT_ROWS).enumerate() {
                        out.copy_from_slice(&(how.dot)(group(block_first + g * DOT_ROWS), a));
                    }
                    continue;
                }
                if let Some(dot_rows) = kernel.dot_rows {
                    while j + DOT_ROWS <= n_block {
                        let sums = dot_rows(std::array::from_fn(|i| w_row(block_first + j + i)), a);
                        out_row[j..j + DOT_ROWS].copy_from_slice(&sums);
                        j += DOT_ROWS;
                    }
                }
                for (j, out) in out_row.iter_mut().enumerate().skip(j) {
                    *out = (kernel.dot)(w_row(block_first + j), a);
                }
            }
        }
    });
    CpuTensor::new(out, rows, n_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers(widen: bool, interleaved_gemm: bool, tile: bool) -> Offers {
        Offers {
            widen,
            interleaved_gemm,
            tile,
        }
    }

    #[test]
    fn the_batch_kernel_is_chosen_by_what_the_type_offers_and_the_rows() {
        use Strategy::*;
        let p = |o, rows| {
            let p = plan(o, rows);
            (p.strategy, p.batch_rows, p.block_rows)
        };
        // F16 (a CLIP tower): widened from 4 rows, all rows in the GEMM.
        let f16 = offers(true, false, false);
        assert_eq!(p(f16, 577), (Widened, 577, WIDE_BLOCK_ROWS));
        assert_eq!(p(f16, 3), (Rows, 0, WEIGHT_BLOCK_ROWS));
        // Interleaved Q4_0 on x86: the integer GEMM takes whole tiles, even where the type
        // could widen; a decode row keeps the interleaved block size.
        let q4_0 = offers(true, true, false);
        assert_eq!(p(q4_0, 7), (InterleavedGemm, 4, INTERLEAVED_BLOCK_ROWS));
        assert_eq!(p(q4_0, 1), (Rows, 0, INTERLEAVED_BLOCK_ROWS));
        // K-quants with tile kernels: whole tiles, the rest row by row.
        let q4_k = offers(false, false, true);
        assert_eq!(p(q4_k, 10), (Tiles, 8, WEIGHT_BLOCK_ROWS));
        assert_eq!(p(q4_k, 2), (Rows, 0, WEIGHT_BLOCK_ROWS));
        // Nothing but row kernels.
        assert_eq!(
            p(offers(false, false, false), 512),
            (Rows, 0, WEIGHT_BLOCK_ROWS)
        );
    }
}
