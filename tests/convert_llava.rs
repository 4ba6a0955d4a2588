//! Converting LLaVA checkpoints in their three naming schemes (tests/fixtures/llava_fixtures.py):
//! the LLM matches transformers, and the mmproj file has exactly the keys, names, shapes and
//! types GGUF-AND-LLAVA.md §4 specifies, whichever scheme it came from.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use llava_convert::{convert_llama, convert_mmproj, Preset};
use llava_models::Llama;
use llava_runtime::backend::{Backend, CpuBackend, KvType};
use llava_runtime::gguf::GgufFile;
use llava_runtime::quant::GgmlType;
use llava_runtime::tokenizer::{TokenType, Tokenizer};

mod common;
use common::*;

/// (checkpoint dir, --vision-tower dir)
const SCHEMES: [(&str, Option<&str>); 3] = [
    ("llava-tiny-hf", None),
    ("llava-tiny-hf4", None),
    ("llava-tiny-orig", Some("clip-tiny")),
];

use common::text_reference as reference;

#[test]
fn llm_of_every_scheme_matches_transformers() {
    let r = reference("llava-tiny-hf");
    for (scheme, _) in SCHEMES {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("llm.gguf");
        convert_llama(&fixture(scheme), &out, Preset::F32).unwrap();
        let file = Arc::new(GgufFile::open(&out).unwrap());
        let b = CpuBackend::new(2);
        let m = Llama::load(&b, &file).unwrap();
        let mut cache = m
            .new_cache(&b, r.input_ids.len() + r.greedy.len(), KvType::F32)
            .unwrap();
        let logits = b
            .download(&m.forward(&b, m.embed(&b, &r.input_ids), 0, &mut cache, false))
            .unwrap();
        let n_vocab = m.config.n_vocab;
        // The original layout keeps Vicuna's vocabulary (no <image>, no padding): its logits
        // are the first columns of the llava-hf model's.
        assert_eq!(logits.len(), r.logits.len() * n_vocab, "{scheme}");
        assert!(n_vocab <= r.n_vocab(), "{scheme}");
        let diff = logits
            .chunks(n_vocab)
            .zip(&r.logits)
            .map(|(ours, theirs)| max_abs_diff(ours, &theirs[..n_vocab]))
            .fold(0.0, f32::max);
        assert!(diff <= F32_LOGITS, "{scheme}: max |diff| {diff}");

        // Greedy continuation, one token at a time.
        let mut next = argmax(&logits[(r.input_ids.len() - 1) * n_vocab..]);
        let mut got = vec![next];
        for pos in r.input_ids.len()..r.input_ids.len() + r.greedy.len() - 1 {
            let l = b
                .download(&m.forward(&b, m.embed(&b, &[next]), pos, &mut cache, true))
                .unwrap();
            next = argmax(&l);
            got.push(next);
        }
        assert_eq!(got, r.greedy, "{scheme}");
    }
}

fn argmax(row: &[f32]) -> u32 {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best }) as u32
}

#[test]
fn llava_hf_vocabulary_keeps_the_image_token_as_a_control_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("llm.gguf");
    convert_llama(&fixture("llava-tiny-hf"), &out, Preset::Q8_0).unwrap();
    let f = GgufFile::open(&out).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    // 512 trained tokens, <image> at 512, padding to the model's 520 rows.
    assert_eq!(tok.vocab_size(), 520);
    assert_eq!(tok.token_id("<image>"), Some(512));
    assert_eq!(tok.token_type(512), Some(TokenType::Control));
    let ids = tok.encode("a <image> b", false, true);
    assert_eq!(ids.iter().filter(|&&t| t == 512).count(), 1, "{ids:?}");
    assert!(!tok.encode("a <image> b", false, false).contains(&512));
    assert_eq!(f.tensor("token_embd.weight").unwrap().shape(), &[128, 520]);
}

fn mmproj(scheme: &str, tower: Option<&str>, preset: Preset, dir: &Path) -> GgufFile {
    let out = dir.join(format!("mmproj-{scheme}-{preset}.gguf"));
    convert_mmproj(
        &fixture(scheme),
        tower.map(fixture).as_deref(),
        &out,
        preset,
    )
    .unwrap();
    GgufFile::open(&out).unwrap()
}

/// Every tensor of the tiny mmproj (64 wide, 4 heads, fc 256, 56-px images of 14-px patches,
/// 4 blocks of which feature layer −2 uses 3, projector to the LLM's 128), in order.
fn expected_tensors() -> Vec<(String, Vec<u64>)> {
    let mut t: Vec<(String, Vec<u64>)> = vec![
        ("v.patch_embd.weight".into(), vec![14, 14, 3, 64]),
        ("v.class_embd".into(), vec![64]),
        ("v.position_embd.weight".into(), vec![64, 17]),
        ("v.pre_ln.weight".into(), vec![64]),
        ("v.pre_ln.bias".into(), vec![64]),
    ];
    for i in 0..3 {
        for n in ["attn_q", "attn_k", "attn_v", "attn_out"] {
            t.push((format!("v.blk.{i}.{n}.weight"), vec![64, 64]));
            t.push((format!("v.blk.{i}.{n}.bias"), vec![64]));
        }
        for n in ["ln1", "ln2"] {
            t.push((format!("v.blk.{i}.{n}.weight"), vec![64]));
            t.push((format!("v.blk.{i}.{n}.bias"), vec![64]));
        }
        // fc1 is ffn_up (64 → 256), fc2 is ffn_down (256 → 64).
        t.push((format!("v.blk.{i}.ffn_up.weight"), vec![64, 256]));
        t.push((format!("v.blk.{i}.ffn_up.bias"), vec![256]));
        t.push((format!("v.blk.{i}.ffn_down.weight"), vec![256, 64]));
        t.push((format!("v.blk.{i}.ffn_down.bias"), vec![64]));
    }
    t.push(("mm.0.weight".into(), vec![64, 128]));
    t.push(("mm.0.bias".into(), vec![128]));
    t.push(("mm.2.weight".into(), vec![128, 128]));
    t.push(("mm.2.bias".into(), vec![128]));
    t
}

#[test]
fn mmproj_has_the_specified_keys_names_shapes_and_types() {
    let dir = tempfile::tempdir().unwrap();
    let f = mmproj("llava-tiny-hf", None, Preset::F16, dir.path());
    let names: Vec<(String, Vec<u64>)> = f
        .tensor_infos()
        .iter()
        .map(|t| (t.name().to_owned(), t.shape().to_vec()))
        .collect();
    assert_eq!(names, expected_tensors());
    for t in f.tensor_infos() {
        let want = if t.shape().len() == 1 {
            GgmlType::F32
        } else {
            GgmlType::F16
        };
        assert_eq!(t.ggml_type(), want, "{}", t.name());
    }

    let u32_of = |k: &str| f.get_u32(k).unwrap();
    assert_eq!(f.get_str("general.architecture").unwrap(), "clip");
    assert_eq!(f.get_str("clip.projector_type").unwrap(), "mlp");
    assert!(f.get_bool("clip.has_vision_encoder").unwrap());
    assert!(f.get_bool("clip.has_llava_projector").unwrap());
    assert!(!f.get_bool("clip.has_text_encoder").unwrap());
    assert!(
        !f.get_bool("clip.use_gelu").unwrap(),
        "CLIP's activation is quick_gelu"
    );
    assert_eq!(u32_of("general.file_type"), 1);
    assert_eq!(u32_of("clip.vision.image_size"), 56);
    assert_eq!(u32_of("clip.vision.patch_size"), 14);
    assert_eq!(u32_of("clip.vision.embedding_length"), 64);
    assert_eq!(u32_of("clip.vision.feed_forward_length"), 256);
    assert_eq!(u32_of("clip.vision.projection_dim"), 32);
    assert_eq!(u32_of("clip.vision.attention.head_count"), 4);
    assert_eq!(u32_of("clip.vision.block_count"), 3);
    assert_eq!(
        f.get_f32("clip.vision.attention.layer_norm_epsilon")
            .unwrap(),
        1e-5
    );
    let mean: Vec<f32> = f
        .get_array_of::<f32>("clip.vision.image_mean")
        .unwrap()
        .collect();
    let std: Vec<f32> = f
        .get_array_of::<f32>("clip.vision.image_std")
        .unwrap()
        .collect();
    // The preprocessor_config.json values, as f32.
    let as_f32 = |xs: [f64; 3]| xs.map(|x| x as f32);
    assert_eq!(mean, as_f32([0.48145466, 0.4578275, 0.40821073]));
    assert_eq!(std, as_f32([0.26862954, 0.26130258, 0.27577711]));
    // No post-layernorm, no text tower, no LLaVA-1.6 keys in a 1.5 file.
    assert!(f.tensor_infos().iter().all(|t| !t.name().contains("post")));
    assert!(!f.contains_key("clip.vision.image_grid_pinpoints"));
}

#[test]
fn mmproj_is_the_same_from_every_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<GgufFile> = SCHEMES
        .iter()
        .map(|(s, t)| mmproj(s, *t, Preset::F16, dir.path()))
        .collect();
    let meta = |f: &GgufFile| -> Vec<(String, String)> {
        f.metadata()
            .filter(|(k, _)| *k != "general.name")
            .map(|(k, v)| (k.to_owned(), format!("{v:?}")))
            .collect()
    };
    for f in &files[1..] {
        assert_eq!(meta(f), meta(&files[0]), "{}", f.path().display());
        assert_eq!(f.tensor_count(), files[0].tensor_count());
        for (a, b) in f.tensors().zip(files[0].tensors()) {
            assert_eq!((a.name(), a.shape()), (b.name(), b.shape()));
            assert!(
                a.data == b.data,
                "{} differs in {}",
                a.name(),
                f.path().display()
            );
        }
    }
}

#[test]
fn mmproj_vision_quant_keeps_embeddings_in_f16_and_small_tensors_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    let f = mmproj("llava-tiny-hf", None, Preset::Q8_0, dir.path());
    let ty = |n: &str| f.tensor(n).unwrap().ggml_type();
    assert_eq!(ty("v.blk.0.attn_q.weight"), GgmlType::Q8_0);
    assert_eq!(ty("mm.2.weight"), GgmlType::Q8_0);
    assert_eq!(ty("v.patch_embd.weight"), GgmlType::F16);
    assert_eq!(ty("v.position_embd.weight"), GgmlType::F16);
    assert_eq!(ty("v.blk.0.ln1.weight"), GgmlType::F32);
    assert_eq!(f.get_u32("general.file_type").unwrap(), 7);
    let f32_file = mmproj("llava-tiny-hf", None, Preset::F32, dir.path());
    assert!(f32_file
        .tensor_infos()
        .iter()
        .all(|t| t.ggml_type() == GgmlType::F32));
    assert_eq!(f32_file.get_u32("general.file_type").unwrap(), 0);
}

#[test]
fn cli_converts_a_llava_pair_and_refuses_partial_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let llava = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_llava"))
            .args(args)
            .output()
            .unwrap()
    };
    let src = fixture("llava-tiny-orig");
    let (src, out_s) = (src.to_str().unwrap(), out.to_str().unwrap());
    // Without the CLIP directory: an error, and neither file left behind.
    let o = llava(&["convert", src, "--outdir", out_s, "-q", "q8_0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--vision-tower"), "{err}");
    assert_eq!(std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0), 0);

    let tower = fixture("clip-tiny");
    let args = [
        "convert",
        src,
        "--vision-tower",
        tower.to_str().unwrap(),
        "--outdir",
        out_s,
        "-q",
        "q8_0",
    ];
    let o = llava(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("llava-tiny-orig-q8_0.gguf").exists());
    assert!(out.join("mmproj-llava-tiny-orig-f16.gguf").exists());
    // A second run refuses to overwrite, unless --force.
    let o = llava(&args);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(llava(&forced).status.success());
}
