//! The worker thread: it owns the models and the `--parallel` conversation slots, and answers
//! the queued requests one at a time, streaming each answer's pieces back to its handler.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use axum::http::StatusCode;
use llava_models::image::RgbImage;
use llava_models::template::Template;
use llava_models::{Error as ModelError, Pipeline, StopReason};

use super::{ApiError, Job, Message, Reply, Shared};
use crate::load::Chosen;

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
pub(super) fn work(
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
