//! The row kernels (`DOT_ROWS` weight rows against one activation row, for decode) against
//! the scalar reference dot of each row. A row kernel computes the same exact integer block
//! sums and may differ only in the order and fusion of its float operations:
//! `|rows - scalar| <= 1e-5 · Σ|w·a| + 1e-30`, the bound `tests/simd_kernels.rs` holds the
//! one-row dots to; one wrong nibble, bit or scale of a single block exceeds it on the short
//! rows.
//!
//! Weights are reference-quantized random rows of different magnitudes, and the same rows
//! with every quant byte and scale replaced by random bits (finite f16 scales); lengths of one
//! block, an odd number of blocks (the accumulators' remainder), a 7B row and one more block.
//! Activations are quantized by the path's own quantizer. Where no path has row kernels the
//! test says so and passes.
//!
//! The interleaved kernels (`RowKernels::interleaved`, the same 8 rows stored as one
//! interleaved group) are held to the same bound, and the interleaved group must read back
//! as exactly the rows it was built from.

use bytemuck::cast_slice_mut;
use half::f16;
use llava_runtime::quant::{
    self, report_skipped_paths, row_kernels, ActBlockSum, CpuPath, GgmlType, Interleaving, WideOut,
    DOT_ROWS, TILE_ROWS, WIDE_MAX_GROUPS, WIDE_TILE_ROWS,
};

/// Elements of a quantized row, as f32.
fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    quant::dequantize_row(ty, bytes, &mut out).unwrap();
    out
}

/// Dots of DOT_ROWS weight rows (plain bytes) with one activation row.
type RowsFn = Box<dyn Fn([&[u8]; DOT_ROWS], &[u8]) -> [f32; DOT_ROWS]>;

/// The rows interleaved as `how` lays them out.
fn interleaved(how: &Interleaving, rows: [&[u8]; DOT_ROWS]) -> Vec<u32> {
    let mut group = vec![0u32; (how.group_bytes)(rows[0].len()) / 4];
    (how.interleave)(rows, cast_slice_mut(&mut group));
    group
}

/// `got` against the scalar reference dot of weight row `w` (type `ty`) with activation row
/// `a`: within `1e-5 · Σ|w·a| + 1e-30` (the module's bound); `what` names the case.
fn assert_near_scalar(
    ty: GgmlType,
    act_type: GgmlType,
    w: &[u8],
    a: &[u8],
    got: f32,
    what: impl Fn() -> String,
) {
    let want = (row_kernels(ty, CpuPath::Scalar).unwrap().dot)(w, a);
    let n = a.len() / act_type.type_size() * act_type.block_size();
    let terms: f64 = dequantize(ty, w, n)
        .iter()
        .zip(&dequantize(act_type, a, n))
        .map(|(&p, &q)| (f64::from(p) * f64::from(q)).abs())
        .sum();
    let diff = (f64::from(got) - f64::from(want)).abs();
    assert!(
        diff <= 1e-5 * terms + 1e-30,
        "{}: {got} vs scalar {want} (diff {diff:e}, Σ|w·a| {terms:e})",
        what()
    );
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        llava_runtime::rng::SplitMix64::step(&mut self.0)
    }

    /// Uniform in [-scale, scale).
    fn uniform(&mut self, scale: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale
    }

    /// A finite f16 of any magnitude and sign, subnormals included.
    fn finite_f16(&mut self) -> f16 {
        loop {
            let h = f16::from_bits(self.next() as u16);
            if h.is_finite() {
                return h;
            }
        }
    }
}

/// A quantized row in u32 words (aligned for every block struct).
struct Row {
    words: Vec<u32>,
    len: usize,
}

impl Row {
    fn quantize(quantize: impl Fn(&[f32], &mut [u8]), bytes: usize, x: &[f32]) -> Row {
        let mut words = vec![0u32; bytes.div_ceil(4)];
        quantize(x, &mut cast_slice_mut(&mut words)[..bytes]);
        Row { words, len: bytes }
    }

    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }

    /// Every block's bytes replaced by random bits, its f16 scales kept finite: the first two
    /// bytes, and `dmin` after them in Q4_K and Q5_K; Q6_K's `d` is its last two bytes.
    fn scramble(&mut self, ty: GgmlType, rng: &mut Rng) {
        let block_bytes = ty.type_size();
        let f16_at: &[usize] = match ty {
            GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
            GgmlType::Q6K => &[block_bytes - 2],
            _ => &[0],
        };
        let bytes = &mut cast_slice_mut::<u32, u8>(&mut self.words)[..self.len];
        for block in bytes.chunks_exact_mut(block_bytes) {
            block.iter_mut().for_each(|b| *b = rng.next() as u8);
            for &at in f16_at {
                block[at..at + 2].copy_from_slice(&rng.finite_f16().to_le_bytes());
            }
        }
    }
}

#[test]
fn row_kernels_match_the_scalar_dot_of_each_row_within_float_rounding() {
    let mut rng = Rng(11);
    let mut tested = 0;
    for path in CpuPath::ALL.into_iter().filter(|p| p.is_available()) {
        for ty in GgmlType::ALL {
            let Some(kernels) = row_kernels(ty, path) else {
                continue;
            };
            // Each way the path has of dotting 8 rows at once, as a function of the plain rows.
            let mut kinds: Vec<(&str, RowsFn)> = Vec::new();
            if let Some(dot_rows) = kernels.dot_rows {
                kinds.push(("dot_rows", Box::new(dot_rows)));
            }
            if let Some(how) = kernels.interleaved {
                kinds.push((
                    "interleaved",
                    Box::new(move |w: [&[u8]; DOT_ROWS], a: &[u8]| {
                        let group = interleaved(&how, w);
                        let group: &[u8] = bytemuck::cast_slice(&group);
                        for (r, row) in w.iter().enumerate() {
                            let mut back = vec![0u32; row.len().div_ceil(4)];
                            let back = &mut cast_slice_mut(&mut back)[..row.len()];
                            (how.row)(group, r, back);
                            assert!(back == *row, "{ty} row {r} read back");
                        }
                        (how.dot)(group, a)
                    }),
                ));
                // The batch kernel with the row in every activation slot: each slot must give
                // the same sums.
                kinds.push((
                    "interleaved gemm",
                    Box::new(move |w: [&[u8]; DOT_ROWS], a: &[u8]| {
                        let act_type = kernels.act_type;
                        let mut act_sums =
                            vec![ActBlockSum::default(); a.len() / act_type.type_size()];
                        quant::act_block_sums(act_type, a, &mut act_sums)
                            .expect("interleaved kernels take Q8_0 or Q8_K");
                        let group = interleaved(&how, w);
                        let sums = (how.gemm)(
                            bytemuck::cast_slice(&group),
                            [a; TILE_ROWS],
                            [&act_sums; TILE_ROWS],
                        );
                        assert!(sums
                            .iter()
                            .all(|s| s.map(f32::to_bits) == sums[0].map(f32::to_bits)));
                        sums[0]
                    }),
                ));
            }
            let block = ty.block_size();
            for n in [block, 3 * block, 4096, 4096 + block] {
                let w_bytes = ty.row_bytes(n as u64).unwrap() as usize;
                let a_bytes = kernels.act_type.row_bytes(n as u64).unwrap() as usize;
                let reference =
                    |x: &[f32], dst: &mut [u8]| quant::quantize_row(ty, x, dst).unwrap();
                for scrambled in [false, true] {
                    let w: Vec<Row> = (0..DOT_ROWS)
                        .map(|i| {
                            let scale = [0.02, 1.0, 7.0, 300.0][i % 4];
                            let x: Vec<f32> = (0..n).map(|_| rng.uniform(scale)).collect();
                            let mut row = Row::quantize(reference, w_bytes, &x);
                            if scrambled {
                                row.scramble(ty, &mut rng);
                            }
                            row
                        })
                        .collect();
                    let x: Vec<f32> = (0..n).map(|_| rng.uniform(3.0)).collect();
                    let a = Row::quantize(kernels.quantize, a_bytes, &x);
                    for (kind, dot_rows) in &kinds {
                        let got = dot_rows(std::array::from_fn(|i| w[i].bytes()), a.bytes());
                        for (i, w) in w.iter().enumerate() {
                            assert_near_scalar(
                                ty,
                                kernels.act_type,
                                w.bytes(),
                                a.bytes(),
                                got[i],
                                || {
                                    format!("{ty} {kind} on {path}, n={n}, scrambled={scrambled}, row {i}")
                                },
                            );
                        }
                        tested += 1;
                    }
                }
            }
        }
    }
    report_skipped_paths("row_kernels_match_the_scalar_dot_of_each_row_within_float_rounding");
    if tested == 0 {
        eprintln!("no path here has row kernels");
    }
}

/// The batch kernels of interleaved weights against 4 different activation rows at once, and
/// the wide ones against 16 (on ARM: `sdot`, or `smmla` where the CPU has i8mm, as QEMU's
/// `max` does; on x86, AVX-512 VNNI's for Q4_K and Q6_K, one group and two at once):
/// `out[n][r]` must be weight row `r`'s scalar dot with activation
/// row `n` (the test above gives every slot the same row, which a kernel that mixed up its
/// slots would pass).
/// A batch kernel's name, the weight rows it was given and its dots with them:
/// `dots[activation row][weight row]`.
type Dots<'a> = (&'static str, &'a [Row], Vec<Vec<f32>>);

#[test]
fn interleaved_gemm_dots_each_activation_row_with_each_weight_row() {
    let mut rng = Rng(23);
    let mut tested = 0;
    for path in CpuPath::ALL.into_iter().filter(|p| p.is_available()) {
        for ty in GgmlType::ALL {
            let Some(kernels) = row_kernels(ty, path) else {
                continue;
            };
            let Some(how) = kernels.interleaved else {
                continue;
            };
            for n in [ty.block_size(), 4096 + ty.block_size()] {
                let w_bytes = ty.row_bytes(n as u64).unwrap() as usize;
                let a_bytes = kernels.act_type.row_bytes(n as u64).unwrap() as usize;
                let reference =
                    |x: &[f32], dst: &mut [u8]| quant::quantize_row(ty, x, dst).unwrap();
                // Two groups of weight rows: the wide kernels may take both at once.
                let w: Vec<Row> = (0..WIDE_MAX_GROUPS * DOT_ROWS)
                    .map(|i| {
                        let x: Vec<f32> = (0..n).map(|_| rng.uniform(1.0 + i as f32)).collect();
                        let mut row = Row::quantize(reference, w_bytes, &x);
                        if i % 3 == 2 {
                            row.scramble(ty, &mut rng);
                        }
                        row
                    })
                    .collect();
                let a: Vec<Row> = (0..WIDE_TILE_ROWS)
                    .map(|s| {
                        let x: Vec<f32> = (0..n).map(|_| rng.uniform(0.5 + s as f32)).collect();
                        Row::quantize(kernels.quantize, a_bytes, &x)
                    })
                    .collect();
                let sums: Vec<Vec<ActBlockSum>> = a
                    .iter()
                    .map(|a| {
                        let mut sums =
                            vec![ActBlockSum::default(); a_bytes / kernels.act_type.type_size()];
                        quant::act_block_sums(kernels.act_type, a.bytes(), &mut sums).unwrap();
                        sums
                    })
                    .collect();
                let groups: Vec<Vec<u32>> = w
                    .chunks_exact(DOT_ROWS)
                    .map(|rows| interleaved(&how, std::array::from_fn(|r| rows[r].bytes())))
                    .collect();
                let group: &[u8] = bytemuck::cast_slice(&groups[0]);
                let both: Vec<u32> = groups.concat();
                let mut got: Vec<Dots> = vec![(
                    "gemm",
                    &w[..DOT_ROWS],
                    (how.gemm)(
                        group,
                        std::array::from_fn(|s| a[s].bytes()),
                        std::array::from_fn(|s| sums[s].as_slice()),
                    )
                    .map(|row| row.to_vec())
                    .to_vec(),
                )];
                if let Some(wide) = how.wide {
                    let blocks = a_bytes / kernels.act_type.type_size();
                    let mut packed = vec![0u32; (wide.packed_bytes)(blocks).div_ceil(4)];
                    (wide.pack)(
                        std::array::from_fn(|s| a[s].bytes()),
                        cast_slice_mut(&mut packed),
                    );
                    // One group (a weight's last, when its count is odd), and as many as a
                    // call takes.
                    for n_groups in 1..=wide.groups {
                        let mut out: WideOut =
                            [[f32::NAN; WIDE_MAX_GROUPS * DOT_ROWS]; WIDE_TILE_ROWS];
                        let w_bytes =
                            &bytemuck::cast_slice::<u32, u8>(&both)[..n_groups * group.len()];
                        (wide.gemm)(w_bytes, bytemuck::cast_slice(&packed), &mut out);
                        let cols = n_groups * DOT_ROWS;
                        let kind = if n_groups == 1 {
                            "wide gemm"
                        } else {
                            "wide gemm, two groups"
                        };
                        got.push((
                            kind,
                            &w[..cols],
                            out.map(|row| row[..cols].to_vec()).to_vec(),
                        ));
                    }
                }
                for (kind, w, got) in &got {
                    for (s, a) in a.iter().enumerate().take(got.len()) {
                        for (r, w) in w.iter().enumerate() {
                            assert_near_scalar(
                                ty,
                                kernels.act_type,
                                w.bytes(),
                                a.bytes(),
                                got[s][r],
                                || {
                                    format!("{ty} {kind} on {path}, n={n}, activation row {s}, weight row {r}")
                                },
                            );
                        }
                    }
                    tested += 1;
                }
            }
        }
    }
    report_skipped_paths("interleaved_gemm_dots_each_activation_row_with_each_weight_row");
    if tested == 0 {
        eprintln!("no path here has interleaved kernels");
    }
}
