//! `llava`: the llava-edge command line. One file per subcommand; no model math here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `eprintln!` that cannot fail: diagnostics are best effort. `eprintln!` panics when stderr
/// is closed or full (`2>/dev/full`, `2>&1 | head -n 1`), which would kill a conversion
/// halfway for a progress line nobody reads.
macro_rules! diag {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod bench;
mod caption;
mod chat;
mod convert;
mod devices;
mod hub;
mod inspect;
mod limits;
mod llamacpp_flags;
mod load;
mod logits;
mod output;
mod progress;
mod quantize;
mod run;
mod serve;
mod synth;
mod tokenize;

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
    /// Generate text from a prompt.
    Run(run::Args),
    /// Talk with a model, turn after turn, about images too.
    Chat(chat::Args),
    /// Caption images and folders of images into a JSON-lines file (resumable).
    Caption(caption::Args),
    /// Serve an OpenAI-compatible API and a chat page over HTTP.
    Serve(serve::Args),
    /// Write the logits of every prompt position to an NPY file (no chat template).
    Logits(logits::Args),
    /// Print the token ids of a text.
    Tokenize(tokenize::Args),
    /// Convert a Hugging Face checkpoint directory to GGUF.
    Convert(convert::Args),
    /// Requantize a GGUF file (LLM or mmproj) with another preset.
    Quantize(quantize::Args),
    /// Summarise a GGUF file: metadata, tensors, sizes.
    Inspect(inspect::Args),
    /// Write a random-weight model of a real model's shape, for benchmarks.
    Synth(synth::Args),
    /// Measure prompt processing, generation and image encoding, as llama-bench does.
    Bench(bench::Args),
    /// List the GPU adapters `--device gpu:N` can use.
    Devices(devices::Args),
    /// Download a model (and its mmproj) from the Hugging Face Hub into its cache; convert it
    /// once if it is a transformers checkpoint. Prints the local paths.
    Pull(hub::Args),
}

/// Keeps glibc's malloc from handing the CPU backend's tensors back to the kernel as soon as
/// they are freed. Every op returns a fresh tensor (a CLIP-L block makes a dozen of 2–9 MB);
/// by default glibc maps each one afresh (until its adaptive threshold has seen one that
/// size freed) and trims the heap's free top at 128 KB, so the next op faults the pages in
/// again, zeroed. These limits (the mmap threshold glibc's adaptive one tops out at, and twice
/// that kept free) save about 108 K page faults and 0.33 s of system time per CLIP-L image
/// encode (measured over 4 encodes: 555 K against 123 K faults; benches/README.md). Peak RSS
/// of encode-only runs stayed within the runs' spread (500–562 MB against 498–534 MB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    const MMAP_THRESHOLD: i32 = 32 << 20;
    const TRIM_THRESHOLD: i32 = 64 << 20;
    // SAFETY: `mallopt` only sets allocator parameters; called before any thread starts. A
    // refusal (0) leaves glibc's defaults, which are correct, only slower.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// Mesa's Vulkan device-selection layer (`VK_LAYER_MESA_device_select`, installed with Mesa's
/// drivers) orders the GPUs by which one drives the display, and to find the display it opens a
/// Wayland connection: without `XDG_RUNTIME_DIR` (a service, a container, a plain `su` shell)
/// libwayland prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment." to
/// stderr, twice per Vulkan instance, before any of our output. With neither that nor `DISPLAY`
/// there is no display whose GPU the layer could find, so it is turned off (its documented
/// `NODEVICE_SELECT=1`) unless the user set that variable. The order it would have given does
/// not matter to us: `--device gpu` ranks adapters by type, and `gpu:N` counts in the order
/// `llava devices` prints, which this same setting produces.
fn quiet_mesa_device_select() {
    let unset = |name: &str| std::env::var_os(name).is_none_or(|v| v.is_empty());
    if unset("XDG_RUNTIME_DIR") && unset("DISPLAY") && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        // Sound: `main` calls this before anything starts a thread, so nothing can read the
        // environment while it changes.
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    quiet_mesa_device_select();
    let args = match llamacpp_flags::translate(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(message) => {
            diag!("llava: error: {message}");
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let mut command = cli.command;
    // `--hf` downloads (or finds in the cache) before the command runs.
    let models = match &mut command {
        Command::Run(a) => Some(&mut a.models),
        Command::Chat(a) => Some(&mut a.models),
        Command::Serve(a) => Some(&mut a.models),
        Command::Logits(a) => Some(&mut a.models),
        _ => None,
    };
    if let Some(Err(e)) = models.map(|m| m.resolve_hf()) {
        diag!("llava: error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match command {
        Command::Run(args) => run::run(&args),
        Command::Chat(args) => chat::run(&args),
        Command::Caption(args) => caption::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Logits(args) => logits::run(&args),
        Command::Tokenize(args) => tokenize::run(&args),
        Command::Convert(args) => convert::run(&args),
        Command::Quantize(args) => quantize::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Synth(args) => synth::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Devices(args) => devices::run(&args),
        Command::Pull(args) => hub::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, joined by ": ".
            diag!("llava: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A command line clap refused. A flag's value out of its range is one line, as every other
/// error of llava (`llava: error: invalid value '0' for '--repetitions <N>': ...`); the rest
/// (help, version, missing arguments with their usage) as clap prints them. Exit status 2,
/// as usage errors conventionally have.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            diag!("llava: {first}");
            ExitCode::from(2)
        }
        _ => {
            let _ = e.print();
            ExitCode::from(e.exit_code().clamp(0, 255) as u8)
        }
    }
}

/// Writes `text` to stdout; a closed pipe (`llava ... | head`) is not an error.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r.map_err(|e| anyhow::anyhow!("cannot write to stdout: {e}"))?),
    }
}
