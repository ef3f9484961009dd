//! Rate limits (local; shared through the real Redis on 127.0.0.1:6379 by
//! two gateways; a Redis of our own stopped mid-test → local fallback and
//! back) and connection limits per client address.
mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn limited_config(up: &Upstream, rate_limit: &str) -> String {
    format!(
        "{}\n{rate_limit}",
        pool_config(&[(up, 1, false)], "round_robin", "")
    )
}

async fn get_h(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    get(gw.addr, path, headers).await
}

fn assert_429(r: &Reply, rule: &str) {
    assert_eq!(r.status, 429, "{r:?}");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(rule),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn local_limit_per_client_then_429_with_retry_after() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&limited_config(
        &up,
        r#"
[[rate_limit.rule]]
name = "per-ip"
key = "client_ip"
rate = "1r/m"
burst = 2
prefix = "/api/"
"#,
    ))
    .await;
    // burst + 1 at once, then refused.
    for i in 0..3 {
        assert_eq!(get_h(&gw, "/api/x", &[]).await.status, 200, "request {i}");
    }
    let r = get_h(&gw, "/api/x", &[]).await;
    assert_429(&r, "per-ip");
    assert!(r.headers.contains_key("x-request-id"));
    // The rule covers /api/ only; and the path is normalised first.
    assert_eq!(get_h(&gw, "/other", &[]).await.status, 200);
    assert_eq!(get_h(&gw, "/other/../api/x", &[]).await.status, 429);
    // Another client address has its own budget.
    let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let res = send_from(
        Some(other),
        gw.addr,
        request("GET", gw.addr, "/api/x", &[], ""),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(gw.handle.rate_limiter().rate_limited(), 2);
    assert_eq!(up.hits(), 5);
}

#[tokio::test]
async fn local_limit_per_api_key_header() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&limited_config(
        &up,
        r#"
[[rate_limit.rule]]
name = "per-key"
key = "header:X-Api-Key"
rate = "1r/m"
burst = 0
"#,
    ))
    .await;
    assert_eq!(get_h(&gw, "/", &[("x-api-key", "k1")]).await.status, 200);
    assert_429(&get_h(&gw, "/", &[("x-api-key", "k1")]).await, "per-key");
    assert_eq!(get_h(&gw, "/", &[("x-api-key", "k2")]).await.status, 200);
    // No key: the rule does not apply.
    for _ in 0..3 {
        assert_eq!(get_h(&gw, "/", &[]).await.status, 200);
    }
}

fn rl_redis(url: &str, prefix: &str, rate: &str, burst: u32) -> String {
    format!(
        r#"
[rate_limit]
redis_url = "{url}"
redis_prefix = "{prefix}"
redis_timeout = "200ms"
redis_retry_interval = "200ms"

[[rate_limit.rule]]
name = "shared"
key = "header:X-Api-Key"
rate = "{rate}"
burst = {burst}
"#
    )
}

async fn redis_keys(url: &str, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn two_gateways_share_one_limit_through_redis() {
    let url = "redis://127.0.0.1:6379";
    let prefix = format!("ragfleet-test:{}:", uuid::Uuid::new_v4());
    let up = Upstream::start("up").await;
    let cfg = limited_config(&up, &rl_redis(url, &prefix, "1r/m", 4));
    let a = TestGateway::start(&cfg).await;
    let b = TestGateway::start(&cfg).await;
    assert!(!a.handle.rate_limiter().redis_fallback_active());
    // 5 allowed in total (burst 4 + 1), whichever gateway takes them.
    let mut ok = 0;
    let mut refused = 0;
    for i in 0..8 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = get_h(gw, "/", &[("x-api-key", "team-1")]).await;
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {
                assert_429(&r, "shared");
                refused += 1
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!((ok, refused), (5, 3));
    // Both refused some: the limit is one, not one per gateway.
    assert!(a.handle.rate_limiter().rate_limited() >= 1);
    assert!(b.handle.rate_limiter().rate_limited() >= 1);
    // The key lives in Redis, hashed (no API key in clear).
    let keys = redis_keys(url, &prefix).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(!keys[0].contains("team-1"));
    assert_eq!(a.handle.rate_limiter().redis_errors(), 0);
}

/// A redis-server of our own on a free port, in a temp dir.
struct OwnRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    async fn start(port: u16) -> OwnRedis {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup.sh installs it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut up = false;
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "own redis-server did not start on {port}");
        OwnRedis {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn redis_stopped_mid_test_falls_back_to_local_and_recovers() {
    let port = free_port();
    let mut redis = OwnRedis::start(port).await;
    let url = redis.url();
    let prefix = "rl:";
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&limited_config(&up, &rl_redis(&url, prefix, "1r/m", 2))).await;
    let rl = gw.handle.rate_limiter();
    assert!(!rl.redis_fallback_active());

    // Shared limit in force: 3 then 429, state in our Redis.
    for _ in 0..3 {
        assert_eq!(get_h(&gw, "/", &[("x-api-key", "k1")]).await.status, 200);
    }
    assert_eq!(get_h(&gw, "/", &[("x-api-key", "k1")]).await.status, 429);
    assert_eq!(redis_keys(&url, prefix).await.len(), 1);

    // Redis goes away: every request is still answered, on the local limiter.
    redis.stop();
    let r = get_h(&gw, "/", &[("x-api-key", "k2")]).await;
    assert_eq!(r.status, 200, "served although Redis is down: {r:?}");
    assert!(rl.redis_fallback_active());
    assert!(rl.redis_errors() >= 1);
    assert_eq!(rl.redis_fallbacks(), 1);
    for _ in 0..2 {
        assert_eq!(get_h(&gw, "/", &[("x-api-key", "k2")]).await.status, 200);
    }
    // The local limiter enforces the same rule.
    assert_429(&get_h(&gw, "/", &[("x-api-key", "k2")]).await, "shared");
    assert_eq!(
        rl.redis_fallbacks(),
        1,
        "one transition, not one per request"
    );

    // Redis comes back (empty): the gateway returns to the shared limit.
    let _redis2 = OwnRedis::start(port).await;
    assert!(
        eventually(10, || !rl.redis_fallback_active()).await,
        "still on the local fallback"
    );
    assert_eq!(get_h(&gw, "/", &[("x-api-key", "k3")]).await.status, 200);
    let keys = redis_keys(&url, prefix).await;
    assert_eq!(keys.len(), 1, "k3 counted in Redis again: {keys:?}");
    assert_eq!(up.hits(), 7);
}

#[tokio::test]
async fn gateway_starts_and_serves_with_redis_down() {
    let port = free_port();
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&limited_config(
        &up,
        &rl_redis(&format!("redis://127.0.0.1:{port}"), "x:", "1r/m", 0),
    ))
    .await;
    assert!(gw.handle.rate_limiter().redis_fallback_active());
    assert_eq!(get_h(&gw, "/", &[("x-api-key", "a")]).await.status, 200);
    assert_eq!(get_h(&gw, "/", &[("x-api-key", "a")]).await.status, 429);
}

/// One keep-alive HTTP/1.1 exchange on an open connection.
async fn exchange(s: &mut TcpStream) -> String {
    s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn limit_conn_refuses_excess_connections_per_address() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&format!(
        "[listen]\nmax_connections_per_ip = 2\n{}",
        pool_config(&[(&up, 1, false)], "round_robin", "")
    ))
    .await;
    let mut c1 = TcpStream::connect(gw.addr).await.unwrap();
    let mut c2 = TcpStream::connect(gw.addr).await.unwrap();
    assert!(exchange(&mut c1).await.starts_with("HTTP/1.1 200"));
    assert!(exchange(&mut c2).await.starts_with("HTTP/1.1 200"));

    let mut c3 = TcpStream::connect(gw.addr).await.unwrap();
    let r = exchange(&mut c3).await;
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.contains("too_many_connections"), "{r}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), c3.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "refused connection left open");
    let cl = gw.handle.conn_limiter();
    assert_eq!(cl.refused(), 1);

    // Another address is not affected.
    let other: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let res = send_from(Some(other), gw.addr, request("GET", gw.addr, "/x", &[], ""))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // The first two keep working; closing one frees a slot.
    assert!(exchange(&mut c1).await.starts_with("HTTP/1.1 200"));
    drop(c2);
    assert!(eventually(5, || cl.open_from("127.0.0.1".parse().unwrap()) == 1).await);
    let mut c4 = TcpStream::connect(gw.addr).await.unwrap();
    assert!(exchange(&mut c4).await.starts_with("HTTP/1.1 200"));
    assert_eq!(up.hits(), 5);
}

#[tokio::test]
async fn rate_limits_can_be_replaced_live_keeping_counters() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&limited_config(
        &up,
        "[[rate_limit.rule]]\nname = \"strict\"\nkey = \"client_ip\"\nrate = \"1r/m\"\n",
    ))
    .await;
    assert_eq!(gw.get("/").await.status, 200);
    assert_429(&gw.get("/").await, "strict");
    let new = ragfleet_gateway::Config::parse(
        &limited_config(
            &up,
            "[[rate_limit.rule]]\nname = \"loose\"\nkey = \"client_ip\"\nrate = \"1r/m\"\nburst = 3\n",
        ),
        "reload.toml",
    )
    .unwrap();
    gw.handle.set_rate_limits(&new.rate_limit).await;
    for _ in 0..4 {
        assert_eq!(gw.get("/").await.status, 200);
    }
    assert_429(&gw.get("/").await, "loose");
    assert_eq!(gw.handle.rate_limiter().rate_limited(), 2);
    // No rules at all: nothing limited.
    gw.handle.set_rate_limits(&Default::default()).await;
    for _ in 0..5 {
        assert_eq!(gw.get("/").await.status, 200);
    }
}

#[tokio::test]
async fn bad_rate_limit_config_names_the_key() {
    let base = "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\nservers = [{ addr = \"127.0.0.1:1\" }]\n";
    for (extra, key) in [
        ("[[rate_limit.rule]]\nkey = \"client_ip\"\nrate = \"10/s\"\n", "rate"),
        ("[[rate_limit.rule]]\nkey = \"cookie:x\"\nrate = \"1r/s\"\n", "key"),
        ("[[rate_limit.rule]]\nkey = \"client_ip\"\nrate = \"1r/s\"\nprefix = \"api\"\n", "rate_limit.rule[0].prefix"),
        ("[[rate_limit.rule]]\nname = \"a\"\nkey = \"client_ip\"\nrate = \"1r/s\"\n[[rate_limit.rule]]\nname = \"a\"\nkey = \"client_ip\"\nrate = \"1r/s\"\n", "rate_limit.rule[1].name"),
        ("[[rate_limit.rule]]\nkey = \"client_ip\"\nrate = \"1r/s\"\nnodelay = true\n", "nodelay"),
        ("[rate_limit]\nredis_url = \"http://x\"\n", "rate_limit.redis_url"),
        ("[listen]\nmax_body_size = \"10MB\"\n", "10MB"),
        ("[listen]\nmax_header_size = 100\n", "listen.max_header_size"),
    ] {
        let err = ragfleet_gateway::Config::parse(&format!("{base}{extra}"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{extra:?}: {err}");
    }
}
