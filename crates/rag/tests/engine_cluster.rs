//! Several engines on one store (each with its own data directory = its own
//! indexes), as the nodes of a cluster: changes written through one are
//! searchable on the others, in sequence order and without gaps; restarts
//! catch up; conversations continue anywhere (with and without Redis); a
//! PostgreSQL restart loses nothing acknowledged. Real embedder, real
//! PostgreSQL and Redis, real SQLite file shared by two pools.
mod engine_support;
mod store_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use engine_support::*;
use futures::StreamExt;
use ragfleet_rag::types::{NewDocument, RetrievalMode};
use ragfleet_rag::{ChatEvent, ChatRequest, Engine, MemoryConfig, SearchQuery, StoreConfig};
use store_support::{eventually, redis_url, unique, PgSchema, PrivatePostgres};

/// The deadline the issue states for "searchable on every node".
const PROPAGATION: Duration = Duration::from_secs(2);

/// A store several engines share.
struct Shared {
    cfg: StoreConfig,
    _schema: Option<PgSchema>,
    _dir: tempfile::TempDir,
}

fn shared_sqlite() -> Shared {
    let dir = tempfile::tempdir().unwrap();
    Shared {
        cfg: StoreConfig {
            url: Some(format!(
                "sqlite://{}",
                dir.path().join("shared.db").display()
            )),
            ..Default::default()
        },
        _schema: None,
        _dir: dir,
    }
}

fn shared_postgres() -> Shared {
    let schema = PgSchema::new();
    Shared {
        cfg: schema.store_config(),
        _schema: Some(schema),
        _dir: tempfile::tempdir().unwrap(),
    }
}

async fn engine_on(store: &StoreConfig, dir: &Path) -> Engine {
    let mut cfg = config(dir);
    cfg.store = store.clone();
    open(cfg).await
}

fn doc(id: &str, text: &str) -> NewDocument {
    NewDocument {
        id: Some(id.into()),
        title: Some(format!("About {id}")),
        text: text.into(),
        ..Default::default()
    }
}

async fn lexical_ids(e: &Engine, q: &str) -> Vec<String> {
    e.search(SearchQuery {
        top_k: 20,
        mode: RetrievalMode::Lexical,
        ..SearchQuery::new(q)
    })
    .await
    .unwrap()
    .into_iter()
    .map(|h| h.doc_id)
    .collect()
}

async fn vector_top(e: &Engine, q: &str) -> Option<String> {
    e.search(SearchQuery {
        top_k: 1,
        mode: RetrievalMode::Vector,
        ..SearchQuery::new(q)
    })
    .await
    .unwrap()
    .into_iter()
    .next()
    .map(|h| h.doc_id)
}

macro_rules! both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(super::shared_sqlite(), "sqlite").await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(super::shared_postgres(), "postgres").await
            })*
        }
    };
}

both_backends!(
    ingest_on_a_is_searchable_on_b_and_deletes_propagate,
    local_writes_never_skip_remote_changes,
    a_restarted_engine_catches_up_before_it_is_ready,
    conversations_continue_on_another_engine,
);

async fn ingest_on_a_is_searchable_on_b_and_deletes_propagate(shared: Shared, backend: &str) {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = engine_on(&shared.cfg, da.path()).await;
    let b = engine_on(&shared.cfg, db.path()).await;
    // PostgreSQL: a poll interval far beyond the 2 s deadline, so the change
    // must arrive through LISTEN/NOTIFY. SQLite has no notifications: poll.
    let poll = if backend == "postgres" {
        Duration::from_secs(60)
    } else {
        Duration::from_millis(200)
    };
    let follower = b.spawn_follower(poll);
    if backend == "postgres" {
        let listening = eventually(Duration::from_secs(10), || async {
            b.sync_state().listening.then_some(())
        })
        .await;
        assert!(listening.is_some(), "{:?}", b.sync_state());
    }
    assert_eq!(b.stats().documents, 0);

    a.ingest(doc(
        "quokka",
        "Quokkas are small marsupials living on Rottnest Island near Perth.",
    ))
    .await
    .unwrap();
    let found = eventually(PROPAGATION, || async {
        lexical_ids(&b, "quokka marsupials")
            .await
            .contains(&"quokka".to_string())
            .then_some(())
    })
    .await;
    assert!(
        found.is_some(),
        "not searchable on B within 2 s: {:?}",
        b.sync_state()
    );
    assert_eq!(
        vector_top(&b, "a small Australian animal").await.as_deref(),
        Some("quokka")
    );
    // B's counters follow the remote change too.
    assert_eq!((b.stats().documents, b.stats().chunks), (1, 1));
    let state = b.sync_state();
    assert_eq!(state.backend, backend);
    assert!(state.following && state.last_error.is_none(), "{state:?}");
    assert_eq!(state.applied_seq, a.stats().applied_seq);
    assert_eq!(state.listening, backend == "postgres");
    b.ready().await.unwrap();

    // A replace: the old text is gone from B's indexes, the new one is there.
    a.ingest(NewDocument {
        title: Some("Volcanoes".into()),
        ..doc(
            "quokka",
            "Volcanoes are ruptures in the crust through which lava escapes.",
        )
    })
    .await
    .unwrap();
    let replaced = eventually(PROPAGATION, || async {
        (lexical_ids(&b, "quokka marsupials").await.is_empty()
            && lexical_ids(&b, "lava crust").await == ["quokka"])
        .then_some(())
    })
    .await;
    assert!(replaced.is_some(), "replace not applied on B within 2 s");

    // A delete.
    assert!(a.delete_document("quokka").await.unwrap());
    // (Search results are resolved through the store, which already lacks
    // the chunks: wait for B's own indexes to drop them.)
    let gone = eventually(PROPAGATION, || async {
        let st = b.stats();
        (st.vector_index_size == 0 && st.lexical_index_size == 0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "delete not applied on B within 2 s");
    assert!(vector_top(&b, "lava").await.is_none());
    assert_eq!(
        (b.stats().documents, b.stats().chunks),
        (0, 0),
        "{:?} {:?}",
        b.stats(),
        b.sync_state()
    );
    assert_eq!(b.stats().vector_index_size, 0);

    follower.shutdown().await;
    assert!(!b.sync_state().following);
}

/// Two engines write interleaved and concurrently to one store, with no
/// follower: each one's own writes go through the ordered apply, so its
/// indexes take in the other's earlier changes and never skip one.
async fn local_writes_never_skip_remote_changes(shared: Shared, _backend: &str) {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = engine_on(&shared.cfg, da.path()).await;
    let b = engine_on(&shared.cfg, db.path()).await;
    a.ingest(doc("d1", "Zebras have black and white stripes."))
        .await
        .unwrap();
    b.ingest(doc(
        "d2",
        "Penguins are flightless birds of the southern hemisphere.",
    ))
    .await
    .unwrap();
    a.ingest(doc("d3", "Glaciers are slowly moving masses of ice."))
        .await
        .unwrap();
    // A wrote change 3 after B's change 2: A's indexes hold d2 as well.
    assert_eq!(lexical_ids(&a, "penguins flightless").await, ["d2"]);
    assert_eq!(a.stats().documents, 3);
    assert_eq!(
        b.stats().documents,
        2,
        "B has not seen d3 yet (no follower)"
    );
    // B's next write brings d3 in before its own.
    b.delete_document("d1").await.unwrap();
    assert_eq!(lexical_ids(&b, "glaciers ice").await, ["d3"]);
    assert!(lexical_ids(&b, "zebras stripes").await.is_empty());

    // Concurrent writers.
    let (ra, rb) = tokio::join!(
        async {
            for i in 0..8 {
                a.ingest(doc(
                    &format!("a{i}"),
                    &format!("Alpha report {i} about rivers and marker alpha{i}x."),
                ))
                .await
                .unwrap();
            }
        },
        async {
            for i in 0..8 {
                b.ingest(doc(
                    &format!("b{i}"),
                    &format!("Beta report {i} about mountains and marker beta{i}x."),
                ))
                .await
                .unwrap();
            }
        }
    );
    let _ = (ra, rb);
    for e in [&a, &b] {
        e.catch_up().await.unwrap();
        let st = e.stats();
        // 2 (d2, d3) + 16, every one of them in both indexes exactly once.
        assert_eq!((st.documents, st.chunks), (18, 18), "{st:?}");
        assert_eq!(
            (st.vector_index_size, st.lexical_index_size),
            (18, 18),
            "{st:?}"
        );
        for i in 0..8 {
            assert_eq!(
                lexical_ids(e, &format!("alpha{i}x")).await,
                [format!("a{i}")]
            );
            assert_eq!(
                lexical_ids(e, &format!("beta{i}x")).await,
                [format!("b{i}")]
            );
        }
        e.ready().await.unwrap();
    }
}

async fn a_restarted_engine_catches_up_before_it_is_ready(shared: Shared, _backend: &str) {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = engine_on(&shared.cfg, da.path()).await;
    let b = engine_on(&shared.cfg, db.path()).await;
    a.ingest(doc(
        "keep",
        "Lighthouses guide ships along dangerous coasts.",
    ))
    .await
    .unwrap();
    a.ingest(doc("drop", "Cacti store water in their thick stems."))
        .await
        .unwrap();
    b.catch_up().await.unwrap();
    assert_eq!(b.stats().documents, 2);
    let b_seq = b.stats().applied_seq;
    drop(b);

    // While B is down.
    for i in 0..3 {
        a.ingest(doc(
            &format!("new{i}"),
            &format!("Harbour log {i}: marker harbour{i}x."),
        ))
        .await
        .unwrap();
    }
    a.delete_document("drop").await.unwrap();
    let store_seq = a.stats().applied_seq;
    assert!(store_seq > b_seq);

    // B reopens on its own data directory: its indexes resume from b_seq.
    let b = engine_on(&shared.cfg, db.path()).await;
    assert_eq!(b.stats().applied_seq, store_seq);
    assert_eq!(b.stats().documents, 4);
    assert_eq!(lexical_ids(&b, "harbour2x").await, ["new2"]);
    assert!(lexical_ids(&b, "cacti water").await.is_empty());
    assert_eq!(lexical_ids(&b, "lighthouses ships").await, ["keep"]);
    b.ready().await.unwrap();

    // Without a follower, B is not ready while it trails the store ...
    a.ingest(doc("late", "Owls hunt at night.")).await.unwrap();
    let err = b.ready().await.unwrap_err().to_string();
    assert!(err.contains("indexes at change"), "{err}");
    assert_eq!(b.sync_state().lag, 1);
    // ... and ready again once caught up.
    b.catch_up().await.unwrap();
    b.ready().await.unwrap();
    assert_eq!(b.sync_state().lag, 0);
}

async fn chat(e: &Engine, req: ChatRequest) -> (String, String, String) {
    let events: Vec<ChatEvent> = e.chat(req).await.unwrap().collect().await;
    match events.last() {
        Some(ChatEvent::Done {
            conversation_id,
            run_id,
            answer,
            ..
        }) => (conversation_id.clone(), run_id.clone(), answer.clone()),
        other => panic!("chat did not finish: {other:?}"),
    }
}

async fn conversations_continue_on_another_engine(shared: Shared, _backend: &str) {
    for with_redis in [false, true] {
        let memory = MemoryConfig {
            redis_url: with_redis.then(redis_url),
            key_prefix: format!("{}:", unique("ragfleet_test")),
            ..Default::default()
        };
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let open_with_memory = |dir: &Path| {
            let mut cfg = config(dir);
            cfg.store = shared.cfg.clone();
            cfg.memory = memory.clone();
            open(cfg)
        };
        let a = open_with_memory(da.path()).await;
        let b = open_with_memory(db.path()).await;
        a.ingest(doc(
            "nile",
            "The Nile is a major north-flowing river in northeastern Africa. The Nile is about 6,650 km long.",
        ))
        .await
        .unwrap();
        b.catch_up().await.unwrap();

        let (conv, _, a1) = chat(&a, ChatRequest::new("How long is the Nile?")).await;
        assert!(a1.contains("6,650 km"), "{a1}");
        let (conv2, run2, _) = chat(
            &b,
            ChatRequest {
                conversation_id: Some(conv.clone()),
                ..ChatRequest::new("Where does the Nile flow?")
            },
        )
        .await;
        assert_eq!(conv2, conv);
        // B's prompt carries the exchange held on A.
        let run = b.get_run(&run2).await.unwrap().unwrap();
        assert_eq!(run.prompt.len(), 4, "system, q1, a1, q2");
        assert_eq!(run.prompt[1].content, "How long is the Nile?");
        assert_eq!(run.prompt[2].content, a1);
        assert_eq!(
            a.get_conversation(&conv)
                .await
                .unwrap()
                .unwrap()
                .turns
                .len(),
            4
        );

        if with_redis {
            // The turns are in Redis ...
            let client = redis::Client::open(redis_url()).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let key = format!("{}conv:{conv}:turns", memory.key_prefix);
            let cached: Vec<String> = redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut c)
                .await
                .unwrap();
            assert_eq!(cached.len(), 4);
            assert!(cached[0].starts_with("0\t") && cached[0].contains("How long is the Nile?"));
            // ... and history is read from there: what Redis says is what
            // the next prompt gets (rewrite the cached first question).
            let edited = cached[0].replace("How long is the Nile?", "EDITED IN REDIS");
            let _: () = redis::cmd("LSET")
                .arg(&key)
                .arg(0)
                .arg(&edited)
                .query_async(&mut c)
                .await
                .unwrap();
            let (_, run3, _) = chat(
                &a,
                ChatRequest {
                    conversation_id: Some(conv.clone()),
                    ..ChatRequest::new("Is the Nile in Africa?")
                },
            )
            .await;
            let run = a.get_run(&run3).await.unwrap().unwrap();
            assert_eq!(run.prompt[1].content, "EDITED IN REDIS");
            // Deleting the conversation clears the cache.
            assert!(b.delete_conversation(&conv).await.unwrap());
            let left: i64 = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            assert_eq!(left, 0);
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", memory.key_prefix))
                .query_async(&mut c)
                .await
                .unwrap();
            if !keys.is_empty() {
                let _: () = redis::cmd("DEL")
                    .arg(keys)
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        }
    }
}

/// Chats keep working (history from the store) when Redis is unreachable.
#[tokio::test]
async fn chat_works_with_redis_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.memory = MemoryConfig {
        redis_url: Some(format!("redis://127.0.0.1:{}/", store_support::free_port())),
        timeout_ms: 200,
        ..Default::default()
    };
    let e = open(cfg).await;
    e.ingest(doc("nile", "The Nile is about 6,650 km long."))
        .await
        .unwrap();
    let (conv, _, a1) = chat(&e, ChatRequest::new("How long is the Nile?")).await;
    let (_, run, _) = chat(
        &e,
        ChatRequest {
            conversation_id: Some(conv),
            ..ChatRequest::new("And the Amazon?")
        },
    )
    .await;
    let run = e.get_run(&run).await.unwrap().unwrap();
    assert_eq!(run.prompt[2].content, a1);
}

/// PostgreSQL is killed (immediate shutdown) and restarted under a steady
/// ingest load: every ingest that was acknowledged is in the store and
/// reaches the other engine; the follower and the pools reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_load_loses_nothing_acknowledged() {
    let pg = PrivatePostgres::start();
    let store = StoreConfig {
        url: Some(pg.url()),
        connect_timeout_ms: 2_000,
        ..Default::default()
    };
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = engine_on(&store, da.path()).await;
    let b = engine_on(&store, db.path()).await;
    let follower = b.spawn_follower(Duration::from_millis(250));

    let acked = Arc::new(parking_lot::Mutex::new(Vec::<usize>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (a, acked, stop) = (a.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut failures = 0usize;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = a
                    .ingest(doc(
                        &format!("load{i}"),
                        &format!("Load document {i} with marker load{i}x."),
                    ))
                    .await;
                match r {
                    Ok(_) => acked.lock().push(i),
                    Err(_) => {
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                i += 1;
            }
            failures
        })
    };
    let acks = |n: usize| {
        let acked = acked.clone();
        async move {
            eventually(Duration::from_secs(60), || async {
                (acked.lock().len() >= n).then_some(())
            })
            .await
            .is_some()
        }
    };
    assert!(acks(5).await, "no progress before the restart");
    pg.stop_immediate();
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.start_again();
    let before = acked.lock().len();
    assert!(acks(before + 5).await, "no progress after the restart");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let failures = writer.await.unwrap();
    let acked: BTreeSet<usize> = acked.lock().iter().copied().collect();
    eprintln!(
        "{} acknowledged ingests, {failures} failed during the restart",
        acked.len()
    );

    // Every acknowledged document is in the store ...
    for i in &acked {
        assert!(
            a.get_document(&format!("load{i}")).await.unwrap().is_some(),
            "acknowledged load{i} lost"
        );
    }
    // ... and B's follower, reconnected, brings B's indexes level with it.
    let caught = eventually(Duration::from_secs(30), || async {
        let s = b.sync_state();
        (s.last_error.is_none() && s.listening && b.ready().await.is_ok()).then_some(())
    })
    .await;
    assert!(caught.is_some(), "B did not recover: {:?}", b.sync_state());
    b.catch_up().await.unwrap();
    for i in &acked {
        assert_eq!(
            lexical_ids(&b, &format!("load{i}x")).await,
            [format!("load{i}")],
            "load{i} missing on B"
        );
    }
    // A notification after the restart still wakes B (re-subscribed).
    a.ingest(doc("after", "Written after the restart: marker afterx."))
        .await
        .unwrap();
    let found = eventually(PROPAGATION * 5, || async {
        (!lexical_ids(&b, "afterx").await.is_empty()).then_some(())
    })
    .await;
    assert!(found.is_some());
    // Conversations and runs are written through the reconnected pool too.
    let (conv, _, _) = chat(
        &a,
        ChatRequest::new("Which load document has marker load1x?"),
    )
    .await;
    assert!(b.get_conversation(&conv).await.unwrap().is_some());
    follower.shutdown().await;
}

/// Dropping the handle stops the follower; a stopped follower no longer
/// counts for readiness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_follower_handle_stops_it() {
    let shared = shared_sqlite();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = engine_on(&shared.cfg, da.path()).await;
    let b = engine_on(&shared.cfg, db.path()).await;
    let handle = b.spawn_follower(Duration::from_millis(50));
    assert!(handle.is_running() && b.sync_state().following);
    drop(handle);
    let stopped = eventually(Duration::from_secs(5), || async {
        (!b.sync_state().following).then_some(())
    })
    .await;
    assert!(stopped.is_some());
    a.ingest(doc("late", "Owls hunt at night.")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.stats().documents, 0, "nothing follows any more");
    assert!(b.ready().await.is_err());
}
