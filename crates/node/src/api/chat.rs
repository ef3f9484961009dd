//! `POST /api/v1/chat`: a cited answer as JSON, or streamed as Server-Sent
//! Events (`retrieval`, `token`…, then `done` or `error`).
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream::BoxStream;
use futures::StreamExt;
use ragfleet_rag::{ChatEvent, ChatRequest};

use super::types::*;
use crate::auth::Principal;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::runs::BufferedEvent;
use crate::state::SharedState;

/// Records the outcome of a chat when its stream ends, however it ends.
struct Outcome {
    generator: String,
    finished: bool,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if !self.finished {
            tracing::info!(generator = %self.generator, "chat stream dropped before the end: generation cancelled");
            crate::metrics::record_chat_outcome(&self.generator, "cancelled");
        }
    }
}

/// Admit a chat (bounded queue), start it on behalf of `principal` (403
/// outside its grants; another user's conversation is a 404; retrieval sees
/// only granted collections), and return its events. The stream holds the
/// generation slot; dropping it (a client that went away) drops the
/// engine's stream, which stops generation.
pub async fn start(
    state: &SharedState,
    principal: &Principal,
    req: ChatRequest,
) -> ApiResult<BoxStream<'static, ChatEvent>> {
    let engine = state.engine()?.clone();
    if let Some(c) = &req.collection {
        principal.check_read(c)?;
    }
    if let Some(id) = req
        .conversation_id
        .as_deref()
        .filter(|c| !c.trim().is_empty())
    {
        super::conversations::check_continue(state, principal, id).await?;
    }
    let generator = req
        .generator
        .clone()
        .unwrap_or_else(|| state.config.generator.name().to_string());
    if !engine.generator_names().contains(&generator) {
        return Err(ApiError::invalid(format!(
            "unknown generator {generator:?} (this node has: {})",
            engine.generator_names().join(", ")
        )));
    }
    let permit = state.gate.acquire().await?;
    let scope = principal.scope_list();
    let mut inner = engine
        .chat_as(req, Some(&principal.name), scope.as_deref())
        .await?;
    let guard = state.stream_guard();
    let s = async_stream::stream! {
        let _permit = permit;
        let _guard = guard;
        let mut outcome = Outcome { generator, finished: false };
        while let Some(ev) = inner.next().await {
            let end = match &ev {
                ChatEvent::Done { usage, timings, .. } => {
                    crate::metrics::record_done(&outcome.generator, usage, timings);
                    true
                }
                ChatEvent::Error { message } => {
                    tracing::warn!(generator = %outcome.generator, %message, "chat ended with an error");
                    crate::metrics::record_chat_outcome(&outcome.generator, "error");
                    true
                }
                _ => false,
            };
            if end {
                outcome.finished = true;
            }
            yield ev;
            if end {
                break;
            }
        }
        if !outcome.finished {
            outcome.finished = true;
            crate::metrics::record_chat_outcome(&outcome.generator, "error");
            yield ChatEvent::Error { message: "the answer stream ended unexpectedly".into() };
        }
    };
    Ok(s.boxed())
}

fn wants_stream(body_stream: Option<bool>, headers: &HeaderMap) -> bool {
    body_stream.unwrap_or_else(|| {
        headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream"))
    })
}

/// Ask a question; the answer cites numbered passages.
///
/// With `stream: true` (or `Accept: text/event-stream`) the answer streams
/// as Server-Sent Events whose `event:` is the `type` of the JSON `data:`:
/// `retrieval` (conversation_id, run_id, citations — always first), `token`
/// (`text` delta), then `done` (answer, the citations it used, usage,
/// timings) or `error` (`message`). Each event's `id:` is its sequence
/// number in the answer; the `x-ragfleet-run-id` response header (and the
/// `retrieval` event) give the run id with which a broken stream resumes at
/// `GET /api/v1/chat/runs/{run_id}/events`.
#[utoipa::path(post, path = "/api/v1/chat", tag = "chat",
    request_body = ChatBody,
    responses(
        (status = 200, description = "JSON answer, or an SSE stream", body = ChatResponse,
            content_type = "application/json"),
        (status = 400, body = crate::error::ErrorBody), (status = 415, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody), (status = 429, body = crate::error::ErrorBody),
        (status = 502, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub async fn chat(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ChatBody>,
) -> ApiResult<Response> {
    let stream = wants_stream(body.stream, &headers);
    let req = body.into_request(&state.config.limits, &state.engine()?.config().generation)?;
    if stream {
        let (run_id, events) = start_buffered(&state, &principal, req).await?;
        let mut resp = super::resume::sse_events(events);
        if let Some(v) = run_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
            resp.headers_mut().insert("x-ragfleet-run-id", v);
        }
        Ok(resp)
    } else {
        let events = start(&state, &principal, req).await?;
        Ok(ApiJson(collect(events).await?).into_response())
    }
}

/// Start a chat whose events are buffered so that a client whose
/// connection breaks can resume it (`GET /api/v1/chat/runs/{id}/events`):
/// the answer is produced by a task of its own; the returned stream reads
/// its buffer. Also returns the run id.
pub async fn start_buffered(
    state: &SharedState,
    principal: &Principal,
    req: ChatRequest,
) -> ApiResult<(Option<String>, BoxStream<'static, BufferedEvent>)> {
    let mut events = start(state, principal, req).await?;
    let first = match events.next().await {
        Some(ev) => ev,
        None => ChatEvent::Error {
            message: "the answer stream ended unexpectedly".into(),
        },
    };
    match &first {
        ChatEvent::Retrieval { run_id, .. } => {
            let run_id = run_id.clone();
            let (_, reader) =
                state
                    .runs
                    .spawn(run_id.clone(), principal.name.clone(), first, events);
            Ok((Some(run_id), reader))
        }
        _ => {
            let s = futures::stream::once(async move { first })
                .chain(events)
                .enumerate()
                .map(|(i, ev)| BufferedEvent::from_chat(i as u64, &ev));
            Ok((None, s.boxed()))
        }
    }
}

/// Run a chat to its end and return the whole answer.
pub async fn collect(mut events: BoxStream<'static, ChatEvent>) -> ApiResult<ChatResponse> {
    while let Some(ev) = events.next().await {
        match ev {
            ChatEvent::Done {
                conversation_id,
                run_id,
                answer,
                citations,
                usage,
                timings,
            } => {
                return Ok(ChatResponse {
                    conversation_id,
                    run_id,
                    answer,
                    citations: citations.into_iter().map(CitationSchema::from).collect(),
                    usage,
                    timings,
                })
            }
            ChatEvent::Error { message } => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "generation_failed",
                    message,
                ))
            }
            _ => {}
        }
    }
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "generation_failed",
        "the answer stream ended without an answer",
    ))
}
