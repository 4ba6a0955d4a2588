//! The f32 vector primitives of attention and of the activations, chosen once per call from
//! the process's CPU path (`quant::cpu_path`), like the matmul kernels: decode attention of one
//! head over the cache, the softmax of batched attention (down the lanes of a panel of scores;
//! its two GEMMs are `gemm`'s), and swish.
//!
//! The portable versions are plain loops (LLVM vectorizes the lane-parallel ones with SSE2 or
//! NEON); the AVX2 versions (`x86.rs`) use FMA and F16C, and each says what it was measured
//! against; the NEON ones (`arm.rs`) are the same algorithms on 4-lane registers.

use half::f16;

use super::gemm::{PanelColumn, PANEL_ROWS};
use crate::quant::{self, CpuPath};

/// The primitives of one CPU path.
#[derive(Clone, Copy)]
pub(super) struct VectorOps {
    /// Decode attention of a group of query heads that read the same KV head, over `n` cached
    /// positions whose keys and values start every `stride` elements: scores, softmax and
    /// weighted sum in one call, each key and value loaded (and widened) once for the whole
    /// group. See [`DecodeHeadsFn`].
    pub decode_heads: DecodeHeadsFn<f32>,
    /// [`VectorOps::decode_heads`] over an f16 cache.
    pub decode_heads_f16: DecodeHeadsFn<f16>,
    /// A softmax down each lane of a panel of scores (`p[j].0[i]`: key `j`, query row `i`),
    /// left unnormalized: `p[j][i] = e^(scale·(p[j][i] − max_j p[j][i]))`. Returns each
    /// lane's `1 / Σ_j p[j][i]`. Masked scores are −∞ and come out 0; every lane needs one
    /// finite score.
    pub panel_softmax: fn(&mut [PanelColumn], f32) -> [f32; PANEL_ROWS],
    /// `x = x · sigmoid(β·x)` in place ("swish"): SiLU with β = 1, CLIP's quick GELU with
    /// β = 1.702.
    pub swish: fn(&mut [f32], f32),
}

/// One decode-attention call: a group of `g` query heads that read the same KV head, over `n`
/// cached positions.
#[derive(Clone, Copy)]
pub(super) struct DecodeHeads<'a, T> {
    /// The group's query heads, `d` values each, one after the other.
    pub qs: &'a [f32],
    /// Values per head.
    pub d: usize,
    /// The keys: position `j`'s at `[j·stride..][..d]`.
    pub keys: &'a [T],
    /// The values, laid out as the keys.
    pub values: &'a [T],
    /// Elements from one position's key to the next's.
    pub stride: usize,
    /// Positions to attend to.
    pub n: usize,
    /// The scores' scale (`1/sqrt(d)`).
    pub scale: f32,
}

/// `(call, scores, out)`: `out` receives the heads' outputs as `call.qs` holds the heads;
/// `scores` is scratch, `g·n` long.
pub(super) type DecodeHeadsFn<T> = fn(&DecodeHeads<'_, T>, &mut [f32], &mut [f32]);

/// The primitives for the process's CPU path.
pub(super) fn vector_ops() -> VectorOps {
    match quant::cpu_path() {
        // The AVX-VNNI and AVX-512 paths have no vector primitives of their own; their CPUs
        // run AVX2's.
        CpuPath::Avx2 | CpuPath::AvxVnni | CpuPath::Avx512 | CpuPath::Avx512Vnni => {
            avx2().unwrap_or_else(portable)
        }
        CpuPath::Neon | CpuPath::NeonDotprod => neon().unwrap_or_else(portable),
        CpuPath::Scalar => portable(),
    }
}

/// The primitives of every path this CPU can run, for tests.
#[cfg(test)]
pub(super) fn all_vector_ops() -> Vec<VectorOps> {
    std::iter::once(portable())
        .chain(avx2())
        .chain(neon())
        .collect()
}

fn portable() -> VectorOps {
    VectorOps {
        decode_heads: decode_heads_portable::<f32>,
        decode_heads_f16: decode_heads_portable::<f16>,
        panel_softmax: panel_softmax_portable,
        swish: swish_portable,
    }
}

/// The AVX2 primitives, where the CPU has them.
#[cfg(target_arch = "x86_64")]
fn avx2() -> Option<VectorOps> {
    CpuPath::Avx2.is_available().then_some(VectorOps {
        decode_heads: x86::decode_heads::<f32>,
        decode_heads_f16: x86::decode_heads::<f16>,
        panel_softmax: x86::panel_softmax,
        swish: x86::swish,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2() -> Option<VectorOps> {
    None
}

/// The NEON primitives (every aarch64 build has NEON).
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
fn neon() -> Option<VectorOps> {
    Some(VectorOps {
        decode_heads: arm::decode_heads::<f32>,
        decode_heads_f16: arm::decode_heads::<f16>,
        panel_softmax: arm::panel_softmax,
        swish: arm::swish,
    })
}

#[cfg(not(all(target_arch = "aarch64", target_feature = "neon")))]
fn neon() -> Option<VectorOps> {
    None
}

/// `p = softmax(scale · p)` in place (the max subtracted first), as the decode heads do it.
#[cfg(test)]
fn softmax_portable(p: &mut [f32], scale: f32) {
    p.iter_mut().for_each(|s| *s *= scale);
    super::attention::softmax_in_place(p);
}

fn panel_softmax_portable(p: &mut [PanelColumn], scale: f32) -> [f32; PANEL_ROWS] {
    let mut max = [f32::NEG_INFINITY; PANEL_ROWS];
    for column in p.iter() {
        for (max, &s) in max.iter_mut().zip(&column.0) {
            *max = max.max(s);
        }
    }
    let mut sum = [0f32; PANEL_ROWS];
    for column in p.iter_mut() {
        for ((s, &max), sum) in column.0.iter_mut().zip(&max).zip(&mut sum) {
            *s = ((*s - max) * scale).exp();
            *sum += *s;
        }
    }
    sum.map(|sum| 1.0 / sum)
}

fn swish_portable(x: &mut [f32], beta: f32) {
    x.iter_mut().for_each(|v| *v /= 1.0 + (-beta * *v).exp());
}

/// A cache element, widened to f32.
pub(super) trait CacheValue: Copy + Send + Sync + 'static {
    fn widen(self) -> f32;
    /// `dst = src` widened, element by element (`half`'s SIMD conversion for f16).
    fn widen_slice(src: &[Self], dst: &mut [f32]);
}

impl CacheValue for f32 {
    fn widen(self) -> f32 {
        self
    }

    fn widen_slice(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl CacheValue for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }

    fn widen_slice(src: &[f16], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}

/// Checks the shapes of a [`DecodeHeadsFn`] call; returns the number of heads.
fn check_decode_heads<T>(call: &DecodeHeads<'_, T>, scores: &[f32], out: &[f32]) -> usize {
    let DecodeHeads {
        qs,
        d,
        keys,
        values,
        stride,
        n,
        ..
    } = *call;
    assert!(
        d > 0 && qs.len().is_multiple_of(d),
        "query heads of {d} values"
    );
    let g = qs.len() / d;
    assert!(d <= stride || n <= 1, "head wider than the stride");
    let need = if n == 0 { 0 } else { (n - 1) * stride + d };
    assert!(
        keys.len() >= need && values.len() >= need,
        "cache shorter than n positions"
    );
    assert_eq!(scores.len(), g * n, "scores scratch");
    assert_eq!(out.len(), qs.len(), "output width");
    g
}

/// The SIMD decode heads' outer loop: the group's heads in parts of at most 4 (as many as
/// their registers hold), `part(m, call, scores, out)` for each part of `m` heads, with the
/// part's slices of `scores` and `out`.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
fn in_parts_of_four<T>(
    call: &DecodeHeads<'_, T>,
    scores: &mut [f32],
    out: &mut [f32],
    mut part: impl FnMut(usize, &DecodeHeads<'_, T>, &mut [f32], &mut [f32]),
) {
    let DecodeHeads { qs, d, n, .. } = *call;
    let g = qs.len() / d;
    let mut h0 = 0;
    while h0 < g {
        let m = (g - h0).min(4);
        let call = DecodeHeads {
            qs: &qs[h0 * d..][..m * d],
            ..*call
        };
        part(
            m,
            &call,
            &mut scores[h0 * n..][..m * n],
            &mut out[h0 * d..][..m * d],
        );
        h0 += m;
    }
}

fn decode_heads_portable<T: CacheValue>(
    call: &DecodeHeads<'_, T>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    check_decode_heads(call, scores, out);
    let DecodeHeads {
        qs,
        d,
        keys,
        values,
        stride,
        n,
        scale,
    } = *call;
    for ((q, scores), out) in qs
        .chunks_exact(d)
        .zip(scores.chunks_exact_mut(n.max(1)))
        .zip(out.chunks_exact_mut(d))
    {
        for (j, s) in scores.iter_mut().enumerate().take(n) {
            let k = &keys[j * stride..][..d];
            *s = q.iter().zip(k).map(|(&a, &b)| a * b.widen()).sum::<f32>() * scale;
        }
        super::attention::softmax_in_place(&mut scores[..n]);
        out.fill(0.0);
        for (j, &p) in scores.iter().enumerate().take(n) {
            let v = &values[j * stride..][..d];
            out.iter_mut()
                .zip(v)
                .for_each(|(o, &v)| *o += p * v.widen());
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
mod arm;

/// `n` reproducible values in [-1, 1) (xorshift), for the unit tests of the f32 kernels.
#[cfg(test)]
pub(super) fn test_data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::test_data as data;
    use super::*;

    /// Groups of 1–8 query heads over one KV head, against f64 attention head by head: head
    /// widths of whole vectors (one, and 16-lane chunks plus an 8-lane rest) and not (the
    /// portable fallback), strides wider than a head, one position and many.
    #[test]
    fn decode_heads_match_f64_attention_on_every_available_path() {
        let paths = all_vector_ops();
        for (d, stride, n) in [
            (128, 4096, 37),
            (64, 192, 5),
            (16, 16, 1),
            (8, 24, 300),
            (24, 24, 7),
            (12, 40, 9),
        ] {
            let k = data((n - 1) * stride + d, 12);
            let v = data((n - 1) * stride + d, 13);
            let scale = 1.0 / (d as f32).sqrt();
            let rounded = |x: &[f32]| -> Vec<f16> { x.iter().map(|&v| f16::from_f32(v)).collect() };
            let (k16, v16) = (rounded(&k), rounded(&v));
            let want = |q: &[f32], k: &[f64], v: &[f64]| -> Vec<f64> {
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        (0..d).map(|i| q[i] as f64 * k[j * stride + i]).sum::<f64>() * scale as f64
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                (0..d)
                    .map(|i| (0..n).map(|j| e[j] / sum * v[j * stride + i]).sum())
                    .collect()
            };
            let wide = |x: &[f32]| -> Vec<f64> { x.iter().map(|&v| v as f64).collect() };
            let wide16 = |x: &[f16]| -> Vec<f64> { x.iter().map(|v| v.to_f64()).collect() };
            let (k64, v64, k16_64, v16_64) = (wide(&k), wide(&v), wide16(&k16), wide16(&v16));
            for g in [1, 2, 3, 4, 5, 8] {
                let qs = data(g * d, 11 + g as u32);
                let heads: Vec<&[f32]> = qs.chunks_exact(d).collect();
                let want32: Vec<f64> = heads.iter().flat_map(|q| want(q, &k64, &v64)).collect();
                let want16: Vec<f64> = heads
                    .iter()
                    .flat_map(|q| want(q, &k16_64, &v16_64))
                    .collect();
                for ops in &paths {
                    let mut scores = vec![0f32; g * n];
                    let mut out = vec![f32::NAN; g * d];
                    let call = DecodeHeads {
                        qs: &qs,
                        d,
                        keys: &k[..],
                        values: &v[..],
                        stride,
                        n,
                        scale,
                    };
                    (ops.decode_heads)(&call, &mut scores, &mut out);
                    for (i, (&got, &want)) in out.iter().zip(&want32).enumerate() {
                        let at = (i / d, i % d);
                        assert!(
                            (got as f64 - want).abs() <= 1e-5,
                            "f32 d={d} n={n} g={g} {at:?}"
                        );
                    }
                    let mut out = vec![f32::NAN; g * d];
                    let call16 = DecodeHeads {
                        qs: &qs,
                        d,
                        keys: &k16[..],
                        values: &v16[..],
                        stride,
                        n,
                        scale,
                    };
                    (ops.decode_heads_f16)(&call16, &mut scores, &mut out);
                    for (i, (&got, &want)) in out.iter().zip(&want16).enumerate() {
                        let at = (i / d, i % d);
                        assert!(
                            (got as f64 - want).abs() <= 1e-5,
                            "f16 d={d} n={n} g={g} {at:?}"
                        );
                    }
                }
            }
        }
    }

    /// Every path's softmax against f64, element by element: within 1e-6 of each probability
    /// plus 1e-6 of the largest (the polynomial `exp` of AVX2 is within a few ulp; the rest is
    /// the sum's rounding). Scores span the full range of softmax's arguments, including ones
    /// more than 87 below the max, whose probability underflows.
    #[test]
    fn softmax_matches_f64_on_every_available_path() {
        #[cfg_attr(
            not(any(target_arch = "x86_64", target_arch = "aarch64")),
            allow(unused_mut)
        )]
        let mut paths: Vec<fn(&mut [f32], f32)> = vec![softmax_portable];
        crate::quant::report_skipped_paths("softmax_matches_f64_on_every_available_path");
        #[cfg(target_arch = "x86_64")]
        if CpuPath::Avx2.is_available() {
            paths.push(x86::softmax);
        }
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        paths.push(arm::softmax);
        for (n, spread) in [
            (1, 1.0),
            (7, 3.0),
            (8, 3.0),
            (37, 20.0),
            (577, 60.0),
            (64, 2000.0),
        ] {
            let scores: Vec<f32> = data(n, 9).iter().map(|v| v * spread).collect();
            let scale = 0.125f32;
            let max = scores
                .iter()
                .map(|&s| (s * scale) as f64)
                .fold(f64::MIN, f64::max);
            let exps: Vec<f64> = scores
                .iter()
                .map(|&s| ((s * scale) as f64 - max).exp())
                .collect();
            let total: f64 = exps.iter().sum();
            for softmax in &paths {
                let mut p = scores.clone();
                softmax(&mut p, scale);
                for (j, (&got, &e)) in p.iter().zip(&exps).enumerate() {
                    let want = e / total;
                    assert!(
                        (got as f64 - want).abs() <= 1e-6 * want + 1e-6 / total,
                        "n={n} spread={spread} j{j}: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// Every path's swish against f64 from the same f32 `β·x` (whose rounding `e^` would
    /// magnify by `|β·x|` in any f32 code): within 4e-7 relative (a few ulp) plus 1e-35
    /// absolute (the far negative side, where the result underflows), over the range where the
    /// sigmoid saturates on both sides, and its special values.
    #[test]
    fn swish_matches_f64_on_every_available_path() {
        let paths = all_vector_ops();
        let mut x: Vec<f32> = data(1003, 11).iter().map(|v| v * 120.0).collect();
        x.extend([0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 51.3, -51.3]);
        for beta in [1.0f32, 1.702] {
            let want: Vec<f64> = x
                .iter()
                .map(|&v| v as f64 / (1.0 + (-((beta * v) as f64)).exp()))
                .collect();
            for ops in &paths {
                let mut got = x.clone();
                (ops.swish)(&mut got, beta);
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - w).abs() <= 4e-7 * w.abs() + 1e-35,
                        "β={beta} x={}: {g} vs {w} (element {i})",
                        x[i]
                    );
                }
                // 8 values, so that AVX2 takes them in its vector loop, not its scalar tail.
                let mut special = [0.0f32; 8];
                special[..3].copy_from_slice(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
                (ops.swish)(&mut special, beta);
                assert!(special[0].is_nan() && special[1] == f32::INFINITY && special[2].is_nan());
            }
        }
    }

    /// Every path's panel softmax against f64, lane by lane, within the bound of the row
    /// softmax test: scores over the full range of softmax's arguments, −∞ (masked) scores
    /// that must come out 0, lanes of one key, and columns past the masked ones.
    #[test]
    fn panel_softmax_matches_f64_on_every_available_path() {
        let paths = all_vector_ops();
        for (n, spread) in [(1, 1.0), (7, 3.0), (37, 20.0), (577, 60.0), (64, 2000.0)] {
            let values = data(n * PANEL_ROWS, 21);
            let mut scores: Vec<PanelColumn> = values
                .chunks_exact(PANEL_ROWS)
                .map(|c| PanelColumn(std::array::from_fn(|i| c[i] * spread)))
                .collect();
            // Lane i sees keys 0..n - i (at least one).
            for (j, column) in scores.iter_mut().enumerate() {
                for (i, s) in column.0.iter_mut().enumerate() {
                    if j + i >= n && j > 0 {
                        *s = f32::NEG_INFINITY;
                    }
                }
            }
            let scale = 0.125f32;
            for ops in &paths {
                let mut p = scores.clone();
                let inv = (ops.panel_softmax)(&mut p, scale);
                for (i, &inv) in inv.iter().enumerate() {
                    let lane: Vec<f64> = scores.iter().map(|c| (c.0[i] * scale) as f64).collect();
                    let max = lane.iter().cloned().fold(f64::MIN, f64::max);
                    let exps: Vec<f64> = lane.iter().map(|&s| (s - max).exp()).collect();
                    let total: f64 = exps.iter().sum();
                    for (j, &e) in exps.iter().enumerate() {
                        let got = (p[j].0[i] * inv) as f64;
                        let want = e / total;
                        assert!(
                            (got - want).abs() <= 1e-6 * want + 1e-6 / total,
                            "n={n} spread={spread} lane {i} key {j}: {got} vs {want}"
                        );
                        if lane[j] == f64::NEG_INFINITY {
                            assert_eq!(p[j].0[i], 0.0, "masked score, lane {i} key {j}");
                        }
                    }
                }
            }
        }
    }
}
