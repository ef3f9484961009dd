//! Ingest, re-ingest, delete and reopen, with the real embedder.
mod engine_support;

use engine_support::*;
use ragfleet_rag::types::{NewDocument, RetrievalMode};
use ragfleet_rag::{IngestStatus, SearchQuery};
use serde_json::json;

fn q(text: &str, mode: RetrievalMode, top_k: usize) -> SearchQuery {
    SearchQuery {
        top_k,
        mode,
        ..SearchQuery::new(text)
    }
}

fn doc(id: &str, text: &str) -> NewDocument {
    NewDocument {
        id: Some(id.into()),
        title: Some(format!("About {id}")),
        text: text.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn reingest_is_a_noop_changes_replace_and_delete_removes_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path())).await;
    engine.ready().await.unwrap();

    let zebra = doc(
        "zebra",
        "Zebras are African equines with distinctive black-and-white striped coats.",
    );
    let out = engine.ingest(zebra.clone()).await.unwrap();
    assert_eq!(out.status, IngestStatus::Created);
    assert_eq!(out.chunks, 1);
    engine
        .ingest(doc(
            "volcano",
            "A volcano is a rupture in the crust of a planet through which lava escapes.",
        ))
        .await
        .unwrap();
    let seq = engine.stats().applied_seq;

    // Same content again: nothing happens (no change logged).
    let again = engine.ingest(zebra.clone()).await.unwrap();
    assert_eq!(again.status, IngestStatus::Unchanged);
    assert_eq!(engine.stats().applied_seq, seq);
    let info = engine.get_document("zebra").await.unwrap().unwrap();
    assert_eq!(info.chunks, 1);
    assert_eq!(info.collection, "default");
    assert_eq!(info.title, "About zebra");
    assert_eq!(info.content_hash.len(), 64);

    // Changed content: old chunks are gone from both indexes.
    let changed = doc(
        "zebra",
        "Quokkas are small marsupials living on Rottnest Island near Perth.",
    );
    assert_eq!(
        engine.ingest(changed).await.unwrap().status,
        IngestStatus::Replaced
    );
    let lex = engine
        .search(q("striped coats", RetrievalMode::Lexical, 5))
        .await
        .unwrap();
    assert!(lex.is_empty(), "{lex:?}");
    let lex = engine
        .search(q("quokkas marsupials", RetrievalMode::Lexical, 5))
        .await
        .unwrap();
    assert_eq!(lex[0].doc_id, "zebra");
    assert!(lex[0].text.starts_with("Quokkas"));
    let vec = engine
        .search(q("animal with stripes", RetrievalMode::Vector, 5))
        .await
        .unwrap();
    assert!(vec.iter().all(|h| !h.text.contains("striped")));
    let stats = engine.stats();
    assert_eq!((stats.documents, stats.chunks), (2, 2));
    assert_eq!(stats.vector_index_size, 2);
    assert_eq!(stats.lexical_index_size, 2);

    // Delete: gone from the store and both indexes.
    assert!(engine.delete_document("zebra").await.unwrap());
    assert!(!engine.delete_document("zebra").await.unwrap());
    assert!(engine.get_document("zebra").await.unwrap().is_none());
    assert!(engine
        .search(q("quokkas", RetrievalMode::Lexical, 5))
        .await
        .unwrap()
        .is_empty());
    let vec = engine
        .search(q("quokka marsupial island", RetrievalMode::Vector, 5))
        .await
        .unwrap();
    assert_eq!(
        vec.iter().map(|h| h.doc_id.as_str()).collect::<Vec<_>>(),
        ["volcano"]
    );
    let stats = engine.stats();
    assert_eq!(
        (
            stats.documents,
            stats.chunks,
            stats.vector_index_size,
            stats.lexical_index_size
        ),
        (1, 1, 1, 1)
    );
    // A deleted document can come back.
    assert_eq!(
        engine.ingest(zebra).await.unwrap().status,
        IngestStatus::Created
    );
}

#[tokio::test]
async fn batch_keeps_good_documents_and_reports_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path())).await;
    let results = engine
        .ingest_batch(vec![
            doc("a", "Alpha text about rivers and lakes."),
            NewDocument {
                id: Some("empty".into()),
                text: "   ".into(),
                ..Default::default()
            },
            NewDocument {
                id: Some("".into()),
                text: "no id".into(),
                ..Default::default()
            },
            NewDocument {
                text: "Beta text about mountains, with metadata.".into(),
                collection: Some("geo".into()),
                metadata: json!({"lang": "en"}).as_object().cloned().unwrap(),
                ..Default::default()
            },
        ])
        .await;
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].as_ref().unwrap().status, IngestStatus::Created);
    let err = results[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("empty") && err.contains("no text"), "{err}");
    assert!(results[2].is_err());
    let generated = results[3].as_ref().unwrap();
    assert!(
        generated.doc_id.starts_with("doc-"),
        "an id derived from the content: {}",
        generated.doc_id
    );

    let all = engine.list_documents(None, 0, 10).await.unwrap();
    assert_eq!(all.total, 2);
    let geo = engine.list_documents(Some("geo"), 0, 10).await.unwrap();
    assert_eq!(geo.total, 1);
    assert_eq!(geo.items[0].metadata.get("lang"), Some(&json!("en")));
    let page = engine.list_documents(None, 1, 1).await.unwrap();
    assert_eq!(
        (page.items.len(), page.total, page.offset, page.limit),
        (1, 2, 1, 1)
    );
}

#[tokio::test]
async fn long_documents_are_chunked_with_offsets_that_slice_back() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path())).await;
    let corpus = squad_corpus(5);
    let text: String = corpus
        .docs
        .iter()
        .map(|d| d.text.as_str())
        .collect::<Vec<_>>()
        .join("\n\n");
    let out = engine
        .ingest(NewDocument {
            id: Some("long".into()),
            text: text.clone(),
            pages: vec![(0, 1), (text.chars().count() / 2, 2)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(out.chunks >= 3, "{} chunks", out.chunks);
    let hits = engine
        .search(q(&corpus.queries[0].0, RetrievalMode::Hybrid, 10))
        .await
        .unwrap();
    assert!(!hits.is_empty());
    let chars: Vec<char> = text.chars().collect();
    for h in &hits {
        let slice: String = chars[h.start..h.end].iter().collect();
        assert_eq!(slice, h.text);
        assert!(h.page.is_some());
    }
}

#[tokio::test]
async fn indexes_reopen_after_restart_with_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = squad_corpus(30);
    let queries: Vec<SearchQuery> = corpus
        .queries
        .iter()
        .take(10)
        .flat_map(|(t, _)| {
            [
                RetrievalMode::Lexical,
                RetrievalMode::Vector,
                RetrievalMode::Hybrid,
            ]
            .map(|m| q(t, m, 5))
        })
        .collect();
    let before = {
        let engine = open(config(dir.path())).await;
        for r in engine.ingest_batch(corpus.docs.clone()).await {
            assert_eq!(r.unwrap().status, IngestStatus::Created);
        }
        assert!(engine
            .delete_document(corpus.docs[0].id.as_deref().unwrap())
            .await
            .unwrap());
        let mut out = Vec::new();
        for sq in &queries {
            out.push(engine.search(sq.clone()).await.unwrap());
        }
        out
        // dropped: the vector index is saved on drop
    };
    assert!(dir.path().join("vectors.hnsw").exists());
    let engine = open(config(dir.path())).await;
    engine.ready().await.unwrap();
    assert_eq!(engine.stats().documents, 29);
    assert_eq!(engine.stats().vector_index_size, engine.stats().chunks);
    for (sq, b) in queries.iter().zip(&before) {
        assert_eq!(&engine.search(sq.clone()).await.unwrap(), b, "{sq:?}");
    }
    drop(engine);

    // A crash before the vector index was saved: the lost changes are
    // replayed from the store's change log at open, not rebuilt by hand.
    std::fs::remove_file(dir.path().join("vectors.hnsw")).unwrap();
    let engine = open(config(dir.path())).await;
    engine.ready().await.unwrap();
    assert_eq!(engine.stats().vector_index_size, engine.stats().chunks);
    for (sq, b) in queries.iter().zip(&before) {
        let got = engine.search(sq.clone()).await.unwrap();
        let ids = |v: &[ragfleet_rag::types::Hit]| {
            v.iter().map(|h| h.chunk_id.clone()).collect::<Vec<_>>()
        };
        assert_eq!(ids(&got), ids(b), "{sq:?}");
    }
}

fn sourced(collection: &str, source: &str, text: &str) -> NewDocument {
    NewDocument {
        title: Some(source.into()),
        text: text.into(),
        collection: Some(collection.into()),
        source: Some(source.into()),
        ..Default::default()
    }
}

/// A document is its source within its collection: the id is
/// `hex(sha256(collection + "\0" + source))`; the same text in two
/// collections, or at two sources, is two documents; an edited source
/// replaces itself; re-ingesting reports unchanged; the content hash never
/// makes an identity.
#[tokio::test]
async fn identity_is_the_source_within_the_collection() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path())).await;
    let text = "Cargo is the Rust package manager. It downloads dependencies and builds packages.";
    let a = engine
        .ingest(sourced("team-a", "cargo.docx", text))
        .await
        .unwrap();
    let b = engine
        .ingest(sourced("team-b", "cargo.docx", text))
        .await
        .unwrap();
    assert_eq!(
        (a.status, b.status),
        (IngestStatus::Created, IngestStatus::Created)
    );
    assert_ne!(a.doc_id, b.doc_id);
    let want = hex::encode(Sha256::digest(b"team-a\0cargo.docx"));
    assert_eq!(a.doc_id, want);
    for c in ["team-a", "team-b"] {
        let page = engine.list_documents(Some(c), 0, 10).await.unwrap();
        assert_eq!(page.total, 1, "{c} keeps its document");
        assert_eq!(page.items[0].source.as_deref(), Some("cargo.docx"));
    }
    // Identical files at two sources: two documents.
    let readme = engine
        .ingest(sourced("book", "README.html", text))
        .await
        .unwrap();
    let summary = engine
        .ingest(sourced("book", "SUMMARY.html", text))
        .await
        .unwrap();
    assert_eq!(summary.status, IngestStatus::Created);
    assert_ne!(readme.doc_id, summary.doc_id);
    assert_eq!(engine.list_documents(None, 0, 10).await.unwrap().total, 4);
    // Unchanged again: all unchanged, nothing new.
    for d in [
        sourced("team-a", "cargo.docx", text),
        sourced("team-b", "cargo.docx", text),
        sourced("book", "README.html", text),
        sourced("book", "SUMMARY.html", text),
    ] {
        assert_eq!(
            engine.ingest(d).await.unwrap().status,
            IngestStatus::Unchanged
        );
    }
    // An edited source replaces itself, and only itself.
    let edited = engine
        .ingest(sourced(
            "book",
            "README.html",
            "Cargo also runs tests with cargo test.",
        ))
        .await
        .unwrap();
    assert_eq!(edited.status, IngestStatus::Replaced);
    assert_eq!(edited.doc_id, readme.doc_id);
    assert_eq!(engine.list_documents(None, 0, 10).await.unwrap().total, 4);
    let hits = engine
        .search(q("cargo test", RetrievalMode::Lexical, 10))
        .await
        .unwrap();
    assert!(hits.iter().any(|h| h.doc_id == readme.doc_id), "{hits:?}");
    // Without a source the text is the identity, within the collection.
    let x = engine
        .ingest(NewDocument {
            text: text.into(),
            collection: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let y = engine
        .ingest(NewDocument {
            text: text.into(),
            collection: Some("y".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_ne!(x.doc_id, y.doc_id);
    assert_eq!(y.status, IngestStatus::Created);
    assert_eq!(engine.list_documents(None, 0, 10).await.unwrap().total, 6);
    // A document an older version stored without a source (its id `doc-` +
    // a hash of its text) is found again when posted again.
    let old_text = "An old document posted without a source.";
    let legacy = ragfleet_rag::store::legacy_document_id(old_text);
    engine
        .ingest(NewDocument {
            id: Some(legacy.clone()),
            text: old_text.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let again = engine
        .ingest(NewDocument {
            text: old_text.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (again.doc_id.as_str(), again.status),
        (legacy.as_str(), IngestStatus::Unchanged)
    );
}
