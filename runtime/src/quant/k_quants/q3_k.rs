//! Q3_K: 3-bit signed quants in 16 sub-blocks of 16, each with a 6-bit signed scale
//! (3.4375 bits per weight).

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::q2_k::{pack_2bit_planes, unpack_2bit};
use super::scale_search::{make_q3_quants, nearest_int};
use super::{BlockQ8K, LaneSums, QK_K};
use crate::quant::{assert_dot_len, assert_row_len, BlockFormat, GgmlType, VecDot};

/// - `qs`: the low 2 bits of each 3-bit value, in Q2_K's plane layout.
/// - `hmask`: the third bit; element `n` in byte `n % 32`, bit `n / 32`. The stored value is
///   `q + 4` for `q` in -4..=3, so a clear bit means "subtract 4".
/// - `scales`: 16 six-bit values `s + 32`: low nibbles of sub-blocks 0..8 in the low halves of
///   bytes 0..8, of 8..16 in the high halves; the top 2 bits of sub-block `j` in byte
///   `8 + j % 4` at bit `2·(j / 4)`. `x = d·s·q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ3K {
    /// The high (third) bit of each of the 256 quants (layout above).
    pub hmask: [u8; QK_K / 8],
    /// The low 2 bits of each of the 256 quants, four per byte.
    pub qs: [u8; QK_K / 4],
    /// The 16 packed 6-bit sub-block scales (layout above).
    pub scales: [u8; 12],
    /// Super-block scale: multiplies every sub-block scale.
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == GgmlType::Q3K.type_size());

/// Signed 6-bit scale of sub-block `j` (0..16).
#[inline]
fn scale(scales: &[u8; 12], j: usize) -> i8 {
    let low = if j < 8 {
        scales[j] & 0x0f
    } else {
        scales[j - 8] >> 4
    };
    let high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | (high << 4)) as i8 - 32
}

/// Pack 16 offset scales (`s + 32`, 0..64) into 12 bytes; inverse of [`scale`].
fn pack_scales(offset_scales: &[u8; 16]) -> [u8; 12] {
    let mut scales = [0u8; 12];
    for (j, &l) in offset_scales.iter().enumerate() {
        if j < 8 {
            scales[j] = l & 0x0f;
        } else {
            scales[j - 8] |= (l & 0x0f) << 4;
        }
        scales[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
    }
    scales
}

/// The signed 3-bit value (-4..=3) of element `n`.
#[inline]
fn value(block: &BlockQ3K, n: usize) -> i8 {
    let high_set = block.hmask[n % 32] & (1 << (n / 32)) != 0;
    unpack_2bit(&block.qs, n) as i8 - if high_set { 0 } else { 4 }
}

impl BlockFormat for BlockQ3K {
    const TYPE: GgmlType = GgmlType::Q3K;

    fn quantize_row(src: &[f32], dst: &mut [Self]) {
        assert_row_len::<Self>(dst.len(), src.len());
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK_K)) {
            let mut levels = [0i8; QK_K];
            let mut sub_scales = [0f32; QK_K / 16];
            // The sub-block scale of largest magnitude, sign kept: it maps to -32, the end of
            // the 6-bit range with room, as Q4_0 does with its elements.
            let mut max_scale = 0f32;
            let mut amax = 0f32;
            for (j, (xs, ls)) in x
                .chunks_exact(16)
                .zip(levels.chunks_exact_mut(16))
                .enumerate()
            {
                sub_scales[j] = make_q3_quants(4, xs, ls);
                if sub_scales[j].abs() > amax {
                    amax = sub_scales[j].abs();
                    max_scale = sub_scales[j];
                }
            }

            if max_scale != 0.0 {
                let iscale = -32.0 / max_scale;
                let mut offset_scales = [0u8; 16];
                for (o, &s) in offset_scales.iter_mut().zip(&sub_scales) {
                    // ggml stores nearest_int's result in an int8 before clamping.
                    let l = nearest_int(iscale * s) as i8;
                    *o = (l.clamp(-32, 31) + 32) as u8;
                }
                block.scales = pack_scales(&offset_scales);
                block.d = f16::from_f32(1.0 / iscale);
            } else {
                block.scales = [0; 12];
                block.d = f16::from_f32(0.0);
            }

            // Re-quantize against the stored scales; a sub-block whose scale is zero keeps the
            // levels from the search.
            for (j, (xs, ls)) in x
                .chunks_exact(16)
                .zip(levels.chunks_exact_mut(16))
                .enumerate()
            {
                let d = block.d.to_f32() * f32::from(scale(&block.scales, j));
                if d == 0.0 {
                    continue;
                }
                for (l, &v) in ls.iter_mut().zip(xs) {
                    *l = (nearest_int(v / d).clamp(-4, 3) + 4) as i8;
                }
            }

            block.hmask = [0; QK_K / 8];
            let mut low_bits = [0u8; QK_K];
            for (n, (&l, low)) in levels.iter().zip(low_bits.iter_mut()).enumerate() {
                let mut l = l as u8;
                if l > 3 {
                    block.hmask[n % 32] |= 1 << (n / 32);
                    l -= 4;
                }
                *low = l;
            }
            pack_2bit_planes(&low_bits, &mut block.qs);
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        assert_row_len::<Self>(src.len(), dst.len());
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d_all = block.d.to_f32();
            for (j, ys) in y.chunks_exact_mut(16).enumerate() {
                let dl = d_all * f32::from(scale(&block.scales, j));
                for (i, out) in ys.iter_mut().enumerate() {
                    *out = dl * f32::from(value(block, 16 * j + i));
                }
            }
        }
    }
}

impl VecDot for BlockQ3K {
    type Activation = BlockQ8K;

    fn vec_dot(weights: &[Self], activations: &[BlockQ8K]) -> f32 {
        assert_dot_len(weights, activations);
        let mut lanes = LaneSums::new();
        for (x, y) in weights.iter().zip(activations) {
            let mut q = [0i8; QK_K];
            for (n, v) in q.iter_mut().enumerate() {
                *v = value(x, n);
            }
            let d = x.d.to_f32() * y.d;
            lanes.add_block(&q, &y.qs, |g| i32::from(scale(&x.scales, g)), d);
        }
        lanes.finish(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_bit_signed_scales_round_trip_through_twelve_bytes() {
        let offset: [u8; 16] = [0, 1, 15, 16, 31, 32, 33, 47, 48, 63, 7, 56, 20, 40, 60, 2];
        let packed = pack_scales(&offset);
        for (j, &o) in offset.iter().enumerate() {
            assert_eq!(scale(&packed, j), o as i8 - 32, "sub-block {j}");
        }
    }

    #[test]
    fn high_bit_of_element_n_is_bit_n_div_32_of_byte_n_mod_32() {
        let mut block = BlockQ3K::zeroed();
        block.hmask[5] = 1 << 3; // element 3·32 + 5 = 101
        assert_eq!(value(&block, 101), 0);
        assert_eq!(value(&block, 100), -4);
    }
}
