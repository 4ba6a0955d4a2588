//! AVX-512 dot products for x86-64 (F, BW and VL, as Skylake-SP, Ice Lake, Sapphire Rapids and
//! Zen 4 have them), at two levels:
//! - plain AVX-512BW, whose integer dots pair u8×i8 products into i16 (`vpmaddubsw`) and those
//!   into i32 (`vpmaddwd`), as the AVX2 kernels do, 64 bytes at a time;
//! - AVX-512 VNNI (Cascade Lake, Ice Lake and later, Zen 4), where one `vpdpbusd` does both
//!   steps and the accumulation.
//!
//! Two levels as two paths (`avx512`, `avx512-vnni`), for the reason `CpuPath::NeonDotprod`
//! gives: on a VNNI CPU both can be forced, measured and held to the scalar reference in one
//! run. The 32-element formats are written once, generic over [`U8I8Dot`], and instantiated for
//! both; the K-quant and F16 kernels multiply by per-sub-block scales in the same instruction
//! that widens to i32 (`vpmaddwd`), where `vpdpbusd` would save nothing, so both levels share
//! them.
//!
//! Only the dot products are here. The activation quantizers are AVX2's (`super`), which every
//! CPU with AVX-512 can run and which are byte-identical to the scalar ones anyway; quantizing
//! is a small part of a matmul.
//!
//! As with [`super::Avx2`], the only way in from outside is an [`Avx512`] value, which exists
//! only once the running CPU has reported the features and which hands out safe function
//! pointers. The kernels are `#[target_feature]` functions listing AVX-512F, BW and VL and the
//! AVX2 set (so that they can call, and inline, the AVX2 helpers of `super`); those using
//! `vpdpbusd` are instantiated inside functions that add `avx512vnni`, which is enabled nowhere
//! else, since LLVM would be free to emit it anywhere it is on.
//!
//! The invariant the integer arithmetic relies on is AVX2's: activation quants are in
//! -127..=127, so their sign can be flipped, and two u8×i8 products (at most `128·127` each in
//! magnitude) add up in i16 without saturating.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use bytemuck::{cast_slice, cast_slice_mut};
use half::f16;

use super::{safe_dot, safe_dot_tile, safe_gemm};
use crate::quant::dispatch::{
    ActBlockSum, DotFn, DotTileFn, InterleavedGemmFn, WideGemm, WideOut, DOT_ROWS, TILE_ROWS,
    WIDE_TILE_ROWS,
};
use crate::quant::k_quants::{pack_q8_k_tile, TileQ8K};
use crate::quant::{
    BlockQ4K, BlockQ4Kx8, BlockQ4_0, BlockQ4_0x8, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1,
    BlockQ6K, BlockQ6Kx8, BlockQ8K, BlockQ8_0, BlockQ8_0x8, BlockQ8_1, GgmlType,
};

mod float;
mod k_quants;
mod legacy;
mod wide;

/// Proof that the running CPU has AVX-512F, BW and VL (and AVX2, FMA and F16C), and whether
/// it has VNNI; the only source of this module's kernels.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512 {
    /// The CPU has reported `avx512vnni`: the integer dots may use `vpdpbusd`.
    vnni: bool,
}

impl Avx512 {
    /// The kernels without VNNI, if the CPU has AVX-512F, BW and VL (asked once per process).
    pub(crate) fn detect() -> Option<Avx512> {
        static DETECTED: OnceLock<bool> = OnceLock::new();
        let detected = *DETECTED.get_or_init(|| {
            // `is_x86_feature_detected!` also asks the OS whether it saves the ZMM and mask
            // registers (XCR0), without which the instructions fault.
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        });
        detected.then_some(Avx512 { vnni: false })
    }

    /// The kernels that use `vpdpbusd`, if the CPU has AVX-512 VNNI as well.
    pub(crate) fn detect_vnni() -> Option<Avx512> {
        static DETECTED: OnceLock<bool> = OnceLock::new();
        Avx512::detect()?;
        let detected = *DETECTED.get_or_init(|| is_x86_feature_detected!("avx512vnni"));
        detected.then_some(Avx512 { vnni: true })
    }

    /// The dot product of weights of type `ty` with their activation format, if there is an
    /// AVX-512 one.
    pub(crate) fn dot(self, ty: GgmlType) -> Option<DotFn> {
        use GgmlType::*;
        let legacy = if self.vnni { &VNNI } else { &MADDUBS };
        Some(match ty {
            F16 => dot_f16,
            Q4_0 => legacy.q4_0,
            Q4_1 => legacy.q4_1,
            Q5_0 => legacy.q5_0,
            Q5_1 => legacy.q5_1,
            Q8_0 => legacy.q8_0,
            Q4K => dot_q4_k,
            Q5K => dot_q5_k,
            Q6K => dot_q6_k,
            _ => return None,
        })
    }

    /// The dot product of weights of type `ty` with [`TILE_ROWS`] activation rows at once, if
    /// there is an AVX-512 one (the K-quants, as on AVX2).
    pub(crate) fn dot_tile(self, ty: GgmlType) -> Option<DotTileFn> {
        use GgmlType::*;
        Some(match ty {
            Q4K => dot_tile_q4_k,
            Q5K => dot_tile_q5_k,
            Q6K => dot_tile_q6_k,
            _ => return None,
        })
    }
}

impl Avx512 {
    /// The batch kernel of interleaved weights of type `ty` that uses `vpdpbusd`, on the VNNI
    /// level (the layouts and the decode dots stay AVX2's: decode is bound by memory). Q4_0
    /// and Q8_0 only: a Q4_K one (`vpdpbusd` per run, `vpmulld` per sub-block's scale) ran no
    /// faster than AVX2's (gemm/q4_K 4096×4096×128: 16.7 against 16.2 ms, 2026-12-06); its
    /// time goes to the activation broadcasts and the nibble unpacking, not the products.
    pub(crate) fn interleaved_gemm(self, ty: GgmlType) -> Option<InterleavedGemmFn> {
        if !self.vnni {
            return None;
        }
        Some(match ty {
            GgmlType::Q4_0 => gemm_interleaved_q4_0_vnni,
            GgmlType::Q8_0 => gemm_interleaved_q8_0_vnni,
            _ => return None,
        })
    }
}

impl Avx512 {
    /// The wide batch kernel ([`WideGemm`]: 16 weight rows of two groups against 16 packed
    /// activation rows) of interleaved weights of type `ty`, on the VNNI level (Q4_0, Q8_0,
    /// Q4_K, Q6_K: every interleaved type).
    pub(crate) fn wide_gemm(self, ty: GgmlType) -> Option<WideGemm> {
        if !self.vnni {
            return None;
        }
        let q8_0_tile = |blocks| blocks * std::mem::size_of::<wide::TileQ8_0>();
        let q8_k_tile = |blocks| blocks * std::mem::size_of::<TileQ8K>();
        let (packed_bytes, pack, gemm): (fn(usize) -> usize, PackFn, WideGemmFn) = match ty {
            GgmlType::Q4_0 => (
                q8_0_tile,
                |a, dst| wide::pack_q8_0_tile::<8>(a.map(cast_slice), cast_slice_mut(dst)),
                gemm_q4_0_wide,
            ),
            GgmlType::Q8_0 => (
                q8_0_tile,
                |a, dst| wide::pack_q8_0_tile::<128>(a.map(cast_slice), cast_slice_mut(dst)),
                gemm_q8_0_wide,
            ),
            GgmlType::Q4K => (
                q8_k_tile,
                |a, dst| pack_q8_k_tile(a.map(cast_slice), cast_slice_mut(dst)),
                gemm_q4_k_wide,
            ),
            GgmlType::Q6K => (
                q8_k_tile,
                |a, dst| pack_q8_k_tile(a.map(cast_slice), cast_slice_mut(dst)),
                gemm_q6_k_wide,
            ),
            _ => return None,
        };
        Some(WideGemm {
            packed_bytes,
            pack,
            groups: 2,
            gemm,
        })
    }
}

/// Safe byte-level wrappers around the VNNI wide kernels of interleaved weights.
macro_rules! safe_vnni_wide {
    ($name:ident, $kernel:path, $block:ty) => {
        fn $name(w: &[u8], a: &[u8], out: &mut WideOut) {
            // SAFETY: reachable only through `Avx512::wide_gemm` on an `Avx512` made by
            // `detect_vnni`: the CPU has AVX-512F/BW/VL/VNNI, AVX2, FMA and F16C.
            unsafe { $kernel(cast_slice::<u8, $block>(w), cast_slice(a), out) }
        }
    };
}

/// `WideGemm::pack`.
type PackFn = fn([&[u8]; WIDE_TILE_ROWS], &mut [u8]);
/// `WideGemm::gemm`.
type WideGemmFn = fn(&[u8], &[u8], &mut WideOut);

safe_vnni_wide!(gemm_q4_0_wide, wide::gemm_q4_0_x16_wide, BlockQ4_0x8);
safe_vnni_wide!(gemm_q8_0_wide, wide::gemm_q8_0_x16_wide, BlockQ8_0x8);
safe_vnni_wide!(gemm_q4_k_wide, wide::gemm_q4_k_x16_wide, BlockQ4Kx8);
safe_vnni_wide!(gemm_q6_k_wide, wide::gemm_q6_k_x16_wide, BlockQ6Kx8);

safe_gemm!(
    gemm_interleaved_q4_0_vnni,
    super::legacy_interleaved::gemm_interleaved_q4_0_q8_0_vnni
);
safe_gemm!(
    gemm_interleaved_q8_0_vnni,
    super::legacy_interleaved::gemm_interleaved_q8_0_q8_0_vnni
);

/// The dots of the 32-element formats at one level.
struct LegacyDots {
    q4_0: DotFn,
    q4_1: DotFn,
    q5_0: DotFn,
    q5_1: DotFn,
    q8_0: DotFn,
}

/// Safe byte-level wrappers around a generic 32-element kernel, one per level.
macro_rules! safe_legacy_dots {
    ($maddubs:ident, $vnni:ident, $kernel:path, $weight:ty, $act:ty) => {
        fn $maddubs(w: &[u8], a: &[u8]) -> f32 {
            let (w, a): (&[$weight], &[$act]) = (cast_slice(w), cast_slice(a));
            // SAFETY: this function is reachable only through `Avx512::dot`, and an `Avx512`
            // exists only once the CPU has reported AVX-512F/BW/VL, AVX2, FMA and F16C.
            unsafe { $kernel(Maddubs { _detected: () }, w, a) }
        }

        fn $vnni(w: &[u8], a: &[u8]) -> f32 {
            // The kernel is inlined into this function (its only caller), and `vpdpbusd`
            // into the kernel there.
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            fn with_vnni(w: &[$weight], a: &[$act]) -> f32 {
                $kernel(Vnni { _detected: () }, w, a)
            }
            // SAFETY: this function is reachable only through `Avx512::dot` on an `Avx512`
            // made by `detect_vnni`, i.e. once the CPU has reported AVX-512 VNNI as well.
            unsafe { with_vnni(cast_slice(w), cast_slice(a)) }
        }
    };
}

safe_legacy_dots!(
    q4_0_maddubs,
    q4_0_vnni,
    legacy::dot_q4_0_q8_0,
    BlockQ4_0,
    BlockQ8_0
);
safe_legacy_dots!(
    q4_1_maddubs,
    q4_1_vnni,
    legacy::dot_q4_1_q8_1,
    BlockQ4_1,
    BlockQ8_1
);
safe_legacy_dots!(
    q5_0_maddubs,
    q5_0_vnni,
    legacy::dot_q5_0_q8_0,
    BlockQ5_0,
    BlockQ8_0
);
safe_legacy_dots!(
    q5_1_maddubs,
    q5_1_vnni,
    legacy::dot_q5_1_q8_1,
    BlockQ5_1,
    BlockQ8_1
);
safe_legacy_dots!(
    q8_0_maddubs,
    q8_0_vnni,
    legacy::dot_q8_0_q8_0,
    BlockQ8_0,
    BlockQ8_0
);

static MADDUBS: LegacyDots = LegacyDots {
    q4_0: q4_0_maddubs,
    q4_1: q4_1_maddubs,
    q5_0: q5_0_maddubs,
    q5_1: q5_1_maddubs,
    q8_0: q8_0_maddubs,
};

static VNNI: LegacyDots = LegacyDots {
    q4_0: q4_0_vnni,
    q4_1: q4_1_vnni,
    q5_0: q5_0_vnni,
    q5_1: q5_1_vnni,
    q8_0: q8_0_vnni,
};

safe_dot!(dot_f16, float::dot_f16, f16, f16);
safe_dot!(dot_q4_k, k_quants::dot_q4_k_q8_k, BlockQ4K, BlockQ8K);
safe_dot!(dot_q5_k, k_quants::dot_q5_k_q8_k, BlockQ5K, BlockQ8K);
safe_dot!(dot_q6_k, k_quants::dot_q6_k_q8_k, BlockQ6K, BlockQ8K);
safe_dot_tile!(
    dot_tile_q4_k,
    k_quants::dot_tile_q4_k_q8_k,
    BlockQ4K,
    BlockQ8K
);
safe_dot_tile!(
    dot_tile_q5_k,
    k_quants::dot_tile_q5_k_q8_k,
    BlockQ5K,
    BlockQ8K
);
safe_dot_tile!(
    dot_tile_q6_k,
    k_quants::dot_tile_q6_k_q8_k,
    BlockQ6K,
    BlockQ8K
);

/// The 64-byte unsigned × signed dot product the 32-element kernels are built on.
pub(super) trait U8I8Dot: Copy {
    /// `acc` plus, in i32 lane `i`, `Σ x[4i + k]·y[4i + k]` for `k` in 0..4, exactly, for
    /// unsigned `x <= 128` and activation quants `y` (-127..=127).
    fn dot(self, acc: __m512i, x: __m512i, y: __m512i) -> __m512i;
}

/// Plain AVX-512BW: `vpmaddubsw` adds the products of bytes `2j` and `2j + 1` in i16 lane `j`
/// (at most `2·128·127` in magnitude: no saturation), `vpmaddwd` adds lanes `2i` and `2i + 1`
/// into i32 lane `i`. Only the `safe_legacy_dots!` functions make one.
#[derive(Clone, Copy)]
pub(super) struct Maddubs {
    _detected: (),
}

impl U8I8Dot for Maddubs {
    #[inline(always)]
    fn dot(self, acc: __m512i, x: __m512i, y: __m512i) -> __m512i {
        // SAFETY: a `Maddubs` exists only inside the `safe_legacy_dots!` functions, which are
        // reachable only through an `Avx512` (a trait method cannot carry `#[target_feature]`
        // itself).
        unsafe { maddubs_dot(acc, x, y) }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn maddubs_dot(acc: __m512i, x: __m512i, y: __m512i) -> __m512i {
    let pairs = _mm512_maddubs_epi16(x, y);
    _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, _mm512_set1_epi16(1)))
}

/// AVX-512 VNNI: `vpdpbusd` adds the four u8×i8 products of each i32 lane to it, exactly (no
/// saturation, unlike `vpdpbusds`). Only the VNNI functions of `safe_legacy_dots!` make one.
#[derive(Clone, Copy)]
pub(super) struct Vnni {
    _detected: (),
}

impl U8I8Dot for Vnni {
    #[inline(always)]
    fn dot(self, acc: __m512i, x: __m512i, y: __m512i) -> __m512i {
        // SAFETY: a `Vnni` exists only inside the VNNI functions of `safe_legacy_dots!`, which
        // are reachable only through an `Avx512` made by `detect_vnni`.
        unsafe { vnni_dot(acc, x, y) }
    }
}

/// The instruction itself, in a function of its own with the feature on: an optimized build
/// inlines it into the VNNI functions of `safe_legacy_dots!` (the kernels inline there first),
/// an unoptimized one calls it.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn vnni_dot(acc: __m512i, x: __m512i, y: __m512i) -> __m512i {
    _mm512_dpbusd_epi32(acc, x, y)
}

// Helpers shared by the kernels, inlined into them (see `super` for the AVX2 ones they use).

/// 64 bytes as one register.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn load_64<T: bytemuck::Pod>(bytes: &[T; 64]) -> __m512i {
    const { assert!(std::mem::size_of::<T>() == 1) };
    // SAFETY: the array is 64 bytes long; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) }
}

/// `lo` in bytes 0..32, `hi` in bytes 32..64.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// i16 lanes holding `v[j]` throughout 128-bit lane `j`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn quarters_epi16(v: [i16; 4]) -> __m512i {
    join(
        _mm256_set_m128i(_mm_set1_epi16(v[1]), _mm_set1_epi16(v[0])),
        _mm256_set_m128i(_mm_set1_epi16(v[3]), _mm_set1_epi16(v[2])),
    )
}

/// i16 lanes holding `lo` throughout the low 256 bits and `hi` throughout the high ones.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn halves_epi16(lo: i16, hi: i16) -> __m512i {
    quarters_epi16([lo, lo, hi, hi])
}

/// As [`U8I8Dot::dot`] from zero, for signed `x` (any i8) and activation quants `y`: the sign
/// of `x` moves onto `y` (`-y` fits, as `y >= -127`), leaving `|x| <= 128` unsigned. (AVX-512
/// has no `vpsignb`; where `x` is 0 the product is 0 whatever `y` becomes.)
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn dot_i8_i8(dot: impl U8I8Dot, x: __m512i, y: __m512i) -> __m512i {
    let zero = _mm512_setzero_si512();
    let negative = _mm512_movepi8_mask(x);
    let y = _mm512_mask_sub_epi8(y, negative, zero, y);
    // `vpabsb` of -128 is 0x80, i.e. 128 read as unsigned.
    dot.dot(zero, _mm512_abs_epi8(x), y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Σ x·y` per i32 lane of two 64-byte arrays, the way the kernels read them.
    fn lane_sums(x: &[u8; 64], y: &[i8; 64], signed_x: bool) -> [i32; 16] {
        std::array::from_fn(|i| {
            (4 * i..4 * i + 4)
                .map(|j| {
                    let x = if signed_x {
                        i32::from(x[j] as i8)
                    } else {
                        i32::from(x[j])
                    };
                    x * i32::from(y[j])
                })
                .sum()
        })
    }

    fn extremes() -> ([u8; 64], [i8; 64]) {
        // Every byte value's neighbourhood, -128 / 255 included, against ±127 and small values.
        let x: [u8; 64] = std::array::from_fn(|i| (i as u8).wrapping_mul(73).wrapping_add(128));
        let y: [i8; 64] = std::array::from_fn(|i| match i % 5 {
            0 => -127,
            1 => 127,
            _ => (i as i8).wrapping_mul(37) / 2,
        });
        (x, y)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    fn store(v: __m512i) -> [i32; 16] {
        let mut out = [0i32; 16];
        // SAFETY: `out` is 64 bytes; `storeu` has no alignment requirement.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), v) };
        out
    }

    #[test]
    fn both_levels_sum_the_same_products_as_the_integers_do() {
        crate::quant::report_skipped_paths("both_levels_sum_the_same_products_as_the_integers_do");
        let Some(_) = Avx512::detect() else {
            return;
        };
        let (x, y) = extremes();
        // Unsigned x up to 128 for `U8I8Dot`; any signed x for `dot_i8_i8`.
        let x_small: [u8; 64] = x.map(|b| b % 129);

        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        fn run(
            dot: impl U8I8Dot,
            x_small: &[u8; 64],
            x: &[u8; 64],
            y: &[i8; 64],
        ) -> [[i32; 16]; 2] {
            let acc = _mm512_set1_epi32(5);
            let unsigned = _mm512_sub_epi32(
                dot.dot(acc, load_64(x_small), load_64(y)),
                _mm512_set1_epi32(5),
            );
            [
                store(unsigned),
                store(dot_i8_i8(dot, load_64(x), load_64(y))),
            ]
        }
        let want = [lane_sums(&x_small, &y, false), lane_sums(&x, &y, true)];
        // SAFETY: the CPU has AVX-512F/BW/VL (detected above).
        let got = unsafe { run(Maddubs { _detected: () }, &x_small, &x, &y) };
        assert_eq!(got, want, "maddubs");
        if Avx512::detect_vnni().is_some() {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            fn run_vnni(x_small: &[u8; 64], x: &[u8; 64], y: &[i8; 64]) -> [[i32; 16]; 2] {
                run(Vnni { _detected: () }, x_small, x, y)
            }
            // SAFETY: the CPU has AVX-512 VNNI (detected above).
            let got = unsafe { run_vnni(&x_small, &x, &y) };
            assert_eq!(got, want, "vnni");
        }
    }

    #[test]
    fn quarters_fill_each_128_bit_lane_with_its_value() {
        if Avx512::detect().is_none() {
            crate::quant::report_skipped_paths("quarters_fill_each_128_bit_lane_with_its_value");
            return;
        }
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        fn run() -> [i32; 16] {
            store(quarters_epi16([1, -2, 300, -32768]))
        }
        // SAFETY: the CPU has AVX-512F/BW/VL (checked above).
        let got = unsafe { run() };
        let pair = |v: i16| (i32::from(v) & 0xffff) | (i32::from(v) << 16);
        let want: [i32; 16] = std::array::from_fn(|i| pair([1, -2, 300, -32768][i / 4]));
        assert_eq!(got, want);
    }
}
