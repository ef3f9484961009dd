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
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::ProxyBody;
use crate::config::{ConfigError, Dur};

/// `[tls]`: TLS on the main listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// `[[tls.certificate]]`: the first one is the default (no SNI, or a
    /// name no certificate covers).
    #[serde(rename = "certificate")]
    pub certificates: Vec<CertConfig>,
    /// Offer HTTP/2 by ALPN (`h2`, then `http/1.1`); false = HTTP/1.1 only.
    #[serde(default = "yes")]
    pub http2: bool,
    /// Lowest TLS version accepted: "1.2" or "1.3".
    #[serde(default = "default_min_version")]
    pub min_version: String,
    /// Time a client has to complete the TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Dur,
    /// `Strict-Transport-Security` value added to every response over TLS,
    /// e.g. "max-age=31536000; includeSubDomains" (absent = none).
    #[serde(default)]
    pub hsts: Option<String>,
    /// A plain-HTTP listener that redirects everything to https.
    #[serde(default)]
    pub redirect: Option<RedirectConfig>,
}

fn yes() -> bool {
    true
}
fn default_min_version() -> String {
    "1.2".into()
}
fn default_handshake_timeout() -> Dur {
    Dur::secs(10)
}

/// One certificate chain and its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// PEM file: the server certificate first, then intermediates.
    pub cert: PathBuf,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Server names this certificate answers (`*.example.com` allowed);
    /// empty = the DNS names of the certificate's subjectAltName.
    #[serde(default)]
    pub names: Vec<String>,
}

/// `[tls.redirect]`: plain HTTP → HTTPS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// Address of the plain-HTTP listener (e.g. "0.0.0.0:80").
    pub addr: SocketAddr,
    /// 301, 302, 307 or 308 (308 keeps the method and body).
    #[serde(default = "default_redirect_status")]
    pub status: u16,
    /// Port written in the https URL; default: the TLS listener's port
    /// (left out when it is 443).
    #[serde(default)]
    pub https_port: Option<u16>,
}

fn default_redirect_status() -> u16 {
    308
}

/// A certificate or key that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct TlsError {
    pub file: String,
    pub message: String,
}

fn tls_err(file: &std::path::Path, message: impl Into<String>) -> TlsError {
    TlsError {
        file: file.display().to_string(),
        message: message.into(),
    }
}

impl TlsConfig {
    /// Structural checks, then every certificate and key is loaded once so a
    /// bad file is reported before anything binds.
    pub(crate) fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: String, message: String| {
            Err(ConfigError::Invalid {
                file: file.to_string(),
                key,
                message,
            })
        };
        if self.certificates.is_empty() {
            return bad(
                "tls.certificate".into(),
                "at least one [[tls.certificate]] (cert + key) is required".into(),
            );
        }
        if !matches!(self.min_version.as_str(), "1.2" | "1.3") {
            return bad(
                "tls.min_version".into(),
                format!("{:?} must be \"1.2\" or \"1.3\"", self.min_version),
            );
        }
        if self.handshake_timeout.0.is_zero() {
            return bad("tls.handshake_timeout".into(), "must be > 0".into());
        }
        if let Some(h) = &self.hsts {
            if h.is_empty() || HeaderValue::from_str(h).is_err() {
                return bad(
                    "tls.hsts".into(),
                    "must be a header value such as \"max-age=31536000\"".into(),
                );
            }
        }
        if let Some(r) = &self.redirect {
            if !matches!(r.status, 301 | 302 | 307 | 308) {
                return bad(
                    "tls.redirect.status".into(),
                    format!("{} must be 301, 302, 307 or 308", r.status),
                );
            }
            if r.https_port == Some(0) {
                return bad("tls.redirect.https_port".into(), "must be 1..=65535".into());
            }
        }
        let provider = provider();
        for (i, c) in self.certificates.iter().enumerate() {
            for (j, n) in c.names.iter().enumerate() {
                if normalize_name(n).is_none() {
                    return bad(
                        format!("tls.certificate[{i}].names[{j}]"),
                        format!("{n:?} is not a DNS name (or *.wildcard)"),
                    );
                }
            }
            if let Err(e) = load_cert(c, &provider) {
                return bad(format!("tls.certificate[{i}]"), e.to_string());
            }
        }
        Ok(())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Lower-case; `*.x.y` kept as a wildcard; `None` if it is not a DNS name.
fn normalize_name(n: &str) -> Option<String> {
    let n = n.trim().trim_end_matches('.').to_ascii_lowercase();
    let base = n.strip_prefix("*.").unwrap_or(&n);
    let ok = !base.is_empty()
        && base
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    ok.then_some(n)
}

/// Load one chain + key; returns it and the names it answers.
fn load_cert(
    c: &CertConfig,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, Vec<String>), TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
        .map_err(|e| tls_err(&c.cert, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(&c.cert, format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err(&c.cert, "no CERTIFICATE block in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&c.key)
        .map_err(|e| tls_err(&c.key, format!("cannot read a private key: {e}")))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| tls_err(&c.key, format!("unusable private key: {e}")))?;
    let ck = CertifiedKey::new(certs, signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(tls_err(
                &c.key,
                format!("does not belong to {}: {e}", c.cert.display()),
            ))
        }
    }
    let names: Vec<String> = if c.names.is_empty() {
        let ee = webpki::EndEntityCert::try_from(&ck.cert[0])
            .map_err(|e| tls_err(&c.cert, format!("cannot parse the certificate: {e}")))?;
        ee.valid_dns_names().filter_map(normalize_name).collect()
    } else {
        c.names.iter().filter_map(|n| normalize_name(n)).collect()
    };
    Ok((Arc::new(ck), names))
}

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
                    None => crate::proxy::json_error(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            normalize_name("Example.COM.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_name("*.a.b").as_deref(), Some("*.a.b"));
        assert!(normalize_name("a..b").is_none());
        assert!(normalize_name("a b").is_none());
        assert!(normalize_name("*.").is_none());
        assert!(normalize_name("").is_none());
    }
}
