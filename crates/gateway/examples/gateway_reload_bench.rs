//! Client for bench/gateway/reload.sh (not a test, not shipped):
//!
//!   gateway_reload_bench ADDR N_SSE N_WS HOLD_SECS
//!
//! Opens N_SSE SSE streams (GET /sse) and N_WS WebSocket tunnels (/ws)
//! through the proxy at ADDR, keeps them for HOLD_SECS — the script reloads
//! the proxy meanwhile — and prints one line:
//!
//!   sse_opened sse_dropped ws_opened ws_dropped
//!
//! A stream is dropped if it ends, breaks or stays silent for 3 s (the
//! backend sends an event every 100 ms) before HOLD_SECS; a tunnel is
//! dropped if an echo (one per second) fails or it closes early.
//!
//!   gateway_reload_bench gateway CONFIG
//!
//! (or `gateway --config CONFIG`) runs the gateway library alone with SIGHUP
//! reloads and the same runtime as `ragfleet gateway --config CONFIG`
//! (GATEWAY_ONLY=1 in bench/gateway/*.sh: no release build of the CLI, whose
//! model crates take far longer to compile than the gateway).
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

// The allocator `ragfleet` ships with (crates/cli/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Default)]
struct Counts {
    sse_opened: AtomicU64,
    sse_dropped: AtomicU64,
    ws_opened: AtomicU64,
    ws_dropped: AtomicU64,
}

async fn sse(addr: String, deadline: Instant, c: Arc<Counts>) {
    let opened = async {
        let s = TcpStream::connect(&addr).await.ok()?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri("/sse")
            .header("host", &addr)
            .body(Empty::<Bytes>::new())
            .ok()?;
        let res = send.send_request(req).await.ok()?;
        res.status().is_success().then(|| res.into_body())
    }
    .await;
    let Some(mut body) = opened else {
        eprintln!("sse: could not open a stream");
        return;
    };
    c.sse_opened.fetch_add(1, Relaxed);
    loop {
        let next = timeout_at(deadline, timeout(Duration::from_secs(3), body.frame())).await;
        match next {
            Err(_) => return, // held to the end: survived
            Ok(Ok(Some(Ok(_)))) => {}
            Ok(_) => {
                // Ended, broke or went silent before the deadline.
                c.sse_dropped.fetch_add(1, Relaxed);
                return;
            }
        }
    }
}

async fn ws(addr: String, deadline: Instant, c: Arc<Counts>) {
    let Ok((mut sock, _)) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await
    else {
        eprintln!("ws: could not open a tunnel");
        return;
    };
    c.ws_opened.fetch_add(1, Relaxed);
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let msg = Message::text(format!("ping {i}"));
        let ok = sock.send(msg.clone()).await.is_ok()
            && matches!(timeout(Duration::from_secs(3), sock.next()).await, Ok(Some(Ok(m))) if m == msg);
        if !ok {
            c.ws_dropped.fetch_add(1, Relaxed);
            return;
        }
        tokio::time::sleep(
            Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    let _ = sock.close(None).await;
}

fn run_gateway(path: &str) {
    let cfg = match ragfleet_gateway::Config::load(std::path::Path::new(path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut b = if cfg.listen.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    b.enable_all();
    if cfg.listen.workers > 1 {
        b.worker_threads(cfg.listen.workers);
    }
    let rt = b.build().expect("runtime");
    rt.block_on(async move {
        let gw = ragfleet_gateway::Gateway::bind(cfg).await.expect("bind");
        let h = gw.handle();
        h.set_config_path(path);
        ragfleet_gateway::reload::spawn_sighup(&h);
        let _ = gw.run_until(ragfleet_gateway::shutdown_signal()).await;
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("gateway") {
        // `gateway CONFIG` or, as the CLI takes it, `gateway --config CONFIG`.
        let rest: Vec<&str> = args[2..]
            .iter()
            .map(String::as_str)
            .filter(|a| *a != "--config")
            .collect();
        return run_gateway(rest.first().copied().unwrap_or("gateway.toml"));
    }
    let addr = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:18080".into());
    let num = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (n_sse, n_ws, hold) = (num(2, 100), num(3, 100), num(4, 20));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let c = Arc::new(Counts::default());
        let deadline = Instant::now() + Duration::from_secs(hold);
        let mut tasks = Vec::new();
        for i in 0..n_sse.max(n_ws) {
            if i < n_sse {
                tasks.push(tokio::spawn(sse(addr.clone(), deadline, c.clone())));
            }
            if i < n_ws {
                tasks.push(tokio::spawn(ws(addr.clone(), deadline, c.clone())));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for t in tasks {
            let _ = t.await;
        }
        println!(
            "{} {} {} {}",
            c.sse_opened.load(Relaxed),
            c.sse_dropped.load(Relaxed),
            c.ws_opened.load(Relaxed),
            c.ws_dropped.load(Relaxed)
        );
    });
}
