//! One upstream server and its live state, all in atomics: in-flight
//! count, peak-EWMA latency, passive and active health, slow-start ramp,
//! drain flag, the load it reports. A reload that keeps a server's address
//! carries the same `Arc<Server>` over into the new set.
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::Authority;

use crate::base::clock::{nanos_at, now_nanos};
use crate::http::response::{BodyGuard, OnBodyEnd};

/// Latency assumed for a server nothing is known about yet.
const DEFAULT_RTT_NS: f64 = 1_000_000.0;
/// Decay time constant of the peak-EWMA latency.
const EWMA_TAU_NS: f64 = 10_000_000_000.0;
/// Effective weights are scaled by this so slow start can ramp smoothly.
pub(crate) const WEIGHT_SCALE: u64 = 1000;

/// One upstream server and its live state.
#[derive(Debug)]
pub struct Server {
    addr: String,
    authority: Authority,
    weight: AtomicU32,
    backup: bool,
    inflight: AtomicU64,
    /// Peak-EWMA of time-to-headers in ns (f64 bits) and when last updated.
    ewma_bits: AtomicU64,
    ewma_at: AtomicU64,
    /// Passive health: failures in the current window, window start, down until.
    fails: AtomicU32,
    fail_window_start: AtomicU64,
    down_until: AtomicU64,
    /// Active health: current verdict and consecutive results.
    active_up: AtomicBool,
    active_ok_streak: AtomicU32,
    active_fail_streak: AtomicU32,
    /// When the server last came back (for slow start); 0 = never went down.
    recovered_at: AtomicU64,
    drained: AtomicBool,
    /// Smooth weighted round-robin current weight (guarded by the pool's pick lock).
    pub(crate) rr_current: AtomicI64,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Weight as its source (config file, discovery) last gave it; an admin
    /// weight change survives merges until the source's weight changes.
    configured_weight: AtomicU32,
    /// Load the server reports in its health response (f64 bits; 0 = idle).
    load_bits: AtomicU64,
    /// Its keep-alive connections for the gateway's own HTTP/1.1 client.
    upstream: Arc<crate::http::h1::client::Upstream>,
}

impl Server {
    /// A server from its `host:port` address; `None` if it is not one.
    pub fn new(addr: &str, weight: u32, backup: bool) -> Option<Server> {
        let authority: Authority = addr.parse().ok()?;
        authority.port_u16()?;
        Some(Server {
            addr: addr.to_string(),
            authority,
            weight: AtomicU32::new(weight.max(1)),
            backup,
            inflight: AtomicU64::new(0),
            ewma_bits: AtomicU64::new(0f64.to_bits()),
            ewma_at: AtomicU64::new(0),
            fails: AtomicU32::new(0),
            fail_window_start: AtomicU64::new(0),
            down_until: AtomicU64::new(0),
            active_up: AtomicBool::new(true),
            active_ok_streak: AtomicU32::new(0),
            active_fail_streak: AtomicU32::new(0),
            recovered_at: AtomicU64::new(0),
            drained: AtomicBool::new(false),
            rr_current: AtomicI64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            configured_weight: AtomicU32::new(weight.max(1)),
            load_bits: AtomicU64::new(0f64.to_bits()),
            upstream: Arc::new(crate::http::h1::client::Upstream::new(addr)),
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }
    pub(crate) fn upstream(&self) -> &Arc<crate::http::h1::client::Upstream> {
        &self.upstream
    }
    /// Idle keep-alive connections held to this server by the gateway's
    /// own client (hyper's client keeps its own).
    pub fn idle_connections(&self) -> usize {
        self.upstream.idle.len()
    }
    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }
    /// Change the weight at runtime. Anything derived from weights (the
    /// hash ring) is rebuilt only by [`Pool::set_server_weight`]; use that.
    pub fn set_weight(&self, w: u32) {
        self.weight.store(w.max(1), Relaxed)
    }
    /// The weight its source (config file, discovery) last gave.
    pub fn configured_weight(&self) -> u32 {
        self.configured_weight.load(Relaxed)
    }
    pub(crate) fn set_configured_weight(&self, w: u32) {
        self.configured_weight.store(w.max(1), Relaxed)
    }
    /// Load reported by the server's health response (0 = idle, 1 = every
    /// generation slot busy, more = queueing; see `health::load_score`).
    pub fn load(&self) -> f64 {
        f64::from_bits(self.load_bits.load(Relaxed))
    }
    pub(crate) fn set_load(&self, load: f64) {
        let l = if load.is_finite() { load.max(0.0) } else { 0.0 };
        self.load_bits.store(l.to_bits(), Relaxed)
    }
    pub fn is_backup(&self) -> bool {
        self.backup
    }
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Relaxed)
    }
    /// Drained servers get no new requests; in-flight ones finish.
    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Relaxed)
    }
    pub fn is_drained(&self) -> bool {
        self.drained.load(Relaxed)
    }
    pub fn active_up(&self) -> bool {
        self.active_up.load(Relaxed)
    }

    /// Passive health verdict at `now`.
    pub fn passive_down(&self) -> bool {
        // No clock read for a server that was never marked down.
        self.down_until.load(Relaxed) != 0 && self.passive_down_at(now_nanos())
    }

    fn passive_down_at(&self, now: u64) -> bool {
        let until = self.down_until.load(Relaxed);
        if until == 0 {
            return false;
        }
        if now < until {
            return true;
        }
        // The down period is over: the server is back (slow start begins).
        if self
            .down_until
            .compare_exchange(until, 0, Relaxed, Relaxed)
            .is_ok()
        {
            self.fails.store(0, Relaxed);
            self.recovered_at.store(now, Relaxed);
        }
        false
    }

    /// Usable for new requests: not drained, and both health checks allow it.
    pub fn available(&self) -> bool {
        !self.is_drained() && self.active_up() && !self.passive_down()
    }

    /// Effective weight × WEIGHT_SCALE, ramped during slow start.
    pub(crate) fn effective_weight(&self, slow_start: Duration, now: u64) -> u64 {
        let w = self.weight() as u64 * WEIGHT_SCALE;
        let rec = self.recovered_at.load(Relaxed);
        if slow_start.is_zero() || rec == 0 {
            return w;
        }
        let elapsed = now.saturating_sub(rec) as f64;
        let frac = elapsed / slow_start.as_nanos() as f64;
        if frac >= 1.0 {
            return w;
        }
        ((w as f64 * frac.max(0.05)) as u64).max(1)
    }

    /// Record a failure (passive health). Returns true if it marked the server down.
    pub(crate) fn record_failure(&self, max_fails: u32, fail_timeout: Duration) -> bool {
        self.failures.fetch_add(1, Relaxed);
        if max_fails == 0 {
            return false;
        }
        let now = now_nanos();
        let window = fail_timeout.as_nanos() as u64;
        let start = self.fail_window_start.load(Relaxed);
        let fails = if start == 0 || now.saturating_sub(start) > window {
            self.fail_window_start.store(now, Relaxed);
            self.fails.store(1, Relaxed);
            1
        } else {
            self.fails.fetch_add(1, Relaxed) + 1
        };
        if fails >= max_fails && self.down_until.load(Relaxed) == 0 {
            self.down_until.store(now + window.max(1), Relaxed);
            tracing::warn!(server = %self.addr, fails, "upstream marked down (passive) for {:?}", fail_timeout);
            return true;
        }
        false
    }

    pub(crate) fn record_success(&self) {
        if self.fails.load(Relaxed) != 0 && self.down_until.load(Relaxed) == 0 {
            self.fails.store(0, Relaxed);
        }
    }

    /// Feed one active check result; returns the new verdict when it changed.
    pub(crate) fn record_active(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.active_fail_streak.store(0, Relaxed);
            let streak = self.active_ok_streak.fetch_add(1, Relaxed) + 1;
            if !self.active_up() && streak >= rise {
                self.active_up.store(true, Relaxed);
                self.recovered_at.store(now_nanos(), Relaxed);
                return Some(true);
            }
        } else {
            self.active_ok_streak.store(0, Relaxed);
            let streak = self.active_fail_streak.fetch_add(1, Relaxed) + 1;
            if self.active_up() && streak >= fall {
                self.active_up.store(false, Relaxed);
                return Some(false);
            }
        }
        None
    }

    /// Peak-EWMA latency in ns, decayed to `now`.
    pub(crate) fn ewma_ns(&self, now: u64) -> f64 {
        let at = self.ewma_at.load(Relaxed);
        if at == 0 {
            return DEFAULT_RTT_NS;
        }
        let v = f64::from_bits(self.ewma_bits.load(Relaxed));
        let dt = now.saturating_sub(at) as f64;
        v * (-dt / EWMA_TAU_NS).exp()
    }

    /// Record an attempt's time to response headers; `at` is when it was
    /// measured (it saves the caller's clock read a second one here).
    pub(crate) fn observe_latency(&self, rtt: Duration, at: Instant) {
        let now = nanos_at(at);
        let rtt = rtt.as_nanos() as f64;
        let at = self.ewma_at.load(Relaxed);
        let next = if at == 0 {
            rtt
        } else {
            let cur = f64::from_bits(self.ewma_bits.load(Relaxed));
            if rtt > cur {
                rtt
            } else {
                let w = (-(now.saturating_sub(at) as f64) / EWMA_TAU_NS).exp();
                cur * w + rtt * (1.0 - w)
            }
        };
        self.ewma_bits.store(next.to_bits(), Relaxed);
        self.ewma_at.store(now, Relaxed);
    }

    /// Count a request as in flight on this server until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Relaxed);
        self.requests.fetch_add(1, Relaxed);
        InflightGuard {
            server: self.clone(),
            end: BodyGuard::new(self.clone()),
        }
    }

    pub fn snapshot(&self) -> ServerSnapshot {
        let now = now_nanos();
        ServerSnapshot {
            addr: self.addr.clone(),
            weight: self.weight(),
            backup: self.backup,
            inflight: self.inflight(),
            ewma_ms: self.ewma_ns(now) / 1e6,
            passive_down: self.passive_down_at(now),
            active_up: self.active_up(),
            drained: self.is_drained(),
            requests: self.requests.load(Relaxed),
            failures: self.failures.load(Relaxed),
        }
    }
}

/// Decrements the server's in-flight count when the response (or tunnel) ends.
#[derive(Debug)]
pub struct InflightGuard {
    server: Arc<Server>,
    /// Ends the count when dropped, or goes with the response body.
    end: BodyGuard,
}

impl InflightGuard {
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// The count now ends with the response body that holds this.
    pub(crate) fn into_body_guard(self) -> BodyGuard {
        self.end
    }
}

impl OnBodyEnd for Server {
    fn body_ended(&self) {
        self.inflight.fetch_sub(1, Relaxed);
    }
}

/// A point-in-time view of a server (tests, logs, the admin API).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSnapshot {
    pub addr: String,
    pub weight: u32,
    pub backup: bool,
    pub inflight: u64,
    pub ewma_ms: f64,
    pub passive_down: bool,
    pub active_up: bool,
    pub drained: bool,
    pub requests: u64,
    pub failures: u64,
}
