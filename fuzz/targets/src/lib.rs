//! The bodies of llava-edge's fuzz targets: one function per target, each taking arbitrary
//! bytes. None may panic, abort, hang or allocate without bound on any input; errors are the
//! expected outcome of most inputs and are dropped. Where a target can check more than "no
//! panic" (a decoder that must give back what was encoded, counts that must agree), it
//! asserts it, so a wrong answer is a crash too.
//!
//! `fuzz/` wraps each function in a cargo-fuzz binary (nightly); `tests/replay.rs` runs every
//! committed input under `fuzz/regressions/` and `fuzz/seeds/` through them on stable, in CI.
//! See fuzz/README.md.

mod convert;
mod fixtures;
mod gguf;
mod image;
pub mod input;
mod model;
mod prompt;
mod spm;
mod tokenizer;
mod torch;

pub use convert::{convert_inputs, CHECKPOINT_FILES};
pub use gguf::gguf_reader;
pub use image::image_preprocess;
pub use model::{llm_load, mmproj_load};
pub use prompt::prompt_splice;
pub use spm::spm_model;
pub use tokenizer::tokenizer;
pub use torch::torch_bin;

/// A target's body: any bytes in, nothing out.
pub type Target = fn(&[u8]);

/// Every target by the name of its cargo-fuzz binary and of its input directories.
pub const TARGETS: [(&str, Target); 9] = [
    ("gguf_reader", gguf_reader),
    ("llm_load", llm_load),
    ("mmproj_load", mmproj_load),
    ("convert_inputs", convert_inputs),
    ("spm_model", spm_model),
    ("image_preprocess", image_preprocess),
    ("tokenizer", tokenizer),
    ("prompt_splice", prompt_splice),
    ("torch_bin", torch_bin),
];
