//! The GGUF reader: parses and checks the header once, then hands out borrowed views of the
//! memory map. Nothing in the data section is read until a caller asks for a tensor.
//!
//! This file holds the reader's API ([`GgufFile`] and its accessors, [`TensorInfo`],
//! [`Tensor`]); the parsing and checking of the header is `parse.rs`'s.

use std::collections::HashMap;
use std::fs::File;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::{GgufError, GgufErrorKind};
use super::parse::Parsed;
use super::value::{ArrayElement, ArrayView, Value, ValueType};
use crate::quant::GgmlType;

type Kind = GgufErrorKind;

/// An open GGUF file: metadata, tensor infos and zero-copy access to tensor data.
pub struct GgufFile {
    path: PathBuf,
    bytes: Backing,
    version: u32,
    alignment: u64,
    data_offset: u64,
    kvs: Vec<KvEntry>,
    kv_index: HashMap<Box<str>, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<Box<str>, usize>,
}

enum Backing {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// Where one key's value lies in the file. For strings `range` is the UTF-8 bytes, for arrays the
/// element bytes; both were validated at open.
pub(super) struct KvEntry {
    pub(super) key: Box<str>,
    pub(super) ty: ValueType,
    pub(super) elem: Option<ValueType>,
    pub(super) count: usize,
    pub(super) range: Range<usize>,
}

/// One tensor's header record, checked against the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub(super) name: String,
    pub(super) ty: GgmlType,
    pub(super) shape: Vec<u64>,
    /// Offset relative to the start of the data section, as stored in the file.
    pub(super) offset: u64,
    pub(super) n_bytes: u64,
    /// Absolute byte range in the file.
    pub(super) data: Range<usize>,
}

impl TensorInfo {
    /// The tensor's name, at most 63 bytes.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tensor's element type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// Dimensions in ggml order: `shape()[0]` is the contiguous one (`ne[0]`).
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Number of elements: the product of the shape.
    pub fn n_elements(&self) -> u64 {
        // Checked not to overflow when the file was opened.
        self.shape.iter().product()
    }

    /// Size of the tensor's data in bytes.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    /// Offset of the data relative to the data section.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// A tensor's header record with its bytes, borrowed from the map.
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'a> {
    /// The header record.
    pub info: &'a TensorInfo,
    /// The tensor's data, `n_bytes()` long, borrowed from the map.
    pub data: &'a [u8],
}

impl Deref for Tensor<'_> {
    type Target = TensorInfo;
    fn deref(&self) -> &TensorInfo {
        self.info
    }
}

impl GgufFile {
    /// Memory-maps and checks a GGUF file. Every count, length, offset and shape in the header
    /// is validated against the file size before it is used.
    ///
    /// The map is read-only and shared with the file: the file must not be truncated or
    /// rewritten while this is open. Reading a page a truncation removed raises SIGBUS, and
    /// bytes rewritten in place would change weights under the running model (`llava`'s own
    /// outputs are written to a new file and renamed, never over a file in use).
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let err = |kind| GgufError {
            path: path.to_owned(),
            kind,
        };
        // A FIFO would block the open and a directory fails to map with "No such device".
        crate::files::regular_file(path).map_err(|e| err(Kind::Io(e)))?;
        let file = File::open(path).map_err(|e| err(Kind::Io(e)))?;
        let len = file.metadata().map_err(|e| err(Kind::Io(e)))?.len();
        let bytes = if len == 0 {
            // mmap of an empty file fails on some platforms; an empty file is just truncated.
            Backing::Owned(Vec::new())
        } else {
            // SAFETY: the map is only read through shared slices. Like llama.cpp, we rely on the
            // file not being truncated or rewritten by another process while it is open; GGUF
            // files are written once (our writer renames a finished file into place).
            Backing::Map(unsafe { Mmap::map(&file) }.map_err(|e| err(Kind::Io(e)))?)
        };
        Self::parse(path.to_owned(), bytes)
    }

    /// Parses a GGUF image held in memory; `path` is only used in error messages.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::parse(path.into(), Backing::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Backing) -> Result<GgufFile, GgufError> {
        match Parsed::parse(&bytes) {
            Ok(p) => Ok(GgufFile {
                path,
                bytes,
                version: p.version,
                alignment: p.alignment,
                data_offset: p.data_offset,
                kvs: p.kvs,
                kv_index: p.kv_index,
                tensors: p.tensors,
                tensor_index: p.tensor_index,
            }),
            Err(kind) => Err(GgufError { path, kind }),
        }
    }

    /// The path the file was opened from (or the name given to [`GgufFile::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version of the file: 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the data section and of every tensor's data, in bytes: `general.alignment`, or
    /// [`DEFAULT_ALIGNMENT`](super::DEFAULT_ALIGNMENT) when absent.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Length of the file in bytes.
    pub fn file_size(&self) -> u64 {
        self.bytes.len() as u64
    }

    // ---- metadata ----

    /// Number of metadata keys.
    pub fn metadata_len(&self) -> usize {
        self.kvs.len()
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> impl ExactSizeIterator<Item = (&str, Value<'_>)> {
        self.kvs.iter().map(|kv| (&*kv.key, self.decode(kv)))
    }

    /// Whether the metadata holds `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.kv_index.contains_key(key)
    }

    /// The value of `key`, or `None` if absent.
    pub fn get(&self, key: &str) -> Option<Value<'_>> {
        self.kv_index.get(key).map(|&i| self.decode(&self.kvs[i]))
    }

    fn decode(&self, kv: &KvEntry) -> Value<'_> {
        let b = &self.bytes[kv.range.clone()];
        match kv.ty {
            ValueType::String => {
                Value::String(std::str::from_utf8(b).expect("validated when the file was opened"))
            }
            ValueType::Array => Value::Array(ArrayView::new(
                kv.elem.expect("arrays carry an element type"),
                kv.count,
                b,
            )),
            ty => Value::decode_scalar(ty, b),
        }
    }

    fn error(&self, kind: GgufErrorKind) -> GgufError {
        GgufError {
            path: self.path.clone(),
            kind,
        }
    }

    fn required(&self, key: &str) -> Result<Value<'_>, GgufError> {
        self.get(key)
            .ok_or_else(|| self.error(Kind::MissingKey(key.to_owned())))
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &Value<'_>) -> GgufError {
        let elem = match found {
            Value::Array(a) => Some(a.elem_type()),
            _ => None,
        };
        self.error(Kind::WrongType {
            key: key.to_owned(),
            expected: expected.to_owned(),
            found: GgufErrorKind::type_name(found.value_type(), elem),
        })
    }

    /// An unsigned integer of any width, if its value fits in u32 (files from different
    /// writers disagree on the integer type of counts).
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let v = self.required(key)?;
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.wrong_type(key, "an integer that fits in u32", &v))
    }

    /// An unsigned integer of any width, or a signed one that is not negative.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.required(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, "a non-negative integer", &v))
    }

    /// An integer of any width, if its value fits in i64.
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        let v = self.required(key)?;
        let n = match v {
            Value::I8(n) => Some(n.into()),
            Value::I16(n) => Some(n.into()),
            Value::I32(n) => Some(n.into()),
            Value::I64(n) => Some(n),
            other => other.as_u64().and_then(|n| i64::try_from(n).ok()),
        };
        n.ok_or_else(|| self.wrong_type(key, "an integer", &v))
    }

    /// An f32 or f64 value, as f32.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.required(key)?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| self.wrong_type(key, "f32", &v))
    }

    /// A bool value. Fails if the key is absent or holds another type.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.required(key)? {
            Value::Bool(b) => Ok(b),
            v => Err(self.wrong_type(key, "bool", &v)),
        }
    }

    /// A string value, borrowed from the file. Fails if the key is absent or holds another type.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.required(key)? {
            Value::String(s) => Ok(s),
            v => Err(self.wrong_type(key, "string", &v)),
        }
    }

    /// An array value of any element type. Fails if the key is absent or holds another type.
    pub fn get_array(&self, key: &str) -> Result<ArrayView<'_>, GgufError> {
        match self.required(key)? {
            Value::Array(a) => Ok(a),
            v => Err(self.wrong_type(key, "array", &v)),
        }
    }

    /// An array of strings, e.g. `tokenizer.ggml.tokens`.
    pub fn get_str_array(
        &self,
        key: &str,
    ) -> Result<impl ExactSizeIterator<Item = &str> + '_, GgufError> {
        let a = self.get_array(key)?;
        a.strings()
            .ok_or_else(|| self.wrong_type(key, "array of string", &Value::Array(a)))
    }

    /// An array whose elements are exactly of type `T`, e.g. `tokenizer.ggml.scores` as f32.
    pub fn get_array_of<T: ArrayElement>(
        &self,
        key: &str,
    ) -> Result<impl ExactSizeIterator<Item = T> + '_, GgufError> {
        let a = self.get_array(key)?;
        a.values::<T>().ok_or_else(|| {
            let expected = format!("array of {}", T::TYPE);
            self.wrong_type(key, &expected, &Value::Array(a))
        })
    }

    /// `Ok(None)` when the key is absent; an error when it is present with the wrong type.
    pub fn optional<T>(
        &self,
        key: &str,
        get: impl FnOnce(&Self, &str) -> Result<T, GgufError>,
    ) -> Result<Option<T>, GgufError> {
        if self.contains_key(key) {
            get(self, key).map(Some)
        } else {
            Ok(None)
        }
    }

    // ---- tensors ----

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// Every tensor's header record, in file order.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Every tensor with its data, in file order.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = Tensor<'_>> {
        self.tensors.iter().map(|info| self.view(info))
    }

    /// The tensor called `name` with its data, or `None` if the file has no such tensor.
    pub fn tensor(&self, name: &str) -> Option<Tensor<'_>> {
        self.tensor_index
            .get(name)
            .map(|&i| self.view(&self.tensors[i]))
    }

    /// The tensor at `index` in file order.
    pub fn tensor_at(&self, index: usize) -> Option<Tensor<'_>> {
        self.tensors.get(index).map(|info| self.view(info))
    }

    /// The file-order index of a tensor, for callers that look a tensor up once and keep it.
    pub fn tensor_index(&self, name: &str) -> Option<usize> {
        self.tensor_index.get(name).copied()
    }

    /// Takes tensor `index`'s pages out of this process's resident memory, for a caller that
    /// has copied the tensor into a layout of its own (the CPU backend's interleaved weights).
    /// Its data stays readable: the next read faults the same bytes back in from the file. A
    /// hint, best effort: nothing happens for a file read into memory or off Unix.
    /// `bytes` is the part of the tensor's data to release (all of it: `..`).
    pub fn release_tensor_pages(&self, index: usize, bytes: impl std::ops::RangeBounds<usize>) {
        #[cfg(unix)]
        if let (Backing::Map(map), Some(info)) = (&self.bytes, self.tensors.get(index)) {
            let len = info.data.len();
            let start = match bytes.start_bound() {
                std::ops::Bound::Included(&s) => s,
                std::ops::Bound::Excluded(&s) => s + 1,
                std::ops::Bound::Unbounded => 0,
            };
            let end = match bytes.end_bound() {
                std::ops::Bound::Included(&e) => e + 1,
                std::ops::Bound::Excluded(&e) => e,
                std::ops::Bound::Unbounded => len,
            };
            if start >= end || end > len {
                return;
            }
            // SAFETY: the map is a read-only shared mapping of a file that nobody writes while
            // it is open (the invariant `open` already relies on). MADV_DONTNEED on it only
            // drops page-table entries; a later read, through a slice borrowed before or after,
            // maps the file's unchanged bytes again, so no borrowed data changes. memmap2
            // widens the range to whole pages; a neighbour's page dropped with it is faulted
            // back in the same way. The range is in bounds: inside the tensor, checked above,
            // whose data was checked against the file at open.
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    info.data.start + start,
                    end - start,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = (index, bytes);
    }

    fn view<'a>(&'a self, info: &'a TensorInfo) -> Tensor<'a> {
        Tensor {
            info,
            // In bounds: checked against the file length at open.
            data: &self.bytes[info.data.clone()],
        }
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.kvs.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}
