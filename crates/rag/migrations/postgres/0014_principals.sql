-- Identity and access (issue 14): users, their per-collection grants, API
-- keys (only a SHA-256 of each key is kept, looked up by its public id),
-- browser sessions, and the owner of every conversation and run.
-- Rows from before this migration belong to the bootstrap admin (`admin`).
-- Same shape as migrations/sqlite/0014_principals.sql; the SQL that uses
-- these tables is written once (src/store/principals.rs).

CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'editor', 'reader')),
    password_hash TEXT,                     -- argon2id PHC string; NULL: no password login
    created_at    TEXT NOT NULL
);

-- A user's collections ('*': every collection). Admins need none.
CREATE TABLE grants (
    user_name  TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    collection TEXT NOT NULL,
    PRIMARY KEY (user_name, collection)
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,  -- the public lookup part of the key
    hash        TEXT NOT NULL,              -- hex SHA-256 of the whole key
    user_name   TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    name        TEXT NOT NULL,              -- a label
    role        TEXT NOT NULL CHECK (role IN ('admin', 'editor', 'reader')),
    collections TEXT,                       -- JSON array narrowing the owner's grants; NULL: the owner's
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    last_used   TEXT,
    revoked_at  TEXT
);
CREATE INDEX api_keys_user ON api_keys (user_name);

CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,   -- hex SHA-256 of the cookie value
    user_name  TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    csrf       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

ALTER TABLE conversations ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin';
CREATE INDEX conversations_owner ON conversations (owner, updated_at);
ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin';
