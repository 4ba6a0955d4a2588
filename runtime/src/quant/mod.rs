//! ggml block formats: layouts, reference quantizers, dequantizers and dot products.
//!
//! One file per family. Each format is a `#[repr(C)]` block struct implementing [`BlockFormat`]
//! (and [`VecDot`] for weight formats), whose scalar code is the reference: byte-identical to
//! ggml's `quantize_row_*_reference` and `dequantize_row_*`. SIMD kernels, when they come, live in
//! `x86.rs` / `arm.rs` beside these and are tested against them (DESIGN.md, decision 5).

mod ggml_type;

pub use ggml_type::GgmlType;

/// A ggml block format: `BLOCK_SIZE` elements stored in one `Self`.
pub trait BlockFormat: bytemuck::Pod + Send + Sync + 'static {
    const TYPE: GgmlType;
    const BLOCK_SIZE: usize = Self::TYPE.block_size();

    /// ggml's reference quantizer (no importance matrix). `src.len()` must equal
    /// `dst.len() * BLOCK_SIZE`.
    fn quantize_row(src: &[f32], dst: &mut [Self]);

    /// Expand blocks back to f32, bit-exact with ggml. `dst.len()` must equal
    /// `src.len() * BLOCK_SIZE`.
    fn dequantize_row(src: &[Self], dst: &mut [f32]);
}

/// A weight format and the activation format ggml pairs it with for matmul
/// (GGUF-AND-LLAVA.md §2.4): Q4_0·Q8_0, Q4_1·Q8_1, Q4_K·Q8_K, F16·F16, ...
pub trait VecDot: BlockFormat {
    type Activation: BlockFormat;

    /// Scalar reference dot product of one row of weights with one row of activations of the
    /// same length in elements.
    fn vec_dot(weights: &[Self], activations: &[Self::Activation]) -> f32;
}
