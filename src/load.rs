//! Opening model files and images for the subcommands that run a model. The backend is picked
//! here, and only here: the rest of the CLI is written against `llava_models::Pipeline`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use llava_models::image::{load_image, RgbImage};
use llava_models::{LoadOptions, Pipeline, Stage};
use llava_runtime::backend::gpu::{AdapterChoice, GpuBackend, GpuOptions};
use llava_runtime::backend::{AnyBackend, CpuBackend};

/// The flags that say which model files to load and how, shared by the commands that run one.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// The LLM GGUF file.
    #[arg(short, long, required_unless_present = "hf")]
    pub model: Option<PathBuf>,
    /// The vision tower and projector GGUF ("mmproj") of this LLM, for images.
    #[arg(long)]
    pub mmproj: Option<PathBuf>,
    /// Take the model and its mmproj from the Hugging Face Hub, downloading them once (as
    /// `llava pull` does; llama.cpp's -hf): OWNER/NAME[:QUANT], QUANT default Q4_K_M.
    #[arg(long, value_name = "OWNER/NAME[:QUANT]", conflicts_with = "model")]
    pub hf: Option<crate::hub::Spec>,
    #[command(flatten)]
    pub hub: crate::hub::HubArgs,
    /// Worker threads (default: one per physical core; more than the logical CPUs are capped).
    #[arg(short, long, default_value_t = 0, value_parser = crate::limits::threads)]
    pub threads: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Context size in tokens (default: the model's, at most 4096; at most the model's
    /// trained context unless --ctx-beyond-training, and what memory holds).
    #[arg(short, long, visible_alias = "ctx-size", default_value_t = 0, value_parser = crate::limits::context)]
    pub ctx: usize,
    /// Allow --ctx above the context the model was trained for.
    #[arg(long)]
    pub ctx_beyond_training: bool,
    /// How the KV cache stores keys and values: f16 (half the memory, llama.cpp's default) or
    /// f32 (exact).
    #[arg(long, default_value = "f16")]
    pub kv_type: llava_runtime::backend::KvType,
    /// Refuse images with more pixels than this, in the file (checked before decoding) and in
    /// the preprocessing (LLaVA-1.5 pads to a square first).
    #[arg(long, default_value_t = llava_models::image::DEFAULT_MAX_PIXELS, value_parser = crate::limits::max_pixels)]
    pub max_image_pixels: u64,
}

impl ModelArgs {
    /// Downloads what `--hf` names (once; later runs find it in the cache) and sets `model`
    /// and, unless given, `mmproj`. Called before anything reads [`ModelArgs::model`].
    pub fn resolve_hf(&mut self) -> Result<()> {
        if let Some(spec) = &self.hf {
            let pulled = crate::hub::pull(spec, &self.hub)?;
            self.model = Some(pulled.model);
            if self.mmproj.is_none() {
                self.mmproj = pulled.mmproj;
            }
        }
        Ok(())
    }

    /// The LLM file: `-m`, or what `--hf` resolved to.
    pub fn model(&self) -> &Path {
        // clap requires -m unless --hf is given, and main resolves --hf before running.
        self.model
            .as_deref()
            .expect("ModelArgs::resolve_hf runs before the model is read")
    }

    /// The pipeline's options from these flags, with `image_cache_bytes` of image cache.
    pub fn load_options(&self, image_cache_bytes: usize) -> LoadOptions {
        LoadOptions {
            n_ctx: self.ctx,
            beyond_trained_ctx: self.ctx_beyond_training,
            kv_type: self.kv_type,
            max_image_pixels: self.max_image_pixels,
            image_cache_bytes,
        }
    }

    /// Loads the LLM and the mmproj (when given), reporting the stages.
    pub fn load(&self, image_cache_bytes: usize, stages: &Stages) -> Result<Pipeline<Chosen>> {
        load_pipeline(
            self.model(),
            self.mmproj.as_deref(),
            self.threads,
            &self.device,
            &self.load_options(image_cache_bytes),
            stages,
        )
    }
}

/// Where models run: `--device`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The CPU backend.
    #[default]
    Cpu,
    /// The first hardware GPU, or the adapter at this index of `llava devices`.
    Gpu(Option<usize>),
    /// A hardware GPU when there is one, else the CPU.
    Auto,
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Device, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu(None)),
            "auto" => Ok(Device::Auto),
            _ => s
                .strip_prefix("gpu:")
                .and_then(|i| i.parse().ok())
                .map(|i| Device::Gpu(Some(i)))
                .ok_or_else(|| {
                    format!(
                        "{s:?}: expected cpu, gpu, gpu:N (`llava devices` lists the GPUs) or auto"
                    )
                }),
        }
    }
}

/// The flags that choose the device, shared by the commands that run a model.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DeviceArgs {
    /// Where to run the models: cpu; gpu (the first hardware GPU), gpu:N (adapter N of
    /// `llava devices`, software ones included); auto (a hardware GPU when there is one, else
    /// the CPU). llama.cpp's `-ngl N` means gpu for N > 0.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Where to run the vision tower, if not where the LLM runs (same values as --device): a
    /// split, e.g. the tower on the GPU and the LLM on the CPU.
    #[arg(long)]
    pub vision_device: Option<Device>,
    /// On the GPU, ask for WebGPU's downlevel limits and no optional feature, whatever the
    /// adapter offers: the path the weakest GPUs (a Raspberry Pi 5's) take.
    #[arg(long)]
    pub gpu_downlevel: bool,
    /// On the GPU, compute in f32 only: without 8-bit activations and packed 4×8-bit integer
    /// dot products (which Q4_0, Q8_0, Q4_K and Q6_K weights take otherwise), batches without
    /// f16 tiles (which the other F16 and quantized weights take where the GPU has shader-f16).
    #[arg(long)]
    pub gpu_f32: bool,
}

/// The backend the CLI runs models on.
pub type Chosen = AnyBackend;

/// The backend `device` names, with `threads` CPU workers (0: one per physical core; more
/// than the logical CPUs are capped, with a warning: 1000 threads on 2 cores took 33 s for 2
/// tokens). `auto` without a hardware GPU is the CPU.
pub fn backend(threads: usize, device: &DeviceArgs) -> Result<Chosen> {
    backend_on(threads, device.device, device)
}

/// The backend of one `--device` value, with the GPU flags of `args`.
fn backend_on(threads: usize, device: Device, args: &DeviceArgs) -> Result<Chosen> {
    let gpu = |adapter| {
        GpuBackend::new(&GpuOptions {
            adapter,
            downlevel: args.gpu_downlevel,
            f32_only: args.gpu_f32,
            ..GpuOptions::default()
        })
    };
    let cpu = || AnyBackend::Cpu(CpuBackend::new(capped_threads(threads)));
    Ok(match device {
        Device::Cpu => cpu(),
        Device::Gpu(index) => AnyBackend::Gpu(
            gpu(index.map_or(AdapterChoice::Hardware, AdapterChoice::Index))
                .context("--device gpu")?,
        ),
        Device::Auto => gpu(AdapterChoice::Hardware).map_or_else(|_| cpu(), AnyBackend::Gpu),
    })
}

/// The pipeline's backends in a few words: [`describe`] of the LLM's, and of the tower's when
/// it runs elsewhere (`--vision-device`).
pub fn describe_pipeline(p: &Pipeline<Chosen>) -> String {
    let llm = describe(p.backend());
    if std::ptr::eq(p.vision_backend(), p.backend()) {
        llm
    } else {
        format!("{llm}; vision tower: {}", describe(p.vision_backend()))
    }
}

/// The backend in a few words, for `--verbose` and reports: "cpu, 2 threads, avx2 kernels",
/// "gpu, NVIDIA H100 (vulkan, NVIDIA 550.54)".
pub fn describe(b: &Chosen) -> String {
    match b {
        AnyBackend::Cpu(c) => format!(
            "cpu, {} threads, {} kernels",
            c.threads(),
            llava_runtime::quant::cpu_path().name()
        ),
        AnyBackend::Gpu(g) => {
            let a = g.adapter();
            format!(
                "gpu, {} ({}, {}){}{}{}{}",
                a.name,
                a.backend,
                a.driver,
                if g.downlevel() {
                    ", downlevel limits"
                } else {
                    ""
                },
                if g.subgroups() { ", subgroups" } else { "" },
                if g.integer_dot() {
                    ", integer dot products"
                } else {
                    ""
                },
                if g.f16() { ", f16 tiles" } else { "" }
            )
        }
    }
}

/// The backend's worker threads and kernel set, as `llava bench` reports them beside
/// llama.cpp's (a GPU: no CPU workers, "wgsl").
pub fn workers_and_kernels(b: &Chosen) -> (usize, &'static str) {
    match b {
        AnyBackend::Cpu(c) => (c.threads(), llava_runtime::quant::cpu_path().name()),
        AnyBackend::Gpu(_) => (0, "wgsl"),
    }
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

/// Loads the LLM and, when given, its vision tower, reporting each stage as it starts.
pub fn load_pipeline(
    model: &Path,
    mmproj: Option<&Path>,
    threads: usize,
    device: &DeviceArgs,
    options: &LoadOptions,
    stages: &Stages,
) -> Result<Pipeline<Chosen>> {
    let backend = backend(threads, device)?;
    stages.start(&format!("loading {}", model.display()));
    let pipeline = Pipeline::load_llm(backend, model, options)?;
    let pipeline = match mmproj {
        Some(path) => {
            stages.start(&format!("loading {}", path.display()));
            match device.vision_device {
                Some(v) if v != device.device => {
                    let vision = backend_on(threads, v, device).context("--vision-device")?;
                    pipeline.with_vision_on(vision, path)?
                }
                _ => pipeline.with_vision(path)?,
            }
        }
        None => pipeline,
    };
    Ok(pipeline)
}

/// Reports the stages of a run that can take seconds (loading, image encodes, prefill): a line
/// as each starts with `--verbose`, a spinner on a terminal otherwise; nothing when stderr is
/// neither.
pub struct Stages {
    verbose: bool,
    spinner: Option<ProgressBar>,
    started: std::cell::Cell<Option<Instant>>,
}

impl Stages {
    /// Nothing reported: for commands that print their own progress (`bench`) or none.
    pub fn quiet() -> Stages {
        Stages {
            verbose: false,
            spinner: None,
            started: std::cell::Cell::new(None),
        }
    }

    /// `verbose`: a line per stage; else a spinner when stderr is a terminal, until
    /// [`Stages::done`].
    pub fn new(verbose: bool) -> Stages {
        let spinner = (!verbose && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .expect("a valid template"),
            );
            bar
        });
        Stages {
            verbose,
            spinner,
            started: std::cell::Cell::new(None),
        }
    }

    /// A stage starts.
    pub fn start(&self, what: &str) {
        if self.verbose {
            diag!("llava: {what}…");
        }
        if let Some(bar) = &self.spinner {
            if self.started.get().is_none() {
                bar.enable_steady_tick(Duration::from_millis(120));
            }
            bar.set_message(what.to_owned());
        }
        self.started.set(Some(Instant::now()));
    }

    /// A pipeline stage starts.
    pub fn stage(&self, stage: Stage) {
        match stage {
            Stage::EncodeImage { index, count } => {
                self.start(&format!("encoding image {}/{count}", index + 1))
            }
            Stage::Prefill { positions } => {
                self.start(&format!("reading the prompt ({positions} positions)"))
            }
        }
    }

    /// The stages are over (the answer starts): the spinner goes.
    pub fn done(&self) {
        if let Some(bar) = &self.spinner {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Stages {
    fn drop(&mut self) {
        self.done();
    }
}

/// The largest prompt file read: several times more text than any context holds (16 MiB is
/// about 4 M tokens), so `--file /dev/zero`-like inputs stop early with a clear message.
pub const MAX_PROMPT_FILE_BYTES: u64 = 16 << 20;

/// Reads a prompt given inline or as `--file` (byte for byte; it must be UTF-8); with neither,
/// a piped stdin (its final line break dropped, as `echo` adds one).
pub fn prompt_text(inline: Option<&str>, file: Option<&Path>) -> Result<String> {
    match (inline, file) {
        (Some(t), None) => Ok(t.to_owned()),
        (None, Some(p)) => {
            let bytes = read_bounded(p, MAX_PROMPT_FILE_BYTES)?;
            String::from_utf8(bytes)
                .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text: {e}", p.display()))
        }
        (Some(_), Some(_)) => bail!("give the text or --file, not both"),
        (None, None) if !std::io::stdin().is_terminal() => {
            let bytes = read_bounded(Path::new("-"), MAX_PROMPT_FILE_BYTES)?;
            let text = String::from_utf8(bytes)
                .map_err(|e| anyhow::anyhow!("stdin: not UTF-8 text: {e}"))?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            if text.is_empty() {
                bail!("no text given (pass it as an argument, with --file, or on stdin)");
            }
            Ok(text.to_owned())
        }
        (None, None) => bail!("no text given (pass it as an argument, with --file, or on stdin)"),
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

/// Decodes `images` (checked first, so a bad file fails before any model is loaded).
pub fn load_images(paths: &[PathBuf], max_pixels: u64) -> Result<Vec<RgbImage>> {
    paths
        .iter()
        .map(|p| Ok(load_image(p, max_pixels)?))
        .collect()
}

/// Refuses images whose preprocessing for this tower would make more pixels than the
/// pipeline's limit, naming the file: `--max-image-pixels` bounds the work done, not only the
/// file.
pub fn check_images(
    pipeline: &Pipeline<Chosen>,
    images: &[RgbImage],
    paths: &[PathBuf],
) -> Result<()> {
    for (img, path) in images.iter().zip(paths) {
        pipeline
            .check_image(img)
            .with_context(|| format!("{}", path.display()))
            .map_err(|e| anyhow::anyhow!("{e:#} (--max-image-pixels)"))?;
    }
    Ok(())
}
