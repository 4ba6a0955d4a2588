//! AVX2 kernels (with FMA and F16C) for x86-64: dot products of the weight formats with their
//! activation formats, and the activation quantizers.
//!
//! Every kernel is a `#[target_feature(enable = "avx2,fma,f16c")]` function; the compiler makes
//! calling one from code without those features `unsafe`. The only way in from outside this
//! module is an [`Avx2`] value, which exists only once the running CPU has reported all three
//! features, and which hands out safe function pointers. So the binary stays generic x86-64 and
//! runs, on the scalar path, on CPUs without AVX2.
//!
//! The scalar code beside each format is the reference: the quantizers here write identical
//! bytes, and the dots compute the same exact integer block sums and differ only in the order
//! in which the float terms are added (`tests/simd_kernels.rs` holds them to that).
//!
//! One invariant the integer arithmetic relies on: activation quants are in -127..=127, which
//! every Q8 quantizer guarantees (ggml's too). It makes `_mm256_sign_epi8` safe to apply to
//! them and keeps `_mm256_maddubs_epi16`'s pairwise i16 sums from saturating.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use bytemuck::{cast_slice, cast_slice_mut};
use half::f16;

use super::dispatch::{
    interleaving, ActBlockSum, DotFn, DotRowsFn, DotTileFn, InterleavedGemmFn, Interleaving,
    QuantizeFn, DOT_ROWS, TILE_ROWS,
};
use super::{
    BlockQ4K, BlockQ4Kx8, BlockQ4_0, BlockQ4_0x8, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1,
    BlockQ6K, BlockQ6Kx8, BlockQ8K, BlockQ8_0, BlockQ8_0x8, BlockQ8_1, GgmlType,
};

mod activations;
mod avx512;
mod float;
mod k_quants;
mod k_quants_interleaved;
mod legacy;
mod legacy_interleaved;

pub(crate) use avx512::Avx512;

/// Proof that the running CPU has AVX2, FMA and F16C; the only source of this module's kernels.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2 {
    _detected: (),
}

impl Avx2 {
    /// `Some` if the CPU has AVX2, FMA and F16C (asked once per process).
    pub(crate) fn detect() -> Option<Avx2> {
        static DETECTED: OnceLock<bool> = OnceLock::new();
        let detected = *DETECTED.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        });
        detected.then_some(Avx2 { _detected: () })
    }

    /// The dot product of weights of type `ty` with their activation format, if there is an
    /// AVX2 one.
    pub(crate) fn dot(self, ty: GgmlType) -> Option<DotFn> {
        use GgmlType::*;
        Some(match ty {
            F16 => dot_f16,
            Q4_0 => dot_q4_0,
            Q4_1 => dot_q4_1,
            Q5_0 => dot_q5_0,
            Q5_1 => dot_q5_1,
            Q8_0 => dot_q8_0,
            Q4K => dot_q4_k,
            Q5K => dot_q5_k,
            Q6K => dot_q6_k,
            _ => return None,
        })
    }

    /// The dot products of [`DOT_ROWS`] weight rows of type `ty` with one activation row, if
    /// there is an AVX2 one (the legacy formats, whose one-row dot spends as much on each
    /// activation block as on the weights).
    pub(crate) fn dot_rows(self, ty: GgmlType) -> Option<DotRowsFn> {
        use GgmlType::*;
        Some(match ty {
            Q4_0 => dot_rows_q4_0,
            Q5_0 => dot_rows_q5_0,
            _ => return None,
        })
    }

    /// How this path multiplies interleaved weights of type `ty`, if it has a kernel for them
    /// (Q4_0: the row kernel without its transpose; Q8_0: the same shape, signed).
    pub(crate) fn interleaved(self, ty: GgmlType) -> Option<Interleaving> {
        match ty {
            GgmlType::Q4_0 => Some(Interleaving {
                dot: dot_interleaved_q4_0,
                gemm: gemm_interleaved_q4_0,
                ..interleaving::<BlockQ4_0x8>()
            }),
            GgmlType::Q8_0 => Some(Interleaving {
                dot: dot_interleaved_q8_0,
                gemm: gemm_interleaved_q8_0,
                ..interleaving::<BlockQ8_0x8>()
            }),
            GgmlType::Q4K => Some(Interleaving {
                dot: dot_interleaved_q4_k,
                gemm: gemm_interleaved_q4_k,
                ..interleaving::<BlockQ4Kx8>()
            }),
            GgmlType::Q6K => Some(Interleaving {
                dot: dot_interleaved_q6_k,
                gemm: gemm_interleaved_q6_k,
                ..interleaving::<BlockQ6Kx8>()
            }),
            _ => None,
        }
    }

    /// The dot product of weights of type `ty` with [`TILE_ROWS`] activation rows at once, if
    /// there is an AVX2 one (the K-quants; batches of the other types are widened to f32, see
    /// `RowKernels::widen_batches`).
    pub(crate) fn dot_tile(self, ty: GgmlType) -> Option<DotTileFn> {
        use GgmlType::*;
        Some(match ty {
            Q4K => dot_tile_q4_k,
            Q5K => dot_tile_q5_k,
            Q6K => dot_tile_q6_k,
            _ => return None,
        })
    }

    /// The quantizer for activations of type `ty`, if there is an AVX2 one.
    pub(crate) fn quantize(self, ty: GgmlType) -> Option<QuantizeFn> {
        use GgmlType::*;
        Some(match ty {
            F16 => quantize_f16,
            Q8_0 => quantize_q8_0,
            Q8_1 => quantize_q8_1,
            Q8K => quantize_q8_k,
            _ => return None,
        })
    }
}

/// Proof that the running CPU has AVX-VNNI besides AVX2, FMA and F16C (Alder Lake and later
/// Intel Core, Sierra Forest, Zen 5): the VEX-encoded 256-bit `vpdpbusd`. The only source of
/// the `avx-vnni` path's own kernels; every other kernel of that path is [`Avx2`]'s.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AvxVnni {
    _detected: (),
}

impl AvxVnni {
    /// `Some` if the CPU has AVX-VNNI, AVX2, FMA and F16C (asked once per process).
    pub(crate) fn detect() -> Option<AvxVnni> {
        static DETECTED: OnceLock<bool> = OnceLock::new();
        Avx2::detect()?;
        let detected = *DETECTED.get_or_init(|| is_x86_feature_detected!("avxvnni"));
        detected.then_some(AvxVnni { _detected: () })
    }

    /// The batch kernel of interleaved weights of type `ty` that uses `vpdpbusd`: those of
    /// the `avx512-vnni` path, in the VEX encoding (Q4_0 and Q8_0; why not the K-quants is
    /// said at `Avx512::interleaved_gemm`). The layouts and decode's dots stay AVX2's.
    pub(crate) fn interleaved_gemm(self, ty: GgmlType) -> Option<InterleavedGemmFn> {
        Some(match ty {
            GgmlType::Q4_0 => gemm_interleaved_q4_0_avx_vnni,
            GgmlType::Q8_0 => gemm_interleaved_q8_0_avx_vnni,
            _ => return None,
        })
    }
}

safe_gemm!(
    gemm_interleaved_q4_0_avx_vnni,
    legacy_interleaved::gemm_interleaved_q4_0_q8_0_avx_vnni
);
safe_gemm!(
    gemm_interleaved_q8_0_avx_vnni,
    legacy_interleaved::gemm_interleaved_q8_0_q8_0_avx_vnni
);

/// A safe byte-level wrapper around a kernel, for a proof type ([`Avx2`], `avx512::Avx512`) to
/// hand out. Used only in the module of that proof type, for kernels of its features.
macro_rules! safe_dot {
    ($name:ident, $kernel:path, $weight:ty, $act:ty) => {
        fn $name(w: &[u8], a: &[u8]) -> f32 {
            let (w, a): (&[$weight], &[$act]) = (cast_slice(w), cast_slice(a));
            // SAFETY: this function is reachable only through the `dot` of its module's proof
            // type, which exists only once the CPU has reported the features the kernel needs.
            unsafe { $kernel(w, a) }
        }
    };
}
pub(super) use safe_dot;

/// As `safe_dot`, for a batch kernel of interleaved weights handed out by the
/// `interleaved_gemm` of a proof type ([`AvxVnni`], `avx512::Avx512` on its VNNI level).
macro_rules! safe_gemm {
    ($name:ident, $kernel:path) => {
        fn $name(
            w: &[u8],
            a: [&[u8]; TILE_ROWS],
            sums: [&[ActBlockSum]; TILE_ROWS],
        ) -> [[f32; DOT_ROWS]; TILE_ROWS] {
            // SAFETY: reachable only through the `interleaved_gemm` of its module's proof
            // type, which hands out kernels only once the CPU has reported their features.
            unsafe { $kernel(cast_slice(w), a.map(cast_slice), sums) }
        }
    };
}
pub(super) use safe_gemm;

/// As `safe_dot`, for the tile kernels.
macro_rules! safe_dot_tile {
    ($name:ident, $kernel:path, $weight:ty, $act:ty) => {
        fn $name(w: &[u8], a: [&[u8]; TILE_ROWS]) -> [f32; TILE_ROWS] {
            let w: &[$weight] = cast_slice(w);
            let a: [&[$act]; TILE_ROWS] = a.map(cast_slice);
            // SAFETY: reachable only through the `dot_tile` of its module's proof type, as for
            // the dots.
            unsafe { $kernel(w, a) }
        }
    };
}
pub(super) use safe_dot_tile;

/// As `safe_dot`, for the row kernels.
macro_rules! safe_dot_rows {
    ($name:ident, $kernel:path, $weight:ty, $act:ty) => {
        fn $name(w: [&[u8]; DOT_ROWS], a: &[u8]) -> [f32; DOT_ROWS] {
            let w: [&[$weight]; DOT_ROWS] = w.map(cast_slice);
            let a: &[$act] = cast_slice(a);
            // SAFETY: reachable only through `Avx2::dot_rows`, as for the dots above.
            unsafe { $kernel(w, a) }
        }
    };
}

/// As `safe_dot`, for the two kernels of an interleaved layout: a group's dot with one
/// activation row, and with [`TILE_ROWS`].
macro_rules! safe_interleaved {
    ($dot:ident, $gemm:ident, $dot_kernel:path, $gemm_kernel:path) => {
        fn $dot(w: &[u8], a: &[u8]) -> [f32; DOT_ROWS] {
            // SAFETY: reachable only through `Avx2::interleaved`, as for the dots above.
            unsafe { $dot_kernel(cast_slice(w), cast_slice(a)) }
        }

        fn $gemm(
            w: &[u8],
            a: [&[u8]; TILE_ROWS],
            sums: [&[ActBlockSum]; TILE_ROWS],
        ) -> [[f32; DOT_ROWS]; TILE_ROWS] {
            // SAFETY: as for the dot beside it.
            unsafe { $gemm_kernel(cast_slice(w), a.map(cast_slice), sums) }
        }
    };
}

macro_rules! safe_quantize {
    ($name:ident, $kernel:path, $act:ty) => {
        fn $name(src: &[f32], dst: &mut [u8]) {
            let dst: &mut [$act] = cast_slice_mut(dst);
            // SAFETY: reachable only through `Avx2::quantize`, as for the dots above.
            unsafe { $kernel(src, dst) }
        }
    };
}

safe_dot!(dot_f16, float::dot_f16, f16, f16);
safe_dot!(dot_q4_0, legacy::dot_q4_0_q8_0, BlockQ4_0, BlockQ8_0);
safe_dot!(dot_q4_1, legacy::dot_q4_1_q8_1, BlockQ4_1, BlockQ8_1);
safe_dot!(dot_q5_0, legacy::dot_q5_0_q8_0, BlockQ5_0, BlockQ8_0);
safe_dot!(dot_q5_1, legacy::dot_q5_1_q8_1, BlockQ5_1, BlockQ8_1);
safe_dot!(dot_q8_0, legacy::dot_q8_0_q8_0, BlockQ8_0, BlockQ8_0);
safe_dot!(dot_q4_k, k_quants::dot_q4_k_q8_k, BlockQ4K, BlockQ8K);
safe_dot!(dot_q5_k, k_quants::dot_q5_k_q8_k, BlockQ5K, BlockQ8K);
safe_dot!(dot_q6_k, k_quants::dot_q6_k_q8_k, BlockQ6K, BlockQ8K);
safe_dot_rows!(
    dot_rows_q4_0,
    legacy::dot_rows_q4_0_q8_0,
    BlockQ4_0,
    BlockQ8_0
);
safe_dot_rows!(
    dot_rows_q5_0,
    legacy::dot_rows_q5_0_q8_0,
    BlockQ5_0,
    BlockQ8_0
);
safe_interleaved!(
    dot_interleaved_q4_0,
    gemm_interleaved_q4_0,
    legacy::dot_interleaved_q4_0_q8_0,
    legacy::gemm_interleaved_q4_0_q8_0
);
safe_interleaved!(
    dot_interleaved_q8_0,
    gemm_interleaved_q8_0,
    legacy::dot_interleaved_q8_0_q8_0,
    legacy::gemm_interleaved_q8_0_q8_0
);
safe_interleaved!(
    dot_interleaved_q4_k,
    gemm_interleaved_q4_k,
    k_quants::dot_interleaved_q4_k_q8_k,
    k_quants::gemm_interleaved_q4_k_q8_k
);
safe_interleaved!(
    dot_interleaved_q6_k,
    gemm_interleaved_q6_k,
    k_quants::dot_interleaved_q6_k_q8_k,
    k_quants::gemm_interleaved_q6_k_q8_k
);
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
safe_quantize!(quantize_f16, float::quantize_row_f16, f16);
safe_quantize!(quantize_q8_0, activations::quantize_row_q8_0, BlockQ8_0);
safe_quantize!(quantize_q8_1, activations::quantize_row_q8_1, BlockQ8_1);
safe_quantize!(quantize_q8_k, activations::quantize_row_q8_k, BlockQ8K);

// Helpers shared by the kernels. Being `#[target_feature]` functions themselves, they inline
// into the kernels and can be called from them without `unsafe`.

/// 32 bytes as one register.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_32<T: bytemuck::Pod>(bytes: &[T; 32]) -> __m256i {
    const { assert!(std::mem::size_of::<T>() == 1) };
    // SAFETY: the array is 32 bytes long; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// How far ahead of a block a streaming kernel asks for the weights it will read
/// ([`prefetch_ahead`]): about 14 Q4_0x8 blocks, or 1.7 of Q4_K. Measured on the interleaved
/// Q4_0 kernel (gemv/q4_0 4096×11008, 2 threads): none 14.6 GiB/s, 512 bytes 15.4, 1024 17–20,
/// 2048 19–21, 4096 20.5; later, alternating 2048 and 4096 three times: Q4_0 25.8–28.6 against
/// 20.9–22.0 GiB/s, Q4_K the same either way (2026-11-27).
const PREFETCH_BYTES: usize = 2048;

/// [`PREFETCH_BYTES`] for the interleaved Q6_K kernel, whose blocks are the largest (1,680
/// bytes for 8 rows) and the slowest to compute per byte: gemv/q6_k 4096×11008, 2048 and 4096
/// alternating three times: 17.7 / 23.5 / 23.7 against 20.2 / 26.5 / 25.6 GiB/s.
const PREFETCH_BYTES_Q6_K: usize = 4096;

/// Asks for the cache lines of the `T` that lies [`PREFETCH_BYTES`] after `x` in its stream.
/// The hardware prefetcher alone keeps about 70% of the memory bandwidth busy for a kernel this
/// dense in arithmetic; with the hint the interleaved Q4_0 kernel reaches the bandwidth a plain
/// read loop measures.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch_ahead<T>(x: &T) {
    prefetch_ahead_by::<PREFETCH_BYTES, T>(x)
}

/// [`prefetch_ahead`] at a distance of `BYTES`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch_ahead_by<const BYTES: usize, T>(x: &T) {
    let ahead = (x as *const T).wrapping_byte_add(BYTES).cast::<i8>();
    for line in (0..std::mem::size_of::<T>()).step_by(64) {
        // A hint: `prefetcht0` cannot fault, even past the end of the stream.
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
    }
}

/// 16 bytes as one register.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_16(bytes: &[u8; 16]) -> __m128i {
    // SAFETY: the array is 16 bytes long; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
}

/// `vcvtph2ps` on one value: exact, as every f16 is an f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f16_to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits()))))
}

/// `vcvtps2ph` with round-to-nearest-even: the conversion `half::f16::from_f32` (and ggml's
/// `GGML_FP32_TO_FP16`) computes, so quantizer scales come out bit-identical.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f32_to_f16(x: f32) -> f16 {
    let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x));
    f16::from_bits(_mm_extract_epi16::<0>(h) as u16)
}

/// Sum of the 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum_f32(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The 8 lanes as an array.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn lanes(v: __m256) -> [f32; 8] {
    let mut out = [0f32; 8];
    // SAFETY: `out` holds 8 floats; `storeu` needs no alignment.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// Sum of the 8 lanes, exact.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// `Σ x·y` over each group of 4 adjacent bytes, as 8 i32 lanes, for unsigned `x` and signed
/// `y`. `x·y` pairs are summed in i16 first (`maddubs`): exact while `2·x·|y| < 2^15`, i.e.
/// `x <= 128` against activation quants.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_u8_i8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// As [`dot_u8_i8`] for signed `x` (any i8) and activation quants `y`: the sign of `x` moves
/// onto `y` (`-y` fits, as `y >= -127`), leaving `|x| <= 128` unsigned.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_i8_i8(x: __m256i, y: __m256i) -> __m256i {
    dot_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}
