//! `llava synth`: random-weight GGUF files of a real model's shapes, for benchmarks and
//! large-model tests without downloads: `<preset>-<quant>.gguf` and, for the LLaVA shapes,
//! `mmproj-<preset>-<vquant>.gguf`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Result};
use llava_convert::{synth_llm, synth_mmproj, Preset, SynthModel};

use crate::output::{
    check_outputs, commit, create_parent, remove_partial_files_on_signals, stage, Output,
};
use crate::progress::summary_line;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  llava synth --preset tinyllama-1.1b -q q4_0 --outdir /tmp/synth
  llava synth --preset llava-1.5-7b -q q4_k_m --vision-quant f16 --outdir /tmp/synth")]
pub struct Args {
    /// Model shape: tiny, tinyllama-1.1b, llava-1.5-7b, llava-1.6-mistral-7b.
    #[arg(long)]
    preset: String,
    /// LLM quantization: f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0.
    #[arg(short, long, default_value = "q4_k_m")]
    quant: Preset,
    /// Vision tower and projector quantization.
    #[arg(long, default_value = "f16")]
    vision_quant: Preset,
    /// Directory for the output files (default: the directory of --out, else the current one).
    #[arg(long)]
    outdir: Option<PathBuf>,
    /// LLM output path (overrides --outdir for the LLM).
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// mmproj output path (overrides --outdir for the mmproj).
    #[arg(long)]
    mmproj_out: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replace output files that already exist.
    #[arg(long)]
    force: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let model = SynthModel::from_name(&args.preset).ok_or_else(|| {
        let names: Vec<&str> = SynthModel::ALL.iter().map(|m| m.name()).collect();
        anyhow!(
            "unknown preset \"{}\" (one of {})",
            args.preset,
            names.join(", ")
        )
    })?;
    let outdir = match (&args.outdir, &args.out) {
        (Some(d), _) => d.clone(),
        (None, Some(o)) => o.parent().map(Path::to_path_buf).unwrap_or_default(),
        (None, None) => PathBuf::new(),
    };
    let llm_out = args
        .out
        .clone()
        .unwrap_or_else(|| outdir.join(format!("{}-{}.gguf", model.name(), args.quant)));
    let mmproj_out = model.has_vision().then(|| {
        args.mmproj_out.clone().unwrap_or_else(|| {
            outdir.join(format!(
                "mmproj-{}-{}.gguf",
                model.name(),
                args.vision_quant
            ))
        })
    });
    // Refuse before any work, so nothing is half done.
    let outputs = Output::llm_and_mmproj(&llm_out, mmproj_out.as_deref());
    check_outputs(&outputs, &[], args.force)?;
    for path in std::iter::once(&llm_out).chain(mmproj_out.as_ref()) {
        create_parent(path)?;
    }
    remove_partial_files_on_signals();

    // Both files replace the old ones together, once both are complete; the summary lines
    // come after, so "wrote" means the file is in place.
    let t0 = Instant::now();
    let llm_staged = stage(&llm_out)?;
    let s = synth_llm(model, args.quant, llm_staged.temp_path(), args.seed)?;
    let mut lines = vec![summary_line(&llm_out, &s, t0.elapsed().as_secs_f64())];
    let mut staged = vec![llm_staged];
    if let Some(out) = &mmproj_out {
        let t0 = Instant::now();
        let mmproj_staged = stage(out)?;
        let s = synth_mmproj(
            model,
            args.vision_quant,
            mmproj_staged.temp_path(),
            args.seed,
        )?;
        lines.push(summary_line(out, &s, t0.elapsed().as_secs_f64()));
        staged.push(mmproj_staged);
    }
    commit(staged)?;
    for line in lines {
        diag!("{line}");
    }
    Ok(())
}
