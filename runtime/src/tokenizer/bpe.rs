//! Byte-level BPE as llama.cpp's `llm_tokenizer_bpe_session` does it: pre-tokenize, map each
//! word's UTF-8 bytes to GPT-2's printable stand-in characters, then repeatedly merge the
//! adjacent pair with the lowest merge rank (ties: leftmost).

use std::collections::{BinaryHeap, HashMap};

use super::error::VocabError;
use super::pretokenize::PreTokenizer;
use super::vocab::Vocab;

pub(crate) const KEY_MERGES: &str = "tokenizer.ggml.merges";

pub(crate) struct Bpe {
    /// Merge rank by the merge's text as stored, "left right". Lookups rebuild that string:
    /// byte-level pieces never contain a raw space (0x20 is written as 'Ġ'), so the first
    /// space is always the separator.
    ranks: HashMap<String, u32>,
    pre: PreTokenizer,
    /// LLaMA-3 (`ignore_merges` in its tokenizer.json): a word that is itself a token is
    /// emitted whole, even where the merges would split it.
    ignore_merges: bool,
}

impl Bpe {
    /// `merges` in file order; the rank of a merge is its index.
    pub(crate) fn new<'a>(
        merges: impl Iterator<Item = &'a str>,
        pre: PreTokenizer,
        ignore_merges: bool,
    ) -> Result<Bpe, VocabError> {
        let mut ranks = HashMap::with_capacity(merges.size_hint().0);
        for (index, entry) in merges.enumerate() {
            // llama.cpp splits at the first space after the first byte.
            let valid = entry.bytes().skip(1).any(|b| b == b' ');
            if !valid {
                return Err(VocabError::BadMerge {
                    index,
                    entry: entry.to_owned(),
                });
            }
            let rank = u32::try_from(index).map_err(|_| VocabError::BadMerge {
                index,
                entry: entry.to_owned(),
            })?;
            // A repeated merge keeps its first (best) rank, as llama.cpp's `emplace`.
            ranks.entry(entry.to_owned()).or_insert(rank);
        }
        Ok(Bpe {
            ranks,
            pre,
            ignore_merges,
        })
    }

    pub(crate) fn pre_tokenizer(&self) -> &PreTokenizer {
        &self.pre
    }

    pub(crate) fn tokenize(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut session = Session {
            bpe: self,
            vocab,
            symbols: Vec::new(),
            queue: BinaryHeap::new(),
            key: String::new(),
        };
        let mut word = String::new();
        for raw in self.pre.split(text) {
            word.clear();
            word.extend(raw.bytes().map(byte_to_char));
            session.tokenize_word(&word, out);
        }
    }
}

struct Session<'a> {
    bpe: &'a Bpe,
    vocab: &'a Vocab,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
    /// Reused buffer for "left right" rank lookups.
    key: String,
}

impl Session<'_> {
    fn tokenize_word(&mut self, word: &str, out: &mut Vec<u32>) {
        if self.bpe.ignore_merges {
            if let Some(id) = self.vocab.id(word) {
                out.push(id);
                return;
            }
        }
        self.symbols.clear();
        self.queue.clear();
        for (start, ch) in word.char_indices() {
            let index = self.symbols.len();
            self.symbols.push(Symbol {
                start,
                len: ch.len_utf8(),
                prev: index.checked_sub(1),
                next: None,
            });
            if index > 0 {
                self.symbols[index - 1].next = Some(index);
            }
        }
        for right in 1..self.symbols.len() {
            self.push_bigram(word, Some(right - 1), Some(right));
        }

        while let Some(bigram) = self.queue.pop() {
            let (left_len, right_len) = (
                self.symbols[bigram.left].len,
                self.symbols[bigram.right].len,
            );
            // Stale when either side has merged since. llama.cpp compares texts; since both
            // sides are fixed-start runs of one word, comparing the summed length is the same.
            if left_len == 0 || right_len == 0 || left_len + right_len != bigram.size {
                continue;
            }
            let next = self.symbols[bigram.right].next;
            self.symbols[bigram.left].len += right_len;
            self.symbols[bigram.left].next = next;
            self.symbols[bigram.right].len = 0;
            if let Some(n) = next {
                self.symbols[n].prev = Some(bigram.left);
            }
            let prev = self.symbols[bigram.left].prev;
            self.push_bigram(word, prev, Some(bigram.left));
            self.push_bigram(word, Some(bigram.left), next);
        }

        for sym in self.symbols.iter().filter(|s| s.len > 0) {
            let piece = &word[sym.start..sym.start + sym.len];
            match self.vocab.id(piece) {
                Some(id) => out.push(id),
                // A merge whose result is not in the vocabulary (a malformed file): llama.cpp
                // falls back to one-byte tokens and drops bytes that have none.
                None => out.extend(piece.bytes().filter_map(|b| {
                    (b < 0x80)
                        .then(|| self.vocab.id(&char::from(b).to_string()))
                        .flatten()
                })),
            }
        }
    }

    fn push_bigram(&mut self, word: &str, left: Option<usize>, right: Option<usize>) {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let (l, r) = (&self.symbols[left], &self.symbols[right]);
        self.key.clear();
        self.key.push_str(&word[l.start..l.start + l.len]);
        self.key.push(' ');
        self.key.push_str(&word[r.start..r.start + r.len]);
        if let Some(&rank) = self.bpe.ranks.get(self.key.as_str()) {
            self.queue.push(Bigram {
                rank,
                left,
                right,
                size: l.len + r.len,
            });
        }
    }
}

struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    rank: u32,
    left: usize,
    right: usize,
    size: usize,
}

/// Lowest rank first; among equal ranks the leftmost pair (llama.cpp `llm_bigram_bpe`).
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .rank
            .cmp(&self.rank)
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

/// GPT-2's `bytes_to_unicode`: printable Latin-1 bytes ('!'..='~', '¡'..='¬', '®'..='ÿ') stand
/// for themselves; the other 68 bytes map, in byte order, to U+0100 upwards. A byte-level BPE
/// vocabulary spells byte `byte` with this character.
pub fn byte_to_char(byte: u8) -> char {
    BYTE_TO_CHAR[byte as usize]
}

/// The inverse of [`byte_to_char`]; `None` for characters that stand for no byte.
pub(crate) fn char_to_byte(ch: char) -> Option<u8> {
    let cp = ch as u32;
    if cp < 0x100 {
        // Printable Latin-1 maps to itself; the remaining code points below 0x100 are not
        // images of any byte.
        (BYTE_TO_CHAR[cp as usize] == ch).then_some(cp as u8)
    } else {
        let n = cp - 0x100;
        NON_PRINTABLE.get(n as usize).copied()
    }
}

const fn is_printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The bytes that GPT-2 remaps, in order: the n-th maps to U+0100 + n.
const NON_PRINTABLE: [u8; 68] = {
    let mut out = [0u8; 68];
    let mut n = 0;
    let mut b = 0;
    while b < 256 {
        if !is_printable(b as u8) {
            out[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    assert!(n == 68);
    out
};

const BYTE_TO_CHAR: [char; 256] = {
    let mut out = ['\0'; 256];
    let mut n = 0;
    let mut b = 0;
    while b < 256 {
        out[b] = if is_printable(b as u8) {
            match char::from_u32(b as u32) {
                Some(c) => c,
                None => panic!("Latin-1 code points are chars"),
            }
        } else {
            n += 1;
            match char::from_u32(0x100 + n - 1) {
                Some(c) => c,
                None => panic!("U+0100..U+0143 are chars"),
            }
        };
        b += 1;
    }
    out
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_byte_map_is_a_bijection_with_the_known_stand_ins() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(byte_to_char(0xAD), 'Ń');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(char_to_byte('\u{144}'), None);
    }

    #[test]
    fn merges_without_a_separator_are_rejected_with_their_index() {
        let pre = PreTokenizer::new(super::super::pretokenize::PreTokenizerKind::Gpt2);
        let err = Bpe::new(["a b", " ab"].into_iter(), pre, false)
            .err()
            .expect("bad merge");
        assert!(
            matches!(err, VocabError::BadMerge { index: 1, .. }),
            "{err}"
        );
    }
}
