//! An existing GGUF file → the same model with another preset's tensor types: `llava quantize`.
//!
//! Every metadata key is kept, in order, except `general.file_type`, which becomes the preset's.
//! Tensor types come from the same rules as a conversion (`Preset::tensor_type` for an LLM,
//! `vision_tensor_type` for an mmproj), so requantizing an F32 file gives the bytes a direct
//! conversion would. One tensor is dequantized to f32 at a time.

use std::path::Path;

use llava_runtime::gguf::{
    GgufFile, GgufWriter, MetaValue, Tensor, KEY_ARCHITECTURE, KEY_FILE_TYPE,
};
use llava_runtime::quant::{self, GgmlType};
use rayon::prelude::*;

use crate::clip::vision_tensor_type;
use crate::error::ConvertError;
use crate::llama::quantize_tensor;
use crate::mix::Preset;
use crate::ConvertSummary;

/// The LLM's layer count, which the Q4_K_M/Q5_K_M mix needs.
const KEY_LLAMA_BLOCK_COUNT: &str = "llama.block_count";

/// Which per-tensor rules apply.
enum Rules {
    Llm { n_layers: usize },
    Vision,
}

/// Writes `input` requantized with `preset` to `out`. `out` must not be `input`: the file is
/// read while the new one is written.
pub fn requantize(
    input: &Path,
    out: &Path,
    preset: Preset,
) -> Result<ConvertSummary, ConvertError> {
    let src = GgufFile::open(input)?;
    let same_file = out
        .canonicalize()
        .is_ok_and(|o| input.canonicalize().is_ok_and(|i| i == o));
    if same_file {
        return Err(ConvertError::Input {
            path: out.to_owned(),
            reason: "is the input file; write the requantized model to another path".into(),
        });
    }
    let rules = match src.get_str(KEY_ARCHITECTURE)? {
        "llama" => Rules::Llm {
            n_layers: src.get_u32(KEY_LLAMA_BLOCK_COUNT)? as usize,
        },
        "clip" => Rules::Vision,
        other => {
            return Err(ConvertError::Config {
                path: input.to_owned(),
                key: KEY_ARCHITECTURE.to_owned(),
                reason: format!("\"{other}\" is not supported (llama, clip)"),
            })
        }
    };

    let mut w = GgufWriter::new();
    let mut has_file_type = false;
    for (k, v) in src.metadata() {
        if k == KEY_FILE_TYPE {
            w.add(k, MetaValue::U32(preset.file_type()))?;
            has_file_type = true;
        } else {
            w.add(k, v.to_owned_value())?;
        }
    }
    if !has_file_type {
        w.add(KEY_FILE_TYPE, MetaValue::U32(preset.file_type()))?;
    }

    let tensors: Vec<Tensor<'_>> = src.tensors().collect();
    // Check every source type before writing anything: a refusal costs no time.
    for t in &tensors {
        if !quant::is_supported(t.ggml_type()) {
            return Err(ConvertError::Input {
                path: input.to_owned(),
                reason: format!(
                    "tensor \"{}\" is of type {}, which llava-edge cannot dequantize",
                    t.name(),
                    t.ggml_type()
                ),
            });
        }
        let ty = match rules {
            Rules::Llm { n_layers } => preset.tensor_type(t.name(), t.shape(), n_layers),
            Rules::Vision => vision_tensor_type(preset, t.name(), t.shape()),
        };
        w.add_tensor(t.name(), ty, t.shape())?;
    }

    let mut summary = ConvertSummary {
        tensors: tensors.len(),
        parameters: 0,
        bytes: 0,
    };
    w.write(out, |i, decl, sink| -> Result<(), ConvertError> {
        let t = &tensors[i];
        let row_len = decl.shape.first().copied().unwrap_or(1) as usize;
        // The same type: the bytes as they are (requantizing Q4_K to Q4_K would only lose).
        let converted;
        let bytes = if t.ggml_type() == decl.ty {
            t.data
        } else {
            let data = dequantize_tensor(input, t, row_len)?;
            converted = quantize_tensor(&decl.name, decl.ty, &data, row_len)?;
            &converted[..]
        };
        summary.parameters += decl.n_elements();
        summary.bytes += bytes.len() as u64;
        sink.write_all(bytes).map_err(|error| ConvertError::Io {
            path: out.to_owned(),
            error,
        })
    })?;
    Ok(summary)
}

/// A tensor of any supported type as f32, rows in parallel.
fn dequantize_tensor(
    path: &Path,
    t: &Tensor<'_>,
    row_len: usize,
) -> Result<Vec<f32>, ConvertError> {
    let ty = t.ggml_type();
    let row_bytes = ty
        .row_bytes(row_len as u64)
        .expect("the reader checked whole blocks") as usize;
    let mut out = vec![0f32; t.n_elements() as usize];
    if row_len == 0 {
        return Ok(out);
    }
    let result: Result<(), quant::QuantError> = out
        .par_chunks_mut(row_len)
        .zip(t.data.par_chunks(row_bytes))
        .try_for_each(|(dst, src)| dequantize_aligned(ty, src, dst));
    result.map_err(|error| ConvertError::Input {
        path: path.to_owned(),
        reason: format!("tensor \"{}\": {error}", t.name()),
    })?;
    Ok(out)
}

/// `quant::dequantize_row`, through an aligned copy when the file's alignment leaves a row
/// unaligned for the block structs (`general.alignment` may be as small as 1).
fn dequantize_aligned(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), quant::QuantError> {
    match quant::dequantize_row(ty, src, dst) {
        Err(quant::QuantError::Misaligned { .. }) => {
            let mut words = vec![0u32; src.len().div_ceil(4)];
            let scratch = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..src.len()];
            scratch.copy_from_slice(src);
            quant::dequantize_row(ty, scratch, dst)
        }
        r => r,
    }
}
