//! `llava quantize`: an existing GGUF file (an LLM or an mmproj, e.g. an F16 file made by
//! llama.cpp) requantized with another preset, all other metadata kept.

use std::path::PathBuf;

use anyhow::Result;
use llava_convert::{requantize_with, Preset};

use crate::output::{check_outputs, create_parent, remove_partial_files_on_signals, Output};
use crate::progress::CliMonitor;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  llava quantize model-f16.gguf model-q4_k_m.gguf -q q4_k_m
  llava quantize mmproj-f16.gguf mmproj-q8_0.gguf -q q8_0")]
pub struct Args {
    /// The GGUF file to requantize (architecture llama or clip).
    input: PathBuf,
    /// The file to write.
    output: PathBuf,
    /// f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0 (llama.cpp's mixes; an mmproj file
    /// gets the vision rules: embeddings F16, vectors F32).
    #[arg(short, long, default_value = "q4_k_m")]
    quant: Preset,
    /// Replace the output file if it exists.
    #[arg(long)]
    force: bool,
    /// Print each tensor's type, shape and RMSE against the source.
    #[arg(short, long)]
    verbose: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let output = Output {
        flag: "OUTPUT",
        path: &args.output,
    };
    check_outputs(&[output], &[&args.input], args.force)?;
    create_parent(&args.output)?;
    remove_partial_files_on_signals();
    let mut monitor = CliMonitor::new(&args.output, args.verbose);
    let s = requantize_with(&args.input, &args.output, args.quant, &mut monitor)?;
    diag!("{}", monitor.finish(&s));
    Ok(())
}
