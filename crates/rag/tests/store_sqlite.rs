//! The embedded SQLite store: documents + chunks + change log, conversations, runs.
use ragfleet_rag::generate::{GenParams, Role};
use ragfleet_rag::store::sqlite::SqliteStore;
use ragfleet_rag::store::{
    ChangeOp, ConversationStore, DocumentRecord, DocumentStore, NewChunk, RunStore,
};
use ragfleet_rag::types::{Metadata, RetrievalMode};
use ragfleet_rag::{RunRetrieval, RunSnapshot, Timings, Turn, Usage};
use serde_json::json;

fn doc(id: &str, collection: &str, text: &str, metadata: serde_json::Value) -> DocumentRecord {
    DocumentRecord {
        id: id.into(),
        title: format!("title of {id}"),
        collection: collection.into(),
        metadata: metadata.as_object().cloned().unwrap_or_default(),
        source: Some(format!("{id}.txt")),
        text: text.into(),
        pages: vec![(0, 1)],
        content_hash: format!("hash-{text}"),
        chunks: 0,
        chars: text.chars().count(),
        created_at: String::new(),
        updated_at: String::new(),
        seq: 0,
    }
}

fn chunks(doc_id: &str, texts: &[&str]) -> Vec<NewChunk> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| NewChunk {
            id: format!("{doc_id}#{i}"),
            ordinal: i as u32,
            text: t.to_string(),
            start: i * 10,
            end: i * 10 + t.len(),
            page: Some(1),
            embedding: vec![i as f32, 0.5, -1.25],
        })
        .collect()
}

async fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
    (dir, s)
}

#[tokio::test]
async fn upsert_replace_delete_and_change_log() {
    let (dir, s) = open().await;
    let up1 = s
        .upsert_document(
            &doc("a", "c1", "one", json!({"lang": "en", "n": 1})),
            &chunks("a", &["x", "y"]),
        )
        .await
        .unwrap();
    assert!(!up1.replaced);
    assert_eq!(up1.keys.len(), 2);
    assert!(up1.change.removed_keys.is_empty());
    let up2 = s
        .upsert_document(
            &doc("b", "c2", "two", json!({"lang": "de"})),
            &chunks("b", &["z"]),
        )
        .await
        .unwrap();
    assert!(up2.change.seq > up1.change.seq);
    // Replace a: old chunk keys are reported removed, new keys never reuse them.
    let up3 = s
        .upsert_document(
            &doc("a", "c1", "one v2", json!({"lang": "en", "n": 1})),
            &chunks("a", &["x2", "y2", "w2"]),
        )
        .await
        .unwrap();
    assert!(up3.replaced);
    assert_eq!(up3.change.removed_keys, up1.keys);
    assert!(up3
        .keys
        .iter()
        .all(|k| !up1.keys.contains(k) && !up2.keys.contains(k)));
    assert_eq!(
        up3.created_at, up1.created_at,
        "created_at survives a replace"
    );
    let a = s.get_document("a").await.unwrap().unwrap();
    assert_eq!(a.text, "one v2");
    assert_eq!(a.chunks, 3);
    assert_eq!(a.seq, up3.change.seq);
    assert_eq!(a.metadata.get("n"), Some(&json!(1)));
    let ch = s.document_chunks("a").await.unwrap();
    assert_eq!(
        ch.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(),
        ["x2", "y2", "w2"]
    );
    assert_eq!(ch[1].embedding.as_deref(), Some(&[1.0f32, 0.5, -1.25][..]));
    assert_eq!(ch[0].title, "title of a");
    assert_eq!(ch[0].collection, "c1");
    let by_key = s.chunks_by_keys(&[up3.keys[2], 999_999]).await.unwrap();
    assert_eq!(by_key.len(), 1);
    assert_eq!(by_key[0].id, "a#2");
    assert_eq!(
        (by_key[0].start, by_key[0].end, by_key[0].page),
        (20, 22, Some(1))
    );
    assert_eq!(s.counts().await.unwrap(), (2, 4));

    let del = s.delete_document("b").await.unwrap().unwrap();
    assert_eq!(del.op, ChangeOp::Delete);
    assert_eq!(del.removed_keys, up2.keys);
    assert!(s.delete_document("b").await.unwrap().is_none());
    assert!(s.get_document("b").await.unwrap().is_none());
    assert!(s.chunks_by_keys(&up2.keys).await.unwrap().is_empty());

    let changes = s.changes_since(0, 100).await.unwrap();
    assert_eq!(changes.len(), 4);
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        changes.iter().map(|c| c.op).collect::<Vec<_>>(),
        [
            ChangeOp::Upsert,
            ChangeOp::Upsert,
            ChangeOp::Upsert,
            ChangeOp::Delete
        ]
    );
    assert_eq!(s.changes_since(up3.change.seq, 100).await.unwrap().len(), 1);
    assert_eq!(s.last_seq().await.unwrap(), del.seq);
    let all = s.scan_chunks(0, 100).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(
        s.scan_chunks(all[0].key, 1).await.unwrap()[0].key,
        all[1].key
    );
    let owners = s.chunk_owners().await.unwrap();
    assert!(owners
        .iter()
        .all(|o| o.doc_id == "a" && o.collection == "c1"));

    // Everything survives reopening (WAL checkpointed or not).
    drop(s);
    let s = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
    assert_eq!(s.counts().await.unwrap(), (1, 3));
    assert_eq!(s.last_seq().await.unwrap(), del.seq);
}

#[tokio::test]
async fn lists_pages_and_filters_by_metadata() {
    let (_dir, s) = open().await;
    for i in 0..7 {
        let c = if i % 2 == 0 { "even" } else { "odd" };
        s.upsert_document(
            &doc(
                &format!("d{i}"),
                c,
                &format!("t{i}"),
                json!({"i": i, "tag": if i < 3 { "low" } else { "high" }, "flag": i == 4}),
            ),
            &chunks(&format!("d{i}"), &["c"]),
        )
        .await
        .unwrap();
    }
    let p = s.list_documents(None, 2, 3).await.unwrap();
    assert_eq!(p.total, 7);
    assert_eq!(
        p.items.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["d2", "d3", "d4"]
    );
    let p = s.list_documents(Some("odd"), 0, 10).await.unwrap();
    assert_eq!(p.total, 3);
    assert_eq!(
        p.items.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["d1", "d3", "d5"]
    );

    let f = |v: serde_json::Value| -> Metadata { v.as_object().cloned().unwrap() };
    let mut m = s
        .matching_documents(None, &f(json!({"tag": "low"})))
        .await
        .unwrap();
    m.sort();
    assert_eq!(m, ["d0", "d1", "d2"]);
    let m = s
        .matching_documents(Some("even"), &f(json!({"tag": "low"})))
        .await
        .unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(
        s.matching_documents(None, &f(json!({"i": 5})))
            .await
            .unwrap(),
        ["d5"]
    );
    assert_eq!(
        s.matching_documents(None, &f(json!({"flag": true})))
            .await
            .unwrap(),
        ["d4"]
    );
    // A string "5" is not the number 5; a missing key matches nothing.
    assert!(s
        .matching_documents(None, &f(json!({"i": "5"})))
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .matching_documents(None, &f(json!({"nope": 1})))
        .await
        .unwrap()
        .is_empty());
    // A key that cannot be a JSON path is a clear error.
    assert!(s
        .matching_documents(None, &f(json!({"a\"b": 1})))
        .await
        .is_err());
}

fn turn(role: Role, content: &str) -> Turn {
    Turn {
        role,
        content: content.into(),
        citations: vec![],
        run_id: None,
        at: "2026-01-01T00:00:00.000Z".into(),
    }
}

#[tokio::test]
async fn conversations_are_append_only_and_listed_newest_first() {
    let (_dir, s) = open().await;
    s.append_turns(
        "c1",
        "first q",
        &[turn(Role::User, "q1"), turn(Role::Assistant, "a1")],
    )
    .await
    .unwrap();
    s.append_turns("c2", "other", &[turn(Role::User, "x")])
        .await
        .unwrap();
    s.append_turns(
        "c1",
        "ignored title",
        &[turn(Role::User, "q2"), turn(Role::Assistant, "a2")],
    )
    .await
    .unwrap();
    let c = s.get_conversation("c1").await.unwrap().unwrap();
    assert_eq!(c.title, "first q");
    assert_eq!(
        c.turns
            .iter()
            .map(|t| t.content.as_str())
            .collect::<Vec<_>>(),
        ["q1", "a1", "q2", "a2"]
    );
    assert_eq!(c.turns[1].role, Role::Assistant);
    let recent = s.recent_turns("c1", 3).await.unwrap();
    assert_eq!(
        recent
            .iter()
            .map(|t| t.content.as_str())
            .collect::<Vec<_>>(),
        ["a1", "q2", "a2"]
    );
    assert!(s.recent_turns("none", 3).await.unwrap().is_empty());
    let list = s.list_conversations(0, 10).await.unwrap();
    assert_eq!(list.total, 2);
    assert_eq!(list.items[0].id, "c1");
    assert_eq!(list.items[0].turns, 4);
    assert!(s.delete_conversation("c1").await.unwrap());
    assert!(!s.delete_conversation("c1").await.unwrap());
    assert!(s.get_conversation("c1").await.unwrap().is_none());
    assert!(s.recent_turns("c1", 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn runs_round_trip() {
    let (_dir, s) = open().await;
    let run = RunSnapshot {
        run_id: "r1".into(),
        time: "2026-01-01T00:00:00.000Z".into(),
        config_hash: "abc".into(),
        embedder_id: "e".into(),
        generator: "extractive".into(),
        generator_id: "extractive/v1".into(),
        retrieval: RunRetrieval {
            mode: RetrievalMode::Hybrid,
            top_k: 5,
            rrf_k: 60.0,
            candidates: 50,
            weights: (1.0, 0.5),
            collection: None,
            filter: Metadata::new(),
        },
        retrieved: vec![],
        prompt: vec![],
        question: "q".into(),
        sources: vec![],
        params: GenParams {
            seed: 7,
            ..Default::default()
        },
        output: "out".into(),
        citations: vec![],
        usage: Usage {
            prompt_tokens: 3,
            completion_tokens: 1,
        },
        timings: Timings {
            embed_ms: 1.0,
            search_ms: 2.0,
            first_token_ms: Some(3.0),
            total_ms: 4.0,
        },
        conversation_id: "c".into(),
    };
    s.put_run(&run).await.unwrap();
    assert_eq!(s.get_run("r1").await.unwrap(), Some(run));
    assert_eq!(s.get_run("r2").await.unwrap(), None);
}
