//! `llava serve`: an OpenAI-compatible HTTP server (`POST /v1/chat/completions`, streaming as
//! server-sent events), `GET /v1/models`, `GET /health`, Prometheus `GET /metrics`, and a chat
//! page at `GET /`.
//!
//! One worker thread owns the models and `--parallel` conversation slots, and runs the requests
//! in turn from a bounded queue. A request is admitted before its body is read: beyond the one
//! running and `--queue` more, it gets 503 with `Retry-After` at once, so no more requests than
//! that read, parse and decode images at a time (each within `--max-request-pixels`). A slot
//! whose conversation the request continues (the same messages, then a new user message)
//! prefills only the new message; otherwise the least recently used slot is rebuilt from
//! nothing, system prompt included. A streamed answer's headers wait for the worker's first
//! reply, so a request the worker refuses gets its 4xx status as when not streamed. A client
//! that goes away cancels its generation at the next token. SIGTERM or Ctrl-C stops accepting,
//! lets the requests in flight finish for up to `--shutdown-timeout` seconds, then cancels
//! them, and the process exits 0.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use llava_models::image::{decode_image, ImageError, RgbImage};
use llava_models::template::{Template, IMAGE_MARKER};
use llava_models::{Error as ModelError, GenerateOptions, Pipeline, StopReason};
use llava_runtime::sample::SamplerConfig;
use llava_runtime::tokenizer::{Tokenizer, TokenizerKind};
use serde_json::{json, Value};

use crate::load::{describe_pipeline, load_pipeline, Chosen, Stages};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  llava serve -m llava-v1.5-7b.Q4_K_M.gguf --mmproj mmproj-llava-v1.5-7b.gguf --port 8080
  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}], \"max_tokens\": 32}'

Open http://127.0.0.1:8080/ in a browser for the chat page.")]
pub struct Args {
    #[command(flatten)]
    pub models: crate::load::ModelArgs,
    /// Address to listen on (loopback by default: only this machine can connect).
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on (0: any free port; the one chosen is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Conversation slots kept (each a KV cache); requests run in turn.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallel: u16,
    /// Requests waiting beyond the one running; more get 503 before their body is read.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=4096))]
    queue: u16,
    /// Require `Authorization: Bearer KEY` on the API.
    #[arg(long)]
    api_key: Option<String>,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_body_mb: u32,
    /// Most images in one request.
    #[arg(long, default_value_t = 8)]
    max_images: usize,
    /// Most pixels of all the images of one request together, checked from each file's header
    /// before it is decoded (default: twice --max-image-pixels). A decoded image holds 3 bytes
    /// a pixel, and as many requests as --queue plus one decode at a time.
    #[arg(long, value_parser = crate::limits::max_pixels)]
    max_request_pixels: Option<u64>,
    /// Megabytes of image embeddings kept for images seen again (0: none).
    #[arg(long, default_value_t = 256)]
    image_cache_mb: usize,
    /// Chat template (default: the model file's).
    #[arg(long)]
    template: Option<Template>,
    /// Seconds requests in flight may take to finish after SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 10)]
    shutdown_timeout: u64,
    /// Fetch `image_url` parts given as http(s) URLs (each at most --max-body-mb, 30 s).
    /// Off by default: with it the server fetches whatever URL a client names, hosts on its
    /// own network included, so give it only to clients you trust. Local paths are never read.
    #[arg(long)]
    allow_remote_images: bool,
}

/// An error as the OpenAI API returns it.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": { "message": self.message, "type": self.kind, "param": null, "code": null }
        });
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// One message of a request, as the worker needs it.
#[derive(Clone, Debug, PartialEq)]
struct Message {
    role: String,
    text: String,
    images: Vec<Arc<RgbImage>>,
}

/// What the worker sends back while it answers.
enum Reply {
    Text(String),
    Done {
        finish_reason: &'static str,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(ApiError),
}

struct Job {
    messages: Vec<Message>,
    options: GenerateOptions,
    replies: tokio::sync::mpsc::UnboundedSender<Reply>,
}

/// Counters of `GET /metrics`.
#[derive(Default)]
struct Metrics {
    requests: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    queued: AtomicU64,
    running: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    slot_reuses: AtomicU64,
}

struct Shared {
    jobs: SyncSender<Job>,
    /// A permit for each request the server takes at once (the one running and `--queue`
    /// waiting), taken before the body is read and held until the answer is sent or dropped.
    admission: Arc<tokio::sync::Semaphore>,
    metrics: Metrics,
    model_id: String,
    api_key: Option<String>,
    max_body: usize,
    max_images: usize,
    max_image_pixels: u64,
    /// `--max-request-pixels`: all the images of one request together.
    max_request_pixels: u64,
    /// Set by `--allow-remote-images`.
    remote: Option<RemoteImages>,
    /// Positions of a slot, set by the worker once the model is loaded.
    n_ctx: AtomicUsize,
    /// Bytes of message text beyond which a request cannot fit a slot, however it tokenizes
    /// (see [`text_bytes_per_position`]); `usize::MAX` where no bound is known. Set with
    /// `n_ctx`.
    max_text_bytes: AtomicUsize,
    /// Whether a system message is part of the prompt (the template has one); else it is
    /// dropped and its text does not count against `max_text_bytes`.
    system_in_prompt: AtomicBool,
    /// Set when the shutdown bound has passed: generations stop at their next token.
    cancel_all: AtomicBool,
}

pub fn run(args: &Args) -> Result<()> {
    let (jobs, queue) = sync_channel::<Job>(usize::from(args.queue));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(usize, String)>>();
    let shared = Arc::new(Shared {
        jobs,
        // The one running and those waiting.
        admission: Arc::new(tokio::sync::Semaphore::new(usize::from(args.queue) + 1)),
        metrics: Metrics::default(),
        model_id: args
            .models
            .model()
            .file_stem()
            .map_or("llava".into(), |s| s.to_string_lossy().into_owned()),
        api_key: args.api_key.clone(),
        max_body: args.max_body_mb as usize * (1 << 20),
        max_images: args.max_images,
        max_image_pixels: args.models.max_image_pixels,
        max_request_pixels: args
            .max_request_pixels
            .unwrap_or(args.models.max_image_pixels.saturating_mul(2)),
        remote: if args.allow_remote_images {
            Some(RemoteImages::new(args.max_body_mb as usize * (1 << 20))?)
        } else {
            None
        },
        n_ctx: AtomicUsize::new(0),
        max_text_bytes: AtomicUsize::new(usize::MAX),
        system_in_prompt: AtomicBool::new(true),
        cancel_all: AtomicBool::new(false),
    });
    // The models live on the worker thread, which answers the queued requests in turn.
    let worker = {
        let shared = Arc::clone(&shared);
        let (model, mmproj, threads, device) = (
            args.models.model().to_path_buf(),
            args.models.mmproj.clone(),
            args.models.threads,
            args.models.device.clone(),
        );
        let options = args
            .models
            .load_options(args.image_cache_mb.saturating_mul(1 << 20));
        let (template, slots) = (args.template, usize::from(args.parallel));
        std::thread::Builder::new()
            .name("llava-worker".into())
            .spawn(move || {
                let pipeline = match load_pipeline(
                    &model,
                    mmproj.as_deref(),
                    threads,
                    &device,
                    &options,
                    &Stages::quiet(),
                ) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                shared.n_ctx.store(pipeline.n_ctx(), Ordering::SeqCst);
                let max_text_bytes = text_bytes_per_position(pipeline.tokenizer())
                    .map_or(usize::MAX, |b| b.saturating_mul(pipeline.n_ctx()));
                shared
                    .max_text_bytes
                    .store(max_text_bytes, Ordering::SeqCst);
                let system = template.unwrap_or(pipeline.template()).has_system();
                shared.system_in_prompt.store(system, Ordering::SeqCst);
                let _ = ready_tx.send(Ok((pipeline.n_ctx(), describe_pipeline(&pipeline))));
                work(&pipeline, template, slots, &queue, &shared);
            })
            .context("cannot start the worker thread")?
    };
    let (n_ctx, backend) = match ready_rx.recv() {
        Ok(Ok(ready)) => ready,
        Ok(Err(e)) => return Err(e),
        Err(_) => bail!("the worker thread ended while loading the model"),
    };
    // The worker runs until the queue's senders are gone; the process exits without waiting.
    drop(worker);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let addr = SocketAddr::new(args.host, args.port);
    let shutdown_timeout = Duration::from_secs(args.shutdown_timeout);
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr().context("no local address")?;
        diag!(
            "llava serve: listening on http://{local} ({}, {backend}, context {n_ctx} per slot, {} slot(s))",
            args.models.model().display(),
            args.parallel
        );
        let app = Router::new()
            .route("/", get(page))
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(chat_completions))
            .with_state(Arc::clone(&shared));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown_signal().await;
            diag!("llava serve: stopping: no new connections, finishing the requests in flight");
            let _ = stop_tx.send(true);
        });
        let mut stopped = stop_rx.clone();
        let server = tokio::spawn(async move { server.await });
        // After the signal, the requests in flight get `shutdown_timeout` to finish.
        let _ = stopped.wait_for(|s| *s).await;
        match tokio::time::timeout(shutdown_timeout, server).await {
            Ok(result) => result.context("the server task failed")?.context("serving")?,
            Err(_) => {
                diag!("llava serve: cancelling the requests still running");
                shared.cancel_all.store(true, Ordering::SeqCst);
            }
        }
        anyhow::Ok(())
    })?;
    diag!("llava serve: stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A conversation slot: a session and the messages it holds.
struct Slot<'p> {
    session: llava_models::Session<'p, Chosen>,
    /// Exactly the conversation the session holds; `None` while it is being changed, and
    /// after a request that failed or was cancelled on it: the session then holds some unknown
    /// part of a conversation, and the slot is rebuilt before anyone uses it again.
    messages: Option<Vec<Message>>,
    last_used: u64,
}

/// The worker: answers jobs in turn until the queue's senders are gone.
fn work(
    pipeline: &Pipeline<Chosen>,
    template: Option<Template>,
    n_slots: usize,
    queue: &Receiver<Job>,
    shared: &Shared,
) {
    let mut slots: Vec<Slot<'_>> = Vec::new();
    let mut clock = 0;
    while let Ok(job) = queue.recv() {
        shared.metrics.queued.fetch_sub(1, Ordering::SeqCst);
        shared.metrics.running.fetch_add(1, Ordering::SeqCst);
        clock += 1;
        let result = answer(pipeline, template, n_slots, &mut slots, clock, &job, shared);
        shared.metrics.running.fetch_sub(1, Ordering::SeqCst);
        let stats = pipeline.image_cache_stats();
        shared
            .metrics
            .cache_hits
            .store(stats.hits, Ordering::SeqCst);
        shared
            .metrics
            .cache_misses
            .store(stats.misses, Ordering::SeqCst);
        match result {
            Ok(done) => {
                let _ = job.replies.send(done);
            }
            Err(e) => {
                shared.metrics.failed.fetch_add(1, Ordering::SeqCst);
                let _ = job.replies.send(Reply::Failed(e));
            }
        }
    }
}

fn answer<'p>(
    pipeline: &'p Pipeline<Chosen>,
    template: Option<Template>,
    n_slots: usize,
    slots: &mut Vec<Slot<'p>>,
    clock: u64,
    job: &Job,
    shared: &Shared,
) -> Result<Reply, ApiError> {
    let internal = |e: ModelError| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "server_error",
        message: e.to_string(),
    };
    let refused = |e: ModelError| match e {
        ModelError::Prompt(_) | ModelError::Image(_) | ModelError::ImageWork { .. } => {
            ApiError::bad(e.to_string())
        }
        ModelError::Usage(m) => ApiError::bad(m),
        e => internal(e),
    };
    let (history, last) = job.messages.split_at(job.messages.len() - 1);
    let last = &last[0];
    // A slot holding exactly the history continues; else the least recently used is rebuilt.
    let reuse = slots
        .iter()
        .position(|s| s.messages.as_deref() == Some(history));
    let index = match reuse {
        Some(i) => {
            shared.metrics.slot_reuses.fetch_add(1, Ordering::SeqCst);
            i
        }
        None if slots.len() < n_slots => {
            let mut session = pipeline.session().map_err(internal)?;
            if let Some(t) = template {
                session.set_template(t).map_err(refused)?;
            }
            slots.push(Slot {
                session,
                messages: None,
                last_used: 0,
            });
            slots.len() - 1
        }
        None => slots
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.last_used)
            .map(|(i, _)| i)
            .expect("at least one slot"),
    };
    let slot = &mut slots[index];
    slot.last_used = clock;
    let session = &mut slot.session;
    // Whatever happens below, the slot no longer holds a known conversation until it is done:
    // a failure or a cancel leaves it to be rebuilt.
    slot.messages = None;
    if reuse.is_none() {
        // From nothing: no token, turn or system prompt of the slot's last client stays.
        session.reset();
        let mut rest = history;
        if let Some(first) = rest.first().filter(|m| m.role == "system") {
            if session.template().has_system() {
                session.set_system(&first.text).map_err(refused)?;
            }
            rest = &rest[1..];
        }
        // The earlier exchanges, as user/assistant pairs.
        let mut pending_user: Option<&Message> = None;
        for m in rest {
            match (m.role.as_str(), pending_user) {
                ("user", None) => pending_user = Some(m),
                ("assistant", Some(u)) => {
                    let images: Vec<RgbImage> = u.images.iter().map(|i| (**i).clone()).collect();
                    session
                        .replay_turn(&u.text, &images, &m.text)
                        .map_err(refused)?;
                    pending_user = None;
                }
                _ => return Err(ApiError::bad(
                    "messages must alternate user and assistant after an optional system message",
                )),
            }
        }
        if pending_user.is_some() {
            return Err(ApiError::bad(
                "messages must alternate user and assistant after an optional system message",
            ));
        }
    }
    let images: Vec<RgbImage> = last.images.iter().map(|i| (**i).clone()).collect();
    let mut answer = String::new();
    let stats = session
        .ask(&last.text, &images, &job.options, |piece| {
            answer.push_str(piece);
            let gone = if piece.is_empty() {
                job.replies.is_closed()
            } else {
                job.replies.send(Reply::Text(piece.to_owned())).is_err()
            };
            if gone || shared.cancel_all.load(Ordering::SeqCst) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .map_err(refused)?;
    let g = &stats.generation;
    shared
        .metrics
        .prompt_tokens
        .fetch_add(stats.prefill.positions as u64, Ordering::SeqCst);
    shared
        .metrics
        .generated_tokens
        .fetch_add(g.generated_tokens as u64, Ordering::SeqCst);
    let finish_reason = match g.stop_reason {
        StopReason::EndOfText | StopReason::StopString => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        StopReason::Cancelled => "cancelled",
    };
    if g.stop_reason != StopReason::Cancelled {
        let mut held = job.messages.clone();
        held.push(Message {
            role: "assistant".into(),
            text: answer,
            images: Vec::new(),
        });
        slot.messages = Some(held);
    }
    Ok(Reply::Done {
        finish_reason,
        prompt_tokens: stats.prefill.positions,
        completion_tokens: g.generated_tokens,
    })
}

async fn page() -> Html<&'static str> {
    Html(include_str!("../serve_page.html"))
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

async fn metrics(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
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

async fn models(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
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

async fn chat_completions(State(s): State<Arc<Shared>>, request: Request) -> Response {
    s.metrics.requests.fetch_add(1, Ordering::SeqCst);
    match start(&s, request).await {
        Ok(r) => r,
        Err(e) => {
            s.metrics.refused.fetch_add(1, Ordering::SeqCst);
            e.into_response()
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
    let body = to_bytes(request.into_body(), s.max_body)
        .await
        .map_err(|_| ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            message: format!("the request body is larger than {} bytes", s.max_body),
        })?;
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
        let chunk = move |delta: Value, finish: Option<&str>| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }]
            })
        };
        let role = chunk(json!({ "role": "assistant", "content": "" }), None);
        // The role, the chunks as they come, then one with the finish reason, then `[DONE]`.
        enum Step {
            Role(Value, Reply),
            Reply(Reply),
            Running,
            Closing,
            End,
        }
        let events = futures_util::stream::unfold(
            (rx, Step::Role(role, first_reply), permit),
            move |(mut rx, step, permit)| {
                let chunk = chunk.clone();
                let event =
                    |data: String| Ok::<_, std::convert::Infallible>(Event::default().data(data));
                async move {
                    let reply = match step {
                        Step::Role(role, first) => {
                            return Some((
                                event(role.to_string()),
                                (rx, Step::Reply(first), permit),
                            ))
                        }
                        Step::Reply(reply) => reply,
                        Step::Running => rx.recv().await?,
                        Step::Closing => {
                            return Some((event("[DONE]".into()), (rx, Step::End, permit)))
                        }
                        Step::End => return None,
                    };
                    let (data, next) = match reply {
                        Reply::Text(t) => (
                            chunk(json!({ "content": t }), None).to_string(),
                            Step::Running,
                        ),
                        Reply::Done { finish_reason, .. } => (
                            chunk(json!({}), Some(finish_reason)).to_string(),
                            Step::Closing,
                        ),
                        // A failure after the first token (the device, say).
                        Reply::Failed(e) => (
                            json!({ "error": {
                                "message": e.message, "type": e.kind, "param": null, "code": null
                            }})
                            .to_string(),
                            Step::Closing,
                        ),
                    };
                    Some((event(data), (rx, next, permit)))
                }
            },
        );
        return Ok(Sse::new(events).into_response());
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

/// The messages and generation settings of a request body (unknown fields ignored).
fn parse_request(s: &Shared, req: &Value) -> Result<(Vec<Message>, GenerateOptions), ApiError> {
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
        Some(v) => v
            .as_i64()
            .map(|x| x as u64)
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

/// An image from a `data:` URI (base64), or from an http(s) URL where `--allow-remote-images`
/// allows it; anything else is refused: local paths are never read. The image takes its pixels
/// from `pixels_left`, the request's budget.
///
/// Runs on a blocking thread of the runtime (it decodes images), which may wait on a fetch.
fn image_from_url(
    s: &Shared,
    url: &str,
    at: &str,
    pixels_left: &mut u64,
) -> Result<RgbImage, ApiError> {
    let is_remote = url.starts_with("http://") || url.starts_with("https://");
    let bytes = match (is_remote, s.remote.as_ref()) {
        (true, Some(remote)) => {
            tokio::runtime::Handle::current().block_on(remote.fetch(url, at))?
        }
        _ => {
            let Some(rest) = url.strip_prefix("data:") else {
                return Err(ApiError::bad(if is_remote {
                    format!("{at}: remote image URLs are not fetched unless the server runs with --allow-remote-images; send the image as a data: URI")
                } else {
                    format!("{at}: images are data: URIs or, where the server allows it, http(s) URLs; local paths are never read")
                }));
            };
            let Some((meta, data)) = rest.split_once(',') else {
                return Err(ApiError::bad(format!("{at}: a data: URI without data")));
            };
            if !meta.ends_with(";base64") {
                return Err(ApiError::bad(format!("{at}: the data: URI must be base64")));
            }
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| ApiError::bad(format!("{at}: invalid base64: {e}")))?
        }
    };
    // The header's size is checked against the smaller limit before anything is decoded.
    match decode_image(at, &bytes, s.max_image_pixels.min(*pixels_left)) {
        Ok(image) => {
            let pixels = u64::from(image.width) * u64::from(image.height);
            *pixels_left = pixels_left.saturating_sub(pixels);
            Ok(image)
        }
        Err(ImageError::TooLarge {
            path,
            width,
            height,
            ..
        }) => Err(ApiError::bad(
            if u64::from(width) * u64::from(height) > s.max_image_pixels {
                ImageError::TooLarge {
                    path,
                    width,
                    height,
                    max: s.max_image_pixels,
                }
                .to_string()
            } else {
                format!(
                    "{at}: its {width}x{height} pixels bring the request's images past {} pixels in all (--max-request-pixels)",
                    s.max_request_pixels
                )
            },
        )),
        Err(e) => Err(ApiError::bad(e.to_string())),
    }
}

/// Bytes of message text a request's prompt takes in: all its messages' text parts, system
/// messages only where `system_in_prompt` (else they are dropped).
fn text_bytes(messages: &[Value], system_in_prompt: bool) -> usize {
    messages
        .iter()
        .filter(|m| system_in_prompt || m["role"] != "system")
        .map(|m| match &m["content"] {
            Value::String(t) => t.len(),
            Value::Array(parts) => parts
                .iter()
                .filter(|p| p["type"] == "text")
                .map(|p| p["text"].as_str().map_or(0, str::len))
                .sum(),
            _ => 0,
        })
        .sum()
}

/// The most bytes of message text one position can hold, or `None` where the tokenizer may
/// drop text (then no length of text is known not to fit).
///
/// Every token stands for a run of the text no longer than its vocabulary string: SentencePiece
/// strings spell a space as "▁" (3 bytes for 1) and a byte-fallback token as "<0xXX>" (6 for
/// 1); byte-level BPE strings spell each byte as one stand-in character of 1 or 2 bytes;
/// special tokens found in the text are spelled as written. An `<image>` marker becomes an
/// image, of one position at least. Templates add text, never take any away. So text of more
/// than `n_ctx` times this many bytes never fits `n_ctx` positions.
///
/// Text is dropped where a byte has no token to fall back on: SentencePiece without the byte's
/// `<0xXX>` (or, for ASCII, its one-character token) and without an unknown token; byte-level
/// BPE without the byte's stand-in character. (A BPE file whose merges make strings that are
/// not tokens drops bytes too, as llama.cpp does; such a file is malformed and not looked for.)
fn text_bytes_per_position(tokenizer: &Tokenizer) -> Option<usize> {
    let every_byte_has_a_token = match tokenizer.kind() {
        TokenizerKind::Spm => {
            tokenizer.special_tokens().unk.is_some()
                || (0..=255u8).all(|b| {
                    tokenizer.token_id(&format!("<0x{b:02X}>")).is_some()
                        || (b.is_ascii()
                            && tokenizer.token_id(&char::from(b).to_string()).is_some())
                })
        }
        TokenizerKind::Bpe => {
            (0..=255u8).all(|b| tokenizer.token_id(&gpt2_stand_in(b).to_string()).is_some())
        }
    };
    if !every_byte_has_a_token {
        return None;
    }
    let longest = (0..tokenizer.vocab_size() as u32)
        .filter_map(|id| tokenizer.token_text(id))
        .map(str::len)
        .max()?;
    Some(longest.max(IMAGE_MARKER.len()))
}

/// The character GPT-2's byte-level BPE writes byte `b` as (`bytes_to_unicode`): printable
/// Latin-1 stands for itself, the other 68 bytes take U+0100 onwards, in byte order.
fn gpt2_stand_in(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let before = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(0x100 + before).expect("U+0100..U+0143 are characters")
}

/// The fetcher of `--allow-remote-images`: http(s) only (redirects too, at most 5), 10 s to
/// connect and 30 s in all, the body at most `max_bytes` (checked while it arrives).
struct RemoteImages {
    client: reqwest::Client,
    max_bytes: usize,
}

impl RemoteImages {
    fn new(max_bytes: usize) -> Result<RemoteImages> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("llava-edge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(RemoteImages { client, max_bytes })
    }

    async fn fetch(&self, url: &str, at: &str) -> Result<Vec<u8>, ApiError> {
        // The URL as the client wrote it, shortened: error messages stay one readable line.
        let shown: String = url.chars().take(120).collect();
        let failed = |why: String| ApiError::bad(format!("{at}: fetching {shown}: {why}"));
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| failed(error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(failed(format!("HTTP status {}", response.status())));
        }
        let too_big = || failed(format!("larger than {} bytes", self.max_bytes));
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(error_chain(&e)))?
        {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// An error and its causes on one line (reqwest's own message alone says only "error sending
/// request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
