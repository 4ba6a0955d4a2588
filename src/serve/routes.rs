//! The HTTP routes: the chat page, health, metrics, models, and chat completions (admission,
//! the body, its checks, the queue, then the answer whole or streamed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::TrySendError;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{json, Value};

use super::request::parse_request;
use super::stream::sse;
use super::{ApiError, Job, Reply, Shared};

pub(super) async fn page() -> Html<&'static str> {
    Html(include_str!("../serve_page.html"))
}

pub(super) async fn health() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

pub(super) async fn metrics(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&s, &headers) {
        return e.into_response();
    }
    let m = &s.metrics;
    let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
    let text = format!(
        "# TYPE llava_requests_total counter\nllava_requests_total {}\n\
         # TYPE llava_requests_refused_total counter\nllava_requests_refused_total {}\n\
         # TYPE llava_requests_failed_total counter\nllava_requests_failed_total {}\n\
         # TYPE llava_prompt_tokens_total counter\nllava_prompt_tokens_total {}\n\
         # TYPE llava_generated_tokens_total counter\nllava_generated_tokens_total {}\n\
         # TYPE llava_queue_depth gauge\nllava_queue_depth {}\n\
         # TYPE llava_requests_running gauge\nllava_requests_running {}\n\
         # TYPE llava_image_cache_hits_total counter\nllava_image_cache_hits_total {}\n\
         # TYPE llava_image_cache_misses_total counter\nllava_image_cache_misses_total {}\n\
         # TYPE llava_slot_reuses_total counter\nllava_slot_reuses_total {}\n",
        get(&m.requests),
        get(&m.refused),
        get(&m.failed),
        get(&m.prompt_tokens),
        get(&m.generated_tokens),
        get(&m.queued),
        get(&m.running),
        get(&m.cache_hits),
        get(&m.cache_misses),
        get(&m.slot_reuses),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

pub(super) async fn models(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&s, &headers) {
        return e.into_response();
    }
    axum::Json(json!({
        "object": "list",
        "data": [{ "id": s.model_id, "object": "model", "created": 0, "owned_by": "llava-edge" }]
    }))
    .into_response()
}

fn authorize(s: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &s.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            message: "a valid API key is needed (Authorization: Bearer KEY)".into(),
        })
    }
}

pub(super) async fn chat_completions(State(s): State<Arc<Shared>>, request: Request) -> Response {
    s.metrics.requests.fetch_add(1, Ordering::SeqCst);
    match start(&s, request).await {
        Ok(r) => r,
        Err(e) => {
            s.metrics.refused.fetch_add(1, Ordering::SeqCst);
            e.into_response()
        }
    }
}

/// The slowest average rate a body may come at once `--body-timeout` has passed: a phone's
/// upload (a few Mbit/s) is far above it, a client trickling bytes to hold its place is not.
const MIN_BODY_RATE: u64 = 64 << 10;

/// Reads a request's body, at most `max` bytes. It must keep coming: 408 when `timeout`
/// passes without a byte, or when, `timeout` after the start, it has come slower than
/// [`MIN_BODY_RATE`] on average. A slow but steady upload of a large body still gets in; a
/// client that sends its head and then nothing, or a byte now and then, gives its admission
/// permit back within about `timeout`.
async fn read_body(
    body: Body,
    max: usize,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let late = |why: String| ApiError {
        status: StatusCode::REQUEST_TIMEOUT,
        kind: "invalid_request_error",
        message: format!("the request body {why} (--body-timeout)"),
    };
    let started = tokio::time::Instant::now();
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(timeout, stream.next())
            .await
            .map_err(|_| late(format!("sent nothing for {} s", timeout.as_secs())))?;
        let Some(chunk) = next else {
            return Ok(out);
        };
        let chunk = chunk.map_err(|e| ApiError::bad(format!("the request body: {e}")))?;
        if out.len() + chunk.len() > max {
            return Err(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                kind: "invalid_request_error",
                message: format!("the request body is larger than {max} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
        let elapsed = started.elapsed();
        if elapsed > timeout && (out.len() as f64) < MIN_BODY_RATE as f64 * elapsed.as_secs_f64() {
            return Err(late(format!(
                "came at {:.0} bytes/s after {} s, below {} KiB/s",
                out.len() as f64 / elapsed.as_secs_f64(),
                timeout.as_secs(),
                MIN_BODY_RATE >> 10
            )));
        }
    }
}

/// Checks and queues a request; the response streams or waits for the answer.
async fn start(s: &Arc<Shared>, request: Request) -> Result<Response, ApiError> {
    authorize(s, request.headers())?;
    let busy = |why: &str| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: "server_error",
        message: format!("the server is busy: {why}"),
    };
    // Admitted before anything is read: the body, its JSON and its images take memory only
    // for requests the server can run. The permit is held until this returns, or by the
    // stream when streamed, so it comes back when the answer is sent or its client leaves.
    let permit = Arc::clone(&s.admission)
        .try_acquire_owned()
        .map_err(|_| busy("too many requests waiting"))?;
    let body = read_body(request.into_body(), s.max_body, s.body_timeout).await?;
    let req: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))?;
    drop(body);
    let stream = req["stream"].as_bool().unwrap_or(false);
    let (messages, options) = {
        let s = Arc::clone(s);
        tokio::task::spawn_blocking(move || parse_request(&s, &req))
            .await
            .map_err(|e| ApiError::bad(format!("the request could not be read: {e}")))??
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    s.metrics.queued.fetch_add(1, Ordering::SeqCst);
    if let Err(e) = s.jobs.try_send(Job {
        messages,
        options,
        replies: tx,
    }) {
        s.metrics.queued.fetch_sub(1, Ordering::SeqCst);
        return Err(match e {
            // Only when the worker still runs jobs whose clients left (their permits are back).
            TrySendError::Full(_) => busy("too many requests waiting"),
            TrySendError::Disconnected(_) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "server_error",
                message: "the server is stopping".into(),
            },
        });
    }
    let worker_stopped = || ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "server_error",
        message: "the worker stopped".into(),
    };
    let id = format!("chatcmpl-{:x}", rand_id());
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let model = s.model_id.clone();
    if stream {
        // The worker's first reply comes once the request is checked, its prompt run and its
        // first token sampled: a refusal before then gets its own status, not an event in a
        // 200 stream.
        let first_reply = match rx.recv().await {
            Some(Reply::Failed(e)) => return Err(e),
            Some(reply) => reply,
            None => return Err(worker_stopped()),
        };
        return Ok(sse(rx, first_reply, permit, id, created, model));
    }
    let mut content = String::new();
    loop {
        match rx.recv().await {
            Some(Reply::Text(t)) => content.push_str(&t),
            Some(Reply::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            }) => {
                return Ok(axum::Json(json!({
                    "id": id, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{
                        "index": 0,
                        "message": { "role": "assistant", "content": content },
                        "finish_reason": finish_reason
                    }],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens
                    }
                }))
                .into_response())
            }
            Some(Reply::Failed(e)) => return Err(e),
            None => return Err(worker_stopped()),
        }
    }
}

/// A process-unique id for completions: the time and a counter.
fn rand_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ COUNTER
        .fetch_add(1, Ordering::SeqCst)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}
