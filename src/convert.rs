//! `llava convert`: a Hugging Face checkpoint directory to a GGUF file llama.cpp can read too.
//! Today: LLaMA-architecture LLMs (LlamaForCausalLM, MistralForCausalLM).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use llava_convert::{convert_llama, Preset};

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint directory: config.json, *.safetensors, tokenizer.json.
    dir: PathBuf,
    /// Quantization: f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0 (llama.cpp's mixes).
    #[arg(short, long, default_value = "q4_k_m")]
    quant: Preset,
    /// Output file (default: <directory name>-<quant>.gguf in the current directory).
    #[arg(short, long)]
    out: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| {
        let name = args
            .dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".to_owned());
        PathBuf::from(format!("{name}-{}.gguf", args.quant))
    });
    let t0 = Instant::now();
    let s = convert_llama(&args.dir, &out, args.quant)?;
    eprintln!(
        "wrote {}: {} tensors, {} parameters, {:.1} MiB ({:.2} bits/weight) in {:.1} s",
        out.display(),
        s.tensors,
        s.parameters,
        s.bytes as f64 / (1u64 << 20) as f64,
        s.bytes as f64 * 8.0 / s.parameters.max(1) as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
