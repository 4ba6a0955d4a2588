//! `llava convert`: a Hugging Face checkpoint directory to GGUF files llama.cpp can read too:
//! `<name>-<quant>.gguf` (the LLM) and, for LLaVA checkpoints, `mmproj-<name>-<vquant>.gguf`
//! (the CLIP tower and projector).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use llava_convert::{check_mmproj, convert_llama_with, convert_mmproj_with, Preset};

use crate::output::{
    check_outputs, commit, create_parent, remove_partial_files_on_signals, stage, Output,
};
use crate::progress::CliMonitor;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  llava convert ~/models/llava-1.5-7b-hf -q q4_k_m --outdir out/
  llava convert ~/models/llava-v1.5-7b --vision-tower ~/models/clip-vit-large-patch14-336 -q q8_0")]
pub struct Args {
    /// The checkpoint directory: config.json, *.safetensors, and tokenizer.json or
    /// tokenizer.model.
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
    if args.vision_tower.is_some() && !kind.is_llava() {
        bail!(
            "--vision-tower given, but {} is not a LLaVA checkpoint",
            args.dir.display()
        );
    }
    convert_checkpoint(&Job {
        dir: &args.dir,
        vision_tower: args.vision_tower.as_deref(),
        quant: args.quant,
        vision_quant: args.vision_quant,
        llm_out: &llm_out,
        mmproj_out: mmproj_out.as_deref(),
        force: args.force,
        verbose: args.verbose,
    })
}

/// One conversion: a checkpoint directory to its LLM file and, for LLaVA, its mmproj.
pub struct Job<'a> {
    pub dir: &'a Path,
    pub vision_tower: Option<&'a Path>,
    pub quant: Preset,
    pub vision_quant: Preset,
    pub llm_out: &'a Path,
    pub mmproj_out: Option<&'a Path>,
    /// Replace output files that exist.
    pub force: bool,
    /// Print each tensor's type, shape and RMSE.
    pub verbose: bool,
}

/// Converts `job.dir`, writing both outputs under temporary names and putting them in place
/// together once both are complete (`llava convert`, and `llava pull` of a transformers
/// repository).
pub fn convert_checkpoint(job: &Job) -> Result<()> {
    // Refuse before any work, so nothing is half done.
    let outputs = Output::llm_and_mmproj(job.llm_out, job.mmproj_out);
    let inputs: Vec<&Path> = std::iter::once(job.dir).chain(job.vision_tower).collect();
    check_outputs(&outputs, &inputs, job.force)?;
    // The vision side is checked before the LLM's minutes of work.
    if job.mmproj_out.is_some() {
        check_mmproj(job.dir, job.vision_tower, job.vision_quant)?;
    }
    for path in std::iter::once(job.llm_out).chain(job.mmproj_out) {
        create_parent(path)?;
    }
    // Until the files are in place (or the conversion failed and they are gone): `pull --hf`
    // goes on to chat or serve, whose Ctrl-C and SIGTERM handlers must then be the only ones.
    let cleanup = remove_partial_files_on_signals();
    let converted = convert_and_commit(job);
    cleanup.close();
    converted
}

/// The work of [`convert_checkpoint`], its outputs checked and a signal handler in place.
fn convert_and_commit(job: &Job) -> Result<()> {
    // Both files are written under temporary names and replace the old ones together, once
    // both are complete: a failure keeps the previous pair.
    // The summary lines come after the commit: "wrote" means the file is in place.
    let llm_staged = stage(job.llm_out)?;
    let mut monitor = CliMonitor::new(job.llm_out, job.verbose);
    let s = convert_llama_with(job.dir, llm_staged.temp_path(), job.quant, &mut monitor)?;
    let mut lines = vec![monitor.finish(&s)];
    let mut staged = vec![llm_staged];
    if let Some(out) = job.mmproj_out {
        let mmproj_staged = stage(out)?;
        let mut monitor = CliMonitor::new(out, job.verbose);
        let s = convert_mmproj_with(
            job.dir,
            job.vision_tower,
            mmproj_staged.temp_path(),
            job.vision_quant,
            &mut monitor,
        )?;
        lines.push(monitor.finish(&s));
        staged.push(mmproj_staged);
    }
    commit(staged)?;
    for line in lines {
        diag!("{line}");
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// `chat --hf` on a transformers repository converts it, then chats: once the files are
    /// in place, a signal reaches the command's own handler (here a flag, as chat's Ctrl-C)
    /// instead of the conversion's, which would end the process (this test binary with it).
    #[test]
    fn after_a_conversion_signals_reach_the_process_own_handlers_again() {
        use signal_hook::consts::SIGTERM;
        let dir = tempfile::tempdir().unwrap();
        let (llm, mmproj) = (dir.path().join("llm.gguf"), dir.path().join("mmproj.gguf"));
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava-tiny-hf");
        convert_checkpoint(&Job {
            dir: &fixture,
            vision_tower: None,
            quant: Preset::F32,
            vision_quant: Preset::F32,
            llm_out: &llm,
            mmproj_out: Some(&mmproj),
            force: false,
            verbose: false,
        })
        .unwrap();
        assert!(llm.is_file() && mmproj.is_file());
        let delivered = Arc::new(AtomicBool::new(false));
        let id = signal_hook::flag::register(SIGTERM, Arc::clone(&delivered)).unwrap();
        signal_hook::low_level::raise(SIGTERM).unwrap();
        let start = Instant::now();
        while !delivered.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Time for a handler thread left behind to end the process, if there were one.
        std::thread::sleep(Duration::from_millis(300));
        signal_hook::low_level::unregister(id);
        assert!(delivered.load(Ordering::SeqCst));
        assert!(llm.is_file() && mmproj.is_file());
    }
}
