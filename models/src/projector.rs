//! The LLaVA projector from CLIP patch features to LLM embeddings: `mlp2x_gelu`
//! (Linear → exact erf GELU → Linear, PyTorch's `nn.GELU()`) or a single `linear` layer.

use std::sync::Arc;

use llava_runtime::backend::Backend;
use llava_runtime::gguf::GgufFile;

use crate::error::ModelError;

/// The projector of an mmproj file, by its layout in the file.
pub enum Projector<B: Backend> {
    /// LLaVA's `mlp2x_gelu`: `mm.0`, exact GELU, `mm.2`.
    Mlp2xGelu {
        /// `mm.0`: weight `[in, out]` and bias `[out]` in ggml order.
        w0: (B::Weight, B::Weight),
        /// `mm.2`: weight `[out, out]` and bias `[out]` in ggml order.
        w2: (B::Weight, B::Weight),
        /// Width of the output embeddings.
        out: usize,
    },
    /// A single linear layer, `mm.0`, for files without `mm.2`.
    Linear {
        /// `mm.0`: weight `[in, out]` and bias `[out]` in ggml order.
        w0: (B::Weight, B::Weight),
        /// Width of the output embeddings.
        out: usize,
    },
}

impl<B: Backend> Projector<B> {
    /// `mm.0` (and `mm.2` for the MLP) of an mmproj file; `in_size` is the tower's width.
    pub fn load(backend: &B, file: &Arc<GgufFile>, in_size: usize) -> Result<Self, ModelError> {
        let shape_of = |name: &str| -> Result<Vec<u64>, ModelError> {
            file.tensor(name)
                .map(|t| t.shape().to_vec())
                .ok_or_else(|| ModelError::MissingTensor {
                    path: file.path().to_owned(),
                    name: name.to_owned(),
                })
        };
        let out = shape_of("mm.0.weight")?.get(1).copied().unwrap_or(0);
        let load = |name: &str, shape: &[u64]| -> Result<B::Weight, ModelError> {
            crate::llama::check_shape(file, name, shape)?;
            Ok(backend.load_weight(file, name)?)
        };
        let w0 = (
            load("mm.0.weight", &[in_size as u64, out])?,
            load("mm.0.bias", &[out])?,
        );
        if file.tensor("mm.2.weight").is_none() {
            return Ok(Projector::Linear {
                w0,
                out: out as usize,
            });
        }
        let w2 = (
            load("mm.2.weight", &[out, out])?,
            load("mm.2.bias", &[out])?,
        );
        Ok(Projector::Mlp2xGelu {
            w0,
            w2,
            out: out as usize,
        })
    }

    /// Width of the embeddings it produces (the LLM's hidden size).
    pub fn output_size(&self) -> usize {
        match self {
            Projector::Mlp2xGelu { out, .. } | Projector::Linear { out, .. } => *out,
        }
    }

    /// Projects `x`, one row of tower features per patch, to one LLM embedding per row.
    pub fn forward(&self, backend: &B, x: &B::Tensor) -> B::Tensor {
        let linear = |x: &B::Tensor, w: &(B::Weight, B::Weight)| {
            backend.add_bias(backend.matmul(x, &w.0), &w.1)
        };
        match self {
            Projector::Linear { w0, .. } => linear(x, w0),
            Projector::Mlp2xGelu { w0, w2, .. } => linear(&backend.gelu(linear(x, w0)), w2),
        }
    }
}
