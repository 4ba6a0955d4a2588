//! Q5_0: 32 elements as 5-bit signed steps of one f16 scale (5.5 bits per weight).
//!
//! Layout and algorithms: ggml `block_q5_0`, `quantize_row_q5_0_reference`,
//! `dequantize_row_q5_0`, and the scalar branch of `ggml_vec_dot_q5_0_q8_0`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{
    assert_dot_len, assert_row_len, signed_abs_max, trunc_to_i8, BlockFormat, BlockQ8_0, GgmlType,
    VecDot,
};

const QK: usize = 32;

/// Low nibbles as in Q4_0 (element `j` low, `j + 16` high in `qs[j]`); `qh`, read as a
/// little-endian u32, holds the fifth bit of element `i` in bit `i`. `x = (q5 - 16) · d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_0 {
    /// The block's scale.
    pub d: f16,
    /// The fifth (high) bit of each of the 32 quants, element `i` in bit `i` of the little-endian
    /// u32.
    pub qh: [u8; 4],
    /// The low 4 bits of the 32 quants, two per byte.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == GgmlType::Q5_0.type_size());
const _: () = assert!(GgmlType::Q5_0.block_size() == QK);

/// The 5-bit values of elements `j` and `j + 16` from a 32-element block with split high bits.
#[inline]
pub(super) fn q5_pair(qs: &[u8; QK / 2], qh: u32, j: usize) -> (u8, u8) {
    let lo = (qs[j] & 0x0f) | ((((qh >> j) << 4) & 0x10) as u8);
    let hi = (qs[j] >> 4) | (((qh >> (j + 12)) & 0x10) as u8);
    (lo, hi)
}

/// Store the 5-bit values `lo` (element `j`) and `hi` (element `j + 16`).
#[inline]
pub(super) fn put_q5_pair(qs: &mut [u8; QK / 2], qh: &mut u32, j: usize, lo: u8, hi: u8) {
    qs[j] = (lo & 0x0f) | ((hi & 0x0f) << 4);
    *qh |= u32::from((lo & 0x10) >> 4) << j;
    *qh |= u32::from((hi & 0x10) >> 4) << (j + QK / 2);
}

impl BlockFormat for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;

    fn quantize_row(src: &[f32], dst: &mut [Self]) {
        assert_row_len::<Self>(dst.len(), src.len());
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK)) {
            // As Q4_0, one bit wider: the extreme maps to exactly -16.
            let d = signed_abs_max(x) / -16.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            block.d = f16::from_f32(d);
            let mut qh = 0u32;
            for j in 0..QK / 2 {
                let lo = trunc_to_i8(x[j] * id + 16.5).min(31) as u8;
                let hi = trunc_to_i8(x[j + QK / 2] * id + 16.5).min(31) as u8;
                put_q5_pair(&mut block.qs, &mut qh, j, lo, hi);
            }
            block.qh = qh.to_le_bytes();
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        assert_row_len::<Self>(src.len(), dst.len());
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
            let d = block.d.to_f32();
            let qh = u32::from_le_bytes(block.qh);
            for j in 0..QK / 2 {
                let (lo, hi) = q5_pair(&block.qs, qh, j);
                y[j] = (i32::from(lo) - 16) as f32 * d;
                y[j + QK / 2] = (i32::from(hi) - 16) as f32 * d;
            }
        }
    }
}

impl VecDot for BlockQ5_0 {
    type Activation = BlockQ8_0;

    fn vec_dot(weights: &[Self], activations: &[BlockQ8_0]) -> f32 {
        assert_dot_len(weights, activations);
        let mut sum = 0f32;
        for (x, y) in weights.iter().zip(activations) {
            let qh = u32::from_le_bytes(x.qh);
            let mut sumi = 0i32;
            for j in 0..QK / 2 {
                let (lo, hi) = q5_pair(&x.qs, qh, j);
                sumi += (i32::from(lo) - 16) * i32::from(y.qs[j])
                    + (i32::from(hi) - 16) * i32::from(y.qs[j + QK / 2]);
            }
            sum += (x.d.to_f32() * y.d.to_f32()) * sumi as f32;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifth_bits_are_little_endian_bit_per_element() {
        let mut qs = [0u8; QK / 2];
        let mut qh = 0u32;
        put_q5_pair(&mut qs, &mut qh, 3, 0x13, 0x1f);
        // Element 3's high bit is bit 3; element 19's is bit 19.
        assert_eq!(qh, (1 << 3) | (1 << 19));
        assert_eq!(qs[3], 0xf3);
        assert_eq!(q5_pair(&qs, qh, 3), (0x13, 0x1f));
    }
}
