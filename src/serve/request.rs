//! A chat-completion request body read into the worker's terms: its messages (images decoded)
//! and its generation settings, every field checked, each refusal a 400 that names the field.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use llava_models::GenerateOptions;
use llava_runtime::sample::SamplerConfig;
use serde_json::Value;

use super::images::image_from_url;
use super::text_limit::text_bytes;
use super::{ApiError, Message, Shared};

/// The messages and generation settings of a request body (unknown fields ignored).
pub(super) fn parse_request(
    s: &Shared,
    req: &Value,
) -> Result<(Vec<Message>, GenerateOptions), ApiError> {
    let Some(raw) = req["messages"].as_array().filter(|m| !m.is_empty()) else {
        return Err(ApiError::bad("messages must be a non-empty array"));
    };
    // Checked before anything is copied or decoded: text that cannot fit would otherwise be
    // tokenized on the worker thread, every other request waiting behind it.
    let n_ctx = s.n_ctx.load(Ordering::SeqCst);
    let max_text_bytes = s.max_text_bytes.load(Ordering::SeqCst);
    let text_bytes = text_bytes(raw, s.system_in_prompt.load(Ordering::SeqCst));
    if text_bytes > max_text_bytes {
        return Err(ApiError::bad(format!(
            "the messages hold {text_bytes} bytes of text, more than the context of {n_ctx} positions can hold ({} bytes a position at most)",
            max_text_bytes / n_ctx.max(1)
        )));
    }
    let mut messages = Vec::with_capacity(raw.len());
    let mut n_images = 0;
    let mut pixels_left = s.max_request_pixels;
    for (i, m) in raw.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or_default();
        if !matches!(role, "system" | "user" | "assistant") {
            return Err(ApiError::bad(format!(
                "messages[{i}].role must be system, user or assistant"
            )));
        }
        let mut text = String::new();
        let mut images = Vec::new();
        match &m["content"] {
            Value::String(t) => text.push_str(t),
            Value::Array(parts) => {
                for (j, part) in parts.iter().enumerate() {
                    match part["type"].as_str() {
                        Some("text") => text.push_str(part["text"].as_str().unwrap_or_default()),
                        Some("image_url") if role == "user" => {
                            n_images += 1;
                            if n_images > s.max_images {
                                return Err(ApiError::bad(format!(
                                    "more than {} images in one request",
                                    s.max_images
                                )));
                            }
                            let url = part["image_url"]["url"]
                                .as_str()
                                .or_else(|| part["image_url"].as_str())
                                .unwrap_or_default();
                            images.push(Arc::new(image_from_url(
                                s,
                                url,
                                &format!("messages[{i}].content[{j}]"),
                                &mut pixels_left,
                            )?));
                        }
                        _ => {
                            return Err(ApiError::bad(format!(
                                "messages[{i}].content[{j}]: only text parts, and image_url parts in user messages"
                            )))
                        }
                    }
                }
            }
            _ => {
                return Err(ApiError::bad(format!(
                    "messages[{i}].content must be a string or an array of parts"
                )))
            }
        }
        messages.push(Message {
            role: role.into(),
            text,
            images,
        });
    }
    if messages.last().map(|m| m.role.as_str()) != Some("user") {
        return Err(ApiError::bad("the last message must be the user's"));
    }
    let max_tokens = match req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
    {
        None | Some(Value::Null) => (n_ctx / 2).clamp(1, 1024),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && n as usize <= n_ctx => n as usize,
            _ => {
                return Err(ApiError::bad(format!(
                    "max_tokens must be a whole number from 1 to the context, {n_ctx}"
                )))
            }
        },
    };
    let number = |k: &str, default: f32| -> Result<f32, ApiError> {
        match req.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| ApiError::bad(format!("{k} must be a number"))),
        }
    };
    let seed = match req.get("seed") {
        None | Some(Value::Null) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        // Any 64-bit integer: a negative one keeps its bits.
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_i64().map(|x| x as u64))
            .ok_or_else(|| ApiError::bad("seed must be an integer"))?,
    };
    let stop = match req.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::bad("stop must be a string or up to 4 strings"))
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(ApiError::bad("stop must be a string or up to 4 strings")),
    };
    let sampler = SamplerConfig {
        temperature: number("temperature", 1.0)?,
        top_p: number("top_p", 1.0)?,
        frequency_penalty: number("frequency_penalty", 0.0)?,
        presence_penalty: number("presence_penalty", 0.0)?,
        // OpenAI's sampling has no top-k or min-p.
        top_k: 0,
        min_p: 0.0,
        seed,
        ..SamplerConfig::default()
    };
    sampler.check().map_err(ApiError::bad)?;
    Ok((
        messages,
        GenerateOptions {
            sampler,
            max_tokens,
            stop,
            ignore_eos: req["ignore_eos"].as_bool().unwrap_or(false),
        },
    ))
}
