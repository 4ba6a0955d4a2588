//! The tile kernels (one weight row against `TILE_ROWS` activation rows) against the scalar
//! reference dot of each pair.
//!
//! A tile kernel computes the same exact integer block sums as the reference and may differ
//! only in the order of its float additions: `|tile - scalar| <= 1e-5 · Σ|w·a| + 1e-30`, the
//! bound `tests/simd_kernels.rs` uses for the single-row kernels. Rows of one super-block are
//! included, where a single wrong weight (a nibble, a high bit, a scale, a min) moves the
//! result by far more than that. Weights are reference-quantized random rows, and the same
//! rows with every quant byte (and K-quant scale byte) replaced by random bits; activations
//! are quantized by the path's own quantizer (byte-identical to the reference).
//!
//! Every SIMD path the CPU can run is tested (AVX2, AVX-512 with and without VNNI on x86-64);
//! on a CPU without one that has tile kernels the test says so and passes.

use bytemuck::cast_slice_mut;
use llava_runtime::quant::{self, row_kernels, CpuPath, GgmlType, TILE_ROWS};

/// The weight types with tile kernels on the AVX2 and AVX-512 paths. (Batches of the other
/// types take another route: weights widened to f32 and an f32 micro-kernel, tested in the
/// backend.)
const TILE_TYPES: [GgmlType; 3] = [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        llava_runtime::rng::SplitMix64::step(&mut self.0)
    }

    /// About N(0, scale²) (sum of uniforms).
    fn normal(&mut self, scale: f32) -> f32 {
        let sum: f32 = (0..4)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32)
            .sum();
        (sum - 2.0) * 1.7 * scale
    }
}

/// A quantized row in u32 words (aligned for every block struct), and its byte length.
struct Row {
    words: Vec<u32>,
    len: usize,
}

impl Row {
    fn quantize(ty: GgmlType, x: &[f32]) -> Row {
        let len = ty.row_bytes(x.len() as u64).unwrap() as usize;
        let mut words = vec![0u32; len.div_ceil(4)];
        quant::quantize_row(ty, x, &mut cast_slice_mut(&mut words)[..len]).unwrap();
        Row { words, len }
    }

    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }

    fn dequantize(&self, ty: GgmlType, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n];
        quant::dequantize_row(ty, self.bytes(), &mut out).unwrap();
        out
    }
}

/// Byte ranges of a block that hold quants (and, for K-quants, sub-block scales): every bit
/// pattern there is a valid block. The rest (f16 super-block scales) is kept.
fn free_bytes(ty: GgmlType) -> Option<(usize, std::ops::Range<usize>)> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 => (18, 2..18),
        Q5_0 => (22, 2..22),
        Q8_0 => (34, 2..34),
        Q4K => (144, 4..144),
        Q5K => (176, 4..176),
        Q6K => (210, 0..208),
        _ => return None,
    })
}

fn scramble(ty: GgmlType, row: &mut Row, rng: &mut Rng) {
    let Some((block, range)) = free_bytes(ty) else {
        return;
    };
    let len = row.len;
    let bytes = &mut cast_slice_mut::<u32, u8>(&mut row.words)[..len];
    for b in bytes.chunks_exact_mut(block) {
        for byte in &mut b[range.clone()] {
            *byte = rng.next() as u8;
        }
    }
}

#[test]
fn tile_kernels_match_the_scalar_dot_of_each_row_within_float_rounding() {
    let mut tested = 0;
    for path in CpuPath::ALL {
        if path != CpuPath::Scalar && path.is_available() {
            tested += tiles_match_the_scalar_dot(path);
        }
    }
    quant::report_skipped_paths(
        "tile_kernels_match_the_scalar_dot_of_each_row_within_float_rounding",
    );
    if tested == 0 {
        eprintln!("no SIMD path here has tile kernels");
    }
}

#[test]
fn the_x86_paths_have_tile_kernels_for_the_k_quants_from_their_own_dot_path() {
    quant::report_skipped_paths(
        "the_x86_paths_have_tile_kernels_for_the_k_quants_from_their_own_dot_path",
    );
    for path in [
        CpuPath::Avx2,
        CpuPath::AvxVnni,
        CpuPath::Avx512,
        CpuPath::Avx512Vnni,
    ] {
        if !path.is_available() {
            continue;
        }
        for ty in TILE_TYPES {
            let k = row_kernels(ty, path).unwrap();
            assert!(k.dot_tile.is_some(), "{ty}: no tile kernel on {path}");
            assert_eq!(k.dot_path, path, "{ty}");
        }
    }
}

/// The number of (type, length, weights) cases tested on `path`.
fn tiles_match_the_scalar_dot(path: CpuPath) -> usize {
    let mut tested = 0;
    let mut rng = Rng(7);
    for ty in TILE_TYPES {
        let tiled = row_kernels(ty, path).unwrap();
        let Some(tile) = tiled.dot_tile else {
            eprintln!("{ty}: no tile kernel on the {path} path");
            continue;
        };
        let scalar = row_kernels(ty, CpuPath::Scalar).unwrap();
        let act_ty = tiled.act_type;
        let block = ty.block_size();
        // One block, a few, a 7B row and one more block.
        let lengths = [block, 3 * block, 4096, 4096 + block];
        for (case, &n) in lengths.iter().enumerate() {
            for scrambled in [false, true] {
                let scale = [0.02, 1.0, 300.0][case % 3];
                let x: Vec<f32> = (0..n).map(|_| rng.normal(scale)).collect();
                let mut w = Row::quantize(ty, &x);
                if scrambled {
                    scramble(ty, &mut w, &mut rng);
                }
                let acts: Vec<Row> = (0..TILE_ROWS)
                    .map(|i| {
                        let a: Vec<f32> = (0..n).map(|_| rng.normal(1.0 + i as f32)).collect();
                        Row::quantize(act_ty, &a)
                    })
                    .collect();
                let got = tile(w.bytes(), std::array::from_fn(|i| acts[i].bytes()));
                let wd = w.dequantize(ty, n);
                for (i, a) in acts.iter().enumerate() {
                    let want = (scalar.dot)(w.bytes(), a.bytes());
                    let ad = a.dequantize(act_ty, n);
                    let terms: f64 = wd
                        .iter()
                        .zip(&ad)
                        .map(|(&p, &q)| (f64::from(p) * f64::from(q)).abs())
                        .sum();
                    let diff = (f64::from(got[i]) - f64::from(want)).abs();
                    assert!(
                        diff <= 1e-5 * terms + 1e-30,
                        "{path} {ty} n={n} scrambled={scrambled} row {i}: tile {} vs scalar \
                         {want} (diff {diff:e}, Σ|w·a| {terms:e})",
                        got[i]
                    );
                }
                tested += 1;
            }
        }
    }
    tested
}
