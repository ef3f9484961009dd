//! Plain data of the [`crate::engine::Engine`] API (documents, search, chat,
//! conversations, run snapshots). All of it is serde-serialisable so the HTTP
//! layer can return it as JSON unchanged.
use serde::{Deserialize, Serialize};

use crate::generate::{ChatMessage, GenParams, Role, Source};
use crate::types::{Metadata, RetrievalMode};

/// What ingesting one document did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestStatus {
    /// A new document.
    Created,
    /// The document existed with other content; its old chunks were replaced.
    Replaced,
    /// The document existed with the same content (and title, collection,
    /// metadata): nothing was done.
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestOutcome {
    pub doc_id: String,
    pub chunks: usize,
    pub status: IngestStatus,
}

/// A stored document (without its text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentInfo {
    pub id: String,
    pub title: String,
    pub collection: String,
    pub metadata: Metadata,
    pub source: Option<String>,
    pub chunks: usize,
    /// Length of the text in chars.
    pub chars: usize,
    pub content_hash: String,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Items matching in total (all pages).
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    pub query: String,
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    #[serde(default)]
    pub mode: RetrievalMode,
    #[serde(default)]
    pub collection: Option<String>,
    /// Exact-match filter on document metadata: every key must be present
    /// with an equal JSON value.
    #[serde(default)]
    pub filter: Metadata,
}

fn default_top_k() -> usize {
    5
}

impl SearchQuery {
    /// A query with the defaults (top 5, hybrid, no filter).
    pub fn new(query: impl Into<String>) -> Self {
        Self {
            query: query.into(),
            top_k: default_top_k(),
            mode: RetrievalMode::default(),
            collection: None,
            filter: Metadata::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub message: String,
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub collection: Option<String>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub mode: Option<RetrievalMode>,
    /// Name of a generator in [`crate::engine::Generators`]; the default when `None`.
    #[serde(default)]
    pub generator: Option<String>,
    #[serde(default)]
    pub params: Option<GenParams>,
    /// Exact-match metadata filter for retrieval (extension of ENGINE_API.md).
    #[serde(default)]
    pub filter: Metadata,
}

impl ChatRequest {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            ..Default::default()
        }
    }
}

/// A source given to the generator, numbered `n` in the prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Citation {
    pub n: usize,
    pub doc_id: String,
    pub chunk_id: String,
    pub title: String,
    /// The chunk text (the cited span is `start..end` of the document, in chars).
    pub snippet: String,
    pub start: usize,
    pub end: usize,
    pub page: Option<u32>,
    pub score: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Per-stage wall times of one answer, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Timings {
    pub embed_ms: f64,
    pub search_ms: f64,
    /// From the start of the request to the first token.
    pub first_token_ms: Option<f64>,
    pub total_ms: f64,
}

/// One event of a chat stream: `Retrieval`, then `Token`*, then `Done` or `Error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatEvent {
    Retrieval {
        conversation_id: String,
        run_id: String,
        citations: Vec<Citation>,
    },
    Token {
        text: String,
    },
    Done {
        conversation_id: String,
        run_id: String,
        /// The answer after attribution: each sentence followed by the
        /// `[n]` of the sources that support it (`[?]`: none does). It may
        /// differ from the streamed tokens, which are the generator's raw text.
        answer: String,
        /// The sources the answer uses (attributed); empty when the engine
        /// abstained or no sentence is supported.
        citations: Vec<Citation>,
        usage: Usage,
        timings: Timings,
    },
    Error {
        message: String,
    },
}

pub type ChatStream = futures::stream::BoxStream<'static, ChatEvent>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationInfo {
    pub id: String,
    /// The first question, truncated.
    pub title: String,
    pub turns: usize,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: String,
    pub title: String,
    pub created_at: String,
    pub turns: Vec<Turn>,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub role: Role,
    pub content: String,
    #[serde(default)]
    pub citations: Vec<Citation>,
    #[serde(default)]
    pub run_id: Option<String>,
    /// RFC 3339.
    pub at: String,
}

fn default_weights() -> (f32, f32) {
    (1.0, 1.0)
}

/// Retrieval settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRetrieval {
    pub mode: RetrievalMode,
    pub top_k: usize,
    pub rrf_k: f32,
    pub candidates: usize,
    /// Fusion weights `(lexical, vector)` (absent in snapshots older than them).
    #[serde(default = "default_weights")]
    pub weights: (f32, f32),
    pub collection: Option<String>,
    #[serde(default)]
    pub filter: Metadata,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievedChunk {
    pub chunk_id: String,
    pub score: f32,
}

/// Everything needed to reproduce an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSnapshot {
    pub run_id: String,
    /// RFC 3339.
    pub time: String,
    /// SHA-256 of the engine configuration (JSON).
    pub config_hash: String,
    /// [`crate::embed::Embedder::id`] (model name + file hash).
    pub embedder_id: String,
    /// Name of the generator in the engine's [`crate::engine::Generators`].
    pub generator: String,
    /// [`crate::generate::Generator::id`] (kind + model + file hash).
    pub generator_id: String,
    pub retrieval: RunRetrieval,
    pub retrieved: Vec<RetrievedChunk>,
    /// The exact prompt given to the generator.
    pub prompt: Vec<ChatMessage>,
    /// The question and the numbered sources as given to the generator.
    pub question: String,
    pub sources: Vec<Source>,
    pub params: GenParams,
    /// The generator's raw text (what a replay reproduces).
    pub output: String,
    pub citations: Vec<Citation>,
    pub usage: Usage,
    pub timings: Timings,
    pub conversation_id: String,
    /// The relevance test and the abstention decision (absent in snapshots
    /// older than it).
    #[serde(default)]
    pub relevance: Option<Relevance>,
    /// Which sources support which sentence of the answer.
    #[serde(default)]
    pub attribution: Vec<SentenceAttribution>,
    /// The answer as delivered: `output` after attribution (markers set by
    /// the supporting sources, unsupported sentences marked or removed).
    #[serde(default)]
    pub answer: String,
}

/// The evidence retrieval found for a question, independent of how the hits
/// were ranked or fused (so it stays comparable when fusion changes).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Relevance {
    /// Cosine similarity of the question to the closest chunk in the vector
    /// index (within the request's collection/filter); `None` in lexical mode.
    pub cosine: Option<f32>,
    /// The largest IDF-weighted query-term coverage among the hits (share of
    /// the question's BM25 IDF weight a hit's text contains, 0–1).
    pub coverage: f32,
    /// The score compared with the threshold: the mean of `cosine` and
    /// `coverage` (just `coverage` without a cosine).
    pub score: f32,
    /// The threshold in force (`[chat] min_relevance`).
    pub threshold: f32,
    /// `score < threshold`: the engine answered [`crate::answer::NO_ANSWER`] and called no
    /// generator.
    pub abstained: bool,
}

impl Relevance {
    pub fn new(cosine: Option<f32>, coverage: f32, threshold: f32) -> Self {
        let score = match cosine {
            Some(c) => (c + coverage) / 2.0,
            None => coverage,
        };
        Self {
            cosine,
            coverage,
            score,
            threshold,
            abstained: score < threshold,
        }
    }
}

/// Which sources support one sentence of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentenceAttribution {
    /// The sentence without its markers.
    pub sentence: String,
    /// Source numbers (`[n]`) that support it, best first; empty when none does.
    pub sources: Vec<usize>,
    /// Support by the best source: the share of the sentence's IDF-weighted
    /// content terms found in it (0–1).
    pub support: f32,
    /// `support >= min_support`, or a sentence with no content words.
    pub supported: bool,
}

/// The result of [`crate::engine::Engine::replay`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replay {
    pub run_id: String,
    pub generator_id: String,
    /// The generator's id differs from the one recorded in the run.
    pub generator_changed: bool,
    pub original: String,
    pub output: String,
    /// `output == original`.
    pub identical: bool,
}

/// Cheap counters.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EngineStats {
    pub documents: usize,
    pub chunks: usize,
    pub vector_index_size: usize,
    pub lexical_index_size: usize,
    /// Last document change sequence number applied to the indexes.
    pub applied_seq: u64,
}

/// Replication state of an engine ([`crate::Engine::sync_state`]): for
/// `/ready`, `/metrics` and operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Last change applied to the local indexes.
    pub applied_seq: u64,
    /// Newest change the store reported (at the last look).
    pub store_seq: u64,
    /// `store_seq - applied_seq`.
    pub lag: u64,
    /// A follower task runs.
    pub following: bool,
    /// The follower is subscribed to change notifications (PostgreSQL);
    /// `false` means it polls only.
    pub listening: bool,
    /// Milliseconds since the indexes last caught up successfully.
    pub last_sync_ms_ago: Option<u64>,
    /// The last catch-up's error, cleared by the next success.
    pub last_error: Option<String>,
}
