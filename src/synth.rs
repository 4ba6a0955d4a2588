//! `llava synth`: a random-weight model of a real model's shape, for benchmarks.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Result};
use llava_convert::{synth_llm, Preset, SynthModel};

#[derive(clap::Args)]
pub struct Args {
    /// Model shape: tiny, tinyllama-1.1b, llava-1.5-7b, llava-1.6-mistral-7b.
    #[arg(long)]
    preset: String,
    /// Quantization: f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0.
    #[arg(short, long, default_value = "q4_k_m")]
    quant: Preset,
    /// Output file (default: <preset>-<quant>.gguf in the current directory).
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}-{}.gguf", model.name(), args.quant)));
    let t0 = Instant::now();
    let s = synth_llm(model, args.quant, &out, args.seed)?;
    eprintln!(
        "wrote {}: {} tensors, {} parameters, {:.2} GiB ({:.2} bits/weight) in {:.1} s",
        out.display(),
        s.tensors,
        s.parameters,
        s.bytes as f64 / (1u64 << 30) as f64,
        s.bytes as f64 * 8.0 / s.parameters as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
