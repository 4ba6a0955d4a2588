//! Q4_0 and Q8_0 weights interleaved [`DOT_ROWS`] = 8 rows to a block (`BlockQ4_0x8`,
//! `BlockQ8_0x8`) against Q8_0 activations: each layout's dot of a group's 8 rows with one
//! activation row (decode) and with [`TILE_ROWS`] activation rows at once (prefill, the vision
//! tower). Re-exported by `legacy.rs`, beside the kernels of the plain layouts whose arithmetic
//! the Q4_0 ones share ([`q4_0_rows_step`]).

use std::arch::x86_64::*;

use super::legacy::{dwords, q4_0_rows_step};
use super::{dot_i8_i8, f16_to_f32, lanes, prefetch_ahead};
use crate::quant::dispatch::{ActBlockSum, DOT_ROWS, TILE_ROWS};
use crate::quant::{BlockQ4_0x8, BlockQ8_0, BlockQ8_0x8};

/// `step` folded over the blocks of `w` and `a` into two accumulators that alternate between
/// blocks (one FMA chain would wait out its latency on every block), summed lane by lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn two_chains<X, Y>(w: &[X], a: &[Y], step: impl Fn(&X, &Y, __m256) -> __m256) -> [f32; 8] {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (x, y) in w.chunks_exact(2).zip(a.chunks_exact(2)) {
        acc0 = step(&x[0], &y[0], acc0);
        acc1 = step(&x[1], &y[1], acc1);
    }
    if let (Some(x), Some(y), 1) = (w.last(), a.last(), w.len() % 2) {
        acc0 = step(x, y, acc0);
    }
    lanes(_mm256_add_ps(acc0, acc1))
}

/// Q4_0 · Q8_0 for the 8 rows of interleaved blocks:
/// [`dot_rows_q4_0_q8_0`](super::legacy::dot_rows_q4_0_q8_0) reading the registers its
/// transpose builds straight from memory, one contiguous stream for all the rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_interleaved_q4_0_q8_0(w: &[BlockQ4_0x8], a: &[BlockQ8_0]) -> [f32; DOT_ROWS] {
    const { assert!(DOT_ROWS == 8) };
    assert_eq!(w.len(), a.len(), "dot of rows of different lengths");
    let step = |x: &BlockQ4_0x8, y: &BlockQ8_0, acc: __m256| {
        prefetch_ahead(x);
        // SAFETY: `qs` is 128 bytes, four unaligned 32-byte loads; `d` is 16 bytes.
        let packed = std::array::from_fn::<_, 4, _>(|t| unsafe {
            _mm256_loadu_si256(x.qs.as_ptr().add(32 * t).cast())
        });
        let d = unsafe { _mm_loadu_si128(x.d.as_ptr().cast()) };
        q4_0_rows_step(packed, d, y, acc)
    };
    two_chains(w, a, step)
}

/// Q4_0 · Q8_0 for the 8 rows of interleaved blocks against [`TILE_ROWS`] activation rows
/// (prefill, the vision tower): `out[n][r]` is row `r`'s dot with activation row `n`.
///
/// Each block's nibbles are unpacked once for the 4 activation rows; each row's integer sums
/// are [`q4_0_rows_step`]'s, with `8·Σa` and the activation scale taken from `sums` (the
/// matmul's [`ActBlockSum`]s) instead of being worked out again for every group of rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn gemm_interleaved_q4_0_q8_0(
    w: &[BlockQ4_0x8],
    a: [&[BlockQ8_0]; TILE_ROWS],
    sums: [&[ActBlockSum]; TILE_ROWS],
) -> [[f32; DOT_ROWS]; TILE_ROWS] {
    const { assert!(DOT_ROWS == 8 && TILE_ROWS == 4) };
    check_tile(w.len(), a, sums);
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); TILE_ROWS];
    for (i, x) in w.iter().enumerate() {
        let ys: [&BlockQ8_0; TILE_ROWS] = [&a[0][i], &a[1][i], &a[2][i], &a[3][i]];
        let mut pairs = [_mm256_setzero_si256(); TILE_ROWS];
        for t in 0..4 {
            // SAFETY: `qs` is 128 bytes, `t < 4`; an unaligned 32-byte load.
            let p = unsafe { _mm256_loadu_si256(x.qs.as_ptr().add(32 * t).cast()) };
            let lo = _mm256_and_si256(p, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(p), low);
            for (pairs, y) in pairs.iter_mut().zip(ys) {
                let (a_lo, a_hi) = (run(&y.qs, t), run(&y.qs, 4 + t));
                *pairs = _mm256_add_epi16(*pairs, _mm256_maddubs_epi16(lo, a_lo));
                *pairs = _mm256_add_epi16(*pairs, _mm256_maddubs_epi16(hi, a_hi));
            }
        }
        // SAFETY: `d` is 16 bytes; an unaligned load.
        let dw = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(x.d.as_ptr().cast()) });
        for n in 0..TILE_ROWS {
            let s = sums[n][i];
            let total = _mm256_sub_epi32(
                _mm256_madd_epi16(pairs[n], ones),
                _mm256_set1_epi32(8 * s.sum),
            );
            let scales = _mm256_mul_ps(dw, _mm256_set1_ps(s.d));
            acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), scales, acc[n]);
        }
    }
    [lanes(acc[0]), lanes(acc[1]), lanes(acc[2]), lanes(acc[3])]
}

/// Activation quants `4e..4e + 4` in every dword.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn run(qs: &[i8; 32], e: usize) -> __m256i {
    let q = &qs[4 * e..4 * e + 4];
    _mm256_set1_epi32(i32::from_le_bytes([
        q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8,
    ]))
}

/// The lengths a batch kernel of interleaved blocks relies on.
fn check_tile<A>(blocks: usize, a: [&[A]; TILE_ROWS], sums: [&[ActBlockSum]; TILE_ROWS]) {
    for (a, sums) in a.iter().zip(sums) {
        assert_eq!(a.len(), blocks, "dot of rows of different lengths");
        assert_eq!(sums.len(), blocks, "one block sum per activation block");
    }
}

/// Q8_0 · Q8_0 for the 8 rows of interleaved blocks (decode): per 4-byte run, one load holds
/// the run of every row, and one broadcast of the matching activation run serves all 8 rows
/// through [`dot_i8_i8`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_interleaved_q8_0_q8_0(w: &[BlockQ8_0x8], a: &[BlockQ8_0]) -> [f32; DOT_ROWS] {
    const { assert!(DOT_ROWS == 8) };
    assert_eq!(w.len(), a.len(), "dot of rows of different lengths");
    let step = |x: &BlockQ8_0x8, y: &BlockQ8_0, acc: __m256| {
        prefetch_ahead(x);
        let act = dwords(&y.qs);
        let mut sums = _mm256_setzero_si256();
        for (t, &run) in act.iter().enumerate() {
            // SAFETY: `qs` is 256 bytes and `t < 8`; an unaligned 32-byte load.
            let p = unsafe { _mm256_loadu_si256(x.qs.as_ptr().add(32 * t).cast()) };
            sums = _mm256_add_epi32(sums, dot_i8_i8(p, _mm256_set1_epi32(run)));
        }
        // SAFETY: `d` is 16 bytes; an unaligned load.
        let d = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(x.d.as_ptr().cast()) });
        let scales = _mm256_mul_ps(d, _mm256_set1_ps(f16_to_f32(y.d)));
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scales, acc)
    };
    two_chains(w, a, step)
}

/// Q8_0 · Q8_0 for the 8 rows of interleaved blocks against [`TILE_ROWS`] activation rows
/// (prefill, the vision tower): `out[n][r]` is row `r`'s dot with activation row `n`.
///
/// Signed times signed bytes, as [`dot_i8_i8`] does it: `|w|` (once per run, for the 4
/// activation rows) times the activation with `w`'s sign, pairwise in i16 (at most
/// `2·128·127 < 2^15`), then to i32 at once, since two such pairs could overflow i16. Four
/// integer instructions per 32 multiply-adds, against 4 FMAs for the f32 GEMM's 32.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn gemm_interleaved_q8_0_q8_0(
    w: &[BlockQ8_0x8],
    a: [&[BlockQ8_0]; TILE_ROWS],
    sums: [&[ActBlockSum]; TILE_ROWS],
) -> [[f32; DOT_ROWS]; TILE_ROWS] {
    const { assert!(DOT_ROWS == 8 && TILE_ROWS == 4) };
    check_tile(w.len(), a, sums);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); TILE_ROWS];
    for (i, x) in w.iter().enumerate() {
        let ys: [&BlockQ8_0; TILE_ROWS] = [&a[0][i], &a[1][i], &a[2][i], &a[3][i]];
        let mut totals = [_mm256_setzero_si256(); TILE_ROWS];
        for t in 0..8 {
            // SAFETY: `qs` is 256 bytes and `t < 8`; an unaligned 32-byte load.
            let p = unsafe { _mm256_loadu_si256(x.qs.as_ptr().add(32 * t).cast()) };
            let magnitude = _mm256_sign_epi8(p, p);
            for (total, y) in totals.iter_mut().zip(ys) {
                let signed = _mm256_sign_epi8(run(&y.qs, t), p);
                let pairs = _mm256_maddubs_epi16(magnitude, signed);
                *total = _mm256_add_epi32(*total, _mm256_madd_epi16(pairs, ones));
            }
        }
        // SAFETY: `d` is 16 bytes; an unaligned load.
        let dw = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(x.d.as_ptr().cast()) });
        for n in 0..TILE_ROWS {
            let scales = _mm256_mul_ps(dw, _mm256_set1_ps(sums[n][i].d));
            acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(totals[n]), scales, acc[n]);
        }
    }
    [lanes(acc[0]), lanes(acc[1]), lanes(acc[2]), lanes(acc[3])]
}

/// One `vpdpbusd` on 256 bits: `acc` plus, in each i32 lane, the four products of its bytes,
/// `u`'s read as unsigned and `s`'s as signed, exactly (no saturation, unlike `vpmaddubsw`'s
/// i16 pairs). Two CPU features encode it: AVX-512 VNNI with VL ([`Evex`]) and AVX-VNNI
/// ([`Vex`], on CPUs with 256-bit vectors only). The batch kernels below are written once over
/// this trait; each value exists only inside a function that enables its feature.
pub(super) trait Dpbusd: Copy {
    fn dpbusd(self, acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
}

/// The AVX-512 VNNI encoding; made only by the `_vnni` kernels below.
#[derive(Clone, Copy)]
struct Evex {
    _detected: (),
}

impl Dpbusd for Evex {
    #[inline(always)]
    fn dpbusd(self, acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: an `Evex` exists only inside the `_vnni` kernels, which enable AVX-512
        // VNNI and are reachable only through an `Avx512` made by `detect_vnni`.
        unsafe { dpbusd_evex(acc, u, s) }
    }
}

/// The instruction itself, in a function of its own with the feature on: an optimized build
/// inlines it into the `_vnni` kernels (as the generic kernels inline there first).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn dpbusd_evex(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

/// The AVX-VNNI encoding (Alder Lake and later Intel Core, Sierra Forest, Zen 5); made only by
/// the `_avx_vnni` kernels below.
#[derive(Clone, Copy)]
struct Vex {
    _detected: (),
}

impl Dpbusd for Vex {
    #[inline(always)]
    fn dpbusd(self, acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: a `Vex` exists only inside the `_avx_vnni` kernels, which enable AVX-VNNI
        // and are reachable only through an `AvxVnni`, made once the CPU has reported it.
        unsafe { dpbusd_vex(acc, u, s) }
    }
}

/// As [`dpbusd_evex`], for AVX-VNNI.
#[target_feature(enable = "avxvnni,avx2,fma,f16c")]
#[inline]
fn dpbusd_vex(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(acc, u, s)
}

/// [`gemm_interleaved_q4_0_q8_0`] with `vpdpbusd`: each nibble register times an activation
/// run goes straight into the i32 sums, where AVX2 pairs the products in i16 (`vpmaddubsw`),
/// adds the pairs and widens them (`vpmaddwd`). The same exact integer sums, so the same
/// results to the bit.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn gemm_q4_0_dpbusd(
    dot: impl Dpbusd,
    w: &[BlockQ4_0x8],
    a: [&[BlockQ8_0]; TILE_ROWS],
    sums: [&[ActBlockSum]; TILE_ROWS],
) -> [[f32; DOT_ROWS]; TILE_ROWS] {
    const { assert!(DOT_ROWS == 8 && TILE_ROWS == 4) };
    check_tile(w.len(), a, sums);
    let low = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); TILE_ROWS];
    for (i, x) in w.iter().enumerate() {
        let ys: [&BlockQ8_0; TILE_ROWS] = [&a[0][i], &a[1][i], &a[2][i], &a[3][i]];
        // Two sums per row, of the low and of the high nibbles: chains of 4 `vpdpbusd` per
        // block instead of 8, so the instruction's latency hides behind the other rows'
        // (with one chain per row, AVX-VNNI's kernel ran 8% slower than AVX2's on a Zen 5;
        // AVX-512's, whose `{1to8}` broadcasts save 32 instructions a block, did not).
        let mut totals_lo = [_mm256_setzero_si256(); TILE_ROWS];
        let mut totals_hi = [_mm256_setzero_si256(); TILE_ROWS];
        for t in 0..4 {
            // SAFETY: `qs` is 128 bytes, `t < 4`; an unaligned 32-byte load.
            let p = unsafe { _mm256_loadu_si256(x.qs.as_ptr().add(32 * t).cast()) };
            let lo = _mm256_and_si256(p, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(p), low);
            for n in 0..TILE_ROWS {
                totals_lo[n] = dot.dpbusd(totals_lo[n], lo, run(&ys[n].qs, t));
                totals_hi[n] = dot.dpbusd(totals_hi[n], hi, run(&ys[n].qs, 4 + t));
            }
        }
        // SAFETY: `d` is 16 bytes; an unaligned load.
        let dw = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(x.d.as_ptr().cast()) });
        for n in 0..TILE_ROWS {
            let s = sums[n][i];
            let totals = _mm256_add_epi32(totals_lo[n], totals_hi[n]);
            let total = _mm256_sub_epi32(totals, _mm256_set1_epi32(8 * s.sum));
            let scales = _mm256_mul_ps(dw, _mm256_set1_ps(s.d));
            acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), scales, acc[n]);
        }
    }
    [lanes(acc[0]), lanes(acc[1]), lanes(acc[2]), lanes(acc[3])]
}

/// [`gemm_interleaved_q8_0_q8_0`] with `vpdpbusd`: `|w|` times the activation with `w`'s sign
/// goes straight into the i32 sums, one instruction where AVX2 takes three. The same exact
/// integer sums.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn gemm_q8_0_dpbusd(
    dot: impl Dpbusd,
    w: &[BlockQ8_0x8],
    a: [&[BlockQ8_0]; TILE_ROWS],
    sums: [&[ActBlockSum]; TILE_ROWS],
) -> [[f32; DOT_ROWS]; TILE_ROWS] {
    const { assert!(DOT_ROWS == 8 && TILE_ROWS == 4) };
    check_tile(w.len(), a, sums);
    let mut acc = [_mm256_setzero_ps(); TILE_ROWS];
    for (i, x) in w.iter().enumerate() {
        let ys: [&BlockQ8_0; TILE_ROWS] = [&a[0][i], &a[1][i], &a[2][i], &a[3][i]];
        let mut totals = [_mm256_setzero_si256(); TILE_ROWS];
        for t in 0..8 {
            // SAFETY: `qs` is 256 bytes and `t < 8`; an unaligned 32-byte load.
            let p = unsafe { _mm256_loadu_si256(x.qs.as_ptr().add(32 * t).cast()) };
            // `vpabsb` of -128 is 0x80: 128 read as unsigned.
            let magnitude = _mm256_abs_epi8(p);
            for (total, y) in totals.iter_mut().zip(ys) {
                *total = dot.dpbusd(*total, magnitude, _mm256_sign_epi8(run(&y.qs, t), p));
            }
        }
        // SAFETY: `d` is 16 bytes; an unaligned load.
        let dw = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(x.d.as_ptr().cast()) });
        for n in 0..TILE_ROWS {
            let scales = _mm256_mul_ps(dw, _mm256_set1_ps(sums[n][i].d));
            acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(totals[n]), scales, acc[n]);
        }
    }
    [lanes(acc[0]), lanes(acc[1]), lanes(acc[2]), lanes(acc[3])]
}

/// The batch kernels with one encoding of `vpdpbusd`: each a function enabling the encoding's
/// feature, into which the generic kernel (and the instruction) inline.
macro_rules! dpbusd_kernels {
    ($features:literal, $encoding:ident, $q4_0:ident, $q8_0:ident) => {
        #[target_feature(enable = $features)]
        pub(super) fn $q4_0(
            w: &[BlockQ4_0x8],
            a: [&[BlockQ8_0]; TILE_ROWS],
            sums: [&[ActBlockSum]; TILE_ROWS],
        ) -> [[f32; DOT_ROWS]; TILE_ROWS] {
            gemm_q4_0_dpbusd($encoding { _detected: () }, w, a, sums)
        }

        #[target_feature(enable = $features)]
        pub(super) fn $q8_0(
            w: &[BlockQ8_0x8],
            a: [&[BlockQ8_0]; TILE_ROWS],
            sums: [&[ActBlockSum]; TILE_ROWS],
        ) -> [[f32; DOT_ROWS]; TILE_ROWS] {
            gemm_q8_0_dpbusd($encoding { _detected: () }, w, a, sums)
        }
    };
}

dpbusd_kernels!(
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    Evex,
    gemm_interleaved_q4_0_q8_0_vnni,
    gemm_interleaved_q8_0_q8_0_vnni
);
dpbusd_kernels!(
    "avxvnni,avx2,fma,f16c",
    Vex,
    gemm_interleaved_q4_0_q8_0_avx_vnni,
    gemm_interleaved_q8_0_q8_0_avx_vnni
);

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;
    use crate::quant::test_bytes;
    use crate::quant::x86::{Avx2, Avx512, AvxVnni};

    /// `vpdpbusd` in AVX2 alone, exactly: bytes 0 and 2, and bytes 1 and 3, of each i32 lane
    /// widened to i16 (`u`'s zero-extended, `s`'s sign-extended), then one `vpmaddwd` each
    /// (products of at most 255·128 in magnitude, two to a lane: no overflow). It runs the
    /// generic kernels' arithmetic on CPUs with neither encoding.
    #[derive(Clone, Copy)]
    struct Emulated;

    impl Dpbusd for Emulated {
        #[inline(always)]
        fn dpbusd(self, acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            // SAFETY: the tests make an `Emulated` only once `Avx2::detect` has succeeded.
            unsafe { dpbusd_avx2(acc, u, s) }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dpbusd_avx2(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        let u_even = _mm256_and_si256(u, _mm256_set1_epi16(0x00ff));
        let u_odd = _mm256_srli_epi16::<8>(u);
        let s_even = _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(s));
        let s_odd = _mm256_srai_epi16::<8>(s);
        let even = _mm256_madd_epi16(u_even, s_even);
        let odd = _mm256_madd_epi16(u_odd, s_odd);
        _mm256_add_epi32(acc, _mm256_add_epi32(even, odd))
    }

    #[test]
    fn every_encoding_of_dpbusd_sums_the_products_exactly() {
        let Some(_) = Avx2::detect() else {
            crate::quant::report_skipped_paths(
                "every_encoding_of_dpbusd_sums_the_products_exactly",
            );
            return;
        };
        // Every unsigned byte against every signed one, 32 pairs at a time.
        let (u, s): (Vec<u8>, Vec<u8>) = (0..=255u8)
            .flat_map(|u| (0..=255u8).map(move |s| (u, s)))
            .unzip();
        let acc: [i32; 8] = [
            7,
            -7,
            i32::MAX - 200_000,
            i32::MIN + 200_000,
            0,
            1,
            -1,
            12345,
        ];
        let load = |b: &[u8]| {
            // SAFETY: 32 bytes, an unaligned load; AVX, which the test's `Avx2::detect` found.
            unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
        };
        let store = |v: __m256i| {
            let mut out = [0i32; 8];
            // SAFETY: `out` is 32 bytes; an unaligned store.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
            out
        };
        for (u, s) in u.chunks_exact(32).zip(s.chunks_exact(32)) {
            let want: [i32; 8] = std::array::from_fn(|i| {
                acc[i]
                    + (0..4)
                        .map(|k| i32::from(u[4 * i + k]) * i32::from(s[4 * i + k] as i8))
                        .sum::<i32>()
            });
            let (acc, u, s) = (load(bytemuck::cast_slice(&acc)), load(u), load(s));
            // SAFETY: AVX2 detected above; each encoding only where its feature is.
            assert_eq!(store(unsafe { dpbusd_avx2(acc, u, s) }), want, "emulated");
            if AvxVnni::detect().is_some() {
                assert_eq!(store(unsafe { dpbusd_vex(acc, u, s) }), want, "avx-vnni");
            }
            if Avx512::detect_vnni().is_some() {
                assert_eq!(
                    store(unsafe { dpbusd_evex(acc, u, s) }),
                    want,
                    "avx512-vnni"
                );
            }
        }
    }

    /// Interleaved weights of `blocks` blocks and [`TILE_ROWS`] activation rows with their
    /// block sums: random bytes, the extremes (-128 weights, ±127 activations) included.
    fn tile<W: bytemuck::Pod + bytemuck::Zeroable>(
        blocks: usize,
        seed: u32,
        scales: impl Fn(&mut W, [f16; 8]),
    ) -> (Vec<W>, Vec<Vec<BlockQ8_0>>, Vec<Vec<ActBlockSum>>) {
        let size = std::mem::size_of::<W>();
        let mut b = test_bytes(seed, blocks * size);
        b[size - 1] = 0x80;
        let mut w = vec![W::zeroed(); blocks];
        bytemuck::cast_slice_mut::<W, u8>(&mut w).copy_from_slice(&b);
        for (i, w) in w.iter_mut().enumerate() {
            scales(
                w,
                std::array::from_fn(|r| f16::from_f32(0.01 + 0.003 * (i * 8 + r) as f32)),
            );
        }
        let mut a = Vec::new();
        let mut sums = Vec::new();
        for n in 0..TILE_ROWS {
            let q = test_bytes(seed + 1 + n as u32, blocks * 32);
            let row: Vec<BlockQ8_0> = (0..blocks)
                .map(|i| BlockQ8_0 {
                    d: f16::from_f32(0.02 + 0.001 * (n * blocks + i) as f32),
                    qs: std::array::from_fn(|j| match (i + j) % 11 {
                        0 => 127,
                        1 => -127,
                        _ => (q[32 * i + j] as i8).max(-127),
                    }),
                })
                .collect();
            sums.push(
                row.iter()
                    .map(|b| ActBlockSum {
                        d: b.d.to_f32(),
                        sum: b.qs.iter().map(|&q| i32::from(q)).sum(),
                    })
                    .collect(),
            );
            a.push(row);
        }
        (w, a, sums)
    }

    /// The rows of [`tile`] as a kernel takes them.
    fn tiles<'a>(
        a: &'a [Vec<BlockQ8_0>],
        s: &'a [Vec<ActBlockSum>],
    ) -> ([&'a [BlockQ8_0]; TILE_ROWS], [&'a [ActBlockSum]; TILE_ROWS]) {
        (
            std::array::from_fn(|n| a[n].as_slice()),
            std::array::from_fn(|n| s[n].as_slice()),
        )
    }

    #[test]
    fn the_dpbusd_batch_kernels_give_the_avx2_ones_results_to_the_bit() {
        crate::quant::report_skipped_paths(
            "the_dpbusd_batch_kernels_give_the_avx2_ones_results_to_the_bit",
        );
        let Some(_) = Avx2::detect() else {
            return;
        };
        for blocks in [1, 3, 8] {
            let (w, a, s) = tile::<BlockQ4_0x8>(blocks, 11 * blocks as u32, |w, d| w.d = d);
            let (a, s) = tiles(&a, &s);
            // SAFETY: AVX2 detected above; each encoding only where its feature is.
            let want = unsafe { gemm_interleaved_q4_0_q8_0(&w, a, s) };
            assert_eq!(
                unsafe { gemm_q4_0_dpbusd(Emulated, &w, a, s) },
                want,
                "q4_0 emulated"
            );
            if AvxVnni::detect().is_some() {
                let got = unsafe { gemm_interleaved_q4_0_q8_0_avx_vnni(&w, a, s) };
                assert_eq!(got, want, "q4_0 avx-vnni");
            }
            if Avx512::detect_vnni().is_some() {
                let got = unsafe { gemm_interleaved_q4_0_q8_0_vnni(&w, a, s) };
                assert_eq!(got, want, "q4_0 avx512-vnni");
            }

            let (w, a, s) = tile::<BlockQ8_0x8>(blocks, 13 * blocks as u32, |w, d| w.d = d);
            let (a, s) = tiles(&a, &s);
            // SAFETY: as above.
            let want = unsafe { gemm_interleaved_q8_0_q8_0(&w, a, s) };
            assert_eq!(
                unsafe { gemm_q8_0_dpbusd(Emulated, &w, a, s) },
                want,
                "q8_0 emulated"
            );
            if AvxVnni::detect().is_some() {
                let got = unsafe { gemm_interleaved_q8_0_q8_0_avx_vnni(&w, a, s) };
                assert_eq!(got, want, "q8_0 avx-vnni");
            }
            if Avx512::detect_vnni().is_some() {
                let got = unsafe { gemm_interleaved_q8_0_q8_0_vnni(&w, a, s) };
                assert_eq!(got, want, "q8_0 avx512-vnni");
            }
        }
    }
}
