//! Storage traits: documents + chunks (the source of truth the indexes are
//! built from), conversations and run snapshots.
//!
//! The traits are object-safe (`async_trait`) so the engine can hold any
//! backend: the embedded [`sqlite::SqliteStore`] or the shared
//! [`postgres::PostgresStore`], chosen by [`crate::config::StoreConfig`]
//! ([`open`]).
//!
//! Every change to a document (upsert or delete) gets a monotonically
//! increasing sequence number in a change log ([`DocumentStore::changes_since`]);
//! the indexes record the last sequence they applied, so a node that restarts
//! — or a node that shares the store with others — catches up from there
//! instead of rebuilding.
//!
//! **Ordering guarantee** (what makes the change log a replication feed):
//! every backend commits changes in sequence order, so when a reader sees
//! change N it also sees every change before N. A follower that remembers
//! "applied up to N" therefore never skips a change. SQLite gives this for
//! free (one writer at a time, the sequence is assigned inside the write
//! transaction); PostgreSQL needs a table lock taken before the sequence is
//! drawn (see [`postgres`]), because sequence values are handed out before
//! commit and concurrent transactions could otherwise commit 10 before 9.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::api::{Conversation, ConversationInfo, Page, RunSnapshot, Turn};
use crate::config::StoreConfig;
use crate::types::Metadata;
use crate::{RagError, Result};

pub mod postgres;
pub mod principals;
pub mod sqlite;

pub use principals::PrincipalStore;

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
    /// The collections holding at least one document, sorted.
    async fn collections(&self) -> Result<Vec<String>>;
    /// A wake-up feed of new changes from other writers, if the backend has
    /// one (PostgreSQL LISTEN/NOTIFY). `None`: followers poll.
    async fn listen(&self) -> Result<Option<Box<dyn ChangeListener>>> {
        Ok(None)
    }
    /// `sqlite` or `postgres` (logs, metrics).
    fn backend(&self) -> &'static str;
}

/// Wake-ups for a follower: "changes up to `seq` were committed".
/// Notifications are hints; the change log stays the truth.
#[async_trait]
pub trait ChangeListener: Send {
    /// Waits for the next notification: `Ok(Some(seq))` a change was
    /// committed; `Ok(None)` the connection was lost and re-established, so
    /// notifications may have been missed (catch up); `Err` the listener is
    /// broken (drop it and listen again later).
    async fn next(&mut self) -> Result<Option<u64>>;
}

#[async_trait]
pub trait ConversationStore: Send + Sync {
    /// Appends turns to a conversation, creating it (with `title`) if new.
    /// Returns the index of the first appended turn (turns are numbered
    /// from 0 in order; concurrent appends to one conversation are serialised).
    async fn append_turns(&self, conversation_id: &str, title: &str, turns: &[Turn])
        -> Result<u64>;
    /// The last `n` turns, oldest first.
    async fn recent_turns(&self, conversation_id: &str, n: usize) -> Result<Vec<Turn>> {
        Ok(self
            .recent_turns_indexed(conversation_id, n)
            .await?
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }
    /// The last `n` turns with their indexes, oldest first.
    async fn recent_turns_indexed(
        &self,
        conversation_id: &str,
        n: usize,
    ) -> Result<Vec<(u64, Turn)>>;
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

/// A backend implementing every store.
pub trait Store: DocumentStore + ConversationStore + RunStore + PrincipalStore {}
impl<T: DocumentStore + ConversationStore + RunStore + PrincipalStore> Store for T {}

/// The id versions before migration 0015 derived from a document's text
/// alone: `doc-` + 16 hex digits of SHA-256 over the length-prefixed text.
pub fn legacy_document_id(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((text.len() as u64).to_le_bytes());
    h.update(text.as_bytes());
    format!("doc-{}", &hex::encode(h.finalize())[..16])
}

/// The data step of migration 0015 (document identity): each listed
/// document that has a source and the text-derived id of older versions
/// moves to [`crate::ingest::document_id`] — written under the new id (new
/// chunk keys, same chunks and embeddings, `created_at` kept), then deleted
/// under the old one, both through the change log so the indexes of every
/// node sharing the store follow. Newest first: when older versions left
/// several documents with one source, the newest takes the id and the
/// others stay as they are (nothing is lost). Idempotent, so processes
/// opening the store together, or a run cut short, are harmless.
pub(crate) async fn rekey_legacy_documents(
    store: &dyn DocumentStore,
    ids: &[String],
) -> Result<()> {
    let mut docs = Vec::new();
    for id in ids {
        if let Some(d) = store.get_document(id).await? {
            docs.push(d);
        }
    }
    docs.sort_by_key(|d| std::cmp::Reverse(d.seq));
    let (mut moved, mut kept) = (0usize, 0usize);
    for d in docs {
        let Some(source) = d.source.as_deref().filter(|s| !s.is_empty()) else {
            continue;
        };
        if d.id != legacy_document_id(&d.text) {
            continue; // a caller-given id stays
        }
        let new_id = crate::ingest::document_id(&d.collection, Some(source), &d.text);
        match store.get_document(&new_id).await? {
            // Moved already (another process, or a run cut short).
            Some(cur) if cur.content_hash == d.content_hash => {}
            // A newer version of this source holds the id.
            Some(_) => {
                kept += 1;
                continue;
            }
            None => {
                let chunks: Vec<NewChunk> = store
                    .document_chunks(&d.id)
                    .await?
                    .into_iter()
                    .map(|c| NewChunk {
                        id: format!("{new_id}#{}", c.ordinal),
                        ordinal: c.ordinal,
                        text: c.text,
                        start: c.start,
                        end: c.end,
                        page: c.page,
                        embedding: c.embedding.unwrap_or_default(),
                    })
                    .collect();
                let rec = DocumentRecord {
                    id: new_id.clone(),
                    ..d.clone()
                };
                store.upsert_document(&rec, &chunks).await?;
            }
        }
        store.delete_document(&d.id).await?;
        moved += 1;
    }
    if moved + kept > 0 {
        tracing::info!(
            moved,
            kept,
            "documents moved to source-based ids (kept: older versions of a source, left under their old id)"
        );
    }
    Ok(())
}

/// Now, RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Opens the backend `cfg` names (see [`StoreConfig`]); the embedded SQLite
/// file `data_dir/ragfleet.db` when it names none.
pub async fn open(cfg: &StoreConfig, data_dir: &Path) -> Result<Arc<dyn Store>> {
    let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms.max(1));
    let busy_timeout = Duration::from_millis(cfg.busy_timeout_ms);
    let pool_size = cfg.pool_size.max(1);
    let Some(url) = cfg.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| RagError::Storage(format!("creating {}: {e}", data_dir.display())))?;
        let opts = sqlite::SqliteOptions {
            pool_size,
            busy_timeout,
            connect_timeout,
        };
        return Ok(Arc::new(
            sqlite::SqliteStore::open_with(&data_dir.join("ragfleet.db"), &opts).await?,
        ));
    };
    let scheme = url
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if cfg.schema.is_some() && !matches!(scheme.as_str(), "postgres" | "postgresql") {
        return Err(RagError::InvalidInput(format!(
            "store.schema is for PostgreSQL only, but store.url is {}",
            redact_url(url)
        )));
    }
    match scheme.as_str() {
        "sqlite" => {
            let opts = sqlite::SqliteOptions {
                pool_size,
                busy_timeout,
                connect_timeout,
            };
            Ok(Arc::new(
                sqlite::SqliteStore::open_url_with(url, &opts).await?,
            ))
        }
        "postgres" | "postgresql" => {
            let opts = postgres::PostgresOptions {
                schema: cfg.schema.clone(),
                pool_size,
                connect_timeout,
            };
            Ok(Arc::new(postgres::PostgresStore::open(url, &opts).await?))
        }
        _ => {
            Err(RagError::InvalidInput(format!(
            "store.url {}: unsupported scheme {:?} (use sqlite://PATH or postgres://USER@HOST/DB, \
             or leave store.url out for data_dir/ragfleet.db)",
            redact_url(url),
            if url.contains(':') { scheme.as_str() } else { "" }
        )))
        }
    }
}

/// `url` with the password (if any) replaced by `***`, for messages and logs.
/// Which database produced an error (their codes differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// Maps a database error: not reaching the database (refused or lost
/// connection, server shutting down or restarting, pool exhausted, and in
/// SQLite a lock another process holds past the busy timeout) is
/// [`RagError::StorageUnavailable`]; everything else [`RagError::Storage`].
pub(crate) fn classify_db_error(e: sqlx::Error, dialect: Dialect) -> RagError {
    let unavailable = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| match dialect {
            // Class 08: connection exception; 57P01-57P03: admin shutdown,
            // crash shutdown, cannot connect now; 53300: too many connections.
            Dialect::Postgres => {
                c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03" | "53300")
            }
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
            Dialect::Sqlite => c.parse::<i32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6)),
        }),
        _ => false,
    };
    if unavailable {
        RagError::StorageUnavailable(e.to_string())
    } else {
        RagError::Storage(e.to_string())
    }
}

pub fn redact_url(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!("{}{}:***{}", &url[..start], &userinfo[..colon], &rest[at..]),
        None => url.to_string(),
    }
}

/// Checks a metadata filter key (both backends refuse the same keys, so a
/// filter means the same everywhere).
pub(crate) fn check_filter_key(key: &str) -> Result<()> {
    if key.contains('"') || key.contains('\\') {
        return Err(RagError::InvalidInput(format!(
            "metadata filter key {key:?} may not contain quotes or backslashes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{classify_db_error, redact_url, Dialect};
    use crate::RagError;

    #[test]
    fn unreachable_databases_are_unavailable_not_internal() {
        let reset = || sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        for d in [Dialect::Postgres, Dialect::Sqlite] {
            assert!(matches!(
                classify_db_error(reset(), d),
                RagError::StorageUnavailable(_)
            ));
            assert!(matches!(
                classify_db_error(sqlx::Error::PoolTimedOut, d),
                RagError::StorageUnavailable(_)
            ));
            assert!(matches!(
                classify_db_error(sqlx::Error::RowNotFound, d),
                RagError::Storage(_)
            ));
        }
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
        assert_eq!(redact_url("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact_url("nonsense"), "nonsense");
    }
}
