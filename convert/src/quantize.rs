//! Whole tensors to and from ggml types, rows in parallel (rayon: coarse work, DESIGN.md
//! decision 6), and the error of the round trip.

use llava_runtime::quant::{self, GgmlType, QuantError};
use rayon::prelude::*;

use crate::error::ConvertError;

/// Quantizes a tensor of rows of `row_len` elements to `ty`, rows in parallel.
pub(crate) fn quantize_tensor(
    name: &str,
    ty: GgmlType,
    data: &[f32],
    row_len: usize,
) -> Result<Vec<u8>, ConvertError> {
    if row_len == 0 || data.is_empty() {
        // A tensor with a zero dimension (legal in GGUF) has no bytes.
        return Ok(Vec::new());
    }
    let row_bytes = ty.row_bytes(row_len as u64).expect("planned whole blocks") as usize;
    let n_rows = data.len() / row_len;
    let mut bytes = vec![0u8; n_rows * row_bytes];
    // Rows of about 64 KiB of output per task; every block type's row is a multiple of its
    // alignment (2 bytes for f16 fields, 4 for f32), so each task's slice stays aligned when
    // the buffer is.
    let rows_per_task = (65536 / row_bytes.max(1)).max(1);
    let result: Result<(), QuantError> = bytes
        .par_chunks_mut(rows_per_task * row_bytes)
        .zip(data.par_chunks(rows_per_task * row_len))
        .try_for_each(|(dst, src)| quantize_aligned(ty, src, dst));
    result.map_err(|error| ConvertError::Quant {
        tensor: name.to_owned(),
        error,
    })?;
    Ok(bytes)
}

/// The f32 values of `n_elements` elements of type `ty` in rows of `row_len`, rows in parallel.
pub(crate) fn dequantize_tensor(
    ty: GgmlType,
    bytes: &[u8],
    row_len: usize,
    n_elements: usize,
) -> Result<Vec<f32>, QuantError> {
    let mut out = vec![0f32; n_elements];
    if row_len == 0 {
        return Ok(out);
    }
    let row_bytes = ty
        .row_bytes(row_len as u64)
        .ok_or(QuantError::PartialBlock {
            ty,
            n_elements: row_len,
            block_size: ty.block_size(),
        })? as usize;
    if bytes.len() != n_elements / row_len * row_bytes {
        return Err(QuantError::ByteLength {
            ty,
            n_elements,
            expected: n_elements / row_len * row_bytes,
            actual: bytes.len(),
        });
    }
    out.par_chunks_mut(row_len)
        .zip(bytes.par_chunks(row_bytes))
        .try_for_each(|(dst, src)| dequantize_aligned(ty, src, dst))?;
    Ok(out)
}

/// Root-mean-square difference between `source` and what `bytes` (its quantization to `ty`)
/// decode to.
pub(crate) fn rmse(
    name: &str,
    source: &[f32],
    ty: GgmlType,
    bytes: &[u8],
    row_len: usize,
) -> Result<f64, ConvertError> {
    let decoded = dequantize_tensor(ty, bytes, row_len, source.len()).map_err(|error| {
        ConvertError::Quant {
            tensor: name.to_owned(),
            error,
        }
    })?;
    let sum: f64 = source
        .par_iter()
        .zip(&decoded)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    Ok((sum / source.len().max(1) as f64).sqrt())
}

/// `quant::quantize_row` into `dst`, through an aligned scratch buffer when `dst` is not
/// aligned for the block structs (a `Vec<u8>` promises no alignment).
fn quantize_aligned(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    if (dst.as_ptr() as usize).is_multiple_of(4) {
        return quant::quantize_row(ty, src, dst);
    }
    let mut words = vec![0u32; dst.len().div_ceil(4)];
    let scratch = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..dst.len()];
    quant::quantize_row(ty, src, scratch)?;
    dst.copy_from_slice(scratch);
    Ok(())
}

/// `quant::dequantize_row`, through an aligned copy when `src` is not aligned for the block
/// structs (a `Vec<u8>`, or a GGUF file whose `general.alignment` is small).
fn dequantize_aligned(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    match quant::dequantize_row(ty, src, dst) {
        Err(QuantError::Misaligned { .. }) => {
            let mut words = vec![0u32; src.len().div_ceil(4)];
            let scratch = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..src.len()];
            scratch.copy_from_slice(src);
            quant::dequantize_row(ty, scratch, dst)
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmse_is_zero_for_exact_types_and_small_for_q8_0() {
        let data: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
            .collect();
        let f32_bytes = quantize_tensor("t", GgmlType::F32, &data, 256).unwrap();
        assert_eq!(
            rmse("t", &data, GgmlType::F32, &f32_bytes, 256).unwrap(),
            0.0
        );
        let q8 = quantize_tensor("t", GgmlType::Q8_0, &data, 256).unwrap();
        let e = rmse("t", &data, GgmlType::Q8_0, &q8, 256).unwrap();
        // Q8_0's step is max|x|/127 per block of 32; the error is at most half a step.
        assert!(e > 0.0 && e < 0.8 / 127.0 / 2.0, "{e}");
        assert_eq!(
            dequantize_tensor(GgmlType::F32, &f32_bytes, 256, 512).unwrap(),
            data
        );
    }
}
