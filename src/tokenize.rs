//! `llava tokenize`: text to token ids with a GGUF file's tokenizer.

use std::path::PathBuf;

use anyhow::Result;
use llava_runtime::gguf::GgufFile;
use llava_runtime::tokenizer::Tokenizer;

use crate::load::prompt_text;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  llava tokenize -m model.gguf \"Hello world\"
  llava tokenize -m model.gguf --no-bos --file text.txt")]
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
    /// Read the text from this file, byte for byte (`-`: stdin; at most 16 MiB).
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
    drop(text);
    // Written as they are formatted: no string per id held (megabytes of text are millions
    // of ids).
    let mut line = String::with_capacity(ids.len().min(1 << 16) * 6);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        line.push_str(&id.to_string());
        if line.len() >= 1 << 16 {
            crate::write_stdout(&line)?;
            line.clear();
        }
    }
    line.push('\n');
    crate::write_stdout(&line)
}
