//! Errors of the tokenizer: a GGUF file whose `tokenizer.*` metadata cannot be used, or an id
//! outside the vocabulary. Each names the file and the key at fault.

use std::path::PathBuf;

use crate::gguf::GgufError;

/// A tokenizer could not be built from a GGUF file, or a token id could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A key is missing or has the wrong type; the GGUF error names file and key.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The keys are present but their content cannot make a tokenizer.
    #[error("{}: {problem}", path.display())]
    Vocab {
        /// The GGUF file.
        path: PathBuf,
        /// What is wrong with its vocabulary metadata.
        problem: VocabError,
    },
    /// A token id given to the decoder is not in the vocabulary.
    #[error("token id {id} is out of range: the vocabulary has {n_vocab} tokens")]
    TokenOutOfRange {
        /// The id given.
        id: u32,
        /// Number of tokens in the vocabulary.
        n_vocab: usize,
    },
}

/// What is wrong with the vocabulary metadata.
#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    /// `tokenizer.ggml.model` names a tokenizer other than `llama` (SentencePiece) or `gpt2`
    /// (byte-level BPE); holds the name.
    #[error("tokenizer.ggml.model = {0:?} is not supported (only \"llama\" and \"gpt2\")")]
    UnknownModel(String),
    /// `tokenizer.ggml.pre` names a BPE pre-tokenizer this crate does not implement; holds the
    /// name.
    #[error(
        "tokenizer.ggml.pre = {0:?} is not a supported pre-tokenizer \
         (\"default\", \"gpt2\", \"gpt-2\", \"llama-bpe\", \"llama3\", \"llama-v3\")"
    )]
    UnknownPreTokenizer(String),
    /// `tokenizer.ggml.tokens` has no entries.
    #[error("tokenizer.ggml.tokens is empty")]
    EmptyVocab,
    /// `tokenizer.ggml.tokens` has more entries than a u32 id can number; holds the count.
    #[error("tokenizer.ggml.tokens has {0} entries, more than token ids (u32) can address")]
    VocabTooLarge(usize),
    /// A per-token array (scores, token types) does not have one entry per token.
    #[error("{key} has {len} entries but tokenizer.ggml.tokens has {n_tokens}")]
    LengthMismatch {
        /// The array's key.
        key: &'static str,
        /// Its number of entries.
        len: usize,
        /// Number of entries in `tokenizer.ggml.tokens`.
        n_tokens: usize,
    },
    /// A `tokenizer.ggml.token_type` entry outside 0..=6.
    #[error("tokenizer.ggml.token_type[{index}] = {value} is not a token type (0..=6)")]
    BadTokenType {
        /// The token id (the entry's index).
        index: usize,
        /// The value read.
        value: i32,
    },
    /// A SentencePiece token of type byte whose text is not `<0xXX>`.
    #[error("token {id} {text:?} has type byte but is not of the form <0xXX>")]
    BadByteToken {
        /// The token id.
        id: u32,
        /// Its text.
        text: String,
    },
    /// A `tokenizer.ggml.merges` entry that is not two pieces separated by a space.
    #[error("tokenizer.ggml.merges[{index}] = {entry:?} is not two pieces separated by a space")]
    BadMerge {
        /// The entry's index, which is also its merge rank.
        index: usize,
        /// The entry.
        entry: String,
    },
    /// A special-token id key names an id outside the vocabulary.
    #[error("{key} = {id} is out of range: the vocabulary has {n_vocab} tokens")]
    SpecialIdOutOfRange {
        /// The key, e.g. `tokenizer.ggml.bos_token_id`.
        key: &'static str,
        /// The id it holds.
        id: u32,
        /// Number of tokens in the vocabulary.
        n_vocab: usize,
    },
    /// `tokenizer.ggml.add_bos_token` or `add_eos_token` is true (given or by the model's default),
    /// but no BOS or EOS id is known.
    #[error("{key} is set but the token id it needs is absent")]
    MissingSpecialToken {
        /// The `add_*_token` key.
        key: &'static str,
    },
}
