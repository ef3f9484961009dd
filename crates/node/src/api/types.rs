//! Request and response bodies of the API. Requests are strict
//! (`deny_unknown_fields`): a misspelt field is a 422 naming it.
use ragfleet_rag::types::{Metadata, RetrievalMode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::Limits;
use crate::error::ApiError;

/// `POST /api/v1/documents` with a JSON body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentBody {
    /// Kept verbatim. When absent: derived from `source` within the
    /// collection, or without a source from the text within the collection.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    pub text: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Metadata,
    #[serde(default)]
    pub collection: Option<String>,
    /// Where the text came from (shown with citations).
    #[serde(default)]
    pub source: Option<String>,
}

impl DocumentBody {
    pub fn into_new_document(self) -> ragfleet_rag::types::NewDocument {
        ragfleet_rag::types::NewDocument {
            id: self.id,
            title: self.title,
            text: self.text,
            collection: self.collection,
            metadata: self.metadata,
            source: self.source,
            pages: Vec::new(),
        }
    }
}

/// What ingesting one document did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IngestedDocument {
    pub doc_id: String,
    pub chunks: usize,
    /// `created`, `replaced` (same id, new content) or `unchanged`.
    pub status: String,
}

impl From<ragfleet_rag::IngestOutcome> for IngestedDocument {
    fn from(o: ragfleet_rag::IngestOutcome) -> Self {
        crate::metrics::record_ingest(o.status);
        Self {
            doc_id: o.doc_id,
            chunks: o.chunks,
            status: match o.status {
                ragfleet_rag::IngestStatus::Created => "created",
                ragfleet_rag::IngestStatus::Replaced => "replaced",
                ragfleet_rag::IngestStatus::Unchanged => "unchanged",
            }
            .into(),
        }
    }
}

/// `201` answer to `POST /api/v1/documents`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IngestResponse {
    /// The first (usually only) document's id.
    pub doc_id: String,
    /// Chunks over all documents.
    pub chunks: usize,
    /// One entry per document (an upload of JSON Lines gives several).
    pub documents: Vec<IngestedDocument>,
}

/// One failed line of a batch.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LineFailure {
    /// 1-based line number in the request body.
    pub line: usize,
    pub error: crate::error::ErrorDetail,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchDocument {
    pub line: usize,
    pub doc_id: String,
    pub chunks: usize,
    pub status: String,
}

/// Answer to `POST /api/v1/documents/batch`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchResponse {
    /// Non-empty lines read.
    pub lines: usize,
    pub ingested: usize,
    pub failed: usize,
    pub chunks: usize,
    pub documents: Vec<BatchDocument>,
    pub failures: Vec<LineFailure>,
}

/// `?offset=&limit=&collection=` of `GET /api/v1/documents`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DocumentListQuery {
    #[serde(default)]
    pub offset: Option<usize>,
    /// Page size (default 50, at most `limits.max_page_size`).
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub collection: Option<String>,
}

/// `?offset=&limit=` of listings.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    #[serde(default)]
    pub offset: Option<usize>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `?collection=` of the batch endpoint.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BatchQuery {
    /// Collection for lines that name none.
    #[serde(default)]
    pub collection: Option<String>,
    /// The file the lines come from, for lines that name no source: a line
    /// with an id gets it as its source, a line without one `SOURCE#LINE`
    /// (its identity; see docs/ingest.md).
    #[serde(default)]
    pub source: Option<String>,
}

pub fn page_bounds(
    limits: &Limits,
    offset: Option<usize>,
    limit: Option<usize>,
) -> Result<(usize, usize), ApiError> {
    let limit = limit.unwrap_or(50);
    if limit == 0 || limit > limits.max_page_size {
        return Err(ApiError::invalid(format!(
            "limit must be between 1 and {}",
            limits.max_page_size
        )));
    }
    Ok((offset.unwrap_or(0), limit))
}

/// `POST /api/v1/search`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    pub query: String,
    /// Results wanted (default: the node's `retrieval.top_k`; at most `limits.max_top_k`).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// `hybrid` (default), `vector` or `lexical`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub mode: Option<RetrievalMode>,
    #[serde(default)]
    pub collection: Option<String>,
    /// Exact-match metadata filter.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub filter: Metadata,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchResponse {
    pub hits: Vec<HitSchema>,
    pub took_ms: f64,
}

/// `POST /api/v1/chat` (and each WebSocket question).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatBody {
    pub message: String,
    /// Continue this conversation; a new one is created when absent.
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub collection: Option<String>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub mode: Option<RetrievalMode>,
    /// `extractive`, `local`, `openai` (those the node has); the node's default otherwise.
    #[serde(default)]
    pub generator: Option<String>,
    /// Stream Server-Sent Events (also chosen by `Accept: text/event-stream`).
    #[serde(default)]
    pub stream: Option<bool>,
    /// Answer length cap in tokens.
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Sampling temperature (0 = greedy).
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub filter: Metadata,
}

/// Reasonable bounds on sampling parameters from clients.
pub const MAX_ANSWER_TOKENS: usize = 4096;

pub fn check_text(limits: &Limits, what: &str, text: &str) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::invalid(format!("{what} is empty")));
    }
    let n = text.chars().count();
    if n > limits.max_message_chars {
        return Err(ApiError::invalid(format!(
            "{what} has {n} characters; the limit is {}",
            limits.max_message_chars
        )));
    }
    Ok(())
}

pub fn check_top_k(limits: &Limits, top_k: Option<usize>) -> Result<(), ApiError> {
    if let Some(k) = top_k {
        if k == 0 || k > limits.max_top_k {
            return Err(ApiError::invalid(format!(
                "top_k must be between 1 and {}",
                limits.max_top_k
            )));
        }
    }
    Ok(())
}

impl ChatBody {
    /// Validate against the limits and turn into the engine's request.
    pub fn into_request(
        self,
        limits: &Limits,
        defaults: &ragfleet_rag::generate::GenParams,
    ) -> Result<ragfleet_rag::ChatRequest, ApiError> {
        check_text(limits, "message", &self.message)?;
        check_top_k(limits, self.top_k)?;
        let params = if self.max_tokens.is_some() || self.temperature.is_some() {
            let mut p = defaults.clone();
            if let Some(m) = self.max_tokens {
                if m == 0 || m > MAX_ANSWER_TOKENS {
                    return Err(ApiError::invalid(format!(
                        "max_tokens must be between 1 and {MAX_ANSWER_TOKENS}"
                    )));
                }
                p.max_tokens = m;
            }
            if let Some(t) = self.temperature {
                if !(0.0..=2.0).contains(&t) {
                    return Err(ApiError::invalid("temperature must be between 0 and 2"));
                }
                p.temperature = t;
            }
            Some(p)
        } else {
            None
        };
        Ok(ragfleet_rag::ChatRequest {
            message: self.message,
            conversation_id: self.conversation_id.filter(|c| !c.trim().is_empty()),
            collection: self.collection,
            top_k: self.top_k,
            mode: self.mode,
            generator: self.generator,
            params,
            filter: self.filter,
        })
    }
}

/// Non-streamed answer of `POST /api/v1/chat`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatResponse {
    pub conversation_id: String,
    pub run_id: String,
    pub answer: String,
    pub citations: Vec<CitationSchema>,
    #[schema(value_type = Object)]
    pub usage: ragfleet_rag::Usage,
    #[schema(value_type = Object)]
    pub timings: ragfleet_rag::Timings,
}

// ---- Schema-only mirrors of engine types returned as they are. The API
// tests check the real bodies against these (schemathesis, response checks).

/// A retrieval hit.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Hit)]
pub struct HitSchema {
    pub doc_id: String,
    pub chunk_id: String,
    pub score: f32,
    pub title: String,
    pub text: String,
    /// Char offsets of the chunk in the document text.
    pub start: usize,
    pub end: usize,
    pub page: Option<u32>,
}

impl From<ragfleet_rag::types::Hit> for HitSchema {
    fn from(h: ragfleet_rag::types::Hit) -> Self {
        Self {
            doc_id: h.doc_id,
            chunk_id: h.chunk_id,
            score: h.score,
            title: h.title,
            text: h.text,
            start: h.start,
            end: h.end,
            page: h.page,
        }
    }
}

/// A numbered source of an answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Citation)]
pub struct CitationSchema {
    /// The `[n]` marker in the answer.
    pub n: usize,
    pub doc_id: String,
    pub chunk_id: String,
    pub title: String,
    /// The cited chunk's text.
    pub snippet: String,
    pub start: usize,
    pub end: usize,
    pub page: Option<u32>,
    pub score: f32,
}

impl From<ragfleet_rag::Citation> for CitationSchema {
    fn from(c: ragfleet_rag::Citation) -> Self {
        Self {
            n: c.n,
            doc_id: c.doc_id,
            chunk_id: c.chunk_id,
            title: c.title,
            snippet: c.snippet,
            start: c.start,
            end: c.end,
            page: c.page,
            score: c.score,
        }
    }
}

/// A stored document (without its text).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = DocumentInfo)]
pub struct DocumentInfoSchema {
    pub id: String,
    pub title: String,
    pub collection: String,
    #[schema(value_type = Object)]
    pub metadata: Metadata,
    pub source: Option<String>,
    pub chunks: usize,
    pub chars: usize,
    pub content_hash: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = DocumentPage)]
pub struct DocumentPageSchema {
    pub items: Vec<DocumentInfoSchema>,
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = ConversationInfo)]
pub struct ConversationInfoSchema {
    pub id: String,
    pub title: String,
    pub turns: usize,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = ConversationPage)]
pub struct ConversationPageSchema {
    pub items: Vec<ConversationInfoSchema>,
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Turn)]
pub struct TurnSchema {
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
    pub citations: Vec<CitationSchema>,
    pub run_id: Option<String>,
    pub at: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Conversation)]
pub struct ConversationSchema {
    pub id: String,
    pub title: String,
    pub created_at: String,
    pub turns: Vec<TurnSchema>,
}
