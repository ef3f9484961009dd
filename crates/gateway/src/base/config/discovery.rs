//! `[pool.NAME.discovery]`: DNS and etcd sources.
use http::Uri;
use serde::Deserialize;

use super::Dur;

/// `[pool.NAME.discovery]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    #[serde(default)]
    pub dns: Option<DnsDiscovery>,
    #[serde(default)]
    pub etcd: Option<EtcdDiscovery>,
}

/// Address families a DNS name is resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddrFamily {
    Any,
    Ipv4,
    Ipv6,
}

/// `[pool.NAME.discovery.dns]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscovery {
    /// Host name to resolve (A and AAAA records, through the system resolver).
    pub name: String,
    /// Port of every resolved address.
    pub port: u16,
    #[serde(default = "default_dns_interval")]
    pub interval: Dur,
    #[serde(default = "default_family")]
    pub family: AddrFamily,
    /// Weight of every resolved server.
    #[serde(default = "one")]
    pub weight: u32,
}

/// `[pool.NAME.discovery.etcd]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdDiscovery {
    /// etcd client URLs (`http://host:port`), tried in turn.
    #[serde(default = "default_etcd_endpoints")]
    pub endpoints: Vec<String>,
    /// Key prefix; each key under it is one server.
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// Timeout of the listing request (and of connecting for the watch).
    #[serde(default = "default_etcd_timeout")]
    pub timeout: Dur,
    /// Longest wait between reconnection attempts (backoff doubles up to it).
    #[serde(default = "default_etcd_backoff")]
    pub backoff_max: Dur,
    /// Weight of servers whose value does not give one.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}
fn default_dns_interval() -> Dur {
    Dur::secs(5)
}
fn default_family() -> AddrFamily {
    AddrFamily::Any
}
fn default_etcd_endpoints() -> Vec<String> {
    vec!["http://127.0.0.1:2379".into()]
}
/// Where ragfleet nodes register: prefix + node id.
pub const DEFAULT_ETCD_PREFIX: &str = "/ragfleet/nodes/";
fn default_etcd_prefix() -> String {
    DEFAULT_ETCD_PREFIX.into()
}
fn default_etcd_timeout() -> Dur {
    Dur::secs(5)
}
fn default_etcd_backoff() -> Dur {
    Dur::secs(5)
}

impl DiscoveryConfig {
    pub fn is_enabled(&self) -> bool {
        self.dns.is_some() || self.etcd.is_some()
    }

    /// Check values; the error is (key under `discovery.`, message).
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((k.to_string(), m));
        if let Some(d) = &self.dns {
            if d.name.trim().is_empty() || d.name.contains(|c: char| c.is_whitespace()) {
                return bad("dns.name", format!("{:?} is not a host name", d.name));
            }
            if d.port == 0 {
                return bad("dns.port", "must be 1..=65535".into());
            }
            if d.interval.0.is_zero() {
                return bad("dns.interval", "must be > 0".into());
            }
            if d.weight == 0 || d.weight > 1000 {
                return bad(
                    "dns.weight",
                    format!("{} is out of range 1..=1000", d.weight),
                );
            }
        }
        if let Some(e) = &self.etcd {
            if e.endpoints.is_empty() {
                return bad(
                    "etcd.endpoints",
                    "needs at least one http://host:port".into(),
                );
            }
            for (i, ep) in e.endpoints.iter().enumerate() {
                if let Err(m) = parse_endpoint(ep) {
                    return bad(&format!("etcd.endpoints[{i}]"), m);
                }
            }
            if e.prefix.is_empty() {
                return bad("etcd.prefix", "must not be empty".into());
            }
            if e.timeout.0.is_zero() {
                return bad("etcd.timeout", "must be > 0".into());
            }
            if e.backoff_max.0.is_zero() {
                return bad("etcd.backoff_max", "must be > 0".into());
            }
            if e.weight == 0 || e.weight > 1000 {
                return bad(
                    "etcd.weight",
                    format!("{} is out of range 1..=1000", e.weight),
                );
            }
        }
        Ok(())
    }
}

/// Check an endpoint: `http://host:port` (a trailing `/` is allowed).
pub fn parse_endpoint(s: &str) -> Result<Uri, String> {
    let uri: Uri = s
        .parse()
        .map_err(|_| format!("{s:?} is not a URL (write http://host:port)"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{s:?}: https is not supported; use etcd's plain-HTTP client URL"
            ))
        }
        _ => return Err(format!("{s:?} must start with http://")),
    }
    if uri.authority().is_none() {
        return Err(format!("{s:?} has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{s:?} must not have a path (write http://host:port)"
        ));
    }
    Ok(uri)
}
