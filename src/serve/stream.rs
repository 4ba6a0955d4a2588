//! A streamed answer as server-sent events, in OpenAI's chunk format.

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::OwnedSemaphorePermit;

use super::Reply;

/// The events of completion `id`: the role, the worker's pieces as they come (`first_reply`,
/// then those from `replies`), one with the finish reason, then `[DONE]`. The stream holds the
/// request's admission `permit`, so it comes back when the answer is sent or its client leaves.
pub(super) fn sse(
    replies: UnboundedReceiver<Reply>,
    first_reply: Reply,
    permit: OwnedSemaphorePermit,
    id: String,
    created: u64,
    model: String,
) -> Response {
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }]
        })
    };
    let role = chunk(json!({ "role": "assistant", "content": "" }), None);
    enum Step {
        Role(Value, Reply),
        Reply(Reply),
        Running,
        Closing,
        End,
    }
    let events = futures_util::stream::unfold(
        (replies, Step::Role(role, first_reply), permit),
        move |(mut rx, step, permit)| {
            let chunk = chunk.clone();
            let event =
                |data: String| Ok::<_, std::convert::Infallible>(Event::default().data(data));
            async move {
                let reply = match step {
                    Step::Role(role, first) => {
                        return Some((event(role.to_string()), (rx, Step::Reply(first), permit)))
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
    Sse::new(events).into_response()
}
