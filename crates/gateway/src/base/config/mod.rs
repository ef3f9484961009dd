//! Gateway configuration: a strict TOML file (unknown keys are errors) or the
//! equivalent built from command-line flags. Every key and its default is
//! documented in docs/gateway.md.
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::header::HeaderName;
use http::uri::Authority;
use serde::{Deserialize, Deserializer};

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod discovery;
pub mod limits;
pub mod reload;
pub mod tls;

/// A configuration that could not be read, parsed or validated. The message
/// names the file and the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: `{key}`: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

/// A duration written the human way: "250ms", "5s", "2m", "1h", "1m30s", "0".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Dur {
    pub const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Dur {
        Dur(Duration::from_millis(ms))
    }
}

/// Parse "250ms", "5s", "1m30s", "2h", "0". Units: ms, s, m, h.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err("empty duration (write e.g. \"5s\" or \"250ms\")".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "bad duration {s:?} (write e.g. \"5s\" or \"250ms\")"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("bad duration {s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "" => return Err(format!("bad duration {s:?}: missing unit (ms, s, m or h)")),
            other => {
                return Err(format!(
                    "bad duration {s:?}: unknown unit {other:?} (use ms, s, m or h)"
                ))
            }
        };
        total = total.saturating_add(d);
    }
    Ok(total)
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// A size in bytes, written as an integer or as "32KiB", "10MiB", "1GiB".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Debug)]
pub struct Size(pub u64);

/// Parse "4096", "512B", "32KiB", "10MiB", "1GiB".
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return Err(format!(
            "bad size {s:?} (write e.g. 4096, \"32KiB\" or \"10MiB\")"
        ));
    }
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| format!("bad size {s:?}: number too large"))?;
    let mult: u64 = match t[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "bad size {s:?}: unknown unit {other:?} (use B, KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("bad size {s:?}: too large"))
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a size: bytes as an integer, or a string such as \"32KiB\" or \"10MiB\"",
                )
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom(format!("bad size {n}: must be >= 0")))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Size, E> {
                parse_size(s).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
    #[serde(default, rename = "pool")]
    pub pools: BTreeMap<String, PoolConfig>,
    /// TLS termination on `listen.addr` (absent = plain HTTP).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Request rate limits (local, optionally shared through Redis).
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Admin listener (metrics, admin API); absent = no admin listener.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub access_log: AccessLogConfig,
    #[serde(default)]
    pub reload: ReloadConfig,
    /// What a request must carry before it is forwarded.
    #[serde(default)]
    pub auth: AuthConfig,
}

pub use access_log::{AccessLogConfig, AccessLogFormat};
pub use admin::AdminConfig;
pub use auth::AuthConfig;
pub use discovery::{AddrFamily, DiscoveryConfig, DnsDiscovery, EtcdDiscovery};
pub use limits::{Rate, RateKey, RateLimitConfig, RateRule};
pub use reload::ReloadConfig;
pub use tls::{CertConfig, RedirectConfig, TlsConfig, TlsError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// Address to accept client connections on.
    pub addr: SocketAddr,
    /// Worker threads (0 = one per CPU core).
    pub workers: usize,
    /// How long in-flight requests, streams and tunnels may run after
    /// SIGTERM/SIGINT before they are cut.
    pub shutdown_timeout: Dur,
    /// Time allowed for a client to send a request's headers, counted from
    /// the connection's start or the request's first byte (slowloris).
    pub header_read_timeout: Dur,
    /// Value of X-Forwarded-Proto sent upstream (default: "https" with
    /// `[tls]`, "http" without).
    pub forwarded_proto: Option<String>,
    /// A client connection with no request in progress is closed after
    /// this long ("0" = never).
    pub keepalive_timeout: Dur,
    /// A write to a client that makes no progress for this long (the
    /// client stopped reading) closes the connection ("0" = never).
    pub send_timeout: Dur,
    /// A request body that gets no bytes from the client for this long is
    /// refused with 408 and the connection closed; the upstream is not
    /// blamed ("0" = never; nginx's `client_body_timeout`).
    pub client_body_timeout: Dur,
    /// Largest request body accepted (413 beyond; 0 = no limit).
    pub max_body_size: Size,
    /// Largest request head (request line + headers) accepted (431 beyond).
    pub max_header_size: Size,
    /// Open connections allowed per client address (0 = no limit).
    pub max_connections_per_ip: u32,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            shutdown_timeout: Dur::secs(30),
            header_read_timeout: Dur::secs(10),
            forwarded_proto: None,
            keepalive_timeout: Dur::secs(75),
            send_timeout: Dur::secs(60),
            client_body_timeout: Dur::secs(60),
            max_body_size: Size(64 << 20),
            max_header_size: Size(32 << 10),
            max_connections_per_ip: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Path prefix; the longest matching prefix wins.
    pub prefix: String,
    /// Name of the pool (a `[pool.NAME]` table).
    pub pool: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    RoundRobin,
    LeastConn,
    IpHash,
    Hash,
    P2c,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "round_robin" => Policy::RoundRobin,
            "least_conn" => Policy::LeastConn,
            "ip_hash" => Policy::IpHash,
            "hash" => Policy::Hash,
            "p2c" => Policy::P2c,
            _ => {
                return Err(format!(
                    "unknown policy {s:?} (round_robin, least_conn, ip_hash, hash or p2c)"
                ))
            }
        })
    }
}

/// What counts as a failure (passive health) or a reason to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailKind {
    /// The TCP connection could not be established.
    Connect,
    /// The connection broke while sending the request or reading the headers.
    Error,
    /// No response headers within `timeouts.response_headers`.
    Timeout,
    #[serde(rename = "http_500")]
    Http500,
    #[serde(rename = "http_502")]
    Http502,
    #[serde(rename = "http_503")]
    Http503,
    #[serde(rename = "http_504")]
    Http504,
}

impl FailKind {
    pub fn from_status(status: u16) -> Option<FailKind> {
        match status {
            500 => Some(FailKind::Http500),
            502 => Some(FailKind::Http502),
            503 => Some(FailKind::Http503),
            504 => Some(FailKind::Http504),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMode {
    /// Send the client's Host header upstream.
    Pass,
    /// Send the upstream server's address as Host.
    Upstream,
}

/// Where the `hash` policy takes its key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(HeaderName),
    Cookie(String),
    Query(String),
}

impl std::str::FromStr for HashKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = s.split_once(':').ok_or_else(|| {
            format!("bad hash key {s:?} (write header:NAME, cookie:NAME or query:NAME)")
        })?;
        if name.is_empty() {
            return Err(format!("bad hash key {s:?}: empty name"));
        }
        match kind {
            "header" => HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("bad hash key {s:?}: invalid header name")),
            "cookie" => Ok(HashKey::Cookie(name.to_string())),
            "query" => Ok(HashKey::Query(name.to_string())),
            _ => Err(format!(
                "bad hash key {s:?} (write header:NAME, cookie:NAME or query:NAME)"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for HashKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// host:port of the upstream server.
    pub addr: String,
    #[serde(default = "one")]
    pub weight: u32,
    /// A backup server takes traffic only while every primary is down.
    #[serde(default)]
    pub backup: bool,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HashConfig {
    pub key: Option<HashKey>,
    /// Bounded loads: no server gets more than `load_factor` × the average
    /// in-flight load (weighted). Must be >= 1.
    pub load_factor: f64,
}

impl Default for HashConfig {
    fn default() -> Self {
        HashConfig {
            key: None,
            load_factor: 1.25,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub enabled: bool,
    pub path: String,
    pub interval: Dur,
    pub timeout: Dur,
    /// Consecutive successful checks that bring a down server back.
    pub rise: u32,
    /// Consecutive failed checks that take an up server out.
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            path: "/health".into(),
            interval: Dur::secs(5),
            timeout: Dur::secs(2),
            rise: 2,
            fall: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per request in total (1 = never retry).
    pub tries: u32,
    /// Conditions that move a request to the next server.
    pub on: Vec<FailKind>,
    /// Each request adds this many retry tokens; a retry spends one.
    pub budget_ratio: f64,
    /// Retry tokens added per second regardless of traffic.
    pub budget_min_per_sec: f64,
    /// Request bodies up to this size (bytes) are buffered so they can be
    /// replayed on retry; larger or chunked bodies stream and are not retried.
    pub max_body_buffer: u64,
    /// Also retry non-idempotent requests (POST, PATCH) after errors where
    /// the upstream may have received them (nginx's `proxy_next_upstream
    /// non_idempotent`) — still only before any response byte went to the
    /// client. Off by default: a retried POST may be processed twice.
    pub non_idempotent: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            tries: 3,
            on: vec![
                FailKind::Connect,
                FailKind::Error,
                FailKind::Timeout,
                FailKind::Http502,
                FailKind::Http503,
                FailKind::Http504,
            ],
            budget_ratio: 0.2,
            budget_min_per_sec: 10.0,
            max_body_buffer: 1 << 20,
            non_idempotent: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub connect: Dur,
    /// From request sent to response headers received.
    pub response_headers: Dur,
    /// Longest silence between two chunks of a response body.
    pub body_idle: Dur,
    /// Optional cap on the whole response ("0" = none).
    pub total: Dur,
    /// Longest silence (both directions) on a WebSocket tunnel.
    pub websocket_idle: Dur,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Dur::secs(5),
            response_headers: Dur::secs(60),
            body_idle: Dur::secs(60),
            total: Dur(Duration::ZERO),
            websocket_idle: Dur::secs(600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default = "default_policy")]
    pub policy: Policy,
    /// Static servers; may be empty when `discovery` finds them.
    #[serde(default)]
    pub servers: Vec<ServerConfig>,
    #[serde(default = "one")]
    pub max_fails: u32,
    #[serde(default = "default_fail_timeout")]
    pub fail_timeout: Dur,
    #[serde(default = "default_fail_on")]
    pub fail_on: Vec<FailKind>,
    #[serde(default)]
    pub slow_start: Dur,
    #[serde(default = "default_host")]
    pub host: HostMode,
    #[serde(default)]
    pub hash: HashConfig,
    #[serde(default)]
    pub health: Option<HealthConfig>,
    #[serde(default)]
    pub retries: RetryConfig,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Idle keep-alive connections kept per upstream server.
    #[serde(default = "default_keepalive")]
    pub keepalive: usize,
    /// How long an idle upstream connection is kept.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: Dur,
    /// p2c: how strongly a server's reported load (health response) raises
    /// its cost: cost × (1 + load_weight × load). 0 = ignore reported load.
    #[serde(default = "default_load_weight")]
    pub load_weight: f64,
    /// Servers found at runtime (DNS, etcd), merged with `servers`.
    #[serde(default)]
    pub discovery: DiscoveryConfig,
}

fn default_load_weight() -> f64 {
    1.0
}

fn default_policy() -> Policy {
    Policy::P2c
}
fn default_fail_timeout() -> Dur {
    Dur::secs(10)
}
fn default_fail_on() -> Vec<FailKind> {
    vec![FailKind::Connect, FailKind::Error, FailKind::Timeout]
}
fn default_host() -> HostMode {
    HostMode::Pass
}
fn default_keepalive() -> usize {
    128
}
fn default_keepalive_timeout() -> Dur {
    Dur::secs(60)
}

impl PoolConfig {
    /// A pool with every default and the given servers.
    pub fn with_servers(servers: Vec<ServerConfig>) -> PoolConfig {
        PoolConfig {
            policy: default_policy(),
            servers,
            max_fails: 1,
            fail_timeout: default_fail_timeout(),
            fail_on: default_fail_on(),
            slow_start: Dur::default(),
            host: default_host(),
            hash: HashConfig::default(),
            health: None,
            retries: RetryConfig::default(),
            timeouts: Timeouts::default(),
            keepalive: default_keepalive(),
            keepalive_timeout: default_keepalive_timeout(),
            load_weight: default_load_weight(),
            discovery: DiscoveryConfig::default(),
        }
    }
}

impl ServerConfig {
    pub fn new(addr: impl Into<String>) -> ServerConfig {
        ServerConfig {
            addr: addr.into(),
            weight: 1,
            backup: false,
        }
    }

    /// Parse a command-line upstream: `ADDR[,weight=N][,backup]`.
    pub fn parse_flag(s: &str) -> Result<ServerConfig, String> {
        let mut parts = s.split(',');
        let addr = parts.next().unwrap_or_default().trim();
        let mut server = ServerConfig::new(addr);
        for opt in parts {
            let opt = opt.trim();
            if opt == "backup" {
                server.backup = true;
            } else if let Some(w) = opt.strip_prefix("weight=") {
                server.weight = w
                    .parse()
                    .map_err(|_| format!("upstream {s:?}: bad weight {w:?}"))?;
            } else {
                return Err(format!(
                    "upstream {s:?}: unknown option {opt:?} (weight=N or backup)"
                ));
            }
        }
        Ok(server)
    }
}

impl Config {
    /// Read, parse and validate a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Config::parse(&text, &file)
    }

    /// Parse and validate TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// The configuration `ragfleet gateway --listen A --upstream B ...` means:
    /// one pool `default` routed at `/`.
    pub fn from_flags(
        listen: Option<SocketAddr>,
        upstreams: &[String],
        policy: Option<&str>,
        hash_key: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let file = "command line";
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.into(),
            key: key.into(),
            message,
        };
        let mut servers = Vec::new();
        for u in upstreams {
            servers.push(ServerConfig::parse_flag(u).map_err(|m| invalid("--upstream", m))?);
        }
        let mut pool = PoolConfig::with_servers(servers);
        if let Some(p) = policy {
            pool.policy = p.parse().map_err(|m| invalid("--policy", m))?;
        }
        if let Some(k) = hash_key {
            pool.hash.key = Some(k.parse().map_err(|m| invalid("--hash-key", m))?);
            if policy.is_none() {
                pool.policy = Policy::Hash;
            }
        }
        let mut listen_cfg = Listen::default();
        if let Some(l) = listen {
            listen_cfg.addr = l;
        }
        let cfg = Config {
            listen: listen_cfg,
            routes: vec![Route {
                prefix: "/".into(),
                pool: "default".into(),
            }],
            pools: BTreeMap::from([("default".to_string(), pool)]),
            tls: None,
            rate_limit: Default::default(),
            admin: None,
            access_log: AccessLogConfig::default(),
            reload: ReloadConfig::default(),
            auth: AuthConfig::default(),
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Check every cross-field rule; the error names the key.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: String, message: String| {
            Err(ConfigError::Invalid {
                file: file.to_string(),
                key,
                message,
            })
        };
        if self.routes.is_empty() {
            return bad(
                "route".into(),
                "at least one [[route]] is required (e.g. prefix = \"/\")".into(),
            );
        }
        if self
            .listen
            .forwarded_proto
            .as_deref()
            .is_some_and(|p| p.is_empty() || http::HeaderValue::from_str(p).is_err())
        {
            return bad(
                "listen.forwarded_proto".into(),
                "must be a non-empty header value".into(),
            );
        }
        if self.listen.max_header_size.0 < 1024 || self.listen.max_header_size.0 > (1 << 20) {
            return bad(
                "listen.max_header_size".into(),
                format!(
                    "{} is out of range 1KiB..=1MiB",
                    self.listen.max_header_size.0
                ),
            );
        }
        if let Some(tls) = &self.tls {
            tls.validate(file)?;
        }
        self.rate_limit.validate(file)?;
        let mut prefixes = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            if !r.prefix.starts_with('/') {
                return bad(
                    format!("route[{i}].prefix"),
                    format!("{:?} must start with '/'", r.prefix),
                );
            }
            if !prefixes.insert(r.prefix.as_str()) {
                return bad(
                    format!("route[{i}].prefix"),
                    format!("{:?} is routed twice", r.prefix),
                );
            }
            if !self.pools.contains_key(&r.pool) {
                return bad(
                    format!("route[{i}].pool"),
                    format!("no pool named {:?} (define [pool.{}])", r.pool, r.pool),
                );
            }
        }
        for (name, p) in &self.pools {
            let key = |k: &str| format!("pool.{name}.{k}");
            if p.servers.iter().all(|s| s.backup) && !p.discovery.is_enabled() {
                return bad(
                    key("servers"),
                    "needs at least one server that is not a backup (or [discovery])".into(),
                );
            }
            let mut seen = std::collections::HashSet::new();
            for (i, s) in p.servers.iter().enumerate() {
                let sk = format!("pool.{name}.servers[{i}]");
                match s.addr.parse::<Authority>() {
                    Ok(a) if a.port_u16().is_some() && !a.host().is_empty() => {}
                    _ => {
                        return bad(
                            format!("{sk}.addr"),
                            format!("{:?} is not host:port", s.addr),
                        )
                    }
                }
                if !seen.insert(s.addr.as_str()) {
                    return bad(format!("{sk}.addr"), format!("{:?} listed twice", s.addr));
                }
                if s.weight == 0 || s.weight > 1000 {
                    return bad(
                        format!("{sk}.weight"),
                        format!("{} is out of range 1..=1000", s.weight),
                    );
                }
            }
            if p.policy == Policy::Hash && p.hash.key.is_none() {
                return bad(
                    key("hash.key"),
                    "policy \"hash\" needs a key (header:NAME, cookie:NAME or query:NAME)".into(),
                );
            }
            if !(p.hash.load_factor >= 1.0 && p.hash.load_factor.is_finite()) {
                return bad(
                    key("hash.load_factor"),
                    format!("{} must be >= 1.0", p.hash.load_factor),
                );
            }
            if let Some(h) = &p.health {
                if !h.path.starts_with('/') {
                    return bad(
                        key("health.path"),
                        format!("{:?} must start with '/'", h.path),
                    );
                }
                if h.path.parse::<http::uri::PathAndQuery>().is_err() {
                    return bad(
                        key("health.path"),
                        format!("{:?} is not a valid path", h.path),
                    );
                }
                if h.interval.0.is_zero() {
                    return bad(key("health.interval"), "must be > 0".into());
                }
                if h.timeout.0.is_zero() {
                    return bad(key("health.timeout"), "must be > 0".into());
                }
                if h.rise == 0 {
                    return bad(key("health.rise"), "must be >= 1".into());
                }
                if h.fall == 0 {
                    return bad(key("health.fall"), "must be >= 1".into());
                }
            }
            if p.retries.tries == 0 {
                return bad(key("retries.tries"), "must be >= 1".into());
            }
            if !(p.retries.budget_ratio >= 0.0 && p.retries.budget_ratio.is_finite()) {
                return bad(key("retries.budget_ratio"), "must be >= 0".into());
            }
            if !(p.retries.budget_min_per_sec >= 0.0 && p.retries.budget_min_per_sec.is_finite()) {
                return bad(key("retries.budget_min_per_sec"), "must be >= 0".into());
            }
            if p.timeouts.connect.0.is_zero() {
                return bad(key("timeouts.connect"), "must be > 0".into());
            }
            if p.timeouts.response_headers.0.is_zero() {
                return bad(key("timeouts.response_headers"), "must be > 0".into());
            }
            if p.timeouts.body_idle.0.is_zero() {
                return bad(key("timeouts.body_idle"), "must be > 0".into());
            }
            if p.timeouts.websocket_idle.0.is_zero() {
                return bad(key("timeouts.websocket_idle"), "must be > 0".into());
            }
            if !(p.load_weight >= 0.0 && p.load_weight.is_finite()) {
                return bad(
                    key("load_weight"),
                    format!("{} must be >= 0", p.load_weight),
                );
            }
            if let Err((k, m)) = p.discovery.validate() {
                return bad(key(&format!("discovery.{k}")), m);
            }
        }
        if let Some(a) = &self.admin {
            if let Err((k, m)) = a.validate() {
                return bad(format!("admin.{k}"), m);
            }
        }
        if let Err((k, m)) = self.auth.validate() {
            return bad(format!("auth.{k}"), m);
        }
        if self.reload.debounce.0 > Duration::from_secs(60) {
            return bad("reload.debounce".into(), "must be at most 60s".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 sec").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512B").unwrap(), 512);
        assert_eq!(parse_size("32KiB").unwrap(), 32 << 10);
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("10MB").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn hash_keys() {
        assert_eq!(
            "header:X-Conversation-Id".parse::<HashKey>().unwrap(),
            HashKey::Header(HeaderName::from_static("x-conversation-id"))
        );
        assert_eq!(
            "cookie:sid".parse::<HashKey>().unwrap(),
            HashKey::Cookie("sid".into())
        );
        assert_eq!(
            "query:c".parse::<HashKey>().unwrap(),
            HashKey::Query("c".into())
        );
        assert!("body:x".parse::<HashKey>().is_err());
        assert!("header:".parse::<HashKey>().is_err());
    }

    #[test]
    fn upstream_flags() {
        let s = ServerConfig::parse_flag("127.0.0.1:8003,weight=2,backup").unwrap();
        assert_eq!(
            (s.addr.as_str(), s.weight, s.backup),
            ("127.0.0.1:8003", 2, true)
        );
        assert!(ServerConfig::parse_flag("127.0.0.1:8003,weight=x").is_err());
        assert!(ServerConfig::parse_flag("127.0.0.1:8003,fast").is_err());
    }
}
