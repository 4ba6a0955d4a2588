//! Q4_1: 32 elements as 4-bit unsigned steps above an f16 minimum (5 bits per weight).
//!
//! Layout and algorithms: ggml `block_q4_1`, `quantize_row_q4_1_reference`,
//! `dequantize_row_q4_1`, and the scalar branch of `ggml_vec_dot_q4_1_q8_1`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{
    assert_dot_len, assert_row_len, trunc_to_i8, BlockFormat, BlockQ8_1, GgmlType, VecDot,
};

const QK: usize = 32;

/// Nibbles as in Q4_0 (element `j` low, `j + 16` high in `qs[j]`), unsigned:
/// `x = nibble · d + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// The block's scale: the size of one step.
    pub d: f16,
    /// The block's minimum: the value of quant 0.
    pub m: f16,
    /// The 32 quants, two per byte (layout above).
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == GgmlType::Q4_1.type_size());
const _: () = assert!(GgmlType::Q4_1.block_size() == QK);

/// ggml's min/max scan for the affine formats: starts from ±FLT_MAX, so NaNs are skipped.
pub(super) fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

impl BlockFormat for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;

    fn quantize_row(src: &[f32], dst: &mut [Self]) {
        assert_row_len::<Self>(dst.len(), src.len());
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK)) {
            let (min, max) = min_max(x);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            block.d = f16::from_f32(d);
            // The unrounded f32 min is used below; only the stored copy is rounded to f16.
            block.m = f16::from_f32(min);
            for j in 0..QK / 2 {
                let lo = trunc_to_i8((x[j] - min) * id + 0.5).min(15) as u8;
                let hi = trunc_to_i8((x[j + QK / 2] - min) * id + 0.5).min(15) as u8;
                block.qs[j] = lo | (hi << 4);
            }
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        assert_row_len::<Self>(src.len(), dst.len());
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
            let d = block.d.to_f32();
            let m = block.m.to_f32();
            for j in 0..QK / 2 {
                // Multiply, round, add, round: no fused multiply-add (see mod.rs).
                y[j] = f32::from(block.qs[j] & 0x0f) * d + m;
                y[j + QK / 2] = f32::from(block.qs[j] >> 4) * d + m;
            }
        }
    }
}

impl VecDot for BlockQ4_1 {
    type Activation = BlockQ8_1;

    fn vec_dot(weights: &[Self], activations: &[BlockQ8_1]) -> f32 {
        assert_dot_len(weights, activations);
        let mut sum = 0f32;
        for (x, y) in weights.iter().zip(activations) {
            let mut sumi = 0i32;
            for j in 0..QK / 2 {
                let lo = i32::from(x.qs[j] & 0x0f);
                let hi = i32::from(x.qs[j] >> 4);
                sumi += lo * i32::from(y.qs[j]) + hi * i32::from(y.qs[j + QK / 2]);
            }
            // The min contributes m · Σ(q8 · d8), which Q8_1 carries precomputed in `s`.
            sum += (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32();
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_and_max_map_to_nibbles_zero_and_fifteen() {
        let x: Vec<f32> = (0..QK).map(|i| i as f32 - 2.0).collect();
        let mut block = [BlockQ4_1::zeroed()];
        BlockQ4_1::quantize_row(&x, &mut block);
        assert_eq!(block[0].m.to_f32(), -2.0);
        assert_eq!(block[0].qs[0] & 0x0f, 0);
        assert_eq!(block[0].qs[QK / 2 - 1] >> 4, 15);
    }
}
