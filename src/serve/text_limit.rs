//! How much message text a context can hold: a request whose text cannot fit is refused when
//! it is parsed, before the worker spends time tokenizing it while every other request waits.

use llava_models::template::IMAGE_MARKER;
use llava_runtime::tokenizer::{byte_to_char, Tokenizer, TokenizerKind};
use serde_json::Value;

/// Bytes of message text a request's prompt takes in: all its messages' text parts, system
/// messages only where `system_in_prompt` (else they are dropped).
pub(super) fn text_bytes(messages: &[Value], system_in_prompt: bool) -> usize {
    messages
        .iter()
        .filter(|m| system_in_prompt || m["role"] != "system")
        .map(|m| match &m["content"] {
            Value::String(t) => t.len(),
            Value::Array(parts) => parts
                .iter()
                .filter(|p| p["type"] == "text")
                .map(|p| p["text"].as_str().map_or(0, str::len))
                .sum(),
            _ => 0,
        })
        .sum()
}

/// The most bytes of message text one position can hold, or `None` where the tokenizer may
/// drop text (then no length of text is known not to fit).
///
/// Every token stands for a run of the text no longer than its vocabulary string: SentencePiece
/// strings spell a space as "▁" (3 bytes for 1) and a byte-fallback token as "<0xXX>" (6 for
/// 1); byte-level BPE strings spell each byte as one stand-in character of 1 or 2 bytes;
/// special tokens found in the text are spelled as written. An `<image>` marker becomes an
/// image, of one position at least. Templates add text, never take any away. So text of more
/// than `n_ctx` times this many bytes never fits `n_ctx` positions.
///
/// Text is dropped where a byte has no token to fall back on: SentencePiece without the byte's
/// `<0xXX>` (or, for ASCII, its one-character token) and without an unknown token; byte-level
/// BPE without the byte's stand-in character. (A BPE file whose merges make strings that are
/// not tokens drops bytes too, as llama.cpp does; such a file is malformed and not looked for.)
pub(super) fn text_bytes_per_position(tokenizer: &Tokenizer) -> Option<usize> {
    let every_byte_has_a_token = match tokenizer.kind() {
        TokenizerKind::Spm => {
            tokenizer.special_tokens().unk.is_some()
                || (0..=255u8).all(|b| {
                    tokenizer.token_id(&format!("<0x{b:02X}>")).is_some()
                        || (b.is_ascii()
                            && tokenizer.token_id(&char::from(b).to_string()).is_some())
                })
        }
        TokenizerKind::Bpe => {
            (0..=255u8).all(|b| tokenizer.token_id(&byte_to_char(b).to_string()).is_some())
        }
    };
    if !every_byte_has_a_token {
        return None;
    }
    let longest = (0..tokenizer.vocab_size() as u32)
        .filter_map(|id| tokenizer.token_text(id))
        .map(str::len)
        .max()?;
    Some(longest.max(IMAGE_MARKER.len()))
}
