//! ggml block formats: layouts, reference quantizers, dequantizers and dot products.
//!
//! One file per family. Each format is a `#[repr(C)]` block struct implementing [`BlockFormat`]
//! (and [`VecDot`] for weight formats), whose scalar code is the reference: byte-identical to
//! ggml's `quantize_row_*_reference` and `dequantize_row_*`. SIMD kernels live in `x86/` (AVX2)
//! and `arm/` (NEON) beside these and are tested against them (`tests/simd_kernels.rs`);
//! [`dispatch`] picks scalar or SIMD at run time (DESIGN.md, decision 5).
//!
//! The scalar code follows ggml's arithmetic operation by operation, in ggml's order, in f32,
//! with no fused multiply-adds: that is what makes the output bit-exact with ggml's C source
//! read as IEEE arithmetic (`tests/quant_ggml_parity.rs` holds it to ggml's own code, built
//! with `-ffp-contract=off`: see `.cargo/config.toml`).

/// The one table of the block formats the runtime computes with: each [`GgmlType`] with its
/// block struct, and whether it is a weight format (it has row kernels: `dispatch::row_kernels`)
/// or only an activation format (Q8_1, Q8_K: what activations are quantized to). Calls
/// `$m!($($pre)* ; VARIANT: Block = kind, ...)`, so each use expands the same list: adding a
/// type is one line here.
macro_rules! block_formats {
    ($m:ident ! ( $($pre:tt)* )) => {
        $m!($($pre)* ;
            F32: f32 = weight,
            F16: half::f16 = weight,
            BF16: half::bf16 = weight,
            Q4_0: $crate::quant::BlockQ4_0 = weight,
            Q4_1: $crate::quant::BlockQ4_1 = weight,
            Q5_0: $crate::quant::BlockQ5_0 = weight,
            Q5_1: $crate::quant::BlockQ5_1 = weight,
            Q8_0: $crate::quant::BlockQ8_0 = weight,
            Q8_1: $crate::quant::BlockQ8_1 = activation,
            Q2K: $crate::quant::BlockQ2K = weight,
            Q3K: $crate::quant::BlockQ3K = weight,
            Q4K: $crate::quant::BlockQ4K = weight,
            Q5K: $crate::quant::BlockQ5K = weight,
            Q6K: $crate::quant::BlockQ6K = weight,
            Q8K: $crate::quant::BlockQ8K = activation
        )
    };
}

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
mod arm;
/// 8 halves (their bits) widened to f32 with NEON's `fcvtl`: the backend's F16 widener uses it too.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub(crate) use arm::widen_f16x8;
mod cpu_path;
pub mod dispatch;
mod float;
mod ggml_type;
mod k_quants;
mod q4_0;
mod q4_1;
mod q5_0;
mod q5_1;
mod q8_0;
mod q8_1;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use dispatch::{
    act_block_sums, cpu_path, report_skipped_paths, row_kernels, set_cpu_path, ActBlockSum,
    CpuPath, InterleavedBlock, Interleaving, RowKernels, WideGemm, WideOut, DOT_ROWS, TILE_ROWS,
    WIDE_MAX_GROUPS, WIDE_TILE_ROWS,
};
pub use ggml_type::GgmlType;
pub use k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4Kx8, BlockQ5K, BlockQ6K, BlockQ6Kx8, BlockQ8K, QK_K,
};
pub use q4_0::{BlockQ4_0, BlockQ4_0x8, BlockQ4_0x8Arm};
pub use q4_1::BlockQ4_1;
pub use q5_0::BlockQ5_0;
pub use q5_1::BlockQ5_1;
pub use q8_0::{BlockQ8_0, BlockQ8_0x8};
pub use q8_1::BlockQ8_1;

/// A ggml block format: `BLOCK_SIZE` elements stored in one `Self`.
pub trait BlockFormat: bytemuck::Pod + Send + Sync + 'static {
    /// The ggml type this block stores.
    const TYPE: GgmlType;
    /// Elements per block: 32 for the legacy formats, [`QK_K`] (256) for the k-quants, 1 for the
    /// float types.
    const BLOCK_SIZE: usize = Self::TYPE.block_size();

    /// ggml's reference quantizer (no importance matrix). `src.len()` must equal
    /// `dst.len() * BLOCK_SIZE`.
    fn quantize_row(src: &[f32], dst: &mut [Self]);

    /// Expand blocks back to f32, bit-exact with ggml. `dst.len()` must equal
    /// `src.len() * BLOCK_SIZE`.
    fn dequantize_row(src: &[Self], dst: &mut [f32]);
}

/// A weight format and the activation format ggml pairs it with for matmul
/// (GGUF-AND-LLAVA.md §2.4): Q4_0·Q8_0, Q4_1·Q8_1, Q4_K·Q8_K, F16·F16, ...
pub trait VecDot: BlockFormat {
    /// The block format ggml quantizes activations to before a dot product with this weight format.
    type Activation: BlockFormat;

    /// Scalar reference dot product of one row of weights with one row of activations of the
    /// same length in elements.
    fn vec_dot(weights: &[Self], activations: &[Self::Activation]) -> f32;
}

/// Why a type-erased (byte-slice) quantization call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// `ty` has no quantization kernels in llava-edge (see [`is_supported`]).
    #[error("ggml type {0} is not supported by llava-edge's quantization kernels")]
    UnsupportedType(GgmlType),
    /// A row length that is not a multiple of the type's block size.
    #[error(
        "{ty}: a row of {n_elements} elements is not a whole number of {block_size}-element blocks"
    )]
    PartialBlock {
        /// The type.
        ty: GgmlType,
        /// Elements in the row.
        n_elements: usize,
        /// Elements per block of `ty`.
        block_size: usize,
    },
    /// The byte slice does not have the size the element count needs.
    #[error("{ty}: {n_elements} elements take {expected} bytes, but the byte slice has {actual}")]
    ByteLength {
        /// The type.
        ty: GgmlType,
        /// Elements the call was asked to convert.
        n_elements: usize,
        /// Bytes `n_elements` of `ty` take.
        expected: usize,
        /// Bytes the slice has.
        actual: usize,
    },
    /// The byte slice does not start at an address the block struct can be read from in place.
    #[error("{ty}: the byte slice is not aligned to the {align}-byte alignment of its blocks")]
    Misaligned {
        /// The type.
        ty: GgmlType,
        /// The alignment the block struct needs, in bytes.
        align: usize,
    },
}

/// Whether [`quantize_row`], [`dequantize_row`] and the typed [`BlockFormat`] impls cover `ty`.
pub fn is_supported(ty: GgmlType) -> bool {
    macro_rules! listed {
        ($t:expr ; $($v:ident : $b:ty = $kind:ident),*) => {
            matches!($t, $(GgmlType::$v)|*)
        };
    }
    block_formats!(listed!(ty))
}

/// The arms of [`dispatch_block_type`], one per row of [`block_formats`].
macro_rules! dispatch_arms {
    ($t:expr, $func:ident $args:tt ; $($v:ident : $b:ty = $kind:ident),*) => {
        match $t {
            $(GgmlType::$v => $func::<$b> $args,)*
            other => Err(QuantError::UnsupportedType(other)),
        }
    };
}

/// Dispatches a generic function over the block type of a supported [`GgmlType`], or returns
/// [`QuantError::UnsupportedType`].
macro_rules! dispatch_block_type {
    ($ty:expr, $func:ident ( $($arg:expr),* )) => {
        block_formats!(dispatch_arms!($ty, $func($($arg),*)))
    };
}

/// Expand the blocks of one row stored as raw bytes (e.g. a tensor row borrowed from a GGUF
/// mmap) into `dst`. The row length in elements is `dst.len()`.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    fn typed<B: BlockFormat>(src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
        let blocks = cast_blocks::<B>(src, dst.len())?;
        B::dequantize_row(blocks, dst);
        Ok(())
    }
    dispatch_block_type!(ty, typed(src, dst))
}

/// Quantize one row of `src.len()` elements into the raw bytes of `dst` with ggml's reference
/// quantizer for `ty`.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    fn typed<B: BlockFormat>(src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
        let blocks = cast_blocks_mut::<B>(dst, src.len())?;
        B::quantize_row(src, blocks);
        Ok(())
    }
    dispatch_block_type!(ty, typed(src, dst))
}

/// Checks that `n_elements` is whole blocks and `n_bytes` is exactly their size.
fn check_row_bytes<B: BlockFormat>(n_elements: usize, n_bytes: usize) -> Result<(), QuantError> {
    let ty = B::TYPE;
    if !n_elements.is_multiple_of(B::BLOCK_SIZE) {
        return Err(QuantError::PartialBlock {
            ty,
            n_elements,
            block_size: B::BLOCK_SIZE,
        });
    }
    let expected = (n_elements / B::BLOCK_SIZE) * std::mem::size_of::<B>();
    if n_bytes != expected {
        return Err(QuantError::ByteLength {
            ty,
            n_elements,
            expected,
            actual: n_bytes,
        });
    }
    Ok(())
}

fn cast_blocks<B: BlockFormat>(bytes: &[u8], n_elements: usize) -> Result<&[B], QuantError> {
    check_row_bytes::<B>(n_elements, bytes.len())?;
    bytemuck::try_cast_slice(bytes).map_err(|_| QuantError::Misaligned {
        ty: B::TYPE,
        align: std::mem::align_of::<B>(),
    })
}

fn cast_blocks_mut<B: BlockFormat>(
    bytes: &mut [u8],
    n_elements: usize,
) -> Result<&mut [B], QuantError> {
    check_row_bytes::<B>(n_elements, bytes.len())?;
    bytemuck::try_cast_slice_mut(bytes).map_err(|_| QuantError::Misaligned {
        ty: B::TYPE,
        align: std::mem::align_of::<B>(),
    })
}

/// The element of largest magnitude, sign kept; the first one wins ties and NaNs are skipped
/// (ggml's `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`). Zero for an all-zero slice.
fn signed_abs_max(xs: &[f32]) -> f32 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in xs {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// ggml's `MAX(amax, fabsf(v))` fold: unlike `f32::max`, a NaN element poisons the result, as
/// in ggml.
fn abs_max(xs: &[f32]) -> f32 {
    xs.iter()
        .fold(0f32, |amax, &v| if amax > v.abs() { amax } else { v.abs() })
}

/// ggml's `(int8_t)f` for the float-to-small-integer casts in the 32-element quantizers: gcc
/// truncates to a 32-bit int, then keeps the low byte.
#[inline]
fn trunc_to_i8(f: f32) -> i8 {
    f as i32 as i8
}

/// Length contract of [`BlockFormat::quantize_row`] / [`BlockFormat::dequantize_row`]: a
/// mismatch is a bug in the caller, not bad input, so it panics with both lengths.
#[track_caller]
fn assert_row_len<B: BlockFormat>(n_blocks: usize, n_elements: usize) {
    assert!(
        n_blocks.checked_mul(B::BLOCK_SIZE) == Some(n_elements),
        "{}: {n_blocks} blocks of {} elements do not match an f32 row of {n_elements}",
        B::TYPE,
        B::BLOCK_SIZE,
    );
}

/// Length contract of [`VecDot::vec_dot`]: both rows must cover the same number of elements.
#[track_caller]
fn assert_dot_len<W: VecDot>(weights: &[W], activations: &[W::Activation]) {
    let n_weights = weights.len() * W::BLOCK_SIZE;
    let n_activations = activations.len() * W::Activation::BLOCK_SIZE;
    assert!(
        n_weights == n_activations,
        "{}·{} dot: {n_weights} weight elements against {n_activations} activation elements",
        W::TYPE,
        W::Activation::TYPE,
    );
}

/// A deterministic byte stream for the kernels' unit tests: an LCG's high bytes.
#[cfg(test)]
pub(crate) fn test_bytes(seed: u32, n: usize) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use bytemuck::Zeroable;

    use super::*;

    #[test]
    fn every_supported_type_round_trips_through_the_byte_api() {
        for ty in GgmlType::ALL.into_iter().filter(|&t| is_supported(t)) {
            let n = ty.block_size() * 2;
            let src: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let n_bytes = ty.row_bytes(n as u64).unwrap() as usize;
            // u32 backing so every block type's alignment is met.
            let mut words = vec![0u32; n_bytes.div_ceil(4)];
            let bytes = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..n_bytes];
            quantize_row(ty, &src, bytes).unwrap();
            let mut back = vec![0f32; n];
            dequantize_row(ty, bytes, &mut back).unwrap();
            // Plumbing only (accuracy is tests/quant_ggml_parity.rs's job): even Q2_K's four
            // levels across [-1, 1] land within half a step, 1/3.
            for (a, b) in src.iter().zip(&back) {
                assert!((a - b).abs() < 0.4, "{ty}: {a} came back as {b}");
            }
        }
    }

    #[test]
    fn is_supported_agrees_with_the_byte_api() {
        for ty in GgmlType::ALL {
            let unsupported = Err(QuantError::UnsupportedType(ty));
            assert_eq!(
                dequantize_row(ty, &[], &mut []) != unsupported,
                is_supported(ty),
                "{ty}"
            );
            assert_eq!(
                quantize_row(ty, &[], &mut []) != unsupported,
                is_supported(ty),
                "{ty}"
            );
        }
    }

    #[test]
    fn byte_api_reports_bad_input_instead_of_panicking() {
        let mut out = vec![0f32; 32];
        assert_eq!(
            dequantize_row(GgmlType::Iq2Xxs, &[0; 66], &mut out),
            Err(QuantError::UnsupportedType(GgmlType::Iq2Xxs))
        );
        assert!(matches!(
            dequantize_row(GgmlType::Q4_0, &[0; 18], &mut out[..31]),
            Err(QuantError::PartialBlock { .. })
        ));
        assert_eq!(
            dequantize_row(GgmlType::Q4_0, &[0; 17], &mut out),
            Err(QuantError::ByteLength {
                ty: GgmlType::Q4_0,
                n_elements: 32,
                expected: 18,
                actual: 17
            })
        );
        let words = [0u32; 74];
        let bytes = bytemuck::cast_slice::<u32, u8>(&words);
        let mut out = vec![0f32; 256];
        assert_eq!(
            dequantize_row(GgmlType::Q8K, &bytes[1..293], &mut out),
            Err(QuantError::Misaligned {
                ty: GgmlType::Q8K,
                align: 4
            })
        );
        let mut dst = vec![0u8; 10];
        assert!(matches!(
            quantize_row(GgmlType::Q4K, &[0.0; 256], &mut dst),
            Err(QuantError::ByteLength { .. })
        ));
    }

    #[test]
    #[should_panic(expected = "q4_0: 2 blocks of 32 elements do not match an f32 row of 32")]
    fn typed_api_panics_on_length_mismatch() {
        let mut blocks = [BlockQ4_0::zeroed(); 2];
        BlockQ4_0::quantize_row(&[0.0; 32], &mut blocks);
    }
}
