//! Matrix multiplication with quantized weights: `y = x · wᵀ`.
//!
//! The activations are quantized once per call to the format ggml pairs with the weight type
//! (Q8_0, Q8_1, Q8_K, F16, ...), then each worker takes a run of weight rows and dots every row
//! of it with every activation row, so each weight row is streamed from memory once per call
//! however many tokens are in the batch. The kernel for a weight type is chosen here, per call,
//! by [`kernel_for`]: scalar or SIMD, from the CPU path detected at run time.

use bytemuck::{cast_slice, cast_slice_mut};
use rayon::prelude::*;

use super::vector::{vector_ops, VectorOps, GEMM_ROWS, GEMM_W_ROWS};
use super::{chunk_len, par_chunks, CpuTensor, CpuWeight};
use crate::quant::{self, GgmlType, RowKernels, TILE_ROWS};

/// Weight rows a worker multiplies by all the activations before moving on (see `matmul`).
const WEIGHT_BLOCK_ROWS: usize = 16;

/// How to multiply by weights of one type: the activation format, its quantizer, and the dot.
pub(super) type Kernel = RowKernels;

/// The kernel for a weight type, or `None` if the type cannot be multiplied with: the SIMD
/// kernels of the process's CPU path where it has them (the best the CPU offers, unless
/// `LLAVA_CPU` says otherwise; see `quant::dispatch`), else the scalar reference.
pub(super) fn kernel_for(ty: GgmlType) -> Option<Kernel> {
    quant::row_kernels(ty, quant::cpu_path())
}

pub(super) fn matmul(x: &CpuTensor, w: &CpuWeight) -> CpuTensor {
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
    act.par_chunks_mut(a_stride_words)
        .zip(x.data.par_chunks(k))
        .for_each(|(dst, src)| (kernel.quantize)(src, &mut cast_slice_mut(dst)[..a_row_bytes]));
    let act_bytes: &[u8] = cast_slice(&act);
    let act_row = |r: usize| &act_bytes[r * a_stride_words * 4..][..a_row_bytes];
    let weights = w.data();
    let rows = x.rows;
    let w_row = |j: usize| &weights[j * w_row_bytes..][..w_row_bytes];
    // Widened batches: the activations as f32 (exactly the quantized values), once per call.
    let widened: Option<Vec<f32>> = (kernel.widen_batches && rows >= GEMM_ROWS).then(|| {
        let mut wide = vec![0f32; rows * k];
        wide.par_chunks_mut(k).enumerate().for_each(|(r, dst)| {
            quant::dequantize_row(kernel.act_type, act_row(r), dst)
                .expect("quantized by the same kernel table")
        });
        wide
    });
    let ops = vector_ops();
    // Rows of activations the tile kernel or the widened GEMM take; the rest are dotted one
    // by one.
    let tiled_rows = match (&widened, kernel.dot_tile) {
        (Some(_), _) => rows / GEMM_ROWS * GEMM_ROWS,
        (None, Some(_)) => rows / TILE_ROWS * TILE_ROWS,
        (None, None) => 0,
    };
    // Output transposed, [n_out, rows]: a worker's run of weight rows is one contiguous slice.
    let mut out_t = vec![0f32; n_out * rows];
    let chunk = chunk_len(n_out) * rows;
    par_chunks(&mut out_t, chunk, |start, out| {
        let first = start / rows;
        let mut wide_w = Vec::new();
        // A block of weight rows (37 KB of 4096-wide Q4_K) stays in L2 while every tile of
        // activation rows (19 KB of Q8_K) passes over it from L1: the weights are read from
        // memory once per call, the activations from L3 once per block.
        for (b, out_block) in out.chunks_mut(WEIGHT_BLOCK_ROWS * rows).enumerate() {
            let block_first = first + b * WEIGHT_BLOCK_ROWS;
            let n_block = out_block.len() / rows;
            if let Some(wide_a) = &widened {
                wide_w.resize(n_block * k, 0f32);
                for (j, dst) in wide_w.chunks_exact_mut(k).enumerate() {
                    quant::dequantize_row(w.ggml_type(), w_row(block_first + j), dst)
                        .expect("type checked at load");
                }
                gemm_widened(&ops, &wide_w, wide_a, k, tiled_rows, out_block);
            } else if let Some(dot_tile) = kernel.dot_tile {
                for r in (0..tiled_rows).step_by(TILE_ROWS) {
                    let acts = std::array::from_fn(|i| act_row(r + i));
                    for (j, out_j) in out_block.chunks_exact_mut(rows).enumerate() {
                        out_j[r..r + TILE_ROWS]
                            .copy_from_slice(&dot_tile(w_row(block_first + j), acts));
                    }
                }
            }
            for (j, out_j) in out_block.chunks_exact_mut(rows).enumerate() {
                for (r, o) in out_j.iter_mut().enumerate().skip(tiled_rows) {
                    *o = (kernel.dot)(w_row(block_first + j), act_row(r));
                }
            }
        }
    });

    if rows == 1 {
        return CpuTensor::new(out_t, 1, n_out);
    }
    // Back to [rows, n_out], a block of output rows per task: each reads a short contiguous
    // run of every column of `out_t` (the scattered single-thread loop this replaces was 6% of
    // the vision tower).
    const TRANSPOSE_ROWS: usize = 16;
    let mut out = vec![0f32; rows * n_out];
    out.par_chunks_mut(TRANSPOSE_ROWS * n_out)
        .enumerate()
        .for_each(|(b, block)| {
            let r0 = b * TRANSPOSE_ROWS;
            let n_rows = block.len() / n_out;
            for (j, col) in out_t.chunks_exact(rows).enumerate() {
                for (i, &v) in col[r0..r0 + n_rows].iter().enumerate() {
                    block[i * n_out + j] = v;
                }
            }
        });
    CpuTensor::new(out, rows, n_out)
}

/// The first `tiled_rows` activation rows of `wide_a` (`[rows, k]`) against a block of weight
/// rows widened to f32 (`wide_w`, `[n_block, k]`), into `out_block` (`[n_block, rows]`), with
/// the f32 micro-kernel: [`GEMM_W_ROWS`] weight rows by [`GEMM_ROWS`] activation rows at a
/// time. (Splitting the rows into 256-column chunks, to keep the block in L1, was 25% slower:
/// the per-call horizontal sums cost more than L2 reads.)
fn gemm_widened(
    ops: &VectorOps,
    wide_w: &[f32],
    wide_a: &[f32],
    k: usize,
    tiled_rows: usize,
    out_block: &mut [f32],
) {
    let n_block = wide_w.len() / k;
    let rows = out_block.len() / n_block;
    let w_row = |j: usize| &wide_w[j * k..(j + 1) * k];
    for r in (0..tiled_rows).step_by(GEMM_ROWS) {
        let acts = std::array::from_fn(|i| &wide_a[(r + i) * k..(r + i + 1) * k]);
        for j0 in (0..n_block).step_by(GEMM_W_ROWS) {
            // A short last group repeats its last row; those results are dropped.
            let js: [usize; GEMM_W_ROWS] = std::array::from_fn(|i| (j0 + i).min(n_block - 1));
            let sums = (ops.gemm)(js.map(w_row), acts);
            for (i, sums) in sums.iter().enumerate().take(n_block - j0) {
                out_block[(j0 + i) * rows + r..][..GEMM_ROWS].copy_from_slice(sums);
            }
        }
    }
}
