//! DNS discovery: resolve `name` (A and AAAA, through the system resolver,
//! so /etc/hosts and search domains apply) every `interval`; each address
//! with `port` is one server. A failed resolution keeps the last set.
use std::net::SocketAddr;
use std::sync::Weak;

use tokio_util::sync::CancellationToken;

use super::{AddrFamily, DnsDiscovery, Found, Source};
use crate::Shared;

/// Resolve once: the servers, sorted and without duplicates.
pub async fn resolve(cfg: &DnsDiscovery) -> std::io::Result<Vec<Found>> {
    let addrs = tokio::net::lookup_host((cfg.name.as_str(), cfg.port)).await?;
    let mut found: Vec<SocketAddr> = addrs
        .filter(|a| match cfg.family {
            AddrFamily::Any => true,
            AddrFamily::Ipv4 => a.is_ipv4(),
            AddrFamily::Ipv6 => a.is_ipv6(),
        })
        .collect();
    found.sort();
    found.dedup();
    Ok(found
        .into_iter()
        .map(|a| Found {
            addr: a.to_string(),
            weight: cfg.weight,
        })
        .collect())
}

pub(crate) async fn run(
    shared: Weak<Shared>,
    pool: String,
    generation: u64,
    cfg: DnsDiscovery,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = resolve(&cfg) => r,
        };
        let Some(sh) = shared.upgrade() else { return };
        match result {
            Ok(found) => {
                if failing {
                    tracing::info!(pool, name = cfg.name, "DNS discovery resolves again");
                    failing = false;
                }
                super::count(&sh, &pool, Source::Dns, true);
                super::apply(&sh, &pool, generation, Source::Dns, found);
            }
            Err(e) => {
                super::count(&sh, &pool, Source::Dns, false);
                if !failing {
                    tracing::warn!(
                        pool,
                        name = cfg.name,
                        "DNS discovery failed, keeping the last known servers: {e}"
                    );
                    failing = true;
                }
            }
        }
        drop(sh);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(cfg.interval.0) => {}
        }
    }
}
