//! GGUF files: a zero-copy, bounds-checked reader and a streaming writer.
//!
//! Format facts are in ../shared/reference/GGUF-AND-LLAVA.md §1. Files are little-endian,
//! versions 2 and 3; the writer produces version 3.

mod error;
mod file_type;
pub mod keys;
mod parse;
mod reader;
mod value;
mod writer;

pub use error::{GgufError, GgufErrorKind, GgufWriteError};
pub use file_type::file_type_name;
pub use reader::{GgufFile, Tensor, TensorInfo};
pub use value::{ArrayElement, ArrayIter, ArrayView, MetaArray, MetaValue, Value, ValueType};
pub use writer::{copy_file, GgufWriter, TensorDecl, WRITE_VERSION};

pub(crate) const MAGIC: [u8; 4] = *b"GGUF";
/// Used when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub(crate) const MAX_DIMS: u32 = 4;
/// ggml's `GGML_MAX_NAME`, which counts the terminating NUL: names have at most 63 bytes.
pub(crate) const MAX_NAME_BYTES: u64 = 64;

/// Metadata keys read by the runtime itself.
pub const KEY_ALIGNMENT: &str = "general.alignment";
/// The model's architecture, e.g. `llama` or `clip`; prefixes its hyperparameter keys.
pub const KEY_ARCHITECTURE: &str = "general.architecture";
/// A human-readable model name.
pub const KEY_NAME: &str = "general.name";
/// The `llama_ftype` of the file: which quantization preset produced it (see [`file_type_name`]).
pub const KEY_FILE_TYPE: &str = "general.file_type";
