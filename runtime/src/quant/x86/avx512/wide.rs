//! AVX-512 VNNI wide batch kernels of interleaved weights ([`WideGemm`]): two groups of 8
//! interleaved rows against [`WIDE_TILE_ROWS`] packed activation rows, for Q4_0 and Q8_0
//! (activations packed as [`TileQ8_0`]) and Q4_K and Q6_K ([`TileQ8K`]).
//!
//! A 512-bit register holds a 4-byte run of 16 weight rows: the 32 bytes of one group's
//! register in its low half, the other group's in its high half. One `vpdpbusd` against an
//! activation run broadcast to every lane (a load, folded into the instruction) adds 64
//! products into the 16 rows' i32 sums, where the 4-row kernels take 32 products per
//! instruction (and, on AVX2, `vpmaddubsw`, `vpaddw` and a `vpmaddwd` per sub-block). A block's
//! weights are unpacked once into 8 registers while the 16 activation rows pass, each with its
//! own accumulator (the compiler keeps some of the 16 in the stack frame: one load and store
//! per row and block, beside 8 `vpdpbusd`). `vpdpbusd` multiplies unsigned weight bytes
//! by signed activation bytes: Q4_0's nibbles and Q6_K's stored values are unsigned as they
//! are (their offsets, 8 and 32, come off as the offset times the activations' sums), and Q8_0's
//! quants are made so by adding 128. The integer sums of a block are ggml's exactly, and each
//! row's float accumulation is the 4-row kernels'.
//!
//! Called with one group (a weight's last, when its count is odd), both halves take it; the
//! second group's columns of the output then repeat the first's.
//!
//! [`WideGemm`]: crate::quant::WideGemm

use std::arch::x86_64::*;

use bytemuck::{cast_ref, Pod, Zeroable};

use super::super::k_quants_interleaved::q4_k_x8_unpack;
use super::super::{load_16, load_32};
use super::join;
use crate::quant::dispatch::{WideOut, WIDE_TILE_ROWS};
use crate::quant::k_quants::TileQ8K;
use crate::quant::{BlockQ4Kx8, BlockQ4_0x8, BlockQ6Kx8, BlockQ8_0, BlockQ8_0x8};

/// The two groups of a call: `w` holds one or two groups of `blocks` blocks each; one group
/// stands for both.
fn two_groups<X>(w: &[X], blocks: usize) -> (&[X], &[X]) {
    assert!(
        blocks > 0 && (w.len() == blocks || w.len() == 2 * blocks),
        "wide kernel: {} weight blocks for {blocks} activation blocks",
        w.len()
    );
    let (a, b) = w.split_at(blocks);
    (a, if b.is_empty() { a } else { b })
}

/// Bytes `e..e + 4` of an activation row's quants, in every dword lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn act_run<const N: usize>(qs: &[i8; N], e: usize) -> __m512i {
    let q = &qs[e..e + 4];
    _mm512_set1_epi32(i32::from_le_bytes([
        q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8,
    ]))
}

/// The i16 pair `(v[2p], v[2p + 1])` as one dword, in every dword lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn i16_pair(v: &[i16], p: usize) -> __m512i {
    let (lo, hi) = (v[2 * p], v[2 * p + 1]);
    _mm512_set1_epi32(i32::from(lo as u16) | (i32::from(hi) << 16))
}

/// Register `t` (32 bytes) of `a`'s and of `b`'s run arrays, side by side.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn pair_run<const N: usize>(a: &[[u8; 32]; N], b: &[[u8; 32]; N], t: usize) -> __m512i {
    join(load_32(&a[t]), load_32(&b[t]))
}

/// The 8 f16 of each group, as 16 f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn f16_pair(a: &[half::f16; 8], b: &[half::f16; 8]) -> __m512 {
    let bytes = |v: &[half::f16; 8]| load_16(cast_ref::<[half::f16; 8], [u8; 16]>(v));
    _mm512_cvtph_ps(_mm256_set_m128i(bytes(b), bytes(a)))
}

/// The 16 accumulators into the output, row by row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn store_out(acc: &[__m512; WIDE_TILE_ROWS], out: &mut WideOut) {
    for (out, &acc) in out.iter_mut().zip(acc) {
        // SAFETY: `out` is 16 f32, 64 bytes; `storeu` needs no alignment.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), acc) };
    }
}

/// Block `i` of [`WIDE_TILE_ROWS`] Q8_0 activation rows, side by side: the scales as f32, the
/// offset term of the weight format (its offset times the sum of the row's 32 quants: 8 for
/// Q4_0's nibbles, 128 for Q8_0's quants plus 128), then each row's quants.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
pub(super) struct TileQ8_0 {
    d: [f32; WIDE_TILE_ROWS],
    offsets: [i32; WIDE_TILE_ROWS],
    qs: [[i8; 32]; WIDE_TILE_ROWS],
}

/// Lays out [`WIDE_TILE_ROWS`] Q8_0 rows of one length as [`TileQ8_0`]s for weights whose
/// unsigned values are `OFFSET` above their signed ones, block by block.
pub(super) fn pack_q8_0_tile<const OFFSET: i32>(
    a: [&[BlockQ8_0]; WIDE_TILE_ROWS],
    dst: &mut [TileQ8_0],
) {
    for a in a {
        assert_eq!(a.len(), dst.len(), "one packed block per activation block");
    }
    for (i, tile) in dst.iter_mut().enumerate() {
        for (n, a) in a.iter().enumerate() {
            let y = &a[i];
            tile.d[n] = y.d.to_f32();
            // At most 32 · 127 · 128 in magnitude.
            tile.offsets[n] = OFFSET * y.qs.iter().map(|&q| i32::from(q)).sum::<i32>();
            tile.qs[n] = y.qs;
        }
    }
}

/// The dots of a 32-element block's 16 weight rows (unsigned values `q`, runs `r` of
/// elements `4r..4r + 4`) with each activation row of tile block `t`, into the accumulators:
/// `vpdpbusd` in two chains (each waits ~5 cycles for its accumulator), the offset term off,
/// then scaled by `d` (the rows' scales) times the row's scale.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn q8_0_block(q: &[__m512i; 8], d: __m512, t: &TileQ8_0, acc: &mut [__m512; WIDE_TILE_ROWS]) {
    for (n, acc) in acc.iter_mut().enumerate() {
        let mut sums = [_mm512_setzero_si512(); 2];
        for (r, &q) in q.iter().enumerate() {
            sums[r % 2] = _mm512_dpbusd_epi32(sums[r % 2], q, act_run(&t.qs[n], 4 * r));
        }
        let sum = _mm512_sub_epi32(
            _mm512_add_epi32(sums[0], sums[1]),
            _mm512_set1_epi32(t.offsets[n]),
        );
        let scale = _mm512_mul_ps(d, _mm512_set1_ps(t.d[n]));
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, *acc);
    }
}

/// Q4_0 · Q8_0: two groups of interleaved blocks (16 rows) against a tile of 16 packed
/// activation rows ([`pack_q8_0_tile`] with offset 8). A block's 4 registers of nibbles give 8
/// of unsigned values: the low nibbles (elements `4r..`) and the high ones (`16 + 4r..`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn gemm_q4_0_x16_wide(w: &[BlockQ4_0x8], tile: &[TileQ8_0], out: &mut WideOut) {
    let (wa, wb) = two_groups(w, tile.len());
    let low = _mm512_set1_epi8(0x0f);
    let mut acc = [_mm512_setzero_ps(); WIDE_TILE_ROWS];
    for ((xa, xb), t) in wa.iter().zip(wb).zip(tile) {
        let (qa, qb) = (
            cast_ref::<[u8; 128], [[u8; 32]; 4]>(&xa.qs),
            cast_ref::<[u8; 128], [[u8; 32]; 4]>(&xb.qs),
        );
        let p: [__m512i; 4] = std::array::from_fn(|r| pair_run(qa, qb, r));
        let q: [__m512i; 8] = std::array::from_fn(|r| {
            if r < 4 {
                _mm512_and_si512(p[r], low)
            } else {
                _mm512_and_si512(_mm512_srli_epi16::<4>(p[r - 4]), low)
            }
        });
        q8_0_block(&q, f16_pair(&xa.d, &xb.d), t, &mut acc);
    }
    store_out(&acc, out);
}

/// Q8_0 · Q8_0: two groups of interleaved blocks (16 rows) against a tile of 16 packed
/// activation rows ([`pack_q8_0_tile`] with offset 128). The weight quants become unsigned by
/// flipping their top bit (adding 128).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn gemm_q8_0_x16_wide(w: &[BlockQ8_0x8], tile: &[TileQ8_0], out: &mut WideOut) {
    let (wa, wb) = two_groups(w, tile.len());
    let flip = _mm512_set1_epi8(i8::MIN);
    let mut acc = [_mm512_setzero_ps(); WIDE_TILE_ROWS];
    for ((xa, xb), t) in wa.iter().zip(wb).zip(tile) {
        let (qa, qb) = (
            cast_ref::<[i8; 256], [[u8; 32]; 8]>(&xa.qs),
            cast_ref::<[i8; 256], [[u8; 32]; 8]>(&xb.qs),
        );
        let q: [__m512i; 8] = std::array::from_fn(|r| _mm512_xor_si512(pair_run(qa, qb, r), flip));
        q8_0_block(&q, f16_pair(&xa.d, &xb.d), t, &mut acc);
    }
    store_out(&acc, out);
}

/// Q4_K · Q8_K: two groups of interleaved super-blocks (16 rows) against a tile of 16 packed
/// activation rows. Per super-block and sub-block `j`, 8 registers of 16 rows' nibbles (the
/// low or high ones of group register `j / 2`) serve the 16 activation rows: 8 `vpdpbusd`
/// each, then one `vpmulld` by the rows' scales into the row's total. Per super-block, the min
/// terms take 4 `vpdpwssd` per row (the rows' min pairs against the activation row's pairs of
/// sub-block sums).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn gemm_q4_k_x16_wide(w: &[BlockQ4Kx8], tile: &[TileQ8K], out: &mut WideOut) {
    let (wa, wb) = two_groups(w, tile.len());
    let low = _mm512_set1_epi8(0x0f);
    let mut acc = [_mm512_setzero_ps(); WIDE_TILE_ROWS];
    for ((xa, xb), t) in wa.iter().zip(wb).zip(tile) {
        let (sa, sb) = (q4_k_x8_unpack(xa).to_bytes(), q4_k_x8_unpack(xb).to_bytes());
        let mut total = [_mm512_setzero_si512(); WIDE_TILE_ROWS];
        for j in 0..8 {
            let (g, high) = (j / 2, j % 2 == 1);
            let (qa, qb) = (
                cast_ref::<[u8; 256], [[u8; 32]; 8]>(&xa.qs[g]),
                cast_ref::<[u8; 256], [[u8; 32]; 8]>(&xb.qs[g]),
            );
            let q: [__m512i; 8] = std::array::from_fn(|r| {
                let p = pair_run(qa, qb, r);
                if high {
                    _mm512_and_si512(_mm512_srli_epi16::<4>(p), low)
                } else {
                    _mm512_and_si512(p, low)
                }
            });
            // Row r's scale (6 bits) in dword r, group b's in dword 8 + r.
            let scales = _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(sa.of(j), sb.of(j)));
            for (total, qs) in total.iter_mut().zip(&t.qs) {
                // Two chains of 4 (`vpdpbusd` waits ~5 cycles for its accumulator).
                let mut sums = [_mm512_setzero_si512(); 2];
                for (r, &q) in q.iter().enumerate() {
                    sums[r % 2] = _mm512_dpbusd_epi32(sums[r % 2], q, act_run(qs, 32 * j + 4 * r));
                }
                let sum = _mm512_add_epi32(sums[0], sums[1]);
                // |sum| <= 32 · 15 · 127 and scale <= 63: far inside i32.
                *total = _mm512_add_epi32(*total, _mm512_mullo_epi32(sum, scales));
            }
        }
        // Dword r: row r's mins of sub-blocks (2p, 2p + 1) as an i16 pair.
        let mins: [__m512i; 4] = std::array::from_fn(|p| {
            _mm512_cvtepu8_epi16(_mm256_set_m128i(load_16(&sb.mins[p]), load_16(&sa.mins[p])))
        });
        let (d, dmin) = (f16_pair(&xa.d, &xb.d), f16_pair(&xa.dmin, &xb.dmin));
        for (n, acc) in acc.iter_mut().enumerate() {
            let mut min_sum = _mm512_setzero_si512();
            for (p, &mins) in mins.iter().enumerate() {
                min_sum = _mm512_dpwssd_epi32(min_sum, mins, i16_pair(&t.sub_sums[n], p));
            }
            let da = _mm512_set1_ps(t.d[n]);
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total[n]), _mm512_mul_ps(d, da), *acc);
            *acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(min_sum), _mm512_mul_ps(dmin, da), *acc);
        }
    }
    store_out(&acc, out);
}

/// The stored 6-bit values (`q + 32`, 0..=63) of register `t` of an interleaved Q6_K chunk,
/// 16 rows: `ql` its low-bit bytes, `qh` the high-bit register of `t / 2`, `odd` whether `t`
/// is odd (as the AVX2 kernels' `q6_k_x8_values`). Returns the low-nibble elements (sub-block
/// `2c`) and the high-nibble ones (`2c + 1`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn q6_k_values(ql: __m512i, qh: __m512i, odd: bool) -> (__m512i, __m512i) {
    let low4 = _mm512_set1_epi8(0x0f);
    let top = _mm512_set1_epi8(0x30);
    let (lo_high, hi_high) = if odd {
        (qh, _mm512_srli_epi16::<2>(qh))
    } else {
        (_mm512_slli_epi16::<4>(qh), _mm512_slli_epi16::<2>(qh))
    };
    let lo = _mm512_or_si512(_mm512_and_si512(ql, low4), _mm512_and_si512(lo_high, top));
    let hi = _mm512_or_si512(
        _mm512_and_si512(_mm512_srli_epi16::<4>(ql), low4),
        _mm512_and_si512(hi_high, top),
    );
    (lo, hi)
}

/// Q6_K · Q8_K: two groups of interleaved super-blocks (16 rows) against a tile of 16 packed
/// activation rows. Per 32-element chunk `c`, 8 registers of 16 rows' stored values (`q + 32`,
/// unsigned for `vpdpbusd`) serve the 16 activation rows: 4 `vpdpbusd` per sub-block, one
/// `vpmulld` by each sub-block's scales, and one `vpdpwssd` of the rows' scale pairs times -32
/// against the row's pair of 16-quant sums, which takes the offset off. The super-block's
/// integer sum is then ggml's exactly.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn gemm_q6_k_x16_wide(w: &[BlockQ6Kx8], tile: &[TileQ8K], out: &mut WideOut) {
    let (wa, wb) = two_groups(w, tile.len());
    let mut acc = [_mm512_setzero_ps(); WIDE_TILE_ROWS];
    for ((xa, xb), t) in wa.iter().zip(wb).zip(tile) {
        let mut total = [_mm512_setzero_si512(); WIDE_TILE_ROWS];
        for c in 0..8 {
            // i16 lane 2r + h: row r's scale of sub-block 2c + h (group b's from lane 16).
            let pairs = _mm512_cvtepi8_epi16(_mm256_set_m128i(
                load_16(cast_ref(&xb.scales[c])),
                load_16(cast_ref(&xa.scales[c])),
            ));
            let sc_lo = _mm512_srai_epi32::<16>(_mm512_slli_epi32::<16>(pairs));
            let sc_hi = _mm512_srai_epi32::<16>(pairs);
            // -32 · scale: at most 32 · 128 in magnitude, an i16.
            let offset = _mm512_sub_epi16(_mm512_setzero_si512(), _mm512_slli_epi16::<5>(pairs));
            let (qla, qlb) = (
                cast_ref::<[u8; 128], [[u8; 32]; 4]>(&xa.ql[c]),
                cast_ref::<[u8; 128], [[u8; 32]; 4]>(&xb.ql[c]),
            );
            let (qha, qhb) = (
                cast_ref::<[u8; 64], [[u8; 32]; 2]>(&xa.qh[c]),
                cast_ref::<[u8; 64], [[u8; 32]; 2]>(&xb.qh[c]),
            );
            let mut lo = [_mm512_setzero_si512(); 4];
            let mut hi = [_mm512_setzero_si512(); 4];
            for r in 0..4 {
                let qh = pair_run(qha, qhb, r / 2);
                (lo[r], hi[r]) = q6_k_values(pair_run(qla, qlb, r), qh, r % 2 == 1);
            }
            for (n, total) in total.iter_mut().enumerate() {
                let qs = &t.qs[n];
                let (mut sum_lo, mut sum_hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                for r in 0..4 {
                    sum_lo = _mm512_dpbusd_epi32(sum_lo, lo[r], act_run(qs, 32 * c + 4 * r));
                    sum_hi = _mm512_dpbusd_epi32(sum_hi, hi[r], act_run(qs, 32 * c + 16 + 4 * r));
                }
                // |sum| <= 16 · 63 · 127 and |scale| <= 128: far inside i32, as is the
                // super-block's total (16 sub-blocks).
                let scaled = _mm512_add_epi32(
                    _mm512_mullo_epi32(sum_lo, sc_lo),
                    _mm512_mullo_epi32(sum_hi, sc_hi),
                );
                let with_offset = _mm512_dpwssd_epi32(scaled, offset, i16_pair(&t.bsums[n], c));
                *total = _mm512_add_epi32(*total, with_offset);
            }
        }
        let d = f16_pair(&xa.d, &xb.d);
        for (n, acc) in acc.iter_mut().enumerate() {
            let da = _mm512_set1_ps(t.d[n]);
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total[n]), _mm512_mul_ps(d, da), *acc);
        }
    }
    store_out(&acc, out);
}
