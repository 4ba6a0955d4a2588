//! Tokenizers built from a GGUF file's `tokenizer.*` metadata, with llama.cpp's semantics
//! (llama-vocab.cpp): SentencePiece for `tokenizer.ggml.model = "llama"` (LLaMA-2, Vicuna,
//! Mistral: the LLaVA LLMs) and byte-level BPE for `"gpt2"` (GPT-2, LLaMA-3).
//!
//! - `vocab`: token table, scores and types.
//! - `partition`: special tokens typed in the text are cut out first.
//! - `spm` / `bpe` (with `pretokenize`): the two merge algorithms.
//! - `decode`: pieces and the streaming, UTF-8-safe detokenizer.
//!
//! The metadata keys are in ../shared/reference/GGUF-AND-LLAVA.md §3. Parity with llama.cpp is
//! proven on its vocabulary test vectors (runtime/tests/tokenizer_vocab.rs).

mod bpe;
mod decode;
mod error;
mod partition;
mod pretokenize;
mod spm;
mod vocab;

pub use bpe::byte_to_char;
pub use decode::StreamDecoder;
pub use error::{TokenizerError, VocabError};
pub use pretokenize::PreTokenizerKind;
pub use vocab::TokenType;

use std::collections::HashSet;

use crate::gguf::GgufFile;
use bpe::{Bpe, KEY_MERGES};
use decode::Pieces;
use partition::Fragment;
use pretokenize::PreTokenizer;
use spm::{Spm, ESCAPED_SPACE};
use vocab::{LoadError, Vocab};

/// Which tokenizer algorithm: `llama` (SentencePiece) or `gpt2` (byte-level BPE).
pub const KEY_MODEL: &str = "tokenizer.ggml.model";
/// Which BPE pre-tokenizer pattern; see [`PreTokenizerKind::from_name`].
pub const KEY_PRE: &str = "tokenizer.ggml.pre";
/// Beginning-of-sequence token id.
pub const KEY_BOS_ID: &str = "tokenizer.ggml.bos_token_id";
/// End-of-sequence token id.
pub const KEY_EOS_ID: &str = "tokenizer.ggml.eos_token_id";
/// The id of the unknown token, which SentencePiece emits for text it cannot spell.
pub const KEY_UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
/// Padding token id.
pub const KEY_PAD_ID: &str = "tokenizer.ggml.padding_token_id";
/// llama.cpp's own spelling.
pub const KEY_SEP_ID: &str = "tokenizer.ggml.seperator_token_id";
/// End-of-turn token id (LLaMA-3 `<|eot_id|>`).
pub const KEY_EOT_ID: &str = "tokenizer.ggml.eot_token_id";
/// End-of-message token id (LLaMA-3.1 `<|eom_id|>`).
pub const KEY_EOM_ID: &str = "tokenizer.ggml.eom_token_id";
/// Whether encoding with special tokens starts with BOS.
pub const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
/// Whether encoding with special tokens ends with EOS.
pub const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
/// Whether SentencePiece puts a space before the text it encodes.
pub const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

/// Token texts that end generation whatever their metadata says (llama.cpp's `special_eog_ids`
/// heuristic: converters often record only one of a chat model's end tokens).
const EOG_TEXTS: [&str; 7] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
];

/// The tokenizer algorithm, from `tokenizer.ggml.model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// `tokenizer.ggml.model = "llama"`: SentencePiece with byte fallback.
    Spm,
    /// `tokenizer.ggml.model = "gpt2"`: byte-level BPE.
    Bpe,
}

enum Model {
    Spm(Spm),
    /// Boxed: its tables and regexes dwarf the SPM variant.
    Bpe(Box<Bpe>),
}

/// Special token ids; `None` where the file names none and the model type has no default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence. SentencePiece defaults to id 1.
    pub bos: Option<u32>,
    /// End of sequence. SentencePiece defaults to id 2.
    pub eos: Option<u32>,
    /// The unknown token. SentencePiece defaults to id 0.
    pub unk: Option<u32>,
    /// Padding.
    pub pad: Option<u32>,
    /// Separator.
    pub sep: Option<u32>,
    /// End of turn.
    pub eot: Option<u32>,
    /// End of message.
    pub eom: Option<u32>,
}

/// A SentencePiece or byte-level BPE tokenizer with llama.cpp's behaviour, built from a GGUF
/// file's `tokenizer.*` metadata.
pub struct Tokenizer {
    kind: TokenizerKind,
    model: Model,
    vocab: Vocab,
    special: SpecialTokens,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    /// Tokens that end generation: EOS, EOT, EOM and the [`EOG_TEXTS`] found in the vocabulary.
    eog: HashSet<u32>,
    /// Control, user-defined and unknown tokens, in the order text partitioning tries them.
    specials_by_length: Vec<u32>,
    pieces: Pieces,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("pre_tokenizer", &self.pre_tokenizer())
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .field("add_space_prefix", &self.add_space_prefix)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer of a GGUF file. Fails if a required key is missing or has the wrong
    /// type, or if the vocabulary, merges or special-token ids are inconsistent.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        Self::load(gguf).map_err(|e| match e {
            LoadError::Gguf(e) => TokenizerError::Gguf(e),
            LoadError::Vocab(problem) => TokenizerError::Vocab {
                path: gguf.path().to_owned(),
                problem,
            },
        })
    }

    fn load(gguf: &GgufFile) -> Result<Tokenizer, LoadError> {
        let kind = match gguf.get_str(KEY_MODEL)? {
            "llama" => TokenizerKind::Spm,
            "gpt2" => TokenizerKind::Bpe,
            other => return Err(VocabError::UnknownModel(other.to_owned()).into()),
        };
        let mut vocab = Vocab::load(gguf)?;
        let n_vocab = vocab.len();

        // Defaults as llama.cpp sets them per model type, before the keys override them.
        let mut special = SpecialTokens::default();
        let (mut add_bos, mut add_space_prefix, mut ignore_merges) = (false, false, false);
        let mut pre_kind = None;
        match kind {
            TokenizerKind::Spm => {
                let fits = |id: u32| ((id as usize) < n_vocab).then_some(id);
                special.bos = fits(1);
                special.eos = fits(2);
                special.unk = fits(0);
                add_bos = true;
                add_space_prefix = true;
            }
            TokenizerKind::Bpe => {
                let pre = vocab::optional(gguf, KEY_PRE, GgufFile::get_str)?;
                let pk = PreTokenizerKind::from_name(pre.unwrap_or("default"))?;
                if pk == PreTokenizerKind::Llama3 {
                    add_bos = true;
                    ignore_merges = true;
                }
                pre_kind = Some(pk);
            }
        }
        for (key, slot) in [
            (KEY_BOS_ID, &mut special.bos),
            (KEY_EOS_ID, &mut special.eos),
            (KEY_UNK_ID, &mut special.unk),
            (KEY_PAD_ID, &mut special.pad),
            (KEY_SEP_ID, &mut special.sep),
            (KEY_EOT_ID, &mut special.eot),
            (KEY_EOM_ID, &mut special.eom),
        ] {
            if let Some(id) = gguf.optional(key, GgufFile::get_u32)? {
                if id as usize >= n_vocab {
                    return Err(VocabError::SpecialIdOutOfRange { key, id, n_vocab }.into());
                }
                *slot = Some(id);
            }
        }
        add_bos = gguf
            .optional(KEY_ADD_BOS, GgufFile::get_bool)?
            .unwrap_or(add_bos);
        let add_eos = gguf
            .optional(KEY_ADD_EOS, GgufFile::get_bool)?
            .unwrap_or(false);
        add_space_prefix = gguf
            .optional(KEY_ADD_SPACE_PREFIX, GgufFile::get_bool)?
            .unwrap_or(add_space_prefix);
        if add_bos && special.bos.is_none() {
            return Err(VocabError::MissingSpecialToken { key: KEY_ADD_BOS }.into());
        }
        if add_eos && special.eos.is_none() {
            return Err(VocabError::MissingSpecialToken { key: KEY_ADD_EOS }.into());
        }

        let mut eog: HashSet<u32> = [special.eos, special.eot, special.eom]
            .into_iter()
            .flatten()
            .collect();
        for text in EOG_TEXTS {
            if let Some(id) = vocab.id(text) {
                eog.insert(id);
                // llama.cpp overrides the type of such tokens to control, so that they are
                // never rendered as text nor matched in text without `parse_special`.
                vocab.types[id as usize] = TokenType::Control;
            }
        }

        let model = match kind {
            TokenizerKind::Spm => {
                for (id, (text, ty)) in vocab.tokens.iter().zip(&vocab.types).enumerate() {
                    if *ty == TokenType::Byte && vocab::parse_byte_token(text).is_none() {
                        let (id, text) = (id as u32, text.clone());
                        return Err(VocabError::BadByteToken { id, text }.into());
                    }
                }
                Model::Spm(Spm::new(&vocab, special.unk))
            }
            TokenizerKind::Bpe => {
                let merges = gguf.get_str_array(KEY_MERGES)?;
                let pre = PreTokenizer::new(pre_kind.expect("set for BPE above"));
                Model::Bpe(Box::new(Bpe::new(merges, pre, ignore_merges)?))
            }
        };

        Ok(Tokenizer {
            kind,
            model,
            specials_by_length: partition::special_tokens_by_length(&vocab),
            pieces: Pieces::build(&vocab, kind),
            vocab,
            special,
            add_bos,
            add_eos,
            add_space_prefix,
            eog,
        })
    }

    /// Token ids for `text`.
    ///
    /// `add_special`: add BOS (and EOS) where the vocabulary asks for them. `parse_special`:
    /// control tokens written in the text (`<s>`, `<|eot_id|>`) become those tokens; without
    /// it they are tokenized as plain text. llama.cpp's vocabulary tests use neither.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.special.bos);
        }
        let fragments =
            partition::partition(&self.vocab, &self.specials_by_length, text, parse_special);
        // SentencePiece puts a space before text at the start and after each special token,
        // as the original tokenizer does for every sentence it encodes.
        let mut after_special = true;
        let mut escaped = String::new();
        for fragment in fragments {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(range) => {
                    let text = &text[range];
                    match &self.model {
                        Model::Spm(spm) => {
                            escaped.clear();
                            if self.add_space_prefix && after_special {
                                escaped.push_str(ESCAPED_SPACE);
                            }
                            for ch in text.chars() {
                                match ch {
                                    ' ' => escaped.push_str(ESCAPED_SPACE),
                                    c => escaped.push(c),
                                }
                            }
                            spm.tokenize(&self.vocab, &escaped, &mut out);
                        }
                        Model::Bpe(bpe) => bpe.tokenize(&self.vocab, text, &mut out),
                    }
                    after_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.special.eos);
        }
        out
    }

    /// The text of `ids`. Control tokens render as nothing unless `render_special`; a
    /// character left incomplete at the end becomes U+FFFD. See [`StreamDecoder`] for the
    /// leading-space rule.
    pub fn decode(&self, ids: &[u32], render_special: bool) -> Result<String, TokenizerError> {
        let mut decoder = self.stream_decoder().render_special(render_special);
        let mut text = String::new();
        for &id in ids {
            text.push_str(decoder.push(id)?);
        }
        text.push_str(decoder.finish());
        Ok(text)
    }

    /// A decoder for the start of a sequence; see [`StreamDecoder`].
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// The bytes token `id` stands for (llama.cpp `token_to_piece`, without lstrip): SPM "▁"
    /// as space, byte tokens as their byte, GPT-2 stand-ins as their bytes. Control and
    /// unknown tokens give their text only with `special`, else nothing. `None` if out of range.
    pub fn piece(&self, id: u32, special: bool) -> Option<&[u8]> {
        let ty = self.token_type(id)?;
        if !special && ty.is_special() {
            return Some(&[]);
        }
        Some(self.pieces.get(id))
    }

    /// Which algorithm this tokenizer runs.
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// The BPE pre-tokenizer in use; `None` for SentencePiece.
    pub fn pre_tokenizer(&self) -> Option<PreTokenizerKind> {
        match &self.model {
            Model::Spm(_) => None,
            Model::Bpe(bpe) => Some(bpe.pre_tokenizer().kind()),
        }
    }

    /// Number of tokens in the vocabulary; valid ids are `0..vocab_size()`.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// Every special token id.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// The beginning-of-sequence token id, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.special.bos
    }

    /// The end-of-sequence token id, if the vocabulary has one.
    pub fn eos(&self) -> Option<u32> {
        self.special.eos
    }

    /// Whether generation should stop at `id` (EOS, EOT, EOM, or an end-of-turn token text).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Whether `encode(_, add_special = true, _)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(_, add_special = true, _)` ends with EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// SentencePiece's leading space before text (false for BPE unless the file says so).
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// The type of `id`, `None` if out of range. Tokens whose text marks the end of a turn
    /// (e.g. "<|eot_id|>") are reported as control, as llama.cpp treats them.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.vocab.types.get(id as usize).copied()
    }

    /// The token's string as stored in the vocabulary (SPM "▁Hello", BPE "ĠHello").
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.tokens.get(id as usize).map(String::as_str)
    }

    /// The id whose vocabulary string is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.id(text)
    }

    /// The SentencePiece score of `id` (zero for BPE vocabularies).
    pub fn score(&self, id: u32) -> Option<f32> {
        self.vocab.scores.get(id as usize).copied()
    }
}

#[cfg(test)]
mod tests;
