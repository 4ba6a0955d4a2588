//! Token ids back to text: each token's bytes ("piece", as llama.cpp's `token_to_piece`), and a
//! streaming decoder that emits only complete UTF-8, for printing tokens as they are sampled.

use super::bpe::char_to_byte;
use super::spm::ESCAPED_SPACE;
use super::vocab::{parse_byte_token, TokenType, Vocab};
use super::{Tokenizer, TokenizerError, TokenizerKind};

/// Every token's bytes, in one buffer. Control and unknown tokens hold their text (shown only
/// when special tokens are asked for); unused and undefined tokens hold nothing.
pub(crate) struct Pieces {
    bytes: Vec<u8>,
    /// `bytes[offsets[id]..offsets[id + 1]]` is the piece of `id`.
    offsets: Vec<usize>,
}

impl Pieces {
    pub(crate) fn build(vocab: &Vocab, kind: TokenizerKind) -> Pieces {
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(vocab.len() + 1);
        offsets.push(0);
        for (text, ty) in vocab.tokens.iter().zip(&vocab.types) {
            match (ty, kind) {
                // Special and user-defined tokens render verbatim, un-escaped.
                (TokenType::Control | TokenType::Unknown | TokenType::UserDefined, _) => {
                    bytes.extend_from_slice(text.as_bytes())
                }
                (TokenType::Normal, TokenizerKind::Spm) => {
                    bytes.extend_from_slice(text.replace(ESCAPED_SPACE, " ").as_bytes())
                }
                (TokenType::Normal, TokenizerKind::Bpe) => {
                    for ch in text.chars() {
                        match char_to_byte(ch) {
                            Some(b) => bytes.push(b),
                            // Not a GPT-2 byte stand-in (a malformed vocabulary): keep the
                            // character. llama.cpp writes an "[UNK_BYTE_0x..]" marker instead.
                            None => bytes.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
                        }
                    }
                }
                // Loading checked that SPM byte tokens parse; BPE has no byte tokens and
                // llama.cpp aborts on one, here it renders as nothing.
                (TokenType::Byte, TokenizerKind::Spm) => bytes.extend(parse_byte_token(text)),
                (TokenType::Byte, TokenizerKind::Bpe) => {}
                (TokenType::Unused | TokenType::Undefined, _) => {}
            }
            offsets.push(bytes.len());
        }
        Pieces { bytes, offsets }
    }

    pub(crate) fn get(&self, id: u32) -> &[u8] {
        let id = id as usize;
        &self.bytes[self.offsets[id]..self.offsets[id + 1]]
    }
}

/// Turns token ids, pushed one at a time, into text that is always valid UTF-8.
///
/// A character can span several tokens (SentencePiece byte fallback spells "你" as three
/// `<0xXX>` tokens; byte-level BPE splits rare characters across tokens), so bytes that end
/// in an incomplete sequence are held back until the rest arrives. Invalid sequences become
/// U+FFFD rather than being passed on.
///
/// For SentencePiece vocabularies with `add_space_prefix`, the space that encoding put in front
/// of the text is removed from the first piece that renders anything, so decoding what
/// `encode` produced gives back the input. llama.cpp's `detokenize` does this only when the
/// first token is not BOS; here control tokens that render as nothing never count as first
/// (rendered with [`StreamDecoder::render_special`], `<s>` is the first piece, as in llama.cpp).
/// Use [`StreamDecoder::strip_leading_space`]`(false)` when decoding a continuation, e.g.
/// generated tokens after a prompt, whose leading space is real.
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    render_special: bool,
    strip_leading_space: bool,
    /// Bytes of an incomplete UTF-8 sequence awaiting the tokens that finish it.
    pending: Vec<u8>,
    /// What the last call made ready, lent out by `push` and `finish`.
    ready: String,
}

impl<'t> StreamDecoder<'t> {
    /// A decoder for the start of a sequence of `tokenizer`'s ids: control tokens render as
    /// nothing, and the leading space is stripped when the tokenizer adds a space prefix.
    pub fn new(tokenizer: &'t Tokenizer) -> StreamDecoder<'t> {
        StreamDecoder {
            tokenizer,
            render_special: false,
            strip_leading_space: tokenizer.add_space_prefix(),
            pending: Vec::new(),
            ready: String::new(),
        }
    }

    /// Render control and unknown tokens as their text (e.g. `</s>`) instead of nothing.
    pub fn render_special(mut self, yes: bool) -> Self {
        self.render_special = yes;
        self
    }

    /// Whether to drop the leading space of the first rendered piece (see the type's docs).
    pub fn strip_leading_space(mut self, yes: bool) -> Self {
        self.strip_leading_space = yes;
        self
    }

    /// Adds one token and returns the text it completes: possibly empty, never a partial
    /// character.
    pub fn push(&mut self, id: u32) -> Result<&str, TokenizerError> {
        let mut piece = self.tokenizer.piece(id, self.render_special).ok_or(
            TokenizerError::TokenOutOfRange {
                id,
                n_vocab: self.tokenizer.vocab_size(),
            },
        )?;
        if self.strip_leading_space && !piece.is_empty() {
            self.strip_leading_space = false;
            piece = piece.strip_prefix(b" ").unwrap_or(piece);
        }
        self.pending.extend_from_slice(piece);
        self.ready.clear();
        let consumed = take_valid_utf8(&self.pending, &mut self.ready);
        self.pending.drain(..consumed);
        Ok(&self.ready)
    }

    /// Ends the stream: bytes still held back (a sequence the tokens never completed) come
    /// out as U+FFFD.
    pub fn finish(&mut self) -> &str {
        self.ready.clear();
        if !self.pending.is_empty() {
            self.ready.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
        &self.ready
    }

    /// How many bytes are held back waiting for the rest of a character.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Appends the longest prefix of `bytes` that can be emitted now to `out`, replacing invalid
/// sequences with U+FFFD, and returns how many bytes it consumed. Only an incomplete sequence
/// at the very end — one that later bytes could still complete — is left unconsumed.
fn take_valid_utf8(bytes: &[u8], out: &mut String) -> usize {
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                return bytes.len();
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).expect("checked by from_utf8"));
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[bad..];
                    }
                    None => return bytes.len() - after.len(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(bytes: &[u8]) -> (String, usize) {
        let mut out = String::new();
        let n = take_valid_utf8(bytes, &mut out);
        (out, n)
    }

    #[test]
    fn incomplete_tail_is_held_back_and_invalid_bytes_are_replaced() {
        // "你" is E4 BD A0.
        assert_eq!(take(b"a\xE4\xBD"), ("a".to_owned(), 1));
        assert_eq!(take(b"\xE4\xBD\xA0b"), ("你b".to_owned(), 4));
        // A lone continuation byte can never become valid.
        assert_eq!(take(b"\xA0x\xE4"), ("\u{FFFD}x".to_owned(), 2));
        // A lead byte cut off by ASCII is invalid, not pending.
        assert_eq!(take(b"\xE4a"), ("\u{FFFD}a".to_owned(), 2));
    }
}
