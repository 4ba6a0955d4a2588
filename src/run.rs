//! `llava run`: answer a prompt, about images when given, streamed to stdout.
//!
//! The prompt is put in the model's chat template (from the GGUF's `tokenizer.chat_template`,
//! or `--template`), with an `<image>` marker per image unless it has its own; `--template raw`
//! runs the text as given.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{bail, Result};
use llava_models::template::Template;
use llava_models::GenerateOptions;
use llava_runtime::sample::SamplerConfig;

use crate::load::{check_images, describe_pipeline, load_images, prompt_text, Stages};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  llava run -m llava-v1.5-7b.Q4_K_M.gguf --mmproj mmproj-llava-v1.5-7b.gguf \\
      --image photo.jpg \"What is in this picture?\"
  llava run -m model.gguf --template raw --temp 0 -n 32 \"Once upon a time\"
  echo \"Why is the sky blue?\" | llava run -m model.gguf --system \"Answer in one sentence.\"")]
pub struct Args {
    #[command(flatten)]
    pub models: crate::load::ModelArgs,
    /// The prompt (or -p; without either, --file or a piped stdin).
    #[arg(conflicts_with_all = ["file", "prompt_flag"])]
    prompt: Option<String>,
    /// The prompt, as llama.cpp's -p.
    #[arg(short = 'p', long = "prompt", conflicts_with = "file")]
    prompt_flag: Option<String>,
    /// Read the prompt from this file, byte for byte (`-`: stdin; at most 16 MiB).
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Most tokens to generate (generation also stops when the context is full).
    #[arg(short = 'n', long, visible_alias = "n-predict", default_value_t = 256)]
    max_tokens: usize,
    /// Stop when this text appears (not printed); may be repeated.
    #[arg(long)]
    stop: Vec<String>,
    /// Go on past end-of-generation tokens until -n (llama.cpp's --ignore-eos).
    #[arg(long)]
    ignore_eos: bool,
    /// Report each stage as it starts (load, image encode, prefill) and the timings, on
    /// stderr.
    #[arg(short, long)]
    verbose: bool,
    /// An image to ask about; repeat for several, in the order of the prompt's <image> markers.
    #[arg(long)]
    image: Vec<PathBuf>,
    /// Chat template: llava_v1, vicuna_v1, mistral_instruct, chatml, or raw for the text as
    /// given (default: the model file's).
    #[arg(long)]
    template: Option<Template>,
    /// System prompt, for templates that have one (llava_v1, vicuna_v1, chatml).
    #[arg(long, visible_alias = "system-prompt")]
    system: Option<String>,
    /// Ask for a short answer: LLaVA-1.5's "Answer the question using a single word or
    /// phrase." after the prompt.
    #[arg(long)]
    short_answer: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// LLaVA-1.5's response-format prompt for short answers (its VQA evaluation), put after the
/// question by `--short-answer`.
pub const SHORT_ANSWER: &str = "Answer the question using a single word or phrase.";

#[derive(clap::Args)]
pub struct SamplingArgs {
    /// Temperature; 0 picks the most likely token every time.
    #[arg(long = "temp", default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f32,
    /// Keep the K most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the most likely tokens up to this total probability (1: all).
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    top_p: f32,
    /// Drop tokens less likely than this times the most likely one (0: none).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    min_p: f32,
    /// Penalise recently seen tokens (1: off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    repeat_penalty: f32,
    /// How many recent tokens the penalties look at (at most the context).
    #[arg(long, default_value_t = 64, value_parser = crate::limits::context)]
    repeat_last_n: usize,
    /// Subtract this times a token's count in the recent tokens from its logit.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// Subtract this from the logit of every token in the recent tokens.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    presence_penalty: f32,
    /// Random seed, for reproducible runs (default, or -1: a new one each run).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::limits::seed)]
    seed: Option<crate::limits::Seed>,
}

impl SamplingArgs {
    pub fn config(&self) -> Result<SamplerConfig> {
        let s = self;
        let seed = self.seed.and_then(|s| s.0).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let config = SamplerConfig {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            frequency_penalty: s.frequency_penalty,
            presence_penalty: s.presence_penalty,
            penalty_last_n: s.repeat_last_n,
            seed,
        };
        // The library's checks, its field names given as the flags that set them.
        config.check().map_err(|e| {
            const FLAGS: [(&str, &str); 6] = [
                ("temperature", "--temp"),
                ("top_p", "--top-p"),
                ("min_p", "--min-p"),
                ("repeat_penalty", "--repeat-penalty"),
                ("frequency_penalty", "--frequency-penalty"),
                ("presence_penalty", "--presence-penalty"),
            ];
            let (field, rest) = e.split_once(' ').unwrap_or((&e, ""));
            let flag = FLAGS
                .iter()
                .find(|(f, _)| *f == field)
                .map_or(field, |(_, flag)| flag);
            anyhow::anyhow!("{flag} {rest}")
        })?;
        Ok(config)
    }
}

pub fn run(args: &Args) -> Result<()> {
    let sampler = args.sampling.config()?;
    let inline = args.prompt.as_deref().or(args.prompt_flag.as_deref());
    let mut question = prompt_text(inline, args.file.as_deref())?;
    if args.short_answer {
        question = format!("{question}\n{SHORT_ANSWER}");
    }
    if !args.image.is_empty() && args.models.mmproj.is_none() {
        bail!("--image needs --mmproj (the vision tower and projector file)");
    }
    // Bad images fail before minutes of model loading.
    let images = load_images(&args.image, args.models.max_image_pixels)?;
    let stages = Stages::new(args.verbose);
    let pipeline = args
        .models
        .load(llava_models::DEFAULT_IMAGE_CACHE_BYTES, &stages)?;
    check_images(&pipeline, &images, &args.image)?;
    let mut session = pipeline.session()?;
    if let Some(t) = args.template {
        session.set_template(t)?;
    }
    if let Some(system) = &args.system {
        session.set_system(system)?;
    }
    if args.verbose {
        let (llm_time, vision_time) = pipeline.load_times();
        diag!(
            "loaded {} in {:.0} ms{}: {} layers, {}, context {} ({} KV cache), template {}, seed {}",
            args.models.model().display(),
            llm_time.as_secs_f64() * 1e3,
            match args.models.mmproj {
                Some(_) => format!(" (vision tower {:.0} ms)", vision_time.as_secs_f64() * 1e3),
                None => String::new(),
            },
            pipeline.llm().config.n_layers,
            describe_pipeline(&pipeline),
            pipeline.n_ctx(),
            pipeline.kv_type().name(),
            session.template(),
            sampler.seed
        );
    }
    session.on_stage(|stage| stages.stage(stage));
    let options = GenerateOptions {
        sampler: SamplerConfig {
            // A window longer than the context sees the same tokens as the context.
            penalty_last_n: sampler.penalty_last_n.min(pipeline.n_ctx()),
            ..sampler
        },
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
    };

    let mut stdout = std::io::stdout().lock();
    // The answer is the output: a write error ends the run with an error, except a closed
    // pipe (`llava run ... | head -c1`), which stops generating quietly.
    let mut write_error: Option<std::io::Error> = None;
    let to_terminal = stdout.is_terminal();
    let mut first = true;
    let stats = session.ask(&question, &images, &options, |piece| {
        if first {
            first = false;
            stages.done();
        }
        match stdout
            .write_all(on_terminal(piece, to_terminal).as_bytes())
            .and_then(|_| stdout.flush())
        {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_error = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    stages.done();
    if write_error.is_none() {
        if let Err(e) = writeln!(stdout).and_then(|_| stdout.flush()) {
            write_error = Some(e);
        }
    }
    if let Some(e) = write_error.filter(|e| e.kind() != std::io::ErrorKind::BrokenPipe) {
        bail!("cannot write the answer to stdout: {e}");
    }
    if args.verbose {
        let (p, g) = (&stats.prefill, &stats.generation);
        if p.images > 0 {
            diag!(
                "image encode: {} image(s), {} tokens in {:.0} ms",
                p.images,
                p.image_positions,
                p.encode_time.as_secs_f64() * 1e3
            );
        }
        diag!(
            "prompt: {} tokens in {:.0} ms ({:.2} tokens/s); generation: {} tokens in {:.0} ms ({:.2} tokens/s); stopped: {}",
            p.positions,
            p.prefill_time.as_secs_f64() * 1e3,
            p.positions_per_second(),
            g.generated_tokens,
            g.generation_time.as_secs_f64() * 1e3,
            g.tokens_per_second(),
            match g.stop_reason {
                llava_models::StopReason::Cancelled => "output closed",
                r => r.describe(),
            }
        );
    }
    Ok(())
}

/// The answer as a terminal may show it: a hostile vocabulary's pieces could hold escape
/// sequences (clear the screen, retitle the window), so on a terminal control characters
/// other than newline, tab and carriage return are written escaped. Piped output is exact.
pub fn on_terminal(piece: &str, to_terminal: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && !matches!(c, '\n' | '\t' | '\r');
    if !to_terminal || !piece.chars().any(unsafe_char) {
        return Cow::Borrowed(piece);
    }
    Cow::Owned(
        piece
            .chars()
            .map(|c| {
                if unsafe_char(c) {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_escaped_on_a_terminal_only() {
        let evil = "a\u{1b}]0;x\u{7}b\nc\td";
        assert_eq!(on_terminal(evil, true), "a\\u{1b}]0;x\\u{7}b\nc\td");
        assert_eq!(on_terminal(evil, false), evil);
        assert!(matches!(on_terminal("plain\n", true), Cow::Borrowed(_)));
    }
}
