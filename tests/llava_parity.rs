//! LLaVA-1.5 end to end against transformers (tests/fixtures/llava-tiny-hf/image-reference,
//! made by generate.py): the PNG through our decoder and preprocessing, the converted tower and
//! projector, the prompt split at <image> and spliced, the LLM over every position.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use llava_convert::{convert_llama, convert_mmproj, Preset};
use llava_models::image::{clip_preprocess, llava15_preprocess, load_image, DEFAULT_MAX_PIXELS};
use llava_models::llava::{embed_pieces, encode_image, tokenize_pieces, Piece};
use llava_models::{Clip, Llama};
use llava_runtime::backend::{Backend, CpuBackend, KvType};
use llava_runtime::gguf::{keys, GgufFile, GgufWriteError, GgufWriter};
use llava_runtime::tokenizer::Tokenizer;

mod common;
use common::*;

/// F16 weights (and F16-rounded activations, as in ggml) against transformers' float32:
/// measured 2.8e-5 (features) and 8.4e-3 (logits) on the CPU, 2.6e-5 and 6.3e-3 on lavapipe;
/// 3.0e-5 and 5.2e-3 with llama.cpp's converters' files.
const F16_FEATURES: f32 = 1e-3;
const F16_LOGITS: f32 = 1e-2;

struct Converted {
    _dir: tempfile::TempDir,
    llm: PathBuf,
    mmproj: PathBuf,
}

fn convert(llm_preset: Preset, vision: Preset) -> Converted {
    let dir = tempfile::tempdir().unwrap();
    let (llm, mmproj) = (dir.path().join("llm.gguf"), dir.path().join("mmproj.gguf"));
    convert_llama(&fixture("llava-tiny-hf"), &llm, llm_preset).unwrap();
    convert_mmproj(&fixture("llava-tiny-hf"), None, &mmproj, vision).unwrap();
    Converted {
        _dir: dir,
        llm,
        mmproj,
    }
}

struct Run {
    features: Vec<f32>,
    logits: Vec<f32>,
    ids_match: bool,
}

fn run(c: &Converted) -> Run {
    run_on(&CpuBackend::new(2), c)
}

fn run_on<B: Backend>(b: &B, c: &Converted) -> Run {
    run_reference(b, c, "llava-tiny-hf/image-reference")
}

/// The converted files on the prompt and image of the reference in fixture dir `reference`.
fn run_reference<B: Backend>(b: &B, c: &Converted, reference: &str) -> Run {
    let llm_file = Arc::new(GgufFile::open(&c.llm).unwrap());
    let llm = Llama::load(b, &llm_file).unwrap();
    let tok = Tokenizer::from_gguf(&llm_file).unwrap();
    let clip = Clip::load(b, &Arc::new(GgufFile::open(&c.mmproj).unwrap())).unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(reference).join("reference.json")).unwrap(),
    )
    .unwrap();
    let image = load_image(
        &fixture(reference["image"].as_str().unwrap()),
        DEFAULT_MAX_PIXELS,
    )
    .unwrap();
    let features = encode_image(b, &clip, &image);

    let pieces = tokenize_pieces(&tok, reference["prompt"].as_str().unwrap(), 1, true).unwrap();
    let n_image = clip.config.n_patches();
    let ids: Vec<u32> = pieces
        .iter()
        .flat_map(|p| match p {
            Piece::Text(ids) => ids.clone(),
            Piece::Image(_) => vec![512; n_image],
        })
        .collect();
    let want_ids: Vec<u32> = reference["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();

    let prompt = embed_pieces(b, &llm, &pieces, std::slice::from_ref(&features));
    let mut cache = llm.new_cache(b, prompt.n_positions, KvType::F32).unwrap();
    let logits = llm.forward(b, prompt.embeddings, 0, &mut cache, false);
    Run {
        features: b.download(&features).unwrap(),
        logits: b.download(&logits).unwrap(),
        ids_match: ids == want_ids,
    }
}

#[test]
fn pixels_match_the_clip_processor() {
    let image = load_image(&fixture("images/odd.png"), DEFAULT_MAX_PIXELS).unwrap();
    let mean = [0.48145466f64, 0.4578275, 0.40821073].map(|x| x as f32);
    let std = [0.26862954f64, 0.26130258, 0.27577711].map(|x| x as f32);
    let ours = llava15_preprocess(&image, 56, mean, std);
    let want = read_npy(&fixture("llava-tiny-hf/image-reference/pixel_values.npy"));
    assert!(max_abs_diff(&ours, &want) <= 1e-5);
}

/// The first LLaVA's kind (llava-v1-tiny, its tower in clip-tiny-v1 beside it): a single
/// linear projector whose type the config leaves unset, a tower that is not 336 px (42 px
/// here, as ViT-L/14 at 224 was), and the CLIP processor's resize and centre crop instead of
/// LLaVA-1.5's padding, as its config's unset `image_aspect_ratio` means. The mmproj holds
/// `mm.0` only, of type "linear", and says "square"; pixels, features and logits match transformers (its LLaVA
/// with an identity second layer, exactly the linear projector).
#[test]
fn the_first_llavas_linear_projector_and_cropped_views_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let (llm, mmproj) = (dir.path().join("llm.gguf"), dir.path().join("mmproj.gguf"));
    let src = fixture("llava-v1-tiny");
    convert_llama(&src, &llm, Preset::F32).unwrap();
    convert_mmproj(&src, Some(&fixture("clip-tiny-v1")), &mmproj, Preset::F32).unwrap();
    let f = GgufFile::open(&mmproj).unwrap();
    assert!(f.tensor("mm.0.weight").is_some() && f.tensor("mm.2.weight").is_none());
    assert_eq!(f.get_str(keys::clip::PROJECTOR_TYPE).unwrap(), "linear");
    assert_eq!(f.get_str(keys::clip::IMAGE_ASPECT_RATIO).unwrap(), "square");
    assert_eq!(f.get_u32(keys::clip::IMAGE_SIZE).unwrap(), 42);

    let image = load_image(&fixture("images/odd.png"), DEFAULT_MAX_PIXELS).unwrap();
    let mean = [0.48145466f64, 0.4578275, 0.40821073].map(|x| x as f32);
    let std = [0.26862954f64, 0.26130258, 0.27577711].map(|x| x as f32);
    let pixels = clip_preprocess(&image, 42, mean, std);
    let want = read_npy(&src.join("image-reference/pixel_values.npy"));
    assert!(max_abs_diff(&pixels, &want) <= 1e-5);

    let c = Converted {
        _dir: dir,
        llm,
        mmproj,
    };
    let r = run_reference(&CpuBackend::new(2), &c, "llava-v1-tiny/image-reference");
    assert!(
        r.ids_match,
        "the prompt tokenizes differently from the reference"
    );
    let want_f = read_npy(&src.join("image-reference/image_features.npy"));
    let want_l = read_npy(&src.join("image-reference/logits.npy"));
    let (df, dl) = (
        max_abs_diff(&r.features, &want_f),
        max_abs_diff(&r.logits, &want_l),
    );
    eprintln!("first LLaVA: features max |diff| {df:.2e}, logits max |diff| {dl:.2e}");
    assert!(
        df <= F32_LOGITS && dl <= F32_LOGITS,
        "features {df}, logits {dl}"
    );
}

/// The preprocessing and projector keys the first LLaVA's files brought: values the runtime
/// cannot honour are refused with the key named, never read as something else.
#[test]
fn unknown_aspect_ratios_and_mismatched_projector_types_are_refused() {
    let c = convert(Preset::F32, Preset::F16);
    let bad = c.mmproj.with_file_name("bad.gguf");
    let b = CpuBackend::new(1);
    let refused = |key: &str, value: &str| {
        with_key(&c.mmproj, &bad, key, value.into());
        let err = Clip::load(&b, &Arc::new(GgufFile::open(&bad).unwrap()))
            .err()
            .unwrap_or_else(|| panic!("{key} = {value:?} was accepted"))
            .to_string();
        assert!(err.contains(key) && err.contains("bad.gguf"), "{err}");
    };
    refused(keys::clip::IMAGE_ASPECT_RATIO, "letterbox");
    // "anyres" needs grid pinpoints, which this LLaVA-1.5 file has none of.
    refused(keys::clip::IMAGE_ASPECT_RATIO, "anyres");
    // A "linear" projector is one layer: this file has mm.2.
    refused(keys::clip::PROJECTOR_TYPE, "linear");
    refused(keys::clip::PROJECTOR_TYPE, "ldp");
    // "pad" is LLaVA-1.5's own, said aloud.
    with_key(
        &c.mmproj,
        &bad,
        keys::clip::IMAGE_ASPECT_RATIO,
        "pad".into(),
    );
    let clip = Clip::load(&b, &Arc::new(GgufFile::open(&bad).unwrap())).unwrap();
    assert!(!clip.config.center_crop);
}

#[test]
fn f32_features_and_logits_match_transformers() {
    let r = run(&convert(Preset::F32, Preset::F32));
    assert!(
        r.ids_match,
        "the prompt tokenizes differently from the reference"
    );
    let want_f = read_npy(&fixture("llava-tiny-hf/image-reference/image_features.npy"));
    let want_l = read_npy(&fixture("llava-tiny-hf/image-reference/logits.npy"));
    let (df, dl) = (
        max_abs_diff(&r.features, &want_f),
        max_abs_diff(&r.logits, &want_l),
    );
    eprintln!("f32: features max |diff| {df:.2e}, logits max |diff| {dl:.2e}");
    assert!(
        df <= F32_LOGITS && dl <= F32_LOGITS,
        "features {df}, logits {dl}"
    );
}

/// Files written by llama.cpp's own converters (tests/fixtures/llamacpp-converted/make.sh): the
/// LLM by convert_hf_to_gguf.py, the mmproj by its legacy LLaVA route (llava_surgery.py and
/// convert_image_encoder_to_gguf.py), the layout most published LLaVA-1.5 GGUFs have. They
/// answer as transformers does, within the bounds of our own F32 conversion.
#[test]
fn files_written_by_llama_cpps_converters_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let theirs = fixture("llamacpp-converted");
    let c = Converted {
        _dir: dir,
        llm: theirs.join("llava-tiny-hf-f32.gguf"),
        mmproj: theirs.join("mmproj-model-f32.gguf"),
    };
    // The legacy layout indeed: the tower already cut to the 3 of 4 layers LLaVA reads.
    let f = GgufFile::open(&c.mmproj).unwrap();
    assert_eq!(f.get_str("clip.projector_type").unwrap(), "mlp");
    assert!(matches!(
        f.get("clip.vision.block_count"),
        Some(llava_runtime::gguf::Value::U32(3))
    ));
    let want_f = read_npy(&fixture("llava-tiny-hf/image-reference/image_features.npy"));
    let want_l = read_npy(&fixture("llava-tiny-hf/image-reference/logits.npy"));
    // Their LLM with our F32 mmproj: the F32 bounds.
    let ours = convert(Preset::F32, Preset::F32);
    let r = run(&Converted {
        _dir: tempfile::tempdir().unwrap(),
        llm: c.llm.clone(),
        mmproj: ours.mmproj.clone(),
    });
    assert!(
        r.ids_match,
        "the prompt tokenizes differently from the reference"
    );
    let dl = max_abs_diff(&r.logits, &want_l);
    eprintln!("llama.cpp's LLM: logits max |diff| {dl:.2e}");
    assert!(dl <= F32_LOGITS, "logits {dl}");
    // Both of theirs. The legacy converter writes the patch embedding and the projector in
    // F16 whatever it is asked (its --use-f32 covers the rest), and F16 weights multiply
    // F16-rounded activations (as in ggml): the features and logits get the F16 test's bounds.
    let r = run(&c);
    let (df, dl) = (
        max_abs_diff(&r.features, &want_f),
        max_abs_diff(&r.logits, &want_l),
    );
    eprintln!("llama.cpp's files: features max |diff| {df:.2e}, logits max |diff| {dl:.2e}");
    assert!(
        df <= F16_FEATURES && dl <= F16_LOGITS,
        "features {df}, logits {dl}"
    );
}

#[test]
fn f16_features_and_logits_stay_close() {
    let r = run(&convert(Preset::F16, Preset::F16));
    let want_f = read_npy(&fixture("llava-tiny-hf/image-reference/image_features.npy"));
    let want_l = read_npy(&fixture("llava-tiny-hf/image-reference/logits.npy"));
    let (df, dl) = (
        max_abs_diff(&r.features, &want_f),
        max_abs_diff(&r.logits, &want_l),
    );
    eprintln!("f16: features max |diff| {df:.2e}, logits max |diff| {dl:.2e}");
    assert!(
        df <= F16_FEATURES && dl <= F16_LOGITS,
        "features {df}, logits {dl}"
    );
}

/// Rewrites an mmproj the way llama.cpp's legacy converter names things: fc1 as ffn_down and
/// fc2 as ffn_up, and `model.image_newline` (when present).
fn to_legacy_names(src: &Path, dst: &Path) {
    let f = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        w.add(k, v.to_owned_value()).unwrap();
    }
    let rename = |n: &str| -> String {
        if n.contains(".ffn_up.") {
            n.replace(".ffn_up.", ".ffn_down.")
        } else if n.contains(".ffn_down.") {
            n.replace(".ffn_down.", ".ffn_up.")
        } else if n == "v.image_newline" {
            "model.image_newline".into()
        } else {
            n.to_owned()
        }
    };
    let tensors: Vec<_> = f.tensors().collect();
    for t in &tensors {
        w.add_tensor(&rename(t.name()), t.ggml_type(), t.shape())
            .unwrap();
    }
    w.write(dst, |i, _, out| -> Result<(), GgufWriteError> {
        out.write_all(tensors[i].data).unwrap();
        Ok(())
    })
    .unwrap();
}

#[test]
fn legacy_llama_cpp_mmproj_names_give_the_same_features() {
    let c = convert(Preset::F32, Preset::F16);
    let legacy = c.mmproj.with_file_name("legacy.gguf");
    to_legacy_names(&c.mmproj, &legacy);
    let f = GgufFile::open(&legacy).unwrap();
    assert_eq!(
        f.tensor("v.blk.0.ffn_down.weight").unwrap().shape(),
        &[64, 256]
    );
    let b = CpuBackend::new(2);
    let image = load_image(&fixture("images/odd.png"), DEFAULT_MAX_PIXELS).unwrap();
    let ours = Clip::load(&b, &Arc::new(GgufFile::open(&c.mmproj).unwrap())).unwrap();
    let theirs = Clip::load(&b, &Arc::new(f)).unwrap();
    let a = b.download(&encode_image(&b, &ours, &image)).unwrap();
    let z = b.download(&encode_image(&b, &theirs, &image)).unwrap();
    assert_eq!(a, z);
}

#[test]
fn markers_and_images_must_agree() {
    let c = convert(Preset::Q8_0, Preset::F16);
    let f = GgufFile::open(&c.llm).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    assert!(tokenize_pieces(&tok, "<image> a <image>", 1, true).is_err());
    assert!(tokenize_pieces(&tok, "no marker", 1, true).is_err());
    let pieces = tokenize_pieces(&tok, "<image>\nq", 1, true).unwrap();
    // BOS comes first even when the prompt starts with the image.
    assert!(matches!(&pieces[0], Piece::Text(ids) if ids == &[1]));
    assert_eq!(pieces[1], Piece::Image(0));
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::MIN, |m, &v| m.max(v)) as f64;
    let lse = row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&v| v as f64 - lse).collect()
}

#[test]
fn quantized_files_stay_close_to_transformers() {
    let want = read_npy(&fixture("llava-tiny-hf/image-reference/logits.npy"));
    let n_vocab = 520;
    // (LLM preset, vision preset, min argmax agreement, max mean KL). The tiny LLM's rows of
    // 128 are too short for K-quants, so Q4_K_M falls back to Q5_0/Q8_0 as llama.cpp's would.
    for (llm, vision, min_agree, max_kl) in [
        (Preset::Q8_0, Preset::F16, 0.99, 5e-3),
        (Preset::Q8_0, Preset::Q8_0, 0.99, 5e-3),
        (Preset::Q4KM, Preset::Q8_0, 0.95, 0.03),
    ] {
        let r = run(&convert(llm, vision));
        let (agree, kl) = agreement_and_kl(&r.logits, &want, n_vocab);
        eprintln!("llm {llm}, vision {vision}: argmax agreement {agree:.3}, mean KL {kl:.2e}");
        assert!(
            agree >= min_agree && kl <= max_kl,
            "{llm}/{vision}: {agree} {kl}"
        );
    }
}

/// The share of positions whose argmax matches the reference's, and the mean KL divergence
/// from the reference's distribution, over rows of `n_vocab` logits.
fn agreement_and_kl(ours: &[f32], want: &[f32], n_vocab: usize) -> (f64, f64) {
    assert_eq!(ours.len(), want.len(), "logits");
    assert_eq!(want.len() % n_vocab, 0, "whole rows");
    let (mut agree, mut kl) = (0usize, 0f64);
    let rows = want.len() / n_vocab;
    for (ours, theirs) in ours.chunks(n_vocab).zip(want.chunks(n_vocab)) {
        let am = |x: &[f32]| (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b });
        agree += usize::from(am(ours) == am(theirs));
        let (p, q) = (log_softmax(theirs), log_softmax(ours));
        kl += p
            .iter()
            .zip(&q)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
    }
    (agree as f64 / rows as f64, kl / rows as f64)
}

/// The same end to end on the GPU backend, with the CPU's bounds: F32 within F32_LOGITS of
/// transformers' features and logits, F16 within F16_FEATURES and F16_LOGITS, and the quantized files within the
/// CPU test's agreement and KL bounds.
#[test]
fn the_gpu_backend_matches_transformers_like_the_cpu() {
    let Some(gpu) = gpu_backend() else {
        return;
    };
    let want_f = read_npy(&fixture("llava-tiny-hf/image-reference/image_features.npy"));
    let want_l = read_npy(&fixture("llava-tiny-hf/image-reference/logits.npy"));
    for (preset, bound_f, bound_l) in [
        (Preset::F32, F32_LOGITS, F32_LOGITS),
        (Preset::F16, F16_FEATURES, F16_LOGITS),
    ] {
        let r = run_on(&gpu, &convert(preset, preset));
        assert!(r.ids_match);
        let (df, dl) = (
            max_abs_diff(&r.features, &want_f),
            max_abs_diff(&r.logits, &want_l),
        );
        eprintln!("{preset} on the GPU: features max |diff| {df:.2e}, logits max |diff| {dl:.2e}");
        assert!(
            df <= bound_f && dl <= bound_l,
            "{preset}: features {df}, logits {dl}"
        );
    }
    let n_vocab = 520;
    for (llm, vision, min_agree, max_kl) in [
        (Preset::Q8_0, Preset::Q8_0, 0.99, 5e-3),
        (Preset::Q4KM, Preset::Q8_0, 0.95, 0.03),
    ] {
        let r = run_on(&gpu, &convert(llm, vision));
        let (agree, kl) = agreement_and_kl(&r.logits, &want_l, n_vocab);
        eprintln!(
            "llm {llm}, vision {vision} on the GPU: argmax agreement {agree:.3}, mean KL {kl:.2e}"
        );
        assert!(
            agree >= min_agree && kl <= max_kl,
            "{llm}/{vision}: {agree} {kl}"
        );
    }
}
