//! A real node on a loopback port with the real embedding model.
#![allow(dead_code)]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ragfleet_node::{GeneratorKind, Node, NodeConfig};
use serde_json::Value;

pub fn models_dir() -> PathBuf {
    std::env::var_os("RAGFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

pub struct TestNode {
    pub addr: SocketAddr,
    pub base: String,
    /// Sends the bootstrap admin key (when auth is on).
    pub client: reqwest::Client,
    /// The bootstrap admin key (`None` with auth off).
    pub key: Option<String>,
    pub data_dir: PathBuf,
    pub state: ragfleet_node::state::SharedState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<Result<(), ragfleet_node::NodeError>>>,
    _dir: tempfile::TempDir,
}

impl TestNode {
    /// Extractive generator, no local model loaded, unless `tweak` says otherwise.
    pub async fn start(tweak: impl FnOnce(&mut NodeConfig)) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = NodeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            models_dir: models_dir(),
            generator: GeneratorKind::Extractive,
            ..Default::default()
        };
        cfg.local.enabled = false;
        cfg.index.vector = ragfleet_rag::config::VectorIndexKind::Flat;
        cfg.shutdown.grace_ms = 5_000;
        tweak(&mut cfg);
        let data_dir = cfg.data_dir.clone();
        let node = Node::bind(cfg).await.unwrap();
        let addr = node.local_addr();
        let state = node.state();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(node.run(async move {
            let _ = rx.await;
        }));
        let base = format!("http://{addr}");
        let client = reqwest::Client::new();
        let mut t = TestNode {
            addr,
            base,
            client,
            key: None,
            data_dir: data_dir.clone(),
            state,
            stop: Some(tx),
            task: Some(task),
            _dir: dir,
        };
        t.wait_ready().await;
        // Auth is on by default: the node wrote its admin key on first start.
        if let Ok(k) = std::fs::read_to_string(data_dir.join("admin.key")) {
            let key = k.trim().to_string();
            t.client = client_with_key(&key);
            t.key = Some(key);
        }
        t
    }

    pub async fn wait_ready(&self) {
        for _ in 0..600 {
            if let Ok(r) = self.client.get(self.url("/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node at {} never became ready", self.base);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let s = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post_raw(
        &self,
        path: &str,
        ctype: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self.client.delete(self.url(path)).send().await.unwrap();
        let s = r.status().as_u16();
        let text = r.text().await.unwrap();
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Stop the node (drain) and wait for it.
    pub async fn stop(mut self) -> Result<(), ragfleet_node::NodeError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t.await.unwrap(),
            None => Ok(()),
        }
    }

    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A client that sends `Authorization: Bearer <key>` on every request.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap()
}

/// Assert the error body shape and code.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "body: {body}");
    assert_eq!(body["error"]["code"], want_code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "body: {body}"
    );
}

/// Parse an SSE body into (event, data JSON) pairs.
pub fn parse_sse(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.replace("\r\n", "\n").split("\n\n") {
        let mut event = "message".to_string();
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if !data.is_empty() {
            let d = data.join("\n");
            out.push((event, serde_json::from_str(&d).unwrap_or(Value::String(d))));
        }
    }
    out
}

pub const DOCS: &[(&str, &str, &str)] = &[
    (
        "rust",
        "The Rust language",
        "Rust is a systems programming language focused on safety and speed. The Rust compiler is called rustc. Cargo is the Rust package manager and build tool.",
    ),
    (
        "paris",
        "Paris",
        "Paris is the capital of France. The Eiffel Tower was completed in 1889 and is 330 metres tall. The Louvre is the most visited museum in the world.",
    ),
    (
        "bees",
        "Honey bees",
        "Honey bees live in colonies with one queen. Worker bees collect nectar and pollen. Bees communicate the direction of flowers with the waggle dance.",
    ),
];

pub async fn seed(node: &TestNode) {
    for (id, title, text) in DOCS {
        let (s, b) = node
            .post_json(
                "/api/v1/documents",
                &serde_json::json!({"id": id, "title": title, "text": text}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
}
