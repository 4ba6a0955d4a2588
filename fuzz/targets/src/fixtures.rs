//! What targets share and build once per process: the CPU backend and the tokenizers of the
//! repository's vocabulary fixtures (tests/fixtures/vocab, llama.cpp's vocab-only GGUF files).

use std::sync::OnceLock;

use llava_runtime::backend::CpuBackend;
use llava_runtime::gguf::GgufFile;
use llava_runtime::tokenizer::Tokenizer;

const VOCAB_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/vocab");

/// The fixture vocabularies: SentencePiece (LLaMA-2, the LLaVA LLMs), byte-level BPE with the
/// LLaMA-3 and the GPT-2 pre-tokenizers.
pub const VOCABS: [&str; 3] = [
    "ggml-vocab-llama-spm",
    "ggml-vocab-llama-bpe",
    "ggml-vocab-gpt-2",
];

/// The tokenizer of `VOCABS[index]`.
pub fn tokenizer(index: usize) -> &'static Tokenizer {
    static TOKENIZERS: [OnceLock<Tokenizer>; 3] = [const { OnceLock::new() }; 3];
    TOKENIZERS[index].get_or_init(|| {
        let path = format!("{VOCAB_DIR}/{}.gguf", VOCABS[index]);
        let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("fixture: {e}"));
        Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("fixture: {e}"))
    })
}

/// One worker: a fuzzer runs one input at a time, and a pool per input would dominate.
pub fn backend() -> &'static CpuBackend {
    static BACKEND: OnceLock<CpuBackend> = OnceLock::new();
    BACKEND.get_or_init(|| CpuBackend::new(1))
}
