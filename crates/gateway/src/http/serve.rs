//! A client connection from its first byte: TLS (ALPN `h2` or
//! `http/1.1`) when the listener has it, then the server for the protocol —
//! HTTP/2 on hyper, HTTP/1.1 on the own loop (which hands unusual requests
//! to hyper's).
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::base::clock::now_nanos;
use crate::http::conn::{watched, ConnSlot, ConnState, Handler, SendTimeout};

/// Serve one accepted TCP connection until it ends, the gateway stops
/// (graceful: the request in progress finishes) or a timeout closes it.
/// `refused`: the connection is over a connection limit (every request on
/// it is answered by the handler, which sees `ConnInfo::refused`).
pub async fn serve<H: Handler>(
    shared: Arc<H>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Option<ConnSlot>,
    refused: bool,
    stop: CancellationToken,
) {
    let state = Arc::new(ConnState::new(refused));
    let ctx = shared.serve_ctx();
    match ctx.tls.clone() {
        None => crate::http::h1::server::serve(shared, stream, peer, state, slot, None, stop).await,
        Some(tls) => {
            let hard_stop = ctx.hard_stop.clone();
            let accepted = tokio::select! {
                r = tls.accept(stream, peer) => r,
                _ = hard_stop.cancelled() => None,
            };
            let Some((stream, h2)) = accepted else {
                return;
            };
            let hsts = tls.hsts();
            // A fresh start for the header timer: the handshake had its own.
            state.idle_since.store(now_nanos(), Relaxed);
            if h2 {
                let stream = SendTimeout::new(stream, shared.serve_ctx().send_timeout);
                let io = watched(stream, &state, shared.serve_ctx(), slot, false);
                crate::http::hyper_conn::serve_h2(shared, io, peer, state, hsts, stop).await
            } else {
                crate::http::h1::server::serve(shared, stream, peer, state, slot, hsts, stop).await
            }
        }
    }
}
