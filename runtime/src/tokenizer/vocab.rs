//! The vocabulary as llama.cpp loads it (llama-vocab.cpp, `llama_vocab::impl::load`): token
//! strings, SentencePiece scores and token types, and the reverse map from text to id.

use std::collections::HashMap;

use super::error::VocabError;
use crate::gguf::GgufFile;

pub(crate) const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
pub(crate) const KEY_SCORES: &str = "tokenizer.ggml.scores";
pub(crate) const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";

/// `tokenizer.ggml.token_type` values (gguf-py `TokenType`; llama.cpp `llama_token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// 0: never written by the converters; llama.cpp renders such tokens as nothing.
    Undefined,
    /// 1: an ordinary token.
    Normal,
    /// 2: the unknown token, which SentencePiece emits for text it cannot spell.
    Unknown,
    /// 3: a control token such as `<s>` or `<|eot_id|>`.
    Control,
    /// 4: a token added by the user; matched in text and rendered verbatim.
    UserDefined,
    /// 5: a slot with no use; rendered as nothing.
    Unused,
    /// A SentencePiece byte-fallback token `<0xXX>`.
    Byte,
}

impl TokenType {
    /// The type with `tokenizer.ggml.token_type` value `value`, or `None` outside 0..=6.
    pub fn from_gguf(value: i32) -> Option<TokenType> {
        Some(match value {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }

    /// Control and unknown tokens: rendered only when the caller asks for special tokens, and
    /// matched in input text only with `parse_special` (llama.cpp's `attr_special`).
    pub fn is_special(self) -> bool {
        matches!(self, TokenType::Control | TokenType::Unknown)
    }
}

pub(crate) struct Vocab {
    pub(crate) tokens: Vec<String>,
    pub(crate) types: Vec<TokenType>,
    /// SentencePiece merge priorities; zero where the file has none (as llama.cpp).
    pub(crate) scores: Vec<f32>,
    /// Where two tokens share a text, the later id wins, as in llama.cpp's `token_to_id`.
    pub(crate) text_to_id: HashMap<String, u32>,
}

impl Vocab {
    pub(crate) fn load(gguf: &GgufFile) -> Result<Vocab, LoadError> {
        let n_tokens = gguf.get_array(KEY_TOKENS)?.len();
        if n_tokens == 0 {
            return Err(VocabError::EmptyVocab.into());
        }
        if u32::try_from(n_tokens).is_err() {
            return Err(VocabError::VocabTooLarge(n_tokens).into());
        }
        let mut tokens = Vec::with_capacity(n_tokens);
        let mut text_to_id = HashMap::with_capacity(n_tokens);
        for (i, text) in gguf.get_str_array(KEY_TOKENS)?.enumerate() {
            // llama.cpp renames empty tokens so that every id keeps a distinct text.
            let text = if text.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                text.to_owned()
            };
            text_to_id.insert(text.clone(), i as u32);
            tokens.push(text);
        }

        let scores = match optional(gguf, KEY_SCORES, GgufFile::get_array_of::<f32>)? {
            None => vec![0.0; n_tokens],
            Some(it) => {
                check_len(KEY_SCORES, it.len(), n_tokens)?;
                it.map(normalize_score).collect()
            }
        };

        let types = match optional(gguf, KEY_TOKEN_TYPE, GgufFile::get_array_of::<i32>)? {
            None => vec![TokenType::Normal; n_tokens],
            Some(it) => {
                check_len(KEY_TOKEN_TYPE, it.len(), n_tokens)?;
                it.enumerate()
                    .map(|(index, value)| {
                        TokenType::from_gguf(value).ok_or(VocabError::BadTokenType { index, value })
                    })
                    .collect::<Result<_, _>>()?
            }
        };

        Ok(Vocab {
            tokens,
            types,
            scores,
            text_to_id,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    pub(crate) fn id(&self, text: &str) -> Option<u32> {
        self.text_to_id.get(text).copied()
    }

    pub(crate) fn token_type(&self, id: u32) -> TokenType {
        self.types[id as usize]
    }
}

/// llama.cpp compares scores with `<`, under which -0.0 == 0.0 and NaN is unordered. The
/// merge queue orders them with `f32::total_cmp`; mapping -0.0 to 0.0 makes the two agree,
/// and NaN (meaningless as a score) becomes the lowest priority instead of an inconsistent one.
fn normalize_score(score: f32) -> f32 {
    if score.is_nan() {
        f32::NEG_INFINITY
    } else {
        score + 0.0
    }
}

/// `GgufFile::optional` for getters whose result borrows from the file (its callback signature
/// cannot tie the result to the file's lifetime).
pub(crate) fn optional<'g, T>(
    gguf: &'g GgufFile,
    key: &str,
    get: impl FnOnce(&'g GgufFile, &str) -> Result<T, crate::gguf::GgufError>,
) -> Result<Option<T>, crate::gguf::GgufError> {
    if gguf.contains_key(key) {
        get(gguf, key).map(Some)
    } else {
        Ok(None)
    }
}

fn check_len(key: &'static str, len: usize, n_tokens: usize) -> Result<(), VocabError> {
    if len == n_tokens {
        Ok(())
    } else {
        Err(VocabError::LengthMismatch { key, len, n_tokens })
    }
}

/// Load-time failures before the file path is attached (see `Tokenizer::from_gguf`).
pub(crate) enum LoadError {
    Gguf(crate::gguf::GgufError),
    Vocab(VocabError),
}

impl From<crate::gguf::GgufError> for LoadError {
    fn from(e: crate::gguf::GgufError) -> Self {
        LoadError::Gguf(e)
    }
}

impl From<VocabError> for LoadError {
    fn from(e: VocabError) -> Self {
        LoadError::Vocab(e)
    }
}

/// Parses the byte of a SentencePiece byte token, `<0xXX>` (hex digits of either case).
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    // from_str_radix alone would also take a sign ("+A").
    if hex.len() != 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokens_parse_only_in_their_exact_form() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xff>"), Some(255));
        assert_eq!(parse_byte_token("<0x0A"), None);
        assert_eq!(parse_byte_token("<0x+A>"), None);
        assert_eq!(parse_byte_token("<0x100>"), None);
    }

    #[test]
    fn negative_zero_and_nan_scores_are_normalized_for_total_order() {
        assert_eq!(normalize_score(-0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(normalize_score(f32::NAN), f32::NEG_INFINITY);
        assert_eq!(normalize_score(-1.5), -1.5);
    }
}
