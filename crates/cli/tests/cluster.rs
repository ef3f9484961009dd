//! End-to-end cluster tests with real processes: the built `ragfleet`
//! binary as nodes and gateway, the real embedding model (and SmolLM2 where
//! an answer must take a while), the PostgreSQL and Redis of this machine,
//! and an etcd (Debian's `etcd`) started here on free ports.
//!
//! The tests run one at a time (they share two cores).
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "../../rag/tests/store_support/private_pg.rs"]
mod private_pg;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const BIN: &str = env!("CARGO_BIN_EXE_ragfleet");
const REDIS: &str = "redis://127.0.0.1:6379";
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

fn models() -> PathBuf {
    let m = std::env::var_os("RAGFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    assert!(
        m.join("all-minilm-l6-v2").is_dir(),
        "models missing in {} (scripts/fetch-models.sh)",
        m.display()
    );
    m
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tail(path: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(path).unwrap_or_default();
    let l: Vec<&str> = t.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

/// A child process, killed (SIGKILL) when dropped.
struct Proc {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(name: &str, program: &str, args: Vec<String>, log: PathBuf) -> Proc {
        let mut p = Proc {
            name: name.into(),
            args,
            log,
            child: None,
        };
        p.start(program);
        p
    }

    fn start(&mut self, program: &str) {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(program)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        self.child = Some(child);
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit (after a signal), at most `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut().expect("running");
            if let Some(s) = c.try_wait().unwrap() {
                self.child = None;
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {timeout:?}; log:\n{}",
                    self.name,
                    tail(&self.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        format!("--- {} ---\n{}", self.name, tail(&self.log, 40))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `ragfleet node` process.
struct NodeProc {
    proc: Proc,
    id: String,
    addr: SocketAddr,
}

impl NodeProc {
    fn spawn(dir: &Path, id: &str, store_url: &str, extra: &[&str]) -> NodeProc {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut args: Vec<String> = vec![
            "node".into(),
            "--listen".into(),
            addr.to_string(),
            "--data".into(),
            dir.join(id).display().to_string(),
            "--models".into(),
            models().display().to_string(),
            "--node-id".into(),
            id.into(),
            "--store-url".into(),
            store_url.into(),
            // These tests are about replication and failover; auth has its
            // own tests (crates/node/tests/auth.rs, the `up` tests below).
            "--no-auth".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn(id, BIN, args, dir.join(format!("{id}.log")));
        NodeProc {
            proc,
            id: id.into(),
            addr,
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// Start the same node again (same port, data and flags).
    fn restart(&mut self) {
        self.proc.start(BIN);
    }
}

async fn wait_ready(http: &reqwest::Client, base: &str, what: &str, logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if let Ok(r) = http.get(format!("{base}/ready")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what} never became ready\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client sending the admin key `up` wrote into `data`.
fn client_with_key_file(data: &Path) -> reqwest::Client {
    let key = std::fs::read_to_string(data.join("admin.key")).expect("up wrote admin.key");
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", key.trim()).parse().unwrap(),
    );
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .default_headers(h)
        .build()
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = http.post(url).json(body).send().await.unwrap();
    let s = r.status().as_u16();
    let t = r.text().await.unwrap();
    (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = http.get(url).send().await.unwrap();
    let s = r.status().as_u16();
    let t = r.text().await.unwrap();
    (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// Reads SSE events from a streamed response.
struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    fn new(resp: reqwest::Response) -> Self {
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The next event; `Ok(None)` at the end of the body; `Err` when the
    /// connection broke.
    async fn next(&mut self) -> Result<Option<Sse>, String> {
        loop {
            let norm = self.buf.replace("\r\n", "\n");
            if let Some(i) = norm.find("\n\n") {
                let block = norm[..i].to_string();
                self.buf = norm[i + 2..].to_string();
                let mut ev = Sse {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        ev.id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().into();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                ev.data = serde_json::from_str(&data.join("\n")).unwrap_or(Value::Null);
                return Ok(Some(ev));
            }
            match self.resp.chunk().await {
                Ok(Some(c)) => self.buf.push_str(&String::from_utf8_lossy(&c)),
                Ok(None) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// An etcd of our own on free ports.
struct Etcd {
    _proc: Proc,
    url: String,
}

impl Etcd {
    async fn start(dir: &Path) -> Etcd {
        let (c, p) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{c}");
        let peer = format!("http://127.0.0.1:{p}");
        let args = vec![
            "--name".into(),
            "e2e".into(),
            "--data-dir".into(),
            dir.join("etcd-data").display().to_string(),
            "--listen-client-urls".into(),
            url.clone(),
            "--advertise-client-urls".into(),
            url.clone(),
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            format!("e2e={peer}"),
        ];
        let proc = Proc::spawn("etcd", "etcd", args, dir.join("etcd.log"));
        let http = client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{url}/health")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not start\n{}",
                proc.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Etcd { _proc: proc, url }
    }

    /// The value and lease of a key, if present.
    async fn get(&self, key: &str) -> Option<(Value, i64)> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let (s, v) = post(
            &client(),
            &format!("{}/v3/kv/range", self.url),
            &json!({"key": b64.encode(key)}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let kv = v["kvs"].as_array()?.first()?.clone();
        let value = b64.decode(kv["value"].as_str()?).ok()?;
        let lease = kv["lease"]
            .as_str()
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        Some((serde_json::from_slice(&value).ok()?, lease))
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

const DOC: &str = "The zorblax reactor on Kepler station runs on liquid helium. \
It was built in 2091 by the engineer Mira Okafor, who named it after her cat.";

// ---------------------------------------------------------------------------

/// Two nodes on one PostgreSQL store (and Redis conversation memory): a
/// document ingested through A is found through B within 2 s, and a
/// conversation started on A continues on B with its history.
#[test]
fn postgres_store_replicates_and_conversations_move_between_nodes() {
    let _g = serial();
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let schema = unique("e2e");
        let cfg = dir.path().join("node.toml");
        std::fs::write(
            &cfg,
            format!("[store]\nurl = \"{POSTGRES}\"\nschema = \"{schema}\"\n"),
        )
        .unwrap();
        let cfg_s = cfg.display().to_string();
        let extra = ["--config", cfg_s.as_str(), "--redis-url", REDIS];
        let a = NodeProc::spawn(dir.path(), "pg-a", POSTGRES, &extra);
        let http = client();
        wait_ready(&http, &a.base(), "node A", || a.proc.logs()).await;
        let b = NodeProc::spawn(dir.path(), "pg-b", POSTGRES, &extra);
        wait_ready(&http, &b.base(), "node B", || b.proc.logs()).await;
        let logs = || format!("{}\n{}", a.proc.logs(), b.proc.logs());

        let (s, v) = post(
            &http,
            &a.url("/api/v1/documents"),
            &json!({"id": "zorblax", "title": "Zorblax reactor", "text": DOC}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let ingested = Instant::now();
        let mut found_after = None;
        while ingested.elapsed() < Duration::from_secs(2) {
            let (s, v) = get(
                &http,
                &b.url("/api/v1/search?query=zorblax%20reactor%20helium&top_k=3"),
            )
            .await;
            assert_eq!(s, 200, "{v}");
            if v["hits"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["doc_id"] == "zorblax")
            {
                found_after = Some(ingested.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            found_after.is_some(),
            "node B did not find the document ingested through A within 2 s\n{}",
            logs()
        );

        // A conversation begun on A…
        let (s, first) = post(
            &http,
            &a.url("/api/v1/chat"),
            &json!({"message": "What does the zorblax reactor run on?"}),
        )
        .await;
        assert_eq!(s, 200, "{first}");
        assert!(
            first["answer"].as_str().unwrap().contains("helium"),
            "{first}"
        );
        let conv = first["conversation_id"].as_str().unwrap().to_string();
        // …continues on B, which sees its history.
        let (s, second) = post(
            &http,
            &b.url("/api/v1/chat"),
            &json!({"message": "Who built it?", "conversation_id": conv}),
        )
        .await;
        assert_eq!(s, 200, "{second}");
        assert_eq!(second["conversation_id"], conv.as_str());
        let (s, c) = get(&http, &b.url(&format!("/api/v1/conversations/{conv}"))).await;
        assert_eq!(s, 200, "{c}");
        let turns = c["turns"].as_array().unwrap();
        assert_eq!(turns.len(), 4, "{c}");
        assert_eq!(turns[0]["content"], "What does the zorblax reactor run on?");
        assert_eq!(turns[2]["content"], "Who built it?");
        // B's prompt carried A's exchange.
        let run = second["run_id"].as_str().unwrap();
        let (s, snap) = get(&http, &b.url(&format!("/api/v1/runs/{run}"))).await;
        assert_eq!(s, 200, "{snap}");
        let prompt = snap["prompt"].to_string();
        assert!(
            prompt.contains("What does the zorblax reactor run on?"),
            "history missing from B's prompt: {prompt}"
        );

        drop(a);
        drop(b);
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc"])
            .arg(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .output();
    });
}

/// A client whose connection to node A breaks mid-answer resumes at node B
/// with `Last-Event-ID` and receives exactly the remaining events, while A
/// keeps producing them (Redis carries them across).
#[test]
fn a_broken_stream_resumes_on_another_node() {
    let _g = serial();
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("sqlite://{}", dir.path().join("store.db").display());
        let http = client();
        let a = NodeProc::spawn(
            dir.path(),
            "res-a",
            &store,
            &["--generator", "local", "--redis-url", REDIS],
        );
        wait_ready(&http, &a.base(), "node A", || a.proc.logs()).await;
        let b = NodeProc::spawn(dir.path(), "res-b", &store, &["--redis-url", REDIS]);
        wait_ready(&http, &b.base(), "node B", || b.proc.logs()).await;
        let logs = || format!("{}\n{}", a.proc.logs(), b.proc.logs());
        let (s, v) = post(
            &http,
            &a.url("/api/v1/documents"),
            &json!({"id": "zorblax", "title": "Zorblax reactor", "text": DOC}),
        )
        .await;
        assert_eq!(s, 201, "{v}");

        let resp = http
            .post(a.url("/api/v1/chat"))
            .json(
                &json!({"message": "Describe the zorblax reactor on Kepler station and its history.",
                "stream": true, "max_tokens": 160, "temperature": 0.0}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let run_id = resp.headers()["x-ragfleet-run-id"]
            .to_str()
            .unwrap()
            .to_string();
        let mut sse = SseReader::new(resp);
        let mut seen = Vec::new();
        while seen.iter().filter(|e: &&Sse| e.event == "token").count() < 3 {
            let ev = sse.next().await.unwrap().expect("stream ended early");
            assert_ne!(ev.event, "done", "answer too short to test a resume");
            seen.push(ev);
        }
        assert_eq!(seen[0].event, "retrieval");
        assert_eq!(seen[0].data["run_id"], run_id.as_str());
        drop(sse); // the connection breaks
        let last = seen.last().unwrap().id.unwrap();

        let resp = http
            .get(b.url(&format!("/api/v1/chat/runs/{run_id}/events")))
            .header("Last-Event-ID", last.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", logs());
        assert_eq!(resp.headers()["x-ragfleet-node"], "res-b");
        let mut sse = SseReader::new(resp);
        let mut rest = Vec::new();
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(120), sse.next())
                .await
                .expect("resumed stream stalled")
                .unwrap()
                .expect("resumed stream ended without done");
            let end = ev.event == "done" || ev.event == "error";
            rest.push(ev);
            if end {
                break;
            }
        }
        let done = rest.last().unwrap();
        assert_eq!(done.event, "done", "{:?}\n{}", done.data, logs());
        // Ids continue exactly where the client left off.
        for (i, ev) in rest.iter().enumerate() {
            assert_eq!(ev.id, Some(last + 1 + i as u64), "{rest:?}");
        }
        let text: String = seen
            .iter()
            .chain(rest.iter())
            .filter(|e| e.event == "token")
            .map(|e| e.data["text"].as_str().unwrap().to_string())
            .collect();
        // The delivered answer is the streamed text with each sentence's
        // attribution markers set (`[n]` or `[?]`).
        assert_eq!(
            ragfleet_rag::answer::strip_markers(done.data["answer"].as_str().unwrap()),
            ragfleet_rag::answer::strip_markers(&text)
        );
        assert!(rest.iter().filter(|e| e.event == "token").count() > 3);

        // The whole answer again from the start (?after absent), from A's memory.
        let resp = http
            .get(a.url(&format!("/api/v1/chat/runs/{run_id}/events")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        assert_eq!(
            body.matches("event: token").count(),
            seen.iter()
                .chain(rest.iter())
                .filter(|e| e.event == "token")
                .count()
        );
        // Unknown runs and bad ids are clear errors.
        let (s, v) = get(&http, &b.url("/api/v1/chat/runs/nope-123/events")).await;
        assert_eq!(s, 404, "{v}");
        let r = http
            .get(b.url(&format!("/api/v1/chat/runs/{run_id}/events")))
            .header("Last-Event-ID", "abc")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    });
}

fn gateway_toml(listen: SocketAddr, nodes: &[SocketAddr]) -> String {
    let servers: Vec<String> = nodes
        .iter()
        .map(|a| format!("  {{ addr = \"{a}\" }},"))
        .collect();
    format!(
        "[listen]\naddr = \"{listen}\"\nshutdown_timeout = \"10s\"\n\n[[route]]\nprefix = \"/\"\npool = \"nodes\"\n\n\
[pool.nodes]\npolicy = \"p2c\"\nmax_fails = 1\nfail_timeout = \"3s\"\nservers = [\n{}\n]\n\n\
[pool.nodes.health]\npath = \"/ready\"\ninterval = \"1s\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n\n\
[pool.nodes.retries]\nnon_idempotent = true\n\n\
[pool.nodes.timeouts]\nconnect = \"1s\"\n",
        servers.join("\n")
    )
}

/// A `ragfleet gateway` process in front of `nodes` ([`gateway_toml`]),
/// ready; returns it with its base URL.
async fn start_gateway(http: &reqwest::Client, dir: &Path, nodes: &[NodeProc]) -> (Proc, String) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = dir.join("gateway.toml");
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    std::fs::write(&cfg, gateway_toml(addr, &addrs)).unwrap();
    let gw = Proc::spawn(
        "gateway",
        BIN,
        vec![
            "gateway".into(),
            "--config".into(),
            cfg.display().to_string(),
        ],
        dir.join("gateway.log"),
    );
    let base = format!("http://{addr}");
    wait_ready(http, &base, "gateway", || gw.logs()).await;
    (gw, base)
}

#[derive(Default, Debug)]
struct LoadStats {
    ok: u64,
    failed: Vec<String>,
}

/// Three nodes behind the gateway under a steady load of searches and
/// chats; one node is SIGKILLed. No non-streaming request fails; the stream
/// that was on the killed node ends with the gateway's `error` event
/// (`upstream_lost`, never a hang) and its resume from another node ends
/// with the node's `error` event (`run_lost`); the node restarts, catches
/// up and takes traffic again.
#[test]
fn killing_a_node_under_load_costs_nothing() {
    let _g = serial();
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("sqlite://{}", dir.path().join("store.db").display());
        let http = client();
        let extra = ["--generator", "local", "--redis-url", REDIS];
        let mut nodes = vec![NodeProc::spawn(dir.path(), "kill-1", &store, &extra)];
        wait_ready(&http, &nodes[0].base(), "node 1", || nodes[0].proc.logs()).await;
        nodes.push(NodeProc::spawn(dir.path(), "kill-2", &store, &extra));
        nodes.push(NodeProc::spawn(dir.path(), "kill-3", &store, &extra));
        for n in &nodes {
            wait_ready(&http, &n.base(), &n.id, || n.proc.logs()).await;
        }
        let (mut gw, gw_base) = start_gateway(&http, dir.path(), &nodes).await;
        let (s, v) = post(
            &http,
            &format!("{gw_base}/api/v1/documents"),
            &json!({"id": "zorblax", "title": "Zorblax reactor", "text": DOC}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        // Every node has it before the load starts.
        for n in &nodes {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let (_, v) = get(&http, &n.url("/api/v1/search?query=zorblax&mode=lexical")).await;
                if v["hits"].as_array().is_some_and(|h| !h.is_empty()) {
                    break;
                }
                assert!(Instant::now() < deadline, "{} never caught up", n.id);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        // Steady load: searches (GET) and chats (POST, extractive) through the gateway.
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut load = Vec::new();
        for w in 0..4 {
            let stop = stop.clone();
            let base = gw_base.clone();
            load.push(tokio::spawn(async move {
                let http = client();
                let mut st = LoadStats::default();
                let mut i = 0u64;
                while !*stop.borrow() {
                    i += 1;
                    let res = if (w + i).is_multiple_of(2) {
                        http.get(format!("{base}/api/v1/search?query=zorblax%20reactor&top_k=3"))
                            .send()
                            .await
                    } else {
                        http.post(format!("{base}/api/v1/chat"))
                            .json(&json!({"message": "What does the zorblax reactor run on?",
                                "generator": "extractive"}))
                            .send()
                            .await
                    };
                    match res {
                        Ok(r) if r.status().is_success() => match r.bytes().await {
                            Ok(_) => st.ok += 1,
                            Err(e) => st.failed.push(format!("body: {e}")),
                        },
                        Ok(r) => {
                            let s = r.status();
                            let t = r.text().await.unwrap_or_default();
                            st.failed.push(format!("{s}: {t}"));
                        }
                        Err(e) => st.failed.push(format!("request: {e}")),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                st
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;

        // A long streamed answer; the node serving it is the one to kill.
        let resp = http
            .post(format!("{gw_base}/api/v1/chat"))
            .json(&json!({"message": "Describe the zorblax reactor on Kepler station and its history.",
                "stream": true, "max_tokens": 400}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let victim_id = resp.headers()["x-ragfleet-node"].to_str().unwrap().to_string();
        let run_id = resp.headers()["x-ragfleet-run-id"].to_str().unwrap().to_string();
        let mut sse = SseReader::new(resp);
        let mut last = None;
        let mut tokens = 0;
        while tokens < 3 {
            let ev = sse.next().await.unwrap().expect("stream ended early");
            assert_ne!(ev.event, "done", "answer too short");
            if ev.event == "token" {
                tokens += 1;
            }
            last = ev.id;
        }
        let vi = nodes.iter().position(|n| n.id == victim_id).unwrap();
        nodes[vi].proc.kill9();
        let killed_at = Instant::now();

        // The stream through the gateway ends with an `error` event (the
        // gateway appends one when the upstream cuts an event stream): no
        // done, no hang.
        let ended = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match sse.next().await {
                    Ok(Some(ev)) => {
                        assert_ne!(ev.event, "done", "the killed node cannot finish");
                        if ev.event == "error" {
                            return format!("error event {}", ev.data["code"]);
                        }
                        last = ev.id.or(last);
                    }
                    Ok(None) => return "closed without an error event".to_string(),
                    Err(e) => return format!("broken: {e}"),
                }
            }
        })
        .await
        .expect("the stream on the killed node hangs");
        assert_eq!(ended, "error event \"upstream_lost\"");

        // Resuming through the gateway (another node, from Redis): the
        // remaining buffered events, then an error event — never a hang.
        let resp = http
            .get(format!("{gw_base}/api/v1/chat/runs/{run_id}/events"))
            .header("Last-Event-ID", last.unwrap().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_ne!(resp.headers()["x-ragfleet-node"], victim_id.as_str());
        let mut sse = SseReader::new(resp);
        let final_ev = tokio::time::timeout(Duration::from_secs(20), async {
            let mut expect = last.unwrap() + 1;
            loop {
                let ev = sse.next().await.unwrap().expect("resume ended without an event");
                if let Some(id) = ev.id {
                    assert_eq!(id, expect, "gap in the resumed events");
                    expect += 1;
                }
                if ev.event == "error" || ev.event == "done" {
                    return ev;
                }
            }
        })
        .await
        .expect("the resumed stream of a dead node's answer hangs");
        assert_eq!(final_ev.event, "error");
        assert_eq!(final_ev.data["code"], "run_lost", "{:?}", final_ev.data);

        // A document ingested while the node is down.
        let (s, v) = post(
            &http,
            &format!("{gw_base}/api/v1/documents"),
            &json!({"id": "quasar", "title": "Quasar pump", "text": "The quasar pump moves plasma through the Vetch conduit every ninety seconds."}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(killed_at.elapsed())).await;

        // The node comes back, catches up, rejoins.
        nodes[vi].restart();
        let victim = &nodes[vi];
        wait_ready(&http, &victim.base(), "restarted node", || victim.proc.logs()).await;
        let (_, v) = get(&http, &victim.url("/api/v1/search?query=quasar%20pump%20plasma&mode=lexical")).await;
        assert!(
            v["hits"].as_array().unwrap().iter().any(|h| h["doc_id"] == "quasar"),
            "restarted node did not catch up: {v}"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = http
                .get(format!("{gw_base}/api/v1/search?query=zorblax"))
                .send()
                .await
                .unwrap();
            if r.headers().get("x-ragfleet-node").is_some_and(|h| h == victim_id.as_str()) {
                break;
            }
            assert!(Instant::now() < deadline, "the restarted node gets no traffic");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let _ = stop_tx.send(true);
        let mut ok = 0;
        let mut failed = Vec::new();
        for l in load {
            let st = l.await.unwrap();
            ok += st.ok;
            failed.extend(st.failed);
        }
        assert!(ok > 50, "too little load: {ok}");
        assert!(
            failed.is_empty(),
            "{} of {} requests failed: {:?}\n{}",
            failed.len(),
            ok + failed.len() as u64,
            &failed[..failed.len().min(5)],
            gw.logs()
        );

        // Everything stops cleanly.
        gw.signal(libc::SIGTERM);
        assert!(gw.wait_exit(Duration::from_secs(20)).success());
        for n in nodes.iter_mut() {
            n.proc.signal(libc::SIGTERM);
            let s = n.proc.wait_exit(Duration::from_secs(30));
            assert!(s.success(), "{} exited with {s}\n{}", n.id, n.proc.logs());
        }
    });
}

/// What one load worker saw.
#[derive(Default, Debug)]
struct PgLoad {
    /// Documents whose ingestion was acknowledged (201).
    acked_docs: Vec<String>,
    /// Chats acknowledged (200): (conversation, question).
    acked_chats: Vec<(String, String)>,
    ok: u64,
    /// Failures that were a prompt JSON 503 (the store unreachable, or no
    /// node ready while the database was down).
    unavailable: u64,
    /// Anything else: other statuses, broken or timed-out requests.
    bad: Vec<String>,
}

/// Three node processes on a PostgreSQL store behind the gateway, under a
/// steady load of ingests, chats and searches, while PostgreSQL is killed
/// (immediate shutdown: no checkpoint) and started again. Requests that need
/// the database while it is down fail promptly with a JSON 503 (never a
/// hang, never a 500); the nodes reconnect by themselves; every acknowledged
/// document is found on every node and every acknowledged chat turn is in
/// its conversation.
#[test]
fn postgres_restart_under_load_behind_the_gateway_loses_nothing_acknowledged() {
    let _g = serial();
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let pg = private_pg::PrivatePostgres::start();
        let store = pg.url();
        let http = client();
        let extra = ["--generator", "extractive"];
        let mut nodes = Vec::new();
        for id in ["pgr-1", "pgr-2", "pgr-3"] {
            let n = NodeProc::spawn(dir.path(), id, &store, &extra);
            wait_ready(&http, &n.base(), id, || n.proc.logs()).await;
            nodes.push(n);
        }
        let (gw, gw_base) = start_gateway(&http, dir.path(), &nodes).await;
        let (s, v) = post(
            &http,
            &format!("{gw_base}/api/v1/documents"),
            &json!({"id": "zorblax", "title": "Zorblax reactor", "text": DOC}),
        )
        .await;
        assert_eq!(s, 201, "{v}");

        // Load: one ingester, one chatter (one conversation, continued), one searcher.
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut workers = Vec::new();
        for w in 0..3u32 {
            let stop = stop.clone();
            let base = gw_base.clone();
            workers.push(tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(40))
                    .build()
                    .unwrap();
                let mut st = PgLoad::default();
                let mut conv: Option<String> = None;
                let mut i = 0u32;
                while !*stop.borrow() {
                    i += 1;
                    let (req, doc, question) = match w {
                        0 => {
                            let id = format!("pgr-doc-{i}");
                            let body = json!({"id": id, "title": format!("Load {i}"),
                                "text": format!("Load document {i} carries the marker pgrmark{i}x.")});
                            (http.post(format!("{base}/api/v1/documents")).json(&body), Some(id), None)
                        }
                        1 => {
                            let q = format!("Question {i}: what does the zorblax reactor run on?");
                            let mut body = json!({"message": q});
                            if let Some(c) = &conv {
                                body["conversation_id"] = json!(c);
                            }
                            (http.post(format!("{base}/api/v1/chat")).json(&body), None, Some(q))
                        }
                        _ => (
                            http.get(format!("{base}/api/v1/search?query=zorblax%20reactor&top_k=3")),
                            None,
                            None,
                        ),
                    };
                    let started = Instant::now();
                    match req.send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let text = r.text().await.unwrap_or_default();
                            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                            match status {
                                200 | 201 => {
                                    st.ok += 1;
                                    if let Some(id) = doc {
                                        st.acked_docs.push(id);
                                    }
                                    if let Some(q) = question {
                                        let c = v["conversation_id"].as_str().unwrap_or_default();
                                        conv = Some(c.to_string());
                                        st.acked_chats.push((c.to_string(), q));
                                    }
                                }
                                503 if v["error"]["code"].is_string() => st.unavailable += 1,
                                _ => st.bad.push(format!("{status} after {:?}: {text}", started.elapsed())),
                            }
                        }
                        Err(e) => st.bad.push(format!("request after {:?}: {e}", started.elapsed())),
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                st
            }));
        }
        // Some acknowledged work before the restart. The outage outlasts the
        // nodes' store connect timeout (5 s), so requests do fail meanwhile.
        tokio::time::sleep(Duration::from_secs(3)).await;
        pg.stop_immediate();
        let down_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(8)).await;
        pg.start_again();
        let up_at = Instant::now();
        eprintln!("PostgreSQL was down for {:?}", up_at - down_at);

        // Recovery: every node ready again, and an ingest through the gateway works.
        for n in &nodes {
            wait_ready(&http, &n.base(), &n.id, || n.proc.logs()).await;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (s, _) = post(
                &http,
                &format!("{gw_base}/api/v1/documents"),
                &json!({"id": "after", "title": "After", "text": "Written after the restart: marker pgrafterx."}),
            )
            .await;
            if s == 201 {
                break;
            }
            assert!(Instant::now() < deadline, "ingest never recovered\n{}", gw.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("recovered {:?} after PostgreSQL came back", up_at.elapsed());
        // Keep the load on a little longer after the recovery.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = stop_tx.send(true);
        let mut all = PgLoad::default();
        for w in workers {
            let st = w.await.unwrap();
            all.ok += st.ok;
            all.unavailable += st.unavailable;
            all.bad.extend(st.bad);
            all.acked_docs.extend(st.acked_docs);
            all.acked_chats.extend(st.acked_chats);
        }
        eprintln!(
            "{} ok, {} prompt 503s while the database was down, {} acknowledged ingests, {} chats",
            all.ok,
            all.unavailable,
            all.acked_docs.len(),
            all.acked_chats.len()
        );
        assert!(
            all.bad.is_empty(),
            "requests failed other than with a prompt 503: {:?}\n{}",
            &all.bad[..all.bad.len().min(5)],
            gw.logs()
        );
        assert!(all.unavailable > 0, "the restart was not felt: is PostgreSQL really stopped?");
        assert!(all.acked_docs.len() >= 10, "too little load: {:?}", all.acked_docs.len());
        assert!(all.acked_chats.len() >= 5, "too few chats: {}", all.acked_chats.len());

        // Nothing acknowledged is lost: every document on every node's
        // indexes (and in the store), every chat turn in its conversation.
        all.acked_docs.push("after".into());
        for n in &nodes {
            for id in &all.acked_docs {
                let (s, v) = get(&http, &n.url(&format!("/api/v1/documents/{id}"))).await;
                assert_eq!(s, 200, "{id} lost (node {}): {v}", n.id);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            for id in &all.acked_docs {
                let marker = match id.strip_prefix("pgr-doc-") {
                    Some(i) => format!("pgrmark{i}x"),
                    None => "pgrafterx".to_string(),
                };
                loop {
                    let (_, v) = get(&http, &n.url(&format!("/api/v1/search?query={marker}&mode=lexical"))).await;
                    if v["hits"].as_array().is_some_and(|h| h.iter().any(|h| h["doc_id"] == id.as_str())) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "{id} not searchable on {}: {v}", n.id);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let mut by_conv: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (c, q) in &all.acked_chats {
            by_conv.entry(c.clone()).or_default().push(q.clone());
        }
        for (c, questions) in &by_conv {
            let (s, v) = get(&http, &format!("{gw_base}/api/v1/conversations/{c}")).await;
            assert_eq!(s, 200, "conversation {c}: {v}");
            let users: Vec<&str> = v["turns"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["role"] == "user")
                .filter_map(|t| t["content"].as_str())
                .collect();
            for q in questions {
                assert!(users.contains(&q.as_str()), "acknowledged turn {q:?} lost from {c}");
            }
        }
        drop(gw);
        drop(nodes);
    });
}

/// A node registers in etcd once ready, registers again when its lease is
/// revoked behind its back, and on SIGTERM leaves etcd at once, turns
/// `/ready` to 503, finishes its in-flight answer and exits 0.
#[test]
fn node_registers_in_etcd_and_drains_on_sigterm() {
    let _g = serial();
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let etcd = Etcd::start(dir.path()).await;
        let store = format!("sqlite://{}", dir.path().join("store.db").display());
        let http = client();
        // /ready answers 503 for 3 s after SIGTERM before the listener closes.
        let cfg = dir.path().join("node.toml");
        std::fs::write(&cfg, "[shutdown]\ndrain_delay_ms = 3000\n").unwrap();
        let cfg = cfg.display().to_string();
        let mut n = NodeProc::spawn(
            dir.path(),
            "etcd-n1",
            &store,
            &[
                "--etcd",
                &etcd.url,
                "--etcd-lease-ttl",
                "4",
                "--generator",
                "local",
                "--config",
                &cfg,
            ],
        );
        wait_ready(&http, &n.base(), "node", || n.proc.logs()).await;
        let key = "/ragfleet/nodes/etcd-n1";
        let wait_key = |want: bool, not_lease: i64| {
            let etcd = &etcd;
            async move {
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    let got = etcd.get(key).await;
                    match (&got, want) {
                        (Some((_, lease)), true) if *lease != not_lease => return got,
                        (None, false) => return None,
                        _ => {}
                    }
                    assert!(
                        Instant::now() < deadline,
                        "etcd key {key}: want present={want}, got {got:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let (value, lease) = wait_key(true, 0).await.unwrap();
        assert_eq!(value["addr"], n.addr.to_string());
        assert_eq!(value["weight"], 1);
        assert_ne!(lease, 0, "the key must be bound to a lease");

        // The lease disappears (etcd restarted, a long pause…): the node registers again.
        let (s, v) = post(
            &http,
            &format!("{}/v3/lease/revoke", etcd.url),
            &json!({"ID": lease.to_string()}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let (value2, lease2) = wait_key(true, lease).await.unwrap();
        assert_eq!(value2, value);
        assert_ne!(lease2, lease);

        // Draining with an answer in flight.
        let (s, v) = post(
            &http,
            &n.url("/api/v1/documents"),
            &json!({"id": "zorblax", "title": "Zorblax reactor", "text": DOC}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let resp = http
            .post(n.url("/api/v1/chat"))
            .json(
                &json!({"message": "Describe the zorblax reactor on Kepler station and its history.",
                "stream": true, "max_tokens": 120}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut sse = SseReader::new(resp);
        loop {
            let ev = sse.next().await.unwrap().unwrap();
            if ev.event == "token" {
                break;
            }
        }
        n.proc.signal(libc::SIGTERM);
        // Gone from etcd while the answer is still being written.
        let deadline = Instant::now() + Duration::from_secs(3);
        while etcd.get(key).await.is_some() {
            assert!(
                Instant::now() < deadline,
                "still registered after SIGTERM\n{}",
                n.proc.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = http.get(n.url("/ready")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        let mut end = None;
        while let Some(ev) = sse.next().await.unwrap() {
            if ev.event == "done" || ev.event == "error" {
                end = Some(ev);
                break;
            }
        }
        assert_eq!(end.expect("stream ended without done").event, "done");
        let s = n.proc.wait_exit(Duration::from_secs(30));
        assert!(s.success(), "exit {s}\n{}", n.proc.logs());
        drop(etcd);
    });
}

/// Stops `ragfleet up` (SIGINT, then SIGKILL) if a test fails while it runs.
struct UpGuard(Child);

impl std::ops::Deref for UpGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for UpGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for UpGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe {
                libc::kill(self.0.id() as i32, libc::SIGINT);
            }
            let deadline = Instant::now() + Duration::from_secs(40);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A running `ragfleet up`: the process, what it printed on stdout up to
/// "Ctrl-C stops everything", and its stderr (collected as it comes).
fn spawn_up(
    dir: &Path,
    port: u16,
    extra: &[&str],
) -> (UpGuard, Vec<String>, std::sync::Arc<Mutex<String>>) {
    let child = Command::new(BIN)
        .args(["up", "--nodes", "2", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--models")
        .arg(models())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = UpGuard(child);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = child.stderr.take().unwrap();
    let err_log = std::sync::Arc::new(Mutex::new(String::new()));
    let el = err_log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            el.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    while !out
        .iter()
        .any(|l: &String| l.contains("Ctrl-C stops everything"))
    {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => out.push(l),
            Err(_) => {
                if let Ok(Some(s)) = child.try_wait() {
                    panic!("up exited {s}: {}", err_log.lock().unwrap());
                }
                assert!(
                    Instant::now() < deadline,
                    "up never became ready: {}",
                    err_log.lock().unwrap()
                );
            }
        }
    }
    (child, out, err_log)
}

/// Sends SIGINT to `up` and waits for it to exit.
fn stop_up(child: &mut UpGuard, err_log: &Mutex<String>) -> ExitStatus {
    // SAFETY: kill(2) on our own, not yet reaped, child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "up did not stop: {}",
            err_log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With `--etcd`, the nodes register in etcd and the gateway finds them
/// there (its pool has no static list): traffic reaches both nodes, and
/// Ctrl-C leaves etcd empty.
#[test]
fn ragfleet_up_with_etcd_routes_to_the_registered_nodes() {
    let _g = serial();
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let etcd = Etcd::start(dir.path()).await;
        let port = free_port();
        let (mut child, _out, err_log) = spawn_up(
            dir.path(),
            port,
            &["--etcd", &etcd.url, "--generator", "extractive"],
        );
        let gw_toml = std::fs::read_to_string(dir.path().join("data/gateway.toml")).unwrap();
        assert!(gw_toml.contains("[pool.nodes.discovery.etcd]"), "{gw_toml}");
        assert!(!gw_toml.contains("{ addr ="), "a static list: {gw_toml}");
        for id in ["node-1", "node-2"] {
            let (v, lease) = etcd
                .get(&format!("/ragfleet/nodes/{id}"))
                .await
                .unwrap_or_else(|| panic!("{id} not registered"));
            assert!(v["addr"].is_string(), "{v}");
            assert_ne!(lease, 0);
        }
        // Both nodes answer through the gateway.
        let http = client_with_key_file(&dir.path().join("data"));
        let gw = format!("http://127.0.0.1:{port}");
        let mut seen = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < 2 {
            let r = http
                .get(format!("{gw}/api/v1/search?query=zorblax"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            if let Some(n) = r.headers().get("x-ragfleet-node") {
                seen.insert(n.to_str().unwrap().to_string());
            }
            assert!(
                Instant::now() < deadline,
                "only {seen:?} answered through the gateway: {}",
                err_log.lock().unwrap()
            );
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["node-1", "node-2"]);

        let status = stop_up(&mut child, &err_log);
        assert!(
            status.success(),
            "up exited {status}: {}",
            err_log.lock().unwrap()
        );
        for id in ["node-1", "node-2"] {
            assert!(
                etcd.get(&format!("/ragfleet/nodes/{id}")).await.is_none(),
                "{id} still registered after Ctrl-C"
            );
        }
    });
}

/// `ragfleet up` starts a gateway and nodes, serves a search through the
/// gateway, and stops everything on SIGINT.
#[test]
fn ragfleet_up_serves_and_stops_on_sigint() {
    let _g = serial();
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let (mut child, out, err_log) = spawn_up(dir.path(), port, &[]);
        let text = out.join("\n");
        let gw = format!("http://127.0.0.1:{port}");
        assert!(text.contains(&format!("{gw}/api/v1")), "{text}");
        let metrics_line = out
            .iter()
            .find(|l| l.trim_start().starts_with("metrics"))
            .unwrap();
        let node_urls: Vec<String> = metrics_line
            .split_whitespace()
            .filter(|w| w.starts_with("http://"))
            .map(|w| w.trim_end_matches("/metrics").to_string())
            .collect();
        assert_eq!(node_urls.len(), 2, "{text}");

        let http = client_with_key_file(&dir.path().join("data"));
        let (s, v) = post(
            &http,
            &format!("{gw}/api/v1/documents"),
            &json!({"id": "zorblax", "title": "Zorblax reactor", "text": DOC}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        // A search through the gateway finds it (once the answering node's
        // follower applied it), and so does every node.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = http
                .get(format!("{gw}/api/v1/search?query=zorblax%20helium&top_k=3"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert!(r.headers().contains_key("x-ragfleet-node"));
            let v: Value = r.json().await.unwrap();
            if v["hits"][0]["doc_id"] == "zorblax" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not found through the gateway: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for u in &node_urls {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let (s, v) = get(&http, &format!("{u}/api/v1/search?query=zorblax%20helium")).await;
                assert_eq!(s, 200, "{v}");
                if v["hits"][0]["doc_id"] == "zorblax" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{u} never found the document: {v}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for u in &node_urls {
            let (s, _) = get(&http, &format!("{u}/metrics")).await;
            assert_eq!(s, 200);
        }

        // A node that dies is reported and restarted.
        let (_, h) = get(&http, &format!("{}/health", node_urls[1])).await;
        let pid = h["pid"].as_u64().unwrap() as i32;
        // SAFETY: kill(2) on a node process `up` started for this test.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = http.get(format!("{}/ready", node_urls[1])).send().await {
                if r.status() == 200 {
                    let (_, h) = get(&http, &format!("{}/health", node_urls[1])).await;
                    if h["pid"].as_u64() != Some(pid as u64) {
                        break;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "the killed node was not restarted: {}",
                err_log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let log = err_log.lock().unwrap().clone();
        assert!(log.contains("node-2 exited unexpectedly"), "{log}");
        assert!(log.contains("node-2 restarted"), "{log}");

        // SIGINT: everything stops, exit 0.
        let status = stop_up(&mut child, &err_log);
        assert!(
            status.success(),
            "up exited {status}: {}",
            err_log.lock().unwrap()
        );
        for u in node_urls.iter().chain(std::iter::once(&gw)) {
            assert!(
                http.get(format!("{u}/health")).send().await.is_err(),
                "{u} still answers after up stopped"
            );
        }
    });
}
