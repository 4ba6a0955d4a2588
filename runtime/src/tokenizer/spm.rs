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
        // Symbols index the text with u32 (16 bytes a character instead of 48: 6.7 MB of text
        // took 507 MB). Beyond 2 GiB the text is taken in pieces cut at character boundaries;
        // no prompt comes near.
        const MAX_PIECE: usize = 1 << 31;
        let mut rest = text;
        while rest.len() > MAX_PIECE {
            let mut cut = MAX_PIECE;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            self.tokenize_piece(vocab, &rest[..cut], out);
            rest = &rest[cut..];
        }
        self.tokenize_piece(vocab, rest, out);
    }

    fn tokenize_piece(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.chars().count());
        for (start, ch) in text.char_indices() {
            let index = symbols.len() as u32;
            symbols.push(Symbol {
                start: start as u32,
                len: ch.len_utf8() as u32,
                prev: if index == 0 { NONE } else { index - 1 },
                next: NONE,
            });
            if index > 0 {
                symbols[index as usize - 1].next = index;
            }
        }

        let mut queue = BinaryHeap::new();
        for right in 1..symbols.len() as u32 {
            push_bigram(vocab, text, &symbols, &mut queue, right - 1, right);
        }

        while let Some(bigram) = queue.pop() {
            let (left, right) = (bigram.left as usize, bigram.right as usize);
            let (left_len, right_len) = (symbols[left].len, symbols[right].len);
            // Entries go stale when either side has since been merged. A side that merged
            // grew (or emptied, when absorbed), so comparing the summed length suffices —
            // llama.cpp uses the same test.
            if left_len == 0 || right_len == 0 || left_len + right_len != bigram.size {
                continue;
            }
            let next = symbols[right].next;
            symbols[left].len += right_len;
            symbols[left].next = next;
            symbols[right].len = 0;
            if next != NONE {
                symbols[next as usize].prev = bigram.left;
            }
            let prev = symbols[left].prev;
            push_bigram(vocab, text, &symbols, &mut queue, prev, bigram.left);
            push_bigram(vocab, text, &symbols, &mut queue, bigram.left, next);
        }

        let mut at = if symbols.is_empty() { NONE } else { 0 };
        while at != NONE {
            let sym = &symbols[at as usize];
            let start = sym.start as usize;
            let piece = &text[start..start + sym.len as usize];
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

/// The end of the symbol list, either way (an index no text of at most 2 GiB reaches).
const NONE: u32 = u32::MAX;

/// A run of the text, `text[start..start + len]`; `len == 0` once merged into its left
/// neighbour. Symbols form a doubly linked list in text order (`NONE` at the ends).
struct Symbol {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
}

struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    /// Byte length of the merged text when queued, to detect stale entries.
    size: u32,
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
    left: u32,
    right: u32,
) {
    if left == NONE || right == NONE {
        return;
    }
    let (l, r) = (&symbols[left as usize], &symbols[right as usize]);
    let start = l.start as usize;
    // Adjacent symbols are contiguous runs of `text`, so the pair is one slice.
    let size = l.len + r.len;
    if let Some(id) = vocab.id(&text[start..start + size as usize]) {
        queue.push(Bigram {
            score: vocab.scores[id as usize],
            left,
            right,
            size,
        });
    }
}
