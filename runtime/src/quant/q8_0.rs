//! Q8_0: 32 elements as signed bytes of one f16 scale (8.5 bits per weight). Also the
//! activation format that Q4_0, Q5_0 and Q8_0 weights are multiplied with.
//!
//! Layout and algorithms: ggml `block_q8_0`, `quantize_row_q8_0_reference`,
//! `dequantize_row_q8_0`, and the scalar branch of `ggml_vec_dot_q8_0_q8_0`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{abs_max, assert_dot_len, assert_row_len, BlockFormat, GgmlType, VecDot};

const QK: usize = 32;

/// `x = qs[i] · d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == GgmlType::Q8_0.type_size());
const _: () = assert!(GgmlType::Q8_0.block_size() == QK);

/// The shared core of the Q8_0 and Q8_1 reference quantizers: scale `amax / 127` and
/// `roundf` (half away from zero), the rounding ggml's reference uses. ggml's SIMD
/// `quantize_row_q8_0` multiplies by `127 / amax` and rounds half to even instead, so it may
/// differ from this in the last step of a few elements (GGUF-AND-LLAVA.md §2.4).
#[inline]
pub(super) fn quantize_q8_block(x: &[f32], qs: &mut [i8; QK]) -> f32 {
    let d = abs_max(x) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i32 as i8;
    }
    d
}

impl BlockFormat for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;

    fn quantize_row(src: &[f32], dst: &mut [Self]) {
        assert_row_len::<Self>(dst.len(), src.len());
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK)) {
            let d = quantize_q8_block(x, &mut block.qs);
            block.d = f16::from_f32(d);
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

impl VecDot for BlockQ8_0 {
    type Activation = BlockQ8_0;

    fn vec_dot(weights: &[Self], activations: &[BlockQ8_0]) -> f32 {
        assert_dot_len(weights, activations);
        let mut sum = 0f32;
        for (x, y) in weights.iter().zip(activations) {
            let sumi: i32 =
                x.qs.iter()
                    .zip(&y.qs)
                    .map(|(&a, &b)| i32::from(a) * i32::from(b))
                    .sum();
            sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_rounding_is_half_away_from_zero() {
        // amax = 127 gives d = 1, so x·id is x itself: 2.5 -> 3 and -2.5 -> -3 (not 2, -2).
        let mut x = [0f32; QK];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        let mut block = [BlockQ8_0::zeroed()];
        BlockQ8_0::quantize_row(&x, &mut block);
        assert_eq!(&block[0].qs[..3], &[127, 3, -3]);
    }
}
