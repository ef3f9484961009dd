//! Retries: before the first response byte only, bounded, budgeted, and POST
//! only when the upstream cannot have seen it.
mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;

use common::*;

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_even_for_post() {
    let dead = dead_addr().await;
    let b = Upstream::start("b").await;
    let toml = format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\npolicy = \"round_robin\"\nmax_fails = 0\nservers = [{{ addr = \"{dead}\" }}, {{ addr = \"{}\" }}]\n",
        b.addr
    );
    let gw = TestGateway::start(&toml).await;
    for i in 0..6 {
        let res = send_from(
            None,
            gw.addr,
            request("POST", gw.addr, "/echo-body", &[], &format!("body {i}")),
        )
        .await
        .unwrap();
        let r = read(res).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, format!("body {i}"), "POST body replayed intact");
    }
    assert_eq!(b.hits(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_503_is_retried_for_get_not_for_post() {
    let a = Upstream::start("a").await;
    a.state.status.store(503, SeqCst);
    let b = Upstream::start("b").await;
    let gw = TestGateway::start(&pool_config(
        &[(&a, 1, false), (&b, 1, false)],
        "round_robin",
        "max_fails = 0\n",
    ))
    .await;
    // GET: whichever server is picked first, the answer comes from b.
    for _ in 0..6 {
        let r = gw.get("/x").await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b"));
    }
    assert_eq!(a.hits(), 3, "a is tried every other request");
    // POST: the upstream may have acted on it; its 503 is passed through.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let res = send_from(None, gw.addr, request("POST", gw.addr, "/x", &[], "q"))
            .await
            .unwrap();
        statuses.push(read(res).await.unwrap().status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 503, 503]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_retries_post_after_a_503_when_enabled() {
    let a = Upstream::start("a").await;
    a.state.status.store(503, SeqCst);
    let b = Upstream::start("b").await;
    let toml = format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\npolicy = \"round_robin\"\nmax_fails = 0\nservers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]\n[pool.p.retries]\nnon_idempotent = true\n",
        a.addr, b.addr
    );
    let gw = TestGateway::start(&toml).await;
    for i in 0..4 {
        let res = send_from(
            None,
            gw.addr,
            request("POST", gw.addr, "/x", &[], &format!("q {i}")),
        )
        .await
        .unwrap();
        let r = read(res).await.unwrap();
        assert_eq!(r.status, 200, "the 503 of a is retried on b");
        assert_eq!(r.body, "b");
    }
    assert_eq!(a.hits(), 2, "a is tried every other request");
    assert_eq!(b.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_retried_after_the_first_byte() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = TestGateway::start(&pool_config(
        &[(&a, 1, false), (&b, 1, false)],
        "round_robin",
        "max_fails = 0\n",
    ))
    .await;
    // Round robin starts with a, whose /partial dies after the first chunk.
    let res = send_from(None, gw.addr, request("GET", gw.addr, "/partial", &[], ""))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let r = read(res).await;
    assert!(
        r.is_err(),
        "a truncated upstream body must not look complete: {r:?}"
    );
    assert_eq!(a.hits(), 1);
    assert_eq!(b.hits(), 0, "retried after bytes were sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_bounds_extra_load() {
    let a = Upstream::start("a").await;
    a.state.status.store(503, SeqCst);
    let b = Upstream::start("b").await;
    b.state.status.store(503, SeqCst);
    let gw = TestGateway::start(&pool_config(
        &[(&a, 1, false), (&b, 1, false)],
        "round_robin",
        "max_fails = 0\n[pool.p.retries]\ntries = 2\nbudget_ratio = 0.25\nbudget_min_per_sec = 0\n",
    ))
    .await;
    let n = 40;
    for _ in 0..n {
        let r = gw.get("/x").await;
        assert_eq!(r.status, 503);
        assert!(
            r.body == "a" || r.body == "b",
            "the upstream's last 503 is passed through: {}",
            r.body
        );
    }
    let attempts = a.hits() + b.hits();
    assert!(attempts >= n + 5, "some retries happened: {attempts}");
    assert!(
        attempts <= n + n / 4 + 1,
        "retries exceeded the 25% budget: {attempts} attempts for {n} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_available_answers_promptly_with_json() {
    let dead1 = dead_addr().await;
    let dead2 = dead_addr().await;
    let toml = format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\nmax_fails = 1\nfail_timeout = \"60s\"\nservers = [{{ addr = \"{dead1}\" }}, {{ addr = \"{dead2}\" }}]\n"
    );
    let gw = TestGateway::start(&toml).await;
    let r = gw.get("/x").await;
    assert_eq!(r.status, 502);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "upstream_unreachable");
    // Both are now marked down: 503 without trying anything.
    let r = gw.get("/x").await;
    assert_eq!(r.status, 503);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "no_upstream");
}
