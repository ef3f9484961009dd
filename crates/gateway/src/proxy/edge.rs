//! The edge: what the gateway enforces on connections before the request
//! path — the per-address connection limit at accept, the rate limiters,
//! and the HTTP layer's settings — and the counters of all of it.
use std::sync::Arc;
use std::time::Duration;

use crate::http::conn::ServeCtx;
use crate::proxy::limits::{ConnLimiter, RateLimiter};

/// The edge settings and state shared by every connection.
#[derive(Debug)]
pub(crate) struct Edge {
    /// Limits, timeouts, TLS and counters of the HTTP layer.
    pub(crate) serve: ServeCtx,
    /// Swapped whole when the rules change (reload).
    pub(crate) rate_limiter: arc_swap::ArcSwap<RateLimiter>,
    pub(crate) conn_limiter: Arc<ConnLimiter>,
    /// Requests refused 401 for carrying no credential.
    pub(crate) unauthenticated: std::sync::atomic::AtomicU64,
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
        one(
            "ragfleet_gateway_unauthenticated_total",
            "counter",
            "Requests refused with 401 for carrying no credential ([auth] require_credentials).",
            self.unauthenticated
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let c = &self.serve.counters;
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
        if let Some(tls) = &self.serve.tls {
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
