//! Errors of conversion. Each names the file, key or tensor at fault.

use std::path::PathBuf;

use llava_runtime::gguf::{GgufError, GgufWriteError};
use llava_runtime::quant::QuantError;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Input { path: PathBuf, reason: String },
    #[error("{}: key {key:?}: {reason}", path.display())]
    Config {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("checkpoint tensor {name:?} is missing")]
    MissingTensor { name: String },
    #[error("checkpoint tensor {name:?} has shape {shape:?}, expected {expected:?}")]
    WrongShape {
        name: String,
        shape: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("quantizing {tensor:?}: {error}")]
    Quant { tensor: String, error: QuantError },
    #[error(transparent)]
    Read(#[from] GgufError),
    #[error(transparent)]
    Write(#[from] GgufWriteError),
}
