//! Writes the seed corpus, `fuzz/seeds/<target>/`: small, valid inputs that reach deep into
//! each target, for the fuzzers to start from (a mutation rarely makes a valid safetensors
//! file or GGUF model from nothing). Run from anywhere:
//! `cargo run -p llava-fuzz-targets --example make_seeds`. The output is committed; rerun
//! only to change it.
//!
//! The checkpoints are tiny LLaVA models: a LLaMA of width 32 (2 heads, 1 KV head, 1 block,
//! 24 tokens) and a CLIP tower of width 16 on 4×4-pixel images of 2×2 patches.

use std::path::Path;

use image::{ImageFormat, RgbImage};
use llava_convert::{convert_llama, convert_mmproj, Preset};
use llava_fuzz_targets::input::frame;
use llava_runtime::gguf::{GgufWriteError, GgufWriter, MetaArray};
use llava_runtime::quant::GgmlType;
use serde_json::{json, Value};

const FUZZ_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

/// Tag of each file in a `convert_inputs` input: its index in `CHECKPOINT_FILES`.
const CONFIG: u8 = 0;
const TOKENIZER: u8 = 1;
const TOKENIZER_CONFIG: u8 = 2;
const TOKENIZER_MODEL: u8 = 3;
const PREPROCESSOR: u8 = 4;
const SHARD_1: u8 = 5;
const SHARD_2: u8 = 6;
const TOWER_CONFIG: u8 = 7;
const TOWER_WEIGHTS: u8 = 8;

const TEXT_HIDDEN: usize = 32;
const TEXT_FFN: usize = 64;
const VOCAB: usize = 24;
const VISION_HIDDEN: usize = 16;
const VISION_FFN: usize = 32;
const VISION_LAYERS: usize = 2;
const IMAGE_SIZE: usize = 4;
const PATCH: usize = 2;

fn main() {
    let seeds = Path::new(FUZZ_DIR).join("seeds");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = seeds.join(target);
        std::fs::create_dir_all(&dir).expect("seeds directory");
        std::fs::write(dir.join(name), bytes).expect("seed written");
    };

    // ---- converter inputs, and the GGUF files they convert to ----
    let spm_model = std::fs::read(format!("{FIXTURES}/spm/tokenizer.model")).expect("fixture");
    let spm_pieces = llava_convert::SpmModel::from_bytes(Path::new("spm"), &spm_model)
        .expect("fixture parses")
        .pieces
        .len();
    let checkpoints = [
        ("llava15-hf", 3 | 1 << 3, llava_hf(false)),
        ("llava16-hf", 6 | 2 << 3, llava_hf(true)),
        ("llava15-original", 7, llava_original()),
        ("llama-spm", 4, llama_spm(&spm_model, spm_pieces)),
    ];
    let work = tempfile::tempdir().expect("a temporary directory");
    for (name, control, frames) in checkpoints {
        let mut input = vec![control];
        for (tag, bytes) in &frames {
            input.extend(frame(*tag, bytes));
        }
        write("convert_inputs", name, &input);

        let src = work.path().join(name);
        std::fs::create_dir_all(src.join("tower")).expect("directory");
        for (tag, bytes) in &frames {
            let file = llava_fuzz_targets::CHECKPOINT_FILES[usize::from(*tag)];
            std::fs::write(src.join(file), bytes).expect("file written");
        }
        let llm = work.path().join(format!("{name}.gguf"));
        convert_llama(&src, &llm, Preset::ALL[usize::from(control & 7)])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let llm = std::fs::read(llm).expect("converted");
        write("llm_load", name, &llm);
        write("gguf_reader", name, &llm);
        if name != "llama-spm" {
            let mmproj = work.path().join(format!("mmproj-{name}.gguf"));
            let tower = frames
                .iter()
                .any(|(t, _)| *t == TOWER_WEIGHTS)
                .then(|| src.join("tower"));
            convert_mmproj(
                &src,
                tower.as_deref(),
                &mmproj,
                Preset::ALL[usize::from(control >> 3 & 7)],
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            let mmproj = std::fs::read(mmproj).expect("converted");
            write("mmproj_load", name, &mmproj);
            write("gguf_reader", &format!("mmproj-{name}"), &mmproj);
        }
    }

    // ---- byte-level BPE vocabularies, which no converter input makes ----
    let work_dir = work.path().to_owned();
    for pre in ["llama-bpe", "gpt-2"] {
        let name = format!("bpe-{pre}");
        let bytes = bpe_llm(&work_dir.join(&name), pre);
        write("llm_load", &name, &bytes);
        write("gguf_reader", &name, &bytes);
    }

    // ---- the SentencePiece model ----
    write("spm_model", "fixture-spm", &spm_model);

    // ---- images: the fixtures' small PNGs, and each other format, both preprocessings ----
    let mut images: Vec<(String, Vec<u8>)> = ["gray.png", "rgba.png", "odd-bicubic-13x9.png"]
        .iter()
        .map(|f| {
            let bytes = std::fs::read(format!("{FIXTURES}/images/{f}")).expect("fixture");
            (f.replace('.', "-"), bytes)
        })
        .collect();
    let img = RgbImage::from_fn(7, 3, |x, y| image::Rgb([x as u8 * 30, y as u8 * 80, 128]));
    for (format, ext) in [
        (ImageFormat::Jpeg, "jpg"),
        (ImageFormat::Gif, "gif"),
        (ImageFormat::Bmp, "bmp"),
        (ImageFormat::WebP, "webp"),
    ] {
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, format).expect("encodes");
        images.push((format!("7x3-{ext}"), bytes.into_inner()));
    }
    for (i, (name, bytes)) in images.iter().enumerate() {
        // Each image once as LLaVA-1.5 and once as anyres, at the tiny or the real scale.
        for anyres in [0u8, 1] {
            let control = anyres | (i as u8 & 1) << 1;
            let mode = if anyres == 1 { "anyres" } else { "pad" };
            write(
                "image_preprocess",
                &format!("{name}-{mode}"),
                &[&[control], &bytes[..]].concat(),
            );
        }
    }

    // ---- text: the tokenizers and the prompt builder ----
    let texts = [
        "Hello world",
        "  leading spaces, 'quotes' and numbers 12345\n\ttabs",
        "héllo 你好 🦙 \u{1D11E}",
        "<s>[INST] <image>\nWhat is this? [/INST]</s><|eot_id|>",
    ];
    for (i, text) in texts.iter().enumerate() {
        for vocab in 0..3u8 {
            let control = vocab | (i as u8 & 3) << 2;
            write(
                "tokenizer",
                &format!("text{i}-vocab{vocab}"),
                &[&[control], text.as_bytes()].concat(),
            );
        }
    }
    let questions = [
        (0u8, "What is in this picture?"),
        (2 | 1 << 3, "Describe <image> and <image>."),
        (1 | 2 << 3 | 1 << 5, "Compare the images."),
        (3 | 1 << 3 | 2 << 5, "<|im_start|>user\n<image><|im_end|>"),
        (4, "raw </s> text"),
    ];
    for (i, (control, q)) in questions.iter().enumerate() {
        write(
            "prompt_splice",
            &format!("question{i}"),
            &[&[*control], q.as_bytes()].concat(),
        );
    }
}

// ---- checkpoints ----

fn text_config() -> Value {
    json!({
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": TEXT_FFN,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "vocab_size": VOCAB,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "model_type": "llama",
    })
}

fn vision_config() -> Value {
    json!({
        "hidden_size": VISION_HIDDEN,
        "intermediate_size": VISION_FFN,
        "num_attention_heads": 2,
        "num_hidden_layers": VISION_LAYERS,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH,
        "projection_dim": 8,
        "hidden_act": "quick_gelu",
    })
}

/// A llava-hf checkpoint (transformers 4.x names), LLaVA-1.6 when `next`.
fn llava_hf(next: bool) -> Vec<(u8, Vec<u8>)> {
    let mut config = json!({
        "model_type": if next { "llava_next" } else { "llava" },
        "text_config": text_config(),
        "vision_config": vision_config(),
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
    });
    let mut vision = tower_tensors("vision_tower.vision_model.");
    vision.extend(projector_tensors(
        "multi_modal_projector.linear_1",
        "multi_modal_projector.linear_2",
    ));
    if next {
        config["image_grid_pinpoints"] = json!([[4, 8], [8, 4], [8, 8]]);
        vision.push(("image_newline".into(), vec![TEXT_HIDDEN]));
    }
    vec![
        (CONFIG, json_bytes(&config)),
        (TOKENIZER, json_bytes(&tokenizer_json())),
        (
            TOKENIZER_CONFIG,
            json_bytes(&json!({
                "add_bos_token": true,
                "chat_template": "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}",
            })),
        ),
        (
            PREPROCESSOR,
            json_bytes(&json!({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 1.0]})),
        ),
        (
            SHARD_1,
            safetensors(&llm_tensors(
                "language_model.model.",
                "language_model.lm_head.weight",
                VOCAB,
            )),
        ),
        (SHARD_2, safetensors(&vision)),
    ]
}

/// An original LLaVA-1.5 repository: `model.*` names, the projector as `model.mm_projector`,
/// the CLIP tower in a directory of its own (`--vision-tower`).
fn llava_original() -> Vec<(u8, Vec<u8>)> {
    let mut config = text_config();
    config["model_type"] = json!("llava_llama");
    config["mm_vision_select_layer"] = json!(-2);
    config["mm_vision_select_feature"] = json!("patch");
    let mut tensors = llm_tensors("model.", "lm_head.weight", VOCAB);
    tensors.extend(projector_tensors(
        "model.mm_projector.0",
        "model.mm_projector.2",
    ));
    vec![
        (CONFIG, json_bytes(&config)),
        (TOKENIZER, json_bytes(&tokenizer_json())),
        (SHARD_1, safetensors(&tensors)),
        (
            TOWER_CONFIG,
            json_bytes(&json!({"model_type": "clip", "vision_config": vision_config()})),
        ),
        (TOWER_WEIGHTS, safetensors(&tower_tensors("vision_model."))),
    ]
}

/// A LLaMA with SentencePiece's tokenizer.model and tied embeddings.
fn llama_spm(model: &[u8], n_vocab: usize) -> Vec<(u8, Vec<u8>)> {
    let mut config = text_config();
    config["vocab_size"] = json!(n_vocab);
    let mut tensors = llm_tensors("model.", "lm_head.weight", n_vocab);
    tensors.retain(|(name, _)| name != "lm_head.weight");
    vec![
        (CONFIG, json_bytes(&config)),
        (TOKENIZER_MODEL, model.to_vec()),
        (SHARD_1, safetensors(&tensors)),
    ]
}

/// (name, PyTorch shape) of a LLaMA's tensors.
fn llm_tensors(prefix: &str, lm_head: &str, vocab: usize) -> Vec<(String, Vec<usize>)> {
    let (h, ff, kv) = (TEXT_HIDDEN, TEXT_FFN, TEXT_HIDDEN / 2);
    let mut t = vec![(format!("{prefix}embed_tokens.weight"), vec![vocab, h])];
    for (name, shape) in [
        ("input_layernorm", vec![h]),
        ("self_attn.q_proj", vec![h, h]),
        ("self_attn.k_proj", vec![kv, h]),
        ("self_attn.v_proj", vec![kv, h]),
        ("self_attn.o_proj", vec![h, h]),
        ("post_attention_layernorm", vec![h]),
        ("mlp.gate_proj", vec![ff, h]),
        ("mlp.up_proj", vec![ff, h]),
        ("mlp.down_proj", vec![h, ff]),
    ] {
        t.push((format!("{prefix}layers.0.{name}.weight"), shape));
    }
    t.push((format!("{prefix}norm.weight"), vec![h]));
    t.push((lm_head.to_owned(), vec![vocab, h]));
    t
}

fn tower_tensors(prefix: &str) -> Vec<(String, Vec<usize>)> {
    let (h, ff, p) = (VISION_HIDDEN, VISION_FFN, PATCH);
    let n_pos = (IMAGE_SIZE / PATCH).pow(2) + 1;
    let mut t = vec![
        (
            format!("{prefix}embeddings.patch_embedding.weight"),
            vec![h, 3, p, p],
        ),
        (format!("{prefix}embeddings.class_embedding"), vec![h]),
        (
            format!("{prefix}embeddings.position_embedding.weight"),
            vec![n_pos, h],
        ),
        (format!("{prefix}pre_layrnorm.weight"), vec![h]),
        (format!("{prefix}pre_layrnorm.bias"), vec![h]),
    ];
    for i in 0..VISION_LAYERS {
        for (name, w) in [
            ("self_attn.q_proj", vec![h, h]),
            ("self_attn.k_proj", vec![h, h]),
            ("self_attn.v_proj", vec![h, h]),
            ("self_attn.out_proj", vec![h, h]),
            ("layer_norm1", vec![h]),
            ("layer_norm2", vec![h]),
            ("mlp.fc1", vec![ff, h]),
            ("mlp.fc2", vec![h, ff]),
        ] {
            let bias = vec![w[0]];
            t.push((format!("{prefix}encoder.layers.{i}.{name}.weight"), w));
            t.push((format!("{prefix}encoder.layers.{i}.{name}.bias"), bias));
        }
    }
    t
}

fn projector_tensors(first: &str, second: &str) -> Vec<(String, Vec<usize>)> {
    let th = TEXT_HIDDEN;
    vec![
        (format!("{first}.weight"), vec![th, VISION_HIDDEN]),
        (format!("{first}.bias"), vec![th]),
        (format!("{second}.weight"), vec![th, th]),
        (format!("{second}.bias"), vec![th]),
    ]
}

/// A byte-fallback BPE of 24 tokens, llava-hf's `<image>` added last.
fn tokenizer_json() -> Value {
    let pieces = [
        "<unk>", "<s>", "</s>", "<0x0A>", "<0x21>", "▁", "H", "i", "e", "l", "o", "w", "r", "d",
        "▁H", "Hi", "▁Hi", "ll", "lo", "llo", "▁w", "or", "ld",
    ];
    let vocab: serde_json::Map<String, Value> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| ((*p).to_owned(), json!(i)))
        .collect();
    let special = |id: usize, content: &str| json!({"id": id, "content": content, "special": true});
    json!({
        "version": "1.0",
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>"), special(VOCAB - 1, "<image>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ]},
        "pre_tokenizer": null,
        "post_processor": {"type": "TemplateProcessing", "single": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ]},
        "model": {
            "type": "BPE",
            "byte_fallback": true,
            "unk_token": "<unk>",
            "vocab": vocab,
            "merges": ["▁ H", "H i", "▁H i", "l l", "l o", "ll o", "▁ w", "o r", ["l", "d"]],
        },
    })
}

/// A one-block LLaMA (width 32, F16) with a GPT-2-style byte-level BPE vocabulary: the 256
/// byte characters, five merges, three special tokens.
fn bpe_llm(path: &Path, pre: &str) -> Vec<u8> {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| gpt2_char(b).to_string()).collect();
    let merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"];
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    let first_special = tokens.len();
    tokens.extend(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"].map(String::from));
    let n_vocab = tokens.len();
    let types: Vec<i32> = (0..n_vocab)
        .map(|i| if i < first_special { 1 } else { 3 })
        .collect();

    let mut w = GgufWriter::new();
    let fail = |e: GgufWriteError| panic!("{e}");
    w.add("general.architecture", "llama").unwrap_or_else(fail);
    let h = TEXT_HIDDEN as u32;
    for (key, value) in [
        ("llama.embedding_length", h),
        ("llama.block_count", 1),
        ("llama.attention.head_count", 2),
        ("llama.attention.head_count_kv", 1),
        ("llama.feed_forward_length", TEXT_FFN as u32),
        ("llama.context_length", 64),
        ("tokenizer.ggml.bos_token_id", first_special as u32),
        ("tokenizer.ggml.eos_token_id", first_special as u32 + 1),
    ] {
        w.add(key, value).unwrap_or_else(fail);
    }
    w.add("llama.attention.layer_norm_rms_epsilon", 1e-5f32)
        .unwrap_or_else(fail);
    w.add("tokenizer.ggml.model", "gpt2").unwrap_or_else(fail);
    w.add("tokenizer.ggml.pre", pre).unwrap_or_else(fail);
    w.add("tokenizer.ggml.tokens", MetaArray::String(tokens))
        .unwrap_or_else(fail);
    w.add("tokenizer.ggml.token_type", MetaArray::I32(types))
        .unwrap_or_else(fail);
    let merges = merges.iter().map(|m| m.to_string()).collect();
    w.add("tokenizer.ggml.merges", MetaArray::String(merges))
        .unwrap_or_else(fail);

    let (hd, ff, kv) = (TEXT_HIDDEN as u64, TEXT_FFN as u64, TEXT_HIDDEN as u64 / 2);
    let mut shapes = vec![("token_embd.weight".to_owned(), vec![hd, n_vocab as u64])];
    for (name, shape) in [
        ("attn_norm", vec![hd]),
        ("attn_q", vec![hd, hd]),
        ("attn_k", vec![hd, kv]),
        ("attn_v", vec![hd, kv]),
        ("attn_output", vec![hd, hd]),
        ("ffn_norm", vec![hd]),
        ("ffn_gate", vec![hd, ff]),
        ("ffn_up", vec![hd, ff]),
        ("ffn_down", vec![ff, hd]),
    ] {
        shapes.push((format!("blk.0.{name}.weight"), shape));
    }
    shapes.push(("output_norm.weight".to_owned(), vec![hd]));
    for (name, shape) in &shapes {
        // Norms F32, as converters write them; matrices F16.
        let ty = if shape.len() == 1 {
            GgmlType::F32
        } else {
            GgmlType::F16
        };
        w.add_tensor(name, ty, shape).unwrap_or_else(fail);
    }
    w.write(path, |i, decl, out| -> Result<(), GgufWriteError> {
        let n = shapes[i].1.iter().product::<u64>() as usize;
        let values = small_values(n, i as u64);
        let bytes: Vec<u8> = if decl.n_bytes() == 4 * n as u64 {
            values
                .iter()
                .flat_map(|v| (1.0 + v).to_le_bytes())
                .collect()
        } else {
            values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect()
        };
        out.write_all(&bytes).map_err(|error| GgufWriteError::Io {
            path: path.to_owned(),
            error,
        })
    })
    .unwrap_or_else(fail);
    std::fs::read(path).expect("written")
}

/// GPT-2's `bytes_to_unicode`: printable Latin-1 stands for itself, the other bytes map in
/// order to U+0100 upwards.
fn gpt2_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(0x100 + n).expect("below U+0200")
}

// ---- file formats ----

/// `n` deterministic values in ±0.1 (xorshift), like the fixtures' initialisation.
fn small_values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = 0x2545_F491_4F6C_DD1D ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialises")
}

/// A safetensors file of F16 tensors with small deterministic values.
fn safetensors(tensors: &[(String, Vec<usize>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let start = data.len();
        for v in small_values(shape.iter().product(), i as u64) {
            data.extend(half::f16::from_f32(v).to_le_bytes());
        }
        header.insert(
            name.clone(),
            json!({"dtype": "F16", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&header).expect("serialises");
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(data);
    out
}
