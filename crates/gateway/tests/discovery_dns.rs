//! DNS discovery through the system resolver: `localhost` resolves to
//! 127.0.0.1 here; the name is re-resolved every interval, the discovered
//! server joins the static ones and keeps its state across re-resolutions;
//! an unresolvable name keeps serving what is known.
mod common;
mod ops_common;

use std::time::Duration;

use common::*;
use ops_common::*;

fn lookups(m: &Metrics, result: &str) -> f64 {
    m.sum(
        "ragfleet_gateway_discovery_lookups_total",
        &[("pool", "p"), ("source", "dns"), ("result", result)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_re_resolved_and_merged_with_the_static_list() {
    let a = Upstream::start("a").await; // found through DNS
    let b = Upstream::start("b").await; // static
    let gw = TestGateway::start(&format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
         [pool.p]\npolicy = \"round_robin\"\nservers = [{{ addr = \"{}\" }}]\n\
         [pool.p.discovery.dns]\nname = \"localhost\"\nport = {}\ninterval = \"200ms\"\nfamily = \"ipv4\"\n",
        b.addr,
        a.addr.port()
    ))
    .await;
    let admin = gw.handle.admin_addr().unwrap();
    let sa = format!("127.0.0.1:{}", a.addr.port());
    let mut both = vec![sa.clone(), b.addr.to_string()];
    both.sort();
    let h = gw.handle.clone();
    assert!(eventually(10, || pool_addrs(&h, "p") == both).await);

    // Both take traffic.
    let mut seen = std::collections::HashMap::new();
    for _ in 0..10 {
        *seen.entry(gw.get("/x").await.body).or_insert(0) += 1;
    }
    assert_eq!((seen["a"], seen["b"]), (5, 5));
    let r = admin_call(admin, "GET", "/admin/pools/p", None, "").await;
    let v = json(&r);
    let src = |addr: &str| {
        v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["addr"] == addr)
            .map(|s| s["source"].clone())
    };
    assert_eq!(src(&sa).unwrap(), "dns");
    assert_eq!(src(&b.addr.to_string()).unwrap(), "static");

    // Drain the discovered server; keep watching: the name is resolved
    // again and again, and the server keeps its state (still drained).
    let r = admin_call(
        admin,
        "POST",
        &format!("/admin/pools/p/servers/{sa}/drain"),
        None,
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let before = lookups(&scrape(admin, None).await, "ok");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let m = scrape(admin, None).await;
    assert!(
        lookups(&m, "ok") >= before + 3.0,
        "re-resolved {} times in 1.2 s",
        lookups(&m, "ok") - before
    );
    assert_eq!(lookups(&m, "error"), 0.0);
    assert_eq!(
        m.one(
            "ragfleet_gateway_discovery_servers",
            &[("pool", "p"), ("source", "dns")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.one("ragfleet_gateway_server_drained", &[("server", &sa)]),
        Some(1.0)
    );
    let hits = a.hits();
    for _ in 0..6 {
        assert_eq!(gw.get("/x").await.body, "b");
    }
    assert_eq!(a.hits(), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_name_keeps_the_known_servers() {
    let b = Upstream::start("b").await;
    let gw = TestGateway::start(&format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
         [pool.p]\nservers = [{{ addr = \"{}\" }}]\n\
         [pool.p.discovery.dns]\nname = \"no-such-host.invalid\"\nport = 80\ninterval = \"100ms\"\n",
        b.addr
    ))
    .await;
    let admin = gw.handle.admin_addr().unwrap();
    let mut errors = 0.0;
    for _ in 0..100 {
        errors = lookups(&scrape(admin, None).await, "error");
        if errors >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(errors >= 3.0, "{errors} failed lookups");
    assert_eq!(pool_addrs(&gw.handle, "p"), vec![b.addr.to_string()]);
    for _ in 0..5 {
        assert_eq!(gw.get("/x").await.body, "b");
    }
}

#[tokio::test]
async fn discovery_keys_are_checked() {
    let base = "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\n";
    let bad = [
        (
            "[pool.p.discovery.dns]\nname = \"\"\nport = 80\n",
            "discovery.dns.name",
        ),
        (
            "[pool.p.discovery.dns]\nname = \"x\"\nport = 0\n",
            "discovery.dns.port",
        ),
        (
            "[pool.p.discovery.dns]\nname = \"x\"\nport = 1\nfamily = \"ipv5\"\n",
            "family",
        ),
        (
            "[pool.p.discovery.etcd]\nendpoints = []\n",
            "discovery.etcd.endpoints",
        ),
        (
            "[pool.p.discovery.etcd]\nendpoints = [\"https://e:2379\"]\n",
            "https",
        ),
        (
            "[pool.p.discovery.etcd]\nprefix = \"\"\n",
            "discovery.etcd.prefix",
        ),
        ("[pool.p.discovery.etcd]\nwatch = true\n", "unknown field"),
        ("", "servers"), // no static servers and no discovery
    ];
    for (extra, needle) in bad {
        let e = ragfleet_gateway::Config::parse(&format!("{base}{extra}"), "gw.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(needle) && e.contains("gw.toml"),
            "{extra:?}: {e}"
        );
    }
    // Discovery alone (no static servers) is a valid pool; defaults apply.
    let c = ragfleet_gateway::Config::parse(&format!("{base}[pool.p.discovery.etcd]\n"), "gw.toml")
        .unwrap();
    let e = c.pools["p"].discovery.etcd.as_ref().unwrap();
    assert_eq!(e.prefix, "/ragfleet/nodes/");
    assert_eq!(e.endpoints, vec!["http://127.0.0.1:2379".to_string()]);
}

#[test]
fn the_cluster_example_is_valid() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/gateway-cluster.toml"
    );
    let c = ragfleet_gateway::Config::load(std::path::Path::new(path)).unwrap();
    let p = &c.pools["nodes"];
    assert!(p.servers.is_empty());
    assert_eq!(
        p.discovery.etcd.as_ref().unwrap().prefix,
        "/ragfleet/nodes/"
    );
    assert_eq!(c.admin.as_ref().unwrap().addr.to_string(), "127.0.0.1:9901");
    let main = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/gateway.toml");
    let c = ragfleet_gateway::Config::load(std::path::Path::new(main)).unwrap();
    assert!(c.admin.is_some());
}
