//! Q2_K: 2-bit quants in 16 sub-blocks of 16, each with a 4-bit scale and 4-bit min
//! (2.625 bits per weight).

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::scale_search::{make_qkx2_quants, nearest_int, Qkx2Search};
use super::{BlockQ8K, QK_K};
use crate::quant::{assert_dot_len, assert_row_len, BlockFormat, GgmlType, VecDot};

/// - `scales[j]`: sub-block `j`'s scale in the low nibble, its min in the high nibble;
///   `x = d·scale·q - dmin·min`.
/// - `qs`: two 128-element halves of 32 bytes; in a half, byte `l` holds elements
///   `l + 32·k` in bits `2k..2k+2` for k = 0..4 (so each 2-bit plane is 32 consecutive
///   elements, two sub-blocks).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ2K {
    /// Per sub-block of 16: the 4-bit scale in the low nibble, the 4-bit min in the high nibble.
    pub scales: [u8; QK_K / 16],
    /// The 256 2-bit quants, four per byte (layout above).
    pub qs: [u8; QK_K / 4],
    /// Super-block scale: multiplies every sub-block scale.
    pub d: f16,
    /// Super-block scale of the mins: multiplies every sub-block min.
    pub dmin: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == GgmlType::Q2K.type_size());

/// `quantize_row_q2_K_reference`'s search: 3 levels, absolute error, 16 steps from -0.5.
const SEARCH: Qkx2Search = Qkx2Search {
    nmax: 3,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: true,
};

/// Sub-scales and sub-mins are stored on a 4-bit grid.
const Q4SCALE: f32 = 15.0;

/// Pack 256 2-bit values (Q2_K's levels, Q3_K's low bits) into the K-quant
/// plane layout: per 128-element half, byte `l` takes elements `l + 32·k` at bit `2k`.
pub(super) fn pack_2bit_planes(levels: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for (lv, q) in levels.chunks_exact(128).zip(qs.chunks_exact_mut(32)) {
        for l in 0..32 {
            q[l] = lv[l] | (lv[l + 32] << 2) | (lv[l + 64] << 4) | (lv[l + 96] << 6);
        }
    }
}

/// The 2-bit value of element `n` (0..256) from the plane layout of [`pack_2bit_planes`].
#[inline]
pub(super) fn unpack_2bit(qs: &[u8; QK_K / 4], n: usize) -> u8 {
    let (half, rest) = (n / 128, n % 128);
    let (plane, l) = (rest / 32, rest % 32);
    (qs[32 * half + l] >> (2 * plane)) & 3
}

impl BlockFormat for BlockQ2K {
    const TYPE: GgmlType = GgmlType::Q2K;

    fn quantize_row(src: &[f32], dst: &mut [Self]) {
        assert_row_len::<Self>(dst.len(), src.len());
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK_K)) {
            let mut levels = [0u8; QK_K];
            let mut scales = [0f32; QK_K / 16];
            let mut mins = [0f32; QK_K / 16];
            // Scales are positive because the min is subtracted.
            let mut max_scale = 0f32;
            let mut max_min = 0f32;
            for (j, (xs, ls)) in x
                .chunks_exact(16)
                .zip(levels.chunks_exact_mut(16))
                .enumerate()
            {
                let mut weights = [0f32; 16];
                for (w, &v) in weights.iter_mut().zip(xs) {
                    *w = v.abs();
                }
                (scales[j], mins[j]) = make_qkx2_quants(&SEARCH, xs, &weights, ls);
                if scales[j] > max_scale {
                    max_scale = scales[j];
                }
                if mins[j] > max_min {
                    max_min = mins[j];
                }
            }

            if max_scale > 0.0 {
                let iscale = Q4SCALE / max_scale;
                for (s, &scale) in block.scales.iter_mut().zip(&scales) {
                    *s = nearest_int(iscale * scale) as u8;
                }
                block.d = f16::from_f32(max_scale / Q4SCALE);
            } else {
                block.scales = [0; QK_K / 16];
                block.d = f16::from_f32(0.0);
            }
            if max_min > 0.0 {
                let iscale = Q4SCALE / max_min;
                for (s, &min) in block.scales.iter_mut().zip(&mins) {
                    *s |= (nearest_int(iscale * min) << 4) as u8;
                }
                block.dmin = f16::from_f32(max_min / Q4SCALE);
            } else {
                block.dmin = f16::from_f32(0.0);
            }

            // Re-quantize every element against the scales as stored (rounded to 4 bits and
            // to f16), not the searched ones; a sub-block whose scale rounded to zero keeps
            // the levels from the search.
            for (j, (xs, ls)) in x
                .chunks_exact(16)
                .zip(levels.chunks_exact_mut(16))
                .enumerate()
            {
                let d = block.d.to_f32() * f32::from(block.scales[j] & 0x0f);
                if d == 0.0 {
                    continue;
                }
                let dm = block.dmin.to_f32() * f32::from(block.scales[j] >> 4);
                for (l, &v) in ls.iter_mut().zip(xs) {
                    *l = nearest_int((v + dm) / d).clamp(0, 3) as u8;
                }
            }
            pack_2bit_planes(&levels, &mut block.qs);
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        assert_row_len::<Self>(src.len(), dst.len());
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d = block.d.to_f32();
            let min = block.dmin.to_f32();
            for (j, ys) in y.chunks_exact_mut(16).enumerate() {
                let sc = block.scales[j];
                let dl = d * f32::from(sc & 0x0f);
                let ml = min * f32::from(sc >> 4);
                for (i, out) in ys.iter_mut().enumerate() {
                    *out = dl * f32::from(unpack_2bit(&block.qs, 16 * j + i)) - ml;
                }
            }
        }
    }
}

impl VecDot for BlockQ2K {
    type Activation = BlockQ8K;

    fn vec_dot(weights: &[Self], activations: &[BlockQ8K]) -> f32 {
        assert_dot_len(weights, activations);
        let mut sum = 0f32;
        for (x, y) in weights.iter().zip(activations) {
            // The min term, -dmin·Σ_j min_j·Σ(q8 in j), from Q8_K's per-16 sums.
            let summs: i32 = y
                .bsums
                .iter()
                .zip(&x.scales)
                .map(|(&bsum, &sc)| i32::from(bsum) * i32::from(sc >> 4))
                .sum();
            let dall = y.d * x.d.to_f32();
            let dmin = y.d * x.dmin.to_f32();
            let mut isum = 0i32;
            for j in 0..QK_K / 16 {
                let isuml: i32 = (16 * j..16 * j + 16)
                    .map(|n| i32::from(y.qs[n]) * i32::from(unpack_2bit(&x.qs, n)))
                    .sum();
                isum += i32::from(x.scales[j] & 0x0f) * isuml;
            }
            sum += dall * isum as f32 - dmin * summs as f32;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_2bit_plane_is_32_consecutive_elements() {
        let mut levels = [0u8; QK_K];
        levels[0] = 1; // half 0, plane 0, byte 0
        levels[33] = 2; // half 0, plane 1, byte 1
        levels[128 + 64 + 5] = 3; // half 1, plane 2, byte 32 + 5
        let mut qs = [0u8; QK_K / 4];
        pack_2bit_planes(&levels, &mut qs);
        assert_eq!(qs[0], 1);
        assert_eq!(qs[1], 2 << 2);
        assert_eq!(qs[37], 3 << 4);
        for (n, &l) in levels.iter().enumerate() {
            assert_eq!(unpack_2bit(&qs, n), l);
        }
    }
}
