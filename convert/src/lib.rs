//! llava-convert: Hugging Face checkpoints to llama.cpp-compatible GGUF files.
//!
//! Today: LLaMA-architecture LLMs (`convert_llama`) with llama.cpp's quantization presets
//! (`Preset`), and random-weight models of real shapes for benchmarks (`synth_llm`). The LLaVA
//! checkpoints, mmproj files and requantization come with the converter issue.

mod error;
mod hf_config;
pub mod llama;
mod mix;
mod mmproj;
mod safetensors;
pub mod source;
pub mod synth;
mod vocab;

pub use error::ConvertError;
pub use llama::{convert_llama, ConvertSummary, LlamaHparams};
pub use mix::{use_more_bits, Preset};
pub use mmproj::{convert_mmproj, VisionHparams};
pub use source::ModelKind;
pub use synth::{synth_llm, SynthModel};
