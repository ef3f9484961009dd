//! OpenAI-compatible clients against a real HTTP server on 127.0.0.1 that
//! speaks the OpenAI wire format (chat-completions SSE, embeddings), plus a
//! closed port for the "server down" case.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use ragfleet_models::{OpenAiConfig, OpenAiEmbedder, OpenAiEmbedderConfig, OpenAiGenerator};
use ragfleet_rag::embed::Embedder;
use ragfleet_rag::generate::{ChatMessage, GenParams, GenerateRequest, Generator, Role};
use serde_json::{json, Value};

fn sse(chunks: Vec<(String, u64)>) -> Response {
    // Each piece is written after its delay, so the client sees real streaming.
    let body = futures::stream::iter(chunks).then(|(c, delay)| async move {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        Ok::<_, Infallible>(Bytes::from(c))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(body))
        .expect("response")
}

fn delta(text: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":text},"finish_reason":null}]})
    )
}

async fn chat(Json(req): Json<Value>) -> Response {
    // The client must send an OpenAI streaming request.
    if req["stream"] != json!(true) || req["model"] != json!("test-model") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error":{"message":"bad request shape"}})),
        )
            .into_response();
    }
    let question = req["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    let role = format!(
        "data: {}\n\n",
        json!({"choices":[{"index":0,"delta":{"role":"assistant"}}]})
    );
    let echo = delta(&format!("You asked: {question}"));
    // One event split over two writes, CRLF line ends, a comment line.
    let (a, b) = echo.split_at(10);
    sse(vec![
        (role, 0),
        (": keep-alive\r\n\r\n".to_string(), 5),
        (a.to_string(), 5),
        (b.to_string(), 5),
        (delta(" — wörld").replace("\n\n", "\r\n\r\n"), 5),
        (
            format!(
                "data: {}\n\n",
                json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"max_tokens_seen":req["max_tokens"]})
            ),
            0,
        ),
        ("data: [DONE]\n\n".to_string(), 0),
        // Anything after [DONE] is ignored.
        (delta("IGNORED"), 0),
    ])
}

async fn chat_error() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error":{"message":"model is loading","type":"unavailable"}})),
    )
        .into_response()
}

async fn chat_stall() -> Response {
    sse(vec![(delta("partial"), 0), (delta("never"), 10_000)])
}

async fn embeddings(Json(req): Json<Value>) -> Response {
    let inputs: Vec<String> = req["input"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    // Un-normalised vectors derived from the text, returned in reverse order
    // (the client must sort by index and normalise).
    let mut data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(
            |(i, t)| json!({"object":"embedding","index":i,"embedding":[t.len() as f32, 3.0, 4.0]}),
        )
        .collect();
    data.reverse();
    Json(json!({"object":"list","data":data,"model":req["model"]})).into_response()
}

async fn start_server() -> SocketAddr {
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/down/v1/chat/completions", post(chat_error))
        .route("/down/v1/embeddings", post(chat_error))
        .route("/stall/v1/chat/completions", post(chat_stall));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    addr
}

fn req(question: &str) -> GenerateRequest {
    GenerateRequest {
        messages: vec![
            ChatMessage {
                role: Role::System,
                content: "Answer from the sources.".into(),
            },
            ChatMessage {
                role: Role::User,
                content: question.into(),
            },
        ],
        question: question.into(),
        sources: Vec::new(),
        params: GenParams::default(),
    }
}

async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_chat_deltas_from_sse() {
    let addr = start_server().await;
    let g = OpenAiGenerator::new(OpenAiConfig::new(format!("http://{addr}/v1"), "test-model"))
        .expect("client");
    let mut s = g.generate(req("What is BM25?"));
    let mut deltas = Vec::new();
    while let Some(d) = s.next().await {
        deltas.push(d.expect("delta"));
    }
    assert_eq!(deltas, ["You asked: What is BM25?", " — wörld"]);
    assert!(g.id().contains("test-model"));
    assert!(g.count_tokens("four words in here") >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_stalls_are_clear_errors() {
    let addr = start_server().await;
    let g = OpenAiGenerator::new(OpenAiConfig::new(
        format!("http://{addr}/down/v1"),
        "test-model",
    ))
    .expect("client");
    let items: Vec<_> = g.generate(req("q")).collect().await;
    assert_eq!(items.len(), 1);
    let err = items[0].as_ref().expect_err("error").to_string();
    assert!(
        err.contains("503") && err.contains("model is loading"),
        "{err}"
    );

    let mut cfg = OpenAiConfig::new(format!("http://{addr}/stall/v1"), "test-model");
    cfg.idle_timeout_ms = 300;
    let g = OpenAiGenerator::new(cfg).expect("client");
    let items: Vec<_> = g.generate(req("q")).collect().await;
    assert_eq!(items[0].as_deref().expect("first delta"), "partial");
    let err = items[1].as_ref().expect_err("stall").to_string();
    assert!(err.contains("stalled"), "{err}");
    assert_eq!(items.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_is_a_clear_error() {
    let port = closed_port().await;
    let base = format!("http://127.0.0.1:{port}/v1");
    let g = OpenAiGenerator::new(OpenAiConfig::new(&base, "m")).expect("client");
    let items: Vec<_> = g.generate(req("q")).collect().await;
    assert_eq!(items.len(), 1);
    let err = items[0].as_ref().expect_err("down").to_string();
    assert!(err.contains("unreachable") && err.contains(&base), "{err}");

    let cfg = OpenAiEmbedderConfig::new(&base, "m");
    let err = tokio::task::spawn_blocking(move || OpenAiEmbedder::new(cfg).err())
        .await
        .expect("join")
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("unreachable") && err.contains("/embeddings"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_ordered_normalised_and_batched() {
    let addr = start_server().await;
    let mut cfg = OpenAiEmbedderConfig::new(format!("http://{addr}/v1"), "emb");
    cfg.batch_size = 2;
    let (dim, vecs) = tokio::task::spawn_blocking(move || {
        let e = OpenAiEmbedder::new(cfg).expect("embedder");
        let v = e.embed(&["", "abc", "abcd", "x"]).expect("embed");
        (e.dim(), v)
    })
    .await
    .expect("join");
    assert_eq!(dim, 3, "dimension learned from the server");
    assert_eq!(vecs.len(), 4);
    for (v, len) in vecs.iter().zip([0f32, 3.0, 4.0, 1.0]) {
        let n = (len * len + 25.0).sqrt();
        let want = [len / n, 3.0 / n, 4.0 / n];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{v:?} vs {want:?}");
        }
    }

    let cfg = OpenAiEmbedderConfig {
        dim: Some(3),
        ..OpenAiEmbedderConfig::new(format!("http://{addr}/down/v1"), "emb")
    };
    let err = tokio::task::spawn_blocking(move || {
        let e = OpenAiEmbedder::new(cfg).expect("no probe with a configured dim");
        e.embed(&["a"]).expect_err("503")
    })
    .await
    .expect("join")
    .to_string();
    assert!(
        err.contains("503") && err.contains("model is loading"),
        "{err}"
    );
}
