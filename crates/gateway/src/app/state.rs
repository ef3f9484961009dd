//! The application's state: the proxy's shared state plus what only the
//! application layer keeps (configuration in force, reload and background
//! tasks, the admin listener's address), and [`GatewayHandle`], a cheap
//! handle to it.
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use crate::app::ops::Ops;
use crate::http::tls;
use crate::proxy::hygiene;
use crate::proxy::limits;
use crate::proxy::metrics;
use crate::proxy::runtime::Runtime;
use crate::proxy::state::Shared;
use crate::upstream::pool::Pool;

/// Everything the gateway's tasks share. Derefs to the proxy's [`Shared`].
pub(crate) struct App {
    pub(crate) core: Arc<Shared>,
    /// Configuration in force, reload and background-task state.
    pub(crate) ops: Ops,
    pub(crate) admin_addr: Option<SocketAddr>,
}

impl Deref for App {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.core
    }
}

/// A cheap handle to a gateway's live state.
#[derive(Clone)]
pub struct GatewayHandle {
    pub(crate) shared: Arc<App>,
}

impl GatewayHandle {
    /// A pool by name, as currently in force.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.shared.runtime.load().pool(name).cloned()
    }

    /// TLS termination (certificate reload, handshake counters), if `[tls]`.
    pub fn tls(&self) -> Option<Arc<tls::TlsTerminator>> {
        self.shared.edge.serve.tls.clone()
    }

    /// Rate limiter counters: `rate_limited()`, `redis_fallback_active()`.
    pub fn rate_limiter(&self) -> Arc<limits::RateLimiter> {
        self.shared.edge.rate_limiter.load_full()
    }

    /// Put new rate-limit rules in force (a reload; the config is assumed
    /// validated). Counters carry over; requests in progress finish on the
    /// old limiter.
    pub async fn set_rate_limits(&self, cfg: &limits::RateLimitConfig) {
        let old = self.shared.edge.rate_limiter.load_full();
        let new = limits::RateLimiter::replacing(cfg, &old).await;
        self.shared.edge.rate_limiter.store(new);
    }

    /// Connection limiter counters: `refused()`.
    pub fn conn_limiter(&self) -> Arc<limits::ConnLimiter> {
        self.shared.edge.conn_limiter.clone()
    }

    /// Requests and connections refused by the hygiene rules and timeouts.
    pub fn hygiene(&self) -> Arc<hygiene::HygieneCounters> {
        self.shared.edge.serve.counters.clone()
    }

    /// The routes and pools in force.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.shared.runtime.load_full()
    }

    /// Where the admin listener (metrics, admin API) listens, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.shared.admin_addr
    }

    /// This gateway's metrics.
    pub fn metrics(&self) -> &Arc<metrics::Metrics> {
        &self.shared.metrics
    }

    /// The metrics in Prometheus text format (what `GET /metrics` returns).
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render(&self.shared.runtime.load())
    }
}
