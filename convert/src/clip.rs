//! What an mmproj file (architecture `clip`) holds: its keys, its tensors and their types
//! (GGUF-AND-LLAVA.md §4). Shared by the converter, `llava synth` and `llava quantize`, so a
//! synthetic file has exactly the layout of a converted one.

use llava_runtime::gguf::keys::clip;
use llava_runtime::gguf::{MetaArray, MetaValue};
use llava_runtime::gguf::{KEY_ARCHITECTURE, KEY_FILE_TYPE, KEY_NAME};
use llava_runtime::quant::GgmlType;

use crate::error::ConvertError;
use crate::hf_config::JsonFile;
use crate::mix::Preset;

/// OpenAI CLIP's normalisation, used when no preprocessor_config.json says otherwise. Written
/// with the digits CLIP publishes, so they can be compared with its configs at a glance.
#[allow(clippy::excessive_precision)]
pub(crate) const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
pub(crate) const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// CLIP vision tower hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionHparams {
    /// Width of the tower's activations (`hidden_size`).
    pub hidden_size: usize,
    /// Width of the feed-forward layer inside each block (`intermediate_size`).
    pub ffn_size: usize,
    /// Number of attention heads (`num_attention_heads`); divides `hidden_size`.
    pub n_heads: usize,
    /// Blocks in the checkpoint.
    pub n_layers: usize,
    /// Side of the square input image, in pixels (`image_size`).
    pub image_size: usize,
    /// Side of one square patch, in pixels (`patch_size`); divides `image_size`.
    pub patch_size: usize,
    /// Epsilon of every layer norm (`layer_norm_eps`).
    pub layer_norm_eps: f64,
    /// Width of CLIP's image-text embedding (`projection_dim`); recorded in the mmproj, unused by
    /// LLaVA, which takes features from inside the tower.
    pub projection_dim: usize,
    /// `hidden_act == "gelu"`; CLIP's own is quick_gelu.
    pub use_gelu: bool,
}

impl VisionHparams {
    /// From a CLIP vision config object; keys left out take transformers' `CLIPVisionConfig`
    /// defaults.
    pub(crate) fn from_config(c: &JsonFile) -> Result<Self, ConvertError> {
        let vp = Self::read(c)?;
        let bad = |key: &str, reason: String| ConvertError::Config {
            path: c.path.clone(),
            key: key.to_owned(),
            reason,
        };
        // The sizes are divided and squared before the tensor shapes can check them.
        if vp.image_size == 0 || vp.image_size > 1 << 16 {
            return Err(bad("image_size", format!("{} (1 to 65536)", vp.image_size)));
        }
        if vp.patch_size == 0 || !vp.image_size.is_multiple_of(vp.patch_size) {
            return Err(bad(
                "patch_size",
                format!(
                    "{} does not divide the image size {}",
                    vp.patch_size, vp.image_size
                ),
            ));
        }
        if vp.n_heads == 0 || !vp.hidden_size.is_multiple_of(vp.n_heads) {
            return Err(bad(
                "num_attention_heads",
                format!(
                    "{} heads do not divide the width {}",
                    vp.n_heads, vp.hidden_size
                ),
            ));
        }
        Ok(vp)
    }

    fn read(c: &JsonFile) -> Result<Self, ConvertError> {
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

    /// CLIP ViT-L/14 at 336 pixels (openai/clip-vit-large-patch14-336), LLaVA's tower.
    pub fn clip_vit_l_14_336() -> Self {
        VisionHparams {
            hidden_size: 1024,
            ffn_size: 4096,
            n_heads: 16,
            n_layers: 24,
            image_size: 336,
            patch_size: 14,
            layer_norm_eps: 1e-5,
            projection_dim: 768,
            use_gelu: false,
        }
    }
}

/// Everything an mmproj file's metadata says.
pub(crate) struct ClipLayout {
    pub name: String,
    pub vision: VisionHparams,
    /// Blocks written: those LLaVA runs (GGUF-AND-LLAVA.md §4.5).
    pub n_used: usize,
    /// The LLM's width: the projector's output.
    pub text_hidden: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// LLaVA-1.6 (anyres): the flat `[h, w, h, w, ...]` grid pinpoints; `image_newline` is
    /// written too.
    pub pinpoints: Option<Vec<i32>>,
    /// The first LLaVA's single linear projector: `mm.0` only, projector type "linear".
    pub linear_projector: bool,
    /// LLaVA's `image_aspect_ratio` "square" (the first LLaVA's default): resize and centre
    /// crop, no padding; written as `clip.vision.image_aspect_ratio`.
    pub center_crop: bool,
}

/// Where an mmproj tensor comes from in a checkpoint.
pub(crate) enum Origin {
    /// The tower, by its name after the tower prefix (`encoder.layers.3.mlp.fc1.weight`).
    Tower(String),
    /// A projector linear layer: `mm.0` (first) or `mm.2` (second), `weight` or `bias`.
    Projector { second: bool, param: &'static str },
    /// LLaVA-1.6's `image_newline`.
    Newline,
}

pub(crate) struct ClipTensor {
    pub gguf: String,
    /// PyTorch order, as the checkpoint stores it.
    pub torch_shape: Vec<usize>,
    pub origin: Origin,
}

impl ClipTensor {
    /// ggml order.
    pub fn ne(&self) -> Vec<u64> {
        self.torch_shape.iter().rev().map(|&d| d as u64).collect()
    }
}

impl ClipLayout {
    /// The keys of llama.cpp's legacy LLaVA converter (GGUF-AND-LLAVA.md §4.2).
    pub fn metadata(&self, preset: Preset) -> Vec<(&'static str, MetaValue)> {
        let vp = &self.vision;
        let u32v = |x: usize| MetaValue::U32(x as u32);
        let mut kv: Vec<(&str, MetaValue)> = vec![
            (KEY_ARCHITECTURE, "clip".into()),
            (KEY_NAME, self.name.as_str().into()),
            (
                "general.description",
                "LLaVA vision tower and projector (llava-edge)".into(),
            ),
            (KEY_FILE_TYPE, MetaValue::U32(preset.file_type())),
            (clip::HAS_TEXT_ENCODER, false.into()),
            (clip::HAS_VISION_ENCODER, true.into()),
            (clip::HAS_LLAVA_PROJECTOR, true.into()),
            // "linear" is no type llama.cpp knows: it refuses the file cleanly, where an "mlp"
            // without mm.2 crashes it (it reads mm.2's shape unchecked).
            (
                clip::PROJECTOR_TYPE,
                if self.linear_projector {
                    "linear"
                } else {
                    "mlp"
                }
                .into(),
            ),
            (clip::USE_GELU, vp.use_gelu.into()),
            (clip::IMAGE_SIZE, u32v(vp.image_size)),
            (clip::PATCH_SIZE, u32v(vp.patch_size)),
            (clip::EMBEDDING_LENGTH, u32v(vp.hidden_size)),
            (clip::FEED_FORWARD_LENGTH, u32v(vp.ffn_size)),
            (clip::PROJECTION_DIM, u32v(vp.projection_dim)),
            (clip::HEAD_COUNT, u32v(vp.n_heads)),
            (
                clip::LAYER_NORM_EPSILON,
                MetaValue::F32(vp.layer_norm_eps as f32),
            ),
            (clip::BLOCK_COUNT, u32v(self.n_used)),
            (clip::IMAGE_MEAN, MetaArray::F32(self.mean.to_vec()).into()),
            (clip::IMAGE_STD, MetaArray::F32(self.std.to_vec()).into()),
        ];
        if let Some(p) = &self.pinpoints {
            kv.push((clip::IMAGE_GRID_PINPOINTS, MetaArray::I32(p.clone()).into()));
            kv.push((clip::MM_PATCH_MERGE_TYPE, "spatial_unpad".into()));
            kv.push((clip::IMAGE_ASPECT_RATIO, "anyres".into()));
        } else if self.center_crop {
            kv.push((clip::IMAGE_ASPECT_RATIO, "square".into()));
        }
        kv
    }

    /// The tensors, in file order: embeddings, pre-LN, the used blocks, the projector, and
    /// the newline for anyres models. `ffn_up` is fc1 and `ffn_down` fc2 (§4.4's swap undone).
    pub fn tensors(&self) -> Vec<ClipTensor> {
        let vp = &self.vision;
        let (h, ff, p) = (vp.hidden_size, vp.ffn_size, vp.patch_size);
        let n_pos = (vp.image_size / p).pow(2) + 1;
        let mut t = Vec::new();
        let mut tower = |gguf: String, inner: String, shape: &[usize]| {
            t.push(ClipTensor {
                gguf,
                torch_shape: shape.to_vec(),
                origin: Origin::Tower(inner),
            })
        };
        tower(
            "v.patch_embd.weight".into(),
            "embeddings.patch_embedding.weight".into(),
            &[h, 3, p, p],
        );
        tower(
            "v.class_embd".into(),
            "embeddings.class_embedding".into(),
            &[h],
        );
        tower(
            "v.position_embd.weight".into(),
            "embeddings.position_embedding.weight".into(),
            &[n_pos, h],
        );
        tower("v.pre_ln.weight".into(), "pre_layrnorm.weight".into(), &[h]);
        tower("v.pre_ln.bias".into(), "pre_layrnorm.bias".into(), &[h]);
        for i in 0..self.n_used {
            let mut both = |gg: &str, hf: &str, w: &[usize], b: &[usize]| {
                let l = |param: &str| format!("encoder.layers.{i}.{hf}.{param}");
                tower(format!("v.blk.{i}.{gg}.weight"), l("weight"), w);
                tower(format!("v.blk.{i}.{gg}.bias"), l("bias"), b);
            };
            for (gg, hf) in [
                ("attn_q", "self_attn.q_proj"),
                ("attn_k", "self_attn.k_proj"),
                ("attn_v", "self_attn.v_proj"),
                ("attn_out", "self_attn.out_proj"),
            ] {
                both(gg, hf, &[h, h], &[h]);
            }
            both("ln1", "layer_norm1", &[h], &[h]);
            both("ln2", "layer_norm2", &[h], &[h]);
            both("ffn_up", "mlp.fc1", &[ff, h], &[ff]);
            both("ffn_down", "mlp.fc2", &[h, ff], &[h]);
        }
        let th = self.text_hidden;
        let layers: &[(bool, usize)] = if self.linear_projector {
            &[(false, h)]
        } else {
            &[(false, h), (true, th)]
        };
        for &(second, in_dim) in layers {
            let n = if second { 2 } else { 0 };
            t.push(ClipTensor {
                gguf: format!("mm.{n}.weight"),
                torch_shape: vec![th, in_dim],
                origin: Origin::Projector {
                    second,
                    param: "weight",
                },
            });
            t.push(ClipTensor {
                gguf: format!("mm.{n}.bias"),
                torch_shape: vec![th],
                origin: Origin::Projector {
                    second,
                    param: "bias",
                },
            });
        }
        if self.pinpoints.is_some() {
            t.push(ClipTensor {
                gguf: "v.image_newline".into(),
                torch_shape: vec![th],
                origin: Origin::Newline,
            });
        }
        t
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn llava_15_7b() -> ClipLayout {
        ClipLayout {
            name: String::new(),
            vision: VisionHparams::clip_vit_l_14_336(),
            n_used: 23,
            text_hidden: 4096,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            pinpoints: None,
            linear_projector: false,
            center_crop: false,
        }
    }

    #[test]
    fn llava_15_7b_has_the_377_tensors_of_llama_cpps_mmproj() {
        let t = llava_15_7b().tensors();
        // GGUF-AND-LLAVA.md §4.4: 377 tensors. Parameters: 23 blocks of 12,596,224, patch
        // 602,112, class 1,024, positions 577·1024, pre-LN 2,048, projector 20,979,712.
        assert_eq!(t.len(), 377);
        let params: usize = t
            .iter()
            .map(|t| t.torch_shape.iter().product::<usize>())
            .sum();
        assert_eq!(params, 311_888_896);
        let ne = |name: &str| t.iter().find(|t| t.gguf == name).unwrap().ne();
        assert_eq!(ne("v.patch_embd.weight"), [14, 14, 3, 1024]);
        assert_eq!(ne("v.position_embd.weight"), [1024, 577]);
        assert_eq!(ne("v.blk.22.ffn_up.weight"), [1024, 4096]);
        assert_eq!(ne("v.blk.22.ffn_down.weight"), [4096, 1024]);
        assert_eq!(ne("mm.0.weight"), [1024, 4096]);
        assert_eq!(ne("mm.2.weight"), [4096, 4096]);
    }
}
