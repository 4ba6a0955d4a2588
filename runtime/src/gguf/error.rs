//! Errors of the GGUF reader and writer. Each names the file and the field at fault, on one line.

use std::path::PathBuf;

use super::ValueType;

/// A GGUF file could not be read, or a metadata lookup failed.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct GgufError {
    /// The file being read.
    pub path: PathBuf,
    /// What was wrong, and where in the file.
    pub kind: GgufErrorKind,
}

/// What was wrong. `field` strings locate the problem, e.g. `tensor_info[3].ne[0]` or
/// `metadata "llama.block_count"`.
#[derive(Debug, thiserror::Error)]
pub enum GgufErrorKind {
    /// The file could not be opened, inspected or mapped.
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    /// The first four bytes are not `GGUF`; holds the bytes found.
    #[error("not a GGUF file (magic bytes {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    /// The version field is neither 2 nor 3; holds the version read.
    #[error("GGUF version {0} is not supported (only 2 and 3)")]
    UnsupportedVersion(u32),
    /// The version field's low 16 bits are zero, as in a small version written big-endian: such
    /// files are not supported. Holds the raw field.
    #[error("GGUF version field {0:#010x} looks byte-swapped: big-endian files are not supported")]
    WrongByteOrder(u32),
    /// The file ends inside a field.
    #[error(
        "truncated at {field}: needs {needed} bytes at offset {offset}, the file has {file_len}"
    )]
    Truncated {
        /// The field being read.
        field: String,
        /// Absolute byte offset where the read started.
        offset: u64,
        /// Bytes the field needs.
        needed: u64,
        /// Length of the file in bytes.
        file_len: u64,
    },
    /// A count (of keys, tensors, array elements) or offset is larger than the rest of the file
    /// could hold, so it cannot be true. Checked before anything is allocated from it.
    #[error("{field} = {count} is larger than the file could hold ({file_len} bytes)")]
    CountTooLarge {
        /// The field holding the count.
        field: String,
        /// The count read.
        count: u64,
        /// Length of the file in bytes.
        file_len: u64,
    },
    /// A string (key, value or tensor name) is not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field holding the string.
        field: String,
    },
    /// A metadata key is the empty string.
    #[error("{field}: empty key")]
    EmptyKey {
        /// The metadata entry, e.g. `metadata[3]`.
        field: String,
    },
    /// The same metadata key appears twice; holds the key.
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    /// A metadata value type id outside 0..=12.
    #[error("metadata {key:?}: unknown value type id {id}")]
    UnknownValueType {
        /// The key whose value has the unknown type.
        key: String,
        /// The type id read.
        id: u32,
    },
    /// An array whose elements are arrays.
    #[error("metadata {key:?}: arrays of arrays are not supported (llama.cpp rejects them too)")]
    NestedArray {
        /// The key of the outer array.
        key: String,
    },
    /// `general.alignment` is not a u32 power of two; holds the reason.
    #[error("general.alignment: {0}")]
    BadAlignment(String),
    /// A tensor name of 64 bytes or more.
    #[error("{field}: tensor name of {len} bytes is too long (ggml allows at most 63)")]
    TensorNameTooLong {
        /// The field holding the name, e.g. `tensor_info[3].name`.
        field: String,
        /// The name's length in bytes.
        len: u64,
    },
    /// A tensor with more than 4 dimensions.
    #[error("tensor {tensor:?}: {n_dims} dimensions, ggml allows at most 4")]
    TooManyDims {
        /// The tensor.
        tensor: String,
        /// The number of dimensions read.
        n_dims: u32,
    },
    /// A tensor type id that names no ggml type this crate knows.
    #[error("tensor {tensor:?}: unknown ggml type id {id}")]
    UnknownTensorType {
        /// The tensor.
        tensor: String,
        /// The type id read.
        id: u32,
    },
    /// A tensor whose element count exceeds `i64::MAX` (ggml's limit) or whose byte size
    /// overflows u64.
    #[error("tensor {tensor:?}: shape {shape:?} has too many elements")]
    ShapeOverflow {
        /// The tensor.
        tensor: String,
        /// Its shape, in ggml order.
        shape: Vec<u64>,
    },
    /// A tensor whose rows (`ne[0]`) do not split into whole quantization blocks.
    #[error("tensor {tensor:?}: ne[0] = {ne0} is not a multiple of the {ty} block size {block}")]
    RowNotWholeBlocks {
        /// The tensor.
        tensor: String,
        /// Its row length in elements.
        ne0: u64,
        /// The name of its ggml type.
        ty: &'static str,
        /// Elements per block of that type.
        block: usize,
    },
    /// The same tensor name appears twice; holds the name.
    #[error("duplicate tensor {0:?}")]
    DuplicateTensor(String),
    /// A tensor's data offset is not a multiple of the file's alignment.
    #[error(
        "tensor {tensor:?}: data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        /// The tensor.
        tensor: String,
        /// Its data offset, relative to the start of the data section.
        offset: u64,
        /// The file's alignment in bytes.
        alignment: u64,
    },
    /// A tensor's data does not fit in the file.
    #[error("tensor {tensor:?}: data [{start}, {end}) extends past the end of the file ({file_len} bytes)")]
    TensorOutOfBounds {
        /// The tensor.
        tensor: String,
        /// Absolute offset of the first data byte.
        start: u64,
        /// Absolute offset one past the last data byte.
        end: u64,
        /// Length of the file in bytes.
        file_len: u64,
    },
    /// Two tensors' data share bytes.
    #[error("tensors {first:?} and {second:?} overlap in the data section")]
    OverlappingTensors {
        /// The tensor whose data starts first.
        first: String,
        /// The tensor whose data starts inside `first`'s.
        second: String,
    },
    /// A required metadata key is absent; holds the key.
    #[error("metadata key {0:?} is missing")]
    MissingKey(String),
    /// A metadata value has a type the caller cannot use.
    #[error("metadata {key:?}: expected {expected}, found {found}")]
    WrongType {
        /// The key.
        key: String,
        /// What the caller accepts, e.g. `a non-negative integer`.
        expected: String,
        /// The type found, e.g. `array of string`.
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
    /// Creating, writing or renaming the file failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The destination path.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The same metadata key was added twice; holds the key.
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    /// The same tensor name was declared twice; holds the name.
    #[error("duplicate tensor {0:?}")]
    DuplicateTensor(String),
    /// A metadata value the writer refuses: an empty key, or a `general.alignment` that is not a
    /// u32 power of two.
    #[error("invalid metadata {key:?}: {reason}")]
    InvalidMetadata {
        /// The key.
        key: String,
        /// Why it was refused.
        reason: String,
    },
    /// A tensor declaration the writer refuses: a name of 64 bytes or more, more than 4
    /// dimensions, rows that are not whole blocks, or a size that overflows.
    #[error("invalid tensor {tensor:?}: {reason}")]
    InvalidTensor {
        /// The tensor.
        tensor: String,
        /// Why it was refused.
        reason: String,
    },
    /// The data callback wrote a different number of bytes than the tensor's declared size.
    #[error("tensor {tensor:?}: the data callback wrote {written} bytes, expected {expected}")]
    SizeMismatch {
        /// The tensor.
        tensor: String,
        /// Bytes the callback wrote.
        written: u64,
        /// Bytes the declaration requires ([`TensorDecl::n_bytes`](super::TensorDecl::n_bytes)).
        expected: u64,
    },
}
