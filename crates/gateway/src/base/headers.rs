//! Header facts every layer needs.
use http::header::{self, HeaderName};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// A hop-by-hop header (RFC 9110 §7.6.1): never forwarded.
pub fn is_hop_by_hop(n: &HeaderName) -> bool {
    n == header::CONNECTION
        || n == header::TE
        || n == header::TRAILER
        || n == header::TRANSFER_ENCODING
        || n == header::PROXY_AUTHENTICATE
        || n == header::PROXY_AUTHORIZATION
        || n == KEEP_ALIVE
        || n == PROXY_CONNECTION
}
