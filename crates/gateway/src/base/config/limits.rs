//! `[rate_limit]`: rules, keys, rates.
use std::time::Duration;

use http::header::HeaderName;
use serde::{Deserialize, Deserializer};

use super::{ConfigError, Dur};

/// `[rate_limit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// `[[rate_limit.rule]]`: every rule a request meets must allow it.
    #[serde(rename = "rule")]
    pub rules: Vec<RateRule>,
    /// Share the limits through this Redis (e.g. "redis://127.0.0.1:6379/0").
    pub redis_url: Option<String>,
    /// Prefix of the Redis keys.
    pub redis_prefix: String,
    /// A Redis answer slower than this counts as Redis being down.
    pub redis_timeout: Dur,
    /// While on the local fallback, how often Redis is probed.
    pub redis_retry_interval: Dur,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            rules: Vec::new(),
            redis_url: None,
            redis_prefix: "ragfleet:rl:".into(),
            redis_timeout: Dur::millis(100),
            redis_retry_interval: Dur::secs(1),
        }
    }
}

/// One `[[rate_limit.rule]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateRule {
    /// Name in logs, error bodies and Redis keys (default "ruleN").
    #[serde(default)]
    pub name: Option<String>,
    /// What a limit is kept per: "client_ip" or "header:NAME".
    pub key: RateKey,
    /// Sustained rate: "10r/s", "600r/m", "100r/h".
    pub rate: Rate,
    /// Requests allowed at once beyond the rate (nginx's `burst`).
    #[serde(default)]
    pub burst: u32,
    /// Only requests whose (normalised) path starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// Where a rule's key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    ClientIp,
    /// A request without the header is not counted by this rule.
    Header(HeaderName),
}

impl std::str::FromStr for RateKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "client_ip" {
            return Ok(RateKey::ClientIp);
        }
        match s.split_once(':') {
            Some(("header", name)) if !name.is_empty() => HeaderName::from_bytes(name.as_bytes())
                .map(RateKey::Header)
                .map_err(|_| format!("bad key {s:?}: invalid header name")),
            _ => Err(format!(
                "bad key {s:?} (write \"client_ip\" or \"header:NAME\")"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for RateKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A rate: `n` requests per unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// Time between two requests at the sustained rate.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad rate {s:?} (write e.g. \"10r/s\", \"600r/m\" or \"100r/h\")");
        let (n, unit) = s.trim().split_once("r/").ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("bad rate {s:?}: must be at least 1"));
        }
        let per = match unit {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count > 1_000_000 || (per / count).is_zero() {
            return Err(format!("bad rate {s:?}: too high"));
        }
        Ok(Rate { count, per })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl RateLimitConfig {
    pub(crate) fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: String, message: String| {
            Err(ConfigError::Invalid {
                file: file.to_string(),
                key,
                message,
            })
        };
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let name = rule_name(r, i);
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return bad(
                    format!("rate_limit.rule[{i}].name"),
                    format!("{name:?} must be letters, digits, '-', '_' or '.'"),
                );
            }
            if !names.insert(name.clone()) {
                return bad(
                    format!("rate_limit.rule[{i}].name"),
                    format!("{name:?} is used twice"),
                );
            }
            if r.burst > 1_000_000 {
                return bad(
                    format!("rate_limit.rule[{i}].burst"),
                    format!("{} is out of range 0..=1000000", r.burst),
                );
            }
            if let Some(p) = &r.prefix {
                if !p.starts_with('/') {
                    return bad(
                        format!("rate_limit.rule[{i}].prefix"),
                        format!("{p:?} must start with '/'"),
                    );
                }
            }
        }
        if let Some(url) = &self.redis_url {
            if let Err(e) = redis::Client::open(url.as_str()) {
                return bad("rate_limit.redis_url".into(), format!("{url:?}: {e}"));
            }
        }
        if self.redis_timeout.0.is_zero() {
            return bad("rate_limit.redis_timeout".into(), "must be > 0".into());
        }
        if self.redis_retry_interval.0.is_zero() {
            return bad(
                "rate_limit.redis_retry_interval".into(),
                "must be > 0".into(),
            );
        }
        Ok(())
    }
}

pub(crate) fn rule_name(r: &RateRule, i: usize) -> String {
    r.name.clone().unwrap_or_else(|| format!("rule{i}"))
}
