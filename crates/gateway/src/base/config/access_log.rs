//! `[access_log]`.
use serde::Deserialize;

/// `[access_log]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    pub enabled: bool,
    pub format: AccessLogFormat,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            format: AccessLogFormat::Fields,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// Structured tracing fields.
    Fields,
    /// The message is one JSON object.
    Json,
}
