//! Storage traits: documents + chunks (the source of truth the indexes are
//! built from), conversations and run snapshots.
//!
//! The traits are object-safe (`async_trait`) so the engine can hold any
//! backend: the embedded [`sqlite::SqliteStore`] now, PostgreSQL next.
//!
//! Every change to a document (upsert or delete) gets a monotonically
//! increasing sequence number in a change log ([`DocumentStore::changes_since`]);
//! the indexes record the last sequence they applied, so a node that restarts
//! — or a node that shares the store with others — catches up from there
//! instead of rebuilding.
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::api::{Conversation, ConversationInfo, Page, RunSnapshot, Turn};
use crate::types::Metadata;
use crate::Result;

pub mod sqlite;

/// A document as stored (text included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentRecord {
    pub id: String,
    pub title: String,
    pub collection: String,
    pub metadata: Metadata,
    pub source: Option<String>,
    pub text: String,
    pub pages: Vec<(usize, u32)>,
    pub content_hash: String,
    pub chunks: usize,
    pub chars: usize,
    pub created_at: String,
    pub updated_at: String,
    /// Sequence number of the last change to this document.
    pub seq: u64,
}

/// A chunk to store with its embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChunk {
    pub id: String,
    pub ordinal: u32,
    pub text: String,
    pub start: usize,
    pub end: usize,
    pub page: Option<u32>,
    pub embedding: Vec<f32>,
}

/// A stored chunk. `key` is the store-assigned integer id the indexes use.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredChunk {
    pub key: u64,
    pub id: String,
    pub doc_id: String,
    pub ordinal: u32,
    pub collection: String,
    pub title: String,
    pub text: String,
    pub start: usize,
    pub end: usize,
    pub page: Option<u32>,
    /// Only filled by the calls that say so.
    pub embedding: Option<Vec<f32>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    Upsert,
    Delete,
}

/// One entry of the document change log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub seq: u64,
    pub doc_id: String,
    pub op: ChangeOp,
    /// Chunk keys this change removed (the document's previous chunks).
    pub removed_keys: Vec<u64>,
}

/// Result of [`DocumentStore::upsert_document`].
#[derive(Debug, Clone, PartialEq)]
pub struct Upserted {
    pub change: Change,
    /// Keys assigned to the new chunks, in order.
    pub keys: Vec<u64>,
    /// The document existed before.
    pub replaced: bool,
    pub created_at: String,
}

/// A chunk's owner, for index-side filtering.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkOwner {
    pub key: u64,
    pub doc_id: String,
    pub collection: String,
}

#[async_trait]
pub trait DocumentStore: Send + Sync {
    /// Checks the store answers.
    async fn ping(&self) -> Result<()>;
    async fn get_document(&self, id: &str) -> Result<Option<DocumentRecord>>;
    /// Documents ordered by id, optionally in one collection, plus the total count.
    async fn list_documents(
        &self,
        collection: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<Page<DocumentRecord>>;
    /// Inserts the document or replaces it (and all its chunks) atomically,
    /// logging one change. `doc.seq`, `created_at` (on replace) are assigned here.
    async fn upsert_document(&self, doc: &DocumentRecord, chunks: &[NewChunk]) -> Result<Upserted>;
    /// Deletes the document and its chunks, logging one change; `None` if absent.
    async fn delete_document(&self, id: &str) -> Result<Option<Change>>;
    /// Chunks by key (any order; missing keys are skipped). No embeddings.
    async fn chunks_by_keys(&self, keys: &[u64]) -> Result<Vec<StoredChunk>>;
    /// A document's current chunks in order, with embeddings.
    async fn document_chunks(&self, doc_id: &str) -> Result<Vec<StoredChunk>>;
    /// Chunks with `key > after` in key order, with embeddings (index rebuilds).
    async fn scan_chunks(&self, after: u64, limit: usize) -> Result<Vec<StoredChunk>>;
    /// Changes with `seq > after`, in order.
    async fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Change>>;
    /// The newest change sequence number (0 when none).
    async fn last_seq(&self) -> Result<u64>;
    /// Owners of every chunk (loaded once at open for filtering).
    async fn chunk_owners(&self) -> Result<Vec<ChunkOwner>>;
    /// Ids of documents whose metadata matches `filter` exactly (and in `collection`).
    async fn matching_documents(
        &self,
        collection: Option<&str>,
        filter: &Metadata,
    ) -> Result<Vec<String>>;
    /// `(documents, chunks)`.
    async fn counts(&self) -> Result<(usize, usize)>;
}

#[async_trait]
pub trait ConversationStore: Send + Sync {
    /// Appends turns to a conversation, creating it (with `title`) if new.
    async fn append_turns(&self, conversation_id: &str, title: &str, turns: &[Turn]) -> Result<()>;
    /// The last `n` turns, oldest first.
    async fn recent_turns(&self, conversation_id: &str, n: usize) -> Result<Vec<Turn>>;
    async fn get_conversation(&self, id: &str) -> Result<Option<Conversation>>;
    /// Most recently updated first.
    async fn list_conversations(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Page<ConversationInfo>>;
    async fn delete_conversation(&self, id: &str) -> Result<bool>;
}

#[async_trait]
pub trait RunStore: Send + Sync {
    async fn put_run(&self, run: &RunSnapshot) -> Result<()>;
    async fn get_run(&self, id: &str) -> Result<Option<RunSnapshot>>;
}

/// A backend implementing all three stores.
pub trait Store: DocumentStore + ConversationStore + RunStore {}
impl<T: DocumentStore + ConversationStore + RunStore> Store for T {}

/// Now, RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
