//! SSE streamed event by event, WebSocket tunnels, graceful shutdown.
mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio_tungstenite::tungstenite::Message;

/// Read an SSE body, calling `on_event(i)` as each complete event arrives.
/// Returns the arrival time of each event, and whether the body ended cleanly.
async fn read_events(
    res: http::Response<Incoming>,
    mut on_event: impl FnMut(u64),
) -> (Vec<(String, Instant)>, Result<(), String>) {
    let mut body = res.into_body();
    let mut buf = String::new();
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), body.frame()).await {
            Err(_) => return (events, Err("stalled".into())),
            Ok(None) => return (events, Ok(())),
            Ok(Some(Err(e))) => return (events, Err(e.to_string())),
            Ok(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    buf.push_str(&String::from_utf8_lossy(d));
                    while let Some(end) = buf.find("\n\n") {
                        let ev: String = buf.drain(..end + 2).collect();
                        events.push((ev.trim().to_string(), Instant::now()));
                        on_event(events.len() as u64);
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_arrives_event_by_event() {
    let a = Upstream::start("a").await;
    let gw = TestGateway::start(&pool_config(&[(&a, 1, false)], "round_robin", "")).await;

    // Gated: the upstream sends event i+1 only after the client has seen
    // event i. A proxy that buffered would deadlock here (the upstream gives
    // up after 20 s and says so in the stream).
    let res = send_from(
        None,
        gw.addr,
        request("GET", gw.addr, "/sse-gated", &[], ""),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let ack = a.state.sse_ack.clone();
    let (events, end) = read_events(res, |n| {
        let _ = ack.send(n);
    })
    .await;
    end.unwrap();
    assert!(
        events.iter().all(|(e, _)| !e.contains("gave-up")),
        "upstream waited in vain: {events:?}"
    );
    assert_eq!(events.len() as u64, SSE_EVENTS);

    // Free-running, one event every 100 ms: each event reaches the client
    // long before the stream ends (a batching proxy delivers them all at the
    // end), i.e. arrivals are spread like the sends.
    let res = send_from(None, gw.addr, request("GET", gw.addr, "/sse", &[], ""))
        .await
        .unwrap();
    let (events, end) = read_events(res, |_| {}).await;
    end.unwrap();
    let sent = a.state.sse_sent.lock().unwrap().clone();
    assert_eq!(events.len(), sent.len());
    let span = *sent.last().unwrap() - sent[0];
    for (i, ((ev, arrived), sent_at)) in events.iter().zip(&sent).enumerate() {
        assert_eq!(ev, &format!("id: {i}\ndata: event {i}"));
        let delay = arrived.saturating_duration_since(*sent_at);
        assert!(
            delay < span / 2,
            "event {i} arrived {delay:?} after it was sent (stream spans {span:?}): batched"
        );
    }
    let arrival_span = events.last().unwrap().1 - events[0].1;
    assert!(
        arrival_span >= span / 2,
        "arrivals bunched: {arrival_span:?} for sends over {span:?}"
    );
}

/// A real WebSocket echo server; `closed` turns true when a client's socket ends.
async fn ws_echo_server(closed: Arc<AtomicBool>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let closed = closed.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) if t.as_str() == "bye" => {
                            let _ = ws.close(None).await;
                            break;
                        }
                        Message::Text(_) | Message::Binary(_) => {
                            let sent = ws.send(msg).await;
                            if sent.is_err() {
                                break;
                            }
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                // Drain until the TCP connection really ends.
                while let Some(Ok(_)) = ws.next().await {}
                closed.store(true, SeqCst);
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_gateway() {
    let closed = Arc::new(AtomicBool::new(false));
    let up = ws_echo_server(closed.clone()).await;
    let toml = format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\nservers = [{{ addr = \"{up}\" }}]\n[pool.p.timeouts]\nwebsocket_idle = \"30s\"\n"
    );
    let gw = TestGateway::start(&toml).await;
    let url = format!("ws://{}/ws", gw.addr);

    // Client closes: the upstream side is closed too.
    let (mut ws, res) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(res.status(), 101);
    assert!(res.headers().contains_key("x-request-id"));
    for i in 0..20 {
        let msg = format!("hello {i}");
        ws.send(Message::text(msg.clone())).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, Message::text(msg));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let back = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back, Message::binary(vec![0u8, 1, 2, 255]));
    let pool = gw.handle.pool("p").unwrap();
    assert_eq!(
        pool.snapshot()[0].inflight,
        1,
        "an open tunnel counts as in flight"
    );
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    assert!(
        eventually(20, || closed.load(SeqCst)).await,
        "upstream side stayed open"
    );
    drop(ws);
    assert!(
        eventually(20, || pool.snapshot()[0].inflight == 0).await,
        "tunnel still counted"
    );

    // Upstream closes: the client sees the close and the end of the stream.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text("bye")).await.unwrap();
    let mut got_close = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("client side stayed open")
        {
            Some(Ok(Message::Close(_))) => got_close = true,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    assert!(got_close);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_idle_tunnel_is_closed() {
    let closed = Arc::new(AtomicBool::new(false));
    let up = ws_echo_server(closed.clone()).await;
    let toml = format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\nservers = [{{ addr = \"{up}\" }}]\n[pool.p.timeouts]\nwebsocket_idle = \"300ms\"\n"
    );
    let gw = TestGateway::start(&toml).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    assert!(ws.next().await.unwrap().is_ok());
    // Silence: the gateway cuts both sides.
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(end.is_ok(), "idle tunnel never closed");
    assert!(eventually(20, || closed.load(SeqCst)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_an_in_flight_stream() {
    let a = Upstream::start("a").await;
    let mut gw = TestGateway::start(&pool_config(&[(&a, 1, false)], "round_robin", "")).await;
    let addr = gw.addr;
    let res = send_from(None, addr, request("GET", addr, "/sse", &[], ""))
        .await
        .unwrap();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let mut first_tx = Some(first_tx);
    let reader = tokio::spawn(read_events(res, move |_| {
        if let Some(tx) = first_tx.take() {
            let _ = tx.send(());
        }
    }));
    first_rx.await.unwrap();
    let task = gw.shutdown();
    // New connections are refused once the listener is closed...
    assert!(
        eventually(20, || std::net::TcpStream::connect(addr).is_err()).await,
        "still accepting after shutdown"
    );
    // ...while the stream in flight runs to its end.
    let (events, end) = reader.await.unwrap();
    end.expect("in-flight stream was cut");
    assert_eq!(events.len() as u64, SSE_EVENTS);
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_cuts_what_remains() {
    let a = Upstream::start("a").await;
    let mut toml = pool_config(&[(&a, 1, false)], "round_robin", "");
    toml.insert_str(0, "[listen]\nshutdown_timeout = \"300ms\"\n");
    let mut gw = TestGateway::start(&toml).await;
    let addr = gw.addr;
    let held = tokio::spawn(async move { try_get(addr, "/hold", &[]).await });
    assert!(eventually(20, || a.state.holding.load(SeqCst) == 1).await);
    let started = Instant::now();
    let task = gw.shutdown();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "did not wait for the deadline"
    );
    assert!(
        held.await.unwrap().is_err(),
        "the held request should have been cut"
    );
}

/// An event stream the upstream cuts between events ends, for the client,
/// with an `error` event and a clean end of stream (a fetch or EventSource
/// client sees why, instead of a network error); a non-SSE body cut the
/// same way still aborts the client connection (retries.rs checks that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_event_stream_ends_with_an_error_event() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&pool_config(&[(&up, 1, false)], "round_robin", "")).await;
    let res = send_from(None, gw.addr, request("GET", gw.addr, "/sse-cut", &[], ""))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let r = read(res).await.expect("the cut stream ends cleanly");
    let events: Vec<&str> = r.body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{:?}", r.body);
    assert_eq!(events[0], "id: 0\ndata: event 0");
    assert_eq!(events[1], "id: 1\ndata: event 1");
    let err = events[2];
    assert!(err.starts_with("event: error\ndata: "), "{err}");
    let data: serde_json::Value =
        serde_json::from_str(err.trim_start_matches("event: error\ndata: ")).unwrap();
    assert_eq!(data["code"], "upstream_lost", "{data}");
    assert!(data["message"].as_str().unwrap().contains("cut"), "{data}");
}
