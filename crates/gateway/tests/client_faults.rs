//! A client's fault is never an upstream's: a malformed, abandoned or
//! stalled request body gets a 4xx for that client (or a close), and every
//! server stays in rotation for everyone else. With default pool settings
//! (`max_fails = 1`), one such request per server used to take the whole
//! pool out of rotation for `fail_timeout`.
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Three servers, round robin, default passive health (`max_fails = 1`,
/// `fail_timeout = 10s`).
async fn setup(listen_extra: &str) -> (Vec<Upstream>, TestGateway) {
    let ups = vec![
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let servers: Vec<String> = ups
        .iter()
        .map(|u| format!("{{ addr = \"{}\" }}", u.addr))
        .collect();
    let gw = TestGateway::start(&format!(
        r#"
[listen]
max_body_size = "4MiB"
{listen_extra}

[[route]]
prefix = "/"
pool = "p"

[pool.p]
policy = "round_robin"
servers = [{}]
"#,
        servers.join(", ")
    ))
    .await;
    (ups, gw)
}

/// Send `head_and_body`, then either keep the connection open or close it,
/// and return what came back within `wait`.
async fn send(addr: SocketAddr, bytes: &[u8], close_after: bool, wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if close_after {
        // Abandon the request: close the whole connection mid-body.
        drop(s);
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {resp:?}"))
}

/// Every server answers at once: three GETs in a row land on three
/// different servers with 200 (a server out of rotation would be skipped,
/// and with all out the answer would be 503 `no_upstream`).
async fn all_in_rotation(gw: &TestGateway, what: &str) {
    let mut names = Vec::new();
    for _ in 0..3 {
        let r = gw.get("/who").await;
        assert_eq!(r.status, 200, "{what}: another client was refused: {r:?}");
        names.push(r.body.clone());
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 3, "{what}: a server left rotation: {names:?}");
}

#[tokio::test]
async fn malformed_chunk_sizes_get_400_and_no_server_leaves_rotation() {
    let (ups, gw) = setup("").await;
    for size in ["0x5", "+5", "-5", " 5", "5x", "", "8000000000000005x"] {
        // One bad request per server: each used to mark one server down.
        for _ in 0..3 {
            let req = format!(
                "POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\n"
            );
            let r = send(gw.addr, req.as_bytes(), false, Duration::from_secs(5)).await;
            assert_eq!(status(&r), 400, "chunk size {size:?}: {r}");
            assert!(
                r.contains("\"code\":\"bad_request_body\"") || !r.contains("{\"error\""),
                "chunk size {size:?}: {r}"
            );
            // No internal error text reaches the client.
            assert!(
                !r.contains("SendRequest") && !r.contains("user's Body"),
                "{r}"
            );
        }
        all_in_rotation(&gw, &format!("chunk size {size:?}")).await;
    }
    // The small body was read whole before anything went upstream: no
    // server ever saw a truncated request.
    let hits: u64 = ups.iter().map(|u| u.hits()).sum();
    assert_eq!(hits, 7 * 3, "only the rotation probes reach the servers");
}

#[tokio::test]
async fn a_chunk_over_the_body_limit_is_refused_before_streaming() {
    let (ups, gw) = setup("").await;
    for _ in 0..3 {
        let req = b"POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n8000000000000005\r\nhello";
        let r = send(gw.addr, req, false, Duration::from_secs(5)).await;
        assert_eq!(status(&r), 413, "{r}");
        assert!(r.contains("listen.max_body_size"), "{r}");
    }
    assert_eq!(ups.iter().map(|u| u.hits()).sum::<u64>(), 0);
    all_in_rotation(&gw, "huge chunk").await;
}

#[tokio::test]
async fn abandoned_uploads_leave_every_server_in_rotation() {
    let (_ups, gw) = setup("").await;
    // A chunked upload abandoned mid-body (small: read before sending).
    for _ in 0..3 {
        let req = b"POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n400\r\nhello";
        send(gw.addr, req, true, Duration::ZERO).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    all_in_rotation(&gw, "abandoned chunked upload").await;

    // A 2 MB Content-Length upload (over `retries.max_body_buffer`, so it
    // streams upstream) abandoned after 1 KB, once per server.
    for _ in 0..3 {
        let mut req =
            b"POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n".to_vec();
        req.extend(std::iter::repeat_n(b'x', 1024));
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&req).await.unwrap();
        // Let the request reach an upstream, then go away.
        tokio::time::sleep(Duration::from_millis(150)).await;
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    all_in_rotation(&gw, "abandoned 2 MB upload").await;

    // A large chunked upload that streams (over the buffer), abandoned.
    for _ in 0..3 {
        let mut req =
            b"POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..20 {
            req.extend(b"10000\r\n");
            req.extend(std::iter::repeat_n(b'y', 0x10000));
            req.extend(b"\r\n");
        }
        req.extend(b"10000\r\nyyy");
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&req).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    all_in_rotation(&gw, "abandoned large chunked upload").await;
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_no_server_leaves_rotation() {
    let (_ups, gw) = setup("client_body_timeout = \"500ms\"").await;
    // Small chunked body: stalls while the gateway reads it.
    let req = b"POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel";
    let r = send(gw.addr, req, false, Duration::from_secs(5)).await;
    assert_eq!(status(&r), 408, "{r}");
    assert!(r.contains("\"code\":\"request_body_timeout\""), "{r}");
    // Large declared body: stalls while an upstream waits for it.
    for _ in 0..3 {
        let mut req =
            b"POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n".to_vec();
        req.extend(std::iter::repeat_n(b'x', 1024));
        let r = send(gw.addr, &req, false, Duration::from_secs(5)).await;
        assert_eq!(status(&r), 408, "{r}");
    }
    all_in_rotation(&gw, "stalled bodies").await;
}

#[tokio::test]
async fn the_framing_guard_sees_heads_after_bare_lf_line_endings() {
    let (ups, gw) = setup("").await;
    // After a chunked request (hyper's server takes the connection, the
    // guard follows it), a head that ends in bare LFs, then a CL+TE request
    // on the same connection: the third must still be refused by the guard.
    let req = b"POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
GET /who HTTP/1.1\nHost: t\n\n\
POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let r = send(gw.addr, req, false, Duration::from_secs(5)).await;
    let statuses: Vec<u16> = r
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| status(&r[i..]))
        .collect();
    assert_eq!(statuses, vec![200, 200, 400], "{r}");
    assert!(r.contains("\"code\":\"bad_framing\""), "{r}");
    assert_eq!(ups.iter().map(|u| u.hits()).sum::<u64>(), 2);
}

#[tokio::test]
async fn a_valid_chunked_body_still_arrives_whole() {
    let (_ups, gw) = setup("").await;
    // Small: buffered and sent with its length.
    let req = b"POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let r = send(gw.addr, req, false, Duration::from_secs(5)).await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(r.ends_with("hello world"), "{r}");
    // Large: streamed after the first buffer-full, every byte in order.
    let mut req = b"POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    let mut want = Vec::new();
    for i in 0..40u8 {
        let chunk: Vec<u8> = std::iter::repeat_n(b'a' + i % 26, 0x8000).collect();
        req.extend(b"8000\r\n");
        req.extend(&chunk);
        req.extend(b"\r\n");
        want.extend(chunk);
    }
    req.extend(b"0\r\n\r\n");
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = s.split();
    let (_, resp) = tokio::join!(async { wr.write_all(&req).await.unwrap() }, async {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut buf)).await;
        buf
    });
    let text = String::from_utf8_lossy(&resp[..resp.len().min(200)]).into_owned();
    assert_eq!(status(&text), 200, "{text}");
    assert!(resp.ends_with(&want), "the streamed body arrived whole");
}
