//! Opening an LLM GGUF file for the subcommands that run one.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use llava_models::Llama;
use llava_runtime::backend::CpuBackend;
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
    Ok(LoadedLlm {
        backend,
        model,
        tokenizer,
        n_ctx,
        load_time: t0.elapsed(),
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
