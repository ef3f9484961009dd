//! `[auth]`: what the gateway asks of a request before it reaches a node.
use serde::Deserialize;

/// `[auth]`. The gateway does not verify opaque API keys or page sessions
/// (the nodes do, against their store); with `require_credentials` it
/// turns away requests that carry none at all, so an anonymous flood never
/// reaches a node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// 401 at the gateway for a request with no credential: no
    /// `Authorization` header and none of `credential_cookies`.
    pub require_credentials: bool,
    /// Cookies that count as a credential (a page's login session).
    pub credential_cookies: Vec<String>,
    /// Paths open without a credential, matched on the normalised path:
    /// an entry ending in `/` or `*` is a prefix (`*` dropped), any other
    /// must match exactly.
    pub open_paths: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            require_credentials: false,
            credential_cookies: vec!["ragfleet_session".into()],
            open_paths: vec!["/health".into(), "/ready".into()],
        }
    }
}

impl AuthConfig {
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        for (i, p) in self.open_paths.iter().enumerate() {
            if !p.starts_with('/') {
                return Err((
                    format!("open_paths[{i}]"),
                    format!("{p:?} must start with '/'"),
                ));
            }
        }
        for (i, c) in self.credential_cookies.iter().enumerate() {
            let ok = !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return Err((
                    format!("credential_cookies[{i}]"),
                    format!("{c:?} is not a cookie name (letters, digits, '-', '_', '.')"),
                ));
            }
        }
        Ok(())
    }

    /// Whether `path` (normalised) is open without a credential.
    pub fn is_open(&self, path: &str) -> bool {
        self.open_paths.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None if p.ends_with('/') => path.starts_with(p.as_str()),
            None => path == p,
        })
    }
}
