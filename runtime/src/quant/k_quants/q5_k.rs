//! Q5_K: 5-bit quants in 8 sub-blocks of 32, each with a 6-bit scale and 6-bit min
//! (5.5 bits per weight). Q4_K plus one high bit per element.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::q4_k::{min_term, nibble, quantize_affine_super_block};
use super::scale_search::Qkx2Search;
use super::{scale_min_k4, BlockQ8K, LaneSums, QK_K};
use crate::quant::{assert_dot_len, assert_row_len, BlockFormat, GgmlType, VecDot};

/// - `scales`, `qs`: as Q4_K (the low 4 bits of each value).
/// - `qh`: the fifth bit; element `n` in byte `n % 32`, bit `n / 32` (so 32-byte group `g` of
///   `qs` takes bits `2g` and `2g + 1`). `x = d·scale·q - dmin·min`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5K {
    /// Super-block scale: multiplies every sub-block scale.
    pub d: f16,
    /// Super-block scale of the mins: multiplies every sub-block min.
    pub dmin: f16,
    /// The eight 6-bit sub-block scales and eight 6-bit mins, packed as in Q4_K.
    pub scales: [u8; 12],
    /// The fifth (high) bit of each of the 256 quants (layout above).
    pub qh: [u8; QK_K / 8],
    /// The low 4 bits of each of the 256 quants, two per byte, as in Q4_K.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == GgmlType::Q5K.type_size());

/// `quantize_row_q5_K_reference`'s search: 32 levels, squared error, 16 steps from -0.5.
const SEARCH: Qkx2Search = Qkx2Search {
    nmax: 31,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: false,
};

/// The 5-bit value of element `n`.
#[inline]
fn value(block: &BlockQ5K, n: usize) -> u8 {
    let high = (block.qh[n % 32] >> (n / 32)) & 1;
    nibble(&block.qs, n) | (high << 4)
}

impl BlockFormat for BlockQ5K {
    const TYPE: GgmlType = GgmlType::Q5K;

    fn quantize_row(src: &[f32], dst: &mut [Self]) {
        assert_row_len::<Self>(dst.len(), src.len());
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK_K)) {
            let (d, dmin, scales, levels) = quantize_affine_super_block(&SEARCH, x);
            block.d = d;
            block.dmin = dmin;
            block.scales = scales;
            block.qh = [0; QK_K / 8];
            for (g, (q, lv)) in block
                .qs
                .chunks_exact_mut(32)
                .zip(levels.chunks_exact(64))
                .enumerate()
            {
                for l in 0..32 {
                    let (lo, hi) = (lv[l], lv[l + 32]);
                    block.qh[l] |= ((lo >> 4) << (2 * g)) | ((hi >> 4) << (2 * g + 1));
                    q[l] = (lo & 0x0f) | ((hi & 0x0f) << 4);
                }
            }
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        assert_row_len::<Self>(src.len(), dst.len());
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d = block.d.to_f32();
            let min = block.dmin.to_f32();
            for (j, ys) in y.chunks_exact_mut(32).enumerate() {
                let (sc, m) = scale_min_k4(j, &block.scales);
                let d1 = d * f32::from(sc);
                let m1 = min * f32::from(m);
                for (l, out) in ys.iter_mut().enumerate() {
                    *out = d1 * f32::from(value(block, 32 * j + l)) - m1;
                }
            }
        }
    }
}

impl VecDot for BlockQ5K {
    type Activation = BlockQ8K;

    fn vec_dot(weights: &[Self], activations: &[BlockQ8K]) -> f32 {
        assert_dot_len(weights, activations);
        let mut lanes = LaneSums::new();
        let mut sum = 0f32;
        for (x, y) in weights.iter().zip(activations) {
            let mut q = [0i8; QK_K];
            for (n, v) in q.iter_mut().enumerate() {
                *v = value(x, n) as i8;
            }
            let d = x.d.to_f32() * y.d;
            lanes.add_block(
                &q,
                &y.qs,
                |g| i32::from(scale_min_k4(g / 2, &x.scales).0),
                d,
            );
            let dmin = x.dmin.to_f32() * y.d;
            sum -= dmin * min_term(&x.scales, &y.bsums) as f32;
        }
        lanes.finish(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifth_bit_of_element_n_is_bit_n_div_32_of_qh_n_mod_32() {
        let mut block = BlockQ5K::zeroed();
        block.qh[9] = 1 << 5; // element 5·32 + 9 = 169: group 2, high nibbles
        block.qs[64 + 9] = 0x30;
        assert_eq!(value(&block, 169), 16 + 3);
        assert_eq!(value(&block, 137), 0);
    }
}
