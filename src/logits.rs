//! `llava logits`: one forward pass over a prompt exactly as given (no chat template), writing
//! the logits of every position as a float32 NPY array `[positions, vocab]` — the interface
//! for evaluation scripts and parity checks. With images, the image positions are rows too;
//! `--ids-out` says which rows are which token (-1: an image position).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::load::{check_images, load_images, prompt_text, Chosen, Stages};
use crate::output::{
    check_outputs, commit, create_parent, remove_partial_files_on_signals, write_staged, Output,
};
use llava_models::image::RgbImage;
use llava_models::llava::{text_tokens, tokenize_pieces};
use llava_models::template::with_image_markers;
use llava_models::{available_memory, Pipeline};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  llava logits -m model.gguf --prompt \"The capital of France is\" --out logits.npy
  llava logits -m llm.gguf --mmproj mmproj.gguf --image cat.png \\
      --prompt \"USER: <image>\\nWhat is this? ASSISTANT:\" --out l.npy --ids-out ids.txt")]
pub struct Args {
    #[command(flatten)]
    pub models: crate::load::ModelArgs,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from this file, byte for byte (`-`: stdin; at most 16 MiB).
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Where to write the logits (NPY, float32, [positions, vocab]: every position of the
    /// prompt, image positions included); `-` for stdout.
    #[arg(long)]
    out: PathBuf,
    /// Also write the id of each position's token, space-separated, to this file (`-` for
    /// stdout): one per row of the NPY, -1 where the row is an image position.
    #[arg(long)]
    ids_out: Option<PathBuf>,
    /// Replace output files that already exist.
    #[arg(long)]
    force: bool,
    /// Do not add BOS.
    #[arg(long)]
    no_bos: bool,
    /// An image for the prompt's <image> markers (repeat for several; markers are put before
    /// the text when the prompt has none).
    #[arg(long)]
    image: Vec<PathBuf>,
}

pub fn run(args: &Args) -> Result<()> {
    // The outputs first: nothing is computed for a write that would be refused.
    let to_stdout = |p: &Path| p.as_os_str() == "-";
    let mut files = vec![];
    if !to_stdout(&args.out) {
        files.push(Output {
            flag: "--out",
            path: &args.out,
        });
    }
    match &args.ids_out {
        Some(p) if to_stdout(p) && to_stdout(&args.out) => {
            bail!("--out and --ids-out cannot both be stdout")
        }
        Some(p) if !to_stdout(p) => files.push(Output {
            flag: "--ids-out",
            path: p,
        }),
        _ => {}
    }
    let inputs: Vec<&Path> = [Some(args.models.model()), args.models.mmproj.as_deref()]
        .into_iter()
        .flatten()
        .chain(args.prompt_file.as_deref())
        .chain(args.image.iter().map(PathBuf::as_path))
        .collect();
    check_outputs(&files, &inputs, args.force)?;
    for f in &files {
        create_parent(f.path)?;
    }
    remove_partial_files_on_signals();

    let text = prompt_text(args.prompt.as_deref(), args.prompt_file.as_deref())?;
    if !args.image.is_empty() && args.models.mmproj.is_none() {
        bail!("--image needs --mmproj (the vision tower and projector file)");
    }
    let images = load_images(&args.image, args.models.max_image_pixels)?;
    if args.no_bos && args.models.mmproj.is_some() {
        bail!("--no-bos applies to text-only prompts; with --mmproj BOS starts the prompt as in LLaVA");
    }
    let pipeline = args
        .models
        .load(llava_models::DEFAULT_IMAGE_CACHE_BYTES, &Stages::quiet())?;
    check_images(&pipeline, &images, &args.image)?;
    // Text only: the prompt's tokens exactly (BOS unless --no-bos).
    let ids = args
        .models
        .mmproj
        .is_none()
        .then(|| pipeline.tokenizer().encode(&text, !args.no_bos, true));
    let prompt = with_image_markers(&text, images.len());
    let positions = match &ids {
        Some(ids) => ids.len(),
        None => prompt_positions(&pipeline, &prompt, &images)?,
    };
    // A prompt longer than the context is refused by the session, with its own message.
    let positions = positions.min(pipeline.n_ctx());
    check_memory(
        pipeline
            .llm()
            .cache_bytes(pipeline.n_ctx(), pipeline.kv_type()),
        positions,
        pipeline.llm().config.n_vocab,
        available_memory(),
    )?;
    let mut session = pipeline.session()?;
    let (prefill, values) = match &ids {
        Some(ids) => session.evaluate_tokens(ids)?,
        None => session.evaluate(&prompt, &images)?,
    };
    let position_ids = session.tokens();
    // One row per position, image rows included: the header says what the data holds.
    let shape = [prefill.positions, pipeline.llm().config.n_vocab];
    if values.len() != shape[0] * shape[1] || position_ids.len() != shape[0] {
        bail!("internal error: {} logits for {shape:?}", values.len());
    }

    let ids_line = position_ids
        .iter()
        .map(|id| id.map_or("-1".to_owned(), |id| id.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut staged = Vec::new();
    if to_stdout(&args.out) {
        write_stdout(|w| write_npy_f32(w, &shape, &values))?;
    } else {
        staged.push(write_staged(&args.out, |w| {
            write_npy_f32(w, &shape, &values)
        })?);
    }
    match &args.ids_out {
        Some(p) if to_stdout(p) => write_stdout(|w| writeln!(w, "{ids_line}"))?,
        Some(p) => staged.push(write_staged(p, |w| writeln!(w, "{ids_line}"))?),
        None => {}
    }
    commit(staged)
}

/// Positions `prompt` takes with `images`, as [`llava_models::Session::evaluate`] counts
/// them (BOS first, each image's tokens), known before anything is computed.
fn prompt_positions(
    pipeline: &Pipeline<Chosen>,
    prompt: &str,
    images: &[RgbImage],
) -> Result<usize> {
    let pieces = tokenize_pieces(pipeline.tokenizer(), prompt, images.len(), true)?;
    let mut positions = text_tokens(&pieces);
    for image in images {
        positions += pipeline.image_positions(image)?;
    }
    Ok(positions)
}

/// Refuses the KV cache and the logits together when they would not fit in the memory
/// available (`None`: not known, no check). The logits of every position are kept, and the
/// backend's `[positions, n_vocab]` f32 tensor and the copy downloaded from it are alive at
/// once: twice `positions × n_vocab × 4` bytes (a 4096-position prompt of a 152 K vocabulary
/// is 4.6 GiB).
fn check_memory(
    kv_bytes: u128,
    positions: usize,
    n_vocab: usize,
    available: Option<u64>,
) -> Result<()> {
    let Some(available) = available else {
        return Ok(());
    };
    let logits_bytes = 2 * 4 * positions as u128 * n_vocab as u128;
    if kv_bytes + logits_bytes > u128::from(available) {
        let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
        bail!(
            "the logits of {positions} positions × {n_vocab} tokens need {:.1} GiB (and the KV \
             cache {:.1} GiB), but {:.1} GiB of memory is available: give a shorter prompt",
            gib(logits_bytes),
            gib(kv_bytes),
            gib(u128::from(available))
        );
    }
    Ok(())
}

/// Writes to stdout, errors included (a closed pipe too: the data is the output).
fn write_stdout(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    write(&mut out)
        .and_then(|_| out.flush())
        .context("cannot write to stdout")
}

/// NPY format version 1.0: magic, header length, a Python dict literal padded with spaces to
/// a multiple of 64 bytes and ended by a newline, then the little-endian data.
fn write_npy_f32(w: &mut dyn Write, shape: &[usize], data: &[f32]) -> std::io::Result<()> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(header.len() as u16).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    for v in data {
        w.write_all(&v.to_le_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_logits_count_in_the_memory_check() {
        const GIB: u64 = 1 << 30;
        // 4096 positions of a 152 K vocabulary: 2.3 GiB of logits, twice over.
        let e = check_memory(GIB.into(), 4096, 152_064, Some(5 * GIB)).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("4096 positions × 152064 tokens need 4.6 GiB"),
            "{e}"
        );
        assert!(e.contains("5.0 GiB of memory is available"), "{e}");
        check_memory(GIB.into(), 4096, 152_064, Some(6 * GIB)).unwrap();
        // The KV cache and the logits together.
        check_memory((2 * GIB).into(), 4096, 152_064, Some(6 * GIB)).unwrap_err();
        check_memory(u128::MAX / 2, 4096, 152_064, None).unwrap();
    }

    #[test]
    fn npy_header_is_aligned_and_describes_the_array() {
        let mut buf = Vec::new();
        write_npy_f32(&mut buf, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let header_len = u16::from_le_bytes([buf[8], buf[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&buf[10..10 + header_len]).unwrap();
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(header.ends_with('\n'));
        assert_eq!(buf.len(), 10 + header_len + 24);
        assert_eq!(&buf[10 + header_len..][..4], &1f32.to_le_bytes());
    }
}
