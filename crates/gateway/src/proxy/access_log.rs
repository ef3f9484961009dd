//! Per-request observation: one access log line and the request metrics,
//! both written when the request is really over — after the last body byte
//! of a streamed response, or when a WebSocket tunnel closes.
//!
//! The access log is a `tracing` event at INFO with target
//! [`ACCESS_TARGET`] (`ragfleet::access`) and these fields: `time` (RFC 3339,
//! UTC, when the request arrived), `client` (address:port), `method`, `path`
//! (no query string: it may carry secrets), `status` (499 when the client
//! went away before the response headers), `upstream` (the server that
//! answered, or last tried; `-` for none), `bytes_in` (request body bytes;
//! tunnels: client → upstream), `bytes_out` (response body bytes; tunnels:
//! upstream → client), `headers_ms` (time to response headers), `total_ms`
//! (time to the last byte), `request_id`, `retries`, `route`, `pool`,
//! `outcome` (`ok`, `client_closed`, `upstream_error`).
//!
//! With `access_log.format = "json"` the event's message is instead the whole
//! line as one JSON object with the same keys, so any log output shows it as
//! JSON; with the default `fields`, the fields are structured (JSON with
//! `ragfleet --log-json`).
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::http::body::ClientBody;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};

pub use crate::base::config::{AccessLogConfig, AccessLogFormat};
use crate::http::body::BoxError;
use crate::http::response::ProxyBody;
use crate::proxy::metrics::{GaugeGuard, Metrics};
use crate::proxy::state::Shared;
use crate::upstream::pool::{Pool, Server};

const X_REQUEST_ID: http::header::HeaderName =
    http::header::HeaderName::from_static("x-request-id");

/// `tracing` target of access log lines.
pub const ACCESS_TARGET: &str = "ragfleet::access";

#[derive(Default)]
struct State {
    route: Option<(Arc<str>, Arc<Pool>)>,
    server: Option<Arc<Server>>,
    attempts: u32,
    status: u16,
    headers_at: Option<Duration>,
    request_id: Option<HeaderValue>,
    bytes_in: u64,
    bytes_out: u64,
    outcome: Option<&'static str>,
}

/// One request being observed; the log line and the metrics are written
/// when the last reference drops.
pub(crate) struct Obs {
    metrics: Arc<Metrics>,
    /// Access log format, `None` when the line is not wanted.
    log: Option<AccessLogFormat>,
    started: Instant,
    /// Arrival time, read only when the line is wanted.
    arrived: Option<SystemTime>,
    peer: SocketAddr,
    method: Method,
    path: String,
    st: Mutex<State>,
}

/// Shared handle to the observation of a request (a request extension).
#[derive(Clone)]
pub(crate) struct ObsRef(pub(crate) Arc<Obs>);

impl Obs {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The route and pool chosen for the request.
    pub(crate) fn set_route(&self, prefix: &Arc<str>, pool: &Arc<Pool>) {
        self.state().route = Some((prefix.clone(), pool.clone()));
    }

    /// An attempt on `server` begins.
    pub(crate) fn attempt(&self, server: &Arc<Server>) {
        let mut st = self.state();
        st.server = Some(server.clone());
        st.attempts += 1;
    }

    /// Bytes moved by a tunnel (client → upstream, upstream → client).
    pub(crate) fn tunnel_bytes(&self, up: u64, down: u64, ok: bool) {
        let mut st = self.state();
        st.bytes_in += up;
        st.bytes_out += down;
        if !ok {
            st.outcome = Some("upstream_error");
        }
    }

    /// Count an open WebSocket tunnel of this request's pool until dropped.
    pub(crate) fn websocket_open(&self) -> Option<GaugeGuard> {
        let st = self.state();
        let pool = st.route.as_ref().map(|(_, p)| p.name().to_string())?;
        Some(Metrics::open(&self.metrics.websockets, &pool))
    }
}

impl Drop for Obs {
    fn drop(&mut self) {
        let total = self.started.elapsed();
        let st = self.st.get_mut().unwrap_or_else(|e| e.into_inner());
        let status = if st.status == 0 { 499 } else { st.status };
        let outcome = st.outcome.unwrap_or(if st.status == 0 {
            "client_closed"
        } else {
            "ok"
        });
        let retries = st.attempts.saturating_sub(1);
        self.metrics.record_request(
            st.route.as_ref().map(|(r, p)| (r, p)),
            st.server.as_ref(),
            status,
            st.headers_at,
            total,
            st.bytes_in,
            st.bytes_out,
            retries,
        );
        self.metrics.in_flight.fetch_sub(1, Relaxed);
        let Some(format) = self.log else { return };
        let (route, pool) = match &st.route {
            Some((r, p)) => (&**r, p.name()),
            None => ("none", "none"),
        };
        let upstream = st.server.as_ref().map_or("-", |s| s.addr());
        let request_id = st
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let time = rfc3339(self.arrived.unwrap_or_else(SystemTime::now));
        let headers_ms = st.headers_at.map(|d| d.as_secs_f64() * 1e3);
        let total_ms = total.as_secs_f64() * 1e3;
        match format {
            AccessLogFormat::Fields => tracing::info!(
                target: ACCESS_TARGET,
                time = %time,
                client = %self.peer,
                method = %self.method,
                path = %self.path,
                status,
                upstream,
                bytes_in = st.bytes_in,
                bytes_out = st.bytes_out,
                headers_ms,
                total_ms,
                request_id,
                retries,
                route,
                pool,
                outcome,
                "{} {} {}",
                self.method,
                self.path,
                status
            ),
            AccessLogFormat::Json => {
                let line = serde_json::json!({
                    "time": time,
                    "client": self.peer.to_string(),
                    "method": self.method.as_str(),
                    "path": self.path,
                    "status": status,
                    "upstream": upstream,
                    "bytes_in": st.bytes_in,
                    "bytes_out": st.bytes_out,
                    "headers_ms": headers_ms,
                    "total_ms": total_ms,
                    "request_id": request_id,
                    "retries": retries,
                    "route": route,
                    "pool": pool,
                    "outcome": outcome,
                });
                tracing::info!(target: ACCESS_TARGET, "{line}");
            }
        }
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2025-01-31T12:00:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        d.subsec_millis()
    )
}

/// Begin observing a request, before it is routed; [`respond`] carries
/// the observation on with the response. (Two plain functions rather than
/// one around the proxy's future: that would nest the request future one
/// level deeper, and it is moved whole at every level.)
pub(crate) fn begin(shared: &Shared, peer: SocketAddr, req: &Request<ClientBody>) -> ObsRef {
    let log_cfg = shared.access_log.load();
    let log = (log_cfg.enabled && tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO))
        .then_some(log_cfg.format);
    let bytes_in = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    shared.metrics.in_flight.fetch_add(1, Relaxed);
    let obs = Arc::new(Obs {
        metrics: shared.metrics.clone(),
        log,
        started: Instant::now(),
        arrived: log.map(|_| SystemTime::now()),
        peer,
        method: req.method().clone(),
        path: if log.is_some() {
            req.uri().path().to_string()
        } else {
            String::new()
        },
        st: Mutex::new(State {
            bytes_in,
            ..State::default()
        }),
    });
    ObsRef(obs)
}

/// The response of an observed request: the log line and metrics are
/// written when its body ends (or is dropped).
pub(crate) fn respond(obs: ObsRef, res: Response<ProxyBody>) -> Response<ProxyBody> {
    let obs = obs.0;
    let sse = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    let stream_guard = {
        let mut st = obs.state();
        st.status = res.status().as_u16();
        st.headers_at = Some(obs.started.elapsed());
        if obs.log.is_some() {
            st.request_id = res.headers().get(X_REQUEST_ID).cloned();
        }
        match (&st.route, sse) {
            (Some((_, p)), true) => Some(Metrics::open(&obs.metrics.streams, p.name())),
            _ => None,
        }
    };
    res.map(|inner| {
        let mut b = ObservedBody {
            inner,
            obs: Some(obs),
            _stream: stream_guard,
        };
        if b.inner.is_end_stream() {
            b.finish(None);
        }
        ProxyBody::Boxed(Box::pin(b))
    })
}

/// The response body, counting bytes and closing the observation at its end.
pub struct ObservedBody {
    inner: ProxyBody,
    obs: Option<Arc<Obs>>,
    _stream: Option<GaugeGuard>,
}

impl ObservedBody {
    fn finish(&mut self, outcome: Option<&'static str>) {
        if let Some(obs) = self.obs.take() {
            if let Some(o) = outcome {
                obs.state().outcome.get_or_insert(o);
            }
        }
        self._stream = None;
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // Dropped before the end: the client went away mid-response.
        self.finish(Some("client_closed"));
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(obs)) = (frame.data_ref(), &this.obs) {
                    obs.state().bytes_out += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(Some("upstream_error"));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish(None);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
