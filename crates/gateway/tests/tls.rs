//! TLS termination against real clients: a test CA and server certificates
//! made with rcgen at test time, reqwest (rustls) over HTTP/1.1 and h2,
//! SNI, SSE over h2, the redirect listener, HSTS, certificate reload under a
//! live h2 connection, WebSocket over TLS (HTTP/1.1).
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rcgen::{CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "ragfleet test CA");
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for `names` (DNS names or IPs), written to
    /// `<file>.crt` / `<file>.key`.
    fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, file);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca).unwrap();
        let leaf = Leaf {
            cert: self.dir.path().join(format!("{file}.crt")),
            key: self.dir.path().join(format!("{file}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }
}

fn toml_path(p: &Path) -> String {
    p.display().to_string()
}

/// Gateway with TLS: cert `a` (default; a.test + 127.0.0.1) then `b`
/// (b.test, *.wild.test); HSTS; a redirect listener.
fn tls_config(up: SocketAddr, a: &Leaf, b: &Leaf, extra_listen: &str) -> String {
    format!(
        r#"
[listen]
addr = "127.0.0.1:0"
{extra_listen}

[tls]
hsts = "max-age=31536000; includeSubDomains"

[[tls.certificate]]
cert = "{}"
key = "{}"

[[tls.certificate]]
cert = "{}"
key = "{}"

[tls.redirect]
addr = "127.0.0.1:0"

[[route]]
prefix = "/"
pool = "p"

[pool.p]
policy = "round_robin"
servers = [{{ addr = "{}" }}]
"#,
        toml_path(&a.cert),
        toml_path(&a.key),
        toml_path(&b.cert),
        toml_path(&b.key),
        up
    )
}

/// Start a gateway from TOML (listen and redirect addresses as written);
/// returns it and the redirect listener's address.
async fn start(toml: &str) -> (TestGateway, Option<SocketAddr>) {
    let cfg = ragfleet_gateway::Config::parse(toml, "tls-test.toml").expect("valid config");
    let gw = ragfleet_gateway::Gateway::bind(cfg).await.expect("bind");
    let redirect = gw.redirect_addr();
    let addr = gw.local_addr();
    let handle = gw.handle();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gw.run_until(async move {
        let _ = rx.await;
    }));
    (TestGateway::from_parts(addr, handle, tx, task), redirect)
}

fn client(pki: &Pki, addr: SocketAddr, h1_only: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).unwrap();
    let mut b = reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .use_rustls_tls()
        .tls_info(true)
        .resolve("a.test", addr)
        .resolve("b.test", addr)
        .resolve("x.wild.test", addr)
        .resolve("unknown.test", addr);
    if h1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

fn peer_cert(res: &reqwest::Response) -> Vec<u8> {
    res.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .expect("TLS info with the peer certificate")
        .to_vec()
}

#[tokio::test]
async fn h1_and_h2_with_sni_hsts_and_forwarded_proto() {
    let up = Upstream::start("up").await;
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test", "127.0.0.1"]);
    let b = pki.leaf("b", &["b.test", "*.wild.test"]);
    let (gw, _) = start(&tls_config(up.addr, &a, &b, "")).await;
    let port = gw.addr.port();

    for h1_only in [false, true] {
        let c = client(&pki, gw.addr, h1_only);
        let want_version = if h1_only {
            reqwest::Version::HTTP_11
        } else {
            reqwest::Version::HTTP_2
        };
        for (host, want) in [
            ("a.test", &a.der),
            ("b.test", &b.der),
            ("x.wild.test", &b.der),
            // No SNI (an IP address): the first certificate.
            ("127.0.0.1", &a.der),
        ] {
            let res = c
                .get(format!("https://{host}:{port}/echo-headers"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{host}: {e:?}"));
            assert_eq!(res.status(), 200, "{host}");
            assert_eq!(res.version(), want_version, "{host}");
            assert_eq!(&peer_cert(&res), want, "{host}: wrong certificate chosen");
            assert_eq!(
                res.headers()["strict-transport-security"],
                "max-age=31536000; includeSubDomains"
            );
            let seen: serde_json::Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
            assert_eq!(seen["x-forwarded-proto"], "https");
            assert_eq!(
                seen["host"],
                format!("{host}:{port}"),
                "Host from :authority / Host"
            );
        }
    }
    // An unknown name gets the default certificate, which the client rejects
    // for that name: proof the handshake did not silently pick another one.
    let c = client(&pki, gw.addr, false);
    let err = c
        .get(format!("https://unknown.test:{port}/"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    let tls = gw.handle.tls().unwrap();
    assert!(tls.handshakes() >= 8);
    assert!(eventually(5, || tls.handshake_failures() >= 1).await);
}

#[tokio::test]
async fn sse_over_h2_arrives_event_by_event() {
    let up = Upstream::start("up").await;
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test", "127.0.0.1"]);
    let b = pki.leaf("b", &["b.test"]);
    let (gw, _) = start(&tls_config(up.addr, &a, &b, "")).await;
    let c = client(&pki, gw.addr, false);
    let mut res = c
        .get(format!("https://a.test:{}/sse-gated", gw.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    // The upstream sends event i+1 only after the test has seen event i:
    // any buffering on the way would stall the stream.
    let mut buf = String::new();
    for i in 0..SSE_EVENTS {
        while !buf.contains("\n\n") {
            let chunk = tokio::time::timeout(Duration::from_secs(10), res.chunk())
                .await
                .unwrap_or_else(|_| panic!("event {i} did not arrive"))
                .unwrap()
                .expect("stream ended early");
            buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        let end = buf.find("\n\n").unwrap() + 2;
        let ev: String = buf.drain(..end).collect();
        assert_eq!(ev, format!("id: {i}\ndata: event {i}\n\n"));
        up.state.sse_ack.send_replace(i + 1);
    }
}

#[tokio::test]
async fn redirect_listener_sends_to_https_with_same_host_and_path() {
    let up = Upstream::start("up").await;
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test", "127.0.0.1"]);
    let b = pki.leaf("b", &["b.test"]);
    let (gw, redirect) = start(&tls_config(up.addr, &a, &b, "")).await;
    let redirect = redirect.expect("redirect listener");
    let port = gw.addr.port();
    let req = http::Request::builder()
        .method("POST")
        .uri("/api/chat?x=1&y=%20")
        .header("host", "a.test:8080")
        .body(http_body_util::Full::new(bytes::Bytes::from("body")))
        .unwrap();
    let res = send_from(None, redirect, req).await.unwrap();
    assert_eq!(res.status(), 308);
    assert_eq!(
        res.headers()["location"],
        format!("https://a.test:{port}/api/chat?x=1&y=%20")
    );
    assert_eq!(up.hits(), 0, "the redirect listener never proxies");
    // Following it works.
    let c = client(&pki, gw.addr, false);
    let res = c
        .get(format!("https://a.test:{port}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn cert_reload_serves_new_cert_and_keeps_existing_h2_connection() {
    let up = Upstream::start("up").await;
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test", "127.0.0.1"]);
    let b = pki.leaf("b", &["b.test"]);
    let (gw, _) = start(&tls_config(up.addr, &a, &b, "")).await;
    let port = gw.addr.port();
    let tls = gw.handle.tls().unwrap();

    // A live h2 connection with an SSE stream in progress.
    let old_client = client(&pki, gw.addr, false);
    let mut stream = old_client
        .get(format!("https://a.test:{port}/sse-gated"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.version(), reqwest::Version::HTTP_2);
    assert_eq!(peer_cert(&stream), a.der);
    let first = stream.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event 0"));

    // A broken file: the reload fails and nothing changes.
    std::fs::write(&a.cert, "not a certificate").unwrap();
    assert!(tls.reload().is_err());
    let res = client(&pki, gw.addr, false)
        .get(format!("https://a.test:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_cert(&res), a.der, "old certificate still in force");

    // New certificate and key in the same files, then reload.
    let a2 = pki.leaf("a", &["a.test", "127.0.0.1"]);
    assert_ne!(a2.der, a.der);
    tls.reload().expect("reload");
    assert_eq!(tls.reloads(), 1);

    let res = client(&pki, gw.addr, false)
        .get(format!("https://a.test:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        peer_cert(&res),
        a2.der,
        "a new handshake gets the new certificate"
    );

    // The old connection keeps streaming, and takes new requests.
    up.state.sse_ack.send_replace(1);
    let mut seen = String::from_utf8_lossy(&first).into_owned();
    let mut acked = 1;
    while !seen.contains(&format!("event {}", SSE_EVENTS - 1)) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("old stream stalled")
            .unwrap()
            .expect("old stream ended early");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        acked = seen.matches("\n\n").count() as u64;
        up.state.sse_ack.send_replace(acked);
    }
    assert_eq!(acked, SSE_EVENTS);
    let res = old_client
        .get(format!("https://a.test:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        peer_cert(&res),
        a.der,
        "same h2 connection as before the reload (not re-established)"
    );
}

#[tokio::test]
async fn websocket_over_tls_uses_http1() {
    let up = ws_echo_upstream().await;
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test", "127.0.0.1"]);
    let b = pki.leaf("b", &["b.test"]);
    let toml = tls_config(up, &a, &b, "");
    let (gw, _) = start(&toml).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let tls = connector
        .connect("a.test".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, res) =
        tokio_tungstenite::client_async(format!("wss://a.test:{}/ws", gw.addr.port()), tls)
            .await
            .expect("websocket handshake through the TLS gateway");
    assert_eq!(res.status(), 101);
    for i in 0..3 {
        ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
            "hi {i}"
        )))
        .await
        .unwrap();
        let m = ws.next().await.unwrap().unwrap();
        assert_eq!(m.into_text().unwrap().as_str(), format!("hi {i}"));
    }
    ws.close(None).await.unwrap();
}

/// A minimal WebSocket echo server (tokio-tungstenite).
async fn ws_echo_upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn garbage_and_stalled_handshakes_are_counted_and_closed() {
    let up = Upstream::start("up").await;
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test", "127.0.0.1"]);
    let b = pki.leaf("b", &["b.test"]);
    let toml = tls_config(up.addr, &a, &b, "")
        .replace("[tls]\n", "[tls]\nhandshake_timeout = \"500ms\"\n");
    let (gw, _) = start(&toml).await;
    let tls = gw.handle.tls().unwrap();

    // Plain HTTP to the TLS port.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));

    // A client that connects and says nothing is cut at handshake_timeout.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut [0u8; 16])).await;
    assert!(closed.is_ok(), "silent client not closed");
    assert!(eventually(5, || tls.handshake_failures() >= 2).await);

    // Still serving.
    let res = client(&pki, gw.addr, false)
        .get(format!("https://a.test:{}/", gw.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.state.hits.load(SeqCst), 1);
}

#[tokio::test]
async fn bad_tls_config_is_refused_naming_the_file() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let other = pki.leaf("other", &["other.test"]);
    let base = |cert: &Path, key: &Path| {
        format!(
            "[tls]\n[[tls.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n\n[[route]]\nprefix = \"/\"\npool = \"p\"\n[pool.p]\nservers = [{{ addr = \"127.0.0.1:1\" }}]\n",
            toml_path(cert),
            toml_path(key)
        )
    };
    // Key of another certificate.
    let err = ragfleet_gateway::Config::parse(&base(&a.cert, &other.key), "t.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tls.certificate[0]") && err.contains("other.key"),
        "{err}"
    );
    // Missing file.
    let missing = pki.dir.path().join("missing.crt");
    let err = ragfleet_gateway::Config::parse(&base(&missing, &a.key), "t.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.crt"), "{err}");
    // Unknown key in [tls].
    let err = ragfleet_gateway::Config::parse(
        &base(&a.cert, &a.key).replace("[tls]\n", "[tls]\nhttp3 = true\n"),
        "t.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("http3"), "{err}");
}

#[tokio::test]
async fn the_tls_example_config_is_valid() {
    let pki = Pki::new();
    pki.leaf("chat.example.com", &["chat.example.com"]);
    pki.leaf("wildcard.api.example.com", &["*.api.example.com"]);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/gateway-tls.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "/etc/ragfleet/tls/",
        &format!("{}/", pki.dir.path().display()),
    );
    let cfg = ragfleet_gateway::Config::parse(&text, "gateway-tls.toml").expect("example parses");
    let tls = cfg.tls.as_ref().unwrap();
    assert_eq!(tls.certificates.len(), 2);
    assert_eq!(tls.redirect.as_ref().unwrap().status, 308);
    assert_eq!(cfg.rate_limit.rules.len(), 2);
    assert_eq!(cfg.listen.max_connections_per_ip, 256);
}

#[tokio::test]
async fn h2_requests_get_the_same_limits() {
    let up = Upstream::start("up").await;
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test", "127.0.0.1"]);
    let b = pki.leaf("b", &["b.test"]);
    let toml = tls_config(up.addr, &a, &b, "max_body_size = \"1KiB\"")
        + "\n[[rate_limit.rule]]\nkey = \"header:X-Api-Key\"\nrate = \"1r/m\"\nburst = 1\n";
    let (gw, _) = start(&toml).await;
    let port = gw.addr.port();
    let c = client(&pki, gw.addr, false);
    let url = format!("https://a.test:{port}/echo-body");

    // Within the limit, streamed (no Content-Length): echoed back over h2.
    let chunks = vec![Ok::<_, std::io::Error>(bytes::Bytes::from("x".repeat(600)))];
    let res = c
        .post(&url)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap().len(), 600);

    // Declared too large.
    let res = c.post(&url).body("y".repeat(2000)).send().await.unwrap();
    assert_eq!(res.status(), 413);
    assert!(!res.headers().contains_key("connection"));

    // Streamed past the limit.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..4)
        .map(|_| Ok(bytes::Bytes::from("z".repeat(512))))
        .collect();
    let res = c
        .post(&url)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert!(res.text().await.unwrap().contains("body_too_large"));

    // Rate limit, h2: burst 1 → 2 then 429.
    for want in [200, 200, 429] {
        let res = c
            .get(format!("https://a.test:{port}/x"))
            .header("x-api-key", "k")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), want);
        if want == 429 {
            assert!(res.headers().contains_key("retry-after"));
        }
    }
    // Still serving h2 after all that.
    let res = c
        .get(format!("https://a.test:{port}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(gw.handle.hygiene().body_too_large(), 2);
}

#[tokio::test]
async fn graceful_shutdown_finishes_an_h2_stream() {
    let up = Upstream::start("up").await;
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test", "127.0.0.1"]);
    let b = pki.leaf("b", &["b.test"]);
    let (mut gw, _) = start(&tls_config(up.addr, &a, &b, "")).await;
    let c = client(&pki, gw.addr, false);
    let mut res = c
        .get(format!("https://a.test:{}/sse", gw.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    let first = res.chunk().await.unwrap().unwrap();
    let stopping = gw.shutdown();
    // The stream in progress runs to its end over the closing connection.
    let mut body = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), res.chunk())
        .await
        .expect("stream stalled during shutdown")
        .unwrap()
    {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(body.matches("data: event").count() as u64, SSE_EVENTS);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("gateway did not stop after the stream ended")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn idle_h2_connection_is_closed_at_keepalive_timeout() {
    let up = Upstream::start("up").await;
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test", "127.0.0.1"]);
    let b = pki.leaf("b", &["b.test"]);
    let (gw, _) = start(&tls_config(up.addr, &a, &b, "keepalive_timeout = \"1s\"")).await;
    let c = client(&pki, gw.addr, false);
    let url = format!("https://a.test:{}/x", gw.addr.port());
    let res = c.get(&url).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let hy = gw.handle.hygiene();
    assert_eq!(hy.idle_closed(), 0);
    assert!(
        eventually(5, || hy.idle_closed() == 1).await,
        "idle h2 connection not closed"
    );
    // The client reconnects transparently.
    let res = c.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(gw.handle.tls().unwrap().handshakes(), 2);
}
