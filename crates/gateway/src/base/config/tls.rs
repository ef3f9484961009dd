//! `[tls]`: certificates, SNI names, redirect, HSTS; and loading a certificate
//! and its key from PEM files (used by validation and by the terminator).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::HeaderValue;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::Deserialize;

use super::{ConfigError, Dur};

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

pub(crate) fn tls_err(file: &std::path::Path, message: impl Into<String>) -> TlsError {
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

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Lower-case; `*.x.y` kept as a wildcard; `None` if it is not a DNS name.
pub(crate) fn normalize_name(n: &str) -> Option<String> {
    let n = n.trim().trim_end_matches('.').to_ascii_lowercase();
    let base = n.strip_prefix("*.").unwrap_or(&n);
    let ok = !base.is_empty()
        && base
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    ok.then_some(n)
}

/// Load one chain + key; returns it and the names it answers.
pub(crate) fn load_cert(
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
