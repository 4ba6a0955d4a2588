//! `llava caption`: one answer per image for files and folders, as JSON lines.
//!
//! The model loads once; each image gets a fresh conversation. Every line is written whole
//! with one write and flushed, so a run that is killed leaves whole lines (and at most a cut
//! last one, which the next run removes); a second run skips the images the file already has
//! captions for. A bad image becomes an error line and the batch goes on; the exit status says
//! whether any failed.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use llava_models::image::{load_image, DEFAULT_MAX_PIXELS};
use llava_models::{GenerateOptions, LoadOptions};
use llava_runtime::backend::KvType;
use serde_json::{json, Value};

use crate::inspect::printable;
use crate::load::{describe_pipeline, load_pipeline, Stages};
use crate::output::{check_outputs, create_parent, Output};
use crate::run::{SamplingArgs, SHORT_ANSWER};

/// File extensions taken from folders (any file named on the command line is tried).
const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "gif", "bmp"];

/// Folders deeper than this below a given path are not walked (a guard against loops and
/// runaway trees; symbolic links to folders are not followed at all).
const MAX_DEPTH: usize = 32;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  llava caption -m llava-v1.5-7b.Q4_K_M.gguf --mmproj mmproj-llava-v1.5-7b.gguf photos/ --out captions.jsonl
  llava caption -m m.gguf --mmproj p.gguf a.jpg b.png --prompt \"What animal is this?\" --short-answer --out animals.jsonl

Each line: {\"path\": ..., \"caption\": ..., \"tokens\": N, \"ms\": T}, or {\"path\": ..., \"error\": ...}.
Run it again with the same --out to go on where it stopped: images with a caption are skipped.")]
pub struct Args {
    /// Images, and folders to walk for images (.jpg .jpeg .png .webp .gif .bmp).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The JSON-lines file to write; an existing captions file is continued, not replaced
    /// (any other existing file is refused and left as it is).
    #[arg(short, long)]
    out: PathBuf,
    /// The LLM GGUF file.
    #[arg(short, long)]
    model: PathBuf,
    /// The vision tower and projector GGUF ("mmproj").
    #[arg(long)]
    mmproj: PathBuf,
    /// The question asked about each image.
    #[arg(
        short = 'p',
        long,
        default_value = "Describe this image in one sentence."
    )]
    prompt: String,
    /// Ask for a short answer: LLaVA-1.5's "Answer the question using a single word or
    /// phrase." after the prompt.
    #[arg(long)]
    short_answer: bool,
    /// Most tokens of each caption.
    #[arg(short = 'n', long, visible_alias = "n-predict", default_value_t = 128)]
    max_tokens: usize,
    /// Worker threads (default: one per physical core).
    #[arg(short, long, default_value_t = 0, value_parser = crate::limits::threads)]
    threads: usize,
    #[command(flatten)]
    device: crate::load::DeviceArgs,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short, long, visible_alias = "ctx-size", default_value_t = 0, value_parser = crate::limits::context)]
    ctx: usize,
    /// How the KV cache stores keys and values: f16 or f32.
    #[arg(long, default_value = "f16")]
    kv_type: KvType,
    /// Refuse images with more pixels than this, in the file and in the preprocessing.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS, value_parser = crate::limits::max_pixels)]
    max_image_pixels: u64,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(args: &Args) -> Result<()> {
    let mut sampler = args.sampling.config()?;
    let images = find_images(&args.paths)?;
    if images.is_empty() {
        bail!("no images found in the paths given");
    }
    let inputs: Vec<&Path> = images
        .iter()
        .map(PathBuf::as_path)
        .chain([args.model.as_path(), args.mmproj.as_path()])
        .collect();
    // An existing output is continued (resumed), so it may exist; it must still be a regular
    // file and none of the inputs, and `captioned` refuses it unless it holds captions.
    check_outputs(
        &[Output {
            flag: "--out",
            path: &args.out,
        }],
        &inputs,
        true,
    )?;
    create_parent(&args.out)?;
    let mut out = open_output(&args.out)?;
    let done = captioned(&mut out, &args.out)?;
    let todo: Vec<&PathBuf> = images
        .iter()
        .filter(|p| !done.contains(&p.display().to_string()))
        .collect();
    if todo.len() < images.len() {
        diag!(
            "llava caption: {} of {} image(s) already captioned in {}; doing the other {}",
            images.len() - todo.len(),
            images.len(),
            args.out.display(),
            todo.len()
        );
    }
    if todo.is_empty() {
        return Ok(());
    }

    let pipeline = load_pipeline(
        &args.model,
        Some(&args.mmproj),
        args.threads,
        &args.device,
        &LoadOptions {
            n_ctx: args.ctx,
            kv_type: args.kv_type,
            max_image_pixels: args.max_image_pixels,
            // Each image is seen once.
            image_cache_bytes: 0,
            ..LoadOptions::default()
        },
        &Stages::quiet(),
    )?;
    diag!(
        "llava caption: {} image(s) with {} ({})",
        todo.len(),
        args.model.display(),
        describe_pipeline(&pipeline)
    );
    sampler.penalty_last_n = sampler.penalty_last_n.min(pipeline.n_ctx());
    let options = GenerateOptions {
        sampler,
        max_tokens: args.max_tokens,
        stop: Vec::new(),
        ignore_eos: false,
    };
    let question = if args.short_answer {
        format!("{}\n{SHORT_ANSWER}", args.prompt)
    } else {
        args.prompt.clone()
    };
    let mut session = pipeline.session()?;
    let mut progress = Progress::new(todo.len());
    let mut failed = 0;
    for path in todo {
        let t0 = Instant::now();
        let result = load_image(path, args.max_image_pixels)
            .map_err(anyhow::Error::from)
            .and_then(|image| {
                session.clear();
                let mut caption = String::new();
                let stats = session.ask(&question, &[image], &options, |piece| {
                    caption.push_str(piece);
                    ControlFlow::Continue(())
                })?;
                Ok((caption, stats.generation.generated_tokens))
            });
        let ms = (t0.elapsed().as_secs_f64() * 1e3).round();
        let line = match result {
            Ok((caption, tokens)) => json!({
                "path": path.display().to_string(),
                "caption": caption.trim(),
                "tokens": tokens,
                "ms": ms,
            }),
            Err(e) => {
                failed += 1;
                json!({ "path": path.display().to_string(), "error": format!("{e:#}") })
            }
        };
        // One write of the whole line, then flushed: a kill leaves whole lines.
        out.write_all(format!("{line}\n").as_bytes())
            .and_then(|_| out.flush())
            .with_context(|| format!("cannot write {}", args.out.display()))?;
        progress.step(path, line.get("error").and_then(Value::as_str));
    }
    progress.finish();
    if failed > 0 {
        bail!(
            "{failed} image(s) could not be captioned (their lines in {} say why)",
            args.out.display()
        );
    }
    Ok(())
}

/// The image files under `paths`, sorted within each folder: files named directly (whatever
/// their extension), and files with an image extension in folders, recursively.
fn find_images(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).with_context(|| shown(path))?;
        if meta.is_dir() {
            walk(path, 0, &mut found)?;
        } else {
            found.push(path.clone());
        }
    }
    let mut seen = HashSet::new();
    found.retain(|p| seen.insert(p.clone()));
    Ok(found)
}

fn walk(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) -> Result<()> {
    if depth > MAX_DEPTH {
        diag!(
            "llava: {}: deeper than {MAX_DEPTH} folders, not walked",
            shown(dir)
        );
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| shown(dir))?
        .collect::<Result<_, _>>()
        .with_context(|| shown(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        // Not followed: links (a link to a folder above would loop).
        let ty = e.file_type().with_context(|| shown(&path))?;
        if ty.is_dir() {
            walk(&path, depth + 1, found)?;
        } else if ty.is_file() && has_image_extension(&path) {
            found.push(path);
        }
    }
    Ok(())
}

/// A path found in a folder as the terminal is shown it: a file name can hold escape
/// sequences (the JSON lines escape them anyway).
fn shown(path: &Path) -> String {
    printable(&path.display().to_string()).into_owned()
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The output, opened to append (created if new).
fn open_output(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("{}: cannot open", path.display()))
}

/// Longest line a captions file may hold: a caption of thousands of tokens is a few hundred
/// KiB, and the bound keeps a file that is not one from being read whole (the same 16 MiB
/// that bounds prompts read from files and pipes).
const MAX_LINE_BYTES: u64 = 16 << 20;

/// The paths the output already has a caption for, read line by line. Every complete line
/// must be one this command writes (a JSON object with a `path` and a `caption` or an
/// `error`): anything else is refused, and the file left as it is. A last line cut by a kill
/// (no newline at the end) is removed if it is the start of a JSON object, so the lines
/// appended after it start on a line of their own.
fn captioned(out: &mut File, path: &Path) -> Result<HashSet<String>> {
    let err = |e: std::io::Error| anyhow::anyhow!("{}: {e}", path.display());
    let refuse = |what: String| {
        anyhow::anyhow!(
            "{}: {what}, so it is not a captions file from llava caption; it was left as it \
             is (choose another --out)",
            path.display()
        )
    };
    out.seek(SeekFrom::Start(0)).map_err(err)?;
    let mut reader = BufReader::new(&*out);
    let mut done = HashSet::new();
    let mut line = Vec::new();
    let (mut whole, mut number) = (0u64, 0usize);
    let cut = loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut line)
            .map_err(err)?;
        if n == 0 {
            break None;
        }
        number += 1;
        if n as u64 > MAX_LINE_BYTES {
            return Err(refuse(format!(
                "line {number} is longer than {} MiB",
                MAX_LINE_BYTES >> 20
            )));
        }
        let Some(text) = line.strip_suffix(b"\n") else {
            if !starts_a_json_object(&line) {
                return Err(refuse(format!(
                    "its last line ({n} bytes, no newline) is not a caption line"
                )));
            }
            break Some(n);
        };
        match parse_line(text) {
            Some(Line::Caption(p)) => {
                done.insert(p);
            }
            Some(Line::Error) => {}
            None => return Err(refuse(format!("line {number} is not a caption line"))),
        }
        whole += n as u64;
    };
    drop(reader);
    if let Some(n) = cut {
        diag!(
            "llava: {}: removing a cut last line ({n} bytes) left by an interrupted run",
            path.display()
        );
        out.set_len(whole).map_err(err)?;
    }
    Ok(done)
}

/// One complete line of a captions file.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A caption of the image at this path.
    Caption(String),
    /// An image that failed (it is tried again).
    Error,
}

/// The line as this command writes it, or `None` for anything else.
fn parse_line(text: &[u8]) -> Option<Line> {
    let v: Value = serde_json::from_slice(text).ok()?;
    let path = v.get("path")?.as_str()?;
    if v.get("caption").is_some_and(Value::is_string) {
        Some(Line::Caption(path.to_owned()))
    } else if v.get("error").is_some_and(Value::is_string) {
        Some(Line::Error)
    } else {
        None
    }
}

/// Whether `bytes`, a last line without its newline, is what a kill part-way through writing
/// a line leaves: a JSON object that ends too early (or a whole line but its newline).
fn starts_a_json_object(bytes: &[u8]) -> bool {
    if !bytes.starts_with(b"{") {
        return false;
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(_) => parse_line(bytes).is_some(),
        Err(e) => e.is_eof(),
    }
}

/// A bar with the rate and ETA on a terminal; a plain line every few seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    done: usize,
    failed: usize,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    fn new(total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} images, {per_sec}, ETA {eta} {msg}",
                )
                .expect("a valid template"),
            );
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            total,
            done: 0,
            failed: 0,
            started: now,
            last_line: now,
        }
    }

    fn step(&mut self, path: &Path, error: Option<&str>) {
        self.done += 1;
        if let Some(e) = error {
            self.failed += 1;
            // The error names the file, and may quote what the decoder read.
            let line = format!("llava: {}", printable(e));
            match &self.bar {
                Some(bar) => bar.println(line),
                None => diag!("{line}"),
            }
        }
        match &self.bar {
            Some(bar) => {
                bar.set_message(shown(path));
                bar.inc(1);
            }
            None if self.last_line.elapsed() >= Duration::from_secs(5) => {
                self.last_line = Instant::now();
                let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
                diag!(
                    "llava caption: {}/{} images, {:.2} images/s, ETA {:.0} s",
                    self.done,
                    self.total,
                    rate,
                    (self.total - self.done) as f64 / rate.max(1e-9)
                );
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        diag!(
            "llava caption: {} image(s) in {:.1} s, {} failed",
            self.done,
            self.started.elapsed().as_secs_f64(),
            self.failed
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_name_with_an_escape_sequence_is_shown_escaped() {
        let name = Path::new("pics/\u{1b}]0;owned\u{7}\u{1b}[2J.png");
        let shown = shown(name);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(shown, "pics/\\u{1b}]0;owned\\u{7}\\u{1b}[2J.png");
    }

    #[test]
    fn only_the_lines_caption_writes_are_caption_lines() {
        let caption = br#"{"caption":"a cat","ms":12.0,"path":"a.png","tokens":3}"#;
        assert_eq!(parse_line(caption), Some(Line::Caption("a.png".into())));
        let error = br#"{"error":"a.png: cannot decode","path":"a.png"}"#;
        assert_eq!(parse_line(error), Some(Line::Error));
        for other in [
            &b""[..],
            b"hello",
            b"{}",
            br#"{"path":"a.png"}"#,
            br#"{"path":1,"caption":"x"}"#,
            br#"["path","caption"]"#,
            b"\xff\xd8\xff\xe0\x00\x10JFIF",
        ] {
            assert_eq!(
                parse_line(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn a_cut_line_is_the_start_of_a_json_object() {
        for cut in [
            &b"{"[..],
            br#"{"path": "cut"#,
            br#"{"caption":"a c"#,
            br#"{"caption":"a cat","ms":12.0,"path":"a.png","tokens":3}"#,
            "{\"caption\":\"caf\u{e9}".as_bytes(),
            &"{\"caption\":\"caf\u{e9}".as_bytes()[..13],
        ] {
            assert!(
                starts_a_json_object(cut),
                "{}",
                String::from_utf8_lossy(cut)
            );
        }
        for other in [
            &b""[..],
            b"hello",
            b"\xff\xd8\xff\xe0",
            b"{}",
            b"{\"path\" x",
            b"{\"a\":1}",
        ] {
            assert!(
                !starts_a_json_object(other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
