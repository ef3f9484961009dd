//! Layer 1 of the gateway: HTTP on the wire, knowing nothing of routes,
//! pools or the shared state. Servers hand each request to a [`Handler`]
//! they are given; the upstream client sends what it is given.
//!
//! - [`serve`]: a client connection from its first byte (TLS, then the
//!   server for the protocol); [`conn`]: its state, I/O wrappers and the
//!   [`Handler`] seam; [`hyper_conn`]: hyper's HTTP/1.1 and HTTP/2 servers
//!   under the connection timeouts; [`h1`]: the own HTTP/1.1 server loop
//!   and upstream client; [`sniff`]: the framing guard;
//! - [`body`]: request bodies (client side); [`response`]: response
//!   bodies; [`tunnel`]: WebSocket byte copying; [`tls`]: termination and
//!   the HTTP→HTTPS redirect.
//!
//! [`Handler`]: conn::Handler
pub mod body;
pub mod conn;
pub mod h1;
pub mod hyper_conn;
pub mod response;
pub mod serve;
pub mod sniff;
pub mod tls;
pub mod tunnel;

/// Generators and references of the parsers' property tests.
#[cfg(test)]
pub(crate) mod fuzz_support;
