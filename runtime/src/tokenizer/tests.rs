//! Tokenizers over tiny hand-made vocabularies: the merge order, byte fallback, special-token
//! partitioning, streaming decode, and every load error. Parity with llama.cpp on real
//! vocabularies is in runtime/tests/tokenizer_vocab.rs.

use super::*;
use crate::gguf::{GgufWriteError, GgufWriter, MetaValue};

/// A GGUF file holding only tokenizer metadata, written to a temporary directory.
struct VocabFile {
    meta: Vec<(String, MetaValue)>,
}

impl VocabFile {
    fn new(model: &str, tokens: &[&str]) -> VocabFile {
        let tokens: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
        VocabFile {
            meta: vec![
                (KEY_MODEL.into(), model.into()),
                (vocab::KEY_TOKENS.into(), tokens.into()),
            ],
        }
    }

    /// SentencePiece: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, then `pieces` with their
    /// scores. Returns the file and the id of the first piece.
    fn spm(pieces: &[(&str, f32)]) -> (VocabFile, u32) {
        let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
        let mut types = vec![2, 3, 3];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        types.extend([6; 256]);
        let first = tokens.len() as u32;
        tokens.extend(pieces.iter().map(|(t, _)| t.to_string()));
        types.extend(vec![1; pieces.len()]);
        let mut scores = vec![0.0f32; first as usize];
        scores.extend(pieces.iter().map(|(_, s)| *s));
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let file = VocabFile::new("llama", &refs)
            .with(vocab::KEY_SCORES, scores)
            .with(vocab::KEY_TOKEN_TYPE, types);
        (file, first)
    }

    fn with(mut self, key: &str, value: impl Into<MetaValue>) -> VocabFile {
        self.meta.retain(|(k, _)| k != key);
        self.meta.push((key.to_owned(), value.into()));
        self
    }

    fn without(mut self, key: &str) -> VocabFile {
        self.meta.retain(|(k, _)| k != key);
        self
    }

    fn open(&self) -> Result<Tokenizer, TokenizerError> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("vocab.gguf");
        let mut w = GgufWriter::new();
        for (k, v) in &self.meta {
            w.add(k, v.clone()).expect("valid metadata");
        }
        w.write(&path, |_, _, _| Ok::<(), GgufWriteError>(()))
            .expect("written");
        let gguf = GgufFile::open(&path).expect("readable");
        Tokenizer::from_gguf(&gguf)
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn spm_merges_the_highest_scoring_pair_first() {
    // "abc": "bc" outscores "ab", so the result is a + bc even though "ab" comes first.
    let (file, first) = VocabFile::spm(&[
        ("a", -1.0),
        ("b", -1.0),
        ("c", -1.0),
        ("ab", -3.0),
        ("bc", -2.0),
    ]);
    let tok = file.with(KEY_ADD_SPACE_PREFIX, false).open().unwrap();
    assert_eq!(tok.encode("abc", false, false), [first, first + 4]);
}

#[test]
fn spm_equal_scores_merge_leftmost_first() {
    let (file, first) = VocabFile::spm(&[("a", -1.0), ("aa", -1.0)]);
    let tok = file.with(KEY_ADD_SPACE_PREFIX, false).open().unwrap();
    assert_eq!(tok.encode("aaa", false, false), [first + 1, first]);
}

#[test]
fn spm_escapes_spaces_and_adds_the_prefix_space_after_bos_and_specials() {
    let (file, first) = VocabFile::spm(&[("▁", -1.0), ("a", -1.0), ("▁a", -0.5)]);
    let tok = file.open().unwrap();
    let (space, space_a) = (first, first + 2);
    assert_eq!(tok.encode("a a", true, false), [1, space_a, space_a]);
    assert_eq!(tok.encode("", true, false), [1]);
    assert!(tok.encode("", false, false).is_empty());
    // With parse_special the typed "</s>" is the EOS token and text after it gets its space.
    assert_eq!(tok.encode("a</s>a", false, true), [space_a, 2, space_a]);
    // Without, it is plain text spelled by bytes ('<', '/', 's', '>' have no pieces).
    let plain = tok.encode("</s>", false, false);
    assert_eq!(plain[0], space);
    assert_eq!(plain.len(), 5);
}

#[test]
fn spm_byte_fallback_spells_unknown_characters_as_utf8_bytes() {
    let (file, first) = VocabFile::spm(&[("▁", -1.0)]);
    let tok = file.open().unwrap();
    // '你' is E4 BD A0; byte tokens start at id 3.
    let ids = tok.encode("你", false, false);
    assert_eq!(ids, [first, 3 + 0xE4, 3 + 0xBD, 3 + 0xA0]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "你");
}

#[test]
fn stream_decoder_holds_back_a_character_split_across_byte_tokens() {
    let (file, _) = VocabFile::spm(&[("▁", -1.0), ("x", -1.0)]);
    let tok = file.open().unwrap();
    let mut dec = tok.stream_decoder();
    assert_eq!(dec.push(3 + 0xE4).unwrap(), "");
    assert_eq!(dec.pending_len(), 1);
    assert_eq!(dec.push(3 + 0xBD).unwrap(), "");
    assert_eq!(dec.push(3 + 0xA0).unwrap(), "你");
    assert_eq!(dec.pending_len(), 0);
    // A sequence the stream never completes comes out as U+FFFD at the end.
    assert_eq!(dec.push(3 + 0xE4).unwrap(), "");
    assert_eq!(dec.finish(), "\u{FFFD}");
}

#[test]
fn stream_decoder_drops_only_the_first_prefix_space_and_skips_control_tokens() {
    let (file, first) = VocabFile::spm(&[("▁a", -1.0)]);
    let tok = file.open().unwrap();
    let a = first;
    assert_eq!(tok.decode(&[1, a, a, 2], false).unwrap(), "a a");
    // Rendered, "<s>" is the first piece; the space after it stays (as in llama.cpp).
    assert_eq!(tok.decode(&[1, a, 2], true).unwrap(), "<s> a</s>");
    let mut cont = tok.stream_decoder().strip_leading_space(false);
    assert_eq!(cont.push(a).unwrap(), " a");
    assert!(matches!(
        tok.decode(&[9999], false),
        Err(TokenizerError::TokenOutOfRange { id: 9999, .. })
    ));
}

#[test]
fn user_defined_tokens_are_matched_even_without_parse_special() {
    let (file, first) = VocabFile::spm(&[("▁", -1.0), ("<img>", 0.0)]);
    let mut types = vec![2, 3, 3];
    types.extend([6; 256]);
    types.extend([1, 4]);
    let tok = file
        .with(vocab::KEY_TOKEN_TYPE, types)
        .with(KEY_ADD_SPACE_PREFIX, false)
        .open()
        .unwrap();
    assert_eq!(tok.encode("<img>", false, false), [first + 1]);
    assert_eq!(tok.token_type(first + 1), Some(TokenType::UserDefined));
    // User-defined tokens always render, verbatim.
    assert_eq!(tok.piece(first + 1, false), Some(&b"<img>"[..]));
}

fn bpe_file(pre: &str) -> VocabFile {
    // Byte-level pieces: 'Ġ' is the space byte.
    VocabFile::new("gpt2", &["a", "b", "Ġ", "ab", "Ġab", "<|endoftext|>"])
        .with(KEY_PRE, pre)
        .with(KEY_MERGES, strings(&["a b", "Ġ ab"]))
        .with(vocab::KEY_TOKEN_TYPE, vec![1i32, 1, 1, 1, 1, 3])
        .with(KEY_EOS_ID, 5u32)
}

#[test]
fn bpe_merges_by_rank_and_decodes_gpt2_bytes() {
    let tok = bpe_file("gpt-2").open().unwrap();
    assert_eq!(tok.pre_tokenizer(), Some(PreTokenizerKind::Gpt2));
    assert_eq!(tok.encode("ab ab", false, false), [3, 4]);
    assert_eq!(tok.decode(&[3, 4, 5], false).unwrap(), "ab ab");
    assert!(tok.is_eog(5));
    assert_eq!(tok.encode("<|endoftext|>", false, true), [5]);
}

#[test]
fn llama3_pre_tokenizer_adds_bos_by_default() {
    let err = bpe_file("llama-bpe").open().unwrap_err();
    assert!(err.to_string().contains(KEY_ADD_BOS), "{err}");
    let tok = bpe_file("llama-bpe").with(KEY_BOS_ID, 5u32).open().unwrap();
    assert_eq!(tok.encode("ab", true, false), [5, 3]);
}

fn load_error(file: VocabFile) -> String {
    file.open().unwrap_err().to_string()
}

#[test]
fn malformed_vocabularies_are_refused_with_the_key_named() {
    let (spm, _) = VocabFile::spm(&[("a", 0.0)]);
    let e = load_error(spm.without(vocab::KEY_TOKENS));
    assert!(
        e.contains(vocab::KEY_TOKENS) && e.contains("missing"),
        "{e}"
    );

    let (spm, _) = VocabFile::spm(&[("a", 0.0)]);
    let e = load_error(spm.with(vocab::KEY_SCORES, vec![0.0f32; 3]));
    assert!(
        e.contains(vocab::KEY_SCORES) && e.contains("3 entries"),
        "{e}"
    );

    let (spm, _) = VocabFile::spm(&[("a", 0.0)]);
    let e = load_error(spm.with(vocab::KEY_TOKEN_TYPE, vec![9i32; 260]));
    assert!(e.contains("token_type[0] = 9"), "{e}");

    let (spm, _) = VocabFile::spm(&[("a", 0.0)]);
    let e = load_error(spm.with(KEY_BOS_ID, 70000u32));
    assert!(e.contains(KEY_BOS_ID) && e.contains("70000"), "{e}");

    let (spm, _) = VocabFile::spm(&[("a", 0.0)]);
    let e = load_error(spm.with(KEY_MODEL, "t5"));
    assert!(e.contains("\"t5\""), "{e}");

    let (spm, _) = VocabFile::spm(&[("a", 0.0)]);
    let e = load_error(spm.with(vocab::KEY_SCORES, "not an array"));
    assert!(e.contains(vocab::KEY_SCORES), "{e}");

    let mut types = vec![2, 3, 3];
    types.extend([6; 257]);
    let (spm, _) = VocabFile::spm(&[("<0xZZ>", 0.0)]);
    let e = load_error(spm.with(vocab::KEY_TOKEN_TYPE, types));
    assert!(e.contains("<0xZZ>"), "{e}");

    let e = load_error(VocabFile::new("llama", &[]));
    assert!(e.contains("empty"), "{e}");

    let e = load_error(bpe_file("qwen2"));
    assert!(e.contains("\"qwen2\""), "{e}");

    let e = load_error(bpe_file("gpt2").with(KEY_MERGES, strings(&["a b", "ab"])));
    assert!(e.contains("merges[1]"), "{e}");

    let e = load_error(bpe_file("gpt2").without(KEY_MERGES));
    assert!(e.contains(KEY_MERGES), "{e}");
}
