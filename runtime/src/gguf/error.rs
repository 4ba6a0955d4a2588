//! Errors of the GGUF reader and writer. Each names the file and the field at fault, on one line.

use std::path::PathBuf;

use super::ValueType;

/// A GGUF file could not be read, or a metadata lookup failed.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct GgufError {
    pub path: PathBuf,
    pub kind: GgufErrorKind,
}

/// What was wrong. `field` strings locate the problem, e.g. `tensor_info[3].ne[0]` or
/// `metadata "llama.block_count"`.
#[derive(Debug, thiserror::Error)]
pub enum GgufErrorKind {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a GGUF file (magic bytes {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (only 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("GGUF version field {0:#010x} looks byte-swapped: big-endian files are not supported")]
    WrongByteOrder(u32),
    #[error(
        "truncated at {field}: needs {needed} bytes at offset {offset}, the file has {file_len}"
    )]
    Truncated {
        field: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    #[error("{field} = {count} is larger than the file could hold ({file_len} bytes)")]
    CountTooLarge {
        field: String,
        count: u64,
        file_len: u64,
    },
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 { field: String },
    #[error("{field}: empty key")]
    EmptyKey { field: String },
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    #[error("metadata {key:?}: unknown value type id {id}")]
    UnknownValueType { key: String, id: u32 },
    #[error("metadata {key:?}: arrays of arrays are not supported (llama.cpp rejects them too)")]
    NestedArray { key: String },
    #[error("general.alignment: {0}")]
    BadAlignment(String),
    #[error("{field}: tensor name of {len} bytes is too long (ggml allows at most 63)")]
    TensorNameTooLong { field: String, len: u64 },
    #[error("tensor {tensor:?}: {n_dims} dimensions, ggml allows at most 4")]
    TooManyDims { tensor: String, n_dims: u32 },
    #[error("tensor {tensor:?}: unknown ggml type id {id}")]
    UnknownTensorType { tensor: String, id: u32 },
    #[error("tensor {tensor:?}: shape {shape:?} has too many elements")]
    ShapeOverflow { tensor: String, shape: Vec<u64> },
    #[error("tensor {tensor:?}: ne[0] = {ne0} is not a multiple of the {ty} block size {block}")]
    RowNotWholeBlocks {
        tensor: String,
        ne0: u64,
        ty: &'static str,
        block: usize,
    },
    #[error("duplicate tensor {0:?}")]
    DuplicateTensor(String),
    #[error(
        "tensor {tensor:?}: data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensor {tensor:?}: data [{start}, {end}) extends past the end of the file ({file_len} bytes)")]
    TensorOutOfBounds {
        tensor: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error("tensors {first:?} and {second:?} overlap in the data section")]
    OverlappingTensors { first: String, second: String },
    #[error("metadata key {0:?} is missing")]
    MissingKey(String),
    #[error("metadata {key:?}: expected {expected}, found {found}")]
    WrongType {
        key: String,
        expected: String,
        found: String,
    },
}

impl GgufErrorKind {
    /// A field description for value types, used in [`GgufErrorKind::WrongType`].
    pub(crate) fn type_name(ty: ValueType, elem: Option<ValueType>) -> String {
        match elem {
            Some(e) => format!("array of {e}"),
            None => ty.name().to_owned(),
        }
    }
}

/// Writing a GGUF file failed. Nothing is left at the destination path.
#[derive(Debug, thiserror::Error)]
pub enum GgufWriteError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    #[error("duplicate tensor {0:?}")]
    DuplicateTensor(String),
    #[error("invalid metadata {key:?}: {reason}")]
    InvalidMetadata { key: String, reason: String },
    #[error("invalid tensor {tensor:?}: {reason}")]
    InvalidTensor { tensor: String, reason: String },
    #[error("tensor {tensor:?}: the data callback wrote {written} bytes, expected {expected}")]
    SizeMismatch {
        tensor: String,
        written: u64,
        expected: u64,
    },
}
