//! Request and response bodies of the proxy. Response bodies stream frame by
//! frame (SSE and chunked answers are never buffered) with an idle timeout
//! between frames and an optional total deadline.
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body sent upstream: empty, buffered (replayable on retry) or streamed.
#[derive(Debug)]
pub enum ReqBody {
    Empty,
    Full(Option<Bytes>),
    /// Streamed, within `listen.max_body_size`.
    Stream(SharedStream),
}

/// A client's request body as a server side hands it to the proxy.
#[derive(Debug)]
pub enum ClientBody {
    /// From hyper's server: HTTP/2, and the HTTP/1 requests the gateway's own
    /// server hands over (streamed or chunked bodies, upgrades, …).
    Hyper(Incoming),
    /// Read whole by the gateway's own HTTP/1.1 server (`h1/server.rs`),
    /// which has left hop-by-hop headers out of the request and never
    /// passes on an upgrade.
    Buffered(Bytes),
}

/// What went wrong on the client's side of a request body. Such a fault is
/// the client's: it never counts against an upstream (passive health, retry
/// budget, latency), and the client gets a 4xx with a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Invalid framing (a bad chunk-size line, a chunk over the limit, …).
    BadFraming,
    /// Over `listen.max_body_size`.
    TooLarge,
    /// No body bytes within `listen.client_body_timeout`.
    Timeout,
    /// The client closed or reset the connection before the body ended.
    Gone,
}

/// State of a streamed client body that the proxy reads after the body
/// itself has been handed to an upstream attempt.
#[derive(Debug, Default)]
pub struct BodyWatch {
    fault: std::sync::OnceLock<ClientFault>,
    /// The last read of the body found no bytes from the client yet.
    waiting_on_client: std::sync::atomic::AtomicBool,
    done: std::sync::atomic::AtomicBool,
}

impl BodyWatch {
    /// The client's fault, if its body failed.
    pub fn fault(&self) -> Option<ClientFault> {
        self.fault.get().copied()
    }

    /// Whether the body is still incomplete and waiting for the client (not
    /// for the upstream to read): a timeout then is the client's.
    pub fn waiting_on_client(&self) -> bool {
        !self.done.load(std::sync::atomic::Ordering::Relaxed)
            && self
                .waiting_on_client
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_fault(&self, f: ClientFault) -> ClientFault {
        *self.fault.get_or_init(|| f)
    }
}

/// Tells a body reader that the connection's framing guard saw a bad
/// chunk-size line (see `hygiene::HeadSniffer`).
pub trait FramingFlag: Send + Sync + std::fmt::Debug {
    fn bad_framing(&self) -> Option<ClientFault>;
}

/// A streamed client body: `listen.max_body_size`, the idle timeout between
/// client reads, the framing flag of its connection, and a prefix already
/// read (see [`ClientStream::prefetch`]). Every error it returns is a
/// [`ClientFault`], also recorded in its [`BodyWatch`].
#[derive(Debug)]
pub struct ClientStream {
    prefix: Option<Bytes>,
    inner: http_body_util::Limited<Incoming>,
    idle: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    framing: Option<Arc<dyn FramingFlag>>,
    watch: Arc<BodyWatch>,
}

/// What [`ClientStream::prefetch`] found.
pub enum Prefetch {
    /// The whole body, read within the limit.
    Complete(Bytes),
    /// More than the limit: the stream, with what was read as its prefix.
    Partial(ClientStream),
}

impl ClientStream {
    pub fn new(
        body: Incoming,
        max: usize,
        idle: Option<Duration>,
        framing: Option<Arc<dyn FramingFlag>>,
    ) -> ClientStream {
        ClientStream {
            prefix: None,
            inner: http_body_util::Limited::new(body, max),
            idle,
            timer: None,
            framing,
            watch: Arc::new(BodyWatch::default()),
        }
    }

    pub fn watch(&self) -> Arc<BodyWatch> {
        self.watch.clone()
    }

    /// Read up to `limit` bytes before anything goes upstream, so that a
    /// small body with bad framing, or one the client abandons, never reaches
    /// a server as a truncated request.
    pub async fn prefetch(mut self, limit: u64) -> Result<Prefetch, ClientFault> {
        use http_body_util::BodyExt;
        let mut buf = bytes::BytesMut::new();
        loop {
            if buf.len() as u64 > limit {
                self.prefix = Some(buf.freeze());
                return Ok(Prefetch::Partial(self));
            }
            match self.frame().await {
                None => return Ok(Prefetch::Complete(buf.freeze())),
                Some(Err(e)) => {
                    tracing::debug!("client request body failed: {e}");
                    return Err(self.watch.fault().unwrap_or(ClientFault::BadFraming));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    fn fail(&self, fault: ClientFault) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let fault = self.watch.set_fault(fault);
        Poll::Ready(Some(Err(format!("client request body: {fault:?}").into())))
    }
}

/// Which fault a failed read of the client's body is.
fn classify(e: &BoxError) -> ClientFault {
    if e.is::<http_body_util::LengthLimitError>() {
        return ClientFault::TooLarge;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return ClientFault::Gone;
            }
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
            ) {
                return ClientFault::Gone;
            }
        }
        cur = c.source();
    }
    ClientFault::BadFraming
}

impl Body for ClientStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::sync::atomic::Ordering::Relaxed;
        let this = self.get_mut();
        if let Some(f) = this.watch.fault() {
            return this.fail(f);
        }
        if let Some(p) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        if let Some(f) = this.framing.as_ref().and_then(|f| f.bad_framing()) {
            return this.fail(f);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // The guard may have flagged the bytes this frame came from.
                if let Some(f) = this.framing.as_ref().and_then(|f| f.bad_framing()) {
                    return this.fail(f);
                }
                this.watch.waiting_on_client.store(false, Relaxed);
                this.timer = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let fault = match this.framing.as_ref().and_then(|f| f.bad_framing()) {
                    Some(f) => f,
                    None => classify(&e),
                };
                this.fail(fault)
            }
            Poll::Ready(None) => {
                this.watch.done.store(true, Relaxed);
                this.watch.waiting_on_client.store(false, Relaxed);
                this.timer = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                this.watch.waiting_on_client.store(true, Relaxed);
                if let Some(idle) = this.idle {
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    if timer.as_mut().poll(cx).is_ready() {
                        return this.fail(ClientFault::Timeout);
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let h = self.inner.size_hint();
        let mut out = SizeHint::new();
        out.set_lower(h.lower() + extra);
        if let Some(u) = h.upper() {
            out.set_upper(u + extra);
        }
        out
    }
}

/// A streamed request body that stays with the proxy until the upstream
/// connection first asks for a frame. An attempt that fails before that
/// (connect refused, a 503 answered before reading the body) leaves it in
/// the slot, untouched, and the next server can be sent the very same bytes;
/// once an attempt has taken it, the body can go nowhere else.
#[derive(Debug)]
pub struct SharedStream {
    slot: Arc<Mutex<Option<ClientStream>>>,
    taken: Option<ClientStream>,
    hint: SizeHint,
}

/// Where a streamed body waits between attempts; see [`SharedStream`].
#[derive(Debug, Clone)]
pub struct StreamSlot {
    slot: Arc<Mutex<Option<ClientStream>>>,
    hint: SizeHint,
    watch: Arc<BodyWatch>,
}

impl StreamSlot {
    pub fn new(body: ClientStream) -> Self {
        let hint = body.size_hint();
        let watch = body.watch();
        StreamSlot {
            slot: Arc::new(Mutex::new(Some(body))),
            hint,
            watch,
        }
    }

    /// The body's state as its reader (an upstream attempt) left it.
    pub fn watch(&self) -> &BodyWatch {
        &self.watch
    }

    /// True while no attempt has read from the body.
    pub fn untouched(&self) -> bool {
        self.slot.lock().map(|s| s.is_some()).unwrap_or(false)
    }

    /// A body for the next attempt, if the body is still untouched.
    pub fn attempt(&self) -> Option<SharedStream> {
        self.untouched().then(|| SharedStream {
            slot: self.slot.clone(),
            taken: None,
            hint: self.hint,
        })
    }
}

impl Body for SharedStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.taken.is_none() {
            this.taken = this.slot.lock().ok().and_then(|mut s| s.take());
            if this.taken.is_none() {
                // Another attempt already took it (this one was given up).
                return Poll::Ready(Some(Err("request body already sent elsewhere".into())));
            }
        }
        match this.taken.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(b) => b.is_end_stream(),
            None => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Stream(s) => s.size_hint(),
        }
    }
}
