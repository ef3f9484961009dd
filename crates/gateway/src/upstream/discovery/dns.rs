//! DNS discovery: resolve `name` (A and AAAA, through the system resolver,
//! so /etc/hosts and search domains apply) every `interval`; each address
//! with `port` is one server. A failed resolution keeps the last set.
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{AddrFamily, DnsDiscovery, Found, Report, Source};

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
    report: Arc<dyn Report>,
    pool: String,
    cfg: DnsDiscovery,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = resolve(&cfg) => r,
        };
        if !report.lookup(Source::Dns, result.is_ok()) {
            return;
        }
        match result {
            Ok(found) => {
                if failing {
                    tracing::info!(pool, name = cfg.name, "DNS discovery resolves again");
                    failing = false;
                }
                report.found(Source::Dns, found);
            }
            Err(e) => {
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
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(cfg.interval.0) => {}
        }
    }
}
