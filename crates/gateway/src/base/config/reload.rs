//! `[reload]`.
use serde::Deserialize;

use super::Dur;

/// `[reload]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Reload when the configuration file changes (SIGHUP always works).
    pub watch: bool,
    /// Wait this long after the last change before reloading (editors write
    /// files in several steps).
    pub debounce: Dur,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            debounce: Dur::millis(500),
        }
    }
}
