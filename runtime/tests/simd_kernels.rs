//! Every SIMD kernel against its scalar reference (DESIGN.md, decisions 5 and 9).
//!
//! - Activation quantizers (Q8_0, Q8_1, Q8_K, F16): the bytes must be identical, for every
//!   input: random rows, zeros, signed zeros, exact rounding ties and near-ties, outliers,
//!   huge and tiny magnitudes, NaNs and infinities.
//! - Dot products: the integer block sums must be exact and the float result may differ from
//!   the reference only by the order of its additions. Two tests:
//!   1. With power-of-two scales and small quants every float operation of both paths is
//!      exact, so SIMD, scalar and the exact value (f64) must be bit-identical: any error in
//!      the integer arithmetic (a nibble, a bit, a scale or min, a sign) shows.
//!   2. Reference-quantized random rows and raw random blocks (every bit pattern of the quants,
//!      f16 scales from subnormal to ±65504): `|simd - scalar| <= 1e-5 · Σ|terms| + 1e-30`,
//!      where `Σ|terms|` is the sum of the magnitudes of the terms the dot adds up (the scale
//!      of its rounding error). The 1e-5 covers the worst case of either summation order for
//!      the lengths tested (4096 elements: at most 128 sequential f32 additions per
//!      accumulator, 128 · 2^-24 ≈ 7.6e-6); a wrong integer sum of a single block exceeds it
//!      on the short rows.
//!
//! Every SIMD path the CPU can run is tested: AVX2, and AVX-512 with and without VNNI where the
//! CPU has them, on x86-64; NEON, and NEON with `sdot` where the CPU has the dot-product
//! extension, on aarch64 (.ci/run runs them under QEMU as a Cortex-A53 and as a CPU with every
//! extension). Where there is none, the tests say so and pass: there is nothing to compare.
//! Row lengths are chosen to reach every remainder of the kernels' loops (the AVX-512 ones
//! take 32-element blocks four and two at a time, and F16 in 64s and 16s).

use bytemuck::{cast_slice, cast_slice_mut};
use half::f16;
use llava_runtime::quant::{
    self, report_skipped_paths, row_kernels, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0,
    BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1, CpuPath, GgmlType, RowKernels,
};

/// The weight types with a SIMD dot product (on every SIMD path).
const DOT_TYPES: [GgmlType; 9] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::F16,
];

/// One weight type per activation format with a SIMD quantizer (on every SIMD path).
const QUANTIZER_OWNERS: [GgmlType; 4] = [
    GgmlType::Q4_0, // Q8_0
    GgmlType::Q4_1, // Q8_1
    GgmlType::Q4K,  // Q8_K
    GgmlType::F16,  // F16
];

/// The SIMD paths this CPU can run; each one it cannot is reported as skipped by `test`.
fn simd_paths(test: &str) -> Vec<CpuPath> {
    report_skipped_paths(test);
    CpuPath::ALL
        .into_iter()
        .filter(|&path| path != CpuPath::Scalar && path.is_available())
        .collect()
}

/// The path whose activation quantizers `path` uses: the AVX-VNNI and AVX-512 paths have
/// none of their own and use AVX2's.
fn quantizer_path(path: CpuPath) -> CpuPath {
    match path {
        CpuPath::AvxVnni | CpuPath::Avx512 | CpuPath::Avx512Vnni => CpuPath::Avx2,
        path => path,
    }
}

/// (scalar, SIMD) kernels for `ty` on `path`.
fn kernels(ty: GgmlType, path: CpuPath) -> (RowKernels, RowKernels) {
    let scalar = row_kernels(ty, CpuPath::Scalar).unwrap();
    let simd = row_kernels(ty, path).unwrap();
    let want = quantizer_path(path);
    assert_eq!(
        simd.quantize_path, want,
        "{ty}: no {want} quantizer on {path}"
    );
    (scalar, simd)
}

/// Row lengths: 1, 2, 3, 5 and 7 blocks and 4096 elements (every remainder of a loop over
/// pairs and quads of blocks), and odd lengths for F16, whose "blocks" are single elements but
/// whose kernels work in 32s and 8s (AVX2), 64s and 16s (AVX-512).
fn lengths(ty: GgmlType) -> Vec<usize> {
    match ty.block_size() {
        1 => vec![
            1, 2, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 80, 100, 4096,
        ],
        b => vec![b, 2 * b, 3 * b, 5 * b, 7 * b, 4096],
    }
}

struct Rng(u64);

impl Rng {
    fn u64(&mut self) -> u64 {
        llava_runtime::rng::SplitMix64::step(&mut self.0)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Roughly normal (sum of four uniforms).
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() * 0.87
    }

    fn below(&mut self, n: u64) -> u64 {
        self.u64() % n
    }

    fn int(&mut self, lo: i32, hi: i32) -> i32 {
        lo + self.below((hi - lo + 1) as u64) as i32
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Bytes of a row, aligned for every block struct (their fields are at most 4 bytes wide).
#[derive(Clone)]
struct Row {
    words: Vec<u32>,
    len: usize,
}

impl Row {
    fn zeroed(ty: GgmlType, n: usize) -> Row {
        let len = ty.row_bytes(n as u64).unwrap() as usize;
        Row {
            words: vec![0; len.div_ceil(4)],
            len,
        }
    }

    fn bytes(&self) -> &[u8] {
        &cast_slice(&self.words)[..self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut cast_slice_mut(&mut self.words)[..self.len]
    }

    fn blocks<B: bytemuck::Pod>(&self) -> &[B] {
        cast_slice(self.bytes())
    }

    fn blocks_mut<B: bytemuck::Pod>(&mut self) -> &mut [B] {
        cast_slice_mut(self.bytes_mut())
    }
}

fn quantize_with(f: quant::dispatch::QuantizeFn, ty: GgmlType, x: &[f32]) -> Row {
    let mut row = Row::zeroed(ty, x.len());
    f(x, row.bytes_mut());
    row
}

fn dequantize(ty: GgmlType, row: &Row, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    quant::dequantize_row(ty, row.bytes(), &mut out).unwrap();
    out
}

// ---------------------------------------------------------------------------------------------
// Activation quantizers
// ---------------------------------------------------------------------------------------------

/// f32 rows of length `n` that exercise the quantizers, by name.
fn quantizer_inputs(n: usize, rng: &mut Rng) -> Vec<(&'static str, Vec<f32>)> {
    let mut rows = dot_inputs(n, rng);
    let mut add = |name, f: &mut dyn FnMut(usize) -> f32| {
        rows.push((name, (0..n).map(&mut *f).collect::<Vec<f32>>()))
    };
    // With amax = 127, d = 1 and 1/d = 1: x·id is x itself, so these are exact ties.
    add("ties", &mut |i| {
        if i % 32 == 0 {
            127.0
        } else {
            (i % 255) as f32 - 127.5
        }
    });
    // 0.49999997 + 0.5 rounds to 1.0 in f32: an add-half-and-truncate rounding gets it wrong.
    add("near ties", &mut |i| {
        [
            127.0,
            0.499_999_97,
            -0.499_999_97,
            1.499_999_9,
            -2.500_000_2,
            2.5,
            -0.5,
        ][i % 7]
    });
    add("huge", &mut |i| {
        f32::MAX * if i % 3 == 0 { -1.0 } else { 0.7 }
    });
    add("tiny", &mut |i| 1e-38 * (i % 5) as f32);
    add("subnormal", &mut |i| f32::from_bits(1 + (i as u32 % 200)));
    add("below 4e-37", &mut |i| {
        3e-37 * if i % 2 == 0 { 1.0 } else { -0.3 }
    });
    add("non-finite", &mut |i| match i % 11 {
        3 => f32::NAN,
        5 => f32::INFINITY,
        7 => f32::NEG_INFINITY,
        _ => i as f32 * 0.1,
    });
    add("nan only", &mut |_| f32::NAN);
    // F16 edges: the largest finite, the rounding boundary to infinity, subnormals, halfway
    // cases between f16 neighbours, signalling and payload NaNs.
    add("f16 edges", &mut |i| {
        [
            65504.0,
            65519.996,
            65520.0,
            -65536.0,
            6.103_515_6e-5,
            5.960_464_5e-8,
            2.980_232_2e-8,
            2.980_233e-8,
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
            -0.0,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xffc1_2345),
        ][i % 13]
    });
    rows
}

#[test]
fn simd_activation_quantizers_write_the_reference_bytes() {
    for path in simd_paths("simd_activation_quantizers_write_the_reference_bytes") {
        let mut rng = Rng(1);
        for owner in QUANTIZER_OWNERS {
            let (scalar, simd) = kernels(owner, path);
            let act = scalar.act_type;
            for n in lengths(act) {
                for (name, x) in quantizer_inputs(n, &mut rng) {
                    let want = quantize_with(scalar.quantize, act, &x);
                    let got = quantize_with(simd.quantize, act, &x);
                    if let Some(at) = (0..want.len).find(|&i| want.bytes()[i] != got.bytes()[i]) {
                        panic!(
                            "{path} {act} {name} n={n}: byte {at} (block {}) is {:#04x}, reference {:#04x}",
                            at / act.type_size(),
                            got.bytes()[at],
                            want.bytes()[at]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn simd_f16_quantizer_matches_half_for_every_f16_and_its_neighbours() {
    for path in simd_paths("simd_f16_quantizer_matches_half_for_every_f16_and_its_neighbours") {
        f16_quantizer_matches_half(path);
    }
}

fn f16_quantizer_matches_half(path: CpuPath) {
    let (scalar, simd) = kernels(GgmlType::F16, path);
    // Every f16 value, and the f32 values just above and below it (rounding boundaries).
    let x: Vec<f32> = (0..=u16::MAX)
        .flat_map(|h| {
            let v = f16::from_bits(h).to_f32();
            let b = v.to_bits();
            [
                v,
                f32::from_bits(b.wrapping_add(1)),
                f32::from_bits(b.wrapping_sub(1)),
            ]
        })
        .collect();
    let want = quantize_with(scalar.quantize, GgmlType::F16, &x);
    let got = quantize_with(simd.quantize, GgmlType::F16, &x);
    assert!(
        want.bytes() == got.bytes(),
        "{path}: F16 quantizer differs from half"
    );
}

// ---------------------------------------------------------------------------------------------
// Dot products
// ---------------------------------------------------------------------------------------------

/// f32 rows (weights or activations) of moderate magnitude, by name.
fn dot_inputs(n: usize, rng: &mut Rng) -> Vec<(&'static str, Vec<f32>)> {
    let mut rows: Vec<(&'static str, Vec<f32>)> = Vec::new();
    let mut add = |name, f: &mut dyn FnMut(usize) -> f32| {
        rows.push((name, (0..n).map(&mut *f).collect::<Vec<f32>>()))
    };
    add("uniform", &mut |_| rng.uniform());
    add("normal", &mut |_| rng.normal());
    add("outliers", &mut |i| {
        let v = rng.normal() * 0.01;
        if i % 37 == 5 {
            v * 1e5
        } else {
            v
        }
    });
    add("negative only", &mut |_| -rng.normal().abs() - 1e-3);
    add("zeros", &mut |_| 0.0);
    add("signed zeros", &mut |i| if i % 2 == 0 { -0.0 } else { 0.0 });
    add("max magnitude", &mut |i| {
        if i % 2 == 0 {
            1e4
        } else {
            -1e4
        }
    });
    add("constant", &mut |_| 0.75);
    add("sparse", &mut |i| {
        if i % 17 == 3 {
            rng.normal()
        } else {
            0.0
        }
    });
    rows
}

/// f16 scales from the whole range: subnormal, smallest normal, largest, negative, zero.
const SCALES: [f16; 10] = [
    f16::ONE,
    f16::from_f32_const(0.5),
    f16::from_f32_const(-0.25),
    f16::MAX,
    f16::MIN,
    f16::MIN_POSITIVE,
    f16::from_bits(1),
    f16::from_bits(0x8001),
    f16::ZERO,
    f16::from_f32_const(0.013),
];

/// A row of random bytes with its f16 fields replaced by values from `scales` (all bit
/// patterns of the quants, only finite scales).
fn raw_weights(ty: GgmlType, n: usize, scales: &[f16], rng: &mut Rng) -> Row {
    let mut row = Row::zeroed(ty, n);
    for w in &mut row.words {
        *w = rng.u64() as u32;
    }
    let mut pick = || rng.pick(scales);
    match ty {
        GgmlType::Q4_0 => row
            .blocks_mut::<BlockQ4_0>()
            .iter_mut()
            .for_each(|b| b.d = pick()),
        GgmlType::Q5_0 => row
            .blocks_mut::<BlockQ5_0>()
            .iter_mut()
            .for_each(|b| b.d = pick()),
        GgmlType::Q8_0 => row
            .blocks_mut::<BlockQ8_0>()
            .iter_mut()
            .for_each(|b| b.d = pick()),
        GgmlType::Q4_1 => row.blocks_mut::<BlockQ4_1>().iter_mut().for_each(|b| {
            b.d = pick();
            b.m = pick();
        }),
        GgmlType::Q5_1 => row.blocks_mut::<BlockQ5_1>().iter_mut().for_each(|b| {
            b.d = pick();
            b.m = pick();
        }),
        GgmlType::Q4K => row.blocks_mut::<BlockQ4K>().iter_mut().for_each(|b| {
            b.d = pick();
            b.dmin = pick();
        }),
        GgmlType::Q5K => row.blocks_mut::<BlockQ5K>().iter_mut().for_each(|b| {
            b.d = pick();
            b.dmin = pick();
        }),
        GgmlType::Q6K => row
            .blocks_mut::<BlockQ6K>()
            .iter_mut()
            .for_each(|b| b.d = pick()),
        GgmlType::F16 => row.blocks_mut::<f16>().iter_mut().for_each(|h| *h = pick()),
        other => panic!("no raw weights for {other}"),
    }
    row
}

/// ggml's `get_scale_min_k4`, written from the layout (GGUF-AND-LLAVA.md §2.2).
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Σ|terms| of the reference dot: the magnitudes of the quantities it adds up, in f64. The
/// scale part `d·q` of an affine weight is its dequantized value with the min taken back off;
/// the min part is counted as the dot forms it, once per (sub-)block from the activation sums.
fn magnitude(ty: GgmlType, w: &Row, act: GgmlType, a: &Row, n: usize) -> f64 {
    let wd = dequantize(ty, w, n);
    let ad = dequantize(act, a, n);
    let mut offsets = vec![0f64; n]; // what to add to wd to get d·q
    let mut min_terms = 0f64;
    match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            let mins: Vec<f32> = if ty == GgmlType::Q4_1 {
                w.blocks::<BlockQ4_1>()
                    .iter()
                    .map(|b| b.m.to_f32())
                    .collect()
            } else {
                w.blocks::<BlockQ5_1>()
                    .iter()
                    .map(|b| b.m.to_f32())
                    .collect()
            };
            for ((m, off), y) in mins
                .iter()
                .zip(offsets.chunks_mut(32))
                .zip(a.blocks::<BlockQ8_1>())
            {
                off.fill(-f64::from(*m));
                min_terms += (f64::from(*m) * f64::from(y.s.to_f32())).abs();
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let heads: Vec<(f32, [u8; 12])> = if ty == GgmlType::Q4K {
                w.blocks::<BlockQ4K>()
                    .iter()
                    .map(|b| (b.dmin.to_f32(), b.scales))
                    .collect()
            } else {
                w.blocks::<BlockQ5K>()
                    .iter()
                    .map(|b| (b.dmin.to_f32(), b.scales))
                    .collect()
            };
            for (((dmin, scales), off), y) in heads
                .iter()
                .zip(offsets.chunks_mut(256))
                .zip(a.blocks::<BlockQ8K>())
            {
                for (j, off) in off.chunks_mut(32).enumerate() {
                    let m = f64::from(scale_min_k4(j, scales).1);
                    off.fill(f64::from(*dmin) * m);
                    let sum = i32::from(y.bsums[2 * j]) + i32::from(y.bsums[2 * j + 1]);
                    min_terms += (f64::from(*dmin) * m * f64::from(y.d) * f64::from(sum)).abs();
                }
            }
        }
        _ => {}
    }
    let scaled: f64 = wd
        .iter()
        .zip(&offsets)
        .zip(&ad)
        .map(|((&w, &o), &a)| ((f64::from(w) + o) * f64::from(a)).abs())
        .sum();
    scaled + min_terms
}

fn assert_close(ty: GgmlType, what: &str, simd: f32, scalar: f32, magnitude: f64) {
    let err = (f64::from(simd) - f64::from(scalar)).abs();
    let tol = 1e-5 * magnitude + 1e-30;
    assert!(
        err <= tol,
        "{ty} {what}: simd {simd:e}, scalar {scalar:e}: error {err:e} over {tol:e} (Σ|terms| {magnitude:e})"
    );
}

#[test]
fn simd_dots_match_the_reference_within_float_rounding() {
    for path in simd_paths("simd_dots_match_the_reference_within_float_rounding") {
        dots_match_the_reference_within_float_rounding(path);
    }
}

fn dots_match_the_reference_within_float_rounding(path: CpuPath) {
    let mut rng = Rng(2);
    for ty in DOT_TYPES {
        let (scalar, simd) = kernels(ty, path);
        assert_eq!(simd.dot_path, path, "{ty}: no {path} dot");
        let act = scalar.act_type;
        for n in lengths(ty) {
            let mut weights: Vec<(String, Row)> = dot_inputs(n, &mut rng)
                .into_iter()
                .map(|(name, x)| {
                    let mut row = Row::zeroed(ty, n);
                    quant::quantize_row(ty, &x, row.bytes_mut()).unwrap();
                    (format!("{name} weights"), row)
                })
                .collect();
            for i in 0..4 {
                let row = raw_weights(ty, n, &SCALES, &mut rng);
                weights.push((format!("raw weights {i}"), row));
            }
            let acts: Vec<(&str, Row)> = dot_inputs(n, &mut rng)
                .into_iter()
                .map(|(name, x)| (name, quantize_with(scalar.quantize, act, &x)))
                .collect();
            for (w_name, w) in &weights {
                for (a_name, a) in &acts {
                    let want = (scalar.dot)(w.bytes(), a.bytes());
                    let got = (simd.dot)(w.bytes(), a.bytes());
                    let what = format!("{path}, n={n}, {w_name} · {a_name} activations");
                    assert_close(ty, &what, got, want, magnitude(ty, w, act, a, n));
                }
            }
        }
    }
}

/// An activation row of random quants in `-range..=range` with power-of-two scales (and the
/// derived fields consistent), built directly rather than quantized.
fn raw_activations(act: GgmlType, n: usize, range: i32, rng: &mut Rng) -> Row {
    let mut row = Row::zeroed(act, n);
    match act {
        GgmlType::Q8_0 => row.blocks_mut::<BlockQ8_0>().iter_mut().for_each(|b| {
            b.d = rng.pick(&[f16::ONE, f16::from_f32_const(0.5)]);
            b.qs.iter_mut()
                .for_each(|q| *q = rng.int(-range, range) as i8);
        }),
        GgmlType::Q8_1 => row.blocks_mut::<BlockQ8_1>().iter_mut().for_each(|b| {
            b.d = rng.pick(&[f16::ONE, f16::from_f32_const(0.5)]);
            b.qs.iter_mut()
                .for_each(|q| *q = rng.int(-range, range) as i8);
            let sum: i32 = b.qs.iter().map(|&q| i32::from(q)).sum();
            b.s = f16::from_f32(b.d.to_f32() * sum as f32);
        }),
        GgmlType::Q8K => row.blocks_mut::<BlockQ8K>().iter_mut().for_each(|b| {
            b.d = rng.pick(&[1.0, 0.5]);
            b.qs.iter_mut()
                .for_each(|q| *q = rng.int(-range, range) as i8);
            for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                *s = qs.iter().map(|&q| i16::from(q)).sum();
            }
        }),
        GgmlType::F16 => row
            .blocks_mut::<f16>()
            .iter_mut()
            .for_each(|h| *h = f16::from_f32(rng.int(-range, range) as f32)),
        other => panic!("no raw activations for {other}"),
    }
    row
}

#[test]
fn simd_dots_sum_integers_exactly() {
    for path in simd_paths("simd_dots_sum_integers_exactly") {
        dots_sum_integers_exactly(path);
    }
}

fn dots_sum_integers_exactly(path: CpuPath) {
    let mut rng = Rng(3);
    // Scales 1/2, 1 or 2 on both sides make every term a multiple of 1/4; below 2^22 in
    // total, every partial sum is then exact in f32 whatever the order of the additions.
    let scales = [
        f16::ONE,
        f16::from_f32_const(0.5),
        f16::from_f32_const(2.0),
        f16::from_f32_const(-1.0),
    ];
    for ty in DOT_TYPES {
        let (scalar, simd) = kernels(ty, path);
        let act = scalar.act_type;
        let (n_blocks, range) = match ty {
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => (vec![1, 2, 3], 3),
            GgmlType::F16 => (vec![1, 7, 17, 33, 80, 4096], 16),
            // The activation sum `s = d·Σq` is an f16: exact while |Σq| <= 2048.
            GgmlType::Q4_1 | GgmlType::Q5_1 => (vec![1, 2, 3, 5, 7], 60),
            _ => (vec![1, 2, 3, 5, 7], 127),
        };
        for blocks in n_blocks {
            let n = blocks * ty.block_size();
            for trial in 0..20 {
                let w = if ty == GgmlType::F16 {
                    raw_activations(GgmlType::F16, n, 16, &mut rng)
                } else {
                    raw_weights(ty, n, &scales, &mut rng)
                };
                let a = raw_activations(act, n, range, &mut rng);
                let magnitude = magnitude(ty, &w, act, &a, n);
                assert!(magnitude < (1 << 22) as f64, "{ty}: test data too large");
                let exact: f64 = dequantize(ty, &w, n)
                    .iter()
                    .zip(dequantize(act, &a, n))
                    .map(|(&w, a)| f64::from(w) * f64::from(a))
                    .sum();
                let want = (scalar.dot)(w.bytes(), a.bytes());
                let got = (simd.dot)(w.bytes(), a.bytes());
                assert_eq!(f64::from(want), exact, "{ty} n={n} #{trial}: the reference");
                assert_eq!(f64::from(got), exact, "{ty} n={n} #{trial}: {path}");
            }
        }
    }
}
