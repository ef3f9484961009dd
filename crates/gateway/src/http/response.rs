//! Response bodies: what an upstream client delivers ([`UpstreamInner`]),
//! passed through with the idle/total timeouts and the SSE tail
//! ([`UpstreamBody`]), and what a client is sent ([`ProxyBody`]).
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use http::{header, HeaderValue, Response, StatusCode};

use crate::http::body::BoxError;
use crate::http::h1::client::H1Body;

/// Told once when a response body is over: done, cut or dropped. The
/// upstream layer counts a server's requests in flight with it, so the
/// count covers streamed responses to their last byte.
pub trait OnBodyEnd: Send + Sync {
    fn body_ended(&self);
}

/// Calls [`OnBodyEnd::body_ended`] when dropped.
pub struct BodyGuard(Arc<dyn OnBodyEnd>);

impl BodyGuard {
    pub fn new(to: Arc<dyn OnBodyEnd>) -> BodyGuard {
        BodyGuard(to)
    }
}

impl std::fmt::Debug for BodyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodyGuard")
    }
}

impl Drop for BodyGuard {
    fn drop(&mut self) {
        self.0.body_ended();
    }
}

/// Why a streamed response was cut.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("upstream sent nothing for {0:?} (timeouts.body_idle)")]
    Idle(Duration),
    #[error("response exceeded timeouts.total ({0:?})")]
    Total(Duration),
}

/// A response body as an upstream client delivers it.
pub enum UpstreamInner {
    /// From hyper's client (streamed request bodies, upgrades).
    Hyper(Incoming),
    /// From the gateway's own HTTP/1.1 client (`h1/client.rs`).
    H1(Box<H1Body>),
}

impl Body for UpstreamInner {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamInner::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(|e| e.into()),
            UpstreamInner::H1(b) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamInner::Hyper(b) => b.is_end_stream(),
            UpstreamInner::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamInner::Hyper(b) => b.size_hint(),
            UpstreamInner::H1(b) => b.size_hint(),
        }
    }
}

/// An upstream response body passed through as it arrives.
pub struct UpstreamBody {
    inner: UpstreamInner,
    idle: Duration,
    idle_sleep: Option<Pin<Box<Sleep>>>,
    total: Option<(Duration, Pin<Box<Sleep>>)>,
    _guard: Option<BodyGuard>,
    /// Server-Sent Events without a Content-Length: a stream cut by the
    /// upstream ends with an `error` event instead of a broken connection.
    sse: Option<SseTail>,
    done: bool,
}

/// Whether the bytes passed on so far end at an SSE event boundary (a blank
/// line): only there can an `error` event be appended without tearing one.
#[derive(Debug, Clone, Copy)]
struct SseTail {
    /// The last four bytes passed on (zeros before any).
    last: [u8; 4],
    any: bool,
}

impl SseTail {
    fn push(&mut self, data: &[u8]) {
        for &b in data.iter().rev().take(4).rev() {
            self.last = [self.last[1], self.last[2], self.last[3], b];
        }
        self.any |= !data.is_empty();
    }
    fn at_boundary(&self) -> bool {
        !self.any
            || self.last.ends_with(b"\n\n")
            || self.last.ends_with(b"\r\r")
            || self.last == *b"\r\n\r\n"
    }
}

/// The event a cut SSE stream ends with: the same shape as the nodes'
/// own `error` events (`data: {"code", "message"}`).
fn sse_error_event(reason: &str) -> Bytes {
    let data = serde_json::json!({
        "code": "upstream_lost",
        "message": format!("the upstream stream was cut: {reason}"),
    });
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}

impl UpstreamBody {
    pub(crate) fn new(
        inner: UpstreamInner,
        idle: Duration,
        total: Option<Duration>,
        guard: BodyGuard,
    ) -> Self {
        UpstreamBody {
            inner,
            idle,
            idle_sleep: None,
            total: total.map(|t| (t, Box::pin(tokio::time::sleep(t)))),
            _guard: Some(guard),
            sse: None,
            done: false,
        }
    }

    /// Treat the body as Server-Sent Events: if the upstream cuts it (error,
    /// idle or total timeout) at an event boundary, it ends with an `error`
    /// event and a clean end of stream.
    pub(crate) fn event_stream(mut self) -> Self {
        self.sse = Some(SseTail {
            last: [0; 4],
            any: false,
        });
        self
    }

    /// The stream failed: for SSE cut at an event boundary, a final `error`
    /// event and a clean end; otherwise the error (the client connection
    /// is then aborted, so a truncated body never looks complete).
    fn fail(&mut self, err: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self._guard = None;
        match self.sse {
            Some(tail) if tail.at_boundary() => {
                tracing::warn!("upstream event stream cut ({err}); ending it with an error event");
                self.done = true;
                Poll::Ready(Some(Ok(Frame::data(sse_error_event(&err.to_string())))))
            }
            _ => Poll::Ready(Some(Err(err))),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some((t, sleep)) = &mut this.total {
            if sleep.as_mut().poll(cx).is_ready() {
                let t = *t;
                return this.fail(Box::new(StreamError::Total(t)));
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(s) = &mut this.idle_sleep {
                    s.as_mut().reset(Instant::now() + this.idle);
                }
                if let (Some(tail), Some(data)) = (&mut this.sse, frame.data_ref()) {
                    tail.push(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(e),
            Poll::Ready(None) => {
                // Finished: stop counting the request in flight right away.
                this._guard = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let sleep = this
                    .idle_sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                ready!(sleep.as_mut().poll(cx));
                this.fail(Box::new(StreamError::Idle(idle)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Body returned to clients.
pub enum ProxyBody {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
    /// Any of the above, counted for the access log and metrics.
    Boxed(Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>),
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(b.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Boxed(b) => b.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Boxed(b) => b.size_hint(),
        }
    }
}

/// A JSON error response: `{"error":{"code":..,"message":..}}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let mut res = Response::new(ProxyBody::full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
