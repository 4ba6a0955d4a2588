//! The CLIP tower and projector of a LLaVA checkpoint → an "mmproj" GGUF file (architecture
//! `clip`) with the keys and tensor names of llama.cpp's legacy LLaVA converter
//! (GGUF-AND-LLAVA.md §4), except where that converter is wrong: `ffn_up` is fc1 and
//! `ffn_down` is fc2, and the newline tensor is `v.image_newline`. Only the blocks LLaVA uses
//! are written (feature layer −2 of 24 → 23 blocks), and no post-layernorm.

use std::path::{Path, PathBuf};

use llava_runtime::gguf::GgufWriter;
use llava_runtime::quant::GgmlType;
use serde_json::Value;

use crate::clip::{vision_tensor_type, ClipLayout, Origin, VisionHparams, CLIP_MEAN, CLIP_STD};
use crate::error::ConvertError;
use crate::hf_config::JsonFile;
use crate::llama::write_tensor;
use crate::llama::LlamaHparams;
use crate::mix::Preset;
use crate::progress::{tensor_written, Monitor, Silent};
use crate::quantize::quantize_tensor;
use crate::safetensors::Checkpoint;
use crate::source::{ModelKind, Source};
use crate::ConvertSummary;

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
    convert_mmproj_with(dir, vision_tower, out, preset, &mut Silent)
}

/// `convert_mmproj`, reporting each tensor to `monitor`.
pub fn convert_mmproj_with(
    dir: &Path,
    vision_tower: Option<&Path>,
    out: &Path,
    preset: Preset,
    monitor: &mut dyn Monitor,
) -> Result<ConvertSummary, ConvertError> {
    mmproj(dir, vision_tower, Some(out), preset, monitor)
}

/// Every check `convert_mmproj` makes before it writes (configs, preprocessor, every tensor's
/// presence and shape), without writing: so a command that also converts the LLM can refuse a
/// broken vision side before spending minutes on the LLM.
pub fn check_mmproj(
    dir: &Path,
    vision_tower: Option<&Path>,
    preset: Preset,
) -> Result<(), ConvertError> {
    mmproj(dir, vision_tower, None, preset, &mut Silent).map(|_| ())
}

/// The conversion; with `out` = `None` it stops once everything is checked.
fn mmproj(
    dir: &Path,
    vision_tower: Option<&Path>,
    out: Option<&Path>,
    preset: Preset,
    monitor: &mut dyn Monitor,
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
    // The count sizes the tensor plan: the blocks must be there before it is trusted.
    let present = (0..n_used)
        .take_while(|i| {
            let name = tower.name(&format!("encoder.layers.{i}.mlp.fc1.weight"));
            tower.ckpt.contains(&name)
        })
        .count();
    if present < n_used {
        return Err(config_error(
            &vision_config.path,
            "num_hidden_layers",
            format!(
                "{} blocks ({n_used} of them used), but the tower has {present}",
                vp.n_layers
            ),
        ));
    }
    let strategy = src
        .config
        .str_opt("vision_feature_select_strategy")?
        .or(src.config.str_opt("mm_vision_select_feature")?)
        .unwrap_or("default");
    if !matches!(strategy, "default" | "patch") {
        return Err(config_error(
            &src.config.path,
            "vision_feature_select_strategy",
            format!("{strategy:?} (keeping the CLS row) is not supported"),
        ));
    }

    if src
        .config
        .get("mm_use_im_start_end")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Err(config_error(
            &src.config.path,
            "mm_use_im_start_end",
            "true: image features wrapped in <im_start>/<im_end> tokens (the first LLaVA's \
             v0 checkpoints) are not supported"
                .into(),
        ));
    }
    let (mm0, mm2) = projector_names(&src)?;
    // LLaVA's process_images: "pad" (LLaVA-1.5) pads to a square, "anyres" (1.6) tiles, and
    // anything else — "square", its training default, which the first LLaVA's configs leave
    // unset — is the CLIP processor's resize and centre crop. llava-hf configs do not say;
    // their LLaVA-1.5 checkpoints are padded.
    let center_crop = match src.kind {
        ModelKind::LlavaOriginal { next: false } => {
            src.config
                .str_opt("image_aspect_ratio")?
                .unwrap_or("square")
                != "pad"
        }
        _ => false,
    };
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

    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let pinpoints = if src.kind.is_next() {
        Some(pinpoints(
            &src.config,
            matches!(src.kind, ModelKind::LlavaHf { .. }),
            vp.image_size,
        )?)
    } else {
        None
    };
    let layout = ClipLayout {
        name,
        vision: vp,
        n_used,
        text_hidden: text.hidden_size,
        mean,
        std,
        pinpoints,
        linear_projector: mm2.is_none(),
        center_crop,
    };
    let mut w = GgufWriter::new();
    for (k, v) in layout.metadata(preset) {
        w.add(k, v)?;
    }

    // (gguf name, checkpoint, checkpoint name, ggml shape, type)
    let mut plan: Vec<(String, &Checkpoint, String, Vec<u64>, GgmlType)> = Vec::new();
    for t in layout.tensors() {
        let ne = t.ne();
        let (ckpt, hf) = match t.origin {
            Origin::Tower(inner) => (tower.ckpt, tower.name(&inner)),
            Origin::Projector { second, param } => {
                let layer = if second {
                    mm2.as_ref().expect("a linear projector plans no mm.2")
                } else {
                    &mm0
                };
                (&src.ckpt, format!("{layer}.{param}"))
            }
            Origin::Newline => (&src.ckpt, newline.expect("anyres checked above").to_owned()),
        };
        let shape = ckpt
            .shape(&hf)
            .ok_or_else(|| ConvertError::MissingTensor { name: hf.clone() })?;
        if shape != t.torch_shape {
            return Err(ConvertError::WrongShape {
                name: hf,
                shape: shape.to_vec(),
                expected: t.torch_shape,
            });
        }
        let ty = vision_tensor_type(preset, &t.gguf, &ne);
        plan.push((t.gguf, ckpt, hf, ne, ty));
    }

    for (gguf, _, _, shape, ty) in &plan {
        w.add_tensor(gguf, *ty, shape)?;
    }
    let mut summary = ConvertSummary::new(plan.len());
    let Some(out) = out else {
        return Ok(summary);
    };
    let source_bytes = |ckpt: &Checkpoint, hf: &str| ckpt.byte_len(hf).unwrap_or(0);
    monitor.begin(
        plan.len(),
        plan.iter()
            .map(|(_, c, hf, _, _)| source_bytes(c, hf))
            .sum(),
    );
    w.write(out, |i, decl, sink| -> Result<(), ConvertError> {
        let (gguf, ckpt, hf, shape, ty) = &plan[i];
        let data = ckpt.to_f32(hf)?;
        let bytes = quantize_tensor(gguf, *ty, &data, shape[0] as usize)?;
        write_tensor(out, decl, &bytes, sink, &mut summary)?;
        tensor_written(monitor, decl, Some(&data), &bytes, source_bytes(ckpt, hf))
    })?;
    Ok(summary)
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

/// Names (without `.weight`/`.bias`) of the projector's linear layers: LLaVA's
/// `mlp2x_gelu` (two), or the first LLaVA's `linear` (one: `model.mm_projector`, the type its
/// configs leave unset).
fn projector_names(src: &Source) -> Result<(String, Option<String>), ConvertError> {
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
            return Ok((a.to_owned(), Some(b.to_owned())));
        }
    }
    let projector = src.config.str_opt("mm_projector_type")?;
    if matches!(projector, None | Some("linear")) && src.ckpt.contains("model.mm_projector.weight")
    {
        return Ok(("model.mm_projector".to_owned(), None));
    }
    Err(ConvertError::Input {
        path: src.dir.clone(),
        reason: format!(
            "no mlp2x_gelu projector (multi_modal_projector.linear_1 or model.mm_projector.0) \
             and no linear one (model.mm_projector); projector type {:?} is not supported",
            projector.unwrap_or("mlp2x_gelu")
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

/// Most pinpoints, and the largest side in views, an mmproj may have: the runtime's limits
/// (`llava_models::clip`, which this crate does not depend on; a test keeps them equal).
pub const MAX_PINPOINTS: usize = 64;
/// See [`MAX_PINPOINTS`].
pub const MAX_TILES_PER_SIDE: usize = 8;

/// `image_grid_pinpoints` as llama.cpp stores them: one flat list of sizes, each a multiple
/// of the tower's `image_size`.
fn pinpoints(
    config: &JsonFile,
    height_first: bool,
    image_size: usize,
) -> Result<Vec<i32>, ConvertError> {
    let key = "image_grid_pinpoints";
    let v = config
        .get(key)
        .ok_or_else(|| config_error(&config.path, key, "missing for an anyres model".into()))?;
    let pairs: Option<Vec<[i32; 2]>> = v.as_array().and_then(|pairs| {
        pairs
            .iter()
            .map(|p| {
                let p = p.as_array().filter(|p| p.len() == 2)?;
                let x = |i: usize| p[i].as_i64().and_then(|x| i32::try_from(x).ok());
                Some([x(0)?, x(1)?])
            })
            .collect()
    });
    let pairs =
        pairs.ok_or_else(|| config_error(&config.path, key, "expected a list of pairs".into()))?;
    // The runtime's bounds (llava_models' MAX_PINPOINTS, MAX_TILES_PER_SIDE): a file the
    // runtime would refuse is not written.
    let max = (image_size * MAX_TILES_PER_SIDE) as i64;
    if pairs.is_empty() || pairs.len() > MAX_PINPOINTS {
        return Err(config_error(
            &config.path,
            key,
            format!("{} pairs (1 to {MAX_PINPOINTS})", pairs.len()),
        ));
    }
    if let Some(&x) = pairs
        .iter()
        .flatten()
        .find(|&&x| x <= 0 || i64::from(x) > max || i64::from(x) % image_size as i64 != 0)
    {
        return Err(config_error(
            &config.path,
            key,
            format!("{x} is not a multiple of the image size {image_size} between it and {max}"),
        ));
    }
    // The GGUF list holds (width, height) pairs, as the original LLaVA and llama.cpp read
    // them; transformers' configs hold (height, width). The set is symmetric, but the order
    // decides full ties in the grid choice, so each source keeps its own meaning.
    Ok(pairs
        .into_iter()
        .flat_map(|[a, b]| if height_first { [b, a] } else { [a, b] })
        .collect())
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
