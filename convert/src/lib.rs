//! llava-convert: Hugging Face checkpoints to llama.cpp-compatible GGUF files.
//!
//! Today: LLaMA-architecture LLMs (`convert_llama`). The LLaVA checkpoints, mmproj files,
//! quantization mixes and requantization come with the converter issue.

mod error;
mod hf_config;
pub mod llama;
mod mix;
mod safetensors;
mod vocab;

pub use error::ConvertError;
pub use llama::{convert_llama, ConvertSummary, LlamaHparams};
pub use mix::{use_more_bits, Preset};
