//! Random-weight models of real shapes, for benchmarks: `llava synth`.
//!
//! The weights are deterministic (a seed and the tensor's index pick them), normally
//! distributed with a small spread like a freshly initialised model's, and quantized with the
//! same preset rules as a converted checkpoint, so a synthetic file has exactly the tensor types
//! and sizes of the real one.

use std::path::Path;

use llava_runtime::gguf::{GgufWriter, MetaArray, MetaValue};
use rayon::prelude::*;

use crate::error::ConvertError;
use crate::llama::{llama_metadata, quantize_tensor, LlamaHparams};
use crate::mix::Preset;
use crate::ConvertSummary;

/// Model shapes `llava synth` can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthModel {
    /// 2 layers of width 256: seconds to make, for tests.
    Tiny,
    /// TinyLlama-1.1B.
    TinyLlama1B,
    /// Vicuna-7B v1.5, the LLM of LLaVA-1.5-7B.
    Llava15_7B,
    /// Mistral-7B-Instruct-v0.2, the LLM of LLaVA-1.6-Mistral-7B.
    Llava16Mistral7B,
}

impl SynthModel {
    pub const ALL: [SynthModel; 4] = [
        SynthModel::Tiny,
        SynthModel::TinyLlama1B,
        SynthModel::Llava15_7B,
        SynthModel::Llava16Mistral7B,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SynthModel::Tiny => "tiny",
            SynthModel::TinyLlama1B => "tinyllama-1.1b",
            SynthModel::Llava15_7B => "llava-1.5-7b",
            SynthModel::Llava16Mistral7B => "llava-1.6-mistral-7b",
        }
    }

    pub fn from_name(name: &str) -> Option<SynthModel> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Published shapes: TinyLlama-1.1B's config.json; LLaVA's LLMs per GGUF-AND-LLAVA.md §3.
    pub fn hparams(self) -> LlamaHparams {
        let (hidden_size, n_layers, n_heads, n_kv_heads, ffn_size, rope_theta, n_ctx_train) =
            match self {
                SynthModel::Tiny => (256, 2, 4, 2, 512, 10_000.0, 512),
                SynthModel::TinyLlama1B => (2048, 22, 32, 4, 5632, 10_000.0, 2048),
                SynthModel::Llava15_7B => (4096, 32, 32, 32, 11008, 10_000.0, 4096),
                SynthModel::Llava16Mistral7B => (4096, 32, 32, 8, 14336, 1_000_000.0, 32768),
            };
        LlamaHparams {
            vocab_size: if self == SynthModel::Tiny { 512 } else { 32000 },
            hidden_size,
            n_layers,
            n_heads,
            n_kv_heads,
            ffn_size,
            rms_eps: 1e-5,
            rope_theta,
            rope_linear_factor: None,
            n_ctx_train,
        }
    }
}

/// The spread of random matrix weights: like `initializer_range` in transformers' configs.
const WEIGHT_STD: f32 = 0.02;

/// Writes a random-weight LLaMA model of shape `model`, quantized with `preset`.
pub fn synth_llm(
    model: SynthModel,
    preset: Preset,
    out: &Path,
    seed: u64,
) -> Result<ConvertSummary, ConvertError> {
    let hp = model.hparams();
    let mut w = GgufWriter::new();
    let name = format!("synthetic {} (random weights)", model.name());
    for (k, v) in llama_metadata(&hp, &name, preset) {
        w.add(&k, v)?;
    }
    for (k, v) in byte_vocab(hp.vocab_size) {
        w.add(k, v)?;
    }
    let tensors = llama_tensor_shapes(&hp);
    for (name, shape) in &tensors {
        w.add_tensor(name, preset.tensor_type(name, shape, hp.n_layers), shape)?;
    }
    let mut summary = ConvertSummary {
        tensors: tensors.len(),
        parameters: 0,
        bytes: 0,
    };
    w.write(out, |i, decl, sink| -> Result<(), ConvertError> {
        let row_len = decl.shape[0] as usize;
        let data = if decl.shape.len() == 1 {
            // Norm weights near 1, as trained models have them.
            vec![1.0; row_len]
        } else {
            random_normal(decl.n_elements() as usize, seed ^ ((i as u64) << 32))
        };
        let bytes = quantize_tensor(&decl.name, decl.ty, &data, row_len)?;
        summary.parameters += decl.n_elements();
        summary.bytes += bytes.len() as u64;
        sink.write_all(&bytes).map_err(|error| ConvertError::Io {
            path: out.to_owned(),
            error,
        })
    })?;
    Ok(summary)
}

/// Names and ggml-order shapes of a LLaMA model with an untied output.
fn llama_tensor_shapes(hp: &LlamaHparams) -> Vec<(String, Vec<u64>)> {
    let h = hp.hidden_size as u64;
    let head_dim = h / hp.n_heads as u64;
    let q = hp.n_heads as u64 * head_dim;
    let kv = hp.n_kv_heads as u64 * head_dim;
    let ff = hp.ffn_size as u64;
    let v = hp.vocab_size as u64;
    let mut t = vec![("token_embd.weight".to_owned(), vec![h, v])];
    for i in 0..hp.n_layers {
        for (n, shape) in [
            ("attn_norm", vec![h]),
            ("attn_q", vec![h, q]),
            ("attn_k", vec![h, kv]),
            ("attn_v", vec![h, kv]),
            ("attn_output", vec![q, h]),
            ("ffn_norm", vec![h]),
            ("ffn_gate", vec![h, ff]),
            ("ffn_up", vec![h, ff]),
            ("ffn_down", vec![ff, h]),
        ] {
            t.push((format!("blk.{i}.{n}.weight"), shape));
        }
    }
    t.push(("output_norm.weight".to_owned(), vec![h]));
    t.push(("output.weight".to_owned(), vec![h, v]));
    t
}

/// `n` values of N(0, WEIGHT_STD²), reproducible from `seed`; made in parallel chunks each
/// with its own generator so the result does not depend on the thread count.
fn random_normal(n: usize, seed: u64) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut state = seed.wrapping_add((c as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            for pair in chunk.chunks_mut(2) {
                // Box–Muller: two uniforms in (0, 1] to two normals.
                let u1 = ((splitmix64(&mut state) >> 40) as f32 + 1.0) / (1u64 << 24) as f32;
                let u2 = (splitmix64(&mut state) >> 40) as f32 / (1u64 << 24) as f32;
                let r = (-2.0 * u1.ln()).sqrt() * WEIGHT_STD;
                let (s, c) = (std::f32::consts::TAU * u2).sin_cos();
                pair[0] = r * c;
                if let Some(x) = pair.get_mut(1) {
                    *x = r * s;
                }
            }
        });
    out
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A SentencePiece vocabulary that spells any text: the three LLaMA specials, the 256
/// byte-fallback tokens, the printable ASCII characters (space as "▁"), then filler tokens up
/// to `n_vocab`. Tokenization is character by character, which is all a benchmark needs.
fn byte_vocab(n_vocab: usize) -> Vec<(&'static str, MetaValue)> {
    let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for c in (b' '..=b'~').map(char::from) {
        tokens.push(if c == ' ' {
            "▁".to_owned()
        } else {
            c.to_string()
        });
        types.push(1);
    }
    let mut i = 0;
    while tokens.len() < n_vocab {
        tokens.push(format!("<filler{i}>"));
        types.push(5);
        i += 1;
    }
    tokens.truncate(n_vocab);
    types.truncate(n_vocab);
    let n = tokens.len();
    vec![
        ("tokenizer.ggml.model", "llama".into()),
        ("tokenizer.ggml.tokens", MetaArray::String(tokens).into()),
        ("tokenizer.ggml.scores", MetaArray::F32(vec![0.0; n]).into()),
        ("tokenizer.ggml.token_type", MetaArray::I32(types).into()),
        ("tokenizer.ggml.bos_token_id", MetaValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", MetaValue::U32(2)),
        ("tokenizer.ggml.unknown_token_id", MetaValue::U32(0)),
        ("tokenizer.ggml.add_bos_token", true.into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_weights_have_the_intended_spread_and_repeat_with_the_seed() {
        let a = random_normal(200_001, 7);
        assert_eq!(a, random_normal(200_001, 7));
        assert_ne!(a, random_normal(200_001, 8));
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 1e-3 * WEIGHT_STD as f64 * 10.0, "{mean}");
        assert!(
            (var.sqrt() / WEIGHT_STD as f64 - 1.0).abs() < 0.01,
            "{}",
            var.sqrt()
        );
    }

    #[test]
    fn shapes_match_the_published_parameter_counts() {
        let params = |m: SynthModel| -> u64 {
            llama_tensor_shapes(&m.hparams())
                .iter()
                .map(|(_, s)| s.iter().product::<u64>())
                .sum()
        };
        // TinyLlama-1.1B: 1,100,048,384 parameters; Vicuna-7B: 6,738,415,616; Mistral-7B:
        // 7,241,732,096 (their model cards / safetensors totals).
        assert_eq!(params(SynthModel::TinyLlama1B), 1_100_048_384);
        assert_eq!(params(SynthModel::Llava15_7B), 6_738_415_616);
        assert_eq!(params(SynthModel::Llava16Mistral7B), 7_241_732_096);
    }
}
