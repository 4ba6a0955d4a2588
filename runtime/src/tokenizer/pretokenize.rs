//! The BPE pre-tokenizer chosen by `tokenizer.ggml.pre`: splits text into words that BPE then
//! merges independently. The patterns are the Hugging Face ones the test vectors were made with.
//!
//! fancy-regex, not `regex`: both patterns need look-ahead (`\s+(?!\S)` keeps the last space of
//! a run for the word that follows). Its `\p{L}`, `\p{N}` and `\s` are the Unicode general
//! categories and White_Space property, as in Oniguruma (Hugging Face) and llama.cpp's tables;
//! the vocabulary tests in runtime/tests/tokenizer_vocab.rs are the proof of parity.

use fancy_regex::Regex;

use super::error::VocabError;

/// GPT-2's pattern (tokenizer.json of `gpt2`; OpenAI's encoder.py plus the final `\s+`, which
/// makes every character belong to some word).
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// LLaMA-3's pattern (tokenizer.json of Meta-Llama-3; cl100k_base with case-insensitive
/// contractions and digits in groups of at most three).
const LLAMA3_PATTERN: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// The regex that splits text into words before BPE merges them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// GPT-2's pattern, also used for `default`.
    Gpt2,
    /// LLaMA-3's pattern (cl100k_base with digits in groups of at most three).
    Llama3,
}

impl PreTokenizerKind {
    /// Maps `tokenizer.ggml.pre` to a pattern, with llama.cpp's aliases.
    ///
    /// "default" (and an absent key) is llama.cpp's fallback for BPE files converted without a
    /// recognised pre-tokenizer; it uses GPT-2's pattern here. llama.cpp instead runs an
    /// "adapted" pattern list for it that also isolates runs of punctuation and digits —
    /// such files tokenize as GPT-2 would, which is what their tokenizer.json said.
    pub fn from_name(name: &str) -> Result<PreTokenizerKind, VocabError> {
        match name {
            "default" | "gpt2" | "gpt-2" => Ok(PreTokenizerKind::Gpt2),
            "llama-bpe" | "llama3" | "llama-v3" => Ok(PreTokenizerKind::Llama3),
            other => Err(VocabError::UnknownPreTokenizer(other.to_owned())),
        }
    }
}

pub(crate) struct PreTokenizer {
    kind: PreTokenizerKind,
    regex: Regex,
    /// A maximal run of one character class; the fallback word where `regex` gives up.
    run: Regex,
}

impl PreTokenizer {
    pub(crate) fn new(kind: PreTokenizerKind) -> PreTokenizer {
        let pattern = match kind {
            PreTokenizerKind::Gpt2 => GPT2_PATTERN,
            PreTokenizerKind::Llama3 => LLAMA3_PATTERN,
        };
        let regex = Regex::new(pattern).expect("the constant pre-tokenizer patterns compile");
        // No look-around: fancy-regex hands this whole pattern to regex-automata, which runs
        // in linear time with no backtracking stack to overflow.
        let run = Regex::new(r"\s+|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+").expect("constant pattern");
        PreTokenizer { kind, regex, run }
    }

    pub(crate) fn kind(&self) -> PreTokenizerKind {
        self.kind
    }

    /// Splits `text` into words that together cover it exactly, in order.
    ///
    /// Both patterns match at every position (each ends in `\s+` and the classes before cover
    /// letters, numbers and the rest), so no text falls between matches.
    ///
    /// fancy-regex's backtracking stack holds 1,000,000 entries (vm.rs `MAX_STACK`), and a
    /// greedy repeat needs one per character: a run of about a million spaces, letters or
    /// digits makes it fail. Such a run becomes one word of its own (its class's maximal run),
    /// and matching resumes after it; the text is never lost, and only tokenization of that
    /// run can differ from Hugging Face's.
    pub(crate) fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut words = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let (start, end) = match self.regex.find_from_pos(text, pos) {
                Ok(Some(m)) => (m.start(), m.end()),
                Ok(None) => (text.len(), text.len()),
                Err(_) => match self.run.find_from_pos(text, pos) {
                    Ok(Some(m)) if m.start() == pos => (pos, self.run_end(text, m.as_str(), pos)),
                    // Unreachable (the classes cover every character); keep the text anyway.
                    _ => (pos, text.len()),
                },
            };
            if start > pos {
                words.push(&text[pos..start]);
            }
            if end > start {
                words.push(&text[start..end]);
            }
            // An empty match cannot happen with these patterns; step past it regardless.
            pos = if end > pos {
                end
            } else {
                next_char_boundary(text, pos)
            };
        }
        words
    }
}

impl PreTokenizer {
    /// Where the fallback word for `run` (at `pos`) ends: a whitespace run followed by more
    /// text leaves its last character to the next word, as `\s+(?!\S)` does.
    fn run_end(&self, text: &str, run: &str, pos: usize) -> usize {
        let end = pos + run.len();
        let last = run.chars().next_back().filter(|c| c.is_whitespace());
        match last {
            Some(c) if end < text.len() && run.len() > c.len_utf8() => end - c.len_utf8(),
            _ => end,
        }
    }
}

fn next_char_boundary(text: &str, pos: usize) -> usize {
    text[pos..]
        .chars()
        .next()
        .map_or(text.len(), |c| pos + c.len_utf8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(kind: PreTokenizerKind, text: &str) -> Vec<&str> {
        PreTokenizer::new(kind).split(text)
    }

    #[test]
    fn gpt2_keeps_the_last_space_of_a_run_for_the_next_word() {
        assert_eq!(
            split(PreTokenizerKind::Gpt2, "Hello   world!\n"),
            ["Hello", "  ", " world", "!", "\n"]
        );
    }

    #[test]
    fn gpt2_contractions_are_case_sensitive_and_llama3_ones_are_not() {
        assert_eq!(split(PreTokenizerKind::Gpt2, "'RE"), ["'", "RE"]);
        assert_eq!(split(PreTokenizerKind::Llama3, "'RE"), ["'RE"]);
    }

    #[test]
    fn llama3_groups_digits_by_three_and_newlines_with_their_punctuation() {
        assert_eq!(
            split(PreTokenizerKind::Llama3, "1234567 ok.\n\n"),
            ["123", "456", "7", " ok", ".\n\n"]
        );
    }

    #[test]
    fn unknown_pre_tokenizer_is_named() {
        let err = PreTokenizerKind::from_name("qwen2").unwrap_err();
        assert!(err.to_string().contains("\"qwen2\""), "{err}");
    }

    #[test]
    fn runs_too_long_for_the_backtracking_stack_are_split_off_not_lost() {
        // 1.2M spaces exceed fancy-regex's stack; the text after the run is still split
        // normally.
        let text = " ".repeat(1_200_000) + "ab cd";
        for kind in [PreTokenizerKind::Gpt2, PreTokenizerKind::Llama3] {
            let words = PreTokenizer::new(kind).split(&text);
            assert_eq!(words.concat(), text);
            assert_eq!(words[0].len(), 1_199_999, "{kind:?}");
            assert_eq!(words[1..], [" ab", " cd"][..], "{kind:?}");
        }
    }
}
