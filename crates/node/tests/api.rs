//! The node's HTTP API over real sockets, with the real embedding model and
//! the extractive generator.
mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_search_chat_conversations_runs() {
    let node = TestNode::start(|_| {}).await;
    seed(&node).await;

    // Multipart upload of a Markdown file.
    let form = reqwest::multipart::Form::new()
        .text("collection", "notes")
        .part(
            "file",
            reqwest::multipart::Part::bytes(
                b"# Tea\n\nGreen tea is made from unoxidised leaves of Camellia sinensis.\n"
                    .to_vec(),
            )
            .file_name("tea.md"),
        );
    let r = node
        .client
        .post(node.url("/api/v1/documents"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let up: Value = r.json().await.unwrap();
    let tea_id = up["doc_id"].as_str().unwrap().to_string();
    assert!(up["chunks"].as_u64().unwrap() >= 1, "{up}");
    assert_eq!(up["documents"][0]["status"], "created");

    // List (all, and by collection), get.
    let (s, page) = node.get("/api/v1/documents?limit=10").await;
    assert_eq!(s, 200);
    assert_eq!(page["total"], 4, "{page}");
    let (s, page) = node.get("/api/v1/documents?collection=notes").await;
    assert_eq!(s, 200);
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["items"][0]["id"], tea_id.as_str());
    let (s, doc) = node.get("/api/v1/documents/paris").await;
    assert_eq!(s, 200);
    assert_eq!(doc["title"], "Paris");

    // Search ranks the right document first.
    let (s, res) = node
        .post_json(
            "/api/v1/search",
            &json!({"query": "Who built the Eiffel Tower and when?", "top_k": 2}),
        )
        .await;
    assert_eq!(s, 200, "{res}");
    assert_eq!(res["hits"][0]["doc_id"], "paris", "{res}");
    assert!(res["hits"].as_array().unwrap().len() <= 2);
    let (s, res) = node
        .post_json(
            "/api/v1/search",
            &json!({"query": "green tea leaves", "mode": "lexical", "collection": "notes"}),
        )
        .await;
    assert_eq!(s, 200, "{res}");
    assert_eq!(res["hits"][0]["doc_id"], tea_id.as_str());

    // Chat (JSON): an answer citing the Paris document.
    let (s, ans) = node
        .post_json(
            "/api/v1/chat",
            &json!({"message": "How tall is the Eiffel Tower?"}),
        )
        .await;
    assert_eq!(s, 200, "{ans}");
    let answer = ans["answer"].as_str().unwrap();
    assert!(answer.contains("330"), "{answer}");
    let cites = ans["citations"].as_array().unwrap();
    assert!(cites.iter().any(|c| c["doc_id"] == "paris"), "{ans}");
    let conv = ans["conversation_id"].as_str().unwrap().to_string();
    let run = ans["run_id"].as_str().unwrap().to_string();

    // Second turn in the same conversation.
    let (s, ans2) = node
        .post_json(
            "/api/v1/chat",
            &json!({"message": "What do worker bees collect?", "conversation_id": conv}),
        )
        .await;
    assert_eq!(s, 200, "{ans2}");
    assert_eq!(ans2["conversation_id"], conv.as_str());

    let (s, c) = node.get(&format!("/api/v1/conversations/{conv}")).await;
    assert_eq!(s, 200, "{c}");
    let turns = c["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 4, "{c}");
    assert_eq!(turns[0]["role"], "user");
    assert_eq!(turns[1]["role"], "assistant");
    assert!(!turns[1]["citations"].as_array().unwrap().is_empty());
    let (s, list) = node.get("/api/v1/conversations").await;
    assert_eq!(s, 200);
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == conv.as_str()));

    let (s, snap) = node.get(&format!("/api/v1/runs/{run}")).await;
    assert_eq!(s, 200, "{snap}");
    assert_eq!(snap["run_id"], run.as_str());
    assert_eq!(snap["answer"], answer);

    // Delete: gone from get and from search.
    let (s, _) = node.delete("/api/v1/documents/paris").await;
    assert_eq!(s, 204);
    let (s, b) = node.get("/api/v1/documents/paris").await;
    assert_error(s, &b, 404, "not_found");
    let (_, res) = node
        .post_json(
            "/api/v1/search",
            &json!({"query": "Eiffel Tower", "top_k": 5}),
        )
        .await;
    assert!(
        res["hits"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["doc_id"] != "paris"),
        "{res}"
    );
    let (s, _) = node.delete(&format!("/api/v1/conversations/{conv}")).await;
    assert_eq!(s, 204);
    let (s, b) = node.get(&format!("/api/v1/conversations/{conv}")).await;
    assert_error(s, &b, 404, "not_found");

    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_error_bodies_and_the_node_keeps_serving() {
    let node = TestNode::start(|c| c.limits.max_body_bytes = 4096).await;
    seed(&node).await;

    let (s, b) = node
        .post_raw("/api/v1/search", "application/json", "{\"query\": ")
        .await;
    assert_error(s, &b, 400, "invalid_json");
    let (s, b) = node
        .post_json("/api/v1/search", &json!({"query": "x", "topk": 3}))
        .await;
    assert_error(s, &b, 422, "invalid_request");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("topk"),
        "{b}"
    );
    let (s, b) = node.post_raw("/api/v1/search", "text/plain", "query").await;
    assert_error(s, &b, 415, "unsupported_media_type");
    let (s, b) = node
        .post_json("/api/v1/search", &json!({"query": "   "}))
        .await;
    assert_error(s, &b, 422, "invalid_request");
    let (s, b) = node
        .post_json("/api/v1/search", &json!({"query": "bees", "top_k": 100000}))
        .await;
    assert_error(s, &b, 422, "invalid_request");
    let (s, b) = node
        .post_json("/api/v1/chat", &json!({"message": ""}))
        .await;
    assert_error(s, &b, 422, "invalid_request");
    let (s, b) = node
        .post_json(
            "/api/v1/chat",
            &json!({"message": "hi", "generator": "nope"}),
        )
        .await;
    assert_error(s, &b, 422, "invalid_request");

    // Oversized body.
    let big = json!({"text": "a ".repeat(5000)});
    let (s, b) = node.post_json("/api/v1/documents", &big).await;
    assert_error(s, &b, 413, "payload_too_large");
    // Unsupported upload type.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![0u8, 1, 2, 3]).file_name("image.xyz"),
    );
    let r = node
        .client
        .post(node.url("/api/v1/documents"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let b: Value = r.json().await.unwrap();
    assert_error(s, &b, 415, "unsupported_media_type");
    // Wrong content type on documents.
    let (s, b) = node.post_raw("/api/v1/documents", "text/csv", "a,b").await;
    assert_error(s, &b, 415, "unsupported_media_type");

    // Unknown ids and routes.
    for path in [
        "/api/v1/documents/nope",
        "/api/v1/conversations/nope",
        "/api/v1/runs/nope",
        "/api/v1/nothing-here",
    ] {
        let (s, b) = node.get(path).await;
        assert_error(s, &b, 404, "not_found");
    }
    let (s, b) = node.delete("/api/v1/documents/nope").await;
    assert_error(s, &b, 404, "not_found");
    // Bad query string.
    let (s, b) = node.get("/api/v1/documents?limit=abc").await;
    assert_error(s, &b, 400, "invalid_query");
    let (s, b) = node.get("/api/v1/documents?limit=0").await;
    assert_error(s, &b, 422, "invalid_request");

    // Still serving.
    let (s, res) = node
        .post_json("/api/v1/search", &json!({"query": "waggle dance"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(res["hits"][0]["doc_id"], "bees");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_jsonl_keeps_good_lines_and_reports_bad_ones() {
    let node = TestNode::start(|c| c.limits.max_body_bytes = 2048).await;
    let long = "x".repeat(3000);
    let body = format!(
        "{}\n\n{{\"text\": \n{}\n{}\n{}\n",
        json!({"id": "a", "title": "A", "text": "Alpha is the first letter of the Greek alphabet."}),
        json!({"id": "b", "text": "Beta is the second letter.", "colour": "red"}),
        json!({"id": "long", "text": long}),
        json!({"id": "c", "text": "Gamma rays are high energy photons.", "collection": "physics"}),
    );
    let (s, r) = node
        .post_raw(
            "/api/v1/documents/batch?collection=greek",
            "application/x-ndjson",
            body,
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["lines"], 5, "{r}");
    assert_eq!(r["ingested"], 2, "{r}");
    assert_eq!(r["failed"], 3, "{r}");
    let failed_lines: Vec<u64> = r["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["line"].as_u64().unwrap())
        .collect();
    assert_eq!(failed_lines, vec![3, 4, 5], "{r}");
    assert_eq!(r["failures"][0]["error"]["code"], "invalid_json");
    assert_eq!(r["failures"][2]["error"]["code"], "payload_too_large");
    let (s, d) = node.get("/api/v1/documents/a").await;
    assert_eq!(s, 200);
    assert_eq!(d["collection"], "greek");
    let (_, d) = node.get("/api/v1/documents/c").await;
    assert_eq!(d["collection"], "physics");
    let (s, b) = node
        .post_raw("/api/v1/documents/batch", "application/x-ndjson", "\n\n")
        .await;
    assert_error(s, &b, 422, "invalid_request");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_come_in_order() {
    let node = TestNode::start(|_| {}).await;
    seed(&node).await;
    let r = node
        .client
        .post(node.url("/api/v1/chat"))
        .header("accept", "text/event-stream")
        .json(&json!({"message": "What is Cargo?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = parse_sse(&r.text().await.unwrap());
    assert!(events.len() >= 3, "{events:?}");
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str(), "event name = type");
    }
    assert_eq!(events[0].0, "retrieval");
    assert!(events[1..events.len() - 1]
        .iter()
        .all(|(n, _)| n == "token"));
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "done");
    let streamed: String = events
        .iter()
        .filter(|(n, _)| n == "token")
        .map(|(_, d)| d["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, done["answer"].as_str().unwrap());
    assert!(done["citations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["doc_id"] == "rust"));
    assert_eq!(events[0].1["run_id"], done["run_id"]);

    // `stream: true` in the body without the Accept header works too.
    let (s, text) = {
        let r = node
            .client
            .post(node.url("/api/v1/chat"))
            .json(&json!({"message": "What is Cargo?", "stream": true}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(s, 200);
    assert_eq!(parse_sse(&text).last().unwrap().0, "done");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_carries_two_questions_and_survives_a_bad_one() {
    let node = TestNode::start(|_| {}).await;
    seed(&node).await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/api/v1/chat/ws", node.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", node.key.as_deref().unwrap())
            .parse()
            .unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    use tokio_tungstenite::tungstenite::Message;

    async fn answer(
        ws: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Vec<Value> {
        let mut evs = Vec::new();
        while let Some(m) = ws.next().await {
            let m = m.unwrap();
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                let end = v["type"] == "done" || v["type"] == "error";
                evs.push(v);
                if end {
                    break;
                }
            }
        }
        evs
    }

    ws.send(Message::Text(
        json!({"message": "How tall is the Eiffel Tower?"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let first = answer(&mut ws).await;
    assert_eq!(first[0]["type"], "retrieval");
    assert_eq!(first.last().unwrap()["type"], "done");
    let conv = first.last().unwrap()["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();

    ws.send(Message::Text("{not json".into())).await.unwrap();
    let bad = answer(&mut ws).await;
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0]["type"], "error");
    assert_eq!(bad[0]["code"], "invalid_json");

    ws.send(Message::Text(
        json!({"message": "How do bees communicate?", "conversation_id": conv})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let second = answer(&mut ws).await;
    let done = second.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["conversation_id"], conv.as_str());
    assert!(
        done["answer"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("waggle"),
        "{done}"
    );
    ws.close(None).await.unwrap();

    let (_, c) = node.get(&format!("/api/v1/conversations/{conv}")).await;
    assert_eq!(c["turns"].as_array().unwrap().len(), 4);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints() {
    let node = TestNode::start(|_| {}).await;
    seed(&node).await;
    let (s, h) = node.get("/health").await;
    assert_eq!(s, 200);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["load"]["running"], 0);
    assert_eq!(h["load"]["capacity"], 2);
    let (s, r) = node.get("/ready").await;
    assert_eq!(s, 200, "{r}");
    let (s, info) = node.get("/api/v1/info").await;
    assert_eq!(s, 200);
    assert_eq!(info["default_generator"], "extractive");
    assert_eq!(info["documents"], 3);

    let (s, _) = node
        .post_json("/api/v1/chat", &json!({"message": "What is rustc?"}))
        .await;
    assert_eq!(s, 200);
    let text = node
        .client
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "ragfleet_node_http_requests_total",
        "ragfleet_node_stage_duration_seconds",
        "ragfleet_node_tokens_generated_total",
        "ragfleet_node_documents_ingested_total",
        "ragfleet_node_chunks",
        "ragfleet_node_vector_index_size",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(text.contains("route=\"/api/v1/chat\""), "route label");

    let (s, spec) = node.get("/api/v1/openapi.json").await;
    assert_eq!(s, 200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/api/v1/documents",
        "/api/v1/chat",
        "/api/v1/search",
        "/v1/chat/completions",
        "/health",
    ] {
        assert!(
            spec["paths"][p].is_object(),
            "{p} missing from the OpenAPI document"
        );
    }
    for page in ["/", "/api/v1/docs", "/assets/app.js", "/assets/style.css"] {
        let r = node.client.get(node.url(page)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{page}");
    }
    let (s, b) = node.get("/assets/nope.js").await;
    assert_error(s, &b, 404, "not_found");
    let r = node.client.put(node.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_compatible_endpoint_raw() {
    let node = TestNode::start(|_| {}).await;
    seed(&node).await;
    let (s, models) = node.get("/v1/models").await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    // Models: the generators, every collection, and each collection.
    assert_eq!(
        ids,
        ["extractive", "ragfleet", "ragfleet/default"],
        "{models}"
    );

    let (s, r) = node
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "ragfleet/default", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "Which museum is the most visited?"}],
                "presence_penalty": 0}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["model"], "extractive", "the generator that answered: {r}");
    assert_eq!(r["ragfleet"]["collection"], "default", "{r}");
    assert!(
        r["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("Louvre"),
        "{r}"
    );

    let resp = node
        .client
        .post(node.url("/v1/chat/completions"))
        .json(&json!({"model": "ragfleet", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Which museum is the most visited?"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = parse_sse(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap().1, Value::String("[DONE]".into()));
    let content: String = events
        .iter()
        .filter_map(|(_, d)| d["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(content.contains("Louvre"), "{content}");
    assert!(events
        .iter()
        .any(|(_, d)| d["choices"][0]["finish_reason"] == "stop"));
    assert!(events
        .iter()
        .any(|(_, d)| d["usage"]["completion_tokens"].as_u64().is_some()));
    assert!(
        events
            .iter()
            .filter(|(_, d)| d.get("model").is_some())
            .all(|(_, d)| d["model"] == "extractive"),
        "{events:?}"
    );

    // A collection is a model: its answers come from it alone.
    let form = reqwest::multipart::Form::new()
        .text("collection", "notes")
        .part(
            "file",
            reqwest::multipart::Part::bytes(
                b"The museum of the city holds a famous tea set from 1750.".to_vec(),
            )
            .file_name("tea.txt"),
        );
    let r = node
        .client
        .post(node.url("/api/v1/documents"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (_, models) = node.get("/v1/models").await;
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "ragfleet/notes"),
        "{models}"
    );
    let (s, r) = node
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "ragfleet/notes", "messages": [
                {"role": "user", "content": "What does the museum of the city hold?"}]}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let cited: Vec<&str> = r["ragfleet"]["citations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["doc_id"].as_str().unwrap())
        .collect();
    assert!(!cited.is_empty() && !cited.contains(&"paris"), "{r}");
    // A generator model searches every collection.
    let (s, r) = node
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "extractive", "messages": [
                {"role": "user", "content": "Which museum is the most visited?"}]}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert!(r["ragfleet"]["collection"].is_null(), "{r}");
    assert!(r["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("Louvre"));

    // Anything else is OpenAI's 404 model_not_found — a generator this node
    // has not loaded, another vendor's model, a collection that is not there,
    // and a bare collection name.
    for model in ["local", "gpt-4o-mini", "ragfleet/nope", "default"] {
        let (s, r) = node
            .post_json(
                "/v1/chat/completions",
                &json!({"model": model, "stream": true, "messages": [
                    {"role": "user", "content": "Which museum is the most visited?"}]}),
            )
            .await;
        assert_eq!(s, 404, "{model}: {r}");
        let e = &r["error"];
        assert_eq!(e["code"], "model_not_found", "{r}");
        assert_eq!(e["type"], "invalid_request_error", "{r}");
        assert_eq!(e["param"], "model", "{r}");
        assert!(e["message"].as_str().unwrap().contains(model), "{r}");
    }
    node.stop().await.unwrap();
}

/// A document is its source within its collection, through the real node
/// over HTTP: one file uploaded to team-a, then to team-b, stays in both;
/// identical files under two names are two documents; uploading everything
/// again reports every document unchanged; the counts are what is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_identified_by_their_source_within_their_collection() {
    let node = TestNode::start(|_| {}).await;
    let text = b"Cargo is the Rust package manager. It downloads your dependencies, \
                 compiles your packages and uploads them to crates.io.";
    let upload = |collection: &'static str, name: &'static str, source: Option<&'static str>| {
        let node = &node;
        async move {
            let mut form = reqwest::multipart::Form::new()
                .text("collection", collection)
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(text.to_vec()).file_name(name),
                );
            if let Some(s) = source {
                form = form.text("source", s);
            }
            let r = node
                .client
                .post(node.url("/api/v1/documents"))
                .multipart(form)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let v: Value = r.json().await.unwrap();
            (
                v["doc_id"].as_str().unwrap().to_string(),
                v["documents"][0]["status"].as_str().unwrap().to_string(),
            )
        }
    };
    let (a, sa) = upload("team-a", "cargo.txt", None).await;
    let (b, sb) = upload("team-b", "cargo.txt", None).await;
    assert_eq!((sa.as_str(), sb.as_str()), ("created", "created"));
    assert_ne!(a, b);
    for (c, id) in [("team-a", &a), ("team-b", &b)] {
        let (_, page) = node.get(&format!("/api/v1/documents?collection={c}")).await;
        assert_eq!(page["total"], 1, "{c} keeps its document: {page}");
        assert_eq!(page["items"][0]["id"], id.as_str());
        assert_eq!(page["items"][0]["source"], "cargo.txt");
    }
    // Identical files at two sources (the client's relative paths).
    let (readme, s1) = upload("book", "README.txt", Some("book/README.txt")).await;
    let (summary, s2) = upload("book", "SUMMARY.txt", Some("book/SUMMARY.txt")).await;
    assert_eq!((s1.as_str(), s2.as_str()), ("created", "created"));
    assert_ne!(readme, summary);
    let (_, d) = node.get(&format!("/api/v1/documents/{summary}")).await;
    assert_eq!(d["source"], "book/SUMMARY.txt");
    let (_, page) = node.get("/api/v1/documents").await;
    assert_eq!(page["total"], 4, "{page}");
    // Again: all unchanged, same ids, nothing new.
    for (c, n, src, id) in [
        ("team-a", "cargo.txt", None, &a),
        ("team-b", "cargo.txt", None, &b),
        ("book", "README.txt", Some("book/README.txt"), &readme),
        ("book", "SUMMARY.txt", Some("book/SUMMARY.txt"), &summary),
    ] {
        let (got, status) = upload(c, n, src).await;
        assert_eq!((&got, status.as_str()), (id, "unchanged"));
    }
    let (_, page) = node.get("/api/v1/documents").await;
    assert_eq!(page["total"], 4, "{page}");
    // JSON Lines through the batch endpoint: lines without an id are their
    // place in the file; with the same file sent again, all unchanged.
    let body = concat!(
        "{\"text\": \"Line one about lighthouses.\"}\n",
        "{\"text\": \"Line one about lighthouses.\"}\n",
        "{\"id\": \"given\", \"text\": \"A line with its own id.\"}\n",
    );
    for want in ["created", "unchanged"] {
        let (s, r) = node
            .post_raw(
                "/api/v1/documents/batch?collection=lines&source=notes.jsonl",
                "application/x-ndjson",
                body,
            )
            .await;
        assert_eq!(s, 200, "{r}");
        let docs = r["documents"].as_array().unwrap();
        assert_eq!(docs.len(), 3, "{r}");
        assert!(docs.iter().all(|d| d["status"] == want), "{r}");
    }
    let (_, page) = node.get("/api/v1/documents?collection=lines").await;
    assert_eq!(page["total"], 3, "{page}");
    let sources: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["source"].as_str().unwrap())
        .collect();
    assert!(
        sources.contains(&"notes.jsonl#1") && sources.contains(&"notes.jsonl#2"),
        "{sources:?}"
    );
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_429_with_retry_after() {
    // One slot, no queue: while the slot is held, the next chat is refused.
    let node = TestNode::start(|c| {
        c.limits.max_concurrent_generations = 1;
        c.limits.max_queued_generations = 0;
    })
    .await;
    seed(&node).await;
    let held = node.state.gate.acquire().await.unwrap();
    let (_, h) = node.get("/health").await;
    assert_eq!(h["load"]["running"], 1);
    let r = node
        .client
        .post(node.url("/api/v1/chat"))
        .json(&json!({"message": "What is rustc?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "overloaded");
    drop(held);
    let (s, _) = node
        .post_json("/api/v1/chat", &json!({"message": "What is rustc?"}))
        .await;
    assert_eq!(s, 200);
    let (_, h) = node.get("/health").await;
    assert_eq!(h["load"]["running"], 0);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_node_is_not_ready_and_stops() {
    let mut node = TestNode::start(|c| c.shutdown.drain_delay_ms = 600).await;
    let (s, _) = node.get("/ready").await;
    assert_eq!(s, 200);
    node.begin_stop();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (s, b) = node.get("/ready").await;
    assert_error(s, &b, 503, "draining");
    let (s, h) = node.get("/health").await;
    assert_eq!(s, 200);
    assert_eq!(h["draining"], true);
    node.stop().await.unwrap();
}
