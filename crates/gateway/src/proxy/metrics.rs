//! Per-gateway metrics, rendered in the Prometheus text format (0.0.4) on the
//! admin listener.
//!
//! Why our own atomics and not the global `metrics` recorder or a registry
//! crate: every [`crate::app::Gateway`] owns its [`Metrics`] (tests run several
//! gateways in one process and check exact counters; a global recorder would
//! mix them), the hot path is one read-locked hash lookup plus a few relaxed
//! atomic adds per request, and the gateway crate gains no dependency. Per
//! server health, weight, load and in-flight gauges are not stored at all:
//! they are read from the live [`crate::proxy::runtime::Runtime`] at scrape time.
//!
//! Label cardinality is bounded: routes and pools come from the configuration,
//! servers from the configuration and discovery, status as a class (`2xx`).
//! No raw paths, no client addresses. Each labelled family also has a hard cap
//! ([`MAX_SERIES`]); past it new label sets are counted under `server="other"`.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::base::hash::hash64;
use crate::proxy::runtime::Runtime;

/// Upper bounds (seconds) of the latency histogram buckets. Long upper
/// buckets because LLM answers stream for minutes.
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 900.0,
];

/// Most label sets one family keeps before folding new ones into "other".
pub const MAX_SERIES: usize = 5000;

/// A latency histogram with the fixed [`LATENCY_BUCKETS`].
#[derive(Default)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; cumulated when rendered.
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS.partition_point(|b| *b < s);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Relaxed);
        }
        self.sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

/// One label set of a family and its value.
pub struct Series<C, const L: usize> {
    labels: [Box<str>; L],
    pub value: C,
}

impl<C, const L: usize> Series<C, L> {
    pub fn labels(&self) -> [&str; L] {
        std::array::from_fn(|i| &*self.labels[i])
    }
}

/// A labelled metric: label values → value, created on first use.
pub struct Family<C, const L: usize> {
    map: RwLock<HashMap<u64, Vec<Arc<Series<C, L>>>>>,
    len: AtomicU64,
}

impl<C: Default, const L: usize> Default for Family<C, L> {
    fn default() -> Self {
        Family {
            map: RwLock::new(HashMap::new()),
            len: AtomicU64::new(0),
        }
    }
}

impl<C: Default, const L: usize> Family<C, L> {
    fn key(labels: &[&str; L]) -> u64 {
        let parts: [&[u8]; L] = std::array::from_fn(|i| labels[i].as_bytes());
        hash64(&parts)
    }

    /// The series of these label values (created if new). When the family
    /// is full, a new label set is folded into one whose `overflow_label`
    /// (if given) reads "other".
    pub fn get(&self, labels: [&str; L], overflow_label: Option<usize>) -> Arc<Series<C, L>> {
        let key = Self::key(&labels);
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = map.get(&key) {
                if let Some(s) = v.iter().find(|s| s.labels() == labels) {
                    return s.clone();
                }
            }
        }
        let mut labels = labels;
        if self.len.load(Relaxed) as usize >= MAX_SERIES {
            if let Some(i) = overflow_label {
                labels[i] = "other";
            }
        }
        let key = Self::key(&labels);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let bucket = map.entry(key).or_default();
        if let Some(s) = bucket.iter().find(|s| s.labels() == labels) {
            return s.clone();
        }
        let s = Arc::new(Series {
            labels: std::array::from_fn(|i| labels[i].into()),
            value: C::default(),
        });
        bucket.push(s.clone());
        self.len.fetch_add(1, Relaxed);
        s
    }

    /// The series, sorted by label values.
    pub fn series(&self) -> Vec<Arc<Series<C, L>>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.values().flatten().cloned().collect();
        v.sort_by(|a, b| a.labels.cmp(&b.labels));
        v
    }
}

/// Requests by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
#[derive(Default)]
pub struct ByClass(pub [AtomicU64; 5]);

/// Latency and bytes of one (route, pool).
#[derive(Default)]
pub struct RouteStats {
    pub headers: Histogram,
    pub total: Histogram,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// A gauge that goes down when the guard drops.
pub struct GaugeGuard(Arc<Series<AtomicI64, 1>>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.value.fetch_sub(1, Relaxed);
    }
}

/// Renders extra metric families (e.g. the edge's TLS and rate-limit
/// counters) into the same exposition.
pub type ExtraSource = Box<dyn Fn(&mut String) + Send + Sync>;

/// Reads one per-server gauge from a snapshot and the reported load.
type ServerGauge = fn(&crate::upstream::pool::ServerSnapshot, f64) -> f64;

/// Every metric of one gateway instance.
#[derive(Default)]
pub struct Metrics {
    /// (route, pool, server) → by status class.
    pub requests: Family<ByClass, 3>,
    /// (route, pool) → latency histograms and bytes.
    pub routes: Family<RouteStats, 2>,
    /// (pool) → retries made (attempts beyond the first).
    pub retries: Family<AtomicU64, 1>,
    /// (pool) → open WebSocket tunnels.
    pub websockets: Family<AtomicI64, 1>,
    /// (pool) → open SSE (`text/event-stream`) responses.
    pub streams: Family<AtomicI64, 1>,
    /// Requests being handled (a tunnel counts until it closes).
    pub in_flight: AtomicI64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub last_reload_ok: AtomicBool,
    /// Unix time (s) of the last successful reload (0 = never).
    pub last_reload_ok_at: AtomicU64,
    /// (pool, source, result) → discovery lookups (`ok` / `error`).
    pub discovery: Family<AtomicU64, 3>,
    /// (pool, source) → servers the source currently reports.
    pub discovered: Family<AtomicI64, 2>,
    extra: Mutex<Vec<ExtraSource>>,
}

fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Escape a label value (backslash, double quote, newline).
fn esc(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn labels(out: &mut String, names: &[&str], values: &[&str]) {
    out.push('{');
    for (i, (n, v)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{n}=\"{}\"", esc(v));
    }
    out.push('}');
}

fn sample(
    out: &mut String,
    name: &str,
    names: &[&str],
    values: &[&str],
    v: impl std::fmt::Display,
) {
    out.push_str(name);
    if !names.is_empty() {
        labels(out, names, values);
    }
    let _ = writeln!(out, " {v}");
}

fn histogram(out: &mut String, name: &str, names: &[&str], values: &[&str], h: &Histogram) {
    let mut cum = 0u64;
    let mut names_le: Vec<&str> = names.to_vec();
    names_le.push("le");
    for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
        cum += h.buckets[i].load(Relaxed);
        let le = b.to_string();
        let mut vals: Vec<&str> = values.to_vec();
        vals.push(&le);
        sample(out, &format!("{name}_bucket"), &names_le, &vals, cum);
    }
    // Read count after the buckets so +Inf is never below the last bucket.
    let count = h.count.load(Relaxed).max(cum);
    let mut vals: Vec<&str> = values.to_vec();
    vals.push("+Inf");
    sample(out, &format!("{name}_bucket"), &names_le, &vals, count);
    let sum = h.sum_ns.load(Relaxed) as f64 / 1e9;
    sample(out, &format!("{name}_sum"), names, values, sum);
    sample(out, &format!("{name}_count"), names, values, count);
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Metrics {
    /// Count one finished request.
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_request(
        self: &Arc<Self>,
        route: Option<(&Arc<str>, &Arc<crate::upstream::pool::Pool>)>,
        server: Option<&Arc<crate::upstream::pool::Server>>,
        status: u16,
        headers: Option<Duration>,
        total: Duration,
        bytes_in: u64,
        bytes_out: u64,
        retries: u32,
    ) {
        let (s, r) = self.request_series(route, server);
        let pool = route.map_or("none", |(_, p)| p.name());
        s.value.0[class_index(status)].fetch_add(1, Relaxed);
        if let Some(h) = headers {
            r.value.headers.observe(h);
        }
        r.value.total.observe(total);
        r.value.bytes_in.fetch_add(bytes_in, Relaxed);
        r.value.bytes_out.fetch_add(bytes_out, Relaxed);
        if retries > 0 {
            self.retries
                .get([pool], None)
                .value
                .fetch_add(retries as u64, Relaxed);
        }
    }

    /// The (route, pool, server) and (route, pool) series of a request. The
    /// last ones are kept per thread, by identity of the route, pool and
    /// server (held, so their addresses cannot be reused): consecutive
    /// requests mostly share them, and the lookup hashes three strings
    /// under a lock.
    fn request_series(
        self: &Arc<Self>,
        route: Option<(&Arc<str>, &Arc<crate::upstream::pool::Pool>)>,
        server: Option<&Arc<crate::upstream::pool::Server>>,
    ) -> (Arc<Series<ByClass, 3>>, Arc<Series<RouteStats, 2>>) {
        struct Last {
            metrics: Arc<Metrics>,
            route: Arc<str>,
            pool: Arc<crate::upstream::pool::Pool>,
            server: Option<Arc<crate::upstream::pool::Server>>,
            requests: Arc<Series<ByClass, 3>>,
            routes: Arc<Series<RouteStats, 2>>,
        }
        thread_local! {
            static LAST: std::cell::RefCell<Option<Last>> = const { std::cell::RefCell::new(None) };
        }
        let lookup = || {
            let (r, p) = route.map_or(("none", "none"), |(r, p)| (&**r, p.name()));
            let s = server.map_or("none", |s| s.addr());
            (
                self.requests.get([r, p, s], Some(2)),
                self.routes.get([r, p], None),
            )
        };
        let Some((route, pool)) = route else {
            return lookup();
        };
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            if let Some(l) = &*last {
                if Arc::ptr_eq(&l.metrics, self)
                    && Arc::ptr_eq(&l.route, route)
                    && Arc::ptr_eq(&l.pool, pool)
                    && match (&l.server, server) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    }
                {
                    return (l.requests.clone(), l.routes.clone());
                }
            }
            let (requests, routes) = lookup();
            *last = Some(Last {
                metrics: self.clone(),
                route: route.clone(),
                pool: pool.clone(),
                server: server.cloned(),
                requests: requests.clone(),
                routes: routes.clone(),
            });
            (requests, routes)
        })
    }

    /// +1 on a per-pool gauge until the guard drops.
    pub(crate) fn open(family: &Family<AtomicI64, 1>, pool: &str) -> GaugeGuard {
        let s = family.get([pool], None);
        s.value.fetch_add(1, Relaxed);
        GaugeGuard(s)
    }

    pub(crate) fn reload_result(&self, ok: bool) {
        if ok {
            self.reloads_ok.fetch_add(1, Relaxed);
            self.last_reload_ok_at.store(unix_now(), Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Relaxed);
        }
        self.last_reload_ok.store(ok, Relaxed);
    }

    /// Add a renderer for more metric families (written after ours).
    pub fn add_source(&self, f: ExtraSource) {
        if let Ok(mut v) = self.extra.lock() {
            v.push(f);
        }
    }

    /// The whole exposition: stored metrics plus live per-server state.
    pub fn render(&self, rt: &Runtime) -> String {
        let mut out = String::with_capacity(8192);
        let o = &mut out;

        header(
            o,
            "ragfleet_gateway_requests_total",
            "counter",
            "Requests answered, by route prefix, pool, upstream server (\"none\" when no server was tried) and status class.",
        );
        for s in self.requests.series() {
            let [route, pool, server] = s.labels();
            for (i, c) in CLASSES.iter().enumerate() {
                let n = s.value.0[i].load(Relaxed);
                if n > 0 {
                    sample(
                        o,
                        "ragfleet_gateway_requests_total",
                        &["route", "pool", "server", "code"],
                        &[route, pool, server, c],
                        n,
                    );
                }
            }
        }

        let routes = self.routes.series();
        header(
            o,
            "ragfleet_gateway_response_headers_seconds",
            "histogram",
            "Time from request received to response headers ready for the client.",
        );
        for s in &routes {
            histogram(
                o,
                "ragfleet_gateway_response_headers_seconds",
                &["route", "pool"],
                &s.labels(),
                &s.value.headers,
            );
        }
        header(
            o,
            "ragfleet_gateway_request_duration_seconds",
            "histogram",
            "Time from request received to the last response byte (tunnels: until closed).",
        );
        for s in &routes {
            histogram(
                o,
                "ragfleet_gateway_request_duration_seconds",
                &["route", "pool"],
                &s.labels(),
                &s.value.total,
            );
        }
        header(
            o,
            "ragfleet_gateway_received_bytes_total",
            "counter",
            "Request body bytes received from clients (tunnels: client to upstream).",
        );
        for s in &routes {
            let v = s.value.bytes_in.load(Relaxed);
            sample(
                o,
                "ragfleet_gateway_received_bytes_total",
                &["route", "pool"],
                &s.labels(),
                v,
            );
        }
        header(
            o,
            "ragfleet_gateway_sent_bytes_total",
            "counter",
            "Response body bytes sent to clients (tunnels: upstream to client).",
        );
        for s in &routes {
            let v = s.value.bytes_out.load(Relaxed);
            sample(
                o,
                "ragfleet_gateway_sent_bytes_total",
                &["route", "pool"],
                &s.labels(),
                v,
            );
        }

        header(
            o,
            "ragfleet_gateway_requests_in_flight",
            "gauge",
            "Requests being handled now (an open WebSocket tunnel counts until it closes).",
        );
        sample(
            o,
            "ragfleet_gateway_requests_in_flight",
            &[],
            &[],
            self.in_flight.load(Relaxed),
        );
        header(
            o,
            "ragfleet_gateway_websockets_open",
            "gauge",
            "Open WebSocket tunnels.",
        );
        for s in self.websockets.series() {
            sample(
                o,
                "ragfleet_gateway_websockets_open",
                &["pool"],
                &s.labels(),
                s.value.load(Relaxed),
            );
        }
        header(
            o,
            "ragfleet_gateway_streams_open",
            "gauge",
            "Open server-sent event streams (text/event-stream responses).",
        );
        for s in self.streams.series() {
            sample(
                o,
                "ragfleet_gateway_streams_open",
                &["pool"],
                &s.labels(),
                s.value.load(Relaxed),
            );
        }
        header(
            o,
            "ragfleet_gateway_retries_total",
            "counter",
            "Attempts on another server after a failed one.",
        );
        for s in self.retries.series() {
            sample(
                o,
                "ragfleet_gateway_retries_total",
                &["pool"],
                &s.labels(),
                s.value.load(Relaxed),
            );
        }

        self.render_servers(o, rt);

        header(
            o,
            "ragfleet_gateway_config_reloads_total",
            "counter",
            "Configuration reloads, by result (success or failure).",
        );
        let ok = self.reloads_ok.load(Relaxed);
        let failed = self.reloads_failed.load(Relaxed);
        sample(
            o,
            "ragfleet_gateway_config_reloads_total",
            &["result"],
            &["success"],
            ok,
        );
        sample(
            o,
            "ragfleet_gateway_config_reloads_total",
            &["result"],
            &["failure"],
            failed,
        );
        header(
            o,
            "ragfleet_gateway_config_last_reload_successful",
            "gauge",
            "1 if the last reload attempt succeeded (or none was made), 0 if it was rejected.",
        );
        let last_ok = self.last_reload_ok.load(Relaxed) || ok + failed == 0;
        sample(
            o,
            "ragfleet_gateway_config_last_reload_successful",
            &[],
            &[],
            u8::from(last_ok),
        );
        header(
            o,
            "ragfleet_gateway_config_last_reload_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful reload (0 = none yet).",
        );
        sample(
            o,
            "ragfleet_gateway_config_last_reload_success_timestamp_seconds",
            &[],
            &[],
            self.last_reload_ok_at.load(Relaxed),
        );

        header(
            o,
            "ragfleet_gateway_discovery_lookups_total",
            "counter",
            "Discovery lookups (DNS resolutions, etcd listings and watch events), by result.",
        );
        for s in self.discovery.series() {
            sample(
                o,
                "ragfleet_gateway_discovery_lookups_total",
                &["pool", "source", "result"],
                &s.labels(),
                s.value.load(Relaxed),
            );
        }
        header(
            o,
            "ragfleet_gateway_discovery_servers",
            "gauge",
            "Servers a discovery source currently reports.",
        );
        for s in self.discovered.series() {
            sample(
                o,
                "ragfleet_gateway_discovery_servers",
                &["pool", "source"],
                &s.labels(),
                s.value.load(Relaxed),
            );
        }

        // Edge metrics (TLS handshakes failed, rate-limited requests, Redis
        // fallbacks, limit_conn refusals) are rendered here by the sources
        // registered with `Metrics::add_source`.
        if let Ok(extra) = self.extra.lock() {
            for f in extra.iter() {
                f(o);
            }
        }
        out
    }

    /// Per-server gauges, read from the live runtime.
    fn render_servers(&self, o: &mut String, rt: &Runtime) {
        let names = ["pool", "server"];
        let servers: Vec<(String, crate::upstream::pool::ServerSnapshot, f64)> = rt
            .pools()
            .values()
            .flat_map(|p| {
                p.servers()
                    .into_iter()
                    .map(|s| (p.name().to_string(), s.snapshot(), s.load()))
                    .collect::<Vec<_>>()
            })
            .collect();
        header(
            o,
            "ragfleet_gateway_pool_servers",
            "gauge",
            "Servers in a pool (static and discovered).",
        );
        for (name, pool) in rt.pools() {
            sample(
                o,
                "ragfleet_gateway_pool_servers",
                &["pool"],
                &[name],
                pool.servers().len(),
            );
        }
        header(
            o,
            "ragfleet_gateway_server_up",
            "gauge",
            "Health of a server: check=\"passive\" (max_fails/fail_timeout) or \"active\" (health checks); 1 = up.",
        );
        for (pool, s, _) in &servers {
            let n = ["pool", "server", "check"];
            sample(
                o,
                "ragfleet_gateway_server_up",
                &n,
                &[pool, &s.addr, "passive"],
                u8::from(!s.passive_down),
            );
            sample(
                o,
                "ragfleet_gateway_server_up",
                &n,
                &[pool, &s.addr, "active"],
                u8::from(s.active_up),
            );
        }
        let gauges: [(&str, &str, ServerGauge); 6] = [
            (
                "ragfleet_gateway_server_available",
                "1 if the server takes new requests (up for both checks and not drained).",
                |s, _| f64::from(u8::from(!s.passive_down && s.active_up && !s.drained)),
            ),
            (
                "ragfleet_gateway_server_drained",
                "1 if the server is drained through the admin API.",
                |s, _| f64::from(u8::from(s.drained)),
            ),
            (
                "ragfleet_gateway_server_in_flight",
                "Requests (and tunnels) in flight on the server.",
                |s, _| s.inflight as f64,
            ),
            (
                "ragfleet_gateway_server_weight",
                "Current weight of the server.",
                |s, _| f64::from(s.weight),
            ),
            (
                "ragfleet_gateway_server_latency_ewma_seconds",
                "Peak-EWMA time to response headers (p2c).",
                |s, _| s.ewma_ms / 1e3,
            ),
            (
                "ragfleet_gateway_server_load",
                "Load the server reports in its health response (0 = idle; see docs/gateway.md).",
                |_, l| l,
            ),
        ];
        for (name, help, f) in gauges {
            header(o, name, "gauge", help);
            for (pool, s, load) in &servers {
                sample(o, name, &names, &[pool, &s.addr], f(s, *load));
            }
        }
        header(
            o,
            "ragfleet_gateway_server_failures_total",
            "counter",
            "Failed attempts on the server (what fail_on counts), since it joined the pool.",
        );
        for (pool, s, _) in &servers {
            sample(
                o,
                "ragfleet_gateway_server_failures_total",
                &names,
                &[pool, &s.addr],
                s.failures,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_le() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(2));
        h.observe(Duration::from_secs(2000));
        assert_eq!(h.buckets[0].load(Relaxed), 1);
        assert_eq!(h.buckets[1].load(Relaxed), 1);
        assert_eq!(h.count(), 3);
        let mut out = String::new();
        histogram(&mut out, "x", &["a"], &["b"], &h);
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"900\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
    }

    #[test]
    fn label_values_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(esc("plain"), "plain");
    }

    #[test]
    fn family_overflow_folds_into_other() {
        let f: Family<AtomicU64, 2> = Family::default();
        for i in 0..MAX_SERIES + 10 {
            f.get(["p", &format!("s{i}")], Some(1))
                .value
                .fetch_add(1, Relaxed);
        }
        let all = f.series();
        assert_eq!(all.len(), MAX_SERIES + 1);
        let other = all.iter().find(|s| s.labels()[1] == "other").unwrap();
        assert_eq!(other.value.load(Relaxed), 10);
    }
}
