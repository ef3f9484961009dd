//! Request hygiene: what a request must look like before it is routed.
//!
//! What hyper's HTTP/1 parser already refuses (and tests check): malformed
//! request lines and headers, obs-fold (a header line starting with a
//! space), duplicate Content-Length headers that differ, Transfer-Encoding
//! other than chunked-last, heads over `max_header_size` (431). hyper accepts
//! Content-Length together with Transfer-Encoding (RFC 9112 lets a server
//! drop the length and close afterwards); the gateway refuses it with 400,
//! which needs [`HeadSniffer`] because hyper removes the Content-Length
//! before the request reaches us. Everything else is `check`: origin-form
//! only (no absolute-form, no CONNECT: never an open proxy), path
//! normalisation before route matching, the declared body size, the rate
//! limit.
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::http::body::ClientBody;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};

use crate::http::conn::ConnInfo;
use crate::http::response::json_error;
use crate::http::response::ProxyBody;
use crate::proxy::state::Shared;

pub use crate::http::conn::HygieneCounters;

/// Close the connection after this response. Only HTTP/1 needs it (the
/// framing of what follows cannot be trusted); an h2 stream is independent.
fn close(mut res: Response<ProxyBody>, info: Option<&ConnInfo>) -> Response<ProxyBody> {
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    if let Some(i) = info {
        i.close_after_response();
    }
    res
}

fn bad(shared: &Shared, info: Option<&ConnInfo>, code: &str, msg: &str) -> Response<ProxyBody> {
    shared.edge.serve.counters.bad_request.fetch_add(1, Relaxed);
    close(json_error(StatusCode::BAD_REQUEST, code, msg), info)
}

pub(crate) fn too_large(shared: &Shared, limit: u64) -> Response<ProxyBody> {
    shared
        .edge
        .serve
        .counters
        .body_too_large
        .fetch_add(1, Relaxed);
    let mut res = json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        &format!("request body exceeds {limit} bytes (listen.max_body_size)"),
    );
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// Admission, part one: the checks that need no waiting — connection
/// state, framing, target form, path normalisation, declared body size. On
/// success the URI is in origin-form with its path normalised (what routes
/// match and upstreams receive). Part two is [`rate_limit`], for requests
/// under rate-limit rules.
// The refusal is the response itself, as large as the request it replaces.
#[allow(clippy::result_large_err)]
pub(crate) fn check(
    shared: &Arc<Shared>,
    mut req: Request<ClientBody>,
) -> Result<Request<ClientBody>, Response<ProxyBody>> {
    let conn = req.extensions().get::<ConnInfo>().cloned();
    if let Some(i) = &conn {
        if i.refused() {
            shared
                .edge
                .serve
                .counters
                .conn_limited
                .fetch_add(1, Relaxed);
            let res = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                "too many open connections from this address (listen.max_connections_per_ip)",
            );
            return Err(close(res, Some(i)));
        }
    }
    // What follows a bad HTTP/1 request on its connection cannot be trusted.
    let info = conn.as_ref().filter(|_| req.version() != Version::HTTP_2);
    if let Some(i) = info {
        if i.take_cl_te_conflict() {
            return Err(bad(
                shared,
                info,
                "bad_framing",
                "Content-Length and Transfer-Encoding together are refused (request smuggling)",
            ));
        }
    }
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return Err(bad(shared, info, "bad_host", "more than one Host header"));
    }
    if req.method() == Method::CONNECT {
        return Err(bad(
            shared,
            info,
            "connect_refused",
            "CONNECT is refused: this gateway is not a forward proxy",
        ));
    }
    if req.version() == Version::HTTP_2 {
        // h2 carries the authority as a pseudo-header: make it the Host
        // header and the URI origin-form, as on HTTP/1.1.
        if !req.headers().contains_key(header::HOST) {
            if let Some(a) = req.uri().authority() {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
        }
    } else if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        return Err(bad(
            shared,
            info,
            "absolute_form_refused",
            "the request-target must be a path (origin-form): this gateway is not a forward proxy",
        ));
    }
    let path = req.uri().path();
    let normal = match normalize_path(path) {
        Ok(p) => p,
        Err(why) => return Err(bad(shared, info, "bad_path", why)),
    };
    if req.version() == Version::HTTP_2 || matches!(normal, Cow::Owned(_)) {
        let pq = match req.uri().query() {
            Some(q) => format!("{normal}?{q}"),
            None => normal.into_owned(),
        };
        match Uri::builder().path_and_query(pq).build() {
            Ok(u) => *req.uri_mut() = u,
            Err(_) => return Err(bad(shared, info, "bad_path", "invalid request path")),
        }
    }
    let max = shared.edge.serve.max_body_size;
    if max > 0 {
        let declared = match req.body() {
            // Already read, and its length checked against the header.
            ClientBody::Buffered(b) => Some(b.len() as u64),
            ClientBody::Hyper(_) => req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok()),
        };
        if declared.is_some_and(|n| n > max) {
            if let Some(i) = info {
                i.close_after_response();
            }
            return Err(too_large(shared, max));
        }
    }
    Ok(req)
}

/// Admission, part two: the rate limits (when there are rules).
pub(crate) async fn rate_limit(
    peer: SocketAddr,
    req: Request<ClientBody>,
    limiter: Arc<crate::proxy::limits::RateLimiter>,
) -> Result<Request<ClientBody>, Response<ProxyBody>> {
    if let Err(d) = limiter
        .check(peer.ip(), req.uri().path(), req.headers())
        .await
    {
        let secs = d.retry_after.as_secs() + u64::from(d.retry_after.subsec_nanos() > 0);
        let secs = secs.max(1);
        let mut res = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            &format!("rate limit {:?} exceeded; retry after {secs} s", d.rule),
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Err(res);
    }
    Ok(req)
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalise a request path: decode percent-encoded unreserved characters
/// (`%2e` → `.`, `%41` → `A`; other escapes are kept, upper-cased), collapse
/// `//`, resolve `.` and `..`. Refused: a path not starting with `/`, an
/// encoded slash (`%2F`), backslash (`%5C`) or NUL (`%00`), a malformed
/// escape, `..` above the root.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    if !raw.starts_with('/') {
        return Err("the path must start with '/'");
    }
    let b = raw.as_bytes();
    let clean = !raw.contains('%')
        && !raw.contains("//")
        && !b.windows(2).enumerate().any(|(i, w)| {
            // A segment that is "." or "..".
            w[0] == b'/' && w[1] == b'.' && matches!(b.get(i + 2), None | Some(b'/') | Some(b'.'))
        });
    if clean {
        return Ok(Cow::Borrowed(raw));
    }
    // Decode unreserved escapes.
    let mut dec = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err("malformed percent-encoding in the path");
            };
            let v = h * 16 + l;
            match v {
                b'/' => return Err("an encoded slash (%2F) in the path is refused"),
                b'\\' => return Err("an encoded backslash (%5C) in the path is refused"),
                0 => return Err("an encoded NUL (%00) in the path is refused"),
                v if unreserved(v) => dec.push(v as char),
                v => {
                    dec.push('%');
                    dec.push(char::from(b"0123456789ABCDEF"[(v >> 4) as usize]));
                    dec.push(char::from(b"0123456789ABCDEF"[(v & 15) as usize]));
                }
            }
            i += 3;
        } else {
            dec.push(c as char);
            i += 1;
        }
    }
    let mut segs: Vec<&str> = Vec::new();
    let mut trailing = false;
    for s in dec.split('/').skip(1) {
        trailing = false;
        match s {
            "" => trailing = true,
            "." => trailing = true,
            ".." => {
                if segs.pop().is_none() {
                    return Err("the path climbs above the root");
                }
                trailing = true;
            }
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(dec.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segs.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let ok = |p: &str| normalize_path(p).unwrap().into_owned();
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/api/chat"), "/api/chat");
        assert_eq!(ok("/.well-known/x"), "/.well-known/x");
        assert_eq!(ok("/api/../admin"), "/admin");
        assert_eq!(ok("/api/%2e%2e/admin"), "/admin");
        assert_eq!(ok("/api/%2E%2e/admin"), "/admin");
        assert_eq!(ok("/api/.%2e/admin"), "/admin");
        assert_eq!(ok("/api//v1///x"), "/api/v1/x");
        assert_eq!(ok("/api/./x/."), "/api/x/");
        assert_eq!(ok("/api/x/.."), "/api/");
        assert_eq!(ok("/api/"), "/api/");
        assert_eq!(ok("/a/%41%7e%5f"), "/a/A~_");
        assert_eq!(ok("/a/%c3%a9%20b"), "/a/%C3%A9%20b");
        assert_eq!(ok("/a/%252e%252e/b"), "/a/%252e%252e/b");
    }

    #[test]
    fn paths_refused() {
        for p in [
            "/..",
            "/../etc/passwd",
            "/api/../../etc",
            "/api/%2e%2e/%2e%2e/x",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a%00b",
            "/a%zz",
            "/a%4",
            "*",
            "",
        ] {
            assert!(normalize_path(p).is_err(), "{p:?} must be refused");
        }
    }
}
