//! Request rate limits (as nginx `limit_req ... nodelay`) and connection
//! limits per client address (as `limit_conn`).
//!
//! Rate limits are GCRA: a rule `rate = "10r/s", burst = 20` lets a client
//! send 21 requests at once and then one every 100 ms; a request over the
//! limit gets 429 with `Retry-After`. Each rule is checked locally (governor,
//! one state per key) or, with `redis_url`, in Redis by one Lua script for
//! all the rules a request meets (atomic, all-or-nothing, Redis's clock), so
//! several gateways enforce one limit together. If Redis cannot answer in
//! `redis_timeout`, the gateway falls back to its local limiter, logs it once,
//! shows it in [`RateLimiter::redis_fallback_active`], probes Redis every
//! `redis_retry_interval` and goes back to the shared limit when it answers.
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use http::HeaderMap;

use crate::base::config::limits::rule_name;
pub use crate::base::config::limits::{Rate, RateKey, RateLimitConfig, RateRule};

/// A request over a limit.
#[derive(Debug, Clone)]
pub struct Denied {
    /// The rule that refused it (the one with the longest wait).
    pub rule: String,
    /// When the request would have been allowed.
    pub retry_after: Duration,
}

struct Rule {
    name: String,
    key: RateKey,
    prefix: Option<String>,
    /// GCRA emission interval and burst tolerance, in microseconds.
    interval_us: u64,
    tolerance_us: u64,
    local: DefaultKeyedRateLimiter<String>,
}

/// Counters that outlive a limiter replaced on reload.
#[derive(Debug, Default)]
struct Stats {
    limited: AtomicU64,
    redis_errors: AtomicU64,
    redis_fallbacks: AtomicU64,
}

/// The rate limiter of a gateway: rules, local state, optional Redis.
pub struct RateLimiter {
    rules: Vec<Rule>,
    redis: Option<Arc<RedisShared>>,
    clock: DefaultClock,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("rules", &self.rules.len())
            .field("limited", &self.rate_limited())
            .field("redis_fallback_active", &self.redis_fallback_active())
            .finish()
    }
}

/// GCRA over every key of a request in one atomic step, on Redis's clock.
/// KEYS: one per rule; ARGV: interval and tolerance (µs) per rule. Returns
/// {0, 0} when allowed (and then every key is updated), or {wait µs, index}
/// of the rule with the longest wait (and nothing is updated).
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait, worst = 0, 0
local tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  local allow_at = tat - tolerance
  if now < allow_at and allow_at - now > wait then
    wait = allow_at - now
    worst = i
  end
  tats[i] = tat + interval
end
if wait > 0 then return {wait, worst} end
for i = 1, #KEYS do
  local ttl = math.ceil((tats[i] - now) / 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
end
return {0, 0}
"#;

struct RedisShared {
    client: redis::Client,
    conn: Mutex<Option<redis::aio::ConnectionManager>>,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    retry_interval: Duration,
    fallback: AtomicBool,
    stats: Arc<Stats>,
}

impl RedisShared {
    fn manager_config(&self) -> redis::aio::ConnectionManagerConfig {
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(self.retry_interval)
    }

    /// The connection manager, created on first use.
    async fn conn(&self) -> redis::RedisResult<redis::aio::ConnectionManager> {
        let existing = self.conn.lock().ok().and_then(|c| c.clone());
        if let Some(c) = existing {
            return Ok(c);
        }
        let c = redis::aio::ConnectionManager::new_with_config(
            self.client.clone(),
            self.manager_config(),
        )
        .await?;
        if let Ok(mut slot) = self.conn.lock() {
            *slot = Some(c.clone());
        }
        Ok(c)
    }

    async fn ping(&self) -> Result<(), String> {
        let fut = async {
            let mut c = self.conn().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Switch to the local limiter (once per outage) and start probing.
    fn enter_fallback(self: &Arc<Self>, why: &str) {
        self.stats.redis_errors.fetch_add(1, Relaxed);
        if self
            .fallback
            .compare_exchange(false, true, Relaxed, Relaxed)
            .is_ok()
        {
            self.stats.redis_fallbacks.fetch_add(1, Relaxed);
            tracing::warn!(
                "rate limit: Redis unreachable ({why}); enforcing limits locally until it answers again"
            );
            let weak = Arc::downgrade(self);
            tokio::spawn(probe(weak));
        }
    }
}

/// While in fallback: ping Redis every `retry_interval`; leave fallback when
/// it answers. Ends when the limiter is dropped.
async fn probe(weak: Weak<RedisShared>) {
    loop {
        let interval = match weak.upgrade() {
            Some(r) => r.retry_interval,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(r) = weak.upgrade() else { return };
        match r.ping().await {
            Ok(()) => {
                r.fallback.store(false, Relaxed);
                tracing::warn!("rate limit: Redis answers again; shared limits restored");
                return;
            }
            Err(e) => tracing::debug!("rate limit: Redis still unreachable: {e}"),
        }
    }
}

/// Drop idle keys from the local limiters now and then.
async fn sweep(weak: Weak<RateLimiter>) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let Some(l) = weak.upgrade() else { return };
        for r in &l.rules {
            r.local.retain_recent();
            r.local.shrink_to_fit();
        }
    }
}

impl RateLimiter {
    /// Build the limiter; with Redis configured, connect (bounded by
    /// `redis_timeout`) — if that fails, start on the local fallback.
    pub async fn new(cfg: &RateLimitConfig) -> Arc<RateLimiter> {
        Self::with_stats(cfg, Arc::default()).await
    }

    /// A limiter for a new configuration that keeps `old`'s counters (a
    /// reload). Local state starts afresh; shared state stays in Redis.
    pub async fn replacing(cfg: &RateLimitConfig, old: &RateLimiter) -> Arc<RateLimiter> {
        Self::with_stats(cfg, old.stats.clone()).await
    }

    async fn with_stats(cfg: &RateLimitConfig, stats: Arc<Stats>) -> Arc<RateLimiter> {
        let rules = cfg
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let interval = r.rate.interval();
                let capacity =
                    NonZeroU32::new(r.burst.saturating_add(1)).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::with_period(interval)
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                    .allow_burst(capacity);
                let interval_us = interval.as_micros().max(1) as u64;
                Rule {
                    name: rule_name(r, i),
                    key: r.key.clone(),
                    prefix: r.prefix.clone(),
                    interval_us,
                    tolerance_us: interval_us.saturating_mul(r.burst as u64),
                    local: governor::RateLimiter::keyed(quota),
                }
            })
            .collect::<Vec<_>>();
        let redis = match (&cfg.redis_url, rules.is_empty()) {
            (Some(url), false) => match redis::Client::open(url.as_str()) {
                Ok(client) => Some(Arc::new(RedisShared {
                    client,
                    conn: Mutex::new(None),
                    script: redis::Script::new(GCRA_LUA),
                    prefix: cfg.redis_prefix.clone(),
                    timeout: cfg.redis_timeout.0,
                    retry_interval: cfg.redis_retry_interval.0,
                    fallback: AtomicBool::new(false),
                    stats: stats.clone(),
                })),
                Err(e) => {
                    tracing::warn!("rate limit: bad redis_url {url:?}: {e}; limits are local");
                    None
                }
            },
            _ => None,
        };
        if let Some(r) = &redis {
            match r.ping().await {
                Ok(()) => tracing::info!("rate limit: shared through Redis"),
                Err(e) => r.enter_fallback(&e),
            }
        }
        let limiter = Arc::new(RateLimiter {
            rules,
            redis,
            clock: DefaultClock::default(),
            stats,
        });
        if !limiter.rules.is_empty() {
            tokio::spawn(sweep(Arc::downgrade(&limiter)));
        }
        limiter
    }

    /// Requests refused with 429 so far.
    pub fn rate_limited(&self) -> u64 {
        self.stats.limited.load(Relaxed)
    }

    /// True while Redis is configured but unreachable and limits are
    /// enforced by this instance alone.
    pub fn redis_fallback_active(&self) -> bool {
        self.redis
            .as_ref()
            .is_some_and(|r| r.fallback.load(Relaxed))
    }

    /// Redis calls that failed or timed out.
    pub fn redis_errors(&self) -> u64 {
        self.stats.redis_errors.load(Relaxed)
    }

    /// Times the limiter switched to the local fallback.
    pub fn redis_fallbacks(&self) -> u64 {
        self.stats.redis_fallbacks.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Check (and count) a request against every rule it meets.
    pub(crate) async fn check(
        &self,
        client: IpAddr,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), Denied> {
        if self.rules.is_empty() {
            return Ok(());
        }
        let mut hits: Vec<(&Rule, String)> = Vec::new();
        for r in &self.rules {
            if r.prefix.as_deref().is_some_and(|p| !path.starts_with(p)) {
                continue;
            }
            let key = match &r.key {
                RateKey::ClientIp => client.to_string(),
                RateKey::Header(h) => match headers.get(h) {
                    // Keys are hashed: API keys never reach Redis in clear.
                    Some(v) => format!("h{:016x}", crate::base::hash::hash64(&[v.as_bytes()])),
                    None => continue,
                },
            };
            hits.push((r, key));
        }
        if hits.is_empty() {
            return Ok(());
        }
        let verdict = match &self.redis {
            Some(redis) if !redis.fallback.load(Relaxed) => {
                match self.check_redis(redis, &hits).await {
                    Ok(v) => v,
                    Err(e) => {
                        redis.enter_fallback(&e);
                        self.check_local(&hits)
                    }
                }
            }
            _ => self.check_local(&hits),
        };
        if verdict.is_err() {
            self.stats.limited.fetch_add(1, Relaxed);
        }
        verdict
    }

    fn check_local(&self, hits: &[(&Rule, String)]) -> Result<(), Denied> {
        let mut worst: Option<Denied> = None;
        for (r, key) in hits {
            if let Err(not_until) = r.local.check_key(key) {
                let wait = not_until.wait_time_from(self.clock.now());
                if worst.as_ref().is_none_or(|w| wait > w.retry_after) {
                    worst = Some(Denied {
                        rule: r.name.clone(),
                        retry_after: wait,
                    });
                }
            }
        }
        worst.map_or(Ok(()), Err)
    }

    async fn check_redis(
        &self,
        redis: &Arc<RedisShared>,
        hits: &[(&Rule, String)],
    ) -> Result<Result<(), Denied>, String> {
        let mut inv = redis.script.prepare_invoke();
        for (r, key) in hits {
            inv.key(format!("{}{}:{}", redis.prefix, r.name, key));
            inv.arg(r.interval_us).arg(r.tolerance_us);
        }
        let fut = async {
            let mut c = redis.conn().await?;
            inv.invoke_async::<(i64, i64)>(&mut c).await
        };
        let (wait_us, idx) = match tokio::time::timeout(redis.timeout, fut).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {:?}", redis.timeout)),
        };
        if wait_us <= 0 {
            return Ok(Ok(()));
        }
        let rule = usize::try_from(idx - 1)
            .ok()
            .and_then(|i| hits.get(i))
            .map_or_else(String::new, |(r, _)| r.name.clone());
        Ok(Err(Denied {
            rule,
            retry_after: Duration::from_micros(wait_us as u64),
        }))
    }
}

/// Open connections per client address (`listen.max_connections_per_ip`).
#[derive(Debug)]
pub struct ConnLimiter {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
    refused: AtomicU64,
}

/// Held for the life of a connection (WebSocket tunnel included).
#[derive(Debug)]
pub(crate) struct ConnGuard {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Ok(mut open) = self.limiter.open.lock() {
            if let Some(n) = open.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&self.ip);
                }
            }
        }
    }
}

impl ConnLimiter {
    pub fn new(max: u32) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            max,
            open: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        })
    }

    /// A slot for a new connection from `ip`; `Err(())` if it has too many
    /// (counted in [`ConnLimiter::refused`]). `Ok(None)` when unlimited.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Option<ConnGuard>, ()> {
        if self.max == 0 {
            return Ok(None);
        }
        let Ok(mut open) = self.open.lock() else {
            return Ok(None);
        };
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            drop(open);
            self.refused.fetch_add(1, Relaxed);
            return Err(());
        }
        *n += 1;
        Ok(Some(ConnGuard {
            limiter: self.clone(),
            ip,
        }))
    }

    /// Connections refused because their address had too many open.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    /// Connections currently open from `ip` (0 when unlimited: not tracked).
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        self.open
            .lock()
            .ok()
            .and_then(|o| o.get(&ip).copied())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    #[test]
    fn rates() {
        let r: Rate = "10r/s".parse().unwrap();
        assert_eq!(r.interval(), Duration::from_millis(100));
        let r: Rate = "600r/m".parse().unwrap();
        assert_eq!(r.interval(), Duration::from_millis(100));
        let r: Rate = "2r/h".parse().unwrap();
        assert_eq!(r.interval(), Duration::from_secs(1800));
        assert!("0r/s".parse::<Rate>().is_err());
        assert!("10/s".parse::<Rate>().is_err());
        assert!("10r/d".parse::<Rate>().is_err());
        assert!("xr/s".parse::<Rate>().is_err());
    }

    #[test]
    fn keys() {
        assert_eq!("client_ip".parse::<RateKey>().unwrap(), RateKey::ClientIp);
        assert_eq!(
            "header:X-Api-Key".parse::<RateKey>().unwrap(),
            RateKey::Header(HeaderName::from_static("x-api-key"))
        );
        assert!("header:".parse::<RateKey>().is_err());
        assert!("cookie:a".parse::<RateKey>().is_err());
    }

    #[test]
    fn conn_limit_counts_and_releases() {
        let l = ConnLimiter::new(2);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let a = l.acquire(ip).unwrap();
        let b = l.acquire(ip).unwrap();
        assert!(l.acquire(ip).is_err());
        assert_eq!(l.refused(), 1);
        assert_eq!(l.open_from(ip), 2);
        drop(a);
        let c = l.acquire(ip).unwrap();
        drop((b, c));
        assert_eq!(l.open_from(ip), 0);
    }

    #[tokio::test]
    async fn local_gcra_burst_then_wait() {
        let cfg: RateLimitConfig =
            toml::from_str("[[rule]]\nkey = \"client_ip\"\nrate = \"1r/m\"\nburst = 2\n").unwrap();
        let l = RateLimiter::new(&cfg).await;
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let h = HeaderMap::new();
        for _ in 0..3 {
            assert!(l.check(ip, "/", &h).await.is_ok());
        }
        let d = l.check(ip, "/", &h).await.unwrap_err();
        assert_eq!(d.rule, "rule0");
        assert!(
            d.retry_after > Duration::from_secs(50) && d.retry_after <= Duration::from_secs(60)
        );
        // Another key has its own budget.
        assert!(l.check("10.0.0.2".parse().unwrap(), "/", &h).await.is_ok());
        assert_eq!(l.rate_limited(), 1);
        // A reload with a looser rule: fresh local state, counters kept.
        let cfg2: RateLimitConfig =
            toml::from_str("[[rule]]\nkey = \"client_ip\"\nrate = \"1r/m\"\nburst = 5\n").unwrap();
        let l2 = RateLimiter::replacing(&cfg2, &l).await;
        for _ in 0..6 {
            assert!(l2.check(ip, "/", &h).await.is_ok());
        }
        assert!(l2.check(ip, "/", &h).await.is_err());
        assert_eq!(l2.rate_limited(), 2);
    }
}
