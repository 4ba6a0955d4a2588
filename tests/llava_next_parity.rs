//! LLaVA-1.6 anyres against transformers' LlavaNextForConditionalGeneration
//! (tests/fixtures/llava-next-tiny-hf, made by generate.py): images wide, tall, square, smaller
//! than one view and exactly a pinpoint take as many positions as in transformers, and the
//! logits agree at every position. The same for the original repository's layout
//! (llava-next-tiny-orig: the tower inside the checkpoint, its shape inferred from the weights,
//! `mm_*` config, no preprocessor config), for LLaVA-1.6-34B's ChatML kind of tokenizer and
//! template (llava-next-tiny-chatml), and for LLaVA-1.6-Mistral's config and template
//! (llava-next-tiny-mistral).

use std::sync::Arc;

use llava_convert::{convert_llama, convert_mmproj, Preset};
use llava_models::image::{load_image, DEFAULT_MAX_PIXELS};
use llava_models::llava::{anyres_layout, embed_pieces, encode_image, tokenize_pieces, Piece};
use llava_models::template::{with_image_markers, Template};
use llava_models::{Clip, Llama};
use llava_runtime::backend::{Backend, CpuBackend, KvType};
use llava_runtime::gguf::{keys, GgufFile};
use llava_runtime::tokenizer::Tokenizer;

mod common;
use common::*;

#[test]
fn anyres_token_counts_and_logits_match_transformers() {
    check(&CpuBackend::new(2), "llava-next-tiny-hf");
}

#[test]
fn the_original_layout_converts_and_matches_transformers() {
    check(&CpuBackend::new(2), "llava-next-tiny-orig");
}

/// LLaVA-1.6-34B's kind (llava-next-tiny-chatml): <|im_start|> and <|im_end|> special tokens
/// in rows of the padded vocabulary, <|im_end|> the end of sequence, a ChatML
/// chat_template.json. The converted file runs with the chatml template, which renders the
/// reference's prompt (LLaVA's chatml_direct, written by the fixture script from the
/// conversation's definition); the prompt tokenizes to transformers' ids and the logits match.
#[test]
fn the_chatml_kind_gets_its_template_end_token_and_logits() {
    check(&CpuBackend::new(2), "llava-next-tiny-chatml");
    let (_dir, f) = runs_with_template("llava-next-tiny-chatml", Template::Chatml);
    let tok = Tokenizer::from_gguf(&f).unwrap();
    // The ids the fixture's tokenizer.json gives them (its added_tokens).
    assert_eq!(
        tok.encode("<|im_start|><|im_end|>", false, true),
        [513, 514]
    );
    assert_eq!(tok.eos(), Some(514));
    assert!(tok.is_eog(514));
}

/// LLaVA-1.6-Mistral's kind (llava-next-tiny-mistral): a `mistral` text config with
/// Mistral-7B-Instruct-v0.2's rope_theta of 1e6, and the processor's chat_template.json with
/// [INST] turns. The file runs with the mistral_instruct template, whose prompt is the
/// reference's, and the logits match at every position.
#[test]
fn the_mistral_kind_gets_its_template_rope_base_and_logits() {
    check(&CpuBackend::new(2), "llava-next-tiny-mistral");
    let (_dir, f) = runs_with_template("llava-next-tiny-mistral", Template::MistralInstruct);
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 1e6);
}

/// Converts fixture `checkpoint`'s LLM and checks that the file runs with `want`, whose prompt
/// for the reference's question is the reference's prompt. The file, with its directory.
fn runs_with_template(checkpoint: &str, want: Template) -> (tempfile::TempDir, GgufFile) {
    let dir = tempfile::tempdir().unwrap();
    let llm_path = dir.path().join("llm.gguf");
    let src = fixture(checkpoint);
    convert_llama(&src, &llm_path, Preset::F32).unwrap();
    let f = GgufFile::open(&llm_path).unwrap();
    let template = Template::from_chat_template(Some(f.get_str(keys::CHAT_TEMPLATE).unwrap()));
    assert_eq!(template, want, "{checkpoint}");
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(src.join("image-reference/reference.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        template.render(&with_image_markers("What is in this picture?", 1)),
        reference["prompt"].as_str().unwrap(),
        "{checkpoint}"
    );
    (dir, f)
}

/// The same on the GPU backend, with the same bound.
#[test]
fn anyres_on_the_gpu_matches_transformers() {
    if let Some(gpu) = gpu_backend() {
        check(&gpu, "llava-next-tiny-hf");
    }
}

/// Converts fixture `checkpoint` and checks it against the references in its image-reference/.
fn check<B: Backend>(b: &B, checkpoint: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (llm_path, mmproj_path) = (dir.path().join("llm.gguf"), dir.path().join("mmproj.gguf"));
    let src = fixture(checkpoint);
    convert_llama(&src, &llm_path, Preset::F32).unwrap();
    convert_mmproj(&src, None, &mmproj_path, Preset::F32).unwrap();
    let llm_file = Arc::new(GgufFile::open(&llm_path).unwrap());
    let llm = Llama::load(b, &llm_file).unwrap();
    let tok = Tokenizer::from_gguf(&llm_file).unwrap();
    let clip = Clip::load(b, &Arc::new(GgufFile::open(&mmproj_path).unwrap())).unwrap();
    assert!(clip.image_newline().is_some());

    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(src.join("image-reference/reference.json")).unwrap(),
    )
    .unwrap();
    let prompt = reference["prompt"].as_str().unwrap();
    for (name, r) in reference["images"].as_object().unwrap() {
        let image = load_image(&fixture(r["image"].as_str().unwrap()), DEFAULT_MAX_PIXELS).unwrap();
        let layout = anyres_layout(&clip, &image).unwrap();
        let want_tokens = r["image_tokens"].as_u64().unwrap() as usize;
        assert_eq!(layout.tokens(), want_tokens, "{name}: {layout:?}");

        let features = encode_image(b, &clip, &image);
        assert_eq!(b.shape(&features).0, want_tokens, "{name}");
        let pieces = tokenize_pieces(&tok, prompt, 1, true).unwrap();
        let ids: Vec<u64> = pieces
            .iter()
            .flat_map(|p| match p {
                Piece::Text(ids) => ids.iter().map(|&i| u64::from(i)).collect::<Vec<_>>(),
                Piece::Image(_) => vec![512; want_tokens],
            })
            .collect();
        let want_ids: Vec<u64> = r["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(ids, want_ids, "{name}");

        let p = embed_pieces(b, &llm, &pieces, std::slice::from_ref(&features));
        let mut cache = llm.new_cache(b, p.n_positions, KvType::F32).unwrap();
        let logits = b
            .download(&llm.forward(b, p.embeddings, 0, &mut cache, false))
            .unwrap();
        let want = read_npy(&src.join(format!("image-reference/{name}-logits.npy")));
        let diff = max_abs_diff(&logits, &want);
        eprintln!(
            "{name}: {} image tokens, max |logit diff| {diff:.2e}",
            want_tokens
        );
        assert!(diff <= F32_LOGITS, "{name}: max |diff| {diff}");
    }
}
