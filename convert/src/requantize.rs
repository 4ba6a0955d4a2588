//! An existing GGUF file → the same model with another preset's tensor types: `llava quantize`.
//!
//! Every metadata key is kept, in order, except `general.file_type`, which becomes the preset's.
//! Tensor types come from the same rules as a conversion (`Preset::tensor_type` for an LLM,
//! `vision_tensor_type` for an mmproj), so requantizing an F32 file gives the bytes a direct
//! conversion would. One tensor is dequantized to f32 at a time.

use llava_runtime::gguf::keys::llm;
use std::borrow::Cow;
use std::fs::File;
use std::path::Path;

use llava_runtime::gguf::{
    GgufFile, GgufWriter, MetaValue, Tensor, TensorDecl, KEY_ARCHITECTURE, KEY_FILE_TYPE,
};
use llava_runtime::quant;
use memmap2::Mmap;

use crate::clip::vision_tensor_type;
use crate::error::ConvertError;
use crate::llama::write_tensor;
use crate::mapped;
use crate::mix::Preset;
use crate::progress::{tensor_written, Monitor, Silent};
use crate::quantize::{dequantize_tensor, quantize_tensor};
use crate::ConvertSummary;

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
    requantize_with(input, out, preset, &mut Silent)
}

/// `requantize`, reporting each tensor to `monitor` (the RMSE is against the source's values
/// as decoded to f32).
pub fn requantize_with(
    input: &Path,
    out: &Path,
    preset: Preset,
    monitor: &mut dyn Monitor,
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
            n_layers: src.get_u32(&llm::key("llama", llm::BLOCK_COUNT))? as usize,
        },
        "clip" => Rules::Vision,
        other => {
            return Err(ConvertError::Config {
                path: input.to_owned(),
                key: KEY_ARCHITECTURE.to_owned(),
                reason: format!("{other:?} is not supported (llama, clip)"),
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
                    "tensor {:?} is of type {}, which llava-edge cannot dequantize",
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

    let mut summary = ConvertSummary::new(tensors.len());
    let map = map_again(input, &src)?;
    monitor.begin(tensors.len(), tensors.iter().map(|t| t.n_bytes()).sum());
    w.write(out, |i, decl, sink| -> Result<(), ConvertError> {
        let t = &tensors[i];
        // The reader checked this range against the file, which `map_again` checked is the
        // same length.
        let start = (src.data_offset() + t.offset()) as usize;
        let end = start + t.n_bytes() as usize;
        mapped::prefetch(&map, start, end);
        let source = &map[start..end];
        let result = requantized(input, t, decl, source).and_then(|(bytes, data)| {
            write_tensor(out, decl, &bytes, sink, &mut summary)?;
            tensor_written(monitor, decl, data.as_deref(), &bytes, t.n_bytes())
        });
        mapped::release(&map, start, end);
        result
    })?;
    Ok(summary)
}

/// A tensor's new bytes, and the values they were quantized from (`None` when the type is
/// kept and the bytes are copied).
type Requantized<'s> = (Cow<'s, [u8]>, Option<Vec<f32>>);

/// The bytes of tensor `t` as `decl`'s type, from `source` (its bytes in the input).
fn requantized<'s>(
    input: &Path,
    t: &Tensor<'_>,
    decl: &TensorDecl,
    source: &'s [u8],
) -> Result<Requantized<'s>, ConvertError> {
    if t.ggml_type() == decl.ty {
        // The same type: the bytes as they are (requantizing Q4_K to Q4_K would only lose).
        return Ok((Cow::Borrowed(source), None));
    }
    let row_len = decl.shape.first().copied().unwrap_or(1) as usize;
    let data = dequantize_tensor(t.ggml_type(), source, row_len, t.n_elements() as usize).map_err(
        |error| ConvertError::Input {
            path: input.to_owned(),
            reason: format!("tensor {:?}: {error}", t.name()),
        },
    )?;
    let bytes = quantize_tensor(&decl.name, decl.ty, &data, row_len)?;
    Ok((Cow::Owned(bytes), Some(data)))
}

/// The input mapped a second time, for its tensor data: `GgufFile` keeps its own map for the
/// header, and this one can drop each tensor's pages once read (`mapped.rs`).
fn map_again(path: &Path, src: &GgufFile) -> Result<Mmap, ConvertError> {
    let io = |error| ConvertError::Io {
        path: path.to_owned(),
        error,
    };
    let file = File::open(path).map_err(io)?;
    // SAFETY: read-only map of a file nobody rewrites while we read it, as `GgufFile::open`
    // assumes of the same file.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    if map.len() as u64 != src.file_size() {
        return Err(ConvertError::Input {
            path: path.to_owned(),
            reason: "the file changed while it was being read".into(),
        });
    }
    Ok(map)
}
