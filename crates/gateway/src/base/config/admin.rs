//! `[admin]`: the admin listener.
use std::net::SocketAddr;
use std::path::PathBuf;

use http::HeaderValue;
use serde::Deserialize;

/// `[admin]`: present = the admin listener runs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Set `false` to keep the table but run no admin listener.
    pub enabled: bool,
    /// Address of the admin listener (metrics and admin API).
    pub addr: SocketAddr,
    /// Bearer token required on every admin request.
    pub token: Option<String>,
    /// File holding the bearer token (read on each request; trailing
    /// whitespace ignored). Mutually exclusive with `token`.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            addr: SocketAddr::from(([127, 0, 0, 1], 9901)),
            token: None,
            token_file: None,
        }
    }
}

impl AdminConfig {
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        if self.token.is_some() && self.token_file.is_some() {
            return Err(("token".into(), "give token or token_file, not both".into()));
        }
        if let Some(t) = &self.token {
            if t.trim().is_empty() || HeaderValue::from_str(t).is_err() {
                return Err((
                    "token".into(),
                    "must be non-empty printable ASCII without spaces at the ends".into(),
                ));
            }
        }
        Ok(())
    }
}
