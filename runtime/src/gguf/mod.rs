//! GGUF files: a zero-copy, bounds-checked reader and a streaming writer.
