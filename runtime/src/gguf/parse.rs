//! The GGUF header parser behind [`GgufFile`](super::GgufFile): the magic and version, the
//! metadata key/value records and the tensor table, every count, length, offset and shape
//! checked against the file before it is used.

use std::collections::HashMap;
use std::ops::Range;

use super::error::GgufErrorKind;
use super::reader::{KvEntry, TensorInfo};
use super::value::ValueType;
use super::{DEFAULT_ALIGNMENT, KEY_ALIGNMENT, MAGIC, MAX_DIMS, MAX_NAME_BYTES};
use crate::quant::GgmlType;

type Kind = GgufErrorKind;

/// The result of parsing a header.
pub(super) struct Parsed {
    pub(super) version: u32,
    pub(super) alignment: u64,
    pub(super) data_offset: u64,
    pub(super) kvs: Vec<KvEntry>,
    pub(super) kv_index: HashMap<Box<str>, usize>,
    pub(super) tensors: Vec<TensorInfo>,
    pub(super) tensor_index: HashMap<Box<str>, usize>,
}

/// Smallest possible encodings, used to reject counts a file cannot hold before allocating:
/// a key/value record is a key length (8), a 1-byte key, a type (4) and a 1-byte value;
/// a tensor info is a name length (8), n_dims (4), type (4) and offset (8).
const MIN_KV_BYTES: u64 = 14;
const MIN_TENSOR_INFO_BYTES: u64 = 24;

impl Parsed {
    pub(super) fn parse(bytes: &[u8]) -> Result<Parsed, GgufErrorKind> {
        let mut c = Cursor { bytes, pos: 0 };
        let magic = c.take(4, || "magic".into())?;
        if magic != MAGIC {
            return Err(Kind::BadMagic(magic.try_into().expect("4 bytes")));
        }
        let version = c.u32(|| "version".into())?;
        if version & 0xffff == 0 {
            return Err(Kind::WrongByteOrder(version));
        }
        if !(2..=3).contains(&version) {
            return Err(Kind::UnsupportedVersion(version));
        }
        let n_tensors = c.u64(|| "n_tensors".into())?;
        let n_kv = c.u64(|| "n_kv".into())?;
        c.check_count(n_kv, MIN_KV_BYTES, || "n_kv".into())?;
        c.check_count(n_tensors, MIN_TENSOR_INFO_BYTES, || "n_tensors".into())?;

        let mut kvs = Vec::with_capacity(n_kv as usize);
        let mut kv_index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let kv = c.kv(i)?;
            if kv_index.insert(kv.key.clone(), kvs.len()).is_some() {
                return Err(Kind::DuplicateKey(kv.key.into()));
            }
            kvs.push(kv);
        }

        let alignment = match kv_index.get(KEY_ALIGNMENT).map(|&i| &kvs[i]) {
            None => DEFAULT_ALIGNMENT,
            Some(kv) if kv.ty != ValueType::U32 => {
                return Err(Kind::BadAlignment(format!(
                    "must be a u32, found {}",
                    kv.ty
                )))
            }
            Some(kv) => {
                let b = &bytes[kv.range.clone()];
                let a = u32::from_le_bytes(b.try_into().expect("u32 value"));
                if !a.is_power_of_two() {
                    return Err(Kind::BadAlignment(format!("{a} is not a power of two")));
                }
                u64::from(a)
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let t = c.tensor_info(i, alignment)?;
            if tensor_index
                .insert(t.name.clone().into_boxed_str(), tensors.len())
                .is_some()
            {
                return Err(Kind::DuplicateTensor(t.name));
            }
            tensors.push(t);
        }

        // The data section starts at the next multiple of the alignment after the header.
        let data_offset = align_up(c.pos as u64, alignment).ok_or_else(|| Kind::CountTooLarge {
            field: "data section offset".into(),
            count: c.pos as u64,
            file_len: c.len(),
        })?;
        let file_len = c.len();
        for t in &mut tensors {
            let out_of_bounds = || Kind::TensorOutOfBounds {
                tensor: t.name.clone(),
                start: data_offset.saturating_add(t.offset),
                end: data_offset
                    .saturating_add(t.offset)
                    .saturating_add(t.n_bytes),
                file_len,
            };
            let start = data_offset
                .checked_add(t.offset)
                .ok_or_else(out_of_bounds)?;
            let end = start.checked_add(t.n_bytes).ok_or_else(out_of_bounds)?;
            if end > file_len {
                return Err(out_of_bounds());
            }
            // Both fit in usize: they are at most the length of an in-memory slice.
            t.data = start as usize..end as usize;
        }

        // Tensors may be stored in any order with gaps, but must never share bytes.
        let mut by_start: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
        by_start.sort_by_key(|t| t.data.start);
        for pair in by_start.windows(2) {
            if pair[0].data.end > pair[1].data.start {
                return Err(Kind::OverlappingTensors {
                    first: pair[0].name.clone(),
                    second: pair[1].name.clone(),
                });
            }
        }

        Ok(Parsed {
            version,
            alignment,
            data_offset,
            kvs,
            kv_index,
            tensors,
            tensor_index,
        })
    }
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    Some(x.checked_add(alignment - 1)? / alignment * alignment)
}

/// Reads little-endian fields, checking every length against what is left of the file.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    /// `field` is built only on error.
    fn take(&mut self, n: u64, field: impl FnOnce() -> String) -> Result<&'a [u8], GgufErrorKind> {
        if n > self.remaining() {
            return Err(Kind::Truncated {
                field: field(),
                offset: self.pos as u64,
                needed: n,
                file_len: self.len(),
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn u32(&mut self, field: impl FnOnce() -> String) -> Result<u32, GgufErrorKind> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, field: impl FnOnce() -> String) -> Result<u64, GgufErrorKind> {
        let b = self.take(8, field)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// Rejects a count whose items, at `min_bytes` each, could not fit in the rest of the file.
    fn check_count(
        &self,
        count: u64,
        min_bytes: u64,
        field: impl FnOnce() -> String,
    ) -> Result<(), GgufErrorKind> {
        if count > self.remaining() / min_bytes {
            return Err(Kind::CountTooLarge {
                field: field(),
                count,
                file_len: self.len(),
            });
        }
        Ok(())
    }

    /// A length-prefixed UTF-8 string; returns its byte range.
    fn string(&mut self, field: impl Fn() -> String) -> Result<Range<usize>, GgufErrorKind> {
        let len = self.u64(|| format!("{} length", field()))?;
        self.utf8(len, field)
    }

    /// `len` bytes of UTF-8; returns their range.
    fn utf8(
        &mut self,
        len: u64,
        field: impl Fn() -> String,
    ) -> Result<Range<usize>, GgufErrorKind> {
        let start = self.pos;
        let b = self.take(len, &field)?;
        std::str::from_utf8(b).map_err(|_| Kind::InvalidUtf8 { field: field() })?;
        Ok(start..self.pos)
    }

    fn kv(&mut self, i: u64) -> Result<KvEntry, GgufErrorKind> {
        let key_range = self.string(|| format!("metadata[{i}] key"))?;
        let key: Box<str> = std::str::from_utf8(&self.bytes[key_range])
            .expect("validated")
            .into();
        if key.is_empty() {
            return Err(Kind::EmptyKey {
                field: format!("metadata[{i}]"),
            });
        }
        let field = || format!("metadata {key:?}");
        let type_id = self.u32(|| format!("{} type", field()))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| Kind::UnknownValueType {
            key: key.to_string(),
            id: type_id,
        })?;
        let (elem, count, range) = match ty {
            ValueType::String => (None, 1, self.string(field)?),
            ValueType::Array => {
                let elem_id = self.u32(|| format!("{} array type", field()))?;
                let elem = ValueType::from_id(elem_id).ok_or_else(|| Kind::UnknownValueType {
                    key: key.to_string(),
                    id: elem_id,
                })?;
                if elem == ValueType::Array {
                    return Err(Kind::NestedArray {
                        key: key.to_string(),
                    });
                }
                let count = self.u64(|| format!("{} array length", field()))?;
                let start = self.pos;
                match elem.fixed_size() {
                    Some(size) => {
                        let n =
                            count
                                .checked_mul(size as u64)
                                .ok_or_else(|| Kind::CountTooLarge {
                                    field: format!("{} array length", field()),
                                    count,
                                    file_len: self.len(),
                                })?;
                        self.take(n, field)?;
                    }
                    None => {
                        // Each string needs at least its 8-byte length.
                        self.check_count(count, 8, || format!("{} array length", field()))?;
                        for j in 0..count {
                            self.string(|| format!("{}[{j}]", field()))?;
                        }
                    }
                }
                // count fits in usize: it is at most the number of bytes in memory.
                (Some(elem), count as usize, start..self.pos)
            }
            _ => {
                let size = ty.fixed_size().expect("scalar");
                let start = self.pos;
                self.take(size as u64, field)?;
                (None, 1, start..self.pos)
            }
        };
        Ok(KvEntry {
            key,
            ty,
            elem,
            count,
            range,
        })
    }

    fn tensor_info(&mut self, i: u64, alignment: u64) -> Result<TensorInfo, GgufErrorKind> {
        let name_len = self.u64(|| format!("tensor_info[{i}].name length"))?;
        if name_len >= MAX_NAME_BYTES {
            return Err(Kind::TensorNameTooLong {
                field: format!("tensor_info[{i}].name"),
                len: name_len,
            });
        }
        let name_range = self.utf8(name_len, || format!("tensor_info[{i}].name"))?;
        let name = std::str::from_utf8(&self.bytes[name_range])
            .expect("validated")
            .to_owned();
        let n_dims = self.u32(|| format!("tensor {name:?} n_dims"))?;
        if n_dims > MAX_DIMS {
            return Err(Kind::TooManyDims {
                tensor: name,
                n_dims,
            });
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            shape.push(self.u64(|| format!("tensor {name:?} ne[{d}]"))?);
        }
        let type_id = self.u32(|| format!("tensor {name:?} type"))?;
        let offset = self.u64(|| format!("tensor {name:?} offset"))?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| Kind::UnknownTensorType {
            tensor: name.clone(),
            id: type_id,
        })?;

        // ggml keeps element counts in int64_t.
        let n_elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| Kind::ShapeOverflow {
                tensor: name.clone(),
                shape: shape.clone(),
            })?;
        let ne0 = shape.first().copied().unwrap_or(1);
        if ne0 % ty.block_size() as u64 != 0 {
            return Err(Kind::RowNotWholeBlocks {
                tensor: name,
                ne0,
                ty: ty.name(),
                block: ty.block_size(),
            });
        }
        let n_bytes = ty
            .row_bytes(n_elements)
            .ok_or_else(|| Kind::ShapeOverflow {
                tensor: name.clone(),
                shape: shape.clone(),
            })?;
        if offset % alignment != 0 {
            return Err(Kind::MisalignedTensor {
                tensor: name,
                offset,
                alignment,
            });
        }
        Ok(TensorInfo {
            name,
            ty,
            shape,
            offset,
            n_bytes,
            data: 0..0,
        })
    }
}
