//! llava-models: the networks (LLaMA decoder, CLIP vision tower, projector) and the LLaVA
//! pipeline, written once against the runtime's [`Backend`](llava_runtime::backend::Backend)
//! trait. See DESIGN.md for the planned files.

pub mod anyres;
pub mod clip;
mod error;
pub mod generate;
pub mod image;
pub mod llama;
pub mod llava;
pub mod projector;
pub mod template;

pub use clip::{Clip, ClipConfig};
pub use error::ModelError;
pub use generate::{generate, GenerationStats, StopReason};
pub use llama::{Llama, LlamaConfig};
