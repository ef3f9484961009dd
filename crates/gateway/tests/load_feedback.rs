//! Load feedback: the active health check reads the `load` a node reports
//! in its /health JSON, and p2c sends clearly fewer new requests to a node
//! that reports a high load.
mod common;
mod ops_common;

use std::time::Duration;

use common::*;
use ops_common::*;

async fn load_of(admin: std::net::SocketAddr, addr: &str) -> f64 {
    let r = admin_call(
        admin,
        "GET",
        &format!("/admin/pools/p/servers/{addr}"),
        None,
        "",
    )
    .await;
    json(&r)["load"].as_f64().unwrap()
}

async fn wait_load(admin: std::net::SocketAddr, addr: &str, want: f64) {
    for _ in 0..200 {
        if load_of(admin, addr).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{addr} never reported load {want} (has {})",
        load_of(admin, addr).await
    );
}

/// Send `n` requests (2 at a time) and return how many `x` answered.
async fn share(gw: &TestGateway, n: usize) -> usize {
    let mut on_x = 0;
    for _ in 0..n / 2 {
        let (r1, r2) = tokio::join!(gw.get("/g"), gw.get("/g"));
        on_x += [r1, r2].iter().filter(|r| r.body == "x").count();
    }
    on_x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_sends_fewer_requests_to_a_node_reporting_load() {
    // Same speed (5 ms per answer) so latency alone does not separate them.
    let x = LoadUpstream::start("x", Duration::from_millis(5)).await;
    let y = LoadUpstream::start("y", Duration::from_millis(5)).await;
    let (sx, sy) = (x.addr.to_string(), y.addr.to_string());
    let gw = TestGateway::start(&format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
         [pool.p]\npolicy = \"p2c\"\nload_weight = 5.0\n\
         servers = [{{ addr = \"{sx}\" }}, {{ addr = \"{sy}\" }}]\n\
         [pool.p.health]\ninterval = \"100ms\"\ntimeout = \"1s\"\n"
    ))
    .await;
    let admin = gw.handle.admin_addr().unwrap();

    // x: one generation running and nine queued on one slot → load 10.
    x.set_load(1, 9, 1);
    wait_load(admin, &sx, 10.0).await;
    assert_eq!(load_of(admin, &sy).await, 0.0);
    let m = scrape(admin, None).await;
    assert_eq!(
        m.one("ragfleet_gateway_server_load", &[("server", &sx)]),
        Some(10.0)
    );

    let on_x = share(&gw, 200).await;
    assert!(on_x < 40, "loaded x still got {on_x}/200");

    // The load moves to y (4 running + 16 queued on 2 slots): so do the requests.
    x.set_load(0, 0, 1);
    y.set_load(4, 16, 2);
    wait_load(admin, &sx, 0.0).await;
    wait_load(admin, &sy, 10.0).await;
    let on_x = share(&gw, 200).await;
    assert!(on_x > 160, "loaded y still got {}/200", 200 - on_x);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_load_never_makes_a_server_unavailable() {
    let x = LoadUpstream::start("x", Duration::from_millis(1)).await;
    let gw = TestGateway::start(&format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
         [pool.p]\nload_weight = 0.0\nservers = [{{ addr = \"{}\" }}]\n\
         [pool.p.health]\ninterval = \"100ms\"\n",
        x.addr
    ))
    .await;
    let admin = gw.handle.admin_addr().unwrap();
    x.set_load(3, 0, 1);
    wait_load(admin, &x.addr.to_string(), 3.0).await;
    // Still the only server: it serves (load never makes a server unavailable).
    assert_eq!(gw.get("/g").await.body, "x");
    let bad = ragfleet_gateway::Config::parse(
        &format!(
            "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\nload_weight = -1.0\nservers = [{{ addr = \"{}\" }}]\n",
            x.addr
        ),
        "gw.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(bad.contains("pool.p.load_weight"), "{bad}");
}
