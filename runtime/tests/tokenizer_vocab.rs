//! Tokenizer parity with llama.cpp on its vocabulary test vectors (tests/fixtures/vocab, see the
//! README there): every case of every file must give exactly the expected ids, and decoding
//! those ids must give back the input text, also when streamed one token at a time.

use llava_runtime::gguf::GgufFile;
use llava_runtime::tokenizer::{PreTokenizerKind, Tokenizer, TokenizerKind};

const VOCAB_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/vocab");
const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

struct Case {
    input: String,
    expected: Vec<u32>,
}

fn load(name: &str) -> (Tokenizer, Vec<Case>) {
    let path = format!("{VOCAB_DIR}/{name}.gguf");
    let gguf = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{e}"));

    let inp = std::fs::read_to_string(format!("{path}.inp")).expect("the .inp file");
    let out = std::fs::read_to_string(format!("{path}.out")).expect("the .out file");
    let mut inputs: Vec<&str> = inp.split(SEPARATOR).collect();
    // The file ends with a separator; what follows the last one is not a case.
    assert_eq!(
        inputs.pop(),
        Some(""),
        "{name}.inp must end with the separator"
    );
    let expected: Vec<Vec<u32>> = out
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|id| id.parse().expect("a token id"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        expected.len(),
        "{name}: .inp and .out disagree on the number of cases"
    );
    let cases = inputs
        .into_iter()
        .zip(expected)
        .map(|(input, expected)| Case {
            input: input.to_owned(),
            expected,
        })
        .collect();
    (tokenizer, cases)
}

/// Runs every case and reports all mismatches at once, each with its index, input and ids.
fn check_encode(name: &str) -> usize {
    let (tokenizer, cases) = load(name);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let got = tokenizer.encode(&case.input, false, false);
        if got != case.expected {
            failures.push(format!(
                "case {i}: input {:?}\n  expected {:?}\n  got      {:?}",
                case.input, case.expected, got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    cases.len()
}

/// Decoding the expected ids, whole and streamed token by token, gives the input back. The
/// streamed chunks must each be complete UTF-8 by construction (they are `&str`); their
/// concatenation must equal the whole.
fn check_round_trip(name: &str) {
    let (tokenizer, cases) = load(name);
    for (i, case) in cases.iter().enumerate() {
        let whole = tokenizer
            .decode(&case.expected, false)
            .expect("ids in range");
        assert_eq!(whole, case.input, "{name} case {i}: decode(ids) != input");

        let mut decoder = tokenizer.stream_decoder();
        let mut streamed = String::new();
        for &id in &case.expected {
            streamed.push_str(decoder.push(id).expect("ids in range"));
        }
        assert_eq!(decoder.pending_len(), 0, "{name} case {i}: bytes left over");
        streamed.push_str(decoder.finish());
        assert_eq!(
            streamed, case.input,
            "{name} case {i}: streamed decode != input"
        );

        // With BOS, as a prompt is encoded, the round trip holds too.
        let with_bos = tokenizer.encode(&case.input, true, false);
        let decoded = tokenizer.decode(&with_bos, false).expect("ids in range");
        assert_eq!(decoded, case.input, "{name} case {i}: decode(encode + BOS)");
    }
}

#[test]
fn llama_spm_matches_llama_cpp_on_every_case() {
    assert_eq!(check_encode("ggml-vocab-llama-spm"), 46);
}

#[test]
fn llama_bpe_matches_llama_cpp_on_every_case() {
    assert_eq!(check_encode("ggml-vocab-llama-bpe"), 46);
}

#[test]
fn gpt2_matches_llama_cpp_on_every_case() {
    assert_eq!(check_encode("ggml-vocab-gpt-2"), 46);
}

#[test]
fn llama_spm_decodes_back_to_the_input() {
    check_round_trip("ggml-vocab-llama-spm");
}

#[test]
fn llama_bpe_decodes_back_to_the_input() {
    check_round_trip("ggml-vocab-llama-bpe");
}

#[test]
fn gpt2_decodes_back_to_the_input() {
    check_round_trip("ggml-vocab-gpt-2");
}

#[test]
fn vocab_metadata_is_read_as_llama_cpp_reads_it() {
    let (spm, _) = load("ggml-vocab-llama-spm");
    assert_eq!(spm.kind(), TokenizerKind::Spm);
    assert_eq!(
        (spm.vocab_size(), spm.bos(), spm.eos()),
        (32000, Some(1), Some(2))
    );
    assert!(spm.add_bos() && spm.add_space_prefix() && !spm.add_eos());
    // BOS, then llama.cpp's own vector for "Hello world" (case 11 of the .gguf.out file).
    assert_eq!(spm.encode("Hello world", true, false), [1, 15043, 3186]);
    assert!(spm.is_eog(2));

    let (llama3, _) = load("ggml-vocab-llama-bpe");
    assert_eq!(llama3.kind(), TokenizerKind::Bpe);
    assert_eq!(llama3.pre_tokenizer(), Some(PreTokenizerKind::Llama3));
    assert_eq!(llama3.bos(), Some(128000));
    assert!(llama3.add_bos() && !llama3.add_space_prefix());
    // <|eot_id|> ends a turn although the file names only <|end_of_text|> as EOS.
    let eot = llama3.token_id("<|eot_id|>").expect("in the vocabulary");
    assert!(llama3.is_eog(eot) && llama3.is_eog(128001));
    assert_eq!(llama3.encode("<|eot_id|>", false, true), [eot]);
    assert_ne!(llama3.encode("<|eot_id|>", false, false), [eot]);

    let (gpt2, _) = load("ggml-vocab-gpt-2");
    assert_eq!(gpt2.pre_tokenizer(), Some(PreTokenizerKind::Gpt2));
    assert!(!gpt2.add_bos());
}

/// SentencePiece byte fallback spreads one character over several tokens; the streaming
/// decoder must emit nothing until the last byte arrives. "𝄞" (U+1D11E) is not in LLaMA's
/// vocabulary, so it is spelled as four `<0xXX>` tokens.
#[test]
fn streaming_holds_back_a_character_split_across_byte_tokens() {
    let (spm, _) = load("ggml-vocab-llama-spm");
    let ids = spm.encode("a𝄞", false, false);
    let bytes: Vec<u32> = "𝄞"
        .bytes()
        .map(|b| spm.token_id(&format!("<0x{b:02X}>")).expect("byte token"))
        .collect();
    assert!(ids.ends_with(&bytes), "{ids:?} should end in {bytes:?}");

    let mut decoder = spm.stream_decoder();
    let mut chunks = Vec::new();
    for &id in &ids {
        chunks.push(decoder.push(id).expect("in range").to_owned());
    }
    let n = chunks.len();
    assert_eq!(chunks[..n - 4].concat(), "a");
    assert!(
        chunks[n - 4..n - 1].iter().all(String::is_empty),
        "{chunks:?}"
    );
    assert_eq!(chunks[n - 1], "𝄞");
}

/// A small deterministic generator (xorshift), to avoid a dependency for one test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A string mixing the characters tokenizers find hard: runs of whitespace, digits,
    /// apostrophes, punctuation, accents, CJK, emoji with joiners, and arbitrary code points.
    fn text(&mut self, max_chars: u64) -> String {
        const PICKS: &[&str] = &[
            " ",
            "  ",
            "\n",
            "\r\n",
            "\t",
            "a",
            "Z",
            "'s",
            "'LL",
            "3",
            "42",
            ".",
            "!!",
            "é",
            "ß",
            "你",
            "好",
            "🦙",
            "👨\u{200D}👩",
            "\u{FE0F}",
            "<s>",
            "</s>",
            "<|eot_id|>",
        ];
        let n = self.next() % (max_chars + 1);
        let mut s = String::new();
        for _ in 0..n {
            let r = self.next();
            if r.is_multiple_of(4) {
                // Any scalar value except the SentencePiece space mark, which decodes to ' '.
                let c = char::from_u32((r >> 8) as u32 % 0x11_0000).unwrap_or('?');
                s.push(if c == '\u{2581}' { '_' } else { c });
            } else {
                s.push_str(PICKS[(r >> 8) as usize % PICKS.len()]);
            }
        }
        s
    }
}

/// Random text, with and without BOS, decodes back to itself on all three vocabularies and
/// never panics; every id is in range.
#[test]
fn random_text_round_trips_on_every_vocab() {
    for name in [
        "ggml-vocab-llama-spm",
        "ggml-vocab-llama-bpe",
        "ggml-vocab-gpt-2",
    ] {
        let (tokenizer, _) = load(name);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for i in 0..300 {
            let text = rng.text(40);
            let ids = tokenizer.encode(&text, i % 2 == 0, false);
            assert!(ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size()));
            let back = tokenizer.decode(&ids, false).expect("ids in range");
            assert_eq!(back, text, "{name}: round trip of {text:?} via {ids:?}");
        }
    }
}
