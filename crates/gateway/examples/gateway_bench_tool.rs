//! Helper processes for bench/gateway/run.sh (not a test, not shipped):
//!
//!   gateway_bench_tool sse-backend ADDR            SSE: one event per 100 ms per stream, stamped with its send time
//!   gateway_bench_tool sse-client ADDR N SECS      N concurrent streams; prints "events p50_ms p99_ms errors"
//!   gateway_bench_tool ws-backend ADDR             WebSocket echo server
//!   gateway_bench_tool ws-client ADDR N HOLD_SECS  opens N tunnels, echoes once on each, prints N, holds them open
//!   gateway_bench_tool gateway [--config] CONFIG             the gateway library alone (profiling without the CLI)
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if arg_is(&args, "gateway") {
        return run_gateway(args.last().cloned().unwrap_or_default());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
    match arg(1).as_str() {
        "sse-backend" => rt.block_on(sse_backend(arg(2))),
        "sse-client" => rt.block_on(sse_client(arg(2), num(3), num(4))),
        "ws-backend" => rt.block_on(ws_backend(arg(2))),
        "ws-client" => rt.block_on(ws_client(arg(2), num(3), num(4))),
        _ => eprintln!("usage: gateway_bench_tool sse-backend|sse-client|ws-backend|ws-client ..."),
    }
}

fn arg_is(args: &[String], s: &str) -> bool {
    args.get(1).map(|a| a == s).unwrap_or(false)
}

fn run_gateway(path: String) {
    let cfg = match ragfleet_gateway::Config::load(std::path::Path::new(&path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut b = if cfg.listen.workers == 1 && std::env::var("RT").as_deref() != Ok("multi") {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    b.enable_all();
    if cfg.listen.workers > 1
        || (cfg.listen.workers == 1 && std::env::var("RT").as_deref() == Ok("multi"))
    {
        b.worker_threads(cfg.listen.workers);
    }
    let rt = b.build().expect("runtime");
    rt.block_on(async move {
        let gw = ragfleet_gateway::Gateway::bind(cfg).await.expect("bind");
        let _ = gw.run_until(ragfleet_gateway::shutdown_signal()).await;
    });
}

async fn sse_backend(addr: String) {
    let l = TcpListener::bind(&addr).await.expect("bind");
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(|_req| async {
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(100));
                    for _ in 0..3000 {
                        tick.tick().await;
                        let ev = format!("data: {}\n\n", now_ns());
                        if tx.send(Ok(Frame::data(Bytes::from(ev)))).await.is_err() {
                            return;
                        }
                    }
                });
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|x| (x, rx))
                });
                let res = http::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(StreamBody::new(stream))
                    .expect("response");
                Ok::<_, Infallible>(res)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

async fn sse_client(addr: String, n: u64, secs: u64) {
    let lat: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (addr, lat, errors) = (addr.clone(), lat.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let r: Result<(), String> = async {
                let s = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
                let _ = s.set_nodelay(true);
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let req = http::Request::builder()
                    .uri("/sse")
                    .header("host", &addr)
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| e.to_string())?;
                let res = send.send_request(req).await.map_err(|e| e.to_string())?;
                let mut body = res.into_body();
                let mut buf = String::new();
                let mut mine = Vec::new();
                // Skip the first second: connection set-up is not per-event latency.
                let warm = tokio::time::Instant::now() + Duration::from_secs(1);
                while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, body.frame()).await {
                    let frame = frame.map_err(|e| e.to_string())?;
                    let t = now_ns();
                    if let Some(d) = frame.data_ref() {
                        buf.push_str(&String::from_utf8_lossy(d));
                        while let Some(end) = buf.find("\n\n") {
                            let ev: String = buf.drain(..end + 2).collect();
                            if let Some(sent) = ev
                                .trim()
                                .strip_prefix("data: ")
                                .and_then(|v| v.parse::<u128>().ok())
                            {
                                if tokio::time::Instant::now() > warm {
                                    mine.push(t.saturating_sub(sent) as f64 / 1e6);
                                }
                            }
                        }
                    }
                }
                if let Ok(mut l) = lat.lock() {
                    l.extend(mine);
                }
                Ok(())
            }
            .await;
            if r.is_err() {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
        // Open the streams over ~1 s rather than all in one burst.
        tokio::time::sleep(Duration::from_micros(1_000_000 / n.max(1))).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut l = lat.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if l.is_empty() {
            0.0
        } else {
            l[((l.len() - 1) as f64 * p) as usize]
        }
    };
    println!(
        "{} {:.3} {:.3} {}",
        l.len(),
        pct(0.5),
        pct(0.99),
        errors.load(std::sync::atomic::Ordering::Relaxed)
    );
}

async fn ws_backend(addr: String) {
    let l = TcpListener::bind(&addr).await.expect("bind");
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                return;
            };
            while let Some(Ok(m)) = ws.next().await {
                if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn ws_client(addr: String, n: u64, hold: u64) {
    let mut open = Vec::new();
    for _ in 0..n {
        match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
            Ok((mut ws, _)) => {
                if ws.send(Message::text("ping")).await.is_ok()
                    && matches!(ws.next().await, Some(Ok(_)))
                {
                    open.push(ws);
                }
            }
            Err(e) => {
                eprintln!("ws connect: {e}");
                break;
            }
        }
    }
    println!("{}", open.len());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tokio::time::sleep(Duration::from_secs(hold)).await;
    for mut ws in open {
        let _ = ws.close(None).await;
    }
}
