//! Dynamic discovery of a pool's servers, merged with its static list.
//!
//! - [`dns`]: re-resolve a name's A/AAAA records every `interval` (how
//!   Kubernetes headless services are found);
//! - [`etcd`]: list and then watch a key prefix through etcd's v3 JSON
//!   gateway over plain HTTP (no gRPC, no protoc): each key is one server.
//!
//! Each source reports its whole current set; the pool's server list is
//! static ∪ DNS ∪ etcd (first one wins for an address). Servers that stay keep
//! their live state (the same `Arc<Server>`); removed servers get no new
//! requests while what is in flight on them finishes. A source that fails
//! keeps its last known set.
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Dur, PoolConfig, ServerConfig};
use crate::pool::{Pool, Server};
use crate::Shared;

pub mod dns;
pub mod etcd;

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
                if let Err(m) = etcd::parse_endpoint(ep) {
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

/// Where a server of a pool comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Static,
    Dns,
    Etcd,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Dns => "dns",
            Source::Etcd => "etcd",
        }
    }
}

/// A server a discovery source reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub addr: String,
    pub weight: u32,
}

/// Discovery state of one pool, kept across reloads while its
/// `[discovery]` table is unchanged.
pub(crate) struct Entry {
    pub cfg: DiscoveryConfig,
    /// Distinguishes this entry's tasks from those of a replaced one.
    pub generation: u64,
    pub stop: CancellationToken,
    pub sets: BTreeMap<Source, Vec<Found>>,
    /// Tasks have been spawned for this entry.
    pub started: bool,
}

/// The servers a pool should have: static first, then DNS, then etcd; the
/// first source to name an address wins.
pub(crate) fn desired(
    cfg: &PoolConfig,
    sets: Option<&BTreeMap<Source, Vec<Found>>>,
) -> Vec<(ServerConfig, Source)> {
    let mut out: Vec<(ServerConfig, Source)> = cfg
        .servers
        .iter()
        .map(|s| (s.clone(), Source::Static))
        .collect();
    for (src, found) in sets.into_iter().flatten() {
        for f in found {
            if out.iter().any(|(s, _)| s.addr == f.addr) {
                continue;
            }
            let mut s = ServerConfig::new(f.addr.clone());
            s.weight = f.weight.clamp(1, 1000);
            out.push((s, *src));
        }
    }
    out
}

/// Build a server list for `desired`, reusing the servers of `prev` with the
/// same address (and backup flag) so they keep their live state. A reused
/// server takes the source's weight only if that weight changed (so a weight
/// set through the admin API survives unrelated updates).
pub(crate) fn build_servers(
    desired: &[(ServerConfig, Source)],
    prev: Option<&Pool>,
) -> Vec<Arc<Server>> {
    let old = prev.map(|p| p.servers()).unwrap_or_default();
    desired
        .iter()
        .filter_map(|(sc, _)| {
            if let Some(s) = old
                .iter()
                .find(|s| s.addr() == sc.addr && s.is_backup() == sc.backup)
            {
                if s.configured_weight() != sc.weight {
                    s.set_configured_weight(sc.weight);
                    s.set_weight(sc.weight);
                }
                return Some(s.clone());
            }
            Server::new(&sc.addr, sc.weight, sc.backup).map(Arc::new)
        })
        .collect()
}

/// A source reports its current set for `pool`: store it and update the
/// pool's servers. Ignored if the pool's discovery was replaced meanwhile.
pub(crate) fn apply(shared: &Shared, pool: &str, generation: u64, src: Source, found: Vec<Found>) {
    let mut st = shared.ops.lock_state();
    let Some(entry) = st.discovery.get_mut(pool) else {
        return;
    };
    if entry.generation != generation {
        return;
    }
    shared
        .metrics
        .discovered
        .get([pool, src.as_str()], None)
        .value
        .store(found.len() as i64, std::sync::atomic::Ordering::Relaxed);
    if entry.sets.get(&src) == Some(&found) {
        return;
    }
    entry.sets.insert(src, found);
    let rt = shared.runtime.load();
    let Some(p) = rt.pool(pool) else {
        return;
    };
    let desired = desired(&p.cfg, Some(&entry.sets));
    let before: Vec<String> = p.servers().iter().map(|s| s.addr().to_string()).collect();
    let servers = build_servers(&desired, Some(p));
    let after: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    let added: Vec<&String> = after.iter().filter(|a| !before.contains(a)).collect();
    let removed: Vec<&String> = before.iter().filter(|a| !after.contains(a)).collect();
    p.set_servers(servers);
    if !added.is_empty() || !removed.is_empty() {
        tracing::info!(
            pool,
            source = src.as_str(),
            ?added,
            ?removed,
            servers = after.len(),
            "discovery changed the pool's servers"
        );
    }
}

/// Count one lookup of a source.
pub(crate) fn count(shared: &Shared, pool: &str, src: Source, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    shared
        .metrics
        .discovery
        .get([pool, src.as_str(), result], None)
        .value
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Spawn the tasks of one pool's discovery entry.
pub(crate) fn spawn(shared: &Arc<Shared>, pool: &str, entry: &Entry) {
    let weak = Arc::downgrade(shared);
    if let Some(d) = entry.cfg.dns.clone() {
        tokio::spawn(dns::run(
            weak.clone(),
            pool.to_string(),
            entry.generation,
            d,
            entry.stop.clone(),
        ));
    }
    if let Some(e) = entry.cfg.etcd.clone() {
        tokio::spawn(etcd::run(
            weak,
            pool.to_string(),
            entry.generation,
            e,
            entry.stop.clone(),
        ));
    }
}
