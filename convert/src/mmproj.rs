//! The CLIP tower and projector of a LLaVA checkpoint → an "mmproj" GGUF file (architecture
//! `clip`) with the keys and tensor names of llama.cpp's legacy LLaVA converter
//! (GGUF-AND-LLAVA.md §4), except where that converter is wrong: `ffn_up` is fc1 and
//! `ffn_down` is fc2, and the newline tensor is `v.image_newline`. Only the blocks LLaVA uses
//! are written (feature layer −2 of 24 → 23 blocks), and no post-layernorm.

use std::path::{Path, PathBuf};

use llava_runtime::gguf::{GgufWriter, MetaArray, MetaValue};
use llava_runtime::quant::GgmlType;
use serde_json::Value;

use crate::error::ConvertError;
use crate::hf_config::JsonFile;
use crate::llama::{quantize_tensor, LlamaHparams};
use crate::mix::Preset;
use crate::safetensors::Checkpoint;
use crate::source::{ModelKind, Source};
use crate::ConvertSummary;

/// OpenAI CLIP's normalisation, used when no preprocessor_config.json says otherwise. Written
/// with the digits CLIP publishes, so they can be compared with its configs at a glance.
#[allow(clippy::excessive_precision)]
const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// CLIP vision tower hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionHparams {
    pub hidden_size: usize,
    pub ffn_size: usize,
    pub n_heads: usize,
    /// Blocks in the checkpoint.
    pub n_layers: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    pub projection_dim: usize,
    /// `hidden_act == "gelu"`; CLIP's own is quick_gelu.
    pub use_gelu: bool,
}

impl VisionHparams {
    /// From a CLIP vision config object; keys left out take transformers' `CLIPVisionConfig`
    /// defaults.
    fn from_config(c: &JsonFile) -> Result<Self, ConvertError> {
        Ok(VisionHparams {
            hidden_size: c.usize_opt("hidden_size")?.unwrap_or(768),
            ffn_size: c.usize_opt("intermediate_size")?.unwrap_or(3072),
            n_heads: c.usize_opt("num_attention_heads")?.unwrap_or(12),
            n_layers: c.usize_opt("num_hidden_layers")?.unwrap_or(12),
            image_size: c.usize_opt("image_size")?.unwrap_or(224),
            patch_size: c.usize_opt("patch_size")?.unwrap_or(32),
            layer_norm_eps: c.f64_opt("layer_norm_eps")?.unwrap_or(1e-5),
            projection_dim: c.usize_opt("projection_dim")?.unwrap_or(512),
            use_gelu: c.str_opt("hidden_act")?.unwrap_or("quick_gelu") == "gelu",
        })
    }
}

/// Where the CLIP tower's tensors are: a checkpoint and the prefix before `embeddings.`.
struct Tower<'a> {
    ckpt: &'a Checkpoint,
    prefix: &'static str,
}

impl Tower<'_> {
    fn name(&self, inner: &str) -> String {
        format!("{}{inner}", self.prefix)
    }
}

const TOWER_PREFIXES: [&str; 6] = [
    "vision_tower.vision_model.",
    "vision_tower.",
    "model.vision_tower.vision_model.",
    "model.vision_tower.",
    "model.vision_tower.vision_tower.vision_model.",
    "vision_model.",
];

fn find_tower(ckpt: &Checkpoint) -> Option<Tower<'_>> {
    TOWER_PREFIXES
        .into_iter()
        .find(|p| ckpt.contains(&format!("{p}embeddings.class_embedding")))
        .map(|prefix| Tower { ckpt, prefix })
}

/// The vision tower directory given with `--vision-tower`, opened.
struct TowerDir {
    ckpt: Checkpoint,
    config: Option<JsonFile>,
    preprocessor: Option<JsonFile>,
}

/// Writes the mmproj file of the LLaVA checkpoint in `dir`. `vision_tower` is an
/// openai-CLIP-style directory, needed when the checkpoint does not hold the tower (original
/// LLaVA-1.5 repositories). Matrices get `preset`'s type (F16 by default in the CLI); norms,
/// biases and the class embedding stay F32, the patch and position embeddings F16 (F32 when
/// `preset` is F32).
pub fn convert_mmproj(
    dir: &Path,
    vision_tower: Option<&Path>,
    out: &Path,
    preset: Preset,
) -> Result<ConvertSummary, ConvertError> {
    let src = Source::open(dir)?;
    if !src.kind.is_llava() {
        return Err(ConvertError::Config {
            path: src.config.path.clone(),
            key: "model_type".into(),
            reason: "not a LLaVA checkpoint: there is no vision tower to convert".into(),
        });
    }
    let tower_dir = vision_tower
        .map(|d| -> Result<TowerDir, ConvertError> {
            Ok(TowerDir {
                ckpt: Checkpoint::open(d)?,
                config: JsonFile::open_optional(&d.join("config.json"))?,
                preprocessor: JsonFile::open_optional(&d.join("preprocessor_config.json"))?,
            })
        })
        .transpose()?;
    // An explicit --vision-tower wins; else the checkpoint's own tower (llava-hf, LLaVA-1.6).
    let tower = match &tower_dir {
        Some(t) => find_tower(&t.ckpt).ok_or_else(|| ConvertError::Input {
            path: vision_tower.map(Path::to_path_buf).unwrap_or_default(),
            reason: "no CLIP vision tower (vision_model.embeddings.class_embedding) here".into(),
        })?,
        None => find_tower(&src.ckpt).ok_or_else(|| ConvertError::Input {
            path: dir.to_owned(),
            reason: "the checkpoint holds no CLIP tower: pass --vision-tower DIR (a local \
                     openai/clip-vit-large-patch14-336 or the model's own tower)"
                .into(),
        })?,
    };
    let vision_config = match (src.kind, src.config.get("vision_config")) {
        (ModelKind::LlavaHf { .. }, Some(v)) => JsonFile {
            path: src.config.path.clone(),
            json: v.clone(),
        },
        _ => match tower_dir.as_ref().and_then(|t| t.config.as_ref()) {
            Some(c) => JsonFile {
                path: c.path.clone(),
                json: c
                    .get("vision_config")
                    .cloned()
                    .unwrap_or_else(|| c.json.clone()),
            },
            None => inferred_vision_config(&tower, &src.config.path)?,
        },
    };
    let vp = VisionHparams::from_config(&vision_config)?;
    let text = LlamaHparams::from_config(&src.text_config())?;

    let feature_layer = match src.kind {
        ModelKind::LlavaHf { .. } => src.config.get("vision_feature_layer"),
        _ => src.config.get("mm_vision_select_layer"),
    };
    let n_used = blocks_used(feature_layer, vp.n_layers, &src.config.path)?;
    let strategy = src
        .config
        .str_opt("vision_feature_select_strategy")?
        .or(src.config.str_opt("mm_vision_select_feature")?)
        .unwrap_or("default");
    if !matches!(strategy, "default" | "patch") {
        return Err(config_error(
            &src.config.path,
            "vision_feature_select_strategy",
            format!("\"{strategy}\" (keeping the CLS row) is not supported"),
        ));
    }

    let (mm0, mm2) = projector_names(&src)?;
    let newline = ["image_newline", "model.image_newline"]
        .into_iter()
        .find(|n| src.ckpt.contains(n));
    if src.kind.is_next() && newline.is_none() {
        return Err(ConvertError::MissingTensor {
            name: "image_newline".into(),
        });
    }

    let own_preprocessor = JsonFile::open_optional(&dir.join("preprocessor_config.json"))?;
    let preprocessor = own_preprocessor
        .as_ref()
        .or_else(|| tower_dir.as_ref().and_then(|t| t.preprocessor.as_ref()));
    let (mean, std) = normalisation(preprocessor)?;

    let mut w = GgufWriter::new();
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let file_type = match preset {
        Preset::F32 => 0,
        Preset::F16 => 1,
        other => other.file_type(),
    };
    let mut kv: Vec<(&str, MetaValue)> = vec![
        ("general.architecture", "clip".into()),
        ("general.name", name.into()),
        (
            "general.description",
            "LLaVA vision tower and projector (llava-edge)".into(),
        ),
        ("general.file_type", MetaValue::U32(file_type)),
        ("clip.has_text_encoder", false.into()),
        ("clip.has_vision_encoder", true.into()),
        ("clip.has_llava_projector", true.into()),
        ("clip.projector_type", "mlp".into()),
        ("clip.use_gelu", vp.use_gelu.into()),
        (
            "clip.vision.image_size",
            MetaValue::U32(vp.image_size as u32),
        ),
        (
            "clip.vision.patch_size",
            MetaValue::U32(vp.patch_size as u32),
        ),
        (
            "clip.vision.embedding_length",
            MetaValue::U32(vp.hidden_size as u32),
        ),
        (
            "clip.vision.feed_forward_length",
            MetaValue::U32(vp.ffn_size as u32),
        ),
        (
            "clip.vision.projection_dim",
            MetaValue::U32(vp.projection_dim as u32),
        ),
        (
            "clip.vision.attention.head_count",
            MetaValue::U32(vp.n_heads as u32),
        ),
        (
            "clip.vision.attention.layer_norm_epsilon",
            MetaValue::F32(vp.layer_norm_eps as f32),
        ),
        ("clip.vision.block_count", MetaValue::U32(n_used as u32)),
        (
            "clip.vision.image_mean",
            MetaArray::F32(mean.to_vec()).into(),
        ),
        ("clip.vision.image_std", MetaArray::F32(std.to_vec()).into()),
    ];
    if src.kind.is_next() {
        kv.push((
            "clip.vision.image_grid_pinpoints",
            MetaArray::I32(pinpoints(&src.config)?).into(),
        ));
        kv.push(("clip.vision.mm_patch_merge_type", "spatial_unpad".into()));
        kv.push(("clip.vision.image_aspect_ratio", "anyres".into()));
    }
    for (k, v) in kv {
        w.add(k, v)?;
    }

    // (gguf name, from the tower's checkpoint?, checkpoint name, ggml shape, type)
    let checkpoint = |from_tower: bool| if from_tower { tower.ckpt } else { &src.ckpt };
    let mut plan: Vec<(String, bool, String, Vec<u64>, GgmlType)> = Vec::new();
    let mut add = |gguf: String, from_tower: bool, hf: String, torch: &[usize]| {
        let shape = checkpoint(from_tower)
            .shape(&hf)
            .ok_or_else(|| ConvertError::MissingTensor { name: hf.clone() })?;
        if shape != torch {
            return Err(ConvertError::WrongShape {
                name: hf,
                shape: shape.to_vec(),
                expected: torch.to_vec(),
            });
        }
        let ne: Vec<u64> = torch.iter().rev().map(|&d| d as u64).collect();
        let ty = vision_tensor_type(preset, &gguf, &ne);
        plan.push((gguf, from_tower, hf, ne, ty));
        Ok(())
    };
    let (h, ff, p) = (vp.hidden_size, vp.ffn_size, vp.patch_size);
    let n_pos = (vp.image_size / p).pow(2) + 1;
    let t = &tower;
    add(
        "v.patch_embd.weight".into(),
        true,
        t.name("embeddings.patch_embedding.weight"),
        &[h, 3, p, p],
    )?;
    add(
        "v.class_embd".into(),
        true,
        t.name("embeddings.class_embedding"),
        &[h],
    )?;
    add(
        "v.position_embd.weight".into(),
        true,
        t.name("embeddings.position_embedding.weight"),
        &[n_pos, h],
    )?;
    add(
        "v.pre_ln.weight".into(),
        true,
        t.name("pre_layrnorm.weight"),
        &[h],
    )?;
    add(
        "v.pre_ln.bias".into(),
        true,
        t.name("pre_layrnorm.bias"),
        &[h],
    )?;
    for i in 0..n_used {
        let l = |n: &str| t.name(&format!("encoder.layers.{i}.{n}"));
        let g = |n: &str| format!("v.blk.{i}.{n}");
        for (gg, hf) in [
            ("attn_q", "self_attn.q_proj"),
            ("attn_k", "self_attn.k_proj"),
            ("attn_v", "self_attn.v_proj"),
            ("attn_out", "self_attn.out_proj"),
        ] {
            add(
                g(&format!("{gg}.weight")),
                true,
                l(&format!("{hf}.weight")),
                &[h, h],
            )?;
            add(
                g(&format!("{gg}.bias")),
                true,
                l(&format!("{hf}.bias")),
                &[h],
            )?;
        }
        for (gg, hf) in [("ln1", "layer_norm1"), ("ln2", "layer_norm2")] {
            add(
                g(&format!("{gg}.weight")),
                true,
                l(&format!("{hf}.weight")),
                &[h],
            )?;
            add(
                g(&format!("{gg}.bias")),
                true,
                l(&format!("{hf}.bias")),
                &[h],
            )?;
        }
        add(g("ffn_up.weight"), true, l("mlp.fc1.weight"), &[ff, h])?;
        add(g("ffn_up.bias"), true, l("mlp.fc1.bias"), &[ff])?;
        add(g("ffn_down.weight"), true, l("mlp.fc2.weight"), &[h, ff])?;
        add(g("ffn_down.bias"), true, l("mlp.fc2.bias"), &[h])?;
    }
    let text_h = text.hidden_size;
    add(
        "mm.0.weight".into(),
        false,
        format!("{mm0}.weight"),
        &[text_h, h],
    )?;
    add("mm.0.bias".into(), false, format!("{mm0}.bias"), &[text_h])?;
    add(
        "mm.2.weight".into(),
        false,
        format!("{mm2}.weight"),
        &[text_h, text_h],
    )?;
    add("mm.2.bias".into(), false, format!("{mm2}.bias"), &[text_h])?;
    if let Some(n) = newline {
        add("v.image_newline".into(), false, n.to_owned(), &[text_h])?;
    }

    for (gguf, _, _, shape, ty) in &plan {
        w.add_tensor(gguf, *ty, shape)?;
    }
    let mut summary = ConvertSummary {
        tensors: plan.len(),
        parameters: 0,
        bytes: 0,
    };
    w.write(out, |i, decl, sink| -> Result<(), ConvertError> {
        let (gguf, from_tower, hf, shape, ty) = &plan[i];
        let data = checkpoint(*from_tower).to_f32(hf)?;
        let bytes = quantize_tensor(gguf, *ty, &data, shape[0] as usize)?;
        summary.parameters += decl.n_elements();
        summary.bytes += bytes.len() as u64;
        sink.write_all(&bytes).map_err(|error| ConvertError::Io {
            path: out.to_owned(),
            error,
        })
    })?;
    Ok(summary)
}

/// Types in an mmproj file: matrices as the preset says (no output/layer mix here), the patch
/// and position embeddings F16 (or F32), everything one-dimensional F32.
pub(crate) fn vision_tensor_type(preset: Preset, name: &str, ne: &[u64]) -> GgmlType {
    if ne.len() < 2 {
        return GgmlType::F32;
    }
    let embedding = name == "v.patch_embd.weight" || name == "v.position_embd.weight";
    match preset {
        Preset::F32 => GgmlType::F32,
        _ if embedding => GgmlType::F16,
        // Uniform: the LLM's output/attn_v rules do not apply to a vision tower.
        other => other.tensor_type("v.matrix.weight", ne, 0),
    }
}

fn config_error(path: &Path, key: &str, reason: String) -> ConvertError {
    ConvertError::Config {
        path: path.to_owned(),
        key: key.to_owned(),
        reason,
    }
}

/// Blocks LLaVA runs: feature layer −k is `hidden_states[−k]`, the output of block n − k
/// (0-based), so n + 1 − k blocks; a non-negative index i means i blocks.
fn blocks_used(layer: Option<&Value>, n_layers: usize, path: &Path) -> Result<usize, ConvertError> {
    let key = "vision_feature_layer";
    let i = match layer {
        None => -2,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| config_error(path, key, format!("{v} is not a single layer index")))?,
    };
    let used = if i < 0 { n_layers as i64 + 1 + i } else { i };
    if used < 1 || used > n_layers as i64 {
        return Err(config_error(
            path,
            key,
            format!("layer {i} is outside a tower of {n_layers} blocks"),
        ));
    }
    Ok(used as usize)
}

/// Names (without `.weight`/`.bias`) of the projector's two linear layers.
fn projector_names(src: &Source) -> Result<(String, String), ConvertError> {
    for (a, b) in [
        (
            "multi_modal_projector.linear_1",
            "multi_modal_projector.linear_2",
        ),
        (
            "model.multi_modal_projector.linear_1",
            "model.multi_modal_projector.linear_2",
        ),
        ("model.mm_projector.0", "model.mm_projector.2"),
    ] {
        if src.ckpt.contains(&format!("{a}.weight")) {
            if !src.ckpt.contains(&format!("{b}.weight")) {
                return Err(ConvertError::MissingTensor {
                    name: format!("{b}.weight"),
                });
            }
            return Ok((a.to_owned(), b.to_owned()));
        }
    }
    let projector = src
        .config
        .str_opt("mm_projector_type")?
        .unwrap_or("mlp2x_gelu");
    Err(ConvertError::Input {
        path: src.dir.clone(),
        reason: format!(
            "no mlp2x_gelu projector (multi_modal_projector.linear_1 or model.mm_projector.0); \
             projector type \"{projector}\" is not supported"
        ),
    })
}

/// `image_mean` / `image_std` from the preprocessor config, else OpenAI CLIP's.
fn normalisation(pre: Option<&JsonFile>) -> Result<([f32; 3], [f32; 3]), ConvertError> {
    let Some(pre) = pre else {
        return Ok((CLIP_MEAN, CLIP_STD));
    };
    let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3], ConvertError> {
        match pre.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_array()
                .filter(|a| a.len() == 3)
                .and_then(|a| {
                    let xs: Option<Vec<f32>> =
                        a.iter().map(|x| x.as_f64().map(|f| f as f32)).collect();
                    xs.map(|x| [x[0], x[1], x[2]])
                })
                .ok_or_else(|| config_error(&pre.path, key, "expected three numbers".into())),
        }
    };
    Ok((
        triple("image_mean", CLIP_MEAN)?,
        triple("image_std", CLIP_STD)?,
    ))
}

/// `image_grid_pinpoints` as llama.cpp stores them: one flat list of sizes.
fn pinpoints(config: &JsonFile) -> Result<Vec<i32>, ConvertError> {
    let key = "image_grid_pinpoints";
    let v = config
        .get(key)
        .ok_or_else(|| config_error(&config.path, key, "missing for an anyres model".into()))?;
    let flat: Option<Vec<i32>> = v.as_array().and_then(|pairs| {
        pairs
            .iter()
            .map(|p| p.as_array().filter(|p| p.len() == 2))
            .collect::<Option<Vec<_>>>()
            .and_then(|ps| {
                ps.iter()
                    .flat_map(|p| p.iter())
                    .map(|x| x.as_i64().and_then(|x| i32::try_from(x).ok()))
                    .collect()
            })
    });
    flat.ok_or_else(|| config_error(&config.path, key, "expected a list of [h, w] pairs".into()))
}

/// A vision config read off the tensor shapes, for a checkpoint that holds the tower but no
/// config for it (original LLaVA-1.6). CLIP's heads are 64 wide.
fn inferred_vision_config(tower: &Tower<'_>, path: &Path) -> Result<JsonFile, ConvertError> {
    let shape = |inner: &str| -> Result<Vec<usize>, ConvertError> {
        let name = tower.name(inner);
        tower
            .ckpt
            .shape(&name)
            .map(<[usize]>::to_vec)
            .ok_or(ConvertError::MissingTensor { name })
    };
    let conv = shape("embeddings.patch_embedding.weight")?;
    let pos = shape("embeddings.position_embedding.weight")?;
    let fc1 = shape("encoder.layers.0.mlp.fc1.weight")?;
    let (hidden, patch) = (conv[0], conv.get(2).copied().unwrap_or(1));
    let side = ((pos[0].saturating_sub(1)) as f64).sqrt().round() as usize;
    let n_layers = (0..)
        .take_while(|i| {
            tower
                .ckpt
                .contains(&tower.name(&format!("encoder.layers.{i}.mlp.fc1.weight")))
        })
        .count();
    Ok(JsonFile {
        path: PathBuf::from(path),
        json: serde_json::json!({
            "hidden_size": hidden,
            "intermediate_size": fc1[0],
            "num_attention_heads": hidden / 64,
            "num_hidden_layers": n_layers,
            "image_size": side * patch,
            "patch_size": patch,
            "projection_dim": 768,
        }),
    })
}
