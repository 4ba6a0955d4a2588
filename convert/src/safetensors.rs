//! A Hugging Face checkpoint's tensors: one or many memory-mapped `*.safetensors` files, or,
//! where there are none, PyTorch's `pytorch_model*.bin` archives (read by
//! [`crate::torch_bin`], without running their pickles).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

use crate::error::ConvertError;
use crate::mapped;

/// Where one tensor lives.
struct Entry {
    file: usize,
    dtype: Dtype,
    /// PyTorch order: the last dimension is contiguous.
    shape: Vec<usize>,
    /// Byte range within its file.
    start: usize,
    end: usize,
}

/// All tensors of a checkpoint directory, by name.
pub struct Checkpoint {
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    tensors: BTreeMap<String, Entry>,
}

impl Checkpoint {
    /// Opens every `*.safetensors` file in `dir`, else every `pytorch_model*.bin`.
    pub fn open(dir: &Path) -> Result<Checkpoint, ConvertError> {
        let io = |path: &Path, e: std::io::Error| ConvertError::Io {
            path: path.to_owned(),
            error: e,
        };
        let files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        let name_of = |p: &PathBuf| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let mut paths: Vec<PathBuf> = files
            .iter()
            .filter(|p| name_of(p).ends_with(".safetensors"))
            .cloned()
            .collect();
        let torch = paths.is_empty();
        if torch {
            paths = files
                .into_iter()
                .filter(|p| {
                    let n = name_of(p);
                    n.starts_with("pytorch_model") && n.ends_with(".bin")
                })
                .collect();
        }
        paths.sort();
        if paths.is_empty() {
            return Err(ConvertError::Input {
                path: dir.to_owned(),
                reason: "no *.safetensors or pytorch_model*.bin files".into(),
            });
        }
        let mut maps = Vec::new();
        let mut tensors = BTreeMap::new();
        for (file, path) in paths.iter().enumerate() {
            llava_runtime::files::regular_file(path).map_err(|e| io(path, e))?;
            let f = File::open(path).map_err(|e| io(path, e))?;
            // SAFETY: read-only map of a checkpoint nobody rewrites while we convert it.
            let map = unsafe { Mmap::map(&f) }.map_err(|e| io(path, e))?;
            let bad = |reason: String| ConvertError::Input {
                path: path.clone(),
                reason,
            };
            let found: Vec<(String, Entry)> = if torch {
                crate::torch_bin::read_state_dict(&map)
                    .map_err(bad)?
                    .into_iter()
                    .map(|t| {
                        let entry = Entry {
                            file,
                            dtype: t.dtype,
                            shape: t.shape,
                            start: t.start,
                            end: t.end,
                        };
                        (t.name, entry)
                    })
                    .collect()
            } else {
                let (header_len, metadata): (usize, Metadata) =
                    SafeTensors::read_metadata(&map).map_err(|e| bad(e.to_string()))?;
                let data_start = 8 + header_len;
                metadata
                    .tensors()
                    .into_iter()
                    .map(|(name, info)| {
                        let (start, end) = info.data_offsets;
                        let entry = Entry {
                            file,
                            dtype: info.dtype,
                            shape: info.shape.clone(),
                            start: data_start + start,
                            end: data_start + end,
                        };
                        (name, entry)
                    })
                    .collect()
            };
            for (name, entry) in found {
                if entry.end > map.len() {
                    return Err(bad(format!(
                        "tensor {name:?} extends past the end of the file"
                    )));
                }
                if tensors.insert(name.clone(), entry).is_some() {
                    return Err(bad(format!("tensor {name:?} appears twice")));
                }
            }
            maps.push(map);
        }
        Ok(Checkpoint {
            paths,
            maps,
            tensors,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// PyTorch shape of a tensor.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }

    /// Bytes a tensor takes in its file.
    pub fn byte_len(&self, name: &str) -> Option<u64> {
        self.tensors.get(name).map(|e| (e.end - e.start) as u64)
    }

    /// A tensor converted to f32, in PyTorch (row-major) order.
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>, ConvertError> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| ConvertError::MissingTensor {
                name: name.to_owned(),
            })?;
        let bytes = &self.maps[e.file][e.start..e.end];
        let n: usize = e.shape.iter().product();
        let bad = |reason: String| ConvertError::Input {
            path: self.paths[e.file].clone(),
            reason: format!("tensor {name:?}: {reason}"),
        };
        let width = match e.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(bad(format!(
                    "dtype {other:?} is not supported (F32, F16, BF16)"
                )))
            }
        };
        if bytes.len() != n * width {
            return Err(bad(format!("{} bytes for {n} elements", bytes.len())));
        }
        mapped::prefetch(&self.maps[e.file], e.start, e.end);
        let mut out = vec![0f32; n];
        // Chunks in parallel: converting is most of a conversion's time when the target is a
        // float type (a 2.2 GB F16 checkpoint in ~1 s instead of several).
        const CHUNK: usize = 1 << 16;
        out.par_chunks_mut(CHUNK)
            .zip(bytes.par_chunks(CHUNK * width))
            .for_each(|(dst, src)| decode(e.dtype, src, dst));
        mapped::release(&self.maps[e.file], e.start, e.end);
        Ok(out)
    }
}

/// Little-endian F32, F16 or BF16 values to f32. Little-endian hosts with aligned data take
/// half's slice conversion (F16C where the CPU has it).
fn decode(dtype: Dtype, src: &[u8], dst: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    let native = cfg!(target_endian = "little");
    match dtype {
        Dtype::F16 => match bytemuck::try_cast_slice::<u8, half::f16>(src) {
            Ok(h) if native => h.convert_to_f32_slice(dst),
            _ => {
                for (d, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    *d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        },
        Dtype::BF16 => match bytemuck::try_cast_slice::<u8, half::bf16>(src) {
            Ok(h) if native => h.convert_to_f32_slice(dst),
            _ => {
                for (d, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    *d = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        },
        _ => {
            for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_agrees_with_per_element_conversion_aligned_or_not() {
        let values = [0.0f32, 1.5, -2.25, 65504.0, 1e-7, f32::INFINITY];
        let mut f16 = vec![0u8];
        let mut bf16 = vec![0u8];
        let mut f32s = vec![0u8];
        for v in values {
            f16.extend(half::f16::from_f32(v).to_le_bytes());
            bf16.extend(half::bf16::from_f32(v).to_le_bytes());
            f32s.extend(v.to_le_bytes());
        }
        for (dtype, bytes, want) in [
            (
                Dtype::F16,
                &f16,
                values.map(|v| half::f16::from_f32(v).to_f32()),
            ),
            (
                Dtype::BF16,
                &bf16,
                values.map(|v| half::bf16::from_f32(v).to_f32()),
            ),
            (Dtype::F32, &f32s, values),
        ] {
            // Offset 1 is misaligned for 2-byte types; copying to offset 0 may or may not be
            // aligned: both paths must agree.
            let unaligned = &bytes[1..];
            let aligned: Vec<u8> = unaligned.to_vec();
            for src in [unaligned, &aligned[..]] {
                let mut out = [0f32; 6];
                decode(dtype, src, &mut out);
                assert_eq!(out, want, "{dtype:?}");
            }
        }
    }
}
