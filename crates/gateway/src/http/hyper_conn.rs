//! hyper's HTTP/1.1 and HTTP/2 servers on a client connection, with the
//! connection timeouts of `conn.rs` kept by one driver per connection
//! (`drive`). HTTP/2 always runs here; HTTP/1.1 comes here when the own
//! loop (`h1/server.rs`) hands a connection over.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::base::clock::now_nanos;
use crate::http::body::{BoxError, ClientBody};
use crate::http::conn::{ConnInfo, ConnState, Handler, ServeCtx, Watched};
use crate::http::response::ProxyBody;

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

type Svc = Box<
    dyn Fn(
            Request<Incoming>,
        )
            -> Pin<Box<dyn Future<Output = Result<http::Response<ConnBody>, Infallible>> + Send>>
        + Send
        + Sync,
>;

fn service<H: Handler>(
    shared: Arc<H>,
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
            let req = req.map(ClientBody::Hyper);
            let mut res = H::call(shared, peer, req).await;
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

pub(crate) async fn serve_h1<T, H: Handler>(
    shared: Arc<H>,
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
        .max_header_size(shared.serve_ctx().max_header_size);
    let conn = b
        .serve_connection(TokioIo::new(io), service_fn(svc))
        .with_upgrades();
    drive(
        conn,
        |c| c.graceful_shutdown(),
        shared.serve_ctx(),
        &state,
        peer,
        stop,
        true,
    )
    .await
}

pub(crate) async fn serve_h2<T, H: Handler>(
    shared: Arc<H>,
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
    b.timer(TokioTimer::new()).max_header_list_size(
        u32::try_from(shared.serve_ctx().max_header_size).unwrap_or(u32::MAX),
    );
    let conn = b.serve_connection(TokioIo::new(io), service_fn(svc));
    drive(
        conn,
        |c| c.graceful_shutdown(),
        shared.serve_ctx(),
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
    edge: &ServeCtx,
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
    edge: &ServeCtx,
    state: &ConnState,
    peer: SocketAddr,
    stop: CancellationToken,
    h1: bool,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
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
            _ = edge.hard_stop.cancelled() => return,
            _ = stop.cancelled(), if !closing => {
                // Shutting down: finish the request in progress, then close.
                shutdown(conn.as_mut());
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = edge.hard_stop.cancelled() => {}
                }
                return;
            }
        }
    }
}
