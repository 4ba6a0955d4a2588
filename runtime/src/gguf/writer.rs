//! The streaming GGUF writer.
//!
//! Metadata and tensor declarations are collected first (they are small); then
//! [`GgufWriter::write`] emits the header and asks the caller for each tensor's bytes in turn, so
//! a converter holds at most one tensor in memory. The file is written under a temporary name in
//! the destination directory and renamed into place only once complete ([`crate::staging`]): an
//! error, a panic or a killed process never leaves a file at the final path.

use std::collections::HashSet;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::error::GgufWriteError;
use super::value::{MetaArray, MetaValue};
use super::{DEFAULT_ALIGNMENT, KEY_ALIGNMENT, MAGIC, MAX_DIMS, MAX_NAME_BYTES};
use crate::quant::GgmlType;
use crate::staging::StagedFile;

/// The version this writer produces.
pub const WRITE_VERSION: u32 = 3;

/// A tensor to be written: its header record. The bytes come later, from the data callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDecl {
    /// The tensor's name, at most 63 bytes.
    pub name: String,
    /// The tensor's element type.
    pub ty: GgmlType,
    /// ggml order: `shape[0]` is the contiguous dimension.
    pub shape: Vec<u64>,
    n_bytes: u64,
}

impl TensorDecl {
    /// Bytes the data callback must write for this tensor.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    /// Number of elements: the product of the shape.
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// Collects metadata and tensor declarations, then streams a GGUF file to disk.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    keys: HashSet<String>,
    tensors: Vec<TensorDecl>,
    names: HashSet<String>,
}

impl GgufWriter {
    /// An empty writer: no metadata, no tensors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata key. Keys are written in the order they are added.
    pub fn add(&mut self, key: &str, value: impl Into<MetaValue>) -> Result<(), GgufWriteError> {
        let value = value.into();
        let invalid = |reason: &str| GgufWriteError::InvalidMetadata {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        if key.is_empty() {
            return Err(invalid("empty key"));
        }
        if key == KEY_ALIGNMENT {
            match value {
                MetaValue::U32(a) if a.is_power_of_two() => {}
                _ => return Err(invalid("must be a u32 power of two")),
            }
        }
        if !self.keys.insert(key.to_owned()) {
            return Err(GgufWriteError::DuplicateKey(key.to_owned()));
        }
        self.metadata.push((key.to_owned(), value));
        Ok(())
    }

    /// Declares a tensor. Tensors are written in declaration order.
    pub fn add_tensor(
        &mut self,
        name: &str,
        ty: GgmlType,
        shape: &[u64],
    ) -> Result<(), GgufWriteError> {
        let invalid = |reason: String| GgufWriteError::InvalidTensor {
            tensor: name.to_owned(),
            reason,
        };
        if name.len() as u64 >= MAX_NAME_BYTES {
            return Err(invalid(format!(
                "name of {} bytes is too long (at most {})",
                name.len(),
                MAX_NAME_BYTES - 1
            )));
        }
        if shape.len() > MAX_DIMS as usize {
            return Err(invalid(format!("{} dimensions (at most 4)", shape.len())));
        }
        let ne0 = shape.first().copied().unwrap_or(1);
        if ne0 % ty.block_size() as u64 != 0 {
            return Err(invalid(format!(
                "ne[0] = {ne0} is not a multiple of the {ty} block size {}",
                ty.block_size()
            )));
        }
        let n_bytes = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .and_then(|n| ty.row_bytes(n))
            .ok_or_else(|| invalid(format!("shape {shape:?} is too large")))?;
        if !self.names.insert(name.to_owned()) {
            return Err(GgufWriteError::DuplicateTensor(name.to_owned()));
        }
        self.tensors.push(TensorDecl {
            name: name.to_owned(),
            ty,
            shape: shape.to_vec(),
            n_bytes,
        });
        Ok(())
    }

    /// The tensors declared so far, in declaration order.
    pub fn tensors(&self) -> &[TensorDecl] {
        &self.tensors
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find_map(|(k, v)| match (k.as_str(), v) {
                (KEY_ALIGNMENT, MetaValue::U32(a)) => Some(u64::from(*a)),
                _ => None,
            })
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Writes the file. `data(index, decl, out)` must write exactly `decl.n_bytes()` bytes of
    /// tensor `index`; it is called once per tensor, in order. Any error — the callback's own
    /// or a short write — aborts and removes the partial file.
    pub fn write<E>(
        self,
        path: impl AsRef<Path>,
        mut data: impl FnMut(usize, &TensorDecl, &mut dyn Write) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<GgufWriteError>,
    {
        let path = path.as_ref();
        let io_err = |error: io::Error| GgufWriteError::Io {
            path: path.to_owned(),
            error,
        };
        // Dropped (and deleted) on every early return below.
        let tmp = StagedFile::create(path).map_err(io_err)?;
        let mut out = BufWriter::with_capacity(1 << 20, tmp.file());

        let alignment = self.alignment();
        let header = self.header(alignment);
        out.write_all(&header).map_err(io_err)?;
        let mut pos = header.len() as u64;

        for (i, decl) in self.tensors.iter().enumerate() {
            let mut counter = CountingWriter {
                inner: &mut out,
                written: 0,
                error: None,
            };
            let result = data(i, decl, &mut counter);
            // The file's own write error first: the callback only saw a stand-in, and its
            // error would say "write failed" without the reason (a full disk).
            if let Some(e) = counter.error.take() {
                return Err(io_err(e).into());
            }
            result?;
            if counter.written != decl.n_bytes {
                return Err(GgufWriteError::SizeMismatch {
                    tensor: decl.name.clone(),
                    written: counter.written,
                    expected: decl.n_bytes,
                }
                .into());
            }
            pos += decl.n_bytes;
            let pad = padding(pos, alignment);
            out.write_all(&vec![0u8; pad as usize]).map_err(io_err)?;
            pos += pad;
        }

        out.flush().map_err(io_err)?;
        drop(out);
        tmp.file().sync_all().map_err(io_err)?;
        tmp.commit().map_err(io_err)?;
        Ok(())
    }

    /// Everything before the first tensor's data: header, metadata, tensor infos, padding.
    fn header(&self, alignment: u64) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&WRITE_VERSION.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut h, key);
            h.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut h, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut h, &t.name);
            h.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &d in &t.shape {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ty.id().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            offset += t.n_bytes + padding(t.n_bytes, alignment);
        }
        // The data section starts aligned. With no tensors there is no data section, and
        // gguf-py writes no padding either (llama.cpp's vocab files end right after the header).
        if !self.tensors.is_empty() {
            let pad = padding(h.len() as u64, alignment);
            h.resize(h.len() + pad as usize, 0);
        }
        h
    }
}

fn padding(pos: u64, alignment: u64) -> u64 {
    (alignment - pos % alignment) % alignment
}

fn put_str(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

fn put_value(h: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => h.push(*x),
        MetaValue::I8(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => h.push(u8::from(*x)),
        MetaValue::String(s) => put_str(h, s),
        MetaValue::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array(a) => {
            h.extend_from_slice(&a.elem_type().id().to_le_bytes());
            h.extend_from_slice(&(a.len() as u64).to_le_bytes());
            put_array(h, a);
        }
    }
}

fn put_array(h: &mut Vec<u8>, a: &MetaArray) {
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                h.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        MetaArray::U8(v) => h.extend_from_slice(v),
        MetaArray::I8(v) => le!(v),
        MetaArray::U16(v) => le!(v),
        MetaArray::I16(v) => le!(v),
        MetaArray::U32(v) => le!(v),
        MetaArray::I32(v) => le!(v),
        MetaArray::F32(v) => le!(v),
        MetaArray::U64(v) => le!(v),
        MetaArray::I64(v) => le!(v),
        MetaArray::F64(v) => le!(v),
        MetaArray::Bool(v) => h.extend(v.iter().map(|&b| u8::from(b))),
        MetaArray::String(v) => v.iter().for_each(|s| put_str(h, s)),
    }
}

/// Counts what the data callback writes, and keeps the first I/O error so it can be reported
/// with the file name even if the callback swallows it.
struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
    error: Option<io::Error>,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.inner.write(buf) {
            Ok(n) => {
                self.written += n as u64;
                Ok(n)
            }
            Err(e) => {
                let kind = e.kind();
                self.error.get_or_insert(e);
                Err(io::Error::new(kind, "write failed"))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a file whose metadata, tensors and bytes are copied from `src`, as a convenience for
/// tools and tests that rewrite a GGUF file unchanged.
pub fn copy_file(src: &super::GgufFile, dst: &Path) -> Result<(), GgufWriteError> {
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        w.add(k, v.to_owned_value())?;
    }
    for t in src.tensor_infos() {
        w.add_tensor(t.name(), t.ggml_type(), t.shape())?;
    }
    let tensors: Vec<_> = src.tensors().collect();
    w.write(dst, |i, _, out| {
        out.write_all(tensors[i].data)
            .map_err(|error| GgufWriteError::Io {
                path: dst.to_owned(),
                error,
            })
    })
}
