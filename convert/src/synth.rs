//! Random-weight models of real shapes, for benchmarks: `llava synth`.
//!
//! An LLM file and, for the LLaVA shapes, an mmproj file, with the keys, tensor names, shapes
//! and per-tensor types a conversion of the real checkpoint gives (the same `llama_metadata`,
//! `ClipLayout` and preset rules). The weights are deterministic (the seed, the file and the
//! tensor's index pick them) and spread like a freshly initialised model's; quantized tensors
//! are built from pooled blocks (`random.rs`), so a 7B file takes seconds, not minutes.

use std::collections::HashMap;
use std::path::Path;

use llava_runtime::gguf::{GgufWriter, MetaArray, MetaValue};
use llava_runtime::quant::GgmlType;

use crate::clip::{vision_tensor_type, ClipLayout, VisionHparams, CLIP_MEAN, CLIP_STD};
use crate::error::ConvertError;
use crate::llama::write_tensor;
use crate::llama::{llama_metadata, LlamaHparams};
use crate::mix::Preset;
use crate::quantize::quantize_tensor;
use crate::random::{derive_seed, random_normal, BlockPool};
use crate::ConvertSummary;

/// Model shapes `llava synth` can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthModel {
    /// 2 layers of width 256, and a 2-block vision tower of width 64: for tests.
    Tiny,
    /// TinyLlama-1.1B.
    TinyLlama1B,
    /// Vicuna-7B v1.5, the LLM of LLaVA-1.5-7B.
    Llava15_7B,
    /// Mistral-7B-Instruct-v0.2, the LLM of LLaVA-1.6-Mistral-7B.
    Llava16Mistral7B,
}

impl SynthModel {
    /// Every model, in the order `llava synth` lists them when `--preset` names none.
    pub const ALL: [SynthModel; 4] = [
        SynthModel::Tiny,
        SynthModel::TinyLlama1B,
        SynthModel::Llava15_7B,
        SynthModel::Llava16Mistral7B,
    ];

    /// The name `llava synth --preset` takes (`tiny`, `llava-1.5-7b`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SynthModel::Tiny => "tiny",
            SynthModel::TinyLlama1B => "tinyllama-1.1b",
            SynthModel::Llava15_7B => "llava-1.5-7b",
            SynthModel::Llava16Mistral7B => "llava-1.6-mistral-7b",
        }
    }

    /// The model called `name`, if any.
    pub fn from_name(name: &str) -> Option<SynthModel> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Published shapes: TinyLlama-1.1B's config.json; LLaVA's LLMs per GGUF-AND-LLAVA.md §3.
    pub fn hparams(self) -> LlamaHparams {
        let (hidden_size, n_layers, n_heads, n_kv_heads, ffn_size, rope_theta, n_ctx_train) =
            match self {
                SynthModel::Tiny => (256, 2, 4, 2, 512, 10_000.0, 512),
                SynthModel::TinyLlama1B => (2048, 22, 32, 4, 5632, 10_000.0, 2048),
                SynthModel::Llava15_7B => (4096, 32, 32, 32, 11008, 10_000.0, 4096),
                SynthModel::Llava16Mistral7B => (4096, 32, 32, 8, 14336, 1_000_000.0, 32768),
            };
        LlamaHparams {
            vocab_size: if self == SynthModel::Tiny { 512 } else { 32000 },
            hidden_size,
            n_layers,
            n_heads,
            n_kv_heads,
            ffn_size,
            rms_eps: 1e-5,
            rope_theta,
            rope_linear_factor: None,
            n_ctx_train,
        }
    }
}

/// LLaVA-1.6's `image_grid_pinpoints`, flattened as llama.cpp stores them.
const LLAVA_16_PINPOINTS: [i32; 10] = [336, 672, 672, 336, 672, 672, 1008, 336, 336, 1008];

impl SynthModel {
    /// Whether the model has a vision tower and projector (an mmproj file).
    pub fn has_vision(self) -> bool {
        self != SynthModel::TinyLlama1B
    }

    /// The mmproj layout: LLaVA's CLIP ViT-L/14-336 with 23 of its 24 blocks used and an
    /// mlp2x projector to the LLM's width (GGUF-AND-LLAVA.md §4); a tiny CLIP for `Tiny`.
    fn clip_layout(self) -> Option<ClipLayout> {
        let (vision, n_used) = match self {
            SynthModel::TinyLlama1B => return None,
            SynthModel::Tiny => (
                VisionHparams {
                    hidden_size: 64,
                    ffn_size: 256,
                    n_heads: 4,
                    n_layers: 3,
                    image_size: 56,
                    patch_size: 14,
                    layer_norm_eps: 1e-5,
                    projection_dim: 32,
                    use_gelu: false,
                },
                2,
            ),
            SynthModel::Llava15_7B | SynthModel::Llava16Mistral7B => {
                (VisionHparams::clip_vit_l_14_336(), 23)
            }
        };
        Some(ClipLayout {
            name: synthetic_name(self),
            vision,
            n_used,
            text_hidden: self.hparams().hidden_size,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            pinpoints: (self == SynthModel::Llava16Mistral7B).then(|| LLAVA_16_PINPOINTS.to_vec()),
            linear_projector: false,
            center_crop: false,
        })
    }
}

fn synthetic_name(model: SynthModel) -> String {
    format!("synthetic {} (random weights)", model.name())
}

/// The spread of random matrix weights: like `initializer_range` in transformers' configs.
const WEIGHT_STD: f32 = 0.02;

/// Seed streams, so the LLM and the mmproj of one seed differ.
const STREAM_LLM: u64 = 1;
const STREAM_MMPROJ: u64 = 2;
const STREAM_POOL: u64 = 3;

/// Writes a random-weight LLaMA model of shape `model`, quantized with `preset`.
pub fn synth_llm(
    model: SynthModel,
    preset: Preset,
    out: &Path,
    seed: u64,
) -> Result<ConvertSummary, ConvertError> {
    let hp = model.hparams();
    let mut w = GgufWriter::new();
    for (k, v) in llama_metadata(&hp, &synthetic_name(model), preset) {
        w.add(&k, v)?;
    }
    for (k, v) in byte_vocab(hp.vocab_size) {
        w.add(k, v)?;
    }
    for (name, shape) in llama_tensor_shapes(&hp) {
        w.add_tensor(
            &name,
            preset.tensor_type(&name, &shape, hp.n_layers),
            &shape,
        )?;
    }
    write_random(w, out, seed, STREAM_LLM)
}

/// Writes the random-weight mmproj file of `model` (vision tower and projector), its matrices
/// quantized with `preset` under the vision rules.
pub fn synth_mmproj(
    model: SynthModel,
    preset: Preset,
    out: &Path,
    seed: u64,
) -> Result<ConvertSummary, ConvertError> {
    let layout = model.clip_layout().ok_or_else(|| ConvertError::Input {
        path: out.to_owned(),
        reason: format!("{} has no vision tower", model.name()),
    })?;
    let mut w = GgufWriter::new();
    for (k, v) in layout.metadata(preset) {
        w.add(k, v)?;
    }
    for t in layout.tensors() {
        let ne = t.ne();
        w.add_tensor(&t.gguf, vision_tensor_type(preset, &t.gguf, &ne), &ne)?;
    }
    write_random(w, out, seed, STREAM_MMPROJ)
}

/// Writes the declared tensors with random data: norm weights (1-D `*weight`) 1; other
/// vectors and float matrices N(0, WEIGHT_STD²); quantized matrices pooled blocks.
fn write_random(
    w: GgufWriter,
    out: &Path,
    seed: u64,
    stream: u64,
) -> Result<ConvertSummary, ConvertError> {
    let mut summary = ConvertSummary::new(w.tensors().len());
    let mut pools: HashMap<GgmlType, BlockPool> = HashMap::new();
    w.write(out, |i, decl, sink| -> Result<(), ConvertError> {
        let n = decl.n_elements() as usize;
        let row_len = decl.shape[0] as usize;
        let tensor_seed = derive_seed(seed, stream, i as u64);
        let bytes = if decl.shape.len() == 1 && decl.name.ends_with("weight") {
            // Norm weights near 1, as trained models have them.
            quantize_tensor(&decl.name, decl.ty, &vec![1.0; n], row_len)?
        } else if matches!(decl.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            let data = random_normal(n, WEIGHT_STD, tensor_seed);
            quantize_tensor(&decl.name, decl.ty, &data, row_len)?
        } else {
            let pool = match pools.entry(decl.ty) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let pool_seed = derive_seed(seed, STREAM_POOL, decl.ty.id() as u64);
                    e.insert(BlockPool::new(decl.ty, WEIGHT_STD, pool_seed)?)
                }
            };
            pool.fill(n, tensor_seed)
        };
        write_tensor(out, decl, &bytes, sink, &mut summary)
    })?;
    Ok(summary)
}

/// Names and ggml-order shapes of a LLaMA model with an untied output.
fn llama_tensor_shapes(hp: &LlamaHparams) -> Vec<(String, Vec<u64>)> {
    let h = hp.hidden_size as u64;
    let head_dim = h / hp.n_heads as u64;
    let q = hp.n_heads as u64 * head_dim;
    let kv = hp.n_kv_heads as u64 * head_dim;
    let ff = hp.ffn_size as u64;
    let v = hp.vocab_size as u64;
    let mut t = vec![("token_embd.weight".to_owned(), vec![h, v])];
    for i in 0..hp.n_layers {
        for (n, shape) in [
            ("attn_norm", vec![h]),
            ("attn_q", vec![h, q]),
            ("attn_k", vec![h, kv]),
            ("attn_v", vec![h, kv]),
            ("attn_output", vec![q, h]),
            ("ffn_norm", vec![h]),
            ("ffn_gate", vec![h, ff]),
            ("ffn_up", vec![h, ff]),
            ("ffn_down", vec![ff, h]),
        ] {
            t.push((format!("blk.{i}.{n}.weight"), shape));
        }
    }
    t.push(("output_norm.weight".to_owned(), vec![h]));
    t.push(("output.weight".to_owned(), vec![h, v]));
    t
}

/// A SentencePiece vocabulary that spells any text: the three LLaMA specials, the 256
/// byte-fallback tokens, the printable ASCII characters (space as "▁"), then filler tokens up
/// to `n_vocab`. Tokenization is character by character, which is all a benchmark needs.
fn byte_vocab(n_vocab: usize) -> Vec<(&'static str, MetaValue)> {
    let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for c in (b' '..=b'~').map(char::from) {
        tokens.push(if c == ' ' {
            "▁".to_owned()
        } else {
            c.to_string()
        });
        types.push(1);
    }
    let mut i = 0;
    while tokens.len() < n_vocab {
        tokens.push(format!("<filler{i}>"));
        types.push(5);
        i += 1;
    }
    tokens.truncate(n_vocab);
    types.truncate(n_vocab);
    let n = tokens.len();
    vec![
        ("tokenizer.ggml.model", "llama".into()),
        ("tokenizer.ggml.tokens", MetaArray::String(tokens).into()),
        ("tokenizer.ggml.scores", MetaArray::F32(vec![0.0; n]).into()),
        ("tokenizer.ggml.token_type", MetaArray::I32(types).into()),
        ("tokenizer.ggml.bos_token_id", MetaValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", MetaValue::U32(2)),
        ("tokenizer.ggml.unknown_token_id", MetaValue::U32(0)),
        ("tokenizer.ggml.add_bos_token", true.into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use llava_runtime::gguf::keys::clip;

    #[test]
    fn shapes_match_the_published_parameter_counts() {
        let params = |m: SynthModel| -> u64 {
            llama_tensor_shapes(&m.hparams())
                .iter()
                .map(|(_, s)| s.iter().product::<u64>())
                .sum()
        };
        // TinyLlama-1.1B: 1,100,048,384 parameters; Vicuna-7B: 6,738,415,616; Mistral-7B:
        // 7,241,732,096 (their model cards / safetensors totals).
        assert_eq!(params(SynthModel::TinyLlama1B), 1_100_048_384);
        assert_eq!(params(SynthModel::Llava15_7B), 6_738_415_616);
        assert_eq!(params(SynthModel::Llava16Mistral7B), 7_241_732_096);
    }

    #[test]
    fn llava_16_mmproj_has_anyres_keys_and_the_newline() {
        let layout = SynthModel::Llava16Mistral7B.clip_layout().unwrap();
        let kv = layout.metadata(Preset::F16);
        let get = |k: &str| kv.iter().find(|(key, _)| *key == k).map(|(_, v)| v.clone());
        assert_eq!(
            get(clip::IMAGE_GRID_PINPOINTS),
            Some(MetaArray::I32(LLAVA_16_PINPOINTS.to_vec()).into())
        );
        assert_eq!(get(clip::MM_PATCH_MERGE_TYPE), Some("spatial_unpad".into()));
        assert_eq!(get(clip::BLOCK_COUNT), Some(MetaValue::U32(23)));
        let t = layout.tensors();
        assert_eq!(t.len(), 378);
        let newline = t.iter().find(|t| t.gguf == "v.image_newline").unwrap();
        assert_eq!(newline.ne(), [4096]);
        assert!(SynthModel::Llava15_7B
            .clip_layout()
            .unwrap()
            .tensors()
            .iter()
            .all(|t| t.gguf != "v.image_newline"));
        assert!(SynthModel::TinyLlama1B.clip_layout().is_none());
    }
}
