//! Opening model files and images, and building prompts, for the subcommands that run a model.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use llava_models::image::{load_image, RgbImage};
use llava_models::llava::{embed_pieces, encode_image, tokenize_pieces};
use llava_models::{Clip, Llama};
use llava_runtime::backend::{Backend, CpuBackend};
use llava_runtime::gguf::GgufFile;
use llava_runtime::tokenizer::Tokenizer;

/// Context used when `--ctx` is not given: the model's own, capped to keep the KV cache small.
pub const DEFAULT_CTX_CAP: usize = 4096;

pub struct LoadedLlm {
    pub backend: CpuBackend,
    pub model: Llama<CpuBackend>,
    pub tokenizer: Tokenizer,
    pub n_ctx: usize,
    pub load_time: Duration,
    /// `tokenizer.chat_template`, if the file has one.
    pub chat_template: Option<String>,
}

/// Opens `path`, loads the model on the CPU with `threads` workers (0: one per physical core)
/// and sizes the context (`ctx` = 0: the default).
pub fn load_llm(path: &Path, threads: usize, ctx: usize) -> Result<LoadedLlm> {
    let t0 = Instant::now();
    let file = Arc::new(GgufFile::open(path)?);
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let backend = CpuBackend::new(threads);
    let model = Llama::load(&backend, &file)?;
    if tokenizer.vocab_size() > model.config.n_vocab {
        bail!(
            "{}: the tokenizer has {} tokens but the model only {} embeddings",
            path.display(),
            tokenizer.vocab_size(),
            model.config.n_vocab
        );
    }
    let n_ctx = if ctx == 0 {
        model.config.n_ctx_train.min(DEFAULT_CTX_CAP)
    } else {
        ctx
    };
    let chat_template = file.optional("tokenizer.chat_template", |f, k| {
        f.get_str(k).map(str::to_owned)
    })?;
    Ok(LoadedLlm {
        backend,
        model,
        tokenizer,
        n_ctx,
        load_time: t0.elapsed(),
        chat_template,
    })
}

/// Reads a prompt given inline or as `--file` (byte for byte; it must be UTF-8).
pub fn prompt_text(inline: Option<&str>, file: Option<&Path>) -> Result<String> {
    match (inline, file) {
        (Some(t), None) => Ok(t.to_owned()),
        (None, Some(p)) => {
            let bytes = std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            String::from_utf8(bytes)
                .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text: {e}", p.display()))
        }
        (Some(_), Some(_)) => bail!("give the text or --file, not both"),
        (None, None) => bail!("no text given (pass it as an argument or with --file)"),
    }
}

/// The prompt of a run as embeddings: text pieces and encoded images, spliced.
pub struct Prompt {
    pub embeddings: <CpuBackend as Backend>::Tensor,
    pub text_ids: Vec<u32>,
    pub n_positions: usize,
    /// Images encoded and the time it took.
    pub n_images: usize,
    pub image_tokens: usize,
    pub encode_time: Duration,
}

/// Decodes `images` (checked first, so a bad file fails before any model is loaded).
pub fn load_images(paths: &[PathBuf], max_pixels: u64) -> Result<Vec<RgbImage>> {
    paths
        .iter()
        .map(|p| Ok(load_image(p, max_pixels)?))
        .collect()
}

/// Opens the mmproj file and checks that its projector feeds this LLM.
pub fn load_mmproj(path: &Path, llm: &LoadedLlm) -> Result<Clip<CpuBackend>> {
    let file = Arc::new(GgufFile::open(path)?);
    let clip = Clip::load(&llm.backend, &file)?;
    let (out, hidden) = (clip.projector.output_size(), llm.model.config.hidden_size);
    if out != hidden {
        bail!(
            "{}: the projector makes embeddings of {out} but the LLM's are {hidden}: not a pair",
            path.display()
        );
    }
    if !clip.config.grid_pinpoints.is_empty() && clip.image_newline.is_none() {
        bail!(
            "{}: LLaVA-1.6 grid pinpoints but no image_newline tensor",
            path.display()
        );
    }
    Ok(clip)
}

/// Encodes the images and splices them into `prompt` at its `<image>` markers.
pub fn build_prompt(
    llm: &LoadedLlm,
    clip: Option<&Clip<CpuBackend>>,
    images: &[RgbImage],
    prompt: &str,
) -> Result<Prompt> {
    let b = &llm.backend;
    let t0 = Instant::now();
    let encoded: Vec<_> = match clip {
        Some(clip) => images
            .iter()
            .map(|img| encode_image(b, clip, img))
            .collect(),
        None if images.is_empty() => Vec::new(),
        None => bail!("--image needs --mmproj (the vision tower and projector file)"),
    };
    let encode_time = t0.elapsed();
    let image_tokens = encoded.iter().map(|t| b.shape(t).0).sum();
    let pieces = tokenize_pieces(&llm.tokenizer, prompt, images.len())?;
    if pieces.is_empty() {
        bail!("the prompt has no tokens");
    }
    let p = embed_pieces(b, &llm.model, &pieces, &encoded);
    if p.n_positions > llm.n_ctx {
        bail!(
            "the prompt takes {} positions ({} of them image tokens) but the context holds {} (raise --ctx)",
            p.n_positions,
            image_tokens,
            llm.n_ctx
        );
    }
    Ok(Prompt {
        embeddings: p.embeddings,
        text_ids: p.text_ids,
        n_positions: p.n_positions,
        n_images: images.len(),
        image_tokens,
        encode_time,
    })
}
