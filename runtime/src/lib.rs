//! llava-runtime: executes tensors from GGUF files. It knows nothing about LLaVA.
//!
//! - [`backend`]: the tensor operations models are written against, and the CPU backend.
//! - [`files`]: inputs and outputs must be regular files (checked before opening).
//! - [`gguf`]: the memory-mapped, bounds-checked reader and the streaming writer.
//! - [`quant`]: ggml block formats with reference quantizers, dequantizers and dot products.
//! - [`tokenizer`]: SentencePiece and byte-level BPE tokenizers from GGUF metadata.
//! - [`sample`]: logits to a token (greedy, temperature, top-k/p, min-p, penalties, seed).
//! - [`rng`]: SplitMix64, the one deterministic generator (sampling, random weights, tests).
//! - [`staging`]: output files written under a temporary name and renamed into place.
#![warn(missing_docs)]

pub mod backend;
pub mod files;
pub mod gguf;
pub mod quant;
pub mod rng;
pub mod sample;
pub mod staging;
pub mod tokenizer;
