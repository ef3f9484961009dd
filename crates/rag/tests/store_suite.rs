//! The store suite, run against every backend: the embedded SQLite file and
//! PostgreSQL (a schema of its own per test). Documents + chunks + change
//! log, conversations, runs, the change log's ordering under concurrent
//! writers, notifications, configuration errors.
#[macro_use]
mod store_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ragfleet_rag::generate::{GenParams, Role};
use ragfleet_rag::store::{ChangeOp, DocumentRecord, NewChunk, Store};
use ragfleet_rag::types::{Metadata, RetrievalMode};
use ragfleet_rag::{RagError, RunRetrieval, RunSnapshot, StoreConfig, Timings, Turn, Usage};
use serde_json::json;
use store_support::TestStore;

suite!(
    upsert_replace_delete_and_change_log,
    lists_pages_and_filters_by_metadata,
    conversations_are_append_only_and_listed_newest_first,
    runs_round_trip,
    concurrent_writers_commit_in_sequence_order,
    concurrent_appends_to_one_conversation_are_serialised,
    text_with_nul_keeps_its_length,
    listeners_hear_other_writers,
);

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

async fn upsert_replace_delete_and_change_log(mut t: TestStore) {
    let s = t.s.clone();
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
    t.s = t.open_another().await;
    let s = t.s.clone();
    assert_eq!(s.counts().await.unwrap(), (1, 3));
    assert_eq!(s.last_seq().await.unwrap(), del.seq);
}

async fn lists_pages_and_filters_by_metadata(t: TestStore) {
    let s = t.s.clone();
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

async fn conversations_are_append_only_and_listed_newest_first(t: TestStore) {
    let s = t.s.clone();
    let first = s
        .append_turns(
            "c1",
            "first q",
            &[turn(Role::User, "q1"), turn(Role::Assistant, "a1")],
        )
        .await
        .unwrap();
    assert_eq!(first, 0);
    s.append_turns("c2", "other", &[turn(Role::User, "x")])
        .await
        .unwrap();
    let second = s
        .append_turns(
            "c1",
            "ignored title",
            &[turn(Role::User, "q2"), turn(Role::Assistant, "a2")],
        )
        .await
        .unwrap();
    assert_eq!(second, 2, "index of the first appended turn");
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
    let indexed = s.recent_turns_indexed("c1", 2).await.unwrap();
    assert_eq!(
        indexed
            .iter()
            .map(|(i, t)| (*i, t.content.as_str()))
            .collect::<Vec<_>>(),
        [(2, "q2"), (3, "a2")]
    );
    let list = s.list_conversations(0, 10).await.unwrap();
    assert_eq!(list.total, 2);
    assert_eq!(list.items[0].id, "c1");
    assert_eq!(list.items[0].turns, 4);
    assert!(s.delete_conversation("c1").await.unwrap());
    assert!(!s.delete_conversation("c1").await.unwrap());
    assert!(s.get_conversation("c1").await.unwrap().is_none());
    assert!(s.recent_turns("c1", 10).await.unwrap().is_empty());
}

async fn runs_round_trip(t: TestStore) {
    let s = t.s.clone();
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
        relevance: Some(ragfleet_rag::answer::Relevance::new(Some(0.7), 0.5, 0.45)),
        attribution: vec![ragfleet_rag::answer::SentenceAttribution {
            sentence: "out".into(),
            sources: vec![1],
            support: 1.0,
            supported: true,
        }],
        answer: "out [1]".into(),
    };
    s.put_run(&run).await.unwrap();
    assert_eq!(s.get_run("r1").await.unwrap(), Some(run));
    assert_eq!(s.get_run("r2").await.unwrap(), None);
}

/// Two store instances (two pools: as two nodes or processes) write
/// concurrently while a follower reads the change log the way the engine
/// does — `changes_since(last seen)`. If a later change could become visible
/// before an earlier one, the follower would move past the earlier one and
/// never see it. It must see every change that exists at the end.
async fn concurrent_writers_commit_in_sequence_order(t: TestStore) {
    let a = t.s.clone();
    let b = t.open_another().await;
    let writers = 4;
    let per_writer = 40;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let s = t.open_another().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            let mut last = 0;
            loop {
                let done = stop.load(std::sync::atomic::Ordering::SeqCst);
                for c in s.changes_since(last, 1000).await.unwrap() {
                    assert!(c.seq > last, "changes come in sequence order");
                    last = c.seq;
                    seen.insert(c.seq);
                }
                if done {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s: Arc<dyn Store> = if w % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let id = format!("w{w}-d{}", i % 7);
                // Several chunks: the writing transaction stays open a while
                // after drawing its sequence number.
                let texts: Vec<String> = (0..8).map(|k| format!("w{w} i{i} k{k}")).collect();
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                if i % 5 == 4 {
                    s.delete_document(&id).await.unwrap();
                } else {
                    s.upsert_document(
                        &doc(&id, "c", &texts.join(" "), json!({})),
                        &chunks(&id, &refs),
                    )
                    .await
                    .unwrap();
                }
                // Conversation writes interleave with document writes.
                s.append_turns(
                    &format!("conv-{w}"),
                    "t",
                    &[turn(Role::User, &format!("{i}"))],
                )
                .await
                .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.await.unwrap();
    let all: BTreeSet<u64> = a
        .changes_since(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.seq)
        .collect();
    assert!(
        all.len() >= writers * per_writer * 4 / 5,
        "{} changes",
        all.len()
    );
    let missed: Vec<&u64> = all.difference(&seen).collect();
    assert!(missed.is_empty(), "the follower skipped changes {missed:?}");
    // Every chunk key is unique and every document's chunks are its latest version's.
    let (docs, chunk_count) = a.counts().await.unwrap();
    assert_eq!(chunk_count, docs * 8);
    for w in 0..writers {
        let conv = a
            .get_conversation(&format!("conv-{w}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(conv.turns.len(), per_writer);
    }
}

/// Appends to one conversation from two instances at once: every turn is
/// stored once, indexes are contiguous, and each append learns its position.
async fn concurrent_appends_to_one_conversation_are_serialised(t: TestStore) {
    let stores = [t.s.clone(), t.open_another().await];
    let mut tasks = Vec::new();
    for (n, s) in stores.iter().enumerate() {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut firsts = Vec::new();
            for i in 0..15 {
                let q = format!("q{n}-{i}");
                let a = format!("a{n}-{i}");
                let first = s
                    .append_turns(
                        "shared",
                        "t",
                        &[turn(Role::User, &q), turn(Role::Assistant, &a)],
                    )
                    .await
                    .unwrap();
                firsts.push((first, q));
            }
            firsts
        }));
    }
    let mut firsts = Vec::new();
    for task in tasks {
        firsts.extend(task.await.unwrap());
    }
    let conv = t.s.get_conversation("shared").await.unwrap().unwrap();
    assert_eq!(conv.turns.len(), 60);
    for (first, q) in firsts {
        let first = first as usize;
        assert_eq!(conv.turns[first].content, q);
        assert_eq!(conv.turns[first + 1].content, q.replace('q', "a"));
    }
    let info = t.s.list_conversations(0, 10).await.unwrap();
    assert_eq!(info.items[0].turns, 60);
}

/// A NUL in a document (PostgreSQL text cannot hold one) is stored without
/// changing the text's length in chars, so chunk offsets stay valid.
async fn text_with_nul_keeps_its_length(t: TestStore) {
    let text = "before\0after";
    let d = DocumentRecord {
        content_hash: "h".into(),
        ..doc("n", "c", text, json!({}))
    };
    t.s.upsert_document(&d, &chunks("n", &[text]))
        .await
        .unwrap();
    let d = t.s.get_document("n").await.unwrap().unwrap();
    assert_eq!(d.text.chars().count(), text.chars().count());
    assert!(d.text.starts_with("before") && d.text.ends_with("after"));
    let c = &t.s.document_chunks("n").await.unwrap()[0];
    assert_eq!(c.text.chars().count(), text.chars().count());
    t.s.append_turns("c", "t", &[turn(Role::User, "x\0y")])
        .await
        .unwrap();
    assert_eq!(
        t.s.recent_turns("c", 1).await.unwrap()[0]
            .content
            .chars()
            .count(),
        3
    );
}

/// PostgreSQL announces committed changes to listeners (of other
/// connections); SQLite has no notifications (its followers poll).
async fn listeners_hear_other_writers(t: TestStore) {
    let Some(mut listener) = t.s.listen().await.unwrap() else {
        assert_eq!(t.s.backend(), "sqlite");
        return;
    };
    assert_eq!(t.s.backend(), "postgres");
    let other = t.open_another().await;
    let up = other
        .upsert_document(&doc("x", "c", "x", json!({})), &chunks("x", &["x"]))
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(10), listener.next())
        .await
        .expect("a notification within 10 s")
        .unwrap();
    assert_eq!(heard, Some(up.change.seq));
    let del = other.delete_document("x").await.unwrap().unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(10), listener.next())
        .await
        .expect("a notification within 10 s")
        .unwrap();
    assert_eq!(heard, Some(del.seq));
}

#[tokio::test]
async fn store_urls_pick_the_backend_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let open = |url: &str, schema: Option<&str>| {
        let cfg = StoreConfig {
            url: Some(url.to_string()),
            schema: schema.map(str::to_string),
            connect_timeout_ms: 2_000,
            ..Default::default()
        };
        let dir = dir.path().to_path_buf();
        async move { ragfleet_rag::store::open(&cfg, &dir).await }
    };
    let err = open("mysql://u:hunter2@h/db", None).await.err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, RagError::InvalidInput(_)), "{msg}");
    assert!(
        msg.contains("\"mysql\"") && msg.contains("u:***@h/db"),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "{msg}");
    let err = open("just-a-path.db", None).await.err().unwrap();
    assert!(err.to_string().contains("just-a-path.db"), "{err}");
    let err = open("sqlite://x.db", Some("s")).await.err().unwrap();
    assert!(err.to_string().contains("store.schema"), "{err}");
    let err = open(&store_support::pg_url(), Some("bad schema"))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("store.schema"), "{err}");
    // Nothing listens on port 1: a clear storage error naming the server, no hang.
    let err = open("postgres://u:pw@127.0.0.1:1/db", None)
        .await
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("127.0.0.1:1") && !msg.contains(":pw@"),
        "{msg}"
    );

    // sqlite:// URLs open (and create) a file where they say.
    let path = dir.path().join("elsewhere.db");
    let s = open(&format!("sqlite://{}", path.display()), None)
        .await
        .unwrap();
    assert_eq!(s.backend(), "sqlite");
    assert!(path.exists());
    // No URL: data_dir/ragfleet.db.
    let s = ragfleet_rag::store::open(&StoreConfig::default(), dir.path())
        .await
        .unwrap();
    assert_eq!(s.backend(), "sqlite");
    assert!(dir.path().join("ragfleet.db").exists());
}

#[test]
fn store_and_memory_config_is_strict_toml() {
    let cfg: ragfleet_rag::EngineConfig = toml::from_str(
        r#"
        data_dir = "d"
        [store]
        url = "postgres://ragfleet@db/ragfleet"
        schema = "prod"
        pool_size = 4
        connect_timeout_ms = 1500
        [memory]
        redis_url = "redis://cache:6379/0"
        ttl_secs = 600
        max_turns = 12
        "#,
    )
    .unwrap();
    assert_eq!(
        cfg.store.url.as_deref(),
        Some("postgres://ragfleet@db/ragfleet")
    );
    assert_eq!(cfg.store.pool_size, 4);
    assert_eq!(cfg.memory.max_turns, 12);
    assert_eq!(cfg.memory.key_prefix, "ragfleet:");
    let err = toml::from_str::<ragfleet_rag::EngineConfig>("[store]\nurl = \"x\"\npool = 3\n")
        .unwrap_err();
    assert!(err.to_string().contains("pool"), "{err}");
}
