//! `llava tokenize`: text to token ids with a GGUF file's tokenizer.

use std::path::PathBuf;

use anyhow::Result;
use llava_runtime::gguf::GgufFile;
use llava_runtime::tokenizer::Tokenizer;

use crate::load::prompt_text;

#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file with tokenizer metadata (any LLM file; vocabulary-only files work too).
    #[arg(short, long)]
    model: PathBuf,
    /// Do not add BOS (llama.cpp's vocabulary test vectors are written this way).
    #[arg(long)]
    no_bos: bool,
    /// Treat special-token text such as "</s>" as plain text.
    #[arg(long)]
    no_parse_special: bool,
    /// Read the text from this file, byte for byte.
    #[arg(long, conflicts_with = "text")]
    file: Option<PathBuf>,
    /// The text.
    text: Option<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let file = GgufFile::open(&args.model)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let text = prompt_text(args.text.as_deref(), args.file.as_deref())?;
    let ids = tokenizer.encode(&text, !args.no_bos, !args.no_parse_special);
    let line: Vec<String> = ids.iter().map(u32::to_string).collect();
    crate::write_stdout(&format!("{}\n", line.join(" ")))
}
