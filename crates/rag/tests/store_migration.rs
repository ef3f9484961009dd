//! Migration 0015 (document identity) on a store the old schema created,
//! for both backends: a store with only migration 0001 applied and rows as
//! older versions wrote them (ids `doc-` + a hash of the text) is opened by
//! this version. Nothing is lost: a document with a source moves to its
//! source-based id (chunks, embeddings and creation time kept, through the
//! change log), the newest of several versions of one source takes the id
//! and the older ones stay, documents without a source and caller-given ids
//! keep their id, and a second open changes nothing.
mod store_support;

use std::path::Path;

use ragfleet_rag::store::{legacy_document_id, ChangeOp, Store};
use ragfleet_rag::StoreConfig;
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Connection};
use store_support::PgSchema;

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A directory holding only the first migration of `backend`: the old schema.
fn old_migrations(backend: Backend, dir: &Path) -> std::path::PathBuf {
    let name = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(name)
        .join("0001_init.sql");
    let out = dir.join(format!("old-{name}"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(&src, out.join("0001_init.sql")).unwrap();
    out
}

fn blob(backend: Backend, v: &[f32]) -> String {
    let hex: String = v
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .map(|b| format!("{b:02x}"))
        .collect();
    match backend {
        Backend::Sqlite => format!("X'{hex}'"),
        Backend::Postgres => format!("'\\x{hex}'::bytea"),
    }
}

/// `(id, collection, source, text, seq, chunk texts)` as older versions wrote them.
struct Old {
    id: String,
    collection: &'static str,
    source: Option<&'static str>,
    text: &'static str,
    seq: u64,
    chunks: &'static [&'static str],
}

fn old_rows(backend: Backend) -> (Vec<Old>, String) {
    let readme = "Cargo is the Rust package manager. README of the book.";
    let notes_v1 = "Notes, first version.";
    let notes_v2 = "Notes, second version with more text.";
    let sourceless = "A document posted as JSON without a source.";
    let docs = vec![
        Old {
            id: legacy_document_id(readme),
            collection: "book",
            source: Some("README.html"),
            text: readme,
            seq: 1,
            chunks: &["Cargo is the Rust package manager.", "README of the book."],
        },
        Old {
            id: legacy_document_id(notes_v1),
            collection: "default",
            source: Some("notes.md"),
            text: notes_v1,
            seq: 2,
            chunks: &["Notes, first version."],
        },
        Old {
            id: legacy_document_id(notes_v2),
            collection: "default",
            source: Some("notes.md"),
            text: notes_v2,
            seq: 3,
            chunks: &["Notes, second version with more text."],
        },
        Old {
            id: legacy_document_id(sourceless),
            collection: "default",
            source: None,
            text: sourceless,
            seq: 4,
            chunks: &["A document posted as JSON without a source."],
        },
        Old {
            id: "ada".into(),
            collection: "default",
            source: Some("ada.txt"),
            text: "Ada Lovelace wrote the first program.",
            seq: 5,
            chunks: &["Ada Lovelace wrote the first program."],
        },
    ];
    let mut sql = String::new();
    for d in &docs {
        let source = d
            .source
            .map(|s| format!("'{s}'"))
            .unwrap_or_else(|| "NULL".into());
        let (metadata, no_keys) = match backend {
            Backend::Sqlite => ("'{}'", "'[]'"),
            Backend::Postgres => ("'{}'::jsonb", "'{}'::bigint[]"),
        };
        sql.push_str(&format!(
            "INSERT INTO documents (id, title, collection, metadata, source, text, pages, content_hash, \
             chunks, chars, created_at, updated_at, seq) VALUES ('{id}', 'title {id}', '{c}', {metadata}, \
             {source}, '{text}', '[]', 'hash-{id}', {n}, {chars}, '2025-01-0{seq}T00:00:00.000Z', \
             '2025-01-0{seq}T00:00:00.000Z', {seq});\n",
            id = d.id,
            c = d.collection,
            text = d.text,
            n = d.chunks.len(),
            chars = d.text.chars().count(),
            seq = d.seq,
        ));
        sql.push_str(&format!(
            "INSERT INTO changes (doc_id, op, removed_keys, at) VALUES ('{}', 'upsert', {no_keys}, '2025-01-01T00:00:00.000Z');\n",
            d.id
        ));
        for (i, t) in d.chunks.iter().enumerate() {
            sql.push_str(&format!(
                "INSERT INTO chunks (id, doc_id, ordinal, text, start_char, end_char, page, embedding) \
                 VALUES ('{id}#{i}', '{id}', {i}, '{t}', 0, {len}, NULL, {emb});\n",
                id = d.id,
                len = t.chars().count(),
                emb = blob(backend, &[i as f32, d.seq as f32, 0.5]),
            ));
        }
    }
    (docs, sql)
}

/// Creates the old schema with old rows, then opens it with this version.
async fn migrate_old_store(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let schema = PgSchema::new();
    let (docs, sql) = old_rows(backend);
    let migrator = sqlx::migrate::Migrator::new(old_migrations(backend, dir.path()))
        .await
        .unwrap();
    let cfg = match backend {
        Backend::Sqlite => {
            let path = dir.path().join("ragfleet.db");
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true);
            let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
            migrator.run(&mut conn).await.unwrap();
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
            StoreConfig::default()
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&schema.url).await.unwrap();
            sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE SCHEMA \"{}\"; SET search_path TO \"{}\"",
                schema.name, schema.name
            )))
            .execute(&mut conn)
            .await
            .unwrap();
            migrator.run(&mut conn).await.unwrap();
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
            schema.store_config()
        }
    };
    let s: std::sync::Arc<dyn Store> = ragfleet_rag::store::open(&cfg, dir.path())
        .await
        .expect("the old store opens and migrates");
    let new_id = |collection: &str, source: &str| {
        hex::encode(Sha256::digest(format!("{collection}\0{source}").as_bytes()))
    };

    // Nothing lost: five documents before, five after.
    assert_eq!(s.counts().await.unwrap(), (5, 6));
    // README.html moved to its source-based id with its chunks and creation time.
    let readme_id = new_id("book", "README.html");
    assert_eq!(
        readme_id,
        ragfleet_rag::ingest::document_id("book", Some("README.html"), "")
    );
    assert!(s.get_document(&docs[0].id).await.unwrap().is_none());
    let readme = s.get_document(&readme_id).await.unwrap().expect("moved");
    assert_eq!(readme.text, docs[0].text);
    assert_eq!(readme.source.as_deref(), Some("README.html"));
    assert_eq!(readme.collection, "book");
    assert_eq!(readme.created_at, "2025-01-01T00:00:00.000Z");
    assert_eq!(readme.content_hash, format!("hash-{}", docs[0].id));
    let chunks = s.document_chunks(&readme_id).await.unwrap();
    assert_eq!(
        chunks.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(),
        docs[0].chunks
    );
    assert_eq!(chunks[1].id, format!("{readme_id}#1"));
    assert_eq!(
        chunks[1].embedding.as_deref(),
        Some(&[1.0f32, 1.0, 0.5][..])
    );
    // The newest notes.md took the id; the older version stays as it was.
    let notes = s
        .get_document(&new_id("default", "notes.md"))
        .await
        .unwrap()
        .expect("newest version moved");
    assert_eq!(notes.text, docs[2].text);
    assert!(s.get_document(&docs[2].id).await.unwrap().is_none());
    assert_eq!(
        s.get_document(&docs[1].id).await.unwrap().unwrap().text,
        docs[1].text
    );
    // No source, or a caller-given id: the id stays.
    assert!(s.get_document(&docs[3].id).await.unwrap().is_some());
    assert!(s.get_document("ada").await.unwrap().is_some());
    // The moves are in the change log, so every node's indexes follow:
    // an upsert under the new id and a delete (with the old chunk keys)
    // under the old one.
    let changes = s.changes_since(5, 100).await.unwrap();
    let ops: Vec<(&str, ChangeOp)> = changes.iter().map(|c| (c.doc_id.as_str(), c.op)).collect();
    assert!(
        ops.contains(&(readme_id.as_str(), ChangeOp::Upsert)),
        "{ops:?}"
    );
    let deleted = changes
        .iter()
        .find(|c| c.doc_id == docs[0].id && c.op == ChangeOp::Delete)
        .expect("the old id's delete is logged");
    assert_eq!(deleted.removed_keys.len(), 2);
    assert_eq!(changes.len(), 4, "two moves, two changes each: {ops:?}");
    // Opening again changes nothing.
    let last = s.last_seq().await.unwrap();
    drop(s);
    let again = ragfleet_rag::store::open(&cfg, dir.path()).await.unwrap();
    assert_eq!(again.last_seq().await.unwrap(), last);
    assert_eq!(again.counts().await.unwrap(), (5, 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_of_the_old_schema_migrates_without_losing_documents() {
    migrate_old_store(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_of_the_old_schema_migrates_without_losing_documents() {
    migrate_old_store(Backend::Postgres).await;
}
