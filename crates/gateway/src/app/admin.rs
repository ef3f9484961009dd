//! The admin listener: Prometheus metrics and a small JSON admin API.
//!
//! | method | path | |
//! | --- | --- | --- |
//! | GET | `/metrics` | Prometheus text format |
//! | GET | `/health` | `{"status":"ok"}` |
//! | GET | `/admin/pools` | every pool and its servers with live state |
//! | GET | `/admin/pools/{pool}` | one pool |
//! | GET | `/admin/pools/{pool}/servers/{addr}` | one server |
//! | POST | `/admin/pools/{pool}/servers/{addr}/drain` | no new requests; in-flight ones finish |
//! | POST | `/admin/pools/{pool}/servers/{addr}/undrain` | take requests again |
//! | PUT, POST | `/admin/pools/{pool}/servers/{addr}/weight` | body `{"weight": N}`, 1..=1000 |
//! | POST | `/admin/reload` | re-read the configuration file |
//!
//! With `admin.token` (or `admin.token_file`) set, every request needs
//! `Authorization: Bearer TOKEN` (401 otherwise). Errors are JSON:
//! `{"error":{"code":..,"message":..}}`.
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::state::App;
use crate::app::state::GatewayHandle;
pub use crate::base::config::AdminConfig;
use crate::base::config::Policy;
use crate::upstream::discovery::Source;
use crate::upstream::pool::{Pool, Server};

type AdminBody = Full<Bytes>;

fn json_response(status: StatusCode, v: &Value) -> Response<AdminBody> {
    let mut res = Response::new(Full::new(Bytes::from(v.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<AdminBody> {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message.into()}}),
    )
}

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::RoundRobin => "round_robin",
        Policy::LeastConn => "least_conn",
        Policy::IpHash => "ip_hash",
        Policy::Hash => "hash",
        Policy::P2c => "p2c",
    }
}

fn up(b: bool) -> &'static str {
    if b {
        "up"
    } else {
        "down"
    }
}

fn server_json(s: &Server, source: Option<Source>) -> Value {
    let snap = s.snapshot();
    json!({
        "addr": snap.addr,
        "source": source.map_or("static", Source::as_str),
        "weight": snap.weight,
        "configured_weight": s.configured_weight(),
        "backup": snap.backup,
        "available": !snap.drained && snap.active_up && !snap.passive_down,
        "drained": snap.drained,
        "health": {"passive": up(!snap.passive_down), "active": up(snap.active_up)},
        "in_flight": snap.inflight,
        "ewma_ms": snap.ewma_ms,
        "load": s.load(),
        "requests": snap.requests,
        "failures": snap.failures,
    })
}

fn pool_json(shared: &App, pool: &Pool, routes: Vec<&str>) -> Value {
    let sources = Source::of_pool(shared, pool);
    let servers: Vec<Value> = pool
        .servers()
        .iter()
        .map(|s| server_json(s, sources.get(s.addr()).copied()))
        .collect();
    json!({
        "name": pool.name(),
        "policy": policy_name(pool.policy()),
        "routes": routes,
        "discovery": {
            "dns": pool.cfg.discovery.dns.as_ref().map(|d| format!("{}:{}", d.name, d.port)),
            "etcd": pool.cfg.discovery.etcd.as_ref().map(|e| json!({"endpoints": e.endpoints, "prefix": e.prefix})),
        },
        "servers": servers,
    })
}

/// Decode %XX escapes of a path segment.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[allow(clippy::result_large_err)]
fn token_ok(shared: &App, req: &Request<Incoming>) -> Result<(), Response<AdminBody>> {
    let cfg = shared.ops.config.load();
    let Some(admin) = cfg.admin.as_ref() else {
        return Ok(());
    };
    let expected = match (&admin.token, &admin.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(t) => t.trim().to_string(),
            Err(e) => {
                tracing::error!(file = %path.display(), "admin.token_file unreadable: {e}");
                return Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "token_unavailable",
                    "the admin token file cannot be read",
                ));
            }
        },
        (None, None) => return Ok(()),
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    // Constant-time comparison.
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same && !expected.is_empty() {
        return Ok(());
    }
    let mut res = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this admin listener needs Authorization: Bearer TOKEN",
    );
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(res)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: u32,
}

async fn handle(
    shared: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<AdminBody>, Infallible> {
    if let Err(res) = token_ok(&shared, &req) {
        return Ok(res);
    }
    let path = req.uri().path().to_string();
    let segs: Vec<String> = match path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect::<Option<Vec<_>>>()
    {
        Some(s) => s,
        None => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "bad_path",
                "bad percent-encoding in the path",
            ))
        }
    };
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let method = req.method().clone();
    let allow = |methods: &'static str, ok: bool| -> Option<Response<AdminBody>> {
        if ok {
            return None;
        }
        let mut res = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} {path} is not supported (allowed: {methods})", method),
        );
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(methods));
        Some(res)
    };
    let is_get = method == Method::GET || method == Method::HEAD;
    let res = match segs.as_slice() {
        ["metrics"] => {
            if let Some(r) = allow("GET", is_get) {
                return Ok(r);
            }
            let text = shared.metrics.render(&shared.runtime.load());
            let mut res = Response::new(Full::new(Bytes::from(text)));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            res
        }
        ["health"] => allow("GET", is_get)
            .unwrap_or_else(|| json_response(StatusCode::OK, &json!({"status": "ok"}))),
        ["admin", "pools"] => allow("GET", is_get).unwrap_or_else(|| {
            let rt = shared.runtime.load();
            let pools: Vec<Value> = rt
                .pools()
                .values()
                .map(|p| pool_json(&shared, p, routes_of(&rt, p)))
                .collect();
            json_response(StatusCode::OK, &json!({ "pools": pools }))
        }),
        ["admin", "pools", pool] => allow("GET", is_get).unwrap_or_else(|| {
            let rt = shared.runtime.load();
            match rt.pool(pool) {
                Some(p) => json_response(StatusCode::OK, &pool_json(&shared, p, routes_of(&rt, p))),
                None => no_pool(pool),
            }
        }),
        ["admin", "pools", pool, "servers", addr] => allow("GET", is_get).unwrap_or_else(|| {
            let rt = shared.runtime.load();
            match find(&rt, pool, addr) {
                Ok((p, s)) => {
                    let src = Source::of_pool(&shared, p).get(s.addr()).copied();
                    json_response(StatusCode::OK, &server_json(&s, src))
                }
                Err(r) => r,
            }
        }),
        ["admin", "pools", pool, "servers", addr, action @ ("drain" | "undrain")] => {
            if let Some(r) = allow("POST", method == Method::POST) {
                return Ok(r);
            }
            let rt = shared.runtime.load();
            match find(&rt, pool, addr) {
                Ok((p, s)) => {
                    let drain = *action == "drain";
                    s.set_drained(drain);
                    tracing::info!(
                        pool,
                        server = addr,
                        drained = drain,
                        "admin: server {action}ed"
                    );
                    let src = Source::of_pool(&shared, p).get(s.addr()).copied();
                    json_response(StatusCode::OK, &server_json(&s, src))
                }
                Err(r) => r,
            }
        }
        ["admin", "pools", pool, "servers", addr, "weight"] => {
            if let Some(r) = allow("PUT, POST", method == Method::PUT || method == Method::POST) {
                return Ok(r);
            }
            let pool = pool.to_string();
            let addr = addr.to_string();
            let body = match Limited::new(req.into_body(), 4096).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(error(
                        StatusCode::BAD_REQUEST,
                        "bad_body",
                        format!("cannot read the body: {e}"),
                    ))
                }
            };
            let w: WeightBody = match serde_json::from_slice(&body) {
                Ok(w) => w,
                Err(e) => {
                    return Ok(error(
                        StatusCode::BAD_REQUEST,
                        "bad_body",
                        format!("expected {{\"weight\": N}}: {e}"),
                    ))
                }
            };
            if !(1..=1000).contains(&w.weight) {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    "bad_weight",
                    format!("weight {} is out of range 1..=1000", w.weight),
                ));
            }
            let rt = shared.runtime.load();
            match find(&rt, &pool, &addr) {
                Ok((p, s)) => {
                    {
                        // Serialised with reloads and discovery updates.
                        let _st = shared.ops.lock_state();
                        p.set_server_weight(s.addr(), w.weight);
                    }
                    tracing::info!(
                        pool,
                        server = addr,
                        weight = w.weight,
                        "admin: weight changed"
                    );
                    let src = Source::of_pool(&shared, p).get(s.addr()).copied();
                    json_response(StatusCode::OK, &server_json(&s, src))
                }
                Err(r) => r,
            }
        }
        ["admin", "reload"] => {
            if let Some(r) = allow("POST", method == Method::POST) {
                return Ok(r);
            }
            let handle = GatewayHandle {
                shared: shared.clone(),
            };
            match handle.reload_from_path().await {
                Ok(summary) => json_response(
                    StatusCode::OK,
                    &json!({"reloaded": true, "changes": summary}),
                ),
                Err(crate::app::reload::ReloadError::NoConfigFile) => error(
                    StatusCode::CONFLICT,
                    "no_config_file",
                    "the gateway was started without a configuration file",
                ),
                Err(e) => error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_config",
                    crate::app::reload::one_line(&e.to_string()),
                ),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no admin endpoint {path}"),
        ),
    };
    Ok(res)
}

fn routes_of<'a>(rt: &'a crate::proxy::runtime::Runtime, p: &Arc<Pool>) -> Vec<&'a str> {
    let mut r: Vec<&str> = rt
        .routes()
        .iter()
        .filter(|(_, q)| Arc::ptr_eq(q, p))
        .map(|(prefix, _)| &**prefix)
        .collect();
    r.sort_unstable();
    r
}

fn no_pool(pool: &str) -> Response<AdminBody> {
    error(
        StatusCode::NOT_FOUND,
        "no_pool",
        format!("no pool named {pool:?}"),
    )
}

#[allow(clippy::result_large_err)]
fn find<'a>(
    rt: &'a crate::proxy::runtime::Runtime,
    pool: &str,
    addr: &str,
) -> Result<(&'a Arc<Pool>, Arc<Server>), Response<AdminBody>> {
    let p = rt.pool(pool).ok_or_else(|| no_pool(pool))?;
    let s = p.server(addr).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "no_server",
            format!("pool {pool:?} has no server {addr:?}"),
        )
    })?;
    Ok((p, s))
}

/// Serve the admin listener until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<App>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(shared.clone(), req));
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10));
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, "admin connection ended: {e}");
                },
                _ = stop.cancelled() => {}
            }
        });
    }
}
