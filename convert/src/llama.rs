//! A Hugging Face `LlamaForCausalLM` / `MistralForCausalLM` directory → a llama.cpp GGUF file.
//!
//! Names, keys and the Q/K row permutation follow llama.cpp's `convert_hf_to_gguf.py`
//! (GGUF-AND-LLAVA.md §3). One tensor is held in memory at a time.

use llava_runtime::gguf::keys::{self, llm};
use llava_runtime::gguf::{KEY_ARCHITECTURE, KEY_FILE_TYPE, KEY_NAME};
use std::path::Path;

use llava_runtime::gguf::TensorDecl;
use llava_runtime::gguf::{GgufWriter, MetaValue};
use llava_runtime::quant::GgmlType;

use crate::error::ConvertError;
use crate::hf_config::JsonFile;
use crate::mix::Preset;
use crate::progress::{tensor_written, Monitor, Silent};
use crate::quantize::quantize_tensor;
use crate::source::Source;
use crate::vocab;

/// LLaMA hyper-parameters from `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaHparams {
    /// Number of tokens in the vocabulary (`vocab_size`).
    pub vocab_size: usize,
    /// Width of the residual stream (`hidden_size`).
    pub hidden_size: usize,
    /// Number of decoder layers (`num_hidden_layers`).
    pub n_layers: usize,
    /// Number of query heads (`num_attention_heads`); divides `hidden_size`.
    pub n_heads: usize,
    /// Number of key/value heads (`num_key_value_heads`, else `n_heads`); divides `n_heads`.
    pub n_kv_heads: usize,
    /// Width of the feed-forward layer (`intermediate_size`).
    pub ffn_size: usize,
    /// Epsilon of every RMSNorm (`rms_norm_eps`).
    pub rms_eps: f64,
    /// RoPE frequency base (`rope_theta`).
    pub rope_theta: f64,
    /// Linear RoPE scaling factor, if any.
    pub rope_linear_factor: Option<f64>,
    /// The context length the model was trained with (`max_position_embeddings`).
    pub n_ctx_train: usize,
}

impl LlamaHparams {
    /// From a LLaMA config object: `config.json` itself, or the `text_config` of a llava-hf
    /// checkpoint. Keys left out take transformers' `LlamaConfig` defaults (llava-hf configs
    /// omit those equal to the defaults, e.g. hidden_size 4096).
    pub fn from_config(c: &JsonFile) -> Result<Self, ConvertError> {
        let bad = |key: &str, reason: String| ConvertError::Config {
            path: c.path.clone(),
            key: key.to_owned(),
            reason,
        };
        let hidden_size = c.usize_opt("hidden_size")?.unwrap_or(4096);
        let n_heads = c.usize_opt("num_attention_heads")?.unwrap_or(32);
        let n_kv_heads = c.usize_opt("num_key_value_heads")?.unwrap_or(n_heads);
        if n_heads == 0 || hidden_size % n_heads != 0 {
            return Err(bad(
                "num_attention_heads",
                format!("{n_heads} heads do not divide hidden_size {hidden_size}"),
            ));
        }
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(bad(
                "num_key_value_heads",
                format!("{n_kv_heads} do not divide {n_heads} attention heads"),
            ));
        }
        if let Some(hd) = c.usize_opt("head_dim")? {
            if hd != hidden_size / n_heads {
                return Err(bad(
                    "head_dim",
                    format!("{hd} differs from hidden_size / num_attention_heads"),
                ));
            }
        }
        // transformers 5 moved rope settings under `rope_parameters`.
        let rope_theta = match c.f64_opt("rope_theta")? {
            Some(t) => t,
            None => c.f64_opt("rope_parameters.rope_theta")?.unwrap_or(10_000.0),
        };
        let scaling = ["rope_scaling", "rope_parameters"]
            .into_iter()
            .find_map(|k| c.get(k).map(|v| (k, v)));
        let rope_linear_factor = match scaling {
            None => None,
            Some((k, v)) => {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("default");
                match kind {
                    "default" => None,
                    "linear" => v.get("factor").and_then(|f| f.as_f64()),
                    other => {
                        return Err(bad(k, format!("RoPE scaling {other:?} is not supported")))
                    }
                }
            }
        };
        Ok(LlamaHparams {
            vocab_size: c.usize_opt("vocab_size")?.unwrap_or(32000),
            hidden_size,
            n_layers: c.usize_opt("num_hidden_layers")?.unwrap_or(32),
            n_heads,
            n_kv_heads,
            ffn_size: c.usize_opt("intermediate_size")?.unwrap_or(11008),
            rms_eps: c.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_linear_factor,
            n_ctx_train: c.usize_opt("max_position_embeddings")?.unwrap_or(2048),
        })
    }
}

/// How a checkpoint tensor is rearranged on the way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    AsIs,
    /// Undo Hugging Face's rotate-half permutation of Q or K rows, for adjacent-pair RoPE.
    PermuteHeads(usize),
}

struct Planned {
    gguf_name: String,
    hf_name: String,
    /// ggml order.
    shape: Vec<u64>,
    ty: GgmlType,
    layout: Layout,
}

/// What was written.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvertSummary {
    /// Tensors in the output file.
    pub tensors: usize,
    /// Elements in the written tensors.
    pub parameters: u64,
    /// Bytes of tensor data written, excluding the header and padding.
    pub bytes: u64,
}

impl ConvertSummary {
    /// Nothing written yet, of `tensors` tensors.
    pub(crate) fn new(tensors: usize) -> Self {
        ConvertSummary {
            tensors,
            parameters: 0,
            bytes: 0,
        }
    }
}

/// The step every writer of the converter ends a tensor with: `bytes`, the data of `decl`,
/// into `sink` (the output `out`, named in errors), counted in `summary`.
pub(crate) fn write_tensor(
    out: &Path,
    decl: &TensorDecl,
    bytes: &[u8],
    sink: &mut dyn std::io::Write,
    summary: &mut ConvertSummary,
) -> Result<(), ConvertError> {
    summary.parameters += decl.n_elements();
    summary.bytes += bytes.len() as u64;
    sink.write_all(bytes).map_err(|error| ConvertError::Io {
        path: out.to_owned(),
        error,
    })
}

/// Writes the LLM of the checkpoint in `dir` (a LLaMA/Mistral model, or the language model of
/// a LLaVA checkpoint) to `out`, with the types `preset` chooses per tensor.
pub fn convert_llama(
    dir: &Path,
    out: &Path,
    preset: Preset,
) -> Result<ConvertSummary, ConvertError> {
    convert_llama_with(dir, out, preset, &mut Silent)
}

/// `convert_llama`, reporting each tensor to `monitor`.
pub fn convert_llama_with(
    dir: &Path,
    out: &Path,
    preset: Preset,
    monitor: &mut dyn Monitor,
) -> Result<ConvertSummary, ConvertError> {
    let src = Source::open(dir)?;
    let text_config = src.text_config();
    let hp = LlamaHparams::from_config(&text_config)?;
    // The tensors first: their shapes check the config (the vocabulary is then bounded by
    // the embedding rows the checkpoint really has).
    let plan = plan_tensors(&hp, &src, preset)?;
    let tokenizer_config = JsonFile::open_optional(&dir.join("tokenizer_config.json"))?;
    // tokenizer.json when present (it has the added tokens, e.g. llava-hf's <image>); else
    // SentencePiece's tokenizer.model, as the original LLaVA and Vicuna repositories ship.
    let vocab_meta = match JsonFile::open_optional(&dir.join("tokenizer.json"))? {
        Some(tokenizer) => vocab::spm_metadata(
            &tokenizer,
            &text_config,
            tokenizer_config.as_ref(),
            hp.vocab_size,
        )?,
        None => {
            let path = dir.join("tokenizer.model");
            if !path.exists() {
                return Err(ConvertError::Input {
                    path: dir.to_owned(),
                    reason: "no tokenizer.json or tokenizer.model".into(),
                });
            }
            let model = crate::spm_model::SpmModel::open(&path)?;
            vocab::spm_metadata_from_model(&model, &path, tokenizer_config.as_ref(), hp.vocab_size)?
        }
    };
    let mut vocab_meta = vocab_meta;
    if let Some(t) = vocab::chat_template(dir, tokenizer_config.as_ref())? {
        vocab_meta.push((keys::CHAT_TEMPLATE, t.into()));
    }
    let mut w = GgufWriter::new();
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    for (k, v) in llama_metadata(&hp, &name, preset) {
        w.add(&k, v)?;
    }
    for (k, v) in vocab_meta {
        w.add(k, v)?;
    }
    for p in &plan {
        w.add_tensor(&p.gguf_name, p.ty, &p.shape)?;
    }

    let mut summary = ConvertSummary::new(plan.len());
    let source_bytes = |p: &Planned| src.ckpt.byte_len(&p.hf_name).unwrap_or(0);
    monitor.begin(plan.len(), plan.iter().map(source_bytes).sum());
    w.write(out, |i, decl, sink| -> Result<(), ConvertError> {
        let p = &plan[i];
        let mut data = src.ckpt.to_f32(&p.hf_name)?;
        if let Layout::PermuteHeads(n_heads) = p.layout {
            data = permute_heads(&data, n_heads, p.shape[0] as usize);
        }
        let bytes = quantize_tensor(&p.gguf_name, p.ty, &data, p.shape[0] as usize)?;
        write_tensor(out, decl, &bytes, sink, &mut summary)?;
        tensor_written(monitor, decl, Some(&data), &bytes, source_bytes(p))
    })?;
    Ok(summary)
}

/// The `general.*` and `llama.*` keys of an LLM file.
pub(crate) fn llama_metadata(
    hp: &LlamaHparams,
    name: &str,
    preset: Preset,
) -> Vec<(String, MetaValue)> {
    let a = "llama";
    let mut kv: Vec<(String, MetaValue)> = vec![
        (KEY_ARCHITECTURE.into(), a.into()),
        (KEY_NAME.into(), name.into()),
        (KEY_FILE_TYPE.into(), preset.file_type().into()),
        ("general.quantization_version".into(), 2u32.into()),
        (
            llm::key(a, llm::CONTEXT_LENGTH),
            (hp.n_ctx_train as u32).into(),
        ),
        (
            llm::key(a, llm::EMBEDDING_LENGTH),
            (hp.hidden_size as u32).into(),
        ),
        (llm::key(a, llm::BLOCK_COUNT), (hp.n_layers as u32).into()),
        (
            llm::key(a, llm::FEED_FORWARD_LENGTH),
            (hp.ffn_size as u32).into(),
        ),
        (llm::key(a, llm::HEAD_COUNT), (hp.n_heads as u32).into()),
        (
            llm::key(a, llm::HEAD_COUNT_KV),
            (hp.n_kv_heads as u32).into(),
        ),
        (llm::key(a, llm::RMS_EPSILON), (hp.rms_eps as f32).into()),
        (
            llm::key(a, llm::ROPE_FREQ_BASE),
            (hp.rope_theta as f32).into(),
        ),
        (
            llm::key(a, llm::ROPE_DIMENSION_COUNT),
            ((hp.hidden_size / hp.n_heads) as u32).into(),
        ),
        (format!("{a}.vocab_size"), (hp.vocab_size as u32).into()),
    ];
    if let Some(f) = hp.rope_linear_factor {
        kv.push((llm::key(a, llm::ROPE_SCALING_TYPE), "linear".into()));
        kv.push((llm::key(a, llm::ROPE_SCALING_FACTOR), (f as f32).into()));
    }
    kv
}

/// The ggml-order shapes of a LLaMA model's tensors, with their Hugging Face names and
/// layouts, in llama.cpp's order.
fn plan_tensors(
    hp: &LlamaHparams,
    src: &Source,
    preset: Preset,
) -> Result<Vec<Planned>, ConvertError> {
    let ckpt = &src.ckpt;
    let h = hp.hidden_size;
    let head_dim = h / hp.n_heads;
    let (q_dim, kv_dim) = (hp.n_heads * head_dim, hp.n_kv_heads * head_dim);
    let mut plan = Vec::new();
    let mut add = |gguf: String, hf: String, torch_shape: &[usize], layout| {
        let shape = ckpt
            .shape(&hf)
            .ok_or_else(|| ConvertError::MissingTensor { name: hf.clone() })?;
        if shape != torch_shape {
            return Err(ConvertError::WrongShape {
                name: hf,
                shape: shape.to_vec(),
                expected: torch_shape.to_vec(),
            });
        }
        let ne: Vec<u64> = torch_shape.iter().rev().map(|&d| d as u64).collect();
        let ty = preset.tensor_type(&gguf, &ne, hp.n_layers);
        plan.push(Planned {
            gguf_name: gguf,
            hf_name: hf,
            shape: ne,
            ty,
            layout,
        });
        Ok(())
    };
    let v = hp.vocab_size;
    add(
        "token_embd.weight".into(),
        src.llm_name("embed_tokens.weight"),
        &[v, h],
        Layout::AsIs,
    )?;
    for i in 0..hp.n_layers {
        let g = |n: &str| format!("blk.{i}.{n}.weight");
        let t = |n: &str| src.llm_name(&format!("layers.{i}.{n}.weight"));
        let ff = hp.ffn_size;
        add(g("attn_norm"), t("input_layernorm"), &[h], Layout::AsIs)?;
        add(
            g("attn_q"),
            t("self_attn.q_proj"),
            &[q_dim, h],
            Layout::PermuteHeads(hp.n_heads),
        )?;
        add(
            g("attn_k"),
            t("self_attn.k_proj"),
            &[kv_dim, h],
            Layout::PermuteHeads(hp.n_kv_heads),
        )?;
        add(
            g("attn_v"),
            t("self_attn.v_proj"),
            &[kv_dim, h],
            Layout::AsIs,
        )?;
        add(
            g("attn_output"),
            t("self_attn.o_proj"),
            &[h, q_dim],
            Layout::AsIs,
        )?;
        add(
            g("ffn_norm"),
            t("post_attention_layernorm"),
            &[h],
            Layout::AsIs,
        )?;
        add(g("ffn_gate"), t("mlp.gate_proj"), &[ff, h], Layout::AsIs)?;
        add(g("ffn_up"), t("mlp.up_proj"), &[ff, h], Layout::AsIs)?;
        add(g("ffn_down"), t("mlp.down_proj"), &[h, ff], Layout::AsIs)?;
    }
    add(
        "output_norm.weight".into(),
        src.llm_name("norm.weight"),
        &[h],
        Layout::AsIs,
    )?;
    // Tied embeddings: no lm_head in the checkpoint, and llama.cpp reuses token_embd.
    if ckpt.contains(src.lm_head) {
        add(
            "output.weight".into(),
            src.lm_head.into(),
            &[v, h],
            Layout::AsIs,
        )?;
    }
    Ok(plan)
}

/// Within each head of `rows` (each `row_len` long), output row `2j + t` is input row
/// `t·hd/2 + j`: Hugging Face's rotate-half layout back to interleaved pairs.
fn permute_heads(data: &[f32], n_heads: usize, row_len: usize) -> Vec<f32> {
    let n_rows = data.len() / row_len;
    let head_dim = n_rows / n_heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_heads {
        for j in 0..half {
            for t in 0..2 {
                let src = h * head_dim + t * half + j;
                let dst = h * head_dim + 2 * j + t;
                out[dst * row_len..(dst + 1) * row_len]
                    .copy_from_slice(&data[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_interleaves_the_two_halves_of_each_head() {
        // 2 heads of 4 rows, rows of one element: [a0 a1 b0 b1 | c0 c1 d0 d1] with halves
        // (a, b) → [a0 b0 a1 b1 | c0 d0 c1 d1].
        let data = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0, 30.0, 31.0];
        let out = permute_heads(&data, 2, 1);
        assert_eq!(out, [0.0, 10.0, 1.0, 11.0, 20.0, 30.0, 21.0, 31.0]);
    }
}
