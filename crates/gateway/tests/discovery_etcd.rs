//! etcd discovery against a real etcd (Debian's etcd-server, started here on
//! free ports in a temp dir): servers registered and removed under the
//! prefix while a load runs, with no failed request and traffic following
//! the set; etcd killed → the last known set stays; etcd back → watched again.
mod common;
mod ops_common;

use std::time::Duration;

use common::*;
use ops_common::*;

const PREFIX: &str = "/test/nodes/";

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_follow_etcd_under_load() {
    let mut etcd = Etcd::start().await;
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let (sa, sb, sc) = (a.addr.to_string(), b.addr.to_string(), c.addr.to_string());
    let gw = TestGateway::start(&format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
         [pool.p]\npolicy = \"round_robin\"\n\
         [pool.p.discovery.etcd]\nendpoints = [\"{}\"]\nprefix = \"{PREFIX}\"\nbackoff_max = \"300ms\"\ntimeout = \"1s\"\n",
        etcd.client_url
    ))
    .await;
    let admin = gw.handle.admin_addr().unwrap();
    let h = gw.handle.clone();

    // Nothing registered yet: a prompt 503, not a hang.
    let r = gw.get("/x").await;
    assert_eq!(r.status, 503, "{}", r.body);

    // A node registers the way ragfleet nodes do (JSON value).
    etcd.put(
        &format!("{PREFIX}n1"),
        &format!(r#"{{"addr":"{sa}","weight":1}}"#),
    )
    .await;
    // Keys outside the prefix and broken values are ignored.
    etcd.put("/test/other/x", &sb).await;
    etcd.put(&format!("{PREFIX}broken"), "not an address").await;
    assert!(eventually(10, || pool_addrs(&h, "p") == vec![sa.clone()]).await);

    let load = Load::start(gw.addr, "/x", 4);
    assert!(eventually(10, || load.count("a") > 20).await);

    // A second node, plain host:port value.
    etcd.put(&format!("{PREFIX}n2"), &sb).await;
    assert!(
        eventually(10, || pool_addrs(&h, "p")
            == sorted(vec![sa.clone(), sb.clone()]))
        .await
    );
    assert!(eventually(10, || load.count("b") > 20).await);

    // A weight change through etcd.
    etcd.put(
        &format!("{PREFIX}n1"),
        &format!(r#"{{"addr":"{sa}","weight":3}}"#),
    )
    .await;
    assert!(
        eventually(10, || h
            .pool("p")
            .and_then(|p| p.server(&sa))
            .map(|s| s.weight())
            == Some(3))
        .await
    );

    // n1 deregisters: a gets no new requests.
    etcd.delete(&format!("{PREFIX}n1")).await;
    assert!(eventually(10, || pool_addrs(&h, "p") == vec![sb.clone()]).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a_hits = a.hits();
    let b_count = load.count("b");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(a.hits(), a_hits, "a got requests after it left etcd");
    assert!(load.count("b") > b_count + 10);

    // etcd dies: the last known set stays in force.
    etcd.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pool_addrs(&h, "p"), vec![sb.clone()]);
    let b_count = load.count("b");
    assert!(eventually(10, || load.count("b") > b_count + 20).await);
    let m = scrape(admin, None).await;
    assert!(
        m.sum(
            "ragfleet_gateway_discovery_lookups_total",
            &[("pool", "p"), ("source", "etcd"), ("result", "error")]
        ) >= 2.0,
        "reconnection attempts are counted"
    );

    // etcd comes back (same data): the gateway lists and watches again.
    etcd.restart().await;
    etcd.put(&format!("{PREFIX}n3"), &format!(r#"{{"addr":"{sc}"}}"#))
        .await;
    assert!(
        eventually(15, || pool_addrs(&h, "p")
            == sorted(vec![sb.clone(), sc.clone()]))
        .await
    );
    assert!(eventually(10, || load.count("c") > 20).await);
    let m = scrape(admin, None).await;
    assert_eq!(
        m.one(
            "ragfleet_gateway_discovery_servers",
            &[("pool", "p"), ("source", "etcd")]
        ),
        Some(2.0)
    );
    let r = admin_call(admin, "GET", "/admin/pools/p", None, "").await;
    assert!(json(&r)["servers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["source"] == "etcd"));

    let (ok, failures) = load.stop().await;
    assert!(ok > 200, "only {ok} requests");
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_at_start_is_retried() {
    // etcd is not running when the gateway starts: the static backup serves.
    let port = free_port();
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = TestGateway::start(&format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\nservers = [{{ addr = \"{}\", backup = true }}]\n\
         [pool.p.discovery.etcd]\nendpoints = [\"http://127.0.0.1:{port}\"]\nprefix = \"{PREFIX}\"\nbackoff_max = \"200ms\"\n",
        b.addr
    ))
    .await;
    assert_eq!(gw.get("/x").await.body, "b");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gw.get("/x").await.body, "b");

    // etcd starts and a node registers: the primary takes over.
    let etcd = Etcd::start_on(port).await;
    etcd.put(&format!("{PREFIX}n1"), &a.addr.to_string()).await;
    let h = gw.handle.clone();
    let want = sorted(vec![a.addr.to_string(), b.addr.to_string()]);
    assert!(eventually(15, || pool_addrs(&h, "p") == want).await);
    for _ in 0..5 {
        assert_eq!(gw.get("/x").await.body, "a");
    }
}
