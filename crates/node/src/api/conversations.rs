//! Conversations (history with citations) and run snapshots.
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::types::*;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::state::SharedState;

/// Conversations, most recently updated first.
#[utoipa::path(get, path = "/api/v1/conversations", tag = "conversations",
    params(PageQuery),
    responses((status = 200, body = ConversationPageSchema), (status = 400, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<SharedState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<impl IntoResponse> {
    let (offset, limit) = page_bounds(&state.config.limits, q.offset, q.limit)?;
    Ok(ApiJson(
        state.engine()?.list_conversations(offset, limit).await?,
    ))
}

/// A conversation with every turn and its citations.
#[utoipa::path(get, path = "/api/v1/conversations/{id}", tag = "conversations",
    params(("id" = String, Path, description = "conversation id")),
    responses((status = 200, body = ConversationSchema), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<SharedState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    match state.engine()?.get_conversation(&id).await? {
        Some(c) => Ok(ApiJson(c)),
        None => Err(ApiError::not_found(format!("no conversation {id:?}"))),
    }
}

#[utoipa::path(delete, path = "/api/v1/conversations/{id}", tag = "conversations",
    params(("id" = String, Path, description = "conversation id")),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete(
    State(state): State<SharedState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    if state.engine()?.delete_conversation(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no conversation {id:?}")))
    }
}

/// The snapshot of one answer: configuration hash, model ids, retrieved
/// chunks with scores, the exact prompt, parameters, output and timings.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "run id")),
    responses((status = 200, body = Object), (status = 404, body = crate::error::ErrorBody)))]
pub async fn run(
    State(state): State<SharedState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    match state.engine()?.get_run(&id).await? {
        Some(r) => Ok(ApiJson(r)),
        None => Err(ApiError::not_found(format!("no run {id:?}"))),
    }
}
