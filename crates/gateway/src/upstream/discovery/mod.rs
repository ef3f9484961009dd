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

use tokio_util::sync::CancellationToken;

pub use crate::base::config::discovery::{
    AddrFamily, DiscoveryConfig, DnsDiscovery, EtcdDiscovery, DEFAULT_ETCD_PREFIX,
};
use crate::base::config::{PoolConfig, ServerConfig};
use crate::upstream::pool::{Pool, Server};

pub mod dns;
pub mod etcd;

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

/// Where a pool's discovery tasks report: every lookup and every set
/// found. The gateway applies what is found (`app/discovered.rs`); a task
/// only finds.
pub trait Report: Send + Sync + 'static {
    /// One lookup of `src` finished. `false`: nobody listens any more (the
    /// gateway is gone) and the task ends.
    fn lookup(&self, src: Source, ok: bool) -> bool;
    /// `src`'s whole current set of servers.
    fn found(&self, src: Source, found: Vec<Found>);
}

/// Spawn the tasks of one pool's discovery entry.
pub(crate) fn spawn(report: Arc<dyn Report>, pool: &str, entry: &Entry) {
    if let Some(d) = entry.cfg.dns.clone() {
        tokio::spawn(dns::run(
            report.clone(),
            pool.to_string(),
            d,
            entry.stop.clone(),
        ));
    }
    if let Some(e) = entry.cfg.etcd.clone() {
        tokio::spawn(etcd::run(report, pool.to_string(), e, entry.stop.clone()));
    }
}
