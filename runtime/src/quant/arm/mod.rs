//! NEON kernels for 64-bit ARM: dot products of the weight formats with their activation
//! formats, and the activation quantizers, at two levels:
//! - plain NEON (ARMv8.0, every aarch64 CPU: Cortex-A53, A72, Raspberry Pi 3 and 4), whose
//!   integer dots widen i8 products to i16 (`smull`/`smlal`) and pair them into i32 (`sadalp`);
//! - NEON with the dot-product extension (ARMv8.2 `dotprod`: Cortex-A55, A76 and later,
//!   Graviton 2+, Apple M1+), where one `sdot` does all of that for 16 bytes.
//!
//! NEON is part of every aarch64 Linux target: the module is compiled only where
//! `target_feature = "neon"` is on for the whole build. Its functions still carry
//! `#[target_feature(enable = "neon")]`, as the x86 ones carry theirs, because Rust lets an
//! intrinsic be called without `unsafe` only from a function that lists the feature; calling
//! them from outside is then `unsafe` in form only. `dotprod` is different: it is detected at
//! run time and enabled only on the functions that use it, never for the whole build, since
//! LLVM would then be free to emit `sdot` anywhere, scalar code included, and that code would
//! die with SIGILL on a Cortex-A53. Stable Rust has no `sdot` intrinsic; [`sdot`] issues the
//! instruction with inline assembly. The integer kernels are written once, generic over
//! [`I8Dot`], and instantiated for both levels. The `sdot` level also has kernels for the
//! interleaved weight layouts (`interleaved.rs`: 8 rows' runs side by side, multiplied with
//! `sdot` by element), which take the place of the row dots in decode and in batches.
//!
//! As on x86 (`x86/mod.rs`), the only way in from outside is a [`Neon`] value, which hands out
//! safe function pointers; the one that leads to the `sdot` kernels exists only once the CPU
//! has reported `dotprod`.
//!
//! The scalar code beside each format is the reference: the quantizers here write identical
//! bytes, and the dots compute the same exact integer block sums and differ only in the order
//! in which the float terms are added (`tests/simd_kernels.rs` holds them to that).
//!
//! One invariant the integer arithmetic relies on: activation quants are in -127..=127, which
//! every Q8 quantizer guarantees (ggml's too). It keeps the i16 sum of two i8 products in
//! [`Widening::dot`] from overflowing.

use std::arch::aarch64::*;
use std::arch::asm;
use std::sync::OnceLock;

use bytemuck::{cast_slice, cast_slice_mut};
use half::f16;

use super::dispatch::{
    interleaving, ActBlockSum, DotFn, Interleaving, QuantizeFn, WideGemm, WideOut, DOT_ROWS,
    TILE_ROWS, WIDE_TILE_ROWS,
};
use super::k_quants::{pack_q8_k_tile, TileQ8K};
use super::{
    BlockQ4K, BlockQ4Kx8, BlockQ4_0, BlockQ4_0x8Arm, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1,
    BlockQ6K, BlockQ6Kx8, BlockQ8K, BlockQ8_0, BlockQ8_0x8, BlockQ8_1, GgmlType,
};

mod activations;
mod float;
pub(crate) use float::widen_f16x8;
mod interleaved;
mod k_quants;
mod legacy;

/// Proof that the running CPU has NEON, and whether it has `sdot`; the only source of this
/// module's kernels.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Neon {
    /// The CPU has reported `dotprod`: the integer dots may use `sdot`.
    dotprod: bool,
    /// The CPU has reported `i8mm` (and `dotprod`): batches may use `smmla`.
    i8mm: bool,
}

impl Neon {
    /// The plain NEON kernels: every CPU this module is compiled for has them.
    pub(crate) fn detect() -> Option<Neon> {
        Some(Neon {
            dotprod: false,
            i8mm: false,
        })
    }

    /// The kernels that use `sdot`, if the CPU has the dot-product extension (asked once per
    /// process).
    pub(crate) fn detect_dotprod() -> Option<Neon> {
        static DETECTED: OnceLock<(bool, bool)> = OnceLock::new();
        let (dotprod, i8mm) = *DETECTED.get_or_init(|| {
            let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
            (
                dotprod,
                dotprod && std::arch::is_aarch64_feature_detected!("i8mm"),
            )
        });
        dotprod.then_some(Neon {
            dotprod: true,
            i8mm,
        })
    }

    /// The dot product of weights of type `ty` with their activation format, if there is a
    /// NEON one.
    pub(crate) fn dot(self, ty: GgmlType) -> Option<DotFn> {
        use GgmlType::*;
        let dots = if self.dotprod { &SDOT } else { &WIDENING };
        Some(match ty {
            F16 => dot_f16,
            Q4_0 => dots.q4_0,
            Q4_1 => dots.q4_1,
            Q5_0 => dots.q5_0,
            Q5_1 => dots.q5_1,
            Q8_0 => dots.q8_0,
            Q4K => dots.q4_k,
            Q5K => dots.q5_k,
            Q6K => dots.q6_k,
            _ => return None,
        })
    }

    /// How this path multiplies interleaved weights of type `ty` (`interleaved.rs`), if it has
    /// kernels for them: only the `sdot` level, whose by-element form the layouts are for.
    pub(crate) fn interleaved(self, ty: GgmlType) -> Option<Interleaving> {
        if !self.dotprod {
            return None;
        }
        Some(match ty {
            GgmlType::Q4_0 => Interleaving {
                dot: dot_q4_0x8,
                gemm: gemm_q4_0x8,
                wide: Some(if self.i8mm {
                    mmla_q8_0(gemm_q4_0x8_mmla)
                } else {
                    wide_q8_0(gemm_q4_0x8_wide)
                }),
                ..interleaving::<BlockQ4_0x8Arm>()
            },
            GgmlType::Q8_0 => Interleaving {
                dot: dot_q8_0x8,
                gemm: gemm_q8_0x8,
                wide: Some(if self.i8mm {
                    mmla_q8_0(gemm_q8_0x8_mmla)
                } else {
                    wide_q8_0(gemm_q8_0x8_wide)
                }),
                ..interleaving::<BlockQ8_0x8>()
            },
            GgmlType::Q4K => Interleaving {
                dot: dot_q4_kx8,
                gemm: gemm_q4_kx8,
                wide: Some(if self.i8mm {
                    mmla_q8_k(gemm_q4_kx8_mmla)
                } else {
                    wide_q8_k(gemm_q4_kx8_wide)
                }),
                ..interleaving::<BlockQ4Kx8>()
            },
            GgmlType::Q6K => Interleaving {
                dot: dot_q6_kx8,
                gemm: gemm_q6_kx8,
                wide: Some(if self.i8mm {
                    mmla_q8_k(gemm_q6_kx8_mmla)
                } else {
                    wide_q8_k(gemm_q6_kx8_wide)
                }),
                ..interleaving::<BlockQ6Kx8>()
            },
            _ => return None,
        })
    }

    /// The quantizer for activations of type `ty`, if there is a NEON one (the same at both
    /// levels: `sdot` does not help there).
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

/// The integer dots of one level.
struct IntegerDots {
    q4_0: DotFn,
    q4_1: DotFn,
    q5_0: DotFn,
    q5_1: DotFn,
    q8_0: DotFn,
    q4_k: DotFn,
    q5_k: DotFn,
    q6_k: DotFn,
}

/// Safe byte-level wrappers around a generic integer kernel, one per level.
macro_rules! safe_dots {
    ($widening:ident, $sdot:ident, $kernel:path, $weight:ty, $act:ty) => {
        fn $widening(w: &[u8], a: &[u8]) -> f32 {
            let (w, a): (&[$weight], &[$act]) = (cast_slice(w), cast_slice(a));
            // SAFETY: the kernel needs NEON only, which this whole build has (see above).
            unsafe { $kernel(Widening, w, a) }
        }

        fn $sdot(w: &[u8], a: &[u8]) -> f32 {
            // The kernel is inlined into this function (its only caller), and `sdot` into
            // the kernel there.
            #[target_feature(enable = "neon,dotprod")]
            fn with_dotprod(w: &[$weight], a: &[$act]) -> f32 {
                $kernel(Sdot { _detected: () }, w, a)
            }
            // SAFETY: this function is reachable only through `Neon::dot` on a `Neon` made by
            // `detect_dotprod`, i.e. once the CPU has reported `dotprod`.
            unsafe { with_dotprod(cast_slice(w), cast_slice(a)) }
        }
    };
}

safe_dots!(q4_0_w, q4_0_s, legacy::dot_q4_0_q8_0, BlockQ4_0, BlockQ8_0);
safe_dots!(q4_1_w, q4_1_s, legacy::dot_q4_1_q8_1, BlockQ4_1, BlockQ8_1);
safe_dots!(q5_0_w, q5_0_s, legacy::dot_q5_0_q8_0, BlockQ5_0, BlockQ8_0);
safe_dots!(q5_1_w, q5_1_s, legacy::dot_q5_1_q8_1, BlockQ5_1, BlockQ8_1);
safe_dots!(q8_0_w, q8_0_s, legacy::dot_q8_0_q8_0, BlockQ8_0, BlockQ8_0);
safe_dots!(q4_k_w, q4_k_s, k_quants::dot_q4_k_q8_k, BlockQ4K, BlockQ8K);
safe_dots!(q5_k_w, q5_k_s, k_quants::dot_q5_k_q8_k, BlockQ5K, BlockQ8K);
safe_dots!(q6_k_w, q6_k_s, k_quants::dot_q6_k_q8_k, BlockQ6K, BlockQ8K);

static WIDENING: IntegerDots = IntegerDots {
    q4_0: q4_0_w,
    q4_1: q4_1_w,
    q5_0: q5_0_w,
    q5_1: q5_1_w,
    q8_0: q8_0_w,
    q4_k: q4_k_w,
    q5_k: q5_k_w,
    q6_k: q6_k_w,
};

static SDOT: IntegerDots = IntegerDots {
    q4_0: q4_0_s,
    q4_1: q4_1_s,
    q5_0: q5_0_s,
    q5_1: q5_1_s,
    q8_0: q8_0_s,
    q4_k: q4_k_s,
    q5_k: q5_k_s,
    q6_k: q6_k_s,
};

/// Safe byte-level wrappers around the `sdot` kernels of interleaved weights: the group's
/// dot with one activation row, and its batch kernel.
macro_rules! safe_interleaved {
    ($dot:ident, $gemm:ident, $block:ty, $act:ty) => {
        fn $dot(w: &[u8], a: &[u8]) -> [f32; DOT_ROWS] {
            // SAFETY: reachable only through `Neon::interleaved` on a `Neon` made by
            // `detect_dotprod`: the CPU has reported `dotprod`.
            unsafe { interleaved::$dot(cast_slice::<u8, $block>(w), cast_slice::<u8, $act>(a)) }
        }

        fn $gemm(
            w: &[u8],
            a: [&[u8]; TILE_ROWS],
            sums: [&[ActBlockSum]; TILE_ROWS],
        ) -> [[f32; DOT_ROWS]; TILE_ROWS] {
            // SAFETY: as for the dot above.
            unsafe {
                interleaved::$gemm(
                    cast_slice::<u8, $block>(w),
                    a.map(cast_slice::<u8, $act>),
                    sums,
                )
            }
        }
    };
}

/// A wide kernel of Q8_0 activations, with their packing.
fn wide_q8_0(gemm: fn(&[u8], &[u8], &mut WideOut)) -> WideGemm {
    WideGemm {
        packed_bytes: |blocks| blocks * std::mem::size_of::<interleaved::TileQ8_0>(),
        pack: |a, dst| interleaved::pack_q8_0_tile(a.map(cast_slice), cast_slice_mut(dst)),
        groups: 1,
        gemm,
    }
}

/// An `smmla` wide kernel of Q8_0 activations, with their packing in pairs of rows.
fn mmla_q8_0(gemm: fn(&[u8], &[u8], &mut WideOut)) -> WideGemm {
    WideGemm {
        packed_bytes: |blocks| blocks * std::mem::size_of::<interleaved::TileQ8_0Pairs>(),
        pack: |a, dst| interleaved::pack_q8_0_pairs(a.map(cast_slice), cast_slice_mut(dst)),
        groups: 1,
        gemm,
    }
}

/// A wide kernel of Q8_K activations, with their packing.
fn wide_q8_k(gemm: fn(&[u8], &[u8], &mut WideOut)) -> WideGemm {
    WideGemm {
        packed_bytes: |blocks| blocks * std::mem::size_of::<TileQ8K>(),
        pack: |a, dst| pack_q8_k_tile(a.map(cast_slice), cast_slice_mut(dst)),
        groups: 1,
        gemm,
    }
}

/// An `smmla` wide kernel of Q8_K activations, with their packing in pairs of rows.
fn mmla_q8_k(gemm: fn(&[u8], &[u8], &mut WideOut)) -> WideGemm {
    WideGemm {
        packed_bytes: |blocks| blocks * std::mem::size_of::<interleaved::TileQ8KPairs>(),
        pack: |a, dst| interleaved::pack_q8_k_pairs(a.map(cast_slice), cast_slice_mut(dst)),
        groups: 1,
        gemm,
    }
}

/// A one-group wide kernel's dots into the first group's columns of `out`.
fn copy_wide(sums: &[[f32; DOT_ROWS]; WIDE_TILE_ROWS], out: &mut WideOut) {
    for (out, sums) in out.iter_mut().zip(sums) {
        out[..DOT_ROWS].copy_from_slice(sums);
    }
}

/// Safe byte-level wrappers around the wide `sdot` kernels: a group against a packed tile.
macro_rules! safe_wide {
    ($gemm:ident, $block:ty) => {
        fn $gemm(w: &[u8], a: &[u8], out: &mut WideOut) {
            // SAFETY: reachable only through `Neon::interleaved`, as the kernels above.
            let sums = unsafe { interleaved::$gemm(cast_slice::<u8, $block>(w), cast_slice(a)) };
            copy_wide(&sums, out);
        }
    };
}

safe_wide!(gemm_q4_0x8_wide, BlockQ4_0x8Arm);
safe_wide!(gemm_q8_0x8_wide, BlockQ8_0x8);
safe_wide!(gemm_q4_kx8_wide, BlockQ4Kx8);
safe_wide!(gemm_q6_kx8_wide, BlockQ6Kx8);

/// Safe byte-level wrappers around the `smmla` kernels: a group against a tile packed in pairs.
macro_rules! safe_mmla {
    ($gemm:ident, $block:ty) => {
        fn $gemm(w: &[u8], a: &[u8], out: &mut WideOut) {
            // SAFETY: reachable only through `Neon::interleaved` on a `Neon` whose `i8mm` is
            // set, i.e. once the CPU has reported `i8mm`.
            let sums = unsafe { interleaved::$gemm(cast_slice::<u8, $block>(w), cast_slice(a)) };
            copy_wide(&sums, out);
        }
    };
}

safe_mmla!(gemm_q4_0x8_mmla, BlockQ4_0x8Arm);
safe_mmla!(gemm_q8_0x8_mmla, BlockQ8_0x8);
safe_mmla!(gemm_q4_kx8_mmla, BlockQ4Kx8);
safe_mmla!(gemm_q6_kx8_mmla, BlockQ6Kx8);

safe_interleaved!(dot_q4_0x8, gemm_q4_0x8, BlockQ4_0x8Arm, BlockQ8_0);
safe_interleaved!(dot_q8_0x8, gemm_q8_0x8, BlockQ8_0x8, BlockQ8_0);
safe_interleaved!(dot_q4_kx8, gemm_q4_kx8, BlockQ4Kx8, BlockQ8K);
safe_interleaved!(dot_q6_kx8, gemm_q6_kx8, BlockQ6Kx8, BlockQ8K);

// SAFETY (the five wrappers below): the kernels need NEON only, which this whole build has.

fn dot_f16(w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: see above.
    unsafe { float::dot_f16(cast_slice(w), cast_slice(a)) }
}

fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    // SAFETY: see above.
    unsafe { float::quantize_row_f16(src, cast_slice_mut(dst)) }
}

fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    // SAFETY: see above.
    unsafe { activations::quantize_row_q8_0(src, cast_slice_mut(dst)) }
}

fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    // SAFETY: see above.
    unsafe { activations::quantize_row_q8_1(src, cast_slice_mut(dst)) }
}

fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    // SAFETY: see above.
    unsafe { activations::quantize_row_q8_k(src, cast_slice_mut(dst)) }
}

/// The 16-byte signed dot product the integer kernels are built on.
pub(super) trait I8Dot: Copy {
    /// `acc` plus `Σ a[i]·b[i]` over the 16 lanes, spread over the four i32 lanes (which
    /// lane gets which products is the implementation's choice: callers only ever add the
    /// lanes up, or scale all of them alike). `b` must be activation quants, in -127..=127.
    fn dot(self, acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

/// Plain NEON: `smull` + `smlal2` add products `i` and `i + 8` in i16 (at most `2·128·127`
/// in magnitude: no overflow), `sadalp` pairs those into the i32 lanes.
#[derive(Clone, Copy)]
pub(super) struct Widening;

impl I8Dot for Widening {
    #[inline(always)]
    fn dot(self, acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: NEON only, which this whole build has (a trait method cannot carry
        // `#[target_feature]` itself).
        unsafe { widening_dot(acc, a, b) }
    }
}

#[target_feature(enable = "neon")]
#[inline]
fn widening_dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let products = vmlal_high_s8(vmull_s8(vget_low_s8(a), vget_low_s8(b)), a, b);
    vpadalq_s16(acc, products)
}

/// ARMv8.2 `sdot`: lane `i` of `acc` gets `Σ a[4i + k]·b[4i + k]` for `k` in 0..4, exactly.
/// Only `safe_dots!`'s dotprod functions make one.
#[derive(Clone, Copy)]
pub(super) struct Sdot {
    _detected: (),
}

impl I8Dot for Sdot {
    #[inline(always)]
    fn dot(self, acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: an `Sdot` exists only inside the dotprod functions of `safe_dots!`, which
        // run only on CPUs that reported `dotprod`.
        unsafe { sdot(acc, a, b) }
    }
}

/// The instruction itself. A function of its own with the feature on, so that the
/// assembler accepts `sdot` wherever the kernels' closures end up: an optimized build
/// inlines it into the `dotprod` functions of `safe_dots!` (the kernels, closures included,
/// inline there first), an unoptimized one calls it.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: the instruction reads and writes these three registers and nothing else; the
    // CPU has it, as this function's `target_feature` requires of its callers.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

// Helpers shared by the kernels.

/// 16 bytes as one register.
#[target_feature(enable = "neon")]
#[inline]
fn load_u8x16(bytes: &[u8; 16]) -> uint8x16_t {
    // SAFETY: the array is 16 bytes long; `ld1` has no alignment requirement.
    unsafe { vld1q_u8(bytes.as_ptr()) }
}

/// 16 signed bytes as one register.
#[target_feature(enable = "neon")]
#[inline]
fn load_i8x16(bytes: &[i8; 16]) -> int8x16_t {
    // SAFETY: the array is 16 bytes long; `ld1` has no alignment requirement.
    unsafe { vld1q_s8(bytes.as_ptr()) }
}

/// `fcvt` (ARMv8.0 scalar FP): exact, as every f16 is an f32. `half`'s own conversion asks
/// the CPU about `fp16` first; this one needs no such check.
#[inline(always)]
fn f16_to_f32(h: f16) -> f32 {
    let out: f32;
    // SAFETY: `fcvt` between half and single precision is in the aarch64 base FP set, which
    // every target this module is built for has; it touches only these two registers.
    unsafe {
        asm!(
            "fcvt {out:s}, {h:h}",
            h = in(vreg) h.to_bits(),
            out = lateout(vreg) out,
            options(pure, nomem, nostack),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fcvt_widens_every_f16_as_half_does() {
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            let (got, want) = (f16_to_f32(h), h.to_f32());
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{bits:#06x}: {got:e}, half {want:e}"
            );
        }
    }

    #[test]
    fn widening_and_sdot_sum_the_same_products() {
        // The extremes: -128 in the weights, ±127 in the activations.
        let a: [i8; 16] =
            std::array::from_fn(|i| (i as u8).wrapping_mul(75).wrapping_add(128) as i8);
        let b: [i8; 16] = std::array::from_fn(|i| if i % 3 == 0 { -127 } else { 127 - i as i8 });
        let want: i32 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| i32::from(x) * i32::from(y))
            .sum();

        fn total(dot: impl I8Dot, a: &[i8; 16], b: &[i8; 16]) -> i32 {
            #[target_feature(enable = "neon")]
            fn on_neon(dot: impl I8Dot, a: &[i8; 16], b: &[i8; 16]) -> i32 {
                vaddvq_s32(dot.dot(vdupq_n_s32(5), load_i8x16(a), load_i8x16(b))) - 20
            }
            // SAFETY: NEON only, which this whole build has.
            unsafe { on_neon(dot, a, b) }
        }
        crate::quant::report_skipped_paths("widening_and_sdot_sum_the_same_products");
        assert_eq!(total(Widening, &a, &b), want);
        if Neon::detect_dotprod().is_some() {
            assert_eq!(total(Sdot { _detected: () }, &a, &b), want);
        }
    }
}
