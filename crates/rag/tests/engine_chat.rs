//! Chat with the extractive generator: event order, citations, conversation
//! history, run snapshots and replay.
mod engine_support;

use engine_support::*;
use futures::StreamExt;
use ragfleet_rag::generate::Role;
use ragfleet_rag::types::{NewDocument, RetrievalMode};
use ragfleet_rag::{ChatEvent, ChatRequest, Engine};

async fn corpus_engine(dir: &std::path::Path) -> Engine {
    let engine = open(config(dir)).await;
    let docs = vec![
        NewDocument {
            id: Some("eiffel".into()),
            title: Some("Eiffel Tower".into()),
            text: "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was completed in 1889 as the entrance to the World's Fair. The tower is 330 metres tall.".into(),
            ..Default::default()
        },
        NewDocument {
            id: Some("nile".into()),
            title: Some("Nile".into()),
            text: "The Nile is a major north-flowing river in northeastern Africa. It flows into the Mediterranean Sea. The Nile is about 6,650 km long.".into(),
            ..Default::default()
        },
        NewDocument {
            id: Some("python".into()),
            title: Some("Python (programming language)".into()),
            text: "Python is a high-level programming language. Its design philosophy emphasizes code readability. Guido van Rossum began working on Python in the late 1980s.".into(),
            collection: Some("code".into()),
            ..Default::default()
        },
    ];
    for r in engine.ingest_batch(docs).await {
        r.unwrap();
    }
    engine
}

async fn collect(engine: &Engine, req: ChatRequest) -> Vec<ChatEvent> {
    engine.chat(req).await.unwrap().collect().await
}

#[tokio::test]
async fn chat_streams_cited_answers_and_records_runs_that_replay() {
    let dir = tempfile::tempdir().unwrap();
    let engine = corpus_engine(dir.path()).await;
    let events = collect(
        &engine,
        ChatRequest {
            top_k: Some(3),
            ..ChatRequest::new("When was the Eiffel Tower completed?")
        },
    )
    .await;
    let ChatEvent::Retrieval {
        conversation_id,
        run_id,
        citations,
    } = &events[0]
    else {
        panic!("first event must be Retrieval: {events:?}")
    };
    assert_eq!(citations.len(), 3);
    assert_eq!(citations[0].doc_id, "eiffel");
    assert_eq!(citations.iter().map(|c| c.n).collect::<Vec<_>>(), [1, 2, 3]);
    let tokens: String = events[1..events.len() - 1]
        .iter()
        .map(|e| match e {
            ChatEvent::Token { text } => text.as_str(),
            other => panic!("expected tokens, got {other:?}"),
        })
        .collect();
    assert!(events.len() > 3, "several deltas");
    let ChatEvent::Done {
        conversation_id: c2,
        run_id: r2,
        answer,
        citations: used,
        usage,
        timings,
    } = events.last().unwrap()
    else {
        panic!("last event must be Done: {events:?}")
    };
    assert_eq!((c2, r2), (conversation_id, run_id));
    assert_eq!(&tokens, answer);
    assert_eq!(answer, "1889 [1]");
    assert!(answer.contains("[1]"), "{answer}");
    // Only the cited source is returned at Done.
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].doc_id, "eiffel");
    assert!(used[0].snippet.contains("1889"));
    assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
    assert!(timings.embed_ms > 0.0 && timings.total_ms >= timings.search_ms);
    assert!(timings.first_token_ms.is_some());

    // The run snapshot has everything needed to reproduce the answer.
    let run = engine.get_run(run_id).await.unwrap().unwrap();
    assert_eq!(&run.conversation_id, conversation_id);
    assert_eq!(run.config_hash, engine.config_hash());
    assert_eq!(run.embedder_id, embedder().id());
    assert_eq!(run.generator, "extractive");
    assert_eq!(run.generator_id, "extractive/v2");
    assert_eq!(run.retrieval.mode, RetrievalMode::Hybrid);
    assert_eq!((run.retrieval.top_k, run.retrieval.rrf_k), (3, 60.0));
    assert_eq!(
        run.retrieved
            .iter()
            .map(|r| r.chunk_id.as_str())
            .collect::<Vec<_>>(),
        citations
            .iter()
            .map(|c| c.chunk_id.as_str())
            .collect::<Vec<_>>()
    );
    assert_eq!(run.prompt[0].role, Role::System);
    assert!(
        run.prompt[0]
            .content
            .contains("[1] Eiffel Tower\nThe Eiffel Tower is"),
        "{}",
        run.prompt[0].content
    );
    assert_eq!(
        run.prompt.last().unwrap().content,
        "When was the Eiffel Tower completed?"
    );
    assert_eq!(&run.output, answer);
    assert_eq!(&run.citations, used);
    assert_eq!(run.params, engine.config().generation);
    // Times survive the JSON round trip (to float precision).
    assert!((run.timings.embed_ms - timings.embed_ms).abs() < 1e-6);
    assert!((run.timings.total_ms - timings.total_ms).abs() < 1e-6);
    assert_eq!(
        run.timings.first_token_ms.is_some(),
        timings.first_token_ms.is_some()
    );

    let replay = engine.replay(run_id).await.unwrap();
    assert!(replay.identical && !replay.generator_changed, "{replay:?}");
    assert_eq!(&replay.output, answer);
    assert!(engine.replay("no-such-run").await.is_err());
}

#[tokio::test]
async fn conversations_keep_history_and_feed_it_to_the_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let engine = corpus_engine(dir.path()).await;
    let first = collect(&engine, ChatRequest::new("How long is the Nile?")).await;
    let ChatEvent::Done {
        conversation_id,
        answer: a1,
        ..
    } = first.last().unwrap().clone()
    else {
        panic!()
    };
    assert!(a1.contains("6,650 km"), "{a1}");
    let second = collect(
        &engine,
        ChatRequest {
            conversation_id: Some(conversation_id.clone()),
            ..ChatRequest::new("Who began working on Python?")
        },
    )
    .await;
    let ChatEvent::Done {
        conversation_id: c2,
        run_id,
        answer: a2,
        ..
    } = second.last().unwrap().clone()
    else {
        panic!()
    };
    assert_eq!(c2, conversation_id);
    assert!(a2.contains("Guido van Rossum"), "{a2}");
    // The second prompt carries the first exchange before the new question.
    let run = engine.get_run(&run_id).await.unwrap().unwrap();
    let roles: Vec<Role> = run.prompt.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [Role::System, Role::User, Role::Assistant, Role::User]
    );
    assert_eq!(run.prompt[1].content, "How long is the Nile?");
    assert_eq!(run.prompt[2].content, a1);

    let conv = engine
        .get_conversation(&conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conv.title, "How long is the Nile?");
    assert_eq!(conv.turns.len(), 4);
    assert_eq!(conv.turns[3].content, a2);
    assert_eq!(conv.turns[3].run_id.as_deref(), Some(run_id.as_str()));
    assert!(!conv.turns[3].citations.is_empty());
    let list = engine.list_conversations(0, 10).await.unwrap();
    assert_eq!(list.total, 1);
    assert_eq!(list.items[0].turns, 4);

    // A collection restricts the sources.
    let events = collect(
        &engine,
        ChatRequest {
            collection: Some("code".into()),
            ..ChatRequest::new("How long is the Nile?")
        },
    )
    .await;
    let ChatEvent::Retrieval { citations, .. } = &events[0] else {
        panic!()
    };
    assert!(citations.iter().all(|c| c.doc_id == "python"));

    assert!(engine.delete_conversation(&conversation_id).await.unwrap());
    assert!(engine
        .get_conversation(&conversation_id)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_dropped_stream_stores_nothing_and_bad_requests_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = corpus_engine(dir.path()).await;
    let mut stream = engine
        .chat(ChatRequest::new("What is Python?"))
        .await
        .unwrap();
    let Some(ChatEvent::Retrieval {
        conversation_id,
        run_id,
        ..
    }) = stream.next().await
    else {
        panic!()
    };
    assert!(matches!(stream.next().await, Some(ChatEvent::Token { .. })));
    drop(stream);
    assert!(engine
        .get_conversation(&conversation_id)
        .await
        .unwrap()
        .is_none());
    assert!(engine.get_run(&run_id).await.unwrap().is_none());

    assert!(engine.chat(ChatRequest::new("  ")).await.is_err());
    let unknown = ChatRequest {
        generator: Some("gpt-99".into()),
        ..ChatRequest::new("hi")
    };
    let err = engine.chat(unknown).await.err().unwrap().to_string();
    assert!(
        err.contains("gpt-99") && err.contains("extractive"),
        "{err}"
    );
    assert_eq!(engine.generator_names(), ["extractive"]);
}
