//! The CLIP ViT vision tower of an mmproj file, computed as the original LLaVA does
//! (GGUF-AND-LLAVA.md §4.7, §7): patch embedding, CLS token first, position embeddings,
//! pre-layernorm, every block stored in the file (the converter keeps only those LLaVA uses),
//! no post-layernorm, then the CLS row dropped.

use llava_runtime::gguf::keys::clip;
use std::sync::Arc;

use llava_runtime::backend::{Backend, Heads};
use llava_runtime::gguf::{GgufFile, KEY_ARCHITECTURE};

use crate::error::ModelError;
use crate::projector::Projector;
use crate::weights::{self, LayerNorm, Linear};

/// Most `image_grid_pinpoints` an mmproj may list (LLaVA-1.6 lists 5, llama.cpp's largest
/// tables a few dozen).
pub const MAX_PINPOINTS: usize = 64;

/// Largest pinpoint side, in views of `image_size`: LLaVA-1.6 goes up to 3 (1008 = 3 × 336),
/// LLaVA-OneVision to 6. An image is encoded as up to 8 × 8 views plus the overview.
pub const MAX_TILES_PER_SIDE: usize = 8;

/// Largest `image_size` an mmproj may declare. CLIP towers use 224, 336, 378, 384 or 448;
/// every image is resized to `image_size²` pixels (and LLaVA-1.6 tiles to eight times that per
/// side), so an unbounded size lets a small file ask for tens of gigabytes.
pub const MAX_IMAGE_SIZE: usize = 4096;

/// Hyper-parameters of the tower and its preprocessing.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    /// Side of one square view, in pixels (e.g. 336).
    pub image_size: usize,
    /// Side of one square patch, in pixels (e.g. 14); divides `image_size`.
    pub patch_size: usize,
    /// Width of the tower's activations.
    pub hidden_size: usize,
    /// Width of the feed-forward layer inside each block.
    pub ffn_size: usize,
    /// Number of attention heads; divides `hidden_size`.
    pub n_heads: usize,
    /// Number of transformer blocks stored in the file.
    pub n_blocks: usize,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f32,
    /// Per-channel (R, G, B) mean subtracted from pixels scaled to 0..1.
    pub image_mean: [f32; 3],
    /// Per-channel (R, G, B) standard deviation the centred pixels are divided by.
    pub image_std: [f32; 3],
    /// Exact GELU instead of CLIP's quick_gelu.
    pub use_gelu: bool,
    /// LLaVA-1.6 `image_grid_pinpoints` as (width, height) pairs; empty for LLaVA-1.5.
    pub grid_pinpoints: Vec<(u32, u32)>,
    /// LLaVA's `image_aspect_ratio` "square" (the first LLaVA, `clip.vision.image_aspect_ratio`
    /// in the file): the CLIP processor's resize and centre crop, without LLaVA-1.5's padding
    /// to a square.
    pub center_crop: bool,
}

impl ClipConfig {
    /// Patches per side of one view.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patches of one view: `patches_per_side()²` (576 for 336-pixel views of 14-pixel patches).
    pub fn n_patches(&self) -> usize {
        self.patches_per_side().pow(2)
    }

    fn from_gguf(f: &GgufFile) -> Result<Self, ModelError> {
        let arch = f.get_str(KEY_ARCHITECTURE)?;
        let bad = |key: &str, reason: String| ModelError::BadConfig {
            path: f.path().to_owned(),
            key: key.to_owned(),
            reason,
        };
        if arch != "clip" {
            return Err(bad(
                KEY_ARCHITECTURE,
                format!("{arch:?}: an mmproj file has architecture \"clip\""),
            ));
        }
        if f.optional(clip::HAS_VISION_ENCODER, GgufFile::get_bool)? == Some(false) {
            return Err(bad(
                clip::HAS_VISION_ENCODER,
                "the file has no vision tower".into(),
            ));
        }
        let projector = f.optional(clip::PROJECTOR_TYPE, |f, k| f.get_str(k).map(str::to_owned))?;
        match projector.as_deref() {
            None | Some("mlp") => {}
            // The first LLaVA's single layer (llava-edge's name: llama.cpp has none).
            Some("linear") if f.tensor("mm.2.weight").is_none() => {}
            Some(p) => {
                return Err(bad(
                    clip::PROJECTOR_TYPE,
                    format!("{p:?} is not supported (LLaVA's \"mlp\", or \"linear\" without mm.2)"),
                ))
            }
        }
        let u = |k: &str| -> Result<usize, ModelError> { Ok(f.get_u32(k)? as usize) };
        let triple = |k: &str| -> Result<[f32; 3], ModelError> {
            let v: Vec<f32> = f.get_array_of::<f32>(k)?.collect();
            v.try_into()
                .map_err(|v: Vec<f32>| bad(k, format!("{} values, expected 3", v.len())))
        };
        let hidden_size = u(clip::EMBEDDING_LENGTH)?;
        let n_heads = u(clip::HEAD_COUNT)?;
        if n_heads == 0 || hidden_size % n_heads != 0 {
            return Err(bad(
                clip::HEAD_COUNT,
                format!("{n_heads} heads do not divide the width {hidden_size}"),
            ));
        }
        let (image_size, patch_size) = (u(clip::IMAGE_SIZE)?, u(clip::PATCH_SIZE)?);
        if image_size == 0 || image_size > MAX_IMAGE_SIZE {
            return Err(bad(
                clip::IMAGE_SIZE,
                format!(
                    "{image_size} pixels: expected 1 to {MAX_IMAGE_SIZE} (real towers use 224 to about 1024)"
                ),
            ));
        }
        if patch_size == 0 || image_size % patch_size != 0 {
            return Err(bad(
                clip::PATCH_SIZE,
                format!("{patch_size} does not divide the image size {image_size}"),
            ));
        }
        let key = clip::IMAGE_GRID_PINPOINTS;
        let grid_pinpoints = match f.optional(key, |f, k| Ok(f.get_array_of::<i32>(k)?.count()))? {
            None => Vec::new(),
            Some(n) if n % 2 != 0 || n / 2 > MAX_PINPOINTS => {
                return Err(bad(
                    key,
                    format!("{n} values: expected pairs, at most {MAX_PINPOINTS} of them"),
                ))
            }
            Some(_) => {
                let flat: Vec<i32> = f.get_array_of::<i32>(key)?.collect();
                // Each pinpoint is cut into image_size tiles, each encoded on its own: the
                // sizes bound the work of every image.
                let max = (image_size * MAX_TILES_PER_SIDE) as i64;
                let fits = |x: i32| {
                    x > 0 && i64::from(x) <= max && (x as usize).is_multiple_of(image_size)
                };
                if let Some(&x) = flat.iter().find(|&&x| !fits(x)) {
                    return Err(bad(
                        key,
                        format!(
                            "{x} is not a multiple of the image size {image_size} between it \
                             and {max} ({MAX_TILES_PER_SIDE} tiles)"
                        ),
                    ));
                }
                flat.chunks(2).map(|p| (p[0] as u32, p[1] as u32)).collect()
            }
        };
        let key = clip::IMAGE_ASPECT_RATIO;
        let aspect = f.optional(key, |f, k| f.get_str(k).map(str::to_owned))?;
        let center_crop = match aspect.as_deref() {
            None | Some("pad") => false,
            Some("square") => true,
            Some("anyres") if !grid_pinpoints.is_empty() => false,
            Some(other) => {
                return Err(bad(
                    key,
                    format!(
                        "{other:?} is not supported (\"pad\", \"square\", or \"anyres\" with \
                         grid pinpoints)"
                    ),
                ))
            }
        };
        let n_blocks = u(clip::BLOCK_COUNT)?;
        // The count sizes the block list: check it against the tensors the file holds.
        let last = format!("v.blk.{}.attn_q.weight", n_blocks.max(1) - 1);
        if n_blocks == 0 || f.tensor(&last).is_none() {
            return Err(bad(
                clip::BLOCK_COUNT,
                format!("{n_blocks}, but the file has no tensor {last}"),
            ));
        }
        Ok(ClipConfig {
            image_size,
            patch_size,
            hidden_size,
            ffn_size: u(clip::FEED_FORWARD_LENGTH)?,
            n_heads,
            n_blocks,
            layer_norm_eps: f.get_f32(clip::LAYER_NORM_EPSILON)?,
            image_mean: triple(clip::IMAGE_MEAN)?,
            image_std: triple(clip::IMAGE_STD)?,
            use_gelu: f
                .optional(clip::USE_GELU, GgufFile::get_bool)?
                .unwrap_or(false),
            grid_pinpoints,
            center_crop,
        })
    }
}

struct Block<B: Backend> {
    ln1: LayerNorm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    out: Linear<B>,
    ln2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

/// The vision tower and projector of an mmproj file.
pub struct Clip<B: Backend> {
    /// Hyper-parameters read from the file.
    pub config: ClipConfig,
    patch_embd: B::Weight,
    class_embd: B::Weight,
    position_embd: B::Weight,
    pre_ln: LayerNorm<B>,
    blocks: Vec<Block<B>>,
    /// The projector from the tower's features to the LLM's embeddings.
    pub projector: Projector<B>,
    /// LLaVA-1.6's `image_newline`, `[text hidden]`: present whenever the config has grid
    /// pinpoints (checked at load).
    image_newline: Option<B::Weight>,
}

impl<B: Backend> Clip<B> {
    /// Loads the tower and projector of an mmproj file. Fails if a key is missing or
    /// inconsistent, if a tensor is missing or has the wrong shape, or if the backend cannot
    /// load a weight.
    pub fn load(backend: &B, file: &Arc<GgufFile>) -> Result<Self, ModelError> {
        let c = ClipConfig::from_gguf(file)?;
        let (h, ff, p) = (c.hidden_size as u64, c.ffn_size as u64, c.patch_size as u64);
        let n_pos = c.n_patches() as u64 + 1;
        let load = |name: &str, shape: &[u64]| weights::load(backend, file, name, shape);
        weights::check_shape(file, "v.patch_embd.weight", &[p, p, 3, h])?;
        let patch_embd = backend.load_matrix(file, "v.patch_embd.weight", (3 * p * p) as usize)?;
        let class_embd = load("v.class_embd", &[h])?;
        let position_embd = load("v.position_embd.weight", &[h, n_pos])?;
        let pre_ln = LayerNorm::load(backend, file, "v.pre_ln", h)?;
        let mut blocks = Vec::new();
        for i in 0..c.n_blocks {
            let b = |n: &str| format!("v.blk.{i}.{n}");
            // fc1 maps width → ffn: ggml shape [width, ffn]. llama.cpp's legacy converter
            // names it ffn_down (and fc2 ffn_up); ours writes ffn_up. Decide by shape, as
            // llama.cpp does, so both kinds of file load.
            let up = file
                .tensor(&b("ffn_up.weight"))
                .map(|t| t.shape().to_vec())
                .unwrap_or_default();
            let (fc1_name, fc2_name) = if up == [h, ff] || h == ff {
                ("ffn_up", "ffn_down")
            } else {
                ("ffn_down", "ffn_up")
            };
            let linear =
                |name: &str, n_in, n_out| Linear::load(backend, file, &b(name), n_in, n_out);
            blocks.push(Block {
                ln1: LayerNorm::load(backend, file, &b("ln1"), h)?,
                q: linear("attn_q", h, h)?,
                k: linear("attn_k", h, h)?,
                v: linear("attn_v", h, h)?,
                out: linear("attn_out", h, h)?,
                ln2: LayerNorm::load(backend, file, &b("ln2"), h)?,
                fc1: linear(fc1_name, h, ff)?,
                fc2: linear(fc2_name, ff, h)?,
            });
        }
        let projector = Projector::load(backend, file, c.hidden_size)?;
        let text = projector.output_size() as u64;
        let image_newline = ["v.image_newline", "model.image_newline"]
            .into_iter()
            .find(|n| file.tensor(n).is_some())
            .map(|n| load(n, &[text]))
            .transpose()?;
        if !c.grid_pinpoints.is_empty() && image_newline.is_none() {
            // Without it the anyres layout cannot be built; running the 1.5 path instead
            // would answer from the wrong features.
            return Err(ModelError::MissingTensor {
                path: file.path().to_owned(),
                name: "v.image_newline (LLaVA-1.6 grid pinpoints need it)".into(),
            });
        }
        Ok(Clip {
            config: c,
            patch_embd,
            class_embd,
            position_embd,
            pre_ln,
            blocks,
            projector,
            image_newline,
        })
    }

    /// LLaVA-1.6's `image_newline` row, `[text hidden]`; `None` for a LLaVA-1.5 tower.
    pub fn image_newline(&self) -> Option<&B::Weight> {
        self.image_newline.as_ref()
    }

    /// Patch features of one preprocessed view (`3 × image_size × image_size`, CHW), before the
    /// projector: `[patches, width]`.
    pub fn encode_features(&self, backend: &B, pixels: &[f32]) -> B::Tensor {
        let c = &self.config;
        let (s, p, side) = (c.image_size, c.patch_size, c.patches_per_side());
        assert_eq!(pixels.len(), 3 * s * s, "pixel buffer of one view");
        // Unfold into rows of (channel, y, x) — the order of the conv kernel's elements.
        let mut patches = Vec::with_capacity(3 * s * s);
        for py in 0..side {
            for px in 0..side {
                for ch in 0..3 {
                    for y in 0..p {
                        let row = ch * s * s + (py * p + y) * s + px * p;
                        patches.extend_from_slice(&pixels[row..row + p]);
                    }
                }
            }
        }
        let patches = backend.upload(patches, side * side, 3 * p * p);
        let embedded = backend.matmul(&patches, &self.patch_embd);
        let cls = backend.get_rows(&self.class_embd, &[0]);
        let x = backend.concat_rows(&[&cls, &embedded]);
        let positions: Vec<u32> = (0..=side * side).map(|i| i as u32).collect();
        let x = backend.add(x, &backend.get_rows(&self.position_embd, &positions));
        let mut x = self.pre_ln.forward(backend, &x, c.layer_norm_eps);

        let heads = Heads {
            n_heads: c.n_heads,
            n_kv_heads: c.n_heads,
            head_dim: c.hidden_size / c.n_heads,
        };
        for b in &self.blocks {
            let n = b.ln1.forward(backend, &x, c.layer_norm_eps);
            let a = backend.attention(
                &b.q.forward(backend, &n),
                &b.k.forward(backend, &n),
                &b.v.forward(backend, &n),
                heads,
            );
            x = backend.add(x, &b.out.forward(backend, &a));
            let n = b.ln2.forward(backend, &x, c.layer_norm_eps);
            let hdn = b.fc1.forward(backend, &n);
            let hdn = if c.use_gelu {
                backend.gelu(hdn)
            } else {
                backend.quick_gelu(hdn)
            };
            x = backend.add(x, &b.fc2.forward(backend, &hdn));
        }
        // Drop CLS: LLaVA uses the patch rows only.
        backend.slice_rows(&x, 1, side * side)
    }

    /// Image embeddings of one view for the LLM: `[patches, text width]`.
    pub fn encode(&self, backend: &B, pixels: &[f32]) -> B::Tensor {
        self.projector
            .forward(backend, &self.encode_features(backend, pixels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llava_runtime::gguf::{GgufWriteError, GgufWriter, MetaValue};
    use llava_runtime::quant::GgmlType;

    /// The config of a file holding every key a tower needs (one block, 8 wide), with
    /// `image_size` and `patch_size` as given.
    fn config_of(image_size: u32, patch_size: u32) -> Result<ClipConfig, ModelError> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("mmproj.gguf");
        let mut w = GgufWriter::new();
        let keys: Vec<(&str, MetaValue)> = vec![
            (KEY_ARCHITECTURE, "clip".into()),
            (clip::EMBEDDING_LENGTH, 8u32.into()),
            (clip::FEED_FORWARD_LENGTH, 16u32.into()),
            (clip::HEAD_COUNT, 2u32.into()),
            (clip::IMAGE_SIZE, image_size.into()),
            (clip::PATCH_SIZE, patch_size.into()),
            (clip::BLOCK_COUNT, 1u32.into()),
            (clip::LAYER_NORM_EPSILON, 1e-5f32.into()),
            (clip::IMAGE_MEAN, vec![0.5f32; 3].into()),
            (clip::IMAGE_STD, vec![0.5f32; 3].into()),
        ];
        for (k, v) in keys {
            w.add(k, v).expect("valid key");
        }
        w.add_tensor("v.blk.0.attn_q.weight", GgmlType::F32, &[8, 8])
            .expect("valid tensor");
        w.write(&path, |_, decl, out| -> Result<(), GgufWriteError> {
            out.write_all(&vec![0; decl.n_bytes() as usize])
                .expect("written");
            Ok(())
        })
        .expect("written");
        ClipConfig::from_gguf(&GgufFile::open(&path).expect("readable"))
    }

    #[test]
    fn a_real_image_size_loads() {
        let c = config_of(336, 14).expect("a LLaVA-1.5 tower's sizes");
        assert_eq!(c.n_patches(), 576);
    }

    /// 63000-pixel views of 1000-pixel patches make only 63² positions, but resizing any
    /// image to one view would take 63000² pixels: about 60 GB with its f32 copies.
    #[test]
    fn an_absurd_image_size_is_refused_at_load() {
        for (image_size, patch_size) in [(63_000, 1000), (MAX_IMAGE_SIZE as u32 * 2, 16), (0, 14)] {
            match config_of(image_size, patch_size) {
                Err(ModelError::BadConfig { key, reason, path }) => {
                    assert_eq!(key, clip::IMAGE_SIZE, "{reason}");
                    assert!(reason.contains("4096"), "{reason}");
                    assert!(path.ends_with("mmproj.gguf"));
                }
                other => panic!("{image_size}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_patch_size_that_does_not_divide_the_image_size_is_refused() {
        for patch_size in [0, 13, 337] {
            match config_of(336, patch_size) {
                Err(ModelError::BadConfig { key, .. }) => assert_eq!(key, clip::PATCH_SIZE),
                other => panic!("{patch_size}: {other:?}"),
            }
        }
    }
}
