//! The LLaMA-architecture decoder (Vicuna, Mistral) from a llama.cpp-style GGUF file.
//!
//! Layer: `x += Wo·attn(rope(Wq n), rope(Wk n), Wv n)` with `n = RMSNorm(x)·g`, then
//! `x += Wdown(SiLU(Wgate n2) ⊙ Wup n2)`; after the last layer a final RMSNorm and `output`
//! (GGUF-AND-LLAVA.md §3, §7). The Q/K rows in the file are already permuted for adjacent-pair
//! (NORM) RoPE.

use llava_runtime::gguf::keys::llm;
use std::sync::Arc;

use llava_runtime::backend::{Backend, Heads, KvType, Rope};
use llava_runtime::gguf::{GgufFile, KEY_ARCHITECTURE};

use crate::error::ModelError;
use crate::weights;

/// Prompt rows [`Llama::forward`] runs through the layers at once; longer prompts go in
/// chunks of this many.
pub const PREFILL_CHUNK_ROWS: usize = 512;

/// Hyper-parameters read from the file.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Number of tokens in the vocabulary: `token_embd.weight`'s second dimension.
    pub n_vocab: usize,
    /// Width of the residual stream and of the token embeddings.
    pub hidden_size: usize,
    /// Number of decoder layers.
    pub n_layers: usize,
    /// Number of query heads; divides `hidden_size`.
    pub n_heads: usize,
    /// Number of key/value heads (grouped-query attention); divides `n_heads`. Equal to `n_heads`
    /// when the file does not say.
    pub n_kv_heads: usize,
    /// Elements per head: `hidden_size / n_heads`.
    pub head_dim: usize,
    /// Width of the SwiGLU feed-forward layer.
    pub ffn_size: usize,
    /// Epsilon of every RMSNorm.
    pub rms_eps: f32,
    /// Rotary embedding over the whole head, with the file's frequency base (10000 when absent)
    /// and linear scaling.
    pub rope: Rope,
    /// The context length the model was trained with.
    pub n_ctx_train: usize,
}

const ARCH: &str = "llama";

impl LlamaConfig {
    /// Reads and checks the hyper-parameters of a `llama` GGUF file. Fails if the architecture is
    /// not `llama`, a key is missing or inconsistent, or `token_embd.weight` is absent.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        let arch = file.get_str(KEY_ARCHITECTURE)?;
        if arch != ARCH {
            return Err(ModelError::UnknownArchitecture {
                path: file.path().to_owned(),
                arch: arch.to_owned(),
            });
        }
        let key = |k: &str| llm::key(ARCH, k);
        let usize_of =
            |k: &str| -> Result<usize, ModelError> { Ok(file.get_u32(&key(k))? as usize) };
        let bad = |k: &str, reason: String| ModelError::BadConfig {
            path: file.path().to_owned(),
            key: key(k),
            reason,
        };

        let hidden_size = usize_of(llm::EMBEDDING_LENGTH)?;
        let n_layers = usize_of(llm::BLOCK_COUNT)?;
        let n_heads = usize_of(llm::HEAD_COUNT)?;
        let n_kv_heads = match file.optional(&key(llm::HEAD_COUNT_KV), GgufFile::get_u32)? {
            Some(n) => n as usize,
            None => n_heads,
        };
        if n_heads == 0 || hidden_size % n_heads != 0 {
            return Err(bad(
                llm::HEAD_COUNT,
                format!("{n_heads} heads do not divide the hidden size {hidden_size}"),
            ));
        }
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(bad(
                llm::HEAD_COUNT_KV,
                format!("{n_kv_heads} KV heads do not divide {n_heads} query heads"),
            ));
        }
        let head_dim = hidden_size / n_heads;
        let ffn_size = match file.get(&key(llm::FEED_FORWARD_LENGTH)) {
            Some(llava_runtime::gguf::Value::Array(_)) => {
                return Err(bad(
                    llm::FEED_FORWARD_LENGTH,
                    "per-layer feed-forward sizes are not supported".into(),
                ))
            }
            _ => usize_of(llm::FEED_FORWARD_LENGTH)?,
        };
        let rms_eps = file.get_f32(&key(llm::RMS_EPSILON))?;
        let n_rot = match file.optional(&key(llm::ROPE_DIMENSION_COUNT), GgufFile::get_u32)? {
            Some(n) => n as usize,
            None => head_dim,
        };
        if n_rot != head_dim {
            return Err(bad(
                llm::ROPE_DIMENSION_COUNT,
                format!("{n_rot}, but llama rotates the whole head of {head_dim}"),
            ));
        }
        // RoPE rotates pairs of dimensions; an odd head loaded, then failed the first forward.
        if !n_rot.is_multiple_of(2) {
            return Err(bad(
                llm::ROPE_DIMENSION_COUNT,
                format!("{n_rot} is odd, but RoPE rotates pairs of dimensions"),
            ));
        }
        let base = file
            .optional(&key(llm::ROPE_FREQ_BASE), GgufFile::get_f32)?
            .unwrap_or(10_000.0);
        let freq_scale = rope_freq_scale(file, &key)?;
        let n_ctx_train = usize_of(llm::CONTEXT_LENGTH)?;
        let n_vocab = file
            .tensor("token_embd.weight")
            .and_then(|t| t.shape().get(1).copied())
            .ok_or_else(|| ModelError::MissingTensor {
                path: file.path().to_owned(),
                name: "token_embd.weight".into(),
            })? as usize;

        Ok(LlamaConfig {
            n_vocab,
            hidden_size,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_size,
            rms_eps,
            rope: Rope {
                n_rot,
                base,
                freq_scale,
            },
            n_ctx_train,
        })
    }

    fn heads(&self) -> Heads {
        Heads {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }
}

/// Linear RoPE scaling: `rope.scaling.type = "linear"` with `rope.scaling.factor`, or the older
/// `rope.scale_linear`. Other scaling types are refused rather than silently ignored.
fn rope_freq_scale(file: &GgufFile, key: &dyn Fn(&str) -> String) -> Result<f32, ModelError> {
    let kind = file.optional(&key(llm::ROPE_SCALING_TYPE), |f, k| {
        f.get_str(k).map(str::to_owned)
    })?;
    let factor = match kind.as_deref() {
        None | Some("none") => file.optional(&key(llm::ROPE_SCALE_LINEAR), GgufFile::get_f32)?,
        Some("linear") => file.optional(&key(llm::ROPE_SCALING_FACTOR), GgufFile::get_f32)?,
        Some(other) => {
            return Err(ModelError::BadConfig {
                path: file.path().to_owned(),
                key: key(llm::ROPE_SCALING_TYPE),
                reason: format!("{other:?} RoPE scaling is not supported"),
            })
        }
    };
    Ok(match factor {
        Some(f) if f > 0.0 => 1.0 / f,
        _ => 1.0,
    })
}

struct Layer<B: Backend> {
    attn_norm: B::Weight,
    wq: B::Weight,
    wk: B::Weight,
    wv: B::Weight,
    wo: B::Weight,
    ffn_norm: B::Weight,
    w_gate: B::Weight,
    w_up: B::Weight,
    w_down: B::Weight,
}

/// A loaded LLaMA model.
pub struct Llama<B: Backend> {
    /// Hyper-parameters read from the file.
    pub config: LlamaConfig,
    token_embd: B::Weight,
    output_norm: B::Weight,
    /// `token_embd` again when the file has no `output.weight` (tied embeddings).
    output: B::Weight,
    layers: Vec<Layer<B>>,
}

impl<B: Backend> Llama<B> {
    /// Loads every weight of a `llama` GGUF file. Fails as [`LlamaConfig::from_gguf`] does, or
    /// if a tensor is missing or has the wrong shape, or if the backend cannot load a weight.
    pub fn load(backend: &B, file: &Arc<GgufFile>) -> Result<Self, ModelError> {
        let c = LlamaConfig::from_gguf(file)?;
        let (h, ff, v) = (c.hidden_size as u64, c.ffn_size as u64, c.n_vocab as u64);
        let q_dim = (c.n_heads * c.head_dim) as u64;
        let kv_dim = (c.n_kv_heads * c.head_dim) as u64;
        let load = |name: &str, shape: &[u64]| weights::load(backend, file, name, shape);

        let token_embd = load("token_embd.weight", &[h, v])?;
        let output_norm = load("output_norm.weight", &[h])?;
        let output = if file.tensor("output.weight").is_some() {
            load("output.weight", &[h, v])?
        } else {
            load("token_embd.weight", &[h, v])?
        };
        let layers = (0..c.n_layers)
            .map(|i| {
                let w = |n: &str, shape: &[u64]| load(&format!("blk.{i}.{n}.weight"), shape);
                Ok(Layer {
                    attn_norm: w("attn_norm", &[h])?,
                    wq: w("attn_q", &[h, q_dim])?,
                    wk: w("attn_k", &[h, kv_dim])?,
                    wv: w("attn_v", &[h, kv_dim])?,
                    wo: w("attn_output", &[q_dim, h])?,
                    ffn_norm: w("ffn_norm", &[h])?,
                    w_gate: w("ffn_gate", &[h, ff])?,
                    w_up: w("ffn_up", &[h, ff])?,
                    w_down: w("ffn_down", &[ff, h])?,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Llama {
            config: c,
            token_embd,
            output_norm,
            output,
            layers,
        })
    }

    /// A KV cache for `n_ctx` positions, storing `kv_type`.
    pub fn new_cache(
        &self,
        backend: &B,
        n_ctx: usize,
        kv_type: KvType,
    ) -> Result<B::KvCache, ModelError> {
        let c = &self.config;
        Ok(backend.new_kv_cache(c.n_layers, n_ctx, c.n_kv_heads, c.head_dim, kv_type)?)
    }

    /// Bytes of a KV cache of `n_ctx` positions storing `kv_type` (keys and values of every
    /// layer), for checking it fits before it is made.
    pub fn cache_bytes(&self, n_ctx: usize, kv_type: KvType) -> u128 {
        let c = &self.config;
        let elem = match kv_type {
            KvType::F32 => 4u128,
            KvType::F16 => 2,
        };
        2 * c.n_layers as u128 * n_ctx as u128 * c.n_kv_heads as u128 * c.head_dim as u128 * elem
    }

    /// Embedding rows of `tokens`, `[tokens, hidden]`. Ids must be below `n_vocab`.
    pub fn embed(&self, backend: &B, tokens: &[u32]) -> B::Tensor {
        backend.get_rows(&self.token_embd, tokens)
    }

    /// Runs embeddings `x` `[rows, hidden]` at positions `start..start + rows` through the
    /// decoder, appending their keys and values to `cache`, and returns the logits of every row
    /// (`last_only = false`) or of the last row only.
    ///
    /// A prompt longer than [`PREFILL_CHUNK_ROWS`] runs in chunks of that many rows, one after
    /// the other through all the layers (as llama.cpp's micro-batches): each chunk's attention
    /// reads the earlier chunks' keys and values from the cache, as a single pass would (the
    /// cache is written before it is read either way), while a layer's activations stay a few
    /// MB instead of growing with the prompt (a 2,880-position LLaVA-1.6 image through
    /// Mistral-7B's 14,336-wide feed-forward layer: 165 MB per buffer, several alive at once).
    pub fn forward(
        &self,
        backend: &B,
        x: B::Tensor,
        start: usize,
        cache: &mut B::KvCache,
        last_only: bool,
    ) -> B::Tensor {
        self.forward_in_chunks(backend, x, start, cache, last_only, PREFILL_CHUNK_ROWS)
    }

    /// [`Llama::forward`] with chunks of `chunk_rows` rows (at least 1; `usize::MAX`: one
    /// pass), for tests that hold the chunked pass to the single one.
    pub fn forward_in_chunks(
        &self,
        backend: &B,
        x: B::Tensor,
        start: usize,
        cache: &mut B::KvCache,
        last_only: bool,
        chunk_rows: usize,
    ) -> B::Tensor {
        assert!(chunk_rows > 0, "chunks of no rows");
        let (rows, _) = backend.shape(&x);
        if rows <= chunk_rows {
            let x = self.layers(backend, x, start, cache);
            return self.logits(backend, x, last_only);
        }
        let mut logits = Vec::new();
        for first in (0..rows).step_by(chunk_rows) {
            let len = chunk_rows.min(rows - first);
            let chunk = backend.slice_rows(&x, first, len);
            let h = self.layers(backend, chunk, start + first, cache);
            let last = first + len == rows;
            if !last_only || last {
                logits.push(self.logits(backend, h, last_only));
            }
        }
        if logits.len() == 1 {
            return logits.pop().expect("one chunk's logits");
        }
        backend.concat_rows(&logits.iter().collect::<Vec<_>>())
    }

    /// The decoder layers over `x`, at positions `start..`, appending to `cache`.
    fn layers(&self, backend: &B, x: B::Tensor, start: usize, cache: &mut B::KvCache) -> B::Tensor {
        let c = &self.config;
        let mut x = x;
        for (i, l) in self.layers.iter().enumerate() {
            let n = backend.rms_norm(&x, &l.attn_norm, c.rms_eps);
            let q = backend.rope(&backend.matmul(&n, &l.wq), start, c.n_heads, c.rope);
            let k = backend.rope(&backend.matmul(&n, &l.wk), start, c.n_kv_heads, c.rope);
            let v = backend.matmul(&n, &l.wv);
            let a = backend.attention_cached(&q, &k, &v, cache, i, start, c.heads());
            x = backend.add(x, &backend.matmul(&a, &l.wo));

            let n = backend.rms_norm(&x, &l.ffn_norm, c.rms_eps);
            let g = backend.silu_mul(backend.matmul(&n, &l.w_gate), &backend.matmul(&n, &l.w_up));
            x = backend.add(x, &backend.matmul(&g, &l.w_down));
        }
        x
    }

    /// The final norm and the output matmul: the logits of every row of `x`, or of its last.
    fn logits(&self, backend: &B, x: B::Tensor, last_only: bool) -> B::Tensor {
        let c = &self.config;
        let (rows, _) = backend.shape(&x);
        let mut x = x;
        if last_only && rows > 1 {
            x = backend.slice_rows(&x, rows - 1, 1);
        }
        let n = backend.rms_norm(&x, &self.output_norm, c.rms_eps);
        backend.matmul(&n, &self.output)
    }
}
