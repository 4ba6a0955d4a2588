//! llava-convert: Hugging Face checkpoints to llama.cpp-compatible GGUF files.
//!
//! LLaMA-architecture LLMs (`convert_llama`) with llama.cpp's quantization presets (`Preset`),
//! LLaVA vision towers and projectors as mmproj files (`convert_mmproj`), requantization of
//! existing GGUF files (`requantize`), and random-weight models of real shapes for benchmarks
//! (`synth_llm`).
#![warn(missing_docs)]

mod clip;
mod error;
mod hf_config;
pub mod llama;
mod mapped;
mod mix;
mod mmproj;
mod progress;
mod quantize;
mod random;
mod requantize;
mod safetensors;
pub mod source;
mod spm_model;
pub mod synth;
mod torch_bin;
mod vocab;

pub use clip::VisionHparams;
pub use error::ConvertError;
pub use llama::{convert_llama, convert_llama_with, ConvertSummary, LlamaHparams};
pub use mix::{use_more_bits, Preset};
pub use mmproj::{
    check_mmproj, convert_mmproj, convert_mmproj_with, MAX_PINPOINTS, MAX_TILES_PER_SIDE,
};
pub use progress::{Monitor, Silent, TensorDone};
pub use requantize::{requantize, requantize_with};
pub use source::ModelKind;
pub use spm_model::{Piece, SpmModel};
pub use synth::{synth_llm, synth_mmproj, SynthModel};
/// PyTorch `torch.save` archives, as the converter reads `pytorch_model*.bin` (for the fuzz
/// target and tests).
#[doc(hidden)]
pub use torch_bin::{read_state_dict as read_torch_state_dict, TorchTensor};
