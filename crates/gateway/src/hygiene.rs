//! Request hygiene: what a request must look like before it is routed.
//!
//! What hyper's HTTP/1 parser already refuses (and tests check): malformed
//! request lines and headers, obs-fold (a header line starting with a
//! space), duplicate Content-Length headers that differ, Transfer-Encoding
//! other than chunked-last, heads over `max_header_size` (431). hyper accepts
//! Content-Length together with Transfer-Encoding (RFC 9112 lets a server
//! drop the length and close afterwards); the gateway refuses it with 400,
//! which needs [`HeadSniffer`] because hyper removes the Content-Length
//! before the request reaches us. Everything else is [`admit`]: origin-form
//! only (no absolute-form, no CONNECT: never an open proxy), path
//! normalisation before route matching, the declared body size, the rate
//! limit.
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::body::ClientBody;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};

use crate::body::ProxyBody;
use crate::conn::ConnInfo;
use crate::proxy::json_error;
use crate::Shared;

/// Counts of requests refused by the hygiene rules and the connection
/// timeouts (for the metrics exporter).
#[derive(Debug, Default)]
pub struct HygieneCounters {
    pub(crate) bad_request: AtomicU64,
    pub(crate) body_too_large: AtomicU64,
    pub(crate) header_timeouts: AtomicU64,
    pub(crate) idle_closed: AtomicU64,
    pub(crate) conn_limited: AtomicU64,
}

impl HygieneCounters {
    /// Requests refused with 400 by the gateway (absolute-form, CONNECT,
    /// bad path, Content-Length with Transfer-Encoding). Parse errors that
    /// hyper answers itself are not seen here.
    pub fn bad_requests(&self) -> u64 {
        self.bad_request.load(Relaxed)
    }
    /// Requests refused with 413 (declared or streamed body too large).
    pub fn body_too_large(&self) -> u64 {
        self.body_too_large.load(Relaxed)
    }
    /// Connections closed because a request head did not arrive within
    /// `listen.header_read_timeout` (slowloris).
    pub fn header_timeouts(&self) -> u64 {
        self.header_timeouts.load(Relaxed)
    }
    /// Keep-alive connections closed after `listen.keepalive_timeout` idle.
    pub fn idle_closed(&self) -> u64 {
        self.idle_closed.load(Relaxed)
    }
    /// Requests answered 503 on connections over `max_connections_per_ip`.
    pub fn conn_limited(&self) -> u64 {
        self.conn_limited.load(Relaxed)
    }
}

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
    shared.edge.counters.bad_request.fetch_add(1, Relaxed);
    close(json_error(StatusCode::BAD_REQUEST, code, msg), info)
}

pub(crate) fn too_large(shared: &Shared, limit: u64) -> Response<ProxyBody> {
    shared.edge.counters.body_too_large.fetch_add(1, Relaxed);
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
            shared.edge.counters.conn_limited.fetch_add(1, Relaxed);
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
    let max = shared.edge.max_body_size;
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
    limiter: Arc<crate::limits::RateLimiter>,
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

/// Follows the raw HTTP/1 byte stream of a connection alongside hyper to
/// spot what hyper hides: a request head with both Content-Length and
/// Transfer-Encoding. It knows each message's framing, so it finds every
/// head even on keep-alive and pipelined connections; on anything it does
/// not understand it turns itself off (hyper's own parser stays the judge).
#[derive(Debug)]
pub(crate) struct HeadSniffer {
    state: Sniff,
    head: Vec<u8>,
    max_head: usize,
    /// The largest chunk accepted (`listen.max_body_size`; 0: no limit).
    max_chunk: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Sniff {
    /// Waiting for / reading a request head.
    Head,
    /// Skipping `n` body bytes.
    Body(u64),
    /// Chunked body: reading a chunk-size line (bytes kept in `head`).
    ChunkSize,
    /// Inside a chunk: `n` data bytes, then CRLF.
    ChunkData(u64),
    ChunkCrlf(u8),
    /// Trailer section: lines until an empty one (bytes kept in `head`).
    Trailers,
    Off,
}

/// What the sniffer saw in one request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadFlags {
    pub cl_te_conflict: bool,
}

/// Events for the connection: a head started, a head ended; a chunked body
/// broke its framing (the request must fail as the client's fault); the
/// guard lost track of the framing (the connection must take no more
/// requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SniffEvent {
    HeadStarted,
    HeadDone(HeadFlags),
    BadChunk { too_large: bool },
    Lost,
}

impl HeadSniffer {
    pub(crate) fn new(max_head: usize, max_chunk: u64) -> HeadSniffer {
        HeadSniffer {
            state: Sniff::Head,
            head: Vec::new(),
            max_head,
            max_chunk,
        }
    }

    /// Stop following the bytes: the connection must take no more requests.
    fn lose(&mut self, ev: &mut impl FnMut(SniffEvent)) {
        self.state = Sniff::Off;
        ev(SniffEvent::Lost);
    }

    pub(crate) fn is_off(&self) -> bool {
        self.state == Sniff::Off
    }

    /// Feed bytes read from the client; `ev` gets the events in order.
    pub(crate) fn feed(&mut self, mut data: &[u8], ev: &mut impl FnMut(SniffEvent)) {
        while !data.is_empty() {
            match &mut self.state {
                Sniff::Off => return,
                Sniff::Head => {
                    if self.head.is_empty() {
                        // Empty lines before a request line are ignored (RFC 9112 §2.2).
                        let skip = data
                            .iter()
                            .take_while(|&&c| c == b'\r' || c == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                        ev(SniffEvent::HeadStarted);
                    }
                    let start = self.head.len().saturating_sub(2);
                    let take = data
                        .len()
                        .min(self.max_head + 1 - self.head.len().min(self.max_head));
                    self.head.extend_from_slice(&data[..take]);
                    match head_end(&self.head, start) {
                        Some(end) => {
                            let used = end - (self.head.len() - take);
                            data = &data[used..];
                            self.head.truncate(end);
                            self.end_head(ev);
                        }
                        None => {
                            data = &data[take..];
                            if self.head.len() > self.max_head {
                                // hyper answers 431 and closes.
                                self.lose(ev);
                            }
                        }
                    }
                }
                Sniff::Body(n) => {
                    let k = (*n).min(data.len() as u64);
                    *n -= k;
                    data = &data[k as usize..];
                    if *n == 0 {
                        self.state = Sniff::Head;
                    }
                }
                Sniff::ChunkSize | Sniff::Trailers => {
                    let Some(nl) = data.iter().position(|&c| c == b'\n') else {
                        self.head.extend_from_slice(data);
                        if self.head.len() > self.max_head {
                            // A chunk-size or trailer line without end.
                            if self.state == Sniff::ChunkSize {
                                ev(SniffEvent::BadChunk { too_large: false });
                            }
                            self.lose(ev);
                        }
                        return;
                    };
                    self.head.extend_from_slice(&data[..=nl]);
                    data = &data[nl + 1..];
                    let line = std::mem::take(&mut self.head);
                    let line = line.strip_suffix(b"\n").unwrap_or(&line);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if self.state == Sniff::Trailers {
                        if line.is_empty() {
                            self.state = Sniff::Head;
                        }
                        continue;
                    }
                    self.state = match chunk_size(line) {
                        Some(0) => Sniff::Trailers,
                        Some(n) if self.max_chunk == 0 || n <= self.max_chunk => {
                            Sniff::ChunkData(n)
                        }
                        too_large => {
                            ev(SniffEvent::BadChunk {
                                too_large: too_large.is_some(),
                            });
                            self.lose(ev);
                            return;
                        }
                    };
                }
                Sniff::ChunkData(n) => {
                    let k = (*n).min(data.len() as u64);
                    *n -= k;
                    data = &data[k as usize..];
                    if *n == 0 {
                        self.state = Sniff::ChunkCrlf(0);
                    }
                }
                Sniff::ChunkCrlf(seen) => {
                    let want = if *seen == 0 { b'\r' } else { b'\n' };
                    if data[0] != want {
                        ev(SniffEvent::BadChunk { too_large: false });
                        self.lose(ev);
                        return;
                    }
                    data = &data[1..];
                    if *seen == 0 {
                        *seen = 1;
                    } else {
                        self.state = Sniff::ChunkSize;
                    }
                }
            }
        }
    }

    fn end_head(&mut self, ev: &mut impl FnMut(SniffEvent)) {
        let head = std::mem::take(&mut self.head);
        let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
        let mut req = httparse::Request::new(&mut []);
        let parsed = matches!(
            httparse::ParserConfig::default().parse_request_with_uninit_headers(
                &mut req,
                &head,
                &mut headers
            ),
            Ok(httparse::Status::Complete(_))
        );
        if !parsed {
            // hyper refuses it too (400/431) and closes the connection.
            self.lose(ev);
            return;
        }
        let mut cl: Option<u64> = None;
        let mut has_cl = false;
        let mut te = false;
        let mut upgrade = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                has_cl = true;
                cl = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        ev(SniffEvent::HeadDone(HeadFlags {
            cl_te_conflict: has_cl && te,
        }));
        self.state = if upgrade {
            // After 101 the bytes are not HTTP any more.
            Sniff::Off
        } else if te {
            Sniff::ChunkSize
        } else {
            match (has_cl, cl) {
                (false, _) | (true, Some(0)) => Sniff::Head,
                (true, Some(n)) => Sniff::Body(n),
                (true, None) => {
                    ev(SniffEvent::Lost);
                    Sniff::Off
                }
            }
        };
    }
}

/// The end (one past the blank line) of the head in `buf`, searching from
/// `from`: the first empty line, whether lines end in CRLF or a bare LF
/// (hyper's parser accepts both, so the guard must too).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = memchr::memchr(b'\n', &buf[i..]) {
        let nl = i + off;
        // The line that this LF ends is empty: the previous byte is an LF,
        // or a CR right after an LF.
        let empty = nl >= 1
            && (buf[nl - 1] == b'\n' || (nl >= 2 && buf[nl - 1] == b'\r' && buf[nl - 2] == b'\n'));
        if empty {
            return Some(nl + 1);
        }
        i = nl + 1;
    }
    None
}

/// A chunk-size line's size (RFC 9112 §7.1: `1*HEXDIG [BWS ";" chunk-ext]`):
/// no sign, no `0x`, no leading white space, no overflow. None when invalid.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let rest = &line[digits..];
    // Only white space after the size (tolerated like hyper), or BWS and
    // an extension.
    let rest_ok = rest
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .is_none_or(|p| rest[p] == b';');
    if !rest_ok {
        return None;
    }
    let mut n: u64 = 0;
    for &c in &line[..digits] {
        let d = (c as char).to_digit(16)? as u64;
        n = n.checked_mul(16)?.checked_add(d)?;
    }
    Some(n)
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

    fn sniff_all(chunks: &[&[u8]]) -> (Vec<SniffEvent>, bool) {
        let mut s = HeadSniffer::new(8192, 0);
        let mut evs = Vec::new();
        for c in chunks {
            s.feed(c, &mut |e| evs.push(e));
        }
        (evs, s.is_off())
    }

    fn done(conflict: bool) -> SniffEvent {
        SniffEvent::HeadDone(HeadFlags {
            cl_te_conflict: conflict,
        })
    }

    #[test]
    fn sniffer_follows_keep_alive_framing() {
        let stream: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
POST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
POST /z HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /w HTTP/1.1\r\nHost: a\r\n\r\n";
        let want = vec![
            SniffEvent::HeadStarted,
            done(false),
            SniffEvent::HeadStarted,
            done(false),
            SniffEvent::HeadStarted,
            done(false),
            SniffEvent::HeadStarted,
            done(true),
            SniffEvent::HeadStarted,
            done(false),
        ];
        // Whole, and one byte at a time.
        assert_eq!(sniff_all(&[stream]), (want.clone(), false));
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(sniff_all(&bytes), (want, false));
        // Body bytes that look like a head are not taken for one.
        let inner = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n";
        let tricky = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{inner}",
            inner.len()
        );
        let (evs, off) = sniff_all(&[tricky.as_bytes()]);
        assert_eq!(evs, vec![SniffEvent::HeadStarted, done(false)]);
        assert!(!off);
    }

    #[test]
    fn sniffer_turns_off_on_upgrade_and_garbage() {
        let (_, off) = sniff_all(&[
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x85",
        ]);
        assert!(off);
        let (_, off) = sniff_all(&[b"GET / HTTP/1.1\r\n bad fold\r\n\r\n"]);
        assert!(off);
    }

    #[test]
    fn sniffer_finds_heads_with_bare_lf_line_endings() {
        let stream: &[u8] = b"GET /a HTTP/1.1\nHost: a\n\n\
GET /b HTTP/1.1\r\nHost: a\n\r\n\
POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let want = vec![
            SniffEvent::HeadStarted,
            done(false),
            SniffEvent::HeadStarted,
            done(false),
            SniffEvent::HeadStarted,
            done(true),
        ];
        assert_eq!(sniff_all(&[stream]), (want.clone(), false));
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(sniff_all(&bytes), (want, false));
    }

    #[test]
    fn chunk_size_lines_follow_the_grammar() {
        assert_eq!(chunk_size(b"5"), Some(5));
        assert_eq!(chunk_size(b"1aF"), Some(0x1af));
        assert_eq!(chunk_size(b"5;ext=1"), Some(5));
        assert_eq!(chunk_size(b"5 ;ext"), Some(5));
        assert_eq!(chunk_size(b"0000000000000000005"), Some(5));
        assert_eq!(chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"0x5",
            b"+5",
            b"-5",
            b" 5",
            b"5x",
            b"5 x",
            b"10000000000000000",
            b";ext",
        ] {
            assert_eq!(chunk_size(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn sniffer_flags_bad_and_oversized_chunks() {
        let mut s = HeadSniffer::new(8192, 1000);
        let mut evs = Vec::new();
        s.feed(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8000000000000005\r\n",
            &mut |e| evs.push(e),
        );
        assert!(
            evs.contains(&SniffEvent::BadChunk { too_large: true }),
            "{evs:?}"
        );
        assert!(s.is_off());
        let mut s = HeadSniffer::new(8192, 0);
        let mut evs = Vec::new();
        s.feed(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\n",
            &mut |e| evs.push(e),
        );
        assert!(
            evs.contains(&SniffEvent::BadChunk { too_large: false }),
            "{evs:?}"
        );
        assert_eq!(evs.last(), Some(&SniffEvent::Lost));
    }
}
