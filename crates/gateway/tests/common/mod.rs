//! Test helpers: real upstream HTTP servers (hyper) on loopback, the real
//! gateway on port 0, and a small HTTP client.
#![allow(dead_code)]
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ragfleet_gateway::{Config, Gateway, GatewayHandle};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Live state of a test upstream, readable by the test.
pub struct UpState {
    pub name: String,
    /// Requests served, /health excluded.
    pub hits: AtomicU64,
    pub health_hits: AtomicU64,
    pub healthy: AtomicBool,
    /// Status of ordinary requests.
    pub status: AtomicU16,
    pub delay_ms: AtomicU64,
    /// Requests currently held at /hold.
    pub holding: AtomicU64,
    pub release: tokio::sync::watch::Sender<bool>,
    /// Request headers of the last ordinary request.
    pub last_headers: Mutex<Option<HeaderMap>>,
    /// When each SSE event was handed to the connection.
    pub sse_sent: Mutex<Vec<Instant>>,
    /// Notified with the number of the event the client has seen (SSE gated mode).
    pub sse_ack: tokio::sync::watch::Sender<u64>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpState>,
    stop: CancellationToken,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Self::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Start on a given address (to bring a killed upstream back on its port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Upstream {
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpState {
            name: name.to_string(),
            hits: AtomicU64::new(0),
            health_hits: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            holding: AtomicU64::new(0),
            release: tokio::sync::watch::channel(false).0,
            last_headers: Mutex::new(None),
            sse_sent: Mutex::new(Vec::new()),
            sse_ack: tokio::sync::watch::channel(0).0,
        });
        let stop = CancellationToken::new();
        let st = state.clone();
        let stop2 = stop.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let st = st.clone();
                let stop3 = stop2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = stop3.cancelled() => {}
                    }
                });
            }
        });
        Upstream { addr, state, stop }
    }

    pub fn hits(&self) -> u64 {
        self.state.hits.load(SeqCst)
    }

    /// Kill the server: close the listener and every connection.
    pub fn kill(&self) {
        self.stop.cancel();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(st: Arc<UpState>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        st.health_hits.fetch_add(1, SeqCst);
        let code = if st.healthy.load(SeqCst) { 200 } else { 503 };
        return Ok(Response::builder()
            .status(code)
            .body(full("health"))
            .unwrap());
    }
    st.hits.fetch_add(1, SeqCst);
    *st.last_headers.lock().unwrap() = Some(req.headers().clone());
    match path.as_str() {
        "/hold" => {
            st.holding.fetch_add(1, SeqCst);
            let mut rx = st.release.subscribe();
            let _ = rx.wait_for(|r| *r).await;
            st.holding.fetch_sub(1, SeqCst);
            Ok(Response::new(full(st.name.clone())))
        }
        "/sse" | "/sse-gated" => Ok(sse(st, path == "/sse-gated")),
        "/sse-cut" => {
            // Two whole events, then the upstream dies mid-stream.
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                for i in 0..2 {
                    let ev = format!("id: {i}\ndata: event {i}\n\n");
                    let _ = tx.send(Ok(Frame::data(Bytes::from(ev)))).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = tx
                    .send(Err(std::io::Error::other("upstream died mid-stream")))
                    .await;
            });
            Ok(Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed_unsync(StreamBody::new(tokio_stream(rx))))
                .unwrap())
        }
        "/partial" => {
            // Headers and a first chunk, then the connection breaks.
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from("partial")))).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tx
                    .send(Err(std::io::Error::other("upstream died mid-body")))
                    .await;
            });
            let body = StreamBody::new(tokio_stream(rx));
            Ok(Response::new(BodyExt::boxed_unsync(body)))
        }
        "/echo-headers" => {
            let mut map = serde_json::Map::new();
            for (k, v) in req.headers() {
                map.insert(
                    k.as_str().to_string(),
                    serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
                );
            }
            let res = Response::builder()
                .header("content-type", "application/json")
                .header("connection", "x-up-hop")
                .header("x-up-hop", "1")
                .header("x-up-end", "1")
                .body(full(serde_json::Value::Object(map).to_string()))
                .unwrap();
            Ok(res)
        }
        "/echo-body" => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok(Response::new(full(body)))
        }
        _ => {
            let d = st.delay_ms.load(SeqCst);
            if d > 0 {
                tokio::time::sleep(Duration::from_millis(d)).await;
            }
            let code = st.status.load(SeqCst);
            Ok(Response::builder()
                .status(code)
                .body(full(st.name.clone()))
                .unwrap())
        }
    }
}

/// Adapts an mpsc receiver into a Stream without extra crates.
fn tokio_stream<T>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static
where
    T: Send + 'static,
{
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

pub const SSE_EVENTS: u64 = 10;

/// 10 events, one every 100 ms. In gated mode, event i+1 is also held back
/// until the test has acknowledged event i (so batching would deadlock).
fn sse(st: Arc<UpState>, gated: bool) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    st.sse_sent.lock().unwrap().clear();
    tokio::spawn(async move {
        let mut ack = st.sse_ack.subscribe();
        for i in 0..SSE_EVENTS {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if gated {
                    let timed_out =
                        tokio::time::timeout(Duration::from_secs(20), ack.wait_for(|a| *a >= i))
                            .await
                            .is_err();
                    if timed_out {
                        let _ = tx
                            .send(Ok(Frame::data(Bytes::from(
                                "event: gave-up\ndata: no ack\n\n",
                            ))))
                            .await;
                        return;
                    }
                }
            }
            st.sse_sent.lock().unwrap().push(Instant::now());
            let ev = format!("id: {i}\ndata: event {i}\n\n");
            if tx.send(Ok(Frame::data(Bytes::from(ev)))).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed_unsync(StreamBody::new(tokio_stream(rx))))
        .unwrap()
}

/// A gateway running in the test's runtime.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub handle: GatewayHandle,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<Result<(), ragfleet_gateway::Error>>>,
}

impl TestGateway {
    /// Start from TOML text; `listen.addr` is forced to 127.0.0.1:0.
    pub async fn start(toml: &str) -> TestGateway {
        let mut cfg = Config::parse(toml, "test.toml").expect("valid test config");
        cfg.listen.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_cfg(cfg).await
    }

    pub async fn start_cfg(cfg: Config) -> TestGateway {
        let gw = Gateway::bind(cfg).await.expect("bind gateway");
        let addr = gw.local_addr();
        let handle = gw.handle();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gw.run_until(async move {
            let _ = rx.await;
        }));
        TestGateway {
            addr,
            handle,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Begin graceful shutdown; returns the task to await.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<Result<(), ragfleet_gateway::Error>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("gateway task")
    }

    pub async fn get(&self, path: &str) -> Reply {
        get(self.addr, path, &[]).await
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Send a request on a fresh connection from `src` (any 127.0.0.0/8 address).
pub async fn send_from(
    src: Option<IpAddr>,
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, String> {
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| e.to_string())?;
    }
    let stream = sock.connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).ok();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

pub fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

pub async fn read(res: Response<Incoming>) -> Result<Reply, String> {
    let status = res.status();
    let headers = res.headers().clone();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub async fn try_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        send_from(None, addr, request("GET", addr, path, headers, "")),
    )
    .await
    .map_err(|_| "timed out".to_string())??;
    read(res).await
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    try_get(addr, path, headers)
        .await
        .expect("GET through the gateway")
}

/// Poll `f` until true or `secs` pass.
pub async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// A `[[route]]` + `[pool.p]` config over the given upstreams with extra pool keys.
pub fn pool_config(servers: &[(&Upstream, u32, bool)], policy: &str, extra: &str) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|(u, w, b)| format!("{{ addr = \"{}\", weight = {w}, backup = {b} }}", u.addr))
        .collect();
    format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n\n[pool.p]\npolicy = \"{policy}\"\nservers = [{}]\n{extra}\n",
        list.join(", ")
    )
}

pub type Pinned<T> = Pin<Box<T>>;

impl TestGateway {
    /// Wrap a gateway started by the test itself (e.g. to read its
    /// redirect address before it runs).
    pub fn from_parts(
        addr: SocketAddr,
        handle: GatewayHandle,
        shutdown: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<(), ragfleet_gateway::Error>>,
    ) -> TestGateway {
        TestGateway {
            addr,
            handle,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }
}
