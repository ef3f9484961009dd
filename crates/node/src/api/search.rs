//! `POST /api/v1/search`: ranked passages, no generation.
use std::time::Instant;

use axum::extract::State;

use super::types::*;
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
    ApiJson(body): ApiJson<SearchBody>,
) -> ApiResult<ApiJson<SearchResponse>> {
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
    let hits = engine.search(q).await?;
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    metrics::histogram!("ragfleet_node_stage_duration_seconds", "stage" => "search_request")
        .record(took_ms / 1000.0);
    Ok(ApiJson(SearchResponse {
        hits: hits.into_iter().map(HitSchema::from).collect(),
        took_ms,
    }))
}
