//! Q4_K: 4-bit quants in 8 sub-blocks of 32, each with a 6-bit scale and 6-bit min
//! (4.5 bits per weight). The default weight type of the Q4_K_M mix.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::scale_search::{make_qkx2_quants_x8, nearest_int, Qkx2Search};
use super::{pack_scale_min_k4, scale_min_k4, BlockQ8K, LaneSums, QK_K};
use crate::quant::dispatch::InterleavedBlock;
use crate::quant::{assert_dot_len, assert_row_len, BlockFormat, GgmlType, VecDot};

/// - `scales`: eight 6-bit scales and mins, packed as `scale_min_k4` describes.
/// - `qs`: four 32-byte groups; group `g` holds sub-block `2g` in its low nibbles and
///   sub-block `2g + 1` in its high nibbles. `x = d·scale·q - dmin·min`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4K {
    /// Super-block scale: multiplies every sub-block scale.
    pub d: f16,
    /// Super-block scale of the mins: multiplies every sub-block min.
    pub dmin: f16,
    /// The eight 6-bit sub-block scales and eight 6-bit mins, packed in 12 bytes (ggml
    /// `get_scale_min_k4`).
    pub scales: [u8; 12],
    /// The 256 4-bit quants, two per byte (layout above).
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == GgmlType::Q4K.type_size());

/// `quantize_row_q4_K_reference`'s search: 16 levels, squared error, 21 steps from -1.
const SEARCH: Qkx2Search = Qkx2Search {
    nmax: 15,
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
    use_mad: false,
};

/// The affine sub-block search shared by Q4_K and Q5_K (they differ only in `search`):
/// weights `sqrt(mean x²) + |x|` per sub-block of 32, sub-scales and sub-mins rounded to 6 bits
/// against the super-block maxima, then every element re-quantized against the stored
/// values. Returns `(d, dmin, packed scales, levels)`.
pub(super) fn quantize_affine_super_block(
    search: &Qkx2Search,
    x: &[f32],
) -> (f16, f16, [u8; 12], [u8; QK_K]) {
    let mut levels = [0u8; QK_K];
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    let mut weights = [0f32; QK_K];
    for (ws, xs) in weights.chunks_exact_mut(32).zip(x.chunks_exact(32)) {
        let sum_x2 = xs.iter().fold(0f32, |acc, &v| acc + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in ws.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
    }
    let (scales, mins) = make_qkx2_quants_x8(search, x, &weights, &mut levels);
    for j in 0..QK_K / 32 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }

    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..QK_K / 32 {
        // ggml truncates nearest_int's result to a uint8 before capping it at 63.
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);

    let nmax = search.nmax;
    for (j, (xs, lv)) in x
        .chunks_exact(32)
        .zip(levels.chunks_exact_mut(32))
        .enumerate()
    {
        let (sc, m) = scale_min_k4(j, &packed);
        let dl = d.to_f32() * f32::from(sc);
        if dl == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * f32::from(m);
        for (l, &v) in lv.iter_mut().zip(xs) {
            *l = nearest_int((v + dm) / dl).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, levels)
}

impl BlockFormat for BlockQ4K {
    const TYPE: GgmlType = GgmlType::Q4K;

    fn quantize_row(src: &[f32], dst: &mut [Self]) {
        assert_row_len::<Self>(dst.len(), src.len());
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK_K)) {
            let (d, dmin, scales, levels) = quantize_affine_super_block(&SEARCH, x);
            block.d = d;
            block.dmin = dmin;
            block.scales = scales;
            for (q, lv) in block.qs.chunks_exact_mut(32).zip(levels.chunks_exact(64)) {
                for l in 0..32 {
                    q[l] = lv[l] | (lv[l + 32] << 4);
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
                    *out = d1 * f32::from(nibble(&block.qs, 32 * j + l)) - m1;
                }
            }
        }
    }
}

/// The 4-bit value of element `n` (0..256) in the Q4_K/Q5_K nibble layout.
#[inline]
pub(super) fn nibble(qs: &[u8; QK_K / 2], n: usize) -> u8 {
    let byte = qs[32 * (n / 64) + n % 32];
    if (n / 32).is_multiple_of(2) {
        byte & 0x0f
    } else {
        byte >> 4
    }
}

/// The min part of ggml's scalar Q4_K/Q5_K dots: `Σ_j bsums[j] · min[j / 2]`, the sum of
/// the activations of each 32-element sub-block times its 6-bit min.
pub(super) fn min_term(scales: &[u8; 12], bsums: &[i16; QK_K / 16]) -> i32 {
    bsums
        .iter()
        .enumerate()
        .map(|(j, &b)| i32::from(b) * i32::from(scale_min_k4(j / 2, scales).1))
        .sum()
}

impl VecDot for BlockQ4K {
    type Activation = BlockQ8K;

    fn vec_dot(weights: &[Self], activations: &[BlockQ8K]) -> f32 {
        assert_dot_len(weights, activations);
        let mut lanes = LaneSums::new();
        let mut sum = 0f32;
        for (x, y) in weights.iter().zip(activations) {
            let mut q = [0i8; QK_K];
            for (n, v) in q.iter_mut().enumerate() {
                *v = nibble(&x.qs, n) as i8;
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

/// Super-block `i` of 8 consecutive Q4_K rows, laid out for kernels that dot all of them at
/// once (see `BlockQ4_0x8`): byte `b` of the 8 rows' packed scales side by side, so that one
/// 32-byte load holds 4 of each row's 12 bytes (the kernels unpack the 6-bit fields of all 8
/// rows at once), and each 4-byte run of the 8 rows' quants side by side. Not a ggml format,
/// but the same size: 8 × 144 bytes. (Scales unpacked to bytes took 8 × 148, 84 MB more for a
/// 7B model's interleaved copy.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4Kx8 {
    /// Row `r`'s `d`.
    pub d: [f16; 8],
    /// Row `r`'s `dmin`.
    pub dmin: [f16; 8],
    /// `scales[b][r]`: byte `b` of row `r`'s `scales` (packed as `scale_min_k4` reads).
    pub scales: [[u8; 8]; 12],
    /// `qs[g][32t + 4r..][..4]` is row `r`'s `qs[32g + 4t..][..4]`.
    pub qs: [[u8; 256]; 4],
}

const _: () = assert!(std::mem::size_of::<BlockQ4Kx8>() == 8 * std::mem::size_of::<BlockQ4K>());

impl InterleavedBlock for BlockQ4Kx8 {
    type Row = BlockQ4K;

    /// Interleaves super-block `i` of each of 8 rows.
    fn from_rows(rows: [&BlockQ4K; 8]) -> Self {
        let mut out = BlockQ4Kx8::zeroed();
        for (r, x) in rows.iter().enumerate() {
            out.d[r] = x.d;
            out.dmin[r] = x.dmin;
            for (bytes, &byte) in out.scales.iter_mut().zip(&x.scales) {
                bytes[r] = byte;
            }
            for (g, group) in x.qs.chunks_exact(32).enumerate() {
                for (t, run) in group.chunks_exact(4).enumerate() {
                    out.qs[g][32 * t + 4 * r..][..4].copy_from_slice(run);
                }
            }
        }
        out
    }

    /// Row `r`'s super-block, as it was before interleaving.
    fn row(&self, r: usize) -> BlockQ4K {
        let mut qs = [0u8; QK_K / 2];
        for (g, group) in qs.chunks_exact_mut(32).enumerate() {
            for (t, run) in group.chunks_exact_mut(4).enumerate() {
                run.copy_from_slice(&self.qs[g][32 * t + 4 * r..][..4]);
            }
        }
        BlockQ4K {
            d: self.d[r],
            dmin: self.dmin[r],
            scales: std::array::from_fn(|b| self.scales[b][r]),
            qs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_blocks_pair_up_in_low_and_high_nibbles() {
        let mut qs = [0u8; QK_K / 2];
        qs[32 + 7] = 0xa5;
        // Group 1 (bytes 32..64) holds sub-block 2 low and sub-block 3 high.
        assert_eq!(nibble(&qs, 64 + 7), 0x5);
        assert_eq!(nibble(&qs, 96 + 7), 0xa);
    }
}
