//! `GET /api/v1/chat/ws`: a WebSocket carrying several questions. Each text
//! frame is a chat request (`{message, conversation_id?, …}` as for
//! `POST /api/v1/chat`); the answer comes back as JSON frames, the same
//! events as the SSE stream (`{"type":"retrieval",…}`, `token`…, `done`).
//! A bad request gets `{"type":"error","code","message"}` and the socket
//! stays open. Questions sent while an answer streams are queued (at most
//! 8). Closing the socket mid-answer stops the generation.
use std::collections::VecDeque;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::response::Response;
use futures::StreamExt;
use ragfleet_rag::ChatEvent;

use super::types::ChatBody;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::SharedState;

const MAX_QUEUED: usize = 8;

#[utoipa::path(get, path = "/api/v1/chat/ws", tag = "chat",
    responses((status = 101, description = "WebSocket upgrade; frames as described")))]
pub async fn chat_ws(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ws: WebSocketUpgrade,
) -> Response {
    let max = state.config.limits.max_body_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| session(state, principal, socket))
}

async fn send_error(socket: &mut WebSocket, e: &ApiError) -> bool {
    let v = serde_json::json!({"type": "error", "code": e.code, "message": e.message});
    socket
        .send(Message::Text(v.to_string().into()))
        .await
        .is_ok()
}

enum Incoming {
    Question(String),
    Ignore,
    Closed,
}

fn classify(msg: Option<Result<Message, axum::Error>>) -> Incoming {
    match msg {
        Some(Ok(Message::Text(t))) => Incoming::Question(t.to_string()),
        Some(Ok(Message::Binary(b))) => match String::from_utf8(b.to_vec()) {
            Ok(t) => Incoming::Question(t),
            Err(_) => Incoming::Question(String::new()),
        },
        Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => Incoming::Ignore,
        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Incoming::Closed,
    }
}

async fn session(state: SharedState, principal: Principal, mut socket: WebSocket) {
    let mut queue: VecDeque<String> = VecDeque::new();
    loop {
        let text = match queue.pop_front() {
            Some(t) => t,
            None => {
                let msg = tokio::select! {
                    _ = state.shutdown.cancelled() => {
                        let _ = socket.send(Message::Close(Some(CloseFrame {
                            code: 1001,
                            reason: "node shutting down".into(),
                        }))).await;
                        return;
                    }
                    msg = socket.recv() => msg,
                };
                match classify(msg) {
                    Incoming::Question(t) => t,
                    Incoming::Ignore => continue,
                    Incoming::Closed => return,
                }
            }
        };
        let body: ChatBody = match serde_json::from_str(&text) {
            Ok(b) => b,
            Err(e) => {
                let err = if e.is_syntax() || e.is_eof() {
                    ApiError::new(
                        axum::http::StatusCode::BAD_REQUEST,
                        "invalid_json",
                        format!("malformed JSON: {e}"),
                    )
                } else {
                    ApiError::invalid(e.to_string())
                };
                if !send_error(&mut socket, &err).await {
                    return;
                }
                continue;
            }
        };
        let defaults = match state.engine() {
            Ok(e) => e.config().generation.clone(),
            Err(e) => {
                if !send_error(&mut socket, &e).await {
                    return;
                }
                continue;
            }
        };
        let started = match body.into_request(&state.config.limits, &defaults) {
            Ok(req) => super::chat::start(&state, &principal, req).await,
            Err(e) => Err(e),
        };
        let mut events = match started {
            Ok(s) => s,
            Err(e) => {
                if !send_error(&mut socket, &e).await {
                    return;
                }
                continue;
            }
        };
        loop {
            tokio::select! {
                ev = events.next() => {
                    let Some(ev) = ev else { break };
                    let end = matches!(ev, ChatEvent::Done { .. } | ChatEvent::Error { .. });
                    let json = match serde_json::to_string(&ev) {
                        Ok(j) => j,
                        Err(e) => format!("{{\"type\":\"error\",\"message\":\"cannot encode event: {e}\"}}"),
                    };
                    if socket.send(Message::Text(json.into())).await.is_err() {
                        return; // drops `events`: generation stops
                    }
                    if end {
                        break;
                    }
                }
                msg = socket.recv() => match classify(msg) {
                    Incoming::Question(t) => {
                        if queue.len() >= MAX_QUEUED {
                            let e = ApiError::new(axum::http::StatusCode::TOO_MANY_REQUESTS, "overloaded",
                                format!("at most {MAX_QUEUED} questions may wait on one socket"));
                            if !send_error(&mut socket, &e).await {
                                return;
                            }
                        } else {
                            queue.push_back(t);
                        }
                    }
                    Incoming::Ignore => {}
                    Incoming::Closed => return, // drops `events`: generation stops
                }
            }
        }
    }
}
