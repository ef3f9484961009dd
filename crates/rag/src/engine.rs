//! The [`Engine`] facade: ingestion, retrieval, cited chat, conversations and
//! run snapshots over one data directory.
//!
//! NOTE for the node engineer — differences from ENGINE_API.md:
//! - API types live in [`crate::api`] and are re-exported at the crate root
//!   (`ragfleet_rag::{ChatEvent, SearchQuery, ...}`); `Engine`/`Generators`
//!   are at the root too.
//! - Added: `ChatRequest::filter` (exact-match metadata filter, like
//!   `SearchQuery::filter`), `ChatRequest::new(msg)`, `SearchQuery::new(q)`.
//! - Added: `Engine::replay(run_id) -> Result<Replay>` (regenerates a run from
//!   its stored prompt and parameters), `Engine::flush()` (saves the vector
//!   index; also done on drop), `Generators::single(name, gen)`.
//! - `RunSnapshot` has `generator` (name) and `generator_id`, plus `question`,
//!   `sources`, `usage`, and `retrieval.{candidates, filter}`.
//! - `EngineConfig` has an extra `index` section ([`crate::config::IndexConfig`]).
//! - Errors: `RagError::InvalidInput` for bad requests (empty query/message,
//!   unknown generator, top_k 0) → HTTP 400; `NotFound` → 404; others → 500.
//! - Cluster (issue 6): `EngineConfig::store` (`[store]`: `url` = absent →
//!   `data_dir/ragfleet.db`, `sqlite://…`, `postgres://…`) and
//!   `EngineConfig::memory` (`[memory]`: Redis conversation memory).
//!   `Engine::spawn_follower(cfg.store.poll_interval()) -> FollowerHandle`
//!   keeps the indexes in step with a shared store (keep the handle; drop or
//!   `shutdown().await` stops it); `Engine::sync_state() -> SyncState` for
//!   `/ready` details and metrics; `Engine::ready()` tolerates the lag of a
//!   live follower only.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::RwLock;
use sha2::{Digest, Sha256};

use crate::answer::{finish_answer, Relevance, NO_ANSWER};
use crate::api::*;
use crate::config::{EngineConfig, IndexConfig, VectorIndexKind};
use crate::embed::Embedder;
use crate::generate::{GenerateRequest, Generator, Role};
use crate::index::flat::FlatIndex;
use crate::index::hnsw::{HnswIndex, HnswParams};
use crate::index::lexical::{LexicalDoc, LexicalIndex};
use crate::index::{KeyFilter, VectorIndex};
use crate::ingest::split;
use crate::memory::ConversationMemory;
use crate::prompt::build_prompt;
use crate::retrieve::weighted_rrf;
use crate::store::{now_rfc3339, ChangeListener, DocumentRecord, NewChunk, Store, StoredChunk};
use crate::types::{Chunk, Document, Hit, NewDocument, RetrievalMode, DEFAULT_COLLECTION};
use crate::{RagError, Result};

/// Texts embedded per call.
const EMBED_BATCH: usize = 32;
/// Largest `top_k` a request may ask for.
const MAX_TOP_K: usize = 1000;

/// The generators a node offers, by name.
#[derive(Clone)]
pub struct Generators {
    pub default: String,
    pub by_name: BTreeMap<String, Arc<dyn Generator>>,
}

impl Generators {
    /// One generator, which is the default.
    pub fn single(name: impl Into<String>, generator: Arc<dyn Generator>) -> Self {
        let name = name.into();
        Self {
            default: name.clone(),
            by_name: BTreeMap::from([(name, generator)]),
        }
    }

    /// The named generator, or the default.
    pub fn get(&self, name: Option<&str>) -> Result<(String, Arc<dyn Generator>)> {
        let name = name.unwrap_or(&self.default);
        self.by_name
            .get(name)
            .map(|g| (name.to_string(), g.clone()))
            .ok_or_else(|| {
                RagError::InvalidInput(format!(
                    "unknown generator {name:?} (available: {})",
                    self.by_name.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })
    }
}

impl std::fmt::Debug for Generators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generators")
            .field("default", &self.default)
            .field("by_name", &self.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Clone)]
struct Owner {
    doc_id: Arc<str>,
    collection: Arc<str>,
}

/// Who owns each indexed chunk (for filtering), and chunks per document
/// (the document/chunk counters, which so follow every applied change,
/// local or remote).
#[derive(Default)]
struct Owners {
    by_key: HashMap<u64, Owner>,
    per_doc: HashMap<Arc<str>, usize>,
}

impl Owners {
    fn remove(&mut self, key: u64) {
        if let Some(o) = self.by_key.remove(&key) {
            if let Some(n) = self.per_doc.get_mut(&o.doc_id) {
                *n -= 1;
                if *n == 0 {
                    self.per_doc.remove(&o.doc_id);
                }
            }
        }
    }

    fn insert(&mut self, key: u64, owner: Owner) {
        self.remove(key);
        *self.per_doc.entry(owner.doc_id.clone()).or_default() += 1;
        self.by_key.insert(key, owner);
    }
}

/// Replication bookkeeping (see [`Engine::sync_state`]).
#[derive(Default)]
struct Sync {
    /// Newest change the store reported.
    store_seq: u64,
    last_error: Option<String>,
    /// End of the last successful catch-up.
    last_sync: Option<Instant>,
    /// Set while a follower runs.
    follower_interval: Option<Duration>,
    listening: bool,
}

struct Inner {
    cfg: EngineConfig,
    config_hash: String,
    embedder: Arc<dyn Embedder>,
    generators: Generators,
    store: Arc<dyn Store>,
    memory: ConversationMemory,
    vectors: RwLock<Box<dyn VectorIndex>>,
    lexical: LexicalIndex,
    owners: RwLock<Owners>,
    /// Serialises every index/store write of this engine.
    write: tokio::sync::Mutex<()>,
    sync: parking_lot::Mutex<Sync>,
    unsaved: AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.unsaved.load(Ordering::Relaxed) > 0 {
            if let Err(e) = self.vectors.read().save() {
                tracing::warn!(error = %e, "saving the vector index on shutdown failed");
            }
        }
    }
}

/// The RAG engine. Cheap to clone (an `Arc` inside); `Send + Sync`.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// Retrieval output with its timings.
struct Retrieved {
    hits: Vec<Hit>,
    embed_ms: f64,
    search_ms: f64,
    /// Cosine similarity of the closest chunk (the vector list's first
    /// score, before fusion); `None` in lexical mode.
    top_cosine: Option<f32>,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

fn truncate_chars(s: &str, n: usize) -> String {
    let s = s.trim();
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

fn join_err(e: tokio::task::JoinError) -> RagError {
    RagError::Model(format!("embedding task failed: {e}"))
}

impl Engine {
    /// Opens (creating if needed) the data directory and the store
    /// `cfg.store` names (default: the embedded SQLite file in the data
    /// directory), then the lexical and vector indexes — which catch up from
    /// the store's change log instead of being rebuilt.
    pub async fn open(
        cfg: EngineConfig,
        embedder: Arc<dyn Embedder>,
        generators: Generators,
    ) -> Result<Engine> {
        if generators.by_name.is_empty() {
            return Err(RagError::InvalidInput("no generator configured".into()));
        }
        generators.get(None)?;
        for (name, w) in [
            ("retrieval.lexical_weight", cfg.retrieval.lexical_weight),
            ("retrieval.vector_weight", cfg.retrieval.vector_weight),
        ] {
            if w < 0.0 || !w.is_finite() {
                return Err(RagError::InvalidInput(format!(
                    "{name} must be a non-negative number, not {w}"
                )));
            }
        }
        if cfg.retrieval.rrf_k < 0.0 || !cfg.retrieval.rrf_k.is_finite() {
            return Err(RagError::InvalidInput(format!(
                "retrieval.rrf_k must be a non-negative number, not {}",
                cfg.retrieval.rrf_k
            )));
        }
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| RagError::Storage(format!("creating {}: {e}", cfg.data_dir.display())))?;
        let store = crate::store::open(&cfg.store, &cfg.data_dir).await?;
        tracing::info!(backend = store.backend(), "store opened");
        Self::open_with_store(cfg, store, embedder, generators).await
    }

    /// Like [`Engine::open`] with a given store backend.
    pub async fn open_with_store(
        cfg: EngineConfig,
        store: Arc<dyn Store>,
        embedder: Arc<dyn Embedder>,
        generators: Generators,
    ) -> Result<Engine> {
        let dim = embedder.dim();
        let memory = ConversationMemory::new(&cfg.memory)?;
        let data_dir = cfg.data_dir.clone();
        let lexical = {
            let dir = data_dir.join("lexical");
            tokio::task::spawn_blocking(move || LexicalIndex::open(&dir))
                .await
                .map_err(join_err)??
        };
        let vectors = {
            let icfg = cfg.index.clone();
            let dir = data_dir.clone();
            tokio::task::spawn_blocking(move || open_vector_index(&dir, &icfg, dim))
                .await
                .map_err(join_err)??
        };
        let config_hash = sha256_hex(&[serde_json::to_string(&cfg)
            .map_err(|e| RagError::InvalidInput(e.to_string()))?
            .as_bytes()]);
        // The owners as the store has them now; catching up below re-applies
        // the changes the indexes miss, which leaves owners consistent too.
        let mut owners = Owners::default();
        for o in store.chunk_owners().await? {
            owners.insert(
                o.key,
                Owner {
                    doc_id: o.doc_id.into(),
                    collection: o.collection.into(),
                },
            );
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                cfg,
                config_hash,
                embedder,
                generators,
                store,
                memory,
                vectors: RwLock::new(vectors),
                lexical,
                owners: RwLock::new(owners),
                write: tokio::sync::Mutex::new(()),
                sync: parking_lot::Mutex::new(Sync::default()),
                unsaved: AtomicUsize::new(0),
            }),
        };
        engine.catch_up().await?;
        engine.maybe_save(true);
        Ok(engine)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    pub fn generator_names(&self) -> Vec<String> {
        self.inner.generators.by_name.keys().cloned().collect()
    }

    /// The generator used when a request names none.
    pub fn default_generator(&self) -> &str {
        &self.inner.generators.default
    }

    /// The collections holding at least one document, sorted.
    pub async fn collections(&self) -> Result<Vec<String>> {
        self.inner.store.collections().await
    }

    /// SHA-256 of the configuration (recorded in run snapshots).
    pub fn config_hash(&self) -> &str {
        &self.inner.config_hash
    }

    /// The store answers and the indexes are caught up with it.
    ///
    /// With a follower running ([`Engine::spawn_follower`]) the indexes may
    /// trail the store by the changes committed since its last round; that
    /// counts as caught up as long as the follower completed a round within
    /// three poll intervals (+ 2 s). A follower that is stuck — or a long
    /// catch-up after a restart — makes the engine not ready. Without a
    /// follower the indexes must be at the store's newest change.
    pub async fn ready(&self) -> Result<()> {
        self.inner.store.ping().await?;
        let last = self.inner.store.last_seq().await?;
        let applied = self.applied_seq();
        let sync = {
            let mut s = self.inner.sync.lock();
            s.store_seq = s.store_seq.max(last);
            (s.follower_interval, s.last_sync)
        };
        if applied >= last {
            return Ok(());
        }
        if let (Some(interval), Some(at)) = sync {
            if at.elapsed() <= interval * 3 + Duration::from_secs(2) {
                return Ok(());
            }
        }
        Err(RagError::Index(format!(
            "indexes at change {applied}, store at {last}"
        )))
    }

    /// Replication state: how far the local indexes are behind the store,
    /// whether a follower runs and how it is woken, the last error.
    pub fn sync_state(&self) -> SyncState {
        let applied_seq = self.applied_seq();
        let s = self.inner.sync.lock();
        let store_seq = s.store_seq.max(applied_seq);
        SyncState {
            backend: self.inner.store.backend().to_string(),
            applied_seq,
            store_seq,
            lag: store_seq - applied_seq,
            following: s.follower_interval.is_some(),
            listening: s.listening,
            last_sync_ms_ago: s
                .last_sync
                .map(|t| t.elapsed().as_millis().min(u64::MAX as u128) as u64),
            last_error: s.last_error.clone(),
        }
    }

    fn applied_seq(&self) -> u64 {
        self.inner
            .vectors
            .read()
            .applied_seq()
            .min(self.inner.lexical.applied_seq())
    }

    /// Applies the store's changes the indexes have not seen yet (after a
    /// restart, or written by another node sharing the store), in sequence
    /// order. Idempotent. Returns the sequence the indexes are at.
    pub async fn catch_up(&self) -> Result<u64> {
        let _w = self.inner.write.lock().await;
        self.apply_pending(&HashMap::new()).await
    }

    /// The one path by which changes reach the indexes — remote ones and
    /// this engine's own writes alike: everything after the indexes'
    /// position, in sequence order. (A node that applied its own change N
    /// directly and recorded N could skip an earlier change N-1 committed by
    /// another node and not applied yet.) `local` gives the chunks of
    /// changes this engine just wrote (doc id → (seq, chunks with
    /// embeddings)), so they are not read back. Call with `write` held.
    async fn apply_pending(&self, local: &HashMap<String, (u64, Vec<StoredChunk>)>) -> Result<u64> {
        let result = self.apply_pending_inner(local).await;
        let mut s = self.inner.sync.lock();
        match &result {
            Ok(seq) => {
                s.store_seq = s.store_seq.max(*seq);
                s.last_sync = Some(Instant::now());
                if s.last_error.take().is_some() {
                    tracing::info!(seq, "indexes follow the store again");
                }
            }
            Err(e) => {
                if s.last_error.is_none() {
                    tracing::warn!(error = %e, "applying the store's changes failed (retrying)");
                }
                s.last_error = Some(e.to_string());
            }
        }
        result
    }

    async fn apply_pending_inner(
        &self,
        local: &HashMap<String, (u64, Vec<StoredChunk>)>,
    ) -> Result<u64> {
        let inner = &self.inner;
        let lexical_seq = inner.lexical.applied_seq();
        let vector_seq = inner.vectors.read().applied_seq();
        let mut from = lexical_seq.min(vector_seq);
        loop {
            let changes = inner.store.changes_since(from, 1000).await?;
            let Some(last) = changes.last().map(|c| c.seq) else {
                break;
            };
            // Collapse per document: every removed key goes, then the
            // document's current chunks (if it still exists) are added.
            // Each index only gets the changes it has not applied (re-applying
            // to tantivy would be harmless but shifts BM25 statistics).
            let mut docs: BTreeMap<String, (Vec<u64>, u64)> = BTreeMap::new();
            for c in &changes {
                let e = docs.entry(c.doc_id.clone()).or_default();
                e.0.extend(&c.removed_keys);
                e.1 = e.1.max(c.seq);
            }
            let mut lexical_dirty = false;
            for (doc_id, (removed, seq)) in docs {
                let fetched;
                let current: &[StoredChunk] = match local.get(&doc_id) {
                    // This engine's own write is the document's latest change
                    // in this batch: its chunks are at hand.
                    Some((s, chunks)) if *s == seq => chunks,
                    _ => {
                        fetched = inner.store.document_chunks(&doc_id).await?;
                        &fetched
                    }
                };
                lexical_dirty |= seq > lexical_seq;
                self.apply_to(
                    &doc_id,
                    &removed,
                    current,
                    seq > lexical_seq,
                    seq > vector_seq,
                );
            }
            if lexical_dirty {
                inner.lexical.commit(last.max(lexical_seq))?;
            }
            {
                let mut v = inner.vectors.write();
                if last > v.applied_seq() {
                    v.set_applied_seq(last);
                }
            }
            from = last;
            tracing::debug!(seq = last, "indexes applied the store's changes");
        }
        Ok(from)
    }

    fn apply_to(
        &self,
        doc_id: &str,
        removed: &[u64],
        current: &[StoredChunk],
        lexical: bool,
        vector: bool,
    ) {
        let inner = &self.inner;
        if lexical {
            self.apply_lexical(doc_id, current);
        }
        if vector {
            self.apply_vector(doc_id, removed, current);
        }
        {
            let mut owners = inner.owners.write();
            for k in removed {
                owners.remove(*k);
            }
            if let Some(first) = current.first() {
                let owner = Owner {
                    doc_id: first.doc_id.as_str().into(),
                    collection: first.collection.as_str().into(),
                };
                for c in current {
                    owners.insert(c.key, owner.clone());
                }
            }
        }
        inner
            .unsaved
            .fetch_add(removed.len() + current.len(), Ordering::Relaxed);
    }

    fn apply_lexical(&self, doc_id: &str, current: &[StoredChunk]) {
        let inner = &self.inner;
        inner.lexical.delete_document(doc_id);
        let lex: Vec<LexicalDoc<'_>> = current
            .iter()
            .map(|c| LexicalDoc {
                key: c.key,
                doc_id: &c.doc_id,
                collection: &c.collection,
                title: &c.title,
                text: &c.text,
            })
            .collect();
        if let Err(e) = inner.lexical.add(&lex) {
            tracing::error!(error = %e, doc_id, "lexical index add failed");
        }
    }

    fn apply_vector(&self, doc_id: &str, removed: &[u64], current: &[StoredChunk]) {
        let inner = &self.inner;
        let mut all_removed: Vec<u64> = removed.to_vec();
        all_removed.extend(current.iter().map(|c| c.key));
        let items: Vec<(u64, Vec<f32>)> = current
            .iter()
            .filter_map(|c| c.embedding.clone().map(|e| (c.key, e)))
            .collect();
        {
            let mut v = inner.vectors.write();
            v.remove(&all_removed);
            if let Err(e) = v.add(&items) {
                tracing::error!(error = %e, doc_id, "vector index add failed");
            }
        }
    }

    /// Saves the vector index when enough changes accumulated (or `force`).
    fn maybe_save(&self, force: bool) {
        let unsaved = self.inner.unsaved.load(Ordering::Relaxed);
        if unsaved == 0 || (!force && unsaved < self.inner.cfg.index.save_every) {
            return;
        }
        self.inner.unsaved.store(0, Ordering::Relaxed);
        if let Err(e) = self.inner.vectors.read().save() {
            tracing::warn!(error = %e, "saving the vector index failed (changes are replayed at the next open)");
        }
    }

    /// Saves the vector index now.
    pub async fn flush(&self) -> Result<()> {
        let _w = self.inner.write.lock().await;
        self.inner.unsaved.store(0, Ordering::Relaxed);
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.vectors.read().save())
            .await
            .map_err(join_err)?
    }

    // ---------------------------------------------------------------- replication

    /// Starts the follower: a background task that keeps the local indexes
    /// in step with the store (changes written by other nodes sharing it).
    ///
    /// It catches up every `poll_interval`, and at once when the store
    /// announces a change (PostgreSQL LISTEN/NOTIFY; SQLite has no
    /// notifications, so there it polls only). After a lost connection
    /// (database restart) it re-subscribes, then catches up — notifications
    /// sent meanwhile are lost, the change log is not. Errors are recorded in
    /// [`Engine::sync_state`] and retried every interval. The task stops
    /// when the handle is dropped or [`FollowerHandle::shutdown`] is called
    /// (or when every `Engine` clone is gone). Must be called within a Tokio
    /// runtime.
    pub fn spawn_follower(&self, poll_interval: Duration) -> FollowerHandle {
        let poll = poll_interval.max(Duration::from_millis(10));
        self.inner.sync.lock().follower_interval = Some(poll);
        let weak = Arc::downgrade(&self.inner);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(follow(weak, poll, stop_rx));
        FollowerHandle {
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    // ---------------------------------------------------------------- documents

    pub async fn ingest(&self, doc: NewDocument) -> Result<IngestOutcome> {
        self.ingest_batch(vec![doc])
            .await
            .pop()
            .unwrap_or_else(|| Err(RagError::InvalidInput("nothing to ingest".into())))
    }

    /// Ingests documents; each gets its own result (one bad document never
    /// loses the others). Embeddings are computed on blocking threads in
    /// batches; the indexes are committed once for the whole batch.
    pub async fn ingest_batch(&self, docs: Vec<NewDocument>) -> Vec<Result<IngestOutcome>> {
        let mut results: Vec<Option<Result<IngestOutcome>>> =
            (0..docs.len()).map(|_| None).collect();
        // 1. Validate, hash, skip unchanged, split.
        let mut prepared: Vec<(usize, DocumentRecord, Vec<Chunk>)> = Vec::new();
        for (i, nd) in docs.into_iter().enumerate() {
            match self.prepare(nd).await {
                Ok(Prepared::Unchanged(o)) => results[i] = Some(Ok(o)),
                Ok(Prepared::New(rec, chunks)) => prepared.push((i, *rec, chunks)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        // 2. Embed every chunk of the batch.
        let texts: Vec<String> = prepared
            .iter()
            .flat_map(|(_, rec, chunks)| chunks.iter().map(|c| embed_text(&rec.title, &c.text)))
            .collect();
        let embedded = self.embed_texts(texts).await;
        let mut embeddings = match embedded {
            Ok(e) => e.into_iter(),
            Err(e) => {
                let msg = e.to_string();
                for (i, _, _) in &prepared {
                    results[*i] = Some(Err(RagError::Model(msg.clone())));
                }
                return results
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| Err(RagError::Model(msg.clone()))))
                    .collect();
            }
        };
        // 3. Store, then apply everything up to our writes to the indexes
        // in sequence order (serialised with this engine's other writers).
        if !prepared.is_empty() {
            let _w = self.inner.write.lock().await;
            let mut local: HashMap<String, (u64, Vec<StoredChunk>)> = HashMap::new();
            for (i, rec, chunks) in prepared {
                let new_chunks: Vec<NewChunk> = chunks
                    .into_iter()
                    .map(|c| NewChunk {
                        embedding: embeddings.next().unwrap_or_default(),
                        id: c.id,
                        ordinal: c.ordinal,
                        text: c.text,
                        start: c.start,
                        end: c.end,
                        page: c.page,
                    })
                    .collect();
                let r = self.store_document(&rec, new_chunks).await;
                results[i] = Some(r.map(|(o, written)| {
                    if let Some((seq, chunks)) = written {
                        local.insert(o.doc_id.clone(), (seq, chunks));
                    }
                    o
                }));
            }
            if !local.is_empty() {
                // The documents are stored (acknowledged); if applying fails
                // here the follower (or the next write) applies them.
                let _ = self.apply_pending(&local).await;
                self.maybe_save(false);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(RagError::Index("document was not processed".into()))))
            .collect()
    }

    /// Writes one document to the store; returns the outcome and, if it was
    /// written, its change's sequence and chunks (for [`Self::apply_pending`]).
    #[allow(clippy::type_complexity)]
    async fn store_document(
        &self,
        rec: &DocumentRecord,
        chunks: Vec<NewChunk>,
    ) -> Result<(IngestOutcome, Option<(u64, Vec<StoredChunk>)>)> {
        // Re-check under the write lock: a concurrent ingest may have stored it.
        if let Some(existing) = self.inner.store.get_document(&rec.id).await? {
            if existing.content_hash == rec.content_hash {
                return Ok((
                    IngestOutcome {
                        doc_id: rec.id.clone(),
                        chunks: existing.chunks,
                        status: IngestStatus::Unchanged,
                    },
                    None,
                ));
            }
        }
        let n = chunks.len();
        let up = self.inner.store.upsert_document(rec, &chunks).await?;
        let stored: Vec<StoredChunk> = chunks
            .into_iter()
            .zip(&up.keys)
            .map(|(c, &key)| StoredChunk {
                key,
                id: c.id,
                doc_id: rec.id.clone(),
                ordinal: c.ordinal,
                collection: rec.collection.clone(),
                title: rec.title.clone(),
                text: c.text,
                start: c.start,
                end: c.end,
                page: c.page,
                embedding: Some(c.embedding),
            })
            .collect();
        Ok((
            IngestOutcome {
                doc_id: rec.id.clone(),
                chunks: n,
                status: if up.replaced {
                    IngestStatus::Replaced
                } else {
                    IngestStatus::Created
                },
            },
            Some((up.change.seq, stored)),
        ))
    }

    async fn prepare(&self, nd: NewDocument) -> Result<Prepared> {
        if nd.text.trim().is_empty() {
            return Err(RagError::InvalidInput(format!(
                "document {} has no text",
                nd.id
                    .as_deref()
                    .or(nd.source.as_deref())
                    .unwrap_or("(unnamed)")
            )));
        }
        let collection = nd
            .collection
            .filter(|c| !c.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_COLLECTION.to_string());
        let title = nd.title.unwrap_or_default();
        let metadata_json = serde_json::to_string(&nd.metadata)
            .map_err(|e| RagError::InvalidInput(e.to_string()))?;
        let pages_json =
            serde_json::to_string(&nd.pages).map_err(|e| RagError::InvalidInput(e.to_string()))?;
        let content_hash = sha256_hex(&[
            title.as_bytes(),
            nd.text.as_bytes(),
            collection.as_bytes(),
            metadata_json.as_bytes(),
            pages_json.as_bytes(),
            nd.source.as_deref().unwrap_or("").as_bytes(),
        ]);
        let id = match nd.id {
            Some(id) if !id.trim().is_empty() => id,
            Some(_) => return Err(RagError::InvalidInput("document id is empty".into())),
            None => {
                self.derived_id(&collection, nd.source.as_deref(), &nd.text)
                    .await?
            }
        };
        if let Some(existing) = self.inner.store.get_document(&id).await? {
            if existing.content_hash == content_hash {
                return Ok(Prepared::Unchanged(IngestOutcome {
                    doc_id: id,
                    chunks: existing.chunks,
                    status: IngestStatus::Unchanged,
                }));
            }
        }
        let doc = Document {
            id: id.clone(),
            title: title.clone(),
            text: nd.text,
            collection: collection.clone(),
            metadata: nd.metadata,
            source: nd.source,
            pages: nd.pages,
        };
        let chunks = split(&doc, self.inner.embedder.as_ref(), &self.inner.cfg.chunk);
        let chars = doc.text.chars().count();
        Ok(Prepared::New(
            Box::new(DocumentRecord {
                id,
                title,
                collection,
                metadata: doc.metadata,
                source: doc.source,
                text: doc.text,
                pages: doc.pages,
                content_hash,
                chunks: chunks.len(),
                chars,
                created_at: String::new(),
                updated_at: String::new(),
                seq: 0,
            }),
            chunks,
        ))
    }

    /// The id of a document the caller gave none: [`crate::ingest::document_id`].
    /// A document without a source that an older version stored (under
    /// `doc-` + a hash of its text alone) in the same collection keeps that
    /// id, so posting it again finds it.
    async fn derived_id(
        &self,
        collection: &str,
        source: Option<&str>,
        text: &str,
    ) -> Result<String> {
        let id = crate::ingest::document_id(collection, source, text);
        if source.is_some_and(|s| !s.is_empty()) {
            return Ok(id);
        }
        let legacy = crate::store::legacy_document_id(text);
        if self.inner.store.get_document(&id).await?.is_none() {
            if let Some(old) = self.inner.store.get_document(&legacy).await? {
                if old.collection == collection && old.source.is_none() {
                    return Ok(legacy);
                }
            }
        }
        Ok(id)
    }

    /// Embeds on blocking threads, `EMBED_BATCH` texts per call.
    async fn embed_texts(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let embedder = self.inner.embedder.clone();
        let dim = embedder.dim();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(texts.len());
            for batch in texts.chunks(EMBED_BATCH) {
                let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
                let vecs = embedder.embed(&refs)?;
                if vecs.len() != refs.len() || vecs.iter().any(|v| v.len() != dim) {
                    return Err(RagError::Model(format!(
                        "embedder returned {} vectors for {} texts (dimension {dim} expected)",
                        vecs.len(),
                        refs.len()
                    )));
                }
                out.extend(vecs);
            }
            Ok(out)
        })
        .await
        .map_err(join_err)?
    }

    pub async fn get_document(&self, id: &str) -> Result<Option<DocumentInfo>> {
        Ok(self.inner.store.get_document(id).await?.map(doc_info))
    }

    pub async fn list_documents(
        &self,
        collection: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<Page<DocumentInfo>> {
        let p = self
            .inner
            .store
            .list_documents(collection, offset, limit)
            .await?;
        Ok(doc_page(p))
    }

    /// Removes a document from the store, then (in sequence order, like
    /// every change) from both indexes.
    pub async fn delete_document(&self, id: &str) -> Result<bool> {
        let _w = self.inner.write.lock().await;
        if self.inner.store.delete_document(id).await?.is_none() {
            return Ok(false);
        }
        // Deleted (acknowledged); if applying fails the follower retries.
        let _ = self.apply_pending(&HashMap::new()).await;
        self.maybe_save(false);
        Ok(true)
    }

    // ---------------------------------------------------------------- retrieval

    pub async fn search(&self, q: SearchQuery) -> Result<Vec<Hit>> {
        self.search_scoped(q, None).await
    }

    /// [`Engine::search`] among the collections of `scope` only (a
    /// principal's grants; `None`: all). The scope filters candidates inside
    /// both indexes, before ranking and top-k.
    pub async fn search_scoped(
        &self,
        q: SearchQuery,
        scope: Option<&[String]>,
    ) -> Result<Vec<Hit>> {
        Ok(self
            .retrieve(
                &q.query,
                q.top_k,
                q.mode,
                (q.collection.as_deref(), scope),
                &q.filter,
                None,
            )
            .await?
            .hits)
    }

    /// [`Engine::search`] with the query's embedding given (computed
    /// elsewhere, e.g. by a benchmark that leaves the embedding out); it must
    /// come from the engine's embedder model.
    pub async fn search_embedded(
        &self,
        q: SearchQuery,
        query_vector: Vec<f32>,
    ) -> Result<Vec<Hit>> {
        if query_vector.len() != self.inner.embedder.dim() {
            return Err(RagError::InvalidInput(format!(
                "query vector has dimension {}, the embedder {}",
                query_vector.len(),
                self.inner.embedder.dim()
            )));
        }
        Ok(self
            .retrieve(
                &q.query,
                q.top_k,
                q.mode,
                (q.collection.as_deref(), None),
                &q.filter,
                Some(query_vector),
            )
            .await?
            .hits)
    }

    async fn retrieve(
        &self,
        query: &str,
        top_k: usize,
        mode: RetrievalMode,
        (collection, scope): (Option<&str>, Option<&[String]>),
        filter: &crate::types::Metadata,
        query_vector: Option<Vec<f32>>,
    ) -> Result<Retrieved> {
        if query.trim().is_empty() {
            return Err(RagError::InvalidInput("the query is empty".into()));
        }
        if top_k == 0 || top_k > MAX_TOP_K {
            return Err(RagError::InvalidInput(format!(
                "top_k must be between 1 and {MAX_TOP_K}, not {top_k}"
            )));
        }
        let inner = &self.inner;
        let candidates = inner.cfg.retrieval.candidates.max(top_k);
        let started = Instant::now();
        let mut embed_ms = 0.0;
        let qvec = if mode == RetrievalMode::Lexical {
            None
        } else if let Some(v) = query_vector {
            Some(v)
        } else {
            let t = Instant::now();
            let v = self
                .embed_texts(vec![query.to_string()])
                .await?
                .pop()
                .ok_or_else(|| RagError::Model("no query embedding".into()))?;
            embed_ms = ms(t);
            Some(v)
        };
        let search_start = Instant::now();
        let allowed: Option<HashSet<String>> = if filter.is_empty() {
            None
        } else {
            Some(
                inner
                    .store
                    .matching_documents(collection, filter)
                    .await?
                    .into_iter()
                    .collect(),
            )
        };
        let lexical = if mode != RetrievalMode::Vector {
            inner
                .lexical
                .search_scoped(query, candidates, collection, scope, allowed.as_ref())?
        } else {
            Vec::new()
        };
        let vector = match &qvec {
            Some(qv) => {
                let owners = inner.owners.read();
                let keep = |key: u64| {
                    owners.by_key.get(&key).is_some_and(|o| {
                        collection.is_none_or(|c| &*o.collection == c)
                            && scope.is_none_or(|s| s.iter().any(|c| **c == *o.collection))
                            && allowed.as_ref().is_none_or(|a| a.contains(&*o.doc_id))
                    })
                };
                let filtered = collection.is_some() || scope.is_some() || allowed.is_some();
                let filter: Option<KeyFilter<'_>> = if filtered { Some(&keep) } else { None };
                inner.vectors.read().search(qv, candidates, filter)
            }
            None => Vec::new(),
        };
        let top_cosine = vector.first().map(|v| v.1);
        let ranked: Vec<(u64, f32)> = match mode {
            RetrievalMode::Lexical => lexical.into_iter().take(top_k).collect(),
            RetrievalMode::Vector => vector.into_iter().take(top_k).collect(),
            RetrievalMode::Hybrid => {
                let r = &inner.cfg.retrieval;
                weighted_rrf(
                    &[(&lexical, r.lexical_weight), (&vector, r.vector_weight)],
                    r.rrf_k,
                    top_k,
                )
            }
        };
        let keys: Vec<u64> = ranked.iter().map(|r| r.0).collect();
        let mut by_key: HashMap<u64, StoredChunk> = inner
            .store
            .chunks_by_keys(&keys)
            .await?
            .into_iter()
            .map(|c| (c.key, c))
            .collect();
        let hits = ranked
            .into_iter()
            .filter_map(|(key, score)| {
                by_key.remove(&key).map(|c| Hit {
                    doc_id: c.doc_id,
                    chunk_id: c.id,
                    score,
                    title: c.title,
                    text: c.text,
                    start: c.start,
                    end: c.end,
                    page: c.page,
                })
            })
            .collect();
        let search_ms = ms(search_start);
        tracing::debug!(
            ?mode,
            total_ms = ms(started),
            embed_ms,
            search_ms,
            "retrieved"
        );
        Ok(Retrieved {
            hits,
            embed_ms,
            search_ms,
            top_cosine: top_cosine.or(if mode == RetrievalMode::Lexical {
                None
            } else {
                Some(0.0)
            }),
        })
    }

    // ---------------------------------------------------------------- chat

    /// The relevance test (see [`Relevance`]): the closest chunk's cosine
    /// and the hits' best IDF-weighted coverage of the question.
    fn relevance(&self, question: &str, retrieved: &Retrieved) -> Relevance {
        let texts: Vec<String> = retrieved
            .hits
            .iter()
            .map(|h| embed_text(&h.title, &h.text))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let coverage = self
            .inner
            .lexical
            .coverage(question, &refs)
            .into_iter()
            .fold(0.0f32, f32::max);
        Relevance::new(
            retrieved.top_cosine,
            coverage,
            self.inner.cfg.chat.min_relevance,
        )
    }

    /// Answers a message: retrieval, prompt, streamed generation. The stream
    /// yields `Retrieval`, then `Token`s, then `Done` (or `Error`); the turns
    /// and the run snapshot are stored before `Done`. Dropping the stream
    /// cancels generation (nothing is stored).
    pub async fn chat(&self, req: ChatRequest) -> Result<ChatStream> {
        self.chat_as(req, None, None).await
    }

    /// [`Engine::chat`] on behalf of a principal: retrieval sees only the
    /// collections of `scope` (`None`: all), and a new conversation and the
    /// run snapshot are stored as `owner`'s (the caller checks that an
    /// existing conversation is theirs).
    pub async fn chat_as(
        &self,
        req: ChatRequest,
        owner: Option<&str>,
        scope: Option<&[String]>,
    ) -> Result<ChatStream> {
        let started = Instant::now();
        let owner: Option<String> = owner.map(str::to_string);
        if req.message.trim().is_empty() {
            return Err(RagError::InvalidInput("the message is empty".into()));
        }
        let inner = self.inner.clone();
        let (gen_name, generator) = inner.generators.get(req.generator.as_deref())?;
        let params = req
            .params
            .clone()
            .unwrap_or_else(|| inner.cfg.generation.clone());
        if params.max_tokens == 0 {
            return Err(RagError::InvalidInput(
                "max_tokens must be at least 1".into(),
            ));
        }
        let mode = req.mode.unwrap_or(inner.cfg.retrieval.mode);
        let top_k = req.top_k.unwrap_or(inner.cfg.retrieval.top_k);
        let (conversation_id, history) = match &req.conversation_id {
            Some(id) if !id.trim().is_empty() => {
                let n = inner.cfg.prompt.history_turns * 2;
                let history = inner
                    .memory
                    .recent_turns(inner.store.as_ref(), id, n)
                    .await?;
                (id.clone(), history)
            }
            _ => (uuid::Uuid::now_v7().to_string(), Vec::new()),
        };
        let retrieved = self
            .retrieve(
                &req.message,
                top_k,
                mode,
                (req.collection.as_deref(), scope),
                &req.filter,
                None,
            )
            .await?;
        let relevance = self.relevance(&req.message, &retrieved);
        // Abstaining: no sources in the prompt, no citations, no model call.
        let hits: &[Hit] = if relevance.abstained {
            &[]
        } else {
            &retrieved.hits
        };
        let prompt = build_prompt(
            &inner.cfg.prompt,
            generator.as_ref(),
            &params,
            &history,
            &req.message,
            hits,
        );
        let citations: Vec<Citation> = prompt
            .source_hits
            .iter()
            .zip(&prompt.sources)
            .map(|(&i, s)| {
                let h = &retrieved.hits[i];
                Citation {
                    n: s.n,
                    doc_id: h.doc_id.clone(),
                    chunk_id: h.chunk_id.clone(),
                    title: h.title.clone(),
                    snippet: h.text.clone(),
                    start: h.start,
                    end: h.end,
                    page: h.page,
                    score: h.score,
                }
            })
            .collect();
        let run_id = uuid::Uuid::now_v7().to_string();
        let snapshot_base = RunSnapshot {
            run_id: run_id.clone(),
            time: now_rfc3339(),
            config_hash: inner.config_hash.clone(),
            embedder_id: inner.embedder.id(),
            generator: gen_name,
            generator_id: generator.id(),
            retrieval: RunRetrieval {
                mode,
                top_k,
                rrf_k: inner.cfg.retrieval.rrf_k,
                candidates: inner.cfg.retrieval.candidates.max(top_k),
                weights: (
                    inner.cfg.retrieval.lexical_weight,
                    inner.cfg.retrieval.vector_weight,
                ),
                collection: req.collection.clone(),
                filter: req.filter.clone(),
            },
            retrieved: retrieved
                .hits
                .iter()
                .map(|h| RetrievedChunk {
                    chunk_id: h.chunk_id.clone(),
                    score: h.score,
                })
                .collect(),
            prompt: prompt.messages.clone(),
            question: req.message.clone(),
            sources: prompt.sources.clone(),
            params: params.clone(),
            output: String::new(),
            citations: Vec::new(),
            usage: Usage {
                prompt_tokens: prompt.prompt_tokens,
                completion_tokens: 0,
            },
            timings: Timings {
                embed_ms: retrieved.embed_ms,
                search_ms: retrieved.search_ms,
                first_token_ms: None,
                total_ms: 0.0,
            },
            conversation_id: conversation_id.clone(),
            relevance: Some(relevance),
            attribution: Vec::new(),
            answer: String::new(),
        };
        let gen_req = GenerateRequest {
            messages: prompt.messages,
            question: req.message.clone(),
            sources: prompt.sources,
            params,
        };
        let user_turn = Turn {
            role: Role::User,
            content: req.message.clone(),
            citations: Vec::new(),
            run_id: None,
            at: now_rfc3339(),
        };
        let stream = async_stream::stream! {
            yield ChatEvent::Retrieval {
                conversation_id: conversation_id.clone(),
                run_id: run_id.clone(),
                citations: citations.clone(),
            };
            let mut tokens = if relevance.abstained {
                futures::stream::iter([Ok(NO_ANSWER.to_string())]).boxed()
            } else {
                generator.generate(gen_req)
            };
            let mut answer = String::new();
            let mut first_token_ms = None;
            while let Some(delta) = tokens.next().await {
                match delta {
                    Ok(text) => {
                        if text.is_empty() {
                            continue;
                        }
                        if first_token_ms.is_none() {
                            first_token_ms = Some(ms(started));
                        }
                        answer.push_str(&text);
                        yield ChatEvent::Token { text };
                    }
                    Err(e) => {
                        yield ChatEvent::Error { message: e.to_string() };
                        return;
                    }
                }
            }
            let attributed =
                finish_answer(&answer, relevance.abstained, &snapshot_base.sources, &inner.cfg.chat);
            let used_citations: Vec<Citation> = attributed
                .used
                .iter()
                .filter_map(|n| citations.get(n - 1).cloned())
                .collect();
            let raw_output = std::mem::replace(&mut answer, attributed.answer);
            let usage = Usage {
                prompt_tokens: snapshot_base.usage.prompt_tokens,
                completion_tokens: generator.count_tokens(&raw_output),
            };
            let timings = Timings {
                embed_ms: snapshot_base.timings.embed_ms,
                search_ms: snapshot_base.timings.search_ms,
                first_token_ms,
                total_ms: ms(started),
            };
            let snapshot = RunSnapshot {
                output: raw_output,
                answer: answer.clone(),
                attribution: attributed.sentences,
                citations: used_citations.clone(),
                usage,
                timings,
                ..snapshot_base
            };
            let assistant_turn = Turn {
                role: Role::Assistant,
                content: answer.clone(),
                citations: used_citations.clone(),
                run_id: Some(run_id.clone()),
                at: now_rfc3339(),
            };
            let title = truncate_chars(&user_turn.content, 80);
            let stored = async {
                match &owner {
                    Some(o) => {
                        inner.store.put_run_owned(&snapshot, o).await?;
                        inner.store.claim_conversation(&conversation_id, &title, o).await?;
                    }
                    None => inner.store.put_run(&snapshot).await?,
                }
                inner
                    .memory
                    .append_turns(
                        inner.store.as_ref(),
                        &conversation_id,
                        &title,
                        &[user_turn, assistant_turn],
                    )
                    .await
                    .map(|_| ())
            }
            .await;
            match stored {
                Ok(()) => yield ChatEvent::Done {
                    conversation_id,
                    run_id,
                    answer,
                    citations: used_citations,
                    usage,
                    timings,
                },
                Err(e) => yield ChatEvent::Error {
                    message: format!("the answer could not be stored: {e}"),
                },
            }
        };
        Ok(stream.boxed())
    }

    /// Regenerates a stored run from its exact prompt and parameters with the
    /// generator of the same name. With greedy decoding (and the same model)
    /// the output is identical.
    pub async fn replay(&self, run_id: &str) -> Result<Replay> {
        let run = self
            .inner
            .store
            .get_run(run_id)
            .await?
            .ok_or_else(|| RagError::NotFound(format!("run {run_id}")))?;
        let (_, generator) = self.inner.generators.get(Some(&run.generator))?;
        let mut tokens = generator.generate(GenerateRequest {
            messages: run.prompt.clone(),
            question: run.question.clone(),
            sources: run.sources.clone(),
            params: run.params.clone(),
        });
        let mut output = String::new();
        while let Some(delta) = tokens.next().await {
            output.push_str(&delta?);
        }
        let generator_id = generator.id();
        Ok(Replay {
            run_id: run.run_id,
            generator_changed: generator_id != run.generator_id,
            generator_id,
            identical: output == run.output,
            original: run.output,
            output,
        })
    }

    // ---------------------------------------------------------------- conversations & runs

    pub async fn list_conversations(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Page<ConversationInfo>> {
        self.inner.store.list_conversations(offset, limit).await
    }

    pub async fn get_conversation(&self, id: &str) -> Result<Option<Conversation>> {
        self.inner.store.get_conversation(id).await
    }

    pub async fn delete_conversation(&self, id: &str) -> Result<bool> {
        let deleted = self.inner.store.delete_conversation(id).await?;
        self.inner.memory.forget(id).await;
        Ok(deleted)
    }

    pub async fn get_run(&self, id: &str) -> Result<Option<RunSnapshot>> {
        self.inner.store.get_run(id).await
    }

    /// The store (principals, ownership; see [`crate::store::PrincipalStore`]).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Documents in any of `collections`, ordered by id.
    pub async fn list_documents_in(
        &self,
        collections: &[String],
        offset: usize,
        limit: usize,
    ) -> Result<Page<DocumentInfo>> {
        let p = self
            .inner
            .store
            .list_documents_in(collections, offset, limit)
            .await?;
        Ok(doc_page(p))
    }

    /// `(documents, chunks)` in the collections of `scope` (no I/O).
    pub fn counts_in(&self, scope: &[String]) -> (usize, usize) {
        let o = self.inner.owners.read();
        let mut docs: HashSet<&str> = HashSet::new();
        let mut chunks = 0;
        for w in o.by_key.values() {
            if scope.iter().any(|c| **c == *w.collection) {
                chunks += 1;
                docs.insert(&*w.doc_id);
            }
        }
        (docs.len(), chunks)
    }

    /// Cheap counters (no I/O).
    pub fn stats(&self) -> EngineStats {
        let (documents, chunks) = {
            let o = self.inner.owners.read();
            (o.per_doc.len(), o.by_key.len())
        };
        EngineStats {
            documents,
            chunks,
            vector_index_size: self.inner.vectors.read().len(),
            lexical_index_size: self.inner.lexical.len(),
            applied_seq: self.applied_seq(),
        }
    }
}

enum Prepared {
    Unchanged(IngestOutcome),
    New(Box<DocumentRecord>, Vec<Chunk>),
}

fn embed_text(title: &str, text: &str) -> String {
    if title.is_empty() {
        text.to_string()
    } else {
        format!("{title}\n{text}")
    }
}

/// A page of stored documents as the API shows them.
fn doc_page(p: Page<crate::store::DocumentRecord>) -> Page<DocumentInfo> {
    Page {
        items: p.items.into_iter().map(doc_info).collect(),
        total: p.total,
        offset: p.offset,
        limit: p.limit,
    }
}

fn doc_info(r: DocumentRecord) -> DocumentInfo {
    DocumentInfo {
        id: r.id,
        title: r.title,
        collection: r.collection,
        metadata: r.metadata,
        source: r.source,
        chunks: r.chunks,
        chars: r.chars,
        content_hash: r.content_hash,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

fn open_vector_index(dir: &Path, cfg: &IndexConfig, dim: usize) -> Result<Box<dyn VectorIndex>> {
    Ok(match cfg.vector {
        VectorIndexKind::Hnsw => Box::new(HnswIndex::open(
            &dir.join("vectors.hnsw"),
            dim,
            HnswParams {
                m: cfg.hnsw_m,
                ef_construction: cfg.hnsw_ef_construction,
                ef_search: cfg.hnsw_ef_search,
            },
        )?),
        VectorIndexKind::Flat => Box::new(FlatIndex::open(&dir.join("vectors.flat"), dim)?),
    })
}

/// Stops the follower task ([`Engine::spawn_follower`]) when dropped.
#[derive(Debug)]
pub struct FollowerHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FollowerHandle {
    /// Stops the follower and waits for it (a catch-up in progress finishes).
    pub async fn shutdown(mut self) {
        drop(self.stop.take());
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// The task is still running.
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for FollowerHandle {
    fn drop(&mut self) {
        // Dropping the sender wakes the task, which then ends.
        drop(self.stop.take());
    }
}

/// Waits for the listener's next notification (forever without one).
async fn notified(listener: &mut Option<Box<dyn ChangeListener>>) -> Result<Option<u64>> {
    match listener {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

/// The follower task. Holds the engine only while working, so dropping the
/// last `Engine` ends it.
async fn follow(weak: Weak<Inner>, poll: Duration, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let mut listener: Option<Box<dyn ChangeListener>> = None;
    // None: the store has no notifications; never ask again.
    let mut listen_at: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    loop {
        // Subscribe first, then catch up: nothing committed in between is missed.
        if listener.is_none() && listen_at.is_some_and(|t| t <= tokio::time::Instant::now()) {
            let Some(inner) = weak.upgrade() else { break };
            let subscribed = tokio::select! {
                _ = &mut stop => break,
                r = inner.store.listen() => r,
            };
            match subscribed {
                Ok(Some(l)) => {
                    listener = Some(l);
                    inner.sync.lock().listening = true;
                    tracing::debug!("follower: listening for change notifications");
                }
                Ok(None) => listen_at = None,
                Err(e) => {
                    tracing::debug!(error = %e, "follower: cannot listen for notifications yet");
                    listen_at = Some(tokio::time::Instant::now() + poll);
                }
            }
        }
        let applied = {
            let Some(inner) = weak.upgrade() else { break };
            let engine = Engine { inner };
            tokio::select! {
                _ = &mut stop => break,
                r = engine.catch_up() => r.unwrap_or_else(|_| engine.applied_seq()),
            }
        };
        // Wait for the next poll, or a notification of a change we lack.
        let deadline = tokio::time::Instant::now() + poll;
        loop {
            tokio::select! {
                _ = &mut stop => return finish(&weak),
                _ = tokio::time::sleep_until(deadline) => break,
                n = notified(&mut listener) => match n {
                    Ok(Some(seq)) if seq <= applied => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "follower: change notifications lost; polling until re-subscribed");
                        listener = None;
                        if let Some(inner) = weak.upgrade() {
                            inner.sync.lock().listening = false;
                        }
                        listen_at = Some(tokio::time::Instant::now() + poll);
                        break;
                    }
                },
            }
        }
    }
    finish(&weak)
}

fn finish(weak: &Weak<Inner>) {
    if let Some(inner) = weak.upgrade() {
        let mut s = inner.sync.lock();
        s.follower_interval = None;
        s.listening = false;
    }
}
