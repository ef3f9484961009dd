//! OpenAI-compatible API: `POST /v1/chat/completions` (stream and
//! non-stream) and `GET /v1/models`, so OpenAI SDKs and chat UIs can talk to
//! a node or a cluster unchanged. The models are what `/v1/models` lists:
//! the node's generators by name (`extractive`, `local`, `openai`: that
//! generator over every collection), `ragfleet` (the default generator over
//! every collection) and `ragfleet/<collection>` (the default generator over
//! one collection). Any other model is a 404 `model_not_found` in OpenAI's
//! error shape; the response's `model` names the generator that answered.
//! The answer is the RAG answer (retrieval + citations); the last user
//! message is the question. Requests are read leniently (unknown OpenAI
//! fields are ignored) for compatibility.
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use ragfleet_rag::ChatEvent;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::types::{check_text, CitationSchema, MAX_ANSWER_TOKENS};
use crate::auth::Principal;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::SharedState;

/// The model name meaning "every collection" (with the default generator).
pub const ALL_COLLECTIONS_MODEL: &str = "ragfleet";

/// The prefix of the models that are one collection: `ragfleet/<collection>`.
pub const COLLECTION_MODEL_PREFIX: &str = "ragfleet/";

/// What a model name selects.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelChoice {
    /// `None`: every collection.
    pub collection: Option<String>,
    /// `None`: the default generator.
    pub generator: Option<String>,
}

/// Resolves a request's `model` against the generators and collections;
/// `None` when it names none of them (OpenAI's `model_not_found`).
pub async fn resolve_model(
    engine: &ragfleet_rag::Engine,
    model: &str,
) -> ApiResult<Option<ModelChoice>> {
    if model == ALL_COLLECTIONS_MODEL {
        return Ok(Some(ModelChoice {
            collection: None,
            generator: None,
        }));
    }
    if let Some(c) = model.strip_prefix(COLLECTION_MODEL_PREFIX) {
        let known = c == ragfleet_rag::types::DEFAULT_COLLECTION
            || engine.collections().await?.iter().any(|k| k == c);
        return Ok(known.then(|| ModelChoice {
            collection: Some(c.to_string()),
            generator: None,
        }));
    }
    Ok(engine
        .generator_names()
        .iter()
        .any(|g| g == model)
        .then(|| ModelChoice {
            collection: None,
            generator: Some(model.to_string()),
        }))
}

/// OpenAI's answer to an unknown model: 404 with
/// `{"error": {"message", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}`.
fn model_not_found(model: &str) -> Response {
    let body = json!({"error": {
        "message": format!(
            "The model `{model}` does not exist. GET /v1/models lists the models: the \
             generators, `ragfleet` (every collection) and `ragfleet/<collection>`."
        ),
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }});
    (axum::http::StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionMessage {
    pub role: String,
    /// A string, or an array of `{type: "text", text}` parts.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub content: Value,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The subset of OpenAI's chat-completions request ragfleet uses; other
/// fields are accepted and ignored.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// A generator (`extractive`, `local`, `openai`: every collection),
    /// `ragfleet` (every collection) or `ragfleet/<collection>`: one of the
    /// ids `/v1/models` lists.
    pub model: String,
    pub messages: Vec<CompletionMessage>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: Option<u64>,
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionUsage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    #[schema(value_type = Object)]
    pub message: Value,
    pub finish_reason: String,
}

/// ragfleet's additions to the OpenAI response.
#[derive(Debug, Serialize, ToSchema)]
pub struct RagfleetExtra {
    /// The collection searched (`null`: every collection).
    pub collection: Option<String>,
    pub conversation_id: String,
    pub run_id: String,
    pub citations: Vec<CitationSchema>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: CompletionUsage,
    pub ragfleet: RagfleetExtra,
}

/// OpenAI-compatible chat completion (RAG answer with citations).
///
/// Optional header `x-ragfleet-conversation-id` continues a ragfleet
/// conversation (the engine then uses its stored history).
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body = CompletionRequest,
    responses((status = 200, body = CompletionResponse, content_type = "application/json"),
        (status = 400, body = crate::error::ErrorBody),
        (status = 404, description = "unknown model: OpenAI's error shape `{error: {message, type, param, code: model_not_found}}`"),
        (status = 413, body = crate::error::ErrorBody),
        (status = 415, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody),
        (status = 429, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub async fn completions(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    req: Result<ApiJson<CompletionRequest>, ApiError>,
) -> ApiResult<Response> {
    let ApiJson(req) = req.map_err(ApiError::openai)?;
    completion(&state, &principal, &headers, req)
        .await
        .map_err(ApiError::openai)
}

async fn completion(
    state: &SharedState,
    principal: &Principal,
    headers: &HeaderMap,
    req: CompletionRequest,
) -> ApiResult<Response> {
    let engine = state.engine()?;
    let question = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| text_of(&m.content))
        .ok_or_else(|| ApiError::invalid("messages has no user message"))?;
    check_text(&state.config.limits, "the last user message", &question)?;
    let mut params = engine.config().generation.clone();
    if let Some(m) = req.max_completion_tokens.or(req.max_tokens) {
        if m == 0 || m > MAX_ANSWER_TOKENS {
            return Err(ApiError::invalid(format!(
                "max_tokens must be between 1 and {MAX_ANSWER_TOKENS}"
            )));
        }
        params.max_tokens = m;
    }
    if let Some(t) = req.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::invalid("temperature must be between 0 and 2"));
        }
        params.temperature = t;
    }
    if let Some(p) = req.top_p {
        if !(0.0..=1.0).contains(&p) || p == 0.0 {
            return Err(ApiError::invalid("top_p must be in (0, 1]"));
        }
        params.top_p = Some(p);
    }
    if let Some(s) = req.seed {
        params.seed = s;
    }
    let requested = req.model.trim();
    if requested.is_empty() {
        return Err(ApiError::invalid(
            "model is empty (GET /v1/models lists the models)",
        ));
    }
    let Some(choice) = resolve_model(engine, requested).await? else {
        return Ok(model_not_found(requested));
    };
    // The response names what really answers: the generator.
    let model = choice
        .generator
        .clone()
        .unwrap_or_else(|| engine.default_generator().to_string());
    let collection = choice.collection;
    let conversation_id = headers
        .get("x-ragfleet-conversation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|s| !s.trim().is_empty());
    let chat_req = ragfleet_rag::ChatRequest {
        message: question,
        conversation_id,
        collection: collection.clone(),
        generator: choice.generator,
        params: Some(params),
        ..Default::default()
    };
    let events = super::chat::start(state, principal, chat_req).await?;
    let created = now_secs();
    if !req.stream {
        let r = super::chat::collect(events).await?;
        let body = CompletionResponse {
            id: format!("chatcmpl-{}", r.run_id),
            object: "chat.completion".into(),
            created,
            model,
            choices: vec![CompletionChoice {
                index: 0,
                message: json!({"role": "assistant", "content": r.answer}),
                finish_reason: "stop".into(),
            }],
            usage: CompletionUsage {
                prompt_tokens: r.usage.prompt_tokens,
                completion_tokens: r.usage.completion_tokens,
                total_tokens: r.usage.prompt_tokens + r.usage.completion_tokens,
            },
            ragfleet: RagfleetExtra {
                collection,
                conversation_id: r.conversation_id,
                run_id: r.run_id,
                citations: r.citations,
            },
        };
        return Ok(ApiJson(body).into_response());
    }

    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let body = async_stream::stream! {
        let mut events = events;
        let mut id = String::from("chatcmpl-pending");
        let chunk = |id: &str, delta: Value, finish: Option<&str>| json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        while let Some(ev) = events.next().await {
            match ev {
                ChatEvent::Retrieval { run_id, .. } => {
                    id = format!("chatcmpl-{run_id}");
                    yield chunk(&id, json!({"role": "assistant", "content": ""}), None).to_string();
                }
                ChatEvent::Token { text } => {
                    yield chunk(&id, json!({"content": text}), None).to_string();
                }
                ChatEvent::Done { usage, conversation_id, run_id, citations, .. } => {
                    let mut last = chunk(&id, json!({}), Some("stop"));
                    last["ragfleet"] = json!({
                        "collection": collection,
                        "conversation_id": conversation_id, "run_id": run_id,
                        "citations": citations,
                    });
                    yield last.to_string();
                    if include_usage {
                        yield json!({
                            "id": id, "object": "chat.completion.chunk", "created": created,
                            "model": model, "choices": [],
                            "usage": {"prompt_tokens": usage.prompt_tokens,
                                "completion_tokens": usage.completion_tokens,
                                "total_tokens": usage.prompt_tokens + usage.completion_tokens},
                        }).to_string();
                    }
                    break;
                }
                ChatEvent::Error { message } => {
                    yield json!({"error": {"code": "generation_failed", "message": message,
                        "type": "server_error"}}).to_string();
                    break;
                }
            }
        }
        yield "[DONE]".to_string();
    };
    let sse = body.map(|data| Ok::<_, Infallible>(Event::default().data(data)));
    let mut resp = Sse::new(sse)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// The collections of `names` the principal may use (the `/v1/models`
/// filter, kept apart from how models are named).
pub fn visible_collections(principal: &Principal, names: BTreeSet<String>) -> BTreeSet<String> {
    names
        .into_iter()
        .filter(|n| principal.can_read(n))
        .collect()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelEntry {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelEntry>,
}

/// The models: the generators by name, `ragfleet` (every collection) and
/// `ragfleet/<collection>` for `default` and every collection holding documents.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, body = ModelList), (status = 503, body = crate::error::ErrorBody)))]
pub async fn models(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<ApiJson<ModelList>> {
    let engine = state.engine().map_err(ApiError::openai)?;
    let mut collections = BTreeSet::new();
    collections.insert(ragfleet_rag::types::DEFAULT_COLLECTION.to_string());
    collections.extend(
        engine
            .collections()
            .await
            .map_err(|e| ApiError::from(e).openai())?,
    );
    let collections = visible_collections(&principal, collections);
    let entry = |id: String| ModelEntry {
        id,
        object: "model".into(),
        created: 0,
        owned_by: "ragfleet".into(),
    };
    let mut data: Vec<ModelEntry> = engine.generator_names().into_iter().map(entry).collect();
    data.push(entry(ALL_COLLECTIONS_MODEL.into()));
    data.extend(
        collections
            .into_iter()
            .map(|c| entry(format!("{COLLECTION_MODEL_PREFIX}{c}"))),
    );
    Ok(ApiJson(ModelList {
        object: "list".into(),
        data,
    }))
}
