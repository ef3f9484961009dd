//! The client side of HTTP/1.1 over raw sockets: the gateway's own server
//! loop (`h1/server.rs`) for plain requests — pipelining, `Connection:
//! close`, framing, a client that leaves mid-stream — and its hand-over of a
//! connection to hyper's server for anything else (HTTP/1.0, chunked
//! uploads, WebSocket upgrades) in the middle of a keep-alive connection.
mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use common::*;

/// One response read off `s`: (head, body). Handles Content-Length and
/// chunked bodies; `buf` keeps what was read past it.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        fill(s, buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    buf.drain(..end + 4);
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    let mut body = Vec::new();
    if let Some(len) = length {
        while buf.len() < len {
            fill(s, buf).await;
        }
        body.extend(buf.drain(..len));
    } else if head.contains("transfer-encoding: chunked") {
        loop {
            let eol = loop {
                if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                fill(s, buf).await;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..eol]).unwrap(), 16).unwrap();
            buf.drain(..eol + 2);
            while buf.len() < size + 2 {
                fill(s, buf).await;
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    }
    (head, body)
}

async fn eof_within(s: &mut TcpStream, secs: u64) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(secs), s.read_to_end(&mut rest)).await,
        Ok(Ok(_))
    ) && rest.is_empty()
}

async fn gateway_for(up: &Upstream) -> TestGateway {
    TestGateway::start(&pool_config(&[(up, 1, false)], "round_robin", "")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::start("up").await;
    let gw = gateway_for(&up).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut reqs = String::new();
    for i in 0..5 {
        reqs.push_str(&format!(
            "GET /p{i} HTTP/1.1\r\nHost: t\r\nX-Request-Id: req-{i}\r\n\r\n"
        ));
    }
    reqs.push_str("POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    s.write_all(reqs.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..5 {
        let (head, body) = read_response(&mut s, &mut buf).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(
            head.contains(&format!("x-request-id: req-{i}")),
            "out of order: {head}"
        );
        assert!(head.contains("\r\ndate: "), "{head}");
        assert_eq!(body, b"up");
    }
    let (_, body) = read_response(&mut s, &mut buf).await;
    assert_eq!(body, b"hello");
    assert_eq!(up.hits(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_and_head_are_honoured() {
    let up = Upstream::start("up").await;
    let gw = gateway_for(&up).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\nGET /c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all))
        .await
        .expect("closed after the Connection: close request")
        .unwrap();
    let text = String::from_utf8_lossy(&all).to_lowercase();
    let (head1, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head1.starts_with("http/1.1 200"), "{text}");
    assert!(!head1.contains("connection: close"), "{text}");
    // No body after the HEAD answer: the next bytes are the next response.
    assert!(rest.starts_with("http/1.1 200"), "{text}");
    assert!(rest.contains("connection: close"), "{text}");
    assert!(rest.ends_with("\r\n\r\nup"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_and_chunked_uploads_move_the_connection_to_hyper() {
    let up = Upstream::start("up").await;
    let gw = gateway_for(&up).await;

    // HTTP/1.0 without keep-alive: answered, then closed.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /old HTTP/1.0\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all))
        .await
        .expect("HTTP/1.0 connection closed")
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains(" 200 "), "{text}");
    assert!(text.ends_with("up"), "{text}");

    // Keep-alive: a plain GET, then a chunked upload (hyper's from here on),
    // then more requests on the same connection.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf).await.1, b"up");
    s.write_all(
        b"POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut s, &mut buf).await.1, b"hello world");
    // A body announced but sent in two parts: also hyper's to read.
    s.write_all(b"POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nabc")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"def").await.unwrap();
    assert_eq!(read_response(&mut s, &mut buf).await.1, b"abcdef");
    s.write_all(b"GET /last HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf).await.1, b"up");
    assert_eq!(up.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_after_plain_requests_on_one_connection() {
    // A WebSocket echo upstream that also answers plain GETs.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(s)
                    .await
                    .expect("ws handshake");
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let plain = Upstream::start("plain").await;
    let toml = format!(
        "[[route]]\nprefix = \"/\"\npool = \"plain\"\n[[route]]\nprefix = \"/ws\"\npool = \"ws\"\n\
         [pool.plain]\nservers = [{{ addr = \"{}\" }}]\n[pool.ws]\nservers = [{{ addr = \"{up}\" }}]\n",
        plain.addr
    );
    let gw = TestGateway::start(&toml).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..3 {
        s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut s, &mut buf).await.1, b"plain");
    }
    assert!(buf.is_empty());
    let url = format!("ws://{}/ws", gw.addr);
    let (mut ws, res) = tokio_tungstenite::client_async(url, s)
        .await
        .expect("upgrade");
    assert_eq!(res.status(), 101);
    for i in 0..5 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, Message::text(format!("m{i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_a_silent_stream_releases_the_upstream() {
    // An upstream event stream that sends one event, then stays silent
    // until its connection is closed.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let flag = flag.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 4096];
                let _ = s.read(&mut req).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n10\r\ndata: one event\n\r\n")
                    .await;
                let mut rest = [0u8; 64];
                if let Ok(0) = s.read(&mut rest).await {
                    flag.store(true, SeqCst);
                }
            });
        }
    });
    let toml = format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\nservers = [{{ addr = \"{up}\" }}]\n\
         [pool.p.timeouts]\nbody_idle = \"600s\"\n"
    );
    let gw = TestGateway::start(&toml).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("one event") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("first event")
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    let pool = gw.handle.pool("p").unwrap();
    assert_eq!(pool.snapshot()[0].inflight, 1);
    drop(s);
    assert!(
        eventually(10, || closed.load(SeqCst)).await,
        "the upstream stream outlived its client"
    );
    assert!(eventually(10, || pool.snapshot()[0].inflight == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_closes_idle_keep_alive_connections() {
    let up = Upstream::start("up").await;
    let mut gw = gateway_for(&up).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf).await.1, b"up");
    let task = gw.shutdown();
    assert!(eof_within(&mut s, 10).await, "idle connection left open");
    let done = tokio::time::timeout(Duration::from_secs(10), task).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
}
