//! Q5_1: 32 elements as 5-bit unsigned steps above an f16 minimum (6 bits per weight).
//!
//! Layout and algorithms: ggml `block_q5_1`, `quantize_row_q5_1_reference`,
//! `dequantize_row_q5_1`, and the scalar branch of `ggml_vec_dot_q5_1_q8_1`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::q4_1::min_max;
use super::q5_0::{put_q5_pair, q5_pair};
use super::{assert_dot_len, assert_row_len, BlockFormat, BlockQ8_1, GgmlType, VecDot};

const QK: usize = 32;

/// Bits laid out as in Q5_0; unsigned: `x = q5 · d + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_1 {
    /// The block's scale: the size of one step.
    pub d: f16,
    /// The block's minimum: the value of quant 0.
    pub m: f16,
    /// The fifth (high) bit of each of the 32 quants, element `i` in bit `i` of the little-endian
    /// u32.
    pub qh: [u8; 4],
    /// The low 4 bits of the 32 quants, two per byte.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == GgmlType::Q5_1.type_size());
const _: () = assert!(GgmlType::Q5_1.block_size() == QK);

impl BlockFormat for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;

    fn quantize_row(src: &[f32], dst: &mut [Self]) {
        assert_row_len::<Self>(dst.len(), src.len());
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK)) {
            let (min, max) = min_max(x);
            let d = (max - min) / 31.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            block.d = f16::from_f32(d);
            block.m = f16::from_f32(min);
            let mut qh = 0u32;
            for j in 0..QK / 2 {
                // Unlike Q4_1, ggml applies no clamp here: (max - min)·id + 0.5 stays below 32.
                let lo = ((x[j] - min) * id + 0.5) as i32 as u8;
                let hi = ((x[j + QK / 2] - min) * id + 0.5) as i32 as u8;
                put_q5_pair(&mut block.qs, &mut qh, j, lo, hi);
            }
            block.qh = qh.to_le_bytes();
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        assert_row_len::<Self>(src.len(), dst.len());
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
            let d = block.d.to_f32();
            let m = block.m.to_f32();
            let qh = u32::from_le_bytes(block.qh);
            for j in 0..QK / 2 {
                let (lo, hi) = q5_pair(&block.qs, qh, j);
                y[j] = f32::from(lo) * d + m;
                y[j + QK / 2] = f32::from(hi) * d + m;
            }
        }
    }
}

impl VecDot for BlockQ5_1 {
    type Activation = BlockQ8_1;

    fn vec_dot(weights: &[Self], activations: &[BlockQ8_1]) -> f32 {
        assert_dot_len(weights, activations);
        let mut sum = 0f32;
        for (x, y) in weights.iter().zip(activations) {
            let qh = u32::from_le_bytes(x.qh);
            let mut sumi = 0i32;
            for j in 0..QK / 2 {
                let (lo, hi) = q5_pair(&x.qs, qh, j);
                sumi += i32::from(lo) * i32::from(y.qs[j])
                    + i32::from(hi) * i32::from(y.qs[j + QK / 2]);
            }
            sum += (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32();
        }
        sum
    }
}
