//! `POST /api/v1/search`: ranked passages, no generation.
use std::time::Instant;

use axum::extract::{Extension, Query, State};
use serde::Deserialize;

use super::types::*;
use crate::auth::Principal;
use crate::error::{ApiJson, ApiResult};
use crate::state::SharedState;

/// Hybrid (BM25 + vector), vector or lexical search.
#[utoipa::path(post, path = "/api/v1/search", tag = "search",
    request_body = SearchBody,
    responses((status = 200, body = SearchResponse),
        (status = 400, body = crate::error::ErrorBody), (status = 415, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub async fn search(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<SearchBody>,
) -> ApiResult<ApiJson<SearchResponse>> {
    run(&state, &principal, body).await
}

/// `GET /api/v1/search?query=…`: the same search as a safe, idempotent GET
/// (proxies may retry it on another node; no metadata filter).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    pub query: String,
    pub top_k: Option<usize>,
    /// `hybrid`, `vector` or `lexical`.
    #[param(value_type = Option<String>)]
    pub mode: Option<ragfleet_rag::types::RetrievalMode>,
    pub collection: Option<String>,
}

/// Search with query parameters (idempotent: retried by the gateway).
#[utoipa::path(get, path = "/api/v1/search", tag = "search",
    params(SearchParams),
    responses((status = 200, body = SearchResponse),
        (status = 400, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub async fn search_get(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    params: Result<Query<SearchParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<ApiJson<SearchResponse>> {
    let Query(p) = params?;
    let body = SearchBody {
        query: p.query,
        top_k: p.top_k,
        mode: p.mode,
        collection: p.collection,
        filter: Default::default(),
    };
    run(&state, &principal, body).await
}

async fn run(
    state: &SharedState,
    principal: &Principal,
    body: SearchBody,
) -> ApiResult<ApiJson<SearchResponse>> {
    if let Some(c) = &body.collection {
        principal.check_read(c)?;
    }
    let limits = &state.config.limits;
    check_text(limits, "query", &body.query)?;
    check_top_k(limits, body.top_k)?;
    let engine = state.engine()?;
    let cfg = &engine.config().retrieval;
    let q = ragfleet_rag::SearchQuery {
        query: body.query,
        top_k: body.top_k.unwrap_or(cfg.top_k).min(limits.max_top_k),
        mode: body.mode.unwrap_or(cfg.mode),
        collection: body.collection,
        filter: body.filter,
    };
    let started = Instant::now();
    let hits = engine
        .search_scoped(q, principal.scope_list().as_deref())
        .await?;
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    metrics::histogram!("ragfleet_node_stage_duration_seconds", "stage" => "search_request")
        .record(took_ms / 1000.0);
    Ok(ApiJson(SearchResponse {
        hits: hits.into_iter().map(HitSchema::from).collect(),
        took_ms,
    }))
}
