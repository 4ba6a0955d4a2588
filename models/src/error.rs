//! Errors of loading and running models. Each names the file and the key or tensor at fault.

use std::path::PathBuf;

use llava_runtime::backend::BackendError;
use llava_runtime::gguf::GgufError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{}: architecture {arch:?} is not supported (expected llama)", path.display())]
    UnknownArchitecture { path: PathBuf, arch: String },
    #[error("{}: {key}: {reason}", path.display())]
    BadConfig {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{}: tensor {name:?} is missing", path.display())]
    MissingTensor { path: PathBuf, name: String },
    #[error("{}: tensor {name:?} has shape {shape:?}, expected {expected:?}", path.display())]
    WrongShape {
        path: PathBuf,
        name: String,
        shape: Vec<u64>,
        expected: Vec<u64>,
    },
}
