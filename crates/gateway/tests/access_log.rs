//! The access log: one `ragfleet::access` line per request, written when the
//! request is over, with the documented fields; JSON format; off switch.
mod common;
mod ops_common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use ops_common::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

type Lines = Arc<Mutex<Vec<BTreeMap<String, Value>>>>;

/// Records every `ragfleet::access` event's fields.
struct Capture(Lines);

struct Fields(BTreeMap<String, Value>);

impl Visit for Fields {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.0
            .insert(f.name().into(), Value::from(format!("{v:?}")));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, ev: &tracing::Event<'_>, _: Context<'_, S>) {
        if ev.metadata().target() != "ragfleet::access" {
            return;
        }
        let mut f = Fields(BTreeMap::new());
        ev.record(&mut f);
        self.0.lock().unwrap().push(f.0);
    }
}

fn capture() -> (Lines, tracing::subscriber::DefaultGuard) {
    let lines: Lines = Arc::default();
    let sub = tracing_subscriber::registry().with(Capture(lines.clone()));
    (lines, tracing::subscriber::set_default(sub))
}

/// The line with this request id (waits for it: it is written just after
/// the last response byte).
async fn line(lines: &Lines, request_id: &str) -> BTreeMap<String, Value> {
    for _ in 0..500 {
        if let Some(l) = lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.get("request_id").and_then(Value::as_str) == Some(request_id))
        {
            return l.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "no access line for {request_id}: {:?}",
        lines.lock().unwrap()
    );
}

fn s<'a>(l: &'a BTreeMap<String, Value>, k: &str) -> &'a str {
    l.get(k)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{k} missing in {l:?}"))
}

fn n(l: &BTreeMap<String, Value>, k: &str) -> f64 {
    l.get(k)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{k} missing in {l:?}"))
}

fn check_time(t: &str) {
    // 2025-01-31T12:00:00.123Z
    let b = t.as_bytes();
    assert_eq!(b.len(), 24, "{t}");
    assert!(
        t.ends_with('Z') && b[4] == b'-' && b[10] == b'T' && b[19] == b'.',
        "{t}"
    );
    let year: u32 = t[..4].parse().unwrap();
    assert!((2024..2100).contains(&year), "{t}");
}

// Current-thread runtime: the gateway's tasks run on this thread, where the
// capturing subscriber is the default.
#[tokio::test]
async fn one_line_per_request_with_every_field() {
    let (lines, _guard) = capture();
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let ws = WsEcho::start("w").await;
    let gw = TestGateway::start(&format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[[route]]\nprefix = \"/ws\"\npool = \"w\"\n[[route]]\nprefix = \"/api/\"\npool = \"p\"\n\
         [pool.p]\npolicy = \"round_robin\"\nservers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]\n\
         [pool.w]\nservers = [{{ addr = \"{}\" }}]\n",
        a.addr, b.addr, ws.addr
    ))
    .await;

    // A plain GET (round robin starts at a).
    let r = get(
        gw.addr,
        "/api/thing?token=secret",
        &[("x-request-id", "req-1")],
    )
    .await;
    assert_eq!(r.body, "a");
    let l = line(&lines, "req-1").await;
    check_time(s(&l, "time"));
    assert!(s(&l, "client").starts_with("127.0.0.1:"), "{l:?}");
    assert_eq!(s(&l, "method"), "GET");
    assert_eq!(s(&l, "path"), "/api/thing", "no query string in the log");
    assert_eq!(n(&l, "status"), 200.0);
    assert_eq!(s(&l, "upstream"), a.addr.to_string());
    assert_eq!(n(&l, "bytes_in"), 0.0);
    assert_eq!(n(&l, "bytes_out"), 1.0);
    assert_eq!(n(&l, "retries"), 0.0);
    assert_eq!(s(&l, "route"), "/api/");
    assert_eq!(s(&l, "pool"), "p");
    assert_eq!(s(&l, "outcome"), "ok");
    assert!(n(&l, "headers_ms") >= 0.0 && n(&l, "headers_ms") <= n(&l, "total_ms"));

    // A request id is generated when the client sends none; it is the one
    // returned to the client.
    let r = get(gw.addr, "/echo-body", &[]).await;
    let rid = r.headers["x-request-id"].to_str().unwrap().to_string();
    let l = line(&lines, &rid).await;
    assert_eq!(s(&l, "upstream"), b.addr.to_string());

    // A POST body counts in, the echo counts out.
    let res = send_from(
        None,
        gw.addr,
        request(
            "POST",
            gw.addr,
            "/echo-body",
            &[("x-request-id", "req-post")],
            "hello",
        ),
    )
    .await
    .unwrap();
    assert_eq!(read(res).await.unwrap().body, "hello");
    let l = line(&lines, "req-post").await;
    assert_eq!(s(&l, "method"), "POST");
    assert_eq!((n(&l, "bytes_in"), n(&l, "bytes_out")), (5.0, 5.0));

    // A retried request names the server that answered and counts the retry.
    b.state.status.store(503, SeqCst);
    let mut retried = None;
    for i in 0..4 {
        let id = format!("req-retry-{i}");
        assert_eq!(
            get(gw.addr, "/x", &[("x-request-id", &id)]).await.status,
            200
        );
        let l = line(&lines, &id).await;
        if n(&l, "retries") == 1.0 {
            retried = Some(l);
        }
    }
    let l = retried.expect("one of the requests tried b first");
    assert_eq!(s(&l, "upstream"), a.addr.to_string());
    assert_eq!(n(&l, "status"), 200.0);
    b.state.status.store(200, SeqCst);

    // No route: 404, no upstream.
    assert_eq!(
        TestGateway::start(&format!(
            "[[route]]\nprefix = \"/only/\"\npool = \"p\"\n[pool.p]\nservers = [{{ addr = \"{}\" }}]\n",
            a.addr
        ))
        .await
        .get("/elsewhere")
        .await
        .status,
        404
    );
    let l = lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.get("path").and_then(Value::as_str) == Some("/elsewhere"))
        .cloned()
        .expect("a line for the 404");
    assert_eq!(n(&l, "status"), 404.0);
    assert_eq!(s(&l, "upstream"), "-");
    assert_eq!(s(&l, "route"), "none");

    // An SSE stream is logged when it ends: ~1 s after its headers.
    let r = get(gw.addr, "/sse", &[("x-request-id", "req-sse")]).await;
    assert_eq!(r.body.matches("data:").count() as u64, SSE_EVENTS);
    let l = line(&lines, "req-sse").await;
    assert!(n(&l, "total_ms") >= 800.0, "{l:?}");
    assert!(n(&l, "headers_ms") < n(&l, "total_ms") - 500.0, "{l:?}");
    assert_eq!(n(&l, "bytes_out"), r.body.len() as f64);

    // A WebSocket tunnel is logged when it closes, with its bytes.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/ws", gw.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("x-request-id", "req-ws".parse().unwrap());
    let (mut sock, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(sock.next().await.unwrap().unwrap(), Message::text("w"));
    sock.send(Message::text("0123456789")).await.unwrap();
    assert_eq!(
        sock.next().await.unwrap().unwrap(),
        Message::text("0123456789")
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.get("request_id").and_then(Value::as_str) == Some("req-ws")),
        "logged before the tunnel closed"
    );
    sock.close(None).await.unwrap();
    drop(sock);
    let l = line(&lines, "req-ws").await;
    assert_eq!(n(&l, "status"), 101.0);
    assert_eq!(s(&l, "upstream"), ws.addr.to_string());
    assert!(n(&l, "bytes_in") >= 16.0, "{l:?}"); // the masked 10-byte frame
    assert!(n(&l, "bytes_out") >= 13.0, "{l:?}"); // "w" + the echo
    assert!(n(&l, "total_ms") >= 100.0);

    // Exactly one line per request so far.
    let ids: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| {
            l.get("request_id")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .collect();
    let mut uniq = ids.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(ids.len(), uniq.len(), "{ids:?}");
}

#[tokio::test]
async fn json_format_and_off_switch_follow_reloads() {
    let (lines, _guard) = capture();
    let a = Upstream::start("a").await;
    let base = format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\nservers = [{{ addr = \"{}\" }}]\n",
        a.addr
    );
    let gw = TestGateway::start(&format!("{base}[access_log]\nformat = \"json\"\n")).await;
    get(gw.addr, "/j", &[("x-request-id", "req-json")]).await;
    let raw = loop {
        if let Some(l) = lines.lock().unwrap().first().cloned() {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let msg: Value = serde_json::from_str(s(&raw, "message")).expect("message is JSON");
    for k in [
        "time",
        "client",
        "method",
        "path",
        "status",
        "upstream",
        "bytes_in",
        "bytes_out",
        "headers_ms",
        "total_ms",
        "request_id",
        "retries",
        "route",
        "pool",
        "outcome",
    ] {
        assert!(msg.get(k).is_some(), "{k} missing in {msg}");
    }
    assert_eq!(msg["request_id"], "req-json");
    assert_eq!(msg["status"], 200);
    assert_eq!(msg["upstream"], a.addr.to_string());
    check_time(msg["time"].as_str().unwrap());

    // Turned off by a reload: no more lines.
    let cfg = ragfleet_gateway::Config::parse(
        &format!("{base}[access_log]\nenabled = false\n"),
        "off.toml",
    )
    .unwrap();
    gw.handle.reload(cfg).await.unwrap();
    let before = lines.lock().unwrap().len();
    for _ in 0..3 {
        get(gw.addr, "/quiet", &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(lines.lock().unwrap().len(), before);
}
