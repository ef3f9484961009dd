//! ragfleet-gateway: an L7 load balancer made for chat traffic.
//!
//! Module map:
//! - [`config`]: strict TOML configuration (and the `--upstream` flag form);
//! - [`pool`]: runtime state: pools, servers (atomics for in-flight, latency,
//!   health, drain), retry budgets, the keep-alive upstream client;
//! - [`balance`]: round_robin (smooth WRR), least_conn, ip_hash, hash
//!   (consistent hashing with bounded loads), p2c (peak EWMA);
//! - [`health`]: active health checks (passive health lives on `Server`);
//! - `proxy`: the request path (route, pick, forward, retry, stream back);
//! - `body`: streamed bodies with idle/total timeouts; `tunnel`: WebSocket;
//! - `conn`: one client connection (limit_conn, TLS, h1/h2, header-read and
//!   keep-alive timeouts); [`tls`]: rustls termination, SNI, reload, the
//!   HTTP→HTTPS redirect; [`limits`]: rate limits (local / Redis) and
//!   connection limits; [`hygiene`]: what a request must look like.
//! - `body`: streamed bodies with idle/total timeouts; `tunnel`: WebSocket.
//! - [`metrics`]: per-instance Prometheus metrics; [`access_log`]: one line
//!   per request; [`admin`]: the admin listener (metrics, JSON admin API);
//! - [`reload`]: hot reload (SIGHUP, file watch, API) and per-pool
//!   background tasks; [`discovery`]: DNS and etcd discovery.
//!
//! ```no_run
//! # async fn f(cfg: ragfleet_gateway::config::Config) -> Result<(), ragfleet_gateway::Error> {
//! let gw = ragfleet_gateway::Gateway::bind(cfg).await?;
//! println!("listening on {}", gw.local_addr());
//! gw.run_until(ragfleet_gateway::shutdown_signal()).await
//! # }
//! ```
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod access_log;
pub mod admin;
pub mod balance;
mod body;
pub mod config;
mod conn;
pub mod discovery;
mod h1;
pub mod health;
pub mod hygiene;
pub mod limits;
pub mod metrics;
pub mod pool;
mod proxy;
pub mod reload;
pub mod tls;
mod tunnel;

pub use config::Config;
pub use pool::{Pool, Server, ServerSnapshot};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// Routes and pools in force. Swapped whole on reload; pools keep their
/// servers' state by address.
#[derive(Debug)]
pub struct Runtime {
    /// (prefix, pool), longest prefix first.
    routes: Vec<(Arc<str>, Arc<Pool>)>,
    pools: BTreeMap<String, Arc<Pool>>,
}

impl Runtime {
    fn new(cfg: &Config) -> Runtime {
        let pools: BTreeMap<String, Arc<Pool>> = cfg
            .pools
            .iter()
            .map(|(name, p)| (name.clone(), Arc::new(Pool::new(name, p.clone()))))
            .collect();
        let mut routes: Vec<(Arc<str>, Arc<Pool>)> = cfg
            .routes
            .iter()
            .filter_map(|r| {
                pools
                    .get(&r.pool)
                    .map(|p| (Arc::from(r.prefix.as_str()), p.clone()))
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Runtime { routes, pools }
    }

    /// The pool of the longest route prefix matching `path`.
    pub fn route(&self, path: &str) -> Option<&Arc<Pool>> {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(&**prefix))
            .map(|(_, p)| p)
    }

    /// The longest matching route: its prefix and pool.
    pub fn route_with_prefix(&self, path: &str) -> Option<(&Arc<str>, &Arc<Pool>)> {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(&**prefix))
            .map(|(prefix, p)| (prefix, p))
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    /// Every pool by name.
    pub fn pools(&self) -> &BTreeMap<String, Arc<Pool>> {
        &self.pools
    }
}

/// State shared by every connection task.
pub(crate) struct Shared {
    pub(crate) runtime: ArcSwap<Runtime>,
    pub(crate) forwarded_proto: HeaderValue,
    /// Every connection and tunnel task, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// Cancelled when the shutdown deadline passes: cut what is left.
    pub(crate) hard_stop: CancellationToken,
    /// TLS, limits, hygiene settings and their counters.
    pub(crate) edge: conn::Edge,
    /// This instance's metrics (rendered on the admin listener).
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// Configuration in force, reload and background-task state.
    pub(crate) ops: reload::Ops,
    pub(crate) admin_addr: Option<SocketAddr>,
}

/// A bound, not yet serving gateway.
pub struct Gateway {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    config: Config,
    /// The plain-HTTP → HTTPS redirect listener (`[tls.redirect]`).
    redirect: Option<TcpListener>,
    admin: Option<TcpListener>,
}

/// A cheap handle to a gateway's live state.
#[derive(Clone)]
pub struct GatewayHandle {
    shared: Arc<Shared>,
}

impl GatewayHandle {
    /// A pool by name, as currently in force.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.shared.runtime.load().pool(name).cloned()
    }

    /// TLS termination (certificate reload, handshake counters), if `[tls]`.
    pub fn tls(&self) -> Option<Arc<tls::TlsTerminator>> {
        self.shared.edge.tls.clone()
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
        self.shared.edge.counters.clone()
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

impl Gateway {
    /// Validate the configuration and bind the listener (port 0 picks one).
    pub async fn bind(config: Config) -> Result<Gateway, Error> {
        config.validate("config")?;
        let addr = config.listen.addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(tls::TlsTerminator::new(t)?)),
            None => None,
        };
        let redirect = match config.tls.as_ref().and_then(|t| t.redirect.as_ref()) {
            Some(r) => Some(
                TcpListener::bind(r.addr)
                    .await
                    .map_err(|source| Error::Bind {
                        addr: r.addr,
                        source,
                    })?,
            ),
            None => None,
        };
        let admin = match config.admin.as_ref().filter(|a| a.enabled) {
            Some(a) => Some(
                TcpListener::bind(a.addr)
                    .await
                    .map_err(|source| Error::Bind {
                        addr: a.addr,
                        source,
                    })?,
            ),
            None => None,
        };
        let default_proto = if tls.is_some() { "https" } else { "http" };
        let forwarded_proto = HeaderValue::from_str(
            config
                .listen
                .forwarded_proto
                .as_deref()
                .unwrap_or(default_proto),
        )
        .unwrap_or_else(|_| HeaderValue::from_static("http"));
        let edge = conn::Edge {
            tls,
            rate_limiter: ArcSwap::new(limits::RateLimiter::new(&config.rate_limit).await),
            conn_limiter: limits::ConnLimiter::new(config.listen.max_connections_per_ip),
            counters: Default::default(),
            max_body_size: config.listen.max_body_size.0,
            max_header_size: usize::try_from(config.listen.max_header_size.0).unwrap_or(usize::MAX),
            header_read_timeout: config.listen.header_read_timeout.0,
            keepalive_timeout: config.listen.keepalive_timeout.0,
            send_timeout: config.listen.send_timeout.0,
            client_body_timeout: Some(config.listen.client_body_timeout.0).filter(|d| !d.is_zero()),
        };
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(Runtime::new(&config)),
            forwarded_proto,
            tracker: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            edge,
            metrics: Arc::new(metrics::Metrics::default()),
            ops: reload::Ops::new(&config),
            admin_addr,
        });
        // The edge's counters (TLS, rate limits, hygiene) join /metrics.
        let weak = Arc::downgrade(&shared);
        shared.metrics.add_source(Box::new(move |o: &mut String| {
            if let Some(s) = weak.upgrade() {
                s.edge.render_metrics(o);
            }
        }));
        Ok(Gateway {
            listener,
            local_addr,
            shared,
            config,
            redirect,
            admin,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Address of the HTTP→HTTPS redirect listener, if configured.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serve until `shutdown` completes; then stop accepting, let in-flight
    /// requests, streams and tunnels finish for up to
    /// `listen.shutdown_timeout`, cut what remains and return.
    pub async fn run_until<F: Future>(self, shutdown: F) -> Result<(), Error> {
        let Gateway {
            listener,
            shared,
            config,
            redirect,
            local_addr,
            admin,
        } = self;
        let stop_accepting = CancellationToken::new();
        // Health checks, discovery, the admin listener and the reload
        // watchers end when this function returns (or its future is dropped).
        let _background = shared.ops.stop.clone().drop_guard();
        reload::start_background(&shared);
        if let Some(l) = admin {
            tokio::spawn(admin::serve(l, shared.clone(), shared.ops.stop.clone()));
        }
        if let (Some(l), Some(r)) = (
            redirect,
            config.tls.as_ref().and_then(|t| t.redirect.as_ref()),
        ) {
            let status = http::StatusCode::from_u16(r.status)
                .unwrap_or(http::StatusCode::PERMANENT_REDIRECT);
            let port = r.https_port.unwrap_or(local_addr.port());
            shared.tracker.spawn(tls::run_redirect(
                l,
                status,
                port,
                config.listen.header_read_timeout.0,
                stop_accepting.clone(),
                shared.tracker.clone(),
            ));
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors and the like: back off briefly.
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    shared.tracker.spawn(conn::serve(shared.clone(), stream, peer, stop_accepting.clone()));
                }
            }
        }
        drop(listener);
        stop_accepting.cancel();
        shared.tracker.close();
        let deadline = config.listen.shutdown_timeout.0;
        let pending = shared.tracker.len();
        tracing::info!(
            pending,
            "shutting down: waiting up to {deadline:?} for in-flight requests"
        );
        if tokio::time::timeout(deadline, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = shared.tracker.len(),
                "shutdown deadline passed: cutting remaining connections"
            );
            shared.hard_stop.cancel();
            shared.tracker.wait().await;
        }
        Ok(())
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
