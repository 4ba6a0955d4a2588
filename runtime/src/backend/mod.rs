//! The tensor operations a LLaMA or CLIP forward pass needs, behind one trait, so the models are
//! written once and run on the CPU or a GPU (DESIGN.md, decision 4).
//!
//! Activations are row-major 2-D f32 matrices `[rows, cols]`: one row per token (or image
//! patch). Weights are GGUF tensors in their stored type; a matmul weight `[in, out]` in ggml
//! order is `out` rows of `in` elements, and `matmul(x, w)` computes `x · wᵀ`, as ggml's
//! `mul_mat(w, x)` does.

use std::sync::Arc;

use crate::gguf::{GgufFile, Tensor};
use crate::quant::GgmlType;

pub mod any;
pub mod cpu;
#[cfg(feature = "gpu")]
pub mod gpu;
#[doc(hidden)]
pub mod reference;

pub use any::AnyBackend;
pub use cpu::CpuBackend;

/// A weight could not be loaded, or the device failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The file has no tensor of that name.
    #[error("{}: tensor {name:?} is missing", path.display())]
    MissingTensor {
        /// The GGUF file.
        path: std::path::PathBuf,
        /// The tensor asked for.
        name: String,
    },
    /// The tensor's type has no kernels in this backend, or its data is not aligned for the
    /// backend to read its blocks in place.
    #[error("{}: tensor {name:?} has type {ty}, which llava-edge cannot compute with", path.display())]
    UnsupportedType {
        /// The GGUF file.
        path: std::path::PathBuf,
        /// The tensor.
        name: String,
        /// Its type.
        ty: GgmlType,
    },
    /// A tensor cannot be viewed as a matrix with rows of `row_len` elements: `row_len` is zero,
    /// not a whole number of the tensor's own rows (`ne[0]`), or does not divide its element
    /// count.
    #[error("{}: tensor {name:?} of shape {shape:?} cannot be used as rows of {row_len}", path.display())]
    BadReshape {
        /// The GGUF file.
        path: std::path::PathBuf,
        /// The tensor.
        name: String,
        /// Its shape, in ggml order.
        shape: Vec<u64>,
        /// The row length asked for, in elements.
        row_len: usize,
    },
    /// The device could not do what was asked: out of memory, lost, or an internal error. A
    /// backend that records ops and runs them later reports it where results are read.
    #[error("{backend}: {message}")]
    Device {
        /// The backend's name, e.g. `cpu`.
        backend: &'static str,
        /// What the device reported.
        message: String,
    },
}

/// Tensor `name` of `file` and its index, or [`BackendError::MissingTensor`]: how every
/// backend's `load_weight` starts.
pub(crate) fn find_tensor<'f>(
    file: &'f GgufFile,
    name: &str,
) -> Result<(usize, Tensor<'f>), BackendError> {
    let index = file
        .tensor_index(name)
        .ok_or_else(|| BackendError::MissingTensor {
            path: file.path().to_owned(),
            name: name.to_owned(),
        })?;
    Ok((index, file.tensor_at(index).expect("index from the file")))
}

/// `[row_len, rows]`: tensor `name` of `shape` viewed as rows of `row_len` elements, for
/// `load_matrix`. The new rows must be whole original rows, so every quantization block stays
/// inside one row; else [`BackendError::BadReshape`].
pub(crate) fn matrix_shape(
    file: &GgufFile,
    name: &str,
    shape: &[u64],
    row_len: usize,
) -> Result<[u64; 2], BackendError> {
    let n: u64 = shape.iter().product();
    let ne0 = shape.first().copied().unwrap_or(1);
    if row_len == 0 || !(row_len as u64).is_multiple_of(ne0) || !n.is_multiple_of(row_len as u64) {
        return Err(BackendError::BadReshape {
            path: file.path().to_owned(),
            name: name.to_owned(),
            shape: shape.to_vec(),
            row_len,
        });
    }
    Ok([row_len as u64, n / row_len as u64])
}

/// How the KV cache stores keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// Exact: what the model computed.
    F32,
    /// Half the memory and half the bytes read per decode step, as llama.cpp's default cache
    /// (keys and values rounded to nearest-even f16; their magnitudes are far inside its range).
    #[default]
    F16,
}

impl KvType {
    /// The name `--kv-type` accepts.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }
}

impl std::str::FromStr for KvType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            _ => Err(format!("unknown KV cache type {s:?} (known: f16, f32)")),
        }
    }
}

/// Head layout of an attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    /// Number of query heads.
    pub n_heads: usize,
    /// Grouped-query attention: `n_heads / n_kv_heads` query heads share one K/V head.
    pub n_kv_heads: usize,
    /// Elements per head, for queries, keys and values alike.
    pub head_dim: usize,
}

/// Rotary position embedding in ggml's NORM mode: adjacent pairs `(2i, 2i+1)` rotate by
/// `pos · freq_scale · base^(-2i/n_rot)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// Number of leading dimensions of each head that rotate (at most `head_dim`, even); the rest
    /// pass through unchanged.
    pub n_rot: usize,
    /// The frequency base θ (`rope_theta`, e.g. 10000).
    pub base: f32,
    /// Linear scaling: positions are multiplied by this (1 / scaling factor).
    pub freq_scale: f32,
}

/// Tensor operations. Every method is a pure function of its inputs except the KV cache, which
/// `attention_cached` updates.
///
/// The ops return tensors, not results: a backend may record them and run them later (a GPU
/// command encoder), so the failures of the device (out of memory, a lost device) surface where
/// results are read back, [`Backend::download`], or where memory is set aside for a long time,
/// [`Backend::new_kv_cache`]. Shape mismatches between the ops' operands are the caller's bugs
/// and may panic. A backend is used from one thread at a time; nothing here needs `Sync`.
pub trait Backend {
    /// A 2-D f32 activation matrix.
    type Tensor;
    /// A GGUF tensor, ready to compute with.
    type Weight;
    /// Keys and values of earlier positions, for every layer.
    type KvCache;

    /// The backend's name in messages and reports ("cpu", "wgpu").
    fn name(&self) -> &'static str;

    /// Loads a tensor of `file`, checking that it exists and that its type can be computed with.
    fn load_weight(&self, file: &Arc<GgufFile>, name: &str) -> Result<Self::Weight, BackendError>;
    /// Loads a tensor of any rank as a matrix with rows of `row_len` elements: its leading
    /// dimensions merged (e.g. a conv kernel `[kw, kh, c_in, c_out]` as `[kw·kh·c_in, c_out]`).
    /// `row_len` must be a whole number of the tensor's own rows.
    fn load_matrix(
        &self,
        file: &Arc<GgufFile>,
        name: &str,
        row_len: usize,
    ) -> Result<Self::Weight, BackendError>;

    /// A tensor of `rows × cols` values, row-major.
    fn upload(&self, data: Vec<f32>, rows: usize, cols: usize) -> Self::Tensor;
    /// The values of `t`, row-major: the point where the work recorded so far must finish, so
    /// where a device's failure is reported.
    fn download(&self, t: &Self::Tensor) -> Result<Vec<f32>, BackendError>;
    /// `(rows, cols)`.
    fn shape(&self, t: &Self::Tensor) -> (usize, usize);

    /// Rows `start..start + len` of `x`.
    fn slice_rows(&self, x: &Self::Tensor, start: usize, len: usize) -> Self::Tensor;
    /// The rows of `parts`, one after another (all with the same number of columns).
    fn concat_rows(&self, parts: &[&Self::Tensor]) -> Self::Tensor;
    /// Rows `rows` of `x`, in that order (a row may be taken several times): LLaVA-1.6 lays
    /// out an image's views and newlines this way (`AnyresLayout::row_indices`).
    fn gather_rows(&self, x: &Self::Tensor, rows: &[u32]) -> Self::Tensor;

    /// Rows `ids` of an embedding table `[dim, n_rows]`, as f32.
    fn get_rows(&self, table: &Self::Weight, ids: &[u32]) -> Self::Tensor;
    /// `x · wᵀ`: `x` is `[rows, in]`, `w` is `[in, out]` in ggml order; the result `[rows, out]`.
    fn matmul(&self, x: &Self::Tensor, w: &Self::Weight) -> Self::Tensor;
    /// `a + b`, elementwise, same shapes. `a` is consumed: a backend may write the result over
    /// it (the elementwise ops below take their first operand the same way, since it is
    /// almost always dead after the op: no copy, and one tensor less alive at once).
    fn add(&self, a: Self::Tensor, b: &Self::Tensor) -> Self::Tensor;
    /// Adds a bias vector `[cols]` to every row (consuming `x`).
    fn add_bias(&self, x: Self::Tensor, bias: &Self::Weight) -> Self::Tensor;
    /// Root-mean-square norm of each row, times `weight`.
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Weight, eps: f32) -> Self::Tensor;
    /// Layer norm of each row, times `weight`, plus `bias`.
    fn layer_norm(
        &self,
        x: &Self::Tensor,
        weight: &Self::Weight,
        bias: &Self::Weight,
        eps: f32,
    ) -> Self::Tensor;
    /// Rotates each head of each row; row `r` is at position `start + r` (a prompt's or a
    /// decode step's rows are always consecutive positions).
    fn rope(&self, x: &Self::Tensor, start: usize, n_heads: usize, rope: Rope) -> Self::Tensor;
    /// `silu(gate) · up` (consuming `gate`).
    fn silu_mul(&self, gate: Self::Tensor, up: &Self::Tensor) -> Self::Tensor;
    /// GELU, exact (erf) form, as PyTorch's `nn.GELU()` (consuming `x`).
    fn gelu(&self, x: Self::Tensor) -> Self::Tensor;
    /// `x · sigmoid(1.702 x)`, CLIP's activation (consuming `x`).
    fn quick_gelu(&self, x: Self::Tensor) -> Self::Tensor;

    /// A cache for `n_layers` layers of `n_ctx` positions, storing `kv_type`. Fails when the
    /// device cannot hold it.
    fn new_kv_cache(
        &self,
        n_layers: usize,
        n_ctx: usize,
        n_kv_heads: usize,
        head_dim: usize,
        kv_type: KvType,
    ) -> Result<Self::KvCache, BackendError>;
    /// Causal attention of `q` (rows at positions `start..start + rows`) over the cached
    /// positions `0..start` and the new `k`, `v`, which are stored in `layer` of the cache.
    /// Scale `1/sqrt(head_dim)`. `q` is `[rows, n_heads·head_dim]`, `k`/`v`
    /// `[rows, n_kv_heads·head_dim]`; the result is `[rows, n_heads·head_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn attention_cached(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        cache: &mut Self::KvCache,
        layer: usize,
        start: usize,
        heads: Heads,
    ) -> Self::Tensor;
    /// Attention of every row to every row, no mask, scale `1/sqrt(head_dim)` (the CLIP tower).
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        heads: Heads,
    ) -> Self::Tensor;
}
