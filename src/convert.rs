//! `llava convert`: a Hugging Face checkpoint directory to GGUF files llama.cpp can read too:
//! `<name>-<quant>.gguf` (the LLM) and, for LLaVA checkpoints, `mmproj-<name>-<vquant>.gguf`
//! (the CLIP tower and projector).

use std::path::PathBuf;

use anyhow::{bail, Result};
use llava_convert::{convert_llama_with, convert_mmproj_with, Preset};

use crate::progress::CliMonitor;

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint directory: config.json, *.safetensors, tokenizer.json.
    dir: PathBuf,
    /// LLM quantization: f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0 (llama.cpp's mixes).
    #[arg(short, long, default_value = "q4_k_m")]
    quant: Preset,
    /// Vision tower and projector quantization.
    #[arg(long, default_value = "f16")]
    vision_quant: Preset,
    /// A CLIP directory (openai/clip-vit-large-patch14-336 style) for original LLaVA-1.5
    /// checkpoints, which do not contain the tower.
    #[arg(long)]
    vision_tower: Option<PathBuf>,
    /// Directory for the output files.
    #[arg(long, default_value = ".")]
    outdir: PathBuf,
    /// Base name of the output files (default: the checkpoint directory's name).
    #[arg(long)]
    name: Option<String>,
    /// LLM output path (overrides --outdir/--name).
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// mmproj output path (overrides --outdir/--name).
    #[arg(long)]
    mmproj_out: Option<PathBuf>,
    /// Replace output files that already exist.
    #[arg(long)]
    force: bool,
    /// Print each tensor's type, shape and RMSE against the source.
    #[arg(short, long)]
    verbose: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let kind = llava_convert::source::Source::open(&args.dir)?.kind;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args
            .dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".to_owned()),
    };
    let llm_out = args
        .out
        .clone()
        .unwrap_or_else(|| args.outdir.join(format!("{name}-{}.gguf", args.quant)));
    let mmproj_out = kind.is_llava().then(|| {
        args.mmproj_out.clone().unwrap_or_else(|| {
            args.outdir
                .join(format!("mmproj-{name}-{}.gguf", args.vision_quant))
        })
    });
    // Refuse before any work, so nothing is half done.
    for path in std::iter::once(&llm_out).chain(mmproj_out.as_ref()) {
        if path.exists() && !args.force {
            bail!(
                "{}: already exists (use --force to replace it)",
                path.display()
            );
        }
    }
    if args.vision_tower.is_some() && !kind.is_llava() {
        bail!(
            "--vision-tower given, but {} is not a LLaVA checkpoint",
            args.dir.display()
        );
    }

    for path in std::iter::once(&llm_out).chain(mmproj_out.as_ref()) {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!("{}: cannot create the directory: {e}", dir.display())
            })?;
        }
    }

    let mut monitor = CliMonitor::new(&llm_out, args.verbose);
    let s = convert_llama_with(&args.dir, &llm_out, args.quant, &mut monitor)?;
    monitor.finish(&s);
    if let Some(out) = &mmproj_out {
        let mut monitor = CliMonitor::new(out, args.verbose);
        match convert_mmproj_with(
            &args.dir,
            args.vision_tower.as_deref(),
            out,
            args.vision_quant,
            &mut monitor,
        ) {
            Ok(s) => monitor.finish(&s),
            Err(e) => {
                // One command, both files or neither.
                let _ = std::fs::remove_file(&llm_out);
                return Err(e.into());
            }
        }
    }
    Ok(())
}
