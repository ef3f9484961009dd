//! One client connection: the connection limit, TLS (ALPN h2 or
//! http/1.1), the hyper server connection, and the connection timeouts
//! hyper does not keep the way the gateway wants them:
//!
//! - `header_read_timeout` (slowloris): the first request head must be
//!   complete within it of the connection's start, every later head within
//!   it of its first byte; otherwise the connection is dropped;
//! - `keepalive_timeout`: a connection with no request in progress (and no
//!   response still streaming) is closed after it;
//! - `send_timeout` ([`SendTimeout`], under both HTTP/1.1 servers and
//!   HTTP/2): a write to the client that makes no progress for that long
//!   fails, which closes the connection.
//!
//! hyper's own header timer also runs while a keep-alive connection is idle,
//! which would make the two one; so it is off and the timers live here.
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, STRICT_TRANSPORT_SECURITY};
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::body::{BoxError, ProxyBody};
use crate::hygiene::{HeadFlags, HeadSniffer, HygieneCounters, SniffEvent};
use crate::limits::{ConnGuard, ConnLimiter, RateLimiter};
use crate::pool::now_nanos;
use crate::tls::TlsTerminator;
use crate::Shared;

/// The edge settings and state shared by every connection.
#[derive(Debug)]
pub(crate) struct Edge {
    pub(crate) tls: Option<Arc<TlsTerminator>>,
    /// Swapped whole when the rules change (reload).
    pub(crate) rate_limiter: arc_swap::ArcSwap<RateLimiter>,
    pub(crate) conn_limiter: Arc<ConnLimiter>,
    pub(crate) counters: Arc<HygieneCounters>,
    /// 0 = no limit.
    pub(crate) max_body_size: u64,
    pub(crate) max_header_size: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) keepalive_timeout: Duration,
    /// 0 = none.
    pub(crate) send_timeout: Duration,
    /// `listen.client_body_timeout` (None: never).
    pub(crate) client_body_timeout: Option<Duration>,
}

impl Edge {
    /// The edge's counters in Prometheus text format (appended to the
    /// gateway's `/metrics`).
    pub(crate) fn render_metrics(&self, o: &mut String) {
        use std::fmt::Write;
        let mut one = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let rl = self.rate_limiter.load();
        one(
            "ragfleet_gateway_rate_limited_total",
            "counter",
            "Requests refused with 429 by a rate-limit rule.",
            rl.rate_limited(),
        );
        one(
            "ragfleet_gateway_rate_limit_redis_fallback",
            "gauge",
            "1 while the shared (Redis) rate limiter is unreachable and the local one is used.",
            u64::from(rl.redis_fallback_active()),
        );
        one(
            "ragfleet_gateway_rate_limit_redis_errors_total",
            "counter",
            "Redis rate-limit calls that failed or timed out.",
            rl.redis_errors(),
        );
        one(
            "ragfleet_gateway_rate_limit_redis_fallbacks_total",
            "counter",
            "Switches from the shared (Redis) to the local rate limiter.",
            rl.redis_fallbacks(),
        );
        one(
            "ragfleet_gateway_connections_refused_total",
            "counter",
            "Connections refused by max_connections_per_ip (limit_conn).",
            self.conn_limiter.refused(),
        );
        let c = &self.counters;
        one(
            "ragfleet_gateway_bad_requests_total",
            "counter",
            "Requests refused by the request hygiene rules (400, 431).",
            c.bad_requests(),
        );
        one(
            "ragfleet_gateway_body_too_large_total",
            "counter",
            "Requests refused with 413 (body over listen.max_body_size).",
            c.body_too_large(),
        );
        one(
            "ragfleet_gateway_header_timeouts_total",
            "counter",
            "Connections closed because a request head did not arrive in time (slowloris).",
            c.header_timeouts(),
        );
        one(
            "ragfleet_gateway_idle_closed_total",
            "counter",
            "Keep-alive connections closed after listen.keepalive_timeout idle.",
            c.idle_closed(),
        );
        if let Some(tls) = &self.tls {
            one(
                "ragfleet_gateway_tls_handshakes_total",
                "counter",
                "TLS handshakes completed.",
                tls.handshakes(),
            );
            one(
                "ragfleet_gateway_tls_handshake_failures_total",
                "counter",
                "TLS handshakes that failed or timed out.",
                tls.handshake_failures(),
            );
            one(
                "ragfleet_gateway_tls_reloads_total",
                "counter",
                "Certificate reloads applied.",
                tls.reloads(),
            );
        }
    }
}

/// Live state of one connection, shared by its I/O, its service and its
/// timer.
#[derive(Debug)]
pub(crate) struct ConnState {
    refused: bool,
    inflight: AtomicU32,
    requests: AtomicU64,
    /// When the head being read got its first byte (0 = none pending).
    head_started: AtomicU64,
    /// When the last request finished (or the connection started).
    idle_since: AtomicU64,
    close: AtomicBool,
    /// Wakes the connection driver to close (nothing else does: it checks
    /// the timers on its own, see `drive`).
    wake: Notify,
    heads: Mutex<VecDeque<HeadFlags>>,
    /// The framing guard saw a bad chunked body (0 none; see `FAULT_*`).
    bad_framing: std::sync::atomic::AtomicU8,
}

const FAULT_FRAMING: u8 = 1;
const FAULT_TOO_LARGE: u8 = 2;

impl ConnState {
    /// Over `max_connections_per_ip`: every request is answered 503.
    pub(crate) fn refused(&self) -> bool {
        self.refused
    }

    fn new(refused: bool) -> ConnState {
        ConnState {
            refused,
            inflight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(now_nanos()),
            close: AtomicBool::new(false),
            wake: Notify::new(),
            heads: Mutex::new(VecDeque::new()),
            bad_framing: std::sync::atomic::AtomicU8::new(0),
        }
    }
}

/// Per-request view of its connection (a request extension).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo(Arc<ConnState>);

impl ConnInfo {
    /// The connection is over `max_connections_per_ip`.
    pub(crate) fn refused(&self) -> bool {
        self.0.refused
    }

    /// Whether this request's head had both Content-Length and
    /// Transfer-Encoding (HTTP/1 only; heads are taken in order).
    pub(crate) fn take_cl_te_conflict(&self) -> bool {
        self.0
            .heads
            .lock()
            .ok()
            .and_then(|mut q| q.pop_front())
            .is_some_and(|f| f.cl_te_conflict)
    }

    /// Close the connection once the response in progress is sent.
    pub(crate) fn close_after_response(&self) {
        self.0.close.store(true, Relaxed);
        self.0.wake.notify_one();
    }
}

impl crate::body::FramingFlag for ConnInfo {
    fn bad_framing(&self) -> Option<crate::body::ClientFault> {
        match self.0.bad_framing.load(Relaxed) {
            FAULT_FRAMING => Some(crate::body::ClientFault::BadFraming),
            FAULT_TOO_LARGE => Some(crate::body::ClientFault::TooLarge),
            _ => None,
        }
    }
}

/// Counts a request in flight from its head until its response body is
/// done (or dropped).
struct RequestGuard(Arc<ConnState>);

impl RequestGuard {
    fn begin(state: &Arc<ConnState>) -> RequestGuard {
        state.inflight.fetch_add(1, Relaxed);
        state.requests.fetch_add(1, Relaxed);
        RequestGuard(state.clone())
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Relaxed) == 1 {
            self.0.idle_since.store(now_nanos(), Relaxed);
        }
    }
}

/// The response body as sent to the client: the proxy's, plus the guard.
pub(crate) struct ConnBody {
    inner: ProxyBody,
    _req: RequestGuard,
}

impl Body for ConnBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's byte stream, watched: HTTP/1 heads are followed by the
/// sniffer (head start times, Content-Length/Transfer-Encoding conflicts).
/// Holds the connection-limit slot for as long as the bytes flow, WebSocket
/// tunnels included.
pub(crate) struct Watched<T> {
    inner: T,
    state: Arc<ConnState>,
    sniffer: Option<HeadSniffer>,
    _slot: Option<ConnGuard>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(s) = &mut this.sniffer {
            let new = &buf.filled()[before..];
            if !new.is_empty() && !s.is_off() {
                let state = &this.state;
                s.feed(new, &mut |ev| match ev {
                    SniffEvent::HeadStarted => {
                        state.head_started.store(now_nanos(), Relaxed);
                    }
                    SniffEvent::HeadDone(f) => {
                        state.head_started.store(0, Relaxed);
                        if let Ok(mut q) = state.heads.lock() {
                            q.push_back(f);
                        }
                    }
                    SniffEvent::BadChunk { too_large } => {
                        let code = if too_large {
                            FAULT_TOO_LARGE
                        } else {
                            FAULT_FRAMING
                        };
                        state.bad_framing.store(code, Relaxed);
                        // What follows on this connection cannot be trusted.
                        state.close.store(true, Relaxed);
                        state.wake.notify_one();
                    }
                    SniffEvent::Lost => {
                        // The guard can no longer see heads: no more requests.
                        state.close.store(true, Relaxed);
                        state.wake.notify_one();
                    }
                });
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Serve one accepted TCP connection until it ends, the gateway stops
/// (graceful: the request in progress finishes) or a timeout closes it.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let (slot, refused) = match shared.edge.conn_limiter.acquire(peer.ip()) {
        Ok(slot) => (slot, false),
        Err(()) => {
            tracing::debug!(%peer, "over max_connections_per_ip: answering 503");
            (None, true)
        }
    };
    let state = Arc::new(ConnState::new(refused));
    match shared.edge.tls.clone() {
        None => crate::h1::server::serve(shared, stream, peer, state, slot, None, stop).await,
        Some(tls) => {
            let hard_stop = shared.hard_stop.clone();
            let accepted = tokio::select! {
                r = tls.accept(stream, peer) => r,
                _ = hard_stop.cancelled() => None,
            };
            let Some((stream, h2)) = accepted else {
                return;
            };
            let hsts = tls.hsts();
            // A fresh start for the header timer: the handshake had its own.
            state.idle_since.store(now_nanos(), Relaxed);
            if h2 {
                let stream = SendTimeout::new(stream, shared.edge.send_timeout);
                let io = watched(stream, &state, &shared, slot, false);
                serve_h2(shared, io, peer, state, hsts, stop).await
            } else {
                crate::h1::server::serve(shared, stream, peer, state, slot, hsts, stop).await
            }
        }
    }
}

/// A client's byte stream under `listen.send_timeout`: a write, flush or
/// shutdown that stays pending (the client is not reading; the socket
/// buffer is full) for that long fails with `TimedOut`, and the server
/// closes the connection. Without it a client that stops reading holds its
/// connection, and the upstream stream behind it, for as long as it likes
/// (nginx's `send_timeout`). The clock is only read when a write would
/// block; any write that makes progress disarms the timer.
pub(crate) struct SendTimeout<T> {
    inner: T,
    /// `None`: no timeout.
    timeout: Option<Duration>,
    /// Made on the first write that would block, then reused.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl<T> SendTimeout<T> {
    pub(crate) fn new(inner: T, timeout: Duration) -> SendTimeout<T> {
        SendTimeout {
            inner,
            timeout: (!timeout.is_zero()).then_some(timeout),
            timer: None,
            armed: false,
        }
    }

    /// Pass on a write-side result; a pending one arms the timer (if not
    /// yet armed) and fails once it has run out.
    fn watch<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.armed = false;
            return r;
        }
        let Some(timeout) = self.timeout else {
            return r;
        };
        if !self.armed {
            let deadline = tokio::time::Instant::now() + timeout;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let expired = match &mut self.timer {
            Some(t) => t.as_mut().poll(cx).is_ready(),
            None => false,
        };
        if expired {
            self.armed = false;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "listen.send_timeout: the client stopped reading",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, r)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, r)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, r)
    }
}

pub(crate) fn watched<T>(
    inner: T,
    state: &Arc<ConnState>,
    shared: &Shared,
    slot: Option<ConnGuard>,
    h1: bool,
) -> Watched<T> {
    Watched {
        inner,
        state: state.clone(),
        sniffer: h1
            .then(|| HeadSniffer::new(shared.edge.max_header_size, shared.edge.max_body_size)),
        _slot: slot,
    }
}

type Svc = Box<
    dyn Fn(
            Request<Incoming>,
        )
            -> Pin<Box<dyn Future<Output = Result<http::Response<ConnBody>, Infallible>> + Send>>
        + Send
        + Sync,
>;

fn service(
    shared: Arc<Shared>,
    peer: SocketAddr,
    state: Arc<ConnState>,
    hsts: Option<HeaderValue>,
    h2: bool,
) -> Svc {
    Box::new(move |mut req: Request<Incoming>| {
        let shared = shared.clone();
        let state = state.clone();
        let hsts = hsts.clone();
        Box::pin(async move {
            let guard = RequestGuard::begin(&state);
            req.extensions_mut().insert(ConnInfo(state));
            let req = req.map(crate::body::ClientBody::Hyper);
            let Ok(mut res) = crate::proxy::handle(shared, peer, req).await;
            if let Some(h) = hsts {
                res.headers_mut().insert(STRICT_TRANSPORT_SECURITY, h);
            }
            if h2 {
                // Connection-specific: not allowed in HTTP/2 (closing is
                // done with GOAWAY by the connection driver).
                res.headers_mut().remove(CONNECTION);
            }
            Ok(res.map(|inner| ConnBody { inner, _req: guard }))
        })
    })
}

pub(crate) async fn serve_h1<T>(
    shared: Arc<Shared>,
    io: Watched<T>,
    peer: SocketAddr,
    state: Arc<ConnState>,
    hsts: Option<HeaderValue>,
    stop: CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service(shared.clone(), peer, state.clone(), hsts, false);
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(None)
        .max_header_size(shared.edge.max_header_size);
    let conn = b
        .serve_connection(TokioIo::new(io), service_fn(svc))
        .with_upgrades();
    drive(
        conn,
        |c| c.graceful_shutdown(),
        &shared,
        &state,
        peer,
        stop,
        true,
    )
    .await
}

async fn serve_h2<T>(
    shared: Arc<Shared>,
    io: Watched<T>,
    peer: SocketAddr,
    state: Arc<ConnState>,
    hsts: Option<HeaderValue>,
    stop: CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service(shared.clone(), peer, state.clone(), hsts, true);
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(shared.edge.max_header_size).unwrap_or(u32::MAX));
    let conn = b.serve_connection(TokioIo::new(io), service_fn(svc));
    drive(
        conn,
        |c| c.graceful_shutdown(),
        &shared,
        &state,
        peer,
        stop,
        false,
    )
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    Header,
    Idle,
}

/// The next connection deadline, if any (in `now_nanos` time).
fn next_deadline(
    state: &ConnState,
    edge: &Edge,
    started: u64,
    h1: bool,
) -> Option<(u64, Deadline)> {
    if state.inflight.load(Relaxed) > 0 {
        return None;
    }
    let header = edge.header_read_timeout.as_nanos() as u64;
    if header > 0 {
        if state.requests.load(Relaxed) == 0 {
            return Some((started.saturating_add(header), Deadline::Header));
        }
        let hs = state.head_started.load(Relaxed);
        if h1 && hs != 0 {
            return Some((hs.saturating_add(header), Deadline::Header));
        }
    }
    let idle = edge.keepalive_timeout.as_nanos() as u64;
    (idle > 0).then(|| {
        (
            state.idle_since.load(Relaxed).saturating_add(idle),
            Deadline::Idle,
        )
    })
}

async fn drive<C, E>(
    conn: C,
    shutdown: impl Fn(Pin<&mut C>),
    shared: &Shared,
    state: &ConnState,
    peer: SocketAddr,
    stop: CancellationToken,
    h1: bool,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let edge = &shared.edge;
    let started = now_nanos();
    let mut closing = false;
    // The driver is not woken per request (that would cost two wake-ups and
    // a timer per request): it wakes at the next known deadline or after
    // `tick`, whichever is first. A tick of at most half of each timeout
    // means a deadline that appears while it sleeps (a head starts, a
    // request ends) is seen before it passes, so timeouts stay exact.
    let tick = [edge.header_read_timeout, edge.keepalive_timeout]
        .into_iter()
        .filter(|d| !d.is_zero())
        .min()
        .map_or(Duration::from_secs(3600), |d| {
            (d / 2).max(Duration::from_millis(20))
        });
    loop {
        let now = now_nanos();
        let deadline = if closing {
            None
        } else {
            next_deadline(state, edge, started, h1)
        };
        if let Some((_, kind)) = deadline.filter(|(t, _)| now >= *t) {
            match kind {
                Deadline::Header => {
                    edge.counters.header_timeouts.fetch_add(1, Relaxed);
                    tracing::debug!(%peer, "no complete request head within header_read_timeout: closing");
                    return;
                }
                Deadline::Idle => {
                    edge.counters.idle_closed.fetch_add(1, Relaxed);
                    tracing::debug!(%peer, "keep-alive connection idle: closing");
                    shutdown(conn.as_mut());
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
                    return;
                }
            }
        }
        let tick_ns = tick.as_nanos() as u64;
        let wake_at = deadline
            .map_or(u64::MAX, |(t, _)| t)
            .min(now.saturating_add(tick_ns));
        let sleep_for = Duration::from_nanos(wake_at.saturating_sub(now));
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            _ = state.wake.notified() => {
                if state.close.load(Relaxed) && !closing {
                    closing = true;
                    shutdown(conn.as_mut());
                }
            }
            _ = tokio::time::sleep(sleep_for) => {}
            _ = shared.hard_stop.cancelled() => return,
            _ = stop.cancelled(), if !closing => {
                // Shutting down: finish the request in progress, then close.
                shutdown(conn.as_mut());
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = shared.hard_stop.cancelled() => {}
                }
                return;
            }
        }
    }
}
