//! `/health`, `/ready`, `/metrics`, `/api/v1/info`.
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::SharedState;

/// Generation load, for load balancers weighing nodes.
#[derive(Debug, Serialize, ToSchema)]
pub struct Load {
    /// Generations running now.
    pub running: usize,
    /// Chats waiting for a slot.
    pub queued: usize,
    /// Generation slots.
    pub capacity: usize,
    /// Queue bound (beyond it: 429).
    pub max_queued: usize,
    /// Answers being streamed.
    pub streams: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the process answers.
    pub status: String,
    pub node_id: String,
    /// The node's process id (supervisors, tests).
    pub pid: u32,
    /// The engine is open (see `/ready` for the full check).
    pub engine: bool,
    pub draining: bool,
    pub uptime_s: f64,
    pub version: String,
    pub load: Load,
}

fn load(state: &SharedState) -> Load {
    Load {
        running: state.gate.running(),
        queued: state.gate.queued(),
        capacity: state.gate.capacity(),
        max_queued: state.gate.max_queued(),
        streams: state.live_streams(),
    }
}

/// Liveness: the process answers. Includes the generation load.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, body = Health)))]
pub async fn health(State(state): State<SharedState>) -> ApiJson<Health> {
    ApiJson(Health {
        status: "ok".into(),
        node_id: state.node_id().to_string(),
        pid: std::process::id(),
        engine: state.engine_opt().is_some(),
        draining: state.is_draining(),
        uptime_s: state.started.elapsed().as_secs_f64(),
        version: env!("CARGO_PKG_VERSION").into(),
        load: load(&state),
    })
}

/// Replication: how far this node's indexes are behind the store.
#[derive(Debug, Serialize, ToSchema)]
pub struct SyncInfo {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Last change applied to the local indexes.
    pub applied_seq: u64,
    /// Newest change of the store (at the last look).
    pub store_seq: u64,
    pub lag: u64,
    /// A follower keeps the indexes in step with the store.
    pub following: bool,
    /// The follower is woken by notifications (PostgreSQL), not only polls.
    pub listening: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
    pub node_id: String,
    pub load: Load,
    pub sync: SyncInfo,
}

/// Readiness: the engine is open, the store answers, the indexes are caught
/// up, and the node is not draining. 503 otherwise.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = Ready), (status = 503, body = crate::error::ErrorBody)))]
pub async fn ready(State(state): State<SharedState>) -> ApiResult<ApiJson<Ready>> {
    if state.is_draining() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the node is shutting down",
        ));
    }
    let engine = state.engine()?;
    engine.ready().await.map_err(|e| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string()).retry_after(1)
    })?;
    let sync = engine.sync_state();
    Ok(ApiJson(Ready {
        ready: true,
        node_id: state.node_id().to_string(),
        load: load(&state),
        sync: SyncInfo {
            backend: sync.backend,
            applied_seq: sync.applied_seq,
            store_seq: sync.store_seq,
            lag: sync.lag,
            following: sync.following,
            listening: sync.listening,
        },
    }))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<SharedState>) -> impl IntoResponse {
    crate::metrics::update_gauges(state.gate.running(), state.engine_opt().map(|e| e.stats()));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InfoLimits {
    pub max_body_bytes: usize,
    pub max_top_k: usize,
    pub max_message_chars: usize,
    pub max_page_size: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Info {
    pub version: String,
    /// Generators this node offers.
    pub generators: Vec<String>,
    pub default_generator: String,
    /// Default retrieval: `hybrid`, `vector` or `lexical`.
    pub retrieval_mode: String,
    pub top_k: usize,
    pub limits: InfoLimits,
    /// Documents and chunks stored.
    pub documents: usize,
    pub chunks: usize,
}

/// What this node offers (for clients and the web page).
#[utoipa::path(get, path = "/api/v1/info", tag = "operations",
    responses((status = 200, body = Info), (status = 503, body = crate::error::ErrorBody)))]
pub async fn info(
    State(state): State<SharedState>,
    axum::extract::Extension(principal): axum::extract::Extension<crate::auth::Principal>,
) -> ApiResult<ApiJson<Info>> {
    let engine = state.engine()?;
    let l = &state.config.limits;
    let stats = engine.stats();
    // Counts cover only what the principal may see.
    let (documents, chunks) = match principal.scope_list() {
        None => (stats.documents, stats.chunks),
        Some(scope) => engine.counts_in(&scope),
    };
    let mode = serde_json::to_value(engine.config().retrieval.mode)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    Ok(ApiJson(Info {
        version: env!("CARGO_PKG_VERSION").into(),
        generators: engine.generator_names(),
        default_generator: state.config.generator.name().into(),
        retrieval_mode: mode,
        top_k: engine.config().retrieval.top_k,
        limits: InfoLimits {
            max_body_bytes: l.max_body_bytes,
            max_top_k: l.max_top_k,
            max_message_chars: l.max_message_chars,
            max_page_size: l.max_page_size,
        },
        documents,
        chunks,
    }))
}
