//! llava-models: the networks (LLaMA decoder, CLIP vision tower, projector) and the LLaVA
//! pipeline, written once against the runtime's [`Backend`](llava_runtime::backend::Backend)
//! trait.
//!
//! Start at [`Pipeline`]: it loads an LLM and its vision tower ("mmproj") with every check
//! that they work together, and its [`Session`]s answer questions about images, turn after
//! turn. The modules below are the parts it is made of, for front ends that need them alone
//! (benchmarks, parity tests).
#![warn(missing_docs)]

pub mod anyres;
pub mod clip;
mod error;
pub mod generate;
pub mod image;
pub mod image_cache;
pub mod llama;
pub mod llava;
mod picture;
mod pipeline;
pub mod projector;
mod session;
pub mod template;
pub mod weights;

pub use clip::{Clip, ClipConfig};
pub use error::ModelError;
pub use generate::{GenerationStats, PrefillStats, StopReason};
pub use llama::{Llama, LlamaConfig};
#[doc(hidden)]
pub use picture::{largest_picture, Picture};
pub use pipeline::{
    available_memory, Error, GenerateOptions, LoadOptions, Pipeline, DEFAULT_CTX_CAP,
    DEFAULT_IMAGE_CACHE_BYTES,
};
pub use session::{Session, Stage, TurnStats};
