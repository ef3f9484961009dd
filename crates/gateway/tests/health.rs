//! Passive and active health checks through the real gateway.
mod common;

use std::sync::atomic::Ordering::SeqCst;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upstream_is_marked_down_and_no_get_fails() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let gw = TestGateway::start(&pool_config(
        &[(&a, 1, false), (&b, 1, false), (&c, 1, false)],
        "round_robin",
        "max_fails = 1\nfail_timeout = \"60s\"\n",
    ))
    .await;
    for _ in 0..9 {
        assert_eq!(gw.get("/x").await.status, 200);
    }
    let a_addr = a.addr.to_string();
    a.kill();
    // Every GET succeeds: the one that meets the dead server is retried.
    for i in 0..60 {
        let r = gw.get("/x").await;
        assert_eq!(r.status, 200, "GET {i} failed: {}", r.body);
        assert_ne!(r.body, "a");
    }
    let pool = gw.handle.pool("p").unwrap();
    let snap = pool.snapshot();
    let dead = snap.iter().find(|s| s.addr == a_addr).unwrap();
    assert!(dead.passive_down, "dead server not marked down: {dead:?}");
    assert_eq!(
        dead.failures, 1,
        "the dead server was tried only once: {dead:?}"
    );
    assert_eq!(b.hits() + c.hits(), 6 + 60);
    assert_eq!(b.hits(), c.hits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_server_out_and_bring_it_back() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = TestGateway::start(&pool_config(
        &[(&a, 1, false), (&b, 1, false)],
        "round_robin",
        "[pool.p.health]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"2s\"\nrise = 2\nfall = 3\n",
    ))
    .await;
    let pool = gw.handle.pool("p").unwrap();
    let server_a = pool.server(&a.addr.to_string()).unwrap();
    assert!(
        eventually(20, || a.state.health_hits.load(SeqCst) >= 2).await,
        "checks run"
    );
    assert!(server_a.active_up());

    // Fall: 3 failed checks in a row take it out.
    let before = a.state.health_hits.load(SeqCst);
    a.state.healthy.store(false, SeqCst);
    assert!(
        eventually(30, || !server_a.active_up()).await,
        "never marked down"
    );
    let failed_checks = a.state.health_hits.load(SeqCst) - before;
    assert!(
        failed_checks >= 3,
        "marked down after {failed_checks} failed checks (fall = 3)"
    );
    let a_hits = a.hits();
    for _ in 0..10 {
        assert_eq!(gw.get("/x").await.body, "b");
    }
    assert_eq!(a.hits(), a_hits, "a down server got traffic");

    // Rise: 2 good checks in a row bring it back.
    let before = a.state.health_hits.load(SeqCst);
    a.state.healthy.store(true, SeqCst);
    assert!(
        eventually(30, || server_a.active_up()).await,
        "never came back"
    );
    let good_checks = a.state.health_hits.load(SeqCst) - before;
    assert!(
        good_checks >= 2,
        "back after {good_checks} good checks (rise = 2)"
    );
    let mut seen_a = false;
    for _ in 0..10 {
        seen_a |= gw.get("/x").await.body == "a";
    }
    assert!(seen_a, "server back up but gets no traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_recovered_server() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = TestGateway::start(&pool_config(
        &[(&a, 1, false), (&b, 1, false)],
        "round_robin",
        "slow_start = \"1h\"\n[pool.p.health]\ninterval = \"100ms\"\nrise = 1\nfall = 1\n",
    ))
    .await;
    let pool = gw.handle.pool("p").unwrap();
    let server_a = pool.server(&a.addr.to_string()).unwrap();
    a.state.healthy.store(false, SeqCst);
    assert!(eventually(30, || !server_a.active_up()).await);
    a.state.healthy.store(true, SeqCst);
    assert!(eventually(30, || server_a.active_up()).await);
    // Just back, an hour-long ramp: a gets about 5% of b's weight.
    let before = a.hits();
    for _ in 0..40 {
        assert_eq!(gw.get("/x").await.status, 200);
    }
    let got = a.hits() - before;
    assert!(
        got <= 4,
        "recovering server got {got} of 40 requests during slow start"
    );
}
