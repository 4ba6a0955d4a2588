//! Q6_K: 6-bit signed quants in 16 sub-blocks of 16, each with an 8-bit signed scale
//! (6.5625 bits per weight). Used for `output.weight` and some layers of the Q4_K_M mix.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::scale_search::{make_qx_quants_x16, nearest_int};
use super::{BlockQ8K, LaneSums, QK_K};
use crate::quant::dispatch::InterleavedBlock;
use crate::quant::{assert_dot_len, assert_row_len, BlockFormat, GgmlType, VecDot};

/// Two 128-element halves; half `h` uses `ql[64h..64h+64]`, `qh[32h..32h+32]` and
/// `scales[8h..8h+8]`. Within a half, for `l` in 0..32:
///
/// | element  | low 4 bits              | high 2 bits      |
/// |----------|-------------------------|------------------|
/// | `l`      | low nibble of `ql[l]`      | `qh[l]` bits 0–1 |
/// | `l + 32` | low nibble of `ql[l + 32]` | bits 2–3         |
/// | `l + 64` | high nibble of `ql[l]`     | bits 4–5         |
/// | `l + 96` | high nibble of `ql[l + 32]`| bits 6–7         |
///
/// The stored value is `q + 32`; `x = d·scale·q` with `scales[n / 16]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6K {
    /// The low 4 bits of each of the 256 quants, two per byte (table above).
    pub ql: [u8; QK_K / 2],
    /// The high 2 bits of each of the 256 quants, four per byte (table above).
    pub qh: [u8; QK_K / 4],
    /// The signed 8-bit scale of each sub-block of 16.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale: multiplies every sub-block scale.
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == GgmlType::Q6K.type_size());

/// The stored 6-bit value (0..64, i.e. `q + 32`) of element `n`.
#[inline]
fn stored(block: &BlockQ6K, n: usize) -> u8 {
    let (half, r) = (n / 128, n % 128);
    let (row, l) = (r / 32, r % 32);
    let ql = block.ql[64 * half + l + 32 * (row % 2)];
    let low = if row < 2 { ql & 0x0f } else { ql >> 4 };
    let high = (block.qh[32 * half + l] >> (2 * row)) & 3;
    low | (high << 4)
}

impl BlockFormat for BlockQ6K {
    const TYPE: GgmlType = GgmlType::Q6K;

    fn quantize_row(src: &[f32], dst: &mut [Self]) {
        assert_row_len::<Self>(dst.len(), src.len());
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK_K)) {
            let mut levels = [0i8; QK_K];
            let mut max_scale = 0f32;
            let mut max_abs_scale = 0f32;
            let sub_scales = make_qx_quants_x16(32, x, &mut levels);
            for &scale in &sub_scales {
                if scale.abs() > max_abs_scale {
                    max_abs_scale = scale.abs();
                    max_scale = scale;
                }
            }
            if max_abs_scale == 0.0 {
                *block = BlockQ6K::zeroed();
                continue;
            }

            // The largest sub-scale maps to -128, the end of the i8 range with room.
            let iscale = -128.0 / max_scale;
            block.d = f16::from_f32(1.0 / iscale);
            for (s, &sub) in block.scales.iter_mut().zip(&sub_scales) {
                // Capped above only: the maximum is exactly -128 by construction.
                *s = nearest_int(iscale * sub).min(127) as i8;
            }

            // Re-quantize against the stored scales; a sub-block whose scale rounded to zero
            // keeps the levels from the search.
            for (j, (xs, ls)) in x
                .chunks_exact(16)
                .zip(levels.chunks_exact_mut(16))
                .enumerate()
            {
                let d = block.d.to_f32() * f32::from(block.scales[j]);
                if d == 0.0 {
                    continue;
                }
                for (l, &v) in ls.iter_mut().zip(xs) {
                    *l = (nearest_int(v / d).clamp(-32, 31) + 32) as i8;
                }
            }

            for h in 0..2 {
                let lv = &levels[128 * h..128 * h + 128];
                let ql = &mut block.ql[64 * h..64 * h + 64];
                let qh = &mut block.qh[32 * h..32 * h + 32];
                for l in 0..32 {
                    let [q1, q2, q3, q4] =
                        [lv[l], lv[l + 32], lv[l + 64], lv[l + 96]].map(|v| v as u8);
                    ql[l] = (q1 & 0x0f) | ((q3 & 0x0f) << 4);
                    ql[l + 32] = (q2 & 0x0f) | ((q4 & 0x0f) << 4);
                    qh[l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
                }
            }
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        assert_row_len::<Self>(src.len(), dst.len());
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d = block.d.to_f32();
            for (n, out) in y.iter_mut().enumerate() {
                let q = i32::from(stored(block, n)) - 32;
                // ggml's order: (d · scale) · q.
                *out = d * f32::from(block.scales[n / 16]) * q as f32;
            }
        }
    }
}

impl VecDot for BlockQ6K {
    type Activation = BlockQ8K;

    fn vec_dot(weights: &[Self], activations: &[BlockQ8K]) -> f32 {
        assert_dot_len(weights, activations);
        let mut lanes = LaneSums::new();
        for (x, y) in weights.iter().zip(activations) {
            let mut q = [0i8; QK_K];
            for (n, v) in q.iter_mut().enumerate() {
                *v = stored(x, n) as i8 - 32;
            }
            let d = x.d.to_f32() * y.d;
            lanes.add_block(&q, &y.qs, |g| i32::from(x.scales[g]), d);
        }
        lanes.finish(0.0)
    }
}

/// Sets the stored 6-bit value of element `n`, the inverse of [`stored`].
fn set_stored(block: &mut BlockQ6K, n: usize, v: u8) {
    let (half, r) = (n / 128, n % 128);
    let (row, l) = (r / 32, r % 32);
    let ql = &mut block.ql[64 * half + l + 32 * (row % 2)];
    *ql = if row < 2 {
        (*ql & 0xf0) | (v & 0x0f)
    } else {
        (*ql & 0x0f) | (v << 4)
    };
    let qh = &mut block.qh[32 * half + l];
    *qh = (*qh & !(3 << (2 * row))) | ((v >> 4) << (2 * row));
}

/// Super-block `i` of 8 consecutive Q6_K rows, laid out for kernels that dot all of them at
/// once (see `BlockQ4_0x8`). Chunk `c` is elements `32c..32c + 32` of every row, as Q4_0
/// blocks hold them: the low 4 bits of element `32c + b` in the low nibble of byte `b`, of
/// element `32c + 16 + b` in its high nibble. Not a ggml format; the same size as the 8
/// super-blocks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6Kx8 {
    /// Row `r`'s `d`.
    pub d: [f16; 8],
    /// `scales[c][2r + h]`: row `r`'s scale of sub-block `2c + h` (elements `32c + 16h..`).
    pub scales: [[i8; 16]; 8],
    /// `ql[c][32t + 4r + j]`: the low 4 bits of row `r`'s elements `32c + 4t + j` (low
    /// nibble) and `32c + 16 + 4t + j` (high nibble), `t` in 0..4.
    pub ql: [[u8; 128]; 8],
    /// `qh[c][32k + 4r + j]`: the high 2 bits of the same elements for `t = 2k` (bits 0–1 the
    /// low nibble's element, 2–3 the high one's) and `t = 2k + 1` (bits 4–5, 6–7).
    pub qh: [[u8; 64]; 8],
}

const _: () = assert!(std::mem::size_of::<BlockQ6Kx8>() == 8 * 210);

impl InterleavedBlock for BlockQ6Kx8 {
    type Row = BlockQ6K;

    /// Interleaves super-block `i` of each of 8 rows.
    fn from_rows(rows: [&BlockQ6K; 8]) -> Self {
        let mut out = BlockQ6Kx8::zeroed();
        for (r, x) in rows.iter().enumerate() {
            out.d[r] = x.d;
            for c in 0..8 {
                out.scales[c][2 * r] = x.scales[2 * c];
                out.scales[c][2 * r + 1] = x.scales[2 * c + 1];
                for t in 0..4 {
                    for j in 0..4 {
                        let (lo, hi) = (
                            stored(x, 32 * c + 4 * t + j),
                            stored(x, 32 * c + 16 + 4 * t + j),
                        );
                        out.ql[c][32 * t + 4 * r + j] = (lo & 0x0f) | (hi << 4);
                        let shift = 4 * (t % 2);
                        out.qh[c][32 * (t / 2) + 4 * r + j] |=
                            ((lo >> 4) | ((hi >> 4) << 2)) << shift;
                    }
                }
            }
        }
        out
    }

    /// Row `r`'s super-block, as it was before interleaving.
    fn row(&self, r: usize) -> BlockQ6K {
        let mut x = BlockQ6K::zeroed();
        x.d = self.d[r];
        for c in 0..8 {
            x.scales[2 * c] = self.scales[c][2 * r];
            x.scales[2 * c + 1] = self.scales[c][2 * r + 1];
            for t in 0..4 {
                for j in 0..4 {
                    let low = self.ql[c][32 * t + 4 * r + j];
                    let high = self.qh[c][32 * (t / 2) + 4 * r + j] >> (4 * (t % 2));
                    set_stored(&mut x, 32 * c + 4 * t + j, (low & 0x0f) | ((high & 3) << 4));
                    set_stored(
                        &mut x,
                        32 * c + 16 + 4 * t + j,
                        (low >> 4) | (((high >> 2) & 3) << 4),
                    );
                }
            }
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_rows_of_a_half_share_ql_and_qh_bytes() {
        let mut block = BlockQ6K::zeroed();
        // Half 1, l = 3: ql[64 + 3] = rows 0 (low) and 2 (high), ql[64 + 35] rows 1 and 3.
        block.ql[67] = 0x21;
        block.ql[99] = 0x43;
        block.qh[35] = 0b11_10_01_00;
        assert_eq!(stored(&block, 128 + 3), 0x01);
        assert_eq!(stored(&block, 128 + 32 + 3), 0x13);
        assert_eq!(stored(&block, 128 + 64 + 3), 0x22);
        assert_eq!(stored(&block, 128 + 96 + 3), 0x34);
    }
}
