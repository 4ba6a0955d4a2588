//! Errors of conversion. Each names the file, key or tensor at fault.

use std::path::PathBuf;

use llava_runtime::gguf::{GgufError, GgufWriteError};
use llava_runtime::quant::QuantError;

/// A conversion, requantization or synthesis failed. No partial output file is left behind.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// An input is unusable: a malformed file, a missing part of the checkpoint, or an output path
    /// that is also the input.
    #[error("{}: {reason}", path.display())]
    Input {
        /// The file or directory at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A config file is missing a key or holds a value that cannot be converted.
    #[error("{}: key {key:?}: {reason}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// The key at fault.
        key: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// The checkpoint has no tensor of this name.
    #[error("checkpoint tensor {name:?} is missing")]
    MissingTensor {
        /// The checkpoint tensor's name (Hugging Face naming).
        name: String,
    },
    /// A checkpoint tensor's shape does not match the config.
    #[error("checkpoint tensor {name:?} has shape {shape:?}, expected {expected:?}")]
    WrongShape {
        /// The checkpoint tensor's name.
        name: String,
        /// Its shape, in PyTorch order (outermost dimension first).
        shape: Vec<usize>,
        /// The shape the config calls for, in PyTorch order.
        expected: Vec<usize>,
    },
    /// A tensor could not be quantized to its chosen type.
    #[error("quantizing {tensor:?}: {error}")]
    Quant {
        /// The GGUF tensor's name.
        tensor: String,
        /// Why the quantizer refused it.
        error: QuantError,
    },
    /// An input GGUF file could not be read.
    #[error(transparent)]
    Read(#[from] GgufError),
    /// The output GGUF file could not be written.
    #[error(transparent)]
    Write(#[from] GgufWriteError),
}
