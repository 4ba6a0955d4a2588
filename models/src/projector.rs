//! The LLaVA projector from CLIP patch features to LLM embeddings: `mlp2x_gelu`
//! (Linear → exact erf GELU → Linear, PyTorch's `nn.GELU()`) or a single `linear` layer.

use std::sync::Arc;

use llava_runtime::backend::Backend;
use llava_runtime::gguf::GgufFile;

use crate::error::ModelError;
use crate::weights::Linear;

/// The projector of an mmproj file, by its layout in the file.
pub enum Projector<B: Backend> {
    /// LLaVA's `mlp2x_gelu`: `mm.0`, exact GELU, `mm.2`.
    Mlp2xGelu {
        /// `mm.0`: `[in, out]`.
        w0: Linear<B>,
        /// `mm.2`: `[out, out]`.
        w2: Linear<B>,
        /// Width of the output embeddings.
        out: usize,
    },
    /// A single linear layer, `mm.0`, for files without `mm.2`.
    Linear {
        /// `mm.0`: `[in, out]`.
        w0: Linear<B>,
        /// Width of the output embeddings.
        out: usize,
    },
}

impl<B: Backend> Projector<B> {
    /// `mm.0` (and `mm.2` for the MLP) of an mmproj file; `in_size` is the tower's width.
    pub fn load(backend: &B, file: &Arc<GgufFile>, in_size: usize) -> Result<Self, ModelError> {
        let out = file
            .tensor("mm.0.weight")
            .ok_or_else(|| ModelError::MissingTensor {
                path: file.path().to_owned(),
                name: "mm.0.weight".to_owned(),
            })?
            .shape()
            .get(1)
            .copied()
            .unwrap_or(0);
        let w0 = Linear::load(backend, file, "mm.0", in_size as u64, out)?;
        if file.tensor("mm.2.weight").is_none() {
            return Ok(Projector::Linear {
                w0,
                out: out as usize,
            });
        }
        let w2 = Linear::load(backend, file, "mm.2", out, out)?;
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
        match self {
            Projector::Linear { w0, .. } => w0.forward(backend, x),
            Projector::Mlp2xGelu { w0, w2, .. } => {
                w2.forward(backend, &backend.gelu(w0.forward(backend, x)))
            }
        }
    }
}
