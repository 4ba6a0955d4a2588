//! Special tokens found in the input text are cut out before SentencePiece or BPE sees it
//! (llama.cpp `tokenizer_st_partition`), so that `<s>` or `<|eot_id|>` typed in a prompt
//! becomes that one token instead of being spelled out.

use std::ops::Range;

use super::vocab::{TokenType, Vocab};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// A byte range of the input, still to be tokenized.
    Text(Range<usize>),
    Token(u32),
}

/// The tokens matched in text, longest text first so that a token is never cut out of a
/// longer one that contains it. Ids break ties, to make the order deterministic (llama.cpp
/// sorts unstably).
pub(crate) fn special_tokens_by_length(vocab: &Vocab) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..vocab.len() as u32)
        .filter(|&id| {
            matches!(
                vocab.token_type(id),
                TokenType::Control | TokenType::UserDefined | TokenType::Unknown
            )
        })
        .collect();
    ids.sort_by_key(|&id| (std::cmp::Reverse(vocab.tokens[id as usize].len()), id));
    ids
}

/// Splits `text` at every occurrence of the special tokens, trying each token in turn over the
/// text fragments the earlier ones left. Without `parse_special`, only user-defined tokens are
/// matched: control and unknown tokens in the text stay plain text (llama.cpp, and Hugging Face
/// tokenizers, which always split out "added" user tokens).
pub(crate) fn partition(
    vocab: &Vocab,
    specials: &[u32],
    text: &str,
    parse_special: bool,
) -> Vec<Fragment> {
    let mut fragments = if text.is_empty() {
        Vec::new()
    } else {
        vec![Fragment::Text(0..text.len())]
    };
    for &id in specials {
        if !parse_special && vocab.token_type(id).is_special() {
            continue;
        }
        let needle = vocab.tokens[id as usize].as_str();
        // Vocab::load never leaves a token text empty; the guard keeps `find` from looping.
        if needle.is_empty() || !fragments.iter().any(|f| contains(f, text, needle)) {
            continue;
        }
        let mut next = Vec::with_capacity(fragments.len() + 2);
        for fragment in fragments {
            let Fragment::Text(range) = fragment else {
                next.push(fragment);
                continue;
            };
            let mut start = range.start;
            while let Some(at) = text[start..range.end].find(needle) {
                let at = start + at;
                if at > start {
                    next.push(Fragment::Text(start..at));
                }
                next.push(Fragment::Token(id));
                start = at + needle.len();
            }
            if start < range.end {
                next.push(Fragment::Text(start..range.end));
            }
        }
        fragments = next;
    }
    fragments
}

fn contains(fragment: &Fragment, text: &str, needle: &str) -> bool {
    match fragment {
        Fragment::Text(r) => text[r.clone()].contains(needle),
        Fragment::Token(_) => false,
    }
}
