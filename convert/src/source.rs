//! What kind of checkpoint a directory holds, and where its parts are named.
//!
//! Three LLaVA naming schemes exist (converter issue; GGUF-AND-LLAVA.md §4): llava-hf
//! checkpoints made by transformers 4.x (`language_model.model.*`,
//! `vision_tower.vision_model.*`), transformers 5's `save_pretrained` (`vision_tower.*` without
//! `vision_model.`), and the original LLaVA repositories (`model.layers.*`,
//! `model.mm_projector.*`, the CLIP tower in a separate directory or under
//! `model.vision_tower.vision_tower.vision_model.*`). Plain LLaMA/Mistral checkpoints use
//! `model.*`.

use std::path::{Path, PathBuf};

use crate::error::ConvertError;
use crate::hf_config::JsonFile;
use crate::safetensors::Checkpoint;

/// The kind of checkpoint, from `config.json`'s `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// LlamaForCausalLM, MistralForCausalLM.
    Llama,
    /// llava-hf `LlavaForConditionalGeneration` (`next = false`) or
    /// `LlavaNextForConditionalGeneration`.
    LlavaHf {
        /// Whether it is LLaVA-1.6 (NeXT), with anyres tiles.
        next: bool,
    },
    /// The original LLaVA repositories (`LlavaLlamaForCausalLM`, `LlavaMistralForCausalLM`).
    LlavaOriginal {
        /// Whether it is LLaVA-1.6 (NeXT): `image_aspect_ratio = "anyres"` or an `unpad` patch
        /// merge type.
        next: bool,
    },
}

impl ModelKind {
    /// Whether the checkpoint holds a LLaVA model (LLM, tower and projector), not a plain LLM.
    pub fn is_llava(self) -> bool {
        self != ModelKind::Llama
    }

    /// Whether the checkpoint is LLaVA-1.6 (NeXT).
    pub fn is_next(self) -> bool {
        matches!(
            self,
            ModelKind::LlavaHf { next: true } | ModelKind::LlavaOriginal { next: true }
        )
    }
}

/// An opened checkpoint directory.
pub struct Source {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Its `config.json`.
    pub config: JsonFile,
    /// The kind, from `model_type`.
    pub kind: ModelKind,
    /// Every tensor of the directory's safetensors files.
    pub ckpt: Checkpoint,
    /// Prefix of the LLM's `embed_tokens`, `layers.N`, `norm`.
    pub llm_prefix: &'static str,
    /// Name of the output projection (`lm_head.weight` under this kind's prefix); absent from
    /// checkpoints with tied embeddings.
    pub lm_head: &'static str,
}

impl Source {
    /// Opens the checkpoint in `dir`: reads `config.json`, maps its safetensors files and finds the
    /// LLM's naming scheme. Fails if a file cannot be read, the model type is unsupported, or the
    /// LLM's token embeddings cannot be found.
    pub fn open(dir: &Path) -> Result<Source, ConvertError> {
        let config = JsonFile::open(&dir.join("config.json"))?;
        let Some(model_type) = config.str_opt("model_type")? else {
            return Err(ConvertError::Config {
                path: config.path.clone(),
                key: "model_type".into(),
                reason: "missing: this is not a Hugging Face model config (one of llama, \
                         mistral, llava, llava_next, llava_llama, llava_mistral is expected)"
                    .into(),
            });
        };
        let anyres = config.str_opt("image_aspect_ratio")? == Some("anyres")
            || config
                .str_opt("mm_patch_merge_type")?
                .is_some_and(|m| m.contains("unpad"));
        let kind = match model_type {
            "llama" | "mistral" => ModelKind::Llama,
            "llava" => ModelKind::LlavaHf { next: false },
            "llava_next" => ModelKind::LlavaHf { next: true },
            "llava_llama" | "llava_mistral" => ModelKind::LlavaOriginal { next: anyres },
            other => {
                return Err(ConvertError::Config {
                    path: config.path.clone(),
                    key: "model_type".into(),
                    reason: format!(
                        "{other:?} is not supported (llama, mistral, llava, llava_next, \
                         llava_llama, llava_mistral)"
                    ),
                })
            }
        };
        let ckpt = Checkpoint::open(dir)?;
        let (llm_prefix, lm_head) = [
            ("language_model.model.", "language_model.lm_head.weight"),
            ("model.language_model.", "lm_head.weight"),
            ("model.", "lm_head.weight"),
        ]
        .into_iter()
        .find(|(prefix, _)| ckpt.contains(&format!("{prefix}embed_tokens.weight")))
        .ok_or_else(|| ConvertError::MissingTensor {
            name: "model.embed_tokens.weight (or language_model.model.embed_tokens.weight)".into(),
        })?;
        Ok(Source {
            dir: dir.to_owned(),
            config,
            kind,
            ckpt,
            llm_prefix,
            lm_head,
        })
    }

    /// The LLM's own config: `text_config` in llava-hf checkpoints, else the whole file.
    pub fn text_config(&self) -> JsonFile {
        match (self.kind, self.config.get("text_config")) {
            (ModelKind::LlavaHf { .. }, Some(tc)) => JsonFile {
                path: self.config.path.clone(),
                json: tc.clone(),
            },
            _ => JsonFile {
                path: self.config.path.clone(),
                json: self.config.json.clone(),
            },
        }
    }

    /// The LLM checkpoint name of a tensor given its name inside the LLaMA model
    /// (`embed_tokens.weight`, `layers.3.mlp.up_proj.weight`, `norm.weight`).
    pub fn llm_name(&self, inner: &str) -> String {
        format!("{}{inner}", self.llm_prefix)
    }
}
