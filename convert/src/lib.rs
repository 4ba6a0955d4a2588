//! llava-convert: Hugging Face LLaVA checkpoints to llama.cpp-compatible GGUF files, and GGUF
//! requantization. Filled in by the converter issue; it builds on `llava_runtime::gguf::GgufWriter`
//! and `llava_runtime::quant`.
