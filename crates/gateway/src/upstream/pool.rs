//! Runtime state of upstream pools and their servers.
//!
//! A [`Pool`] holds its servers in an `ArcSwap`'d [`ServerSet`] so the list can
//! be replaced live (hot reload, discovery) while requests in flight keep the
//! `Arc<Server>` they picked. Each [`Server`] keeps its live state in atomics:
//! in-flight count, peak-EWMA latency, passive and active health, slow-start
//! ramp, drain flag. A reload that keeps a server's address can carry the same
//! `Arc<Server>` over into the new set.
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::base::clock::now_nanos;
use crate::base::config::{FailKind, HashKey, Policy, PoolConfig, ServerConfig};
use crate::http::body::ReqBody;
use crate::upstream::balance::{self, Cand, Ring};
pub use crate::upstream::server::{InflightGuard, Server, ServerSnapshot};

/// The servers of a pool at one moment, with the hash ring built over them.
#[derive(Debug)]
pub struct ServerSet {
    pub servers: Vec<Arc<Server>>,
    pub(crate) ring: Ring,
}

impl ServerSet {
    pub fn new(servers: Vec<Arc<Server>>) -> ServerSet {
        let ring = Ring::new(
            &servers
                .iter()
                .map(|s| (s.addr().to_string(), s.weight()))
                .collect::<Vec<_>>(),
        );
        ServerSet { servers, ring }
    }
}

/// Token bucket bounding retries to a fraction of requests (plus a trickle).
#[derive(Debug)]
pub(crate) struct RetryBudget {
    ratio: f64,
    per_sec: f64,
    cap: f64,
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    pub(crate) fn new(ratio: f64, per_sec: f64) -> RetryBudget {
        RetryBudget {
            ratio,
            per_sec,
            cap: (per_sec * 10.0).max(ratio * 100.0).max(1.0),
            state: Mutex::new((per_sec, Instant::now())),
        }
    }

    fn refill(&self, st: &mut (f64, Instant)) {
        let now = Instant::now();
        let dt = now.duration_since(st.1).as_secs_f64();
        st.0 = (st.0 + dt * self.per_sec).min(self.cap);
        st.1 = now;
    }

    pub(crate) fn deposit(&self) {
        if self.ratio == 0.0 {
            return;
        }
        if let Ok(mut st) = self.state.lock() {
            st.0 = (st.0 + self.ratio).min(self.cap);
        }
    }

    pub(crate) fn try_withdraw(&self) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        self.refill(&mut st);
        if st.0 >= 1.0 {
            st.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

pub(crate) type UpstreamClient = Client<HttpConnector, ReqBody>;

/// An upstream pool: its servers, balancing policy, settings and HTTP client.
pub struct Pool {
    name: String,
    pub(crate) cfg: PoolConfig,
    servers: ArcSwap<ServerSet>,
    pick_lock: Mutex<()>,
    pub(crate) client: UpstreamClient,
    pub(crate) budget: RetryBudget,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.name).finish()
    }
}

/// What a pick needs to know about the request.
pub(crate) struct PickCtx {
    pub client_ip: IpAddr,
    pub hash_key: Option<u64>,
}

impl Pool {
    pub(crate) fn new(name: &str, cfg: PoolConfig) -> Pool {
        let servers = cfg
            .servers
            .iter()
            .filter_map(|s: &ServerConfig| Server::new(&s.addr, s.weight, s.backup).map(Arc::new))
            .collect();
        Pool::with_state(name, cfg, servers, None)
    }

    /// A pool over given servers (kept from a previous pool on reload), reusing
    /// an upstream client (and its keep-alive connections) when given.
    pub(crate) fn with_state(
        name: &str,
        cfg: PoolConfig,
        servers: Vec<Arc<Server>>,
        client: Option<UpstreamClient>,
    ) -> Pool {
        let client = client.unwrap_or_else(|| Pool::new_client(&cfg));
        Pool {
            name: name.to_string(),
            budget: RetryBudget::new(cfg.retries.budget_ratio, cfg.retries.budget_min_per_sec),
            cfg,
            servers: ArcSwap::from_pointee(ServerSet::new(servers)),
            pick_lock: Mutex::new(()),
            client,
        }
    }

    fn new_client(cfg: &PoolConfig) -> UpstreamClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.timeouts.connect.0));
        connector.enforce_http(true);
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.keepalive_timeout.0)
            .pool_max_idle_per_host(cfg.keepalive)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connect and keep-alive settings for the gateway's own client.
    pub(crate) fn conn_settings(&self) -> crate::http::h1::client::ConnSettings {
        crate::http::h1::client::ConnSettings {
            connect_timeout: self.cfg.timeouts.connect.0,
            max_idle: self.cfg.keepalive,
            idle_timeout: self.cfg.keepalive_timeout.0,
        }
    }

    pub fn policy(&self) -> Policy {
        self.cfg.policy
    }

    pub fn servers(&self) -> Vec<Arc<Server>> {
        self.servers.load().servers.clone()
    }

    pub fn server(&self, addr: &str) -> Option<Arc<Server>> {
        self.servers
            .load()
            .servers
            .iter()
            .find(|s| s.addr() == addr)
            .cloned()
    }

    /// Replace the server list (discovery, reload). Requests in flight keep
    /// the servers they picked.
    pub fn set_servers(&self, servers: Vec<Arc<Server>>) {
        self.servers.store(Arc::new(ServerSet::new(servers)));
    }

    /// Change a server's weight at runtime and rebuild what derives from the
    /// weights (the consistent-hash ring). False if no such server.
    pub fn set_server_weight(&self, addr: &str, weight: u32) -> bool {
        let Some(server) = self.server(addr) else {
            return false;
        };
        server.set_weight(weight);
        self.set_servers(self.servers());
        true
    }

    pub fn snapshot(&self) -> Vec<ServerSnapshot> {
        self.servers
            .load()
            .servers
            .iter()
            .map(|s| s.snapshot())
            .collect()
    }

    pub(crate) fn hash_key_source(&self) -> Option<&HashKey> {
        if self.cfg.policy == Policy::Hash {
            self.cfg.hash.key.as_ref()
        } else {
            None
        }
    }

    pub(crate) fn counts_as_failure(&self, kind: FailKind) -> bool {
        self.cfg.fail_on.contains(&kind)
    }

    /// Pick a server for a request, skipping those already `tried`, and count
    /// the request in flight on it. Backups are used only when no primary can
    /// take the request.
    pub(crate) fn pick(&self, ctx: &PickCtx, tried: &[Arc<Server>]) -> Option<InflightGuard> {
        let set = self.servers.load();
        let now = now_nanos();
        let slow_start = self.cfg.slow_start.0;
        let usable = |s: &Arc<Server>| s.available() && !tried.iter().any(|t| Arc::ptr_eq(t, s));
        let mut cands: smallvec::SmallVec<[Cand<'_>; 8]> = smallvec::SmallVec::new();
        for backup in [false, true] {
            for (i, s) in set.servers.iter().enumerate() {
                if s.is_backup() == backup && usable(s) {
                    cands.push(Cand {
                        index: i,
                        server: s,
                        weight: s.effective_weight(slow_start, now),
                    });
                }
            }
            if !cands.is_empty() {
                break;
            }
        }
        if cands.is_empty() {
            return None;
        }
        let _lock = self.pick_lock.lock().unwrap_or_else(|e| e.into_inner());
        let chosen = match self.cfg.policy {
            Policy::RoundRobin => balance::smooth_wrr(&cands),
            Policy::LeastConn => balance::least_conn(&cands),
            Policy::IpHash => balance::ip_hash(&cands, ctx.client_ip),
            Policy::Hash => match ctx.hash_key {
                Some(k) => balance::bounded_hash(&cands, &set.ring, k, self.cfg.hash.load_factor),
                None => balance::smooth_wrr(&cands),
            },
            Policy::P2c => balance::p2c_with_load(&cands, now, self.cfg.load_weight),
        };
        Some(set.servers[cands[chosen].index].start_request())
    }
}
