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

/// `acc` plus, in each i32 lane, the four u8×i8 products of its bytes: AVX-512 VNNI's
/// `vpdpbusd` on 256 bits (VL), exact (no saturation).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

/// [`gemm_interleaved_q4_0_q8_0`] with AVX-512 VNNI: each nibble register times an activation
/// run goes straight into the i32 sums (`vpdpbusd`), where AVX2 pairs the products in i16
/// (`vpmaddubsw`), adds the pairs and widens them (`vpmaddwd`). The same exact integer sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn gemm_interleaved_q4_0_q8_0_vnni(
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
        let mut totals = [_mm256_setzero_si256(); TILE_ROWS];
        for t in 0..4 {
            // SAFETY: `qs` is 128 bytes, `t < 4`; an unaligned 32-byte load.
            let p = unsafe { _mm256_loadu_si256(x.qs.as_ptr().add(32 * t).cast()) };
            let lo = _mm256_and_si256(p, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(p), low);
            for (total, y) in totals.iter_mut().zip(ys) {
                *total = dpbusd(*total, lo, run(&y.qs, t));
                *total = dpbusd(*total, hi, run(&y.qs, 4 + t));
            }
        }
        // SAFETY: `d` is 16 bytes; an unaligned load.
        let dw = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(x.d.as_ptr().cast()) });
        for n in 0..TILE_ROWS {
            let s = sums[n][i];
            let total = _mm256_sub_epi32(totals[n], _mm256_set1_epi32(8 * s.sum));
            let scales = _mm256_mul_ps(dw, _mm256_set1_ps(s.d));
            acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), scales, acc[n]);
        }
    }
    [lanes(acc[0]), lanes(acc[1]), lanes(acc[2]), lanes(acc[3])]
}

/// [`gemm_interleaved_q8_0_q8_0`] with AVX-512 VNNI: `|w|` times the activation with `w`'s
/// sign goes straight into the i32 sums (`vpdpbusd`): one instruction where AVX2 takes three.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn gemm_interleaved_q8_0_q8_0_vnni(
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
                *total = dpbusd(*total, magnitude, _mm256_sign_epi8(run(&y.qs, t), p));
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
