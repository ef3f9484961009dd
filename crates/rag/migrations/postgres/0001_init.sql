-- ragfleet shared store (PostgreSQL): documents + chunks (with embeddings),
-- the document change log every node's indexes follow, conversations and
-- run snapshots. Same shape and semantics as migrations/sqlite.
--
-- Times are RFC 3339 text (UTC, milliseconds), exactly as the engine writes
-- them, so both backends return identical values and sort them the same way.
-- JSON is kept as text (escaped, so a NUL in a question is storable) except
-- document metadata, which is JSONB for filtering.

CREATE TABLE documents (
    id           TEXT PRIMARY KEY,
    title        TEXT NOT NULL,
    collection   TEXT NOT NULL,
    metadata     JSONB NOT NULL,           -- JSON object (filters: metadata -> key = value)
    source       TEXT,
    text         TEXT NOT NULL,
    pages        TEXT NOT NULL,            -- JSON [[offset, page], ...]
    content_hash TEXT NOT NULL,
    chunks       BIGINT NOT NULL,
    chars        BIGINT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    seq          BIGINT NOT NULL
);
CREATE INDEX documents_collection ON documents (collection, id);

CREATE TABLE chunks (
    key        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- the indexes' id; never reused
    id         TEXT NOT NULL UNIQUE,
    doc_id     TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    ordinal    INTEGER NOT NULL,
    text       TEXT NOT NULL,
    start_char BIGINT NOT NULL,
    end_char   BIGINT NOT NULL,
    page       BIGINT,
    embedding  BYTEA NOT NULL                                    -- f32 little-endian
);
CREATE INDEX chunks_doc ON chunks (doc_id, ordinal);

-- One row per document change. `seq` is assigned while the writing
-- transaction holds an EXCLUSIVE lock on this table (taken before anything
-- else it writes), so transactions commit in `seq` order: once a follower
-- sees change N, every change < N is already visible. Gaps (rolled-back
-- transactions) are possible and harmless.
CREATE TABLE changes (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    doc_id       TEXT NOT NULL,
    op           TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    removed_keys BIGINT[] NOT NULL,         -- chunk keys removed
    at           TEXT NOT NULL
);

CREATE TABLE conversations (
    id         TEXT PRIMARY KEY,
    title      TEXT NOT NULL,
    turns      BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX conversations_updated ON conversations (updated_at);

CREATE TABLE turns (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    idx             BIGINT NOT NULL,
    role            TEXT NOT NULL,
    content         TEXT NOT NULL,
    citations       TEXT NOT NULL,         -- JSON
    run_id          TEXT,
    at              TEXT NOT NULL,
    PRIMARY KEY (conversation_id, idx)
);

CREATE TABLE runs (
    id              TEXT PRIMARY KEY,
    time            TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    snapshot        TEXT NOT NULL          -- JSON RunSnapshot
);
CREATE INDEX runs_conversation ON runs (conversation_id);
