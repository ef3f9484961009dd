-- ragfleet embedded store: documents + chunks (with embeddings), the document
-- change log the indexes catch up from, conversations and run snapshots.

CREATE TABLE documents (
    id           TEXT PRIMARY KEY NOT NULL,
    title        TEXT NOT NULL,
    collection   TEXT NOT NULL,
    metadata     TEXT NOT NULL,            -- JSON object
    source       TEXT,
    text         TEXT NOT NULL,
    pages        TEXT NOT NULL,            -- JSON [[offset, page], ...]
    content_hash TEXT NOT NULL,
    chunks       INTEGER NOT NULL,
    chars        INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    seq          INTEGER NOT NULL
);
CREATE INDEX documents_collection ON documents (collection, id);

CREATE TABLE chunks (
    key        INTEGER PRIMARY KEY AUTOINCREMENT,   -- the indexes' id; never reused
    id         TEXT NOT NULL UNIQUE,
    doc_id     TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    ordinal    INTEGER NOT NULL,
    text       TEXT NOT NULL,
    start_char INTEGER NOT NULL,
    end_char   INTEGER NOT NULL,
    page       INTEGER,
    embedding  BLOB NOT NULL                      -- f32 little-endian
);
CREATE INDEX chunks_doc ON chunks (doc_id, ordinal);

-- One row per document change; seq is monotonically increasing.
CREATE TABLE changes (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id       TEXT NOT NULL,
    op           TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    removed_keys TEXT NOT NULL,            -- JSON array of chunk keys removed
    at           TEXT NOT NULL
);

CREATE TABLE conversations (
    id         TEXT PRIMARY KEY NOT NULL,
    title      TEXT NOT NULL,
    turns      INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX conversations_updated ON conversations (updated_at);

CREATE TABLE turns (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    idx             INTEGER NOT NULL,
    role            TEXT NOT NULL,
    content         TEXT NOT NULL,
    citations       TEXT NOT NULL,         -- JSON
    run_id          TEXT,
    at              TEXT NOT NULL,
    PRIMARY KEY (conversation_id, idx)
);

CREATE TABLE runs (
    id              TEXT PRIMARY KEY NOT NULL,
    time            TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    snapshot        TEXT NOT NULL          -- JSON RunSnapshot
);
CREATE INDEX runs_conversation ON runs (conversation_id);
