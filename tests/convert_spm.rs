//! Checkpoints that ship SentencePiece's tokenizer.model and no tokenizer.json (the original
//! LLaVA and Vicuna repositories): the converted vocabulary tokenizes exactly as
//! sentencepiece itself does (tests/fixtures/spm, made by generate.py).

use std::path::Path;

use llava_convert::{convert_llama, Preset};
use llava_runtime::gguf::GgufFile;
use llava_runtime::tokenizer::Tokenizer;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

#[test]
fn tokenizer_model_converts_and_tokenizes_like_sentencepiece() {
    let fixtures = Path::new(FIXTURES);
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("spm/reference.json")).unwrap(),
    )
    .unwrap();
    // llama-tied's weights (vocabulary 384) with the SentencePiece model instead of its
    // tokenizer.json.
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("vicuna-like");
    std::fs::create_dir(&ckpt).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join("llama-tied").join(f), ckpt.join(f)).unwrap();
    }
    std::fs::copy(
        fixtures.join("spm/tokenizer.model"),
        ckpt.join("tokenizer.model"),
    )
    .unwrap();
    let out = dir.path().join("m.gguf");
    convert_llama(&ckpt, &out, Preset::Q8_0).unwrap();

    let f = GgufFile::open(&out).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    assert_eq!(
        tok.vocab_size() as u64,
        reference["vocab_size"].as_u64().unwrap()
    );
    for case in reference["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text, true, false), want, "{text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), text, "{text:?}");
    }
}

#[test]
fn a_checkpoint_without_any_tokenizer_is_refused() {
    let fixtures = Path::new(FIXTURES);
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join("llama-tied").join(f), dir.path().join(f)).unwrap();
    }
    let e = convert_llama(dir.path(), &dir.path().join("m.gguf"), Preset::F16).unwrap_err();
    assert!(
        e.to_string()
            .contains("no tokenizer.json or tokenizer.model"),
        "{e}"
    );
    // A corrupt tokenizer.model.
    std::fs::write(
        dir.path().join("tokenizer.model"),
        b"\x0a\xff\xff\xff\xff\x0f",
    )
    .unwrap();
    let e = convert_llama(dir.path(), &dir.path().join("m.gguf"), Preset::F16).unwrap_err();
    assert!(e.to_string().contains("not a SentencePiece model"), "{e}");
    assert!(!dir.path().join("m.gguf").exists());
}
