//! The gateway's own HTTP/1.1 upstream client (`h1.rs`) against upstreams
//! written on raw sockets, so each test controls the exact bytes: framing
//! (chunked with extensions and trailers, byte by byte; Content-Length;
//! until close; HEAD), interim 1xx responses, keep-alive reuse, upstreams
//! that close kept-alive connections silently, and malformed answers.
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::*;

/// How the raw upstream answers each request head it reads.
#[derive(Clone, Copy)]
enum Script {
    /// `Content-Length` body, connection kept alive.
    Length,
    /// Chunked body with a chunk extension and a trailer, one byte per write.
    ChunkedBytewise,
    /// No length: the body runs until the upstream closes.
    UntilClose,
    /// `100 Continue`, then a `Content-Length` answer.
    Interim,
    /// Answers one request, then closes without saying so beforehand.
    OneThenSilentClose,
    /// Not HTTP at all.
    Garbage,
    /// A head larger than any upstream may send.
    HugeHead,
    /// Promises 100 bytes, sends 10, closes.
    ShortBody,
}

struct RawUpstream {
    addr: SocketAddr,
    /// Connections accepted.
    accepted: Arc<AtomicU64>,
    /// Request heads read.
    requests: Arc<AtomicU64>,
}

async fn raw_upstream(script: Script) -> RawUpstream {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let (acc, reqs) = (accepted.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else {
                return;
            };
            acc.fetch_add(1, SeqCst);
            let reqs = reqs.clone();
            tokio::spawn(serve_raw(sock, script, reqs));
        }
    });
    RawUpstream {
        addr,
        accepted,
        requests,
    }
}

/// Read one request head (and a Content-Length body); `None` at EOF.
async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, String)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                let n = sock.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            buf.drain(..end + 4 + len);
            return Some((head, body));
        }
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve_raw(mut sock: TcpStream, script: Script, reqs: Arc<AtomicU64>) {
    let mut buf = Vec::new();
    while let Some((head, body)) = read_request(&mut sock, &mut buf).await {
        let n = reqs.fetch_add(1, SeqCst) + 1;
        let head_only = head.starts_with("HEAD ");
        let text = format!("answer {n} to {}", body.len());
        let ok = match script {
            Script::Length | Script::OneThenSilentClose => {
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
                    text.len()
                );
                // `/slow`: the head at once, the body 1.5 s later.
                if head.starts_with("GET /slow ") {
                    let _ = sock.write_all(out.as_bytes()).await;
                    out.clear();
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                if !head_only {
                    out.push_str(&text);
                }
                sock.write_all(out.as_bytes()).await.is_ok()
            }
            Script::ChunkedBytewise => {
                let out = format!(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                     5;ext=1\r\nhello\r\n{:x}\r\n{text}\r\n0\r\nx-trailer: t\r\n\r\n",
                    text.len()
                );
                let mut ok = true;
                for b in out.as_bytes() {
                    ok &= sock.write_all(&[*b]).await.is_ok();
                    tokio::task::yield_now().await;
                }
                ok
            }
            Script::UntilClose => {
                let out = format!("HTTP/1.1 200 OK\r\n\r\n{text}");
                let _ = sock.write_all(out.as_bytes()).await;
                return;
            }
            Script::Interim => {
                let out = format!(
                    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                );
                sock.write_all(out.as_bytes()).await.is_ok()
            }
            Script::Garbage => {
                let _ = sock
                    .write_all(b"220 smtp.example ESMTP ready\r\n\r\n")
                    .await;
                return;
            }
            Script::HugeHead => {
                let mut out = String::from("HTTP/1.1 200 OK\r\n");
                for i in 0..2000 {
                    out.push_str(&format!("x-filler-{i}: {}\r\n", "y".repeat(40)));
                }
                out.push_str("content-length: 0\r\n\r\n");
                let _ = sock.write_all(out.as_bytes()).await;
                return;
            }
            Script::ShortBody => {
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                    .await;
                return;
            }
        };
        if !ok || matches!(script, Script::OneThenSilentClose) {
            return;
        }
    }
}

async fn gateway_for(up: &RawUpstream) -> TestGateway {
    let toml = format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\npolicy = \"round_robin\"\nmax_fails = 0\nservers = [{{ addr = \"{}\" }}]\n",
        up.addr
    );
    TestGateway::start(&toml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_are_reused() {
    let up = raw_upstream(Script::Length).await;
    let gw = gateway_for(&up).await;
    for i in 1..=20 {
        let r = gw.get("/x").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, format!("answer {i} to 0"));
    }
    // Sequential requests: one upstream connection serves them all.
    assert_eq!(up.accepted.load(SeqCst), 1);
    // A POST body is sent with its length, on the same connection.
    let res = send_from(None, gw.addr, request("POST", gw.addr, "/p", &[], "12345"))
        .await
        .unwrap();
    let r = read(res).await.unwrap();
    assert_eq!(r.body, "answer 21 to 5");
    assert_eq!(up.accepted.load(SeqCst), 1);
}

/// A connection's idle age counts from the end of its last response, not
/// from its start: a response that streamed for longer than the pool's
/// `keepalive_timeout` leaves a fresh idle connection, which the next
/// request reuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_age_counts_from_the_end_of_the_last_response() {
    let up = raw_upstream(Script::Length).await;
    let toml = format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\npolicy = \"round_robin\"\nmax_fails = 0\n\
         keepalive_timeout = \"1s\"\nservers = [{{ addr = \"{}\" }}]\n",
        up.addr
    );
    let gw = TestGateway::start(&toml).await;
    let slow = {
        let addr = gw.addr;
        tokio::spawn(async move {
            let res = send_from(None, addr, request("GET", addr, "/slow", &[], ""))
                .await
                .unwrap();
            read(res).await.unwrap()
        })
    };
    // While /slow streams: a second connection, idle from ~0.2 s on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gw.get("/x").await.status, 200);
    assert_eq!(up.accepted.load(SeqCst), 2);
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("answer 1 "), "{}", r.body);
    // /slow took 1.5 s (> keepalive_timeout) but ended just now: its
    // connection is fresh and serves the next request.
    assert_eq!(gw.get("/x").await.status, 200);
    assert_eq!(
        up.accepted.load(SeqCst),
        2,
        "the connection that served /slow was dropped as stale"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_responses_have_no_body_and_keep_the_connection() {
    let up = raw_upstream(Script::Length).await;
    let gw = gateway_for(&up).await;
    for _ in 0..3 {
        let res = send_from(None, gw.addr, request("HEAD", gw.addr, "/h", &[], ""))
            .await
            .unwrap();
        let r = read(res).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "");
    }
    let r = gw.get("/after").await;
    assert_eq!(
        r.body, "answer 4 to 0",
        "the body of HEAD was not mistaken for data"
    );
    assert_eq!(up.accepted.load(SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_are_decoded_byte_by_byte() {
    let up = raw_upstream(Script::ChunkedBytewise).await;
    let gw = gateway_for(&up).await;
    for i in 1..=3 {
        let r = gw.get("/c").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, format!("helloanswer {i} to 0"));
    }
    // The trailer ended each body exactly: the connection was reused.
    assert_eq!(up.accepted.load(SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_until_close_are_complete_and_not_reused() {
    let up = raw_upstream(Script::UntilClose).await;
    let gw = gateway_for(&up).await;
    for i in 1..=3 {
        let r = gw.get("/u").await;
        assert_eq!(r.body, format!("answer {i} to 0"));
    }
    assert_eq!(up.accepted.load(SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_skipped() {
    let up = raw_upstream(Script::Interim).await;
    let gw = gateway_for(&up).await;
    let r = gw.get("/i").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "answer 1 to 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silently_closed_keep_alive_connections_cost_no_request() {
    let up = raw_upstream(Script::OneThenSilentClose).await;
    let gw = gateway_for(&up).await;
    for i in 1..=30u64 {
        let r = gw.get("/s").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        // Let the upstream's close arrive before the next request, and
        // sometimes race it.
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(up.requests.load(SeqCst), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upstream_answers_are_502_with_json() {
    for script in [Script::Garbage, Script::HugeHead] {
        let up = raw_upstream(script).await;
        let gw = gateway_for(&up).await;
        let r = gw.get("/bad").await;
        assert_eq!(r.status, 502, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON error body");
        assert!(v["error"].is_object() || v["error"].is_string(), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_is_not_passed_off_as_complete() {
    let up = raw_upstream(Script::ShortBody).await;
    let gw = gateway_for(&up).await;
    // The client must see an error (the connection cut, before or after
    // the head), never a short body that looks whole.
    let got = match send_from(None, gw.addr, request("GET", gw.addr, "/short", &[], "")).await {
        Ok(res) => read(res).await,
        Err(e) => Err(e),
    };
    assert!(got.is_err(), "{got:?}");
}
