//! Errors of loading and running models. Each names the file and the key or tensor at fault.

use std::path::PathBuf;

use llava_runtime::backend::BackendError;
use llava_runtime::gguf::GgufError;

/// A model could not be loaded from its GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A key is missing or has the wrong type.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The backend could not load a weight.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// `general.architecture` names a model other than LLaMA.
    #[error("{}: architecture {arch:?} is not supported (expected llama)", path.display())]
    UnknownArchitecture {
        /// The GGUF file.
        path: PathBuf,
        /// The architecture it names.
        arch: String,
    },
    /// A hyper-parameter is present but unusable (e.g. heads that do not divide the width).
    #[error("{}: {key}: {reason}", path.display())]
    BadConfig {
        /// The GGUF file.
        path: PathBuf,
        /// The key at fault.
        key: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// A tensor the model needs is absent.
    #[error("{}: tensor {name:?} is missing", path.display())]
    MissingTensor {
        /// The GGUF file.
        path: PathBuf,
        /// The tensor.
        name: String,
    },
    /// A tensor's shape does not match the hyper-parameters.
    #[error("{}: tensor {name:?} has shape {shape:?}, expected {expected:?}", path.display())]
    WrongShape {
        /// The GGUF file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its shape in the file, in ggml order.
        shape: Vec<u64>,
        /// The shape the hyper-parameters call for, in ggml order.
        expected: Vec<u64>,
    },
}
