//! The admin API: list pools and servers with live state, drain / undrain,
//! runtime weights (rebuilding the hash ring), bearer token, bad input.
mod common;
mod ops_common;

use std::sync::atomic::Ordering::SeqCst;

use common::*;
use ops_common::*;
use serde_json::Value;

const TOKEN: &str = "s3cret-token";

fn server<'a>(pool: &'a Value, addr: &str) -> &'a Value {
    pool["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["addr"] == addr)
        .unwrap_or_else(|| panic!("no {addr} in {pool}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_drain_and_undrain() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = TestGateway::start(&format!(
        "{}[admin]\naddr = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        pool_config(&[(&a, 1, false), (&b, 1, false)], "round_robin", "")
    ))
    .await;
    let admin = gw.handle.admin_addr().unwrap();
    let (sa, sb) = (a.addr.to_string(), b.addr.to_string());

    // The token is required everywhere on the admin listener.
    for (tok, path) in [
        (None, "/admin/pools"),
        (Some("wrong"), "/admin/pools"),
        (None, "/metrics"),
    ] {
        let r = admin_call(admin, "GET", path, tok, "").await;
        assert_eq!(r.status, 401, "{path} with {tok:?}");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        assert_eq!(json(&r)["error"]["code"], "unauthorized");
    }

    let r = admin_call(admin, "GET", "/admin/pools", Some(TOKEN), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = json(&r);
    let p = &v["pools"][0];
    assert_eq!(p["name"], "p");
    assert_eq!(p["policy"], "round_robin");
    assert_eq!(p["routes"], serde_json::json!(["/"]));
    assert_eq!(p["servers"].as_array().unwrap().len(), 2);
    let s = server(p, &sa);
    assert_eq!(s["weight"], 1);
    assert_eq!(s["source"], "static");
    assert_eq!(s["health"]["passive"], "up");
    assert_eq!(s["health"]["active"], "up");
    assert_eq!(s["available"], true);
    assert_eq!(s["drained"], false);
    assert_eq!(s["in_flight"], 0);
    assert!(s["ewma_ms"].as_f64().unwrap() > 0.0);

    // A request held on a (round robin starts there).
    let addr = gw.addr;
    let held = tokio::spawn(async move { get(addr, "/hold", &[]).await });
    assert!(eventually(10, || a.state.holding.load(SeqCst) == 1).await);

    // Drain a: it reports the request still in flight...
    let r = admin_call(
        admin,
        "POST",
        &format!("/admin/pools/p/servers/{sa}/drain"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = json(&r);
    assert_eq!(v["drained"], true);
    assert_eq!(v["available"], false);
    assert_eq!(v["in_flight"], 1);
    // ...gets no new request...
    let a_before = a.hits();
    for _ in 0..10 {
        assert_eq!(gw.get("/x").await.body, "b");
    }
    assert_eq!(a.hits(), a_before);
    let m = scrape(admin, Some(TOKEN)).await;
    assert_eq!(
        m.one("ragfleet_gateway_server_drained", &[("server", &sa)]),
        Some(1.0)
    );
    // ...and the in-flight request finishes normally on it.
    a.state.release.send_replace(true);
    let r = held.await.unwrap();
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "a"));
    let r = admin_call(
        admin,
        "GET",
        &format!("/admin/pools/p/servers/{sa}"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(json(&r)["in_flight"], 0);

    // Undrain: a takes requests again.
    let r = admin_call(
        admin,
        "POST",
        &format!("/admin/pools/p/servers/{sa}/undrain"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(json(&r)["drained"], false);
    let mut seen_a = 0;
    for _ in 0..10 {
        if gw.get("/x").await.body == "a" {
            seen_a += 1;
        }
    }
    assert_eq!(seen_a, 5);
    let _ = sb;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_changes_rebuild_the_hash_ring_and_survive_reloads() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let toml = |wa: u32| {
        format!(
            "{}[admin]\naddr = \"127.0.0.1:0\"\n",
            pool_config(
                &[(&a, wa, false), (&b, 1, false)],
                "hash",
                "[pool.p.hash]\nkey = \"header:X-Key\"\n"
            )
        )
    };
    let gw = TestGateway::start(&toml(1)).await;
    let admin = gw.handle.admin_addr().unwrap();
    let sa = a.addr.to_string();

    let share_of_a = |round: &'static str| {
        let addr = gw.addr;
        async move {
            let mut on_a = 0;
            for i in 0..200 {
                let key = format!("{round}-{i}");
                if get(addr, "/x", &[("x-key", &key)]).await.body == "a" {
                    on_a += 1;
                }
            }
            on_a
        }
    };
    let before = share_of_a("k").await;
    assert!(
        (60..=140).contains(&before),
        "equal weights: a got {before}/200"
    );

    let path = format!("/admin/pools/p/servers/{sa}/weight");
    let r = admin_call(admin, "PUT", &path, None, r#"{"weight": 1000}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = json(&r);
    assert_eq!(v["weight"], 1000);
    assert_eq!(v["configured_weight"], 1);
    // The ring follows the weight: a now owns nearly every key (the same
    // keys as before, so only the ring can have moved them).
    let after = share_of_a("k").await;
    assert!(
        after >= 190,
        "weight 1000 vs 1: a got {after}/200 (ring not rebuilt?)"
    );

    // A reload that leaves a's configured weight alone keeps the admin's.
    let cfg = ragfleet_gateway::Config::parse(&toml(1), "same.toml").unwrap();
    gw.handle.reload(cfg).await.unwrap();
    assert_eq!(
        gw.handle.pool("p").unwrap().server(&sa).unwrap().weight(),
        1000
    );
    assert!(share_of_a("k").await >= 190);
    // One that changes it applies the file's weight.
    let cfg = ragfleet_gateway::Config::parse(&toml(2), "w2.toml").unwrap();
    gw.handle.reload(cfg).await.unwrap();
    let r = admin_call(
        admin,
        "GET",
        &format!("/admin/pools/p/servers/{sa}"),
        None,
        "",
    )
    .await;
    assert_eq!(json(&r)["weight"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors() {
    let a = Upstream::start("a").await;
    let gw = TestGateway::start(&format!(
        "{}[admin]\naddr = \"127.0.0.1:0\"\n",
        pool_config(&[(&a, 1, false)], "round_robin", "")
    ))
    .await;
    let admin = gw.handle.admin_addr().unwrap();
    let sa = a.addr.to_string();
    let weight = format!("/admin/pools/p/servers/{sa}/weight");
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        ("PUT", weight.clone(), "nope", 400, "bad_body"),
        ("PUT", weight.clone(), r#"{"weight": 0}"#, 400, "bad_weight"),
        (
            "PUT",
            weight.clone(),
            r#"{"weight": 1001}"#,
            400,
            "bad_weight",
        ),
        (
            "PUT",
            weight.clone(),
            r#"{"weight": 2, "extra": 1}"#,
            400,
            "bad_body",
        ),
        ("PUT", weight.clone(), r#"{"weight": -3}"#, 400, "bad_body"),
        ("GET", weight.clone(), "", 405, "method_not_allowed"),
        (
            "GET",
            format!("/admin/pools/p/servers/{sa}/drain"),
            "",
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/admin/pools/nope/servers/x:1/drain".into(),
            "",
            404,
            "no_pool",
        ),
        (
            "POST",
            "/admin/pools/p/servers/10.9.9.9:1/drain".into(),
            "",
            404,
            "no_server",
        ),
        ("GET", "/admin/pools/nope".into(), "", 404, "no_pool"),
        ("GET", "/admin/nothing".into(), "", 404, "not_found"),
        (
            "GET",
            "/admin/pools/p/servers/%zz".into(),
            "",
            400,
            "bad_path",
        ),
        ("POST", "/admin/reload".into(), "", 409, "no_config_file"),
    ];
    for (method, path, body, status, code) in cases {
        let r = admin_call(admin, method, &path, None, body).await;
        assert_eq!(
            r.status.as_u16(),
            status,
            "{method} {path} {body}: {}",
            r.body
        );
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(json(&r)["error"]["code"], code, "{method} {path}");
    }
    // Percent-encoded addresses work; the weight is untouched by the errors.
    let enc = sa.replace(':', "%3A");
    let r = admin_call(
        admin,
        "GET",
        &format!("/admin/pools/p/servers/{enc}"),
        None,
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(json(&r)["weight"], 1);
    assert_eq!(
        admin_call(admin, "GET", "/health", None, "").await.status,
        200
    );
    // Still proxying.
    assert_eq!(gw.get("/x").await.body, "a");
}

#[tokio::test]
async fn admin_listener_is_off_unless_configured() {
    let a = Upstream::start("a").await;
    let gw = TestGateway::start(&pool_config(&[(&a, 1, false)], "p2c", "")).await;
    assert_eq!(gw.handle.admin_addr(), None);
    let off = TestGateway::start(&format!(
        "{}[admin]\nenabled = false\naddr = \"127.0.0.1:0\"\n",
        pool_config(&[(&a, 1, false)], "p2c", "")
    ))
    .await;
    assert_eq!(off.handle.admin_addr(), None);
    // The metrics are still there for the library user.
    off.get("/x").await;
    assert!(off
        .handle
        .metrics_text()
        .contains("ragfleet_gateway_requests_in_flight"));

    let both = ragfleet_gateway::Config::parse(
        &format!(
            "{}[admin]\ntoken = \"x\"\ntoken_file = \"/tmp/t\"\n",
            pool_config(&[(&a, 1, false)], "p2c", "")
        ),
        "gw.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        both.contains("gw.toml") && both.contains("admin.token"),
        "{both}"
    );
    let unknown = ragfleet_gateway::Config::parse(
        &format!(
            "{}[admin]\nport = 1\n",
            pool_config(&[(&a, 1, false)], "p2c", "")
        ),
        "gw.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        unknown.contains("unknown field") && unknown.contains("port"),
        "{unknown}"
    );
}
