//! Real clients: the official `openai` Python package against the
//! OpenAI-compatible endpoint; the local model for a client disconnect.
mod common;

use common::*;
use serde_json::{json, Value};

/// Needs `python3` with the `openai` package (`pip install openai`; the
/// test setup installs it). Fails, never skips, when it is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_stream_and_non_stream() {
    let node = TestNode::start(|_| {}).await;
    seed(&node).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/openai_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&node.base)
        .env("RAGFLEET_API_KEY", node.key.as_deref().unwrap_or(""))
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "openai client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let models: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(
        models,
        ["extractive", "ragfleet", "ragfleet/default"],
        "generators and collections: {v}"
    );
    assert!(v["answer"].as_str().unwrap().contains("Louvre"), "{v}");
    assert_eq!(v["model"], "extractive", "the generator that answered: {v}");
    assert_eq!(v["stream_models"], json!(["extractive"]), "{v}");
    let unknown = &v["unknown_model"];
    assert_eq!(unknown["status"], 404, "{v}");
    assert_eq!(unknown["code"], "model_not_found", "{v}");
    assert_eq!(unknown["type"], "invalid_request_error", "{v}");
    assert_eq!(unknown["param"], "model", "{v}");
    assert!(
        unknown["message"].as_str().unwrap().contains("gpt-4o-mini"),
        "{v}"
    );
    assert_eq!(v["finish_reason"], "stop");
    assert!(v["completion_tokens"].as_u64().unwrap() > 0);
    assert!(
        v["streamed"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("waggle"),
        "{v}"
    );
    assert!(
        v["chunks"].as_u64().unwrap() >= 2,
        "streamed in pieces: {v}"
    );
    node.stop().await.unwrap();
}

/// A client that goes away mid-answer stops its generation: the slot frees
/// long before a 2000-token answer from the local model could finish, and
/// no answer is stored in the conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_stops_local_generation() {
    let gguf = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.is_file(), "missing {}", gguf.display());
    let node = TestNode::start(|c| {
        c.local.enabled = true;
        c.generator = ragfleet_node::GeneratorKind::Local;
        // An essay request is not a question the sources answer: without
        // this the engine would abstain instead of generating.
        c.chat.min_relevance = 0.0;
        // The compact small-model prompt asks for one or two sentences,
        // which end before the client leaves: ask for the essay in full.
        c.prompt.compact_context_tokens = 0;
    })
    .await;
    seed(&node).await;
    let mut resp = node
        .client
        .post(node.url("/api/v1/chat"))
        .json(
            &json!({"message": "Write a very long essay about Paris.", "stream": true,
            "max_tokens": 2000, "conversation_id": "disconnect-test"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Read until retrieval is done and generation has begun (a small model
    // writes a whole essay in about a second, so leave before its first
    // token, while it reads the prompt).
    let mut seen = String::new();
    while !seen.contains("event: retrieval") {
        let chunk = resp.chunk().await.unwrap().expect("stream ended early");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (_, h) = node.get("/health").await;
    assert_eq!(h["load"]["running"], 1, "{h}");
    drop(resp);
    // The generation slot comes back promptly.
    let mut freed = false;
    for _ in 0..100 {
        let (_, h) = node.get("/health").await;
        if h["load"]["running"] == 0 && h["load"]["streams"] == 0 {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(freed, "generation still running 5 s after the client left");
    let metrics = node
        .client
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ragfleet_node_chats_total")
                && l.contains("outcome=\"cancelled\"")),
        "cancelled chat not counted: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("ragfleet_node_chats_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Nothing was stored for the abandoned answer.
    let (s, _) = node.get("/api/v1/conversations/disconnect-test").await;
    assert_eq!(s, 404);
    // And the node still answers with the local model.
    let (s, ans) = node
        .post_json(
            "/api/v1/chat",
            &json!({"message": "How tall is the Eiffel Tower?", "max_tokens": 24}),
        )
        .await;
    assert_eq!(s, 200, "{ans}");
    assert!(!ans["answer"].as_str().unwrap().is_empty());
    node.stop().await.unwrap();
}
