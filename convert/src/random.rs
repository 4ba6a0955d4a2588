//! Random tensor data for synthetic models, fast: normals for float types; for quantized types,
//! copies of blocks drawn from a small pool that was quantized once from normals.
//!
//! Quantizing every weight with ggml's reference quantizers is what made `llava synth` slow
//! (76 s for TinyLlama-1.1B as Q4_K_M, almost all of it the K-quant scale search). A pool of
//! real quantized blocks keeps every block well-formed — finite, sane f16 scales, the value
//! distribution of a quantized N(0, σ²) — while the fill is a memory copy. Everything is a
//! function of the seed, and independent of the thread count.

use llava_runtime::quant::GgmlType;
use rayon::prelude::*;

use crate::error::ConvertError;
use crate::quantize::quantize_tensor;

/// Blocks per pool: 4096 Q4_K blocks are 1M weights (0.6 MB), quantized in a few tens of
/// milliseconds, and a 4096-wide row draws each block from 2^12 choices, so rows do not repeat.
const POOL_BLOCKS: usize = 4096;

/// Blocks filled per parallel task, each task with its own generator.
const FILL_CHUNK_BLOCKS: usize = 4096;

/// Quantized blocks of one type, ready to be copied.
pub(crate) struct BlockPool {
    ty: GgmlType,
    block_bytes: usize,
    bytes: Vec<u8>,
}

impl BlockPool {
    /// `POOL_BLOCKS` blocks quantized from N(0, std²) values.
    pub fn new(ty: GgmlType, std: f32, seed: u64) -> Result<BlockPool, ConvertError> {
        let block = ty.block_size();
        let values = random_normal(POOL_BLOCKS * block, std, seed);
        // Rows of 64 blocks: whole blocks, and enough rows to quantize in parallel.
        let bytes = quantize_tensor("synthetic block pool", ty, &values, 64 * block)?;
        Ok(BlockPool {
            ty,
            block_bytes: ty.type_size(),
            bytes,
        })
    }

    /// The bytes of `n_elements` weights (whole blocks): pool blocks picked at random.
    pub fn fill(&self, n_elements: usize, seed: u64) -> Vec<u8> {
        let n_blocks = n_elements / self.ty.block_size();
        let bb = self.block_bytes;
        let mut out = vec![0u8; n_blocks * bb];
        out.par_chunks_mut(FILL_CHUNK_BLOCKS * bb)
            .enumerate()
            .for_each(|(c, chunk)| {
                let mut state = chunk_seed(seed, c);
                for dst in chunk.chunks_exact_mut(bb) {
                    // POOL_BLOCKS is a power of two: the top bits pick a block evenly.
                    let i =
                        (splitmix64(&mut state) >> (64 - POOL_BLOCKS.trailing_zeros())) as usize;
                    dst.copy_from_slice(&self.bytes[i * bb..(i + 1) * bb]);
                }
            });
        out
    }
}

/// `n` values of N(0, std²), reproducible from `seed`; made in parallel chunks each with its
/// own generator so the result does not depend on the thread count.
pub(crate) fn random_normal(n: usize, std: f32, seed: u64) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut state = chunk_seed(seed, c);
            for pair in chunk.chunks_mut(2) {
                // Box–Muller: two uniforms in (0, 1] to two normals.
                let u1 = ((splitmix64(&mut state) >> 40) as f32 + 1.0) / (1u64 << 24) as f32;
                let u2 = (splitmix64(&mut state) >> 40) as f32 / (1u64 << 24) as f32;
                let r = (-2.0 * u1.ln()).sqrt() * std;
                let (s, c) = (std::f32::consts::TAU * u2).sin_cos();
                pair[0] = r * c;
                if let Some(x) = pair.get_mut(1) {
                    *x = r * s;
                }
            }
        });
    out
}

fn chunk_seed(seed: u64, chunk: usize) -> u64 {
    seed.wrapping_add((chunk as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// A seed for item `index` of stream `stream` (a tensor of a file, a pool of a type).
pub(crate) fn derive_seed(seed: u64, stream: u64, index: u64) -> u64 {
    // Odd multipliers keep (stream, index) pairs apart before splitmix mixes them.
    let mut s = seed
        ^ stream.wrapping_mul(0xd6e8_feb8_6659_fd93)
        ^ index.wrapping_mul(0xa076_1d64_78bd_642f);
    splitmix64(&mut s)
}

pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    llava_runtime::rng::SplitMix64::step(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llava_runtime::quant;

    const STD: f32 = 0.02;

    #[test]
    fn random_weights_have_the_intended_spread_and_repeat_with_the_seed() {
        let a = random_normal(200_001, STD, 7);
        assert_eq!(a, random_normal(200_001, STD, 7));
        assert_ne!(a, random_normal(200_001, STD, 8));
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 1e-2 * STD as f64, "{mean}");
        assert!(
            (var.sqrt() / STD as f64 - 1.0).abs() < 0.01,
            "{}",
            var.sqrt()
        );
    }

    #[test]
    fn pooled_blocks_decode_to_finite_weights_of_the_intended_spread() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ] {
            let pool = BlockPool::new(ty, STD, 1).unwrap();
            let n = 256 * 1000;
            let bytes = pool.fill(n, 5);
            assert_eq!(bytes, pool.fill(n, 5), "{ty}");
            assert_ne!(bytes, pool.fill(n, 6), "{ty}");
            // The Vec's allocation is aligned enough for every block struct in practice; the
            // words copy makes the test independent of that.
            let mut words = vec![0u32; bytes.len().div_ceil(4)];
            bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..bytes.len()].copy_from_slice(&bytes);
            let mut x = vec![0f32; n];
            quant::dequantize_row(ty, &bytemuck::cast_slice(&words)[..bytes.len()], &mut x)
                .unwrap();
            assert!(x.iter().all(|v| v.is_finite() && v.abs() < 0.2), "{ty}");
            let rms = (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64).sqrt();
            assert!((rms / STD as f64 - 1.0).abs() < 0.1, "{ty}: rms {rms}");
        }
    }
}
