//! `llava chat`: a conversation in the terminal, or one turn per line of a piped stdin.
//!
//! Each turn prefills only its own tokens: the session keeps the KV cache and positions. When
//! a turn would not fit in what is left of the context, the oldest turns go (the system
//! prompt stays): the session is rebuilt from the transcript without them, and a notice says
//! how many went. Ctrl-C stops the answer being written; at the prompt it ends the chat.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use llava_models::image::RgbImage;
use llava_models::template::Template;
use llava_models::{GenerateOptions, Pipeline, Session, StopReason, TurnStats};
use llava_runtime::sample::SamplerConfig;
use serde_json::json;

use crate::load::{
    check_images, describe_pipeline, load_images, Chosen, Stages, MAX_PROMPT_FILE_BYTES,
};
use crate::output::{check_outputs, commit, write_staged, Output};
use crate::run::{on_terminal, SamplingArgs, SHORT_ANSWER};

#[derive(clap::Args)]
#[command(
    after_help = "In the chat: /image PATH attaches an image to your next message, /clear \
starts over, /save FILE writes the transcript as JSON, /stats shows the context and speeds, /exit \
ends (so do Ctrl-D, and Ctrl-C at the prompt; Ctrl-C during an answer stops it). A line ending in \
\\ continues on the next line.

Examples:
  llava chat -m llava-v1.5-7b.Q4_K_M.gguf --mmproj mmproj-llava-v1.5-7b.gguf --image photo.jpg
  printf 'What is in this picture?\\nWhat colour is it?\\n' | llava chat -m m.gguf --mmproj p.gguf --image photo.jpg"
)]
pub struct Args {
    #[command(flatten)]
    pub models: crate::load::ModelArgs,
    /// An image for the first message (repeat for several); later ones with /image.
    #[arg(long)]
    image: Vec<PathBuf>,
    /// System prompt, for templates that have one (llava_v1, vicuna_v1, chatml).
    #[arg(long, visible_alias = "system-prompt")]
    system: Option<String>,
    /// Chat template: llava_v1, vicuna_v1, mistral_instruct, chatml, raw (default: the
    /// model file's).
    #[arg(long)]
    template: Option<Template>,
    /// Ask for short answers: LLaVA-1.5's "Answer the question using a single word or
    /// phrase." after each message.
    #[arg(long)]
    short_answer: bool,
    /// Most tokens of each answer.
    #[arg(short = 'n', long, visible_alias = "n-predict", default_value_t = 512)]
    max_tokens: usize,
    /// Go on past end-of-generation tokens until -n (llama.cpp's --ignore-eos).
    #[arg(long)]
    ignore_eos: bool,
    /// Megabytes of image embeddings kept for images seen again (0: none).
    #[arg(long, default_value_t = 256)]
    image_cache_mb: usize,
    /// Report stages and each turn's figures on stderr.
    #[arg(short, long)]
    verbose: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// One exchange of the transcript, kept to rebuild a shortened conversation and for /save.
struct Turn {
    question: String,
    image_paths: Vec<PathBuf>,
    images: Vec<RgbImage>,
    answer: String,
}

pub fn run(args: &Args) -> Result<()> {
    let sampler = args.sampling.config()?;
    if !args.image.is_empty() && args.models.mmproj.is_none() {
        bail!("--image needs --mmproj (the vision tower and projector file)");
    }
    let images = load_images(&args.image, args.models.max_image_pixels)?;
    let stages = Stages::new(args.verbose);
    let pipeline = args
        .models
        .load(args.image_cache_mb.saturating_mul(1 << 20), &stages)?;
    stages.done();
    check_images(&pipeline, &images, &args.image)?;
    let mut session = pipeline.session()?;
    if let Some(t) = args.template {
        session.set_template(t)?;
    }
    if let Some(system) = &args.system {
        session.set_system(system)?;
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive || args.verbose {
        diag!(
            "llava chat: {} ({}), context {}, template {}{}",
            args.models.model().display(),
            describe_pipeline(&pipeline),
            pipeline.n_ctx(),
            session.template(),
            if interactive {
                "; /exit or Ctrl-D to end, Ctrl-C stops an answer"
            } else {
                ""
            }
        );
    }
    // Ctrl-C during an answer stops it (the flag is read between tokens); at the prompt the
    // line editor sees it as a key and the chat ends.
    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted))
        .context("cannot handle Ctrl-C")?;
    let options = GenerateOptions {
        sampler: SamplerConfig {
            penalty_last_n: sampler.penalty_last_n.min(pipeline.n_ctx()),
            ..sampler
        },
        max_tokens: args.max_tokens,
        stop: Vec::new(),
        ignore_eos: args.ignore_eos,
    };
    let mut chat = Chat {
        pipeline: &pipeline,
        session,
        transcript: Vec::new(),
        attached: args.image.iter().cloned().zip(images).collect(),
        options,
        short_answer: args.short_answer,
        verbose: args.verbose,
        interrupted,
        last: None,
        turns_asked: 0,
        args,
    };
    let mut input = Input::new(interactive)?;
    while let Some(line) = input.next_message()? {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(command) = line.strip_prefix('/') {
            match chat.command(command) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => diag!("llava: {e:#}"),
            }
            continue;
        }
        if let Err(e) = chat.turn(line) {
            diag!("llava: {e:#}");
        }
    }
    Ok(())
}

/// The messages the user types: lines from a line editor with history, or from a pipe.
enum Input {
    Editor(Box<rustyline::DefaultEditor>),
    Pipe(std::io::StdinLock<'static>),
}

impl Input {
    fn new(interactive: bool) -> Result<Input> {
        Ok(if interactive {
            Input::Editor(Box::new(
                rustyline::DefaultEditor::new().context("cannot start the line editor")?,
            ))
        } else {
            Input::Pipe(std::io::stdin().lock())
        })
    }

    /// The next message, lines ending in `\` joined with the next; `None` at the end.
    fn next_message(&mut self) -> Result<Option<String>> {
        let mut message = String::new();
        loop {
            let prompt = if message.is_empty() { "> " } else { ". " };
            let Some(line) = self.next_line(prompt)? else {
                return Ok((!message.is_empty()).then_some(message));
            };
            if (message.len() + line.len()) as u64 > MAX_PROMPT_FILE_BYTES {
                bail!("{}", too_long("a message (lines joined by \\)"));
            }
            match line.strip_suffix('\\') {
                Some(part) => {
                    message.push_str(part);
                    message.push('\n');
                }
                None => {
                    message.push_str(&line);
                    if let Input::Editor(editor) = self {
                        let _ = editor.add_history_entry(message.as_str());
                    }
                    return Ok(Some(message));
                }
            }
        }
    }

    fn next_line(&mut self, prompt: &str) -> Result<Option<String>> {
        match self {
            Input::Editor(editor) => match editor.readline(prompt) {
                Ok(line) => Ok(Some(line)),
                // Ctrl-C at the prompt, or Ctrl-D: the chat ends.
                Err(rustyline::error::ReadlineError::Interrupted)
                | Err(rustyline::error::ReadlineError::Eof) => Ok(None),
                Err(e) => Err(anyhow::anyhow!("cannot read the input: {e}")),
            },
            Input::Pipe(stdin) => {
                // Bounded as `run` bounds a piped prompt: `< /dev/zero` has no line ends.
                let mut bytes = Vec::new();
                let n = stdin
                    .take(MAX_PROMPT_FILE_BYTES + 1)
                    .read_until(b'\n', &mut bytes)
                    .context("cannot read stdin")?;
                if n == 0 {
                    return Ok(None);
                }
                if n as u64 > MAX_PROMPT_FILE_BYTES {
                    bail!("{}", too_long("a line"));
                }
                let line = String::from_utf8(bytes)
                    .map_err(|e| anyhow::anyhow!("stdin: a line is not UTF-8 text: {e}"))?;
                let line = line.strip_suffix('\n').unwrap_or(&line);
                Ok(Some(line.strip_suffix('\r').unwrap_or(line).to_owned()))
            }
        }
    }
}

/// The error for input longer than any context holds.
fn too_long(what: &str) -> String {
    format!(
        "stdin: {what} longer than {} MiB, more text than any context holds",
        MAX_PROMPT_FILE_BYTES >> 20
    )
}

struct Chat<'p> {
    pipeline: &'p Pipeline<Chosen>,
    session: Session<'p, Chosen>,
    transcript: Vec<Turn>,
    /// Images for the next message.
    attached: Vec<(PathBuf, RgbImage)>,
    options: GenerateOptions,
    short_answer: bool,
    verbose: bool,
    interrupted: Arc<AtomicBool>,
    last: Option<TurnStats>,
    /// Turns answered since the start (the transcript may have dropped some).
    turns_asked: usize,
    args: &'p Args,
}

impl Chat<'_> {
    /// Runs a `/command`; false ends the chat.
    fn command(&mut self, command: &str) -> Result<bool> {
        let (name, arg) = command
            .split_once(char::is_whitespace)
            .map_or((command, ""), |(n, a)| (n, a.trim()));
        match name {
            "exit" | "quit" | "bye" => return Ok(false),
            "image" => {
                if arg.is_empty() {
                    bail!("/image needs a file: /image PATH");
                }
                if self.args.models.mmproj.is_none() {
                    bail!("images need --mmproj (the vision tower and projector file)");
                }
                let path = PathBuf::from(arg);
                let images = load_images(
                    std::slice::from_ref(&path),
                    self.args.models.max_image_pixels,
                )?;
                check_images(self.pipeline, &images, std::slice::from_ref(&path))?;
                let image = images.into_iter().next().expect("one path, one image");
                diag!(
                    "llava: {} ({}x{}) goes with your next message",
                    path.display(),
                    image.width,
                    image.height
                );
                self.attached.push((path, image));
            }
            "clear" => {
                self.session.clear();
                self.transcript.clear();
                self.attached.clear();
                self.last = None;
                diag!("llava: the conversation starts over");
            }
            "save" => {
                if arg.is_empty() {
                    bail!("/save needs a file: /save FILE");
                }
                self.save(Path::new(arg))?;
                diag!("llava: saved {} turn(s) to {arg}", self.transcript.len());
            }
            "stats" => self.stats(),
            "help" | "?" => {
                diag!("/image PATH (attach to the next message), /clear, /save FILE, /stats, /exit")
            }
            other => bail!("unknown command /{other} (/help lists them)"),
        }
        Ok(true)
    }

    /// One user message and its answer, streamed to stdout.
    fn turn(&mut self, message: &str) -> Result<()> {
        let question = if self.short_answer {
            format!("{message}\n{SHORT_ANSWER}")
        } else {
            message.to_owned()
        };
        let (paths, images): (Vec<PathBuf>, Vec<RgbImage>) =
            std::mem::take(&mut self.attached).into_iter().unzip();
        self.make_room(&question, &images)?;
        self.interrupted.store(false, Ordering::SeqCst);
        let mut stdout = std::io::stdout().lock();
        let to_terminal = stdout.is_terminal();
        let mut answer = String::new();
        let mut write_error = None;
        let interrupted = Arc::clone(&self.interrupted);
        let stats = self
            .session
            .ask(&question, &images, &self.options, |piece| {
                answer.push_str(piece);
                if let Err(e) = stdout
                    .write_all(on_terminal(piece, to_terminal).as_bytes())
                    .and_then(|_| stdout.flush())
                {
                    write_error = Some(e);
                    return ControlFlow::Break(());
                }
                if interrupted.load(Ordering::SeqCst) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })?;
        let _ = writeln!(stdout).and_then(|_| stdout.flush());
        if let Some(e) = write_error {
            bail!("cannot write the answer to stdout: {e}");
        }
        match stats.generation.stop_reason {
            StopReason::Cancelled => diag!("llava: answer stopped"),
            StopReason::ContextFull => {
                diag!("llava: the answer filled the context; the oldest turns go before the next")
            }
            StopReason::MaxTokens => diag!(
                "llava: the answer reached -n {} tokens and was cut",
                self.options.max_tokens
            ),
            _ => {}
        }
        if self.verbose {
            let (p, g) = (&stats.prefill, &stats.generation);
            diag!(
                "turn {}: prompt: {} tokens ({} of them image tokens) in {:.0} ms; generation: {} tokens in {:.0} ms ({:.2} tokens/s); context {}/{}",
                self.turns_asked + 1,
                p.positions,
                p.image_positions,
                p.prefill_time.as_secs_f64() * 1e3,
                g.generated_tokens,
                g.generation_time.as_secs_f64() * 1e3,
                g.tokens_per_second(),
                self.session.n_past(),
                self.session.n_ctx()
            );
        }
        self.transcript.push(Turn {
            question,
            image_paths: paths,
            images,
            answer,
        });
        self.last = Some(stats);
        self.turns_asked += 1;
        Ok(())
    }

    /// Drops the oldest turns until `question` and `images` fit with room for an answer (a
    /// quarter of the context, or -n if less); the system prompt stays, as the first turn
    /// kept is rendered with it.
    fn make_room(&mut self, question: &str, images: &[RgbImage]) -> Result<()> {
        let n_ctx = self.session.n_ctx();
        let reserve = self.options.max_tokens.min(n_ctx / 4).max(1);
        let fits = |s: &Session<'_, Chosen>| -> Result<bool> {
            Ok(s.turn_positions(question, images)? + reserve <= s.room())
        };
        if fits(&self.session)? {
            return Ok(());
        }
        let mut dropped = 0;
        while dropped < self.transcript.len() {
            dropped += 1;
            self.session.clear();
            for t in &self.transcript[dropped..] {
                self.session
                    .replay_turn(&t.question, &t.images, &t.answer)?;
            }
            if fits(&self.session)? {
                break;
            }
        }
        if !fits(&self.session)? {
            let need = self.session.turn_positions(question, images)?;
            bail!(
                "this message takes {need} positions with its images, and the answer needs room too; the context holds {n_ctx} (raise --ctx)"
            );
        }
        self.transcript.drain(..dropped);
        diag!(
            "llava: the context is full: dropped the {dropped} oldest turn(s){}",
            if self.args.system.is_some() {
                " (the system prompt stays)"
            } else {
                ""
            }
        );
        Ok(())
    }

    /// The transcript as JSON, written whole to a new file (an existing one is not replaced).
    fn save(&self, path: &Path) -> Result<()> {
        if path.symlink_metadata().is_ok() {
            bail!("{}: exists; /save writes a new file", path.display());
        }
        check_outputs(
            &[Output {
                flag: "/save",
                path,
            }],
            &[],
            false,
        )?;
        let turns: Vec<_> = self
            .transcript
            .iter()
            .map(|t| {
                json!({
                    "user": t.question,
                    "images": t.image_paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                    "assistant": t.answer,
                })
            })
            .collect();
        let doc = json!({
            "model": self.args.models.model().display().to_string(),
            "mmproj": self.args.models.mmproj.as_ref().map(|p| p.display().to_string()),
            "template": self.session.template().name(),
            "system": self.args.system,
            "turns": turns,
        });
        let staged = write_staged(path, |w| writeln!(w, "{doc:#}"))?;
        commit(vec![staged])
    }

    fn stats(&self) {
        let s = &self.session;
        diag!(
            "context: {} of {} positions used, {} turn(s)",
            s.n_past(),
            s.n_ctx(),
            self.transcript.len()
        );
        if let Some(t) = &self.last {
            let (p, g) = (&t.prefill, &t.generation);
            diag!(
                "last turn: prompt {} tokens ({} image) in {:.0} ms{}, answer {} tokens at {:.2} tokens/s ({})",
                p.positions,
                p.image_positions,
                p.prefill_time.as_secs_f64() * 1e3,
                if p.images > 0 {
                    format!(", images encoded in {:.0} ms", p.encode_time.as_secs_f64() * 1e3)
                } else {
                    String::new()
                },
                g.generated_tokens,
                g.tokens_per_second(),
                g.stop_reason.describe()
            );
        }
        let c = self.pipeline.image_cache_stats();
        if self.args.models.mmproj.is_some() {
            diag!(
                "image cache: {} hit(s), {} miss(es), {} image(s) in {:.1} MB",
                c.hits,
                c.misses,
                c.entries,
                c.bytes as f64 / 1e6
            );
        }
    }
}
