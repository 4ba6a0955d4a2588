//! `tokenizer.json` (a LLaMA-style BPE with byte fallback) → llama.cpp's SentencePiece metadata.
//!
//! llama.cpp tokenizes `tokenizer.ggml.model = "llama"` by repeatedly merging the adjacent pair
//! whose concatenation has the highest score. Giving the token made by merge `i` the score `-i`
//! makes that order the BPE merge order, which is also how SentencePiece's own BPE models score
//! their pieces.

use std::collections::HashMap;
use std::path::Path;

use llava_runtime::gguf::{MetaArray, MetaValue};
use serde_json::Value;

use crate::error::ConvertError;
use crate::hf_config::JsonFile;

// llama.cpp token types (GGUF-AND-LLAVA.md §3).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// The `tokenizer.*` metadata for a LLaMA-family model whose embedding matrix has `n_vocab`
/// rows (checked against the checkpoint): every token id must be below it, and rows without a
/// token get a `[PAD<id>]` one, as llama.cpp's converter writes them.
pub fn spm_metadata(
    tokenizer: &JsonFile,
    config: &JsonFile,
    tokenizer_config: Option<&JsonFile>,
    n_vocab: usize,
) -> Result<Vec<(&'static str, MetaValue)>, ConvertError> {
    let bad = |reason: String| ConvertError::Input {
        path: tokenizer.path.clone(),
        reason,
    };
    let model = tokenizer
        .get("model")
        .ok_or_else(|| bad("no \"model\"".into()))?;
    let kind = model.get("type").and_then(Value::as_str).unwrap_or("");
    let byte_fallback = model.get("byte_fallback").and_then(Value::as_bool) == Some(true);
    if kind != "BPE" || !byte_fallback {
        return Err(bad(format!(
            "a {kind} tokenizer{} is not supported; expected a LLaMA-style BPE with byte fallback",
            if byte_fallback {
                ""
            } else {
                " without byte fallback"
            }
        )));
    }

    let mut by_id: HashMap<u32, (String, i32)> = HashMap::new();
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("model.vocab is not an object".into()))?;
    if vocab.is_empty() {
        return Err(bad(
            "model.vocab is empty: the tokenizer has no tokens".into()
        ));
    }
    // Ids index the embedding rows; a larger one would size the token table by itself.
    let checked_id = |text: &str, id: Option<u64>| {
        id.filter(|&i| i < n_vocab as u64)
            .map(|i| i as u32)
            .ok_or_else(|| {
                bad(format!(
                    "token {text:?} has id {}, but the model has {n_vocab} embedding rows",
                    id.map_or("none".to_owned(), |i| i.to_string())
                ))
            })
    };
    let unk = model.get("unk_token").and_then(Value::as_str);
    for (text, id) in vocab {
        let id = checked_id(text, id.as_u64())?;
        let ty = if Some(text.as_str()) == unk {
            UNKNOWN
        } else if is_byte_token(text) {
            BYTE
        } else {
            NORMAL
        };
        by_id.insert(id, (text.clone(), ty));
    }
    for added in tokenizer
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(text)) = (
            added.get("id").and_then(Value::as_u64),
            added.get("content").and_then(Value::as_str),
        ) else {
            return Err(bad("an added token lacks an id or content".into()));
        };
        let id = checked_id(text, Some(id))?;
        let special = added.get("special").and_then(Value::as_bool) == Some(true);
        let ty = match by_id.get(&id) {
            Some((_, UNKNOWN)) => UNKNOWN,
            _ if special => CONTROL,
            _ => USER_DEFINED,
        };
        by_id.insert(id, (text.to_owned(), ty));
    }

    // Score = -(rank of the merge that creates the token).
    let mut merge_rank: HashMap<String, usize> = HashMap::new();
    for (rank, m) in model
        .get("merges")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let merged = match m {
            Value::String(s) => s.split_once(' ').map(|(a, b)| format!("{a}{b}")),
            Value::Array(pair) => match (pair.first(), pair.get(1)) {
                (Some(Value::String(a)), Some(Value::String(b))) => Some(format!("{a}{b}")),
                _ => None,
            },
            _ => None,
        }
        .ok_or_else(|| bad(format!("merge {rank} is not a pair")))?;
        merge_rank.entry(merged).or_insert(rank);
    }

    let mut tokens = Vec::with_capacity(n_vocab);
    let mut scores = Vec::with_capacity(n_vocab);
    let mut types = Vec::with_capacity(n_vocab);
    for id in 0..n_vocab as u32 {
        let (text, ty) = by_id
            .get(&id)
            .cloned()
            .unwrap_or_else(|| (format!("[PAD{id}]"), USER_DEFINED));
        let score = match merge_rank.get(&text) {
            Some(&rank) => -(rank as f32),
            // Not reachable by merging: ranked after every merge, so llama.cpp never prefers it.
            None if ty == NORMAL && text.chars().count() > 1 => -((merge_rank.len() + 1) as f32),
            None => 0.0,
        };
        tokens.push(text);
        scores.push(score);
        types.push(ty);
    }

    let id_of = |text: &str| tokens.iter().position(|t| t == text).map(|i| i as u32);
    let special_id = |key: &str| -> Result<Option<u32>, ConvertError> {
        match config.usize_opt(key)? {
            Some(i) if i < n_vocab => Ok(Some(i as u32)),
            Some(i) => Err(ConvertError::Config {
                path: config.path.clone(),
                key: key.to_owned(),
                reason: format!("{i} is not below the {n_vocab} tokens"),
            }),
            None => Ok(None),
        }
    };
    let bos = special_id("bos_token_id")?.or_else(|| id_of("<s>"));
    let eos = special_id("eos_token_id")?.or_else(|| id_of("</s>"));
    let add_bos = match tokenizer_config
        .map(|c| c.bool_opt("add_bos_token"))
        .transpose()?
    {
        Some(Some(b)) => b,
        _ => post_processor_adds_bos(tokenizer),
    };

    let unk_id = unk.and_then(id_of);
    let mut meta: Vec<(&'static str, MetaValue)> = vec![
        ("tokenizer.ggml.model", "llama".into()),
        ("tokenizer.ggml.tokens", MetaArray::String(tokens).into()),
        ("tokenizer.ggml.scores", MetaArray::F32(scores).into()),
        ("tokenizer.ggml.token_type", MetaArray::I32(types).into()),
    ];
    if let Some(id) = bos {
        meta.push(("tokenizer.ggml.bos_token_id", MetaValue::U32(id)));
    }
    if let Some(id) = eos {
        meta.push(("tokenizer.ggml.eos_token_id", MetaValue::U32(id)));
    }
    if let Some(id) = unk_id {
        meta.push(("tokenizer.ggml.unknown_token_id", MetaValue::U32(id)));
    }
    meta.push(("tokenizer.ggml.add_bos_token", add_bos.into()));
    meta.push(("tokenizer.ggml.add_eos_token", false.into()));
    meta.push((
        "tokenizer.ggml.add_space_prefix",
        adds_space_prefix(tokenizer).into(),
    ));
    meta.push((
        "tokenizer.huggingface.json",
        serde_json::to_string(&tokenizer.json)
            .expect("a parsed JSON value serialises")
            .into(),
    ));
    Ok(meta)
}

/// `<0x0A>`-style byte-fallback tokens.
fn is_byte_token(text: &str) -> bool {
    text.len() == 6
        && text.starts_with("<0x")
        && text.ends_with('>')
        && text[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// Whether the post-processor template starts with a special token (BOS).
fn post_processor_adds_bos(tokenizer: &JsonFile) -> bool {
    tokenizer
        .get("post_processor.single")
        .and_then(Value::as_array)
        .and_then(|items| items.first())
        .is_some_and(|first| first.get("SpecialToken").is_some())
}

/// LLaMA tokenizers mark a dummy leading space: a `Prepend("▁")` normaliser, or (older files) a
/// Metaspace pre-tokenizer that prepends.
fn adds_space_prefix(tokenizer: &JsonFile) -> bool {
    let prepends = |v: &Value| {
        v.get("type").and_then(Value::as_str) == Some("Prepend")
            && v.get("prepend").and_then(Value::as_str) == Some("▁")
    };
    let normalizer = tokenizer.get("normalizer");
    let in_normalizer = normalizer.is_some_and(|n| {
        prepends(n)
            || n.get("normalizers")
                .and_then(Value::as_array)
                .is_some_and(|list| list.iter().any(prepends))
    });
    let in_metaspace = tokenizer.get("pre_tokenizer").is_some_and(|p| {
        p.get("type").and_then(Value::as_str) == Some("Metaspace")
            && p.get("prepend_scheme").and_then(Value::as_str) != Some("never")
    });
    in_normalizer || in_metaspace
}

/// The `tokenizer.*` metadata from a SentencePiece `tokenizer.model` (checkpoints without a
/// tokenizer.json, such as the original LLaVA and Vicuna repositories): its own pieces,
/// scores and types, as llama.cpp's converter copies them, padded to the `n_vocab` embedding
/// rows of the model.
pub fn spm_metadata_from_model(
    model: &crate::spm_model::SpmModel,
    path: &std::path::Path,
    tokenizer_config: Option<&JsonFile>,
    n_vocab: usize,
) -> Result<Vec<(&'static str, MetaValue)>, ConvertError> {
    if model.pieces.is_empty() || model.pieces.len() > n_vocab {
        return Err(ConvertError::Input {
            path: path.to_owned(),
            reason: format!(
                "{} pieces, but the model has {n_vocab} embedding rows",
                model.pieces.len()
            ),
        });
    }
    let mut tokens = Vec::with_capacity(n_vocab);
    let mut scores = Vec::with_capacity(n_vocab);
    let mut types = Vec::with_capacity(n_vocab);
    for p in &model.pieces {
        tokens.push(p.text.clone());
        scores.push(p.score);
        types.push(p.kind);
    }
    // Rows the model has beyond the tokenizer (padded vocabularies).
    for id in model.pieces.len()..n_vocab {
        tokens.push(format!("[PAD{id}]"));
        scores.push(0.0);
        types.push(USER_DEFINED);
    }
    let add_bos = match tokenizer_config
        .map(|c| c.bool_opt("add_bos_token"))
        .transpose()?
    {
        Some(Some(b)) => b,
        _ => true,
    };
    let mut meta: Vec<(&'static str, MetaValue)> = vec![
        ("tokenizer.ggml.model", "llama".into()),
        ("tokenizer.ggml.tokens", MetaArray::String(tokens).into()),
        ("tokenizer.ggml.scores", MetaArray::F32(scores).into()),
        ("tokenizer.ggml.token_type", MetaArray::I32(types).into()),
    ];
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", model.bos_id),
        ("tokenizer.ggml.eos_token_id", model.eos_id),
        ("tokenizer.ggml.unknown_token_id", model.unk_id),
    ] {
        if let Some(id) = id.filter(|&i| (i as usize) < n_vocab) {
            meta.push((key, MetaValue::U32(id)));
        }
    }
    meta.push(("tokenizer.ggml.add_bos_token", add_bos.into()));
    meta.push(("tokenizer.ggml.add_eos_token", false.into()));
    meta.push((
        "tokenizer.ggml.add_space_prefix",
        model.add_dummy_prefix.into(),
    ));
    Ok(meta)
}

/// The checkpoint's chat template (Jinja), where transformers keeps it: `chat_template.jinja`
/// (transformers 4.49 and later), else `chat_template.json`'s `chat_template` (the processor's,
/// as llava-hf repositories ship it), else `tokenizer_config.json`'s — a string, or a list of
/// named templates of which the one named "default" is taken.
pub(crate) fn chat_template(
    dir: &Path,
    tokenizer_config: Option<&JsonFile>,
) -> Result<Option<String>, ConvertError> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        llava_runtime::files::regular_file(&jinja).map_err(|e| ConvertError::Io {
            path: jinja.clone(),
            error: e,
        })?;
        let text = std::fs::read_to_string(&jinja).map_err(|e| ConvertError::Io {
            path: jinja.clone(),
            error: e,
        })?;
        return Ok(Some(text));
    }
    if let Some(file) = JsonFile::open_optional(&dir.join("chat_template.json"))? {
        if let Some(t) = file.str_opt("chat_template")? {
            return Ok(Some(t.to_owned()));
        }
    }
    let Some(config) = tokenizer_config else {
        return Ok(None);
    };
    Ok(match config.get("chat_template") {
        Some(serde_json::Value::String(t)) => Some(t.clone()),
        Some(serde_json::Value::Array(named)) => named
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_owned),
        _ => None,
    })
}
