//! The request path, in phases: admit (hygiene, rate limit) → route →
//! `prepare` (rewrite the headers, read or stream the body) → per
//! attempt: pick a server → [send] → [judge] the response (or [failed] /
//! [timed_out]) → retry before the first response byte → [respond] (stream
//! it back) → log (`access_log::respond`).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::base::config::{FailKind, HashKey, HostMode};
use crate::base::hash::hash64;
use crate::base::headers::is_hop_by_hop;
use crate::http::body::{ClientBody, ClientFault, ClientStream, Prefetch, ReqBody, StreamSlot};
use crate::http::conn::{ConnInfo, Handler, ServeCtx};
pub(crate) use crate::http::response::json_error;
use crate::http::response::{ProxyBody, UpstreamBody, UpstreamInner};
use crate::proxy::access_log::ObsRef;
use crate::proxy::state::Shared;
use crate::upstream::pool::{InflightGuard, PickCtx, Pool, Server};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Remove hop-by-hop headers (RFC 9110 §7.6.1), including any the
/// Connection header names. Returns true if the message asked for an upgrade.
fn strip_hop_by_hop(h: &mut HeaderMap) -> bool {
    // Most messages carry none of them: one pass over the names (standard
    // names compare as small integers) instead of a hashed remove per name.
    if !h.keys().any(is_hop_by_hop) {
        return false;
    }
    let mut upgrade = false;
    let mut named: Vec<HeaderName> = Vec::new();
    for v in h.get_all(header::CONNECTION) {
        for t in v.to_str().unwrap_or("").split(',') {
            let t = t.trim();
            if t.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            } else if t.eq_ignore_ascii_case("keep-alive") || t.eq_ignore_ascii_case("close") {
                // Options, not header names (Keep-Alive goes below anyway).
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                named.push(n);
            }
        }
    }
    for n in named {
        h.remove(n);
    }
    // Only the ones present: a remove is a hashed lookup each.
    while let Some(n) = h.keys().find(|n| is_hop_by_hop(n)).cloned() {
        h.remove(&n);
    }
    upgrade
}

/// An address as a header value. The last one is kept per thread: a
/// keep-alive connection's requests all come from the same address.
fn ip_header(ip: std::net::IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((cached, v)) if *cached == ip => v.clone(),
            _ => {
                let v = format_ip(ip);
                *last = Some((ip, v.clone()));
                v
            }
        }
    })
}

/// IPv4 without the formatting machinery (it showed up at 1.3k
/// instructions per request).
fn format_ip(ip: std::net::IpAddr) -> HeaderValue {
    let text = match ip {
        std::net::IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            return HeaderValue::from_bytes(&buf[..len])
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        }
        std::net::IpAddr::V6(v6) => v6.to_string(),
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn is_websocket(h: &HeaderMap) -> bool {
    let conn_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    conn_upgrade
        && h.get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 200 && b.iter().all(|c| c.is_ascii_graphic())
}

/// The hash key of a request, if the pool hashes and the request carries it.
fn hash_key(src: &HashKey, req: &Request<ClientBody>) -> Option<u64> {
    match src {
        HashKey::Header(name) => req.headers().get(name).map(|v| hash64(&[v.as_bytes()])),
        HashKey::Cookie(name) => req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| hash64(&[v.as_bytes()])),
        HashKey::Query(name) => req.uri().query().and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                .find(|(k, _)| k == name)
                .map(|(_, v)| hash64(&[v.as_bytes()]))
        }),
    }
}

/// The client's X-Request-Id if sane, else a new UUID.
fn request_id_of(h: &HeaderMap) -> HeaderValue {
    match h.get(&X_REQUEST_ID) {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => new_request_id(),
    }
}

/// A fresh request id: 32 hex digits, like nginx's `$request_id` — a random
/// per-process prefix and a counter, so that no request pays for a system
/// call to the random source (a UUIDv4 each would).
fn new_request_id() -> HeaderValue {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = NEXT.fetch_add(1, Relaxed);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    for (i, d) in id.iter_mut().enumerate() {
        let word = if i < 16 { prefix } else { n };
        *d = HEX[((word >> ((15 - i % 16) * 4)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Why an attempt failed before response headers arrived.
enum AttemptError {
    Connect(String),
    Error(String),
    Timeout(Duration),
}

/// Serve one client request: observed (access log, metrics) around
/// [`handle_inner`].
impl Handler for Shared {
    fn serve_ctx(&self) -> &ServeCtx {
        &self.edge.serve
    }

    async fn call(
        self: Arc<Self>,
        peer: SocketAddr,
        req: Request<ClientBody>,
    ) -> Response<ProxyBody> {
        let Ok(res) = handle(self, peer, req).await;
        res
    }
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<ClientBody>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    // One async level for the whole request (each level moves the request
    // and its future again).
    let obs = crate::proxy::access_log::begin(&shared, peer, &req);
    let request_id = request_id_of(req.headers());
    // Hygiene, credentials and rate limits first: routes match the
    // normalised path.
    let admitted = match crate::proxy::hygiene::check(&shared, req) {
        Ok(req) => match crate::proxy::authn::admit(&shared, &req) {
            Err(res) => Err(res),
            Ok(()) => {
                let limiter = shared.edge.rate_limiter.load();
                if limiter.is_empty() {
                    Ok(req)
                } else {
                    // Boxed: only requests under rate-limit rules carry the
                    // limiter's (Redis-capable) future.
                    let limiter = arc_swap::Guard::into_inner(limiter);
                    Box::pin(crate::proxy::hygiene::rate_limit(peer, req, limiter)).await
                }
            }
        },
        Err(res) => Err(res),
    };
    let mut res = match admitted {
        Ok(req) => {
            let rt = shared.runtime.load_full();
            match rt.route_with_prefix(req.uri().path()) {
                Some((prefix, pool)) => {
                    obs.0.set_route(prefix, pool);
                    // Boxed: the request path's largest future stays behind one
                    // pointer instead of being copied through every caller's state.
                    Box::pin(proxy(
                        &shared,
                        pool,
                        peer,
                        req,
                        request_id.clone(),
                        obs.clone(),
                    ))
                    .await
                }
                None => {
                    let msg = format!("no route for {}", req.uri().path());
                    json_error(StatusCode::NOT_FOUND, "no_route", &msg)
                }
            }
        }
        Err(res) => res,
    };
    res.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    Ok(crate::proxy::access_log::respond(obs, res))
}

/// Whether a failed upstream request failed because the client's body
/// went over `listen.max_body_size` (not the upstream's fault).
fn body_limit_hit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = c.source();
    }
    false
}

/// The request as it goes upstream, the same for every attempt (Host
/// aside): the output of the rewrite and body phases.
struct Outbound {
    method: Method,
    path_and_query: http::uri::PathAndQuery,
    /// The client's headers, hop-by-hop ones removed.
    headers: HeaderMap,
    /// The forwarding headers: they replace whatever the client sent under
    /// these names (`None`: removed).
    forwarded: [(&'static HeaderName, Option<HeaderValue>); 5],
    client_host: Option<HeaderValue>,
    payload: Payload,
    /// The client's side of a WebSocket upgrade.
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    conn_info: Option<ConnInfo>,
}

impl Outbound {
    /// Whether the body can (still) be sent to another server.
    fn replayable(&self) -> bool {
        match &self.payload {
            Payload::Empty | Payload::Buffered(_) => true,
            Payload::Streamed(slot) => slot.untouched(),
        }
    }
}

/// What one attempt's send phase produced.
enum Sent {
    /// A response head, or the error that stopped it.
    Outcome(Result<Response<UpstreamInner>, Attempt>),
    /// No response head within the connect + response-headers deadline.
    HeadersTimeout,
    /// The streamed body went to an earlier attempt: it can go nowhere else.
    BodyGone,
    /// The request cannot be sent at all (answered as is).
    Refused(Response<ProxyBody>),
}

/// What the proxy makes of an upstream response.
enum Judged {
    /// Send this to the client.
    Done(Response<ProxyBody>),
    /// A failure status worth retrying on the next server; kept in case no
    /// other server answers.
    Retry(Response<UpstreamInner>, InflightGuard),
}

async fn proxy(
    shared: &Arc<Shared>,
    pool: &Arc<Pool>,
    peer: SocketAddr,
    req: Request<ClientBody>,
    request_id: HeaderValue,
    obs: ObsRef,
) -> Response<ProxyBody> {
    let cfg = &pool.cfg;
    let (mut out, ctx, body, content_length) = prepare(shared, pool, peer, req, request_id);
    out.payload = match payload(shared, pool, body, content_length, &out.conn_info).await {
        Ok(p) => p,
        Err(res) => return res,
    };
    pool.budget.deposit();
    let tries = cfg.retries.tries.max(1);
    let mut tried: smallvec::SmallVec<[Arc<crate::upstream::pool::Server>; 4]> =
        smallvec::SmallVec::new();
    let mut last_error: Option<AttemptError> = None;
    let mut last_response: Option<(Response<UpstreamInner>, InflightGuard)> = None;
    let headers_deadline = cfg.timeouts.connect.0 + cfg.timeouts.response_headers.0;
    let idempotent = idempotent(&out.method);

    for attempt in 0..tries {
        let Some(guard) = pool.pick(&ctx, &tried) else {
            break;
        };
        let server = guard.server().clone();
        tried.push(server.clone());
        obs.0.attempt(&server);
        let started = Instant::now();
        let can_retry = |replayable: bool, kind: FailKind| {
            attempt + 1 < tries
                && replayable
                && cfg.retries.on.contains(&kind)
                && (idempotent || kind == FailKind::Connect || cfg.retries.non_idempotent)
        };
        let outcome = match send(pool, &server, &out, started, headers_deadline).await {
            Sent::Outcome(o) => Ok(o),
            Sent::HeadersTimeout => Err(()),
            Sent::BodyGone => break,
            Sent::Refused(res) => return res,
        };
        let (kind, err) = match outcome {
            Ok(Ok(res)) => {
                let replayable = out.replayable();
                let retry = |kind| can_retry(replayable, kind);
                match judge(shared, pool, res, guard, started, retry, &mut out, &obs) {
                    Judged::Done(res) => return res,
                    Judged::Retry(res, guard) => {
                        tracing::debug!(server = %server.addr(), status = res.status().as_u16(), "retrying on next server");
                        last_error = None;
                        last_response = Some((res, guard));
                        continue;
                    }
                }
            }
            Ok(Err(e)) => match failed(shared, &out, e) {
                Ok(k) => k,
                Err(res) => return res,
            },
            Err(()) => match timed_out(shared, &out, headers_deadline) {
                Ok(k) => k,
                Err(res) => return res,
            },
        };
        drop(guard);
        if pool.counts_as_failure(kind) {
            server.record_failure(cfg.max_fails, cfg.fail_timeout.0);
        }
        // A connect failure means the upstream never saw the request: even a
        // streamed body is still untouched (see `StreamSlot`) and can be sent
        // to the next server.
        let retry = can_retry(out.replayable(), kind) && pool.budget.try_withdraw();
        tracing::debug!(server = %server.addr(), ?kind, retry, "upstream attempt failed");
        last_error = Some(err);
        last_response = None;
        if !retry {
            break;
        }
    }

    if let Some((res, guard)) = last_response {
        return respond(&pool.cfg.timeouts, res, guard);
    }
    no_answer(pool, last_error)
}

/// The rewrite phase: the headers every attempt sends and what the
/// balancer needs to pick; the body and its declared length go on to the
/// body phase ([`payload`]), which fills `Outbound::payload`.
#[inline]
fn prepare(
    shared: &Arc<Shared>,
    pool: &Arc<Pool>,
    peer: SocketAddr,
    mut req: Request<ClientBody>,
    request_id: HeaderValue,
) -> (Outbound, PickCtx, ClientBody, Option<u64>) {
    // From the gateway's own HTTP/1.1 server: no hop-by-hop headers, no upgrade.
    let own_server = matches!(req.body(), ClientBody::Buffered(_));
    let websocket = !own_server && is_websocket(req.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let ctx = PickCtx {
        client_ip: peer.ip(),
        hash_key: pool.hash_key_source().and_then(|k| hash_key(k, &req)),
    };
    let (parts, incoming) = req.into_parts();
    let conn_info = parts.extensions.get::<ConnInfo>().cloned();
    let mut headers = parts.headers;
    let client_host = headers.get(header::HOST).cloned();
    if !own_server {
        let upgrade_value = headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut headers);
        headers.remove(header::UPGRADE);
        if websocket {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(u) = upgrade_value {
                headers.insert(header::UPGRADE, u);
            }
        }
    }
    let forwarded = forwarded_headers(shared, peer, &headers, client_host.clone(), request_id);
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let out = Outbound {
        method: parts.method,
        path_and_query,
        headers,
        forwarded,
        client_host,
        payload: Payload::Empty,
        client_upgrade,
        conn_info,
    };
    (out, ctx, incoming, content_length)
}

/// The forwarding headers. The gateway's own client writes them after the
/// client's headers; hyper's gets them inserted into its copy of the map.
#[inline]
fn forwarded_headers(
    shared: &Shared,
    peer: SocketAddr,
    headers: &HeaderMap,
    client_host: Option<HeaderValue>,
    request_id: HeaderValue,
) -> [(&'static HeaderName, Option<HeaderValue>); 5] {
    let client_ip = ip_header(peer.ip());
    let xff = if headers.contains_key(&X_FORWARDED_FOR) {
        let prev: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        HeaderValue::from_str(&format!("{}, {}", prev.join(", "), peer.ip()))
            .unwrap_or_else(|_| client_ip.clone())
    } else {
        client_ip.clone()
    };
    [
        (&X_REAL_IP, Some(client_ip)),
        (&X_FORWARDED_FOR, Some(xff)),
        (&X_FORWARDED_PROTO, Some(shared.forwarded_proto.clone())),
        // None: the client's own X-Forwarded-Host is dropped.
        (&X_FORWARDED_HOST, client_host),
        (&X_REQUEST_ID, Some(request_id)),
    ]
}

/// The body phase: buffered (replayable) when small enough, streamed
/// otherwise. A streamed body can still go to another server as long as no
/// attempt has read from it (e.g. the first server refused the connection).
async fn payload(
    shared: &Shared,
    pool: &Pool,
    incoming: ClientBody,
    content_length: Option<u64>,
    conn_info: &Option<ConnInfo>,
) -> Result<Payload, Response<ProxyBody>> {
    Ok(match incoming {
        ClientBody::Buffered(b) if b.is_empty() => Payload::Empty,
        ClientBody::Buffered(b) => Payload::Buffered(b),
        ClientBody::Hyper(i) if i.is_end_stream() => Payload::Empty,
        ClientBody::Hyper(incoming) => {
            let limit = pool.cfg.retries.max_body_buffer;
            let read = read_client_body(shared, incoming, content_length, limit, conn_info);
            match read.await {
                Ok(p) => p,
                Err(fault) => return Err(client_fault(shared, fault, conn_info.as_ref())),
            }
        }
    })
}

/// The send phase of one attempt. A body already in memory and no upgrade:
/// the gateway's own client, in this task. Otherwise hyper's (see
/// `http/h1/mod.rs` for why both).
async fn send(
    pool: &Pool,
    server: &Server,
    out: &Outbound,
    started: Instant,
    headers_deadline: Duration,
) -> Sent {
    let cfg = &pool.cfg;
    match &out.payload {
        Payload::Empty | Payload::Buffered(_) if out.client_upgrade.is_none() => {
            let req = crate::http::h1::client::Outgoing {
                method: &out.method,
                path_and_query: out.path_and_query.as_str(),
                headers: &out.headers,
                forwarded: &out.forwarded,
                host: server.addr(),
                host_override: cfg.host == HostMode::Upstream,
                body: match &out.payload {
                    Payload::Buffered(b) => Some(b),
                    _ => None,
                },
            };
            let send = crate::http::h1::client::send(
                server.upstream(),
                pool.conn_settings(),
                &req,
                started,
                headers_deadline,
            );
            match send.await {
                Ok(res) => Sent::Outcome(Ok(res.map(|b| UpstreamInner::H1(Box::new(b))))),
                Err(crate::http::h1::client::H1Error::Timeout) => Sent::HeadersTimeout,
                Err(e) => Sent::Outcome(Err(Attempt::H1(e))),
            }
        }
        _ => {
            let up = match hyper_request(cfg.host, server, out) {
                Ok(Some(up)) => up,
                Ok(None) => return Sent::BodyGone,
                Err(res) => return Sent::Refused(res),
            };
            match tokio::time::timeout(headers_deadline, pool.client.request(up)).await {
                Ok(Ok(res)) => Sent::Outcome(Ok(res.map(UpstreamInner::Hyper))),
                Ok(Err(e)) => Sent::Outcome(Err(Attempt::Hyper(e))),
                Err(_) => Sent::HeadersTimeout,
            }
        }
    }
}

/// The request for hyper's client (`None`: the streamed body was taken).
// The refusal is the response itself, as large as the request it replaces.
#[allow(clippy::result_large_err)]
#[inline]
fn hyper_request(
    host: HostMode,
    server: &Server,
    out: &Outbound,
) -> Result<Option<Request<ReqBody>>, Response<ProxyBody>> {
    let uri = Uri::builder()
        .scheme("http")
        .authority(server.authority().clone())
        .path_and_query(out.path_and_query.clone())
        .build()
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()))?;
    let body = match &out.payload {
        Payload::Empty => ReqBody::Empty,
        Payload::Buffered(b) => ReqBody::Full(Some(b.clone())),
        Payload::Streamed(slot) => match slot.attempt() {
            Some(s) => ReqBody::Stream(s),
            None => return Ok(None),
        },
    };
    let mut up = Request::new(body);
    *up.method_mut() = out.method.clone();
    *up.uri_mut() = uri;
    *up.headers_mut() = out.headers.clone();
    for (name, value) in &out.forwarded {
        match value {
            Some(v) => {
                up.headers_mut().insert(*name, v.clone());
            }
            None => {
                up.headers_mut().remove(*name);
            }
        }
    }
    match host {
        HostMode::Pass => {
            if out.client_host.is_none() {
                up.headers_mut().remove(header::HOST);
            }
        }
        HostMode::Upstream => {
            if let Ok(v) = HeaderValue::from_str(server.addr()) {
                up.headers_mut().insert(header::HOST, v);
            }
        }
    }
    Ok(Some(up))
}

/// An upstream answered: passive health and latency, retry on a failure
/// status, the WebSocket tunnel on 101, else the response.
#[allow(clippy::too_many_arguments)]
#[inline]
fn judge(
    shared: &Arc<Shared>,
    pool: &Pool,
    res: Response<UpstreamInner>,
    guard: InflightGuard,
    started: Instant,
    can_retry: impl Fn(FailKind) -> bool,
    out: &mut Outbound,
    obs: &ObsRef,
) -> Judged {
    let cfg = &pool.cfg;
    let server = guard.server().clone();
    let status = res.status().as_u16();
    if let Some(kind) = FailKind::from_status(status) {
        if pool.counts_as_failure(kind) {
            server.record_failure(cfg.max_fails, cfg.fail_timeout.0);
        }
        if can_retry(kind) && pool.budget.try_withdraw() {
            return Judged::Retry(res, guard);
        }
    } else {
        server.record_success();
    }
    let now = Instant::now();
    server.observe_latency(now - started, now);
    if status == 101 {
        if let Some(client_up) = out.client_upgrade.take() {
            let (parts, body) = res.into_parts();
            if let UpstreamInner::Hyper(body) = body {
                let res = Response::from_parts(parts, body);
                let idle = cfg.timeouts.websocket_idle.0;
                return Judged::Done(tunnel(
                    shared,
                    res,
                    client_up,
                    guard,
                    idle,
                    Some(obs.clone()),
                ));
            }
            return Judged::Done(json_error(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream switched protocols unasked",
            ));
        }
    }
    Judged::Done(respond(&cfg.timeouts, res, guard))
}

/// An attempt failed before a response head. `Err`: the client's body
/// failed (or went over the limit), which is answered at once and never
/// counts against the upstream.
// The refusal is the response itself, as large as the request it replaces.
#[allow(clippy::result_large_err)]
#[inline]
fn failed(
    shared: &Shared,
    out: &Outbound,
    e: Attempt,
) -> Result<(FailKind, AttemptError), Response<ProxyBody>> {
    match e {
        Attempt::Hyper(e) => {
            if let Some(fault) = client_fault_of(&out.payload) {
                // The client's body failed, not the upstream: no
                // passive-health failure, no retry, no latency sample.
                tracing::debug!(?fault, "client body failed mid-request");
                return Err(client_fault(shared, fault, out.conn_info.as_ref()));
            }
            if body_limit_hit(&e) {
                let limit = shared.edge.serve.max_body_size;
                return Err(crate::proxy::hygiene::too_large(shared, limit));
            }
            let msg = error_chain(&e);
            Ok(if e.is_connect() {
                (FailKind::Connect, AttemptError::Connect(msg))
            } else {
                (FailKind::Error, AttemptError::Error(msg))
            })
        }
        Attempt::H1(e) => {
            let msg = e.to_string();
            Ok(if e.is_connect() {
                (FailKind::Connect, AttemptError::Connect(msg))
            } else {
                (FailKind::Error, AttemptError::Error(msg))
            })
        }
    }
}

/// No response head in time. `Err`: the upstream was waiting for a body the
/// client did not send (the client's fault).
// The refusal is the response itself, as large as the request it replaces.
#[allow(clippy::result_large_err)]
#[inline]
fn timed_out(
    shared: &Shared,
    out: &Outbound,
    deadline: Duration,
) -> Result<(FailKind, AttemptError), Response<ProxyBody>> {
    let waiting =
        matches!(&out.payload, Payload::Streamed(slot) if slot.watch().waiting_on_client());
    if let Some(fault) = client_fault_of(&out.payload).or(waiting.then_some(ClientFault::Timeout)) {
        return Err(client_fault(shared, fault, out.conn_info.as_ref()));
    }
    Ok((FailKind::Timeout, AttemptError::Timeout(deadline)))
}

/// The respond phase: the upstream's response, streamed back under the
/// idle and total timeouts.
#[inline]
fn respond(
    timeouts: &crate::base::config::Timeouts,
    mut res: Response<UpstreamInner>,
    guard: InflightGuard,
) -> Response<ProxyBody> {
    // The gateway's own client leaves hop-by-hop headers out as it parses.
    if let UpstreamInner::Hyper(_) = res.body() {
        strip_hop_by_hop(res.headers_mut());
        res.headers_mut().remove(header::UPGRADE);
    }
    // An event stream of unknown length can be ended with an `error`
    // event if the upstream goes away mid-stream.
    let sse = !res.headers().contains_key(header::CONTENT_LENGTH)
        && res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    let total = (!timeouts.total.0.is_zero()).then_some(timeouts.total.0);
    let idle = timeouts.body_idle.0;
    res.map(|b| {
        let body = UpstreamBody::new(b, idle, total, guard.into_body_guard());
        ProxyBody::Upstream(if sse { body.event_stream() } else { body })
    })
}

/// No server answered: why, for the client.
fn no_answer(pool: &Pool, last_error: Option<AttemptError>) -> Response<ProxyBody> {
    match last_error {
        None => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_upstream",
            &format!("no server available in pool {:?}", pool.name()),
        ),
        Some(AttemptError::Timeout(d)) => json_error(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            &format!("no response headers from upstream within {d:?}"),
        ),
        Some(AttemptError::Connect(m)) => json_error(
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            &format!("could not connect to an upstream server: {m}"),
        ),
        Some(AttemptError::Error(m)) => json_error(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            &format!("upstream failed before responding: {m}"),
        ),
    }
}

/// The client's request body as the proxy will send it: whole when it is
/// small (a declared length up to `limit`, or a chunked body that ends
/// within `limit`), so that bad framing or an abandoned upload is found
/// before any server sees the request; streamed otherwise.
async fn read_client_body(
    shared: &Shared,
    incoming: Incoming,
    content_length: Option<u64>,
    limit: u64,
    conn: &Option<ConnInfo>,
) -> Result<Payload, ClientFault> {
    let max = usize::try_from(shared.edge.serve.max_body_size)
        .ok()
        .filter(|&m| m > 0)
        .unwrap_or(usize::MAX);
    let framing = conn
        .clone()
        .map(|c| Arc::new(c) as Arc<dyn crate::http::body::FramingFlag>);
    let stream = ClientStream::new(incoming, max, shared.edge.client_body_timeout, framing);
    match content_length {
        // A large declared length streams from its first byte (as before).
        Some(n) if n > limit => Ok(Payload::Streamed(StreamSlot::new(stream))),
        _ => match stream.prefetch(limit).await? {
            Prefetch::Complete(b) if b.is_empty() => Ok(Payload::Empty),
            Prefetch::Complete(b) => Ok(Payload::Buffered(b)),
            Prefetch::Partial(stream) => Ok(Payload::Streamed(StreamSlot::new(stream))),
        },
    }
}

/// The client's fault behind a failed attempt, if its streamed body failed.
fn client_fault_of(payload: &Payload) -> Option<ClientFault> {
    match payload {
        Payload::Streamed(slot) => slot.watch().fault(),
        _ => None,
    }
}

/// The answer to a request whose body failed on the client's side: a
/// stable code, no internal error text, and the connection closed (its
/// framing can no longer be trusted). Counted as a bad request, never
/// against an upstream.
fn client_fault(
    shared: &Shared,
    fault: ClientFault,
    conn: Option<&ConnInfo>,
) -> Response<ProxyBody> {
    let mut res = match fault {
        ClientFault::TooLarge => {
            return crate::proxy::hygiene::too_large(shared, shared.edge.serve.max_body_size)
        }
        ClientFault::BadFraming => json_error(
            StatusCode::BAD_REQUEST,
            "bad_request_body",
            "the request body's framing is invalid",
        ),
        ClientFault::Timeout => json_error(
            StatusCode::REQUEST_TIMEOUT,
            "request_body_timeout",
            "the request body was not received in time (listen.client_body_timeout)",
        ),
        ClientFault::Gone => json_error(
            StatusCode::BAD_REQUEST,
            "client_closed_request",
            "the client closed the connection before the request body ended",
        ),
    };
    shared
        .edge
        .serve
        .counters
        .bad_request
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    if let Some(c) = conn {
        c.close_after_response();
    }
    res
}

/// Why an attempt's client failed.
enum Attempt {
    Hyper(hyper_util::client::legacy::Error),
    H1(crate::http::h1::client::H1Error),
}

/// The request body as the proxy holds it across attempts.
enum Payload {
    Empty,
    /// Read whole (Content-Length up to `retries.max_body_buffer`).
    Buffered(bytes::Bytes),
    /// Passed through as it arrives; resendable until an attempt reads it.
    Streamed(StreamSlot),
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Answer 101 to the client and join both upgraded connections with a byte
/// tunnel; an idle tunnel is closed after `idle`, and closing one side closes
/// the other.
fn tunnel(
    shared: &Arc<Shared>,
    mut upstream_res: Response<Incoming>,
    client_up: hyper::upgrade::OnUpgrade,
    guard: InflightGuard,
    idle: Duration,
    obs: Option<ObsRef>,
) -> Response<ProxyBody> {
    let upstream_up = hyper::upgrade::on(&mut upstream_res);
    let hard_stop = shared.hard_stop.clone();
    shared.tracker.spawn(async move {
        let _guard = guard;
        // Keeps the request's observation open (log line, metrics) and the
        // open-WebSocket gauge up until the tunnel closes.
        let _open = obs.as_ref().and_then(|o| o.0.websocket_open());
        let (client, upstream) = match tokio::try_join!(client_up, upstream_up) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("websocket upgrade failed: {e}");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        tokio::select! {
            r = crate::http::tunnel::copy_bidirectional_idle(&mut client, &mut upstream, idle) => {
                match r {
                    Ok((up, down)) => {
                        if let Some(o) = &obs {
                            o.0.tunnel_bytes(up, down, true);
                        }
                    }
                    Err(e) => {
                        tracing::debug!("websocket tunnel ended: {e}");
                        if let Some(o) = &obs {
                            o.0.tunnel_bytes(0, 0, false);
                        }
                    }
                }
            }
            _ = hard_stop.cancelled() => {}
        }
    });
    let (mut parts, _) = upstream_res.into_parts();
    let upgrade = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(u) = upgrade {
        parts.headers.insert(header::UPGRADE, u);
    }
    Response::from_parts(parts, ProxyBody::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-end", HeaderValue::from_static("2"));
        assert!(!strip_hop_by_hop(&mut h));
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-end"));
    }

    #[test]
    fn generated_request_ids_are_unique_hex() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            let s = id.to_str().unwrap();
            assert_eq!(s.len(), 32, "{s}");
            assert!(s.bytes().all(|c| c.is_ascii_hexdigit()), "{s}");
            assert!(valid_request_id(id));
        }
        // One process: one random prefix, then a counter.
        assert_eq!(a.to_str().unwrap()[..16], b.to_str().unwrap()[..16]);
    }

    #[test]
    fn ip_headers_match_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.255.9",
            "192.168.100.1",
            "::1",
            "fe80::1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header(ip).to_str().unwrap(), ip.to_string());
        }
    }

    #[test]
    fn websocket_detection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_websocket(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_websocket(&h));
    }
}
