//! The block formats against ggml's own C code, the oracle (DESIGN.md, decision 9).
//!
//! ggml is llama.cpp b2757 (April 2024), built by the `ggml-sys-bleedingedge` dev-dependency.
//! For every format, rows of several shapes and lengths are quantized by our reference
//! quantizer and by ggml's `quantize_row_*_reference` (the bytes must be identical), the same
//! bytes are dequantized by both (the f32 bits must be identical), and the dot products with
//! the paired activation format are compared within the tolerance ggml's own
//! `tests/test-quantize-fns.cpp` allows, and within 1e-4 of Σ|w·a|: ggml's `ggml_vec_dot_*`
//! in this build is SIMD, so only its integer sums match our scalar reference exactly, not its
//! float summation order.
//!
//! The oracle is compiled with `-ffp-contract=off` (`.cargo/config.toml`): with the default
//! contraction, gcc fuses `a*b + c` in ggml's scale searches into FMAs and the K-quant
//! reference quantizers stop matching a plain IEEE reading of their own source.
//!
//! b2757 predates ggml's BF16 type; BF16 is checked against the `half` crate, whose
//! conversion follows the same rule as ggml's later `ggml_compute_fp32_to_bf16`.
//!
//! x86-64 only, as the oracle is (runtime/Cargo.toml).
#![cfg(target_arch = "x86_64")]

use llava_runtime::rng::SplitMix64;
use std::ffi::c_void;
use std::sync::Once;

use bytemuck::Zeroable;
use ggml_sys_bleedingedge as ggml;
use half::{bf16, f16};
use llava_runtime::quant::{
    BlockFormat, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0,
    BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1, VecDot,
};

// ggml-quants.h of b2757: present in the static library, absent from the crate's bindings.
extern "C" {
    fn quantize_row_q4_0_reference(x: *const f32, y: *mut c_void, k: i64);
    fn quantize_row_q4_1_reference(x: *const f32, y: *mut c_void, k: i64);
    fn quantize_row_q5_0_reference(x: *const f32, y: *mut c_void, k: i64);
    fn quantize_row_q5_1_reference(x: *const f32, y: *mut c_void, k: i64);
    fn quantize_row_q8_0_reference(x: *const f32, y: *mut c_void, k: i64);
    fn quantize_row_q8_1_reference(x: *const f32, y: *mut c_void, k: i64);
    fn quantize_row_q2_K_reference(x: *const f32, y: *mut c_void, k: i64);
    fn quantize_row_q3_K_reference(x: *const f32, y: *mut c_void, k: i64);
    fn quantize_row_q4_K_reference(x: *const f32, y: *mut c_void, k: i64);
    fn quantize_row_q5_K_reference(x: *const f32, y: *mut c_void, k: i64);
    fn quantize_row_q6_K_reference(x: *const f32, y: *mut c_void, k: i64);
    fn quantize_row_q8_K_reference(x: *const f32, y: *mut c_void, k: i64);

    fn dequantize_row_q4_0(x: *const c_void, y: *mut f32, k: i64);
    fn dequantize_row_q4_1(x: *const c_void, y: *mut f32, k: i64);
    fn dequantize_row_q5_0(x: *const c_void, y: *mut f32, k: i64);
    fn dequantize_row_q5_1(x: *const c_void, y: *mut f32, k: i64);
    fn dequantize_row_q8_0(x: *const c_void, y: *mut f32, k: i64);
    fn dequantize_row_q2_K(x: *const c_void, y: *mut f32, k: i64);
    fn dequantize_row_q3_K(x: *const c_void, y: *mut f32, k: i64);
    fn dequantize_row_q4_K(x: *const c_void, y: *mut f32, k: i64);
    fn dequantize_row_q5_K(x: *const c_void, y: *mut f32, k: i64);
    fn dequantize_row_q6_K(x: *const c_void, y: *mut f32, k: i64);
    fn dequantize_row_q8_K(x: *const c_void, y: *mut f32, k: i64);
}

type GgmlQuantize = unsafe extern "C" fn(*const f32, *mut c_void, i64);
type GgmlDequantize = unsafe extern "C" fn(*const c_void, *mut f32, i64);

/// ggml's quantizers read f16 through a table that `ggml_init` fills; the context is kept for
/// the life of the test process.
fn init_ggml() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let params = ggml::ggml_init_params {
            mem_size: 1 << 20,
            mem_buffer: std::ptr::null_mut(),
            no_alloc: false,
        };
        // SAFETY: plain C call with valid parameters; the context is deliberately leaked.
        let ctx = unsafe { ggml::ggml_init(params) };
        assert!(!ctx.is_null(), "ggml_init failed");
    });
}

// ---------------------------------------------------------------------------------------------
// Test rows
// ---------------------------------------------------------------------------------------------

/// Deterministic, dependency-free test data: splitmix64 with Box–Muller.
struct Rng(SplitMix64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0.next_f64_nonzero()
    }

    fn normal(&mut self) -> f32 {
        self.0.next_normal()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
}

/// Named rows of `n` elements covering the shapes where quantizers go wrong.
fn row_patterns(n: usize, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
    let mut rng = Rng(SplitMix64(seed));
    let mut rows = vec![
        ("normal", rng.normals(n)),
        ("zeros", vec![0.0; n]),
        ("constant positive", vec![0.75; n]),
        ("constant negative", vec![-3.5; n]),
    ];
    let mut outlier = rng.normals(n);
    outlier[n / 3] = 1e4;
    rows.push(("one huge outlier", outlier));
    let mut outlier = rng.normals(n);
    outlier[n - 1] = -1e4;
    rows.push(("one huge negative outlier", outlier));
    // Around and below f16's smallest subnormal (6e-8): the f16 scales underflow.
    let tiny = (0..n)
        .map(|_| rng.normal() * 10f32.powf(-6.0 - 2.0 * rng.uniform() as f32))
        .collect();
    rows.push(("tiny, near f16 underflow", tiny));
    rows.push((
        "negative only",
        rng.normals(n).iter().map(|v| -v.abs()).collect(),
    ));
    rows.push((
        "positive only",
        rng.normals(n).iter().map(|v| v.abs() + 0.1).collect(),
    ));
    // A new magnitude every 16 elements, 1e-4..1e4: sub-block scales far apart.
    let mut mixed = rng.normals(n);
    for chunk in mixed.chunks_mut(16) {
        let scale = 10f32.powf(8.0 * rng.uniform() as f32 - 4.0);
        chunk.iter_mut().for_each(|v| *v *= scale);
    }
    rows.push(("mixed scales per 16", mixed));
    // Mostly zeros: whole sub-blocks of zeros next to live ones.
    let sparse = (0..n)
        .map(|_| {
            if rng.uniform() < 0.1 {
                rng.normal()
            } else {
                0.0
            }
        })
        .collect();
    rows.push(("sparse", sparse));
    // Multiples of 1/2: exact rounding ties for roundf and nearest_int.
    rows.push((
        "half-integer ties",
        (0..n).map(|i| (i % 33) as f32 * 0.5 - 8.0).collect(),
    ));
    // Scales past f16's range (65504): the stored d saturates to infinity.
    rows.push((
        "beyond f16 range",
        rng.normals(n).iter().map(|v| v * 1e6).collect(),
    ));
    rows
}

/// Row lengths in blocks: 1, 3 and 17 blocks of 32; 1..=4 super-blocks of 256.
fn row_lengths(block_size: usize) -> Vec<usize> {
    match block_size {
        1 => vec![1, 3, 17, 96, 544],
        32 => vec![32, 96, 544],
        256 => vec![256, 512, 768, 1024],
        other => panic!("no test lengths for block size {other}"),
    }
}

/// Random rows of assorted distributions and magnitudes, to reach the rare rounding cases the
/// named patterns miss.
const N_RANDOM_ROWS: usize = 48;

fn random_rows(block_size: usize) -> Vec<(String, Vec<f32>)> {
    let lengths = row_lengths(block_size);
    (0..N_RANDOM_ROWS)
        .map(|i| {
            let mut rng = Rng(SplitMix64(0xd1ce + i as u64));
            let n = lengths[i % lengths.len()];
            let scale = 10f32.powf(6.0 * rng.uniform() as f32 - 3.0);
            let offset = if i % 3 == 0 {
                rng.normal() * scale
            } else {
                0.0
            };
            let row = (0..n)
                .map(|_| match i % 4 {
                    0 => rng.normal(),
                    1 => rng.normal() * rng.normal().exp(), // heavy-tailed
                    2 => 2.0 * rng.uniform() as f32 - 1.0,
                    _ => rng.normal().powi(3),
                })
                .map(|v| v * scale + offset)
                .collect();
            (format!("random #{i} ({n} elements)"), row)
        })
        .collect()
}

fn all_rows(block_size: usize) -> Vec<(String, Vec<f32>)> {
    let mut rows = Vec::new();
    for (i, n) in row_lengths(block_size).into_iter().enumerate() {
        for (name, row) in row_patterns(n, 0x5eed + i as u64) {
            rows.push((format!("{name} ({n} elements)"), row));
        }
    }
    rows.extend(random_rows(block_size));
    rows
}

/// Arbitrary block bytes, including NaN and infinite scales: dequantizers must agree on every
/// bit pattern, not only the ones the quantizers produce.
fn random_blocks<B: BlockFormat>(n_blocks: usize, seed: u64) -> Vec<B> {
    let mut rng = Rng(SplitMix64(seed));
    let mut blocks = vec![B::zeroed(); n_blocks];
    for byte in bytemuck::cast_slice_mut::<B, u8>(&mut blocks) {
        *byte = rng.next_u64() as u8;
    }
    blocks
}

// ---------------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------------

fn assert_quantize_matches<B: BlockFormat>(ggml_quantize: GgmlQuantize) {
    init_ggml();
    for (name, x) in all_rows(B::BLOCK_SIZE) {
        let n_blocks = x.len() / B::BLOCK_SIZE;
        let mut ours = vec![B::zeroed(); n_blocks];
        B::quantize_row(&x, &mut ours);
        let mut theirs = vec![B::zeroed(); n_blocks];
        // SAFETY: `theirs` holds exactly the n_blocks blocks ggml writes for x.len() elements.
        unsafe { ggml_quantize(x.as_ptr(), theirs.as_mut_ptr().cast(), x.len() as i64) };
        assert_same_bytes::<B>(&ours, &theirs, &name);
    }
}

#[track_caller]
fn assert_same_bytes<B: BlockFormat>(ours: &[B], theirs: &[B], what: &str) {
    let (a, b) = (
        bytemuck::cast_slice::<B, u8>(ours),
        bytemuck::cast_slice::<B, u8>(theirs),
    );
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        let size = std::mem::size_of::<B>();
        let block = i / size;
        panic!(
            "{}: quantized bytes differ from ggml for row \"{what}\": block {block}, byte {} \
             (ours {:#04x}, ggml {:#04x})\n ours: {:02x?}\n ggml: {:02x?}",
            B::TYPE,
            i % size,
            a[i],
            b[i],
            &a[block * size..(block + 1) * size],
            &b[block * size..(block + 1) * size],
        );
    }
}

#[track_caller]
fn assert_same_bits(ours: &[f32], theirs: &[f32], what: &str) {
    if let Some(i) = ours
        .iter()
        .zip(theirs)
        .position(|(x, y)| x.to_bits() != y.to_bits())
    {
        panic!(
            "dequantized bits differ from ggml for {what}: element {i}, ours {} ({:#010x}), \
             ggml {} ({:#010x})",
            ours[i],
            ours[i].to_bits(),
            theirs[i],
            theirs[i].to_bits()
        );
    }
}

fn assert_dequantize_matches<B: BlockFormat>(ggml_dequantize: GgmlDequantize) {
    init_ggml();
    let mut inputs: Vec<(String, Vec<B>)> = all_rows(B::BLOCK_SIZE)
        .into_iter()
        .map(|(name, x)| {
            let mut blocks = vec![B::zeroed(); x.len() / B::BLOCK_SIZE];
            B::quantize_row(&x, &mut blocks);
            (format!("quantized \"{name}\""), blocks)
        })
        .collect();
    for seed in 0..64 {
        inputs.push((
            format!("random bytes, seed {seed}"),
            random_blocks::<B>(4, seed),
        ));
    }
    for (name, blocks) in inputs {
        let n = blocks.len() * B::BLOCK_SIZE;
        let mut ours = vec![0f32; n];
        B::dequantize_row(&blocks, &mut ours);
        let mut theirs = vec![0f32; n];
        // SAFETY: `blocks` holds n / BLOCK_SIZE blocks; `theirs` has room for n floats.
        unsafe { ggml_dequantize(blocks.as_ptr().cast(), theirs.as_mut_ptr(), n as i64) };
        assert_same_bits(&ours, &theirs, &format!("{} {name}", B::TYPE));
    }
}

/// ggml's `tests/test-quantize-fns.cpp` bounds |dot - reference| / n by an absolute 0.02
/// (0.04 for Q2_K), which only fits rows of unit scale: on the "beyond f16 range" row two
/// correct sums of ±2.6e7 differ by 2 (one f32 ulp there) and the bound fails or passes with
/// the summation order, that is with the instruction set (it failed on AVX-512 machines). And
/// it is loose enough to hide a dropped term. So the difference is bounded relative to
/// Σ|w·a|, the scale of the float rounding: both sides sum the same exact integer block sums,
/// only in a different order. The largest ratio seen is 5.5e-6 (Q2_K, whose scale and min
/// terms partly cancel); 1e-4 leaves room without letting a real error through (a dropped
/// 32-element block of a 256-element row moves the sum by about 2e-2 of Σ|w·a|).
const MAX_DOT_DIFF_PER_MAGNITUDE: f64 = 1e-4;

/// Σ|w·a| over the dequantized rows, in f64.
fn dot_magnitude<W: VecDot>(weights: &[W], activations: &[W::Activation]) -> f64 {
    let n = weights.len() * W::BLOCK_SIZE;
    let (mut w, mut a) = (vec![0f32; n], vec![0f32; n]);
    W::dequantize_row(weights, &mut w);
    W::Activation::dequantize_row(activations, &mut a);
    w.iter()
        .zip(&a)
        .map(|(&p, &q)| (f64::from(p) * f64::from(q)).abs())
        .sum()
}

/// Our scalar dot against ggml's on identical bytes (weights from the test rows, activations
/// quantized by our reference). The largest differences are printed (`--nocapture`).
fn assert_dot_matches<W: VecDot>() {
    let ggml_dot = ggml_vec_dot::<W>();
    let (mut max_abs_diff, mut max_rel_diff) = (0f32, 0f64);
    for (i, (name, x)) in all_rows(W::BLOCK_SIZE).into_iter().enumerate() {
        let n = x.len();
        let mut weights = vec![W::zeroed(); n / W::BLOCK_SIZE];
        W::quantize_row(&x, &mut weights);
        let a = Rng(SplitMix64(0xac7 + i as u64)).normals(n);
        let mut activations = vec![W::Activation::zeroed(); n / W::Activation::BLOCK_SIZE];
        W::Activation::quantize_row(&a, &mut activations);

        let ours = W::vec_dot(&weights, &activations);
        let theirs = ggml_dot(n, &weights, &activations);
        let what = format!(
            "{}·{} dot for row \"{name}\": ours {ours}, ggml {theirs}",
            W::TYPE,
            W::Activation::TYPE
        );
        if !ours.is_finite() || !theirs.is_finite() {
            // A scale saturated to f16 infinity ("beyond f16 range"): ggml's SIMD lanes can
            // meet inf·0 = NaN where the scalar sum stays at inf, so only non-finiteness is
            // required to agree.
            assert!(!ours.is_finite() && !theirs.is_finite(), "{what}");
            continue;
        }
        let diff = (ours - theirs).abs();
        let magnitude = dot_magnitude(&weights, &activations);
        let rel_diff = if magnitude > 0.0 {
            f64::from(diff) / magnitude
        } else {
            f64::from(diff)
        };
        assert!(
            rel_diff <= MAX_DOT_DIFF_PER_MAGNITUDE,
            "{what}, Σ|w·a| = {magnitude}"
        );
        max_abs_diff = max_abs_diff.max(diff);
        max_rel_diff = max_rel_diff.max(rel_diff);
    }
    eprintln!(
        "{}·{} dot: max |ours - ggml| = {max_abs_diff:e}, max |ours - ggml| / Σ|w·a| = {max_rel_diff:e}",
        W::TYPE,
        W::Activation::TYPE
    );
}

/// ggml's dot for weight type `W`, from its type traits (the F32/F16 dots are static in
/// ggml.c, so this is the one way to reach every dot alike). ggml's own pairing must be ours.
fn ggml_vec_dot<W: VecDot>() -> impl Fn(usize, &[W], &[W::Activation]) -> f32 {
    init_ggml();
    // SAFETY: plain lookup in ggml's static type table.
    let traits = unsafe { ggml::ggml_internal_get_type_traits(W::TYPE.id()) };
    assert_eq!(
        traits.vec_dot_type,
        W::Activation::TYPE.id(),
        "ggml pairs {} with another activation type",
        W::TYPE
    );
    let dot = traits
        .vec_dot
        .expect("ggml has a vec_dot for every weight type");
    move |n, w, a| {
        let mut s = f32::NAN;
        // SAFETY: both slices cover n elements in their formats, as ggml requires; nrc = 1
        // row, so the strides are unused.
        unsafe {
            dot(
                n as i32,
                &mut s,
                0,
                w.as_ptr().cast(),
                0,
                a.as_ptr().cast(),
                0,
                1,
            )
        };
        s
    }
}

// ---------------------------------------------------------------------------------------------
// 32-element formats
// ---------------------------------------------------------------------------------------------

#[test]
fn q4_0_quantize_matches_ggml_bit_for_bit() {
    assert_quantize_matches::<BlockQ4_0>(quantize_row_q4_0_reference);
}

#[test]
fn q4_0_dequantize_matches_ggml_bit_for_bit() {
    assert_dequantize_matches::<BlockQ4_0>(dequantize_row_q4_0);
}

#[test]
fn q4_0_q8_0_dot_matches_ggml_within_float_rounding() {
    assert_dot_matches::<BlockQ4_0>();
}

#[test]
fn q4_1_quantize_matches_ggml_bit_for_bit() {
    assert_quantize_matches::<BlockQ4_1>(quantize_row_q4_1_reference);
}

#[test]
fn q4_1_dequantize_matches_ggml_bit_for_bit() {
    assert_dequantize_matches::<BlockQ4_1>(dequantize_row_q4_1);
}

#[test]
fn q4_1_q8_1_dot_matches_ggml_within_float_rounding() {
    assert_dot_matches::<BlockQ4_1>();
}

#[test]
fn q5_0_quantize_matches_ggml_bit_for_bit() {
    assert_quantize_matches::<BlockQ5_0>(quantize_row_q5_0_reference);
}

#[test]
fn q5_0_dequantize_matches_ggml_bit_for_bit() {
    assert_dequantize_matches::<BlockQ5_0>(dequantize_row_q5_0);
}

#[test]
fn q5_0_q8_0_dot_matches_ggml_within_float_rounding() {
    assert_dot_matches::<BlockQ5_0>();
}

#[test]
fn q5_1_quantize_matches_ggml_bit_for_bit() {
    assert_quantize_matches::<BlockQ5_1>(quantize_row_q5_1_reference);
}

#[test]
fn q5_1_dequantize_matches_ggml_bit_for_bit() {
    assert_dequantize_matches::<BlockQ5_1>(dequantize_row_q5_1);
}

#[test]
fn q5_1_q8_1_dot_matches_ggml_within_float_rounding() {
    assert_dot_matches::<BlockQ5_1>();
}

#[test]
fn q8_0_quantize_matches_ggml_bit_for_bit() {
    assert_quantize_matches::<BlockQ8_0>(quantize_row_q8_0_reference);
}

#[test]
fn q8_0_dequantize_matches_ggml_bit_for_bit() {
    assert_dequantize_matches::<BlockQ8_0>(dequantize_row_q8_0);
}

#[test]
fn q8_0_q8_0_dot_matches_ggml_within_float_rounding() {
    assert_dot_matches::<BlockQ8_0>();
}

#[test]
fn q8_1_quantize_matches_ggml_bit_for_bit() {
    assert_quantize_matches::<BlockQ8_1>(quantize_row_q8_1_reference);
}

/// ggml has no `dequantize_row_q8_1` (Q8_1 is never read back); ours must agree with Q8_0's,
/// whose layout it extends.
#[test]
fn q8_1_dequantize_matches_ggml_q8_0_on_the_shared_fields() {
    init_ggml();
    for (name, x) in all_rows(32) {
        let mut q8_1 = vec![BlockQ8_1::zeroed(); x.len() / 32];
        BlockQ8_1::quantize_row(&x, &mut q8_1);
        let q8_0: Vec<BlockQ8_0> = q8_1
            .iter()
            .map(|b| BlockQ8_0 { d: b.d, qs: b.qs })
            .collect();
        let mut ours = vec![0f32; x.len()];
        BlockQ8_1::dequantize_row(&q8_1, &mut ours);
        let mut theirs = vec![0f32; x.len()];
        // SAFETY: q8_0 holds x.len() / 32 blocks.
        unsafe { dequantize_row_q8_0(q8_0.as_ptr().cast(), theirs.as_mut_ptr(), x.len() as i64) };
        assert_same_bits(&ours, &theirs, &format!("q8_1 \"{name}\""));
    }
}

// ---------------------------------------------------------------------------------------------
// K-quants
// ---------------------------------------------------------------------------------------------

#[test]
fn q2_k_quantize_matches_ggml_bit_for_bit() {
    assert_quantize_matches::<BlockQ2K>(quantize_row_q2_K_reference);
}

#[test]
fn q2_k_dequantize_matches_ggml_bit_for_bit() {
    assert_dequantize_matches::<BlockQ2K>(dequantize_row_q2_K);
}

#[test]
fn q2_k_q8_k_dot_matches_ggml_within_float_rounding() {
    assert_dot_matches::<BlockQ2K>();
}

#[test]
fn q3_k_quantize_matches_ggml_bit_for_bit() {
    assert_quantize_matches::<BlockQ3K>(quantize_row_q3_K_reference);
}

#[test]
fn q3_k_dequantize_matches_ggml_bit_for_bit() {
    assert_dequantize_matches::<BlockQ3K>(dequantize_row_q3_K);
}

#[test]
fn q3_k_q8_k_dot_matches_ggml_within_float_rounding() {
    assert_dot_matches::<BlockQ3K>();
}

#[test]
fn q4_k_quantize_matches_ggml_bit_for_bit() {
    assert_quantize_matches::<BlockQ4K>(quantize_row_q4_K_reference);
}

#[test]
fn q4_k_dequantize_matches_ggml_bit_for_bit() {
    assert_dequantize_matches::<BlockQ4K>(dequantize_row_q4_K);
}

#[test]
fn q4_k_q8_k_dot_matches_ggml_within_float_rounding() {
    assert_dot_matches::<BlockQ4K>();
}

#[test]
fn q5_k_quantize_matches_ggml_bit_for_bit() {
    assert_quantize_matches::<BlockQ5K>(quantize_row_q5_K_reference);
}

#[test]
fn q5_k_dequantize_matches_ggml_bit_for_bit() {
    assert_dequantize_matches::<BlockQ5K>(dequantize_row_q5_K);
}

#[test]
fn q5_k_q8_k_dot_matches_ggml_within_float_rounding() {
    assert_dot_matches::<BlockQ5K>();
}

#[test]
fn q6_k_quantize_matches_ggml_bit_for_bit() {
    assert_quantize_matches::<BlockQ6K>(quantize_row_q6_K_reference);
}

#[test]
fn q6_k_dequantize_matches_ggml_bit_for_bit() {
    assert_dequantize_matches::<BlockQ6K>(dequantize_row_q6_K);
}

#[test]
fn q6_k_q8_k_dot_matches_ggml_within_float_rounding() {
    assert_dot_matches::<BlockQ6K>();
}

#[test]
fn q8_k_quantize_matches_ggml_bit_for_bit() {
    assert_quantize_matches::<BlockQ8K>(quantize_row_q8_K_reference);
}

#[test]
fn q8_k_dequantize_matches_ggml_bit_for_bit() {
    assert_dequantize_matches::<BlockQ8K>(dequantize_row_q8_K);
}

// ---------------------------------------------------------------------------------------------
// F32, F16, BF16
// ---------------------------------------------------------------------------------------------

/// f32 bit patterns spread over the whole space (every sign, exponent, NaN payloads), plus the
/// values where rounding to 16 bits is decided.
fn f32_sweep() -> Vec<f32> {
    let mut values: Vec<f32> = (0..=u32::MAX / 1021)
        .map(|i| f32::from_bits(i * 1021))
        .collect();
    for bits in [
        0x0000_0000u32,
        0x8000_0000,
        0x0000_0001,
        0x3380_0000, // 2^-24: f16's smallest subnormal
        0x3300_0000, // 2^-25: ties to zero
        0x3300_0001,
        0x477f_e000, // 65504: f16 max
        0x477f_efff,
        0x477f_f000, // halfway to 65536: rounds to infinity
        0x3f80_1000, // 1 + 2^-11: f16 tie
        0x3f80_3000,
        0x3f80_8000, // 1 + 2^-8: bf16 tie
        0x3f81_8000,
        0x7f7f_ffff,
        0x7f80_0000,
        0xff80_0000,
        0x7f80_0001, // signalling NaN
        0x7fc0_0000,
        0xffff_ffff,
    ] {
        values.push(f32::from_bits(bits));
    }
    values
}

#[test]
fn f32_quantize_and_dequantize_keep_every_bit() {
    let x = f32_sweep();
    let mut q = vec![0f32; x.len()];
    f32::quantize_row(&x, &mut q);
    let mut back = vec![0f32; x.len()];
    f32::dequantize_row(&q, &mut back);
    assert_same_bits(&back, &x, "f32");
}

#[test]
fn f32_dot_matches_ggml_within_float_rounding() {
    assert_dot_matches::<f32>();
}

#[test]
fn f16_quantize_matches_ggml_bit_for_bit() {
    init_ggml();
    let mut inputs = all_rows(1);
    inputs.push(("f32 bit-pattern sweep".to_string(), f32_sweep()));
    for (name, x) in inputs {
        let mut ours = vec![f16::ZERO; x.len()];
        f16::quantize_row(&x, &mut ours);
        let mut theirs = vec![0u16; x.len()];
        // SAFETY: both buffers hold x.len() elements.
        unsafe { ggml::ggml_fp32_to_fp16_row(x.as_ptr(), theirs.as_mut_ptr(), x.len() as i64) };
        let theirs: Vec<f16> = theirs.into_iter().map(f16::from_bits).collect();
        assert_same_bytes::<f16>(&ours, &theirs, &name);
    }
}

#[test]
fn f16_dequantize_matches_ggml_for_every_f16_value() {
    init_ggml();
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let mut ours = vec![0f32; all.len()];
    f16::dequantize_row(&all, &mut ours);
    let mut theirs = vec![0f32; all.len()];
    let bits: Vec<u16> = all.iter().map(|h| h.to_bits()).collect();
    // SAFETY: both buffers hold 65536 elements.
    unsafe { ggml::ggml_fp16_to_fp32_row(bits.as_ptr(), theirs.as_mut_ptr(), bits.len() as i64) };
    assert_same_bits(&ours, &theirs, "every f16");
}

#[test]
fn f16_dot_matches_ggml_within_float_rounding() {
    assert_dot_matches::<f16>();
}

/// b2757 has no BF16, so `half` is the reference. Both it and ggml's later
/// `ggml_compute_fp32_to_bf16` round to nearest even and quiet NaNs by setting bit 6 of the
/// kept half (0x0040), so every f32, NaNs included, must convert identically.
#[test]
fn bf16_quantize_matches_half_bit_for_bit() {
    let mut inputs = all_rows(1);
    inputs.push(("f32 bit-pattern sweep".to_string(), f32_sweep()));
    for (name, x) in inputs {
        let mut ours = vec![bf16::ZERO; x.len()];
        bf16::quantize_row(&x, &mut ours);
        let reference: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        assert_same_bytes::<bf16>(&ours, &reference, &name);
    }
}

/// ggml widens bf16 by a bare shift; `half::bf16::to_f32` also quiets signalling NaNs. The two
/// agree on every other value.
#[test]
fn bf16_dequantize_matches_half_except_that_signalling_nans_stay_signalling() {
    let all: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
    let mut ours = vec![0f32; all.len()];
    bf16::dequantize_row(&all, &mut ours);
    for (h, &v) in all.iter().zip(&ours) {
        let bits = h.to_bits();
        let signalling_nan = bits & 0x7f80 == 0x7f80 && bits & 0x007f != 0 && bits & 0x0040 == 0;
        if signalling_nan {
            assert_eq!(v.to_bits(), u32::from(bits) << 16, "{bits:#06x} kept as is");
        } else {
            assert_eq!(v.to_bits(), h.to_f32().to_bits(), "{bits:#06x}");
        }
    }
}

/// The dot ggml's scalar `ggml_vec_dot_bf16` computes, written out with `half`'s conversions:
/// f32 products summed in f64.
#[test]
fn bf16_dot_matches_half_reference_bit_for_bit() {
    for (name, x) in all_rows(1) {
        let a = Rng(SplitMix64(0xb16)).normals(x.len());
        let (mut w, mut act) = (vec![bf16::ZERO; x.len()], vec![bf16::ZERO; x.len()]);
        bf16::quantize_row(&x, &mut w);
        bf16::quantize_row(&a, &mut act);
        let reference = w
            .iter()
            .zip(&act)
            .fold(0f64, |sum, (p, q)| sum + f64::from(p.to_f32() * q.to_f32()))
            as f32;
        let ours = bf16::vec_dot(&w, &act);
        assert!(
            ours.to_bits() == reference.to_bits() || (ours.is_nan() && reference.is_nan()),
            "bf16 dot for \"{name}\": ours {ours}, reference {reference}"
        );
    }
}
