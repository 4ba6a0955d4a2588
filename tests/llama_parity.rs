//! The LLaMA decoder against transformers: tiny random models from tests/fixtures (made by
//! generate.py), converted to GGUF by llava-convert and run on the CPU backend, must give
//! transformers' logits at every position and its greedy continuation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use llava_convert::{convert_llama, Preset};
use llava_models::Llama;
use llava_runtime::backend::{Backend, CpuBackend, KvType};
use llava_runtime::gguf::GgufFile;
use llava_runtime::tokenizer::Tokenizer;

mod common;

use common::{text_reference as reference, F32_LOGITS, FIXTURES};

/// Converts a fixture to GGUF in a temporary directory.
fn convert(model: &str, preset: Preset) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("{model}-{preset}.gguf"));
    convert_llama(&Path::new(FIXTURES).join(model), &out, preset).unwrap();
    (dir, out)
}

struct Loaded<B: Backend = CpuBackend> {
    backend: B,
    model: Llama<B>,
    kv_type: KvType,
}

/// The model with the exact cache: most tests here check the model's arithmetic (the f16
/// cache, the default of `llava run`, has its own test).
fn load(path: &Path) -> Loaded {
    load_with_cache(path, KvType::F32)
}

fn load_with_cache(path: &Path, kv_type: KvType) -> Loaded {
    load_on(CpuBackend::new(2), path, kv_type)
}

fn load_on<B: Backend>(backend: B, path: &Path, kv_type: KvType) -> Loaded<B> {
    let file = Arc::new(GgufFile::open(path).unwrap());
    let model = Llama::load(&backend, &file).unwrap();
    Loaded {
        backend,
        model,
        kv_type,
    }
}

/// Logits of every prompt position, `[positions][vocab]`, from one batched prefill.
fn prompt_logits<B: Backend>(m: &Loaded<B>, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = m.model.new_cache(&m.backend, ids.len(), m.kv_type).unwrap();
    let x = m.model.embed(&m.backend, ids);
    let logits = m.model.forward(&m.backend, x, 0, &mut cache, false);
    logit_rows(m, &logits)
}

/// The prompt's logits decoded one position at a time (decode's kernels: a single row of
/// activations each step, where a prompt at once takes the batch kernels).
fn stepwise_logits<B: Backend>(m: &Loaded<B>, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = m.model.new_cache(&m.backend, ids.len(), m.kv_type).unwrap();
    let mut rows = Vec::new();
    for (pos, &id) in ids.iter().enumerate() {
        let x = m.model.embed(&m.backend, &[id]);
        let logits = m.model.forward(&m.backend, x, pos, &mut cache, false);
        rows.extend(logit_rows(m, &logits));
    }
    rows
}

/// Downloaded logits, a row per position.
fn logit_rows<B: Backend>(m: &Loaded<B>, logits: &B::Tensor) -> Vec<Vec<f32>> {
    let n_vocab = m.model.config.n_vocab;
    let values = m.backend.download(logits).unwrap();
    assert_eq!(values.len() % n_vocab, 0, "logits are whole rows");
    values.chunks(n_vocab).map(<[f32]>::to_vec).collect()
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Prefill, then `n` greedy steps one token at a time.
fn greedy<B: Backend>(m: &Loaded<B>, ids: &[u32], n: usize) -> Vec<u32> {
    let mut cache = m
        .model
        .new_cache(&m.backend, ids.len() + n, m.kv_type)
        .unwrap();
    let x = m.model.embed(&m.backend, ids);
    let mut logits = m
        .backend
        .download(&m.model.forward(&m.backend, x, 0, &mut cache, true))
        .unwrap();
    let mut out = Vec::new();
    for step in 0..n {
        let next = argmax(&logits);
        out.push(next);
        let x = m.model.embed(&m.backend, &[next]);
        let pos = ids.len() + step;
        logits = m
            .backend
            .download(&m.model.forward(&m.backend, x, pos, &mut cache, true))
            .unwrap();
    }
    out
}

/// The largest |difference| of two `[positions][vocab]` tables of the same shape.
fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "positions");
    a.iter()
        .zip(b)
        .map(|(x, y)| common::max_abs_diff(x, y))
        .fold(0.0, f32::max)
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

/// Mean over positions of KL(reference ‖ ours).
fn mean_kl(reference: &[Vec<f32>], ours: &[Vec<f32>]) -> f64 {
    assert_eq!(reference.len(), ours.len(), "positions");
    let total: f64 = reference
        .iter()
        .zip(ours)
        .map(|(r, o)| {
            assert_eq!(r.len(), o.len(), "vocabulary");
            let (lp, lq) = (log_softmax(r), log_softmax(o));
            lp.iter()
                .zip(&lq)
                .map(|(p, q)| p.exp() * (p - q))
                .sum::<f64>()
        })
        .sum();
    total / reference.len() as f64
}

fn argmax_agreement(reference: &[Vec<f32>], ours: &[Vec<f32>]) -> f64 {
    assert_eq!(reference.len(), ours.len(), "positions");
    let same = reference
        .iter()
        .zip(ours)
        .filter(|(r, o)| argmax(r) == argmax(o))
        .count();
    same as f64 / reference.len() as f64
}

const MODELS: [&str; 2] = ["llama-gqa", "llama-tied"];

#[test]
fn f32_logits_match_transformers_at_every_position() {
    for model in MODELS {
        let r = reference(model);
        let (_dir, path) = convert(model, Preset::F32);
        let ours = prompt_logits(&load(&path), &r.input_ids);
        let diff = max_abs_diff(&r.logits, &ours);
        eprintln!("{model} f32: max |logit diff| = {diff:.2e}");
        assert!(diff <= F32_LOGITS, "{model}: max |diff| {diff}");
    }
}

/// A prompt longer than a chunk runs through the layers in chunks (`Llama::forward`, 512
/// rows in the product): each chunk's attention reads the earlier ones from the cache. Chunks
/// of 7 rows (the last one short) must give the single pass's logits at every position, and
/// transformers' within the f32 bound; the last-row-only form must give the last of them.
#[test]
fn a_prompt_in_chunks_gives_the_single_pass_logits() {
    for model in MODELS {
        let r = reference(model);
        let (_dir, path) = convert(model, Preset::F32);
        let m = load(&path);
        let ids = &r.input_ids;
        assert!(
            ids.len() > 14 && !ids.len().is_multiple_of(7),
            "several chunks, a short last one"
        );
        let run = |chunk_rows: usize, last_only: bool| -> Vec<Vec<f32>> {
            let mut cache = m.model.new_cache(&m.backend, ids.len(), m.kv_type).unwrap();
            let x = m.model.embed(&m.backend, ids);
            let logits = m
                .model
                .forward_in_chunks(&m.backend, x, 0, &mut cache, last_only, chunk_rows);
            assert_eq!(
                m.backend.shape(&logits).0,
                if last_only { 1 } else { ids.len() }
            );
            logit_rows(&m, &logits)
        };
        let single = run(usize::MAX, false);
        let chunked = run(7, false);
        let diff = max_abs_diff(&single, &chunked);
        eprintln!("{model}: chunks of 7 against one pass, max |logit diff| = {diff:.2e}");
        assert!(diff <= 1e-4, "{model}: max |diff| {diff}");
        let to_transformers = max_abs_diff(&r.logits, &chunked);
        assert!(
            to_transformers <= F32_LOGITS,
            "{model}: max |diff| {to_transformers}"
        );
        let last = run(7, true);
        let diff = max_abs_diff(&last, &single[ids.len() - 1..]);
        assert!(diff <= 1e-4, "{model}: last row, max |diff| {diff}");
    }
}

#[test]
fn f32_greedy_continuation_matches_transformers() {
    for model in MODELS {
        let r = reference(model);
        let (_dir, path) = convert(model, Preset::F32);
        let ours = greedy(&load(&path), &r.input_ids, r.greedy.len());
        assert_eq!(ours, r.greedy, "{model}");
    }
}

#[test]
fn f16_logits_match_transformers() {
    for model in MODELS {
        let r = reference(model);
        let (_dir, path) = convert(model, Preset::F16);
        let ours = prompt_logits(&load(&path), &r.input_ids);
        let diff = max_abs_diff(&r.logits, &ours);
        eprintln!("{model} f16: max |logit diff| = {diff:.2e}");
        assert!(diff <= 1e-2, "{model}: max |diff| {diff}");
    }
}

#[test]
fn f16_kv_cache_stays_close_to_transformers() {
    for model in MODELS {
        let r = reference(model);
        let (_dir, path) = convert(model, Preset::F32);
        let m = load_with_cache(&path, KvType::F16);
        let ours = prompt_logits(&m, &r.input_ids);
        let diff = max_abs_diff(&r.logits, &ours);
        eprintln!("{model} f32 weights, f16 KV cache: max |logit diff| = {diff:.2e}");
        // Rounding keys and values to f16 costs about what F16 weights do.
        assert!(diff <= 1e-2, "{model}: max |diff| {diff}");
        assert!(diff > 1e-6, "{model}: the f16 cache changed nothing");
        let continuation = greedy(&m, &r.input_ids, r.greedy.len());
        assert_eq!(continuation, r.greedy, "{model}");
    }
}

/// (model, preset, minimum argmax agreement, maximum mean KL in nats). A layout or scale bug
/// shows as KL of several nats; these bounds are well below that and above the rounding noise
/// measured on these models (the note of issue 3 lists the figures). K-quants need rows of
/// 256, so they apply to llama-gqa only; llama-tied's rows of 64 would fall back.
const QUANTIZED: [(&str, Preset, f64, f64); 6] = [
    ("llama-gqa", Preset::Q8_0, 0.99, 1e-3),
    ("llama-gqa", Preset::Q6K, 0.99, 5e-3),
    ("llama-gqa", Preset::Q5KM, 0.99, 0.01),
    ("llama-gqa", Preset::Q4KM, 0.9, 0.02),
    ("llama-gqa", Preset::Q4_0, 0.9, 0.02),
    ("llama-tied", Preset::Q8_0, 0.99, 5e-3),
];

#[test]
fn quantized_models_stay_close_to_transformers() {
    for (model, ty, min_agree, max_kl) in QUANTIZED {
        let r = reference(model);
        let (_dir, path) = convert(model, ty);
        assert_types(&path, ty);
        let ours = prompt_logits(&load(&path), &r.input_ids);
        let agree = argmax_agreement(&r.logits, &ours);
        let kl = mean_kl(&r.logits, &ours);
        eprintln!("{model} {ty}: argmax agreement {agree:.3}, mean KL {kl:.2e}");
        assert!(agree >= min_agree, "{model} {ty}: argmax agreement {agree}");
        assert!(kl <= max_kl, "{model} {ty}: mean KL {kl}");
    }
}

/// The file holds the types llama.cpp's preset would give (the mix rules have unit tests; this
/// checks they reach the file).
fn assert_types(path: &Path, preset: Preset) {
    use llava_runtime::quant::GgmlType;
    let f = GgufFile::open(path).unwrap();
    let ty = |name: &str| f.tensor(name).unwrap().ggml_type();
    assert_eq!(ty("blk.0.attn_norm.weight"), GgmlType::F32);
    // Only llama-gqa has an untied output and rows of 256.
    if f.tensor("output.weight").is_none() {
        return;
    }
    let got = (
        ty("blk.0.attn_q.weight"),
        ty("output.weight"),
        ty("blk.1.attn_v.weight"),
    );
    let want = match preset {
        Preset::Q8_0 => (GgmlType::Q8_0, GgmlType::Q8_0, GgmlType::Q8_0),
        Preset::Q6K => (GgmlType::Q6K, GgmlType::Q6K, GgmlType::Q6K),
        // With 2 layers, use_more_bits picks layer 1 only.
        Preset::Q5KM => (GgmlType::Q5K, GgmlType::Q6K, GgmlType::Q6K),
        Preset::Q4KM => (GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q6K),
        Preset::Q4_0 => (GgmlType::Q4_0, GgmlType::Q6K, GgmlType::Q4_0),
        _ => return,
    };
    assert_eq!(got, want, "{preset}");
}

#[test]
fn converted_tokenizer_encodes_the_prompt_like_transformers() {
    for model in MODELS {
        let r = reference(model);
        let (_dir, path) = convert(model, Preset::F32);
        let file = GgufFile::open(&path).unwrap();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        assert_eq!(tok.encode(&r.prompt, true, false), r.input_ids, "{model}");
        let text = tok.decode(&r.input_ids, false).unwrap();
        assert_eq!(text.trim_start(), r.prompt, "{model}");
    }
}

#[test]
fn every_preset_writes_the_types_its_rules_choose() {
    // The rules themselves are checked against llama.cpp's quantizer, tensor by tensor and
    // byte for byte (tests/llamacpp-interop, src/quantize.rs); this checks that every
    // preset's choice reaches every tensor of a file `convert` writes.
    for preset in Preset::ALL {
        let (_dir, path) = convert("llama-gqa", preset);
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(
            f.get_u32("general.file_type").unwrap(),
            preset.file_type(),
            "{preset}"
        );
        for t in f.tensor_infos() {
            assert_eq!(
                t.ggml_type(),
                preset.tensor_type(t.name(), t.shape(), 2),
                "{preset}: {}",
                t.name()
            );
        }
        // And the file runs.
        let m = load(&path);
        let logits = prompt_logits(&m, &[1, 329, 477]);
        assert!(logits.iter().flatten().all(|v| v.is_finite()), "{preset}");
    }
}

/// The same checks on the GPU backend, with the CPU's bounds: F32 logits within F32_LOGITS and
/// transformers' greedy continuation; F16 weights and the f16 cache within 1e-2; quantized
/// files within the CPU test's agreement and KL bounds, for the prompt at once (the batch
/// kernels) and one position at a time (decode's, with integer dot products where the adapter
/// has them). The GPU's greedy continuation is also the CPU's.
#[test]
fn the_gpu_backend_matches_transformers_like_the_cpu() {
    let Some(_) = common::gpu_backend() else {
        return;
    };
    for model in MODELS {
        let r = reference(model);
        for (preset, kv_type, bound) in [
            (Preset::F32, KvType::F32, F32_LOGITS),
            (Preset::F16, KvType::F32, 1e-2),
            (Preset::F32, KvType::F16, 1e-2),
        ] {
            let (_dir, path) = convert(model, preset);
            let m = load_on(common::gpu_backend().unwrap(), &path, kv_type);
            let ours = prompt_logits(&m, &r.input_ids);
            let diff = max_abs_diff(&r.logits, &ours);
            eprintln!("{model} {preset}, {kv_type:?} cache, GPU: max |logit diff| = {diff:.2e}");
            assert!(
                diff <= bound,
                "{model} {preset} {kv_type:?}: max |diff| {diff}"
            );
            let continuation = greedy(&m, &r.input_ids, r.greedy.len());
            assert_eq!(continuation, r.greedy, "{model} {preset} {kv_type:?}");
            let cpu = load_with_cache(&path, kv_type);
            assert_eq!(continuation, greedy(&cpu, &r.input_ids, r.greedy.len()));
        }
    }
    for (model, ty, min_agree, max_kl) in QUANTIZED {
        let r = reference(model);
        let (_dir, path) = convert(model, ty);
        let m = load_on(common::gpu_backend().unwrap(), &path, KvType::F32);
        for (how, ours) in [
            ("at once", prompt_logits(&m, &r.input_ids)),
            ("stepwise", stepwise_logits(&m, &r.input_ids)),
        ] {
            let (agree, kl) = (
                argmax_agreement(&r.logits, &ours),
                mean_kl(&r.logits, &ours),
            );
            eprintln!("{model} {ty}, GPU, {how}: argmax agreement {agree:.3}, mean KL {kl:.2e}");
            assert!(
                agree >= min_agree && kl <= max_kl,
                "{model} {ty} {how}: {agree} {kl}"
            );
        }
    }
}

/// A decode step on the GPU is one submission and one readback (the logits of its row): the
/// ops of the forward pass are recorded, not run one by one.
#[test]
fn a_gpu_decode_step_is_one_submission_and_one_readback() {
    let Some(gpu) = common::gpu_backend() else {
        return;
    };
    let r = reference("llama-gqa");
    let (_dir, path) = convert("llama-gqa", Preset::Q8_0);
    let m = load_on(gpu, &path, KvType::F16);
    let mut cache = m
        .model
        .new_cache(&m.backend, r.input_ids.len() + 4, m.kv_type)
        .unwrap();
    let x = m.model.embed(&m.backend, &r.input_ids);
    let logits = m.model.forward(&m.backend, x, 0, &mut cache, true);
    let mut next = argmax(&m.backend.download(&logits).unwrap());
    for step in 0..3 {
        let before = m.backend.stats();
        let x = m.model.embed(&m.backend, &[next]);
        let out = m
            .model
            .forward(&m.backend, x, r.input_ids.len() + step, &mut cache, true);
        let row = m.backend.download(&out).unwrap();
        assert_eq!(row.len(), m.model.config.n_vocab);
        let after = m.backend.stats();
        assert_eq!(
            (
                after.submissions - before.submissions,
                after.readbacks - before.readbacks
            ),
            (1, 1)
        );
        eprintln!(
            "decode step {step}: {} dispatches",
            after.dispatches - before.dispatches
        );
        next = argmax(&row);
    }
}
