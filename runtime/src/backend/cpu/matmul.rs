//! Matrix multiplication with quantized weights: `y = x · wᵀ`.
//!
//! The activations are quantized once per call to the format ggml pairs with the weight type
//! (Q8_0, Q8_1, Q8_K, F16, ...), then each worker takes a run of weight rows and dots every row
//! of it with every activation row, so each weight row is streamed from memory once per call
//! however many tokens are in the batch. The kernel for a weight type is chosen once, here, by
//! [`kernel_for`]: the place where SIMD kernels will be selected at run time.

use bytemuck::{cast_slice, cast_slice_mut};
use half::{bf16, f16};
use rayon::prelude::*;

use super::{chunk_len, par_chunks, CpuTensor, CpuWeight};
use crate::quant::{
    BlockFormat, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0,
    BlockQ5_1, BlockQ6K, BlockQ8_0, GgmlType, VecDot,
};

/// How to multiply by weights of one type.
#[derive(Clone, Copy)]
pub(super) struct Kernel {
    /// The type activations are quantized to.
    pub act_type: GgmlType,
    /// Quantizes one f32 row into `act_type` bytes.
    pub quantize: fn(&[f32], &mut [u8]),
    /// Dot product of one weight row with one quantized activation row (both as bytes).
    pub dot: fn(&[u8], &[u8]) -> f32,
}

fn quantize_as<W: VecDot>(src: &[f32], dst: &mut [u8]) {
    W::Activation::quantize_row(src, cast_slice_mut(dst));
}

fn dot_as<W: VecDot>(w: &[u8], a: &[u8]) -> f32 {
    W::vec_dot(cast_slice(w), cast_slice(a))
}

fn kernel<W: VecDot>() -> Kernel {
    Kernel {
        act_type: W::Activation::TYPE,
        quantize: quantize_as::<W>,
        dot: dot_as::<W>,
    }
}

/// The kernel for a weight type, or `None` if the type cannot be multiplied with.
pub(super) fn kernel_for(ty: GgmlType) -> Option<Kernel> {
    use GgmlType::*;
    Some(match ty {
        F32 => kernel::<f32>(),
        F16 => kernel::<f16>(),
        BF16 => kernel::<bf16>(),
        Q4_0 => kernel::<BlockQ4_0>(),
        Q4_1 => kernel::<BlockQ4_1>(),
        Q5_0 => kernel::<BlockQ5_0>(),
        Q5_1 => kernel::<BlockQ5_1>(),
        Q8_0 => kernel::<BlockQ8_0>(),
        Q2K => kernel::<BlockQ2K>(),
        Q3K => kernel::<BlockQ3K>(),
        Q4K => kernel::<BlockQ4K>(),
        Q5K => kernel::<BlockQ5K>(),
        Q6K => kernel::<BlockQ6K>(),
        _ => return None,
    })
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
    // Output transposed, [n_out, rows]: a worker's run of weight rows is one contiguous slice.
    let mut out_t = vec![0f32; n_out * rows];
    let chunk = chunk_len(n_out) * rows;
    par_chunks(&mut out_t, chunk, |start, out| {
        let first = start / rows;
        for (j, out_j) in out.chunks_exact_mut(rows).enumerate() {
            let w_row = &weights[(first + j) * w_row_bytes..][..w_row_bytes];
            for (r, o) in out_j.iter_mut().enumerate() {
                *o = (kernel.dot)(w_row, act_row(r));
            }
        }
    });

    if rows == 1 {
        return CpuTensor::new(out_t, 1, n_out);
    }
    let mut out = vec![0f32; rows * n_out];
    for (j, col) in out_t.chunks_exact(rows).enumerate() {
        for (r, &v) in col.iter().enumerate() {
            out[r * n_out + j] = v;
        }
    }
    CpuTensor::new(out, rows, n_out)
}
