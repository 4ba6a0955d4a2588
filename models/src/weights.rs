//! Weights as the networks hold them: each loaded with its shape checked against what the
//! configuration says, and the linear and norm layers they are grouped into.

use std::sync::Arc;

use llava_runtime::backend::Backend;
use llava_runtime::gguf::GgufFile;

use crate::error::ModelError;

/// Checks that `file` holds tensor `name` with shape `expected` (ggml order, `ne[0]` first).
pub(crate) fn check_shape(file: &GgufFile, name: &str, expected: &[u64]) -> Result<(), ModelError> {
    let t = file.tensor(name).ok_or_else(|| ModelError::MissingTensor {
        path: file.path().to_owned(),
        name: name.to_owned(),
    })?;
    if t.shape() != expected {
        return Err(ModelError::WrongShape {
            path: file.path().to_owned(),
            name: name.to_owned(),
            shape: t.shape().to_vec(),
            expected: expected.to_vec(),
        });
    }
    Ok(())
}

/// Tensor `name` of `file` on `backend`, after [`check_shape`].
pub(crate) fn load<B: Backend>(
    backend: &B,
    file: &Arc<GgufFile>,
    name: &str,
    shape: &[u64],
) -> Result<B::Weight, ModelError> {
    check_shape(file, name, shape)?;
    Ok(backend.load_weight(file, name)?)
}

/// A linear layer with a bias: `x · weightᵀ + bias`.
pub struct Linear<B: Backend> {
    /// `[in, out]` in ggml order.
    pub weight: B::Weight,
    /// `[out]`.
    pub bias: B::Weight,
}

impl<B: Backend> Linear<B> {
    /// `{base}.weight` of shape `[n_in, n_out]` and `{base}.bias` of `[n_out]`.
    pub(crate) fn load(
        backend: &B,
        file: &Arc<GgufFile>,
        base: &str,
        n_in: u64,
        n_out: u64,
    ) -> Result<Self, ModelError> {
        Ok(Linear {
            weight: load(backend, file, &format!("{base}.weight"), &[n_in, n_out])?,
            bias: load(backend, file, &format!("{base}.bias"), &[n_out])?,
        })
    }

    /// `x · weightᵀ + bias`, `[rows, in]` to `[rows, out]`.
    pub fn forward(&self, backend: &B, x: &B::Tensor) -> B::Tensor {
        backend.add_bias(backend.matmul(x, &self.weight), &self.bias)
    }
}

/// A layer norm's scale and shift.
pub struct LayerNorm<B: Backend> {
    /// `[width]`, the scale.
    pub weight: B::Weight,
    /// `[width]`, the shift.
    pub bias: B::Weight,
}

impl<B: Backend> LayerNorm<B> {
    /// `{base}.weight` and `{base}.bias`, both `[width]`.
    pub(crate) fn load(
        backend: &B,
        file: &Arc<GgufFile>,
        base: &str,
        width: u64,
    ) -> Result<Self, ModelError> {
        Ok(LayerNorm {
            weight: load(backend, file, &format!("{base}.weight"), &[width])?,
            bias: load(backend, file, &format!("{base}.bias"), &[width])?,
        })
    }

    /// Each row of `x` normalised, scaled and shifted.
    pub fn forward(&self, backend: &B, x: &B::Tensor, eps: f32) -> B::Tensor {
        backend.layer_norm(x, &self.weight, &self.bias, eps)
    }
}
