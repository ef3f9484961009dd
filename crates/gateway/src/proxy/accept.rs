//! Where a client connection enters the proxy.
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::http::conn::ConnSlot;
use crate::proxy::state::Shared;

/// Serve one accepted TCP connection: take its slot under
/// `max_connections_per_ip` (over it, the connection is still served and
/// each request answered 503 by the hygiene rules), then hand it to the
/// HTTP layer with the proxy as its handler.
///
/// A plain function returning the HTTP layer's future: no extra async
/// level around every poll of the connection.
pub(crate) fn accept(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    let (slot, refused) = match shared.edge.conn_limiter.acquire(peer.ip()) {
        Ok(slot) => (slot.map(|s| Box::new(s) as ConnSlot), false),
        Err(()) => {
            tracing::debug!(%peer, "over max_connections_per_ip: answering 503");
            (None, true)
        }
    };
    crate::http::serve::serve(shared, stream, peer, slot, refused, stop)
}
