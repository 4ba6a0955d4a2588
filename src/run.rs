//! `llava run`: answer a prompt, about images when given, streamed to stdout.
//!
//! With `--mmproj`, the question is put in the model's chat template (from the GGUF chat
//! template, or `--template`) with an `<image>` marker per image unless it has its own; without
//! it the prompt is used as given (`--template` applies one).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use llava_models::{generate, StopReason};
use llava_runtime::backend::KvType;
use llava_runtime::sample::{Sampler, SamplerConfig};

use crate::load::{build_prompt, load_images, load_llm, load_mmproj, prompt_text};
use llava_models::image::DEFAULT_MAX_PIXELS;
use llava_models::template::{with_image_markers, Template};

#[derive(clap::Args)]
pub struct Args {
    /// The LLM GGUF file.
    #[arg(short, long)]
    model: PathBuf,
    /// The prompt.
    #[arg(conflicts_with = "file")]
    prompt: Option<String>,
    /// Read the prompt from this file, byte for byte.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Most tokens to generate.
    #[arg(short = 'n', long, default_value_t = 256)]
    max_tokens: usize,
    /// Stop when this text appears (not printed); may be repeated.
    #[arg(long)]
    stop: Vec<String>,
    /// Worker threads (default: one per physical core).
    #[arg(short, long, default_value_t = 0)]
    threads: usize,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short, long, default_value_t = 0)]
    ctx: usize,
    /// Print load time, image-encode time and prompt / generation speed to stderr.
    #[arg(short, long)]
    verbose: bool,
    /// The vision tower and projector GGUF ("mmproj") of this LLM.
    #[arg(long)]
    mmproj: Option<PathBuf>,
    /// An image to ask about; repeat for several, in the order of the prompt's <image> markers.
    #[arg(long)]
    image: Vec<PathBuf>,
    /// Chat template: llava_v1, vicuna_v1, mistral_instruct, chatml, raw (default: from the
    /// file with --mmproj, raw without).
    #[arg(long)]
    template: Option<Template>,
    /// Refuse images with more pixels than this (checked before decoding).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    max_image_pixels: u64,
    /// How the KV cache stores keys and values: f16 (half the memory) or f32 (exact).
    #[arg(long, default_value = "f16")]
    kv_type: KvType,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(clap::Args)]
pub struct SamplingArgs {
    /// Temperature; 0 picks the most likely token every time.
    #[arg(long = "temp", default_value_t = 0.8)]
    temperature: f32,
    /// Keep the K most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the most likely tokens up to this total probability (1: all).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens less likely than this times the most likely one (0: none).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalise recently seen tokens (1: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// Random seed, for reproducible runs (default: a new one each run).
    #[arg(long)]
    seed: Option<u64>,
}

impl SamplingArgs {
    pub fn config(&self) -> Result<SamplerConfig> {
        let s = self;
        if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
            bail!("--temp must be 0 or more, got {}", s.temperature);
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {}", s.top_p);
        }
        if !(0.0..=1.0).contains(&s.min_p) {
            bail!("--min-p must be in [0, 1], got {}", s.min_p);
        }
        if !(s.repeat_penalty > 0.0 && s.repeat_penalty.is_finite()) {
            bail!("--repeat-penalty must be above 0, got {}", s.repeat_penalty);
        }
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Ok(SamplerConfig {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            frequency_penalty: s.frequency_penalty,
            presence_penalty: s.presence_penalty,
            penalty_last_n: s.repeat_last_n,
            seed,
        })
    }
}

pub fn run(args: &Args) -> Result<()> {
    let sampler_config = args.sampling.config()?;
    let question = prompt_text(args.prompt.as_deref(), args.file.as_deref())?;
    // Bad images fail before minutes of model loading.
    let images = load_images(&args.image, args.max_image_pixels)?;
    if !images.is_empty() && args.mmproj.is_none() {
        bail!("--image needs --mmproj (the vision tower and projector file)");
    }
    let mut llm = load_llm(&args.model, args.threads, args.ctx)?;
    llm.backend.set_kv_type(args.kv_type);
    let clip = args
        .mmproj
        .as_deref()
        .map(|p| load_mmproj(p, &llm))
        .transpose()?;
    let template = match (args.template, &clip) {
        (Some(t), _) => t,
        (None, Some(_)) => Template::from_chat_template(llm.chat_template.as_deref()),
        (None, None) => Template::Raw,
    };
    let text = template.render(&with_image_markers(&question, images.len()));
    let prompt = build_prompt(&llm, clip.as_ref(), &images, &text)?;
    let mut stop = args.stop.clone();
    stop.extend(template.stop_strings().iter().map(|s| s.to_string()));
    if args.verbose {
        eprintln!(
            "loaded {} in {:.0} ms: {} layers, {} threads, {} kernels, context {} ({} KV cache), template {template}, seed {}",
            args.model.display(),
            llm.load_time.as_secs_f64() * 1e3,
            llm.model.config.n_layers,
            llm.backend.threads(),
            llava_runtime::quant::cpu_path().name(),
            llm.n_ctx,
            llm.backend.kv_type().name(),
            sampler_config.seed
        );
        if prompt.n_images > 0 {
            eprintln!(
                "image encode: {} image(s), {} tokens in {:.0} ms",
                prompt.n_images,
                prompt.image_tokens,
                prompt.encode_time.as_secs_f64() * 1e3
            );
        }
    }

    let (b, m) = (&llm.backend, &llm.model);
    let mut cache = m.new_cache(b, llm.n_ctx);
    let mut sampler = Sampler::new(sampler_config);
    let mut stdout = std::io::stdout().lock();
    let mut broken_pipe = false;
    let stats = generate(
        b,
        m,
        &llm.tokenizer,
        &mut cache,
        llm.n_ctx,
        prompt.embeddings,
        &prompt.text_ids,
        &mut sampler,
        args.max_tokens,
        &stop,
        |piece| {
            // `llava run ... | head` ends quietly.
            if !broken_pipe
                && stdout
                    .write_all(piece.as_bytes())
                    .and_then(|_| stdout.flush())
                    .is_err()
            {
                broken_pipe = true;
            }
        },
    );
    if !broken_pipe {
        let _ = writeln!(stdout);
    }
    if args.verbose {
        eprintln!(
            "prompt: {} tokens in {:.0} ms ({:.2} tokens/s); generation: {} tokens in {:.0} ms ({:.2} tokens/s); stopped: {}",
            stats.prompt_tokens,
            stats.prompt_time.as_secs_f64() * 1e3,
            stats.prompt_tokens_per_second(),
            stats.generated_tokens,
            stats.generation_time.as_secs_f64() * 1e3,
            stats.generation_tokens_per_second(),
            match stats.stop_reason {
                StopReason::EndOfText => "end of text",
                StopReason::StopString => "stop string",
                StopReason::MaxTokens => "max tokens",
                StopReason::ContextFull => "context full",
            }
        );
    }
    Ok(())
}
