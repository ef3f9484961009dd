//! Bad requests over raw TCP: each gets the right status (from hyper's
//! parser or from the gateway), and the gateway keeps serving afterwards.
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send `raw`, read until the server closes (or 5 s), return what came back.
async fn raw(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    read_all(&mut s, Duration::from_secs(5)).await
}

async fn read_all(s: &mut TcpStream, limit: Duration) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {resp:?}"))
}

/// Routes: only `/api/` and `/health` reach the upstream (an allow-list).
async fn gateway(up: &Upstream, listen_extra: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"
[listen]
max_body_size = "1KiB"
max_header_size = "8KiB"
{listen_extra}

[[route]]
prefix = "/api/"
pool = "p"

[[route]]
prefix = "/health"
pool = "p"

[pool.p]
policy = "round_robin"
servers = [{{ addr = "{}" }}]
"#,
        up.addr
    ))
    .await
}

async fn still_serves(gw: &TestGateway) {
    let r = raw(
        gw.addr,
        b"GET /api/ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&r), 200, "gateway no longer serving: {r}");
}

#[tokio::test]
async fn each_bad_request_gets_its_status_and_the_gateway_keeps_serving() {
    let up = Upstream::start("up").await;
    let gw = gateway(&up, "").await;
    let big_header = format!(
        "GET /api/x HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>, u16, bool)> = vec![
        ("absolute-form", b"GET http://evil.example/api/x HTTP/1.1\r\nHost: evil.example\r\n\r\n".to_vec(), 400, true),
        ("absolute-form https", b"GET https://t/api/x HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400, true),
        ("CONNECT", b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n".to_vec(), 400, true),
        ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400, true),
        ("traversal above root", b"GET /../etc/passwd HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400, true),
        ("encoded traversal above root", b"GET /api/%2e%2e/%2E%2E/etc HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400, true),
        ("encoded slash", b"GET /api/a%2Fb HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400, true),
        ("encoded NUL", b"GET /api/a%00 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400, true),
        ("bad escape", b"GET /api/a%zz HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400, true),
        // Out of the allow-list once normalised: 404, never the upstream.
        ("traversal out of /api/", b"GET /api/../admin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(), 404, true),
        ("encoded traversal out of /api/", b"GET /api/%2e%2e/admin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(), 404, true),
        ("mixed traversal out of /api/", b"GET /api/.%2E/admin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(), 404, true),
        ("CL + TE", b"POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400, true),
        ("TE + CL", b"POST /api/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n".to_vec(), 400, true),
        ("duplicate differing CL", b"POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(), 400, false),
        ("CL list", b"POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 4\r\n\r\nabcd".to_vec(), 400, false),
        ("TE not chunked", b"POST /api/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), 400, false),
        ("obs-fold", b"GET /api/x HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  folded\r\n\r\n".to_vec(), 400, false),
        ("space before colon", b"GET /api/x HTTP/1.1\r\nHost: t\r\nX-A : 1\r\n\r\n".to_vec(), 400, false),
        ("two Host headers", b"GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400, true),
        ("header over max_header_size", big_header.into_bytes(), 431, false),
        ("declared body over max_body_size", format!("POST /api/echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", 4096).into_bytes(), 413, true),
    ];
    for (name, bytes, want, ours) in cases {
        let r = raw(gw.addr, &bytes).await;
        assert_eq!(status(&r), want, "{name}: {r}");
        // The gateway's own refusals carry a JSON body; the others come
        // from hyper's parser.
        assert_eq!(r.contains("{\"error\":"), ours, "{name}: {r}");
        still_serves(&gw).await;
    }
    assert_eq!(
        up.hits(),
        // Only the still_serves probes reached the upstream.
        22
    );
    assert_eq!(gw.handle.hygiene().bad_requests(), 12);
}

#[tokio::test]
async fn normalised_path_is_what_the_upstream_gets() {
    let up = Upstream::start("up").await;
    let gw = gateway(&up, "").await;
    let r = raw(
        gw.addr,
        b"GET /health/../api/./x//%65cho-headers?q=%2e%2e HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    // /api/x/echo-headers is not a special path upstream: it answers its name.
    assert_eq!(status(&r), 200, "{r}");
    let r = raw(
        gw.addr,
        b"GET /api/../%2e/echo-headers HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        status(&r),
        404,
        "normalised to /echo-headers: not routed: {r}"
    );
    // The upstream saw the clean path (its echo handler matched exactly).
    let up2 = Upstream::start("up2").await;
    let gw2 = TestGateway::start(&pool_config(&[(&up2, 1, false)], "round_robin", "")).await;
    let r = raw(
        gw2.addr,
        b"GET /a/..//%65cho-headers?q=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(
        r.contains("\"x-forwarded-for\""),
        "echo handler reached: {r}"
    );
}

#[tokio::test]
async fn chunked_body_over_the_limit_mid_stream_gets_413() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&format!(
        "[listen]\nmax_body_size = \"1KiB\"\n{}",
        pool_config(&[(&up, 1, false)], "round_robin", "")
    ))
    .await;
    // Within the limit, chunked: passes through.
    let r = raw(
        gw.addr,
        b"POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(r.ends_with("hello"), "{r}");

    // 3 chunks of 512 bytes = 1.5 KiB > 1 KiB, sent one after another.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("200\r\n{}\r\n", "x".repeat(512));
    for _ in 0..3 {
        // The gateway may close the connection as soon as it has answered.
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = read_all(&mut s, Duration::from_secs(5)).await;
    assert_eq!(status(&r), 413, "{r}");
    assert!(r.contains("body_too_large"), "{r}");
    assert_eq!(gw.handle.hygiene().body_too_large(), 1);
    // A client's oversized body is not the upstream's fault.
    let p = gw.handle.pool("p").unwrap();
    assert!(p.servers().iter().all(|s| s.available()));
    assert_eq!(gw.get("/x").await.status, 200);
}

#[tokio::test]
async fn cl_te_conflict_is_caught_on_a_keep_alive_connection() {
    let up = Upstream::start("up").await;
    let gw = gateway(&up, "").await;
    // A normal request with a body, then a smuggling attempt, same connection.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /api/echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(status(&first), 200, "{first}");
    s.write_all(b"POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let rest = read_all(&mut s, Duration::from_secs(5)).await;
    assert_eq!(status(&rest), 400, "{rest}");
    assert!(rest.contains("bad_framing"), "{rest}");
    assert_eq!(
        rest.matches("HTTP/1.1").count(),
        1,
        "connection closed after the 400; nothing smuggled: {rest}"
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn slowloris_is_cut_at_header_read_timeout() {
    let up = Upstream::start("up").await;
    let gw = gateway(
        &up,
        "header_read_timeout = \"1s\"\nkeepalive_timeout = \"10s\"",
    )
    .await;

    // A head trickling in one byte every 200 ms never completes in time.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let start = Instant::now();
    let head = b"GET /api/x HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for b in head.iter() {
        if s.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if start.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    if !cut {
        // Writes into a closed socket may still succeed once; reading tells.
        let r = read_all(&mut s, Duration::from_secs(2)).await;
        assert!(!r.contains("200 OK"), "slow head was served: {r}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "not cut: {:?}",
        start.elapsed()
    );
    assert!(eventually(5, || gw.handle.hygiene().header_timeouts() >= 1).await);

    // A connection that sends nothing at all is cut too.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut [0u8; 8])).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "silent connection left open"
    );
    assert_eq!(up.hits(), 0);
    still_serves(&gw).await;
}

#[tokio::test]
async fn keep_alive_idle_is_separate_from_the_header_timeout() {
    let up = Upstream::start("up").await;
    let gw = gateway(
        &up,
        "header_read_timeout = \"500ms\"\nkeepalive_timeout = \"2s\"",
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req = b"GET /api/x HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    s.write_all(req).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(status(&String::from_utf8_lossy(&buf[..n])), 200);
    // Idle for longer than the header timeout: still open (keep-alive).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    s.write_all(req).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status(&String::from_utf8_lossy(&buf[..n])), 200);
    // Then idle past keepalive_timeout: the gateway closes it.
    let idle_from = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf))
        .await
        .expect("idle connection not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(1500),
        "closed too early: {idle:?}"
    );
    assert!(gw.handle.hygiene().idle_closed() >= 1);
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn a_long_stream_is_not_cut_by_the_keep_alive_timeout() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&format!(
        "[listen]\nkeepalive_timeout = \"300ms\"\nheader_read_timeout = \"300ms\"\n{}",
        pool_config(&[(&up, 1, false)], "round_robin", "")
    ))
    .await;
    // 10 events 100 ms apart: 1 s of streaming with no request in between.
    let res = send_from(None, gw.addr, request("GET", gw.addr, "/sse", &[], ""))
        .await
        .unwrap();
    let r = read(res).await.unwrap();
    assert_eq!(r.body.matches("data: event").count() as u64, SSE_EVENTS);
}

/// An upstream that answers every request with an endless chunked body in
/// 64 KiB chunks; sends the request line on `ended` when a write fails (its
/// reader is gone).
async fn endless_upstream(ended: tokio::sync::mpsc::UnboundedSender<String>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let ended = ended.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let chunk = [
                    format!("{:x}\r\n", 64 * 1024).into_bytes(),
                    vec![b'x'; 64 * 1024],
                    b"\r\n".to_vec(),
                ]
                .concat();
                let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                loop {
                    out.extend_from_slice(&chunk);
                    if s.write_all(&out).await.is_err() {
                        let line = String::from_utf8_lossy(&head);
                        let _ = ended.send(line.lines().next().unwrap_or("").to_string());
                        return;
                    }
                    out.clear();
                }
            });
        }
    });
    addr
}

/// A client that sends a request and then never reads: once the socket
/// buffers are full the gateway's writes stall, and after
/// `listen.send_timeout` it closes the connection and drops the upstream
/// stream (whose writes then fail). Without the timeout both would be held
/// for ever. A client that reads gets the whole stream meanwhile.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_send_timeout() {
    let (tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let up = endless_upstream(tx).await;
    let gw = TestGateway::start(&format!(
        "[listen]\nsend_timeout = \"1s\"\n[[route]]\nprefix = \"/\"\npool = \"p\"\n\
         [pool.p]\nservers = [{{ addr = \"{up}\" }}]\n[pool.p.timeouts]\nbody_idle = \"600s\"\n"
    ))
    .await;
    let mut stalled = TcpStream::connect(gw.addr).await.unwrap();
    stalled
        .write_all(b"GET /stalled HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // A reading client alongside is not affected: 4 MiB arrive.
    let mut reader = TcpStream::connect(gw.addr).await.unwrap();
    reader
        .write_all(b"GET /reader HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = 0usize;
    let mut b = vec![0u8; 64 * 1024];
    while got < 4 << 20 {
        let n = reader.read(&mut b).await.unwrap();
        assert!(n > 0, "the reading client's stream ended after {got} bytes");
        got += n;
    }
    // The stalled client's upstream stream ends: the gateway gave up on it.
    // (The reader, no longer read either, may be cut too; it is not waited for.)
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = ended.recv().await {
            if line.starts_with("GET /stalled ") {
                return;
            }
        }
        panic!("the upstream stopped");
    })
    .await
    .expect("the stalled client's stream was never dropped");
    // And its connection is closed (what the buffers held, then EOF).
    let mut sink = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut sink)).await;
    assert!(
        matches!(r, Ok(Ok(_)) | Ok(Err(_))),
        "the stalled connection was not closed"
    );
    drop(reader);
}
