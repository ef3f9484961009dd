//! Balancing policies through the real gateway, against real upstreams.
mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering::SeqCst;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smooth_weighted_round_robin_matches_nginx_sequence() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let gw = TestGateway::start(&pool_config(
        &[(&a, 5, false), (&b, 1, false), (&c, 1, false)],
        "round_robin",
        "",
    ))
    .await;
    let mut seq = String::new();
    for _ in 0..14 {
        let r = gw.get("/x").await;
        assert_eq!(r.status, 200);
        seq.push_str(&r.body);
    }
    assert_eq!(seq, "aabacaaaabacaa");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_path_gets_json_404() {
    let a = Upstream::start("a").await;
    let toml = format!(
        "[[route]]\nprefix = \"/api/\"\npool = \"p\"\n[[route]]\nprefix = \"/health\"\npool = \"p\"\n[pool.p]\nservers = [{{ addr = \"{}\" }}]\n",
        a.addr
    );
    let gw = TestGateway::start(&toml).await;
    let r = gw.get("/admin/secret").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "no_route");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/admin/secret"));
    assert_eq!(a.hits(), 0);
    assert_eq!(gw.get("/api/x").await.body, "a");
    assert_eq!(gw.get("/health").await.status, 200);
    assert_eq!(
        a.hits(),
        1,
        "/health is routed to the pool's /health (not counted as a hit)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_weighs_in_flight_and_breaks_ties_round_robin() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = TestGateway::start(&pool_config(
        &[(&a, 2, false), (&b, 1, false)],
        "least_conn",
        "",
    ))
    .await;
    // Held requests: each pick sees the in-flight counts left by the previous.
    let mut held = Vec::new();
    for i in 0..6u64 {
        let addr = gw.addr;
        held.push(tokio::spawn(async move { get(addr, "/hold", &[]).await }));
        assert!(
            eventually(20, || a.state.holding.load(SeqCst)
                + b.state.holding.load(SeqCst)
                == i + 1)
            .await,
            "request {i} reached an upstream"
        );
    }
    assert_eq!(
        a.state.holding.load(SeqCst),
        4,
        "weight 2 server holds twice as many"
    );
    assert_eq!(b.state.holding.load(SeqCst), 2);
    a.state.release.send(true).unwrap();
    b.state.release.send(true).unwrap();
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    // No load: ties all the way, broken by weighted round robin.
    let c = Upstream::start("c").await;
    let d = Upstream::start("d").await;
    let e = Upstream::start("e").await;
    let gw2 = TestGateway::start(&pool_config(
        &[(&c, 1, false), (&d, 1, false), (&e, 1, false)],
        "least_conn",
        "",
    ))
    .await;
    let mut seq = String::new();
    for _ in 0..6 {
        seq.push_str(&gw2.get("/x").await.body);
    }
    assert_eq!(seq, "cdecde");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_is_sticky_per_client_address() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let gw = TestGateway::start(&pool_config(
        &[(&a, 1, false), (&b, 1, false), (&c, 1, false)],
        "ip_hash",
        "",
    ))
    .await;
    let mut owner: HashMap<IpAddr, String> = HashMap::new();
    for round in 0..3 {
        for i in 2..32u8 {
            let ip: IpAddr = format!("127.0.0.{i}").parse().unwrap();
            let res = send_from(Some(ip), gw.addr, request("GET", gw.addr, "/x", &[], ""))
                .await
                .unwrap();
            let body = read(res).await.unwrap().body;
            if round == 0 {
                owner.insert(ip, body);
            } else {
                assert_eq!(owner[&ip], body, "client {ip} moved");
            }
        }
    }
    let used: std::collections::HashSet<&String> = owner.values().collect();
    assert!(
        used.len() >= 2,
        "30 client addresses all hashed to one server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_load_hashing_is_sticky_and_caps_each_server() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let gw = TestGateway::start(&pool_config(
        &[(&a, 1, false), (&b, 1, false), (&c, 1, false)],
        "hash",
        "[pool.p.hash]\nkey = \"header:X-Conversation-Id\"\nload_factor = 1.25\n",
    ))
    .await;
    // Sticky: each conversation stays on one server.
    let mut owners = HashMap::new();
    for round in 0..3 {
        for conv in 0..20 {
            let id = format!("conv-{conv}");
            let r = get(gw.addr, "/x", &[("x-conversation-id", &id)]).await;
            if round == 0 {
                owners.insert(id, r.body);
            } else {
                assert_eq!(owners[&id], r.body, "conversation {id} moved");
            }
        }
    }
    assert!(
        owners
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= 2
    );

    // Bounded: 12 concurrent requests of ONE hot conversation spread out and
    // no server holds more than ceil(1.25 × 12 / 3) = 5.
    let ups = [&a, &b, &c];
    let n = 12u64;
    let mut held = Vec::new();
    for i in 0..n {
        let addr = gw.addr;
        held.push(tokio::spawn(async move {
            get(addr, "/hold", &[("x-conversation-id", "hot")]).await
        }));
        assert!(
            eventually(20, || ups
                .iter()
                .map(|u| u.state.holding.load(SeqCst))
                .sum::<u64>()
                == i + 1)
            .await,
            "request {i} reached an upstream"
        );
    }
    let loads: Vec<u64> = ups.iter().map(|u| u.state.holding.load(SeqCst)).collect();
    let bound = (1.25 * n as f64 / 3.0).ceil() as u64;
    assert!(
        loads.iter().all(|&l| l <= bound),
        "loads {loads:?} exceed bound {bound}"
    );
    let hot_owner = ups
        .iter()
        .position(|u| u.state.name == owners.get("conv-0").cloned().unwrap_or_default())
        .unwrap_or(0);
    let _ = hot_owner;
    assert_eq!(loads.iter().sum::<u64>(), n);
    assert!(
        loads.iter().filter(|&&l| l > 0).count() >= 3,
        "hot key spread over all servers: {loads:?}"
    );
    for u in ups {
        u.state.release.send(true).unwrap();
    }
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_avoids_the_slow_server() {
    let fast1 = Upstream::start("f").await;
    let fast2 = Upstream::start("g").await;
    let slow = Upstream::start("s").await;
    // 1 s: peak-EWMA keeps a server's worst recent latency for a while, so
    // on a machine loaded enough for a fast server to stall a few hundred
    // ms once, a merely slowish server would look as good as it.
    slow.state.delay_ms.store(1000, SeqCst);
    let gw = TestGateway::start(&pool_config(
        &[(&fast1, 1, false), (&fast2, 1, false), (&slow, 1, false)],
        "p2c",
        "",
    ))
    .await;
    let total = 60;
    for _ in 0..total {
        assert_eq!(gw.get("/x").await.status, 200);
    }
    let s = slow.hits();
    assert!(s * 4 <= total, "slow server got {s} of {total} requests");
    assert!(
        fast1.hits() >= 10 && fast2.hits() >= 10,
        "both fast servers used: {} {}",
        fast1.hits(),
        fast2.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_serves_only_while_every_primary_is_down() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let k = Upstream::start("k").await;
    let gw = TestGateway::start(&pool_config(
        &[(&a, 1, false), (&b, 1, false), (&k, 1, true)],
        "round_robin",
        "max_fails = 1\nfail_timeout = \"1s\"\n",
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(gw.get("/x").await.status, 200);
    }
    assert_eq!(k.hits(), 0, "backup used while primaries are up");
    let a_addr = a.addr;
    a.kill();
    for _ in 0..10 {
        let r = gw.get("/x").await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b"));
    }
    assert_eq!(k.hits(), 0, "backup used while one primary is up");
    b.kill();
    for _ in 0..10 {
        let r = gw.get("/x").await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "k"));
    }
    // A primary comes back: once its down period is over, the backup is left.
    let a2 = Upstream::start_on("a", a_addr).await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let k_before = k.hits();
    for _ in 0..10 {
        let r = gw.get("/x").await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "a"));
    }
    assert_eq!(k.hits(), k_before);
    assert_eq!(a2.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_upstreams_with_weight_and_backup() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let k = Upstream::start("k").await;
    let cfg = ragfleet_gateway::Config::from_flags(
        Some("127.0.0.1:0".parse().unwrap()),
        &[
            a.addr.to_string(),
            format!("{},weight=2", b.addr),
            format!("{},backup", k.addr),
        ],
        Some("round_robin"),
        None,
    )
    .unwrap();
    let gw = TestGateway::start_cfg(cfg).await;
    let mut seq = String::new();
    for _ in 0..6 {
        seq.push_str(&gw.get("/any/path").await.body);
    }
    assert_eq!(seq, "babbab");
    assert_eq!(k.hits(), 0);
    // --hash-key alone selects the hash policy; bad flags are errors naming the flag.
    let cfg = ragfleet_gateway::Config::from_flags(
        None,
        &[a.addr.to_string()],
        None,
        Some("header:X-Conversation-Id"),
    )
    .unwrap();
    assert_eq!(
        cfg.pools["default"].policy,
        ragfleet_gateway::config::Policy::Hash
    );
    let e =
        ragfleet_gateway::Config::from_flags(None, &["127.0.0.1:1,weight=x".into()], None, None)
            .unwrap_err()
            .to_string();
    assert!(e.contains("--upstream"), "{e}");
    let e = ragfleet_gateway::Config::from_flags(None, &["nonsense".into()], None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("addr"), "{e}");
}
