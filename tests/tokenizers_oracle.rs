//! Our tokenizer, built from a converted GGUF, against Hugging Face's `tokenizers` library
//! reading the checkpoint's own tokenizer.json: the same ids for a varied corpus (spaces and
//! runs of them, digits, punctuation, accents, CJK, emoji and other byte-fallback text, the
//! special tokens, long words, newlines), with and without BOS.

use llava_runtime::gguf::GgufFile;
use llava_runtime::tokenizer::Tokenizer;

mod common;
use common::*;

/// Every fixture checkpoint with a tokenizer.json.
const CHECKPOINTS: &[&str] = &[
    "llama-gqa",
    "llama-tied",
    "llava-tiny-hf",
    "llava-tiny-hf4",
    "llava-tiny-orig",
    "llava-next-tiny-hf",
    "llava-next-tiny-orig",
    "llava-next-tiny-chatml",
];

const CORPUS: &[&str] = &[
    "Hello world",
    "USER: What is in this picture? ASSISTANT: A small brown dog.",
    " leading space",
    "  two leading spaces and trailing  ",
    "multiple     spaces\tand\ttabs",
    "line one\nline two\n\n\nthree newlines",
    "Numbers: 0 1 12 123 1234 12345 3.14159 -7 +12 50% 1,000,000",
    "Café, naïve, résumé, über, façade — accents.",
    "東京 is Tokyo; 北京 is Beijing. 你好，世界！",
    "日本語のテキストとカタカナ",
    "Emoji: 🦙🔥👍🏽 and a family 👨‍👩‍👧",
    "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism",
    "def main(): print(\"hello, world\")  # code",
    "<s> literal specials </s> and <unk> inside text",
    "<|im_start|>user\nChatML turns<|im_end|><|im_start|>assistant\n<|im_end|>x <|im_start|> y",
    "",
    " ",
    "\u{0}\u{1}\u{7f} control bytes",
    "ｆｕｌｌｗｉｄｔｈ and Ω≈ç√∫ symbols",
];

#[test]
fn our_ids_are_the_ids_of_hugging_faces_tokenizers() {
    for name in CHECKPOINTS {
        let dir = fixture(name);
        let hf = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = tempfile::tempdir().unwrap();
        let gguf = out.path().join("llm.gguf");
        llava_convert::convert_llama(&dir, &gguf, llava_convert::Preset::F32).unwrap();
        let ours = Tokenizer::from_gguf(&GgufFile::open(&gguf).unwrap()).unwrap();
        let mut checked = 0;
        for text in CORPUS {
            for add_special in [false, true] {
                let want: Vec<u32> = hf
                    .encode(*text, add_special)
                    .unwrap_or_else(|e| panic!("{name}: {text:?}: {e}"))
                    .get_ids()
                    .to_vec();
                let got = ours.encode(text, add_special, true);
                assert_eq!(got, want, "{name}: {text:?} (add_special {add_special})");
                checked += 1;
            }
        }
        eprintln!("{name}: {checked} encodings agree");
    }
}
