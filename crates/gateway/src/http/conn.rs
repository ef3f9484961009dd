//! One client connection as the HTTP layer keeps it: its live state
//! (`ConnState`, seen by requests as `ConnInfo`), the byte stream
//! watched by the framing guard (`Watched`) and under
//! `listen.send_timeout` (`SendTimeout`), and the [`Handler`] seam through
//! which every server hands requests up to the proxy.
//!
//! The connection timeouts hyper does not keep the way the gateway wants
//! them live with the servers (`hyper_conn.rs`, `h1/server.rs`):
//!
//! - `header_read_timeout` (slowloris): the first request head must be
//!   complete within it of the connection's start, every later head within
//!   it of its first byte; otherwise the connection is dropped;
//! - `keepalive_timeout`: a connection with no request in progress (and no
//!   response still streaming) is closed after it;
//! - `send_timeout` (`SendTimeout`, under both HTTP/1.1 servers and
//!   HTTP/2): a write to the client that makes no progress for that long
//!   fails, which closes the connection.
//!
//! hyper's own header timer also runs while a keep-alive connection is idle,
//! which would make the two one; so it is off and the timers live here.
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::base::clock::now_nanos;
use crate::http::body::{ClientBody, ClientFault, FramingFlag};
use crate::http::response::ProxyBody;
use crate::http::sniff::{HeadFlags, HeadSniffer, SniffEvent};
use crate::http::tls::TlsTerminator;

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

/// What every connection of a listener shares: its limits, timeouts,
/// counters, TLS, and the token that cuts everything at the shutdown
/// deadline.
#[derive(Debug)]
pub struct ServeCtx {
    pub tls: Option<Arc<TlsTerminator>>,
    pub counters: Arc<HygieneCounters>,
    /// 0 = no limit.
    pub max_body_size: u64,
    pub max_header_size: usize,
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    /// 0 = none.
    pub send_timeout: Duration,
    pub hard_stop: CancellationToken,
}

/// The request path as the HTTP layer sees it: the one way in from the
/// servers below to the proxy above. Every server (the own HTTP/1.1 loop,
/// hyper's HTTP/1.1 and HTTP/2) hands each request to `call` and writes
/// back what it returns; nothing here knows what `call` does.
pub trait Handler: Send + Sync + 'static {
    fn serve_ctx(&self) -> &ServeCtx;
    fn call(
        self: Arc<Self>,
        peer: SocketAddr,
        req: Request<ClientBody>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send;
}

/// Something held for as long as a connection's bytes flow (the slot of
/// a per-address connection limit): dropped when the connection ends,
/// WebSocket tunnels included.
pub type ConnSlot = Box<dyn Send + Sync>;

/// Live state of one connection, shared by its I/O, its service and its
/// timer.
#[derive(Debug)]
pub(crate) struct ConnState {
    pub(crate) refused: bool,
    pub(crate) inflight: AtomicU32,
    pub(crate) requests: AtomicU64,
    /// When the head being read got its first byte (0 = none pending).
    pub(crate) head_started: AtomicU64,
    /// When the last request finished (or the connection started).
    pub(crate) idle_since: AtomicU64,
    pub(crate) close: AtomicBool,
    /// Wakes the connection driver to close (nothing else does: it checks
    /// the timers on its own, see `drive`).
    pub(crate) wake: Notify,
    pub(crate) heads: Mutex<VecDeque<HeadFlags>>,
    /// The framing guard saw a bad chunked body (0 none; see `FAULT_*`).
    pub(crate) bad_framing: std::sync::atomic::AtomicU8,
}

const FAULT_FRAMING: u8 = 1;
const FAULT_TOO_LARGE: u8 = 2;

impl ConnState {
    /// Over `max_connections_per_ip`: every request is answered 503.
    pub(crate) fn refused(&self) -> bool {
        self.refused
    }

    pub(crate) fn new(refused: bool) -> ConnState {
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
pub(crate) struct ConnInfo(pub(crate) Arc<ConnState>);

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

impl FramingFlag for ConnInfo {
    fn bad_framing(&self) -> Option<ClientFault> {
        match self.0.bad_framing.load(Relaxed) {
            FAULT_FRAMING => Some(ClientFault::BadFraming),
            FAULT_TOO_LARGE => Some(ClientFault::TooLarge),
            _ => None,
        }
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
    _slot: Option<ConnSlot>,
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
    ctx: &ServeCtx,
    slot: Option<ConnSlot>,
    h1: bool,
) -> Watched<T> {
    Watched {
        inner,
        state: state.clone(),
        sniffer: h1.then(|| HeadSniffer::new(ctx.max_header_size, ctx.max_body_size)),
        _slot: slot,
    }
}
