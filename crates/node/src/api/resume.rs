//! `GET /api/v1/chat/runs/{run_id}/events`: resuming a streamed answer
//! (the buffering and the Redis streams are in [`crate::runs`]), and the SSE
//! response both answers and resumes are sent as.
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::runs::BufferedEvent;
use crate::state::SharedState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ResumeQuery {
    /// Resume after this event id (like the `Last-Event-ID` header, which wins).
    pub after: Option<u64>,
}

/// SSE response headers shared by answers and resumes.
pub fn sse_events(events: BoxStream<'static, BufferedEvent>) -> Response {
    let body = events.map(|e| Ok::<_, Infallible>(e.to_sse()));
    let mut resp = Sse::new(body)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Resume a streamed answer after a broken connection, on any node.
///
/// Sends the answer's events whose id is greater than `Last-Event-ID` (or
/// `?after=`; none: from the start), then waits for new ones until `done` or
/// `error`. When the node producing the answer died, the stream ends with an
/// `error` event whose `code` is `run_lost` (after at most the owner TTL,
/// `streams.owner_ttl_ms`). Other codes of such synthetic events (they carry
/// no `id:`): `events_expired`, `redis_unavailable`, `node_draining` (resume
/// again). Without Redis only the node that produced the answer has it.
#[utoipa::path(get, path = "/api/v1/chat/runs/{run_id}/events", tag = "chat",
    params(("run_id" = String, Path, description = "The run id of the answer (in its `retrieval` event and the `x-ragfleet-run-id` header)"),
        ("Last-Event-ID" = Option<String>, Header, description = "The last event id received"),
        ResumeQuery),
    responses(
        (status = 200, description = "SSE stream of the remaining events", content_type = "text/event-stream", body = String),
        (status = 400, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 503, body = crate::error::ErrorBody)))]
pub async fn resume(
    State(state): State<SharedState>,
    axum::extract::Extension(principal): axum::extract::Extension<crate::auth::Principal>,
    Path(run_id): Path<String>,
    query: Result<Query<ResumeQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let query = query.map_err(ApiError::from)?;
    let header_after = match headers.get("last-event-id") {
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID is not text"))?
                .trim();
            if s.is_empty() {
                None
            } else {
                Some(s.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "Last-Event-ID must be an event id (a number), not {s:?}"
                    ))
                })?)
            }
        }
        None => None,
    };
    let after = header_after.or(query.after);
    if run_id.is_empty()
        || run_id.len() > 128
        || !run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::not_found(format!("no run {run_id:?}")));
    }
    let found = state
        .runs
        .resume(&run_id, after, &principal, state.shutdown.clone())
        .await?;
    let Some((source, events)) = found else {
        let hint = if state.runs.has_redis() {
            "unknown run, or its events are no longer buffered"
        } else {
            "unknown run on this node (without Redis an answer resumes only on the node that produced it)"
        };
        return Err(ApiError::not_found(format!("run {run_id}: {hint}")));
    };
    metrics::counter!("ragfleet_node_stream_resumes_total", "source" => source).increment(1);
    let mut resp = sse_events(events);
    if let Ok(v) = HeaderValue::from_str(&run_id) {
        resp.headers_mut().insert("x-ragfleet-run-id", v);
    }
    Ok(resp)
}
