//! Forwarding headers, request ids, hop-by-hop stripping, Host modes.
mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_and_request_id() {
    let a = Upstream::start("a").await;
    let gw = TestGateway::start(&pool_config(&[(&a, 1, false)], "round_robin", "")).await;
    let req = http::Request::builder()
        .uri("/echo-headers")
        .header("host", "chat.example.test")
        .header("x-forwarded-for", "10.1.2.3")
        .header("connection", "x-client-hop")
        .header("x-client-hop", "secret")
        .header("keep-alive", "timeout=5")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = read(send_from(None, gw.addr, req).await.unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let seen: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(seen["host"], "chat.example.test");
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "chat.example.test");
    assert!(
        seen.get("x-client-hop").is_none(),
        "hop-by-hop header forwarded"
    );
    assert!(seen.get("keep-alive").is_none());
    // A request id was generated, sent upstream and returned.
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_eq!(seen["x-request-id"], id.as_str());
    // Response hop-by-hop headers are stripped too.
    assert!(r.headers.get("x-up-hop").is_none());
    assert_eq!(r.headers["x-up-end"], "1");

    // A client's request id is kept.
    let r = get(gw.addr, "/echo-headers", &[("x-request-id", "req-42")]).await;
    let seen: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(seen["x-request-id"], "req-42");
    assert_eq!(r.headers["x-request-id"], "req-42");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_can_be_the_upstreams() {
    let a = Upstream::start("a").await;
    let gw = TestGateway::start(&pool_config(
        &[(&a, 1, false)],
        "round_robin",
        "host = \"upstream\"\n",
    ))
    .await;
    let r = get(gw.addr, "/echo-headers", &[]).await;
    let seen: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(seen["host"], a.addr.to_string());
    assert_eq!(seen["x-forwarded-host"], gw.addr.to_string());
}

#[test]
fn bad_config_names_the_key() {
    use ragfleet_gateway::Config;
    let e = Config::parse("[listen]\naddr = \"127.0.0.1:1\"\nbogus = 1\n", "g.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("g.toml") && e.contains("bogus"), "{e}");
    let e = Config::parse(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\nservers = [{ addr = \"127.0.0.1:1\", weight = 0 }]\n",
        "g.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("pool.p.servers[0].weight"), "{e}");
    let e = Config::parse(
        "[[route]]\nprefix = \"/\"\npool = \"q\"\n[pool.p]\nservers = [{ addr = \"127.0.0.1:1\" }]\n",
        "g.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("route[0].pool"), "{e}");
    let e = Config::parse(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\nservers = [{ addr = \"127.0.0.1:1\" }]\n[pool.p.timeouts]\nconnect = \"5 seconds\"\n",
        "g.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("connect"), "{e}");
    // The example shipped in configs/ is valid.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/gateway.toml");
    Config::load(std::path::Path::new(example)).unwrap();
}
