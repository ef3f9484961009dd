//! The shared store: PostgreSQL through sqlx, migrations embedded in the
//! binary (`migrations/postgres`) and applied at open (sqlx's migrator holds
//! an advisory lock meanwhile, so nodes starting together apply them once).
//!
//! Same semantics as [`super::sqlite::SqliteStore`]; the differences that
//! matter for a cluster:
//!
//! - **Commit order = sequence order.** A PostgreSQL sequence hands out
//!   numbers when asked, not when the transaction commits: with two
//!   concurrent writers, change 10 can become visible before change 9. A
//!   follower that read 10 and recorded "applied up to 10" would never apply
//!   9. So every document write starts with `LOCK TABLE changes IN EXCLUSIVE
//!   MODE` (readers are not blocked) and draws its sequence number while
//!   holding it until commit: writers are serialised, and a transaction with
//!   a higher number cannot commit before one with a lower number. The lock
//!   is taken first, before the document's rows are read, which also makes
//!   concurrent writes of one document replace each other cleanly.
//! - **Wake-ups.** The write transaction sends `NOTIFY` (delivered only if it
//!   commits) on a channel named after the schema; [`DocumentStore::listen`]
//!   returns a listener on it. Notifications are hints: followers still read
//!   the change log, and poll as well.
//! - **Reconnects.** Pooled connections are tested before use, so after a
//!   database restart the pool replaces dead connections by itself.
//! - Text may not contain NUL in PostgreSQL: document, chunk and turn text
//!   have NUL replaced by U+FFFD (same length in chars, so chunk offsets stay
//!   valid). JSON columns are kept as (escaped) text, except metadata (JSONB).
use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor, Postgres, QueryBuilder, Row};

use super::sqlite::{decode_vec, encode_vec, json_err, role_from, role_str};
use super::{
    now_rfc3339, redact_url, Change, ChangeListener, ChangeOp, ChunkOwner, ConversationStore,
    DocumentRecord, DocumentStore, NewChunk, RunStore, StoredChunk, Upserted,
};
use crate::api::{Conversation, ConversationInfo, Page, RunSnapshot, Turn};
use crate::types::Metadata;
use crate::{RagError, Result};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

fn db_err(e: sqlx::Error) -> RagError {
    super::classify_db_error(e, super::Dialect::Postgres)
}

/// Pool settings of a [`PostgresStore`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Schema for the tables (created if missing); `None`: the default `search_path`.
    pub schema: Option<String>,
    pub pool_size: u32,
    /// How long opening a connection (or waiting for a free one) may take.
    pub connect_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: None,
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// PostgreSQL-backed [`DocumentStore`] + [`ConversationStore`] + [`RunStore`].
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    connect: PgConnectOptions,
    connect_timeout: Duration,
    channel: String,
}

/// A schema name we can put in `search_path` and a channel name unquoted.
fn check_schema(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 48
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(RagError::InvalidInput(format!(
            "store.schema {s:?}: use letters, digits and _ (at most 48, not starting with a digit)"
        )))
    }
}

/// PostgreSQL text cannot hold NUL; U+FFFD keeps the length in chars.
fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db`), creates the
    /// schema if one is given, and applies migrations.
    pub async fn open(url: &str, opts: &PostgresOptions) -> Result<Self> {
        let shown = redact_url(url);
        let mut connect = PgConnectOptions::from_str(url)
            .map_err(|e| RagError::InvalidInput(format!("store.url {shown}: {e}")))?;
        let channel = match &opts.schema {
            Some(schema) => {
                check_schema(schema)?;
                let mut conn = tokio::time::timeout(opts.connect_timeout, connect.connect())
                    .await
                    .map_err(|_| {
                        RagError::Storage(format!(
                            "connecting to PostgreSQL at {shown}: timed out after {:?}",
                            opts.connect_timeout
                        ))
                    })?
                    .map_err(|e| {
                        RagError::Storage(format!("connecting to PostgreSQL at {shown}: {e}"))
                    })?;
                conn.execute(AssertSqlSafe(format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
                )))
                .await
                .map_err(|e| RagError::Storage(format!("creating schema {schema}: {e}")))?;
                let _ = conn.close().await;
                connect = connect.options([("search_path", schema.as_str())]);
                format!("ragfleet_changes_{schema}")
            }
            None => "ragfleet_changes".to_string(),
        };
        let pool = PgPoolOptions::new()
            .max_connections(opts.pool_size.max(1))
            .acquire_timeout(opts.connect_timeout)
            .test_before_acquire(true)
            .connect_with(connect.clone())
            .await
            .map_err(|e| RagError::Storage(format!("connecting to PostgreSQL at {shown}: {e}")))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| RagError::Storage(format!("migrating the PostgreSQL store: {e}")))?;
        let store = Self {
            pool,
            connect,
            connect_timeout: opts.connect_timeout,
            channel,
        };
        store.migrate_document_ids().await.map_err(|e| {
            RagError::Storage(format!(
                "migrating document ids in the PostgreSQL store: {e}"
            ))
        })?;
        Ok(store)
    }

    /// Migration 0015's data step ([`super::rekey_legacy_documents`]).
    async fn migrate_document_ids(&self) -> Result<()> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM legacy_document_ids")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        if ids.is_empty() {
            return Ok(());
        }
        super::rekey_legacy_documents(self, &ids).await?;
        sqlx::query("DELETE FROM legacy_document_ids")
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A transaction that does not touch the change log.
    async fn begin_tx(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(db_err)
    }

    /// The NOTIFY channel changes are announced on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Starts a document write: the change-log lock first (see the module docs).
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query("LOCK TABLE changes IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        Ok(tx)
    }

    async fn log_change(
        &self,
        tx: &mut sqlx::Transaction<'static, Postgres>,
        doc_id: &str,
        op: ChangeOp,
        removed: &[u64],
        at: &str,
    ) -> Result<u64> {
        let removed: Vec<i64> = removed.iter().map(|&k| k as i64).collect();
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO changes (doc_id, op, removed_keys, at) VALUES ($1, $2, $3, $4) RETURNING seq",
        )
        .bind(doc_id)
        .bind(match op {
            ChangeOp::Upsert => "upsert",
            ChangeOp::Delete => "delete",
        })
        .bind(&removed)
        .bind(at)
        .fetch_one(&mut **tx)
        .await
        .map_err(db_err)?;
        // Delivered to listeners only when (and if) the transaction commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(seq.to_string())
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        Ok(seq as u64)
    }
}

super::principals::impl_principal_store!(
    PostgresStore,
    PgRow,
    super::Dialect::Postgres,
    doc_from_row,
    conv_info_from_row
);

const DOC_COLS: &str = "id, title, collection, metadata::text AS metadata, source, text, pages, \
                        content_hash, chunks, chars, created_at, updated_at, seq";

fn doc_from_row(r: &PgRow) -> Result<DocumentRecord> {
    let metadata: String = r.try_get("metadata").map_err(db_err)?;
    let pages: String = r.try_get("pages").map_err(db_err)?;
    Ok(DocumentRecord {
        id: r.try_get("id").map_err(db_err)?,
        title: r.try_get("title").map_err(db_err)?,
        collection: r.try_get("collection").map_err(db_err)?,
        metadata: serde_json::from_str(&metadata).map_err(json_err)?,
        source: r.try_get("source").map_err(db_err)?,
        text: r.try_get("text").map_err(db_err)?,
        pages: serde_json::from_str(&pages).map_err(json_err)?,
        content_hash: r.try_get("content_hash").map_err(db_err)?,
        chunks: r.try_get::<i64, _>("chunks").map_err(db_err)? as usize,
        chars: r.try_get::<i64, _>("chars").map_err(db_err)? as usize,
        created_at: r.try_get("created_at").map_err(db_err)?,
        updated_at: r.try_get("updated_at").map_err(db_err)?,
        seq: r.try_get::<i64, _>("seq").map_err(db_err)? as u64,
    })
}

const CHUNK_COLS: &str = "c.key, c.id, c.doc_id, c.ordinal, d.collection, d.title, c.text, \
                          c.start_char, c.end_char, c.page";

fn chunk_from_row(r: &PgRow, with_embedding: bool) -> Result<StoredChunk> {
    let embedding = if with_embedding {
        let b: Vec<u8> = r.try_get("embedding").map_err(db_err)?;
        Some(decode_vec(&b))
    } else {
        None
    };
    Ok(StoredChunk {
        key: r.try_get::<i64, _>("key").map_err(db_err)? as u64,
        id: r.try_get("id").map_err(db_err)?,
        doc_id: r.try_get("doc_id").map_err(db_err)?,
        ordinal: r.try_get::<i32, _>("ordinal").map_err(db_err)? as u32,
        collection: r.try_get("collection").map_err(db_err)?,
        title: r.try_get("title").map_err(db_err)?,
        text: r.try_get("text").map_err(db_err)?,
        start: r.try_get::<i64, _>("start_char").map_err(db_err)? as usize,
        end: r.try_get::<i64, _>("end_char").map_err(db_err)? as usize,
        page: r
            .try_get::<Option<i64>, _>("page")
            .map_err(db_err)?
            .map(|p| p as u32),
        embedding,
    })
}

fn change_from_row(r: &PgRow) -> Result<Change> {
    let op: String = r.try_get("op").map_err(db_err)?;
    let removed: Vec<i64> = r.try_get("removed_keys").map_err(db_err)?;
    Ok(Change {
        seq: r.try_get::<i64, _>("seq").map_err(db_err)? as u64,
        doc_id: r.try_get("doc_id").map_err(db_err)?,
        op: if op == "delete" {
            ChangeOp::Delete
        } else {
            ChangeOp::Upsert
        },
        removed_keys: removed.into_iter().map(|k| k as u64).collect(),
    })
}

#[async_trait]
impl DocumentStore for PostgresStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn get_document(&self, id: &str) -> Result<Option<DocumentRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DOC_COLS} FROM documents WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(doc_from_row).transpose()
    }

    async fn list_documents(
        &self,
        collection: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<Page<DocumentRecord>> {
        // COLLATE "C": byte order, as SQLite sorts.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DOC_COLS} FROM documents WHERE ($1::text IS NULL OR collection = $1) \
             ORDER BY id COLLATE \"C\" LIMIT $2 OFFSET $3"
        )))
        .bind(collection)
        .bind(limit as i64)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM documents WHERE ($1::text IS NULL OR collection = $1)",
        )
        .bind(collection)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(Page {
            items: rows.iter().map(doc_from_row).collect::<Result<_>>()?,
            total: total as usize,
            offset,
            limit,
        })
    }

    async fn upsert_document(&self, doc: &DocumentRecord, chunks: &[NewChunk]) -> Result<Upserted> {
        let mut tx = self.begin_write().await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT created_at FROM documents WHERE id = $1")
                .bind(&doc.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        let removed_keys: Vec<i64> =
            sqlx::query_scalar("SELECT key FROM chunks WHERE doc_id = $1 ORDER BY key")
                .bind(&doc.id)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
        let removed_keys: Vec<u64> = removed_keys.into_iter().map(|k| k as u64).collect();
        let now = now_rfc3339();
        let seq = self
            .log_change(&mut tx, &doc.id, ChangeOp::Upsert, &removed_keys, &now)
            .await?;
        // A new document keeps a given creation time (documents moved to a
        // new id by a migration); the engine gives none.
        let created_at = existing
            .clone()
            .or_else(|| Some(doc.created_at.clone()).filter(|c| !c.is_empty()))
            .unwrap_or_else(|| now.clone());
        sqlx::query("DELETE FROM chunks WHERE doc_id = $1")
            .bind(&doc.id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO documents (id, title, collection, metadata, source, text, pages, content_hash, \
             chunks, chars, created_at, updated_at, seq) \
             VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, collection = EXCLUDED.collection, \
             metadata = EXCLUDED.metadata, source = EXCLUDED.source, text = EXCLUDED.text, \
             pages = EXCLUDED.pages, content_hash = EXCLUDED.content_hash, chunks = EXCLUDED.chunks, \
             chars = EXCLUDED.chars, updated_at = EXCLUDED.updated_at, seq = EXCLUDED.seq",
        )
        .bind(&doc.id)
        .bind(pg_text(&doc.title).as_ref())
        .bind(&doc.collection)
        .bind(serde_json::to_string(&doc.metadata).map_err(json_err)?)
        .bind(doc.source.as_deref().map(pg_text).as_deref())
        .bind(pg_text(&doc.text).as_ref())
        .bind(serde_json::to_string(&doc.pages).map_err(json_err)?)
        .bind(&doc.content_hash)
        .bind(chunks.len() as i64)
        .bind(doc.chars as i64)
        .bind(&created_at)
        .bind(&now)
        .bind(seq as i64)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let mut keys = Vec::with_capacity(chunks.len());
        if !chunks.is_empty() {
            let ids: Vec<&str> = chunks.iter().map(|c| c.id.as_str()).collect();
            let ordinals: Vec<i32> = chunks.iter().map(|c| c.ordinal as i32).collect();
            let texts: Vec<String> = chunks
                .iter()
                .map(|c| pg_text(&c.text).into_owned())
                .collect();
            let starts: Vec<i64> = chunks.iter().map(|c| c.start as i64).collect();
            let ends: Vec<i64> = chunks.iter().map(|c| c.end as i64).collect();
            let pages: Vec<Option<i64>> = chunks.iter().map(|c| c.page.map(i64::from)).collect();
            let embeddings: Vec<Vec<u8>> =
                chunks.iter().map(|c| encode_vec(&c.embedding)).collect();
            let rows = sqlx::query(
                "INSERT INTO chunks (id, doc_id, ordinal, text, start_char, end_char, page, embedding) \
                 SELECT u.id, $1, u.ordinal, u.text, u.start_char, u.end_char, u.page, u.embedding \
                 FROM UNNEST($2::text[], $3::int4[], $4::text[], $5::int8[], $6::int8[], $7::int8[], \
                 $8::bytea[]) AS u(id, ordinal, text, start_char, end_char, page, embedding) \
                 RETURNING key, id",
            )
            .bind(&doc.id)
            .bind(&ids)
            .bind(&ordinals)
            .bind(&texts)
            .bind(&starts)
            .bind(&ends)
            .bind(&pages)
            .bind(&embeddings)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            let mut by_id: HashMap<String, u64> = HashMap::with_capacity(rows.len());
            for r in &rows {
                let key: i64 = r.try_get("key").map_err(db_err)?;
                by_id.insert(r.try_get("id").map_err(db_err)?, key as u64);
            }
            for c in chunks {
                keys.push(
                    by_id.get(&c.id).copied().ok_or_else(|| {
                        RagError::Storage(format!("chunk {} was not stored", c.id))
                    })?,
                );
            }
        }
        tx.commit().await.map_err(db_err)?;
        Ok(Upserted {
            change: Change {
                seq,
                doc_id: doc.id.clone(),
                op: ChangeOp::Upsert,
                removed_keys,
            },
            keys,
            replaced: existing.is_some(),
            created_at,
        })
    }

    async fn delete_document(&self, id: &str) -> Result<Option<Change>> {
        let mut tx = self.begin_write().await?;
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM documents WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        if exists.is_none() {
            return Ok(None);
        }
        let removed_keys: Vec<i64> =
            sqlx::query_scalar("SELECT key FROM chunks WHERE doc_id = $1 ORDER BY key")
                .bind(id)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
        let removed_keys: Vec<u64> = removed_keys.into_iter().map(|k| k as u64).collect();
        let seq = self
            .log_change(&mut tx, id, ChangeOp::Delete, &removed_keys, &now_rfc3339())
            .await?;
        sqlx::query("DELETE FROM chunks WHERE doc_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query("DELETE FROM documents WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(Change {
            seq,
            doc_id: id.to_string(),
            op: ChangeOp::Delete,
            removed_keys,
        }))
    }

    async fn chunks_by_keys(&self, keys: &[u64]) -> Result<Vec<StoredChunk>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<i64> = keys.iter().map(|&k| k as i64).collect();
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CHUNK_COLS} FROM chunks c JOIN documents d ON d.id = c.doc_id \
             WHERE c.key = ANY($1)"
        )))
        .bind(&keys)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(|r| chunk_from_row(r, false)).collect()
    }

    async fn document_chunks(&self, doc_id: &str) -> Result<Vec<StoredChunk>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CHUNK_COLS}, c.embedding FROM chunks c JOIN documents d ON d.id = c.doc_id \
             WHERE c.doc_id = $1 ORDER BY c.ordinal"
        )))
        .bind(doc_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(|r| chunk_from_row(r, true)).collect()
    }

    async fn scan_chunks(&self, after: u64, limit: usize) -> Result<Vec<StoredChunk>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CHUNK_COLS}, c.embedding FROM chunks c JOIN documents d ON d.id = c.doc_id \
             WHERE c.key > $1 ORDER BY c.key LIMIT $2"
        )))
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(|r| chunk_from_row(r, true)).collect()
    }

    async fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Change>> {
        let rows = sqlx::query(
            "SELECT seq, doc_id, op, removed_keys FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(change_from_row).collect()
    }

    async fn last_seq(&self) -> Result<u64> {
        let seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM changes")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(seq as u64)
    }

    async fn chunk_owners(&self) -> Result<Vec<ChunkOwner>> {
        let rows = sqlx::query(
            "SELECT c.key, c.doc_id, d.collection FROM chunks c JOIN documents d ON d.id = c.doc_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(ChunkOwner {
                    key: r.try_get::<i64, _>("key").map_err(db_err)? as u64,
                    doc_id: r.try_get("doc_id").map_err(db_err)?,
                    collection: r.try_get("collection").map_err(db_err)?,
                })
            })
            .collect()
    }

    async fn matching_documents(
        &self,
        collection: Option<&str>,
        filter: &Metadata,
    ) -> Result<Vec<String>> {
        let mut qb: QueryBuilder<Postgres> =
            QueryBuilder::new("SELECT id FROM documents WHERE TRUE");
        if let Some(c) = collection {
            qb.push(" AND collection = ").push_bind(c.to_string());
        }
        for (k, v) in filter {
            super::check_filter_key(k)?;
            // jsonb equality: same type and value (1 = 1.0, "5" ≠ 5), a
            // missing key is NULL and matches nothing.
            qb.push(" AND metadata -> ")
                .push_bind(k.clone())
                .push(" = ")
                .push_bind(serde_json::to_string(v).map_err(json_err)?)
                .push("::jsonb");
        }
        let rows: Vec<String> = qb
            .build_query_scalar()
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(rows)
    }

    async fn counts(&self) -> Result<(usize, usize)> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM documents) AS docs, (SELECT COUNT(*) FROM chunks) AS chunks",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        let docs: i64 = row.try_get("docs").map_err(db_err)?;
        let chunks: i64 = row.try_get("chunks").map_err(db_err)?;
        Ok((docs as usize, chunks as usize))
    }

    async fn listen(&self) -> Result<Option<Box<dyn ChangeListener>>> {
        // Its own one-connection pool: the listener holds its connection for
        // good, and reconnects through this pool after a restart.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(self.connect_timeout)
            .connect_with(self.connect.clone())
            .await
            .map_err(|e| RagError::Storage(format!("listening for changes: {e}")))?;
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(|e| RagError::Storage(format!("listening for changes: {e}")))?;
        listener.ignore_pool_close_event(true);
        listener
            .listen(&self.channel)
            .await
            .map_err(|e| RagError::Storage(format!("LISTEN {}: {e}", self.channel)))?;
        Ok(Some(Box::new(PgChangeListener {
            listener,
            _pool: pool,
        })))
    }

    async fn collections(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT DISTINCT collection FROM documents ORDER BY collection")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

struct PgChangeListener {
    listener: PgListener,
    _pool: PgPool,
}

#[async_trait]
impl ChangeListener for PgChangeListener {
    async fn next(&mut self) -> Result<Option<u64>> {
        match self.listener.try_recv().await {
            Ok(Some(n)) => Ok(Some(n.payload().parse().unwrap_or(0))),
            Ok(None) => Ok(None),
            Err(e) => Err(RagError::Storage(format!("change notifications: {e}"))),
        }
    }
}

fn turn_from_row(r: &PgRow) -> Result<(u64, Turn)> {
    let role: String = r.try_get("role").map_err(db_err)?;
    let citations: String = r.try_get("citations").map_err(db_err)?;
    let idx: i64 = r.try_get("idx").map_err(db_err)?;
    Ok((
        idx as u64,
        Turn {
            role: role_from(&role),
            content: r.try_get("content").map_err(db_err)?,
            citations: serde_json::from_str(&citations).map_err(json_err)?,
            run_id: r.try_get("run_id").map_err(db_err)?,
            at: r.try_get("at").map_err(db_err)?,
        },
    ))
}

fn conv_info_from_row(r: &PgRow) -> Result<ConversationInfo> {
    Ok(ConversationInfo {
        id: r.try_get("id").map_err(db_err)?,
        title: r.try_get("title").map_err(db_err)?,
        turns: r.try_get::<i64, _>("turns").map_err(db_err)? as usize,
        created_at: r.try_get("created_at").map_err(db_err)?,
        updated_at: r.try_get("updated_at").map_err(db_err)?,
    })
}

#[async_trait]
impl ConversationStore for PostgresStore {
    async fn append_turns(
        &self,
        conversation_id: &str,
        title: &str,
        turns: &[Turn],
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let now = now_rfc3339();
        sqlx::query(
            "INSERT INTO conversations (id, title, turns, created_at, updated_at) \
             VALUES ($1, $2, 0, $3, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(conversation_id)
        .bind(pg_text(title).as_ref())
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        // The row lock serialises appends to one conversation.
        sqlx::query("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE")
            .bind(conversation_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let next: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(idx) + 1, 0) FROM turns WHERE conversation_id = $1",
        )
        .bind(conversation_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        for (i, t) in turns.iter().enumerate() {
            sqlx::query(
                "INSERT INTO turns (conversation_id, idx, role, content, citations, run_id, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(conversation_id)
            .bind(next + i as i64)
            .bind(role_str(t.role))
            .bind(pg_text(&t.content).as_ref())
            .bind(serde_json::to_string(&t.citations).map_err(json_err)?)
            .bind(&t.run_id)
            .bind(&t.at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        sqlx::query("UPDATE conversations SET turns = turns + $1, updated_at = $2 WHERE id = $3")
            .bind(turns.len() as i64)
            .bind(&now)
            .bind(conversation_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(next as u64)
    }

    async fn recent_turns_indexed(
        &self,
        conversation_id: &str,
        n: usize,
    ) -> Result<Vec<(u64, Turn)>> {
        let rows = sqlx::query(
            "SELECT * FROM (SELECT idx, role, content, citations, run_id, at FROM turns \
             WHERE conversation_id = $1 ORDER BY idx DESC LIMIT $2) t ORDER BY idx",
        )
        .bind(conversation_id)
        .bind(n as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(turn_from_row).collect()
    }

    async fn get_conversation(&self, id: &str) -> Result<Option<Conversation>> {
        let Some(row) = sqlx::query("SELECT * FROM conversations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let info = conv_info_from_row(&row)?;
        let rows = sqlx::query(
            "SELECT idx, role, content, citations, run_id, at FROM turns \
             WHERE conversation_id = $1 ORDER BY idx",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(Some(Conversation {
            id: info.id,
            title: info.title,
            created_at: info.created_at,
            turns: rows
                .iter()
                .map(|r| turn_from_row(r).map(|(_, t)| t))
                .collect::<Result<_>>()?,
        }))
    }

    async fn list_conversations(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Page<ConversationInfo>> {
        let rows = sqlx::query(
            "SELECT * FROM conversations ORDER BY updated_at DESC, id COLLATE \"C\" \
             LIMIT $1 OFFSET $2",
        )
        .bind(limit as i64)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM conversations")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(Page {
            items: rows.iter().map(conv_info_from_row).collect::<Result<_>>()?,
            total: total as usize,
            offset,
            limit,
        })
    }

    async fn delete_conversation(&self, id: &str) -> Result<bool> {
        // Turns go with it (ON DELETE CASCADE).
        let res = sqlx::query("DELETE FROM conversations WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(res.rows_affected() > 0)
    }
}

#[async_trait]
impl RunStore for PostgresStore {
    async fn put_run(&self, run: &RunSnapshot) -> Result<()> {
        sqlx::query(
            "INSERT INTO runs (id, time, conversation_id, snapshot) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET snapshot = EXCLUDED.snapshot",
        )
        .bind(&run.run_id)
        .bind(&run.time)
        .bind(&run.conversation_id)
        .bind(serde_json::to_string(run).map_err(json_err)?)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn get_run(&self, id: &str) -> Result<Option<RunSnapshot>> {
        let snap: Option<String> = sqlx::query_scalar("SELECT snapshot FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        snap.map(|s| serde_json::from_str(&s).map_err(json_err))
            .transpose()
    }
}
