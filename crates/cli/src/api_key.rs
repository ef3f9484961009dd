//! Where the CLI finds the API key it sends to a node: `--api-key`,
//! `RAGFLEET_API_KEY`, or the local cluster's `admin.key`.
use std::path::{Path, PathBuf};

use anyhow::Context;

/// `--api-key` for the commands that talk to a node.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// API key (`rf_…`). Default: `RAGFLEET_API_KEY`, else the local
    /// cluster's key file (`$RAGFLEET_DATA/admin.key` or `data/admin.key`).
    #[arg(long, env = "RAGFLEET_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl KeyArgs {
    /// The key to send, if any.
    pub fn resolve(&self) -> Option<String> {
        if let Some(k) = self
            .api_key
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            return Some(k.to_string());
        }
        let dir = std::env::var_os("RAGFLEET_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("data"));
        read_key_file(&dir.join("admin.key"))
    }

    /// A client sending the key (if any) on every request.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(k) = self.resolve() {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {k}"))
                .context("the API key holds characters a header cannot")?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .context("building the HTTP client")
    }
}

fn read_key_file(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
