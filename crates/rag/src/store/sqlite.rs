//! The embedded store: one SQLite file (WAL mode) through sqlx, migrations
//! embedded in the binary and applied at open.
//!
//! Several processes may share the file (`ragfleet up` runs its nodes on one
//! store): SQLite serialises writers, every write transaction starts with
//! `BEGIN IMMEDIATE` (taking the write lock up front, so a transaction never
//! has to upgrade a read lock — the case where SQLite fails at once with
//! SQLITE_BUSY instead of waiting), and the busy timeout makes a writer wait
//! for another process's write instead of failing. Because the change
//! sequence is assigned inside that exclusive write transaction, changes
//! commit in sequence order (see [`super`]).
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite};

use super::{
    now_rfc3339, Change, ChangeOp, ChunkOwner, ConversationStore, DocumentRecord, DocumentStore,
    NewChunk, RunStore, StoredChunk, Upserted,
};
use crate::api::{Conversation, ConversationInfo, Page, RunSnapshot, Turn};
use crate::generate::Role;
use crate::types::Metadata;
use crate::{RagError, Result};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

fn db_err(e: sqlx::Error) -> RagError {
    super::classify_db_error(e, super::Dialect::Sqlite)
}

pub(super) fn json_err(e: serde_json::Error) -> RagError {
    RagError::Storage(format!("corrupt JSON in store: {e}"))
}

/// SQLite-backed [`DocumentStore`] + [`ConversationStore`] + [`RunStore`].
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// Pool settings of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub pool_size: u32,
    /// How long a writer waits for another connection's (or process's) write.
    pub busy_timeout: Duration,
    /// How long waiting for a free pooled connection may take.
    pub connect_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            pool_size: 8,
            busy_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Write transactions take SQLite's write lock at once (see the module docs).
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

impl SqliteStore {
    /// Opens (creating if missing) the database file and applies migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, &SqliteOptions::default()).await
    }

    pub async fn open_with(path: &Path, opts: &SqliteOptions) -> Result<Self> {
        let conn = SqliteConnectOptions::new().filename(path);
        Self::connect(conn, opts, &path.display().to_string()).await
    }

    /// Opens from a sqlx URL (`sqlite://path`, `sqlite:path`), creating the file if missing.
    pub async fn open_url(url: &str) -> Result<Self> {
        Self::open_url_with(url, &SqliteOptions::default()).await
    }

    pub async fn open_url_with(url: &str, opts: &SqliteOptions) -> Result<Self> {
        let conn = SqliteConnectOptions::from_str(url)
            .map_err(|e| RagError::InvalidInput(format!("store.url {url}: {e}")))?;
        Self::connect(conn, opts, url).await
    }

    async fn connect(conn: SqliteConnectOptions, opts: &SqliteOptions, name: &str) -> Result<Self> {
        let conn = conn
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(opts.busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(opts.pool_size.max(1))
            .acquire_timeout(opts.connect_timeout)
            .connect_with(conn)
            .await
            .map_err(|e| RagError::Storage(format!("opening the SQLite store {name}: {e}")))?;
        // Processes opening one new file at the same moment race to create
        // the schema; the loser's migration fails ("table already exists")
        // and succeeds on a retry, which finds it applied.
        let mut attempt = 0;
        loop {
            match MIGRATOR.run(&pool).await {
                Ok(()) => break,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "SQLite migration raced another process; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => {
                    return Err(RagError::Storage(format!(
                        "migrating the SQLite store {name}: {e}"
                    )))
                }
            }
        }
        let store = Self { pool };
        store.migrate_document_ids().await.map_err(|e| {
            RagError::Storage(format!(
                "migrating document ids in the SQLite store {name}: {e}"
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

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A write transaction (`BEGIN IMMEDIATE`, see the module docs).
    async fn begin_tx(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        self.pool.begin_with(BEGIN_WRITE).await.map_err(db_err)
    }
}

super::principals::impl_principal_store!(
    SqliteStore,
    SqliteRow,
    super::Dialect::Sqlite,
    doc_from_row,
    conv_info_from_row
);

pub(super) fn encode_vec(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

pub(super) fn decode_vec(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn doc_from_row(r: &SqliteRow) -> Result<DocumentRecord> {
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

fn chunk_from_row(r: &SqliteRow, with_embedding: bool) -> Result<StoredChunk> {
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
        ordinal: r.try_get::<i64, _>("ordinal").map_err(db_err)? as u32,
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

fn change_from_row(r: &SqliteRow) -> Result<Change> {
    let op: String = r.try_get("op").map_err(db_err)?;
    let removed: String = r.try_get("removed_keys").map_err(db_err)?;
    Ok(Change {
        seq: r.try_get::<i64, _>("seq").map_err(db_err)? as u64,
        doc_id: r.try_get("doc_id").map_err(db_err)?,
        op: if op == "delete" {
            ChangeOp::Delete
        } else {
            ChangeOp::Upsert
        },
        removed_keys: serde_json::from_str(&removed).map_err(json_err)?,
    })
}

const CHUNK_COLS: &str = "c.key, c.id, c.doc_id, c.ordinal, d.collection, d.title, c.text, \
                          c.start_char, c.end_char, c.page";

/// A JSON path for one top-level metadata key.
fn json_path(key: &str) -> Result<String> {
    super::check_filter_key(key)?;
    Ok(format!("$.\"{key}\""))
}

#[async_trait]
impl DocumentStore for SqliteStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn get_document(&self, id: &str) -> Result<Option<DocumentRecord>> {
        let row = sqlx::query("SELECT * FROM documents WHERE id = ?")
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
        let (rows, total) = match collection {
            Some(c) => {
                let rows = sqlx::query(
                    "SELECT * FROM documents WHERE collection = ? ORDER BY id LIMIT ? OFFSET ?",
                )
                .bind(c)
                .bind(limit as i64)
                .bind(offset as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                let total: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM documents WHERE collection = ?")
                        .bind(c)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(db_err)?;
                (rows, total)
            }
            None => {
                let rows = sqlx::query("SELECT * FROM documents ORDER BY id LIMIT ? OFFSET ?")
                    .bind(limit as i64)
                    .bind(offset as i64)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM documents")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_err)?;
                (rows, total)
            }
        };
        Ok(Page {
            items: rows.iter().map(doc_from_row).collect::<Result<_>>()?,
            total: total as usize,
            offset,
            limit,
        })
    }

    async fn upsert_document(&self, doc: &DocumentRecord, chunks: &[NewChunk]) -> Result<Upserted> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(db_err)?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT created_at FROM documents WHERE id = ?")
                .bind(&doc.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        let removed_keys: Vec<i64> =
            sqlx::query_scalar("SELECT key FROM chunks WHERE doc_id = ? ORDER BY key")
                .bind(&doc.id)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
        let removed_keys: Vec<u64> = removed_keys.into_iter().map(|k| k as u64).collect();
        let now = now_rfc3339();
        let removed_json = serde_json::to_string(&removed_keys).map_err(json_err)?;
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO changes (doc_id, op, removed_keys, at) VALUES (?, 'upsert', ?, ?) RETURNING seq",
        )
        .bind(&doc.id)
        .bind(&removed_json)
        .bind(&now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        // A new document keeps a given creation time (documents moved to a
        // new id by a migration); the engine gives none.
        let created_at = existing
            .clone()
            .or_else(|| Some(doc.created_at.clone()).filter(|c| !c.is_empty()))
            .unwrap_or_else(|| now.clone());
        sqlx::query("DELETE FROM chunks WHERE doc_id = ?")
            .bind(&doc.id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO documents (id, title, collection, metadata, source, text, pages, content_hash, \
             chunks, chars, created_at, updated_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET title = excluded.title, collection = excluded.collection, \
             metadata = excluded.metadata, source = excluded.source, text = excluded.text, \
             pages = excluded.pages, content_hash = excluded.content_hash, chunks = excluded.chunks, \
             chars = excluded.chars, updated_at = excluded.updated_at, seq = excluded.seq",
        )
        .bind(&doc.id)
        .bind(&doc.title)
        .bind(&doc.collection)
        .bind(serde_json::to_string(&doc.metadata).map_err(json_err)?)
        .bind(&doc.source)
        .bind(&doc.text)
        .bind(serde_json::to_string(&doc.pages).map_err(json_err)?)
        .bind(&doc.content_hash)
        .bind(chunks.len() as i64)
        .bind(doc.chars as i64)
        .bind(&created_at)
        .bind(&now)
        .bind(seq)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let mut keys = Vec::with_capacity(chunks.len());
        for c in chunks {
            let key: i64 = sqlx::query_scalar(
                "INSERT INTO chunks (id, doc_id, ordinal, text, start_char, end_char, page, embedding) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING key",
            )
            .bind(&c.id)
            .bind(&doc.id)
            .bind(c.ordinal as i64)
            .bind(&c.text)
            .bind(c.start as i64)
            .bind(c.end as i64)
            .bind(c.page.map(|p| p as i64))
            .bind(encode_vec(&c.embedding))
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
            keys.push(key as u64);
        }
        tx.commit().await.map_err(db_err)?;
        Ok(Upserted {
            change: Change {
                seq: seq as u64,
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
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(db_err)?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM documents WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        if exists.is_none() {
            return Ok(None);
        }
        let removed_keys: Vec<i64> =
            sqlx::query_scalar("SELECT key FROM chunks WHERE doc_id = ? ORDER BY key")
                .bind(id)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
        let removed_keys: Vec<u64> = removed_keys.into_iter().map(|k| k as u64).collect();
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO changes (doc_id, op, removed_keys, at) VALUES (?, 'delete', ?, ?) RETURNING seq",
        )
        .bind(id)
        .bind(serde_json::to_string(&removed_keys).map_err(json_err)?)
        .bind(now_rfc3339())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query("DELETE FROM chunks WHERE doc_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query("DELETE FROM documents WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(Change {
            seq: seq as u64,
            doc_id: id.to_string(),
            op: ChangeOp::Delete,
            removed_keys,
        }))
    }

    async fn chunks_by_keys(&self, keys: &[u64]) -> Result<Vec<StoredChunk>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(keys.len());
        for part in keys.chunks(500) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
                "SELECT {CHUNK_COLS} FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE c.key IN ("
            ));
            let mut sep = qb.separated(", ");
            for k in part {
                sep.push_bind(*k as i64);
            }
            qb.push(")");
            let rows = qb.build().fetch_all(&self.pool).await.map_err(db_err)?;
            for r in &rows {
                out.push(chunk_from_row(r, false)?);
            }
        }
        Ok(out)
    }

    async fn document_chunks(&self, doc_id: &str) -> Result<Vec<StoredChunk>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CHUNK_COLS}, c.embedding FROM chunks c JOIN documents d ON d.id = c.doc_id \
             WHERE c.doc_id = ? ORDER BY c.ordinal"
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
             WHERE c.key > ? ORDER BY c.key LIMIT ?"
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
            "SELECT seq, doc_id, op, removed_keys FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(change_from_row).collect()
    }

    async fn last_seq(&self) -> Result<u64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM changes")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(seq.unwrap_or(0) as u64)
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
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT id FROM documents WHERE 1 = 1");
        if let Some(c) = collection {
            qb.push(" AND collection = ").push_bind(c.to_string());
        }
        for (k, v) in filter {
            let path = json_path(k)?;
            let value = serde_json::to_string(v).map_err(json_err)?;
            qb.push(" AND json_type(metadata, ")
                .push_bind(path.clone())
                .push(") IS NOT NULL AND json_extract(metadata, ")
                .push_bind(path)
                .push(") IS json_extract(")
                .push_bind(value)
                .push(", '$')");
        }
        let rows: Vec<String> = qb
            .build_query_scalar()
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(rows)
    }

    async fn counts(&self) -> Result<(usize, usize)> {
        let docs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM documents")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        let chunks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chunks")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok((docs as usize, chunks as usize))
    }

    async fn collections(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT DISTINCT collection FROM documents ORDER BY collection")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

pub(super) fn role_str(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

pub(super) fn role_from(s: &str) -> Role {
    match s {
        "system" => Role::System,
        "assistant" => Role::Assistant,
        _ => Role::User,
    }
}

fn turn_from_row(r: &SqliteRow) -> Result<Turn> {
    let role: String = r.try_get("role").map_err(db_err)?;
    let citations: String = r.try_get("citations").map_err(db_err)?;
    Ok(Turn {
        role: role_from(&role),
        content: r.try_get("content").map_err(db_err)?,
        citations: serde_json::from_str(&citations).map_err(json_err)?,
        run_id: r.try_get("run_id").map_err(db_err)?,
        at: r.try_get("at").map_err(db_err)?,
    })
}

fn conv_info_from_row(r: &SqliteRow) -> Result<ConversationInfo> {
    Ok(ConversationInfo {
        id: r.try_get("id").map_err(db_err)?,
        title: r.try_get("title").map_err(db_err)?,
        turns: r.try_get::<i64, _>("turns").map_err(db_err)? as usize,
        created_at: r.try_get("created_at").map_err(db_err)?,
        updated_at: r.try_get("updated_at").map_err(db_err)?,
    })
}

#[async_trait]
impl ConversationStore for SqliteStore {
    async fn append_turns(
        &self,
        conversation_id: &str,
        title: &str,
        turns: &[Turn],
    ) -> Result<u64> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(db_err)?;
        let now = now_rfc3339();
        sqlx::query(
            "INSERT INTO conversations (id, title, turns, created_at, updated_at) VALUES (?, ?, 0, ?, ?) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(conversation_id)
        .bind(title)
        .bind(&now)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let next: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(idx) + 1, 0) FROM turns WHERE conversation_id = ?",
        )
        .bind(conversation_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        for (i, t) in turns.iter().enumerate() {
            sqlx::query(
                "INSERT INTO turns (conversation_id, idx, role, content, citations, run_id, at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(conversation_id)
            .bind(next + i as i64)
            .bind(role_str(t.role))
            .bind(&t.content)
            .bind(serde_json::to_string(&t.citations).map_err(json_err)?)
            .bind(&t.run_id)
            .bind(&t.at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        sqlx::query("UPDATE conversations SET turns = turns + ?, updated_at = ? WHERE id = ?")
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
            "SELECT * FROM (SELECT * FROM turns WHERE conversation_id = ? ORDER BY idx DESC LIMIT ?) \
             ORDER BY idx",
        )
        .bind(conversation_id)
        .bind(n as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let idx: i64 = r.try_get("idx").map_err(db_err)?;
                Ok((idx as u64, turn_from_row(r)?))
            })
            .collect()
    }

    async fn get_conversation(&self, id: &str) -> Result<Option<Conversation>> {
        let Some(row) = sqlx::query("SELECT * FROM conversations WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let info = conv_info_from_row(&row)?;
        let rows = sqlx::query("SELECT * FROM turns WHERE conversation_id = ? ORDER BY idx")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(Some(Conversation {
            id: info.id,
            title: info.title,
            created_at: info.created_at,
            turns: rows.iter().map(turn_from_row).collect::<Result<_>>()?,
        }))
    }

    async fn list_conversations(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Page<ConversationInfo>> {
        let rows = sqlx::query(
            "SELECT * FROM conversations ORDER BY updated_at DESC, id LIMIT ? OFFSET ?",
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
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(db_err)?;
        sqlx::query("DELETE FROM turns WHERE conversation_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let res = sqlx::query("DELETE FROM conversations WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(res.rows_affected() > 0)
    }
}

#[async_trait]
impl RunStore for SqliteStore {
    async fn put_run(&self, run: &RunSnapshot) -> Result<()> {
        sqlx::query(
            "INSERT INTO runs (id, time, conversation_id, snapshot) VALUES (?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET snapshot = excluded.snapshot",
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
        let snap: Option<String> = sqlx::query_scalar("SELECT snapshot FROM runs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        snap.map(|s| serde_json::from_str(&s).map_err(json_err))
            .transpose()
    }
}

/// Groups owners by key (helper for callers building a key → owner map).
pub fn owners_by_key(owners: Vec<ChunkOwner>) -> HashMap<u64, ChunkOwner> {
    owners.into_iter().map(|o| (o.key, o)).collect()
}
