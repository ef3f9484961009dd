//! Clients for OpenAI-compatible servers (vLLM, Ollama, llama.cpp server,
//! OpenAI): streamed chat completions ([`OpenAiGenerator`]) and embeddings
//! ([`OpenAiEmbedder`]).
use std::collections::VecDeque;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use ragfleet_rag::embed::Embedder;
use ragfleet_rag::generate::{GenerateRequest, Generator, Role};
use ragfleet_rag::{RagError, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Where and how to reach an OpenAI-compatible server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Base URL including the API prefix, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// Model name sent in every request.
    pub model: String,
    /// Sent as `Authorization: Bearer ...` when set.
    #[serde(default)]
    pub api_key: Option<String>,
    /// TCP/TLS connect timeout.
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed until the response headers arrive (chat), or for the
    /// whole response (embeddings).
    #[serde(default = "default_request_ms")]
    pub request_timeout_ms: u64,
    /// Longest silence allowed between two streamed chunks.
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
    /// Context window of the remote chat model (tokens).
    #[serde(default = "default_context")]
    pub context_tokens: usize,
}

fn default_connect_ms() -> u64 {
    2_000
}
fn default_request_ms() -> u64 {
    60_000
}
fn default_idle_ms() -> u64 {
    30_000
}
fn default_context() -> usize {
    8192
}

impl OpenAiConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            connect_timeout_ms: default_connect_ms(),
            request_timeout_ms: default_request_ms(),
            idle_timeout_ms: default_idle_ms(),
            context_tokens: default_context(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base_url.trim_end_matches('/'), path)
    }
}

/// Rough token estimate for remote models whose tokenizer we do not have:
/// ~4 characters of English per token, never less than the word count.
fn estimate_tokens(text: &str) -> usize {
    let chars = text.chars().count();
    (chars.div_ceil(4)).max(text.split_whitespace().count())
}

fn unreachable(url: &str, e: &reqwest::Error) -> RagError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "is unreachable (connection failed)"
    } else {
        "request failed"
    };
    // reqwest's Display hides the root cause (e.g. "Connection refused").
    let mut cause = String::new();
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    RagError::Upstream(format!("OpenAI-compatible server at {url} {what}: {cause}"))
}

/// Build an error from a non-2xx answer, using the OpenAI `error.message` when present.
fn status_error(url: &str, status: reqwest::StatusCode, body: &str) -> RagError {
    let msg = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("error").map(|e| {
                e.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string())
            })
        })
        .unwrap_or_else(|| body.chars().take(300).collect());
    RagError::Upstream(format!("{url} answered {status}: {msg}"))
}

/// Streams chat completions from `/chat/completions` with `stream: true`.
#[derive(Clone)]
pub struct OpenAiGenerator {
    cfg: OpenAiConfig,
    client: reqwest::Client,
}

impl OpenAiGenerator {
    pub fn new(cfg: OpenAiConfig) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
        if let Some(key) = &cfg.api_key {
            let mut headers = reqwest::header::HeaderMap::new();
            let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| RagError::InvalidInput("api_key has invalid characters".into()))?;
            headers.insert(reqwest::header::AUTHORIZATION, v);
            builder = builder.default_headers(headers);
        }
        let client = builder
            .build()
            .map_err(|e| RagError::Upstream(format!("building HTTP client: {e}")))?;
        Ok(Self { cfg, client })
    }

    fn body(&self, req: &GenerateRequest) -> serde_json::Value {
        let messages: Vec<serde_json::Value> = req
            .messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                json!({"role": role, "content": m.content})
            })
            .collect();
        let p = &req.params;
        let mut body = json!({
            "model": self.cfg.model,
            "messages": messages,
            "stream": true,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "seed": p.seed,
        });
        if let Some(top_p) = p.top_p {
            body["top_p"] = json!(top_p);
        }
        if !p.stop.is_empty() {
            body["stop"] = json!(p.stop);
        }
        body
    }
}

/// Incremental parser of a `text/event-stream` body into event data strings.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: Vec<String>,
}

impl SseParser {
    /// Feed bytes; returns the data of every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(rest) = line.strip_prefix("data:") {
                self.data
                    .push(rest.strip_prefix(' ').unwrap_or(rest).to_string());
            }
            // Comments (":...") and other fields (event:, id:, retry:) are ignored.
        }
        events
    }

    /// End of body: an event not closed by a blank line still counts.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        if !rest.is_empty() {
            let line = String::from_utf8_lossy(&rest);
            let line = line.trim_end_matches('\r');
            if let Some(d) = line.strip_prefix("data:") {
                self.data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
            }
        }
        if self.data.is_empty() {
            None
        } else {
            let d = self.data.join("\n");
            self.data.clear();
            Some(d)
        }
    }
}

/// Text delta of one chat-completion chunk, or the server's error.
fn chunk_delta(url: &str, data: &str) -> Result<Option<String>> {
    let v: serde_json::Value = serde_json::from_str(data).map_err(|e| {
        RagError::Upstream(format!(
            "{url} sent a malformed stream chunk ({e}): {data:.200}"
        ))
    })?;
    if let Some(err) = v.get("error") {
        let msg = err
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        return Err(RagError::Upstream(format!("{url} stream error: {msg}")));
    }
    Ok(v.pointer("/choices/0/delta/content")
        .and_then(|c| c.as_str())
        .filter(|c| !c.is_empty())
        .map(str::to_string))
}

type ByteStream = BoxStream<'static, reqwest::Result<bytes::Bytes>>;

enum State {
    Start(Box<OpenAiGenerator>, Box<GenerateRequest>),
    Streaming {
        body: ByteStream,
        sse: SseParser,
        queue: VecDeque<Result<String>>,
        url: String,
        idle: Duration,
        done: bool,
    },
    Finished,
}

async fn step(state: State) -> Option<(Result<String>, State)> {
    let mut state = state;
    loop {
        match state {
            State::Finished => return None,
            State::Start(gen, req) => {
                let url = gen.cfg.url("chat/completions");
                let send = gen.client.post(&url).json(&gen.body(&req)).send();
                let timeout = Duration::from_millis(gen.cfg.request_timeout_ms);
                let resp = match tokio::time::timeout(timeout, send).await {
                    Err(_) => {
                        return Some((
                            Err(RagError::Upstream(format!(
                            "OpenAI-compatible server at {url} sent no response within {timeout:?}"
                        ))),
                            State::Finished,
                        ))
                    }
                    Ok(Err(e)) => return Some((Err(unreachable(&url, &e)), State::Finished)),
                    Ok(Ok(r)) => r,
                };
                let status = resp.status();
                if !status.is_success() {
                    let body = resp.text().await.unwrap_or_default();
                    return Some((Err(status_error(&url, status, &body)), State::Finished));
                }
                state = State::Streaming {
                    body: resp.bytes_stream().boxed(),
                    sse: SseParser::default(),
                    queue: VecDeque::new(),
                    url,
                    idle: Duration::from_millis(gen.cfg.idle_timeout_ms),
                    done: false,
                };
            }
            State::Streaming {
                mut body,
                mut sse,
                mut queue,
                url,
                idle,
                mut done,
            } => {
                if let Some(item) = queue.pop_front() {
                    let next = if item.is_err() {
                        State::Finished
                    } else {
                        State::Streaming {
                            body,
                            sse,
                            queue,
                            url,
                            idle,
                            done,
                        }
                    };
                    return Some((item, next));
                }
                if done {
                    return None;
                }
                let events = match tokio::time::timeout(idle, body.next()).await {
                    Err(_) => {
                        return Some((
                            Err(RagError::Upstream(format!(
                                "{url} stream stalled: nothing for {idle:?}"
                            ))),
                            State::Finished,
                        ))
                    }
                    Ok(Some(Err(e))) => {
                        return Some((
                            Err(RagError::Upstream(format!("{url} stream broke: {e}"))),
                            State::Finished,
                        ))
                    }
                    Ok(Some(Ok(bytes))) => sse.push(&bytes),
                    Ok(None) => {
                        done = true;
                        sse.finish().into_iter().collect()
                    }
                };
                for data in events {
                    if data.trim() == "[DONE]" {
                        done = true;
                        break;
                    }
                    match chunk_delta(&url, &data) {
                        Ok(Some(text)) => queue.push_back(Ok(text)),
                        Ok(None) => {}
                        Err(e) => {
                            queue.push_back(Err(e));
                            done = true;
                            break;
                        }
                    }
                }
                state = State::Streaming {
                    body,
                    sse,
                    queue,
                    url,
                    idle,
                    done,
                };
            }
        }
    }
}

fn chat_stream(gen: OpenAiGenerator, req: GenerateRequest) -> impl Stream<Item = Result<String>> {
    futures::stream::unfold(State::Start(Box::new(gen), Box::new(req)), step)
}

impl Generator for OpenAiGenerator {
    fn id(&self) -> String {
        format!("openai:{}@{}", self.cfg.model, self.cfg.base_url)
    }

    fn context_tokens(&self) -> usize {
        self.cfg.context_tokens
    }

    fn count_tokens(&self, text: &str) -> usize {
        estimate_tokens(text)
    }

    fn generate(&self, req: GenerateRequest) -> BoxStream<'static, Result<String>> {
        chat_stream(self.clone(), req).boxed()
    }
}

/// Configuration of [`OpenAiEmbedder`]: the server fields of
/// [`OpenAiConfig`] plus embedding options (one flat TOML table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiEmbedderConfig {
    /// Base URL including the API prefix, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub model: String,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed for one whole embeddings request.
    #[serde(default = "default_request_ms")]
    pub request_timeout_ms: u64,
    /// Vector dimension; `None` asks the server once at construction.
    #[serde(default)]
    pub dim: Option<usize>,
    /// Longest input in (estimated) tokens; the chunker keeps chunks below it.
    #[serde(default = "default_embed_max")]
    pub max_tokens: usize,
    /// Inputs per request.
    #[serde(default = "default_embed_batch")]
    pub batch_size: usize,
}

fn default_embed_max() -> usize {
    512
}
fn default_embed_batch() -> usize {
    64
}

impl OpenAiEmbedderConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            connect_timeout_ms: default_connect_ms(),
            request_timeout_ms: default_request_ms(),
            dim: None,
            max_tokens: default_embed_max(),
            batch_size: default_embed_batch(),
        }
    }

    fn url(&self) -> String {
        format!("{}/embeddings", self.base_url.trim_end_matches('/'))
    }
}

/// Embeddings from `/embeddings`. Blocking (as [`Embedder`] is): call it from
/// a blocking thread, never from inside an async task.
pub struct OpenAiEmbedder {
    cfg: OpenAiEmbedderConfig,
    dim: usize,
    client: reqwest::blocking::Client,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
    index: usize,
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingItem>,
}

impl OpenAiEmbedder {
    /// Build the client; when `dim` is not configured, embeds one probe text
    /// to learn it (so an unreachable server is reported here, clearly).
    pub fn new(cfg: OpenAiEmbedderConfig) -> Result<Self> {
        let s = &cfg;
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_millis(s.connect_timeout_ms))
            .timeout(Duration::from_millis(s.request_timeout_ms));
        if let Some(key) = &s.api_key {
            let mut headers = reqwest::header::HeaderMap::new();
            let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| RagError::InvalidInput("api_key has invalid characters".into()))?;
            headers.insert(reqwest::header::AUTHORIZATION, v);
            builder = builder.default_headers(headers);
        }
        let client = builder
            .build()
            .map_err(|e| RagError::Upstream(format!("building HTTP client: {e}")))?;
        let mut me = Self {
            dim: cfg.dim.unwrap_or(0),
            cfg,
            client,
        };
        if me.cfg.dim.is_none() {
            let probe = me.request(&["dimension probe"])?;
            me.dim = probe.first().map(Vec::len).unwrap_or(0);
            if me.dim == 0 {
                return Err(RagError::Upstream(format!(
                    "{} returned an empty embedding",
                    me.cfg.url()
                )));
            }
        }
        Ok(me)
    }

    fn request(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let url = self.cfg.url();
        let body = json!({"model": self.cfg.model, "input": texts});
        let resp = self
            .client
            .post(&url)
            .json(&body)
            .send()
            .map_err(|e| unreachable(&url, &e))?;
        let status = resp.status();
        let text = resp.text().map_err(|e| unreachable(&url, &e))?;
        if !status.is_success() {
            return Err(status_error(&url, status, &text));
        }
        let parsed: EmbeddingResponse = serde_json::from_str(&text).map_err(|e| {
            RagError::Upstream(format!("{url} sent an unexpected embeddings body: {e}"))
        })?;
        if parsed.data.len() != texts.len() {
            return Err(RagError::Upstream(format!(
                "{url} returned {} embeddings for {} inputs",
                parsed.data.len(),
                texts.len()
            )));
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for item in parsed.data {
            let slot = out.get_mut(item.index).ok_or_else(|| {
                RagError::Upstream(format!(
                    "{url} returned embedding index {} out of range",
                    item.index
                ))
            })?;
            let mut v = item.embedding;
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
            *slot = Some(v);
        }
        out.into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.ok_or_else(|| {
                    RagError::Upstream(format!("{url} returned no embedding for input {i}"))
                })
            })
            .collect()
    }
}

impl Embedder for OpenAiEmbedder {
    fn id(&self) -> String {
        format!("openai:{}@{}", self.cfg.model, self.cfg.base_url)
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn max_tokens(&self) -> usize {
        self.cfg.max_tokens
    }

    fn count_tokens(&self, text: &str) -> usize {
        estimate_tokens(text)
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.cfg.batch_size.max(1)) {
            let vecs = self.request(batch)?;
            if let Some(v) = vecs.iter().find(|v| v.len() != self.dim) {
                return Err(RagError::Upstream(format!(
                    "{} returned a {}-dimensional embedding, expected {}",
                    self.cfg.url(),
                    v.len(),
                    self.dim
                )));
            }
            out.extend(vecs);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_lines_crlf_and_multiline_data() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"a\"").is_empty());
        assert_eq!(p.push(b":1}\r\n\r\n: comment\n"), vec!["{\"a\":1}"]);
        assert_eq!(
            p.push(b"event: x\ndata: one\ndata: two\n\n"),
            vec!["one\ntwo"]
        );
        assert!(p.push(b"data: [DONE]").is_empty());
        assert_eq!(p.finish().as_deref(), Some("[DONE]"));
    }

    #[test]
    fn chunk_delta_reads_content_and_errors() {
        let u = "http://x/v1/chat/completions";
        let d = r#"{"choices":[{"delta":{"content":"Hi"},"index":0}]}"#;
        assert_eq!(chunk_delta(u, d).expect("ok").as_deref(), Some("Hi"));
        let role_only = r#"{"choices":[{"delta":{"role":"assistant"},"index":0}]}"#;
        assert_eq!(chunk_delta(u, role_only).expect("ok"), None);
        let err =
            chunk_delta(u, r#"{"error":{"message":"model overloaded"}}"#).expect_err("error chunk");
        assert!(err.to_string().contains("model overloaded"), "{err}");
        assert!(chunk_delta(u, "not json").is_err());
    }
}
