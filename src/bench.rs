//! `llava bench`: llama-bench's measurements on llava-edge, so the two can be set side by side.
//!
//! - `ppP`: one prefill of P token ids from an empty KV cache (llama-bench `-p`).
//! - `tgN`: N single-token decode steps at positions `0..N`, the first input BOS, no prompt
//!   before them (llama-bench `-n`: "generation without prompt"). Inputs are drawn ids, not
//!   samples, so sampling costs nothing here, as there.
//! - image encode (with `--mmproj`): preprocessing, tower, projector and, for LLaVA-1.6, the
//!   anyres assembly of one image — what llama.cpp's mtmd tokenize + encode do.
//!
//! Each test runs once unmeasured (warm-up: page faults, first-touch of the KV cache), then
//! `-r` times; the median, min and max are reported. benches/peer-llamacpp prints the same
//! table and JSON for llama.cpp; benches/compare.sh divides the two.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use llava_bench_report::{file_entry, ms, peak_rss_bytes, spread, table, token_test};
use llava_models::image::{RgbImage, DEFAULT_MAX_PIXELS};
use llava_models::llava::anyres_layout;
use llava_models::{Clip, LoadOptions, Pipeline};
use llava_runtime::backend::{Backend, KvType};
use llava_runtime::tokenizer::{TokenType, Tokenizer};
use serde_json::{json, Value};

use crate::load::{check_images, load_images, load_pipeline, Chosen, Stages};

type KvCache = <Chosen as Backend>::KvCache;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  llava bench -m model.Q4_0.gguf -p 512 -n 128 -t 2
  llava bench -m llm.gguf --mmproj mmproj.gguf --ttft --json > report.json")]
pub struct Args {
    /// The LLM GGUF file.
    #[arg(short, long)]
    model: PathBuf,
    /// The vision tower and projector GGUF ("mmproj"): adds the image-encode test.
    #[arg(long)]
    mmproj: Option<PathBuf>,
    /// The image to encode (default: a synthetic one of the tower's size; for LLaVA-1.6 the
    /// largest grid pinpoint, so the most views).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Worker threads (default: one per physical core; more than the logical CPUs are capped).
    #[arg(short, long, default_value_t = 0, value_parser = crate::limits::threads)]
    threads: usize,
    #[command(flatten)]
    device: crate::load::DeviceArgs,
    /// Prompt tokens of the prefill test (0: skip it).
    #[arg(short = 'p', long, default_value_t = 512, value_parser = crate::limits::context)]
    n_prompt: usize,
    /// Decode steps of the generation test (0: skip it).
    #[arg(short = 'n', long, default_value_t = 128, value_parser = crate::limits::context)]
    n_gen: usize,
    /// Positions already in the KV cache when the prefill and generation tests start (as
    /// llama-bench's -d): filled once, untimed, then each test runs at positions d.. (a
    /// conversation's later turns; an image alone is 576 positions in LLaVA-1.5).
    #[arg(short = 'd', long, default_value_t = 0, value_parser = crate::limits::context)]
    depth: usize,
    /// Measured repetitions of each test, after one warm-up.
    #[arg(short = 'r', long, default_value_t = 3, value_parser = crate::limits::repetitions)]
    repetitions: usize,
    /// How the KV cache stores keys and values: f16 (as llama.cpp's default) or f32.
    #[arg(long, default_value = "f16")]
    kv_type: KvType,
    /// Also time an image question from start to first token (with --mmproj): encode the
    /// image, prefill it inside a LLaVA-1.5 prompt with a 20-token question, pick the first
    /// token. benches/peer-llamacpp's --ttft asks the same through llama.cpp's mtmd.
    #[arg(long)]
    ttft: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// The `--ttft` prompt, in LLaVA-1.5's (Vicuna) format; benches/peer-llamacpp asks the same
/// with mtmd's marker in place of `<image>`.
pub const TTFT_PROMPT: &str = "USER: <image>\nWhat is in this picture? Describe the main objects, \
their colors and where they are in one short sentence. ASSISTANT:";

pub fn run(args: &Args) -> Result<()> {
    if args.image.is_some() && args.mmproj.is_none() {
        bail!("--image needs --mmproj (the vision tower and projector file)");
    }
    if args.ttft && args.mmproj.is_none() {
        bail!("--ttft needs --mmproj (the vision tower and projector file)");
    }
    if args.n_prompt == 0 && args.n_gen == 0 && args.mmproj.is_none() {
        bail!("nothing to measure: -p and -n are 0 and there is no --mmproj");
    }
    // A bad image fails before the model is loaded.
    let given_image = match &args.image {
        Some(p) => load_images(std::slice::from_ref(p), DEFAULT_MAX_PIXELS)?.pop(),
        None => None,
    };

    let n_ctx = args.depth + args.n_prompt.max(args.n_gen).max(1);
    // As llama-bench: any context the memory holds, the model's trained one or not.
    let pipeline = load_pipeline(
        &args.model,
        args.mmproj.as_deref(),
        args.threads,
        &args.device,
        &LoadOptions {
            n_ctx,
            beyond_trained_ctx: true,
            kv_type: args.kv_type,
            max_image_pixels: DEFAULT_MAX_PIXELS,
            // Every encode is timed: none may come from the cache.
            image_cache_bytes: 0,
        },
        &Stages::quiet(),
    )?;
    if let (Some(img), Some(path)) = (&given_image, &args.image) {
        check_images(
            &pipeline,
            std::slice::from_ref(img),
            std::slice::from_ref(path),
        )?;
    }
    let (load_time, vision_load_time) = pipeline.load_times();
    let backend = crate::load::describe_pipeline(&pipeline);
    let (threads, kernels) = crate::load::workers_and_kernels(pipeline.backend());
    diag!(
        "llava bench: {} loaded in {:.0} ms, {backend}",
        args.model.display(),
        ms(load_time)
    );
    let p = &pipeline;

    // The first `depth` positions of a cache, filled once: the tests write only after them.
    let depth_ids = bench_tokens(p, args.depth);
    let filled_cache = |len: usize| -> Result<KvCache> {
        let mut cache = p
            .llm()
            .new_cache(p.backend(), args.depth + len, args.kv_type)?;
        if args.depth > 0 {
            prefill(p, &mut cache, &depth_ids, 0)?;
        }
        Ok(cache)
    };
    let at_depth = |name: String| match args.depth {
        0 => name,
        d => format!("{name} @ d{d}"),
    };
    // A token test of `n` ids named `kind{n}`, each run `step` over a cache filled to the depth.
    type Step = fn(&Pipeline<Chosen>, &mut KvCache, &[u32], usize) -> Result<Duration>;
    let token_run = |kind: &str, n: usize, step: Step| -> Result<Option<Value>> {
        if n == 0 {
            return Ok(None);
        }
        let ids = bench_tokens(p, n);
        let name = at_depth(format!("{kind}{n}"));
        let mut cache = filled_cache(ids.len())?;
        let samples = repeat(&name, args.repetitions, || {
            step(p, &mut cache, &ids, args.depth)
        })?;
        Ok(Some(token_test(n, &samples)))
    };
    let pp = token_run("pp", args.n_prompt, prefill)?;
    let tg = token_run("tg", args.n_gen, decode_steps)?;
    let image = p.vision().map(|clip| match &given_image {
        Some(img) => (img.clone(), path_string(args.image.as_deref())),
        None => synthetic_image(clip),
    });
    let ttft = match &image {
        Some((image, _)) if args.ttft => Some(ttft_test(p, image, args.repetitions)?),
        _ => None,
    };
    let encode = match (p.vision(), &image) {
        (Some(clip), Some((image, label))) => {
            let b = p.backend();
            let views = anyres_layout(clip, image).map_or(1, |l| l.n_tiles() + 1);
            let mut image_tokens = 0;
            let name = format!("image {}x{}", image.width, image.height);
            let samples = repeat(&name, args.repetitions, || {
                let t0 = Instant::now();
                let embeddings = p.encode_image(image)?;
                b.download(&embeddings)?;
                let elapsed = t0.elapsed();
                image_tokens = b.shape(&embeddings).0;
                Ok(elapsed)
            })?;
            Some(json!({
                "image": label,
                "width": image.width,
                "height": image.height,
                "views": views,
                "image_tokens": image_tokens,
                "ms": spread(&samples.iter().map(|&d| ms(d)).collect::<Vec<_>>()),
                "samples_ms": samples.iter().map(|&d| ms(d)).collect::<Vec<_>>(),
                "mmproj_load_ms": ms(vision_load_time),
            }))
        }
        _ => None,
    };

    let report = json!({
        "runtime": "llava-edge",
        "model": file_entry(&args.model)?,
        "mmproj": args.mmproj.as_deref().map(file_entry).transpose()?,
        "threads": threads,
        "kernels": kernels,
        "kv_type": args.kv_type.name(),
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
    crate::write_stdout(&text)
}

/// Time to first token of [`TTFT_PROMPT`] about `image`, the LLM and tower loaded: encode,
/// tokenize and splice, prefill (last row's logits only), greedy pick of the first token.
fn ttft_test(p: &Pipeline<Chosen>, image: &RgbImage, repetitions: usize) -> Result<Value> {
    // A cache of the prompt's size, as llama.cpp's peer makes.
    let text = p.tokenizer().encode(TTFT_PROMPT, true, true).len();
    let mut session = p.session_of(text + p.image_positions(image)?)?;
    let mut stats = None;
    let mut first = 0;
    let samples = repeat("image question, first token", repetitions, || {
        session.clear();
        let t0 = Instant::now();
        stats = Some(session.append(TTFT_PROMPT, std::slice::from_ref(image))?);
        let logits = session.last_logits().unwrap_or_default();
        first = logits
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map_or(0, |(i, _)| i);
        Ok(t0.elapsed())
    })?;
    let stats = stats.unwrap_or_default();
    let times: Vec<f64> = samples.iter().map(|&d| ms(d)).collect();
    Ok(json!({
        "positions": stats.positions,
        "text_tokens": stats.positions - stats.image_positions,
        "first_token": first,
        "ms": spread(&times),
        "samples_ms": times,
    }))
}

/// Runs `f` once unmeasured, then `repetitions` times, with a progress line per run.
fn repeat(
    name: &str,
    repetitions: usize,
    mut f: impl FnMut() -> Result<Duration>,
) -> Result<Vec<Duration>> {
    diag!("{name}: warm-up");
    f()?;
    (1..=repetitions)
        .map(|i| {
            let d = f()?;
            diag!("{name}: run {i}/{repetitions}: {:.1} ms", ms(d));
            Ok(d)
        })
        .collect()
}

/// One prefill of `ids` at positions `start..`; only the last row's logits are computed, as
/// llama.cpp does for a prompt. Writing at `start` drops whatever `cache` held from there on
/// (attention reads only the positions before the ones written), so one cache serves every
/// run, as llama-bench clears and reuses its own: the warm-up pays the first touch of its
/// pages.
fn prefill(
    p: &Pipeline<Chosen>,
    cache: &mut KvCache,
    ids: &[u32],
    start: usize,
) -> Result<Duration> {
    let (b, m) = (p.backend(), p.llm());
    let t0 = Instant::now();
    let x = m.embed(b, ids);
    b.download(&m.forward(b, x, start, cache, true))?;
    Ok(t0.elapsed())
}

/// One decode step per id, at positions `start..start + ids.len()` (the cache is reused as in
/// [`prefill`]).
fn decode_steps(
    p: &Pipeline<Chosen>,
    cache: &mut KvCache,
    ids: &[u32],
    start: usize,
) -> Result<Duration> {
    let (b, m) = (p.backend(), p.llm());
    let t0 = Instant::now();
    for (i, &id) in ids.iter().enumerate() {
        let x = m.embed(b, &[id]);
        b.download(&m.forward(b, x, start + i, cache, true))?;
    }
    Ok(t0.elapsed())
}

/// `count` token ids: BOS first when the model adds one (as llama-bench), then ids drawn from
/// the normal and byte tokens of the vocabulary by the shared report's generator, which
/// benches/peer-llamacpp draws with too: both runtimes see the same ids.
fn bench_tokens(p: &Pipeline<Chosen>, count: usize) -> Vec<u32> {
    let tok: &Tokenizer = p.tokenizer();
    let n_vocab = tok.vocab_size().min(p.llm().config.n_vocab) as u32;
    let candidates: Vec<u32> = (0..n_vocab)
        .filter(|&id| {
            matches!(
                tok.token_type(id),
                Some(TokenType::Normal | TokenType::Byte)
            )
        })
        .collect();
    let bos = tok.bos().filter(|_| tok.add_bos());
    llava_bench_report::bench_tokens(&candidates, bos, count)
}

/// An image of the tower's own size (LLaVA-1.5: one view, no resizing), or for LLaVA-1.6 of
/// its largest grid pinpoint (the most tiles; 672x672 for the released models: overview + 2x2).
/// A smooth pattern, not a flat fill, though the cost does not depend on the pixels.
fn synthetic_image(clip: &Clip<Chosen>) -> (RgbImage, String) {
    let c = &clip.config;
    let side = c.image_size as u32;
    let ((width, height), what) = match largest(&c.grid_pinpoints) {
        Some(p) => (p, "largest pinpoint"),
        None => ((side, side), "tower size"),
    };
    let mut img = RgbImage::new(width, height, [0; 3]);
    for (i, px) in img.data.chunks_exact_mut(3).enumerate() {
        let (x, y) = ((i as u32 % width), (i as u32 / width));
        px.copy_from_slice(&[
            (x * 255 / width) as u8,
            (y * 255 / height) as u8,
            ((x ^ y) & 0xff) as u8,
        ]);
    }
    (img, format!("synthetic {width}x{height} ({what})"))
}

/// The pinpoint with the most pixels; the first of equals.
fn largest(pinpoints: &[(u32, u32)]) -> Option<(u32, u32)> {
    pinpoints.iter().copied().reduce(|best, p| {
        if u64::from(p.0) * u64::from(p.1) > u64::from(best.0) * u64::from(best.1) {
            p
        } else {
            best
        }
    })
}

fn path_string(p: Option<&Path>) -> String {
    p.map(|p| p.display().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_pinpoint_is_the_most_pixels_first_of_equals() {
        let llava16 = [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)];
        assert_eq!(largest(&llava16), Some((672, 672)));
        assert_eq!(largest(&[(2, 3), (3, 2)]), Some((2, 3)));
        assert_eq!(largest(&[]), None);
    }
}
