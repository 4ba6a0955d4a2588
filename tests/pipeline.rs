//! The library API (`llava_models::Pipeline` and `Session`) against transformers' outputs on
//! the fixture models: a conversation appended piece by piece computes what one pass over it
//! computes, generation continues it, and every misuse is a typed error, never a panic.

use std::ops::ControlFlow;
use std::path::Path;

use llava_convert::{convert_llama, Preset};
use llava_models::image::{load_image, DEFAULT_MAX_PIXELS};
use llava_models::llava::PromptError;
use llava_models::template::Template;
use llava_models::{Error, GenerateOptions, LoadOptions, Pipeline, StopReason};
use llava_runtime::backend::{CpuBackend, KvType};

mod common;
use common::*;

use common::text_reference as reference;

const EXACT: LoadOptions = LoadOptions {
    n_ctx: 0,
    beyond_trained_ctx: false,
    kv_type: KvType::F32,
    max_image_pixels: DEFAULT_MAX_PIXELS,
    image_cache_bytes: 0,
};

fn text_pipeline(dir: &Path) -> Pipeline<CpuBackend> {
    let llm = dir.join("llm.gguf");
    convert_llama(&fixture("llama-gqa"), &llm, Preset::F32).unwrap();
    Pipeline::load(CpuBackend::new(2), &llm, None, &EXACT).unwrap()
}

#[test]
fn a_prompt_appended_in_parts_computes_what_transformers_does_over_the_whole() {
    let dir = tempfile::tempdir().unwrap();
    let p = text_pipeline(dir.path());
    let r = reference("llama-gqa");
    let mut s = p.session().unwrap();
    // A batch, a single row (the decode path), then the rest as a batch.
    let cuts = [0, 10, 11, r.input_ids.len()];
    for w in cuts.windows(2) {
        s.append_tokens(&r.input_ids[w[0]..w[1]]).unwrap();
        assert_eq!(s.n_past(), w[1]);
        let diff = max_abs_diff(s.last_logits().unwrap(), &r.logits[w[1] - 1]);
        assert!(
            diff <= F32_LOGITS,
            "after {} positions: max |diff| {diff}",
            w[1]
        );
    }

    // Greedy generation continues the conversation: transformers' continuation, each token
    // joining the cache (max_tokens leaves the last one's logits ready to go on).
    let n = r.greedy.len();
    let options = GenerateOptions {
        max_tokens: n,
        ..GenerateOptions::default()
    };
    let mut text = String::new();
    let stats = s
        .generate(&options, |piece| {
            text.push_str(piece);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(stats.stop_reason, StopReason::MaxTokens);
    assert_eq!(stats.generated_tokens, n);
    let generated: Vec<u32> = s.tokens()[r.input_ids.len()..]
        .iter()
        .map(|t| t.unwrap())
        .collect();
    assert_eq!(generated, r.greedy);
    let want = p.tokenizer().decode(&r.greedy, false).unwrap();
    // The continuation keeps the space of its first piece (" brown" after "A small").
    assert_eq!(text, format!(" {}", want.trim_start()));
    assert!(s.last_logits().is_some());
}

#[test]
fn misuse_is_a_typed_error_and_leaves_the_session_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let p = text_pipeline(dir.path());
    let r = reference("llama-gqa");
    let mut s = p.session_of(10).unwrap();
    // Too long for the context: refused before anything runs.
    match s.append_tokens(&r.input_ids) {
        Err(Error::Prompt(PromptError::TooLong {
            positions,
            room: 10,
            n_ctx: 10,
            ..
        })) if positions == r.input_ids.len() => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(s.n_past(), 0);
    // Nothing to answer yet.
    let none = s.generate(&GenerateOptions::default(), |_| ControlFlow::Continue(()));
    assert!(
        matches!(none, Err(Error::Usage(_))),
        "{:?}",
        none.map(|_| ())
    );
    // Images without a vision tower.
    let img = load_image(&fixture("images/odd.png"), DEFAULT_MAX_PIXELS).unwrap();
    let e = s.append("<image> what is this?", &[img]).unwrap_err();
    assert!(e.to_string().contains("vision tower"), "{e}");
    // An empty prompt, and ids outside the vocabulary.
    assert!(matches!(
        s.append_tokens(&[]),
        Err(Error::Prompt(PromptError::Empty))
    ));
    let n_vocab = p.llm().config.n_vocab as u32;
    let e = s.append_tokens(&[1, n_vocab]).unwrap_err();
    assert!(e.to_string().contains("outside the model's"), "{e}");
    assert_eq!(s.n_past(), 0);
    // A system prompt where the template has none.
    s.set_template(Template::MistralInstruct).unwrap();
    assert!(matches!(s.set_system("x"), Err(Error::Usage(_))));
    // Sampling settings out of range are refused before anything is sampled.
    s.append_tokens(&r.input_ids[..9]).unwrap();
    let mut bad = GenerateOptions::default();
    bad.sampler.top_p = 0.0;
    let e = s.generate(&bad, |_| ControlFlow::Continue(())).unwrap_err();
    assert!(e.to_string().contains("top_p must be in (0, 1]"), "{e}");
    assert!(s.last_logits().is_some(), "the prompt's logits are kept");
    // A prompt that fills the context exactly, then generation stops there.
    let stats = s
        .generate(&GenerateOptions::default(), |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(stats.stop_reason, StopReason::ContextFull);
    assert_eq!(s.n_past(), 10);
    let e = s.append_tokens(&[1]).unwrap_err();
    assert!(e.to_string().contains("only 0 of the context's 10"), "{e}");
}

#[test]
fn the_callback_stops_generation_and_a_follow_up_closes_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let p = text_pipeline(dir.path());
    let mut s = p.session().unwrap();
    let options = GenerateOptions {
        max_tokens: 50,
        ..GenerateOptions::default()
    };
    let mut pieces = 0;
    let first = s
        .ask("What is in this picture?", &[], &options, |_| {
            pieces += 1;
            ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!(pieces, 1);
    assert_eq!(first.generation.stop_reason, StopReason::Cancelled);
    let after_first = s.n_past();
    assert_eq!(
        after_first,
        first.prefill.positions + first.generation.generated_tokens - 1,
        "every generated token but the last sampled one is in the cache"
    );
    // The follow-up runs only its own tokens: the cancelled answer's last token, the
    // template's end of turn, and the next question in the conversation format.
    let t = s.template();
    assert_eq!(t, Template::LlavaV1);
    let second = s
        .ask("And then?", &[], &options, |_| ControlFlow::Continue(()))
        .unwrap();
    let followup = format!("{}{}", t.end_of_turn(), t.render_followup("And then?"));
    let want = 1 + p.tokenizer().encode(&followup, false, true).len();
    assert_eq!(second.prefill.positions, want);
    assert!(s.n_past() > after_first + want - 1);
    // Clearing starts over at position 0, with BOS.
    s.clear();
    assert_eq!(s.n_past(), 0);
    let again = s.append("hi", &[]).unwrap();
    assert_eq!(s.tokens()[0], p.tokenizer().bos());
    assert_eq!(again.positions, s.n_past());
}

#[test]
fn an_image_question_in_parts_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let (llm, mmproj) = tiny_llava(dir.path());
    let p = Pipeline::load(CpuBackend::new(2), &llm, Some(&mmproj), &EXACT).unwrap();
    let want = read_npy(&fixture("llava-tiny-hf/image-reference/logits.npy"));
    let n_vocab = p.llm().config.n_vocab;
    let img = load_image(&fixture("images/odd.png"), DEFAULT_MAX_PIXELS).unwrap();
    // The reference prompt, "USER: <image>\nWhat is in this picture? ASSISTANT:", cut
    // after the image: the second part continues at the positions after the image's.
    let mut s = p.session().unwrap();
    let first = s
        .append("USER: <image>", std::slice::from_ref(&img))
        .unwrap();
    assert_eq!(first.image_positions, p.image_positions(&img).unwrap());
    let row = |pos: usize| &want[pos * n_vocab..(pos + 1) * n_vocab];
    let diff = max_abs_diff(s.last_logits().unwrap(), row(s.n_past() - 1));
    assert!(diff <= F32_LOGITS, "after the image: max |diff| {diff}");
    s.append("\nWhat is in this picture? ASSISTANT:", &[])
        .unwrap();
    assert_eq!(s.n_past() * n_vocab, want.len());
    let diff = max_abs_diff(s.last_logits().unwrap(), row(s.n_past() - 1));
    assert!(diff <= F32_LOGITS, "at the end: max |diff| {diff}");

    // A tower whose projector does not feed this LLM is refused by name.
    let other = dir.path().join("other.gguf");
    convert_llama(&fixture("llama-gqa"), &other, Preset::F32).unwrap();
    let e = Pipeline::load(CpuBackend::new(1), &other, Some(&mmproj), &EXACT)
        .err()
        .expect("not a pair");
    assert!(matches!(e, Error::Incompatible { .. }), "{e}");
    assert!(e.to_string().contains("not a pair"), "{e}");
    // Swapped files say which is which.
    let e = Pipeline::load(CpuBackend::new(1), &mmproj, None, &EXACT)
        .err()
        .expect("an mmproj is not an LLM");
    assert!(e.to_string().contains("pass it as --mmproj"), "{e}");
}

#[test]
fn an_image_seen_again_comes_from_the_cache_with_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let (llm, mmproj) = tiny_llava(dir.path());
    let options = LoadOptions {
        image_cache_bytes: 1 << 20,
        ..EXACT
    };
    let p = Pipeline::load(CpuBackend::new(2), &llm, Some(&mmproj), &options).unwrap();
    let img = load_image(&fixture("images/odd.png"), DEFAULT_MAX_PIXELS).unwrap();
    let mut s = p.session().unwrap();
    let prompt = "USER: <image>\nWhat is in this picture? ASSISTANT:";
    let first = s.append(prompt, std::slice::from_ref(&img)).unwrap();
    let want = s.last_logits().unwrap().to_vec();
    s.clear();
    let again = s.append(prompt, std::slice::from_ref(&img)).unwrap();
    assert_eq!(s.last_logits().unwrap(), &want[..], "bit for bit");
    let stats = p.image_cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));
    assert_eq!(first.positions, again.positions);
    // Another picture is another entry.
    let mut other = img.clone();
    other.data[0] ^= 1;
    s.clear();
    s.append(prompt, &[other]).unwrap();
    assert_eq!(p.image_cache_stats().misses, 2);
}
