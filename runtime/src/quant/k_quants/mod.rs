//! K-quants: 256-element super-blocks split into 16 or 32 sub-blocks, each with its own
//! quantized scale (and min), themselves scaled by the super-block's f16 `d` (and `dmin`).
//!
//! Layouts and algorithms: ggml `ggml-common.h` (`block_q2_K` ... `block_q8_K`, QK_K = 256)
//! and `ggml-quants.c` (the `*_reference` quantizers, `dequantize_row_*`, and the scalar
//! branches of `ggml_vec_dot_q*_K_q8_K`); GGUF-AND-LLAVA.md §2.2–2.3 summarizes them.

mod q2_k;
mod q3_k;
mod q4_k;
mod q5_k;
mod q6_k;
mod q8_k;
mod scale_search;

pub use q2_k::BlockQ2K;
pub use q3_k::BlockQ3K;
pub use q4_k::{BlockQ4K, BlockQ4Kx8};
pub use q5_k::BlockQ5K;
pub use q6_k::{BlockQ6K, BlockQ6Kx8};
pub use q8_k::BlockQ8K;
pub(crate) use q8_k::{pack_q8_k_tile, TileQ8K};
// The ARM smmla tile packs these too.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub(crate) use q8_k::sub_sums;

/// Elements per K-quant super-block. ggml could once be built with 64 (GGML_QKK_64); files
/// in the wild and llama.cpp today use 256 only.
pub const QK_K: usize = 256;

/// The 6-bit scale and 6-bit min of sub-block `j` (0..8) of a Q4_K/Q5_K super-block, packed
/// into 12 bytes (ggml `get_scale_min_k4`):
/// - bytes 0..4: scales 0..4 in the low 6 bits, top 2 bits of scales 4..8 above them;
/// - bytes 4..8: mins 0..4 likewise, top 2 bits of mins 4..8 above them;
/// - bytes 8..12: low nibble = low 4 bits of scales 4..8, high nibble = of mins 4..8.
#[inline]
pub(in crate::quant) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Inverse of [`scale_min_k4`] for 6-bit `scales` and `mins`, as ggml's Q4_K/Q5_K quantizers
/// pack them.
fn pack_scale_min_k4(scales: &[u8; 8], mins: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (scales[j], mins[j]);
        if j < 4 {
            q[j] = ls;
            q[j + 4] = lm;
        } else {
            q[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            q[j - 4] |= (ls >> 4) << 6;
            q[j] |= (lm >> 4) << 6;
        }
    }
    q
}

/// The part of ggml's scalar K-quant dots shared by Q3_K..Q6_K: each super-block's integer
/// products are accumulated into 8 lanes (lane `l` takes elements `l, l+8, l+16, ...`, each
/// product times its sub-block scale), then every lane is scaled by `d` and added to its own
/// running f32 sum; the 8 sums are added together only at the very end. Keeping this
/// structure keeps the float rounding identical to ggml's scalar code.
struct LaneSums {
    sums: [f32; 8],
}

impl LaneSums {
    fn new() -> Self {
        LaneSums { sums: [0.0; 8] }
    }

    /// Add one super-block: `q` are the weight values (offset removed), `q8` the activations,
    /// `scale(g)` the integer scale of 16-element group `g` (two groups per 32-element
    /// sub-block where the format has 32-element sub-blocks), `d` the combined float scale.
    fn add_block(&mut self, q: &[i8; QK_K], q8: &[i8; QK_K], scale: impl Fn(usize) -> i32, d: f32) {
        let mut lanes = [0i32; 8];
        for (g, (qg, q8g)) in q.chunks_exact(16).zip(q8.chunks_exact(16)).enumerate() {
            let s = scale(g);
            for (i, (&a, &b)) in qg.iter().zip(q8g).enumerate() {
                // ggml forms this product in an int16; |a·b| <= 128·32 fits.
                lanes[i % 8] += s * i32::from(i16::from(a) * i16::from(b));
            }
        }
        for (sum, lane) in self.sums.iter_mut().zip(lanes) {
            *sum += d * lane as f32;
        }
    }

    /// `start` is what ggml's `sumf` holds before the lanes are added (the min terms).
    fn finish(&self, start: f32) -> f32 {
        self.sums.iter().fold(start, |acc, &s| acc + s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_bit_scales_and_mins_round_trip_through_twelve_bytes() {
        let scales = [0, 1, 17, 63, 32, 5, 48, 63];
        let mins = [63, 2, 33, 0, 15, 16, 47, 1];
        let packed = pack_scale_min_k4(&scales, &mins);
        for j in 0..8 {
            assert_eq!(
                scale_min_k4(j, &packed),
                (scales[j], mins[j]),
                "sub-block {j}"
            );
        }
        // Sub-block 4's scale keeps its low nibble in byte 8 and its top bits in byte 0.
        assert_eq!(packed[8] & 0x0f, 32 & 0x0f);
        assert_eq!(packed[0] >> 6, 32 >> 4);
    }
}
