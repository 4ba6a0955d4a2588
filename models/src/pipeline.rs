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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llava_runtime::backend::{Backend, BackendError, KvType};
use llava_runtime::gguf::{keys, GgufError, GgufFile, KEY_ARCHITECTURE};
use llava_runtime::sample::SamplerConfig;
use llava_runtime::tokenizer::{Tokenizer, TokenizerError};

use crate::clip::Clip;
use crate::error::ModelError;
use crate::image::{ImageError, RgbImage, DEFAULT_MAX_PIXELS};
use crate::image_cache::{CacheStats, CachedEmbedding, EmbeddingCache};
use crate::llama::Llama;
use crate::llava::{encode_image, image_tokens, PromptError};
use crate::picture::{largest_picture, Picture};
use crate::session::Session;
use crate::template::Template;

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
    #[error("{width}x{height} becomes {} in this model's preprocessing ({picture}), above the limit of {}", pixel_count(picture.pixels()), pixel_count(*max))]
    ImageWork {
        /// The image's size.
        width: u32,
        /// The image's size.
        height: u32,
        /// The largest picture its preprocessing makes: the one counted.
        picture: Picture,
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
    /// Bytes of image embeddings kept for images seen again (0: none). A LLaVA-1.5 image is
    /// 9.4 MB of embeddings on a 4096-wide LLM, a LLaVA-1.6 one up to 48 MB.
    pub image_cache_bytes: usize,
}

/// [`LoadOptions::image_cache_bytes`] by default: 256 MiB.
pub const DEFAULT_IMAGE_CACHE_BYTES: usize = 256 << 20;

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            n_ctx: 0,
            beyond_trained_ctx: false,
            kv_type: KvType::default(),
            max_image_pixels: DEFAULT_MAX_PIXELS,
            image_cache_bytes: DEFAULT_IMAGE_CACHE_BYTES,
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
    /// Go on past end-of-generation tokens (they are not printed) until `max_tokens`: for
    /// benchmarks and tests of long generations (llama-server's `ignore_eos`).
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    /// Greedy, up to 256 tokens, no stop strings.
    fn default() -> Self {
        GenerateOptions {
            sampler: SamplerConfig::greedy(),
            max_tokens: 256,
            stop: Vec::new(),
            ignore_eos: false,
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
    /// The backend the tower runs on when it is not the LLM's ([`Pipeline::with_vision_on`]).
    vision_backend: Option<B>,
    template: Template,
    n_ctx: usize,
    kv_type: KvType,
    max_image_pixels: u64,
    image_cache: EmbeddingCache,
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
        if llm.config.n_vocab == 0 {
            return Err(incompatible(path, "the model has no token embeddings"));
        }
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
            vision_backend: None,
            template: Template::from_chat_template(chat_template.as_deref()),
            n_ctx,
            kv_type: options.kv_type,
            max_image_pixels: options.max_image_pixels,
            image_cache: EmbeddingCache::new(options.image_cache_bytes),
            llm_path: path.to_owned(),
            load_time: t0.elapsed(),
            vision_load_time: Duration::ZERO,
        })
    }

    /// Adds the vision tower and projector at `path`, checking that its projector feeds this
    /// LLM.
    pub fn with_vision(self, path: &Path) -> Result<Self, Error> {
        self.add_vision(None, path)
    }

    /// [`Pipeline::with_vision`] with the tower on `backend` instead of the LLM's (a split:
    /// the tower on the GPU and the LLM on the CPU, or the other way round). Each image's
    /// embeddings then cross once from one to the other.
    pub fn with_vision_on(self, backend: B, path: &Path) -> Result<Self, Error> {
        self.add_vision(Some(backend), path)
    }

    fn add_vision(mut self, backend: Option<B>, path: &Path) -> Result<Self, Error> {
        let t0 = Instant::now();
        let file = Arc::new(GgufFile::open(path)?);
        if let Ok(arch @ "llama") = file.get_str(KEY_ARCHITECTURE) {
            return Err(incompatible(
                path,
                format!("is an LLM file (architecture {arch:?}), not a vision tower: pass it as -m, and the mmproj as --mmproj"),
            ));
        }
        let clip = Clip::load(backend.as_ref().unwrap_or(&self.backend), &file)?;
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
        self.vision_backend = backend;
        self.vision_load_time = t0.elapsed();
        Ok(self)
    }

    /// The backend the models run on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend the vision tower runs on: the LLM's unless [`Pipeline::with_vision_on`]
    /// gave it another.
    pub fn vision_backend(&self) -> &B {
        self.vision_backend.as_ref().unwrap_or(&self.backend)
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
        let picture = largest_picture(&clip.config, image.width, image.height);
        if picture.pixels() > self.max_image_pixels {
            return Err(Error::ImageWork {
                width: image.width,
                height: image.height,
                picture,
                max: self.max_image_pixels,
            });
        }
        Ok(())
    }

    /// The embeddings of `image` for the LLM, `[positions, hidden]`, after
    /// [`Pipeline::check_image`]: from the image cache when the same pixels were encoded
    /// before, else encoded (and kept).
    pub fn encode_image(&self, image: &RgbImage) -> Result<B::Tensor, Error> {
        self.check_image(image)?;
        if !self.image_cache.enabled() {
            return self.encode_uncached(image);
        }
        let key = self.image_cache.key(image);
        if let Some(hit) = self.image_cache.get(&key) {
            let data = Arc::unwrap_or_clone(hit.data);
            return Ok(self.backend.upload(data, hit.rows, hit.cols));
        }
        let embeddings = self.encode_uncached(image)?;
        let (rows, cols) = self.backend.shape(&embeddings);
        let data = Arc::new(self.backend.download(&embeddings)?);
        self.image_cache
            .insert(key, CachedEmbedding { rows, cols, data });
        Ok(embeddings)
    }

    /// The tower's embeddings of `image`, on the LLM's backend.
    fn encode_uncached(&self, image: &RgbImage) -> Result<B::Tensor, Error> {
        let clip = self.require_vision()?;
        match &self.vision_backend {
            None => Ok(encode_image(&self.backend, clip, image)),
            Some(vision) => {
                let features = encode_image(vision, clip, image);
                let (rows, cols) = vision.shape(&features);
                Ok(self.backend.upload(vision.download(&features)?, rows, cols))
            }
        }
    }

    /// Hits and misses of the image-embedding cache, and what it holds.
    pub fn image_cache_stats(&self) -> CacheStats {
        self.image_cache.stats()
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
        let cache = self.llm.new_cache(&self.backend, n_ctx, self.kv_type)?;
        Ok(Session::new(self, n_ctx, cache))
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
pub(crate) fn check_kv_memory(bytes: u128, n_ctx: usize, kv_type: KvType) -> Result<(), Error> {
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

/// Linux's estimate of the memory available without swapping (`MemAvailable` of
/// `/proc/meminfo`), in bytes; `None` elsewhere or where it cannot be read. Every check of an
/// allocation against the machine's memory reads it here, so they all agree.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `pixels` for a message: in megapixels from a tenth of one, else exactly (a limit of 2500
/// pixels is not "0.0 megapixels").
fn pixel_count(pixels: u64) -> String {
    if pixels >= 100_000 {
        format!("{:.1} megapixels", pixels as f64 / 1e6)
    } else {
        format!("{pixels} pixels")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_picture_it_counted() {
        use Picture::*;
        let refusal = |picture, max| {
            let (width, height) = (45, 31);
            Error::ImageWork {
                width,
                height,
                picture,
                max,
            }
            .to_string()
        };
        assert_eq!(
            refusal(View { size: 56 }, 2500),
            "45x31 becomes 3136 pixels in this model's preprocessing (resized to the tower's 56x56 view), above the limit of 2500 pixels"
        );
        let square = refusal(PaddedSquare { side: 100_000 }, 33_177_600);
        assert!(square.contains("10000.0 megapixels in this model's preprocessing (padded to a square, 100000x100000), above the limit of 33.2 megapixels"), "{square}");
    }
}
