//! Retries: before the first response byte only, bounded, budgeted, and POST
//! only when the upstream cannot have seen it.
mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;

use bytes::Bytes;

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

/// Sends `method path` with a body of `chunks` on a fresh connection:
/// chunked transfer coding when `length` is None, else that Content-Length.
async fn send_streamed(
    gw: SocketAddr,
    method: &str,
    path: &str,
    chunks: Vec<Bytes>,
    length: Option<usize>,
) -> Result<Reply, String> {
    let stream = tokio::net::TcpStream::connect(gw)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let frames = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(hyper::body::Frame::data(c))),
    );
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", gw.to_string());
    if let Some(n) = length {
        req = req.header("content-length", n);
    }
    let req = req
        .body(http_body_util::StreamBody::new(frames))
        .map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    read(res).await
}

fn big_body(len: usize) -> Vec<Bytes> {
    let data: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
    data.chunks(64 * 1024).map(Bytes::copy_from_slice).collect()
}

/// Bodies too large to buffer (2 MiB over the 1 MiB `max_body_buffer`) and
/// chunked bodies stream through; when the first server refuses the
/// connection, nothing of them was sent and the next server gets them whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_bodies_are_retried_after_a_connect_failure() {
    let dead = dead_addr().await;
    let b = Upstream::start("b").await;
    let toml = format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\npolicy = \"round_robin\"\nmax_fails = 0\nservers = [{{ addr = \"{dead}\" }}, {{ addr = \"{}\" }}]\n",
        b.addr
    );
    let gw = TestGateway::start(&toml).await;
    let len = 2 * 1024 * 1024 + 17;
    let expected: String = big_body(len)
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    for i in 0..4 {
        // Round robin alternates: half of these go to the dead server first.
        let length = (i % 2 == 0).then_some(len);
        let r = send_streamed(gw.addr, "POST", "/echo-body", big_body(len), length)
            .await
            .unwrap();
        assert_eq!(
            r.status,
            200,
            "request {i} (length {length:?}): {}",
            &r.body[..r.body.len().min(200)]
        );
        assert_eq!(r.body.len(), len, "request {i}: body length");
        assert!(r.body == expected, "request {i}: body corrupted");
    }
    assert_eq!(b.hits(), 4);
}

/// A streamed body the first server has started to read cannot be sent
/// again: the request fails (502) instead of reaching a second server with
/// a truncated body — even for an idempotent method, which a buffered body
/// would have retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_once_read_is_never_retried() {
    // Reads once (the head and whatever of the body came with it), then
    // drops the connection.
    let reader = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reader_addr = reader.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            while let Ok((mut sock, _)) = reader.accept().await {
                let mut buf = vec![0u8; 64 * 1024];
                if let Ok(n) = sock.read(&mut buf).await {
                    if n > 0 {
                        accepted.fetch_add(1, SeqCst);
                    }
                }
            }
        });
    }
    let b = Upstream::start("b").await;
    let toml = format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\npolicy = \"round_robin\"\nmax_fails = 0\nservers = [{{ addr = \"{reader_addr}\" }}, {{ addr = \"{}\" }}]\n",
        b.addr
    );
    let gw = TestGateway::start(&toml).await;
    let len = 2 * 1024 * 1024;
    let r = send_streamed(gw.addr, "PUT", "/echo-body", big_body(len), None).await;
    match r {
        Ok(r) => assert_eq!(r.status, 502, "{}", &r.body[..r.body.len().min(200)]),
        // The gateway may also close the client connection mid-upload.
        Err(e) => eprintln!("client saw: {e}"),
    }
    assert_eq!(accepted.load(SeqCst), 1, "the first server got the request");
    assert_eq!(b.hits(), 0, "a half-sent streamed body was retried");
    // Small (buffered) PUTs to the same pair: the one that meets the
    // reader first is replayed on b.
    for _ in 0..2 {
        let r = send_streamed(gw.addr, "PUT", "/echo-body", big_body(1000), Some(1000))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 1000);
    }
    assert_eq!(accepted.load(SeqCst), 2);
    assert_eq!(b.hits(), 2);
}
