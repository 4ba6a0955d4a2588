//! `tokenizer`: encoding and decoding arbitrary bytes with each fixture vocabulary
//! (SentencePiece, LLaMA-3 BPE, GPT-2 BPE).
//!
//! Input: one control byte (its value modulo 3: the vocabulary; bit 2: add BOS/EOS; bit 3:
//! parse special tokens; bit 4: render special tokens when decoding), then the text (UTF-8,
//! invalid sequences replaced), whose bytes are also read as token ids, three bytes each.

use std::borrow::Cow;

use llava_runtime::tokenizer::{Tokenizer, TokenizerKind};

use crate::fixtures;
use crate::input::Input;

/// SentencePiece's space mark, which decodes to a space wherever it was typed.
const SPM_SPACE: char = '\u{2581}';

pub fn tokenizer(data: &[u8]) {
    let mut input = Input::new(data);
    let control = input.u8();
    let t = fixtures::tokenizer(usize::from(control) % fixtures::VOCABS.len());
    let (add_special, parse_special, render_special) =
        (control & 4 != 0, control & 8 != 0, control & 16 != 0);
    let rest = input.rest();
    let text = String::from_utf8_lossy(rest);

    let ids = t.encode(&text, add_special, parse_special);
    assert!(ids.iter().all(|&id| (id as usize) < t.vocab_size()));
    let decoded = decode_as_pieces(t, &ids, false).expect("encoded ids are in range");
    // Encoding is lossless (runtime/tests/tokenizer_vocab.rs proves it on random text): with
    // special tokens read as text, the ids decode to the input.
    let spm_space = t.kind() == TokenizerKind::Spm && text.contains(SPM_SPACE);
    if !parse_special && !spm_space {
        assert_eq!(decoded, text, "{ids:?}");
    }
    let _ = decode_as_pieces(t, &ids, render_special);

    // Arbitrary ids, a few past the end of the vocabulary.
    let n = t.vocab_size() as u32 + 2;
    let ids: Vec<u32> = rest
        .chunks_exact(3)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], 0]) % n)
        .collect();
    let _ = decode_as_pieces(t, &ids, render_special);
    for &id in &ids {
        let _ = (
            t.token_text(id),
            t.token_type(id),
            t.score(id),
            t.is_eog(id),
        );
    }
}

/// `decode`, checked against its definition: the tokens' pieces concatenated, the leading
/// space of the first non-empty piece dropped for SentencePiece's dummy prefix, and invalid
/// UTF-8 replaced as `String::from_utf8_lossy` replaces it. `None` when an id is out of range.
fn decode_as_pieces(t: &Tokenizer, ids: &[u32], render_special: bool) -> Option<String> {
    let Ok(text) = t.decode(ids, render_special) else {
        assert!(ids.iter().any(|&id| id as usize >= t.vocab_size()));
        return None;
    };
    let mut bytes = Vec::new();
    let mut strip = t.add_space_prefix();
    for &id in ids {
        let mut piece = t.piece(id, render_special).expect("decode accepted the id");
        if strip && !piece.is_empty() {
            strip = false;
            piece = piece.strip_prefix(b" ").unwrap_or(piece);
        }
        bytes.extend_from_slice(piece);
    }
    assert_eq!(
        Cow::Borrowed(text.as_str()),
        String::from_utf8_lossy(&bytes)
    );
    Some(text)
}
