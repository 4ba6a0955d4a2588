//! Q8_0: 32 elements as signed bytes of one f16 scale (8.5 bits per weight). Also the
//! activation format that Q4_0, Q5_0 and Q8_0 weights are multiplied with.
//!
//! Layout and algorithms: ggml `block_q8_0`, `quantize_row_q8_0_reference`,
//! `dequantize_row_q8_0`, and the scalar branch of `ggml_vec_dot_q8_0_q8_0`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::dispatch::InterleavedBlock;
use super::{abs_max, assert_dot_len, assert_row_len, BlockFormat, GgmlType, VecDot};

const QK: usize = 32;

/// `x = qs[i] · d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// The block's scale.
    pub d: f16,
    /// The 32 quants.
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

/// Rows interleaved into one [`BlockQ8_0x8`].
const INTERLEAVE_ROWS: usize = 8;

/// Block `i` of `INTERLEAVE_ROWS` consecutive Q8_0 rows, laid out as `BlockQ4_0x8` lays out
/// Q4_0: each 4-byte run of the 8 rows' quants side by side, so that one 256-bit load holds
/// 4 elements of every row. The same size as the 8 blocks it holds; not a ggml format.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0x8 {
    /// Row `r`'s scale.
    pub d: [f16; INTERLEAVE_ROWS],
    /// `qs[32t + 4r..][..4]` is row `r`'s `qs[4t..4t + 4]`, for `t` in 0..8.
    pub qs: [i8; INTERLEAVE_ROWS * QK],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0x8>() == INTERLEAVE_ROWS * 34);

impl InterleavedBlock for BlockQ8_0x8 {
    type Row = BlockQ8_0;

    fn from_rows(rows: [&BlockQ8_0; INTERLEAVE_ROWS]) -> Self {
        let mut out = BlockQ8_0x8::zeroed();
        for (r, block) in rows.iter().enumerate() {
            out.d[r] = block.d;
            for (t, run) in block.qs.chunks_exact(4).enumerate() {
                out.qs[32 * t + 4 * r..][..4].copy_from_slice(run);
            }
        }
        out
    }

    fn row(&self, r: usize) -> BlockQ8_0 {
        let mut block = BlockQ8_0 {
            d: self.d[r],
            qs: [0; QK],
        };
        for (t, run) in block.qs.chunks_exact_mut(4).enumerate() {
            run.copy_from_slice(&self.qs[32 * t + 4 * r..][..4]);
        }
        block
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

    #[test]
    fn interleaving_places_each_run_of_four_beside_the_other_rows() {
        let rows: [BlockQ8_0; INTERLEAVE_ROWS] = std::array::from_fn(|r| BlockQ8_0 {
            d: f16::from_f32(r as f32),
            qs: std::array::from_fn(|j| (16 * r + j) as i8),
        });
        let x = BlockQ8_0x8::from_rows(std::array::from_fn(|r| &rows[r]));
        // Row 2's elements 12..16 (run 3) sit at 32·3 + 4·2.
        assert_eq!(&x.qs[104..108], &[44, 45, 46, 47]);
        for (r, row) in rows.iter().enumerate() {
            assert_eq!(x.row(r), *row);
        }
    }
}
