//! `llamacpp-bench`: llama.cpp (through llama-cpp-2) measured as `llava bench` measures
//! llava-edge — same flags, same tests, same JSON and table — so benches/compare.sh can divide
//! one by the other.
//!
//! - `ppP`: P drawn token ids decoded from an empty KV cache in batches of `n_batch` (2048,
//!   micro-batches of 512: llama.cpp's and llama-bench's defaults), logits of the last only.
//! - `tgN`: N single-token decodes at positions `0..N`, the first BOS (llama-bench's tgN).
//! - image encode: mtmd tokenize (preprocessing, slicing) + `encode_chunk` of the image chunk.
//!
//! Context settings are llama.cpp's defaults (f16 KV cache unless `--kv-type f32`, flash
//! attention "auto"), as its users get them.

use std::ffi::{CStr, CString};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::mtmd::{
    mtmd_default_marker, MtmdBitmap, MtmdContext, MtmdContextParams, MtmdInputChunkType,
    MtmdInputText,
};
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token_type::LlamaTokenAttr;
use llama_cpp_2::{send_logs_to_tracing, LogOptions};
use serde_json::{json, Value};

mod mmproj;

use llava_bench_report::{bench_tokens, file_entry, ms, peak_rss_bytes, spread, table, token_test};

/// The flags of `llava bench`.
#[derive(Parser)]
#[command(
    name = "llamacpp-bench",
    about = "llama.cpp measured as `llava bench` measures llava-edge"
)]
struct Args {
    /// The LLM GGUF file.
    #[arg(short, long)]
    model: PathBuf,
    /// The vision tower and projector GGUF ("mmproj"): adds the image-encode test.
    #[arg(long)]
    mmproj: Option<PathBuf>,
    /// The image to encode (default: a synthetic one, by `llava bench`'s rule).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Threads (default: the available parallelism; benches/compare.sh passes llava's count).
    #[arg(short, long, default_value_t = 0)]
    threads: usize,
    /// Prompt tokens of the prefill test (0: skip it).
    #[arg(short = 'p', long, default_value_t = 512)]
    n_prompt: usize,
    /// Decode steps of the generation test (0: skip it).
    #[arg(short = 'n', long, default_value_t = 128)]
    n_gen: usize,
    /// Positions in the KV cache before each prefill and generation run (as llama-bench's
    /// -d): filled untimed, then the run goes on at positions d..
    #[arg(short = 'd', long, default_value_t = 0)]
    depth: usize,
    /// Measured repetitions of each test, after one warm-up.
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
    /// How the KV cache stores keys and values: f16 (llama.cpp's default) or f32.
    #[arg(long, default_value = "f16", value_parser = ["f16", "f32"])]
    kv_type: String,
    /// Also time an image question from start to first token (with --mmproj), as
    /// `llava bench --ttft`: mtmd tokenize + encode + prompt eval, greedy first token.
    #[arg(long)]
    ttft: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// `llava bench`'s `--ttft` prompt (src/bench.rs `TTFT_PROMPT`), with mtmd's marker for the
/// image; kept in step by hand.
const TTFT_PROMPT: &str = "USER: <image>\nWhat is in this picture? Describe the main objects, \
their colors and where they are in one short sentence. ASSISTANT:";

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llamacpp-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    if args.repetitions == 0 {
        bail!("-r must be at least 1");
    }
    if args.image.is_some() && args.mmproj.is_none() {
        bail!("--image needs --mmproj (the vision tower and projector file)");
    }
    if args.ttft && args.mmproj.is_none() {
        bail!("--ttft needs --mmproj (the vision tower and projector file)");
    }
    if args.n_prompt == 0 && args.n_gen == 0 && args.mmproj.is_none() {
        bail!("nothing to measure: -p and -n are 0 and there is no --mmproj");
    }
    // llama.cpp says only "failed to load"; name the file when it is not there at all.
    for path in [Some(&args.model), args.mmproj.as_ref(), args.image.as_ref()]
        .into_iter()
        .flatten()
    {
        std::fs::metadata(path).with_context(|| path.display().to_string())?;
    }
    send_logs_to_tracing(LogOptions::default().with_logs_enabled(false));
    let backend = LlamaBackend::init()?;
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        t => t,
    };
    let n_threads = i32::try_from(threads).context("-t")?;

    let t0 = Instant::now();
    let model = LlamaModel::load_from_file(&backend, &args.model, &LlamaModelParams::default())
        .map_err(|e| anyhow!("{}: llama.cpp cannot load it: {e}", args.model.display()))?;
    let load_time = t0.elapsed();
    let kernels = system_info();
    eprintln!(
        "llamacpp-bench: {} loaded in {:.0} ms, {threads} threads, {kernels}",
        args.model.display(),
        ms(load_time)
    );

    // A bad mmproj or image fails before the measurements, as in `llava bench`.
    let mut image = match &args.mmproj {
        Some(path) => Some(load_image_encoder(args, &model, path, n_threads)?),
        None => None,
    };

    let kv_type = match args.kv_type.as_str() {
        "f32" => KvCacheType::F32,
        _ => KvCacheType::F16,
    };
    let n_ctx = u32::try_from(args.depth + args.n_prompt + args.n_gen).context("-d + -p + -n")?;
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx.max(1)))
        .with_n_threads(n_threads)
        .with_n_threads_batch(n_threads)
        .with_type_k(kv_type)
        .with_type_v(kv_type);
    let mut ctx = model
        .new_context(&backend, ctx_params)
        .context("llama.cpp cannot make a context")?;

    let depth_ids = drawn_tokens(&model, args.depth);
    let at_depth = |name: String| match args.depth {
        0 => name,
        d => format!("{name} @ d{d}"),
    };
    let pp = match args.n_prompt {
        0 => None,
        p => {
            let ids = drawn_tokens(&model, p);
            let name = at_depth(format!("pp{p}"));
            fill(&mut ctx, &depth_ids)?;
            let samples = repeat(&name, args.repetitions, || {
                truncate(&mut ctx, args.depth)?;
                prefill(&mut ctx, &ids, args.depth)
            })?;
            Some(token_test(p, &samples))
        }
    };
    let tg = match args.n_gen {
        0 => None,
        n => {
            let ids = drawn_tokens(&model, n);
            let name = at_depth(format!("tg{n}"));
            fill(&mut ctx, &depth_ids)?;
            let samples = repeat(&name, args.repetitions, || {
                truncate(&mut ctx, args.depth)?;
                decode_steps(&mut ctx, &ids, args.depth)
            })?;
            Some(token_test(n, &samples))
        }
    };
    drop(ctx);
    let ttft = match &mut image {
        Some(image) if args.ttft => Some(ttft_test(
            &backend,
            &model,
            image,
            n_threads,
            kv_type,
            args.repetitions,
        )?),
        _ => None,
    };
    let encode = match image {
        Some(image) => Some(encode_test(image, args.repetitions)?),
        None => None,
    };

    let report = json!({
        "runtime": "llama.cpp",
        "model": file_entry(&args.model)?,
        "mmproj": args.mmproj.as_deref().map(file_entry).transpose()?,
        "threads": threads,
        "kernels": kernels,
        "kv_type": args.kv_type,
        "load_ms": ms(load_time),
        "repetitions": args.repetitions,
        "depth": args.depth,
        "pp": pp,
        "tg": tg,
        "encode": encode,
        "ttft": ttft,
        "peak_rss_bytes": peak_rss_bytes(),
    });
    let text = if args.json {
        format!("{report:#}\n")
    } else {
        table(&report)
    };
    print!("{text}");
    Ok(())
}

/// Runs `f` once unmeasured, then `repetitions` times, with a progress line per run.
fn repeat(
    name: &str,
    repetitions: usize,
    mut f: impl FnMut() -> Result<Duration>,
) -> Result<Vec<Duration>> {
    eprintln!("{name}: warm-up");
    f()?;
    (1..=repetitions)
        .map(|i| {
            let d = f()?;
            eprintln!("{name}: run {i}/{repetitions}: {:.1} ms", ms(d));
            Ok(d)
        })
        .collect()
}

/// The KV cache cleared, then `ids` prefilled at positions `0..` (llama-bench's depth; once
/// per test, not timed).
fn fill(ctx: &mut LlamaContext, ids: &[LlamaToken]) -> Result<()> {
    ctx.clear_kv_cache();
    prefill(ctx, ids, 0)?;
    Ok(())
}

/// The KV cache's positions from `len` on dropped (before each run, not timed).
fn truncate(ctx: &mut LlamaContext, len: usize) -> Result<()> {
    let removed = ctx.clear_kv_cache_seq(Some(0), Some(u32::try_from(len)?), None)?;
    anyhow::ensure!(
        removed,
        "llama.cpp cannot drop positions {len}.. of its KV cache"
    );
    Ok(())
}

/// llama-bench's `test_prompt`: the prompt at positions `start..` in batches of `n_batch`,
/// logits for the last token only.
fn prefill(ctx: &mut LlamaContext, ids: &[LlamaToken], start: usize) -> Result<Duration> {
    let n_batch = ctx.n_batch() as usize;
    let mut batch = LlamaBatch::new(n_batch.min(ids.len()).max(1), 1);
    let t0 = Instant::now();
    for (c, chunk) in ids.chunks(n_batch).enumerate() {
        batch.clear();
        for (i, &id) in chunk.iter().enumerate() {
            let n = c * n_batch + i;
            batch.add(id, (start + n) as i32, &[0], n + 1 == ids.len())?;
        }
        ctx.decode(&mut batch)?;
    }
    ctx.synchronize();
    Ok(t0.elapsed())
}

/// llama-bench's `test_gen`: one token per decode at positions `start..`.
fn decode_steps(ctx: &mut LlamaContext, ids: &[LlamaToken], start: usize) -> Result<Duration> {
    let mut batch = LlamaBatch::new(1, 1);
    let t0 = Instant::now();
    for (i, &id) in ids.iter().enumerate() {
        batch.clear();
        batch.add(id, (start + i) as i32, &[0], true)?;
        ctx.decode(&mut batch)?;
        ctx.synchronize();
    }
    Ok(t0.elapsed())
}

/// The ids `llava bench` draws: BOS first when the model adds one, then normal and byte tokens.
fn drawn_tokens(model: &LlamaModel, count: usize) -> Vec<LlamaToken> {
    let vocab = model.vocab();
    let candidates: Vec<i32> = (0..model.n_vocab())
        .filter(|&id| {
            let attr = vocab.attr(LlamaToken(id));
            attr.contains(LlamaTokenAttr::Normal) || attr.contains(LlamaTokenAttr::Byte)
        })
        .collect();
    let bos = vocab.should_add_bos().then(|| vocab.bos().0);
    bench_tokens(&candidates, bos, count)
        .into_iter()
        .map(LlamaToken)
        .collect()
}

/// The mmproj loaded through mtmd, and the image to encode, decoded.
struct ImageEncoder {
    mtmd: MtmdContext,
    bitmap: MtmdBitmap,
    label: String,
    load_time: Duration,
}

fn load_image_encoder(
    args: &Args,
    model: &LlamaModel,
    path: &Path,
    n_threads: i32,
) -> Result<ImageEncoder> {
    let params = MtmdContextParams {
        use_gpu: false,
        print_timings: false,
        n_threads,
        media_marker: CString::new(mtmd_default_marker())?,
        image_min_tokens: -1,
        image_max_tokens: -1,
    };
    let path_str = path
        .to_str()
        .ok_or_else(|| anyhow!("{}: not UTF-8", path.display()))?;
    let t0 = Instant::now();
    let mtmd = MtmdContext::init_from_file(path_str, model, &params)
        .map_err(|e| anyhow!("{}: mtmd cannot load it: {e}", path.display()))?;
    let load_time = t0.elapsed();

    // The image is decoded before timing, as `llava bench` does.
    let (bitmap, label) = match &args.image {
        Some(image) => {
            let image_str = image
                .to_str()
                .ok_or_else(|| anyhow!("{}: not UTF-8", image.display()))?;
            let bitmap = MtmdBitmap::from_file(&mtmd, image_str, false)
                .map_err(|e| anyhow!("{}: mtmd cannot read it: {e}", image.display()))?;
            (bitmap, image.display().to_string())
        }
        None => {
            let ((width, height), what) = mmproj::synthetic_image_size(path)?;
            let bitmap = MtmdBitmap::from_image_data(width, height, &pattern(width, height))?;
            (bitmap, format!("synthetic {width}x{height} ({what})"))
        }
    };
    Ok(ImageEncoder {
        mtmd,
        bitmap,
        label,
        load_time,
    })
}

/// Times mtmd tokenize (preprocessing, slicing) + encode of the image chunk(s).
fn encode_test(image: ImageEncoder, repetitions: usize) -> Result<Value> {
    let ImageEncoder {
        mut mtmd,
        bitmap,
        label,
        load_time,
    } = image;
    let (width, height) = (bitmap.nx(), bitmap.ny());
    let mut image_tokens = 0;
    let name = format!("image {width}x{height}");
    let samples = repeat(&name, repetitions, || {
        let t0 = Instant::now();
        let text = MtmdInputText {
            text: mtmd_default_marker().to_owned(),
            add_special: false,
            parse_special: true,
        };
        let chunks = mtmd.tokenize(text, &[&bitmap])?;
        image_tokens = 0;
        for chunk in (0..chunks.len()).filter_map(|i| chunks.get(i)) {
            if chunk.chunk_type() == MtmdInputChunkType::Image {
                mtmd.encode_chunk(&chunk)?;
                image_tokens += chunk.n_tokens();
            }
        }
        Ok(t0.elapsed())
    })?;
    let times: Vec<f64> = samples.iter().map(|&d| ms(d)).collect();
    Ok(json!({
        "image": label,
        "width": width,
        "height": height,
        // mtmd does not say how it sliced the image.
        "views": null,
        "image_tokens": image_tokens,
        "ms": spread(&times),
        "samples_ms": times,
        "mmproj_load_ms": ms(load_time),
    }))
}

/// Time to first token of [`TTFT_PROMPT`] about the image, the model and tower loaded: mtmd
/// tokenize (preprocessing), then `mtmd_helper_eval_chunks` (image encode and prompt eval, last
/// logits only), then the greedy pick, in a context sized to the prompt.
fn ttft_test(
    backend: &LlamaBackend,
    model: &LlamaModel,
    image: &mut ImageEncoder,
    n_threads: i32,
    kv_type: KvCacheType,
    repetitions: usize,
) -> Result<Value> {
    let text = || MtmdInputText {
        text: TTFT_PROMPT.replace("<image>", mtmd_default_marker()),
        add_special: true,
        parse_special: true,
    };
    let chunks = image.mtmd.tokenize(text(), &[&image.bitmap])?;
    let positions = chunks.total_positions();
    let text_tokens: usize = (0..chunks.len())
        .filter_map(|i| chunks.get(i))
        .filter(|c| c.chunk_type() == MtmdInputChunkType::Text)
        .map(|c| c.n_tokens())
        .sum();
    let n_ctx = u32::try_from(positions).context("prompt positions")? + 1;
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_ctx)
        .with_n_threads(n_threads)
        .with_n_threads_batch(n_threads)
        .with_type_k(kv_type)
        .with_type_v(kv_type);
    let mut ctx = model
        .new_context(backend, ctx_params)
        .context("llama.cpp cannot make a context")?;
    let mut first = 0;
    let samples = repeat("image question, first token", repetitions, || {
        ctx.clear_kv_cache();
        let t0 = Instant::now();
        let chunks = image.mtmd.tokenize(text(), &[&image.bitmap])?;
        let n_batch = ctx.n_batch() as i32;
        chunks.eval_chunks(&mut image.mtmd, &mut ctx, 0, 0, n_batch, true)?;
        first = ctx
            .get_logits_ith(-1)
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map_or(0, |(i, _)| i);
        Ok(t0.elapsed())
    })?;
    let times: Vec<f64> = samples.iter().map(|&d| ms(d)).collect();
    Ok(json!({
        "positions": positions,
        "text_tokens": text_tokens,
        "first_token": first,
        "ms": spread(&times),
        "samples_ms": times,
    }))
}

/// `llava bench`'s synthetic pixels (the cost does not depend on them).
fn pattern(width: u32, height: u32) -> Vec<u8> {
    (0..width * height)
        .flat_map(|i| {
            let (x, y) = (i % width, i / width);
            [
                (x * 255 / width) as u8,
                (y * 255 / height) as u8,
                ((x ^ y) & 0xff) as u8,
            ]
        })
        .collect()
}

/// The CPU features ggml was built with and uses, from `llama_print_system_info` ("CPU : SSE3 =
/// 1 | AVX2 = 1 | ... |"), as "ggml AVX2 FMA ...".
fn system_info() -> String {
    // SAFETY: llama.cpp returns a pointer to its own static, NUL-terminated buffer.
    let info = unsafe { CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()) };
    let on: Vec<&str> = info
        .to_str()
        .unwrap_or("")
        .split('|')
        .filter_map(|f| {
            let (name, value) = f.split_once('=')?;
            let name = name.rsplit(':').next()?.trim();
            (value.trim() == "1").then_some(name)
        })
        .collect();
    format!("ggml {}", on.join(" "))
}
