//! `llava`: the llava-edge command line. One file per subcommand; no model math here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod inspect;

#[derive(Parser)]
#[command(
    name = "llava",
    version,
    about = "Run LLaVA vision-language models offline from GGUF files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Summarise a GGUF file: metadata, tensors, sizes.
    Inspect(inspect::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, joined by ": ".
            eprintln!("llava: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
