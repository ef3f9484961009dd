//! Layer 4 of the gateway: the wiring. [`Gateway`] binds the listeners
//! and runs the accept loop; [`reload`] applies new configurations and
//! runs the per-pool background tasks; [`discovered`] applies what
//! discovery finds; [`admin`] serves the admin API and metrics.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::state::App;
use crate::base::config::{self, Config};
use crate::http::conn::ServeCtx;
use crate::http::tls;
use crate::proxy::accept;
use crate::proxy::edge::Edge;
use crate::proxy::limits;
use crate::proxy::metrics;
use crate::proxy::runtime::Runtime;
use crate::proxy::state::Shared;

pub mod admin;
pub mod discovered;
pub mod ops;
pub mod reload;
pub mod state;

pub use state::GatewayHandle;

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

/// A bound, not yet serving gateway.
pub struct Gateway {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<App>,
    config: Config,
    /// The plain-HTTP → HTTPS redirect listener (`[tls.redirect]`).
    redirect: Option<TcpListener>,
    admin: Option<TcpListener>,
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
        let hard_stop = CancellationToken::new();
        let edge = Edge {
            serve: ServeCtx {
                tls,
                counters: Default::default(),
                max_body_size: config.listen.max_body_size.0,
                max_header_size: usize::try_from(config.listen.max_header_size.0)
                    .unwrap_or(usize::MAX),
                header_read_timeout: config.listen.header_read_timeout.0,
                keepalive_timeout: config.listen.keepalive_timeout.0,
                send_timeout: config.listen.send_timeout.0,
                hard_stop: hard_stop.clone(),
            },
            rate_limiter: ArcSwap::new(limits::RateLimiter::new(&config.rate_limit).await),
            conn_limiter: limits::ConnLimiter::new(config.listen.max_connections_per_ip),
            unauthenticated: Default::default(),
            client_body_timeout: Some(config.listen.client_body_timeout.0).filter(|d| !d.is_zero()),
        };
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let core = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(Runtime::new(&config)),
            forwarded_proto,
            tracker: TaskTracker::new(),
            hard_stop,
            edge,
            metrics: Arc::new(metrics::Metrics::default()),
            access_log: ArcSwap::from_pointee(config.access_log.clone()),
            auth: ArcSwap::from_pointee(config.auth.clone()),
        });
        // The edge's counters (TLS, rate limits, hygiene) join /metrics.
        let weak = Arc::downgrade(&core);
        core.metrics.add_source(Box::new(move |o: &mut String| {
            if let Some(s) = weak.upgrade() {
                s.edge.render_metrics(o);
            }
        }));
        let shared = Arc::new(App {
            core,
            ops: ops::Ops::new(&config),
            admin_addr,
        });
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
                    shared
                        .tracker
                        .spawn(accept::accept(shared.core.clone(), stream, peer, stop_accepting.clone()));
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
