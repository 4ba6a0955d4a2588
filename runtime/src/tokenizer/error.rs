//! Errors of the tokenizer: a GGUF file whose `tokenizer.*` metadata cannot be used, or an id
//! outside the vocabulary. Each names the file and the key at fault.

use std::path::PathBuf;

use crate::gguf::GgufError;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A key is missing or has the wrong type; the GGUF error names file and key.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The keys are present but their content cannot make a tokenizer.
    #[error("{}: {problem}", path.display())]
    Vocab { path: PathBuf, problem: VocabError },
    /// A token id given to the decoder is not in the vocabulary.
    #[error("token id {id} is out of range: the vocabulary has {n_vocab} tokens")]
    TokenOutOfRange { id: u32, n_vocab: usize },
}

/// What is wrong with the vocabulary metadata.
#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    #[error("tokenizer.ggml.model = {0:?} is not supported (only \"llama\" and \"gpt2\")")]
    UnknownModel(String),
    #[error(
        "tokenizer.ggml.pre = {0:?} is not a supported pre-tokenizer \
         (\"default\", \"gpt2\", \"gpt-2\", \"llama-bpe\", \"llama3\", \"llama-v3\")"
    )]
    UnknownPreTokenizer(String),
    #[error("tokenizer.ggml.tokens is empty")]
    EmptyVocab,
    #[error("tokenizer.ggml.tokens has {0} entries, more than token ids (u32) can address")]
    VocabTooLarge(usize),
    #[error("{key} has {len} entries but tokenizer.ggml.tokens has {n_tokens}")]
    LengthMismatch {
        key: &'static str,
        len: usize,
        n_tokens: usize,
    },
    #[error("tokenizer.ggml.token_type[{index}] = {value} is not a token type (0..=6)")]
    BadTokenType { index: usize, value: i32 },
    #[error("token {id} {text:?} has type byte but is not of the form <0xXX>")]
    BadByteToken { id: u32, text: String },
    #[error("tokenizer.ggml.merges[{index}] = {entry:?} is not two pieces separated by a space")]
    BadMerge { index: usize, entry: String },
    #[error("{key} = {id} is out of range: the vocabulary has {n_vocab} tokens")]
    SpecialIdOutOfRange {
        key: &'static str,
        id: u32,
        n_vocab: usize,
    },
    #[error("{key} is set but the token id it needs is absent")]
    MissingSpecialToken { key: &'static str },
}
