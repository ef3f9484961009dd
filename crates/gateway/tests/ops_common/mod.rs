//! Helpers for the operations tests: a strict Prometheus text parser, admin
//! API calls, a WebSocket echo upstream, an upstream reporting a load in its
//! /health, and a real etcd server in a temp dir.
#![allow(dead_code)]
use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::{read, request, send_from, Reply};

// ---------------------------------------------------------------- Prometheus

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

/// Parse the Prometheus text format (0.0.4) strictly: every sample belongs
/// to a family declared with `# TYPE` before it, no duplicate series,
/// histogram buckets cumulative with `+Inf` equal to `_count`.
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let ln = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("TYPE") => {
                    let name = parts
                        .next()
                        .ok_or(format!("line {ln}: TYPE without name"))?;
                    let ty = parts
                        .next()
                        .ok_or(format!("line {ln}: TYPE without type"))?;
                    if !valid_name(name) {
                        return Err(format!("line {ln}: bad metric name {name:?}"));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                        return Err(format!("line {ln}: bad type {ty:?}"));
                    }
                    if types.insert(name.to_string(), ty.to_string()).is_some() {
                        return Err(format!("line {ln}: TYPE of {name} given twice"));
                    }
                }
                Some("HELP") => {
                    let name = parts
                        .next()
                        .ok_or(format!("line {ln}: HELP without name"))?;
                    if !valid_name(name) {
                        return Err(format!("line {ln}: bad metric name {name:?}"));
                    }
                }
                _ => {}
            }
            continue;
        }
        // name{labels} value
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => (&line[..i], &line[i..]),
            None => return Err(format!("line {ln}: no value: {line:?}")),
        };
        if !valid_name(name) {
            return Err(format!("line {ln}: bad metric name {name:?}"));
        }
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let end;
            loop {
                // label name
                let start = match chars.peek() {
                    Some((i, '}')) => {
                        end = *i;
                        break;
                    }
                    Some((i, _)) => *i,
                    None => return Err(format!("line {ln}: unterminated labels")),
                };
                let mut eq = None;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        eq = Some(i);
                        break;
                    }
                }
                let eq = eq.ok_or(format!("line {ln}: label without '='"))?;
                let lname = &r[start..eq];
                if !valid_name(lname) || lname.contains(':') {
                    return Err(format!("line {ln}: bad label name {lname:?}"));
                }
                if chars.next().map(|x| x.1) != Some('"') {
                    return Err(format!("line {ln}: label value not quoted"));
                }
                let mut val = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => val.push('\\'),
                            Some((_, '"')) => val.push('"'),
                            Some((_, 'n')) => val.push('\n'),
                            _ => return Err(format!("line {ln}: bad escape")),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => val.push(c),
                        None => return Err(format!("line {ln}: unterminated label value")),
                    }
                }
                if labels.insert(lname.to_string(), val).is_some() {
                    return Err(format!("line {ln}: label {lname} twice"));
                }
                match chars.next() {
                    Some((_, ',')) => continue,
                    Some((i, '}')) => {
                        end = i;
                        break;
                    }
                    _ => return Err(format!("line {ln}: expected ',' or '}}' after a label")),
                }
            }
            rest = &r[end + 1..];
        }
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().ok_or(format!("line {ln}: no value"))?)
            .map_err(|e| format!("line {ln}: {e}"))?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| format!("line {ln}: bad timestamp {ts:?}"))?;
        }
        if fields.next().is_some() {
            return Err(format!("line {ln}: trailing text"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| {
                name.strip_suffix(suf)
                    .filter(|base| types.get(*base).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(format!("line {ln}: sample {name} before its # TYPE"));
        }
        let key = format!("{name}{labels:?}");
        if !seen.insert(key) {
            return Err(format!("line {ln}: duplicate series {name}{labels:?}"));
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    // Histograms: cumulative buckets, +Inf == _count.
    for (family, ty) in &types {
        if ty != "histogram" {
            continue;
        }
        let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in out.iter().filter(|s| s.name == format!("{family}_bucket")) {
            let mut l = s.labels.clone();
            let le = l
                .remove("le")
                .ok_or(format!("{family}_bucket without le"))?;
            groups
                .entry(format!("{l:?}"))
                .or_default()
                .push((parse_value(&le)?, s.value));
        }
        for (l, mut b) in groups {
            b.sort_by(|x, y| x.0.total_cmp(&y.0));
            if b.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{family}{l}: buckets not cumulative"));
            }
            let inf = b.last().filter(|x| x.0.is_infinite());
            let count = out
                .iter()
                .find(|s| s.name == format!("{family}_count") && format!("{:?}", s.labels) == l)
                .map(|s| s.value);
            match (inf, count) {
                (Some(i), Some(c)) if i.1 == c => {}
                _ => return Err(format!("{family}{l}: +Inf bucket and _count disagree")),
            }
        }
    }
    Ok(out)
}

/// Parsed metrics with lookups by name and a subset of labels.
pub struct Metrics(pub Vec<Sample>);

impl Metrics {
    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Sum over the series matching the labels (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The value of the one series matching the labels.
    pub fn one(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let m: Vec<&Sample> = self.matching(name, labels).collect();
        match m.as_slice() {
            [s] => Some(s.value),
            [] => None,
            _ => panic!("{name}{labels:?} matches {} series", m.len()),
        }
    }
}

/// Fetch and parse /metrics from an admin listener.
pub async fn scrape(admin: SocketAddr, token: Option<&str>) -> Metrics {
    let r = admin_call(admin, "GET", "/metrics", token, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    Metrics(parse_prometheus(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.body)))
}

// ---------------------------------------------------------------- admin API

pub async fn admin_call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    let res = send_from(None, admin, request(method, admin, path, &headers, body))
        .await
        .expect("admin request");
    read(res).await.expect("admin reply")
}

pub fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

// ---------------------------------------------------------------- upstreams

/// A WebSocket echo server; `name` is sent as the first message.
pub struct WsEcho {
    pub addr: SocketAddr,
    pub open: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl WsEcho {
    pub async fn start(name: &str) -> WsEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let open = Arc::new(AtomicU64::new(0));
        let (stop2, open2, name) = (stop.clone(), open.clone(), name.to_string());
        tokio::spawn(async move {
            loop {
                let (s, _) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let (open, name, stop) = (open2.clone(), name.clone(), stop2.clone());
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                        return;
                    };
                    open.fetch_add(1, SeqCst);
                    let _ = ws
                        .send(tokio_tungstenite::tungstenite::Message::text(name))
                        .await;
                    loop {
                        let msg = tokio::select! {
                            _ = stop.cancelled() => break,
                            m = ws.next() => m,
                        };
                        match msg {
                            Some(Ok(m)) if m.is_text() || m.is_binary() => {
                                if ws.send(m).await.is_err() {
                                    break;
                                }
                            }
                            Some(Ok(m)) if m.is_close() => break,
                            Some(Ok(_)) => {}
                            _ => break,
                        }
                    }
                    open.fetch_sub(1, SeqCst);
                });
            }
        });
        WsEcho { addr, open, stop }
    }
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An upstream whose /health answers JSON with a settable generation load
/// (as a ragfleet node does) and whose other paths answer its name after
/// `delay`.
pub struct LoadUpstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    /// (running, queued, capacity)
    pub load: Arc<Mutex<(u64, u64, u64)>>,
    stop: CancellationToken,
}

impl LoadUpstream {
    pub async fn start(name: &str, delay: Duration) -> LoadUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let hits = Arc::new(AtomicU64::new(0));
        let load = Arc::new(Mutex::new((0, 0, 1)));
        let (stop2, hits2, load2, name) =
            (stop.clone(), hits.clone(), load.clone(), name.to_string());
        tokio::spawn(async move {
            loop {
                let (s, _) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let (hits, load, name) = (hits2.clone(), load2.clone(), name.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (hits, load, name) = (hits.clone(), load.clone(), name.clone());
                        async move {
                            let res = if req.uri().path() == "/health" {
                                let (r, q, c) = *load.lock().unwrap();
                                let body = serde_json::json!({
                                    "status": "ok", "engine": true, "draining": false,
                                    "load": {"running": r, "queued": q, "capacity": c,
                                             "max_queued": 64, "streams": r},
                                });
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body.to_string())))
                                    .unwrap()
                            } else {
                                hits.fetch_add(1, SeqCst);
                                tokio::time::sleep(delay).await;
                                Response::new(Full::new(Bytes::from(name)))
                            };
                            Ok::<_, Infallible>(res)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        LoadUpstream {
            addr,
            hits,
            load,
            stop,
        }
    }

    pub fn set_load(&self, running: u64, queued: u64, capacity: u64) {
        *self.load.lock().unwrap() = (running, queued, capacity);
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(SeqCst)
    }
}

impl Drop for LoadUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

// ---------------------------------------------------------------- load

/// A steady GET load through the gateway: `workers` loops, each on a fresh
/// connection per request, counting answers by body and failures.
pub struct Load {
    pub ok: Arc<AtomicU64>,
    pub failures: Arc<Mutex<Vec<String>>>,
    pub by_body: Arc<Mutex<HashMap<String, u64>>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, path: &'static str, workers: usize) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let by_body = Arc::new(Mutex::new(HashMap::new()));
        let stop = CancellationToken::new();
        let tasks = (0..workers)
            .map(|_| {
                let (ok, failures, by_body, stop) =
                    (ok.clone(), failures.clone(), by_body.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        match crate::common::try_get(addr, path, &[]).await {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, SeqCst);
                                *by_body.lock().unwrap().entry(r.body).or_default() += 1;
                            }
                            Ok(r) => failures
                                .lock()
                                .unwrap()
                                .push(format!("{}: {}", r.status, r.body)),
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Load {
            ok,
            failures,
            by_body,
            stop,
            tasks,
        }
    }

    pub fn count(&self, body: &str) -> u64 {
        self.by_body.lock().unwrap().get(body).copied().unwrap_or(0)
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(SeqCst)
    }

    /// Stop and return the failures.
    pub async fn stop(self) -> (u64, Vec<String>) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let f = self.failures.lock().unwrap().clone();
        (self.ok.load(SeqCst), f)
    }
}

// ---------------------------------------------------------------- etcd

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real etcd (Debian's etcd-server) on free loopback ports in a temp dir.
pub struct Etcd {
    pub client_url: String,
    peer_url: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Etcd {
    pub async fn start() -> Etcd {
        Etcd::start_on(free_port()).await
    }

    /// Start with its client URL on this loopback port.
    pub async fn start_on(client_port: u16) -> Etcd {
        let which = Command::new("sh")
            .args(["-c", "command -v etcd"])
            .output()
            .expect("sh");
        assert!(
            which.status.success(),
            "etcd is not installed: run scripts/setup.sh (apt-get install etcd-server)"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut e = Etcd {
            client_url: format!("http://127.0.0.1:{client_port}"),
            peer_url: format!("http://127.0.0.1:{}", free_port()),
            dir,
            child: None,
        };
        e.spawn().await;
        e
    }

    async fn spawn(&mut self) {
        let data: PathBuf = self.dir.path().join("data");
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let mut cmd = Command::new("etcd");
        if std::env::consts::ARCH == "aarch64" {
            cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        let child = cmd
            .arg("--name=test")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={}", self.client_url))
            .arg(format!("--advertise-client-urls={}", self.client_url))
            .arg(format!("--listen-peer-urls={}", self.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer_url))
            .arg(format!("--initial-cluster=test={}", self.peer_url))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.range("/", "").await.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                panic!("etcd did not start:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kill etcd (SIGKILL); `restart` brings it back with the same data.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value, String> {
        let addr: SocketAddr = self
            .client_url
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        let res = tokio::time::timeout(
            Duration::from_secs(5),
            send_from(
                None,
                addr,
                request("POST", addr, path, &[], &body.to_string()),
            ),
        )
        .await
        .map_err(|_| "timeout".to_string())??;
        let r = read(res).await?;
        if r.status != 200 {
            return Err(format!("{}: {}", r.status, r.body));
        }
        serde_json::from_str(&r.body).map_err(|e| e.to_string())
    }

    async fn range(&self, key: &str, end: &str) -> Result<serde_json::Value, String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut body = serde_json::json!({"key": b64.encode(key)});
        if !end.is_empty() {
            body["range_end"] = b64.encode(end).into();
        }
        self.post("/v3/kv/range", body).await
    }

    pub async fn put(&self, key: &str, value: &str) {
        let b64 = base64::engine::general_purpose::STANDARD;
        self.post(
            "/v3/kv/put",
            serde_json::json!({"key": b64.encode(key), "value": b64.encode(value)}),
        )
        .await
        .expect("etcd put");
    }

    pub async fn delete(&self, key: &str) {
        let b64 = base64::engine::general_purpose::STANDARD;
        self.post(
            "/v3/kv/deleterange",
            serde_json::json!({"key": b64.encode(key)}),
        )
        .await
        .expect("etcd delete");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Addresses of a pool's servers, as the gateway has them now.
pub fn pool_addrs(h: &ragfleet_gateway::GatewayHandle, pool: &str) -> Vec<String> {
    let mut v: Vec<String> = h
        .pool(pool)
        .map(|p| p.servers().iter().map(|s| s.addr().to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Read a response body fully (bytes).
pub async fn body_bytes(res: Response<Incoming>) -> Bytes {
    res.into_body().collect().await.unwrap().to_bytes()
}
