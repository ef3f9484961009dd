//! `GET /api/v1/openapi.json`: the OpenAPI 3 document, generated from the
//! handlers' annotations (utoipa).
use axum::response::IntoResponse;
use utoipa::OpenApi;

use super::types::*;
use super::{chat, conversations, documents, openai, ops, search, ws};
use crate::error::{ErrorBody, ErrorDetail};

#[derive(OpenApi)]
#[openapi(
    info(title = "ragfleet node API", description = "RAG over your documents: ingest, search, cited chat (JSON, SSE, WebSocket), conversations, runs; OpenAI-compatible chat completions."),
    paths(
        documents::create, documents::batch, documents::list, documents::get, documents::delete,
        search::search, search::search_get,
        chat::chat, ws::chat_ws, crate::runs::resume,
        conversations::list, conversations::get, conversations::delete, conversations::run,
        openai::completions, openai::models,
        ops::health, ops::ready, ops::metrics, ops::info,
    ),
    components(schemas(
        ErrorBody, ErrorDetail, DocumentBody, IngestResponse, IngestedDocument, BatchResponse,
        BatchDocument, LineFailure, SearchBody, SearchResponse, SearchGroup, DocumentHitSchema, HitSchema, ChatBody, ChatResponse,
        CitationSchema, DocumentInfoSchema, DocumentPageSchema, ConversationInfoSchema,
        ConversationPageSchema, ConversationSchema, TurnSchema,
    )),
    tags(
        (name = "documents"), (name = "search"), (name = "chat"), (name = "conversations"),
        (name = "runs"), (name = "openai", description = "OpenAI-compatible"), (name = "operations"),
    )
)]
pub struct ApiDoc;

/// The OpenAPI document.
pub async fn spec() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}
