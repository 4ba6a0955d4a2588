//! Q8_K: 256 signed bytes of one f32 scale, with per-16 sums; the activation format for the
//! Q2_K..Q6_K weights. Never stored in model files.

use bytemuck::{Pod, Zeroable};

use super::scale_search::nearest_int;
use super::QK_K;
use crate::quant::dispatch::WIDE_TILE_ROWS;
use crate::quant::{assert_row_len, signed_abs_max, BlockFormat, GgmlType};

/// `x = d · qs[i]`; `bsums[j]` is the sum of `qs[16j..16j + 16]`, so that the min terms of the
/// affine weight formats cost one multiply per 16 elements.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8K {
    /// The block's scale (f32, unlike the other formats' f16).
    pub d: f32,
    /// The 256 quants.
    pub qs: [i8; QK_K],
    /// The sum of each group of 16 quants.
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == GgmlType::Q8K.type_size());

/// Super-block `i` of [`WIDE_TILE_ROWS`] Q8_K activation rows, side by side, for the wide batch
/// kernels (`WideGemm`): the scales, the sums of each 32-quant sub-block (what Q4_K's mins
/// multiply), the sums of each 16 (`bsums`, what the offset of Q6_K's unsigned values on x86
/// multiplies), then each row's quants. Every row's field sits at a fixed offset from the
/// tile, so a kernel reaches all 16 rows from one pointer.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
pub(crate) struct TileQ8K {
    pub(crate) d: [f32; WIDE_TILE_ROWS],
    pub(crate) sub_sums: [[i16; QK_K / 32]; WIDE_TILE_ROWS],
    pub(crate) bsums: [[i16; QK_K / 16]; WIDE_TILE_ROWS],
    pub(crate) qs: [[i8; QK_K]; WIDE_TILE_ROWS],
}

/// The sums of each 32-element sub-block's quants (what Q4_K's mins multiply), from the
/// block's sums of 16. Each of those is at most 16 · 127, so a pair fits in i16.
pub(crate) fn sub_sums(y: &BlockQ8K) -> [i16; QK_K / 32] {
    std::array::from_fn(|j| y.bsums[2 * j] + y.bsums[2 * j + 1])
}

/// Lays out [`WIDE_TILE_ROWS`] Q8_K rows of one length as [`TileQ8K`]s, super-block by
/// super-block.
pub(crate) fn pack_q8_k_tile(a: [&[BlockQ8K]; WIDE_TILE_ROWS], dst: &mut [TileQ8K]) {
    for a in a {
        assert_eq!(a.len(), dst.len(), "one packed block per activation block");
    }
    for (i, tile) in dst.iter_mut().enumerate() {
        for (n, a) in a.iter().enumerate() {
            let y = &a[i];
            tile.d[n] = y.d;
            tile.sub_sums[n] = sub_sums(y);
            tile.bsums[n] = y.bsums;
            tile.qs[n] = y.qs;
        }
    }
}

impl BlockFormat for BlockQ8K {
    const TYPE: GgmlType = GgmlType::Q8K;

    fn quantize_row(src: &[f32], dst: &mut [Self]) {
        assert_row_len::<Self>(dst.len(), src.len());
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK_K)) {
            let max = signed_abs_max(x);
            if max == 0.0 {
                // ggml zeroes `d` and `qs` here but leaves `bsums` as they were; they are
                // zeroed too, which is what ggml's bytes hold in a zero-initialised buffer.
                *block = BlockQ8K::zeroed();
                continue;
            }
            // -127 rather than -128 keeps every value in -127..=127 (ggml changed it for the
            // benefit of IQ2_XXS's AVX code; it applies to all K-quant activations).
            let iscale = -127.0 / max;
            for (q, &v) in block.qs.iter_mut().zip(x) {
                *q = nearest_int(iscale * v).min(127) as i8;
            }
            for (sum, qs) in block.bsums.iter_mut().zip(block.qs.chunks_exact(16)) {
                *sum = qs.iter().map(|&q| i16::from(q)).sum();
            }
            block.d = 1.0 / iscale;
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        assert_row_len::<Self>(src.len(), dst.len());
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            for (out, &q) in y.iter_mut().zip(&block.qs) {
                *out = block.d * f32::from(q);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bsums_are_sums_of_16_consecutive_quants() {
        let x: Vec<f32> = (0..QK_K).map(|i| (i as f32 - 128.0) / 128.0).collect();
        let mut block = [BlockQ8K::zeroed()];
        BlockQ8K::quantize_row(&x, &mut block);
        for (j, &sum) in block[0].bsums.iter().enumerate() {
            let expected: i32 = block[0].qs[16 * j..16 * j + 16]
                .iter()
                .map(|&q| i32::from(q))
                .sum();
            assert_eq!(i32::from(sum), expected);
        }
        // The signed extreme, x[0] = -1.0, maps to exactly -127.
        assert_eq!(block[0].qs[0], -127);
    }
}
