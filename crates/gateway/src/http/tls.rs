//! TLS termination (rustls, ring provider): certificates from PEM files,
//! chosen per handshake by SNI (exact name, then wildcard, then the first
//! certificate as default), ALPN `h2` + `http/1.1`, an optional plain-HTTP
//! redirect listener and HSTS.
//!
//! The rustls `ServerConfig` sits behind an `ArcSwap` and its certificate
//! resolver reads an `ArcSwap`'d store, so [`TlsTerminator::reload`] (called
//! on SIGHUP) changes what *new* handshakes get while connections already
//! established keep running untouched.
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::base::config::tls::{load_cert, provider};
pub use crate::base::config::tls::{CertConfig, RedirectConfig, TlsConfig, TlsError};
use crate::http::response::ProxyBody;

/// Certificates by server name.
#[derive(Debug)]
struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertStore {
    fn load(cfg: &TlsConfig, provider: &CryptoProvider) -> Result<CertStore, TlsError> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for c in &cfg.certificates {
            let (ck, names) = load_cert(c, provider)?;
            for n in names {
                // The first certificate listed for a name wins.
                match n.strip_prefix("*.") {
                    Some(base) => wildcard.entry(base.to_string()),
                    None => exact.entry(n),
                }
                .or_insert_with(|| ck.clone());
            }
            default.get_or_insert(ck);
        }
        let default = default.ok_or_else(|| TlsError {
            file: "[tls]".into(),
            message: "no certificate configured".into(),
        })?;
        Ok(CertStore {
            exact,
            wildcard,
            default,
        })
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        if let Some(name) = sni {
            let name = name.to_ascii_lowercase();
            if let Some(ck) = self.exact.get(&name) {
                return ck.clone();
            }
            if let Some((_, base)) = name.split_once('.') {
                if let Some(ck) = self.wildcard.get(base) {
                    return ck.clone();
                }
            }
        }
        self.default.clone()
    }
}

#[derive(Debug)]
struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.store.load().pick(hello.server_name()))
    }
}

/// What is in force: the rustls config and the settings read per connection.
struct Current {
    server: Arc<ServerConfig>,
    hsts: Option<HeaderValue>,
    handshake_timeout: Duration,
    cfg: TlsConfig,
}

/// The TLS side of the main listener.
pub struct TlsTerminator {
    provider: Arc<CryptoProvider>,
    resolver: Arc<SniResolver>,
    current: ArcSwap<Current>,
    handshakes: AtomicU64,
    handshake_failures: AtomicU64,
    reloads: AtomicU64,
}

impl std::fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTerminator")
            .field("handshakes", &self.handshakes())
            .field("handshake_failures", &self.handshake_failures())
            .finish()
    }
}

impl TlsTerminator {
    /// Load every certificate and build the rustls configuration.
    pub fn new(cfg: &TlsConfig) -> Result<TlsTerminator, TlsError> {
        let provider = provider();
        let store = CertStore::load(cfg, &provider)?;
        let resolver = Arc::new(SniResolver {
            store: ArcSwap::from_pointee(store),
        });
        let server = build_server_config(cfg, &provider, resolver.clone(), None)?;
        Ok(TlsTerminator {
            provider,
            resolver,
            current: ArcSwap::from_pointee(current(cfg, server)),
            handshakes: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
        })
    }

    /// Re-read the PEM files of the configuration in force. New handshakes
    /// use the new certificates; established connections are not touched.
    /// On error nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let cfg = self.current.load().cfg.clone();
        self.reload_with(&cfg)
    }

    /// Switch to another `[tls]` table (new files, names, ALPN, HSTS) —
    /// what a config reload calls. The redirect listener is not re-bound.
    pub fn reload_with(&self, cfg: &TlsConfig) -> Result<(), TlsError> {
        let store = CertStore::load(cfg, &self.provider)?;
        let old = self.current.load();
        let server = build_server_config(
            cfg,
            &self.provider,
            self.resolver.clone(),
            Some(old.server.session_storage.clone()),
        )?;
        self.resolver.store.store(Arc::new(store));
        self.current.store(Arc::new(current(cfg, server)));
        self.reloads.fetch_add(1, Relaxed);
        tracing::info!(
            certificates = cfg.certificates.len(),
            "TLS certificates reloaded"
        );
        Ok(())
    }

    /// Completed TLS handshakes.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Relaxed)
    }

    /// Handshakes that failed or timed out (`tls.handshake_timeout`).
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Relaxed)
    }

    /// Successful certificate reloads.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Relaxed)
    }

    pub(crate) fn hsts(&self) -> Option<HeaderValue> {
        self.current.load().hsts.clone()
    }

    /// Run the handshake (bounded by `handshake_timeout`); `None` if it
    /// failed. The bool is true when the client chose h2 by ALPN.
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(TlsStream<TcpStream>, bool)> {
        let cur = self.current.load_full();
        let acceptor = tokio_rustls::TlsAcceptor::from(cur.server.clone());
        match tokio::time::timeout(cur.handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(s)) => {
                self.handshakes.fetch_add(1, Relaxed);
                let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                Some((s, h2))
            }
            Ok(Err(e)) => {
                self.handshake_failures.fetch_add(1, Relaxed);
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                self.handshake_failures.fetch_add(1, Relaxed);
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }
}

fn current(cfg: &TlsConfig, server: Arc<ServerConfig>) -> Current {
    Current {
        server,
        hsts: cfg
            .hsts
            .as_deref()
            .and_then(|h| HeaderValue::from_str(h).ok()),
        handshake_timeout: cfg.handshake_timeout.0,
        cfg: cfg.clone(),
    }
}

fn build_server_config(
    cfg: &TlsConfig,
    provider: &Arc<CryptoProvider>,
    resolver: Arc<SniResolver>,
    sessions: Option<Arc<dyn rustls::server::StoresServerSessions + Send + Sync>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = if cfg.min_version == "1.3" {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut sc = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError {
            file: "[tls]".into(),
            message: format!("unsupported protocol versions: {e}"),
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    sc.alpn_protocols = if cfg.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    if let Some(s) = sessions {
        sc.session_storage = s;
    }
    Ok(Arc::new(sc))
}

/// The `Location` for a plain request: https, the request's host without
/// its port, `port` unless it is 443, the same path and query.
pub(crate) fn redirect_location(req: &Request<Incoming>, port: u16) -> Option<String> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())?;
    let authority: http::uri::Authority = host.parse().ok()?;
    let h = authority.host();
    if h.is_empty() {
        return None;
    }
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let pq = if pq.starts_with('/') { pq } else { "/" };
    Some(if port == 443 {
        format!("https://{h}{pq}")
    } else {
        format!("https://{h}:{port}{pq}")
    })
}

/// Serve the plain-HTTP redirect listener until `stop`.
pub(crate) async fn run_redirect(
    listener: TcpListener,
    status: StatusCode,
    port: u16,
    header_read_timeout: Duration,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("redirect listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let stop = stop.clone();
        tracker.spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| async move {
                let res = match redirect_location(&req, port) {
                    Some(loc) => {
                        let mut res = Response::new(ProxyBody::empty());
                        *res.status_mut() = status;
                        if let Ok(v) = HeaderValue::from_str(&loc) {
                            res.headers_mut().insert(header::LOCATION, v);
                        }
                        res
                    }
                    None => crate::http::response::json_error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "a Host header is needed to redirect to https",
                    ),
                };
                Ok::<_, Infallible>(res)
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new()).keep_alive(true);
            if header_read_timeout.is_zero() {
                b.header_read_timeout(None);
            } else {
                b.header_read_timeout(header_read_timeout);
            }
            let conn = b.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
        });
    }
}
