//! SentencePiece (BPE-by-score) tokenization as llama.cpp's `llm_tokenizer_spm_session` does it:
//! start from single UTF-8 characters, repeatedly merge the adjacent pair whose concatenation
//! is the vocabulary token with the highest score (ties: leftmost), and spell whatever never
//! became a token as byte-fallback tokens `<0xXX>`.

use std::collections::BinaryHeap;

use super::vocab::{parse_byte_token, TokenType, Vocab};

/// SentencePiece's escaped space, U+2581 LOWER ONE EIGHTH BLOCK.
pub(crate) const ESCAPED_SPACE: &str = "\u{2581}";

/// Per-vocabulary data the merge loop needs beyond the token table.
pub(crate) struct Spm {
    /// The token for each byte: `<0xXX>` if present, else the byte itself as a one-character
    /// token (llama.cpp `byte_to_token`), else the unknown token.
    byte_tokens: Box<[Option<u32>; 256]>,
}

impl Spm {
    pub(crate) fn new(vocab: &Vocab, unk: Option<u32>) -> Spm {
        let mut byte_tokens = Box::new([None; 256]);
        // Byte tokens are looked up by type as well as by text, so that `<0x0a>` spelled in
        // lower case still serves; the canonical upper-case spelling wins if both exist.
        for (id, ty) in vocab.types.iter().enumerate() {
            if *ty == TokenType::Byte {
                if let Some(b) = parse_byte_token(&vocab.tokens[id]) {
                    byte_tokens[b as usize].get_or_insert(id as u32);
                }
            }
        }
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            let canonical = vocab.id(&format!("<0x{b:02X}>"));
            let plain = (b < 0x80).then(|| vocab.id(&char::from(b as u8).to_string()));
            *slot = canonical.or(*slot).or(plain.flatten()).or(unk);
        }
        Spm { byte_tokens }
    }

    /// Tokenizes `text`, which the caller has already space-escaped (" " -> "▁") and prefixed.
    pub(crate) fn tokenize(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, ch) in text.char_indices() {
            let index = symbols.len();
            symbols.push(Symbol {
                start,
                len: ch.len_utf8(),
                prev: index.checked_sub(1),
                next: None,
            });
            if index > 0 {
                symbols[index - 1].next = Some(index);
            }
        }

        let mut queue = BinaryHeap::new();
        for right in 1..symbols.len() {
            push_bigram(
                vocab,
                text,
                &symbols,
                &mut queue,
                Some(right - 1),
                Some(right),
            );
        }

        while let Some(bigram) = queue.pop() {
            let (left_len, right_len) = (symbols[bigram.left].len, symbols[bigram.right].len);
            // Entries go stale when either side has since been merged. A side that merged
            // grew (or emptied, when absorbed), so comparing the summed length suffices —
            // llama.cpp uses the same test.
            if left_len == 0 || right_len == 0 || left_len + right_len != bigram.size {
                continue;
            }
            let next = symbols[bigram.right].next;
            symbols[bigram.left].len += right_len;
            symbols[bigram.left].next = next;
            symbols[bigram.right].len = 0;
            if let Some(n) = next {
                symbols[n].prev = Some(bigram.left);
            }
            let prev = symbols[bigram.left].prev;
            push_bigram(vocab, text, &symbols, &mut queue, prev, Some(bigram.left));
            push_bigram(vocab, text, &symbols, &mut queue, Some(bigram.left), next);
        }

        let mut at = (!symbols.is_empty()).then_some(0);
        while let Some(i) = at {
            let sym = &symbols[i];
            let piece = &text[sym.start..sym.start + sym.len];
            // Every merged symbol is a token (only token-forming pairs are queued), so only
            // single characters can miss; llama.cpp's `rev_merge` re-segmentation never
            // applies and is left out.
            match vocab.id(piece) {
                Some(id) => out.push(id),
                None => out.extend(piece.bytes().filter_map(|b| self.byte_tokens[b as usize])),
            }
            at = sym.next;
        }
    }
}

/// A run of the text, `text[start..start + len]`; `len == 0` once merged into its left
/// neighbour. Symbols form a doubly linked list in text order.
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the merged text when queued, to detect stale entries.
    size: usize,
}

/// Highest score first; among equal scores the leftmost pair (llama.cpp `llm_bigram_spm`).
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Bigram {}

fn push_bigram(
    vocab: &Vocab,
    text: &str,
    symbols: &[Symbol],
    queue: &mut BinaryHeap<Bigram>,
    left: Option<usize>,
    right: Option<usize>,
) {
    let (Some(left), Some(right)) = (left, right) else {
        return;
    };
    let start = symbols[left].start;
    // Adjacent symbols are contiguous runs of `text`, so the pair is one slice.
    let size = symbols[left].len + symbols[right].len;
    if let Some(id) = vocab.id(&text[start..start + size]) {
        queue.push(Bigram {
            score: vocab.scores[id as usize],
            left,
            right,
            size,
        });
    }
}
