//! Q8_1: Q8_0 plus the block's scaled sum, the activation format for Q4_1 and Q5_1 weights
//! (9 bits per element). Never stored in model files.
//!
//! Layout and algorithms: ggml `block_q8_1` and `quantize_row_q8_1_reference`. ggml has no
//! `dequantize_row_q8_1`; ours expands `qs · d` as Q8_0 does.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::q8_0::quantize_q8_block;
use super::{assert_row_len, BlockFormat, GgmlType};

const QK: usize = 32;

/// `x = qs[i] · d`; `s = d · Σ qs` lets an affine weight format (`x = q·d + m`) add its min
/// term `m · s` once per block instead of once per element.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_1 {
    /// The block's scale.
    pub d: f16,
    /// `d` times the sum of the 32 quants.
    pub s: f16,
    /// The 32 quants.
    pub qs: [i8; QK],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == GgmlType::Q8_1.type_size());
const _: () = assert!(GgmlType::Q8_1.block_size() == QK);

impl BlockFormat for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;

    fn quantize_row(src: &[f32], dst: &mut [Self]) {
        assert_row_len::<Self>(dst.len(), src.len());
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK)) {
            let d = quantize_q8_block(x, &mut block.qs);
            let sum: i32 = block.qs.iter().map(|&q| i32::from(q)).sum();
            block.d = f16::from_f32(d);
            // The sum is scaled by the f32 d, before d is rounded to f16.
            block.s = f16::from_f32(sum as f32 * d);
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        assert_row_len::<Self>(src.len(), dst.len());
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
            let d = block.d.to_f32();
            for (out, &q) in y.iter_mut().zip(&block.qs) {
                *out = f32::from(q) * d;
            }
        }
    }
}
