//! `llava logits`: one forward pass over a prompt exactly as given (no chat template), writing
//! the logits of every position as a float32 NPY array `[tokens, vocab]` — the interface for
//! evaluation scripts and parity checks.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use llava_runtime::backend::{Backend, KvType};

use crate::load::{build_prompt, load_images, load_llm, load_mmproj, prompt_text};
use llava_models::image::DEFAULT_MAX_PIXELS;
use llava_models::template::with_image_markers;

#[derive(clap::Args)]
pub struct Args {
    /// The LLM GGUF file.
    #[arg(short, long)]
    model: PathBuf,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from this file, byte for byte.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Where to write the logits (NPY, float32, [tokens, vocab]).
    #[arg(long)]
    out: PathBuf,
    /// Also write the prompt's text token ids, space-separated, to this file.
    #[arg(long)]
    ids_out: Option<PathBuf>,
    /// Do not add BOS.
    #[arg(long)]
    no_bos: bool,
    /// The vision tower and projector GGUF ("mmproj"), for prompts with images.
    #[arg(long)]
    mmproj: Option<PathBuf>,
    /// An image for the prompt's <image> markers (repeat for several; markers are put before
    /// the text when the prompt has none).
    #[arg(long)]
    image: Vec<PathBuf>,
    /// Worker threads (default: one per physical core).
    #[arg(short, long, default_value_t = 0)]
    threads: usize,
    /// How the KV cache stores keys and values: f16 (half the memory, as `llava run`) or f32
    /// (exact).
    #[arg(long, default_value = "f16")]
    kv_type: KvType,
}

pub fn run(args: &Args) -> Result<()> {
    let text = prompt_text(args.prompt.as_deref(), args.prompt_file.as_deref())?;
    let images = load_images(&args.image, DEFAULT_MAX_PIXELS)?;
    let mut llm = load_llm(&args.model, args.threads, 0)?;
    llm.backend.set_kv_type(args.kv_type);
    let clip = args
        .mmproj
        .as_deref()
        .map(|p| load_mmproj(p, &llm))
        .transpose()?;
    let (b, m) = (&llm.backend, &llm.model);
    let (embeddings, ids, n_positions) = if clip.is_none() {
        // Text only: the prompt's tokens exactly (BOS unless --no-bos).
        if !images.is_empty() {
            bail!("--image needs --mmproj (the vision tower and projector file)");
        }
        let ids = llm.tokenizer.encode(&text, !args.no_bos, true);
        if ids.is_empty() {
            bail!("the prompt has no tokens");
        }
        let n = ids.len();
        (m.embed(b, &ids), ids, n)
    } else {
        if args.no_bos {
            bail!("--no-bos applies to text-only prompts; with --mmproj BOS starts the prompt as in LLaVA");
        }
        let prompt = build_prompt(
            &llm,
            clip.as_ref(),
            &images,
            &with_image_markers(&text, images.len()),
        )?;
        (prompt.embeddings, prompt.text_ids, prompt.n_positions)
    };
    let mut cache = m.new_cache(b, n_positions);
    let logits = m.forward(b, embeddings, 0, &mut cache, false);
    let values = b.download(&logits);

    write_atomically(&args.out, |w| {
        write_npy_f32(w, &[ids.len(), m.config.n_vocab], &values)
    })?;
    if let Some(path) = &args.ids_out {
        let line: Vec<String> = ids.iter().map(u32::to_string).collect();
        write_atomically(path, |w| writeln!(w, "{}", line.join(" ")))?;
    }
    Ok(())
}

/// Writes `path` through a temporary file in the same directory, renamed into place when
/// complete, so a failure never leaves a partial file.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let ctx = || format!("cannot write {}", path.display());
    let mut builder = tempfile::Builder::new();
    // The usual permissions (0666 less the umask), not a temporary file's 0600.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir).with_context(ctx)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        write(&mut w).with_context(ctx)?;
        w.flush().with_context(ctx)?;
    }
    tmp.persist(path).map_err(|e| e.error).with_context(ctx)?;
    Ok(())
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
