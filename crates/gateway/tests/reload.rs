//! Hot reload: streams and tunnels survive a reload that removes their
//! server, no failed request while reloading under load, server state kept
//! by address, an invalid configuration leaves the old one in force, and
//! file changes are picked up.
mod common;
mod ops_common;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use ops_common::*;
use ragfleet_gateway::Config;
use tokio_tungstenite::tungstenite::Message;

fn cfg(p: &[&Upstream], ws: &WsEcho, extra: &str) -> String {
    let servers: Vec<String> = p
        .iter()
        .map(|u| format!("{{ addr = \"{}\" }}", u.addr))
        .collect();
    format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[[route]]\nprefix = \"/ws\"\npool = \"ws\"\n\
         [admin]\naddr = \"127.0.0.1:0\"\n{extra}\n\
         [pool.p]\npolicy = \"round_robin\"\nservers = [{}]\n\
         [pool.ws]\nservers = [{{ addr = \"{}\" }}]\n",
        servers.join(", "),
        ws.addr
    )
}

fn parse(text: &str) -> Config {
    let mut c = Config::parse(text, "test.toml").unwrap();
    c.listen.addr = "127.0.0.1:0".parse().unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_tunnels_survive_reloads_that_remove_their_servers() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let w1 = WsEcho::start("w1").await;
    let w2 = WsEcho::start("w2").await;
    let gw = TestGateway::start(&cfg(&[&a], &w1, "")).await;
    let admin = gw.handle.admin_addr().unwrap();
    let load = Load::start(gw.addr, "/x", 4);
    assert!(eventually(10, || load.count("a") > 20).await);

    // Open SSE streams on a (gated: they stay open until the test acks)...
    let mut streams = Vec::new();
    for _ in 0..3 {
        let res = send_from(
            None,
            gw.addr,
            request("GET", gw.addr, "/sse-gated", &[], ""),
        )
        .await
        .unwrap();
        assert_eq!(res.status(), 200);
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(String::from_utf8_lossy(&first).contains("event 0"));
        streams.push(body);
    }
    // ...and WebSocket tunnels to w1.
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        let (mut s, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
            .await
            .unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), Message::text("w1"));
        tunnels.push(s);
    }
    assert_eq!(w1.open.load(SeqCst), 3);

    // Reload: a and w1 leave their pools.
    let summary = gw.handle.reload(parse(&cfg(&[&b], &w2, ""))).await.unwrap();
    assert_eq!(
        summary.servers_removed,
        vec![format!("p/{}", a.addr), format!("ws/{}", w1.addr)]
    );
    assert_eq!(
        summary.servers_added,
        vec![format!("p/{}", b.addr), format!("ws/{}", w2.addr)]
    );
    // New requests go to b only.
    let b_before = load.count("b");
    assert!(eventually(10, || load.count("b") > b_before + 20).await);
    let a_hits = a.hits();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.hits(), a_hits, "a got new requests after it was removed");
    // New tunnels go to w2.
    let (mut s2, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    assert_eq!(s2.next().await.unwrap().unwrap(), Message::text("w2"));

    // More reloads back and forth under load, and a rejected one.
    for i in 0..10 {
        let text = if i % 2 == 0 {
            cfg(&[&a, &b], &w2, "")
        } else {
            cfg(&[&b], &w2, "")
        };
        gw.handle.reload(parse(&text)).await.unwrap();
        if i == 5 {
            let mut bad = parse(&text);
            bad.routes[0].pool = "missing".into();
            assert!(gw.handle.reload(bad).await.is_err());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The old tunnels to w1 still work both ways...
    for t in tunnels.iter_mut() {
        t.send(Message::text("still there?")).await.unwrap();
        assert_eq!(
            t.next().await.unwrap().unwrap(),
            Message::text("still there?")
        );
    }
    // ...and the old streams deliver every remaining event and end cleanly.
    a.state.sse_ack.send_replace(SSE_EVENTS);
    for mut body in streams {
        let mut text = String::new();
        while let Some(f) = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("stream stalled")
        {
            let f = f.expect("stream cut");
            if let Some(d) = f.data_ref() {
                text.push_str(&String::from_utf8_lossy(d));
            }
        }
        assert_eq!(text.matches("data: event").count() as u64, SSE_EVENTS - 1);
        assert!(!text.contains("gave-up"));
        assert!(text.contains("event 9"));
    }
    let m = scrape(admin, None).await;
    assert_eq!(
        m.one("ragfleet_gateway_websockets_open", &[("pool", "ws")]),
        Some(4.0)
    );
    for t in tunnels.iter_mut() {
        t.close(None).await.unwrap();
    }
    drop(tunnels);
    assert!(eventually(10, || w1.open.load(SeqCst) == 0).await);

    let (ok, failures) = load.stop().await;
    assert!(ok > 100, "load made only {ok} requests");
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let m = scrape(admin, None).await;
    assert_eq!(
        m.one(
            "ragfleet_gateway_config_reloads_total",
            &[("result", "success")]
        ),
        Some(11.0)
    );
    assert_eq!(
        m.one(
            "ragfleet_gateway_config_reloads_total",
            &[("result", "failure")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.one("ragfleet_gateway_config_last_reload_successful", &[]),
        Some(1.0)
    );
    drop(s2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_stay_keep_their_state() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let w = WsEcho::start("w").await;
    let gw = TestGateway::start(&cfg(&[&a, &b], &w, "")).await;
    let pool = gw.handle.pool("p").unwrap();
    let sa = pool.server(&a.addr.to_string()).unwrap();
    sa.set_drained(true);
    // A request in flight on b across the reload.
    let addr = gw.addr;
    let held = tokio::spawn(async move { get(addr, "/hold", &[]).await });
    assert!(eventually(10, || b.state.holding.load(SeqCst) == 1).await);

    // Policy and settings change; both servers stay.
    let text = cfg(&[&a, &b], &w, "").replace("round_robin", "least_conn");
    let summary = gw.handle.reload(parse(&text)).await.unwrap();
    assert!(summary.servers_added.is_empty() && summary.servers_removed.is_empty());
    let new_pool = gw.handle.pool("p").unwrap();
    assert!(!Arc::ptr_eq(&pool, &new_pool));
    assert_eq!(
        new_pool.policy(),
        ragfleet_gateway::config::Policy::LeastConn
    );
    let sa2 = new_pool.server(&a.addr.to_string()).unwrap();
    assert!(Arc::ptr_eq(&sa, &sa2), "same server state object");
    assert!(sa2.is_drained(), "drain survives the reload");
    let sb2 = new_pool.server(&b.addr.to_string()).unwrap();
    assert_eq!(sb2.inflight(), 1, "in-flight count carried over");
    b.state.release.send_replace(true);
    assert_eq!(held.await.unwrap().body, "b");
    assert!(eventually(5, || sb2.inflight() == 0).await);
    for _ in 0..5 {
        assert_eq!(gw.get("/x").await.body, "b");
    }
}

/// Collects ERROR events of the gateway (the reload rejection line).
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Errors {
    fn on_event(&self, ev: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *ev.metadata().level() != tracing::Level::ERROR {
            return;
        }
        struct V(String);
        impl tracing::field::Visit for V {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={v:?} ", f.name()));
            }
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                self.0.push_str(&format!("{}={v} ", f.name()));
            }
        }
        let mut v = V(String::new());
        ev.record(&mut v);
        self.0.lock().unwrap().push(v.0);
    }
}

#[tokio::test]
async fn an_invalid_config_on_reload_keeps_the_old_one() {
    use tracing_subscriber::layer::SubscriberExt;
    let errors = Errors::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(errors.clone()));
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let w = WsEcho::start("w").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, cfg(&[&a], &w, "")).unwrap();
    let mut c = Config::load(&file).unwrap();
    c.listen.addr = "127.0.0.1:0".parse().unwrap();
    let gw = TestGateway::start_cfg(c).await;
    gw.handle.set_config_path(&file);
    let admin = gw.handle.admin_addr().unwrap();
    let fname = file.display().to_string();

    // A TOML syntax error on line 3.
    std::fs::write(&file, "[[route]]\nprefix = \"/\"\npool = = \"p\"\n").unwrap();
    let e = gw.handle.reload_from_path().await.unwrap_err().to_string();
    assert!(e.contains(&fname) && e.contains("line 3"), "{e}");
    let logged = errors.0.lock().unwrap().join("\n");
    assert!(
        logged.contains(&fname) && logged.contains("line 3") && logged.contains("rejected"),
        "{logged}"
    );
    assert_eq!(gw.get("/x").await.body, "a");

    // An unknown key, and a broken reference.
    std::fs::write(&file, cfg(&[&b], &w, "").replace("policy =", "polcy =")).unwrap();
    let e = gw.handle.reload_from_path().await.unwrap_err().to_string();
    assert!(e.contains("unknown field") && e.contains("polcy"), "{e}");
    std::fs::write(
        &file,
        cfg(&[&b], &w, "").replace("pool = \"ws\"", "pool = \"wss\""),
    )
    .unwrap();
    let e = gw.handle.reload_from_path().await.unwrap_err().to_string();
    assert!(e.contains(&fname) && e.contains("route[1].pool"), "{e}");
    // The same through the admin API.
    let r = admin_call(admin, "POST", "/admin/reload", None, "").await;
    assert_eq!(r.status, 422);
    let msg = json(&r)["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains(&fname) && msg.contains("route[1].pool"),
        "{msg}"
    );
    // A missing file.
    std::fs::remove_file(&file).unwrap();
    assert!(gw.handle.reload_from_path().await.is_err());

    // The old configuration is still in force everywhere.
    for _ in 0..5 {
        assert_eq!(gw.get("/x").await.body, "a");
    }
    assert_eq!(pool_addrs(&gw.handle, "p"), vec![a.addr.to_string()]);
    let m = scrape(admin, None).await;
    assert_eq!(
        m.one(
            "ragfleet_gateway_config_reloads_total",
            &[("result", "failure")]
        ),
        Some(5.0)
    );
    assert_eq!(
        m.one(
            "ragfleet_gateway_config_reloads_total",
            &[("result", "success")]
        ),
        Some(0.0)
    );
    assert_eq!(
        m.one("ragfleet_gateway_config_last_reload_successful", &[]),
        Some(0.0)
    );

    // A valid one is then taken.
    std::fs::write(&file, cfg(&[&b], &w, "")).unwrap();
    let r = admin_call(admin, "POST", "/admin/reload", None, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        json(&r)["changes"]["servers_added"][0],
        format!("p/{}", b.addr)
    );
    assert_eq!(gw.get("/x").await.body, "b");
    let m = scrape(admin, None).await;
    assert_eq!(
        m.one("ragfleet_gateway_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert!(
        m.one(
            "ragfleet_gateway_config_last_reload_success_timestamp_seconds",
            &[]
        )
        .unwrap()
            > 1.7e9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_are_reloaded() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let w = WsEcho::start("w").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    let quick = "[reload]\ndebounce = \"100ms\"\n";
    std::fs::write(&file, cfg(&[&a], &w, quick)).unwrap();
    let mut c = Config::load(&file).unwrap();
    c.listen.addr = "127.0.0.1:0".parse().unwrap();
    let gw = TestGateway::start_cfg(c).await;
    gw.handle.set_config_path(&file);
    let _watcher = ragfleet_gateway::reload::watch_config_file(&gw.handle).unwrap();
    let admin = gw.handle.admin_addr().unwrap();
    let reloads = |result: &'static str| async move {
        scrape(admin, None)
            .await
            .one(
                "ragfleet_gateway_config_reloads_total",
                &[("result", result)],
            )
            .unwrap()
    };

    // Editors often replace the file: write a new one and rename it over.
    let tmp = dir.path().join(".gateway.toml.swp");
    std::fs::write(&tmp, cfg(&[&a, &b], &w, quick)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let both = {
        let mut v = vec![a.addr.to_string(), b.addr.to_string()];
        v.sort();
        v
    };
    let h = gw.handle.clone();
    assert!(eventually(10, || pool_addrs(&h, "p") == both).await);
    assert_eq!(reloads("success").await, 1.0);

    // Rewriting the same text is not a reload.
    std::fs::write(&file, cfg(&[&a, &b], &w, quick)).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(reloads("success").await, 1.0);

    // A broken edit is rejected; the running set stays.
    std::fs::write(&file, "[[route]\n").unwrap();
    for _ in 0..100 {
        if reloads("failure").await == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reloads("failure").await, 1.0);
    assert_eq!(pool_addrs(&gw.handle, "p"), both);

    // Fixed: taken.
    std::fs::write(&file, cfg(&[&b], &w, quick)).unwrap();
    let only_b = vec![b.addr.to_string()];
    assert!(eventually(10, || pool_addrs(&h, "p") == only_b).await);
    assert_eq!(gw.get("/x").await.body, "b");
}
