//! The library's front door: load an LLM and its vision tower with every check that they can
//! run together ([`Pipeline`]), then ask questions in a [`Session`] that keeps the KV cache
//! and positions from turn to turn, streaming the answer through a callback that can stop it.
//!
//! ```no_run
//! use std::ops::ControlFlow;
//! use llava_models::{GenerateOptions, LoadOptions, Pipeline};
//! use llava_models::image::{load_image, DEFAULT_MAX_PIXELS};
//! use llava_runtime::backend::CpuBackend;
//!
//! let pipeline = Pipeline::load(
//!     CpuBackend::new(0),
//!     "llava-v1.5-7b.Q4_K_M.gguf".as_ref(),
//!     Some("mmproj-llava-v1.5-7b.gguf".as_ref()),
//!     &LoadOptions::default(),
//! )?;
//! let image = load_image("photo.jpg".as_ref(), DEFAULT_MAX_PIXELS)?;
//! let mut session = pipeline.session()?;
//! session.ask("What is in this picture?", &[image], &GenerateOptions::default(), |text| {
//!     print!("{text}");
//!     ControlFlow::Continue(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Every failure is an [`Error`]; nothing a file or a caller gives panics.

use llava_runtime::gguf::keys;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llava_runtime::backend::{Backend, BackendError, KvType};
use llava_runtime::gguf::{GgufError, GgufFile, KEY_ARCHITECTURE};
use llava_runtime::sample::{Sampler, SamplerConfig};
use llava_runtime::tokenizer::{Tokenizer, TokenizerError};

use crate::clip::Clip;
use crate::error::ModelError;
use crate::generate::{GenerationStats, PrefillStats, StopFilter, StopReason};
use crate::image::{ImageError, RgbImage, DEFAULT_MAX_PIXELS};
use crate::llama::Llama;
use crate::llava::{embed_pieces, encode_image, image_tokens, preprocessed_pixels};
use crate::llava::{tokenize_pieces, Piece, PromptError};
use crate::template::{with_image_markers, Template};

/// Context used when [`LoadOptions::n_ctx`] is 0: the model's own, capped to keep the KV cache
/// small.
pub const DEFAULT_CTX_CAP: usize = 4096;

/// Anything that can go wrong loading or running a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file is malformed or its configuration unsupported.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A GGUF file cannot be read.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The tokenizer in the LLM file cannot be built.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The backend failed (a weight it cannot compute with, the device out of memory or lost).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The prompt cannot be run as given (markers, length).
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// An image file cannot be used.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Two files, or a file and a setting, that cannot work together.
    #[error("{}: {reason}", path.display())]
    Incompatible {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong, in a sentence.
        reason: String,
    },
    /// A request the pipeline cannot serve as set up (an image without a vision tower, a
    /// system prompt for a template without one, generating before any prompt).
    #[error("{0}")]
    Usage(String),
    /// An image would become more pixels in this tower's preprocessing than allowed.
    #[error("{width}x{height} becomes {:.1} megapixels in this model's preprocessing{}, above the limit of {:.1}", *pixels as f64 / 1e6, if *padded { " (padded to a square)" } else { "" }, *max as f64 / 1e6)]
    ImageWork {
        /// The image's size.
        width: u32,
        /// The image's size.
        height: u32,
        /// Pixels of the largest picture its preprocessing makes.
        pixels: u64,
        /// Whether that picture is the image padded to a square (LLaVA-1.5).
        padded: bool,
        /// The limit ([`LoadOptions::max_image_pixels`]).
        max: u64,
    },
}

/// How to load a pipeline.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Context in positions; 0: the model's trained context, at most [`DEFAULT_CTX_CAP`].
    pub n_ctx: usize,
    /// Allow a context beyond the model's trained one (the model's quality there is unknown).
    pub beyond_trained_ctx: bool,
    /// How the KV cache stores keys and values.
    pub kv_type: KvType,
    /// Refuse images whose preprocessing makes more pixels than this (LLaVA-1.5 pads to a
    /// square first: a 1 × 100000 strip becomes 10^10 pixels).
    pub max_image_pixels: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            n_ctx: 0,
            beyond_trained_ctx: false,
            kv_type: KvType::default(),
            max_image_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// How to generate an answer.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Sampling (temperature, top-k/p, penalties, seed).
    pub sampler: SamplerConfig,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Stop when one of these appears (it is not emitted).
    pub stop: Vec<String>,
}

impl Default for GenerateOptions {
    /// Greedy, up to 256 tokens, no stop strings.
    fn default() -> Self {
        GenerateOptions {
            sampler: SamplerConfig::greedy(),
            max_tokens: 256,
            stop: Vec::new(),
        }
    }
}

/// An LLM, its tokenizer and optionally a vision tower, loaded on a backend and checked to
/// work together.
pub struct Pipeline<B: Backend> {
    backend: B,
    llm: Llama<B>,
    tokenizer: Tokenizer,
    vision: Option<Clip<B>>,
    template: Template,
    n_ctx: usize,
    kv_type: KvType,
    max_image_pixels: u64,
    llm_path: PathBuf,
    load_time: Duration,
    vision_load_time: Duration,
}

impl<B: Backend> Pipeline<B> {
    /// Loads the LLM at `llm` and, when given, the vision tower and projector ("mmproj") at
    /// `mmproj`, on `backend`.
    pub fn load(
        backend: B,
        llm: &Path,
        mmproj: Option<&Path>,
        options: &LoadOptions,
    ) -> Result<Self, Error> {
        let pipeline = Self::load_llm(backend, llm, options)?;
        match mmproj {
            Some(path) => pipeline.with_vision(path),
            None => Ok(pipeline),
        }
    }

    /// Loads the LLM only; [`Pipeline::with_vision`] adds the tower (the two steps let a front
    /// end report each as it starts).
    pub fn load_llm(backend: B, path: &Path, options: &LoadOptions) -> Result<Self, Error> {
        let t0 = Instant::now();
        let file = Arc::new(GgufFile::open(path)?);
        if let Ok("clip") = file.get_str(KEY_ARCHITECTURE) {
            return Err(incompatible(
                path,
                "is a vision-tower file (an mmproj, architecture \"clip\"): pass it as --mmproj, and the LLM as -m",
            ));
        }
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let llm = Llama::load(&backend, &file)?;
        if tokenizer.vocab_size() > llm.config.n_vocab {
            return Err(incompatible(
                path,
                format!(
                    "the tokenizer has {} tokens but the model only {} embeddings",
                    tokenizer.vocab_size(),
                    llm.config.n_vocab
                ),
            ));
        }
        let trained = llm.config.n_ctx_train;
        let n_ctx = match options.n_ctx {
            0 => trained.clamp(1, DEFAULT_CTX_CAP),
            n if n > trained && !options.beyond_trained_ctx => {
                return Err(incompatible(
                    path,
                    format!("a context of {n} is above the {trained} positions the model was trained for (allow it with --ctx-beyond-training)"),
                ))
            }
            n => n,
        };
        check_kv_memory(
            llm.cache_bytes(n_ctx, options.kv_type),
            n_ctx,
            options.kv_type,
        )?;
        let chat_template =
            file.optional(keys::CHAT_TEMPLATE, |f, k| f.get_str(k).map(str::to_owned))?;
        Ok(Pipeline {
            backend,
            llm,
            tokenizer,
            vision: None,
            template: Template::from_chat_template(chat_template.as_deref()),
            n_ctx,
            kv_type: options.kv_type,
            max_image_pixels: options.max_image_pixels,
            llm_path: path.to_owned(),
            load_time: t0.elapsed(),
            vision_load_time: Duration::ZERO,
        })
    }

    /// Adds the vision tower and projector at `path`, checking that its projector feeds this
    /// LLM.
    pub fn with_vision(mut self, path: &Path) -> Result<Self, Error> {
        let t0 = Instant::now();
        let file = Arc::new(GgufFile::open(path)?);
        if let Ok(arch @ "llama") = file.get_str(KEY_ARCHITECTURE) {
            return Err(incompatible(
                path,
                format!("is an LLM file (architecture {arch:?}), not a vision tower: pass it as -m, and the mmproj as --mmproj"),
            ));
        }
        let clip = Clip::load(&self.backend, &file)?;
        let (out, hidden) = (clip.projector.output_size(), self.llm.config.hidden_size);
        if out != hidden {
            return Err(incompatible(
                path,
                format!(
                    "the projector makes embeddings of {out} but the LLM {} takes {hidden}: not a pair",
                    self.llm_path.display()
                ),
            ));
        }
        self.vision = Some(clip);
        self.vision_load_time = t0.elapsed();
        Ok(self)
    }

    /// The backend the models run on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The LLM.
    pub fn llm(&self) -> &Llama<B> {
        &self.llm
    }

    /// The LLM file's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The vision tower and projector, when loaded.
    pub fn vision(&self) -> Option<&Clip<B>> {
        self.vision.as_ref()
    }

    /// The chat template of the LLM file (`tokenizer.chat_template`), LLaVA-1.5's when it has
    /// none; sessions start with it.
    pub fn template(&self) -> Template {
        self.template
    }

    /// Positions a session holds.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// How sessions' KV caches store keys and values.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Time taken to load the LLM, and the vision tower.
    pub fn load_times(&self) -> (Duration, Duration) {
        (self.load_time, self.vision_load_time)
    }

    /// LLM positions `image` takes in a prompt (without encoding it).
    pub fn image_positions(&self, image: &RgbImage) -> Result<usize, Error> {
        Ok(image_tokens(self.require_vision()?, image))
    }

    /// Refuses an image whose preprocessing for this tower would make more than
    /// [`LoadOptions::max_image_pixels`] pixels: the limit bounds the work, not only the file.
    pub fn check_image(&self, image: &RgbImage) -> Result<(), Error> {
        let clip = self.require_vision()?;
        let pixels = preprocessed_pixels(clip, image);
        if pixels > self.max_image_pixels {
            return Err(Error::ImageWork {
                width: image.width,
                height: image.height,
                pixels,
                padded: clip.config.grid_pinpoints.is_empty(),
                max: self.max_image_pixels,
            });
        }
        Ok(())
    }

    /// The embeddings of `image` for the LLM, `[positions, hidden]`, after
    /// [`Pipeline::check_image`].
    pub fn encode_image(&self, image: &RgbImage) -> Result<B::Tensor, Error> {
        self.check_image(image)?;
        Ok(encode_image(&self.backend, self.require_vision()?, image))
    }

    /// A new conversation: an empty KV cache of [`Pipeline::n_ctx`] positions.
    pub fn session(&self) -> Result<Session<'_, B>, Error> {
        self.session_of(self.n_ctx)
    }

    /// A new conversation of `n_ctx` positions instead of the pipeline's (a benchmark's exact
    /// prompt, say), checked against the memory available.
    pub fn session_of(&self, n_ctx: usize) -> Result<Session<'_, B>, Error> {
        check_kv_memory(
            self.llm.cache_bytes(n_ctx, self.kv_type),
            n_ctx,
            self.kv_type,
        )?;
        Ok(Session {
            pipeline: self,
            n_ctx,
            cache: self.llm.new_cache(&self.backend, n_ctx, self.kv_type)?,
            tokens: Vec::new(),
            logits: None,
            pending: None,
            template: self.template,
            system: None,
            turns: 0,
            last_stop: None,
            on_stage: None,
        })
    }

    fn require_vision(&self) -> Result<&Clip<B>, Error> {
        self.vision.as_ref().ok_or_else(|| {
            Error::Usage("images need a vision tower (an mmproj file, --mmproj)".into())
        })
    }
}

fn incompatible(path: &Path, reason: impl Into<String>) -> Error {
    Error::Incompatible {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Refuses a KV cache that would not fit in the memory available now (Linux's MemAvailable;
/// elsewhere no check), before it is allocated.
fn check_kv_memory(bytes: u128, n_ctx: usize, kv_type: KvType) -> Result<(), Error> {
    let Some(available) = available_memory() else {
        return Ok(());
    };
    if bytes > u128::from(available) {
        return Err(Error::Usage(format!(
            "a context of {n_ctx} positions needs a KV cache of {:.1} GiB ({} KV), but {:.1} GiB of memory is available",
            bytes as f64 / (1u64 << 30) as f64,
            kv_type.name(),
            available as f64 / (1u64 << 30) as f64
        )));
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

/// A stage of work that can take seconds, reported as it starts
/// ([`Session::on_stage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Image `index` (of `count`) goes through the tower and projector.
    EncodeImage {
        /// Which image, from 0.
        index: usize,
        /// Images in the prompt.
        count: usize,
    },
    /// The LLM runs over the prompt's new positions.
    Prefill {
        /// Positions to run.
        positions: usize,
    },
}

/// What a turn cost: its prompt and its answer.
#[derive(Clone, Debug, PartialEq)]
pub struct TurnStats {
    /// The prompt's prefill.
    pub prefill: PrefillStats,
    /// The answer's generation.
    pub generation: GenerationStats,
}

/// A conversation with a pipeline's models: the KV cache and the tokens at its positions,
/// kept from one prompt to the next, so a follow-up runs only its own new tokens.
pub struct Session<'p, B: Backend> {
    pipeline: &'p Pipeline<B>,
    n_ctx: usize,
    cache: B::KvCache,
    /// Per position: its token, or `None` for an image's row.
    tokens: Vec<Option<u32>>,
    /// The logits of the last position, when nothing has been sampled from them yet.
    logits: Option<Vec<f32>>,
    /// A token sampled but not yet run: the end of the last answer (its end-of-text token, or
    /// the one that completed a stop string), run at the start of the next prompt.
    pending: Option<u32>,
    template: Template,
    system: Option<String>,
    /// Turns asked through [`Session::ask`].
    turns: usize,
    /// Why the last generation ended.
    last_stop: Option<StopReason>,
    on_stage: Option<Box<dyn FnMut(Stage) + 'p>>,
}

/// Which logits an append keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Last,
    All,
}

impl<'p, B: Backend> Session<'p, B> {
    /// The pipeline this session runs on.
    pub fn pipeline(&self) -> &'p Pipeline<B> {
        self.pipeline
    }

    /// Positions used so far.
    pub fn n_past(&self) -> usize {
        self.tokens.len()
    }

    /// Positions the session holds.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Positions still free.
    pub fn room(&self) -> usize {
        self.n_ctx - self.tokens.len()
    }

    /// Per position: its token id, or `None` where an image's rows are.
    pub fn tokens(&self) -> &[Option<u32>] {
        &self.tokens
    }

    /// The logits of the last position, until something is sampled from them.
    pub fn last_logits(&self) -> Option<&[f32]> {
        self.logits.as_deref()
    }

    /// The template [`Session::ask`] renders turns with.
    pub fn template(&self) -> Template {
        self.template
    }

    /// Renders turns of [`Session::ask`] with `template` instead of the model's.
    pub fn set_template(&mut self, template: Template) -> Result<(), Error> {
        if self.system.is_some() && !template.has_system() {
            return Err(no_system(template));
        }
        self.template = template;
        Ok(())
    }

    /// Uses `system` as the system prompt of the first turn, for templates that have one.
    pub fn set_system(&mut self, system: &str) -> Result<(), Error> {
        if !self.template.has_system() {
            return Err(no_system(self.template));
        }
        self.system = Some(system.to_owned());
        Ok(())
    }

    /// Calls `f` as each stage that may take seconds starts (image encodes, prefill).
    pub fn on_stage(&mut self, f: impl FnMut(Stage) + 'p) {
        self.on_stage = Some(Box::new(f));
    }

    /// Forgets the conversation: the next prompt starts at position 0 (with BOS).
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.logits = None;
        self.pending = None;
        self.turns = 0;
        self.last_stop = None;
    }

    /// One user turn: `question` (with an `<image>` marker per image, or the markers are put
    /// first) in the session's template — the full first turn with its system prompt, or a
    /// follow-up after the last answer — prefilled, then answered. The answer's text streams
    /// through `emit` (its leading space dropped: it starts a message); `emit` returning
    /// `Break` stops generation.
    pub fn ask(
        &mut self,
        question: &str,
        images: &[RgbImage],
        options: &GenerateOptions,
        mut emit: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<TurnStats, Error> {
        let t = self.template;
        let user = with_image_markers(question, images.len());
        let text = if self.turns == 0 || self.tokens.is_empty() {
            t.render_with_system(&user, self.system.as_deref())
        } else if self.last_stop == Some(StopReason::EndOfText) {
            // The answer's end-of-text token is pending: it runs first.
            t.render_followup(&user)
        } else {
            // The last answer ended without its end-of-text token (max tokens, a stop string,
            // or it was cancelled): close it as the conversation format does.
            format!("{}{}", t.end_of_turn(), t.render_followup(&user))
        };
        let prefill = self.append(&text, images)?;
        self.turns += 1;
        let mut options = options.clone();
        options
            .stop
            .extend(t.stop_strings().iter().map(|s| s.to_string()));
        let mut started = t == Template::Raw;
        let generation = self.generate(&options, |piece| {
            if started {
                return emit(piece);
            }
            let piece = piece.trim_start_matches(' ');
            if piece.is_empty() {
                return ControlFlow::Continue(());
            }
            started = true;
            emit(piece)
        })?;
        Ok(TurnStats {
            prefill,
            generation,
        })
    }

    /// Appends `text` (with an `<image>` marker per image; without images `<image>` is plain
    /// text) and its images at the end of the conversation and runs them, keeping the last
    /// position's logits for [`Session::generate`]. BOS starts the session's first prompt
    /// (when the tokenizer adds one). Everything is checked before any image is encoded: the
    /// markers, the images' sizes, and that the whole prompt fits in the room left.
    pub fn append(&mut self, text: &str, images: &[RgbImage]) -> Result<PrefillStats, Error> {
        Ok(self.append_inner(text, images, Keep::Last)?.0)
    }

    /// Appends `ids` as they are (no BOS added) and runs them, as [`Session::append`].
    pub fn append_tokens(&mut self, ids: &[u32]) -> Result<PrefillStats, Error> {
        Ok(self
            .run_pieces(&[Piece::Text(ids.to_vec())], &[], Keep::Last)?
            .0)
    }

    /// [`Session::append`], returning the logits of every new position, `[positions, n_vocab]`
    /// row-major (image positions included), for scoring and parity checks.
    pub fn evaluate(
        &mut self,
        text: &str,
        images: &[RgbImage],
    ) -> Result<(PrefillStats, Vec<f32>), Error> {
        self.append_inner(text, images, Keep::All)
    }

    /// [`Session::append_tokens`], returning the logits of every new position.
    pub fn evaluate_tokens(&mut self, ids: &[u32]) -> Result<(PrefillStats, Vec<f32>), Error> {
        self.run_pieces(&[Piece::Text(ids.to_vec())], &[], Keep::All)
    }

    fn append_inner(
        &mut self,
        text: &str,
        images: &[RgbImage],
        keep: Keep,
    ) -> Result<(PrefillStats, Vec<f32>), Error> {
        let p = self.pipeline;
        let bos = self.tokens.is_empty() && self.pending.is_none();
        let pieces = tokenize_pieces(&p.tokenizer, text, images.len(), bos)?;
        self.run_pieces(&pieces, images, keep)
    }

    fn run_pieces(
        &mut self,
        pieces: &[Piece],
        images: &[RgbImage],
        keep: Keep,
    ) -> Result<(PrefillStats, Vec<f32>), Error> {
        let p = self.pipeline;
        let mut pieces = pieces.to_vec();
        if let Some(token) = self.pending {
            match pieces.first_mut() {
                Some(Piece::Text(ids)) => ids.insert(0, token),
                _ => pieces.insert(0, Piece::Text(vec![token])),
            }
        }
        let n_vocab = p.llm.config.n_vocab;
        for piece in &pieces {
            if let Piece::Text(ids) = piece {
                if let Some(&id) = ids.iter().find(|&&id| id as usize >= n_vocab) {
                    return Err(Error::Usage(format!(
                        "token id {id} is outside the model's {n_vocab} embeddings"
                    )));
                }
            }
        }
        let tokens_of_image: Vec<usize> = images
            .iter()
            .map(|img| {
                p.check_image(img)?;
                p.image_positions(img)
            })
            .collect::<Result<_, Error>>()?;
        let image_positions: usize = tokens_of_image.iter().sum();
        let text_positions: usize = pieces
            .iter()
            .map(|piece| match piece {
                Piece::Text(ids) => ids.len(),
                Piece::Image(_) => 0,
            })
            .sum();
        let positions = text_positions + image_positions;
        if positions == 0 {
            return Err(PromptError::Empty.into());
        }
        if positions > self.room() {
            return Err(PromptError::TooLong {
                positions,
                image_positions,
                room: self.room(),
                n_ctx: self.n_ctx,
            }
            .into());
        }

        let b = &p.backend;
        let t0 = Instant::now();
        let mut encoded = Vec::with_capacity(images.len());
        for (index, image) in images.iter().enumerate() {
            self.stage(Stage::EncodeImage {
                index,
                count: images.len(),
            });
            encoded.push(p.encode_image(image)?);
        }
        let encode_time = t0.elapsed();

        self.stage(Stage::Prefill { positions });
        let t1 = Instant::now();
        let prompt = embed_pieces(b, &p.llm, &pieces, &encoded);
        drop(encoded);
        let start = self.tokens.len();
        let logits = p.llm.forward(
            b,
            prompt.embeddings,
            start,
            &mut self.cache,
            keep == Keep::Last,
        );
        // Whatever happens next, the cache now holds these positions (or, on a device
        // failure, an unknown state: the session is then cleared).
        let values = match b.download(&logits) {
            Ok(v) => v,
            Err(e) => {
                self.clear();
                return Err(e.into());
            }
        };
        let prefill_time = t1.elapsed();
        self.pending = None;
        for piece in &pieces {
            match piece {
                Piece::Text(ids) => self.tokens.extend(ids.iter().map(|&id| Some(id))),
                Piece::Image(i) => self
                    .tokens
                    .extend(std::iter::repeat_n(None, tokens_of_image[*i])),
            }
        }
        self.logits = Some(values[values.len() - n_vocab..].to_vec());
        let stats = PrefillStats {
            positions,
            images: images.len(),
            image_positions,
            encode_time,
            prefill_time,
        };
        Ok((stats, values))
    }

    /// Generates from the last position's logits (after [`Session::append`]) up to
    /// `options.max_tokens` tokens, streaming text through `emit` as it becomes final;
    /// `emit` returning `Break` stops generation (nothing more is computed or emitted). Each
    /// generated token joins the conversation; the last one sampled (an end-of-text token,
    /// say) runs at the start of the next prompt.
    pub fn generate(
        &mut self,
        options: &GenerateOptions,
        mut emit: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationStats, Error> {
        let p = self.pipeline;
        let Some(mut logits) = self.logits.take() else {
            return Err(Error::Usage(
                "nothing to answer: append a prompt before generating".into(),
            ));
        };
        let mut sampler = Sampler::new(options.sampler.clone());
        let window = options.sampler.penalty_last_n.min(self.tokens.len());
        for &t in self.tokens[self.tokens.len() - window..].iter().flatten() {
            sampler.accept(t);
        }
        let cancelled = std::cell::Cell::new(false);
        let mut emit = |text: &str| {
            if !cancelled.get() && emit(text).is_break() {
                cancelled.set(true);
            }
        };
        let t0 = Instant::now();
        // Decoding continues a sequence: a piece keeps its leading space (" brown" after
        // "A small"); only a sequence's very first token drops the SentencePiece space.
        let mut decoder = p.tokenizer.stream_decoder().strip_leading_space(false);
        let mut text = StopFilter::new(&options.stop);
        let mut generated = 0;
        let stop_reason = loop {
            if generated == options.max_tokens {
                self.logits = Some(logits);
                break StopReason::MaxTokens;
            }
            let token = sampler.sample(&logits);
            sampler.accept(token);
            generated += 1;
            if p.tokenizer.is_eog(token) {
                self.pending = Some(token);
                break StopReason::EndOfText;
            }
            // An id the model produced is in its vocabulary; decode errors cannot happen here.
            let piece = decoder.push(token).unwrap_or("");
            let stopped = text.push(piece, &mut emit);
            if stopped || cancelled.get() {
                self.pending = Some(token);
                break if stopped {
                    StopReason::StopString
                } else {
                    StopReason::Cancelled
                };
            }
            if self.room() == 0 {
                self.pending = Some(token);
                break StopReason::ContextFull;
            }
            let x = p.llm.embed(&p.backend, &[token]);
            let start = self.tokens.len();
            let out = p.llm.forward(&p.backend, x, start, &mut self.cache, true);
            logits = match p.backend.download(&out) {
                Ok(v) => v,
                Err(e) => {
                    self.clear();
                    return Err(e.into());
                }
            };
            self.tokens.push(Some(token));
        };
        if !matches!(stop_reason, StopReason::StopString | StopReason::Cancelled) {
            let rest = decoder.finish().to_owned();
            if !text.push(&rest, &mut emit) {
                text.flush(&mut emit);
            }
        }
        self.last_stop = Some(stop_reason);
        Ok(GenerationStats {
            generated_tokens: generated,
            generation_time: t0.elapsed(),
            stop_reason,
        })
    }

    fn stage(&mut self, stage: Stage) {
        if let Some(f) = &mut self.on_stage {
            f(stage);
        }
    }
}

fn no_system(template: Template) -> Error {
    Error::Usage(format!(
        "the {template} template has no system prompt (llava_v1, vicuna_v1 and chatml have one)"
    ))
}
