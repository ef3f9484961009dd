//! /metrics on the admin listener: parses as Prometheus text, and its
//! counters and gauges match what the test did — per gateway instance.
mod common;
mod ops_common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use ops_common::*;
use tokio_tungstenite::tungstenite::Message;

/// Poll /metrics until `cond` holds (the last counters are written just
/// after the last response byte); panic with the exposition otherwise.
async fn until(
    admin: std::net::SocketAddr,
    what: &str,
    cond: impl Fn(&Metrics) -> bool,
) -> Metrics {
    for _ in 0..250 {
        let m = scrape(admin, None).await;
        if cond(&m) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = scrape(admin, None).await;
    let text: Vec<String> =
        m.0.iter()
            .filter(|s| s.name.starts_with("ragfleet_gateway_requests") || s.name.contains("open"))
            .map(|s| format!("{} {:?} {}", s.name, s.labels, s.value))
            .collect();
    panic!("metrics never showed {what}:\n{}", text.join("\n"));
}

const REQ: &str = "ragfleet_gateway_requests_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_the_requests_made_per_instance() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let toml = |routes: &str| {
        format!(
            "{routes}\n[admin]\naddr = \"127.0.0.1:0\"\n\n[pool.p]\npolicy = \"round_robin\"\nservers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]\n",
            a.addr, b.addr
        )
    };
    let g1 = TestGateway::start(&toml("[[route]]\nprefix = \"/\"\npool = \"p\"")).await;
    let g2 = TestGateway::start(&toml("[[route]]\nprefix = \"/api/\"\npool = \"p\"")).await;
    let admin1 = g1.handle.admin_addr().expect("admin listener");
    let admin2 = g2.handle.admin_addr().expect("admin listener");
    assert_ne!(admin1, admin2);

    // g1: 6 answers alternate a, b; then b answers 500 (not retried by
    // default) for the next 2 (a then b).
    for _ in 0..6 {
        assert_eq!(g1.get("/x").await.status, 200);
    }
    b.state.status.store(500, SeqCst);
    let r1 = g1.get("/x?secret=1").await;
    let r2 = g1.get("/y").await;
    let mut statuses = [r1.status.as_u16(), r2.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 500]);
    // g2: one request routed, one not.
    assert_eq!(g2.get("/api/z").await.status, 200);
    assert_eq!(g2.get("/nope").await.status, 404);

    let (sa, sb) = (a.addr.to_string(), b.addr.to_string());
    let m = until(admin1, "8 requests on g1", |m| m.sum(REQ, &[]) == 8.0).await;
    let lbl = |s: &'static str, c: &'static str| {
        [("route", "/"), ("pool", "p"), ("server", s), ("code", c)]
    };
    let sa: &'static str = Box::leak(sa.into_boxed_str());
    let sb: &'static str = Box::leak(sb.into_boxed_str());
    assert_eq!(m.one(REQ, &lbl(sa, "2xx")), Some(4.0));
    assert_eq!(m.one(REQ, &lbl(sb, "2xx")), Some(3.0));
    assert_eq!(m.one(REQ, &lbl(sb, "5xx")), Some(1.0));
    assert_eq!(m.one(REQ, &lbl(sa, "5xx")), None);
    let rp = [("route", "/"), ("pool", "p")];
    assert_eq!(
        m.one("ragfleet_gateway_response_headers_seconds_count", &rp),
        Some(8.0)
    );
    assert_eq!(
        m.one("ragfleet_gateway_request_duration_seconds_count", &rp),
        Some(8.0)
    );
    // Bodies are the upstream's name: one byte each.
    assert_eq!(m.one("ragfleet_gateway_sent_bytes_total", &rp), Some(8.0));
    assert_eq!(m.one("ragfleet_gateway_requests_in_flight", &[]), Some(0.0));
    assert_eq!(m.sum("ragfleet_gateway_retries_total", &[]), 0.0);
    assert_eq!(
        m.one("ragfleet_gateway_pool_servers", &[("pool", "p")]),
        Some(2.0)
    );
    for s in [sa, sb] {
        let l = [("pool", "p"), ("server", s)];
        assert_eq!(m.one("ragfleet_gateway_server_available", &l), Some(1.0));
        assert_eq!(m.one("ragfleet_gateway_server_weight", &l), Some(1.0));
        assert_eq!(
            m.one(
                "ragfleet_gateway_server_up",
                &[("server", s), ("check", "passive")]
            ),
            Some(1.0)
        );
    }
    assert_eq!(
        m.one(
            "ragfleet_gateway_config_reloads_total",
            &[("result", "success")]
        ),
        Some(0.0)
    );
    // Bounded labels: no paths, no query strings, no client addresses.
    for s in &m.0 {
        for (k, v) in &s.labels {
            assert!(!["path", "client", "addr"].contains(&k.as_str()), "{s:?}");
            assert!(!v.contains("/x") && !v.contains("secret"), "{s:?}");
        }
        if let Some(r) = s.labels.get("route") {
            assert!(["/", "none"].contains(&r.as_str()), "{s:?}");
        }
    }

    // g2 counted only its own two requests.
    let m2 = until(admin2, "2 requests on g2", |m| m.sum(REQ, &[]) == 2.0).await;
    assert_eq!(
        m2.one(REQ, &[("route", "/api/"), ("pool", "p"), ("code", "2xx")]),
        Some(1.0)
    );
    assert_eq!(
        m2.one(
            REQ,
            &[
                ("route", "none"),
                ("pool", "none"),
                ("server", "none"),
                ("code", "4xx")
            ]
        ),
        Some(1.0)
    );
    // And g1 still has 8.
    assert_eq!(scrape(admin1, None).await.sum(REQ, &[]), 8.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_follow_in_flight_requests_streams_and_tunnels() {
    let a = Upstream::start("a").await;
    let ws = WsEcho::start("w").await;
    let gw = TestGateway::start(&format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[[route]]\nprefix = \"/ws\"\npool = \"ws\"\n\
         [admin]\naddr = \"127.0.0.1:0\"\n\
         [pool.p]\nservers = [{{ addr = \"{}\" }}]\n[pool.ws]\nservers = [{{ addr = \"{}\" }}]\n",
        a.addr, ws.addr
    ))
    .await;
    let admin = gw.handle.admin_addr().unwrap();
    let sa: &'static str = Box::leak(a.addr.to_string().into_boxed_str());

    // A held request is in flight, on the gateway and on its server.
    let addr = gw.addr;
    let held = tokio::spawn(async move { get(addr, "/hold", &[]).await });
    assert!(eventually(10, || a.state.holding.load(SeqCst) == 1).await);
    let m = scrape(admin, None).await;
    assert_eq!(m.one("ragfleet_gateway_requests_in_flight", &[]), Some(1.0));
    assert_eq!(
        m.one("ragfleet_gateway_server_in_flight", &[("server", sa)]),
        Some(1.0)
    );
    a.state.release.send_replace(true);
    assert_eq!(held.await.unwrap().status, 200);
    a.state.release.send_replace(false);
    until(admin, "nothing in flight", |m| {
        m.one("ragfleet_gateway_requests_in_flight", &[]) == Some(0.0)
            && m.one("ragfleet_gateway_server_in_flight", &[("server", sa)]) == Some(0.0)
    })
    .await;

    // An open SSE stream counts until it ends.
    let res = send_from(
        None,
        gw.addr,
        request("GET", gw.addr, "/sse-gated", &[], ""),
    )
    .await
    .unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    let m = scrape(admin, None).await;
    assert_eq!(
        m.one("ragfleet_gateway_streams_open", &[("pool", "p")]),
        Some(1.0)
    );
    a.state.sse_ack.send_replace(SSE_EVENTS);
    while let Some(f) = body.frame().await {
        f.unwrap();
    }
    until(admin, "the stream closed", |m| {
        m.one("ragfleet_gateway_streams_open", &[("pool", "p")]) == Some(0.0)
    })
    .await;

    // An open WebSocket tunnel counts until it closes, then is one 1xx request.
    let (mut sock, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    assert_eq!(sock.next().await.unwrap().unwrap(), Message::text("w"));
    sock.send(Message::text("ping")).await.unwrap();
    assert_eq!(sock.next().await.unwrap().unwrap(), Message::text("ping"));
    let m = scrape(admin, None).await;
    assert_eq!(
        m.one("ragfleet_gateway_websockets_open", &[("pool", "ws")]),
        Some(1.0)
    );
    assert_eq!(m.one("ragfleet_gateway_requests_in_flight", &[]), Some(1.0));
    sock.close(None).await.unwrap();
    drop(sock);
    let m = until(admin, "the tunnel closed", |m| {
        m.one("ragfleet_gateway_websockets_open", &[("pool", "ws")]) == Some(0.0)
            && m.one(REQ, &[("route", "/ws"), ("code", "1xx")]) == Some(1.0)
    })
    .await;
    assert_eq!(m.one("ragfleet_gateway_requests_in_flight", &[]), Some(0.0));
    // Tunnel bytes were counted both ways (frames "ping" + close each way).
    assert!(
        m.one("ragfleet_gateway_received_bytes_total", &[("route", "/ws")])
            .unwrap()
            > 0.0
    );
    assert!(
        m.one("ragfleet_gateway_sent_bytes_total", &[("route", "/ws")])
            .unwrap()
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_passive_and_active_health_are_exported() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let gw = TestGateway::start(&format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
         [pool.p]\npolicy = \"round_robin\"\nmax_fails = 1\nfail_timeout = \"30s\"\n\
         servers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}, {{ addr = \"{}\" }}]\n\
         [pool.p.health]\ninterval = \"100ms\"\ntimeout = \"1s\"\nfall = 1\nrise = 1\n",
        a.addr, b.addr, c.addr
    ))
    .await;
    let admin = gw.handle.admin_addr().unwrap();
    let (sa, sb, sc): (&'static str, &'static str, &'static str) = (
        Box::leak(a.addr.to_string().into_boxed_str()),
        Box::leak(b.addr.to_string().into_boxed_str()),
        Box::leak(c.addr.to_string().into_boxed_str()),
    );

    // b answers 503: each request that tries b first is retried elsewhere.
    b.state.status.store(503, SeqCst);
    for _ in 0..9 {
        let r = gw.get("/x").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let b_hits = b.hits() as f64;
    assert!(b_hits >= 1.0);
    let m = until(admin, "9 requests", |m| m.sum(REQ, &[]) == 9.0).await;
    assert_eq!(
        m.one("ragfleet_gateway_retries_total", &[("pool", "p")]),
        Some(b_hits)
    );
    assert_eq!(
        m.sum(REQ, &[("server", sb)]),
        0.0,
        "b never gave the final answer"
    );
    assert_eq!(m.sum(REQ, &[("code", "2xx")]), 9.0);

    // c killed: the first request that tries it marks it down (passive).
    c.kill();
    for _ in 0..6 {
        assert_eq!(gw.get("/x").await.status, 200);
    }
    let m = scrape(admin, None).await;
    assert_eq!(
        m.one(
            "ragfleet_gateway_server_up",
            &[("server", sc), ("check", "passive")]
        ),
        Some(0.0)
    );
    assert_eq!(
        m.one("ragfleet_gateway_server_available", &[("server", sc)]),
        Some(0.0)
    );
    assert!(
        m.one("ragfleet_gateway_server_failures_total", &[("server", sc)])
            .unwrap()
            >= 1.0
    );

    // a reports unhealthy: the active check takes it out (fall = 1).
    a.state.healthy.store(false, SeqCst);
    until(admin, "a actively down", |m| {
        m.one(
            "ragfleet_gateway_server_up",
            &[("server", sa), ("check", "active")],
        ) == Some(0.0)
    })
    .await;
    a.state.healthy.store(true, SeqCst);
    until(admin, "a actively up again", |m| {
        m.one(
            "ragfleet_gateway_server_up",
            &[("server", sa), ("check", "active")],
        ) == Some(1.0)
    })
    .await;
}

#[test]
fn the_parser_rejects_broken_expositions() {
    assert!(parse_prometheus("# TYPE x counter\nx 1\n").is_ok());
    assert!(parse_prometheus("x 1\n").is_err(), "sample before TYPE");
    assert!(parse_prometheus("# TYPE x counter\nx{a=\"1} 1\n").is_err());
    assert!(parse_prometheus("# TYPE x counter\nx{a=1} 1\n").is_err());
    assert!(parse_prometheus("# TYPE x counter\nx one\n").is_err());
    assert!(
        parse_prometheus("# TYPE x counter\nx 1\nx 2\n").is_err(),
        "duplicate"
    );
    let h =
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n";
    assert!(parse_prometheus(h).is_err(), "not cumulative");
    let h =
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n";
    assert!(parse_prometheus(h).is_err(), "+Inf != count");
}
