//! `llava serve`: an OpenAI-compatible HTTP server (`POST /v1/chat/completions`, streaming as
//! server-sent events), `GET /v1/models`, `GET /health`, Prometheus `GET /metrics`, and a chat
//! page at `GET /`.
//!
//! One worker thread owns the models and `--parallel` conversation slots, and runs the requests
//! in turn from a bounded queue. A request is admitted before its body is read: beyond the one
//! running and `--queue` more, it gets 503 with `Retry-After` at once, so no more requests than
//! that read, parse and decode images at a time (each within `--max-request-pixels`). A body
//! that pauses for `--body-timeout`, or comes slower than a floor rate after it, gets 408, and
//! its place goes to the next. A slot
//! whose conversation the request continues (the same messages, then a new user message)
//! prefills only the new message; otherwise the least recently used slot is rebuilt from
//! nothing, system prompt included. A streamed answer's headers wait for the worker's first
//! reply, so a request the worker refuses gets its 4xx status as when not streamed. A client
//! that goes away cancels its generation at the next token. SIGTERM or Ctrl-C stops accepting,
//! lets the requests in flight finish for up to `--shutdown-timeout` seconds, then cancels
//! them, and the process exits 0.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use llava_models::image::RgbImage;
use llava_models::template::Template;
use llava_models::GenerateOptions;
use serde_json::json;

use crate::load::{describe_pipeline, load_pipeline, Stages};

mod images;
mod request;
mod routes;
mod stream;
mod text_limit;
mod worker;

use images::RemoteImages;
use routes::{chat_completions, health, metrics, models, page};
use text_limit::text_bytes_per_position;
use worker::work;

/// `--body-timeout` by default. A request holds its place from the moment its headers are
/// read, so a client that never sends its body (or sends it a byte at a time) would hold it
/// for ever: the body may pause this long, and must then have come at the floor rate of
/// `routes::read_body` (a 32 MiB body in under 9 minutes).
const DEFAULT_BODY_TIMEOUT_S: u64 = 30;

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
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(0..=4096))]
    queue: u16,
    /// Seconds an admitted request's body may pause; past them it must also have come at 64
    /// KiB/s on average. Else it gets 408 and its place in the queue goes to the next request.
    #[arg(long, default_value_t = DEFAULT_BODY_TIMEOUT_S, value_parser = clap::value_parser!(u64).range(1..=3600))]
    body_timeout: u64,
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
    /// `--body-timeout`: the longest pause in a body, and when its rate starts to count.
    body_timeout: Duration,
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
    // Never a rendezvous channel (capacity 0): with `--queue 0` a job sent while the worker is
    // between two jobs would be refused. The admission permits bound the requests anyway.
    let (jobs, queue) = sync_channel::<Job>(usize::from(args.queue).max(1));
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
        body_timeout: Duration::from_secs(args.body_timeout),
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
