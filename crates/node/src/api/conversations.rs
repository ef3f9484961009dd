//! Conversations (history with citations) and run snapshots. Each belongs
//! to the principal that created it: lists show only one's own (admins:
//! everyone's with `?all=true`), and another user's conversation or run is
//! a 404.
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::types::*;
use crate::auth::Principal;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::state::SharedState;

/// `GET /api/v1/conversations` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConversationListQuery {
    #[serde(default)]
    pub offset: Option<usize>,
    #[serde(default)]
    pub limit: Option<usize>,
    /// Admins only: everyone's conversations, not only one's own.
    #[serde(default)]
    pub all: Option<bool>,
}

/// Your conversations, most recently updated first (admins: everyone's
/// with `all=true`).
#[utoipa::path(get, path = "/api/v1/conversations", tag = "conversations",
    params(ConversationListQuery),
    responses((status = 200, body = ConversationPageSchema), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<ConversationListQuery>,
) -> ApiResult<impl IntoResponse> {
    let (offset, limit) = page_bounds(&state.config.limits, q.offset, q.limit)?;
    let owner = if q.all == Some(true) {
        principal.check_role(ragfleet_rag::store::principals::Role::Admin)?;
        None
    } else {
        Some(principal.name.as_str())
    };
    Ok(ApiJson(
        state
            .engine()?
            .store()
            .list_conversations_of(owner, offset, limit)
            .await?,
    ))
}

/// The conversation `id` if `principal` may see it.
async fn visible_conversation(
    state: &SharedState,
    principal: &Principal,
    id: &str,
) -> ApiResult<bool> {
    let owner = state.engine()?.store().conversation_owner(id).await?;
    Ok(owner.is_some_and(|o| principal.owns(&o)))
}

/// 404 unless the conversation `id` is absent or the principal's: a chat may
/// continue only one's own conversation (or start a new one with that id).
pub async fn check_continue(state: &SharedState, principal: &Principal, id: &str) -> ApiResult<()> {
    match state.engine()?.store().conversation_owner(id).await? {
        Some(o) if !principal.owns(&o) => {
            Err(ApiError::not_found(format!("no conversation {id:?}")))
        }
        _ => Ok(()),
    }
}

/// A conversation with every turn and its citations.
#[utoipa::path(get, path = "/api/v1/conversations/{id}", tag = "conversations",
    params(("id" = String, Path, description = "conversation id")),
    responses((status = 200, body = ConversationSchema), (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    if !visible_conversation(&state, &principal, &id).await? {
        return Err(ApiError::not_found(format!("no conversation {id:?}")));
    }
    match state.engine()?.get_conversation(&id).await? {
        Some(c) => Ok(ApiJson(c)),
        None => Err(ApiError::not_found(format!("no conversation {id:?}"))),
    }
}

#[utoipa::path(delete, path = "/api/v1/conversations/{id}", tag = "conversations",
    params(("id" = String, Path, description = "conversation id")),
    responses((status = 204), (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    if visible_conversation(&state, &principal, &id).await?
        && state.engine()?.delete_conversation(&id).await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no conversation {id:?}")))
    }
}

/// The snapshot of one answer: configuration hash, model ids, retrieved
/// chunks with scores, the exact prompt, parameters, output and timings.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "run id")),
    responses((status = 200, body = Object), (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn run(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let engine = state.engine()?;
    let owner = engine.store().run_owner(&id).await?;
    if !owner.is_some_and(|o| principal.owns(&o)) {
        return Err(ApiError::not_found(format!("no run {id:?}")));
    }
    match engine.get_run(&id).await? {
        Some(r) => Ok(ApiJson(r)),
        None => Err(ApiError::not_found(format!("no run {id:?}"))),
    }
}
