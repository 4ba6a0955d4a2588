//! Opening model files and images, and building prompts, for the subcommands that run a model.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use llava_models::image::{load_image, RgbImage};
use llava_models::llava::{
    embed_pieces, encode_image, image_tokens, preprocessed_pixels, tokenize_pieces, Piece,
};
use llava_models::{Clip, Llama, LlamaConfig};
use llava_runtime::backend::{Backend, CpuBackend, KvType};
use llava_runtime::gguf::{GgufFile, KEY_ARCHITECTURE};
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

/// How to load an LLM: the run-time settings every command that runs one shares.
pub struct LlmOptions {
    /// Worker threads; 0: one per physical core. More than the CPU has are capped, with a
    /// warning (1000 threads on 2 cores took 33 s for 2 tokens).
    pub threads: usize,
    /// Context in tokens; 0: the model's trained context, at most [`DEFAULT_CTX_CAP`].
    pub ctx: usize,
    /// Allow a context beyond the model's trained one (the model's quality there is unknown).
    pub beyond_trained_ctx: bool,
    pub kv_type: KvType,
}

/// Opens `path` and loads the model on the CPU, with the context checked against the model
/// and against the memory its KV cache would take.
pub fn load_llm(path: &Path, options: &LlmOptions) -> Result<LoadedLlm> {
    let t0 = Instant::now();
    let file = Arc::new(GgufFile::open(path)?);
    if let Ok("clip") = file.get_str(KEY_ARCHITECTURE) {
        bail!(
            "{}: is a vision-tower file (an mmproj, architecture \"clip\"): pass it as --mmproj, and the LLM as -m",
            path.display()
        );
    }
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let threads = capped_threads(options.threads);
    let mut backend = CpuBackend::new(threads);
    backend.set_kv_type(options.kv_type);
    let model = Llama::load(&backend, &file)?;
    if tokenizer.vocab_size() > model.config.n_vocab {
        bail!(
            "{}: the tokenizer has {} tokens but the model only {} embeddings",
            path.display(),
            tokenizer.vocab_size(),
            model.config.n_vocab
        );
    }
    let trained = model.config.n_ctx_train;
    let n_ctx = match options.ctx {
        0 => trained.clamp(1, DEFAULT_CTX_CAP),
        ctx if ctx > trained && !options.beyond_trained_ctx => bail!(
            "--ctx {ctx} is above the {trained} positions {} was trained for (pass --ctx-beyond-training to use it anyway)",
            path.display()
        ),
        ctx => ctx,
    };
    check_kv_memory(&model.config, n_ctx, options.kv_type)?;
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

/// `requested` threads, at most the logical CPUs this process may use (0 stays 0: the
/// backend's default).
fn capped_threads(requested: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if requested > cpus {
        diag!("llava: warning: -t {requested} is more than the {cpus} logical CPUs here; using {cpus}");
        cpus
    } else {
        requested
    }
}

/// Refuses a context whose KV cache would not fit in the memory available now (Linux's
/// MemAvailable; elsewhere no check), before it is allocated.
fn check_kv_memory(config: &LlamaConfig, n_ctx: usize, kv_type: KvType) -> Result<()> {
    let elem = match kv_type {
        KvType::F32 => 4u128,
        KvType::F16 => 2,
    };
    // Keys and values of every layer, for every position.
    let bytes = 2
        * config.n_layers as u128
        * n_ctx as u128
        * config.n_kv_heads as u128
        * config.head_dim as u128
        * elem;
    if let Some(available) = available_memory() {
        if bytes > u128::from(available) {
            bail!(
                "a context of {n_ctx} positions needs a KV cache of {:.1} GiB ({} KV), but {:.1} GiB of memory is available",
                bytes as f64 / (1u64 << 30) as f64,
                kv_type.name(),
                available as f64 / (1u64 << 30) as f64
            );
        }
    }
    Ok(())
}

/// Linux's estimate of the memory available without swapping, in bytes.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The largest prompt file read: several times more text than any context holds (16 MiB is
/// about 4 M tokens), so `--file /dev/zero`-like inputs stop early with a clear message.
pub const MAX_PROMPT_FILE_BYTES: u64 = 16 << 20;

/// Reads a prompt given inline or as `--file` (byte for byte; it must be UTF-8).
pub fn prompt_text(inline: Option<&str>, file: Option<&Path>) -> Result<String> {
    match (inline, file) {
        (Some(t), None) => Ok(t.to_owned()),
        (None, Some(p)) => {
            let bytes = read_bounded(p, MAX_PROMPT_FILE_BYTES)?;
            String::from_utf8(bytes)
                .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text: {e}", p.display()))
        }
        (Some(_), Some(_)) => bail!("give the text or --file, not both"),
        (None, None) => bail!("no text given (pass it as an argument or with --file)"),
    }
}

/// The bytes of `path` (`-`: stdin), refused beyond `max` bytes: checked while reading, so a
/// pipe, `/dev/zero` or a file that grows is bounded too. Pipes are welcome (`--file <(cmd)`,
/// `--file -`); a directory is not.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let err = |e: std::io::Error| anyhow::anyhow!("{}: {e}", path.display());
    let mut bytes = Vec::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .take(max + 1)
            .read_to_end(&mut bytes)
    } else {
        if std::fs::metadata(path).map_err(err)?.is_dir() {
            bail!("{}: is a directory, not a file", path.display());
        }
        std::fs::File::open(path)
            .map_err(err)?
            .take(max + 1)
            .read_to_end(&mut bytes)
    };
    read.map_err(err)?;
    if bytes.len() as u64 > max {
        bail!(
            "{}: larger than {} MiB, more text than any context holds",
            path.display(),
            max >> 20
        );
    }
    Ok(bytes)
}

/// The prompt of a run as embeddings: text pieces and encoded images, spliced.
pub struct Prompt {
    pub embeddings: <CpuBackend as Backend>::Tensor,
    pub text_ids: Vec<u32>,
    /// Per position: the token id, or `None` for an image's rows.
    pub position_ids: Vec<Option<u32>>,
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

/// Refuses images whose preprocessing for this tower would make more than `max_pixels`
/// pixels: `--max-image-pixels` bounds the work done, not only the file (LLaVA-1.5 pads a
/// 1 × 100000 strip to a 10^10-pixel square).
pub fn check_image_work(
    clip: &Clip<CpuBackend>,
    images: &[RgbImage],
    paths: &[PathBuf],
    max_pixels: u64,
) -> Result<()> {
    for (img, path) in images.iter().zip(paths) {
        let pixels = preprocessed_pixels(clip, img);
        if pixels > max_pixels {
            bail!(
                "{}: {}x{} becomes {:.1} megapixels in this model's preprocessing{}, above the limit of {:.1} (--max-image-pixels)",
                path.display(),
                img.width,
                img.height,
                pixels as f64 / 1e6,
                if clip.config.grid_pinpoints.is_empty() {
                    " (padded to a square)"
                } else {
                    ""
                },
                max_pixels as f64 / 1e6
            );
        }
    }
    Ok(())
}

/// Opens the mmproj file and checks that its projector feeds this LLM.
pub fn load_mmproj(path: &Path, llm: &LoadedLlm) -> Result<Clip<CpuBackend>> {
    let file = Arc::new(GgufFile::open(path)?);
    if let Ok(arch @ "llama") = file.get_str(KEY_ARCHITECTURE) {
        bail!(
            "{}: is an LLM file (architecture {arch:?}), not a vision tower: pass it as -m, and the mmproj as --mmproj",
            path.display()
        );
    }
    let clip = Clip::load(&llm.backend, &file)?;
    let (out, hidden) = (clip.projector.output_size(), llm.model.config.hidden_size);
    if out != hidden {
        bail!(
            "{}: the projector makes embeddings of {out} but the LLM's are {hidden}: not a pair",
            path.display()
        );
    }
    Ok(clip)
}

/// Splices the images into `prompt` at its `<image>` markers. Every check comes before the
/// images are encoded (seconds each): the markers, and that the whole prompt fits the context.
pub fn build_prompt(
    llm: &LoadedLlm,
    clip: Option<&Clip<CpuBackend>>,
    images: &[RgbImage],
    prompt: &str,
) -> Result<Prompt> {
    let b = &llm.backend;
    if clip.is_none() && !images.is_empty() {
        bail!("--image needs --mmproj (the vision tower and projector file)");
    }
    let pieces = tokenize_pieces(&llm.tokenizer, prompt, images.len())?;
    if pieces.is_empty() {
        bail!("the prompt has no tokens");
    }
    let tokens_of_image: Vec<usize> = match clip {
        Some(clip) => images.iter().map(|img| image_tokens(clip, img)).collect(),
        None => Vec::new(),
    };
    let image_tokens: usize = tokens_of_image.iter().sum();
    let text_tokens: usize = pieces
        .iter()
        .map(|p| match p {
            Piece::Text(ids) => ids.len(),
            Piece::Image(_) => 0,
        })
        .sum();
    let n_positions = text_tokens + image_tokens;
    if n_positions > llm.n_ctx {
        bail!(
            "the prompt takes {n_positions} positions ({image_tokens} of them image tokens) but the context holds {} (raise --ctx)",
            llm.n_ctx
        );
    }
    let t0 = Instant::now();
    let encoded: Vec<_> = match clip {
        Some(clip) => images
            .iter()
            .map(|img| encode_image(b, clip, img))
            .collect(),
        None => Vec::new(),
    };
    let encode_time = t0.elapsed();
    let p = embed_pieces(b, &llm.model, &pieces, &encoded);
    debug_assert_eq!(p.n_positions, n_positions);
    // One entry per position: the token id, or None where an image's rows are.
    let position_ids = pieces
        .iter()
        .flat_map(|piece| match piece {
            Piece::Text(ids) => ids.iter().map(|&id| Some(id)).collect::<Vec<_>>(),
            Piece::Image(i) => vec![None; tokens_of_image[*i]],
        })
        .collect();
    Ok(Prompt {
        embeddings: p.embeddings,
        text_ids: p.text_ids,
        position_ids,
        n_positions: p.n_positions,
        n_images: images.len(),
        image_tokens,
        encode_time,
    })
}
