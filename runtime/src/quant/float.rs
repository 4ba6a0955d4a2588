//! The unquantized types, F32, F16 and BF16, as one-element "blocks".
//!
//! The element types themselves (`f32`, `half::f16`, `half::bf16`) are the block structs: their
//! bytes are exactly ggml's `float`, `ggml_fp16_t` and `ggml_bf16_t`.
//!
//! The dot products follow ggml's scalar `ggml_vec_dot_f32/f16/bf16`: each product is rounded to
//! f32, then summed in `ggml_float` (f64), and the sum rounded to f32 once at the end.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use super::{assert_dot_len, assert_row_len, BlockFormat, GgmlType, VecDot};

const _: () = assert!(std::mem::size_of::<f32>() == GgmlType::F32.type_size());
const _: () = assert!(std::mem::size_of::<f16>() == GgmlType::F16.type_size());
const _: () = assert!(std::mem::size_of::<bf16>() == GgmlType::BF16.type_size());

impl BlockFormat for f32 {
    const TYPE: GgmlType = GgmlType::F32;

    fn quantize_row(src: &[f32], dst: &mut [f32]) {
        assert_row_len::<f32>(dst.len(), src.len());
        dst.copy_from_slice(src);
    }

    fn dequantize_row(src: &[f32], dst: &mut [f32]) {
        assert_row_len::<f32>(src.len(), dst.len());
        dst.copy_from_slice(src);
    }
}

impl VecDot for f32 {
    type Activation = f32;

    fn vec_dot(weights: &[f32], activations: &[f32]) -> f32 {
        assert_dot_len(weights, activations);
        dot_f64_sum(weights.iter().zip(activations).map(|(&w, &a)| w * a))
    }
}

// F16 <-> F32 conversion is IEEE round-to-nearest-even with NaNs kept as (quiet) NaNs, which is
// what ggml's GGML_FP32_TO_FP16 (F16C `vcvtps2ph` or its software twin) and its f16 -> f32 table
// compute; `half` implements the same conversions (checked over every f16 value in
// tests/quant_ggml_parity.rs).
impl BlockFormat for f16 {
    const TYPE: GgmlType = GgmlType::F16;

    fn quantize_row(src: &[f32], dst: &mut [f16]) {
        assert_row_len::<f16>(dst.len(), src.len());
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = f16::from_f32(s);
        }
    }

    fn dequantize_row(src: &[f16], dst: &mut [f32]) {
        assert_row_len::<f16>(src.len(), dst.len());
        // Exact whichever way it is done; `half` uses F16C eight at a time where the CPU has
        // it (widening F16 weights for batched matmuls spent 7% of the CLIP tower here, one
        // value at a time).
        src.convert_to_f32_slice(dst);
    }
}

impl VecDot for f16 {
    type Activation = f16;

    fn vec_dot(weights: &[f16], activations: &[f16]) -> f32 {
        assert_dot_len(weights, activations);
        dot_f64_sum(
            weights
                .iter()
                .zip(activations)
                .map(|(&w, &a)| w.to_f32() * a.to_f32()),
        )
    }
}

impl BlockFormat for bf16 {
    const TYPE: GgmlType = GgmlType::BF16;

    fn quantize_row(src: &[f32], dst: &mut [bf16]) {
        assert_row_len::<bf16>(dst.len(), src.len());
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = f32_to_bf16(s);
        }
    }

    fn dequantize_row(src: &[bf16], dst: &mut [f32]) {
        assert_row_len::<bf16>(src.len(), dst.len());
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = bf16_to_f32(s);
        }
    }
}

impl VecDot for bf16 {
    type Activation = bf16;

    fn vec_dot(weights: &[bf16], activations: &[bf16]) -> f32 {
        assert_dot_len(weights, activations);
        dot_f64_sum(
            weights
                .iter()
                .zip(activations)
                .map(|(&w, &a)| bf16_to_f32(w) * bf16_to_f32(a)),
        )
    }
}

/// ggml's `ggml_compute_fp32_to_bf16` (added to ggml after b2757, in the form current ggml
/// keeps): round to nearest even by adding `0x7fff` plus the lowest kept bit, and force NaNs
/// quiet by setting the top mantissa bit of the kept half. Subnormals are rounded, not flushed
/// (the first version of ggml's bf16 code flushed them; current ggml and `half` do not).
#[inline]
pub(crate) fn f32_to_bf16(value: f32) -> bf16 {
    let bits = value.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return bf16::from_bits(((bits >> 16) | 0x0040) as u16);
    }
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    bf16::from_bits((rounded >> 16) as u16)
}

/// ggml's `ggml_compute_bf16_to_fp32`: the 16 bits become the top half of an f32. Unlike
/// `half::bf16::to_f32`, a signalling NaN stays signalling, as in ggml.
#[inline]
pub(crate) fn bf16_to_f32(value: bf16) -> f32 {
    f32::from_bits(u32::from(value.to_bits()) << 16)
}

/// `ggml_float` (f64) accumulation of f32 products, rounded to f32 at the end.
#[inline]
fn dot_f64_sum(products: impl Iterator<Item = f32>) -> f32 {
    products.fold(0f64, |sum, p| sum + f64::from(p)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8)).to_bits(), 0x3f80);
        // 1 + 3·2^-8 is halfway too; the even neighbour is above.
        assert_eq!(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8)).to_bits(), 0x3f82);
        assert_eq!(f32_to_bf16(f32::MAX).to_bits(), 0x7f80, "rounds up to +inf");
        assert_eq!(f32_to_bf16(f32::from_bits(1)).to_bits(), 0x0000);
        assert_eq!(f32_to_bf16(f32::from_bits(0x0000_8001)).to_bits(), 0x0001);
    }

    #[test]
    fn bf16_nans_are_quieted_on_the_way_in_and_kept_on_the_way_out() {
        let signalling = f32::from_bits(0x7f80_0001);
        assert_eq!(f32_to_bf16(signalling).to_bits(), 0x7fc0);
        assert_eq!(bf16_to_f32(bf16::from_bits(0x7f81)).to_bits(), 0x7f81_0000);
    }

    #[test]
    fn f32_dot_sums_in_double() {
        // In f32, 1e8 + 1 - 1e8 loses the 1; ggml's f64 accumulator keeps it.
        assert_eq!(f32::vec_dot(&[1e8, 1.0, -1e8], &[1.0, 1.0, 1.0]), 1.0);
    }
}
